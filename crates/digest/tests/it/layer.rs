//! Layers against a per-block model, composition, merges, and the file format.

#![allow(clippy::cast_possible_truncation)] // small test sizes

use std::collections::BTreeMap;

use proptest::prelude::*;
use sendense_digest::{
    BLOCK_SIZE, BlockDigest, DigestError, LayerDigests, PointDigests, block_count, digest,
    max_encoded_len,
};

const BS: usize = BLOCK_SIZE as usize;

/// A block of bytes that are zero when `seed` is 0.
fn block(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| if seed == 0 { 0 } else { seed ^ (i as u8) })
        .collect()
}

/// One recording operation: blocks `[first, first + n)` get `seed`s (0 = zeros), or a zero
/// range.
#[derive(Debug, Clone)]
enum Op {
    Record { first: u64, seeds: Vec<u8> },
    Zero { first: u64, blocks: u64 },
}

fn ops(blocks: u64) -> impl Strategy<Value = Vec<Op>> {
    let one = prop_oneof![
        (0..blocks, proptest::collection::vec(0u8..4, 1..6))
            .prop_map(|(first, seeds)| { Op::Record { first, seeds } }),
        (0..blocks, 1..8u64).prop_map(|(first, n)| Op::Zero { first, blocks: n }),
    ];
    proptest::collection::vec(one, 0..12)
}

/// Applies `ops` to a layer of a disk of `size` bytes and to a per-block model.
fn apply(size: u64, ops: &[Op]) -> (LayerDigests, BTreeMap<u64, BlockDigest>) {
    let blocks = block_count(size);
    let mut layer = LayerDigests::new(size);
    let mut model = BTreeMap::new();
    for op in ops {
        match op {
            Op::Record { first, seeds } => {
                let n = (seeds.len() as u64).min(blocks - first);
                let mut bytes = Vec::new();
                for (i, seed) in seeds.iter().take(n as usize).enumerate() {
                    let b = first + i as u64;
                    let len = (size - b * BLOCK_SIZE).min(BLOCK_SIZE) as usize;
                    let data = block(*seed, len);
                    model.insert(b, BlockDigest::of(&data));
                    bytes.extend(data);
                }
                layer.record(first * BLOCK_SIZE, &bytes).unwrap();
            }
            Op::Zero { first, blocks: n } => {
                let n = (*n).min(blocks - first);
                let end = ((first + n) * BLOCK_SIZE).min(size);
                layer
                    .record_zero(first * BLOCK_SIZE, end - first * BLOCK_SIZE)
                    .unwrap();
                for b in *first..first + n {
                    model.insert(b, BlockDigest::Zero);
                }
            }
        }
    }
    (layer, model)
}

fn check_against(layer: &LayerDigests, model: &BTreeMap<u64, BlockDigest>) {
    let blocks = block_count(layer.disk_size());
    for b in 0..blocks + 2 {
        assert_eq!(layer.get(b), model.get(&b).copied(), "block {b}");
    }
    assert_eq!(layer.blocks(), model.len() as u64);
    // Runs are ordered, disjoint and joined.
    let mut prev_end = None;
    for (start, run) in layer.runs() {
        assert!(!run.is_empty());
        if let Some(e) = prev_end {
            assert!(start >= e);
        }
        prev_end = Some(start + run.len());
    }
}

proptest! {
    #[test]
    fn layer_matches_a_per_block_model(extra in 0u64..BLOCK_SIZE, ops in ops(20)) {
        let size = 19 * BLOCK_SIZE + extra.max(1);
        let (layer, model) = apply(size, &ops);
        check_against(&layer, &model);
        let decoded = LayerDigests::decode(&layer.encode()).unwrap();
        check_against(&decoded, &model);
        prop_assert!(layer.encode().len() as u64 <= max_encoded_len(size));
    }

    #[test]
    fn overlay_and_underlay_match_the_model(older in ops(16), newer in ops(16)) {
        let size = 16 * BLOCK_SIZE;
        let (old_layer, old_model) = apply(size, &older);
        let (new_layer, new_model) = apply(size, &newer);
        let mut merged_model = old_model;
        merged_model.extend(new_model.iter().map(|(k, v)| (*k, *v)));

        let mut base = old_layer.clone();
        base.overlay(&new_layer).unwrap();
        check_against(&base, &merged_model);

        let mut child = new_layer.clone();
        child.underlay(&old_layer).unwrap();
        check_against(&child, &merged_model);
    }

    #[test]
    fn decode_of_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = LayerDigests::decode(&bytes);
    }

    #[test]
    fn decode_refuses_any_flipped_bit(ops in ops(8), bit in 0usize..4096) {
        let (layer, _) = apply(8 * BLOCK_SIZE, &ops);
        let mut bytes = layer.encode();
        let bit = bit % (bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(LayerDigests::decode(&bytes).is_err());
    }
}

#[test]
fn unaligned_and_out_of_range_records_are_refused() {
    let mut layer = LayerDigests::new(3 * BLOCK_SIZE + 512);
    assert!(matches!(
        layer.record(512, &[1u8; BS]),
        Err(DigestError::Unaligned { .. })
    ));
    assert!(matches!(
        layer.record(0, &[1u8; BS + 1]),
        Err(DigestError::Unaligned { .. })
    ));
    assert!(matches!(
        layer.record(3 * BLOCK_SIZE, &[1u8; BS]),
        Err(DigestError::OutOfRange { .. })
    ));
    // The short last block is a whole block.
    layer.record(3 * BLOCK_SIZE, &[1u8; 512]).unwrap();
    assert_eq!(layer.get(3), Some(BlockDigest::Data(digest(&[1u8; 512]))));
    assert_eq!(layer.blocks(), 1);
}

#[test]
fn zero_blocks_record_as_zero_runs() {
    let mut layer = LayerDigests::new(4 * BLOCK_SIZE);
    let mut bytes = vec![0u8; 4 * BS];
    bytes[BS + 7] = 9;
    layer.record(0, &bytes).unwrap();
    assert_eq!(layer.get(0), Some(BlockDigest::Zero));
    assert_eq!(
        layer.get(1),
        Some(BlockDigest::Data(digest(&bytes[BS..2 * BS])))
    );
    assert_eq!(layer.get(3), Some(BlockDigest::Zero));
    assert_eq!(layer.runs().count(), 3);
}

#[test]
fn a_point_reads_the_newest_layer_and_zeros_elsewhere() {
    let size = 4 * BLOCK_SIZE;
    let mut full = LayerDigests::new(size);
    full.record(0, &block(1, 2 * BS)).unwrap();
    let mut incr = LayerDigests::new(size);
    incr.record_zero(BLOCK_SIZE, BLOCK_SIZE).unwrap();
    incr.record(2 * BLOCK_SIZE, &block(2, BS)).unwrap();
    let layers = [full, incr];
    let point = PointDigests::new(&layers);
    assert_eq!(point.block_count(), 4);
    assert_eq!(point.expected(0).1, Some(0));
    assert_eq!(point.expected(1), (BlockDigest::Zero, Some(1)));
    assert_eq!(point.expected(2).1, Some(1));
    assert_eq!(point.expected(3), (BlockDigest::Zero, None));
    let older = PointDigests::new(&layers[..1]);
    assert!(matches!(older.expected(1), (BlockDigest::Data(_), Some(0))));
}

#[test]
fn layers_of_different_sizes_do_not_merge() {
    let mut a = LayerDigests::new(BLOCK_SIZE);
    let b = LayerDigests::new(2 * BLOCK_SIZE);
    assert!(matches!(
        a.overlay(&b),
        Err(DigestError::SizeMismatch { .. })
    ));
    assert!(matches!(
        a.underlay(&b),
        Err(DigestError::SizeMismatch { .. })
    ));
}
