//! NTFS images made by `mkntfs` and filled through an `ntfs-3g` mount.

use sendense_fs::{Detected, EntryKind, FsKind, FsPath, TableKind};

use crate::common::{self, Compare, DEPTH};

#[test]
fn ntfs_whole_disk_matches_the_source_tree() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    common::make_tree(&tree, true);
    let img = dir.path().join("ntfs.img");
    common::mkfs_ntfs(&img, &tree, 16 << 20);
    let disk = common::disk(&img);
    let table = sendense_fs::partitions(&disk).unwrap();
    assert_eq!(table.kind, TableKind::None);
    assert_eq!(
        table.partitions[0].detected,
        Detected::Supported(FsKind::Ntfs)
    );
    let mut fs = sendense_fs::open(&disk, None).unwrap();
    assert_eq!(fs.kind(), FsKind::Ntfs);
    let how = Compare {
        mode: false,
        mtime: true,
    };
    let n = common::compare_tree(&mut *fs, &tree, &FsPath::root(), how);
    assert_eq!(n, 11 + DEPTH + 1);
}

#[test]
fn ntfs_root_listing_hides_metadata_files_but_they_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("only.txt"), b"x").unwrap();
    let img = dir.path().join("ntfs.img");
    common::mkfs_ntfs(&img, &tree, 8 << 20);
    let mut fs = sendense_fs::open(&common::disk(&img), None).unwrap();
    let names: Vec<_> = fs
        .list(&FsPath::root())
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["only.txt"]);
    let mft = fs.stat(&FsPath::parse("/$MFT").unwrap()).unwrap();
    assert_eq!(mft.kind, EntryKind::File);
    assert!(mft.size > 0);
}
