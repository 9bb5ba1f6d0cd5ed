//! Fuzz target: our NBD client (`Client::connect_io`) against a hostile server whose bytes
//! are the input: the negotiation replies, then the transmission replies to a dirty-bitmap
//! block status, a `base:allocation` block status and a read sent at once (cookies 1 to 3).
//!
//! The first byte picks the mode: bit 0 prepends a valid server handshake (greeting,
//! structured replies, both metadata contexts granted, an export of 1 MiB), so most inputs
//! reach the reply parser; otherwise the rest is the whole server stream. The client must
//! answer every request with a value or an error and stop when the server's stream ends:
//! never a panic, a hang or an unbounded allocation.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sendense_nbd::wire::{self, InfoItem, OptionReply, ReplyPayload, opt, rep, tflag};
use sendense_nbd::{Client, ClientOptions, codec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BITMAP: &str = "qemu:dirty-bitmap:b";

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

/// Greeting and the replies to STRUCTURED_REPLY, SET_META_CONTEXT and GO.
fn handshake() -> Vec<u8> {
    let mut out = codec::encode_greeting(wire::FLAG_FIXED_NEWSTYLE | wire::FLAG_NO_ZEROES);
    let ack = |option| OptionReply {
        option,
        reply_type: rep::ACK,
        data: Vec::new(),
    };
    codec::encode_option_reply(&ack(opt::STRUCTURED_REPLY), &mut out);
    for (id, name) in [(1, wire::BASE_ALLOCATION), (2, BITMAP)] {
        let payload = ReplyPayload::MetaContext {
            id,
            name: name.to_owned(),
        };
        codec::encode_option_reply(
            &codec::encode_reply_payload(opt::SET_META_CONTEXT, &payload),
            &mut out,
        );
    }
    codec::encode_option_reply(&ack(opt::SET_META_CONTEXT), &mut out);
    let export = ReplyPayload::Info(InfoItem::Export {
        size: 1 << 20,
        flags: tflag::HAS_FLAGS | tflag::READ_ONLY | tflag::CAN_MULTI_CONN,
    });
    codec::encode_option_reply(&codec::encode_reply_payload(opt::GO, &export), &mut out);
    codec::encode_option_reply(&ack(opt::GO), &mut out);
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, stream)) = data.split_first() else {
        return;
    };
    let mut server_bytes = Vec::with_capacity(stream.len() + 256);
    if mode & 1 != 0 {
        server_bytes.extend_from_slice(&handshake());
    }
    server_bytes.extend_from_slice(stream);
    runtime().block_on(async move {
        let (client_io, server_io) = tokio::io::duplex(256 * 1024);
        let (mut rd, mut wr) = tokio::io::split(server_io);
        let serve = async move {
            let _ = wr.write_all(&server_bytes).await;
            let _ = wr.shutdown().await;
        };
        let drain = async move {
            let mut sink = vec![0u8; 64 * 1024];
            while let Ok(n) = rd.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        };
        let talk = async move {
            let options = ClientOptions {
                export_name: "disk".to_owned(),
                meta_contexts: vec![BITMAP.to_owned()],
                ..ClientOptions::default()
            };
            let Ok(client) = Client::connect_io(client_io, options).await else {
                return;
            };
            let bitmap = client.meta_context(BITMAP).unwrap_or(2);
            let _ = tokio::join!(
                client.block_status_of(bitmap, 0, 1 << 20),
                client.block_status(0, 1 << 20),
                client.read(0, 4096),
            );
        };
        tokio::join!(serve, drain, talk);
    });
});
