//! Waiting for something to become true, with a deadline: tests wait for an event or a
//! status, never for a fixed time.

use std::time::{Duration, Instant};

/// Generous: CI machines are slow and shared. Tests wait for events, never for this long.
pub const DEADLINE: Duration = Duration::from_secs(30);
/// How often a condition is looked at again.
const POLL_EVERY: Duration = Duration::from_millis(10);

/// Looks at `done` until it holds; panics naming `what` if [`DEADLINE`] passes first.
pub fn wait_until(what: &str, done: impl FnMut() -> bool) {
    wait_until_within(what, DEADLINE, done);
}

/// [`wait_until`] with a deadline of the caller's.
pub fn wait_until_within(what: &str, limit: Duration, done: impl FnMut() -> bool) {
    wait_until_explained(what, limit, done, String::new);
}

/// [`wait_until_within`], and at the deadline the panic also shows `explain()` (a log, the
/// last status).
pub fn wait_until_explained(
    what: &str,
    limit: Duration,
    mut done: impl FnMut() -> bool,
    explain: impl Fn() -> String,
) {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}\n{}", explain());
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// The first `Some` that `found` returns; panics naming `what` at the deadline.
pub fn wait_for<T>(what: &str, mut found: impl FnMut() -> Option<T>) -> T {
    let mut value = None;
    wait_until(what, || {
        value = found();
        value.is_some()
    });
    value.expect("wait_until returned, so found() gave Some")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_the_condition_and_fails_at_the_deadline() {
        let mut n = 0;
        wait_until("three looks", || {
            n += 1;
            n == 3
        });
        assert_eq!(n, 3);
        assert_eq!(wait_for("a value", || Some(5)), 5);
        let late = std::panic::catch_unwind(|| {
            wait_until_within("never", Duration::from_millis(30), || false)
        });
        assert!(late.is_err());
    }
}
