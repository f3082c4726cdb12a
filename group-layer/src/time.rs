//! The time a callback runs at, as the driver read it: server logic takes it as an input and
//! reads no clock of its own, so the simulation can run the same code on a fake clock.
//!
//! Two clocks, for two jobs: [`Now::mono`] (monotonic) for deadlines, timers, leases and
//! pacing inside one process; [`Now::wall_ms`] (ms since the Unix epoch) only where a time
//! leaves the process, as the time of a log entry that every replica applies.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The time of one callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// The monotonic clock.
    pub mono: Instant,
    /// The wall clock, ms since the Unix epoch (0 if the clock is before it).
    pub wall_ms: u64,
}

impl Now {
    /// The machine's clocks, now. Only the driver (and test harnesses) call this.
    pub fn read() -> Now {
        let wall_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Now { mono: Instant::now(), wall_ms }
    }

    /// A simulated time: `ms` milliseconds after `origin` on both clocks (the simulation's
    /// wall clock starts at 0).
    pub fn simulated(origin: Instant, ms: u64) -> Now {
        Now { mono: origin + Duration::from_millis(ms), wall_ms: ms }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_simulated_time_moves_both_clocks_together() {
        let origin = Instant::now();
        let (t, later) = (Now::simulated(origin, 1_000), Now::simulated(origin, 1_250));
        assert_eq!((t.wall_ms, later.wall_ms), (1_000, 1_250));
        assert_eq!(later.mono - t.mono, Duration::from_millis(250));
        assert_eq!(t.mono - origin, Duration::from_secs(1));
    }
}
