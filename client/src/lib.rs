//! MeshFS client library, and the tools the `meshfs` program is made of.
//!
//! The library:
//! - [`access`]: how a client reaches a cluster and who it is there, from a client config
//!   (or the cluster config on a server host).
//! - [`connection`]: a blocking, authenticated connection to one server.
//! - [`meta`]: namespace calls (mkdir, create, stat, list, rename, remove), leader-following.
//! - [`data`]: block writes down a replica chain, verified reads, `put` and `get`.
//! - [`file`](mod@file): remote files (open, read_at, write_at, close) and the block calls.
//! - [`session`]: lock sessions (KeepAlives, jeopardy and expiry) and shared/exclusive
//!   locks with sequencers.
//! - [`status`]: the cluster as every server sees it (`meshfs status`).
//! - [`error`]: the one error type, [`ClientError`].
//!
//! The tools, behind the `tools` feature (on by default; build with
//! `default-features = false` for the library alone, without histograms, JSON or signals):
//! - [`bench`](mod@bench): `meshfs bench` workloads and their report scaffolding.
//! - [`cluster`]: starting and stopping every server of a config (`meshfs up`, `--local`).
//! - [`mount`](mod@mount): the cluster as a local filesystem through FUSE (`meshfs mount`).
//!
//! The client knows servers only through the wire protocol (`meshfs_core::wire`); the
//! library knows nothing of the tools.

#![deny(missing_docs, missing_debug_implementations)]

pub mod access;
#[cfg(feature = "tools")]
pub mod bench;
#[cfg(feature = "tools")]
pub mod cluster;
pub mod connection;
pub mod data;
pub mod error;
pub mod file;
pub mod meta;
#[cfg(feature = "tools")]
pub mod mount;
pub mod session;
pub mod status;

pub use access::Access;
pub use connection::{Connection, Credentials};
pub use error::{ClientError, Result};
pub use meta::MetaClient;
pub use session::{Lock, LockMode, Session, SessionEvent, SessionState};
