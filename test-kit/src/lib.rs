//! Test support shared by every MeshFS crate's tests; a dev-dependency only, never linked
//! into a server or the client library.
//!
//! - [`golden`]: byte and text files that freeze an encoding (`MESHFS_BLESS=1` rewrites them).
//! - [`temp`]: private temporary directories removed when dropped.
//!
//! It knows nothing of MeshFS itself: no crate of the workspace is a dependency, so every
//! crate, the lowest included, can use it.

#![deny(missing_docs, missing_debug_implementations)]

pub mod golden;
pub mod temp;

pub use temp::TempDir;
