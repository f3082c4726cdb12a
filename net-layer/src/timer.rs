//! The deadline queue: timers by deadline, cancellable, the earliest sets the poll timeout.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Instant;

/// Names one armed timer; returned by `EventLoop::set_timer`, used to cancel it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerId(u64);

/// Timers ordered by deadline. Cancelling is O(1): the heap entry stays until it surfaces and
/// is skipped because its id is no longer live.
#[derive(Debug, Default)]
pub(crate) struct TimerQueue {
    heap: BinaryHeap<Reverse<(Instant, TimerId)>>,
    /// Live timers and the token each hands back when it fires.
    live: HashMap<TimerId, u64>,
    next_id: u64,
}

impl TimerQueue {
    pub(crate) fn insert(&mut self, deadline: Instant, token: u64) -> TimerId {
        let id = TimerId(self.next_id);
        self.next_id += 1;
        self.heap.push(Reverse((deadline, id)));
        self.live.insert(id, token);
        id
    }

    pub(crate) fn cancel(&mut self, id: TimerId) -> bool {
        self.live.remove(&id).is_some()
    }

    /// The earliest live deadline.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((deadline, id))) = self.heap.peek() {
            if self.live.contains_key(id) {
                return Some(*deadline);
            }
            self.heap.pop();
        }
        None
    }

    /// Removes and returns the next timer due at `now`, as (id, token).
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<(TimerId, u64)> {
        while let Some(Reverse((deadline, id))) = self.heap.peek().copied() {
            if deadline > now {
                return None;
            }
            self.heap.pop();
            if let Some(token) = self.live.remove(&id) {
                return Some((id, token));
            }
        }
        None
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.live.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn fires_in_deadline_order_and_skips_cancelled() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut timers = TimerQueue::default();
        let late = timers.insert(t0 + ms(30), 3);
        let cancelled = timers.insert(t0 + ms(10), 1);
        let early = timers.insert(t0 + ms(20), 2);
        assert!(timers.cancel(cancelled));
        assert!(!timers.cancel(cancelled));
        assert_eq!(timers.next_deadline(), Some(t0 + ms(20)));
        assert_eq!(timers.pop_expired(t0 + ms(19)), None);
        assert_eq!(timers.pop_expired(t0 + ms(30)), Some((early, 2)));
        assert_eq!(timers.pop_expired(t0 + ms(30)), Some((late, 3)));
        assert_eq!(timers.pop_expired(t0 + ms(99)), None);
        assert_eq!(timers.next_deadline(), None);
        assert_eq!(timers.len(), 0);
    }
}
