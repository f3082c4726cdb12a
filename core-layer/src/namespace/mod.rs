//! The metadata state machine: directories, files, block lists; changed only by [`Entry`]s.
//!
//! Every meta-server applies the same committed entries in the same order with
//! [`Namespace::apply`] and so holds the same state, byte for byte ([`Namespace::snapshot`]
//! proves it). Applying is pure: the time, the placement of new blocks, the request's
//! identity and the caller it acts for all travel in the entry; nothing is read from a clock,
//! a config or the network here.
//!
//! Retries: every entry names the client session and request that made it. The namespace
//! remembers each session's last request and its outcome, so a request committed twice
//! (a client retrying across a leader change) is applied once and both answers agree: a
//! retried create gets its own file back, not "already exists".
//!
//! Memory, for the 1,000,000-file goal (at most 200 resident bytes per file): inode ids are
//! dense (taken in order; freed ones are reused only once all 2^32 have been given, see
//! [`Namespace::new_id`]), so inodes live in an `Inodes` table of fixed pages indexed by id
//! (no hashing, no rehash doubling, waste at most one page); a directory keeps its children
//! as `BTreeMap<Box<str>, u32>`; a file keeps its blocks in a boxed slice. Measured with
//! `cargo bench -p meshfs-core --bench namespace_memory` (see BENCHMARKS.md).
//!
//! Where things are:
//! - `mod.rs` (here): the state, queries of its books, and [`Namespace::apply`]: dedupe and
//!   dispatch of each [`Command`] to the module that owns it;
//! - [`entry`]: commands, entries and outcomes, and their log codecs;
//! - [`access`]: owners, groups and modes, the caller each entry carries, and the POSIX
//!   checks every command passes before it changes anything;
//! - `inode`: the paged inode table; `query`: lookups, stat and listings;
//! - `tree`: mkdir, create, rename, remove; `blocks`: expand, leases, commits, replica swaps
//!   and repairs, and the allocation they keep;
//! - `snapshot`: the snapshot and a reader per format; `invariants`: what must always hold.
//!
//! It must not know the network, disks, clocks or Raft: entries come in, outcomes go out.

pub mod access;
mod blocks;
pub mod entry;
mod inode;
mod invariants;
mod query;
mod snapshot;
mod tree;
mod xattr;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use meshfs_group::{ClientId, NodeId};

pub use self::access::{Caller, Owner};
pub use self::entry::{Command, Entry, NodeType, Outcome, SetTime};
pub use self::inode::{MAX_LINKS, Times};
pub use self::query::{BlockMeta, BlockView, DirEntry, FileMeta, Stat};
pub use self::snapshot::SnapshotError;
pub use self::tree::{NEW_DIR_MODE, NEW_FILE_MODE, PARENT_DIR_BITS};
pub use self::xattr::{
    MAX_XATTR_BYTES, MAX_XATTR_NAME, MAX_XATTR_VALUE, USER_PREFIX, XattrSet, valid_name,
};

use self::inode::{Dir, Inodes, Kind, Node};
use crate::descriptor::BlockVersion;
use crate::error::NsError;
use crate::locks::{LockResult, LockTable, Wake, WakeResult};
use crate::path::MeshPath;
use crate::session::SessionId;

/// The root directory's id.
pub const ROOT_ID: u32 = 1;
/// The highest inode id: ids run from `ROOT_ID + 1` to here.
pub const LAST_ID: u32 = u32::MAX - 1;
/// The root of a new namespace: anyone may make entries in it, and only their owners (or an
/// operator) may remove them, as in `/tmp`.
pub const ROOT_OWNER: Owner = Owner { uid: 0, gid: 0, mode: 0o1777 };
/// Sessions idle longer than this (by entry time) are forgotten.
pub const SESSION_TTL_MS: u64 = 60 * 60 * 1000;
/// Most request sessions one client has remembered at once (see `Namespace::remember`).
pub const MAX_SESSIONS_PER_CLIENT: u32 = 4096;

/// A request session's place in its client's eviction order: least recently used first.
type Age = (u64, u64, u64);

fn age(id: SessionId, session: &Session) -> Age {
    (session.last_time_ms, session.last_request, id.nonce)
}

/// Each client's request sessions, least recently used first.
fn session_ages(sessions: &HashMap<SessionId, Session>) -> HashMap<ClientId, BTreeSet<Age>> {
    let mut ages: HashMap<ClientId, BTreeSet<Age>> = HashMap::new();
    for (id, session) in sessions {
        ages.entry(id.client).or_default().insert(age(*id, session));
    }
    ages
}

/// Idle sessions are swept every this many applied entries.
const SESSION_SWEEP_EVERY: u64 = 4096;
/// How long a write lease lasts, by the leader's clock in its entry. Its token expires at the
/// same moment; until then no other session gets a lease on the block.
pub const LEASE_MS: u64 = 60_000;
/// Above this many inodes, debug builds check invariants every [`SESSION_SWEEP_EVERY`]
/// entries instead of after every one (the check is O(n)).
const INVARIANT_CHECK_EVERY_ENTRY_MAX: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Session {
    last_request: u64,
    last_time_ms: u64,
    outcome: Outcome,
}

/// The namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    nodes: Inodes,
    /// Bytes of blocks assigned to each data-server (derived from the block lists; not in
    /// snapshots, rebuilt on restore). The leader places new blocks by it.
    allocated: BTreeMap<NodeId, u64>,
    /// The next id never given yet; `LAST_ID + 1` once all have been.
    next_id: u32,
    /// Once every id has been given: where the search for a freed one starts (just past
    /// the last one reused).
    reuse_from: u32,
    sessions: HashMap<SessionId, Session>,
    /// Each client's request sessions in eviction order (derived from `sessions`; not in
    /// snapshots, rebuilt on restore), to hold each client to [`MAX_SESSIONS_PER_CLIENT`]
    /// in O(log n) a request.
    session_ages: HashMap<ClientId, BTreeSet<Age>>,
    /// Write leases in force (or run out but not yet replaced), by (file id, block index).
    leases: BTreeMap<(u32, u16), Lease>,
    /// Data-servers being drained: blocks move off them, none are placed on them.
    draining: BTreeSet<NodeId>,
    /// Lock sessions and locks.
    locks: LockTable,
    /// Extended attributes, by inode (only inodes that have some).
    xattrs: BTreeMap<u32, xattr::Xattrs>,
    applied: u64,
}

/// A write lease on one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lease {
    holder: SessionId,
    /// The version the holder writes.
    version: BlockVersion,
    expires_ms: u64,
}

impl Default for Namespace {
    fn default() -> Namespace {
        Namespace::new()
    }
}

pub(super) fn path_str(path: &MeshPath) -> String {
    path.as_str().to_string()
}

impl Namespace {
    /// An empty namespace: just `/`.
    pub fn new() -> Namespace {
        let mut nodes = Inodes::default();
        nodes.insert(
            ROOT_ID,
            Node {
                kind: Kind::Dir(Dir::empty(ROOT_ID)),
                owner: ROOT_OWNER,
                times: Times::default(),
            },
        );
        Namespace {
            nodes,
            allocated: BTreeMap::new(),
            next_id: ROOT_ID + 1,
            reuse_from: ROOT_ID + 1,
            sessions: HashMap::new(),
            session_ages: HashMap::new(),
            leases: BTreeMap::new(),
            draining: BTreeSet::new(),
            locks: LockTable::new(),
            xattrs: BTreeMap::new(),
            applied: 0,
        }
    }

    /// Bytes of blocks the namespace assigns to each data-server.
    pub fn allocated(&self) -> &BTreeMap<NodeId, u64> {
        &self.allocated
    }

    /// Data-servers marked draining.
    pub fn draining(&self) -> &BTreeSet<NodeId> {
        &self.draining
    }

    /// Lock sessions and locks.
    pub fn lock_table(&self) -> &LockTable {
        &self.locks
    }

    /// Whether block `index` of file `file` has a write lease in force at `now_ms`.
    pub fn leased(&self, file: u32, index: u16, now_ms: u64) -> bool {
        self.leases.get(&(file, index)).is_some_and(|l| now_ms < l.expires_ms)
    }

    /// Entries applied so far.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Files and directories, the root included.
    pub fn inode_count(&self) -> usize {
        self.nodes.len()
    }

    // ---- applying entries ----

    /// Applies one committed entry. Deterministic: same state and entry, same result.
    ///
    /// Never panics: an entry that hits a bug fails with [`NsError::Internal`] on every
    /// replica alike (the same code meets the same state), rather than stopping each of
    /// them on every replay of the log, for good.
    pub fn apply(&mut self, entry: &Entry) -> Outcome {
        self.applied += 1;
        let applied =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.apply_once(entry)));
        let outcome = applied.unwrap_or_else(|panic| {
            Outcome::Failed(NsError::Internal(crate::error::panic_text(&*panic)))
        });
        if self.applied.is_multiple_of(SESSION_SWEEP_EVERY) {
            self.sweep_sessions(entry.time_ms);
        }
        if cfg!(debug_assertions)
            && (self.nodes.len() <= INVARIANT_CHECK_EVERY_ENTRY_MAX
                || self.applied.is_multiple_of(SESSION_SWEEP_EVERY))
        {
            self.check_invariants();
        }
        outcome
    }

    fn apply_once(&mut self, entry: &Entry) -> Outcome {
        // Idempotent by nature, and sent beside the session's other requests: no dedupe.
        match &entry.command {
            Command::KeepAlive => {
                return match self.locks.keep_alive(entry.session, entry.time_ms) {
                    Ok(expires_ms) => Outcome::KeptAlive { expires_ms },
                    Err(err) => Outcome::Failed(err),
                };
            }
            Command::Clock { expire } => {
                let wakes = self.locks.clock(expire, entry.time_ms);
                self.settle_waits(&wakes);
                return Outcome::Woke { wakes };
            }
            Command::RevokeClient { client } => {
                let wakes = self.locks.revoke(*client, entry.time_ms);
                self.settle_waits(&wakes);
                return Outcome::Woke { wakes };
            }
            _ => {}
        }
        if let Some(session) = self.sessions.get(&entry.session) {
            if entry.request_id == session.last_request {
                return session.outcome.clone();
            }
            if entry.request_id < session.last_request {
                return Outcome::Failed(NsError::Superseded {
                    request_id: entry.request_id,
                    last: session.last_request,
                });
            }
        }
        let caller = &entry.caller;
        let outcome = match self.execute(
            &entry.command,
            entry.session,
            entry.request_id,
            entry.time_ms,
            caller,
        ) {
            Ok(outcome) => outcome,
            Err(err) => Outcome::Failed(err),
        };
        let remembered = match &outcome {
            // The wakes were for other requests, answered once.
            Outcome::Woke { .. } => Outcome::Woke { wakes: Vec::new() },
            other => other.clone(),
        };
        let session = Session {
            last_request: entry.request_id,
            last_time_ms: entry.time_ms,
            outcome: remembered,
        };
        self.remember(entry.session, session);
        if let Outcome::Woke { wakes } = &outcome {
            self.settle_waits(wakes);
        }
        outcome
    }

    /// A wait that ended is its request's outcome now: a retry of the request (a client
    /// that reached a new leader) gets how it ended, not "queued".
    fn settle_waits(&mut self, wakes: &[Wake]) {
        for wake in wakes {
            let Some(session) = self.sessions.get_mut(&wake.session) else { continue };
            if session.last_request != wake.request_id {
                continue;
            }
            let path = path_str(&wake.path);
            session.outcome = match wake.result {
                WakeResult::Granted { sequencer } => Outcome::LockGranted { sequencer },
                WakeResult::TimedOut => Outcome::Failed(NsError::LockTimeout(path)),
                WakeResult::Cancelled => Outcome::Failed(NsError::LockCancelled(path)),
                WakeResult::SessionEnded => {
                    Outcome::Failed(NsError::SessionExpired { client: wake.session.client.0 })
                }
            };
        }
    }

    fn sweep_sessions(&mut self, now_ms: u64) {
        let ages = &mut self.session_ages;
        self.sessions.retain(|id, s| {
            let live = now_ms.saturating_sub(s.last_time_ms) <= SESSION_TTL_MS;
            if !live && let Some(client) = ages.get_mut(&id.client) {
                client.remove(&age(*id, s));
            }
            live
        });
        ages.retain(|_, client| !client.is_empty());
    }

    /// Records a request session's latest request. A client may name any number of
    /// sessions (the nonce is its choice): past [`MAX_SESSIONS_PER_CLIENT`] its least
    /// recently used one is forgotten, so a flood of sessions costs that client its own
    /// oldest retries' exactly-once, and nobody else anything.
    fn remember(&mut self, id: SessionId, session: Session) {
        let ages = self.session_ages.entry(id.client).or_default();
        ages.insert(age(id, &session));
        if let Some(before) = self.sessions.insert(id, session) {
            ages.remove(&age(id, &before));
            return;
        }
        if ages.len() <= MAX_SESSIONS_PER_CLIENT as usize {
            return;
        }
        // The oldest but the one just used (entry times come from whichever leader wrote
        // them, so the newest need not sort last).
        let oldest = ages.iter().find(|(_, _, nonce)| *nonce != id.nonce).copied();
        if let Some(oldest) = oldest {
            ages.remove(&oldest);
            self.sessions.remove(&SessionId { client: id.client, nonce: oldest.2 });
        }
    }

    /// An id for a new inode, and the version a file made with it starts at.
    ///
    /// Ids never given come first, in order, each starting at version 1 (so every log ever
    /// written replays as it did). Once all of them have been given, freed ids are reused,
    /// in turn from just past the last one reused (an id comes back as late as it can, after
    /// every other free one), and a file with a reused id starts above every version a
    /// file of its page ever reached: NFS's generation numbers, so a descriptor
    /// (id, version) never names two files. A page whose files used up every version gives
    /// no id back.
    pub(super) fn new_id(&mut self) -> Result<(u32, u32), NsError> {
        if self.next_id <= LAST_ID {
            let id = self.next_id;
            self.next_id += 1;
            return Ok((id, 1));
        }
        let from = self.reuse_from;
        let id = self
            .nodes
            .free_in(from, self.next_id)
            .or_else(|| self.nodes.free_in(ROOT_ID + 1, from))
            .ok_or(NsError::OutOfIds)?;
        self.reuse_from = if id >= LAST_ID { ROOT_ID + 1 } else { id + 1 };
        let (page, _) = Inodes::locate(id);
        Ok((id, self.nodes.mark(page) + 1))
    }

    /// `count` distinct ids for inodes made together, or none at all (and nothing changed)
    /// when there are not that many free.
    pub(super) fn new_ids(&mut self, count: usize) -> Result<Vec<u32>, NsError> {
        let (next_id, reuse_from) = (self.next_id, self.reuse_from);
        let mut ids = Vec::with_capacity(count);
        let mut reused = BTreeSet::new();
        for _ in 0..count {
            // Ids handed out here are not in the table yet, so a search that went all the
            // way round would find the first reused one again.
            let fresh = self.next_id <= LAST_ID;
            match self.new_id() {
                Ok((id, _)) if fresh || reused.insert(id) => ids.push(id),
                _ => {
                    (self.next_id, self.reuse_from) = (next_id, reuse_from);
                    return Err(NsError::OutOfIds);
                }
            }
        }
        Ok(ids)
    }

    fn execute(
        &mut self,
        command: &Command,
        session: SessionId,
        request_id: u64,
        now: u64,
        caller: &Caller,
    ) -> Result<Outcome, NsError> {
        self.authorize(command, caller)?;
        match command {
            Command::Mkdir { path, parents, mode } => {
                let mode = mode.unwrap_or(tree::NEW_DIR_MODE);
                self.mkdir(path, *parents, mode, now, caller)
            }
            Command::CreateFile { path, replication, block_size, mode } => {
                let mode = mode.unwrap_or(tree::NEW_FILE_MODE);
                self.create_file(path, *replication, *block_size, mode, now, caller)
            }
            Command::ExpandFile { path, size, first_block, placement } => {
                self.expand(path, *size, *first_block, placement, now)
            }
            Command::CreateWrite { path, replication, block_size, size, placement, mode } => {
                if *size == 0 || *size > u64::from(*block_size) {
                    return Err(NsError::BadSize {
                        path: path_str(path),
                        size: *size,
                        block_size: *block_size,
                    });
                }
                let mode = mode.unwrap_or(tree::NEW_FILE_MODE);
                self.create_file(path, *replication, *block_size, mode, now, caller)?;
                let placement = std::slice::from_ref(placement);
                let leased = self
                    .expand(path, *size, 0, placement, now)
                    .and_then(|_| self.lease(path, 0, session, now));
                if leased.is_err() {
                    // Deterministic on every replica: the new file goes again.
                    self.remove(path, false, now).expect("the file was just made");
                }
                leased
            }
            Command::WriteLease { path, index } => self.lease(path, *index, session, now),
            Command::CommitWrite { path, index, version } => {
                self.commit_write(path, *index, *version, session, now)
            }
            Command::SwapReplica { path, index, failed, replacement } => {
                self.swap_replica(path, *index, *failed, *replacement, session, now)
            }
            Command::ReplaceReplica { file, index, version, remove, add } => {
                self.replace_replica(*file, *index, *version, *remove, *add, now)
            }
            Command::SetDraining { server, draining } => {
                if *draining {
                    self.draining.insert(*server);
                } else {
                    self.draining.remove(server);
                }
                Ok(Outcome::Draining { server: *server, draining: *draining })
            }
            Command::Rename { from, to, replace } => self.rename(from, to, *replace, now),
            Command::Remove { path, recursive } => self.remove(path, *recursive, now),
            Command::Link { from, to } => self.link(from, to, now),
            Command::SetXattr { path, name, value, how } => {
                self.set_xattr(path, name, value, *how, now)
            }
            Command::RemoveXattr { path, name } => self.remove_xattr(path, name, now),
            Command::OpenSession { lease_ms, lock_delay_ms } => {
                let open = self.locks.sessions_of(session.client);
                if self.locks.session(session).is_none()
                    && open >= crate::locks::MAX_LOCK_SESSIONS_PER_CLIENT
                {
                    return Err(NsError::TooMany(format!(
                        "client {} has {open} lock sessions open, the most one may; close some",
                        session.client.0
                    )));
                }
                let expires_ms = self.locks.open(session, *lease_ms, *lock_delay_ms, now);
                let lock_delay_ms = *lock_delay_ms;
                Ok(Outcome::SessionOpened { lease_ms: *lease_ms, lock_delay_ms, expires_ms })
            }
            Command::CloseSession => {
                if self.locks.session(session).is_none() {
                    return Err(NsError::SessionExpired { client: session.client.0 });
                }
                Ok(Outcome::Woke { wakes: self.locks.end_session(session, false, now) })
            }
            Command::Lock { path, mode, wait_ms } => {
                match self.locks.lock(session, request_id, path, *mode, *wait_ms, now)? {
                    LockResult::Granted(sequencer) => Ok(Outcome::LockGranted { sequencer }),
                    LockResult::Queued => Ok(Outcome::LockQueued),
                }
            }
            Command::Unlock { path } => {
                Ok(Outcome::Woke { wakes: self.locks.unlock(session, path, now)? })
            }
            Command::Chmod { path, mode } => {
                self.set_owner(path, now, |owner| owner.mode = *mode & access::MODE_BITS)
            }
            Command::SetTimes { path, atime, mtime } => self.set_times(path, *atime, *mtime, now),
            Command::Truncate { path, size } => self.truncate(path, *size, now),
            Command::MakeNode { path, kind, target, rdev, mode } => {
                self.make_node(path, *kind, target, *rdev, *mode, now, caller)
            }
            Command::Chown { path, uid, gid } => self.set_owner(path, now, |owner| {
                owner.uid = *uid;
                owner.gid = *gid;
            }),
            Command::KeepAlive | Command::Clock { .. } | Command::RevokeClient { .. } => {
                unreachable!("applied before deduplication")
            }
        }
    }
}

pub(super) fn parent_text(walked: &str) -> String {
    walked.rsplit_once('/').map_or("/", |(p, _)| if p.is_empty() { "/" } else { p }).to_string()
}
