//! Guest writes: plan (in-place or newly allocated clusters, copy-on-write of partial
//! granules) under the metadata lock, write the data without it, then publish the new L2
//! entries (see [`crate::image`] for the concurrency design).

use crate::error::Qcow2Error;
use crate::image::Image;
use crate::l2_entry::{Granule, L2Entry};
use crate::meta::Meta;
use crate::offset::{GuestOffset, HostOffset};

/// One cluster's part of a write.
#[derive(Debug)]
pub(crate) struct ClusterPlan {
    gc: u64,
    /// Written byte range within the cluster.
    a: u64,
    b: u64,
    /// Offset in the caller's buffer of byte `a`.
    buf_off: usize,
    /// The host cluster written: the existing one in place, else the newly allocated one.
    host: HostOffset,
    in_place: bool,
    /// Granule range to write.
    g_lo: u64,
    g_hi: u64,
    /// State of every granule before the write.
    prior: Vec<Granule>,
    old_entry: L2Entry,
    /// Subcluster bitmap of the entry to publish (0 without extended L2) pointing at
    /// `host`; `None` when the entry stays as it is.
    new_bitmap: Option<u64>,
    /// Host clusters (first index, count) the old entry held, freed once the new one is
    /// published.
    free_old: Option<(u64, u64)>,
    needs_alloc: bool,
}

/// A data write: host offset and either a range of the caller's buffer, owned bytes, or zeros.
enum Piece {
    User(HostOffset, usize, usize),
    Owned(HostOffset, Vec<u8>),
    Zero(HostOffset, u64),
}

/// Zeros written from, in pieces of at most this size.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

impl Image {
    /// Writes `buf` at guest `offset`, allocating clusters and copying the rest of partially
    /// written clusters (subclusters with extended L2) from the backing chain.
    ///
    /// # Errors
    /// Read-only image, out of range, I/O errors, corrupt metadata.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), Qcow2Error> {
        self.check_writable()?;
        let len = buf.len() as u64;
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let cs = self.core.geo.cluster_size;
        let first = offset / cs;
        let last = (offset + len - 1) / cs;
        let mut m = self.lock_meta();
        m = self.claim(m, first, last + 1);
        let plan = match self.write_plan(&mut m, buf, offset) {
            Ok(p) => p,
            Err(e) => {
                self.release(m, first, last + 1);
                return Err(e);
            }
        };
        let file_len = m.file_len;
        drop(m);
        let io = self.write_data(&plan, buf, file_len);
        let mut m = self.lock_meta();
        let res = match io {
            Ok(()) => self.publish(&mut m, &plan),
            Err(e) => {
                for p in plan.iter().filter(|p| p.needs_alloc) {
                    m.free_later(p.host.get() / cs, 1);
                }
                Err(e)
            }
        };
        self.release(m, first, last + 1);
        res
    }

    pub(crate) fn write_plan(
        &self,
        m: &mut Meta,
        buf: &[u8],
        offset: u64,
    ) -> Result<Vec<ClusterPlan>, Qcow2Error> {
        let geo = self.core.geo;
        let cs = geo.cluster_size;
        let sg = geo.granule;
        let end = offset + buf.len() as u64;
        let mut plans = Vec::new();
        let mut pos = offset;
        while pos < end {
            let gc = pos / cs;
            let cbase = gc * cs;
            let a = pos - cbase;
            let b = (end - cbase).min(cs);
            let e = m.entry(&self.core, gc)?;
            let prior = e.granules(&self.core.geo, m.file_len)?;
            let host_existing = e.host_offset();
            let in_place = host_existing.is_some() && e.is_copied();
            let (g_lo, g_hi, free_old) = if in_place {
                (a / sg, b.div_ceil(sg), None)
            } else if e.is_compressed() {
                (0, geo.granules, Some(e.compressed_clusters(&geo)))
            } else if let Some(h) = host_existing {
                (0, geo.granules, Some((h.get() / cs, 1)))
            } else if geo.extended {
                (a / sg, b.div_ceil(sg), None)
            } else {
                (0, 1, None)
            };
            let fill_mask = ((1u64 << g_hi) - 1) & !((1u64 << g_lo) - 1);
            let new_bitmap = if geo.extended {
                let (alloc, zero) = if in_place {
                    (e.alloc_bits(), e.zero_bits())
                } else {
                    (0, e.zero_bits())
                };
                let nb = ((alloc | fill_mask) & 0xffff_ffff)
                    | (((zero & !fill_mask) & 0xffff_ffff) << 32);
                (!in_place || nb != e.bitmap()).then_some(nb)
            } else {
                (!in_place || e.has_zero_flag()).then_some(0)
            };
            plans.push(ClusterPlan {
                gc,
                a,
                b,
                buf_off: (pos - offset) as usize,
                host: host_existing.filter(|_| in_place).unwrap_or(HostOffset(0)),
                in_place,
                g_lo,
                g_hi,
                prior,
                old_entry: e,
                new_bitmap,
                free_old,
                needs_alloc: !in_place,
            });
            pos = cbase + b;
        }
        for p in plans.iter().filter(|p| p.new_bitmap.is_some()) {
            m.ensure_l2(&self.core, p.gc)?;
        }
        let n = plans.iter().filter(|p| p.needs_alloc).count() as u64;
        if n > 0 {
            let mut host = m.alloc(&self.core, n)?;
            for p in plans.iter_mut().filter(|p| p.needs_alloc) {
                p.host = host;
                host = host + cs;
            }
        }
        Ok(plans)
    }

    pub(crate) fn write_data(
        &self,
        plans: &[ClusterPlan],
        buf: &[u8],
        file_len: u64,
    ) -> Result<(), Qcow2Error> {
        let geo = self.core.geo;
        let sg = geo.granule;
        // A new cluster of a writeback file is written whole (see `crate::storage`): the
        // granules the write leaves out get zeros (their bitmap bits stay clear, so they still
        // read from the backing chain).
        let fill_new = geo.extended && self.core.storage.writeback();
        let mut pieces: Vec<Piece> = Vec::new();
        for p in plans {
            let mut decompressed: Option<Vec<u8>> = None;
            if fill_new && p.needs_alloc && p.g_lo > 0 {
                pieces.push(Piece::Zero(p.host, p.g_lo * sg));
            }
            for g in p.g_lo..p.g_hi {
                let glo = g * sg;
                let ghi = glo + sg;
                let cov_lo = glo.max(p.a);
                let cov_hi = ghi.min(p.b);
                let user = |lo: u64, hi: u64| (p.buf_off + (lo - p.a) as usize, (hi - lo) as usize);
                if cov_lo == glo && cov_hi == ghi {
                    let (s, n) = user(glo, ghi);
                    push_piece(&mut pieces, Piece::User(p.host + glo, s, n));
                    continue;
                }
                let prior = p.prior[g as usize];
                if p.in_place && matches!(prior, Granule::Data(_)) {
                    if cov_lo < cov_hi {
                        let (s, n) = user(cov_lo, cov_hi);
                        push_piece(&mut pieces, Piece::User(p.host + cov_lo, s, n));
                    }
                    continue;
                }
                let mut data = vec![0u8; sg as usize];
                match prior {
                    Granule::Zero => {}
                    Granule::Unalloc => {
                        let guest = GuestOffset(p.gc * geo.cluster_size + glo);
                        self.read_backing(&mut data, guest)?;
                    }
                    Granule::Data(h) => {
                        self.core
                            .read_exact(&mut data, h, "read for copy-on-write")?;
                    }
                    Granule::Compressed => {
                        if decompressed.is_none() {
                            decompressed = Some(self.decompress(p.old_entry, file_len)?);
                        }
                        if let Some(d) = &decompressed {
                            data.copy_from_slice(&d[glo as usize..ghi as usize]);
                        }
                    }
                }
                if cov_lo < cov_hi {
                    let (s, n) = user(cov_lo, cov_hi);
                    data[(cov_lo - glo) as usize..(cov_hi - glo) as usize]
                        .copy_from_slice(&buf[s..s + n]);
                }
                push_piece(&mut pieces, Piece::Owned(p.host + glo, data));
            }
            if fill_new && p.needs_alloc && p.g_hi < geo.granules {
                let from = p.g_hi * sg;
                pieces.push(Piece::Zero(p.host + from, geo.cluster_size - from));
            }
        }
        for piece in &pieces {
            match piece {
                Piece::User(h, s, n) => {
                    self.core.write_data(&buf[*s..*s + *n], *h, "write data")?;
                }
                Piece::Owned(h, d) => self.core.write_data(d, *h, "write data")?,
                Piece::Zero(h, len) => {
                    let mut done = 0;
                    while done < *len {
                        let n = (*len - done).min(ZEROS.len() as u64);
                        self.core
                            .write_data(&ZEROS[..n as usize], *h + done, "write data")?;
                        done += n;
                    }
                }
            }
        }
        Ok(())
    }

    pub(crate) fn publish(&self, m: &mut Meta, plans: &[ClusterPlan]) -> Result<(), Qcow2Error> {
        for p in plans {
            if let Some(bitmap) = p.new_bitmap {
                m.set_entry(&self.core, p.gc, L2Entry::data(p.host, bitmap))?;
            }
            if let Some((first, count)) = p.free_old {
                m.free_later(first, count);
            }
        }
        Ok(())
    }
}

fn push_piece(pieces: &mut Vec<Piece>, piece: Piece) {
    match (pieces.last_mut(), piece) {
        (Some(Piece::Owned(h, d)), Piece::Owned(h2, d2)) if *h + d.len() as u64 == h2 => {
            d.extend_from_slice(&d2);
        }
        (Some(Piece::User(h, s, n)), Piece::User(h2, s2, n2))
            if *h + *n as u64 == h2 && *s + *n == s2 =>
        {
            *n += n2;
        }
        (_, piece) => pieces.push(piece),
    }
}

#[cfg(test)]
mod tests {
    use crate::{BackingSpec, CreateOptions, ExtentState, Image};

    const CLUSTER: u64 = 64 * 1024;

    /// A 1 MiB base holding 0x11 everywhere and a 64 KiB-cluster extended-L2 overlay over it.
    fn overlay(dir: &std::path::Path, writeback: bool) -> Image {
        let base = Image::create(&dir.join("base.qcow2"), &CreateOptions::new(1 << 20)).unwrap();
        base.write_at(&vec![0x11; 1 << 20], 0).unwrap();
        drop(base);
        let opts = CreateOptions::new(1 << 20)
            .extended_l2(true)
            .backing(BackingSpec::qcow2("base.qcow2"))
            .writeback(writeback);
        Image::create(&dir.join("overlay.qcow2"), &opts).unwrap()
    }

    /// Bytes of `path` that are data (not holes) in `[start, end)`.
    fn data_bytes(path: &std::path::Path, start: u64, end: u64) -> u64 {
        let file = std::fs::File::open(path).unwrap();
        sendense_io::sparse::data_runs(&file, start, end)
            .unwrap()
            .iter()
            .map(|r| r.length)
            .sum()
    }

    #[test]
    fn writeback_small_write_into_a_new_cluster_writes_the_cluster_whole_and_reads_its_backing() {
        let dir = tempfile::tempdir().unwrap();
        let img = overlay(dir.path(), true);
        let before = std::fs::metadata(dir.path().join("overlay.qcow2"))
            .unwrap()
            .len();

        img.write_at(&[0xee; 4096], CLUSTER + 8192).unwrap();
        img.flush().unwrap();

        // The new L2 table and the new data cluster, both written whole (a dense file).
        let path = dir.path().join("overlay.qcow2");
        let after = std::fs::metadata(&path).unwrap().len();
        assert_eq!(after, before + 2 * CLUSTER);
        assert_eq!(data_bytes(&path, before, after), 2 * CLUSTER);
        // Only the 4 KiB written are the overlay's; the rest still reads from the base.
        let own: Vec<(u64, u64)> = img
            .block_status(CLUSTER, CLUSTER)
            .unwrap()
            .iter()
            .filter(|e| e.state == ExtentState::Data)
            .map(|e| (e.offset, e.length))
            .collect();
        assert_eq!(own, [(CLUSTER + 8192, 4096)]);
        let mut back = vec![0u8; CLUSTER as usize];
        img.read_at(&mut back, CLUSTER).unwrap();
        let mut expected = vec![0x11u8; CLUSTER as usize];
        expected[8192..12288].fill(0xee);
        assert!(back == expected);
        assert!(img.check().unwrap().is_clean());
    }

    #[test]
    fn small_write_into_a_new_cluster_without_writeback_writes_only_its_subclusters() {
        let dir = tempfile::tempdir().unwrap();
        let img = overlay(dir.path(), false);
        let path = dir.path().join("overlay.qcow2");
        let before = std::fs::metadata(&path).unwrap().len();

        img.write_at(&[0xee; 4096], CLUSTER + 8192).unwrap();
        img.flush().unwrap();
        img.trim_preallocation().unwrap();

        // The new L2 table, and of the new data cluster only the 4 KiB written.
        let after = std::fs::metadata(&path).unwrap().len();
        assert_eq!(after, before + 2 * CLUSTER);
        assert_eq!(data_bytes(&path, before, after), CLUSTER + 4096);
    }
}
