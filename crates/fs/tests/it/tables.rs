//! GPT disks made by `sgdisk` and MBR disks with logical partitions made by `sfdisk`, each
//! partition holding a file system whose tree is compared in full.

use std::process::Command;

use sendense_fs::{Detected, FsKind, FsPath, TableKind};

use crate::common::{self, Compare};

const ALL: Compare = Compare {
    mode: false,
    mtime: true,
};

#[test]
fn gpt_disk_with_ext4_ntfs_and_fat32_partitions_matches_the_trees() {
    common::need("sgdisk", "gdisk");
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    common::make_tree(&tree, true);
    let flat = dir.path().join("flat");
    common::make_tree(&flat, false);
    let img = dir.path().join("disk.img");
    common::blank(&img, 80 << 20);
    common::run(
        Command::new("sgdisk")
            .args(["-n", "1:2048:+12M", "-t", "1:8300", "-c", "1:linux data"])
            .args(["-n", "2:0:+16M", "-t", "2:0700", "-c", "2:windows"])
            .args(["-n", "3:0:+40M", "-t", "3:ef00", "-c", "3:esp"])
            .arg(&img),
    );
    let before = sendense_fs::partitions(&common::disk(&img)).unwrap();
    assert_eq!(before.kind, TableKind::Gpt);
    let p = &before.partitions;
    assert_eq!(p.iter().map(|p| p.index).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(p[0].type_id, "0fc63daf-8483-4772-8e79-3d69d8477de4");
    assert_eq!(p[2].type_id, "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
    assert_eq!(p[0].name.as_deref(), Some("linux data"));
    assert_eq!((p[0].start, p[0].size), (2048 * 512, 12 << 20));
    assert!(p.iter().all(|p| p.detected == Detected::Unknown));

    let ext = dir.path().join("ext.img");
    common::mkfs_ext(&ext, &tree, "ext4", p[0].size);
    common::place(&img, p[0].start, &ext);
    let ntfs = dir.path().join("ntfs.img");
    common::mkfs_ntfs(&ntfs, &tree, p[1].size);
    common::place(&img, p[1].start, &ntfs);
    let fat = dir.path().join("fat.img");
    common::mkfs_fat(&fat, &flat, 32, p[2].size);
    common::place(&img, p[2].start, &fat);

    let disk = common::disk(&img);
    let table = sendense_fs::partitions(&disk).unwrap();
    let kinds: Vec<_> = table
        .partitions
        .iter()
        .map(|p| p.detected.clone())
        .collect();
    assert_eq!(
        kinds,
        [FsKind::Ext4, FsKind::Ntfs, FsKind::Fat].map(Detected::Supported)
    );
    for (index, src) in [(1, &tree), (2, &tree), (3, &flat)] {
        let mut fs = sendense_fs::open(&disk, Some(index)).unwrap();
        assert!(common::compare_tree(&mut *fs, src, &FsPath::root(), ALL) > 40);
    }
}

#[test]
fn mbr_disk_with_logical_partitions_matches_the_trees() {
    common::need("sfdisk", "fdisk");
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    common::make_tree(&tree, true);
    let flat = dir.path().join("flat");
    common::make_tree(&flat, false);
    let tree3 = dir.path().join("tree3");
    common::make_tree(&tree3, true);
    common::block_mapped_sparse_file(&tree3);
    let img = dir.path().join("disk.img");
    common::blank(&img, 72 << 20);
    let script = "label: dos\n2048,32768,e\n,,5\n,28672,83\n,,7\n";
    let mut child = Command::new("sfdisk")
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(&img)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("sfdisk runs");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), script.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk failed");

    let before = sendense_fs::partitions(&common::disk(&img)).unwrap();
    assert_eq!(before.kind, TableKind::Mbr);
    let p = &before.partitions;
    assert_eq!(p.iter().map(|p| p.index).collect::<Vec<_>>(), [1, 5, 6]);
    assert_eq!(
        p.iter().map(|p| p.type_id.as_str()).collect::<Vec<_>>(),
        ["0x0e", "0x83", "0x07"]
    );

    let fat = dir.path().join("fat.img");
    common::mkfs_fat(&fat, &flat, 16, p[0].size);
    common::place(&img, p[0].start, &fat);
    let ext = dir.path().join("ext.img");
    common::mkfs_ext(&ext, &tree3, "ext3", p[1].size);
    common::place(&img, p[1].start, &ext);
    let ntfs = dir.path().join("ntfs.img");
    common::mkfs_ntfs(&ntfs, &tree, p[2].size);
    common::place(&img, p[2].start, &ntfs);

    let disk = common::disk(&img);
    let table = sendense_fs::partitions(&disk).unwrap();
    let kinds: Vec<_> = table
        .partitions
        .iter()
        .map(|p| p.detected.clone())
        .collect();
    assert_eq!(
        kinds,
        [FsKind::Fat, FsKind::Ext4, FsKind::Ntfs].map(Detected::Supported)
    );
    for (index, src) in [(1, &flat), (5, &tree3), (6, &tree)] {
        let mut fs = sendense_fs::open(&disk, Some(index)).unwrap();
        assert!(common::compare_tree(&mut *fs, src, &FsPath::root(), ALL) > 40);
    }
}
