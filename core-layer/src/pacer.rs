//! A token bucket that holds a stream of bytes to a rate (repair copies into a data-server).
//!
//! Pure: the time of each request is an argument, so the server and the simulation run the
//! same arithmetic and a test can push ten simulated seconds through it in a loop.

use std::time::Instant;

/// Allowance for `bytes_per_sec`, saving up at most a tenth of a second's worth (and at
/// least `min_burst`, so that one piece of that size always gets through).
#[derive(Debug, Clone)]
pub struct Pacer {
    bytes_per_sec: u64,
    min_burst: u64,
    allowance: f64,
    /// When allowance was last added; `None` until the first request (nothing is saved up
    /// before it).
    last: Option<Instant>,
}

impl Pacer {
    /// A pacer for `bytes_per_sec`, with bursts of at least `min_burst` bytes.
    pub fn new(bytes_per_sec: u64, min_burst: u64) -> Pacer {
        Pacer { bytes_per_sec, min_burst, allowance: 0.0, last: None }
    }

    /// Takes `bytes` of allowance at `now` if there is that much.
    pub fn take(&mut self, bytes: u64, now: Instant) -> bool {
        let rate = self.bytes_per_sec as f64;
        let burst = (rate / 10.0).max(self.min_burst as f64);
        let elapsed =
            self.last.map_or(0.0, |last| now.saturating_duration_since(last).as_secs_f64());
        self.allowance = (self.allowance + elapsed * rate).min(burst);
        self.last = Some(now);
        if self.allowance >= bytes as f64 {
            self.allowance -= bytes as f64;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const PIECE: u64 = 1024 * 1024;

    #[test]
    fn it_holds_a_stream_to_the_rate_and_bursts_at_most_a_tenth_of_a_second() {
        let start = Instant::now();
        let mut pacer = Pacer::new(10_000_000, PIECE); // 10 MB/s
        assert!(!pacer.take(PIECE, start), "nothing is saved up at the start");
        // Over 10 simulated seconds, taking 1 MiB pieces whenever allowed: about 100 MB.
        let mut taken = 0;
        for ms in 0..10_000u64 {
            while pacer.take(PIECE, start + Duration::from_millis(ms)) {
                taken += PIECE;
            }
        }
        assert!((95_000_000..=101_000_000).contains(&taken), "{taken} bytes in 10 s");
        // After a long idle spell, at most the burst (a tenth of a second, or one piece).
        let later = start + Duration::from_secs(3600);
        let mut burst = 0;
        while pacer.take(PIECE, later) {
            burst += PIECE;
        }
        assert_eq!(burst, PIECE, "1 MiB is more than a tenth of a second at 10 MB/s");
    }
}
