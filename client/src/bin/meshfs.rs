//! `meshfs`: the MeshFS command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use meshfs_client::data::DataClient;
use meshfs_client::launcher::{self, UpOptions};
use meshfs_client::status::cluster_status;
use meshfs_client::{ClientError, Credentials, MetaClient};
use meshfs_core::namespace::Stat;
use meshfs_core::wire::FsckReport;
use meshfs_group::{ClientId, Config};
use std::io::IsTerminal;
use std::time::Instant;

/// The MeshFS command line.
#[derive(Debug, Parser)]
#[command(name = "meshfs", version, about = "MeshFS: run, watch and use a MeshFS cluster")]
struct Cli {
    /// The cluster config (default: $MESHFS_CONFIG, else ./config.conf).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Which [[client]] of the config to act as (default: the first).
    #[arg(long, global = true, value_name = "ID")]
    client: Option<u32>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start every server of the config here; Ctrl-C stops them all.
    Up {
        /// Seconds to wait for the full mesh before reporting who is missing.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Make a directory.
    Mkdir {
        /// Make missing parents too, and accept an existing directory.
        #[arg(short, long)]
        parents: bool,
        /// The directory, e.g. /data/run-1.
        path: String,
    },
    /// Make an empty file; fails (exit status 1) if the name exists.
    Create {
        /// Copies of each block (default: the config's replication).
        #[arg(long, default_value_t = 0)]
        replication: u8,
        /// The file.
        path: String,
    },
    /// List a directory.
    Ls {
        /// Long format: kind, id, size, name.
        #[arg(short, long)]
        long: bool,
        /// The directory (default /).
        #[arg(default_value = "/")]
        path: String,
    },
    /// Show a file's descriptor, version, size and blocks with their data-servers, or a
    /// directory's entry count.
    Stat {
        /// The path.
        path: String,
    },
    /// Move FROM to TO atomically; TO must not exist.
    Mv {
        /// The source.
        from: String,
        /// The destination.
        to: String,
    },
    /// Remove a file or an empty directory (with -r, a whole tree).
    Rm {
        /// Remove a directory and everything below it.
        #[arg(short, long)]
        recursive: bool,
        /// The path.
        path: String,
    },
    /// Store a local file (or standard input, `-`) as REMOTE.
    Put {
        /// Copies of each block (default: the config's replication).
        #[arg(long, default_value_t = 0)]
        replication: u8,
        /// The local file, or - for standard input.
        local: String,
        /// The path in MeshFS (must not exist).
        remote: String,
    },
    /// Fetch REMOTE into a local file (or standard output, `-`), every byte verified.
    Get {
        /// The path in MeshFS.
        remote: String,
        /// The local file, or - for standard output.
        local: String,
    },
    /// Write REMOTE to standard output.
    Cat {
        /// The path in MeshFS.
        remote: String,
    },
    /// Measure the cluster of the config (it must be running).
    Bench {
        /// Run against a throw-away local cluster of the config's servers (free ports,
        /// temporary data directories), stopped and removed afterwards.
        #[arg(long, global = true)]
        local: bool,
        #[command(subcommand)]
        workload: Workload,
    },
    /// Check every block of the files under PATH against the data-servers' reports: prints a
    /// summary and each block short of replicas. Exit status 1 if any block is missing (no
    /// good replica anywhere).
    Fsck {
        /// Where to start (default /).
        #[arg(default_value = "/")]
        path: String,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Take the lock on PATH, run COMMAND while holding it, then release it (like
    /// flock(1)). COMMAND sees the grant's sequencer in $MESHFS_LOCK_SEQUENCER. Exit
    /// status: COMMAND's; 75 if the lock was not had within --timeout.
    Lock {
        /// Take it shared (many holders, e.g. readers); default exclusive.
        #[arg(long)]
        shared: bool,
        /// Seconds to wait for it; 0 tries once. Default: as long as it takes.
        #[arg(long, value_name = "SECS")]
        timeout: Option<f64>,
        /// The lock's path (any path; no file needs to be there).
        path: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// List the locks at or under PATH: holders, modes, sequencers and waiters.
    Locks {
        /// Where to look (default /: every lock).
        #[arg(default_value = "/")]
        path: String,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Operate on data-servers.
    Dserver {
        #[command(subcommand)]
        action: DserverAction,
    },
    /// Show every server, its links and the RTT matrix, each data-server's capacity, use,
    /// blocks and state, and the blocks' health. Exit status 1 if any server is down.
    Status {
        /// Print one JSON object instead of tables.
        #[arg(long)]
        json: bool,
        /// Milliseconds to wait for each server.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
}

#[derive(Debug, Subcommand)]
enum DserverAction {
    /// Move every block off data-server ID so it can be retired; `meshfs status` shows the
    /// progress (its block count falls to 0). Files stay readable throughout.
    Drain {
        /// The data-server's id.
        id: u32,
    },
    /// Take the draining mark off data-server ID: it takes new blocks again.
    Undrain {
        /// The data-server's id.
        id: u32,
    },
}

/// UTC date and time of `ms` milliseconds since the Unix epoch (civil-from-days).
fn utc(ms: u64) -> String {
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

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

fn print_stat(path: &str, stat: &Stat) {
    match stat {
        Stat::Dir { id, entries, mtime_ms } => {
            println!("{path}: directory {id}, {entries} entries, modified {}", utc(*mtime_ms));
        }
        Stat::File(meta) => {
            let fd = meta.descriptor;
            println!("{path}: file {} version {}", fd.id.0, fd.version);
            println!("  size        {} bytes ({})", meta.size, human(meta.size));
            println!(
                "  block size  {} ({} bytes)",
                human(u64::from(meta.block_size)),
                meta.block_size
            );
            println!("  replication {}", meta.replication);
            println!("  created     {}", utc(meta.ctime_ms));
            println!("  modified    {}", utc(meta.mtime_ms));
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

#[derive(Debug, Subcommand)]
enum Workload {
    /// Namespace throughput: create, stat, list, rename and remove, with C concurrent clients.
    Meta {
        /// Client counts to run, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
        clients: Vec<usize>,
        /// Files created per client count.
        #[arg(long, default_value_t = 2000)]
        files: usize,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Leave the files in place afterwards.
        #[arg(long)]
        keep: bool,
        /// Phases after the creates, comma-separated: stat, list, rename, remove (empty for
        /// none; remove is skipped with --keep).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "stat,list,rename,remove",
            value_parser = meta_phase
        )]
        phases: Vec<String>,
        /// Measure the machine's limits first; creates/s as a fraction of appends/s.
        #[arg(long)]
        with_limits: bool,
    },
    /// Locks: lock+unlock pairs per second and their latency, uncontended (each client its
    /// own lock) and contended (every client one exclusive lock).
    Locks {
        /// Pairs per case, shared among its clients.
        #[arg(long, default_value_t = 2000)]
        pairs: usize,
        /// Client counts of the uncontended case, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,16")]
        clients: Vec<usize>,
        /// Clients of the contended case (0: skip it).
        #[arg(long, default_value_t = 16)]
        contended: usize,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Sequential write: N files of SIZE written at once through the client library.
    Seqwrite {
        #[command(flatten)]
        seq: SeqArgs,
    },
    /// Sequential read: N files of SIZE written, then read back at once (the read is timed).
    Seqread {
        #[command(flatten)]
        seq: SeqArgs,
    },
    /// Small files: N files of SIZE created and written by C clients at once, then read
    /// back and checked; files/s both ways.
    Smallfile {
        /// Files in all.
        #[arg(long, default_value_t = 100_000)]
        files: usize,
        /// Bytes per file (e.g. 4KiB).
        #[arg(long, default_value = "4KiB", value_parser = parse_size_arg)]
        size: u64,
        /// Clients at once.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Copies of each block (default: the config's).
        #[arg(long, default_value_t = 0)]
        replication: u8,
        /// Measure the machine's limits first; writes/s as a fraction of appends/s.
        #[arg(long)]
        with_limits: bool,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Leave the files in place afterwards.
        #[arg(long)]
        keep: bool,
    },
    /// Random reads: 4 KiB at random offsets of one file, at each queue depth; IOPS.
    Randread {
        /// Size of the file read (written first, removed afterwards).
        #[arg(long, default_value = "256MiB", value_parser = parse_size_arg)]
        size: u64,
        /// Reads per queue depth.
        #[arg(long, default_value_t = 20_000)]
        reads: usize,
        /// Queue depths, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,16")]
        depth: Vec<usize>,
        /// Copies of each block (default: the config's).
        #[arg(long, default_value_t = 0)]
        replication: u8,
        /// Measure the machine's limits first; IOPS as a fraction of the disk's own.
        #[arg(long)]
        with_limits: bool,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Repair: write SIZE, kill -9 the data-server holding the most, and time the cluster's
    /// return to full replication (needs --local; its grace period is set to 1 s).
    Repair {
        /// Bytes written before the kill.
        #[arg(long, default_value = "1GiB", value_parser = parse_size_arg)]
        size: u64,
        /// Files they are spread over.
        #[arg(long, default_value_t = 8)]
        files: usize,
        /// Readers reading the files during the repair (0: no client load).
        #[arg(long, default_value_t = 0)]
        readers: usize,
        /// Copies of each block (default: the config's; at least 2).
        #[arg(long, default_value_t = 0)]
        replication: u8,
        /// Repair traffic cap per data-server, MB/s (default: the config's heal.repair_mbps).
        #[arg(long)]
        repair_mbps: Option<u64>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// This machine's limits: loopback TCP, disk write with fsync, cold read, 4 KiB
    /// append + fdatasync. Needs no cluster.
    Limits {
        /// Directory for the disk figures (default: where the first data-server of the
        /// config keeps its data, i.e. the disk the data path uses).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Bytes written and read back for the disk figures (e.g. 1GiB, 256MiB).
        #[arg(long, default_value = "1GiB", value_parser = parse_size_arg)]
        size: u64,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Options of the sequential workloads.
#[derive(Debug, clap::Args)]
struct SeqArgs {
    /// Bytes per file (e.g. 1GiB, 256MiB).
    #[arg(long, default_value = "1GiB", value_parser = parse_size_arg)]
    size: u64,
    /// Files at once, one client each.
    #[arg(long, default_value_t = 1)]
    files: usize,
    /// Copies of each block (default: the config's).
    #[arg(long, default_value_t = 0)]
    replication: u8,
    /// Measure the machine's limits first and give each result as a fraction of its limit.
    #[arg(long)]
    with_limits: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Leave the files in place afterwards.
    #[arg(long)]
    keep: bool,
}

/// Where the disk limits are measured by default: the first data-server's disk.
fn limits_dir(config: &Config) -> PathBuf {
    config
        .servers_of(meshfs_group::Role::DServer)
        .next()
        .and_then(|s| s.data_dir.parent().map(|p| p.to_path_buf()))
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The limits, measured now, when asked for (printed unless the output is JSON).
fn limits_if(
    config: &Config,
    wanted: bool,
    disk_bytes: u64,
    json: bool,
) -> Result<Option<meshfs_client::limits::Limits>, ClientError> {
    if !wanted {
        return Ok(None);
    }
    let limits = meshfs_client::limits::measure(
        &limits_dir(config),
        disk_bytes,
        meshfs_client::limits::TIME_BOUND,
        |step| eprintln!("bench: measuring {step}"),
    )?;
    if !json {
        print!("{}", meshfs_client::limits::render(&limits));
    }
    Ok(Some(limits))
}

fn seq_bench(
    config: &Config,
    credentials: &Credentials,
    seq: SeqArgs,
    read: bool,
) -> Result<u8, ClientError> {
    let limits = limits_if(config, seq.with_limits, seq.size.min(1 << 30), seq.json)?;
    let bench = meshfs_client::seq_bench::SeqBench {
        size: seq.size,
        files: seq.files.max(1),
        replication: seq.replication,
        read,
        keep: seq.keep,
    };
    let results = meshfs_client::seq_bench::run(config, credentials, &bench, |line| {
        eprintln!("bench: {line}")
    })?;
    // seqread writes its files first; it reports the read.
    let shown: Vec<_> = results.into_iter().filter(|r| (r.workload == "seqread") == read).collect();
    if seq.json {
        for result in &shown {
            println!("{}", meshfs_client::seq_bench::to_json(&bench, result, limits.as_ref()));
        }
    } else {
        print!("{}", meshfs_client::seq_bench::render(&shown));
        if let Some(limits) = &limits {
            for r in &shown {
                let (limit, name) = if r.workload == "seqwrite" {
                    (limits.disk_write_fsync_mb_s, "disk write + fsync")
                } else {
                    (limits.disk_read_cold_mb_s, "disk cold read")
                };
                println!("{}: {:.2} of the {name} limit", r.workload, r.mb_s / limit);
            }
        }
    }
    Ok(0)
}

fn parse_size_arg(text: &str) -> Result<u64, String> {
    meshfs_group::config::parse_size(text)
}

/// A progress line on a terminal (bytes, rate, ETA), at most ten times a second.
struct TermProgress {
    started: Instant,
    last: Instant,
    enabled: bool,
}

impl TermProgress {
    fn new() -> TermProgress {
        let now = Instant::now();
        TermProgress { started: now, last: now, enabled: std::io::stderr().is_terminal() }
    }

    fn summary(&self, what: &str, bytes: u64) {
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

fn open_input(local: &str) -> Result<(Box<dyn std::io::Read>, Option<u64>), ClientError> {
    if local == "-" {
        return Ok((Box::new(std::io::stdin().lock()), None));
    }
    let file = std::fs::File::open(local)
        .map_err(|e| ClientError::Local { what: format!("opening {local}"), source: e })?;
    let size = file.metadata().ok().map(|m| m.len());
    Ok((Box::new(std::io::BufReader::with_capacity(1 << 20, file)), size))
}

fn open_output(local: &str) -> Result<Box<dyn std::io::Write>, ClientError> {
    if local == "-" {
        return Ok(Box::new(std::io::stdout().lock()));
    }
    let file = std::fs::File::create(local)
        .map_err(|e| ClientError::Local { what: format!("creating {local}"), source: e })?;
    Ok(Box::new(std::io::BufWriter::with_capacity(1 << 20, file)))
}

fn run(cli: Cli) -> Result<u8, ClientError> {
    let config = Config::load(&meshfs_group::config::resolve_path(cli.config))?;
    let credentials = Credentials::from_config(&config, cli.client.map(ClientId))?;
    // `bench --local`: the workload runs against a cluster of its own, gone when this returns.
    let mut local_cluster = None;
    let config = match &cli.command {
        Command::Bench { local: true, workload } => {
            let mut heal = Vec::new();
            if let Workload::Repair { repair_mbps, .. } = workload {
                heal.push(("grace_secs", meshfs_client::repair_bench::BENCH_GRACE_SECS));
                if let Some(rate) = repair_mbps {
                    heal.push(("repair_mbps", i64::try_from(*rate).unwrap_or(i64::MAX)));
                }
            }
            let cluster = meshfs_client::local::LocalCluster::start_with(
                &config.path,
                &credentials,
                &heal,
                |line| eprintln!("bench: {line}"),
            )?;
            let config = cluster.config.clone();
            local_cluster = Some(cluster);
            config
        }
        _ => config,
    };
    match cli.command {
        Command::Up { timeout } => {
            let options =
                UpOptions { mesh_timeout: Duration::from_secs(timeout), ..UpOptions::default() };
            let code = launcher::up(&config, &credentials, &options)?;
            Ok(u8::try_from(code).unwrap_or(1))
        }
        Command::Mkdir { parents, path } => {
            MetaClient::new(&config, credentials)?.mkdir(&path, parents)?;
            Ok(0)
        }
        Command::Create { replication, path } => {
            let fd = MetaClient::new(&config, credentials)?.create(&path, replication)?;
            println!("created {path}: file {} version {}", fd.id.0, fd.version);
            Ok(0)
        }
        Command::Ls { long, path } => {
            for entry in MetaClient::new(&config, credentials)?.list(&path)? {
                if long {
                    let kind = if entry.is_dir { 'd' } else { '-' };
                    println!("{kind} {:>10} {:>14} {}", entry.id, entry.size, entry.name);
                } else if entry.is_dir {
                    println!("{}/", entry.name);
                } else {
                    println!("{}", entry.name);
                }
            }
            Ok(0)
        }
        Command::Stat { path } => {
            let stat = MetaClient::new(&config, credentials)?.stat(&path)?;
            print_stat(&path, &stat);
            Ok(0)
        }
        Command::Mv { from, to } => {
            MetaClient::new(&config, credentials)?.rename(&from, &to)?;
            Ok(0)
        }
        Command::Rm { recursive, path } => {
            MetaClient::new(&config, credentials)?.remove(&path, recursive)?;
            Ok(0)
        }
        Command::Put { replication, local, remote } => {
            let (mut input, size) = open_input(&local)?;
            let mut meta = MetaClient::new(&config, credentials.clone())?;
            let mut data = DataClient::new(&config, credentials);
            let mut progress = TermProgress::new();
            let n = meshfs_client::data::put(
                &mut meta,
                &mut data,
                &mut input,
                &remote,
                replication,
                size,
                &mut progress,
            )?;
            progress.summary(&format!("put {local} -> {remote}"), n);
            Ok(0)
        }
        Command::Get { remote, local } => {
            let mut output = open_output(&local)?;
            let mut meta = MetaClient::new(&config, credentials.clone())?;
            let mut data = DataClient::new(&config, credentials);
            let mut progress = TermProgress::new();
            let n = meshfs_client::data::get(
                &mut meta,
                &mut data,
                &remote,
                &mut output,
                &mut progress,
            )?;
            progress.summary(&format!("get {remote} -> {local}"), n);
            Ok(0)
        }
        Command::Cat { remote } => {
            let mut output = open_output("-")?;
            let mut meta = MetaClient::new(&config, credentials.clone())?;
            let mut data = DataClient::new(&config, credentials);
            meshfs_client::data::get(&mut meta, &mut data, &remote, &mut output, &mut ())?;
            Ok(0)
        }
        Command::Bench {
            workload: Workload::Meta { clients, files, json, keep, phases, with_limits },
            ..
        } => {
            let limits = limits_if(&config, with_limits, 256 << 20, json)?;
            let bench = meshfs_client::bench::MetaBench { clients, files, keep, phases };
            let results = meshfs_client::bench::meta(&config, &credentials, &bench, |line| {
                eprintln!("bench: {line}")
            })?;
            if json {
                println!("{}", meshfs_client::bench::to_json(&bench, &results, limits.as_ref()));
            } else {
                print!("{}", meshfs_client::bench::render(&results));
                if let Some(limits) = &limits {
                    for r in results.iter().filter(|r| r.op == "create") {
                        println!(
                            "create, {} clients: {:.2} of the disk's 4 KiB appends + fdatasync",
                            r.clients,
                            r.ops_per_s / limits.append_fdatasync_per_s
                        );
                    }
                }
            }
            Ok(0)
        }
        Command::Bench { workload: Workload::Limits { dir, size, json }, .. } => {
            let dir = dir.unwrap_or_else(|| limits_dir(&config));
            let limits = meshfs_client::limits::measure(
                &dir,
                size,
                meshfs_client::limits::TIME_BOUND,
                |step| eprintln!("bench: measuring {step}"),
            )?;
            if json {
                println!("{}", meshfs_client::limits::to_json(&limits));
            } else {
                print!("{}", meshfs_client::limits::render(&limits));
            }
            Ok(0)
        }
        Command::Bench {
            workload: Workload::Locks { pairs, clients, contended, json }, ..
        } => {
            let bench = meshfs_client::lock_bench::LockBench { pairs, clients, contended };
            let results = meshfs_client::lock_bench::run(&config, &credentials, &bench, |line| {
                eprintln!("bench: {line}")
            })?;
            if json {
                println!("{}", meshfs_client::lock_bench::to_json(&bench, &results));
            } else {
                print!("{}", meshfs_client::lock_bench::render(&results));
            }
            Ok(0)
        }
        Command::Bench { workload: Workload::Seqwrite { seq }, .. } => {
            seq_bench(&config, &credentials, seq, false)
        }
        Command::Bench { workload: Workload::Seqread { seq }, .. } => {
            seq_bench(&config, &credentials, seq, true)
        }
        Command::Bench {
            workload:
                Workload::Smallfile { files, size, clients, replication, with_limits, json, keep },
            ..
        } => {
            let limits = limits_if(&config, with_limits, 256 << 20, json)?;
            let size = usize::try_from(size).unwrap_or(usize::MAX);
            let bench =
                meshfs_client::small_bench::SmallBench { files, size, clients, replication, keep };
            let results = meshfs_client::small_bench::run(&config, &credentials, &bench, |l| {
                eprintln!("bench: {l}")
            })?;
            if json {
                println!(
                    "{}",
                    meshfs_client::small_bench::to_json(&bench, &results, limits.as_ref())
                );
            } else {
                print!("{}", meshfs_client::small_bench::render(&results));
            }
            Ok(0)
        }
        Command::Bench {
            workload: Workload::Repair { size, files, readers, replication, repair_mbps, json },
            ..
        } => {
            let Some(cluster) = local_cluster.as_mut() else {
                eprintln!("meshfs: bench repair kills a data-server: run it with --local");
                return Ok(2);
            };
            let bench =
                meshfs_client::repair_bench::RepairBench { size, files, readers, replication };
            let result = meshfs_client::repair_bench::run(cluster, &credentials, &bench, |l| {
                eprintln!("bench: {l}")
            })?;
            let rate = repair_mbps.or(Some(config.heal.repair_bytes_per_sec / 1_000_000));
            if json {
                println!("{}", meshfs_client::repair_bench::to_json(&bench, rate, &result));
            } else {
                print!("{}", meshfs_client::repair_bench::render(&result));
            }
            Ok(0)
        }
        Command::Bench {
            workload: Workload::Randread { size, reads, depth, replication, with_limits, json },
            ..
        } => {
            let limits = limits_if(&config, with_limits, size.min(1 << 30), json)?;
            let bench =
                meshfs_client::rand_bench::RandBench { size, reads, depths: depth, replication };
            let results = meshfs_client::rand_bench::run(&config, &credentials, &bench, |l| {
                eprintln!("bench: {l}")
            })?;
            if json {
                println!(
                    "{}",
                    meshfs_client::rand_bench::to_json(&bench, &results, limits.as_ref())
                );
            } else {
                print!("{}", meshfs_client::rand_bench::render(&results));
                if let Some(limit) = limits.as_ref().and_then(|l| l.random_read_4k_iops) {
                    for r in &results {
                        println!(
                            "qd{}: {:.2} of the disk's 4 KiB O_DIRECT reads",
                            r.depth,
                            r.iops / limit
                        );
                    }
                }
            }
            Ok(0)
        }
        Command::Fsck { path, json } => {
            let report = MetaClient::new(&config, credentials)?.fsck(&path)?;
            if json {
                println!("{}", fsck_json(&path, &report));
            } else {
                print!("{}", fsck_text(&path, &report));
            }
            Ok(u8::from(report.health.missing > 0))
        }
        Command::Lock { shared, timeout, path, command } => {
            lock_and_run(&config, credentials, shared, timeout, &path, &command)
        }
        Command::Locks { path, json } => {
            let mut meta = MetaClient::new(&config, credentials)?;
            let (locks, more) = meshfs_client::session::list_locks(&mut meta, &path)?;
            if json {
                println!("{}", locks_json(&locks, more));
            } else {
                print!("{}", locks_text(&path, &locks, more));
            }
            Ok(0)
        }
        Command::Dserver { action } => {
            let (id, draining) = match action {
                DserverAction::Drain { id } => (id, true),
                DserverAction::Undrain { id } => (id, false),
            };
            MetaClient::new(&config, credentials)?.drain(id, draining)?;
            if draining {
                println!(
                    "data-server {id} is draining: its blocks move to the others; watch `meshfs status`"
                );
            } else {
                println!("data-server {id} takes new blocks again");
            }
            Ok(0)
        }
        Command::Status { json, timeout_ms } => {
            let status = cluster_status(&config, &credentials, Duration::from_millis(timeout_ms));
            if json {
                println!("{}", status.to_json());
            } else {
                print!("{}", status.render());
            }
            Ok(if status.servers_up() == status.servers.len() { 0 } else { 1 })
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("meshfs: {err}");
            // A refusal of the operation itself is 1, as for cp or mkdir; trouble reaching or
            // configuring the cluster is 2.
            ExitCode::from(if matches!(err, ClientError::Namespace(_)) { 1 } else { 2 })
        }
    }
}

/// Exit status of `meshfs lock` when the lock was not had in time (EX_TEMPFAIL, as flock).
const EXIT_LOCK_TIMEOUT: u8 = 75;

/// `meshfs lock`: the lock, the command under it, the release.
fn lock_and_run(
    config: &Config,
    credentials: Credentials,
    shared: bool,
    timeout: Option<f64>,
    path: &str,
    command: &[String],
) -> Result<u8, ClientError> {
    use meshfs_client::session::{LockMode, Session, SessionEvent};
    use meshfs_core::error::NsError;
    let wait = match timeout {
        None => Some(Duration::MAX),
        Some(secs) if secs.is_finite() && secs > 0.0 => {
            Some(Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX))
        }
        Some(0.0) => None,
        Some(secs) => {
            eprintln!("meshfs lock: --timeout {secs}: must be 0 or more seconds");
            return Ok(2);
        }
    };
    let mode = if shared { LockMode::Shared } else { LockMode::Exclusive };
    let session = Session::open(config, credentials)?;
    let lock = match session.lock(path, mode, wait) {
        Ok(lock) => lock,
        Err(ClientError::Namespace(err @ (NsError::LockBusy { .. } | NsError::LockTimeout(_)))) => {
            eprintln!("meshfs lock: {err}");
            let _ = session.close();
            return Ok(EXIT_LOCK_TIMEOUT);
        }
        Err(err) => return Err(err),
    };
    let events = session.events();
    let watched = path.to_string();
    std::thread::spawn(move || {
        for event in events {
            match event {
                SessionEvent::Jeopardy => eprintln!(
                    "meshfs lock: WARNING: no meta-server answers; the lock on {watched} may be lost"
                ),
                SessionEvent::Safe => {
                    eprintln!("meshfs lock: the meta-servers answer again; {watched} is still held")
                }
                SessionEvent::Expired => {
                    eprintln!(
                        "meshfs lock: WARNING: the session expired; the lock on {watched} is lost"
                    );
                    return;
                }
            }
        }
    });
    let status = std::process::Command::new(&command[0])
        .args(&command[1..])
        .env("MESHFS_LOCK_SEQUENCER", lock.sequencer().to_string())
        .status();
    let released = lock.unlock();
    let _ = session.close();
    let status = match status {
        Ok(status) => status,
        Err(err) => {
            eprintln!("meshfs lock: cannot run {}: {err}", command[0]);
            return Ok(127);
        }
    };
    if let Err(err) = released {
        eprintln!("meshfs lock: releasing {path}: {err}");
    }
    use std::os::unix::process::ExitStatusExt;
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(255),
        (None, None) => 1,
    })
}

fn ms_from_now(epoch_ms: u64) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    i64::try_from(epoch_ms).unwrap_or(i64::MAX).saturating_sub(now)
}

/// `meshfs locks`'s text.
fn locks_text(path: &str, locks: &[meshfs_client::session::LockInfo], more: bool) -> String {
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
fn locks_json(locks: &[meshfs_client::session::LockInfo], more: bool) -> String {
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

fn servers(ids: &[meshfs_group::NodeId]) -> String {
    ids.iter().map(|id| id.0.to_string()).collect::<Vec<_>>().join(",")
}

/// `fsck`'s text: a summary, then each problem.
fn fsck_text(path: &str, report: &FsckReport) -> String {
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
fn fsck_json(path: &str, report: &FsckReport) -> String {
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

/// One phase of `bench meta` (or "" for none).
fn meta_phase(phase: &str) -> Result<String, String> {
    match phase {
        "" | "stat" | "list" | "rename" | "remove" => Ok(phase.to_string()),
        other => Err(format!("unknown phase {other:?}: expected stat, list, rename or remove")),
    }
}
