//! Hostile images: every bad input gets an error naming the problem, never a panic or hang.

use std::path::{Path, PathBuf};

use sendense_qcow2::raw::{RawHeader, U32, U64};
use sendense_qcow2::{CreateOptions, ErrorKind, Image, OpenOptions, Qcow2Error};
use tempfile::TempDir;

use crate::util::{pattern, qemu_img_ok};

const MIB: u64 = 1 << 20;

/// A valid 64 KiB-cluster image with data, as bytes: header 0, reftable 1, refblock 2, L1 3.
fn valid_image(dir: &Path) -> (PathBuf, Vec<u8>) {
    let p = tempfile::Builder::new()
        .suffix(".qcow2")
        .tempfile_in(dir)
        .unwrap()
        .into_temp_path()
        .keep()
        .unwrap();
    std::fs::remove_file(&p).unwrap();
    let img = Image::create(&p, &CreateOptions::new(4 * MIB)).unwrap();
    img.write_at(&pattern(1, 200_000), 0).unwrap();
    drop(img);
    let bytes = std::fs::read(&p).unwrap();
    (p, bytes)
}

fn patched(dir: &Path, name: &str, f: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let (_, mut bytes) = valid_image(dir);
    f(&mut bytes);
    let p = dir.join(name);
    std::fs::write(&p, &bytes).unwrap();
    p
}

/// Writes an L1/L2 table entry (not a header field: those go through [`RawHeader`]).
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

fn open_err(p: &Path) -> Qcow2Error {
    Image::open(p, &OpenOptions::read_only()).unwrap_err()
}

fn read_all(p: &Path) -> Result<(), Qcow2Error> {
    let img = Image::open(p, &OpenOptions::read_only())?;
    let mut buf = vec![0u8; img.virtual_size() as usize];
    img.read_at(&mut buf, 0)
}

fn l1_entry_offset(bytes: &[u8]) -> usize {
    RawHeader::read_from_image(bytes).l1_table_offset.get() as usize
}

#[test]
fn hostile_l1_table_beyond_eof_is_refused() {
    let dir = TempDir::new().unwrap();
    let p = patched(dir.path(), "h.qcow2", |b| {
        RawHeader::patch_image(b, |h| h.l1_table_offset = U64::new(1 << 40));
    });
    let e = open_err(&p);
    assert!(e.to_string().contains("l1_table_offset"), "{e}");
}

#[test]
fn hostile_absurd_l1_size_is_refused() {
    let dir = TempDir::new().unwrap();
    let p = patched(dir.path(), "h.qcow2", |b| {
        RawHeader::patch_image(b, |h| h.l1_size = U32::new(u32::MAX));
    });
    let e = open_err(&p);
    assert!(e.to_string().contains("l1_size"), "{e}");
}

#[test]
fn hostile_cluster_bits_out_of_range_is_refused() {
    let dir = TempDir::new().unwrap();
    for bits in [0u32, 8, 22, 63] {
        let p = patched(dir.path(), &format!("h{bits}.qcow2"), |b| {
            RawHeader::patch_image(b, |h| h.cluster_bits = U32::new(bits));
        });
        let e = open_err(&p);
        assert!(e.to_string().contains("cluster_bits"), "{e}");
    }
}

#[test]
fn hostile_refcount_order_out_of_range_is_refused() {
    let dir = TempDir::new().unwrap();
    let p = patched(dir.path(), "h.qcow2", |b| {
        RawHeader::patch_image(b, |h| h.refcount_order = U32::new(7));
    });
    assert!(open_err(&p).to_string().contains("refcount_order"));
}

#[test]
fn hostile_refcount_table_beyond_eof_is_refused() {
    let dir = TempDir::new().unwrap();
    let p = patched(dir.path(), "h.qcow2", |b| {
        RawHeader::patch_image(b, |h| h.refcount_table_offset = U64::new(1 << 40));
    });
    assert!(open_err(&p).to_string().contains("refcount_table_offset"));
}

#[test]
fn hostile_header_length_too_small_is_refused() {
    let dir = TempDir::new().unwrap();
    let p = patched(dir.path(), "h.qcow2", |b| {
        RawHeader::patch_image(b, |h| h.header_length = U32::new(72));
    });
    assert!(open_err(&p).to_string().contains("header_length"));
}

#[test]
fn hostile_truncated_header_is_refused() {
    let dir = TempDir::new().unwrap();
    let p = patched(dir.path(), "h.qcow2", |b| b.truncate(50));
    assert!(matches!(open_err(&p), Qcow2Error::Truncated { .. }));
}

#[test]
fn hostile_truncated_before_l1_is_refused() {
    let dir = TempDir::new().unwrap();
    let p = patched(dir.path(), "h.qcow2", |b| b.truncate(3 * 65536));
    assert!(open_err(&p).to_string().contains("l1_table_offset"));
}

#[test]
fn hostile_truncated_data_read_fails_corrupt() {
    let dir = TempDir::new().unwrap();
    let p = patched(dir.path(), "h.qcow2", |b| b.truncate(5 * 65536 + 100));
    let err = read_all(&p).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
}

#[test]
fn hostile_l2_table_beyond_eof_read_fails() {
    let dir = TempDir::new().unwrap();
    let p = patched(dir.path(), "h.qcow2", |b| {
        let at = l1_entry_offset(b);
        put_u64(b, at, (1 << 40) | (1 << 63));
    });
    let e = read_all(&p).unwrap_err();
    assert!(e.to_string().contains("L2 table beyond end of file"), "{e}");
}

#[test]
fn hostile_misaligned_l2_table_read_fails() {
    let dir = TempDir::new().unwrap();
    let p = patched(dir.path(), "h.qcow2", |b| {
        let at = l1_entry_offset(b);
        put_u64(b, at, 65536 + 512);
    });
    assert!(read_all(&p).unwrap_err().to_string().contains("misaligned"));
}

#[test]
fn hostile_data_cluster_beyond_eof_read_fails() {
    let dir = TempDir::new().unwrap();
    let p = patched(dir.path(), "h.qcow2", |b| {
        let l2 = (u64::from_be_bytes(b[l1_entry_offset(b)..][..8].try_into().unwrap())
            & 0x00ff_ffff_ffff_fe00) as usize;
        put_u64(b, l2, (1 << 63) | (1 << 45));
    });
    assert!(
        read_all(&p)
            .unwrap_err()
            .to_string()
            .contains("beyond end of file")
    );
}

#[test]
fn hostile_compressed_descriptor_beyond_eof_read_fails() {
    let dir = TempDir::new().unwrap();
    let p = patched(dir.path(), "h.qcow2", |b| {
        let l2 = (u64::from_be_bytes(b[l1_entry_offset(b)..][..8].try_into().unwrap())
            & 0x00ff_ffff_ffff_fe00) as usize;
        put_u64(b, l2, (1 << 62) | (1 << 40));
    });
    assert!(read_all(&p).unwrap_err().to_string().contains("compressed"));
}

#[test]
fn hostile_garbage_compressed_cluster_read_fails() {
    let dir = TempDir::new().unwrap();
    let p = patched(dir.path(), "h.qcow2", |b| {
        let l2 = (u64::from_be_bytes(b[l1_entry_offset(b)..][..8].try_into().unwrap())
            & 0x00ff_ffff_ffff_fe00) as usize;
        // Points at the header cluster: not deflate data.
        put_u64(b, l2, (1 << 62) | 16);
    });
    assert_eq!(read_all(&p).unwrap_err().kind(), ErrorKind::Corrupt);
}

#[test]
fn hostile_overlapping_metadata_is_reported_by_check() {
    let dir = TempDir::new().unwrap();
    let p = patched(dir.path(), "h.qcow2", |b| {
        let at = l1_entry_offset(b);
        // L2 table "is" the refcount table cluster.
        put_u64(b, at, 65536 | (1 << 63));
    });
    let r = sendense_qcow2::check_path(&p).unwrap();
    assert!(r.errors > 0, "{r:?}");
    assert!(r.messages.iter().any(|m| m.contains("overlaps")), "{r:?}");
}

#[test]
fn hostile_refcount_too_low_is_an_error_in_check() {
    let dir = TempDir::new().unwrap();
    // Refcount block is cluster 2; zero the refcount of the first data cluster (cluster 5).
    let p = patched(dir.path(), "h.qcow2", |b| {
        b[2 * 65536 + 10..2 * 65536 + 12].fill(0);
    });
    let r = sendense_qcow2::check_path(&p).unwrap();
    assert!(r.errors > 0, "{r:?}");
}

#[test]
fn hostile_refcount_too_high_is_a_leak_in_check() {
    let dir = TempDir::new().unwrap();
    let p = patched(dir.path(), "h.qcow2", |b| {
        b[2 * 65536 + 10..2 * 65536 + 12].copy_from_slice(&2u16.to_be_bytes());
    });
    let r = sendense_qcow2::check_path(&p).unwrap();
    assert!(r.leaks > 0, "{r:?}");
}

#[test]
fn hostile_unknown_incompatible_feature_is_refused_by_name() {
    let dir = TempDir::new().unwrap();
    let p = patched(dir.path(), "h.qcow2", |b| {
        RawHeader::patch_image(b, |h| h.incompatible_features = U64::new(1 << 20));
    });
    let e = open_err(&p);
    assert!(matches!(e, Qcow2Error::UnsupportedFeature { .. }), "{e}");
    assert!(e.to_string().contains("bit 20"), "{e}");
}

#[test]
fn hostile_external_data_file_is_refused() {
    let dir = TempDir::new().unwrap();
    let p = patched(dir.path(), "h.qcow2", |b| {
        RawHeader::patch_image(b, |h| h.incompatible_features = U64::new(1 << 2));
    });
    assert!(open_err(&p).to_string().contains("external data file"));
}

#[test]
fn hostile_encryption_is_refused() {
    let dir = TempDir::new().unwrap();
    let p = patched(dir.path(), "h.qcow2", |b| {
        RawHeader::patch_image(b, |h| h.crypt_method = U32::new(1));
    });
    assert!(open_err(&p).to_string().contains("encryption"));
}

#[test]
fn qemu_zstd_image_is_refused() {
    let dir = TempDir::new().unwrap();
    let p = dir.path().join("z.qcow2");
    qemu_img_ok(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        "compression_type=zstd",
        p.to_str().unwrap(),
        "1M",
    ]);
    assert!(open_err(&p).to_string().contains("zstd"));
}

#[test]
fn hostile_dirty_image_opens_read_only_without_writing() {
    let dir = TempDir::new().unwrap();
    let p = patched(dir.path(), "h.qcow2", |b| {
        RawHeader::patch_image(b, |h| h.incompatible_features = U64::new(1));
    });
    let before = std::fs::read(&p).unwrap();
    read_all(&p).unwrap();
    let e = Image::open(&p, &OpenOptions::writable()).unwrap_err();
    assert!(e.to_string().contains("dirty"), "{e}");
    assert!(
        std::fs::read(&p).unwrap() == before,
        "read-only open modified the file"
    );
}

#[test]
fn read_only_open_never_writes() {
    let dir = TempDir::new().unwrap();
    let (p, before) = valid_image(dir.path());
    let img = Image::open(&p, &OpenOptions::read_only()).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    img.read_at(&mut buf, 0).unwrap();
    img.flush().unwrap();
    let _ = img.check().unwrap();
    assert!(img.write_at(&buf[..10], 0).is_err());
    drop(img);
    assert!(std::fs::read(&p).unwrap() == before);
}

#[test]
fn hostile_backing_self_loop_is_refused() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    // Build a -> b -> a by writing headers with equal-length names.
    let b_path = d.join("b.qcow2");
    Image::create(&b_path, &CreateOptions::new(MIB)).unwrap();
    let a_path = d.join("a.qcow2");
    Image::create(
        &a_path,
        &CreateOptions::new(MIB).backing(sendense_qcow2::BackingSpec::qcow2("b.qcow2")),
    )
    .unwrap();
    let a_bytes = std::fs::read(&a_path).unwrap();
    let pos = a_bytes.windows(7).position(|w| w == b"b.qcow2").unwrap();
    let mut b_bytes = a_bytes;
    b_bytes[pos] = b'a';
    std::fs::write(&b_path, &b_bytes).unwrap();
    let e = open_err(&a_path);
    assert!(matches!(e, Qcow2Error::BackingLoop { .. }), "{e}");
}

#[test]
fn hostile_thousand_deep_chain_is_refused() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let last = d.join("l1000.qcow2");
    let opts = CreateOptions::new(65536).cluster_size(512);
    Image::create(&last, &opts).unwrap();
    let tmpl_path = d.join("tmpl.qcow2");
    Image::create(
        &tmpl_path,
        &opts.backing(sendense_qcow2::BackingSpec::qcow2("l1000.qcow2")),
    )
    .unwrap();
    let tmpl = std::fs::read(&tmpl_path).unwrap();
    let pos = tmpl.windows(11).position(|w| w == b"l1000.qcow2").unwrap();
    for i in 0..1000 {
        let mut b = tmpl.clone();
        b[pos..pos + 11].copy_from_slice(format!("l{:04}.qcow2", i + 1).as_bytes());
        std::fs::write(d.join(format!("l{i:04}.qcow2")), &b).unwrap();
    }
    let e = open_err(&d.join("l0000.qcow2"));
    assert!(
        matches!(e, Qcow2Error::ChainTooDeep { max_depth: 32 }),
        "{e}"
    );
    let deep = OpenOptions::read_only().max_chain_depth(10_000);
    let e = Image::open(&d.join("l0000.qcow2"), &deep).unwrap_err();
    assert!(matches!(e, Qcow2Error::ChainTooDeep { .. }), "{e}");
}

#[test]
fn hostile_missing_backing_file_is_not_found() {
    let dir = TempDir::new().unwrap();
    let p = dir.path().join("a.qcow2");
    qemu_img_ok(&[
        "create",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "gone.qcow2",
        "-F",
        "qcow2",
        p.to_str().unwrap(),
        "1M",
    ]);
    assert_eq!(open_err(&p).kind(), ErrorKind::NotFound);
}

#[test]
fn request_beyond_virtual_size_is_out_of_range() {
    let dir = TempDir::new().unwrap();
    let (p, _) = valid_image(dir.path());
    let img = Image::open(&p, &OpenOptions::writable()).unwrap();
    let mut buf = [0u8; 10];
    assert_eq!(
        img.read_at(&mut buf, 4 * MIB - 5).unwrap_err().kind(),
        ErrorKind::OutOfRange
    );
    assert_eq!(
        img.write_at(&buf, u64::MAX - 2).unwrap_err().kind(),
        ErrorKind::OutOfRange
    );
    assert_eq!(
        img.block_status(0, 4 * MIB + 1).unwrap_err().kind(),
        ErrorKind::OutOfRange
    );
}

#[test]
fn create_existing_file_is_refused() {
    let dir = TempDir::new().unwrap();
    let (p, _) = valid_image(dir.path());
    let e = Image::create(&p, &CreateOptions::new(MIB)).unwrap_err();
    assert!(matches!(e, Qcow2Error::AlreadyExists { .. }));
}

#[test]
fn create_bad_cluster_size_is_refused() {
    let dir = TempDir::new().unwrap();
    for cs in [256u32, 4 << 20, 65535] {
        let e = Image::create(
            &dir.path().join("x.qcow2"),
            &CreateOptions::new(MIB).cluster_size(cs),
        )
        .unwrap_err();
        assert!(matches!(e, Qcow2Error::InvalidOptions { .. }), "{e}");
    }
}

fn exercise(bytes: Vec<u8>) {
    let storage = Box::new(sendense_qcow2::MemStorage::new(bytes));
    let Ok(img) = Image::open_storage(storage, &OpenOptions::read_only()) else {
        return;
    };
    let size = img.virtual_size();
    let mut buf = vec![0u8; 65536];
    for start in [0, size / 2, size.saturating_sub(1000)] {
        let len = (buf.len() as u64).min(size.saturating_sub(start)) as usize;
        let _ = img.read_at(&mut buf[..len], start);
    }
    let _ = img.block_status(0, size.min(1 << 30));
    let _ = img.check();
}

fn seed_image(cs: u32, ext: bool) -> Vec<u8> {
    let dir = TempDir::new().unwrap();
    let p = dir.path().join("s.qcow2");
    let img = Image::create(
        &p,
        &CreateOptions::new(2 * MIB)
            .cluster_size(cs)
            .extended_l2(ext),
    )
    .unwrap();
    img.write_at(&pattern(9, 300_000), 1234).unwrap();
    img.write_zeroes(MIB, 70_000).unwrap();
    drop(img);
    std::fs::read(&p).unwrap()
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 500, ..Default::default() })]

    #[test]
    fn mutated_images_never_panic(
        which in 0usize..3,
        flips in proptest::collection::vec((0usize..6 * 65536, proptest::prelude::any::<u8>()), 1..12),
        cut in proptest::option::of(0usize..8 * 65536),
    ) {
        let cs = [65536u32, 16384, 512][which];
        static SEEDS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
        let seeds = SEEDS.get_or_init(|| {
            [(65536, false), (16384, true), (512, false)].iter().map(|&(c, e)| seed_image(c, e)).collect()
        });
        let mut bytes = seeds[which].clone();
        let meta_len = bytes.len().min(if cs == 512 { 8192 } else { 6 * cs as usize });
        for (at, v) in flips {
            let i = at % meta_len;
            bytes[i] ^= v;
        }
        if let Some(c) = cut {
            bytes.truncate(c.min(bytes.len()));
        }
        exercise(bytes);
    }
}
