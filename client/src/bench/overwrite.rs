//! `meshfs bench randwrite`: small writes at random offsets of one large file, each made
//! durable and visible before the next (as a database or an editor saving in place does:
//! `RemoteFile::write_at`, which leases the block, sends the bytes down its chain and
//! commits). Writes per second and latency percentiles, per write size. The file's bytes
//! are checked against a copy kept here at the end, so a fast wrong answer cannot pass.

use std::time::Instant;

use serde::Serialize;

use super::Report;
use crate::access::Access;
use crate::bench::{Latency, phase};
use crate::error::ClientError;
use crate::file::RemoteFile;

/// What to run.
#[derive(Debug, Clone)]
pub struct OverwriteBench {
    /// Size of the file written into.
    pub size: u64,
    /// Bytes per write, one run each.
    pub write_sizes: Vec<u64>,
    /// Writes per run.
    pub writes: usize,
    /// Copies of each block (0: the config's default).
    pub replication: u8,
}

/// One write size's figures.
#[derive(Debug, Clone, Serialize)]
pub struct OverwriteResult {
    /// Bytes per write.
    pub write_bytes: u64,
    /// Writes done.
    pub writes: u64,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Writes per second.
    pub writes_per_s: f64,
    /// Latency percentiles.
    #[serde(flatten)]
    pub latency: Latency,
}

/// Writes the file whole, then each write size's run; checks the bytes; removes the file.
pub fn run(
    access: &Access,
    bench: &OverwriteBench,
    mut report: impl FnMut(&str),
) -> Result<Vec<OverwriteResult>, ClientError> {
    let path = crate::bench::scratch_path("randwrite");
    report(&format!("writing {path} ({} MB)", bench.size / 1_000_000));
    let size = usize::try_from(bench.size).unwrap_or(usize::MAX);
    let mut copy = vec![0u8; size];
    crate::bench::rng::XorShift::new(7).fill(&mut copy);
    let mut file = RemoteFile::create(access, &path, bench.replication)?;
    let outcome = file.write_at(0, &copy).and_then(|()| {
        let mut results = Vec::new();
        for &write_bytes in &bench.write_sizes {
            let write_bytes = write_bytes.clamp(1, bench.size);
            let slots = bench.size / write_bytes;
            let name = format!("randwrite {write_bytes} B");
            let file = std::sync::Mutex::new(&mut file);
            let copy = std::sync::Mutex::new(&mut copy);
            let done = phase(&name, 1, ("writes", 1.0), &mut report, |_, steps| {
                let mut rng = crate::bench::rng::XorShift::new(write_bytes);
                let mut bytes = vec![0u8; write_bytes as usize];
                let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
                let mut copy = copy.lock().unwrap_or_else(|p| p.into_inner());
                for _ in 0..bench.writes {
                    let offset = (rng.next_u64() % slots) * write_bytes;
                    rng.fill(&mut bytes);
                    let started = Instant::now();
                    file.write_at(offset, &bytes)?;
                    let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                    steps.latencies.saturating_record(us.max(1));
                    steps.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let at = offset as usize;
                    copy[at..at + bytes.len()].copy_from_slice(&bytes);
                }
                Ok(bench.writes as u64)
            })?;
            results.push(OverwriteResult {
                write_bytes,
                writes: done.amount,
                seconds: done.seconds,
                writes_per_s: done.amount as f64 / done.seconds.max(1e-9),
                latency: Latency::of(&done.latencies),
            });
        }
        report("reading the file back to check it");
        let mut back = vec![0u8; size];
        let n = RemoteFile::open(access, &path)?.read_at(0, &mut back)?;
        if n != size || back != copy {
            let first = back.iter().zip(&copy).position(|(a, b)| a != b);
            return Err(ClientError::DataRead {
                block: path.clone(),
                reason: format!("{n} of {size} bytes read back, first difference at {first:?}"),
            });
        }
        Ok(results)
    });
    let mut meta = crate::meta::MetaClient::new(access)?;
    if let Err(err) = meta.remove(&path, false) {
        report(&format!("could not remove {path}: {err}"));
    }
    outcome
}

/// The results as a table.
pub fn render(results: &[OverwriteResult]) -> String {
    let mut out =
        format!("  bytes   writes   seconds   writes/s{}\n", crate::bench::Latency::heading());
    for r in results {
        out += &format!(
            "{:>7} {:>8} {:>9.2} {:>10.1}{}\n",
            r.write_bytes,
            r.writes,
            r.seconds,
            r.writes_per_s,
            r.latency.cells()
        );
    }
    out
}

/// The run as the bench JSON object (metrics named `<bytes>b_<metric>`).
pub fn to_json(bench: &OverwriteBench, results: &[OverwriteResult]) -> String {
    let params = serde_json::json!({
        "size": bench.size,
        "write_sizes": bench.write_sizes,
        "writes": bench.writes,
        "replication": bench.replication,
    });
    let mut report = Report::new("randwrite", params);
    for r in results {
        let key = |m: &str| format!("{}b_{m}", r.write_bytes);
        report.result(key("writes_per_s"), (r.writes_per_s * 10.0).round() / 10.0);
        report.latency(&r.latency, key);
    }
    report.finish()
}
