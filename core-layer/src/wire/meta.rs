//! The meta protocol: a client's namespace requests ([`MetaRequest`], one [`MetaOp`] each)
//! and the meta-servers' answers ([`MetaReply`]), with fsck reports and lock listings.
//!
//! A request is `u64 session, u64 request id, u8 op` ([`OpCode`]) and the op's fields; a
//! reply is a `u8` tag ([`ReplyTag`]) and its fields. Both tables are below; numbers never
//! change meaning. Listings and block lists come in pages ([`MAX_LIST_PAGE`],
//! [`MAX_STAT_BLOCKS`]) so that no reply outgrows a frame.
//!
//! | op | [`MetaOp`] | fields |
//! |---|---|---|
//! | 1 | `Mkdir` | `str path, bool parents` |
//! | 2 | `Create` | `str path, u8 replication` (0: the cluster's) |
//! | 3 | `Rename` | `str from, str to` |
//! | 4 | `Remove` | `str path, bool recursive` |
//! | 5 | `Stat` | `str path, u32 first block` |
//! | 6 | `List` | `str path, str after, u32 limit` |
//! | 7 | `Expand` | `str path, u64 size` |
//! | 8 | `WriteLease` | `str path, u16 block index` |
//! | 9 | `ReportBadReplica` | block descriptor, `u32 data-server, str reason` |
//! | 10 | `CommitWrite` | `str path, u16 block index, u16 version` |
//! | 11 | `SwapReplica` | `str path, u16 block index, u32 failed` |
//! | 12 | `CreateWrite` | `str path, u8 replication, u64 size` |
//! | 13 | `Drain` | `u32 server, bool draining` |
//! | 14 | `Fsck` | `str path` |
//! | 15 | `OpenSession` | |
//! | 16 | `KeepAlive` | |
//! | 17 | `CloseSession` | |
//! | 18 | `Lock` | `str path, u8 mode, bool waits, u64 wait ms` |
//! | 19 | `Unlock` | `str path` |
//! | 20 | `Locks` | `str path` |
//! | 21 | `ClusterMap` | |
//! | 22 | `CommitProven` | `str path, u16 block index, u16 version, [32] digest`, the replicas' proofs (`u8 n`, `n` x `u32 replica, [32] digest, [32] mac`) |
//! | 23 | `Chmod` | `str path, u16 mode` |
//! | 24 | `Chown` | `str path, u32 uid, u32 gid` |
//! | 25 | `ActAs` | `u32 uid, u8 n`, `n` x `u32 gid`, then another op (not `ActAs`) |
//! | 26 | `MkdirMode` | as 1, then `u16 mode` |
//! | 27 | `CreateMode` | as 2, then `u16 mode` |
//! | 28 | `CreateWriteMode` | as 12, then `u16 mode` |
//! | 29 | `RenameReplace` | as 3: a rename that replaces its target |
//! | 30 | `SetTimes` | `str path`, then atime and mtime each `u8 how` (0 keep, 1 now, 2 at) and for 2 `u64 us` |
//! | 31 | `Truncate` | `str path, u64 size` (at most the file's) |
//! | 32 | `MakeNode` | `str path, u8 type` (1 symlink, 2 fifo, 3 char, 4 block, 5 socket), `str target, u32 device, u16 mode` |
//! | 33 | `Link` | `str from, str to` |
//! | 34 | `SetXattr` | `str path, str name, bytes value, u8 how` (0 either, 1 create, 2 replace) |
//! | 35 | `RemoveXattr` | `str path, str name` |
//! | 36 | `GetXattr` | `str path, str name` |
//! | 37 | `ListXattr` | `str path` |
//! | 38 | `ListPlus` | as 6: answered with each entry's stat |
//!
//! Ops 26 to 28 are [`MetaOp::Mkdir`], [`MetaOp::Create`] and [`MetaOp::CreateWrite`] with
//! the new inode's mode (`u16`, at most 0o7777, the client's umask applied); without one
//! they are ops 1, 2 and 12, and the inode takes 0o755 or 0o644.
//!
//! | tag | [`MetaReply`] | fields |
//! |---|---|---|
//! | 1 | `Done` | |
//! | 2 | `Created` | file descriptor |
//! | 3 | `Removed` | `u64 files, u64 dirs` |
//! | 4 | `Stat` | a stat (below), `u32 total blocks, u32 first block` |
//! | 5 | `List` | `u32 count`, entries, `bool more` |
//! | 6 | `NotLeader` | `u32 leader` (0: unknown) |
//! | 7 | `Failed` | a namespace error ([`NsError::write`]) |
//! | 8 | `Unavailable` | `str reason` |
//! | 9 | `Expanded` | file descriptor, `u32 new blocks` |
//! | 10 | `Lease` | a [`Token`]: the block at its new version, its chain, client, expiry, MAC |
//! | 11 | `Fsck` | an [`FsckReport`] |
//! | 12 | `Session` | `u64 lease ms, u64 lock delay ms` |
//! | 13 | `Locked` | `u64 sequencer` |
//! | 14 | `Locks` | `u32 count`, locks with holders and waiters, `bool more` |
//! | 15 | `ClusterMap` | `u32 block size, u8 replication, u32 count`, then per server `u8 role, u32 id, str addr` |
//! | 16 | `StatRead` | as `Stat`, then each block's read token (`u64 expires ms, [32] mac`) |
//! | 17 | `ListOwned` | as `List`, each entry followed by `u32 uid, u32 gid, u16 mode` |
//! | 18 | `Xattr` | `bytes value` |
//! | 19 | `XattrNames` | `u32 count`, then each `str name` |
//! | 20 | `ListPlus` | `u32 count`, then each `str name` and a stat (a file's with no blocks), `bool more` |
//!
//! A stat is `u8 kind` and its fields: 2, a directory: `u32 id, u64 entries, u64 mtime`,
//! then the owner (`u32 uid, u32 gid, u16 mode`); 3, a file: its descriptor, `u64 size,
//! u32 block size, u8 replication, u64 ctime, u64 mtime`, the owner, `u32 count` and each
//! block's descriptor and replicas. Kinds 0 and 1 are the same without the owner, as builds
//! before owners wrote them; they read as [`Owner::legacy`], as everything was then.

use meshfs_group::{NodeId, Role};
use meshfs_net::body::{BodyError, BodyReader, BodyWriter};

use super::status::{HealthCounts, read_health, role_code, role_from, write_health};
use super::wire_codes;
use crate::descriptor::{
    BlockDescriptor, BlockVersion, FileDescriptor, read_replicas, write_replicas,
};
use crate::error::NsError;
use crate::locks::{Holder, LockInfo, LockMode, Waiting};
use crate::namespace::access::{read_mode, read_new_mode, write_new_mode};
use crate::namespace::entry::read_xattr_name;
use crate::namespace::{
    BlockMeta, DirEntry, FileMeta, MAX_XATTR_BYTES, MAX_XATTR_VALUE, NodeType, Owner, SetTime,
    Stat, Times, XattrSet,
};
use crate::path::{MeshPath, read_path, write_path};
use crate::token::{ReadToken, ReplicaProof, Token, read_proofs, write_proofs};

/// Most directory entries in one list reply (each at most about 270 bytes).
pub const MAX_LIST_PAGE: u32 = 2048;
/// Most blocks described in one stat reply (each at most 12 + 1 + 16 * 4 bytes, and a
/// 40-byte read token).
pub const MAX_STAT_BLOCKS: u32 = 8192;

const _: () =
    assert!((MAX_LIST_PAGE as usize) * 280 < meshfs_net::frame::DEFAULT_MAX_BODY_LEN as usize);
const _: () = assert!(
    (MAX_STAT_BLOCKS as usize) * (77 + 40) + 256 < meshfs_net::frame::DEFAULT_MAX_BODY_LEN as usize
);

/// A namespace request from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaRequest {
    /// The client process's random session number.
    pub session: u64,
    /// The request's number in the session; a retry reuses it.
    pub request_id: u64,
    /// What to do.
    pub op: MetaOp,
}

/// A namespace operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaOp {
    /// `mkdir [-p]`.
    Mkdir {
        /// The directory.
        path: MeshPath,
        /// Make parents; accept an existing directory.
        parents: bool,
        /// Its mode bits, the client's umask applied (at most 0o7777); `None`: 0o755.
        /// Parents it makes take them with the owner's write and search added.
        mode: Option<u16>,
    },
    /// `create_file_meta_data`.
    Create {
        /// The file.
        path: MeshPath,
        /// Copies per block; 0 for the cluster's default.
        replication: u8,
        /// Its mode bits, the client's umask applied (at most 0o7777); `None`: 0o644.
        mode: Option<u16>,
    },
    /// `rename`.
    Rename {
        /// The source.
        from: MeshPath,
        /// The destination.
        to: MeshPath,
        /// Replace what is at `to` (a file by a file, an empty directory by a directory),
        /// as rename(2) does; without it `to` must not exist.
        replace: bool,
    },
    /// A new file of `size` bytes (at most one block) with a write lease on its block, in
    /// one consensus round: what a small file's create, expand and lease would do.
    CreateWrite {
        /// The file.
        path: MeshPath,
        /// Copies per block; 0 for the cluster's default.
        replication: u8,
        /// Its size, 1 byte to one block.
        size: u64,
        /// As [`MetaOp::Create`]'s.
        mode: Option<u16>,
    },
    /// `remove [-r]`.
    Remove {
        /// The path.
        path: MeshPath,
        /// Remove a whole tree.
        recursive: bool,
    },
    /// `stat` / `get_file_meta_data`, blocks from `first_block` on.
    Stat {
        /// The path.
        path: MeshPath,
        /// First block to describe.
        first_block: u32,
    },
    /// `expand_file_size`: grow a file to `size` bytes, placing its new blocks.
    Expand {
        /// The file.
        path: MeshPath,
        /// Its new size.
        size: u64,
    },
    /// A write lease on one block: a new version to write, its chain and a token.
    WriteLease {
        /// The file.
        path: MeshPath,
        /// The block.
        index: u16,
    },
    /// The lease holder's chain failed at `failed`, and the block was never written: put
    /// another live data-server in its place (then lease again).
    SwapReplica {
        /// The file.
        path: MeshPath,
        /// The block.
        index: u16,
        /// The data-server that failed.
        failed: NodeId,
    },
    /// The leased write is durable on every replica: make its version the block's.
    CommitWrite {
        /// The file.
        path: MeshPath,
        /// The block.
        index: u16,
        /// The version the lease granted.
        version: BlockVersion,
    },
    /// [`MetaOp::CommitWrite`] with what proves every replica holds the same bytes: the
    /// digest of what the client sent and each replica's signed digest of what it wrote.
    /// The leader commits only if they all match.
    CommitProven {
        /// The file.
        path: MeshPath,
        /// The block.
        index: u16,
        /// The version the lease granted.
        version: BlockVersion,
        /// The digest of what the client sent ([`crate::token::WriteDigest`]).
        digest: [u8; 32],
        /// The replicas' proofs, as the chain's last acknowledgement carried them.
        proofs: Vec<ReplicaProof>,
    },
    /// `op` on behalf of the local user `uid` with groups `gids`: from a client marked
    /// `trusted` (a mount acting for the users of its host); refused from any other.
    ActAs {
        /// The user acted for.
        uid: u32,
        /// Its groups, the first its primary (at most [`MAX_ACT_AS_GIDS`]).
        gids: Vec<u32>,
        /// What it asks; never another `ActAs`.
        op: Box<MetaOp>,
    },
    /// `chmod`: the mode bits of an inode (its owner or an operator).
    Chmod {
        /// The inode.
        path: MeshPath,
        /// The bits, at most 0o7777.
        mode: u16,
    },
    /// `symlink` or `mknod`: a symbolic link, named pipe, device or socket.
    MakeNode {
        /// Where.
        path: MeshPath,
        /// What.
        kind: NodeType,
        /// A symlink's target; empty otherwise.
        target: String,
        /// A device's number; 0 otherwise.
        rdev: u32,
        /// Its mode bits, the umask applied (a symlink's are 0o777).
        mode: u16,
    },
    /// `setxattr`: a `user.` attribute of a file or directory.
    SetXattr {
        /// The inode.
        path: MeshPath,
        /// The attribute's name.
        name: String,
        /// Its value, at most 64 KiB.
        value: Vec<u8>,
        /// Whether the name must be new, or must exist.
        how: XattrSet,
    },
    /// `removexattr`.
    RemoveXattr {
        /// The inode.
        path: MeshPath,
        /// The attribute's name.
        name: String,
    },
    /// `getxattr`: answered with [`MetaReply::Xattr`].
    GetXattr {
        /// The inode.
        path: MeshPath,
        /// The attribute's name.
        name: String,
    },
    /// `listxattr`: answered with [`MetaReply::XattrNames`].
    ListXattr {
        /// The inode.
        path: MeshPath,
    },
    /// `link`: one more name for a file or special inode (a hard link).
    Link {
        /// An existing name.
        from: MeshPath,
        /// The new name; must not exist.
        to: MeshPath,
    },
    /// `truncate` to a smaller size (the client zeroed the last block's tail first).
    Truncate {
        /// The file.
        path: MeshPath,
        /// Its new size, at most its size.
        size: u64,
    },
    /// `utimens`: set an inode's access and modification times.
    SetTimes {
        /// The inode.
        path: MeshPath,
        /// Its access time.
        atime: SetTime,
        /// Its modification time.
        mtime: SetTime,
    },
    /// `chown`: the owner (an operator) or group (the owner, to one of its groups).
    Chown {
        /// The inode.
        path: MeshPath,
        /// The owner.
        uid: u32,
        /// The group.
        gid: u32,
    },
    /// A client found a replica down or damaged (a read failed there).
    ReportBadReplica {
        /// The block, at the version read.
        block: BlockDescriptor,
        /// The data-server that failed.
        server: NodeId,
        /// What went wrong.
        reason: String,
    },
    /// Mark a data-server draining (its blocks move off it) or clear the mark.
    Drain {
        /// The data-server.
        server: NodeId,
        /// Draining or not.
        draining: bool,
    },
    /// Check every block of the files at or under `path` against the data-servers' reports.
    Fsck {
        /// Where to start.
        path: MeshPath,
    },
    /// Open a lock session (the request's session number names it), with the cluster's
    /// lease length and lock-delay.
    OpenSession,
    /// Renew the session's lease.
    KeepAlive,
    /// Close the session: its locks are released at once.
    CloseSession,
    /// The cluster's servers and file defaults, from the config of the meta-server asked (any
    /// meta-server answers): how a client that holds only a client config finds the
    /// data-servers.
    ClusterMap,
    /// Take a lock; with `wait_ms`, wait in its queue that long at most (the answer comes
    /// when granted or given up).
    Lock {
        /// The lock.
        path: MeshPath,
        /// Shared or exclusive.
        mode: LockMode,
        /// `None`: try only.
        wait_ms: Option<u64>,
    },
    /// Give back one hold of a lock (or cancel the session's wait for it).
    Unlock {
        /// The lock.
        path: MeshPath,
    },
    /// The locks at or under `path`, holders and waiters.
    Locks {
        /// Where to look.
        path: MeshPath,
    },
    /// `list`: entries after `after` (by name), at most `limit`.
    List {
        /// The directory.
        path: MeshPath,
        /// List names after this one ("" for the start).
        after: String,
        /// Most entries wanted (capped at [`MAX_LIST_PAGE`]).
        limit: u32,
    },
    /// [`MetaOp::List`] answered with each entry's stat ([`MetaReply::ListPlus`]).
    ListPlus {
        /// The directory.
        path: MeshPath,
        /// List names after this one ("" for the start).
        after: String,
        /// Most entries wanted (capped at [`MAX_LIST_PAGE`]).
        limit: u32,
    },
}

impl MetaOp {
    /// Whether the operation changes the namespace (goes through the log).
    pub fn is_write(&self) -> bool {
        !matches!(
            self,
            MetaOp::Stat { .. }
                | MetaOp::List { .. }
                | MetaOp::ListPlus { .. }
                | MetaOp::GetXattr { .. }
                | MetaOp::ListXattr { .. }
                | MetaOp::ReportBadReplica { .. }
                | MetaOp::Fsck { .. }
                | MetaOp::Locks { .. }
        )
    }
}

/// The answer to a [`MetaRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaReply {
    /// mkdir or rename done.
    Done,
    /// A write lease: the token names the block at its new version and its chain.
    Lease(Token),
    /// A file grew.
    Expanded {
        /// The file at its new version.
        file: FileDescriptor,
        /// Blocks added.
        new_blocks: u32,
    },
    /// The file made.
    Created(FileDescriptor),
    /// What a remove removed.
    Removed {
        /// Files.
        files: u64,
        /// Directories.
        dirs: u64,
    },
    /// A stat; for files, blocks from `first_block`, at most [`MAX_STAT_BLOCKS`].
    Stat {
        /// The stat.
        stat: Stat,
        /// Blocks the file has in all.
        total_blocks: u32,
        /// Index of the first block in `stat`.
        first_block: u32,
    },
    /// A page of a listing.
    List {
        /// The entries, by name.
        entries: Vec<DirEntry>,
        /// More entries follow the last one.
        more: bool,
    },
    /// Ask the leader instead (if known).
    NotLeader {
        /// The leader, if known.
        leader: Option<NodeId>,
    },
    /// The namespace refused it.
    Failed(NsError),
    /// The server could not take it now (e.g. an election); retry.
    Unavailable(String),
    /// What fsck found.
    Fsck(FsckReport),
    /// A lock session is open (or renewed).
    Session {
        /// Its lease length.
        lease_ms: u64,
        /// How long its locks stay ungranted if it expires holding them.
        lock_delay_ms: u64,
    },
    /// A lock is the session's.
    Locked {
        /// The grant's sequencer.
        sequencer: u64,
    },
    /// Locks with their holders and waiters, by path.
    Locks {
        /// The locks, at most [`MAX_LOCKS_LISTED`].
        locks: Vec<LockInfo>,
        /// More locks matched.
        more: bool,
    },
    /// The cluster's servers and the defaults of new files.
    ClusterMap(ClusterMap),
    /// An attribute's value.
    Xattr(Vec<u8>),
    /// An inode's attribute names, in order.
    XattrNames(Vec<String>),
    /// A page of a listing with each entry's stat.
    ListPlus {
        /// (name, stat), by name; files' stats carry no blocks.
        entries: Vec<(String, Stat)>,
        /// More entries follow the last one.
        more: bool,
    },
}

/// Most groups a [`MetaOp::ActAs`] names.
pub const MAX_ACT_AS_GIDS: usize = 16;

/// Most servers one [`ClusterMap`] lists.
pub const MAX_MAP_SERVERS: u32 = 4096;

/// The servers of a cluster and the defaults of new files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMap {
    /// The block size of new files.
    pub block_size: u32,
    /// Copies per block of new files.
    pub replication: u8,
    /// Every server: its role, id and the address it listens on, at most
    /// [`MAX_MAP_SERVERS`].
    pub servers: Vec<(Role, NodeId, String)>,
}

/// Most locks one [`MetaReply::Locks`] lists.
pub const MAX_LOCKS_LISTED: u32 = 1000;
/// Most holders or waiters of one lock a [`MetaReply::Locks`] lists.
pub const MAX_LOCK_PARTIES: u32 = 10_000;

/// Most problems one fsck reply lists (the counts cover them all).
pub const MAX_FSCK_PROBLEMS: u32 = 500;

/// Most bytes the items of one fsck or locks reply take: the list ends early (with `more`)
/// when the next item would pass it, so that the reply fits in a frame whatever the paths.
pub const REPLY_ITEMS_BUDGET: usize = 768 * 1024;

const _: () =
    assert!(REPLY_ITEMS_BUDGET + 64 * 1024 < meshfs_net::frame::DEFAULT_MAX_BODY_LEN as usize);

impl FsckProblem {
    /// Its size in a [`MetaReply::Fsck`].
    pub fn encoded_len(&self) -> usize {
        2 + self.path.len() + 12 + 1 + (1 + 4 * self.replicas.len()) + (1 + 4 * self.good.len()) + 2
    }
}

/// One block fsck found short of replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsckProblem {
    /// The file's path.
    pub path: String,
    /// The block, at its committed version.
    pub block: BlockDescriptor,
    /// Copies wanted.
    pub wanted: u8,
    /// Its replica set.
    pub replicas: Vec<NodeId>,
    /// Members of the set holding a good copy.
    pub good: Vec<NodeId>,
    /// No good copy is known anywhere: its data is unavailable.
    pub missing: bool,
    /// A repair copy of it is under way.
    pub repairing: bool,
}

/// What fsck found under a path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsckReport {
    /// Files checked.
    pub files: u64,
    /// Blocks checked (written or not).
    pub blocks: u64,
    /// The blocks by health.
    pub health: HealthCounts,
    /// The blocks with problems, at most [`MAX_FSCK_PROBLEMS`], by path and index.
    pub problems: Vec<FsckProblem>,
    /// Whether more problems were found than listed.
    pub more: bool,
    /// Data-servers whose reports are not complete (down, or not yet reported): their
    /// replicas are not counted as good.
    pub unknown_servers: Vec<NodeId>,
}

wire_codes! {
    /// The op byte of a [`MetaRequest`], one per [`MetaOp`] variant.
    pub enum OpCode: u8 {
        /// [`MetaOp::Mkdir`].
        Mkdir = 1,
        /// [`MetaOp::Create`].
        Create = 2,
        /// [`MetaOp::Rename`].
        Rename = 3,
        /// [`MetaOp::Remove`].
        Remove = 4,
        /// [`MetaOp::Stat`].
        Stat = 5,
        /// [`MetaOp::List`].
        List = 6,
        /// [`MetaOp::Expand`].
        Expand = 7,
        /// [`MetaOp::WriteLease`].
        WriteLease = 8,
        /// [`MetaOp::ReportBadReplica`].
        ReportBadReplica = 9,
        /// [`MetaOp::CommitWrite`].
        CommitWrite = 10,
        /// [`MetaOp::SwapReplica`].
        SwapReplica = 11,
        /// [`MetaOp::CreateWrite`].
        CreateWrite = 12,
        /// [`MetaOp::Drain`].
        Drain = 13,
        /// [`MetaOp::Fsck`].
        Fsck = 14,
        /// [`MetaOp::OpenSession`].
        OpenSession = 15,
        /// [`MetaOp::KeepAlive`].
        KeepAlive = 16,
        /// [`MetaOp::CloseSession`].
        CloseSession = 17,
        /// [`MetaOp::Lock`].
        Lock = 18,
        /// [`MetaOp::Unlock`].
        Unlock = 19,
        /// [`MetaOp::Locks`].
        Locks = 20,
        /// [`MetaOp::ClusterMap`].
        ClusterMap = 21,
        /// [`MetaOp::CommitProven`].
        CommitProven = 22,
        /// [`MetaOp::Chmod`].
        Chmod = 23,
        /// [`MetaOp::Chown`].
        Chown = 24,
        /// [`MetaOp::ActAs`].
        ActAs = 25,
        /// [`MetaOp::Mkdir`] with a mode.
        MkdirMode = 26,
        /// [`MetaOp::Create`] with a mode.
        CreateMode = 27,
        /// [`MetaOp::CreateWrite`] with a mode.
        CreateWriteMode = 28,
        /// [`MetaOp::Rename`] that replaces its target.
        RenameReplace = 29,
        /// [`MetaOp::SetTimes`].
        SetTimes = 30,
        /// [`MetaOp::Truncate`].
        Truncate = 31,
        /// [`MetaOp::MakeNode`].
        MakeNode = 32,
        /// [`MetaOp::Link`].
        Link = 33,
        /// [`MetaOp::SetXattr`].
        SetXattr = 34,
        /// [`MetaOp::RemoveXattr`].
        RemoveXattr = 35,
        /// [`MetaOp::GetXattr`].
        GetXattr = 36,
        /// [`MetaOp::ListXattr`].
        ListXattr = 37,
        /// [`MetaOp::ListPlus`].
        ListPlus = 38,
    }
}

wire_codes! {
    /// The tag byte of a [`MetaReply`], one per variant.
    pub enum ReplyTag: u8 {
        /// [`MetaReply::Done`].
        Done = 1,
        /// [`MetaReply::Created`].
        Created = 2,
        /// [`MetaReply::Removed`].
        Removed = 3,
        /// [`MetaReply::Stat`].
        Stat = 4,
        /// [`MetaReply::List`].
        List = 5,
        /// [`MetaReply::NotLeader`].
        NotLeader = 6,
        /// [`MetaReply::Failed`].
        Failed = 7,
        /// [`MetaReply::Unavailable`].
        Unavailable = 8,
        /// [`MetaReply::Expanded`].
        Expanded = 9,
        /// [`MetaReply::Lease`].
        Lease = 10,
        /// [`MetaReply::Fsck`].
        Fsck = 11,
        /// [`MetaReply::Session`].
        Session = 12,
        /// [`MetaReply::Locked`].
        Locked = 13,
        /// [`MetaReply::Locks`].
        Locks = 14,
        /// [`MetaReply::ClusterMap`].
        ClusterMap = 15,
        /// [`MetaReply::Stat`] of a file whose blocks carry read tokens.
        StatRead = 16,
        /// [`MetaReply::List`] with each entry's owner, group and mode.
        ListOwned = 17,
        /// [`MetaReply::Xattr`].
        Xattr = 18,
        /// [`MetaReply::XattrNames`].
        XattrNames = 19,
        /// [`MetaReply::ListPlus`].
        ListPlus = 20,
    }
}

pub(super) fn write_meta_request(w: &mut BodyWriter, request: &MetaRequest) {
    w.u64(request.session).u64(request.request_id);
    write_op(w, &request.op);
}

fn write_op(w: &mut BodyWriter, op: &MetaOp) {
    match op {
        MetaOp::ActAs { uid, gids, op } => {
            w.u8(OpCode::ActAs as u8).u32(*uid);
            let gids = &gids[..gids.len().min(MAX_ACT_AS_GIDS)];
            w.u8(gids.len() as u8);
            for gid in gids {
                w.u32(*gid);
            }
            write_op(w, op);
        }
        MetaOp::Mkdir { path, parents, mode } => {
            w.u8(if mode.is_some() { OpCode::MkdirMode } else { OpCode::Mkdir } as u8);
            write_path(w, path);
            w.bool(*parents);
            write_new_mode(w, *mode);
        }
        MetaOp::Create { path, replication, mode } => {
            w.u8(if mode.is_some() { OpCode::CreateMode } else { OpCode::Create } as u8);
            write_path(w, path);
            w.u8(*replication);
            write_new_mode(w, *mode);
        }
        MetaOp::Rename { from, to, replace } => {
            w.u8(if *replace { OpCode::RenameReplace } else { OpCode::Rename } as u8);
            write_path(w, from);
            write_path(w, to);
        }
        MetaOp::CreateWrite { path, replication, size, mode } => {
            let code = if mode.is_some() { OpCode::CreateWriteMode } else { OpCode::CreateWrite };
            w.u8(code as u8);
            write_path(w, path);
            w.u8(*replication).u64(*size);
            write_new_mode(w, *mode);
        }
        MetaOp::Remove { path, recursive } => {
            w.u8(OpCode::Remove as u8);
            write_path(w, path);
            w.bool(*recursive);
        }
        MetaOp::Stat { path, first_block } => {
            w.u8(OpCode::Stat as u8);
            write_path(w, path);
            w.u32(*first_block);
        }
        MetaOp::WriteLease { path, index } => {
            w.u8(OpCode::WriteLease as u8);
            write_path(w, path);
            w.u16(*index);
        }
        MetaOp::SwapReplica { path, index, failed } => {
            w.u8(OpCode::SwapReplica as u8);
            write_path(w, path);
            w.u16(*index).u32(failed.0);
        }
        MetaOp::CommitWrite { path, index, version } => {
            w.u8(OpCode::CommitWrite as u8);
            write_path(w, path);
            w.u16(*index).u16(version.0);
        }
        MetaOp::CommitProven { path, index, version, digest, proofs } => {
            w.u8(OpCode::CommitProven as u8);
            write_path(w, path);
            w.u16(*index).u16(version.0).fixed(digest);
            write_proofs(w, proofs);
        }
        MetaOp::ReportBadReplica { block, server, reason } => {
            w.u8(OpCode::ReportBadReplica as u8);
            block.write(w);
            w.u32(server.0).str(reason);
        }
        MetaOp::Expand { path, size } => {
            w.u8(OpCode::Expand as u8);
            write_path(w, path);
            w.u64(*size);
        }
        MetaOp::List { path, after, limit } => {
            w.u8(OpCode::List as u8);
            write_path(w, path);
            w.str(after).u32(*limit);
        }
        MetaOp::ListPlus { path, after, limit } => {
            w.u8(OpCode::ListPlus as u8);
            write_path(w, path);
            w.str(after).u32(*limit);
        }
        MetaOp::Drain { server, draining } => {
            w.u8(OpCode::Drain as u8).u32(server.0).bool(*draining);
        }
        MetaOp::Fsck { path } => {
            w.u8(OpCode::Fsck as u8);
            write_path(w, path);
        }
        MetaOp::OpenSession => {
            w.u8(OpCode::OpenSession as u8);
        }
        MetaOp::KeepAlive => {
            w.u8(OpCode::KeepAlive as u8);
        }
        MetaOp::CloseSession => {
            w.u8(OpCode::CloseSession as u8);
        }
        MetaOp::Lock { path, mode, wait_ms } => {
            w.u8(OpCode::Lock as u8);
            write_path(w, path);
            w.u8(mode.byte()).bool(wait_ms.is_some()).u64(wait_ms.unwrap_or(0));
        }
        MetaOp::Unlock { path } => {
            w.u8(OpCode::Unlock as u8);
            write_path(w, path);
        }
        MetaOp::Locks { path } => {
            w.u8(OpCode::Locks as u8);
            write_path(w, path);
        }
        MetaOp::ClusterMap => {
            w.u8(OpCode::ClusterMap as u8);
        }
        MetaOp::Chmod { path, mode } => {
            w.u8(OpCode::Chmod as u8);
            write_path(w, path);
            w.u16(*mode);
        }
        MetaOp::Chown { path, uid, gid } => {
            w.u8(OpCode::Chown as u8);
            write_path(w, path);
            w.u32(*uid).u32(*gid);
        }
        MetaOp::MakeNode { path, kind, target, rdev, mode } => {
            w.u8(OpCode::MakeNode as u8);
            write_path(w, path);
            w.u8(kind.byte()).str(target).u32(*rdev).u16(*mode);
        }
        MetaOp::Link { from, to } => {
            w.u8(OpCode::Link as u8);
            write_path(w, from);
            write_path(w, to);
        }
        MetaOp::SetXattr { path, name, value, how } => {
            w.u8(OpCode::SetXattr as u8);
            write_path(w, path);
            w.str(name).bytes(value).u8(how.byte());
        }
        MetaOp::RemoveXattr { path, name } => {
            w.u8(OpCode::RemoveXattr as u8);
            write_path(w, path);
            w.str(name);
        }
        MetaOp::GetXattr { path, name } => {
            w.u8(OpCode::GetXattr as u8);
            write_path(w, path);
            w.str(name);
        }
        MetaOp::ListXattr { path } => {
            w.u8(OpCode::ListXattr as u8);
            write_path(w, path);
        }
        MetaOp::Truncate { path, size } => {
            w.u8(OpCode::Truncate as u8);
            write_path(w, path);
            w.u64(*size);
        }
        MetaOp::SetTimes { path, atime, mtime } => {
            w.u8(OpCode::SetTimes as u8);
            write_path(w, path);
            atime.write(w);
            mtime.write(w);
        }
    }
}

pub(super) fn read_meta_request(r: &mut BodyReader<'_>) -> Result<MetaRequest, BodyError> {
    let session = r.u64("session")?;
    let request_id = r.u64("request id")?;
    let op = read_op(r, true)?;
    Ok(MetaRequest { session, request_id, op })
}

/// Reads one op; an [`MetaOp::ActAs`] only where `wrapper` allows it (never inside one).
fn read_op(r: &mut BodyReader<'_>, wrapper: bool) -> Result<MetaOp, BodyError> {
    let code = r.u8("op")?;
    let Some(op) = OpCode::from_repr(code) else {
        return Err(BodyError::Invalid { field: "op", value: u64::from(code) });
    };
    Ok(match op {
        OpCode::ActAs if wrapper => {
            let uid = r.u32("act-as uid")?;
            let count = r.u8("act-as group count")?;
            if usize::from(count) > MAX_ACT_AS_GIDS {
                return Err(BodyError::Invalid {
                    field: "act-as group count",
                    value: u64::from(count),
                });
            }
            let gids = (0..count).map(|_| r.u32("act-as gid")).collect::<Result<_, _>>()?;
            MetaOp::ActAs { uid, gids, op: Box::new(read_op(r, false)?) }
        }
        OpCode::ActAs => {
            return Err(BodyError::Invalid { field: "op", value: u64::from(code) });
        }
        OpCode::Mkdir | OpCode::MkdirMode => MetaOp::Mkdir {
            path: read_path(r)?,
            parents: r.bool("parents")?,
            mode: read_new_mode(r, op == OpCode::MkdirMode)?,
        },
        OpCode::Create | OpCode::CreateMode => MetaOp::Create {
            path: read_path(r)?,
            replication: r.u8("replication")?,
            mode: read_new_mode(r, op == OpCode::CreateMode)?,
        },
        OpCode::Rename | OpCode::RenameReplace => MetaOp::Rename {
            from: read_path(r)?,
            to: read_path(r)?,
            replace: op == OpCode::RenameReplace,
        },
        OpCode::CreateWrite | OpCode::CreateWriteMode => MetaOp::CreateWrite {
            path: read_path(r)?,
            replication: r.u8("replication")?,
            size: r.u64("size")?,
            mode: read_new_mode(r, op == OpCode::CreateWriteMode)?,
        },
        OpCode::Remove => MetaOp::Remove { path: read_path(r)?, recursive: r.bool("recursive")? },
        OpCode::Stat => MetaOp::Stat { path: read_path(r)?, first_block: r.u32("first block")? },
        OpCode::Expand => MetaOp::Expand { path: read_path(r)?, size: r.u64("size")? },
        OpCode::WriteLease => {
            MetaOp::WriteLease { path: read_path(r)?, index: r.u16("block index")? }
        }
        OpCode::SwapReplica => MetaOp::SwapReplica {
            path: read_path(r)?,
            index: r.u16("block index")?,
            failed: NodeId(r.u32("failed")?),
        },
        OpCode::CommitWrite => MetaOp::CommitWrite {
            path: read_path(r)?,
            index: r.u16("block index")?,
            version: BlockVersion(r.u16("block version")?),
        },
        OpCode::CommitProven => MetaOp::CommitProven {
            path: read_path(r)?,
            index: r.u16("block index")?,
            version: BlockVersion(r.u16("block version")?),
            digest: r.fixed("digest")?,
            proofs: read_proofs(r)?,
        },
        OpCode::ReportBadReplica => MetaOp::ReportBadReplica {
            block: BlockDescriptor::read(r)?,
            server: NodeId(r.u32("data-server")?),
            reason: r.str("reason")?.to_string(),
        },
        OpCode::List => MetaOp::List {
            path: read_path(r)?,
            after: r.str("after")?.to_string(),
            limit: r.u32("limit")?,
        },
        OpCode::ListPlus => MetaOp::ListPlus {
            path: read_path(r)?,
            after: r.str("after")?.to_string(),
            limit: r.u32("limit")?,
        },
        OpCode::Drain => {
            MetaOp::Drain { server: NodeId(r.u32("server")?), draining: r.bool("draining")? }
        }
        OpCode::Fsck => MetaOp::Fsck { path: read_path(r)? },
        OpCode::OpenSession => MetaOp::OpenSession,
        OpCode::KeepAlive => MetaOp::KeepAlive,
        OpCode::CloseSession => MetaOp::CloseSession,
        OpCode::Lock => {
            let path = read_path(r)?;
            let mode = LockMode::from_byte(r.u8("lock mode")?)?;
            let waits = r.bool("waits")?;
            let wait_ms = r.u64("wait")?;
            MetaOp::Lock { path, mode, wait_ms: waits.then_some(wait_ms) }
        }
        OpCode::Unlock => MetaOp::Unlock { path: read_path(r)? },
        OpCode::Locks => MetaOp::Locks { path: read_path(r)? },
        OpCode::ClusterMap => MetaOp::ClusterMap,
        OpCode::Chmod => MetaOp::Chmod { path: read_path(r)?, mode: read_mode(r)? },
        OpCode::Chown => {
            MetaOp::Chown { path: read_path(r)?, uid: r.u32("uid")?, gid: r.u32("gid")? }
        }
        OpCode::Link => MetaOp::Link { from: read_path(r)?, to: read_path(r)? },
        OpCode::SetXattr => {
            let path = read_path(r)?;
            let name = read_xattr_name(r)?;
            let value = r.bytes("attribute value")?;
            if value.len() > MAX_XATTR_VALUE {
                return Err(BodyError::Invalid {
                    field: "attribute value",
                    value: value.len() as u64,
                });
            }
            let how = r.u8("attribute setting")?;
            let how = XattrSet::from_byte(how)
                .ok_or(BodyError::Invalid { field: "attribute setting", value: u64::from(how) })?;
            MetaOp::SetXattr { path, name, value: value.to_vec(), how }
        }
        OpCode::RemoveXattr => {
            MetaOp::RemoveXattr { path: read_path(r)?, name: read_xattr_name(r)? }
        }
        OpCode::GetXattr => MetaOp::GetXattr { path: read_path(r)?, name: read_xattr_name(r)? },
        OpCode::ListXattr => MetaOp::ListXattr { path: read_path(r)? },
        OpCode::Truncate => MetaOp::Truncate { path: read_path(r)?, size: r.u64("size")? },
        OpCode::MakeNode => {
            let path = read_path(r)?;
            let (kind, target, rdev) = crate::namespace::entry::read_node(r)?;
            MetaOp::MakeNode { path, kind, target, rdev, mode: read_mode(r)? }
        }
        OpCode::SetTimes => MetaOp::SetTimes {
            path: read_path(r)?,
            atime: SetTime::read(r)?,
            mtime: SetTime::read(r)?,
        },
    })
}

fn write_owner(w: &mut BodyWriter, owner: &Owner) {
    w.u32(owner.uid).u32(owner.gid).u16(owner.mode);
}

fn read_owner(r: &mut BodyReader<'_>) -> Result<Owner, BodyError> {
    Ok(Owner { uid: r.u32("uid")?, gid: r.u32("gid")?, mode: read_mode(r)? })
}

fn write_times(w: &mut BodyWriter, times: &Times) {
    w.u64(times.atime_us).u64(times.mtime_us).u64(times.ctime_us);
}

fn read_times(r: &mut BodyReader<'_>) -> Result<Times, BodyError> {
    Ok(Times { atime_us: r.u64("atime")?, mtime_us: r.u64("mtime")?, ctime_us: r.u64("ctime")? })
}

/// A stat: kind 4 (a directory: `u32 id, u64 entries, u64 subdirectories`, times, owner), 7
/// (a file: its descriptor, `u64 size, u32 block size, u8 replication, u64 created ms`,
/// times, owner, `u32 links`, `u32 count` and the blocks) or 8 (a symlink or special file:
/// `u32 id, u8 type, str target, u32 device`, times, owner, `u32 links`). Kinds 0 to 3 are
/// the layouts before times (one time in ms), 5 and 6 those of files and special files
/// before links (one name each), still read.
fn write_stat(w: &mut BodyWriter, stat: &Stat) {
    match stat {
        Stat::Dir { id, entries, subdirs, times, owner } => {
            w.u8(4).u32(*id).u64(*entries as u64).u64(*subdirs);
            write_times(w, times);
            write_owner(w, owner);
        }
        Stat::Other { id, kind, target, rdev, links, times, owner } => {
            w.u8(8).u32(*id).u8(kind.byte()).str(target).u32(*rdev);
            write_times(w, times);
            write_owner(w, owner);
            w.u32(*links);
        }
        Stat::File(meta) => {
            w.u8(7);
            meta.descriptor.write(w);
            w.u64(meta.size).u32(meta.block_size).u8(meta.replication).u64(meta.created_ms);
            write_times(w, &meta.times);
            write_owner(w, &meta.owner);
            w.u32(meta.links).u32(meta.blocks.len() as u32);
            for block in &meta.blocks {
                block.descriptor.write(w);
                write_replicas(w, &block.replicas);
            }
        }
    }
}

fn read_stat(r: &mut BodyReader<'_>) -> Result<Stat, BodyError> {
    let kind = r.u8("stat kind")?;
    match kind {
        0 | 2 | 4 => {
            let id = r.u32("id")?;
            let entries = usize::try_from(r.u64("entries")?).unwrap_or(usize::MAX);
            // Layouts before kind 4 did not count subdirectories.
            let subdirs = if kind == 4 { r.u64("subdirs")? } else { 0 };
            let times = if kind == 4 { read_times(r)? } else { Times::at_ms(r.u64("mtime")?) };
            let owner = if kind == 0 { Owner::legacy(true) } else { read_owner(r)? };
            Ok(Stat::Dir { id, entries, subdirs, times, owner })
        }
        1 | 3 | 5 | 7 => {
            let descriptor = FileDescriptor::read(r)?;
            let size = r.u64("size")?;
            let block_size = r.u32("block size")?;
            let replication = r.u8("replication")?;
            let created_ms = r.u64("ctime")?;
            let times = if kind >= 5 { read_times(r)? } else { Times::at_ms(r.u64("mtime")?) };
            let owner = if kind == 1 { Owner::legacy(false) } else { read_owner(r)? };
            let links = if kind == 7 { r.u32("links")? } else { 1 };
            let count = r.u32("block count")?;
            if count > MAX_STAT_BLOCKS {
                return Err(BodyError::Invalid { field: "block count", value: u64::from(count) });
            }
            let mut blocks = Vec::with_capacity((count as usize).min(r.remaining() / 16));
            for _ in 0..count {
                let descriptor = BlockDescriptor::read(r)?;
                let replicas = read_replicas(r)?;
                blocks.push(BlockMeta { descriptor, replicas, read: None });
            }
            Ok(Stat::File(FileMeta {
                descriptor,
                size,
                block_size,
                replication,
                created_ms,
                links,
                times,
                owner,
                blocks,
            }))
        }
        6 | 8 => {
            let id = r.u32("id")?;
            let (node, target, rdev) = crate::namespace::entry::read_node(r)?;
            let times = read_times(r)?;
            let owner = read_owner(r)?;
            let links = if kind == 8 { r.u32("links")? } else { 1 };
            Ok(Stat::Other { id, kind: node, target, rdev, links, times, owner })
        }
        other => Err(BodyError::Invalid { field: "stat kind", value: u64::from(other) }),
    }
}

pub(super) fn write_meta_reply(w: &mut BodyWriter, reply: &MetaReply) {
    match reply {
        MetaReply::Done => {
            w.u8(ReplyTag::Done as u8);
        }
        MetaReply::Lease(token) => {
            w.u8(ReplyTag::Lease as u8);
            token.write(w);
        }
        MetaReply::Expanded { file, new_blocks } => {
            w.u8(ReplyTag::Expanded as u8);
            file.write(w);
            w.u32(*new_blocks);
        }
        MetaReply::Created(fd) => {
            w.u8(ReplyTag::Created as u8);
            fd.write(w);
        }
        MetaReply::Removed { files, dirs } => {
            w.u8(ReplyTag::Removed as u8).u64(*files).u64(*dirs);
        }
        MetaReply::Stat { stat, total_blocks, first_block } => {
            let tokens: Option<Vec<ReadToken>> = match stat {
                Stat::File(meta) if !meta.blocks.is_empty() => {
                    meta.blocks.iter().map(|b| b.read).collect()
                }
                _ => None,
            };
            let tag = if tokens.is_some() { ReplyTag::StatRead } else { ReplyTag::Stat };
            w.u8(tag as u8);
            write_stat(w, stat);
            w.u32(*total_blocks).u32(*first_block);
            for token in tokens.iter().flatten() {
                token.write(w);
            }
        }
        MetaReply::List { entries, more } => {
            w.u8(ReplyTag::ListOwned as u8).u32(entries.len() as u32);
            for e in entries {
                w.str(&e.name).bool(e.is_dir).u32(e.id).u64(e.size);
                write_owner(w, &e.owner);
            }
            w.bool(*more);
        }
        MetaReply::NotLeader { leader } => {
            w.u8(ReplyTag::NotLeader as u8).u32(leader.map_or(0, |l| l.0));
        }
        MetaReply::Failed(err) => {
            w.u8(ReplyTag::Failed as u8);
            err.write(w);
        }
        MetaReply::Unavailable(why) => {
            w.u8(ReplyTag::Unavailable as u8).str(why);
        }
        MetaReply::Fsck(report) => {
            w.u8(ReplyTag::Fsck as u8).u64(report.files).u64(report.blocks);
            write_health(w, &report.health);
            w.u32(report.problems.len() as u32);
            for p in &report.problems {
                w.str(&p.path);
                p.block.write(w);
                w.u8(p.wanted);
                write_replicas(w, &p.replicas);
                write_replicas(w, &p.good);
                w.bool(p.missing).bool(p.repairing);
            }
            w.bool(report.more);
            write_replicas(w, &report.unknown_servers);
        }
        MetaReply::Session { lease_ms, lock_delay_ms } => {
            w.u8(ReplyTag::Session as u8).u64(*lease_ms).u64(*lock_delay_ms);
        }
        MetaReply::Locked { sequencer } => {
            w.u8(ReplyTag::Locked as u8).u64(*sequencer);
        }
        MetaReply::Locks { locks, more } => {
            w.u8(ReplyTag::Locks as u8).u32(locks.len() as u32);
            for lock in locks {
                write_path(w, &lock.path);
                w.u64(lock.delayed_until_ms).u32(lock.holders.len() as u32);
                for h in &lock.holders {
                    h.write(w);
                }
                w.u32(lock.waiters.len() as u32);
                for q in &lock.waiters {
                    q.write(w);
                }
            }
            w.bool(*more);
        }
        MetaReply::Xattr(value) => {
            w.u8(ReplyTag::Xattr as u8).bytes(value);
        }
        MetaReply::XattrNames(names) => {
            w.u8(ReplyTag::XattrNames as u8).u32(names.len() as u32);
            for name in names {
                w.str(name);
            }
        }
        MetaReply::ListPlus { entries, more } => {
            w.u8(ReplyTag::ListPlus as u8).u32(entries.len() as u32);
            for (name, stat) in entries {
                w.str(name);
                write_stat(w, stat);
            }
            w.bool(*more);
        }
        MetaReply::ClusterMap(map) => {
            w.u8(ReplyTag::ClusterMap as u8).u32(map.block_size).u8(map.replication);
            let servers = &map.servers[..map.servers.len().min(MAX_MAP_SERVERS as usize)];
            w.u32(servers.len() as u32);
            for (role, id, addr) in servers {
                w.u8(role_code(*role)).u32(id.0).str(addr);
            }
        }
    }
}

fn read_cluster_map(r: &mut BodyReader<'_>) -> Result<MetaReply, BodyError> {
    let block_size = r.u32("block size")?;
    let replication = r.u8("replication")?;
    let count = r.u32("server count")?;
    if count > MAX_MAP_SERVERS {
        return Err(BodyError::Invalid { field: "server count", value: u64::from(count) });
    }
    let mut servers = Vec::new();
    for _ in 0..count {
        let role = role_from(r.u8("role")?)?;
        let id = NodeId(r.u32("server id")?);
        servers.push((role, id, r.str("address")?.to_string()));
    }
    Ok(MetaReply::ClusterMap(ClusterMap { block_size, replication, servers }))
}

fn read_locks(r: &mut BodyReader<'_>) -> Result<MetaReply, BodyError> {
    let count = |r: &mut BodyReader<'_>, field, max| match r.u32(field)? {
        n if n > max => Err(BodyError::Invalid { field, value: u64::from(n) }),
        n => Ok(n),
    };
    let mut locks = Vec::new();
    for _ in 0..count(r, "lock count", MAX_LOCKS_LISTED)? {
        let path = read_path(r)?;
        let delayed_until_ms = r.u64("delayed until")?;
        let holders = (0..count(r, "holder count", MAX_LOCK_PARTIES)?)
            .map(|_| Holder::read(r))
            .collect::<Result<Vec<_>, _>>()?;
        let waiters = (0..count(r, "waiter count", MAX_LOCK_PARTIES)?)
            .map(|_| Waiting::read(r))
            .collect::<Result<Vec<_>, _>>()?;
        locks.push(LockInfo { path, holders, waiters, delayed_until_ms });
    }
    Ok(MetaReply::Locks { locks, more: r.bool("more")? })
}

fn read_fsck(r: &mut BodyReader<'_>) -> Result<FsckReport, BodyError> {
    let files = r.u64("files")?;
    let blocks = r.u64("blocks")?;
    let health = read_health(r)?;
    let count = r.u32("problem count")?;
    if count > MAX_FSCK_PROBLEMS {
        return Err(BodyError::Invalid { field: "problem count", value: u64::from(count) });
    }
    let mut problems = Vec::with_capacity(count as usize);
    for _ in 0..count {
        problems.push(FsckProblem {
            path: r.str("path")?.to_string(),
            block: BlockDescriptor::read(r)?,
            wanted: r.u8("wanted")?,
            replicas: read_replicas(r)?,
            good: read_replicas(r)?,
            missing: r.bool("missing")?,
            repairing: r.bool("repairing")?,
        });
    }
    let more = r.bool("more")?;
    let unknown_servers = read_replicas(r)?;
    Ok(FsckReport { files, blocks, health, problems, more, unknown_servers })
}

pub(super) fn read_meta_reply(r: &mut BodyReader<'_>) -> Result<MetaReply, BodyError> {
    let code = r.u8("reply")?;
    let Some(tag) = ReplyTag::from_repr(code) else {
        return Err(BodyError::Invalid { field: "reply", value: u64::from(code) });
    };
    Ok(match tag {
        ReplyTag::Done => MetaReply::Done,
        ReplyTag::Xattr => {
            let value = r.bytes("attribute value")?;
            if value.len() > MAX_XATTR_VALUE {
                return Err(BodyError::Invalid {
                    field: "attribute value",
                    value: value.len() as u64,
                });
            }
            MetaReply::Xattr(value.to_vec())
        }
        ReplyTag::ListPlus => {
            let count = r.u32("entry count")?;
            if count > MAX_LIST_PAGE {
                return Err(BodyError::Invalid { field: "entry count", value: u64::from(count) });
            }
            let mut entries = Vec::with_capacity((count as usize).min(r.remaining() / 64));
            for _ in 0..count {
                let name = r.str("name")?.to_string();
                entries.push((name, read_stat(r)?));
            }
            MetaReply::ListPlus { entries, more: r.bool("more")? }
        }
        ReplyTag::XattrNames => {
            // Each name takes at least its 2-byte length and "user." and one more byte.
            let count = r.u32("attribute count")?;
            if count as usize > MAX_XATTR_BYTES / 6 {
                return Err(BodyError::Invalid {
                    field: "attribute count",
                    value: u64::from(count),
                });
            }
            let names = (0..count).map(|_| read_xattr_name(r)).collect::<Result<Vec<_>, _>>()?;
            MetaReply::XattrNames(names)
        }
        ReplyTag::Created => MetaReply::Created(FileDescriptor::read(r)?),
        ReplyTag::Removed => MetaReply::Removed { files: r.u64("files")?, dirs: r.u64("dirs")? },
        ReplyTag::Stat => MetaReply::Stat {
            stat: read_stat(r)?,
            total_blocks: r.u32("total blocks")?,
            first_block: r.u32("first block")?,
        },
        ReplyTag::StatRead => {
            let mut stat = read_stat(r)?;
            let (total_blocks, first_block) = (r.u32("total blocks")?, r.u32("first block")?);
            let Stat::File(meta) = &mut stat else {
                return Err(BodyError::Invalid { field: "stat kind", value: 0 });
            };
            for block in &mut meta.blocks {
                block.read = Some(ReadToken::read(r)?);
            }
            MetaReply::Stat { stat, total_blocks, first_block }
        }
        tag @ (ReplyTag::List | ReplyTag::ListOwned) => {
            let count = r.u32("entry count")?;
            if count > MAX_LIST_PAGE {
                return Err(BodyError::Invalid { field: "entry count", value: u64::from(count) });
            }
            let mut entries = Vec::with_capacity(count as usize);
            for _ in 0..count {
                let name = r.str("name")?.to_string();
                let is_dir = r.bool("is dir")?;
                let id = r.u32("id")?;
                let size = r.u64("size")?;
                let owner =
                    if tag == ReplyTag::ListOwned { read_owner(r)? } else { Owner::legacy(is_dir) };
                entries.push(DirEntry { name, is_dir, id, size, owner });
            }
            MetaReply::List { entries, more: r.bool("more")? }
        }
        ReplyTag::NotLeader => {
            MetaReply::NotLeader { leader: Some(r.u32("leader")?).filter(|&l| l != 0).map(NodeId) }
        }
        ReplyTag::Failed => MetaReply::Failed(NsError::read(r)?),
        ReplyTag::Unavailable => MetaReply::Unavailable(r.str("reason")?.to_string()),
        ReplyTag::Expanded => {
            MetaReply::Expanded { file: FileDescriptor::read(r)?, new_blocks: r.u32("new blocks")? }
        }
        ReplyTag::Lease => MetaReply::Lease(Token::read(r)?),
        ReplyTag::Fsck => MetaReply::Fsck(read_fsck(r)?),
        ReplyTag::Session => {
            MetaReply::Session { lease_ms: r.u64("lease")?, lock_delay_ms: r.u64("lock delay")? }
        }
        ReplyTag::Locked => MetaReply::Locked { sequencer: r.u64("sequencer")? },
        ReplyTag::Locks => read_locks(r)?,
        ReplyTag::ClusterMap => read_cluster_map(r)?,
    })
}
