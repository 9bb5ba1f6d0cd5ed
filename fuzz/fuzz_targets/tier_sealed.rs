//! Fuzz target: the object tier's sealed-object framing (`sendense-tier`), as a hub reads any
//! object back from a bucket: the header parser, and opening every chunk under a fixed key.
//!
//! Anything may be refused; nothing may panic or allocate past the header's bounds. An
//! accepted header encodes back to the same 64 bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sendense_tier::seal::{self, HEADER_LEN, Header, MasterKey};

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = Header::decode(data) {
        assert_eq!(&header.encode()[..], &data[..HEADER_LEN]);
    }
    let Ok(key) = MasterKey::from_bytes(&[9u8; 32]) else {
        return;
    };
    // Bounded like the hub's reads of small objects.
    let _ = seal::open_all(
        &key,
        "sendense/vm/backup/manifest.json.sealed",
        data,
        1 << 20,
    );
});
