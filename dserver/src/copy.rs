//! Repair copies, on the leader's word: read a block from another data-server over the mesh,
//! paced to the configured rate and a few reads at a time, check every segment against the
//! source's stored checksums, write and commit it like any write, then answer the leader.
//!
//! It must not decide what to repair: the leader does.

use std::time::{Duration, Instant};

use log::{debug, info, warn};
use meshfs_core::wire::{BlockData, MAX_CHUNK_BYTES, Message, ReadBlock, RepairTask};
use meshfs_group::driver::Node;
use meshfs_group::{NodeId, Now};
use meshfs_net::Priority;

use crate::disk::{DiskDone, DiskJob};
use crate::{DataServer, PACE_TIMER};

/// While a repair copy waits for its rate allowance, it looks again this often.
const PACE_EVERY: Duration = Duration::from_millis(10);
/// Reads one repair copy keeps outstanding at its source.
const COPY_READS: usize = 4;

/// A repair copy coming into this data-server.
#[derive(Debug)]
pub(crate) struct Copy {
    /// The leader that asked, and what.
    pub(crate) leader: NodeId,
    pub(crate) task: RepairTask,
    /// Bytes asked of the source so far.
    pub(crate) requested: u64,
    /// Reads asked and not yet answered.
    pub(crate) reads: usize,
    /// Pieces to write in all, and written so far.
    pub(crate) pieces: u64,
    pub(crate) written: u64,
    pub(crate) last_activity: Instant,
}

impl DataServer {
    /// Starts the copy the leader asked for.
    pub(crate) fn start_copy(
        &mut self,
        node: &mut Node,
        now: Now,
        leader: NodeId,
        task: RepairTask,
    ) {
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
                last_activity: now.mono,
            },
        );
        if pieces == 0 {
            self.disk.submit(DiskJob::Commit { write });
        }
        self.pump_copies(node, now);
    }

    pub(crate) fn copy_answer(node: &mut Node, leader: NodeId, task: &RepairTask, error: String) {
        let done = Message::RepairDone { task: task.task, block: task.block, error };
        if node.send(leader, Priority::Control, done.to_frame(0)).is_err() {
            debug!("meta-server {leader} is down: it will time the repair task out");
        }
    }

    /// Asks the sources for more, as far as the rate and the read window allow.
    pub(crate) fn pump_copies(&mut self, node: &mut Node, now: Now) {
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
                if !self.pacer.take(len, now.mono) {
                    if !self.pace_timer_set {
                        node.set_timer(now.mono + PACE_EVERY, PACE_TIMER);
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

    pub(crate) fn fail_copy(&mut self, node: &mut Node, write: u64, why: String) {
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
    pub(crate) fn copy_data(
        &mut self,
        node: &mut Node,
        now: Now,
        from: NodeId,
        id: u64,
        data: BlockData,
    ) {
        let Some((write, offset, len)) = self.copy_reads.remove(&id) else { return };
        let Some(copy) = self.copies.get_mut(&write) else { return };
        if copy.task.source != from {
            return self.fail_copy(node, write, format!("a reply came from {from}"));
        }
        copy.reads -= 1;
        copy.last_activity = now.mono;
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
        self.pump_copies(node, now);
    }

    /// A disk result for a repair copy; false if `write` is not one.
    pub(crate) fn copy_disk(&mut self, node: &mut Node, now: Now, done: &DiskDone) -> bool {
        let (DiskDone::Written { write, .. }
        | DiskDone::Committed { write }
        | DiskDone::Failed { write, .. }) = done
        else {
            return false;
        };
        let write = *write;
        let Some(copy) = self.copies.get_mut(&write) else { return false };
        copy.last_activity = now.mono;
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
}
