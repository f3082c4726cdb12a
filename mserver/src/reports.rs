//! What the meta-server knows of the data-servers and tells operators: the data-servers'
//! reports of what they hold, and this server's status (links, Raft, data-servers, health).
//!
//! It must not decide repairs: [`crate::heal`] does, from what is kept here.

use std::collections::BTreeMap;

use log::info;
use meshfs_core::status::status_reply;
use meshfs_core::wire::{DataReport, RaftInfo, ReportedDataServer, StatusReply};
use meshfs_group::driver::Node;
use meshfs_group::{NodeId, Now, Role};
use raft::StateRole;

use crate::MetaServer;
use crate::consensus::RaftStatus;

impl MetaServer {
    pub(crate) fn handle_report(&mut self, from: NodeId, report: &DataReport) {
        let entry = self.reports.entry(from).or_default();
        if entry.apply(report) {
            info!(
                "data-server {from} reports {} replicas, {} of {} bytes used",
                entry.blocks.len(),
                entry.used,
                entry.capacity
            );
        }
    }

    pub(crate) fn status(&self, node: &Node, now: Now) -> StatusReply {
        let mut status = status_reply(
            node.group(),
            &node.config().cluster_name,
            &node.local_addr().to_string(),
            node.uptime(now),
            now.mono,
        );
        let links: BTreeMap<NodeId, bool> =
            node.group().status().into_iter().map(|p| (p.id, p.up)).collect();
        let draining = self.replica.namespace().draining();
        status.data_servers = node
            .config()
            .servers_of(Role::DServer)
            .map(|s| {
                let r = self.reports.get(&s.id);
                ReportedDataServer {
                    id: s.id,
                    capacity: r.map_or(s.capacity.unwrap_or(0), |r| r.capacity),
                    used: r.map_or(0, |r| r.used),
                    blocks: r.map_or(0, |r| r.blocks.len() as u64),
                    complete: r.is_some_and(|r| r.complete),
                    up: links.get(&s.id).copied().unwrap_or(false),
                    draining: draining.contains(&s.id),
                }
            })
            .collect();
        status.health = self.healer.health().filter(|_| self.replica.is_leader());
        let inodes = self.replica.namespace().inode_count() as u64;
        status.raft = Some(raft_info(self.replica.status(), inodes));
        status
    }
}

fn raft_info(status: RaftStatus, inodes: u64) -> RaftInfo {
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
        inodes,
    }
}
