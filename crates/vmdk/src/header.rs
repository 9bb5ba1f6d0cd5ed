//! Validated hosted sparse extent header (`KDMV`) and stream markers.
//!
//! [`SparseHeader::parse`] turns 512 bytes into a header whose numbers are
//! within named limits, so that later arithmetic on them cannot overflow and
//! no allocation is sized by an absurd field. The spec says: "grainSize ...
//! must be a power of 2 and must be greater than 8 (4KB)" and
//! "numGTEsPerGT ... is 512"; qemu refuses more than 512 GTEs per GT and
//! writes 128-sector grains. We accept power-of-two grains from 1 sector up to
//! [`MAX_GRAIN_SECTORS`] and 1 to [`MAX_GTES_PER_GT`] entries per table.

use zerocopy::{FromBytes, IntoBytes};

use crate::raw::{MarkerRaw, SparseExtentHeaderRaw};

/// `KDMV`, the sparse extent magic.
pub const SPARSE_MAGIC: [u8; 4] = *b"KDMV";
/// Largest grain accepted, in sectors (1 MiB).
pub const MAX_GRAIN_SECTORS: u64 = 2048;
/// Largest number of grain table entries per grain table accepted.
pub const MAX_GTES_PER_GT: u32 = 512;
/// Largest extent capacity accepted, in sectors (2^40 sectors = 512 TiB).
pub const MAX_CAPACITY_SECTORS: u64 = 1 << 40;
/// `gdOffset` value meaning "the grain directory is found through the footer".
pub const GD_AT_END: u64 = u64::MAX;
/// Flag: the newline test bytes are valid.
pub const FLAG_NEWLINE_TEST: u32 = 1;
/// Flag: a redundant grain directory exists.
pub const FLAG_REDUNDANT_GD: u32 = 1 << 1;
/// Flag: grain table entry 1 means "zeroed grain".
pub const FLAG_ZERO_GRAIN: u32 = 1 << 2;
/// Flag: grains are compressed.
pub const FLAG_COMPRESSED: u32 = 1 << 16;
/// Flag: the extent has markers (stream-optimized).
pub const FLAG_MARKERS: u32 = 1 << 17;
/// `compressAlgorithm` none.
pub const COMPRESSION_NONE: u16 = 0;
/// `compressAlgorithm` deflate (zlib stream).
pub const COMPRESSION_DEFLATE: u16 = 1;
/// The newline test bytes.
pub const NEWLINE_TEST: [u8; 4] = *b"\n \r\n";

/// A validated sparse extent header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparseHeader {
    /// Format version, 1 to 3.
    pub version: u32,
    /// Flag bits (`FLAG_*`).
    pub flags: u32,
    /// Capacity in sectors.
    pub capacity: u64,
    /// Grain size in sectors (power of two).
    pub grain_sectors: u64,
    /// Embedded descriptor start sector (0 = none).
    pub descriptor_offset: u64,
    /// Embedded descriptor length in sectors.
    pub descriptor_sectors: u64,
    /// Grain table entries per grain table.
    pub gtes_per_gt: u32,
    /// Redundant grain directory sector (ignored for reading).
    pub rgd_offset: u64,
    /// Grain directory sector, or [`GD_AT_END`].
    pub gd_offset: u64,
    /// Metadata overhead in sectors.
    pub overhead: u64,
    /// Unclean-shutdown byte was set.
    pub unclean_shutdown: bool,
    /// Compression algorithm.
    pub compression: u16,
}

/// Why a sparse header was refused.
pub type HeaderProblem = &'static str;

impl SparseHeader {
    /// Size of the encoded header.
    pub const SIZE: usize = 512;

    /// Parses and validates a header from the first 512 bytes of `bytes`.
    ///
    /// # Errors
    /// A short description of the first invalid field.
    pub fn parse(bytes: &[u8]) -> Result<Self, HeaderProblem> {
        let (raw, _) =
            SparseExtentHeaderRaw::read_from_prefix(bytes).map_err(|_| "shorter than 512 bytes")?;
        if raw.magic != SPARSE_MAGIC {
            return Err("bad magic");
        }
        let h = Self {
            version: raw.version.get(),
            flags: raw.flags.get(),
            capacity: raw.capacity.get(),
            grain_sectors: raw.grain_size.get(),
            descriptor_offset: raw.descriptor_offset.get(),
            descriptor_sectors: raw.descriptor_size.get(),
            gtes_per_gt: raw.num_gtes_per_gt.get(),
            rgd_offset: raw.rgd_offset.get(),
            gd_offset: raw.gd_offset.get(),
            overhead: raw.overhead.get(),
            unclean_shutdown: raw.unclean_shutdown != 0,
            compression: raw.compress_algorithm.get(),
        };
        if !(1..=3).contains(&h.version) {
            return Err("unsupported version");
        }
        if h.flags & FLAG_NEWLINE_TEST != 0 && raw.newline_test != NEWLINE_TEST {
            return Err("newline test bytes damaged (text-mode transfer?)");
        }
        if !h.grain_sectors.is_power_of_two() || h.grain_sectors > MAX_GRAIN_SECTORS {
            return Err("grain size not a power of two up to 2048 sectors");
        }
        if h.gtes_per_gt == 0 || h.gtes_per_gt > MAX_GTES_PER_GT {
            return Err("grain table entries per table out of range");
        }
        if h.capacity > MAX_CAPACITY_SECTORS {
            return Err("capacity too large");
        }
        if h.compression != COMPRESSION_NONE && h.compression != COMPRESSION_DEFLATE {
            return Err("unknown compression algorithm");
        }
        if h.compressed() && h.compression != COMPRESSION_DEFLATE {
            return Err("compressed flag without deflate");
        }
        if h.descriptor_sectors > crate::descriptor::MAX_DESCRIPTOR_BYTES / 512 {
            return Err("embedded descriptor too large");
        }
        Ok(h)
    }

    /// Encodes the header into 512 bytes (newline test bytes always written).
    #[must_use]
    pub fn encode(&self) -> [u8; 512] {
        let raw = SparseExtentHeaderRaw {
            magic: SPARSE_MAGIC,
            version: self.version.into(),
            flags: self.flags.into(),
            capacity: self.capacity.into(),
            grain_size: self.grain_sectors.into(),
            descriptor_offset: self.descriptor_offset.into(),
            descriptor_size: self.descriptor_sectors.into(),
            num_gtes_per_gt: self.gtes_per_gt.into(),
            rgd_offset: self.rgd_offset.into(),
            gd_offset: self.gd_offset.into(),
            overhead: self.overhead.into(),
            unclean_shutdown: u8::from(self.unclean_shutdown),
            newline_test: NEWLINE_TEST,
            compress_algorithm: self.compression.into(),
            pad: [0; 433],
        };
        let mut out = [0u8; 512];
        out.copy_from_slice(raw.as_bytes());
        out
    }

    /// Whether grains are compressed (stream-optimized).
    #[must_use]
    pub fn compressed(&self) -> bool {
        self.flags & FLAG_COMPRESSED != 0
    }

    /// Whether grains and metadata are preceded by markers.
    #[must_use]
    pub fn has_markers(&self) -> bool {
        self.flags & FLAG_MARKERS != 0
    }

    /// Grain size in bytes (at most 1 MiB).
    #[must_use]
    pub fn grain_bytes(&self) -> u64 {
        self.grain_sectors * 512
    }

    /// Number of grains covering the capacity.
    #[must_use]
    pub fn grain_count(&self) -> u64 {
        self.capacity.div_ceil(self.grain_sectors)
    }

    /// Number of grain directory entries covering the capacity.
    #[must_use]
    pub fn gd_entries(&self) -> u64 {
        self.grain_count().div_ceil(u64::from(self.gtes_per_gt))
    }
}

/// Metadata marker types (`size == 0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MarkerType {
    /// `MARKER_EOS`
    EndOfStream,
    /// `MARKER_GT`
    GrainTable,
    /// `MARKER_GD`
    GrainDirectory,
    /// `MARKER_FOOTER`
    Footer,
}

/// A decoded marker: a compressed grain or a metadata marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// A compressed grain of `size` bytes for guest sector `lba`.
    Grain {
        /// Guest sector of the grain (relative to the extent).
        lba: u64,
        /// Compressed length in bytes, following the 12-byte grain marker.
        size: u32,
    },
    /// A metadata marker covering `sectors` sectors.
    Metadata {
        /// Metadata length in sectors.
        sectors: u64,
        /// Marker type.
        kind: MarkerType,
    },
}

impl Marker {
    /// Length of the grain marker header before compressed data.
    pub const GRAIN_HEADER: usize = 12;

    /// Decodes a marker from the first 16 bytes of `bytes`.
    ///
    /// # Errors
    /// When shorter than 16 bytes or an unknown metadata type.
    pub fn parse(bytes: &[u8]) -> Result<Self, HeaderProblem> {
        let (raw, _) = MarkerRaw::read_from_prefix(bytes).map_err(|_| "short marker")?;
        let size = raw.size.get();
        if size != 0 {
            return Ok(Self::Grain {
                lba: raw.val.get(),
                size,
            });
        }
        let kind = match raw.marker_type.get() {
            0 => MarkerType::EndOfStream,
            1 => MarkerType::GrainTable,
            2 => MarkerType::GrainDirectory,
            3 => MarkerType::Footer,
            _ => return Err("unknown marker type"),
        };
        Ok(Self::Metadata {
            sectors: raw.val.get(),
            kind,
        })
    }

    /// Encodes the marker into 16 bytes.
    #[must_use]
    pub fn encode(&self) -> [u8; 16] {
        let raw = match *self {
            Self::Grain { lba, size } => MarkerRaw {
                val: lba.into(),
                size: size.into(),
                marker_type: 0.into(),
            },
            Self::Metadata { sectors, kind } => {
                let t: u32 = match kind {
                    MarkerType::EndOfStream => 0,
                    MarkerType::GrainTable => 1,
                    MarkerType::GrainDirectory => 2,
                    MarkerType::Footer => 3,
                };
                MarkerRaw {
                    val: sectors.into(),
                    size: 0.into(),
                    marker_type: t.into(),
                }
            }
        };
        let mut out = [0u8; 16];
        out.copy_from_slice(raw.as_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn qemu_like() -> SparseHeader {
        SparseHeader {
            version: 1,
            flags: FLAG_NEWLINE_TEST | FLAG_REDUNDANT_GD,
            capacity: 10243,
            grain_sectors: 128,
            descriptor_offset: 1,
            descriptor_sectors: 20,
            gtes_per_gt: 512,
            rgd_offset: 21,
            gd_offset: 26,
            overhead: 128,
            unclean_shutdown: false,
            compression: 0,
        }
    }

    #[test]
    fn header_parse_qemu_layout_reads_fields() {
        let h = SparseHeader::parse(&qemu_like().encode()).unwrap();
        assert_eq!(h.grain_count(), 81);
        assert_eq!(h.gd_entries(), 1);
    }

    #[test]
    fn header_bad_magic_is_rejected() {
        let mut b = qemu_like().encode();
        b[0] = b'X';
        assert_eq!(SparseHeader::parse(&b), Err("bad magic"));
    }

    #[test]
    fn header_absurd_grain_size_is_rejected() {
        for g in [0, 3, 4096, u64::MAX] {
            let h = SparseHeader {
                grain_sectors: g,
                ..qemu_like()
            };
            assert!(SparseHeader::parse(&h.encode()).is_err(), "{g}");
        }
    }

    #[test]
    fn header_absurd_gtes_per_gt_is_rejected() {
        for n in [0, 513, u32::MAX] {
            let h = SparseHeader {
                gtes_per_gt: n,
                ..qemu_like()
            };
            assert!(SparseHeader::parse(&h.encode()).is_err(), "{n}");
        }
    }

    #[test]
    fn header_damaged_newline_bytes_are_rejected() {
        let mut b = qemu_like().encode();
        b[75] = b'\n';
        assert!(SparseHeader::parse(&b).is_err());
    }

    #[test]
    fn header_short_input_is_rejected() {
        assert!(SparseHeader::parse(&[0u8; 100]).is_err());
    }

    #[test]
    fn marker_unknown_type_is_rejected() {
        let mut b = Marker::Metadata {
            sectors: 1,
            kind: MarkerType::Footer,
        }
        .encode();
        b[12] = 9;
        assert!(Marker::parse(&b).is_err());
    }

    fn arb_header() -> impl Strategy<Value = SparseHeader> {
        (
            (1u32..=3, any::<u32>(), 0..=MAX_CAPACITY_SECTORS, 0u32..=11),
            (
                any::<u64>(),
                0..=2048u64,
                1..=MAX_GTES_PER_GT,
                any::<u64>(),
                any::<u64>(),
            ),
            (any::<u64>(), any::<bool>(), any::<bool>()),
        )
            .prop_map(
                |(
                    (version, flags, capacity, gshift),
                    (doff, dsz, gtes, rgd, gd),
                    (ovh, unclean, deflate),
                )| {
                    let flags = if deflate {
                        flags
                    } else {
                        flags & !FLAG_COMPRESSED
                    };
                    SparseHeader {
                        version,
                        flags,
                        capacity,
                        grain_sectors: 1 << gshift,
                        descriptor_offset: doff,
                        descriptor_sectors: dsz,
                        gtes_per_gt: gtes,
                        rgd_offset: rgd,
                        gd_offset: gd,
                        overhead: ovh,
                        unclean_shutdown: unclean,
                        compression: u16::from(deflate),
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn sparse_header_encode_parse_round_trips(h in arb_header()) {
            prop_assert_eq!(SparseHeader::parse(&h.encode()), Ok(h));
        }

        #[test]
        fn marker_encode_parse_round_trips(lba in any::<u64>(), size in 1u32.., t in 0u32..4, grain in any::<bool>()) {
            let m = if grain {
                Marker::Grain { lba, size }
            } else {
                let kind = [MarkerType::EndOfStream, MarkerType::GrainTable, MarkerType::GrainDirectory, MarkerType::Footer][t as usize];
                Marker::Metadata { sectors: lba, kind }
            };
            prop_assert_eq!(Marker::parse(&m.encode()), Ok(m));
        }

        #[test]
        fn header_parse_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = SparseHeader::parse(&bytes);
        }
    }
}
