//! The MeshFS data-server: keeps blocks (the block store arrives with the data-path work).
//!
//! [`run`] starts the server from a config file and an id and serves until SIGTERM or
//! SIGINT. Today a server joins the group (full mesh, authentication, ping/pong, RTT) and
//! answers status requests.

#![deny(missing_docs, missing_debug_implementations)]

use std::path::Path;
use std::time::Instant;

use log::{info, warn};
use meshfs_core::status::status_reply;
use meshfs_core::wire::{ErrorCode, Message};
use meshfs_group::driver::{Node, Service, StartError, start_server};
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
                let reply = match Message::decode(&frame) {
                    Ok(Message::StatusRequest) => {
                        let addr = node.local_addr().to_string();
                        let cluster = node.config().cluster_name.clone();
                        let status = status_reply(
                            node.group(),
                            &cluster,
                            &addr,
                            node.uptime(),
                            Instant::now(),
                        );
                        Message::StatusReply(status)
                    }
                    Ok(other) => Message::Error {
                        code: ErrorCode::Unsupported,
                        message: format!(
                            "a {} does not serve message kind {}",
                            node.role(),
                            other.kind()
                        ),
                    },
                    Err(err) => {
                        warn!("bad request from client {client}: {err}");
                        Message::Error { code: ErrorCode::BadRequest, message: err.to_string() }
                    }
                };
                node.reply(conn, reply.to_frame(frame.request_id));
            }
        }
    }
}

/// Runs server `id` of the config at `config_path` until SIGTERM or SIGINT.
pub fn run(config_path: &Path, id: NodeId) -> Result<(), StartError> {
    let (_config, data_dir, mut node) = start_server(Role::DServer, config_path, id)?;
    info!("data directory {}", data_dir.path().display());
    let mut server = DataServer::default();
    node.run(&mut server)
        .map_err(|e| StartError::Node(meshfs_group::driver::NodeError::Loop(e)))?;
    info!("stopped");
    Ok(())
}
