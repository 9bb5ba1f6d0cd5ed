//! Guest reads: map a range to host runs, zeros, the backing file or compressed clusters
//! under the metadata lock, then read without it. [`Image::read_at_now`] does the same only
//! when nothing has to wait (cached metadata, an uncontended lock, data in memory), so an
//! async caller can answer on its own task and hand the rest to a thread.

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

    /// Reads like [`Self::read_at`], but only if nothing has to wait: every layer's metadata
    /// lock is free and the L2 tables involved are cached, and every byte is zero or in memory
    /// (the page cache of a read-only layer, see [`crate::storage`]). Answers `false` when the
    /// read would wait (the caller then calls [`Self::read_at`]; `buf` holds anything by then).
    ///
    /// # Errors
    /// As [`Self::read_at`].
    pub fn read_at_now(&self, buf: &mut [u8], offset: u64) -> Result<bool, Qcow2Error> {
        let len = buf.len() as u64;
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(true);
        }
        let segs = {
            let mut m = match self.meta.try_lock() {
                Ok(m) => m,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return Ok(false),
            };
            match self.plan(&mut m, offset, len, true)? {
                Some(segs) => segs,
                None => return Ok(false),
            }
        };
        for s in segs {
            let start = (s.guest.get() - offset) as usize;
            let out = &mut buf[start..start + s.len as usize];
            let done = match s.src {
                ReadSrc::Host(h) => self.core.read_data_now(out, h)?,
                ReadSrc::Zero => {
                    out.fill(0);
                    true
                }
                ReadSrc::Backing => match &self.backing {
                    None => {
                        out.fill(0);
                        true
                    }
                    Some(b) => b.read_at_now(out, s.guest.get())?,
                },
                ReadSrc::Compressed { .. } => false,
            };
            if !done {
                return Ok(false);
            }
        }
        Ok(true)
    }

    pub(crate) fn read_plan(
        &self,
        m: &mut Meta,
        offset: u64,
        len: u64,
    ) -> Result<Vec<ReadSeg>, Qcow2Error> {
        let segs = self.plan(m, offset, len, false)?;
        segs.ok_or(Qcow2Error::Corrupt {
            what: "read plan without metadata",
            offset,
        })
    }

    /// The read plan of `[offset, offset + len)`; with `cached_only`, `None` as soon as an L2
    /// table it needs is not cached.
    fn plan(
        &self,
        m: &mut Meta,
        offset: u64,
        len: u64,
        cached_only: bool,
    ) -> Result<Option<Vec<ReadSeg>>, Qcow2Error> {
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
            let e = if cached_only {
                match m.entry_cached(&self.core, gc)? {
                    Some(e) => e,
                    None => return Ok(None),
                }
            } else {
                m.entry(&self.core, gc)?
            };
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
        Ok(Some(segs))
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
