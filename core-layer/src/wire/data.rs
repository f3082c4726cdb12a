//! The data protocol: block writes down the chain ([`WriteChunk`] down, [`WriteAck`] up),
//! block reads ([`ReadBlock`], answered by [`BlockData`] with a [`RangeRead`] that the reader
//! verifies end to end), data-server reports to the meta-servers ([`DataReport`]) and the
//! leader's commit notices.
//!
//! | message | layout |
//! |---|---|
//! | [`WriteChunk`] | a [`Token`], `u32 block size, bool keep existing, u64 offset, bool last, bytes data` |
//! | [`WriteAck`] | `u8 1, u64 through, bool committed`; `u8 2, u32 at, str message`; or `u8 3, u64 through`, the proofs (`u8 n`, `n` x `u32 replica, [32] digest, [32] mac`) |
//! | [`ReadBlock`] | block descriptor, `u64 offset, u32 len` |
//! | [`BlockData`] | `u8 3, u32 first segment, u64 block len, u64 offset, u32 head crc, u32 tail crc, list<u32> crcs, bytes data` or `u8 2, str message` |
//! | [`DataReport`] | `u64 capacity, u64 used, bool full, bool last, list<(block descriptor, u64 len)>, list<(u32 file, u16 index)>` |
//! | block committed | block descriptor |

use meshfs_group::NodeId;
use meshfs_net::body::{BodyError, BodyReader, BodyWriter};

use crate::descriptor::BlockDescriptor;
use crate::token::{ReplicaProof, Token, read_proofs, write_proofs};

/// Most blocks listed in one report message.
pub const MAX_REPORT_BLOCKS: usize = 16_384;
/// Most data bytes in one write chunk or read reply.
pub const MAX_CHUNK_BYTES: u32 = 1024 * 1024;
/// Bytes per checksummed segment of a stored block.
pub const SEGMENT_BYTES: u64 = 64 * 1024;
const _: () =
    assert!(MAX_CHUNK_BYTES as usize + 4096 < meshfs_net::frame::DEFAULT_MAX_BODY_LEN as usize);

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
    /// The whole write is durable on this replica and every one after it, each of which
    /// proves the digest of what it wrote (this one's proof first).
    Committed {
        /// Bytes of the block acknowledged, from the write's first offset.
        through: u64,
        /// The replicas' signed digests, in chain order from here.
        proofs: Vec<ReplicaProof>,
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
        let end = (offset.saturating_add(len).min(block_len).saturating_sub(start) as usize)
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
        let end = self.offset.saturating_add(self.data.len() as u64);
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

impl WriteChunk {
    pub(super) fn write(&self, w: &mut BodyWriter) {
        self.token.write(w);
        w.u32(self.block_size)
            .bool(self.keep_existing)
            .u64(self.offset)
            .bool(self.last)
            .bytes(&self.data);
    }

    pub(super) fn read(r: &mut BodyReader<'_>) -> Result<WriteChunk, BodyError> {
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
}

impl WriteAck {
    pub(super) fn write(&self, w: &mut BodyWriter) {
        match self {
            WriteAck::Written { through, committed } => {
                w.u8(1).u64(*through).bool(*committed);
            }
            WriteAck::Failed { at, message } => {
                w.u8(2).u32(at.0).str(message);
            }
            WriteAck::Committed { through, proofs } => {
                w.u8(3).u64(*through);
                write_proofs(w, proofs);
            }
        }
    }

    pub(super) fn read(r: &mut BodyReader<'_>) -> Result<WriteAck, BodyError> {
        match r.u8("ack")? {
            1 => Ok(WriteAck::Written {
                through: r.u64("through")?,
                committed: r.bool("committed")?,
            }),
            2 => Ok(WriteAck::Failed {
                at: NodeId(r.u32("at")?),
                message: r.str("message")?.to_string(),
            }),
            3 => Ok(WriteAck::Committed { through: r.u64("through")?, proofs: read_proofs(r)? }),
            other => Err(BodyError::Invalid { field: "ack", value: u64::from(other) }),
        }
    }
}

impl DataReport {
    pub(super) fn write(&self, w: &mut BodyWriter) {
        w.u64(self.capacity).u64(self.used).bool(self.full).bool(self.last);
        w.u32(self.blocks.len() as u32);
        for (block, len) in &self.blocks {
            block.write(w);
            w.u64(*len);
        }
        w.u32(self.removed.len() as u32);
        for (file, index) in &self.removed {
            w.u32(*file).u16(*index);
        }
    }

    pub(super) fn read(r: &mut BodyReader<'_>) -> Result<DataReport, BodyError> {
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
}

impl ReadBlock {
    pub(super) fn write(&self, w: &mut BodyWriter) {
        self.block.write(w);
        w.u64(self.offset).u32(self.len);
    }

    pub(super) fn read(r: &mut BodyReader<'_>) -> Result<ReadBlock, BodyError> {
        Ok(ReadBlock {
            block: BlockDescriptor::read(r)?,
            offset: r.u64("offset")?,
            len: r.u32("len")?,
        })
    }
}

impl BlockData {
    pub(super) fn write(&self, w: &mut BodyWriter) {
        match self {
            BlockData::Range(r) => {
                w.u8(3).u32(r.first_segment).u64(r.block_len).u64(r.offset);
                w.u32(r.head_crc).u32(r.tail_crc).u32(r.crcs.len() as u32);
                for crc in &r.crcs {
                    w.u32(*crc);
                }
                w.bytes(&r.data);
            }
            BlockData::Failed { message } => {
                w.u8(2).str(message);
            }
        }
    }

    pub(super) fn read(r: &mut BodyReader<'_>) -> Result<BlockData, BodyError> {
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
}
