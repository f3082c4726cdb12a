//! A server's status report, built from its group state at a time it is given.
//!
//! The servers call [`status_reply`] with their node's group and config; this module must
//! not know the node or its driver.
//!
//! It must not read a clock: the caller's `now` is the time of the report.

use std::time::{Duration, Instant};

use meshfs_group::{Group, PeerStatus};

use crate::wire::{PeerLink, StatusReply};

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The link to one peer as reported on the wire.
pub fn peer_link(peer: &PeerStatus, now: Instant) -> PeerLink {
    PeerLink {
        id: peer.id,
        role: peer.role,
        up: peer.up,
        since_ms: ms(now.saturating_duration_since(peer.since)),
        rtt_samples: peer.rtt.samples,
        rtt_last_us: us(peer.rtt.last),
        rtt_smoothed_us: us(peer.rtt.smoothed),
        rtt_max_us: us(peer.rtt.max),
    }
}

/// The status report of the server whose group is `group`.
pub fn status_reply(
    group: &Group,
    cluster: &str,
    addr: &str,
    uptime: Duration,
    now: Instant,
) -> StatusReply {
    StatusReply {
        id: group.me(),
        role: group.role(),
        cluster: cluster.to_string(),
        addr: addr.to_string(),
        incarnation: group.incarnation(),
        uptime_ms: ms(uptime),
        version: env!("CARGO_PKG_VERSION").to_string(),
        peers: group.status().iter().map(|p| peer_link(p, now)).collect(),
        raft: None,
        data_servers: Vec::new(),
        health: None,
    }
}

/// What a client that is not an operator may see of a server: who and what it is, whether
/// it is up and, for a meta-server, its Raft role, term and leader (to find the leader). Its
/// links, the data-servers' capacity and use, and the blocks' health are for operators.
pub fn for_plain_client(mut reply: StatusReply) -> StatusReply {
    reply.peers.clear();
    reply.data_servers.clear();
    reply.health = None;
    if let Some(raft) = &mut reply.raft {
        raft.inodes = 0;
    }
    reply
}
