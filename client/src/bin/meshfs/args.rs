//! The command line: every subcommand and its flags, as clap parses them. No behaviour here.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The MeshFS command line.
#[derive(Debug, Parser)]
#[command(name = "meshfs", version, about = "MeshFS: run, watch and use a MeshFS cluster")]
pub(crate) struct Cli {
    /// A client config (what `meshfs up` and `meshfs client add` write), or the cluster
    /// config on a server host (default: $MESHFS_CONFIG, else ./config.conf). `up`, `bench`
    /// and `client` need the cluster config.
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// With the cluster config: which `[[client]]` to act as (default: the first).
    #[arg(long, global = true, value_name = "ID")]
    pub(crate) client: Option<u32>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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
        /// Its mode, in octal (default: 777 less the umask).
        #[arg(short, long, value_name = "MODE")]
        mode: Option<String>,
        /// The directory, e.g. /data/run-1.
        path: String,
    },
    /// Make an empty file; fails (exit status 1) if the name exists.
    Create {
        /// Copies of each block (default: the config's replication).
        #[arg(long, default_value_t = 0)]
        replication: u8,
        /// Its mode, in octal (default: 666 less the umask).
        #[arg(short, long, value_name = "MODE")]
        mode: Option<String>,
        /// The file.
        path: String,
    },
    /// List a directory.
    Ls {
        /// Long format: kind and mode, owner, group, id, size, name.
        #[arg(short, long)]
        long: bool,
        /// The directory (default /).
        #[arg(default_value = "/")]
        path: String,
    },
    /// Show a file's descriptor, version, size, mode, owner, group and blocks with their
    /// data-servers, or a directory's entry count, mode, owner and group.
    Stat {
        /// The path.
        path: String,
    },
    /// Mount the cluster at MOUNTPOINT (FUSE), serving it from a background process
    /// until `meshfs umount MOUNTPOINT`.
    Mount {
        /// Serve in this process until unmounted or stopped (SIGTERM, Ctrl-C), logging to
        /// stderr.
        #[arg(long)]
        foreground: bool,
        /// How long the kernel keeps a name before asking again, in milliseconds: a change
        /// made elsewhere shows here within it.
        #[arg(long, default_value_t = 1000, value_name = "MS")]
        entry_timeout_ms: u64,
        /// How long the kernel keeps a file's attributes, in milliseconds.
        #[arg(long, default_value_t = 1000, value_name = "MS")]
        attr_timeout_ms: u64,
        /// Threads serving requests.
        #[arg(long, default_value_t = 4)]
        threads: usize,
        /// Where the background process logs (default: a file in the temporary directory).
        #[arg(long, value_name = "FILE")]
        log: Option<PathBuf>,
        /// An empty directory to mount on.
        mountpoint: PathBuf,
    },
    /// Unmount a MeshFS mount; its process then exits.
    Umount {
        /// The mount point.
        mountpoint: PathBuf,
    },
    /// Move FROM to TO atomically; TO must not exist unless --force.
    Mv {
        /// Replace TO if it exists (a file by a file, an empty directory by a directory),
        /// in the same step.
        #[arg(short, long)]
        force: bool,
        /// The source.
        from: String,
        /// The destination.
        to: String,
    },
    /// Give the file at FROM a second name TO (a hard link; TO must not exist). Either
    /// name reads and writes the same file; it goes when its last name does.
    Ln {
        /// The existing file.
        from: String,
        /// The new name.
        to: String,
    },
    /// Change a file's or directory's mode bits (octal, e.g. 640 or 1777); its owner or an
    /// operator.
    Chmod {
        /// The mode, in octal.
        mode: String,
        /// The path.
        path: String,
    },
    /// Change the owner and group (UID:GID, or :GID for the group alone); another owner
    /// needs an operator.
    Chown {
        /// UID:GID, UID or :GID.
        owner: String,
        /// The path.
        path: String,
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
        /// Replace REMOTE if it exists, atomically: readers see the old file or the new
        /// one, never a mix.
        #[arg(short, long)]
        force: bool,
        /// The local file, or - for standard input.
        local: String,
        /// The path in MeshFS (must not exist, unless --force).
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
    /// Manage who may use the cluster (an operator command: edits the cluster config, which
    /// the servers re-read within a few seconds).
    Client {
        #[command(subcommand)]
        action: ClientAction,
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
pub(crate) enum ClientAction {
    /// Add client NAME with a new key; writes its client config (private, 0600) to give to
    /// whoever runs it.
    Add {
        /// The client's name.
        name: String,
        /// An operator: may drain data-servers, run fsck, and read and change any file.
        #[arg(long)]
        admin: bool,
        /// The user it acts as (default: its id).
        #[arg(long)]
        uid: Option<u32>,
        /// Its groups, comma-separated, the first its primary (default: its uid).
        #[arg(long, value_delimiter = ',')]
        gids: Vec<u32>,
        /// It may act for the users of its host (a mount on a host you control).
        #[arg(long)]
        trusted: bool,
        /// Where to write its client config (default: client-NAME.conf beside the config).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Remove client NAME: the servers refuse its next connection and drop its current ones.
    Remove {
        /// The client's name.
        name: String,
    },
    /// Give client NAME a new key (its old one stops working) and write its new client config.
    Rotate {
        /// The client's name.
        name: String,
        /// Where to write its client config (default: client-NAME.conf beside the config).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// List the clients: id, name and whether each is an operator.
    List,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DserverAction {
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

#[derive(Debug, Subcommand)]
pub(crate) enum Workload {
    /// Namespace throughput: create, stat, list, rename and remove, with C concurrent clients.
    Meta {
        /// Client counts to run, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
        clients: Vec<usize>,
        /// Files created per client count.
        #[arg(long, default_value_t = 2000)]
        files: usize,
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
        /// Output, and the limits to compare with (creates/s against appends/s).
        #[command(flatten)]
        out: Output,
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
        /// Leave the files in place afterwards.
        #[arg(long)]
        keep: bool,
        /// Output, and the limits to compare with (writes/s against appends/s).
        #[command(flatten)]
        out: Output,
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
        /// Output, and the limits to compare with (IOPS against the disk's own).
        #[command(flatten)]
        out: Output,
    },
    /// Random writes: WRITE bytes at random offsets of one file, each durable and visible
    /// before the next (lease, chain write, commit); writes/s per write size. The file's
    /// bytes are checked at the end.
    Randwrite {
        /// Size of the file written into (written first, removed afterwards).
        #[arg(long, default_value = "64MiB", value_parser = parse_size_arg)]
        size: u64,
        /// Bytes per write, comma-separated: one run each.
        #[arg(long, value_delimiter = ',', default_value = "4KiB,64KiB", value_parser = parse_size_arg)]
        write: Vec<u64>,
        /// Writes per run.
        #[arg(long, default_value_t = 200)]
        writes: usize,
        /// Copies of each block (default: the config's).
        #[arg(long, default_value_t = 0)]
        replication: u8,
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
pub(crate) struct SeqArgs {
    /// Bytes per file (e.g. 1GiB, 256MiB).
    #[arg(long, default_value = "1GiB", value_parser = parse_size_arg)]
    pub(crate) size: u64,
    /// Files at once, one client each.
    #[arg(long, default_value_t = 1)]
    pub(crate) files: usize,
    /// Copies of each block (default: the config's).
    #[arg(long, default_value_t = 0)]
    pub(crate) replication: u8,
    /// Leave the files in place afterwards.
    #[arg(long)]
    pub(crate) keep: bool,
    /// Output, and the limits to compare with (disk write + fsync, cold read).
    #[command(flatten)]
    pub(crate) out: Output,
}

/// The flags every measured workload shares: how to print, and whether to measure the
/// machine's limits beside the run.
#[derive(Debug, clap::Args)]
pub(crate) struct Output {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Measure the machine's limits first and give each result as a fraction of its limit.
    #[arg(long)]
    pub(crate) with_limits: bool,
}

pub(crate) fn parse_size_arg(text: &str) -> Result<u64, String> {
    meshfs_group::config::parse_size(text)
}

/// One phase of `bench meta` (or "" for none).
pub(crate) fn meta_phase(phase: &str) -> Result<String, String> {
    match phase {
        "" | "stat" | "list" | "rename" | "remove" => Ok(phase.to_string()),
        other => Err(format!("unknown phase {other:?}: expected stat, list, rename or remove")),
    }
}
