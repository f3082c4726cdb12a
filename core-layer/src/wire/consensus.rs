//! The consensus protocol, between meta-servers: Raft messages (opaque protobuf bytes that
//! raft-rs decodes and checks) and the pieces of a snapshot's data, streamed ahead of the
//! data-less snapshot message.
//!
//! | message | layout |
//! |---|---|
//! | Raft | an `eraftpb::Message` (protobuf), the whole body |
//! | [`SnapshotChunk`] | `u64 index, u64 term, u64 total, u64 offset, bytes data` |

use meshfs_net::body::{BodyError, BodyReader, BodyWriter};

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

impl SnapshotChunk {
    pub(super) fn write(&self, w: &mut BodyWriter) {
        w.u64(self.index).u64(self.term).u64(self.total).u64(self.offset).bytes(&self.data);
    }

    pub(super) fn read(r: &mut BodyReader<'_>) -> Result<SnapshotChunk, BodyError> {
        Ok(SnapshotChunk {
            index: r.u64("index")?,
            term: r.u64("term")?,
            total: r.u64("total")?,
            offset: r.u64("offset")?,
            data: r.bytes("data")?.to_vec(),
        })
    }
}
