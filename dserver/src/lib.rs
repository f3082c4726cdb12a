//! The MeshFS data-server: keeps blocks (the block store arrives with the data-path work).
//!
//! [`run`] starts the server from a config file and an id and serves until SIGTERM or
//! SIGINT. Today a server joins the group (full mesh, authentication, ping/pong, RTT) and
//! answers status requests.

#![deny(missing_docs, missing_debug_implementations)]

pub mod block_store;

use std::path::Path;

use log::warn;
use meshfs_core::request::{Handled, common_reply, unsupported};
use meshfs_core::status::node_status;
use meshfs_group::driver::{Node, Service, StartError, serve};
use meshfs_group::{GroupEvent, NodeId, Role};

/// The server's state above the group.
#[derive(Debug, Default)]
pub struct DataServer {}

impl Service for DataServer {
    fn handle_event(&mut self, node: &mut Node, event: GroupEvent) {
        match event {
            GroupEvent::PeerUp { .. }
            | GroupEvent::PeerDown { .. }
            | GroupEvent::ClientGone { .. } => {}
            GroupEvent::Message { from, frame } => {
                warn!("ignoring message kind {} from peer {from}: not served yet", frame.kind);
            }
            GroupEvent::ClientMessage { conn, client, frame } => {
                let reply = match common_reply(&frame, || node_status(node)) {
                    Handled::Answered(reply) => reply,
                    Handled::ForRole(request) => {
                        warn!(
                            "client {client} sent message kind {}, which this server does not serve",
                            request.kind()
                        );
                        unsupported(node.role(), &request)
                    }
                };
                node.reply(conn, reply.to_frame(frame.request_id));
            }
        }
    }
}

/// Runs server `id` of the config at `config_path` until SIGTERM or SIGINT.
pub fn run(config_path: &Path, id: NodeId) -> Result<(), StartError> {
    serve(Role::DServer, config_path, id, &mut DataServer::default())
}
