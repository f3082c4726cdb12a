//! Disk work off the event loop: a small pool of worker threads over the block store.
//!
//! Each write is pinned to one worker (by its number), so its chunks are written in the order
//! they arrived and its [`BlockWrite`] never leaves that thread. Reads go to any worker.
//! Results come back through a channel, and the worker wakes the loop with its [`Notifier`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;

use log::{debug, warn};
use meshfs_core::descriptor::{BlockDescriptor, BlockVersion};
use meshfs_core::wire::{BlockData, Message, RangeRead};
use meshfs_net::{ConnId, Frame, Notifier};

use crate::block_store::{BlockStore, BlockWrite};

/// Worker threads per data-server.
pub const DISK_WORKERS: usize = 4;

/// Work for a disk worker.
#[derive(Debug)]
pub enum DiskJob {
    /// Open write `write` of `block`.
    Begin {
        /// The write's number (this data-server's).
        write: u64,
        /// The block at the lease's version.
        block: BlockDescriptor,
        /// The committed version the write starts from.
        base: BlockVersion,
        /// The block size.
        block_size: u32,
        /// Start from the replica's current bytes.
        keep_existing: bool,
    },
    /// Write `data` at `offset` of write `write`.
    Chunk {
        /// The write.
        write: u64,
        /// Where in the block.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Commit (fsync, rename) write `write`.
    Commit {
        /// The write.
        write: u64,
    },
    /// Drop write `write` (its temporary file goes with it).
    Abort {
        /// The write.
        write: u64,
    },
    /// The meta-servers committed `block` at its version: drop the copy it started from.
    Settle {
        /// The block at its committed version.
        block: BlockDescriptor,
    },
    /// Read for a client.
    Read {
        /// The client's connection.
        conn: ConnId,
        /// The client's request id.
        request: u64,
        /// The block.
        block: BlockDescriptor,
        /// First byte.
        offset: u64,
        /// Bytes.
        len: u32,
    },
}

/// What a disk worker finished.
#[derive(Debug)]
pub enum DiskDone {
    /// The chunk of write `write` ending at `end` is written (not yet durable).
    Written {
        /// The write.
        write: u64,
        /// Where the chunk ended.
        end: u64,
    },
    /// Write `write` is durable.
    Committed {
        /// The write.
        write: u64,
    },
    /// Write `write` failed; it is gone.
    Failed {
        /// The write.
        write: u64,
        /// Why.
        message: String,
    },
    /// A read's answer.
    Read {
        /// The client's connection.
        conn: ConnId,
        /// The answer (a [`Message::BlockData`]), encoded and checksummed.
        frame: Frame,
    },
}

/// The pool.
#[derive(Debug)]
pub struct DiskPool {
    workers: Vec<Sender<DiskJob>>,
    done: Receiver<DiskDone>,
    next_reader: usize,
}

impl DiskPool {
    /// Starts [`DISK_WORKERS`] workers over `store`.
    pub fn start(store: Arc<BlockStore>, notifier: Notifier) -> DiskPool {
        let (done_tx, done) = mpsc::channel();
        let workers = (0..DISK_WORKERS)
            .map(|n| {
                let (tx, rx) = mpsc::channel();
                let (store, done_tx, notifier) =
                    (Arc::clone(&store), done_tx.clone(), notifier.clone());
                thread::Builder::new()
                    .name(format!("disk-{n}"))
                    .spawn(move || worker(store, rx, done_tx, notifier))
                    .expect("a disk worker starts");
                tx
            })
            .collect();
        DiskPool { workers, done, next_reader: 0 }
    }

    /// Queues a job.
    pub fn submit(&mut self, job: DiskJob) {
        let worker = match &job {
            DiskJob::Begin { write, .. }
            | DiskJob::Chunk { write, .. }
            | DiskJob::Commit { write }
            | DiskJob::Abort { write } => (*write % DISK_WORKERS as u64) as usize,
            DiskJob::Read { .. } | DiskJob::Settle { .. } => {
                self.next_reader = (self.next_reader + 1) % DISK_WORKERS;
                self.next_reader
            }
        };
        // A worker only stops when the pool is dropped.
        let _ = self.workers[worker].send(job);
    }

    /// What finished since the last call.
    pub fn poll(&self) -> Vec<DiskDone> {
        self.done.try_iter().collect()
    }
}

fn worker(
    store: Arc<BlockStore>,
    jobs: Receiver<DiskJob>,
    done: Sender<DiskDone>,
    notifier: Notifier,
) {
    let mut open: HashMap<u64, BlockWrite> = HashMap::new();
    while let Ok(job) = jobs.recv() {
        let result = match job {
            DiskJob::Begin { write, block, base, block_size, keep_existing } => {
                match store.begin_write(block, base, block_size, keep_existing) {
                    Ok(w) => {
                        open.insert(write, w);
                        None
                    }
                    Err(err) => Some(DiskDone::Failed { write, message: err.to_string() }),
                }
            }
            DiskJob::Chunk { write, offset, data } => match open.get_mut(&write) {
                // A write that failed to open already reported it.
                None => None,
                Some(w) => match w.write_at(offset, &data) {
                    Ok(()) => Some(DiskDone::Written { write, end: offset + data.len() as u64 }),
                    Err(err) => {
                        open.remove(&write);
                        Some(DiskDone::Failed { write, message: err.to_string() })
                    }
                },
            },
            DiskJob::Commit { write } => match open.remove(&write) {
                None => None,
                Some(w) => match w.commit() {
                    Ok(_) => Some(DiskDone::Committed { write }),
                    Err(err) => Some(DiskDone::Failed { write, message: err.to_string() }),
                },
            },
            DiskJob::Abort { write } => {
                open.remove(&write);
                None
            }
            DiskJob::Settle { block } => {
                match store.committed(block) {
                    Ok(true) => debug!("{block} committed: dropped the copy it was written from"),
                    Ok(false) => {}
                    Err(err) => warn!("dropping the older copy of {block}: {err}"),
                }
                None
            }
            DiskJob::Read { conn, request, block, offset, len } => {
                let reply = match store.read(block, offset, u64::from(len)) {
                    // Only the bytes asked for go back, with what checks their segments.
                    Ok(read) => BlockData::Range(RangeRead::from_segments(
                        read.first_segment,
                        read.block_len,
                        read.crcs,
                        read.data,
                        offset,
                        u64::from(len),
                    )),
                    Err(err) => BlockData::Failed { message: err.to_string() },
                };
                // Encoded and checksummed here, so the event loop only queues the bytes.
                let message = Message::BlockData(reply);
                let frame = Frame::checksummed(message.kind(), request, message.encode());
                Some(DiskDone::Read { conn, frame })
            }
        };
        if let Some(result) = result
            && (done.send(result).is_err() || notifier.notify().is_err())
        {
            return;
        }
    }
}
