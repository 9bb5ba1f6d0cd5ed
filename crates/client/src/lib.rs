//! The Sendense appliance client: reads a VM's disks, sends what matters to the hub over NBD
//! inside TLS, and restores backups.
//!
//! - [`backup`]: `sendense-client backup` as a library call ([`backup::run`]).
//! - [`restore`]: `sendense-client restore` as a library call ([`restore::run`]).
//! - [`cli`]: the `sendense-client` command line (parsing and dispatch).
//! - [`source`]: [`DiskSource`] and its local implementations (raw files with
//!   `SEEK_DATA`/`SEEK_HOLE`, VMDK through `sendense-vmdk`), detected by [`open_local`].
//! - [`cbt`]: VMware `DiskChangeInfo` changed areas, validated and merged.
//! - [`plan`]: requests of ≤ 4 MiB on 1 MiB boundaries, zero detection, zero policy.
//! - [`transfer`]: the engine: N connections per disk, bounded requests in flight, retry,
//!   flush; every disk at once.
//! - [`nbd`]: NBD URIs, the NBD write target and the NBD export as a restore source.
//! - [`progress`]: progress reporting (indicatif bars, log lines).
//! - [`hub`]: the hub's REST API over HTTPS with its CA and a bearer token.
//! - [`error`]: [`ClientError`], [`SourceError`], [`CbtError`].
#![forbid(unsafe_code)]

pub mod backup;
pub mod cbt;
pub mod cli;
pub mod error;
pub mod hub;
mod join;
pub mod nbd;
pub mod plan;
pub mod progress;
pub mod restore;
pub mod source;
pub mod transfer;

pub use error::{CbtError, ClientError, SourceError};
pub use source::{
    BoxFuture, DiskSource, Extent, MemorySource, RawFileSource, VmdkSource, open_local,
};
