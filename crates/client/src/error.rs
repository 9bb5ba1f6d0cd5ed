//! The errors of this crate: [`SourceError`] for disk sources (the [`crate::DiskSource`] trait,
//! implemented here and by the vSphere crate) and [`ClientError`] for everything else.
//!
//! Variants carry typed fields and wrap causes with `#[source]`; messages name the fix where
//! there is one (a hub that is down, a wrong CA, a rejected token).

use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// A disk source failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SourceError {
    /// Opening a local disk file failed.
    #[error("Cannot open disk {path}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A read (or an allocation query) failed with an I/O error.
    ///
    /// Sources backed by something other than a file (vSphere HTTPS reads) wrap their own error
    /// with [`io::Error::other`].
    #[error("Read of {len} bytes at offset {offset} failed")]
    Io {
        /// Byte offset of the read.
        offset: u64,
        /// Length of the read.
        len: u64,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A read asked for bytes past the end of the disk.
    #[error("Read of {len} bytes at offset {offset} passes the disk end ({size} bytes)")]
    OutOfRange {
        /// Byte offset of the read.
        offset: u64,
        /// Length of the read.
        len: u64,
        /// Size of the disk.
        size: u64,
    },
    /// The file ended before the disk did (it shrank while being read).
    #[error("Short read at offset {offset}: the file ended early")]
    ShortRead {
        /// Byte offset where the data ran out.
        offset: u64,
    },
    /// The VMDK reader failed.
    #[error("VMDK error")]
    Vmdk(#[from] sendense_vmdk::VmdkError),
    /// The NBD export used as a source (restore) failed.
    #[error("NBD read failed")]
    Nbd(#[source] Box<ClientError>),
    /// A blocking-pool task ended abnormally (the runtime is shutting down).
    #[error("Read task was cancelled")]
    Cancelled,
}

/// Changed-area (CBT) input was invalid.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CbtError {
    /// The JSON did not parse as VMware's `DiskChangeInfo`.
    #[error("Changed areas are not DiskChangeInfo JSON: {message}")]
    Json {
        /// What serde said.
        message: String,
    },
    /// The file is larger than [`crate::cbt::MAX_CHANGE_INFO_BYTES`].
    #[error("Changed-areas file is {size} bytes, more than the limit of {limit}")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// More areas than [`crate::cbt::MAX_CHANGED_AREAS`].
    #[error("Changed areas list {count} areas, more than the limit of {limit}")]
    TooManyAreas {
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
    BadRange {
        /// `startOffset`.
        start_offset: u64,
        /// `length`.
        length: u64,
        /// The disk's capacity.
        capacity: u64,
    },
    /// One area is empty, unaligned, outside the answer's range, or past the disk end.
    #[error("Changed area #{index} (start {start}, length {length}) {reason}")]
    BadArea {
        /// Index of the area in `changedArea`.
        index: usize,
        /// Its `start`.
        start: u64,
        /// Its `length`.
        length: u64,
        /// What is wrong.
        reason: &'static str,
    },
}

/// An operation of the client failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A disk source failed.
    #[error("Disk {disk_key}: source failed")]
    Source {
        /// The disk.
        disk_key: u32,
        /// The cause.
        #[source]
        source: SourceError,
    },
    /// Changed areas were invalid.
    #[error("Disk {disk_key}: invalid changed areas")]
    Cbt {
        /// The disk.
        disk_key: u32,
        /// The cause.
        #[source]
        source: CbtError,
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
    /// An NBD connection or request failed.
    #[error("NBD {operation} failed on {target}")]
    Nbd {
        /// What was attempted (`"connect"`, `"write"`, `"flush"`, ...).
        operation: &'static str,
        /// The export's URI or name.
        target: String,
        /// The cause.
        #[source]
        source: sendense_nbd::NbdError,
    },
    /// The hub's NBD port refused this client's TLS certificate (none presented, or one its CA
    /// did not issue). Final: not retried.
    #[error(
        "The hub refused the NBD connection to {target}: it accepts only client certificates \
         its CA issued. Issue a folder on the hub with `sendense-hub cert issue NAME --data-dir \
         DATA --out DIR`, copy it here and pass --tls-dir DIR"
    )]
    NbdCertificateRefused {
        /// The export's URI.
        target: String,
        /// The TLS failure.
        #[source]
        source: sendense_nbd::NbdError,
    },
    /// The hub answered a write with `ENOSPC`: its repository's file system is full. Final:
    /// not retried.
    #[error(
        "The hub's repository is full: NBD {operation} to {target} failed with ENOSPC. Free \
         space on the hub's file system under DATA/repository (or delete backups nothing \
         depends on), then run the backup again"
    )]
    HubFull {
        /// What was attempted (`"write"`, `"write_zeroes"`, `"flush"`).
        operation: &'static str,
        /// The export's URI.
        target: String,
    },
    /// An `nbd_uri` from the hub is not `nbds://HOST:PORT/NAME`.
    #[error("Invalid NBD URI {uri:?}: {reason}")]
    BadNbdUri {
        /// The URI.
        uri: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The hub's answer does not list a disk we are sending, or lists one we do not have.
    #[error("Disk {disk_key}: {reason}")]
    DiskMismatch {
        /// The disk.
        disk_key: u32,
        /// What does not match.
        reason: &'static str,
    },
    /// A command-line or option value is invalid.
    #[error("Invalid {what}: {reason}")]
    InvalidArgument {
        /// Which argument.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// Writing the restored image failed.
    #[error("Writing restored image {path} failed")]
    RestoreWrite {
        /// The target file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The user interrupted the run (Ctrl-C, SIGTERM or SIGHUP).
    #[error("Interrupted (Ctrl-C, SIGTERM or SIGHUP)")]
    Interrupted,
    /// A remote source (vCenter, through a [`crate::cli::RemoteBackup`] provider) failed.
    ///
    /// The provider's crate depends on this one, so its error type cannot be named here: this
    /// is the one type-erased boundary of the client.
    #[error("{system} backup failed")]
    Remote {
        /// The remote system (`"vCenter"`).
        system: &'static str,
        /// The provider's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

impl ClientError {
    /// Wraps a source error for a disk.
    #[must_use]
    pub fn source_failed(disk_key: u32, source: SourceError) -> Self {
        Self::Source { disk_key, source }
    }

    /// Whether sending the same request again (on a fresh connection) cannot succeed: a full
    /// repository, or the server's verdict on the request itself (`EPERM`, `EINVAL`,
    /// `EOVERFLOW`, `ENOTSUP`). I/O errors and broken connections are worth one retry.
    #[must_use]
    pub fn is_final(&self) -> bool {
        use sendense_nbd::wire::Errno;
        match self {
            Self::HubFull { .. } | Self::NbdCertificateRefused { .. } => true,
            Self::Nbd {
                source: sendense_nbd::NbdError::Request { errno },
                ..
            } => matches!(
                errno,
                Errno::Perm | Errno::Inval | Errno::NoSpc | Errno::Overflow | Errno::NotSup
            ),
            _ => false,
        }
    }
}
