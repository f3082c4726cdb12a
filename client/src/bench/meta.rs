//! `meshfs bench meta` (as HDFS's NNThroughputBenchmark): C concurrent clients, each
//! with its own connections and session, create F/C files in a directory of their own, then
//! stat each, list their directory, rename each file and remove each; every change is durable
//! on a majority of the meta-servers (fsynced) before it is answered. Each client count runs in a fresh
//! directory, removed afterwards.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::{Report, round};
use crate::access::Access;
use crate::bench::{Latency, histogram};
use crate::error::ClientError;
use crate::meta::MetaClient;

/// What the `meta` workload does.
#[derive(Debug, Clone)]
pub struct MetaBench {
    /// Client counts to run, one after the other.
    pub clients: Vec<usize>,
    /// Files created per client count (split across its clients).
    pub files: usize,
    /// Leave the files in place (to measure the meta-servers holding them).
    pub keep: bool,
    /// Which phases run after the creates: "stat", "list", "rename", "remove".
    pub phases: Vec<String>,
}

/// One operation at one client count.
#[derive(Debug, Clone, Serialize)]
pub struct OpResult {
    /// "create", "stat", "list", "rename" or "remove".
    pub op: &'static str,
    /// Concurrent clients.
    pub clients: usize,
    /// Operations done.
    pub ops: u64,
    /// Wall time of the phase, seconds.
    pub seconds: f64,
    /// Operations per second.
    pub ops_per_s: f64,
    /// Latency percentiles.
    #[serde(flatten)]
    pub latency: Latency,
}

/// Runs `op` for each of a client's items, timing each; returns the latencies.
fn timed<T>(
    items: &[T],
    mut op: impl FnMut(&T) -> Result<(), ClientError>,
) -> Result<Histogram<u64>, ClientError> {
    let mut latencies = histogram();
    for item in items {
        let start = Instant::now();
        op(item)?;
        let us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX).max(1);
        latencies.saturating_record(us);
    }
    Ok(latencies)
}

fn result(
    op: &'static str,
    clients: usize,
    wall: Duration,
    latencies: &Histogram<u64>,
) -> OpResult {
    let ops = latencies.len();
    let seconds = wall.as_secs_f64();
    OpResult {
        op,
        clients,
        ops,
        seconds,
        ops_per_s: ops as f64 / seconds.max(1e-9),
        latency: Latency::of(latencies),
    }
}

/// Runs one phase on every client at once; returns the merged latencies and the wall time.
fn phase<S: Sync>(
    clients: &mut [MetaClient],
    state: &[S],
    work: impl Fn(&mut MetaClient, &S) -> Result<Histogram<u64>, ClientError> + Sync,
) -> Result<(Histogram<u64>, Duration), ClientError> {
    let barrier = Barrier::new(clients.len() + 1);
    let (merged, wall) = std::thread::scope(|scope| {
        let handles: Vec<_> = clients
            .iter_mut()
            .zip(state)
            .map(|(client, s)| {
                let (barrier, work) = (&barrier, &work);
                scope.spawn(move || {
                    barrier.wait();
                    work(client, s)
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let mut merged = histogram();
        let mut failure = None;
        for handle in handles {
            match handle.join().expect("bench threads do not panic") {
                Ok(h) => merged.add(&h).expect("same bounds"),
                Err(e) => failure = Some(e),
            }
        }
        let wall = start.elapsed();
        match failure {
            Some(e) => Err(e),
            None => Ok((merged, wall)),
        }
    })?;
    Ok((merged, wall))
}

/// Runs the `meta` workload; `progress` hears what is going on.
pub fn run(
    access: &Access,
    bench: &MetaBench,
    mut progress: impl FnMut(&str),
) -> Result<Vec<OpResult>, ClientError> {
    let mut setup = MetaClient::new(access)?;
    let root = format!("/.bench-meta-{}", std::process::id());
    let wants = |phase: &str| bench.phases.iter().any(|p| p == phase);
    let mut results = Vec::new();
    for &count in &bench.clients {
        let count = count.max(1);
        let base = format!("{root}/c{count}");
        let per_client = (bench.files / count).max(1);
        let mut clients = Vec::with_capacity(count);
        let mut names = Vec::with_capacity(count);
        for c in 0..count {
            let dir = format!("{base}/w{c}");
            setup.mkdir(&dir, true)?;
            clients.push(MetaClient::new(access)?);
            let files = (0..per_client).map(|i| format!("{dir}/f{i:07}")).collect::<Vec<_>>();
            names.push((dir, files));
        }

        progress(&format!("{count} clients: creating {} files", per_client * count));
        let (latencies, wall) = phase(&mut clients, &names, |client, (_, files)| {
            timed(files, |path| client.create(path, 0).map(|_| ()))
        })?;
        results.push(result("create", count, wall, &latencies));

        if wants("stat") {
            progress(&format!("{count} clients: stat of each file"));
            let (latencies, wall) = phase(&mut clients, &names, |client, (_, files)| {
                timed(files, |path| client.stat(path).map(|_| ()))
            })?;
            results.push(result("stat", count, wall, &latencies));
        }

        if wants("list") {
            let lists = (per_client / 10).clamp(10, 100);
            progress(&format!("{count} clients: {lists} listings of {per_client} entries each"));
            let (latencies, wall) = phase(&mut clients, &names, |client, (dir, _)| {
                let repeats: Vec<&String> = std::iter::repeat_n(dir, lists).collect();
                timed(&repeats, |d| client.list(d).map(|_| ()))
            })?;
            results.push(result("list", count, wall, &latencies));
        }

        if wants("rename") {
            progress(&format!("{count} clients: rename of each file"));
            let (latencies, wall) = phase(&mut clients, &names, |client, (_, files)| {
                timed(files, |path| client.rename(path, &renamed(path)))
            })?;
            results.push(result("rename", count, wall, &latencies));
            for (_, files) in &mut names {
                files.iter_mut().for_each(|f| *f = renamed(f));
            }
        }

        if wants("remove") && !bench.keep {
            progress(&format!("{count} clients: remove of each file"));
            let (latencies, wall) = phase(&mut clients, &names, |client, (_, files)| {
                timed(files, |path| client.remove(path, false).map(|_| ()))
            })?;
            results.push(result("remove", count, wall, &latencies));
        }
        if !bench.keep {
            setup.remove(&base, true)?;
        }
    }
    if bench.keep {
        progress(&format!("files kept under {root}"));
    } else {
        let _ = setup.remove(&root, true);
    }
    Ok(results)
}

/// The name a file is renamed to: `.../fNNN` becomes `.../rNNN`, in the same directory.
fn renamed(path: &str) -> String {
    match path.rsplit_once("/f") {
        Some((dir, number)) => format!("{dir}/r{number}"),
        None => format!("{path}.r"),
    }
}

/// The results as a table.
pub fn render(results: &[OpResult]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>7}  {:<6} {:>8} {:>10}{}",
        "clients",
        "op",
        "ops",
        "ops/s",
        crate::bench::Latency::heading()
    );
    for r in results {
        let _ = writeln!(
            out,
            "{:>7}  {:<6} {:>8} {:>10.0}{}",
            r.clients,
            r.op,
            r.ops,
            r.ops_per_s,
            r.latency.cells()
        );
    }
    out
}

/// The results as one JSON object: `workload`, `params`, `results` (metric name to number,
/// e.g. `create_c8_ops_per_s`, `stat_c1_p99_us`).
///
/// With `limits`, each client count's creates/s is also given as a fraction of the disk's
/// 4 KiB appends with fdatasync per second: a create is one durable log append on a majority,
/// so one client's creates cannot beat that rate; group commit is how many clients pass it.
pub fn to_json(
    bench: &MetaBench,
    results: &[OpResult],
    limits: Option<&crate::bench::limits::Limits>,
) -> String {
    let params = serde_json::json!({ "clients": bench.clients, "files": bench.files });
    let mut report = Report::new("meta", params);
    for r in results {
        let key = |m: &str| format!("{}_c{}_{m}", r.op, r.clients);
        report.result(key("ops"), r.ops);
        report.result(key("ops_per_s"), round(r.ops_per_s, 1));
        report.latency(&r.latency, key);
    }
    if let Some(limits) = limits {
        let limit = limits.append_fdatasync_per_s;
        report.limit("append_fdatasync_per_s", limit);
        for r in results.iter().filter(|r| r.op == "create") {
            report.ratio(format!("create_c{}_ops_per_s", r.clients), r.ops_per_s / limit);
        }
    }
    report.finish()
}
