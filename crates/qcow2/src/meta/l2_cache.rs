//! The L2 table cache of a layer: locating, loading, evicting and writing back L2 tables,
//! and reading and updating the entries of guest clusters.

use super::{Cached, MAX_CACHED, MIN_CACHED, Meta, be_words, words_be};
use crate::core::Core;
use crate::error::Qcow2Error;
use crate::l2_entry::{L1E_COPIED, L1E_OFFSET_MASK, L2Entry};
use crate::offset::HostOffset;

/// Memory budget for cached L2 tables of a writable layer (64 GiB of guest data mapped at
/// 64 KiB clusters).
const L2_CACHE_BYTES: u64 = 32 << 20;
/// Memory budget for cached L2 tables of a read-only layer (backing files: a chain may be
/// deep, so each layer gets less).
const L2_CACHE_BYTES_READ_ONLY: u64 = 8 << 20;

/// How many L2 tables a layer caches: its budget in tables of `cluster_size` bytes, bounded.
pub(super) fn capacity(writable: bool, cluster_size: u64) -> usize {
    let budget = if writable {
        L2_CACHE_BYTES
    } else {
        L2_CACHE_BYTES_READ_ONLY
    };
    (budget / cluster_size).clamp(MIN_CACHED, MAX_CACHED) as usize
}

impl Meta {
    /// The L2 table of guest cluster `gc` and the index of its entry's first word.
    pub(super) fn l2_location(
        &self,
        core: &Core,
        gc: u64,
    ) -> Result<Option<(HostOffset, usize)>, Qcow2Error> {
        let l1_idx = gc / core.geo.l2_entries;
        let Some(&l1e) = usize::try_from(l1_idx).ok().and_then(|i| self.l1.get(i)) else {
            return Ok(None);
        };
        let off = l1e & L1E_OFFSET_MASK;
        if off == 0 {
            return Ok(None);
        }
        if !off.is_multiple_of(core.geo.cluster_size) {
            return Err(Qcow2Error::Corrupt {
                what: "misaligned L2 table offset",
                offset: off,
            });
        }
        if off
            .checked_add(core.geo.cluster_size)
            .is_none_or(|end| end > self.file_len)
        {
            return Err(Qcow2Error::Corrupt {
                what: "L2 table beyond end of file",
                offset: off,
            });
        }
        let idx = (gc % core.geo.l2_entries) as usize * core.geo.entry_words;
        Ok(Some((HostOffset(off), idx)))
    }

    pub(super) fn load_l2(
        &mut self,
        core: &Core,
        off: HostOffset,
    ) -> Result<&mut Cached<Vec<u64>>, Qcow2Error> {
        self.tick += 1;
        let tick = self.tick;
        if !self.l2.contains_key(&off) {
            if self.l2.len() >= self.l2_cap {
                self.evict_l2(core)?;
            }
            let mut buf = vec![0u8; core.geo.cluster_size as usize];
            core.read_exact(&mut buf, off, "read L2 table")?;
            self.l2.insert(
                off,
                Cached {
                    data: be_words(&buf),
                    dirty: false,
                    used: tick,
                },
            );
        }
        let t = self.l2.get_mut(&off).ok_or(Qcow2Error::Corrupt {
            what: "L2 cache lost a table",
            offset: off.get(),
        })?;
        t.used = tick;
        Ok(t)
    }

    pub(super) fn evict_l2(&mut self, core: &Core) -> Result<(), Qcow2Error> {
        let Some((&victim, v)) = self.l2.iter().min_by_key(|(_, t)| t.used) else {
            return Ok(());
        };
        if v.dirty {
            self.write_back_l2(core)?;
        }
        self.l2.remove(&victim);
        Ok(())
    }

    /// Data and refcounts durable, then every dirty L2 table written.
    pub(super) fn write_back_l2(&mut self, core: &Core) -> Result<(), Qcow2Error> {
        core.sync("sync data before L2")?;
        self.write_refcounts(core)?;
        for (off, t) in &mut self.l2 {
            if t.dirty {
                core.write(&words_be(&t.data), *off, "write L2 table")?;
                t.dirty = false;
                self.need_sync = true;
            }
        }
        Ok(())
    }

    /// The L2 entry of guest cluster `gc` (unallocated when it has no L2 table).
    pub(crate) fn entry(&mut self, core: &Core, gc: u64) -> Result<L2Entry, Qcow2Error> {
        let Some((off, idx)) = self.l2_location(core, gc)? else {
            return Ok(L2Entry::UNALLOCATED);
        };
        let ext = core.geo.extended;
        let t = self.load_l2(core, off)?;
        let e = t.data[idx];
        let bm = if ext { t.data[idx + 1] } else { 0 };
        Ok(L2Entry::from_words(e, bm))
    }

    /// [`Self::entry`] if it needs no I/O: `None` when `gc`'s L2 table is not cached.
    pub(crate) fn entry_cached(
        &mut self,
        core: &Core,
        gc: u64,
    ) -> Result<Option<L2Entry>, Qcow2Error> {
        let Some((off, _)) = self.l2_location(core, gc)? else {
            return Ok(Some(L2Entry::UNALLOCATED));
        };
        if !self.l2.contains_key(&off) {
            return Ok(None);
        }
        self.entry(core, gc).map(Some)
    }

    /// How many clusters from `gc` on (at most `limit`, never past the end of `gc`'s L2 table)
    /// have an all-zero L2 entry: unallocated, no zero flag. Read straight from the cached
    /// table, so a walk over a sparse layer costs a word compare per cluster, not an entry
    /// decode. 0 when `gc` has no L2 table (see [`Self::l2_missing`]).
    pub(crate) fn unallocated_run(
        &mut self,
        core: &Core,
        gc: u64,
        limit: u64,
    ) -> Result<u64, Qcow2Error> {
        let Some((off, idx)) = self.l2_location(core, gc)? else {
            return Ok(0);
        };
        let words = core.geo.entry_words;
        let max = limit.min(core.geo.l2_entries - gc % core.geo.l2_entries);
        let t = self.load_l2(core, off)?;
        let mut n = 0;
        for entry in t.data[idx..].chunks(words).take(max as usize) {
            if entry.iter().any(|w| *w != 0) {
                break;
            }
            n += 1;
        }
        Ok(n)
    }

    /// Whether the L1 entry covering `gc` is empty (the whole L2 range is unallocated).
    pub(crate) fn l2_missing(&self, core: &Core, gc: u64) -> bool {
        let l1_idx = gc / core.geo.l2_entries;
        usize::try_from(l1_idx)
            .ok()
            .and_then(|i| self.l1.get(i))
            .is_none_or(|e| e & L1E_OFFSET_MASK == 0)
    }

    /// Makes sure an L2 table exists for `gc`, allocating one at the end of the file.
    pub(crate) fn ensure_l2(&mut self, core: &Core, gc: u64) -> Result<(), Qcow2Error> {
        let l1_idx =
            usize::try_from(gc / core.geo.l2_entries).map_err(|_| Qcow2Error::Corrupt {
                what: "guest cluster beyond L1",
                offset: gc,
            })?;
        let Some(&l1e) = self.l1.get(l1_idx) else {
            return Err(Qcow2Error::Corrupt {
                what: "guest cluster beyond L1",
                offset: gc,
            });
        };
        if l1e & L1E_OFFSET_MASK != 0 {
            if l1e & L1E_COPIED == 0 {
                return Err(Qcow2Error::Corrupt {
                    what: "shared L2 table (L1 entry without COPIED)",
                    offset: l1e & L1E_OFFSET_MASK,
                });
            }
            return Ok(());
        }
        let off = self.alloc(core, 1)?;
        if self.l2.len() >= self.l2_cap {
            self.evict_l2(core)?;
        }
        self.tick += 1;
        let words = (core.geo.cluster_size / 8) as usize;
        self.l2.insert(
            off,
            Cached {
                data: vec![0; words],
                dirty: true,
                used: self.tick,
            },
        );
        self.l1[l1_idx] = off.get() | L1E_COPIED;
        self.l1_dirty = true;
        Ok(())
    }

    /// Sets the entry of `gc`; its L2 table must exist.
    pub(crate) fn set_entry(
        &mut self,
        core: &Core,
        gc: u64,
        entry: L2Entry,
    ) -> Result<(), Qcow2Error> {
        let Some((off, idx)) = self.l2_location(core, gc)? else {
            return Err(Qcow2Error::Corrupt {
                what: "no L2 table for update",
                offset: gc,
            });
        };
        let ext = core.geo.extended;
        let t = self.load_l2(core, off)?;
        t.data[idx] = entry.descriptor();
        if ext {
            t.data[idx + 1] = entry.bitmap();
        }
        t.dirty = true;
        Ok(())
    }
}
