//! Damaged tables, foreign file systems, bad paths and random bytes: clear errors, no panic.

use std::os::unix::fs::FileExt;
use std::process::Command;

use sendense_fs::{Detected, FileSystem, FsError, FsErrorKind, FsPath, TableKind};

use crate::common;

/// A GPT disk (sgdisk) with two 8 MiB partitions; partition 1 holds ext4 with `hello.txt`.
fn gpt_disk(dir: &std::path::Path) -> std::path::PathBuf {
    common::need("sgdisk", "gdisk");
    let img = dir.join("disk.img");
    common::blank(&img, 24 << 20);
    common::run(
        Command::new("sgdisk")
            .args(["-n", "1:2048:+8M", "-n", "2:0:+8M"])
            .arg(&img),
    );
    let tree = dir.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("hello.txt"), b"hello\n").unwrap();
    let ext = dir.join("ext.img");
    common::mkfs_ext(&ext, &tree, "ext4", 8 << 20);
    common::place(&img, 2048 * 512, &ext);
    img
}

fn open_err(disk: &std::sync::Arc<dyn sendense_fs::BlockRead>, index: Option<u32>) -> FsError {
    match sendense_fs::open(disk, index) {
        Ok(fs) => panic!("opened a {:?} file system", fs.kind()),
        Err(e) => e,
    }
}

fn flip(img: &std::path::Path, offset: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    f.write_all_at(&[b[0] ^ 0x5a], offset).unwrap();
}

#[test]
fn gpt_with_a_damaged_primary_header_is_read_from_the_backup() {
    let dir = tempfile::tempdir().unwrap();
    let img = gpt_disk(dir.path());
    let good = sendense_fs::partitions(&common::disk(&img)).unwrap();
    flip(&img, 512 + 60); // inside the disk GUID: the header CRC no longer matches
    let read = sendense_fs::partitions(&common::disk(&img)).unwrap();
    assert_eq!(read, good);
    assert_eq!(read.partitions.len(), 2);
}

#[test]
fn gpt_with_a_damaged_entry_array_is_read_from_the_backup() {
    let dir = tempfile::tempdir().unwrap();
    let img = gpt_disk(dir.path());
    let good = sendense_fs::partitions(&common::disk(&img)).unwrap();
    flip(&img, 1024 + 40); // partition 1's last LBA: the array CRC no longer matches
    assert_eq!(sendense_fs::partitions(&common::disk(&img)).unwrap(), good);
}

#[test]
fn gpt_with_both_headers_damaged_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let img = gpt_disk(dir.path());
    flip(&img, 512 + 60);
    flip(&img, (24 << 20) - 512 + 60);
    let err = sendense_fs::partitions(&common::disk(&img)).unwrap_err();
    assert_eq!(err.kind(), FsErrorKind::Corrupt);
    let msg = err.to_string();
    assert!(
        msg.contains("GPT") && msg.contains("CRC32") && msg.contains("backup"),
        "{msg}"
    );
}

#[test]
fn partition_index_out_of_range_is_no_such_partition() {
    let dir = tempfile::tempdir().unwrap();
    let img = gpt_disk(dir.path());
    let disk = common::disk(&img);
    let err = open_err(&disk, Some(9));
    assert_eq!(err.kind(), FsErrorKind::NoSuchPartition);
    assert_eq!(err.to_string(), "No partition 9 (the disk has 2)");
    let err = open_err(&disk, None);
    assert_eq!(err.kind(), FsErrorKind::NoSuchPartition);
}

#[test]
fn xfs_looking_and_empty_partitions_are_unsupported_naming_what_was_seen() {
    let dir = tempfile::tempdir().unwrap();
    let img = gpt_disk(dir.path());
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.write_all_at(&[0; 2048], 2048 * 512).unwrap();
    f.write_all_at(b"XFSB", 2048 * 512).unwrap();
    let disk = common::disk(&img);
    let table = sendense_fs::partitions(&disk).unwrap();
    assert_eq!(table.partitions[0].detected, Detected::Unsupported("xfs"));
    assert_eq!(table.partitions[1].detected, Detected::Unknown);
    let err = open_err(&disk, Some(1));
    assert_eq!(err.kind(), FsErrorKind::Unsupported);
    assert_eq!(err.to_string(), "Unsupported: xfs in partition 1");
    let err = open_err(&disk, Some(2));
    assert_eq!(
        err.to_string(),
        "Unsupported: no file system recognised in partition 2"
    );
}

#[test]
fn ebr_chain_that_loops_is_a_clear_error() {
    common::need("sfdisk", "fdisk");
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    common::blank(&img, 32 << 20);
    let mut child = Command::new("sfdisk")
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(&img)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("sfdisk runs");
    let script = "label: dos\n2048,,5\n,8192,83\n,8192,83\n";
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), script.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk failed");
    let good = sendense_fs::partitions(&common::disk(&img)).unwrap();
    assert_eq!(good.kind, TableKind::Mbr);
    assert_eq!(
        good.partitions.iter().map(|p| p.index).collect::<Vec<_>>(),
        [5, 6]
    );
    // The second EBR (one sector before logical 6) now names the first as the next one.
    let second_ebr = good.partitions[1].start - 2048 * 512;
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    let mut entry = [0u8; 16];
    entry[4] = 0x05;
    entry[12..16].copy_from_slice(&8192u32.to_le_bytes());
    f.write_all_at(&entry, second_ebr + 446 + 16).unwrap();
    let err = sendense_fs::partitions(&common::disk(&img)).unwrap_err();
    assert_eq!(err.kind(), FsErrorKind::Corrupt);
    assert!(err.to_string().contains("loops back"), "{err}");
}

fn bad_paths(fs: &mut dyn FileSystem) {
    let p = |s: &str| FsPath::parse(s).unwrap();
    assert_eq!(
        fs.stat(&p("/nope")).unwrap_err().kind(),
        FsErrorKind::NotFound
    );
    assert_eq!(
        fs.list(&p("/nope/deeper")).unwrap_err().kind(),
        FsErrorKind::NotFound
    );
    assert_eq!(
        fs.list(&p("/hello.txt")).unwrap_err().kind(),
        FsErrorKind::NotADirectory
    );
    assert_eq!(
        fs.stat(&p("/hello.txt/inside")).unwrap_err().kind(),
        FsErrorKind::NotADirectory
    );
    let mut buf = [0u8; 8];
    assert_eq!(
        fs.read(&p("/"), 0, &mut buf).unwrap_err().kind(),
        FsErrorKind::NotAFile
    );
    assert_eq!(
        fs.read(&p("/gone"), 0, &mut buf).unwrap_err().kind(),
        FsErrorKind::NotFound
    );
}

#[test]
fn missing_paths_and_files_used_as_folders_are_clear_errors_in_every_file_system() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("hello.txt"), b"hello\n").unwrap();
    let ext = dir.path().join("ext.img");
    common::mkfs_ext(&ext, &tree, "ext4", 8 << 20);
    let fat = dir.path().join("fat.img");
    common::mkfs_fat(&fat, &tree, 12, 4 << 20);
    let ntfs = dir.path().join("ntfs.img");
    common::mkfs_ntfs(&ntfs, &tree, 8 << 20);
    for img in [ext, fat, ntfs] {
        let mut fs = sendense_fs::open(&common::disk(&img), None).unwrap();
        bad_paths(&mut *fs);
    }
}

/// Pseudo-random bytes.
fn noise(len: usize, mut x: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn random_bytes_are_no_file_system() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("noise.img");
    std::fs::write(&img, noise(4 << 20, 7)).unwrap();
    let disk = common::disk(&img);
    let table = sendense_fs::partitions(&disk).unwrap();
    assert_eq!(table.kind, TableKind::None);
    assert_eq!(table.partitions[0].detected, Detected::Unknown);
    let err = open_err(&disk, None);
    assert_eq!(err.kind(), FsErrorKind::Unsupported);
}

/// Lists and reads everything reachable, answering how many calls failed.
fn walk_all(fs: &mut dyn FileSystem, at: &FsPath, depth: usize, errors: &mut usize) {
    let Ok(list) = fs.list(at) else {
        *errors += 1;
        return;
    };
    let mut buf = vec![0u8; 65_536];
    for e in list {
        let Ok(child) = at.join(&e.name) else {
            continue;
        };
        match e.kind {
            sendense_fs::EntryKind::Directory if depth < 8 => {
                walk_all(fs, &child, depth + 1, errors);
            }
            sendense_fs::EntryKind::File if fs.read(&child, 0, &mut buf).is_err() => {
                *errors += 1;
            }
            _ => {}
        }
    }
}

#[test]
fn damaged_images_answer_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    common::make_tree(&tree, true);
    let flat = dir.path().join("flat");
    common::make_tree(&flat, false);
    let ext = dir.path().join("ext.img");
    common::mkfs_ext(&ext, &tree, "ext4", 16 << 20);
    let fat = dir.path().join("fat.img");
    common::mkfs_fat(&fat, &flat, 16, 24 << 20);
    let ntfs = dir.path().join("ntfs.img");
    common::mkfs_ntfs(&ntfs, &tree, 16 << 20);
    for (seed, img) in [ext, fat, ntfs].iter().enumerate() {
        // Scribble over the metadata after the boot sector / superblock, every 4 KiB.
        let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
        for (i, chunk) in noise(64 << 10, seed as u64 + 11).chunks(16).enumerate() {
            f.write_all_at(chunk, 8192 + i as u64 * 4096).unwrap();
        }
        let disk = common::disk(img);
        let mut errors = 0;
        match sendense_fs::open(&disk, None) {
            Ok(mut fs) => walk_all(&mut *fs, &FsPath::root(), 0, &mut errors),
            Err(e) => assert!(
                matches!(e.kind(), FsErrorKind::Corrupt | FsErrorKind::Unsupported),
                "{e}"
            ),
        }
    }
}
