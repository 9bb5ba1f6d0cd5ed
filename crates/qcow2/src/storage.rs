//! The small positional-I/O trait the engine runs on, with a file and an in-memory backend.
//!
//! All methods take `&self`: implementations must be safe to call from many threads at once
//! (the file backend uses `pread`/`pwrite`, which are).
//!
//! # Direct I/O for data
//! [`FileStorage`] writes data clusters with `O_DIRECT` when the caller's buffer, the offset
//! and the length are all multiples of [`DIRECT_ALIGN`] (give it a [`sendense_io::AlignedBuf`]); anything
//! else, and all metadata, goes through the page cache. On this project's machines a buffered
//! write of fresh data costs the kernel a page-cache copy that runs at under 1 GB/s, while the
//! same data written with `O_DIRECT` goes at the disk's speed (2 GiB: 8.4 s buffered + fsync,
//! 1.3 s direct, measured with `dd`). Both descriptors are the same file: Linux writes back and
//! drops cached pages of a range before a direct write to it, so buffered reads stay coherent,
//! and `fsync` on either descriptor makes both kinds of write durable.
//!
//! # The page cache for read-only layers
//! A read-only layer (a backing file, a restore point) never changes while it is open, so its
//! small reads (under [`CACHED_READ_MAX`]) go through the page cache: whatever any export of the
//! same point already read is served from memory, and [`Storage::read_data_now`] can answer it
//! without blocking (`preadv2(RWF_NOWAIT)`), which lets the NBD server answer on its own task
//! with no thread hop. A miss asks the kernel to read the whole cluster around it
//! ([`Storage::read_ahead`]: QCOW2 allocates in clusters, and guests read nearby blocks
//! together), so one I/O serves the next reads of that cluster. Large reads (restores, copies)
//! keep bypassing the cache: they would only evict it, and run at the disk's speed direct.
//!
//! # Writeback for scratch overlays
//! A writable layer opened with writeback ([`FileStorage::writeback`]: the instant-recovery
//! overlay a guest runs on) writes small data (up to [`CACHED_WRITE_MAX`]) through the page
//! cache, as QEMU's default `cache=writeback` does, and reads small data through it too (so a
//! guest reading what it just wrote never waits for that write to reach the disk). Once its
//! clusters are allocated, a 4 KiB random write with `O_DIRECT` runs at the disk's random-write
//! limit; buffered, it is a page copy, and the kernel writes the pages back in its own order.
//! Durability is unchanged: a flush `fdatasync`s the file before any metadata that points at
//! the data (see [`crate::meta`]), and that covers buffered and direct writes alike. Large
//! writes (backup ingest, a guest's big sequential writes) stay direct. Such a file is not
//! preallocated, and the engine writes each newly allocated cluster whole (zeros around the
//! guest's subclusters, [`Storage::writeback`]): 4 KiB buffered writes scattered over
//! fallocated (unwritten) space split ext4's extents one by one, and writing the pages back,
//! and even deleting the file, then took minutes; a dense file is written back in long runs.

use sendense_io::is_direct_aligned;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

/// Alignment (memory address, file offset and length) a write needs to bypass the page cache.
pub const DIRECT_ALIGN: usize = sendense_io::PAGE_SIZE;

/// Positional I/O on an image file.
pub trait Storage: Send + Sync + fmt::Debug {
    /// Reads into `buf` at `offset`; returns the bytes read, short only at end of file.
    ///
    /// # Errors
    /// Operating-system errors.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset`, growing the file when needed.
    ///
    /// # Errors
    /// Operating-system errors.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Current length.
    ///
    /// # Errors
    /// Operating-system errors.
    fn file_len(&self) -> io::Result<u64>;
    /// Sets the length.
    ///
    /// # Errors
    /// Operating-system errors.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes written data durable (`fdatasync`).
    ///
    /// # Errors
    /// Operating-system errors.
    fn sync_data(&self) -> io::Result<()>;
    /// Makes data and metadata durable (`fsync`).
    ///
    /// # Errors
    /// Operating-system errors.
    fn sync_all(&self) -> io::Result<()>;
    /// Releases the space of `[offset, offset + len)`, which then reads as zeros; the length
    /// of the storage is unchanged. Optional: the default does nothing.
    ///
    /// # Errors
    /// Operating-system errors.
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Ok(())
    }
    /// Writes guest data (not metadata) at `offset`. A backend may bypass the page cache when
    /// `buf`, `offset` and the length are suitably aligned; the default is [`Self::write_at`].
    ///
    /// # Errors
    /// Operating-system errors.
    fn write_data_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write_at(buf, offset)
    }
    /// Allocates `[offset, offset + len)` and grows the file to cover it, if this backend
    /// benefits (direct writes into allocated space run in parallel); answers whether it did.
    /// The default does nothing.
    ///
    /// # Errors
    /// Operating-system errors.
    fn preallocate(&self, offset: u64, len: u64) -> io::Result<bool> {
        let _ = (offset, len);
        Ok(false)
    }
    /// Reads guest data (not metadata) like [`Self::read_at`]. A backend may bypass the page
    /// cache when `buf`, `offset` and the length are suitably aligned; the default is
    /// [`Self::read_at`].
    ///
    /// # Errors
    /// Operating-system errors.
    fn read_data_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.read_at(buf, offset)
    }
    /// Reads guest data like [`Self::read_data_at`] only if that needs no waiting (the bytes
    /// are in memory): `Ok(None)` when it would wait, and the caller reads the blocking way.
    /// The default never answers.
    ///
    /// # Errors
    /// Operating-system errors.
    fn read_data_now(&self, buf: &mut [u8], offset: u64) -> io::Result<Option<usize>> {
        let _ = (buf, offset);
        Ok(None)
    }
    /// Whether small data writes go through the page cache (see the module docs): the engine
    /// then writes a newly allocated cluster whole, zeros around the guest's bytes, so the file
    /// stays dense and the kernel writes it back in large runs. The default is `false`.
    fn writeback(&self) -> bool {
        false
    }
    /// Hints that `[offset, offset + len)` will be read soon (the page cache may start reading
    /// it). The default does nothing.
    fn read_ahead(&self, offset: u64, len: u64) {
        let _ = (offset, len);
    }
}

/// Largest data read of a read-only [`FileStorage`] that goes through the page cache (see the
/// module docs); larger ones read direct.
pub const CACHED_READ_MAX: usize = 64 * 1024;

/// Largest data write of a writeback [`FileStorage`] that goes through the page cache (see
/// the module docs); larger ones write direct.
pub const CACHED_WRITE_MAX: usize = 64 * 1024;

/// An image file: positional I/O through the page cache, plus an optional second descriptor
/// of the same file opened with `O_DIRECT` for aligned data reads and writes (see the module
/// docs).
#[derive(Debug)]
pub struct FileStorage {
    file: File,
    direct: Option<File>,
    direct_failed: AtomicBool,
    /// Read-only or writeback: small data reads go through the page cache.
    cached_reads: bool,
    /// Writeback: small data writes go through the page cache.
    cached_writes: bool,
}

impl FileStorage {
    /// Buffered I/O, plus direct reads and writes of aligned data through a second descriptor
    /// of `path` opened with `O_DIRECT` (writable only if `writable`). A file system that
    /// refuses `O_DIRECT` (tmpfs) leaves only the buffered path. A read-only storage reads
    /// data under [`CACHED_READ_MAX`] through the page cache (see the module docs).
    #[must_use]
    pub fn with_direct_io(file: File, path: &Path, writable: bool) -> Self {
        let direct = std::fs::OpenOptions::new()
            .read(true)
            .write(writable)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok();
        Self {
            file,
            direct,
            direct_failed: AtomicBool::new(false),
            cached_reads: !writable,
            cached_writes: false,
        }
    }

    /// With `on`, data writes and reads up to [`CACHED_WRITE_MAX`] and [`CACHED_READ_MAX`]
    /// go through the page cache (see the module docs); for writable scratch overlays.
    #[must_use]
    pub fn writeback(mut self, on: bool) -> Self {
        self.cached_writes = on;
        self.cached_reads |= on;
        self
    }

    /// Whether small data writes go through the page cache ([`Self::writeback`]).
    #[must_use]
    pub fn is_writeback(&self) -> bool {
        self.cached_writes
    }

    /// Whether a data read of `len` bytes goes through the page cache.
    fn cached(&self, len: usize) -> bool {
        self.cached_reads && len < CACHED_READ_MAX
    }

    /// Whether aligned data I/O currently bypasses the page cache.
    #[must_use]
    pub fn direct_io(&self) -> bool {
        self.direct.is_some() && !self.direct_failed.load(Ordering::Relaxed)
    }

    /// The direct descriptor, if aligned I/O of `buf` at `offset` should use it.
    fn direct_for(&self, buf: &[u8], offset: u64) -> Option<&File> {
        self.direct.as_ref().filter(|_| {
            !self.direct_failed.load(Ordering::Relaxed) && is_direct_aligned(buf, offset)
        })
    }

    /// Notes a direct-I/O failure: `EINVAL` means the file system took the open but refuses
    /// the I/O, so stop trying and let the page cache take this and every later request.
    fn direct_refused(&self, e: &io::Error) -> bool {
        let refused = e.raw_os_error() == Some(libc::EINVAL);
        if refused {
            self.direct_failed.store(true, Ordering::Relaxed);
        }
        refused
    }
}

impl Storage for FileStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        Storage::read_at(&self.file, buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        Storage::write_at(&self.file, buf, offset)
    }
    fn file_len(&self) -> io::Result<u64> {
        Storage::file_len(&self.file)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        Storage::set_len(&self.file, len)
    }
    fn sync_data(&self) -> io::Result<()> {
        Storage::sync_data(&self.file)
    }
    fn sync_all(&self) -> io::Result<()> {
        Storage::sync_all(&self.file)
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        Storage::punch_hole(&self.file, offset, len)
    }
    fn write_data_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.cached_writes && buf.len() <= CACHED_WRITE_MAX {
            return Storage::write_at(&self.file, buf, offset);
        }
        if let Some(direct) = self.direct_for(buf, offset) {
            match direct.write_all_at(buf, offset) {
                Ok(()) => return Ok(()),
                Err(e) if self.direct_refused(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Storage::write_at(&self.file, buf, offset)
    }
    fn writeback(&self) -> bool {
        self.cached_writes
    }
    fn preallocate(&self, offset: u64, len: u64) -> io::Result<bool> {
        // Writeback: buffered writes gain nothing from allocated space, and small ones into
        // unwritten extents would split them into a huge extent tree.
        if !self.direct_io() || self.cached_writes || len == 0 {
            return Ok(false);
        }
        rustix::fs::fallocate(&self.file, rustix::fs::FallocateFlags::empty(), offset, len)?;
        Ok(true)
    }
    fn read_data_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if self.cached(buf.len()) {
            return Storage::read_at(&self.file, buf, offset);
        }
        if let Some(direct) = self.direct_for(buf, offset) {
            match Storage::read_at(direct, buf, offset) {
                Ok(n) => return Ok(n),
                Err(e) if self.direct_refused(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Storage::read_at(&self.file, buf, offset)
    }
    fn read_data_now(&self, buf: &mut [u8], offset: u64) -> io::Result<Option<usize>> {
        if !self.cached(buf.len()) || buf.is_empty() {
            return Ok(None);
        }
        let len = buf.len();
        let mut iov = [io::IoSliceMut::new(buf)];
        match rustix::io::preadv2(
            &self.file,
            &mut iov,
            offset,
            rustix::io::ReadWriteFlags::NOWAIT,
        ) {
            // Short: part of the range is not cached (or the file ends; the blocking read
            // tells those apart).
            Ok(n) if n == len => Ok(Some(n)),
            Ok(_) | Err(rustix::io::Errno::AGAIN | rustix::io::Errno::OPNOTSUPP) => Ok(None),
            Err(rustix::io::Errno::INTR) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
    fn read_ahead(&self, offset: u64, len: u64) {
        if self.cached_reads
            && let Some(len) = std::num::NonZeroU64::new(len)
        {
            // A hint: failure costs only the read-ahead.
            let _ =
                rustix::fs::fadvise(&self.file, offset, Some(len), rustix::fs::Advice::WillNeed);
        }
    }
}

/// Reads `buf.len()` bytes at `offset`; bytes past the end of the storage read as zero.
pub(crate) fn read_or_zero(s: &dyn Storage, buf: &mut [u8], offset: u64) -> io::Result<()> {
    fill_or_zero(buf, offset, |b, o| s.read_at(b, o))
}

/// [`read_or_zero`] of guest data, through [`Storage::read_data_at`].
pub(crate) fn read_data_or_zero(s: &dyn Storage, buf: &mut [u8], offset: u64) -> io::Result<()> {
    fill_or_zero(buf, offset, |b, o| s.read_data_at(b, o))
}

fn fill_or_zero(
    buf: &mut [u8],
    offset: u64,
    mut read: impl FnMut(&mut [u8], u64) -> io::Result<usize>,
) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let n = read(&mut buf[done..], offset + done as u64)?;
        if n == 0 {
            buf[done..].fill(0);
            break;
        }
        done += n;
    }
    Ok(())
}

impl Storage for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        loop {
            match FileExt::read_at(self, buf, offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => return other,
            }
        }
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write_all_at(buf, offset)
    }
    fn file_len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        Self::set_len(self, len)
    }
    fn sync_data(&self) -> io::Result<()> {
        Self::sync_data(self)
    }
    fn sync_all(&self) -> io::Result<()> {
        Self::sync_all(self)
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        // A file system that cannot punch holes keeps the space: freed clusters stay allocated.
        match sendense_io::sparse::punch_hole(self, offset, len) {
            Err(e) if sendense_io::sparse::unsupported(&e) => Ok(()),
            r => r,
        }
    }
}

/// A growable in-memory image, for tests and fuzzing.
#[derive(Debug, Default)]
pub struct MemStorage {
    data: Mutex<Vec<u8>>,
}

impl MemStorage {
    /// A storage holding `bytes`.
    #[must_use]
    pub fn new(bytes: Vec<u8>) -> Self {
        Self {
            data: Mutex::new(bytes),
        }
    }

    /// A copy of the current contents.
    #[must_use]
    pub fn to_vec(&self) -> Vec<u8> {
        self.data
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Storage for MemStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let data = self.data.lock().unwrap_or_else(PoisonError::into_inner);
        let Ok(start) = usize::try_from(offset) else {
            return Ok(0);
        };
        if start >= data.len() {
            return Ok(0);
        }
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        Ok(n)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut data = self.data.lock().unwrap_or_else(PoisonError::into_inner);
        let start = usize::try_from(offset).map_err(|_| io::Error::other("offset too large"))?;
        let end = start + buf.len();
        if data.len() < end {
            data.resize(end, 0);
        }
        data[start..end].copy_from_slice(buf);
        Ok(())
    }
    fn file_len(&self) -> io::Result<u64> {
        Ok(self
            .data
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len() as u64)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(|_| io::Error::other("length too large"))?;
        self.data
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .resize(len, 0);
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }
    fn sync_all(&self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use sendense_io::AlignedBuf;

    use super::*;

    #[test]
    fn file_storage_direct_and_buffered_writes_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        let s = FileStorage::with_direct_io(file, &path, true);
        // A buffered write, then a direct one over the same range, then a partial buffered one.
        s.write_at(&[1u8; 8192], 0).unwrap();
        let mut b = AlignedBuf::zeroed(2 * DIRECT_ALIGN);
        b.fill(9);
        s.write_data_at(&b, 0).unwrap();
        s.write_data_at(&[5u8; 100], 50).unwrap();
        s.write_data_at(&b, 3 * DIRECT_ALIGN as u64).unwrap();
        let mut out = vec![0u8; 5 * DIRECT_ALIGN];
        read_or_zero(&s, &mut out, 0).unwrap();
        let mut aligned = AlignedBuf::zeroed(6 * DIRECT_ALIGN);
        read_data_or_zero(&s, &mut aligned, 0).unwrap();
        assert_eq!(&aligned[..5 * DIRECT_ALIGN], &out[..]);
        assert!(
            aligned[5 * DIRECT_ALIGN..].iter().all(|&x| x == 0),
            "past the end reads zeros"
        );
        assert!(out[..50].iter().all(|&x| x == 9));
        assert!(out[50..150].iter().all(|&x| x == 5));
        assert!(out[150..2 * DIRECT_ALIGN].iter().all(|&x| x == 9));
        assert!(
            out[2 * DIRECT_ALIGN..3 * DIRECT_ALIGN]
                .iter()
                .all(|&x| x == 0)
        );
        assert!(out[3 * DIRECT_ALIGN..].iter().all(|&x| x == 9));
        assert_eq!(s.file_len().unwrap(), 5 * DIRECT_ALIGN as u64);
        s.sync_all().unwrap();
    }

    /// Whether every page of bytes `offset..offset + len` of `path` is in the page cache.
    ///
    /// Asked with `mincore` on a mapping, which reads nothing: a probing read (even
    /// `RWF_NOWAIT`) may start readahead and pull the very pages it asks about into the cache
    /// when the device answers at once, which made this test fail on a fast disk.
    #[allow(unsafe_code)]
    fn in_page_cache(path: &Path, offset: u64, len: usize) -> bool {
        use std::os::fd::AsRawFd;
        let file = File::open(path).unwrap();
        let file_len = usize::try_from(file.metadata().unwrap().len()).unwrap();
        let offset = usize::try_from(offset).unwrap();
        assert!(offset + len <= file_len, "probe past the end of {path:?}");
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap();
        assert_eq!(offset % page, 0, "probe offsets are page aligned");
        // SAFETY: a fresh read-only shared mapping of a file we hold open, never dereferenced;
        // the kernel chooses the address.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                file_len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(
            map,
            libc::MAP_FAILED,
            "mmap: {}",
            io::Error::last_os_error()
        );
        let mut vec = vec![0u8; len.div_ceil(page)];
        // SAFETY: `map + offset .. + len` lies inside the mapping (checked above, page aligned)
        // and `vec` has one byte per page of that range.
        let r =
            unsafe { libc::mincore(map.cast::<u8>().add(offset).cast(), len, vec.as_mut_ptr()) };
        let err = io::Error::last_os_error();
        // SAFETY: unmaps exactly the mapping made above, which nothing references.
        unsafe { libc::munmap(map, file_len) };
        assert_eq!(r, 0, "mincore: {err}");
        vec.iter().all(|&v| v & 1 == 1)
    }

    /// A temporary folder on a file system with a page cache of its own: on tmpfs (which takes
    /// `O_DIRECT` since Linux 6.6) every byte is always "cached", so the test would say nothing.
    fn page_cache_dir() -> tempfile::TempDir {
        const TMPFS_MAGIC: u64 = 0x0102_1994;
        const RAMFS_MAGIC: u64 = 0x8584_58f6;
        let candidates = [
            std::env::temp_dir(),
            std::path::PathBuf::from("/var/tmp"),
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")),
        ];
        for dir in &candidates {
            let Ok(st) = rustix::fs::statfs(dir) else {
                continue;
            };
            let kind = st.f_type.cast_unsigned();
            if kind != TMPFS_MAGIC && kind != RAMFS_MAGIC {
                return tempfile::tempdir_in(dir).unwrap();
            }
        }
        panic!("this test needs a disk-backed folder; all of {candidates:?} are tmpfs or ramfs");
    }

    fn new_storage(path: &Path, writeback: bool) -> FileStorage {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .unwrap();
        let s = FileStorage::with_direct_io(file, path, true).writeback(writeback);
        assert!(
            s.direct_io(),
            "this test needs a file system that takes O_DIRECT (the temporary folder's does not)"
        );
        s
    }

    #[test]
    fn writeback_storage_writes_small_data_through_the_page_cache_and_large_data_direct() {
        let dir = page_cache_dir();
        let path = dir.path().join("f");
        let s = new_storage(&path, true);
        let mut small = AlignedBuf::zeroed(DIRECT_ALIGN);
        small.fill(3);
        let mut large = AlignedBuf::zeroed(2 * CACHED_WRITE_MAX);
        large.fill(4);

        s.write_data_at(&small, 0).unwrap();
        s.write_data_at(&large, 1 << 20).unwrap();

        assert!(s.is_writeback());
        assert!(
            in_page_cache(&path, 0, DIRECT_ALIGN),
            "the small write is cached"
        );
        assert!(
            !in_page_cache(&path, 1 << 20, DIRECT_ALIGN),
            "the large write went direct"
        );
        s.sync_data().unwrap();
        let mut back = AlignedBuf::zeroed(DIRECT_ALIGN);
        read_data_or_zero(&s, &mut back, 0).unwrap();
        assert!(back.iter().all(|&b| b == 3));
        read_data_or_zero(&s, &mut back, (1 << 20) + CACHED_WRITE_MAX as u64).unwrap();
        assert!(back.iter().all(|&b| b == 4));
    }

    #[test]
    fn writable_storage_without_writeback_writes_small_aligned_data_direct() {
        let dir = page_cache_dir();
        let path = dir.path().join("f");
        let s = new_storage(&path, false);
        let mut small = AlignedBuf::zeroed(DIRECT_ALIGN);
        small.fill(3);

        s.write_data_at(&small, 0).unwrap();

        assert!(!s.is_writeback());
        assert!(!in_page_cache(&path, 0, DIRECT_ALIGN));
    }

    #[test]
    fn read_or_zero_past_end_fills_zeros() {
        let s = MemStorage::new(vec![7; 4]);
        let mut buf = [1u8; 8];
        read_or_zero(&s, &mut buf, 2).unwrap();
        assert_eq!(buf, [7, 7, 0, 0, 0, 0, 0, 0]);
    }
}
