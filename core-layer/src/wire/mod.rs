//! The application protocol: every message kind from 32 up, and its body layout, a file per
//! protocol.
//!
//! A frame's kind says which message its body holds; a response carries its request's id.
//! Integers are big-endian; `str` is a u16 length and UTF-8; `list<T>` is a u32 count then
//! the items. Bodies are read with [`BodyReader`], which checks every length before use, so a
//! hostile body gets a [`WireError`], never a panic or a large allocation.
//!
//! | kind | message | direction | body (file) |
//! |---|---|---|---|
//! | 32 | [`Message::StatusRequest`] | client -> server | empty |
//! | 33 | [`Message::StatusReply`] | server -> client | [`StatusReply`] (`status`) |
//! | 34 | [`Message::Error`] | server -> client | `u8 code, str message` (`errors`) |
//! | 40 | [`Message::Raft`] | mserver -> mserver | an `eraftpb::Message` (`consensus`) |
//! | 41 | [`Message::SnapshotChunk`] | mserver -> mserver | [`SnapshotChunk`] (`consensus`) |
//! | 48 | [`Message::MetaRequest`] | client -> mserver | [`MetaRequest`] (`meta`) |
//! | 49 | [`Message::MetaReply`] | mserver -> client | [`MetaReply`] (`meta`) |
//! | 56 | [`Message::WriteChunk`] | client or dserver -> dserver | [`WriteChunk`] (`data`) |
//! | 57 | [`Message::WriteAck`] | dserver -> its upstream | [`WriteAck`] (`data`) |
//! | 58 | [`Message::ReadBlock`] | dserver -> dserver (repair copies; clients use 66) | [`ReadBlock`] (`data`) |
//! | 59 | [`Message::BlockData`] | dserver -> reader | [`BlockData`] (`data`) |
//! | 60 | [`Message::DataReport`] | dserver -> mserver | [`DataReport`] (`data`) |
//! | 61 | [`Message::BlockCommitted`] | leader mserver -> dserver | block descriptor (`data`) |
//! | 62 | [`Message::Repair`] | leader mserver -> dserver | [`RepairTask`] (`repair`) |
//! | 63 | [`Message::RepairDone`] | dserver -> leader mserver | `u64 task`, block, `str error` (`repair`) |
//! | 64 | [`Message::DeleteReplica`] | leader mserver -> dserver | block descriptor (`repair`) |
//! | 65 | [`Message::ReplicaDamaged`] | dserver -> mservers | block, `str reason` (`repair`) |
//! | 66 | [`Message::TokenRead`] | client -> dserver | [`ReadBlock`], then a [`ReadToken`] (`data`) |
//!
//! A test reads this table and checks it against [`Kind`], so it cannot go out of date.
//! The meta protocol's op and reply tables are in [`meta`]'s doc, checked the same way.
//!
//! Adding a message: a [`Kind`], a variant, its layout in this table and in its protocol's
//! file, a round-trip sample in the tests, and its golden bytes (`testdata/wire.txt`).
//!
//! This module knows bytes and message types only: not who may send what (the servers
//! check roles), nor what a message makes happen.

mod consensus;
mod data;
mod errors;
pub mod meta;
mod repair;
mod status;

#[cfg(test)]
mod tests;

use meshfs_net::Frame;
use meshfs_net::body::{BodyError, BodyReader, BodyWriter};

pub use self::consensus::SnapshotChunk;
pub use self::data::{
    BlockData, DataReport, MAX_CHUNK_BYTES, MAX_REPORT_BLOCKS, RangeError, RangeRead, ReadBlock,
    SEGMENT_BYTES, WriteAck, WriteChunk,
};
pub use self::errors::ErrorCode;
pub use self::meta::{
    ClusterMap, FsckProblem, FsckReport, MAX_FSCK_PROBLEMS, MAX_LIST_PAGE, MAX_LOCK_PARTIES,
    MAX_LOCKS_LISTED, MAX_MAP_SERVERS, MAX_STAT_BLOCKS, MetaOp, MetaReply, MetaRequest, OpCode,
    REPLY_ITEMS_BUDGET, ReplyTag,
};
pub use self::repair::RepairTask;
pub use self::status::{
    HealthCounts, MAX_STATUS_PEERS, PeerLink, RaftInfo, ReportedDataServer, StatusReply,
};
use crate::descriptor::BlockDescriptor;
use crate::token::ReadToken;

/// Defines a stable code table: a `#[repr]` enum with explicit numbers, `ALL` (every code in
/// table order), `from_repr` and `name`. The numbers are the contract; tests compare each
/// table with its documentation.
macro_rules! wire_codes {
    (
        $(#[$meta:meta])*
        pub enum $name:ident: $repr:ty {
            $($(#[$vmeta:meta])* $variant:ident = $value:literal,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr($repr)]
        pub enum $name {
            $($(#[$vmeta])* $variant = $value,)*
        }

        impl $name {
            /// Every code, in table order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The code with this number, if there is one.
            pub fn from_repr(value: $repr) -> Option<$name> {
                match value {
                    $($value => Some($name::$variant),)*
                    _ => None,
                }
            }

            /// The variant's name, as the documentation's table writes it.
            pub fn name(self) -> &'static str {
                match self {
                    $($name::$variant => stringify!($variant),)*
                }
            }
        }
    };
}
pub(crate) use wire_codes;

wire_codes! {
    /// The kind of every application message: the frame header's kind field.
    pub enum Kind: u16 {
        /// [`Message::StatusRequest`].
        StatusRequest = 32,
        /// [`Message::StatusReply`].
        StatusReply = 33,
        /// [`Message::Error`].
        Error = 34,
        /// [`Message::Raft`].
        Raft = 40,
        /// [`Message::SnapshotChunk`].
        SnapshotChunk = 41,
        /// [`Message::MetaRequest`].
        MetaRequest = 48,
        /// [`Message::MetaReply`].
        MetaReply = 49,
        /// [`Message::WriteChunk`].
        WriteChunk = 56,
        /// [`Message::WriteAck`].
        WriteAck = 57,
        /// [`Message::ReadBlock`].
        ReadBlock = 58,
        /// [`Message::BlockData`].
        BlockData = 59,
        /// [`Message::DataReport`].
        DataReport = 60,
        /// [`Message::BlockCommitted`].
        BlockCommitted = 61,
        /// [`Message::Repair`]: leader to data-server, copy a block from another data-server.
        Repair = 62,
        /// [`Message::RepairDone`]: data-server to leader, a repair copy finished or failed.
        RepairDone = 63,
        /// [`Message::DeleteReplica`]: leader to data-server, delete a replica.
        DeleteReplica = 64,
        /// [`Message::ReplicaDamaged`]: data-server to meta-servers, the scrubber found a
        /// replica damaged and set it aside.
        ReplicaDamaged = 65,
        /// [`Message::TokenRead`]: a client's read of a block, with the leader's read token.
        TokenRead = 66,
    }
}

impl Kind {
    /// The number in the frame header.
    pub const fn code(self) -> u16 {
        self as u16
    }
}

/// The number, as log lines and error messages have always shown a kind.
impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.code())
    }
}

const _: () = assert!(Kind::StatusRequest.code() >= meshfs_group::FIRST_APP_KIND);

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
    /// A read of a block, between data-servers (a repair copy).
    ReadBlock(ReadBlock),
    /// A client's read of a block, with the read token the leader gave it for the block.
    TokenRead {
        /// The read.
        read: ReadBlock,
        /// The leader's permission.
        token: ReadToken,
    },
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

impl Message {
    /// The kind of this message.
    pub fn kind(&self) -> Kind {
        match self {
            Message::StatusRequest => Kind::StatusRequest,
            Message::StatusReply(_) => Kind::StatusReply,
            Message::Error { .. } => Kind::Error,
            Message::Raft(_) => Kind::Raft,
            Message::SnapshotChunk(_) => Kind::SnapshotChunk,
            Message::WriteChunk(_) => Kind::WriteChunk,
            Message::WriteAck(_) => Kind::WriteAck,
            Message::ReadBlock(_) => Kind::ReadBlock,
            Message::TokenRead { .. } => Kind::TokenRead,
            Message::DataReport(_) => Kind::DataReport,
            Message::BlockCommitted(_) => Kind::BlockCommitted,
            Message::BlockData(_) => Kind::BlockData,
            Message::Repair(_) => Kind::Repair,
            Message::RepairDone { .. } => Kind::RepairDone,
            Message::DeleteReplica(_) => Kind::DeleteReplica,
            Message::ReplicaDamaged { .. } => Kind::ReplicaDamaged,
            Message::MetaRequest(_) => Kind::MetaRequest,
            Message::MetaReply(_) => Kind::MetaReply,
        }
    }

    /// This message as a frame answering (or starting) `request_id`.
    pub fn to_frame(&self, request_id: u64) -> Frame {
        Frame::new(self.kind().code(), request_id, self.encode())
    }

    /// The body bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = BodyWriter::new();
        match self {
            Message::StatusRequest => {}
            Message::StatusReply(s) => status::write_status(&mut w, s),
            Message::Error { code, message } => errors::write_error(&mut w, *code, message),
            Message::Raft(bytes) => {
                w.fixed(bytes);
            }
            Message::SnapshotChunk(c) => c.write(&mut w),
            Message::WriteChunk(c) => c.write(&mut w),
            Message::WriteAck(a) => a.write(&mut w),
            Message::BlockCommitted(block) => block.write(&mut w),
            Message::DataReport(report) => report.write(&mut w),
            Message::ReadBlock(r) => r.write(&mut w),
            Message::TokenRead { read, token } => {
                read.write(&mut w);
                token.write(&mut w);
            }
            Message::BlockData(d) => d.write(&mut w),
            Message::MetaRequest(request) => meta::write_meta_request(&mut w, request),
            Message::MetaReply(reply) => meta::write_meta_reply(&mut w, reply),
            Message::Repair(t) => t.write(&mut w),
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

    /// Reads the message in `frame`, taking its body (a Raft message keeps it, uncopied).
    pub fn from_frame(frame: Frame) -> Result<Message, WireError> {
        if frame.kind == Kind::Raft.code() {
            return Ok(Message::Raft(frame.body));
        }
        Message::decode(&frame)
    }

    /// Reads the message in `frame`.
    pub fn decode(frame: &Frame) -> Result<Message, WireError> {
        let Some(kind) = Kind::from_repr(frame.kind) else {
            return Err(WireError::UnknownKind(frame.kind));
        };
        if kind == Kind::Raft {
            // Opaque here: raft-rs decodes (and checks) the protobuf.
            return Ok(Message::Raft(frame.body.clone()));
        }
        let mut r = BodyReader::new(&frame.body);
        let message = Message::read(kind, &mut r)
            .and_then(|message| r.finish().map(|()| message))
            .map_err(|source| WireError::Body { kind: frame.kind, source })?;
        Ok(message)
    }

    fn read(kind: Kind, r: &mut BodyReader<'_>) -> Result<Message, BodyError> {
        Ok(match kind {
            Kind::StatusRequest => Message::StatusRequest,
            Kind::StatusReply => Message::StatusReply(status::read_status(r)?),
            Kind::Error => {
                let (code, message) = errors::read_error(r)?;
                Message::Error { code, message }
            }
            Kind::Raft => unreachable!("decoded before reading"),
            Kind::SnapshotChunk => Message::SnapshotChunk(SnapshotChunk::read(r)?),
            Kind::WriteChunk => Message::WriteChunk(WriteChunk::read(r)?),
            Kind::WriteAck => Message::WriteAck(WriteAck::read(r)?),
            Kind::ReadBlock => Message::ReadBlock(ReadBlock::read(r)?),
            Kind::TokenRead => {
                Message::TokenRead { read: ReadBlock::read(r)?, token: ReadToken::read(r)? }
            }
            Kind::DataReport => Message::DataReport(DataReport::read(r)?),
            Kind::BlockCommitted => Message::BlockCommitted(BlockDescriptor::read(r)?),
            Kind::BlockData => Message::BlockData(BlockData::read(r)?),
            Kind::MetaRequest => Message::MetaRequest(meta::read_meta_request(r)?),
            Kind::MetaReply => Message::MetaReply(meta::read_meta_reply(r)?),
            Kind::Repair => Message::Repair(RepairTask::read(r)?),
            Kind::RepairDone => Message::RepairDone {
                task: r.u64("task")?,
                block: BlockDescriptor::read(r)?,
                error: r.str("error")?.to_string(),
            },
            Kind::DeleteReplica => Message::DeleteReplica(BlockDescriptor::read(r)?),
            Kind::ReplicaDamaged => Message::ReplicaDamaged {
                block: BlockDescriptor::read(r)?,
                reason: r.str("reason")?.to_string(),
            },
        })
    }
}
