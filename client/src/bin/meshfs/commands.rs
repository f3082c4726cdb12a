//! Every command but `bench`: the namespace, files, locks, fsck, drain, status and `up`,
//! each a call of the library and its output.

use std::time::Duration;

use std::path::{Path, PathBuf};

use meshfs_client::access::is_client_config;
use meshfs_client::cluster::clients;
use meshfs_client::cluster::up::{self, UpOptions};
use meshfs_client::data::DataClient;
use meshfs_client::status::cluster_status;
use meshfs_client::{Access, ClientError, MetaClient};
use meshfs_group::{ClientId, Config};

use crate::args::{ClientAction, Command, DserverAction};
use crate::render::{TermProgress, fsck_json, fsck_text, locks_json, locks_text, print_stat};

/// Runs an operator command (`up`, `bench`, `client`), which needs the cluster config at
/// `path`; acting as client `client` where it acts as one. The exit status.
pub(crate) fn run_operator(
    path: &Path,
    client: Option<ClientId>,
    command: Command,
) -> Result<u8, ClientError> {
    // `up` and a local bench start servers of this config: a fresh clone has no secret yet.
    let starts_servers = matches!(command, Command::Up { .. } | Command::Bench { local: true, .. });
    if starts_servers && let Some(made) = clients::ensure_secret(path)? {
        let line =
            format!("meshfs: made the cluster secret {} (private; keep it so)", made.display());
        // Bench output may be JSON on stdout: its notes go to stderr.
        if let Command::Up { .. } = command { println!("{line}") } else { eprintln!("{line}") }
    }
    if std::fs::read_to_string(path).is_ok_and(|text| is_client_config(&text)) {
        eprintln!(
            "meshfs: {} is a client config; `up`, `bench` and `client` need the cluster config",
            path.display()
        );
        return Ok(2);
    }
    let (config, settings) = meshfs_core::settings::load(path)?;
    match command {
        Command::Up { timeout } => {
            let access = Access::of_cluster(&config, &settings, client)?;
            let out = config.base_dir().join("client.conf");
            clients::write_client_config(&config, access.credentials.id, &out)?;
            println!(
                "meshfs up: client config for client {} in {} (use it: meshfs --config {} ls /)",
                access.credentials.id,
                out.display(),
                out.display()
            );
            let options =
                UpOptions { mesh_timeout: Duration::from_secs(timeout), ..UpOptions::default() };
            let code = up::up(&config, &access, &options)?;
            Ok(u8::try_from(code).unwrap_or(1))
        }
        Command::Bench { local, workload } => {
            let access = Access::of_cluster(&config, &settings, client)?;
            crate::bench::run(&config, &access, local, workload)
        }
        Command::Client { action } => client_command(path, &config, action),
        other => run(&Access::of_cluster(&config, &settings, client)?, other),
    }
}

fn client_command(path: &Path, config: &Config, action: ClientAction) -> Result<u8, ClientError> {
    match action {
        ClientAction::Add { name, admin, uid, gids, trusted, out } => {
            let who = clients::Who { admin, uid, gids, trusted };
            let (id, out) = clients::add(path, &name, &who, out)?;
            println!("added client {name:?} (id {id}); its client config is {}", out.display());
            println!("give that file to whoever runs the client; it is their key");
        }
        ClientAction::Remove { name } => {
            let id = clients::remove(path, &name)?;
            println!("removed client {name:?} (id {id}): servers refuse it within a few seconds");
        }
        ClientAction::Rotate { name, out } => {
            let out = clients::rotate(path, &name, out)?;
            println!(
                "client {name:?} has a new key in {}; its old key stops working within a few seconds",
                out.display()
            );
        }
        ClientAction::List => {
            for c in config.clients.values() {
                let admin = if c.admin { " (admin)" } else { "" };
                let trusted = if c.trusted { " (trusted)" } else { "" };
                println!("{:>6} {}{admin}{trusted}  uid {} gids {:?}", c.id, c.name, c.uid, c.gids);
            }
        }
    }
    Ok(0)
}

/// Mode bits written in octal (at most 7777), or the usage error's exit status (said).
fn octal_mode(command: &str, text: &str) -> Result<u16, u8> {
    match u16::from_str_radix(text, 8) {
        Ok(bits) if bits <= 0o7777 => Ok(bits),
        _ => {
            eprintln!("meshfs {command}: {text:?} is not an octal mode (e.g. 640, 1777)");
            Err(2)
        }
    }
}

/// Runs `command` against the cluster `access` reaches. The exit status.
pub(crate) fn run(access: &Access, command: Command) -> Result<u8, ClientError> {
    match command {
        Command::Up { .. } | Command::Bench { .. } | Command::Client { .. } => {
            eprintln!("meshfs: this command needs the cluster config (--config config.conf)");
            Ok(2)
        }
        Command::Mkdir { parents, mode, path } => {
            let mut meta = MetaClient::new(access)?;
            match mode.as_deref().map(|m| octal_mode("mkdir", m)) {
                None => meta.mkdir(&path, parents)?,
                Some(Ok(bits)) => meta.mkdir_mode(&path, parents, bits)?,
                Some(Err(status)) => return Ok(status),
            }
            Ok(0)
        }
        Command::Create { replication, mode, path } => {
            let mut meta = MetaClient::new(access)?;
            let fd = match mode.as_deref().map(|m| octal_mode("create", m)) {
                None => meta.create(&path, replication)?,
                Some(Ok(bits)) => meta.create_mode(&path, replication, bits)?,
                Some(Err(status)) => return Ok(status),
            };
            println!("created {path}: file {} version {}", fd.id.0, fd.version);
            Ok(0)
        }
        Command::Ls { long, path } => {
            for entry in MetaClient::new(access)?.list(&path)? {
                if long {
                    let kind = if entry.is_dir { 'd' } else { '-' };
                    let mode = meshfs_core::namespace::access::mode_text(entry.owner.mode);
                    let (uid, gid) = (entry.owner.uid, entry.owner.gid);
                    println!(
                        "{kind}{mode} {uid:>6} {gid:>6} {:>10} {:>14} {}",
                        entry.id, entry.size, entry.name
                    );
                } else if entry.is_dir {
                    println!("{}/", entry.name);
                } else {
                    println!("{}", entry.name);
                }
            }
            Ok(0)
        }
        Command::Stat { path } => {
            let stat = MetaClient::new(access)?.stat(&path)?;
            print_stat(&path, &stat);
            Ok(0)
        }
        Command::Mount {
            foreground,
            entry_timeout_ms,
            attr_timeout_ms,
            threads,
            log,
            mountpoint,
        } => {
            if !foreground {
                return mount_in_background(&mountpoint, log);
            }
            let options = meshfs_client::mount::MountOptions {
                entry_timeout: Duration::from_millis(entry_timeout_ms),
                attr_timeout: Duration::from_millis(attr_timeout_ms),
                threads,
            };
            meshfs_client::mount::serve(access, &mountpoint, options)?;
            Ok(0)
        }
        Command::Umount { mountpoint } => {
            meshfs_client::mount::unmount(&mountpoint)?;
            Ok(0)
        }
        Command::Mv { force, from, to } => {
            let mut meta = MetaClient::new(access)?;
            if force {
                meta.rename_over(&from, &to)?
            } else {
                meta.rename(&from, &to)?
            }
            Ok(0)
        }
        Command::Ln { from, to } => {
            MetaClient::new(access)?.link(&from, &to)?;
            Ok(0)
        }
        Command::Chmod { mode, path } => {
            let bits = match octal_mode("chmod", &mode) {
                Ok(bits) => bits,
                Err(status) => return Ok(status),
            };
            MetaClient::new(access)?.chmod(&path, bits)?;
            Ok(0)
        }
        Command::Chown { owner, path } => {
            let mut meta = MetaClient::new(access)?;
            let (uid, gid) = owner.split_once(':').unwrap_or((owner.as_str(), ""));
            let Some(entry) = meta
                .list(&parent_of(&path))?
                .into_iter()
                .find(|e| Some(e.name.as_str()) == path.rsplit('/').next())
            else {
                eprintln!("meshfs chown: {path}: no such file or directory");
                return Ok(1);
            };
            let parse = |text: &str, current: u32| {
                if text.is_empty() { Some(current) } else { text.parse::<u32>().ok() }
            };
            let (Some(uid), Some(gid)) = (parse(uid, entry.owner.uid), parse(gid, entry.owner.gid))
            else {
                eprintln!("meshfs chown: {owner:?}: expected UID:GID, UID or :GID (numbers)");
                return Ok(2);
            };
            meta.chown(&path, uid, gid)?;
            Ok(0)
        }
        Command::Rm { recursive, path } => {
            MetaClient::new(access)?.remove(&path, recursive)?;
            Ok(0)
        }
        Command::Put { replication, force, local, remote } => {
            let (mut input, size) = open_input(&local)?;
            let mut meta = MetaClient::new(access)?;
            let mut data = DataClient::new(access);
            let mut progress = TermProgress::new();
            let put =
                if force { meshfs_client::data::put_replacing } else { meshfs_client::data::put };
            let n = match put(
                &mut meta,
                &mut data,
                &mut input,
                &remote,
                replication,
                size,
                &mut progress,
            ) {
                Ok(n) => n,
                Err(ClientError::Namespace(meshfs_core::error::NsError::AlreadyExists(path))) => {
                    eprintln!("meshfs: {path}: already exists (meshfs put --force replaces it)");
                    return Ok(1);
                }
                Err(err) => return Err(err),
            };
            progress.summary(&format!("put {local} -> {remote}"), n);
            Ok(0)
        }
        Command::Get { remote, local } => {
            let mut output = open_output(&local)?;
            let mut meta = MetaClient::new(access)?;
            let mut data = DataClient::new(access);
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
            let mut meta = MetaClient::new(access)?;
            let mut data = DataClient::new(access);
            meshfs_client::data::get(&mut meta, &mut data, &remote, &mut output, &mut ())?;
            Ok(0)
        }
        Command::Fsck { path, json } => {
            let report = MetaClient::new(access)?.fsck(&path)?;
            if json {
                println!("{}", fsck_json(&path, &report));
            } else {
                print!("{}", fsck_text(&path, &report));
            }
            Ok(u8::from(report.health.missing > 0))
        }
        Command::Lock { shared, timeout, path, command } => {
            lock_and_run(access, shared, timeout, &path, &command)
        }
        Command::Locks { path, json } => {
            let mut meta = MetaClient::new(access)?;
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
            MetaClient::new(access)?.drain(id, draining)?;
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
            let status = cluster_status(access, Duration::from_millis(timeout_ms));
            if json {
                println!("{}", status.to_json());
            } else {
                print!("{}", status.render());
            }
            Ok(if status.servers_up() == status.servers.len() { 0 } else { 1 })
        }
    }
}

/// Exit status of `meshfs lock` when the lock was not had in time (EX_TEMPFAIL, as flock).
pub(crate) const EXIT_LOCK_TIMEOUT: u8 = 75;

/// `meshfs lock`: the lock, the command under it, the release.
fn lock_and_run(
    access: &Access,
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
    let session = Session::open(access)?;
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

/// The directory `path` is in (`/` for a top-level name).
fn parent_of(path: &str) -> String {
    match path.trim_end_matches('/').rsplit_once('/') {
        Some(("", _)) | None => "/".to_string(),
        Some((parent, _)) => parent.to_string(),
    }
}

/// `meshfs mount` without `--foreground`: the same command again with it, in a process of
/// its own (its own process group: a Ctrl-C here does not reach it) logging to a file;
/// returns once the mount is there, or with the log's words if the process gave up.
fn mount_in_background(
    mountpoint: &std::path::Path,
    log: Option<PathBuf>,
) -> Result<u8, ClientError> {
    use std::os::unix::process::CommandExt;
    let local = |what: String| move |source| ClientError::Local { what, source };
    if meshfs_client::mount::is_mounted(mountpoint) {
        eprintln!("meshfs: {} is a MeshFS mount already", mountpoint.display());
        return Ok(1);
    }
    let log = log.unwrap_or_else(|| {
        let name: String = mountpoint
            .to_string_lossy()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        std::env::temp_dir().join(format!("meshfs-mount{name}.log"))
    });
    let file = std::fs::File::create(&log).map_err(local(format!("log {}", log.display())))?;
    let exe = std::env::current_exe().map_err(local("finding the meshfs program".into()))?;
    let mut child = std::process::Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .arg("--foreground")
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .stdin(std::process::Stdio::null())
        .stdout(file.try_clone().map_err(local(format!("log {}", log.display())))?)
        .stderr(file)
        .process_group(0)
        .spawn()
        .map_err(local(format!("starting {}", exe.display())))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if meshfs_client::mount::is_mounted(mountpoint) {
            println!(
                "mounted at {} (process {}, log {}); `meshfs umount {}` unmounts it",
                mountpoint.display(),
                child.id(),
                log.display(),
                mountpoint.display()
            );
            return Ok(0);
        }
        let exited = child.try_wait().map_err(local("watching the mount process".into()))?;
        if exited.is_some() || std::time::Instant::now() > deadline {
            if exited.is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            eprintln!("meshfs: mounting at {} failed:\n{}", mountpoint.display(), said.trim_end());
            return Ok(2);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
