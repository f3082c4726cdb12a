//! How a client reaches a cluster and who it is there ([`Access`]): the cluster's name, the
//! meta-servers' addresses and the client's own id and key.
//!
//! It comes from a client config, the file `meshfs client add` writes for one client (and
//! `meshfs up` for the local cluster's first one), or, for operators on a server host, from
//! the cluster config itself. A client config holds nothing that lets its holder act as a
//! server or as another client:
//!
//! ```toml
//! [client]
//! cluster = "meshfs-local"       # the cluster's name
//! id = 1
//! name = "admin"
//! key = "..."                    # this client's key; the file must be private (0600)
//!
//! [[mserver]]                    # every meta-server: where to ask
//! id = 1
//! addr = "127.0.0.1:7101"
//! ```
//!
//! The data-servers' addresses and the cluster's block size come from any meta-server
//! ([`MetaOp::ClusterMap`]), fetched once and shared by every clone of the [`Access`].
//!
//! It must not know the cluster secret, and must not read a key from a file others may read.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshfs_core::settings::Settings;
use meshfs_core::wire::{ClusterMap, Message, MetaOp, MetaReply, MetaRequest};
use meshfs_group::config::{ConfigError, check_private};
use meshfs_group::{ClientId, Config, NodeId, Role};
use serde::Deserialize;

use crate::connection::{Connection, Credentials};
use crate::error::ClientError;

/// How long asking a meta-server for the cluster map may take.
const MAP_TIMEOUT: Duration = Duration::from_secs(10);

/// A client's way into one cluster; cheap to clone.
#[derive(Debug, Clone)]
pub struct Access {
    /// The cluster's name.
    pub cluster: String,
    /// Every meta-server, by id.
    pub mservers: Vec<(NodeId, SocketAddr)>,
    /// Who the client is.
    pub credentials: Credentials,
    map: Arc<Mutex<Option<Arc<ClusterMap>>>>,
    /// The meta-server that last answered as leader to any client made from this access
    /// (shared by its clones): a new client asks it first.
    leader: Arc<Mutex<Option<NodeId>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClientConfig {
    client: RawClient,
    #[serde(default)]
    mserver: Vec<RawServer>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    cluster: String,
    id: u32,
    #[serde(default)]
    name: Option<String>,
    key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    id: u32,
    addr: String,
}

impl Access {
    /// Reads `path`: a client config, or a cluster config (then as client `client`, or the
    /// first `[[client]]` entry). A file holding a key or the secret that others may read
    /// is refused with the `chmod` that fixes it.
    pub fn load(path: &Path, client: Option<ClientId>) -> Result<Access, ClientError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        if is_client_config(&text) {
            check_private(&absolute, "a client key")?;
            let access = Access::parse_client_config(&text, &absolute)?;
            if let Some(id) = client
                && id != access.credentials.id
            {
                return Err(ClientError::UnknownClient(id));
            }
            return Ok(access);
        }
        let (config, settings) = meshfs_core::settings::load(&absolute)?;
        Access::of_cluster(&config, &settings, client)
    }

    /// The access of client `id` (or the first client) of a cluster config, with the
    /// data-servers and block size known from it.
    pub fn of_cluster(
        config: &Config,
        settings: &Settings,
        id: Option<ClientId>,
    ) -> Result<Access, ClientError> {
        let client = match id {
            Some(id) => config.client(id).ok_or(ClientError::UnknownClient(id))?,
            None => config.clients.values().next().ok_or(ClientError::NoClient)?,
        };
        let map = ClusterMap {
            block_size: u32::try_from(settings.block_size).unwrap_or(u32::MAX),
            replication: settings.replication,
            servers: config.servers.iter().map(|s| (s.role, s.id, s.addr.to_string())).collect(),
        };
        Ok(Access {
            cluster: config.cluster_name.clone(),
            mservers: config.servers_of(Role::MServer).map(|s| (s.id, s.addr)).collect(),
            credentials: Credentials { id: client.id, key: client.key.clone() },
            map: Arc::new(Mutex::new(Some(Arc::new(map)))),
            leader: Arc::default(),
        })
    }

    /// Checks the text of a client config read from `path`.
    pub fn parse_client_config(text: &str, path: &Path) -> Result<Access, ClientError> {
        let invalid = |field: &str, reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            field: field.to_string(),
            reason,
        };
        let raw: RawClientConfig = toml::from_str(text).map_err(|err| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: err.to_string(),
        })?;
        if raw.client.id == 0 {
            return Err(invalid("client.id", "must not be 0".into()).into());
        }
        if raw.client.key.len() < meshfs_group::config::MIN_SECRET_LEN {
            return Err(invalid("client.key", "too short".into()).into());
        }
        if raw.mserver.is_empty() {
            return Err(invalid("mserver", "a client config lists every meta-server".into()).into());
        }
        let mut mservers = Vec::new();
        for (i, s) in raw.mserver.iter().enumerate() {
            let addr = s.addr.parse().map_err(|_| {
                invalid(&format!("mserver[{}].addr", i + 1), format!("{:?} is not ip:port", s.addr))
            })?;
            mservers.push((NodeId(s.id), addr));
        }
        let _ = raw.client.name;
        Ok(Access {
            cluster: raw.client.cluster,
            mservers,
            credentials: Credentials {
                id: ClientId(raw.client.id),
                key: raw.client.key.into_bytes(),
            },
            map: Arc::new(Mutex::new(None)),
            leader: Arc::default(),
        })
    }

    /// The address of meta-server `id`.
    pub fn mserver(&self, id: NodeId) -> Option<SocketAddr> {
        self.mservers.iter().find(|(m, _)| *m == id).map(|(_, addr)| *addr)
    }

    /// The meta-server that last answered as leader to a client of this access.
    pub fn leader_hint(&self) -> Option<NodeId> {
        *self.leader.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records (or, with `None`, forgets) the leader a client of this access found.
    pub fn set_leader_hint(&self, leader: Option<NodeId>) {
        *self.leader.lock().unwrap_or_else(|p| p.into_inner()) = leader;
    }

    /// The cluster's servers and defaults: known from a cluster config, or asked of the
    /// meta-servers in turn once and kept.
    pub fn cluster_map(&self) -> Result<Arc<ClusterMap>, ClientError> {
        if let Some(map) = self.map.lock().map_err(|_| poisoned())?.as_ref() {
            return Ok(map.clone());
        }
        let mut last = None;
        for &(_, addr) in &self.mservers {
            match self.ask_map(addr) {
                Ok(map) => {
                    let map = Arc::new(map);
                    *self.map.lock().map_err(|_| poisoned())? = Some(map.clone());
                    return Ok(map);
                }
                Err(err) => last = Some(err),
            }
        }
        Err(last.unwrap_or(ClientError::NoClient))
    }

    fn ask_map(&self, addr: SocketAddr) -> Result<ClusterMap, ClientError> {
        let mut conn = Connection::open(addr, &self.cluster, &self.credentials, MAP_TIMEOUT)?;
        let request = MetaRequest { session: 0, request_id: 0, op: MetaOp::ClusterMap };
        match conn.call(&Message::MetaRequest(request))? {
            Message::MetaReply(MetaReply::ClusterMap(map)) => Ok(map),
            other => Err(ClientError::Protocol {
                addr,
                detail: format!("expected the cluster map, got message kind {}", other.kind()),
            }),
        }
    }

    /// The address of data-server `id`, from the cluster map.
    pub fn dserver(&self, id: NodeId) -> Result<SocketAddr, ClientError> {
        let map = self.cluster_map()?;
        let found = map.servers.iter().find(|(role, s, _)| *role == Role::DServer && *s == id);
        let unknown = |detail: String| ClientError::Protocol {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            detail,
        };
        let (_, _, addr) =
            found.ok_or_else(|| unknown(format!("data-server {id} is not in the cluster map")))?;
        addr.parse().map_err(|_| {
            unknown(format!("the cluster map gives data-server {id} address {addr:?}"))
        })
    }

    /// The cluster's block size for new files.
    pub fn block_size(&self) -> Result<u64, ClientError> {
        Ok(u64::from(self.cluster_map()?.block_size))
    }
}

fn poisoned() -> ClientError {
    ClientError::Launch { program: "cluster map".into(), reason: "a thread panicked".into() }
}

/// Whether config text is a client config (a `[client]` table, no `[cluster]`).
pub fn is_client_config(text: &str) -> bool {
    toml::from_str::<toml::Table>(text).is_ok_and(|t| {
        t.get("client").is_some_and(toml::Value::is_table) && !t.contains_key("cluster")
    })
}

/// The text of a client config for client `id` named `name` with `key`, of `config`'s
/// cluster.
pub fn client_config_text(config: &Config, id: ClientId, name: &str, key: &str) -> String {
    let mut text = format!(
        "# MeshFS client config: client {name:?} (id {id}) of cluster {:?}.\n\
         # Keep it private (chmod 600): the key lets its holder act as this client.\n\n\
         [client]\ncluster = {:?}\nid = {id}\nname = {name:?}\nkey = {key:?}\n",
        config.cluster_name, config.cluster_name
    );
    for s in config.servers_of(Role::MServer) {
        let _ = write!(text, "\n[[mserver]]\nid = {}\naddr = \"{}\"\n", s.id, s.addr);
    }
    text
}
