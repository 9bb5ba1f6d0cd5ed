//! The Sendense appliance client: reads a VM's disks, sends what matters to the hub over NBD
//! inside TLS, and restores backups.
//!
//! - [`source`]: [`DiskSource`] and its local implementations (raw files with
//!   `SEEK_DATA`/`SEEK_HOLE`, VMDK through `sendense-vmdk`), detected by [`open_local`].
//! - [`cbt`]: VMware `DiskChangeInfo` changed areas, validated and merged.
//! - [`plan`]: requests of ≤ 4 MiB on 1 MiB boundaries, zero detection, zero policy.
//! - [`error`]: [`ClientError`], [`SourceError`], [`CbtError`].
#![forbid(unsafe_code)]

pub mod cbt;
pub mod error;
pub mod plan;
pub mod source;

pub use error::{CbtError, ClientError, SourceError};
pub use source::{
    BoxFuture, DiskSource, Extent, MemorySource, RawFileSource, VmdkSource, open_local,
};
