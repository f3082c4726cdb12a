//! The server group as a sans-I/O state machine.
//!
//! Inputs are method calls with the current time (`handle_*`); outputs queue up and the
//! driver drains them: [`Group::poll_action`] (connect, send, close), [`Group::poll_event`]
//! (peer up/down, messages), [`Group::poll_timeout`] (when to call [`Group::handle_tick`]).
//! Nothing here opens a socket, reads the clock or draws entropy of its own.
//!
//! Rules:
//! - **Full mesh, one link per pair.** Both ends of a pair dial while their link is down, so
//!   either can restore it at once. When two authenticated connections exist between a pair:
//!   if they carry different incarnations of the peer, the peer restarted and the newer one
//!   wins; otherwise they crossed, and both ends keep the one dialed by the lower id.
//! - **Authentication** is the challenge-response of [`crate::auth`], keyed by the cluster
//!   secret for servers and the client's key for clients; the dialer proves itself first.
//!   Unknown ids, wrong keys and other cluster names are all refused with the same words
//!   ([`AUTHENTICATION_FAILED`]); the reason is logged here.
//! - **Liveness.** Each link is pinged every `ping_interval`; any frame counts as life; a link
//!   silent for `down_timeout` (that many missed pongs) is closed and the peer is down. RTT
//!   comes from pongs.
//! - **Reconnect** after a failed dial waits `backoff(attempt)`: doubling from
//!   `reconnect_min` to `reconnect_max`, jittered. A link that was up and fell redials after
//!   the first (shortest) delay.
//!
//! It must not know sockets, clocks or threads: the driver feeds it events with the time, and
//! carries out the actions it polls.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use meshfs_net::{ConnId, Frame, Priority};

use crate::auth::{self, Nonce, Side, Transcript};
use crate::config::{ClientConfig, ClientId, Config, NodeId, Role, Timing};
use crate::message::{FIRST_APP_KIND, GroupMessage, Identity};
use crate::rng::Rng;
use crate::rtt::{RttStats, backoff};

/// Pings kept awaiting their pong per link; older ones count as missed.
const MAX_OUTSTANDING_PINGS: usize = 64;
/// Largest frame body accepted before a connection has authenticated: handshake messages
/// are under 200 bytes, and an unauthenticated stranger must not make a server buffer a
/// megabyte per connection. The driver applies it to every new connection; [`Action::Trust`]
/// lifts it.
pub const HANDSHAKE_MAX_BODY_LEN: u32 = 4096;

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a connection to `addr`, then report [`Group::handle_dialed`] or
    /// [`Group::handle_dial_failed`].
    Connect {
        /// The peer.
        peer: NodeId,
        /// Its address.
        addr: SocketAddr,
    },
    /// Send a frame on `conn`.
    Send {
        /// The connection.
        conn: ConnId,
        /// Its queue.
        priority: Priority,
        /// The frame.
        frame: Frame,
    },
    /// `conn` is authenticated: lift the handshake limit on its frame size.
    Trust {
        /// The connection.
        conn: ConnId,
    },
    /// Close `conn` (after flushing what is queued, e.g. a Refuse).
    Close {
        /// The connection.
        conn: ConnId,
        /// Why, for the log.
        reason: String,
    },
}

/// What happened in the group, for the layers above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupEvent {
    /// An authenticated link to `peer` is up.
    PeerUp {
        /// The peer.
        peer: NodeId,
        /// Its role.
        role: Role,
    },
    /// The link to `peer` is gone.
    PeerDown {
        /// The peer.
        peer: NodeId,
        /// Its role.
        role: Role,
        /// Why.
        reason: String,
    },
    /// A message from a peer, of a kind at or above [`FIRST_APP_KIND`].
    Message {
        /// The sender.
        from: NodeId,
        /// The frame.
        frame: Frame,
    },
    /// A message from an authenticated client.
    ClientMessage {
        /// The connection, to reply on.
        conn: ConnId,
        /// The client.
        client: ClientId,
        /// The frame.
        frame: Frame,
    },
    /// A client connection closed.
    ClientGone {
        /// The connection.
        conn: ConnId,
        /// The client.
        client: ClientId,
    },
}

/// Why a send could not be queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// The peer is not in the config.
    #[error("unknown peer {0}")]
    UnknownPeer(NodeId),
    /// There is no link to the peer now.
    #[error("peer {0} is down")]
    PeerDown(NodeId),
    /// This node is not in the config.
    #[error("node {0} is not a server of the config")]
    NotInConfig(NodeId),
}

/// One peer's link as seen from here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// The peer.
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// Its configured address.
    pub addr: SocketAddr,
    /// Whether the link is up.
    pub up: bool,
    /// Since when the link has been in its current state.
    pub since: Instant,
    /// RTT of the current link (zeroes if down or before the first pong).
    pub rtt: RttStats,
}

#[derive(Debug)]
struct Ping {
    next_at: Instant,
    seq: u64,
    /// (seq, sent at), oldest first.
    outstanding: VecDeque<(u64, Instant)>,
    last_heard: Instant,
}

#[derive(Debug)]
enum Link {
    Down {
        since: Instant,
        /// Whether the layers above know the peer is down. False only during a handover:
        /// the link closed while our own dial to the peer was one message from done, which
        /// is how a crossing resolves when the peer closes its side first. The down is
        /// reported only if that dial fails.
        reported: bool,
    },
    Up {
        conn: ConnId,
        since: Instant,
        incarnation: u64,
        /// The node that opened this connection: decides which link survives a crossing.
        dialed_by: NodeId,
        rtt: RttStats,
        ping: Ping,
    },
}

#[derive(Debug)]
enum Dial {
    /// No outbound attempt; the next may start at `retry_at` if the link is down.
    Idle { retry_at: Instant, attempt: u32 },
    /// An outbound connection is being opened or authenticated.
    InFlight { conn: ConnId, attempt: u32 },
    /// The driver was asked to connect and has not reported back.
    Requested { attempt: u32 },
}

#[derive(Debug)]
struct Peer {
    role: Role,
    addr: SocketAddr,
    link: Link,
    dial: Dial,
}

/// What a refused dialer is told, whatever the reason.
pub const AUTHENTICATION_FAILED: &str = "authentication failed";

/// Per-connection handshake and session state.
#[derive(Debug)]
enum Conn {
    /// We dialed and sent Hello; waiting for the acceptor's Challenge.
    AwaitChallenge { peer: NodeId, nonce: Nonce, deadline: Instant },
    /// We sent our Proof; waiting for Welcome and the acceptor's proof.
    AwaitWelcome {
        peer: NodeId,
        incarnation: u64,
        nonce: Nonce,
        acceptor_nonce: Nonce,
        deadline: Instant,
    },
    /// We accepted; waiting for Hello.
    AwaitHello { deadline: Instant },
    /// We sent our Challenge; waiting for the dialer's Proof. `problem` is why it will be
    /// refused whatever it proves (another cluster, an unknown id), said only in our log.
    AwaitProof {
        dialer: Identity,
        incarnation: u64,
        dialer_nonce: Nonce,
        nonce: Nonce,
        deadline: Instant,
        problem: Option<String>,
    },
    /// An authenticated link to a peer (it is that peer's `Link::Up` connection).
    Peer { peer: NodeId },
    /// An authenticated client session.
    Client { client: ClientId },
}

impl Conn {
    fn deadline(&self) -> Option<Instant> {
        match self {
            Conn::AwaitChallenge { deadline, .. }
            | Conn::AwaitWelcome { deadline, .. }
            | Conn::AwaitHello { deadline }
            | Conn::AwaitProof { deadline, .. } => Some(*deadline),
            Conn::Peer { .. } | Conn::Client { .. } => None,
        }
    }
}

/// The group state machine of one server.
#[derive(Debug)]
pub struct Group {
    me: NodeId,
    role: Role,
    cluster_name: String,
    secret: Vec<u8>,
    client_keys: HashMap<ClientId, Vec<u8>>,
    timing: Timing,
    incarnation: u64,
    rng: Rng,
    peers: BTreeMap<NodeId, Peer>,
    conns: HashMap<ConnId, Conn>,
    actions: VecDeque<Action>,
    events: VecDeque<GroupEvent>,
    /// Refusals logged: a few a second.
    refusal_log: crate::log_budget::LogBudget,
}

impl Group {
    /// The group as seen by server `me` of `config`, starting at `now`. `seed` feeds nonces,
    /// the incarnation and jitter: from the OS in servers, fixed in tests.
    pub fn new(
        config: &Config,
        me: NodeId,
        seed: [u8; 32],
        now: Instant,
    ) -> Result<Group, GroupError> {
        let my = config.server(me).ok_or(GroupError::NotInConfig(me))?;
        let mut rng = Rng::from_seed(seed);
        let incarnation = rng.u64();
        let peers = config
            .servers
            .iter()
            .filter(|s| s.id != me)
            .map(|s| {
                let peer = Peer {
                    role: s.role,
                    addr: s.addr,
                    link: Link::Down { since: now, reported: true },
                    dial: Dial::Idle { retry_at: now, attempt: 0 },
                };
                (s.id, peer)
            })
            .collect();
        let client_keys = config.clients.values().map(|c| (c.id, c.key.clone())).collect();
        Ok(Group {
            me,
            role: my.role,
            cluster_name: config.cluster_name.clone(),
            secret: config.secret.clone(),
            client_keys,
            timing: config.timing,
            incarnation,
            rng,
            peers,
            conns: HashMap::new(),
            actions: VecDeque::new(),
            events: VecDeque::new(),
            refusal_log: crate::log_budget::LogBudget::new(10, Duration::from_secs(1)),
        })
    }

    /// The clients allowed from now on (the config was re-read): connections of clients
    /// removed, or whose key changed, are closed. Returns (added, removed, rekeyed).
    pub fn set_clients(
        &mut self,
        now: Instant,
        clients: &BTreeMap<ClientId, ClientConfig>,
    ) -> (Vec<ClientId>, Vec<ClientId>, Vec<ClientId>) {
        let keys: HashMap<ClientId, Vec<u8>> =
            clients.values().map(|c| (c.id, c.key.clone())).collect();
        let mut added: Vec<ClientId> =
            keys.keys().filter(|id| !self.client_keys.contains_key(id)).copied().collect();
        let mut removed: Vec<ClientId> =
            self.client_keys.keys().filter(|id| !keys.contains_key(id)).copied().collect();
        let mut rekeyed: Vec<ClientId> = self
            .client_keys
            .iter()
            .filter(|(id, key)| keys.get(id).is_some_and(|k| k != *key))
            .map(|(id, _)| *id)
            .collect();
        added.sort_unstable();
        removed.sort_unstable();
        rekeyed.sort_unstable();
        self.client_keys = keys;
        let cut: Vec<(ConnId, &'static str)> = self
            .conns
            .iter()
            .filter_map(|(conn, state)| match state {
                Conn::Client { client } if removed.contains(client) => {
                    Some((*conn, "the client was removed from the cluster"))
                }
                Conn::Client { client } if rekeyed.contains(client) => {
                    Some((*conn, "the client's key was changed"))
                }
                _ => None,
            })
            .collect();
        for (conn, reason) in cut {
            info!("closing client connection {conn}: {reason}");
            self.close(now, conn, reason.to_string());
        }
        (added, removed, rekeyed)
    }

    /// This node's id.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// This node's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// This process's incarnation (random per start).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    fn identity(&self) -> Identity {
        Identity::Server { id: self.me, role: self.role }
    }

    // ---- outputs ----

    /// The next thing the driver must do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next thing that happened, for the layers above.
    pub fn poll_event(&mut self) -> Option<GroupEvent> {
        self.events.pop_front()
    }

    /// When [`Group::handle_tick`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let peers = self.peers.values().filter_map(|peer| match (&peer.link, &peer.dial) {
            (Link::Up { ping, .. }, _) => {
                Some(ping.next_at.min(ping.last_heard + self.timing.down_timeout))
            }
            (Link::Down { .. }, Dial::Idle { retry_at, .. }) => Some(*retry_at),
            (Link::Down { .. }, _) => None,
        });
        let handshakes = self.conns.values().filter_map(Conn::deadline);
        peers.chain(handshakes).min()
    }

    /// The link state of every peer.
    pub fn status(&self) -> Vec<PeerStatus> {
        self.peers
            .iter()
            .map(|(&id, peer)| {
                let (up, since, rtt) = match &peer.link {
                    Link::Down { since, .. } => (false, *since, RttStats::default()),
                    Link::Up { since, rtt, .. } => (true, *since, *rtt),
                };
                PeerStatus { id, role: peer.role, addr: peer.addr, up, since, rtt }
            })
            .collect()
    }

    /// Whether the link to `peer` is up.
    pub fn is_up(&self, peer: NodeId) -> bool {
        matches!(self.peers.get(&peer), Some(Peer { link: Link::Up { .. }, .. }))
    }

    /// The peer whose authenticated link `conn` carries, if it carries one.
    pub fn peer_of(&self, conn: ConnId) -> Option<NodeId> {
        match self.conns.get(&conn) {
            Some(Conn::Peer { peer }) => Some(*peer),
            _ => None,
        }
    }

    /// The connection carrying the link to `peer`, if up.
    pub fn conn_of(&self, peer: NodeId) -> Result<ConnId, GroupError> {
        match self.peers.get(&peer) {
            None => Err(GroupError::UnknownPeer(peer)),
            Some(Peer { link: Link::Up { conn, .. }, .. }) => Ok(*conn),
            Some(_) => Err(GroupError::PeerDown(peer)),
        }
    }

    // ---- sends from the layers above ----

    /// Queues an application frame (kind at or above [`FIRST_APP_KIND`]) to `peer`.
    pub fn send(
        &mut self,
        peer: NodeId,
        priority: Priority,
        frame: Frame,
    ) -> Result<(), GroupError> {
        assert!(
            frame.kind >= FIRST_APP_KIND,
            "kind {} is reserved for the group layer",
            frame.kind
        );
        let conn = self.conn_of(peer)?;
        self.actions.push_back(Action::Send { conn, priority, frame });
        Ok(())
    }

    /// Queues an application frame to every peer whose link is up; returns how many.
    pub fn broadcast(&mut self, priority: Priority, frame: &Frame) -> usize {
        let conns: Vec<ConnId> = self
            .peers
            .values()
            .filter_map(|p| match p.link {
                Link::Up { conn, .. } => Some(conn),
                Link::Down { .. } => None,
            })
            .collect();
        for &conn in &conns {
            self.actions.push_back(Action::Send { conn, priority, frame: frame.clone() });
        }
        conns.len()
    }

    /// Queues a frame to a client connection (a reply).
    pub fn send_to_client(&mut self, conn: ConnId, priority: Priority, frame: Frame) {
        assert!(
            frame.kind >= FIRST_APP_KIND,
            "kind {} is reserved for the group layer",
            frame.kind
        );
        if matches!(self.conns.get(&conn), Some(Conn::Client { .. })) {
            self.actions.push_back(Action::Send { conn, priority, frame });
        }
    }

    fn send_group(&mut self, conn: ConnId, message: &GroupMessage) {
        let frame = Frame::new(message.kind(), 0, message.encode());
        self.actions.push_back(Action::Send { conn, priority: Priority::Control, frame });
    }

    // ---- inputs ----

    /// Does what is due at `now`: dials, pings, down detection, handshake timeouts.
    pub fn handle_tick(&mut self, now: Instant) {
        let expired: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline().is_some_and(|d| d <= now))
            .map(|(&conn, _)| conn)
            .collect();
        for conn in expired {
            self.close(now, conn, "handshake timed out".to_string());
        }

        let ids: Vec<NodeId> = self.peers.keys().copied().collect();
        for id in ids {
            self.tick_peer(now, id);
        }
        self.check_invariants();
    }

    fn tick_peer(&mut self, now: Instant, id: NodeId) {
        let down_timeout = self.timing.down_timeout;
        let interval = self.timing.ping_interval;
        let Some(peer) = self.peers.get_mut(&id) else { return };
        match (&mut peer.link, &peer.dial) {
            (Link::Up { conn, ping, .. }, _) => {
                let conn = *conn;
                if now.duration_since(ping.last_heard) >= down_timeout {
                    let silent = now.duration_since(ping.last_heard);
                    let missed = ping.outstanding.len();
                    let reason = format!(
                        "no pong for {} ms ({missed} pings unanswered)",
                        silent.as_millis()
                    );
                    self.close(now, conn, reason);
                    return;
                }
                if now >= ping.next_at {
                    ping.seq += 1;
                    let seq = ping.seq;
                    if ping.outstanding.len() == MAX_OUTSTANDING_PINGS {
                        ping.outstanding.pop_front();
                    }
                    ping.outstanding.push_back((seq, now));
                    // Keep the cadence; after a long stall, restart it from now.
                    ping.next_at += interval;
                    if ping.next_at <= now {
                        ping.next_at = now + interval;
                    }
                    self.send_group(conn, &GroupMessage::Ping { seq });
                }
            }
            (Link::Down { .. }, Dial::Idle { retry_at, attempt }) if *retry_at <= now => {
                let attempt = *attempt;
                peer.dial = Dial::Requested { attempt };
                self.actions.push_back(Action::Connect { peer: id, addr: peer.addr });
            }
            (Link::Down { .. }, _) => {}
        }
    }

    /// The driver opened `conn` towards `peer` (after [`Action::Connect`]).
    pub fn handle_dialed(&mut self, now: Instant, peer: NodeId, conn: ConnId) {
        let Some(p) = self.peers.get_mut(&peer) else { return };
        let attempt = match p.dial {
            Dial::Requested { attempt } => attempt,
            _ => 0,
        };
        p.dial = Dial::InFlight { conn, attempt };
        let nonce = self.rng.bytes32();
        let deadline = now + self.timing.handshake_timeout();
        self.conns.insert(conn, Conn::AwaitChallenge { peer, nonce, deadline });
        let hello = GroupMessage::Hello {
            cluster: self.cluster_name.clone(),
            identity: self.identity(),
            incarnation: self.incarnation,
            nonce,
        };
        self.send_group(conn, &hello);
    }

    /// The driver could not even start a connection to `peer`.
    pub fn handle_dial_failed(&mut self, now: Instant, peer: NodeId, error: &str) {
        debug!("dial to {peer} failed: {error}");
        self.schedule_retry(now, peer, true);
    }

    fn schedule_retry(&mut self, now: Instant, peer: NodeId, failed: bool) {
        let Some(p) = self.peers.get_mut(&peer) else { return };
        let attempt = match p.dial {
            Dial::Idle { attempt, .. }
            | Dial::InFlight { attempt, .. }
            | Dial::Requested { attempt } => attempt,
        };
        let next_attempt = if failed { attempt.saturating_add(1) } else { 0 };
        let delay =
            backoff(attempt, self.timing.reconnect_min, self.timing.reconnect_max, &mut self.rng);
        p.dial = Dial::Idle { retry_at: now + delay, attempt: next_attempt };
    }

    /// A listener accepted `conn`; it must authenticate before anything else.
    pub fn handle_accepted(&mut self, now: Instant, conn: ConnId) {
        let deadline = now + self.timing.handshake_timeout();
        self.conns.insert(conn, Conn::AwaitHello { deadline });
    }

    /// The connection is gone (whatever the reason).
    pub fn handle_closed(&mut self, now: Instant, conn: ConnId, reason: &str) {
        self.forget(now, conn, reason);
        self.check_invariants();
    }

    /// A frame arrived on `conn`.
    pub fn handle_frame(&mut self, now: Instant, conn: ConnId, frame: Frame) {
        let Some(state) = self.conns.get(&conn) else {
            // A frame from a connection we already closed: drop it.
            return;
        };
        if frame.kind >= FIRST_APP_KIND {
            match *state {
                Conn::Peer { peer } => {
                    self.heard(now, peer);
                    self.events.push_back(GroupEvent::Message { from: peer, frame });
                }
                Conn::Client { client } => {
                    self.events.push_back(GroupEvent::ClientMessage { conn, client, frame });
                }
                _ => self.refuse(
                    now,
                    conn,
                    format!("message kind {} before authentication", frame.kind),
                ),
            }
            return;
        }
        match GroupMessage::decode(frame.kind, &frame.body) {
            Ok(message) => self.handle_message(now, conn, message),
            Err(err) => self.refuse(now, conn, err.to_string()),
        }
        self.check_invariants();
    }

    fn handle_message(&mut self, now: Instant, conn: ConnId, message: GroupMessage) {
        let Some(state) = self.conns.remove(&conn) else { return };
        match (state, message) {
            (
                Conn::AwaitHello { .. },
                GroupMessage::Hello { cluster, identity, incarnation, nonce },
            ) => {
                self.on_hello(now, conn, cluster, identity, incarnation, nonce);
            }
            (
                Conn::AwaitChallenge { peer, nonce: my_nonce, .. },
                GroupMessage::Challenge { identity, incarnation, nonce },
            ) => {
                let expected =
                    self.peers.get(&peer).map(|p| Identity::Server { id: peer, role: p.role });
                if Some(identity) != expected {
                    // Back in the books as our dial, so closing it schedules the retry.
                    self.conns.insert(
                        conn,
                        Conn::AwaitChallenge { peer, nonce: my_nonce, deadline: now },
                    );
                    self.close(now, conn, format!("dialed {peer} but {identity} answered"));
                    return;
                }
                let transcript = Transcript {
                    cluster: &self.cluster_name,
                    dialer: self.identity(),
                    acceptor: identity,
                    dialer_nonce: &my_nonce,
                    acceptor_nonce: &nonce,
                };
                let my_proof = auth::prove(&self.secret, Side::Dialer, &transcript);
                let deadline = now + self.timing.handshake_timeout();
                self.conns.insert(
                    conn,
                    Conn::AwaitWelcome {
                        peer,
                        incarnation,
                        nonce: my_nonce,
                        acceptor_nonce: nonce,
                        deadline,
                    },
                );
                self.send_group(conn, &GroupMessage::Proof { proof: my_proof });
            }
            (
                Conn::AwaitProof { dialer, incarnation, dialer_nonce, nonce, problem, .. },
                GroupMessage::Proof { proof },
            ) => {
                let key = match dialer {
                    Identity::Server { .. } => Some(self.secret.clone()),
                    Identity::Client { id } => self.client_keys.get(&id).cloned(),
                };
                let transcript = Transcript {
                    cluster: &self.cluster_name,
                    dialer,
                    acceptor: self.identity(),
                    dialer_nonce: &dialer_nonce,
                    acceptor_nonce: &nonce,
                };
                let failure = match (problem, &key) {
                    (Some(problem), _) => Some(problem),
                    (None, None) => Some(format!("{dialer}: unknown")),
                    (None, Some(key)) if !auth::verify(key, Side::Dialer, &transcript, &proof) => {
                        Some(match dialer {
                            Identity::Server { .. } => format!("{dialer}: wrong cluster secret"),
                            Identity::Client { .. } => format!("{dialer}: wrong client key"),
                        })
                    }
                    (None, Some(_)) => None,
                };
                let (None, Some(key)) = (failure.clone(), key) else {
                    self.conns.insert(conn, Conn::AwaitHello { deadline: now });
                    self.refuse_authentication(now, conn, failure.unwrap_or_default());
                    return;
                };
                let my_proof = auth::prove(&key, Side::Acceptor, &transcript);
                self.send_group(conn, &GroupMessage::Welcome { proof: my_proof });
                self.actions.push_back(Action::Trust { conn });
                match dialer {
                    Identity::Server { id, .. } => self.establish(now, conn, id, incarnation, id),
                    Identity::Client { id } => {
                        debug!("client {id} connected");
                        self.conns.insert(conn, Conn::Client { client: id });
                    }
                }
            }
            (
                Conn::AwaitWelcome { peer, incarnation, nonce: my_nonce, acceptor_nonce, .. },
                GroupMessage::Welcome { proof },
            ) => {
                let role = self.peers.get(&peer).map_or(Role::MServer, |p| p.role);
                let acceptor = Identity::Server { id: peer, role };
                let transcript = Transcript {
                    cluster: &self.cluster_name,
                    dialer: self.identity(),
                    acceptor,
                    dialer_nonce: &my_nonce,
                    acceptor_nonce: &acceptor_nonce,
                };
                if !auth::verify(&self.secret, Side::Acceptor, &transcript, &proof) {
                    self.conns.insert(
                        conn,
                        Conn::AwaitWelcome {
                            peer,
                            incarnation,
                            nonce: my_nonce,
                            acceptor_nonce,
                            deadline: now,
                        },
                    );
                    self.close(now, conn, format!("{acceptor} failed to prove the cluster secret"));
                    return;
                }
                self.actions.push_back(Action::Trust { conn });
                self.establish(now, conn, peer, incarnation, self.me);
            }
            (state, GroupMessage::Refuse { reason }) if state.deadline().is_some() => {
                let who = match &state {
                    Conn::AwaitChallenge { peer, .. } | Conn::AwaitWelcome { peer, .. } => {
                        format!("peer {peer}")
                    }
                    Conn::AwaitProof { dialer, .. } => dialer.to_string(),
                    _ => format!("connection {conn}"),
                };
                warn!("{who} refused the handshake: {reason}");
                self.conns.insert(conn, state);
                self.close(now, conn, format!("refused by {who}: {reason}"));
            }
            (Conn::Peer { peer }, GroupMessage::Ping { seq }) => {
                self.conns.insert(conn, Conn::Peer { peer });
                self.heard(now, peer);
                self.send_group(conn, &GroupMessage::Pong { seq });
            }
            (Conn::Client { client }, GroupMessage::Ping { seq }) => {
                self.conns.insert(conn, Conn::Client { client });
                self.send_group(conn, &GroupMessage::Pong { seq });
            }
            (Conn::Peer { peer }, GroupMessage::Pong { seq }) => {
                self.conns.insert(conn, Conn::Peer { peer });
                self.on_pong(now, peer, seq);
            }
            (state, message) => {
                // Anything else breaks the protocol: refuse and close.
                self.conns.insert(conn, state);
                self.refuse(now, conn, format!("unexpected {:?} message", message.kind()));
            }
        }
    }

    fn on_hello(
        &mut self,
        now: Instant,
        conn: ConnId,
        cluster: String,
        identity: Identity,
        incarnation: u64,
        dialer_nonce: Nonce,
    ) {
        // Whatever is wrong is said only after the dialer's proof, and only in our log: the
        // dialer learns neither this cluster's name nor which ids exist.
        let problem = if cluster != self.cluster_name {
            Some(format!(
                "cluster name mismatch: {identity} is in {cluster:?}, this is {:?}",
                self.cluster_name
            ))
        } else {
            match identity {
                Identity::Server { id, .. } if id == self.me => {
                    Some(format!("{identity} claims this server's own id"))
                }
                Identity::Server { id, role } => match self.peers.get(&id) {
                    None => Some(format!("unknown node id {id}")),
                    Some(p) if p.role != role => {
                        Some(format!("node {id} is a {} in the config, not a {role}", p.role))
                    }
                    Some(_) => None,
                },
                Identity::Client { id } if !self.client_keys.contains_key(&id) => {
                    Some(format!("unknown client id {id}"))
                }
                Identity::Client { .. } => None,
            }
        };
        let nonce = self.rng.bytes32();
        let deadline = now + self.timing.handshake_timeout();
        self.conns.insert(
            conn,
            Conn::AwaitProof {
                dialer: identity,
                incarnation,
                dialer_nonce,
                nonce,
                deadline,
                problem,
            },
        );
        let challenge = GroupMessage::Challenge {
            identity: self.identity(),
            incarnation: self.incarnation,
            nonce,
        };
        self.send_group(conn, &challenge);
    }

    /// An authenticated connection to `peer` (opened by `dialed_by`) is ready.
    fn establish(
        &mut self,
        now: Instant,
        conn: ConnId,
        peer: NodeId,
        incarnation: u64,
        dialed_by: NodeId,
    ) {
        let me = self.me;
        let Some(p) = self.peers.get_mut(&peer) else { return };
        if let Dial::InFlight { conn: dialing, .. } = p.dial
            && dialing == conn
        {
            p.dial = Dial::Idle { retry_at: now, attempt: 0 };
        }
        let fresh_link = |conn| Link::Up {
            conn,
            since: now,
            incarnation,
            dialed_by,
            rtt: RttStats::default(),
            ping: Ping { next_at: now, seq: 0, outstanding: VecDeque::new(), last_heard: now },
        };
        match &p.link {
            Link::Down { reported, .. } => {
                let role = p.role;
                if *reported {
                    info!("peer {role} {peer} up ({conn} by {dialed_by})");
                    self.events.push_back(GroupEvent::PeerUp { peer, role });
                } else {
                    debug!("link to {role} {peer} handed over to {conn}");
                }
                p.link = fresh_link(conn);
                self.conns.insert(conn, Conn::Peer { peer });
            }
            Link::Up { conn: old, incarnation: old_incarnation, dialed_by: old_dialer, .. } => {
                let (old, old_incarnation, old_dialer) = (*old, *old_incarnation, *old_dialer);
                let role = p.role;
                if old_incarnation != incarnation {
                    // The peer restarted: the old connection belongs to a dead process.
                    p.link = fresh_link(conn);
                    self.conns.insert(conn, Conn::Peer { peer });
                    self.conns.remove(&old);
                    self.actions.push_back(Action::Close {
                        conn: old,
                        reason: format!("superseded: {peer} restarted"),
                    });
                    let reason = "restarted".to_string();
                    info!("peer {role} {peer} restarted; link moved to {conn}");
                    self.events.push_back(GroupEvent::PeerDown { peer, role, reason });
                    self.events.push_back(GroupEvent::PeerUp { peer, role });
                    return;
                }
                // Crossing connections: both ends keep the one the lower id dialed.
                let keeper = me.min(peer);
                let keep_new = dialed_by == keeper && old_dialer != keeper;
                let (keep, drop) = if keep_new { (conn, old) } else { (old, conn) };
                debug!("crossing connections with {peer}: keeping {keep}, closing {drop}");
                if keep_new && let Link::Up { conn: c, dialed_by: d, .. } = &mut p.link {
                    *c = conn;
                    *d = dialed_by;
                }
                self.conns.insert(keep, Conn::Peer { peer });
                self.conns.remove(&drop);
                self.actions.push_back(Action::Close {
                    conn: drop,
                    reason: format!("duplicate link to {peer}"),
                });
            }
        }
    }

    fn heard(&mut self, now: Instant, peer: NodeId) {
        if let Some(Peer { link: Link::Up { ping, .. }, .. }) = self.peers.get_mut(&peer) {
            ping.last_heard = now;
        }
    }

    fn on_pong(&mut self, now: Instant, peer: NodeId, seq: u64) {
        let Some(Peer { link: Link::Up { ping, rtt, .. }, .. }) = self.peers.get_mut(&peer) else {
            return;
        };
        ping.last_heard = now;
        let Some(pos) = ping.outstanding.iter().position(|&(s, _)| s == seq) else {
            debug!("pong {seq} from {peer} matches no outstanding ping");
            return;
        };
        let (_, sent) = ping.outstanding[pos];
        // Older pings were missed; they will never be answered on an ordered stream.
        ping.outstanding.drain(..=pos);
        rtt.record(now.duration_since(sent));
        debug!("pong from {peer}: rtt {} us", rtt.last.as_micros());
    }

    /// Sends a refusal with its reason, logs it, and closes.
    /// Refuses a dialer that did not authenticate: the same words whatever went wrong; the
    /// real `reason` goes to our log.
    fn refuse_authentication(&mut self, now: Instant, conn: ConnId, reason: String) {
        self.log_refusal(now, conn, &reason);
        let message = GroupMessage::Refuse { reason: AUTHENTICATION_FAILED.to_string() };
        self.send_group(conn, &message);
        self.close(now, conn, reason);
    }

    fn refuse(&mut self, now: Instant, conn: ConnId, reason: String) {
        self.log_refusal(now, conn, &reason);
        self.send_group(conn, &GroupMessage::Refuse { reason: reason.clone() });
        self.close(now, conn, reason);
    }

    /// Logs a refusal, a few a second at most: strangers choose how often they are refused.
    fn log_refusal(&mut self, now: Instant, conn: ConnId, reason: &str) {
        if let Some(left_out) = self.refusal_log.allow(now) {
            let reason = crate::log_budget::escaped(reason, 300);
            if left_out > 0 {
                warn!("refusing connection {conn}: {reason} ({left_out} more refused since)");
            } else {
                warn!("refusing connection {conn}: {reason}");
            }
        }
    }

    /// Asks the driver to close `conn` and forgets it now.
    fn close(&mut self, now: Instant, conn: ConnId, reason: String) {
        self.forget(now, conn, &reason);
        self.actions.push_back(Action::Close { conn, reason });
    }

    /// The one place a connection leaves the group's books.
    fn forget(&mut self, now: Instant, conn: ConnId, reason: &str) {
        let Some(state) = self.conns.remove(&conn) else { return };
        match state {
            Conn::Peer { peer } => {
                let handover = self.handover_dial(peer);
                let Some(p) = self.peers.get_mut(&peer) else { return };
                match p.link {
                    Link::Up { conn: up, .. } if up == conn && handover => {
                        debug!(
                            "link {conn} to {peer} closed ({reason}); our own dial is completing"
                        );
                        p.link = Link::Down { since: now, reported: false };
                    }
                    Link::Up { conn: up, .. } if up == conn => {
                        info!("peer {} {peer} down: {reason}", p.role);
                        p.link = Link::Down { since: now, reported: true };
                        let role = p.role;
                        self.events.push_back(GroupEvent::PeerDown {
                            peer,
                            role,
                            reason: reason.to_string(),
                        });
                        if !matches!(p.dial, Dial::InFlight { .. } | Dial::Requested { .. }) {
                            self.schedule_retry(now, peer, false);
                        }
                    }
                    _ => self.dial_ended(now, peer, conn),
                }
            }
            Conn::AwaitChallenge { peer, .. } | Conn::AwaitWelcome { peer, .. } => {
                self.dial_ended(now, peer, conn);
            }
            Conn::Client { client } => {
                debug!("client {client} gone: {reason}");
                self.events.push_back(GroupEvent::ClientGone { conn, client });
            }
            Conn::AwaitHello { .. } | Conn::AwaitProof { .. } => {}
        }
    }

    /// Whether our dial to `peer` has sent its proof and waits only for Welcome.
    fn handover_dial(&self, peer: NodeId) -> bool {
        match self.peers.get(&peer).map(|p| &p.dial) {
            Some(Dial::InFlight { conn, .. }) => {
                matches!(self.conns.get(conn), Some(Conn::AwaitWelcome { .. }))
            }
            _ => false,
        }
    }

    /// Our outbound attempt `conn` to `peer` ended without becoming the link.
    fn dial_ended(&mut self, now: Instant, peer: NodeId, conn: ConnId) {
        let Some(p) = self.peers.get_mut(&peer) else { return };
        if let Link::Down { reported: reported @ false, .. } = &mut p.link
            && matches!(p.dial, Dial::InFlight { conn: c, .. } if c == conn)
        {
            // The handover failed: now the peer is down.
            *reported = true;
            let role = p.role;
            info!("peer {role} {peer} down: link closed and the replacement failed");
            let reason = "link closed and the replacement connection failed".to_string();
            self.events.push_back(GroupEvent::PeerDown { peer, role, reason });
        }
        let Some(p) = self.peers.get(&peer) else { return };
        if matches!(p.dial, Dial::InFlight { conn: c, .. } if c == conn) {
            let up = matches!(p.link, Link::Up { .. });
            // A failed dial while the link is down backs off; one made moot by an inbound link
            // does not count as a failure.
            self.schedule_retry(now, peer, !up);
        }
    }

    /// Checks the books agree. Cheap; runs after every input in debug builds.
    pub fn check_invariants(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        for (&id, peer) in &self.peers {
            assert_ne!(id, self.me, "a node is never its own peer");
            if let Link::Up { conn, .. } = peer.link {
                assert!(
                    matches!(self.conns.get(&conn), Some(Conn::Peer { peer }) if *peer == id),
                    "peer {id}'s link {conn} is not an established connection to it"
                );
            }
            if let Link::Down { reported: false, .. } = peer.link {
                assert!(
                    matches!(peer.dial, Dial::InFlight { .. }),
                    "peer {id}'s down is unreported but no dial can complete the handover"
                );
            }
            if let Dial::InFlight { conn, .. } = peer.dial {
                let in_books = self.conns.get(&conn);
                assert!(
                    in_books.is_none()
                        || matches!(in_books, Some(Conn::AwaitChallenge { peer, .. } | Conn::AwaitWelcome { peer, .. }) if *peer == id)
                        || matches!(peer.link, Link::Up { conn: up, .. } if up == conn),
                    "peer {id}'s dial {conn} is in the wrong state"
                );
            }
        }
        for (conn, state) in &self.conns {
            if let Conn::Peer { peer } = state {
                assert!(
                    matches!(self.peers.get(peer), Some(Peer { link: Link::Up { conn: up, .. }, .. }) if up == conn),
                    "connection {conn} is established to {peer} but is not its link"
                );
            }
        }
    }

    /// Every connection the group holds (handshaking or established), for shutdown.
    pub fn connections(&self) -> Vec<ConnId> {
        self.conns.keys().copied().collect()
    }

    /// The timings in force.
    pub fn timing(&self) -> Timing {
        self.timing
    }
}
