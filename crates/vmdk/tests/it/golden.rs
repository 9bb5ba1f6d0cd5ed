//! Every subformat `qemu-img` writes, read back and compared with
//! `qemu-img convert -O raw` of the same VMDK (the truth).

use std::path::Path;

use sendense_vmdk::VmdkImage;

use crate::support::{
    covered, pseudo_random, raw_data_runs, raw_to_vmdk, read_file, read_image, vmdk_to_raw,
    write_raw,
};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// 5 MiB + 3 sectors: not a multiple of the 64 KiB grain.
fn small_regions() -> (u64, Vec<(u64, Vec<u8>)>) {
    let size = 5 * MIB + 3 * 512;
    let regions = vec![
        (0, pseudo_random(1, 4096)),
        (100_000, pseudo_random(2, 70_000)),
        (MIB + 512, vec![0; 200_000]),
        (2 * MIB - 1000, pseudo_random(3, 3000)),
        (3 * MIB, pseudo_random(4, 256 * 1024)),
        (size - 1000, pseudo_random(5, 1000)),
    ];
    (size, regions)
}

/// 8 GiB holding a few hundred KiB.
fn large_regions() -> (u64, Vec<(u64, Vec<u8>)>) {
    let size = 8 * GIB;
    let regions = vec![
        (512, pseudo_random(6, 10_000)),
        (GIB + 12_345, pseudo_random(7, 100_000)),
        (2 * GIB - 4096, pseudo_random(8, 8192)),
        (3 * GIB, vec![0; 128 * 1024]),
        (5 * GIB + 777, pseudo_random(9, 64 * 1024)),
        (size - 100 * 1024, pseudo_random(10, 100 * 1024)),
    ];
    (size, regions)
}

/// Small disk: whole-disk read in chunks equals the truth; every non-zero
/// sector is inside an allocated run.
fn check_small(subformat: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (size, regions) = small_regions();
    let src = dir.path().join("src.raw");
    write_raw(&src, size, &regions);
    let vmdk = dir.path().join("disk.vmdk");
    raw_to_vmdk(&src, &vmdk, subformat);
    let truth_path = vmdk_to_raw(&vmdk, dir.path());
    let truth = std::fs::read(&truth_path).unwrap();

    let img = VmdkImage::open(&vmdk).unwrap();

    assert_eq!(img.create_type(), subformat);
    assert_eq!(img.size(), truth.len() as u64);
    let mut ours = Vec::with_capacity(truth.len());
    let mut off = 0u64;
    while off < img.size() {
        let n = (img.size() - off).min(MIB - 7 * 512);
        ours.extend_from_slice(&read_image(&img, off, usize::try_from(n).unwrap()));
        off += n;
    }
    assert!(ours == truth, "{subformat}: content differs from qemu-img");
    let runs = img.allocated_extents().unwrap();
    for (i, sector) in truth.chunks(512).enumerate() {
        if sector.iter().any(|&b| b != 0) {
            let at = i as u64 * 512;
            assert!(
                covered(&runs, at, sector.len() as u64),
                "{subformat}: sector {i} not covered"
            );
        }
    }
}

/// Large, nearly empty disk: allocated runs drive the comparison; non-zero
/// truth data lies inside them; samples elsewhere read as the truth.
fn check_large(subformat: &str, max_allocated: u64) {
    let dir = tempfile::tempdir().unwrap();
    let (size, regions) = large_regions();
    let src = dir.path().join("src.raw");
    write_raw(&src, size, &regions);
    let vmdk = dir.path().join("big.vmdk");
    raw_to_vmdk(&src, &vmdk, subformat);
    let truth = vmdk_to_raw(&vmdk, dir.path());

    let img = VmdkImage::open(&vmdk).unwrap();
    let runs = img.allocated_extents().unwrap();

    assert_eq!(img.size(), std::fs::metadata(&truth).unwrap().len());
    let min_extents = if subformat.starts_with("twoGb") { 4 } else { 1 };
    assert!(
        img.descriptor().extents.len() >= min_extents,
        "{subformat}: extent count"
    );
    let total: u64 = runs.iter().map(|r| r.length).sum();
    assert!(
        total <= max_allocated,
        "{subformat}: {total} bytes allocated"
    );
    for r in &runs {
        compare_range(&img, &truth, r.offset, r.length);
    }
    for (off, len) in raw_data_runs(&truth) {
        let data = read_file(&truth, off, usize::try_from(len).unwrap());
        for (i, sector) in data.chunks(512).enumerate() {
            if sector.iter().any(|&b| b != 0) {
                let at = off + i as u64 * 512;
                assert!(
                    covered(&runs, at, sector.len() as u64),
                    "{subformat}: {at} not covered"
                );
            }
        }
    }
    for k in 0..64u64 {
        let off = (k * 0x0789_ABCD_EF13 % (size / 4096)) * 4096;
        compare_range(&img, &truth, off, 4096);
    }
    compare_range(&img, &truth, size - 5000, 5000);
}

fn compare_range(img: &VmdkImage, truth: &Path, off: u64, len: u64) {
    let mut pos = off;
    while pos < off + len {
        let n = usize::try_from((off + len - pos).min(MIB)).unwrap();
        assert!(
            read_image(img, pos, n) == read_file(truth, pos, n),
            "differs at {pos}"
        );
        pos += n as u64;
    }
}

#[test]
fn golden_monolithic_sparse_small_matches_qemu() {
    check_small("monolithicSparse");
}

#[test]
fn golden_monolithic_flat_small_matches_qemu() {
    check_small("monolithicFlat");
}

#[test]
fn golden_two_gb_sparse_small_matches_qemu() {
    check_small("twoGbMaxExtentSparse");
}

#[test]
fn golden_two_gb_flat_small_matches_qemu() {
    check_small("twoGbMaxExtentFlat");
}

#[test]
fn golden_stream_optimized_small_matches_qemu() {
    check_small("streamOptimized");
}

#[test]
fn golden_monolithic_sparse_8gib_allocated_runs_match_qemu() {
    check_large("monolithicSparse", 4 * MIB);
}

#[test]
fn golden_monolithic_flat_8gib_allocated_runs_match_qemu() {
    check_large("monolithicFlat", 16 * MIB);
}

#[test]
fn golden_two_gb_sparse_8gib_allocated_runs_match_qemu() {
    check_large("twoGbMaxExtentSparse", 4 * MIB);
}

#[test]
fn golden_two_gb_flat_8gib_allocated_runs_match_qemu() {
    check_large("twoGbMaxExtentFlat", 16 * MIB);
}

#[test]
fn golden_stream_optimized_8gib_allocated_runs_match_qemu() {
    check_large("streamOptimized", 4 * MIB);
}
