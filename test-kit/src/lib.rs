//! Test support shared by every MeshFS crate's tests; a dev-dependency only, never linked
//! into a server or the client library.
//!
//! - [`golden`]: byte and text files that freeze an encoding (`MESHFS_BLESS=1` rewrites them).
//! - [`temp`]: private temporary directories removed when dropped.
//! - [`rng`]: one seeded generator.
//! - [`wait`]: waiting for a condition with a deadline, never a fixed sleep.
//! - [`net`]: loopback listeners bound before anything starts.
//! - [`process`]: child processes stopped by PID when dropped.
//! - [`linearizable`]: a linearizability checker for recorded histories, with a register.
//! - [`partition`]: loopback partitions by nftables rules, removed when dropped.
//! - [`mount`]: fixed-size tmpfs mounts for disks that fill, unmounted when dropped.
//!
//! It knows nothing of MeshFS itself: no crate of the workspace is a dependency, so every
//! crate, the lowest included, can use it.

#![deny(missing_docs, missing_debug_implementations)]

pub mod golden;
pub mod linearizable;
pub mod mount;
pub mod net;
pub mod partition;
pub mod process;
pub mod rng;
pub mod temp;
pub mod wait;

pub use rng::Rng;
pub use temp::{TempDir, write_private};
pub use wait::{DEADLINE, wait_until};
