//! Page-aligned buffers and the one pool of them.
//!
//! [`AlignedBuf`] starts on a page boundary, so a buffer read from the network or a disk can go
//! to an `O_DIRECT` write (and come from an `O_DIRECT` read) without another copy. [`BufPool`]
//! keeps a bounded number of freed buffers so a busy connection or transfer does not zero and
//! fault in fresh memory for every request; it never limits how many buffers exist (callers
//! that must bound memory hold a semaphore permit beside each buffer).

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, PoisonError};

use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// The alignment of every [`AlignedBuf`]: the page size, which direct I/O accepts everywhere.
pub const PAGE_SIZE: usize = 4096;

/// One page, aligned to [`PAGE_SIZE`].
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C, align(4096))]
struct Page([u8; PAGE_SIZE]);

/// A byte buffer whose start is aligned to [`PAGE_SIZE`]. Dereferences to `[u8]` of its
/// current length.
#[derive(Clone, Default)]
pub struct AlignedBuf {
    pages: Vec<Page>,
    len: usize,
}

impl fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .finish()
    }
}

impl AlignedBuf {
    /// `len` zero bytes.
    #[must_use]
    pub fn zeroed(len: usize) -> Self {
        let mut b = Self::default();
        b.resize(len);
        b
    }

    /// Sets the length to `len`. Growing exposes zeros or bytes left from an earlier, longer
    /// use of this buffer (callers overwrite them); the allocation is kept when shrinking.
    pub fn resize(&mut self, len: usize) {
        let pages = len.div_ceil(PAGE_SIZE);
        if pages > self.pages.len() {
            self.pages.resize(pages, Page::new_zeroed());
        }
        self.len = len;
    }

    /// Bytes the buffer holds without reallocating.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.pages.len() * PAGE_SIZE
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.pages.as_bytes()[..self.len]
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.pages.as_mut_bytes()[..self.len]
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

/// Whether I/O of `buf` at `offset` meets the direct-I/O alignment: start, length and offset
/// all multiples of [`PAGE_SIZE`], and not empty.
#[must_use]
pub fn is_direct_aligned(buf: &[u8], offset: u64) -> bool {
    (buf.as_ptr() as usize).is_multiple_of(PAGE_SIZE)
        && buf.len().is_multiple_of(PAGE_SIZE)
        && !buf.is_empty()
        && offset.is_multiple_of(PAGE_SIZE as u64)
}

/// Freed [`AlignedBuf`]s kept for reuse. Cloning shares the pool.
#[derive(Clone)]
pub struct BufPool {
    free: Arc<Mutex<Vec<AlignedBuf>>>,
    keep: usize,
}

impl fmt::Debug for BufPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufPool")
            .field("keep", &self.keep)
            .finish_non_exhaustive()
    }
}

impl BufPool {
    /// A pool that keeps at most `keep` freed buffers; more are dropped when they come back.
    #[must_use]
    pub fn new(keep: usize) -> Self {
        Self {
            free: Arc::default(),
            keep,
        }
    }

    /// A buffer of `len` bytes (contents unspecified: the caller fills all of them), reused
    /// from the pool when one is free. It comes back to the pool when dropped.
    #[must_use]
    pub fn take(&self, len: usize) -> PooledBuf {
        PooledBuf {
            buf: self.get(len),
            pool: Some(self.clone()),
        }
    }

    /// A buffer of `len` bytes to own outright (contents unspecified), reused from the pool
    /// when one is free; [`Self::put`] gives it back. For callers that move the buffer through
    /// APIs taking an [`AlignedBuf`] by value.
    #[must_use]
    pub fn get(&self, len: usize) -> AlignedBuf {
        let mut buf = self
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
            .unwrap_or_default();
        buf.resize(len);
        buf
    }

    /// Gives `buf` back for reuse (dropped when the pool already keeps enough).
    pub fn put(&self, buf: AlignedBuf) {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        if free.len() < self.keep {
            free.push(buf);
        }
    }

    /// Freed buffers waiting for reuse.
    #[must_use]
    pub fn free_count(&self) -> usize {
        self.free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// An [`AlignedBuf`] on loan from a [`BufPool`], given back when dropped.
pub struct PooledBuf {
    buf: AlignedBuf,
    pool: Option<BufPool>,
}

impl fmt::Debug for PooledBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledBuf")
            .field("len", &self.buf.len)
            .finish()
    }
}

impl PooledBuf {
    /// An empty buffer that belongs to no pool.
    #[must_use]
    pub const fn empty() -> Self {
        Self {
            buf: AlignedBuf {
                pages: Vec::new(),
                len: 0,
            },
            pool: None,
        }
    }
}

impl Deref for PooledBuf {
    type Target = AlignedBuf;
    fn deref(&self) -> &AlignedBuf {
        &self.buf
    }
}

impl DerefMut for PooledBuf {
    fn deref_mut(&mut self) -> &mut AlignedBuf {
        &mut self.buf
    }
}

impl AsRef<[u8]> for PooledBuf {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.put(std::mem::take(&mut self.buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buf_is_aligned_and_keeps_its_allocation() {
        let mut b = AlignedBuf::zeroed(10_000);
        assert_eq!(b.len(), 10_000);
        assert_eq!(b.as_ptr() as usize % PAGE_SIZE, 0);
        assert!(b.iter().all(|&x| x == 0));
        assert_eq!(b.capacity(), 3 * PAGE_SIZE);
        b[9_999] = 7;
        b.resize(100);
        assert_eq!(b.len(), 100);
        assert_eq!(b.capacity(), 3 * PAGE_SIZE);
        b.resize(20_000);
        assert_eq!(b.len(), 20_000);
        assert_eq!(b[9_999], 7, "growing keeps what the allocation held");
        assert_eq!(b.as_ptr() as usize % PAGE_SIZE, 0);
    }

    #[test]
    fn direct_alignment_needs_start_length_and_offset() {
        let b = AlignedBuf::zeroed(2 * PAGE_SIZE);
        assert!(is_direct_aligned(&b, 0));
        assert!(is_direct_aligned(&b, 8192));
        assert!(!is_direct_aligned(&b, 512));
        assert!(!is_direct_aligned(&b[..100], 0));
        assert!(!is_direct_aligned(&b[PAGE_SIZE..PAGE_SIZE], 0));
        assert!(!is_direct_aligned(&b[1..=PAGE_SIZE], 0));
        assert!(!is_direct_aligned(&b[..=PAGE_SIZE], 0));
    }

    #[test]
    fn pooled_buffers_are_aligned_and_reused() {
        let pool = BufPool::new(8);
        let mut p = pool.take(10_000);
        assert_eq!(p.len(), 10_000);
        assert_eq!(p.as_ptr() as usize % PAGE_SIZE, 0);
        p.fill(3);
        let addr = p.as_ptr() as usize;
        drop(p);
        let q = pool.take(5_000);
        assert_eq!(q.as_ptr() as usize, addr, "the freed buffer is reused");
        assert_eq!(q.len(), 5_000);
        let r = pool.take(20_000);
        assert_eq!(r.len(), 20_000);
        assert_eq!(r.as_ptr() as usize % PAGE_SIZE, 0);
    }

    #[test]
    fn pool_keeps_a_bounded_number_of_free_buffers() {
        let pool = BufPool::new(8);
        let held: Vec<PooledBuf> = (0..13).map(|_| pool.take(4096)).collect();
        drop(held);
        assert_eq!(pool.free_count(), 8);
        assert!(PooledBuf::empty().is_empty());
        let owned: Vec<AlignedBuf> = (0..3).map(|_| pool.get(100)).collect();
        assert_eq!(pool.free_count(), 5, "get takes from the free list");
        owned.into_iter().for_each(|b| pool.put(b));
        pool.put(AlignedBuf::zeroed(1));
        assert_eq!(pool.free_count(), 8, "put keeps at most `keep`");
    }
}
