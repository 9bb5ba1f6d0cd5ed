//! Block status: the allocation state of guest ranges, in one layer or through the chain.

use crate::chain::Backing;
use crate::error::Qcow2Error;
use crate::image::Image;
use crate::l2_entry::Granule;

/// Allocation state of a guest range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentState {
    /// Data stored in this layer (or, for chain status, somewhere in the chain).
    Data,
    /// Reads as zeros.
    Zero,
    /// Not allocated in this layer: reads fall through to the backing file.
    Unallocated,
}

/// A run of guest bytes with one state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Guest offset.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// State.
    pub state: ExtentState,
}

impl Image {
    /// Allocation state of `[offset, offset + len)` in this layer only.
    ///
    /// # Errors
    /// Out of range, I/O errors, corrupt metadata.
    pub fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, Qcow2Error> {
        self.check_range(offset, len)?;
        let geo = self.core.geo;
        let cs = geo.cluster_size;
        let mut out = Vec::new();
        let end = offset + len;
        let mut m = self.lock_meta();
        let mut pos = offset;
        while pos < end {
            let gc = pos / cs;
            let cbase = gc * cs;
            if m.l2_missing(&self.core, gc) {
                let l2_end = ((gc / geo.l2_entries + 1) * geo.l2_entries * cs).min(end);
                push_extent(&mut out, pos, l2_end - pos, ExtentState::Unallocated);
                pos = l2_end;
                continue;
            }
            let last = (end - 1) / cs;
            let run = m.unallocated_run(&self.core, gc, last - gc + 1)?;
            if run > 0 {
                let run_end = ((gc + run) * cs).min(end);
                push_extent(&mut out, pos, run_end - pos, ExtentState::Unallocated);
                pos = run_end;
                continue;
            }
            let e = m.entry(&self.core, gc)?;
            let gs = e.granules(&self.core.geo, m.file_len)?;
            let cend = (cbase + cs).min(end);
            while pos < cend {
                let g = (pos - cbase) / geo.granule;
                let gend = (cbase + (g + 1) * geo.granule).min(cend);
                let state = match gs[g as usize] {
                    Granule::Unalloc => ExtentState::Unallocated,
                    Granule::Zero => ExtentState::Zero,
                    Granule::Data(_) | Granule::Compressed => ExtentState::Data,
                };
                push_extent(&mut out, pos, gend - pos, state);
                pos = gend;
            }
        }
        Ok(out)
    }

    /// Allocation state of `[offset, offset + len)` resolved through the whole chain: only
    /// [`ExtentState::Data`] and [`ExtentState::Zero`].
    ///
    /// # Errors
    /// Out of range, I/O errors, corrupt metadata.
    pub fn chain_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, Qcow2Error> {
        let mut out = Vec::new();
        for ext in self.block_status(offset, len)? {
            if ext.state != ExtentState::Unallocated {
                push_extent(&mut out, ext.offset, ext.length, ext.state);
                continue;
            }
            match &self.backing {
                None => push_extent(&mut out, ext.offset, ext.length, ExtentState::Zero),
                Some(b) => {
                    for sub in b.chain_status(ext.offset, ext.length)? {
                        push_extent(&mut out, sub.offset, sub.length, sub.state);
                    }
                }
            }
        }
        Ok(out)
    }
}

impl Backing {
    pub(crate) fn chain_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, Qcow2Error> {
        let size = self.virtual_size();
        let inside = size.saturating_sub(offset).min(len);
        let mut out = Vec::new();
        if inside > 0 {
            match self {
                Self::Qcow2(i) => out = i.chain_status(offset, inside)?,
                Self::Raw(_) => {
                    out.push(Extent {
                        offset,
                        length: inside,
                        state: ExtentState::Data,
                    });
                }
            }
        }
        if inside < len {
            push_extent(&mut out, offset + inside, len - inside, ExtentState::Zero);
        }
        Ok(out)
    }
}

pub(crate) fn push_extent(out: &mut Vec<Extent>, offset: u64, length: u64, state: ExtentState) {
    if length == 0 {
        return;
    }
    if let Some(last) = out.last_mut()
        && last.state == state
        && last.offset + last.length == offset
    {
        last.length += length;
        return;
    }
    out.push(Extent {
        offset,
        length,
        state,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::create::{create_header, create_layout};
    use crate::options::{CreateOptions, OpenOptions};
    use crate::storage::MemStorage;

    /// Block status (with its fast path over unallocated runs) against a per-cluster model,
    /// across L2 table boundaries, with and without extended L2, at unaligned offsets.
    #[test]
    fn block_status_matches_a_per_cluster_model() {
        for extended in [false, true] {
            let cs = if extended { 16384u64 } else { 512 };
            let size = 400 * cs;
            let opts = CreateOptions::new(size)
                .cluster_size(cs as u32)
                .extended_l2(extended);
            let header = create_header(&opts).unwrap();
            let bytes = create_layout(&header).unwrap();
            let img =
                Image::open_storage(Box::new(MemStorage::new(bytes)), &OpenOptions::writable())
                    .unwrap();
            let mut model = vec![ExtentState::Unallocated; 400];
            for c in (0..400u64).filter(|c| c % 37 == 5 || (150..170).contains(c)) {
                img.write_at(&vec![1u8; cs as usize], c * cs).unwrap();
                model[c as usize] = ExtentState::Data;
            }
            for c in [6u64, 160, 161, 399] {
                img.discard(c * cs, cs).unwrap();
                // A standalone image unallocates what it discards.
                model[c as usize] = ExtentState::Unallocated;
            }
            for (off, len) in [
                (0, size),
                (cs / 2, size - cs),
                (7 * cs + 3, 90 * cs),
                (size - 1, 1),
            ] {
                let mut expect = Vec::new();
                let mut pos = off;
                while pos < off + len {
                    let c = pos / cs;
                    let next = ((c + 1) * cs).min(off + len);
                    push_extent(&mut expect, pos, next - pos, model[c as usize]);
                    pos = next;
                }
                assert_eq!(
                    img.block_status(off, len).unwrap(),
                    expect,
                    "extended {extended} at {off}+{len}"
                );
            }
        }
    }
}
