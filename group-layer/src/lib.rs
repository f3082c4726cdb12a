//! MeshFS group layer: the server group described by `config.conf`.
//!
//! - [`config`]: config.conf, parsed and validated, every error naming its field.
//! - [`message`]: the group's own messages (handshake, ping/pong); kinds below 32.
//! - [`auth`]: HMAC-SHA256 challenge-response over a transcript of both ends' nonces.
//! - [`membership`]: the sans-I/O state machine: full mesh, one link per pair, liveness,
//!   RTT, reconnect with backoff. Driven by calls; tested with a fake clock and network.
//! - [`rtt`], [`rng`]: RTT statistics and backoff; a seeded random source.
//! - [`time`]: [`time::Now`], the time a callback runs at; server logic reads no clock.
//! - [`process`]: a server process's start: command line, logging, config, data directory.
//! - [`driver`]: runs [`membership::Group`] on the net layer's event loop for a server
//!   process, and hands group events to the server's [`driver::Service`].
//!
//! This crate knows nothing of files or blocks; kinds from 32 up are carried, not read.

#![deny(missing_docs, missing_debug_implementations)]

pub mod auth;
pub mod config;
pub mod driver;
#[doc(hidden)]
pub mod fuzz;
/// Log budgets, from the net layer (where the accept loop needs one too).
pub use meshfs_net::log_budget;
pub mod membership;
pub mod message;
pub mod process;
pub mod rng;
pub mod rtt;
pub mod time;

pub use config::{ClientId, Config, ConfigError, NodeId, Role};
pub use membership::{Action, Group, GroupError, GroupEvent, PeerStatus};
pub use message::{FIRST_APP_KIND, Identity};
pub use time::Now;
