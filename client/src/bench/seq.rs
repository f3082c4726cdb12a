//! `meshfs bench seqwrite` / `seqread`: N files of a given size written (then read) in
//! parallel through the client library, one client (its own connections and session) per
//! file; MB/s over the wall time of the phase, and latency percentiles from a histogram:
//! for writes, the time between one block's commit and the next (each block is durable on
//! every replica and committed); for reads, each 1 MiB read request, verified.
//!
//! The data is pseudo-random (never zeros, which some systems skip); it is generated, not
//! read from a local file, so the local disk is not part of the measurement. Files live in
//! a fresh directory, removed afterwards unless asked to keep them.

use serde::Serialize;

use super::{Generated, Latency, Phase, Report, Sink, phase, round, scratch_path};
use crate::access::Access;
use crate::data::{self, DataClient};
use crate::error::ClientError;
use crate::meta::MetaClient;
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
    access: &Access,
    bench: &SeqBench,
    mut report: impl FnMut(&str),
) -> Result<Vec<SeqResult>, ClientError> {
    let dir = scratch_path("seq");
    let mut meta = MetaClient::new(access)?;
    meta.mkdir(&dir, true)?;
    let path = |i: usize| format!("{dir}/f{i}");
    let clients = || -> Result<(MetaClient, DataClient), ClientError> {
        Ok((MetaClient::new(access)?, DataClient::new(access)))
    };
    let mut results = Vec::new();
    let written = phase("seqwrite", bench.files, ("MB", 1e6), &mut report, |i, steps| {
        let (mut meta, mut data) = clients()?;
        let mut input = Generated::new(i as u64 + 1, bench.size);
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
    limits: Option<&crate::bench::limits::Limits>,
) -> String {
    let params = serde_json::json!({
        "size": bench.size,
        "files": bench.files,
        "replication": bench.replication,
    });
    let mut report = Report::new(result.workload, params);
    report.result("mb_s", round(result.mb_s, 1));
    report.latency(&result.latency, |m| m.to_string());
    if let Some(cold) = result.cold {
        report.param("cold", cold);
    }
    if let Some(limits) = limits {
        let limit = if result.workload == "seqwrite" {
            limits.disk_write_fsync_mb_s
        } else {
            limits.disk_read_cold_mb_s
        };
        report.limit("disk_write_fsync_mb_s", limits.disk_write_fsync_mb_s);
        report.limit("disk_read_cold_mb_s", limits.disk_read_cold_mb_s);
        report.limit("loopback_mb_s", limits.loopback_mb_s);
        report.ratio("mb_s", result.mb_s / limit);
    }
    report.finish()
}
