//! Refcounts of a writable layer: the refcount table, the bounded refcount block cache,
//! growth of the table, and the write-back of blocks and table (with the header fields that
//! point at the table).

use std::collections::HashMap;

use zerocopy::byteorder::big_endian::{U32, U64};

use super::{Cached, MAX_CACHED, MIN_CACHED, Meta, words_be};
use crate::core::Core;
use crate::error::Qcow2Error;
use crate::offset::HostOffset;

/// Memory budget for cached refcount blocks per image layer.
const REFBLOCK_CACHE_BYTES: u64 = 8 << 20;

/// Writable-image refcount state.
#[derive(Debug)]
pub(crate) struct Refcounts {
    table: Vec<u64>,
    table_offset: HostOffset,
    table_clusters: u64,
    table_dirty: bool,
    header_dirty: bool,
    blocks: HashMap<u64, Cached<Vec<u8>>>,
    cap: usize,
}

impl Refcounts {
    pub(crate) fn new(
        table: Vec<u64>,
        table_offset: HostOffset,
        table_clusters: u64,
        cs: u64,
    ) -> Self {
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

    /// Whether blocks, the table or the header fields pointing at it await write-back.
    pub(super) fn is_dirty(&self) -> bool {
        self.table_dirty || self.header_dirty || self.blocks.values().any(|b| b.dirty)
    }

    #[cfg(test)]
    pub(super) fn set_cap_for_test(&mut self, blocks: usize) {
        self.cap = blocks;
    }
}

impl Meta {
    pub(super) fn rc_geometry(core: &Core) -> (u64, u64, u32) {
        let bits = 1u32 << core.geo.refcount_order;
        let per_block = core.geo.cluster_size * 8 / u64::from(bits);
        (per_block, u64::from(bits), core.geo.refcount_order)
    }

    /// Adds `delta` to the refcount of `cluster`; returns the new refcount.
    pub(super) fn rc_add(
        &mut self,
        core: &Core,
        cluster: u64,
        delta: i64,
    ) -> Result<u64, Qcow2Error> {
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

    pub(super) fn load_block(
        &mut self,
        core: &Core,
        bi: u64,
    ) -> Result<&mut Cached<Vec<u8>>, Qcow2Error> {
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
                let off = HostOffset(rc.table[victim as usize]);
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
            core.read_exact(&mut buf, HostOffset(off), "read refcount block")?;
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

    pub(super) fn ensure_block(&mut self, core: &Core, bi: u64) -> Result<(), Qcow2Error> {
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
                let off = HostOffset(rc.table[v as usize]);
                core.write(&b.data, off, "write refcount block")?;
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

    pub(super) fn grow_reftable(
        &mut self,
        core: &Core,
        min_entries: u64,
    ) -> Result<(), Qcow2Error> {
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
        let old = (rc.table_offset.get() / cs, rc.table_clusters);
        rc.table.resize(entries as usize, 0);
        rc.table_offset = HostOffset(off);
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
    pub(super) fn write_refcounts(&mut self, core: &Core) -> Result<(), Qcow2Error> {
        let Some(rc) = self.rc.as_mut() else {
            return Ok(());
        };
        let mut wrote = false;
        for (&bi, b) in &mut rc.blocks {
            if b.dirty {
                let off = HostOffset(rc.table[bi as usize]);
                core.write(&b.data, off, "write refcount block")?;
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
            let clusters = u32::try_from(rc.table_clusters).map_err(|_| Qcow2Error::TooLarge {
                what: "refcount table",
            })?;
            let offset = rc.table_offset.get();
            core.update_header(|h| {
                h.refcount_table_offset = U64::new(offset);
                h.refcount_table_clusters = U32::new(clusters);
            })?;
            core.sync("sync header")?;
            rc.header_dirty = false;
        }
        Ok(())
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
