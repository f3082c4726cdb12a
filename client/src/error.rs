//! The one error type of the client library: what went wrong, and what to do.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use meshfs_core::error::NsError;
use meshfs_core::wire::ErrorCode;
use meshfs_group::{ClientId, ConfigError};

/// Everything that can go wrong in a client call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The config could not be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The config has no `[[client]]` entry.
    #[error("the config has no [[client]] entry: add one with an id and a key")]
    NoClient,
    /// `--client` named an id the config does not have.
    #[error("client {0} is not in the config's [[client]] entries")]
    UnknownClient(ClientId),
    /// The server could not be reached.
    #[error("cannot connect to {addr}: {source} (is the server running?)")]
    Connect {
        /// The server.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The server did not answer in time.
    #[error("{addr} did not answer within {} ms", after.as_millis())]
    Timeout {
        /// The server.
        addr: SocketAddr,
        /// The timeout.
        after: Duration,
    },
    /// The server refused the connection and said why.
    #[error("{addr} refused the connection: {reason}")]
    Refused {
        /// The server.
        addr: SocketAddr,
        /// Its reason.
        reason: String,
    },
    /// The server could not prove it knows this client's key.
    #[error(
        "{addr} ({server}) could not prove it knows this client's key: wrong key, or another cluster"
    )]
    ServerAuth {
        /// The server.
        addr: SocketAddr,
        /// Who it claimed to be.
        server: String,
    },
    /// A server refused the request as not permitted (no token, an expired or wrong one).
    #[error("{addr} refused: {message}")]
    Forbidden {
        /// The server.
        addr: SocketAddr,
        /// What it said.
        message: String,
    },
    /// The server did not accept this client's credentials (it says no more, by design).
    #[error(
        "{addr} did not accept this client's credentials: a wrong or rotated key, a client removed from the cluster, or another cluster's config"
    )]
    AuthFailed {
        /// The server.
        addr: SocketAddr,
    },
    /// The server closed the connection.
    #[error("{addr} closed the connection")]
    Closed {
        /// The server.
        addr: SocketAddr,
    },
    /// The server broke the protocol.
    #[error("protocol error talking to {addr}: {detail}")]
    Protocol {
        /// The server.
        addr: SocketAddr,
        /// What was wrong.
        detail: String,
    },
    /// The server answered with an error.
    #[error("{addr} answered: {message} ({code:?})")]
    Server {
        /// The server.
        addr: SocketAddr,
        /// The error code.
        code: ErrorCode,
        /// The server's message.
        message: String,
    },
    /// A socket failed.
    #[error("talking to {addr}: {source}")]
    Io {
        /// The server.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The namespace refused the operation (exists, not found, not empty, bad path, ...).
    #[error("{0}")]
    Namespace(NsError),
    /// No meta-server leader answered in time.
    #[error("no meta-server leader answered within {} s (is a majority of the meta-servers up?); last: {last}", after.as_secs())]
    NoLeader {
        /// How long the call tried.
        after: Duration,
        /// The last problem seen.
        last: String,
    },
    /// A block write failed (the lease's chain could not take it).
    #[error("writing block {block} failed: {reason}")]
    DataWrite {
        /// The block.
        block: String,
        /// Why.
        reason: String,
        /// The data-server that failed, when known: a retry can leave it out.
        failed: Option<meshfs_group::NodeId>,
    },
    /// No replica could give a block's data intact.
    #[error("reading block {block} failed on every replica: {reason}")]
    DataRead {
        /// The block.
        block: String,
        /// What each replica said.
        reason: String,
    },
    /// A write to a file opened read-only.
    #[error("{0} is open read-only (mode rs): open it with wm or ws to write")]
    ReadOnly(String),
    /// Mode bits beyond permissions, setuid, setgid and sticky.
    #[error("mode {0:o} is not a mode: at most 7777 (octal)")]
    BadMode(u16),
    /// A local file or stream failed.
    #[error("{what}: {source}")]
    Local {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A server program could not be found or started.
    #[error("cannot start {program}: {reason}")]
    Launch {
        /// The program.
        program: PathBuf,
        /// What failed.
        reason: String,
    },
}

/// The client library's result.
pub type Result<T> = std::result::Result<T, ClientError>;
