//! `meshfs status`: ask every server of the config how it sees the group.
//!
//! Servers are asked in parallel, each with its own timeout; one that cannot be reached is
//! listed with `up: false` and the reason. The JSON shape (stable; fields may be added):
//!
//! ```json
//! {"cluster":"meshfs-local","servers":[{"id":1,"role":"mserver","addr":"127.0.0.1:7101",
//!   "up":true,"uptime_ms":5123,"peers":[{"id":2,"role":"mserver","up":true,"rtt_us":85,
//!   "rtt_last_us":80,"rtt_max_us":140,"since_ms":5000}]}]}
//! ```
//!
//! It must not change anything: it only asks.

use std::fmt::Write as _;
use std::thread;
use std::time::Duration;

use meshfs_core::wire::{Message, StatusReply};
use std::net::SocketAddr;

use meshfs_group::{NodeId, Role};
use serde::Serialize;

use crate::access::Access;
use crate::connection::Connection;
use crate::error::ClientError;

/// One peer link as one server sees it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PeerView {
    /// The peer's id.
    pub id: u32,
    /// The peer's role.
    pub role: &'static str,
    /// Whether the link is up.
    pub up: bool,
    /// Smoothed RTT in microseconds; `null` while down or before the first pong.
    pub rtt_us: Option<u64>,
    /// Last RTT sample in microseconds.
    pub rtt_last_us: Option<u64>,
    /// Largest RTT on the current link in microseconds.
    pub rtt_max_us: Option<u64>,
    /// Milliseconds in the current state.
    pub since_ms: u64,
}

/// One server's answer, or why there was none.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ServerView {
    /// The server's id.
    pub id: u32,
    /// Its role.
    pub role: &'static str,
    /// Its configured address.
    pub addr: String,
    /// Whether it answered.
    pub up: bool,
    /// Why it did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Milliseconds since it started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uptime_ms: Option<u64>,
    /// Its incarnation (changes on every restart).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<u64>,
    /// How it sees every other server.
    pub peers: Vec<PeerView>,
    /// Meta-servers: "leader", "follower", "candidate" or "pre-candidate".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raft_role: Option<&'static str>,
    /// Meta-servers: the Raft term.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
    /// Meta-servers: the highest log index known committed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit_index: Option<u64>,
    /// Meta-servers: the highest log index applied to the namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied_index: Option<u64>,
    /// Meta-servers: the leader this one follows, if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader: Option<u32>,
    /// Meta-servers: files and directories in the namespace as applied there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inodes: Option<u64>,
    /// Meta-servers: the data-servers as their reports describe them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub data_servers: Vec<DataServerView>,
    /// The leader: the cluster's blocks by health.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthView>,
}

/// Blocks by health, as the leader counted them in its last repair scan.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct HealthView {
    /// As many good replicas as wanted.
    pub healthy: u64,
    /// Fewer good replicas than wanted, at least one.
    pub under_replicated: u64,
    /// No good replica.
    pub missing: u64,
    /// A repair copy under way.
    pub repairing: u64,
}

/// A data-server as a meta-server knows it from its reports.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DataServerView {
    /// The data-server's id.
    pub id: u32,
    /// "up", "down", "up, draining" or "down, draining".
    pub state: String,
    /// Bytes it may store.
    pub capacity: u64,
    /// Bytes its replicas take.
    pub used: u64,
    /// Replicas it holds.
    pub blocks: u64,
    /// Its last full report is complete and its link is up.
    pub complete: bool,
}

/// The whole cluster as its servers see it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ClusterStatus {
    /// The cluster name.
    pub cluster: String,
    /// Every server of the config, in config order.
    pub servers: Vec<ServerView>,
    /// The data-servers as the leader sees them (or any meta-server, if none leads).
    pub data_servers: Vec<DataServerView>,
    /// The leader's count of blocks by health.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthView>,
}

fn role_name(role: Role) -> &'static str {
    role.name()
}

fn view(reply: &StatusReply, configured_addr: String) -> ServerView {
    let peers = reply
        .peers
        .iter()
        .map(|p| {
            let measured = p.up && p.rtt_samples > 0;
            PeerView {
                id: p.id.0,
                role: role_name(p.role),
                up: p.up,
                rtt_us: measured.then_some(p.rtt_smoothed_us),
                rtt_last_us: measured.then_some(p.rtt_last_us),
                rtt_max_us: measured.then_some(p.rtt_max_us),
                since_ms: p.since_ms,
            }
        })
        .collect();
    ServerView {
        id: reply.id.0,
        role: role_name(reply.role),
        addr: configured_addr,
        up: true,
        error: None,
        uptime_ms: Some(reply.uptime_ms),
        incarnation: Some(reply.incarnation),
        peers,
        raft_role: reply.raft.map(|r| r.role_name()),
        term: reply.raft.map(|r| r.term),
        commit_index: reply.raft.map(|r| r.commit_index),
        applied_index: reply.raft.map(|r| r.applied_index),
        leader: reply.raft.and_then(|r| (r.leader != 0).then_some(r.leader)),
        inodes: reply.raft.map(|r| r.inodes),
        data_servers: reply
            .data_servers
            .iter()
            .map(|d| DataServerView {
                id: d.id.0,
                state: format!(
                    "{}{}",
                    if d.up { "up" } else { "down" },
                    if d.draining { ", draining" } else { "" }
                ),
                capacity: d.capacity,
                used: d.used,
                blocks: d.blocks,
                complete: d.complete,
            })
            .collect(),
        health: reply.health.map(|h| HealthView {
            healthy: h.healthy,
            under_replicated: h.under_replicated,
            missing: h.missing,
            repairing: h.repairing,
        }),
    }
}

/// Asks one server, `id` at `addr`, for its status.
pub fn server_status(
    access: &Access,
    id: NodeId,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<StatusReply, ClientError> {
    let mut conn = Connection::open(addr, &access.cluster, &access.credentials, timeout)?;
    match conn.call(&Message::StatusRequest)? {
        Message::StatusReply(reply) if reply.id == id => Ok(reply),
        Message::StatusReply(reply) => Err(ClientError::Protocol {
            addr,
            detail: format!("expected server {id} at this address, server {} answered", reply.id),
        }),
        other => Err(ClientError::Protocol {
            addr,
            detail: format!("expected a status reply, got message kind {}", other.kind()),
        }),
    }
}

/// Asks every server of the cluster map, in parallel. Without a map (no meta-server
/// answers), the meta-servers of the client's config are listed as down.
pub fn cluster_status(access: &Access, timeout: Duration) -> ClusterStatus {
    let listed: Vec<(Role, NodeId, String)> = match access.cluster_map() {
        Ok(map) => map.servers.clone(),
        Err(_) => access
            .mservers
            .iter()
            .map(|(id, addr)| (Role::MServer, *id, addr.to_string()))
            .collect(),
    };
    let servers = thread::scope(|scope| {
        let handles: Vec<_> = listed
            .iter()
            .map(|(role, id, addr)| {
                scope.spawn(move || {
                    let result = addr
                        .parse::<SocketAddr>()
                        .map_err(|_| ClientError::Protocol {
                            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                            detail: format!("server {id} has address {addr:?}"),
                        })
                        .and_then(|a| server_status(access, *id, a, timeout));
                    (*role, *id, addr, result)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                let (role, id, addr, result) = handle.join().expect("status threads do not panic");
                match result {
                    Ok(reply) => view(&reply, addr.clone()),
                    Err(err) => ServerView {
                        id: id.0,
                        role: role_name(role),
                        addr: addr.clone(),
                        up: false,
                        error: Some(err.to_string()),
                        uptime_ms: None,
                        incarnation: None,
                        peers: Vec::new(),
                        raft_role: None,
                        term: None,
                        commit_index: None,
                        applied_index: None,
                        leader: None,
                        inodes: None,
                        data_servers: Vec::new(),
                        health: None,
                    },
                }
            })
            .collect()
    });
    let servers: Vec<ServerView> = servers;
    // The leader's view of the data-servers; any meta-server's if none leads.
    let leader = servers.iter().find(|s| s.raft_role == Some("leader"));
    let source = leader.or_else(|| servers.iter().find(|s| !s.data_servers.is_empty()));
    let data_servers = source.map(|s| s.data_servers.clone()).unwrap_or_default();
    let health = leader.and_then(|s| s.health);
    ClusterStatus { cluster: access.cluster.clone(), servers, data_servers, health }
}

impl ClusterStatus {
    /// Every server answered and sees every other one up.
    pub fn fully_connected(&self) -> bool {
        let n = self.servers.len();
        self.servers.iter().all(|s| s.up && s.peers.len() == n - 1 && s.peers.iter().all(|p| p.up))
    }

    /// Every link that is up has an RTT (at least one pong came back).
    pub fn rtts_measured(&self) -> bool {
        self.servers.iter().all(|s| s.peers.iter().all(|p| !p.up || p.rtt_us.is_some()))
    }

    /// The meta-server that answered as leader, if exactly one did and every answering
    /// meta-server follows it.
    pub fn agreed_leader(&self) -> Option<u32> {
        let mservers: Vec<&ServerView> =
            self.servers.iter().filter(|s| s.raft_role.is_some()).collect();
        let leaders: Vec<u32> =
            mservers.iter().filter(|s| s.raft_role == Some("leader")).map(|s| s.id).collect();
        let [leader] = leaders[..] else { return None };
        mservers.iter().all(|s| s.leader == Some(leader)).then_some(leader)
    }

    /// Servers that answered.
    pub fn servers_up(&self) -> usize {
        self.servers.iter().filter(|s| s.up).count()
    }

    /// The server with `id`.
    pub fn server(&self, id: u32) -> Option<&ServerView> {
        self.servers.iter().find(|s| s.id == id)
    }

    /// As one JSON object.
    #[cfg(feature = "tools")]
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("status serializes")
    }

    /// A table of servers, then the RTT matrix: row = the server that measured, column = the
    /// peer, cell = smoothed RTT in microseconds (`down` if the link is down, `-` for itself,
    /// `?` if the row's server did not answer).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "cluster {}: {} of {} servers up",
            self.cluster,
            self.servers_up(),
            self.servers.len()
        );
        let _ = writeln!(
            out,
            "{:>4}  {:<8} {:<22} {:<5} {:>10}  {:<10} {:>5} {:>8} {:>8}  note",
            "id", "role", "address", "state", "uptime", "raft", "term", "commit", "applied"
        );
        for s in &self.servers {
            let uptime = s
                .uptime_ms
                .map_or_else(|| "-".to_string(), |ms| format!("{:.1}s", ms as f64 / 1000.0));
            let state = if s.up { "up" } else { "DOWN" };
            let note = s.error.clone().unwrap_or_default();
            let num = |n: Option<u64>| n.map_or_else(|| "-".to_string(), |n| n.to_string());
            let _ = writeln!(
                out,
                "{:>4}  {:<8} {:<22} {:<5} {:>10}  {:<10} {:>5} {:>8} {:>8}  {note}",
                s.id,
                s.role,
                s.addr,
                state,
                uptime,
                s.raft_role.unwrap_or("-"),
                num(s.term),
                num(s.commit_index),
                num(s.applied_index)
            );
        }
        let answered = self.servers.iter().filter(|s| s.up).count();
        if answered > 1 && self.servers.iter().all(|s| s.peers.is_empty()) {
            // The servers answer a client that is not an operator without their links.
            let _ = writeln!(
                out,
                "\nlinks, data-servers and block health: shown to operators' clients (admin = true) only"
            );
            return out;
        }
        let _ = writeln!(out, "\nRTT in microseconds (row measured column):");
        let _ = write!(out, "{:>6}", "");
        for s in &self.servers {
            let _ = write!(out, "{:>8}", s.id);
        }
        out.push('\n');
        for row in &self.servers {
            let _ = write!(out, "{:>6}", row.id);
            for col in &self.servers {
                let cell = if row.id == col.id {
                    "-".to_string()
                } else if !row.up {
                    "?".to_string()
                } else {
                    match row.peers.iter().find(|p| p.id == col.id) {
                        Some(PeerView { up: true, rtt_us: Some(rtt), .. }) => rtt.to_string(),
                        Some(PeerView { up: true, rtt_us: None, .. }) => "up".to_string(),
                        Some(_) => "down".to_string(),
                        None => "?".to_string(),
                    }
                };
                let _ = write!(out, "{cell:>8}");
            }
            out.push('\n');
        }
        if !self.data_servers.is_empty() {
            let _ = writeln!(out, "\ndata-servers (as the leader sees them):");
            let _ = writeln!(
                out,
                "{:>4}  {:<15} {:>10} {:>10} {:>6} {:>8}",
                "id", "state", "capacity", "used", "used%", "blocks"
            );
            for d in &self.data_servers {
                let percent =
                    if d.capacity == 0 { 0.0 } else { 100.0 * d.used as f64 / d.capacity as f64 };
                let _ = writeln!(
                    out,
                    "{:>4}  {:<15} {:>10} {:>10} {:>5.1}% {:>8}",
                    d.id,
                    d.state,
                    human_bytes(d.capacity),
                    human_bytes(d.used),
                    percent,
                    d.blocks
                );
            }
        }
        match &self.health {
            Some(h) => {
                let _ = writeln!(
                    out,
                    "\nblocks: {} healthy, {} under-replicated, {} missing, {} being repaired",
                    h.healthy, h.under_replicated, h.missing, h.repairing
                );
            }
            None => {
                let _ = writeln!(out, "\nblocks: no leader to count them");
            }
        }
        out
    }
}

/// Bytes in binary units, e.g. "1.5GiB".
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes}B") } else { format!("{value:.1}{}", UNITS[unit]) }
}
