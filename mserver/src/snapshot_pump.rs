//! Streaming a snapshot to a follower that fell behind the log: its data in pieces on the
//! bulk queue as the link drains, then the (data-less) snapshot message on the same queue, so
//! that it arrives after its data and heartbeats never wait behind it.
//!
//! It must not know what the snapshot holds.

use log::{info, warn};
use meshfs_core::wire::{Message, SnapshotChunk};
use meshfs_group::NodeId;
use meshfs_group::driver::Node;
use meshfs_net::Priority;

use crate::MetaServer;

/// Snapshot data travels in pieces of this size, on the bulk queue.
const SNAPSHOT_CHUNK_BYTES: usize = 256 * 1024;
/// The snapshot pump sends only while less than this is queued to the peer (counting what
/// it sent in this call): the peer's bulk queue (8 MiB) never fills, heartbeats never wait.
const SNAPSHOT_PUMP_BYTES: usize = 2 * 1024 * 1024;

impl MetaServer {
    /// Streams snapshot pieces to followers as their links drain; then the snapshot message
    /// itself on the same (bulk) queue, so that it arrives after its data.
    pub(crate) fn pump_snapshots(&mut self, node: &mut Node) {
        let peers: Vec<u64> = self.sending.keys().copied().collect();
        for peer in peers {
            let Ok(id) = u32::try_from(peer).map(NodeId) else { continue };
            let finished = loop {
                let Some(queued) = node.queued_bytes(id) else { break Some(false) };
                if queued >= SNAPSHOT_PUMP_BYTES {
                    break None;
                }
                let (snapshot, offset) = self.sending.get_mut(&peer).expect("listed above");
                let total = snapshot.data.len();
                if *offset < total {
                    let end = (*offset + SNAPSHOT_CHUNK_BYTES).min(total);
                    let chunk = SnapshotChunk {
                        index: snapshot.index,
                        term: snapshot.term,
                        total: total as u64,
                        offset: *offset as u64,
                        data: snapshot.data[*offset..end].to_vec(),
                    };
                    if node
                        .send(id, Priority::Bulk, Message::SnapshotChunk(chunk).to_frame(0))
                        .is_err()
                    {
                        break Some(false);
                    }
                    *offset = end;
                } else {
                    let message = Message::Raft(snapshot.message.clone()).to_frame(0);
                    break Some(node.send(id, Priority::Bulk, message).is_ok());
                }
            };
            if let Some(delivered) = finished {
                self.sending.remove(&peer);
                if delivered {
                    info!("snapshot streamed to {peer}");
                } else {
                    warn!("snapshot to {peer} failed: the link went down; Raft will retry");
                }
                self.replica.report_snapshot(peer, delivered);
            }
        }
    }
}
