//! MeshFS net layer: bytes and packets, nothing else.
//!
//! - [`frame`]: the wire frame (fixed header with magic, version, kind, request id, length and
//!   CRC-32s) and its sans-I/O codec.
//! - [`body`]: a checked cursor to build and read message bodies.
//! - [`event_loop`]: the mio loop: listeners, outbound connects, connections in a slab,
//!   bounded per-connection output with two priorities, timers, a waker, signals.
//!
//! This crate knows nothing of peers, nodes, files or blocks: kinds are numbers to it. It is
//! the only crate that touches mio and sockets.

#![deny(missing_docs, missing_debug_implementations)]

pub mod body;
pub mod event_loop;
pub mod frame;
#[doc(hidden)]
pub mod fuzz;
pub mod log_budget;
mod outbound;
mod timer;

pub use body::{BodyError, BodyReader, BodyWriter};
pub use event_loop::{CloseReason, ConnId, EventLoop, ListenerId, LoopConfig, NetEvent, Notifier};
pub use frame::{Decoder, Frame, FrameError};
pub use outbound::{Priority, SendError};
pub use timer::TimerId;
