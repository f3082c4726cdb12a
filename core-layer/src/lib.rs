//! MeshFS core: plain data and pure functions, no sockets, disks or threads.
//!
//! - [`wire`]: every application message between clients, meta-servers and data-servers,
//!   with its byte layout; the group layer's own handshake and ping live below, in
//!   `meshfs_group::message`.
//! - [`status`]: building a server's status report from its group state.
//! - [`request`]: client requests every server answers alike (status).
//!
//! Later: descriptors, the metadata state machine, locks and sessions, placement.

#![deny(missing_docs, missing_debug_implementations)]

pub mod request;
pub mod status;
pub mod wire;
