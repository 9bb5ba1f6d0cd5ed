//! The small positional-I/O trait the engine runs on, with a file and an in-memory backend.
//!
//! All methods take `&self`: implementations must be safe to call from many threads at once
//! (the file backend uses `pread`/`pwrite`, which are).

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Mutex, PoisonError};

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
}

/// Reads `buf.len()` bytes at `offset`; bytes past the end of the storage read as zero.
pub(crate) fn read_or_zero(s: &dyn Storage, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let n = s.read_at(&mut buf[done..], offset + done as u64)?;
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
        crate::sys::punch_hole(self, offset, len)
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
    use super::*;

    #[test]
    fn read_or_zero_past_end_fills_zeros() {
        let s = MemStorage::new(vec![7; 4]);
        let mut buf = [1u8; 8];
        read_or_zero(&s, &mut buf, 2).unwrap();
        assert_eq!(buf, [7, 7, 0, 0, 0, 0, 0, 0]);
    }
}
