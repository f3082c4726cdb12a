//! What a [`Replica`](crate::consensus::Replica) needs from its log and from whoever makes
//! its writes durable, as two traits, so that the same replica runs on disk with worker
//! threads (the server) and in memory under a simulated scheduler (the simulation tests).
//!
//! - [`RaftLog`]: raft-rs's `Storage` plus the writes the replica makes. Writes land at once
//!   (in the page cache, or in memory); they are durable only after a sync.
//! - [`Persister`]: makes everything written so far durable and writes snapshot files, then
//!   reports [`Completion`]s. [`ThreadPersister`] does it on two worker threads and wakes the
//!   event loop; one fsync covers every sync request queued while the last one ran.

use std::fs::File;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;

use meshfs_net::Notifier;
use raft::eraftpb::{Entry, HardState, Snapshot};

use crate::log_store::{LogError, LogStore, write_snapshot_file};

/// The log a replica runs on.
pub trait RaftLog: raft::Storage {
    /// Appends entries, replacing any from the first one's index on.
    fn append(&mut self, entries: &[Entry]) -> Result<(), LogError>;
    /// Records a new hard state.
    fn set_hard_state(&mut self, hard_state: &HardState) -> Result<(), LogError>;
    /// Installs a leader's snapshot (durably, before returning); the log restarts after it.
    fn apply_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), LogError>;
    /// A snapshot of the state machine at `index`, to be written by the persister; `None` if
    /// not past the current snapshot.
    fn prepare_snapshot(&self, index: u64, data: Vec<u8>) -> Result<Option<Snapshot>, LogError>;
    /// A snapshot at `index` is durable: drop the log up to it.
    fn snapshot_written(&mut self, index: u64, term: u64) -> Result<(), LogError>;
    /// The latest durable snapshot's index (0 if none).
    fn snapshot_index(&self) -> u64;
    /// The latest durable snapshot, to restore the state machine from at start-up.
    fn latest_snapshot(&self) -> Result<Option<Snapshot>, LogError>;
}

/// What a persister finished.
#[derive(Debug)]
pub enum Completion {
    /// Every write made before the sync request `number` is durable.
    Synced(u64),
    /// A sync failed: nothing written since the last success may be acknowledged.
    SyncFailed(String),
    /// A snapshot file was written: (index, term), or why not.
    SnapshotWritten(Result<(u64, u64), String>),
}

/// Makes a log's writes durable, asynchronously.
pub trait Persister<L> {
    /// Everything written to `log` so far must become durable; report [`Completion::Synced`]
    /// with `number` when it is.
    fn sync(&mut self, log: &mut L, number: u64) -> Result<(), String>;
    /// Write `snapshot` durably; report [`Completion::SnapshotWritten`].
    fn write_snapshot(&mut self, log: &mut L, snapshot: Snapshot) -> Result<(), String>;
    /// What finished since the last call.
    fn poll(&mut self, log: &mut L) -> Vec<Completion>;
    /// Waits for the snapshot write in flight (before installing a leader's snapshot).
    fn wait_snapshot(&mut self, log: &mut L) -> Option<Completion>;
}

impl RaftLog for LogStore {
    fn append(&mut self, entries: &[Entry]) -> Result<(), LogError> {
        LogStore::append(self, entries)
    }

    fn set_hard_state(&mut self, hard_state: &HardState) -> Result<(), LogError> {
        LogStore::set_hard_state(self, hard_state)
    }

    fn apply_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), LogError> {
        LogStore::apply_snapshot(self, snapshot)
    }

    fn prepare_snapshot(&self, index: u64, data: Vec<u8>) -> Result<Option<Snapshot>, LogError> {
        LogStore::prepare_snapshot(self, index, data)
    }

    fn snapshot_written(&mut self, index: u64, term: u64) -> Result<(), LogError> {
        LogStore::snapshot_written(self, index, term)
    }

    fn snapshot_index(&self) -> u64 {
        LogStore::snapshot_index(self)
    }

    fn latest_snapshot(&self) -> Result<Option<Snapshot>, LogError> {
        self.snapshot_data()
    }
}

struct SyncRequest {
    number: u64,
    files: Vec<File>,
}

/// The server's persister: an fsync thread (group commit) and a snapshot-writing thread;
/// both wake the event loop through `notifier` when they finish something.
#[derive(Debug)]
pub struct ThreadPersister {
    sync_tx: Sender<SyncRequest>,
    synced_rx: Receiver<Result<u64, String>>,
    snapshot_tx: Sender<Snapshot>,
    snapshot_rx: Receiver<SnapshotResult>,
}

/// What writing a snapshot file came to: (index, term), or why not.
type SnapshotResult = Result<(u64, u64), String>;

impl std::fmt::Debug for SyncRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncRequest").field("number", &self.number).finish_non_exhaustive()
    }
}

impl ThreadPersister {
    /// Starts the two workers for the log in `dir`.
    pub fn start(dir: PathBuf, notifier: Notifier) -> ThreadPersister {
        let (snapshot_tx, snapshot_rx) = spawn_snapshot_worker(dir, notifier.clone());
        let (sync_tx, synced_rx) = spawn_fsync_worker(notifier);
        ThreadPersister { sync_tx, synced_rx, snapshot_tx, snapshot_rx }
    }
}

impl Persister<LogStore> for ThreadPersister {
    fn sync(&mut self, log: &mut LogStore, number: u64) -> Result<(), String> {
        let files = log.sync_handles().map_err(|e| e.to_string())?;
        self.sync_tx
            .send(SyncRequest { number, files })
            .map_err(|_| "the fsync worker is gone".to_string())
    }

    fn write_snapshot(&mut self, _log: &mut LogStore, snapshot: Snapshot) -> Result<(), String> {
        self.snapshot_tx.send(snapshot).map_err(|_| "the snapshot worker is gone".to_string())
    }

    fn poll(&mut self, _log: &mut LogStore) -> Vec<Completion> {
        let mut done: Vec<Completion> =
            self.snapshot_rx.try_iter().map(Completion::SnapshotWritten).collect();
        done.extend(self.synced_rx.try_iter().map(|r| match r {
            Ok(number) => Completion::Synced(number),
            Err(err) => Completion::SyncFailed(err),
        }));
        done
    }

    fn wait_snapshot(&mut self, _log: &mut LogStore) -> Option<Completion> {
        self.snapshot_rx.recv().ok().map(Completion::SnapshotWritten)
    }
}

/// The snapshot worker: writes each snapshot file (temporary file, fsync, rename, directory
/// fsync) and reports (index, term) or the error, waking the loop.
fn spawn_snapshot_worker(
    dir: PathBuf,
    notifier: Notifier,
) -> (Sender<Snapshot>, Receiver<SnapshotResult>) {
    let (tx, rx) = mpsc::channel::<Snapshot>();
    let (done_tx, done_rx) = mpsc::channel();
    thread::Builder::new()
        .name("raft-snapshot".into())
        .spawn(move || {
            while let Ok(snapshot) = rx.recv() {
                let meta = snapshot.get_metadata();
                let result = write_snapshot_file(&dir, &snapshot)
                    .map(|()| (meta.index, meta.term))
                    .map_err(|e| e.to_string());
                if done_tx.send(result).is_err() || notifier.notify().is_err() {
                    return;
                }
            }
        })
        .expect("the snapshot worker thread starts");
    (tx, done_rx)
}

/// The fsync worker: takes requests, fsyncs each file once per batch, reports the highest
/// request number done, and wakes the loop.
fn spawn_fsync_worker(notifier: Notifier) -> (Sender<SyncRequest>, Receiver<Result<u64, String>>) {
    let (tx, rx) = mpsc::channel::<SyncRequest>();
    let (done_tx, done_rx) = mpsc::channel();
    thread::Builder::new()
        .name("raft-fsync".into())
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut batch = vec![first];
                batch.extend(rx.try_iter());
                let number = batch.last().map_or(0, |r| r.number);
                // Closed segments of every request, and the current segment once: all later
                // handles of the current segment name the same file.
                let mut result = Ok(number);
                let count = batch.len();
                for (i, request) in batch.into_iter().enumerate() {
                    let last_request = i + 1 == count;
                    let n = request.files.len();
                    for (j, file) in request.files.into_iter().enumerate() {
                        let current = j + 1 == n;
                        if (current && !last_request) || result.is_err() {
                            continue;
                        }
                        if let Err(err) = file.sync_data() {
                            result = Err(err.to_string());
                        }
                    }
                }
                if done_tx.send(result).is_err() || notifier.notify().is_err() {
                    return;
                }
            }
        })
        .expect("the fsync worker thread starts");
    (tx, done_rx)
}
