//! Fuzz target: the object tier's manifest parser (`sendense-tier`), as a hub importing a
//! bucket reads each point's manifest (after opening it: any JSON an attacker with the key,
//! or a bug, could have written).
//!
//! Anything may be refused; nothing may panic. An accepted manifest encodes to bytes that
//! decode to an equal manifest.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sendense_tier::Manifest;

fuzz_target!(|data: &[u8]| {
    let Ok(manifest) = Manifest::decode(data) else {
        return;
    };
    let again = manifest.encode().expect("an accepted manifest encodes");
    assert_eq!(Manifest::decode(&again).as_ref(), Ok(&manifest));
});
