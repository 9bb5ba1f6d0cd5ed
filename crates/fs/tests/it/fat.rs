//! FAT12/16/32 images made by `mkfs.fat` and filled by `mcopy`.

use sendense_fs::{Detected, FsErrorKind, FsKind, FsPath, TableKind};

use crate::common::{self, Compare, DEPTH};

fn whole_disk_tree(bits: u32, size: u64) {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    common::make_tree(&tree, false);
    let img = dir.path().join("fat.img");
    common::mkfs_fat(&img, &tree, bits, size);
    let disk = common::disk(&img);
    let table = sendense_fs::partitions(&disk).unwrap();
    assert_eq!(table.kind, TableKind::None);
    assert_eq!(
        table.partitions[0].detected,
        Detected::Supported(FsKind::Fat)
    );
    let mut fs = sendense_fs::open(&disk, None).unwrap();
    let how = Compare {
        mode: false,
        mtime: true,
    };
    let n = common::compare_tree(&mut *fs, &tree, &FsPath::root(), how);
    assert_eq!(n, 8 + DEPTH + 1);
}

#[test]
fn fat12_whole_disk_matches_the_source_tree() {
    whole_disk_tree(12, 8 << 20);
}

#[test]
fn fat16_whole_disk_matches_the_source_tree() {
    whole_disk_tree(16, 24 << 20);
}

#[test]
fn fat32_whole_disk_matches_the_source_tree() {
    whole_disk_tree(32, 40 << 20);
}

#[test]
fn fat_finds_names_case_insensitively_and_refuses_folders_as_files() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    common::make_tree(&tree, false);
    let img = dir.path().join("fat.img");
    common::mkfs_fat(&img, &tree, 16, 24 << 20);
    let mut fs = sendense_fs::open(&common::disk(&img), None).unwrap();
    let e = fs.stat(&FsPath::parse("/SUB/Nested.TXT").unwrap()).unwrap();
    assert_eq!((e.name.as_str(), e.size, e.mode), ("nested.txt", 7, None));
    let mut buf = [0u8; 8];
    let err = fs
        .read(&FsPath::parse("/sub").unwrap(), 0, &mut buf)
        .unwrap_err();
    assert_eq!(err.kind(), FsErrorKind::NotAFile);
}
