//! `config.conf`: the one TOML file that describes a cluster.
//!
//! ```toml
//! [cluster]
//! name = "meshfs-local"          # peers with another name are refused
//! secret_file = "cluster.secret" # the cluster secret, in a private file (0600) of its own;
//!                                # or `secret = "..."` here, and then this file must be private
//!                                # at least 16 bytes; proves membership, never sent
//! block_size = "64MiB"           # bytes, or a string with KiB/MiB/GiB/TiB
//! replication = 2                # copies of each block, at most the number of dservers
//! ping_interval_ms = 250
//! down_timeout_ms = 2000         # a peer silent this long is down (= missed pongs x interval)
//! max_connections = 4096         # accepted connections open at once (dialed ones apart)
//! reconnect_min_ms = 100         # first reconnect delay; doubles per failure, with jitter,
//! reconnect_max_ms = 5000        # up to this cap
//! snapshot_entries = 10000       # meta-servers compact their Raft log after this many entries
//!
//! [heal]                         # self-healing; every key optional (defaults shown)
//! grace_secs = 300               # a data-server down this long has its blocks re-replicated
//! repair_mbps = 100              # repair copy traffic into one data-server, MB/s
//! repair_streams = 2             # copies a data-server takes part in at once
//! scrub_mbps = 8                 # each data-server re-reads its replicas at this rate; 0: off
//! scrub_interval_secs = 604800   # a full scrub pass starts at most this often (a week)
//! orphan_delay_secs = 300        # replicas of deleted blocks are removed after this long
//! balance_margin_percent = 10    # rebalance when used fractions differ by more than this
//!
//! [locks]                        # lock sessions; every key optional (defaults shown)
//! session_lease_ms = 12000       # a session not kept alive this long expires
//! lock_delay_ms = 5000           # a lock whose holder's session expired waits this long
//!
//! [[mserver]]                    # one per meta-server
//! id = 1
//! addr = "127.0.0.1:7101"
//! data_dir = "data/mserver-1"    # relative to this file's directory
//!
//! [[dserver]]                    # one per data-server
//! id = 4
//! addr = "127.0.0.1:7201"
//! data_dir = "data/dserver-4"
//! capacity = "20GiB"
//!
//! [[client]]                     # who may use the cluster (`meshfs client add` writes these)
//! id = 1
//! name = "admin"
//! salt = "..."                   # its key is derived from the secret, its id and this salt
//! admin = true                   # an operator (drain, fsck, any file); default false
//! uid = 1001                     # the user it acts as (default: its id)
//! gids = [1001, 50]              # its groups, the first its primary (default: [uid])
//! trusted = true                 # may act for the users of its host (a mount); default false
//! ```
//!
//! A client's key is never stored on a server: it is HMAC-SHA256 of the secret over the
//! client's id and salt ([`crate::auth::client_key`]), computed when the config is read; a new
//! salt rotates it. The old form, `key = "..."` in the entry, is still read (and then this
//! file holds keys and must be private).
//!
//! Every error names the field and says why; unknown keys are errors (a typo must not be
//! silently ignored). Relative paths are relative to the config file's own directory, so a
//! copy of the file in another directory describes a separate cluster.
//!
//! It owns membership only: the settings of blocks, healing and locks belong to
//! `meshfs_core::settings`, which reads the tables and keys this module hands on.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Shortest cluster secret or client key accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;
/// Most servers in one config: the full mesh is O(n^2) connections.
pub const MAX_SERVERS: usize = 64;

/// A server's id, unique across meta- and data-servers of one cluster. Never 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A client's id, from a `[[client]]` entry. Never 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub u32);

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What a server is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A meta-server: keeps the namespace.
    MServer,
    /// A data-server: keeps blocks.
    DServer,
}

impl Role {
    /// The name used in config.conf, logs and status output.
    pub fn name(self) -> &'static str {
        match self {
            Role::MServer => "mserver",
            Role::DServer => "dserver",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a config could not be used. Displayed, it names the file, the field and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has keys of the wrong type or unknown keys.
    #[error("config {path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A file holding the secret or a key may be read or written by others.
    #[error(
        "{path} holds {what} and others may read or change it (mode {mode:o}): run `chmod 600 {path}`"
    )]
    NotPrivate {
        /// The file.
        path: PathBuf,
        /// What it holds.
        what: String,
        /// Its permission bits.
        mode: u32,
    },
    /// A field has a value that cannot work.
    #[error("config {path}: {field}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The field, as a TOML path (`mserver[2].addr`).
        field: String,
        /// Why it is wrong.
        reason: String,
    },
}

/// One server of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Its id.
    pub id: NodeId,
    /// Meta- or data-server.
    pub role: Role,
    /// Where it listens for peers and clients.
    pub addr: SocketAddr,
    /// Its data directory, absolute.
    pub data_dir: PathBuf,
    /// Bytes it may store (data-servers only).
    pub capacity: Option<u64>,
}

/// One client allowed to use the cluster.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Its id.
    pub id: ClientId,
    /// A human name for logs.
    pub name: String,
    /// The key it proves it knows.
    pub key: Vec<u8>,
    /// An operator: may drain data-servers and check the whole namespace (`admin = true`).
    pub admin: bool,
    /// The user it acts as: owner of what it makes, checked against modes (default: its id).
    pub uid: u32,
    /// Its groups, the first its primary (default: `[uid]`; at most 16).
    pub gids: Vec<u32>,
    /// It may act for other users by naming them per request (a mount on a host the
    /// operator controls, as NFS trusts hosts; `trusted = true`).
    pub trusted: bool,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print keys.
        f.debug_struct("ClientConfig")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("admin", &self.admin)
            .finish()
    }
}

/// Timings of the group protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Time between pings to each peer.
    pub ping_interval: Duration,
    /// A peer heard nothing from for this long is down.
    pub down_timeout: Duration,
    /// First reconnect delay.
    pub reconnect_min: Duration,
    /// Reconnect delay cap.
    pub reconnect_max: Duration,
}

/// Accepted connections a server keeps open at once unless `cluster.max_connections` says.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// The longest a handshake may take: it is a few round trips, and a stranger holding a
/// connection open unauthenticated holds one of the server's connection slots.
pub const MAX_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);

impl Timing {
    /// A connection not authenticated within this long is closed: the down timeout, at most
    /// [`MAX_HANDSHAKE_TIMEOUT`].
    pub fn handshake_timeout(&self) -> Duration {
        self.down_timeout.min(MAX_HANDSHAKE_TIMEOUT)
    }
}

/// A validated cluster description.
#[derive(Clone, PartialEq)]
pub struct Config {
    /// The file it came from (absolute), for messages.
    pub path: PathBuf,
    /// The cluster name; peers with another name are refused.
    pub cluster_name: String,
    /// The cluster secret.
    pub secret: Vec<u8>,
    /// Group protocol timings.
    pub timing: Timing,
    /// Most accepted connections a server keeps open at once (clients, peers dialing in,
    /// strangers); the connections it dials have a budget of their own.
    pub max_connections: usize,
    /// Every server, meta-servers first, each group in file order.
    pub servers: Vec<ServerConfig>,
    /// Clients by id.
    pub clients: BTreeMap<ClientId, ClientConfig>,
    /// What the group does not own, for the layers that do: the other keys of `[cluster]`
    /// (under `cluster`) and every other top-level table (`heal`, `locks`, ...). Unread
    /// here; `meshfs_core::settings` reads and checks them.
    pub sections: toml::Table,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("path", &self.path)
            .field("cluster_name", &self.cluster_name)
            .field("timing", &self.timing)
            .field("servers", &self.servers)
            .field("clients", &self.clients)
            .finish_non_exhaustive()
    }
}

/// Refuses `path` if anyone but its owner may read or write it: it holds `what`.
pub fn check_private(path: &Path, what: &str) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(ConfigError::NotPrivate {
            path: path.to_path_buf(),
            what: what.to_string(),
            mode,
        });
    }
    Ok(())
}

/// Reads the config at `path`: its text and absolute path. If the file itself holds the
/// secret or a client key, it must be private.
pub fn read_text(path: &Path) -> Result<(String, PathBuf), ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    // A file that does not parse is reported by the parser; here only what it holds counts.
    if let Ok(table) = toml::from_str::<toml::Table>(&text) {
        let inline_secret =
            table.get("cluster").and_then(|c| c.get("secret")).is_some_and(|s| s.is_str());
        let keys = table
            .get("client")
            .and_then(toml::Value::as_array)
            .is_some_and(|list| list.iter().any(|c| c.get("key").is_some()));
        if inline_secret || keys {
            check_private(&absolute, "the cluster secret or client keys")?;
        }
    }
    Ok((text, absolute))
}

impl Config {
    /// Reads and validates the config at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let (text, absolute) = read_text(path)?;
        Config::parse(&text, &absolute)
    }

    /// Validates config text as if read from `path` (relative paths resolve against its
    /// directory).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|err| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: err.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        raw.validate(path, base)
    }

    /// The server with `id`.
    pub fn server(&self, id: NodeId) -> Option<&ServerConfig> {
        self.servers.iter().find(|s| s.id == id)
    }

    /// The servers of one role.
    pub fn servers_of(&self, role: Role) -> impl Iterator<Item = &ServerConfig> {
        self.servers.iter().filter(move |s| s.role == role)
    }

    /// The client with `id`.
    pub fn client(&self, id: ClientId) -> Option<&ClientConfig> {
        self.clients.get(&id)
    }

    /// The directory holding the config file; relative paths are relative to it.
    pub fn base_dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }
}

/// Where the config is: `--config` if given, else `$MESHFS_CONFIG`, else `./config.conf`.
pub fn resolve_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("MESHFS_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("config.conf"))
}

/// Parses a size: a number of bytes, or a number followed by B, KiB, MiB, GiB or TiB
/// (also K, M, G, T, KB, MB, GB, TB, all binary).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(format!("{text:?} is not a size (expected e.g. 65536, \"64MiB\", \"10GiB\")"));
    }
    let number: u64 = digits.parse().map_err(|_| format!("{digits:?} is too large"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => return Err(format!("unknown size unit {other:?} (use KiB, MiB, GiB or TiB)")),
    };
    number.checked_mul(1u64 << shift).ok_or_else(|| format!("{text:?} is too large"))
}

// ---- raw TOML shape ----

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawSize {
    Bytes(u64),
    Text(String),
}

/// The keys of `[cluster]` the group owns; the others belong to the layers above.
pub const CLUSTER_KEYS: &[&str] = &[
    "name",
    "secret",
    "secret_file",
    "ping_interval_ms",
    "down_timeout_ms",
    "reconnect_min_ms",
    "reconnect_max_ms",
    "max_connections",
];
/// The top-level tables the group owns.
pub const TABLES: &[&str] = &["cluster", "mserver", "dserver", "client"];

#[derive(Debug, Deserialize)]
struct RawCluster {
    name: String,
    secret: Option<String>,
    secret_file: Option<String>,
    ping_interval_ms: Option<u64>,
    down_timeout_ms: Option<u64>,
    reconnect_min_ms: Option<u64>,
    reconnect_max_ms: Option<u64>,
    max_connections: Option<u64>,
    /// Keys of other layers (and typos, which they report).
    #[serde(flatten)]
    rest: toml::Table,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    id: i64,
    addr: String,
    data_dir: String,
    capacity: Option<RawSize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    id: i64,
    name: Option<String>,
    key: Option<String>,
    salt: Option<String>,
    admin: Option<bool>,
    uid: Option<u32>,
    gids: Option<Vec<u32>>,
    trusted: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct RawConfig {
    cluster: RawCluster,
    #[serde(default)]
    mserver: Vec<RawServer>,
    #[serde(default)]
    dserver: Vec<RawServer>,
    #[serde(default)]
    client: Vec<RawClient>,
    /// Tables of other layers (and typos, which they report).
    #[serde(flatten)]
    rest: toml::Table,
}

impl RawConfig {
    fn validate(self, path: &Path, base: &Path) -> Result<Config, ConfigError> {
        let invalid = |field: &str, reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            field: field.to_string(),
            reason,
        };
        let c = &self.cluster;

        if c.name.is_empty() || c.name.len() > 64 {
            return Err(invalid("cluster.name", "must be 1 to 64 characters".into()));
        }
        if !c.name.chars().all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch)) {
            return Err(invalid(
                "cluster.name",
                "may hold only letters, digits, '-', '_' and '.'".into(),
            ));
        }
        let secret = match (&c.secret, &c.secret_file) {
            (None, None) => {
                return Err(invalid(
                    "cluster.secret_file",
                    "missing: every cluster needs a secret (`meshfs up` makes one)".into(),
                ));
            }
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "cluster.secret",
                    "give secret or secret_file, not both".into(),
                ));
            }
            (Some(s), None) => s.clone(),
            (None, Some(file)) => {
                let file = base.join(file);
                check_private(&file, "the cluster secret")?;
                let text = std::fs::read_to_string(&file).map_err(|e| {
                    invalid("cluster.secret_file", format!("cannot read {}: {e}", file.display()))
                })?;
                text.trim_end_matches(['\n', '\r']).to_string()
            }
        };
        if secret.len() < MIN_SECRET_LEN {
            return Err(invalid(
                "cluster.secret",
                format!("too short ({} bytes, need at least {MIN_SECRET_LEN})", secret.len()),
            ));
        }
        let secret = secret.into_bytes();

        let timing = Timing {
            ping_interval: Duration::from_millis(c.ping_interval_ms.unwrap_or(250)),
            down_timeout: Duration::from_millis(c.down_timeout_ms.unwrap_or(2000)),
            reconnect_min: Duration::from_millis(c.reconnect_min_ms.unwrap_or(100)),
            reconnect_max: Duration::from_millis(c.reconnect_max_ms.unwrap_or(5000)),
        };
        if timing.ping_interval < Duration::from_millis(10) {
            return Err(invalid("cluster.ping_interval_ms", "must be at least 10".into()));
        }
        if timing.down_timeout < 2 * timing.ping_interval {
            return Err(invalid(
                "cluster.down_timeout_ms",
                format!(
                    "{} ms: must be at least two ping intervals ({} ms), or one late pong marks a peer down",
                    timing.down_timeout.as_millis(),
                    2 * timing.ping_interval.as_millis()
                ),
            ));
        }
        if timing.reconnect_min.is_zero() || timing.reconnect_min > timing.reconnect_max {
            return Err(invalid(
                "cluster.reconnect_min_ms",
                "must be non-zero and at most reconnect_max_ms".into(),
            ));
        }

        let mut servers = Vec::new();
        let mut ids = HashSet::new();
        let mut addrs = HashSet::new();
        let mut dirs = HashSet::new();
        for (role, list) in [(Role::MServer, &self.mserver), (Role::DServer, &self.dserver)] {
            for (i, raw) in list.iter().enumerate() {
                let field = |name: &str| format!("{}[{}].{name}", role.name(), i + 1);
                let id = u32::try_from(raw.id).ok().filter(|&id| id != 0).ok_or_else(|| {
                    invalid(&field("id"), format!("{}: must be 1 to {}", raw.id, u32::MAX))
                })?;
                if !ids.insert(id) {
                    return Err(invalid(
                        &field("id"),
                        format!("duplicate id {id}: ids are unique across mservers and dservers"),
                    ));
                }
                let addr: SocketAddr = raw.addr.parse().map_err(|_| {
                    invalid(
                        &field("addr"),
                        format!(
                            "{:?} is not an IP:port address (host names are not resolved)",
                            raw.addr
                        ),
                    )
                })?;
                if addr.port() == 0 {
                    return Err(invalid(
                        &field("addr"),
                        format!("{addr}: port 0 is not an address peers can reach"),
                    ));
                }
                if !addrs.insert(addr) {
                    return Err(invalid(&field("addr"), format!("duplicate address {addr}")));
                }
                if raw.data_dir.is_empty() {
                    return Err(invalid(&field("data_dir"), "must not be empty".into()));
                }
                let data_dir = base.join(&raw.data_dir);
                if !dirs.insert(data_dir.clone()) {
                    return Err(invalid(
                        &field("data_dir"),
                        format!("{} is used by another server", data_dir.display()),
                    ));
                }
                let capacity = match (role, &raw.capacity) {
                    (Role::MServer, Some(_)) => {
                        return Err(invalid(
                            &field("capacity"),
                            "only data-servers have a capacity".into(),
                        ));
                    }
                    (Role::MServer, None) => None,
                    (Role::DServer, None) => {
                        return Err(invalid(
                            &field("capacity"),
                            "missing: how many bytes may this data-server store?".into(),
                        ));
                    }
                    (Role::DServer, Some(raw)) => {
                        let bytes = size_value(raw).map_err(|r| invalid(&field("capacity"), r))?;
                        Some(bytes)
                    }
                };
                servers.push(ServerConfig { id: NodeId(id), role, addr, data_dir, capacity });
            }
        }
        if self.mserver.is_empty() {
            return Err(invalid("mserver", "at least one [[mserver]] is needed".into()));
        }
        if servers.len() > MAX_SERVERS {
            return Err(invalid(
                "dserver",
                format!("{} servers: at most {MAX_SERVERS} in one full mesh", servers.len()),
            ));
        }
        let mut clients = BTreeMap::new();
        for (i, raw) in self.client.iter().enumerate() {
            let field = |name: &str| format!("client[{}].{name}", i + 1);
            let id = u32::try_from(raw.id).ok().filter(|&id| id != 0).ok_or_else(|| {
                invalid(&field("id"), format!("{}: must be 1 to {}", raw.id, u32::MAX))
            })?;
            let key = match (&raw.key, &raw.salt) {
                (Some(_), Some(_)) => {
                    return Err(invalid(&field("salt"), "give key or salt, not both".into()));
                }
                (Some(key), None) if key.len() < MIN_SECRET_LEN => {
                    return Err(invalid(
                        &field("key"),
                        format!("too short ({} bytes, need at least {MIN_SECRET_LEN})", key.len()),
                    ));
                }
                (Some(key), None) => key.as_bytes().to_vec(),
                (None, salt) => crate::auth::client_key(
                    &secret,
                    ClientId(id),
                    salt.as_deref().unwrap_or_default(),
                )
                .into_bytes(),
            };
            let client = ClientConfig {
                id: ClientId(id),
                name: raw.name.clone().unwrap_or_else(|| format!("client-{id}")),
                key,
                admin: raw.admin.unwrap_or(false),
                uid: raw.uid.unwrap_or(id),
                gids: raw.gids.clone().unwrap_or_else(|| vec![raw.uid.unwrap_or(id)]),
                trusted: raw.trusted.unwrap_or(false),
            };
            if client.gids.len() > 16 {
                return Err(invalid(
                    &field("gids"),
                    format!("{} groups: at most 16", client.gids.len()),
                ));
            }
            if clients.insert(client.id, client).is_some() {
                return Err(invalid(&field("id"), format!("duplicate client id {id}")));
            }
        }

        let mut sections = self.rest;
        sections.insert("cluster".into(), toml::Value::Table(self.cluster.rest));
        let max_connections = match self.cluster.max_connections {
            None => DEFAULT_MAX_CONNECTIONS,
            Some(n @ 16..=1_000_000) => n as usize,
            Some(n) => {
                return Err(invalid(
                    "cluster.max_connections",
                    format!("{n}: must be 16 to 1000000"),
                ));
            }
        };
        Ok(Config {
            path: path.to_path_buf(),
            cluster_name: self.cluster.name,
            secret,
            timing,
            max_connections,
            servers,
            clients,
            sections,
        })
    }
}

fn size_value(raw: &RawSize) -> Result<u64, String> {
    match raw {
        RawSize::Bytes(n) => Ok(*n),
        RawSize::Text(text) => parse_size(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shared with `meshfs_core::settings`'s tests, which check the rest of the file.
    const GOOD: &str = include_str!("../testdata/good.conf");

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/meshfs/config.conf"))
    }

    fn error(text: &str) -> String {
        parse(text).expect_err("config should be refused").to_string()
    }

    #[test]
    fn a_good_config_parses_with_defaults() {
        let config = parse(GOOD).unwrap();
        assert_eq!(config.cluster_name, "test");
        assert_eq!(config.timing.ping_interval, Duration::from_millis(250));
        assert_eq!(config.servers.len(), 3);
        assert_eq!(config.server(NodeId(4)).unwrap().capacity, Some(1 << 30));
        assert_eq!(config.server(NodeId(5)).unwrap().capacity, Some(1 << 30));
        assert_eq!(config.client(ClientId(1)).unwrap().name, "client-1");
        assert_eq!(config.servers_of(Role::DServer).count(), 2);
    }

    #[test]
    fn relative_paths_resolve_against_the_config_directory() {
        let config = parse(GOOD).unwrap();
        assert_eq!(config.server(NodeId(1)).unwrap().data_dir, Path::new("/etc/meshfs/data/m1"));
        assert_eq!(config.server(NodeId(5)).unwrap().data_dir, Path::new("/abs/d5"));
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("10 GiB"), Ok(10 << 30));
        assert_eq!(parse_size("2t"), Ok(2 << 40));
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("5 parsecs").unwrap_err().contains("unknown size unit"));
        assert!(parse_size("99999999999999TiB").unwrap_err().contains("too large"));
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases: &[(&str, &str, &str)] = &[
            // (replace this, with this, expect this in the message)
            ("secret = \"0123456789abcdef\"\n", "", "cluster.secret_file: missing"),
            (
                "secret = \"0123456789abcdef\"\n",
                "secret = \"0123456789abcdef\"\nsecret_file = \"s\"\n",
                "not both",
            ),
            (
                "key = \"client-key-0123456789\"",
                "key = \"client-key-0123456789\"\nsalt = \"x\"",
                "not both",
            ),
            ("secret = \"0123456789abcdef\"", "secret = \"short\"", "cluster.secret: too short"),
            ("id = 5", "id = 4", "dserver[2].id: duplicate id 4"),
            ("id = 5", "id = 0", "dserver[2].id: 0: must be"),
            (
                "127.0.0.1:7202",
                "localhost:7202",
                "dserver[2].addr: \"localhost:7202\" is not an IP:port",
            ),
            ("127.0.0.1:7202", "127.0.0.1:7201", "dserver[2].addr: duplicate address"),
            ("127.0.0.1:7202", "127.0.0.1:0", "port 0"),
            ("/abs/d5", "data/d4", "dserver[2].data_dir"),
            ("capacity = 1073741824", "", "dserver[2].capacity: missing"),
            (
                "capacity = 1073741824",
                "capacity = \"1 furlong\"",
                "dserver[2].capacity: unknown size unit",
            ),
            ("name = \"test\"", "name = \"a b\"", "cluster.name"),
            (
                "replication = 2",
                "replication = 2\nping_interval_ms = 500\ndown_timeout_ms = 600",
                "cluster.down_timeout_ms",
            ),
            ("key = \"client-key-0123456789\"", "key = \"k\"", "client[1].key: too short"),
            (
                "key = \"client-key-0123456789\"",
                "key = \"client-key-0123456789\"\ngids = [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17]",
                "client[1].gids: 17 groups: at most 16",
            ),
        ];
        for (from, to, expect) in cases {
            assert!(GOOD.contains(from), "case {from:?} does not apply");
            let message = error(&GOOD.replacen(from, to, 1));
            assert!(message.contains(expect), "for {to:?}: {message:?} lacks {expect:?}");
            assert!(message.contains("/etc/meshfs/config.conf"), "{message:?} lacks the file");
        }
    }

    #[test]
    fn keys_and_tables_of_other_layers_are_kept_for_them() {
        let text = GOOD.replacen("[[mserver]]", "[heal]\ngrace_secs = 5\n\n[[mserver]]", 1);
        let config = parse(&text).unwrap();
        assert_eq!(config.sections["cluster"]["replication"].as_integer(), Some(2));
        assert_eq!(config.sections["heal"]["grace_secs"].as_integer(), Some(5));
        assert!(config.sections["cluster"].get("name").is_none(), "the group's keys are its own");
        let message = error(&GOOD.replacen("id = 1\nkey", "id = 1\nkee = 1\nkey", 1));
        assert!(message.contains("unknown field `kee`"), "{message}");
        assert!(message.contains("line"), "{message}");
    }

    #[test]
    fn config_needs_a_meta_server() {
        let text = GOOD.replacen(
            "[[mserver]]\nid = 1\naddr = \"127.0.0.1:7101\"\ndata_dir = \"data/m1\"\n",
            "",
            1,
        );
        assert!(error(&text).contains("at least one [[mserver]]"));
    }

    #[test]
    fn debug_output_hides_secrets() {
        let config = parse(GOOD).unwrap();
        let printed = format!("{config:?}");
        assert!(!printed.contains("0123456789abcdef"));
        assert!(!printed.contains("client-key"));
    }

    #[test]
    fn the_shipped_config_is_valid() {
        // As `meshfs up` finds it on a fresh clone: its secret file made beside it.
        let dir = meshfs_test_kit::TempDir::new("shipped-config");
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.conf");
        let path = dir.join("config.conf");
        std::fs::copy(&shipped, &path).unwrap();
        meshfs_test_kit::write_private(
            dir.join("cluster.secret"),
            "a-secret-for-the-test-0123456789\n",
        );
        let config = Config::load(&path).unwrap();
        assert_eq!(config.secret, b"a-secret-for-the-test-0123456789");
        assert_eq!(config.servers_of(Role::MServer).count(), 3);
        assert_eq!(config.servers_of(Role::DServer).count(), 3);
        assert!(config.servers.iter().all(|s| s.addr.ip().is_loopback()));
        assert!(!config.clients.is_empty());
    }

    #[test]
    fn a_handshake_has_at_most_a_second_and_accepts_have_a_configured_budget() {
        let timing = |down_ms| Timing {
            ping_interval: Duration::from_millis(100),
            down_timeout: Duration::from_millis(down_ms),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_millis(1000),
        };
        assert_eq!(timing(5000).handshake_timeout(), Duration::from_secs(1));
        assert_eq!(timing(400).handshake_timeout(), Duration::from_millis(400));
        let config = Config::parse(GOOD, Path::new("/etc/meshfs/config.conf")).unwrap();
        assert_eq!(config.max_connections, DEFAULT_MAX_CONNECTIONS);
        let text = GOOD.replacen("[cluster]", "[cluster]\nmax_connections = 64", 1);
        let config = Config::parse(&text, Path::new("/etc/meshfs/config.conf")).unwrap();
        assert_eq!(config.max_connections, 64);
        let text = GOOD.replacen("[cluster]", "[cluster]\nmax_connections = 3", 1);
        let err = Config::parse(&text, Path::new("/etc/meshfs/config.conf")).unwrap_err();
        assert!(err.to_string().contains("max_connections: 3: must be 16 to"), "{err}");
    }
}
