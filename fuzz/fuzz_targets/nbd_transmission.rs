//! Fuzz target: the NBD server's whole connection path — handshake, then
//! transmission requests — over an in-memory stream into a `Qcow2Export` (the
//! hub's export over our QCOW2 engine), through `Server::serve_stream`.
//!
//! The first byte picks the mode: bit 0 prepends a valid handshake (so most inputs
//! reach transmission), bit 1 makes it negotiate structured replies and
//! `base:allocation`, bit 2 serves the export read-only, bit 3 reads the rest as
//! compact 8-byte request descriptors (command, flags, offset, length) encoded into
//! well-formed requests with their WRITE payloads, so the fuzzer reaches the
//! export quickly. Otherwise the rest is the client's raw byte stream. The server must end (the client half-closes after its bytes) with
//! a reply stream or an error, never a panic or a hang; the image stays consistent.
#![no_main]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use sendense_image::export::Qcow2Export;
use sendense_nbd::wire::{self, ClientOption, InfoRequest, MetaContextRequest};
use sendense_nbd::{ExportRegistry, Server, ServerOptions, codec};
use sendense_qcow2::{CreateOptions, Image, MemStorage, OpenOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A fresh 4 MiB image with one written cluster, created once on disk and reused
/// from memory.
fn template() -> &'static [u8] {
    static T: OnceLock<Vec<u8>> = OnceLock::new();
    T.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("nbd-transmission-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("template.qcow2");
        let _ = std::fs::remove_file(&path);
        let img = Image::create(&path, &CreateOptions::new(4 << 20)).expect("create image");
        img.write_at(&[0x5a; 65536], 1 << 20).expect("write image");
        img.flush().expect("flush image");
        drop(img);
        let bytes = std::fs::read(&path).expect("read image");
        let _ = std::fs::remove_dir_all(&dir);
        bytes
    })
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

fn option(o: &ClientOption, out: &mut Vec<u8>) {
    codec::encode_option_request(&codec::encode_client_option(o), out);
}

/// Client flags and the options up to `GO "disk"`.
fn handshake(structured: bool) -> Vec<u8> {
    let mut out = (wire::FLAG_C_FIXED_NEWSTYLE | wire::FLAG_C_NO_ZEROES)
        .to_be_bytes()
        .to_vec();
    if structured {
        option(&ClientOption::StructuredReply, &mut out);
        let meta = MetaContextRequest {
            name: "disk".into(),
            queries: vec![wire::BASE_ALLOCATION.into()],
        };
        option(&ClientOption::SetMetaContext(meta), &mut out);
    }
    let go = InfoRequest {
        name: "disk".into(),
        requests: vec![wire::info::BLOCK_SIZE],
    };
    option(&ClientOption::Go(go), &mut out);
    out
}

/// Encodes 8-byte descriptors as requests: command (low 4 bits, invalid ones
/// included), flags, offset in 512-byte units (past the end included), length in
/// 16-byte units (up to 1 MiB); WRITEs carry a patterned payload.
fn requests(descriptors: &[u8], out: &mut Vec<u8>) {
    let mut payload_left: usize = 16 << 20;
    for (i, d) in descriptors.chunks_exact(8).enumerate() {
        let command = u16::from(d[0] & 0x0f);
        let flags = u16::from(d[1]);
        let offset = u64::from(u32::from_be_bytes([0, d[2], d[3], d[4]])) * 512 % (5 << 20);
        let length = u32::from(u16::from_be_bytes([d[5], d[6]])) * 16;
        let req = wire::Request {
            flags,
            command,
            cookie: i as u64,
            offset,
            length,
        };
        codec::encode_request(&req, out);
        if command == wire::cmd::WRITE {
            let n = (length as usize).min(payload_left);
            payload_left -= n;
            out.extend((0..n).map(|k| d[7].wrapping_add(k as u8)));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, stream)) = data.split_first() else {
        return;
    };
    let mut input = Vec::with_capacity(stream.len() + 128);
    if mode & 1 != 0 {
        input.extend_from_slice(&handshake(mode & 2 != 0));
    }
    if mode & 8 != 0 {
        requests(stream, &mut input);
    } else {
        input.extend_from_slice(stream);
    }
    let storage = Box::new(MemStorage::new(template().to_vec()));
    let image = Arc::new(Image::open_storage(storage, &OpenOptions::writable()).expect("open template"));
    let registry = Arc::new(ExportRegistry::new());
    let export = Qcow2Export::new(Arc::clone(&image), mode & 4 != 0);
    registry.add("disk", Arc::new(export)).expect("add export");
    let server = Server::new(registry, ServerOptions::default());
    let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, 10809));
    runtime().block_on(async move {
        let (client, server_io) = tokio::io::duplex(256 * 1024);
        let (mut rd, mut wr) = tokio::io::split(client);
        let feed = async move {
            let _ = wr.write_all(&input).await;
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
        let _ = tokio::join!(server.serve_stream(server_io, peer), feed, drain);
    });
    image.flush().expect("flush image");
    let report = image.check().expect("check image");
    assert!(report.is_clean(), "image inconsistent after the session: {report:?}");
});
