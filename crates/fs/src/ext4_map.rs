//! Regular ext4 files read through their extent trees, parsed here: a read of a large file
//! is a few reads of whole extents from the volume (straight into the caller's buffer, so a
//! page-aligned buffer reaches the disk with `O_DIRECT`) instead of `ext4-view`'s one call per
//! block (4 KiB) out of a read-ahead window.
//!
//! Only files this module fully understands go this way: an inode with the `EXTENTS` flag and
//! without inline data or encryption, on a file system without `meta_bg` or `bigalloc`, whose
//! size and mode match what `ext4-view` answers for the path. Everything else (ext2/3
//! block-mapped files, inline data) reads through `ext4-view` as before.
//!
//! ext4 on-disk format (kernel `Documentation/filesystems/ext4`): the superblock at byte 1024;
//! group descriptors from block 1 (block 2 with 1 KiB blocks), 32 bytes each or
//! `s_desc_size` with the `64bit` feature; inode `n` at index `(n - 1) % s_inodes_per_group`
//! of its group's inode table. An extent tree node is a 12-byte header (magic `0xF30A`,
//! entries, max, depth) and 12-byte entries: in a leaf (depth 0) `ee_block` (u32, first file
//! block), `ee_len` (u16; above 32768 an unwritten extent of `ee_len - 32768` blocks, read as
//! zeros), `ee_start_hi` (u16), `ee_start_lo` (u32); in an index node `ei_block`,
//! `ei_leaf_lo`, `ei_leaf_hi`. The root lives in the inode's 60-byte `i_block`.
//!
//! Everything read is checked: extents in order and not overlapping, inside the volume, node
//! depths decreasing by one, at most [`MAX_NODE_READS`] node reads and [`MAX_EXTENTS`] extents
//! per look-up. Damage answers [`FsError::Corrupt`]. Extent-tree checksums are not verified.

use crate::error::FsError;
use crate::le::u32_at;
use crate::volume::Volume;

/// Most extents one look-up collects (a window of the file; the next read looks up the next).
pub(crate) const MAX_EXTENTS: usize = 4096;

/// Most extent-tree nodes one look-up reads.
pub(crate) const MAX_NODE_READS: usize = 1024;

/// Size of an extent header and of each entry.
const ENTRY: usize = 12;

/// `ee_len` above this marks an unwritten extent.
const UNWRITTEN: u16 = 32_768;

/// `s_feature_incompat` bits.
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_64BIT: u32 = 0x80;
/// `s_feature_ro_compat` bit.
const RO_COMPAT_BIGALLOC: u32 = 0x200;

/// `i_flags` bits.
const FLAG_ENCRYPT: u32 = 0x800;
const FLAG_EXTENTS: u32 = 0x8_0000;
const FLAG_INLINE_DATA: u32 = 0x1000_0000;

/// What locating an inode needs from the superblock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    block_size: u64,
    inodes_count: u32,
    inodes_per_group: u32,
    inode_size: u64,
    desc_size: u64,
    /// Volume offset of the group descriptor table.
    descriptors: u64,
    bits64: bool,
}

impl Geometry {
    /// From the superblock's 1024 bytes; `None` for a layout this module leaves to `ext4-view`
    /// (`meta_bg`, `bigalloc`, odd sizes).
    pub(crate) fn from_superblock(sb: &[u8; 1024]) -> Option<Self> {
        let log_block = u32_at(sb, 0x18);
        if log_block > 6 {
            return None;
        }
        let block_size = 1024u64 << log_block;
        let incompat = u32_at(sb, 0x60);
        let ro_compat = u32_at(sb, 0x64);
        if incompat & INCOMPAT_META_BG != 0 || ro_compat & RO_COMPAT_BIGALLOC != 0 {
            return None;
        }
        let rev_level = u32_at(sb, 0x4c);
        let inode_size = if rev_level == 0 {
            128
        } else {
            u64::from(u16::from_le_bytes([sb[0x58], sb[0x59]]))
        };
        if inode_size < 128 || inode_size > block_size || !inode_size.is_power_of_two() {
            return None;
        }
        let bits64 = incompat & INCOMPAT_64BIT != 0;
        let desc_size = if bits64 {
            u64::from(u16::from_le_bytes([sb[0xfe], sb[0xff]]))
        } else {
            32
        };
        if !(32..=1024).contains(&desc_size) || !desc_size.is_power_of_two() {
            return None;
        }
        let inodes_per_group = u32_at(sb, 0x28);
        if inodes_per_group == 0 {
            return None;
        }
        // As `ext4-view` (and the kernel without meta_bg): the table follows the superblock's
        // block.
        let descriptors = if block_size == 1024 { 2048 } else { block_size };
        Some(Self {
            block_size,
            inodes_count: u32_at(sb, 0x00),
            inodes_per_group,
            inode_size,
            desc_size,
            descriptors,
            bits64,
        })
    }
}

/// The fields of an inode this module uses.
#[derive(Debug, Clone)]
pub(crate) struct Inode {
    /// Its number.
    pub(crate) number: u32,
    /// `i_mode`.
    pub(crate) mode: u16,
    /// `i_size`.
    pub(crate) size: u64,
    flags: u32,
    /// `i_block`: the extent tree's root node.
    root: [u8; 60],
}

impl Inode {
    /// Whether its data is an extent tree this module reads.
    pub(crate) fn extent_mapped(&self) -> bool {
        self.flags & FLAG_EXTENTS != 0 && self.flags & (FLAG_INLINE_DATA | FLAG_ENCRYPT) == 0
    }
}

/// Reads inode `number`.
///
/// # Errors
/// [`FsError::Corrupt`] for a number or table outside the file system, I/O errors.
pub(crate) fn read_inode(volume: &Volume, geo: &Geometry, number: u32) -> Result<Inode, FsError> {
    if number == 0 || number > geo.inodes_count {
        return Err(corrupt(format!("inode number {number}")));
    }
    let index = number - 1;
    let group = u64::from(index / geo.inodes_per_group);
    let within = u64::from(index % geo.inodes_per_group);
    let desc_at = group
        .checked_mul(geo.desc_size)
        .and_then(|o| o.checked_add(geo.descriptors))
        .ok_or_else(|| corrupt(format!("group {group} of inode {number}")))?;
    let mut desc = [0u8; 64];
    let desc_len = if geo.bits64 && geo.desc_size >= 64 {
        64
    } else {
        32
    };
    read(volume, &mut desc[..desc_len], desc_at)?;
    let mut table = u64::from(u32_at(&desc, 0x08));
    if desc_len == 64 {
        table |= u64::from(u32_at(&desc, 0x28)) << 32;
    }
    let at = table
        .checked_mul(geo.block_size)
        .and_then(|t| t.checked_add(within.checked_mul(geo.inode_size)?))
        .ok_or_else(|| corrupt(format!("inode table of inode {number}")))?;
    let mut raw = [0u8; 160];
    let len = usize::try_from(geo.inode_size).map_or(160, |s| s.min(160));
    read(volume, &mut raw[..len], at)?;
    let mut root = [0u8; 60];
    root.copy_from_slice(&raw[0x28..0x28 + 60]);
    Ok(Inode {
        number,
        mode: u16::from_le_bytes([raw[0], raw[1]]),
        size: u64::from(u32_at(&raw, 0x04)) | (u64::from(u32_at(&raw, 0x6c)) << 32),
        flags: u32_at(&raw, 0x20),
        root,
    })
}

/// File blocks `file..file + len` at volume block `start`; an `unwritten` extent reads as
/// zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Extent {
    pub(crate) file: u64,
    pub(crate) len: u64,
    pub(crate) start: u64,
    pub(crate) unwritten: bool,
}

impl Extent {
    fn end(&self) -> u64 {
        self.file + self.len
    }
}

/// The extents of `inode` that overlap file blocks `from..`, in file order, at most
/// [`MAX_EXTENTS`] of them.
///
/// # Errors
/// [`FsError::Corrupt`] for a damaged tree, [`FsError::TooLarge`] beyond [`MAX_NODE_READS`],
/// I/O errors.
pub(crate) fn extents(
    volume: &Volume,
    geo: &Geometry,
    inode: &Inode,
    from: u64,
) -> Result<Vec<Extent>, FsError> {
    let mut walk = Walk {
        volume,
        geo,
        inode: inode.number,
        from,
        out: Vec::new(),
        node_reads: 0,
    };
    walk.node(&inode.root, None)?;
    Ok(walk.out)
}

struct Walk<'a> {
    volume: &'a Volume,
    geo: &'a Geometry,
    inode: u32,
    from: u64,
    out: Vec<Extent>,
    node_reads: usize,
}

impl Walk<'_> {
    /// Visits one node (`depth`: what its parent expects); answers whether the walk is done
    /// (enough extents).
    fn node(&mut self, node: &[u8], depth: Option<u16>) -> Result<bool, FsError> {
        let header = node
            .get(..ENTRY)
            .ok_or_else(|| self.bad("extent node shorter than its header"))?;
        if u16::from_le_bytes([header[0], header[1]]) != 0xf30a {
            return Err(self.bad("extent node without its magic"));
        }
        let entries = usize::from(u16::from_le_bytes([header[2], header[3]]));
        let node_depth = u16::from_le_bytes([header[6], header[7]]);
        if node_depth > 5 || depth.is_some_and(|d| d != node_depth) {
            return Err(self.bad("extent node at the wrong depth"));
        }
        let body = node
            .get(ENTRY..ENTRY + entries * ENTRY)
            .ok_or_else(|| self.bad("extent node with more entries than fit"))?;
        let entry = |i: usize| &body[i * ENTRY..(i + 1) * ENTRY];
        if node_depth == 0 {
            for i in 0..entries {
                let e = self.leaf_entry(entry(i))?;
                if let Some(last) = self.out.last()
                    && e.file < last.end()
                {
                    return Err(self.bad("extents out of order or overlapping"));
                }
                if e.end() <= self.from {
                    continue;
                }
                self.out.push(e);
                if self.out.len() >= MAX_EXTENTS {
                    return Ok(true);
                }
            }
            return Ok(false);
        }
        for i in 0..entries {
            let first = u64::from(u32_at(entry(i), 0));
            let next = if i + 1 < entries {
                let next = u64::from(u32_at(entry(i + 1), 0));
                if next <= first {
                    return Err(self.bad("extent index out of order"));
                }
                next
            } else {
                u64::MAX
            };
            if next <= self.from {
                continue;
            }
            let e = entry(i);
            let child =
                u64::from(u32_at(e, 4)) | (u64::from(u16::from_le_bytes([e[8], e[9]])) << 32);
            self.node_reads += 1;
            if self.node_reads > MAX_NODE_READS {
                return Err(FsError::TooLarge {
                    what: format!(
                        "extent tree of inode {} (more than {MAX_NODE_READS} nodes for one read)",
                        self.inode
                    ),
                });
            }
            let at = child
                .checked_mul(self.geo.block_size)
                .ok_or_else(|| self.bad("extent node outside the file system"))?;
            let mut block = vec![0u8; usize::try_from(self.geo.block_size).unwrap_or(4096)];
            read(self.volume, &mut block, at)?;
            if self.node(&block, Some(node_depth - 1))? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn leaf_entry(&self, e: &[u8]) -> Result<Extent, FsError> {
        let raw_len = u16::from_le_bytes([e[4], e[5]]);
        let (len, unwritten) = if raw_len > UNWRITTEN {
            (raw_len - UNWRITTEN, true)
        } else {
            (raw_len, false)
        };
        if len == 0 {
            return Err(self.bad("an empty extent"));
        }
        let start = u64::from(u32_at(e, 8)) | (u64::from(u16::from_le_bytes([e[6], e[7]])) << 32);
        let len = u64::from(len);
        let inside = start
            .checked_add(len)
            .and_then(|end| end.checked_mul(self.geo.block_size))
            .is_some_and(|end| end <= self.volume.size());
        if !inside {
            return Err(self.bad("an extent outside the file system"));
        }
        Ok(Extent {
            file: u64::from(u32_at(e, 0)),
            len,
            start,
            unwritten,
        })
    }

    fn bad(&self, what: &str) -> FsError {
        corrupt(format!("inode {}: {what}", self.inode))
    }
}

/// An extent-mapped file with the extents of its last look-up.
#[derive(Debug)]
pub(crate) struct MappedFile {
    inode: Inode,
    /// The extents overlapping file blocks `window.0..window.1`, in order.
    extents: Vec<Extent>,
    window: (u64, u64),
}

impl MappedFile {
    /// `inode`, which must be [`Inode::extent_mapped`].
    pub(crate) fn new(inode: Inode) -> Self {
        Self {
            inode,
            extents: Vec::new(),
            window: (0, 0),
        }
    }

    /// Reads from `offset` into `buf`; answers how many bytes (0 at or past the end).
    ///
    /// # Errors
    /// As [`extents`].
    pub(crate) fn read(
        &mut self,
        volume: &Volume,
        geo: &Geometry,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, FsError> {
        let size = self.inode.size;
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let n = usize::try_from(size - offset).map_or(buf.len(), |left| left.min(buf.len()));
        let bs = geo.block_size;
        let file_blocks = size.div_ceil(bs);
        let mut done = 0usize;
        while done < n {
            let pos = offset + done as u64;
            let block = pos / bs;
            if !(self.window.0..self.window.1).contains(&block) {
                self.extents = extents(volume, geo, &self.inode, block)?;
                let end = match self.extents.last() {
                    Some(last) if self.extents.len() >= MAX_EXTENTS => last.end(),
                    _ => file_blocks,
                };
                self.window = (block, end.max(block + 1));
            }
            let at = self.extents.partition_point(|e| e.end() <= block);
            let want = n - done;
            let take = match self.extents.get(at) {
                Some(e) if e.file <= block => {
                    // This extent and the ones physically after it, read at once.
                    let mut last = at;
                    while let (Some(a), Some(b)) =
                        (self.extents.get(last), self.extents.get(last + 1))
                    {
                        if b.file != a.end()
                            || b.start != a.start + a.len
                            || b.unwritten != e.unwritten
                        {
                            break;
                        }
                        last += 1;
                    }
                    let run_end = self.extents[last].end().min(self.window.1);
                    let take = span(run_end, bs, pos, want);
                    let dst = &mut buf[done..done + take];
                    if e.unwritten {
                        dst.fill(0);
                    } else {
                        let disk = (e.start + (block - e.file)) * bs + pos % bs;
                        read(volume, dst, disk)?;
                    }
                    take
                }
                next => {
                    // A hole: up to the next extent, or to the window's end.
                    let hole_end = next.map_or(self.window.1, |e| e.file.min(self.window.1));
                    let take = span(hole_end, bs, pos, want);
                    buf[done..done + take].fill(0);
                    take
                }
            };
            done += take;
        }
        Ok(n)
    }
}

/// Bytes from `pos` up to file block `end_block` (exclusive), at most `want`, at least 1.
fn span(end_block: u64, bs: u64, pos: u64, want: usize) -> usize {
    let end = end_block.saturating_mul(bs);
    let avail = end.saturating_sub(pos).max(1);
    usize::try_from(avail).map_or(want, |a| a.min(want))
}

fn read(volume: &Volume, buf: &mut [u8], at: u64) -> Result<(), FsError> {
    volume.read_at(buf, at).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            corrupt(format!("a read at {at} past the file system's end"))
        } else {
            FsError::Io(e)
        }
    })
}

fn corrupt(detail: String) -> FsError {
    FsError::Corrupt {
        what: "ext4 file system",
        detail,
    }
}
