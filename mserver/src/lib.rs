//! The MeshFS meta-server: keeps the namespace, agreed on by Raft among all meta-servers.
//!
//! - [`consensus`]: the Raft replica (raft-rs over the durable log) and the namespace.
//! - [`log_store`]: the durable Raft log: segments, hard state, snapshots.
//!
//! [`run`] starts the server from a config file and an id and serves until SIGTERM or
//! SIGINT: it joins the group, runs Raft with the other meta-servers over it, and answers
//! status requests (with its Raft role, term, commit and applied index).

#![deny(missing_docs, missing_debug_implementations)]

pub mod consensus;
pub mod log_store;

use std::path::Path;
use std::time::{Duration, Instant};

use log::{info, warn};
use meshfs_core::request::{Handled, common_reply, unsupported};
use meshfs_core::status::node_status;
use meshfs_core::wire::{KIND_RAFT, Message, RaftInfo, StatusReply};
use meshfs_group::driver::{Node, NodeError, Service, StartError, start_server};
use meshfs_group::{GroupEvent, NodeId, Role};
use meshfs_net::Priority;
use raft::StateRole;

use crate::consensus::{RaftStatus, Replica, ReplicaError};

/// Time between Raft ticks: with [`consensus::ELECTION_TICKS`] an election starts after 1 to
/// 2 seconds without a leader; heartbeats go every [`consensus::HEARTBEAT_TICKS`] ticks.
pub const TICK_INTERVAL: Duration = Duration::from_millis(100);
const TICK_TIMER: u64 = 1;

/// Why a meta-server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// It could not start as a server.
    #[error(transparent)]
    Start(#[from] StartError),
    /// Its Raft replica could not start.
    #[error(transparent)]
    Replica(#[from] ReplicaError),
}

/// The meta-server above the group: its Raft replica.
#[derive(Debug)]
pub struct MetaServer {
    replica: Replica,
}

fn raft_info(status: RaftStatus) -> RaftInfo {
    let role = match status.role {
        StateRole::Follower => 1,
        StateRole::Candidate => 2,
        StateRole::Leader => 3,
        StateRole::PreCandidate => 4,
    };
    RaftInfo {
        role,
        term: status.term,
        commit_index: status.commit,
        applied_index: status.applied,
        leader: status.leader.and_then(|l| u32::try_from(l).ok()).unwrap_or(0),
    }
}

impl MetaServer {
    /// A meta-server around its replica.
    pub fn new(replica: Replica) -> MetaServer {
        MetaServer { replica }
    }

    /// Sends what the replica produced.
    fn flush(&mut self, node: &mut Node) {
        let output = self.replica.take_output();
        for (to, bytes) in output.messages {
            let Ok(peer) = u32::try_from(to) else { continue };
            if node.send(NodeId(peer), Priority::Control, Message::Raft(bytes).to_frame(0)).is_err()
            {
                // Down or unknown: Raft resends when it hears from the peer again.
                self.replica.report_unreachable(to);
            }
        }
    }

    fn status(&self, node: &Node) -> StatusReply {
        let mut status = node_status(node);
        status.raft = Some(raft_info(self.replica.status()));
        status
    }
}

impl Service for MetaServer {
    fn start(&mut self, node: &mut Node) {
        node.set_timer(Instant::now() + TICK_INTERVAL, TICK_TIMER);
    }

    fn handle_timer(&mut self, node: &mut Node, token: u64) {
        if token == TICK_TIMER {
            self.replica.tick();
            node.set_timer(Instant::now() + TICK_INTERVAL, TICK_TIMER);
            self.flush(node);
        }
    }

    fn handle_wake(&mut self, node: &mut Node) {
        self.replica.poll_synced();
        self.flush(node);
    }

    fn handle_event(&mut self, node: &mut Node, event: GroupEvent) {
        match event {
            GroupEvent::PeerDown { peer, role: Role::MServer, .. } => {
                self.replica.report_unreachable(u64::from(peer.0));
            }
            GroupEvent::PeerUp { .. }
            | GroupEvent::PeerDown { .. }
            | GroupEvent::ClientGone { .. } => {}
            GroupEvent::Message { from, frame } if frame.kind == KIND_RAFT => {
                let from_mserver =
                    node.config().server(from).is_some_and(|s| s.role == Role::MServer);
                if !from_mserver {
                    warn!("ignoring a raft message from {from}, which is not a meta-server");
                    return;
                }
                self.replica.step(u64::from(from.0), &frame.body);
                self.flush(node);
            }
            GroupEvent::Message { from, frame } => {
                warn!("ignoring message kind {} from peer {from}: not served", frame.kind);
            }
            GroupEvent::ClientMessage { conn, client, frame } => {
                let reply = match common_reply(&frame, || self.status(node)) {
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

/// Runs meta-server `id` of the config at `config_path` until SIGTERM or SIGINT.
pub fn run(config_path: &Path, id: NodeId) -> Result<(), MetaError> {
    let (config, data_dir, mut node) = start_server(Role::MServer, config_path, id)?;
    info!("data directory {}", data_dir.path().display());
    let voters: Vec<u64> = config.servers_of(Role::MServer).map(|s| u64::from(s.id.0)).collect();
    let replica =
        Replica::open(&data_dir.path().join("raft"), u64::from(id.0), &voters, node.notifier())?;
    let mut server = MetaServer::new(replica);
    node.run(&mut server).map_err(|e| StartError::Node(NodeError::Loop(e)))?;
    info!("stopped");
    Ok(())
}
