//! The one error type of the crate.
//!
//! Every variant names what was wrong in the input (which extent, which
//! grain, which limit) so that an operator can tell a damaged file from a
//! missing feature. Callers that branch use [`VmdkError::kind`].

use std::path::PathBuf;

/// Coarse classification of a [`VmdkError`], stable for callers that branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum VmdkErrorKind {
    /// An operating-system I/O error.
    Io,
    /// The input is not a VMDK at all.
    NotVmdk,
    /// The input is a VMDK but is malformed, truncated or hostile.
    Corrupt,
    /// The input is a valid VMDK using a feature this reader does not support.
    Unsupported,
    /// The caller's open policy refused the input.
    Policy,
    /// The caller asked for something outside the disk.
    OutOfRange,
}

/// Errors from opening and reading VMDK images.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VmdkError {
    /// An I/O error on a file of the image.
    #[error("I/O error on {path}")]
    Io {
        /// The file the operation was on.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file of the image is not a regular file (a FIFO, device or folder).
    #[error("Not a regular file: {path}")]
    NotRegularFile {
        /// The file.
        path: PathBuf,
    },
    /// The file is neither a sparse extent nor a text descriptor.
    #[error("Not a VMDK file: {path}")]
    NotVmdk {
        /// The file that was opened.
        path: PathBuf,
    },
    /// The text descriptor is larger than the limit.
    #[error("Descriptor of {size} bytes exceeds the limit of {limit} bytes")]
    DescriptorTooLarge {
        /// Its size in bytes.
        size: u64,
        /// The limit in bytes.
        limit: u64,
    },
    /// A descriptor line could not be parsed.
    #[error("Invalid descriptor line {line}: {reason}")]
    InvalidDescriptor {
        /// One-based line number.
        line: usize,
        /// What was wrong.
        reason: &'static str,
    },
    /// The descriptor has more extents than the limit.
    #[error("Descriptor has more than {limit} extents")]
    TooManyExtents {
        /// The limit.
        limit: usize,
    },
    /// The descriptor has no extent.
    #[error("Descriptor has no extent")]
    NoExtents,
    /// The descriptor names a disk with a parent (a delta link), which needs a chain.
    #[error("Differencing disk with a parent is not supported")]
    HasParent,
    /// An extent type this reader does not read.
    #[error("Unsupported extent type {kind} in extent {extent}")]
    UnsupportedExtent {
        /// Zero-based extent index.
        extent: usize,
        /// The extent type as written.
        kind: &'static str,
    },
    /// An extent file name violates the open policy.
    #[error("Extent file name {name:?} resolves outside the descriptor's folder")]
    ExtentPathRefused {
        /// The file name as written in the descriptor.
        name: String,
    },
    /// The sum of the extents overflows or exceeds the maximum disk size.
    #[error("Disk size exceeds the supported maximum")]
    DiskTooLarge,
    /// A sparse header field is invalid.
    #[error("Invalid sparse header in extent {extent}: {reason}")]
    InvalidSparseHeader {
        /// Zero-based extent index.
        extent: usize,
        /// What was wrong.
        reason: &'static str,
    },
    /// Metadata (grain directory, grain table, descriptor, footer) lies beyond the end of the file.
    #[error("{what} of extent {extent} lies beyond the end of the file")]
    MetadataBeyondEof {
        /// Zero-based extent index.
        extent: usize,
        /// Which structure.
        what: &'static str,
    },
    /// Metadata overlaps the sparse header.
    #[error("{what} of extent {extent} overlaps the header")]
    MetadataOverlapsHeader {
        /// Zero-based extent index.
        extent: usize,
        /// Which structure.
        what: &'static str,
    },
    /// A grain lies (partly) beyond the end of the file.
    #[error("Grain {grain} of extent {extent} lies beyond the end of the file")]
    GrainBeyondEof {
        /// Zero-based extent index.
        extent: usize,
        /// Grain index within the extent.
        grain: u64,
    },
    /// A stream-optimized marker is invalid.
    #[error("Invalid marker at sector {sector} of extent {extent}: {reason}")]
    BadMarker {
        /// Zero-based extent index.
        extent: usize,
        /// Sector of the marker in the extent file.
        sector: u64,
        /// What was wrong.
        reason: &'static str,
    },
    /// A compressed grain does not inflate to a valid grain.
    #[error("Compressed grain {grain} of extent {extent}: {reason}")]
    BadCompressedGrain {
        /// Zero-based extent index.
        extent: usize,
        /// Grain index within the extent.
        grain: u64,
        /// What was wrong.
        reason: &'static str,
    },
    /// A flat extent file is shorter than the extent.
    #[error("Flat extent {extent} needs {needed} bytes but its file has {actual}")]
    FlatExtentTooShort {
        /// Zero-based extent index.
        extent: usize,
        /// Bytes needed (start offset plus extent length).
        needed: u64,
        /// Bytes in the file.
        actual: u64,
    },
    /// A read past the end of the virtual disk.
    #[error("Read of {len} bytes at {offset} is past the disk end {size}")]
    OutOfRange {
        /// Requested offset.
        offset: u64,
        /// Requested length.
        len: u64,
        /// Virtual disk size.
        size: u64,
    },
}

impl VmdkError {
    /// The coarse class of this error.
    #[must_use]
    pub fn kind(&self) -> VmdkErrorKind {
        match self {
            Self::Io { .. } => VmdkErrorKind::Io,
            Self::NotVmdk { .. } => VmdkErrorKind::NotVmdk,
            Self::HasParent | Self::UnsupportedExtent { .. } | Self::NotRegularFile { .. } => {
                VmdkErrorKind::Unsupported
            }
            Self::ExtentPathRefused { .. } => VmdkErrorKind::Policy,
            Self::OutOfRange { .. } => VmdkErrorKind::OutOfRange,
            _ => VmdkErrorKind::Corrupt,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
