//! The FUSE filesystem: each kernel request answered by the meta-servers (names, owners,
//! modes) and the data-servers (bytes), through a pool of clients shared by the threads
//! that serve requests.
//!
//! Writes through an open file gather in a buffer of one block's contiguous bytes and go
//! to the data-servers when the block is full, when a write elsewhere begins, on flush,
//! fsync and close, or when all buffers together pass [`MAX_BUFFERED`]: a `cp` of a large
//! file writes whole blocks, never a block per kernel write.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use log::{debug, warn};
use meshfs_core::error::NsError;
use meshfs_core::namespace::{NodeType, SetTime, Stat, XattrSet};
use meshfs_core::path::PathError;
use nix::sys::stat::SFlag;

use super::MountOptions;
use super::inodes::{Inodes, ROOT};
use crate::access::Access;
use crate::data::DataClient;
use crate::error::ClientError;
use crate::file::RemoteFile;
use crate::meta::MetaClient;

/// Bytes all open files may hold unwritten at once; past it a write sends its file's
/// buffer before it returns.
pub const MAX_BUFFERED: u64 = 512 << 20;

/// The names a file unlinked while open here keeps until its last close (`…-<inode>`);
/// listings through this mount leave them out.
pub const UNLINKED_PREFIX: &str = ".meshfs-unlinked-";

/// Most bytes the kernel sends in one write, and reads ahead.
const MAX_IO: u32 = 1 << 20;

/// An open directory's entries as they were when it was opened: (inode, kind, name).
/// An open directory's entries as opendir read them: inode, type, name, and (but for `.`
/// and `..`) the attributes readdirplus gives the kernel.
type Listing = Vec<(u64, FileType, String, Option<FileAttr>)>;

/// The mount's filesystem.
#[derive(Debug)]
pub(super) struct MeshFs {
    access: Access,
    options: MountOptions,
    /// Whether the client may act for local users (a `trusted` client): then each request
    /// is checked as its caller; else every request acts as the client itself.
    trusted: bool,
    inodes: Mutex<Inodes>,
    pool: Mutex<Vec<(MetaClient, DataClient)>>,
    files: Mutex<HashMap<u64, Arc<Mutex<OpenFile>>>>,
    dirs: Mutex<HashMap<u64, Arc<Listing>>>,
    /// The file version each inode had when last opened: an unchanged file keeps the
    /// kernel's cached pages (close-to-open consistency).
    opened_at: Mutex<HashMap<u64, u32>>,
    /// Files unlinked while open here, kept under a hidden name in their directory until
    /// their last close: inode -> (directory, hidden name).
    unlinked: Mutex<HashMap<u64, (u64, String)>>,
    /// Per inode open here, how many times its open files sent bytes.
    generations: Mutex<HashMap<u64, Arc<AtomicU64>>>,
    next_handle: AtomicU64,
    buffered: AtomicU64,
    space: Mutex<Option<(Instant, Space)>>,
}

#[derive(Debug, Clone, Copy)]
struct Space {
    total: u64,
    free: u64,
    files: u64,
}

/// An open file and the bytes written to it not yet sent.
#[derive(Debug)]
struct OpenFile {
    ino: u64,
    file: Option<RemoteFile>,
    writable: bool,
    /// The block written or read last, with what of it was written and not yet sent.
    image: Option<BlockImage>,
    /// The first failure of a buffered write, reported by the next flush or close.
    failed: Option<Errno>,
    /// Bumped by every open file of the inode that sends bytes; `seen` is the count this
    /// one's metadata is as of. Another's send makes it fetch the metadata again.
    generation: Arc<AtomicU64>,
    seen: u64,
    /// When bytes were last written here and not yet sent (microseconds since the epoch):
    /// a stat meanwhile shows the file modified then, as POSIX marks it at the write.
    written_us: u64,
}

/// Clients taken from the pool for one request, given back when dropped.
struct Clients<'a> {
    fs: &'a MeshFs,
    parts: Option<(MetaClient, DataClient)>,
}

impl Clients<'_> {
    fn meta(&mut self) -> &mut MetaClient {
        &mut self.parts.as_mut().expect("held until dropped").0
    }

    fn take(mut self) -> (MetaClient, DataClient) {
        self.parts.take().expect("held until dropped")
    }
}

impl Drop for Clients<'_> {
    fn drop(&mut self) {
        if let Some(parts) = self.parts.take() {
            self.fs.give_back(parts);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in one request must not stop every later one: the data is still whole
    // (no request leaves a table half-changed).
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The errno a failure means to a program. `owner_op`: a chmod or chown, where a refusal
/// is EPERM rather than EACCES.
fn errno(err: &ClientError, owner_op: bool) -> Errno {
    debug!("mount: {err}");
    match err {
        ClientError::Namespace(ns) => match ns {
            NsError::Path(PathError::ComponentTooLong { .. } | PathError::TooLong { .. }) => {
                Errno::ENAMETOOLONG
            }
            NsError::Path(_) | NsError::MoveIntoItself { .. } | NsError::BadReplication(_) => {
                Errno::EINVAL
            }
            NsError::NotFound(_) => Errno::ENOENT,
            NsError::AlreadyExists(_) => Errno::EEXIST,
            NsError::NotADirectory(_) => Errno::ENOTDIR,
            NsError::IsADirectory(_) => Errno::EISDIR,
            NsError::NotEmpty(_) => Errno::ENOTEMPTY,
            NsError::LinkDir(_) => Errno::EPERM,
            NsError::NoAttr(_) => Errno::ENODATA,
            NsError::AttrNotSupported(_) => Errno::EOPNOTSUPP,
            NsError::AttrTooLarge { bytes, .. }
                if *bytes as usize > meshfs_core::namespace::MAX_XATTR_VALUE =>
            {
                Errno::E2BIG
            }
            NsError::AttrTooLarge { .. } => Errno::ENOSPC,
            NsError::TooManyLinks { .. } => Errno::EMLINK,
            NsError::Root => Errno::EBUSY,
            NsError::FileTooLarge { .. } => Errno::EFBIG,
            NsError::Placement(_) | NsError::BadPlacement { .. } | NsError::OutOfIds => {
                Errno::ENOSPC
            }
            NsError::PermissionDenied(_) if owner_op => Errno::EPERM,
            NsError::PermissionDenied(_) => Errno::EACCES,
            NsError::TooMany(_) => Errno::EAGAIN,
            _ => Errno::EIO,
        },
        ClientError::ReadOnly(_) => Errno::EBADF,
        ClientError::BadMode(_) => Errno::EINVAL,
        ClientError::DataWrite { reason, .. } if reason.contains("space") => Errno::ENOSPC,
        _ => Errno::EIO,
    }
}

/// setxattr(2)'s flags.
mod libc_xattr {
    /// Fail if the attribute exists.
    pub const CREATE: i32 = 1;
    /// Fail if it does not.
    pub const REPLACE: i32 = 2;
}

/// Answers a getxattr or listxattr: the size when asked for it (`size` 0), the bytes when
/// they fit, ERANGE when they do not.
fn reply_xattr(reply: ReplyXattr, size: u32, result: Result<Vec<u8>, Errno>) {
    match result {
        Ok(bytes) if size == 0 => reply.size(bytes.len() as u32),
        Ok(bytes) if bytes.len() <= size as usize => reply.data(&bytes),
        Ok(_) => reply.error(Errno::ERANGE),
        Err(e) => reply.error(e),
    }
}

fn time_us(us: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us)
}

/// A time the kernel asks for, as the namespace sets it (before the epoch: the epoch).
fn set_time(time: Option<TimeOrNow>) -> SetTime {
    match time {
        None => SetTime::Keep,
        Some(TimeOrNow::Now) => SetTime::Now,
        Some(TimeOrNow::SpecificTime(t)) => SetTime::At(
            t.duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        ),
    }
}

/// The groups of process `pid` (its primary group `gid` first), as the kernel keeps them;
/// just `gid` when they cannot be read (the process is gone, or a kernel request).
fn groups_of(pid: u32, gid: u32) -> Vec<u32> {
    let mut gids = vec![gid];
    if pid == 0 {
        return gids;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    if let Some(line) = status.lines().find_map(|l| l.strip_prefix("Groups:")) {
        for g in line.split_whitespace().filter_map(|g| g.parse::<u32>().ok()) {
            if !gids.contains(&g) && gids.len() < meshfs_core::namespace::access::MAX_GIDS {
                gids.push(g);
            }
        }
    }
    gids
}

impl MeshFs {
    pub(super) fn new(access: &Access, options: MountOptions, trusted: bool) -> MeshFs {
        MeshFs {
            access: access.clone(),
            options,
            trusted,
            inodes: Mutex::new(Inodes::new()),
            pool: Mutex::new(Vec::new()),
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            opened_at: Mutex::new(HashMap::new()),
            unlinked: Mutex::new(HashMap::new()),
            generations: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            buffered: AtomicU64::new(0),
            space: Mutex::new(None),
        }
    }

    /// Clients acting for the request's caller.
    fn clients(&self, req: &Request) -> Result<Clients<'_>, Errno> {
        let pooled = lock(&self.pool).pop();
        let (mut meta, data) = match pooled {
            Some(parts) => parts,
            None => {
                let meta = MetaClient::new(&self.access).map_err(|e| {
                    warn!("mount: cannot make a client: {e}");
                    Errno::EIO
                })?;
                (meta, DataClient::new(&self.access))
            }
        };
        if self.trusted {
            meta.act_for(req.uid(), groups_of(req.pid(), req.gid()));
        }
        Ok(Clients { fs: self, parts: Some((meta, data)) })
    }

    fn give_back(&self, parts: (MetaClient, DataClient)) {
        let mut pool = lock(&self.pool);
        // As many as threads serve requests and files are open is plenty; the rest close.
        if pool.len() < 64 {
            pool.push(parts);
        }
    }

    fn path(&self, ino: u64) -> Result<String, Errno> {
        lock(&self.inodes).path(ino).ok_or(Errno::ESTALE)
    }

    fn child_path(&self, parent: u64, name: &OsStr) -> Result<(String, String), Errno> {
        let name = name.to_str().ok_or(Errno::EINVAL)?.to_string();
        let path = lock(&self.inodes).child_path(parent, &name).ok_or(Errno::ESTALE)?;
        Ok((path, name))
    }

    fn attr(&self, stat: &Stat) -> FileAttr {
        let mut rdev = 0;
        let nlink = match stat {
            Stat::File(_) | Stat::Other { .. }
                if lock(&self.unlinked).contains_key(&u64::from(stat.id())) =>
            {
                0
            }
            _ => stat.links(),
        };
        let (ino, kind, size, owner, times, crtime) = match stat {
            Stat::Dir { id, times, owner, .. } => {
                let born = times.ctime_us / 1000;
                (u64::from(*id), FileType::Directory, 4096, *owner, *times, born)
            }
            Stat::Other { id, kind, target, rdev: device, times, owner, .. } => {
                rdev = *device;
                let kind = match kind {
                    NodeType::Symlink => FileType::Symlink,
                    NodeType::Fifo => FileType::NamedPipe,
                    NodeType::Char => FileType::CharDevice,
                    NodeType::Block => FileType::BlockDevice,
                    NodeType::Socket => FileType::Socket,
                };
                let born = times.ctime_us / 1000;
                (u64::from(*id), kind, target.len() as u64, *owner, *times, born)
            }
            Stat::File(meta) => (
                u64::from(meta.descriptor.id.0),
                FileType::RegularFile,
                meta.size,
                meta.owner,
                meta.times,
                meta.created_ms,
            ),
        };
        // Bytes written here and not yet sent count: the kernel asks for the size of a
        // file it is writing.
        let mut times = times;
        let mut size = size;
        for open in self.handles() {
            // try_lock: a file busy sending its bytes is not waited for here.
            let Ok(open) = open.try_lock() else { continue };
            if open.ino != ino {
                continue;
            }
            if let Some(end) = open.end() {
                size = size.max(end);
                if open.written_us > times.mtime_us {
                    times.mtime_us = open.written_us;
                    times.ctime_us = times.ctime_us.max(open.written_us);
                }
            }
        }
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: time_us(times.atime_us),
            mtime: time_us(times.mtime_us),
            ctime: time_us(times.ctime_us),
            crtime: time_us(crtime.saturating_mul(1000)),
            kind,
            perm: owner.mode,
            nlink,
            uid: owner.uid,
            gid: owner.gid,
            rdev,
            blksize: MAX_IO,
            flags: 0,
        }
    }

    /// Whether any open file here is of `ino`.
    fn is_open(&self, ino: u64) -> bool {
        let open = self.handles();
        open.iter().any(|f| lock(f).ino == ino)
    }

    /// Open files of `ino` fetch its metadata again (it changed through this mount).
    fn refresh_inode(&self, ino: u64) {
        let open = self.handles();
        for file in open {
            let mut file = lock(&file);
            if file.ino != ino {
                continue;
            }
            // Its image may hold bytes past the new end: the next access reads again.
            file.drop_image(&self.buffered);
            if let Some(remote) = file.file.as_mut()
                && let Err(err) = remote.refresh()
            {
                debug!("mount: refreshing an open file of inode {ino}: {err}");
            }
        }
    }

    /// Sends what every open file of `ino` holds unwritten.
    fn flush_inode(&self, ino: u64) -> Result<(), Errno> {
        let open = self.handles();
        for file in open {
            let mut file = lock(&file);
            if file.ino == ino {
                file.flush(&self.buffered)?;
            }
        }
        Ok(())
    }

    /// Every open file here, taken out of the table so that none is locked while it is.
    fn handles(&self) -> Vec<Arc<Mutex<OpenFile>>> {
        lock(&self.files).values().cloned().collect()
    }

    /// Before a read or write through open file `fh` of `ino`: every other open file of it
    /// sends what it holds and forgets its block, so this one sees their bytes and they
    /// see its own (each keeps one block in memory; two copies must not disagree).
    fn settle_others(&self, ino: u64, fh: FileHandle) -> Result<(), Errno> {
        let others: Vec<_> = {
            let files = lock(&self.files);
            files.iter().filter(|(h, _)| **h != fh.0).map(|(_, f)| f.clone()).collect()
        };
        for other in others {
            let mut other = lock(&other);
            if other.ino == ino && other.image.is_some() {
                other.flush(&self.buffered)?;
                other.drop_image(&self.buffered);
            }
        }
        Ok(())
    }

    fn stat(&self, req: &Request, path: &str) -> Result<Stat, Errno> {
        self.clients(req)?.meta().stat(path).map_err(|e| errno(&e, false))
    }

    /// Looks `name` up in `parent` for the kernel: one more lookup of its inode.
    fn entry(&self, req: &Request, parent: u64, name: &OsStr) -> Result<FileAttr, Errno> {
        let (path, name) = self.child_path(parent, name)?;
        let stat = self.stat(req, &path)?;
        let attr = self.attr(&stat);
        let dir = attr.kind == FileType::Directory;
        lock(&self.inodes).looked_up(attr.ino.0, parent, &name, dir);
        Ok(attr)
    }

    fn reply_entry(&self, reply: ReplyEntry, result: Result<FileAttr, Errno>) {
        match result {
            Ok(attr) => reply.entry_with_ttls(
                &self.options.attr_timeout,
                &self.options.entry_timeout,
                &attr,
                Generation(0),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn handle(&self, fh: FileHandle) -> Result<Arc<Mutex<OpenFile>>, Errno> {
        lock(&self.files).get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    fn new_handle(&self) -> u64 {
        self.next_handle.fetch_add(1, Ordering::Relaxed)
    }

    /// Opens `ino` (at `path`) for the caller: a handle and the open flags for the kernel.
    fn open_inode(
        &self,
        req: &Request,
        ino: u64,
        path: &str,
        writable: bool,
    ) -> Result<(u64, FopenFlags, Stat), Errno> {
        let mut clients = self.clients(req)?;
        let meta = clients.meta().get_file_meta_data(path).map_err(|e| errno(&e, false))?;
        let (meta_client, data) = clients.take();
        let file = RemoteFile::from_parts(&self.access, meta_client, data, path, meta);
        let stat = Stat::File(file.metadata().clone());
        let version = file.metadata().descriptor.version;
        // The kernel's pages of this file stay valid if nobody changed it since it was
        // last opened here.
        let unchanged = lock(&self.opened_at).insert(ino, version) == Some(version);
        let flags = if unchanged { FopenFlags::FOPEN_KEEP_CACHE } else { FopenFlags::empty() };
        let fh = self.new_handle();
        let generation = lock(&self.generations).entry(ino).or_default().clone();
        let seen = generation.load(Ordering::Acquire);
        let open = OpenFile {
            ino,
            file: Some(file),
            writable,
            image: None,
            failed: None,
            generation,
            seen,
            written_us: 0,
        };
        lock(&self.files).insert(fh, Arc::new(Mutex::new(open)));
        Ok((fh, flags, stat))
    }

    fn space(&self) -> Result<Space, Errno> {
        if let Some((at, space)) = *lock(&self.space)
            && at.elapsed() < Duration::from_secs(2)
        {
            return Ok(space);
        }
        let timeout = Duration::from_secs(3);
        let mut last = String::from("no meta-server in the config");
        for (id, addr) in &self.access.mservers {
            match crate::status::server_status(&self.access, *id, *addr, timeout) {
                Ok(status) if !status.data_servers.is_empty() => {
                    let replication =
                        self.access.cluster_map().map_or(1, |m| u64::from(m.replication.max(1)));
                    let up = status.data_servers.iter().filter(|d| d.up);
                    let (capacity, used) =
                        up.fold((0u64, 0u64), |(c, u), d| (c + d.capacity, u + d.used));
                    let inodes = status.raft.map_or(0, |r| r.inodes);
                    let space = Space {
                        total: capacity / replication,
                        free: capacity.saturating_sub(used) / replication,
                        files: inodes,
                    };
                    *lock(&self.space) = Some((Instant::now(), space));
                    return Ok(space);
                }
                Ok(_) => last = format!("meta-server {id} knows no data-server yet"),
                Err(e) => last = e.to_string(),
            }
        }
        warn!("mount: statfs: {last}");
        Err(Errno::EIO)
    }
}

/// One block of an open file held in memory: its bytes as read (or as far as written), and
/// the span changed since they were last sent. Writes anywhere in it, and reads of it, need
/// no round trip; the span goes out in one write (one lease, one commit) when it is flushed.
#[derive(Debug)]
struct BlockImage {
    index: u64,
    bytes: Vec<u8>,
    dirty: Option<(usize, usize)>,
}

impl OpenFile {
    fn file(&mut self) -> Result<&mut RemoteFile, Errno> {
        self.file.as_mut().ok_or(Errno::EBADF)
    }

    /// Where the bytes written here and not yet sent end, if any are held.
    fn end(&self) -> Option<u64> {
        let image = self.image.as_ref()?;
        let (_, hi) = image.dirty?;
        let block_size = self.file.as_ref()?.block_size();
        Some(image.index * block_size + hi as u64)
    }

    /// The image of block `index`, loaded if it is not the one held (the one held is sent
    /// first). `covers`: the write about to go there replaces every byte the block holds,
    /// so nothing needs reading.
    fn image(
        &mut self,
        index: u64,
        covers: bool,
        buffered: &AtomicU64,
    ) -> Result<&mut BlockImage, Errno> {
        if self.image.as_ref().is_some_and(|i| i.index != index) {
            self.flush(buffered)?;
            self.drop_image(buffered);
        }
        if self.image.is_none() {
            let file = self.file()?;
            let block_size = file.block_size();
            let start = index * block_size;
            let held = file.len().saturating_sub(start).min(block_size);
            let mut bytes = vec![0; held as usize];
            if held > 0 && !covers {
                let n = file.read_at(start, &mut bytes).map_err(|e| errno(&e, false))?;
                bytes.truncate(n);
            } else {
                bytes.clear();
            }
            buffered.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            self.image = Some(BlockImage { index, bytes, dirty: None });
        }
        Ok(self.image.as_mut().expect("set above"))
    }

    fn drop_image(&mut self, buffered: &AtomicU64) {
        if let Some(image) = self.image.take() {
            buffered.fetch_sub(image.bytes.len() as u64, Ordering::Relaxed);
        }
    }

    /// Writes `data` at `offset` into the block images, sending a block's bytes when a
    /// write moves to another block.
    fn write(&mut self, offset: u64, data: &[u8], buffered: &AtomicU64) -> Result<(), Errno> {
        let block_size = self.file()?.block_size();
        let remote_size = self.file()?.len();
        let mut at = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let index = at / block_size;
            let within = (at % block_size) as usize;
            let n = rest.len().min(block_size as usize - within);
            let (piece, after) = rest.split_at(n);
            // Nothing to read first when the piece starts the block and the file holds no
            // more of it than the piece replaces, or when the block lies past the file.
            let held = remote_size.saturating_sub(index * block_size).min(block_size);
            let covers = within == 0 && n as u64 >= held;
            let image = self.image(index, covers, buffered)?;
            let end = within + n;
            if image.bytes.len() < end {
                buffered.fetch_add((end - image.bytes.len()) as u64, Ordering::Relaxed);
                image.bytes.resize(end, 0);
            }
            image.bytes[within..end].copy_from_slice(piece);
            image.dirty = Some(match image.dirty {
                Some((lo, hi)) => (lo.min(within), hi.max(end)),
                None => (within, end),
            });
            at += n as u64;
            rest = after;
        }
        self.written_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        if buffered.load(Ordering::Relaxed) > MAX_BUFFERED {
            self.flush(buffered)?;
            self.drop_image(buffered);
        }
        Ok(())
    }

    /// Reads up to `len` bytes at `offset`: from the image where the read lies in it,
    /// else from the data-servers (after sending what the image holds, if the read
    /// reaches it or the file has grown here).
    fn read(&mut self, offset: u64, len: usize, buffered: &AtomicU64) -> Result<Vec<u8>, Errno> {
        let block_size = self.file()?.block_size();
        let remote_size = self.file()?.len();
        let size = self.end().map_or(remote_size, |end| end.max(remote_size));
        let end = (offset + len as u64).min(size);
        if offset >= end {
            return Ok(Vec::new());
        }
        if let Some(image) = &self.image {
            let start = image.index * block_size;
            if offset >= start && end <= start + block_size {
                let (from, to) = ((offset - start) as usize, (end - start) as usize);
                let mut out = vec![0; to - from];
                let have = image.bytes.len().clamp(from, to);
                out[..have - from].copy_from_slice(&image.bytes[from..have]);
                return Ok(out);
            }
            if self.end().is_some_and(|e| e > remote_size)
                || end > start && offset < start + block_size
            {
                self.flush(buffered)?;
            }
        }
        let mut buf = vec![0; (end - offset) as usize];
        let n = self.file()?.read_at(offset, &mut buf).map_err(|e| errno(&e, false))?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Sends the image's changed bytes; durable on every replica when it returns.
    fn flush(&mut self, _buffered: &AtomicU64) -> Result<(), Errno> {
        if let Some(errno) = self.failed.take() {
            return Err(errno);
        }
        let Some(image) = self.image.as_mut() else { return Ok(()) };
        let Some((lo, hi)) = image.dirty.take() else { return Ok(()) };
        let (index, bytes) = (image.index, image.bytes[lo..hi].to_vec());
        let file = self.file()?;
        let at = index * file.block_size() + lo as u64;
        let sent = file.write_at(at, &bytes);
        if let Err(e) = sent {
            let path = self.file()?.path().to_string();
            warn!("mount: writing {} bytes at {at} of {path}: {e}", bytes.len());
            // What failed to go is not held as if it had gone.
            if let Some(image) = self.image.as_mut() {
                image.dirty = Some((lo, hi));
            }
            return Err(errno(&e, false));
        }
        self.seen = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        Ok(())
    }

    /// If another open file of the inode sent bytes since this one's metadata was fetched:
    /// sends its own, fetches the metadata again and forgets its block.
    fn catch_up(&mut self, buffered: &AtomicU64) -> Result<(), Errno> {
        if self.generation.load(Ordering::Acquire) == self.seen {
            return Ok(());
        }
        self.flush(buffered)?;
        self.drop_image(buffered);
        self.file()?.refresh().map_err(|e| errno(&e, false))?;
        self.seen = self.generation.load(Ordering::Acquire);
        Ok(())
    }
}

impl Filesystem for MeshFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // The kernel may allow less; what it allows is what it sends.
        let _ = config.set_max_write(MAX_IO);
        let _ = config.set_max_readahead(MAX_IO);
        // Listings come with their entries' attributes (one round a page, not one an
        // entry); the kernel uses them when programs go on to look the entries up.
        let _ = config.add_capabilities(
            fuser::InitFlags::FUSE_DO_READDIRPLUS | fuser::InitFlags::FUSE_READDIRPLUS_AUTO,
        );
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.reply_entry(reply, self.entry(req, parent.0, name));
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        lock(&self.inodes).forget(ino.0, nlookup);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let result = (|| {
            // An open file answers for itself: it may have no path any more.
            if let Some(fh) = fh
                && let Ok(open) = self.handle(fh)
            {
                let mut open = lock(&open);
                let file = open.file()?;
                // Its metadata as of now, if it still has a path.
                let _ = file.refresh();
                let stat = Stat::File(file.metadata().clone());
                drop(open);
                return Ok(self.attr(&stat));
            }
            let path = self.path(ino.0)?;
            let stat = self.stat(req, &path)?;
            let attr = self.attr(&stat);
            if attr.ino != ino {
                // The path names another inode now (replaced elsewhere).
                return Err(Errno::ESTALE);
            }
            Ok(attr)
        })();
        match result {
            Ok(attr) => reply.attr(&self.options.attr_timeout, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let result = (|| {
            let path = self.path(ino.0)?;
            // Bytes written before come before: their commit would move the times (cp -a
            // writes, then sets them) and count in the size asked for.
            self.flush_inode(ino.0)?;
            let mut clients = self.clients(req)?;
            if let Some(mode) = mode {
                let bits = (mode & 0o7777) as u16;
                clients.meta().chmod(&path, bits).map_err(|e| errno(&e, true))?;
            }
            if uid.is_some() || gid.is_some() {
                let now = clients.meta().stat(&path).map_err(|e| errno(&e, false))?;
                let owner = now.owner();
                let (uid, gid) = (uid.unwrap_or(owner.uid), gid.unwrap_or(owner.gid));
                clients.meta().chown(&path, uid, gid).map_err(|e| errno(&e, true))?;
            }
            if let Some(size) = size {
                let now = match clients.meta().stat(&path).map_err(|e| errno(&e, false))? {
                    Stat::Dir { .. } => return Err(Errno::EISDIR),
                    Stat::Other { .. } => return Err(Errno::EINVAL),
                    Stat::File(now) => now,
                };
                let (meta, data) = clients.take();
                let mut file = RemoteFile::from_parts(&self.access, meta, data, &path, now);
                let result = file.set_len(size);
                let (meta, data) = file.into_parts();
                clients = Clients { fs: self, parts: Some((meta, data)) };
                result.map_err(|e| errno(&e, false))?;
                // Open files of it see its new size and blocks.
                self.refresh_inode(ino.0);
            }
            if atime.is_some() || mtime.is_some() {
                let (atime, mtime) = (set_time(atime), set_time(mtime));
                clients.meta().set_times(&path, atime, mtime).map_err(|e| errno(&e, true))?;
            }
            let stat = clients.meta().stat(&path).map_err(|e| errno(&e, false))?;
            Ok(self.attr(&stat))
        })();
        match result {
            Ok(attr) => reply.attr(&self.options.attr_timeout, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let result = (|| {
            let (path, _) = self.child_path(parent.0, name)?;
            let bits = (mode & !umask & 0o7777) as u16;
            self.clients(req)?
                .meta()
                .mkdir_mode(&path, false, bits)
                .map_err(|e| errno(&e, false))?;
            self.entry(req, parent.0, name)
        })();
        self.reply_entry(reply, result);
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let result = (|| {
            let (path, _) = self.child_path(parent.0, name)?;
            let bits = (mode & !umask & 0o7777) as u16;
            let mut clients = self.clients(req)?;
            let kind = match SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits()) {
                SFlag::S_IFREG => {
                    clients.meta().create_mode(&path, 0, bits).map_err(|e| errno(&e, false))?;
                    drop(clients);
                    return self.entry(req, parent.0, name);
                }
                SFlag::S_IFIFO => NodeType::Fifo,
                SFlag::S_IFCHR => NodeType::Char,
                SFlag::S_IFBLK => NodeType::Block,
                SFlag::S_IFSOCK => NodeType::Socket,
                _ => return Err(Errno::EINVAL),
            };
            let rdev = if matches!(kind, NodeType::Char | NodeType::Block) { rdev } else { 0 };
            clients.meta().make_node(&path, kind, "", rdev, bits).map_err(|e| errno(&e, false))?;
            drop(clients);
            self.entry(req, parent.0, name)
        })();
        self.reply_entry(reply, result);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let result = (|| {
            let (path, leaf) = self.child_path(parent.0, name)?;
            let bits = (mode & !umask & 0o7777) as u16;
            let fd = self
                .clients(req)?
                .meta()
                .create_mode(&path, 0, bits)
                .map_err(|e| errno(&e, false))?;
            let ino = u64::from(fd.id.0);
            lock(&self.inodes).looked_up(ino, parent.0, &leaf, false);
            let writable = OpenFlags(flags).acc_mode() != OpenAccMode::O_RDONLY;
            let (fh, open_flags, stat) = self.open_inode(req, ino, &path, writable)?;
            Ok((fh, open_flags, self.attr(&stat)))
        })();
        match result {
            Ok((fh, flags, attr)) => reply.created(
                &self.options.entry_timeout,
                &attr,
                Generation(0),
                FileHandle(fh),
                flags,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        let result = (|| {
            let (path, _) = self.child_path(parent.0, link_name)?;
            let target = target.to_str().ok_or(Errno::EINVAL)?;
            if target.len() > meshfs_core::path::MAX_PATH_LEN {
                return Err(Errno::ENAMETOOLONG);
            }
            let mut clients = self.clients(req)?;
            let made = clients.meta().make_node(&path, NodeType::Symlink, target, 0, 0o777);
            made.map_err(|e| errno(&e, false))?;
            drop(clients);
            self.entry(req, parent.0, link_name)
        })();
        self.reply_entry(reply, result);
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let result = (|| {
            let from = self.path(ino.0)?;
            let (to, _) = self.child_path(newparent.0, newname)?;
            self.clients(req)?.meta().link(&from, &to).map_err(|e| errno(&e, false))?;
            let attr = self.entry(req, newparent.0, newname)?;
            if attr.ino.0 != ino.0 {
                // Another client replaced `from` meanwhile: the link named what is there now.
                return Err(Errno::ESTALE);
            }
            Ok(attr)
        })();
        self.reply_entry(reply, result);
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let result = (|| {
            let path = self.path(ino.0)?;
            let name = name.to_str().ok_or(Errno::EOPNOTSUPP)?;
            let how = match flags & (libc_xattr::CREATE | libc_xattr::REPLACE) {
                0 => XattrSet::Either,
                libc_xattr::CREATE => XattrSet::Create,
                libc_xattr::REPLACE => XattrSet::Replace,
                _ => return Err(Errno::EINVAL),
            };
            let mut clients = self.clients(req)?;
            clients.meta().set_xattr(&path, name, value, how).map_err(|e| errno(&e, false))
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let result = (|| {
            let path = self.path(ino.0)?;
            // Nothing is kept outside user.*: no such attribute (what cp, ls and tar ask
            // for, such as ACLs and security labels, is simply not there).
            let Some(name) = name.to_str().filter(|n| meshfs_core::namespace::valid_name(n)) else {
                return Err(Errno::ENODATA);
            };
            let mut clients = self.clients(req)?;
            clients.meta().get_xattr(&path, name).map_err(|e| errno(&e, false))
        })();
        reply_xattr(reply, size, result);
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let result = (|| {
            let path = self.path(ino.0)?;
            let names =
                self.clients(req)?.meta().list_xattr(&path).map_err(|e| errno(&e, false))?;
            let mut list = Vec::new();
            for name in names {
                list.extend_from_slice(name.as_bytes());
                list.push(0);
            }
            Ok(list)
        })();
        reply_xattr(reply, size, result);
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = (|| {
            let path = self.path(ino.0)?;
            let Some(name) = name.to_str().filter(|n| meshfs_core::namespace::valid_name(n)) else {
                return Err(Errno::ENODATA);
            };
            let mut clients = self.clients(req)?;
            clients.meta().remove_xattr(&path, name).map_err(|e| errno(&e, false))
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        let result = (|| {
            let path = self.path(ino.0)?;
            match self.stat(req, &path)? {
                Stat::Other { id, kind: NodeType::Symlink, target, .. }
                    if u64::from(id) == ino.0 =>
                {
                    Ok(target)
                }
                Stat::Other { kind: NodeType::Symlink, .. } => Err(Errno::ESTALE),
                _ => Err(Errno::EINVAL),
            }
        })();
        match result {
            Ok(target) => reply.data(target.as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = (|| {
            let (path, leaf) = self.child_path(parent.0, name)?;
            let mut clients = self.clients(req)?;
            // unlink(2) never removes a directory, even an empty one.
            let stat = clients.meta().stat(&path).map_err(|e| errno(&e, false))?;
            if let Stat::Dir { .. } = stat {
                return Err(Errno::EISDIR);
            }
            let ino = u64::from(stat.id());
            // Its last name goes while it is open here: keep it (below). With other names
            // left, it lives on under them.
            if !self.is_open(ino) || stat.links() > 1 {
                clients.meta().remove(&path, false).map_err(|e| errno(&e, false))?;
                lock(&self.inodes).unlinked(parent.0, &leaf);
                return Ok(());
            }
            // Open here: it lives on under a hidden name until its last close (as NFS
            // clients keep such files), so the open file reads and writes on.
            let hidden = format!("{UNLINKED_PREFIX}{ino}");
            let (hidden_path, _) = self.child_path(parent.0, OsStr::new(&hidden))?;
            clients.meta().rename_over(&path, &hidden_path).map_err(|e| errno(&e, false))?;
            let mut inodes = lock(&self.inodes);
            inodes.unlinked(parent.0, &leaf);
            inodes.place(ino, parent.0, &hidden);
            lock(&self.unlinked).insert(ino, (parent.0, hidden));
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = (|| {
            let (path, leaf) = self.child_path(parent.0, name)?;
            let mut clients = self.clients(req)?;
            let stat = clients.meta().stat(&path).map_err(|e| errno(&e, false))?;
            if !matches!(stat, Stat::Dir { .. }) {
                return Err(Errno::ENOTDIR);
            }
            clients.meta().remove(&path, false).map_err(|e| errno(&e, false))?;
            lock(&self.inodes).unlinked(parent.0, &leaf);
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let result = (|| {
            if flags.contains(RenameFlags::RENAME_EXCHANGE)
                || flags.contains(RenameFlags::RENAME_WHITEOUT)
            {
                return Err(Errno::EINVAL);
            }
            let (from, leaf) = self.child_path(parent.0, name)?;
            let (to, new_leaf) = self.child_path(newparent.0, newname)?;
            // rename(2) replaces a target in the same step; RENAME_NOREPLACE refuses one.
            let mut clients = self.clients(req)?;
            let result = if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                clients.meta().rename(&from, &to)
            } else {
                clients.meta().rename_over(&from, &to)
            };
            result.map_err(|e| errno(&e, false))?;
            let mut inodes = lock(&self.inodes);
            if inodes.child(parent.0, &leaf) != inodes.child(newparent.0, &new_leaf) {
                inodes.unlinked(newparent.0, &new_leaf);
                inodes.moved(parent.0, &leaf, newparent.0, &new_leaf);
            }
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let result = (|| {
            let path = self.path(ino.0)?;
            let writable = flags.acc_mode() != OpenAccMode::O_RDONLY;
            self.open_inode(req, ino.0, &path, writable)
        })();
        match result {
            Ok((fh, flags, _)) => reply.opened(FileHandle(fh), flags),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let result = (|| {
            let open = self.handle(fh)?;
            self.settle_others(ino.0, fh)?;
            let mut open = lock(&open);
            if let Some(path) = lock(&self.inodes).path(ino.0) {
                open.file()?.set_path(&path);
            }
            open.catch_up(&self.buffered)?;
            // Reads see this file's own writes.
            open.read(offset, size.min(MAX_IO) as usize, &self.buffered)
        })();
        match result {
            Ok(bytes) => reply.data(&bytes),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let result = (|| {
            let open = self.handle(fh)?;
            self.settle_others(ino.0, fh)?;
            let mut open = lock(&open);
            if !open.writable {
                return Err(Errno::EBADF);
            }
            if let Some(path) = lock(&self.inodes).path(ino.0) {
                open.file()?.set_path(&path);
            }
            open.catch_up(&self.buffered)?;
            open.write(offset, data, &self.buffered)
        })();
        match result {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        match self.handle(fh).and_then(|open| lock(&open).flush(&self.buffered)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Every write sent is durable on every replica when it returns.
        match self.handle(fh).and_then(|open| lock(&open).flush(&self.buffered)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let Some(open) = lock(&self.files).remove(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let mut open = lock(&open);
        let result = open.flush(&self.buffered);
        open.drop_image(&self.buffered);
        if let Some(file) = open.file.take() {
            self.give_back(file.into_parts());
        }
        let ino = open.ino;
        drop(open);
        if !self.is_open(ino) {
            lock(&self.generations).remove(&ino);
        }
        // The last close of a file unlinked while open: now it goes.
        if !self.is_open(ino)
            && let Some((dir, hidden)) = lock(&self.unlinked).remove(&ino)
        {
            let gone = lock(&self.inodes).child_path(dir, &hidden).map(|path| {
                self.clients(req).map(|mut c| c.meta().remove(&path, false).map(|_| ()))
            });
            match gone {
                Some(Ok(Ok(()))) => lock(&self.inodes).unlinked(dir, &hidden),
                other => warn!("mount: removing {hidden}, unlinked while open: {other:?}"),
            }
        }
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let result = (|| {
            let path = self.path(ino.0)?;
            let entries =
                self.clients(req)?.meta().list_plus(&path).map_err(|e| errno(&e, false))?;
            let parent = {
                let inodes = lock(&self.inodes);
                let up = path.rsplit_once('/').map_or("/", |(dir, _)| dir);
                let up = if up.is_empty() { "/" } else { up };
                if ino.0 == ROOT { ROOT } else { self.parent_ino(&inodes, up) }
            };
            let mut listing = vec![
                (ino.0, FileType::Directory, ".".to_string(), None),
                (parent, FileType::Directory, "..".to_string(), None),
            ];
            for (name, stat) in entries.into_iter().filter(|(n, _)| !n.starts_with(UNLINKED_PREFIX))
            {
                let attr = self.attr(&stat);
                listing.push((attr.ino.0, attr.kind, name, Some(attr)));
            }
            let fh = self.new_handle();
            lock(&self.dirs).insert(fh, Arc::new(listing));
            Ok(fh)
        })();
        match result {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(listing) = lock(&self.dirs).get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, (ino, kind, name, _)) in listing.iter().enumerate().skip(skip) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let Some(listing) = lock(&self.dirs).get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        let ttl = self.options.entry_timeout;
        for (i, (child, kind, name, attr)) in listing.iter().enumerate().skip(skip) {
            let attr = match attr {
                Some(attr) => *attr,
                // `.` and `..`: the kernel takes neither a lookup nor the attributes of
                // these from a listing; any directory's attributes do.
                None => self.attr(&Stat::Dir {
                    id: u32::try_from(*child).unwrap_or(0),
                    entries: 0,
                    subdirs: 0,
                    times: Default::default(),
                    owner: meshfs_core::namespace::ROOT_OWNER,
                }),
            };
            if reply.add(INodeNo(*child), i as u64 + 1, name, &ttl, &attr, Generation(0)) {
                break;
            }
            // Every other entry sent is one more lookup the kernel will FORGET.
            if i >= 2 {
                let dir = *kind == FileType::Directory;
                lock(&self.inodes).looked_up(*child, ino.0, name, dir);
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.dirs).remove(&fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.space() {
            Ok(space) => {
                let bsize = 4096u64;
                let last_id = u64::from(meshfs_core::namespace::LAST_ID);
                reply.statfs(
                    space.total / bsize,
                    space.free / bsize,
                    space.free / bsize,
                    last_id,
                    last_id.saturating_sub(space.files),
                    bsize as u32,
                    meshfs_core::path::MAX_COMPONENT_LEN as u32,
                    bsize as u32,
                );
            }
            Err(e) => reply.error(e),
        }
    }
}

impl MeshFs {
    /// The inode number of directory `path`'s inode as the table knows it (the root if the
    /// table has lost it: `..` is only shown, never followed by the kernel through here).
    fn parent_ino(&self, inodes: &Inodes, path: &str) -> u64 {
        if path == "/" {
            return ROOT;
        }
        let mut at = ROOT;
        for name in path.split('/').filter(|n| !n.is_empty()) {
            match inodes.child(at, name) {
                Some(ino) => at = ino,
                None => return ROOT,
            }
        }
        at
    }
}
