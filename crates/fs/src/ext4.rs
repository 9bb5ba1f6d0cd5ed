//! ext2, ext3 and ext4 through `ext4-view`, over a [`Volume`].
//!
//! Before `ext4-view` sees the image, the superblock's block count and group size are checked
//! against the partition (a file system larger than its partition, or with fewer than 256
//! blocks per group, is refused as corrupt): `ext4-view` sizes its group descriptor table from
//! them. Symbolic link targets longer than [`limits::MAX_LINK_TARGET`] are refused before
//! they are read.
//!
//! Regular files whose data is an extent tree (every file `mkfs.ext4` and the kernel write on
//! ext4) are read through module `ext4_map`: whole extents straight from the volume into the
//! caller's buffer. `ext4-view` resolves their paths and reads everything else.
//!
//! `ext4_view::File::seek_to` walks the file's blocks from the start, so the last opened file
//! is kept with its position: sequential reads (a download in chunks) continue where the last
//! one stopped. Names that are not UTF-8 are listed lossily (U+FFFD).
//!
//! Known limit of `ext4-view` 1.0: in a block-mapped file (ext2, ext3) a hole that covers a
//! whole indirect block (its pointer in the inode is 0) makes it read block 0; such a read
//! answers [`FsError::Unsupported`] naming the limit (extent-mapped ext4 files, and holes
//! inside direct or allocated indirect blocks, read as zeros). Its `seek_to` swallows that
//! error and a later read panics, so on a file system without the `extents` feature (ext2,
//! ext3: every file block-mapped) a read at an offset reads its way there instead of seeking.

use ext4_view::{Ext4, Ext4Error, Ext4Read, FileType, Metadata};

use crate::error::FsError;
use crate::ext4_map::{self, Geometry, MappedFile};
use crate::volume::Volume;
use crate::{Entry, EntryKind, FileSystem, FsKind, FsPath, limits};

/// An open ext2/3/4 file system.
pub(crate) struct Ext4Fs {
    fs: Ext4,
    /// No `extents` feature: every file is block-mapped (ext2, ext3).
    block_mapped: bool,
    /// The file the last `read` used, with its path.
    open_file: Option<(FsPath, ext4_view::File)>,
    /// The volume, for reads of extent-mapped files ([`ext4_map`]).
    volume: Volume,
    /// `None` when the layout is left to `ext4-view` (see [`Geometry::from_superblock`]).
    geometry: Option<Geometry>,
    /// The file the last `read` looked up for [`ext4_map`], with its path; `None` inside
    /// when it reads through `ext4-view`.
    mapped: Option<(FsPath, Option<MappedFile>)>,
}

impl std::fmt::Debug for Ext4Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ext4Fs").finish_non_exhaustive()
    }
}

/// Bytes read ahead once `ext4-view` reads sequentially.
const READ_AHEAD: usize = 1 << 20;

/// Memory alignment of the read-ahead window (direct I/O's).
const PAGE: usize = 4096;

/// `ext4-view`'s reader over a volume, with read-ahead: `ext4-view` reads a file one block
/// (4 KiB) per call, so a read that continues the previous one fills a window of
/// [`READ_AHEAD`] bytes and the next blocks are copied from it (a 1 GiB file costs 1,024
/// reads of the image instead of 262,144). Other reads (directory blocks, inodes, extent
/// nodes scattered over the disk) go straight through and leave the window as it is.
///
/// The window starts on a page boundary in memory ([`PAGE`]), so a QCOW2 image below reads it
/// with `O_DIRECT` (no page-cache copy; see `sendense_qcow2::storage`).
struct Reader {
    volume: Volume,
    /// Holds the window at `window_at..window_at + window_len` (page-aligned in memory).
    buf: Vec<u8>,
    window_at: usize,
    window_len: usize,
    /// Volume offset of the window's first byte; the window is empty until the first
    /// sequential read.
    window_start: u64,
    /// End of the last read asked for.
    last_end: u64,
}

impl Reader {
    fn new(volume: Volume) -> Self {
        Self {
            volume,
            buf: Vec::new(),
            window_at: 0,
            window_len: 0,
            window_start: 0,
            last_end: u64::MAX,
        }
    }

    /// Copies `dst` from the window when it holds all of it.
    fn copy_window(&self, start: u64, dst: &mut [u8]) -> bool {
        let Some(from) = start
            .checked_sub(self.window_start)
            .and_then(|o| usize::try_from(o).ok())
        else {
            return false;
        };
        let window = &self.buf[self.window_at..self.window_at + self.window_len];
        match window.get(from..from.saturating_add(dst.len())) {
            Some(src) if !dst.is_empty() => {
                dst.copy_from_slice(src);
                true
            }
            _ => false,
        }
    }
}

impl Ext4Read for Reader {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        let sequential = start_byte == self.last_end;
        self.last_end = start_byte.saturating_add(dst.len() as u64);
        if self.copy_window(start_byte, dst) {
            return Ok(());
        }
        let left = self.volume.size().saturating_sub(start_byte);
        let fill = usize::try_from(left).map_or(READ_AHEAD, |l| l.min(READ_AHEAD));
        if !sequential || dst.len() >= fill {
            return self.volume.read_at(dst, start_byte).map_err(Into::into);
        }
        if self.buf.len() < READ_AHEAD + PAGE {
            self.buf = vec![0; READ_AHEAD + PAGE];
        }
        self.window_at = self.buf.as_ptr().align_offset(PAGE).min(PAGE);
        self.window_len = fill;
        let window = &mut self.buf[self.window_at..self.window_at + fill];
        if let Err(e) = self.volume.read_at(window, start_byte) {
            self.window_len = 0;
            return Err(e.into());
        }
        self.window_start = start_byte;
        let copied = self.copy_window(start_byte, dst);
        debug_assert!(copied, "the window was just filled from this offset");
        Ok(())
    }
}

/// Opens the ext2/3/4 file system in `volume`.
///
/// # Errors
/// [`FsError::Corrupt`] for a damaged superblock, [`FsError::Unsupported`] for features
/// `ext4-view` does not read, I/O errors.
pub(crate) fn open(volume: Volume) -> Result<Ext4Fs, FsError> {
    let sb = check_superblock(&volume)?;
    let incompat = u32::from_le_bytes([sb[0x60], sb[0x61], sb[0x62], sb[0x63]]);
    let fs = Ext4::load(Box::new(Reader::new(volume.clone())))
        .map_err(|e| map_err(e, &FsPath::root()))?;
    Ok(Ext4Fs {
        fs,
        block_mapped: incompat & INCOMPAT_EXTENTS == 0,
        open_file: None,
        geometry: Geometry::from_superblock(&sb),
        volume,
        mapped: None,
    })
}

/// `s_feature_incompat` bit: files may use extents.
const INCOMPAT_EXTENTS: u32 = 0x40;

/// The superblock's size fields against the partition; answers the superblock.
fn check_superblock(volume: &Volume) -> Result<[u8; 1024], FsError> {
    let mut sb = [0u8; 1024];
    volume.read_at(&mut sb, 1024).map_err(FsError::Io)?;
    let u32_at = |o: usize| u32::from_le_bytes([sb[o], sb[o + 1], sb[o + 2], sb[o + 3]]);
    let log_block = u32_at(0x18);
    if log_block > 6 {
        return Err(corrupt(format!("block size 2^{} bytes", log_block + 10)));
    }
    let block_size = 1024u64 << log_block;
    // ext4-view adds the high half whatever the 64bit feature says (fuzzing found it
    // allocating descriptors for 2^32 × blocks from a stray `s_blocks_count_hi`).
    let blocks_hi = u64::from(u32_at(0x150));
    let blocks = (blocks_hi << 32) | u64::from(u32_at(0x04));
    let fs_bytes = blocks
        .checked_mul(block_size)
        .ok_or_else(|| corrupt(format!("{blocks} blocks overflow")))?;
    if fs_bytes > volume.size() {
        return Err(corrupt(format!(
            "file system of {fs_bytes} bytes in a partition of {} bytes",
            volume.size()
        )));
    }
    let per_group = u32_at(0x20);
    if per_group < 256 {
        return Err(corrupt(format!("{per_group} blocks per group")));
    }
    Ok(sb)
}

impl FileSystem for Ext4Fs {
    fn kind(&self) -> FsKind {
        FsKind::Ext4
    }

    fn stat(&mut self, path: &FsPath) -> Result<Entry, FsError> {
        let meta = self
            .fs
            .symlink_metadata(path_str(path).as_str())
            .map_err(|e| map_err(e, path))?;
        Ok(self.entry(path, path.file_name().unwrap_or("/"), &meta))
    }

    fn list(&mut self, path: &FsPath) -> Result<Vec<Entry>, FsError> {
        let at = path_str(path);
        let meta = self
            .fs
            .symlink_metadata(at.as_str())
            .map_err(|e| map_err(e, path))?;
        if !meta.is_dir() {
            return Err(FsError::NotADirectory {
                path: path.to_string(),
            });
        }
        let dir = self
            .fs
            .read_dir(at.as_str())
            .map_err(|e| map_err(e, path))?;
        let mut out = Vec::new();
        for item in dir {
            let item = item.map_err(|e| map_err(e, path))?;
            let name = String::from_utf8_lossy(item.file_name().as_ref()).into_owned();
            if name == "." || name == ".." {
                continue;
            }
            if out.len() >= limits::MAX_DIR_ENTRIES {
                return Err(FsError::TooLarge {
                    what: format!(
                        "folder {path} has more than {} entries",
                        limits::MAX_DIR_ENTRIES
                    ),
                });
            }
            let meta = item.metadata().map_err(|e| map_err(e, path))?;
            let child = path.join(&name).unwrap_or_else(|_| path.clone());
            out.push(self.entry(&child, &name, &meta));
        }
        Ok(out)
    }

    fn read(&mut self, path: &FsPath, offset: u64, buf: &mut [u8]) -> Result<usize, FsError> {
        if let Some(n) = self.read_mapped(path, offset, buf)? {
            return Ok(n);
        }
        let reuse = matches!(&self.open_file, Some((p, f)) if p == path && f.position() == offset);
        if !reuse {
            self.open_file = None;
            let meta = self.regular_file(path)?;
            if offset >= meta.len() {
                return Ok(0);
            }
            let mut file = self
                .fs
                .open(path_str(path).as_str())
                .map_err(|e| map_err(e, path))?;
            if self.block_mapped {
                let mut scratch = vec![0u8; 65_536];
                while file.position() < offset {
                    let want = usize::try_from(offset - file.position())
                        .map_or(scratch.len(), |w| w.min(scratch.len()));
                    if read_some(&mut file, &mut scratch[..want], path)? == 0 {
                        return Ok(0);
                    }
                }
            } else {
                file.seek_to(offset).map_err(|e| map_err(e, path))?;
            }
            self.open_file = Some((path.clone(), file));
        }
        let Some((_, file)) = self.open_file.as_mut() else {
            return Ok(0);
        };
        let mut done = 0;
        while done < buf.len() {
            let n = match read_some(file, &mut buf[done..], path) {
                Ok(n) => n,
                Err(e) => {
                    self.open_file = None;
                    return Err(e);
                }
            };
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(done)
    }
}

/// One `read_bytes`, with `ext4-view`'s block-map hole limit named.
fn read_some(file: &mut ext4_view::File, buf: &mut [u8], path: &FsPath) -> Result<usize, FsError> {
    file.read_bytes(buf).map_err(|e| match e {
        Ext4Error::Corrupt(c) if c.to_string().contains("from block 0 ") => {
            FsError::unsupported(format!(
                "{path}: a sparse ext2/ext3 file whose hole covers a whole indirect block (ext4-view 1.0 cannot read it)"
            ))
        }
        e => map_err(e, path),
    })
}

impl Ext4Fs {
    /// The metadata of `path` (not following a final symlink); [`FsError::NotAFile`] unless it
    /// is a regular file.
    fn regular_file(&self, path: &FsPath) -> Result<Metadata, FsError> {
        let meta = self
            .fs
            .symlink_metadata(path_str(path).as_str())
            .map_err(|e| map_err(e, path))?;
        if !meta.file_type().is_regular_file() {
            return Err(FsError::NotAFile {
                path: path.to_string(),
            });
        }
        Ok(meta)
    }

    /// Reads an extent-mapped regular file through [`ext4_map`]; `None` when `path` is read
    /// through `ext4-view` instead.
    fn read_mapped(
        &mut self,
        path: &FsPath,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<Option<usize>, FsError> {
        let Some(geo) = self.geometry else {
            return Ok(None);
        };
        if !matches!(&self.mapped, Some((p, _)) if p == path) {
            self.mapped = None;
            let meta = self.regular_file(path)?;
            let file = self
                .fs
                .open(path_str(path).as_str())
                .map_err(|e| map_err(e, path))?;
            let mapped = inode_number(&file)
                .and_then(|n| match ext4_map::read_inode(&self.volume, &geo, n) {
                    Ok(inode) => Some(inode),
                    Err(e) => {
                        tracing::debug!(%path, inode = n, error = %e, "inode unreadable here; read through ext4-view");
                        None
                    }
                })
                .filter(|inode| {
                    inode.extent_mapped()
                        && inode.size == meta.len()
                        && inode.mode & 0o170_000 == 0o100_000
                        && inode.mode & 0o7777 == meta.mode()
                })
                .map(MappedFile::new);
            self.mapped = Some((path.clone(), mapped));
        }
        match &mut self.mapped {
            Some((_, Some(file))) => file.read(&self.volume, &geo, offset, buf).map(Some),
            _ => Ok(None),
        }
    }

    fn entry(&self, path: &FsPath, name: &str, meta: &Metadata) -> Entry {
        let ft = meta.file_type();
        let (kind, type_bits) = if ft.is_regular_file() {
            (EntryKind::File, 0o100_000)
        } else if ft.is_dir() {
            (EntryKind::Directory, 0o040_000)
        } else if ft.is_symlink() {
            (EntryKind::Symlink, 0o120_000)
        } else {
            (EntryKind::Other, other_type_bits(ft))
        };
        let link_target = if kind == EntryKind::Symlink {
            self.link_target(path, meta)
        } else {
            None
        };
        Entry {
            name: name.to_owned(),
            kind,
            size: if kind == EntryKind::Directory {
                0
            } else {
                meta.len()
            },
            mode: Some(type_bits | u32::from(meta.mode())),
            mtime: Some(meta.modified().seconds()),
            link_target,
        }
    }
}

impl Ext4Fs {
    /// A symbolic link's target; `None` (and a debug line) when it is longer than
    /// [`limits::MAX_LINK_TARGET`] or cannot be read (a damaged inode, or a name in its path
    /// that is not UTF-8): one bad link does not fail a whole listing.
    fn link_target(&self, path: &FsPath, meta: &Metadata) -> Option<String> {
        if meta.len() > limits::MAX_LINK_TARGET as u64 {
            tracing::debug!(%path, len = meta.len(), "symbolic link target too long");
            return None;
        }
        match self.fs.read_link(path_str(path).as_str()) {
            Ok(target) => Some(String::from_utf8_lossy(target.as_ref()).into_owned()),
            Err(e) => {
                tracing::debug!(%path, error = %e, "symbolic link target unreadable");
                None
            }
        }
    }
}

/// The inode number of an open `ext4-view` file. `ext4-view` 1.0 keeps it private but shows
/// it in the file's `Debug` form (`File { inode: 12, position: 0, .. }`); `None` when that
/// form changes, and the file then reads through `ext4-view`. The inode found by that number
/// must also match the size and mode `ext4-view` answers (see [`Ext4Fs::read_mapped`]).
fn inode_number(file: &ext4_view::File) -> Option<u32> {
    let shown = format!("{file:?}");
    let rest = shown.split_once("inode: ")?.1;
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn other_type_bits(ft: FileType) -> u32 {
    if ft.is_fifo() {
        0o010_000
    } else if ft.is_char_dev() {
        0o020_000
    } else if ft.is_block_dev() {
        0o060_000
    } else if ft.is_socket() {
        0o140_000
    } else {
        0
    }
}

fn path_str(path: &FsPath) -> String {
    path.to_string()
}

fn corrupt(detail: String) -> FsError {
    FsError::Corrupt {
        what: "ext4 file system",
        detail,
    }
}

/// One `ext4-view` error as ours, for `path`.
fn map_err(e: Ext4Error, path: &FsPath) -> FsError {
    let path = path.to_string();
    match e {
        Ext4Error::NotFound => FsError::NotFound { path },
        Ext4Error::NotADirectory => FsError::NotADirectory { path },
        Ext4Error::IsADirectory | Ext4Error::IsASpecialFile => FsError::NotAFile { path },
        Ext4Error::Io(e) => match e.downcast::<std::io::Error>() {
            Ok(io) => FsError::Io(*io),
            Err(other) => FsError::Io(std::io::Error::other(other)),
        },
        Ext4Error::Incompatible(i) => FsError::unsupported(format!("ext4 file system with {i}")),
        Ext4Error::Encrypted => FsError::unsupported(format!("encrypted file {path}")),
        Ext4Error::FileTooLarge | Ext4Error::PathTooLong => FsError::TooLarge { what: path },
        other => corrupt(format!("{other} (at {path})")),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::BlockRead;

    struct Mem(Vec<u8>);

    impl BlockRead for Mem {
        fn size(&self) -> u64 {
            self.0.len() as u64
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
            let o = usize::try_from(offset).unwrap();
            buf.copy_from_slice(&self.0[o..o + buf.len()]);
            Ok(())
        }
    }

    /// A disk that counts the reads it serves.
    struct Counting(Vec<u8>, std::sync::atomic::AtomicUsize);

    impl BlockRead for Counting {
        fn size(&self) -> u64 {
            self.0.len() as u64
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let o = usize::try_from(offset).unwrap();
            buf.copy_from_slice(&self.0[o..o + buf.len()]);
            Ok(())
        }
    }

    #[test]
    fn sequential_block_reads_are_served_from_one_read_ahead_window_and_others_go_through() {
        let size = 3 * READ_AHEAD + 12_288;
        let bytes: Vec<u8> = (0..size).map(|i| u8::try_from(i % 251).unwrap()).collect();
        let disk = Arc::new(Counting(
            bytes.clone(),
            std::sync::atomic::AtomicUsize::new(0),
        ));
        let reads = || disk.1.load(std::sync::atomic::Ordering::Relaxed);
        let dyn_disk: Arc<dyn BlockRead> = disk.clone();
        // A partition starting 4 KiB into the disk.
        let mut reader = Reader::new(Volume::new(dyn_disk, 4096, (size - 4096) as u64).unwrap());
        let check = |reader: &mut Reader, at: u64| {
            let mut block = [0u8; 4096];
            reader.read(at, &mut block).unwrap();
            let o = 4096 + usize::try_from(at).unwrap();
            assert_eq!(&block[..], &bytes[o..o + 4096], "at {at}");
        };
        // Every block of the volume in order: one direct read, then one window per 1 MiB.
        let blocks = (size - 4096) / 4096;
        for b in 0..blocks {
            check(&mut reader, (b * 4096) as u64);
        }
        let windows = (size - 4096 - 4096).div_ceil(READ_AHEAD);
        assert_eq!(reads(), 1 + windows);
        // A scattered read goes through; the window stays for the file read it interrupts.
        let before = reads();
        reader.read(0, &mut [0u8; 4096]).unwrap();
        assert_eq!(reads(), before + 1);
        // (The last block was read through: it was all that was left to read ahead.)
        check(&mut reader, ((blocks - 2) * 4096) as u64);
        assert_eq!(reads(), before + 1, "still in the window");
    }

    /// Notes whether each read of a whole window lands in page-aligned memory.
    struct AlignCheck(Vec<u8>, std::sync::Mutex<Vec<bool>>);

    impl BlockRead for AlignCheck {
        fn size(&self) -> u64 {
            self.0.len() as u64
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
            if buf.len() == READ_AHEAD {
                self.1
                    .lock()
                    .unwrap()
                    .push((buf.as_ptr() as usize).is_multiple_of(PAGE));
            }
            let o = usize::try_from(offset).unwrap();
            buf.copy_from_slice(&self.0[o..o + buf.len()]);
            Ok(())
        }
    }

    #[test]
    fn read_ahead_windows_are_page_aligned_so_an_image_reads_them_direct() {
        let size = 2 * READ_AHEAD + 8192;
        let bytes: Vec<u8> = (0..size).map(|i| u8::try_from(i % 251).unwrap()).collect();
        let disk = Arc::new(AlignCheck(bytes.clone(), std::sync::Mutex::default()));
        let dyn_disk: Arc<dyn BlockRead> = disk.clone();
        let mut reader = Reader::new(Volume::new(dyn_disk, 0, size as u64).unwrap());

        for b in 0..size / 4096 {
            let mut block = [0u8; 4096];
            reader.read((b * 4096) as u64, &mut block).unwrap();
            assert_eq!(&block[..], &bytes[b * 4096..(b + 1) * 4096]);
        }

        let aligned = disk.1.lock().unwrap().clone();
        assert_eq!(aligned, [true, true]);
    }

    #[test]
    fn stray_high_block_count_without_64bit_is_refused_before_ext4_view_sizes_from_it() {
        let mut img = vec![0u8; 128 * 1024];
        let sb = &mut img[1024..2048];
        sb[0x04..0x08].copy_from_slice(&128u32.to_le_bytes());
        sb[0x14..0x18].copy_from_slice(&1u32.to_le_bytes());
        sb[0x20..0x24].copy_from_slice(&8192u32.to_le_bytes());
        sb[0x28..0x2c].copy_from_slice(&16u32.to_le_bytes());
        sb[0x38..0x3a].copy_from_slice(&0xef53u16.to_le_bytes());
        sb[0x60..0x64].copy_from_slice(&2u32.to_le_bytes());
        sb[0x150..0x154].copy_from_slice(&4096u32.to_le_bytes());
        let disk: Arc<dyn BlockRead> = Arc::new(Mem(img));
        let volume = Volume::new(disk, 0, 128 * 1024).unwrap();
        let err = open(volume).unwrap_err();
        assert_eq!(err.kind(), crate::FsErrorKind::Corrupt);
        assert!(err.to_string().contains("in a partition of"), "{err}");
    }
}
