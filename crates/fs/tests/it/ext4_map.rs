//! ext4 files read through their extent trees (module `ext4_map`): large reads in whole
//! extents, fragmented files (an extent tree with index nodes), holes, unwritten extents,
//! extents past `i_size`, and damaged trees answering errors. Images made by `mkfs.ext4 -d`
//! and changed with `debugfs -w`.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use sendense_fs::{BlockRead, FileSystem, FsErrorKind, FsPath};

use crate::common;

/// A disk over an image file that notes the longest read it served.
struct Watched {
    inner: Arc<dyn BlockRead>,
    longest: AtomicUsize,
}

impl BlockRead for Watched {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.longest.fetch_max(buf.len(), Ordering::Relaxed);
        self.inner.read_at(buf, offset)
    }
}

/// `len` pseudo-random bytes from `seed`.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// An ext4 image of `size` bytes with 4 KiB blocks made from `tree`.
fn mkfs_4k(img: &Path, tree: &Path, size: u64) {
    common::need("mkfs.ext4", "e2fsprogs");
    common::blank(img, size);
    common::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-d"])
            .arg(tree)
            .arg(img),
    );
}

/// Runs `debugfs -w -R request img`.
fn debugfs(img: &Path, request: &str) -> String {
    common::need("debugfs", "e2fsprogs");
    common::run(Command::new("debugfs").args(["-w", "-R", request]).arg(img))
}

/// Reads all of `path` through `fs` in reads of `chunk` bytes.
fn read_all(fs: &mut dyn FileSystem, path: &FsPath, chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; chunk];
    loop {
        let n = fs.read(path, out.len() as u64, &mut buf).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn ext4_large_file_reads_in_whole_extents_not_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    let want = noise(6 << 20, 7);
    std::fs::write(tree.join("big.bin"), &want).unwrap();
    let img = dir.path().join("ext.img");
    mkfs_4k(&img, &tree, 64 << 20);
    let disk = Arc::new(Watched {
        inner: common::disk(&img),
        longest: AtomicUsize::new(0),
    });
    let dyn_disk: Arc<dyn BlockRead> = disk.clone();
    let mut fs = sendense_fs::open(&dyn_disk, None).unwrap();
    let big = FsPath::parse("/big.bin").unwrap();

    let got = read_all(&mut *fs, &big, 4 << 20);

    assert_eq!(got, want);
    // ext4-view's path reads at most its 1 MiB window at once; the extent path reads the
    // caller's 4 MiB straight from the disk.
    assert_eq!(disk.longest.load(Ordering::Relaxed), 4 << 20);
}

#[test]
fn ext4_fragmented_file_with_an_extent_index_reads_back_at_any_offset() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("fill")).unwrap();
    for i in 0..300 {
        std::fs::write(tree.join(format!("fill/f{i:03}")), noise(8192, i)).unwrap();
    }
    let img = dir.path().join("ext.img");
    mkfs_4k(&img, &tree, 16 << 20);
    // Free every other small file, then write a file that lands in the gaps.
    let rm: String = (0..300)
        .step_by(2)
        .map(|i| format!("rm /fill/f{i:03}\n"))
        .collect();
    let script = dir.path().join("rm.cmds");
    std::fs::write(&script, rm).unwrap();
    common::run(
        Command::new("debugfs")
            .arg("-w")
            .arg("-f")
            .arg(&script)
            .arg(&img),
    );
    let want = noise(1_000_000, 99);
    let src = dir.path().join("frag.src");
    std::fs::write(&src, &want).unwrap();
    debugfs(&img, &format!("write {} /frag.bin", src.display()));
    let extents = debugfs(&img, "ex /frag.bin");
    // `ex` lists the index level (0/1) and the leaves (1/1): a tree deeper than the inode.
    assert!(extents.contains("0/ 1"), "no index node:\n{extents}");
    let mut fs = sendense_fs::open(&common::disk(&img), None).unwrap();
    let frag = FsPath::parse("/frag.bin").unwrap();

    let whole = read_all(&mut *fs, &frag, 1 << 20);
    let small = read_all(&mut *fs, &frag, 7777);
    let mut middle = vec![0u8; 100_000];
    let n = fs.read(&frag, 333_333, &mut middle).unwrap();

    assert_eq!(whole, want);
    assert_eq!(small, want);
    assert_eq!((n, &middle[..]), (100_000, &want[333_333..433_333]));
    assert_eq!(
        common::sha256_of(&mut *fs, &FsPath::parse("/fill/f001").unwrap()),
        common::sha256(&noise(8192, 1))
    );
}

#[test]
fn ext4_sparse_file_reads_its_holes_as_zeros_in_large_reads() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    let len = 40u64 << 20;
    let f = std::fs::File::create(tree.join("holes.bin")).unwrap();
    f.set_len(len).unwrap();
    let head = noise(10_000, 1);
    let mid = noise(300_000, 2);
    let tail = noise(5_000, 3);
    std::os::unix::fs::FileExt::write_all_at(&f, &head, 0).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &mid, 17 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &tail, len - 5_000).unwrap();
    drop(f);
    let img = dir.path().join("ext.img");
    mkfs_4k(&img, &tree, 32 << 20);
    let mut fs = sendense_fs::open(&common::disk(&img), None).unwrap();
    let holes = FsPath::parse("/holes.bin").unwrap();

    let got = read_all(&mut *fs, &holes, 3 << 20);

    let mut want = vec![0u8; len as usize];
    want[..10_000].copy_from_slice(&head);
    want[17 << 20..(17 << 20) + 300_000].copy_from_slice(&mid);
    want[len as usize - 5_000..].copy_from_slice(&tail);
    assert_eq!(got.len(), want.len());
    assert!(got == want, "the sparse file read back differently");
}

#[test]
fn ext4_extents_past_i_size_and_unwritten_extents_read_as_the_file_says() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    let data = noise(65_536, 5);
    std::fs::write(tree.join("cut.bin"), &data).unwrap();
    std::fs::write(tree.join("prealloc.bin"), noise(8192, 6)).unwrap();
    let img = dir.path().join("ext.img");
    mkfs_4k(&img, &tree, 16 << 20);
    // cut.bin: 16 blocks of extent, i_size 10,000 bytes (the extent runs past the end).
    debugfs(&img, "sif /cut.bin size 10000");
    // prealloc.bin: 2 written blocks, then unwritten blocks 2..=9 inside a 40,000-byte size,
    // then unwritten blocks 10..=19 past it.
    debugfs(&img, "fallocate /prealloc.bin 2 19");
    debugfs(&img, "sif /prealloc.bin size 40000");
    let extents = debugfs(&img, "ex /prealloc.bin");
    assert!(
        extents.contains("Uninit"),
        "no unwritten extent:\n{extents}"
    );
    let mut fs = sendense_fs::open(&common::disk(&img), None).unwrap();

    let cut = read_all(&mut *fs, &FsPath::parse("/cut.bin").unwrap(), 1 << 20);
    let prealloc = read_all(&mut *fs, &FsPath::parse("/prealloc.bin").unwrap(), 1 << 20);

    assert_eq!(cut, data[..10_000]);
    let mut want = noise(8192, 6);
    want.resize(40_000, 0);
    assert_eq!(prealloc, want);
}

#[test]
fn ext4_extent_pointing_outside_the_file_system_is_corrupt_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("a.bin"), noise(20_000, 8)).unwrap();
    let img = dir.path().join("ext.img");
    mkfs_4k(&img, &tree, 16 << 20);
    // i_block words 3..5 are the root's first extent; word 5 is `ee_start_lo`.
    debugfs(&img, "sif /a.bin block[5] 0x7ffffff0");
    let mut fs = sendense_fs::open(&common::disk(&img), None).unwrap();
    let mut buf = vec![0u8; 1 << 20];

    let err = fs
        .read(&FsPath::parse("/a.bin").unwrap(), 0, &mut buf)
        .unwrap_err();

    assert_eq!(err.kind(), FsErrorKind::Corrupt, "{err}");
}
