//! [`TierError`]: what a sealed object, a manifest or an S3 document can be wrong about.

/// Why a sealed object or a manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TierError {
    /// Fewer bytes than the format needs.
    #[error("Sealed object truncated: {need} bytes needed, {have} present")]
    Truncated {
        /// Bytes needed.
        need: u64,
        /// Bytes present.
        have: u64,
    },
    /// Not a sealed object of this format.
    #[error("Not a Sendense sealed object (bad magic)")]
    BadMagic,
    /// A format version this build does not read.
    #[error("Sealed object or manifest version {version} is not supported")]
    UnsupportedVersion {
        /// The version found.
        version: u32,
    },
    /// A chunk size outside the accepted range or not a power of two.
    #[error("Chunk size {size} is not a power of two between 4 KiB and 16 MiB")]
    BadChunkSize {
        /// The size found.
        size: u32,
    },
    /// A plaintext length above the limit.
    #[error("Object of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The length found.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// Reserved header bytes that are not zero.
    #[error("Sealed object header has non-zero reserved bytes")]
    Reserved,
    /// A chunk index past the object's end, or a chunk of the wrong length.
    #[error("Chunk {index} does not exist or has the wrong length")]
    BadChunk {
        /// The chunk's index.
        index: u64,
    },
    /// A chunk that does not open under this key, header and name.
    #[error("Chunk {index} failed authentication (wrong key, or altered or misplaced data)")]
    Authentication {
        /// The chunk's index.
        index: u64,
    },
    /// A key of the wrong length or encoding.
    #[error("Master key must be 32 bytes (64 hex digits)")]
    BadKey,
    /// A manifest that does not parse or breaks a rule.
    #[error("Manifest refused: {reason}")]
    Manifest {
        /// What is wrong.
        reason: String,
    },
    /// An S3 XML document (Object Lock configuration, error) that does not parse or breaks a
    /// rule.
    #[error("S3 XML document refused: {reason}")]
    Xml {
        /// What is wrong.
        reason: &'static str,
    },
    /// The system's random source failed.
    #[error("Random source failed")]
    Random,
}
