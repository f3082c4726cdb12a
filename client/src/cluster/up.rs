//! `meshfs up`: start every server of a config as a child process, report when the group is
//! fully connected, and stop them all on Ctrl-C (SIGINT) or SIGTERM.
//!
//! Each server's log goes to `<data_dir>/<role>-<id>.log`. The server programs are looked
//! for next to the running `meshfs`, then on `PATH`.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use meshfs_group::{Config, NodeId, Role};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::access::Access;
use crate::error::ClientError;
use crate::status::cluster_status;

/// How `up` waits and reports.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// How long to wait for the full mesh before saying so.
    pub mesh_timeout: Duration,
    /// How long servers get to stop after SIGTERM before SIGKILL.
    pub stop_timeout: Duration,
    /// Directory holding `mserver` and `dserver`; default: next to this program, else `PATH`.
    pub bin_dir: Option<PathBuf>,
}

impl Default for UpOptions {
    fn default() -> UpOptions {
        UpOptions {
            mesh_timeout: Duration::from_secs(30),
            stop_timeout: Duration::from_secs(10),
            bin_dir: None,
        }
    }
}

/// One server process started by the launcher.
#[derive(Debug)]
pub struct ServerProcess {
    /// Its id.
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// Its log file.
    pub log: PathBuf,
    child: Child,
    exited: Option<ExitStatus>,
}

impl ServerProcess {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills it with SIGKILL (no chance to clean up, as a crash) and reaps it.
    pub fn kill9(&mut self) -> std::io::Result<()> {
        self.child.kill()?;
        self.exited = Some(self.child.wait()?);
        Ok(())
    }
}

/// Finds the program for `role`: in `bin_dir`, else next to the running executable, else on
/// `PATH` (by bare name).
pub fn server_program(role: Role, bin_dir: Option<&Path>) -> PathBuf {
    let name = role.name();
    if let Some(dir) = bin_dir {
        return dir.join(name);
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
        && dir.join(name).is_file()
    {
        return dir.join(name);
    }
    PathBuf::from(name)
}

/// Starts every server of the config; returns them in config order. On any failure the ones
/// already started are stopped.
pub fn start_all(config: &Config, options: &UpOptions) -> Result<Vec<ServerProcess>, ClientError> {
    let mut started: Vec<ServerProcess> = Vec::new();
    for server in &config.servers {
        let program = server_program(server.role, options.bin_dir.as_deref());
        let launch = |reason: String| ClientError::Launch { program: program.clone(), reason };
        let result = (|| {
            crate::cluster::private_dir(&server.data_dir)?;
            let log = server.data_dir.join(format!("{}-{}.log", server.role, server.id));
            let log_file = File::options()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&log)
                .map_err(|e| launch(format!("cannot open log {}: {e}", log.display())))?;
            let log_err = log_file.try_clone().map_err(|e| launch(e.to_string()))?;
            let mut command = Command::new(&program);
            command
                .arg("--config")
                .arg(&config.path)
                .arg("--id")
                .arg(server.id.to_string())
                .stdin(Stdio::null())
                .stdout(log_file)
                .stderr(log_err);
            if std::env::var_os("RUST_LOG").is_none() {
                command.env("RUST_LOG", "info");
            }
            let child = command.spawn().map_err(|e| {
                let hint = if e.kind() == std::io::ErrorKind::NotFound {
                    " (build it with `cargo build --release`, or put it on PATH)"
                } else {
                    ""
                };
                launch(format!("{e}{hint}"))
            })?;
            Ok(ServerProcess { id: server.id, role: server.role, log, child, exited: None })
        })();
        match result {
            Ok(process) => started.push(process),
            Err(err) => {
                stop_all(&mut started, options.stop_timeout);
                return Err(err);
            }
        }
    }
    Ok(started)
}

/// Checks for servers that exited; returns those that did since the last check.
pub fn reap(processes: &mut [ServerProcess]) -> Vec<(NodeId, Role, ExitStatus)> {
    let mut gone = Vec::new();
    for p in processes.iter_mut().filter(|p| p.exited.is_none()) {
        if let Ok(Some(status)) = p.child.try_wait() {
            p.exited = Some(status);
            gone.push((p.id, p.role, status));
        }
    }
    gone
}

/// Sends SIGTERM to every running server, waits up to `timeout`, then SIGKILLs the rest.
/// Returns how many stopped on SIGTERM.
pub fn stop_all(processes: &mut [ServerProcess], timeout: Duration) -> usize {
    for p in processes.iter().filter(|p| p.exited.is_none()) {
        let pid = Pid::from_raw(i32::try_from(p.pid()).unwrap_or(i32::MAX));
        // The process may have died since reap; ESRCH is fine.
        let _ = kill(pid, Signal::SIGTERM);
    }
    let deadline = Instant::now() + timeout;
    let mut gracefully = 0;
    for p in processes.iter_mut().filter(|p| p.exited.is_none()) {
        loop {
            match p.child.try_wait() {
                Ok(Some(status)) => {
                    p.exited = Some(status);
                    gracefully += 1;
                    break;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = p.child.kill();
                    p.exited = p.child.wait().ok();
                    break;
                }
            }
        }
    }
    gracefully
}

/// The last `lines` lines of a log, for reporting a server that died.
pub fn log_tail(path: &Path, lines: usize) -> Vec<String> {
    let Ok(file) = File::open(path) else { return Vec::new() };
    let all: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
    all[all.len().saturating_sub(lines)..].to_vec()
}

/// Runs `meshfs up` to completion: start, report the mesh, wait for a signal, stop.
/// Returns the process exit code.
pub fn up(config: &Config, access: &Access, options: &UpOptions) -> Result<i32, ClientError> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).map_err(|e| {
            ClientError::Launch { program: "signal handler".into(), reason: e.to_string() }
        })?;
    }
    println!("meshfs up: cluster {:?} from {}", config.cluster_name, config.path.display());
    let mut processes = start_all(config, options)?;
    for p in &processes {
        println!("  started {} {} (pid {}), log {}", p.role, p.id, p.pid(), p.log.display());
    }

    let started = Instant::now();
    let mut reported = false;
    let mut code = 0;
    while !stop.load(Ordering::Relaxed) {
        for (id, role, status) in reap(&mut processes) {
            eprintln!("{role} {id} exited: {status}");
            let log =
                processes.iter().find(|p| p.id == id).map(|p| p.log.clone()).unwrap_or_default();
            for line in log_tail(&log, 10) {
                eprintln!("  | {line}");
            }
            if !reported {
                // A server that dies while the cluster comes up will not come back: give up.
                eprintln!("stopping the cluster: a server failed during start-up");
                stop_all(&mut processes, options.stop_timeout);
                return Ok(1);
            }
            code = 1;
        }
        if !reported {
            let status = cluster_status(access, Duration::from_millis(500));
            if status.fully_connected() && status.rtts_measured() {
                print!("{}", status.render());
                println!(
                    "all {} servers up, full mesh in {:.1}s. Press Ctrl-C to stop.",
                    processes.len(),
                    started.elapsed().as_secs_f64()
                );
                reported = true;
            } else if started.elapsed() > options.mesh_timeout {
                print!("{}", status.render());
                eprintln!(
                    "the group is not fully connected after {}s; servers keep trying (see their logs). Ctrl-C stops them.",
                    options.mesh_timeout.as_secs()
                );
                reported = true;
                code = 1;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("stopping {} servers...", processes.iter().filter(|p| p.exited.is_none()).count());
    let graceful = stop_all(&mut processes, options.stop_timeout);
    println!("stopped ({graceful} cleanly).");
    Ok(code)
}
