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

/// A reparse buffer (symbolic link with `flags`, or mount point without) as `ntfs-3g` takes it
/// in its `system.ntfs_reparse_data` attribute.
fn reparse(tag: u32, substitute: &str, print: &str, flags: Option<u32>) -> Vec<u8> {
    let s: Vec<u8> = substitute
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    let p: Vec<u8> = print.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let mut data = Vec::new();
    for v in [0, s.len(), s.len(), p.len()] {
        data.extend_from_slice(&u16::try_from(v).unwrap().to_le_bytes());
    }
    if let Some(f) = flags {
        data.extend_from_slice(&f.to_le_bytes());
    }
    data.extend_from_slice(&s);
    data.extend_from_slice(&p);
    let mut out = tag.to_le_bytes().to_vec();
    out.extend_from_slice(&u16::try_from(data.len()).unwrap().to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&data);
    out
}

#[test]
fn ntfs_windows_symlinks_and_junctions_are_symlinks_with_their_targets() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("plain.txt"), b"x").unwrap();
    let img = dir.path().join("ntfs.img");
    common::mkfs_ntfs_then(&img, &tree, 8 << 20, |mnt| {
        let attr = "system.ntfs_reparse_data";
        let none = rustix::fs::XattrFlags::empty();
        std::fs::write(mnt.join("winlink"), b"").unwrap();
        let link = reparse(0xA000_000C, "\\??\\C:\\t\\f.txt", "C:\\t\\f.txt", Some(0));
        rustix::fs::setxattr(mnt.join("winlink"), attr, &link, none).unwrap();
        std::fs::create_dir(mnt.join("junction")).unwrap();
        let junction = reparse(0xA000_0003, "\\??\\C:\\Users", "C:\\Users", None);
        rustix::fs::setxattr(mnt.join("junction"), attr, &junction, none).unwrap();
        std::fs::write(mnt.join("other"), b"").unwrap();
        let other = reparse(0x8000_001B, "x", "x", None);
        rustix::fs::setxattr(mnt.join("other"), attr, &other, none).unwrap();
    });
    let mut fs = sendense_fs::open(&common::disk(&img), None).unwrap();
    let got: Vec<_> = fs
        .list(&FsPath::root())
        .unwrap()
        .into_iter()
        .map(|e| (e.name, e.kind, e.link_target))
        .collect();
    assert_eq!(
        got,
        [
            (
                "junction".to_owned(),
                EntryKind::Symlink,
                Some("C:\\Users".to_owned())
            ),
            ("other".to_owned(), EntryKind::Other, None),
            ("plain.txt".to_owned(), EntryKind::File, None),
            (
                "winlink".to_owned(),
                EntryKind::Symlink,
                Some("C:\\t\\f.txt".to_owned())
            ),
        ]
    );
}
