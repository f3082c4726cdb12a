//! Lock sessions and locks, Chubby-style.
//!
//! A [`Session`] is opened with the meta-servers and kept alive by a thread of its own,
//! which sends a KeepAlive every third of the lease. The session, its locks and its queued
//! requests live in the meta-servers' replicated state, so a leader change keeps them; a
//! session whose KeepAlives stop for a lease expires, and its locks are released (after the
//! cluster's lock-delay, so that a holder that was only cut off cannot clash with the next).
//!
//! The session tells its user how it stands, through [`Session::events`]:
//!
//! - [`SessionEvent::Jeopardy`]: the lease ran out locally and no meta-server has answered
//!   since (an election, a cut network). The locks may be lost: stop relying on them.
//! - [`SessionEvent::Safe`]: a KeepAlive got through again; the locks are still held.
//! - [`SessionEvent::Expired`]: the meta-servers ended the session (or nothing answered for
//!   a grace period of one more lease, at least 10 s): its locks are gone, open a new
//!   session.
//!
//! Calls on one session run one at a time: a lock wait holds up the session's other calls.
//! Use a session per thread for independent waits.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use meshfs_core::error::NsError;
pub use meshfs_core::locks::{LockInfo, LockMode};
use meshfs_core::path::MeshPath;
use meshfs_core::wire::{MetaOp, MetaReply};
use meshfs_group::ClientId;

use crate::access::Access;
use crate::error::ClientError;
use crate::meta::MetaClient;

/// Request ids of a session's KeepAlives start here, apart from its other requests.
const KEEPALIVE_REQUESTS: u64 = 1 << 62;
/// A lock with no timeout waits in rounds of this long.
const WAIT_ROUND: Duration = Duration::from_secs(3600);
/// A session that no meta-server has answered for its lease and then this long (or one
/// more lease, if longer) counts as expired. Longer than the meta-servers' own lenience
/// after an election or an outage (one lease), so a session they keep is not given up.
const MIN_GRACE: Duration = Duration::from_secs(10);

/// What happened to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEvent {
    /// The lease lapsed locally and no meta-server answers: the locks may be lost.
    Jeopardy,
    /// The meta-servers answered again: the session and its locks are intact.
    Safe,
    /// The session ended: its locks are gone.
    Expired,
}

/// How a session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Its lease is in force.
    Safe,
    /// Its lease lapsed locally; the keeper is trying to reach the leader.
    Jeopardy,
    /// It ended (expired or closed).
    Expired,
}

#[derive(Debug)]
struct Standing {
    state: SessionState,
    /// When the lease ends by this client's clock (counted from when the KeepAlive that
    /// renewed it was sent, so never later than the meta-servers' end).
    lease_end: Instant,
    closing: bool,
    listeners: Vec<Sender<SessionEvent>>,
}

#[derive(Debug)]
struct Keep {
    standing: Mutex<Standing>,
    changed: Condvar,
}

impl Keep {
    fn standing(&self) -> MutexGuard<'_, Standing> {
        self.standing.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, standing: &mut Standing, state: SessionState) {
        if standing.state == state || standing.state == SessionState::Expired {
            return;
        }
        standing.state = state;
        let event = match state {
            SessionState::Safe => SessionEvent::Safe,
            SessionState::Jeopardy => SessionEvent::Jeopardy,
            SessionState::Expired => SessionEvent::Expired,
        };
        standing.listeners.retain(|l| l.send(event).is_ok());
        self.changed.notify_all();
    }
}

#[derive(Debug)]
struct Inner {
    calls: Mutex<MetaClient>,
    client: ClientId,
    nonce: u64,
    lease: Duration,
    lock_delay: Duration,
    keep: Arc<Keep>,
    keeper: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let open = {
            let mut standing = self.keep.standing();
            standing.closing = true;
            self.keep.changed.notify_all();
            standing.state != SessionState::Expired
        };
        if let Some(keeper) = self.keeper.get_mut().ok().and_then(Option::take) {
            let _ = keeper.join();
        }
        if open {
            // Best effort: the locks go now rather than after the lease and lock-delay.
            let calls = self.calls.get_mut().unwrap_or_else(|e| e.into_inner());
            calls.set_timeout(Duration::from_secs(2));
            let _ = calls.call(MetaOp::CloseSession);
        }
    }
}

/// An open lock session; cheap to clone (the clones share it). The last clone dropped closes
/// it, releasing its locks.
#[derive(Debug, Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

impl Session {
    /// Opens a session with the cluster `access` reaches, acting as its credentials.
    pub fn open(access: &Access) -> Result<Session, ClientError> {
        let mut calls = MetaClient::new(access)?;
        let sent = Instant::now();
        let (lease, lock_delay) = match calls.call(MetaOp::OpenSession)? {
            MetaReply::Session { lease_ms, lock_delay_ms } => {
                (Duration::from_millis(lease_ms), Duration::from_millis(lock_delay_ms))
            }
            MetaReply::Failed(err) => return Err(ClientError::Namespace(err)),
            other => return Err(unexpected(&other)),
        };
        let nonce = calls.session();
        let keep = Arc::new(Keep {
            standing: Mutex::new(Standing {
                state: SessionState::Safe,
                lease_end: sent + lease,
                closing: false,
                listeners: Vec::new(),
            }),
            changed: Condvar::new(),
        });
        let mut keeper = MetaClient::with_session(access, nonce, KEEPALIVE_REQUESTS)?;
        keeper.set_timeout((lease / 4).max(Duration::from_millis(100)));
        let thread_keep = Arc::clone(&keep);
        let handle = std::thread::Builder::new()
            .name(format!("meshfs-keepalive-{nonce:x}"))
            .spawn(move || keep_alive(keeper, &thread_keep, lease))
            .map_err(|e| ClientError::Local {
                what: "starting the KeepAlive thread".into(),
                source: e,
            })?;
        Ok(Session {
            inner: Arc::new(Inner {
                calls: Mutex::new(calls),
                client: access.credentials.id,
                nonce,
                lease,
                lock_delay,
                keep,
                keeper: Mutex::new(Some(handle)),
            }),
        })
    }

    /// The session's lease length.
    pub fn lease(&self) -> Duration {
        self.inner.lease
    }

    /// The cluster's lock-delay.
    pub fn lock_delay(&self) -> Duration {
        self.inner.lock_delay
    }

    /// Who it is: the client and the session number.
    pub fn id(&self) -> (ClientId, u64) {
        (self.inner.client, self.inner.nonce)
    }

    /// How it stands now.
    pub fn state(&self) -> SessionState {
        self.inner.keep.standing().state
    }

    /// Events from now on: jeopardy, safe again, expired.
    pub fn events(&self) -> Receiver<SessionEvent> {
        let (tx, rx) = channel();
        let mut standing = self.inner.keep.standing();
        if standing.state == SessionState::Expired {
            let _ = tx.send(SessionEvent::Expired);
        }
        standing.listeners.push(tx);
        rx
    }

    fn calls(&self) -> Result<MutexGuard<'_, MetaClient>, ClientError> {
        if self.state() == SessionState::Expired {
            return Err(ClientError::Namespace(NsError::SessionExpired {
                client: self.inner.client.0,
            }));
        }
        Ok(self.inner.calls.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Takes `path`'s lock in `mode`. With `wait` `None` it is a try: a lock held by another
    /// fails at once ([`NsError::LockBusy`]). With `Some(d)` it waits in the lock's queue up
    /// to `d` ([`NsError::LockTimeout`] then); `Some(Duration::MAX)` waits for as long as it
    /// takes. The lock is released by [`Lock::unlock`] or when the [`Lock`] is dropped.
    pub fn lock(
        &self,
        path: &str,
        mode: LockMode,
        wait: Option<Duration>,
    ) -> Result<Lock, ClientError> {
        let mesh = MeshPath::parse(path).map_err(|e| ClientError::Namespace(e.into()))?;
        let mut left = wait;
        loop {
            let round = left.map(|l| l.min(WAIT_ROUND));
            let wait_ms = round.map(|r| u64::try_from(r.as_millis()).unwrap_or(u64::MAX));
            let op = MetaOp::Lock { path: mesh.clone(), mode, wait_ms };
            let mut calls = self.calls()?;
            let reply = calls.call_waiting(op, round.unwrap_or(Duration::ZERO));
            match reply {
                Ok(MetaReply::Locked { sequencer }) => {
                    return Ok(Lock {
                        session: self.clone(),
                        path: mesh.to_string(),
                        mode,
                        sequencer,
                        held: true,
                    });
                }
                Ok(MetaReply::Failed(NsError::LockTimeout(_)))
                    if left.is_some_and(|l| l > WAIT_ROUND) =>
                {
                    left = left.map(|l| l.saturating_sub(WAIT_ROUND));
                }
                Ok(MetaReply::Failed(err)) => return Err(ClientError::Namespace(err)),
                Ok(other) => return Err(unexpected(&other)),
                Err(err) => {
                    // The request may be queued or granted where we could not hear it:
                    // give it back (an unlock cancels a wait too).
                    let _ = calls.call(MetaOp::Unlock { path: mesh });
                    return Err(err);
                }
            }
        }
    }

    fn unlock_path(&self, path: &str) -> Result<(), ClientError> {
        let mesh = MeshPath::parse(path).map_err(|e| ClientError::Namespace(e.into()))?;
        match self.calls()?.call(MetaOp::Unlock { path: mesh })? {
            MetaReply::Done => Ok(()),
            MetaReply::Failed(err) => Err(ClientError::Namespace(err)),
            other => Err(unexpected(&other)),
        }
    }

    /// Locks at or under `path` with their holders and waiters (any client's), and whether
    /// more matched than one answer lists.
    pub fn locks(&self, path: &str) -> Result<(Vec<LockInfo>, bool), ClientError> {
        list_locks(&mut *self.calls()?, path)
    }

    /// Closes the session: its locks are released now, without lock-delay.
    pub fn close(self) -> Result<(), ClientError> {
        let reply = {
            let mut calls = self.calls()?;
            calls.call(MetaOp::CloseSession)
        };
        {
            // Closed by its user, who needs no event for it.
            let keep = &self.inner.keep;
            let mut standing = keep.standing();
            standing.listeners.clear();
            keep.set(&mut standing, SessionState::Expired);
        }
        match reply? {
            MetaReply::Done => Ok(()),
            MetaReply::Failed(err) => Err(ClientError::Namespace(err)),
            other => Err(unexpected(&other)),
        }
    }
}

/// The locks at or under `path`, through any namespace client (no session needed).
pub fn list_locks(meta: &mut MetaClient, path: &str) -> Result<(Vec<LockInfo>, bool), ClientError> {
    let path = MeshPath::parse(path).map_err(|e| ClientError::Namespace(e.into()))?;
    match meta.call(MetaOp::Locks { path })? {
        MetaReply::Locks { locks, more } => Ok((locks, more)),
        MetaReply::Failed(err) => Err(ClientError::Namespace(err)),
        other => Err(unexpected(&other)),
    }
}

fn unexpected(reply: &MetaReply) -> ClientError {
    ClientError::Protocol {
        addr: "0.0.0.0:0".parse().expect("literal"),
        detail: format!("unexpected reply {reply:?}"),
    }
}

/// The KeepAlive thread: renews the lease every third of it; reports jeopardy when the
/// lease lapses unrenewed, safe when a renewal gets through again, and expiry when the
/// meta-servers say so or a further lease passes without an answer.
fn keep_alive(mut meta: MetaClient, keep: &Keep, lease: Duration) {
    let interval = lease / 3;
    let mut next = Instant::now() + interval;
    loop {
        {
            let mut standing = keep.standing();
            loop {
                if standing.closing || standing.state == SessionState::Expired {
                    return;
                }
                let now = Instant::now();
                if now >= next {
                    break;
                }
                standing = keep
                    .changed
                    .wait_timeout(standing, next - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        let sent = Instant::now();
        let reply = meta.call(MetaOp::KeepAlive);
        let mut standing = keep.standing();
        match reply {
            Ok(MetaReply::Done) => {
                standing.lease_end = standing.lease_end.max(sent + lease);
                keep.set(&mut standing, SessionState::Safe);
                next = sent + interval;
            }
            Ok(MetaReply::Failed(NsError::SessionExpired { .. })) => {
                log::warn!("lock session expired: its locks are gone");
                keep.set(&mut standing, SessionState::Expired);
                return;
            }
            other => {
                let now = Instant::now();
                if now >= standing.lease_end + lease.max(MIN_GRACE) {
                    log::warn!("lock session lost: no meta-server answered past its grace period");
                    keep.set(&mut standing, SessionState::Expired);
                    return;
                }
                if now >= standing.lease_end {
                    if standing.state == SessionState::Safe {
                        log::warn!("lock session in jeopardy: {other:?}");
                    }
                    keep.set(&mut standing, SessionState::Jeopardy);
                }
                next = now + Duration::from_millis(100).min(interval);
            }
        }
    }
}

/// A held lock; released by [`Lock::unlock`], or when dropped.
#[derive(Debug)]
pub struct Lock {
    session: Session,
    path: String,
    mode: LockMode,
    sequencer: u64,
    held: bool,
}

impl Lock {
    /// The lock's path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// How it is held.
    pub fn mode(&self) -> LockMode {
        self.mode
    }

    /// The grant's sequencer: larger than every earlier grant's, of any lock.
    pub fn sequencer(&self) -> u64 {
        self.sequencer
    }

    /// The session holding it.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Releases it.
    pub fn unlock(mut self) -> Result<(), ClientError> {
        self.held = false;
        self.session.unlock_path(&self.path)
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if self.held {
            let _ = self.session.unlock_path(&self.path);
        }
    }
}
