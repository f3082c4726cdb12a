//! Round-trip time statistics per peer, and reconnect backoff.

use std::time::Duration;

use crate::rng::Rng;

/// RTT of one peer: last sample, smoothed (RFC 6298's SRTT: 7/8 old + 1/8 new), min and max.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RttStats {
    /// Samples taken.
    pub samples: u64,
    /// The most recent sample.
    pub last: Duration,
    /// Exponentially smoothed RTT.
    pub smoothed: Duration,
    /// Smallest sample.
    pub min: Duration,
    /// Largest sample.
    pub max: Duration,
}

impl RttStats {
    /// Adds one sample.
    pub fn record(&mut self, sample: Duration) {
        if self.samples == 0 {
            self.smoothed = sample;
            self.min = sample;
            self.max = sample;
        } else {
            self.smoothed = (self.smoothed * 7 + sample) / 8;
            self.min = self.min.min(sample);
            self.max = self.max.max(sample);
        }
        self.last = sample;
        self.samples += 1;
    }
}

/// The delay before reconnect attempt `attempt` (0 for the first retry): `min * 2^attempt`,
/// capped at `max`, then jittered into its upper half ("equal jitter") so that servers that
/// lost a peer together do not all redial in the same instant.
pub fn backoff(attempt: u32, min: Duration, max: Duration, rng: &mut Rng) -> Duration {
    let base = min.saturating_mul(1u32 << attempt.min(20)).min(max);
    let half = base / 2;
    let jitter_us = rng.up_to(u64::try_from(half.as_micros()).unwrap_or(u64::MAX));
    half + Duration::from_micros(jitter_us)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn rtt_table() {
        // (sample us, last, smoothed, min, max) after each sample.
        let table: &[(u64, u64, u64, u64, u64)] = &[
            (800, 800, 800, 800, 800),
            (0, 0, 700, 0, 800),
            (1600, 1600, 812, 0, 1600),
            (812, 812, 812, 0, 1600),
        ];
        let mut stats = RttStats::default();
        for (i, &(sample, last, smoothed, min, max)) in table.iter().enumerate() {
            stats.record(us(sample));
            assert_eq!(stats.last, us(last), "row {i}");
            // Integer division of Duration rounds to the nanosecond; compare in microseconds.
            assert_eq!(stats.smoothed.as_micros() as u64, smoothed, "row {i}");
            assert_eq!((stats.min, stats.max), (us(min), us(max)), "row {i}");
            assert_eq!(stats.samples, i as u64 + 1);
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let (min, max) = (Duration::from_millis(100), Duration::from_millis(5000));
        let mut rng = Rng::from_u64(42);
        for attempt in 0..12u32 {
            let base = (min * 2u32.pow(attempt)).min(max);
            for _ in 0..50 {
                let delay = backoff(attempt, min, max, &mut rng);
                assert!(
                    delay >= base / 2 && delay <= base,
                    "attempt {attempt}: {delay:?} vs {base:?}"
                );
            }
        }
        // Huge attempt numbers neither overflow nor pass the cap.
        assert!(backoff(u32::MAX, min, max, &mut rng) <= max);
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut rng = Rng::from_u64(3);
        let delays: std::collections::HashSet<Duration> = (0..20)
            .map(|_| backoff(3, Duration::from_millis(100), Duration::from_secs(5), &mut rng))
            .collect();
        assert!(delays.len() > 10, "jitter should spread delays, got {delays:?}");
    }
}
