//! The Sendense hub's embedded catalog on redb: VMs and their disks, backups and their per-disk
//! images and change ids, backup chains, sealed vCenter credentials, and the agents, jobs and
//! inventories of [`jobs`], the policies of [`policies`], and the console users of [`users`].
//!
//! redb stays behind [`Catalog`]'s typed methods (STYLE.md §6); the file carries a schema version
//! and a build refuses a version it does not know. Every mutation is a single write transaction,
//! so the catalog's invariants (one backup in progress per VM, incrementals only on top of the
//! VM's latest completed backup, the chain advancing only when a backup completes) hold after
//! any crash. See [`catalog`] for the tables and invariants.
//!
//! A backup's life, as the hub drives it:
//!
//! ```
//! use sendense_catalog::{BackupRecord, Catalog, DiskCompletion};
//! use sendense_types::{BackupId, BackupStatus, DiskKey, DiskSpec, RegisterVmRequest, Timestamp};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let catalog = Catalog::open_in(dir.path())?;
//! let now = Timestamp::now();
//! let spec = RegisterVmRequest::new(
//!     "web01".parse()?,
//!     vec![DiskSpec { key: DiskKey(2000), capacity_bytes: 1 << 30 }],
//! )?;
//! let vm = catalog.upsert_vm(&spec, now)?;
//!
//! // `auto`: incremental on the latest completed backup if there is one, else full.
//! let parent = catalog.latest_completed(&vm.name)?;
//! let record = BackupRecord::new(
//!     BackupId::new(&vm.name, now),
//!     &vm,
//!     parent.as_ref(),
//!     BackupStatus::Running,
//!     now,
//! );
//! catalog.create_backup(&record)?; // 409-kind error if one is already running
//!
//! // ... data flows into the images ...
//! let done = [DiskCompletion {
//!     disk_key: DiskKey(2000),
//!     change_id: Some("52 3c 7e/12".parse()?),
//!     bytes_written: 4096,
//!     digests: false,
//! }];
//! catalog.complete_backup(&record.backup_id, &done, Timestamp::now())?;
//! assert_eq!(catalog.chain(&vm.name)?.len(), 1);
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

pub mod catalog;
pub mod error;
pub mod instant;
pub mod jobs;
pub mod maintenance;
pub mod policies;
pub mod record;
pub mod tier;
pub mod users;

pub use catalog::{Catalog, FILE_NAME, SCHEMA_VERSION};
pub use error::{CatalogError, ErrorKind};
pub use instant::{InstantDiskRecord, InstantRecord};
pub use jobs::{AgentRecord, Claim, Enrollment, JobRecord};
pub use maintenance::{MergeDisk, MergeKind, MergePhase, MergeStep};
pub use policies::{CompletedBackup, PolicyRecord};
pub use record::{BackupRecord, CredentialRecord, DiskCompletion, DiskRecord, StoredVmConfig};
pub use tier::{CopyRecord, TargetRecord, UploadRecord};
pub use users::{SessionRecord, UserRecord};
