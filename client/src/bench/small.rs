//! `meshfs bench smallfile`: N files of S bytes (default 100,000 x 4 KiB, like
//! `weed benchmark`) created and written by C clients at once, then read back and checked;
//! files/s both ways, with per-file latency percentiles. Each file written is created,
//! grown, leased, streamed down its chain, durable on every replica and committed before the
//! next starts: acknowledged means fsynced everywhere.

use std::time::Instant;

use serde::Serialize;

use super::{Report, round};
use crate::access::Access;
use crate::bench::{Latency, Phase, phase};
use crate::data::{self, DataClient};
use crate::error::ClientError;
use crate::meta::MetaClient;

/// What to run.
#[derive(Debug, Clone)]
pub struct SmallBench {
    /// Files in all.
    pub files: usize,
    /// Bytes per file.
    pub size: usize,
    /// Clients at once (each with its share of the files).
    pub clients: usize,
    /// Copies of each block (0: the config's default).
    pub replication: u8,
    /// Leave the files in place.
    pub keep: bool,
}

/// One direction's figures.
#[derive(Debug, Clone, Serialize)]
pub struct SmallResult {
    /// "write" or "read".
    pub op: &'static str,
    /// Files moved.
    pub files: u64,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Files per second.
    pub files_per_s: f64,
    /// Latency percentiles.
    #[serde(flatten)]
    pub latency: Latency,
}

fn small_result(op: &'static str, phase: Phase) -> SmallResult {
    let l = &phase.latencies;
    SmallResult {
        op,
        files: phase.amount,
        seconds: phase.seconds,
        files_per_s: phase.per_second(),
        latency: Latency::of(l),
    }
}

/// The bytes of file `n`: pseudo-random, never all zeros.
fn content(n: u64, size: usize) -> Vec<u8> {
    crate::bench::rng::XorShift::new(n.wrapping_mul(0x9E37_79B9_7F4A_7C15)).bytes(size)
}

/// Writes every file, then reads every one back and checks its bytes.
pub fn run(
    access: &Access,
    bench: &SmallBench,
    mut report: impl FnMut(&str),
) -> Result<Vec<SmallResult>, ClientError> {
    let dir = crate::bench::scratch_path("small");
    let mut meta = MetaClient::new(access)?;
    let clients = bench.clients.clamp(1, bench.files.max(1));
    // One directory per client, so that clients do not contend on one directory's entry.
    for c in 0..clients {
        meta.mkdir(&format!("{dir}/c{c}"), true)?;
    }
    let share = |c: usize| (c..bench.files).step_by(clients);
    let path = |c: usize, n: usize| format!("{dir}/c{c}/f{n}");
    let connect = || -> Result<(MetaClient, DataClient), ClientError> {
        Ok((MetaClient::new(access)?, DataClient::new(access)))
    };
    let record = |steps: &mut crate::bench::Steps<'_>, started: Instant| {
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX).max(1);
        steps.latencies.saturating_record(us);
        steps.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    };
    let mut results = Vec::new();
    let outcome = phase("smallfile write", clients, ("files", 1.0), &mut report, |c, steps| {
        let (mut meta, mut data) = connect()?;
        let mut files = 0;
        for n in share(c) {
            let bytes = content(n as u64, bench.size);
            let started = Instant::now();
            let p = path(c, n);
            data::put(&mut meta, &mut data, &mut &bytes[..], &p, bench.replication, None, &mut ())?;
            record(steps, started);
            files += 1;
        }
        Ok(files)
    })
    .and_then(|written| {
        results.push(small_result("write", written));
        let read = phase("smallfile read", clients, ("files", 1.0), &mut report, |c, steps| {
            let (mut meta, mut data) = connect()?;
            let mut files = 0;
            let mut out = Vec::with_capacity(bench.size);
            for n in share(c) {
                out.clear();
                let started = Instant::now();
                let p = path(c, n);
                data::get(&mut meta, &mut data, &p, &mut out, &mut ())?;
                record(steps, started);
                if out != content(n as u64, bench.size) {
                    return Err(ClientError::DataRead {
                        block: p,
                        reason: "the bytes read back differ from those written".into(),
                    });
                }
                files += 1;
            }
            Ok(files)
        })?;
        results.push(small_result("read", read));
        Ok(())
    });
    if !bench.keep
        && let Err(err) = meta.remove(&dir, true)
    {
        report(&format!("could not remove {dir}: {err}"));
    }
    outcome.map(|()| results)
}

/// The results as a table.
pub fn render(results: &[SmallResult]) -> String {
    let mut out =
        format!("op        files   seconds    files/s{}\n", crate::bench::Latency::heading());
    for r in results {
        out += &format!(
            "{:<6} {:>8} {:>9.2} {:>10.1}{}\n",
            r.op,
            r.files,
            r.seconds,
            r.files_per_s,
            r.latency.cells()
        );
    }
    out
}

/// The run as the bench JSON object; with `limits`, writes per second are also given as a
/// fraction of 4 KiB appends with fdatasync per second (every file needs durable writes).
pub fn to_json(
    bench: &SmallBench,
    results: &[SmallResult],
    limits: Option<&crate::bench::limits::Limits>,
) -> String {
    let params = serde_json::json!({
        "files": bench.files,
        "size": bench.size,
        "clients": bench.clients,
        "replication": bench.replication,
    });
    let mut report = Report::new("smallfile", params);
    for r in results {
        let key = |m: &str| format!("{}_{m}", r.op);
        report.result(key("files_per_s"), round(r.files_per_s, 1));
        report.latency(&r.latency, key);
    }
    if let Some(limits) = limits {
        report.limit("append_fdatasync_per_s", limits.append_fdatasync_per_s);
        if let Some(write) = results.iter().find(|r| r.op == "write") {
            report.ratio("write_files_per_s", write.files_per_s / limits.append_fdatasync_per_s);
        }
    }
    report.finish()
}
