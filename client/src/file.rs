//! Files as a program uses them: open, `read_at`, `write_at`, close; and the original
//! design's block calls on top of the same machinery.
//!
//! A [`RemoteFile`] keeps the file's metadata (descriptor, size, blocks and their chains)
//! and refreshes it after each change. `write_at` grows the file when it writes past the end,
//! then takes a write lease per block it touches and writes the touched range only: a
//! partial block starts from the replica's current bytes (copy-on-write on the data-server),
//! so the rest of the block is kept. Reads check every segment's checksum and fall back to
//! the next replica. The block-array calls move up to [`BLOCKS_IN_FLIGHT`] blocks at once,
//! each on its own connections, so different data-servers work in parallel.
//!
//! Open modes ([`OpenMode`], from the original design) hold a lock of a [`Session`] on the
//! file's path while the file is open: "wm" exclusive read/write, "rs" shared read-only,
//! "ws" shared read/write. Any number of "rs" and "ws" opens go together; "wm" goes alone.
//! A conflicting open fails at once, or waits for its turn if asked to.

use meshfs_core::namespace::FileMeta;
use meshfs_core::token::Token;

use crate::access::Access;
use crate::data::{DataClient, WriteReceipt, retry_write};
use crate::error::ClientError;
use crate::meta::MetaClient;
use crate::session::{Lock, LockMode, Session};

/// How a file is opened, and the lock it holds meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// "wm": exclusive read/write; no other open of the file with a mode meanwhile.
    ExclusiveWrite,
    /// "rs": shared read-only.
    SharedRead,
    /// "ws": shared read/write (the writers coordinate among themselves).
    SharedWrite,
}

impl OpenMode {
    /// The original design's name: "wm", "rs" or "ws".
    pub fn name(self) -> &'static str {
        match self {
            OpenMode::ExclusiveWrite => "wm",
            OpenMode::SharedRead => "rs",
            OpenMode::SharedWrite => "ws",
        }
    }

    fn lock_mode(self) -> LockMode {
        match self {
            OpenMode::ExclusiveWrite => LockMode::Exclusive,
            OpenMode::SharedRead | OpenMode::SharedWrite => LockMode::Shared,
        }
    }
}

impl std::str::FromStr for OpenMode {
    type Err = String;

    fn from_str(text: &str) -> Result<OpenMode, String> {
        match text {
            "wm" => Ok(OpenMode::ExclusiveWrite),
            "rs" => Ok(OpenMode::SharedRead),
            "ws" => Ok(OpenMode::SharedWrite),
            other => Err(format!(
                "open mode {other:?}: expected wm (exclusive read/write), rs (shared read-only) \
                 or ws (shared read/write)"
            )),
        }
    }
}

/// Blocks transferred at once by the array calls.
pub const BLOCKS_IN_FLIGHT: usize = 4;

/// An open remote file.
#[derive(Debug)]
pub struct RemoteFile {
    access: Access,
    meta: MetaClient,
    data: DataClient,
    path: String,
    file: FileMeta,
    /// The open mode's lock, held until the file is closed.
    lock: Option<Lock>,
    writable: bool,
    /// This file's own writes moved block versions since `file` was fetched (its size is
    /// kept): fetched again before anything needs the blocks.
    stale: bool,
}

impl RemoteFile {
    /// Opens an existing file.
    pub fn open(access: &Access, path: &str) -> Result<RemoteFile, ClientError> {
        let mut meta = MetaClient::new(access)?;
        let file = meta.get_file_meta_data(path)?;
        Ok(RemoteFile::from_parts(access, meta, DataClient::new(access), path, file))
    }

    /// An open file made of clients already made (and connected) and its metadata as
    /// `meta` just fetched it: a mount keeps a pool of clients rather than dialling the
    /// meta-servers for every open. `meta` acts for whoever it was set to act for.
    /// [`RemoteFile::into_parts`] gives them back.
    pub fn from_parts(
        access: &Access,
        meta: MetaClient,
        data: DataClient,
        path: &str,
        file: FileMeta,
    ) -> RemoteFile {
        RemoteFile {
            access: access.clone(),
            meta,
            data,
            path: path.to_string(),
            file,
            lock: None,
            writable: true,
            stale: false,
        }
    }

    /// The clients this file used, for the next open (the file must hold no open mode's
    /// lock: it is released here, its errors ignored).
    pub fn into_parts(mut self) -> (MetaClient, DataClient) {
        if let Some(lock) = self.lock.take() {
            let _ = lock.unlock();
        }
        (self.meta, self.data)
    }

    /// The path it was opened by (a rename through [`RemoteFile::set_path`] follows it).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The file moved to `path` (renamed by this client's owner): later calls use it.
    pub fn set_path(&mut self, path: &str) {
        self.path = path.to_string();
    }

    /// Opens an existing file in `mode`, holding `session`'s lock on its path until closed.
    /// A conflicting open elsewhere makes it fail at once ([`NsError::LockBusy`]), or with
    /// `wait`, wait up to that long for its turn ([`NsError::LockTimeout`]).
    ///
    /// [`NsError::LockBusy`]: meshfs_core::error::NsError::LockBusy
    /// [`NsError::LockTimeout`]: meshfs_core::error::NsError::LockTimeout
    pub fn open_mode(
        access: &Access,
        session: &Session,
        path: &str,
        mode: OpenMode,
        wait: Option<std::time::Duration>,
    ) -> Result<RemoteFile, ClientError> {
        let lock = session.lock(path, mode.lock_mode(), wait)?;
        let mut file = RemoteFile::open(access, path)?;
        file.lock = Some(lock);
        file.writable = mode != OpenMode::SharedRead;
        Ok(file)
    }

    /// The sequencer of the open mode's lock, if opened with a mode.
    pub fn sequencer(&self) -> Option<u64> {
        self.lock.as_ref().map(Lock::sequencer)
    }

    /// Creates a new, empty file (`replication` 0: the cluster's default) and opens it.
    pub fn create(access: &Access, path: &str, replication: u8) -> Result<RemoteFile, ClientError> {
        MetaClient::new(access)?.create(path, replication)?;
        RemoteFile::open(access, path)
    }

    /// The file's size in bytes.
    pub fn len(&self) -> u64 {
        self.file.size
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.file.size == 0
    }

    /// The file's block size.
    pub fn block_size(&self) -> u64 {
        u64::from(self.file.block_size)
    }

    /// The metadata as last seen.
    pub fn metadata(&self) -> &FileMeta {
        &self.file
    }

    /// Fetches the file's metadata again (another client may have changed it).
    pub fn refresh(&mut self) -> Result<(), ClientError> {
        self.file = self.meta.get_file_meta_data(&self.path)?;
        self.stale = false;
        Ok(())
    }

    /// The blocks as they are after this file's own writes (fetched if those moved them).
    fn fresh(&mut self) -> Result<(), ClientError> {
        if self.stale { self.refresh() } else { Ok(()) }
    }

    /// Fetches the file's blocks again when their read tokens run out within a minute (an
    /// open file may outlive them). The file may have changed meanwhile: this is the file as
    /// it is now, as a re-open would give.
    fn refresh_read_tokens(&mut self) -> Result<(), ClientError> {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let soon = now_ms.saturating_add(60_000);
        if self.file.blocks.iter().any(|b| b.read.is_some_and(|t| t.expires_ms < soon)) {
            self.file = self.meta.get_file_meta_data(&self.path)?;
        }
        Ok(())
    }

    /// Reads up to `buf.len()` bytes at `offset`; returns how many (fewer only at the end).
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, ClientError> {
        self.fresh()?;
        let end = (offset + buf.len() as u64).min(self.file.size);
        let mut at = offset;
        let mut out = Vec::with_capacity(buf.len());
        while at < end {
            let index = at / self.block_size();
            let within = at % self.block_size();
            let n = (self.block_size() - within).min(end - at);
            self.refresh_read_tokens()?;
            let block = &self.file.blocks[index as usize];
            self.data.read_block(block, within, n, &mut out)?;
            for (block, server, reason) in self.data.take_bad_replicas() {
                let _ = self.meta.report_bad_replica(block, server, &reason);
            }
            at += n;
        }
        buf[..out.len()].copy_from_slice(&out);
        Ok(out.len())
    }

    /// Writes `bytes` at `offset`, growing the file if it writes past the end. Returns when
    /// every replica of every block touched has the bytes durably.
    pub fn write_at(&mut self, offset: u64, bytes: &[u8]) -> Result<(), ClientError> {
        if !self.writable {
            return Err(ClientError::ReadOnly(self.path.clone()));
        }
        let end = offset + bytes.len() as u64;
        if end > self.file.size {
            let old = self.file.size;
            self.meta.expand_file_size(&self.path, end)?;
            // A write that starts past the old last block leaves that block's tail to zeros
            // of its own (a write inside it would extend it, zeros between, by itself).
            let bs = self.block_size();
            if offset > old && !old.is_multiple_of(bs) && offset >= (old / bs + 1) * bs {
                self.fill_tail_from(old, offset)?;
            }
        }
        let mut at = offset;
        while at < end {
            let index = self.block_index(at / self.block_size())?;
            let within = at % self.block_size();
            let n = (self.block_size() - within).min(end - at);
            let piece = &bytes[(at - offset) as usize..(at - offset + n) as usize];
            // Keep the rest of the block unless this write covers all of what it holds.
            let whole = within == 0 && n == self.block_size();
            self.write_piece(index, within, piece, !whole)?;
            at += n;
        }
        // The blocks' new versions are fetched when next needed (a read, a truncate), not
        // after every write: a stat is a consensus read.
        self.file.size = self.file.size.max(end);
        self.stale = true;
        Ok(())
    }

    /// `truncate`: the file becomes `size` bytes long. Growing adds holes (they read as
    /// zeros); shrinking first writes zeros over the last kept block's bytes past `size`
    /// (so they read as zeros if the file grows again), then drops the blocks past the end.
    pub fn set_len(&mut self, size: u64) -> Result<(), ClientError> {
        if !self.writable {
            return Err(ClientError::ReadOnly(self.path.clone()));
        }
        self.fresh()?;
        if size > self.file.size {
            self.meta.expand_file_size(&self.path, size)?;
            self.fill_tail(size)?;
            return self.refresh();
        }
        if size == self.file.size {
            return Ok(());
        }
        let bs = self.block_size();
        let (index, cut) = (size / bs, size % bs);
        let held = self.file.size.min((index + 1) * bs) - index * bs;
        if cut > 0 && self.holds_data(index) && held > cut {
            let index = self.block_index(index)?;
            self.write_piece(index, cut, &vec![0u8; (held - cut) as usize], true)?;
        }
        self.meta.truncate(&self.path, size)?;
        self.refresh()
    }

    /// Zeros over the last block's bytes from the size the file had to `upto` (at most that
    /// block's end), when that block holds data: a replica holds only what was written to
    /// it, and a file grown past that reads zeros there, never a refusal.
    fn fill_tail(&mut self, upto: u64) -> Result<(), ClientError> {
        let old = self.metadata().size;
        self.fill_tail_from(old, upto)
    }

    fn fill_tail_from(&mut self, old: u64, upto: u64) -> Result<(), ClientError> {
        self.fresh()?;
        let bs = self.block_size();
        if old.is_multiple_of(bs) {
            return Ok(());
        }
        let index = old / bs;
        let end = upto.min((index + 1) * bs);
        if !self.holds_data(index) || end <= old {
            return Ok(());
        }
        let index = self.block_index(index)?;
        self.write_piece(index, old % bs, &vec![0u8; (end - old) as usize], true)
    }

    /// Block `index` as the wire numbers blocks.
    fn block_index(&self, index: u64) -> Result<u16, ClientError> {
        u16::try_from(index).map_err(|_| ClientError::DataWrite {
            block: format!("{} block {index}", self.path),
            reason: "a file has at most 65,536 blocks".into(),
            failed: None,
        })
    }

    /// Whether block `index` exists and was ever written (else it reads as zeros).
    fn holds_data(&self, index: u64) -> bool {
        self.file.blocks.get(index as usize).is_some_and(|b| {
            b.descriptor.version != meshfs_core::descriptor::BlockVersion::UNWRITTEN
        })
    }

    /// Writes `piece` at `within` of block `index` under a lease of its own, down the
    /// chain (again without a data-server that failed), and commits it. `keep`: the rest
    /// of the block stays as it was (else the block holds just this).
    fn write_piece(
        &mut self,
        index: u16,
        within: u64,
        piece: &[u8],
        keep: bool,
    ) -> Result<(), ClientError> {
        let token = self.meta.write_lease(&self.path, index)?;
        let (data, block_size) = (&mut self.data, self.file.block_size);
        let mut write = |token: &Token| data.write_block(token, block_size, within, piece, keep);
        let first = write(&token);
        let receipt = retry_write(&mut self.meta, &self.path, token, first, write)?;
        self.meta.commit_write(&self.path, &receipt)
    }

    /// `write_block`: writes a whole block (`bytes` up to the block size; the file grows to
    /// cover it).
    pub fn write_block(&mut self, index: u16, bytes: &[u8]) -> Result<(), ClientError> {
        self.write_at(u64::from(index) * self.block_size(), bytes)
    }

    /// `read_block`: a whole block (shorter for the last one).
    pub fn read_block(&mut self, index: u16) -> Result<Vec<u8>, ClientError> {
        let start = u64::from(index) * self.block_size();
        let len = self.file.size.saturating_sub(start).min(self.block_size());
        let mut buf = vec![0; len as usize];
        let n = self.read_at(start, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// `read_blocks`: `count` whole blocks from `first`.
    pub fn read_blocks(&mut self, first: u16, count: u16) -> Result<Vec<Vec<u8>>, ClientError> {
        let indexes: Vec<u16> = (first..first.saturating_add(count)).collect();
        self.read_block_array(&indexes)
    }

    /// `write_blocks`: whole blocks from `first`, in order.
    pub fn write_blocks(&mut self, first: u16, blocks: &[&[u8]]) -> Result<(), ClientError> {
        let items: Vec<(u16, &[u8])> =
            blocks.iter().enumerate().map(|(i, b)| (first + i as u16, *b)).collect();
        self.write_block_array(&items)
    }

    /// `read_block_array`: the given blocks, up to [`BLOCKS_IN_FLIGHT`] at once.
    pub fn read_block_array(&mut self, indexes: &[u16]) -> Result<Vec<Vec<u8>>, ClientError> {
        self.fresh()?;
        self.refresh_read_tokens()?;
        let bs = self.block_size();
        let jobs: Vec<_> = indexes
            .iter()
            .map(|&i| {
                let block = self.file.blocks.get(usize::from(i)).cloned();
                let len = self.file.size.saturating_sub(u64::from(i) * bs).min(bs);
                (i, block, len)
            })
            .collect();
        let mut results: Vec<Option<Result<Vec<u8>, ClientError>>> =
            (0..jobs.len()).map(|_| None).collect();
        for batch in jobs.chunks(BLOCKS_IN_FLIGHT).zip(results.chunks_mut(BLOCKS_IN_FLIGHT)) {
            std::thread::scope(|scope| {
                for ((index, block, len), slot) in batch.0.iter().zip(batch.1.iter_mut()) {
                    let access = &self.access;
                    scope.spawn(move || {
                        *slot = Some(match block {
                            None => Err(ClientError::Namespace(
                                meshfs_core::error::NsError::NotFound(format!("block {index}")),
                            )),
                            Some(block) => {
                                let mut data = DataClient::new(access);
                                let mut out = Vec::with_capacity(*len as usize);
                                data.read_block(block, 0, *len, &mut out).map(|()| out)
                            }
                        });
                    });
                }
            });
        }
        results.into_iter().map(|r| r.expect("every job ran")).collect()
    }

    /// `write_block_array`: the given whole blocks, up to [`BLOCKS_IN_FLIGHT`] at once (the
    /// leases are taken first, one by one; the data then moves in parallel).
    pub fn write_block_array(&mut self, items: &[(u16, &[u8])]) -> Result<(), ClientError> {
        let bs = self.block_size();
        let end = items.iter().map(|(i, b)| u64::from(*i) * bs + b.len() as u64).max().unwrap_or(0);
        if end > self.file.size {
            self.meta.expand_file_size(&self.path, end)?;
        }
        let mut leased = Vec::with_capacity(items.len());
        for (index, bytes) in items {
            leased.push((self.meta.write_lease(&self.path, *index)?, *bytes));
        }
        let block_size = self.file.block_size;
        for batch in leased.chunks(BLOCKS_IN_FLIGHT) {
            let outcomes: Vec<Result<WriteReceipt, ClientError>> = std::thread::scope(|scope| {
                let handles: Vec<_> = batch
                    .iter()
                    .map(|(token, bytes)| {
                        let access = &self.access;
                        scope.spawn(move || {
                            DataClient::new(access).write_block(token, block_size, 0, bytes, false)
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().expect("block writers do not panic")).collect()
            });
            for ((token, bytes), outcome) in batch.iter().zip(outcomes) {
                // A failed block goes again, alone, without the data-server that failed.
                let data = &mut self.data;
                let write = |token: &Token| data.write_block(token, block_size, 0, bytes, false);
                let receipt =
                    retry_write(&mut self.meta, &self.path, token.clone(), outcome, write)?;
                self.meta.commit_write(&self.path, &receipt)?;
            }
        }
        self.refresh()
    }

    /// Closes the file. Every write was durable when it returned; this releases the open
    /// mode's lock, if any (dropping the file does too, ignoring errors).
    pub fn close(self) -> Result<(), ClientError> {
        match self.lock {
            Some(lock) => lock.unlock(),
            None => Ok(()),
        }
    }
}
