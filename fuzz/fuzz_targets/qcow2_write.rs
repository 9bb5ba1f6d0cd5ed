//! Fuzz target: the writable QCOW2 open and write path, in memory.
//!
//! Input: `[mode] [n] [n ops of 9 bytes] [rest]`. Mode bit 0 chooses the image: a fresh image
//! made by our engine (bits 1-2 pick its geometry) with `rest` applied as patches
//! (`offset:u24, value:u8`), or `rest` itself as the image. The image is opened writable from
//! memory, the ops (write, write zeroes, discard, flush, read) run against it, then it is
//! checked, flushed, dropped and reopened read-only and checked again. Errors are fine; a panic,
//! a hang or an unbounded allocation is a bug.
#![no_main]

use std::io;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use sendense_qcow2::{CreateOptions, Image, MemStorage, OpenOptions, Storage};

/// Largest data written or read by one op.
const MAX_IO: u64 = 256 * 1024;
/// Largest range zeroed or discarded by one op (metadata only, but batches cost time).
const MAX_ZERO: u64 = 8 << 20;
/// Most ops per input.
const MAX_OPS: usize = 32;
/// Most patches applied to a template.
const MAX_PATCHES: usize = 64;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Some((&n, rest)) = rest.split_first() else {
        return;
    };
    let n = usize::from(n).min(MAX_OPS);
    let Some((ops, rest)) = rest.split_at_checked(n * 9) else {
        return;
    };
    let image = if mode & 1 == 1 {
        let mut bytes = templates()[usize::from(mode >> 1) % 3].clone();
        for p in rest.chunks_exact(4).take(MAX_PATCHES) {
            let at = (usize::from(p[0]) << 16 | usize::from(p[1]) << 8 | usize::from(p[2]))
                % bytes.len();
            bytes[at] = p[3];
        }
        bytes
    } else {
        rest.to_vec()
    };
    let shared = Arc::new(MemStorage::new(image));
    let Ok(img) = Image::open_storage(
        Box::new(Shared(Arc::clone(&shared))),
        &OpenOptions::writable(),
    ) else {
        return;
    };
    let size = img.virtual_size();
    for op in ops.chunks_exact(9) {
        let kind = op[0] % 5;
        let offset = u64::from(u32::from_le_bytes([op[1], op[2], op[3], op[4]])) * 512;
        let offset = if size == 0 { 0 } else { offset % size };
        let len = u64::from(u32::from_le_bytes([op[5], op[6], op[7], op[8]]));
        let room = size - offset;
        match kind {
            0 => {
                let len = len.min(MAX_IO).min(room) as usize;
                let _ = img.write_at(&vec![op[8] | 1; len], offset);
            }
            1 => {
                let _ = img.write_zeroes(offset, len.min(MAX_ZERO).min(room));
            }
            2 => {
                let _ = img.discard(offset, len.min(MAX_ZERO).min(room));
            }
            3 => {
                let _ = img.flush();
            }
            _ => {
                let mut buf = vec![0u8; len.min(MAX_IO).min(room) as usize];
                let _ = img.read_at(&mut buf, offset);
            }
        }
    }
    let _ = img.check();
    let _ = img.block_status(0, size.min(1 << 30));
    let flushed = img.flush().is_ok();
    drop(img);
    let again = Image::open_storage(
        Box::new(MemStorage::new(shared.to_vec())),
        &OpenOptions::read_only(),
    );
    if flushed && mode & 1 == 1 && rest.is_empty() {
        // A template the ops alone changed must stay a clean, openable image.
        let report = again
            .expect("an image our engine wrote reopens")
            .check()
            .expect("an image our engine wrote can be checked");
        assert!(report.is_clean(), "ops left a damaged image: {report:?}");
    } else if let Ok(again) = again {
        let _ = again.check();
    }
});

/// Fresh images of three geometries, each with some data: 64 KiB clusters, 512-byte clusters,
/// 16 KiB clusters with extended L2.
fn templates() -> &'static [Vec<u8>; 3] {
    static T: OnceLock<[Vec<u8>; 3]> = OnceLock::new();
    T.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("sendense-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let make = |name: &str, opts: CreateOptions| {
            let path = dir.join(name);
            let _ = std::fs::remove_file(&path);
            let img = Image::create(&path, &opts).expect("create template");
            img.write_at(&[0x5a; 70_000], 1000).expect("write template");
            img.write_at(&[0xa5; 4096], 3 << 20).expect("write template");
            img.flush().expect("flush template");
            drop(img);
            let bytes = std::fs::read(&path).expect("read template");
            let _ = std::fs::remove_file(&path);
            bytes
        };
        let t = [
            make("a.qcow2", CreateOptions::new(4 << 20)),
            make("b.qcow2", CreateOptions::new(4 << 20).cluster_size(512)),
            make(
                "c.qcow2",
                CreateOptions::new(4 << 20)
                    .cluster_size(16384)
                    .extended_l2(true),
            ),
        ];
        let _ = std::fs::remove_dir(&dir);
        t
    })
}

/// A storage shared with the fuzz target, so the bytes survive the image.
#[derive(Debug)]
struct Shared(Arc<MemStorage>);

impl Storage for Shared {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.0.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_at(buf, offset)
    }
    fn file_len(&self) -> io::Result<u64> {
        self.0.file_len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn sync_all(&self) -> io::Result<()> {
        self.0.sync_all()
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.0.punch_hole(offset, len)
    }
}
