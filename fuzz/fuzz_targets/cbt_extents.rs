//! Fuzz target: VMware `DiskChangeInfo` changed areas, parsed and validated against a capacity.
//!
//! The first 4 bytes choose the disk capacity (in 512-byte sectors), the rest is the JSON. Any
//! input must give extents or an error, never a panic; valid extents are sorted, merged and
//! inside the disk.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((head, json)) = data.split_first_chunk::<4>() else {
        return;
    };
    let capacity = u64::from(u32::from_le_bytes(*head)) * 512;
    if let Ok(extents) = sendense_client::cbt::changed_extents(json, capacity) {
        let mut prev_end = None;
        for e in extents {
            assert!(e.length > 0 && e.offset % 512 == 0 && e.length % 512 == 0);
            assert!(e.offset + e.length <= capacity);
            if let Some(p) = prev_end {
                assert!(e.offset > p);
            }
            prev_end = Some(e.offset + e.length);
        }
    }
});
