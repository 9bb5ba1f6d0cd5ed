//! vSphere client for Sendense: back up VMware VMs with Changed Block Tracking, no VDDK.
//!
//! - [`Session`]: a logged-in vCenter SOAP session (rustls, re-login on expiry).
//! - [`soap`]: hand-written vim25 envelopes and bounded response parsing.
//! - [`cbt::changed_areas`]: the paged `QueryChangedDiskAreas` loop.
//! - [`DatastoreFile`]: `/folder` Range reads with bounded concurrency and 503 back-off.
//! - [`VmDiskSource`]: a [`sendense_transfer::DiskSource`] of a disk at a snapshot.
//! - [`VsphereBackup::prepare`]: the VMware CBT rules (snapshot, change ids, automatic fulls)
//!   and [`Prepared::finish`], which always removes our snapshot.
//! - [`config`]: a VM's configuration (`VirtualMachineConfigInfo`) read into
//!   [`sendense_types::VmConfig`]; [`Prepared::vm_config`] holds the backup snapshot's.
//! - [`restore()`]: a whole VM rebuilt in vCenter from its captured configuration, or a
//!   point's disks added to an existing VM, with cleanup of everything made on failure;
//!   [`upload`]: disk data written with `/folder` PUT (why not NFC: see there).
//! - [`xml`]: the bounded XML reader of vCenter answers (also used by `sendense-vsphere-sim`).
//!
//! A backup run, as the client binary drives it:
//!
//! ```no_run
//! # async fn run() -> Result<(), sendense_vsphere::VsphereError> {
//! use std::collections::BTreeMap;
//! use sendense_vsphere::{ConnectOptions, PrepareOptions, Session, TlsMode, VsphereBackup};
//!
//! let opts = ConnectOptions::new("vcenter.example:443", "backup@vsphere.local", "pw", TlsMode::Insecure);
//! let session = Session::connect(opts).await?;
//! // `previous`: per disk key, the change id (and capacity) of the last completed backup.
//! let prepared =
//!     VsphereBackup::prepare(&session, "dc1/vm/web01", &BTreeMap::new(), &PrepareOptions::default())
//!         .await?;
//! let _on_ctrl_c = prepared.cleanup_handle(); // `remove().await` from a signal handler
//! for disk in &prepared.disks {
//!     // Send `disk.extents` read from `disk.source`; hand `disk.new_change_id` to the hub's
//!     // `complete` only once the data is durable.
//!     let _ = (&disk.source, &disk.extents, &disk.new_change_id, &disk.mode);
//! }
//! prepared.finish().await?; // always, success or failure: removes our snapshot
//! session.logout().await?;
//! # Ok(()) }
//! ```

pub mod backup;
pub mod cbt;
pub mod config;
pub mod datastore;
pub mod error;
pub mod restore;
pub mod session;
pub mod soap;
pub mod source;
pub mod upload;
pub mod xml;

pub use backup::{
    DiskMode, PrepareOptions, Prepared, PreparedDisk, PreviousDisk, SNAPSHOT_PREFIX,
    SnapshotCleanup, VsphereBackup,
};
pub use cbt::{ALL_ALLOCATED, ChangedAreas, changed_areas};
pub use datastore::{DatastoreFile, DatastorePath, RangeAnswer, RangeBody, judge_range_answer};
pub use error::{ErrorKind, FaultKind, SoapFault, VsphereError};
pub use restore::{RestoreDisk, RestoredDisk, RestoredVm, restore};
pub use session::{
    ConnectOptions, IssueFuture, Login, Session, SessionIssuer, TlsMode, VmEntry, VmInfo,
    parse_login_answer, read_password_file,
};
pub use soap::{MoRef, VirtualDisk};
pub use source::VmDiskSource;
pub use upload::UploadOptions;
pub use xml::{MAX_DEPTH, MAX_ELEMENTS, MAX_RESPONSE_BYTES};
