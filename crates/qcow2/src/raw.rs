//! On-disk layout of the QCOW2 header, as `#[repr(C)]` big-endian zerocopy structs.
//!
//! Mirrors `docs/interop/qcow2.rst` ("Header"). Only layout lives here; validation is in
//! [`crate::parse`]. Every write of header fields, in the engine and in tests that build
//! hostile images, goes through [`RawHeader`], never through byte offsets.

pub use zerocopy::byteorder::big_endian::{U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

/// `QFI\xfb`.
pub const QCOW2_MAGIC: u32 = 0x5146_49fb;

/// Header extension type: end of the extension area.
pub const EXT_END: u32 = 0;
/// Header extension type: backing file format name.
pub const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// Header extension type: feature name table.
pub const EXT_FEATURE_NAMES: u32 = 0x6803_f857;
/// Header extension type: bitmaps.
pub const EXT_BITMAPS: u32 = 0x2385_2875;
/// Header extension type: full disk encryption header.
pub const EXT_CRYPTO: u32 = 0x0537_be77;
/// Header extension type: external data file name.
pub const EXT_DATA_FILE: u32 = 0x4441_5441;

/// The fixed part of a version 2 header (72 bytes).
pub const V2_HEADER_LEN: usize = 72;
/// The fixed part of a version 3 header without the compression type (104 bytes).
pub const V3_MIN_HEADER_LEN: usize = 104;

/// The complete header, version 3 layout with the compression type byte (112 bytes).
///
/// Version 2 images use only the first 72 bytes; the rest is then read as zero.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct RawHeader {
    /// `QFI\xfb`.
    pub magic: U32,
    /// 2 or 3.
    pub version: U32,
    /// Offset of the backing file name, 0 when none.
    pub backing_file_offset: U64,
    /// Length of the backing file name in bytes.
    pub backing_file_size: U32,
    /// log2 of the cluster size.
    pub cluster_bits: U32,
    /// Virtual size in bytes.
    pub size: U64,
    /// 0 none, 1 AES, 2 LUKS.
    pub crypt_method: U32,
    /// Number of L1 entries.
    pub l1_size: U32,
    /// Offset of the active L1 table.
    pub l1_table_offset: U64,
    /// Offset of the refcount table.
    pub refcount_table_offset: U64,
    /// Refcount table length in clusters.
    pub refcount_table_clusters: U32,
    /// Number of internal snapshots.
    pub nb_snapshots: U32,
    /// Offset of the snapshot table.
    pub snapshots_offset: U64,
    /// v3: incompatible feature bits.
    pub incompatible_features: U64,
    /// v3: compatible feature bits.
    pub compatible_features: U64,
    /// v3: auto-clear feature bits.
    pub autoclear_features: U64,
    /// v3: refcount width is `1 << refcount_order` bits.
    pub refcount_order: U32,
    /// v3: header length in bytes.
    pub header_length: U32,
    /// v3 (header_length > 104): 0 zlib, 1 zstd.
    pub compression_type: u8,
    /// Padding to a multiple of 8.
    pub padding: [u8; 7],
}

/// Size of [`RawHeader`].
pub const RAW_HEADER_LEN: usize = 112;

const _: () = assert!(size_of::<RawHeader>() == RAW_HEADER_LEN);

impl RawHeader {
    /// The fixed header at the start of `image`; bytes beyond the end of `image` read as 0.
    #[must_use]
    pub fn read_from_image(image: &[u8]) -> Self {
        let mut h = Self::new_zeroed();
        let n = image.len().min(RAW_HEADER_LEN);
        h.as_mut_bytes()[..n].copy_from_slice(&image[..n]);
        h
    }

    /// Writes this header over the start of `image` (as much of it as `image` holds).
    pub fn write_to_image(&self, image: &mut [u8]) {
        let n = image.len().min(RAW_HEADER_LEN);
        image[..n].copy_from_slice(&self.as_bytes()[..n]);
    }

    /// Reads the header of `image`, lets `change` set fields, and writes it back.
    pub fn patch_image(image: &mut [u8], change: impl FnOnce(&mut Self)) {
        let mut h = Self::read_from_image(image);
        change(&mut h);
        h.write_to_image(image);
    }
}

/// One header extension's type and length.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct RawExtensionHeader {
    /// Extension type.
    pub ext_type: U32,
    /// Length of the data that follows (padded to 8 on disk).
    pub len: U32,
}

/// One entry of the feature name table (48 bytes).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct RawFeatureName {
    /// 0 incompatible, 1 compatible, 2 autoclear.
    pub feature_type: u8,
    /// Bit number.
    pub bit: u8,
    /// NUL-padded name.
    pub name: [u8; 46],
}

const _: () = assert!(size_of::<RawFeatureName>() == 48);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_header_field_offsets_match_spec() {
        let mut h = RawHeader::new_zeroed();
        h.refcount_table_offset = U64::new(0x0102_0304_0506_0708);
        h.autoclear_features = U64::new(0x1112_1314_1516_1718);
        let bytes = h.as_bytes();
        assert_eq!(bytes[48], 0x01);
        assert_eq!(bytes[88], 0x11);
    }

    #[test]
    fn patch_image_changes_only_the_named_field() {
        let mut image = vec![0xa5u8; 200];
        let before = image.clone();
        RawHeader::patch_image(&mut image, |h| h.l1_size = U32::new(7));
        assert_eq!(RawHeader::read_from_image(&image).l1_size.get(), 7);
        let changed: Vec<usize> = (0..image.len())
            .filter(|&i| image[i] != before[i])
            .collect();
        assert_eq!(changed, vec![36, 37, 38, 39]);
    }
}
