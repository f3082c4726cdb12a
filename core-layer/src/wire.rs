//! The application protocol: every message kind from 32 up, and its body layout.
//!
//! A frame's kind says which message its body holds; a response carries its request's id.
//! Integers are big-endian; `str` is a u16 length and UTF-8; `list<T>` is a u32 count then
//! the items. Bodies are read with [`BodyReader`], which checks every length before use, so a
//! hostile body gets a [`WireError`], never a panic or a large allocation.
//!
//! | kind | message | direction | body |
//! |---|---|---|---|
//! | 32 | [`Message::StatusRequest`] | client -> server | empty |
//! | 33 | [`Message::StatusReply`] | server -> client | [`StatusReply`] |
//! | 34 | [`Message::Error`] | server -> client | `u8 code, str message` |
//! | 40 | [`Message::Raft`] | mserver -> mserver | an `eraftpb::Message` (protobuf) |
//! | 41 | [`Message::SnapshotChunk`] | mserver -> mserver | [`SnapshotChunk`]: `u64 index, u64 term, u64 total, u64 offset, bytes data` |
//! | 56 | [`Message::WriteChunk`] | client or dserver -> dserver | [`WriteChunk`] |
//! | 57 | [`Message::WriteAck`] | dserver -> its upstream | [`WriteAck`] |
//! | 58 | [`Message::ReadBlock`] | client -> dserver | [`ReadBlock`] |
//! | 59 | [`Message::BlockData`] | dserver -> client | [`BlockData`] |
//! | 60 | [`Message::DataReport`] | dserver -> mserver | [`DataReport`] |
//! | 61 | [`Message::BlockCommitted`] | leader mserver -> dserver | block descriptor |
//! | 48 | [`Message::MetaRequest`] | client -> mserver | [`MetaRequest`] |
//! | 49 | [`Message::MetaReply`] | mserver -> client | [`MetaReply`] |
//!
//! A meta request is `u64 session, u64 request id, u8 op` and the op's fields: 1 mkdir
//! (`str path, bool parents`), 2 create (`str path, u8 replication`, 0 for the cluster's),
//! 3 rename (`str from, str to`), 4 remove (`str path, bool recursive`), 5 stat (`str path,
//! u32 first block`), 6 list (`str path, str after, u32 limit`), 7 expand (`str path, u64
//! size`), 8 write lease (`str path, u16 block index`), 9 bad replica (block descriptor,
//! `u32 data-server, str reason`). A meta reply is a `u8` tag:
//! 1 done, 2 created (file descriptor), 3 removed (`u64 files, u64 dirs`), 4 stat (a stat,
//! `u32 total blocks, u32 first block`), 5 list (`u32 count`, entries, `bool more`), 6 not
//! leader (`u32 leader`, 0 unknown), 7 failed (a namespace error), 8 unavailable (`str`),
//! 9 expanded (file descriptor, `u32 new blocks`), 10 lease (a [`Token`]: the block at its new
//! version, its chain, the client, the expiry and the MAC).
//! Listings and block lists come in pages ([`MAX_LIST_PAGE`], [`MAX_STAT_BLOCKS`]) so that
//! no reply outgrows a frame.
//!
//! A status reply ends with `bool has_raft` and, for meta-servers, [`RaftInfo`]:
//! `u8 role (1 follower, 2 candidate, 3 leader, 4 pre-candidate), u64 term, u64 commit,
//! u64 applied, u32 leader (0: unknown), u64 inodes`.
//!
//! Adding a message: a new kind constant, a variant, its layout in this table, a round-trip
//! sample in the tests, and a golden-bytes test once its layout is final.

use meshfs_group::{NodeId, Role};

use crate::descriptor::{
    BlockDescriptor, BlockVersion, FileDescriptor, read_replicas, write_replicas,
};
use crate::error::NsError;
use crate::locks::{Holder, LockInfo, LockMode, Waiting};
use crate::namespace::{BlockMeta, DirEntry, FileMeta, Stat};
use crate::path::{MeshPath, read_path, write_path};
use crate::token::Token;
use meshfs_net::Frame;
use meshfs_net::body::{BodyError, BodyReader, BodyWriter};

/// Kind of [`Message::StatusRequest`].
pub const KIND_STATUS_REQUEST: u16 = 32;
/// Kind of [`Message::StatusReply`].
pub const KIND_STATUS_REPLY: u16 = 33;
/// Kind of [`Message::Error`].
pub const KIND_ERROR: u16 = 34;
/// Kind of [`Message::Raft`].
pub const KIND_RAFT: u16 = 40;
/// Kind of [`Message::SnapshotChunk`].
pub const KIND_SNAPSHOT_CHUNK: u16 = 41;
/// Kind of [`Message::WriteChunk`].
pub const KIND_WRITE_CHUNK: u16 = 56;
/// Kind of [`Message::WriteAck`].
pub const KIND_WRITE_ACK: u16 = 57;
/// Kind of [`Message::ReadBlock`].
pub const KIND_READ_BLOCK: u16 = 58;
/// Kind of [`Message::BlockData`].
pub const KIND_BLOCK_DATA: u16 = 59;
/// Kind of [`Message::DataReport`].
pub const KIND_DATA_REPORT: u16 = 60;
/// Kind of [`Message::BlockCommitted`].
pub const KIND_BLOCK_COMMITTED: u16 = 61;
/// Leader to data-server: copy a block from another data-server ([`Message::Repair`]).
pub const KIND_REPAIR: u16 = 62;
/// Data-server to leader: a repair copy finished or failed ([`Message::RepairDone`]).
pub const KIND_REPAIR_DONE: u16 = 63;
/// Leader to data-server: delete a replica ([`Message::DeleteReplica`]).
pub const KIND_DELETE_REPLICA: u16 = 64;
/// Data-server to meta-servers: the scrubber found a replica damaged and set it aside
/// ([`Message::ReplicaDamaged`]).
pub const KIND_REPLICA_DAMAGED: u16 = 65;
/// Most blocks listed in one report message.
pub const MAX_REPORT_BLOCKS: usize = 16_384;
/// Most data bytes in one write chunk or read reply.
pub const MAX_CHUNK_BYTES: u32 = 1024 * 1024;
/// Bytes per checksummed segment of a stored block.
pub const SEGMENT_BYTES: u64 = 64 * 1024;
const _: () =
    assert!(MAX_CHUNK_BYTES as usize + 4096 < meshfs_net::frame::DEFAULT_MAX_BODY_LEN as usize);
/// Kind of [`Message::MetaRequest`].
pub const KIND_META_REQUEST: u16 = 48;
/// Kind of [`Message::MetaReply`].
pub const KIND_META_REPLY: u16 = 49;
/// Most directory entries in one list reply (each at most about 270 bytes).
pub const MAX_LIST_PAGE: u32 = 2048;
/// Most blocks described in one stat reply (each at most 12 + 1 + 16 * 4 bytes).
pub const MAX_STAT_BLOCKS: u32 = 8192;

const _: () =
    assert!((MAX_LIST_PAGE as usize) * 280 < meshfs_net::frame::DEFAULT_MAX_BODY_LEN as usize);
const _: () = assert!(
    (MAX_STAT_BLOCKS as usize) * 77 + 256 < meshfs_net::frame::DEFAULT_MAX_BODY_LEN as usize
);

/// A piece of a Raft snapshot's data, streamed before the (data-less) snapshot message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotChunk {
    /// The snapshot's index.
    pub index: u64,
    /// The snapshot's term.
    pub term: u64,
    /// Bytes of data in all.
    pub total: u64,
    /// Where this piece starts.
    pub offset: u64,
    /// The piece.
    pub data: Vec<u8>,
}

/// A piece of a block write, self-contained (it carries the token). The frame's request id
/// names the write; the first chunk opens it, the one with `last` commits it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteChunk {
    /// The write lease's token: block, version, chain, client, expiry.
    pub token: Token,
    /// The block's size (for a new replica file).
    pub block_size: u32,
    /// Start from the replica's current bytes (a partial overwrite) rather than empty.
    pub keep_existing: bool,
    /// Where in the block `data` goes.
    pub offset: u64,
    /// This chunk ends the write: commit (fsync) it.
    pub last: bool,
    /// The bytes, at most [`MAX_CHUNK_BYTES`].
    pub data: Vec<u8>,
}

/// A data-server's answer to write chunks, sent upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteAck {
    /// Every chunk ending at or before `through` is on this replica and every one after it
    /// in the chain; with `committed`, the whole write is durable on all of them.
    Written {
        /// Bytes of the block acknowledged, from the write's first offset.
        through: u64,
        /// The write is committed everywhere downstream.
        committed: bool,
    },
    /// The write failed here or downstream; nothing of it will be committed.
    Failed {
        /// The data-server that failed.
        at: NodeId,
        /// Why.
        message: String,
    },
}

/// What a data-server holds, told to the meta-servers: a full report (in pieces, the first
/// with `full`, the last with `last`) when a link to a meta-server comes up, then one line
/// per change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataReport {
    /// Bytes it may store.
    pub capacity: u64,
    /// Bytes its replicas take.
    pub used: u64,
    /// This starts a full report: forget what it said before.
    pub full: bool,
    /// This ends a report: what was said so far is all it holds.
    pub last: bool,
    /// Replicas held: the block at the version held, and its valid length.
    pub blocks: Vec<(BlockDescriptor, u64)>,
    /// Replicas no longer held (in a change report).
    pub removed: Vec<(u32, u16)>,
}

/// A request for bytes of a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadBlock {
    /// The block, at the version wanted.
    pub block: BlockDescriptor,
    /// First byte.
    pub offset: u64,
    /// Bytes, at most [`MAX_CHUNK_BYTES`].
    pub len: u32,
}

/// The bytes of a block asked for, with their segments' stored checksums, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockData {
    /// The range asked for.
    Range(RangeRead),
    /// The read failed (no replica, wrong version, damaged segment, out of range).
    Failed {
        /// Why.
        message: String,
    },
}

/// A range of a block with what checks it, end to end, against the CRC-32 the data-server
/// stored for each 64 KiB segment when the block was written.
///
/// Only the bytes asked for travel. The parts of the first and last segments outside them
/// come as their CRC-32s (`head_crc`, `tail_crc`), so the reader recomputes each segment's
/// checksum from its own bytes by CRC combination (`crc(a || b)` from `crc(a)`, `crc(b)`
/// and `len(b)`) and compares it with the stored one: a byte changed anywhere in a
/// segment, on disk, in memory or on the wire, fails the check just as if the whole
/// segment had been sent. A 4 KiB read moves 4 KiB, not 64.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeRead {
    /// Index of the first segment the range touches.
    pub first_segment: u32,
    /// Valid bytes in the block.
    pub block_len: u64,
    /// Block offset of `data[0]`.
    pub offset: u64,
    /// Stored CRC-32 of each segment the range touches, from `first_segment` on.
    pub crcs: Vec<u32>,
    /// CRC-32 of the first segment's bytes before `offset`.
    pub head_crc: u32,
    /// CRC-32 of the last segment's bytes after the range.
    pub tail_crc: u32,
    /// The bytes asked for.
    pub data: Vec<u8>,
}

/// Why a [`RangeRead`] does not check out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// A segment's bytes do not match its stored checksum: the replica is damaged.
    #[error("segment {0} failed its checksum (damaged replica)")]
    Damaged(u32),
    /// The reply does not describe a range of the block.
    #[error("malformed range: {0}")]
    Malformed(&'static str),
}

impl RangeRead {
    /// Cuts the range `offset..offset + len` (clamped to the block) out of whole segments
    /// read from disk, starting with segment `first_segment`, whose stored checksums are
    /// `crcs`. The data-server's side.
    pub fn from_segments(
        first_segment: u32,
        block_len: u64,
        crcs: Vec<u32>,
        mut segments: Vec<u8>,
        offset: u64,
        len: u64,
    ) -> RangeRead {
        let start = u64::from(first_segment) * SEGMENT_BYTES;
        let head = (offset.saturating_sub(start) as usize).min(segments.len());
        let end = ((offset + len).min(block_len).saturating_sub(start) as usize)
            .clamp(head, segments.len());
        let head_crc = crc32fast::hash(&segments[..head]);
        let tail_crc = crc32fast::hash(&segments[end..]);
        segments.truncate(end);
        segments.drain(..head);
        RangeRead {
            first_segment,
            block_len,
            offset: start + head as u64,
            crcs,
            head_crc,
            tail_crc,
            data: segments,
        }
    }

    /// Recomputes every segment's checksum from the data and the head and tail checksums,
    /// and compares it with the stored one. The reader's side.
    pub fn verify(&self) -> Result<(), RangeError> {
        let start = u64::from(self.first_segment) * SEGMENT_BYTES;
        let end = self.offset + self.data.len() as u64;
        if self.offset < start || self.offset - start >= SEGMENT_BYTES || end > self.block_len {
            return Err(RangeError::Malformed("the data is not where its segments are"));
        }
        let last = if self.data.is_empty() { start } else { end - 1 } / SEGMENT_BYTES;
        let count = last + 1 - u64::from(self.first_segment);
        if self.crcs.len() as u64 != count {
            return Err(RangeError::Malformed("one stored checksum per segment expected"));
        }
        for (i, stored) in self.crcs.iter().enumerate() {
            let s = start + i as u64 * SEGMENT_BYTES;
            let e = (s + SEGMENT_BYTES).min(self.block_len);
            let mut crc = if i == 0 {
                crc32fast::Hasher::new_with_initial_len(self.head_crc, self.offset - s)
            } else {
                crc32fast::Hasher::new()
            };
            let from = (s.max(self.offset) - self.offset) as usize;
            let to = (e.min(end) - self.offset) as usize;
            let mut mid = crc32fast::Hasher::new();
            mid.update(&self.data[from..to.max(from)]);
            crc.combine(&mid);
            if i + 1 == self.crcs.len() {
                let tail = e.saturating_sub(end);
                crc.combine(&crc32fast::Hasher::new_with_initial_len(self.tail_crc, tail));
            }
            if crc.finalize() != *stored {
                return Err(RangeError::Damaged(self.first_segment + i as u32));
            }
        }
        Ok(())
    }
}

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
    },
    /// `create_file_meta_data`.
    Create {
        /// The file.
        path: MeshPath,
        /// Copies per block; 0 for the cluster's default.
        replication: u8,
    },
    /// `rename`.
    Rename {
        /// The source.
        from: MeshPath,
        /// The destination (must not exist).
        to: MeshPath,
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
}

impl MetaOp {
    /// Whether the operation changes the namespace (goes through the log).
    pub fn is_write(&self) -> bool {
        !matches!(
            self,
            MetaOp::Stat { .. }
                | MetaOp::List { .. }
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
}

/// Most locks one [`MetaReply::Locks`] lists.
pub const MAX_LOCKS_LISTED: u32 = 1000;
/// Most holders or waiters of one lock a [`MetaReply::Locks`] lists.
pub const MAX_LOCK_PARTIES: u32 = 10_000;

/// Most problems one fsck reply lists (the counts cover them all).
pub const MAX_FSCK_PROBLEMS: u32 = 500;

/// Blocks by health (the cluster's in a status reply, a subtree's in an fsck report).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HealthCounts {
    /// Blocks with as many good replicas as wanted.
    pub healthy: u64,
    /// Blocks with fewer good replicas than wanted, at least one.
    pub under_replicated: u64,
    /// Blocks with no good replica.
    pub missing: u64,
    /// Blocks with a repair copy under way.
    pub repairing: u64,
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

/// A server's report of itself and its links.
const _: () = assert!(KIND_STATUS_REQUEST >= meshfs_group::FIRST_APP_KIND);

/// Most peers a status reply may list (the config allows at most this many servers).
pub const MAX_STATUS_PEERS: u32 = meshfs_group::config::MAX_SERVERS as u32;

/// Stable error codes carried in [`Message::Error`]. Numbers never change meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ErrorCode {
    /// The request kind is not served by this server.
    Unsupported = 1,
    /// The request body did not parse.
    BadRequest = 2,
    /// Something failed on the server; the message says what.
    Internal = 3,
}

impl ErrorCode {
    fn from_u8(code: u8) -> Result<ErrorCode, BodyError> {
        match code {
            1 => Ok(ErrorCode::Unsupported),
            2 => Ok(ErrorCode::BadRequest),
            3 => Ok(ErrorCode::Internal),
            other => Err(BodyError::Invalid { field: "error code", value: u64::from(other) }),
        }
    }
}

/// One peer link in a status report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerLink {
    /// The peer.
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// Whether the reporting server's link to it is up.
    pub up: bool,
    /// Milliseconds in the current state.
    pub since_ms: u64,
    /// Pongs received on the current link.
    pub rtt_samples: u64,
    /// Last RTT, microseconds.
    pub rtt_last_us: u64,
    /// Smoothed RTT, microseconds.
    pub rtt_smoothed_us: u64,
    /// Largest RTT on the current link, microseconds.
    pub rtt_max_us: u64,
}

/// A meta-server's Raft state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftInfo {
    /// 1 follower, 2 candidate, 3 leader, 4 pre-candidate.
    pub role: u8,
    /// Current term.
    pub term: u64,
    /// Highest index known committed.
    pub commit_index: u64,
    /// Highest index applied to the namespace.
    pub applied_index: u64,
    /// The leader's id, 0 if unknown.
    pub leader: u32,
    /// Files and directories in its namespace as applied.
    pub inodes: u64,
}

impl RaftInfo {
    /// The role's name: "follower", "candidate", "leader" or "pre-candidate".
    pub fn role_name(&self) -> &'static str {
        match self.role {
            1 => "follower",
            2 => "candidate",
            3 => "leader",
            4 => "pre-candidate",
            _ => "unknown",
        }
    }
}

/// A server's report of itself and its links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReply {
    /// The reporting server.
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// Its cluster name.
    pub cluster: String,
    /// Its listening address, as text.
    pub addr: String,
    /// Its incarnation (random per start).
    pub incarnation: u64,
    /// Milliseconds since it started.
    pub uptime_ms: u64,
    /// Its build's version.
    pub version: String,
    /// Its links to every other server of the config.
    pub peers: Vec<PeerLink>,
    /// Its Raft state (meta-servers only).
    pub raft: Option<RaftInfo>,
    /// Meta-servers: the data-servers as their reports describe them.
    pub data_servers: Vec<ReportedDataServer>,
    /// The leader: the cluster's blocks by health, as of its last repair scan.
    pub health: Option<HealthCounts>,
}

/// A data-server as a meta-server knows it from its reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportedDataServer {
    /// The data-server.
    pub id: NodeId,
    /// Bytes it may store.
    pub capacity: u64,
    /// Bytes its replicas take.
    pub used: u64,
    /// Replicas it holds.
    pub blocks: u64,
    /// Its last full report is complete.
    pub complete: bool,
    /// Its link to this meta-server is up.
    pub up: bool,
    /// Marked draining.
    pub draining: bool,
}

/// An application message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Asks a server for its [`StatusReply`].
    StatusRequest,
    /// A server's status.
    StatusReply(StatusReply),
    /// A Raft message between meta-servers.
    Raft(Vec<u8>),
    /// A piece of a snapshot's data.
    SnapshotChunk(SnapshotChunk),
    /// A piece of a block write.
    WriteChunk(WriteChunk),
    /// A data-server's acknowledgement of write chunks.
    WriteAck(WriteAck),
    /// A read of a block.
    ReadBlock(ReadBlock),
    /// What a data-server holds.
    DataReport(DataReport),
    /// The leader committed a write of this block at this version: a replica may drop the
    /// version the write started from.
    BlockCommitted(BlockDescriptor),
    /// Bytes of a block.
    BlockData(BlockData),
    /// Copy a block from another data-server.
    Repair(RepairTask),
    /// A repair copy finished (`error` empty) or failed.
    RepairDone {
        /// The leader's task number.
        task: u64,
        /// The block copied.
        block: BlockDescriptor,
        /// Why it failed; empty when it succeeded.
        error: String,
    },
    /// Delete the replica of this block if it is held at exactly this version.
    DeleteReplica(BlockDescriptor),
    /// The scrubber found this replica damaged and set it aside.
    ReplicaDamaged {
        /// The block at the version that was damaged.
        block: BlockDescriptor,
        /// What was wrong.
        reason: String,
    },
    /// A namespace request.
    MetaRequest(MetaRequest),
    /// A namespace reply.
    MetaReply(MetaReply),
    /// A request failed.
    Error {
        /// What kind of failure.
        code: ErrorCode,
        /// What happened, for people.
        message: String,
    },
}

/// A repair copy the leader asks of a data-server: read `block` from `source` over the
/// mesh, check every segment's checksum, and store it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepairTask {
    /// The leader's task number, echoed in [`Message::RepairDone`].
    pub task: u64,
    /// The block at the version to copy.
    pub block: BlockDescriptor,
    /// Its block size.
    pub block_size: u32,
    /// Its valid bytes.
    pub len: u64,
    /// The data-server to copy from.
    pub source: NodeId,
}

/// A body that is not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// No message has this kind.
    #[error("unknown message kind {0}")]
    UnknownKind(u16),
    /// The body of a known kind did not parse.
    #[error("bad body for message kind {kind}: {source}")]
    Body {
        /// The kind.
        kind: u16,
        /// What was wrong.
        source: BodyError,
    },
}

fn role_code(role: Role) -> u8 {
    match role {
        Role::MServer => 1,
        Role::DServer => 2,
    }
}

fn role_from(code: u8) -> Result<Role, BodyError> {
    match code {
        1 => Ok(Role::MServer),
        2 => Ok(Role::DServer),
        other => Err(BodyError::Invalid { field: "role", value: u64::from(other) }),
    }
}

impl Message {
    /// The kind of this message.
    pub fn kind(&self) -> u16 {
        match self {
            Message::StatusRequest => KIND_STATUS_REQUEST,
            Message::StatusReply(_) => KIND_STATUS_REPLY,
            Message::Error { .. } => KIND_ERROR,
            Message::Raft(_) => KIND_RAFT,
            Message::SnapshotChunk(_) => KIND_SNAPSHOT_CHUNK,
            Message::WriteChunk(_) => KIND_WRITE_CHUNK,
            Message::WriteAck(_) => KIND_WRITE_ACK,
            Message::ReadBlock(_) => KIND_READ_BLOCK,
            Message::DataReport(_) => KIND_DATA_REPORT,
            Message::BlockCommitted(_) => KIND_BLOCK_COMMITTED,
            Message::BlockData(_) => KIND_BLOCK_DATA,
            Message::Repair(_) => KIND_REPAIR,
            Message::RepairDone { .. } => KIND_REPAIR_DONE,
            Message::DeleteReplica(_) => KIND_DELETE_REPLICA,
            Message::ReplicaDamaged { .. } => KIND_REPLICA_DAMAGED,
            Message::MetaRequest(_) => KIND_META_REQUEST,
            Message::MetaReply(_) => KIND_META_REPLY,
        }
    }

    /// This message as a frame answering (or starting) `request_id`.
    pub fn to_frame(&self, request_id: u64) -> Frame {
        Frame::new(self.kind(), request_id, self.encode())
    }

    /// The body bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = BodyWriter::new();
        match self {
            Message::StatusRequest => {}
            Message::StatusReply(s) => {
                w.u32(s.id.0).u8(role_code(s.role)).str(&s.cluster).str(&s.addr);
                w.u64(s.incarnation).u64(s.uptime_ms).str(&s.version);
                w.u32(u32::try_from(s.peers.len()).expect("peer count fits u32"));
                for p in &s.peers {
                    w.u32(p.id.0).u8(role_code(p.role)).bool(p.up).u64(p.since_ms);
                    w.u64(p.rtt_samples)
                        .u64(p.rtt_last_us)
                        .u64(p.rtt_smoothed_us)
                        .u64(p.rtt_max_us);
                }
                w.bool(s.raft.is_some());
                if let Some(r) = &s.raft {
                    w.u8(r.role)
                        .u64(r.term)
                        .u64(r.commit_index)
                        .u64(r.applied_index)
                        .u32(r.leader)
                        .u64(r.inodes);
                }
                w.u32(s.data_servers.len() as u32);
                for d in &s.data_servers {
                    w.u32(d.id.0).u64(d.capacity).u64(d.used).u64(d.blocks).bool(d.complete);
                    w.bool(d.up).bool(d.draining);
                }
                w.bool(s.health.is_some());
                if let Some(h) = &s.health {
                    write_health(&mut w, h);
                }
            }
            Message::Error { code, message } => {
                w.u8(*code as u8).str(message);
            }
            Message::Raft(bytes) => {
                w.fixed(bytes);
            }
            Message::SnapshotChunk(c) => {
                w.u64(c.index).u64(c.term).u64(c.total).u64(c.offset).bytes(&c.data);
            }
            Message::WriteChunk(c) => {
                c.token.write(&mut w);
                w.u32(c.block_size).bool(c.keep_existing).u64(c.offset).bool(c.last).bytes(&c.data);
            }
            Message::WriteAck(WriteAck::Written { through, committed }) => {
                w.u8(1).u64(*through).bool(*committed);
            }
            Message::WriteAck(WriteAck::Failed { at, message }) => {
                w.u8(2).u32(at.0).str(message);
            }
            Message::BlockCommitted(block) => block.write(&mut w),
            Message::DataReport(report) => {
                w.u64(report.capacity).u64(report.used).bool(report.full).bool(report.last);
                w.u32(report.blocks.len() as u32);
                for (block, len) in &report.blocks {
                    block.write(&mut w);
                    w.u64(*len);
                }
                w.u32(report.removed.len() as u32);
                for (file, index) in &report.removed {
                    w.u32(*file).u16(*index);
                }
            }
            Message::ReadBlock(r) => {
                r.block.write(&mut w);
                w.u64(r.offset).u32(r.len);
            }
            Message::BlockData(BlockData::Range(r)) => {
                w.u8(3).u32(r.first_segment).u64(r.block_len).u64(r.offset);
                w.u32(r.head_crc).u32(r.tail_crc).u32(r.crcs.len() as u32);
                for crc in &r.crcs {
                    w.u32(*crc);
                }
                w.bytes(&r.data);
            }
            Message::BlockData(BlockData::Failed { message }) => {
                w.u8(2).str(message);
            }
            Message::MetaRequest(request) => write_meta_request(&mut w, request),
            Message::MetaReply(reply) => write_meta_reply(&mut w, reply),
            Message::Repair(t) => {
                w.u64(t.task);
                t.block.write(&mut w);
                w.u32(t.block_size).u64(t.len).u32(t.source.0);
            }
            Message::RepairDone { task, block, error } => {
                w.u64(*task);
                block.write(&mut w);
                w.str(error);
            }
            Message::DeleteReplica(block) => block.write(&mut w),
            Message::ReplicaDamaged { block, reason } => {
                block.write(&mut w);
                w.str(reason);
            }
        }
        w.finish()
    }

    /// Reads the message in `frame`.
    pub fn decode(frame: &Frame) -> Result<Message, WireError> {
        let kind = frame.kind;
        let mut r = BodyReader::new(&frame.body);
        let body = |source| WireError::Body { kind, source };
        let message = match kind {
            KIND_STATUS_REQUEST => Message::StatusRequest,
            KIND_STATUS_REPLY => Message::StatusReply(read_status(&mut r).map_err(body)?),
            KIND_ERROR => {
                let code = ErrorCode::from_u8(r.u8("error code").map_err(body)?).map_err(body)?;
                Message::Error { code, message: r.str("message").map_err(body)?.to_string() }
            }
            // Opaque here: raft-rs decodes (and checks) the protobuf.
            KIND_RAFT => return Ok(Message::Raft(frame.body.clone())),
            KIND_SNAPSHOT_CHUNK => Message::SnapshotChunk(SnapshotChunk {
                index: r.u64("index").map_err(body)?,
                term: r.u64("term").map_err(body)?,
                total: r.u64("total").map_err(body)?,
                offset: r.u64("offset").map_err(body)?,
                data: r.bytes("data").map_err(body)?.to_vec(),
            }),
            KIND_WRITE_CHUNK => Message::WriteChunk(read_write_chunk(&mut r).map_err(body)?),
            KIND_WRITE_ACK => Message::WriteAck(read_write_ack(&mut r).map_err(body)?),
            KIND_READ_BLOCK => Message::ReadBlock(ReadBlock {
                block: BlockDescriptor::read(&mut r).map_err(body)?,
                offset: r.u64("offset").map_err(body)?,
                len: r.u32("len").map_err(body)?,
            }),
            KIND_DATA_REPORT => Message::DataReport(read_data_report(&mut r).map_err(body)?),
            KIND_BLOCK_COMMITTED => {
                Message::BlockCommitted(BlockDescriptor::read(&mut r).map_err(body)?)
            }
            KIND_BLOCK_DATA => Message::BlockData(read_block_data(&mut r).map_err(body)?),
            KIND_META_REQUEST => Message::MetaRequest(read_meta_request(&mut r).map_err(body)?),
            KIND_META_REPLY => Message::MetaReply(read_meta_reply(&mut r).map_err(body)?),
            KIND_REPAIR => Message::Repair(RepairTask {
                task: r.u64("task").map_err(body)?,
                block: BlockDescriptor::read(&mut r).map_err(body)?,
                block_size: r.u32("block size").map_err(body)?,
                len: r.u64("len").map_err(body)?,
                source: NodeId(r.u32("source").map_err(body)?),
            }),
            KIND_REPAIR_DONE => Message::RepairDone {
                task: r.u64("task").map_err(body)?,
                block: BlockDescriptor::read(&mut r).map_err(body)?,
                error: r.str("error").map_err(body)?.to_string(),
            },
            KIND_DELETE_REPLICA => {
                Message::DeleteReplica(BlockDescriptor::read(&mut r).map_err(body)?)
            }
            KIND_REPLICA_DAMAGED => Message::ReplicaDamaged {
                block: BlockDescriptor::read(&mut r).map_err(body)?,
                reason: r.str("reason").map_err(body)?.to_string(),
            },
            other => return Err(WireError::UnknownKind(other)),
        };
        r.finish().map_err(body)?;
        Ok(message)
    }
}

fn read_write_chunk(r: &mut BodyReader<'_>) -> Result<WriteChunk, BodyError> {
    let token = Token::read(r)?;
    let block_size = r.u32("block size")?;
    let keep_existing = r.bool("keep existing")?;
    let offset = r.u64("offset")?;
    let last = r.bool("last")?;
    let data = r.bytes("data")?;
    if data.len() > MAX_CHUNK_BYTES as usize {
        return Err(BodyError::Invalid { field: "chunk length", value: data.len() as u64 });
    }
    Ok(WriteChunk { token, block_size, keep_existing, offset, last, data: data.to_vec() })
}

fn read_write_ack(r: &mut BodyReader<'_>) -> Result<WriteAck, BodyError> {
    match r.u8("ack")? {
        1 => Ok(WriteAck::Written { through: r.u64("through")?, committed: r.bool("committed")? }),
        2 => Ok(WriteAck::Failed {
            at: NodeId(r.u32("at")?),
            message: r.str("message")?.to_string(),
        }),
        other => Err(BodyError::Invalid { field: "ack", value: u64::from(other) }),
    }
}

fn read_data_report(r: &mut BodyReader<'_>) -> Result<DataReport, BodyError> {
    let capacity = r.u64("capacity")?;
    let used = r.u64("used")?;
    let full = r.bool("full")?;
    let last = r.bool("last")?;
    let count = r.u32("block count")? as usize;
    if count > MAX_REPORT_BLOCKS {
        return Err(BodyError::Invalid { field: "block count", value: count as u64 });
    }
    let mut blocks = Vec::with_capacity(count);
    for _ in 0..count {
        blocks.push((BlockDescriptor::read(r)?, r.u64("length")?));
    }
    let count = r.u32("removed count")? as usize;
    if count > MAX_REPORT_BLOCKS {
        return Err(BodyError::Invalid { field: "removed count", value: count as u64 });
    }
    let removed = (0..count)
        .map(|_| Ok((r.u32("file")?, r.u16("index")?)))
        .collect::<Result<_, BodyError>>()?;
    Ok(DataReport { capacity, used, full, last, blocks, removed })
}

fn read_block_data(r: &mut BodyReader<'_>) -> Result<BlockData, BodyError> {
    match r.u8("block data")? {
        3 => {
            let first_segment = r.u32("first segment")?;
            let block_len = r.u64("block length")?;
            let offset = r.u64("offset")?;
            let head_crc = r.u32("head crc")?;
            let tail_crc = r.u32("tail crc")?;
            let count = r.u32("crc count")?;
            if u64::from(count) > u64::from(MAX_CHUNK_BYTES) / SEGMENT_BYTES + 1 {
                return Err(BodyError::Invalid { field: "crc count", value: u64::from(count) });
            }
            let crcs = (0..count).map(|_| r.u32("crc")).collect::<Result<_, _>>()?;
            let data = r.bytes("data")?.to_vec();
            Ok(BlockData::Range(RangeRead {
                first_segment,
                block_len,
                offset,
                crcs,
                head_crc,
                tail_crc,
                data,
            }))
        }
        2 => Ok(BlockData::Failed { message: r.str("message")?.to_string() }),
        other => Err(BodyError::Invalid { field: "block data", value: u64::from(other) }),
    }
}

fn write_meta_request(w: &mut BodyWriter, request: &MetaRequest) {
    w.u64(request.session).u64(request.request_id);
    match &request.op {
        MetaOp::Mkdir { path, parents } => {
            w.u8(1);
            write_path(w, path);
            w.bool(*parents);
        }
        MetaOp::Create { path, replication } => {
            w.u8(2);
            write_path(w, path);
            w.u8(*replication);
        }
        MetaOp::Rename { from, to } => {
            w.u8(3);
            write_path(w, from);
            write_path(w, to);
        }
        MetaOp::CreateWrite { path, replication, size } => {
            w.u8(12);
            write_path(w, path);
            w.u8(*replication).u64(*size);
        }
        MetaOp::Remove { path, recursive } => {
            w.u8(4);
            write_path(w, path);
            w.bool(*recursive);
        }
        MetaOp::Stat { path, first_block } => {
            w.u8(5);
            write_path(w, path);
            w.u32(*first_block);
        }
        MetaOp::WriteLease { path, index } => {
            w.u8(8);
            write_path(w, path);
            w.u16(*index);
        }
        MetaOp::SwapReplica { path, index, failed } => {
            w.u8(11);
            write_path(w, path);
            w.u16(*index).u32(failed.0);
        }
        MetaOp::CommitWrite { path, index, version } => {
            w.u8(10);
            write_path(w, path);
            w.u16(*index).u16(version.0);
        }
        MetaOp::ReportBadReplica { block, server, reason } => {
            w.u8(9);
            block.write(w);
            w.u32(server.0).str(reason);
        }
        MetaOp::Expand { path, size } => {
            w.u8(7);
            write_path(w, path);
            w.u64(*size);
        }
        MetaOp::List { path, after, limit } => {
            w.u8(6);
            write_path(w, path);
            w.str(after).u32(*limit);
        }
        MetaOp::Drain { server, draining } => {
            w.u8(13).u32(server.0).bool(*draining);
        }
        MetaOp::Fsck { path } => {
            w.u8(14);
            write_path(w, path);
        }
        MetaOp::OpenSession => {
            w.u8(15);
        }
        MetaOp::KeepAlive => {
            w.u8(16);
        }
        MetaOp::CloseSession => {
            w.u8(17);
        }
        MetaOp::Lock { path, mode, wait_ms } => {
            w.u8(18);
            write_path(w, path);
            w.u8(mode.byte()).bool(wait_ms.is_some()).u64(wait_ms.unwrap_or(0));
        }
        MetaOp::Unlock { path } => {
            w.u8(19);
            write_path(w, path);
        }
        MetaOp::Locks { path } => {
            w.u8(20);
            write_path(w, path);
        }
    }
}

fn read_meta_request(r: &mut BodyReader<'_>) -> Result<MetaRequest, BodyError> {
    let session = r.u64("session")?;
    let request_id = r.u64("request id")?;
    let op = match r.u8("op")? {
        1 => MetaOp::Mkdir { path: read_path(r)?, parents: r.bool("parents")? },
        2 => MetaOp::Create { path: read_path(r)?, replication: r.u8("replication")? },
        3 => MetaOp::Rename { from: read_path(r)?, to: read_path(r)? },
        12 => MetaOp::CreateWrite {
            path: read_path(r)?,
            replication: r.u8("replication")?,
            size: r.u64("size")?,
        },
        4 => MetaOp::Remove { path: read_path(r)?, recursive: r.bool("recursive")? },
        5 => MetaOp::Stat { path: read_path(r)?, first_block: r.u32("first block")? },
        7 => MetaOp::Expand { path: read_path(r)?, size: r.u64("size")? },
        8 => MetaOp::WriteLease { path: read_path(r)?, index: r.u16("block index")? },
        11 => MetaOp::SwapReplica {
            path: read_path(r)?,
            index: r.u16("block index")?,
            failed: NodeId(r.u32("failed")?),
        },
        10 => MetaOp::CommitWrite {
            path: read_path(r)?,
            index: r.u16("block index")?,
            version: BlockVersion(r.u16("block version")?),
        },
        9 => MetaOp::ReportBadReplica {
            block: BlockDescriptor::read(r)?,
            server: NodeId(r.u32("data-server")?),
            reason: r.str("reason")?.to_string(),
        },
        6 => MetaOp::List {
            path: read_path(r)?,
            after: r.str("after")?.to_string(),
            limit: r.u32("limit")?,
        },
        13 => MetaOp::Drain { server: NodeId(r.u32("server")?), draining: r.bool("draining")? },
        14 => MetaOp::Fsck { path: read_path(r)? },
        15 => MetaOp::OpenSession,
        16 => MetaOp::KeepAlive,
        17 => MetaOp::CloseSession,
        18 => {
            let path = read_path(r)?;
            let mode = LockMode::from_byte(r.u8("lock mode")?)?;
            let waits = r.bool("waits")?;
            let wait_ms = r.u64("wait")?;
            MetaOp::Lock { path, mode, wait_ms: waits.then_some(wait_ms) }
        }
        19 => MetaOp::Unlock { path: read_path(r)? },
        20 => MetaOp::Locks { path: read_path(r)? },
        other => return Err(BodyError::Invalid { field: "op", value: u64::from(other) }),
    };
    Ok(MetaRequest { session, request_id, op })
}

fn write_stat(w: &mut BodyWriter, stat: &Stat) {
    match stat {
        Stat::Dir { id, entries, mtime_ms } => {
            w.u8(0).u32(*id).u64(*entries as u64).u64(*mtime_ms);
        }
        Stat::File(meta) => {
            w.u8(1);
            meta.descriptor.write(w);
            w.u64(meta.size)
                .u32(meta.block_size)
                .u8(meta.replication)
                .u64(meta.ctime_ms)
                .u64(meta.mtime_ms);
            w.u32(meta.blocks.len() as u32);
            for block in &meta.blocks {
                block.descriptor.write(w);
                write_replicas(w, &block.replicas);
            }
        }
    }
}

fn read_stat(r: &mut BodyReader<'_>) -> Result<Stat, BodyError> {
    match r.u8("stat kind")? {
        0 => Ok(Stat::Dir {
            id: r.u32("id")?,
            entries: usize::try_from(r.u64("entries")?).unwrap_or(usize::MAX),
            mtime_ms: r.u64("mtime")?,
        }),
        1 => {
            let descriptor = FileDescriptor::read(r)?;
            let size = r.u64("size")?;
            let block_size = r.u32("block size")?;
            let replication = r.u8("replication")?;
            let ctime_ms = r.u64("ctime")?;
            let mtime_ms = r.u64("mtime")?;
            let count = r.u32("block count")?;
            if count > MAX_STAT_BLOCKS {
                return Err(BodyError::Invalid { field: "block count", value: u64::from(count) });
            }
            let mut blocks = Vec::with_capacity(count as usize);
            for _ in 0..count {
                let descriptor = BlockDescriptor::read(r)?;
                let replicas = read_replicas(r)?;
                blocks.push(BlockMeta { descriptor, replicas });
            }
            Ok(Stat::File(FileMeta {
                descriptor,
                size,
                block_size,
                replication,
                ctime_ms,
                mtime_ms,
                blocks,
            }))
        }
        other => Err(BodyError::Invalid { field: "stat kind", value: u64::from(other) }),
    }
}

fn write_meta_reply(w: &mut BodyWriter, reply: &MetaReply) {
    match reply {
        MetaReply::Done => {
            w.u8(1);
        }
        MetaReply::Lease(token) => {
            w.u8(10);
            token.write(w);
        }
        MetaReply::Expanded { file, new_blocks } => {
            w.u8(9);
            file.write(w);
            w.u32(*new_blocks);
        }
        MetaReply::Created(fd) => {
            w.u8(2);
            fd.write(w);
        }
        MetaReply::Removed { files, dirs } => {
            w.u8(3).u64(*files).u64(*dirs);
        }
        MetaReply::Stat { stat, total_blocks, first_block } => {
            w.u8(4);
            write_stat(w, stat);
            w.u32(*total_blocks).u32(*first_block);
        }
        MetaReply::List { entries, more } => {
            w.u8(5).u32(entries.len() as u32);
            for e in entries {
                w.str(&e.name).bool(e.is_dir).u32(e.id).u64(e.size);
            }
            w.bool(*more);
        }
        MetaReply::NotLeader { leader } => {
            w.u8(6).u32(leader.map_or(0, |l| l.0));
        }
        MetaReply::Failed(err) => {
            w.u8(7);
            err.write(w);
        }
        MetaReply::Unavailable(why) => {
            w.u8(8).str(why);
        }
        MetaReply::Fsck(report) => {
            w.u8(11).u64(report.files).u64(report.blocks);
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
            w.u8(12).u64(*lease_ms).u64(*lock_delay_ms);
        }
        MetaReply::Locked { sequencer } => {
            w.u8(13).u64(*sequencer);
        }
        MetaReply::Locks { locks, more } => {
            w.u8(14).u32(locks.len() as u32);
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
    }
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

fn write_health(w: &mut BodyWriter, h: &HealthCounts) {
    w.u64(h.healthy).u64(h.under_replicated).u64(h.missing).u64(h.repairing);
}

fn read_health(r: &mut BodyReader<'_>) -> Result<HealthCounts, BodyError> {
    Ok(HealthCounts {
        healthy: r.u64("healthy")?,
        under_replicated: r.u64("under-replicated")?,
        missing: r.u64("missing")?,
        repairing: r.u64("repairing")?,
    })
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

fn read_meta_reply(r: &mut BodyReader<'_>) -> Result<MetaReply, BodyError> {
    Ok(match r.u8("reply")? {
        1 => MetaReply::Done,
        2 => MetaReply::Created(FileDescriptor::read(r)?),
        3 => MetaReply::Removed { files: r.u64("files")?, dirs: r.u64("dirs")? },
        4 => MetaReply::Stat {
            stat: read_stat(r)?,
            total_blocks: r.u32("total blocks")?,
            first_block: r.u32("first block")?,
        },
        5 => {
            let count = r.u32("entry count")?;
            if count > MAX_LIST_PAGE {
                return Err(BodyError::Invalid { field: "entry count", value: u64::from(count) });
            }
            let mut entries = Vec::with_capacity(count as usize);
            for _ in 0..count {
                entries.push(DirEntry {
                    name: r.str("name")?.to_string(),
                    is_dir: r.bool("is dir")?,
                    id: r.u32("id")?,
                    size: r.u64("size")?,
                });
            }
            MetaReply::List { entries, more: r.bool("more")? }
        }
        6 => {
            MetaReply::NotLeader { leader: Some(r.u32("leader")?).filter(|&l| l != 0).map(NodeId) }
        }
        7 => MetaReply::Failed(NsError::read(r)?),
        8 => MetaReply::Unavailable(r.str("reason")?.to_string()),
        9 => {
            MetaReply::Expanded { file: FileDescriptor::read(r)?, new_blocks: r.u32("new blocks")? }
        }
        10 => MetaReply::Lease(Token::read(r)?),
        11 => MetaReply::Fsck(read_fsck(r)?),
        12 => MetaReply::Session { lease_ms: r.u64("lease")?, lock_delay_ms: r.u64("lock delay")? },
        13 => MetaReply::Locked { sequencer: r.u64("sequencer")? },
        14 => read_locks(r)?,
        other => return Err(BodyError::Invalid { field: "reply", value: u64::from(other) }),
    })
}

fn read_status(r: &mut BodyReader<'_>) -> Result<StatusReply, BodyError> {
    let id = NodeId(r.u32("id")?);
    let role = role_from(r.u8("role")?)?;
    let cluster = r.str("cluster")?.to_string();
    let addr = r.str("addr")?.to_string();
    let incarnation = r.u64("incarnation")?;
    let uptime_ms = r.u64("uptime_ms")?;
    let version = r.str("version")?.to_string();
    let count = r.u32("peer count")?;
    if count > MAX_STATUS_PEERS {
        return Err(BodyError::Invalid { field: "peer count", value: u64::from(count) });
    }
    let mut peers = Vec::with_capacity(count as usize);
    for _ in 0..count {
        peers.push(PeerLink {
            id: NodeId(r.u32("peer id")?),
            role: role_from(r.u8("peer role")?)?,
            up: r.bool("peer up")?,
            since_ms: r.u64("since_ms")?,
            rtt_samples: r.u64("rtt_samples")?,
            rtt_last_us: r.u64("rtt_last_us")?,
            rtt_smoothed_us: r.u64("rtt_smoothed_us")?,
            rtt_max_us: r.u64("rtt_max_us")?,
        });
    }
    let raft = if r.bool("has raft")? {
        Some(RaftInfo {
            role: r.u8("raft role")?,
            term: r.u64("term")?,
            commit_index: r.u64("commit index")?,
            applied_index: r.u64("applied index")?,
            leader: r.u32("leader")?,
            inodes: r.u64("inodes")?,
        })
    } else {
        None
    };
    let count = r.u32("data-server count")?;
    if count > MAX_STATUS_PEERS {
        return Err(BodyError::Invalid { field: "data-server count", value: u64::from(count) });
    }
    let mut data_servers = Vec::with_capacity(count as usize);
    for _ in 0..count {
        data_servers.push(ReportedDataServer {
            id: NodeId(r.u32("data-server")?),
            capacity: r.u64("capacity")?,
            used: r.u64("used")?,
            blocks: r.u64("blocks")?,
            complete: r.bool("complete")?,
            up: r.bool("up")?,
            draining: r.bool("draining")?,
        });
    }
    let health = if r.bool("has health")? { Some(read_health(r)?) } else { None };
    Ok(StatusReply {
        id,
        role,
        cluster,
        addr,
        incarnation,
        uptime_ms,
        version,
        peers,
        raft,
        data_servers,
        health,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::SessionId;
    use meshfs_group::ClientId;
    use proptest::prelude::*;

    fn samples() -> Vec<Message> {
        vec![
            Message::StatusRequest,
            Message::StatusReply(StatusReply {
                id: NodeId(1),
                role: Role::MServer,
                cluster: "meshfs-local".into(),
                addr: "127.0.0.1:7101".into(),
                incarnation: 42,
                uptime_ms: 1234,
                version: "0.1.0".into(),
                peers: vec![
                    PeerLink {
                        id: NodeId(2),
                        role: Role::DServer,
                        up: true,
                        since_ms: 10,
                        rtt_samples: 3,
                        rtt_last_us: 80,
                        rtt_smoothed_us: 85,
                        rtt_max_us: 120,
                    },
                    PeerLink {
                        id: NodeId(3),
                        role: Role::MServer,
                        up: false,
                        since_ms: 0,
                        rtt_samples: 0,
                        rtt_last_us: 0,
                        rtt_smoothed_us: 0,
                        rtt_max_us: 0,
                    },
                ],
                raft: Some(RaftInfo {
                    role: 3,
                    term: 7,
                    commit_index: 99,
                    applied_index: 98,
                    leader: 1,
                    inodes: 5,
                }),
                data_servers: vec![ReportedDataServer {
                    id: NodeId(4),
                    capacity: 10,
                    used: 3,
                    blocks: 1,
                    complete: true,
                    up: true,
                    draining: true,
                }],
                health: Some(HealthCounts {
                    healthy: 9,
                    under_replicated: 2,
                    missing: 1,
                    repairing: 2,
                }),
            }),
            Message::Repair(RepairTask {
                task: 7,
                block: BlockDescriptor {
                    file: FileDescriptor { id: crate::descriptor::FileId(5), version: 2 },
                    index: 1,
                    version: crate::descriptor::BlockVersion(3),
                },
                block_size: 1 << 20,
                len: 1000,
                source: NodeId(4),
            }),
            Message::RepairDone {
                task: 7,
                block: BlockDescriptor {
                    file: FileDescriptor { id: crate::descriptor::FileId(5), version: 2 },
                    index: 1,
                    version: crate::descriptor::BlockVersion(3),
                },
                error: "source down".into(),
            },
            Message::DeleteReplica(BlockDescriptor {
                file: FileDescriptor { id: crate::descriptor::FileId(5), version: 0 },
                index: 1,
                version: crate::descriptor::BlockVersion(3),
            }),
            Message::ReplicaDamaged {
                block: BlockDescriptor {
                    file: FileDescriptor { id: crate::descriptor::FileId(5), version: 0 },
                    index: 1,
                    version: crate::descriptor::BlockVersion(3),
                },
                reason: "segment 2 checksum".into(),
            },
            Message::MetaRequest(MetaRequest {
                session: 9,
                request_id: 8,
                op: MetaOp::Drain { server: NodeId(4), draining: true },
            }),
            Message::MetaRequest(MetaRequest {
                session: 9,
                request_id: 9,
                op: MetaOp::Fsck { path: MeshPath::parse("/a").unwrap() },
            }),
            Message::MetaRequest(MetaRequest {
                session: 9,
                request_id: 10,
                op: MetaOp::OpenSession,
            }),
            Message::MetaRequest(MetaRequest { session: 9, request_id: 11, op: MetaOp::KeepAlive }),
            Message::MetaRequest(MetaRequest {
                session: 9,
                request_id: 12,
                op: MetaOp::CloseSession,
            }),
            Message::MetaRequest(MetaRequest {
                session: 9,
                request_id: 13,
                op: MetaOp::Lock {
                    path: MeshPath::parse("/l").unwrap(),
                    mode: LockMode::Shared,
                    wait_ms: Some(3),
                },
            }),
            Message::MetaRequest(MetaRequest {
                session: 9,
                request_id: 14,
                op: MetaOp::Unlock { path: MeshPath::parse("/l").unwrap() },
            }),
            Message::MetaRequest(MetaRequest {
                session: 9,
                request_id: 15,
                op: MetaOp::Locks { path: MeshPath::root() },
            }),
            Message::MetaReply(MetaReply::Session { lease_ms: 12_000, lock_delay_ms: 5_000 }),
            Message::MetaReply(MetaReply::Locked { sequencer: 77 }),
            Message::MetaReply(MetaReply::Locks {
                locks: vec![LockInfo {
                    path: MeshPath::parse("/l").unwrap(),
                    holders: vec![Holder {
                        session: SessionId { client: ClientId(2), nonce: 3 },
                        mode: LockMode::Shared,
                        count: 2,
                        sequencer: 9,
                    }],
                    waiters: vec![Waiting {
                        session: SessionId { client: ClientId(3), nonce: 4 },
                        request_id: 8,
                        mode: LockMode::Exclusive,
                        deadline_ms: 1_000,
                    }],
                    delayed_until_ms: 0,
                }],
                more: true,
            }),
            Message::MetaReply(MetaReply::Fsck(FsckReport {
                files: 3,
                blocks: 4,
                health: HealthCounts { healthy: 2, under_replicated: 1, missing: 1, repairing: 1 },
                problems: vec![FsckProblem {
                    path: "/a/f".into(),
                    block: BlockDescriptor {
                        file: FileDescriptor { id: crate::descriptor::FileId(5), version: 2 },
                        index: 0,
                        version: crate::descriptor::BlockVersion(2),
                    },
                    wanted: 2,
                    replicas: vec![NodeId(4), NodeId(5)],
                    good: vec![NodeId(5)],
                    missing: false,
                    repairing: true,
                }],
                more: false,
                unknown_servers: vec![NodeId(4)],
            })),
            Message::Raft(vec![8, 1, 16, 2]),
            Message::SnapshotChunk(SnapshotChunk {
                index: 9,
                term: 2,
                total: 5,
                offset: 2,
                data: vec![1, 2, 3],
            }),
            Message::MetaRequest(MetaRequest {
                session: 9,
                request_id: 3,
                op: MetaOp::Create { path: MeshPath::parse("/a/b").unwrap(), replication: 2 },
            }),
            Message::MetaRequest(MetaRequest {
                session: 9,
                request_id: 5,
                op: MetaOp::CreateWrite {
                    path: MeshPath::parse("/a/c").unwrap(),
                    replication: 0,
                    size: 4096,
                },
            }),
            Message::MetaRequest(MetaRequest {
                session: 9,
                request_id: 4,
                op: MetaOp::List { path: MeshPath::root(), after: "x".into(), limit: 10 },
            }),
            Message::MetaRequest(MetaRequest {
                session: 1,
                request_id: 1,
                op: MetaOp::Rename {
                    from: MeshPath::parse("/a").unwrap(),
                    to: MeshPath::parse("/b").unwrap(),
                },
            }),
            Message::MetaReply(MetaReply::Created(FileDescriptor {
                id: crate::descriptor::FileId(5),
                version: 1,
            })),
            Message::MetaReply(MetaReply::NotLeader { leader: Some(NodeId(2)) }),
            Message::MetaReply(MetaReply::NotLeader { leader: None }),
            Message::MetaReply(MetaReply::Failed(NsError::AlreadyExists("/a".into()))),
            Message::MetaReply(MetaReply::List {
                entries: vec![DirEntry { name: "f".into(), is_dir: false, id: 7, size: 10 }],
                more: true,
            }),
            Message::MetaReply(MetaReply::Stat {
                stat: Stat::File(FileMeta {
                    descriptor: FileDescriptor { id: crate::descriptor::FileId(5), version: 2 },
                    size: 10,
                    block_size: 65536,
                    replication: 2,
                    ctime_ms: 1,
                    mtime_ms: 2,
                    blocks: vec![BlockMeta {
                        descriptor: BlockDescriptor {
                            file: FileDescriptor { id: crate::descriptor::FileId(5), version: 2 },
                            index: 0,
                            version: crate::descriptor::BlockVersion(1),
                        },
                        replicas: vec![NodeId(4), NodeId(5)],
                    }],
                }),
                total_blocks: 1,
                first_block: 0,
            }),
            Message::MetaReply(MetaReply::Stat {
                stat: Stat::Dir { id: 1, entries: 3, mtime_ms: 4 },
                total_blocks: 0,
                first_block: 0,
            }),
            Message::MetaReply(MetaReply::Removed { files: 1, dirs: 2 }),
            Message::MetaReply(MetaReply::Unavailable("election".into())),
            Message::MetaReply(MetaReply::Done),
            Message::WriteChunk(WriteChunk {
                token: Token::sign(
                    b"secret-0123456789abcdef",
                    BlockDescriptor {
                        file: FileDescriptor { id: crate::descriptor::FileId(3), version: 5 },
                        index: 2,
                        version: crate::descriptor::BlockVersion(9),
                    },
                    crate::descriptor::BlockVersion(8),
                    crate::token::TokenOp::Write,
                    vec![NodeId(4)],
                    meshfs_group::ClientId(1),
                    77,
                ),
                block_size: 1 << 20,
                keep_existing: false,
                offset: 4096,
                last: true,
                data: vec![1, 2, 3],
            }),
            Message::WriteAck(WriteAck::Written { through: 99, committed: true }),
            Message::WriteAck(WriteAck::Failed { at: NodeId(5), message: "disk full".into() }),
            Message::ReadBlock(ReadBlock {
                block: BlockDescriptor {
                    file: FileDescriptor { id: crate::descriptor::FileId(3), version: 5 },
                    index: 2,
                    version: crate::descriptor::BlockVersion(9),
                },
                offset: 65536,
                len: 100,
            }),
            Message::BlockData(BlockData::Range(RangeRead {
                first_segment: 1,
                block_len: 70_000,
                offset: 65_600,
                crcs: vec![7],
                head_crc: 8,
                tail_crc: 9,
                data: vec![0; 10],
            })),
            Message::BlockData(BlockData::Failed { message: "no replica".into() }),
            Message::MetaRequest(MetaRequest {
                session: 3,
                request_id: 1,
                op: MetaOp::ReportBadReplica {
                    block: BlockDescriptor {
                        file: FileDescriptor { id: crate::descriptor::FileId(3), version: 5 },
                        index: 2,
                        version: crate::descriptor::BlockVersion(9),
                    },
                    server: NodeId(5),
                    reason: "segment 3 failed its checksum".into(),
                },
            }),
            Message::BlockCommitted(BlockDescriptor {
                file: FileDescriptor { id: crate::descriptor::FileId(3), version: 6 },
                index: 2,
                version: BlockVersion(10),
            }),
            Message::DataReport(DataReport {
                capacity: 1 << 30,
                used: 12345,
                full: true,
                last: false,
                blocks: vec![(
                    BlockDescriptor {
                        file: FileDescriptor { id: crate::descriptor::FileId(3), version: 5 },
                        index: 2,
                        version: crate::descriptor::BlockVersion(9),
                    },
                    4096,
                )],
                removed: vec![(7, 1)],
            }),
            Message::MetaReply(MetaReply::Lease(Token::sign(
                b"secret-0123456789abcdef",
                BlockDescriptor {
                    file: FileDescriptor { id: crate::descriptor::FileId(3), version: 5 },
                    index: 2,
                    version: crate::descriptor::BlockVersion(9),
                },
                crate::descriptor::BlockVersion(8),
                crate::token::TokenOp::Write,
                vec![NodeId(4), NodeId(5)],
                meshfs_group::ClientId(1),
                77,
            ))),
            Message::MetaRequest(MetaRequest {
                session: 2,
                request_id: 9,
                op: MetaOp::WriteLease { path: MeshPath::parse("/f").unwrap(), index: 7 },
            }),
            Message::MetaRequest(MetaRequest {
                session: 2,
                request_id: 11,
                op: MetaOp::SwapReplica {
                    path: MeshPath::parse("/f").unwrap(),
                    index: 7,
                    failed: NodeId(5),
                },
            }),
            Message::MetaRequest(MetaRequest {
                session: 2,
                request_id: 10,
                op: MetaOp::CommitWrite {
                    path: MeshPath::parse("/f").unwrap(),
                    index: 7,
                    version: BlockVersion(12),
                },
            }),
            Message::MetaReply(MetaReply::Expanded {
                file: FileDescriptor { id: crate::descriptor::FileId(3), version: 4 },
                new_blocks: 2,
            }),
            Message::MetaRequest(MetaRequest {
                session: 2,
                request_id: 8,
                op: MetaOp::Expand { path: MeshPath::parse("/f").unwrap(), size: 1 << 40 },
            }),
            Message::Error { code: ErrorCode::Unsupported, message: "no such request".into() },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for message in samples() {
            let frame = message.to_frame(7);
            assert_eq!(frame.request_id, 7);
            assert_eq!(Message::decode(&frame), Ok(message));
        }
    }

    /// Every sample's kind and body bytes, frozen: a layout change shows here first.
    #[test]
    fn golden_bytes_of_every_message() {
        let text: String = samples()
            .iter()
            .map(|m| format!("{} {}\n", m.kind(), meshfs_test_kit::golden::hex(&m.encode())))
            .collect();
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/wire.txt");
        meshfs_test_kit::golden::check_text(path, &text);
    }

    #[test]
    fn golden_error_and_request() {
        let error = Message::Error { code: ErrorCode::BadRequest, message: "no".into() };
        assert_eq!(error.encode(), [2, 0, 2, b'n', b'o']);
        assert!(Message::StatusRequest.encode().is_empty());
    }

    #[test]
    fn cuts_extra_bytes_and_unknown_kinds_are_errors() {
        for message in samples() {
            if matches!(message, Message::Raft(_)) {
                continue; // opaque bytes: any length is a body; raft-rs checks them
            }
            let frame = message.to_frame(1);
            for cut in 0..frame.body.len() {
                let cut_frame = Frame::new(frame.kind, 1, frame.body[..cut].to_vec());
                assert!(Message::decode(&cut_frame).is_err());
            }
            let mut long = frame.clone();
            long.body.push(0);
            assert!(Message::decode(&long).is_err());
        }
        assert_eq!(Message::decode(&Frame::new(999, 0, vec![])), Err(WireError::UnknownKind(999)));
    }

    #[test]
    fn a_lying_peer_count_is_refused_before_allocating() {
        let mut frame = samples()[1].to_frame(0);
        // The peer count sits after the fixed fields and three strings; find it by re-encoding
        // with zero peers and patching the count.
        let Message::StatusReply(mut s) = samples()[1].clone() else { unreachable!() };
        s.peers.clear();
        s.raft = None;
        s.data_servers.clear();
        s.health = None;
        let short = Message::StatusReply(s).encode();
        // The count, the has_raft byte, the data-server count, the has_health byte.
        let count_at = short.len() - 10;
        frame.body = short;
        frame.body[count_at..count_at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            Message::decode(&frame),
            Err(WireError::Body { source: BodyError::Invalid { field: "peer count", .. }, .. })
        ));
    }

    /// The range `offset..offset + len` of `block` as a data-server cuts it from whole
    /// segments with their stored checksums.
    fn range_of(block: &[u8], offset: u64, len: u64) -> RangeRead {
        let seg = SEGMENT_BYTES as usize;
        let crcs: Vec<u32> = block.chunks(seg).map(crc32fast::hash).collect();
        let first = offset as usize / seg;
        let end = (offset + len).min(block.len() as u64) as usize;
        let last = if end <= offset as usize { first } else { (end - 1) / seg };
        let bytes = block[first * seg..((last + 1) * seg).min(block.len())].to_vec();
        RangeRead::from_segments(
            first as u32,
            block.len() as u64,
            crcs[first..=last].to_vec(),
            bytes,
            offset,
            len,
        )
    }

    #[test]
    fn a_range_checks_its_segments_without_carrying_them() {
        let block: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 253) as u8).collect();
        let read = range_of(&block, 70_000, 4096);
        assert_eq!(read.data, &block[70_000..74_096]);
        assert_eq!(read.verify(), Ok(()));
        let mut bad = read.clone();
        bad.data[100] ^= 1;
        assert_eq!(bad.verify(), Err(RangeError::Damaged(1)));
        let mut bad = read.clone();
        bad.head_crc ^= 1;
        assert_eq!(bad.verify(), Err(RangeError::Damaged(1)), "a damaged head");
        let mut bad = read.clone();
        bad.tail_crc ^= 1;
        assert_eq!(bad.verify(), Err(RangeError::Damaged(1)), "a damaged tail");
        let mut bad = read.clone();
        bad.offset += 1;
        assert_eq!(bad.verify(), Err(RangeError::Damaged(1)), "bytes claimed at the wrong place");
        let mut bad = read;
        bad.offset = 0;
        assert!(matches!(bad.verify(), Err(RangeError::Malformed(_))));
        // Across three segments to the block's end (the last segment is short).
        let read = range_of(&block, 100_000, 200_000);
        assert_eq!(read.data, &block[100_000..]);
        assert_eq!(read.crcs.len(), 3);
        assert_eq!(read.verify(), Ok(()));
        let mut bad = read;
        bad.data[200_000 - 100_000 - 1] ^= 0x80;
        assert_eq!(bad.verify(), Err(RangeError::Damaged(3)));
    }

    proptest! {
        #[test]
        fn any_range_of_any_block_verifies_and_any_flipped_bit_is_caught(
            len in 1usize..300_000,
            at in any::<prop::sample::Index>(),
            want in 0u64..200_000,
            flip in any::<prop::sample::Index>(),
        ) {
            let block: Vec<u8> = (0..len).map(|i| (i * 131 % 251) as u8).collect();
            let offset = at.index(len) as u64;
            let read = range_of(&block, offset, want);
            let end = (offset + want).min(len as u64) as usize;
            prop_assert_eq!(&read.data[..], &block[offset as usize..end]);
            prop_assert_eq!(read.verify(), Ok(()));
            if !read.data.is_empty() {
                let mut bad = read.clone();
                let bit = flip.index(bad.data.len() * 8);
                bad.data[bit / 8] ^= 1 << (bit % 8);
                let segment = (offset as usize + bit / 8) / SEGMENT_BYTES as usize;
                prop_assert_eq!(bad.verify(), Err(RangeError::Damaged(segment as u32)));
            }
        }

        #[test]
        fn arbitrary_bodies_never_panic(kind in 32u16..40, body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Message::decode(&Frame::new(kind, 0, body));
        }
    }
}
