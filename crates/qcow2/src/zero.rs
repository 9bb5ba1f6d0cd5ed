//! Zeroing and discard: zero flags (or unallocation) for whole clusters, zeros written for
//! partial ones.

use crate::error::Qcow2Error;
use crate::image::Image;
use crate::l2_entry::{Granule, L2Entry};

/// Clusters zeroed/discarded per metadata batch.
const ZERO_BATCH: u64 = 4096;

impl Image {
    /// Makes `[offset, offset + len)` read as zeros.
    ///
    /// Whole clusters get the zero flag where a backing file or earlier data exists (their
    /// data clusters are freed) and stay unallocated in a standalone image; partial clusters
    /// get zeros written (copy-on-write), unless they already read as zeros in this image.
    ///
    /// # Errors
    /// Read-only image, out of range, I/O errors, corrupt metadata.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), Qcow2Error> {
        self.check_writable()?;
        self.check_range(offset, len)?;
        self.zero_range(offset, len, false)
    }

    /// Discards whole clusters in `[offset, offset + len)`; partial clusters at either end are
    /// left unchanged.
    ///
    /// In a standalone image a discarded cluster becomes unallocated (reads zeros). In an
    /// overlay it gets the zero flag instead, so backing data is never exposed: discarded
    /// clusters always read as zeros. Their host clusters are freed.
    ///
    /// # Errors
    /// Read-only image, out of range, I/O errors, corrupt metadata.
    pub fn discard(&self, offset: u64, len: u64) -> Result<(), Qcow2Error> {
        self.check_writable()?;
        self.check_range(offset, len)?;
        let cs = self.core.geo.cluster_size;
        let lo = offset.next_multiple_of(cs);
        let hi = (offset + len) / cs * cs;
        if lo < hi {
            self.zero_clusters(lo / cs, hi / cs, true)?;
        }
        Ok(())
    }

    pub(crate) fn zero_range(
        &self,
        offset: u64,
        len: u64,
        discard: bool,
    ) -> Result<(), Qcow2Error> {
        let cs = self.core.geo.cluster_size;
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let cbase = pos / cs * cs;
            let cend = (cbase + cs).min(end);
            if pos == cbase && cend == cbase + cs {
                let whole_end = end / cs * cs;
                self.zero_clusters(cbase / cs, whole_end / cs, discard)?;
                pos = whole_end;
            } else {
                self.zero_partial(pos, cend - pos)?;
                pos = cend;
            }
        }
        Ok(())
    }

    pub(crate) fn zero_partial(&self, offset: u64, len: u64) -> Result<(), Qcow2Error> {
        let geo = self.core.geo;
        let gc = offset / geo.cluster_size;
        let already_zero = {
            let mut m = self.lock_meta();
            let e = m.entry(&self.core, gc)?;
            let gs = e.granules(&self.core.geo, m.file_len)?;
            let within = offset % geo.cluster_size;
            let g_lo = within / geo.granule;
            let g_hi = (within + len).div_ceil(geo.granule);
            gs[g_lo as usize..g_hi as usize]
                .iter()
                .all(|g| *g == Granule::Zero || (*g == Granule::Unalloc && self.backing.is_none()))
        };
        if already_zero {
            return Ok(());
        }
        let zeros = vec![0u8; len as usize];
        self.write_at(&zeros, offset)
    }

    pub(crate) fn zero_clusters(&self, lo: u64, hi: u64, discard: bool) -> Result<(), Qcow2Error> {
        let geo = self.core.geo;
        let cs = geo.cluster_size;
        let mut start = lo;
        while start < hi {
            let stop = (start + ZERO_BATCH).min(hi);
            let mut m = self.lock_meta();
            m = self.claim(m, start, stop);
            let res = (|| {
                for gc in start..stop {
                    let standalone = self.backing.is_none();
                    if standalone && m.l2_missing(&self.core, gc) {
                        continue;
                    }
                    let e = m.entry(&self.core, gc)?;
                    let target = if standalone && (discard || e == L2Entry::UNALLOCATED) {
                        L2Entry::UNALLOCATED
                    } else {
                        L2Entry::zeroed(geo.extended)
                    };
                    if e == target {
                        continue;
                    }
                    m.ensure_l2(&self.core, gc)?;
                    m.set_entry(&self.core, gc, target)?;
                    if e.is_compressed() {
                        let (first, count) = e.compressed_clusters(&geo);
                        m.free_later(first, count);
                    } else if let Some(h) = e.host_offset() {
                        m.free_later(h.get() / cs, 1);
                    }
                }
                Ok(())
            })();
            self.release(m, start, stop);
            res?;
            start = stop;
        }
        Ok(())
    }
}
