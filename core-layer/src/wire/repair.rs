//! The repair protocol, between the leader and data-servers: copy a block from another
//! data-server ([`RepairTask`], answered by `RepairDone`), delete a replica, and the
//! scrubber's report of a damaged one.
//!
//! | message | layout |
//! |---|---|
//! | [`RepairTask`] | `u64 task`, block descriptor, `u32 block size, u64 len, u32 source` |
//! | repair done | `u64 task`, block descriptor, `str error` (empty: done) |
//! | delete replica | block descriptor |
//! | replica damaged | block descriptor, `str reason` |

use meshfs_group::NodeId;
use meshfs_net::body::{BodyError, BodyReader, BodyWriter};

use crate::descriptor::BlockDescriptor;

/// A repair copy the leader asks of a data-server: read `block` from `source` over the
/// mesh, check every segment's checksum, and store it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepairTask {
    /// The leader's task number, echoed in [`Message::RepairDone`](super::Message::RepairDone).
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

impl RepairTask {
    pub(super) fn write(&self, w: &mut BodyWriter) {
        w.u64(self.task);
        self.block.write(w);
        w.u32(self.block_size).u64(self.len).u32(self.source.0);
    }

    pub(super) fn read(r: &mut BodyReader<'_>) -> Result<RepairTask, BodyError> {
        Ok(RepairTask {
            task: r.u64("task")?,
            block: BlockDescriptor::read(r)?,
            block_size: r.u32("block size")?,
            len: r.u64("len")?,
            source: NodeId(r.u32("source")?),
        })
    }
}
