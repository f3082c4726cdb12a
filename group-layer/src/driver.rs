//! Runs the group state machine on the net layer's event loop: the body of a server process.
//!
//! A server builds a [`Node`] (which listens on its configured address and watches SIGTERM
//! and SIGINT), then calls [`Node::run`] with its [`Service`]: the part that knows what the
//! server is for. The node turns socket events into group inputs, carries out the group's
//! actions, and hands group events to the service. It times every callback and logs slow ones.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use meshfs_net::{
    ConnId, EventLoop, Frame, LoopConfig, NetEvent, Notifier, Priority, SendError, TimerId,
};

use crate::config::{Config, ConfigError, NodeId, Role};
use crate::membership::{Action, Group, GroupError, GroupEvent, HANDSHAKE_MAX_BODY_LEN};
use crate::time::Now;

/// A callback slower than this is logged: it held up every connection of the process.
const SLOW_CALLBACK: Duration = Duration::from_millis(50);
/// Longest the loop sleeps without a deadline, so a missed wake-up costs at most this.
const MAX_POLL_WAIT: Duration = Duration::from_secs(1);
/// How often the RTT to every peer is logged at info level.
const RTT_LOG_INTERVAL: Duration = Duration::from_secs(30);

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

/// One server process's network side: the event loop and the group.
#[derive(Debug)]
pub struct Node {
    net: EventLoop,
    group: Group,
    config: Config,
    local_addr: SocketAddr,
    started: Instant,
    stop: bool,
    next_rtt_log: Instant,
    /// Bytes sent to each peer that are not on its connection's queue yet: a send becomes
    /// an action carried out after the handler returns.
    pending: HashMap<NodeId, usize>,
}

impl Node {
    /// Listens on the address of server `me` in `config` and prepares the group.
    pub fn bind(config: &Config, me: NodeId) -> Result<Node, NodeError> {
        let Some(server) = config.server(me) else {
            let ids: Vec<String> = config.servers.iter().map(|s| s.id.to_string()).collect();
            return Err(NodeError::NotInConfig(me, ids.join(", ")));
        };
        let mut net = EventLoop::new(LoopConfig::default()).map_err(NodeError::Loop)?;
        let (_, local_addr) = net
            .listen(server.addr)
            .map_err(|source| NodeError::Listen { addr: server.addr, source })?;
        net.watch_signals(&[signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT])
            .map_err(NodeError::Loop)?;
        let now = Instant::now();
        let group = Group::new(config, me, os_seed().map_err(NodeError::Entropy)?, now)
            .map_err(|_| NodeError::NotInConfig(me, String::new()))?;
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
            next_rtt_log: now + RTT_LOG_INTERVAL,
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
        while !self.stop {
            self.group.handle_tick(Instant::now());
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
            Action::Connect { peer, addr } => match self.net.connect(addr) {
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
                    Err(err @ SendError::QueueFull { .. }) => {
                        // Control traffic is small; a full queue means the peer stopped
                        // reading. Bulk senders check capacity before sending (data path).
                        warn!("closing {conn}: {err}");
                        self.net.close(conn, err.to_string());
                    }
                }
            }
            Action::Trust { conn } => self.net.set_max_body_len(conn, u32::MAX),
            Action::Close { conn, reason } => self.net.close(conn, reason),
        }
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

/// Why a server process could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config is unreadable or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The id is in the config, but as another role.
    #[error("node {id} is a {actual} in {path}; start it with `{actual} --id {id}`")]
    WrongRole {
        /// The id.
        id: NodeId,
        /// Its role in the config.
        actual: Role,
        /// The config file.
        path: PathBuf,
    },
    /// The data directory could not be created or locked.
    #[error("data directory {path}: {reason}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The node could not start.
    #[error(transparent)]
    Node(#[from] NodeError),
}

/// A server's data directory, locked for the life of the process so that two processes never
/// serve one server's data.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    /// Holds the advisory lock on `LOCK`; released when dropped (or when the process dies).
    _lock: File,
}

impl DataDir {
    /// Creates `path` if needed and locks it.
    pub fn open(path: &Path) -> Result<DataDir, StartError> {
        let fail = |reason: String| StartError::DataDir { path: path.to_path_buf(), reason };
        fs::create_dir_all(path).map_err(|e| fail(format!("cannot create: {e}")))?;
        let lock_path = path.join("LOCK");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| fail(format!("cannot open {}: {e}", lock_path.display())))?;
        match lock.try_lock() {
            Ok(()) => Ok(DataDir { path: path.to_path_buf(), _lock: lock }),
            Err(fs::TryLockError::WouldBlock) => {
                Err(fail("in use by another running server (LOCK is held)".to_string()))
            }
            Err(fs::TryLockError::Error(e)) => Err(fail(format!("cannot lock: {e}"))),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Everything a server process needs before its loop starts: the validated config, its
/// locked data directory, and its bound node.
pub fn start_server(
    role: Role,
    config_path: &Path,
    id: NodeId,
) -> Result<(Config, DataDir, Node), StartError> {
    let config = Config::load(config_path)?;
    let Some(server) = config.server(id) else {
        let ids: Vec<String> = config.servers_of(role).map(|s| s.id.to_string()).collect();
        return Err(NodeError::NotInConfig(id, format!("{}s: {}", role, ids.join(", "))).into());
    };
    if server.role != role {
        return Err(StartError::WrongRole { id, actual: server.role, path: config.path.clone() });
    }
    let data_dir = DataDir::open(&server.data_dir)?;
    let node = Node::bind(&config, id)?;
    Ok((config, data_dir, node))
}

/// A server process from start to finish: [`start_server`], then [`Node::run`] with
/// `service` until SIGTERM or SIGINT.
pub fn serve<S: Service>(
    role: Role,
    config_path: &Path,
    id: NodeId,
    service: &mut S,
) -> Result<(), StartError> {
    let (_config, data_dir, mut node) = start_server(role, config_path, id)?;
    info!("data directory {}", data_dir.path().display());
    node.run(service).map_err(NodeError::Loop)?;
    info!("stopped");
    Ok(())
}

/// 32 bytes from the OS for nonces and jitter.
fn os_seed() -> io::Result<[u8; 32]> {
    use std::io::Read;
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut seed)?;
    Ok(seed)
}

/// The command line both server programs take.
#[derive(Debug, clap::Parser)]
#[command(version)]
struct ServerArgs {
    /// The cluster config (default: $MESHFS_CONFIG, else ./config.conf).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// This server's id in the config.
    #[arg(long, value_name = "N")]
    id: u32,
}

/// The `main` of a server program (`mserver`, `dserver`): parses `--config FILE --id N`,
/// sets up logging (`RUST_LOG`, default info), and runs `run` until it returns; an error is
/// logged, printed and turned into a failing exit status.
pub fn server_main<E: std::fmt::Display>(
    role: Role,
    about: &'static str,
    run: impl FnOnce(&Path, NodeId) -> Result<(), E>,
) -> std::process::ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let matches = ServerArgs::command().name(role.name()).about(about).get_matches();
    let args = ServerArgs::from_arg_matches(&matches).unwrap_or_else(|err| err.exit());
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let config = crate::config::resolve_path(args.config);
    match run(&config, NodeId(args.id)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            log::error!("{role} {}: {err}", args.id);
            eprintln!("{role}: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
