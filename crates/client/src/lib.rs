//! The Sendense appliance client: reads a VM's disks, sends what matters to the hub over NBD
//! inside TLS, and restores backups.
//!
//! - [`source`]: [`DiskSource`] and its local implementations (raw files with
//!   `SEEK_DATA`/`SEEK_HOLE`, VMDK through `sendense-vmdk`), detected by [`open_local`].
//! - [`error`]: [`ClientError`], [`SourceError`], [`CbtError`].
#![forbid(unsafe_code)]

pub mod error;
pub mod source;

pub use error::{CbtError, ClientError, SourceError};
pub use source::{
    BoxFuture, DiskSource, Extent, MemorySource, RawFileSource, VmdkSource, open_local,
};
