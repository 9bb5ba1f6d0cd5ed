//! The hostile disk both `sendense-fs` targets read, and the panic policy they share.
//!
//! Layout of the input: bytes 0..3 give the disk size in 512-byte sectors (at most 2^17: 64
//! MiB); the rest is split in two halves, the first written at the disk's start, the second
//! ending at the disk's end (where the backup GPT lives); every other byte reads as zero.

use std::sync::{Arc, Once};

use sendense_fs::BlockRead;

/// A mostly-zero disk built from fuzz input.
pub struct FuzzDisk {
    size: u64,
    head: Vec<u8>,
    tail: Vec<u8>,
}

impl BlockRead for FuzzDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|e| *e <= self.size)
            .ok_or_else(|| std::io::Error::other("read past the end of the disk"))?;
        buf.fill(0);
        copy_overlap(buf, offset, end, &self.head, 0);
        copy_overlap(buf, offset, end, &self.tail, self.size - self.tail.len() as u64);
        Ok(())
    }
}

/// Copies the part of `src` (placed at disk offset `at`) that overlaps `[offset, end)`.
fn copy_overlap(buf: &mut [u8], offset: u64, end: u64, src: &[u8], at: u64) {
    let from = offset.max(at);
    let to = end.min(at + src.len() as u64);
    if from < to {
        let n = (to - from) as usize;
        let b = (from - offset) as usize;
        let s = (from - at) as usize;
        buf[b..b + n].copy_from_slice(&src[s..s + n]);
    }
}

/// The disk `data` describes, or `None` when it is too short.
pub fn disk(data: &[u8]) -> Option<Arc<dyn BlockRead>> {
    let (size, body) = data.split_first_chunk::<3>()?;
    let sectors = u64::from(u32::from_le_bytes([size[0], size[1], size[2], 0]) & 0x1_ffff);
    let (head, tail) = body.split_at(body.len() / 2);
    let size = (sectors * 512).max((head.len() + tail.len()) as u64);
    Some(Arc::new(FuzzDisk {
        size,
        head: head.to_vec(),
        tail: tail.to_vec(),
    }))
}

/// Aborts (a crash) on a panic in our code; a panic inside a third-party file system crate
/// is contained by `sendense-fs`'s guard and turned into an error, so it is let through to
/// be caught there.
pub fn panic_policy() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let third_party = info
                .location()
                .is_some_and(|l| l.file().contains("/.cargo/registry/"));
            if !third_party {
                default(info);
                std::process::abort();
            }
        }));
    });
}
