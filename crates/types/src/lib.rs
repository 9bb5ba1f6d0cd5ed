//! The types shared by the Sendense hub and client: the REST API's JSON bodies and the validated
//! names and ids inside them.
//!
//! One place for them (STYLE.md §1): the hub deserializes requests and serializes responses with
//! these types, the client does the opposite, so the two can never drift apart. Everything here
//! is plain data: serde, validation, no I/O.
//!
//! - [`names`]: [`VmName`], [`CredentialName`], [`DiskKey`], [`BackupId`], [`ChangeId`],
//!   [`ExportName`], all validated on construction and deserialization.
//! - [`timestamp`]: [`Timestamp`], RFC 3339 UTC with one-second resolution.
//! - [`jobs`]: agents, jobs and policies (the hub drives, agents connect out).
//! - [`api`]: requests (validated while deserialized, unknown fields refused), responses and the
//!   client's `--json` summary.
//! - [`retention`]: protected points, prune, verification state.
//! - [`files`]: file-level restore (partitions, listings).
//! - [`instant`]: instant recovery (writable exports over scratch overlays of a point).
//! - [`vm_config`]: a VM's captured configuration and restores into vCenter.
//! - [`users`]: web console users and their roles.
#![forbid(unsafe_code)]

/// Implements `as_str`, `Display` and `FromStr` for a unit enum named in JSON by fixed
/// strings (used by `jobs` and `vm_config`; declared before them so both see it).
macro_rules! lowercase_enum {
    ($ty:ident, $field:literal, $expected:literal, { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// The name used in JSON.
            #[must_use]
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)+
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = TypesError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($name => Ok(Self::$variant),)+
                    _ => Err(TypesError::InvalidField {
                        field: $field,
                        reason: concat!("must be ", $expected),
                    }),
                }
            }
        }
    };
}

pub mod api;
pub mod error;
pub mod files;
pub mod instant;
pub mod jobs;
pub mod names;
pub mod retention;
pub mod tier;
pub mod timestamp;
pub mod users;
pub mod vm_config;

pub use api::{
    ApiError, Backup, BackupDisk, BackupQuery, BackupStatus, BackupSummary, BackupType, Chain,
    CompleteBackupRequest, CompleteDisk, Credential, CredentialRequest, DiskSpec, DiskSummary,
    FailBackupRequest, Health, RegisterVmRequest, RepositoryInfo, RestoreDisk, RestoreExports,
    StartBackupRequest, VcenterTrust, Vm, VmUsage, error_codes,
};
pub use error::TypesError;
pub use files::{DiskPartitions, FileEntry, FileListing, FilesQuery, PartitionInfo};
pub use instant::{InstantDisk, InstantId, InstantList, InstantRecovery, InstantState};
pub use jobs::{
    Agent, AgentCredential, AgentEnrollment, AgentJob, AgentList, AgentState, BackupNowRequest,
    CreateAgentRequest, EnrollRequest, EnrollResponse, FinishJobRequest, HeartbeatProgress,
    HeartbeatRequest, HeartbeatResponse, Inventory, InventoryVm, Job, JobAccepted, JobKind,
    JobList, JobProgress, JobQuery, JobStatus, NextJobQuery, Policy, PolicyList, PolicyRequest,
    PolicyRun, Retention, RetryPolicy,
};
pub use names::{
    AgentName, BackupId, ChangeId, CredentialName, DiskKey, ExportName, JobId, PolicyName,
    TargetName, UserName, VmName, digest_path, image_path,
};
pub use retention::{
    BadRange, PruneAnswer, PruneRequest, UpdateBackupRequest, Verification, VerificationState,
};
pub use tier::{BackupCopy, CopyRequest, CopyState, Target, TargetList, TargetRequest};
pub use timestamp::{CivilTime, Timestamp};
pub use users::{CreateUserRequest, Role, SetPasswordRequest, User, UserList};
pub use vm_config::{
    ControllerConfig, ControllerKind, DiskConfig, Firmware, NicAdapter, NicConfig, Provisioning,
    RestoreJob, RestoreJobDisk, RestoreRequest, RestoreTarget, VM_CONFIG_VERSION, VmConfig,
};
