//! The MeshFS meta-server: keeps the namespace, agreed on by Raft among all meta-servers.
//!
//! - [`consensus`]: the Raft replica (raft-rs over the durable log) and the namespace.
//! - [`log_store`]: the durable Raft log: segments, hard state, snapshots.
//! - [`persist`]: the log and persister traits the replica runs on (disk + threads, or a
//!   simulation).
//!
//! [`run`] starts the server from a config file and an id and serves until SIGTERM or
//! SIGINT: it joins the group, runs Raft with the other meta-servers over it, and answers
//! clients. Changes (mkdir, create, rename, remove) are proposed to Raft and answered once
//! applied; reads (stat, list) are linearizable: the leader confirms its leadership with a
//! ReadIndex round and answers once it has applied that far. A follower answers "not
//! leader" with the leader it knows, and the client asks there.
//!
//! The leader also heals the cluster ([`heal`]): it re-replicates blocks of lost data-servers,
//! refills stale and damaged replicas, deletes copies nobody needs, drains and rebalances.

#![deny(missing_docs, missing_debug_implementations)]

//!
//! Where things are: `lib.rs` (here) holds the server's state, applies what Raft produced
//! ([`MetaServer`]'s flush) and dispatches events and timers; `requests` answers clients,
//! `reports` keeps the data-servers' reports and builds the status, `snapshot_pump` streams
//! snapshots to followers, [`heal`] repairs. The lock service's clock is
//! [`meshfs_core::lock_clock`]. Every handler takes the driver's `now`; nothing here reads a
//! clock.

pub mod consensus;
#[doc(hidden)]
pub mod fuzz;
pub mod heal;
pub mod log_store;
pub mod persist;
mod reports;
mod requests;
mod snapshot_pump;

use std::collections::{BTreeMap, HashMap};
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use meshfs_core::lock_clock::{CLOCK_PENDING_TIMEOUT, LockClock};
use meshfs_core::namespace::{Caller, Command, Entry, Outcome};
use meshfs_core::request::{Handled, common_reply, peer_message, unsupported};
use meshfs_core::session::SessionId;
use meshfs_core::settings::{self, Limits, Locks, Settings};
use meshfs_core::status::for_plain_client;
use meshfs_core::token::READ_TOKEN_MS;
use meshfs_core::wire::{Kind, Message, MetaOp};
use meshfs_group::driver::{Node, NodeError, Service, Stop};
use meshfs_group::process::{DataDir, StartError, start_in_process, start_server};
use meshfs_group::{ClientId, Config, GroupEvent, NodeId, Now, Role};
use meshfs_net::{ConnId, Priority};

use crate::consensus::{OutgoingSnapshot, Replica, ReplicaError};
use crate::heal::{Healer, Reported};
use crate::requests::{ReadSigner, answer, read, reply_of, wake_reply};

/// Time between Raft ticks: with [`consensus::ELECTION_TICKS`] an election starts after 1 to
/// 2 seconds without a leader; heartbeats go every [`consensus::HEARTBEAT_TICKS`] ticks.
pub const TICK_INTERVAL: Duration = Duration::from_millis(100);
const TICK_TIMER: u64 = 1;
const HEAL_TIMER: u64 = 2;
const EARLY_HEAL_TIMER: u64 = 3;
/// The leader plans repair work this often.
pub const HEAL_INTERVAL: Duration = Duration::from_secs(1);
/// A removed client's sessions are asked to end again after this long if still open.
const REVOKE_RETRY: Duration = Duration::from_secs(1);

/// Why a meta-server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// It could not start as a server.
    #[error(transparent)]
    Start(#[from] StartError),
    /// Its Raft replica could not start.
    #[error(transparent)]
    Replica(#[from] ReplicaError),
}

/// A read waiting for a ReadIndex round: who asked, what, as whom.
type PendingRead = (Waiter, MetaOp, Caller);

/// Most reads waiting here at once (in the round out and the next): past it a read is told
/// to come back, rather than hold memory for a client that pipelines without reading.
const MAX_WAITING_READS: usize = 65_536;
/// A read round not back by then is given up: its reads hear "unavailable" and retry.
const READ_ROUND_TIMEOUT: Duration = Duration::from_secs(10);

/// A client waiting for an answer: its connection and its frame's request id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Waiter {
    conn: ConnId,
    frame_id: u64,
    /// The client that asked.
    client: ClientId,
}

/// The meta-server above the group: its Raft replica and the clients waiting on it.
#[derive(Debug)]
pub struct MetaServer {
    replica: Replica,
    /// Copies per block for creates that ask for the default.
    default_replication: u8,
    /// Block size of new files.
    block_size: u32,
    /// The cluster secret, to sign write tokens.
    secret: Vec<u8>,
    /// Proposed changes, by (session, request id): who waits for the outcome.
    writes: HashMap<(SessionId, u64), Vec<Waiter>>,
    /// Reads in a ReadIndex round, by the round's context: one round serves every read
    /// that was waiting when it began.
    reads: HashMap<u64, Vec<PendingRead>>,
    /// Reads that came while a round was out: the next round's, which begins when that
    /// one ends (a read may not join a round that began before it came).
    read_queue: Vec<PendingRead>,
    /// The round out, and when it began.
    read_round: Option<(u64, Instant)>,
    next_read: u64,
    /// Reads confirmed, waiting for the namespace to apply up to their index.
    confirmed: Vec<(u64, Waiter, MetaOp, Caller)>,
    /// Snapshots being streamed, by follower: the snapshot and how far it has gone.
    sending: HashMap<u64, (OutgoingSnapshot, usize)>,
    /// What each data-server reports holding.
    reports: BTreeMap<NodeId, Reported>,
    /// How many clients' reports of a bad replica are logged (at most 20 a second).
    report_log: meshfs_group::log_budget::LogBudget,
    /// Repair work (the leader's).
    healer: Healer,
    /// Lock session settings.
    locks: Locks,
    /// Lock requests waiting in a lock's queue, by (session, request id): who to answer
    /// when the wait ends.
    lock_waits: HashMap<(SessionId, u64), Vec<Waiter>>,
    /// When the leader proposes the lock service's Clock entries.
    lock_clock: LockClock,
    /// Removed clients whose sessions the leader is ending, and when it last proposed so;
    /// and the session those entries carry.
    revoking: HashMap<ClientId, Instant>,
    revoke_session: SessionId,
    /// What one client may hold here at once.
    limits: Limits,
    /// Each client's requests held here unanswered (in `writes`, `lock_waits`, `reads`,
    /// `read_queue` and `confirmed`), to hold it to [`Limits`].
    in_flight: HashMap<ClientId, InFlight>,
}

/// A client's requests the leader holds unanswered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct InFlight {
    /// All of them.
    requests: usize,
    /// Those waiting in a lock's queue.
    lock_waits: usize,
}

impl MetaServer {
    /// A meta-server around its replica, creating files with the defaults of `settings`
    /// and healing, serving locks and holding clients to limits by them, signing write
    /// tokens with `secret` (its own entries in sessions of `nonce`).
    pub fn new(replica: Replica, settings: &Settings, secret: Vec<u8>, nonce: u64) -> MetaServer {
        let Settings { replication, heal, locks, limits, .. } = *settings;
        let block_size =
            u32::try_from(settings.block_size).expect("config validation caps block_size at 1 GiB");
        MetaServer {
            replica,
            default_replication: replication,
            block_size,
            secret,
            writes: HashMap::new(),
            reads: HashMap::new(),
            read_queue: Vec::new(),
            read_round: None,
            next_read: 1,
            confirmed: Vec::new(),
            sending: HashMap::new(),
            reports: BTreeMap::new(),
            report_log: meshfs_group::log_budget::LogBudget::new(20, Duration::from_secs(1)),
            healer: Healer::new(heal, nonce),
            lock_waits: HashMap::new(),
            lock_clock: LockClock::new(
                SessionId { client: ClientId(0), nonce: nonce.wrapping_add(1) },
                locks.session_lease,
                CLOCK_PENDING_TIMEOUT,
            ),
            locks,
            revoking: HashMap::new(),
            revoke_session: SessionId { client: ClientId(0), nonce: nonce.wrapping_add(2) },
            limits,
            in_flight: HashMap::new(),
        }
    }

    /// A request of `waiter`'s client is held here now.
    fn hold(&mut self, waiter: &Waiter) {
        self.in_flight.entry(waiter.client).or_default().requests += 1;
    }

    /// A request of `waiter`'s client held here was answered or dropped; `lock_wait` if it
    /// was waiting in a lock's queue.
    fn release(&mut self, waiter: &Waiter, lock_wait: bool) {
        if let Some(held) = self.in_flight.get_mut(&waiter.client) {
            held.requests = held.requests.saturating_sub(1);
            if lock_wait {
                held.lock_waits = held.lock_waits.saturating_sub(1);
            }
            if held.requests == 0 {
                self.in_flight.remove(&waiter.client);
            }
        }
    }

    /// The requests held here, counted from where they are held: what `in_flight` must be.
    fn count_in_flight(&self) -> HashMap<ClientId, InFlight> {
        let mut counts: HashMap<ClientId, InFlight> = HashMap::new();
        let mut add = |w: &Waiter, lock_wait: bool| {
            let held = counts.entry(w.client).or_default();
            held.requests += 1;
            held.lock_waits += usize::from(lock_wait);
        };
        self.writes.values().flatten().for_each(|w| add(w, false));
        self.lock_waits.values().flatten().for_each(|w| add(w, true));
        self.reads.values().flatten().for_each(|(w, _, _)| add(w, false));
        self.read_queue.iter().for_each(|(w, _, _)| add(w, false));
        self.confirmed.iter().for_each(|(_, w, _, _)| add(w, false));
        counts
    }

    /// Debug builds check the running counts against a recount while they are small.
    fn check_in_flight(&self) {
        if cfg!(debug_assertions)
            && self.in_flight.values().map(|h| h.requests).sum::<usize>() < 512
        {
            assert_eq!(self.in_flight, self.count_in_flight(), "requests in flight miscounted");
        }
    }

    /// Sends what the replica produced and answers every client it settled; begins the next
    /// read round when one is due, and sends what that produced.
    fn flush(&mut self, node: &mut Node, now: Now) {
        loop {
            self.flush_once(node, now);
            if !self.begin_read_round(node, now) {
                return;
            }
        }
    }

    fn flush_once(&mut self, node: &mut Node, now: Now) {
        self.check_in_flight();
        self.pump_snapshots(node);
        let output = self.replica.take_output();
        for snapshot in output.snapshots {
            self.sending.insert(snapshot.to, (snapshot, 0));
        }
        for (to, bytes) in output.messages {
            let Ok(peer) = u32::try_from(to) else { continue };
            let frame = Message::Raft(bytes).to_frame(0);
            if node.send(NodeId(peer), Priority::Control, frame).is_err() {
                // Down or unknown: Raft resends when it hears from the peer again.
                self.replica.report_unreachable(to);
            }
        }
        let leader = self.replica.is_leader();
        for (_, entry, outcome) in output.applied {
            if self.healer.owns(entry.session) {
                self.healer.applied(&entry.command, &outcome);
                if let (true, Some(delay)) = (leader, self.healer.early_scan()) {
                    node.set_timer(now.mono + delay, EARLY_HEAL_TIMER);
                }
                continue;
            }
            if let (true, Outcome::Committed { block, replicas }) = (leader, &outcome) {
                // The replicas may now drop the version the write started from. A notice
                // lost here only leaves that older copy on disk until the block's next write.
                for &replica in replicas {
                    let frame = Message::BlockCommitted(*block).to_frame(0);
                    if node.send(replica, Priority::Control, frame).is_err() {
                        debug!("data-server {replica} is down; it keeps {block}'s older copy");
                    }
                }
            }
            if let (true, Command::SwapReplica { path, index, failed, replacement }) =
                (leader, &entry.command)
                && matches!(outcome, Outcome::Swapped { .. })
            {
                info!(
                    "{path} block {index}: data-server {replacement} replaces {failed}, where the writer's chain failed"
                );
            }
            if let Outcome::Woke { wakes } = &outcome {
                for wake in wakes {
                    if let Some(waiters) = self.lock_waits.remove(&(wake.session, wake.request_id))
                    {
                        let reply = wake_reply(wake);
                        for waiter in waiters {
                            self.release(&waiter, true);
                            answer(node, waiter, reply.clone());
                        }
                    }
                }
            }
            self.lock_clock.applied(entry.session);
            let key = (entry.session, entry.request_id);
            if let Some(waiters) = self.writes.remove(&key) {
                if outcome == Outcome::LockQueued {
                    // Answered when the wait ends, by the entry that ends it.
                    for waiter in &waiters {
                        self.in_flight.entry(waiter.client).or_default().lock_waits += 1;
                    }
                    self.lock_waits.entry(key).or_default().extend(waiters);
                    continue;
                }
                let reply = reply_of(outcome, &self.secret, entry.session.client);
                for waiter in waiters {
                    self.release(&waiter, false);
                    answer(node, waiter, reply.clone());
                }
            }
        }
        for (context, index) in output.reads {
            if self.read_round.is_some_and(|(round, _)| round == context) {
                self.read_round = None;
            }
            for (waiter, op, caller) in self.reads.remove(&context).into_iter().flatten() {
                self.confirmed.push((index, waiter, op, caller));
            }
        }
        let applied = self.replica.status().applied;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.confirmed)
            .into_iter()
            .partition(|(index, _, _, _)| *index <= applied);
        self.confirmed = waiting;
        for (_, waiter, op, caller) in ready {
            self.release(&waiter, false);
            let signer = ReadSigner {
                secret: &self.secret,
                client: waiter.client,
                caller,
                expires_ms: now.wall_ms.saturating_add(READ_TOKEN_MS),
            };
            answer(node, waiter, read(self.replica.namespace(), &op, &signer));
        }
        if !self.replica.is_leader() {
            self.release_all(node);
            self.healer.stand_down();
        }
        self.lock_clock.observe_leadership(now, self.replica.is_leader());
    }

    /// The leader ends the lock sessions of clients no longer in the config (removed with
    /// `meshfs client remove`): one [`Command::RevokeClient`] per client, again a second
    /// later if it is still there (a lost proposal, a new leader).
    fn revoke_removed_clients(&mut self, node: &Node, now: Now) {
        if !self.replica.is_leader() {
            self.revoking.clear();
            return;
        }
        let gone: Vec<ClientId> = self
            .replica
            .namespace()
            .lock_table()
            .clients()
            .into_iter()
            .filter(|c| c.0 != 0 && node.config().client(*c).is_none())
            .collect();
        self.revoking.retain(|c, _| gone.contains(c));
        for client in gone {
            if self.revoking.get(&client).is_some_and(|at| now.mono < *at + REVOKE_RETRY) {
                continue;
            }
            info!("client {client} was removed from the config: ending its lock sessions");
            let entry = Entry {
                session: self.revoke_session,
                request_id: 0,
                time_ms: now.wall_ms,
                caller: meshfs_core::namespace::Caller::system(),
                command: Command::RevokeClient { client },
            };
            if let Err(err) = self.replica.propose(&entry) {
                debug!("could not propose ending client {client}'s sessions: {err:?}");
            }
            self.revoking.insert(client, now.mono);
        }
    }

    /// Proposes a Clock entry for the lock service when the [`LockClock`] says one is due.
    fn lock_clock(&mut self, node: &Node, now: Now) {
        self.lock_clock.observe(now, self.replica.is_leader(), has_quorum(node));
        let table = self.replica.namespace().lock_table();
        let Some(entry) = self.lock_clock.poll_entry(now, table) else { return };
        if let Command::Clock { expire } = &entry.command
            && !expire.is_empty()
        {
            info!("{} lock session(s) expired: {expire:?}", expire.len());
        }
        if let Err(err) = self.replica.propose(&entry) {
            debug!("the lock clock could not propose: {err:?}");
            self.lock_clock.not_proposed();
        }
    }
}

impl Service for MetaServer {
    fn start(&mut self, node: &mut Node, now: Now) {
        node.set_timer(now.mono + TICK_INTERVAL, TICK_TIMER);
        node.set_timer(now.mono + HEAL_INTERVAL, HEAL_TIMER);
    }

    fn handle_timer(&mut self, node: &mut Node, now: Now, token: u64) {
        if token == TICK_TIMER {
            self.replica.tick();
            node.set_timer(now.mono + TICK_INTERVAL, TICK_TIMER);
            self.lock_clock(node, now);
            self.revoke_removed_clients(node, now);
            self.flush(node, now);
        } else if token == HEAL_TIMER || token == EARLY_HEAL_TIMER {
            if token == HEAL_TIMER {
                node.set_timer(now.mono + HEAL_INTERVAL, HEAL_TIMER);
                // The running counts are kept exact, and recounted now and then all the
                // same: a count that drifted would shut a client out for good.
                let counted = self.count_in_flight();
                if counted != self.in_flight {
                    error!("requests in flight were miscounted; recounted");
                    self.in_flight = counted;
                }
            }
            if self.replica.is_leader() {
                self.healer.scan(node, &mut self.replica, &self.reports, now);
                self.flush(node, now);
            }
        }
    }

    fn handle_wake(&mut self, node: &mut Node, now: Now) {
        self.replica.poll_synced();
        self.flush(node, now);
    }

    fn handle_event(&mut self, node: &mut Node, now: Now, event: GroupEvent) {
        match event {
            GroupEvent::PeerDown { peer, role: Role::MServer, .. } => {
                self.replica.report_unreachable(u64::from(peer.0));
            }
            GroupEvent::PeerDown { peer, role: Role::DServer, .. } => {
                // Until it reports again, what it said may be out of date.
                if let Some(r) = self.reports.get_mut(&peer) {
                    r.complete = false;
                }
            }
            GroupEvent::ClientGone { conn, .. } => {
                let mut gone = Vec::new();
                let mut keep = |w: &Waiter, lock_wait: bool| {
                    if w.conn == conn {
                        gone.push((*w, lock_wait));
                    }
                    w.conn != conn
                };
                for waiters in self.writes.values_mut() {
                    waiters.retain(|w| keep(w, false));
                }
                self.writes.retain(|_, w| !w.is_empty());
                for waiters in self.lock_waits.values_mut() {
                    waiters.retain(|w| keep(w, true));
                }
                self.lock_waits.retain(|_, w| !w.is_empty());
                for batch in self.reads.values_mut() {
                    batch.retain(|(w, _, _)| keep(w, false));
                }
                self.read_queue.retain(|(w, _, _)| keep(w, false));
                self.confirmed.retain(|(_, w, _, _)| keep(w, false));
                for (waiter, lock_wait) in gone {
                    self.release(&waiter, lock_wait);
                }
                self.check_in_flight();
            }
            GroupEvent::PeerUp { .. } => {}
            GroupEvent::Message { from, frame } => {
                match peer_message(node.config(), from, frame, sender_role) {
                    Ok(message) => self.handle_peer(node, now, from, message),
                    Err(refused) => warn!("{refused}"),
                }
            }
            GroupEvent::ClientMessage { conn, client, frame } => {
                let status = || {
                    let admin = node.config().client(client).is_some_and(|c| c.admin);
                    let status = self.status(node, now);
                    if admin { status } else { for_plain_client(status) }
                };
                let reply = match common_reply(&frame, status) {
                    Handled::Answered(reply) => reply,
                    Handled::ForRole(Message::MetaRequest(request)) => {
                        let waiter = Waiter { conn, frame_id: frame.request_id, client };
                        self.handle_meta(node, now, waiter, client, request);
                        return;
                    }
                    Handled::ForRole(request) => {
                        warn!(
                            "client {client} sent message kind {}, which a meta-server does not serve",
                            request.kind()
                        );
                        unsupported(node.role(), &request)
                    }
                };
                node.reply(conn, reply.to_frame(frame.request_id));
            }
        }
    }
}

/// The role of the peers that send a meta-server each kind it takes from peers.
fn sender_role(kind: Kind) -> Option<Role> {
    match kind {
        Kind::Raft | Kind::SnapshotChunk => Some(Role::MServer),
        Kind::DataReport | Kind::RepairDone | Kind::ReplicaDamaged => Some(Role::DServer),
        _ => None,
    }
}

impl MetaServer {
    /// A message from peer `from`, of a kind and role [`sender_role`] accepted.
    fn handle_peer(&mut self, node: &mut Node, now: Now, from: NodeId, message: Message) {
        match message {
            Message::Raft(bytes) => {
                self.replica.step(u64::from(from.0), &bytes);
                self.flush(node, now);
            }
            Message::SnapshotChunk(chunk) => self.replica.receive_chunk(u64::from(from.0), chunk),
            Message::DataReport(report) => self.handle_report(from, &report),
            Message::RepairDone { task, error, .. } => {
                self.healer.copied(&mut self.replica, from, task, &error, now.wall_ms);
                self.flush(node, now);
                // A stream is free: start the next copies without waiting a second.
                if let Some(delay) = self.healer.early_scan() {
                    node.set_timer(now.mono + delay, EARLY_HEAL_TIMER);
                }
            }
            Message::ReplicaDamaged { block, reason } => {
                warn!("data-server {from} set aside its damaged replica of {block}: {reason}");
            }
            other => unreachable!("sender_role admits no kind {}", other.kind()),
        }
    }
}

/// Whether a majority of the meta-servers (this one included) is up as this server sees
/// its links.
pub(crate) fn has_quorum(node: &Node) -> bool {
    let mservers = node.config().servers_of(Role::MServer).count();
    let links_up =
        node.group().status().into_iter().filter(|p| p.role == Role::MServer && p.up).count();
    2 * (links_up + 1) > mservers
}

/// Runs meta-server `id` of the config at `config_path` until SIGTERM or SIGINT.
pub fn run(config_path: &Path, id: NodeId) -> Result<(), MetaError> {
    let (config, settings) = settings::load(config_path).map_err(StartError::from)?;
    let (data_dir, node) = start_server(Role::MServer, &config, id)?;
    serve_node(&config, &settings, id, &data_dir, node)
}

/// Runs meta-server `id` of `config` on `listener`, which the caller bound, until `stop` is
/// stopped: a server inside another program, as tests start one on a port they picked.
pub fn serve(
    config: &Config,
    id: NodeId,
    listener: TcpListener,
    stop: &Stop,
) -> Result<(), MetaError> {
    let settings = Settings::of(config).map_err(StartError::from)?;
    let (data_dir, node) = start_in_process(Role::MServer, config, id, listener, stop)?;
    serve_node(config, &settings, id, &data_dir, node)
}

fn serve_node(
    config: &Config,
    settings: &Settings,
    id: NodeId,
    data_dir: &DataDir,
    mut node: Node,
) -> Result<(), MetaError> {
    info!("data directory {}", data_dir.path().display());
    let voters: Vec<u64> = config.servers_of(Role::MServer).map(|s| u64::from(s.id.0)).collect();
    let raft_dir = data_dir.path().join("raft");
    let replica = Replica::open(
        &raft_dir,
        u64::from(id.0),
        &voters,
        settings.snapshot_entries,
        node.notifier(),
    )?;
    let nonce = node.group().incarnation();
    let mut server = MetaServer::new(replica, settings, config.secret.clone(), nonce);
    node.run(&mut server).map_err(|e| StartError::Node(NodeError::Loop(e)))?;
    info!("stopped");
    Ok(())
}
