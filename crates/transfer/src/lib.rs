//! Moving a disk's blocks: from a [`DiskSource`] to a [`BlockTarget`], planned, zero-aware and
//! pipelined. The one data path of Sendense's backups and restores.
//!
//! - [`source`]: [`DiskSource`] and its local implementations (raw files with `SEEK_DATA` /
//!   `SEEK_HOLE`, VMDK through `sendense-vmdk`, memory), detected by [`open_local`].
//! - [`plan`]: requests of at most 4 MiB on 1 MiB boundaries, holes, zero segments, the zero
//!   policy.
//! - [`engine`]: N connections per disk, bounded requests in flight from one aligned buffer
//!   pool, retry on a fresh connection, flush; every disk at once ([`engine::transfer_all`]);
//!   for backups, the per-block digests of the bytes read at the source
//!   ([`engine::DiskStats::digests`]).
//! - [`nbd`]: NBD URIs, the NBD write target ([`nbd::NbdConnector`]) and an NBD export as a
//!   source ([`nbd::NbdSource`]).
//! - [`progress`]: the [`Progress`] trait the engine reports through.
//! - [`error`]: the crate's one error, [`TransferError`].
//!
//! This crate knows nothing about the hub, backups or vCenter: the client and the vSphere crate
//! build on it.
#![forbid(unsafe_code)]

pub mod engine;
pub mod error;
pub mod nbd;
pub mod plan;
pub mod progress;
pub mod source;

pub use engine::{BlockTarget, TargetConnector};
pub use error::TransferError;
pub use progress::{NoProgress, Progress};
pub use sendense_io::{BoxFuture, Extent};
pub use source::{DiskSource, MemorySource, RawFileSource, VmdkSource, open_local};
