//! [`ClientError`], the one error of this crate: the client's own failures, wrapping the
//! transfer engine's and vCenter's errors.
//!
//! Variants carry typed fields and wrap causes with `#[source]`; messages name the fix where
//! there is one (a hub that is down, a wrong CA, a rejected token).

use std::io;
use std::path::PathBuf;

use sendense_transfer::TransferError;
use thiserror::Error;

/// An operation of the client failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Reading a source, writing a target or the transfer engine failed.
    #[error(transparent)]
    Transfer(#[from] TransferError),
    /// vCenter failed (login, snapshot, CBT, datastore reads).
    #[error(transparent)]
    Vsphere(#[from] sendense_vsphere::VsphereError),
    /// Changed areas were invalid.
    #[error("Disk {disk_key}: invalid changed areas")]
    Cbt {
        /// The disk.
        disk_key: u32,
        /// The cause: one of the `ChangedArea*` variants.
        #[source]
        source: Box<Self>,
    },
    /// The JSON did not parse as VMware's `DiskChangeInfo`.
    #[error("Changed areas are not DiskChangeInfo JSON: {message}")]
    ChangedAreasJson {
        /// What serde said.
        message: String,
    },
    /// The file is larger than [`crate::cbt::MAX_CHANGE_INFO_BYTES`].
    #[error("Changed-areas file is {size} bytes, more than the limit of {limit}")]
    ChangedAreasTooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// More areas than [`crate::cbt::MAX_CHANGED_AREAS`].
    #[error("Changed areas list {count} areas, more than the limit of {limit}")]
    TooManyChangedAreas {
        /// How many were listed (at least).
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// `startOffset`/`length` of the answer are not 512-aligned or pass the disk end.
    #[error(
        "Changed-area answer covers [{start_offset}, +{length}), which is not 512-byte aligned \
         or passes the disk end ({capacity} bytes)"
    )]
    ChangedAreasRange {
        /// `startOffset`.
        start_offset: u64,
        /// `length`.
        length: u64,
        /// The disk's capacity.
        capacity: u64,
    },
    /// One area is empty, unaligned, outside the answer's range, or past the disk end.
    #[error("Changed area #{index} (start {start}, length {length}) {reason}")]
    ChangedArea {
        /// Index of the area in `changedArea`.
        index: usize,
        /// Its `start`.
        start: u64,
        /// Its `length`.
        length: u64,
        /// What is wrong.
        reason: &'static str,
    },

    /// A local file (CA, token, changed areas, restore target) could not be used.
    #[error("Cannot use {what} {path}")]
    File {
        /// What the file is for (`"CA file"`, `"token file"`, ...).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The CA file holds no usable certificate.
    #[error("CA file {path} holds no PEM certificate")]
    NoCaCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The token file is empty.
    #[error("Token file {path} is empty")]
    EmptyToken {
        /// The file.
        path: PathBuf,
    },
    /// The hub could not be reached at all.
    #[error("Cannot reach hub at {url}: {detail} — is sendense-hub serve running?")]
    HubUnreachable {
        /// The hub's base URL.
        url: String,
        /// The lowest-level cause, e.g. `connection refused`.
        detail: String,
    },
    /// The TLS handshake with the hub failed (wrong CA, wrong host name).
    #[error("TLS with hub at {url} failed: {detail} — check --ca (the hub's DATA/tls/ca-cert.pem)")]
    HubCertificate {
        /// The hub's base URL.
        url: String,
        /// The lowest-level cause.
        detail: String,
    },
    /// The hub answered 401.
    #[error("Hub at {url} rejected the token — check --token-file (the hub's DATA/api.token)")]
    TokenRejected {
        /// The hub's base URL.
        url: String,
    },
    /// The hub answered an error.
    #[error("Hub answered {status} to {method} {path}: {code}: {message}")]
    HubStatus {
        /// HTTP method.
        method: &'static str,
        /// Request path.
        path: String,
        /// HTTP status code.
        status: u16,
        /// The hub's error code (`conflict`, `not_found`, ...).
        code: String,
        /// The hub's message.
        message: String,
    },
    /// Any other HTTP failure talking to the hub.
    #[error("Request {method} {path} to the hub failed: {detail}")]
    HubRequest {
        /// HTTP method.
        method: &'static str,
        /// Request path.
        path: String,
        /// What failed.
        detail: String,
    },
    /// The hub's answer did not match the API.
    #[error("Hub answered {method} {path} with an unexpected body: {detail}")]
    HubResponse {
        /// HTTP method.
        method: &'static str,
        /// Request path.
        path: String,
        /// What was wrong.
        detail: String,
    },
    /// A command-line or option value is invalid.
    #[error("Invalid {what}: {reason}")]
    InvalidArgument {
        /// Which argument.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The hub refused to start the backup because another backup of the VM is running (409):
    /// one run per VM. Nothing was done in vCenter (no snapshot created or removed).
    #[error(
        "Another backup of VM {vm} is running at the hub (one run per VM): nothing was done in vCenter; retry once it has ended"
    )]
    VmBusy {
        /// The VM's name at the hub.
        vm: String,
        /// The hub's 409 answer.
        #[source]
        source: Box<Self>,
    },

    /// A backup whose incremental CBT refused was restarted as a full, but the hub refused the
    /// full (another run took the VM in between): the snapshot has been removed.
    #[error("Restarting VM {vm}'s backup as a full ({reason}) was refused by the hub")]
    RestartRefused {
        /// The VM's name at the hub.
        vm: String,
        /// Why the incremental had to become a full.
        reason: String,
        /// The hub's answer.
        #[source]
        source: Box<Self>,
    },

    /// The VM's vCenter name cannot be its name at the hub.
    #[error("VM {name:?} cannot be stored at the hub: {reason}")]
    HubVmName {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },

    /// `--type incremental` was asked, but a full is needed.
    #[error("An incremental backup is not possible ({reason}); use --type auto or full")]
    IncrementalImpossible {
        /// Why a full is needed.
        reason: String,
    },

    /// The hub's parent change id of a disk is not the base CBT answered for.
    #[error("Disk {disk_key}: the hub's parent change id {hub:?} is not the CBT base {base}")]
    BaseMismatch {
        /// The disk.
        disk_key: u32,
        /// The base the changed areas are relative to.
        base: String,
        /// What the hub answered.
        hub: Option<String>,
    },

    /// A required command-line flag is missing.
    #[error("Missing {flag}")]
    MissingArgument {
        /// The flag.
        flag: &'static str,
    },
    /// A restore job followed to its end did not complete.
    #[error("Restore job {job_id} {status}: {error}")]
    RestoreJobEnded {
        /// The job.
        job_id: sendense_types::JobId,
        /// `failed` or `cancelled`.
        status: sendense_types::JobStatus,
        /// The job's error.
        error: String,
    },

    /// `--vcenter-credential` is not a valid credential name.
    #[error("Invalid credential name {name:?}: {reason}")]
    InvalidCredentialName {
        /// The name given.
        name: String,
        /// Why it is invalid.
        reason: String,
    },

    /// The hub could not hand out a vCenter session for a stored credential
    /// (`--vcenter-credential`): unknown credential, vCenter refused the login, hub unreachable.
    #[error("The hub could not open a vCenter session with credential {credential}")]
    CredentialSession {
        /// The credential's name.
        credential: String,
        /// The hub call's error (the hub's status and message).
        #[source]
        source: Box<Self>,
    },

    /// The backup completed but our snapshot could not be removed.
    #[error(
        "Backup {backup_id} completed, but the snapshot could not be removed: remove it in vCenter"
    )]
    SnapshotLeft {
        /// The completed backup.
        backup_id: String,
        /// The removal's error.
        #[source]
        source: Box<Self>,
    },

    /// An NBD source is larger than the disk the hub recorded for its key.
    #[error(
        "Disk {disk_key}: the source is {source_bytes} bytes, larger than the {recorded_bytes} bytes the hub recorded for this disk; check the KEY=URI mapping, or run --type full once if the disk really grew"
    )]
    SourceLargerThanDisk {
        /// The disk.
        disk_key: u32,
        /// The source's size.
        source_bytes: u64,
        /// The capacity the hub recorded.
        recorded_bytes: u64,
    },
    /// The hub's answer about a disk does not fit the disk (no NBD URI, a size that differs).
    #[error("Disk {disk_key}: {reason}")]
    DiskMismatch {
        /// The disk.
        disk_key: u32,
        /// What is wrong.
        reason: &'static str,
    },
    /// The hub's state does not fit the run (a backup the hub does not list after starting it).
    #[error("Unexpected hub state: {what}")]
    HubState {
        /// What was expected.
        what: &'static str,
    },
    /// `agent enroll` over a state folder that already holds an enrolled agent.
    #[error(
        "State folder {dir} already holds an enrolled agent; add --force to enroll again over it"
    )]
    AlreadyEnrolled {
        /// The state folder.
        dir: PathBuf,
    },
    /// The hub refused the enrollment token (wrong, already used or expired).
    #[error(
        "The hub refused the enrollment token for agent {name} ({detail}); a token is good for \
         one enrollment within 24 h: an admin must create a new one with POST /api/v1/agents \
         {{\"name\": \"{name}\"}}"
    )]
    EnrollmentRefused {
        /// The agent's name.
        name: String,
        /// The hub's status and message.
        detail: String,
    },
    /// The hub refused the agent's token (the agent was deleted or enrolled again elsewhere).
    #[error(
        "Hub at {url} rejected the agent token in {dir}: enroll this agent again (sendense-client \
         agent enroll --force) with a new enrollment token"
    )]
    AgentTokenRejected {
        /// The hub's base URL.
        url: String,
        /// The agent's state folder.
        dir: PathBuf,
    },
    /// Making the agent's key pair or certificate request failed.
    #[error("Certificate error {what}: {detail}")]
    Certificate {
        /// What was being done.
        what: &'static str,
        /// What rcgen said.
        detail: String,
    },
    /// A job the hub handed out lacks what running it needs.
    #[error("The job lacks {what}")]
    JobIncomplete {
        /// What is missing.
        what: &'static str,
    },
    /// The hub handed out a job of a kind agents do not run.
    #[error("This agent does not run {kind} jobs")]
    UnsupportedJob {
        /// The job's kind.
        kind: sendense_types::JobKind,
    },
    /// The user interrupted the run (Ctrl-C, SIGTERM or SIGHUP).
    #[error("Interrupted (Ctrl-C, SIGTERM or SIGHUP)")]
    Interrupted,
    /// The agent's NBD sources file does not parse or holds an invalid entry.
    #[error("NBD sources file {path}: {reason}")]
    NbdSourcesInvalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A backup job names a VM the agent's NBD sources file does not list.
    #[error("VM {vm} is not among this agent's NBD sources ({path}): add it there")]
    NbdSourceUnknown {
        /// The VM named by the job.
        vm: String,
        /// The agent's NBD sources file.
        path: PathBuf,
    },
    /// A VM's source hook failed, timed out or printed something that is not its answer.
    #[error("The {phase} hook of VM {vm} failed: {detail}")]
    NbdHook {
        /// The VM.
        vm: String,
        /// `begin` or `end`.
        phase: &'static str,
        /// How it failed (its exit status and stderr).
        detail: String,
    },
}

impl ClientError {
    /// Whether retrying cannot help (see [`TransferError::is_final`]).
    #[must_use]
    pub fn is_final(&self) -> bool {
        matches!(self, Self::Transfer(t) if t.is_final())
    }

    /// Whether the hub answered 404: the thing named does not exist, or (a hub older than a
    /// route) the route does not.
    #[must_use]
    pub fn is_missing_route(&self) -> bool {
        matches!(self, Self::HubStatus { status: 404, .. })
    }

    /// Whether a stop signal (SIGINT, SIGTERM, SIGHUP) ended the run.
    #[must_use]
    pub fn is_interrupted(&self) -> bool {
        matches!(
            self,
            Self::Interrupted | Self::Transfer(TransferError::Interrupted)
        )
    }
}
