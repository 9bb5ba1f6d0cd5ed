//! What one layer wrote ([`LayerDigests`]) and what a point reads ([`PointDigests`]).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use crate::{BLOCK_SIZE, DigestError, block_count, block_len, digest};

/// What a block must read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockDigest {
    /// All zeros.
    Zero,
    /// Bytes with this digest ([`crate::digest`]).
    Data(u64),
}

impl BlockDigest {
    /// The expectation for `bytes` as read: [`BlockDigest::Zero`] when their digest is that of
    /// zeros (so an all-zero block always compares equal to `Zero`), else their digest.
    #[must_use]
    pub fn of(bytes: &[u8]) -> Self {
        let d = digest(bytes);
        if d == zero_digest(bytes.len()) {
            Self::Zero
        } else {
            Self::Data(d)
        }
    }
}

/// The digest of `len` zero bytes (cached for a whole block).
fn zero_digest(len: usize) -> u64 {
    static FULL: OnceLock<u64> = OnceLock::new();
    if len as u64 == BLOCK_SIZE {
        *FULL.get_or_init(|| digest(&vec![0u8; BLOCK_SIZE as usize]))
    } else {
        digest(&vec![0u8; len])
    }
}

/// A run of consecutive blocks a layer recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Run {
    /// `blocks` blocks of zeros.
    Zero {
        /// How many blocks.
        blocks: u64,
    },
    /// One digest per block.
    Data(Vec<u64>),
}

impl Run {
    /// Blocks in the run.
    #[must_use]
    pub fn len(&self) -> u64 {
        match self {
            Self::Zero { blocks } => *blocks,
            Self::Data(d) => d.len() as u64,
        }
    }

    /// Whether the run holds no block.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The digest of its `i`-th block.
    fn at(&self, i: u64) -> BlockDigest {
        match self {
            Self::Zero { .. } => BlockDigest::Zero,
            Self::Data(d) => BlockDigest::Data(d[i as usize]),
        }
    }

    /// Blocks `[from, to)` of the run.
    fn slice(&self, from: u64, to: u64) -> Self {
        match self {
            Self::Zero { .. } => Self::Zero { blocks: to - from },
            Self::Data(d) => Self::Data(d[from as usize..to as usize].to_vec()),
        }
    }
}

/// The digests one layer (one point's image of one disk) carries: for each block it wrote,
/// zeros or the digest of the bytes read at the source. Runs are keyed by their first block,
/// never overlap, and neighbours of the same kind are joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerDigests {
    disk_size: u64,
    runs: BTreeMap<u64, Run>,
}

impl LayerDigests {
    /// No block recorded yet, for a disk of `disk_size` bytes.
    #[must_use]
    pub fn new(disk_size: u64) -> Self {
        Self {
            disk_size,
            runs: BTreeMap::new(),
        }
    }

    /// The disk's size.
    #[must_use]
    pub fn disk_size(&self) -> u64 {
        self.disk_size
    }

    /// Records `bytes`, read at the source from disk offset `offset`: one digest per block
    /// (zero blocks as zeros). `offset` must be a block boundary and the range must end on one
    /// or at the end of the disk.
    ///
    /// # Errors
    /// [`DigestError::Unaligned`], [`DigestError::OutOfRange`].
    pub fn record(&mut self, offset: u64, bytes: &[u8]) -> Result<(), DigestError> {
        let first = self.check(offset, bytes.len() as u64)?;
        let mut pending: Option<(u64, Run)> = None;
        for (i, chunk) in bytes.chunks(BLOCK_SIZE as usize).enumerate() {
            let block = first + i as u64;
            let d = BlockDigest::of(chunk);
            pending = match (pending, d) {
                (Some((start, Run::Zero { blocks })), BlockDigest::Zero) => {
                    Some((start, Run::Zero { blocks: blocks + 1 }))
                }
                (Some((start, Run::Data(mut v))), BlockDigest::Data(h)) => {
                    v.push(h);
                    Some((start, Run::Data(v)))
                }
                (done, d) => {
                    if let Some((start, run)) = done {
                        self.insert(start, run);
                    }
                    Some((
                        block,
                        match d {
                            BlockDigest::Zero => Run::Zero { blocks: 1 },
                            BlockDigest::Data(h) => Run::Data(vec![h]),
                        },
                    ))
                }
            };
        }
        if let Some((start, run)) = pending {
            self.insert(start, run);
        }
        Ok(())
    }

    /// Records `[offset, offset + len)` as zeros (written as zeros without reading, e.g. a hole
    /// an incremental masks). Aligned as for [`LayerDigests::record`].
    ///
    /// # Errors
    /// [`DigestError::Unaligned`], [`DigestError::OutOfRange`].
    pub fn record_zero(&mut self, offset: u64, len: u64) -> Result<(), DigestError> {
        let first = self.check(offset, len)?;
        let blocks = block_count(offset + len) - first;
        if blocks > 0 {
            self.insert(first, Run::Zero { blocks });
        }
        Ok(())
    }

    /// The first block of an aligned range inside the disk.
    fn check(&self, offset: u64, len: u64) -> Result<u64, DigestError> {
        let end = offset
            .checked_add(len)
            .filter(|e| *e <= self.disk_size)
            .ok_or(DigestError::OutOfRange {
                offset,
                length: len,
                disk_size: self.disk_size,
            })?;
        if !offset.is_multiple_of(BLOCK_SIZE)
            || (!end.is_multiple_of(BLOCK_SIZE) && end != self.disk_size)
        {
            return Err(DigestError::Unaligned {
                offset,
                length: len,
                block_size: BLOCK_SIZE,
            });
        }
        Ok(offset / BLOCK_SIZE)
    }

    /// What this layer recorded for `block`, if anything.
    #[must_use]
    pub fn get(&self, block: u64) -> Option<BlockDigest> {
        let (start, run) = self.runs.range(..=block).next_back()?;
        let i = block - start;
        (i < run.len()).then(|| run.at(i))
    }

    /// The runs, by first block, ascending.
    pub fn runs(&self) -> impl Iterator<Item = (u64, &Run)> + '_ {
        self.runs.iter().map(|(k, v)| (*k, v))
    }

    /// How many blocks this layer recorded.
    #[must_use]
    pub fn blocks(&self) -> u64 {
        self.runs.values().map(Run::len).sum()
    }

    /// Merges a newer layer into this one (the oldest point removed: the next layer is merged
    /// into the base, which then reads as that layer's point): every block `newer` recorded
    /// replaces this layer's.
    ///
    /// # Errors
    /// [`DigestError::SizeMismatch`] when the disk sizes differ.
    pub fn overlay(&mut self, newer: &Self) -> Result<(), DigestError> {
        self.same_size(newer)?;
        for (start, run) in &newer.runs {
            self.insert(*start, run.clone());
        }
        Ok(())
    }

    /// Merges an older layer under this one (a middle point removed: its layer is merged into
    /// its child's): blocks `older` recorded and this layer did not are taken from `older`.
    ///
    /// # Errors
    /// [`DigestError::SizeMismatch`] when the disk sizes differ.
    pub fn underlay(&mut self, older: &Self) -> Result<(), DigestError> {
        self.same_size(older)?;
        let mut merged = older.clone();
        merged.overlay(self)?;
        *self = merged;
        Ok(())
    }

    fn same_size(&self, other: &Self) -> Result<(), DigestError> {
        if self.disk_size == other.disk_size {
            Ok(())
        } else {
            Err(DigestError::SizeMismatch {
                expected: self.disk_size,
                found: other.disk_size,
            })
        }
    }

    /// Inserts a run starting at block `start`, replacing whatever it overlaps, and joins it
    /// with neighbours of the same kind.
    pub(crate) fn insert(&mut self, start: u64, run: Run) {
        let end = start + run.len();
        if run.is_empty() {
            return;
        }
        // Cut the run that begins before `start` and reaches into it.
        if let Some((&s, prev)) = self.runs.range(..start).next_back() {
            let prev_end = s + prev.len();
            if prev_end > start {
                let prev = self.runs.remove(&s).unwrap_or(Run::Zero { blocks: 0 });
                self.runs.insert(s, prev.slice(0, start - s));
                if prev_end > end {
                    self.runs.insert(end, prev.slice(end - s, prev_end - s));
                }
            }
        }
        // Remove or cut runs beginning inside [start, end).
        let inside: Vec<u64> = self.runs.range(start..end).map(|(k, _)| *k).collect();
        for s in inside {
            if let Some(r) = self.runs.remove(&s) {
                let r_end = s + r.len();
                if r_end > end {
                    self.runs.insert(end, r.slice(end - s, r_end - s));
                }
            }
        }
        self.runs.insert(start, run);
        self.join_at(end);
        self.join_at(start);
    }

    /// Joins the run ending at `boundary` with the run starting there when both are of the
    /// same kind.
    fn join_at(&mut self, boundary: u64) {
        let Some((&s, left)) = self.runs.range(..boundary).next_back() else {
            return;
        };
        if s + left.len() != boundary {
            return;
        }
        let same = matches!(
            (left, self.runs.get(&boundary)),
            (Run::Zero { .. }, Some(Run::Zero { .. })) | (Run::Data(_), Some(Run::Data(_)))
        );
        if !same {
            return;
        }
        let (Some(left), Some(right)) = (self.runs.remove(&s), self.runs.remove(&boundary)) else {
            return;
        };
        let joined = match (left, right) {
            (Run::Zero { blocks: a }, Run::Zero { blocks: b }) => Run::Zero { blocks: a + b },
            (Run::Data(mut a), Run::Data(b)) => {
                a.extend(b);
                Run::Data(a)
            }
            (l, _) => l, // unreachable: kinds checked above
        };
        self.runs.insert(s, joined);
    }
}

/// What each block of a restore point must read as: its chain's layers composed, newest wins;
/// a block no layer recorded reads as zeros (the full's unwritten blocks).
#[derive(Debug, Clone, Copy)]
pub struct PointDigests<'a> {
    layers: &'a [LayerDigests],
    disk_size: u64,
}

impl<'a> PointDigests<'a> {
    /// The point whose chain is `layers`, oldest (the full) first; its size is the newest
    /// layer's.
    #[must_use]
    pub fn new(layers: &'a [LayerDigests]) -> Self {
        Self {
            layers,
            disk_size: layers.last().map_or(0, LayerDigests::disk_size),
        }
    }

    /// The point's disk size.
    #[must_use]
    pub fn disk_size(&self) -> u64 {
        self.disk_size
    }

    /// The number of blocks.
    #[must_use]
    pub fn block_count(&self) -> u64 {
        block_count(self.disk_size)
    }

    /// The length of `block`.
    #[must_use]
    pub fn block_len(&self, block: u64) -> u64 {
        block_len(self.disk_size, block)
    }

    /// What `block` must read as, and the index (in the chain) of the layer that holds it;
    /// `None` when no layer recorded it (zeros).
    #[must_use]
    pub fn expected(&self, block: u64) -> (BlockDigest, Option<usize>) {
        for (i, layer) in self.layers.iter().enumerate().rev() {
            if let Some(d) = layer.get(block) {
                return (d, Some(i));
            }
        }
        (BlockDigest::Zero, None)
    }
}
