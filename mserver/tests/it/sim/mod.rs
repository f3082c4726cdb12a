//! A deterministic simulation of a meta-server cluster in one thread.
//!
//! The real [`Replica`] (raft-rs, the namespace, snapshots, streaming) runs over an
//! in-memory log whose durable part survives a crash only up to the last completed sync,
//! exactly as the disk log does. Time, the network and faults are the simulation's: a fake
//! millisecond clock; per-pair FIFO channels (TCP) with random delays, so messages reorder
//! across pairs; dropped messages; partitions; crashes (losing what was not synced) and
//! restarts. Clients create files (some names contended by several clients) through the
//! node they think leads, and retry with the same request id when it fails them.
//!
//! One seeded random source decides everything; raft-rs's own randomness (election
//! timeouts) is pinned by the replica options, so a seed replays exactly.
//!
//! The checker: every replica applies the same entry with the same outcome at each index;
//! every acknowledged create is in every replica's namespace at the end, with its file id;
//! of the clients contending for one name, exactly one is told it created it.
//!
//! With lock clients ([`Sim::with_lock_clients`]) the lock service runs too: each node runs
//! the meta-server's own lock clock ([`LockClock`]: leader and majority rules, pending
//! entries) on the simulated clock, and lock clients open sessions, keep them
//! alive, take locks shared or exclusive (trying, or waiting in the queue), hold them a
//! while and release them; some stall for up to three leases while holding (a pause or a
//! cut-off link), sending nothing. The lock checker: a client believes it holds a lock from
//! the grant until it releases it, and only while its own lease is in force; no two
//! believers of one lock ever conflict (two exclusive, or exclusive with shared).
//!
//! With data-servers ([`Sim::with_data_servers`], in [`healing`]) each node also runs the
//! meta-server's own healer, and writers create and remove files whose blocks the
//! data-servers hold.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::rc::Rc;

use meshfs_core::descriptor::FileId;
use meshfs_core::error::NsError;
use meshfs_core::lock_clock::LockClock;
use meshfs_core::locks::{LockMode, WakeResult};
use meshfs_core::namespace::{Command, Entry, Outcome, Stat};
use meshfs_core::path::MeshPath;
use meshfs_core::session::SessionId;
use meshfs_core::wire::SnapshotChunk;
use meshfs_group::{ClientId, Now};
use meshfs_mserver::consensus::{Replica, ReplicaOptions};
use meshfs_mserver::log_store::{LogError, make_snapshot};
use meshfs_mserver::persist::{Completion, Persister, RaftLog};
use raft::eraftpb::{ConfState, Entry as RaftEntry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

/// The simulation's one random source: the test kit's seeded generator.
pub use meshfs_test_kit::Rng;

mod healing;

// ---- the in-memory log and its "disk" ----

/// What survives a crash.
#[derive(Debug, Clone, Default)]
pub struct Disk {
    hard_state: HardState,
    snapshot: Option<Snapshot>,
    entries: Vec<RaftEntry>,
}

#[derive(Debug)]
pub struct MemLog {
    voters: Vec<u64>,
    hard_state: HardState,
    snapshot_index: u64,
    snapshot_term: u64,
    entries: Vec<RaftEntry>,
    disk: Rc<RefCell<Disk>>,
}

impl MemLog {
    /// The log as a restarted process finds it.
    pub fn recover(disk: Rc<RefCell<Disk>>, voters: &[u64]) -> MemLog {
        let d = disk.borrow().clone();
        let (snapshot_index, snapshot_term) =
            d.snapshot.as_ref().map_or((0, 0), |s| (s.get_metadata().index, s.get_metadata().term));
        let mut hard_state = d.hard_state;
        hard_state.commit = hard_state.commit.max(snapshot_index);
        hard_state.term = hard_state.term.max(snapshot_term);
        let entries: Vec<RaftEntry> =
            d.entries.into_iter().filter(|e| e.index > snapshot_index).collect();
        if let Some(first) = entries.first() {
            assert_eq!(
                first.index,
                snapshot_index + 1,
                "the durable log has a gap after its snapshot"
            );
        }
        MemLog { voters: voters.to_vec(), hard_state, snapshot_index, snapshot_term, entries, disk }
    }

    fn next_index(&self) -> u64 {
        self.entries.last().map_or(self.snapshot_index + 1, |e| e.index + 1)
    }

    /// Everything written so far, as a sync would make it durable.
    fn durable_copy(&self) -> Disk {
        Disk { hard_state: self.hard_state.clone(), snapshot: None, entries: self.entries.clone() }
    }
}

impl Storage for MemLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let conf = ConfState { voters: self.voters.clone(), ..Default::default() };
        Ok(RaftState::new(self.hard_state.clone(), conf))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        _max: impl Into<Option<u64>>,
        _ctx: GetEntriesContext,
    ) -> raft::Result<Vec<RaftEntry>> {
        if low <= self.snapshot_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        let offset = self.snapshot_index + 1;
        Ok(self.entries[(low - offset) as usize..(high - offset) as usize].to_vec())
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snapshot_index {
            return Ok(self.snapshot_term);
        }
        if idx < self.snapshot_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.entries
            .get((idx - self.snapshot_index - 1) as usize)
            .map(|e| e.term)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.snapshot_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.next_index() - 1)
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        match &self.disk.borrow().snapshot {
            Some(s) if s.get_metadata().index >= request_index => Ok(s.clone()),
            _ => Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable)),
        }
    }
}

impl RaftLog for MemLog {
    fn append(&mut self, new: &[RaftEntry]) -> Result<(), LogError> {
        let Some(first) = new.first() else { return Ok(()) };
        assert!(first.index > self.snapshot_index && first.index <= self.next_index());
        self.entries.truncate((first.index - self.snapshot_index - 1) as usize);
        self.entries.extend_from_slice(new);
        Ok(())
    }

    fn set_hard_state(&mut self, hard_state: &HardState) -> Result<(), LogError> {
        self.hard_state = hard_state.clone();
        Ok(())
    }

    fn apply_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), LogError> {
        // Durable before returning, as the disk log's snapshot file is.
        let meta = snapshot.get_metadata();
        self.snapshot_index = meta.index;
        self.snapshot_term = meta.term;
        self.entries.clear();
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        self.hard_state.term = self.hard_state.term.max(meta.term);
        let mut disk = self.disk.borrow_mut();
        disk.snapshot = Some(snapshot.clone());
        disk.entries.clear();
        Ok(())
    }

    fn prepare_snapshot(&self, index: u64, data: Vec<u8>) -> Result<Option<Snapshot>, LogError> {
        if index <= self.snapshot_index {
            return Ok(None);
        }
        let term = self.term(index).expect("compacting to a known index");
        Ok(Some(make_snapshot(index, term, self.voters.clone(), data)))
    }

    fn snapshot_written(&mut self, index: u64, term: u64) -> Result<(), LogError> {
        if index <= self.snapshot_index {
            return Ok(());
        }
        let keep_from = (index - self.snapshot_index) as usize;
        self.entries.drain(..keep_from.min(self.entries.len()));
        self.snapshot_index = index;
        self.snapshot_term = term;
        Ok(())
    }

    fn snapshot_index(&self) -> u64 {
        self.snapshot_index
    }

    fn latest_snapshot(&self) -> Result<Option<Snapshot>, LogError> {
        Ok(self.disk.borrow().snapshot.clone())
    }
}

/// Persists when the simulation says so: requests wait in `pending` until polled; a crash
/// loses them.
#[derive(Debug)]
pub struct SimPersister {
    pending: VecDeque<Pending>,
    disk: Rc<RefCell<Disk>>,
}

#[derive(Debug)]
enum Pending {
    Sync(u64, Disk),
    Snapshot(Snapshot),
}

impl SimPersister {
    fn complete(&mut self, only_snapshots: bool) -> Vec<Completion> {
        let mut done = Vec::new();
        let mut left = VecDeque::new();
        while let Some(p) = self.pending.pop_front() {
            match p {
                Pending::Sync(number, copy) if !only_snapshots => {
                    let mut disk = self.disk.borrow_mut();
                    disk.hard_state = copy.hard_state;
                    disk.entries = copy.entries;
                    done.push(Completion::Synced(number));
                }
                Pending::Snapshot(snapshot) => {
                    let meta = snapshot.get_metadata();
                    let (index, term) = (meta.index, meta.term);
                    let mut disk = self.disk.borrow_mut();
                    let newer =
                        disk.snapshot.as_ref().is_none_or(|s| s.get_metadata().index < index);
                    if newer {
                        disk.snapshot = Some(snapshot);
                    }
                    done.push(Completion::SnapshotWritten(Ok((index, term))));
                }
                other => left.push_back(other),
            }
        }
        self.pending = left;
        done
    }
}

impl Persister<MemLog> for SimPersister {
    fn sync(&mut self, log: &mut MemLog, number: u64) -> Result<(), String> {
        self.pending.push_back(Pending::Sync(number, log.durable_copy()));
        Ok(())
    }

    fn write_snapshot(&mut self, _log: &mut MemLog, snapshot: Snapshot) -> Result<(), String> {
        self.pending.push_back(Pending::Snapshot(snapshot));
        Ok(())
    }

    fn poll(&mut self, _log: &mut MemLog) -> Vec<Completion> {
        self.complete(false)
    }

    fn wait_snapshot(&mut self, _log: &mut MemLog) -> Option<Completion> {
        self.complete(true).pop()
    }
}

// ---- the cluster ----

type SimReplica = Replica<MemLog, SimPersister>;

#[derive(Debug, Clone)]
enum Payload {
    Raft(Vec<u8>),
    Chunk(SnapshotChunk),
    /// Between meta-servers and data-servers: reports, repair tasks, deletes.
    Heal(meshfs_core::wire::Message),
}

#[derive(Debug)]
struct InFlight {
    at: u64,
    seq: u64,
    from: u64,
    to: u64,
    payload: Payload,
}

struct Node {
    id: u64,
    replica: Option<SimReplica>,
    disk: Rc<RefCell<Disk>>,
    next_tick: u64,
    restart_at: Option<u64>,
    /// The server's own lock clock (made anew at each start, as a process would).
    lock_clock: LockClock,
    /// Its healer and the data-servers' reports (likewise).
    heal: healing::NodeHeal,
}

/// Lock session settings of the simulated cluster (ms of simulated time).
const LOCK_LEASE: u64 = 300;
const LOCK_DELAY: u64 = 100;
const LOCK_PATHS: [&str; 2] = ["/lk/a", "/lk/b"];
/// How long a node's lock clock waits for its Clock entry before proposing another: the
/// server's 2 s against its 12 s lease, scaled to the simulation's lease.
const LOCK_CLOCK_PENDING: u64 = 50;

/// Node `id`'s lock clock, as a meta-server process makes it at start.
fn lock_clock_of(id: u64) -> LockClock {
    let session = SessionId { client: ClientId(0), nonce: id };
    let ms = std::time::Duration::from_millis;
    LockClock::new(session, ms(LOCK_LEASE), ms(LOCK_CLOCK_PENDING))
}

/// KeepAlive request ids start here (they are not deduplicated; any id works).
const KEEPALIVE_IDS: u64 = 1 << 62;

#[derive(Debug, Clone, PartialEq, Eq)]
enum LockCall {
    /// Open a session; `sent` is when it was first sent (the lease runs from no earlier).
    Open {
        sent: u64,
    },
    Lock {
        path: String,
        mode: LockMode,
        wait_ms: Option<u64>,
    },
    Unlock {
        path: String,
    },
}

/// A lock client: one call at a time, plus its KeepAlives.
#[derive(Debug)]
struct LockClient {
    session: SessionId,
    next_request: u64,
    open: bool,
    /// Its lease's end by its own reckoning: a KeepAlive's send time plus the lease.
    lease_end: u64,
    /// (request id, call, node waited on, retry at).
    call: Option<(u64, LockCall, u64, u64)>,
    /// (request id, sent at, node, retry at).
    keepalive: Option<(u64, u64, u64, u64)>,
    next_keepalive: u64,
    next_keepalive_id: u64,
    /// (path, mode, sequencer, release at).
    holding: Option<(String, LockMode, u64, u64)>,
    /// Stalled (sends nothing) until then.
    stalled_until: u64,
    idle_until: u64,
    hint: u64,
    rounds_left: u32,
}

impl LockClient {
    fn believes(&self, now: u64) -> Option<(&str, LockMode)> {
        match &self.holding {
            Some((path, mode, _, _)) if now < self.lease_end => Some((path, *mode)),
            _ => None,
        }
    }

    fn finished(&self) -> bool {
        self.rounds_left == 0 && self.holding.is_none() && self.call.is_none()
    }
}

/// A client with at most one request outstanding.
#[derive(Debug)]
struct Client {
    session: SessionId,
    next_request: u64,
    /// The paths this client will create, in order.
    todo: VecDeque<String>,
    /// (request id, path, node waited on, give up at).
    waiting: Option<(u64, String, u64, u64)>,
    /// Where it thinks the leader is.
    hint: u64,
    /// It sends its next request no earlier than this (think time between requests).
    idle_until: u64,
}

/// How hard the simulation pushes.
#[derive(Debug, Clone)]
pub struct Faults {
    pub drop_per_million: u64,
    pub crash_per_million: u64,
    pub partition_per_million: u64,
}

pub struct Sim {
    pub seed: u64,
    rng: Rng,
    now: u64,
    /// Simulated ms 0 on the monotonic clock the servers' code takes.
    origin: std::time::Instant,
    nodes: Vec<Node>,
    voters: Vec<u64>,
    net: Vec<InFlight>,
    channel_clock: HashMap<(u64, u64), u64>,
    seq: u64,
    isolated: BTreeSet<u64>,
    clients: Vec<Client>,
    faults: Faults,
    snapshot_every: u64,
    /// The checker's record: index -> (entry bytes, outcome) as first applied anywhere.
    applied: BTreeMap<u64, (Vec<u8>, Outcome)>,
    /// Acknowledged creates: path -> file id.
    pub acked: BTreeMap<String, FileId>,
    /// Answers to contended creates: path -> (created, already exists).
    pub contended: BTreeMap<String, (u32, u32)>,
    /// A digest of everything that happened, to check that a seed replays exactly.
    pub trace: u64,
    stats: Stats,
    lock_clients: Vec<LockClient>,
    /// Every lock grant a client believed in: (sequencer, path, mode).
    pub grants: Vec<(u64, String, LockMode)>,
    /// Data-servers, writers and the healing checker ([`Sim::with_data_servers`]).
    healing: healing::Healing,
}

#[derive(Debug, Default)]
struct Stats {
    crashes: u64,
    partitions: u64,
    installs: u64,
    retries: u64,
    lock_stalls: u64,
    sessions_expired: u64,
    lock_refusals: u64,
}

impl Sim {
    pub fn new(
        seed: u64,
        nodes: u64,
        clients: usize,
        files_per_client: usize,
        faults: Faults,
    ) -> Sim {
        let mut rng = Rng::new(seed);
        let voters: Vec<u64> = (1..=nodes).collect();
        let mut sim_nodes = Vec::new();
        for &id in &voters {
            let disk = Rc::new(RefCell::new(Disk::default()));
            sim_nodes.push(Node {
                id,
                replica: None,
                disk,
                next_tick: rng.below(10),
                restart_at: None,
                lock_clock: lock_clock_of(id),
                heal: healing::NodeHeal::new(id, 0),
            });
        }
        let contended_names = 3;
        let clients = (0..clients)
            .map(|c| {
                let mut todo: VecDeque<String> =
                    (0..files_per_client).map(|i| format!("/c{c}/f{i}")).collect();
                // Every client also races for the same few names, at a random point.
                for k in 0..contended_names {
                    let at = rng.below(todo.len() as u64 + 1) as usize;
                    todo.insert(at, format!("/shared-{k}"));
                }
                todo.push_front(format!("/c{c}"));
                Client {
                    session: SessionId { client: ClientId(1), nonce: 1000 + c as u64 },
                    next_request: 1,
                    todo,
                    waiting: None,
                    hint: 1 + rng.below(nodes),
                    idle_until: 0,
                }
            })
            .collect();
        let mut sim = Sim {
            seed,
            rng,
            now: 0,
            origin: std::time::Instant::now(),
            nodes: sim_nodes,
            voters,
            net: Vec::new(),
            channel_clock: HashMap::new(),
            seq: 0,
            isolated: BTreeSet::new(),
            clients,
            faults,
            snapshot_every: 40,
            applied: BTreeMap::new(),
            acked: BTreeMap::new(),
            contended: BTreeMap::new(),
            trace: 0xcbf2_9ce4_8422_2325,
            stats: Stats::default(),
            lock_clients: Vec::new(),
            grants: Vec::new(),
            healing: healing::Healing::default(),
        };
        for i in 0..sim.nodes.len() {
            sim.start(i);
        }
        sim
    }

    /// Adds `count` lock clients, each taking and releasing locks `rounds` times.
    pub fn with_lock_clients(mut self, count: usize, rounds: u32) -> Sim {
        let n = self.nodes.len() as u64;
        for c in 0..count {
            let hint = 1 + self.rng.below(n);
            self.lock_clients.push(LockClient {
                session: SessionId { client: ClientId(2), nonce: 5000 + 1000 * c as u64 },
                next_request: 1,
                open: false,
                lease_end: 0,
                call: None,
                keepalive: None,
                next_keepalive: 0,
                next_keepalive_id: KEEPALIVE_IDS,
                holding: None,
                stalled_until: 0,
                idle_until: 0,
                hint,
                rounds_left: rounds,
            });
        }
        self
    }

    fn note(&mut self, event: u64) {
        self.trace = (self.trace ^ event).wrapping_mul(0x0100_0000_01b3);
    }

    fn start(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = MemLog::recover(node.disk.clone(), &self.voters);
        let persister = SimPersister { pending: VecDeque::new(), disk: node.disk.clone() };
        let options = ReplicaOptions {
            id: node.id,
            snapshot_every: self.snapshot_every,
            election_ticks: (10, 11),
        };
        node.replica =
            Some(Replica::new(log, persister, options).expect("a replica starts from its disk"));
        node.restart_at = None;
        node.lock_clock = lock_clock_of(node.id);
        self.heal_started(i);
    }

    fn crash(&mut self, i: usize) {
        let down_for = 200 + self.rng.below(2000);
        let node = &mut self.nodes[i];
        node.replica = None; // pending syncs die with it
        node.restart_at = Some(self.now + down_for);
        let id = node.id;
        self.net.retain(|m| m.to != id && m.from != id);
        self.stats.crashes += 1;
        self.note(0xdead_0000 + id);
    }

    fn send(&mut self, from: u64, to: u64, payload: Payload) {
        if self.isolated.contains(&from) || self.isolated.contains(&to) {
            return;
        }
        let dropped =
            matches!(payload, Payload::Raft(_)) && self.rng.chance(self.faults.drop_per_million);
        if dropped {
            return;
        }
        let delay = 1 + self.rng.below(5);
        let clock = self.channel_clock.entry((from, to)).or_insert(0);
        let at = (self.now + delay).max(*clock);
        *clock = at;
        self.seq += 1;
        self.net.push(InFlight { at, seq: self.seq, from, to, payload });
    }

    /// Moves a replica's output into the network and the checker.
    fn drain(&mut self, i: usize) {
        let from = self.nodes[i].id;
        let Some(replica) = self.nodes[i].replica.as_mut() else { return };
        let output = replica.take_output();
        for (to, bytes) in output.messages {
            self.send(from, to, Payload::Raft(bytes));
        }
        for snapshot in output.snapshots {
            // Streamed like the server does: pieces, then the message, on one channel.
            let total = snapshot.data.len() as u64;
            for (n, piece) in snapshot.data.chunks(1000).enumerate() {
                let chunk = SnapshotChunk {
                    index: snapshot.index,
                    term: snapshot.term,
                    total,
                    offset: n as u64 * 1000,
                    data: piece.to_vec(),
                };
                self.send(from, snapshot.to, Payload::Chunk(chunk));
            }
            if total == 0 {
                let chunk = SnapshotChunk {
                    index: snapshot.index,
                    term: snapshot.term,
                    total,
                    offset: 0,
                    data: vec![],
                };
                self.send(from, snapshot.to, Payload::Chunk(chunk));
            }
            self.send(from, snapshot.to, Payload::Raft(snapshot.message));
            if let Some(r) = self.nodes[i].replica.as_mut() {
                r.report_snapshot(snapshot.to, true);
            }
        }
        for (index, entry, outcome) in output.applied {
            self.nodes[i].lock_clock.applied(entry.session);
            self.check_applied(from, index, &entry, &outcome);
            self.answer_client(from, &entry, &outcome);
            self.answer_lock_clients(from, &entry, &outcome);
            self.heal_applied(i, &entry, &outcome);
        }
    }

    fn check_applied(&mut self, node: u64, index: u64, entry: &Entry, outcome: &Outcome) {
        let bytes = entry.encode();
        match self.applied.get(&index) {
            Some((first, first_outcome)) => {
                assert_eq!(
                    first, &bytes,
                    "seed {}: node {node} applied a different entry at {index}",
                    self.seed
                );
                assert_eq!(
                    first_outcome, outcome,
                    "seed {}: node {node} got a different outcome at {index}",
                    self.seed
                );
            }
            None => {
                self.applied.insert(index, (bytes, outcome.clone()));
            }
        }
        self.note(index ^ (node << 48));
    }

    fn answer_client(&mut self, node: u64, entry: &Entry, outcome: &Outcome) {
        let Some(client) = self.clients.iter_mut().find(|c| c.session == entry.session) else {
            return;
        };
        let Some((request, path, waited_on, _)) = client.waiting.clone() else { return };
        if request != entry.request_id || waited_on != node {
            return; // not this client's current request, or another node applied it
        }
        client.waiting = None;
        client.todo.pop_front();
        client.idle_until = self.now + self.rng.below(60);
        let shared = path.starts_with("/shared-");
        match outcome {
            Outcome::Created(fd) => {
                self.acked.insert(path.clone(), fd.id);
                if shared {
                    self.contended.entry(path).or_default().0 += 1;
                }
            }
            Outcome::Failed(NsError::AlreadyExists(_)) if shared => {
                self.contended.entry(path).or_default().1 += 1;
            }
            Outcome::Mkdir => {}
            other => panic!("seed {}: unexpected outcome {other:?} for {path}", self.seed),
        }
    }

    // ---- the lock service ----

    /// The server's lock clock ([`LockClock`], the very code a meta-server runs) on node
    /// `i`: it sees what the server would (leading or not; a majority of meta-servers
    /// reachable, as its links would show) and proposes the Clock entry it returns.
    fn lock_clock(&mut self, i: usize) {
        let now = Now::simulated(self.origin, self.now);
        let me = self.nodes[i].id;
        let reachable = |id: u64| !self.isolated.contains(&id) && !self.isolated.contains(&me);
        let up = self
            .nodes
            .iter()
            .filter(|n| n.replica.is_some() && (n.id == me || reachable(n.id)))
            .count();
        let quorum = 2 * up > self.nodes.len();
        let node = &mut self.nodes[i];
        let Some(replica) = node.replica.as_mut() else { return };
        node.lock_clock.observe(now, replica.is_leader(), quorum);
        let Some(entry) = node.lock_clock.poll_entry(now, replica.namespace().lock_table()) else {
            return;
        };
        if replica.propose(&entry).is_err() {
            node.lock_clock.not_proposed();
        }
    }

    /// Proposes `command` for lock client `c` at its hinted node; the node proposed to, or
    /// `None` (and a new hint) if it would not take it.
    fn propose_lock(&mut self, c: usize, request_id: u64, command: Command) -> Option<u64> {
        let n = self.nodes.len() as u64;
        let target = self.lock_clients[c].hint;
        let index = (target - 1) as usize;
        let entry = Entry {
            session: self.lock_clients[c].session,
            request_id,
            time_ms: self.now,
            caller: meshfs_core::namespace::Caller::system(),
            command,
        };
        let accepted = match self.nodes[index].replica.as_mut() {
            Some(replica) if !self.isolated.contains(&target) => replica.propose(&entry),
            _ => Err(meshfs_mserver::consensus::ProposeError::NotLeader(None)),
        };
        match accepted {
            Ok(()) => {
                self.drain(index);
                Some(target)
            }
            Err(err) => {
                self.lock_clients[c].hint = match err {
                    meshfs_mserver::consensus::ProposeError::NotLeader(Some(l)) => l,
                    _ => 1 + self.rng.below(n),
                };
                None
            }
        }
    }

    fn leads(&self, node: u64) -> bool {
        self.nodes[(node - 1) as usize].replica.as_ref().is_some_and(|r| r.is_leader())
            && !self.isolated.contains(&node)
    }

    fn lock_command(call: &LockCall) -> Command {
        match call {
            LockCall::Open { .. } => {
                Command::OpenSession { lease_ms: LOCK_LEASE, lock_delay_ms: LOCK_DELAY }
            }
            LockCall::Lock { path, mode, wait_ms } => Command::Lock {
                path: MeshPath::parse(path).unwrap(),
                mode: *mode,
                wait_ms: *wait_ms,
            },
            LockCall::Unlock { path } => Command::Unlock { path: MeshPath::parse(path).unwrap() },
        }
    }

    /// Lock clients send, resend and renew.
    fn lock_clients_act(&mut self) {
        let now = self.now;
        for c in 0..self.lock_clients.len() {
            if now < self.lock_clients[c].stalled_until {
                continue;
            }
            // KeepAlives, every third of the lease while open.
            let client = &self.lock_clients[c];
            let renew = client.open
                && match client.keepalive {
                    Some((_, _, node, retry_at)) => now >= retry_at || !self.leads(node),
                    None => now >= client.next_keepalive,
                };
            if renew {
                let id = self.lock_clients[c].next_keepalive_id;
                self.lock_clients[c].next_keepalive_id += 1;
                self.lock_clients[c].keepalive = self
                    .propose_lock(c, id, Command::KeepAlive)
                    .map(|node| (id, now, node, now + 30));
            }
            // Release a lock held long enough (it stops believing first).
            let client = &self.lock_clients[c];
            if client.call.is_none()
                && client.holding.as_ref().is_some_and(|h| now >= h.3 || now >= client.lease_end)
            {
                let path = self.lock_clients[c].holding.take().unwrap().0;
                let id = self.lock_clients[c].next_request;
                self.lock_clients[c].next_request += 1;
                self.lock_clients[c].call = Some((id, LockCall::Unlock { path }, 0, now));
            }
            // A new call.
            let client = &self.lock_clients[c];
            if client.call.is_none() && client.holding.is_none() && now >= client.idle_until {
                let call = if !client.open {
                    LockCall::Open { sent: now }
                } else if client.rounds_left > 0 {
                    let path = LOCK_PATHS[self.rng.below(2) as usize].to_string();
                    let mode = if self.rng.chance(400_000) {
                        LockMode::Exclusive
                    } else {
                        LockMode::Shared
                    };
                    let wait_ms = if self.rng.chance(300_000) {
                        None
                    } else {
                        Some(50 + self.rng.below(450))
                    };
                    LockCall::Lock { path, mode, wait_ms }
                } else {
                    continue;
                };
                if matches!(call, LockCall::Open { .. }) {
                    // A new session: a new nonce, request ids from 1.
                    self.lock_clients[c].session.nonce += 1;
                    self.lock_clients[c].next_request = 1;
                }
                let id = self.lock_clients[c].next_request;
                self.lock_clients[c].next_request += 1;
                self.lock_clients[c].call = Some((id, call.clone(), 0, now));
                self.lock_clients[c].keepalive = None;
            }
            // Send or resend the call in progress (same request id).
            let Some((id, call, node, retry_at)) = self.lock_clients[c].call.clone() else {
                continue;
            };
            // Waits for the answer while its node leads (or, refused, a little before
            // trying the next hint).
            if now < retry_at && (node == 0 || self.leads(node)) {
                continue;
            }
            let command = Self::lock_command(&call);
            if node != 0 {
                self.stats.retries += 1;
            }
            let patience = match &call {
                LockCall::Lock { wait_ms: Some(w), .. } => w + 60,
                _ => 30,
            };
            let sent = self.propose_lock(c, id, command);
            let (node, retry_at) = match sent {
                Some(node) => (node, now + patience),
                None => (0, now + 5 + self.rng.below(20)),
            };
            self.lock_clients[c].call = Some((id, call, node, retry_at));
        }
    }

    /// A client's grant: the checker's moment.
    fn granted(&mut self, c: usize, path: String, mode: LockMode, sequencer: u64) {
        let now = self.now;
        let hold = 10 + self.rng.below(200);
        self.lock_clients[c].holding = Some((path.clone(), mode, sequencer, now + hold));
        self.lock_clients[c].rounds_left = self.lock_clients[c].rounds_left.saturating_sub(1);
        if self.lock_clients[c].believes(now).is_none() {
            return; // its lease lapsed meanwhile: it does not rely on it, and lets go
        }
        self.grants.push((sequencer, path.clone(), mode));
        self.check_beliefs(&path);
        if self.rng.chance(150_000) {
            // Stalls while holding: sends nothing for up to three leases.
            self.lock_clients[c].stalled_until = now + self.rng.below(3 * LOCK_LEASE);
            self.stats.lock_stalls += 1;
        }
    }

    /// The lock checker: no two clients believing they hold `path` conflict.
    fn check_beliefs(&self, path: &str) {
        let believers: Vec<(usize, LockMode, u64)> = self
            .lock_clients
            .iter()
            .enumerate()
            .filter_map(|(i, c)| match c.believes(self.now) {
                Some((p, mode)) if p == path => Some((i, mode, c.holding.as_ref().unwrap().2)),
                _ => None,
            })
            .collect();
        let exclusive = believers.iter().filter(|b| b.1 == LockMode::Exclusive).count();
        assert!(
            exclusive == 0 || believers.len() == 1,
            "seed {}: at {} ms clients {believers:?} all believe they hold {path}",
            self.seed,
            self.now
        );
    }

    fn answer_lock_clients(&mut self, node: u64, entry: &Entry, outcome: &Outcome) {
        if let Outcome::Woke { wakes } = outcome {
            for wake in wakes {
                let Some(c) = self.lock_clients.iter().position(|c| c.session == wake.session)
                else {
                    continue;
                };
                let Some((id, LockCall::Lock { path, mode, .. }, waited_on, _)) =
                    self.lock_clients[c].call.clone()
                else {
                    continue;
                };
                if id != wake.request_id || waited_on != node {
                    continue;
                }
                self.lock_clients[c].call = None;
                match wake.result {
                    WakeResult::Granted { sequencer } => self.granted(c, path, mode, sequencer),
                    WakeResult::SessionEnded => self.session_ended(c),
                    WakeResult::TimedOut | WakeResult::Cancelled => {
                        self.stats.lock_refusals += 1;
                        self.lock_clients[c].idle_until = self.now + self.rng.below(30);
                    }
                }
            }
        }
        let Some(c) = self.lock_clients.iter().position(|c| c.session == entry.session) else {
            return;
        };
        if let Some((id, sent, waited_on, _)) = self.lock_clients[c].keepalive
            && id == entry.request_id
            && waited_on == node
        {
            self.lock_clients[c].keepalive = None;
            match outcome {
                Outcome::KeptAlive { .. } => {
                    let client = &mut self.lock_clients[c];
                    client.lease_end = client.lease_end.max(sent + LOCK_LEASE);
                    client.next_keepalive = sent + LOCK_LEASE / 3;
                    if let Some((path, ..)) = client.holding.clone() {
                        self.check_beliefs(&path);
                    }
                }
                Outcome::Failed(NsError::SessionExpired { .. }) => self.session_ended(c),
                other => panic!("seed {}: KeepAlive got {other:?}", self.seed),
            }
            return;
        }
        let Some((id, call, waited_on, _)) = self.lock_clients[c].call.clone() else { return };
        if id != entry.request_id || waited_on != node {
            return;
        }
        match (call, outcome) {
            (LockCall::Open { sent }, Outcome::SessionOpened { lease_ms, .. }) => {
                let client = &mut self.lock_clients[c];
                client.open = true;
                client.lease_end = sent + lease_ms;
                client.next_keepalive = sent + lease_ms / 3;
                client.call = None;
            }
            (LockCall::Lock { .. }, Outcome::LockQueued) => {} // answered by a later Woke
            (LockCall::Lock { path, mode, .. }, Outcome::LockGranted { sequencer }) => {
                self.lock_clients[c].call = None;
                self.granted(c, path, mode, *sequencer);
            }
            (_, Outcome::Failed(NsError::SessionExpired { .. })) => {
                self.lock_clients[c].call = None;
                self.session_ended(c);
            }
            (
                LockCall::Lock { .. },
                Outcome::Failed(
                    NsError::LockBusy { .. } | NsError::LockTimeout(_) | NsError::LockCancelled(_),
                ),
            ) => {
                self.lock_clients[c].call = None;
                self.stats.lock_refusals += 1;
                self.lock_clients[c].idle_until = self.now + self.rng.below(30);
            }
            (
                LockCall::Unlock { .. },
                Outcome::Woke { .. } | Outcome::Failed(NsError::NotLocked(_)),
            ) => {
                self.lock_clients[c].call = None;
                self.lock_clients[c].idle_until = self.now + self.rng.below(30);
            }
            (call, other) => {
                panic!("seed {}: lock client {c} got {other:?} for {call:?}", self.seed)
            }
        }
    }

    fn session_ended(&mut self, c: usize) {
        let client = &mut self.lock_clients[c];
        client.open = false;
        client.holding = None;
        client.call = None;
        client.keepalive = None;
        self.stats.sessions_expired += 1;
    }

    /// Clients send or resend their current request.
    fn clients_act(&mut self) {
        let n = self.nodes.len() as u64;
        for c in 0..self.clients.len() {
            let client = &self.clients[c];
            if let Some((_, _, node, give_up)) = client.waiting {
                // As the server does: a node that stops leading (or dies) tells its waiting
                // clients at once, and they retry elsewhere with the same request id.
                let still_leads =
                    self.nodes[(node - 1) as usize].replica.as_ref().is_some_and(|r| r.is_leader())
                        && !self.isolated.contains(&node);
                if self.now < give_up && still_leads {
                    continue;
                }
            }
            if client.waiting.is_none() && self.now < client.idle_until {
                continue;
            }
            let Some(path) = client.todo.front().cloned() else { continue };
            // A new request gets a new id; a timed-out one keeps its id (a safe retry).
            let request = match &client.waiting {
                Some((id, _, _, _)) => {
                    self.stats.retries += 1;
                    *id
                }
                None => {
                    let id = self.clients[c].next_request;
                    self.clients[c].next_request += 1;
                    id
                }
            };
            let target = self.clients[c].hint;
            let index = (target - 1) as usize;
            let command = if path.matches('/').count() == 1 && !path.starts_with("/shared-") {
                let mode = Some(0o750);
                Command::Mkdir { path: MeshPath::parse(&path).unwrap(), parents: true, mode }
            } else {
                Command::CreateFile {
                    path: MeshPath::parse(&path).unwrap(),
                    replication: 1,
                    block_size: 65536,
                    mode: None,
                }
            };
            let entry = Entry {
                session: self.clients[c].session,
                request_id: request,
                time_ms: self.now,
                caller: meshfs_core::namespace::Caller::system(),
                command,
            };
            let accepted = match self.nodes[index].replica.as_mut() {
                Some(replica) if !self.isolated.contains(&target) => replica.propose(&entry),
                _ => Err(meshfs_mserver::consensus::ProposeError::NotLeader(None)),
            };
            match accepted {
                Ok(()) => {
                    let patience = 15 + self.rng.below(45);
                    self.clients[c].waiting = Some((request, path, target, self.now + patience));
                    self.drain(index);
                }
                Err(err) => {
                    let hint = match err {
                        meshfs_mserver::consensus::ProposeError::NotLeader(Some(l)) => l,
                        _ => 1 + self.rng.below(n),
                    };
                    self.clients[c].hint = hint;
                    // Try again soon, with the same id.
                    self.clients[c].waiting =
                        Some((request, path, target, self.now + 5 + self.rng.below(20)));
                }
            }
        }
    }

    /// One millisecond of cluster life.
    pub fn step(&mut self, faults_on: bool) {
        self.now += 1;
        // Deliver what is due, in time order (FIFO per channel).
        self.net.sort_by_key(|m| (m.at, m.seq));
        let due = self.net.iter().take_while(|m| m.at <= self.now).count();
        let arrived: Vec<InFlight> = self.net.drain(..due).collect();
        for m in arrived {
            if self.isolated.contains(&m.to) || self.isolated.contains(&m.from) {
                continue;
            }
            if let Payload::Heal(message) = m.payload {
                self.note(m.seq);
                self.heal_deliver(m.from, m.to, message);
                continue;
            }
            let i = (m.to - 1) as usize;
            let Some(replica) = self.nodes[i].replica.as_mut() else { continue };
            match m.payload {
                Payload::Raft(bytes) => {
                    let before = replica.status().applied;
                    replica.step(m.from, &bytes);
                    if replica.status().applied > before + 1 && bytes.len() > 500 {
                        self.stats.installs += 1;
                    }
                }
                Payload::Chunk(chunk) => replica.receive_chunk(m.from, chunk),
                Payload::Heal(_) => unreachable!("delivered above"),
            }
            self.note(m.seq);
            self.drain(i);
        }
        // Ticks every 10 ms, with jitter, and syncs finishing at random moments.
        for i in 0..self.nodes.len() {
            if self.nodes[i].replica.is_none() {
                if self.nodes[i].restart_at.is_some_and(|t| t <= self.now) {
                    self.start(i);
                    self.note(0x5747_0000 + i as u64);
                }
                continue;
            }
            if self.nodes[i].next_tick <= self.now {
                self.nodes[i].next_tick = self.now + 9 + self.rng.below(3);
                if let Some(r) = self.nodes[i].replica.as_mut() {
                    r.tick();
                }
                self.lock_clock(i);
                self.drain(i);
            }
            if self.rng.chance(300_000) {
                if let Some(r) = self.nodes[i].replica.as_mut() {
                    r.poll_synced();
                }
                self.drain(i);
            }
        }
        self.clients_act();
        self.lock_clients_act();
        self.heal_step(faults_on);
        if faults_on {
            self.inject_faults();
        }
    }

    fn inject_faults(&mut self) {
        let n = self.nodes.len();
        let majority = n / 2 + 1;
        let down = self.nodes.iter().filter(|x| x.replica.is_none()).count() + self.isolated.len();
        // Half of all faults hit the leader: that is where requests are in flight.
        let leader =
            self.nodes.iter().position(|x| x.replica.as_ref().is_some_and(|r| r.is_leader()));
        let victim = |rng: &mut Rng| match leader {
            Some(l) if rng.chance(500_000) => l,
            _ => rng.below(n as u64) as usize,
        };
        if n - down > majority && self.rng.chance(self.faults.crash_per_million) {
            let i = victim(&mut self.rng);
            if self.nodes[i].replica.is_some() && !self.isolated.contains(&self.nodes[i].id) {
                self.crash(i);
            }
        }
        if self.rng.chance(self.faults.partition_per_million) {
            if self.isolated.is_empty() && n - down > majority {
                let id = self.nodes[victim(&mut self.rng)].id;
                self.isolated.insert(id);
                self.stats.partitions += 1;
                self.note(0x150_0000 + id);
            } else {
                self.isolated.clear();
                self.note(0x4ea1);
            }
        }
    }

    pub fn done(&self) -> bool {
        self.clients.iter().all(|c| c.todo.is_empty())
            && self.lock_clients.iter().all(LockClient::finished)
            && self.writers_done()
    }

    /// Runs with faults for `ms`, then heals everything and runs until every client is done
    /// and every replica has applied everything, or `limit` passes.
    pub fn run(&mut self, ms: u64, limit: u64) {
        for _ in 0..ms {
            self.step(true);
        }
        self.isolated.clear();
        for i in 0..self.nodes.len() {
            if self.nodes[i].replica.is_none() {
                self.start(i);
            }
        }
        self.restart_dservers();
        let end = self.now + limit;
        while self.now < end {
            self.step(false);
            if self.done() && self.settled() && self.unhealed().is_none() {
                return;
            }
        }
        let left: Vec<_> = self.clients.iter().map(|c| c.todo.len()).collect();
        let locking: Vec<_> = self.lock_clients.iter().filter(|c| !c.finished()).collect();
        panic!(
            "seed {}: not done after healing (requests left per client: {left:?}; lock clients \
             not done: {locking:?}; writers done: {}; replicas: {:?})",
            self.seed,
            self.writers_done(),
            self.unhealed()
        );
    }

    fn settled(&self) -> bool {
        let applied: Vec<u64> = self
            .nodes
            .iter()
            .filter_map(|n| n.replica.as_ref())
            .map(|r| r.status().applied)
            .collect();
        let commits: Vec<u64> = self
            .nodes
            .iter()
            .filter_map(|n| n.replica.as_ref())
            .map(|r| r.status().commit)
            .collect();
        applied.len() == self.nodes.len()
            && applied.iter().all(|&a| a == applied[0])
            && commits.iter().all(|&c| c == applied[0])
    }

    /// What happened, for the test log.
    pub fn summary(&self) -> String {
        let terms: Vec<u64> =
            self.nodes.iter().filter_map(|n| n.replica.as_ref()).map(|r| r.status().term).collect();
        let snapshots: Vec<u64> = self
            .nodes
            .iter()
            .map(|n| n.disk.borrow().snapshot.as_ref().map_or(0, |s| s.get_metadata().index))
            .collect();
        let locks = if self.lock_clients.is_empty() {
            String::new()
        } else {
            format!(
                ", {} lock grants, {} refused or timed out, {} stalls, {} sessions expired",
                self.grants.len(),
                self.stats.lock_refusals,
                self.stats.lock_stalls,
                self.stats.sessions_expired
            )
        };
        format!(
            "seed {}: {} ms, {} entries applied, {} creates acknowledged, {} crashes, {} partitions, {} snapshots installed, {} retries, terms {:?}, snapshot indexes {:?}{locks}",
            self.seed,
            self.now,
            self.applied.len(),
            self.acked.len(),
            self.stats.crashes,
            self.stats.partitions,
            self.stats.installs,
            self.stats.retries,
            terms,
            snapshots
        ) + &self.heal_summary()
    }

    /// Simulated milliseconds since the start.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Sessions that expired, for the test's own checks.
    pub fn sessions_expired(&self) -> u64 {
        self.stats.sessions_expired
    }

    pub fn check(&self) {
        let namespaces: Vec<Vec<u8>> =
            self.nodes.iter().map(|n| n.replica.as_ref().unwrap().namespace().snapshot()).collect();
        for (i, ns) in namespaces.iter().enumerate() {
            assert_eq!(
                ns,
                &namespaces[0],
                "seed {}: replica {} differs from replica 1",
                self.seed,
                i + 1
            );
        }
        for node in &self.nodes {
            let ns = node.replica.as_ref().unwrap().namespace();
            for (path, id) in &self.acked {
                match ns.stat(&MeshPath::parse(path).unwrap()) {
                    Ok(Stat::File(meta)) => {
                        assert_eq!(
                            meta.descriptor.id, *id,
                            "seed {}: {path} has another id",
                            self.seed
                        )
                    }
                    other => panic!(
                        "seed {}: acknowledged {path} is {other:?} on node {}",
                        self.seed, node.id
                    ),
                }
            }
        }
        for (path, (created, exists)) in &self.contended {
            assert_eq!(*created, 1, "seed {}: {path} created {created} times", self.seed);
            assert_eq!(
                created + exists,
                self.clients.len() as u32,
                "seed {}: {path} answers",
                self.seed
            );
        }
    }
}
