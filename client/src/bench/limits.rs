//! `meshfs bench limits`: what this machine can do at best, measured the way the data path
//! uses it, so that every benchmark result can be read as a fraction of its limit.
//!
//! - loopback TCP, one stream: 1 MiB writes on 127.0.0.1 to a reader that discards them;
//! - disk sequential write with fsync: `size` bytes of random data in 1 MiB writes, then
//!   `fsync`, timed together (what a block write costs on a data-server);
//! - disk cold read: the same file read back after `posix_fadvise(DONTNEED)` dropped it from
//!   the page cache (no root needed);
//! - 4 KiB random reads of that file with O_DIRECT, one at a time (IOPS), where the
//!   filesystem allows O_DIRECT;
//! - 4 KiB append + `fdatasync` per second (what a log record costs).
//!
//! Each measurement is bounded in time and bytes, and the files are removed afterwards.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::Report;
use crate::error::ClientError;

/// Bytes per write in every throughput measurement.
const PIECE: usize = 1024 * 1024;
/// How long the loopback and append measurements run by default.
pub const TIME_BOUND: Duration = Duration::from_secs(3);
/// Most appends measured.
const MAX_APPENDS: u64 = 20_000;

/// The machine's limits.
#[derive(Debug, Clone, Serialize)]
pub struct Limits {
    /// Where the disk was measured.
    pub dir: PathBuf,
    /// Bytes written and read for the disk figures.
    pub disk_bytes: u64,
    /// One loopback TCP stream, MB/s (10^6 bytes).
    pub loopback_mb_s: f64,
    /// Sequential write including the final fsync, MB/s.
    pub disk_write_fsync_mb_s: f64,
    /// Sequential read from disk (not from the page cache), MB/s.
    pub disk_read_cold_mb_s: f64,
    /// 4 KiB random reads with O_DIRECT at queue depth 1, per second (None where the
    /// filesystem refuses O_DIRECT, as tmpfs does).
    pub random_read_4k_iops: Option<f64>,
    /// 4 KiB appends, each followed by fdatasync, per second.
    pub append_fdatasync_per_s: f64,
    /// Mean time of one append + fdatasync, microseconds.
    pub append_fdatasync_mean_us: f64,
}

fn local(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClientError {
    let what = what.into();
    move |source| ClientError::Local { what, source }
}

fn mb_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64().max(1e-9) / 1e6
}

/// Removes the measurement files however the measurement ends.
struct Scratch(Vec<PathBuf>);

impl Drop for Scratch {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = fs::remove_file(path);
        }
    }
}

/// Measures every limit, with the disk figures taken in `dir` (created if missing) over
/// `disk_bytes` bytes, and the loopback and append figures over `time_bound` each.
/// `progress` is told what is being measured.
pub fn measure(
    dir: &Path,
    disk_bytes: u64,
    time_bound: Duration,
    mut progress: impl FnMut(&str),
) -> Result<Limits, ClientError> {
    fs::create_dir_all(dir).map_err(local(format!("creating {}", dir.display())))?;
    let tag = std::process::id();
    let data = dir.join(format!(".meshfs-limits-{tag}.data"));
    let log = dir.join(format!(".meshfs-limits-{tag}.log"));
    let _scratch = Scratch(vec![data.clone(), log.clone()]);
    // Non-repeating, non-zero bytes: some filesystems and disks skip zeros.
    let piece = crate::bench::rng::XorShift::new(0x9E37_79B9_7F4A_7C15).bytes(PIECE);

    progress("loopback TCP, one stream");
    let loopback_mb_s = loopback(&piece, time_bound)?;

    progress("disk sequential write + fsync");
    let started = Instant::now();
    let mut file = File::create(&data).map_err(local(format!("creating {}", data.display())))?;
    let mut written = 0u64;
    while written < disk_bytes {
        let n = (disk_bytes - written).min(PIECE as u64) as usize;
        file.write_all(&piece[..n]).map_err(local(format!("writing {}", data.display())))?;
        written += n as u64;
    }
    file.sync_all().map_err(local(format!("fsync of {}", data.display())))?;
    let disk_write_fsync_mb_s = mb_s(written, started.elapsed());
    drop(file);

    progress("disk cold read");
    let file = File::open(&data).map_err(local(format!("opening {}", data.display())))?;
    nix::fcntl::posix_fadvise(&file, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED)
        .map_err(|e| ClientError::Local {
            what: format!("dropping {} from the page cache", data.display()),
            source: std::io::Error::from(e),
        })?;
    let started = Instant::now();
    let mut reader = file;
    let mut buf = vec![0u8; PIECE];
    let mut read = 0u64;
    loop {
        let n = reader.read(&mut buf).map_err(local(format!("reading {}", data.display())))?;
        if n == 0 {
            break;
        }
        read += n as u64;
    }
    let disk_read_cold_mb_s = mb_s(read, started.elapsed());

    progress("4 KiB random reads, O_DIRECT");
    let random_read_4k_iops = random_reads(&data, written, time_bound)?;

    progress("4 KiB append + fdatasync");
    let mut file = File::create(&log).map_err(local(format!("creating {}", log.display())))?;
    let started = Instant::now();
    let mut appends = 0u64;
    while appends < MAX_APPENDS && started.elapsed() < time_bound {
        file.write_all(&piece[..4096]).map_err(local(format!("writing {}", log.display())))?;
        file.sync_data().map_err(local(format!("fdatasync of {}", log.display())))?;
        appends += 1;
    }
    let elapsed = started.elapsed();
    Ok(Limits {
        dir: dir.to_path_buf(),
        disk_bytes: written,
        loopback_mb_s,
        disk_write_fsync_mb_s,
        disk_read_cold_mb_s,
        random_read_4k_iops,
        append_fdatasync_per_s: appends as f64 / elapsed.as_secs_f64().max(1e-9),
        append_fdatasync_mean_us: elapsed.as_secs_f64() * 1e6 / appends.max(1) as f64,
    })
}

/// 4 KiB reads at random aligned offsets of the first `len` bytes of `path`, with O_DIRECT
/// (no page cache), one at a time for `time_bound`; reads per second, or None if the
/// filesystem does not allow O_DIRECT.
fn random_reads(path: &Path, len: u64, time_bound: Duration) -> Result<Option<f64>, ClientError> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    const BLOCK: usize = 4096;
    let opened = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_DIRECT.bits())
        .open(path);
    let file = match opened {
        Ok(file) => file,
        Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => return Ok(None),
        Err(e) => return Err(local(format!("opening {} with O_DIRECT", path.display()))(e)),
    };
    // O_DIRECT wants a buffer aligned to the block: take the aligned 4 KiB inside 8 KiB.
    let mut space = vec![0u8; 2 * BLOCK];
    let skew = space.as_ptr().align_offset(BLOCK);
    let buf = &mut space[skew..skew + BLOCK];
    let slots = (len / BLOCK as u64).max(1);
    let mut rng = crate::bench::rng::XorShift::new(0x2545_F491_4F6C_DD1D);
    let started = Instant::now();
    let mut reads = 0u64;
    while started.elapsed() < time_bound && reads < MAX_APPENDS {
        let offset = (rng.next_u64() % slots) * BLOCK as u64;
        match file.read_at(buf, offset) {
            Ok(_) => reads += 1,
            Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => return Ok(None),
            Err(e) => return Err(local(format!("reading {} with O_DIRECT", path.display()))(e)),
        }
    }
    Ok(Some(reads as f64 / started.elapsed().as_secs_f64().max(1e-9)))
}

/// One TCP stream over 127.0.0.1: 1 MiB writes for at most `time_bound` (and 8 GiB), to a
/// reader that discards them; MB/s as the reader received them.
fn loopback(piece: &[u8], time_bound: Duration) -> Result<f64, ClientError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(local("binding 127.0.0.1:0"))?;
    let addr = listener.local_addr().map_err(local("reading the listener's address"))?;
    let reader = std::thread::spawn(move || -> std::io::Result<(u64, Instant)> {
        let (mut stream, _) = listener.accept()?;
        let mut buf = vec![0u8; PIECE];
        let mut total = 0u64;
        loop {
            match stream.read(&mut buf)? {
                0 => return Ok((total, Instant::now())),
                n => total += n as u64,
            }
        }
    });
    let mut stream = TcpStream::connect(addr).map_err(local(format!("connecting to {addr}")))?;
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < time_bound && sent < 8 << 30 {
        stream.write_all(piece).map_err(local("writing to the loopback stream"))?;
        sent += piece.len() as u64;
    }
    drop(stream);
    let (received, ended) = reader
        .join()
        .map_err(|_| ClientError::Local {
            what: "the loopback reader".into(),
            source: std::io::Error::other("panicked"),
        })?
        .map_err(local("reading the loopback stream"))?;
    Ok(mb_s(received, ended - started))
}

/// The limits as a table.
pub fn render(limits: &Limits) -> String {
    format!(
        "machine limits (disk figures in {}, {} MB)\n\
         \x20 loopback TCP, one stream       {:>9.0} MB/s\n\
         \x20 disk sequential write + fsync  {:>9.0} MB/s\n\
         \x20 disk cold read                 {:>9.0} MB/s\n\
         \x20 4 KiB random read, O_DIRECT    {:>9} /s\n\
         \x20 4 KiB append + fdatasync       {:>9.0} /s (mean {:.0} us)\n",
        limits.dir.display(),
        limits.disk_bytes / 1_000_000,
        limits.loopback_mb_s,
        limits.disk_write_fsync_mb_s,
        limits.disk_read_cold_mb_s,
        limits.random_read_4k_iops.map_or("n/a".to_string(), |iops| format!("{iops:.0}")),
        limits.append_fdatasync_per_s,
        limits.append_fdatasync_mean_us,
    )
}

/// The limits as the bench JSON object: `workload`, `params`, `results` (and `limits`, the
/// same figures, for scripts that read every workload's limits from one place).
pub fn to_json(limits: &Limits) -> String {
    let results = serde_json::json!({
        "loopback_mb_s": limits.loopback_mb_s,
        "disk_write_fsync_mb_s": limits.disk_write_fsync_mb_s,
        "disk_read_cold_mb_s": limits.disk_read_cold_mb_s,
        "random_read_4k_iops": limits.random_read_4k_iops,
        "append_fdatasync_per_s": limits.append_fdatasync_per_s,
    });
    let params = serde_json::json!({ "dir": limits.dir, "disk_bytes": limits.disk_bytes });
    let mut report = Report::new("limits", params);
    report.results(results.clone());
    for (key, value) in results.as_object().into_iter().flatten() {
        report.limit(key, value.clone());
    }
    report.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_measured_and_leave_nothing_behind() {
        let dir = std::env::temp_dir().join(format!("meshfs-limits-test-{}", std::process::id()));
        let mut steps = Vec::new();
        let bound = Duration::from_millis(200);
        let limits = measure(&dir, 8 * 1024 * 1024, bound, |s| steps.push(s.to_string())).unwrap();
        assert_eq!(steps.len(), 5, "{steps:?}");
        assert_eq!(limits.disk_bytes, 8 * 1024 * 1024);
        for (name, value) in [
            ("loopback", limits.loopback_mb_s),
            ("write", limits.disk_write_fsync_mb_s),
            ("read", limits.disk_read_cold_mb_s),
            ("append", limits.append_fdatasync_per_s),
        ] {
            assert!(value.is_finite() && value > 0.0, "{name}: {value}");
        }
        if let Some(iops) = limits.random_read_4k_iops {
            assert!(iops > 0.0, "random reads: {iops}");
        }
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0, "the scratch files are gone");
        let json: serde_json::Value = serde_json::from_str(&to_json(&limits)).unwrap();
        assert_eq!(json["workload"], "limits");
        assert!(json["results"]["disk_write_fsync_mb_s"].as_f64().unwrap() > 0.0);
        assert!(render(&limits).contains("disk cold read"));
        fs::remove_dir(&dir).unwrap();
    }
}
