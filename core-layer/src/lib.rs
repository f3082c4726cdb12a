//! MeshFS core: plain data and pure functions, no sockets, disks or threads.
//!
//! - [`wire`]: every application message between clients, meta-servers and data-servers,
//!   with its byte layout; the group layer's own handshake and ping live below, in
//!   `meshfs_group::message`.
//! - [`status`]: building a server's status report from its group state (no driver, no clock).
//! - [`request`]: client requests every server answers alike (status).
//!
//! - [`descriptor`]: file and block descriptors (32+32 and +16+16 bits), wrap-aware versions.
//! - [`path`]: validated, normalised namespace paths.
//! - [`namespace`]: the metadata state machine, its log entries, snapshots and invariants.
//! - [`error`]: the namespace's error ([`error::NsError`]), carried in outcomes and replies.
//! - [`settings`]: the config's settings of the layers above the group: blocks, healing,
//!   locks, the log.
//! - [`session`]: the client session ([`session::SessionId`]) every request is made in.
//! - [`token`]: block tokens the meta-servers sign and data-servers check (HMAC-SHA256).
//! - [`pacer`]: a token bucket holding a byte stream to a rate (repair copies).
//! - [`placement`]: choosing data-servers for new blocks (by the leader, carried in entries).
//! - [`heal`]: the repair planner: re-replication, deletes, drain and rebalancing.
//! - [`locks`]: lock sessions and shared/exclusive locks with queues and sequencers.
//! - [`lock_clock`]: when the leader proposes the lock service's Clock entries.

#![deny(missing_docs, missing_debug_implementations)]

pub mod descriptor;
pub mod error;
#[doc(hidden)]
pub mod fuzz;
pub mod heal;
pub mod lock_clock;
pub mod locks;
pub mod namespace;
pub mod pacer;
pub mod path;
pub mod placement;
pub mod request;
pub mod session;
pub mod settings;
pub mod status;
pub mod token;
pub mod wire;
