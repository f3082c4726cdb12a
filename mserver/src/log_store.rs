//! The meta-server's durable Raft log: entries, hard state and snapshots on disk.
//!
//! Layout of `<data_dir>/raft/`:
//! - `seg-<first index, 20 digits>.log`: append-only segments of records. A record is
//!   `u32 length, u32 CRC-32 of (kind + payload), u8 kind, payload` (big-endian). Kind 1 is
//!   an entry (`eraftpb::Entry`, protobuf), kind 2 a hard state (`u64 term, u64 vote, u64
//!   commit`). A new segment starts when the current one passes [`SEGMENT_BYTES`].
//! - `snapshot`: the latest snapshot, written to `snapshot.tmp`, fsynced, renamed, and the
//!   directory fsynced. Layout: magic `MRSN`, `u64 index, u64 term, u32 voter count, voters,
//!   u64 data length, data, u32 CRC-32` of all before it.
//!
//! Replay rebuilds memory: an entry record at index `i` replaces every entry from `i` on
//! (that is how Raft truncates a conflicting suffix in an append-only file); the last hard
//! state wins. Damage is judged by where it is:
//! - a bad record in the last segment with no valid record after it (a write cut by a
//!   crash, and the zeros a file system may leave after one) is a torn tail: it is cut off
//!   and logged;
//! - anything else (a bad record with a valid one after it, whatever its length field
//!   says; a gap in indexes; a bad snapshot) is
//!   corruption, and [`LogStore::open`] refuses with a message naming the file and offset,
//!   rather than serve bad metadata.
//!
//! Writes go to the file (page cache) on the event loop; fsync happens elsewhere on a
//! duplicate of the file handle ([`LogStore::sync_handles`]), so one fsync covers every write
//! made before it (group commit).

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use log::{info, warn};
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

/// Log segments and snapshots are the cluster's data: readable by the server's user only.
const PRIVATE: u32 = 0o600;

/// A segment past this size is closed and a new one started.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Largest record accepted on replay: anything longer is damage, not data.
pub const MAX_RECORD_BYTES: u32 = 64 * 1024 * 1024;

const RECORD_HEADER: usize = 9;
const KIND_ENTRY: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
const SNAPSHOT_MAGIC: &[u8; 4] = b"MRSN";

/// Why the log could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The log is damaged before its tail: refusing to serve it.
    #[error(
        "{path}: corrupt at byte {offset}: {reason}; the meta-server will not serve damaged metadata (restore this server's data directory from a peer)"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where.
        offset: u64,
        /// What was found.
        reason: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LogError + '_ {
    move |source| LogError::Io { path: path.to_path_buf(), source }
}

/// The durable Raft log of one meta-server.
pub struct LogStore {
    dir: PathBuf,
    hard_state: HardState,
    conf_state: ConfState,
    /// Index and term of the latest snapshot (0, 0 if none).
    snapshot_index: u64,
    snapshot_term: u64,
    /// Entries after the snapshot, in index order.
    entries: VecDeque<Entry>,
    /// Segments on disk: (first index, path), oldest first; the last is being written.
    segments: Vec<(u64, PathBuf)>,
    current: File,
    current_bytes: u64,
    /// A segment past this size is closed ([`SEGMENT_BYTES`] unless a test says otherwise).
    segment_bytes: u64,
    /// Segments written since the last `sync_handles` (the current one always is).
    unsynced_closed: Vec<File>,
    /// The durable steps of an install, in order, for the tests to check.
    #[cfg(test)]
    steps: Vec<String>,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("dir", &self.dir)
            .field("snapshot_index", &self.snapshot_index)
            .field("entries", &self.entries.len())
            .field("segments", &self.segments.len())
            .finish_non_exhaustive()
    }
}

fn segment_name(first_index: u64) -> String {
    format!("seg-{first_index:020}.log")
}

fn fsync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

impl LogStore {
    /// Opens (or creates) the log in `dir`, replaying it. `voters` are the meta-server ids of
    /// the config: the membership is static, so a fresh log starts with them.
    pub fn open(dir: &Path, voters: &[u64]) -> Result<LogStore, LogError> {
        LogStore::open_with(dir, voters, SEGMENT_BYTES)
    }

    /// [`LogStore::open`] with another segment size.
    pub fn open_with(dir: &Path, voters: &[u64], segment_bytes: u64) -> Result<LogStore, LogError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let conf_state = ConfState { voters: voters.to_vec(), ..Default::default() };
        let (snapshot_index, snapshot_term) = match read_snapshot_file(&dir.join("snapshot"))? {
            Some(snapshot) => {
                let meta = snapshot.get_metadata();
                (meta.index, meta.term)
            }
            None => (0, 0),
        };

        let mut segments: Vec<(u64, PathBuf)> = Vec::new();
        for item in fs::read_dir(dir).map_err(io_err(dir))? {
            let item = item.map_err(io_err(dir))?;
            let name = item.file_name().to_string_lossy().into_owned();
            if let Some(first) = name.strip_prefix("seg-").and_then(|n| n.strip_suffix(".log")) {
                let first = first.parse::<u64>().map_err(|_| LogError::Corrupt {
                    path: item.path(),
                    offset: 0,
                    reason: "segment name is not seg-<index>.log".into(),
                })?;
                segments.push((first, item.path()));
            }
        }
        segments.sort();

        let mut hard_state = HardState::default();
        let mut entries: VecDeque<Entry> = VecDeque::new();
        let count = segments.len();
        for (i, (_, path)) in segments.iter().enumerate() {
            let last = i + 1 == count;
            replay_segment(path, last, snapshot_index, &mut entries, &mut hard_state)?;
        }
        if snapshot_index > 0 && hard_state.commit < snapshot_index {
            hard_state.commit = snapshot_index;
        }
        if hard_state.term < snapshot_term {
            hard_state.term = snapshot_term;
        }

        // Append to the last segment, or start the first.
        if segments.is_empty() {
            let first = snapshot_index + 1;
            segments.push((first, dir.join(segment_name(first))));
        }
        let path = segments.last().expect("at least one segment").1.clone();
        let current = File::options()
            .create(true)
            .append(true)
            .mode(PRIVATE)
            .open(&path)
            .map_err(io_err(&path))?;
        let current_bytes = current.metadata().map_err(io_err(&path))?.len();
        fsync_dir(dir)?;
        info!(
            "raft log {}: snapshot at {snapshot_index}, {} entries after it, term {}, commit {}",
            dir.display(),
            entries.len(),
            hard_state.term,
            hard_state.commit
        );
        Ok(LogStore {
            dir: dir.to_path_buf(),
            hard_state,
            conf_state,
            snapshot_index,
            snapshot_term,
            entries,
            segments,
            current,
            current_bytes,
            segment_bytes,
            unsynced_closed: Vec::new(),
            #[cfg(test)]
            steps: Vec::new(),
        })
    }

    /// The latest snapshot's data, if any (to restore the state machine at start-up).
    pub fn snapshot_data(&self) -> Result<Option<Snapshot>, LogError> {
        read_snapshot_file(&self.dir.join("snapshot"))
    }

    /// The index after the last entry (or the snapshot).
    fn next_index(&self) -> u64 {
        self.entries.back().map_or(self.snapshot_index + 1, |e| e.index + 1)
    }

    fn write_record(&mut self, kind: u8, payload: &[u8]) -> Result<(), LogError> {
        let mut record = Vec::with_capacity(RECORD_HEADER + payload.len());
        let len = u32::try_from(1 + payload.len()).expect("records are far below 4 GiB");
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&[kind]);
        hasher.update(payload);
        record.extend_from_slice(&len.to_be_bytes());
        record.extend_from_slice(&hasher.finalize().to_be_bytes());
        record.push(kind);
        record.extend_from_slice(payload);
        let path = self.segments.last().expect("a current segment").1.clone();
        self.current.write_all(&record).map_err(io_err(&path))?;
        self.current_bytes += record.len() as u64;
        Ok(())
    }

    /// Starts a new segment if the current one is full; `first_index` is the next entry's.
    fn maybe_roll(&mut self, first_index: u64) -> Result<(), LogError> {
        if self.current_bytes < self.segment_bytes {
            return Ok(());
        }
        let path = self.dir.join(segment_name(first_index));
        let file = File::options()
            .create(true)
            .append(true)
            .mode(PRIVATE)
            .open(&path)
            .map_err(io_err(&path))?;
        let old = std::mem::replace(&mut self.current, file);
        self.unsynced_closed.push(old);
        self.segments.push((first_index, path));
        self.current_bytes = 0;
        fsync_dir(&self.dir)
    }

    /// Appends entries (replacing any from the first one's index on) and writes them to the
    /// current segment. Durable only after a sync of [`LogStore::sync_handles`].
    pub fn append(&mut self, new: &[Entry]) -> Result<(), LogError> {
        let Some(first) = new.first() else { return Ok(()) };
        assert!(
            first.index > self.snapshot_index && first.index <= self.next_index(),
            "append at {} after snapshot {} with next index {}",
            first.index,
            self.snapshot_index,
            self.next_index()
        );
        self.maybe_roll(first.index)?;
        while self.entries.back().is_some_and(|e| e.index >= first.index) {
            self.entries.pop_back();
        }
        for entry in new {
            let payload = entry.write_to_bytes().expect("an in-memory entry encodes");
            self.write_record(KIND_ENTRY, &payload)?;
            self.entries.push_back(entry.clone());
        }
        Ok(())
    }

    /// Records a new hard state.
    pub fn set_hard_state(&mut self, hard_state: &HardState) -> Result<(), LogError> {
        let mut payload = Vec::with_capacity(24);
        payload.extend_from_slice(&hard_state.term.to_be_bytes());
        payload.extend_from_slice(&hard_state.vote.to_be_bytes());
        payload.extend_from_slice(&hard_state.commit.to_be_bytes());
        self.write_record(KIND_HARD_STATE, &payload)?;
        self.hard_state = hard_state.clone();
        Ok(())
    }

    /// Records a commit index (part of the hard state).
    pub fn set_commit(&mut self, commit: u64) -> Result<(), LogError> {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.set_hard_state(&hs)
    }

    /// Files to fsync for everything written so far to be durable: the current segment (a
    /// duplicate handle) and any segment closed since the last call.
    pub fn sync_handles(&mut self) -> Result<Vec<File>, LogError> {
        let path = self.segments.last().expect("a current segment").1.clone();
        let mut files = std::mem::take(&mut self.unsynced_closed);
        files.push(self.current.try_clone().map_err(io_err(&path))?);
        Ok(files)
    }

    /// A snapshot of the state machine at `index` (already applied here), ready to be
    /// written with [`write_snapshot_file`] (off the event loop) and then reported with
    /// [`LogStore::snapshot_written`]. `None` if `index` is not past the current snapshot.
    pub fn prepare_snapshot(
        &self,
        index: u64,
        data: Vec<u8>,
    ) -> Result<Option<Snapshot>, LogError> {
        if index <= self.snapshot_index {
            return Ok(None);
        }
        let term = self.term(index).map_err(|e| LogError::Corrupt {
            path: self.dir.clone(),
            offset: 0,
            reason: format!("snapshot at {index}: {e}"),
        })?;
        Ok(Some(make_snapshot(index, term, self.conf_state.voters.clone(), data)))
    }

    /// A snapshot at `index` of `term` is durable on disk: drop the log up to it.
    pub fn snapshot_written(&mut self, index: u64, term: u64) -> Result<(), LogError> {
        if index <= self.snapshot_index {
            return Ok(());
        }
        self.snapshot_index = index;
        self.snapshot_term = term;
        while self.entries.front().is_some_and(|e| e.index <= index) {
            self.entries.pop_front();
        }
        self.drop_segments_through(index)
    }

    /// Writes a snapshot of the state machine at `index` and drops the log up to it, all
    /// here and now (the replica does the write on a worker instead).
    pub fn compact(&mut self, index: u64, data: Vec<u8>) -> Result<(), LogError> {
        let Some(snapshot) = self.prepare_snapshot(index, data)? else { return Ok(()) };
        write_snapshot_file(&self.dir, &snapshot)?;
        let meta = snapshot.get_metadata();
        self.snapshot_written(meta.index, meta.term)
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Installs a snapshot received from the leader: the log restarts after it.
    pub fn apply_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), LogError> {
        let meta = snapshot.get_metadata();
        write_snapshot_file(&self.dir, snapshot)?;
        self.snapshot_index = meta.index;
        self.snapshot_term = meta.term;
        self.entries.clear();
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        self.hard_state.term = self.hard_state.term.max(meta.term);
        // The log restarts after the snapshot: every old segment goes (entries past the
        // snapshot are from a log the leader overruled), and a fresh one starts, truncated in
        // case a segment of that name existed.
        let first = meta.index + 1;
        let path = self.dir.join(segment_name(first));
        let file = File::options()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(PRIVATE)
            .open(&path)
            .map_err(io_err(&path))?;
        self.current = file;
        self.unsynced_closed.clear();
        let old_segments = std::mem::take(&mut self.segments);
        self.segments.push((first, path.clone()));
        self.current_bytes = 0;
        // The term and vote live in hard-state records: the new segment's must be durable,
        // and its name with it, before the old segments holding the last ones go, or a crash
        // between would forget the vote and let this server vote twice in a term.
        let hs = self.hard_state.clone();
        self.set_hard_state(&hs)?;
        self.current.sync_all().map_err(io_err(&path))?;
        fsync_dir(&self.dir)?;
        self.step(format!("synced {}", path.display()));
        for (_, old) in old_segments {
            if old != path {
                fs::remove_file(&old).map_err(io_err(&old))?;
                self.step(format!("removed {}", old.display()));
            }
        }
        fsync_dir(&self.dir)
    }

    #[cfg(test)]
    fn step(&mut self, step: String) {
        self.steps.push(step);
    }

    #[cfg(not(test))]
    fn step(&mut self, _: String) {}

    /// Deletes segments holding only entries at or below `index` (never the current one).
    fn drop_segments_through(&mut self, index: u64) -> Result<(), LogError> {
        while self.segments.len() > 1 && self.segments[1].0 <= index + 1 {
            let (_, path) = self.segments.remove(0);
            fs::remove_file(&path).map_err(io_err(&path))?;
        }
        fsync_dir(&self.dir)
    }

    /// (index, term) of every entry held, and the hard state's (term, vote, commit): what
    /// two opens of one log must agree on.
    #[doc(hidden)]
    pub fn entries_summary(&self) -> (Vec<(u64, u64)>, (u64, u64, u64)) {
        let entries = self.entries.iter().map(|e| (e.index, e.term)).collect();
        let hs = &self.hard_state;
        (entries, (hs.term, hs.vote, hs.commit))
    }

    /// Entries held in memory after the snapshot.
    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }

    /// The latest snapshot's index.
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot_index
    }
}

impl Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard_state.clone(), self.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.snapshot_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        assert!(
            high <= self.next_index(),
            "entries up to {high}, last is {}",
            self.next_index() - 1
        );
        let max = max_size.into().unwrap_or(u64::MAX);
        let offset = self.snapshot_index + 1;
        let mut out = Vec::new();
        let mut size = 0u64;
        for index in low..high {
            let entry = &self.entries[(index - offset) as usize];
            size += u64::from(entry.compute_size());
            if !out.is_empty() && size > max {
                break;
            }
            out.push(entry.clone());
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snapshot_index {
            return Ok(self.snapshot_term);
        }
        if idx < self.snapshot_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        let offset = self.snapshot_index + 1;
        match self.entries.get((idx - offset) as usize) {
            Some(entry) => Ok(entry.term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.snapshot_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.next_index() - 1)
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        match read_snapshot_file(&self.dir.join("snapshot")) {
            Ok(Some(snapshot)) if snapshot.get_metadata().index >= request_index => Ok(snapshot),
            Ok(_) => Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable)),
            Err(err) => {
                warn!("cannot read snapshot: {err}");
                Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable))
            }
        }
    }
}

/// Replays one segment into `entries` and `hard_state`.
fn replay_segment(
    path: &Path,
    last_segment: bool,
    snapshot_index: u64,
    entries: &mut VecDeque<Entry>,
    hard_state: &mut HardState,
) -> Result<(), LogError> {
    let mut bytes = Vec::new();
    File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(io_err(path))?;
    let corrupt = |offset: usize, reason: String| LogError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    let mut at = 0usize;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let bad = match check_record(rest) {
            Ok((kind, payload, len)) => {
                apply_record(kind, payload, snapshot_index, entries, hard_state)
                    .map_err(|r| corrupt(at, r))?;
                at += len;
                continue;
            }
            Err(reason) => reason,
        };
        // A bad record: a torn tail only if it ends the last segment, that is if no whole,
        // valid record starts anywhere after it (a write cut short by a crash, and the zeros
        // a file system may leave after one); a damaged record with records after it is
        // corruption, even where its damaged length claims to run to the end.
        if last_segment && valid_record_after(rest).is_none() {
            warn!(
                "{}: cutting a torn tail of {} bytes at {at} ({bad})",
                path.display(),
                rest.len()
            );
            let file = File::options().write(true).open(path).map_err(io_err(path))?;
            file.set_len(at as u64).map_err(io_err(path))?;
            file.sync_all().map_err(io_err(path))?;
            return Ok(());
        }
        return Err(corrupt(at, bad));
    }
    Ok(())
}

/// The offset in `bytes` (past 0) of the first whole record whose checksum holds, if any.
/// A torn tail is at most one record long, and after damage the next record is found
/// within one record: the scan is short either way.
fn valid_record_after(bytes: &[u8]) -> Option<usize> {
    (1..bytes.len().saturating_sub(RECORD_HEADER - 1)).find(|&at| {
        let rest = &bytes[at..];
        record_extent(rest).is_some_and(|len| len <= rest.len()) && check_record(rest).is_ok()
    })
}

/// The length a record header announces, if a header is there and sane.
fn record_extent(bytes: &[u8]) -> Option<usize> {
    let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?);
    (1..=MAX_RECORD_BYTES).contains(&len).then_some(8 + len as usize)
}

/// Checks one record at the start of `bytes`: (kind, payload, total length).
fn check_record(bytes: &[u8]) -> Result<(u8, &[u8], usize), String> {
    if bytes.len() < RECORD_HEADER {
        return Err(format!("{} bytes, too short for a record header", bytes.len()));
    }
    let total = record_extent(bytes).ok_or_else(|| "record length out of range".to_string())?;
    if bytes.len() < total {
        return Err(format!("record of {total} bytes, {} present", bytes.len()));
    }
    let stored = u32::from_be_bytes(bytes[4..8].try_into().expect("4 bytes"));
    let body = &bytes[8..total];
    if crc32fast::hash(body) != stored {
        return Err("record checksum mismatch".into());
    }
    Ok((body[0], &body[1..], total))
}

fn apply_record(
    kind: u8,
    payload: &[u8],
    snapshot_index: u64,
    entries: &mut VecDeque<Entry>,
    hard_state: &mut HardState,
) -> Result<(), String> {
    match kind {
        KIND_ENTRY => {
            let entry = Entry::parse_from_bytes(payload)
                .map_err(|e| format!("entry does not decode: {e}"))?;
            if entry.index <= snapshot_index {
                return Ok(()); // covered by the snapshot
            }
            let next = entries.back().map_or(snapshot_index + 1, |e| e.index + 1);
            if entry.index > next {
                return Err(format!(
                    "entry {} follows {}: a gap in the log",
                    entry.index,
                    next - 1
                ));
            }
            while entries.back().is_some_and(|e| e.index >= entry.index) {
                entries.pop_back();
            }
            entries.push_back(entry);
            Ok(())
        }
        KIND_HARD_STATE => {
            if payload.len() != 24 {
                return Err(format!("hard state of {} bytes", payload.len()));
            }
            let word = |i: usize| {
                u64::from_be_bytes(payload[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
            };
            hard_state.term = word(0);
            hard_state.vote = word(1);
            hard_state.commit = word(2);
            Ok(())
        }
        other => Err(format!("unknown record kind {other}")),
    }
}

/// Writes `snapshot` as the snapshot of the log in `dir`: to a temporary file, fsynced,
/// renamed over the old one, and the directory fsynced.
pub fn write_snapshot_file(dir: &Path, snapshot: &Snapshot) -> Result<(), LogError> {
    let meta = snapshot.get_metadata();
    let mut bytes = Vec::with_capacity(snapshot.data.len() + 64);
    bytes.extend_from_slice(SNAPSHOT_MAGIC);
    bytes.extend_from_slice(&meta.index.to_be_bytes());
    bytes.extend_from_slice(&meta.term.to_be_bytes());
    let voters = &meta.get_conf_state().voters;
    bytes.extend_from_slice(&(voters.len() as u32).to_be_bytes());
    for voter in voters {
        bytes.extend_from_slice(&voter.to_be_bytes());
    }
    bytes.extend_from_slice(&(snapshot.data.len() as u64).to_be_bytes());
    bytes.extend_from_slice(&snapshot.data);
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_be_bytes());
    let tmp = dir.join("snapshot.tmp");
    let path = dir.join("snapshot");
    let mut file = File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(PRIVATE)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    file.write_all(&bytes).and_then(|()| file.sync_all()).map_err(io_err(&tmp))?;
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    fsync_dir(dir)
}

fn read_snapshot_file(path: &Path) -> Result<Option<Snapshot>, LogError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(LogError::Io { path: path.to_path_buf(), source }),
    };
    let corrupt = |reason: &str| LogError::Corrupt {
        path: path.to_path_buf(),
        offset: 0,
        reason: reason.to_string(),
    };
    if bytes.len() < 4 + 8 + 8 + 4 + 8 + 4 || &bytes[..4] != SNAPSHOT_MAGIC {
        return Err(corrupt("not a snapshot file"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(body) != u32::from_be_bytes(crc.try_into().expect("4 bytes")) {
        return Err(corrupt("snapshot checksum mismatch"));
    }
    let word = |at: usize| u64::from_be_bytes(body[at..at + 8].try_into().expect("8 bytes"));
    let index = word(4);
    let term = word(12);
    let voters = u32::from_be_bytes(body[20..24].try_into().expect("4 bytes")) as usize;
    let data_at = 24 + voters.checked_mul(8).ok_or_else(|| corrupt("voter count"))?;
    if body.len() < data_at + 8 {
        return Err(corrupt("snapshot header truncated"));
    }
    let voters = (0..voters).map(|i| word(24 + i * 8)).collect();
    let data_len = word(data_at) as usize;
    if body.len() != data_at + 8 + data_len {
        return Err(corrupt("snapshot length mismatch"));
    }
    Ok(Some(make_snapshot(index, term, voters, body[data_at + 8..].to_vec())))
}

/// A Raft snapshot of the state machine at `index` (of `term`).
pub fn make_snapshot(index: u64, term: u64, voters: Vec<u64>, data: Vec<u8>) -> Snapshot {
    let conf_state = ConfState { voters, ..Default::default() };
    let metadata =
        SnapshotMetadata { index, term, conf_state: Some(conf_state).into(), ..Default::default() };
    Snapshot { data: data.into(), metadata: Some(metadata).into(), ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    use meshfs_test_kit::TempDir;

    fn entry(index: u64, term: u64) -> Entry {
        let data = format!("entry {index} of term {term}").into_bytes().into();
        Entry { index, term, data, ..Default::default() }
    }

    fn entries(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
        range.map(|i| entry(i, term)).collect()
    }

    fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
        HardState { term, vote, commit, ..Default::default() }
    }

    fn all(store: &LogStore) -> Vec<(u64, u64)> {
        let (first, last) = (store.first_index().unwrap(), store.last_index().unwrap());
        store
            .entries(first, last + 1, None, GetEntriesContext::empty(false))
            .unwrap()
            .iter()
            .map(|e| (e.index, e.term))
            .collect()
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("seg-"))
            .collect();
        files.sort();
        files
    }

    /// The bytes of a log directory are frozen: a snapshot at 200 (term 4), then entries
    /// 201-203 and a hard state in the segment after it. The golden files, put in a fresh
    /// directory, open to the same log: a log written by an earlier build is still read.
    #[test]
    fn golden_log_directory_is_written_and_still_read() {
        let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/raft-log");
        let dir = TempDir::new("log-golden");
        {
            let mut store = LogStore::open(dir.path(), &[1, 2, 3]).unwrap();
            let snapshot = make_snapshot(200, 4, vec![1, 2, 3], b"leader state".to_vec());
            store.apply_snapshot(&snapshot).unwrap();
            store.append(&entries(201..=203, 4)).unwrap();
            store.set_hard_state(&hard_state(4, 2, 202)).unwrap();
            for file in store.sync_handles().unwrap() {
                file.sync_data().unwrap();
            }
        }
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["seg-00000000000000000201.log", "snapshot"]);
        let old = TempDir::new("log-old");
        for name in &names {
            let path = golden.join(name);
            meshfs_test_kit::golden::check_bytes(&path, &fs::read(dir.join(name)).unwrap());
            fs::write(old.join(name), meshfs_test_kit::golden::read(&path)).unwrap();
        }
        let store = LogStore::open(old.path(), &[1, 2, 3]).unwrap();
        assert_eq!(all(&store), [(201, 4), (202, 4), (203, 4)]);
        assert_eq!(store.initial_state().unwrap().hard_state, hard_state(4, 2, 202));
        assert_eq!(store.term(200).unwrap(), 4);
        let snapshot = store.snapshot(200, 1).unwrap();
        assert_eq!(&snapshot.data[..], b"leader state");
    }

    #[test]
    fn entries_and_hard_state_survive_a_reopen() {
        let dir = TempDir::new("reopen");
        {
            let mut store = LogStore::open(dir.path(), &[1, 2, 3]).unwrap();
            assert_eq!((store.first_index().unwrap(), store.last_index().unwrap()), (1, 0));
            store.append(&entries(1..=5, 1)).unwrap();
            store.set_hard_state(&hard_state(1, 2, 4)).unwrap();
            for file in store.sync_handles().unwrap() {
                file.sync_data().unwrap();
            }
        }
        let store = LogStore::open(dir.path(), &[1, 2, 3]).unwrap();
        assert_eq!(all(&store), (1..=5).map(|i| (i, 1)).collect::<Vec<_>>());
        let state = store.initial_state().unwrap();
        assert_eq!(state.hard_state, hard_state(1, 2, 4));
        assert_eq!(state.conf_state.voters, [1, 2, 3]);
        assert_eq!(store.term(3).unwrap(), 1);
    }

    #[test]
    fn a_conflicting_suffix_is_replaced_now_and_on_replay() {
        let dir = TempDir::new("suffix");
        {
            let mut store = LogStore::open(dir.path(), &[1]).unwrap();
            store.append(&entries(1..=5, 1)).unwrap();
            store.append(&entries(3..=4, 2)).unwrap();
            assert_eq!(all(&store), [(1, 1), (2, 1), (3, 2), (4, 2)]);
        }
        let store = LogStore::open(dir.path(), &[1]).unwrap();
        assert_eq!(all(&store), [(1, 1), (2, 1), (3, 2), (4, 2)]);
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_the_log_goes_on() {
        let dir = TempDir::new("torn");
        {
            let mut store = LogStore::open(dir.path(), &[1]).unwrap();
            store.append(&entries(1..=3, 1)).unwrap();
        }
        let segment = segment_files(dir.path()).pop().unwrap();
        let len = fs::metadata(&segment).unwrap().len();
        File::options().write(true).open(&segment).unwrap().set_len(len - 5).unwrap();
        {
            let mut store = LogStore::open(dir.path(), &[1]).unwrap();
            assert_eq!(all(&store), [(1, 1), (2, 1)], "the cut record is gone, the rest stays");
            store.append(&entries(3..=4, 2)).unwrap();
        }
        let store = LogStore::open(dir.path(), &[1]).unwrap();
        assert_eq!(all(&store), [(1, 1), (2, 1), (3, 2), (4, 2)]);
    }

    #[test]
    fn a_zero_filled_tail_is_a_torn_tail() {
        let dir = TempDir::new("zeros");
        {
            let mut store = LogStore::open(dir.path(), &[1]).unwrap();
            store.append(&entries(1..=2, 1)).unwrap();
        }
        let segment = segment_files(dir.path()).pop().unwrap();
        let mut file = File::options().append(true).open(&segment).unwrap();
        file.write_all(&[0u8; 4096]).unwrap();
        let store = LogStore::open(dir.path(), &[1]).unwrap();
        assert_eq!(all(&store), [(1, 1), (2, 1)]);
    }

    #[test]
    fn corruption_before_the_tail_stops_the_server() {
        let dir = TempDir::new("corrupt");
        {
            let mut store = LogStore::open(dir.path(), &[1]).unwrap();
            store.append(&entries(1..=3, 1)).unwrap();
        }
        let segment = segment_files(dir.path()).pop().unwrap();
        let mut bytes = fs::read(&segment).unwrap();
        bytes[12] ^= 0x40; // inside the first record's payload
        fs::write(&segment, &bytes).unwrap();
        let err = LogStore::open(dir.path(), &[1]).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, LogError::Corrupt { offset: 0, .. }), "{message}");
        assert!(
            message.contains("checksum mismatch") && message.contains("will not serve"),
            "{message}"
        );
        // Nothing was cut: the file is as it was, for an operator to inspect.
        assert_eq!(fs::read(&segment).unwrap(), bytes);
    }

    /// A damaged length field in the middle of the last segment once passed for a torn tail
    /// (it claimed to run past the end), and the acknowledged entries after it were cut.
    #[test]
    fn a_damaged_length_with_records_after_it_is_corruption_not_a_torn_tail() {
        let dir = TempDir::new("bad-length");
        {
            let mut store = LogStore::open(dir.path(), &[1]).unwrap();
            store.append(&entries(1..=5, 1)).unwrap();
        }
        let segment = segment_files(dir.path()).pop().unwrap();
        let mut bytes = fs::read(&segment).unwrap();
        // The second record's length: one record on, it now says it runs past the end.
        let second = 8 + u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        let past_the_end = (bytes.len() as u32).to_be_bytes();
        bytes[second..second + 4].copy_from_slice(&past_the_end);
        fs::write(&segment, &bytes).unwrap();
        let err = LogStore::open(dir.path(), &[1]).unwrap_err();
        assert!(
            matches!(err, LogError::Corrupt { offset, .. } if offset == second as u64),
            "{err}"
        );
        assert_eq!(fs::read(&segment).unwrap(), bytes, "nothing was cut");
        // A record cut short and then zeros (a torn write, and a file system's fill) is
        // still a torn tail.
        let dir = TempDir::new("torn-zeros");
        {
            let mut store = LogStore::open(dir.path(), &[1]).unwrap();
            store.append(&entries(1..=3, 1)).unwrap();
        }
        let segment = segment_files(dir.path()).pop().unwrap();
        let len = fs::metadata(&segment).unwrap().len();
        let file = File::options().write(true).open(&segment).unwrap();
        file.set_len(len - 5).unwrap();
        file.set_len(len + 4096).unwrap();
        let store = LogStore::open(dir.path(), &[1]).unwrap();
        assert_eq!(all(&store), [(1, 1), (2, 1)]);
    }

    #[test]
    fn compaction_keeps_the_tail_and_drops_whole_old_segments() {
        let dir = TempDir::new("compact");
        {
            let mut store = LogStore::open_with(dir.path(), &[1], 512).unwrap();
            for i in 1..=100 {
                store.append(&[entry(i, 1 + i / 50)]).unwrap();
            }
            assert!(segment_files(dir.path()).len() > 5, "small segments roll");
            store.set_hard_state(&hard_state(3, 1, 100)).unwrap();
            store.compact(60, b"state at 60".to_vec()).unwrap();
            assert_eq!(store.first_index().unwrap(), 61);
            assert_eq!(store.term(60).unwrap(), 2);
            assert!(matches!(store.term(59), Err(raft::Error::Store(StorageError::Compacted))));
            assert!(matches!(
                store.entries(59, 62, None, GetEntriesContext::empty(false)),
                Err(raft::Error::Store(StorageError::Compacted))
            ));
            let snapshot = store.snapshot(60, 2).unwrap();
            assert_eq!(&snapshot.data[..], b"state at 60");
            assert!(store.snapshot(61, 2).is_err(), "a newer snapshot is not there yet");
        }
        let first_segment = segment_files(dir.path())[0].clone();
        let first: u64 =
            first_segment.file_name().unwrap().to_string_lossy()[4..24].parse().unwrap();
        assert!(first > 1 && first <= 61, "segments before the snapshot are gone ({first})");
        let store = LogStore::open_with(dir.path(), &[1], 512).unwrap();
        assert_eq!(store.snapshot_index(), 60);
        assert_eq!(all(&store).first(), Some(&(61, 2)));
        assert_eq!(all(&store).last(), Some(&(100, 3)));
        assert_eq!(&store.snapshot_data().unwrap().unwrap().data[..], b"state at 60");
    }

    #[test]
    fn an_installed_snapshot_replaces_the_log() {
        let dir = TempDir::new("install");
        {
            let mut store = LogStore::open(dir.path(), &[1, 2, 3]).unwrap();
            store.append(&entries(1..=10, 1)).unwrap();
            let snapshot = make_snapshot(200, 4, vec![1, 2, 3], b"leader state".to_vec());
            store.apply_snapshot(&snapshot).unwrap();
            assert_eq!((store.first_index().unwrap(), store.last_index().unwrap()), (201, 200));
            store.append(&entries(201..=202, 4)).unwrap();
        }
        let store = LogStore::open(dir.path(), &[1, 2, 3]).unwrap();
        assert_eq!(all(&store), [(201, 4), (202, 4)]);
        assert_eq!(store.initial_state().unwrap().hard_state.commit, 200);
        assert_eq!(store.term(200).unwrap(), 4);
    }

    #[test]
    fn an_install_makes_the_hard_state_durable_before_the_old_segments_go() {
        let dir = TempDir::new("install-order");
        let mut store = LogStore::open_with(dir.path(), &[1], 64).unwrap();
        for i in 1..=12 {
            store.append(&entries(i..=i, 2)).unwrap();
        }
        store.set_hard_state(&hard_state(2, 3, 4)).unwrap();
        assert!(segment_files(dir.path()).len() > 1, "several old segments");
        store.apply_snapshot(&make_snapshot(20, 3, vec![1], b"state".to_vec())).unwrap();
        let synced = store.steps.iter().position(|s| s.starts_with("synced")).unwrap();
        let first_removal = store.steps.iter().position(|s| s.starts_with("removed")).unwrap();
        assert!(synced < first_removal, "{:?}", store.steps);
        assert!(store.steps[synced].ends_with(&segment_name(21)), "{:?}", store.steps);
        drop(store);
        let store = LogStore::open(dir.path(), &[1]).unwrap();
        let state = store.initial_state().unwrap().hard_state;
        assert_eq!((state.term, state.vote, state.commit), (3, 3, 20), "the vote survives");
    }

    #[test]
    fn an_installed_snapshot_discards_a_longer_stale_log() {
        // A follower whose log runs past the leader's snapshot, in several segments.
        let dir = TempDir::new("stale");
        {
            let mut store = LogStore::open_with(dir.path(), &[1], 256).unwrap();
            for i in 1..=300 {
                store.append(&[entry(i, 1)]).unwrap();
            }
            assert!(segment_files(dir.path()).len() > 3);
            let snapshot = make_snapshot(200, 2, vec![1], b"leader state at 200".to_vec());
            store.apply_snapshot(&snapshot).unwrap();
            store.append(&entries(201..=203, 2)).unwrap();
            assert_eq!(segment_files(dir.path()).len(), 1, "every old segment is gone");
        }
        let store = LogStore::open_with(dir.path(), &[1], 256).unwrap();
        assert_eq!(all(&store), [(201, 2), (202, 2), (203, 2)]);
    }

    #[test]
    fn a_damaged_snapshot_file_is_corruption() {
        let dir = TempDir::new("badsnap");
        {
            let mut store = LogStore::open(dir.path(), &[1]).unwrap();
            store.append(&entries(1..=3, 1)).unwrap();
            store.compact(2, b"two".to_vec()).unwrap();
        }
        let path = dir.path().join("snapshot");
        let mut bytes = fs::read(&path).unwrap();
        let at = bytes.len() - 6;
        bytes[at] ^= 1;
        fs::write(&path, bytes).unwrap();
        let err = LogStore::open(dir.path(), &[1]).unwrap_err().to_string();
        assert!(err.contains("snapshot checksum mismatch"), "{err}");
    }

    #[test]
    fn entries_respect_max_size_but_return_at_least_one() {
        let dir = TempDir::new("maxsize");
        let mut store = LogStore::open(dir.path(), &[1]).unwrap();
        store.append(&entries(1..=10, 1)).unwrap();
        let one = store.entries(1, 11, 1, GetEntriesContext::empty(false)).unwrap();
        assert_eq!(one.len(), 1);
        let some = store.entries(1, 11, 100, GetEntriesContext::empty(false)).unwrap();
        assert!(some.len() > 1 && some.len() < 10, "{}", some.len());
        assert_eq!(store.entries(1, 11, None, GetEntriesContext::empty(false)).unwrap().len(), 10);
    }
}
