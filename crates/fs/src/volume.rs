//! One partition of a disk as the file system crates want it: positioned reads bounded to the
//! partition ([`Volume`]), and a `Read + Seek` cursor over it with a small cache of aligned
//! chunks ([`VolumeCursor`]), because `ntfs` and `fatfs` read metadata a few bytes at a time
//! and every read of the disk goes through a qcow2 chain.
//!
//! [`ReadOnly`] gives `fatfs` the `Write` it insists on: every write fails, so nothing the
//! library does can change an image.

use std::cell::Cell;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::rc::Rc;
use std::sync::Arc;

use crate::BlockRead;

/// A byte range of a disk.
#[derive(Clone)]
pub(crate) struct Volume {
    disk: Arc<dyn BlockRead>,
    start: u64,
    size: u64,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume")
            .field("start", &self.start)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Volume {
    /// `size` bytes of `disk` from `start`; `None` when the range is not inside the disk.
    pub(crate) fn new(disk: Arc<dyn BlockRead>, start: u64, size: u64) -> Option<Self> {
        let end = start.checked_add(size)?;
        (end <= disk.size()).then_some(Self { disk, start, size })
    }

    /// Its size in bytes.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Fills `buf` from `offset` inside the volume; reading past its end is an error.
    pub(crate) fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let len = u64::try_from(buf.len()).map_err(|_| past_end(offset))?;
        let end = offset.checked_add(len).ok_or_else(|| past_end(offset))?;
        if end > self.size {
            return Err(past_end(offset));
        }
        let at = self
            .start
            .checked_add(offset)
            .ok_or_else(|| past_end(offset))?;
        self.disk.read_at(buf, at)
    }

    /// Reads up to `buf.len()` bytes at `offset`, fewer at the volume's end; answers how many.
    pub(crate) fn read_some(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let left = self.size.saturating_sub(offset);
        if left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let n = usize::try_from(left).map_or(buf.len(), |left| left.min(buf.len()));
        self.read_at(&mut buf[..n], offset)?;
        Ok(n)
    }
}

fn past_end(offset: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("read at {offset} past the end of the partition"),
    )
}

/// Size of one cached chunk.
const CHUNK: usize = 64 * 1024;
/// Chunks kept (512 KiB per open file system).
const CHUNKS: usize = 8;

/// How many bytes the file system library may still read in the current operation, shared by
/// the adapter (which refills it per call) and the cursor (which spends it). A loop in hostile
/// metadata that a library follows forever (a cyclic FAT cluster chain of deleted directory
/// entries, say) ends as [`BudgetExceeded`] instead of hanging the caller.
#[derive(Debug, Clone, Default)]
pub(crate) struct Budget(Rc<Cell<u64>>);

impl Budget {
    /// Allows one operation on `volume_size` bytes, reading `buf_len` bytes for the caller, the
    /// bytes it may cost: 64 × the volume (at least 64 MiB, at most 4 GiB) plus twice `buf_len`.
    pub(crate) fn refill(&self, volume_size: u64, buf_len: usize) {
        let base = volume_size.saturating_mul(64).clamp(64 << 20, 4 << 30);
        self.0
            .set(base.saturating_add((buf_len as u64).saturating_mul(2)));
    }

    fn spend(&self, n: usize) -> io::Result<()> {
        let left = self.0.get();
        let n = n as u64;
        if n > left {
            return Err(io::Error::other(BudgetExceeded));
        }
        self.0.set(left - n);
        Ok(())
    }
}

/// The error a cursor answers once an operation has read more than its [`Budget`].
#[derive(Debug, thiserror::Error)]
#[error("read far more than the operation needs: a loop in the file system's metadata")]
pub(crate) struct BudgetExceeded;

/// A `Read + Seek` cursor over a [`Volume`] with a small round-robin cache of aligned chunks.
#[derive(Debug)]
pub(crate) struct VolumeCursor {
    volume: Volume,
    pos: u64,
    cache: Vec<(u64, Vec<u8>)>,
    next_victim: usize,
    budget: Budget,
}

impl VolumeCursor {
    pub(crate) fn new(volume: Volume, budget: Budget) -> Self {
        budget.refill(volume.size(), 0);
        Self {
            volume,
            pos: 0,
            cache: Vec::with_capacity(CHUNKS),
            next_victim: 0,
            budget,
        }
    }

    /// The volume it reads.
    pub(crate) fn volume(&self) -> &Volume {
        &self.volume
    }

    /// The cached chunk holding byte `offset` (which must be inside the volume).
    fn chunk(&mut self, offset: u64) -> io::Result<&[u8]> {
        let base = offset - offset % CHUNK as u64;
        if let Some(i) = self.cache.iter().position(|(b, _)| *b == base) {
            return Ok(&self.cache[i].1);
        }
        let len = usize::try_from(self.volume.size() - base).map_or(CHUNK, |l| l.min(CHUNK));
        let mut data = vec![0; len];
        self.volume.read_at(&mut data, base)?;
        let slot = if self.cache.len() < CHUNKS {
            self.cache.push((base, data));
            self.cache.len() - 1
        } else {
            let slot = self.next_victim;
            self.next_victim = (slot + 1) % CHUNKS;
            self.cache[slot] = (base, data);
            slot
        };
        Ok(&self.cache[slot].1)
    }
}

impl Read for VolumeCursor {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.pos >= self.volume.size() {
            return Ok(0);
        }
        self.budget.spend(buf.len())?;
        let n = if buf.len() >= CHUNK {
            self.volume.read_some(buf, self.pos)?
        } else {
            let pos = self.pos;
            let chunk = self.chunk(pos)?;
            // `pos % CHUNK` is below CHUNK, and the chunk holds `pos`.
            let within = usize::try_from(pos % CHUNK as u64).unwrap_or(0);
            let avail = &chunk[within.min(chunk.len())..];
            let n = avail.len().min(buf.len());
            buf[..n].copy_from_slice(&avail[..n]);
            n
        };
        self.pos = self.pos.saturating_add(n as u64);
        Ok(n)
    }
}

impl Seek for VolumeCursor {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let bad = || io::Error::new(io::ErrorKind::InvalidInput, "seek out of range");
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.volume.size().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        }
        .ok_or_else(bad)?;
        self.pos = pos;
        Ok(pos)
    }
}

/// A reader whose writes fail: `fatfs` wants `Read + Write + Seek` even to read.
#[derive(Debug)]
pub(crate) struct ReadOnly<T>(pub(crate) T);

impl<T: Read> Read for ReadOnly<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<T: Seek> Seek for ReadOnly<T> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.0.seek(to)
    }
}

impl<T> Write for ReadOnly<T> {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "restore points are read-only",
        ))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Mem(Vec<u8>);

    impl BlockRead for Mem {
        fn size(&self) -> u64 {
            self.0.len() as u64
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            let o = usize::try_from(offset).unwrap();
            buf.copy_from_slice(&self.0[o..o + buf.len()]);
            Ok(())
        }
    }

    #[test]
    fn cursor_reads_across_chunks_and_stops_at_the_end() {
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let disk: Arc<dyn BlockRead> = Arc::new(Mem(bytes.clone()));
        let vol = Volume::new(disk, 1000, 150_000).unwrap();
        let mut c = VolumeCursor::new(vol, Budget::default());
        c.seek(SeekFrom::Start(65_000)).unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        assert_eq!(got, bytes[66_000..151_000]);
    }

    #[test]
    fn volume_outside_the_disk_is_refused() {
        let disk: Arc<dyn BlockRead> = Arc::new(Mem(vec![0; 100]));
        assert!(Volume::new(disk.clone(), 50, 51).is_none());
        assert!(Volume::new(disk, u64::MAX, 2).is_none());
    }

    #[test]
    fn cursor_stops_at_its_budget() {
        let disk: Arc<dyn BlockRead> = Arc::new(Mem(vec![0; 4096]));
        let vol = Volume::new(disk, 0, 4096).unwrap();
        let mut c = VolumeCursor::new(vol, Budget::default());
        let mut buf = [0u8; 32];
        let err = loop {
            c.seek(SeekFrom::Start(0)).unwrap();
            if let Err(e) = c.read(&mut buf) {
                break e;
            }
        };
        assert!(err.get_ref().is_some_and(|e| e.is::<BudgetExceeded>()));
    }

    #[test]
    fn read_only_refuses_writes() {
        assert!(ReadOnly(()).write(b"x").is_err());
    }
}
