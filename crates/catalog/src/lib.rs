//! The Sendense hub's embedded catalog on redb: VMs and their disks, backups and their per-disk
//! images and change ids, backup chains, and sealed vCenter credentials.
//!
//! redb stays behind [`Catalog`]'s typed methods (STYLE.md §6); the file carries a schema version
//! and a build refuses a version it does not know. Every mutation is a single write transaction,
//! so the catalog's invariants (one backup in progress per VM, incrementals only on top of the
//! VM's latest completed backup, the chain advancing only when a backup completes) hold after
//! any crash. See [`catalog`] for the tables and invariants.
#![forbid(unsafe_code)]

pub mod catalog;
pub mod error;
pub mod record;

pub use catalog::{Catalog, FILE_NAME, SCHEMA_VERSION};
pub use error::{CatalogError, ErrorKind};
pub use record::{BackupRecord, CredentialRecord, DiskCompletion, DiskRecord};
