//! `meshfs bench`: workloads against a running cluster, each printed as a table or as one
//! JSON object per result, and the scaffolding they share: phases of concurrent workers with
//! progress, latency histograms and their percentiles, generated data, scratch directories,
//! and the JSON report.
//!
//! - [`meta`]: namespace operations at several client counts (as HDFS's NNThroughputBenchmark).
//! - [`seq`]: sequential write and cold read of large files.
//! - [`rand`]: 4 KiB random reads at queue depths.
//! - [`overwrite`]: small durable writes at random offsets of one large file.
//! - [`small`]: create-and-write of small files.
//! - [`locks`]: lock and unlock pairs, uncontended and contended.
//! - [`repair`]: time to restore full replication after losing a data-server.
//! - [`limits`]: the machine's own limits (disk, fsync, loopback), measured beside a run.
//!
//! Behind the `tools` feature (on by default; the `meshfs` program needs it): a program that
//! only uses the client library builds without these, their histograms and JSON.

pub mod limits;
pub mod locks;
pub mod meta;
pub mod overwrite;
pub mod rand;
pub mod repair;
pub(crate) mod rng;
pub mod seq;
pub mod small;

use std::fmt::Display;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::data::Progress;
use crate::error::ClientError;
use rng::XorShift;

/// Pseudo-random bytes, `left` of them.
pub(crate) struct Generated {
    rng: XorShift,
    left: u64,
}

impl Generated {
    /// `len` bytes from the stream seeded by `seed`.
    pub(crate) fn new(seed: u64, len: u64) -> Generated {
        Generated { rng: XorShift::new(0x9E37_79B9_7F4A_7C15 ^ seed), left: len }
    }
}

impl Read for Generated {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        self.rng.fill(&mut buf[..n]);
        self.left -= n as u64;
        Ok(n)
    }
}

/// Discards what it is given.
pub(crate) struct Sink;

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Records the time between progress steps, and reports the amount moved so far.
pub(crate) struct Steps<'a> {
    last: Instant,
    /// Latencies recorded, microseconds.
    pub(crate) latencies: Histogram<u64>,
    /// Amount moved by every worker together (bytes, files...).
    pub(crate) done: &'a std::sync::atomic::AtomicU64,
    reported: u64,
}

impl Progress for Steps<'_> {
    fn update(&mut self, done: u64, _total: Option<u64>) {
        let now = Instant::now();
        let us = u64::try_from((now - self.last).as_micros()).unwrap_or(u64::MAX).max(1);
        self.latencies.saturating_record(us);
        self.last = now;
        self.done.fetch_add(done - self.reported, std::sync::atomic::Ordering::Relaxed);
        self.reported = done;
    }
}

/// Latency percentiles of a phase, in microseconds, from its histogram.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Slowest.
    pub max_us: u64,
}

impl Latency {
    /// The percentiles of `latencies`.
    pub(crate) fn of(latencies: &Histogram<u64>) -> Latency {
        Latency {
            p50_us: latencies.value_at_quantile(0.50),
            p99_us: latencies.value_at_quantile(0.99),
            p999_us: latencies.value_at_quantile(0.999),
            max_us: latencies.max(),
        }
    }

    /// The four latency columns of a bench table, each after a space.
    pub(crate) fn cells(&self) -> String {
        columns(self.p50_us, self.p99_us, self.p999_us, self.max_us)
    }

    /// Their heading, to match [`Latency::cells`].
    pub(crate) fn heading() -> String {
        columns("p50 us", "p99 us", "p99.9 us", "max us")
    }
}

fn columns(p50: impl Display, p99: impl Display, p999: impl Display, max: impl Display) -> String {
    format!(" {p50:>8} {p99:>8} {p999:>9} {max:>8}")
}

/// A latency histogram: 1 us to 600 s at 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// What a phase moved, in how long, and its latencies.
pub(crate) struct Phase {
    /// Amount moved (in the phase's unit).
    pub(crate) amount: u64,
    /// Wall time, seconds.
    pub(crate) seconds: f64,
    /// Every worker's latencies together, microseconds.
    pub(crate) latencies: Histogram<u64>,
}

impl Phase {
    /// The amount moved per second of wall time.
    pub(crate) fn per_second(&self) -> f64 {
        self.amount as f64 / self.seconds.max(1e-9)
    }
}

/// Runs `one(i, steps)` for `workers` workers at once, reporting progress once a second in
/// `unit` (its name, and how many of the amount make one).
pub(crate) fn phase(
    workload: &str,
    workers: usize,
    unit: (&str, f64),
    mut report: impl FnMut(&str),
    one: impl Fn(usize, &mut Steps<'_>) -> Result<u64, ClientError> + Sync,
) -> Result<Phase, ClientError> {
    let done = std::sync::atomic::AtomicU64::new(0);
    let started = Instant::now();
    let outcomes: Vec<Result<(u64, Histogram<u64>), ClientError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|i| {
                let (one, done) = (&one, &done);
                scope.spawn(move || {
                    let mut steps =
                        Steps { last: Instant::now(), latencies: histogram(), done, reported: 0 };
                    one(i, &mut steps).map(|amount| (amount, steps.latencies))
                })
            })
            .collect();
        let mut next = Instant::now() + Duration::from_secs(1);
        while handles.iter().any(|h| !h.is_finished()) {
            std::thread::sleep(Duration::from_millis(20));
            if Instant::now() >= next {
                let moved = done.load(std::sync::atomic::Ordering::Relaxed) as f64 / unit.1;
                let secs = started.elapsed().as_secs_f64();
                report(&format!(
                    "{workload}: {moved:.0} {} in {secs:.1} s, {:.0} {}/s",
                    unit.0,
                    moved / secs,
                    unit.0
                ));
                next += Duration::from_secs(1);
            }
        }
        handles.into_iter().map(|h| h.join().expect("bench threads do not panic")).collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    let mut latencies = histogram();
    let mut amount = 0;
    for outcome in outcomes {
        let (moved, h) = outcome?;
        amount += moved;
        latencies.add(&h).expect("same bounds");
    }
    Ok(Phase { amount, seconds, latencies })
}

/// A namespace path of its own for one run of a bench workload: `/bench-NAME-PID-MILLIS`.
pub(crate) fn scratch_path(name: &str) -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("/bench-{name}-{}-{millis}", std::process::id())
}

/// A run as the bench JSON object: `{"workload", "params", "results"}`, and with the
/// machine's limits, `"limits"` and `"ratios"` (each result as a fraction of its limit).
/// Every workload's `to_json` builds one, so all reports have the one shape BENCHMARKS.md
/// and `scripts/bench-all` read.
#[derive(Debug)]
pub(crate) struct Report {
    json: serde_json::Value,
}

impl Report {
    /// A report of `workload` run with `params` (a JSON object).
    pub(crate) fn new(workload: &str, params: serde_json::Value) -> Report {
        Report {
            json: serde_json::json!({
                "workload": workload,
                "params": params,
                "results": serde_json::Map::new(),
            }),
        }
    }

    /// Adds one figure to `results`.
    pub(crate) fn result(&mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) {
        if let Some(results) = self.json["results"].as_object_mut() {
            results.insert(key.into(), value.into());
        }
    }

    /// Adds the four latency percentiles to `results`, each named by `key` ("p50_us", ...).
    pub(crate) fn latency(&mut self, latency: &Latency, key: impl Fn(&str) -> String) {
        self.result(key("p50_us"), latency.p50_us);
        self.result(key("p99_us"), latency.p99_us);
        self.result(key("p999_us"), latency.p999_us);
        self.result(key("max_us"), latency.max_us);
    }

    /// Sets a parameter.
    pub(crate) fn param(&mut self, key: &str, value: impl Into<serde_json::Value>) {
        self.json["params"][key] = value.into();
    }

    /// Replaces `results` whole (a workload whose result is one serialized struct).
    pub(crate) fn results(&mut self, results: serde_json::Value) {
        self.json["results"] = results;
    }

    /// Adds a limit measured beside the run to `limits`.
    pub(crate) fn limit(&mut self, key: &str, value: impl Into<serde_json::Value>) {
        self.insert("limits", key, value.into());
    }

    /// Adds a result as a fraction of its limit to `ratios`, to three decimals.
    pub(crate) fn ratio(&mut self, key: impl Into<String>, ratio: f64) {
        self.insert("ratios", &key.into(), round(ratio, 3).into());
    }

    fn insert(&mut self, section: &str, key: &str, value: serde_json::Value) {
        if !self.json[section].is_object() {
            self.json[section] = serde_json::Map::new().into();
        }
        self.json[section][key] = value;
    }

    /// The JSON text.
    pub(crate) fn finish(self) -> String {
        self.json.to_string()
    }
}

/// `x` rounded to `digits` decimals, as the reports print rates and ratios.
pub(crate) fn round(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}
