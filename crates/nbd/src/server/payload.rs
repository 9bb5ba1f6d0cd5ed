//! READ and WRITE payload buffers of a connection: 4 KiB-aligned (so an export can hand them
//! to `O_DIRECT` reads and writes) and reused (so a connection does not zero and fault in fresh
//! memory for every request). A READ buffer comes back when the last `Bytes` of its reply is
//! written and dropped.

use std::sync::{Arc, Mutex, PoisonError};

use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// Alignment of payload buffers: the page size, which direct I/O accepts everywhere.
pub const PAYLOAD_ALIGN: usize = 4096;

/// Free buffers a connection keeps for reuse; more are dropped when they come back.
const KEEP_FREE: usize = 8;

#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C, align(4096))]
struct Page([u8; PAYLOAD_ALIGN]);

/// A connection's free payload buffers.
#[derive(Clone, Default)]
pub(crate) struct PayloadPool {
    free: Arc<Mutex<Vec<Vec<Page>>>>,
}

impl std::fmt::Debug for PayloadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayloadPool").finish_non_exhaustive()
    }
}

/// One READ or WRITE payload: `len` bytes at the start of page-aligned memory. Returns to its pool when
/// dropped.
pub(crate) struct Payload {
    pages: Vec<Page>,
    len: usize,
    pool: Option<PayloadPool>,
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payload").field("len", &self.len).finish()
    }
}

impl PayloadPool {
    /// A buffer of `len` bytes (contents unspecified: the caller fills all of them).
    pub(crate) fn take(&self, len: usize) -> Payload {
        let mut pages = self
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
            .unwrap_or_default();
        let want = len.div_ceil(PAYLOAD_ALIGN);
        if pages.len() < want {
            pages.resize(want, Page::new_zeroed());
        }
        Payload {
            pages,
            len,
            pool: Some(self.clone()),
        }
    }
}

impl Payload {
    /// No payload.
    pub(crate) const fn empty() -> Self {
        Self {
            pages: Vec::new(),
            len: 0,
            pool: None,
        }
    }

    /// The payload bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.pages.as_bytes()[..self.len]
    }

    /// The payload bytes, to fill.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.pages.as_mut_bytes()[..self.len]
    }
}

impl AsRef<[u8]> for Payload {
    fn as_ref(&self) -> &[u8] {
        self.bytes()
    }
}

impl Drop for Payload {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            let mut free = pool.free.lock().unwrap_or_else(PoisonError::into_inner);
            if free.len() < KEEP_FREE {
                free.push(std::mem::take(&mut self.pages));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_aligned_and_reused() {
        let pool = PayloadPool::default();
        let mut p = pool.take(10_000);
        assert_eq!(p.bytes().len(), 10_000);
        assert_eq!(p.bytes().as_ptr() as usize % PAYLOAD_ALIGN, 0);
        p.bytes_mut().fill(3);
        let addr = p.bytes().as_ptr() as usize;
        drop(p);
        let q = pool.take(5_000);
        assert_eq!(
            q.bytes().as_ptr() as usize,
            addr,
            "the freed buffer is reused"
        );
        assert_eq!(q.bytes().len(), 5_000);
        let r = pool.take(20_000);
        assert_eq!(r.bytes().len(), 20_000);
        assert_eq!(r.bytes().as_ptr() as usize % PAYLOAD_ALIGN, 0);
    }

    #[test]
    fn pool_keeps_a_bounded_number_of_free_buffers() {
        let pool = PayloadPool::default();
        let held: Vec<Payload> = (0..KEEP_FREE + 5).map(|_| pool.take(4096)).collect();
        drop(held);
        assert_eq!(pool.free.lock().unwrap().len(), KEEP_FREE);
        assert!(Payload::empty().bytes().is_empty());
    }
}
