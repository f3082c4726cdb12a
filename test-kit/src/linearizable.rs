//! A linearizability checker for histories recorded by clients of a real system, in the
//! manner of Wing and Gong's search with Lowe's memoization (as Knossos and Porcupine do).
//!
//! A history is a list of [`Call`]s: when each was invoked and when (if ever) it returned,
//! and what it returned. It is linearizable for a [`Model`] when some order of the calls
//! that respects real time (a call that returned before another was invoked comes first)
//! takes the model through steps whose results are the ones observed. A call that never
//! returned (a timeout, a crash) may have taken effect at any time after it was invoked, or
//! never, and its result is not known.
//!
//! The search is exponential in the worst case; memoizing (set of calls done, state) keeps
//! it fast for histories of a few hundred calls on a few keys. Check each independent key
//! (a file, a lock) as a history of its own.

use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;

/// What the calls act on: a state machine whose steps may be checked against results.
pub trait Model: Clone + Eq + Hash + Debug {
    /// An operation, as invoked.
    type Op: Debug;
    /// Its result, as returned.
    type Ret: Debug;

    /// The state after `op`, if `ret` is what `op` returns in this state; `None` if it is
    /// not. With `ret` unknown (`None`: the call never returned), the state after `op`.
    fn step(&self, op: &Self::Op, ret: Option<&Self::Ret>) -> Option<Self>;
}

/// One call: its operation, when it was invoked and returned (any clock, the same for every
/// call), and what it returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call<Op, Ret> {
    /// The operation.
    pub op: Op,
    /// When it was invoked.
    pub invoked: u64,
    /// When it returned, and what; `None` if it never did.
    pub returned: Option<(u64, Ret)>,
}

/// Why a history is not linearizable: the longest prefix of calls that could be ordered,
/// and the calls none of whose next steps fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Indexes (into the history) of the longest order found that fits.
    pub longest: Vec<usize>,
    /// The calls that could come next after it, none of which fits.
    pub stuck_at: Vec<usize>,
}

/// Most (calls done, state) pairs one check visits: past it the check panics, saying the
/// history is too large to decide, rather than take the machine's memory.
pub const MAX_STATES: usize = 2_000_000;

/// Whether `history` is linearizable from `init`. Panics if it cannot tell within
/// [`MAX_STATES`] (many calls that never returned make the search wide; see
/// [`without_unseen_writes`]).
pub fn check<M: Model>(init: &M, history: &[Call<M::Op, M::Ret>]) -> Result<(), Violation> {
    let n = history.len();
    let words = n.div_ceil(64);
    let completed: Vec<usize> = (0..n).filter(|&i| history[i].returned.is_some()).collect();
    // Depth-first: each frame is (calls done, state, the order so far).
    let mut seen: HashSet<(Vec<u64>, M)> = HashSet::new();
    let mut stack = vec![(vec![0u64; words], init.clone(), Vec::<usize>::new())];
    let mut longest: (Vec<usize>, Vec<usize>) = (Vec::new(), Vec::new());
    let done_bit = |done: &[u64], i: usize| done[i / 64] & (1 << (i % 64)) != 0;
    while let Some((done, state, order)) = stack.pop() {
        if completed.iter().all(|&i| done_bit(&done, i)) {
            return Ok(());
        }
        // A call may come next if no call not yet done returned before it was invoked.
        let first_return = (0..n)
            .filter(|&i| !done_bit(&done, i))
            .filter_map(|i| history[i].returned.as_ref().map(|(at, _)| *at))
            .min()
            .unwrap_or(u64::MAX);
        let candidates: Vec<usize> =
            (0..n).filter(|&i| !done_bit(&done, i) && history[i].invoked <= first_return).collect();
        let mut moved = false;
        for &i in candidates.iter().rev() {
            let call = &history[i];
            let ret = call.returned.as_ref().map(|(_, r)| r);
            let Some(next) = state.step(&call.op, ret) else { continue };
            let mut after = done.clone();
            after[i / 64] |= 1 << (i % 64);
            assert!(
                seen.len() < MAX_STATES,
                "a history of {n} calls is too large to check in {MAX_STATES} states"
            );
            if seen.insert((after.clone(), next.clone())) {
                let mut longer = order.clone();
                longer.push(i);
                stack.push((after, next, longer));
                moved = true;
            }
        }
        if !moved && order.len() >= longest.0.len() {
            longest = (order, candidates);
        }
    }
    Err(Violation { longest: longest.0, stuck_at: longest.1 })
}

/// A register history without the writes that never returned and whose value no read saw.
/// With distinct written values this changes no verdict: such a write, linearized, would
/// have to be overwritten before any read (none saw it), so leaving it out fits the same
/// reads; and it keeps a history of many lost writes (a data-server killed under them)
/// quick to check.
pub fn without_unseen_writes<V: Clone + Eq + Hash>(
    history: &[Call<RegisterOp<V>, RegisterRet<V>>],
) -> Vec<Call<RegisterOp<V>, RegisterRet<V>>> {
    let seen: HashSet<&V> = history
        .iter()
        .filter_map(|c| match &c.returned {
            Some((_, RegisterRet::Read(Some(v)))) => Some(v),
            _ => None,
        })
        .collect();
    history
        .iter()
        .filter(|c| match (&c.op, &c.returned) {
            (RegisterOp::Write(v), None) => seen.contains(v),
            _ => true,
        })
        .cloned()
        .collect()
}

/// A register: writes of a value, reads of the last one written (`None` before any).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Register<V> {
    /// The value held.
    pub value: Option<V>,
}

/// An operation on a [`Register`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterOp<V> {
    /// Write this value.
    Write(V),
    /// Read.
    Read,
}

/// What a [`Register`] operation returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterRet<V> {
    /// A write took.
    Written,
    /// A read saw this.
    Read(Option<V>),
}

impl<V: Clone + Eq + Hash + Debug> Model for Register<V> {
    type Op = RegisterOp<V>;
    type Ret = RegisterRet<V>;

    fn step(&self, op: &RegisterOp<V>, ret: Option<&RegisterRet<V>>) -> Option<Register<V>> {
        match (op, ret) {
            (RegisterOp::Write(v), None | Some(RegisterRet::Written)) => {
                Some(Register { value: Some(v.clone()) })
            }
            (RegisterOp::Read, None) => Some(self.clone()),
            (RegisterOp::Read, Some(RegisterRet::Read(seen))) if *seen == self.value => {
                Some(self.clone())
            }
            _ => None,
        }
    }
}

/// A directory's names: create, remove and rename (which, as in MeshFS, refuses a target
/// that exists).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Names {
    /// The names present.
    pub present: std::collections::BTreeSet<String>,
}

/// An operation on [`Names`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameOp {
    /// Make a name.
    Create(String),
    /// Remove a name.
    Remove(String),
    /// Rename the first to the second.
    Rename(String, String),
}

/// What a [`Names`] operation returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRet {
    /// It was done.
    Done,
    /// Refused: the name (of a create, or a rename's target) exists.
    Exists,
    /// Refused: the name (of a remove, or a rename's source) does not exist.
    Missing,
}

impl Model for Names {
    type Op = NameOp;
    type Ret = NameRet;

    fn step(&self, op: &NameOp, ret: Option<&NameRet>) -> Option<Names> {
        let (outcome, next) = match op {
            NameOp::Create(n) if self.present.contains(n) => (NameRet::Exists, None),
            NameOp::Create(n) => (NameRet::Done, Some(self.with(|p| p.insert(n.clone())))),
            NameOp::Remove(n) if !self.present.contains(n) => (NameRet::Missing, None),
            NameOp::Remove(n) => (NameRet::Done, Some(self.with(|p| p.remove(n)))),
            NameOp::Rename(a, _) if !self.present.contains(a) => (NameRet::Missing, None),
            NameOp::Rename(a, b) if a == b => (NameRet::Done, None),
            NameOp::Rename(_, b) if self.present.contains(b) => (NameRet::Exists, None),
            NameOp::Rename(a, b) => (
                NameRet::Done,
                Some(self.with(|p| {
                    p.remove(a);
                    p.insert(b.clone())
                })),
            ),
        };
        match ret {
            Some(seen) if *seen != outcome => None,
            _ => Some(next.unwrap_or_else(|| self.clone())),
        }
    }
}

impl Names {
    fn with(&self, change: impl FnOnce(&mut std::collections::BTreeSet<String>) -> bool) -> Names {
        let mut next = self.clone();
        change(&mut next.present);
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type R = Register<u32>;

    fn w(v: u32, invoked: u64, returned: u64) -> Call<RegisterOp<u32>, RegisterRet<u32>> {
        Call { op: RegisterOp::Write(v), invoked, returned: Some((returned, RegisterRet::Written)) }
    }

    fn r(
        seen: Option<u32>,
        invoked: u64,
        returned: u64,
    ) -> Call<RegisterOp<u32>, RegisterRet<u32>> {
        Call { op: RegisterOp::Read, invoked, returned: Some((returned, RegisterRet::Read(seen))) }
    }

    fn lost(v: u32, invoked: u64) -> Call<RegisterOp<u32>, RegisterRet<u32>> {
        Call { op: RegisterOp::Write(v), invoked, returned: None }
    }

    #[test]
    fn sequential_histories_are_checked_step_by_step() {
        assert!(
            check(&R::default(), &[w(1, 0, 1), r(Some(1), 2, 3), w(2, 4, 5), r(Some(2), 6, 7)])
                .is_ok()
        );
        // A read after a write returned must see it (or a later one): a stale read is not.
        let stale = check(&R::default(), &[w(1, 0, 1), w(2, 2, 3), r(Some(1), 4, 5)]);
        let v = stale.unwrap_err();
        assert_eq!(v.longest, vec![0, 1], "{v:?}");
        assert!(check(&R::default(), &[r(Some(7), 0, 1)]).is_err(), "a value never written");
    }

    #[test]
    fn overlapping_calls_may_take_effect_in_either_order() {
        // Two writes overlap; reads after both may see either, but two reads after both
        // cannot disagree.
        let overlap = [w(1, 0, 10), w(2, 1, 11)];
        let mut h = overlap.to_vec();
        h.push(r(Some(1), 20, 21));
        assert!(check(&R::default(), &h).is_ok());
        let mut h = overlap.to_vec();
        h.push(r(Some(2), 20, 21));
        assert!(check(&R::default(), &h).is_ok());
        let mut h = overlap.to_vec();
        h.extend([r(Some(1), 20, 21), r(Some(2), 22, 23)]);
        assert!(check(&R::default(), &h).is_err(), "after both, the order is fixed");
        // A read overlapping a write may see the old or the new value, and once one read
        // saw the new one, a later read may not see the old.
        assert!(check(&R::default(), &[w(1, 0, 1), w(2, 10, 20), r(Some(1), 11, 12)]).is_ok());
        assert!(
            check(
                &R::default(),
                &[w(1, 0, 1), w(2, 10, 20), r(Some(2), 11, 12), r(Some(1), 13, 14)]
            )
            .is_err()
        );
    }

    #[test]
    fn a_call_that_never_returned_took_effect_or_did_not() {
        assert!(check(&R::default(), &[lost(1, 0), r(Some(1), 5, 6)]).is_ok(), "it took");
        assert!(check(&R::default(), &[lost(1, 0), r(None, 5, 6)]).is_ok(), "it did not");
        // But not both: once seen, it cannot be unseen.
        assert!(check(&R::default(), &[lost(1, 0), r(Some(1), 5, 6), r(None, 7, 8)]).is_err());
        // And not before it was invoked.
        assert!(check(&R::default(), &[r(Some(1), 0, 1), lost(1, 5)]).is_err());
    }

    #[test]
    fn names_are_created_removed_and_renamed_once() {
        let call =
            |op, invoked, returned, ret| Call { op, invoked, returned: Some((returned, ret)) };
        let c = |n: &str| NameOp::Create(n.into());
        let mv = |a: &str, b: &str| NameOp::Rename(a.into(), b.into());
        let ok = [
            call(c("a"), 0, 1, NameRet::Done),
            call(mv("a", "b"), 2, 3, NameRet::Done),
            call(c("a"), 4, 5, NameRet::Done),
            call(mv("a", "b"), 6, 7, NameRet::Exists),
            call(NameOp::Remove("b".into()), 8, 9, NameRet::Done),
        ];
        assert!(check(&Names::default(), &ok).is_ok());
        // Two creates of one name that overlap: exactly one may win.
        let both = [call(c("x"), 0, 5, NameRet::Done), call(c("x"), 1, 6, NameRet::Done)];
        assert!(check(&Names::default(), &both).is_err());
        let one = [call(c("x"), 0, 5, NameRet::Done), call(c("x"), 1, 6, NameRet::Exists)];
        assert!(check(&Names::default(), &one).is_ok());
        // A rename seen done, then its source still there.
        let back = [
            call(c("a"), 0, 1, NameRet::Done),
            call(mv("a", "b"), 2, 3, NameRet::Done),
            call(NameOp::Remove("a".into()), 4, 5, NameRet::Done),
        ];
        assert!(check(&Names::default(), &back).is_err());
    }

    #[test]
    fn unseen_lost_writes_are_left_out_and_seen_ones_kept() {
        let h = [w(1, 0, 1), lost(2, 2), lost(3, 3), r(Some(3), 10, 11)];
        let pruned = without_unseen_writes(&h);
        assert_eq!(pruned.len(), 3, "the write of 2 goes, the one of 3 stays");
        assert!(check(&R::default(), &pruned).is_ok());
        // A hundred lost writes nobody saw: the pruned history is checked at once.
        let mut many: Vec<_> = (0..100).map(|i| lost(100 + i, i as u64)).collect();
        many.push(r(Some(7), 200, 201));
        many.insert(0, w(7, 0, 1));
        assert!(check(&R::default(), &without_unseen_writes(&many)).is_ok());
    }

    #[test]
    fn a_few_hundred_concurrent_calls_are_checked_quickly() {
        // Four clients, each writing its own values and reading, overlapping in waves.
        let mut h = Vec::new();
        let mut last = None;
        for wave in 0..60u64 {
            let t = wave * 10;
            for c in 0..4u64 {
                h.push(w((wave * 4 + c) as u32, t, t + 5));
            }
            // The order within a wave is open; a read after the wave sees one of them, and
            // the next wave's reads are after it too.
            let seen = (wave * 4 + 3) as u32;
            h.push(r(Some(seen), t + 6, t + 7));
            last = Some(seen);
        }
        let started = std::time::Instant::now();
        assert!(check(&R::default(), &h).is_ok());
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
        assert!(last.is_some());
    }
}
