//! Exports: the `Export` trait the server serves and two implementations
//! (`MemoryExport`, `FileExport`); with the `tokio` feature, the
//! `ExportRegistry` shared between the server and its owner.
//!
//! Export methods are synchronous (backends do positional I/O); the server
//! calls them on tokio's blocking pool. Implementations must be safe to call
//! concurrently from many threads: requests of one connection, and of many
//! connections to the same export, run in parallel.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{PoisonError, RwLock};

use crate::wire::Errno;
use sendense_io::sparse as sys;

#[cfg(feature = "tokio")]
mod registry;
#[cfg(feature = "tokio")]
pub use registry::{ConnectionGuard, DEFAULT_DRAIN_TIMEOUT, ExportRegistry, Removal};

/// A block device served over NBD.
pub trait Export: Send + Sync + std::fmt::Debug + 'static {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Whether writes are refused.
    fn is_read_only(&self) -> bool;
    /// Preferred I/O size (power of two, 512 ..= 32 MiB), e.g. the cluster size.
    fn preferred_block_size(&self) -> u32 {
        4096
    }
    /// Whether every call returns without waiting on I/O (a memory export): the server then
    /// runs requests on the connection's own task instead of handing them to tokio's blocking
    /// pool, saving two thread switches per request.
    fn never_blocks(&self) -> bool {
        false
    }
    /// Whether FLUSH/FUA on one connection covers writes of all connections.
    fn can_multi_conn(&self) -> bool {
        true
    }
    /// Reads `buf.len()` bytes at `offset` (the range is within `size`).
    ///
    /// # Errors
    /// Backend failure.
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), ExportError>;
    /// Reads like [`Export::read`], but only if that needs no waiting on I/O or on locks (the
    /// bytes are already in memory); `None` when it would wait (`buf` may then hold anything).
    /// The server tries it on the connection's own task for small READs before handing them
    /// to the blocking pool, saving the two thread switches of that hop for cached data. The
    /// default never answers.
    fn read_now(&self, offset: u64, buf: &mut [u8]) -> Option<Result<(), ExportError>> {
        let _ = (offset, buf);
        None
    }
    /// Writes `data` at `offset`.
    ///
    /// `fua` marks a Force Unit Access request. The server owns FUA: after a FUA
    /// WRITE, TRIM or WRITE_ZEROES succeeds it calls [`Export::flush`] exactly once
    /// before it replies. An export therefore must not flush for `fua` itself (that
    /// would flush twice); the flag is a hint only.
    ///
    /// # Errors
    /// Backend failure.
    fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), ExportError>;
    /// Makes `len` bytes at `offset` read as zeroes. For `flags.fua` the server
    /// flushes afterwards (see [`Export::write`]).
    ///
    /// # Errors
    /// Backend failure; `not_supported` when `flags.fast_zero` and zeroing would be slow.
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> Result<(), ExportError>;
    /// Hint that `len` bytes at `offset` are unused (contents become unspecified). For
    /// `fua` the server flushes afterwards (see [`Export::write`]).
    ///
    /// # Errors
    /// Backend failure.
    fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<(), ExportError>;
    /// Makes every completed write durable.
    ///
    /// # Errors
    /// Backend failure.
    fn flush(&self) -> Result<(), ExportError>;
    /// Allocation status from `offset`: at least one extent, contiguous, starting at `offset`.
    ///
    /// # Errors
    /// Backend failure.
    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<BlockExtent>, ExportError>;
}

/// Flags of a WRITE_ZEROES request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ZeroFlags {
    /// The range may be deallocated (the client did not send `NO_HOLE`).
    pub may_trim: bool,
    /// Fail with `not_supported` rather than zero slowly (`FAST_ZERO`).
    pub fast_zero: bool,
    /// Durable on return (`FUA`).
    pub fua: bool,
}

/// One extent of block status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockExtent {
    /// Length in bytes.
    pub length: u64,
    /// Unallocated (`NBD_STATE_HOLE`).
    pub hole: bool,
    /// Reads as zeroes (`NBD_STATE_ZERO`).
    pub zero: bool,
}

/// An export operation's failure, carrying the NBD error to report.
///
/// This is not a second error type of the crate but the value an [`Export`] hands
/// the server: the NBD error number (`errno`) the client is sent, and the cause for
/// the logs. Failures of the crate itself are [`crate::NbdError`].
#[derive(Debug, thiserror::Error)]
#[error("Export operation failed with {errno}")]
pub struct ExportError {
    errno: Errno,
    #[source]
    source: Option<io::Error>,
}

impl ExportError {
    /// From an I/O error, mapping its kind to an NBD error value.
    #[must_use]
    pub fn io(e: io::Error) -> Self {
        let errno = match e.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG) => Errno::NoSpc,
            Some(libc::EROFS | libc::EPERM | libc::EACCES) => Errno::Perm,
            Some(libc::EOPNOTSUPP) => Errno::NotSup,
            _ => match e.kind() {
                io::ErrorKind::StorageFull
                | io::ErrorKind::QuotaExceeded
                | io::ErrorKind::FileTooLarge => Errno::NoSpc,
                io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => Errno::Perm,
                io::ErrorKind::InvalidInput | io::ErrorKind::UnexpectedEof => Errno::Inval,
                io::ErrorKind::OutOfMemory => Errno::NoMem,
                io::ErrorKind::Unsupported => Errno::NotSup,
                _ => Errno::Io,
            },
        };
        Self {
            errno,
            source: Some(e),
        }
    }

    /// Invalid request (`EINVAL`).
    #[must_use]
    pub const fn invalid() -> Self {
        Self {
            errno: Errno::Inval,
            source: None,
        }
    }

    /// Write to a read-only export (`EPERM`).
    #[must_use]
    pub const fn read_only() -> Self {
        Self {
            errno: Errno::Perm,
            source: None,
        }
    }

    /// Operation not supported, e.g. a fast zero that would be slow (`ENOTSUP`).
    #[must_use]
    pub const fn not_supported() -> Self {
        Self {
            errno: Errno::NotSup,
            source: None,
        }
    }

    /// Generic I/O failure (`EIO`).
    #[must_use]
    pub const fn io_failed() -> Self {
        Self {
            errno: Errno::Io,
            source: None,
        }
    }

    /// The NBD error value to report.
    #[must_use]
    pub const fn errno(&self) -> Errno {
        self.errno
    }
}

impl From<io::Error> for ExportError {
    fn from(e: io::Error) -> Self {
        Self::io(e)
    }
}

// ---------------------------------------------------------------- memory

const SHARD: u64 = 1024 * 1024;

/// An in-memory export, allocated lazily in 1 MiB shards, each behind its own lock.
#[derive(Debug)]
pub struct MemoryExport {
    size: u64,
    read_only: bool,
    shards: Vec<RwLock<Option<Box<[u8]>>>>,
}

impl MemoryExport {
    /// A zero-filled export of `size` bytes (no memory used until written).
    ///
    /// # Panics
    /// If `size` needs more shards than fit in memory on this platform.
    #[must_use]
    pub fn new(size: u64) -> Self {
        let n = usize::try_from(size.div_ceil(SHARD)).expect("shard count fits usize");
        let shards = (0..n).map(|_| RwLock::new(None)).collect();
        Self {
            size,
            read_only: false,
            shards,
        }
    }

    /// An export holding `data` (its length is the size).
    #[must_use]
    pub fn with_data(data: &[u8]) -> Self {
        let e = Self::new(data.len() as u64);
        if !data.is_empty() {
            // In-bounds by construction.
            let _ = e.write(0, data, false);
        }
        e
    }

    /// Makes the export read-only.
    #[must_use]
    pub const fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), ExportError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(ExportError::invalid()),
        }
    }

    /// Calls `f(shard index, offset in shard, byte range relative to `offset`)`.
    fn for_each_shard(
        offset: u64,
        len: u64,
        mut f: impl FnMut(usize, usize, std::ops::Range<usize>) -> Result<(), ExportError>,
    ) -> Result<(), ExportError> {
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let idx = usize::try_from(pos / SHARD).map_err(|_| ExportError::invalid())?;
            let in_shard = pos % SHARD;
            let n = (SHARD - in_shard).min(end - pos);
            let rel = usize::try_from(pos - offset).map_err(|_| ExportError::invalid())?;
            let n_us = usize::try_from(n).map_err(|_| ExportError::invalid())?;
            #[allow(clippy::cast_possible_truncation)] // < SHARD
            f(idx, in_shard as usize, rel..rel + n_us)?;
            pos += n;
        }
        Ok(())
    }

    fn zero(&self, offset: u64, len: u64, dealloc: bool) -> Result<(), ExportError> {
        Self::for_each_shard(offset, len, |idx, at, range| {
            let mut shard = self.shards[idx]
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            if dealloc && at == 0 && range.len() as u64 == SHARD {
                *shard = None;
            } else if let Some(s) = shard.as_mut() {
                s[at..at + range.len()].fill(0);
            }
            Ok(())
        })
    }
}

impl Export for MemoryExport {
    fn size(&self) -> u64 {
        self.size
    }

    fn never_blocks(&self) -> bool {
        true
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), ExportError> {
        self.check(offset, buf.len() as u64)?;
        Self::for_each_shard(offset, buf.len() as u64, |idx, at, range| {
            let shard = self.shards[idx]
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            let n = range.len();
            match shard.as_ref() {
                Some(s) => buf[range].copy_from_slice(&s[at..at + n]),
                None => buf[range].fill(0),
            }
            Ok(())
        })
    }

    fn write(&self, offset: u64, data: &[u8], _fua: bool) -> Result<(), ExportError> {
        if self.read_only {
            return Err(ExportError::read_only());
        }
        self.check(offset, data.len() as u64)?;
        Self::for_each_shard(offset, data.len() as u64, |idx, at, range| {
            let mut shard = self.shards[idx]
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            #[allow(clippy::cast_possible_truncation)] // SHARD is 1 MiB
            let s = shard.get_or_insert_with(|| vec![0u8; SHARD as usize].into_boxed_slice());
            let n = range.len();
            s[at..at + n].copy_from_slice(&data[range]);
            Ok(())
        })
    }

    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> Result<(), ExportError> {
        if self.read_only {
            return Err(ExportError::read_only());
        }
        self.check(offset, len)?;
        self.zero(offset, len, flags.may_trim)
    }

    fn trim(&self, offset: u64, len: u64, _fua: bool) -> Result<(), ExportError> {
        if self.read_only {
            return Err(ExportError::read_only());
        }
        self.check(offset, len)?;
        self.zero(offset, len, true)
    }

    fn flush(&self) -> Result<(), ExportError> {
        Ok(())
    }

    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<BlockExtent>, ExportError> {
        self.check(offset, len)?;
        let mut out: Vec<BlockExtent> = Vec::new();
        Self::for_each_shard(offset, len, |idx, _, range| {
            let hole = self.shards[idx]
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .is_none();
            push_extent(&mut out, range.len() as u64, hole, hole);
            Ok(())
        })?;
        Ok(out)
    }
}

/// Appends an extent, merging with the previous one when the status matches.
fn push_extent(out: &mut Vec<BlockExtent>, length: u64, hole: bool, zero: bool) {
    if let Some(last) = out.last_mut()
        && last.hole == hole
        && last.zero == zero
    {
        last.length += length;
        return;
    }
    out.push(BlockExtent { length, hole, zero });
}

// ---------------------------------------------------------------- file

/// Most extents one `block_status` call of a `FileExport` reports.
const MAX_FILE_EXTENTS: usize = 1024;

/// A raw file served as an export, with positional I/O.
#[derive(Debug)]
pub struct FileExport {
    file: File,
    size: u64,
    read_only: bool,
}

impl FileExport {
    /// Opens an existing file; its current length is the export size.
    ///
    /// # Errors
    /// Opening or stat'ing the file failed.
    pub fn open(path: impl AsRef<Path>, read_only: bool) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            file,
            size,
            read_only,
        })
    }

    /// Creates (or truncates) a sparse file of `size` bytes.
    ///
    /// # Errors
    /// Creating or sizing the file failed.
    pub fn create(path: impl AsRef<Path>, size: u64) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        file.set_len(size)?;
        Ok(Self {
            file,
            size,
            read_only: false,
        })
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), ExportError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(ExportError::invalid()),
        }
    }

    fn check_write(&self, offset: u64, len: u64) -> Result<(), ExportError> {
        if self.read_only {
            return Err(ExportError::read_only());
        }
        self.check(offset, len)
    }

    fn write_zero_bytes(&self, offset: u64, len: u64) -> Result<(), ExportError> {
        const CHUNK: u64 = 1024 * 1024;
        let zeroes =
            vec![0u8; usize::try_from(CHUNK.min(len)).map_err(|_| ExportError::invalid())?];
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let n = usize::try_from(CHUNK.min(end - pos)).map_err(|_| ExportError::invalid())?;
            self.file.write_all_at(&zeroes[..n], pos)?;
            pos += n as u64;
        }
        Ok(())
    }
}

impl Export for FileExport {
    fn size(&self) -> u64 {
        self.size
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), ExportError> {
        self.check(offset, buf.len() as u64)?;
        self.file.read_exact_at(buf, offset)?;
        Ok(())
    }

    // `fua` is the server's: it calls `flush` once after the write (one `sync_data`).
    fn write(&self, offset: u64, data: &[u8], _fua: bool) -> Result<(), ExportError> {
        self.check_write(offset, data.len() as u64)?;
        self.file.write_all_at(data, offset)?;
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> Result<(), ExportError> {
        self.check_write(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let fast = if flags.may_trim {
            sys::punch_hole(&self.file, offset, len)
        } else {
            sys::zero_range(&self.file, offset, len)
        };
        match fast {
            Ok(()) => {}
            Err(_) if flags.fast_zero => return Err(ExportError::not_supported()),
            Err(_) => self.write_zero_bytes(offset, len)?,
        }
        Ok(())
    }

    fn trim(&self, offset: u64, len: u64, _fua: bool) -> Result<(), ExportError> {
        self.check_write(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        // A hint: a file system without hole punching simply keeps the data.
        let _ = sys::punch_hole(&self.file, offset, len);
        Ok(())
    }

    fn flush(&self) -> Result<(), ExportError> {
        self.file.sync_data()?;
        Ok(())
    }

    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<BlockExtent>, ExportError> {
        self.check(offset, len)?;
        let end = offset + len;
        let mut out = Vec::new();
        let mut pos = offset;
        while pos < end && out.len() < MAX_FILE_EXTENTS {
            let data = match sys::seek_data(&self.file, pos) {
                Ok(d) => d,
                // No SEEK_DATA on this file system: report everything as data.
                Err(_) if out.is_empty() => {
                    return Ok(vec![BlockExtent {
                        length: len,
                        hole: false,
                        zero: false,
                    }]);
                }
                Err(e) => return Err(e.into()),
            };
            match data {
                Some(d) if d <= pos => {
                    let hole = sys::seek_hole(&self.file, pos)?.clamp(pos + 1, end);
                    push_extent(&mut out, hole - pos, false, false);
                    pos = hole;
                }
                Some(d) => {
                    let next = d.min(end);
                    push_extent(&mut out, next - pos, true, true);
                    pos = next;
                }
                None => {
                    push_extent(&mut out, end - pos, true, true);
                    pos = end;
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    #[test]
    fn memory_export_write_read_round_trip() {
        let e = MemoryExport::new(3 * SHARD);
        let data: Vec<u8> = (0..2 * SHARD + 17).map(|i| (i % 251) as u8).collect();
        e.write(100, &data, false).unwrap();
        let mut back = vec![0u8; data.len()];
        e.read(100, &mut back).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn memory_export_block_status_unwritten_is_hole() {
        let e = MemoryExport::new(4 * SHARD);
        e.write(SHARD, &[1], false).unwrap();
        let ext = e.block_status(0, 4 * SHARD).unwrap();
        assert_eq!(
            ext,
            vec![
                BlockExtent {
                    length: SHARD,
                    hole: true,
                    zero: true
                },
                BlockExtent {
                    length: SHARD,
                    hole: false,
                    zero: false
                },
                BlockExtent {
                    length: 2 * SHARD,
                    hole: true,
                    zero: true
                },
            ]
        );
    }

    #[test]
    fn memory_export_read_only_write_eperm() {
        let e = MemoryExport::new(SHARD).read_only();
        assert_eq!(e.write(0, &[1], false).unwrap_err().errno(), Errno::Perm);
    }

    #[test]
    fn memory_export_past_end_einval() {
        let e = MemoryExport::new(SHARD);
        let mut b = [0u8; 2];
        assert_eq!(e.read(SHARD - 1, &mut b).unwrap_err().errno(), Errno::Inval);
    }

    #[test]
    fn file_export_block_status_sparse_file_reports_holes() {
        let dir = tempfile::tempdir().unwrap();
        let e = FileExport::create(dir.path().join("f"), 8 * SHARD).unwrap();
        e.write(4 * SHARD, &vec![7u8; SHARD as usize], false)
            .unwrap();
        let ext = e.block_status(0, 8 * SHARD).unwrap();
        assert_eq!(ext.iter().map(|x| x.length).sum::<u64>(), 8 * SHARD);
        assert!(ext.iter().any(|x| x.hole) && ext.iter().any(|x| !x.hole));
    }

    #[test]
    fn file_export_write_zeroes_reads_zero() {
        let dir = tempfile::tempdir().unwrap();
        let e = FileExport::create(dir.path().join("f"), SHARD).unwrap();
        e.write(0, &vec![9u8; SHARD as usize], false).unwrap();
        e.write_zeroes(4096, 8192, ZeroFlags::default()).unwrap();
        let mut b = vec![1u8; 8192];
        e.read(4096, &mut b).unwrap();
        assert!(sendense_io::is_zero(&b));
    }

    #[test]
    fn export_error_storage_full_maps_enospc() {
        let e = ExportError::io(io::Error::from(io::ErrorKind::StorageFull));
        assert_eq!(e.errno(), Errno::NoSpc);
    }
}
