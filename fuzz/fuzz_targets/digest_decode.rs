//! Fuzz target: the digest file parser of `sendense-digest` (`<backup_id>.digests` beside each
//! image, read back by verification and merges).
//!
//! Anything may be refused; nothing may panic. An accepted file encodes back to bytes that
//! decode to an equal layer, no longer than the bound for its disk size.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sendense_digest::{LayerDigests, max_encoded_len};

fuzz_target!(|data: &[u8]| {
    let Ok(layer) = LayerDigests::decode(data) else {
        return;
    };
    let again = layer.encode();
    assert!(again.len() as u64 <= max_encoded_len(layer.disk_size()));
    assert_eq!(LayerDigests::decode(&again).as_ref(), Ok(&layer));
});
