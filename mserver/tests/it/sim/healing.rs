//! Data-servers and healing in the simulation: the meta-servers run their own [`Healer`]
//! (planning, copies, deletes, the orphan delay and the scan pacing) over the simulated
//! network and clock, through the [`Mesh`] a server gets from its driver.
//!
//! Data-servers are small models of the real one: a disk of replicas (file, index) ->
//! (version, length) that survives a crash, a full report to a meta-server each time their
//! link comes up and a change report after every change, repair copies that take a while
//! and fail if the source lacks the version, and deletes of the version named. A crash may
//! also wipe the disk, but only while every committed replica on it has a copy elsewhere.
//! Writers create one-block files on two data-servers (lease, write, commit) and remove
//! some of them again.
//!
//! The checker: no committed block ever loses its last copy (checked at every delete and
//! wipe); every scan that ran came at least ten times its predecessor's planning time after
//! it, and every scan refused came sooner; at the end, with everything up, every committed
//! block has its full replica set holding exactly its committed version, and nothing else
//! is left on any data-server (extras and orphans deleted).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use meshfs_core::descriptor::{BlockDescriptor, BlockVersion, FileDescriptor, FileId};
use meshfs_core::heal::Holdings;
use meshfs_core::namespace::{Command, Entry, Outcome};
use meshfs_core::path::MeshPath;
use meshfs_core::session::SessionId;
use meshfs_core::settings::Heal;
use meshfs_core::wire::{DataReport, Message, RepairTask};
use meshfs_group::{ClientId, NodeId, Now};
use meshfs_mserver::consensus::ProposeError;
use meshfs_mserver::heal::{DataServerLink, Healer, Mesh, Reported};

use super::{Payload, Sim};

/// Data-server ids start above this (meta-servers are 1..=n).
pub const DSERVER_BASE: u64 = 100;
/// Replicas of every file the writers make.
const REPLICATION: u8 = 2;
const BLOCK_SIZE: u32 = 65536;
const CAPACITY: u64 = 1 << 30;
/// A regular scan every this many ms on the leader (the server's heal timer, scaled).
const HEAL_EVERY: u64 = 100;

/// The healing settings of the simulated cluster (ms of simulated time).
fn settings() -> Heal {
    Heal {
        grace: Duration::from_millis(400),
        repair_bytes_per_sec: 1 << 30,
        repair_streams: 2,
        scrub_bytes_per_sec: 0,
        scrub_interval: Duration::from_secs(3600),
        orphan_delay: Duration::from_millis(300),
        balance_margin_percent: 10,
    }
}

/// A meta-server's healing state: what the server process keeps beside its replica.
pub struct NodeHeal {
    pub healer: Healer,
    pub reports: BTreeMap<NodeId, Reported>,
    next_scan: u64,
    early_scan: Option<u64>,
    /// The last scan that ran: (when, its planning time in ms).
    last_scan: Option<(u64, u64)>,
}

impl NodeHeal {
    /// As a meta-server process starts: an empty healer and no reports.
    pub fn new(id: u64, now: u64) -> NodeHeal {
        NodeHeal {
            healer: Healer::new(settings(), 0x4ea1_0000 + id * 1000 + now),
            reports: BTreeMap::new(),
            next_scan: now + HEAL_EVERY,
            early_scan: None,
            last_scan: None,
        }
    }
}

/// A copy under way on a data-server.
#[derive(Debug, Clone)]
struct Copying {
    done_at: u64,
    leader: u64,
    task: RepairTask,
}

pub struct DataServer {
    id: u64,
    up: bool,
    /// Its disk: kept through a crash, lost in a wipe.
    holds: Holdings,
    restart_at: u64,
    copying: Vec<Copying>,
}

#[derive(Debug, Clone)]
enum Step {
    Create {
        path: String,
        placement: Vec<NodeId>,
        len: u64,
    },
    /// The lease is granted: write to every replica (waiting until all are up), then commit.
    Write {
        path: String,
        block: BlockDescriptor,
        replicas: Vec<NodeId>,
        len: u64,
    },
    Commit {
        path: String,
        version: BlockVersion,
        len: u64,
    },
    Remove {
        path: String,
    },
}

/// A writer: one step at a time, each retried with its request id until answered.
pub struct Writer {
    session: SessionId,
    next_request: u64,
    hint: u64,
    step: Option<Step>,
    /// (request id, node waited on, retry at).
    waiting: Option<(u64, u64, u64)>,
    idle_until: u64,
    files_left: u32,
    next_file: u32,
    /// Its committed files.
    mine: Vec<String>,
}

/// What the healing checker tracks across the run.
#[derive(Default)]
pub struct Healing {
    pub dservers: Vec<DataServer>,
    pub writers: Vec<Writer>,
    /// Each (meta-server, data-server) link: up, and since when.
    links: BTreeMap<(u64, u64), (bool, u64)>,
    /// Committed blocks the writers were told of and have not removed: (file, index) ->
    /// (version, length).
    pub durable: BTreeMap<(u32, u16), (u16, u64)>,
    /// Files being removed, by path, and the path of each committed file id.
    removing: BTreeSet<String>,
    paths: BTreeMap<u32, String>,
    pub stats: HealStats,
}

#[derive(Debug, Default)]
pub struct HealStats {
    pub scans: u64,
    pub paced: u64,
    pub copies: u64,
    pub deletes: u64,
    pub dserver_crashes: u64,
    pub wipes: u64,
    pub writes: u64,
    pub removes: u64,
}

/// The simulation's side of [`Mesh`]: links as the simulation has them, messages collected
/// to go out on its network, and a clock on which planning takes `plan_ms`.
struct SimMesh {
    origin: Instant,
    now: u64,
    plan_ms: u64,
    reads: u64,
    links: Vec<DataServerLink>,
    outbox: Vec<(NodeId, Message)>,
}

impl Mesh for SimMesh {
    fn send(&mut self, to: NodeId, message: &Message) -> bool {
        let up = self.links.iter().any(|l| l.id == to && l.up);
        if up {
            self.outbox.push((to, message.clone()));
        }
        up
    }

    fn data_servers(&self) -> Vec<DataServerLink> {
        self.links.clone()
    }

    fn clock(&mut self) -> Instant {
        // The first read starts planning, the second ends it.
        let at = self.origin + Duration::from_millis(self.now + self.plan_ms * self.reads);
        self.reads += 1;
        at
    }
}

fn key(block: &BlockDescriptor) -> (u32, u16) {
    (block.file.id.0, block.index)
}

fn descriptor(key: (u32, u16), version: u16) -> BlockDescriptor {
    BlockDescriptor {
        file: FileDescriptor { id: FileId(key.0), version: 0 },
        index: key.1,
        version: BlockVersion(version),
    }
}

impl Sim {
    /// Adds `count` data-servers and `writers` writers, each making `files` files.
    pub fn with_data_servers(mut self, count: u64, writers: usize, files: u32) -> Sim {
        for d in 1..=count {
            self.healing.dservers.push(DataServer {
                id: DSERVER_BASE + d,
                up: true,
                holds: Holdings::new(),
                restart_at: 0,
                copying: Vec::new(),
            });
        }
        let n = self.nodes.len() as u64;
        for w in 0..writers {
            let hint = 1 + self.rng.below(n);
            self.healing.writers.push(Writer {
                session: SessionId { client: ClientId(3), nonce: 9000 + w as u64 },
                next_request: 1,
                hint,
                step: None,
                waiting: None,
                idle_until: 0,
                files_left: files,
                next_file: 0,
                mine: Vec::new(),
            });
        }
        self
    }

    fn dserver(&mut self, id: u64) -> Option<&mut DataServer> {
        self.healing.dservers.iter_mut().find(|d| d.id == id)
    }

    fn link_up(&self, node: u64, dserver: u64) -> bool {
        self.healing.links.get(&(node, dserver)).is_some_and(|l| l.0)
    }

    /// Node `i` was started: its healing state is a new process's.
    pub(super) fn heal_started(&mut self, i: usize) {
        let id = self.nodes[i].id;
        self.nodes[i].heal = NodeHeal::new(id, self.now);
    }

    /// A message on the network for a meta-server or data-server about healing.
    pub(super) fn heal_deliver(&mut self, from: u64, to: u64, message: Message) {
        if to > DSERVER_BASE {
            self.dserver_receives(from, to, message);
            return;
        }
        let now = Now::simulated(self.origin, self.now);
        let i = (to - 1) as usize;
        let node = &mut self.nodes[i];
        let Some(replica) = node.replica.as_mut() else { return };
        let from = NodeId(from as u32);
        match message {
            Message::DataReport(report) => {
                node.heal.reports.entry(from).or_default().apply(&report);
            }
            Message::RepairDone { task, error, .. } => {
                node.heal.healer.copied(replica, from, task, &error, now.wall_ms);
                if replica.is_leader()
                    && let Some(delay) = node.heal.healer.early_scan()
                {
                    node.heal.early_scan = Some(self.now + delay.as_millis() as u64);
                }
                self.drain(i);
            }
            other => panic!("seed {}: a meta-server got {:?} from a data-server", self.seed, other),
        }
    }

    /// Node `i` applied `entry`: the healer hears of its own entries, writers of theirs.
    pub(super) fn heal_applied(&mut self, i: usize, entry: &Entry, outcome: &Outcome) {
        let node = &mut self.nodes[i];
        if node.heal.healer.owns(entry.session) {
            node.heal.healer.applied(&entry.command, outcome);
            let leads = node.replica.as_ref().is_some_and(|r| r.is_leader());
            if leads && let Some(delay) = node.heal.healer.early_scan() {
                node.heal.early_scan = Some(self.now + delay.as_millis() as u64);
            }
            return;
        }
        let id = node.id;
        self.answer_writer(id, entry, outcome);
    }

    fn dserver_receives(&mut self, from: u64, to: u64, message: Message) {
        let now = self.now;
        let delay = 3 + self.rng.below(20);
        let seed = self.seed;
        let Some(d) = self.dserver(to) else { return };
        if !d.up {
            return;
        }
        match message {
            Message::Repair(task) => {
                d.copying.push(Copying { done_at: now + delay, leader: from, task });
            }
            Message::DeleteReplica(block) => {
                let held = d.holds.get(&key(&block)).is_some_and(|h| h.0 == block.version.0);
                if held {
                    d.holds.remove(&key(&block));
                    self.healing.stats.deletes += 1;
                    self.report_change(to, None, Some(key(&block)));
                    self.check_copies(key(&block), "a delete");
                }
            }
            other => panic!("seed {seed}: data-server {to} got {other:?}"),
        }
    }

    /// Sends data-server `id`'s change (a replica added or removed) to every meta-server
    /// it is linked with, as the data-server does after every change.
    fn report_change(
        &mut self,
        id: u64,
        added: Option<((u32, u16), (u16, u64))>,
        removed: Option<(u32, u16)>,
    ) {
        let Some(d) = self.healing.dservers.iter().find(|d| d.id == id) else { return };
        let report = DataReport {
            capacity: CAPACITY,
            used: d.holds.values().map(|h| h.1).sum(),
            full: false,
            last: true,
            blocks: added.map(|(k, (v, len))| (descriptor(k, v), len)).into_iter().collect(),
            removed: removed.into_iter().collect(),
        };
        let nodes: Vec<u64> = self.nodes.iter().map(|n| n.id).collect();
        for node in nodes {
            if self.link_up(node, id) {
                self.send(id, node, Payload::Heal(Message::DataReport(report.clone())));
            }
        }
    }

    fn report_all(&mut self, id: u64, node: u64) {
        let Some(d) = self.healing.dservers.iter().find(|d| d.id == id) else { return };
        let mut blocks: Vec<_> =
            d.holds.iter().map(|(k, (v, len))| (descriptor(*k, *v), *len)).collect();
        blocks.sort_by_key(|(b, _)| key(b));
        let report = DataReport {
            capacity: CAPACITY,
            used: d.holds.values().map(|h| h.1).sum(),
            full: true,
            last: true,
            blocks,
            removed: Vec::new(),
        };
        self.send(id, node, Payload::Heal(Message::DataReport(report)));
    }

    /// The safety check: committed block `key` still has a copy at its version somewhere
    /// (a crashed data-server's disk counts; it comes back).
    fn check_copies(&self, key: (u32, u16), after: &str) {
        let Some(&(version, _)) = self.healing.durable.get(&key) else { return };
        let path = self.healing.paths.get(&key.0).cloned().unwrap_or_default();
        if self.healing.removing.contains(&path) {
            return;
        }
        let held =
            self.healing.dservers.iter().any(|d| d.holds.get(&key).is_some_and(|h| h.0 == version));
        assert!(
            held,
            "seed {}: after {after}, committed block {key:?} v{version} ({path}) has no copy left",
            self.seed
        );
    }

    /// One millisecond of healing: links, data-servers, the leader's scans, writers, and
    /// (with faults on) data-server crashes.
    pub(super) fn heal_step(&mut self, faults_on: bool) {
        if self.healing.dservers.is_empty() {
            return;
        }
        self.update_links();
        self.dservers_act();
        for i in 0..self.nodes.len() {
            self.heal_scan(i);
        }
        self.writers_act();
        if faults_on {
            self.dserver_faults();
        }
    }

    fn update_links(&mut self) {
        let ids: Vec<u64> = self.healing.dservers.iter().map(|d| d.id).collect();
        for i in 0..self.nodes.len() {
            let node = self.nodes[i].id;
            let node_up = self.nodes[i].replica.is_some() && !self.isolated.contains(&node);
            for &d in &ids {
                let up = node_up && self.healing.dservers.iter().any(|x| x.id == d && x.up);
                let was = self.healing.links.get(&(node, d)).map(|l| l.0);
                if was == Some(up) {
                    continue;
                }
                self.healing.links.insert((node, d), (up, self.now));
                if up {
                    // The data-server tells a meta-server everything when their link comes up.
                    self.report_all(d, node);
                } else {
                    // The connection is gone, and what was on it.
                    self.net
                        .retain(|m| !((m.from, m.to) == (node, d) || (m.from, m.to) == (d, node)));
                    if let Some(r) = self.nodes[i].heal.reports.get_mut(&NodeId(d as u32)) {
                        r.complete = false;
                    }
                }
                self.note(0x11_0000 + (node << 8) + d + u64::from(up));
            }
        }
    }

    fn dservers_act(&mut self) {
        for k in 0..self.healing.dservers.len() {
            let now = self.now;
            let d = &mut self.healing.dservers[k];
            if !d.up {
                if d.restart_at <= now {
                    d.up = true;
                    let id = d.id;
                    self.note(0x5d_0000 + id);
                }
                continue;
            }
            let (due, later): (Vec<Copying>, Vec<Copying>) =
                std::mem::take(&mut d.copying).into_iter().partition(|c| c.done_at <= now);
            d.copying = later;
            let id = d.id;
            for copy in due {
                self.finish_copy(id, copy);
            }
        }
    }

    fn finish_copy(&mut self, id: u64, copy: Copying) {
        let task = copy.task;
        let k = key(&task.block);
        let version = task.block.version.0;
        let source = u64::from(task.source.0);
        let available = self
            .healing
            .dservers
            .iter()
            .any(|d| d.id == source && d.up && d.holds.get(&k).is_some_and(|h| h.0 == version));
        let error = if available {
            if let Some(d) = self.dserver(id) {
                d.holds.insert(k, (version, task.len));
            }
            self.report_change(id, Some((k, (version, task.len))), None);
            self.healing.stats.copies += 1;
            String::new()
        } else {
            format!("data-server {source} does not hold {} at v{version}", task.block)
        };
        if self.link_up(copy.leader, id) {
            let done = Message::RepairDone { task: task.task, block: task.block, error };
            self.send(id, copy.leader, Payload::Heal(done));
        }
    }

    /// The healer's timer on node `i`: a regular scan every [`HEAL_EVERY`] ms and the early
    /// scans the healer asks for, on the leader only; a follower's healer stands down.
    fn heal_scan(&mut self, i: usize) {
        let now = self.now;
        let leads = self.nodes[i].replica.as_ref().is_some_and(|r| r.is_leader());
        if !leads {
            self.nodes[i].heal.healer.stand_down();
            return;
        }
        let heal = &mut self.nodes[i].heal;
        let early = heal.early_scan.is_some_and(|at| at <= now);
        if !early && now < heal.next_scan {
            return;
        }
        if early {
            heal.early_scan = None;
        } else {
            heal.next_scan = now + HEAL_EVERY;
        }
        let node = self.nodes[i].id;
        let links = self
            .healing
            .dservers
            .iter()
            .map(|d| {
                let (up, since) =
                    self.healing.links.get(&(node, d.id)).copied().unwrap_or((false, 0));
                DataServerLink {
                    id: NodeId(d.id as u32),
                    capacity: Some(CAPACITY),
                    up,
                    since: self.origin + Duration::from_millis(since),
                }
            })
            .collect();
        // Planning mostly takes a few ms; now and then a long one makes the next wait.
        let plan_ms =
            if self.rng.chance(50_000) { 5 + self.rng.below(40) } else { self.rng.below(3) };
        let mut mesh =
            SimMesh { origin: self.origin, now, plan_ms, reads: 0, links, outbox: Vec::new() };
        let at = Now::simulated(self.origin, now);
        let n = &mut self.nodes[i];
        let Some(replica) = n.replica.as_mut() else { return };
        let ran = n.heal.healer.scan(&mut mesh, replica, &n.heal.reports, at);
        // The pacing: a scan runs once ten times the last planning time has passed since
        // the last scan began (nine after it ended), and not before.
        if let Some((last, took)) = n.heal.last_scan {
            let allowed = now >= last + 10 * took;
            assert_eq!(
                ran, allowed,
                "seed {}: node {node} scan at {now} ms (last at {last} ms, planning {took} ms)",
                self.seed
            );
        } else {
            assert!(ran, "seed {}: node {node}'s first scan must run", self.seed);
        }
        if ran {
            n.heal.last_scan = Some((now, plan_ms));
            self.healing.stats.scans += 1;
        } else {
            self.healing.stats.paced += 1;
        }
        for (to, message) in mesh.outbox {
            self.send(node, u64::from(to.0), Payload::Heal(message));
        }
        self.drain(i);
    }

    fn dserver_faults(&mut self) {
        if !self.rng.chance(self.faults.crash_per_million / 2) {
            return;
        }
        let down = self.healing.dservers.iter().filter(|d| !d.up).count();
        if down >= 2 {
            return;
        }
        let k = self.rng.below(self.healing.dservers.len() as u64) as usize;
        if !self.healing.dservers[k].up {
            return;
        }
        let down_for = 100 + self.rng.below(1500);
        let wipe = self.rng.chance(300_000);
        let id = self.healing.dservers[k].id;
        // A wipe only while every committed replica on the disk has a copy elsewhere: the
        // cluster promises to survive one lost disk, not two at once.
        let safe = self.healing.dservers[k].holds.iter().all(|(key, (v, _))| {
            self.healing.durable.get(key).is_none_or(|(committed, _)| committed != v)
                || self
                    .healing
                    .dservers
                    .iter()
                    .any(|o| o.id != id && o.holds.get(key).is_some_and(|h| h.0 == *v))
        });
        let d = &mut self.healing.dservers[k];
        d.up = false;
        d.restart_at = self.now + down_for;
        d.copying.clear();
        self.healing.stats.dserver_crashes += 1;
        if wipe && safe {
            d.holds.clear();
            self.healing.stats.wipes += 1;
        }
        self.note(0xd5_0000 + id);
    }

    // ---- the writers ----

    fn next_step(&mut self, w: usize) -> Option<Step> {
        let writer = &self.healing.writers[w];
        if writer.files_left == 0 {
            return None;
        }
        if !writer.mine.is_empty() && self.rng.chance(200_000) {
            let at = self.rng.below(writer.mine.len() as u64) as usize;
            let path = self.healing.writers[w].mine.swap_remove(at);
            self.healing.removing.insert(path.clone());
            return Some(Step::Remove { path });
        }
        let writer = &mut self.healing.writers[w];
        writer.files_left -= 1;
        let path = format!("/w{w}-f{}", writer.next_file);
        writer.next_file += 1;
        // Two distinct data-servers, up ones if there are enough (as the leader places).
        let mut pool: Vec<u64> =
            self.healing.dservers.iter().filter(|d| d.up).map(|d| d.id).collect();
        if pool.len() < usize::from(REPLICATION) {
            pool = self.healing.dservers.iter().map(|d| d.id).collect();
        }
        let mut placement = Vec::new();
        while placement.len() < usize::from(REPLICATION) {
            let pick = pool.swap_remove(self.rng.below(pool.len() as u64) as usize);
            placement.push(NodeId(pick as u32));
        }
        let len = 1 + self.rng.below(u64::from(BLOCK_SIZE));
        Some(Step::Create { path, placement, len })
    }

    fn command_of(step: &Step) -> Option<Command> {
        let parse = |p: &str| MeshPath::parse(p).expect("the writers' paths are valid");
        match step {
            Step::Create { path, placement, len } => Some(Command::CreateWrite {
                path: parse(path),
                replication: REPLICATION,
                block_size: BLOCK_SIZE,
                size: *len,
                placement: placement.clone(),
                mode: Some(0o640),
            }),
            Step::Write { .. } => None,
            Step::Commit { path, version, .. } => {
                Some(Command::CommitWrite { path: parse(path), index: 0, version: *version })
            }
            Step::Remove { path } => Some(Command::Remove { path: parse(path), recursive: false }),
        }
    }

    fn writers_act(&mut self) {
        let n = self.nodes.len() as u64;
        for w in 0..self.healing.writers.len() {
            let writer = &self.healing.writers[w];
            if self.now < writer.idle_until {
                continue;
            }
            if let Some((_, node, retry_at)) = writer.waiting {
                let still_leads =
                    self.nodes[(node - 1) as usize].replica.as_ref().is_some_and(|r| r.is_leader())
                        && !self.isolated.contains(&node);
                if self.now < retry_at && still_leads {
                    continue;
                }
            }
            if writer.step.is_none() {
                let step = self.next_step(w);
                self.healing.writers[w].step = step;
            }
            let Some(step) = self.healing.writers[w].step.clone() else { continue };
            if let Step::Write { path, block, replicas, len } = step {
                self.write(w, path, block, &replicas, len);
                continue;
            }
            let command = Self::command_of(&step).expect("a step with a command");
            let writer = &mut self.healing.writers[w];
            let request = match writer.waiting {
                Some((id, _, _)) => id,
                None => {
                    writer.next_request += 1;
                    writer.next_request - 1
                }
            };
            let target = writer.hint;
            let entry = Entry {
                session: writer.session,
                request_id: request,
                time_ms: self.now,
                caller: meshfs_core::namespace::Caller::system(),
                command,
            };
            let index = (target - 1) as usize;
            let accepted = match self.nodes[index].replica.as_mut() {
                Some(replica) if !self.isolated.contains(&target) => replica.propose(&entry),
                _ => Err(ProposeError::NotLeader(None)),
            };
            match accepted {
                Ok(()) => {
                    let patience = 15 + self.rng.below(45);
                    self.healing.writers[w].waiting = Some((request, target, self.now + patience));
                    self.drain(index);
                }
                Err(err) => {
                    let hint = match err {
                        ProposeError::NotLeader(Some(l)) => l,
                        _ => 1 + self.rng.below(n),
                    };
                    let retry = self.now + 5 + self.rng.below(20);
                    let writer = &mut self.healing.writers[w];
                    writer.hint = hint;
                    writer.waiting = Some((request, target, retry));
                }
            }
        }
    }

    /// The writer sends its block down the chain: every replica must be up (it waits, as a
    /// client retries, until they are); each stores it, then reports it.
    fn write(
        &mut self,
        w: usize,
        path: String,
        block: BlockDescriptor,
        replicas: &[NodeId],
        len: u64,
    ) {
        let all_up = replicas
            .iter()
            .all(|r| self.healing.dservers.iter().any(|d| d.id == u64::from(r.0) && d.up));
        if !all_up {
            self.healing.writers[w].idle_until = self.now + 20;
            return;
        }
        let k = key(&block);
        for r in replicas {
            let id = u64::from(r.0);
            if let Some(d) = self.dserver(id) {
                d.holds.insert(k, (block.version.0, len));
            }
            self.report_change(id, Some((k, (block.version.0, len))), None);
        }
        self.healing.writers[w].step = Some(Step::Commit { path, version: block.version, len });
    }

    fn answer_writer(&mut self, node: u64, entry: &Entry, outcome: &Outcome) {
        let seed = self.seed;
        let Some(w) = self.healing.writers.iter().position(|x| x.session == entry.session) else {
            return;
        };
        let writer = &self.healing.writers[w];
        let Some((request, waited_on, _)) = writer.waiting else { return };
        if request != entry.request_id || waited_on != node {
            return;
        }
        let Some(step) = writer.step.clone() else { return };
        let next = match (step, outcome) {
            (Step::Create { path, len, .. }, Outcome::Leased { block, replicas, .. }) => {
                Some(Step::Write { path, block: *block, replicas: replicas.clone(), len })
            }
            (Step::Commit { path, len, .. }, Outcome::Committed { block, .. }) => {
                self.healing.durable.insert(key(block), (block.version.0, len));
                self.healing.paths.insert(block.file.id.0, path.clone());
                self.healing.writers[w].mine.push(path);
                self.healing.stats.writes += 1;
                None
            }
            (Step::Remove { path }, Outcome::Removed { .. }) => {
                let ids: Vec<u32> = self
                    .healing
                    .paths
                    .iter()
                    .filter(|(_, p)| **p == path)
                    .map(|(id, _)| *id)
                    .collect();
                for id in ids {
                    self.healing.paths.remove(&id);
                    self.healing.durable.retain(|k, _| k.0 != id);
                }
                self.healing.removing.remove(&path);
                self.healing.stats.removes += 1;
                None
            }
            (step, other) => panic!("seed {seed}: writer {w} got {other:?} for {step:?}"),
        };
        let writer = &mut self.healing.writers[w];
        writer.waiting = None;
        writer.step = next;
        writer.idle_until = self.now + self.rng.below(30);
    }

    pub(super) fn writers_done(&self) -> bool {
        self.healing.writers.iter().all(|w| w.files_left == 0 && w.step.is_none())
    }

    /// Restarts every data-server (the end of the faults).
    pub(super) fn restart_dservers(&mut self) {
        for d in &mut self.healing.dservers {
            d.restart_at = d.restart_at.min(self.now);
        }
    }

    /// Whether the cluster is whole as the leader's namespace says: every committed block
    /// on its full set of up data-servers at its version, and no other replica anywhere.
    /// `None` when it is; otherwise what is not.
    pub(super) fn unhealed(&self) -> Option<String> {
        if self.healing.dservers.is_empty() {
            return None;
        }
        let leader =
            self.nodes.iter().filter_map(|n| n.replica.as_ref()).find(|r| r.is_leader())?;
        let ns = leader.namespace();
        let mut wanted: BTreeMap<(u32, u16), (u16, Vec<u64>)> = BTreeMap::new();
        for (&k, &(version, _)) in &self.healing.durable {
            let Some(block) = ns.block(k.0, k.1) else {
                return Some(format!("committed block {k:?} is not in the namespace"));
            };
            if block.descriptor.version.0 != version {
                return Some(format!(
                    "block {k:?} is at v{}, not v{version}",
                    block.descriptor.version.0
                ));
            }
            if block.replicas.len() != usize::from(block.replication) {
                return Some(format!("block {k:?} has replica set {:?}", block.replicas));
            }
            wanted.insert(k, (version, block.replicas.iter().map(|r| u64::from(r.0)).collect()));
        }
        for (k, (version, set)) in &wanted {
            for id in set {
                let d = self.healing.dservers.iter().find(|d| d.id == *id)?;
                if !d.up || d.holds.get(k).map(|h| h.0) != Some(*version) {
                    return Some(format!("data-server {id} lacks block {k:?} v{version}"));
                }
            }
        }
        for d in &self.healing.dservers {
            for (k, (version, _)) in &d.holds {
                let member =
                    wanted.get(k).is_some_and(|(v, set)| v == version && set.contains(&d.id));
                if !member {
                    return Some(format!("data-server {} still holds {k:?} v{version}", d.id));
                }
            }
        }
        None
    }

    /// What healing did, for the test's own checks.
    pub fn heal_stats(&self) -> &HealStats {
        &self.healing.stats
    }

    pub(super) fn heal_summary(&self) -> String {
        if self.healing.dservers.is_empty() {
            return String::new();
        }
        let s = &self.healing.stats;
        format!(
            ", {} blocks written, {} removed, {} data-server crashes ({} wiped), {} scans ({} held back by pacing), {} repair copies, {} deletes",
            s.writes, s.removes, s.dserver_crashes, s.wipes, s.scans, s.paced, s.copies, s.deletes
        )
    }
}
