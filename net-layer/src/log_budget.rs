//! A budget for log lines that input from the network can cause: at most so many a window,
//! and a count of those left out, said with the next line allowed. One client sending a
//! flood of bad requests must not fill the disk with log lines, nor hide the rest of the log.

use std::time::{Duration, Instant};

/// At most `lines` log lines per `window`.
#[derive(Debug, Clone)]
pub struct LogBudget {
    lines: u32,
    window: Duration,
    started: Option<Instant>,
    used: u32,
    left_out: u64,
}

impl LogBudget {
    /// A budget of `lines` per `window`.
    pub fn new(lines: u32, window: Duration) -> LogBudget {
        LogBudget { lines, window, started: None, used: 0, left_out: 0 }
    }

    /// Whether a line may be logged at `now`: `Some(n)` with the lines left out since the
    /// last one allowed (to be said with it), `None` if this one is left out.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self.started.is_none_or(|s| now.saturating_duration_since(s) >= self.window) {
            self.started = Some(now);
            self.used = 0;
        }
        if self.used >= self.lines {
            self.left_out += 1;
            return None;
        }
        self.used += 1;
        Some(std::mem::take(&mut self.left_out))
    }
}

/// Text from the network made safe to log: control characters and quotes escaped, cut to
/// `max` characters (with `...` when cut).
pub fn escaped(text: &str, max: usize) -> String {
    let mut out: String = text.chars().take(max).flat_map(char::escape_debug).collect();
    if text.chars().nth(max).is_some() {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_past_the_budget_are_left_out_and_counted() {
        let mut budget = LogBudget::new(3, Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(budget.allow(t0), Some(0));
        assert_eq!(budget.allow(t0), Some(0));
        assert_eq!(budget.allow(t0), Some(0));
        for _ in 0..1000 {
            assert_eq!(budget.allow(t0 + Duration::from_millis(500)), None);
        }
        assert_eq!(budget.allow(t0 + Duration::from_secs(1)), Some(1000), "said with the next");
        assert_eq!(budget.allow(t0 + Duration::from_secs(1)), Some(0));
    }

    #[test]
    fn logged_text_is_escaped_and_cut() {
        assert_eq!(escaped("disk\nfull\u{1b}[31m\"", 100), "disk\\nfull\\u{1b}[31m\\\"");
        assert_eq!(escaped(&"x".repeat(70_000), 5), "xxxxx...");
        assert_eq!(escaped("short", 5), "short");
    }
}
