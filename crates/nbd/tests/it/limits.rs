//! Nothing a peer does hangs the server: handshake, payload and reply deadlines,
//! connection permits after the handshake with a per-peer cap, removal and
//! shutdown that cut stuck connections, and the server-wide payload budget.
//!
//! Deadline tests run on tokio's paused clock where they can: their peers are
//! in-memory streams served by `Server::serve_stream`, which wake the other
//! side directly, so virtual time advances only when every task waits, and a
//! deadline fires exactly when a peer stalls. Over TCP the paused clock jumps
//! to the next deadline whenever the runtime polls for socket readiness, even
//! with bytes on their way, so tests that need the TCP accept path or our
//! TCP client keep short real deadlines.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use sendense_nbd::wire::{self, cmd};
use sendense_nbd::{
    BlockExtent, Client, ClientOptions, Export, ExportError, ExportRegistry, MemoryExport,
    NbdError, Removal, Server, ServerOptions, ZeroFlags, codec,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};

use crate::common::memory_registry;

/// Generous bound on anything that must happen "soon" (never reached when correct).
const SOON: Duration = Duration::from_secs(20);

/// A server whose handle (for its counters) the test keeps.
struct Running {
    addr: SocketAddr,
    server: Server,
    shutdown: Option<oneshot::Sender<()>>,
    handle: JoinHandle<()>,
}

impl Running {
    async fn start(registry: Arc<ExportRegistry>, options: ServerOptions) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Server::new(registry, options);
        let (tx, rx) = oneshot::channel::<()>();
        let s = server.clone();
        let handle = tokio::spawn(async move {
            s.serve(listener, async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Self {
            addr,
            server,
            shutdown: Some(tx),
            handle,
        }
    }

    fn options(&self, export: &str) -> ClientOptions {
        ClientOptions {
            export_name: export.into(),
            ..Default::default()
        }
    }

    async fn client(&self, export: &str) -> Result<Client, NbdError> {
        Client::connect(self.addr, self.options(export)).await
    }

    /// Signals shutdown and returns how long `serve` took to return.
    async fn stop(mut self) -> Duration {
        let t = Instant::now();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        timeout(SOON, &mut self.handle)
            .await
            .expect("serve did not return")
            .unwrap();
        t.elapsed()
    }
}

/// Reads until EOF or error; `true` if the server closed within `SOON`.
async fn closed_by_server(s: &mut (impl AsyncRead + Unpin)) -> bool {
    let mut buf = vec![0u8; 1 << 16];
    let r = timeout(SOON, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    r.is_ok()
}

/// A raw plain connection in transmission with `name` (`EXPORT_NAME`).
async fn raw_transmission(addr: SocketAddr, name: &str) -> TcpStream {
    let mut raw = TcpStream::connect(addr).await.unwrap();
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

/// Peer address of the in-memory connections (the per-peer cap counts it).
const DUPLEX_PEER: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1));

/// An in-memory connection served by `server` (`serve_stream`), whose buffer in
/// each direction holds `capacity` bytes.
fn serve_duplex(
    server: &Server,
    capacity: usize,
) -> (DuplexStream, JoinHandle<Result<(), NbdError>>) {
    let (peer, io) = tokio::io::duplex(capacity);
    let s = server.clone();
    let served = tokio::spawn(async move { s.serve_stream(io, DUPLEX_PEER).await });
    (peer, served)
}

/// [`serve_duplex`] past an `EXPORT_NAME` handshake for `name`.
async fn duplex_transmission(
    server: &Server,
    name: &str,
    capacity: usize,
) -> (DuplexStream, JoinHandle<Result<(), NbdError>>) {
    let (mut raw, served) = serve_duplex(server, capacity);
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
    (raw, served)
}

/// [`serve_duplex`] with an `NBD_OPT_GO` for `name`; returns the stream and the type of
/// the option's final reply (`ACK`: in transmission; an error: refused).
async fn duplex_go(
    server: &Server,
    name: &str,
) -> (DuplexStream, JoinHandle<Result<(), NbdError>>, u32) {
    let (mut raw, served) = serve_duplex(server, 1 << 16);
    let mut greeting = [0u8; wire::GREETING_LEN];
    raw.read_exact(&mut greeting).await.unwrap();
    let mut msg = (wire::FLAG_C_FIXED_NEWSTYLE | wire::FLAG_C_NO_ZEROES)
        .to_be_bytes()
        .to_vec();
    let go = wire::ClientOption::Go(wire::InfoRequest {
        name: name.into(),
        requests: Vec::new(),
    });
    codec::encode_option_request(&codec::encode_client_option(&go), &mut msg);
    raw.write_all(&msg).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some((reply, used)) = codec::decode_option_reply(&buf).unwrap() {
            buf.drain(..used);
            if reply.reply_type == wire::rep::ACK || reply.reply_type & wire::rep::ERR_BIT != 0 {
                return (raw, served, reply.reply_type);
            }
        }
        let n = raw.read(&mut chunk).await.unwrap();
        assert_ne!(n, 0, "closed before the final reply to GO");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Sends a READ of `len` bytes at 0 and returns its data (a simple reply without error).
async fn raw_read(raw: &mut (impl AsyncRead + AsyncWriteExt + Unpin), len: u32) -> Vec<u8> {
    raw.write_all(&request(cmd::READ, 77, 0, len))
        .await
        .unwrap();
    let mut head = [0u8; wire::SIMPLE_REPLY_HEADER_LEN];
    raw.read_exact(&mut head).await.unwrap();
    let Some((codec::ReplyHeader::Simple { error, cookie }, _)) =
        codec::decode_reply_header(&head).unwrap()
    else {
        panic!("expected a simple reply");
    };
    assert_eq!((error, cookie), (0, 77));
    let mut data = vec![0u8; len as usize];
    raw.read_exact(&mut data).await.unwrap();
    data
}

/// Waits on the paused clock until `cond` holds, advancing virtual time in 10 ms steps
/// (no real wait), up to `SOON` of it.
async fn wait_until_virtual(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + SOON;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::advance(Duration::from_millis(10)).await;
    }
}

fn request(command: u16, cookie: u64, offset: u64, length: u32) -> Vec<u8> {
    let req = wire::Request {
        flags: 0,
        command,
        cookie,
        offset,
        length,
    };
    let mut msg = Vec::new();
    codec::encode_request(&req, &mut msg);
    msg
}

/// Waits (polling with yields, bounded by `SOON`) until `cond` holds.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + SOON;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn silent_peer_dropped_after_handshake_deadline() {
    let options = ServerOptions {
        handshake_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let server = Server::new(memory_registry(), options);
    let t = Instant::now();
    let (mut peer, served) = serve_duplex(&server, 1 << 16);
    assert!(closed_by_server(&mut peer).await, "silent peer kept");
    assert!(
        t.elapsed() >= Duration::from_secs(10),
        "closed before the deadline"
    );
    let ended = served.await.unwrap();
    assert!(matches!(ended, Err(NbdError::TimedOut { .. })), "{ended:?}");
    // The server still serves others.
    let (mut c, _) = duplex_transmission(&server, "mem", 1 << 16).await;
    assert_eq!(raw_read(&mut c, 512).await, vec![0u8; 512]);
}

#[tokio::test(start_paused = true)]
async fn trickling_peer_dropped_at_total_handshake_deadline() {
    // Default deadline: 30 s for the whole handshake. One byte every 29 s keeps
    // every single read within 30 s, but not the handshake.
    let server = Server::new(memory_registry(), ServerOptions::default());
    let start = Instant::now();
    let (peer, served) = serve_duplex(&server, 1 << 16);
    let (mut rd, mut wr) = tokio::io::split(peer);
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 256];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(_) => {}
            }
        }
    });
    // Client flags and the start of an option header: never a complete message.
    let mut bytes = (wire::FLAG_C_FIXED_NEWSTYLE).to_be_bytes().to_vec();
    bytes.extend_from_slice(&wire::IHAVEOPT.to_be_bytes());
    'trickle: for b in bytes {
        // 29 s of virtual time in 1 s steps (the paused clock: no real wait), so the
        // server's deadline fires within a second of when it is due.
        for _ in 0..29 {
            if reader.is_finished() {
                break 'trickle;
            }
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        if wr.write_all(&[b]).await.is_err() {
            break;
        }
    }
    let closed_at = reader.await.unwrap();
    let after = closed_at - start;
    assert!(
        after >= Duration::from_secs(30) && after < Duration::from_secs(35),
        "closed after {after:?}"
    );
    let ended = served.await.unwrap();
    assert!(matches!(ended, Err(NbdError::TimedOut { .. })), "{ended:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_idle_peers_do_not_keep_a_real_client_out() {
    // Few permits: if peers that never finish their handshake held one, the
    // real client could not get in.
    let options = ServerOptions {
        max_connections: 4,
        max_connections_per_peer: 4,
        admission_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let srv = Running::start(memory_registry(), options).await;
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(TcpStream::connect(srv.addr).await.unwrap());
    }
    let c = timeout(SOON, srv.client("mem")).await.unwrap().unwrap();
    let data = crate::common::random_bytes(1 << 20);
    c.write(0, &data, false).await.unwrap();
    assert_eq!(c.read(0, 1 << 20).await.unwrap(), data);
    assert_eq!(srv.server.admitted_connections(), 1);
    c.disconnect().await.unwrap();
    drop(idle);
    srv.stop().await;
}

#[tokio::test(start_paused = true)]
async fn per_peer_cap_refuses_the_connection_past_it() {
    let options = ServerOptions {
        max_connections_per_peer: 2,
        admission_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let server = Server::new(memory_registry(), options);
    let (mut a, _, reply) = duplex_go(&server, "mem").await;
    assert_eq!(reply, wire::rep::ACK);
    let (b, b_served, reply) = duplex_go(&server, "mem").await;
    assert_eq!(reply, wire::rep::ACK);
    let t = Instant::now();
    let (_, _, reply) = duplex_go(&server, "mem").await;
    assert_eq!(reply, wire::rep::ERR_POLICY);
    assert!(
        t.elapsed() >= Duration::from_secs(10),
        "refused before the deadline"
    );
    // The admitted ones are unaffected; a freed permit admits the next client.
    assert_eq!(raw_read(&mut a, 512).await, vec![0u8; 512]);
    drop(b);
    timeout(SOON, b_served).await.unwrap().unwrap().unwrap();
    wait_until("B's permit to come back", || {
        server.admitted_connections() == 1
    })
    .await;
    let (mut c, _, reply) = duplex_go(&server, "mem").await;
    assert_eq!(reply, wire::rep::ACK);
    assert_eq!(raw_read(&mut c, 512).await, vec![0u8; 512]);
    assert_eq!(server.admitted_connections(), 2);
}

#[tokio::test(start_paused = true)]
async fn stalled_write_payload_closes_connection_and_releases_export() {
    let options = ServerOptions {
        payload_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let server = Server::new(memory_registry(), options);
    let registry = Arc::clone(server.registry());
    let (mut raw, served) = duplex_transmission(&server, "mem", 1 << 16).await;
    assert_eq!(registry.connection_count("mem"), Some(1));
    let t = Instant::now();
    let mut msg = request(cmd::WRITE, 1, 0, 4096);
    msg.extend_from_slice(&[7; 100]);
    raw.write_all(&msg).await.unwrap();
    assert!(closed_by_server(&mut raw).await, "stalled WRITE kept");
    assert!(t.elapsed() >= Duration::from_secs(10), "closed too early");
    wait_until_virtual("the export to be released", || {
        registry.connection_count("mem") == Some(0)
    })
    .await;
    assert_eq!(server.payload_bytes_in_flight(), 0);
    assert_eq!(server.admitted_connections(), 0);
    let ended = served.await.unwrap();
    assert!(matches!(ended, Err(NbdError::TimedOut { .. })), "{ended:?}");
}

#[tokio::test(start_paused = true)]
async fn peer_that_stops_reading_is_cut_by_reply_deadline() {
    let options = ServerOptions {
        reply_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let server = Server::new(memory_registry(), options);
    let registry = Arc::clone(server.registry());
    let (mut raw, served) = duplex_transmission(&server, "mem", 1 << 16).await;
    let t = Instant::now();
    // 64 MiB of READ replies, far more than the stream's 64 KiB buffer holds; never read.
    let mut msg = Vec::new();
    for i in 0..64u64 {
        msg.extend_from_slice(&request(cmd::READ, i, 0, 1 << 20));
    }
    raw.write_all(&msg).await.unwrap();
    wait_until_virtual("the export to be released", || {
        registry.connection_count("mem") == Some(0)
    })
    .await;
    assert!(t.elapsed() >= Duration::from_secs(10), "cut too early");
    assert_eq!(server.payload_bytes_in_flight(), 0);
    drop(raw);
    timeout(SOON, served).await.unwrap().unwrap().unwrap_err();
}

#[tokio::test(start_paused = true)]
async fn registry_remove_cuts_a_stuck_connection_after_its_deadline() {
    let registry = Arc::new(ExportRegistry::new().with_drain_timeout(Duration::from_secs(5)));
    registry
        .add("stuck", Arc::new(MemoryExport::new(1 << 20)))
        .unwrap();
    registry
        .add("other", Arc::new(MemoryExport::new(1 << 20)))
        .unwrap();
    let server = Server::new(Arc::clone(&registry), ServerOptions::default());
    let (mut raw, _) = duplex_transmission(&server, "stuck", 1 << 16).await;
    // A WRITE whose payload never comes: the reader is stuck in the payload (its
    // own deadline is the default 60 s).
    raw.write_all(&request(cmd::WRITE, 1, 0, 4096))
        .await
        .unwrap();
    let (mut other, _) = duplex_transmission(&server, "other", 1 << 16).await;
    let t = Instant::now();
    let removal = timeout(SOON, registry.remove("stuck")).await.unwrap();
    assert_eq!(removal, Removal::Cut { connections: 1 });
    assert!(t.elapsed() >= Duration::from_secs(5));
    assert!(
        closed_by_server(&mut raw).await,
        "cut connection still open"
    );
    assert_eq!(registry.remove("stuck").await, Removal::NotFound);
    // Another export's connection is untouched.
    assert_eq!(raw_read(&mut other, 512).await, vec![0u8; 512]);
    assert_eq!(server.admitted_connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_remove_of_idle_connection_drains() {
    let srv = Running::start(memory_registry(), ServerOptions::default()).await;
    let c = srv.client("mem").await.unwrap();
    c.read(0, 512).await.unwrap();
    let removal = timeout(SOON, srv.server.registry().remove("mem"))
        .await
        .unwrap();
    assert_eq!(removal, Removal::Drained);
    assert!(c.read(0, 512).await.is_err());
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_returns_within_its_deadline_after_shutdown_with_a_stuck_peer() {
    let options = ServerOptions {
        shutdown_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let srv = Running::start(memory_registry(), options).await;
    let mut raw = raw_transmission(srv.addr, "mem").await;
    raw.write_all(&request(cmd::WRITE, 1, 0, 4096))
        .await
        .unwrap();
    // And a peer that stays silent in its handshake.
    let mut silent = TcpStream::connect(srv.addr).await.unwrap();
    let took = srv.stop().await;
    assert!(took < Duration::from_secs(5), "serve took {took:?}");
    assert!(closed_by_server(&mut raw).await);
    assert!(closed_by_server(&mut silent).await);
}

/// Writes wait until the test lets them through; records payload bytes inside writes.
#[derive(Debug)]
struct HeldWrites {
    inner: MemoryExport,
    state: Mutex<Held>,
    cv: Condvar,
}

#[derive(Debug, Default)]
struct Held {
    pending: usize,
    pending_bytes: usize,
    max_pending_bytes: usize,
    passes: usize,
}

impl HeldWrites {
    fn pending(&self) -> usize {
        self.state.lock().unwrap().pending
    }

    fn let_one_through(&self) {
        self.state.lock().unwrap().passes += 1;
        self.cv.notify_all();
    }
}

impl Export for HeldWrites {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn is_read_only(&self) -> bool {
        false
    }
    fn read(&self, o: u64, b: &mut [u8]) -> Result<(), ExportError> {
        self.inner.read(o, b)
    }
    fn write(&self, o: u64, d: &[u8], f: bool) -> Result<(), ExportError> {
        let mut st = self.state.lock().unwrap();
        st.pending += 1;
        st.pending_bytes += d.len();
        st.max_pending_bytes = st.max_pending_bytes.max(st.pending_bytes);
        while st.passes == 0 {
            st = self.cv.wait(st).unwrap();
        }
        st.passes -= 1;
        st.pending -= 1;
        st.pending_bytes -= d.len();
        drop(st);
        self.inner.write(o, d, f)
    }
    fn write_zeroes(&self, o: u64, l: u64, f: ZeroFlags) -> Result<(), ExportError> {
        self.inner.write_zeroes(o, l, f)
    }
    fn trim(&self, o: u64, l: u64, f: bool) -> Result<(), ExportError> {
        self.inner.trim(o, l, f)
    }
    fn flush(&self) -> Result<(), ExportError> {
        Ok(())
    }
    fn block_status(&self, o: u64, l: u64) -> Result<Vec<BlockExtent>, ExportError> {
        self.inner.block_status(o, l)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_wide_payload_budget_bounds_bytes_in_flight() {
    const MIB: usize = 1 << 20;
    let export = Arc::new(HeldWrites {
        inner: MemoryExport::new(8 << 20),
        state: Mutex::default(),
        cv: Condvar::new(),
    });
    let registry = Arc::new(ExportRegistry::new());
    registry.add("held", export.clone()).unwrap();
    let options = ServerOptions {
        payload_budget: 2 * MIB,
        ..Default::default()
    };
    let srv = Running::start(registry, options).await;
    let mut writers = Vec::new();
    for i in 0..4u8 {
        let c = srv.client("held").await.unwrap();
        writers.push(tokio::spawn(async move {
            c.write(u64::from(i) * MIB as u64, &vec![i + 1; MIB], false)
                .await?;
            c.disconnect().await
        }));
    }
    // Each connection's own limit (256 MiB) would let all four writes in; the
    // server-wide budget lets two at a time.
    for left in (1..=4usize).rev() {
        wait_until("writes to reach the export", || {
            export.pending() >= left.min(2)
        })
        .await;
        assert!(srv.server.payload_bytes_in_flight() <= 2 * MIB);
        export.let_one_through();
    }
    for w in writers {
        timeout(SOON, w).await.unwrap().unwrap().unwrap();
    }
    let max = export.state.lock().unwrap().max_pending_bytes;
    assert_eq!(max, 2 * MIB, "in-flight payload bytes passed the budget");
    assert_eq!(srv.server.payload_bytes_in_flight(), 0);
    let c = srv.client("held").await.unwrap();
    assert_eq!(c.read(3 * MIB as u64, 512).await.unwrap(), vec![4; 512]);
    c.disconnect().await.unwrap();
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_refused_with_policy_unless_enabled() {
    let srv = Running::start(memory_registry(), ServerOptions::default()).await;
    let err = Client::list_exports(srv.addr, None).await.unwrap_err();
    assert!(
        matches!(
            err,
            NbdError::OptionRefused {
                reply: wire::rep::ERR_POLICY,
                ..
            }
        ),
        "{err}"
    );
    srv.stop().await;
    let listing = ServerOptions {
        list_exports: true,
        ..Default::default()
    };
    let srv = Running::start(memory_registry(), listing).await;
    let names = Client::list_exports(srv.addr, None).await.unwrap();
    assert_eq!(names, vec!["mem".to_owned()]);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_stream_serves_an_in_memory_stream() {
    let server = Server::new(memory_registry(), ServerOptions::default());
    let (mut client, io) = tokio::io::duplex(1 << 20);
    let peer = SocketAddr::from(([127, 0, 0, 1], 1));
    let s = server.clone();
    let served = tokio::spawn(async move { s.serve_stream(io, peer).await });
    let mut greeting = [0u8; wire::GREETING_LEN];
    client.read_exact(&mut greeting).await.unwrap();
    let mut msg = (wire::FLAG_C_FIXED_NEWSTYLE | wire::FLAG_C_NO_ZEROES)
        .to_be_bytes()
        .to_vec();
    let o = codec::encode_client_option(&wire::ClientOption::ExportName("mem".into()));
    codec::encode_option_request(&o, &mut msg);
    // Pipelined after the option: a WRITE, a READ of it, and DISC.
    msg.extend_from_slice(&request(cmd::WRITE, 1, 4096, 512));
    msg.extend_from_slice(&[0x42; 512]);
    msg.extend_from_slice(&request(cmd::READ, 2, 4096, 512));
    msg.extend_from_slice(&request(cmd::DISC, 3, 0, 0));
    client.write_all(&msg).await.unwrap();
    let mut export = [0u8; 10];
    client.read_exact(&mut export).await.unwrap();
    assert_eq!(
        u64::from_be_bytes(export[..8].try_into().unwrap()),
        64 << 20
    );
    let mut out = Vec::new();
    timeout(SOON, client.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    timeout(SOON, served).await.unwrap().unwrap().unwrap();
    // Two simple replies in completion order; the READ's carries the data.
    let head = wire::SIMPLE_REPLY_HEADER_LEN;
    assert_eq!(out.len(), 2 * head + 512);
    let read_at = if out[8..16] == 2u64.to_be_bytes() {
        0
    } else {
        head
    };
    assert_eq!(out[read_at + 8..read_at + 16], 2u64.to_be_bytes());
    assert_eq!(out[read_at + head..read_at + head + 512], [0x42; 512]);
    assert_eq!(server.admitted_connections(), 0);
}

#[tokio::test(start_paused = true)]
async fn removal_refuses_connections_still_waiting_for_a_permit() {
    let registry = Arc::new(ExportRegistry::new().with_drain_timeout(Duration::from_secs(5)));
    registry
        .add("mem", Arc::new(MemoryExport::new(1 << 20)))
        .unwrap();
    let options = ServerOptions {
        max_connections_per_peer: 1,
        admission_timeout: Duration::from_secs(600),
        ..Default::default()
    };
    let server = Server::new(Arc::clone(&registry), options);
    // A holds the one permit and is stuck in a WRITE payload.
    let (mut a, _) = duplex_transmission(&server, "mem", 1 << 16).await;
    a.write_all(&request(cmd::WRITE, 1, 0, 4096)).await.unwrap();
    // Wait until the server has read A's header and waits for its payload: only then is
    // A stuck (before, a removal would find it idle and let it drain).
    wait_until("A's payload to be awaited", || {
        server.payload_bytes_in_flight() == 4096
    })
    .await;
    // B finished its handshake and waits for a permit (it holds the export).
    let s = server.clone();
    let b = tokio::spawn(async move { duplex_go(&s, "mem").await.2 });
    wait_until("B to wait for a permit", || {
        registry.connection_count("mem") == Some(2)
    })
    .await;
    let removal = timeout(SOON, registry.remove("mem")).await.unwrap();
    // Only A was left to cut: B gave up as soon as the removal began.
    assert_eq!(removal, Removal::Cut { connections: 1 });
    let reply = timeout(SOON, b).await.unwrap().unwrap();
    assert_eq!(reply, wire::rep::ERR_POLICY);
    assert!(closed_by_server(&mut a).await);
}
