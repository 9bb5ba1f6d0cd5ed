//! Our client's metadata contexts (issue #19): `qemu:dirty-bitmap:NAME` against a real
//! `qemu-nbd -B`, a bitmap the export does not offer, and hostile block status replies from a
//! scripted server over an in-memory stream.

use std::process::{Command, Stdio};

use sendense_nbd::client::{DIRTY, DIRTY_BITMAP_PREFIX};
use sendense_nbd::wire::{self, InfoItem, OptionReply, ReplyPayload, opt, rep, tflag};
use sendense_nbd::{Client, ClientOptions, NbdError, codec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{Daemon, tool};

const MIB: u64 = 1 << 20;

fn qemu(name: &str, args: &[&str]) {
    let out = Command::new(tool(name)).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{name} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A 16 MiB QCOW2 with bitmap `b1` enabled, then writes at 4 MiB (64 KiB) and 8 MiB (4 KiB),
/// served read-only with `-B b1` on a Unix socket.
fn bitmap_export(dir: &std::path::Path) -> (Daemon, std::path::PathBuf) {
    let file = dir.join("d.qcow2");
    let f = file.to_str().unwrap();
    qemu("qemu-img", &["create", "-q", "-f", "qcow2", f, "16M"]);
    qemu("qemu-io", &["-f", "qcow2", "-c", "write -P 1 0 1M", f]);
    qemu("qemu-img", &["bitmap", "--add", "--enable", f, "b1"]);
    qemu(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 2 4M 64k",
            "-c",
            "write -P 3 8M 4k",
            f,
        ],
    );
    let socket = dir.join("s.sock");
    let pid_file = dir.join("qemu-nbd.pid");
    let mut cmd = Command::new(tool("qemu-nbd"));
    cmd.args([
        "--fork",
        "--persistent",
        "-r",
        "-e",
        "2",
        "-f",
        "qcow2",
        "-B",
        "b1",
    ])
    .args(["-x", "disk", "-k", socket.to_str().unwrap()])
    .arg(format!("--pid-file={}", pid_file.display()))
    .arg(&file)
    .stdout(Stdio::null());
    (Daemon::start(cmd, &pid_file), socket)
}

fn options(contexts: &[&str]) -> ClientOptions {
    ClientOptions {
        export_name: "disk".into(),
        meta_contexts: contexts.iter().map(|c| (*c).to_owned()).collect(),
        ..ClientOptions::default()
    }
}

#[tokio::test]
async fn client_qemu_nbd_dirty_bitmap_context_reports_the_written_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, socket) = bitmap_export(dir.path());
    let name = format!("{DIRTY_BITMAP_PREFIX}b1");

    let c = Client::connect_unix(&socket, options(&[&name]))
        .await
        .unwrap();
    let id = c
        .meta_context(&name)
        .expect("qemu-nbd -B b1 grants the context");
    let mut dirty = Vec::new();
    let mut pos = 0;
    while pos < c.size() {
        let len = u32::try_from(c.size() - pos).unwrap();
        for e in c.block_status_of(id, pos, len).await.unwrap() {
            if e.flags & DIRTY != 0 {
                dirty.push((pos, e.length));
            }
            pos += e.length;
        }
    }

    assert!(c.info().base_allocation.is_some());
    assert_eq!(dirty, vec![(4 * MIB, 65536), (8 * MIB, 65536)]);
    c.disconnect().await.unwrap();
}

#[tokio::test]
async fn client_qemu_nbd_bitmap_not_offered_is_absent_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, socket) = bitmap_export(dir.path());
    let missing = format!("{DIRTY_BITMAP_PREFIX}gone");

    let c = Client::connect_unix(&socket, options(&[&missing]))
        .await
        .unwrap();

    assert_eq!(c.meta_context(&missing), None);
    assert_eq!(c.meta_contexts().len(), 1, "{:?}", c.meta_contexts());
    let err = c.block_status_of(77, 0, 4096).await.unwrap_err();
    assert!(matches!(err, NbdError::InvalidArgument { .. }), "{err:?}");
    c.disconnect().await.unwrap();
}

/// The server's side of a handshake granting `base:allocation` (id 1) and a bitmap (id 2).
fn handshake() -> Vec<u8> {
    let mut out = codec::encode_greeting(wire::FLAG_FIXED_NEWSTYLE | wire::FLAG_NO_ZEROES);
    let ack = |option| OptionReply {
        option,
        reply_type: rep::ACK,
        data: Vec::new(),
    };
    codec::encode_option_reply(&ack(opt::STRUCTURED_REPLY), &mut out);
    for (id, name) in [(1, wire::BASE_ALLOCATION), (2, "qemu:dirty-bitmap:b")] {
        let p = ReplyPayload::MetaContext {
            id,
            name: name.to_owned(),
        };
        codec::encode_option_reply(
            &codec::encode_reply_payload(opt::SET_META_CONTEXT, &p),
            &mut out,
        );
    }
    codec::encode_option_reply(&ack(opt::SET_META_CONTEXT), &mut out);
    let export = ReplyPayload::Info(InfoItem::Export {
        size: MIB,
        flags: tflag::HAS_FLAGS | tflag::READ_ONLY,
    });
    codec::encode_option_reply(&codec::encode_reply_payload(opt::GO, &export), &mut out);
    codec::encode_option_reply(&ack(opt::GO), &mut out);
    out
}

/// A block status chunk for cookie 1 of `context` with `descriptors`.
fn status_chunk(done: bool, context: u32, descriptors: &[(u32, u32)], out: &mut Vec<u8>) {
    let flags = if done { wire::chunk::FLAG_DONE } else { 0 };
    let len = u32::try_from(4 + 8 * descriptors.len()).unwrap();
    codec::encode_chunk_header(flags, wire::chunk::BLOCK_STATUS, 1, len, out);
    out.extend_from_slice(&context.to_be_bytes());
    for (l, f) in descriptors {
        out.extend_from_slice(&l.to_be_bytes());
        out.extend_from_slice(&f.to_be_bytes());
    }
}

/// Connects to a scripted server sending `handshake()` then `replies`, asks the bitmap's
/// status (cookie 1) and answers the result.
async fn scripted(replies: Vec<u8>) -> Result<Vec<sendense_nbd::StatusExtent>, NbdError> {
    let (client_io, server_io) = tokio::io::duplex(1 << 20);
    let (mut rd, mut wr) = tokio::io::split(server_io);
    let mut bytes = handshake();
    bytes.extend_from_slice(&replies);
    let server = tokio::spawn(async move {
        wr.write_all(&bytes).await.unwrap();
        let mut sink = vec![0u8; 4096];
        while rd.read(&mut sink).await.is_ok_and(|n| n > 0) {}
        drop(wr);
    });
    let c = Client::connect_io(client_io, options(&["qemu:dirty-bitmap:b"]))
        .await
        .unwrap();
    let result = c.block_status_of(2, 0, 65536).await;
    drop(c);
    server.abort();
    result
}

#[tokio::test]
async fn client_block_status_two_contexts_answers_the_one_asked() {
    let mut replies = Vec::new();
    status_chunk(false, 1, &[(65536, 0)], &mut replies);
    status_chunk(true, 2, &[(4096, 1), (61440, 0)], &mut replies);

    let got = scripted(replies).await.unwrap();

    assert_eq!(got.len(), 2);
    assert_eq!((got[0].length, got[0].flags), (4096, 1));
}

#[tokio::test]
async fn client_block_status_two_chunks_for_one_context_is_a_protocol_error() {
    let mut replies = Vec::new();
    status_chunk(false, 2, &[(4096, 1)], &mut replies);
    status_chunk(true, 2, &[(4096, 0)], &mut replies);

    let err = scripted(replies).await.unwrap_err();

    assert!(
        matches!(err, NbdError::Closed | NbdError::Protocol { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn client_block_status_zero_length_descriptor_is_a_protocol_error() {
    let mut replies = Vec::new();
    status_chunk(true, 2, &[(0, 1)], &mut replies);

    let err = scripted(replies).await.unwrap_err();

    assert!(
        matches!(err, NbdError::Closed | NbdError::Protocol { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn client_block_status_without_the_context_chunk_is_an_error() {
    let mut replies = Vec::new();
    status_chunk(true, 1, &[(65536, 0)], &mut replies);

    let err = scripted(replies).await.unwrap_err();

    assert!(matches!(err, NbdError::Protocol { .. }), "{err:?}");
}

#[tokio::test]
async fn client_oversized_status_chunk_is_refused_before_allocation() {
    let mut replies = Vec::new();
    codec::encode_chunk_header(
        wire::chunk::FLAG_DONE,
        wire::chunk::BLOCK_STATUS,
        1,
        16 << 20,
        &mut replies,
    );

    let err = scripted(replies).await.unwrap_err();

    assert!(matches!(err, NbdError::Closed), "{err:?}");
}
