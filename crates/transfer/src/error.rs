//! [`TransferError`]: the one error of this crate, for disk sources (the [`crate::DiskSource`]
//! trait, implemented here and by the vSphere crate), targets and the engine.
//!
//! Variants carry typed fields and wrap causes with `#[source]`; messages name the fix where
//! there is one (a full repository, a refused client certificate).

use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// Why reading a source, writing a target or running a transfer failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TransferError {
    /// The source file cannot be opened (or its size read).
    #[error("Cannot open disk {path}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A read from the source failed. Sources outside this crate (vSphere) carry their own
    /// error inside the `io::Error`.
    #[error("Read of {len} bytes at offset {offset} failed")]
    Io {
        /// First byte of the read.
        offset: u64,
        /// Bytes asked for.
        len: u64,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A read past the end of the source.
    #[error("Read of {len} bytes at offset {offset} passes the disk end ({size} bytes)")]
    OutOfRange {
        /// First byte of the read.
        offset: u64,
        /// Bytes asked for.
        len: u64,
        /// The source's size.
        size: u64,
    },
    /// The source file ended before its reported size.
    #[error("Short read at offset {offset}: the file ended early")]
    ShortRead {
        /// Where the read stopped.
        offset: u64,
    },
    /// A VMDK source is malformed or unsupported.
    #[error("VMDK error")]
    Vmdk(#[from] sendense_vmdk::VmdkError),
    /// A blocking read task was cancelled (runtime shutting down).
    #[error("Read task was cancelled")]
    Cancelled,
    /// A disk's source failed during a transfer.
    #[error("Disk {disk_key}: source failed")]
    Source {
        /// The disk.
        disk_key: u32,
        /// What failed.
        #[source]
        source: Box<Self>,
    },
    /// An NBD operation failed.
    #[error("NBD {operation} failed on {target}")]
    Nbd {
        /// `connect`, `write`, `flush`, ...
        operation: &'static str,
        /// The export (URI without secrets).
        target: String,
        /// The protocol error.
        #[source]
        source: sendense_nbd::NbdError,
    },
    /// The hub's NBD port refused our TLS client certificate (or its absence). Final.
    #[error(
        "The hub refused the NBD connection to {target}: it accepts only client certificates \
         its CA issued. Issue a folder on the hub with `sendense-hub cert issue NAME --data-dir \
         DATA --out DIR`, copy it here and pass --tls-dir DIR"
    )]
    NbdCertificateRefused {
        /// The export.
        target: String,
        /// The TLS error.
        #[source]
        source: sendense_nbd::NbdError,
    },
    /// The hub answered `ENOSPC`. Final.
    #[error(
        "The hub's repository is full: NBD {operation} to {target} failed with ENOSPC. Free \
         space on the hub's file system under DATA/repository (or delete backups nothing \
         depends on), then run the backup again"
    )]
    HubFull {
        /// `write`, `write_zeroes`, `flush`.
        operation: &'static str,
        /// The export.
        target: String,
    },
    /// An `nbd://` / `nbds://` URI that cannot be used.
    #[error("Invalid NBD URI {uri:?}: {reason}")]
    BadNbdUri {
        /// The URI as given.
        uri: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// An outside NBD export cannot be backed up as asked.
    #[error("NBD source {uri}: {reason}")]
    NbdSource {
        /// The source's URI.
        uri: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// Source and target of a disk disagree (size).
    #[error("Disk {disk_key}: {reason}")]
    DiskMismatch {
        /// The disk.
        disk_key: u32,
        /// What differs.
        reason: &'static str,
    },
    /// Writing a local target (a restored image) failed.
    #[error("Writing restored image {path} failed")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O or engine error.
        #[source]
        source: io::Error,
    },
    /// Transfer options out of range.
    #[error("Invalid {what}: {reason}")]
    InvalidArgument {
        /// The option.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// Recording the digests of a disk's bytes failed (a request not on block boundaries: a
    /// bug of the planning, never of the data).
    #[error("Disk {disk_key}: recording digests failed")]
    Digest {
        /// The disk.
        disk_key: u32,
        /// What the digest map refused.
        #[source]
        source: sendense_digest::DigestError,
    },
    /// SIGINT, SIGTERM or SIGHUP stopped the transfer.
    #[error("Interrupted (Ctrl-C, SIGTERM or SIGHUP)")]
    Interrupted,
}

impl TransferError {
    /// A disk's source failed.
    #[must_use]
    pub fn source_failed(disk_key: u32, source: Self) -> Self {
        Self::Source {
            disk_key,
            source: Box::new(source),
        }
    }

    /// Whether retrying the request (on a fresh connection) cannot help: a full repository, a
    /// refused certificate, or an NBD error that says the request itself is wrong.
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
