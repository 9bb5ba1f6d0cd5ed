//! Fuzz `VmdkImage::open` on hostile files.
//!
//! Byte 0 picks the layout. Even: the rest is one file (`disk.vmdk`: a
//! sparse/stream-optimized extent or a text descriptor). Odd: bytes 1-2 give
//! a split point; the first part is a descriptor (`disk.vmdk`), the second
//! an extent file `x.vmdk` it may name. An image that opens is read at a few
//! ranges and asked for its allocated extents; every outcome must be a
//! value, never a panic, hang or huge allocation.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sendense_vmdk::VmdkImage;

fn work_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vmdk-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create fuzz work dir");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let dir = work_dir();
    let disk = dir.join("disk.vmdk");
    let extent = dir.join("x.vmdk");
    let _ = std::fs::remove_file(&extent);
    if mode % 2 == 0 {
        std::fs::write(&disk, body).expect("write disk");
    } else {
        let split = body
            .get(..2)
            .map_or(0, |b| usize::from(u16::from_le_bytes([b[0], b[1]])))
            .min(body.len().saturating_sub(2));
        let rest = body.get(2..).unwrap_or_default();
        std::fs::write(&disk, &rest[..split]).expect("write descriptor");
        std::fs::write(&extent, &rest[split..]).expect("write extent");
    }
    let Ok(img) = VmdkImage::open(&disk) else {
        return;
    };
    let size = img.size();
    let mut buf = vec![0u8; 65536];
    for offset in [0, size / 2, size.saturating_sub(4096), size.saturating_sub(1)] {
        let len = usize::try_from(size.saturating_sub(offset).min(65536)).unwrap_or(0);
        let _ = img.read_at(&mut buf[..len], offset);
    }
    let _ = img.read_at(&mut buf[..1], size);
    if let Ok(runs) = img.allocated_extents() {
        for run in runs.into_iter().take(4) {
            let n = usize::try_from(run.length.min(65536)).unwrap_or(0);
            let _ = img.read_at(&mut buf[..n], run.offset);
        }
    }
});
