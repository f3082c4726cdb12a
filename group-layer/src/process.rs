//! Starting a server: its command line and logging (a process), the cluster config, its
//! locked data directory, and its node, bound to the configured address (a process) or on a
//! listener its owner bound (in-process, as tests run servers). What the server does once
//! running is the [`Service`](crate::driver::Service) it runs on that node.
//!
//! It must not know what the server does once running.

use std::fs::{self, File};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError, NodeId, Role, ServerConfig};
use crate::driver::{Node, NodeError, Stop};
use crate::rng::os_seed;

/// Why a server process could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config is unreadable or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The id is in the config, but as another role.
    #[error("node {id} is a {actual} in {path}; start it with `{actual} --id {id}`")]
    WrongRole {
        /// The id.
        id: NodeId,
        /// Its role in the config.
        actual: Role,
        /// The config file.
        path: PathBuf,
    },
    /// The data directory could not be created or locked.
    #[error("data directory {path}: {reason}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The node could not start.
    #[error(transparent)]
    Node(#[from] NodeError),
}

/// A server's data directory, locked for the life of the process so that two processes never
/// serve one server's data.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    /// Holds the advisory lock on `LOCK`; released when dropped (or when the process dies).
    _lock: File,
}

impl DataDir {
    /// Creates `path` if needed and locks it.
    pub fn open(path: &Path) -> Result<DataDir, StartError> {
        let fail = |reason: String| StartError::DataDir { path: path.to_path_buf(), reason };
        fs::create_dir_all(path).map_err(|e| fail(format!("cannot create: {e}")))?;
        // Its Raft log, snapshots and blocks are the cluster's data: the owner's only.
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))
            .map_err(|e| fail(format!("cannot make it private (chmod 700): {e}")))?;
        let lock_path = path.join("LOCK");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| fail(format!("cannot open {}: {e}", lock_path.display())))?;
        match lock.try_lock() {
            Ok(()) => Ok(DataDir { path: path.to_path_buf(), _lock: lock }),
            Err(fs::TryLockError::WouldBlock) => {
                Err(fail("in use by another running server (LOCK is held)".to_string()))
            }
            Err(fs::TryLockError::Error(e)) => Err(fail(format!("cannot lock: {e}"))),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// What a server process needs before its loop starts, from its checked config: its locked
/// data directory, and its node bound to the configured address.
pub fn start_server(
    role: Role,
    config: &Config,
    id: NodeId,
) -> Result<(DataDir, Node), StartError> {
    let server = server_of(config, role, id)?;
    let data_dir = DataDir::open(&server.data_dir)?;
    let listener = std::net::TcpListener::bind(server.addr)
        .map_err(|source| NodeError::Listen { addr: server.addr, source })?;
    let seed = os_seed().map_err(NodeError::Entropy)?;
    let mut node = Node::on_listener(config, id, listener, seed, &Stop::new())?;
    node.watch_signals()?;
    Ok((data_dir, node))
}

/// Server `id` of `config`, as a `role`, on a listener its owner bound, seeded from the OS
/// and stopped by `stop`: a server run inside another program (a test), with its data
/// directory locked as a process would.
pub fn start_in_process(
    role: Role,
    config: &Config,
    id: NodeId,
    listener: std::net::TcpListener,
    stop: &Stop,
) -> Result<(DataDir, Node), StartError> {
    let data_dir = DataDir::open(&server_of(config, role, id)?.data_dir)?;
    let seed = os_seed().map_err(NodeError::Entropy)?;
    let node = Node::on_listener(config, id, listener, seed, stop)?;
    Ok((data_dir, node))
}

/// Server `id` of `config`, which must have `role`.
fn server_of(config: &Config, role: Role, id: NodeId) -> Result<&ServerConfig, StartError> {
    let Some(server) = config.server(id) else {
        let ids: Vec<String> = config.servers_of(role).map(|s| s.id.to_string()).collect();
        return Err(NodeError::NotInConfig(id, format!("{}s: {}", role, ids.join(", "))).into());
    };
    if server.role != role {
        return Err(StartError::WrongRole { id, actual: server.role, path: config.path.clone() });
    }
    Ok(server)
}

/// The command line both server programs take.
#[cfg(feature = "server-main")]
#[derive(Debug, clap::Parser)]
#[command(version)]
struct ServerArgs {
    /// The cluster config (default: $MESHFS_CONFIG, else ./config.conf).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// This server's id in the config.
    #[arg(long, value_name = "N")]
    id: u32,
}

/// The `main` of a server program (`mserver`, `dserver`): parses `--config FILE --id N`,
/// sets up logging (`RUST_LOG`, default info), and runs `run` until it returns; an error is
/// logged, printed and turned into a failing exit status.
#[cfg(feature = "server-main")]
pub fn server_main<E: std::fmt::Display>(
    role: Role,
    about: &'static str,
    run: impl FnOnce(&Path, NodeId) -> Result<(), E>,
) -> std::process::ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let matches = ServerArgs::command().name(role.name()).about(about).get_matches();
    let args = ServerArgs::from_arg_matches(&matches).unwrap_or_else(|err| err.exit());
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let config = crate::config::resolve_path(args.config);
    match run(&config, NodeId(args.id)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            log::error!("{role} {}: {err}", args.id);
            eprintln!("{role}: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
