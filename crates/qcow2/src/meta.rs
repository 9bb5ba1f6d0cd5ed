//! In-memory metadata of one image layer: the L1 table, the bounded L2 and refcount block
//! caches, cluster allocation, and the ordered write-back that makes them durable.
//!
//! # Ordering (crash safety)
//! New clusters are always allocated at the end of the file (freed clusters are never reused
//! while the image is open), so a data write never lands in a cluster that on-disk metadata
//! still references for something else. Metadata is written back, never through:
//!
//! 1. data `pwrite`s complete before their L2 entry is published in memory;
//! 2. `flush` then runs: `fdatasync` (data) → dirty refcount blocks and refcount
//!    table → `fdatasync` → header (if the refcount table moved) → `fdatasync` → dirty L2
//!    tables → `fdatasync` → L1 table → `fdatasync` → refcount *decrements* of freed clusters
//!    → `fdatasync`;
//! 3. evicting a dirty L2 table from the cache performs steps 2's data sync and refcount
//!    write-back first, so an L2 table on disk never points at data or clusters whose
//!    refcount is not yet durable; evicting a dirty refcount block only ever writes
//!    increments (decrements are deferred to the end of a flush), which can create leaks but
//!    never a reference to a cluster with refcount 0.
//!
//! A crash at any point therefore leaves at worst leaked clusters (refcount > references),
//! never a reference to a free cluster or to unwritten data. After `flush` returns,
//! everything written before it is durable.

use std::collections::{HashMap, HashSet};

use crate::core::Core;
use crate::error::Qcow2Error;

/// L1 entry bits 9..55: offset of the L2 table.
pub(crate) const L1E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// L2 entry bits 9..55: host cluster offset of a standard cluster.
pub(crate) const L2E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Bit 63 of L1/L2 entries: refcount is exactly one.
pub(crate) const OFLAG_COPIED: u64 = 1 << 63;
/// Bit 62 of L2 entries: compressed cluster.
pub(crate) const OFLAG_COMPRESSED: u64 = 1 << 62;
/// Bit 0 of standard L2 entries (v3): reads as zeros.
pub(crate) const OFLAG_ZERO: u64 = 1;

/// Memory budget for cached L2 tables of a writable layer (64 GiB of guest data mapped at
/// 64 KiB clusters).
const L2_CACHE_BYTES: u64 = 32 << 20;
/// Memory budget for cached L2 tables of a read-only layer (backing files: a chain may be
/// deep, so each layer gets less).
const L2_CACHE_BYTES_READ_ONLY: u64 = 8 << 20;
/// Memory budget for cached refcount blocks per image layer.
const REFBLOCK_CACHE_BYTES: u64 = 8 << 20;
/// Bounds on the number of cached tables (eviction scans are linear).
const MIN_CACHED: u64 = 8;
const MAX_CACHED: u64 = 4096;

#[derive(Debug)]
struct Cached<T> {
    data: T,
    dirty: bool,
    used: u64,
}

/// Writable-image refcount state.
#[derive(Debug)]
pub(crate) struct Refcounts {
    table: Vec<u64>,
    table_offset: u64,
    table_clusters: u64,
    table_dirty: bool,
    header_dirty: bool,
    blocks: HashMap<u64, Cached<Vec<u8>>>,
    cap: usize,
}

impl Refcounts {
    pub(crate) fn new(table: Vec<u64>, table_offset: u64, table_clusters: u64, cs: u64) -> Self {
        let cap = (REFBLOCK_CACHE_BYTES / cs).clamp(MIN_CACHED, MAX_CACHED) as usize;
        Self {
            table,
            table_offset,
            table_clusters,
            table_dirty: false,
            header_dirty: false,
            blocks: HashMap::new(),
            cap,
        }
    }
}

/// How far ahead of the allocation end a writable file is preallocated (see
/// [`Meta::alloc`]).
const PREALLOC_STEP: u64 = 64 << 20;

/// Metadata state of one layer, guarded by the image's mutex.
#[derive(Debug)]
pub(crate) struct Meta {
    pub(crate) l1: Vec<u64>,
    l1_offset: u64,
    l1_dirty: bool,
    l2: HashMap<u64, Cached<Vec<u64>>>,
    l2_cap: usize,
    tick: u64,
    pub(crate) rc: Option<Refcounts>,
    /// Next free byte for allocation (cluster aligned) when writable; file length otherwise.
    pub(crate) eof: u64,
    /// Length offsets are validated against: max(file length at open, eof, preallocated end).
    pub(crate) file_len: u64,
    /// End of the space preallocated for data beyond `eof` (see [`Meta::alloc`]); `eof` when
    /// nothing is.
    prealloc_end: u64,
    /// Preallocation is worth trying (the storage does it and has not failed).
    prealloc: bool,
    /// Guest clusters with a write, zeroing or discard in flight.
    pub(crate) inflight: HashSet<u64>,
    /// Cluster ranges (first cluster index, count) whose refcount drops at the next flush.
    pending_free: Vec<(u64, u64)>,
    need_sync: bool,
}

fn be_words(buf: &[u8]) -> Vec<u64> {
    buf.chunks_exact(8)
        .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect()
}

fn words_be(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_be_bytes()).collect()
}

impl Meta {
    pub(crate) fn new(
        core: &Core,
        l1: Vec<u64>,
        l1_offset: u64,
        rc: Option<Refcounts>,
        file_len: u64,
    ) -> Self {
        let cs = core.geo.cluster_size;
        let budget = if rc.is_some() {
            L2_CACHE_BYTES
        } else {
            L2_CACHE_BYTES_READ_ONLY
        };
        let l2_cap = (budget / cs).clamp(MIN_CACHED, MAX_CACHED) as usize;
        let eof = if rc.is_some() {
            file_len.next_multiple_of(cs)
        } else {
            file_len
        };
        Self {
            l1,
            l1_offset,
            l1_dirty: false,
            l2: HashMap::new(),
            l2_cap,
            tick: 0,
            rc,
            eof,
            file_len: file_len.max(eof),
            prealloc_end: eof,
            prealloc: true,
            inflight: HashSet::new(),
            pending_free: Vec::new(),
            need_sync: false,
        }
    }

    /// Drops cached tables and re-reads the L1 table (after another descriptor wrote the file).
    pub(crate) fn reload(&mut self, core: &Core) -> Result<(), Qcow2Error> {
        self.l2.clear();
        let mut buf = vec![0u8; self.l1.len() * 8];
        core.read_exact(&mut buf, self.l1_offset, "read L1 table")?;
        self.l1 = be_words(&buf);
        self.file_len = core.storage_len()?;
        self.eof = self.file_len;
        self.prealloc_end = self.eof;
        Ok(())
    }

    fn l2_location(&self, core: &Core, gc: u64) -> Result<Option<(u64, usize)>, Qcow2Error> {
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
        Ok(Some((off, idx)))
    }

    fn load_l2(&mut self, core: &Core, off: u64) -> Result<&mut Cached<Vec<u64>>, Qcow2Error> {
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
            offset: off,
        })?;
        t.used = tick;
        Ok(t)
    }

    fn evict_l2(&mut self, core: &Core) -> Result<(), Qcow2Error> {
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
    fn write_back_l2(&mut self, core: &Core) -> Result<(), Qcow2Error> {
        core.sync("sync data before L2")?;
        self.write_refcounts(core)?;
        for (&off, t) in &mut self.l2 {
            if t.dirty {
                core.write(&words_be(&t.data), off, "write L2 table")?;
                t.dirty = false;
                self.need_sync = true;
            }
        }
        Ok(())
    }

    /// The L2 entry (and extended-L2 bitmap, 0 otherwise) of guest cluster `gc`.
    pub(crate) fn entry(&mut self, core: &Core, gc: u64) -> Result<(u64, u64), Qcow2Error> {
        let Some((off, idx)) = self.l2_location(core, gc)? else {
            return Ok((0, 0));
        };
        let ext = core.geo.extended;
        let t = self.load_l2(core, off)?;
        let e = t.data[idx];
        let bm = if ext { t.data[idx + 1] } else { 0 };
        Ok((e, bm))
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
            if l1e & OFLAG_COPIED == 0 {
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
        self.l1[l1_idx] = off | OFLAG_COPIED;
        self.l1_dirty = true;
        Ok(())
    }

    /// Sets the entry of `gc`; its L2 table must exist.
    pub(crate) fn set_entry(
        &mut self,
        core: &Core,
        gc: u64,
        e: u64,
        bm: u64,
    ) -> Result<(), Qcow2Error> {
        let Some((off, idx)) = self.l2_location(core, gc)? else {
            return Err(Qcow2Error::Corrupt {
                what: "no L2 table for update",
                offset: gc,
            });
        };
        let ext = core.geo.extended;
        let t = self.load_l2(core, off)?;
        t.data[idx] = e;
        if ext {
            t.data[idx + 1] = bm;
        }
        t.dirty = true;
        Ok(())
    }

    /// Allocates `n` contiguous clusters at the end of the file with refcount 1.
    pub(crate) fn alloc(&mut self, core: &Core, n: u64) -> Result<u64, Qcow2Error> {
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
        Ok(off)
    }

    /// Keeps the file [`PREALLOC_STEP`] ahead of `end` when the storage preallocates (files
    /// written with direct I/O): a direct write inside the file's length runs in parallel
    /// with others on ext4, while one that extends the file waits for the inode lock.
    /// Failure only turns preallocation off; [`Self::trim_preallocation`] cuts the tail.
    fn preallocate(&mut self, core: &Core, start: u64, end: u64) {
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

    fn rc_geometry(core: &Core) -> (u64, u64, u32) {
        let bits = 1u32 << core.geo.refcount_order;
        let per_block = core.geo.cluster_size * 8 / u64::from(bits);
        (per_block, u64::from(bits), core.geo.refcount_order)
    }

    /// Adds `delta` to the refcount of `cluster`; returns the new refcount.
    fn rc_add(&mut self, core: &Core, cluster: u64, delta: i64) -> Result<u64, Qcow2Error> {
        let (per_block, bits, _) = Self::rc_geometry(core);
        let bi = cluster / per_block;
        self.ensure_block(core, bi)?;
        let block = self.load_block(core, bi)?;
        let idx = cluster % per_block;
        let old = get_refcount(&block.data, idx, bits);
        let max = if bits == 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        };
        let new =
            old.checked_add_signed(delta)
                .filter(|&v| v <= max)
                .ok_or(Qcow2Error::Corrupt {
                    what: "refcount overflow or underflow",
                    offset: cluster * core.geo.cluster_size,
                })?;
        set_refcount(&mut block.data, idx, bits, new);
        block.dirty = true;
        Ok(new)
    }

    fn load_block(&mut self, core: &Core, bi: u64) -> Result<&mut Cached<Vec<u8>>, Qcow2Error> {
        self.tick += 1;
        let tick = self.tick;
        let file_len = self.file_len;
        let rc = self.rc.as_mut().ok_or(Qcow2Error::Corrupt {
            what: "refcount update on read-only image",
            offset: 0,
        })?;
        if !rc.blocks.contains_key(&bi) {
            if rc.blocks.len() >= rc.cap
                && let Some((&victim, _)) = rc.blocks.iter().min_by_key(|(_, b)| b.used)
                && let Some(b) = rc.blocks.remove(&victim)
                && b.dirty
            {
                let off = rc.table[victim as usize];
                core.write(&b.data, off, "write refcount block")?;
                self.need_sync = true;
            }
            let off = rc.table[bi as usize];
            if !off.is_multiple_of(core.geo.cluster_size)
                || off
                    .checked_add(core.geo.cluster_size)
                    .is_none_or(|e| e > file_len)
            {
                return Err(Qcow2Error::Corrupt {
                    what: "invalid refcount block offset",
                    offset: off,
                });
            }
            let mut buf = vec![0u8; core.geo.cluster_size as usize];
            core.read_exact(&mut buf, off, "read refcount block")?;
            rc.blocks.insert(
                bi,
                Cached {
                    data: buf,
                    dirty: false,
                    used: tick,
                },
            );
        }
        let b = rc.blocks.get_mut(&bi).ok_or(Qcow2Error::Corrupt {
            what: "refcount cache lost a block",
            offset: bi,
        })?;
        b.used = tick;
        Ok(b)
    }

    fn ensure_block(&mut self, core: &Core, bi: u64) -> Result<(), Qcow2Error> {
        let cs = core.geo.cluster_size;
        let len = self.rc.as_ref().map_or(0, |r| r.table.len() as u64);
        if bi >= len {
            self.grow_reftable(core, bi + 1)?;
        }
        let rc = self.rc.as_mut().ok_or(Qcow2Error::Corrupt {
            what: "refcount update on read-only image",
            offset: 0,
        })?;
        if rc.table[bi as usize] != 0 {
            return Ok(());
        }
        let off = self.eof;
        self.eof += cs;
        self.file_len = self.file_len.max(self.eof);
        rc.table[bi as usize] = off;
        rc.table_dirty = true;
        if rc.blocks.len() >= rc.cap {
            // Make room through the normal path before inserting the new block.
            let victim = rc
                .blocks
                .iter()
                .min_by_key(|(_, b)| b.used)
                .map(|(&k, _)| k);
            if let Some(v) = victim
                && let Some(b) = rc.blocks.remove(&v)
                && b.dirty
            {
                core.write(&b.data, rc.table[v as usize], "write refcount block")?;
                self.need_sync = true;
            }
        }
        self.tick += 1;
        rc.blocks.insert(
            bi,
            Cached {
                data: vec![0; cs as usize],
                dirty: true,
                used: self.tick,
            },
        );
        self.rc_add(core, off / cs, 1).map(|_| ())
    }

    fn grow_reftable(&mut self, core: &Core, min_entries: u64) -> Result<(), Qcow2Error> {
        let cs = core.geo.cluster_size;
        let (per_block, _, _) = Self::rc_geometry(core);
        let per_cluster = cs / 8;
        let old_len = self.rc.as_ref().map_or(0, |r| r.table.len() as u64);
        // Cover the requested entries, twice the old size, and the clusters this growth uses.
        let mut entries = min_entries.max(old_len * 2).next_multiple_of(per_cluster);
        loop {
            let clusters = entries / per_cluster;
            let after = self.eof / cs + clusters + 2;
            let needed = after.div_ceil(per_block) + 1;
            if needed <= entries {
                break;
            }
            entries = (needed * 2).next_multiple_of(per_cluster);
        }
        if entries * 8 > crate::parse::MAX_REFTABLE_BYTES {
            return Err(Qcow2Error::TooLarge {
                what: "refcount table",
            });
        }
        let clusters = entries / per_cluster;
        let off = self.eof;
        self.eof += clusters * cs;
        self.file_len = self.file_len.max(self.eof);
        let rc = self.rc.as_mut().ok_or(Qcow2Error::Corrupt {
            what: "refcount update on read-only image",
            offset: 0,
        })?;
        let old = (rc.table_offset / cs, rc.table_clusters);
        rc.table.resize(entries as usize, 0);
        rc.table_offset = off;
        rc.table_clusters = clusters;
        rc.table_dirty = true;
        rc.header_dirty = true;
        self.pending_free.push(old);
        for i in 0..clusters {
            self.rc_add(core, off / cs + i, 1)?;
        }
        Ok(())
    }

    /// Writes dirty refcount blocks and the refcount table, syncs, then the header fields
    /// if the table moved.
    fn write_refcounts(&mut self, core: &Core) -> Result<(), Qcow2Error> {
        let Some(rc) = self.rc.as_mut() else {
            return Ok(());
        };
        let mut wrote = false;
        for (&bi, b) in &mut rc.blocks {
            if b.dirty {
                core.write(&b.data, rc.table[bi as usize], "write refcount block")?;
                b.dirty = false;
                wrote = true;
            }
        }
        if rc.table_dirty {
            let mut bytes = words_be(&rc.table);
            bytes.resize((rc.table_clusters * core.geo.cluster_size) as usize, 0);
            core.write(&bytes, rc.table_offset, "write refcount table")?;
            rc.table_dirty = false;
            wrote = true;
        }
        if wrote || self.need_sync {
            core.sync("sync refcounts")?;
            self.need_sync = false;
        }
        if rc.header_dirty {
            let mut h = [0u8; 12];
            h[..8].copy_from_slice(&rc.table_offset.to_be_bytes());
            h[8..].copy_from_slice(&(rc.table_clusters as u32).to_be_bytes());
            core.write(&h, crate::raw::OFF_REFCOUNT_TABLE_OFFSET, "write header")?;
            core.sync("sync header")?;
            rc.header_dirty = false;
        }
        Ok(())
    }

    /// Makes every change so far durable, in the order described in the module docs.
    pub(crate) fn flush(&mut self, core: &Core) -> Result<(), Qcow2Error> {
        if self.rc.is_none() {
            return Ok(());
        }
        if core.storage_len()? < self.eof {
            core.set_len(self.eof)?;
        }
        self.write_back_l2(core)?;
        if self.need_sync {
            core.sync("sync L2 tables")?;
            self.need_sync = false;
        }
        if self.l1_dirty {
            core.write(&words_be(&self.l1), self.l1_offset, "write L1 table")?;
            core.sync("sync L1 table")?;
            self.l1_dirty = false;
        }
        if !self.pending_free.is_empty() {
            let frees = std::mem::take(&mut self.pending_free);
            let mut holes: Vec<(u64, u64)> = Vec::new();
            for (first, count) in frees {
                for c in first..first + count {
                    if self.rc_add(core, c, -1)? == 0 {
                        match holes.last_mut() {
                            Some((start, n)) if *start + *n == c => *n += 1,
                            _ => holes.push((c, 1)),
                        }
                    }
                }
            }
            self.write_refcounts(core)?;
            // Nothing on disk references these clusters any more: give their space back.
            let cs = core.geo.cluster_size;
            for (c, n) in holes {
                core.storage
                    .punch_hole(c * cs, n * cs)
                    .map_err(|e| Qcow2Error::io("punch hole", &core.path, e))?;
            }
        }
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn set_cache_caps_for_test(&mut self, l2: usize, blocks: usize) {
        self.l2_cap = l2;
        if let Some(rc) = self.rc.as_mut() {
            rc.cap = blocks;
        }
    }

    /// Whether the image has unwritten metadata.
    pub(crate) fn is_dirty(&self) -> bool {
        self.l1_dirty
            || !self.pending_free.is_empty()
            || self.l2.values().any(|t| t.dirty)
            || self.rc.as_ref().is_some_and(|r| {
                r.table_dirty || r.header_dirty || r.blocks.values().any(|b| b.dirty)
            })
    }
}

/// Reads refcount `idx` of a block with `bits`-wide entries (sub-byte entries LSB first).
pub(crate) fn get_refcount(block: &[u8], idx: u64, bits: u64) -> u64 {
    if bits >= 8 {
        let bytes = (bits / 8) as usize;
        let start = idx as usize * bytes;
        block[start..start + bytes]
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
    } else {
        let per_byte = 8 / bits;
        let byte = block[(idx / per_byte) as usize];
        let shift = (idx % per_byte) * bits;
        (u64::from(byte) >> shift) & ((1 << bits) - 1)
    }
}

fn set_refcount(block: &mut [u8], idx: u64, bits: u64, value: u64) {
    if bits >= 8 {
        let bytes = (bits / 8) as usize;
        let start = idx as usize * bytes;
        let be = value.to_be_bytes();
        block[start..start + bytes].copy_from_slice(&be[8 - bytes..]);
    } else {
        let per_byte = 8 / bits;
        let pos = (idx / per_byte) as usize;
        let shift = (idx % per_byte) * bits;
        let mask = ((1u64 << bits) - 1) << shift;
        let v = (u64::from(block[pos]) & !mask) | ((value << shift) & mask);
        block[pos] = v as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn refcount_set_get_round_trips(order in 0u32..=6, idx in 0u64..64, value in any::<u64>()) {
            let bits = 1u64 << order;
            let max = if bits == 64 { u64::MAX } else { (1 << bits) - 1 };
            let v = value & max;
            let mut block = vec![0u8; 512];
            set_refcount(&mut block, idx, bits, v);
            prop_assert_eq!(get_refcount(&block, idx, bits), v);
            if idx > 0 {
                prop_assert_eq!(get_refcount(&block, idx - 1, bits), 0);
            }
        }
    }
}
