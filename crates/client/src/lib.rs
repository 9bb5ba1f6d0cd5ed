//! The Sendense appliance client: reads a VM's disks, sends what matters to the hub over NBD
//! inside TLS, and restores backups.
//!
//! - [`backup`]: `sendense-client backup` of local disks as a library call ([`backup::run`]).
//! - [`vcenter`]: `sendense-client backup --vcenter` ([`vcenter::run`]): vCenter snapshot, CBT,
//!   the hub's chain, the transfer, the snapshot always removed.
//! - [`nbdsource`]: `sendense-client backup --nbd-source` ([`nbdsource::run`]): disks read from
//!   NBD exports (QEMU/KVM, libvirt pull-mode backups), incrementals from QEMU dirty bitmaps.
//! - [`agent`]: `sendense-client agent enroll` / `agent run`: the hub drives the appliance
//!   ([`agent::enroll`], [`agent::run`]).
//! - [`nbdjob`]: the agent's backup jobs of its own NBD sources (KVM guests through a hook),
//!   run with the flow of [`nbdsource`] ([`nbdjob::AgentRunner`]).
//! - [`restore`]: `sendense-client restore` as a library call ([`restore::run`]).
//! - [`vcenter_restore`]: `sendense-client restore --to-vcenter`: a restore job queued at the
//!   hub and followed ([`vcenter_restore::run`]).
//! - [`vm_restore`]: the agent's `restore` job: a point rebuilt as a VM in vCenter, or its
//!   disks added to an existing VM ([`vm_restore::run_job`]).
//! - [`cli`]: the `sendense-client` command line (parsing and dispatch).
//! - [`cbt`]: VMware `DiskChangeInfo` changed areas from a file, validated and merged.
//! - [`progress`]: progress shown to a person (indicatif bars, log lines).
//! - [`hub`]: the hub's REST API over HTTPS with its CA and a bearer token.
//! - [`credential`]: vCenter sessions issued by the hub for a stored credential.
//! - [`error`]: [`ClientError`], the crate's one error.
//!
//! Disk sources, planning and the transfer engine are `sendense-transfer`; the vCenter API is
//! `sendense-vsphere`.
#![forbid(unsafe_code)]

pub mod agent;
pub mod backup;
pub mod cbt;
pub mod cli;
pub mod credential;
pub mod error;
pub mod files;
pub mod hub;
pub mod nbdjob;
pub mod nbdsource;
pub mod progress;
pub mod range_get;
pub mod restore;
pub mod vcenter;
pub mod vcenter_restore;
pub mod vm_restore;

pub use error::ClientError;
