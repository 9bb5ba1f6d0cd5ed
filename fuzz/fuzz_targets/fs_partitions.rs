//! Fuzz target: the GPT and MBR parsers and the probes of `sendense-fs` (`partitions`) on a
//! hostile disk (see `fs_disk.rs` for the input layout).
//!
//! Anything may be refused; nothing may panic, hang or allocate from an on-disk length, and
//! every partition answered lies inside the disk.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "fs_disk.rs"]
mod fs_disk;

fuzz_target!(|data: &[u8]| {
    fs_disk::panic_policy();
    let Some(disk) = fs_disk::disk(data) else {
        return;
    };
    let Ok(table) = sendense_fs::partitions(&disk) else {
        return;
    };
    assert!(table.partitions.len() <= sendense_fs::limits::MAX_PARTITIONS);
    for p in &table.partitions {
        assert!(p.start.checked_add(p.size).is_some_and(|end| end <= disk.size()));
    }
});
