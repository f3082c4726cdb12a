//! The status protocol: any server's report of itself, its links, its Raft state (meta-
//! servers) and the data-servers it knows ([`StatusReply`]), asked for by
//! [`Message::StatusRequest`](super::Message::StatusRequest).
//!
//! A status reply ends with `bool has_raft` and, for meta-servers, [`RaftInfo`]:
//! `u8 role (1 follower, 2 candidate, 3 leader, 4 pre-candidate), u64 term, u64 commit,
//! u64 applied, u32 leader (0: unknown), u64 inodes`; then the reported data-servers and
//! `bool has_health` with the leader's [`HealthCounts`].

use meshfs_group::{NodeId, Role};
use meshfs_net::body::{BodyError, BodyReader, BodyWriter};

/// Most peers a status reply may list (the config allows at most this many servers).
pub const MAX_STATUS_PEERS: u32 = meshfs_group::config::MAX_SERVERS as u32;

/// Blocks by health (the cluster's in a status reply, a subtree's in an fsck report).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HealthCounts {
    /// Blocks with as many good replicas as wanted.
    pub healthy: u64,
    /// Blocks with fewer good replicas than wanted, at least one.
    pub under_replicated: u64,
    /// Blocks with no good replica.
    pub missing: u64,
    /// Blocks with a repair copy under way.
    pub repairing: u64,
}

/// One peer link in a status report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerLink {
    /// The peer.
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// Whether the reporting server's link to it is up.
    pub up: bool,
    /// Milliseconds in the current state.
    pub since_ms: u64,
    /// Pongs received on the current link.
    pub rtt_samples: u64,
    /// Last RTT, microseconds.
    pub rtt_last_us: u64,
    /// Smoothed RTT, microseconds.
    pub rtt_smoothed_us: u64,
    /// Largest RTT on the current link, microseconds.
    pub rtt_max_us: u64,
}

/// A meta-server's Raft state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftInfo {
    /// 1 follower, 2 candidate, 3 leader, 4 pre-candidate.
    pub role: u8,
    /// Current term.
    pub term: u64,
    /// Highest index known committed.
    pub commit_index: u64,
    /// Highest index applied to the namespace.
    pub applied_index: u64,
    /// The leader's id, 0 if unknown.
    pub leader: u32,
    /// Files and directories in its namespace as applied.
    pub inodes: u64,
}

impl RaftInfo {
    /// The role's name: "follower", "candidate", "leader" or "pre-candidate".
    pub fn role_name(&self) -> &'static str {
        match self.role {
            1 => "follower",
            2 => "candidate",
            3 => "leader",
            4 => "pre-candidate",
            _ => "unknown",
        }
    }
}

/// A server's report of itself and its links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReply {
    /// The reporting server.
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// Its cluster name.
    pub cluster: String,
    /// Its listening address, as text.
    pub addr: String,
    /// Its incarnation (random per start).
    pub incarnation: u64,
    /// Milliseconds since it started.
    pub uptime_ms: u64,
    /// Its build's version.
    pub version: String,
    /// Its links to every other server of the config.
    pub peers: Vec<PeerLink>,
    /// Its Raft state (meta-servers only).
    pub raft: Option<RaftInfo>,
    /// Meta-servers: the data-servers as their reports describe them.
    pub data_servers: Vec<ReportedDataServer>,
    /// The leader: the cluster's blocks by health, as of its last repair scan.
    pub health: Option<HealthCounts>,
}

/// A data-server as a meta-server knows it from its reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportedDataServer {
    /// The data-server.
    pub id: NodeId,
    /// Bytes it may store.
    pub capacity: u64,
    /// Bytes its replicas take.
    pub used: u64,
    /// Replicas it holds.
    pub blocks: u64,
    /// Its last full report is complete.
    pub complete: bool,
    /// Its link to this meta-server is up.
    pub up: bool,
    /// Marked draining.
    pub draining: bool,
}

pub(super) fn role_code(role: Role) -> u8 {
    match role {
        Role::MServer => 1,
        Role::DServer => 2,
    }
}

pub(super) fn role_from(code: u8) -> Result<Role, BodyError> {
    match code {
        1 => Ok(Role::MServer),
        2 => Ok(Role::DServer),
        other => Err(BodyError::Invalid { field: "role", value: u64::from(other) }),
    }
}

/// Writes a status reply's body.
pub(super) fn write_status(w: &mut BodyWriter, s: &StatusReply) {
    w.u32(s.id.0).u8(role_code(s.role)).str(&s.cluster).str(&s.addr);
    w.u64(s.incarnation).u64(s.uptime_ms).str(&s.version);
    w.u32(u32::try_from(s.peers.len()).expect("peer count fits u32"));
    for p in &s.peers {
        w.u32(p.id.0).u8(role_code(p.role)).bool(p.up).u64(p.since_ms);
        w.u64(p.rtt_samples).u64(p.rtt_last_us).u64(p.rtt_smoothed_us).u64(p.rtt_max_us);
    }
    w.bool(s.raft.is_some());
    if let Some(r) = &s.raft {
        w.u8(r.role)
            .u64(r.term)
            .u64(r.commit_index)
            .u64(r.applied_index)
            .u32(r.leader)
            .u64(r.inodes);
    }
    w.u32(s.data_servers.len() as u32);
    for d in &s.data_servers {
        w.u32(d.id.0).u64(d.capacity).u64(d.used).u64(d.blocks).bool(d.complete);
        w.bool(d.up).bool(d.draining);
    }
    w.bool(s.health.is_some());
    if let Some(h) = &s.health {
        write_health(w, h);
    }
}

pub(super) fn read_status(r: &mut BodyReader<'_>) -> Result<StatusReply, BodyError> {
    let id = NodeId(r.u32("id")?);
    let role = role_from(r.u8("role")?)?;
    let cluster = r.str("cluster")?.to_string();
    let addr = r.str("addr")?.to_string();
    let incarnation = r.u64("incarnation")?;
    let uptime_ms = r.u64("uptime_ms")?;
    let version = r.str("version")?.to_string();
    let count = r.u32("peer count")?;
    if count > MAX_STATUS_PEERS {
        return Err(BodyError::Invalid { field: "peer count", value: u64::from(count) });
    }
    let mut peers = Vec::with_capacity(count as usize);
    for _ in 0..count {
        peers.push(PeerLink {
            id: NodeId(r.u32("peer id")?),
            role: role_from(r.u8("peer role")?)?,
            up: r.bool("peer up")?,
            since_ms: r.u64("since_ms")?,
            rtt_samples: r.u64("rtt_samples")?,
            rtt_last_us: r.u64("rtt_last_us")?,
            rtt_smoothed_us: r.u64("rtt_smoothed_us")?,
            rtt_max_us: r.u64("rtt_max_us")?,
        });
    }
    let raft = if r.bool("has raft")? {
        Some(RaftInfo {
            role: r.u8("raft role")?,
            term: r.u64("term")?,
            commit_index: r.u64("commit index")?,
            applied_index: r.u64("applied index")?,
            leader: r.u32("leader")?,
            inodes: r.u64("inodes")?,
        })
    } else {
        None
    };
    let count = r.u32("data-server count")?;
    if count > MAX_STATUS_PEERS {
        return Err(BodyError::Invalid { field: "data-server count", value: u64::from(count) });
    }
    let mut data_servers = Vec::with_capacity(count as usize);
    for _ in 0..count {
        data_servers.push(ReportedDataServer {
            id: NodeId(r.u32("data-server")?),
            capacity: r.u64("capacity")?,
            used: r.u64("used")?,
            blocks: r.u64("blocks")?,
            complete: r.bool("complete")?,
            up: r.bool("up")?,
            draining: r.bool("draining")?,
        });
    }
    let health = if r.bool("has health")? { Some(read_health(r)?) } else { None };
    Ok(StatusReply {
        id,
        role,
        cluster,
        addr,
        incarnation,
        uptime_ms,
        version,
        peers,
        raft,
        data_servers,
        health,
    })
}

pub(super) fn write_health(w: &mut BodyWriter, h: &HealthCounts) {
    w.u64(h.healthy).u64(h.under_replicated).u64(h.missing).u64(h.repairing);
}

pub(super) fn read_health(r: &mut BodyReader<'_>) -> Result<HealthCounts, BodyError> {
    Ok(HealthCounts {
        healthy: r.u64("healthy")?,
        under_replicated: r.u64("under-replicated")?,
        missing: r.u64("missing")?,
        repairing: r.u64("repairing")?,
    })
}
