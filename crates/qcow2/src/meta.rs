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
use crate::offset::HostOffset;

mod alloc;
mod l2_cache;
mod refcount;

use crate::error::Qcow2Error;
pub(crate) use refcount::{Refcounts, get_refcount};

/// Bounds on the number of cached tables (L2 tables and refcount blocks) (eviction scans are linear).
const MIN_CACHED: u64 = 8;
const MAX_CACHED: u64 = 4096;

#[derive(Debug)]
struct Cached<T> {
    data: T,
    dirty: bool,
    used: u64,
}

/// Metadata state of one layer, guarded by the image's mutex.
#[derive(Debug)]
pub(crate) struct Meta {
    pub(crate) l1: Vec<u64>,
    l1_offset: HostOffset,
    l1_dirty: bool,
    /// Cached L2 tables by their offset in the file.
    l2: HashMap<HostOffset, Cached<Vec<u64>>>,
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

/// Decodes a table of big-endian 64-bit entries (L1, L2, refcount table).
pub(crate) fn be_words(buf: &[u8]) -> Vec<u64> {
    buf.chunks_exact(8)
        .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect()
}

/// Encodes a table of 64-bit entries big-endian.
fn words_be(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_be_bytes()).collect()
}

impl Meta {
    pub(crate) fn new(
        core: &Core,
        l1: Vec<u64>,
        l1_offset: HostOffset,
        rc: Option<Refcounts>,
        file_len: u64,
    ) -> Self {
        let cs = core.geo.cluster_size;
        let l2_cap = l2_cache::capacity(rc.is_some(), cs);
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
            punch_holes(core, &holes)?;
        }
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn set_cache_caps_for_test(&mut self, l2: usize, blocks: usize) {
        self.l2_cap = l2;
        if let Some(rc) = self.rc.as_mut() {
            rc.set_cap_for_test(blocks);
        }
    }

    /// Whether the image has unwritten metadata.
    pub(crate) fn is_dirty(&self) -> bool {
        self.l1_dirty
            || !self.pending_free.is_empty()
            || self.l2.values().any(|t| t.dirty)
            || self.rc.as_ref().is_some_and(Refcounts::is_dirty)
    }
}

/// Threads punching holes at once: each `fallocate(PUNCH_HOLE)` waits on the file system's
/// journal (about 3 ms on ext4 here), and concurrent ones share its commits, so a merge that
/// frees a few hundred scattered clusters does it in a tenth of the time (measured: 39 holes,
/// 108 ms one by one, 12 ms on 4 threads).
const HOLE_PUNCHERS: usize = 8;

/// Punches out the cluster runs `holes` (first cluster, count), several at once.
fn punch_holes(core: &Core, holes: &[(u64, u64)]) -> Result<(), Qcow2Error> {
    let cs = core.geo.cluster_size;
    let punch = |&(c, n): &(u64, u64)| {
        core.storage
            .punch_hole(c * cs, n * cs)
            .map_err(|e| Qcow2Error::io("punch hole", &core.path, e))
    };
    if holes.len() < 2 {
        return holes.iter().try_for_each(punch);
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::Mutex::new(None);
    let work = || {
        while let Some(hole) = holes.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) {
            if let Err(e) = punch(hole) {
                failed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get_or_insert(e);
            }
        }
    };
    std::thread::scope(|s| {
        for _ in 1..HOLE_PUNCHERS.min(holes.len()) {
            s.spawn(work);
        }
        work();
    });
    match failed
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
    {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
