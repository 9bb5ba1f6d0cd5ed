//! Hosted sparse extents (`KDMV`): monolithicSparse, twoGbMaxExtentSparse
//! and streamOptimized.
//!
//! Two-level lookup, after "Virtual Disk Format 5.0": the grain directory
//! (GD, loaded once at open) holds sector numbers of grain tables (GT), each
//! of `numGTEsPerGT` 32-bit grain sector numbers. A GT entry of 0 is an
//! unallocated grain (zeros, we have no parent), 1 is a zeroed grain
//! ("overloads grain data sector number 1"). The redundant GD is ignored.
//!
//! Stream-optimized extents compress each grain (zlib) behind a 12-byte grain
//! marker `{lba: u64, size: u32}`; when the header says `gdOffset =
//! GD_AT_END`, the real header is the footer stored in the last three sectors
//! (footer marker, footer, end-of-stream marker).
//!
//! Bounds: every structure is checked to lie inside the file before it is
//! read; the GD is at most [`MAX_GD_BYTES`]; grain tables live in a bounded
//! LRU cache; a compressed grain may not exceed the grain by more than
//! [`MAX_COMPRESSION_OVERHEAD`] nor inflate to more than one grain.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use flate2::{Decompress, FlushDecompress, Status};

use crate::VmdkError;
use crate::header::{FLAG_ZERO_GRAIN, GD_AT_END, Marker, MarkerType, SparseHeader};
use crate::raw::SECTOR;
use crate::runs::Runs;
use crate::storage::Storage;

/// Largest grain directory loaded, in bytes.
pub(crate) const MAX_GD_BYTES: u64 = 16 << 20;
/// Bytes a compressed grain may exceed its grain by (deflate of incompressible data).
pub(crate) const MAX_COMPRESSION_OVERHEAD: u64 = 4096;
/// Default size of the grain table cache.
pub(crate) const DEFAULT_GT_CACHE_BYTES: usize = 4 << 20;

/// The last inflated grain of the whole image, `(extent, grain, data)`;
/// one slot shared by all extents keeps memory at one grain per image.
pub(crate) type InflatedCache = Arc<Mutex<Option<(usize, u64, Arc<Vec<u8>>)>>>;

/// Cache budget handed to each sparse extent.
#[derive(Debug, Clone, Default)]
pub(crate) struct CacheBudget {
    /// Grain table cache bytes for this extent.
    pub(crate) gt_bytes: usize,
    /// The image's inflated-grain slot.
    pub(crate) inflated: InflatedCache,
}

/// Where a grain's data is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grain {
    /// Never written: zeros.
    Unallocated,
    /// Explicitly zeroed (GTE 1).
    Zero,
    /// At this sector of the file (a grain marker for compressed extents).
    At(u64),
}

/// An open hosted sparse extent.
#[derive(Debug)]
pub(crate) struct SparseExtent {
    index: usize,
    storage: Box<dyn Storage>,
    header: SparseHeader,
    gd: Vec<u32>,
    gt_cache: Mutex<GtCache>,
    inflated: InflatedCache,
}

impl SparseExtent {
    /// Opens the extent whose primary header is `primary`.
    pub(crate) fn open(
        index: usize,
        storage: Box<dyn Storage>,
        primary: SparseHeader,
        cache: CacheBudget,
    ) -> Result<Self, VmdkError> {
        let header = if primary.gd_offset == GD_AT_END {
            read_footer(index, storage.as_ref())?
        } else {
            primary
        };
        let bad = |reason| VmdkError::InvalidSparseHeader {
            extent: index,
            reason,
        };
        if header.gd_offset == GD_AT_END {
            return Err(bad("footer has no grain directory"));
        }
        if header.gd_offset == 0 {
            return Err(VmdkError::MetadataOverlapsHeader {
                extent: index,
                what: "grain directory",
            });
        }
        let gd_bytes = header
            .gd_entries()
            .checked_mul(4)
            .ok_or(bad("grain directory too large"))?;
        if gd_bytes > MAX_GD_BYTES {
            return Err(bad("grain directory too large"));
        }
        let gd_start = header.gd_offset.checked_mul(SECTOR);
        if !fits(gd_start, gd_bytes, storage.len()) {
            return Err(VmdkError::MetadataBeyondEof {
                extent: index,
                what: "grain directory",
            });
        }
        let gd_start = gd_start.unwrap_or_default();
        let mut raw =
            vec![0u8; usize::try_from(gd_bytes).map_err(|_| bad("grain directory too large"))?];
        storage.read_at_checked(&mut raw, gd_start)?;
        let gd = raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let gt_bytes = usize::try_from(header.gtes_per_gt)
            .unwrap_or(usize::MAX)
            .saturating_mul(4);
        let capacity = (cache.gt_bytes / gt_bytes.max(1)).max(4);
        Ok(Self {
            index,
            storage,
            header,
            gd,
            gt_cache: Mutex::new(GtCache {
                map: HashMap::new(),
                tick: 0,
                capacity,
            }),
            inflated: cache.inflated,
        })
    }

    /// The effective header (the footer for `GD_AT_END` extents).
    pub(crate) fn header(&self) -> &SparseHeader {
        &self.header
    }

    /// Capacity in bytes.
    pub(crate) fn capacity_bytes(&self) -> u64 {
        self.header.capacity * SECTOR
    }

    /// Reads `buf.len()` bytes at extent-relative `offset`; the caller keeps
    /// the range inside [`Self::capacity_bytes`]. Uncompressed grains that
    /// follow each other in the file are read with one `pread`.
    pub(crate) fn read_at(&self, mut buf: &mut [u8], mut offset: u64) -> Result<(), VmdkError> {
        let grain_bytes = self.header.grain_bytes();
        while !buf.is_empty() {
            let grain = offset / grain_bytes;
            let within = offset % grain_bytes;
            let remaining = buf.len() as u64;
            let mut n = (grain_bytes - within).min(remaining);
            let found = self.lookup(grain)?;
            if let Grain::At(sector) = found
                && !self.header.compressed()
            {
                let mut next = grain + 1;
                while n < remaining
                    && self.lookup(next)?
                        == Grain::At(sector + (next - grain) * self.header.grain_sectors)
                {
                    n += grain_bytes.min(remaining - n);
                    next += 1;
                }
            }
            let n = usize::try_from(n).unwrap_or(buf.len());
            let (now, rest) = buf.split_at_mut(n);
            match found {
                Grain::Unallocated | Grain::Zero => now.fill(0),
                Grain::At(sector) if self.header.compressed() => {
                    let data = self.inflate_grain(grain, sector)?;
                    let w = usize::try_from(within).unwrap_or(usize::MAX);
                    now.copy_from_slice(&data[w..w + n]);
                }
                Grain::At(sector) => {
                    let start = sector
                        .checked_mul(SECTOR)
                        .and_then(|s| s.checked_add(within));
                    if !fits(start, n as u64, self.storage.len()) {
                        return Err(VmdkError::GrainBeyondEof {
                            extent: self.index,
                            grain,
                        });
                    }
                    self.storage
                        .read_at_checked(now, start.unwrap_or_default())?;
                }
            }
            buf = rest;
            offset += n as u64;
        }
        Ok(())
    }

    /// Pushes the extent-relative runs of allocated grains below `limit`
    /// bytes, shifted by `base`, into `runs`.
    pub(crate) fn allocated(
        &self,
        runs: &mut Runs,
        base: u64,
        limit: u64,
    ) -> Result<(), VmdkError> {
        let grain_bytes = self.header.grain_bytes();
        let per_gt = u64::from(self.header.gtes_per_gt);
        let grains = limit.div_ceil(grain_bytes).min(self.header.grain_count());
        for (gd_index, _) in self.gd.iter().enumerate() {
            let first = gd_index as u64 * per_gt;
            if first >= grains {
                break;
            }
            let Some(gt) = self.grain_table(gd_index as u64, false)? else {
                continue;
            };
            for (i, &gte) in gt.iter().enumerate() {
                let grain = first + i as u64;
                if grain >= grains {
                    break;
                }
                if gte > 1 || (gte == 1 && !self.zero_grain_flag()) {
                    let start = grain * grain_bytes;
                    let len = grain_bytes.min(limit - start);
                    runs.push(base + start, len);
                }
            }
        }
        Ok(())
    }

    /// "Use zeroed-grain table entry": GTE 1 means a zeroed grain.
    fn zero_grain_flag(&self) -> bool {
        self.header.flags & FLAG_ZERO_GRAIN != 0
    }

    fn lookup(&self, grain: u64) -> Result<Grain, VmdkError> {
        let per_gt = u64::from(self.header.gtes_per_gt);
        let Some(gt) = self.grain_table(grain / per_gt, true)? else {
            return Ok(Grain::Unallocated);
        };
        let gte = usize::try_from(grain % per_gt)
            .ok()
            .and_then(|i| gt.get(i).copied());
        Ok(match gte {
            None | Some(0) => Grain::Unallocated,
            Some(1) if self.zero_grain_flag() => Grain::Zero,
            Some(s) => Grain::At(u64::from(s)),
        })
    }

    /// The grain table for a GD entry; `None` when the whole table is unallocated.
    fn grain_table(&self, gd_index: u64, cache: bool) -> Result<Option<Arc<[u32]>>, VmdkError> {
        let entry = usize::try_from(gd_index)
            .ok()
            .and_then(|i| self.gd.get(i).copied());
        let gt_sector = match entry {
            None | Some(0) => return Ok(None),
            // With the zero-grain flag, 1 marks a zeroed table (as for GTEs).
            Some(1) if self.zero_grain_flag() => return Ok(None),
            Some(s) => u64::from(s),
        };
        if cache {
            let mut c = self.gt_cache.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(gt) = c.get(gd_index) {
                return Ok(Some(gt));
            }
        }
        let gt_bytes = u64::from(self.header.gtes_per_gt) * 4;
        let start = gt_sector * SECTOR;
        if !fits(Some(start), gt_bytes, self.storage.len()) {
            return Err(VmdkError::MetadataBeyondEof {
                extent: self.index,
                what: "grain table",
            });
        }
        let mut raw = vec![0u8; usize::try_from(gt_bytes).unwrap_or_default()];
        self.storage.read_at_checked(&mut raw, start)?;
        let gt: Arc<[u32]> = raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if cache {
            let mut c = self.gt_cache.lock().unwrap_or_else(PoisonError::into_inner);
            c.insert(gd_index, Arc::clone(&gt));
        }
        Ok(Some(gt))
    }

    /// Reads and inflates the compressed grain at `sector`; the result is
    /// exactly one grain long.
    fn inflate_grain(&self, grain: u64, sector: u64) -> Result<Arc<Vec<u8>>, VmdkError> {
        {
            let last = self.inflated.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((e, g, data)) = last.as_ref()
                && *e == self.index
                && *g == grain
            {
                return Ok(Arc::clone(data));
            }
        }
        let grain_bytes = self.header.grain_bytes();
        let file_len = self.storage.len();
        let bad = |reason| VmdkError::BadCompressedGrain {
            extent: self.index,
            grain,
            reason,
        };
        let start = sector.checked_mul(SECTOR).filter(|&s| s < file_len).ok_or(
            VmdkError::GrainBeyondEof {
                extent: self.index,
                grain,
            },
        )?;
        let max_compressed = grain_bytes + MAX_COMPRESSION_OVERHEAD;
        let (data_start, data_len) = if self.header.has_markers() {
            let mut m = [0u8; 16];
            let avail = usize::try_from((file_len - start).min(16)).unwrap_or(16);
            self.storage.read_at_checked(&mut m[..avail], start)?;
            let marker_err = |reason| VmdkError::BadMarker {
                extent: self.index,
                sector,
                reason,
            };
            match Marker::parse(&m).map_err(marker_err)? {
                Marker::Grain { lba, size } => {
                    if lba != grain * self.header.grain_sectors {
                        return Err(marker_err("grain marker LBA does not match its grain"));
                    }
                    if u64::from(size) > max_compressed {
                        return Err(bad("compressed size larger than a grain allows"));
                    }
                    (start + Marker::GRAIN_HEADER as u64, u64::from(size))
                }
                Marker::Metadata { .. } => {
                    return Err(marker_err("metadata marker where a grain was expected"));
                }
            }
        } else {
            (start, (file_len - start).min(max_compressed))
        };
        if !fits(Some(data_start), data_len, file_len) {
            return Err(VmdkError::GrainBeyondEof {
                extent: self.index,
                grain,
            });
        }
        let mut input = vec![0u8; usize::try_from(data_len).unwrap_or_default()];
        self.storage.read_at_checked(&mut input, data_start)?;
        let out_len = usize::try_from(grain_bytes).unwrap_or_default();
        let mut out = vec![0u8; out_len];
        inflate_into(&input, &mut out).map_err(bad)?;
        let out = Arc::new(out);
        *self.inflated.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((self.index, grain, Arc::clone(&out)));
        Ok(out)
    }
}

/// Inflates a zlib stream into `out`; bytes past the stream end stay zero.
fn inflate_into(input: &[u8], out: &mut [u8]) -> Result<(), &'static str> {
    const CORRUPT: &str = "corrupt deflate data";
    let mut z = Decompress::new(true);
    let mut probe = [0u8; 1];
    loop {
        let in_pos = usize::try_from(z.total_in()).map_err(|_| CORRUPT)?;
        let out_pos = usize::try_from(z.total_out()).map_err(|_| CORRUPT)?;
        let (src, full) = (input.get(in_pos..).ok_or(CORRUPT)?, out_pos >= out.len());
        // Once the grain is full, probe for one more byte: any is too much.
        let dst = if full {
            &mut probe[..]
        } else {
            out.get_mut(out_pos..).ok_or(CORRUPT)?
        };
        let status = z
            .decompress(src, dst, FlushDecompress::None)
            .map_err(|_| CORRUPT)?;
        let produced = z.total_out() != out_pos as u64;
        if full && produced {
            return Err("inflates to more than one grain");
        }
        if status == Status::StreamEnd {
            return Ok(());
        }
        if !produced && z.total_in() == in_pos as u64 {
            return Err("truncated deflate data");
        }
    }
}

/// Reads the footer of a `GD_AT_END` stream-optimized extent: the last three
/// sectors are a footer marker, the footer (a header) and an end-of-stream marker.
fn read_footer(index: usize, storage: &dyn Storage) -> Result<SparseHeader, VmdkError> {
    let len = storage.len();
    if len < 4 * SECTOR {
        return Err(VmdkError::MetadataBeyondEof {
            extent: index,
            what: "footer",
        });
    }
    let start = len - 3 * SECTOR;
    let mut tail = [0u8; 3 * 512];
    storage.read_at_checked(&mut tail, start)?;
    let marker_err = |sector, reason| VmdkError::BadMarker {
        extent: index,
        sector,
        reason,
    };
    let footer_sector = start / SECTOR;
    match Marker::parse(&tail).map_err(|r| marker_err(footer_sector, r))? {
        Marker::Metadata {
            kind: MarkerType::Footer,
            ..
        } => {}
        _ => return Err(marker_err(footer_sector, "expected a footer marker")),
    }
    let footer =
        SparseHeader::parse(&tail[512..]).map_err(|reason| VmdkError::InvalidSparseHeader {
            extent: index,
            reason,
        })?;
    match Marker::parse(&tail[1024..]).map_err(|r| marker_err(footer_sector + 2, r))? {
        Marker::Metadata {
            kind: MarkerType::EndOfStream,
            ..
        } => Ok(footer),
        _ => Err(marker_err(
            footer_sector + 2,
            "expected an end-of-stream marker",
        )),
    }
}

/// Whether `[start, start + len)` lies inside a file of `file_len` bytes.
fn fits(start: Option<u64>, len: u64, file_len: u64) -> bool {
    start
        .and_then(|s| s.checked_add(len))
        .is_some_and(|end| end <= file_len)
}

/// Bounded LRU of grain tables keyed by GD index.
#[derive(Debug)]
struct GtCache {
    map: HashMap<u64, (u64, Arc<[u32]>)>,
    tick: u64,
    capacity: usize,
}

impl GtCache {
    fn get(&mut self, key: u64) -> Option<Arc<[u32]>> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(&key).map(|(t, gt)| {
            *t = tick;
            Arc::clone(gt)
        })
    }

    fn insert(&mut self, key: u64, gt: Arc<[u32]>) {
        if self.map.len() >= self.capacity
            && let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, (t, _))| *t)
                .map(|(k, _)| *k)
        {
            self.map.remove(&oldest);
        }
        self.tick += 1;
        self.map.insert(key, (self.tick, gt));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write as _;
    use std::path::PathBuf;

    use super::*;
    use crate::header::{COMPRESSION_DEFLATE, FLAG_COMPRESSED, FLAG_MARKERS, FLAG_NEWLINE_TEST};
    use crate::storage::MemStorage;

    const GRAIN_SECTORS: u64 = 8;
    const GTES: u32 = 4;
    const GRAIN: usize = 4096;

    fn base_header(capacity: u64) -> SparseHeader {
        SparseHeader {
            version: 2,
            flags: FLAG_NEWLINE_TEST | FLAG_ZERO_GRAIN,
            capacity,
            grain_sectors: GRAIN_SECTORS,
            descriptor_offset: 0,
            descriptor_sectors: 0,
            gtes_per_gt: GTES,
            rgd_offset: 0,
            gd_offset: 1,
            overhead: 0,
            unclean_shutdown: false,
            compression: 0,
        }
    }

    fn pad_to_sector(v: &mut Vec<u8>) {
        v.resize(v.len().div_ceil(512) * 512, 0);
    }

    fn sector_of(v: &[u8]) -> u32 {
        u32::try_from(v.len() / 512).unwrap()
    }

    /// A plain sparse extent: header, GD at sector 1, one GT per GD entry,
    /// then grains. `grains` are (grain index, fill byte); fill 0 writes GTE 1.
    pub(crate) fn build_plain(capacity: u64, grains: &[(u64, u8)]) -> Vec<u8> {
        let h = base_header(capacity);
        let gd_entries = usize::try_from(h.gd_entries()).unwrap();
        let mut out = h.encode().to_vec();
        let gd_pos = out.len();
        out.resize(gd_pos + gd_entries * 4, 0);
        pad_to_sector(&mut out);
        let mut gt_pos = Vec::new();
        for i in 0..gd_entries {
            let s = sector_of(&out);
            out[gd_pos + i * 4..gd_pos + i * 4 + 4].copy_from_slice(&s.to_le_bytes());
            gt_pos.push(out.len());
            out.resize(out.len() + GTES as usize * 4, 0);
            pad_to_sector(&mut out);
        }
        for &(g, fill) in grains {
            let gte = if fill == 0 { 1 } else { sector_of(&out) };
            let slot = gt_pos[usize::try_from(g / u64::from(GTES)).unwrap()]
                + usize::try_from(g % u64::from(GTES)).unwrap() * 4;
            out[slot..slot + 4].copy_from_slice(&gte.to_le_bytes());
            if fill != 0 {
                out.resize(out.len() + GRAIN, fill);
            }
        }
        out
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// A VMware-style stream-optimized extent with `GD_AT_END`: header,
    /// compressed grains behind grain markers, GT marker + GTs, GD marker +
    /// GD, footer marker + footer, end-of-stream marker. `payloads` are
    /// (grain index, compressed bytes to store).
    pub(crate) fn build_stream(capacity: u64, payloads: &[(u64, Vec<u8>)]) -> Vec<u8> {
        let mut h = base_header(capacity);
        h.flags = FLAG_NEWLINE_TEST | FLAG_COMPRESSED | FLAG_MARKERS;
        h.compression = COMPRESSION_DEFLATE;
        h.version = 3;
        let mut header = h;
        header.gd_offset = GD_AT_END;
        let mut out = header.encode().to_vec();
        let gd_entries = usize::try_from(h.gd_entries()).unwrap();
        let mut gts = vec![vec![0u32; GTES as usize]; gd_entries];
        for (g, payload) in payloads {
            let s = sector_of(&out);
            gts[usize::try_from(g / u64::from(GTES)).unwrap()]
                [usize::try_from(g % u64::from(GTES)).unwrap()] = s;
            let m = Marker::Grain {
                lba: g * GRAIN_SECTORS,
                size: u32::try_from(payload.len()).unwrap(),
            };
            out.extend_from_slice(&m.encode()[..12]);
            out.extend_from_slice(payload);
            pad_to_sector(&mut out);
        }
        let mut gd = Vec::new();
        for gt in &gts {
            let mut m = [0u8; 512];
            m[..16].copy_from_slice(
                &Marker::Metadata {
                    sectors: 1,
                    kind: MarkerType::GrainTable,
                }
                .encode(),
            );
            out.extend_from_slice(&m);
            gd.push(sector_of(&out));
            for e in gt {
                out.extend_from_slice(&e.to_le_bytes());
            }
            pad_to_sector(&mut out);
        }
        let mut m = [0u8; 512];
        m[..16].copy_from_slice(
            &Marker::Metadata {
                sectors: 1,
                kind: MarkerType::GrainDirectory,
            }
            .encode(),
        );
        out.extend_from_slice(&m);
        h.gd_offset = u64::from(sector_of(&out));
        for e in &gd {
            out.extend_from_slice(&e.to_le_bytes());
        }
        pad_to_sector(&mut out);
        m[..16].copy_from_slice(
            &Marker::Metadata {
                sectors: 1,
                kind: MarkerType::Footer,
            }
            .encode(),
        );
        out.extend_from_slice(&m);
        out.extend_from_slice(&h.encode());
        out.extend_from_slice(&[0u8; 512]);
        out
    }

    fn open(bytes: Vec<u8>) -> Result<SparseExtent, VmdkError> {
        let header = SparseHeader::parse(&bytes).unwrap();
        let storage = MemStorage {
            bytes,
            path: PathBuf::from("mem.vmdk"),
        };
        SparseExtent::open(
            0,
            Box::new(storage),
            header,
            CacheBudget {
                gt_bytes: DEFAULT_GT_CACHE_BYTES,
                ..CacheBudget::default()
            },
        )
    }

    fn read(ext: &SparseExtent, offset: u64, len: usize) -> Result<Vec<u8>, VmdkError> {
        let mut buf = vec![0xEE; len];
        ext.read_at(&mut buf, offset).map(|()| buf)
    }

    fn allocated(ext: &SparseExtent) -> Vec<(u64, u64)> {
        let mut runs = Runs::default();
        ext.allocated(&mut runs, 0, ext.capacity_bytes()).unwrap();
        runs.into_vec()
            .iter()
            .map(|r| (r.offset, r.length))
            .collect()
    }

    #[test]
    fn plain_read_mixed_grains_returns_data_and_zeros() {
        let ext = open(build_plain(64, &[(1, 0xAA), (2, 0), (5, 0xBB)])).unwrap();
        let data = read(&ext, 0, 64 * 512).unwrap();
        assert!(data[..GRAIN].iter().all(|&b| b == 0));
        assert!(data[GRAIN..2 * GRAIN].iter().all(|&b| b == 0xAA));
        assert!(data[2 * GRAIN..5 * GRAIN].iter().all(|&b| b == 0));
        assert!(data[5 * GRAIN..6 * GRAIN].iter().all(|&b| b == 0xBB));
        assert!(data[6 * GRAIN..].iter().all(|&b| b == 0));
    }

    #[test]
    fn plain_read_contiguous_grains_coalesces_correctly() {
        let ext = open(build_plain(64, &[(1, 0xAA), (2, 0xBB), (3, 0xCC)])).unwrap();
        let data = read(&ext, 4096 + 100, 3 * 4096 - 200).unwrap();
        assert!(data[..3996].iter().all(|&b| b == 0xAA));
        assert!(data[3996..3996 + 4096].iter().all(|&b| b == 0xBB));
        assert!(data[3996 + 4096..].iter().all(|&b| b == 0xCC));
    }

    #[test]
    fn plain_read_grains_stored_out_of_order_is_correct() {
        let ext = open(build_plain(64, &[(3, 0xCC), (2, 0xBB), (1, 0xAA)])).unwrap();
        let data = read(&ext, 4096, 3 * 4096).unwrap();
        assert!(data[..4096].iter().all(|&b| b == 0xAA));
        assert!(data[4096..8192].iter().all(|&b| b == 0xBB));
        assert!(data[8192..].iter().all(|&b| b == 0xCC));
    }

    #[test]
    fn plain_allocated_skips_zero_and_unallocated_grains() {
        let ext = open(build_plain(64, &[(1, 0xAA), (2, 0), (3, 0xCC), (5, 0xBB)])).unwrap();
        assert_eq!(
            allocated(&ext),
            vec![(4096, 4096), (3 * 4096, 4096), (5 * 4096, 4096)]
        );
    }

    #[test]
    fn plain_capacity_not_grain_multiple_clips_last_run() {
        let ext = open(build_plain(13, &[(1, 0xAA)])).unwrap();
        assert_eq!(allocated(&ext), vec![(4096, 5 * 512)]);
    }

    #[test]
    fn plain_small_gt_cache_still_reads_correctly() {
        let bytes = build_plain(256, &[(0, 1), (9, 2), (20, 3), (31, 4)]);
        let header = SparseHeader::parse(&bytes).unwrap();
        let storage = MemStorage {
            bytes,
            path: PathBuf::from("m"),
        };
        let ext = SparseExtent::open(0, Box::new(storage), header, CacheBudget::default()).unwrap();
        for (g, fill) in [(31u64, 4u8), (0, 1), (20, 3), (9, 2), (31, 4)] {
            assert!(read(&ext, g * 4096, 4096).unwrap() == [fill; 4096], "{g}");
        }
    }

    #[test]
    fn plain_gd_beyond_eof_is_rejected() {
        let mut bytes = build_plain(64, &[]);
        bytes.truncate(512);
        assert!(matches!(
            open(bytes),
            Err(VmdkError::MetadataBeyondEof {
                what: "grain directory",
                ..
            })
        ));
    }

    #[test]
    fn plain_gd_offset_zero_overlaps_header() {
        let mut bytes = build_plain(64, &[]);
        let h = SparseHeader {
            gd_offset: 0,
            ..SparseHeader::parse(&bytes).unwrap()
        };
        bytes[..512].copy_from_slice(&h.encode());
        assert!(matches!(
            open(bytes),
            Err(VmdkError::MetadataOverlapsHeader { .. })
        ));
    }

    #[test]
    fn plain_gt_beyond_eof_is_rejected_on_read() {
        let mut bytes = build_plain(64, &[]);
        bytes[512..516].copy_from_slice(&0x00FF_FFFFu32.to_le_bytes());
        let ext = open(bytes).unwrap();
        assert!(matches!(
            read(&ext, 0, 512),
            Err(VmdkError::MetadataBeyondEof {
                what: "grain table",
                ..
            })
        ));
    }

    #[test]
    fn plain_grain_beyond_eof_is_rejected_on_read() {
        let mut bytes = build_plain(64, &[(0, 0xAA)]);
        bytes.truncate(bytes.len() - 100);
        let ext = open(bytes).unwrap();
        assert!(matches!(
            read(&ext, 0, 4096),
            Err(VmdkError::GrainBeyondEof { grain: 0, .. })
        ));
    }

    #[test]
    fn plain_huge_grain_directory_is_rejected_without_allocating() {
        let mut bytes = build_plain(64, &[]);
        let h = SparseHeader {
            capacity: crate::header::MAX_CAPACITY_SECTORS,
            grain_sectors: 1,
            gtes_per_gt: 1,
            ..SparseHeader::parse(&bytes).unwrap()
        };
        bytes[..512].copy_from_slice(&h.encode());
        assert!(matches!(
            open(bytes),
            Err(VmdkError::InvalidSparseHeader { .. })
        ));
    }

    #[test]
    fn stream_gd_at_end_reads_through_footer() {
        let a = vec![0x5Au8; GRAIN];
        let b: Vec<u8> = (0..GRAIN).map(|i| u8::try_from(i % 251).unwrap()).collect();
        let ext = open(build_stream(64, &[(0, zlib(&a)), (6, zlib(&b))])).unwrap();
        assert!(read(&ext, 0, GRAIN).unwrap() == a);
        assert!(read(&ext, 6 * 4096 + 100, 200).unwrap() == b[100..300]);
        assert!(read(&ext, 4096, 4096).unwrap() == [0; 4096]);
        assert_eq!(allocated(&ext), vec![(0, 4096), (6 * 4096, 4096)]);
    }

    #[test]
    fn stream_short_last_grain_is_zero_filled() {
        let ext = open(build_stream(12, &[(1, zlib(&[7u8; 2048]))])).unwrap();
        assert!(read(&ext, 4096, 2048).unwrap() == [7u8; 2048]);
    }

    #[test]
    fn stream_bad_footer_marker_is_rejected() {
        let mut bytes = build_stream(40, &[(0, zlib(&[1u8; GRAIN]))]);
        let n = bytes.len();
        bytes[n - 1536 + 12] = 2;
        assert!(matches!(open(bytes), Err(VmdkError::BadMarker { .. })));
    }

    #[test]
    fn stream_missing_eos_marker_is_rejected() {
        let mut bytes = build_stream(40, &[(0, zlib(&[1u8; GRAIN]))]);
        let n = bytes.len();
        bytes[n - 512 + 12] = 1;
        assert!(matches!(open(bytes), Err(VmdkError::BadMarker { .. })));
    }

    #[test]
    fn stream_truncated_file_is_rejected() {
        let mut bytes = build_stream(40, &[(0, zlib(&[1u8; GRAIN]))]);
        bytes.truncate(bytes.len() - 700);
        assert!(open(bytes).is_err());
    }

    #[test]
    fn stream_grain_marker_lba_mismatch_is_rejected() {
        let ext = open(build_stream(40, &[(2, zlib(&[1u8; GRAIN]))]));
        let mut bytes = build_stream(40, &[(2, zlib(&[1u8; GRAIN]))]);
        bytes[512] = 99;
        drop(ext);
        let ext = open(bytes).unwrap();
        assert!(matches!(
            read(&ext, 2 * 4096, 10),
            Err(VmdkError::BadMarker { .. })
        ));
    }

    #[test]
    fn stream_grain_inflating_past_grain_is_rejected() {
        let ext = open(build_stream(40, &[(0, zlib(&[3u8; 2 * GRAIN]))])).unwrap();
        assert!(matches!(
            read(&ext, 0, 10),
            Err(VmdkError::BadCompressedGrain {
                reason: "inflates to more than one grain",
                ..
            })
        ));
    }

    #[test]
    fn stream_corrupt_deflate_is_rejected() {
        let ext = open(build_stream(40, &[(0, vec![0xFF; 64])])).unwrap();
        assert!(matches!(
            read(&ext, 0, 10),
            Err(VmdkError::BadCompressedGrain { .. })
        ));
    }

    #[test]
    fn stream_truncated_deflate_is_rejected() {
        let mut z = zlib(
            &(0..GRAIN)
                .map(|i| u8::try_from(i * 7 % 256).unwrap())
                .collect::<Vec<_>>(),
        );
        z.truncate(z.len() / 2);
        let ext = open(build_stream(40, &[(0, z)])).unwrap();
        assert!(matches!(
            read(&ext, 0, 10),
            Err(VmdkError::BadCompressedGrain {
                reason: "truncated deflate data",
                ..
            })
        ));
    }

    #[test]
    fn stream_absurd_compressed_size_is_rejected() {
        let mut bytes = build_stream(40, &[(0, zlib(&[1u8; GRAIN]))]);
        bytes[512 + 8..512 + 12].copy_from_slice(&u32::MAX.to_le_bytes());
        let ext = open(bytes).unwrap();
        assert!(matches!(
            read(&ext, 0, 10),
            Err(VmdkError::BadCompressedGrain { .. })
        ));
    }

    #[test]
    fn stream_metadata_marker_instead_of_grain_is_rejected() {
        let mut bytes = build_stream(40, &[(0, zlib(&[1u8; GRAIN]))]);
        bytes[512 + 8..512 + 16].copy_from_slice(&[0, 0, 0, 0, 1, 0, 0, 0]);
        let ext = open(bytes).unwrap();
        assert!(matches!(
            read(&ext, 0, 10),
            Err(VmdkError::BadMarker { .. })
        ));
    }
}
