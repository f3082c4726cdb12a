//! Log entries: the [`Command`]s the leader proposes, the [`Entry`] that carries one with
//! its session, request id and time, and the [`Outcome`] of applying it; with their byte
//! codecs (log records, and remembered outcomes in snapshots). Applying them is `mod.rs`'s.

use meshfs_group::{ClientId, NodeId};
use meshfs_net::body::{BodyError, BodyReader, BodyWriter};

use super::access::{Caller, read_mode, read_new_mode, write_new_mode};
pub use super::inode::NodeType;
use super::xattr::{MAX_XATTR_NAME, MAX_XATTR_VALUE, XattrSet};
#[cfg(doc)]
use super::{NEW_DIR_MODE, NEW_FILE_MODE};
use crate::descriptor::{
    BlockDescriptor, BlockVersion, FileDescriptor, MAX_BLOCKS_PER_FILE, read_replicas,
    write_replicas,
};
use crate::error::NsError;
use crate::locks::{LockMode, Wake, WakeResult};
use crate::path::{MAX_PATH_LEN, MeshPath, read_path, write_path};
use crate::session::SessionId;

/// Reads a new node's `u8 kind, str target, u32 rdev`, refusing what no such node has: a
/// symlink's target is 1 to [`MAX_PATH_LEN`] bytes without NUL, and only it has one; only
/// devices have a number.
pub fn read_node(r: &mut BodyReader<'_>) -> Result<(NodeType, String, u32), BodyError> {
    let byte = r.u8("node kind")?;
    let kind = NodeType::from_byte(byte)
        .ok_or(BodyError::Invalid { field: "node kind", value: u64::from(byte) })?;
    let target = r.str("symlink target")?.to_string();
    let rdev = r.u32("device number")?;
    let symlink = kind == NodeType::Symlink;
    if symlink == target.is_empty() || target.len() > MAX_PATH_LEN || target.contains('\0') {
        return Err(BodyError::Invalid { field: "symlink target", value: target.len() as u64 });
    }
    if rdev != 0 && !matches!(kind, NodeType::Char | NodeType::Block) {
        return Err(BodyError::Invalid { field: "device number", value: u64::from(rdev) });
    }
    Ok((kind, target, rdev))
}

/// Reads an attribute name: at most [`MAX_XATTR_NAME`] bytes (which namespace it is in is
/// the namespace's to judge, with a clear error).
pub fn read_xattr_name(r: &mut BodyReader<'_>) -> Result<String, BodyError> {
    let name = r.str("attribute name")?;
    if name.len() > MAX_XATTR_NAME {
        return Err(BodyError::Invalid { field: "attribute name", value: name.len() as u64 });
    }
    Ok(name.to_string())
}

/// How `utimens` sets one of an inode's times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    /// Leave it.
    Keep,
    /// The entry's time.
    Now,
    /// This many microseconds since the epoch.
    At(u64),
}

impl SetTime {
    /// Writes `u8 how` (0 keep, 1 now, 2 at), then for 2 `u64 microseconds`.
    pub fn write(self, w: &mut BodyWriter) {
        match self {
            SetTime::Keep => w.u8(0),
            SetTime::Now => w.u8(1),
            SetTime::At(us) => w.u8(2).u64(us),
        };
    }

    /// Reads what [`SetTime::write`] wrote.
    pub fn read(r: &mut BodyReader<'_>) -> Result<SetTime, BodyError> {
        match r.u8("time setting")? {
            0 => Ok(SetTime::Keep),
            1 => Ok(SetTime::Now),
            2 => Ok(SetTime::At(r.u64("time")?)),
            other => Err(BodyError::Invalid { field: "time setting", value: u64::from(other) }),
        }
    }
}

/// A change to the namespace, as proposed by the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Make a directory; with `parents`, make missing parents and accept an existing one.
    Mkdir {
        /// The directory.
        path: MeshPath,
        /// `mkdir -p`.
        parents: bool,
        /// Its mode bits as the client asked (`None`: [`NEW_DIR_MODE`]); parents made take
        /// them with the owner's write and search added.
        mode: Option<u16>,
    },
    /// `create_file_meta_data`: a new empty file; fails if the name exists.
    CreateFile {
        /// The file.
        path: MeshPath,
        /// Copies of each block.
        replication: u8,
        /// Block size in bytes.
        block_size: u32,
        /// Its mode bits as the client asked (`None`: [`NEW_FILE_MODE`]).
        mode: Option<u16>,
    },
    /// A new file of `size` bytes (1 byte to one block) whose block is placed on
    /// `placement` and leased to the entry's session: create, expand and lease in one
    /// entry. All or nothing: if any step fails, the file is not left behind.
    CreateWrite {
        /// The file.
        path: MeshPath,
        /// Copies of its block.
        replication: u8,
        /// Block size in bytes.
        block_size: u32,
        /// Its size.
        size: u64,
        /// The block's replica set, as the leader chose.
        placement: Vec<NodeId>,
        /// As [`Command::CreateFile`]'s.
        mode: Option<u16>,
    },
    /// `expand_file_size`: grow a file to `size`, adding blocks placed as the leader chose.
    ExpandFile {
        /// The file.
        path: MeshPath,
        /// The new size.
        size: u64,
        /// The block index the first replica set is for. Applying uses the sets for the
        /// blocks the file lacks then, so two expands racing for one file both apply.
        first_block: u32,
        /// One replica set per block from `first_block`, in index order.
        placement: Vec<Vec<NodeId>>,
    },
    /// A write lease on block `index` of a file for the entry's session: a new version to
    /// write, starting from the committed one. Readers keep reading the committed version
    /// until the writer commits.
    WriteLease {
        /// The file.
        path: MeshPath,
        /// The block.
        index: u16,
    },
    /// The write under the session's lease is durable on every replica: `version` becomes
    /// the block's committed version (and the file's version goes up).
    CommitWrite {
        /// The file.
        path: MeshPath,
        /// The block.
        index: u16,
        /// The leased version written.
        version: BlockVersion,
    },
    /// The lease holder's chain failed at data-server `failed` before the block was ever
    /// written: `replacement` (the leader's choice) takes its place. The holder leases again
    /// for the new chain.
    SwapReplica {
        /// The file.
        path: MeshPath,
        /// The block.
        index: u16,
        /// The data-server that failed.
        failed: NodeId,
        /// The one taking its place.
        replacement: NodeId,
    },
    /// Repair (the leader's): data-server `add` now holds a verified copy of block `index`
    /// of file `file` at `version` and takes `remove`'s place in its replica set. Refused if
    /// the block moved on (another version, a lease in force) or the set changed meanwhile.
    ReplaceReplica {
        /// The file's id (repair works by id: a rename meanwhile changes nothing).
        file: u32,
        /// The block.
        index: u16,
        /// The block version that was copied.
        version: BlockVersion,
        /// The data-server leaving the set.
        remove: NodeId,
        /// The data-server joining it.
        add: NodeId,
    },
    /// Mark a data-server draining (its blocks move off it and it gets no new ones), or
    /// take the mark off.
    SetDraining {
        /// The data-server.
        server: NodeId,
        /// Draining or not.
        draining: bool,
    },
    /// Move `from` to `to` atomically; `to` must not exist, or with `replace`, what is
    /// there goes in the same step (a file replaced by a file, an empty directory by a
    /// directory), as rename(2) does.
    Rename {
        /// The source.
        from: MeshPath,
        /// The destination.
        to: MeshPath,
        /// Replace an existing target.
        replace: bool,
    },
    /// `link`: `to` (which must not exist) becomes one more name of the file or special
    /// inode at `from` (a hard link; never of a directory).
    Link {
        /// An existing name.
        from: MeshPath,
        /// The new name.
        to: MeshPath,
    },
    /// `setxattr`: attribute `name` (in `user.`) of the file or directory at `path` takes
    /// `value` (its owner, or who may write it).
    SetXattr {
        /// The inode.
        path: MeshPath,
        /// `user.` and the rest, at most [`MAX_XATTR_NAME`] bytes.
        name: String,
        /// At most [`MAX_XATTR_VALUE`] bytes.
        value: Vec<u8>,
        /// Whether the name must be new, or must exist.
        how: XattrSet,
    },
    /// `removexattr`.
    RemoveXattr {
        /// The inode.
        path: MeshPath,
        /// The attribute.
        name: String,
    },
    /// Remove a file, an empty directory, or with `recursive` a whole tree.
    Remove {
        /// The path.
        path: MeshPath,
        /// `rm -r`.
        recursive: bool,
    },
    /// Open the entry's session as a lock session (a retry renews it).
    OpenSession {
        /// Its lease length.
        lease_ms: u64,
        /// How long its locks stay ungranted if it expires holding them.
        lock_delay_ms: u64,
    },
    /// Renew the entry's session's lease from the entry's time. Not deduplicated: applying
    /// it twice is the same as once.
    KeepAlive,
    /// Close the entry's session: its locks are released at once, its waits end.
    CloseSession,
    /// Take a lock for the entry's session, or wait for it.
    Lock {
        /// The lock.
        path: MeshPath,
        /// Shared or exclusive.
        mode: LockMode,
        /// `None`: try only; else wait this long at most.
        wait_ms: Option<u64>,
    },
    /// Give back one hold of a lock, or cancel a wait for it.
    Unlock {
        /// The lock.
        path: MeshPath,
    },
    /// Time passes (the leader's): the sessions named end if their lease ran out by the
    /// entry's time, waits past their deadline end, lock-delays that ended let grants go.
    /// Not deduplicated.
    Clock {
        /// Sessions the leader saw lapse.
        expire: Vec<SessionId>,
    },
    /// Client `client` is no longer in the cluster's config (the leader's): every lock
    /// session of it ends. Its locks are granted again only after its lease (it may believe
    /// in them until then) and the lock-delay. Not deduplicated.
    RevokeClient {
        /// The client removed.
        client: ClientId,
    },
    /// `chmod`: the inode's mode bits (with setuid, setgid and sticky) become `mode`. Its
    /// owner or an operator only.
    Chmod {
        /// The inode.
        path: MeshPath,
        /// The new bits (at most 0o7777).
        mode: u16,
    },
    /// `symlink` and `mknod`: a symbolic link to `target`, or a named pipe, device or
    /// socket (device number `rdev`); fails if the name exists.
    MakeNode {
        /// Where.
        path: MeshPath,
        /// What.
        kind: NodeType,
        /// A symlink's target (1 to [`MAX_PATH_LEN`] bytes, no NUL); empty otherwise.
        target: String,
        /// A device's number; 0 otherwise.
        rdev: u32,
        /// Its mode bits (a symlink's are 0o777 whatever this says).
        mode: u16,
    },
    /// `truncate` to a smaller size (growth is [`Command::ExpandFile`]'s): blocks past
    /// the end go. The writer zeroed the last block's bytes past `size` before.
    Truncate {
        /// The file.
        path: MeshPath,
        /// Its new size, at most its size.
        size: u64,
    },
    /// `utimens`: the inode's access and modification times as asked (its change time
    /// becomes the entry's). Specific times: its owner or an operator; the entry's time:
    /// also anyone who may write it.
    SetTimes {
        /// The inode.
        path: MeshPath,
        /// Its access time.
        atime: SetTime,
        /// Its modification time.
        mtime: SetTime,
    },
    /// `chown`: a new owner (an operator only) or group (its owner, to one of its groups).
    Chown {
        /// The inode.
        path: MeshPath,
        /// The owning user.
        uid: u32,
        /// The owning group.
        gid: u32,
    },
}

/// One log entry: who asked, when (the leader's clock), and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The client session.
    pub session: SessionId,
    /// The request's number in its session; increasing.
    pub request_id: u64,
    /// Milliseconds since the Unix epoch, by the leader's clock when it proposed.
    pub time_ms: u64,
    /// Who it acts for, by the leader's config when it proposed; every replica checks the
    /// command's permissions against it.
    pub caller: Caller,
    /// The change.
    pub command: Command,
}

/// What applying an entry did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A directory was made (or, with parents, already was).
    Mkdir,
    /// A file was made.
    Created(FileDescriptor),
    /// A file grew; these blocks were added.
    Expanded {
        /// The file at its new version.
        file: FileDescriptor,
        /// The new blocks.
        blocks: Vec<BlockDescriptor>,
    },
    /// A write lease was granted: the block at its new version, and its chain.
    Leased {
        /// The block at the lease's version.
        block: BlockDescriptor,
        /// The committed version the write starts from.
        base: BlockVersion,
        /// Its data-servers, in chain order.
        replicas: Vec<NodeId>,
        /// When the lease ends (the leader's clock, ms since the epoch).
        expires_ms: u64,
    },
    /// A block's replica was swapped: its new chain.
    Swapped {
        /// The block's data-servers now.
        replicas: Vec<NodeId>,
    },
    /// A leased write was committed: the block at its new committed version.
    Committed {
        /// The block.
        block: BlockDescriptor,
        /// Its data-servers.
        replicas: Vec<NodeId>,
    },
    /// Moved.
    Renamed,
    /// An inode's mode, owner or group changed.
    Changed,
    /// A data-server's draining mark was set or cleared.
    Draining {
        /// The data-server.
        server: NodeId,
        /// Draining now or not.
        draining: bool,
    },
    /// A lock session was opened (or renewed).
    SessionOpened {
        /// Its lease length.
        lease_ms: u64,
        /// Its lock-delay.
        lock_delay_ms: u64,
        /// When its lease ends.
        expires_ms: u64,
    },
    /// A lock session's lease was renewed.
    KeptAlive {
        /// When it ends now.
        expires_ms: u64,
    },
    /// A lock was granted at once.
    LockGranted {
        /// Its sequencer.
        sequencer: u64,
    },
    /// A lock request waits in the lock's queue; a [`Wake`] in a later entry's outcome
    /// ends the wait.
    LockQueued,
    /// Locks were released or time passed: these waits ended.
    Woke {
        /// The waits that ended.
        wakes: Vec<Wake>,
    },
    /// Removed this many files and directories.
    Removed {
        /// Files removed.
        files: u64,
        /// Directories removed.
        dirs: u64,
    },
    /// Nothing changed, for this reason.
    Failed(NsError),
}

// ---- encodings of entries and outcomes (log records and snapshots) ----

impl Entry {
    /// The entry as bytes (for the log). Layout: u8 format, u32 client, u64 nonce, u64
    /// request id, u64 time, in format 2 the caller ([`Caller::write`]), u8 command, then
    /// the command's fields. An entry of the system caller is written in format 1, as every
    /// entry was before entries carried a caller.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = BodyWriter::new();
        let format = if self.caller.is_system() { 1 } else { 2 };
        w.u8(format)
            .u32(self.session.client.0)
            .u64(self.session.nonce)
            .u64(self.request_id)
            .u64(self.time_ms);
        if format == 2 {
            self.caller.write(&mut w);
        }
        match &self.command {
            Command::Mkdir { path, parents, mode } => {
                w.u8(if mode.is_some() { 21 } else { 1 });
                write_path(&mut w, path);
                w.bool(*parents);
                write_new_mode(&mut w, *mode);
            }
            Command::CreateFile { path, replication, block_size, mode } => {
                w.u8(if mode.is_some() { 22 } else { 2 });
                write_path(&mut w, path);
                w.u8(*replication).u32(*block_size);
                write_new_mode(&mut w, *mode);
            }
            Command::ExpandFile { path, size, first_block, placement } => {
                w.u8(3);
                write_path(&mut w, path);
                w.u64(*size).u32(*first_block).u32(placement.len() as u32);
                for set in placement {
                    write_replicas(&mut w, set);
                }
            }
            Command::WriteLease { path, index } => {
                w.u8(6);
                write_path(&mut w, path);
                w.u16(*index);
            }
            Command::CreateWrite { path, replication, block_size, size, placement, mode } => {
                w.u8(if mode.is_some() { 23 } else { 9 });
                write_path(&mut w, path);
                w.u8(*replication).u32(*block_size).u64(*size);
                write_replicas(&mut w, placement);
                write_new_mode(&mut w, *mode);
            }
            Command::CommitWrite { path, index, version } => {
                w.u8(7);
                write_path(&mut w, path);
                w.u16(*index).u16(version.0);
            }
            Command::SwapReplica { path, index, failed, replacement } => {
                w.u8(8);
                write_path(&mut w, path);
                w.u16(*index).u32(failed.0).u32(replacement.0);
            }
            Command::ReplaceReplica { file, index, version, remove, add } => {
                w.u8(10).u32(*file).u16(*index).u16(version.0).u32(remove.0).u32(add.0);
            }
            Command::SetDraining { server, draining } => {
                w.u8(11).u32(server.0).bool(*draining);
            }
            Command::Rename { from, to, replace } => {
                w.u8(if *replace { 24 } else { 4 });
                write_path(&mut w, from);
                write_path(&mut w, to);
            }
            Command::Link { from, to } => {
                w.u8(28);
                write_path(&mut w, from);
                write_path(&mut w, to);
            }
            Command::SetXattr { path, name, value, how } => {
                w.u8(29);
                write_path(&mut w, path);
                w.str(name).bytes(value).u8(how.byte());
            }
            Command::RemoveXattr { path, name } => {
                w.u8(30);
                write_path(&mut w, path);
                w.str(name);
            }
            Command::Remove { path, recursive } => {
                w.u8(5);
                write_path(&mut w, path);
                w.bool(*recursive);
            }
            Command::OpenSession { lease_ms, lock_delay_ms } => {
                w.u8(12).u64(*lease_ms).u64(*lock_delay_ms);
            }
            Command::KeepAlive => {
                w.u8(13);
            }
            Command::CloseSession => {
                w.u8(14);
            }
            Command::Lock { path, mode, wait_ms } => {
                w.u8(15);
                write_path(&mut w, path);
                w.u8(mode.byte()).bool(wait_ms.is_some()).u64(wait_ms.unwrap_or(0));
            }
            Command::Unlock { path } => {
                w.u8(16);
                write_path(&mut w, path);
            }
            Command::Clock { expire } => {
                w.u8(17).u32(expire.len() as u32);
                for session in expire {
                    session.write(&mut w);
                }
            }
            Command::RevokeClient { client } => {
                w.u8(18).u32(client.0);
            }
            Command::Chmod { path, mode } => {
                w.u8(19);
                write_path(&mut w, path);
                w.u16(*mode);
            }
            Command::Chown { path, uid, gid } => {
                w.u8(20);
                write_path(&mut w, path);
                w.u32(*uid).u32(*gid);
            }
            Command::MakeNode { path, kind, target, rdev, mode } => {
                w.u8(27);
                write_path(&mut w, path);
                w.u8(kind.byte()).str(target).u32(*rdev).u16(*mode);
            }
            Command::Truncate { path, size } => {
                w.u8(26);
                write_path(&mut w, path);
                w.u64(*size);
            }
            Command::SetTimes { path, atime, mtime } => {
                w.u8(25);
                write_path(&mut w, path);
                atime.write(&mut w);
                mtime.write(&mut w);
            }
        }
        w.finish()
    }

    /// Reads what [`Entry::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<Entry, BodyError> {
        let mut r = BodyReader::new(bytes);
        let format = r.u8("entry format")?;
        if format != 1 && format != 2 {
            return Err(BodyError::Invalid { field: "entry format", value: u64::from(format) });
        }
        let session = SessionId::read(&mut r)?;
        let request_id = r.u64("request id")?;
        let time_ms = r.u64("time")?;
        let caller = if format == 2 { Caller::read(&mut r)? } else { Caller::system() };
        if format == 2 && caller.is_system() {
            // The system caller is written in format 1 only: one entry, one encoding.
            return Err(BodyError::Invalid { field: "entry format", value: 2 });
        }
        let tag = r.u8("command")?;
        let command = match tag {
            1 | 21 => Command::Mkdir {
                path: read_path(&mut r)?,
                parents: r.bool("parents")?,
                mode: read_new_mode(&mut r, tag == 21)?,
            },
            2 | 22 => Command::CreateFile {
                path: read_path(&mut r)?,
                replication: r.u8("replication")?,
                block_size: match r.u32("block size")? {
                    0 => return Err(BodyError::Invalid { field: "block size", value: 0 }),
                    n => n,
                },
                mode: read_new_mode(&mut r, tag == 22)?,
            },
            3 => {
                let path = read_path(&mut r)?;
                let size = r.u64("size")?;
                let first_block = r.u32("first block")?;
                let count = r.u32("placement count")?;
                if count > MAX_BLOCKS_PER_FILE {
                    return Err(BodyError::Invalid {
                        field: "placement count",
                        value: u64::from(count),
                    });
                }
                let mut placement = Vec::with_capacity((count as usize).min(r.remaining()));
                for _ in 0..count {
                    placement.push(read_replicas(&mut r)?);
                }
                Command::ExpandFile { path, size, first_block, placement }
            }
            4 | 24 => Command::Rename {
                from: read_path(&mut r)?,
                to: read_path(&mut r)?,
                replace: tag == 24,
            },
            28 => Command::Link { from: read_path(&mut r)?, to: read_path(&mut r)? },
            29 => {
                let path = read_path(&mut r)?;
                let name = read_xattr_name(&mut r)?;
                let value = r.bytes("attribute value")?;
                if value.len() > MAX_XATTR_VALUE {
                    return Err(BodyError::Invalid {
                        field: "attribute value",
                        value: value.len() as u64,
                    });
                }
                let how = r.u8("attribute setting")?;
                let how = XattrSet::from_byte(how).ok_or(BodyError::Invalid {
                    field: "attribute setting",
                    value: u64::from(how),
                })?;
                Command::SetXattr { path, name, value: value.to_vec(), how }
            }
            30 => Command::RemoveXattr { path: read_path(&mut r)?, name: read_xattr_name(&mut r)? },
            6 => Command::WriteLease { path: read_path(&mut r)?, index: r.u16("block index")? },
            9 | 23 => {
                let path = read_path(&mut r)?;
                let replication = r.u8("replication")?;
                let block_size = match r.u32("block size")? {
                    0 => return Err(BodyError::Invalid { field: "block size", value: 0 }),
                    n => n,
                };
                let size = r.u64("size")?;
                let placement = read_replicas(&mut r)?;
                let mode = read_new_mode(&mut r, tag == 23)?;
                Command::CreateWrite { path, replication, block_size, size, placement, mode }
            }
            8 => Command::SwapReplica {
                path: read_path(&mut r)?,
                index: r.u16("block index")?,
                failed: NodeId(r.u32("failed")?),
                replacement: NodeId(r.u32("replacement")?),
            },
            7 => Command::CommitWrite {
                path: read_path(&mut r)?,
                index: r.u16("block index")?,
                version: BlockVersion(r.u16("block version")?),
            },
            5 => Command::Remove { path: read_path(&mut r)?, recursive: r.bool("recursive")? },
            10 => Command::ReplaceReplica {
                file: r.u32("file id")?,
                index: r.u16("block index")?,
                version: BlockVersion(r.u16("block version")?),
                remove: NodeId(r.u32("removed server")?),
                add: NodeId(r.u32("added server")?),
            },
            11 => Command::SetDraining {
                server: NodeId(r.u32("server")?),
                draining: r.bool("draining")?,
            },
            12 => Command::OpenSession {
                lease_ms: r.u64("lease")?,
                lock_delay_ms: r.u64("lock delay")?,
            },
            13 => Command::KeepAlive,
            14 => Command::CloseSession,
            15 => {
                let path = read_path(&mut r)?;
                let mode = LockMode::from_byte(r.u8("lock mode")?)?;
                let waits = r.bool("waits")?;
                let wait_ms = r.u64("wait")?;
                Command::Lock { path, mode, wait_ms: waits.then_some(wait_ms) }
            }
            16 => Command::Unlock { path: read_path(&mut r)? },
            17 => {
                let count = r.u32("session count")?;
                if count as usize > r.remaining() / 12 {
                    return Err(BodyError::Invalid {
                        field: "session count",
                        value: u64::from(count),
                    });
                }
                let expire = (0..count)
                    .map(|_| SessionId::read(&mut r))
                    .collect::<Result<Vec<_>, BodyError>>()?;
                Command::Clock { expire }
            }
            18 => Command::RevokeClient { client: ClientId(r.u32("client")?) },
            19 => Command::Chmod { path: read_path(&mut r)?, mode: read_mode(&mut r)? },
            20 => {
                Command::Chown { path: read_path(&mut r)?, uid: r.u32("uid")?, gid: r.u32("gid")? }
            }
            26 => Command::Truncate { path: read_path(&mut r)?, size: r.u64("size")? },
            27 => {
                let path = read_path(&mut r)?;
                let (kind, target, rdev) = read_node(&mut r)?;
                Command::MakeNode { path, kind, target, rdev, mode: read_mode(&mut r)? }
            }
            25 => Command::SetTimes {
                path: read_path(&mut r)?,
                atime: SetTime::read(&mut r)?,
                mtime: SetTime::read(&mut r)?,
            },
            other => return Err(BodyError::Invalid { field: "command", value: u64::from(other) }),
        };
        r.finish()?;
        Ok(Entry { session, request_id, time_ms, caller, command })
    }
}

pub(super) fn write_outcome(w: &mut BodyWriter, outcome: &Outcome) {
    match outcome {
        Outcome::Mkdir => {
            w.u8(1);
        }
        Outcome::Created(fd) => {
            w.u8(2);
            fd.write(w);
        }
        Outcome::Expanded { file, blocks } => {
            w.u8(3);
            file.write(w);
            w.u32(blocks.len() as u32);
            for block in blocks {
                block.write(w);
            }
        }
        Outcome::Renamed => {
            w.u8(4);
        }
        Outcome::Leased { block, base, replicas, expires_ms } => {
            w.u8(8);
            block.write(w);
            w.u16(base.0).u64(*expires_ms);
            write_replicas(w, replicas);
        }
        Outcome::Swapped { replicas } => {
            w.u8(10);
            write_replicas(w, replicas);
        }
        Outcome::Committed { block, replicas } => {
            w.u8(9);
            block.write(w);
            write_replicas(w, replicas);
        }
        Outcome::Removed { files, dirs } => {
            w.u8(5).u64(*files).u64(*dirs);
        }
        Outcome::Draining { server, draining } => {
            w.u8(11).u32(server.0).bool(*draining);
        }
        Outcome::SessionOpened { lease_ms, lock_delay_ms, expires_ms } => {
            w.u8(12).u64(*lease_ms).u64(*lock_delay_ms).u64(*expires_ms);
        }
        Outcome::KeptAlive { expires_ms } => {
            w.u8(13).u64(*expires_ms);
        }
        Outcome::LockGranted { sequencer } => {
            w.u8(14).u64(*sequencer);
        }
        Outcome::LockQueued => {
            w.u8(15);
        }
        Outcome::Changed => {
            w.u8(17);
        }
        Outcome::Woke { wakes } => {
            w.u8(16).u32(wakes.len() as u32);
            for wake in wakes {
                wake.session.write(w);
                w.u64(wake.request_id);
                write_path(w, &wake.path);
                w.u8(wake.mode.byte());
                match wake.result {
                    WakeResult::Granted { sequencer } => w.u8(1).u64(sequencer),
                    WakeResult::TimedOut => w.u8(2),
                    WakeResult::SessionEnded => w.u8(3),
                    WakeResult::Cancelled => w.u8(4),
                };
            }
        }
        Outcome::Failed(err) => {
            w.u8(6);
            err.write(w);
        }
    }
}

pub(super) fn read_outcome(r: &mut BodyReader<'_>) -> Result<Outcome, BodyError> {
    Ok(match r.u8("outcome")? {
        1 => Outcome::Mkdir,
        2 => Outcome::Created(FileDescriptor::read(r)?),
        3 => {
            let file = FileDescriptor::read(r)?;
            let count = r.u32("block count")?;
            if count > MAX_BLOCKS_PER_FILE {
                return Err(BodyError::Invalid { field: "block count", value: u64::from(count) });
            }
            let blocks =
                (0..count).map(|_| BlockDescriptor::read(r)).collect::<Result<Vec<_>, _>>()?;
            Outcome::Expanded { file, blocks }
        }
        4 => Outcome::Renamed,
        // A lease as snapshot format 1 wrote it: no base or expiry (a retry of it gets a
        // token that has run out, and asks again).
        7 => {
            let block = BlockDescriptor::read(r)?;
            let replicas = read_replicas(r)?;
            let base = BlockVersion(block.version.0.wrapping_sub(1));
            Outcome::Leased { block, base, replicas, expires_ms: 0 }
        }
        8 => {
            let block = BlockDescriptor::read(r)?;
            let base = BlockVersion(r.u16("base version")?);
            let expires_ms = r.u64("lease expiry")?;
            Outcome::Leased { block, base, replicas: read_replicas(r)?, expires_ms }
        }
        10 => Outcome::Swapped { replicas: read_replicas(r)? },
        9 => Outcome::Committed { block: BlockDescriptor::read(r)?, replicas: read_replicas(r)? },
        5 => Outcome::Removed { files: r.u64("files")?, dirs: r.u64("dirs")? },
        11 => Outcome::Draining { server: NodeId(r.u32("server")?), draining: r.bool("draining")? },
        12 => Outcome::SessionOpened {
            lease_ms: r.u64("lease")?,
            lock_delay_ms: r.u64("lock delay")?,
            expires_ms: r.u64("lease end")?,
        },
        13 => Outcome::KeptAlive { expires_ms: r.u64("lease end")? },
        14 => Outcome::LockGranted { sequencer: r.u64("sequencer")? },
        15 => Outcome::LockQueued,
        16 => {
            let count = r.u32("wake count")?;
            let mut wakes = Vec::with_capacity((count as usize).min(r.remaining() / 24));
            for _ in 0..count {
                let session = SessionId::read(r)?;
                let request_id = r.u64("request id")?;
                let path = read_path(r)?;
                let mode = LockMode::from_byte(r.u8("lock mode")?)?;
                let result = match r.u8("wake")? {
                    1 => WakeResult::Granted { sequencer: r.u64("sequencer")? },
                    2 => WakeResult::TimedOut,
                    3 => WakeResult::SessionEnded,
                    4 => WakeResult::Cancelled,
                    other => {
                        return Err(BodyError::Invalid { field: "wake", value: u64::from(other) });
                    }
                };
                wakes.push(Wake { session, request_id, path, mode, result });
            }
            Outcome::Woke { wakes }
        }
        6 => Outcome::Failed(NsError::read(r)?),
        17 => Outcome::Changed,
        other => return Err(BodyError::Invalid { field: "outcome", value: u64::from(other) }),
    })
}
