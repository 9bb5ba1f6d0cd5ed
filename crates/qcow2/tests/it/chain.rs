//! Backing chains: info, block status through the chain, relative names.

use sendense_qcow2::{BackingInfo, BackingSpec, CreateOptions, ExtentState, Image, OpenOptions};
use tempfile::TempDir;

use crate::util::pattern;

const MIB: u64 = 1 << 20;

#[test]
fn info_reports_whole_chain() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    std::fs::write(d.join("base.raw"), pattern(1, MIB as usize)).unwrap();
    Image::create(
        &d.join("mid.qcow2"),
        &CreateOptions::new(2 * MIB).backing(BackingSpec::raw("base.raw")),
    )
    .unwrap();
    let top = Image::create(
        &d.join("top.qcow2"),
        &CreateOptions::new(2 * MIB).backing(BackingSpec::qcow2("mid.qcow2")),
    )
    .unwrap();
    let info = top.info();
    assert_eq!(info.version, 3);
    assert_eq!(info.refcount_bits, 16);
    assert_eq!(info.backing_file.as_deref(), Some("mid.qcow2"));
    let Some(b) = info.backing.as_deref() else {
        panic!("no backing info")
    };
    let BackingInfo::Qcow2(mid) = b else {
        panic!("mid is not qcow2")
    };
    assert!(matches!(mid.backing.as_deref(), Some(BackingInfo::Raw { size, .. }) if *size == MIB));
}

#[test]
fn block_and_chain_status_resolve_through_chain() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let base = Image::create(&d.join("base.qcow2"), &CreateOptions::new(4 * MIB)).unwrap();
    base.write_at(&pattern(1, MIB as usize), 0).unwrap();
    drop(base);
    let top = Image::create(
        &d.join("top.qcow2"),
        &CreateOptions::new(4 * MIB).backing(BackingSpec::qcow2("base.qcow2")),
    )
    .unwrap();
    top.write_at(&pattern(2, 65536), 2 * MIB).unwrap();
    top.write_zeroes(0, 65536).unwrap();
    let st = top.block_status(0, 4 * MIB).unwrap();
    assert_eq!(st[0].state, ExtentState::Zero);
    assert_eq!(st[1].state, ExtentState::Unallocated);
    let chain = top.chain_status(0, 4 * MIB).unwrap();
    let expect = [
        (0, 65536, ExtentState::Zero),
        (65536, MIB - 65536, ExtentState::Data),
        (MIB, MIB, ExtentState::Zero),
        (2 * MIB, 65536, ExtentState::Data),
        (2 * MIB + 65536, 2 * MIB - 65536, ExtentState::Zero),
    ];
    let got: Vec<_> = chain
        .iter()
        .map(|e| (e.offset, e.length, e.state))
        .collect();
    assert_eq!(got, expect);
}

#[test]
fn shorter_backing_reads_zeros_beyond_its_end() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let base = Image::create(&d.join("base.qcow2"), &CreateOptions::new(MIB)).unwrap();
    base.write_at(&vec![0xff; MIB as usize], 0).unwrap();
    drop(base);
    let top = Image::create(
        &d.join("top.qcow2"),
        &CreateOptions::new(2 * MIB).backing(BackingSpec::qcow2("base.qcow2")),
    )
    .unwrap();
    top.write_at(&[1u8; 100], MIB - 50).unwrap();
    let mut buf = vec![7u8; 200];
    top.read_at(&mut buf, MIB - 100).unwrap();
    assert!(buf[..50].iter().all(|&b| b == 0xff));
    assert!(buf[50..150].iter().all(|&b| b == 1));
    assert!(buf[150..].iter().all(|&b| b == 0));
}

#[test]
fn discard_in_overlay_does_not_expose_backing() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let base = Image::create(&d.join("base.qcow2"), &CreateOptions::new(MIB)).unwrap();
    base.write_at(&vec![0xff; MIB as usize], 0).unwrap();
    drop(base);
    let top = Image::create(
        &d.join("top.qcow2"),
        &CreateOptions::new(MIB).backing(BackingSpec::qcow2("base.qcow2")),
    )
    .unwrap();
    top.write_at(&vec![1u8; 65536], 0).unwrap();
    top.discard(0, 2 * 65536).unwrap();
    let mut buf = vec![7u8; 2 * 65536];
    top.read_at(&mut buf, 0).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
}

#[test]
fn standalone_zeroes_allocate_nothing() {
    let dir = TempDir::new().unwrap();
    let p = dir.path().join("a.qcow2");
    let img = Image::create(&p, &CreateOptions::new(4 * MIB)).unwrap();
    let before = img.info().file_length;
    img.write_zeroes(1000, 3 * MIB).unwrap();
    img.flush().unwrap();
    assert_eq!(img.info().file_length, before);
    assert_eq!(img.block_status(0, 4 * MIB).unwrap().len(), 1);
}

#[test]
fn sequential_whole_cluster_writes_are_contiguous() {
    let dir = TempDir::new().unwrap();
    let p = dir.path().join("a.qcow2");
    let img = Image::create(&p, &CreateOptions::new(8 * MIB)).unwrap();
    for i in 0..8 {
        img.write_at(&pattern(i, MIB as usize), i * MIB).unwrap();
    }
    img.flush().unwrap();
    let r = img.check().unwrap();
    assert!(r.is_clean());
    assert_eq!(r.allocated_clusters, 128);
    drop(img);
    // header + reftable + refblock + L1 + one L2 + 8 MiB of data, nothing else (space
    // preallocated for direct writes is cut off at close).
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 5 * 65536 + 8 * MIB);
}

#[test]
fn reopened_image_reads_same() {
    let dir = TempDir::new().unwrap();
    let p = dir.path().join("a.qcow2");
    let img = Image::create(&p, &CreateOptions::new(2 * MIB)).unwrap();
    let data = pattern(3, 123_456);
    img.write_at(&data, 77).unwrap();
    drop(img);
    let img = Image::open(&p, &OpenOptions::read_only()).unwrap();
    let mut buf = vec![0u8; data.len()];
    img.read_at(&mut buf, 77).unwrap();
    assert!(buf == data);
}

#[test]
fn discarded_clusters_give_space_back_after_flush() {
    use std::os::unix::fs::MetadataExt;
    let dir = TempDir::new().unwrap();
    let p = dir.path().join("a.qcow2");
    let img = Image::create(&p, &CreateOptions::new(8 * MIB)).unwrap();
    img.write_at(&pattern(1, (8 * MIB) as usize), 0).unwrap();
    img.flush().unwrap();
    let before = std::fs::metadata(&p).unwrap().blocks();
    img.discard(0, 8 * MIB).unwrap();
    img.flush().unwrap();
    let after = std::fs::metadata(&p).unwrap().blocks();
    // 8 MiB is 16384 blocks of 512 bytes (preallocated space may stay while open).
    assert!(
        before.saturating_sub(after) >= 16384 * 3 / 4,
        "blocks before {before}, after {after}"
    );
    let r = img.check().unwrap();
    assert!(r.is_clean(), "{r:?}");
    drop(img);
    crate::util::assert_qemu_check_clean(&p);
}

#[test]
fn read_at_now_answers_cached_backing_data_and_zeros_but_not_writable_layer_data() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let base = Image::create(&d.join("base.qcow2"), &CreateOptions::new(4 * MIB)).unwrap();
    let data = pattern(3, MIB as usize);
    base.write_at(&data, 0).unwrap();
    drop(base);
    let top = Image::create(
        &d.join("top.qcow2"),
        &CreateOptions::new(4 * MIB).backing(BackingSpec::qcow2("base.qcow2")),
    )
    .unwrap();
    top.write_at(&pattern(4, 65536), 2 * MIB).unwrap();
    top.write_zeroes(3 * MIB, 65536).unwrap();
    let mut first = vec![0u8; 4096];
    top.read_at(&mut first, 8192).unwrap();

    // The backing file is read-only: read once, its bytes are in the page cache.
    let mut now = vec![1u8; 4096];
    let backing = top.read_at_now(&mut now, 8192).unwrap();
    let mut zeros = vec![1u8; 4096];
    let zero = top.read_at_now(&mut zeros, 3 * MIB).unwrap();
    // The writable layer's own data is never read "now" (it may bypass the cache).
    let own = top.read_at_now(&mut vec![0u8; 4096], 2 * MIB).unwrap();
    // Nor is a read of a cluster or more.
    let large = top.read_at_now(&mut vec![0u8; 65536], 0).unwrap();

    assert!(backing);
    assert_eq!(now, first);
    assert_eq!(now, &data[8192..12288]);
    assert!(zero);
    assert!(zeros.iter().all(|b| *b == 0));
    assert!(!own);
    assert!(!large);
}
