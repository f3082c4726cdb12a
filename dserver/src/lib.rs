//! The MeshFS data-server: keeps block replicas on its disk and serves them.
//!
//! - [`block_store`]: replica files with a CRC-32 per 64 KiB segment, copy-on-write.
//! - [`disk`]: worker threads doing all disk work, off the event loop.
//!
//! Writes come down a chain. A client sends a write in chunks (each carrying the write
//! token the meta-servers signed) to the first data-server of the block's chain; each
//! data-server checks the token (signed with the cluster secret, for this block and version,
//! naming it in the chain, not expired), forwards the chunk to the next one over the group
//! mesh, writes it on a disk worker, and acknowledges a chunk upstream once it is written
//! here and acknowledged downstream. The last chunk commits (fsync) the write; its
//! acknowledgement means the block is durable on every replica after this one and here. A
//! failure anywhere is reported upstream, and nothing of that write is committed there.
//!
//! A write's token also names its base: the block's committed version when the lease was
//! granted. A write that keeps the block's other bytes starts from the copy at that version,
//! and a replica without it refuses (it missed a write and needs repair). The new version
//! becomes the block's when the client commits it at the meta-servers; until then readers ask
//! for the base, which the block store keeps beside the new copy. The leader's
//! [`Message::BlockCommitted`] notice lets the base copy go.
//!
//! Reads return the bytes asked for with what checks their segments against the stored
//! checksums, which the client checks again.
//!
//! Self-healing, on the leader meta-server's word: a [`Message::Repair`] makes this
//! data-server copy a block from another one over the mesh (reads paced to the configured
//! repair rate, every segment checked against the source's stored checksums, then written
//! and committed like any write) and answer [`Message::RepairDone`]; a
//! [`Message::DeleteReplica`] deletes a replica if it is still at the version the leader saw.
//! The scrubber re-reads every replica in the background; a damaged one is set aside and
//! reported, and the leader has it copied back from a good replica.

#![deny(missing_docs, missing_debug_implementations)]

pub mod block_store;
pub mod disk;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, info, warn};
use meshfs_core::descriptor::BlockDescriptor;
use meshfs_core::request::{Handled, common_reply, unsupported};
use meshfs_core::status::node_status;
use meshfs_core::token::TokenOp;
use meshfs_core::wire::{
    BlockData, DataReport, Kind, MAX_CHUNK_BYTES, MAX_REPORT_BLOCKS, Message, ReadBlock,
    RepairTask, WriteAck, WriteChunk,
};
use meshfs_group::driver::{Node, NodeError, Service, StartError, start_server};
use meshfs_group::{ClientId, GroupEvent, NodeId, Role};
use meshfs_net::{ConnId, Priority};

use crate::block_store::{BlockStore, StoreError};
use crate::disk::{DiskDone, DiskJob, DiskPool, ReplyTo};

/// A write idle this long (no chunk, no acknowledgement) is abandoned: its upstream died or
/// gave up, and its temporary file is removed.
pub const WRITE_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
const SWEEP_TIMER: u64 = 1;
const SWEEP_EVERY: Duration = Duration::from_secs(5);
const PACE_TIMER: u64 = 2;
/// While a repair copy waits for its rate allowance, it looks again this often.
const PACE_EVERY: Duration = Duration::from_millis(10);
/// Reads one repair copy keeps outstanding at its source.
const COPY_READS: usize = 4;
const FORWARD_TIMER: u64 = 3;
/// Bulk frames to another data-server wait here while more than this is queued on the link,
/// so that many chains through one link never overflow its queue (which would close it).
const FORWARD_QUEUE_BYTES: usize = 4 * 1024 * 1024;
/// While frames wait, the link's queue is looked at this often.
const FORWARD_EVERY: Duration = Duration::from_millis(1);

/// Bulk frames (chain chunks, read replies) waiting for room on the link to a data-server.
/// What waits is bounded by what upstreams may send unacknowledged: clients keep a window per
/// write, and copies a few reads each.
#[derive(Debug, Default)]
struct Forwarder {
    /// Per peer, in order: the write the frame belongs to (to drop it if the write fails).
    held: HashMap<NodeId, std::collections::VecDeque<(Option<u64>, meshfs_net::Frame)>>,
    timer_set: bool,
}

impl Forwarder {
    /// Sends `frame` to `peer` now or as soon as its link has room; an error if the link is
    /// down.
    fn send(
        &mut self,
        node: &mut Node,
        peer: NodeId,
        write: Option<u64>,
        frame: meshfs_net::Frame,
    ) -> Result<(), ()> {
        let queued = node.queued_bytes(peer).ok_or(())?;
        let waiting = self.held.get(&peer).is_some_and(|q| !q.is_empty());
        if !waiting && queued < FORWARD_QUEUE_BYTES {
            return node.send(peer, Priority::Bulk, frame).map_err(drop);
        }
        self.held.entry(peer).or_default().push_back((write, frame));
        if !self.timer_set {
            node.set_timer(Instant::now() + FORWARD_EVERY, FORWARD_TIMER);
            self.timer_set = true;
        }
        Ok(())
    }

    /// Sends what the links have room for; the writes whose peer went down meanwhile.
    fn pump(&mut self, node: &mut Node) -> Vec<(u64, NodeId)> {
        self.timer_set = false;
        let mut failed = Vec::new();
        for (&peer, queue) in self.held.iter_mut() {
            while let Some((write, _)) = queue.front() {
                let write = *write;
                match node.queued_bytes(peer) {
                    None => {
                        failed.extend(queue.drain(..).filter_map(|(w, _)| w).map(|w| (w, peer)));
                        break;
                    }
                    Some(queued) if queued >= FORWARD_QUEUE_BYTES => break,
                    Some(_) => {
                        let (_, frame) = queue.pop_front().expect("front exists");
                        if node.send(peer, Priority::Bulk, frame).is_err() {
                            failed.extend(write.map(|w| (w, peer)));
                        }
                    }
                }
            }
        }
        self.held.retain(|_, q| !q.is_empty());
        if !self.held.is_empty() {
            node.set_timer(Instant::now() + FORWARD_EVERY, FORWARD_TIMER);
            self.timer_set = true;
        }
        failed.sort_unstable();
        failed.dedup();
        failed
    }

    /// Drops the frames of `write` (it failed or ended).
    fn drop_write(&mut self, write: u64) {
        for queue in self.held.values_mut() {
            queue.retain(|(w, _)| *w != Some(write));
        }
    }
}

/// Why a data-server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// It could not start as a server.
    #[error(transparent)]
    Start(#[from] StartError),
    /// Its block store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Who sent a write: a client connection or the previous data-server of the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Upstream {
    Client(ConnId),
    Peer(NodeId),
}

/// A write coming through this data-server.
#[derive(Debug)]
struct Inbound {
    upstream: Upstream,
    /// The request id the upstream uses for this write.
    upstream_id: u64,
    /// The token of the write's first chunk; later chunks must carry the same.
    token: meshfs_core::token::Token,
    /// The next data-server and the request id we use with it.
    downstream: Option<(NodeId, u64)>,
    /// Written here, up to this offset.
    local_through: u64,
    /// Acknowledged downstream, up to this offset.
    down_through: u64,
    local_committed: bool,
    down_committed: bool,
    /// The last chunk has been received (so a commit is coming).
    last_seen: bool,
    /// Last acknowledgement sent upstream: (through, committed).
    acked: (u64, bool),
    last_activity: Instant,
}

/// A repair copy coming into this data-server.
#[derive(Debug)]
struct Copy {
    /// The leader that asked, and what.
    leader: NodeId,
    task: RepairTask,
    /// Bytes asked of the source so far.
    requested: u64,
    /// Reads asked and not yet answered.
    reads: usize,
    /// Pieces to write in all, and written so far.
    pieces: u64,
    written: u64,
    last_activity: Instant,
}

/// A token bucket: repair reads into this data-server stay under the configured rate.
#[derive(Debug)]
struct Pacer {
    bytes_per_sec: u64,
    allowance: f64,
    last: Instant,
}

impl Pacer {
    fn new(bytes_per_sec: u64) -> Pacer {
        Pacer { bytes_per_sec, allowance: 0.0, last: Instant::now() }
    }

    /// Takes `bytes` of allowance at `now` if there is that much.
    fn take(&mut self, bytes: u64, now: Instant) -> bool {
        let rate = self.bytes_per_sec as f64;
        // At most a tenth of a second's worth (and at least one piece) saved up.
        let burst = (rate / 10.0).max(f64::from(MAX_CHUNK_BYTES));
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.allowance = (self.allowance + elapsed * rate).min(burst);
        self.last = now;
        if self.allowance >= bytes as f64 {
            self.allowance -= bytes as f64;
            true
        } else {
            false
        }
    }
}

/// The data-server above the group: its block store and the writes under way.
#[derive(Debug)]
pub struct DataServer {
    me: NodeId,
    secret: Vec<u8>,
    store: Arc<BlockStore>,
    disk: DiskPool,
    /// Writes under way, by our write number.
    writes: HashMap<u64, Inbound>,
    /// Our write number by (upstream, upstream request id).
    by_upstream: HashMap<(Upstream, u64), u64>,
    /// Our write number by the request id we use downstream.
    by_downstream: HashMap<u64, u64>,
    next_write: u64,
    /// Repair copies coming in, by their write number.
    copies: HashMap<u64, Copy>,
    /// Reads asked of copy sources, by request id: (write number, offset, length).
    copy_reads: HashMap<u64, (u64, u64, u32)>,
    next_copy_read: u64,
    pacer: Pacer,
    pace_timer_set: bool,
    forwarder: Forwarder,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl DataServer {
    /// A data-server serving `store`, checking tokens with `secret`, taking repair copies at
    /// up to `repair_bytes_per_sec`.
    pub fn new(
        me: NodeId,
        secret: Vec<u8>,
        store: Arc<BlockStore>,
        disk: DiskPool,
        repair_bytes_per_sec: u64,
    ) -> DataServer {
        DataServer {
            me,
            secret,
            store,
            disk,
            writes: HashMap::new(),
            by_upstream: HashMap::new(),
            by_downstream: HashMap::new(),
            next_write: 1,
            copies: HashMap::new(),
            copy_reads: HashMap::new(),
            next_copy_read: 1,
            pacer: Pacer::new(repair_bytes_per_sec),
            pace_timer_set: false,
            forwarder: Forwarder::default(),
        }
    }

    // ---- repair copies ----

    /// Starts the copy the leader asked for.
    fn start_copy(&mut self, node: &mut Node, leader: NodeId, task: RepairTask) {
        let block = task.block;
        if let Some(held) = self.store.get(block.file.id, block.index)
            && held.descriptor.version == block.version
        {
            // Already here (an earlier copy, or the task was sent twice): done.
            return Self::copy_answer(node, leader, &task, String::new());
        }
        let busy = self
            .copies
            .values()
            .any(|c| (c.task.block.file.id, c.task.block.index) == (block.file.id, block.index));
        if busy || task.len > u64::from(task.block_size) || task.source == self.me {
            let why = if busy { "a copy of it is already under way here" } else { "bad task" };
            return Self::copy_answer(node, leader, &task, why.into());
        }
        let write = self.next_write;
        self.next_write += 1;
        info!("repair: copying {block} ({} bytes) from data-server {}", task.len, task.source);
        self.disk.submit(DiskJob::Begin {
            write,
            block,
            base: block.version,
            block_size: task.block_size,
            keep_existing: false,
        });
        let pieces = task.len.div_ceil(u64::from(MAX_CHUNK_BYTES));
        self.copies.insert(
            write,
            Copy {
                leader,
                task,
                requested: 0,
                reads: 0,
                pieces,
                written: 0,
                last_activity: Instant::now(),
            },
        );
        if pieces == 0 {
            self.disk.submit(DiskJob::Commit { write });
        }
        self.pump_copies(node);
    }

    fn copy_answer(node: &mut Node, leader: NodeId, task: &RepairTask, error: String) {
        let done = Message::RepairDone { task: task.task, block: task.block, error };
        if node.send(leader, Priority::Control, done.to_frame(0)).is_err() {
            debug!("meta-server {leader} is down: it will time the repair task out");
        }
    }

    /// Asks the sources for more, as far as the rate and the read window allow.
    fn pump_copies(&mut self, node: &mut Node) {
        let mut writes: Vec<u64> = self.copies.keys().copied().collect();
        writes.sort_unstable();
        let mut failed = Vec::new();
        'copies: for write in writes {
            loop {
                let Some(copy) = self.copies.get_mut(&write) else { continue 'copies };
                if copy.reads >= COPY_READS || copy.requested >= copy.task.len {
                    continue 'copies;
                }
                let len = (copy.task.len - copy.requested).min(u64::from(MAX_CHUNK_BYTES));
                if !self.pacer.take(len, Instant::now()) {
                    if !self.pace_timer_set {
                        node.set_timer(Instant::now() + PACE_EVERY, PACE_TIMER);
                        self.pace_timer_set = true;
                    }
                    break 'copies;
                }
                let id = self.next_copy_read;
                self.next_copy_read += 1;
                let read =
                    ReadBlock { block: copy.task.block, offset: copy.requested, len: len as u32 };
                let frame = Message::ReadBlock(read).to_frame(id);
                if node.send(copy.task.source, Priority::Bulk, frame).is_err() {
                    failed
                        .push((write, format!("source data-server {} is down", copy.task.source)));
                    continue 'copies;
                }
                self.copy_reads.insert(id, (write, copy.requested, len as u32));
                copy.requested += len;
                copy.reads += 1;
            }
        }
        for (write, why) in failed {
            self.fail_copy(node, write, why);
        }
    }

    fn fail_copy(&mut self, node: &mut Node, write: u64, why: String) {
        let Some(copy) = self.copies.remove(&write) else { return };
        warn!(
            "repair copy of {} from data-server {} failed: {why}",
            copy.task.block, copy.task.source
        );
        self.copy_reads.retain(|_, (w, _, _)| *w != write);
        self.disk.submit(DiskJob::Abort { write });
        Self::copy_answer(node, copy.leader, &copy.task, why);
    }

    /// A piece of a copy arrived from its source.
    fn copy_data(&mut self, node: &mut Node, from: NodeId, id: u64, data: BlockData) {
        let Some((write, offset, len)) = self.copy_reads.remove(&id) else { return };
        let Some(copy) = self.copies.get_mut(&write) else { return };
        if copy.task.source != from {
            return self.fail_copy(node, write, format!("a reply came from {from}"));
        }
        copy.reads -= 1;
        copy.last_activity = Instant::now();
        let range = match data {
            BlockData::Failed { message } => {
                return self.fail_copy(node, write, format!("the source refused: {message}"));
            }
            BlockData::Range(range) => range,
        };
        let checked = range.verify().map_err(|e| e.to_string()).and_then(|()| {
            let fits = range.offset == offset
                && range.data.len() == len as usize
                && range.block_len == copy.task.len;
            if fits { Ok(()) } else { Err("the source sent another range or length".into()) }
        });
        if let Err(why) = checked {
            return self.fail_copy(node, write, format!("bad data from the source: {why}"));
        }
        self.disk.submit(DiskJob::Chunk { write, offset, data: range.data });
        self.pump_copies(node);
    }

    /// A disk result for a repair copy; false if `write` is not one.
    fn copy_disk(&mut self, node: &mut Node, done: &DiskDone) -> bool {
        let (DiskDone::Written { write, .. }
        | DiskDone::Committed { write }
        | DiskDone::Failed { write, .. }) = done
        else {
            return false;
        };
        let write = *write;
        let Some(copy) = self.copies.get_mut(&write) else { return false };
        copy.last_activity = Instant::now();
        match done {
            DiskDone::Written { .. } => {
                copy.written += 1;
                if copy.written == copy.pieces {
                    self.disk.submit(DiskJob::Commit { write });
                }
            }
            DiskDone::Committed { .. } => {
                let copy = self.copies.remove(&write).expect("found above");
                let block = copy.task.block;
                info!("repair: {block} copied from data-server {} and committed", copy.task.source);
                let held =
                    self.store.get(block.file.id, block.index).map(|b| (b.descriptor, b.len));
                self.report_change(node, held, None);
                Self::copy_answer(node, copy.leader, &copy.task, String::new());
            }
            DiskDone::Failed { message, .. } => {
                let why = format!("writing here: {message}");
                self.fail_copy(node, write, why);
            }
            _ => {}
        }
        true
    }

    fn send_up(node: &mut Node, upstream: Upstream, upstream_id: u64, ack: WriteAck) {
        let frame = Message::WriteAck(ack).to_frame(upstream_id);
        match upstream {
            Upstream::Client(conn) => node.reply(conn, frame),
            Upstream::Peer(peer) => {
                let _ = node.send(peer, Priority::Control, frame);
            }
        }
    }

    /// Refuses a chunk that opened nothing here.
    fn refuse(&self, node: &mut Node, upstream: Upstream, upstream_id: u64, message: String) {
        warn!("refusing a write: {message}");
        Self::send_up(node, upstream, upstream_id, WriteAck::Failed { at: self.me, message });
    }

    fn handle_chunk(
        &mut self,
        node: &mut Node,
        upstream: Upstream,
        presenter: Option<ClientId>,
        upstream_id: u64,
        chunk: WriteChunk,
    ) {
        let token = &chunk.token;
        // A client presents its own token; a data-server forwards the client's.
        let client = presenter.unwrap_or(token.client);
        if let Err(err) = token.verify_for(&self.secret, TokenOp::Write, client, now_ms(), self.me)
        {
            return self.refuse(node, upstream, upstream_id, err.to_string());
        }
        let end = chunk.offset + chunk.data.len() as u64;
        if end > u64::from(chunk.block_size) || chunk.data.len() > MAX_CHUNK_BYTES as usize {
            return self.refuse(
                node,
                upstream,
                upstream_id,
                format!("chunk {}+{} outside the block", chunk.offset, chunk.data.len()),
            );
        }
        let write = match self.by_upstream.get(&(upstream, upstream_id)) {
            Some(&write) => {
                let inbound = self.writes.get(&write).expect("indexed writes exist");
                if inbound.token != chunk.token {
                    return self.refuse(
                        node,
                        upstream,
                        upstream_id,
                        "a chunk changed its token mid-write".into(),
                    );
                }
                write
            }
            None => {
                if let Some(held) = self.store.get(token.block.file.id, token.block.index)
                    && held.descriptor.version.is_newer_than(token.block.version)
                {
                    let message = format!(
                        "stale lease: this replica of {} is already at version {}",
                        token.block, held.descriptor.version.0
                    );
                    return self.refuse(node, upstream, upstream_id, message);
                }
                let write = self.next_write;
                self.next_write += 1;
                let downstream = token.next_after(self.me).map(|next| (next, write));
                self.writes.insert(
                    write,
                    Inbound {
                        upstream,
                        upstream_id,
                        token: chunk.token.clone(),
                        downstream,
                        local_through: chunk.offset,
                        down_through: chunk.offset,
                        local_committed: false,
                        down_committed: downstream.is_none(),
                        last_seen: false,
                        acked: (chunk.offset, false),
                        last_activity: Instant::now(),
                    },
                );
                self.by_upstream.insert((upstream, upstream_id), write);
                if downstream.is_some() {
                    self.by_downstream.insert(write, write);
                }
                self.disk.submit(DiskJob::Begin {
                    write,
                    block: chunk.token.block,
                    base: chunk.token.base,
                    block_size: chunk.block_size,
                    keep_existing: chunk.keep_existing,
                });
                write
            }
        };
        let inbound = self.writes.get_mut(&write).expect("just found or made");
        inbound.last_activity = Instant::now();
        inbound.last_seen |= chunk.last;
        if inbound.down_committed && inbound.downstream.is_none() {
            inbound.down_through = inbound.down_through.max(end);
        }
        // Downstream first, so the next replica works while this one writes.
        if let Some((next, id)) = inbound.downstream {
            let frame = Message::WriteChunk(chunk.clone()).to_frame(id);
            if self.forwarder.send(node, next, Some(write), frame).is_err() {
                let message = format!("data-server {next} (next in the chain) is down");
                return self.fail(node, write, next, message);
            }
        }
        let last = chunk.last;
        self.disk.submit(DiskJob::Chunk { write, offset: chunk.offset, data: chunk.data });
        if last {
            self.disk.submit(DiskJob::Commit { write });
        }
    }

    /// Sends upstream what is now true of `write`, and forgets it once committed.
    fn progress(&mut self, node: &mut Node, write: u64) {
        let Some(inbound) = self.writes.get_mut(&write) else { return };
        let through = if inbound.downstream.is_some() {
            inbound.local_through.min(inbound.down_through)
        } else {
            inbound.local_through
        };
        let committed = inbound.local_committed && inbound.down_committed;
        if (through, committed) == inbound.acked {
            return;
        }
        inbound.acked = (through, committed);
        let (upstream, upstream_id) = (inbound.upstream, inbound.upstream_id);
        Self::send_up(node, upstream, upstream_id, WriteAck::Written { through, committed });
        if committed {
            self.forget(write);
        }
    }

    /// Fails `write` because of data-server `at` (this one, or one after it in the chain):
    /// tells upstream, drops the local copy, forgets it.
    fn fail(&mut self, node: &mut Node, write: u64, at: NodeId, message: String) {
        let Some(inbound) = self.writes.get(&write) else { return };
        let (upstream, upstream_id) = (inbound.upstream, inbound.upstream_id);
        warn!("write of {} failed at data-server {at}: {message}", inbound.token.block);
        Self::send_up(node, upstream, upstream_id, WriteAck::Failed { at, message });
        self.disk.submit(DiskJob::Abort { write });
        self.forget(write);
    }

    fn forget(&mut self, write: u64) {
        self.forwarder.drop_write(write);
        if let Some(inbound) = self.writes.remove(&write) {
            self.by_upstream.remove(&(inbound.upstream, inbound.upstream_id));
            self.by_downstream.remove(&write);
        }
    }

    fn handle_ack(&mut self, node: &mut Node, from: NodeId, id: u64, ack: WriteAck) {
        let Some(&write) = self.by_downstream.get(&id) else { return };
        let Some(inbound) = self.writes.get_mut(&write) else { return };
        if inbound.downstream.map(|(n, _)| n) != Some(from) {
            return;
        }
        inbound.last_activity = Instant::now();
        match ack {
            WriteAck::Written { through, committed } => {
                inbound.down_through = inbound.down_through.max(through);
                inbound.down_committed |= committed;
                self.progress(node, write);
            }
            WriteAck::Failed { at, message } => self.fail(node, write, at, message),
        }
    }

    fn handle_disk(&mut self, node: &mut Node) {
        for done in self.disk.poll() {
            if self.copy_disk(node, &done) {
                continue;
            }
            match done {
                DiskDone::Written { write, end } => {
                    if let Some(inbound) = self.writes.get_mut(&write) {
                        inbound.local_through = inbound.local_through.max(end);
                    }
                    self.progress(node, write);
                }
                DiskDone::Committed { write } => {
                    if let Some(inbound) = self.writes.get_mut(&write) {
                        inbound.local_committed = true;
                        let block = inbound.token.block;
                        info!("block {block} committed here");
                        let held = self
                            .store
                            .get(block.file.id, block.index)
                            .map(|b| (b.descriptor, b.len));
                        self.report_change(node, held, None);
                    }
                    self.progress(node, write);
                }
                DiskDone::Failed { write, message } => self.fail(node, write, self.me, message),
                DiskDone::Read { to: ReplyTo::Client(conn), frame } => node.reply(conn, frame),
                DiskDone::Read { to: ReplyTo::Peer(peer), frame } => {
                    if self.forwarder.send(node, peer, None, frame).is_err() {
                        debug!("data-server {peer} went down before its read was answered");
                    }
                }
                DiskDone::Deleted { block, removed } => {
                    if removed {
                        info!("deleted replica {block}, as the leader asked");
                        let key = (block.file.id.0, block.index);
                        self.report_change(node, None, Some(key));
                    }
                }
                DiskDone::Damaged { block, reason } => {
                    warn!("replica {block} is damaged ({reason}): set aside, reporting it");
                    let held =
                        self.store.get(block.file.id, block.index).map(|b| (b.descriptor, b.len));
                    let removed = held.is_none().then_some((block.file.id.0, block.index));
                    self.report_change(node, held, removed);
                    let message = Message::ReplicaDamaged { block, reason };
                    let mservers: Vec<NodeId> =
                        node.config().servers_of(Role::MServer).map(|s| s.id).collect();
                    for m in mservers {
                        let _ = node.send(m, Priority::Control, message.to_frame(0));
                    }
                }
            }
        }
    }

    /// Tells meta-server `peer` everything this data-server holds, in pieces.
    fn report_all(&self, node: &mut Node, peer: NodeId) {
        let blocks: Vec<(BlockDescriptor, u64)> =
            self.store.list().into_iter().map(|b| (b.descriptor, b.len)).collect();
        let pieces: Vec<&[(BlockDescriptor, u64)]> =
            if blocks.is_empty() { vec![&[]] } else { blocks.chunks(MAX_REPORT_BLOCKS).collect() };
        let count = pieces.len();
        for (i, piece) in pieces.into_iter().enumerate() {
            let report = DataReport {
                capacity: self.store.capacity(),
                used: self.store.used(),
                full: i == 0,
                last: i + 1 == count,
                blocks: piece.to_vec(),
                removed: Vec::new(),
            };
            if node.send(peer, Priority::Control, Message::DataReport(report).to_frame(0)).is_err()
            {
                return; // the link fell again; it reports when it comes back
            }
        }
        info!("reported {} replicas to meta-server {peer}", blocks.len());
    }

    /// Tells every meta-server about one changed replica.
    fn report_change(
        &self,
        node: &mut Node,
        block: Option<(BlockDescriptor, u64)>,
        removed: Option<(u32, u16)>,
    ) {
        let report = DataReport {
            capacity: self.store.capacity(),
            used: self.store.used(),
            full: false,
            last: true,
            blocks: block.into_iter().collect(),
            removed: removed.into_iter().collect(),
        };
        let mservers: Vec<NodeId> = node.config().servers_of(Role::MServer).map(|s| s.id).collect();
        for m in mservers {
            let _ =
                node.send(m, Priority::Control, Message::DataReport(report.clone()).to_frame(0));
        }
    }

    fn handle_read(&mut self, to: ReplyTo, request: u64, read: ReadBlock, node: &mut Node) {
        if read.len > MAX_CHUNK_BYTES {
            let message = format!("reads are at most {MAX_CHUNK_BYTES} bytes");
            let frame = Message::BlockData(BlockData::Failed { message }).to_frame(request);
            match to {
                ReplyTo::Client(conn) => node.reply(conn, frame),
                ReplyTo::Peer(peer) => {
                    let _ = node.send(peer, Priority::Bulk, frame);
                }
            }
            return;
        }
        self.disk.submit(DiskJob::Read {
            to,
            request,
            block: read.block,
            offset: read.offset,
            len: read.len,
        });
    }

    /// Abandons writes whose upstream went quiet, and those tied to a gone connection or peer.
    fn sweep(&mut self, node: &mut Node, gone: Option<Upstream>, down_peer: Option<NodeId>) {
        let stale: Vec<(u64, bool)> = self
            .writes
            .iter()
            .filter_map(|(&write, w)| {
                let idle = w.last_activity.elapsed() > WRITE_IDLE_TIMEOUT;
                let upstream_gone = gone == Some(w.upstream);
                let downstream_gone =
                    down_peer.is_some() && w.downstream.map(|(n, _)| n) == down_peer;
                (idle || upstream_gone || downstream_gone).then_some((write, downstream_gone))
            })
            .collect();
        let stale_copies: Vec<(u64, String)> = self
            .copies
            .iter()
            .filter_map(|(&write, c)| {
                if down_peer == Some(c.task.source) {
                    Some((write, format!("source data-server {} went down", c.task.source)))
                } else if c.last_activity.elapsed() > WRITE_IDLE_TIMEOUT {
                    Some((write, "no progress for 30 s".into()))
                } else {
                    None
                }
            })
            .collect();
        for (write, why) in stale_copies {
            self.fail_copy(node, write, why);
        }
        for (write, downstream_gone) in stale {
            if downstream_gone {
                let peer = down_peer.unwrap_or(self.me);
                let message = format!("data-server {peer} (next in the chain) went down");
                self.fail(node, write, peer, message);
            } else {
                self.disk.submit(DiskJob::Abort { write });
                self.forget(write);
            }
        }
    }
}

impl Service for DataServer {
    fn start(&mut self, node: &mut Node) {
        node.set_timer(Instant::now() + SWEEP_EVERY, SWEEP_TIMER);
    }

    fn handle_timer(&mut self, node: &mut Node, token: u64) {
        if token == SWEEP_TIMER {
            self.sweep(node, None, None);
            node.set_timer(Instant::now() + SWEEP_EVERY, SWEEP_TIMER);
        } else if token == PACE_TIMER {
            self.pace_timer_set = false;
            self.pump_copies(node);
        } else if token == FORWARD_TIMER {
            for (write, peer) in self.forwarder.pump(node) {
                let message = format!("data-server {peer} (next in the chain) went down");
                self.fail(node, write, peer, message);
            }
        }
    }

    fn handle_wake(&mut self, node: &mut Node) {
        self.handle_disk(node);
    }

    fn handle_event(&mut self, node: &mut Node, event: GroupEvent) {
        match event {
            GroupEvent::PeerUp { peer, role: Role::MServer } => self.report_all(node, peer),
            GroupEvent::PeerUp { .. } => {}
            GroupEvent::PeerDown { peer, .. } => {
                self.sweep(node, Some(Upstream::Peer(peer)), Some(peer))
            }
            GroupEvent::ClientGone { conn, .. } => {
                self.sweep(node, Some(Upstream::Client(conn)), None)
            }
            GroupEvent::Message { from, frame }
                if frame.kind == Kind::WriteChunk.code() || frame.kind == Kind::WriteAck.code() =>
            {
                let from_dserver =
                    node.config().server(from).is_some_and(|s| s.role == Role::DServer);
                match Message::decode(&frame) {
                    Ok(Message::WriteChunk(chunk)) if from_dserver => {
                        self.handle_chunk(
                            node,
                            Upstream::Peer(from),
                            None,
                            frame.request_id,
                            chunk,
                        );
                    }
                    Ok(Message::WriteAck(ack)) if from_dserver => {
                        self.handle_ack(node, from, frame.request_id, ack)
                    }
                    Ok(_) => {
                        warn!("ignoring a data message from {from}, which is not a data-server")
                    }
                    Err(err) => warn!("bad data message from {from}: {err}"),
                }
            }
            GroupEvent::Message { from, frame }
                if frame.kind == Kind::ReadBlock.code() || frame.kind == Kind::BlockData.code() =>
            {
                let from_dserver =
                    node.config().server(from).is_some_and(|s| s.role == Role::DServer);
                match Message::decode(&frame) {
                    Ok(Message::ReadBlock(read)) if from_dserver => {
                        self.handle_read(ReplyTo::Peer(from), frame.request_id, read, node);
                    }
                    Ok(Message::BlockData(data)) if from_dserver => {
                        self.copy_data(node, from, frame.request_id, data);
                    }
                    Ok(_) => warn!("ignoring a block read from {from}, which is not a data-server"),
                    Err(err) => warn!("bad block read message from {from}: {err}"),
                }
            }
            GroupEvent::Message { from, frame }
                if frame.kind == Kind::Repair.code()
                    || frame.kind == Kind::DeleteReplica.code() =>
            {
                let from_mserver =
                    node.config().server(from).is_some_and(|s| s.role == Role::MServer);
                match Message::decode(&frame) {
                    Ok(Message::Repair(task)) if from_mserver => self.start_copy(node, from, task),
                    Ok(Message::DeleteReplica(block)) if from_mserver => {
                        self.disk.submit(DiskJob::Delete { block });
                    }
                    Ok(_) => warn!("ignoring a repair order from {from}, not a meta-server"),
                    Err(err) => warn!("bad repair order from {from}: {err}"),
                }
            }
            GroupEvent::Message { from, frame } if frame.kind == Kind::BlockCommitted.code() => {
                let from_mserver =
                    node.config().server(from).is_some_and(|s| s.role == Role::MServer);
                match Message::decode(&frame) {
                    Ok(Message::BlockCommitted(block)) if from_mserver => {
                        self.disk.submit(DiskJob::Settle { block });
                    }
                    Ok(_) => warn!("ignoring a commit notice from {from}, not a meta-server"),
                    Err(err) => warn!("bad commit notice from {from}: {err}"),
                }
            }
            GroupEvent::Message { from, frame } => {
                warn!("ignoring message kind {} from peer {from}: not served", frame.kind);
            }
            GroupEvent::ClientMessage { conn, client, frame } => {
                let reply = match common_reply(&frame, || node_status(node)) {
                    Handled::Answered(reply) => reply,
                    Handled::ForRole(Message::WriteChunk(chunk)) => {
                        self.handle_chunk(
                            node,
                            Upstream::Client(conn),
                            Some(client),
                            frame.request_id,
                            chunk,
                        );
                        return;
                    }
                    Handled::ForRole(Message::ReadBlock(read)) => {
                        self.handle_read(ReplyTo::Client(conn), frame.request_id, read, node);
                        return;
                    }
                    Handled::ForRole(request) => {
                        warn!(
                            "client {client} sent message kind {}, which a data-server does not serve",
                            request.kind().code()
                        );
                        unsupported(node.role(), &request)
                    }
                };
                node.reply(conn, reply.to_frame(frame.request_id));
            }
        }
    }
}

/// Runs data-server `id` of the config at `config_path` until SIGTERM or SIGINT.
pub fn run(config_path: &Path, id: NodeId) -> Result<(), DataError> {
    let (config, data_dir, mut node) = start_server(Role::DServer, config_path, id)?;
    info!("data directory {}", data_dir.path().display());
    let capacity = config.server(id).and_then(|s| s.capacity).unwrap_or(0);
    let store = Arc::new(BlockStore::open(data_dir.path(), capacity)?);
    let disk = DiskPool::start(Arc::clone(&store), node.notifier());
    disk.start_scrubber(config.heal.scrub_bytes_per_sec);
    let rate = config.heal.repair_bytes_per_sec;
    let mut server = DataServer::new(id, config.secret.clone(), store, disk, rate);
    node.run(&mut server).map_err(|e| StartError::Node(NodeError::Loop(e)))?;
    info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repair_pacer_holds_copies_to_the_configured_rate() {
        let start = Instant::now();
        let mut pacer = Pacer::new(10_000_000); // 10 MB/s
        pacer.last = start;
        let piece = u64::from(MAX_CHUNK_BYTES);
        assert!(!pacer.take(piece, start), "nothing is saved up at the start");
        // Over 10 simulated seconds, taking 1 MiB pieces whenever allowed: about 100 MB.
        let mut taken = 0;
        for ms in 0..10_000u64 {
            while pacer.take(piece, start + Duration::from_millis(ms)) {
                taken += piece;
            }
        }
        assert!((95_000_000..=101_000_000).contains(&taken), "{taken} bytes in 10 s");
        // After a long idle spell, at most the burst (a tenth of a second, or one piece).
        let later = start + Duration::from_secs(3600);
        let mut burst = 0;
        while pacer.take(piece, later) {
            burst += piece;
        }
        assert_eq!(burst, piece, "1 MiB is more than a tenth of a second at 10 MB/s");
    }
}
