//! Raft among the meta-servers: a [`Replica`] drives raft-rs's `RawNode` over the durable
//! [`LogStore`] and applies committed entries to the [`Namespace`].
//!
//! The event loop calls [`Replica::tick`] on a timer, [`Replica::step`] for each Raft message
//! from a peer, [`Replica::propose`] for client changes, and [`Replica::poll_synced`] when the
//! fsync worker wakes it. After each call it takes [`Replica::take_output`]: Raft messages to
//! send and outcomes of applied entries to answer clients with.
//!
//! Durability (raft-rs's asynchronous ready): a ready's entries and hard state are written to
//! the log file on the loop, the fsync is handed to the worker thread, and the ready's
//! persisted messages (votes, append acknowledgements) are held until that fsync is done. The
//! worker drains every request queued while it was busy and covers them with one fsync: group
//! commit. Nothing is acknowledged before it is on disk.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::path::Path;

use log::{debug, error, info, warn};
use meshfs_core::namespace::{Entry, Namespace, Outcome};
use meshfs_net::Notifier;
use protobuf::Message as _;
use raft::eraftpb::{Entry as RaftEntry, EntryType, Message as RaftMessage, MessageType};
use raft::{RawNode, ReadOnlyOption, SnapshotStatus, StateRole};

use crate::log_store::{LogError, LogStore};
use crate::persist::{Completion, Persister, RaftLog, ThreadPersister};

/// Raft ticks per election timeout (randomised up to twice this by raft-rs).
pub const ELECTION_TICKS: usize = 10;
/// Bytes of entries a leader holds proposed and not yet committed, at most.
pub const MAX_UNCOMMITTED_BYTES: u64 = 64 * 1024 * 1024;
/// Raft ticks between leader heartbeats.
pub const HEARTBEAT_TICKS: usize = 2;
/// A ready written to the log and waiting to be durable.
#[derive(Debug)]
struct Unsynced {
    number: u64,
    /// Messages (votes, append acknowledgements) to send once it is.
    messages: Vec<RaftMessage>,
    needs_sync: bool,
}

/// Bytes of entries per append message, well under the 1 MiB frame limit.
const MAX_APPEND_BYTES: u64 = 512 * 1024;
/// Entries the log may hold past the last snapshot before one is taken, however large the
/// namespace (unless `snapshot_entries` in the config asks for more).
pub const MAX_LOG_ENTRIES: u64 = 100_000;
/// Largest snapshot accepted from a leader.
pub const MAX_SNAPSHOT_BYTES: u64 = 4 << 30;

/// What the loop must do after a call into the replica.
#[derive(Debug, Default)]
pub struct Output {
    /// Raft messages to send: (peer id, encoded `eraftpb::Message`).
    pub messages: Vec<(u64, Vec<u8>)>,
    /// Entries applied (with their Raft index) and what applying them did; the proposer
    /// answers its client.
    pub applied: Vec<(u64, Entry, Outcome)>,
    /// Reads confirmed by ReadIndex: (the read's context, the index to have applied before
    /// answering it).
    pub reads: Vec<(u64, u64)>,
    /// Snapshots to stream to followers: their data goes in chunks, then the message.
    pub snapshots: Vec<OutgoingSnapshot>,
}

/// A snapshot for one follower, split for streaming: the data goes first in
/// [`SnapshotChunk`](meshfs_core::wire::SnapshotChunk)s, then `message` (the Raft snapshot
/// message without its data), on one ordered queue. The sender reports the end with
/// [`Replica::report_snapshot`].
#[derive(Debug)]
pub struct OutgoingSnapshot {
    /// The follower.
    pub to: u64,
    /// The snapshot's index.
    pub index: u64,
    /// The snapshot's term.
    pub term: u64,
    /// The state machine's data.
    pub data: Vec<u8>,
    /// The encoded `MsgSnapshot`, data left out.
    pub message: Vec<u8>,
}

/// A snapshot being received in chunks.
#[derive(Debug)]
struct IncomingSnapshot {
    from: u64,
    index: u64,
    term: u64,
    total: u64,
    data: Vec<u8>,
}

/// Why a proposal was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This replica is not the leader; the leader is the one named, if known.
    #[error("not the leader (leader: {0:?})")]
    NotLeader(Option<u64>),
    /// Raft refused it (e.g. a leader transfer in progress).
    #[error("proposal dropped: {0}")]
    Dropped(String),
}

/// Raft's view, for status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftStatus {
    /// Leader, follower, candidate or pre-candidate.
    pub role: StateRole,
    /// Current term.
    pub term: u64,
    /// Highest index known committed.
    pub commit: u64,
    /// Highest index applied to the namespace.
    pub applied: u64,
    /// The leader, if known.
    pub leader: Option<u64>,
}

/// How a replica runs Raft.
#[derive(Debug, Clone)]
pub struct ReplicaOptions {
    /// This replica's Raft id (its node id).
    pub id: u64,
    /// Compact after this many entries (or half the namespace, at most [`MAX_LOG_ENTRIES`]).
    pub snapshot_every: u64,
    /// Election timeout range in ticks, `[min, max)`; raft-rs draws from it with its own
    /// random source, so a simulation pins it (`max = min + 1`) and varies tick timing itself.
    pub election_ticks: (usize, usize),
}

impl ReplicaOptions {
    /// The server's options: elections after 10 to 20 ticks.
    pub fn new(id: u64, snapshot_every: u64) -> ReplicaOptions {
        ReplicaOptions { id, snapshot_every, election_ticks: (ELECTION_TICKS, 2 * ELECTION_TICKS) }
    }
}

/// One meta-server's Raft replica and namespace, over a log `L` made durable by `P`.
pub struct Replica<L: RaftLog = LogStore, P: Persister<L> = ThreadPersister> {
    raw: RawNode<L>,
    persister: P,
    namespace: Namespace,
    applied: u64,
    /// Readies written but not yet durable: (number, messages to send once they are, whether
    /// the ready needs an fsync of its own). A ready that changes only the commit index needs
    /// none (as etcd's `MustSync`): it is durable once every ready before it is.
    unsynced: VecDeque<Unsynced>,
    output: Output,
    /// Compact the log into a snapshot once this many entries follow the last snapshot.
    snapshot_every: u64,
    /// The snapshot being streamed to us, if any.
    incoming: Option<IncomingSnapshot>,
    /// Our own snapshot being written by the persister: (index, term).
    writing: Option<(u64, u64)>,
}

impl<L: RaftLog, P: Persister<L>> std::fmt::Debug for Replica<L, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica").field("status", &self.status()).finish_non_exhaustive()
    }
}

/// Why the replica could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The log could not be opened.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The snapshot did not restore.
    #[error("snapshot does not restore: {0}")]
    Snapshot(String),
    /// Raft refused its configuration.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
}

impl Replica<LogStore, ThreadPersister> {
    /// Opens the log in `dir` and starts the replica `id` among `voters`, with worker threads
    /// that wake the loop through `notifier`. The log is compacted after `snapshot_every`
    /// entries, or half as many as the namespace has inodes (at most [`MAX_LOG_ENTRIES`]).
    pub fn open(
        dir: &Path,
        id: u64,
        voters: &[u64],
        snapshot_every: u64,
        notifier: Notifier,
    ) -> Result<Replica, ReplicaError> {
        let store = LogStore::open(dir, voters)?;
        let persister = ThreadPersister::start(dir.to_path_buf(), notifier);
        info!("raft replica {id} of {voters:?} opening {}", dir.display());
        Replica::new(store, persister, ReplicaOptions::new(id, snapshot_every))
    }
}

impl<L: RaftLog, P: Persister<L>> Replica<L, P> {
    /// A replica over `log` (restoring the namespace from its latest snapshot).
    pub fn new(
        log: L,
        persister: P,
        options: ReplicaOptions,
    ) -> Result<Replica<L, P>, ReplicaError> {
        let (namespace, applied) = match log.latest_snapshot()? {
            Some(snapshot) => {
                let ns = Namespace::restore(&snapshot.data)
                    .map_err(|e| ReplicaError::Snapshot(e.to_string()))?;
                (ns, snapshot.get_metadata().index)
            }
            None => (Namespace::new(), 0),
        };
        let config = raft::Config {
            id: options.id,
            election_tick: options.election_ticks.0,
            min_election_tick: options.election_ticks.0,
            max_election_tick: options.election_ticks.1,
            heartbeat_tick: HEARTBEAT_TICKS,
            applied,
            max_size_per_msg: MAX_APPEND_BYTES,
            max_inflight_msgs: 256,
            // Proposals past this much uncommitted log are dropped (the client hears
            // "unavailable" and retries): a leader whose followers lag cannot pile up log.
            max_uncommitted_size: MAX_UNCOMMITTED_BYTES,
            check_quorum: true,
            pre_vote: true,
            read_only_option: ReadOnlyOption::Safe,
            ..Default::default()
        };
        config.validate()?;
        let raw = RawNode::new(&config, log, &raft_logger(options.id))?;
        info!("raft replica {} starts at applied index {applied}", options.id);
        Ok(Replica {
            raw,
            persister,
            namespace,
            applied,
            unsynced: VecDeque::new(),
            output: Output::default(),
            snapshot_every: options.snapshot_every,
            incoming: None,
            writing: None,
        })
    }

    /// The namespace as applied so far.
    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// Raft's view now.
    pub fn status(&self) -> RaftStatus {
        let raft = &self.raw.raft;
        RaftStatus {
            role: raft.state,
            term: raft.term,
            commit: raft.raft_log.committed,
            applied: self.applied,
            leader: (raft.leader_id != raft::INVALID_ID).then_some(raft.leader_id),
        }
    }

    /// Whether every ready handed to the log writer has come back durable.
    pub fn is_synced(&self) -> bool {
        self.unsynced.is_empty()
    }

    /// Whether this replica leads.
    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// Advances Raft's clock by one tick.
    pub fn tick(&mut self) {
        self.raw.tick();
        self.process_ready();
    }

    /// Hands Raft a message from a peer (an encoded `eraftpb::Message`).
    pub fn step(&mut self, from: u64, bytes: &[u8]) {
        let message = match RaftMessage::parse_from_bytes(bytes) {
            Ok(message) => message,
            Err(err) => {
                warn!("dropping an undecodable raft message from {from}: {err}");
                return;
            }
        };
        let mut message = message;
        if message.from != from {
            warn!("dropping a raft message from {from} that claims to be from {}", message.from);
            return;
        }
        if message.get_msg_type() == MessageType::MsgSnapshot
            && message.get_snapshot().data.is_empty()
            && !self.attach_snapshot(from, &mut message)
        {
            return;
        }
        if let Err(err) = self.raw.step(message) {
            debug!("raft step from {from}: {err}");
        }
        self.process_ready();
    }

    /// A peer is unreachable: Raft stops pipelining to it.
    pub fn report_unreachable(&mut self, peer: u64) {
        self.raw.report_unreachable(peer);
    }

    /// Proposes a change. Its outcome comes back in [`Output::applied`] once committed.
    pub fn propose(&mut self, entry: &Entry) -> Result<(), ProposeError> {
        if !self.is_leader() {
            return Err(ProposeError::NotLeader(self.status().leader));
        }
        self.raw
            .propose(Vec::new(), entry.encode())
            .map_err(|e| ProposeError::Dropped(e.to_string()))?;
        self.process_ready();
        Ok(())
    }

    /// Starts a linearizable read: its context comes back in [`Output::reads`] with the
    /// index the namespace must have applied before the read is answered. Leader only.
    pub fn read_index(&mut self, context: u64) -> Result<(), ProposeError> {
        if !self.is_leader() {
            return Err(ProposeError::NotLeader(self.status().leader));
        }
        self.raw.read_index(context.to_be_bytes().to_vec());
        self.process_ready();
        Ok(())
    }

    /// Takes what the loop must do now.
    pub fn take_output(&mut self) -> Output {
        std::mem::take(&mut self.output)
    }

    /// Collects finished syncs and snapshot writes (after the loop was woken) and continues
    /// Raft from them.
    pub fn poll_synced(&mut self) {
        let mut latest = None;
        for completion in self.persister.poll(self.raw.mut_store()) {
            match completion {
                Completion::Synced(number) => latest = latest.max(Some(number)),
                Completion::SnapshotWritten(result) => self.snapshot_done(result),
                Completion::SyncFailed(err) => {
                    // Nothing after the failed sync may be acknowledged. The only safe answer
                    // is to stop (the log on disk is the truth on restart).
                    error!("fsync of the raft log failed: {err}; stopping");
                    std::process::exit(70);
                }
            }
        }
        let Some(number) = latest else { return };
        self.persisted_through(number);
        self.process_ready();
    }

    /// Every ready up to `number` is durable, and so is every ready after it that needed no
    /// fsync of its own: tells raft-rs and sends what waited for it.
    fn persisted_through(&mut self, number: u64) {
        let mut through = None;
        while let Some(front) = self.unsynced.front() {
            if front.number > number && front.needs_sync {
                break;
            }
            let done = self.unsynced.pop_front().expect("checked");
            through = through.max(Some(done.number));
            self.queue_messages(done.messages);
        }
        let Some(through) = through.map(|t| t.max(number)) else { return };
        self.raw.on_persist_ready(through);
        // A snapshot installed in a ready counts as applied only once raft-rs has seen that
        // ready persisted.
        self.report_applied();
    }

    fn queue_messages(&mut self, messages: Vec<RaftMessage>) {
        for mut message in messages {
            let to = message.to;
            if message.get_msg_type() == MessageType::MsgSnapshot {
                // Streamed apart: a snapshot outgrows any one frame.
                let snapshot = message.mut_snapshot();
                let data = std::mem::take(&mut snapshot.data).to_vec();
                let (index, term) = (snapshot.get_metadata().index, snapshot.get_metadata().term);
                match message.write_to_bytes() {
                    Ok(bytes) => {
                        info!("streaming a {}-byte snapshot at index {index} to {to}", data.len());
                        self.output.snapshots.push(OutgoingSnapshot {
                            to,
                            index,
                            term,
                            data,
                            message: bytes,
                        });
                    }
                    Err(err) => error!("cannot encode a snapshot message to {to}: {err}"),
                }
                continue;
            }
            match message.write_to_bytes() {
                Ok(bytes) => self.output.messages.push((to, bytes)),
                Err(err) => error!("cannot encode a raft message to {to}: {err}"),
            }
        }
    }

    /// The end of streaming a snapshot to `to`: delivered, or failed (Raft retries).
    pub fn report_snapshot(&mut self, to: u64, delivered: bool) {
        let status = if delivered { SnapshotStatus::Finish } else { SnapshotStatus::Failure };
        self.raw.report_snapshot(to, status);
        self.process_ready();
    }

    /// Takes a piece of the snapshot `from` is streaming to us. Pieces come in order on one
    /// connection; anything else restarts the transfer (the leader resends).
    pub fn receive_chunk(&mut self, from: u64, chunk: meshfs_core::wire::SnapshotChunk) {
        if chunk.offset == 0 {
            if chunk.total > MAX_SNAPSHOT_BYTES {
                warn!(
                    "refusing a {}-byte snapshot from {from} (limit {MAX_SNAPSHOT_BYTES})",
                    chunk.total
                );
                self.incoming = None;
                return;
            }
            self.incoming = Some(IncomingSnapshot {
                from,
                index: chunk.index,
                term: chunk.term,
                total: chunk.total,
                data: Vec::new(),
            });
        }
        let Some(incoming) = &mut self.incoming else { return };
        let fits = incoming.from == from
            && incoming.index == chunk.index
            && incoming.term == chunk.term
            && incoming.data.len() as u64 == chunk.offset
            && chunk.offset + chunk.data.len() as u64 <= incoming.total;
        if !fits {
            warn!(
                "snapshot piece from {from} at {} does not continue the transfer; dropped",
                chunk.offset
            );
            self.incoming = None;
            return;
        }
        incoming.data.extend_from_slice(&chunk.data);
    }

    /// Puts the streamed data back into a data-less snapshot message; false to drop it.
    fn attach_snapshot(&mut self, from: u64, message: &mut RaftMessage) -> bool {
        let meta = message.get_snapshot().get_metadata();
        let (index, term) = (meta.index, meta.term);
        match self.incoming.take() {
            Some(incoming)
                if incoming.from == from
                    && incoming.index == index
                    && incoming.term == term
                    && incoming.data.len() as u64 == incoming.total =>
            {
                message.mut_snapshot().data = incoming.data.into();
                true
            }
            _ => {
                warn!("snapshot message from {from} at index {index} without its data; dropped");
                false
            }
        }
    }

    fn process_ready(&mut self) {
        while self.raw.has_ready() {
            let mut ready = self.raw.ready();
            let messages = ready.take_messages();
            self.queue_messages(messages);
            for state in ready.take_read_states() {
                match <[u8; 8]>::try_from(&state.request_ctx[..]) {
                    Ok(ctx) => self.output.reads.push((u64::from_be_bytes(ctx), state.index)),
                    Err(_) => {
                        warn!("read state with a context of {} bytes", state.request_ctx.len())
                    }
                }
            }
            if !ready.snapshot().is_empty() {
                let snapshot = ready.snapshot().clone();
                if let Err(err) = self.install_snapshot(&snapshot) {
                    error!("cannot install the leader's snapshot: {err}; stopping");
                    std::process::exit(70);
                }
            }
            let committed = ready.take_committed_entries();
            self.apply(committed);
            if let Err(err) = self.persist(&ready) {
                error!("cannot write the raft log: {err}; stopping");
                std::process::exit(70);
            }
            let messages = ready.take_persisted_messages();
            let number = ready.number();
            let needs_sync = ready.must_sync();
            self.raw.advance_append_async(ready);
            self.unsynced.push_back(Unsynced { number, messages, needs_sync });
            if needs_sync {
                self.request_sync(number);
            } else if self.unsynced.len() == 1 {
                // Nothing before it is waiting for a sync: durable already.
                self.persisted_through(number);
            }
        }
    }

    fn persist(&mut self, ready: &raft::Ready) -> Result<(), LogError> {
        let store = self.raw.mut_store();
        if !ready.entries().is_empty() {
            store.append(ready.entries())?;
        }
        if let Some(hs) = ready.hs() {
            store.set_hard_state(hs)?;
        }
        Ok(())
    }

    fn request_sync(&mut self, number: u64) {
        if let Err(err) = self.persister.sync(self.raw.mut_store(), number) {
            error!("cannot sync the raft log: {err}; stopping");
            std::process::exit(70);
        }
    }

    /// Tells raft-rs how far the namespace has applied, but never past what raft-rs holds
    /// committed and persisted (it asserts that). Called after applying entries, after
    /// installing a snapshot and after a persist; without it, a follower that installed a
    /// snapshot keeps an applied index below its log's first index, and raft-rs panics
    /// reading "unapplied" entries the next time that node campaigns.
    fn report_applied(&mut self) {
        let log = &self.raw.raft.raft_log;
        let target = self.applied.min(log.committed).min(log.persisted);
        if target > log.applied {
            self.raw.advance_apply_to(target);
        }
    }

    fn snapshot_done(&mut self, result: Result<(u64, u64), String>) {
        self.writing = None;
        match result {
            Ok((index, term)) => match self.raw.mut_store().snapshot_written(index, term) {
                Ok(()) => info!("snapshot at index {index} written; log compacted"),
                Err(err) => warn!("snapshot at {index} written, compaction failed: {err}"),
            },
            Err(err) => warn!("writing a snapshot failed: {err}; the log keeps growing"),
        }
    }

    fn install_snapshot(&mut self, snapshot: &raft::eraftpb::Snapshot) -> Result<(), String> {
        // Our own snapshot write must not land after (and over) the leader's.
        if self.writing.is_some()
            && let Some(Completion::SnapshotWritten(result)) =
                self.persister.wait_snapshot(self.raw.mut_store())
        {
            self.snapshot_done(result);
        }
        let namespace = Namespace::restore(&snapshot.data).map_err(|e| e.to_string())?;
        self.raw.mut_store().apply_snapshot(snapshot).map_err(|e| e.to_string())?;
        self.namespace = namespace;
        self.applied = snapshot.get_metadata().index;
        self.report_applied();
        info!("installed the leader's snapshot at index {}", self.applied);
        Ok(())
    }

    fn apply(&mut self, committed: Vec<RaftEntry>) {
        let Some(last) = committed.last().map(|e| e.index) else { return };
        for raft_entry in committed {
            if raft_entry.get_entry_type() != EntryType::EntryNormal || raft_entry.data.is_empty() {
                continue; // leader no-ops and (unused) conf changes
            }
            match Entry::decode(&raft_entry.data) {
                Ok(entry) => {
                    let outcome = self.namespace.apply(&entry);
                    self.output.applied.push((raft_entry.index, entry, outcome));
                }
                Err(err) => {
                    // Every replica sees the same bytes, so every replica skips it alike.
                    error!("committed entry {} does not decode ({err}); skipped", raft_entry.index);
                }
            }
        }
        self.applied = last;
        self.report_applied();
        self.maybe_compact();
    }

    fn maybe_compact(&mut self) {
        if self.writing.is_some() {
            return;
        }
        let store = self.raw.store();
        let since = self.applied.saturating_sub(store.snapshot_index());
        // A snapshot costs time in proportion to the namespace, the log costs memory in
        // proportion to its entries. Waiting until the log is half the namespace keeps the
        // snapshot cost per entry constant; capping that wait at MAX_LOG_ENTRIES keeps the
        // log's memory bounded (at 1,000,000 files: a snapshot every 100,000 entries).
        let proportional = (self.namespace.inode_count() as u64 / 2).min(MAX_LOG_ENTRIES);
        if since < self.snapshot_every.max(proportional) {
            return;
        }
        // The last entry's term must be known to the store: compact only to what it holds.
        let Ok(last) = store.last_index() else { return };
        let index = self.applied.min(last);
        // Encoding is on the loop (the namespace must not change under it); writing and
        // fsyncing the file is the snapshot worker's.
        let data = self.namespace.snapshot();
        let bytes = data.len();
        match self.raw.store().prepare_snapshot(index, data) {
            Ok(Some(snapshot)) => {
                let term = snapshot.get_metadata().term;
                match self.persister.write_snapshot(self.raw.mut_store(), snapshot) {
                    Ok(()) => {
                        info!("snapshot at index {index} ({bytes} bytes) handed to the writer");
                        self.writing = Some((index, term));
                    }
                    Err(err) => warn!("snapshot at {index} not written: {err}"),
                }
            }
            Ok(None) => {}
            Err(err) => warn!("snapshot at {index} failed: {err}; the log keeps growing"),
        }
    }
}

/// raft-rs logs through slog; this drain hands its records to `log` (target "raft").
struct LogBridge;

struct KvText(String);

impl slog::Serializer for KvText {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments<'_>) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl slog::Drain for LogBridge {
    type Ok = ();
    type Err = slog::Never;

    fn log(
        &self,
        record: &slog::Record<'_>,
        values: &slog::OwnedKVList,
    ) -> Result<(), slog::Never> {
        let level = match record.level() {
            slog::Level::Critical | slog::Level::Error => log::Level::Error,
            slog::Level::Warning => log::Level::Warn,
            slog::Level::Info => log::Level::Info,
            slog::Level::Debug => log::Level::Debug,
            slog::Level::Trace => log::Level::Trace,
        };
        if log::log_enabled!(target: "raft", level) {
            let mut kv = KvText(String::new());
            let _ = slog::KV::serialize(&record.kv(), record, &mut kv);
            let _ = slog::KV::serialize(values, record, &mut kv);
            log::log!(target: "raft", level, "{}{}", record.msg(), kv.0);
        }
        Ok(())
    }
}

fn raft_logger(id: u64) -> slog::Logger {
    slog::Logger::root(slog::Drain::fuse(LogBridge), slog::o!("raft_id" => id))
}
