//! The JSON bodies of the REST API (`/api/v1/...`), named exactly as DESIGN.md names them, and the
//! client's `--json` backup summary.
//!
//! Requests are validated while they are deserialized (`#[serde(try_from = ...)]` from a private
//! wire struct with `deny_unknown_fields`), so a request value that exists is valid and a bad body
//! is refused with a message naming the field. Their fields are private, read through accessors;
//! build them in Rust with their `new` constructors, which apply the same checks. Responses are
//! plain structs with public fields: the hub builds them from its catalog.
//!
//! Optional response fields are always present in the JSON, as `null` when unknown.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::TypesError;
use crate::names::{AgentName, BackupId, ChangeId, CredentialName, DiskKey, ExportName, VmName};
use crate::retention::Verification;
use crate::timestamp::Timestamp;

/// Largest disk capacity accepted: 64 TiB, VMware's limit for a virtual disk.
pub const MAX_CAPACITY_BYTES: u64 = 64 << 40;
/// Disk capacities must be a multiple of this sector size.
pub const SECTOR_SIZE: u64 = 512;
/// Most disks one VM (or one request) may list.
pub const MAX_DISKS: usize = 512;
/// Most restore points one chain holds (its full and incrementals): past it the hub's `auto`
/// starts a new full and an explicit incremental is refused (409). Clients that choose the
/// backup type themselves (the vCenter flow) use it to start the full in time.
pub const MAX_CHAIN_LENGTH: usize = 32;
/// Longest failure reason, in bytes.
pub const MAX_REASON_LEN: usize = 4096;
/// Longest credential host name, in bytes.
pub const MAX_HOST_LEN: usize = 255;
/// Longest credential user name, in bytes.
pub const MAX_USERNAME_LEN: usize = 256;
/// Longest credential password, in bytes.
pub const MAX_PASSWORD_LEN: usize = 1024;

/// Stable machine-readable codes for [`ApiError::error`].
pub mod error_codes {
    /// Malformed or invalid request body or query (HTTP 400).
    pub const BAD_REQUEST: &str = "bad_request";
    /// Missing or wrong bearer token (HTTP 401).
    pub const UNAUTHORIZED: &str = "unauthorized";
    /// The token is valid but may not call this route, e.g. an agent's token on an admin route
    /// (HTTP 403).
    pub const FORBIDDEN: &str = "forbidden";
    /// Unknown VM, backup, credential or route (HTTP 404).
    pub const NOT_FOUND: &str = "not_found";
    /// The request contradicts the current state, e.g. a second running backup (HTTP 409).
    pub const CONFLICT: &str = "conflict";
    /// The hub failed (HTTP 500).
    pub const INTERNAL: &str = "internal";
    /// A system the hub talks to on the caller's behalf (vCenter) failed or refused (HTTP 502).
    pub const BAD_GATEWAY: &str = "bad_gateway";
    /// The hub is shutting down (HTTP 503).
    pub const UNAVAILABLE: &str = "unavailable";
    /// The repository's file system cannot hold what the request needs (HTTP 507).
    pub const INSUFFICIENT_STORAGE: &str = "insufficient_storage";
    /// A restore point's partition or file system cannot be read: damaged, or a kind Sendense
    /// does not read (HTTP 422).
    pub const UNPROCESSABLE: &str = "unprocessable";
    /// A `Range` header outside the file (HTTP 416).
    pub const RANGE_NOT_SATISFIABLE: &str = "range_not_satisfiable";
}

/// The kind of backup asked for. The hub resolves `auto` into `full` or `incremental`; a stored
/// backup is never `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupType {
    /// Every allocated extent of every disk, into standalone images.
    Full,
    /// Only what CBT reports as changed since the parent, into overlays of the parent's images.
    Incremental,
    /// Incremental if the VM has a completed chain, otherwise full.
    Auto,
}

impl BackupType {
    /// The lowercase name used in JSON.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Incremental => "incremental",
            Self::Auto => "auto",
        }
    }
}

impl fmt::Display for BackupType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BackupType {
    type Err = TypesError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "full" => Ok(Self::Full),
            "incremental" => Ok(Self::Incremental),
            "auto" => Ok(Self::Auto),
            _ => Err(TypesError::InvalidField {
                field: "backup_type",
                reason: "must be full, incremental or auto",
            }),
        }
    }
}

/// Where a backup is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupStatus {
    /// Created, images not yet receiving data.
    Pending,
    /// Exports open, receiving data.
    Running,
    /// Flushed, checked, renamed into place; the chain advanced.
    Completed,
    /// Given up; partial images removed; the chain untouched.
    Failed,
}

impl BackupStatus {
    /// The lowercase name used in JSON.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }

    /// Whether the backup is still in progress (`pending` or `running`).
    #[must_use]
    pub const fn is_active(self) -> bool {
        matches!(self, Self::Pending | Self::Running)
    }
}

impl fmt::Display for BackupStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BackupStatus {
    type Err = TypesError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(Self::Pending),
            "running" => Ok(Self::Running),
            "completed" => Ok(Self::Completed),
            "failed" => Ok(Self::Failed),
            _ => Err(TypesError::InvalidField {
                field: "status",
                reason: "must be pending, running, completed or failed",
            }),
        }
    }
}

/// One virtual disk of a VM: `{key, capacity_bytes}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    /// VMware device key.
    pub key: DiskKey,
    /// Size of the disk in bytes.
    pub capacity_bytes: u64,
}

impl DiskSpec {
    /// Checks the capacity: more than 0, at most 64 TiB, a multiple of 512.
    ///
    /// # Errors
    /// [`TypesError::InvalidCapacity`] naming the rule broken.
    pub fn validate(&self) -> Result<(), TypesError> {
        let reason = if self.capacity_bytes == 0 {
            "must be more than 0"
        } else if self.capacity_bytes > MAX_CAPACITY_BYTES {
            "must be at most 64 TiB"
        } else if !self.capacity_bytes.is_multiple_of(SECTOR_SIZE) {
            "must be a multiple of 512"
        } else {
            return Ok(());
        };
        Err(TypesError::InvalidCapacity {
            disk_key: self.key.get(),
            capacity_bytes: self.capacity_bytes,
            reason,
        })
    }
}

/// Checks a list of disk keys: 1..=[`MAX_DISKS`] entries, no key twice.
fn check_disk_keys(keys: impl ExactSizeIterator<Item = DiskKey>) -> Result<(), TypesError> {
    if keys.len() == 0 {
        return Err(TypesError::InvalidField {
            field: "disks",
            reason: "must list at least one disk",
        });
    }
    if keys.len() > MAX_DISKS {
        return Err(TypesError::InvalidField {
            field: "disks",
            reason: "too many disks",
        });
    }
    let mut seen = BTreeSet::new();
    for key in keys {
        if !seen.insert(key) {
            return Err(TypesError::DuplicateDiskKey {
                disk_key: key.get(),
            });
        }
    }
    Ok(())
}

/// `POST /api/v1/vms`: register or update a VM, `{name, disks: [{key, capacity_bytes}]}`.
///
/// Always valid: at least one disk, keys unique, every capacity valid ([`DiskSpec::validate`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RegisterVmWire")]
pub struct RegisterVmRequest {
    name: VmName,
    disks: Vec<DiskSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterVmWire {
    name: VmName,
    disks: Vec<DiskSpec>,
}

impl TryFrom<RegisterVmWire> for RegisterVmRequest {
    type Error = TypesError;

    fn try_from(wire: RegisterVmWire) -> Result<Self, Self::Error> {
        Self::new(wire.name, wire.disks)
    }
}

impl RegisterVmRequest {
    /// A validated request.
    ///
    /// # Errors
    /// [`TypesError`] if there is no disk, a key repeats or a capacity is invalid.
    pub fn new(name: VmName, disks: Vec<DiskSpec>) -> Result<Self, TypesError> {
        check_disk_keys(disks.iter().map(|d| d.key))?;
        disks.iter().try_for_each(DiskSpec::validate)?;
        Ok(Self { name, disks })
    }

    /// The VM's name.
    #[must_use]
    pub fn name(&self) -> &VmName {
        &self.name
    }

    /// The VM's disks, in request order.
    #[must_use]
    pub fn disks(&self) -> &[DiskSpec] {
        &self.disks
    }
}

/// `POST /api/v1/backups`: `{vm_name, backup_type, base_backup_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartBackupRequest {
    /// The VM to back up.
    pub vm_name: VmName,
    /// Full, incremental, or auto (incremental when possible).
    pub backup_type: BackupType,
    /// The backup the caller's changes are relative to (a file source's `--base-backup`): the
    /// hub refuses the start (409) when the parent it would choose is another one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_backup_id: Option<BackupId>,
}

/// Longest snapshot managed-object id accepted in a [`SnapshotRequest`], in bytes.
pub const MAX_SNAPSHOT_MOREF_LEN: usize = 80;

/// `POST /api/v1/backups/{id}/snapshot`: `{snapshot_moref}`, the vCenter snapshot a running
/// backup reads from (e.g. `snapshot-42`), recorded with the backup so that another run of the
/// same VM removes only leftover snapshots no running backup owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SnapshotWire")]
pub struct SnapshotRequest {
    snapshot_moref: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotWire {
    snapshot_moref: String,
}

impl TryFrom<SnapshotWire> for SnapshotRequest {
    type Error = TypesError;

    fn try_from(wire: SnapshotWire) -> Result<Self, Self::Error> {
        Self::new(wire.snapshot_moref)
    }
}

impl SnapshotRequest {
    /// A validated request: 1 to 80 bytes of ASCII letters, digits, `-`, `_`, `.` or `:`.
    ///
    /// # Errors
    /// [`TypesError::InvalidField`] naming `snapshot_moref`.
    pub fn new(snapshot_moref: String) -> Result<Self, TypesError> {
        let valid = !snapshot_moref.is_empty()
            && snapshot_moref.len() <= MAX_SNAPSHOT_MOREF_LEN
            && snapshot_moref
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        if !valid {
            return Err(TypesError::InvalidField {
                field: "snapshot_moref",
                reason: "must be 1 to 80 characters of A-Z a-z 0-9 - _ . :",
            });
        }
        Ok(Self { snapshot_moref })
    }

    /// The snapshot's managed-object id.
    #[must_use]
    pub fn snapshot_moref(&self) -> &str {
        &self.snapshot_moref
    }
}

/// The answer of `POST` and `GET /api/v1/backups/{id}/snapshot`: `{backup_id, snapshot_moref}`,
/// the vCenter snapshot a running backup owns (`null` when none is recorded or the backup is no
/// longer running: its snapshot, if still there, is a leftover).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSnapshot {
    /// The backup.
    pub backup_id: BackupId,
    /// The snapshot's managed-object id while the backup runs.
    pub snapshot_moref: Option<String>,
}

/// One disk in [`CompleteBackupRequest`]: `{disk_key, change_id, bytes_transferred}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompleteDisk {
    /// The disk.
    pub disk_key: DiskKey,
    /// The VMware change id of the snapshot that was copied (the base of the next incremental);
    /// `null` for sources without CBT.
    #[serde(default)]
    pub change_id: Option<ChangeId>,
    /// Bytes the client sent for this disk.
    pub bytes_transferred: u64,
}

/// `POST /api/v1/backups/{id}/complete`: `{disks: [{disk_key, change_id, bytes_transferred}]}`.
///
/// Always valid: at least one disk, keys unique.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "CompleteBackupWire")]
pub struct CompleteBackupRequest {
    disks: Vec<CompleteDisk>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompleteBackupWire {
    disks: Vec<CompleteDisk>,
}

impl TryFrom<CompleteBackupWire> for CompleteBackupRequest {
    type Error = TypesError;

    fn try_from(wire: CompleteBackupWire) -> Result<Self, Self::Error> {
        Self::new(wire.disks)
    }
}

impl CompleteBackupRequest {
    /// A validated request.
    ///
    /// # Errors
    /// [`TypesError`] if there is no disk or a key repeats.
    pub fn new(disks: Vec<CompleteDisk>) -> Result<Self, TypesError> {
        check_disk_keys(disks.iter().map(|d| d.disk_key))?;
        Ok(Self { disks })
    }

    /// The disks, in request order.
    #[must_use]
    pub fn disks(&self) -> &[CompleteDisk] {
        &self.disks
    }
}

/// `POST /api/v1/backups/{id}/fail`: `{reason}`, 1 to 4096 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "FailBackupWire")]
pub struct FailBackupRequest {
    reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FailBackupWire {
    reason: String,
}

impl TryFrom<FailBackupWire> for FailBackupRequest {
    type Error = TypesError;

    fn try_from(wire: FailBackupWire) -> Result<Self, Self::Error> {
        Self::new(wire.reason)
    }
}

impl FailBackupRequest {
    /// A validated request.
    ///
    /// # Errors
    /// [`TypesError::InvalidField`] if the reason is empty or longer than 4096 bytes.
    pub fn new(reason: String) -> Result<Self, TypesError> {
        check_text("reason", &reason, MAX_REASON_LEN)?;
        Ok(Self { reason })
    }

    /// Why the client gave up.
    #[must_use]
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// How the hub checks a vCenter's certificate: chosen when the credential is created and
/// stored with it; no later request can change it.
///
/// On the wire (in [`CredentialRequest`] and [`Credential`]) it is the field `ca_pem` or
/// `insecure: true`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VcenterTrust {
    /// Verify vCenter's certificate against these PEM CA certificates.
    CaPem(String),
    /// Accept any certificate vCenter presents.
    Insecure,
}

impl VcenterTrust {
    /// From the wire's `ca_pem` and `insecure` fields: exactly one of them.
    ///
    /// # Errors
    /// [`TypesError::InvalidField`] when both or neither are given, or `ca_pem` is empty,
    /// longer than [`MAX_CA_PEM_LEN`] or holds no `BEGIN CERTIFICATE` block.
    pub fn from_fields(ca_pem: Option<String>, insecure: bool) -> Result<Self, TypesError> {
        match (ca_pem, insecure) {
            (Some(pem), false) => Self::ca_pem(pem),
            (None, true) => Ok(Self::Insecure),
            (Some(_), true) => Err(TypesError::InvalidField {
                field: "insecure",
                reason: "must not be true together with ca_pem",
            }),
            (None, false) => Err(TypesError::InvalidField {
                field: "ca_pem",
                reason: "is required unless insecure is true (how the hub checks vCenter's certificate)",
            }),
        }
    }

    /// Verify vCenter's certificate against `pem` (1 byte to 256 KiB holding a certificate).
    ///
    /// # Errors
    /// [`TypesError::InvalidField`] naming `ca_pem`.
    pub fn ca_pem(pem: String) -> Result<Self, TypesError> {
        if pem.len() > MAX_CA_PEM_LEN || !pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(TypesError::InvalidField {
                field: "ca_pem",
                reason: "must be up to 256 KiB of PEM holding a CERTIFICATE block",
            });
        }
        Ok(Self::CaPem(pem))
    }
}

/// `POST /api/v1/credentials`: `{name, host, username, password, ca_pem or insecure, agent}`.
///
/// Its `Debug` never shows the password; it is not `Serialize`-d back in any response.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "CredentialWire", into = "CredentialWire")]
pub struct CredentialRequest {
    name: CredentialName,
    host: String,
    username: String,
    password: String,
    trust: VcenterTrust,
    agent: Option<AgentName>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialWire {
    name: CredentialName,
    host: String,
    username: String,
    password: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ca_pem: Option<String>,
    #[serde(default)]
    insecure: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    agent: Option<AgentName>,
}

impl TryFrom<CredentialWire> for CredentialRequest {
    type Error = TypesError;

    fn try_from(wire: CredentialWire) -> Result<Self, Self::Error> {
        let trust = VcenterTrust::from_fields(wire.ca_pem, wire.insecure)?;
        Ok(
            Self::new(wire.name, wire.host, wire.username, wire.password, trust)?
                .with_agent(wire.agent),
        )
    }
}

impl From<CredentialRequest> for CredentialWire {
    fn from(req: CredentialRequest) -> Self {
        let (ca_pem, insecure) = match req.trust {
            VcenterTrust::CaPem(pem) => (Some(pem), false),
            VcenterTrust::Insecure => (None, true),
        };
        Self {
            name: req.name,
            host: req.host,
            username: req.username,
            password: req.password,
            ca_pem,
            insecure,
            agent: req.agent,
        }
    }
}

impl fmt::Debug for CredentialRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialRequest")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("trust", &self.trust)
            .field("agent", &self.agent)
            .finish()
    }
}

impl CredentialRequest {
    /// A validated request: host 1..=255 bytes without whitespace, `/` or control characters;
    /// username 1..=256 bytes without control characters; password 1..=1024 bytes; the trust
    /// choice for vCenter's certificate, kept with the credential.
    ///
    /// # Errors
    /// [`TypesError::InvalidField`] naming the field.
    pub fn new(
        name: CredentialName,
        host: String,
        username: String,
        password: String,
        trust: VcenterTrust,
    ) -> Result<Self, TypesError> {
        check_text("host", &host, MAX_HOST_LEN)?;
        if host.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(TypesError::InvalidField {
                field: "host",
                reason: "must not contain whitespace or '/'",
            });
        }
        check_text("username", &username, MAX_USERNAME_LEN)?;
        if password.is_empty() || password.len() > MAX_PASSWORD_LEN {
            return Err(TypesError::InvalidField {
                field: "password",
                reason: "must be 1 to 1024 bytes",
            });
        }
        if let VcenterTrust::CaPem(pem) = &trust {
            VcenterTrust::ca_pem(pem.clone())?;
        }
        Ok(Self {
            name,
            host,
            username,
            password,
            trust,
            agent: None,
        })
    }

    /// The same request naming the agent that reaches this vCenter (DESIGN.md "Agents and
    /// jobs"): the hub hands the password to that agent only.
    #[must_use]
    pub fn with_agent(mut self, agent: Option<AgentName>) -> Self {
        self.agent = agent;
        self
    }

    /// The agent that reaches this vCenter, if one is named.
    #[must_use]
    pub fn agent(&self) -> Option<&AgentName> {
        self.agent.as_ref()
    }

    /// How the hub checks vCenter's certificate for this credential.
    #[must_use]
    pub fn trust(&self) -> &VcenterTrust {
        &self.trust
    }

    /// The credential's name.
    #[must_use]
    pub fn name(&self) -> &CredentialName {
        &self.name
    }

    /// The vCenter host name.
    #[must_use]
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The vCenter user name.
    #[must_use]
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The plaintext password: seal it at once, never log it.
    #[must_use]
    pub fn password(&self) -> &str {
        &self.password
    }
}

/// Checks a free-text field: not empty, at most `max` bytes, no control characters.
pub(crate) fn check_text(field: &'static str, value: &str, max: usize) -> Result<(), TypesError> {
    let reason = if value.is_empty() {
        "must not be empty"
    } else if value.len() > max {
        "is too long"
    } else if value.chars().any(char::is_control) {
        "must not contain control characters"
    } else {
        return Ok(());
    };
    Err(TypesError::InvalidField { field, reason })
}

/// The query of `GET /api/v1/backups?vm_name=&status=`; both filters optional, and an empty
/// value (`vm_name=`) means no filter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupQuery {
    /// Only this VM's backups.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "empty_as_none"
    )]
    pub vm_name: Option<VmName>,
    /// Only backups in this state.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "empty_as_none"
    )]
    pub status: Option<BackupStatus>,
}

/// Deserializes an optional string field through `FromStr`, an empty string being `None`.
pub(crate) fn empty_as_none<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    match Option::<String>::deserialize(deserializer)?.as_deref() {
        None | Some("") => Ok(None),
        Some(text) => text.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

/// A registered VM: `{name, disks, created_at, updated_at}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vm {
    /// The VM's name.
    pub name: VmName,
    /// Its disks, ordered by key.
    pub disks: Vec<DiskSpec>,
    /// When it was first registered.
    pub created_at: Timestamp,
    /// When it was last registered or updated.
    pub updated_at: Timestamp,
}

/// One disk of a [`Backup`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupDisk {
    /// The disk.
    pub disk_key: DiskKey,
    /// The disk's size when the backup was taken.
    pub capacity_bytes: u64,
    /// The image, relative to `DATA/repository` (`<vm>/disk-<key>/<backup_id>.qcow2`).
    pub file: Option<String>,
    /// The write export while the backup runs; `null` otherwise.
    pub export_name: Option<ExportName>,
    /// `nbds://HOST:PORT/EXPORT_NAME` while the backup runs; `null` otherwise.
    pub nbd_uri: Option<String>,
    /// The change id of the parent backup's disk: ask CBT for changes since this one.
    pub parent_change_id: Option<ChangeId>,
    /// The change id this backup captured, once completed.
    pub change_id: Option<ChangeId>,
    /// Bytes written into the image so far.
    pub bytes_written: u64,
}

/// A backup as the API answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backup {
    /// The backup's id.
    pub backup_id: BackupId,
    /// The VM backed up.
    pub vm_name: VmName,
    /// `full` or `incremental` (never `auto` once stored).
    pub backup_type: BackupType,
    /// Where it is in its life.
    pub status: BackupStatus,
    /// The backup this one is an overlay of; `null` for a full.
    pub parent_backup_id: Option<BackupId>,
    /// When it was started.
    pub created_at: Timestamp,
    /// When it completed; `null` unless completed.
    pub completed_at: Option<Timestamp>,
    /// Why it failed; `null` unless failed.
    pub failure_reason: Option<String>,
    /// Why the hub made this a full when `auto` (or a chain that could not continue) was asked
    /// for; `null` otherwise.
    #[serde(default)]
    pub full_reason: Option<String>,
    /// A completed backup whose image files were found missing: it cannot be restored and is
    /// never the parent of a new incremental.
    #[serde(default)]
    pub files_missing: bool,
    /// Its files live only in a target's bucket (`POST /api/v1/backups/{id}/evict`); a
    /// restore fetches them back first.
    #[serde(default)]
    pub evicted: bool,
    /// Never removed by a prune while set (`PUT /api/v1/backups/{id}`).
    #[serde(default)]
    pub protected: bool,
    /// The latest verification of this point.
    #[serde(default)]
    pub verification: Verification,
    /// Its disks, ordered by key.
    pub disks: Vec<BackupDisk>,
    /// The VM's configuration captured at this backup (`PUT /api/v1/backups/{id}/vm_config`);
    /// `null` for a backup taken before capture existed, or whose config is of a later
    /// version than this build knows.
    #[serde(default)]
    pub vm_config: Option<crate::vm_config::VmConfig>,
    /// Its copies to object-store targets (DESIGN.md "Object tier").
    #[serde(default)]
    pub copies: Vec<crate::tier::BackupCopy>,
}

/// `GET /api/v1/backups/chain/{vm_name}`: the full backup, then its incrementals, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chain {
    /// The VM.
    pub vm_name: VmName,
    /// Oldest (the full) first.
    pub backups: Vec<Backup>,
}

/// One VM's share of the repository in [`RepositoryInfo`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmUsage {
    /// The VM.
    pub vm_name: VmName,
    /// Bytes its images occupy on disk.
    pub used_bytes: u64,
    /// How many of its backups hold files in the repository.
    pub backups: u64,
}

/// `GET /api/v1/repository`: space and contents of `DATA/repository`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepositoryInfo {
    /// Size of the file system holding the repository.
    pub capacity_bytes: u64,
    /// Bytes the repository's files occupy on disk.
    pub used_bytes: u64,
    /// Bytes still available to the hub on that file system.
    pub free_bytes: u64,
    /// Per VM, ordered by name.
    pub vms: Vec<VmUsage>,
    /// Files under the repository that the catalog does not know, relative to it. The hub
    /// never deletes them: an operator decides.
    pub unknown_files: Vec<String>,
    /// Set when free space is below the hub's warning threshold: what to do, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_space_warning: Option<String>,
}

/// One disk of [`RestoreExports`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreDisk {
    /// The disk.
    pub disk_key: DiskKey,
    /// The read-only export of that disk's chain as of the backup.
    pub export_name: ExportName,
    /// `nbds://HOST:PORT/EXPORT_NAME`.
    pub nbd_uri: String,
}

/// `POST /api/v1/backups/{id}/exports`: `{disks: [{disk_key, export_name, nbd_uri}]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreExports {
    /// One read-only export per disk.
    pub disks: Vec<RestoreDisk>,
}

/// A stored vCenter credential as answered: no password, ever.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    /// The credential's name.
    pub name: CredentialName,
    /// The vCenter host name.
    pub host: String,
    /// The vCenter user name.
    pub username: String,
    /// When it was stored.
    pub created_at: Timestamp,
    /// The PEM CA certificate(s) vCenter's certificate is checked against (public data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// Any vCenter certificate is accepted.
    #[serde(default)]
    pub insecure: bool,
    /// The credential was stored before the trust choice was kept with it: the hub refuses to
    /// use it until it is created again with `ca_pem` or `insecure`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub needs_trust_choice: bool,
    /// The agent that reaches this vCenter and alone receives its password.
    #[serde(default)]
    pub agent: Option<AgentName>,
}

/// Longest CA bundle accepted in a credential's `ca_pem`, in bytes.
pub const MAX_CA_PEM_LEN: usize = 256 * 1024;

/// `POST /api/v1/credentials/{name}/session`: an empty object `{}`. The hub checks vCenter's
/// certificate as the credential's stored trust choice says; a request naming `ca_pem` or
/// `insecure` is refused, so no caller can weaken it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SessionRequestWire")]
pub struct SessionRequest {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionRequestWire {
    #[serde(default)]
    ca_pem: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    insecure: Option<serde::de::IgnoredAny>,
}

impl TryFrom<SessionRequestWire> for SessionRequest {
    type Error = TypesError;

    fn try_from(wire: SessionRequestWire) -> Result<Self, Self::Error> {
        let field = match (wire.ca_pem, wire.insecure) {
            (None, None) => return Ok(Self {}),
            (Some(_), _) => "ca_pem",
            (None, Some(_)) => "insecure",
        };
        Err(TypesError::InvalidField {
            field,
            reason: "cannot be chosen per session: the trust choice is stored with the \
                     credential (create it again with POST /api/v1/credentials to change it)",
        })
    }
}

/// The answer of `POST /api/v1/credentials/{name}/session`: a vCenter session the hub
/// logged in with the credential's sealed password. Never the password itself.
///
/// `session_cookie` is a bearer secret (the value of vCenter's `vmware_soap_session`
/// cookie): its `Debug` hides it, and it must not be logged.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VcenterSession {
    /// The credential's vCenter, `HOST[:PORT]`.
    pub host: String,
    /// The value of the `vmware_soap_session` cookie, to send as
    /// `Cookie: vmware_soap_session=<value>` on SOAP calls and datastore reads.
    pub session_cookie: String,
}

impl fmt::Debug for VcenterSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VcenterSession")
            .field("host", &self.host)
            .field("session_cookie", &"<redacted>")
            .finish()
    }
}

/// `GET /api/v1/health`: `{status, version}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `"ok"` when the hub serves requests.
    pub status: String,
    /// The hub's version.
    pub version: String,
}

/// Every error answer: `{error, message}`, `error` one of [`error_codes`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// Stable machine-readable code, e.g. `"not_found"`.
    pub error: String,
    /// Human-readable explanation.
    pub message: String,
}

impl ApiError {
    /// An error answer with a code from [`error_codes`].
    #[must_use]
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            error: code.to_owned(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error, self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<&TypesError> for ApiError {
    fn from(err: &TypesError) -> Self {
        Self::new(error_codes::BAD_REQUEST, err.to_string())
    }
}

/// One disk of [`BackupSummary`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskSummary {
    /// The disk.
    pub disk_key: DiskKey,
    /// Bytes sent as data (WRITE payloads).
    pub bytes_sent: u64,
    /// Bytes not sent: unallocated, unchanged, or sent as WRITE_ZEROES.
    pub bytes_skipped: u64,
    /// Wall-clock seconds for this disk.
    pub seconds: f64,
}

/// What `sendense-client backup --json` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupSummary {
    /// The backup's id.
    pub backup_id: BackupId,
    /// The VM.
    pub vm_name: VmName,
    /// `full` or `incremental` as the hub resolved it.
    pub backup_type: BackupType,
    /// The final status.
    pub status: BackupStatus,
    /// Wall-clock seconds for the whole backup.
    pub seconds: f64,
    /// Bytes sent as data over all disks.
    pub bytes_sent: u64,
    /// Per disk.
    pub disks: Vec<DiskSummary>,
    /// Why this backup is a full when `auto` could have been an incremental (a new chain, a
    /// CBT reset, a bitmap the source does not offer, ...); absent when a full was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_request_empty_object_is_accepted() {
        let req = serde_json::from_str::<SessionRequest>("{}").unwrap();

        assert_eq!(req, SessionRequest::default());
    }

    #[test]
    fn session_request_with_trust_fields_is_refused_naming_them() {
        let pem = serde_json::from_str::<SessionRequest>(r#"{"ca_pem":"x"}"#).unwrap_err();
        let insecure = serde_json::from_str::<SessionRequest>(r#"{"insecure":true}"#).unwrap_err();

        assert!(
            pem.to_string().contains("ca_pem")
                && insecure.to_string().contains("insecure")
                && insecure.to_string().contains("stored with the credential"),
            "{pem} / {insecure}"
        );
    }

    #[test]
    fn credential_request_without_trust_choice_is_refused() {
        let err = serde_json::from_str::<CredentialRequest>(
            r#"{"name":"vc","host":"h","username":"u","password":"p"}"#,
        )
        .unwrap_err();

        assert!(err.to_string().contains("ca_pem"), "{err}");
    }

    #[test]
    fn credential_request_trust_round_trips() {
        let req = CredentialRequest::new(
            "vc".parse().unwrap(),
            "h".into(),
            "u".into(),
            "p".into(),
            VcenterTrust::ca_pem("-----BEGIN CERTIFICATE-----\n".into()).unwrap(),
        )
        .unwrap();

        let back: CredentialRequest =
            serde_json::from_str(&serde_json::to_string(&req).unwrap()).unwrap();

        assert_eq!(back.trust(), req.trust());
    }

    #[test]
    fn credential_request_ca_pem_and_insecure_is_refused() {
        let err = serde_json::from_str::<CredentialRequest>(
            r#"{"name":"vc","host":"h","username":"u","password":"p","ca_pem":"-----BEGIN CERTIFICATE-----","insecure":true}"#,
        )
        .unwrap_err();

        assert!(err.to_string().contains("insecure"), "{err}");
    }

    #[test]
    fn vcenter_trust_ca_pem_without_certificate_is_refused() {
        assert!(VcenterTrust::ca_pem("not pem".into()).is_err());
    }

    #[test]
    fn start_backup_request_without_base_omits_it() {
        let req = StartBackupRequest {
            vm_name: VmName::try_from("vm1").unwrap(),
            backup_type: BackupType::Full,
            base_backup_id: None,
        };

        let json = serde_json::to_string(&req).unwrap();

        assert_eq!(json, r#"{"vm_name":"vm1","backup_type":"full"}"#);
    }

    #[test]
    fn start_backup_request_base_round_trips() {
        let json = r#"{"vm_name":"vm1","backup_type":"incremental","base_backup_id":"backup-vm1-20261125T000000-000001"}"#;

        let req: StartBackupRequest = serde_json::from_str(json).unwrap();

        assert_eq!(
            req.base_backup_id.as_ref().map(BackupId::as_str),
            Some("backup-vm1-20261125T000000-000001")
        );
        assert_eq!(serde_json::to_string(&req).unwrap(), json);
    }

    #[test]
    fn snapshot_request_valid_moref_round_trips() {
        let req: SnapshotRequest =
            serde_json::from_str(r#"{"snapshot_moref":"snapshot-42"}"#).unwrap();

        assert_eq!(req.snapshot_moref(), "snapshot-42");
    }

    #[test]
    fn snapshot_request_bad_moref_is_rejected() {
        for bad in ["", "snap shot", "a/b", &"x".repeat(81)] {
            let err = SnapshotRequest::new(bad.to_owned()).unwrap_err();

            assert!(err.to_string().contains("snapshot_moref"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn vcenter_session_debug_hides_cookie() {
        let s = VcenterSession {
            host: "vc:443".to_owned(),
            session_cookie: "\"52abc\"".to_owned(),
        };

        assert!(!format!("{s:?}").contains("52abc"));
    }
}
