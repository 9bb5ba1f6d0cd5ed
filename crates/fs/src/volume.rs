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

/// A byte range of a disk, or several laid end to end (an LVM2 logical volume's segments).
#[derive(Clone)]
pub(crate) struct Volume {
    disk: Arc<dyn BlockRead>,
    /// `(first byte on the disk, length)` of each piece, in volume order; none empty.
    pieces: Arc<[(u64, u64)]>,
    size: u64,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume")
            .field("pieces", &self.pieces)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Volume {
    /// `size` bytes of `disk` from `start`; `None` when the range is not inside the disk.
    pub(crate) fn new(disk: Arc<dyn BlockRead>, start: u64, size: u64) -> Option<Self> {
        let end = start.checked_add(size)?;
        (end <= disk.size()).then(|| Self {
            disk,
            pieces: if size == 0 {
                Arc::from([])
            } else {
                Arc::from([(start, size)])
            },
            size,
        })
    }

    /// The ranges `(volume, offset, len)` laid end to end, all on the disk of the first;
    /// `None` when one is outside its volume or there are none.
    pub(crate) fn concat(parts: &[(Self, u64, u64)]) -> Option<Self> {
        let disk = parts.first()?.0.disk.clone();
        let mut pieces = Vec::new();
        let mut size = 0u64;
        for (vol, offset, len) in parts {
            if !Arc::ptr_eq(&vol.disk, &disk) || offset.checked_add(*len)? > vol.size {
                return None;
            }
            let (mut at, mut left) = (*offset, *len);
            for (start, piece_len) in vol.pieces.iter().copied() {
                if left == 0 {
                    break;
                }
                if at >= piece_len {
                    at -= piece_len;
                    continue;
                }
                let n = (piece_len - at).min(left);
                pieces.push((start + at, n));
                left -= n;
                at = 0;
            }
            size = size.checked_add(*len)?;
        }
        Some(Self {
            disk,
            pieces: Arc::from(pieces),
            size,
        })
    }

    /// Its size in bytes.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// The first byte of its first piece on the disk.
    pub(crate) fn disk_start(&self) -> u64 {
        self.pieces.first().map_or(0, |p| p.0)
    }

    /// Fills `buf` from `offset` inside the volume; reading past its end is an error.
    pub(crate) fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let len = u64::try_from(buf.len()).map_err(|_| past_end(offset))?;
        let end = offset.checked_add(len).ok_or_else(|| past_end(offset))?;
        if end > self.size {
            return Err(past_end(offset));
        }
        let (mut at, mut buf) = (offset, buf);
        let mut piece_start = 0u64;
        for (disk_start, piece_len) in self.pieces.iter().copied() {
            if buf.is_empty() {
                break;
            }
            let piece_end = piece_start + piece_len;
            if at < piece_end {
                let within = at - piece_start;
                let n = usize::try_from(piece_len - within).map_or(buf.len(), |n| n.min(buf.len()));
                let (now, rest) = buf.split_at_mut(n);
                self.disk.read_at(now, disk_start + within)?;
                buf = rest;
                at += n as u64;
            }
            piece_start = piece_end;
        }
        Ok(())
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
    fn concatenated_volume_reads_across_its_pieces() {
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let disk: Arc<dyn BlockRead> = Arc::new(Mem(bytes.clone()));
        let pv = Volume::new(disk, 1000, 8000).unwrap();
        let lv = Volume::concat(&[(pv.clone(), 5000, 1000), (pv, 100, 300)]).unwrap();
        assert_eq!(lv.size(), 1300);
        let mut buf = vec![0u8; 400];
        lv.read_at(&mut buf, 900).unwrap();
        let mut want = bytes[6900..7000].to_vec();
        want.extend_from_slice(&bytes[1100..1400]);
        assert_eq!(buf, want);
        assert!(lv.read_at(&mut buf, 901).is_err());
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
