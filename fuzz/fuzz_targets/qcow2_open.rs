//! Fuzz target: open arbitrary bytes as a QCOW2 image (in memory, read-only), read a few
//! ranges, query block status and run the consistency check. Must never panic or hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sendense_qcow2::{Image, MemStorage, OpenOptions};

fuzz_target!(|data: &[u8]| {
    let storage = Box::new(MemStorage::new(data.to_vec()));
    let Ok(img) = Image::open_storage(storage, &OpenOptions::read_only()) else {
        return;
    };
    let size = img.virtual_size();
    let cs = img.cluster_size();
    let mut buf = vec![0u8; 64 * 1024];
    for start in [0, cs.saturating_sub(100), size / 2, size.saturating_sub(4096)] {
        let len = (buf.len() as u64).min(size.saturating_sub(start)) as usize;
        let _ = img.read_at(&mut buf[..len], start);
    }
    let _ = img.block_status(0, size.min(1 << 30));
    let _ = img.check();
    let _ = img.info();
});
