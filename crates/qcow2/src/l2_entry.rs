//! L1 and L2 table entries: what one guest cluster maps to in this layer.
//!
//! Bit layout per `docs/interop/qcow2.rst` ("Cluster mapping", "Extended L2 Entries"):
//!
//! - L1 entry: bits 9-55 offset of the L2 table, bit 63 "refcount is exactly one".
//! - L2 entry, first 64 bits: bit 62 "0 for standard clusters, 1 for compressed clusters",
//!   bit 63 "1 for standard clusters whose refcount is exactly one".
//!   - Standard cluster descriptor: bit 0 "If set to 1, the cluster reads as all zeros"
//!     (version 3 without extended L2 only), bits 9-55 host cluster offset, "If the offset
//!     is 0 and bit 63 is clear, the cluster is unallocated".
//!   - Compressed cluster descriptor, `x = 62 - (cluster_bits - 8)`: bits 0..x-1 host
//!     offset (not aligned), bits x..61 "Number of additional 512-byte sectors used for the
//!     compressed data, beyond the sector containing the offset".
//! - Extended L2 entries add a second 64-bit word, the subcluster bitmap: bits 0-31
//!   "Allocation status (one bit per subcluster)", bits 32-63 "Subcluster reads as zeros";
//!   compressed clusters have no subclusters (bitmap reserved).

use crate::core::Geo;
use crate::error::Qcow2Error;
use crate::offset::HostOffset;

/// L1 entry bits 9..55: offset of the L2 table.
pub(crate) const L1E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Bit 63 of L1 entries: the L2 table's refcount is exactly one.
pub(crate) const L1E_COPIED: u64 = 1 << 63;

/// L2 entry bits 9..55: host cluster offset of a standard cluster.
const L2E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Bit 63 of L2 entries: refcount is exactly one.
const L2E_COPIED: u64 = 1 << 63;
/// Bit 62 of L2 entries: compressed cluster.
const L2E_COMPRESSED: u64 = 1 << 62;
/// Bit 0 of standard L2 entries (v3): reads as zeros.
const L2E_ZERO: u64 = 1;
/// Subclusters per cluster with extended L2 entries.
const SUBCLUSTERS: u64 = 32;
/// The zero half of the subcluster bitmap with every subcluster set.
const ALL_SUBCLUSTERS_ZERO: u64 = 0xffff_ffff << 32;

/// One L2 entry: the cluster descriptor and, with extended L2, the subcluster bitmap
/// (0 otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct L2Entry {
    descriptor: u64,
    bitmap: u64,
}

/// The host bytes holding one compressed cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CompressedRange {
    /// Where the compressed data starts (not aligned).
    pub(crate) offset: HostOffset,
    /// Its length in bytes, up to the end of its last sector.
    pub(crate) len: u64,
}

impl L2Entry {
    /// An unallocated cluster: reads from the backing file (zeros without one).
    pub(crate) const UNALLOCATED: Self = Self {
        descriptor: 0,
        bitmap: 0,
    };

    /// The entry as stored: descriptor and subcluster bitmap words.
    pub(crate) fn from_words(descriptor: u64, bitmap: u64) -> Self {
        Self { descriptor, bitmap }
    }

    /// The descriptor word.
    pub(crate) fn descriptor(self) -> u64 {
        self.descriptor
    }

    /// The subcluster bitmap word (0 without extended L2).
    pub(crate) fn bitmap(self) -> u64 {
        self.bitmap
    }

    /// A standard cluster at `host` (refcount one, COPIED set) with subcluster `bitmap`
    /// (0 without extended L2).
    pub(crate) fn data(host: HostOffset, bitmap: u64) -> Self {
        Self {
            descriptor: host.get() | L2E_COPIED,
            bitmap,
        }
    }

    /// A cluster that reads as zeros without a host cluster: the zero flag, or with extended
    /// L2 every subcluster's zero bit.
    pub(crate) fn zeroed(extended: bool) -> Self {
        if extended {
            Self {
                descriptor: 0,
                bitmap: ALL_SUBCLUSTERS_ZERO,
            }
        } else {
            Self {
                descriptor: L2E_ZERO,
                bitmap: 0,
            }
        }
    }

    /// Bit 63: the host cluster's refcount is exactly one, so it may be written in place.
    pub(crate) fn is_copied(self) -> bool {
        self.descriptor & L2E_COPIED != 0
    }

    /// Bit 62: a compressed cluster.
    pub(crate) fn is_compressed(self) -> bool {
        self.descriptor & L2E_COMPRESSED != 0
    }

    /// Bit 0 of a standard descriptor: the cluster reads as zeros (meaningful in version 3
    /// images without extended L2).
    pub(crate) fn has_zero_flag(self) -> bool {
        !self.is_compressed() && self.descriptor & L2E_ZERO != 0
    }

    /// Host cluster offset of a standard cluster (bits 9-55); `None` when it is 0 or the
    /// cluster is compressed.
    pub(crate) fn host_offset(self) -> Option<HostOffset> {
        if self.is_compressed() {
            return None;
        }
        let off = self.descriptor & L2E_OFFSET_MASK;
        (off != 0).then_some(HostOffset(off))
    }

    /// Allocation bits of the subcluster bitmap (bit `i` for subcluster `i`).
    pub(crate) fn alloc_bits(self) -> u64 {
        self.bitmap & 0xffff_ffff
    }

    /// Reads-as-zero bits of the subcluster bitmap (bit `i` for subcluster `i`).
    pub(crate) fn zero_bits(self) -> u64 {
        self.bitmap >> 32
    }

    /// The host bytes of a compressed cluster, from its descriptor.
    pub(crate) fn compressed_range(self, cluster_bits: u32) -> CompressedRange {
        let x = 62 - (cluster_bits - 8);
        let off = self.descriptor & ((1u64 << x) - 1);
        let sectors = ((self.descriptor & !L2E_COMPRESSED & !L2E_COPIED) >> x) + 1;
        CompressedRange {
            offset: HostOffset(off),
            len: sectors * 512 - (off & 511),
        }
    }

    /// Host clusters spanned by a compressed cluster: (first cluster index, count).
    pub(crate) fn compressed_clusters(self, geo: &Geo) -> (u64, u64) {
        let r = self.compressed_range(geo.cluster_bits);
        let first = r.offset.get() / geo.cluster_size;
        let last = (r.offset.get() + r.len - 1) / geo.cluster_size;
        (first, last - first + 1)
    }

    /// Granule states of the cluster (one, or 32 subclusters with extended L2), validating
    /// host offsets against a file of `file_len` bytes.
    pub(crate) fn granules(self, geo: &Geo, file_len: u64) -> Result<Vec<Granule>, Qcow2Error> {
        if self.is_compressed() {
            return Ok(vec![Granule::Compressed; geo.granules as usize]);
        }
        let host = self.descriptor & L2E_OFFSET_MASK;
        let check_host = || {
            if !host.is_multiple_of(geo.cluster_size) {
                return Err(Qcow2Error::Corrupt {
                    what: "misaligned data cluster offset",
                    offset: host,
                });
            }
            if host >= file_len {
                return Err(Qcow2Error::Corrupt {
                    what: "data cluster beyond end of file",
                    offset: host,
                });
            }
            Ok(())
        };
        if !geo.extended {
            let g = if geo.version >= 3 && self.has_zero_flag() {
                Granule::Zero
            } else if host == 0 {
                Granule::Unalloc
            } else {
                check_host()?;
                Granule::Data(HostOffset(host))
            };
            return Ok(vec![g]);
        }
        let alloc = self.alloc_bits();
        let zero = self.zero_bits();
        if alloc & zero != 0 {
            return Err(Qcow2Error::Corrupt {
                what: "subcluster both allocated and zero",
                offset: host,
            });
        }
        if alloc != 0 {
            if host == 0 {
                return Err(Qcow2Error::Corrupt {
                    what: "allocated subclusters without host cluster",
                    offset: 0,
                });
            }
            check_host()?;
        }
        Ok((0..SUBCLUSTERS)
            .map(|g| {
                if alloc & (1 << g) != 0 {
                    Granule::Data(HostOffset(host + g * geo.granule))
                } else if zero & (1 << g) != 0 {
                    Granule::Zero
                } else {
                    Granule::Unalloc
                }
            })
            .collect())
    }
}

/// State of one allocation granule of a guest cluster in this layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Granule {
    Unalloc,
    Zero,
    /// Host offset of the granule's data.
    Data(HostOffset),
    Compressed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l2_entry_flags_follow_the_spec_bits() {
        let e = L2Entry::data(HostOffset(0x3_0000), 0);
        assert_eq!(e.descriptor(), 0x8000_0000_0003_0000);
        assert!(e.is_copied() && !e.is_compressed() && !e.has_zero_flag());
        assert_eq!(e.host_offset(), Some(HostOffset(0x3_0000)));
        let z = L2Entry::zeroed(false);
        assert_eq!((z.descriptor(), z.bitmap()), (1, 0));
        assert!(z.has_zero_flag() && z.host_offset().is_none());
        let zx = L2Entry::zeroed(true);
        assert_eq!((zx.alloc_bits(), zx.zero_bits()), (0, 0xffff_ffff));
        assert_eq!(L2Entry::UNALLOCATED.host_offset(), None);
    }

    #[test]
    fn compressed_descriptor_decodes_offset_and_sectors() {
        // 64 KiB clusters: x = 62 - 8 = 54; 3 additional sectors, offset 0x1_0100.
        let cluster_bits = 16;
        let d = (1u64 << 62) | (3u64 << 54) | 0x1_0100;
        let e = L2Entry::from_words(d, 0);
        assert!(e.is_compressed() && !e.has_zero_flag() && e.host_offset().is_none());
        let r = e.compressed_range(cluster_bits);
        assert_eq!(r.offset, HostOffset(0x1_0100));
        assert_eq!(r.len, 4 * 512 - 0x100);
    }
}
