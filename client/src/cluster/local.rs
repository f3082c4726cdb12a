//! A throw-away local cluster for `meshfs bench --local`: the servers of a config, started
//! as processes on 127.0.0.1 with ports picked free and data directories in a fresh
//! temporary directory; stopped (by PID) and removed when dropped.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use meshfs_group::{ClientId, Config};

use crate::access::Access;
use crate::cluster::up::{ServerProcess, UpOptions, start_all, stop_all};
use crate::error::ClientError;
use crate::status::cluster_status;

/// How long the servers get to form their full mesh.
const MESH_TIMEOUT: Duration = Duration::from_secs(30);

/// A running throw-away cluster.
#[derive(Debug)]
pub struct LocalCluster {
    /// Its config (in the temporary directory).
    pub config: Config,
    /// How the benchmark's client reaches it.
    pub access: Access,
    dir: PathBuf,
    processes: Vec<ServerProcess>,
}

fn launch_error(reason: String) -> ClientError {
    ClientError::Launch { program: "meshfs bench --local".into(), reason }
}

/// The config at `source` with every server on a free loopback port and its data directory
/// under `dir`, the secret written in (the copy is private), and the `[heal]` keys of `heal`
/// set, as TOML text.
fn local_config(source: &Path, dir: &Path, heal: &[(&str, i64)]) -> Result<String, ClientError> {
    let (text, _) = meshfs_group::config::read_text(source)?;
    let loaded = Config::load(source)?;
    let mut doc: toml::Table =
        text.parse().map_err(|e| launch_error(format!("{} is not TOML: {e}", source.display())))?;
    if let Some(cluster) = doc.get_mut("cluster").and_then(toml::Value::as_table_mut) {
        cluster.remove("secret_file");
        let secret = String::from_utf8_lossy(&loaded.secret).into_owned();
        cluster.insert("secret".into(), secret.into());
    }
    if !heal.is_empty() {
        let table = doc.entry("heal").or_insert_with(|| toml::Table::new().into());
        if let Some(table) = table.as_table_mut() {
            for (key, value) in heal {
                table.insert((*key).into(), (*value).into());
            }
        }
    }
    // Hold every listener until all ports are chosen, so no two servers get the same one.
    let mut held = Vec::new();
    for role in ["mserver", "dserver"] {
        let Some(toml::Value::Array(servers)) = doc.get_mut(role) else { continue };
        for server in servers.iter_mut() {
            let Some(table) = server.as_table_mut() else { continue };
            let id = table.get("id").and_then(toml::Value::as_integer).unwrap_or(0);
            let listener = TcpListener::bind("127.0.0.1:0")
                .map_err(|e| launch_error(format!("no free port: {e}")))?;
            let port = listener
                .local_addr()
                .map_err(|e| launch_error(format!("no free port: {e}")))?
                .port();
            held.push(listener);
            table.insert("addr".into(), format!("127.0.0.1:{port}").into());
            let data = dir.join(format!("data/{role}-{id}"));
            table.insert("data_dir".into(), data.to_string_lossy().into_owned().into());
        }
    }
    drop(held);
    Ok(doc.to_string())
}

impl LocalCluster {
    /// Starts the servers of the config at `source` in a fresh temporary directory and
    /// waits for their full mesh. `report` is told what happens.
    pub fn start(
        source: &Path,
        client: Option<ClientId>,
        report: impl FnMut(&str),
    ) -> Result<LocalCluster, ClientError> {
        LocalCluster::start_with(source, client, &[], report)
    }

    /// [`LocalCluster::start`] with these `[heal]` settings in place of the config's.
    pub fn start_with(
        source: &Path,
        client: Option<ClientId>,
        heal: &[(&str, i64)],
        mut report: impl FnMut(&str),
    ) -> Result<LocalCluster, ClientError> {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let dir =
            std::env::temp_dir().join(format!("meshfs-local-{}-{millis}", std::process::id()));
        crate::cluster::private_dir(&dir)?;
        let path = dir.join("config.conf");
        let loaded = local_config(source, &dir, heal)
            .and_then(|text| crate::cluster::write_private(&path, &text))
            .and_then(|()| {
                let (config, settings) = meshfs_core::settings::load(&path)?;
                let access = Access::of_cluster(&config, &settings, client)?;
                Ok((config, access))
            });
        let (config, access) = match loaded {
            Ok(loaded) => loaded,
            Err(err) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(err);
            }
        };
        // From here on, dropping the cluster stops its servers and removes the directory.
        let mut cluster = LocalCluster { config, access, dir, processes: Vec::new() };
        report(&format!("starting a local cluster in {}", cluster.dir.display()));
        cluster.processes = start_all(&cluster.config, &UpOptions::default())?;
        let started = Instant::now();
        loop {
            let status = cluster_status(&cluster.access, Duration::from_millis(500));
            if status.fully_connected() && status.rtts_measured() {
                report(&format!(
                    "local cluster of {} servers up in {:.1} s",
                    cluster.processes.len(),
                    started.elapsed().as_secs_f64()
                ));
                return Ok(cluster);
            }
            if started.elapsed() > MESH_TIMEOUT {
                return Err(launch_error(format!(
                    "the local cluster did not connect in {} s; logs in {}",
                    MESH_TIMEOUT.as_secs(),
                    cluster.dir.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl LocalCluster {
    /// Kills server `id` with SIGKILL, by PID, as a crash would.
    pub fn kill9(&mut self, id: u32) -> Result<(), ClientError> {
        let process =
            self.processes.iter_mut().find(|p| p.id.0 == id).ok_or_else(|| {
                launch_error(format!("server {id} is not part of the local cluster"))
            })?;
        process.kill9().map_err(|e| launch_error(format!("cannot kill server {id}: {e}")))
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        stop_all(&mut self.processes, UpOptions::default().stop_timeout);
        let _ = fs::remove_dir_all(&self.dir);
    }
}
