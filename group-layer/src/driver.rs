//! Runs the group state machine on the net layer's event loop: the body of a server process.
//!
//! A server builds a [`Node`] (a process's listens on its configured address and watches
//! SIGTERM and SIGINT; an in-process one runs on a listener its owner bound until its
//! [`Stop`] is stopped), then calls [`Node::run`] with its [`Service`]: the part that knows
//! what the server is for. The node turns socket events into group inputs, carries out the
//! group's actions, and hands group events to the service, each callback with the time
//! ([`Now`]) it read just before: the only clock server logic sees. It times every callback
//! and logs slow ones.
//!
//! It must not know what a server is for (the [`Service`] does), nor parse arguments, lock
//! data directories, bind the configured address or read entropy (`process` does).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use meshfs_net::{
    ConnId, EventLoop, Frame, LoopConfig, NetEvent, Notifier, Priority, SendError, TimerId,
};

use crate::config::{Config, NodeId, Role};
use crate::membership::{Action, Group, GroupError, GroupEvent, HANDSHAKE_MAX_BODY_LEN};
use crate::time::Now;

/// A callback slower than this is logged: it held up every connection of the process.
const SLOW_CALLBACK: Duration = Duration::from_millis(50);
/// Longest the loop sleeps without a deadline, so a missed wake-up costs at most this.
const MAX_POLL_WAIT: Duration = Duration::from_secs(1);
/// How often the RTT to every peer is logged at info level.
const RTT_LOG_INTERVAL: Duration = Duration::from_secs(30);
/// How often the config file is looked at for changed `[[client]]` entries.
const CONFIG_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// What a server does with what the group tells it.
///
/// Every callback gets `now`, read by the driver just before it: the service reads no clock
/// itself, so its logic runs unchanged on a simulated clock.
pub trait Service {
    /// Called once, before the loop starts: arm timers here.
    fn start(&mut self, _node: &mut Node, _now: Now) {}
    /// A group event: peer up or down, a message from a peer or a client.
    fn handle_event(&mut self, node: &mut Node, now: Now, event: GroupEvent);
    /// A worker thread called [`Notifier::notify`].
    fn handle_wake(&mut self, _node: &mut Node, _now: Now) {}
    /// A timer set with [`Node::set_timer`] fired.
    fn handle_timer(&mut self, _node: &mut Node, _now: Now, _token: u64) {}
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The id is not a server of the config.
    #[error("node {0} is not a server in the config (its ids are {1})")]
    NotInConfig(NodeId, String),
    /// The listening address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// The event loop could not be made.
    #[error("cannot create the event loop: {0}")]
    Loop(io::Error),
    /// Randomness for nonces could not be read.
    #[error("cannot read /dev/urandom: {0}")]
    Entropy(io::Error),
}

/// A file's modified time and length, to notice a change.
fn file_stamp(path: &std::path::Path) -> Option<(std::time::SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn not_in_config(config: &Config, me: NodeId) -> NodeError {
    let ids: Vec<String> = config.servers.iter().map(|s| s.id.to_string()).collect();
    NodeError::NotInConfig(me, ids.join(", "))
}

/// Stops a node's loop from another thread: the owner of an in-process server keeps a clone
/// and calls [`Stop::stop`]; the loop ends after the callback it is in, as on SIGTERM.
#[derive(Debug, Clone, Default)]
pub struct Stop {
    inner: Arc<StopInner>,
}

#[derive(Debug, Default)]
struct StopInner {
    stopped: AtomicBool,
    /// The loop to wake, once a node runs on it.
    notifier: Mutex<Option<Notifier>>,
}

impl Stop {
    /// A handle no node uses yet.
    pub fn new() -> Stop {
        Stop::default()
    }

    /// Asks the node to stop and wakes its loop.
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
        let notifier = self.inner.notifier.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(notifier) = notifier.as_ref()
            && let Err(err) = notifier.notify()
        {
            // The loop still sees the flag within MAX_POLL_WAIT.
            warn!("cannot wake the loop to stop it: {err}");
        }
    }

    /// Whether [`Stop::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.inner.stopped.load(Ordering::SeqCst)
    }

    fn attach(&self, notifier: Notifier) {
        *self.inner.notifier.lock().unwrap_or_else(|p| p.into_inner()) = Some(notifier);
    }
}

/// One server process's network side: the event loop and the group.
#[derive(Debug)]
pub struct Node {
    net: EventLoop,
    group: Group,
    config: Config,
    local_addr: SocketAddr,
    started: Instant,
    stop: bool,
    /// Stopped from another thread (an in-process server's owner).
    stopped: Stop,
    next_rtt_log: Instant,
    /// The config file as last read (modified time, length), and when to look again.
    config_seen: Option<(std::time::SystemTime, u64)>,
    next_config_check: Instant,
    /// Lines saying a frame to a peer was dropped on a full queue: a few a second.
    full_queue_log: crate::log_budget::LogBudget,
    /// Bytes sent to each peer that are not on its connection's queue yet: a send becomes
    /// an action carried out after the handler returns.
    pending: HashMap<NodeId, usize>,
}

impl Node {
    /// Ends the loop on SIGTERM or SIGINT, as a server process does (an in-process server
    /// leaves the signals to its program).
    pub fn watch_signals(&mut self) -> Result<(), NodeError> {
        self.net
            .watch_signals(&[signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT])
            .map_err(NodeError::Loop)
    }

    /// Server `me` of `config` on a listener the caller bound (a test's, on a port it
    /// picked), its group seeded with `seed`; it runs until `stop` is stopped. No signals
    /// are watched: the process is the caller's.
    pub fn on_listener(
        config: &Config,
        me: NodeId,
        listener: std::net::TcpListener,
        seed: [u8; 32],
        stop: &Stop,
    ) -> Result<Node, NodeError> {
        let Some(server) = config.server(me) else {
            return Err(not_in_config(config, me));
        };
        let loop_config = LoopConfig {
            max_connections: config.max_connections,
            // A server dials its peers only (twice each at most, while links cross).
            max_outbound: 2 * config.servers.len() + 16,
            ..LoopConfig::default()
        };
        let mut net = EventLoop::new(loop_config).map_err(NodeError::Loop)?;
        let (_, local_addr) = net
            .adopt_listener(listener)
            .map_err(|source| NodeError::Listen { addr: server.addr, source })?;
        stop.attach(net.notifier());
        let now = Instant::now();
        let group = Group::new(config, me, seed, now).map_err(|_| not_in_config(config, me))?;
        info!(
            "{} {me} listening on {local_addr}, cluster {:?}, {} peers",
            server.role,
            config.cluster_name,
            config.servers.len() - 1
        );
        Ok(Node {
            net,
            group,
            config: config.clone(),
            local_addr,
            started: now,
            stop: false,
            stopped: stop.clone(),
            next_rtt_log: now + RTT_LOG_INTERVAL,
            config_seen: file_stamp(&config.path),
            next_config_check: now + CONFIG_CHECK_INTERVAL,
            full_queue_log: crate::log_budget::LogBudget::new(5, Duration::from_secs(1)),
            pending: HashMap::new(),
        })
    }

    /// The address this node listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The group state (peers, links, RTT).
    pub fn group(&self) -> &Group {
        &self.group
    }

    /// The cluster config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.group.me()
    }

    /// This node's role.
    pub fn role(&self) -> Role {
        self.group.role()
    }

    /// Time from this node's start to `now`.
    pub fn uptime(&self, now: Now) -> Duration {
        now.mono.saturating_duration_since(self.started)
    }

    /// The clocks as of this moment. For measuring work done inside a callback (how long a
    /// scan took); the callback's own `now` is the time to decide by.
    pub fn now(&self) -> Now {
        Now::read()
    }

    /// Sends an application frame to a peer.
    pub fn send(
        &mut self,
        peer: NodeId,
        priority: Priority,
        frame: Frame,
    ) -> Result<(), GroupError> {
        let bytes = frame.body.len();
        self.group.send(peer, priority, frame)?;
        *self.pending.entry(peer).or_default() += bytes;
        Ok(())
    }

    /// Bytes queued to `peer` and not yet written, counting what this handler sent so far
    /// (None if the link is down). Bulk senders pace themselves by it.
    pub fn queued_bytes(&self, peer: NodeId) -> Option<usize> {
        let conn = self.group.conn_of(peer).ok()?;
        let pending = self.pending.get(&peer).copied().unwrap_or(0);
        self.net.queued_bytes(conn).map(|queued| queued + pending)
    }

    /// Sends an application frame to every peer whose link is up; returns how many.
    pub fn broadcast(&mut self, priority: Priority, frame: &Frame) -> usize {
        self.group.broadcast(priority, frame)
    }

    /// Sends an application frame to a client connection (a reply).
    pub fn reply(&mut self, conn: ConnId, frame: Frame) {
        self.group.send_to_client(conn, Priority::Control, frame);
    }

    /// Arms a timer; [`Service::handle_timer`] gets `token` at `deadline`.
    pub fn set_timer(&mut self, deadline: Instant, token: u64) -> TimerId {
        self.net.set_timer(deadline, token)
    }

    /// A handle worker threads use to wake the loop.
    pub fn notifier(&self) -> Notifier {
        self.net.notifier()
    }

    /// Asks the loop to stop after the current callback.
    pub fn shutdown(&mut self) {
        self.stop = true;
    }

    /// Runs until SIGTERM, SIGINT or [`Node::shutdown`]; then closes every connection so
    /// peers see this node leave at once.
    pub fn run<S: Service>(&mut self, service: &mut S) -> io::Result<()> {
        let mut events = Vec::new();
        service.start(self, Now::read());
        while !self.stop && !self.stopped.is_stopped() {
            self.group.handle_tick(Instant::now());
            self.watch_config();
            self.drain(service);
            if self.stop {
                break;
            }
            let wait = self
                .group
                .poll_timeout()
                .map_or(MAX_POLL_WAIT, |t| t.saturating_duration_since(Instant::now()))
                .min(MAX_POLL_WAIT);
            self.net.poll(&mut events, Some(wait))?;
            for event in events.drain(..) {
                let started = Instant::now();
                let name = self.handle_net_event(service, event);
                self.drain(service);
                let took = started.elapsed();
                if took > SLOW_CALLBACK {
                    warn!("long call detected: {name} took {} ms", took.as_millis());
                }
            }
            self.log_rtt();
        }
        info!("{} {} shutting down", self.role(), self.id());
        for conn in self.group.connections() {
            self.net.close(conn, "shutting down");
        }
        Ok(())
    }

    /// Re-reads the config when its file changed: the `[[client]]` entries take effect at
    /// once (removed or re-keyed clients lose their connections); other changes wait for a
    /// restart, and a config that no longer reads is ignored, each said in the log.
    fn watch_config(&mut self) {
        let now = Instant::now();
        if now < self.next_config_check {
            return;
        }
        self.next_config_check = now + CONFIG_CHECK_INTERVAL;
        let stamp = file_stamp(&self.config.path);
        if stamp.is_none() || stamp == self.config_seen {
            return;
        }
        self.config_seen = stamp;
        let fresh = match Config::load(&self.config.path) {
            Ok(fresh) => fresh,
            Err(err) => {
                warn!("the config changed but cannot be used, so it is ignored: {err}");
                return;
            }
        };
        let (added, removed, rekeyed) = self.group.set_clients(now, &fresh.clients);
        info!(
            "config re-read: {} clients (added {added:?}, removed {removed:?}, new keys {rekeyed:?})",
            fresh.clients.len()
        );
        let mut rest = fresh.clone();
        rest.clients = self.config.clients.clone();
        if rest != self.config {
            warn!(
                "{} changed beyond its [[client]] entries: those changes take effect when this server restarts",
                self.config.path.display()
            );
        }
        self.config.clients = fresh.clients;
    }

    fn handle_net_event<S: Service>(&mut self, service: &mut S, event: NetEvent) -> &'static str {
        let now = Instant::now();
        match event {
            NetEvent::Accepted { conn, peer, .. } => {
                debug!("accepted {conn} from {peer}");
                self.net.set_max_body_len(conn, HANDSHAKE_MAX_BODY_LEN);
                self.group.handle_accepted(now, conn);
                "accept"
            }
            NetEvent::Connected { conn } => {
                debug!("connected {conn}");
                "connect"
            }
            NetEvent::Frame { conn, frame } => {
                self.group.handle_frame(now, conn, frame);
                "frame"
            }
            NetEvent::Writable { .. } => "writable",
            NetEvent::Closed { conn, reason } => {
                self.group.handle_closed(now, conn, &reason.to_string());
                "close"
            }
            NetEvent::Timer { token, .. } => {
                service.handle_timer(self, Now::read(), token);
                "timer"
            }
            NetEvent::Woken => {
                service.handle_wake(self, Now::read());
                "wake"
            }
            NetEvent::Signal(signal) => {
                info!("signal {signal} received");
                self.stop = true;
                "signal"
            }
        }
    }

    /// Carries out the group's actions and hands its events to the service until both
    /// queues are empty (a service's sends make new actions).
    fn drain<S: Service>(&mut self, service: &mut S) {
        loop {
            let mut idle = true;
            while let Some(action) = self.group.poll_action() {
                idle = false;
                self.execute(action);
            }
            // Every send so far is on its connection's queue (or dropped with it).
            self.pending.clear();
            while let Some(event) = self.group.poll_event() {
                idle = false;
                service.handle_event(self, Now::read(), event);
            }
            if idle {
                return;
            }
        }
    }

    fn execute(&mut self, action: Action) {
        let now = Instant::now();
        match action {
            // From this server's own address, so a peer (or a packet filter) can tell
            // which server dialed whatever address the kernel would have picked.
            Action::Connect { peer, addr } => match self.net.connect_from(self.own_ip(), addr) {
                Ok(conn) => {
                    self.net.set_max_body_len(conn, HANDSHAKE_MAX_BODY_LEN);
                    self.group.handle_dialed(now, peer, conn);
                }
                Err(err) => self.group.handle_dial_failed(now, peer, &err.to_string()),
            },
            Action::Send { conn, priority, frame } => {
                let kind = frame.kind;
                match self.net.send_frame(conn, priority, frame) {
                    Ok(()) | Err(SendError::Closed) => {}
                    Err(err @ SendError::TooLarge { .. }) => {
                        // A caller bug (bulk data must be chunked): drop it, keep the link.
                        log::error!("not sending message kind {kind} on {conn}: {err}");
                    }
                    Err(err @ SendError::QueueFull { .. }) => match self.group.peer_of(conn) {
                        // A link between servers stays up whatever fills its queue: the
                        // frame is dropped (Raft and the group resend what matters), and a
                        // peer that truly stopped reading is found down by its pings.
                        Some(peer) => {
                            if let Some(left_out) = self.full_queue_log.allow(Instant::now()) {
                                warn!(
                                    "dropping a frame (kind {kind}) to {peer}: {err} \
                                     ({left_out} more dropped since the last line)"
                                );
                            }
                        }
                        // A client that does not read its answers is closed: its queue
                        // must not hold the server's memory.
                        None => {
                            warn!("closing {conn}: {err}");
                            self.net.close(conn, err.to_string());
                        }
                    },
                }
            }
            Action::Trust { conn } => self.net.set_max_body_len(conn, u32::MAX),
            Action::Close { conn, reason } => self.net.close(conn, reason),
        }
    }

    /// The address this server is configured at, which its dials leave from.
    fn own_ip(&self) -> Option<std::net::IpAddr> {
        self.config.server(self.id()).map(|s| s.addr.ip())
    }

    fn log_rtt(&mut self) {
        let now = Instant::now();
        if now < self.next_rtt_log {
            return;
        }
        self.next_rtt_log = now + RTT_LOG_INTERVAL;
        let peers: Vec<String> = self
            .group
            .status()
            .iter()
            .map(|p| {
                if p.up {
                    format!("{}={}us", p.id, p.rtt.smoothed.as_micros())
                } else {
                    format!("{}=down", p.id)
                }
            })
            .collect();
        info!("rtt (smoothed): {}", peers.join(" "));
    }
}
