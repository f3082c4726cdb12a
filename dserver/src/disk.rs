//! Disk work off the event loop: a small pool of worker threads over the block store.
//!
//! Each write is pinned to one worker (by its number), so its chunks are written in the order
//! they arrived and its [`BlockWrite`] never leaves that thread. Reads go to any worker.
//! Results come back through a channel, and the worker wakes the loop with its [`Notifier`].
//!
//! The scrubber is one more thread: it re-reads every replica from the disk at a configured
//! rate, a pass at most once per configured interval, checks every segment, and sets aside
//! the damaged ones ([`DiskDone::Damaged`]). A read for a client
//! or a peer that finds a damaged segment does the same.
//!
//! It must not know the network: jobs come in, results go out through a channel and the loop's
//! waker.

use std::collections::HashMap;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use meshfs_core::descriptor::{BlockDescriptor, BlockVersion};
use meshfs_core::wire::{BlockData, Message, RangeRead};
use meshfs_group::NodeId;
use meshfs_net::{ConnId, Frame, Notifier};

use crate::block_store::{BlockStore, BlockWrite, StoreError};

/// Where a read's answer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyTo {
    /// A client's connection.
    Client(ConnId),
    /// Another data-server (a repair copy), over the mesh.
    Peer(NodeId),
}

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
    /// Delete the replica of `block` if held at exactly its version.
    Delete {
        /// The block at the version to delete.
        block: BlockDescriptor,
    },
    /// Read for a client or a peer.
    Read {
        /// Who asked.
        to: ReplyTo,
        /// The asker's request id.
        request: u64,
        /// The block.
        block: BlockDescriptor,
        /// First byte.
        offset: u64,
        /// Bytes.
        len: u32,
    },
    /// A job that panics: how the tests check that a worker survives one.
    #[cfg(test)]
    Panic {
        /// The write it fails.
        write: u64,
    },
    /// A job that holds its worker until the test lets go of `gate`.
    #[cfg(test)]
    Hold {
        /// Its worker is this one's.
        write: u64,
        /// Held for writing by the test.
        gate: Arc<std::sync::RwLock<()>>,
    },
}

/// Reads of connections that closed, not yet done, by connection: a worker skips them.
/// Each such read is counted off once, by the worker that skips it or, if it was done
/// already, by the event loop that receives its answer.
type Cancelled = Arc<Mutex<HashMap<ConnId, usize>>>;

fn count_off(cancelled: &Cancelled, conn: ConnId) -> bool {
    let mut map = cancelled.lock().unwrap_or_else(|p| p.into_inner());
    let Some(left) = map.get_mut(&conn) else { return false };
    *left -= 1;
    if *left == 0 {
        map.remove(&conn);
    }
    true
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
        /// Its length.
        len: u64,
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
    /// A replica was deleted (or was not held at that version).
    Deleted {
        /// The block at the version asked.
        block: BlockDescriptor,
        /// Whether it was there and is gone.
        removed: bool,
    },
    /// A replica was found damaged and set aside.
    Damaged {
        /// The block at the damaged version.
        block: BlockDescriptor,
        /// What was wrong.
        reason: String,
    },
    /// A read's answer.
    Read {
        /// Who asked.
        to: ReplyTo,
        /// The answer (a [`Message::BlockData`]), encoded and checksummed.
        frame: Frame,
    },
}

/// The pool.
#[derive(Debug)]
pub struct DiskPool {
    workers: Vec<Sender<DiskJob>>,
    /// The workers' threads, joined when the pool is dropped.
    threads: Vec<thread::JoinHandle<()>>,
    cancelled: Cancelled,
    done: Receiver<DiskDone>,
    done_tx: Sender<DiskDone>,
    notifier: Notifier,
    store: Arc<BlockStore>,
    next_reader: usize,
}

impl DiskPool {
    /// Starts [`DISK_WORKERS`] workers over `store`.
    pub fn start(store: Arc<BlockStore>, notifier: Notifier) -> DiskPool {
        let (done_tx, done) = mpsc::channel();
        let mut pool = DiskPool {
            workers: Vec::new(),
            threads: Vec::new(),
            cancelled: Cancelled::default(),
            done,
            done_tx,
            notifier,
            store,
            next_reader: 0,
        };
        pool.workers = (0..DISK_WORKERS).map(|n| pool.spawn_worker(n)).collect();
        pool
    }

    /// Starts worker `n`; its job queue.
    fn spawn_worker(&mut self, n: usize) -> Sender<DiskJob> {
        let (tx, rx) = mpsc::channel();
        let (store, done_tx, notifier) =
            (Arc::clone(&self.store), self.done_tx.clone(), self.notifier.clone());
        let cancelled = Arc::clone(&self.cancelled);
        let thread = thread::Builder::new()
            .name(format!("disk-{n}"))
            .spawn(move || worker(store, rx, done_tx, notifier, cancelled))
            .expect("a disk worker starts");
        self.threads.push(thread);
        tx
    }

    /// Starts the scrubber: it re-reads every replica at `bytes_per_sec`, a pass at most
    /// every `interval`, until the store is dropped. Nothing is started for a rate of 0.
    /// What it has done so far.
    pub fn start_scrubber(&self, bytes_per_sec: u64, interval: Duration) -> Arc<ScrubStats> {
        let stats = Arc::new(ScrubStats::default());
        if bytes_per_sec == 0 {
            info!("scrubber off (heal.scrub_mbps = 0)");
            return stats;
        }
        let (store, done, notifier) =
            (Arc::downgrade(&self.store), self.done_tx.clone(), self.notifier.clone());
        let counts = Arc::clone(&stats);
        thread::Builder::new()
            .name("scrubber".into())
            .spawn(move || scrub(store, bytes_per_sec, interval, counts, done, notifier))
            .expect("the scrubber starts");
        stats
    }

    /// Queues a job.
    pub fn submit(&mut self, job: DiskJob) {
        let worker = match &job {
            DiskJob::Begin { write, .. }
            | DiskJob::Chunk { write, .. }
            | DiskJob::Commit { write }
            | DiskJob::Abort { write } => (*write % DISK_WORKERS as u64) as usize,
            #[cfg(test)]
            DiskJob::Panic { write } | DiskJob::Hold { write, .. } => {
                (*write % DISK_WORKERS as u64) as usize
            }
            DiskJob::Read { .. } | DiskJob::Settle { .. } | DiskJob::Delete { .. } => {
                self.next_reader = (self.next_reader + 1) % DISK_WORKERS;
                self.next_reader
            }
        };
        // A worker stops only when the pool is dropped, since every job runs behind
        // catch_unwind; should one be gone anyway, it is replaced (its open writes are lost,
        // and fail at their next chunk) and loudly, never left to swallow jobs.
        if let Err(mpsc::SendError(job)) = self.workers[worker].send(job) {
            error!("disk worker {worker} is gone: starting another in its place");
            self.workers[worker] = self.spawn_worker(worker);
            if self.workers[worker].send(job).is_err() {
                panic!("a new disk worker stopped at once: the data-server cannot do disk I/O");
            }
        }
    }

    /// Connection `conn` closed with `reads` of its reads queued or under way: those not
    /// begun yet are skipped. Each of them must then come back through
    /// [`DiskPool::read_answered`] if it was done all the same.
    pub fn cancel_reads(&self, conn: ConnId, reads: usize) {
        if reads > 0 {
            let mut map = self.cancelled.lock().unwrap_or_else(|p| p.into_inner());
            *map.entry(conn).or_default() += reads;
        }
    }

    /// A read's answer for `conn` came back: whether the connection had closed (the read
    /// is counted off its cancelled ones; the answer goes to no one).
    pub fn read_answered(&self, conn: ConnId) -> bool {
        count_off(&self.cancelled, conn)
    }

    /// Reads cancelled and not yet counted off, over all connections.
    pub fn cancelled_reads(&self) -> usize {
        self.cancelled.lock().unwrap_or_else(|p| p.into_inner()).values().sum()
    }

    /// What finished since the last call.
    pub fn poll(&self) -> Vec<DiskDone> {
        self.done.try_iter().collect()
    }
}

/// Whom a job's failure must be told to, known before the job runs.
enum Answer {
    /// The write's owner, with [`DiskDone::Failed`].
    Write(u64),
    /// The reader, with a failed [`BlockData`].
    Read(ReplyTo, u64),
    /// No one (settles and deletes only log).
    Log,
}

impl DiskJob {
    fn answer(&self) -> Answer {
        match self {
            DiskJob::Begin { write, .. }
            | DiskJob::Chunk { write, .. }
            | DiskJob::Commit { write }
            | DiskJob::Abort { write } => Answer::Write(*write),
            DiskJob::Read { to, request, .. } => Answer::Read(*to, *request),
            DiskJob::Settle { .. } | DiskJob::Delete { .. } => Answer::Log,
            #[cfg(test)]
            DiskJob::Panic { write } | DiskJob::Hold { write, .. } => Answer::Write(*write),
        }
    }
}

/// A read's answer, encoded and checksummed here so the event loop only queues the bytes.
fn read_reply(to: ReplyTo, request: u64, reply: BlockData) -> DiskDone {
    let message = Message::BlockData(reply);
    let frame = Frame::checksummed(message.kind().code(), request, message.encode());
    DiskDone::Read { to, frame }
}

/// Dropping the pool ends its workers once they finish the jobs queued, and waits for them:
/// nothing touches the store after its owner let go of it.
impl Drop for DiskPool {
    fn drop(&mut self) {
        self.workers.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn worker(
    store: Arc<BlockStore>,
    jobs: Receiver<DiskJob>,
    done: Sender<DiskDone>,
    notifier: Notifier,
    cancelled: Cancelled,
) {
    let mut open: HashMap<u64, BlockWrite> = HashMap::new();
    while let Ok(job) = jobs.recv() {
        if let DiskJob::Read { to: ReplyTo::Client(conn), .. } = &job
            && count_off(&cancelled, *conn)
        {
            continue;
        }
        let answer = job.answer();
        // A job that panics (a bug: every number from the wire is checked before it gets
        // here) fails alone, with an error to whoever waits for it; the worker goes on.
        let results = match panic::catch_unwind(AssertUnwindSafe(|| run(&store, &mut open, job))) {
            Ok(results) => results,
            Err(panic) => {
                let what = meshfs_core::error::panic_text(&*panic);
                let message = format!("internal error in the disk worker: {what}");
                error!("{message}; the job failed, the worker goes on");
                match answer {
                    Answer::Write(write) => {
                        open.remove(&write);
                        vec![DiskDone::Failed { write, message }]
                    }
                    Answer::Read(to, request) => {
                        vec![read_reply(to, request, BlockData::Failed { message })]
                    }
                    Answer::Log => Vec::new(),
                }
            }
        };
        for result in results {
            if done.send(result).is_err() || notifier.notify().is_err() {
                return;
            }
        }
    }
}

/// Does one job; what to report.
fn run(
    store: &Arc<BlockStore>,
    open: &mut HashMap<u64, BlockWrite>,
    job: DiskJob,
) -> Vec<DiskDone> {
    let mut damaged = None;
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
                // write_at checked that the chunk ends inside the block.
                Ok(()) => {
                    let len = data.len() as u64;
                    Some(DiskDone::Written { write, end: offset + len, len })
                }
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
        DiskJob::Delete { block } => match store.remove_version(block) {
            Ok(removed) => Some(DiskDone::Deleted { block, removed }),
            Err(err) => {
                warn!("deleting {block}: {err}");
                None
            }
        },
        DiskJob::Read { to, request, block, offset, len } => {
            let read = store.read(block, offset, u64::from(len));
            if let Err(err) = &read {
                damaged = set_aside_if_damaged(store, block, err);
            }
            let reply = match read {
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
            Some(read_reply(to, request, reply))
        }
        #[cfg(test)]
        DiskJob::Panic { write } => panic!("job of write {write} panicked on purpose"),
        #[cfg(test)]
        DiskJob::Hold { gate, .. } => {
            drop(gate.read());
            None
        }
    };
    result.into_iter().chain(damaged).collect()
}

/// If `err` says the replica of `block` is damaged, sets it aside and says so.
fn set_aside_if_damaged(
    store: &BlockStore,
    block: BlockDescriptor,
    err: &StoreError,
) -> Option<DiskDone> {
    if !matches!(err, StoreError::Corrupt { .. } | StoreError::BadFile { .. }) {
        return None;
    }
    match store.set_aside(block) {
        Ok(true) => Some(DiskDone::Damaged { block, reason: err.to_string() }),
        Ok(false) => None,
        Err(aside) => {
            warn!("setting aside damaged {block}: {aside}");
            None
        }
    }
}

/// Bytes the scrubber reads at once.
const SCRUB_PIECE: u64 = 1024 * 1024;

/// What the scrubber has done, for the status and the tests.
#[derive(Debug, Default)]
pub struct ScrubStats {
    /// Full passes finished.
    pub passes: AtomicU64,
    /// Bytes read and checked.
    pub bytes: AtomicU64,
}

/// The scrubber's loop: passes over every replica, each read from the disk (not the page
/// cache) and checked segment by segment, paced to `bytes_per_sec`; a pass starts at most
/// once per `interval`, and between passes it rests. Ends when the store is gone.
fn scrub(
    store: Weak<BlockStore>,
    bytes_per_sec: u64,
    interval: Duration,
    stats: Arc<ScrubStats>,
    done: Sender<DiskDone>,
    notifier: Notifier,
) {
    loop {
        let Some(blocks) = store.upgrade().map(|s| s.list()) else { return };
        let started = Instant::now();
        let (mut bytes, mut bad) = (0u64, 0u64);
        for info in &blocks {
            let mut offset = 0;
            while offset < info.len {
                let len = (info.len - offset).min(SCRUB_PIECE);
                let Some(strong) = store.upgrade() else { return };
                let read = strong.read_cold(info.descriptor, offset, len);
                let damaged = read
                    .as_ref()
                    .err()
                    .and_then(|err| set_aside_if_damaged(&strong, info.descriptor, err));
                drop(strong);
                bytes += len;
                stats.bytes.fetch_add(len, Ordering::Relaxed);
                if let Some(damaged) = damaged {
                    if let DiskDone::Damaged { reason, .. } = &damaged {
                        warn!("scrubber: {reason}; set aside, to be repaired from a good copy");
                    }
                    bad += 1;
                    if done.send(damaged).is_err() || notifier.notify().is_err() {
                        return;
                    }
                }
                if read.is_err() {
                    break; // damaged, or replaced or deleted meanwhile
                }
                offset += len;
                // Paced over the pass: a slow read is made up for, never with a burst.
                let due = Duration::from_secs_f64(bytes as f64 / bytes_per_sec as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    thread::sleep(wait);
                }
            }
        }
        let pass = stats.passes.fetch_add(1, Ordering::Relaxed) + 1;
        debug!("scrub pass {pass}: {} replicas, {bytes} bytes, {bad} damaged", blocks.len());
        // Rest out the interval, looking every second whether the store is still there.
        let next = started + interval;
        while let Some(rest) = next.checked_duration_since(Instant::now()) {
            if store.strong_count() == 0 {
                return;
            }
            thread::sleep(rest.min(Duration::from_secs(1)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshfs_core::descriptor::{FileDescriptor, FileId};
    use meshfs_net::{EventLoop, LoopConfig};
    use meshfs_test_kit::TempDir;

    /// Waits (bounded) for the pool's next results.
    fn next(pool: &DiskPool) -> Vec<DiskDone> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let done = pool.poll();
            if !done.is_empty() || Instant::now() > deadline {
                return done;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_job_that_panics_fails_alone_and_its_worker_goes_on() {
        let dir = TempDir::new("disk-panic");
        let store = Arc::new(BlockStore::open(dir.path(), 1 << 30).unwrap());
        let event_loop = EventLoop::new(LoopConfig::default()).unwrap();
        let mut pool = DiskPool::start(Arc::clone(&store), event_loop.notifier());
        let block = BlockDescriptor {
            file: FileDescriptor { id: FileId(3), version: 1 },
            index: 0,
            version: BlockVersion(1),
        };
        // Every worker gets a panicking job; each answers it with an error.
        for write in 0..DISK_WORKERS as u64 {
            pool.submit(DiskJob::Panic { write });
            match &next(&pool)[..] {
                [DiskDone::Failed { write: failed, message }] => {
                    assert_eq!(*failed, write);
                    assert!(message.contains("internal error"), "{message}");
                }
                other => panic!("{other:?}"),
            }
        }
        // And every worker still writes: a write on each, begun, written and committed.
        for write in 0..DISK_WORKERS as u64 {
            let block = BlockDescriptor { index: write as u16, ..block };
            let base = BlockVersion::UNWRITTEN;
            pool.submit(DiskJob::Begin {
                write,
                block,
                base,
                block_size: 4096,
                keep_existing: false,
            });
            pool.submit(DiskJob::Chunk { write, offset: 0, data: vec![1; 100] });
            pool.submit(DiskJob::Commit { write });
            let mut got = Vec::new();
            while got.len() < 2 {
                let done = next(&pool);
                assert!(!done.is_empty(), "worker {write} answers");
                got.extend(done);
            }
            assert!(matches!(got[0], DiskDone::Written { end: 100, .. }), "{got:?}");
            assert!(matches!(got[1], DiskDone::Committed { .. }), "{got:?}");
        }
        assert_eq!(store.list().len(), DISK_WORKERS);
    }

    #[test]
    fn reads_of_a_closed_connection_not_yet_begun_are_skipped_and_all_counted_off() {
        let dir = TempDir::new("disk-cancel");
        let store = Arc::new(BlockStore::open(dir.path(), 1 << 30).unwrap());
        let block = BlockDescriptor {
            file: FileDescriptor { id: FileId(5), version: 1 },
            index: 0,
            version: BlockVersion(2),
        };
        let mut w = store.begin_write(block, BlockVersion::UNWRITTEN, 1 << 20, false).unwrap();
        w.write_at(0, &[7; 1 << 20]).unwrap();
        w.commit().unwrap();
        let event_loop = EventLoop::new(LoopConfig::default()).unwrap();
        let mut pool = DiskPool::start(Arc::clone(&store), event_loop.notifier());
        // Every worker held; 40 reads of a connection queue behind them; it closes.
        let gate = Arc::new(std::sync::RwLock::new(()));
        let held = gate.write().unwrap();
        for write in 0..DISK_WORKERS as u64 {
            pool.submit(DiskJob::Hold { write, gate: Arc::clone(&gate) });
        }
        let (gone, other) = (ConnId::from_raw(1), ConnId::from_raw(2));
        let read = |to, request| DiskJob::Read { to, request, block, offset: 0, len: 1 << 20 };
        for request in 0..40 {
            pool.submit(read(ReplyTo::Client(gone), request));
        }
        pool.cancel_reads(gone, 40);
        // Then one read of another connection on each worker, behind the 40.
        for request in 0..DISK_WORKERS as u64 {
            pool.submit(read(ReplyTo::Client(other), request));
        }
        drop(held);
        let mut answered = 0;
        while answered < DISK_WORKERS {
            let done = next(&pool);
            assert!(!done.is_empty(), "the open connection's reads are answered");
            for done in done {
                match done {
                    DiskDone::Read { to: ReplyTo::Client(conn), .. } if conn == other => {
                        answered += 1
                    }
                    other => panic!("only the open connection's reads are done: {other:?}"),
                }
            }
        }
        assert_eq!(pool.cancelled_reads(), 0, "every cancelled read was counted off");
        // A read done before its connection closed is counted off by its answer.
        pool.cancel_reads(gone, 1);
        assert!(pool.read_answered(gone));
        assert!(!pool.read_answered(gone), "once");
        assert_eq!(pool.cancelled_reads(), 0);
    }

    /// Three 2-byte replicas once kept a scrubber busy for good (some 42,000 preads a
    /// second): a pass now reads them once, then rests out its interval.
    #[test]
    fn the_scrubber_passes_once_per_interval_and_rests_between() {
        let dir = TempDir::new("scrub-rest");
        let store = Arc::new(BlockStore::open(dir.path(), 1 << 30).unwrap());
        for file in 1..=3 {
            let block = BlockDescriptor {
                file: FileDescriptor { id: FileId(file), version: 1 },
                index: 0,
                version: BlockVersion(1),
            };
            let mut w = store.begin_write(block, BlockVersion::UNWRITTEN, 4096, false).unwrap();
            w.write_at(0, b"hi").unwrap();
            w.commit().unwrap();
        }
        let event_loop = EventLoop::new(LoopConfig::default()).unwrap();
        let pool = DiskPool::start(Arc::clone(&store), event_loop.notifier());
        let hourly = pool.start_scrubber(8 << 20, Duration::from_secs(3600));
        meshfs_test_kit::wait_until("a first pass", || hourly.passes.load(Ordering::Relaxed) == 1);
        // A bounded look: nothing more happens in the next second.
        thread::sleep(Duration::from_secs(1));
        assert_eq!(hourly.passes.load(Ordering::Relaxed), 1, "one pass an hour");
        assert_eq!(hourly.bytes.load(Ordering::Relaxed), 6, "each replica read once");
        // With a one-second interval, passes follow each other a second apart.
        let quick = pool.start_scrubber(8 << 20, Duration::from_secs(1));
        meshfs_test_kit::wait_until("a first pass", || quick.passes.load(Ordering::Relaxed) == 1);
        let first = Instant::now();
        meshfs_test_kit::wait_until("a second pass", || quick.passes.load(Ordering::Relaxed) == 2);
        assert!(first.elapsed() >= Duration::from_millis(900), "{:?}", first.elapsed());
        assert_eq!(quick.bytes.load(Ordering::Relaxed), 12);
    }
}
