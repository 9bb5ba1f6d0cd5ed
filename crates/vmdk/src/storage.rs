//! Positional, thread-safe access to the files of an image.
//!
//! Every read names its offset (`pread`), so one [`Storage`] serves any
//! number of threads without a lock. Tests use an in-memory implementation.
//! The length is taken once at open; reads beyond it are reported as
//! structured errors by the callers, which check bounds before reading.

use std::fmt::Debug;

use sendense_io::Extent;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::VmdkError;

/// A file of an image, read by position.
pub(crate) trait Storage: Send + Sync + Debug {
    /// Length in bytes, as seen at open.
    fn len(&self) -> u64;
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Path for error messages.
    fn path(&self) -> &Path;
    /// Runs `(offset, len)` inside `[start, end)` that may hold data;
    /// `None` when unknown (then the whole range counts as data).
    fn data_runs(&self, _start: u64, _end: u64) -> Option<Vec<Extent>> {
        None
    }

    /// Reads with the error mapped to [`VmdkError::Io`].
    fn read_at_checked(&self, buf: &mut [u8], offset: u64) -> Result<(), VmdkError> {
        self.read_exact_at(buf, offset)
            .map_err(|e| VmdkError::io(self.path(), e))
    }
}

/// A regular file.
#[derive(Debug)]
pub(crate) struct FileStorage {
    file: File,
    path: PathBuf,
    len: u64,
}

impl FileStorage {
    pub(crate) fn open(path: &Path) -> Result<Self, VmdkError> {
        // O_NONBLOCK: a FIFO named by a hostile descriptor must not block
        // the open; it has no effect on regular files.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| VmdkError::io(path, e))?;
        let meta = file.metadata().map_err(|e| VmdkError::io(path, e))?;
        if !meta.is_file() {
            return Err(VmdkError::NotRegularFile {
                path: path.to_owned(),
            });
        }
        let len = meta.len();
        Ok(Self {
            file,
            path: path.to_owned(),
            len,
        })
    }
}

impl Storage for FileStorage {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn data_runs(&self, start: u64, end: u64) -> Option<Vec<Extent>> {
        sendense_io::sparse::data_runs(&self.file, start, end.min(self.len))
            .inspect_err(|e| {
                tracing::debug!(path = %self.path.display(), error = %e, "SEEK_DATA failed");
            })
            .ok()
    }
}

/// An in-memory file for tests.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct MemStorage {
    pub(crate) bytes: Vec<u8>,
    pub(crate) path: PathBuf,
}

#[cfg(test)]
impl Storage for MemStorage {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start
            .checked_add(buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        let src = self
            .bytes
            .get(start..end)
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn path(&self) -> &Path {
        &self.path
    }
}
