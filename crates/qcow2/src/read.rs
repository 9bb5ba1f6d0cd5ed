//! Guest reads: map a range to host runs, zeros, the backing file or compressed clusters
//! under the metadata lock, then read without it.

use crate::error::Qcow2Error;
use crate::image::Image;
use crate::l2_entry::{Granule, L2Entry};
use crate::meta::Meta;
use crate::offset::{GuestOffset, HostOffset};

/// Source of the bytes of one piece of a read.
#[derive(Debug)]
enum ReadSrc {
    Host(HostOffset),
    Zero,
    Backing,
    Compressed { entry: L2Entry, within: u64 },
}

#[derive(Debug)]
pub(crate) struct ReadSeg {
    guest: GuestOffset,
    len: u64,
    src: ReadSrc,
}

impl Image {
    /// Reads `buf.len()` bytes at guest `offset`, through the backing chain.
    ///
    /// # Errors
    /// [`Qcow2Error::OutOfRange`] past the virtual size; I/O errors; corrupt metadata.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), Qcow2Error> {
        let len = buf.len() as u64;
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let (segs, file_len) = {
            let mut m = self.lock_meta();
            (self.read_plan(&mut m, offset, len)?, m.file_len)
        };
        let mut cached: Option<(L2Entry, Vec<u8>)> = None;
        for s in segs {
            let start = (s.guest.get() - offset) as usize;
            let out = &mut buf[start..start + s.len as usize];
            match s.src {
                ReadSrc::Host(h) => self.core.read_data(out, h)?,
                ReadSrc::Zero => out.fill(0),
                ReadSrc::Backing => self.read_backing(out, s.guest)?,
                ReadSrc::Compressed { entry, within } => {
                    if cached.as_ref().is_none_or(|(e, _)| *e != entry) {
                        cached = Some((entry, self.decompress(entry, file_len)?));
                    }
                    if let Some((_, data)) = &cached {
                        out.copy_from_slice(&data[within as usize..(within + s.len) as usize]);
                    }
                }
            }
        }
        Ok(())
    }

    pub(crate) fn read_plan(
        &self,
        m: &mut Meta,
        offset: u64,
        len: u64,
    ) -> Result<Vec<ReadSeg>, Qcow2Error> {
        let geo = self.core.geo;
        let cs = geo.cluster_size;
        let mut segs: Vec<ReadSeg> = Vec::new();
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let gc = pos / cs;
            let cbase = gc * cs;
            let cend = (cbase + cs).min(end);
            if m.l2_missing(&self.core, gc) {
                let l2_end = ((gc / geo.l2_entries + 1) * geo.l2_entries * cs).min(end);
                push_seg(&mut segs, GuestOffset(pos), l2_end - pos, ReadSrc::Backing);
                pos = l2_end;
                continue;
            }
            let e = m.entry(&self.core, gc)?;
            let gs = e.granules(&self.core.geo, m.file_len)?;
            while pos < cend {
                let within = pos - cbase;
                let g = within / geo.granule;
                let gend = (cbase + (g + 1) * geo.granule).min(cend);
                let n = gend - pos;
                let src = match gs[g as usize] {
                    Granule::Unalloc => ReadSrc::Backing,
                    Granule::Zero => ReadSrc::Zero,
                    Granule::Data(h) => ReadSrc::Host(h + (within - g * geo.granule)),
                    Granule::Compressed => ReadSrc::Compressed { entry: e, within },
                };
                push_seg(&mut segs, GuestOffset(pos), n, src);
                pos = gend;
            }
        }
        Ok(segs)
    }

    pub(crate) fn read_backing(
        &self,
        out: &mut [u8],
        guest: GuestOffset,
    ) -> Result<(), Qcow2Error> {
        match &self.backing {
            None => {
                out.fill(0);
                Ok(())
            }
            Some(b) => b.read_at(out, guest.get()),
        }
    }
}

fn push_seg(segs: &mut Vec<ReadSeg>, guest: GuestOffset, len: u64, src: ReadSrc) {
    if let Some(last) = segs.last_mut()
        && last.guest + last.len == guest
    {
        let merge = match (&last.src, &src) {
            (ReadSrc::Host(a), ReadSrc::Host(b)) => *a + last.len == *b,
            (ReadSrc::Zero, ReadSrc::Zero) | (ReadSrc::Backing, ReadSrc::Backing) => true,
            _ => false,
        };
        if merge {
            last.len += len;
            return;
        }
    }
    segs.push(ReadSeg { guest, len, src });
}
