//! The crate's one error.

/// What went wrong recording or decoding digests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// Bytes given to [`crate::LayerDigests::record`] do not start on a block boundary, or do
    /// not end on one before the end of the disk.
    #[error(
        "digests cover whole {block_size}-byte blocks: the range at {offset} (length {length}) does not"
    )]
    Unaligned {
        /// Offset of the range.
        offset: u64,
        /// Its length.
        length: u64,
        /// The block size.
        block_size: u64,
    },
    /// The range passes the end of the disk.
    #[error("the range at {offset} (length {length}) passes the end of the {disk_size}-byte disk")]
    OutOfRange {
        /// Offset of the range.
        offset: u64,
        /// Its length.
        length: u64,
        /// The disk's size.
        disk_size: u64,
    },
    /// Two layers of different disk sizes were combined where equal sizes are needed.
    #[error(
        "digests of a {found}-byte disk cannot be combined with those of a {expected}-byte disk"
    )]
    SizeMismatch {
        /// The size expected.
        expected: u64,
        /// The size found.
        found: u64,
    },
    /// A digest file is malformed.
    #[error("digest file is malformed: {reason}")]
    Malformed {
        /// What is wrong, in words.
        reason: &'static str,
    },
}
