//! How results look: times, sizes, stat, locks and fsck as text or JSON, and a progress
//! line on a terminal. No cluster calls here.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use meshfs_core::namespace::{Owner, Stat};
use meshfs_core::wire::FsckReport;

/// UTC date and time of `ms` milliseconds since the Unix epoch (civil-from-days).
pub(crate) fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

pub(crate) fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

fn print_times(times: &meshfs_core::namespace::Times) {
    println!("  modified    {}", utc(times.mtime_us / 1000));
    println!("  changed     {}", utc(times.ctime_us / 1000));
    println!("  accessed    {}", utc(times.atime_us / 1000));
}

pub(crate) fn print_stat(path: &str, stat: &Stat) {
    match stat {
        Stat::Dir { id, entries, times, owner, .. } => {
            println!("{path}: directory {id}, {entries} entries");
            println!("  access      {}", access_text('d', owner));
            print_times(times);
        }
        Stat::Other { id, kind, target, rdev, links, times, owner } => {
            let what = match kind {
                meshfs_core::namespace::NodeType::Symlink => format!("symbolic link to {target}"),
                other => format!("{other:?} (device {rdev})").to_lowercase(),
            };
            println!("{path}: {what}, inode {id}");
            println!("  access      {}", access_text('l', owner));
            println!("  links       {links}");
            print_times(times);
        }
        Stat::File(meta) => {
            let fd = meta.descriptor;
            println!("{path}: file {} version {}", fd.id.0, fd.version);
            println!("  access      {}", access_text('-', &meta.owner));
            println!("  links       {}", meta.links);
            println!("  size        {} bytes ({})", meta.size, human(meta.size));
            println!(
                "  block size  {} ({} bytes)",
                human(u64::from(meta.block_size)),
                meta.block_size
            );
            println!("  replication {}", meta.replication);
            println!("  created     {}", utc(meta.created_ms));
            print_times(&meta.times);
            println!("  blocks      {}", meta.blocks.len());
            for block in &meta.blocks {
                let replicas: Vec<String> = block.replicas.iter().map(|r| r.to_string()).collect();
                println!(
                    "    #{:<5} {}  version {}  on dservers {}",
                    block.descriptor.index,
                    block.descriptor,
                    block.descriptor.version.0,
                    replicas.join(", ")
                );
            }
        }
    }
}

/// `drwxr-x--- (0750)  uid 1001  gid 50`.
fn access_text(kind: char, owner: &Owner) -> String {
    let mode = meshfs_core::namespace::access::mode_text(owner.mode);
    format!("{kind}{mode} ({:04o})  uid {}  gid {}", owner.mode, owner.uid, owner.gid)
}

pub(crate) fn ms_from_now(epoch_ms: u64) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    i64::try_from(epoch_ms).unwrap_or(i64::MAX).saturating_sub(now)
}

/// `meshfs locks`'s text.
pub(crate) fn locks_text(
    path: &str,
    locks: &[meshfs_client::session::LockInfo],
    more: bool,
) -> String {
    if locks.is_empty() {
        return format!("no locks at or under {path}\n");
    }
    let mut out = String::new();
    for lock in locks {
        out += &format!("{}\n", lock.path);
        for h in &lock.holders {
            let times = if h.count > 1 { format!(", {} times", h.count) } else { String::new() };
            out += &format!(
                "  held {} by client {} session {:016x}, sequencer {}{times}\n",
                h.mode, h.session.client, h.session.nonce, h.sequencer
            );
        }
        for w in &lock.waiters {
            out += &format!(
                "  waiting {}: client {} session {:016x}, gives up in {:.1} s\n",
                w.mode,
                w.session.client,
                w.session.nonce,
                ms_from_now(w.deadline_ms).max(0) as f64 / 1000.0
            );
        }
        let delay = ms_from_now(lock.delayed_until_ms);
        if delay > 0 {
            out += &format!(
                "  lock-delay: its holder's session expired; no grant for {:.1} s\n",
                delay as f64 / 1000.0
            );
        }
    }
    if more {
        out += "(more locks than listed)\n";
    }
    out
}

/// `meshfs locks --json`.
pub(crate) fn locks_json(locks: &[meshfs_client::session::LockInfo], more: bool) -> String {
    let locks: Vec<serde_json::Value> = locks
        .iter()
        .map(|lock| {
            serde_json::json!({
                "path": lock.path.to_string(),
                "holders": lock.holders.iter().map(|h| serde_json::json!({
                    "client": h.session.client.0,
                    "session": format!("{:016x}", h.session.nonce),
                    "mode": h.mode.name(),
                    "count": h.count,
                    "sequencer": h.sequencer,
                })).collect::<Vec<_>>(),
                "waiters": lock.waiters.iter().map(|w| serde_json::json!({
                    "client": w.session.client.0,
                    "session": format!("{:016x}", w.session.nonce),
                    "mode": w.mode.name(),
                    "deadline_ms": w.deadline_ms,
                })).collect::<Vec<_>>(),
                "delayed_until_ms": lock.delayed_until_ms,
            })
        })
        .collect();
    serde_json::json!({ "locks": locks, "more": more }).to_string()
}

pub(crate) fn servers(ids: &[meshfs_group::NodeId]) -> String {
    ids.iter().map(|id| id.0.to_string()).collect::<Vec<_>>().join(",")
}

/// `fsck`'s text: a summary, then each problem.
pub(crate) fn fsck_text(path: &str, report: &FsckReport) -> String {
    let h = &report.health;
    let mut out = format!(
        "fsck {path}: {} files, {} blocks\n  {} healthy, {} under-replicated, {} missing, {} being repaired\n",
        report.files, report.blocks, h.healthy, h.under_replicated, h.missing, h.repairing
    );
    if !report.unknown_servers.is_empty() {
        out += &format!(
            "  data-servers not reporting (their replicas are not counted): {}\n",
            servers(&report.unknown_servers)
        );
    }
    for p in &report.problems {
        let state = if p.missing {
            "MISSING: no good replica".to_string()
        } else {
            format!("{} of {} good replicas (on {})", p.good.len(), p.wanted, servers(&p.good))
        };
        out += &format!(
            "  {} block {} v{}: {state}; replica set {}{}\n",
            p.path,
            p.block.index,
            p.block.version.0,
            servers(&p.replicas),
            if p.repairing { "; being repaired" } else { "" }
        );
    }
    if report.more {
        out += "  (more problems than listed)\n";
    }
    out += if h.missing > 0 {
        "status: MISSING DATA\n"
    } else if h.under_replicated > 0 {
        "status: DEGRADED (repair under way or waiting for data-servers)\n"
    } else {
        "status: HEALTHY\n"
    };
    out
}

/// `fsck --json`.
pub(crate) fn fsck_json(path: &str, report: &FsckReport) -> String {
    let h = &report.health;
    let problems: Vec<serde_json::Value> = report
        .problems
        .iter()
        .map(|p| {
            serde_json::json!({
                "path": p.path,
                "block": p.block.index,
                "version": p.block.version.0,
                "wanted": p.wanted,
                "replicas": p.replicas.iter().map(|id| id.0).collect::<Vec<_>>(),
                "good": p.good.iter().map(|id| id.0).collect::<Vec<_>>(),
                "missing": p.missing,
                "repairing": p.repairing,
            })
        })
        .collect();
    serde_json::json!({
        "path": path,
        "files": report.files,
        "blocks": report.blocks,
        "healthy": h.healthy,
        "under_replicated": h.under_replicated,
        "missing": h.missing,
        "repairing": h.repairing,
        "unknown_servers": report.unknown_servers.iter().map(|id| id.0).collect::<Vec<_>>(),
        "problems": problems,
        "more": report.more,
    })
    .to_string()
}

/// A progress line on a terminal (bytes, rate, ETA), at most ten times a second.
pub(crate) struct TermProgress {
    started: Instant,
    last: Instant,
    enabled: bool,
}

impl TermProgress {
    pub(crate) fn new() -> TermProgress {
        let now = Instant::now();
        TermProgress { started: now, last: now, enabled: std::io::stderr().is_terminal() }
    }

    pub(crate) fn summary(&self, what: &str, bytes: u64) {
        if self.enabled {
            eprint!("\r\x1b[K");
        }
        let secs = self.started.elapsed().as_secs_f64();
        eprintln!(
            "{what}: {bytes} bytes ({}) in {secs:.2} s, {:.1} MB/s",
            human(bytes),
            bytes as f64 / secs.max(1e-9) / 1e6
        );
    }
}

impl meshfs_client::data::Progress for TermProgress {
    fn update(&mut self, done: u64, total: Option<u64>) {
        if !self.enabled || self.last.elapsed() < Duration::from_millis(100) {
            return;
        }
        self.last = Instant::now();
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        let rate = done as f64 / secs;
        let eta = match total {
            Some(t) if rate > 0.0 && t >= done => format!("ETA {:.0} s", (t - done) as f64 / rate),
            _ => String::new(),
        };
        let of = total.map(|t| format!(" of {}", human(t))).unwrap_or_default();
        eprint!("\r\x1b[K  {}{of}  {:.1} MB/s  {eta}", human(done), rate / 1e6);
    }
}
