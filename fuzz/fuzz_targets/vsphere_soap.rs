//! Fuzz target: arbitrary bytes parsed as a vSphere SOAP response of each kind.
//!
//! The first byte picks the response kind (service content, managed object reference, VM
//! properties, task info, DiskChangeInfo); the rest is the response body. Any input must give
//! a value or an error, never a panic, hang or unbounded allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sendense_vsphere::soap::{ResponseKind, parse_response};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let kind = match pick % 5 {
        0 => ResponseKind::ServiceContent,
        1 => ResponseKind::MoRef,
        2 => ResponseKind::VmProperties,
        3 => ResponseKind::TaskInfo,
        _ => ResponseKind::DiskChangeInfo,
    };
    let _ = parse_response(kind, body);
});
