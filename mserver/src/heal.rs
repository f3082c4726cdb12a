//! Self-healing on the leader: every scan, [`meshfs_core::heal::plan`] decides from the
//! namespace and the data-servers' reports what to copy and delete, and the [`Healer`]
//! carries it out.
//!
//! - A copy is asked of its target data-server ([`Message::Repair`]); the target reads from
//!   the source over the mesh, checks every segment and commits, then answers
//!   [`Message::RepairDone`]. A copy that replaces a member of the replica set then becomes a
//!   [`Command::ReplaceReplica`] entry: the set changes only once the new copy is durable, and
//!   only if the block is still at the version copied.
//! - Copies outside their block's set go as soon as the set is whole; copies of blocks that no
//!   longer exist go after `orphan_delay` (a leader just elected may not have applied the
//!   newest files yet). Deletes name the version seen, so a newer copy is never deleted.
//! - All of this is soft state: a new leader starts from the reports and the namespace, and
//!   a copy in flight when the leader changed ends as an extra copy, deleted later.
//!
//! It must not plan: [`meshfs_core::heal::plan`] does; this carries plans out and keeps the
//! soft state of copies in flight. It sees links, sends and reads the clock only through
//! [`Mesh`], which the driver's node implements and the simulation implements over its fake
//! network, so the pacing tested there is this code.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use meshfs_core::heal::{
    CopyTask, Holdings, InFlight, Limits, Plan, ServerState, ServerView, block_health, plan,
};
use meshfs_core::namespace::{Command, Entry, Namespace, Outcome};
use meshfs_core::path::MeshPath;
use meshfs_core::session::SessionId;
use meshfs_core::settings::Heal;
use meshfs_core::wire::{
    DataReport, FsckProblem, FsckReport, HealthCounts, MAX_FSCK_PROBLEMS, Message,
    REPLY_ITEMS_BUDGET, RepairTask,
};
use meshfs_group::driver::Node;
use meshfs_group::{ClientId, NodeId, Now, Role};
use meshfs_net::Priority;

use crate::consensus::Replica;
use crate::persist::{Persister, RaftLog};

/// What the healer needs of the world around it: in a server the driver's [`Node`]; in the
/// simulation its simulated network and clock, so that the pacing tested there is this code.
pub trait Mesh {
    /// Sends `message` to data-server `to` on the control lane; whether it was queued.
    fn send(&mut self, to: NodeId, message: &Message) -> bool;
    /// Every configured data-server with its link as this meta-server sees it.
    fn data_servers(&self) -> Vec<DataServerLink>;
    /// The monotonic clock, read around planning to measure how long it took.
    fn clock(&mut self) -> Instant;
}

/// One data-server of the config and this meta-server's link to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataServerLink {
    /// Its id.
    pub id: NodeId,
    /// The capacity the config gives it, if any (used until it reports).
    pub capacity: Option<u64>,
    /// Whether the link is up.
    pub up: bool,
    /// When the link last went up or down.
    pub since: Instant,
}

impl Mesh for Node {
    fn send(&mut self, to: NodeId, message: &Message) -> bool {
        Node::send(self, to, Priority::Control, message.to_frame(0)).is_ok()
    }

    fn data_servers(&self) -> Vec<DataServerLink> {
        let links: HashMap<NodeId, (bool, Instant)> =
            self.group().status().into_iter().map(|p| (p.id, (p.up, p.since))).collect();
        let now = self.now().mono;
        self.config()
            .servers_of(Role::DServer)
            .map(|s| {
                let (up, since) = links.get(&s.id).copied().unwrap_or((false, now));
                DataServerLink { id: s.id, capacity: s.capacity, up, since }
            })
            .collect()
    }

    fn clock(&mut self) -> Instant {
        self.now().mono
    }
}

/// A data-server's replicas as its reports describe them (soft state: rebuilt from reports,
/// not logged).
#[derive(Debug, Default)]
pub struct Reported {
    /// Bytes it may store.
    pub capacity: u64,
    /// Bytes it uses.
    pub used: u64,
    /// Replicas held.
    pub blocks: Holdings,
    /// A full report in progress.
    pub incoming: Option<Holdings>,
    /// Its last full report is complete and its link is up.
    pub complete: bool,
}

impl Reported {
    /// Takes in one report message: a full report (possibly in several messages) replaces
    /// what was known once its last message arrives; a change report edits it. Whether a
    /// full report just ended.
    pub fn apply(&mut self, report: &DataReport) -> bool {
        self.capacity = report.capacity;
        self.used = report.used;
        let held = |(b, len): &(meshfs_core::descriptor::BlockDescriptor, u64)| {
            ((b.file.id.0, b.index), (b.version.0, *len))
        };
        if report.full {
            self.incoming = Some(HashMap::new());
            self.complete = false;
        }
        match &mut self.incoming {
            Some(incoming) => {
                incoming.extend(report.blocks.iter().map(held));
                for key in &report.removed {
                    incoming.remove(key);
                }
                if report.last {
                    self.blocks = self.incoming.take().unwrap_or_default();
                    self.complete = true;
                    return true;
                }
            }
            None => {
                self.blocks.extend(report.blocks.iter().map(held));
                for key in &report.removed {
                    self.blocks.remove(key);
                }
            }
        }
        false
    }
}

/// Deletes are sent again after this long if the replica is still reported.
const DELETE_RESEND: Duration = Duration::from_secs(30);
/// Deletes sent to one data-server per scan: after `rm -r` of a big tree the rest follow in
/// later scans, and the link's control queue never fills.
const DELETES_PER_SCAN: usize = 2048;
/// A copy gets this long, plus twice its bytes at the repair rate, before it is forgotten.
const COPY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
enum Stage {
    /// The target is copying.
    Copying,
    /// The copy is durable; the set change is proposed.
    Proposing,
}

#[derive(Debug)]
struct Task {
    copy: CopyTask,
    stage: Stage,
    started: Instant,
    deadline: Instant,
}

/// The leader's repair work under way.
#[derive(Debug)]
pub struct Healer {
    settings: Heal,
    tasks: HashMap<u64, Task>,
    next_task: u64,
    /// The session the leader proposes its own entries in, and the next request number.
    session: SessionId,
    next_request: u64,
    /// When each orphan (server, file, index, version) was first seen.
    orphans: HashMap<(NodeId, u32, u16, u16), Instant>,
    /// When each delete was last sent.
    deletes_sent: HashMap<(NodeId, u32, u16, u16), Instant>,
    /// The last scan's counts.
    health: Option<HealthCounts>,
    /// Bytes copied by finished repair tasks since this meta-server started.
    copied_bytes: u64,
    /// How long the last scan took, and whether an early one is asked for.
    last_scan_took: Duration,
    early_scan: bool,
    /// No scan before this: scans take at most a tenth of the leader's time.
    next_scan: Option<Instant>,
}

fn delete_key(d: &meshfs_core::heal::Delete) -> (NodeId, u32, u16, u16) {
    (d.server, d.block.file.id.0, d.block.index, d.block.version.0)
}

impl Healer {
    /// A healer with these settings, proposing in a session of its own numbered `nonce`.
    pub fn new(settings: Heal, nonce: u64) -> Healer {
        Healer {
            settings,
            tasks: HashMap::new(),
            next_task: 1,
            session: SessionId { client: ClientId(0), nonce },
            next_request: 1,
            orphans: HashMap::new(),
            deletes_sent: HashMap::new(),
            health: None,
            copied_bytes: 0,
            last_scan_took: Duration::ZERO,
            early_scan: false,
            next_scan: None,
        }
    }

    /// When a task ended and more work may wait: how soon to scan again. Scans stay under a
    /// tenth of the leader's time (a scan of a million blocks takes tens of milliseconds),
    /// and at most one early scan is pending.
    pub fn early_scan(&mut self) -> Option<Duration> {
        if self.early_scan {
            return None;
        }
        self.early_scan = true;
        Some((self.last_scan_took * 10).max(Duration::from_millis(20)))
    }

    /// The last scan's counts (the leader only).
    pub fn health(&self) -> Option<HealthCounts> {
        self.health
    }

    /// Whether `session` is the healer's own.
    pub fn owns(&self, session: SessionId) -> bool {
        session == self.session
    }

    /// Forgets everything under way: this meta-server is no longer the leader.
    pub fn stand_down(&mut self) {
        if !self.tasks.is_empty() {
            info!("no longer the leader: dropping {} repair tasks", self.tasks.len());
        }
        self.tasks.clear();
        self.orphans.clear();
        self.deletes_sent.clear();
        self.health = None;
    }

    /// One scan: plan and carry out. Whether it ran: a scan comes no sooner than nine times
    /// the last one's planning time after it ended.
    pub fn scan<L: RaftLog, P: Persister<L>>(
        &mut self,
        mesh: &mut impl Mesh,
        replica: &mut Replica<L, P>,
        reports: &BTreeMap<NodeId, Reported>,
        at: Now,
    ) -> bool {
        let (now, now_ms) = (at.mono, at.wall_ms);
        if self.next_scan.is_some_and(|next| now < next) {
            return false; // the last scan was long: the next waits ten times as long
        }
        self.early_scan = false;
        let links = mesh.data_servers();
        self.expire(now, &links);
        let empty = Holdings::new();
        let servers =
            server_views(&links, replica.namespace(), reports, &self.settings, &empty, now);
        let in_flight: Vec<InFlight> = self.tasks.values().map(|t| t.copy.in_flight()).collect();
        let limits = Limits {
            tasks_per_server: self.settings.repair_streams,
            balance_margin: f64::from(self.settings.balance_margin_percent) / 100.0,
        };
        // How long planning takes sets the pause before the next scan: measured by the
        // driver's clock, not decided by it.
        let started = mesh.clock();
        let Plan { copies, deletes, orphans, health } =
            plan(replica.namespace(), now_ms, &servers, &in_flight, limits);
        let finished = mesh.clock();
        let took = finished.saturating_duration_since(started);
        self.last_scan_took = took;
        self.next_scan = Some(finished + took * 9);
        if took > Duration::from_secs(1) {
            // Near the election timeout: heartbeats wait while the leader scans.
            warn!(
                "repair scan took {} ms; the next waits {} ms",
                took.as_millis(),
                9 * took.as_millis()
            );
        } else if took > Duration::from_millis(100) {
            debug!("repair scan took {} ms", took.as_millis());
        }
        self.health = Some(health);
        for copy in copies {
            self.start(mesh, replica, copy, now, now_ms);
        }
        let mut sent: HashMap<NodeId, usize> = HashMap::new();
        let mut outside = 0;
        for delete in &deletes {
            outside += usize::from(self.delete(mesh, delete, now, &mut sent));
        }
        let current: HashSet<_> = orphans.iter().map(delete_key).collect();
        self.orphans.retain(|key, _| current.contains(key));
        let mut gone = 0;
        for orphan in &orphans {
            let seen = *self.orphans.entry(delete_key(orphan)).or_insert(now);
            if now.duration_since(seen) >= self.settings.orphan_delay {
                gone += usize::from(self.delete(mesh, orphan, now, &mut sent));
            }
        }
        if outside + gone > 0 {
            info!(
                "deleting {outside} replicas outside the block's replica set and {gone} of blocks that no longer exist, on data-servers {:?}",
                sent.keys().collect::<std::collections::BTreeSet<_>>()
            );
        }
        let listed: HashSet<_> = deletes.iter().chain(&orphans).map(delete_key).collect();
        self.deletes_sent.retain(|key, _| listed.contains(key));
        true
    }

    /// Forgets copies that timed out, and copies whose target's link went down (or down and
    /// up again) since they started: a target that crashed never answers, and one that did
    /// not ends with an extra copy, deleted later. Either way the block may be planned again
    /// now rather than after the timeout.
    fn expire(&mut self, now: Instant, links: &[DataServerLink]) {
        self.tasks.retain(|id, task| {
            let link = links.iter().find(|l| l.id == task.copy.target);
            let cut = matches!(task.stage, Stage::Copying)
                && link.is_none_or(|l| !l.up || l.since > task.started);
            if cut {
                info!(
                    "repair task {id} ({} to data-server {}): the target's link went down",
                    task.copy.block, task.copy.target
                );
                return false;
            }
            let keep = now < task.deadline;
            if !keep {
                warn!(
                    "repair task {id} ({} to data-server {}) timed out after {} s",
                    task.copy.block,
                    task.copy.target,
                    now.duration_since(task.started).as_secs()
                );
            }
            keep
        });
    }

    fn start<L: RaftLog, P: Persister<L>>(
        &mut self,
        mesh: &mut impl Mesh,
        replica: &mut Replica<L, P>,
        copy: CopyTask,
        now: Instant,
        now_ms: u64,
    ) {
        let id = self.next_task;
        self.next_task += 1;
        let rate = self.settings.repair_bytes_per_sec.max(1);
        let deadline = now + COPY_TIMEOUT + Duration::from_secs(2 * copy.len / rate);
        let Some(source) = copy.source else {
            if copy.replaces.is_none() {
                return; // never written and in place: nothing to do
            }
            // Never written: nothing to copy, only the set changes.
            let task = Task { copy, stage: Stage::Proposing, started: now, deadline };
            self.tasks.insert(id, task);
            self.propose_replace(replica, id, now_ms);
            return;
        };
        let message = Message::Repair(RepairTask {
            task: id,
            block: copy.block,
            block_size: copy.block_size,
            len: copy.len,
            source,
        });
        if !mesh.send(copy.target, &message) {
            return;
        }
        debug!(
            "repair task {id}: {} from {source} to {} ({:?}{})",
            copy.block,
            copy.target,
            copy.reason,
            copy.replaces.map(|r| format!(", replacing {r}")).unwrap_or_default()
        );
        self.tasks.insert(id, Task { copy, stage: Stage::Copying, started: now, deadline });
    }

    /// Sends one delete unless it was sent lately or the server's share for this scan is
    /// used up; whether it was sent.
    fn delete(
        &mut self,
        mesh: &mut impl Mesh,
        delete: &meshfs_core::heal::Delete,
        now: Instant,
        sent: &mut HashMap<NodeId, usize>,
    ) -> bool {
        let key = delete_key(delete);
        if self.deletes_sent.get(&key).is_some_and(|at| now.duration_since(*at) < DELETE_RESEND) {
            return false;
        }
        let count = sent.entry(delete.server).or_default();
        if *count >= DELETES_PER_SCAN {
            return false;
        }
        let message = Message::DeleteReplica(delete.block);
        if !mesh.send(delete.server, &message) {
            return false;
        }
        debug!("deleting {} on data-server {}", delete.block, delete.server);
        *count += 1;
        self.deletes_sent.insert(key, now);
        true
    }

    fn propose_replace<L: RaftLog, P: Persister<L>>(
        &mut self,
        replica: &mut Replica<L, P>,
        id: u64,
        now_ms: u64,
    ) {
        let Some(task) = self.tasks.get(&id) else { return };
        let (copy, Some(remove)) = (task.copy, task.copy.replaces) else { return };
        let entry = Entry {
            session: self.session,
            request_id: self.next_request,
            time_ms: now_ms,
            caller: meshfs_core::namespace::Caller::system(),
            command: Command::ReplaceReplica {
                file: copy.block.file.id.0,
                index: copy.block.index,
                version: copy.block.version,
                remove,
                add: copy.target,
            },
        };
        self.next_request += 1;
        if let Err(err) = replica.propose(&entry) {
            warn!("repair task {id}: could not propose the replica change: {err:?}");
            self.tasks.remove(&id);
        }
    }

    /// A target data-server finished (or failed) a copy.
    pub fn copied<L: RaftLog, P: Persister<L>>(
        &mut self,
        replica: &mut Replica<L, P>,
        from: NodeId,
        id: u64,
        error: &str,
        now_ms: u64,
    ) {
        let Some(task) = self.tasks.get_mut(&id) else { return };
        if task.copy.target != from || !matches!(task.stage, Stage::Copying) {
            return;
        }
        if !error.is_empty() {
            warn!("repair task {id}: copying {} to {from} failed: {error}", task.copy.block);
            self.tasks.remove(&id);
            return;
        }
        self.copied_bytes += task.copy.len;
        match task.copy.replaces {
            None => {
                info!("repair: {} is whole again on data-server {from}", task.copy.block);
                self.tasks.remove(&id);
            }
            Some(_) => {
                task.stage = Stage::Proposing;
                self.propose_replace(replica, id, now_ms);
            }
        }
    }

    /// An entry of the healer's own session was applied.
    pub fn applied(&mut self, command: &Command, outcome: &Outcome) {
        let Command::ReplaceReplica { file, index, version, remove, add } = command else {
            return;
        };
        let task = self.tasks.iter().find(|(_, t)| {
            let b = t.copy.block;
            (b.file.id.0, b.index, t.copy.target) == (*file, *index, *add)
        });
        if let Some((&id, _)) = task {
            self.tasks.remove(&id);
        }
        match outcome {
            Outcome::Swapped { replicas } => info!(
                "repair: file {file} block {index} v{}: data-server {add} replaces {remove}; replicas now {replicas:?}",
                version.0
            ),
            Outcome::Failed(err) => warn!("repair: replica change refused: {err}"),
            other => warn!("repair: unexpected outcome {other:?}"),
        }
    }

    /// Bytes copied by finished repair tasks.
    pub fn copied_bytes(&self) -> u64 {
        self.copied_bytes
    }

    /// Blocks with copies under way.
    fn repairing(&self) -> HashSet<(u32, u16)> {
        self.tasks.values().map(|t| (t.copy.block.file.id.0, t.copy.block.index)).collect()
    }
}

/// Every configured data-server as the planner sees it.
pub fn server_views<'a>(
    links: &[DataServerLink],
    namespace: &Namespace,
    reports: &'a BTreeMap<NodeId, Reported>,
    settings: &Heal,
    empty: &'a Holdings,
    now: Instant,
) -> BTreeMap<NodeId, ServerView<'a>> {
    links
        .iter()
        .map(|s| {
            let report = reports.get(&s.id);
            let (up, since) = (s.up, s.since);
            let complete = up && report.is_some_and(|r| r.complete);
            let state = if complete {
                ServerState::Up
            } else if !up && now.saturating_duration_since(since) > settings.grace {
                ServerState::Lost
            } else {
                ServerState::Down
            };
            let view = ServerView {
                id: s.id,
                state,
                draining: namespace.draining().contains(&s.id),
                capacity: report
                    .filter(|_| complete)
                    .map_or(s.capacity.unwrap_or(0), |r| r.capacity),
                used: report.map_or(0, |r| r.used),
                holds: report.map_or(empty, |r| &r.blocks),
            };
            (s.id, view)
        })
        .collect()
}

/// `fsck`: every block of the files at or under `path` against the reports.
pub fn fsck(
    mesh: &impl Mesh,
    namespace: &Namespace,
    reports: &BTreeMap<NodeId, Reported>,
    healer: &Healer,
    path: &MeshPath,
    now: Instant,
) -> Result<FsckReport, meshfs_core::error::NsError> {
    let files = namespace.files_under(path)?;
    let empty = Holdings::new();
    let links = mesh.data_servers();
    let servers = server_views(&links, namespace, reports, &healer.settings, &empty, now);
    let repairing = healer.repairing();
    let mut report = FsckReport {
        files: files.len() as u64,
        unknown_servers: servers
            .values()
            .filter(|s| s.state != ServerState::Up)
            .map(|s| s.id)
            .collect(),
        ..FsckReport::default()
    };
    let mut listed_bytes = 0;
    for (path, id) in files {
        for index in 0..=u16::MAX {
            let Some(block) = namespace.block(id, index) else { break };
            report.blocks += 1;
            let health = block_health(&block, &servers);
            let in_repair = repairing.contains(&(id, index));
            if !report.health.count(&health, in_repair) {
                continue;
            }
            let problem = FsckProblem {
                path: path.clone(),
                block: block.descriptor,
                wanted: block.replication,
                replicas: block.replicas.to_vec(),
                good: health.good.clone(),
                missing: health.missing(),
                repairing: in_repair,
            };
            // Bounded by count and by bytes (paths may be long), so the reply fits a frame.
            let len = problem.encoded_len();
            if report.more
                || report.problems.len() == MAX_FSCK_PROBLEMS as usize
                || listed_bytes + len > REPLY_ITEMS_BUDGET
            {
                report.more = true;
            } else {
                listed_bytes += len;
                report.problems.push(problem);
            }
        }
    }
    Ok(report)
}
