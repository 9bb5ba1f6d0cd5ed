//! Cluster allocation: new clusters at the end of the file (never reused while open),
//! preallocation ahead of direct writes, and deferred frees.

use super::Meta;
use crate::core::Core;
use crate::error::Qcow2Error;
use crate::offset::HostOffset;

/// How far ahead of the allocation end a writable file is preallocated (see
/// [`Meta::alloc`]).
const PREALLOC_STEP: u64 = 64 << 20;

impl Meta {
    /// Allocates `n` contiguous clusters at the end of the file with refcount 1.
    pub(crate) fn alloc(&mut self, core: &Core, n: u64) -> Result<HostOffset, Qcow2Error> {
        let cs = core.geo.cluster_size;
        let off = self.eof;
        let end = n
            .checked_mul(cs)
            .and_then(|b| off.checked_add(b))
            .filter(|&e| e <= crate::parse::MAX_VIRTUAL_SIZE)
            .ok_or(Qcow2Error::TooLarge {
                what: "image file size",
            })?;
        self.eof = end;
        self.file_len = self.file_len.max(end);
        self.preallocate(core, off, end);
        for i in 0..n {
            self.rc_add(core, off / cs + i, 1)?;
        }
        Ok(HostOffset(off))
    }

    /// Keeps the file [`PREALLOC_STEP`] ahead of `end` when the storage preallocates (files
    /// written with direct I/O): a direct write inside the file's length runs in parallel
    /// with others on ext4, while one that extends the file waits for the inode lock.
    /// Failure only turns preallocation off; [`Self::trim_preallocation`] cuts the tail.
    pub(super) fn preallocate(&mut self, core: &Core, start: u64, end: u64) {
        if !self.prealloc || end <= self.prealloc_end {
            return;
        }
        // Below `start` the file is written already (metadata extends it as it goes).
        let from = self.prealloc_end.max(start);
        // Never beyond what the image can need: its data plus generous metadata room.
        let geo = core.geo;
        let cap = geo
            .virtual_size
            .saturating_add(geo.virtual_size / 64)
            .saturating_add(4 << 20)
            .next_multiple_of(geo.cluster_size);
        let target = end
            .saturating_add(PREALLOC_STEP)
            .next_multiple_of(PREALLOC_STEP)
            .min(cap.max(end));
        if target <= from {
            return;
        }
        match core.storage.preallocate(from, target - from) {
            Ok(true) => {
                self.prealloc_end = target;
                self.file_len = self.file_len.max(target);
            }
            Ok(false) | Err(_) => self.prealloc = false,
        }
    }

    /// Cuts preallocated space past `eof` off the file (at close and finalize).
    pub(crate) fn trim_preallocation(&mut self, core: &Core) -> Result<(), Qcow2Error> {
        if self.prealloc_end > self.eof {
            core.set_len(self.eof)?;
            self.prealloc_end = self.eof;
            self.file_len = self.eof;
        }
        Ok(())
    }

    /// Schedules a refcount decrement of `count` clusters from `first` at the next flush.
    pub(crate) fn free_later(&mut self, first: u64, count: u64) {
        if count > 0 {
            self.pending_free.push((first, count));
        }
    }
}
