//! Per-block digests of a disk's bytes **as read at the source**, so that a verification proves
//! a restore point holds what the VM held (a bug anywhere between the source and the disk, or a
//! flipped bit on the disk, shows up as a mismatch).
//!
//! - Blocks are [`BLOCK_SIZE`] (64 KiB, the hub's cluster size) bytes of the disk, the last one
//!   shorter when the disk size is not a multiple. A transfer that records digests reads whole
//!   blocks (the client widens changed extents to block boundaries), so every block it records
//!   was read entirely at the source.
//! - The hash is XXH3-64 ([`digest`]): well above 10 GB/s per core, so digesting never slows a
//!   backup, and 64 bits make an undetected random corruption of a block a 2⁻⁶⁴ event. It
//!   detects accidents, not an attacker who can write the repository.
//! - A [`LayerDigests`] holds what one layer (one point's image file) wrote: for each block
//!   either the digest of its data or "zero". A full's absent blocks read as zeros; an
//!   incremental's absent blocks read through to its parent. Zero runs are stored as ranges, so
//!   a layer's size follows the data it wrote, not the disk's size.
//! - [`PointDigests`] composes a chain's layers (oldest first) into what each block of a point
//!   must read as, and which layer holds it.
//! - Merges carry digests: [`LayerDigests::overlay`] (the oldest point removed: the next layer
//!   merged into the base) and [`LayerDigests::underlay`] (a middle point removed: its layer
//!   merged into its child).
//! - [`LayerDigests::encode`] / [`LayerDigests::decode`]: the bounded file format stored beside
//!   each image (`<backup_id>.digests`), checked end to end by a trailing hash.
#![forbid(unsafe_code)]
// Offsets are u64 and buffers are indexed with usize: this crate builds only for 64-bit
// targets, where `u64 as usize` is lossless.
#![allow(clippy::cast_possible_truncation)]

#[cfg(not(target_pointer_width = "64"))]
compile_error!("sendense-digest requires a 64-bit target");

mod error;
mod format;
mod layer;

pub use error::DigestError;
pub use format::{FORMAT_MAGIC, max_encoded_len};
pub use layer::{BlockDigest, LayerDigests, PointDigests, Run};

/// Bytes per digest block.
pub const BLOCK_SIZE: u64 = 64 << 10;

/// The digest of one block's bytes.
#[must_use]
pub fn digest(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// The number of blocks of a disk of `disk_size` bytes.
#[must_use]
pub const fn block_count(disk_size: u64) -> u64 {
    disk_size.div_ceil(BLOCK_SIZE)
}

/// The length of block `block` of a disk of `disk_size` bytes (0 past the end).
#[must_use]
pub const fn block_len(disk_size: u64, block: u64) -> u64 {
    let start = block.saturating_mul(BLOCK_SIZE);
    if start >= disk_size {
        0
    } else if disk_size - start < BLOCK_SIZE {
        disk_size - start
    } else {
        BLOCK_SIZE
    }
}
