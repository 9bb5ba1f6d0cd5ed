//! Our client against our server: TLS, pipelining, out-of-order replies,
//! export removal, shutdown, hostile input, error values.

use std::sync::Arc;
use std::time::Duration;

use sendense_nbd::wire::{self, Errno, tflag};
use sendense_nbd::{
    Client, ClientOptions, ClientPool, ExportRegistry, MemoryExport, NbdError, ZeroFlags, codec,
    tls,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{GateExport, TestServer, memory_registry, random_bytes};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_plain_write_read_zero_flush_block_status_round_trip() {
    let srv = TestServer::start(memory_registry(), None).await;
    let c = srv.client("mem").await;
    assert_eq!(c.size(), 64 << 20);
    assert_ne!(c.flags() & tflag::CAN_MULTI_CONN, 0);
    let data = random_bytes(1 << 20);
    c.write(8 << 20, &data, true).await.unwrap();
    assert_eq!(c.read(8 << 20, 1 << 20).await.unwrap(), data);
    c.write_zeroes(8 << 20, 4096, ZeroFlags::default())
        .await
        .unwrap();
    let back = c.read(8 << 20, 8192).await.unwrap();
    assert!(back[..4096].iter().all(|b| *b == 0));
    assert_eq!(&back[4096..], &data[4096..8192]);
    c.trim(16 << 20, 1 << 20, false).await.unwrap();
    c.flush().await.unwrap();
    let ext = c.block_status(0, 4 << 20).await.unwrap();
    assert!(ext[0].hole && ext[0].zero);
    assert!(!ext[1].hole);
    c.disconnect().await.unwrap();
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_structured_read_with_holes_reassembled() {
    let srv = TestServer::start(memory_registry(), None).await;
    // 0..1 MiB hole, 1..2 MiB data, 2..4 MiB hole: split into hole and data chunks.
    // What the server sends, chunk by chunk:
    let chunks = raw_structured_read(&srv, "mem", 0, 4 << 20).await;
    let kinds: Vec<(&str, u64, usize, bool)> = chunks
        .iter()
        .map(|c| {
            let done = c.flags & wire::chunk::FLAG_DONE != 0;
            match &c.payload {
                wire::ChunkPayload::OffsetHole { offset, size } => {
                    ("hole", *offset, *size as usize, done)
                }
                wire::ChunkPayload::OffsetData { offset, data } => {
                    assert!(data.iter().all(|b| *b == 0xab));
                    ("data", *offset, data.len(), done)
                }
                other => panic!("unexpected chunk {other:?}"),
            }
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("hole", 0, 1 << 20, false),
            ("data", 1 << 20, 1 << 20, false),
            ("hole", 2 << 20, 2 << 20, true),
        ]
    );
    // And our client puts them together.
    let c = srv.client("mem").await;
    let back = c.read(0, 4 << 20).await.unwrap();
    assert!(back[..1 << 20].iter().all(|b| *b == 0));
    assert!(back[1 << 20..2 << 20].iter().all(|b| *b == 0xab));
    assert!(back[2 << 20..].iter().all(|b| *b == 0));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_read_into_dirty_buffer_overwrites_every_byte() {
    let srv = TestServer::start(memory_registry(), None).await;
    for structured in [true, false] {
        let opts = ClientOptions {
            structured_replies: structured,
            block_status: structured,
            ..srv.options("mem")
        };
        let c = Client::connect(srv.addr, opts).await.unwrap();
        // A reused buffer full of garbage, longer than the read: holes must come back as
        // zeros, data as data, and the length must be the request's.
        let dirty = vec![0x5au8; 5 << 20];
        let back = c.read_into(0, dirty, 4 << 20).await.unwrap();
        assert_eq!(back.len(), 4 << 20, "structured: {structured}");
        assert!(
            back[..1 << 20].iter().all(|b| *b == 0),
            "structured: {structured}"
        );
        assert!(back[1 << 20..2 << 20].iter().all(|b| *b == 0xab));
        assert!(
            back[2 << 20..].iter().all(|b| *b == 0),
            "structured: {structured}"
        );
        let again = c.read_into(1 << 20, back, 4096).await.unwrap();
        assert_eq!(again, vec![0xab; 4096]);
        c.disconnect().await.unwrap();
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_read_into_buf_fills_the_callers_own_buffer_in_place() {
    let srv = TestServer::start(memory_registry(), None).await;
    for structured in [true, false] {
        let opts = ClientOptions {
            structured_replies: structured,
            block_status: structured,
            ..srv.options("mem")
        };
        let c = Client::connect(srv.addr, opts).await.unwrap();
        // Not a Vec: any owned byte buffer, dirty, 1 MiB of hole then 1 MiB of data.
        let dirty: Box<[u8]> = vec![0x5au8; 2 << 20].into_boxed_slice();
        let at = dirty.as_ptr();

        let back = c.read_into_buf(0, dirty).await.unwrap();

        assert_eq!(back.as_ptr(), at, "the same allocation comes back, no copy");
        assert!(
            back[..1 << 20].iter().all(|b| *b == 0),
            "structured: {structured}"
        );
        assert!(
            back[1 << 20..].iter().all(|b| *b == 0xab),
            "structured: {structured}"
        );
        c.disconnect().await.unwrap();
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_simple_replies_read_write_round_trip() {
    let srv = TestServer::start(memory_registry(), None).await;
    let opts = ClientOptions {
        structured_replies: false,
        ..srv.options("mem")
    };
    let c = Client::connect(srv.addr, opts).await.unwrap();
    assert!(!c.info().structured_replies);
    let data = random_bytes(65536);
    c.write(4096, &data, false).await.unwrap();
    assert_eq!(c.read(4096, 65536).await.unwrap(), data);
    assert!(matches!(
        c.block_status(0, 4096).await,
        Err(NbdError::InvalidArgument { .. })
    ));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_tls_with_client_cert_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    crate::common::make_certs(dir.path());
    let config = tls::server_config_from_dir(dir.path(), true).unwrap();
    let listing = sendense_nbd::ServerOptions {
        tls: Some(config),
        list_exports: true,
        ..Default::default()
    };
    let srv = TestServer::start_with(memory_registry(), listing).await;
    let client_tls = tls::client_config_from_dir(dir.path()).unwrap();
    let opts = ClientOptions {
        tls: Some((client_tls.clone(), "localhost".into())),
        ..srv.options("mem")
    };
    let names = Client::list_exports(srv.addr, opts.tls.clone())
        .await
        .unwrap();
    assert_eq!(names, vec!["mem".to_owned()]);
    let c = Client::connect(srv.addr, opts).await.unwrap();
    let data = random_bytes(1 << 20);
    c.write(0, &data, false).await.unwrap();
    assert_eq!(c.read(0, 1 << 20).await.unwrap(), data);
    c.disconnect().await.unwrap();
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_tls_without_client_cert_refused() {
    let dir = tempfile::tempdir().unwrap();
    crate::common::make_certs(dir.path());
    let config = tls::server_config_from_dir(dir.path(), true).unwrap();
    let srv = TestServer::start(memory_registry(), Some(config)).await;
    let no_cert = tls::client_config(&dir.path().join(tls::CA_CERT), None).unwrap();
    let opts = ClientOptions {
        tls: Some((no_cert, "localhost".into())),
        ..srv.options("mem")
    };
    assert!(Client::connect(srv.addr, opts).await.is_err());
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_plain_against_tls_server_refused() {
    let dir = tempfile::tempdir().unwrap();
    crate::common::make_certs(dir.path());
    let config = tls::server_config_from_dir(dir.path(), false).unwrap();
    let srv = TestServer::start(memory_registry(), Some(config)).await;
    let err = Client::connect(srv.addr, srv.options("mem"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            NbdError::OptionRefused {
                reply: wire::rep::ERR_TLS_REQD,
                ..
            }
        ),
        "{err}"
    );
    let err = Client::list_exports(srv.addr, None).await.unwrap_err();
    assert!(
        matches!(
            err,
            NbdError::OptionRefused {
                reply: wire::rep::ERR_TLS_REQD,
                ..
            }
        ),
        "{err}"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_many_concurrent_requests_all_correct() {
    let srv = TestServer::start(memory_registry(), None).await;
    let c = Arc::new(srv.client("mem").await);
    let mut tasks = Vec::new();
    for i in 0..256u64 {
        let c = Arc::clone(&c);
        tasks.push(tokio::spawn(async move {
            let data = vec![u8::try_from(i % 251).unwrap(); 65536];
            c.write(i * 65536, &data, false).await.unwrap();
            assert_eq!(c.read(i * 65536, 65536).await.unwrap(), data);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_pool_four_connections_write_flush_read() {
    let srv = TestServer::start(memory_registry(), None).await;
    let pool = Arc::new(
        ClientPool::connect(srv.addr, srv.options("mem"), 4)
            .await
            .unwrap(),
    );
    assert_eq!(srv.registry.connection_count("mem"), Some(4));
    let mut tasks = Vec::new();
    for i in 0..32u64 {
        let pool = Arc::clone(&pool);
        tasks.push(tokio::spawn(async move {
            pool.get()
                .write(i << 20, &vec![u8::try_from(i).unwrap(); 1 << 20], false)
                .await
                .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    pool.flush().await.unwrap();
    assert_eq!(pool.get().read(31 << 20, 16).await.unwrap(), vec![31u8; 16]);
    Arc::into_inner(pool).unwrap().disconnect().await.unwrap();
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_blocked_request_later_reply_first() {
    let r = Arc::new(ExportRegistry::new());
    let gate = Arc::new(GateExport::new(1 << 20));
    r.add("gate", gate.clone()).unwrap();
    let srv = TestServer::start(r, None).await;
    let c = Arc::new(srv.client("gate").await);
    let slow = {
        let c = Arc::clone(&c);
        tokio::spawn(async move { c.read(0, 4096).await })
    };
    let g = gate.clone();
    tokio::task::spawn_blocking(move || g.wait_entered())
        .await
        .unwrap();
    // Sent after the blocked read, answered before it.
    c.read(4096, 4096).await.unwrap();
    assert!(!slow.is_finished());
    gate.release();
    slow.await.unwrap().unwrap();
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_remove_waits_for_in_flight_then_closes_connection() {
    let r = Arc::new(ExportRegistry::new());
    let gate = Arc::new(GateExport::new(1 << 20));
    r.add("gate", gate.clone()).unwrap();
    let srv = TestServer::start(Arc::clone(&r), None).await;
    let c = Arc::new(srv.client("gate").await);
    assert_eq!(r.connection_count("gate"), Some(1));
    let slow = {
        let c = Arc::clone(&c);
        tokio::spawn(async move { c.read(0, 4096).await })
    };
    let g = gate.clone();
    tokio::task::spawn_blocking(move || g.wait_entered())
        .await
        .unwrap();
    let removal = tokio::spawn(r.remove("gate"));
    assert!(r.names().is_empty());
    let err = Client::connect(srv.addr, srv.options("gate"))
        .await
        .unwrap_err();
    assert!(matches!(err, NbdError::UnknownExport { .. }), "{err}");
    assert!(!removal.is_finished());
    gate.release();
    // The in-flight read completes successfully, then the connection ends.
    slow.await.unwrap().unwrap();
    let removed = tokio::time::timeout(Duration::from_secs(10), removal)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(removed, sendense_nbd::Removal::Drained);
    assert!(c.read(4096, 16).await.is_err());
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_shutdown_ends_connections_and_returns() {
    let srv = TestServer::start(memory_registry(), None).await;
    let c = srv.client("mem").await;
    c.write(0, &[1; 512], false).await.unwrap();
    srv.stop().await;
    assert!(c.read(0, 512).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_to_read_only_export_eperm() {
    let r = Arc::new(ExportRegistry::new());
    r.add("ro", Arc::new(MemoryExport::new(1 << 20).read_only()))
        .unwrap();
    let srv = TestServer::start(r, None).await;
    let c = srv.client("ro").await;
    assert_ne!(c.flags() & tflag::READ_ONLY, 0);
    let err = c.write(0, &[1; 512], false).await.unwrap_err();
    assert_eq!(err.errno(), Some(Errno::Perm));
    let err = c.trim(0, 512, false).await.unwrap_err();
    assert_eq!(err.errno(), Some(Errno::Perm));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_past_end_einval_and_write_enospc() {
    let srv = TestServer::start(memory_registry(), None).await;
    let c = srv.client("mem").await;
    let end = c.size();
    assert_eq!(
        c.read(end - 512, 1024).await.unwrap_err().errno(),
        Some(Errno::Inval)
    );
    assert_eq!(
        c.block_status(end, 512).await.unwrap_err().errno(),
        Some(Errno::Inval)
    );
    let err = c.write(end - 512, &[0; 1024], false).await.unwrap_err();
    assert_eq!(err.errno(), Some(Errno::NoSpc));
    // The connection keeps working after errors.
    c.read(0, 512).await.unwrap();
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_lengths_close_only_that_connection() {
    let srv = TestServer::start(memory_registry(), None).await;
    let good = srv.client("mem").await;

    // Pure garbage instead of client flags and options.
    let mut raw = TcpStream::connect(srv.addr).await.unwrap();
    raw.write_all(&random_bytes(4096)).await.unwrap();
    expect_eof(&mut raw).await;

    // A valid start, then an option claiming 4 GiB of payload.
    let mut raw = TcpStream::connect(srv.addr).await.unwrap();
    let mut msg = wire::FLAG_C_FIXED_NEWSTYLE.to_be_bytes().to_vec();
    msg.extend_from_slice(&wire::IHAVEOPT.to_be_bytes());
    msg.extend_from_slice(&wire::opt::GO.to_be_bytes());
    msg.extend_from_slice(&u32::MAX.to_be_bytes());
    raw.write_all(&msg).await.unwrap();
    expect_eof(&mut raw).await;

    // In transmission: a WRITE announcing 4 GiB of payload.
    let mut raw = TcpStream::connect(srv.addr).await.unwrap();
    let mut msg = (wire::FLAG_C_FIXED_NEWSTYLE | wire::FLAG_C_NO_ZEROES)
        .to_be_bytes()
        .to_vec();
    let go = codec::encode_client_option(&wire::ClientOption::ExportName("mem".into()));
    codec::encode_option_request(&go, &mut msg);
    let req = wire::Request {
        flags: 0,
        command: wire::cmd::WRITE,
        cookie: 1,
        offset: 0,
        length: u32::MAX,
    };
    codec::encode_request(&req, &mut msg);
    raw.write_all(&msg).await.unwrap();
    expect_eof(&mut raw).await;

    // The other connection keeps working.
    let data = random_bytes(4096);
    good.write(0, &data, false).await.unwrap();
    assert_eq!(good.read(0, 4096).await.unwrap(), data);
    srv.stop().await;
}

async fn expect_eof(raw: &mut TcpStream) {
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n = tokio::time::timeout_at(deadline, raw.read(&mut buf))
            .await
            .expect("server did not close the connection");
        match n {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Opens a raw connection with EXPORT_NAME (no structured replies), past the handshake.
async fn raw_export_name(srv: &TestServer, name: &str) -> TcpStream {
    let mut raw = TcpStream::connect(srv.addr).await.unwrap();
    let mut greeting = [0u8; wire::GREETING_LEN];
    raw.read_exact(&mut greeting).await.unwrap();
    let mut msg = (wire::FLAG_C_FIXED_NEWSTYLE | wire::FLAG_C_NO_ZEROES)
        .to_be_bytes()
        .to_vec();
    let o = codec::encode_client_option(&wire::ClientOption::ExportName(name.into()));
    codec::encode_option_request(&o, &mut msg);
    raw.write_all(&msg).await.unwrap();
    let mut export = [0u8; 10];
    raw.read_exact(&mut export).await.unwrap();
    raw
}

async fn raw_request(raw: &mut TcpStream, command: u16, flags: u16, length: u32) -> u32 {
    let req = wire::Request {
        flags,
        command,
        cookie: 7,
        offset: 0,
        length,
    };
    let mut msg = Vec::new();
    codec::encode_request(&req, &mut msg);
    raw.write_all(&msg).await.unwrap();
    let mut head = [0u8; wire::SIMPLE_REPLY_HEADER_LEN];
    raw.read_exact(&mut head).await.unwrap();
    let Some((codec::ReplyHeader::Simple { error, cookie }, _)) =
        codec::decode_reply_header(&head).unwrap()
    else {
        panic!("expected a simple reply");
    };
    assert_eq!(cookie, 7);
    error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_command_and_flags_einval_connection_survives() {
    let srv = TestServer::start(memory_registry(), None).await;
    let mut raw = raw_export_name(&srv, "mem").await;
    assert_eq!(raw_request(&mut raw, 99, 0, 0).await, Errno::Inval.code());
    assert_eq!(
        raw_request(&mut raw, wire::cmd::FLUSH, 1 << 9, 0).await,
        Errno::Inval.code()
    );
    // DF is not valid without structured replies.
    assert_eq!(
        raw_request(&mut raw, wire::cmd::READ, wire::cflag::DF, 512).await,
        Errno::Inval.code()
    );
    assert_eq!(raw_request(&mut raw, wire::cmd::FLUSH, 0, 0).await, 0);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_connection_cap_queues_extra_clients_until_one_leaves() {
    let options = sendense_nbd::ServerOptions {
        max_connections: 1,
        ..Default::default()
    };
    let srv = TestServer::start_with(memory_registry(), options).await;
    let first = srv.client("mem").await;
    let (addr, opts) = (srv.addr, srv.options("mem"));
    let second = tokio::spawn(async move { Client::connect(addr, opts).await });
    // A full round trip on the first connection; the second still has no greeting.
    first.write(0, &[1; 512], false).await.unwrap();
    first.read(0, 512).await.unwrap();
    assert!(!second.is_finished());
    first.disconnect().await.unwrap();
    let second = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.unwrap().read(0, 512).await.unwrap(), vec![1; 512]);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_tracks_connections_and_activity() {
    let srv = TestServer::start(memory_registry(), None).await;
    let before = srv.registry.last_activity("mem").unwrap();
    let c = srv.client("mem").await;
    c.read(0, 512).await.unwrap();
    assert_eq!(srv.registry.connection_count("mem"), Some(1));
    assert!(srv.registry.last_activity("mem").unwrap() >= before);
    c.disconnect().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while srv.registry.connection_count("mem") != Some(0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "connection never detached"
        );
        tokio::task::yield_now().await;
    }
    srv.stop().await;
}

/// A memory export that counts `flush` calls and the FUA flags it was given.
#[derive(Debug)]
struct CountingExport {
    inner: MemoryExport,
    flushes: std::sync::atomic::AtomicUsize,
    fua_seen: std::sync::atomic::AtomicUsize,
}

impl CountingExport {
    fn flushes(&self) -> usize {
        self.flushes.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn saw(&self, fua: bool) {
        if fua {
            self.fua_seen
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

impl sendense_nbd::Export for CountingExport {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn is_read_only(&self) -> bool {
        false
    }
    fn read(&self, o: u64, b: &mut [u8]) -> Result<(), sendense_nbd::ExportError> {
        self.inner.read(o, b)
    }
    fn write(&self, o: u64, d: &[u8], fua: bool) -> Result<(), sendense_nbd::ExportError> {
        self.saw(fua);
        self.inner.write(o, d, fua)
    }
    fn write_zeroes(&self, o: u64, l: u64, f: ZeroFlags) -> Result<(), sendense_nbd::ExportError> {
        self.saw(f.fua);
        self.inner.write_zeroes(o, l, f)
    }
    fn trim(&self, o: u64, l: u64, fua: bool) -> Result<(), sendense_nbd::ExportError> {
        self.saw(fua);
        self.inner.trim(o, l, fua)
    }
    fn flush(&self) -> Result<(), sendense_nbd::ExportError> {
        self.flushes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
    fn block_status(
        &self,
        o: u64,
        l: u64,
    ) -> Result<Vec<sendense_nbd::BlockExtent>, sendense_nbd::ExportError> {
        self.inner.block_status(o, l)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fua_write_trim_write_zeroes_flush_once_each() {
    let export = Arc::new(CountingExport {
        inner: MemoryExport::new(4 << 20),
        flushes: 0.into(),
        fua_seen: 0.into(),
    });
    let r = Arc::new(ExportRegistry::new());
    r.add("count", export.clone()).unwrap();
    let srv = TestServer::start(r, None).await;
    let c = srv.client("count").await;

    c.write(0, &[1; 4096], false).await.unwrap();
    c.trim(1 << 20, 4096, false).await.unwrap();
    c.write_zeroes(2 << 20, 4096, ZeroFlags::default())
        .await
        .unwrap();
    assert_eq!(export.flushes(), 0, "no FUA, no flush");

    c.write(0, &[2; 4096], true).await.unwrap();
    assert_eq!(export.flushes(), 1, "FUA WRITE");
    c.trim(1 << 20, 4096, true).await.unwrap();
    assert_eq!(export.flushes(), 2, "FUA TRIM");
    let fua = ZeroFlags {
        fua: true,
        ..ZeroFlags::default()
    };
    c.write_zeroes(2 << 20, 4096, fua).await.unwrap();
    assert_eq!(export.flushes(), 3, "FUA WRITE_ZEROES");
    // The export did see the flag each time: the single flush is the server's.
    assert_eq!(export.fua_seen.load(std::sync::atomic::Ordering::SeqCst), 3);
    c.flush().await.unwrap();
    assert_eq!(export.flushes(), 4, "FLUSH");
    c.disconnect().await.unwrap();
    srv.stop().await;
}

/// Negotiates structured replies and `GO` on a raw connection, sends one READ and returns
/// the reply chunks exactly as the server sent them (up to the one flagged DONE).
async fn raw_structured_read(
    srv: &TestServer,
    name: &str,
    offset: u64,
    length: u32,
) -> Vec<wire::ReplyChunk> {
    let mut raw = TcpStream::connect(srv.addr).await.unwrap();
    let mut greeting = [0u8; wire::GREETING_LEN];
    raw.read_exact(&mut greeting).await.unwrap();
    let mut msg = (wire::FLAG_C_FIXED_NEWSTYLE | wire::FLAG_C_NO_ZEROES)
        .to_be_bytes()
        .to_vec();
    for o in [
        wire::ClientOption::StructuredReply,
        wire::ClientOption::Go(wire::InfoRequest {
            name: name.into(),
            requests: Vec::new(),
        }),
    ] {
        codec::encode_option_request(&codec::encode_client_option(&o), &mut msg);
    }
    raw.write_all(&msg).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    // Option replies until the ACK of GO.
    'options: loop {
        while let Some((reply, used)) = codec::decode_option_reply(&buf).unwrap() {
            buf.drain(..used);
            assert!(reply.reply_type & wire::rep::ERR_BIT == 0, "{reply:?}");
            if reply.option == wire::opt::GO && reply.reply_type == wire::rep::ACK {
                break 'options;
            }
        }
        let n = raw.read(&mut chunk).await.unwrap();
        assert_ne!(n, 0, "server closed during the handshake");
        buf.extend_from_slice(&chunk[..n]);
    }
    let req = wire::Request {
        flags: 0,
        command: wire::cmd::READ,
        cookie: 9,
        offset,
        length,
    };
    let mut msg = Vec::new();
    codec::encode_request(&req, &mut msg);
    raw.write_all(&msg).await.unwrap();
    let mut chunks = Vec::new();
    loop {
        while let Some((reply, used)) = codec::decode_reply(&buf).unwrap() {
            buf.drain(..used);
            let wire::Reply::Chunk(c) = reply else {
                panic!("simple reply after structured replies were negotiated");
            };
            assert_eq!(c.cookie, 9);
            let done = c.flags & wire::chunk::FLAG_DONE != 0;
            chunks.push(c);
            if done {
                return chunks;
            }
        }
        let n = raw.read(&mut chunk).await.unwrap();
        assert_ne!(n, 0, "server closed before the last chunk");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A memory export that answers `read_now` below 1 MiB only, counting which path served.
#[derive(Debug)]
struct NowExport {
    inner: MemoryExport,
    now_reads: std::sync::atomic::AtomicUsize,
    blocking_reads: std::sync::atomic::AtomicUsize,
}

impl sendense_nbd::Export for NowExport {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn is_read_only(&self) -> bool {
        true
    }
    fn read(&self, o: u64, b: &mut [u8]) -> Result<(), sendense_nbd::ExportError> {
        self.blocking_reads
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.read(o, b)
    }
    fn read_now(&self, o: u64, b: &mut [u8]) -> Option<Result<(), sendense_nbd::ExportError>> {
        if o >= 1 << 20 {
            return None;
        }
        self.now_reads
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Some(self.inner.read(o, b))
    }
    fn write(&self, o: u64, d: &[u8], fua: bool) -> Result<(), sendense_nbd::ExportError> {
        self.inner.write(o, d, fua)
    }
    fn write_zeroes(&self, o: u64, l: u64, f: ZeroFlags) -> Result<(), sendense_nbd::ExportError> {
        self.inner.write_zeroes(o, l, f)
    }
    fn trim(&self, o: u64, l: u64, fua: bool) -> Result<(), sendense_nbd::ExportError> {
        self.inner.trim(o, l, fua)
    }
    fn flush(&self) -> Result<(), sendense_nbd::ExportError> {
        Ok(())
    }
    fn block_status(
        &self,
        o: u64,
        l: u64,
    ) -> Result<Vec<sendense_nbd::BlockExtent>, sendense_nbd::ExportError> {
        self.inner.block_status(o, l)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_small_read_export_answers_now_served_without_blocking_read() {
    let data = random_bytes(4 << 20);
    let export = Arc::new(NowExport {
        inner: MemoryExport::with_data(&data),
        now_reads: 0.into(),
        blocking_reads: 0.into(),
    });
    let r = Arc::new(ExportRegistry::new());
    r.add("now", export.clone()).unwrap();
    let srv = TestServer::start(r, None).await;
    let c = srv.client("now").await;
    let counts = || {
        (
            export.now_reads.load(std::sync::atomic::Ordering::SeqCst),
            export
                .blocking_reads
                .load(std::sync::atomic::Ordering::SeqCst),
        )
    };

    // Small, and the export answers now: no blocking read.
    assert_eq!(c.read(8192, 4096).await.unwrap(), &data[8192..12288]);
    assert_eq!(counts(), (1, 0));
    // Small, but the export would wait: the blocking read serves it.
    assert_eq!(
        c.read(2 << 20, 4096).await.unwrap(),
        &data[2 << 20..(2 << 20) + 4096]
    );
    assert_eq!(counts(), (1, 1));
    // Large: never tried now.
    assert_eq!(c.read(0, 1 << 20).await.unwrap(), &data[..1 << 20]);
    assert_eq!(counts(), (1, 2));
    c.disconnect().await.unwrap();
    srv.stop().await;
}
