//! `meshfs bench --local repair`: how fast the cluster restores full replication after
//! losing a data-server, and what that costs clients.
//!
//! It writes SIZE bytes, waits until every block is healthy, optionally starts readers that
//! read the files over and over (the client load), measures their throughput for a few
//! seconds, then kills (-9) the data-server holding the most bytes and watches the leader's
//! health counts until no block is short of replicas. The repair rate is the bytes that
//! server held over the time from the first repair copy to the last; the restore time runs
//! from the kill (it includes noticing the loss and the grace period). It needs `--local`:
//! it kills a server of its own cluster, by PID.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::Report;
use crate::bench::{Generated, Sink};
use crate::cluster::local::LocalCluster;
use crate::data::{self, DataClient, Progress};
use crate::error::ClientError;
use crate::meta::MetaClient;
use crate::status::{ClusterStatus, HealthView, cluster_status};

/// The grace period the benchmark's local cluster uses (seconds): the loss is acted on
/// almost at once, so the figure is the copy rate, not the wait.
pub const BENCH_GRACE_SECS: i64 = 1;
/// How long the client load is measured before the kill.
const BASELINE: Duration = Duration::from_secs(5);
/// Longest the benchmark waits for anything.
const PATIENCE: Duration = Duration::from_secs(900);

/// What to run.
#[derive(Debug, Clone)]
pub struct RepairBench {
    /// Bytes written in all.
    pub size: u64,
    /// Files they are spread over (written at once).
    pub files: usize,
    /// Readers running during the repair (0: no client load).
    pub readers: usize,
    /// Copies of each block (0: the config's default); at least 2.
    pub replication: u8,
}

/// What it measured.
#[derive(Debug, Clone, Serialize)]
pub struct RepairResult {
    /// The data-server killed.
    pub lost_server: u32,
    /// Bytes of replicas it held.
    pub lost_bytes: u64,
    /// Replicas it held.
    pub lost_blocks: u64,
    /// From the kill until the leader counted blocks short of replicas.
    pub detect_seconds: f64,
    /// From the first repair copy until every block was whole again.
    pub repair_seconds: f64,
    /// From the kill until every block was whole again.
    pub restore_seconds: f64,
    /// Repair traffic: the lost bytes over the repair time, MB/s.
    pub repair_mb_s: f64,
    /// Client read throughput before the kill, MB/s (with readers).
    pub client_mb_s_before: Option<f64>,
    /// Client read throughput while the repair ran, MB/s (with readers).
    pub client_mb_s_during: Option<f64>,
}

/// Adds the bytes a read moves to a shared count as they arrive.
struct Counter<'a> {
    total: &'a AtomicU64,
    reported: u64,
}

impl Progress for Counter<'_> {
    fn update(&mut self, done: u64, _total: Option<u64>) {
        self.total.fetch_add(done.saturating_sub(self.reported), Ordering::Relaxed);
        self.reported = done;
    }
}

fn whole(health: Option<HealthView>) -> bool {
    health.is_some_and(|h| h.under_replicated == 0 && h.missing == 0 && h.repairing == 0)
}

/// Polls the cluster's status until `done` holds.
fn wait(
    cluster: &LocalCluster,
    what: &str,
    mut done: impl FnMut(&ClusterStatus) -> bool,
) -> Result<ClusterStatus, ClientError> {
    let started = Instant::now();
    loop {
        let status = cluster_status(&cluster.access, Duration::from_millis(500));
        if done(&status) {
            return Ok(status);
        }
        if started.elapsed() > PATIENCE {
            return Err(ClientError::Launch {
                program: "meshfs bench repair".into(),
                reason: format!("gave up waiting for {what}:\n{}", status.render()),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the benchmark on `cluster` (which it damages: one data-server is killed).
pub fn run(
    cluster: &mut LocalCluster,
    bench: &RepairBench,
    mut report: impl FnMut(&str),
) -> Result<RepairResult, ClientError> {
    let config = cluster.config.clone();
    let access = cluster.access.clone();
    let default = meshfs_core::settings::Settings::of(&config)?.replication;
    let replication = if bench.replication == 0 { default } else { bench.replication };
    if replication < 2 {
        return Err(ClientError::Launch {
            program: "meshfs bench repair".into(),
            reason: format!(
                "replication {replication} keeps one copy: losing a data-server loses data, there is nothing to repair from; use --replication 2 or more"
            ),
        });
    }
    let files = bench.files.max(1);
    let each = bench.size / files as u64;
    let path = |i: usize| format!("/bench-repair/f{i}");
    MetaClient::new(&access)?.mkdir("/bench-repair", true)?;
    report(&format!("writing {files} files of {each} bytes"));
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..files)
            .map(|i| {
                let (access, path) = (&access, path(i));
                scope.spawn(move || -> Result<u64, ClientError> {
                    let mut meta = MetaClient::new(access)?;
                    let mut data = DataClient::new(access);
                    let mut input = Generated::new(i as u64 + 1, each);
                    data::put(
                        &mut meta,
                        &mut data,
                        &mut input,
                        &path,
                        replication,
                        Some(each),
                        &mut (),
                    )
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| h.join().expect("writers do not panic").map(|_| ()))
    })?;
    let status = wait(cluster, "every block to be healthy", |s| whole(s.health))?;
    let victim = status.data_servers.iter().max_by_key(|d| d.used).cloned().ok_or_else(|| {
        ClientError::Launch {
            program: "meshfs bench repair".into(),
            reason: "no data-server reports".into(),
        }
    })?;
    let stop = AtomicBool::new(false);
    let read_bytes = AtomicU64::new(0);
    let result = std::thread::scope(|scope| -> Result<RepairResult, ClientError> {
        let readers: Vec<_> = (0..bench.readers)
            .map(|r| {
                let (access, stop, read_bytes) = (&access, &stop, &read_bytes);
                scope.spawn(move || -> Result<(), ClientError> {
                    let mut meta = MetaClient::new(access)?;
                    let mut data = DataClient::new(access);
                    let mut i = r;
                    while !stop.load(Ordering::Relaxed) {
                        let mut counter = Counter { total: read_bytes, reported: 0 };
                        data::get(&mut meta, &mut data, &path(i % files), &mut Sink, &mut counter)?;
                        i += 1;
                    }
                    Ok(())
                })
            })
            .collect();
        let rate = |from: (Instant, u64), to: (Instant, u64)| {
            (to.1 - from.1) as f64 / 1e6 / (to.0 - from.0).as_secs_f64().max(1e-9)
        };
        let sample = || (Instant::now(), read_bytes.load(Ordering::Relaxed));
        let mut before = None;
        if bench.readers > 0 {
            report(&format!(
                "{} readers running; measuring them for {} s",
                bench.readers,
                BASELINE.as_secs()
            ));
            let start = sample();
            std::thread::sleep(BASELINE);
            before = Some(rate(start, sample()));
        }
        report(&format!(
            "killing data-server {} ({} replicas, {} bytes)",
            victim.id, victim.blocks, victim.used
        ));
        cluster.kill9(victim.id)?;
        let killed = Instant::now();
        let mut detected = None;
        let mut first_copy: Option<(Instant, u64)> = None;
        // The last poll that found blocks short: a repair quicker than one poll is timed
        // from there (a lower bound on its rate).
        let mut last_short: Option<(Instant, u64)> = None;
        let mut last_report = Instant::now();
        let outcome = wait(cluster, "repair to finish", |s| {
            let now = Instant::now();
            if let Some(h) = s.health {
                if detected.is_none() && (h.under_replicated > 0 || h.repairing > 0) {
                    detected = Some(now);
                }
                if first_copy.is_none() && h.repairing > 0 {
                    first_copy = Some(sample());
                }
                if h.under_replicated > 0 || h.repairing > 0 {
                    last_short = Some(sample());
                }
                if now - last_report > Duration::from_secs(1) {
                    last_report = now;
                    report(&format!(
                        "{:.1} s: {} under-replicated, {} being repaired",
                        (now - killed).as_secs_f64(),
                        h.under_replicated,
                        h.repairing
                    ));
                }
            }
            detected.is_some() && whole(s.health)
        });
        let done = sample();
        stop.store(true, Ordering::Relaxed);
        for reader in readers {
            reader.join().expect("readers do not panic")?;
        }
        outcome?;
        let copy_start = first_copy.or(last_short).unwrap_or(done);
        let repair_seconds = (done.0 - copy_start.0).as_secs_f64();
        Ok(RepairResult {
            lost_server: victim.id,
            lost_bytes: victim.used,
            lost_blocks: victim.blocks,
            detect_seconds: detected.map_or(0.0, |d| (d - killed).as_secs_f64()),
            repair_seconds,
            restore_seconds: (done.0 - killed).as_secs_f64(),
            repair_mb_s: victim.used as f64 / 1e6 / repair_seconds.max(1e-3),
            client_mb_s_before: before,
            client_mb_s_during: (bench.readers > 0).then(|| rate(copy_start, done)),
        })
    })?;
    Ok(result)
}

/// The result as text.
pub fn render(result: &RepairResult) -> String {
    let mut out = format!(
        "lost data-server {}: {} replicas, {:.1} MB\n\
         noticed after {:.1} s; repaired in {:.1} s ({:.1} s from the kill)\n\
         repair traffic: {:.1} MB/s\n",
        result.lost_server,
        result.lost_blocks,
        result.lost_bytes as f64 / 1e6,
        result.detect_seconds,
        result.repair_seconds,
        result.restore_seconds,
        result.repair_mb_s
    );
    if let (Some(before), Some(during)) = (result.client_mb_s_before, result.client_mb_s_during) {
        out += &format!(
            "client reads: {before:.1} MB/s before, {during:.1} MB/s during repair ({:+.0}%)\n",
            (during / before.max(1e-9) - 1.0) * 100.0
        );
    }
    out
}

/// The result as one JSON object.
pub fn to_json(bench: &RepairBench, repair_mbps: Option<u64>, result: &RepairResult) -> String {
    let params = serde_json::json!({
        "size": bench.size,
        "files": bench.files,
        "readers": bench.readers,
        "replication": bench.replication,
        "grace_secs": BENCH_GRACE_SECS,
        "repair_mbps": repair_mbps,
    });
    let mut report = Report::new("repair", params);
    report.results(serde_json::to_value(result).unwrap_or_default());
    report.finish()
}
