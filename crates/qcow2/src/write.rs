//! Guest writes: plan (in-place or newly allocated clusters, copy-on-write of partial
//! granules) under the metadata lock, write the data without it, then publish the new L2
//! entries (see [`crate::image`] for the concurrency design).

use crate::compressed::compressed_clusters;
use crate::error::Qcow2Error;
use crate::image::Image;
use crate::l2_entry::Granule;
use crate::meta::{L2E_OFFSET_MASK, Meta, OFLAG_COMPRESSED, OFLAG_COPIED, OFLAG_ZERO};

/// One cluster's part of a write.
#[derive(Debug)]
pub(crate) struct ClusterPlan {
    gc: u64,
    /// Written byte range within the cluster.
    a: u64,
    b: u64,
    /// Offset in the caller's buffer of byte `a`.
    buf_off: usize,
    host: u64,
    in_place: bool,
    /// Granule range to write.
    g_lo: u64,
    g_hi: u64,
    /// State of every granule before the write.
    prior: Vec<Granule>,
    old_entry: u64,
    new_entry: Option<(u64, u64)>,
    free_old: Option<(u64, u64)>,
    needs_alloc: bool,
}

/// A data write: host offset and either a range of the caller's buffer or owned bytes.
enum Piece {
    User(u64, usize, usize),
    Owned(u64, Vec<u8>),
}

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
                    m.free_later(p.host / cs, 1);
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
            let (e, bm) = m.entry(&self.core, gc)?;
            let prior = self.granules(e, bm, m.file_len)?;
            let host_existing = e & L2E_OFFSET_MASK;
            let compressed = e & OFLAG_COMPRESSED != 0;
            let in_place = !compressed && host_existing != 0 && e & OFLAG_COPIED != 0;
            let (g_lo, g_hi, free_old) = if in_place {
                (a / sg, b.div_ceil(sg), None)
            } else if compressed {
                (0, geo.granules, Some(compressed_clusters(&geo, e)))
            } else if host_existing != 0 {
                (0, geo.granules, Some((host_existing / cs, 1)))
            } else if geo.extended {
                (a / sg, b.div_ceil(sg), None)
            } else {
                (0, 1, None)
            };
            let fill_mask = ((1u64 << g_hi) - 1) & !((1u64 << g_lo) - 1);
            let new_entry = if geo.extended {
                let (alloc, zero) = if in_place {
                    (bm & 0xffff_ffff, bm >> 32)
                } else {
                    (0, bm >> 32)
                };
                let nb = ((alloc | fill_mask) & 0xffff_ffff)
                    | (((zero & !fill_mask) & 0xffff_ffff) << 32);
                (!in_place || nb != bm).then_some((0, nb))
            } else {
                (!in_place || e & OFLAG_ZERO != 0).then_some((0, 0))
            };
            plans.push(ClusterPlan {
                gc,
                a,
                b,
                buf_off: (pos - offset) as usize,
                host: if in_place { host_existing } else { 0 },
                in_place,
                g_lo,
                g_hi,
                prior,
                old_entry: e,
                new_entry,
                free_old,
                needs_alloc: !in_place,
            });
            pos = cbase + b;
        }
        for p in plans.iter().filter(|p| p.new_entry.is_some()) {
            m.ensure_l2(&self.core, p.gc)?;
        }
        let n = plans.iter().filter(|p| p.needs_alloc).count() as u64;
        if n > 0 {
            let mut host = m.alloc(&self.core, n)?;
            for p in plans.iter_mut().filter(|p| p.needs_alloc) {
                p.host = host;
                host += cs;
            }
        }
        for p in &mut plans {
            if let Some((_, nb)) = p.new_entry {
                p.new_entry = Some((p.host | OFLAG_COPIED, nb));
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
        let mut pieces: Vec<Piece> = Vec::new();
        for p in plans {
            let mut decompressed: Option<Vec<u8>> = None;
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
                        self.read_backing(&mut data, p.gc * geo.cluster_size + glo)?;
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
        }
        for piece in &pieces {
            match piece {
                Piece::User(h, s, n) => {
                    self.core.write_data(&buf[*s..*s + *n], *h, "write data")?;
                }
                Piece::Owned(h, d) => self.core.write_data(d, *h, "write data")?,
            }
        }
        Ok(())
    }

    pub(crate) fn publish(&self, m: &mut Meta, plans: &[ClusterPlan]) -> Result<(), Qcow2Error> {
        for p in plans {
            if let Some((e, bm)) = p.new_entry {
                m.set_entry(&self.core, p.gc, e, bm)?;
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
