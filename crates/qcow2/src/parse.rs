//! Validated parsing and encoding of the QCOW2 header and its extensions. No I/O.
//!
//! Every number read from the file is checked against a named limit before it is used, and
//! every table the header points to must lie inside the file (the caller passes the file
//! length), so later allocations are bounded by the file's size.

use zerocopy::byteorder::big_endian::{U32, U64};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

use crate::error::Qcow2Error;
use crate::raw::{
    EXT_BACKING_FORMAT, EXT_CRYPTO, EXT_DATA_FILE, EXT_END, EXT_FEATURE_NAMES, QCOW2_MAGIC,
    RAW_HEADER_LEN, RawExtensionHeader, RawFeatureName, RawHeader, V2_HEADER_LEN,
    V3_MIN_HEADER_LEN,
};

/// Smallest cluster size: "cluster_bits ... must not be less than 9 (i.e. 512 byte clusters)".
pub const MIN_CLUSTER_BITS: u32 = 9;
/// Largest cluster size QEMU supports: 2 MiB.
pub const MAX_CLUSTER_BITS: u32 = 21;
/// Extended L2 entries need clusters of at least 16 KiB (subclusters of at least 512 bytes).
pub const MIN_EXTENDED_L2_CLUSTER_BITS: u32 = 14;
/// QEMU's limit on the L1 table: 32 MiB of entries.
pub const MAX_L1_ENTRIES: u64 = 32 * 1024 * 1024 / 8;
/// QEMU's limit on the refcount table: 8 MiB.
pub const MAX_REFTABLE_BYTES: u64 = 8 * 1024 * 1024;
/// "refcount_order ... must not exceed 6".
pub const MAX_REFCOUNT_ORDER: u32 = 6;
/// QEMU refuses backing file names longer than 1023 bytes.
pub const MAX_BACKING_NAME: u32 = 1023;
/// QEMU's limit on internal snapshots.
pub const MAX_SNAPSHOTS: u32 = 65536;
/// Largest virtual size we accept: 2^61 bytes (QEMU's `QCOW_MAX_...` family stays below).
pub const MAX_VIRTUAL_SIZE: u64 = 1 << 61;

/// Incompatible feature bit: dirty (lazy refcounts in use).
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
/// Incompatible feature bit: corrupt.
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
/// Incompatible feature bit: external data file.
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// Incompatible feature bit: compression type field is valid.
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
/// Incompatible feature bit: extended L2 entries.
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
const KNOWN_INCOMPAT: u64 =
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;

/// Compression method of compressed clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CompressionType {
    /// Raw deflate (the default).
    Zlib,
    /// Zstandard (refused on open).
    Zstd,
}

/// Format of a backing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackingFormat {
    /// A QCOW2 image.
    Qcow2,
    /// A raw disk image.
    Raw,
}

impl BackingFormat {
    /// The name stored in the backing format header extension.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Qcow2 => "qcow2",
            Self::Raw => "raw",
        }
    }
}

/// One feature name table entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureName {
    /// 0 incompatible, 1 compatible, 2 autoclear.
    pub feature_type: u8,
    /// Bit number.
    pub bit: u8,
    /// Name.
    pub name: String,
}

/// A validated QCOW2 header with the extensions we understand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// log2 cluster size, 9..=21.
    pub cluster_bits: u32,
    /// Virtual size in bytes.
    pub virtual_size: u64,
    /// L1 entries.
    pub l1_size: u32,
    /// L1 offset (cluster aligned).
    pub l1_table_offset: u64,
    /// Refcount table offset (cluster aligned).
    pub refcount_table_offset: u64,
    /// Refcount table clusters.
    pub refcount_table_clusters: u32,
    /// Internal snapshots.
    pub nb_snapshots: u32,
    /// Snapshot table offset.
    pub snapshots_offset: u64,
    /// Incompatible feature bits.
    pub incompatible: u64,
    /// Compatible feature bits.
    pub compatible: u64,
    /// Autoclear feature bits.
    pub autoclear: u64,
    /// Refcount width is `1 << refcount_order` bits.
    pub refcount_order: u32,
    /// Header length in bytes.
    pub header_length: u32,
    /// Compression type.
    pub compression: CompressionType,
    /// Backing file name as stored.
    pub backing_file: Option<String>,
    /// Backing format from the header extension.
    pub backing_format: Option<BackingFormat>,
    /// Feature name table.
    pub feature_names: Vec<FeatureName>,
}

fn invalid(field: &'static str, value: u64, reason: &'static str) -> Qcow2Error {
    Qcow2Error::InvalidHeader {
        field,
        value,
        reason,
    }
}

fn unsupported(feature: impl Into<String>) -> Qcow2Error {
    Qcow2Error::UnsupportedFeature {
        feature: feature.into(),
    }
}

/// Checks that `[offset, offset + len)` lies inside a file of `file_len` bytes.
fn within(offset: u64, len: u64, file_len: u64) -> bool {
    offset.checked_add(len).is_some_and(|end| end <= file_len)
}

impl Header {
    /// Cluster size in bytes.
    #[must_use]
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Whether extended L2 entries are in use.
    #[must_use]
    pub fn extended_l2(&self) -> bool {
        self.incompatible & INCOMPAT_EXTL2 != 0
    }

    /// Bytes needed from the file start before [`Header::parse`] can succeed: the cluster size
    /// announced in the first [`RAW_HEADER_LEN`] bytes (clamped to the file).
    ///
    /// # Errors
    /// Bad magic or cluster bits.
    pub fn first_cluster_len(prefix: &[u8], file_len: u64) -> Result<u64, Qcow2Error> {
        let raw = raw_prefix(prefix, file_len)?;
        let bits = raw.cluster_bits.get();
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&bits) {
            return Err(invalid("cluster_bits", bits.into(), "must be 9..=21"));
        }
        Ok((1u64 << bits).min(file_len))
    }

    /// Parses and validates the header from the first cluster of an image.
    ///
    /// `buf` holds the first cluster (or the whole file when shorter); `file_len` is the
    /// image file's length, against which every table offset is checked.
    ///
    /// # Errors
    /// Any field out of its limits, unsupported features, tables beyond the end of file.
    pub fn parse(buf: &[u8], file_len: u64) -> Result<Self, Qcow2Error> {
        let raw = raw_prefix(buf, file_len)?;
        let version = raw.version.get();
        let cluster_bits = raw.cluster_bits.get();
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(invalid(
                "cluster_bits",
                cluster_bits.into(),
                "must be 9..=21",
            ));
        }
        let cluster_size = 1u64 << cluster_bits;
        let (header_length, incompatible, compatible, autoclear, refcount_order) = if version == 2 {
            (V2_HEADER_LEN as u32, 0, 0, 0, 4)
        } else {
            (
                raw.header_length.get(),
                raw.incompatible_features.get(),
                raw.compatible_features.get(),
                raw.autoclear_features.get(),
                raw.refcount_order.get(),
            )
        };
        if version == 3 {
            if (header_length as usize) < V3_MIN_HEADER_LEN {
                return Err(invalid("header_length", header_length.into(), "below 104"));
            }
            if u64::from(header_length) > cluster_size {
                return Err(invalid(
                    "header_length",
                    header_length.into(),
                    "beyond first cluster",
                ));
            }
            if !header_length.is_multiple_of(8) {
                return Err(invalid(
                    "header_length",
                    header_length.into(),
                    "not a multiple of 8",
                ));
            }
            if buf.len() < header_length as usize {
                return Err(Qcow2Error::Truncated {
                    needed: header_length.into(),
                    file_len,
                });
            }
        }
        if refcount_order > MAX_REFCOUNT_ORDER {
            return Err(invalid(
                "refcount_order",
                refcount_order.into(),
                "must be at most 6",
            ));
        }
        if raw.crypt_method.get() != 0 {
            return Err(unsupported("encryption"));
        }
        let ext_start = header_length as usize;
        let (feature_names, backing_format, ext_features) = parse_extensions(buf, ext_start)?;
        check_incompatible(incompatible, &feature_names)?;
        if ext_features.data_file {
            return Err(unsupported("external data file"));
        }
        if ext_features.crypto {
            return Err(unsupported("encryption"));
        }
        let compression = if header_length as usize > V3_MIN_HEADER_LEN {
            match raw.compression_type {
                0 => CompressionType::Zlib,
                1 => return Err(unsupported("zstd compression")),
                other => {
                    return Err(invalid("compression_type", other.into(), "unknown"));
                }
            }
        } else {
            CompressionType::Zlib
        };
        if incompatible & INCOMPAT_COMPRESSION != 0 && compression == CompressionType::Zlib {
            return Err(invalid("compression_type", 0, "flag set for zlib"));
        }
        if incompatible & INCOMPAT_EXTL2 != 0 && cluster_bits < MIN_EXTENDED_L2_CLUSTER_BITS {
            return Err(invalid(
                "cluster_bits",
                cluster_bits.into(),
                "too small for extended L2",
            ));
        }

        let virtual_size = raw.size.get();
        if virtual_size > MAX_VIRTUAL_SIZE {
            return Err(invalid("size", virtual_size, "too large"));
        }
        let entry_bytes: u64 = if incompatible & INCOMPAT_EXTL2 != 0 {
            16
        } else {
            8
        };
        let l2_coverage = (cluster_size / entry_bytes) * cluster_size;
        let l1_needed = virtual_size.div_ceil(l2_coverage);
        let l1_size = raw.l1_size.get();
        let l1_table_offset = raw.l1_table_offset.get();
        if u64::from(l1_size) > MAX_L1_ENTRIES {
            return Err(invalid("l1_size", l1_size.into(), "too large"));
        }
        if u64::from(l1_size) < l1_needed {
            return Err(invalid(
                "l1_size",
                l1_size.into(),
                "too small for the virtual size",
            ));
        }
        if l1_size > 0 {
            if !l1_table_offset.is_multiple_of(cluster_size) {
                return Err(invalid(
                    "l1_table_offset",
                    l1_table_offset,
                    "not cluster aligned",
                ));
            }
            if !within(l1_table_offset, u64::from(l1_size) * 8, file_len) {
                return Err(invalid(
                    "l1_table_offset",
                    l1_table_offset,
                    "beyond end of file",
                ));
            }
        }
        let refcount_table_offset = raw.refcount_table_offset.get();
        let refcount_table_clusters = raw.refcount_table_clusters.get();
        let reftable_bytes = u64::from(refcount_table_clusters) * cluster_size;
        if refcount_table_clusters == 0 {
            return Err(invalid("refcount_table_clusters", 0, "must not be 0"));
        }
        if reftable_bytes > MAX_REFTABLE_BYTES {
            return Err(invalid(
                "refcount_table_clusters",
                refcount_table_clusters.into(),
                "too large",
            ));
        }
        if !refcount_table_offset.is_multiple_of(cluster_size) || refcount_table_offset == 0 {
            return Err(invalid(
                "refcount_table_offset",
                refcount_table_offset,
                "not cluster aligned",
            ));
        }
        if !within(refcount_table_offset, reftable_bytes, file_len) {
            return Err(invalid(
                "refcount_table_offset",
                refcount_table_offset,
                "beyond end of file",
            ));
        }
        let nb_snapshots = raw.nb_snapshots.get();
        let snapshots_offset = raw.snapshots_offset.get();
        if nb_snapshots > MAX_SNAPSHOTS {
            return Err(invalid("nb_snapshots", nb_snapshots.into(), "too many"));
        }
        if nb_snapshots > 0
            && (!snapshots_offset.is_multiple_of(cluster_size) || snapshots_offset >= file_len)
        {
            return Err(invalid("snapshots_offset", snapshots_offset, "invalid"));
        }
        let backing_file = parse_backing_name(buf, &raw)?;
        Ok(Self {
            version,
            cluster_bits,
            virtual_size,
            l1_size,
            l1_table_offset,
            refcount_table_offset,
            refcount_table_clusters,
            nb_snapshots,
            snapshots_offset,
            incompatible,
            compatible,
            autoclear,
            refcount_order,
            header_length,
            compression,
            backing_file,
            backing_format,
            feature_names,
        })
    }

    /// Encodes the header, its extensions and the backing file name into one cluster.
    ///
    /// Only version 3 headers are encoded (that is all we write). The feature name table is
    /// included when it fits.
    ///
    /// # Errors
    /// The header and backing name do not fit in the first cluster.
    pub fn encode(&self) -> Result<Vec<u8>, Qcow2Error> {
        let cluster_size = usize::try_from(self.cluster_size())
            .map_err(|_| invalid("cluster_bits", self.cluster_bits.into(), "too large"))?;
        let mut out = vec![0u8; cluster_size];
        let mut ext = Vec::new();
        if let Some(fmt) = self.backing_format {
            push_ext(&mut ext, EXT_BACKING_FORMAT, fmt.as_str().as_bytes());
        }
        let mut names = Vec::new();
        for f in &self.feature_names {
            let mut entry = RawFeatureName {
                feature_type: f.feature_type,
                bit: f.bit,
                name: [0; 46],
            };
            let n = f.name.len().min(46);
            entry.name[..n].copy_from_slice(&f.name.as_bytes()[..n]);
            names.extend_from_slice(entry.as_bytes());
        }
        let name_len = self.backing_file.as_ref().map_or(0, String::len);
        let fixed = self.header_length as usize;
        let end_marker = 8;
        if !names.is_empty()
            && fixed + ext.len() + 8 + names.len() + end_marker + name_len <= cluster_size
        {
            push_ext(&mut ext, EXT_FEATURE_NAMES, &names);
        }
        push_ext(&mut ext, EXT_END, &[]);
        let backing_offset = fixed + ext.len();
        if backing_offset + name_len > cluster_size {
            return Err(Qcow2Error::InvalidOptions {
                reason: "header and backing file name do not fit in the first cluster",
            });
        }
        let mut raw = RawHeader::new_zeroed();
        raw.magic = U32::new(QCOW2_MAGIC);
        raw.version = U32::new(self.version);
        if self.backing_file.is_some() {
            raw.backing_file_offset = U64::new(backing_offset as u64);
            raw.backing_file_size = U32::new(name_len as u32);
        }
        raw.cluster_bits = U32::new(self.cluster_bits);
        raw.size = U64::new(self.virtual_size);
        raw.l1_size = U32::new(self.l1_size);
        raw.l1_table_offset = U64::new(self.l1_table_offset);
        raw.refcount_table_offset = U64::new(self.refcount_table_offset);
        raw.refcount_table_clusters = U32::new(self.refcount_table_clusters);
        raw.nb_snapshots = U32::new(self.nb_snapshots);
        raw.snapshots_offset = U64::new(self.snapshots_offset);
        raw.incompatible_features = U64::new(self.incompatible);
        raw.compatible_features = U64::new(self.compatible);
        raw.autoclear_features = U64::new(self.autoclear);
        raw.refcount_order = U32::new(self.refcount_order);
        raw.header_length = U32::new(self.header_length);
        raw.compression_type = match self.compression {
            CompressionType::Zlib => 0,
            CompressionType::Zstd => 1,
        };
        let hdr = raw.as_bytes();
        let hl = fixed.min(RAW_HEADER_LEN);
        out[..hl].copy_from_slice(&hdr[..hl]);
        out[fixed..fixed + ext.len()].copy_from_slice(&ext);
        if let Some(name) = &self.backing_file {
            out[backing_offset..backing_offset + name_len].copy_from_slice(name.as_bytes());
        }
        Ok(out)
    }
}

/// The feature name table we write into images we create.
#[must_use]
pub fn default_feature_names() -> Vec<FeatureName> {
    let f = |feature_type: u8, bit: u8, name: &str| FeatureName {
        feature_type,
        bit,
        name: name.to_owned(),
    };
    vec![
        f(0, 0, "dirty bit"),
        f(0, 1, "corrupt bit"),
        f(0, 2, "external data file"),
        f(0, 3, "compression type"),
        f(0, 4, "extended L2 entries"),
        f(1, 0, "lazy refcounts"),
        f(2, 0, "bitmaps"),
        f(2, 1, "raw external data"),
    ]
}

fn push_ext(out: &mut Vec<u8>, ext_type: u32, data: &[u8]) {
    let h = RawExtensionHeader {
        ext_type: U32::new(ext_type),
        len: U32::new(data.len() as u32),
    };
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    let pad = data.len().next_multiple_of(8) - data.len();
    out.extend(std::iter::repeat_n(0u8, pad));
}

fn raw_prefix(buf: &[u8], file_len: u64) -> Result<RawHeader, Qcow2Error> {
    if buf.len() < 8 {
        return Err(Qcow2Error::Truncated {
            needed: V2_HEADER_LEN as u64,
            file_len,
        });
    }
    let magic = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if magic != QCOW2_MAGIC {
        return Err(Qcow2Error::NotQcow2 { magic });
    }
    let version = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if version != 2 && version != 3 {
        return Err(Qcow2Error::UnsupportedVersion { version });
    }
    let needed = if version == 2 {
        V2_HEADER_LEN
    } else {
        V3_MIN_HEADER_LEN
    };
    if buf.len() < needed {
        return Err(Qcow2Error::Truncated {
            needed: needed as u64,
            file_len,
        });
    }
    let mut full = [0u8; RAW_HEADER_LEN];
    let n = buf.len().min(RAW_HEADER_LEN);
    full[..n].copy_from_slice(&buf[..n]);
    if version == 2 {
        full[V2_HEADER_LEN..].fill(0);
    }
    RawHeader::read_from_bytes(&full).map_err(|_| Qcow2Error::Truncated {
        needed: RAW_HEADER_LEN as u64,
        file_len,
    })
}

#[derive(Default)]
struct ExtFeatures {
    data_file: bool,
    crypto: bool,
}

type Extensions = (Vec<FeatureName>, Option<BackingFormat>, ExtFeatures);

fn parse_extensions(buf: &[u8], start: usize) -> Result<Extensions, Qcow2Error> {
    let mut names = Vec::new();
    let mut fmt = None;
    let mut feats = ExtFeatures::default();
    let mut pos = start;
    while pos + 8 <= buf.len() {
        let Ok((h, _)) = RawExtensionHeader::read_from_prefix(&buf[pos..]) else {
            break;
        };
        let ty = h.ext_type.get();
        if ty == EXT_END {
            break;
        }
        let len = h.len.get() as usize;
        let data_start = pos + 8;
        let Some(data) = data_start
            .checked_add(len)
            .and_then(|end| buf.get(data_start..end))
        else {
            return Err(invalid(
                "header extension length",
                len as u64,
                "beyond first cluster",
            ));
        };
        match ty {
            EXT_BACKING_FORMAT => {
                fmt = Some(match data {
                    b"qcow2" => BackingFormat::Qcow2,
                    b"raw" => BackingFormat::Raw,
                    other => {
                        return Err(Qcow2Error::UnsupportedBackingFormat {
                            format: String::from_utf8_lossy(other).into_owned(),
                        });
                    }
                });
            }
            EXT_FEATURE_NAMES => {
                for chunk in data.chunks_exact(48) {
                    let Ok(e) = RawFeatureName::read_from_bytes(chunk) else {
                        continue;
                    };
                    let end = e.name.iter().position(|&b| b == 0).unwrap_or(46);
                    names.push(FeatureName {
                        feature_type: e.feature_type,
                        bit: e.bit,
                        name: String::from_utf8_lossy(&e.name[..end]).into_owned(),
                    });
                }
            }
            EXT_DATA_FILE => feats.data_file = true,
            EXT_CRYPTO => feats.crypto = true,
            _ => {}
        }
        pos = data_start + len.next_multiple_of(8);
    }
    Ok((names, fmt, feats))
}

fn check_incompatible(bits: u64, names: &[FeatureName]) -> Result<(), Qcow2Error> {
    if bits & INCOMPAT_DATA_FILE != 0 {
        return Err(unsupported("external data file"));
    }
    let unknown = bits & !KNOWN_INCOMPAT;
    if unknown == 0 {
        return Ok(());
    }
    let bit = unknown.trailing_zeros();
    let name = names
        .iter()
        .find(|f| f.feature_type == 0 && u32::from(f.bit) == bit)
        .map_or_else(
            || format!("unknown incompatible feature bit {bit}"),
            |f| f.name.clone(),
        );
    Err(unsupported(name))
}

fn parse_backing_name(buf: &[u8], raw: &RawHeader) -> Result<Option<String>, Qcow2Error> {
    let off = raw.backing_file_offset.get();
    if off == 0 {
        return Ok(None);
    }
    let size = raw.backing_file_size.get();
    if size == 0 || size > MAX_BACKING_NAME {
        return Err(invalid(
            "backing_file_size",
            size.into(),
            "must be 1..=1023",
        ));
    }
    let start = usize::try_from(off)
        .map_err(|_| invalid("backing_file_offset", off, "beyond first cluster"))?;
    let bytes = start
        .checked_add(size as usize)
        .and_then(|end| buf.get(start..end))
        .ok_or_else(|| invalid("backing_file_offset", off, "beyond first cluster"))?;
    let name = std::str::from_utf8(bytes)
        .map_err(|_| invalid("backing_file_offset", off, "name is not UTF-8"))?;
    Ok(Some(name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(cluster_bits: u32, size: u64, backing: Option<String>, ext: bool) -> Header {
        let cs = 1u64 << cluster_bits;
        let entry = if ext { 16 } else { 8 };
        let l1 = size.div_ceil((cs / entry) * cs) as u32;
        Header {
            version: 3,
            cluster_bits,
            virtual_size: size,
            l1_size: l1,
            l1_table_offset: 3 * cs,
            refcount_table_offset: cs,
            refcount_table_clusters: 1,
            nb_snapshots: 0,
            snapshots_offset: 0,
            incompatible: if ext { INCOMPAT_EXTL2 } else { 0 },
            compatible: 0,
            autoclear: 0,
            refcount_order: 4,
            header_length: 112,
            compression: CompressionType::Zlib,
            backing_format: backing.as_ref().map(|_| BackingFormat::Qcow2),
            backing_file: backing,
            feature_names: default_feature_names(),
        }
    }

    proptest! {
        #[test]
        fn header_encode_parse_round_trips(
            cluster_bits in 14u32..=21,
            size_units in 1u64..1_000_000,
            backing in proptest::option::of("[a-zA-Z0-9_./-]{1,200}"),
            ext in any::<bool>(),
        ) {
            let h = sample(cluster_bits, size_units * 512, backing, ext);
            let bytes = h.encode().unwrap();
            let file_len = 64 << 20;
            let parsed = Header::parse(&bytes, file_len).unwrap();
            prop_assert_eq!(parsed, h);
        }

        #[test]
        fn header_parse_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Header::parse(&bytes, bytes.len() as u64);
        }
    }

    #[test]
    fn header_parse_small_header_length_is_refused() {
        let h = sample(16, 1 << 20, None, false);
        let mut bytes = h.encode().unwrap();
        RawHeader::patch_image(&mut bytes, |h| h.header_length = U32::new(96));
        let err = Header::parse(&bytes, 1 << 20).unwrap_err();
        assert!(matches!(
            err,
            Qcow2Error::InvalidHeader {
                field: "header_length",
                ..
            }
        ));
    }

    #[test]
    fn header_parse_unknown_incompatible_bit_names_bit() {
        let h = sample(16, 1 << 20, None, false);
        let mut bytes = h.encode().unwrap();
        RawHeader::patch_image(&mut bytes, |h| h.incompatible_features = U64::new(1 << 9));
        let err = Header::parse(&bytes, 1 << 20).unwrap_err();
        assert!(err.to_string().contains("bit 9"), "{err}");
    }

    #[test]
    fn header_parse_encryption_is_refused() {
        let h = sample(16, 1 << 20, None, false);
        let mut bytes = h.encode().unwrap();
        RawHeader::patch_image(&mut bytes, |h| h.crypt_method = U32::new(2));
        let err = Header::parse(&bytes, 1 << 20).unwrap_err();
        assert!(err.to_string().contains("encryption"), "{err}");
    }

    #[test]
    fn header_parse_l1_beyond_eof_is_refused() {
        let h = sample(16, 1 << 30, None, false);
        let bytes = h.encode().unwrap();
        let err = Header::parse(&bytes, 3 << 16).unwrap_err();
        assert!(matches!(
            err,
            Qcow2Error::InvalidHeader {
                field: "l1_table_offset",
                ..
            }
        ));
    }

    #[test]
    fn header_parse_refcount_order_seven_is_refused() {
        let h = sample(16, 1 << 20, None, false);
        let mut bytes = h.encode().unwrap();
        RawHeader::patch_image(&mut bytes, |h| h.refcount_order = U32::new(7));
        let err = Header::parse(&bytes, 1 << 20).unwrap_err();
        assert!(matches!(
            err,
            Qcow2Error::InvalidHeader {
                field: "refcount_order",
                ..
            }
        ));
    }
}
