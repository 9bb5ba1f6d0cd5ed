//! Fuzz target: arbitrary datastore `/folder` answers to a Range read.
//!
//! Bytes 0-1: HTTP status; 2-9: offset; 10-11: length (up to 64 KiB); 12: length of the
//! `Content-Range` header value (0xff: no header); then the header; then the body, cut into
//! chunks at every 0xff byte. [`judge_range_answer`] and [`RangeBody`] must answer a value or
//! an error, never panic, overflow or write past the buffer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sendense_vsphere::{RangeAnswer, RangeBody, judge_range_answer};

fuzz_target!(|data: &[u8]| {
    if data.len() < 13 {
        return;
    }
    let status = u16::from_le_bytes([data[0], data[1]]);
    let mut offset_bytes = [0u8; 8];
    offset_bytes.copy_from_slice(&data[2..10]);
    let offset = u64::from_le_bytes(offset_bytes);
    let length = u64::from(u16::from_le_bytes([data[10], data[11]]));
    let rest = &data[13..];
    let (header, body) = match data[12] {
        0xff => (None, rest),
        n => {
            let n = usize::from(n).min(rest.len());
            (Some(&rest[..n]), &rest[n..])
        }
    };
    let Ok(answer) = judge_range_answer("[ds] vm/vm-flat.vmdk", status, header, offset, length)
    else {
        return;
    };
    if answer != RangeAnswer::Data {
        return;
    }
    let Ok(len) = usize::try_from(length) else {
        return;
    };
    let mut buf = vec![0u8; len];
    let mut reader = RangeBody::new("[ds] vm/vm-flat.vmdk", offset, &mut buf, header);
    for chunk in body.split(|&b| b == 0xff) {
        if reader.push(chunk).is_err() {
            return;
        }
    }
    if reader.finish().is_ok() {
        let joined: Vec<u8> = body.iter().copied().filter(|&b| b != 0xff).collect();
        assert_eq!(joined, buf, "the body must arrive as sent");
    }
});
