//! Fuzz target: the S3 documents a target's store answers when the hub sets Object Lock
//! (`sendense-tier`'s `lock`): a bucket's `ObjectLockConfiguration` and an `<Error>`.
//!
//! Anything may be refused; nothing may panic. An accepted configuration encodes to a document
//! that decodes to an equal configuration.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sendense_tier::lock::{LockConfiguration, S3ErrorBody};

fuzz_target!(|data: &[u8]| {
    let _ = S3ErrorBody::decode(data);
    let Ok(config) = LockConfiguration::decode(data) else {
        return;
    };
    let again = config.encode();
    assert_eq!(LockConfiguration::decode(again.as_bytes()), Ok(config));
});
