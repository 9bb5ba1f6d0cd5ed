//! Tokio driver of the NBD server.
//!
//! One task per connection runs the handshake (`session`), applying
//! `tokio-rustls` when the session asks for `StartTls`. In transmission the
//! connection task becomes the *reader*: it decodes request headers, reads
//! WRITE payloads, and hands each request to tokio's blocking pool, where the
//! synchronous [`Export`] method runs and the reply is built. A separate
//! *writer* task serialises finished replies, so replies go out in completion
//! order, not request order. Semaphores bound memory: requests in flight and
//! payload bytes in flight (READ and WRITE lengths) per connection, and one
//! payload byte budget shared by every connection of the server
//! ([`ServerOptions::payload_budget`]). A request's permits are held until its
//! reply is written, so unwritten replies count too.
//!
//! Why the blocking pool: export calls are positional I/O of 1–32 MiB, where
//! a `spawn_blocking` hop (a few microseconds) is noise, and the pool grows to
//! the parallelism the clients offer without a second pool to size. An export
//! that never blocks ([`Export::never_blocks`], the memory export) runs on the
//! connection's task instead, and so does a small READ the export can answer
//! from memory ([`Export::read_now`]: a QCOW2 restore point in the page cache):
//! for 4 KiB random reads the hop, two thread switches, costs more than the read.
//!
//! Nothing a peer does can hang the server (every deadline is a
//! [`ServerOptions`] field):
//! - Accepted sockets get TCP keepalive and `TCP_USER_TIMEOUT`.
//! - The whole handshake (option phase, TLS included) has one total deadline, the
//!   TLS handshake one of its own; a peer that trickles bytes is dropped all the same.
//! - Connections still negotiating are bounded by [`ServerOptions::max_handshakes`]
//!   (further peers wait in the kernel's accept queue); they hold no connection
//!   permit. Permits ([`ServerOptions::max_connections`] in all,
//!   [`ServerOptions::max_connections_per_peer`] per IP address) are taken only when
//!   the handshake is done, just before its final reply. A connection that finds
//!   none waits for one up to [`ServerOptions::admission_timeout`]; then `GO` is
//!   answered `NBD_REP_ERR_POLICY` (`EXPORT_NAME` has no error reply) and the
//!   connection is closed.
//! - Each WRITE payload must arrive within [`ServerOptions::payload_timeout`], each
//!   reply must be taken by the peer within [`ServerOptions::reply_timeout`];
//!   otherwise the connection is closed. Idle connections between requests are
//!   allowed (the owner watches [`ExportRegistry::last_activity`]).
//!
//! Shutdown: `serve` stops accepting when its shutdown future resolves and
//! signals every connection. A connection told to stop (server shutdown or
//! export removal) reads no more requests, lets in-flight ones finish and their
//! replies drain, then closes (TLS `close_notify`, then FIN), as proto.md asks
//! of a server shutting down. Connections still open after
//! [`ServerOptions::shutdown_timeout`] are cut: their sockets close, unwritten
//! replies are dropped, and only export calls already running are waited for
//! (up to one more `shutdown_timeout`, after which their tasks are aborted), so
//! `serve` returns within twice `shutdown_timeout` whatever peers do.
//! [`ExportRegistry::remove`] cuts the connections of one export the same way
//! after the registry's drain deadline.

use std::collections::HashMap;
use std::io::Cursor;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::timeout;
use tracing::{Instrument, debug, info_span, warn};

use crate::codec;
use crate::error::NbdError;
use crate::export::{ConnectionGuard, Export, ExportError, ExportRegistry, ZeroFlags};
use sendense_io::is_zero;

use crate::session::{Negotiated, ServerSession, SessionAction, TlsPolicy};
use crate::wire::{self, ChunkPayload, Errno, Request, cflag, chunk, cmd, state};

use sendense_io::{BufPool, PooledBuf};

/// Alignment of READ and WRITE payload buffers: the page size, so an export can hand them to
/// `O_DIRECT` reads and writes.
pub const PAYLOAD_ALIGN: usize = sendense_io::PAGE_SIZE;

/// Free payload buffers a connection keeps for reuse; more are dropped when they come back.
const KEEP_FREE_PAYLOADS: usize = 8;

/// Server limits, deadlines and TLS. The defaults suit a hub: see each field.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// TLS configuration; `Some` makes TLS required (FORCEDTLS).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Whether `NBD_OPT_LIST` answers the export names (default `false`: refused with
    /// `NBD_REP_ERR_POLICY`, since export names are capabilities).
    pub list_exports: bool,
    /// Most connections still in their handshake (default 1024); further peers wait
    /// in the kernel's accept queue. Each costs a task and a small buffer only.
    pub max_handshakes: usize,
    /// Most connections past their handshake (default 256).
    pub max_connections: usize,
    /// Most connections past their handshake from one IP address (default 64).
    pub max_connections_per_peer: usize,
    /// How long a connection that finished its handshake waits for a connection
    /// permit before it is refused and closed (default 10 s).
    pub admission_timeout: Duration,
    /// Most requests in flight per connection (default 64).
    pub max_in_flight_requests: usize,
    /// Most READ/WRITE payload bytes in flight per connection (default 256 MiB; at
    /// least one maximal request, 32 MiB).
    pub max_in_flight_bytes: u32,
    /// READ/WRITE payload bytes in flight over all connections (default 1 GiB). A
    /// single request larger than the budget takes all of it.
    pub payload_budget: usize,
    /// Deadline of the whole handshake, from accept to the final option, TLS
    /// included (default 30 s).
    pub handshake_timeout: Duration,
    /// Deadline of the TLS handshake (default 10 s).
    pub tls_handshake_timeout: Duration,
    /// Deadline of each WRITE payload, from its header to its last byte (default 60 s).
    pub payload_timeout: Duration,
    /// Deadline of each reply write: the peer must take a reply within it (default 60 s).
    pub reply_timeout: Duration,
    /// After shutdown, how long connections may drain before they are cut (default 10 s).
    pub shutdown_timeout: Duration,
    /// Idle time before TCP keepalive probes start (default 30 s; probes every 10 s,
    /// 3 unanswered end the connection).
    pub tcp_keepalive: Duration,
    /// `TCP_USER_TIMEOUT`: unacknowledged sent data older than this ends the
    /// connection (default 60 s).
    pub tcp_user_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            tls: None,
            list_exports: false,
            max_handshakes: 1024,
            max_connections: 256,
            max_connections_per_peer: 64,
            admission_timeout: Duration::from_secs(10),
            max_in_flight_requests: 64,
            max_in_flight_bytes: 256 * 1024 * 1024,
            payload_budget: 1024 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(30),
            tls_handshake_timeout: Duration::from_secs(10),
            payload_timeout: Duration::from_secs(60),
            reply_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(10),
            tcp_keepalive: Duration::from_secs(30),
            tcp_user_timeout: Duration::from_secs(60),
        }
    }
}

/// The NBD server: serves the exports of a registry on a listener.
///
/// Clones share one state (permits, payload budget, shutdown); once a shutdown
/// began, the server serves nothing more.
#[derive(Debug, Clone)]
pub struct Server {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    registry: Arc<ExportRegistry>,
    options: ServerOptions,
    admission: Arc<Admission>,
    budget: Arc<Semaphore>,
    budget_size: usize,
    /// Graceful stop: read no more requests, drain, close.
    stop: watch::Sender<bool>,
    /// Forced end: close now.
    cut: watch::Sender<bool>,
}

/// Largest READ tried on the connection's task ([`Export::read_now`]): a copy this small
/// delays the next request by a microsecond or two, a larger one would stall the pipeline.
const READ_NOW_MAX: u32 = 64 * 1024;
/// Granule of zero detection when splitting structured READ replies.
const READ_GRAIN: usize = 64 * 1024;
/// Read buffer of the request reader.
const READ_BUFFER: usize = 256 * 1024;
/// Read buffer of the handshake (options are small; the session buffers the rest).
const HANDSHAKE_BUFFER: usize = 16 * 1024;
/// TCP keepalive probe interval and count.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_PROBES: u32 = 3;

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

impl Server {
    /// A server for `registry`.
    #[must_use]
    pub fn new(registry: Arc<ExportRegistry>, options: ServerOptions) -> Self {
        let budget_size = options.payload_budget.clamp(1, Semaphore::MAX_PERMITS);
        let admission = Arc::new(Admission {
            max: options.max_connections.max(1),
            per_peer: options.max_connections_per_peer.max(1),
            state: Mutex::default(),
            freed: Notify::new(),
        });
        Self {
            shared: Arc::new(Shared {
                registry,
                options,
                admission,
                budget: Arc::new(Semaphore::new(budget_size)),
                budget_size,
                stop: watch::Sender::new(false),
                cut: watch::Sender::new(false),
            }),
        }
    }

    /// The registry served.
    #[must_use]
    pub fn registry(&self) -> &Arc<ExportRegistry> {
        &self.shared.registry
    }

    /// READ/WRITE payload bytes in flight over all connections (buffered requests
    /// and unwritten replies); never above [`ServerOptions::payload_budget`].
    #[must_use]
    pub fn payload_bytes_in_flight(&self) -> usize {
        self.shared.budget_size - self.shared.budget.available_permits()
    }

    /// Connections past their handshake (holding a connection permit).
    #[must_use]
    pub fn admitted_connections(&self) -> usize {
        self.shared.admission.lock().total
    }

    /// Accepts connections until `shutdown` resolves, then lets every connection
    /// finish its in-flight requests and close, cutting those still open after
    /// [`ServerOptions::shutdown_timeout`]; returns within twice that deadline.
    ///
    /// # Errors
    /// Never at present; accept errors are logged and retried.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), NbdError> {
        let opts = &self.shared.options;
        let handshakes = Arc::new(Semaphore::new(opts.max_handshakes.max(1)));
        let mut tasks = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                () = &mut shutdown => break,
                p = Arc::clone(&handshakes).acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let (stream, peer) = tokio::select! {
                () = &mut shutdown => break,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        continue;
                    }
                },
            };
            if let Err(e) = configure_socket(&stream, opts) {
                debug!(error = %e, %peer, "cannot set socket options");
            }
            let server = self.clone();
            tasks.spawn(async move { server.serve_conn(stream, peer, Some(permit)).await });
            while tasks.try_join_next().is_some() {}
        }
        drop(listener);
        self.shared.stop.send_replace(true);
        let drained = timeout(opts.shutdown_timeout, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(
                connections = tasks.len(),
                "connections still open after the shutdown deadline: cutting them"
            );
            self.shared.cut.send_replace(true);
            let ended = timeout(opts.shutdown_timeout, async {
                while tasks.join_next().await.is_some() {}
            })
            .await;
            if ended.is_err() {
                warn!(
                    connections = tasks.len(),
                    "aborting connections stuck in export calls"
                );
                tasks.shutdown().await;
            }
        }
        Ok(())
    }

    /// Serves one already accepted connection (TCP, or any byte stream such as an
    /// in-memory duplex) from handshake to close, with the server's limits and
    /// deadlines; `peer` is the address the per-peer cap counts. `serve` uses it
    /// for every TCP connection; callers with streams of their own call it on a
    /// task of theirs. It ends on the server's shutdown like the others.
    ///
    /// # Errors
    /// The peer broke the protocol, a deadline passed, or the transport failed.
    pub async fn serve_stream<S>(&self, io: S, peer: SocketAddr) -> Result<(), NbdError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let conn = Conn {
            shared: Arc::clone(&self.shared),
            peer,
        };
        conn.run(Box::new(io), None).await
    }

    async fn serve_conn(
        self,
        stream: TcpStream,
        peer: SocketAddr,
        slot: Option<OwnedSemaphorePermit>,
    ) {
        let conn = Conn {
            shared: Arc::clone(&self.shared),
            peer,
        };
        let span = info_span!("nbd_conn", %peer);
        if let Err(e) = conn.run(Box::new(stream), slot).instrument(span).await {
            debug!(%peer, error = %e, "connection ended with error");
        }
    }
}

/// TCP_NODELAY, keepalive and `TCP_USER_TIMEOUT` on an accepted socket.
fn configure_socket(stream: &TcpStream, opts: &ServerOptions) -> std::io::Result<()> {
    use rustix::net::sockopt;
    stream.set_nodelay(true)?;
    sockopt::set_socket_keepalive(stream, true)?;
    sockopt::set_tcp_keepidle(stream, opts.tcp_keepalive.max(Duration::from_secs(1)))?;
    sockopt::set_tcp_keepintvl(stream, KEEPALIVE_INTERVAL)?;
    sockopt::set_tcp_keepcnt(stream, KEEPALIVE_PROBES)?;
    let ms = u32::try_from(opts.tcp_user_timeout.as_millis()).unwrap_or(u32::MAX);
    sockopt::set_tcp_user_timeout(stream, ms)?;
    Ok(())
}

/// Connection permits: at most `max` in all and `per_peer` per IP address.
#[derive(Debug)]
struct Admission {
    max: usize,
    per_peer: usize,
    state: Mutex<AdmissionState>,
    freed: Notify,
}

#[derive(Debug, Default)]
struct AdmissionState {
    total: usize,
    peers: HashMap<IpAddr, usize>,
}

/// A connection permit; returned on drop.
#[derive(Debug)]
struct Admitted {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Admission {
    fn lock(&self) -> std::sync::MutexGuard<'_, AdmissionState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn try_admit(self: &Arc<Self>, ip: IpAddr) -> Option<Admitted> {
        let mut st = self.lock();
        let mine = st.peers.get(&ip).copied().unwrap_or(0);
        if st.total >= self.max || mine >= self.per_peer {
            return None;
        }
        st.total += 1;
        st.peers.insert(ip, mine + 1);
        Some(Admitted {
            admission: Arc::clone(self),
            ip,
        })
    }

    /// Waits until a permit for `ip` is free.
    async fn admit(self: &Arc<Self>, ip: IpAddr) -> Admitted {
        loop {
            let freed = self.freed.notified();
            let mut freed = std::pin::pin!(freed);
            freed.as_mut().enable();
            if let Some(a) = self.try_admit(ip) {
                return a;
            }
            freed.await;
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut st = self.admission.lock();
        st.total = st.total.saturating_sub(1);
        if let Some(n) = st.peers.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.peers.remove(&self.ip);
            }
        }
        drop(st);
        self.admission.freed.notify_waiters();
    }
}

/// Permits a request holds until its reply is written (or dropped).
#[derive(Debug)]
struct Held {
    _request: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
    _budget: OwnedSemaphorePermit,
}

/// One encoded reply on its way to the writer.
struct Out {
    bytes: Vec<Bytes>,
    _held: Option<Held>,
}

/// How the handshake ended.
enum Handshake {
    /// Serve this export on this stream.
    Serve(Box<dyn Stream>, Box<Negotiated<ConnectionGuard>>),
    /// The peer left, aborted, or the server is stopping.
    Done,
}

struct Conn {
    shared: Arc<Shared>,
    peer: SocketAddr,
}

impl Conn {
    fn opts(&self) -> &ServerOptions {
        &self.shared.options
    }

    async fn run(
        self,
        io: Box<dyn Stream>,
        slot: Option<OwnedSemaphorePermit>,
    ) -> Result<(), NbdError> {
        let mut stop = self.shared.stop.subscribe();
        let mut cut = self.shared.cut.subscribe();
        let handshake = tokio::select! {
            r = timeout(self.opts().handshake_timeout, self.handshake(io)) => match r {
                Ok(r) => r?,
                Err(_) => {
                    debug!(peer = %self.peer, "handshake deadline passed");
                    return Err(NbdError::TimedOut { what: "the handshake" });
                }
            },
            _ = stop.wait_for(|s| *s) => return Ok(()),
        };
        // The handshake slot is free again; a connection permit is what counts now.
        drop(slot);
        let Handshake::Serve(mut io, n) = handshake else {
            return Ok(());
        };
        // A connection waiting for its permit already holds the export: it gives
        // up at once when the export is being removed.
        let mut closing = n.attachment.entry().closing();
        let admit = self.shared.admission.admit(self.peer.ip());
        let admitted = tokio::select! {
            r = timeout(self.opts().admission_timeout, admit) => r.map_err(|_| "too many connections"),
            _ = stop.wait_for(|s| *s) => Err("server shutdown"),
            _ = cut.wait_for(|s| *s) => Err("server shutdown"),
            _ = closing.wait_for(|s| *s) => Err("export removed"),
        };
        let admitted = match admitted {
            Ok(a) => a,
            Err(why) => {
                debug!(peer = %self.peer, why, "not admitted: refusing");
                let _ = timeout(self.opts().reply_timeout, async {
                    io.write_all(n.refusal()).await?;
                    io.flush().await?;
                    io.shutdown().await
                })
                .await;
                return Err(NbdError::Cut { why });
            }
        };
        match timeout(self.opts().reply_timeout, async {
            io.write_all(n.reply()).await?;
            io.flush().await
        })
        .await
        {
            Ok(r) => r?,
            Err(_) => {
                return Err(NbdError::TimedOut {
                    what: "the peer to take the handshake reply",
                });
            }
        }
        debug!(export = %n.name, structured = n.structured_replies, "transmission");
        let r = self.transmission(io, *n).await;
        drop(admitted);
        r
    }

    /// The option phase: greeting, options, TLS; ends with the stream to serve.
    async fn handshake(&self, mut io: Box<dyn Stream>) -> Result<Handshake, NbdError> {
        let policy = if self.opts().tls.is_some() {
            TlsPolicy::Required
        } else {
            TlsPolicy::Off
        };
        let mut session = ServerSession::new(Arc::clone(&self.shared.registry), policy)
            .with_listing(self.opts().list_exports);
        io.write_all(&session.greeting()).await?;
        io.flush().await?;
        let mut buf = vec![0u8; HANDSHAKE_BUFFER];
        loop {
            let n = io.read(&mut buf).await?;
            if n == 0 {
                return Ok(Handshake::Done);
            }
            for action in session.receive(&buf[..n])? {
                match action {
                    SessionAction::Send(bytes) => {
                        io.write_all(&bytes).await?;
                        io.flush().await?;
                    }
                    SessionAction::StartTls => {
                        let Some(config) = self.opts().tls.clone() else {
                            return Err(NbdError::protocol("TLS requested without configuration"));
                        };
                        let acceptor = tokio_rustls::TlsAcceptor::from(config);
                        let tls = timeout(self.opts().tls_handshake_timeout, acceptor.accept(io));
                        io = match tls.await {
                            Ok(r) => Box::new(r?),
                            Err(_) => {
                                return Err(NbdError::TimedOut {
                                    what: "the TLS handshake",
                                });
                            }
                        };
                        session.tls_started();
                    }
                    SessionAction::Close => {
                        let _ = io.shutdown().await;
                        return Ok(Handshake::Done);
                    }
                    SessionAction::Transmission(n) => return Ok(Handshake::Serve(io, n)),
                }
            }
        }
    }

    /// Serves requests until the peer leaves, the export or server stops (graceful),
    /// or a cut; in every case waits for export calls already running before the
    /// export is released.
    async fn transmission(
        &self,
        io: Box<dyn Stream>,
        mut n: Negotiated<ConnectionGuard>,
    ) -> Result<(), NbdError> {
        let max_requests = self.opts().max_in_flight_requests.clamp(1, 1 << 16);
        let requests = Arc::new(Semaphore::new(max_requests));
        let mut export_cut = n.attachment.entry().cut();
        let mut server_cut = self.shared.cut.subscribe();
        let leftover = std::mem::take(&mut n.leftover);
        let result = tokio::select! {
            biased;
            _ = export_cut.wait_for(|c| *c) => Err(NbdError::Cut { why: "export removed" }),
            _ = server_cut.wait_for(|c| *c) => Err(NbdError::Cut { why: "server shutdown" }),
            r = self.requests(io, &n, leftover, Arc::clone(&requests)) => r,
        };
        // Export calls already running hold request permits until they return.
        #[allow(clippy::cast_possible_truncation)] // max_requests <= 65536
        let _ = requests.acquire_many(max_requests as u32).await;
        drop(n);
        result
    }

    /// The reader loop and its writer task.
    async fn requests(
        &self,
        io: Box<dyn Stream>,
        n: &Negotiated<ConnectionGuard>,
        leftover: Vec<u8>,
        requests: Arc<Semaphore>,
    ) -> Result<(), NbdError> {
        let opts = self.opts();
        let (rd, wr) = tokio::io::split(io);
        let mut rd = BufReader::with_capacity(READ_BUFFER, Cursor::new(leftover).chain(rd));
        let max_bytes = opts.max_in_flight_bytes.max(wire::MAX_REQUEST_PAYLOAD);
        let budget_size = u32::try_from(self.shared.budget_size).unwrap_or(u32::MAX);
        let (tx, rx) = mpsc::channel::<Out>(requests.available_permits());
        let writer = AbortOnDrop(tokio::spawn(writer_task(wr, rx, opts.reply_timeout)));
        let bytes = Arc::new(Semaphore::new(max_bytes as usize));
        let payloads = BufPool::new(KEEP_FREE_PAYLOADS);
        let ctx = Arc::new(Ctx {
            export: Arc::clone(&n.export),
            payloads: payloads.clone(),
            structured: n.structured_replies,
            base_allocation: n.base_allocation,
        });
        let entry = n.attachment.entry();
        let mut stop = self.shared.stop.subscribe();
        let mut closing = entry.closing();
        let result = loop {
            let mut hdr = [0u8; wire::REQUEST_HEADER_LEN];
            let r = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break Ok(true),
                _ = closing.wait_for(|s| *s) => break Ok(true),
                () = tx.closed() => break Err(NbdError::Closed),
                r = rd.read_exact(&mut hdr) => r,
            };
            match r {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break Ok(false),
                Err(e) => break Err(e.into()),
            }
            let req = match codec::decode_request(&hdr) {
                Ok(Some((req, _))) => req,
                Ok(None) => break Err(NbdError::protocol("short request header")),
                Err(e) => {
                    warn!(error = %e, "bad request, disconnecting");
                    break Err(e);
                }
            };
            entry.touch();
            if req.command == cmd::DISC {
                break Ok(false);
            }
            let len = match req.command {
                cmd::READ | cmd::WRITE => req.length,
                _ => 0,
            };
            let Ok(request) = Arc::clone(&requests).acquire_owned().await else {
                break Ok(false);
            };
            let Ok(own) = Arc::clone(&bytes)
                .acquire_many_owned(len.min(max_bytes))
                .await
            else {
                break Ok(false);
            };
            let shared_budget = Arc::clone(&self.shared.budget);
            let Ok(budget) = shared_budget.acquire_many_owned(len.min(budget_size)).await else {
                break Ok(false);
            };
            let held = Held {
                _request: request,
                _bytes: own,
                _budget: budget,
            };
            let mut payload = PooledBuf::empty();
            if req.command == cmd::WRITE {
                payload = payloads.take(req.length as usize);
                match timeout(opts.payload_timeout, rd.read_exact(&mut payload[..])).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => break Err(e.into()),
                    Err(_) => {
                        break Err(NbdError::TimedOut {
                            what: "a WRITE payload",
                        });
                    }
                }
            }
            let now = if ctx.export.never_blocks() {
                Some(ctx.answer(&req, std::mem::replace(&mut payload, PooledBuf::empty())))
            } else {
                // Cached data needs no thread: answered here, the request skips the hop.
                ctx.read_now(&req)
            };
            if let Some(bytes) = now {
                let out = Out {
                    bytes,
                    _held: Some(held),
                };
                if tx.send(out).await.is_err() {
                    break Err(NbdError::Closed);
                }
            } else {
                let ctx = Arc::clone(&ctx);
                let tx = tx.clone();
                tokio::task::spawn_blocking(move || {
                    let out = Out {
                        bytes: ctx.answer(&req, payload),
                        _held: Some(held),
                    };
                    let _ = tx.blocking_send(out);
                });
            }
        };
        if let Ok(true) = result {
            // Shutting down: requests already received get ESHUTDOWN (proto.md,
            // "Terminating the transmission phase").
            shutdown_buffered(rd.buffer(), &ctx, &tx);
        }
        // Let in-flight requests finish; their replies drain through the writer
        // (each write within the reply deadline).
        drop(tx);
        match writer.join().await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!(error = %e, "reply writer failed"),
            Err(e) => debug!(error = %e, "reply writer panicked"),
        }
        result.map(drop)
    }
}

/// A task aborted when its handle is dropped (a cut connection drops its writer).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    async fn join(mut self) -> Result<T, tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Answers every complete request in `buf` with `ESHUTDOWN`.
fn shutdown_buffered(buf: &[u8], ctx: &Ctx, tx: &mpsc::Sender<Out>) {
    let mut pos = 0;
    while let Ok(Some((req, used))) = codec::decode_request(&buf[pos..]) {
        let need = used + req.payload_len() as usize;
        if buf.len() - pos < need || req.command == cmd::DISC {
            break;
        }
        pos += need;
        let out = Out {
            bytes: ctx.error_reply(&req, Errno::Shutdown),
            _held: None,
        };
        let _ = tx.try_send(out);
    }
}

/// Writes replies in completion order; each reply must be taken within `deadline`.
async fn writer_task(
    wr: tokio::io::WriteHalf<Box<dyn Stream>>,
    mut rx: mpsc::Receiver<Out>,
    deadline: Duration,
) -> Result<(), NbdError> {
    let mut w = BufWriter::with_capacity(READ_BUFFER, wr);
    let late = |_: tokio::time::error::Elapsed| NbdError::TimedOut {
        what: "the peer to take a reply",
    };
    while let Some(msg) = rx.recv().await {
        timeout(deadline, write_out(&mut w, msg))
            .await
            .map_err(late)??;
        while let Ok(msg) = rx.try_recv() {
            timeout(deadline, write_out(&mut w, msg))
                .await
                .map_err(late)??;
        }
        timeout(deadline, w.flush()).await.map_err(late)??;
    }
    timeout(deadline, async {
        w.flush().await?;
        w.shutdown().await
    })
    .await
    .map_err(late)??;
    Ok(())
}

async fn write_out<W: AsyncWrite + Unpin>(w: &mut W, msg: Out) -> std::io::Result<()> {
    for b in &msg.bytes {
        w.write_all(b).await?;
    }
    Ok(())
}

/// What the request workers of one connection share.
struct Ctx {
    export: Arc<dyn Export>,
    payloads: BufPool,
    structured: bool,
    base_allocation: bool,
}

impl Ctx {
    /// [`Self::handle`] with the payload's buffer given back to its pool as soon as the
    /// request is done; a panicking export answers `EIO`.
    fn answer(&self, req: &Request, payload: PooledBuf) -> Vec<Bytes> {
        let reply = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.handle(req, &payload[..])
        }))
        .unwrap_or_else(|_| self.error_reply(req, Errno::Io));
        drop(payload);
        reply
    }

    /// Validates and executes one request, returning the encoded reply.
    fn handle(&self, req: &Request, payload: &[u8]) -> Vec<Bytes> {
        if let Err(errno) = self.validate(req) {
            return self.error_reply(req, errno);
        }
        let e = &self.export;
        let fua = req.flags & cflag::FUA != 0;
        let len = u64::from(req.length);
        // FUA is the server's (the `Export::write` contract): one flush after the
        // request succeeded, so durability never depends on an export honouring the
        // flag, and no export flushes a second time for it.
        let durable = |r: Result<(), ExportError>| if fua { r.and_then(|()| e.flush()) } else { r };
        let done = |r: Result<(), ExportError>| match r {
            Ok(()) => vec![simple(0, req.cookie)],
            Err(err) => self.error_reply(req, err.errno()),
        };
        match req.command {
            cmd::READ => self.read(req),
            cmd::WRITE => done(durable(e.write(req.offset, payload, fua))),
            cmd::FLUSH => done(e.flush()),
            cmd::TRIM => done(durable(e.trim(req.offset, len, fua))),
            cmd::WRITE_ZEROES => {
                let flags = ZeroFlags {
                    may_trim: req.flags & cflag::NO_HOLE == 0,
                    fast_zero: req.flags & cflag::FAST_ZERO != 0,
                    fua,
                };
                done(durable(e.write_zeroes(req.offset, len, flags)))
            }
            cmd::BLOCK_STATUS => self.block_status(req),
            _ => self.error_reply(req, Errno::Inval),
        }
    }

    fn validate(&self, req: &Request) -> Result<(), Errno> {
        let allowed = match req.command {
            cmd::READ if self.structured => cflag::FUA | cflag::DF,
            cmd::READ | cmd::WRITE | cmd::FLUSH | cmd::TRIM => cflag::FUA,
            cmd::WRITE_ZEROES => cflag::FUA | cflag::NO_HOLE | cflag::FAST_ZERO,
            cmd::BLOCK_STATUS => cflag::FUA | cflag::REQ_ONE,
            _ => return Err(Errno::Inval),
        };
        if req.flags & !allowed != 0 {
            return Err(Errno::Inval);
        }
        let writes = matches!(req.command, cmd::WRITE | cmd::TRIM | cmd::WRITE_ZEROES);
        if writes && self.export.is_read_only() {
            return Err(Errno::Perm);
        }
        if req.command == cmd::FLUSH {
            return Ok(());
        }
        let in_bounds = req
            .offset
            .checked_add(u64::from(req.length))
            .is_some_and(|end| end <= self.export.size());
        if !in_bounds {
            let spc = matches!(req.command, cmd::WRITE | cmd::WRITE_ZEROES);
            return Err(if spc { Errno::NoSpc } else { Errno::Inval });
        }
        if req.command == cmd::READ && req.length > wire::MAX_REQUEST_PAYLOAD {
            return Err(Errno::Overflow);
        }
        if req.command == cmd::BLOCK_STATUS && !self.base_allocation {
            return Err(Errno::Inval);
        }
        Ok(())
    }

    /// Answers a small valid READ on the caller's task if the export reads it without waiting
    /// ([`Export::read_now`]); `None` otherwise. A panicking export answers `EIO`.
    fn read_now(&self, req: &Request) -> Option<Vec<Bytes>> {
        if req.command != cmd::READ || req.length > READ_NOW_MAX || self.validate(req).is_err() {
            return None;
        }
        let mut buf = self.payloads.take(req.length as usize);
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.export.read_now(req.offset, &mut buf[..])
        }));
        match read {
            Ok(None) => None,
            Ok(Some(Ok(()))) => Some(self.read_reply(req, buf)),
            Ok(Some(Err(e))) => Some(self.error_reply(req, e.errno())),
            Err(_) => Some(self.error_reply(req, Errno::Io)),
        }
    }

    fn read(&self, req: &Request) -> Vec<Bytes> {
        let mut buf = self.payloads.take(req.length as usize);
        if let Err(e) = self.export.read(req.offset, &mut buf[..]) {
            return self.error_reply(req, e.errno());
        }
        self.read_reply(req, buf)
    }

    /// The reply of a READ whose data is in `buf`.
    fn read_reply(&self, req: &Request, buf: PooledBuf) -> Vec<Bytes> {
        if !self.structured {
            return vec![simple(0, req.cookie), Bytes::from_owner(buf)];
        }
        if buf.is_empty() {
            return vec![chunk_bytes(
                chunk::FLAG_DONE,
                req.cookie,
                &ChunkPayload::None,
            )];
        }
        let data = Bytes::from_owner(buf);
        if req.flags & cflag::DF != 0 || data.len() <= READ_GRAIN {
            return data_chunk(chunk::FLAG_DONE, req.cookie, req.offset, data);
        }
        // Runs of whole zero grains become OFFSET_HOLE chunks.
        let mut runs: Vec<(usize, usize, bool)> = Vec::new();
        let mut pos = 0;
        while pos < data.len() {
            let end = (pos + READ_GRAIN).min(data.len());
            let zero = is_zero(&data[pos..end]);
            match runs.last_mut() {
                Some(last) if last.2 == zero => last.1 = end,
                _ => runs.push((pos, end, zero)),
            }
            pos = end;
        }
        let mut out = Vec::with_capacity(runs.len() * 2);
        let last = runs.len() - 1;
        for (i, (start, end, zero)) in runs.into_iter().enumerate() {
            let flags = if i == last { chunk::FLAG_DONE } else { 0 };
            let offset = req.offset + start as u64;
            if zero {
                #[allow(clippy::cast_possible_truncation)] // <= MAX_REQUEST_PAYLOAD
                let size = (end - start) as u32;
                let p = ChunkPayload::OffsetHole { offset, size };
                out.push(chunk_bytes(flags, req.cookie, &p));
            } else {
                out.extend(data_chunk(
                    flags,
                    req.cookie,
                    offset,
                    data.slice(start..end),
                ));
            }
        }
        out
    }

    fn block_status(&self, req: &Request) -> Vec<Bytes> {
        let extents = match self.export.block_status(req.offset, u64::from(req.length)) {
            Ok(x) => x,
            Err(e) => return self.error_reply(req, e.errno()),
        };
        let mut left = u64::from(req.length);
        let mut descriptors: Vec<(u32, u32)> = Vec::new();
        for x in extents {
            if left == 0 || descriptors.len() >= wire::MAX_BLOCK_STATUS_DESCRIPTORS {
                break;
            }
            let n = x.length.min(left);
            if n == 0 {
                continue;
            }
            left -= n;
            let flags = if x.hole { state::HOLE } else { 0 } | if x.zero { state::ZERO } else { 0 };
            #[allow(clippy::cast_possible_truncation)] // n <= request length (u32)
            let n32 = n as u32;
            match descriptors.last_mut() {
                Some(last) if last.1 == flags => last.0 += n32,
                _ => descriptors.push((n32, flags)),
            }
        }
        if descriptors.is_empty() {
            return self.error_reply(req, Errno::Io);
        }
        if req.flags & cflag::REQ_ONE != 0 {
            descriptors.truncate(1);
        }
        let p = ChunkPayload::BlockStatus {
            context_id: wire::BASE_ALLOCATION_ID,
            descriptors,
        };
        vec![chunk_bytes(chunk::FLAG_DONE, req.cookie, &p)]
    }

    fn error_reply(&self, req: &Request, errno: Errno) -> Vec<Bytes> {
        if self.structured {
            let p = ChunkPayload::Error {
                error: errno.code(),
                message: errno.to_string(),
            };
            vec![chunk_bytes(chunk::FLAG_DONE, req.cookie, &p)]
        } else {
            vec![simple(errno.code(), req.cookie)]
        }
    }
}

fn simple(error: u32, cookie: u64) -> Bytes {
    let mut out = Vec::with_capacity(wire::SIMPLE_REPLY_HEADER_LEN);
    codec::encode_simple_reply(error, cookie, &mut out);
    Bytes::from(out)
}

fn chunk_bytes(flags: u16, cookie: u64, p: &ChunkPayload) -> Bytes {
    let mut out = Vec::new();
    codec::encode_reply(
        &wire::Reply::Chunk(wire::ReplyChunk {
            flags,
            cookie,
            payload: p.clone(),
        }),
        &mut out,
    );
    Bytes::from(out)
}

/// An OFFSET_DATA chunk as header bytes plus the data slice (no copy).
fn data_chunk(flags: u16, cookie: u64, offset: u64, data: Bytes) -> Vec<Bytes> {
    let mut head = Vec::with_capacity(wire::STRUCTURED_REPLY_HEADER_LEN + 8);
    #[allow(clippy::cast_possible_truncation)] // data <= MAX_REQUEST_PAYLOAD
    let len = data.len() as u32 + 8;
    codec::encode_chunk_header(flags, chunk::OFFSET_DATA, cookie, len, &mut head);
    head.extend_from_slice(&offset.to_be_bytes());
    vec![Bytes::from(head), data]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::net::sockopt;

    #[tokio::test]
    async fn accepted_sockets_get_keepalive_and_user_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let opts = ServerOptions {
            tcp_keepalive: Duration::from_secs(45),
            tcp_user_timeout: Duration::from_millis(12_345),
            ..ServerOptions::default()
        };
        configure_socket(&stream, &opts).unwrap();
        assert!(sockopt::socket_keepalive(&stream).unwrap());
        assert_eq!(
            sockopt::tcp_keepidle(&stream).unwrap(),
            Duration::from_secs(45)
        );
        assert_eq!(sockopt::tcp_keepcnt(&stream).unwrap(), KEEPALIVE_PROBES);
        assert_eq!(sockopt::tcp_user_timeout(&stream).unwrap(), 12_345);
        assert!(stream.nodelay().unwrap());
    }

    #[test]
    fn admission_caps_total_and_per_peer_and_frees_on_drop() {
        let a = Arc::new(Admission {
            max: 3,
            per_peer: 2,
            state: Mutex::default(),
            freed: Notify::new(),
        });
        let one: IpAddr = [10, 0, 0, 1].into();
        let two: IpAddr = [10, 0, 0, 2].into();
        let p1 = a.try_admit(one).unwrap();
        let _p2 = a.try_admit(one).unwrap();
        assert!(a.try_admit(one).is_none(), "per-peer cap");
        let _p3 = a.try_admit(two).unwrap();
        assert!(a.try_admit(two).is_none(), "total cap");
        drop(p1);
        assert!(a.try_admit(one).is_some());
        assert_eq!(a.lock().peers.len(), 2);
    }
}
