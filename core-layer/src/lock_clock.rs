//! The leader's clock for the lock service: when to propose a [`Command::Clock`] entry.
//!
//! Lock waits end by deadline, lock-delays end, and sessions whose lease ran out expire only
//! when a Clock entry says so, so that every replica sees time pass at the same index. The
//! leader proposes one when something is due ([`LockTable::clock_due`]). It expires no
//! session in its first lease as leader, nor in the first lease after it sees a majority of
//! the meta-servers again: clients cut off by the election or the outage reach it first.
//! (Without a majority nothing it proposes commits; an expiry decided then would commit the
//! moment the majority came back, before any client could renew.)
//!
//! Sans-I/O: the meta-server and the simulation both drive this one struct with the time and
//! what they see (leader or not, a majority or not), and propose the entry it returns. It
//! must not know Raft, the network or a clock.

use std::time::{Duration, Instant};

use meshfs_group::Now;

use crate::locks::LockTable;
use crate::namespace::{Command, Entry};
use crate::session::SessionId;

/// Most sessions one Clock entry expires (more wait for the next).
pub const MAX_EXPIRIES_PER_ENTRY: usize = 1000;
/// The meta-server's wait for a proposed Clock entry to apply before it may propose another
/// (an entry lost in a leader change). The simulation, whose leases are 40 times shorter,
/// shortens it likewise.
pub const CLOCK_PENDING_TIMEOUT: Duration = Duration::from_secs(2);

/// The leader's lock clock. Call [`LockClock::observe`] on every tick (leadership and the
/// count of reachable meta-servers), [`LockClock::observe_leadership`] whenever leadership
/// may have changed, [`LockClock::poll_entry`] to get a Clock entry when one is due, and
/// [`LockClock::applied`] for each applied entry.
#[derive(Debug, Clone)]
pub struct LockClock {
    /// The session its entries are made in (one per server incarnation).
    session: SessionId,
    /// The session lease: the grace given after an election or an outage.
    lease: Duration,
    /// Since when this server has been the leader.
    leader_since: Option<Instant>,
    /// Since when this server has seen a majority of the meta-servers up (itself included).
    quorum_since: Option<Instant>,
    /// A Clock entry proposed and not yet applied, and when.
    pending: Option<Instant>,
    /// How long a pending entry holds back the next.
    pending_timeout: Duration,
}

impl LockClock {
    /// A clock proposing in `session`, giving clients `lease` after elections and outages,
    /// proposing again if an entry has not applied after `pending_timeout`
    /// ([`CLOCK_PENDING_TIMEOUT`] on a meta-server).
    pub fn new(session: SessionId, lease: Duration, pending_timeout: Duration) -> LockClock {
        LockClock {
            session,
            lease,
            leader_since: None,
            quorum_since: None,
            pending: None,
            pending_timeout,
        }
    }

    /// What the server sees at `now`: whether it leads, and whether a majority of the
    /// meta-servers is up as far as it knows.
    pub fn observe(&mut self, now: Now, leader: bool, quorum: bool) {
        self.observe_leadership(now, leader);
        if !quorum {
            self.quorum_since = None;
        } else if self.quorum_since.is_none() {
            self.quorum_since = Some(now.mono);
        }
    }

    /// Whether the server leads at `now`: cheap, for after every Raft step (the majority
    /// is looked at on ticks, with [`LockClock::observe`]).
    pub fn observe_leadership(&mut self, now: Now, leader: bool) {
        if !leader {
            self.leader_since = None;
            self.pending = None;
        } else if self.leader_since.is_none() {
            self.leader_since = Some(now.mono);
        }
    }

    /// Whether sessions may be expired at `now`: a full lease as leader, and a full lease
    /// with a majority in view.
    pub fn may_expire(&self, now: Now) -> bool {
        let lasted = |since: Option<Instant>| {
            since.is_some_and(|at| now.mono.saturating_duration_since(at) >= self.lease)
        };
        lasted(self.leader_since) && lasted(self.quorum_since)
    }

    /// The Clock entry to propose at `now`, if one is due; it is counted as pending until
    /// [`LockClock::applied`] sees it (or the pending timeout passes).
    pub fn poll_entry(&mut self, now: Now, table: &LockTable) -> Option<Entry> {
        self.leader_since?;
        if self
            .pending
            .is_some_and(|at| now.mono.saturating_duration_since(at) < self.pending_timeout)
        {
            return None;
        }
        let expire = table.clock_due(now.wall_ms, self.may_expire(now), MAX_EXPIRIES_PER_ENTRY)?;
        self.pending = Some(now.mono);
        Some(Entry {
            session: self.session,
            request_id: 0,
            time_ms: now.wall_ms,
            caller: crate::namespace::Caller::system(),
            command: Command::Clock { expire },
        })
    }

    /// The entry from [`LockClock::poll_entry`] could not be proposed.
    pub fn not_proposed(&mut self) {
        self.pending = None;
    }

    /// An entry of `session` applied: if it is this clock's, the next may be proposed.
    pub fn applied(&mut self, session: SessionId) {
        if session == self.session {
            self.pending = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::MeshPath;
    use meshfs_group::ClientId;

    const LEASE: Duration = Duration::from_secs(10);

    fn session(nonce: u64) -> SessionId {
        SessionId { client: ClientId(1), nonce }
    }

    /// A table with one session whose lease (10 s from t = 0) runs out at 10 s.
    fn table() -> LockTable {
        let mut table = LockTable::new();
        table.open(session(7), 10_000, 1_000, 0);
        let path = MeshPath::parse("/l").unwrap();
        table.lock(session(7), 1, &path, crate::locks::LockMode::Exclusive, None, 0).unwrap();
        table
    }

    fn expired(entry: Option<Entry>) -> Option<Vec<SessionId>> {
        entry.map(|e| match e.command {
            Command::Clock { expire } => expire,
            other => panic!("not a Clock entry: {other:?}"),
        })
    }

    #[test]
    fn no_expiry_in_the_first_lease_as_leader_nor_after_a_majority_returns() {
        let origin = Instant::now();
        let at = |ms| Now::simulated(origin, ms);
        let table = table();
        let mut clock = LockClock::new(session(1), LEASE, CLOCK_PENDING_TIMEOUT);
        clock.observe(at(0), false, true);
        assert_eq!(clock.poll_entry(at(20_000), &table), None, "a follower proposes nothing");
        // Leader from 15 s: the session lapsed at 10 s, but it waits a lease.
        clock.observe(at(15_000), true, true);
        assert_eq!(expired(clock.poll_entry(at(24_999), &table)), None);
        assert_eq!(expired(clock.poll_entry(at(25_000), &table)), Some(vec![session(7)]));
        // Pending until applied: nothing more in the meantime.
        assert_eq!(clock.poll_entry(at(25_100), &table), None);
        clock.applied(session(2));
        assert_eq!(clock.poll_entry(at(25_200), &table), None, "another session's entry");
        clock.applied(session(1));
        // The majority goes away and comes back at 30 s: a lease again before expiring.
        clock.observe(at(26_000), true, false);
        assert_eq!(clock.poll_entry(at(27_000), &table), None);
        clock.observe(at(30_000), true, true);
        assert_eq!(clock.poll_entry(at(39_999), &table), None);
        assert_eq!(expired(clock.poll_entry(at(40_000), &table)), Some(vec![session(7)]));
    }

    #[test]
    fn a_pending_entry_that_never_applies_is_given_up_after_the_timeout() {
        let origin = Instant::now();
        let at = |ms| Now::simulated(origin, ms);
        let table = table();
        let mut clock = LockClock::new(session(1), LEASE, CLOCK_PENDING_TIMEOUT);
        clock.observe(at(0), true, true);
        assert!(clock.poll_entry(at(10_000), &table).is_some());
        assert!(clock.poll_entry(at(11_999), &table).is_none());
        assert!(clock.poll_entry(at(12_000), &table).is_some());
        clock.not_proposed();
        assert!(clock.poll_entry(at(12_001), &table).is_some(), "a refused proposal is retried");
        clock.observe_leadership(at(12_002), false);
        assert!(clock.poll_entry(at(30_000), &table).is_none(), "stood down");
        // Leading again (seen after a Raft step): a new first lease before any expiry, and
        // the majority, seen at the last tick, still counts from then.
        clock.observe_leadership(at(30_000), true);
        assert!(!clock.may_expire(at(39_999)));
        assert!(clock.may_expire(at(40_000)));
    }
}
