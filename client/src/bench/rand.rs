//! `meshfs bench randread`: 4 KiB reads at random offsets of one large file, at queue depth
//! 1 (one reader, one read at a time) and 16 (sixteen readers at once); IOPS and latency
//! percentiles per read. Every read is verified end to end: a data-server returns whole
//! 64 KiB segments with their checksums, which the client checks before taking its 4 KiB.

use std::time::Instant;

use serde::Serialize;

use super::Report;
use crate::access::Access;
use crate::bench::{Latency, phase};
use crate::data::{self, DataClient};
use crate::error::ClientError;
use crate::meta::MetaClient;

/// Bytes per read.
pub const READ_BYTES: u64 = 4096;

/// What to run.
#[derive(Debug, Clone)]
pub struct RandBench {
    /// Size of the file read.
    pub size: u64,
    /// Reads per queue depth.
    pub reads: usize,
    /// Queue depths to run, one after the other.
    pub depths: Vec<usize>,
    /// Copies of each block (0: the config's default).
    pub replication: u8,
}

/// One queue depth's figures.
#[derive(Debug, Clone, Serialize)]
pub struct RandResult {
    /// Reads in flight at once.
    pub depth: usize,
    /// Reads done.
    pub reads: u64,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Reads per second.
    pub iops: f64,
    /// Latency percentiles.
    #[serde(flatten)]
    pub latency: Latency,
}

/// Writes the file, then runs each queue depth; the file is removed afterwards.
pub fn run(
    access: &Access,
    bench: &RandBench,
    mut report: impl FnMut(&str),
) -> Result<Vec<RandResult>, ClientError> {
    let path = crate::bench::scratch_path("randread");
    let mut meta = MetaClient::new(access)?;
    let mut data = DataClient::new(access);
    report(&format!("writing {path} ({} MB)", bench.size / 1_000_000));
    let mut input = std::io::Read::take(std::io::repeat(0x5a), bench.size);
    let outcome = data::put(
        &mut meta,
        &mut data,
        &mut input,
        &path,
        bench.replication,
        Some(bench.size),
        &mut (),
    )
    .and_then(|_| meta.get_file_meta_data(&path))
    .and_then(|file| {
        let block_size = u64::from(file.block_size);
        let slots = (file.size / READ_BYTES).max(1);
        let mut results = Vec::new();
        for &depth in &bench.depths {
            let depth = depth.max(1);
            let per_reader = bench.reads.div_ceil(depth);
            let name = format!("randread qd{depth}");
            let done = phase(&name, depth, ("reads", 1.0), &mut report, |r, steps| {
                let mut data = DataClient::new(access);
                let mut rng =
                    crate::bench::rng::XorShift::new(((r as u64 + 1) << 32) ^ depth as u64);
                let mut out = Vec::with_capacity(READ_BYTES as usize);
                for _ in 0..per_reader {
                    let offset = (rng.next_u64() % slots) * READ_BYTES;
                    let block = &file.blocks[(offset / block_size) as usize];
                    let within = offset % block_size;
                    out.clear();
                    let started = Instant::now();
                    data.read_block(block, within, READ_BYTES.min(file.size - offset), &mut out)?;
                    let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                    steps.latencies.saturating_record(us.max(1));
                    steps.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(per_reader as u64)
            })?;
            let l = &done.latencies;
            results.push(RandResult {
                depth,
                reads: done.amount,
                seconds: done.seconds,
                iops: done.amount as f64 / done.seconds.max(1e-9),
                latency: Latency::of(l),
            });
        }
        Ok(results)
    });
    if let Err(err) = meta.remove(&path, false) {
        report(&format!("could not remove {path}: {err}"));
    }
    outcome
}

/// The results as a table.
pub fn render(results: &[RandResult]) -> String {
    let mut out =
        format!("depth    reads   seconds       IOPS{}\n", crate::bench::Latency::heading());
    for r in results {
        out += &format!(
            "{:>5} {:>8} {:>9.2} {:>10.0}{}\n",
            r.depth,
            r.reads,
            r.seconds,
            r.iops,
            r.latency.cells()
        );
    }
    out
}

/// The run as the bench JSON object (metrics named `qd<depth>_<metric>`); with `limits`,
/// each depth's IOPS also as a fraction of the disk's O_DIRECT 4 KiB reads at depth 1.
pub fn to_json(
    bench: &RandBench,
    results: &[RandResult],
    limits: Option<&crate::bench::limits::Limits>,
) -> String {
    let params = serde_json::json!({
        "size": bench.size,
        "reads": bench.reads,
        "depths": bench.depths,
        "replication": bench.replication,
        "read_bytes": READ_BYTES,
    });
    let mut report = Report::new("randread", params);
    for r in results {
        let key = |m: &str| format!("qd{}_{m}", r.depth);
        report.result(key("iops"), r.iops.round());
        report.latency(&r.latency, key);
    }
    if let Some(limit) = limits.and_then(|l| l.random_read_4k_iops) {
        report.limit("random_read_4k_iops", limit);
        for r in results {
            report.ratio(format!("qd{}_iops", r.depth), r.iops / limit);
        }
    }
    report.finish()
}
