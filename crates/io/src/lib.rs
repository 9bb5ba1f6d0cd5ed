//! Low-level I/O pieces that every Sendense crate shares, each exactly once.
//!
//! - [`Extent`]: a run of bytes of a disk, `[offset, offset + length)`.
//! - [`buf`]: page-aligned buffers ([`AlignedBuf`]) for direct I/O and the one pool of them
//!   ([`BufPool`]).
//! - [`sparse`]: `SEEK_DATA` / `SEEK_HOLE` (one walk: [`sparse::data_runs`]), punch-hole and
//!   zero-range through rustix (no `unsafe`).
//! - [`zero::is_zero`]: whether a buffer holds only zeros, at memory speed.
//! - [`atomic`]: write a file atomically (temporary name, fsync, rename, fsync the folder).
//! - [`chain`]: an error and its causes as one line or as a report.
//! - `join` and `signal` (feature `tokio`): [`join::try_join_all`] without spawning, and the
//!   one future that resolves on SIGINT, SIGTERM or SIGHUP.
//!
//! This crate has no tokio in its core and knows nothing about backups, images or protocols.
#![forbid(unsafe_code)]

pub mod atomic;
pub mod buf;
pub mod chain;
pub mod extent;
#[cfg(feature = "tokio")]
pub mod join;
#[cfg(feature = "tokio")]
pub mod signal;
pub mod sparse;
pub mod zero;

pub use atomic::{rename_durable, sync_dir, sync_parent, write_atomic};
pub use buf::{AlignedBuf, BufPool, PAGE_SIZE, PooledBuf, is_direct_aligned};
pub use chain::{error_chain, error_report};
pub use extent::Extent;
pub use zero::is_zero;

/// A boxed, sendable future: what the object-safe async traits of Sendense return.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;
