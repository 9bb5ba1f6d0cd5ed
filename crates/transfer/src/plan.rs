//! Planning a disk transfer: which requests to read and send, and what to do with zeros.
//!
//! Extents (allocated extents for a full, CBT changed areas for an incremental) become read
//! requests of at most [`MAX_REQUEST`] bytes whose inner boundaries fall on [`ALIGN`] (1 MiB)
//! boundaries, so requests are large (≥ 1 MiB wherever the extents are) and line up with the
//! hub's clusters. Requests never leave their extent: bytes outside the extents are never read
//! or sent (in an incremental they are unchanged and must keep the parent's data).
//!
//! A read buffer is then cut into [`Segment`]s at the target's block size boundaries
//! ([`zero_granularity`]; absolute offsets; [`ZERO_GRANULARITY`], the hub's default cluster
//! size, when the target advertises none): runs holding data, and runs of zeros. What happens
//! to a zero run depends on the backup ([`ZeroPolicy`]): a full skips it (a new image reads
//! zeros there anyway); an incremental sends `WRITE_ZEROES`, because the overlay must mask the
//! parent's old data.
//!
//! When the engine records digests ([`crate::engine::DiskTransfer::digests`]), every block it
//! records must have been read whole at the source: [`widen_to_blocks`] first widens the
//! extents outward to [`sendense_digest::BLOCK_SIZE`] boundaries (clamped to the disk end).
//! The requests then start and end on block boundaries (or the disk end), and the hub's
//! clusters (64 KiB) are written whole, sparing it copy-on-write reads of partial clusters. An
//! incremental re-sends a few unchanged bytes around each changed area, which equal the
//! parent's.

use sendense_io::is_zero;

use crate::source::Extent;

/// Largest read/write request, in bytes.
pub const MAX_REQUEST: u64 = 4 << 20;
/// Inner request boundaries fall on multiples of this.
pub const ALIGN: u64 = 1 << 20;
/// Zero detection granularity, in bytes (the hub's default cluster size).
pub const ZERO_GRANULARITY: u64 = 64 << 10;
/// Finest zero detection granularity, whatever the target advertises.
pub const MIN_ZERO_GRANULARITY: u64 = 4 << 10;

/// Zero detection granularity for a target that prefers blocks of `block_size` bytes (its
/// `NBD_INFO_BLOCK_SIZE`): that size, kept within [`MIN_ZERO_GRANULARITY`] and [`ALIGN`];
/// [`ZERO_GRANULARITY`] when it advertises none.
#[must_use]
pub fn zero_granularity(block_size: Option<u64>) -> u64 {
    block_size.map_or(ZERO_GRANULARITY, |b| b.clamp(MIN_ZERO_GRANULARITY, ALIGN))
}

/// Largest single `WRITE_ZEROES` request for a hole (NBD lengths are 32-bit).
pub const MAX_ZERO_REQUEST: u64 = 1 << 30;

/// What to do with all-zero runs found in the data read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroPolicy {
    /// Do not send them (full backup: the new image already reads zeros).
    Skip,
    /// Send them as `WRITE_ZEROES` (incremental: mask the parent).
    WriteZeroes,
}

/// Splits extents into requests of at most `max_request` bytes; inner boundaries are multiples
/// of `align`. `max_request` must be a multiple of `align`, both non-zero.
pub fn requests(
    extents: &[Extent],
    max_request: u64,
    align: u64,
) -> impl Iterator<Item = Extent> + '_ {
    extents
        .iter()
        .flat_map(move |e| split_extent(*e, max_request, align))
}

/// One extent split as [`requests`] does.
fn split_extent(extent: Extent, max_request: u64, align: u64) -> impl Iterator<Item = Extent> {
    let end = extent.end();
    let mut pos = extent.offset;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let limit = pos.saturating_add(max_request);
        let aligned = limit - limit % align;
        let stop = if aligned > pos { aligned } else { limit }.min(end);
        let piece = Extent::new(pos, stop - pos);
        pos = stop;
        Some(piece)
    })
}

/// The gaps of `[0, size)` not covered by `extents` (sorted, non-overlapping), split into
/// pieces of at most [`MAX_ZERO_REQUEST`] bytes.
#[must_use]
pub fn holes(extents: &[Extent], size: u64) -> Vec<Extent> {
    let mut out = Vec::new();
    let mut pos = 0u64;
    let mut push = |from: u64, to: u64| {
        out.extend(split_extent(
            Extent::new(from, to - from),
            MAX_ZERO_REQUEST,
            MAX_ZERO_REQUEST,
        ));
    };
    for e in extents {
        let start = e.offset.min(size);
        if start > pos {
            push(pos, start);
        }
        pos = pos.max(e.end().min(size));
    }
    if size > pos {
        push(pos, size);
    }
    out
}

/// A piece of a read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    /// Bytes `buf[start..end]` hold data, to be written at `offset`.
    Data {
        /// Disk offset of `buf[start]`.
        offset: u64,
        /// Start index in the buffer.
        start: usize,
        /// End index in the buffer.
        end: usize,
    },
    /// `length` bytes at `offset` are all zero.
    Zero {
        /// Disk offset.
        offset: u64,
        /// Length in bytes.
        length: u64,
    },
}

/// Cuts `buf` (read from disk offset `offset`) into data and zero segments at `granularity`
/// boundaries of the disk (absolute), merging neighbours of the same kind.
#[must_use]
pub fn segments(buf: &[u8], offset: u64, granularity: u64) -> Vec<Segment> {
    let mut out: Vec<Segment> = Vec::new();
    let mut start = 0usize;
    while start < buf.len() {
        let pos = offset + start as u64;
        let to_boundary = granularity - pos % granularity;
        let len = usize::try_from(to_boundary)
            .unwrap_or(usize::MAX)
            .min(buf.len() - start);
        let end = start + len;
        let zero = is_zero(&buf[start..end]);
        match (out.last_mut(), zero) {
            (Some(Segment::Zero { length, .. }), true) => *length += len as u64,
            (Some(Segment::Data { end: e, .. }), false) => *e = end,
            (_, true) => out.push(Segment::Zero {
                offset: pos,
                length: len as u64,
            }),
            (_, false) => out.push(Segment::Data {
                offset: pos,
                start,
                end,
            }),
        }
        start = end;
    }
    out
}

pub use sendense_io::extent::merge as merge_extents;

/// `extents` (each inside `[0, size)`) widened outward to multiples of `block` (clamped to
/// `size`), sorted and merged: every block an extent touches is covered whole. `block` must be
/// non-zero.
#[must_use]
pub fn widen_to_blocks(extents: &[Extent], size: u64, block: u64) -> Vec<Extent> {
    let block = block.max(1);
    merge_extents(
        extents
            .iter()
            .filter(|e| e.length > 0)
            .map(|e| {
                let start = (e.offset - e.offset % block).min(size);
                let end = e.end().div_ceil(block).saturating_mul(block).min(size);
                Extent::new(start, end.saturating_sub(start))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn requests_large_extent_splits_on_mib_boundaries() {
        let got: Vec<Extent> =
            requests(&[Extent::new(512, 10 * MIB)], MAX_REQUEST, ALIGN).collect();

        assert_eq!(
            got,
            vec![
                Extent::new(512, 4 * MIB - 512),
                Extent::new(4 * MIB, 4 * MIB),
                Extent::new(8 * MIB, 2 * MIB + 512)
            ]
        );
    }

    #[test]
    fn requests_small_extents_stay_inside_their_extent() {
        let extents = [Extent::new(0, 4096), Extent::new(8192, 512)];

        let got: Vec<Extent> = requests(&extents, MAX_REQUEST, ALIGN).collect();

        assert_eq!(got, extents.to_vec());
    }

    #[test]
    fn holes_between_extents_cover_the_rest() {
        let got = holes(&[Extent::new(MIB, MIB), Extent::new(3 * MIB, MIB)], 5 * MIB);

        assert_eq!(
            got,
            vec![
                Extent::new(0, MIB),
                Extent::new(2 * MIB, MIB),
                Extent::new(4 * MIB, MIB)
            ]
        );
    }

    #[test]
    fn holes_of_large_gap_are_split() {
        let got = holes(&[], 3 * MAX_ZERO_REQUEST);

        assert_eq!(got.len(), 3);
    }

    #[test]
    fn segments_mixed_buffer_alternates_kinds() {
        let g = usize::try_from(ZERO_GRANULARITY).unwrap();
        let mut buf = vec![0u8; 4 * g];
        buf[g + 5] = 9;
        buf[2 * g] = 1;

        let got = segments(&buf, 0, ZERO_GRANULARITY);

        assert_eq!(
            got,
            vec![
                Segment::Zero {
                    offset: 0,
                    length: ZERO_GRANULARITY
                },
                Segment::Data {
                    offset: ZERO_GRANULARITY,
                    start: g,
                    end: 3 * g
                },
                Segment::Zero {
                    offset: 3 * ZERO_GRANULARITY,
                    length: ZERO_GRANULARITY
                },
            ]
        );
    }

    #[test]
    fn segments_unaligned_start_cuts_at_absolute_boundary() {
        let buf = vec![0u8; 1024];

        let got = segments(&buf, ZERO_GRANULARITY - 512, ZERO_GRANULARITY);

        assert_eq!(
            got,
            vec![Segment::Zero {
                offset: ZERO_GRANULARITY - 512,
                length: 1024
            }]
        );
    }

    proptest! {
        #[test]
        fn requests_cover_extents_exactly(
            raw in prop::collection::vec((0u64..64, 1u64..(12 * 1024)), 0..20)
        ) {
            let mut extents = Vec::new();
            let mut pos = 0u64;
            for (gap, len) in raw {
                let offset = pos + gap * 512;
                extents.push(Extent::new(offset, len * 1024));
                pos = offset + len * 1024;
            }

            let got: Vec<Extent> = requests(&extents, MAX_REQUEST, ALIGN).collect();

            prop_assert_eq!(merge_extents(got.clone()), merge_extents(extents.clone()));
            for r in &got {
                prop_assert!(r.length > 0 && r.length <= MAX_REQUEST);
                prop_assert!(extents.iter().any(|e| e.offset <= r.offset && r.end() <= e.end()));
            }
        }

        #[test]
        fn segments_reassemble_the_buffer(
            offset in 0u64..(1 << 20),
            data in prop::collection::vec(prop::sample::select(vec![0u8, 0, 0, 1]), 0..150_000)
        ) {
            let got = segments(&data, offset, ZERO_GRANULARITY);

            let mut rebuilt = Vec::new();
            for s in &got {
                match *s {
                    Segment::Data { offset: o, start, end } => {
                        prop_assert_eq!(o, offset + start as u64);
                        rebuilt.extend_from_slice(&data[start..end]);
                    }
                    Segment::Zero { offset: o, length } => {
                        prop_assert_eq!(o, offset + rebuilt.len() as u64);
                        rebuilt.extend(std::iter::repeat_n(0u8, usize::try_from(length).unwrap()));
                    }
                }
            }
            prop_assert!(rebuilt == data);
        }
    }

    #[test]
    fn widen_to_blocks_covers_touched_blocks_clamped_and_merged() {
        const B: u64 = 64 << 10;
        let extents = [
            Extent::new(512, 4096),
            Extent::new(B + 10, 1),
            Extent::new(5 * B, B),
            Extent::new(9 * B + 1, 3 * B),
        ];

        let got = widen_to_blocks(&extents, 10 * B + 512, B);

        assert_eq!(
            got,
            vec![
                Extent::new(0, 2 * B),
                Extent::new(5 * B, B),
                Extent::new(9 * B, B + 512)
            ]
        );
    }

    proptest! {
        #[test]
        fn widen_to_blocks_is_aligned_and_covers(
            raw in prop::collection::vec((0u64..(1 << 22), 1u64..(1 << 18)), 0..12),
            size in (1u64 << 22)..(1u64 << 23),
        ) {
            const B: u64 = 64 << 10;
            let extents: Vec<Extent> = raw
                .iter()
                .map(|&(o, l)| Extent::new(o, l.min(size - o)))
                .collect();

            let got = widen_to_blocks(&extents, size, B);

            for w in got.windows(2) {
                prop_assert!(w[0].end() < w[1].offset, "sorted, apart");
            }
            for g in &got {
                prop_assert!(g.length > 0);
                prop_assert_eq!(g.offset % B, 0);
                prop_assert!(g.end() % B == 0 || g.end() == size);
                prop_assert!(g.end() <= size);
            }
            for e in extents.iter().filter(|e| e.length > 0) {
                prop_assert!(got.iter().any(|g| g.offset <= e.offset && e.end() <= g.end()));
            }
            // Nothing beyond the touched blocks.
            let touched: u64 = (0..size.div_ceil(B))
                .filter(|b| extents.iter().any(|e| e.length > 0 && e.offset < (b + 1) * B && e.end() > b * B))
                .map(|b| ((b + 1) * B).min(size) - b * B)
                .sum();
            prop_assert_eq!(got.iter().map(|g| g.length).sum::<u64>(), touched);
        }
    }

    #[test]
    fn zero_granularity_follows_the_advertised_block_size_within_bounds() {
        assert_eq!(zero_granularity(None), ZERO_GRANULARITY);
        assert_eq!(zero_granularity(Some(4096)), 4096);
        assert_eq!(zero_granularity(Some(256 << 10)), 256 << 10);
        assert_eq!(zero_granularity(Some(1)), MIN_ZERO_GRANULARITY);
        assert_eq!(zero_granularity(Some(32 << 20)), ALIGN);
    }
}
