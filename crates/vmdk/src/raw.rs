//! On-disk structures of the hosted sparse extent, mirrored byte for byte.
//!
//! All integers are little-endian. Layout after VMware's "Virtual Disk
//! Format 5.0", section "Hosted Sparse Extent Header" (`SparseExtentHeader`,
//! packed, 512 bytes) and "Stream-Optimized Compressed Sparse Extents"
//! (`Marker`: `SectorType val; uint32 size; uint32 type;`). No validation
//! happens here: see [`crate::header`].

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Size of one sector.
pub(crate) const SECTOR: u64 = 512;

/// `SparseExtentHeader`, 512 bytes.
#[derive(Debug, Clone, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub(crate) struct SparseExtentHeaderRaw {
    /// `'K' 'D' 'M' 'V'`.
    pub(crate) magic: [u8; 4],
    pub(crate) version: U32,
    pub(crate) flags: U32,
    /// Capacity in sectors.
    pub(crate) capacity: U64,
    /// Grain size in sectors.
    pub(crate) grain_size: U64,
    pub(crate) descriptor_offset: U64,
    pub(crate) descriptor_size: U64,
    pub(crate) num_gtes_per_gt: U32,
    pub(crate) rgd_offset: U64,
    pub(crate) gd_offset: U64,
    pub(crate) overhead: U64,
    pub(crate) unclean_shutdown: u8,
    /// `'\n' ' ' '\r' '\n'`, to detect text-mode transfers.
    pub(crate) newline_test: [u8; 4],
    pub(crate) compress_algorithm: U16,
    pub(crate) pad: [u8; 433],
}

/// Marker header at the start of a marker sector (stream-optimized).
#[derive(Debug, Clone, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub(crate) struct MarkerRaw {
    /// LBA for a grain marker, sector count of the metadata otherwise.
    pub(crate) val: U64,
    /// Compressed size for a grain marker, 0 for a metadata marker.
    pub(crate) size: U32,
    /// Metadata marker type (only meaningful when `size == 0`).
    pub(crate) marker_type: U32,
}

const _: () = assert!(size_of::<SparseExtentHeaderRaw>() == 512);
const _: () = assert!(size_of::<MarkerRaw>() == 16);
