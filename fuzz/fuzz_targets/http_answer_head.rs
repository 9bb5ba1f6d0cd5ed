//! Fuzz target: the head of an HTTP answer as `files get` reads it on its own TLS connection
//! (`sendense_client::range_get::parse_head`). Anything may be refused; nothing may panic, and
//! an accepted head's numbers are what its text says.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cut = data.len().min(sendense_client::range_get::MAX_HEAD);
    if let Ok(head) = sendense_client::range_get::parse_head(&data[..cut]) {
        assert!((100..1000).contains(&head.status));
    }
});
