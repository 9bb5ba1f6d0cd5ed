//! The one error type of this crate, [`Qcow2Error`], and its stable [`ErrorKind`].
//!
//! Variants carry typed fields; messages are short and never repeat their source.

use std::io;
use std::path::PathBuf;

use crate::backing::BackingPolicy;
use crate::parse::BackingFormat;

/// Everything that can go wrong while creating, opening, reading or writing an image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Qcow2Error {
    /// An I/O operation on a file failed.
    #[error("I/O error during {op} on {path}")]
    Io {
        /// What we were doing.
        op: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file does not start with the QCOW2 magic.
    #[error("Not a QCOW2 image (bad magic {magic:#010x})")]
    NotQcow2 {
        /// The first four bytes, big-endian.
        magic: u32,
    },
    /// The file is shorter than its header claims.
    #[error("Truncated image: need {needed} bytes, file has {file_len}")]
    Truncated {
        /// Bytes needed.
        needed: u64,
        /// Bytes present.
        file_len: u64,
    },
    /// A header field has a value we refuse.
    #[error("Invalid header field {field}: {value} ({reason})")]
    InvalidHeader {
        /// The field's name, as in the specification.
        field: &'static str,
        /// Its value.
        value: u64,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The QCOW2 version is neither 2 nor 3.
    #[error("Unsupported QCOW2 version {version}")]
    UnsupportedVersion {
        /// The version found.
        version: u32,
    },
    /// The image uses a feature this engine does not implement.
    #[error("Unsupported feature: {feature}")]
    UnsupportedFeature {
        /// The feature's name (from the feature name table when the image has one).
        feature: String,
    },
    /// The backing format named by the image is not `qcow2` or `raw`.
    #[error("Unsupported backing format {format:?}")]
    UnsupportedBackingFormat {
        /// The format string found.
        format: String,
    },
    /// Image metadata is inconsistent: a table beyond the end of file, misaligned, ...
    #[error("Corrupt image: {what} at offset {offset:#x}")]
    Corrupt {
        /// What is wrong.
        what: &'static str,
        /// The offending host (or guest) offset.
        offset: u64,
    },
    /// A request lies outside the virtual disk.
    #[error("Request at {offset} length {length} is beyond the virtual size {virtual_size}")]
    OutOfRange {
        /// Request offset.
        offset: u64,
        /// Request length.
        length: u64,
        /// The image's virtual size.
        virtual_size: u64,
    },
    /// A write was attempted on an image opened read-only.
    #[error("Image {path} is open read-only")]
    ReadOnly {
        /// The image.
        path: PathBuf,
    },
    /// Another process (for example qemu) holds a conflicting lock on the file.
    #[error("Image {path} is locked by another user (lock byte {byte})")]
    Locked {
        /// The image.
        path: PathBuf,
        /// The QEMU lock byte that conflicted.
        byte: u64,
    },
    /// `create` found an existing file.
    #[error("File {path} already exists")]
    AlreadyExists {
        /// The path.
        path: PathBuf,
    },
    /// The backing chain refers back to an image already in it.
    #[error("Backing chain loop at {path}")]
    BackingLoop {
        /// The image seen twice (canonical path).
        path: PathBuf,
    },
    /// The backing chain is deeper than allowed.
    #[error("Backing chain deeper than {max_depth}")]
    ChainTooDeep {
        /// The limit in force.
        max_depth: usize,
    },
    /// The image cannot be opened for writing in its present state.
    #[error("Image {path} cannot be opened writable: {reason}")]
    NotWritable {
        /// The image.
        path: PathBuf,
        /// Why.
        reason: &'static str,
    },
    /// The options passed by the caller are not valid.
    #[error("Invalid options: {reason}")]
    InvalidOptions {
        /// Why.
        reason: &'static str,
    },
    /// A compressed cluster does not inflate to exactly one cluster.
    #[error("Corrupt compressed cluster at host offset {offset:#x}")]
    Decompress {
        /// Host offset of the compressed data.
        offset: u64,
    },
    /// `commit` was called on an image without a backing file.
    #[error("Image has no backing file")]
    NoBacking,
    /// An image opened without a path (in-memory storage) names a backing file.
    #[error("Backing file {name:?} cannot be opened for in-memory storage")]
    BackingWithoutPath {
        /// The backing file name.
        name: String,
    },
    /// The caller's backing policy refuses the backing file an image names.
    #[error("Backing file {name:?} refused ({reason}) by the backing policy: {policy}")]
    BackingRefused {
        /// The backing file name as stored in the image.
        name: String,
        /// Why the policy refuses it.
        reason: &'static str,
        /// The policy in force.
        policy: BackingPolicy,
    },
    /// The caller's backing policy refuses the backing file's format.
    #[error(
        "Backing file {name:?} refused (format {}) by the backing policy: {policy}",
        format.as_str()
    )]
    BackingFormatRefused {
        /// The backing file name as stored in the image.
        name: String,
        /// Its declared (or probed) format.
        format: BackingFormat,
        /// The policy in force.
        policy: BackingPolicy,
    },
    /// The backing file an image names does not exist.
    #[error("Backing file {name:?} not found at {path}")]
    BackingMissing {
        /// The backing file name as stored in the image.
        name: String,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The image has no space left in its refcount structures.
    #[error("Image is too large: {what}")]
    TooLarge {
        /// Which limit was hit.
        what: &'static str,
    },
}

/// Stable classification of [`Qcow2Error`] for callers that branch (HTTP status, NBD errno).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Operating-system I/O error.
    Io,
    /// The file is not a valid or not a supported QCOW2 image.
    InvalidImage,
    /// The image uses an unsupported feature.
    Unsupported,
    /// Metadata is corrupt.
    Corrupt,
    /// A request beyond the virtual size.
    OutOfRange,
    /// Write to a read-only image.
    ReadOnly,
    /// Lock conflict with another user.
    Locked,
    /// Caller error: bad options, file exists, no backing.
    InvalidInput,
    /// The caller's backing policy refuses the image's backing file.
    Refused,
    /// A file the image needs (its backing file) does not exist.
    NotFound,
}

impl Qcow2Error {
    /// The stable kind of this error.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Io { .. } => ErrorKind::Io,
            Self::NotQcow2 { .. }
            | Self::Truncated { .. }
            | Self::InvalidHeader { .. }
            | Self::BackingLoop { .. }
            | Self::ChainTooDeep { .. } => ErrorKind::InvalidImage,
            Self::UnsupportedVersion { .. }
            | Self::UnsupportedFeature { .. }
            | Self::UnsupportedBackingFormat { .. }
            | Self::BackingWithoutPath { .. }
            | Self::TooLarge { .. } => ErrorKind::Unsupported,
            Self::Corrupt { .. } | Self::Decompress { .. } => ErrorKind::Corrupt,
            Self::OutOfRange { .. } => ErrorKind::OutOfRange,
            Self::ReadOnly { .. } | Self::NotWritable { .. } => ErrorKind::ReadOnly,
            Self::Locked { .. } => ErrorKind::Locked,
            Self::AlreadyExists { .. } | Self::InvalidOptions { .. } | Self::NoBacking => {
                ErrorKind::InvalidInput
            }
            Self::BackingRefused { .. } | Self::BackingFormatRefused { .. } => ErrorKind::Refused,
            Self::BackingMissing { .. } => ErrorKind::NotFound,
        }
    }

    pub(crate) fn io(op: &'static str, path: &std::path::Path, source: io::Error) -> Self {
        Self::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}
