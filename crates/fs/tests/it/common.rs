//! Shared test helpers: a disk over a file, the source tree every file system gets, real
//! tools, and the comparison of what we read against the source tree.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use sendense_fs::{BlockRead, EntryKind, FileSystem, FsPath};

/// A disk image file.
pub(crate) struct FileDisk {
    file: fs::File,
    size: u64,
}

impl BlockRead for FileDisk {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
}

/// Opens `path` as a disk.
pub(crate) fn disk(path: &Path) -> Arc<dyn BlockRead> {
    let file = fs::File::open(path).unwrap();
    let size = file.metadata().unwrap().len();
    Arc::new(FileDisk { file, size })
}

/// Panics naming the Debian package when `tool` is missing.
pub(crate) fn need(tool: &str, package: &str) {
    let found = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .any(|d| Path::new(d).join(tool).exists());
    assert!(
        found,
        "the test needs `{tool}`: install the Debian package `{package}` (scripts/test.sh does)"
    );
}

/// Runs a command and panics with its output when it fails.
pub(crate) fn run(cmd: &mut Command) -> String {
    let out = cmd
        .env("LC_ALL", "C.UTF-8")
        .env("TZ", "UTC")
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A file of `size` zero bytes.
pub(crate) fn blank(path: &Path, size: u64) {
    fs::File::create(path).unwrap().set_len(size).unwrap();
}

/// Copies the file system image `fs_image` into `disk` at byte `offset`.
pub(crate) fn place(disk: &Path, offset: u64, fs_image: &Path) {
    let data = fs::read(fs_image).unwrap();
    let f = fs::OpenOptions::new().write(true).open(disk).unwrap();
    for (i, chunk) in data.chunks(65_536).enumerate() {
        if chunk.iter().any(|b| *b != 0) {
            f.write_all_at(chunk, offset + i as u64 * 65_536).unwrap();
        }
    }
}

/// The 255-byte name.
pub(crate) fn long_name() -> String {
    format!("{}.txt", "l".repeat(251))
}

/// The Unicode name.
pub(crate) const UNICODE_NAME: &str = "Ünïcødé-文件.txt";

/// Deepest folder level of the tree.
pub(crate) const DEPTH: usize = 40;

/// Writes the source tree: plain, empty, 300 KB pseudo-random, sparse (2 MiB, three small
/// data runs), long and Unicode names, 40 nested folders, and with `symlinks` three symbolic
/// links (to a file, to a folder, dangling). Files get distinct even mtimes (FAT keeps 2 s).
pub(crate) fn make_tree(root: &Path, symlinks: bool) {
    fs::create_dir_all(root).unwrap();
    fs::write(root.join("hello.txt"), b"hello world\n").unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let big: Vec<u8> = (0..300_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    fs::write(root.join("big.bin"), &big).unwrap();
    let sparse = fs::File::create(root.join("sparse.bin")).unwrap();
    sparse.set_len(2 << 20).unwrap();
    sparse.write_all_at(b"start", 0).unwrap();
    sparse.write_all_at(b"middle", (1 << 20) + 7).unwrap();
    sparse.write_all_at(b"end", (2 << 20) - 3).unwrap();
    drop(sparse);
    fs::write(root.join(long_name()), b"a long name\n").unwrap();
    fs::write(root.join(UNICODE_NAME), "ünïcødé\n").unwrap();
    fs::create_dir(root.join("sub")).unwrap();
    fs::write(root.join("sub/nested.txt"), b"nested\n").unwrap();
    fs::set_permissions(
        root.join("sub/nested.txt"),
        fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    let mut deep = root.to_path_buf();
    for i in 1..=DEPTH {
        deep.push(format!("d{i:02}"));
    }
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("leaf.txt"), b"at the bottom\n").unwrap();
    if symlinks {
        std::os::unix::fs::symlink("hello.txt", root.join("link-to-hello")).unwrap();
        std::os::unix::fs::symlink("sub", root.join("link-to-sub")).unwrap();
        std::os::unix::fs::symlink("nowhere/at/all", root.join("dangling")).unwrap();
    }
    let mut t = 1_700_000_000i64;
    for p in files(root) {
        t += 2;
        run(Command::new("touch")
            .arg("-h")
            .arg("-d")
            .arg(format!("@{t}"))
            .arg(&p));
    }
}

/// Replaces the tree's sparse file with one whose holes lie in direct blocks (1 KiB blocks:
/// data in blocks 0 and 10): `ext4-view` reads those as zeros in block-mapped files.
pub(crate) fn block_mapped_sparse_file(tree: &Path) {
    let f = fs::File::create(tree.join("sparse.bin")).unwrap();
    f.set_len(11 * 1024).unwrap();
    FileExt::write_all_at(&f, b"start", 0).unwrap();
    FileExt::write_all_at(&f, b"end", 11 * 1024 - 3).unwrap();
    drop(f);
    run(Command::new("touch")
        .args(["-d", "@1700000000"])
        .arg(tree.join("sparse.bin")));
}

/// Every regular file and symlink under `root`.
fn files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(root).unwrap() {
        let e = e.unwrap();
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            out.extend(files(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out.sort();
    out
}

/// What to compare besides names, kinds, sizes, link targets and content.
#[derive(Clone, Copy)]
pub(crate) struct Compare {
    /// Unix mode bits.
    pub(crate) mode: bool,
    /// Files' mtimes.
    pub(crate) mtime: bool,
}

/// Walks the source tree and `fs` side by side: same names in every folder, same kinds,
/// sizes, link targets, mtimes and modes where kept, same SHA-256 of every file.
/// Answers how many entries were compared.
pub(crate) fn compare_tree(
    fs_: &mut dyn FileSystem,
    src: &Path,
    at: &FsPath,
    how: Compare,
) -> usize {
    let mut want = BTreeMap::new();
    for e in fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        want.insert(e.file_name().into_string().unwrap(), e.path());
    }
    let listed = fs_.list(at).unwrap_or_else(|e| panic!("list {at}: {e}"));
    let mut got: BTreeMap<_, _> = listed.iter().map(|e| (e.name.clone(), e.clone())).collect();
    // mkfs.ext4 adds it.
    if at.is_root() {
        got.remove("lost+found");
    }
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "names in {at}"
    );
    let mut count = 0;
    for (name, path) in &want {
        count += 1;
        let entry = &got[name];
        let child = at.join(name).unwrap();
        let meta = fs::symlink_metadata(path).unwrap();
        let stat = fs_
            .stat(&child)
            .unwrap_or_else(|e| panic!("stat {child}: {e}"));
        assert_eq!(&stat, entry, "stat and listing of {child}");
        if how.mode {
            assert_eq!(entry.mode, Some(meta.mode()), "mode of {child}");
        }
        if meta.file_type().is_symlink() {
            assert_eq!(entry.kind, EntryKind::Symlink, "kind of {child}");
            let target = fs::read_link(path)
                .unwrap()
                .into_os_string()
                .into_string()
                .unwrap();
            assert_eq!(
                entry.link_target.as_deref(),
                Some(target.as_str()),
                "target of {child}"
            );
        } else if meta.is_dir() {
            assert_eq!(entry.kind, EntryKind::Directory, "kind of {child}");
            count += compare_tree(fs_, path, &child, how);
        } else {
            assert_eq!(entry.kind, EntryKind::File, "kind of {child}");
            assert_eq!(entry.size, meta.len(), "size of {child}");
            if how.mtime {
                assert_eq!(entry.mtime, Some(meta.mtime()), "mtime of {child}");
            }
            assert_eq!(
                sha256_of(fs_, &child),
                sha256(&fs::read(path).unwrap()),
                "content of {child}"
            );
        }
    }
    count
}

/// SHA-256 of a file read through `fs` in 64 KiB chunks.
pub(crate) fn sha256_of(fs_: &mut dyn FileSystem, path: &FsPath) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 65_536];
    let mut offset = 0u64;
    loop {
        let n = fs_
            .read(path, offset, &mut buf)
            .unwrap_or_else(|e| panic!("read {path}: {e}"));
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        offset += n as u64;
    }
    hex(ctx.finish().as_ref())
}

/// SHA-256 of bytes.
pub(crate) fn sha256(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An ext2/3/4 image of `size` bytes made by `mkfs.ext4 -d` from `tree`.
pub(crate) fn mkfs_ext(img: &Path, tree: &Path, fs_type: &str, size: u64) {
    need("mkfs.ext4", "e2fsprogs");
    blank(img, size);
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-t", fs_type, "-d"])
        .arg(tree)
        .arg(img));
}

/// A FAT image of `size` bytes (`bits`: 12, 16 or 32) filled from `tree` by `mcopy -s -m`.
pub(crate) fn mkfs_fat(img: &Path, tree: &Path, bits: u32, size: u64) {
    need("mkfs.fat", "dosfstools");
    need("mcopy", "mtools");
    blank(img, size);
    let mut mk = Command::new("mkfs.fat");
    mk.args(["-F", &bits.to_string()]);
    if bits == 32 {
        mk.args(["-s", "1"]);
    }
    run(mk.arg(img));
    for e in fs::read_dir(tree).unwrap() {
        run(Command::new("mcopy")
            .arg("-i")
            .arg(img)
            .args(["-s", "-m", "-Q"])
            .arg(e.unwrap().path())
            .arg("::"));
    }
}

/// An `ntfs-3g` daemon kept in the foreground: unmounted and waited for when dropped, so the
/// image is complete once it is gone.
struct Mounted {
    mnt: PathBuf,
    daemon: std::process::Child,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
        let _ = self.daemon.wait();
    }
}

fn is_mounted(mnt: &Path) -> bool {
    let mnt = fs::canonicalize(mnt).unwrap();
    fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(1) == mnt.to_str())
}

/// An NTFS image of `size` bytes made by `mkntfs` and filled from `tree` through an
/// `ntfs-3g` FUSE mount (`cp -a`, sparse files kept sparse). Needs root and /dev/fuse.
pub(crate) fn mkfs_ntfs(img: &Path, tree: &Path, size: u64) {
    mkfs_ntfs_then(img, tree, size, |_| {});
}

/// As [`mkfs_ntfs`], then runs `more` on the mount point before unmounting.
pub(crate) fn mkfs_ntfs_then(img: &Path, tree: &Path, size: u64, more: impl FnOnce(&Path)) {
    need("mkntfs", "ntfs-3g");
    need("ntfs-3g", "ntfs-3g");
    blank(img, size);
    run(Command::new("mkntfs").args(["-F", "-Q", "-q"]).arg(img));
    let mnt = img.with_extension("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let daemon = Command::new("ntfs-3g")
        .args(["-o", "no_detach"])
        .arg(img)
        .arg(&mnt)
        .spawn()
        .expect("ntfs-3g starts (package ntfs-3g; needs root and /dev/fuse)");
    let mounted = Mounted {
        mnt: mnt.clone(),
        daemon,
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !is_mounted(&mnt) {
        assert!(
            std::time::Instant::now() < deadline,
            "ntfs-3g did not mount {} within 30 s",
            img.display()
        );
        std::thread::yield_now();
    }
    let mut src = tree.as_os_str().to_owned();
    src.push("/.");
    run(Command::new("cp")
        .args(["-a", "--sparse=always"])
        .arg(src)
        .arg(&mnt));
    more(&mnt);
    drop(mounted);
    assert!(
        !is_mounted(&mnt),
        "ntfs-3g still mounted at {}",
        mnt.display()
    );
}
