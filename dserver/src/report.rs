//! Reports to the meta-servers: everything held, in pieces, when a link to a meta-server
//! comes up; one line per changed replica after that.
//!
//! It must not know what the meta-servers do with the reports.

use log::info;
use meshfs_core::descriptor::BlockDescriptor;
use meshfs_core::wire::{DataReport, MAX_REPORT_BLOCKS, Message};
use meshfs_group::driver::Node;
use meshfs_group::{NodeId, Role};
use meshfs_net::Priority;

use crate::DataServer;

impl DataServer {
    /// Tells meta-server `peer` everything this data-server holds, in pieces.
    pub(crate) fn report_all(&self, node: &mut Node, peer: NodeId) {
        let blocks: Vec<(BlockDescriptor, u64)> =
            self.store.list().into_iter().map(|b| (b.descriptor, b.len)).collect();
        let pieces: Vec<&[(BlockDescriptor, u64)]> =
            if blocks.is_empty() { vec![&[]] } else { blocks.chunks(MAX_REPORT_BLOCKS).collect() };
        let count = pieces.len();
        for (i, piece) in pieces.into_iter().enumerate() {
            let report = DataReport {
                capacity: self.store.capacity(),
                used: self.store.used(),
                full: i == 0,
                last: i + 1 == count,
                blocks: piece.to_vec(),
                removed: Vec::new(),
            };
            if node.send(peer, Priority::Control, Message::DataReport(report).to_frame(0)).is_err()
            {
                return; // the link fell again; it reports when it comes back
            }
        }
        info!("reported {} replicas to meta-server {peer}", blocks.len());
    }

    /// Tells every meta-server about one changed replica.
    pub(crate) fn report_change(
        &self,
        node: &mut Node,
        block: Option<(BlockDescriptor, u64)>,
        removed: Option<(u32, u16)>,
    ) {
        let report = DataReport {
            capacity: self.store.capacity(),
            used: self.store.used(),
            full: false,
            last: true,
            blocks: block.into_iter().collect(),
            removed: removed.into_iter().collect(),
        };
        let mservers: Vec<NodeId> = node.config().servers_of(Role::MServer).map(|s| s.id).collect();
        for m in mservers {
            let _ =
                node.send(m, Priority::Control, Message::DataReport(report.clone()).to_frame(0));
        }
    }
}
