//! A test cluster of real `mserver`/`dserver` processes on free loopback ports.
//!
//! Each cluster lives in its own temporary directory (config, data, logs). Dropping it kills
//! every process it started, by PID, and removes the directory unless the test failed (then
//! the logs stay and their path is printed).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use meshfs_client::Access;
use meshfs_client::status::{ClusterStatus, cluster_status};
use meshfs_group::{Config, NodeId};

pub use meshfs_test_kit::DEADLINE;
pub const PING_INTERVAL_MS: u64 = 100;
pub const DOWN_TIMEOUT_MS: u64 = 1000;
pub const SECRET: &str = "integration-test-secret-0123456789";
pub const CLIENT_KEY: &str = "integration-test-client-key-0123";

/// Where cargo put the binaries: next to `meshfs`.
pub fn bin_dir() -> PathBuf {
    let meshfs = PathBuf::from(env!("CARGO_BIN_EXE_meshfs"));
    let dir = meshfs.parent().expect("binary has a directory").to_path_buf();
    for name in ["mserver", "dserver"] {
        assert!(
            dir.join(name).is_file(),
            "{} is missing: run the tests with `cargo test --workspace` so every binary is built",
            dir.join(name).display()
        );
    }
    dir
}

/// Config text for `m` meta-servers and `d` data-servers on free ports, with extra
/// `[cluster]` lines.
pub fn config_text_with(m: u32, d: u32, secret: &str, cluster_extra: &str) -> String {
    config_text_at(m, d, secret, cluster_extra, |_| std::net::Ipv4Addr::LOCALHOST)
}

/// [`config_text_with`] with server `id` at address `ip(id)` (each on a port free there).
pub fn config_text_at(
    m: u32,
    d: u32,
    secret: &str,
    cluster_extra: &str,
    ip: impl Fn(u32) -> std::net::Ipv4Addr,
) -> String {
    let mut text = format!(
        "[cluster]\nname = \"it\"\nsecret = \"{secret}\"\nreplication = 1\nblock_size = \"1MiB\"\n\
         ping_interval_ms = {PING_INTERVAL_MS}\ndown_timeout_ms = {DOWN_TIMEOUT_MS}\n\
         reconnect_min_ms = 50\nreconnect_max_ms = 500\n{cluster_extra}\n"
    );
    // Held until all are chosen, so no port is handed out twice.
    let held: Vec<std::net::TcpListener> = (1..=m + d)
        .map(|id| std::net::TcpListener::bind((ip(id), 0)).expect("a free port"))
        .collect();
    for id in 1..=m + d {
        let role = if id <= m { "mserver" } else { "dserver" };
        let addr = held[(id - 1) as usize].local_addr().expect("bound");
        text +=
            &format!("[[{role}]]\nid = {id}\naddr = \"{addr}\"\ndata_dir = \"data/{role}-{id}\"\n");
        if role == "dserver" {
            text += "capacity = \"1GiB\"\n";
        }
        text += "\n";
    }
    text += &format!("[[client]]\nid = 1\nname = \"test\"\nkey = \"{CLIENT_KEY}\"\nadmin = true\n");
    text
}

/// Spread clusters made by this process so far: each gets addresses of its own, since a
/// partition cuts every link between its addresses, whatever cluster they belong to.
static SPREAD: AtomicU32 = AtomicU32::new(0);

/// The address of server `id` of spread cluster `n` of this process: 127.P.N.(10 + id),
/// with P from the process id (another test process, a `scripts/faults` run beside
/// `cargo test`, has its own) and N counting this process's clusters.
fn spread_ip(n: u32, id: u32) -> std::net::Ipv4Addr {
    let p = (std::process::id() % 200 + 20) as u8;
    std::net::Ipv4Addr::new(127, p, (n % 250) as u8, 10 + id as u8)
}

pub struct TestCluster {
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub config: Config,
    pub access: Access,
    pub procs: BTreeMap<u32, Child>,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The cluster config at `path` and the access of its first client.
pub fn load(path: &Path) -> (Config, Access) {
    let (config, settings) = meshfs_core::settings::load(path).unwrap();
    let access = Access::of_cluster(&config, &settings, None).unwrap();
    (config, access)
}

impl TestCluster {
    /// Writes a config for `m` + `d` servers in a fresh directory; starts nothing.
    pub fn new(name: &str, m: u32, d: u32) -> TestCluster {
        TestCluster::new_with(name, m, d, "")
    }

    /// [`TestCluster::new`] with every server at an address of its own (see
    /// [`TestCluster::ip`]), so links can be cut one by one ([`meshfs_test_kit::partition`]).
    pub fn new_spread(name: &str, m: u32, d: u32) -> TestCluster {
        let n = SPREAD.fetch_add(1, Ordering::Relaxed);
        let text = config_text_at(m, d, SECRET, "", |id| spread_ip(n, id));
        TestCluster::with_text(name, &text)
    }

    /// The address server `id` is configured at.
    pub fn ip(&self, id: u32) -> std::net::Ipv4Addr {
        match self.config.server(NodeId(id)).map(|s| s.addr.ip()) {
            Some(std::net::IpAddr::V4(ip)) => ip,
            other => panic!("server {id} has no IPv4 address: {other:?}"),
        }
    }

    /// [`TestCluster::new`] with extra `[cluster]` lines in the config.
    pub fn new_with(name: &str, m: u32, d: u32, cluster_extra: &str) -> TestCluster {
        TestCluster::with_text(name, &config_text_with(m, d, SECRET, cluster_extra))
    }

    fn with_text(name: &str, text: &str) -> TestCluster {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("meshfs-it-{}-{n}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let config_path = dir.join("config.conf");
        meshfs_test_kit::write_private(&config_path, text);
        let (config, access) = load(&config_path);
        TestCluster { dir, config_path, config, access, procs: BTreeMap::new() }
    }

    /// Sets the config's block size (before any server starts).
    pub fn set_block_size(&mut self, size: &str) {
        let text = fs::read_to_string(&self.config_path).unwrap();
        let text = text.replacen("block_size = \"1MiB\"", &format!("block_size = \"{size}\""), 1);
        meshfs_test_kit::write_private(&self.config_path, &text);
        (self.config, self.access) = load(&self.config_path);
    }

    /// Sets the config's replication (before any server starts).
    pub fn set_replication(&mut self, copies: u8) {
        let text = fs::read_to_string(&self.config_path).unwrap();
        let text = text.replacen("replication = 1\n", &format!("replication = {copies}\n"), 1);
        meshfs_test_kit::write_private(&self.config_path, &text);
        (self.config, self.access) = load(&self.config_path);
    }

    pub fn ids(&self) -> Vec<u32> {
        self.config.servers.iter().map(|s| s.id.0).collect()
    }

    /// Starts every server.
    pub fn start_all(&mut self) {
        for id in self.ids() {
            self.start(id);
        }
    }

    /// Starts server `id` with the cluster's config.
    pub fn start(&mut self, id: u32) {
        let config = self.config_path.clone();
        self.start_with(id, &config);
    }

    /// Starts server `id` with the config at `config` (which may differ from the cluster's).
    pub fn start_with(&mut self, id: u32, config: &Path) {
        assert!(!self.procs.contains_key(&id), "server {id} already running");
        let role = self.config.server(NodeId(id)).unwrap().role;
        let log = fs::File::options().create(true).append(true).open(self.log_path(id)).unwrap();
        let child = Command::new(bin_dir().join(role.name()))
            .arg("--config")
            .arg(config)
            .arg("--id")
            .arg(id.to_string())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.procs.insert(id, child);
    }

    /// kill -9, by PID, and reap.
    pub fn kill9(&mut self, id: u32) {
        let mut child = self.procs.remove(&id).expect("server running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Server `id`'s process id.
    pub fn pid(&self, id: u32) -> u32 {
        self.procs[&id].id()
    }

    /// Whether server `id`'s process is still alive.
    pub fn alive(&mut self, id: u32) -> bool {
        matches!(self.procs.get_mut(&id).map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn log_path(&self, id: u32) -> PathBuf {
        self.dir.join(format!("server-{id}.log"))
    }

    pub fn log(&self, id: u32) -> String {
        fs::read_to_string(self.log_path(id)).unwrap_or_default()
    }

    pub fn status(&self) -> ClusterStatus {
        cluster_status(&self.access, Duration::from_millis(1000))
    }

    /// Polls the cluster's status until `done` holds; panics with the last status at the
    /// deadline.
    pub fn wait_for(
        &self,
        what: &str,
        mut done: impl FnMut(&ClusterStatus) -> bool,
    ) -> ClusterStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let status = self.status();
            if done(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last status:\n{}",
                status.render()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every running server sees every other one up with an RTT.
    pub fn wait_full_mesh(&self) -> ClusterStatus {
        self.wait_for("the full mesh", |s| s.fully_connected() && s.rtts_measured())
    }

    /// Polls `done` on the log of server `id`.
    pub fn wait_log(&self, id: u32, what: &str) {
        meshfs_test_kit::wait::wait_until_explained(
            &format!("server {id} to log {what:?}"),
            DEADLINE,
            || self.log(id).contains(what),
            || format!("its log:\n{}", self.log(id)),
        );
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for (_, mut child) in std::mem::take(&mut self.procs) {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("test cluster kept for inspection: {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// `meshfs up --config CONFIG`, its standard output's lines on a channel: read on a thread,
/// so a silent launcher cannot hang the test.
pub fn spawn_up(config: &Path) -> (Child, std::sync::mpsc::Receiver<String>) {
    use std::io::{BufRead, BufReader};
    let mut up = Command::new(env!("CARGO_BIN_EXE_meshfs"))
        .arg("up")
        .arg("--config")
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = up.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (up, rx)
}
