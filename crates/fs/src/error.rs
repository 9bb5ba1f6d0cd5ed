//! The crate's one error type.

/// What went wrong, for callers that branch (the hub maps it to an HTTP status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FsErrorKind {
    /// The path, or a component of it, does not exist.
    NotFound,
    /// A path component (or the listed path) is not a folder.
    NotADirectory,
    /// The path names something that is not a regular file.
    NotAFile,
    /// A partition index the table does not have.
    NoSuchPartition,
    /// A partition table or file system this crate does not read.
    Unsupported,
    /// A path the caller gave is not acceptable (`..`, NUL, not absolute, too long).
    BadPath,
    /// Damaged or hostile metadata.
    Corrupt,
    /// Beyond one of [`crate::limits`].
    TooLarge,
    /// The disk could not be read.
    Io,
}

/// An error reading a partition table or file system.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FsError {
    /// Not found.
    #[error("No such file or folder: {path}")]
    NotFound {
        /// The path asked for.
        path: String,
    },
    /// Not a folder.
    #[error("Not a folder: {path}")]
    NotADirectory {
        /// The path asked for.
        path: String,
    },
    /// Not a regular file.
    #[error("Not a regular file: {path}")]
    NotAFile {
        /// The path asked for.
        path: String,
    },
    /// No such partition.
    #[error("No partition {index} (the disk has {count})")]
    NoSuchPartition {
        /// The index asked for.
        index: u32,
        /// How many partitions the table has.
        count: usize,
    },
    /// Not something this crate reads.
    #[error("Unsupported: {what}")]
    Unsupported {
        /// What was found (e.g. "xfs file system in partition 2").
        what: String,
    },
    /// A bad path.
    #[error("Bad path {path:?}: {reason}")]
    BadPath {
        /// The path given.
        path: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// Damaged metadata.
    #[error("Damaged {what}: {detail}")]
    Corrupt {
        /// Which structure (e.g. "GPT header", "ext4 file system").
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// Too large.
    #[error("Too large: {what}")]
    TooLarge {
        /// What exceeded which limit.
        what: String,
    },
    /// I/O error.
    #[error("Cannot read the disk")]
    Io(#[source] std::io::Error),
}

impl FsError {
    /// The stable kind callers branch on.
    #[must_use]
    pub fn kind(&self) -> FsErrorKind {
        match self {
            Self::NotFound { .. } => FsErrorKind::NotFound,
            Self::NotADirectory { .. } => FsErrorKind::NotADirectory,
            Self::NotAFile { .. } => FsErrorKind::NotAFile,
            Self::NoSuchPartition { .. } => FsErrorKind::NoSuchPartition,
            Self::Unsupported { .. } => FsErrorKind::Unsupported,
            Self::BadPath { .. } => FsErrorKind::BadPath,
            Self::Corrupt { .. } => FsErrorKind::Corrupt,
            Self::TooLarge { .. } => FsErrorKind::TooLarge,
            Self::Io(_) => FsErrorKind::Io,
        }
    }

    pub(crate) fn unsupported(what: impl Into<String>) -> Self {
        Self::Unsupported { what: what.into() }
    }
}
