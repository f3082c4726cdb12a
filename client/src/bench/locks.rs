//! `meshfs bench locks`: lock+unlock pairs through the meta-servers' Raft, each pair two
//! committed entries.
//!
//! - uncontended: every client takes and releases a lock of its own, so nothing waits but
//!   for consensus (one client: the latency of a pair; many: the throughput of the log).
//! - contended: every client takes and releases one exclusive lock, waiting in its queue;
//!   a pair's latency includes the wait for the others.

use std::time::Instant;

use serde::Serialize;

use super::{Report, round};
use crate::access::Access;
use crate::bench::{Latency, Phase, phase};
use crate::error::ClientError;
use crate::session::{LockMode, Session};

/// What to run.
#[derive(Debug, Clone)]
pub struct LockBench {
    /// Lock+unlock pairs per case, shared among its clients.
    pub pairs: usize,
    /// Client counts of the uncontended case.
    pub clients: Vec<usize>,
    /// Clients of the contended case (0: none).
    pub contended: usize,
}

/// One case's figures.
#[derive(Debug, Clone, Serialize)]
pub struct LockResult {
    /// "uncontended" or "contended".
    pub case: &'static str,
    /// Clients at once, each with its own session.
    pub clients: usize,
    /// Pairs done.
    pub pairs: u64,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Pairs per second.
    pub pairs_per_s: f64,
    /// Latency of a pair (lock, with any wait, then unlock).
    #[serde(flatten)]
    pub latency: Latency,
}

fn lock_result(case: &'static str, clients: usize, phase: Phase) -> LockResult {
    LockResult {
        case,
        clients,
        pairs: phase.amount,
        seconds: phase.seconds,
        pairs_per_s: phase.per_second(),
        latency: Latency::of(&phase.latencies),
    }
}

/// Runs the uncontended case for each client count, then the contended one.
pub fn run(
    access: &Access,
    bench: &LockBench,
    mut report: impl FnMut(&str),
) -> Result<Vec<LockResult>, ClientError> {
    let base = crate::bench::scratch_path("locks");
    let mut cases: Vec<(&'static str, usize)> =
        bench.clients.iter().map(|&c| ("uncontended", c.max(1))).collect();
    if bench.contended > 0 {
        cases.push(("contended", bench.contended));
    }
    let mut results = Vec::new();
    for (case, clients) in cases {
        let sessions =
            (0..clients).map(|_| Session::open(access)).collect::<Result<Vec<_>, _>>()?;
        let share = |c: usize| (c..bench.pairs).step_by(clients).count();
        let name = format!("locks {case}, {clients} clients");
        let outcome = phase(&name, clients, ("pairs", 1.0), &mut report, |c, steps| {
            let path =
                if case == "contended" { format!("{base}/one") } else { format!("{base}/c{c}") };
            let wait = Some(std::time::Duration::from_secs(300));
            for _ in 0..share(c) {
                let started = Instant::now();
                sessions[c].lock(&path, LockMode::Exclusive, wait)?.unlock()?;
                let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                steps.latencies.saturating_record(us.max(1));
                steps.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(share(c) as u64)
        })?;
        for session in sessions {
            session.close()?;
        }
        results.push(lock_result(case, clients, outcome));
    }
    Ok(results)
}

/// The results as a table.
pub fn render(results: &[LockResult]) -> String {
    let mut out = format!(
        "case         clients    pairs   seconds    pairs/s{}\n",
        crate::bench::Latency::heading()
    );
    for r in results {
        out += &format!(
            "{:<12} {:>7} {:>8} {:>9.2} {:>10.1}{}\n",
            r.case,
            r.clients,
            r.pairs,
            r.seconds,
            r.pairs_per_s,
            r.latency.cells()
        );
    }
    out
}

/// The run as the bench JSON object.
pub fn to_json(bench: &LockBench, results: &[LockResult]) -> String {
    let params = serde_json::json!({
        "pairs": bench.pairs,
        "clients": bench.clients,
        "contended": bench.contended,
    });
    let mut report = Report::new("locks", params);
    for r in results {
        let key = |m: &str| format!("{}_{}_{m}", r.case, r.clients);
        report.result(key("pairs_per_s"), round(r.pairs_per_s, 1));
        report.latency(&r.latency, key);
    }
    report.finish()
}
