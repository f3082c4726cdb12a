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

pub mod consensus;
pub mod heal;
pub mod log_store;
pub mod persist;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, info, warn};
use meshfs_core::descriptor::MAX_BLOCKS_PER_FILE;
use meshfs_core::error::NsError;
use meshfs_core::locks::{Wake, WakeResult};
use meshfs_core::namespace::{Command, Entry, Namespace, Outcome, Stat};
use meshfs_core::path::MeshPath;
use meshfs_core::placement::{DataServerLoad, place};
use meshfs_core::request::{Handled, common_reply, unsupported};
use meshfs_core::session::SessionId;
use meshfs_core::status::node_status;
use meshfs_core::token::{Token, TokenOp};
use meshfs_core::wire::{
    DataReport, Kind, MAX_LIST_PAGE, MAX_LOCK_PARTIES, MAX_LOCKS_LISTED, MAX_STAT_BLOCKS, Message,
    MetaOp, MetaReply, MetaRequest, RaftInfo, ReportedDataServer, SnapshotChunk, StatusReply,
};
use meshfs_group::driver::{Node, NodeError, Service, StartError, start_server};
use meshfs_group::{ClientId, GroupEvent, Heal, Locks, NodeId, Role};
use meshfs_net::{ConnId, Priority};
use raft::StateRole;

use crate::consensus::{OutgoingSnapshot, ProposeError, RaftStatus, Replica, ReplicaError};
use crate::heal::{Healer, Reported};

/// Time between Raft ticks: with [`consensus::ELECTION_TICKS`] an election starts after 1 to
/// 2 seconds without a leader; heartbeats go every [`consensus::HEARTBEAT_TICKS`] ticks.
pub const TICK_INTERVAL: Duration = Duration::from_millis(100);
const TICK_TIMER: u64 = 1;
const HEAL_TIMER: u64 = 2;
const EARLY_HEAL_TIMER: u64 = 3;
/// The leader plans repair work this often.
pub const HEAL_INTERVAL: Duration = Duration::from_secs(1);
/// Snapshot data travels in pieces of this size, on the bulk queue.
const SNAPSHOT_CHUNK_BYTES: usize = 256 * 1024;
/// The snapshot pump sends only while less than this is queued to the peer (counting what
/// it sent in this call): the peer's bulk queue (8 MiB) never fills, heartbeats never wait.
const SNAPSHOT_PUMP_BYTES: usize = 2 * 1024 * 1024;
/// Most sessions one Clock entry expires (more wait for the next).
const MAX_EXPIRIES_PER_ENTRY: usize = 1000;

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

/// A client waiting for an answer: its connection and its frame's request id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Waiter {
    conn: ConnId,
    frame_id: u64,
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
    /// Reads waiting for their ReadIndex round, by context.
    reads: HashMap<u64, (Waiter, MetaOp)>,
    next_read: u64,
    /// Reads confirmed, waiting for the namespace to apply up to their index.
    confirmed: Vec<(u64, Waiter, MetaOp)>,
    /// Snapshots being streamed, by follower: the snapshot and how far it has gone.
    sending: HashMap<u64, (OutgoingSnapshot, usize)>,
    /// What each data-server reports holding.
    reports: BTreeMap<NodeId, Reported>,
    /// Replicas clients found down or damaged: (file id, index, data-server) -> why.
    bad_replicas: BTreeMap<(u32, u16, NodeId), String>,
    /// Repair work (the leader's).
    healer: Healer,
    /// Lock session settings.
    locks: Locks,
    /// Lock requests waiting in a lock's queue, by (session, request id): who to answer
    /// when the wait ends.
    lock_waits: HashMap<(SessionId, u64), Vec<Waiter>>,
    /// When this server last became the leader: it expires no session for one lease
    /// after, so that clients cut off by the election can reach it first.
    leader_since: Option<Instant>,
    /// A Clock entry proposed and not yet applied, and when.
    clock_pending: Option<Instant>,
    /// Since when this server has seen a majority of the meta-servers up (itself included).
    quorum_since: Option<Instant>,
    /// The session of this server's Clock entries.
    clock_session: SessionId,
}

fn raft_info(status: RaftStatus, inodes: u64) -> RaftInfo {
    let role = match status.role {
        StateRole::Follower => 1,
        StateRole::Candidate => 2,
        StateRole::Leader => 3,
        StateRole::PreCandidate => 4,
    };
    RaftInfo {
        role,
        term: status.term,
        commit_index: status.commit,
        applied_index: status.applied,
        leader: status.leader.and_then(|l| u32::try_from(l).ok()).unwrap_or(0),
        inodes,
    }
}

impl MetaServer {
    /// A meta-server around its replica, creating files with these defaults, signing write
    /// tokens with `secret`, healing with `heal` (its own entries in session `nonce`).
    pub fn new(
        replica: Replica,
        default_replication: u8,
        block_size: u32,
        secret: Vec<u8>,
        heal: Heal,
        locks: Locks,
        nonce: u64,
    ) -> MetaServer {
        MetaServer {
            replica,
            default_replication,
            block_size,
            secret,
            writes: HashMap::new(),
            reads: HashMap::new(),
            next_read: 1,
            confirmed: Vec::new(),
            sending: HashMap::new(),
            reports: BTreeMap::new(),
            bad_replicas: BTreeMap::new(),
            healer: Healer::new(heal, nonce),
            locks,
            lock_waits: HashMap::new(),
            leader_since: None,
            clock_pending: None,
            quorum_since: None,
            clock_session: SessionId { client: ClientId(0), nonce: nonce.wrapping_add(1) },
        }
    }

    /// Sends what the replica produced and answers every client it settled.
    fn flush(&mut self, node: &mut Node) {
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
                    node.set_timer(Instant::now() + delay, EARLY_HEAL_TIMER);
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
                            answer(node, waiter, reply.clone());
                        }
                    }
                }
            }
            if entry.session == self.clock_session {
                self.clock_pending = None;
            }
            let key = (entry.session, entry.request_id);
            if let Some(waiters) = self.writes.remove(&key) {
                if outcome == Outcome::LockQueued {
                    // Answered when the wait ends, by the entry that ends it.
                    self.lock_waits.entry(key).or_default().extend(waiters);
                    continue;
                }
                let reply = reply_of(outcome, &self.secret, entry.session.client);
                for waiter in waiters {
                    answer(node, waiter, reply.clone());
                }
            }
        }
        for (context, index) in output.reads {
            if let Some((waiter, op)) = self.reads.remove(&context) {
                self.confirmed.push((index, waiter, op));
            }
        }
        let applied = self.replica.status().applied;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.confirmed)
            .into_iter()
            .partition(|(index, _, _)| *index <= applied);
        self.confirmed = waiting;
        for (_, waiter, op) in ready {
            answer(node, waiter, read(self.replica.namespace(), &op));
        }
        if !self.replica.is_leader() {
            self.release_all(node);
            self.healer.stand_down();
            self.leader_since = None;
            self.clock_pending = None;
        } else if self.leader_since.is_none() {
            self.leader_since = Some(Instant::now());
        }
    }

    /// The leader's clock for the lock service: proposes a Clock entry when a waiter's
    /// deadline or a lock-delay has come, or a session's lease ran out. It expires no
    /// session in its first lease as leader, nor in the first lease after it sees a majority
    /// of the meta-servers again: clients cut off by the election or the outage reach it
    /// first. (Without a majority nothing it proposes commits; an expiry decided then would
    /// commit the moment the majority came back, before any client could renew.)
    fn lock_clock(&mut self, node: &Node) {
        let Some(since) = self.leader_since else { return };
        let mservers = node.config().servers_of(Role::MServer).count();
        let links_up =
            node.group().status().into_iter().filter(|p| p.role == Role::MServer && p.up).count();
        if 2 * (links_up + 1) > mservers {
            self.quorum_since.get_or_insert_with(Instant::now);
        } else {
            self.quorum_since = None;
        }
        if self.clock_pending.is_some_and(|at| at.elapsed() < Duration::from_secs(2)) {
            return;
        }
        let now = now_ms();
        let table = self.replica.namespace().lock_table();
        let lease = self.locks.session_lease;
        let may_expire =
            since.elapsed() >= lease && self.quorum_since.is_some_and(|at| at.elapsed() >= lease);
        let Some(expire) = table.clock_due(now, may_expire, MAX_EXPIRIES_PER_ENTRY) else {
            return;
        };
        if !expire.is_empty() {
            info!("{} lock session(s) expired: {expire:?}", expire.len());
        }
        let entry = Entry {
            session: self.clock_session,
            request_id: 0,
            time_ms: now,
            command: Command::Clock { expire },
        };
        match self.replica.propose(&entry) {
            Ok(()) => self.clock_pending = Some(Instant::now()),
            Err(err) => debug!("the lock clock could not propose: {err:?}"),
        }
    }

    /// Streams snapshot pieces to followers as their links drain; then the snapshot message
    /// itself on the same (bulk) queue, so that it arrives after its data.
    fn pump_snapshots(&mut self, node: &mut Node) {
        let peers: Vec<u64> = self.sending.keys().copied().collect();
        for peer in peers {
            let Ok(id) = u32::try_from(peer).map(NodeId) else { continue };
            let finished = loop {
                let Some(queued) = node.queued_bytes(id) else { break Some(false) };
                if queued >= SNAPSHOT_PUMP_BYTES {
                    break None;
                }
                let (snapshot, offset) = self.sending.get_mut(&peer).expect("listed above");
                let total = snapshot.data.len();
                if *offset < total {
                    let end = (*offset + SNAPSHOT_CHUNK_BYTES).min(total);
                    let chunk = SnapshotChunk {
                        index: snapshot.index,
                        term: snapshot.term,
                        total: total as u64,
                        offset: *offset as u64,
                        data: snapshot.data[*offset..end].to_vec(),
                    };
                    if node
                        .send(id, Priority::Bulk, Message::SnapshotChunk(chunk).to_frame(0))
                        .is_err()
                    {
                        break Some(false);
                    }
                    *offset = end;
                } else {
                    let message = Message::Raft(snapshot.message.clone()).to_frame(0);
                    break Some(node.send(id, Priority::Bulk, message).is_ok());
                }
            };
            if let Some(delivered) = finished {
                self.sending.remove(&peer);
                if delivered {
                    info!("snapshot streamed to {peer}");
                } else {
                    warn!("snapshot to {peer} failed: the link went down; Raft will retry");
                }
                self.replica.report_snapshot(peer, delivered);
            }
        }
    }

    /// No longer the leader: everyone waiting here asks the new one. A retried write keeps
    /// its request id, so it is applied once however often it is proposed.
    fn release_all(&mut self, node: &mut Node) {
        if self.writes.is_empty()
            && self.reads.is_empty()
            && self.confirmed.is_empty()
            && self.lock_waits.is_empty()
        {
            return;
        }
        let reply = MetaReply::NotLeader { leader: self.leader_id() };
        let mut waiters: Vec<Waiter> = self.writes.drain().flat_map(|(_, w)| w).collect();
        waiters.extend(self.lock_waits.drain().flat_map(|(_, w)| w));
        waiters.extend(self.reads.drain().map(|(_, (w, _))| w));
        waiters.extend(self.confirmed.drain(..).map(|(_, w, _)| w));
        for waiter in waiters {
            answer(node, waiter, reply.clone());
        }
    }

    fn leader_id(&self) -> Option<NodeId> {
        self.replica.status().leader.and_then(|l| u32::try_from(l).ok()).map(NodeId)
    }

    fn handle_meta(
        &mut self,
        node: &mut Node,
        waiter: Waiter,
        client: ClientId,
        request: MetaRequest,
    ) {
        if !self.replica.is_leader() {
            answer(node, waiter, MetaReply::NotLeader { leader: self.leader_id() });
            return;
        }
        let session = SessionId { client, nonce: request.session };
        let command = match request.op {
            MetaOp::ReportBadReplica { block, server, reason } => {
                // Soft state for the repair work (issue 6): which replica of which block failed.
                warn!(
                    "client {client} reports data-server {server} failed block {block}: {reason}"
                );
                self.bad_replicas.insert((block.file.id.0, block.index, server), reason);
                return answer(node, waiter, MetaReply::Done);
            }
            MetaOp::Fsck { path } => {
                let namespace = self.replica.namespace();
                let reply = match heal::fsck(node, namespace, &self.reports, &self.healer, &path) {
                    Ok(report) => MetaReply::Fsck(report),
                    Err(err) => MetaReply::Failed(err),
                };
                return answer(node, waiter, reply);
            }
            MetaOp::Drain { server, draining } => {
                if node.config().server(server).is_none_or(|s| s.role != Role::DServer) {
                    let err =
                        NsError::NotFound(format!("data-server {server} (not in the config)"));
                    return answer(node, waiter, MetaReply::Failed(err));
                }
                Command::SetDraining { server, draining }
            }
            MetaOp::OpenSession => Command::OpenSession {
                lease_ms: millis(self.locks.session_lease),
                lock_delay_ms: millis(self.locks.lock_delay),
            },
            MetaOp::KeepAlive => Command::KeepAlive,
            MetaOp::CloseSession => Command::CloseSession,
            MetaOp::Lock { path, mode, wait_ms } => Command::Lock { path, mode, wait_ms },
            MetaOp::Unlock { path } => Command::Unlock { path },
            MetaOp::Stat { .. } | MetaOp::List { .. } | MetaOp::Locks { .. } => {
                let context = self.next_read;
                self.next_read += 1;
                let result = self.replica.read_index(context).map(|()| {
                    self.reads.insert(context, (waiter, request.op));
                });
                return self.settle(node, waiter, result);
            }
            MetaOp::Expand { path, size } => match self.place(node, path, size) {
                Ok(command) => command,
                Err(err) => return answer(node, waiter, MetaReply::Failed(err)),
            },
            MetaOp::Mkdir { path, parents } => Command::Mkdir { path, parents },
            MetaOp::Create { path, replication } => Command::CreateFile {
                path,
                replication: if replication == 0 { self.default_replication } else { replication },
                block_size: self.block_size,
            },
            MetaOp::CreateWrite { path, replication, size } => {
                let replication =
                    if replication == 0 { self.default_replication } else { replication };
                // One block at most (the state machine refuses more); room for what it holds.
                let largest = size.min(u64::from(self.block_size));
                match place(1, replication, largest, &self.loads(node)) {
                    Ok(mut sets) => Command::CreateWrite {
                        path,
                        replication,
                        block_size: self.block_size,
                        size,
                        placement: sets.pop().unwrap_or_default(),
                    },
                    Err(e) => {
                        let err = NsError::Placement(e.to_string());
                        return answer(node, waiter, MetaReply::Failed(err));
                    }
                }
            }
            MetaOp::Rename { from, to } => Command::Rename { from, to },
            MetaOp::Remove { path, recursive } => Command::Remove { path, recursive },
            MetaOp::WriteLease { path, index } => Command::WriteLease { path, index },
            MetaOp::CommitWrite { path, index, version } => {
                Command::CommitWrite { path, index, version }
            }
            MetaOp::SwapReplica { path, index, failed } => {
                match self.replacement(node, &path, index, failed) {
                    Ok(replacement) => Command::SwapReplica { path, index, failed, replacement },
                    Err(err) => return answer(node, waiter, MetaReply::Failed(err)),
                }
            }
        };
        let entry = Entry { session, request_id: request.request_id, time_ms: now_ms(), command };
        let result = self.replica.propose(&entry).map(|()| {
            self.writes.entry((session, request.request_id)).or_default().push(waiter);
        });
        self.settle(node, waiter, result);
    }

    /// Answers a request Raft would not take; then sends what Raft produced.
    fn settle(&mut self, node: &mut Node, waiter: Waiter, result: Result<(), ProposeError>) {
        match result {
            Ok(()) => {}
            Err(ProposeError::NotLeader(_)) => {
                answer(node, waiter, MetaReply::NotLeader { leader: self.leader_id() });
            }
            Err(ProposeError::Dropped(why)) => answer(node, waiter, MetaReply::Unavailable(why)),
        }
        self.flush(node);
    }

    /// The leader's placement of the blocks `path` needs to hold `size` bytes: distinct
    /// data-servers its group sees up, most free first, free being the configured capacity
    /// less what the namespace assigns (until data-servers report their disks). The entry
    /// carries it, so applying stays deterministic.
    /// A live data-server, not already holding block `index` of `path`, to take `failed`'s
    /// place (the applying checks the rest).
    fn replacement(
        &self,
        node: &Node,
        path: &MeshPath,
        index: u16,
        failed: NodeId,
    ) -> Result<NodeId, NsError> {
        let meta = self.replica.namespace().get_file_meta_data(path)?;
        let Some(block) = meta.blocks.get(usize::from(index)) else {
            return Err(NsError::NotFound(format!("{path} block {index}")));
        };
        let live: Vec<DataServerLoad> = self
            .loads(node)
            .into_iter()
            .filter(|l| l.id != failed && !block.replicas.contains(&l.id))
            .collect();
        let chosen = place(1, 1, u64::from(meta.block_size), &live)
            .map_err(|e| NsError::Placement(format!("no data-server to replace {failed}: {e}")))?;
        chosen
            .first()
            .and_then(|set| set.first())
            .copied()
            .ok_or_else(|| NsError::Placement(format!("no data-server to replace {failed}")))
    }

    /// Every live data-server with its free space as the leader sees it.
    fn loads(&self, node: &Node) -> Vec<DataServerLoad> {
        let namespace = self.replica.namespace();
        node.group()
            .status()
            .into_iter()
            .filter(|p| p.role == Role::DServer && p.up && !namespace.draining().contains(&p.id))
            .map(|p| {
                let configured = node.config().server(p.id).and_then(|s| s.capacity).unwrap_or(0);
                let assigned = namespace.allocated().get(&p.id).copied().unwrap_or(0);
                // What the data-server reports using, or what the namespace has assigned it,
                // whichever is more: blocks assigned are not all written yet.
                let (capacity, used) = match self.reports.get(&p.id) {
                    Some(r) if r.complete => (r.capacity, r.used.max(assigned)),
                    _ => (configured, assigned),
                };
                DataServerLoad { id: p.id, free_bytes: capacity.saturating_sub(used) }
            })
            .collect()
    }

    fn place(&self, node: &Node, path: MeshPath, size: u64) -> Result<Command, NsError> {
        let namespace = self.replica.namespace();
        let meta = namespace.get_file_meta_data(&path)?;
        let have = meta.blocks.len() as u64;
        let wanted = size.div_ceil(u64::from(meta.block_size));
        let needed = wanted.saturating_sub(have) as usize;
        let live = self.loads(node);
        let placement = if needed == 0 || wanted > u64::from(MAX_BLOCKS_PER_FILE) {
            Vec::new() // nothing to place, or the state machine refuses the size itself
        } else {
            // Room for the largest new block: the first (a small file's only block is small).
            let bs = u64::from(meta.block_size);
            let largest = bs.min(size.saturating_sub(have * bs));
            place(needed, meta.replication, largest, &live)
                .map_err(|e| NsError::Placement(e.to_string()))?
        };
        Ok(Command::ExpandFile { path, size, first_block: have as u32, placement })
    }

    fn handle_report(&mut self, from: NodeId, report: DataReport) {
        let entry = self.reports.entry(from).or_default();
        entry.capacity = report.capacity;
        entry.used = report.used;
        let held = |(b, len): &(meshfs_core::descriptor::BlockDescriptor, u64)| {
            ((b.file.id.0, b.index), (b.version.0, *len))
        };
        if report.full {
            entry.incoming = Some(HashMap::new());
            entry.complete = false;
        }
        match &mut entry.incoming {
            Some(incoming) => {
                incoming.extend(report.blocks.iter().map(held));
                for key in &report.removed {
                    incoming.remove(key);
                }
                if report.last {
                    entry.blocks = entry.incoming.take().unwrap_or_default();
                    entry.complete = true;
                    info!(
                        "data-server {from} reports {} replicas, {} of {} bytes used",
                        entry.blocks.len(),
                        entry.used,
                        entry.capacity
                    );
                }
            }
            None => {
                entry.blocks.extend(report.blocks.iter().map(held));
                for key in &report.removed {
                    entry.blocks.remove(key);
                }
            }
        }
    }

    fn status(&self, node: &Node) -> StatusReply {
        let mut status = node_status(node);
        let links: BTreeMap<NodeId, bool> =
            node.group().status().into_iter().map(|p| (p.id, p.up)).collect();
        let draining = self.replica.namespace().draining();
        status.data_servers = node
            .config()
            .servers_of(Role::DServer)
            .map(|s| {
                let r = self.reports.get(&s.id);
                ReportedDataServer {
                    id: s.id,
                    capacity: r.map_or(s.capacity.unwrap_or(0), |r| r.capacity),
                    used: r.map_or(0, |r| r.used),
                    blocks: r.map_or(0, |r| r.blocks.len() as u64),
                    complete: r.is_some_and(|r| r.complete),
                    up: links.get(&s.id).copied().unwrap_or(false),
                    draining: draining.contains(&s.id),
                }
            })
            .collect();
        status.health = self.healer.health().filter(|_| self.replica.is_leader());
        let inodes = self.replica.namespace().inode_count() as u64;
        status.raft = Some(raft_info(self.replica.status(), inodes));
        status
    }
}

impl Service for MetaServer {
    fn start(&mut self, node: &mut Node) {
        node.set_timer(Instant::now() + TICK_INTERVAL, TICK_TIMER);
        node.set_timer(Instant::now() + HEAL_INTERVAL, HEAL_TIMER);
    }

    fn handle_timer(&mut self, node: &mut Node, token: u64) {
        if token == TICK_TIMER {
            self.replica.tick();
            node.set_timer(Instant::now() + TICK_INTERVAL, TICK_TIMER);
            self.lock_clock(node);
            self.flush(node);
        } else if token == HEAL_TIMER || token == EARLY_HEAL_TIMER {
            if token == HEAL_TIMER {
                node.set_timer(Instant::now() + HEAL_INTERVAL, HEAL_TIMER);
            }
            if self.replica.is_leader() {
                self.healer.scan(node, &mut self.replica, &self.reports, now_ms());
                self.flush(node);
            }
        }
    }

    fn handle_wake(&mut self, node: &mut Node) {
        self.replica.poll_synced();
        self.flush(node);
    }

    fn handle_event(&mut self, node: &mut Node, event: GroupEvent) {
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
                for waiters in self.writes.values_mut() {
                    waiters.retain(|w| w.conn != conn);
                }
                self.writes.retain(|_, w| !w.is_empty());
                for waiters in self.lock_waits.values_mut() {
                    waiters.retain(|w| w.conn != conn);
                }
                self.lock_waits.retain(|_, w| !w.is_empty());
                self.reads.retain(|_, (w, _)| w.conn != conn);
                self.confirmed.retain(|(_, w, _)| w.conn != conn);
            }
            GroupEvent::PeerUp { .. } => {}
            GroupEvent::Message { from, frame } if frame.kind == Kind::Raft.code() => {
                let from_mserver =
                    node.config().server(from).is_some_and(|s| s.role == Role::MServer);
                if !from_mserver {
                    warn!("ignoring a raft message from {from}, which is not a meta-server");
                    return;
                }
                self.replica.step(u64::from(from.0), &frame.body);
                self.flush(node);
            }
            GroupEvent::Message { from, frame } if frame.kind == Kind::DataReport.code() => {
                let from_dserver =
                    node.config().server(from).is_some_and(|s| s.role == Role::DServer);
                match Message::decode(&frame) {
                    Ok(Message::DataReport(report)) if from_dserver => {
                        self.handle_report(from, report)
                    }
                    Ok(_) => {
                        warn!("ignoring a data report from {from}, which is not a data-server")
                    }
                    Err(err) => warn!("bad data report from {from}: {err}"),
                }
            }
            GroupEvent::Message { from, frame }
                if frame.kind == Kind::RepairDone.code()
                    || frame.kind == Kind::ReplicaDamaged.code() =>
            {
                let from_dserver =
                    node.config().server(from).is_some_and(|s| s.role == Role::DServer);
                match Message::decode(&frame) {
                    Ok(Message::RepairDone { task, error, .. }) if from_dserver => {
                        self.healer.copied(&mut self.replica, from, task, &error, now_ms());
                        self.flush(node);
                        // A stream is free: start the next copies without waiting a second.
                        if let Some(delay) = self.healer.early_scan() {
                            node.set_timer(Instant::now() + delay, EARLY_HEAL_TIMER);
                        }
                    }
                    Ok(Message::ReplicaDamaged { block, reason }) if from_dserver => {
                        warn!(
                            "data-server {from} set aside its damaged replica of {block}: {reason}"
                        );
                    }
                    Ok(_) => warn!("ignoring a repair message from {from}, not a data-server"),
                    Err(err) => warn!("bad repair message from {from}: {err}"),
                }
            }
            GroupEvent::Message { from, frame } if frame.kind == Kind::SnapshotChunk.code() => {
                let from_mserver =
                    node.config().server(from).is_some_and(|s| s.role == Role::MServer);
                match Message::decode(&frame) {
                    Ok(Message::SnapshotChunk(chunk)) if from_mserver => {
                        self.replica.receive_chunk(u64::from(from.0), chunk);
                    }
                    Ok(_) => {
                        warn!("ignoring a snapshot piece from {from}, which is not a meta-server")
                    }
                    Err(err) => warn!("bad snapshot piece from {from}: {err}"),
                }
            }
            GroupEvent::Message { from, frame } => {
                warn!("ignoring message kind {} from peer {from}: not served", frame.kind);
            }
            GroupEvent::ClientMessage { conn, client, frame } => {
                let reply = match common_reply(&frame, || self.status(node)) {
                    Handled::Answered(reply) => reply,
                    Handled::ForRole(Message::MetaRequest(request)) => {
                        let waiter = Waiter { conn, frame_id: frame.request_id };
                        self.handle_meta(node, waiter, client, request);
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

fn answer(node: &mut Node, waiter: Waiter, reply: MetaReply) {
    node.reply(waiter.conn, Message::MetaReply(reply).to_frame(waiter.frame_id));
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The reply for an applied change.
fn reply_of(outcome: Outcome, secret: &[u8], client: ClientId) -> MetaReply {
    match outcome {
        Outcome::Mkdir
        | Outcome::Renamed
        | Outcome::Committed { .. }
        | Outcome::Swapped { .. }
        | Outcome::Draining { .. } => MetaReply::Done,
        // Signed when answered, by whoever answers: a token lives on the wire only.
        // The token ends when the lease does (the entry's time, by the leader's clock).
        Outcome::Leased { block, base, replicas, expires_ms } => MetaReply::Lease(Token::sign(
            secret,
            block,
            base,
            TokenOp::Write,
            replicas,
            client,
            expires_ms,
        )),
        Outcome::Expanded { file, blocks } => {
            MetaReply::Expanded { file, new_blocks: blocks.len() as u32 }
        }
        Outcome::Created(fd) => MetaReply::Created(fd),
        Outcome::Removed { files, dirs } => MetaReply::Removed { files, dirs },
        Outcome::Failed(err) => MetaReply::Failed(err),
        Outcome::SessionOpened { lease_ms, lock_delay_ms, .. } => {
            MetaReply::Session { lease_ms, lock_delay_ms }
        }
        Outcome::KeptAlive { .. } | Outcome::Woke { .. } => MetaReply::Done,
        Outcome::LockGranted { sequencer } => MetaReply::Locked { sequencer },
        Outcome::LockQueued => MetaReply::Unavailable("the lock request is queued".into()),
    }
}

/// The answer to a lock request whose wait ended.
fn wake_reply(wake: &Wake) -> MetaReply {
    let path = wake.path.to_string();
    match wake.result {
        WakeResult::Granted { sequencer } => MetaReply::Locked { sequencer },
        WakeResult::TimedOut => MetaReply::Failed(NsError::LockTimeout(path)),
        WakeResult::Cancelled => MetaReply::Failed(NsError::LockCancelled(path)),
        WakeResult::SessionEnded => {
            MetaReply::Failed(NsError::SessionExpired { client: wake.session.client.0 })
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Answers a read from the namespace as applied.
fn read(namespace: &Namespace, op: &MetaOp) -> MetaReply {
    match op {
        MetaOp::Stat { path, first_block } => match namespace.stat(path) {
            Ok(Stat::File(mut meta)) => {
                let total = meta.blocks.len() as u32;
                let first = (*first_block).min(total);
                meta.blocks.drain(..first as usize);
                meta.blocks.truncate(MAX_STAT_BLOCKS as usize);
                MetaReply::Stat { stat: Stat::File(meta), total_blocks: total, first_block: first }
            }
            Ok(dir) => MetaReply::Stat { stat: dir, total_blocks: 0, first_block: 0 },
            Err(err) => MetaReply::Failed(err),
        },
        MetaOp::List { path, after, limit } => {
            let limit = (*limit).clamp(1, MAX_LIST_PAGE) as usize;
            match namespace.list_page(path, after, limit) {
                Ok((entries, more)) => MetaReply::List { entries, more },
                Err(err) => MetaReply::Failed(err),
            }
        }
        MetaOp::Locks { path } => {
            let table = namespace.lock_table();
            let (locks, more) =
                table.list(path, MAX_LOCKS_LISTED as usize, MAX_LOCK_PARTIES as usize);
            MetaReply::Locks { locks, more }
        }
        MetaOp::Mkdir { .. }
        | MetaOp::Create { .. }
        | MetaOp::CreateWrite { .. }
        | MetaOp::Rename { .. }
        | MetaOp::Remove { .. }
        | MetaOp::Expand { .. }
        | MetaOp::WriteLease { .. }
        | MetaOp::CommitWrite { .. }
        | MetaOp::SwapReplica { .. }
        | MetaOp::Drain { .. }
        | MetaOp::Fsck { .. }
        | MetaOp::OpenSession
        | MetaOp::KeepAlive
        | MetaOp::CloseSession
        | MetaOp::Lock { .. }
        | MetaOp::Unlock { .. }
        | MetaOp::ReportBadReplica { .. } => {
            unreachable!("writes go through the log, not read()")
        }
    }
}

/// Runs meta-server `id` of the config at `config_path` until SIGTERM or SIGINT.
pub fn run(config_path: &Path, id: NodeId) -> Result<(), MetaError> {
    let (config, data_dir, mut node) = start_server(Role::MServer, config_path, id)?;
    info!("data directory {}", data_dir.path().display());
    let voters: Vec<u64> = config.servers_of(Role::MServer).map(|s| u64::from(s.id.0)).collect();
    let raft_dir = data_dir.path().join("raft");
    let replica = Replica::open(
        &raft_dir,
        u64::from(id.0),
        &voters,
        config.snapshot_entries,
        node.notifier(),
    )?;
    let block_size =
        u32::try_from(config.block_size).expect("config validation caps block_size at 1 GiB");
    let nonce = node.group().incarnation();
    let mut server = MetaServer::new(
        replica,
        config.replication,
        block_size,
        config.secret.clone(),
        config.heal,
        config.locks,
        nonce,
    );
    node.run(&mut server).map_err(|e| StartError::Node(NodeError::Loop(e)))?;
    info!("stopped");
    Ok(())
}
