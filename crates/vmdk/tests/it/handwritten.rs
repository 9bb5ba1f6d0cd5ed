//! Hand-written descriptors: vmfs, several mixed extents, open policy,
//! hostile files, concurrency.

use std::path::Path;

use sendense_vmdk::{ExtentPathPolicy, OpenOptions, VmdkError, VmdkErrorKind, VmdkImage};

use crate::support::{pseudo_random, raw_to_vmdk, read_image, write_raw};

fn write_descriptor(dir: &Path, create_type: &str, extent_lines: &[&str]) -> std::path::PathBuf {
    let mut text = format!(
        "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"{create_type}\"\n\n# Extent description\n"
    );
    for line in extent_lines {
        text.push_str(line);
        text.push('\n');
    }
    text.push_str("\n# The Disk Data Base\n#DDB\n\nddb.adapterType = \"lsilogic\"\n");
    let path = dir.join("disk.vmdk");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn vmfs_descriptor_over_flat_file_reads_file_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let data = pseudo_random(11, 1 << 20);
    std::fs::write(dir.path().join("x-flat.vmdk"), &data).unwrap();
    let path = write_descriptor(dir.path(), "vmfs", &["RW 2048 VMFS \"x-flat.vmdk\""]);

    let img = VmdkImage::open(&path).unwrap();

    assert_eq!(img.create_type(), "vmfs");
    assert_eq!(img.size(), 1 << 20);
    assert!(read_image(&img, 0, 1 << 20) == data);
    assert_eq!(img.descriptor().ddb[0].value, "lsilogic");
}

#[test]
fn mixed_flat_sparse_zero_extents_concatenate_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Flat A: 100 sectors from sector 0; flat B: 50 sectors from sector 8.
    let a = pseudo_random(21, 100 * 512);
    std::fs::write(d.join("a.raw"), &a).unwrap();
    let b = pseudo_random(22, 60 * 512);
    std::fs::write(d.join("b.raw"), &b).unwrap();
    // Sparse S1: 1 MiB + 3 sectors (not a grain multiple), data in the middle.
    let s1_size = (1 << 20) + 3 * 512;
    let s1_data = pseudo_random(23, 70_000);
    write_raw(&d.join("s1.src"), s1_size, &[(200_000, s1_data.clone())]);
    raw_to_vmdk(&d.join("s1.src"), &d.join("s1.vmdk"), "monolithicSparse");
    // Sparse S2 (stream-optimized), used for only its first 1000 sectors.
    let s2_data = pseudo_random(24, 5000);
    write_raw(&d.join("s2.src"), 1 << 20, &[(100, s2_data.clone())]);
    raw_to_vmdk(&d.join("s2.src"), &d.join("s2.vmdk"), "streamOptimized");
    let path = write_descriptor(
        d,
        "twoGbMaxExtentSparse",
        &[
            "RW 100 FLAT \"a.raw\" 0",
            "RW 2051 SPARSE \"s1.vmdk\"",
            "RW 300 ZERO",
            "RDONLY 50 FLAT \"b.raw\" 8",
            "RW 1000 SPARSE \"s2.vmdk\"",
        ],
    );
    let mut expected = a;
    let mut s1 = vec![0u8; usize::try_from(s1_size).unwrap()];
    s1[200_000..270_000].copy_from_slice(&s1_data);
    expected.extend_from_slice(&s1);
    expected.extend_from_slice(&vec![0; 300 * 512]);
    expected.extend_from_slice(&b[8 * 512..58 * 512]);
    let mut s2 = vec![0u8; 1000 * 512];
    s2[100..5100].copy_from_slice(&s2_data);
    expected.extend_from_slice(&s2);

    let img = VmdkImage::open(&path).unwrap();
    let runs = img.allocated_extents().unwrap();

    assert_eq!(img.size(), expected.len() as u64);
    assert!(read_image(&img, 0, expected.len()) == expected);
    // Reads that straddle extent boundaries.
    for off in [
        100 * 512 - 7,
        (100 + 2051) * 512 - 3,
        (2451 + 50) * 512 - 1000,
    ] {
        let got = read_image(&img, off as u64, 3000);
        assert!(got == expected[off..off + 3000], "boundary read at {off}");
    }
    // Flat A first, then S1's data grains; the ZERO extent is never listed.
    assert_eq!(runs[0].offset, 0);
    let zero = ((100 + 2051) * 512) as u64..((100 + 2051 + 300) * 512) as u64;
    assert!(
        runs.iter()
            .all(|r| r.end() <= zero.start || r.offset >= zero.end)
    );
}

#[test]
fn extent_path_with_parent_dir_is_refused_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let inner = dir.path().join("inner");
    std::fs::create_dir(&inner).unwrap();
    std::fs::write(dir.path().join("outside.raw"), vec![1u8; 4096]).unwrap();
    let path = write_descriptor(
        &inner,
        "monolithicFlat",
        &["RW 8 FLAT \"../outside.raw\" 0"],
    );

    let err = VmdkImage::open(&path).unwrap_err();

    assert!(matches!(err, VmdkError::ExtentPathRefused { .. }));
    assert_eq!(err.kind(), VmdkErrorKind::Policy);
}

#[test]
fn extent_path_absolute_is_refused_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("abs.raw");
    std::fs::write(&target, vec![1u8; 4096]).unwrap();
    let line = format!("RW 8 FLAT \"{}\" 0", target.display());
    let path = write_descriptor(dir.path(), "monolithicFlat", &[&line]);

    assert!(matches!(
        VmdkImage::open(&path),
        Err(VmdkError::ExtentPathRefused { .. })
    ));
}

#[test]
fn extent_path_symlink_escaping_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let inner = dir.path().join("inner");
    std::fs::create_dir(&inner).unwrap();
    std::fs::write(dir.path().join("outside.raw"), vec![1u8; 4096]).unwrap();
    std::os::unix::fs::symlink(dir.path().join("outside.raw"), inner.join("link.raw")).unwrap();
    let path = write_descriptor(&inner, "monolithicFlat", &["RW 8 FLAT \"link.raw\" 0"]);

    assert!(matches!(
        VmdkImage::open(&path),
        Err(VmdkError::ExtentPathRefused { .. })
    ));
}

#[test]
fn extent_path_parent_dir_is_allowed_with_any_policy() {
    let dir = tempfile::tempdir().unwrap();
    let inner = dir.path().join("inner");
    std::fs::create_dir(&inner).unwrap();
    std::fs::write(dir.path().join("outside.raw"), vec![7u8; 4096]).unwrap();
    let path = write_descriptor(
        &inner,
        "monolithicFlat",
        &["RW 8 FLAT \"../outside.raw\" 0"],
    );
    let opts = OpenOptions::new().extent_paths(ExtentPathPolicy::Any);

    let img = VmdkImage::open_with(&path, &opts).unwrap();

    assert!(read_image(&img, 0, 4096) == vec![7u8; 4096]);
}

#[test]
fn extent_in_subfolder_is_allowed_by_default() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub/d.raw"), vec![3u8; 4096]).unwrap();
    let path = write_descriptor(dir.path(), "monolithicFlat", &["RW 8 FLAT \"sub/d.raw\" 0"]);

    let img = VmdkImage::open(&path).unwrap();

    assert!(read_image(&img, 0, 4096) == vec![3u8; 4096]);
}

#[test]
fn missing_extent_file_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_descriptor(dir.path(), "monolithicFlat", &["RW 8 FLAT \"nope.raw\" 0"]);

    assert_eq!(
        VmdkImage::open(&path).unwrap_err().kind(),
        VmdkErrorKind::Io
    );
}

#[test]
fn flat_file_shorter_than_extent_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("short.raw"), vec![0u8; 4096]).unwrap();
    let path = write_descriptor(dir.path(), "monolithicFlat", &["RW 8 FLAT \"short.raw\" 1"]);

    assert!(matches!(
        VmdkImage::open(&path),
        Err(VmdkError::FlatExtentTooShort { .. })
    ));
}

#[test]
fn read_past_end_is_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_descriptor(dir.path(), "custom", &["RW 8 ZERO"]);
    let img = VmdkImage::open(&path).unwrap();
    let mut buf = [0u8; 512];

    let err = img.read_at(&mut buf, 3585).unwrap_err();

    assert!(matches!(
        err,
        VmdkError::OutOfRange {
            offset: 3585,
            len: 512,
            size: 4096
        }
    ));
}

#[test]
fn read_with_offset_overflow_is_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_descriptor(dir.path(), "custom", &["RW 8 ZERO"]);
    let img = VmdkImage::open(&path).unwrap();
    let mut buf = [0u8; 512];

    assert!(matches!(
        img.read_at(&mut buf, u64::MAX - 10),
        Err(VmdkError::OutOfRange { .. })
    ));
}

#[test]
fn descriptor_with_parent_is_unsupported() {
    let dir = tempfile::tempdir().unwrap();
    let text = "# Disk DescriptorFile\nCID=1\nparentCID=12345678\ncreateType=\"monolithicSparse\"\nparentFileNameHint=\"base.vmdk\"\nRW 8 ZERO\n";
    let path = dir.path().join("delta.vmdk");
    std::fs::write(&path, text).unwrap();

    assert!(matches!(VmdkImage::open(&path), Err(VmdkError::HasParent)));
}

#[test]
fn cowd_extent_is_unsupported() {
    let dir = tempfile::tempdir().unwrap();
    let mut cowd = b"COWD".to_vec();
    cowd.resize(4096, 0);
    std::fs::write(dir.path().join("d-delta.vmdk"), cowd).unwrap();
    let path = write_descriptor(
        dir.path(),
        "vmfsSparse",
        &["RW 8 VMFSSPARSE \"d-delta.vmdk\""],
    );

    assert_eq!(
        VmdkImage::open(&path).unwrap_err().kind(),
        VmdkErrorKind::Unsupported
    );
}

#[test]
fn huge_descriptor_file_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = b"# Disk DescriptorFile\n".to_vec();
    text.resize(3 << 20, b'#');
    let path = dir.path().join("huge.vmdk");
    std::fs::write(&path, text).unwrap();

    assert!(matches!(
        VmdkImage::open(&path),
        Err(VmdkError::DescriptorTooLarge { .. })
    ));
}

#[test]
fn random_bytes_are_not_vmdk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("random.bin");
    std::fs::write(&path, pseudo_random(5, 10_000)).unwrap();

    assert!(matches!(
        VmdkImage::open(&path),
        Err(VmdkError::NotVmdk { .. })
    ));
}

#[test]
fn descriptor_extents_exceeding_max_disk_size_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_descriptor(
        dir.path(),
        "custom",
        &[
            "RW 18446744073709551615 ZERO",
            "RW 18446744073709551615 ZERO",
        ],
    );

    assert!(matches!(
        VmdkImage::open(&path),
        Err(VmdkError::DiskTooLarge)
    ));
}

#[test]
fn sparse_extent_smaller_than_descriptor_says_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    write_raw(&dir.path().join("s.src"), 1 << 20, &[]);
    raw_to_vmdk(
        &dir.path().join("s.src"),
        &dir.path().join("s.vmdk"),
        "monolithicSparse",
    );
    let path = write_descriptor(
        dir.path(),
        "twoGbMaxExtentSparse",
        &["RW 4096 SPARSE \"s.vmdk\""],
    );

    assert!(matches!(
        VmdkImage::open(&path),
        Err(VmdkError::InvalidSparseHeader { .. })
    ));
}

#[test]
fn truncated_monolithic_sparse_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    write_raw(
        &dir.path().join("s.src"),
        1 << 20,
        &[(0, pseudo_random(1, 100_000))],
    );
    let vmdk = dir.path().join("s.vmdk");
    raw_to_vmdk(&dir.path().join("s.src"), &vmdk, "monolithicSparse");
    let bytes = std::fs::read(&vmdk).unwrap();
    std::fs::write(&vmdk, &bytes[..bytes.len() - 70_000]).unwrap();

    let result = VmdkImage::open(&vmdk).and_then(|img| {
        let mut buf = vec![0u8; 100_000];
        img.read_at(&mut buf, 0)
    });

    assert!(matches!(result, Err(VmdkError::GrainBeyondEof { .. })));
}

#[test]
fn is_vmdk_recognizes_both_kinds_only() {
    assert!(VmdkImage::is_vmdk(b"KDMV\x01\x00\x00\x00"));
    assert!(VmdkImage::is_vmdk(b"# Disk DescriptorFile\nversion=1\n"));
    assert!(!VmdkImage::is_vmdk(b"QFI\xfb"));
    assert!(!VmdkImage::is_vmdk(b""));
}

#[test]
fn image_is_send_sync_and_serves_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<VmdkImage>();
    let dir = tempfile::tempdir().unwrap();
    let data = pseudo_random(31, 2 << 20);
    write_raw(&dir.path().join("t.src"), 2 << 20, &[(0, data.clone())]);
    let vmdk = dir.path().join("t.vmdk");
    raw_to_vmdk(&dir.path().join("t.src"), &vmdk, "streamOptimized");
    let img = VmdkImage::open(&vmdk).unwrap();

    let results: Vec<bool> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4u64)
            .map(|t| {
                let (img, data) = (&img, &data);
                s.spawn(move || {
                    (0..32u64).all(|i| {
                        let off = ((t * 7919 + i * 104_729) % ((2 << 20) - 10_000)) as usize;
                        read_image(img, off as u64, 10_000) == data[off..off + 10_000]
                    })
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    assert!(results.iter().all(|&ok| ok));
}

#[test]
fn extent_naming_a_fifo_is_rejected_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.raw");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    let path = write_descriptor(dir.path(), "monolithicFlat", &["RW 8 FLAT \"fifo.raw\" 0"]);

    assert!(matches!(
        VmdkImage::open(&path),
        Err(VmdkError::NotRegularFile { .. })
    ));
}

#[test]
fn opening_a_folder_is_rejected() {
    let dir = tempfile::tempdir().unwrap();

    assert!(matches!(
        VmdkImage::open(dir.path()),
        Err(VmdkError::NotRegularFile { .. })
    ));
}
