//! The data-server's block store: one file per block replica, CRC-32 per 64 KiB segment.
//!
//! Layout of `<data_dir>/blocks/<xx>/<file id>-<index>.blk` (`xx`: the file id's low byte,
//! to spread files over 256 directories):
//!
//! ```text
//! offset size
//!      0    4 magic "MBLK"
//!      4    2 format (1)
//!      6    2 reserved
//!      8   12 block descriptor: u32 file id, u32 file version, u16 index, u16 block version
//!     20    4 block size
//!     24    8 data length (valid bytes)
//!     32    4 segments (block size / 64 KiB, rounded up)
//!     36    4 CRC-32 of the segment table
//!     40   20 reserved, zero
//!     60    4 CRC-32 of bytes 0..60
//!     64  4*n segment table: CRC-32 of each segment's valid bytes
//!      -    - zero padding to the data offset (a multiple of 4 KiB)
//!      -    - data
//! ```
//!
//! Format 2 is a *delta*: the segments a partial write changed, over the copy it started
//! from. Its header is format 1's with bytes 40..42 the base version and 44..48 the CRC-32
//! of a presence bitmap (one bit per segment, most significant bit first) that follows the
//! segment table; the table holds every segment's checksum of the new version. A segment
//! marked present is at its place in the data (the file is sparse: the rest are holes); the
//! others are the base copy's, unchanged.
//!
//! Writes are copy-on-write: a [`BlockWrite`] fills a temporary file, and
//! [`BlockWrite::commit`] fsyncs it, renames it into place and fsyncs the directory. A
//! reader sees the old version or the new one, never a mix; a crash leaves only a temporary
//! file, which [`BlockStore::open`] finds and removes. A write that overwrites part of a
//! block writes a delta: it copies only the segments it touches (whole segments, 64 KiB,
//! from the base copy), so a small write costs what it writes, not the block. Reads return
//! whole segments with their stored checksums (so the client can verify end to end) after
//! checking them here.
//!
//! A write's version becomes the block's only when the meta-servers commit it (after every
//! replica acknowledged). Until then readers ask for the base version, so a commit keeps the
//! base copy beside the new one (`<file id>-<index>.prev`). When the leader says the new
//! version is committed ([`BlockStore::committed`]), or the next write from it begins, the
//! base copy is no longer needed: a full copy drops it, a delta is *folded* into it (its
//! segments written over the base's in place, the header made format 1 of the new version,
//! the result renamed over the delta), which again costs only the delta's segments. A
//! marker file (`.fold`) made durable before the base is touched tells a restart to finish
//! a fold that a crash cut. A block therefore has at most two copies here: the newest
//! written, and the full one it started from.
//!
//! The store is shared by worker threads: its index sits behind a mutex; file I/O happens
//! outside it.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, ErrorKind};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use log::{info, warn};
use meshfs_core::descriptor::{BlockDescriptor, BlockVersion, FileDescriptor, FileId};

/// Bytes per checksummed segment.
pub const SEGMENT_BYTES: u64 = meshfs_core::wire::SEGMENT_BYTES;
const HEADER_BYTES: u64 = 64;
const MAGIC: &[u8; 4] = b"MBLK";
const FORMAT: u16 = 1;
const ALIGN: u64 = 4096;

/// Why a block operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The disk failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// No room: the configured capacity or the disk itself is full.
    #[error("no space for {needed} bytes: {free} free of {capacity}")]
    Full {
        /// Bytes the operation needed.
        needed: u64,
        /// Bytes free.
        free: u64,
        /// The configured capacity.
        capacity: u64,
    },
    /// This data-server holds no replica of that block.
    #[error("no replica of block {0}")]
    NotFound(BlockDescriptor),
    /// The replica held here has another version than the one asked for.
    #[error("block {asked}: this replica is at version {held}")]
    WrongVersion {
        /// What was asked for.
        asked: BlockDescriptor,
        /// The version held.
        held: u16,
    },
    /// A segment's data does not match its stored checksum: the replica is damaged.
    #[error("block {block}: segment {segment} is damaged (checksum mismatch)")]
    Corrupt {
        /// The block.
        block: BlockDescriptor,
        /// The damaged segment.
        segment: u32,
    },
    /// The replica file's header or table is damaged.
    #[error("{path}: {reason}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A partial write must start from the block's committed version, which this replica
    /// lacks: it missed a write, and needs repair from another replica.
    #[error(
        "block {block}: the write starts from version {base}, but this replica holds {held}; \
         it is stale and needs repair"
    )]
    NoBase {
        /// The block, at the write's version.
        block: BlockDescriptor,
        /// The version the write starts from.
        base: u16,
        /// What is held instead.
        held: String,
    },
    /// A newer version was committed here while this write was in progress.
    #[error("block {block}: version {held} was committed here first; this write is stale")]
    Overtaken {
        /// The block, at the write's version.
        block: BlockDescriptor,
        /// The version committed first.
        held: u16,
    },
    /// A write or read outside the block.
    #[error("block {block}: range {offset}+{len} is outside the block ({limit} bytes)")]
    OutOfRange {
        /// The block.
        block: BlockDescriptor,
        /// Where the range starts.
        offset: u64,
        /// Its length.
        len: u64,
        /// The limit it passes.
        limit: u64,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

/// What the store knows of one replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockInfo {
    /// The block, at the version held.
    pub descriptor: BlockDescriptor,
    /// The block's size.
    pub block_size: u32,
    /// Valid bytes.
    pub len: u64,
    /// Bytes the replica file takes on disk.
    pub file_bytes: u64,
    /// For a delta, the version it is written over (held beside it as the older copy).
    pub base: Option<BlockVersion>,
}

impl BlockInfo {
    fn of(header: &Header) -> BlockInfo {
        BlockInfo {
            descriptor: header.descriptor,
            block_size: header.block_size,
            len: header.len,
            file_bytes: header.stored_bytes(),
            base: header.delta.as_ref().map(|d| d.base),
        }
    }
}

/// Whole segments read from a replica, with their stored checksums.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentRead {
    /// The replica's block descriptor.
    pub descriptor: BlockDescriptor,
    /// Valid bytes in the replica.
    pub block_len: u64,
    /// Index of the first segment returned.
    pub first_segment: u32,
    /// The segments' bytes (each [`SEGMENT_BYTES`] but the last, which may be shorter).
    pub data: Vec<u8>,
    /// The stored CRC-32 of each segment returned.
    pub crcs: Vec<u32>,
}

impl SegmentRead {
    /// Checks every segment against its checksum; the index of the first bad one.
    pub fn verify(&self) -> Result<(), u32> {
        for (i, crc) in self.crcs.iter().enumerate() {
            let start = i * SEGMENT_BYTES as usize;
            let end = (start + SEGMENT_BYTES as usize).min(self.data.len());
            if crc32fast::hash(&self.data[start..end]) != *crc {
                return Err(self.first_segment + i as u32);
            }
        }
        Ok(())
    }

    /// The bytes of `offset..offset + len` of the block (which this read covers).
    pub fn slice(&self, offset: u64, len: u64) -> &[u8] {
        let start = (offset - u64::from(self.first_segment) * SEGMENT_BYTES) as usize;
        let end = (start as u64 + len).min(self.data.len() as u64) as usize;
        &self.data[start.min(end)..end]
    }
}

fn segments(block_size: u32) -> u64 {
    u64::from(block_size).div_ceil(SEGMENT_BYTES)
}

fn data_offset(block_size: u32) -> u64 {
    (HEADER_BYTES + 4 * segments(block_size)).div_ceil(ALIGN) * ALIGN
}

/// Where a delta's data starts: after the table and the presence bitmap.
fn delta_data_offset(block_size: u32) -> u64 {
    let n = segments(block_size);
    (HEADER_BYTES + 4 * n + n.div_ceil(8)).div_ceil(ALIGN) * ALIGN
}

/// The delta format.
const DELTA_FORMAT: u16 = 2;

/// A delta's own part: what it is written over, and which segments it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Delta {
    base: BlockVersion,
    present: Vec<bool>,
}

/// A replica's header and segment table, as read or about to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Header {
    descriptor: BlockDescriptor,
    block_size: u32,
    len: u64,
    crcs: Vec<u32>,
    /// Set for a delta (format 2).
    delta: Option<Delta>,
}

impl Header {
    fn data_offset(&self) -> u64 {
        match self.delta {
            None => data_offset(self.block_size),
            Some(_) => delta_data_offset(self.block_size),
        }
    }

    /// Bytes the replica takes: a full copy its length; a delta its header and the
    /// segments it holds (the rest are holes).
    fn stored_bytes(&self) -> u64 {
        match &self.delta {
            None => data_offset(self.block_size) + self.len,
            Some(delta) => {
                let held: u64 = (0..self.crcs.len() as u64)
                    .filter(|&s| delta.present[s as usize])
                    .map(|s| self.len.saturating_sub(s * SEGMENT_BYTES).min(SEGMENT_BYTES))
                    .sum();
                delta_data_offset(self.block_size) + held
            }
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut table = Vec::with_capacity(self.crcs.len() * 4);
        for crc in &self.crcs {
            table.extend_from_slice(&crc.to_be_bytes());
        }
        let bitmap = self.delta.as_ref().map(|d| {
            let mut bits = vec![0u8; d.present.len().div_ceil(8)];
            for (i, _) in d.present.iter().enumerate().filter(|(_, p)| **p) {
                bits[i / 8] |= 0x80 >> (i % 8);
            }
            bits
        });
        let mut head = Vec::with_capacity(HEADER_BYTES as usize + table.len());
        head.extend_from_slice(MAGIC);
        let format = if self.delta.is_some() { DELTA_FORMAT } else { FORMAT };
        head.extend_from_slice(&format.to_be_bytes());
        head.extend_from_slice(&[0, 0]);
        let d = &self.descriptor;
        head.extend_from_slice(&d.file.id.0.to_be_bytes());
        head.extend_from_slice(&d.file.version.to_be_bytes());
        head.extend_from_slice(&d.index.to_be_bytes());
        head.extend_from_slice(&d.version.0.to_be_bytes());
        head.extend_from_slice(&self.block_size.to_be_bytes());
        head.extend_from_slice(&self.len.to_be_bytes());
        head.extend_from_slice(&(self.crcs.len() as u32).to_be_bytes());
        head.extend_from_slice(&crc32fast::hash(&table).to_be_bytes());
        if let (Some(delta), Some(bits)) = (&self.delta, &bitmap) {
            head.extend_from_slice(&delta.base.0.to_be_bytes());
            head.extend_from_slice(&[0, 0]);
            head.extend_from_slice(&crc32fast::hash(bits).to_be_bytes());
        }
        head.resize(60, 0);
        let crc = crc32fast::hash(&head);
        head.extend_from_slice(&crc.to_be_bytes());
        head.extend_from_slice(&table);
        head.extend_from_slice(bitmap.as_deref().unwrap_or_default());
        head
    }

    fn read(file: &File, path: &Path) -> Result<Header, StoreError> {
        let bad = |reason: &str| StoreError::BadFile {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        let mut head = [0u8; HEADER_BYTES as usize];
        file.read_exact_at(&mut head, 0).map_err(|e| match e.kind() {
            ErrorKind::UnexpectedEof => bad("shorter than a block header"),
            _ => StoreError::Io { path: path.to_path_buf(), source: e },
        })?;
        let word = |at: usize| u32::from_be_bytes(head[at..at + 4].try_into().expect("4 bytes"));
        if &head[0..4] != MAGIC {
            return Err(bad("not a block replica (bad magic)"));
        }
        if crc32fast::hash(&head[..60]) != word(60) {
            return Err(bad("block header checksum mismatch"));
        }
        let format = u16::from_be_bytes([head[4], head[5]]);
        if format != FORMAT && format != DELTA_FORMAT {
            return Err(bad("unknown block file format"));
        }
        let descriptor = BlockDescriptor {
            file: FileDescriptor { id: FileId(word(8)), version: word(12) },
            index: u16::from_be_bytes([head[16], head[17]]),
            version: BlockVersion(u16::from_be_bytes([head[18], head[19]])),
        };
        let block_size = word(20);
        let len = u64::from_be_bytes(head[24..32].try_into().expect("8 bytes"));
        let count = word(32);
        if block_size == 0
            || u64::from(count) != segments(block_size)
            || len > u64::from(block_size)
        {
            return Err(bad("block header fields disagree"));
        }
        let mut table = vec![0u8; count as usize * 4];
        file.read_exact_at(&mut table, HEADER_BYTES).map_err(|_| bad("segment table cut short"))?;
        if crc32fast::hash(&table) != word(36) {
            return Err(bad("segment table checksum mismatch"));
        }
        let crcs =
            table.chunks(4).map(|c| u32::from_be_bytes(c.try_into().expect("4 bytes"))).collect();
        let delta = if format == DELTA_FORMAT {
            let base = BlockVersion(u16::from_be_bytes([head[40], head[41]]));
            if base == descriptor.version {
                return Err(bad("a delta over its own version"));
            }
            let mut bits = vec![0u8; (count as usize).div_ceil(8)];
            file.read_exact_at(&mut bits, HEADER_BYTES + u64::from(count) * 4)
                .map_err(|_| bad("presence bitmap cut short"))?;
            if crc32fast::hash(&bits) != word(44) {
                return Err(bad("presence bitmap checksum mismatch"));
            }
            let present = (0..count as usize).map(|i| bits[i / 8] & (0x80 >> (i % 8)) != 0);
            Some(Delta { base, present: present.collect() })
        } else {
            None
        };
        Ok(Header { descriptor, block_size, len, crcs, delta })
    }
}

type BlockKey = (u32, u16);

/// The copies of one block held here.
#[derive(Debug, Clone, Copy)]
struct Held {
    /// The newest version written (what the data-server reports).
    current: BlockInfo,
    /// The version `current` was written from, kept until `current` is known committed.
    older: Option<BlockInfo>,
}

impl Held {
    fn bytes(&self) -> u64 {
        self.current.file_bytes + self.older.map_or(0, |o| o.file_bytes)
    }
}

/// The block a replica file name (`<file id>-<index>`, hex, no extension) stands for.
fn parse_key(stem: &str) -> Option<BlockKey> {
    let (file, index) = stem.split_once('-')?;
    Some((u32::from_str_radix(file, 16).ok()?, u16::from_str_radix(index, 16).ok()?))
}

fn key(descriptor: &BlockDescriptor) -> BlockKey {
    (descriptor.file.id.0, descriptor.index)
}

/// The block replicas on one data-server's disk.
#[derive(Debug)]
pub struct BlockStore {
    dir: PathBuf,
    capacity: u64,
    index: Mutex<HashMap<BlockKey, Held>>,
    /// Blocks with a damaged copy set aside (`.bad`), deleted when a good copy commits.
    damaged: Mutex<HashSet<BlockKey>>,
    /// Bytes taken by committed replicas and reserved by writes in progress.
    used: AtomicU64,
    next_tmp: AtomicU64,
    /// Directories fsynced, in order, for the tests to check.
    #[cfg(test)]
    synced_dirs: Mutex<Vec<PathBuf>>,
}

/// Makes a directory's entries durable (a new file, rename or directory in it).
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

impl BlockStore {
    fn sync_dir(&self, dir: &Path) -> Result<(), StoreError> {
        sync_dir(dir)?;
        #[cfg(test)]
        self.synced_dirs.lock().expect("not poisoned").push(dir.to_path_buf());
        Ok(())
    }

    /// Opens the store under `data_dir`, scanning it: replica headers are checked, leftovers
    /// of interrupted writes are removed, folds cut short are finished, damaged replica files
    /// are set aside (renamed `.bad`) and not served.
    pub fn open(data_dir: &Path, capacity: u64) -> Result<BlockStore, StoreError> {
        let dir = data_dir.join("blocks");
        if !dir.is_dir() {
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            sync_dir(data_dir)?;
        }
        let mut current = HashMap::new();
        let mut older = HashMap::new();
        let mut used = 0;
        let (mut removed, mut bad) = (0, 0);
        let mut damaged = HashSet::new();
        let mut folding = Vec::new();
        let set_aside = |path: &Path, damaged: &mut HashSet<BlockKey>| {
            let aside = path.with_extension("bad");
            fs::rename(path, &aside).map_err(io_err(path))?;
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            damaged.extend(name.as_deref().and_then(|n| n.split('.').next()).and_then(parse_key));
            Ok::<(), StoreError>(())
        };
        for shard in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let shard = shard.map_err(io_err(&dir))?.path();
            if !shard.is_dir() {
                continue;
            }
            let mut paths = Vec::new();
            for item in fs::read_dir(&shard).map_err(io_err(&shard))? {
                paths.push(item.map_err(io_err(&shard))?.path());
            }
            let name_of = |p: &Path| {
                p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
            };
            // A fold in progress: its base copy is being written over and is not judged.
            let folds: HashSet<PathBuf> = paths
                .iter()
                .filter(|p| name_of(p).ends_with(".fold"))
                .map(|p| p.with_extension("prev"))
                .collect();
            for path in paths {
                let name = name_of(&path);
                if name.ends_with(".tmp") {
                    // A write that never committed: never served, now gone.
                    fs::remove_file(&path).map_err(io_err(&path))?;
                    removed += 1;
                    continue;
                }
                if let Some(key) = name.strip_suffix(".bad").and_then(parse_key) {
                    damaged.insert(key);
                    continue;
                }
                if name.ends_with(".fold") {
                    folding.push(path);
                    continue;
                }
                let is_older = name.ends_with(".prev");
                if (!name.ends_with(".blk") && !is_older) || folds.contains(&path) {
                    continue;
                }
                let file = File::open(&path).map_err(io_err(&path))?;
                match Header::read(&file, &path) {
                    Ok(header) if is_older && header.delta.is_some() => {
                        // A base copy is always full: this one is of no use.
                        warn!("removing {}: a delta where a base copy belongs", path.display());
                        fs::remove_file(&path).map_err(io_err(&path))?;
                    }
                    Ok(header) => {
                        let info = BlockInfo::of(&header);
                        used += info.file_bytes;
                        if is_older {
                            older.insert(key(&header.descriptor), (info, path));
                        } else {
                            current.insert(key(&header.descriptor), info);
                        }
                    }
                    Err(err) => {
                        warn!("setting aside a damaged replica: {err}");
                        set_aside(&path, &mut damaged)?;
                        bad += 1;
                    }
                }
            }
        }
        let mut index: HashMap<BlockKey, Held> =
            current.into_iter().map(|(k, info)| (k, Held { current: info, older: None })).collect();
        // A fold cut by a crash: the delta is whole, and the base's segments it does not
        // hold were never touched. Finish it.
        for marker in folding {
            let stem = marker.file_stem().map(|s| s.to_string_lossy().into_owned());
            let Some(key) = stem.as_deref().and_then(parse_key) else { continue };
            let base = marker.with_extension("prev");
            match index.get(&key).copied() {
                Some(held) if held.current.base.is_some() && base.exists() => {
                    let blk = marker.with_extension("blk");
                    let folded = fold_files(&blk, &base, &marker)?;
                    used = used + folded.file_bytes - held.current.file_bytes;
                    info!("finished folding {} (cut by a restart)", blk.display());
                    index.insert(key, Held { current: folded, older: None });
                }
                _ => {
                    // Finished but for the marker.
                    fs::remove_file(&marker).map_err(io_err(&marker))?;
                    if base.exists() {
                        warn!("removing {}: left by a fold", base.display());
                        fs::remove_file(&base).map_err(io_err(&base))?;
                    }
                }
            }
        }
        for (key, (info, path)) in older {
            match index.get_mut(&key) {
                Some(held)
                    if held.current.descriptor.version != info.descriptor.version
                        && held.current.base.is_none_or(|b| b == info.descriptor.version) =>
                {
                    held.older = Some(info);
                }
                Some(_) => {
                    fs::remove_file(&path).map_err(io_err(&path))?;
                    used -= info.file_bytes;
                }
                None => {
                    // A crash between moving the base copy aside and moving the new one in:
                    // the base copy is the block.
                    let blk = path.with_extension("blk");
                    fs::rename(&path, &blk).map_err(io_err(&path))?;
                    info!("restored {} (a commit was interrupted)", blk.display());
                    index.insert(key, Held { current: info, older: None });
                }
            }
        }
        // A delta without its base copy cannot be read whole: damaged.
        let orphans: Vec<(BlockKey, Held)> = index
            .iter()
            .filter(|(_, h)| h.current.base.is_some() && h.older.is_none())
            .map(|(k, h)| (*k, *h))
            .collect();
        for (key, held) in orphans {
            let path = dir
                .join(format!("{:02x}", key.0 & 0xff))
                .join(format!("{:08x}-{:04x}.blk", key.0, key.1));
            warn!("setting aside {}: a delta whose base copy is gone", path.display());
            set_aside(&path, &mut damaged)?;
            used -= held.current.file_bytes;
            index.remove(&key);
            bad += 1;
        }
        info!(
            "block store {}: {} replicas, {used} bytes; removed {removed} unfinished writes, set aside {bad} damaged files",
            dir.display(),
            index.len()
        );
        Ok(BlockStore {
            dir,
            capacity,
            index: Mutex::new(index),
            damaged: Mutex::new(damaged),
            used: AtomicU64::new(used),
            next_tmp: AtomicU64::new(0),
            #[cfg(test)]
            synced_dirs: Mutex::new(Vec::new()),
        })
    }

    fn path_of(&self, file: FileId, index: u16) -> PathBuf {
        self.dir
            .join(format!("{:02x}", file.0 & 0xff))
            .join(format!("{:08x}-{index:04x}.blk", file.0))
    }

    fn damaged(&self) -> std::sync::MutexGuard<'_, HashSet<BlockKey>> {
        self.damaged.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<BlockKey, Held>> {
        // A panic while holding the lock leaves the index as it was: keep using it.
        self.index.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every replica held, for reports to the meta-servers.
    pub fn list(&self) -> Vec<BlockInfo> {
        let mut all: Vec<BlockInfo> = self.lock().values().map(|h| h.current).collect();
        all.sort_by_key(|b| (b.descriptor.file.id.0, b.descriptor.index));
        all
    }

    /// The newest replica of block `index` of `file`, if held.
    pub fn get(&self, file: FileId, index: u16) -> Option<BlockInfo> {
        self.lock().get(&(file.0, index)).map(|h| h.current)
    }

    /// The copy of block `index` of `file` at `version`, if held, and its path.
    fn copy_at(
        &self,
        file: FileId,
        index: u16,
        version: BlockVersion,
    ) -> Option<(BlockInfo, PathBuf)> {
        let held = *self.lock().get(&(file.0, index))?;
        let path = self.path_of(file, index);
        if held.current.descriptor.version == version {
            Some((held.current, path))
        } else {
            held.older
                .filter(|o| o.descriptor.version == version)
                .map(|o| (o, path.with_extension("prev")))
        }
    }

    /// The versions held of block `index` of `file`, for messages.
    fn versions_held(&self, file: FileId, index: u16) -> String {
        match self.lock().get(&(file.0, index)) {
            None => "no copy".into(),
            Some(Held { current, older: None }) => {
                format!("version {}", current.descriptor.version.0)
            }
            Some(Held { current, older: Some(o) }) => {
                format!("versions {} and {}", current.descriptor.version.0, o.descriptor.version.0)
            }
        }
    }

    /// The meta-servers committed `block` (at its version): the copy it was written from is
    /// no longer needed (a delta is folded into it). Whether a copy was dropped.
    pub fn committed(&self, block: BlockDescriptor) -> Result<bool, StoreError> {
        if self.fold_committed(block.file.id, block.index, block.version)? {
            return Ok(true);
        }
        let dropped = {
            let mut index = self.lock();
            match index.get_mut(&key(&block)) {
                Some(held) if held.current.descriptor.version == block.version => held.older.take(),
                _ => None,
            }
        };
        let Some(older) = dropped else { return Ok(false) };
        let path = self.path_of(block.file.id, block.index).with_extension("prev");
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::Io { path, source: e }),
        }
        self.release(older.file_bytes);
        Ok(true)
    }

    /// The configured capacity.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes taken (committed replicas and writes in progress).
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Bytes free.
    pub fn free(&self) -> u64 {
        self.capacity.saturating_sub(self.used())
    }

    fn reserve(&self, bytes: u64) -> Result<(), StoreError> {
        let mut current = self.used.load(Ordering::Relaxed);
        loop {
            if current + bytes > self.capacity {
                return Err(StoreError::Full {
                    needed: bytes,
                    free: self.capacity.saturating_sub(current),
                    capacity: self.capacity,
                });
            }
            match self.used.compare_exchange(
                current,
                current + bytes,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(actual) => current = actual,
            }
        }
    }

    fn release(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Starts writing `descriptor` (the version the write lease granted) from version
    /// `base` (the block's committed version then). With `keep_existing`, the copy at `base`
    /// is the starting point, for writes that overwrite part of a block, and a replica
    /// without it refuses: the write is a delta over it. Without, the block starts empty.
    pub fn begin_write(
        self: &Arc<Self>,
        descriptor: BlockDescriptor,
        base: BlockVersion,
        block_size: u32,
        keep_existing: bool,
    ) -> Result<BlockWrite, StoreError> {
        // The base is committed (the lease was granted from it): a delta at it is folded
        // now, so that it can be moved aside whole.
        self.fold_committed(descriptor.file.id, descriptor.index, base)?;
        let seed = if keep_existing {
            match self.copy_at(descriptor.file.id, descriptor.index, base) {
                Some(copy) => Some(copy),
                // Never written: the block is zeros, nothing to start from.
                None if base == BlockVersion::UNWRITTEN => None,
                None => {
                    return Err(StoreError::NoBase {
                        block: descriptor,
                        base: base.0,
                        held: self.versions_held(descriptor.file.id, descriptor.index),
                    });
                }
            }
        } else {
            None
        };
        let final_path = self.path_of(descriptor.file.id, descriptor.index);
        let shard = final_path.parent().expect("a shard directory").to_path_buf();
        if !shard.is_dir() {
            fs::create_dir_all(&shard).map_err(io_err(&shard))?;
            // A new shard's name is durable only once its parent is synced: before, a crash
            // could lose the directory and every replica committed into it.
            self.sync_dir(&self.dir)?;
        }
        let delta = match seed {
            None => None,
            Some((_, path)) => {
                let file = File::open(&path).map_err(io_err(&path))?;
                let header = Header::read(&file, &path)?;
                if header.descriptor.version != base || header.delta.is_some() {
                    // Moved by a concurrent commit between the lookup and the open.
                    return Err(StoreError::Overtaken {
                        block: descriptor,
                        held: header.descriptor.version.0,
                    });
                }
                if header.block_size != block_size {
                    return Err(StoreError::BadFile {
                        path,
                        reason: "block size changed between versions".into(),
                    });
                }
                Some(DeltaWrite { file, path, header })
            }
        };
        let data_at = match delta {
            None => data_offset(block_size),
            Some(_) => delta_data_offset(block_size),
        };
        // The header now, the data as it comes (BlockWrite::grow): a write that never sends
        // its data holds no room for it.
        let reserve = data_at;
        self.reserve(reserve)?;
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        let tmp = final_path.with_extension(format!("v{}.{n}.tmp", descriptor.version.0));
        let segment_count = segments(block_size) as usize;
        let file = File::options()
            .create_new(true)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(&tmp));
        let file = match file {
            Ok(file) => file,
            Err(e) => {
                self.release(reserve);
                return Err(e);
            }
        };
        let (len, crcs) = match &delta {
            Some(d) => (d.header.len, d.header.crcs.clone()),
            None => (0, vec![0; segment_count]),
        };
        Ok(BlockWrite {
            store: Arc::clone(self),
            descriptor,
            base,
            block_size,
            final_path,
            tmp,
            file: Some(file),
            data_at,
            len,
            crcs,
            dirty: vec![false; segment_count],
            present: vec![false; segment_count],
            delta,
            reserved: reserve,
            done: false,
        })
    }

    /// If the newest copy of block `index` of `file` is a delta at `version`, which the
    /// meta-servers committed, folds it into its base copy. Whether it folded.
    fn fold_committed(
        &self,
        file: FileId,
        index: u16,
        version: BlockVersion,
    ) -> Result<bool, StoreError> {
        let mut held_index = self.lock();
        let Some(held) = held_index.get_mut(&(file.0, index)) else { return Ok(false) };
        if held.current.descriptor.version != version || held.current.base.is_none() {
            return Ok(false);
        }
        let Some(older) = held.older.take() else {
            // Kept only with its base (open() and set_aside() see to that).
            return Err(StoreError::BadFile {
                path: self.path_of(file, index),
                reason: "a delta without its base copy".into(),
            });
        };
        // The index stays locked: no write of this block moves its copies meanwhile, and
        // readers of the base version find it gone (its segments are being written over).
        let blk = self.path_of(file, index);
        let marker = blk.with_extension("fold");
        File::create(&marker).and_then(|m| m.sync_all()).map_err(io_err(&marker))?;
        let shard = blk.parent().expect("a shard directory").to_path_buf();
        self.sync_dir(&shard)?;
        let delta = held.current;
        let folded = match fold_files(&blk, &blk.with_extension("prev"), &marker) {
            Ok(folded) => folded,
            Err(e) => {
                held.older = Some(older);
                return Err(e);
            }
        };
        held.current = folded;
        drop(held_index);
        self.used.fetch_add(folded.file_bytes, Ordering::Relaxed);
        self.release(delta.file_bytes + older.file_bytes);
        Ok(true)
    }

    /// Reads the whole segments covering `offset..offset + len` of the replica of
    /// `descriptor` (which must be the version held), checking every segment.
    pub fn read(
        &self,
        descriptor: BlockDescriptor,
        offset: u64,
        len: u64,
    ) -> Result<SegmentRead, StoreError> {
        self.read_from(descriptor, offset, len, false)
    }

    /// [`BlockStore::read`] from the disk itself: the range's cached pages are dropped
    /// first (`POSIX_FADV_DONTNEED`; the replica was fsynced when committed, so none is
    /// dirty), so that the checksums check what the disk holds. The scrubber's read.
    pub fn read_cold(
        &self,
        descriptor: BlockDescriptor,
        offset: u64,
        len: u64,
    ) -> Result<SegmentRead, StoreError> {
        self.read_from(descriptor, offset, len, true)
    }

    fn read_from(
        &self,
        descriptor: BlockDescriptor,
        offset: u64,
        len: u64,
        cold: bool,
    ) -> Result<SegmentRead, StoreError> {
        // A commit may move the copy between the lookup and the open: look again then.
        let mut attempts = 0;
        let (file, path, header, base) = loop {
            attempts += 1;
            let Some((info, path)) =
                self.copy_at(descriptor.file.id, descriptor.index, descriptor.version)
            else {
                return Err(match self.get(descriptor.file.id, descriptor.index) {
                    None => StoreError::NotFound(descriptor),
                    Some(held) => StoreError::WrongVersion {
                        asked: descriptor,
                        held: held.descriptor.version.0,
                    },
                });
            };
            if offset.checked_add(len).is_none_or(|end| end > info.len) {
                return Err(StoreError::OutOfRange {
                    block: descriptor,
                    offset,
                    len,
                    limit: info.len,
                });
            }
            let opened = File::open(&path).map_err(io_err(&path)).and_then(|file| {
                let header = Header::read(&file, &path)?;
                // A delta reads the segments it lacks from its base copy, opened now: a fold
                // only ever writes over the base's segments the delta holds.
                let base = match &header.delta {
                    None => None,
                    Some(delta) => {
                        let base_path = path.with_extension("prev");
                        let base = File::open(&base_path).map_err(io_err(&base_path))?;
                        let base_header = Header::read(&base, &base_path)?;
                        if base_header.descriptor.version != delta.base
                            || base_header.delta.is_some()
                        {
                            return Err(StoreError::Io {
                                path: base_path,
                                source: io::Error::other("the base copy moved"),
                            });
                        }
                        Some((base, base_header))
                    }
                };
                Ok((file, header, base))
            });
            match opened {
                Ok((file, header, base)) if header.descriptor.version == descriptor.version => {
                    break (file, path, header, base);
                }
                Ok(_) | Err(StoreError::Io { .. } | StoreError::BadFile { .. }) if attempts < 3 => {
                    continue;
                }
                Ok((_, header, _)) => {
                    return Err(StoreError::WrongVersion {
                        asked: descriptor,
                        held: header.descriptor.version.0,
                    });
                }
                Err(err) => return Err(err),
            }
        };
        // The header is the file's own word on its length: the range must be inside it too.
        if offset + len > header.len {
            return Err(StoreError::OutOfRange {
                block: descriptor,
                offset,
                len,
                limit: header.len,
            });
        }
        let first = offset / SEGMENT_BYTES;
        let last = if len == 0 { first } else { (offset + len - 1) / SEGMENT_BYTES };
        let start = first * SEGMENT_BYTES;
        let end = ((last + 1) * SEGMENT_BYTES).min(header.len);
        let mut data = vec![0u8; end.saturating_sub(start) as usize];
        // Runs of segments from one file: this replica's, or for a delta its base's.
        let mut run_start = first;
        while run_start <= last && run_start * SEGMENT_BYTES < end {
            let in_delta = |s: u64| header.delta.as_ref().is_none_or(|d| d.present[s as usize]);
            let here = in_delta(run_start);
            let mut run_end = run_start + 1;
            while run_end <= last && in_delta(run_end) == here {
                run_end += 1;
            }
            let from = run_start * SEGMENT_BYTES;
            let to = (run_end * SEGMENT_BYTES).min(end);
            let buf = &mut data[(from - start) as usize..(to - start) as usize];
            let (source, source_path, at) = match (&base, here) {
                (Some((base, base_header)), false) => {
                    (base, path.with_extension("prev"), base_header.data_offset() + from)
                }
                _ => (&file, path.clone(), header.data_offset() + from),
            };
            if cold {
                let advice = nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED;
                // Advice only: where it fails the read still checks what it gets.
                let _ = nix::fcntl::posix_fadvise(source, at as i64, buf.len() as i64, advice);
            }
            source.read_exact_at(buf, at).map_err(io_err(&source_path))?;
            run_start = run_end;
        }
        let upto = (last as usize + 1).min(header.crcs.len());
        let crcs = header.crcs.get(first as usize..upto).unwrap_or_default().to_vec();
        let read = SegmentRead {
            descriptor: header.descriptor,
            block_len: header.len,
            first_segment: first as u32,
            crcs,
            data,
        };
        if let Err(segment) = read.verify() {
            // A copy dropped or folded while it was read is no longer this version's: that
            // is a moved copy, not a damaged one.
            if self.copy_at(descriptor.file.id, descriptor.index, descriptor.version).is_none() {
                let held = self.get(descriptor.file.id, descriptor.index);
                return Err(match held {
                    None => StoreError::NotFound(descriptor),
                    Some(h) => {
                        StoreError::WrongVersion { asked: descriptor, held: h.descriptor.version.0 }
                    }
                });
            }
            return Err(StoreError::Corrupt { block: descriptor, segment });
        }
        Ok(read)
    }

    /// Re-reads a replica whole and checks every segment (the scrubber's step).
    pub fn verify(&self, descriptor: BlockDescriptor) -> Result<(), StoreError> {
        let (info, _) = self
            .copy_at(descriptor.file.id, descriptor.index, descriptor.version)
            .ok_or(StoreError::NotFound(descriptor))?;
        self.read(descriptor, 0, info.len).map(|_| ())
    }

    /// Deletes the replica of `block` if its newest copy is at exactly that version (and
    /// the copy it was written from with it): the leader's garbage collection, which must not
    /// take a copy that arrived after it decided. Whether anything was deleted.
    pub fn remove_version(&self, block: BlockDescriptor) -> Result<bool, StoreError> {
        let held = {
            let mut index = self.lock();
            match index.get(&key(&block)) {
                Some(h) if h.current.descriptor.version == block.version => {
                    index.remove(&key(&block))
                }
                _ => None,
            }
        };
        let Some(held) = held else { return Ok(false) };
        self.delete_files(block.file.id, block.index, held)
    }

    /// Deletes the files of `held`, which has left the index, and frees its bytes.
    fn delete_files(&self, file: FileId, index: u16, held: Held) -> Result<bool, StoreError> {
        let path = self.path_of(file, index);
        for path in [path.with_extension("fold"), path.with_extension("prev"), path] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::Io { path, source: e }),
            }
        }
        self.release(held.bytes());
        Ok(true)
    }

    /// Sets the copy of `block` at its version aside as damaged (renamed `.bad`, never
    /// served again). If that was the newest copy and an older one is kept beside it, the
    /// older one becomes the replica. Whether a copy was set aside.
    pub fn set_aside(&self, block: BlockDescriptor) -> Result<bool, StoreError> {
        let path = self.path_of(block.file.id, block.index);
        let older_path = path.with_extension("prev");
        let aside = path.with_extension("bad");
        let mut index = self.lock();
        let Some(held) = index.get_mut(&key(&block)) else { return Ok(false) };
        let freed = if held.current.descriptor.version == block.version {
            fs::rename(&path, &aside).map_err(io_err(&path))?;
            let freed = held.current.file_bytes;
            match held.older.take() {
                Some(older) => {
                    fs::rename(&older_path, &path).map_err(io_err(&older_path))?;
                    held.current = older;
                }
                None => {
                    index.remove(&key(&block));
                }
            }
            freed
        } else if let Some(older) = held.older.filter(|o| o.descriptor.version == block.version) {
            fs::rename(&older_path, &aside).map_err(io_err(&older_path))?;
            held.older = None;
            if held.current.base.is_some() {
                // A delta over the damaged copy cannot be read whole either.
                let delta = held.current.file_bytes;
                fs::remove_file(&path).map_err(io_err(&path))?;
                index.remove(&key(&block));
                older.file_bytes + delta
            } else {
                older.file_bytes
            }
        } else {
            return Ok(false);
        };
        drop(index);
        self.damaged().insert(key(&block));
        self.release(freed);
        Ok(true)
    }

    /// Deletes the replica of block `index` of `file` (any version).
    pub fn remove(&self, file: FileId, index: u16) -> Result<bool, StoreError> {
        let Some(held) = self.lock().remove(&(file.0, index)) else { return Ok(false) };
        self.delete_files(file, index, held)
    }
}

/// Writes the segments delta `blk` holds over its base copy `base` in place, makes the base
/// format 1 of the delta's version, renames it over the delta and removes `marker` (made
/// durable by the caller before, so that a restart finishes a fold this one leaves cut).
/// Redone from the start, it gives the same file.
fn fold_files(blk: &Path, base: &Path, marker: &Path) -> Result<BlockInfo, StoreError> {
    let delta_file = File::open(blk).map_err(io_err(blk))?;
    let header = Header::read(&delta_file, blk)?;
    let Some(delta) = &header.delta else {
        return Err(StoreError::BadFile { path: blk.to_path_buf(), reason: "not a delta".into() });
    };
    let into = File::options().read(true).write(true).open(base).map_err(io_err(base))?;
    let full_at = data_offset(header.block_size);
    let mut buf = vec![0u8; SEGMENT_BYTES as usize];
    for segment in (0..header.crcs.len()).filter(|&s| delta.present[s]) {
        let start = segment as u64 * SEGMENT_BYTES;
        let n = header.len.saturating_sub(start).min(SEGMENT_BYTES) as usize;
        if n == 0 {
            continue;
        }
        delta_file
            .read_exact_at(&mut buf[..n], header.data_offset() + start)
            .map_err(io_err(blk))?;
        if crc32fast::hash(&buf[..n]) != header.crcs[segment] {
            return Err(StoreError::Corrupt { block: header.descriptor, segment: segment as u32 });
        }
        into.write_all_at(&buf[..n], full_at + start).map_err(io_err(base))?;
    }
    let full = Header { delta: None, ..header.clone() };
    into.write_all_at(&full.encode(), 0).map_err(io_err(base))?;
    into.set_len(full_at + full.len).map_err(io_err(base))?;
    into.sync_all().map_err(io_err(base))?;
    fs::rename(base, blk).map_err(io_err(base))?;
    sync_dir(blk.parent().expect("a shard directory"))?;
    match fs::remove_file(marker) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(StoreError::Io { path: marker.to_path_buf(), source: e }),
    }
    Ok(BlockInfo::of(&full))
}

/// The base copy a delta is written over, open for the write.
#[derive(Debug)]
struct DeltaWrite {
    file: File,
    path: PathBuf,
    header: Header,
}

/// A write in progress to a temporary copy of one block. Dropped without
/// [`BlockWrite::commit`], it leaves nothing behind.
#[derive(Debug)]
pub struct BlockWrite {
    store: Arc<BlockStore>,
    descriptor: BlockDescriptor,
    /// The committed version the write started from.
    base: BlockVersion,
    block_size: u32,
    final_path: PathBuf,
    tmp: PathBuf,
    file: Option<File>,
    /// Where the block's data starts in the file.
    data_at: u64,
    len: u64,
    crcs: Vec<u32>,
    /// Segments written since their checksum was last computed.
    dirty: Vec<bool>,
    /// For a delta: the segments it holds (copied from the base when first touched).
    present: Vec<bool>,
    delta: Option<DeltaWrite>,
    reserved: u64,
    done: bool,
}

impl BlockWrite {
    fn file(&self) -> &File {
        self.file.as_ref().expect("open until commit or drop")
    }

    /// Reserves room for the block's first `len` bytes, if not yet reserved (a full copy).
    fn grow(&mut self, len: u64) -> Result<(), StoreError> {
        let want = self.data_at + len;
        if want > self.reserved {
            self.store.reserve(want - self.reserved)?;
            self.reserved = want;
        }
        Ok(())
    }

    /// A delta takes segment `segment` in: room for it, and the base's bytes of it unless
    /// the write `from..to` covers all of them.
    fn take_segment(&mut self, segment: u64, from: u64, to: u64) -> Result<(), StoreError> {
        if self.present[segment as usize] {
            return Ok(());
        }
        let Some(delta) = &self.delta else { return Ok(()) };
        let start = segment * SEGMENT_BYTES;
        let n = delta.header.len.saturating_sub(start).min(SEGMENT_BYTES);
        let covered = from <= start && to >= start + n;
        let mut copy = Vec::new();
        if n > 0 && !covered {
            copy = vec![0u8; n as usize];
            let at = delta.header.data_offset() + start;
            delta.file.read_exact_at(&mut copy, at).map_err(io_err(&delta.path))?;
            if crc32fast::hash(&copy) != delta.header.crcs[segment as usize] {
                return Err(StoreError::Corrupt {
                    block: delta.header.descriptor,
                    segment: segment as u32,
                });
            }
        }
        self.store.reserve(SEGMENT_BYTES)?;
        self.reserved += SEGMENT_BYTES;
        if !copy.is_empty() {
            self.file().write_all_at(&copy, self.data_at + start).map_err(io_err(&self.tmp))?;
        }
        self.present[segment as usize] = true;
        self.dirty[segment as usize] = true;
        Ok(())
    }

    /// Writes `data` at `offset` of the block.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        let end = offset.saturating_add(data.len() as u64);
        if end > u64::from(self.block_size) {
            return Err(StoreError::OutOfRange {
                block: self.descriptor,
                offset,
                len: data.len() as u64,
                limit: u64::from(self.block_size),
            });
        }
        if data.is_empty() {
            return Ok(());
        }
        // Bytes between the old end and `offset` (if any) read as zeros: their segments
        // change too.
        let first = (offset / SEGMENT_BYTES).min(self.len / SEGMENT_BYTES);
        let last = (end - 1) / SEGMENT_BYTES;
        if self.delta.is_some() {
            for segment in first..=last {
                self.take_segment(segment, offset, end)?;
            }
        } else {
            self.grow(end)?;
        }
        let at = self.data_at + offset;
        self.file().write_all_at(data, at).map_err(|e| {
            if e.raw_os_error() == Some(28) {
                // ENOSPC: the disk itself is full, whatever the configured capacity says.
                StoreError::Full {
                    needed: data.len() as u64,
                    free: 0,
                    capacity: self.store.capacity,
                }
            } else {
                StoreError::Io { path: self.tmp.clone(), source: e }
            }
        })?;
        for segment in first..=last {
            self.dirty[segment as usize] = true;
        }
        self.len = self.len.max(end);
        Ok(())
    }

    /// Bytes written so far (the block's valid length).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Makes the write durable and visible: checksums, fsync, rename over the replica,
    /// directory fsync. Only then may the write be acknowledged.
    pub fn commit(mut self) -> Result<BlockInfo, StoreError> {
        let mut buf = vec![0u8; SEGMENT_BYTES as usize];
        for segment in 0..self.crcs.len() {
            let start = segment as u64 * SEGMENT_BYTES;
            if !self.dirty[segment] && start < self.len {
                continue;
            }
            let n = self.len.saturating_sub(start).min(SEGMENT_BYTES) as usize;
            if n == 0 {
                self.crcs[segment] = 0;
                continue;
            }
            let at = self.data_at + start;
            self.file().read_exact_at(&mut buf[..n], at).map_err(io_err(&self.tmp))?;
            self.crcs[segment] = crc32fast::hash(&buf[..n]);
        }
        let delta =
            self.delta.as_ref().map(|_| Delta { base: self.base, present: self.present.clone() });
        let header = Header {
            descriptor: self.descriptor,
            block_size: self.block_size,
            len: self.len,
            crcs: self.crcs.clone(),
            delta,
        };
        self.file().write_all_at(&header.encode(), 0).map_err(io_err(&self.tmp))?;
        // The file's length covers the data even if its tail was never written.
        self.file().set_len(self.data_at + self.len).map_err(io_err(&self.tmp))?;
        self.file().sync_all().map_err(io_err(&self.tmp))?;
        let info = BlockInfo::of(&header);
        let file_bytes = info.file_bytes;
        let is_delta = self.delta.is_some();
        let older_path = self.final_path.with_extension("prev");
        let freed = {
            // The index stays locked while the files move, so that commits of one block
            // (and readers' lookups) see the copies and the index agree.
            let mut index = self.store.lock();
            let before = index.get(&key(&self.descriptor)).copied();
            let mut freed = 0;
            let mut moved_base = false;
            let no_base = StoreError::NoBase {
                block: self.descriptor,
                base: self.base.0,
                held: "another copy (the base moved while the write was made)".into(),
            };
            let older = match before {
                None if is_delta => return Err(no_base),
                None => None,
                Some(held) => {
                    let version = held.current.descriptor.version;
                    if version != self.base && version.is_newer_than(self.descriptor.version) {
                        return Err(StoreError::Overtaken {
                            block: self.descriptor,
                            held: version.0,
                        });
                    }
                    if version == self.base {
                        if held.current.base.is_some() {
                            // A delta cannot be moved aside without its own base; begin_write
                            // folded it, so another write of this version landed meanwhile.
                            return Err(StoreError::Overtaken {
                                block: self.descriptor,
                                held: version.0,
                            });
                        }
                        // The base copy stays readable until the new version is committed.
                        fs::rename(&self.final_path, &older_path).map_err(io_err(&older_path))?;
                        moved_base = true;
                        freed += held.older.map_or(0, |o| o.file_bytes);
                        Some(held.current)
                    } else if held.older.is_some_and(|o| o.descriptor.version == self.base) {
                        // `current` was written but never committed: replaced below.
                        freed += held.current.file_bytes;
                        held.older
                    } else if is_delta {
                        return Err(no_base);
                    } else {
                        // Neither copy is the base (a whole-block write): both go.
                        if let Some(o) = held.older {
                            fs::remove_file(&older_path).map_err(io_err(&older_path))?;
                            freed += o.file_bytes;
                        }
                        freed += held.current.file_bytes;
                        None
                    }
                }
            };
            if let Err(e) = fs::rename(&self.tmp, &self.final_path) {
                // The index still names the base copy at the replica's path: put it back
                // there, so that it stays readable (the write fails, and its reservation
                // goes with it when it is dropped).
                if moved_base && let Err(back) = fs::rename(&older_path, &self.final_path) {
                    warn!("putting {} back: {back}", older_path.display());
                }
                return Err(StoreError::Io { path: self.final_path.clone(), source: e });
            }
            self.done = true;
            index.insert(key(&self.descriptor), Held { current: info, older });
            freed
        };
        // The reservation becomes the file's real size; replaced copies' bytes are free.
        self.store.release(self.reserved);
        self.store.used.fetch_add(file_bytes, Ordering::Relaxed);
        self.store.release(freed);
        if self.store.damaged().remove(&key(&self.descriptor)) {
            let bad = self.final_path.with_extension("bad");
            match fs::remove_file(&bad) {
                Ok(()) => info!("deleted the damaged copy of {} it replaces", self.descriptor),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => warn!("deleting {}: {e}", bad.display()),
            }
        }
        let shard = self.final_path.parent().expect("a shard directory");
        self.store.sync_dir(shard)?;
        Ok(info)
    }
}

impl Drop for BlockWrite {
    fn drop(&mut self) {
        if !self.done {
            self.file = None;
            let _ = fs::remove_file(&self.tmp);
            self.store.release(self.reserved);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use meshfs_test_kit::TempDir;

    const BLOCK: u32 = 1024 * 1024;

    fn desc(file: u32, index: u16, version: u16) -> BlockDescriptor {
        BlockDescriptor {
            file: FileDescriptor { id: FileId(file), version: 1 },
            index,
            version: BlockVersion(version),
        }
    }

    /// Test data. Not the test kit's generator: `testdata/block-format1.blk` holds these
    /// very bytes, so they stay as they were when it was written.
    fn bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// A block file's bytes are frozen (format 1), and a file written by an earlier build
    /// is still read: the golden file, put in a fresh store, serves its data back.
    #[test]
    fn golden_block_file_is_written_and_still_read() {
        let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/block-format1.blk");
        let relative = Path::new("blocks/07/00000007-0003.blk");
        let data = bytes(70_000, 9);
        let dir = TempDir::new("blocks-golden");
        let store = Arc::new(BlockStore::open(dir.path(), 1 << 30).unwrap());
        write(&store, desc(7, 3, 2), &data);
        drop(store);
        let written = fs::read(dir.join(relative)).unwrap();
        meshfs_test_kit::golden::check_bytes(&golden, &written);

        let old = TempDir::new("blocks-old");
        fs::create_dir_all(old.join("blocks/07")).unwrap();
        fs::write(old.join(relative), meshfs_test_kit::golden::read(&golden)).unwrap();
        let store = BlockStore::open(old.path(), 1 << 30).unwrap();
        let info = store.get(FileId(7), 3).expect("the old file is found");
        assert_eq!(info.descriptor, desc(7, 3, 2));
        assert_eq!(store.read(desc(7, 3, 2), 0, 70_000).unwrap().data, data);
    }

    #[test]
    fn removal_by_version_and_setting_aside_never_take_the_wrong_copy() {
        let dir = TempDir::new("remove-version");
        let store = Arc::new(BlockStore::open(dir.path(), 1 << 30).unwrap());
        write(&store, desc(7, 0, 2), &bytes(5000, 1));
        assert!(!store.remove_version(desc(7, 0, 1)).unwrap(), "another version stays");
        assert!(store.get(FileId(7), 0).is_some());
        assert!(store.remove_version(desc(7, 0, 2)).unwrap());
        assert!(store.get(FileId(7), 0).is_none());
        assert_eq!(store.used(), 0);
        // Damaged newest copy with an older one beside it: the older one is the replica now.
        write(&store, desc(8, 0, 2), &bytes(5000, 2));
        let mut w = store.begin_write(desc(8, 0, 3), BlockVersion(2), BLOCK, true).unwrap();
        w.write_at(0, &bytes(10, 3)).unwrap();
        w.commit().unwrap();
        assert!(store.set_aside(desc(8, 0, 3)).unwrap());
        assert_eq!(store.get(FileId(8), 0).unwrap().descriptor.version, BlockVersion(2));
        assert_eq!(store.read(desc(8, 0, 2), 0, 5000).unwrap().data, bytes(5000, 2));
        assert!(store.set_aside(desc(8, 0, 2)).unwrap());
        assert!(store.get(FileId(8), 0).is_none());
        assert!(!store.set_aside(desc(8, 0, 2)).unwrap());
        let bad = store.path_of(FileId(8), 0).with_extension("bad");
        assert!(bad.is_file(), "set aside, not deleted");
        drop(store);
        let store = Arc::new(BlockStore::open(dir.path(), 1 << 30).unwrap());
        assert!(store.get(FileId(8), 0).is_none(), "a set-aside copy is never served again");
        // A good copy committed later (a repair) takes the damaged one's place for good.
        write(&store, desc(8, 0, 2), &bytes(5000, 2));
        assert!(!bad.exists(), "the damaged copy goes once a good one is committed");
    }

    fn write(store: &Arc<BlockStore>, d: BlockDescriptor, data: &[u8]) -> BlockInfo {
        let mut w = store.begin_write(d, BlockVersion::UNWRITTEN, BLOCK, false).unwrap();
        // In odd pieces, as frames would arrive.
        for (i, piece) in data.chunks(77_777).enumerate() {
            w.write_at(i as u64 * 77_777, piece).unwrap();
        }
        w.commit().unwrap()
    }

    /// A new shard directory's name is made durable in its parent before a replica commits
    /// into it; the replica's rename in the shard after.
    #[test]
    fn a_new_shard_is_synced_in_its_parent_before_replicas_commit_into_it() {
        let dir = TempDir::new("shard-sync");
        let store = Arc::new(BlockStore::open(dir.path(), 1 << 30).unwrap());
        let blocks = dir.path().join("blocks");
        write(&store, desc(7, 0, 1), b"first");
        let synced = store.synced_dirs.lock().unwrap().clone();
        let shard = store.path_of(FileId(7), 0).parent().unwrap().to_path_buf();
        assert_eq!(synced, vec![blocks.clone(), shard.clone()], "parent first, then the shard");
        // Another replica in the same shard: only the shard is synced.
        write(&store, desc(7, 1, 1), b"second");
        let synced = store.synced_dirs.lock().unwrap().clone();
        assert_eq!(synced[2..], [shard]);
    }

    /// Offsets and lengths from the wire whose sum passes u64::MAX are refused as out of
    /// range, for reads and for writes, and the store goes on serving.
    #[test]
    fn ranges_that_wrap_past_u64_max_are_out_of_range() {
        let dir = TempDir::new("wrap");
        let store = Arc::new(BlockStore::open(dir.path(), 1 << 30).unwrap());
        let data = bytes(100_000, 3);
        write(&store, desc(9, 0, 1), &data);
        for (offset, len) in [(u64::MAX, 1), (u64::MAX - 10, 1000), (1, u64::MAX), (u64::MAX, 0)] {
            let read = store.read(desc(9, 0, 1), offset, len);
            assert!(matches!(read, Err(StoreError::OutOfRange { .. })), "{offset}+{len}");
        }
        let mut w =
            store.begin_write(desc(9, 1, 1), BlockVersion::UNWRITTEN, BLOCK, false).unwrap();
        for offset in [u64::MAX, u64::MAX - 3, u64::MAX - u64::from(BLOCK)] {
            let wrote = w.write_at(offset, &[7; 16]);
            assert!(matches!(wrote, Err(StoreError::OutOfRange { .. })), "{offset}");
        }
        w.write_at(0, &data).unwrap();
        assert_eq!(w.commit().unwrap().len, 100_000);
        assert_eq!(store.read(desc(9, 0, 1), 0, 100_000).unwrap().data, data);
    }

    #[test]
    fn a_block_round_trips_and_carries_its_checksums() {
        let dir = TempDir::new("roundtrip");
        let store = Arc::new(BlockStore::open(dir.path(), 1 << 30).unwrap());
        let data = bytes(300_000, 1);
        let info = write(&store, desc(7, 3, 1), &data);
        assert_eq!(info.len, 300_000);
        let read = store.read(desc(7, 3, 1), 70_000, 100_000).unwrap();
        assert_eq!(read.slice(70_000, 100_000), &data[70_000..170_000]);
        assert_eq!(read.first_segment, 1);
        assert_eq!(read.crcs.len(), 2, "segments 1 and 2 cover 70,000..170,000");
        assert_eq!(read.verify(), Ok(()));
        // The whole block, to its last (short) segment.
        let all = store.read(desc(7, 3, 1), 0, 300_000).unwrap();
        assert_eq!(all.data, data);
        assert_eq!(all.crcs.len(), 5);
        // It survives a reopen, and is reported.
        drop(store);
        let store = Arc::new(BlockStore::open(dir.path(), 1 << 30).unwrap());
        assert_eq!(store.list(), vec![info]);
        assert_eq!(store.read(desc(7, 3, 1), 0, 300_000).unwrap().data, data);
        assert!(matches!(
            store.read(desc(7, 3, 2), 0, 1),
            Err(StoreError::WrongVersion { held: 1, .. })
        ));
        assert!(matches!(
            store.read(desc(7, 3, 1), 299_999, 2),
            Err(StoreError::OutOfRange { .. })
        ));
        assert!(matches!(store.read(desc(7, 4, 1), 0, 1), Err(StoreError::NotFound(_))));
    }

    #[test]
    fn a_flipped_byte_on_disk_is_detected_and_never_served() {
        let dir = TempDir::new("flip");
        let store = Arc::new(BlockStore::open(dir.path(), 1 << 30).unwrap());
        let data = bytes(200_000, 2);
        write(&store, desc(9, 0, 1), &data);
        let path = store.path_of(FileId(9), 0);
        let file = File::options().write(true).open(&path).unwrap();
        let at = data_offset(BLOCK) + 150_000; // in segment 2
        file.write_all_at(&[data[150_000] ^ 0x20], at).unwrap();
        drop(file);
        match store.read(desc(9, 0, 1), 140_000, 20_000) {
            Err(StoreError::Corrupt { segment: 2, .. }) => {}
            other => panic!("a damaged segment was served: {other:?}"),
        }
        assert!(store.read(desc(9, 0, 1), 0, 100_000).is_ok(), "undamaged segments still read");
        assert!(matches!(store.verify(desc(9, 0, 1)), Err(StoreError::Corrupt { segment: 2, .. })));
        // A client checking the data it got catches the same damage (end to end).
        let mut read = store.read(desc(9, 0, 1), 0, 100_000).unwrap();
        read.data[5] ^= 1;
        assert_eq!(read.verify(), Err(0));
    }

    #[test]
    fn a_write_cut_by_a_crash_is_found_at_start_up_and_not_served() {
        let dir = TempDir::new("torn");
        let store = Arc::new(BlockStore::open(dir.path(), 1 << 30).unwrap());
        let old = bytes(100_000, 3);
        write(&store, desc(4, 1, 1), &old);
        // Version 2 is half written when the process dies (no commit, no cleanup).
        let mut w = store.begin_write(desc(4, 1, 2), BlockVersion(1), BLOCK, false).unwrap();
        w.write_at(0, &bytes(500_000, 4)).unwrap();
        std::mem::forget(w);
        drop(store);
        let store = Arc::new(BlockStore::open(dir.path(), 1 << 30).unwrap());
        // The half-written copy is gone; the committed version is what is served.
        assert_eq!(store.list().len(), 1);
        assert_eq!(store.get(FileId(4), 1).unwrap().descriptor.version, BlockVersion(1));
        assert_eq!(store.read(desc(4, 1, 1), 0, 100_000).unwrap().data, old);
        let leftovers = fs::read_dir(dir.path().join("blocks/04")).unwrap().count();
        assert_eq!(leftovers, 1, "only the committed replica file remains");
    }

    #[test]
    fn a_new_version_replaces_the_old_only_when_committed() {
        let dir = TempDir::new("cow");
        let store = Arc::new(BlockStore::open(dir.path(), 1 << 30).unwrap());
        let v2 = bytes(200_000, 5);
        write(&store, desc(2, 0, 2), &v2);
        // Overwrite 10,000 bytes in the middle under version 3, keeping the rest.
        let mut w = store.begin_write(desc(2, 0, 3), BlockVersion(2), BLOCK, true).unwrap();
        let patch = bytes(10_000, 6);
        w.write_at(100_000, &patch).unwrap();
        // Until the commit, readers see version 2, whole and good.
        assert_eq!(store.read(desc(2, 0, 2), 0, 200_000).unwrap().data, v2);
        w.commit().unwrap();
        let mut v3 = v2.clone();
        v3[100_000..110_000].copy_from_slice(&patch);
        assert_eq!(store.read(desc(2, 0, 3), 0, 200_000).unwrap().data, v3);
        // Until the meta-servers commit version 3, version 2 stays readable too.
        assert_eq!(store.read(desc(2, 0, 2), 0, 200_000).unwrap().data, v2);
        assert_eq!(store.list().len(), 1, "reports name the newest copy only");
        assert!(store.committed(desc(2, 0, 3)).unwrap());
        assert!(matches!(
            store.read(desc(2, 0, 2), 0, 1),
            Err(StoreError::WrongVersion { held: 3, .. })
        ));
        assert!(!store.committed(desc(2, 0, 3)).unwrap(), "nothing left to drop");
        // Writing past the end leaves zeros in between, checksummed.
        let mut w = store.begin_write(desc(2, 0, 4), BlockVersion(3), BLOCK, true).unwrap();
        w.write_at(400_000, b"tail").unwrap();
        w.commit().unwrap();
        let read = store.read(desc(2, 0, 4), 0, 400_004).unwrap();
        assert!(read.data[200_000..400_000].iter().all(|&b| b == 0));
        assert_eq!(&read.data[400_000..], b"tail");
    }

    #[test]
    fn a_partial_write_starts_from_the_committed_version_or_is_refused() {
        let dir = TempDir::new("base");
        let store = Arc::new(BlockStore::open(dir.path(), 1 << 30).unwrap());
        let v2 = bytes(100_000, 10);
        write(&store, desc(6, 0, 2), &v2);
        // A replica that missed version 3 cannot make version 4 from it.
        let err = store.begin_write(desc(6, 0, 4), BlockVersion(3), BLOCK, true).unwrap_err();
        assert!(matches!(err, StoreError::NoBase { base: 3, .. }), "{err}");
        assert!(err.to_string().contains("holds version 2"), "{err}");
        assert!(err.to_string().contains("needs repair"), "{err}");
        // Version 3 lands here but is never committed by the meta-servers (a replica after
        // this one failed); the writer's next lease, version 4, starts again from 2.
        let mut w = store.begin_write(desc(6, 0, 3), BlockVersion(2), BLOCK, true).unwrap();
        w.write_at(0, b"abandoned").unwrap();
        w.commit().unwrap();
        let mut w = store.begin_write(desc(6, 0, 4), BlockVersion(2), BLOCK, true).unwrap();
        w.write_at(10, b"retried").unwrap();
        w.commit().unwrap();
        let mut v4 = v2.clone();
        v4[10..17].copy_from_slice(b"retried");
        assert_eq!(store.read(desc(6, 0, 4), 0, 100_000).unwrap().data, v4);
        assert_eq!(store.read(desc(6, 0, 2), 0, 100_000).unwrap().data, v2);
        assert!(matches!(store.read(desc(6, 0, 3), 0, 1), Err(StoreError::WrongVersion { .. })));
        // Both copies survive a restart; so does a commit cut between its two renames.
        drop(store);
        let store = Arc::new(BlockStore::open(dir.path(), 1 << 30).unwrap());
        assert_eq!(store.read(desc(6, 0, 2), 0, 100_000).unwrap().data, v2);
        assert_eq!(store.read(desc(6, 0, 4), 0, 100_000).unwrap().data, v4);
        let used = store.used();
        let path = store.path_of(FileId(6), 0);
        drop(store);
        // As if the process died after moving version 2 aside, before moving version 4 in.
        fs::remove_file(&path).unwrap();
        assert!(path.with_extension("prev").exists());
        let store = Arc::new(BlockStore::open(dir.path(), 1 << 30).unwrap());
        assert_eq!(store.get(FileId(6), 0).unwrap().descriptor.version, BlockVersion(2));
        assert_eq!(store.read(desc(6, 0, 2), 0, 100_000).unwrap().data, v2);
        assert!(store.used() < used, "the lost copy's bytes are not counted");
        assert!(path.exists() && !path.with_extension("prev").exists());
        // A whole-block write needs no base.
        let mut w = store.begin_write(desc(6, 0, 5), BlockVersion(4), BLOCK, false).unwrap();
        w.write_at(0, b"whole").unwrap();
        w.commit().unwrap();
        assert_eq!(store.read(desc(6, 0, 5), 0, 5).unwrap().data, b"whole");
    }

    #[test]
    fn a_full_store_refuses_writes_with_a_clear_error_and_frees_space_on_remove() {
        let dir = TempDir::new("full");
        let per_block = data_offset(BLOCK) + u64::from(BLOCK);
        let store = Arc::new(BlockStore::open(dir.path(), per_block + per_block / 2).unwrap());
        // A full block: what a replica takes is its file's real size.
        write(&store, desc(1, 0, 1), &bytes(BLOCK as usize, 7));
        assert_eq!(store.used(), per_block);
        let used = store.used();
        // Room is taken as the data comes: the header at the start, the rest as written.
        let mut w =
            store.begin_write(desc(1, 1, 2), BlockVersion::UNWRITTEN, BLOCK, false).unwrap();
        assert_eq!(store.used(), used + data_offset(BLOCK));
        w.write_at(0, &[1; 1000]).unwrap();
        assert_eq!(store.used(), used + data_offset(BLOCK) + 1000);
        let err = w.write_at(1000, &bytes(BLOCK as usize - 1000, 3)).unwrap_err();
        assert!(matches!(err, StoreError::Full { .. }), "{err}");
        assert!(err.to_string().contains("no space"), "{err}");
        drop(w);
        assert_eq!(store.used(), used, "a failed write gives back all it took");
        // Writes begun and never fed hold a header's room each, not a block's.
        let idle: Vec<BlockWrite> = (0..100)
            .map(|i| {
                let d = desc(2, i, 1);
                store.begin_write(d, BlockVersion::UNWRITTEN, BLOCK, false).unwrap()
            })
            .collect();
        assert_eq!(store.used(), used + 100 * data_offset(BLOCK));
        drop(idle);
        assert_eq!(store.used(), used);
        assert!(store.remove(FileId(1), 0).unwrap());
        assert_eq!(store.used(), 0);
        let mut w =
            store.begin_write(desc(1, 1, 2), BlockVersion::UNWRITTEN, BLOCK, false).unwrap();
        w.write_at(0, b"fits now").unwrap();
        w.commit().unwrap();
        assert!(!store.remove(FileId(1), 9).unwrap());
    }

    #[test]
    fn a_damaged_replica_file_is_set_aside_at_start_up() {
        let dir = TempDir::new("badheader");
        let store = Arc::new(BlockStore::open(dir.path(), 1 << 30).unwrap());
        write(&store, desc(5, 0, 1), &bytes(1000, 8));
        write(&store, desc(5, 1, 1), &bytes(1000, 9));
        let path = store.path_of(FileId(5), 1);
        drop(store);
        let file = File::options().write(true).open(&path).unwrap();
        file.write_all_at(&[0xff], 10).unwrap(); // inside the header
        drop(file);
        let store = Arc::new(BlockStore::open(dir.path(), 1 << 30).unwrap());
        assert_eq!(store.list().len(), 1, "the damaged replica is not served");
        assert!(path.with_extension("bad").exists(), "it is kept aside for inspection");
    }

    /// On-disk bytes of a replica file (holes not counted).
    fn allocated(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(path).unwrap().blocks() * 512
    }

    /// A few bytes written into a large block cost a segment, not the block: the delta on
    /// disk holds one segment, the count of used bytes says so, a commit folds it into the
    /// base in place, and the bytes read back are right at every step and after a restart.
    #[test]
    fn a_small_write_into_a_large_block_writes_one_segment_and_folds_in_place() {
        let dir = TempDir::new("delta");
        let store = Arc::new(BlockStore::open(dir.path(), 1 << 30).unwrap());
        let v1 = bytes(BLOCK as usize, 21);
        write(&store, desc(3, 0, 1), &v1);
        let full = store.used();
        let path = store.path_of(FileId(3), 0);
        let mut w = store.begin_write(desc(3, 0, 2), BlockVersion(1), BLOCK, true).unwrap();
        w.write_at(300_000, b"five!").unwrap();
        let info = w.commit().unwrap();
        assert_eq!(info.base, Some(BlockVersion(1)));
        assert_eq!(info.file_bytes, delta_data_offset(BLOCK) + SEGMENT_BYTES);
        assert_eq!(store.used(), full + info.file_bytes, "the delta counts one segment");
        assert!(allocated(&path) <= delta_data_offset(BLOCK) + 2 * SEGMENT_BYTES, "sparse");
        let mut v2 = v1.clone();
        v2[300_000..300_005].copy_from_slice(b"five!");
        assert_eq!(store.read(desc(3, 0, 2), 0, u64::from(BLOCK)).unwrap().data, v2);
        assert_eq!(store.read(desc(3, 0, 1), 0, u64::from(BLOCK)).unwrap().data, v1);
        // A range across held and base segments reads as one.
        let part = store.read(desc(3, 0, 2), 250_000, 100_000).unwrap();
        assert_eq!(part.slice(250_000, 100_000), &v2[250_000..350_000]);
        // Delta and base survive a restart, and so does the count of bytes.
        drop(store);
        let store = Arc::new(BlockStore::open(dir.path(), 1 << 30).unwrap());
        assert_eq!(store.used(), full + info.file_bytes);
        assert_eq!(store.read(desc(3, 0, 2), 0, u64::from(BLOCK)).unwrap().data, v2);
        // Committed: folded into the base, one full copy of version 2.
        assert!(store.committed(desc(3, 0, 2)).unwrap());
        assert_eq!(store.get(FileId(3), 0).unwrap().base, None);
        assert!(!path.with_extension("prev").exists() && !path.with_extension("fold").exists());
        assert_eq!(store.used(), full);
        assert_eq!(store.read(desc(3, 0, 2), 0, u64::from(BLOCK)).unwrap().data, v2);
        assert!(matches!(store.read(desc(3, 0, 1), 0, 1), Err(StoreError::WrongVersion { .. })));
        drop(store);
        let store = Arc::new(BlockStore::open(dir.path(), 1 << 30).unwrap());
        assert_eq!(store.read(desc(3, 0, 2), 0, u64::from(BLOCK)).unwrap().data, v2);
        // The next write from a delta the leader never said was committed folds it first;
        // one past the end leaves zeros and holds only the segments it changed.
        let mut w = store.begin_write(desc(3, 0, 3), BlockVersion(2), BLOCK, true).unwrap();
        w.write_at(10, b"x").unwrap();
        w.commit().unwrap();
        let mut w = store.begin_write(desc(3, 0, 4), BlockVersion(3), BLOCK, true).unwrap();
        assert_eq!(store.get(FileId(3), 0).unwrap().base, None, "3 folded at 4's start");
        w.write_at(u64::from(BLOCK) - 3, b"end").unwrap();
        let info = w.commit().unwrap();
        assert_eq!(info.file_bytes, delta_data_offset(BLOCK) + SEGMENT_BYTES);
        let mut v4 = v2.clone();
        v4[10] = b'x';
        v4[BLOCK as usize - 3..].copy_from_slice(b"end");
        assert_eq!(store.read(desc(3, 0, 4), 0, u64::from(BLOCK)).unwrap().data, v4);
    }

    #[test]
    fn a_delta_over_a_short_block_past_its_end_reads_zeros_between() {
        let dir = TempDir::new("delta-grow");
        let store = Arc::new(BlockStore::open(dir.path(), 1 << 30).unwrap());
        let v1 = bytes(100_000, 4);
        write(&store, desc(5, 0, 1), &v1);
        let mut w = store.begin_write(desc(5, 0, 2), BlockVersion(1), BLOCK, true).unwrap();
        w.write_at(500_000, b"far").unwrap();
        w.write_at(50, b"near").unwrap();
        w.commit().unwrap();
        let read = store.read(desc(5, 0, 2), 0, 500_003).unwrap();
        assert_eq!(&read.data[..50], &v1[..50]);
        assert_eq!(&read.data[50..54], b"near");
        assert_eq!(&read.data[54..100_000], &v1[54..]);
        assert!(read.data[100_000..500_000].iter().all(|&b| b == 0));
        assert_eq!(&read.data[500_000..], b"far");
        assert!(store.committed(desc(5, 0, 2)).unwrap());
        assert_eq!(store.read(desc(5, 0, 2), 0, 500_003).unwrap().data, read.data);
    }

    /// A fold cut anywhere after its marker is durable: the base half written over, its
    /// header torn. The restart finishes it.
    #[test]
    fn a_fold_cut_by_a_crash_is_finished_at_start_up() {
        let dir = TempDir::new("fold-crash");
        let store = Arc::new(BlockStore::open(dir.path(), 1 << 30).unwrap());
        let v1 = bytes(400_000, 8);
        write(&store, desc(4, 1, 1), &v1);
        let mut w = store.begin_write(desc(4, 1, 2), BlockVersion(1), BLOCK, true).unwrap();
        w.write_at(70_000, &bytes(70_000, 9)).unwrap();
        w.commit().unwrap();
        let v2 = store.read(desc(4, 1, 2), 0, 400_000).unwrap().data;
        let path = store.path_of(FileId(4), 1);
        drop(store);
        // As if the fold died: marker made, one held segment written over the base, the
        // base's header overwritten with garbage.
        fs::write(path.with_extension("fold"), b"").unwrap();
        let base = File::options().write(true).open(path.with_extension("prev")).unwrap();
        base.write_all_at(&v2[65_536..131_072], data_offset(BLOCK) + 65_536).unwrap();
        base.write_all_at(&[0xee; 40], 0).unwrap();
        drop(base);
        let store = Arc::new(BlockStore::open(dir.path(), 1 << 30).unwrap());
        assert!(!path.with_extension("fold").exists() && !path.with_extension("prev").exists());
        let info = store.get(FileId(4), 1).unwrap();
        assert_eq!((info.descriptor.version, info.base), (BlockVersion(2), None));
        assert_eq!(store.read(desc(4, 1, 2), 0, 400_000).unwrap().data, v2);
        assert_eq!(store.used(), data_offset(BLOCK) + 400_000);
        assert!(store.damaged().is_empty(), "nothing was set aside");
    }

    #[test]
    fn a_delta_whose_base_is_gone_or_damaged_is_not_served() {
        let dir = TempDir::new("delta-orphan");
        let store = Arc::new(BlockStore::open(dir.path(), 1 << 30).unwrap());
        write(&store, desc(6, 0, 1), &bytes(200_000, 1));
        let mut w = store.begin_write(desc(6, 0, 2), BlockVersion(1), BLOCK, true).unwrap();
        w.write_at(5, b"d").unwrap();
        w.commit().unwrap();
        // Its base set aside as damaged: the delta goes with it.
        assert!(store.set_aside(desc(6, 0, 1)).unwrap());
        assert!(store.get(FileId(6), 0).is_none());
        assert_eq!(store.used(), 0);
        // Its base lost on disk: set aside at start-up.
        write(&store, desc(7, 0, 1), &bytes(200_000, 2));
        let mut w = store.begin_write(desc(7, 0, 2), BlockVersion(1), BLOCK, true).unwrap();
        w.write_at(5, b"d").unwrap();
        w.commit().unwrap();
        let path = store.path_of(FileId(7), 0);
        drop(store);
        fs::remove_file(path.with_extension("prev")).unwrap();
        let store = Arc::new(BlockStore::open(dir.path(), 1 << 30).unwrap());
        assert!(store.get(FileId(7), 0).is_none());
        assert!(path.with_extension("bad").exists());
        assert_eq!(store.used(), 0);
        // Damage in a segment the delta takes from its base is found on read.
        write(&store, desc(8, 0, 1), &bytes(200_000, 3));
        let mut w = store.begin_write(desc(8, 0, 2), BlockVersion(1), BLOCK, true).unwrap();
        w.write_at(5, b"d").unwrap();
        w.commit().unwrap();
        let base = store.path_of(FileId(8), 0).with_extension("prev");
        let f = File::options().write(true).open(&base).unwrap();
        f.write_all_at(b"!", data_offset(BLOCK) + 150_000).unwrap();
        drop(f);
        let err = store.read(desc(8, 0, 2), 140_000, 20_000).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { segment: 2, .. }), "{err}");
        assert_eq!(store.read(desc(8, 0, 2), 0, 10).unwrap().data[5], b'd');
        // And by a partial write that would copy it.
        let mut w = store.begin_write(desc(8, 0, 3), BlockVersion(2), BLOCK, true).unwrap();
        let err = w.write_at(140_000, b"x").unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { segment: 2, .. }), "{err}");
    }

    /// A delta's bytes are frozen (format 2), and one written by an earlier build is still
    /// read over its base.
    #[test]
    fn golden_delta_file_is_written_and_still_read() {
        let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/block-format2.blk");
        let base_golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/block-format1.blk");
        let relative = Path::new("blocks/07/00000007-0003.blk");
        let dir = TempDir::new("delta-golden");
        let store = Arc::new(BlockStore::open(dir.path(), 1 << 30).unwrap());
        write(&store, desc(7, 3, 2), &bytes(70_000, 9));
        let mut w = store.begin_write(desc(7, 3, 3), BlockVersion(2), BLOCK, true).unwrap();
        w.write_at(66_000, &bytes(100, 10)).unwrap();
        w.commit().unwrap();
        drop(store);
        let written = fs::read(dir.join(relative)).unwrap();
        meshfs_test_kit::golden::check_bytes(&golden, &written);
        let mut v3 = bytes(70_000, 9);
        v3[66_000..66_100].copy_from_slice(&bytes(100, 10));

        let old = TempDir::new("delta-old");
        fs::create_dir_all(old.join("blocks/07")).unwrap();
        fs::write(old.join(relative), meshfs_test_kit::golden::read(&golden)).unwrap();
        let prev = old.join(relative).with_extension("prev");
        fs::write(&prev, meshfs_test_kit::golden::read(&base_golden)).unwrap();
        let store = BlockStore::open(old.path(), 1 << 30).unwrap();
        let info = store.get(FileId(7), 3).expect("the old delta is found");
        assert_eq!((info.descriptor, info.base), (desc(7, 3, 3), Some(BlockVersion(2))));
        assert_eq!(store.read(desc(7, 3, 3), 0, 70_000).unwrap().data, v3);
    }
}
