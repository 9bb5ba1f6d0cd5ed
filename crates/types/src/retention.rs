//! Retention and verification: protecting points, pruning a VM's points, and the verification
//! state every restore point carries.

use serde::{Deserialize, Serialize};

use crate::jobs::Retention;
use crate::names::{BackupId, DiskKey, JobId};
use crate::timestamp::Timestamp;

/// `PUT /api/v1/backups/{id}`: `{protected: true}` keeps a point from every prune.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateBackupRequest {
    /// Never remove this point while set.
    pub protected: bool,
}

/// `POST /api/v1/vms/{name}/prune`: which points to keep, and whether to only say so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PruneRequest {
    /// The keep options (Proxmox Backup Server's prune algorithm).
    pub retention: Retention,
    /// Answer what would be kept and removed; remove nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// The answer of a prune: every completed point of the VM in one of the two lists, newest
/// first; `job_id` names the queued `prune` job unless it was a dry run or nothing is removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneAnswer {
    /// Points kept.
    pub keep: Vec<BackupId>,
    /// Points removed (or that would be, for a dry run).
    pub remove: Vec<BackupId>,
    /// The queued prune job.
    #[serde(default)]
    pub job_id: Option<JobId>,
}

/// Where a point's verification stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerificationState {
    /// Never verified (or no verification could run).
    #[default]
    Unverified,
    /// Every disk read back exactly what was read at the source.
    Ok,
    /// Some bytes differ: see `bad_ranges`.
    Failed,
}

impl VerificationState {
    /// The lowercase name used in JSON.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Unverified => "unverified",
            Self::Ok => "ok",
            Self::Failed => "failed",
        }
    }
}

/// A range of a disk whose bytes differ from what was read at the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BadRange {
    /// The disk.
    pub disk_key: DiskKey,
    /// Byte offset in the disk.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
}

/// A backup's `verification`: `{state, at, bad_ranges}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    /// The outcome of the latest verification.
    pub state: VerificationState,
    /// When it ran.
    #[serde(default)]
    pub at: Option<Timestamp>,
    /// The ranges that read differently (failed only).
    #[serde(default)]
    pub bad_ranges: Vec<BadRange>,
    /// Set on a point that failed because it reads through a bad layer of an earlier point:
    /// that point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_through: Option<BackupId>,
    /// Words for a person: what failed, or why nothing could be checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
