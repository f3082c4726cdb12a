//! MeshFS client library and the `meshfs` command line.
//!
//! - [`bench`]: `meshfs bench` workloads (today: `meta`).
//! - [`connection`]: a blocking, authenticated connection to one server.
//! - [`meta`]: namespace calls (mkdir, create, stat, list, rename, remove), leader-following.
//! - [`status`]: the cluster as every server sees it (`meshfs status`).
//! - [`launcher`]: start and stop every server of a config (`meshfs up`).
//! - [`data`]: block writes down a replica chain, verified reads, `put` and `get`.
//! - [`file`]: remote files (open, read_at, write_at, close) and the block calls.
//! - [`session`]: lock sessions (KeepAlives, jeopardy and expiry) and shared/exclusive
//!   locks with sequencers.
//! - [`error`]: the one error type, [`ClientError`].
//!
//! The client knows servers only through the wire protocol (`meshfs_core::wire`).

#![deny(missing_docs, missing_debug_implementations)]

pub mod bench;
pub mod connection;
pub mod data;
pub mod error;
pub mod file;
pub mod launcher;
pub mod limits;
pub mod local;
pub mod lock_bench;
pub mod meta;
pub mod rand_bench;
pub mod repair_bench;
mod rng;
pub mod seq_bench;
pub mod session;
pub mod small_bench;
pub mod status;

pub use connection::{Connection, Credentials};
pub use error::{ClientError, Result};
pub use meta::MetaClient;
pub use session::{Lock, LockMode, Session, SessionEvent, SessionState};
