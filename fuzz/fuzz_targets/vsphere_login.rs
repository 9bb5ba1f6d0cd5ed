//! Fuzz target: arbitrary answers to the SOAP `Login` call.
//!
//! Bytes 0-1: HTTP status; byte 2: number of `Set-Cookie` values (0-3), each prefixed by its
//! length (one byte); then the body. [`parse_login_answer`] must answer a value or an error,
//! never panic, hang or allocate without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sendense_vsphere::parse_login_answer;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let status = u16::from_le_bytes([data[0], data[1]]);
    let mut rest = &data[3..];
    let mut cookies = Vec::new();
    for _ in 0..(data[2] % 4) {
        let Some((&n, tail)) = rest.split_first() else {
            break;
        };
        let n = usize::from(n).min(tail.len());
        cookies.push(&tail[..n]);
        rest = &tail[n..];
    }
    if let Ok(Some(cookie)) = parse_login_answer(status, &cookies, rest) {
        assert!(cookie.starts_with("vmware_soap_session="), "{cookie}");
    }
});
