//! The data mover both merges share: guest ranges are copied by a few threads at once, through
//! page-aligned buffers, so the reads and the writes bypass the page cache (see
//! [`crate::storage`]) and several are in flight on the device. A merge then costs about the
//! layer's bytes at the disk's speed: one `pwrite` per piece, no page-cache copy, and a final
//! `fdatasync` with nothing left to write back.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use sendense_io::AlignedBuf;

use crate::error::Qcow2Error;

/// Most bytes in one piece (one read and one write).
pub(crate) const PIECE: u64 = 1 << 20;
/// Threads copying at once: a layer's pieces are often single scattered clusters, so the
/// copy is bound by I/O latency, and more requests in flight keep the device busy.
const WORKERS: usize = 8;
/// Bytes of pieces gathered before they are copied (bounds the piece list).
pub(crate) const BATCH: u64 = 256 << 20;

/// Reads a piece: `(buffer, guest offset)`.
pub(crate) type ReadFn<'a> = dyn Fn(&mut [u8], u64) -> Result<(), Qcow2Error> + Sync + 'a;
/// Writes a piece: `(bytes, guest offset)`.
pub(crate) type WriteFn<'a> = dyn Fn(&[u8], u64) -> Result<(), Qcow2Error> + Sync + 'a;

/// Guest ranges to copy, each at most [`PIECE`] bytes.
#[derive(Debug, Default)]
pub(crate) struct Pieces {
    list: Vec<(u64, u64)>,
    bytes: u64,
}

impl Pieces {
    /// Adds `[offset, offset + len)`, split into pieces.
    pub(crate) fn push(&mut self, offset: u64, len: u64) {
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let n = PIECE.min(end - pos);
            match self.list.last_mut() {
                Some((o, l)) if *o + *l == pos && *l + n <= PIECE => *l += n,
                _ => self.list.push((pos, n)),
            }
            pos += n;
        }
        self.bytes += len;
    }

    /// Bytes gathered.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Copies every piece with `read` then `write`, on up to [`WORKERS`] threads, and empties
    /// the list. Stops at the first error and answers it.
    pub(crate) fn copy(
        &mut self,
        read: &ReadFn<'_>,
        write: &WriteFn<'_>,
    ) -> Result<(), Qcow2Error> {
        let list = std::mem::take(&mut self.list);
        self.bytes = 0;
        if list.is_empty() {
            return Ok(());
        }
        let next = AtomicUsize::new(0);
        let failed: Mutex<Option<Qcow2Error>> = Mutex::new(None);
        let work = || {
            let mut buf = AlignedBuf::zeroed(PIECE as usize);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(offset, len)) = list.get(i) else {
                    return;
                };
                let buf = &mut buf[..len as usize];
                if let Err(e) = read(buf, offset).and_then(|()| write(buf, offset)) {
                    failed
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .get_or_insert(e);
                    next.store(list.len(), Ordering::Relaxed);
                    return;
                }
            }
        };
        let workers = WORKERS.min(list.len());
        std::thread::scope(|s| {
            for _ in 1..workers {
                s.spawn(work);
            }
            work();
        });
        match failed.into_inner().unwrap_or_else(PoisonError::into_inner) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_join_neighbours_and_split_at_the_piece_size() {
        let mut p = Pieces::default();
        p.push(0, 4096);
        p.push(4096, 4096);
        p.push(3 * PIECE, 2 * PIECE + 10);
        assert_eq!(
            p.list,
            vec![
                (0, 8192),
                (3 * PIECE, PIECE),
                (4 * PIECE, PIECE),
                (5 * PIECE, 10)
            ]
        );
        assert_eq!(p.bytes(), 8192 + 2 * PIECE + 10);
    }

    #[test]
    fn the_first_error_stops_the_copy() {
        let mut p = Pieces::default();
        for i in 0..64 {
            p.push(i * PIECE, PIECE);
        }
        let writes = AtomicUsize::new(0);
        let err = p
            .copy(&|_, _| Ok(()), &|_, off| {
                writes.fetch_add(1, Ordering::Relaxed);
                if off == 3 * PIECE {
                    Err(Qcow2Error::NoBacking)
                } else {
                    Ok(())
                }
            })
            .unwrap_err();
        assert!(matches!(err, Qcow2Error::NoBacking));
        assert!(writes.load(Ordering::Relaxed) < 64);
        assert!(p.list.is_empty());
    }
}
