//! The catalog's one error type and its stable [`ErrorKind`], which the hub maps to an HTTP
//! status in one place (`NotFound` 404, `Conflict` 409, `Invalid` 400, `Storage` 500).

use sendense_types::{
    AgentName, BackupId, BackupStatus, CredentialName, DiskKey, JobId, PolicyName, Timestamp,
    VmName,
};
use thiserror::Error;

/// What kind of failure a [`CatalogError`] is; stable for callers to branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The VM, backup or credential does not exist.
    NotFound,
    /// The request contradicts the catalog's state (a backup in progress, a dependent backup,
    /// a wrong status, no completed parent).
    Conflict,
    /// The request itself is malformed (unknown or missing disks, inconsistent record).
    Invalid,
    /// The database failed, is corrupt, or has an unsupported schema version.
    Storage,
    /// A secret presented (an enrollment token) does not match or has expired.
    Unauthorized,
}

/// A catalog operation failed. Nothing was changed when an operation returns an error: every
/// mutation is one redb write transaction.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// redb failed (I/O, corruption detected by redb, lock held by another process).
    #[error("Catalog storage failed")]
    Storage {
        /// The redb error.
        #[source]
        source: Box<redb::Error>,
    },
    /// A stored record does not decode.
    #[error("Corrupt catalog record {key:?} in table {table}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// The record's key.
        key: String,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
    /// A stored id does not parse.
    #[error("Corrupt id {key:?} in catalog table {table}")]
    CorruptId {
        /// The table.
        table: &'static str,
        /// The record's key.
        key: String,
        /// The validation error.
        #[source]
        source: sendense_types::TypesError,
    },
    /// An index entry (`active`, `heads`, `vm_backups`, `backup_order`) names a backup that is
    /// not stored.
    #[error("Catalog index {table} names missing backup {backup_id}")]
    DanglingIndex {
        /// The index table.
        table: &'static str,
        /// The missing backup.
        backup_id: BackupId,
    },
    /// A parent link points to a backup that is not in the catalog, or chains loop.
    #[error("Broken chain at backup {backup_id}: parent {parent} is missing or loops")]
    BrokenChain {
        /// The backup whose parent is missing.
        backup_id: BackupId,
        /// The missing parent.
        parent: BackupId,
    },
    /// The file was written by a newer or unknown version of the catalog.
    #[error(
        "Catalog schema version {found} is not supported (this build reads version {supported})"
    )]
    SchemaVersion {
        /// Version found in the file.
        found: u64,
        /// Version this build reads and writes.
        supported: u64,
    },
    /// No such VM.
    #[error("Unknown VM {vm}")]
    VmNotFound {
        /// The VM asked for.
        vm: VmName,
    },
    /// No such backup.
    #[error("Unknown backup {backup_id}")]
    BackupNotFound {
        /// The backup asked for.
        backup_id: BackupId,
    },
    /// No such credential.
    #[error("Unknown credential {name}")]
    CredentialNotFound {
        /// The credential asked for.
        name: CredentialName,
    },
    /// No such object-store target.
    #[error("Unknown target {name}")]
    TargetNotFound {
        /// The target asked for.
        name: sendense_types::TargetName,
    },
    /// A backup with this id exists already.
    #[error("Backup {backup_id} already exists")]
    BackupExists {
        /// The id.
        backup_id: BackupId,
    },
    /// The VM already has a pending or running backup.
    #[error("VM {vm} already has backup {backup_id} in progress")]
    BackupInProgress {
        /// The VM.
        vm: VmName,
        /// The backup in progress.
        backup_id: BackupId,
    },
    /// An incremental was asked for but the VM has no completed backup.
    #[error("VM {vm} has no completed backup to base an incremental on")]
    NoCompletedParent {
        /// The VM.
        vm: VmName,
    },
    /// An incremental's parent is not the VM's latest completed backup.
    #[error("Parent {parent} is not the latest completed backup {latest} of the VM")]
    ParentNotLatest {
        /// The parent named by the new backup.
        parent: BackupId,
        /// The VM's latest completed backup.
        latest: BackupId,
    },
    /// The backup is not in a state that allows the operation.
    #[error("Backup {backup_id} is {status}, expected {expected}")]
    WrongStatus {
        /// The backup.
        backup_id: BackupId,
        /// Its status.
        status: BackupStatus,
        /// What the operation needs.
        expected: &'static str,
    },
    /// Other backups are overlays of this one.
    #[error("Backup {backup_id} has dependent backups {dependents:?}")]
    HasDependents {
        /// The backup that was to be deleted.
        backup_id: BackupId,
        /// The backups whose parent it is.
        dependents: Vec<BackupId>,
    },
    /// The backup is protected (`PUT /api/v1/backups/{id}` `{protected: false}` first).
    #[error("Backup {backup_id} is protected: unprotect it before removing it")]
    Protected {
        /// The protected backup.
        backup_id: BackupId,
    },
    /// The VM's disks cannot change while one of its backups is in progress.
    #[error("VM {vm} cannot change its disks while backup {backup_id} is in progress")]
    VmBusy {
        /// The VM.
        vm: VmName,
        /// The backup in progress.
        backup_id: BackupId,
    },
    /// A disk key is not one of the backup's disks.
    #[error("Backup {backup_id} has no disk {disk_key}")]
    UnknownDisk {
        /// The backup.
        backup_id: BackupId,
        /// The disk asked for.
        disk_key: DiskKey,
    },
    /// A completion does not mention one of the backup's disks.
    #[error("Completion of backup {backup_id} is missing disk {disk_key}")]
    MissingDisk {
        /// The backup.
        backup_id: BackupId,
        /// The disk not mentioned.
        disk_key: DiskKey,
    },
    /// The same disk key appears twice.
    #[error("Disk {disk_key} appears more than once")]
    DuplicateDisk {
        /// The repeated key.
        disk_key: DiskKey,
    },
    /// A new backup names a disk the VM does not have, or with another capacity.
    #[error("VM {vm} has no disk {disk_key} of that capacity")]
    VmDiskMismatch {
        /// The VM.
        vm: VmName,
        /// The disk.
        disk_key: DiskKey,
    },
    /// No such agent.
    #[error("Unknown agent {agent}: create it first (POST /api/v1/agents)")]
    AgentNotFound {
        /// The agent asked for.
        agent: AgentName,
    },
    /// An agent of that name has enrolled already.
    #[error("Agent {agent} exists and has enrolled")]
    AgentExists {
        /// The agent.
        agent: AgentName,
    },
    /// The enrollment token is wrong, or names an agent that does not exist.
    #[error(
        "Enrollment token refused for agent {agent}: use the token POST /api/v1/agents answered for it"
    )]
    EnrollmentRefused {
        /// The agent named.
        agent: AgentName,
    },
    /// The enrollment token has expired.
    #[error(
        "The enrollment token of agent {agent} expired at {expired_at}: create the agent again for a new one"
    )]
    EnrollmentExpired {
        /// The agent.
        agent: AgentName,
        /// When the token expired.
        expired_at: Timestamp,
    },
    /// The enrollment token was used already.
    #[error("Agent {agent} has enrolled already: an enrollment token is good for one enrollment")]
    AlreadyEnrolled {
        /// The agent.
        agent: AgentName,
    },
    /// No such job.
    #[error("Unknown job {job_id}")]
    JobNotFound {
        /// The job asked for.
        job_id: JobId,
    },
    /// A job with this id exists already.
    #[error("Job {job_id} already exists")]
    JobExists {
        /// The id.
        job_id: JobId,
    },
    /// The VM already has a queued or running backup job.
    #[error("VM {vm} already has backup job {job_id} queued or running")]
    JobInProgress {
        /// The VM.
        vm: VmName,
        /// The job queued or running.
        job_id: JobId,
    },
    /// A restore to this target VM name is already queued or running.
    #[error("A restore to VM {target} is already queued or running: job {job_id}")]
    RestoreInProgress {
        /// The target VM name of both restores.
        target: String,
        /// The job queued or running.
        job_id: JobId,
    },
    /// A job record is inconsistent.
    #[error("Invalid job record {job_id}: {reason}")]
    InvalidJob {
        /// The job.
        job_id: JobId,
        /// What is wrong.
        reason: &'static str,
    },
    /// An index of jobs names a job that is not stored.
    #[error("Catalog job index names missing job {job_id:?}")]
    DanglingJobIndex {
        /// The id in the index.
        job_id: String,
    },
    /// No such policy.
    #[error("Unknown policy {name}")]
    PolicyNotFound {
        /// The policy asked for.
        name: PolicyName,
    },
    /// A policy of that name exists already.
    #[error("Policy {name} exists already: replace it with PUT /api/v1/policies/{name}")]
    PolicyExists {
        /// The policy.
        name: PolicyName,
    },
    /// No such console user.
    #[error("Unknown user {name}")]
    UserNotFound {
        /// The user asked for.
        name: sendense_types::UserName,
    },
    /// A console user of that name exists already.
    #[error(
        "User {name} exists already: change the password with PUT /api/v1/users/{name}/password"
    )]
    UserExists {
        /// The user.
        name: sendense_types::UserName,
    },
    /// A new backup record is inconsistent.
    #[error("Invalid backup record {backup_id}: {reason}")]
    InvalidRecord {
        /// The backup.
        backup_id: BackupId,
        /// What is wrong.
        reason: &'static str,
    },
}

impl CatalogError {
    /// The stable kind of this error.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Storage { .. }
            | Self::Corrupt { .. }
            | Self::CorruptId { .. }
            | Self::DanglingIndex { .. }
            | Self::BrokenChain { .. }
            | Self::DanglingJobIndex { .. }
            | Self::SchemaVersion { .. } => ErrorKind::Storage,
            Self::VmNotFound { .. }
            | Self::BackupNotFound { .. }
            | Self::CredentialNotFound { .. }
            | Self::TargetNotFound { .. }
            | Self::AgentNotFound { .. }
            | Self::JobNotFound { .. }
            | Self::PolicyNotFound { .. }
            | Self::UserNotFound { .. } => ErrorKind::NotFound,
            Self::EnrollmentRefused { .. } | Self::EnrollmentExpired { .. } => {
                ErrorKind::Unauthorized
            }
            Self::AgentExists { .. }
            | Self::AlreadyEnrolled { .. }
            | Self::JobExists { .. }
            | Self::JobInProgress { .. }
            | Self::RestoreInProgress { .. }
            | Self::PolicyExists { .. }
            | Self::UserExists { .. }
            | Self::BackupExists { .. }
            | Self::BackupInProgress { .. }
            | Self::NoCompletedParent { .. }
            | Self::ParentNotLatest { .. }
            | Self::WrongStatus { .. }
            | Self::HasDependents { .. }
            | Self::Protected { .. }
            | Self::VmBusy { .. } => ErrorKind::Conflict,
            Self::UnknownDisk { .. }
            | Self::MissingDisk { .. }
            | Self::DuplicateDisk { .. }
            | Self::VmDiskMismatch { .. }
            | Self::InvalidJob { .. }
            | Self::InvalidRecord { .. } => ErrorKind::Invalid,
        }
    }
}

macro_rules! from_redb {
    ($($ty:ty),*) => {
        $(impl From<$ty> for CatalogError {
            fn from(err: $ty) -> Self {
                Self::Storage { source: Box::new(redb::Error::from(err)) }
            }
        })*
    };
}

from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);
