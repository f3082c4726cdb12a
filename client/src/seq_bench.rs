//! `meshfs bench seqwrite` / `seqread`: N files of a given size written (then read) in
//! parallel through the client library, one client (its own connections and session) per
//! file; MB/s over the wall time of the phase, and latency percentiles from a histogram:
//! for writes, the time between one block's commit and the next (each block is durable on
//! every replica and committed); for reads, each 1 MiB read request, verified.
//!
//! The data is pseudo-random (never zeros, which some systems skip); it is generated, not
//! read from a local file, so the local disk is not part of the measurement. Files live in
//! a fresh directory, removed afterwards unless asked to keep them.

use std::fmt::Display;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::connection::Credentials;
use crate::data::{self, DataClient, Progress};
use crate::error::ClientError;
use crate::meta::MetaClient;
use crate::rng::XorShift;
use meshfs_group::Config;

/// What to run.
#[derive(Debug, Clone)]
pub struct SeqBench {
    /// Bytes per file.
    pub size: u64,
    /// Files written (and read) at once.
    pub files: usize,
    /// Copies of each block (0: the config's default).
    pub replication: u8,
    /// Also read the files back.
    pub read: bool,
    /// Leave the files in place.
    pub keep: bool,
}

/// One phase's figures.
#[derive(Debug, Clone, Serialize)]
pub struct SeqResult {
    /// "seqwrite" or "seqread".
    pub workload: &'static str,
    /// Bytes moved by all files together.
    pub bytes: u64,
    /// Wall time of the phase, seconds.
    pub seconds: f64,
    /// Throughput, MB/s (10^6 bytes).
    pub mb_s: f64,
    /// Latency percentiles.
    #[serde(flatten)]
    pub latency: Latency,
    /// For a read: whether the data-servers' files were dropped from the page cache first.
    pub cold: Option<bool>,
}

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

    /// Adds them to a bench JSON `results` map, each named by `key` ("p50_us", ...).
    pub(crate) fn insert(
        &self,
        metrics: &mut serde_json::Map<String, serde_json::Value>,
        key: impl Fn(&str) -> String,
    ) {
        metrics.insert(key("p50_us"), self.p50_us.into());
        metrics.insert(key("p99_us"), self.p99_us.into());
        metrics.insert(key("p999_us"), self.p999_us.into());
        metrics.insert(key("max_us"), self.max_us.into());
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

fn seq_result(workload: &'static str, phase: Phase) -> SeqResult {
    let l = &phase.latencies;
    SeqResult {
        workload,
        bytes: phase.amount,
        seconds: phase.seconds,
        mb_s: phase.per_second() / 1e6,
        latency: Latency::of(l),
        cold: None,
    }
}

/// Writes the files (and with `read`, reads them back); one result per phase.
pub fn run(
    config: &Config,
    credentials: &Credentials,
    bench: &SeqBench,
    mut report: impl FnMut(&str),
) -> Result<Vec<SeqResult>, ClientError> {
    let dir = scratch_path("seq");
    let mut meta = MetaClient::new(config, credentials.clone())?;
    meta.mkdir(&dir, true)?;
    let path = |i: usize| format!("{dir}/f{i}");
    let clients = || -> Result<(MetaClient, DataClient), ClientError> {
        Ok((
            MetaClient::new(config, credentials.clone())?,
            DataClient::new(config, credentials.clone()),
        ))
    };
    let mut results = Vec::new();
    let written = phase("seqwrite", bench.files, ("MB", 1e6), &mut report, |i, steps| {
        let (mut meta, mut data) = clients()?;
        let mut input = Generated {
            rng: XorShift::new(0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1)),
            left: bench.size,
        };
        data::put(
            &mut meta,
            &mut data,
            &mut input,
            &path(i),
            bench.replication,
            Some(bench.size),
            steps,
        )
    });
    let outcome = written.and_then(|w| {
        results.push(seq_result("seqwrite", w));
        if bench.read {
            // A cold read, where the data-servers' disks are on this machine (a local
            // cluster): their block files are dropped from the page cache first.
            let cold = match drop_cached(config) {
                Ok(0) => {
                    report("data-servers' disks not on this machine: the read may be warm");
                    false
                }
                Ok(n) => {
                    report(&format!("dropped {n} block files from the page cache"));
                    true
                }
                Err(err) => {
                    report(&format!("could not drop the page cache: {err}"));
                    false
                }
            };
            let read = phase("seqread", bench.files, ("MB", 1e6), &mut report, |i, steps| {
                let (mut meta, mut data) = clients()?;
                data::get(&mut meta, &mut data, &path(i), &mut Sink, steps)
            })?;
            results.push(SeqResult { cold: Some(cold), ..seq_result("seqread", read) });
        }
        Ok(())
    });
    if !bench.keep
        && let Err(err) = meta.remove(&dir, true)
    {
        report(&format!("could not remove {dir}: {err}"));
    }
    outcome.map(|()| results)
}

/// Drops every file under the data directories of the config's data-servers that exist on
/// this machine from the page cache (their pages are clean: every block was fsynced).
/// Returns how many files were dropped.
pub fn drop_cached(config: &Config) -> std::io::Result<usize> {
    fn walk(dir: &std::path::Path, dropped: &mut usize) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                walk(&entry.path(), dropped)?;
            } else if kind.is_file() {
                let file = std::fs::File::open(entry.path())?;
                nix::fcntl::posix_fadvise(
                    &file,
                    0,
                    0,
                    nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
                )
                .map_err(std::io::Error::from)?;
                *dropped += 1;
            }
        }
        Ok(())
    }
    let mut dropped = 0;
    for server in config.servers_of(meshfs_group::Role::DServer) {
        if server.data_dir.is_dir() {
            walk(&server.data_dir, &mut dropped)?;
        }
    }
    Ok(dropped)
}

/// A namespace path of its own for one run of a bench workload: `/bench-NAME-PID-MILLIS`.
pub(crate) fn scratch_path(name: &str) -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("/bench-{name}-{}-{millis}", std::process::id())
}

/// The results as a table.
pub fn render(results: &[SeqResult]) -> String {
    let mut out = format!("workload        MB   seconds     MB/s{}\n", Latency::heading());
    for r in results {
        out += &format!(
            "{:<9} {:>8} {:>9.2} {:>8.1}{}\n",
            r.workload,
            r.bytes / 1_000_000,
            r.seconds,
            r.mb_s,
            r.latency.cells()
        );
    }
    out
}

/// One phase as the bench JSON object; with `limits`, also each result as a fraction of
/// the matching limit (writes against disk write + fsync, reads against the cold read).
pub fn to_json(
    bench: &SeqBench,
    result: &SeqResult,
    limits: Option<&crate::limits::Limits>,
) -> String {
    let mut json = serde_json::json!({
        "workload": result.workload,
        "params": {
            "size": bench.size,
            "files": bench.files,
            "replication": bench.replication,
        },
        "results": { "mb_s": (result.mb_s * 10.0).round() / 10.0 },
    });
    if let Some(metrics) = json["results"].as_object_mut() {
        result.latency.insert(metrics, |m| m.to_string());
    }
    if let Some(cold) = result.cold {
        json["params"]["cold"] = cold.into();
    }
    if let Some(limits) = limits {
        let limit = if result.workload == "seqwrite" {
            limits.disk_write_fsync_mb_s
        } else {
            limits.disk_read_cold_mb_s
        };
        json["limits"] = serde_json::json!({
            "disk_write_fsync_mb_s": limits.disk_write_fsync_mb_s,
            "disk_read_cold_mb_s": limits.disk_read_cold_mb_s,
            "loopback_mb_s": limits.loopback_mb_s,
        });
        json["ratios"] =
            serde_json::json!({ "mb_s": (result.mb_s / limit * 1000.0).round() / 1000.0 });
    }
    json.to_string()
}
