//! The crate's error type and SOAP fault classification.
//!
//! vCenter reports failures as SOAP faults whose `detail` names a fault type
//! (`NotAuthenticated`, `InvalidArgument`, `FileFault`, ...). They are parsed into
//! [`SoapFault`] with a typed [`FaultKind`] so callers can branch: the session re-logs in on
//! `NotAuthenticated`, the backup falls back to a full on `FileFault` for a stale change id.

use std::time::Duration;

/// The kind of a vSphere SOAP fault.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultKind {
    /// The session cookie is missing or expired.
    NotAuthenticated,
    /// Wrong user name or password.
    InvalidLogin,
    /// An argument was rejected (for example `startOffset` beyond the disk).
    InvalidArgument,
    /// A file-level failure (for example an unknown change id after a CBT reset).
    FileFault,
    /// A managed object reference names nothing.
    ManagedObjectNotFound,
    /// The object is in the wrong state for the operation.
    InvalidState,
    /// Any other fault, with its type name.
    Other(String),
}

impl FaultKind {
    /// Classify a fault type name as found in `xsi:type` or the detail element name.
    #[must_use]
    pub fn from_type_name(name: &str) -> Self {
        let name = name
            .strip_suffix("Fault")
            .filter(|n| !n.is_empty())
            .unwrap_or(name);
        match name {
            "NotAuthenticated" => Self::NotAuthenticated,
            "InvalidLogin" => Self::InvalidLogin,
            "InvalidArgument" => Self::InvalidArgument,
            "File" | "FileFault" | "FileNotFound" | "FileLocked" | "CannotAccessFile" => {
                Self::FileFault
            }
            "ManagedObjectNotFound" => Self::ManagedObjectNotFound,
            "InvalidState" | "InvalidPowerState" => Self::InvalidState,
            other => Self::Other(other.to_owned()),
        }
    }

    /// The fault type name as vSphere spells it.
    #[must_use]
    pub fn type_name(&self) -> &str {
        match self {
            Self::NotAuthenticated => "NotAuthenticated",
            Self::InvalidLogin => "InvalidLogin",
            Self::InvalidArgument => "InvalidArgument",
            Self::FileFault => "FileFault",
            Self::ManagedObjectNotFound => "ManagedObjectNotFound",
            Self::InvalidState => "InvalidState",
            Self::Other(s) => s,
        }
    }
}

/// A parsed SOAP fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoapFault {
    /// Typed fault kind.
    pub kind: FaultKind,
    /// The server's `faultstring` (or task `localizedMessage`).
    pub message: String,
}

impl std::fmt::Display for SoapFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.type_name(), self.message)
    }
}

/// Errors of the vSphere client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VsphereError {
    /// A [`crate::SessionIssuer`] (the hub, for a stored credential) could not hand out a
    /// vCenter session: unknown credential, vCenter refused the login, issuer unreachable.
    #[error("{issuer} could not issue a vCenter session: {reason}")]
    SessionIssue {
        /// The issuer, as it describes itself.
        issuer: String,
        /// Why, in words (the issuer's error and its causes).
        reason: String,
    },
    /// vCenter answered with a SOAP fault.
    #[error("vCenter fault during {call}: {fault}")]
    Fault {
        /// The SOAP method called.
        call: &'static str,
        /// The fault.
        fault: SoapFault,
    },
    /// The HTTP exchange failed (connection refused, reset, TLS).
    #[error("HTTP request to vCenter failed during {call}")]
    Http {
        /// What was being done.
        call: &'static str,
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
    /// vCenter did not answer in time.
    #[error("vCenter did not answer {call} within {timeout:?}")]
    Timeout {
        /// What was being done.
        call: &'static str,
        /// The limit.
        timeout: Duration,
    },
    /// An HTTP status that the call does not expect.
    #[error("unexpected HTTP status {status} from vCenter during {call}")]
    HttpStatus {
        /// What was being done.
        call: &'static str,
        /// The status code.
        status: u16,
    },
    /// The response is not well-formed XML.
    #[error("malformed XML from vCenter")]
    Xml {
        /// Cause.
        #[source]
        source: quick_xml::Error,
    },
    /// The response exceeds a parsing bound.
    #[error("XML response from vCenter exceeds the {limit} limit")]
    XmlLimit {
        /// Which bound.
        limit: &'static str,
    },
    /// The response is well-formed but lacks what the call returns.
    #[error("unexpected SOAP response: {what}")]
    UnexpectedResponse {
        /// What was wrong.
        what: &'static str,
    },
    /// A number in a response could not be parsed or is out of range.
    #[error("invalid number in SOAP response field {field}: {value:?}")]
    InvalidNumber {
        /// The field.
        field: &'static str,
        /// The text found.
        value: String,
    },
    /// No virtual machine matches the given path or name.
    #[error("virtual machine not found: {vm}")]
    VmNotFound {
        /// Path or name asked for.
        vm: String,
    },
    /// Several virtual machines have this name.
    #[error("{count} virtual machines are named {vm}; give the inventory path")]
    AmbiguousVm {
        /// Name asked for.
        vm: String,
        /// How many matched.
        count: usize,
    },
    /// A disk's backing cannot be read over the datastore file interface.
    #[error("disk {key} has backing {backing} ({file}), not a flat VMDK without deltas")]
    UnsupportedBacking {
        /// Device key.
        key: i32,
        /// The backing's type.
        backing: String,
        /// The backing's file name.
        file: String,
    },
    /// A disk is independent or otherwise not covered by snapshots and CBT.
    #[error("disk {key} has mode {mode}: not covered by snapshots or CBT")]
    UnsupportedDiskMode {
        /// Device key.
        key: i32,
        /// The disk mode.
        mode: String,
    },
    /// The VM has no virtual disks.
    #[error("virtual machine {vm} has no virtual disks")]
    NoDisks {
        /// VM name.
        vm: String,
    },
    /// A task ended in error.
    #[error("vCenter task {task} failed: {fault}")]
    TaskFailed {
        /// Task id.
        task: String,
        /// The task's error.
        fault: SoapFault,
    },
    /// A task did not finish in time.
    #[error("vCenter task {task} did not finish within {timeout:?}")]
    TaskTimeout {
        /// Task id.
        task: String,
        /// The limit.
        timeout: Duration,
    },
    /// A datastore path is not `[datastore] folder/file.vmdk`.
    #[error("invalid datastore path {path:?}")]
    DatastorePath {
        /// The path.
        path: String,
    },
    /// A Range read answered with another range than asked.
    #[error("datastore read of {path} at {offset}+{length}: server answered range {answered:?}")]
    ContentRange {
        /// File read.
        path: String,
        /// Offset asked.
        offset: u64,
        /// Length asked.
        length: u64,
        /// The `Content-Range` header (or its absence).
        answered: Option<String>,
    },
    /// The datastore stayed busy (HTTP 503) through every retry.
    #[error("datastore still busy (HTTP 503) after {attempts} attempts reading {path}")]
    DatastoreBusy {
        /// File read.
        path: String,
        /// Attempts made.
        attempts: u32,
    },
    /// A read beyond the disk's capacity was asked for.
    #[error("read of {length} bytes at {offset} is beyond the disk's capacity {capacity}")]
    ReadOutOfRange {
        /// Offset asked.
        offset: u64,
        /// Length asked.
        length: u64,
        /// Disk capacity.
        capacity: u64,
    },
    /// QueryChangedDiskAreas answered areas outside the disk or out of order.
    #[error("changed area {start}+{length} of disk {key} is invalid (capacity {capacity})")]
    InvalidChangedArea {
        /// Device key.
        key: i32,
        /// Start.
        start: u64,
        /// Length.
        length: u64,
        /// Disk capacity.
        capacity: u64,
    },
    /// QueryChangedDiskAreas answered a page that does not advance.
    #[error("QueryChangedDiskAreas for disk {key} did not advance past offset {offset}")]
    ChangedAreasStalled {
        /// Device key.
        key: i32,
        /// Offset asked.
        offset: u64,
    },
    /// TLS setup failed.
    #[error("TLS setup for vCenter failed")]
    Tls {
        /// Cause.
        #[source]
        source: rustls::Error,
    },
    /// The CA file could not be read or holds no certificate.
    #[error("cannot use CA file {path}")]
    CaFile {
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The password file could not be read or is empty.
    #[error("cannot read the vCenter password file {path}")]
    PasswordFile {
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The vCenter address is not `HOST[:PORT]` or an http(s) URL.
    #[error("invalid vCenter address {address:?}")]
    InvalidAddress {
        /// The address.
        address: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client")]
    ClientBuild {
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
    /// The VM's configuration read from vCenter does not make a valid [`sendense_types::VmConfig`],
    /// or a restore was handed one it cannot rebuild.
    #[error("VM configuration: {reason}")]
    Config {
        /// What was wrong.
        reason: String,
    },
    /// An inventory object a restore names does not exist.
    #[error("{what} {name:?} not found in vCenter")]
    NotFound {
        /// What was looked for (`datacenter`, `folder`, `datastore`, `host`, `resource pool`).
        what: &'static str,
        /// The name or path asked for.
        name: String,
    },
    /// A network of the captured configuration maps to no network of the target datacenter.
    #[error(
        "network {network:?} of the backed-up VM would connect to {target:?}, which does not exist in \
         datacenter {datacenter}; map it in network_map, e.g. {{\"{network}\": \"<existing network>\"}}"
    )]
    NetworkNotMapped {
        /// The captured network.
        network: String,
        /// The network it maps to (itself when not in the map).
        target: String,
        /// The target datacenter.
        datacenter: String,
    },
    /// A disk to restore does not fit the configuration or its source.
    #[error("disk {key} cannot be restored: {reason}")]
    RestoreDisk {
        /// The disk key.
        key: u32,
        /// Why.
        reason: String,
    },
    /// Disks can be added only to a powered-off VM (their files must not be locked while they
    /// are uploaded).
    #[error("virtual machine {vm} is powered on; power it off to restore disks into it")]
    VmPoweredOn {
        /// The VM.
        vm: String,
    },
    /// Reading the data of a disk being uploaded failed.
    #[error("reading the data of {path} for its upload failed")]
    UploadSource {
        /// The datastore file being written.
        path: String,
        /// Cause.
        #[source]
        source: Box<sendense_transfer::TransferError>,
    },
    /// The restore was cancelled; what it had made was removed.
    #[error("the restore was cancelled")]
    Cancelled,
    /// vCenter could not create a quiesced snapshot (typically: VMware Tools missing or not
    /// running in the guest). Nothing was created.
    #[error(
        "vCenter could not quiesce the guest for the snapshot ({fault}); VMware Tools must be \
         installed and running in the guest for --quiesce: install them or back up without --quiesce"
    )]
    QuiesceFailed {
        /// vCenter's fault.
        fault: SoapFault,
    },
}

/// Stable classification of [`VsphereError`] for callers that branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Login refused.
    Authentication,
    /// The VM does not exist or is ambiguous.
    NotFound,
    /// The VM's disks cannot be backed up this way.
    Unsupported,
    /// vCenter or the network failed or timed out.
    Unavailable,
    /// vCenter answered something we cannot use.
    Protocol,
    /// Local configuration (TLS, address) is wrong.
    Configuration,
    /// Any other SOAP or task fault.
    Fault,
}

impl VsphereError {
    /// Stable classification.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Fault { fault, .. } if fault.kind == FaultKind::InvalidLogin => {
                ErrorKind::Authentication
            }
            Self::SessionIssue { .. } => ErrorKind::Authentication,
            Self::Fault { .. } | Self::TaskFailed { .. } | Self::QuiesceFailed { .. } => {
                ErrorKind::Fault
            }
            Self::VmNotFound { .. } | Self::AmbiguousVm { .. } | Self::NotFound { .. } => {
                ErrorKind::NotFound
            }
            Self::NetworkNotMapped { .. } | Self::Config { .. } | Self::RestoreDisk { .. } => {
                ErrorKind::Configuration
            }
            Self::VmPoweredOn { .. } => ErrorKind::Unsupported,
            Self::UnsupportedBacking { .. }
            | Self::UnsupportedDiskMode { .. }
            | Self::NoDisks { .. } => ErrorKind::Unsupported,
            Self::Http { .. }
            | Self::Timeout { .. }
            | Self::TaskTimeout { .. }
            | Self::DatastoreBusy { .. } => ErrorKind::Unavailable,
            Self::Tls { .. }
            | Self::CaFile { .. }
            | Self::PasswordFile { .. }
            | Self::InvalidAddress { .. }
            | Self::ClientBuild { .. } => ErrorKind::Configuration,
            _ => ErrorKind::Protocol,
        }
    }

    /// The SOAP fault kind when this error is a fault.
    #[must_use]
    pub fn fault_kind(&self) -> Option<&FaultKind> {
        match self {
            Self::Fault { fault, .. }
            | Self::TaskFailed { fault, .. }
            | Self::QuiesceFailed { fault } => Some(&fault.kind),
            _ => None,
        }
    }
}
