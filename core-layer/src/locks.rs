//! Sessions and locks: a Chubby-style lock service inside the metadata state machine.
//!
//! A client opens a [`LockSession`] and keeps it alive with KeepAlive entries; each one moves
//! the session's lease end to the entry's time plus the lease length. The leader expires a
//! session whose lease ran out (with a [`Command::Clock`](crate::namespace::Command::Clock)
//! entry naming it); everything here is decided by committed entries and their times, so a
//! new leader has the same sessions, locks and queues as the old one.
//!
//! Locks are on paths (any valid path, whether or not a file is there), shared or exclusive:
//!
//! - A request is granted at once when nothing conflicts and nobody waits before it; else
//!   it fails (a try) or joins the lock's queue (a wait with a deadline). Queues are served
//!   in order: a waiting writer blocks readers that come after it, so writers never starve.
//! - A session holding a lock shared may take it shared again (counted); each unlock gives
//!   one back. Reentry never waits, even behind a writer: the writer waits for the reader.
//! - Every grant gets a sequencer, from one counter that only ever grows, so a program can
//!   hand it to a server that refuses anything older than what it has seen.
//! - When a session expires holding a lock, the lock is not granted again until its
//!   lock-delay has passed: a holder that was only cut off cannot clash with the next one.
//!   A closed session (a clean exit) releases its locks at once.
//!
//! Waiters learn their fate through [`Wake`]s, returned by the entry that decided it.
//!
//! It must not know time except as the entry times it is given, nor who proposes entries: the
//! leader's [`crate::lock_clock`] decides when time passes.

use std::collections::{BTreeMap, BTreeSet};

use meshfs_group::ClientId;
use meshfs_net::body::{BodyError, BodyReader, BodyWriter};

use crate::error::NsError;
use crate::path::MeshPath;
use crate::session::SessionId;

/// How a lock is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LockMode {
    /// Many holders at once (readers).
    Shared,
    /// One holder (a writer).
    Exclusive,
}

impl LockMode {
    /// Its wire byte.
    pub fn byte(self) -> u8 {
        match self {
            LockMode::Shared => 1,
            LockMode::Exclusive => 2,
        }
    }

    /// From its wire byte.
    pub fn from_byte(byte: u8) -> Result<LockMode, BodyError> {
        match byte {
            1 => Ok(LockMode::Shared),
            2 => Ok(LockMode::Exclusive),
            other => Err(BodyError::Invalid { field: "lock mode", value: u64::from(other) }),
        }
    }

    /// "shared" or "exclusive".
    pub fn name(self) -> &'static str {
        match self {
            LockMode::Shared => "shared",
            LockMode::Exclusive => "exclusive",
        }
    }
}

impl std::fmt::Display for LockMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A session's lease and what it holds or waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockSession {
    /// Lease length: a KeepAlive moves the end this far past its entry's time.
    pub lease_ms: u64,
    /// How long a lock stays ungranted after this session expires holding it.
    pub lock_delay_ms: u64,
    /// When the lease ends (leader clock, ms since the epoch).
    pub expires_ms: u64,
    /// Paths it holds or waits on.
    paths: BTreeSet<MeshPath>,
}

/// One holder of a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    /// The session.
    pub session: SessionId,
    /// How.
    pub mode: LockMode,
    /// Times taken (shared reentry); 1 for exclusive.
    pub count: u32,
    /// The sequencer of its grant.
    pub sequencer: u64,
}

impl Holder {
    /// Writes it (snapshots and the wire).
    pub fn write(&self, w: &mut BodyWriter) {
        self.session.write(w);
        w.u8(self.mode.byte()).u32(self.count).u64(self.sequencer);
    }

    /// Reads what [`Holder::write`] wrote.
    pub fn read(r: &mut BodyReader<'_>) -> Result<Holder, BodyError> {
        Ok(Holder {
            session: SessionId::read(r)?,
            mode: LockMode::from_byte(r.u8("holder mode")?)?,
            count: r.u32("hold count")?,
            sequencer: r.u64("sequencer")?,
        })
    }
}

/// A request waiting in a lock's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiting {
    /// The session.
    pub session: SessionId,
    /// Its request, answered when the wait ends.
    pub request_id: u64,
    /// The mode asked for.
    pub mode: LockMode,
    /// When it gives up (leader clock).
    pub deadline_ms: u64,
}

impl Waiting {
    /// Writes it (snapshots and the wire).
    pub fn write(&self, w: &mut BodyWriter) {
        self.session.write(w);
        w.u64(self.request_id).u8(self.mode.byte()).u64(self.deadline_ms);
    }

    /// Reads what [`Waiting::write`] wrote.
    pub fn read(r: &mut BodyReader<'_>) -> Result<Waiting, BodyError> {
        Ok(Waiting {
            session: SessionId::read(r)?,
            request_id: r.u64("waiter request")?,
            mode: LockMode::from_byte(r.u8("waiter mode")?)?,
            deadline_ms: r.u64("waiter deadline")?,
        })
    }
}

/// One lock: its holders in grant order and its queue in arrival order, each indexed by
/// session, and the queue by deadline too, so every operation on it is O(log n) in its
/// parties (a lock may have thousands).
#[derive(Debug, Clone, Default)]
struct Lock {
    /// By sequencer: grant order (sequencers only grow).
    holders: BTreeMap<u64, Holder>,
    /// Each holder's sequencer. Derived.
    holder_of: BTreeMap<SessionId, u64>,
    /// Holders in exclusive mode (0 or 1). Derived.
    exclusive: usize,
    /// By ticket: arrival order.
    queue: BTreeMap<u64, Waiting>,
    /// Each waiter's ticket. Derived.
    waiting_of: BTreeMap<SessionId, u64>,
    /// (deadline, ticket) of each waiter. Derived.
    deadlines: BTreeSet<(u64, u64)>,
    /// The next waiter's ticket. Derived (a restored queue is numbered from 0).
    next_ticket: u64,
    /// No exclusive grant before this (a holder of any mode expired).
    exclusive_free_ms: u64,
    /// No shared grant before this (an exclusive holder expired).
    shared_free_ms: u64,
}

/// The same holders and waiters in the same order, however the indexes number them.
impl PartialEq for Lock {
    fn eq(&self, other: &Lock) -> bool {
        self.holders.values().eq(other.holders.values())
            && self.queue.values().eq(other.queue.values())
            && self.exclusive_free_ms == other.exclusive_free_ms
            && self.shared_free_ms == other.shared_free_ms
    }
}

impl Eq for Lock {}

impl Lock {
    /// Sessions holding or waiting.
    fn parties(&self) -> usize {
        self.holders.len() + self.queue.len()
    }

    fn holder_mut(&mut self, session: SessionId) -> Option<&mut Holder> {
        let sequencer = self.holder_of.get(&session)?;
        self.holders.get_mut(sequencer)
    }

    fn holds(&self, session: SessionId) -> bool {
        self.holder_of.contains_key(&session)
    }

    fn waits(&self, session: SessionId) -> bool {
        self.waiting_of.contains_key(&session)
    }

    fn add_holder(&mut self, holder: Holder) {
        self.exclusive += usize::from(holder.mode == LockMode::Exclusive);
        self.holder_of.insert(holder.session, holder.sequencer);
        self.holders.insert(holder.sequencer, holder);
    }

    fn remove_holder(&mut self, session: SessionId) -> Option<Holder> {
        let holder = self.holders.remove(&self.holder_of.remove(&session)?)?;
        self.exclusive -= usize::from(holder.mode == LockMode::Exclusive);
        Some(holder)
    }

    fn push_waiter(&mut self, waiting: Waiting) {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.waiting_of.insert(waiting.session, ticket);
        self.deadlines.insert((waiting.deadline_ms, ticket));
        self.queue.insert(ticket, waiting);
    }

    fn remove_ticket(&mut self, ticket: u64) -> Option<Waiting> {
        let waiting = self.queue.remove(&ticket)?;
        self.waiting_of.remove(&waiting.session);
        self.deadlines.remove(&(waiting.deadline_ms, ticket));
        Some(waiting)
    }

    fn remove_waiter(&mut self, session: SessionId) -> Option<Waiting> {
        let ticket = *self.waiting_of.get(&session)?;
        self.remove_ticket(ticket)
    }

    fn front(&self) -> Option<&Waiting> {
        self.queue.values().next()
    }

    /// The waiters whose deadline is past at `now`, taken out, in queue order.
    fn take_expired(&mut self, now: u64) -> Vec<Waiting> {
        let mut tickets: Vec<u64> =
            self.deadlines.iter().take_while(|(at, _)| *at <= now).map(|(_, t)| *t).collect();
        tickets.sort_unstable();
        tickets.into_iter().filter_map(|t| self.remove_ticket(t)).collect()
    }

    /// The exclusive holder, if there is one (then it is the only holder).
    fn exclusive_holder(&self) -> Option<&Holder> {
        (self.exclusive > 0).then(|| self.holders.values().next()).flatten()
    }

    /// Whether `mode` could be granted at `now`, queue aside.
    fn compatible(&self, mode: LockMode, now: u64) -> bool {
        match mode {
            LockMode::Exclusive => self.holders.is_empty() && now >= self.exclusive_free_ms,
            LockMode::Shared => self.exclusive == 0 && now >= self.shared_free_ms,
        }
    }

    fn idle(&self, now: u64) -> bool {
        self.holders.is_empty()
            && self.queue.is_empty()
            && now >= self.exclusive_free_ms
            && now >= self.shared_free_ms
    }
}

/// How a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WakeResult {
    /// The lock is the session's.
    Granted {
        /// The grant's sequencer.
        sequencer: u64,
    },
    /// Its deadline passed first.
    TimedOut,
    /// Its session expired or closed.
    SessionEnded,
    /// The session cancelled it (unlock of a lock it waits for).
    Cancelled,
}

/// A queued request whose wait ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wake {
    /// The session.
    pub session: SessionId,
    /// Its request.
    pub request_id: u64,
    /// The lock.
    pub path: MeshPath,
    /// The mode it asked for.
    pub mode: LockMode,
    /// How it ended.
    pub result: WakeResult,
}

/// What a lock request did at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockResult {
    /// Granted, with this sequencer.
    Granted(u64),
    /// Queued: a [`Wake`] tells how it ends.
    Queued,
}

/// A lock as listed: holders and waiters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockInfo {
    /// The path.
    pub path: MeshPath,
    /// Who holds it.
    pub holders: Vec<Holder>,
    /// Who waits, in order.
    pub waiters: Vec<Waiting>,
    /// Until when a lock-delay keeps it from being granted (0: none).
    pub delayed_until_ms: u64,
}

impl LockInfo {
    /// Its size in a locks reply: path, delay, and each holder and waiter.
    pub fn encoded_len(&self) -> usize {
        2 + self.path.as_str().len() + 8 + 4 + 25 * self.holders.len() + 4 + 29 * self.waiters.len()
    }
}

/// Every session and lock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockTable {
    sessions: BTreeMap<SessionId, LockSession>,
    locks: BTreeMap<MeshPath, Lock>,
    /// The last sequencer handed out.
    generation: u64,
    /// (when, path) -> how many: waiters' deadlines and lock-delays' ends, to look at the
    /// lock then. Derived.
    due: BTreeMap<(u64, MeshPath), u32>,
    /// (lease end, session). Derived.
    expiries: BTreeSet<(u64, SessionId)>,
}

fn session_ended(session: SessionId) -> NsError {
    NsError::SessionExpired { client: session.client.0 }
}

/// Most locks one lock session holds or waits for at once.
pub const MAX_LOCKS_PER_SESSION: usize = 1024;
/// Most sessions holding or waiting for one lock at once (so every scan of its holders and
/// queue is bounded).
pub const MAX_PARTIES_PER_LOCK: usize = 4096;
/// Most lock sessions one client has open at once.
pub const MAX_LOCK_SESSIONS_PER_CLIENT: usize = 256;

impl LockTable {
    /// No sessions, no locks.
    pub fn new() -> LockTable {
        LockTable::default()
    }

    /// The session, if open.
    pub fn session(&self, id: SessionId) -> Option<&LockSession> {
        self.sessions.get(&id)
    }

    /// Open sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// The last sequencer handed out.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Lock sessions of `client` open now.
    pub fn sessions_of(&self, client: ClientId) -> usize {
        let first = SessionId { client, nonce: 0 };
        self.sessions.range(first..).take_while(|(id, _)| id.client == client).count()
    }

    /// Opens `session` (or, retried, renews it) with a lease from `now`.
    pub fn open(&mut self, session: SessionId, lease_ms: u64, lock_delay_ms: u64, now: u64) -> u64 {
        let expires_ms = now.saturating_add(lease_ms);
        let entry = self.sessions.entry(session).or_insert_with(|| LockSession {
            lease_ms,
            lock_delay_ms,
            expires_ms,
            paths: BTreeSet::new(),
        });
        let old = entry.expires_ms;
        entry.expires_ms = expires_ms.max(old);
        let new = entry.expires_ms;
        self.expiries.remove(&(old, session));
        self.expiries.insert((new, session));
        new
    }

    /// A KeepAlive: the lease ends `lease_ms` after `now` (never earlier than it did).
    pub fn keep_alive(&mut self, session: SessionId, now: u64) -> Result<u64, NsError> {
        let s = self.sessions.get_mut(&session).ok_or_else(|| session_ended(session))?;
        let old = s.expires_ms;
        s.expires_ms = now.saturating_add(s.lease_ms).max(old);
        let new = s.expires_ms;
        self.expiries.remove(&(old, session));
        self.expiries.insert((new, session));
        Ok(new)
    }

    /// Sessions whose lease ended by `now`, oldest first, at most `max`.
    pub fn lapsed(&self, now: u64, max: usize) -> Vec<SessionId> {
        self.expiries.iter().take_while(|(at, _)| *at <= now).take(max).map(|(_, s)| *s).collect()
    }

    /// The earliest time a waiter's deadline or a lock-delay ends, if any.
    pub fn next_due(&self) -> Option<u64> {
        self.due.first_key_value().map(|((at, _), _)| *at)
    }

    fn add_due(due: &mut BTreeMap<(u64, MeshPath), u32>, at: u64, key: &MeshPath) {
        *due.entry((at, key.clone())).or_default() += 1;
    }

    fn remove_due(due: &mut BTreeMap<(u64, MeshPath), u32>, at: u64, key: &MeshPath) {
        let k = (at, key.clone());
        if let Some(n) = due.get_mut(&k) {
            *n -= 1;
            if *n == 0 {
                due.remove(&k);
            }
        }
    }

    /// What a Clock entry at `now` should expire, if one is due: some waiter's deadline or
    /// lock-delay has come, or (when `may_expire`: the leader has led for a lease) some
    /// session's lease ran out. At most `max_expire` sessions are named.
    pub fn clock_due(
        &self,
        now: u64,
        may_expire: bool,
        max_expire: usize,
    ) -> Option<Vec<SessionId>> {
        let due = self.next_due().is_some_and(|at| at <= now);
        let expire = if may_expire { self.lapsed(now, max_expire) } else { Vec::new() };
        (due || !expire.is_empty()).then_some(expire)
    }

    /// Takes a lock, or queues for it until `wait_ms` after `now` (`None`: try only).
    pub fn lock(
        &mut self,
        session: SessionId,
        request_id: u64,
        path: &MeshPath,
        mode: LockMode,
        wait_ms: Option<u64>,
        now: u64,
    ) -> Result<LockResult, NsError> {
        let Some(mine) = self.sessions.get(&session) else {
            return Err(session_ended(session));
        };
        if mine.paths.len() >= MAX_LOCKS_PER_SESSION && !mine.paths.contains(path) {
            return Err(NsError::TooMany(format!(
                "this lock session holds or waits for {} locks, the most one may",
                mine.paths.len()
            )));
        }
        if let Some(lock) = self.locks.get(path)
            && lock.parties() >= MAX_PARTIES_PER_LOCK
            && !lock.holds(session)
        {
            return Err(NsError::TooMany(format!(
                "{path}: {} sessions hold or wait for this lock, the most there may be",
                lock.parties()
            )));
        }
        let lock = self.locks.entry(path.clone()).or_default();
        if let Some(held) = lock.holder_mut(session) {
            if held.mode == LockMode::Shared && mode == LockMode::Shared {
                held.count = held.count.saturating_add(1);
                return Ok(LockResult::Granted(held.sequencer));
            }
            let mode = held.mode.name().to_string();
            return Err(NsError::AlreadyLocked { path: path.to_string(), mode });
        }
        if lock.waits(session) {
            return Err(NsError::AlreadyWaiting(path.to_string()));
        }
        if lock.queue.is_empty() && lock.compatible(mode, now) {
            self.generation += 1;
            let sequencer = self.generation;
            lock.add_holder(Holder { session, mode, count: 1, sequencer });
            self.sessions.get_mut(&session).expect("checked above").paths.insert(path.clone());
            return Ok(LockResult::Granted(sequencer));
        }
        match wait_ms {
            Some(wait) if wait > 0 => {
                let deadline_ms = now.saturating_add(wait);
                lock.push_waiter(Waiting { session, request_id, mode, deadline_ms });
                Self::add_due(&mut self.due, deadline_ms, path);
                self.sessions.get_mut(&session).expect("checked above").paths.insert(path.clone());
                Ok(LockResult::Queued)
            }
            _ => {
                let busy = describe(lock, now);
                if lock.idle(now) {
                    self.locks.remove(path);
                }
                Err(NsError::LockBusy { path: path.to_string(), why: busy })
            }
        }
    }

    /// Gives back one hold of `path` (or cancels the session's wait for it). Returns the
    /// waits this ended.
    pub fn unlock(
        &mut self,
        session: SessionId,
        path: &MeshPath,
        now: u64,
    ) -> Result<Vec<Wake>, NsError> {
        if !self.sessions.contains_key(&session) {
            return Err(session_ended(session));
        }
        let not_held = || NsError::NotLocked(path.to_string());
        let lock = self.locks.get_mut(path).ok_or_else(not_held)?;
        let mut wakes = Vec::new();
        if let Some(holder) = lock.holder_mut(session) {
            holder.count -= 1;
            if holder.count > 0 {
                return Ok(wakes);
            }
            lock.remove_holder(session);
        } else if let Some(waiting) = lock.remove_waiter(session) {
            Self::remove_due(&mut self.due, waiting.deadline_ms, path);
            wakes.push(wake(path, waiting, WakeResult::Cancelled));
        } else {
            return Err(not_held());
        }
        if let Some(s) = self.sessions.get_mut(&session) {
            s.paths.remove(path);
        }
        self.pump(path, now, &mut wakes);
        Ok(wakes)
    }

    /// Ends a session: its locks go (after their lock-delay if it `expired`, at once if it
    /// closed) and its waits end. An expiry is ignored if the lease was renewed past `now`.
    pub fn end_session(&mut self, session: SessionId, expired: bool, now: u64) -> Vec<Wake> {
        let Some(s) = self.sessions.get(&session) else { return Vec::new() };
        if expired && s.expires_ms > now {
            return Vec::new();
        }
        self.end(session, expired.then_some(now), now)
    }

    /// Ends every session of `client`, which was removed from the cluster: its locks are
    /// granted again once its lease would have run out and the lock-delay after it.
    pub fn revoke(&mut self, client: ClientId, now: u64) -> Vec<Wake> {
        let sessions: Vec<(SessionId, u64)> = self
            .sessions
            .iter()
            .filter(|(id, _)| id.client == client)
            .map(|(id, s)| (*id, s.expires_ms.max(now)))
            .collect();
        let mut wakes = Vec::new();
        for (session, lease_end) in sessions {
            wakes.extend(self.end(session, Some(lease_end), now));
        }
        wakes
    }

    /// The clients with an open session.
    pub fn clients(&self) -> BTreeSet<ClientId> {
        self.sessions.keys().map(|s| s.client).collect()
    }

    /// Ends `session` at `now`. With `delay_from`, its locks stay ungranted until the
    /// lock-delay after that time; without, they go at once.
    fn end(&mut self, session: SessionId, delay_from: Option<u64>, now: u64) -> Vec<Wake> {
        let mut wakes = Vec::new();
        let Some(s) = self.sessions.remove(&session) else { return wakes };
        self.expiries.remove(&(s.expires_ms, session));
        for path in s.paths {
            let Some(lock) = self.locks.get_mut(&path) else { continue };
            if let Some(holder) = lock.remove_holder(session) {
                let until = delay_from.map(|from| from.saturating_add(s.lock_delay_ms));
                if let Some(until) = until.filter(|&until| until > now) {
                    lock.exclusive_free_ms = lock.exclusive_free_ms.max(until);
                    if holder.mode == LockMode::Exclusive {
                        lock.shared_free_ms = lock.shared_free_ms.max(until);
                    }
                    Self::add_due(&mut self.due, until, &path);
                }
            }
            if let Some(waiting) = lock.remove_waiter(session) {
                Self::remove_due(&mut self.due, waiting.deadline_ms, &path);
                wakes.push(wake(&path, waiting, WakeResult::SessionEnded));
            }
            self.pump(&path, now, &mut wakes);
        }
        wakes
    }

    /// Time passes to `now`: the sessions in `expire` end if their lease did, waiters past
    /// their deadline give up, and locks whose lock-delay ended are granted again.
    pub fn clock(&mut self, expire: &[SessionId], now: u64) -> Vec<Wake> {
        let mut wakes = Vec::new();
        for &session in expire {
            wakes.extend(self.end_session(session, true, now));
        }
        // Each lock with something due is served once, in path order.
        let mut locks = BTreeSet::new();
        while self.due.first_key_value().is_some_and(|((at, _), _)| *at <= now) {
            let ((_, path), _) = self.due.pop_first().expect("checked above");
            locks.insert(path);
        }
        for path in locks {
            self.pump(&path, now, &mut wakes);
        }
        wakes
    }

    /// Serves `key`'s queue at `now`: waiters past their deadline go, then waiters are
    /// granted from the front while they can be. Forgets the lock once idle.
    fn pump(&mut self, path: &MeshPath, now: u64, wakes: &mut Vec<Wake>) {
        let Some(lock) = self.locks.get_mut(path) else { return };
        if lock.exclusive_free_ms <= now {
            lock.exclusive_free_ms = 0;
        }
        if lock.shared_free_ms <= now {
            lock.shared_free_ms = 0;
        }
        for waiting in lock.take_expired(now) {
            Self::remove_due(&mut self.due, waiting.deadline_ms, path);
            if let Some(s) = self.sessions.get_mut(&waiting.session) {
                s.paths.remove(path);
            }
            wakes.push(wake(path, waiting, WakeResult::TimedOut));
        }
        while let Some(&head) = lock.front() {
            if !lock.compatible(head.mode, now) {
                break;
            }
            lock.remove_waiter(head.session);
            Self::remove_due(&mut self.due, head.deadline_ms, path);
            self.generation += 1;
            let sequencer = self.generation;
            lock.add_holder(Holder { session: head.session, mode: head.mode, count: 1, sequencer });
            wakes.push(wake(path, head, WakeResult::Granted { sequencer }));
        }
        if lock.idle(now) {
            self.locks.remove(path);
        }
    }

    /// Locks at or under `prefix`, by path: at most `max_locks`, each with at most
    /// `max_parties` holders and as many waiters; and whether more locks matched. Walks
    /// only the paths that start with `prefix`'s text.
    pub fn list(
        &self,
        prefix: &MeshPath,
        max_locks: usize,
        max_parties: usize,
        max_bytes: usize,
    ) -> (Vec<LockInfo>, bool) {
        let text = prefix.as_str();
        let mut matching = self
            .locks
            .range(prefix.clone()..)
            .take_while(|(path, _)| path.as_str().starts_with(text))
            .filter(|(path, _)| prefix.is_root() || under(path.as_str(), text))
            .map(|(path, lock)| LockInfo {
                path: path.clone(),
                holders: lock.holders.values().take(max_parties).copied().collect(),
                waiters: lock.queue.values().take(max_parties).copied().collect(),
                delayed_until_ms: lock.exclusive_free_ms.max(lock.shared_free_ms),
            })
            .peekable();
        let (mut locks, mut bytes) = (Vec::new(), 0);
        while let Some(next) = matching.peek() {
            // The first lock always goes (its parties are bounded): a listing moves on.
            let len = next.encoded_len();
            if locks.len() == max_locks || (!locks.is_empty() && bytes + len > max_bytes) {
                break;
            }
            bytes += len;
            locks.extend(matching.next());
        }
        (locks, matching.peek().is_some())
    }

    /// The first broken invariant, if any.
    pub fn violation(&self) -> Option<String> {
        for (key, lock) in &self.locks {
            let exclusive = lock.holders.values().filter(|h| h.mode == LockMode::Exclusive).count();
            if exclusive > 1 || (exclusive == 1 && lock.holders.len() > 1) {
                return Some(format!("lock {key}: {:?} hold it together", lock.holders));
            }
            let indexed = exclusive == lock.exclusive
                && lock.holder_of.len() == lock.holders.len()
                && lock
                    .holders
                    .iter()
                    .all(|(q, h)| *q == h.sequencer && lock.holder_of.get(&h.session) == Some(q))
                && lock.waiting_of.len() == lock.queue.len()
                && lock.deadlines.len() == lock.queue.len()
                && lock.queue.iter().all(|(t, w)| {
                    lock.waiting_of.get(&w.session) == Some(t)
                        && lock.deadlines.contains(&(w.deadline_ms, *t))
                });
            if !indexed {
                return Some(format!("lock {key}: its indexes disagree with its parties"));
            }
            for h in lock.holders.values() {
                let listed = self.sessions.get(&h.session).is_some_and(|s| s.paths.contains(key));
                if !listed || h.count == 0 || h.sequencer > self.generation {
                    return Some(format!("lock {key}: holder {h:?} is not consistent"));
                }
            }
            for w in lock.queue.values() {
                if !self.sessions.get(&w.session).is_some_and(|s| s.paths.contains(key)) {
                    return Some(format!("lock {key}: waiter {w:?} has no session listing it"));
                }
            }
        }
        for (id, s) in &self.sessions {
            if !self.expiries.contains(&(s.expires_ms, *id)) {
                return Some(format!("session {id:?} is missing from the expiry index"));
            }
        }
        if self.expiries.len() != self.sessions.len() {
            return Some("the expiry index lists sessions that are gone".into());
        }
        None
    }

    /// Appends the table to a snapshot.
    pub fn write(&self, w: &mut BodyWriter) {
        w.u64(self.generation).u32(self.sessions.len() as u32);
        for (id, s) in &self.sessions {
            id.write(w);
            w.u64(s.lease_ms).u64(s.lock_delay_ms).u64(s.expires_ms);
        }
        w.u32(self.locks.len() as u32);
        for (key, lock) in &self.locks {
            w.str(key.as_str()).u64(lock.exclusive_free_ms).u64(lock.shared_free_ms);
            w.u32(lock.holders.len() as u32);
            for h in lock.holders.values() {
                h.write(w);
            }
            w.u32(lock.queue.len() as u32);
            for q in lock.queue.values() {
                q.write(w);
            }
        }
    }

    /// Reads what [`LockTable::write`] wrote, rebuilding the indexes.
    pub fn read(r: &mut BodyReader<'_>) -> Result<LockTable, BodyError> {
        let mut table = LockTable { generation: r.u64("lock generation")?, ..LockTable::new() };
        for _ in 0..r.u32("lock session count")? {
            let id = SessionId::read(r)?;
            let lease_ms = r.u64("lease")?;
            let lock_delay_ms = r.u64("lock delay")?;
            let expires_ms = r.u64("lease end")?;
            table.expiries.insert((expires_ms, id));
            let session =
                LockSession { lease_ms, lock_delay_ms, expires_ms, paths: BTreeSet::new() };
            table.sessions.insert(id, session);
        }
        for _ in 0..r.u32("lock count")? {
            let key = MeshPath::parse(r.str("lock path")?)
                .map_err(|_| BodyError::Invalid { field: "lock path", value: 0 })?;
            let mut lock = Lock {
                exclusive_free_ms: r.u64("exclusive free")?,
                shared_free_ms: r.u64("shared free")?,
                ..Lock::default()
            };
            for _ in 0..r.u32("holder count")? {
                let holder = Holder::read(r)?;
                // Grant order is sequencer order, and a session holds a lock once.
                let ordered =
                    lock.holders.last_key_value().is_none_or(|(q, _)| *q < holder.sequencer);
                if !ordered || lock.holds(holder.session) {
                    return Err(BodyError::Invalid { field: "holder", value: holder.sequencer });
                }
                lock.add_holder(holder);
            }
            for _ in 0..r.u32("waiter count")? {
                let waiting = Waiting::read(r)?;
                if lock.waits(waiting.session) || lock.holds(waiting.session) {
                    return Err(BodyError::Invalid {
                        field: "waiter",
                        value: waiting.session.nonce,
                    });
                }
                *table.due.entry((waiting.deadline_ms, key.clone())).or_default() += 1;
                lock.push_waiter(waiting);
            }
            let parties: Vec<SessionId> = lock
                .holders
                .values()
                .map(|h| h.session)
                .chain(lock.queue.values().map(|w| w.session))
                .collect();
            for s in parties {
                match table.sessions.get_mut(&s) {
                    Some(session) => {
                        session.paths.insert(key.clone());
                    }
                    None => {
                        return Err(BodyError::Invalid { field: "lock session", value: s.nonce });
                    }
                }
            }
            let until = lock.exclusive_free_ms.max(lock.shared_free_ms);
            if until > 0 {
                *table.due.entry((until, key.clone())).or_default() += 1;
            }
            table.locks.insert(key, lock);
        }
        Ok(table)
    }
}

fn under(key: &str, prefix: &str) -> bool {
    key == prefix || (key.starts_with(prefix) && key.as_bytes().get(prefix.len()) == Some(&b'/'))
}

fn wake(path: &MeshPath, waiting: Waiting, result: WakeResult) -> Wake {
    Wake {
        session: waiting.session,
        request_id: waiting.request_id,
        path: path.clone(),
        mode: waiting.mode,
        result,
    }
}

/// Why a request cannot be granted now, for its error message.
fn describe(lock: &Lock, now: u64) -> String {
    let mut parts = Vec::new();
    if let Some(h) = lock.exclusive_holder() {
        parts.push(format!(
            "held exclusive by client {} (sequencer {})",
            h.session.client, h.sequencer
        ));
    } else if !lock.holders.is_empty() {
        parts.push(format!("held shared by {} session(s)", lock.holders.len()));
    }
    if !lock.queue.is_empty() {
        parts.push(format!("{} waiting", lock.queue.len()));
    }
    let delay = lock.exclusive_free_ms.max(lock.shared_free_ms);
    if delay > now {
        parts.push(format!(
            "in lock-delay for {} ms after its holder's session expired",
            delay - now
        ));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshfs_group::ClientId;

    const LEASE: u64 = 10_000;
    const DELAY: u64 = 5_000;

    fn s(n: u64) -> SessionId {
        SessionId { client: ClientId(n as u32), nonce: n }
    }

    fn p(text: &str) -> MeshPath {
        MeshPath::parse(text).unwrap()
    }

    fn table(sessions: u64) -> LockTable {
        let mut t = LockTable::new();
        for n in 1..=sessions {
            t.open(s(n), LEASE, DELAY, 0);
        }
        t
    }

    fn granted(result: Result<LockResult, NsError>) -> u64 {
        match result {
            Ok(LockResult::Granted(sequencer)) => sequencer,
            other => panic!("expected a grant, got {other:?}"),
        }
    }

    fn grants(wakes: &[Wake]) -> Vec<(SessionId, u64)> {
        wakes
            .iter()
            .filter_map(|w| match w.result {
                WakeResult::Granted { .. } => Some((w.session, w.request_id)),
                _ => None,
            })
            .collect()
    }

    /// Every lock at or under `prefix`.
    fn all(t: &LockTable, prefix: &str) -> Vec<LockInfo> {
        let (locks, more) = t.list(&p(prefix), usize::MAX, usize::MAX, usize::MAX);
        assert!(!more);
        locks
    }

    fn check(t: &LockTable) {
        assert_eq!(t.violation(), None);
    }

    #[test]
    fn grants_conflicts_and_sequencers_that_only_grow() {
        let mut t = table(3);
        let a = granted(t.lock(s(1), 1, &p("/x"), LockMode::Exclusive, None, 0));
        let err = t.lock(s(2), 1, &p("/x"), LockMode::Shared, None, 0).unwrap_err();
        assert!(err.to_string().contains("held exclusive by client 1"), "{err}");
        let err = t.lock(s(1), 2, &p("/x"), LockMode::Exclusive, None, 0).unwrap_err();
        assert!(matches!(err, NsError::AlreadyLocked { .. }), "{err}");
        assert!(t.unlock(s(1), &p("/x"), 0).unwrap().is_empty());
        let b = granted(t.lock(s(2), 2, &p("/x"), LockMode::Shared, None, 0));
        let c = granted(t.lock(s(3), 2, &p("/x"), LockMode::Shared, None, 0));
        assert!(a < b && b < c, "{a} {b} {c}");
        assert!(matches!(t.unlock(s(1), &p("/x"), 0), Err(NsError::NotLocked(_))));
        // A lock on an unrelated path is independent; an idle lock is forgotten.
        granted(t.lock(s(1), 3, &p("/y"), LockMode::Exclusive, None, 0));
        t.unlock(s(1), &p("/y"), 0).unwrap();
        assert_eq!(all(&t, "/").len(), 1);
        check(&t);
    }

    #[test]
    fn waiters_are_granted_in_queue_order() {
        let mut t = table(4);
        granted(t.lock(s(1), 1, &p("/q"), LockMode::Exclusive, None, 0));
        for n in 2..=4 {
            let queued = t.lock(s(n), 10 + n, &p("/q"), LockMode::Exclusive, Some(60_000), 0);
            assert_eq!(queued, Ok(LockResult::Queued));
        }
        let mut order = Vec::new();
        let mut holder = s(1);
        for _ in 0..3 {
            let wakes = t.unlock(holder, &p("/q"), 100).unwrap();
            let g = grants(&wakes);
            assert_eq!(g.len(), 1, "{wakes:?}");
            holder = g[0].0;
            order.push(g[0]);
            check(&t);
        }
        assert_eq!(order, vec![(s(2), 12), (s(3), 13), (s(4), 14)]);
    }

    #[test]
    fn shared_locks_are_reentrant_and_counted() {
        let mut t = table(2);
        let first = granted(t.lock(s(1), 1, &p("/r"), LockMode::Shared, None, 0));
        let again = granted(t.lock(s(1), 2, &p("/r"), LockMode::Shared, None, 0));
        assert_eq!(first, again, "a reentrant grant keeps its sequencer");
        assert_eq!(all(&t, "/r")[0].holders[0].count, 2);
        // A writer queues; the reader may still take it again (else it would deadlock).
        let queued = t.lock(s(2), 1, &p("/r"), LockMode::Exclusive, Some(60_000), 0);
        assert_eq!(queued, Ok(LockResult::Queued));
        granted(t.lock(s(1), 3, &p("/r"), LockMode::Shared, None, 0));
        assert!(t.unlock(s(1), &p("/r"), 0).unwrap().is_empty());
        assert!(t.unlock(s(1), &p("/r"), 0).unwrap().is_empty());
        let wakes = t.unlock(s(1), &p("/r"), 0).unwrap();
        assert_eq!(grants(&wakes), vec![(s(2), 1)], "the third unlock frees it");
        check(&t);
    }

    #[test]
    fn a_waiting_writer_blocks_new_readers() {
        let mut t = table(4);
        granted(t.lock(s(1), 1, &p("/w"), LockMode::Shared, None, 0));
        assert_eq!(
            t.lock(s(2), 1, &p("/w"), LockMode::Exclusive, Some(60_000), 0),
            Ok(LockResult::Queued)
        );
        // A new reader does not pass the waiting writer, neither by trying nor by waiting.
        let err = t.lock(s(3), 1, &p("/w"), LockMode::Shared, None, 0).unwrap_err();
        assert!(err.to_string().contains("1 waiting"), "{err}");
        assert_eq!(
            t.lock(s(4), 1, &p("/w"), LockMode::Shared, Some(60_000), 0),
            Ok(LockResult::Queued)
        );
        let wakes = t.unlock(s(1), &p("/w"), 0).unwrap();
        assert_eq!(grants(&wakes), vec![(s(2), 1)]);
        let wakes = t.unlock(s(2), &p("/w"), 0).unwrap();
        assert_eq!(grants(&wakes), vec![(s(4), 1)]);
        check(&t);
    }

    #[test]
    fn readers_queued_together_are_granted_together() {
        let mut t = table(4);
        granted(t.lock(s(1), 1, &p("/g"), LockMode::Exclusive, None, 0));
        for n in 2..=3 {
            t.lock(s(n), 1, &p("/g"), LockMode::Shared, Some(60_000), 0).unwrap();
        }
        t.lock(s(4), 1, &p("/g"), LockMode::Exclusive, Some(60_000), 0).unwrap();
        let wakes = t.unlock(s(1), &p("/g"), 0).unwrap();
        assert_eq!(grants(&wakes), vec![(s(2), 1), (s(3), 1)]);
        check(&t);
    }

    #[test]
    fn waiters_time_out_and_a_timed_out_writer_lets_readers_in() {
        let mut t = table(3);
        granted(t.lock(s(1), 1, &p("/t"), LockMode::Shared, None, 0));
        t.lock(s(2), 7, &p("/t"), LockMode::Exclusive, Some(1_000), 0).unwrap();
        t.lock(s(3), 9, &p("/t"), LockMode::Shared, Some(5_000), 0).unwrap();
        assert_eq!(t.next_due(), Some(1_000));
        assert!(t.clock(&[], 999).is_empty(), "not yet");
        let wakes = t.clock(&[], 1_000);
        assert_eq!(wakes.len(), 2, "{wakes:?}");
        assert_eq!((wakes[0].session, wakes[0].result), (s(2), WakeResult::TimedOut));
        assert_eq!(grants(&wakes), vec![(s(3), 9)]);
        // A wait of zero is a try.
        let err = t.lock(s(2), 8, &p("/t"), LockMode::Exclusive, Some(0), 2_000).unwrap_err();
        assert!(matches!(err, NsError::LockBusy { .. }), "{err}");
        check(&t);
    }

    #[test]
    fn expiry_releases_locks_after_the_lock_delay_and_drops_waits() {
        let mut t = table(3);
        granted(t.lock(s(1), 1, &p("/e"), LockMode::Exclusive, None, 0));
        t.lock(s(2), 4, &p("/e"), LockMode::Exclusive, Some(60_000), 0).unwrap();
        t.lock(s(1), 2, &p("/other"), LockMode::Shared, None, 0).unwrap();
        granted(t.lock(s(3), 1, &p("/held"), LockMode::Exclusive, None, 0));
        t.lock(s(1), 3, &p("/held"), LockMode::Shared, Some(60_000), 0).unwrap();
        // Kept alive: not lapsed.
        t.keep_alive(s(2), 8_000).unwrap();
        t.keep_alive(s(3), 8_000).unwrap();
        assert_eq!(t.lapsed(LEASE - 1, 10), vec![]);
        assert_eq!(t.lapsed(LEASE, 10), vec![s(1)]);
        // An expiry the leader asked for before a KeepAlive renewed the lease does nothing.
        t.keep_alive(s(1), 9_000).unwrap();
        assert!(t.clock(&[s(1)], LEASE).is_empty());
        assert!(t.session(s(1)).is_some());
        let at = 9_000 + LEASE;
        let wakes = t.clock(&[s(1)], at);
        assert_eq!(wakes.len(), 1, "{wakes:?}");
        assert_eq!((wakes[0].session, wakes[0].result), (s(1), WakeResult::SessionEnded));
        assert!(t.session(s(1)).is_none());
        // Its shared lock keeps writers out for the lock-delay, but not readers.
        let other = &all(&t, "/other")[0];
        assert!(other.holders.is_empty() && other.delayed_until_ms == at + DELAY);
        granted(t.lock(s(3), 2, &p("/other"), LockMode::Shared, None, at));
        t.unlock(s(3), &p("/other"), at).unwrap();
        // /e waits out the lock-delay; then the queued writer gets it.
        assert_eq!(t.next_due(), Some(at + DELAY));
        assert!(t.clock(&[], at + DELAY - 1).is_empty());
        let info = &all(&t, "/e")[0];
        assert!(info.holders.is_empty() && info.delayed_until_ms == at + DELAY);
        let err = t.lock(s(3), 5, &p("/e"), LockMode::Shared, None, at + 1).unwrap_err();
        assert!(err.to_string().contains("lock-delay"), "{err}");
        assert_eq!(grants(&t.clock(&[], at + DELAY)), vec![(s(2), 4)]);
        // The session is gone for good.
        assert!(matches!(t.keep_alive(s(1), at), Err(NsError::SessionExpired { .. })));
        let err = t.lock(s(1), 9, &p("/e"), LockMode::Shared, None, at).unwrap_err();
        assert!(matches!(err, NsError::SessionExpired { .. }), "{err}");
        check(&t);
    }

    #[test]
    fn an_expired_reader_delays_writers_only_and_a_close_delays_nobody() {
        let mut t = table(4);
        granted(t.lock(s(1), 1, &p("/d"), LockMode::Shared, None, 0));
        t.clock(&[s(1)], LEASE);
        granted(t.lock(s(2), 1, &p("/d"), LockMode::Shared, None, LEASE));
        t.unlock(s(2), &p("/d"), LEASE).unwrap();
        assert!(t.lock(s(3), 1, &p("/d"), LockMode::Exclusive, None, LEASE).is_err());
        granted(t.lock(s(3), 2, &p("/d"), LockMode::Exclusive, None, LEASE + DELAY));
        // A session that closes hands its lock straight to the next waiter.
        t.lock(s(4), 1, &p("/d"), LockMode::Exclusive, Some(60_000), LEASE + DELAY).unwrap();
        let wakes = t.end_session(s(3), false, LEASE + DELAY);
        assert_eq!(grants(&wakes), vec![(s(4), 1)]);
        check(&t);
    }

    #[test]
    fn unlock_cancels_a_wait() {
        let mut t = table(3);
        granted(t.lock(s(1), 1, &p("/c"), LockMode::Exclusive, None, 0));
        t.lock(s(2), 5, &p("/c"), LockMode::Exclusive, Some(60_000), 0).unwrap();
        t.lock(s(3), 6, &p("/c"), LockMode::Shared, Some(60_000), 0).unwrap();
        let wakes = t.unlock(s(2), &p("/c"), 0).unwrap();
        assert_eq!((wakes[0].session, wakes[0].result), (s(2), WakeResult::Cancelled));
        assert_eq!(wakes.len(), 1, "the holder still holds: nobody else is granted");
        check(&t);
    }

    #[test]
    fn listing_is_by_prefix_and_the_table_survives_a_snapshot() {
        let mut t = table(3);
        granted(t.lock(s(1), 1, &p("/a/b"), LockMode::Exclusive, None, 0));
        granted(t.lock(s(2), 1, &p("/a/bc"), LockMode::Shared, None, 0));
        t.lock(s(3), 2, &p("/a/b"), LockMode::Shared, Some(60_000), 0).unwrap();
        t.clock(&[s(2)], LEASE);
        let listed: Vec<String> = all(&t, "/a/b").iter().map(|l| l.path.to_string()).collect();
        assert_eq!(listed, vec!["/a/b"]);
        assert_eq!(all(&t, "/a").len(), 2);
        let mut w = BodyWriter::new();
        t.write(&mut w);
        let bytes = w.finish();
        let mut r = BodyReader::new(&bytes);
        let back = LockTable::read(&mut r).unwrap();
        r.finish().unwrap();
        let mut again = BodyWriter::new();
        back.write(&mut again);
        assert_eq!(again.finish(), bytes);
        assert_eq!(all(&back, "/"), all(&t, "/"));
        assert_eq!(back.next_due(), t.next_due());
        check(&back);
    }

    #[test]
    fn listings_and_expiries_stop_at_their_caps() {
        let mut t = table(4);
        for path in ["/a/b", "/a/b!x", "/a/b/c", "/a/b/d", "/a/c"] {
            granted(t.lock(s(1), 1, &p(path), LockMode::Shared, None, 0));
        }
        for n in 2..=4 {
            granted(t.lock(s(n), 1, &p("/a/b"), LockMode::Shared, None, 0));
        }
        t.lock(s(2), 2, &p("/a/b/c"), LockMode::Exclusive, Some(60_000), 0).unwrap();
        // Under /a/b: itself and its children, not its sibling "/a/b!x" (sorted among them).
        let (locks, more) = t.list(&p("/a/b"), 10, 10, usize::MAX);
        let paths: Vec<&str> = locks.iter().map(|l| l.path.as_str()).collect();
        assert_eq!((paths, more), (vec!["/a/b", "/a/b/c", "/a/b/d"], false));
        let (locks, more) = t.list(&p("/a/b"), 2, 2, usize::MAX);
        assert_eq!((locks.len(), more), (2, true));
        assert_eq!(locks[0].holders.len(), 2, "holders capped at 2 of 4");
        assert_eq!(locks[1].waiters.len(), 1);
        let (locks, more) = t.list(&p("/"), 5, 1, usize::MAX);
        assert_eq!((locks.len(), more), (5, false));
        // A byte budget ends the page early, but the first lock always goes.
        let first = t.list(&p("/a/b"), 10, 10, usize::MAX).0[0].encoded_len();
        let (locks, more) = t.list(&p("/a/b"), 10, 10, first);
        assert_eq!((locks.len(), more), (1, true));
        let (locks, more) = t.list(&p("/a/b"), 10, 10, 0);
        assert_eq!((locks.len(), more), (1, true));
        // Expiries named by one Clock entry are capped; the rest wait for the next.
        assert_eq!(t.lapsed(LEASE, 2), vec![s(1), s(2)]);
        assert_eq!(t.clock_due(LEASE, true, 3), Some(vec![s(1), s(2), s(3)]));
        assert_eq!(t.clock_due(LEASE, false, 3), None, "nothing due but expiries");
        assert_eq!(t.clock_due(LEASE - 1, true, 3), None);
    }

    #[test]
    fn one_lock_has_at_most_so_many_holders_and_waiters() {
        let mut t = LockTable::new();
        let parties = MAX_PARTIES_PER_LOCK as u64;
        for n in 1..=parties + 1 {
            t.open(s(n), LEASE, DELAY, 0);
        }
        for n in 1..parties {
            granted(t.lock(s(n), 1, &p("/shared"), LockMode::Shared, None, 0));
        }
        // The last place may go to a waiter; then the lock is full, for holders and waiters.
        let queued = t.lock(s(parties), 1, &p("/shared"), LockMode::Exclusive, Some(1000), 0);
        assert!(matches!(queued, Ok(LockResult::Queued)), "{queued:?}");
        let full = t.lock(s(parties + 1), 1, &p("/shared"), LockMode::Shared, None, 0);
        assert!(
            matches!(&full, Err(NsError::TooMany(why)) if why.contains("sessions hold or wait")),
            "{full:?}"
        );
        // A holder taking its shared lock again is not a new party.
        granted(t.lock(s(1), 2, &p("/shared"), LockMode::Shared, None, 0));
        assert_eq!(t.violation(), None);
    }
}
