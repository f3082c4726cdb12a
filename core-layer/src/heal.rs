//! The repair planner: from the namespace and the data-servers' reports, what to copy where
//! and what to delete, so that every block keeps its replication factor. Pure logic: the
//! leader meta-server runs it every scan and carries out the plan.
//!
//! Per written block, against its committed version `v`:
//!
//! - A replica is *good* on a data-server that is up, has a complete report, and holds `v`
//!   (or a newer version still being written, which keeps `v` beside it). Only holders of
//!   exactly `v` serve as copy sources.
//! - A member of the replica set that is up but lacks a good copy (never had it, stale,
//!   set aside as damaged) is refilled in place: a good copy goes to it, the set is unchanged.
//! - A member that is lost (down past the grace period) or draining is replaced: a good copy
//!   goes to a data-server outside the set, and then the set changes (a Raft entry).
//! - A member that is down but within the grace period is waited for.
//! - Copies of a block held outside its set (stale, moved away, drained) are deleted once
//!   the set holds enough good replicas; copies of blocks that no longer exist are orphans,
//!   deleted by the leader after a safety delay.
//! - Blocks never written are held nowhere: a lost or draining member just leaves the set.
//!
//! Blocks with the fewest good replicas are repaired first. Every data-server takes part in
//! at most [`Limits::tasks_per_server`] copies at a time (as source or target), so that
//! repair never starves clients; no data-server is ever given a second replica of a block.
//! When nothing needs repair and the used fractions of the data-servers differ by more than
//! [`Limits::balance_margin`], blocks move from the fullest to the emptiest, copy first and
//! set change second, so a block never has fewer good replicas than its factor.
//!
//! It must not know the network, disks or clocks: the leader's healer (`meshfs_mserver::heal`)
//! feeds it reports and the time, and carries out its plan.

use std::collections::{BTreeMap, HashMap};

use meshfs_group::NodeId;

use crate::descriptor::{BlockDescriptor, BlockVersion, FileDescriptor, FileId};
use crate::namespace::{BlockView, Namespace};

/// Replicas a data-server reports: (file id, block index) -> (version, valid bytes).
pub type Holdings = HashMap<(u32, u16), (u16, u64)>;

/// A data-server's state as the leader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// Its link is up and its last full report is complete.
    Up,
    /// Down (or its report incomplete) for less than the grace period: waited for.
    Down,
    /// Down for longer than the grace period: its replicas are replaced.
    Lost,
}

/// One data-server, for the planner.
#[derive(Debug, Clone, Copy)]
pub struct ServerView<'a> {
    /// Its id.
    pub id: NodeId,
    /// Up, down or lost.
    pub state: ServerState,
    /// Marked draining: its blocks move off, none move on.
    pub draining: bool,
    /// Bytes it may store.
    pub capacity: u64,
    /// Bytes it uses.
    pub used: u64,
    /// The replicas it reports (meaningful when up).
    pub holds: &'a Holdings,
}

/// Pacing of repair work.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Copies a data-server takes part in at once, as source or target.
    pub tasks_per_server: usize,
    /// Rebalance when the used fractions of two data-servers differ by more than this.
    pub balance_margin: f64,
}

/// A copy under way (the planner must not start another for its block, and counts it
/// against its servers' limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InFlight {
    /// The block's (file id, index).
    pub block: (u32, u16),
    /// Where the copy comes from (`None` for a block never written).
    pub source: Option<NodeId>,
    /// Where it goes.
    pub target: NodeId,
    /// The member of the set it replaces, if any.
    pub replaces: Option<NodeId>,
    /// Bytes it copies.
    pub len: u64,
}

/// Why a copy is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// The block has fewer good replicas than its factor.
    Repair,
    /// A member of its set is draining.
    Drain,
    /// Its data-server is fuller than the others.
    Balance,
}

/// One copy to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyTask {
    /// The block at its committed version.
    pub block: BlockDescriptor,
    /// Its file's block size.
    pub block_size: u32,
    /// Valid bytes to copy.
    pub len: u64,
    /// A data-server holding it at exactly that version; `None` when the block was never
    /// written and only its set changes.
    pub source: Option<NodeId>,
    /// The data-server receiving it.
    pub target: NodeId,
    /// The member of the set the target replaces (`None`: the target is a member missing
    /// its good copy, refilled in place).
    pub replaces: Option<NodeId>,
    /// Why.
    pub reason: Reason,
}

impl CopyTask {
    /// What the leader tracks while it is under way.
    pub fn in_flight(&self) -> InFlight {
        InFlight {
            block: (self.block.file.id.0, self.block.index),
            source: self.source,
            target: self.target,
            replaces: self.replaces,
            len: self.len,
        }
    }
}

/// A replica to delete: data-server `server` holds `block` at this version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delete {
    /// The data-server.
    pub server: NodeId,
    /// The block at the version it holds.
    pub block: BlockDescriptor,
}

/// Counts of blocks by health (the type status replies and fsck carry).
pub use crate::wire::HealthCounts as Health;

impl Health {
    /// Counts one block; whether it is short of good replicas (missing or under-replicated).
    pub fn count(&mut self, block: &BlockHealth, repairing: bool) -> bool {
        self.repairing += u64::from(repairing);
        if block.missing() {
            self.missing += 1;
        } else if block.under_replicated() {
            self.under_replicated += 1;
        } else {
            self.healthy += 1;
            return false;
        }
        true
    }
}

/// What one scan decided.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Copies to start, most urgent first.
    pub copies: Vec<CopyTask>,
    /// Replicas outside their block's set, safe to delete now.
    pub deletes: Vec<Delete>,
    /// Replicas of blocks that do not exist: delete after the safety delay.
    pub orphans: Vec<Delete>,
    /// The cluster's blocks by health.
    pub health: Health,
}

/// The health of one block: its good replicas in the set, and whether any copy exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockHealth {
    /// Copies wanted.
    pub wanted: u8,
    /// Members of the set holding a good copy.
    pub good: Vec<NodeId>,
    /// Data-servers holding exactly the committed version (in the set or not).
    pub sources: Vec<NodeId>,
    /// Never written: nothing to hold.
    pub unwritten: bool,
}

impl BlockHealth {
    /// Whether no good replica is known.
    pub fn missing(&self) -> bool {
        !self.unwritten && self.good.is_empty() && self.sources.is_empty()
    }

    /// Whether it has fewer good replicas than wanted (but some).
    pub fn under_replicated(&self) -> bool {
        !self.unwritten && !self.missing() && self.good.len() < usize::from(self.wanted)
    }
}

/// Whether `held` counts as a good copy of a block committed at `committed`.
fn is_good(held: u16, committed: BlockVersion) -> bool {
    let held = BlockVersion(held);
    held == committed || held.is_newer_than(committed)
}

/// The health of one block against the servers' reports.
pub fn block_health(
    block: &BlockView<'_>,
    servers: &BTreeMap<NodeId, ServerView<'_>>,
) -> BlockHealth {
    let key = (block.descriptor.file.id.0, block.descriptor.index);
    let version = block.descriptor.version;
    let up_holding = |id: &NodeId| {
        servers
            .get(id)
            .filter(|s| s.state == ServerState::Up)
            .and_then(|s| s.holds.get(&key).copied())
    };
    let good = block
        .replicas
        .iter()
        .copied()
        .filter(|id| up_holding(id).is_some_and(|(v, _)| is_good(v, version)))
        .collect();
    let sources = servers
        .values()
        .filter(|s| s.state == ServerState::Up)
        .filter(|s| s.holds.get(&key).is_some_and(|&(v, _)| v == version.0))
        .map(|s| s.id)
        .collect();
    BlockHealth { wanted: block.replication, good, sources, unwritten: !block.written() }
}

/// Per-server bookkeeping while planning.
#[derive(Debug, Clone, Copy)]
struct Load {
    tasks: usize,
    /// Bytes used, with copies under way counted where they will land.
    projected: u64,
    capacity: u64,
}

impl Load {
    fn fraction(&self) -> f64 {
        if self.capacity == 0 { 1.0 } else { self.projected as f64 / self.capacity as f64 }
    }
}

/// Plans one scan.
pub fn plan(
    namespace: &Namespace,
    now_ms: u64,
    servers: &BTreeMap<NodeId, ServerView<'_>>,
    in_flight: &[InFlight],
    limits: Limits,
) -> Plan {
    let mut loads: BTreeMap<NodeId, Load> = servers
        .values()
        .map(|s| (s.id, Load { tasks: 0, projected: s.used, capacity: s.capacity }))
        .collect();
    let mut busy_blocks: HashMap<(u32, u16), Vec<NodeId>> = HashMap::new();
    for task in in_flight {
        count_task(&mut loads, task);
        busy_blocks.entry(task.block).or_default().push(task.target);
    }
    let mut plan = Plan::default();
    // Candidates by urgency: (good replicas, reason, file id, index), with what to do.
    let mut wanted: Vec<(usize, Reason, CopyTask)> = Vec::new();
    // Replicas each server holds as a member of their block's set: a server holding no
    // others has nothing to delete, and its holdings need no second look.
    let mut as_member: HashMap<NodeId, usize> = HashMap::new();
    for block in namespace.blocks() {
        let key = (block.descriptor.file.id.0, block.descriptor.index);
        let busy = busy_blocks.contains_key(&key);
        // The common case, without allocating: every member up, not draining, holding it.
        if settled(&block, servers) {
            plan.health.healthy += 1;
            plan.health.repairing += u64::from(busy);
            if block.written() {
                for id in block.replicas {
                    *as_member.entry(*id).or_default() += 1;
                }
            }
            continue;
        }
        for id in block.replicas {
            if servers.get(id).is_some_and(|s| s.holds.contains_key(&key)) {
                *as_member.entry(*id).or_default() += 1;
            }
        }
        let health = block_health(&block, servers);
        plan.health.count(&health, busy);
        if busy || namespace.leased(key.0, key.1, now_ms) {
            continue;
        }
        let len = health
            .sources
            .first()
            .and_then(|s| servers[s].holds.get(&key))
            .map_or(0, |&(_, len)| len);
        for &member in block.replicas.iter() {
            let server = servers.get(&member);
            let state = server.map_or(ServerState::Lost, |s| s.state);
            let draining = server.is_some_and(|s| s.draining);
            // A block never written is held nowhere: every member is as good as it gets.
            let good = health.unwritten || health.good.contains(&member);
            let (replaces, reason) = match (state, good, draining) {
                (ServerState::Down, _, _) => continue,
                (ServerState::Up, true, false) => continue,
                (ServerState::Up, false, false) => (None, Reason::Repair),
                (ServerState::Up, true, true) => (Some(member), Reason::Drain),
                (ServerState::Up, false, true) | (ServerState::Lost, _, _) => {
                    (Some(member), Reason::Repair)
                }
            };
            if !health.unwritten && health.sources.is_empty() {
                continue; // nothing to copy from: missing until a holder comes back
            }
            let task = CopyTask {
                block: block.descriptor,
                block_size: block.block_size,
                len,
                source: None,
                target: replaces.map_or(member, |_| NodeId(0)),
                replaces,
                reason,
            };
            wanted.push((health.good.len(), reason, task));
        }
    }
    wanted.sort_by_key(|(good, reason, t)| (*reason, *good, t.block.file.id.0, t.block.index));
    let mut started: HashMap<(u32, u16), Vec<NodeId>> = HashMap::new();
    for (_, _, mut task) in wanted {
        let key = (task.block.file.id.0, task.block.index);
        let Some(block) = namespace.block(key.0, key.1) else { continue };
        let health = block_health(&block, servers);
        if task.block.version != BlockVersion::UNWRITTEN {
            // The least busy holder of exactly this version, with room for another task.
            let source = health
                .sources
                .iter()
                .filter(|id| loads.get(id).is_some_and(|l| l.tasks < limits.tasks_per_server))
                .min_by_key(|id| (loads[id].tasks, **id))
                .copied();
            let Some(source) = source else { continue };
            task.source = Some(source);
        }
        if task.replaces.is_some() {
            let taken = started.get(&key);
            let Some(target) = choose_target(servers, &loads, &block, taken, task.len, limits)
            else {
                continue;
            };
            task.target = target;
        } else if loads.get(&task.target).is_none_or(|l| l.tasks >= limits.tasks_per_server) {
            continue;
        }
        count_task(&mut loads, &task.in_flight());
        started.entry(key).or_default().push(task.target);
        plan.copies.push(task);
    }
    let repairs_pending = plan.health.under_replicated > 0
        || plan.copies.iter().any(|t| t.reason != Reason::Balance)
        || in_flight.iter().any(|t| t.replaces.is_none());
    if !repairs_pending {
        balance(namespace, now_ms, servers, &busy_blocks, &mut loads, limits, &mut plan);
    }
    // Copies outside their block's set go once the set holds enough; copies of blocks that
    // do not exist are orphans. One pass over what each server holds.
    for server in servers.values().filter(|s| s.state == ServerState::Up) {
        if as_member.get(&server.id).copied().unwrap_or(0) == server.holds.len() {
            continue;
        }
        for (&(file, index), &(version, _)) in server.holds {
            let held = BlockVersion(version);
            let Some(block) = namespace.block(file, index) else {
                let block = BlockDescriptor {
                    file: FileDescriptor { id: FileId(file), version: 0 },
                    index,
                    version: held,
                };
                plan.orphans.push(Delete { server: server.id, block });
                continue;
            };
            if block.replicas.contains(&server.id)
                || busy_blocks.get(&(file, index)).is_some_and(|t| t.contains(&server.id))
            {
                continue;
            }
            let whole = !block.written() || good_members(&block, servers) >= block.replication;
            if whole {
                let mut descriptor = block.descriptor;
                descriptor.version = held;
                plan.deletes.push(Delete { server: server.id, block: descriptor });
            }
        }
    }
    let order = |d: &Delete| (d.server, d.block.file.id.0, d.block.index);
    plan.deletes.sort_unstable_by_key(order);
    plan.orphans.sort_unstable_by_key(order);
    plan
}

/// Whether every member of the block's set is up, not draining, and (if it was ever
/// written) holds a good copy, and the set is as large as wanted.
fn settled(block: &BlockView<'_>, servers: &BTreeMap<NodeId, ServerView<'_>>) -> bool {
    let key = (block.descriptor.file.id.0, block.descriptor.index);
    block.replicas.len() >= usize::from(block.replication)
        && block.replicas.iter().all(|id| {
            servers.get(id).is_some_and(|s| {
                s.state == ServerState::Up
                    && !s.draining
                    && (!block.written()
                        || s.holds
                            .get(&key)
                            .is_some_and(|&(v, _)| is_good(v, block.descriptor.version)))
            })
        })
}

/// Members of the block's set holding a good copy.
fn good_members(block: &BlockView<'_>, servers: &BTreeMap<NodeId, ServerView<'_>>) -> u8 {
    let key = (block.descriptor.file.id.0, block.descriptor.index);
    let good = block.replicas.iter().filter(|id| {
        servers.get(id).is_some_and(|s| {
            s.state == ServerState::Up
                && s.holds.get(&key).is_some_and(|&(v, _)| is_good(v, block.descriptor.version))
        })
    });
    good.count() as u8
}

/// A server's holdings in key order (plans are the same for the same reports).
fn sorted(holds: &Holdings) -> Vec<((u32, u16), (u16, u64))> {
    let mut held: Vec<_> = holds.iter().map(|(&k, &v)| (k, v)).collect();
    held.sort_unstable();
    held
}

/// A copy under way or just planned takes a task of its source and target, and moves its
/// bytes from the server it replaces to its target.
fn count_task(loads: &mut BTreeMap<NodeId, Load>, task: &InFlight) {
    for id in task.source.iter().chain([&task.target]) {
        if let Some(load) = loads.get_mut(id) {
            load.tasks += 1;
        }
    }
    if let Some(load) = loads.get_mut(&task.target) {
        load.projected += task.len;
    }
    if let Some(load) = task.replaces.and_then(|r| loads.get_mut(&r)) {
        load.projected = load.projected.saturating_sub(task.len);
    }
}

/// The emptiest eligible data-server for a new replica of `block`: up, not draining, not in
/// its set, holding no copy of it, not already receiving it, room for it, and a free task.
fn choose_target(
    servers: &BTreeMap<NodeId, ServerView<'_>>,
    loads: &BTreeMap<NodeId, Load>,
    block: &BlockView<'_>,
    taken: Option<&Vec<NodeId>>,
    len: u64,
    limits: Limits,
) -> Option<NodeId> {
    let key = (block.descriptor.file.id.0, block.descriptor.index);
    // A written block needs room for its bytes; one never written, for a whole block.
    let room = if block.written() { len } else { u64::from(block.block_size) };
    servers
        .values()
        .filter(|s| s.state == ServerState::Up && !s.draining)
        .filter(|s| !block.replicas.contains(&s.id) && !s.holds.contains_key(&key))
        .filter(|s| taken.is_none_or(|t| !t.contains(&s.id)))
        .filter(|s| {
            let load = loads[&s.id];
            load.tasks < limits.tasks_per_server
                && load.capacity.saturating_sub(load.projected) >= room
        })
        .min_by(|a, b| {
            let (fa, fb) = (loads[&a.id].fraction(), loads[&b.id].fraction());
            fa.total_cmp(&fb).then(a.id.cmp(&b.id))
        })
        .map(|s| s.id)
}

/// Moves blocks from the fullest data-server to the emptiest while their used fractions
/// differ by more than the margin and both have a free task.
fn balance(
    namespace: &Namespace,
    now_ms: u64,
    servers: &BTreeMap<NodeId, ServerView<'_>>,
    busy_blocks: &HashMap<(u32, u16), Vec<NodeId>>,
    loads: &mut BTreeMap<NodeId, Load>,
    limits: Limits,
    plan: &mut Plan,
) {
    let eligible: Vec<NodeId> = servers
        .values()
        .filter(|s| s.state == ServerState::Up && !s.draining && s.capacity > 0)
        .map(|s| s.id)
        .collect();
    if eligible.len() < 2 {
        return;
    }
    // One pass per source, fullest first; each source offers its blocks in key order.
    let mut order = eligible.clone();
    order.sort_by(|a, b| loads[b].fraction().total_cmp(&loads[a].fraction()).then(a.cmp(b)));
    let gap_from = |loads: &BTreeMap<NodeId, Load>, from: NodeId| {
        let emptiest = eligible
            .iter()
            .filter(|id| **id != from)
            .map(|id| loads[id].fraction())
            .fold(f64::INFINITY, f64::min);
        loads[&from].fraction() - emptiest
    };
    for from in order {
        // Sorting a server's holdings costs; only a server far enough above the emptiest
        // gives any.
        if gap_from(loads, from) <= limits.balance_margin {
            continue;
        }
        for (key, (version, len)) in sorted(servers[&from].holds) {
            let emptiest =
                eligible.iter().copied().filter(|id| *id != from).min_by(|a, b| {
                    loads[a].fraction().total_cmp(&loads[b].fraction()).then(a.cmp(b))
                });
            let Some(to) = emptiest else { return };
            let gap = loads[&from].fraction() - loads[&to].fraction();
            // Stop when moving this block would not narrow the gap.
            let step = len as f64 / loads[&from].capacity.max(1) as f64;
            if gap <= limits.balance_margin || step >= gap {
                break;
            }
            if loads[&from].tasks >= limits.tasks_per_server {
                break;
            }
            if busy_blocks.contains_key(&key) || namespace.leased(key.0, key.1, now_ms) {
                continue;
            }
            let Some(block) = namespace.block(key.0, key.1) else { continue };
            if block.descriptor.version.0 != version || !block.replicas.contains(&from) {
                continue;
            }
            let health = block_health(&block, servers);
            if health.good.len() < usize::from(block.replication) {
                continue;
            }
            let moving = plan
                .copies
                .iter()
                .filter(|t| (t.block.file.id.0, t.block.index) == key)
                .map(|t| t.target)
                .collect::<Vec<_>>();
            if !moving.is_empty() {
                continue;
            }
            let Some(target) = choose_target(servers, loads, &block, None, len, limits) else {
                continue;
            };
            let task = CopyTask {
                block: block.descriptor,
                block_size: block.block_size,
                len,
                source: Some(from),
                target,
                replaces: Some(from),
                reason: Reason::Balance,
            };
            count_task(loads, &task.in_flight());
            plan.copies.push(task);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::namespace::{Command, Entry, Outcome};
    use crate::path::MeshPath;
    use crate::session::SessionId;
    use meshfs_group::ClientId;

    const BS: u32 = 1 << 20;
    const GIB: u64 = 1 << 30;

    /// A namespace of `files` one-block files, each written (committed at version 2) on the
    /// replica sets `placement(i)` gives.
    fn namespace(files: u32, placement: impl Fn(u32) -> Vec<u32>) -> Namespace {
        let mut ns = Namespace::new();
        let session = SessionId { client: ClientId(1), nonce: 1 };
        let mut request = 0;
        let mut run = |ns: &mut Namespace, command: Command| {
            request += 1;
            ns.apply(&Entry {
                session,
                request_id: request,
                time_ms: 1_000,
                caller: crate::namespace::Caller::system(),
                command,
            })
        };
        for i in 0..files {
            let path = MeshPath::parse(&format!("/f{i:04}")).unwrap();
            let set = placement(i).into_iter().map(NodeId).collect::<Vec<_>>();
            let replication = set.len() as u8;
            let block_size = BS;
            let created = run(
                &mut ns,
                Command::CreateWrite {
                    path: path.clone(),
                    replication,
                    block_size,
                    size: 1000,
                    placement: set,
                    mode: None,
                },
            );
            let Outcome::Leased { block, .. } = created else { panic!("{created:?}") };
            let done =
                run(&mut ns, Command::CommitWrite { path, index: 0, version: block.version });
            assert!(matches!(done, Outcome::Committed { .. }), "{done:?}");
        }
        ns
    }

    /// What each server holds if every block is where its set says, at its version.
    fn holdings(ns: &Namespace, servers: &[u32]) -> BTreeMap<NodeId, Holdings> {
        let mut all: BTreeMap<NodeId, Holdings> =
            servers.iter().map(|&id| (NodeId(id), Holdings::new())).collect();
        for block in ns.blocks() {
            for id in block.replicas {
                all.entry(*id).or_default().insert(
                    (block.descriptor.file.id.0, block.descriptor.index),
                    (block.descriptor.version.0, 1000),
                );
            }
        }
        all
    }

    fn views<'a>(
        holds: &'a BTreeMap<NodeId, Holdings>,
        states: &[(u32, ServerState)],
    ) -> BTreeMap<NodeId, ServerView<'a>> {
        holds
            .iter()
            .map(|(&id, h)| {
                let state =
                    states.iter().find(|(s, _)| *s == id.0).map_or(ServerState::Up, |s| s.1);
                let used = h.values().map(|(_, len)| len).sum();
                (id, ServerView { id, state, draining: false, capacity: GIB, used, holds: h })
            })
            .collect()
    }

    fn block_ids(ns: &Namespace) -> Vec<(u32, u16)> {
        ns.blocks().map(|b| (b.descriptor.file.id.0, b.descriptor.index)).collect()
    }

    const LIMITS: Limits = Limits { tasks_per_server: 2, balance_margin: 0.1 };

    #[test]
    fn a_lost_server_is_replaced_fewest_good_first_within_the_task_limits() {
        // R=3 files on {4,5,6} (0..2) and R=2 files on {4,5} (2..4).
        let ns = namespace(4, |i| if i < 2 { vec![4, 5, 6] } else { vec![4, 5] });
        let mut holds = holdings(&ns, &[4, 5, 6, 7, 8]);
        // Node 5 lost one R=3 file's copy too: that file has only 1 good replica left.
        holds.get_mut(&NodeId(5)).unwrap().remove(&block_ids(&ns)[0]);
        let servers = views(&holds, &[(4, ServerState::Lost)]);
        let plan = plan(&ns, 0, &servers, &[], LIMITS);
        assert_eq!(
            plan.health,
            Health { healthy: 0, under_replicated: 4, missing: 0, repairing: 0 }
        );
        let first = plan.copies[0];
        assert_eq!((first.block.file.id.0, first.reason), (block_ids(&ns)[0].0, Reason::Repair));
        for task in &plan.copies {
            let block = ns.block(task.block.file.id.0, 0).unwrap();
            assert!(!block.replicas.contains(&task.target) || task.replaces.is_none());
            assert_ne!(task.source, Some(NodeId(4)), "never copy from a lost server");
            assert_ne!(task.target, NodeId(4));
        }
        // Never more than two tasks per server.
        let mut count: BTreeMap<NodeId, usize> = BTreeMap::new();
        for task in &plan.copies {
            for id in task.source.iter().chain([&task.target]) {
                *count.entry(*id).or_default() += 1;
            }
        }
        assert!(count.values().all(|&n| n <= 2), "{count:?}");
        // The 1-good block is refilled in place on 5 and replaced from 4: both first.
        let block0: Vec<_> =
            plan.copies.iter().filter(|t| t.block.file.id.0 == block_ids(&ns)[0].0).collect();
        assert_eq!(block0.len(), 2, "{plan:?}");
        assert!(block0.iter().any(|t| t.target == NodeId(5) && t.replaces.is_none()));
        assert!(block0.iter().any(|t| t.replaces == Some(NodeId(4))));
        let targets: Vec<NodeId> = block0.iter().map(|t| t.target).collect();
        assert_ne!(targets[0], targets[1], "never two replicas on one server");
    }

    #[test]
    fn under_way_copies_count_against_limits_and_are_not_started_twice() {
        let ns = namespace(3, |_| vec![4, 5]);
        let holds = holdings(&ns, &[4, 5, 6, 7]);
        let servers = views(&holds, &[(4, ServerState::Lost)]);
        let ids = block_ids(&ns);
        let in_flight = [InFlight {
            block: ids[0],
            source: Some(NodeId(5)),
            target: NodeId(6),
            replaces: Some(NodeId(4)),
            len: 1000,
        }];
        let plan = plan(&ns, 0, &servers, &in_flight, Limits { tasks_per_server: 2, ..LIMITS });
        assert_eq!(plan.health.repairing, 1);
        assert!(plan.copies.iter().all(|t| (t.block.file.id.0, t.block.index) != ids[0]));
        // Source 5 has one task already: one more at most.
        assert_eq!(plan.copies.len(), 1, "{plan:?}");
    }

    #[test]
    fn a_server_down_within_grace_is_waited_for_and_missing_blocks_are_counted() {
        let ns = namespace(2, |i| if i == 0 { vec![4, 5] } else { vec![6] });
        let holds = holdings(&ns, &[4, 5, 6, 7]);
        let servers = views(&holds, &[(4, ServerState::Down), (6, ServerState::Lost)]);
        let plan = plan(&ns, 0, &servers, &[], LIMITS);
        assert!(plan.copies.is_empty(), "{plan:?}");
        assert_eq!(
            plan.health,
            Health { healthy: 0, under_replicated: 1, missing: 1, repairing: 0 }
        );
    }

    #[test]
    fn stale_and_moved_copies_are_deleted_only_when_the_set_is_whole_and_orphans_are_named() {
        let ns = namespace(1, |_| vec![4, 5]);
        let mut holds = holdings(&ns, &[4, 5, 6, 7]);
        let id = block_ids(&ns)[0];
        holds.get_mut(&NodeId(6)).unwrap().insert(id, (1, 500)); // stale, outside the set
        holds.get_mut(&NodeId(7)).unwrap().insert((999, 0), (3, 10)); // no such block
        let servers = views(&holds, &[]);
        let p = plan(&ns, 0, &servers, &[], LIMITS);
        assert_eq!(p.deletes.len(), 1);
        assert_eq!((p.deletes[0].server, p.deletes[0].block.version), (NodeId(6), BlockVersion(1)));
        assert_eq!(p.orphans.len(), 1);
        assert_eq!((p.orphans[0].server, p.orphans[0].block.file.id.0), (NodeId(7), 999));
        // With a member down, the set is not whole: the outside copy stays.
        let servers = views(&holds, &[(5, ServerState::Down)]);
        assert!(plan(&ns, 0, &servers, &[], LIMITS).deletes.is_empty());
    }

    #[test]
    fn a_stale_member_is_refilled_in_place() {
        let ns = namespace(1, |_| vec![4, 5]);
        let mut holds = holdings(&ns, &[4, 5, 6]);
        let id = block_ids(&ns)[0];
        holds.get_mut(&NodeId(5)).unwrap().insert(id, (1, 1000));
        let servers = views(&holds, &[]);
        let plan = plan(&ns, 0, &servers, &[], LIMITS);
        assert_eq!(plan.copies.len(), 1);
        let task = plan.copies[0];
        assert_eq!((task.source, task.target, task.replaces), (Some(NodeId(4)), NodeId(5), None));
        assert_eq!(plan.health.under_replicated, 1);
    }

    #[test]
    fn a_block_never_written_is_left_alone_unless_a_member_is_lost() {
        let mut ns = namespace(0, |_| vec![]);
        let session = SessionId { client: ClientId(1), nonce: 1 };
        let path = MeshPath::parse("/empty").unwrap();
        let mut run = |command: Command, request: u64| {
            ns.apply(&Entry {
                session,
                request_id: request,
                time_ms: 1_000,
                caller: crate::namespace::Caller::system(),
                command,
            })
        };
        run(
            Command::CreateFile { path: path.clone(), replication: 2, block_size: BS, mode: None },
            1,
        );
        let placement = vec![vec![NodeId(4), NodeId(5)]];
        run(Command::ExpandFile { path, size: 10, first_block: 0, placement }, 2);
        let holds = holdings(&ns, &[4, 5, 6]);
        let servers = views(&holds, &[]);
        let p = plan(&ns, 0, &servers, &[], LIMITS);
        assert!(p.copies.is_empty(), "nothing to copy and nobody lost: {p:?}");
        assert_eq!(p.health.healthy, 1);
        let servers = views(&holds, &[(5, ServerState::Lost)]);
        let p = plan(&ns, 0, &servers, &[], LIMITS);
        assert_eq!(p.copies.len(), 1, "{p:?}");
        let task = p.copies[0];
        assert_eq!((task.source, task.target, task.replaces), (None, NodeId(6), Some(NodeId(5))));
    }

    #[test]
    fn draining_moves_blocks_off_and_never_onto_the_server() {
        let ns = namespace(2, |_| vec![4, 5]);
        let holds = holdings(&ns, &[4, 5, 6, 7]);
        let mut servers = views(&holds, &[]);
        servers.get_mut(&NodeId(4)).unwrap().draining = true;
        let plan = plan(&ns, 0, &servers, &[], LIMITS);
        assert_eq!(plan.copies.len(), 2, "{plan:?}");
        for task in &plan.copies {
            assert_eq!((task.replaces, task.reason), (Some(NodeId(4)), Reason::Drain));
            assert!(task.target == NodeId(6) || task.target == NodeId(7));
        }
        assert_ne!(plan.copies[0].target, plan.copies[1].target, "spread over the emptiest");
        assert_eq!(plan.health.healthy, 2, "draining blocks are still healthy");
    }

    #[test]
    fn an_empty_server_receives_blocks_until_the_gap_is_within_the_margin() {
        let ns = namespace(40, |i| vec![4 + i % 2, 6]);
        let holds = holdings(&ns, &[4, 5, 6, 7]);
        let mut servers = views(&holds, &[]);
        for s in servers.values_mut() {
            s.capacity = 40_000; // 40 blocks of 1000 bytes: node 6 is full
        }
        let limits = Limits { tasks_per_server: 100, balance_margin: 0.1 };
        let plan = plan(&ns, 0, &servers, &[], limits);
        assert!(!plan.copies.is_empty());
        assert!(plan.copies.iter().all(|t| t.reason == Reason::Balance && t.target == NodeId(7)));
        let from_6 = plan.copies.iter().filter(|t| t.replaces == Some(NodeId(6))).count();
        // 6 held 40 (100%), 4 and 5 held 20 (50%), 7 none: after the plan, within 10 points.
        let mut used: BTreeMap<NodeId, i64> = [(4, 20), (5, 20), (6, 40), (7, 0)]
            .into_iter()
            .map(|(id, n)| (NodeId(id), n))
            .collect();
        for t in &plan.copies {
            *used.get_mut(&t.target).unwrap() += 1;
            *used.get_mut(&t.replaces.unwrap()).unwrap() -= 1;
        }
        let (max, min) = (used.values().max().unwrap(), used.values().min().unwrap());
        assert!(max - min <= 5, "{used:?} after {} moves ({from_6} from 6)", plan.copies.len());
        // Every move keeps the block whole: the target holds no copy and is outside the set.
        for t in &plan.copies {
            let block = ns.block(t.block.file.id.0, 0).unwrap();
            assert!(!block.replicas.contains(&t.target));
        }
    }

    #[test]
    fn nothing_is_balanced_while_repairs_are_pending() {
        let ns = namespace(10, |_| vec![4, 5]);
        let holds = holdings(&ns, &[4, 5, 6, 7]);
        let servers = views(&holds, &[(5, ServerState::Lost)]);
        let limits = Limits { tasks_per_server: 100, balance_margin: 0.0 };
        let plan = plan(&ns, 0, &servers, &[], limits);
        assert_eq!(plan.copies.len(), 10);
        assert!(plan.copies.iter().all(|t| t.reason == Reason::Repair));
    }
}
