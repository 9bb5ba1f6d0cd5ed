//! Tokio NBD client with pipelining.
//!
//! [`Client::connect`] (TCP), [`Client::connect_unix`] (a Unix socket) and
//! [`Client::connect_io`] (any stream) negotiate: fixed newstyle, optional `STARTTLS`,
//! `STRUCTURED_REPLY`, one `SET_META_CONTEXT` with `base:allocation` and any further contexts
//! asked for in [`ClientOptions::meta_contexts`] (such as QEMU's `qemu:dirty-bitmap:NAME`),
//! `GO` with `NBD_INFO_BLOCK_SIZE`. The contexts the server granted are
//! [`Client::meta_contexts`]: a context it did not grant (a dirty bitmap the export does not
//! offer) is simply absent there, and [`Client::block_status_of`] reads any granted one.
//!
//! Block status replies are checked as they arrive: exactly one chunk per context, at most
//! [`wire::MAX_BLOCK_STATUS_DESCRIPTORS`] descriptors each (the codec's bound), no zero-length
//! descriptor; anything else ends the connection with a protocol error, never a panic. Its request methods take `&self` and may be called
//! from many tasks at once: a semaphore bounds the requests in flight, each
//! request gets a fresh cookie and a waiter, the request is written under a
//! lock, and one reader task matches replies (in any order) to waiters,
//! writing READ data straight into the waiter's buffer.
//!
//! Cancellation: dropping a request future while its request is being
//! written can leave a partial request on the wire; the connection is then
//! unusable. Dropping it after the write only discards the reply.

use std::any::Any;
use std::collections::HashMap;
use std::ops::DerefMut;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use rustls_pki_types::ServerName;
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadHalf, WriteHalf,
};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;

use crate::codec::{self, ReplyHeader};
use crate::error::NbdError;
use crate::export::{BlockExtent, ZeroFlags};
use crate::wire::{
    self, BlockSizes, ChunkPayload, ClientOption, Errno, InfoItem, InfoRequest, MetaContextRequest,
    OptionReply, ReplyPayload, Request, cflag, chunk, cmd, info, rep, state, tflag,
};

type Result<T> = std::result::Result<T, NbdError>;

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// The buffer of a read in flight: any owned byte buffer (a `Vec<u8>`, a page-aligned buffer),
/// filled in place by the reader task and handed back to the caller.
trait ReadSink: Send {
    fn len(&self) -> usize;
    fn bytes(&mut self) -> &mut [u8];
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send>;
}

impl<B: DerefMut<Target = [u8]> + Send + 'static> ReadSink for B {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    fn bytes(&mut self) -> &mut [u8] {
        self
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }
}

impl std::fmt::Debug for dyn ReadSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadSink")
    }
}

/// Connection options.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// TLS client configuration and the server name to verify; `None` = plain.
    pub tls: Option<(Arc<rustls::ClientConfig>, String)>,
    /// Export to open.
    pub export_name: String,
    /// Negotiate structured replies (needed for block status).
    pub structured_replies: bool,
    /// Select `base:allocation` (needs structured replies).
    pub block_status: bool,
    /// Further metadata contexts to select, by exact name (needs structured replies), e.g.
    /// `qemu:dirty-bitmap:NAME`; the granted ones are [`Client::meta_contexts`].
    pub meta_contexts: Vec<String>,
    /// Most requests in flight on this connection.
    pub max_in_flight: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            tls: None,
            export_name: String::new(),
            structured_replies: true,
            block_status: true,
            meta_contexts: Vec::new(),
            max_in_flight: 64,
        }
    }
}

/// What the server told us about the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportInfo {
    /// Size in bytes.
    pub size: u64,
    /// Transmission flags.
    pub flags: u16,
    /// Block size constraints, if the server sent them.
    pub block_sizes: Option<BlockSizes>,
    /// Structured replies are in use.
    pub structured_replies: bool,
    /// The `base:allocation` context id, if selected.
    pub base_allocation: Option<u32>,
}

/// A metadata context the server granted (`NBD_REP_META_CONTEXT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContext {
    /// Its name, as asked for.
    pub name: String,
    /// The id the server chose for it.
    pub id: u32,
}

/// One block status descriptor of a metadata context: `length` bytes with `flags`, whose
/// meaning the context defines (`base:allocation`: [`state::HOLE`], [`state::ZERO`];
/// `qemu:dirty-bitmap:NAME`: bit 0 set = dirty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusExtent {
    /// Length in bytes (never 0).
    pub length: u64,
    /// Status flags.
    pub flags: u32,
}

/// Largest reply chunk other than `OFFSET_DATA` accepted: a block status chunk of the most
/// descriptors the codec takes (errors and holes are far smaller).
#[allow(clippy::cast_possible_truncation)]
const MAX_META_CHUNK: u32 = 4 + 8 * wire::MAX_BLOCK_STATUS_DESCRIPTORS as u32;

/// Prefix of QEMU's dirty bitmap contexts: `qemu:dirty-bitmap:NAME`.
pub const DIRTY_BITMAP_PREFIX: &str = "qemu:dirty-bitmap:";

/// Flag of a `qemu:dirty-bitmap:` descriptor: the range changed.
pub const DIRTY: u32 = 1;

/// One pipelined NBD connection.
#[derive(Debug)]
pub struct Client {
    inner: Arc<Inner>,
    info: ExportInfo,
    contexts: Vec<MetaContext>,
    reader: JoinHandle<()>,
}

#[derive(Debug)]
struct Inner {
    writer: tokio::sync::Mutex<WriteHalf<Box<dyn Stream>>>,
    pending: Mutex<Pending>,
    window: Semaphore,
    window_size: u32,
    next_cookie: AtomicU64,
    in_flight: AtomicUsize,
}

#[derive(Debug, Default)]
struct Pending {
    waiters: HashMap<u64, Waiter>,
    closed: bool,
}

#[derive(Debug)]
struct Waiter {
    kind: Kind,
    error: Option<Errno>,
    tx: oneshot::Sender<Result<Outcome>>,
}

#[derive(Debug)]
enum Kind {
    Read {
        offset: u64,
        buf: Box<dyn ReadSink>,
        /// Bytes the reply's chunks have filled so far (chunks never overlap).
        covered: usize,
    },
    BlockStatus {
        context: u32,
        /// The chunk for `context`, once it arrived (one per context).
        extents: Option<Vec<StatusExtent>>,
    },
    Other,
}

#[derive(Debug)]
enum Outcome {
    Done,
    Data(Box<dyn ReadSink>),
    Extents(Vec<StatusExtent>),
}

/// A TCP stream that acknowledges what it receives at once (`TCP_QUICKACK` before every read)
/// while `quick` is set: during the handshake. A server that writes an option reply in two
/// pieces with Nagle's algorithm on (`qemu-nbd` does) holds the second piece until the first
/// is acknowledged, and a delayed acknowledgement costs 40 ms each time: 4 of them made every
/// `qemu-nbd` handshake take about 90 ms. In transmission our requests carry the
/// acknowledgements, and `quick` is cleared.
struct QuickAck {
    tcp: TcpStream,
    quick: Arc<AtomicBool>,
}

impl AsyncRead for QuickAck {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.quick.load(Ordering::Relaxed) {
            // Only a hint: a socket refusing it reads the same bytes, later.
            let _ = rustix::net::sockopt::set_tcp_quickack(&self.tcp, true);
        }
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for QuickAck {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

impl std::fmt::Debug for dyn Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stream")
    }
}

impl Client {
    /// Connects and negotiates the export in `options`.
    ///
    /// # Errors
    /// Connection, TLS or negotiation failure (e.g. unknown export).
    pub async fn connect(addr: impl ToSocketAddrs, options: ClientOptions) -> Result<Self> {
        let tcp = TcpStream::connect(addr).await?;
        let _ = tcp.set_nodelay(true);
        let quick = Arc::new(AtomicBool::new(true));
        let stream = QuickAck {
            tcp,
            quick: Arc::clone(&quick),
        };
        let client = Self::connect_io(stream, options).await;
        quick.store(false, Ordering::Relaxed);
        client
    }

    /// Connects over the Unix socket at `path` and negotiates the export in `options`.
    ///
    /// # Errors
    /// Connection, TLS or negotiation failure (e.g. unknown export).
    pub async fn connect_unix(path: &std::path::Path, options: ClientOptions) -> Result<Self> {
        let unix = tokio::net::UnixStream::connect(path).await?;
        Self::connect_io(unix, options).await
    }

    /// Negotiates the export in `options` over `io`, a fresh connection to an NBD server (the
    /// server speaks first).
    ///
    /// # Errors
    /// Connection, TLS or negotiation failure (e.g. unknown export).
    pub async fn connect_io<S>(io: S, options: ClientOptions) -> Result<Self>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut io = start(Box::new(io), options.tls.as_ref()).await?;
        let (info, contexts) = negotiate(&mut io, &options).await?;
        let (rd, wr) = tokio::io::split(io);
        let window_size = u32::try_from(options.max_in_flight.clamp(1, 4096)).unwrap_or(64);
        let inner = Arc::new(Inner {
            writer: tokio::sync::Mutex::new(wr),
            pending: Mutex::new(Pending::default()),
            window: Semaphore::new(window_size as usize),
            window_size,
            next_cookie: AtomicU64::new(1),
            in_flight: AtomicUsize::new(0),
        });
        let reader = tokio::spawn(reader_task(rd, Arc::clone(&inner), info));
        Ok(Self {
            inner,
            info,
            contexts,
            reader,
        })
    }

    /// Lists the server's exports (`NBD_OPT_LIST`), after `STARTTLS` if `tls` is given.
    ///
    /// # Errors
    /// Connection, TLS or negotiation failure.
    pub async fn list_exports(
        addr: impl ToSocketAddrs,
        tls: Option<(Arc<rustls::ClientConfig>, String)>,
    ) -> Result<Vec<String>> {
        let tcp = TcpStream::connect(addr).await?;
        let mut io = start(Box::new(tcp), tls.as_ref()).await?;
        send_option(&mut io, &ClientOption::List).await?;
        let mut names = Vec::new();
        loop {
            let reply = read_option_reply(&mut io).await?;
            match codec::parse_reply_payload(&reply)? {
                ReplyPayload::Server { name, .. } => names.push(name),
                ReplyPayload::Ack => break,
                ReplyPayload::Error { code, message } => {
                    return Err(NbdError::OptionRefused {
                        option: reply.option,
                        reply: code,
                        message,
                    });
                }
                _ => return Err(NbdError::protocol("unexpected reply to LIST")),
            }
        }
        send_option(&mut io, &ClientOption::Abort).await?;
        let _ = read_option_reply(&mut io).await;
        let _ = io.shutdown().await;
        Ok(names)
    }

    /// Export information.
    #[must_use]
    pub const fn info(&self) -> &ExportInfo {
        &self.info
    }

    /// The metadata contexts the server granted (`base:allocation` among them when asked
    /// for and granted).
    #[must_use]
    pub fn meta_contexts(&self) -> &[MetaContext] {
        &self.contexts
    }

    /// The id of the granted context `name`, or `None` when the server did not grant it (for
    /// `qemu:dirty-bitmap:NAME`: the export offers no such bitmap).
    #[must_use]
    pub fn meta_context(&self, name: &str) -> Option<u32> {
        self.contexts.iter().find(|c| c.name == name).map(|c| c.id)
    }

    /// Export size in bytes.
    #[must_use]
    pub const fn size(&self) -> u64 {
        self.info.size
    }

    /// Transmission flags.
    #[must_use]
    pub const fn flags(&self) -> u16 {
        self.info.flags
    }

    /// Largest READ/WRITE length this client sends.
    #[must_use]
    pub fn max_payload(&self) -> u32 {
        self.info
            .block_sizes
            .map_or(wire::MAX_REQUEST_PAYLOAD, |b| {
                b.maximum.min(wire::MAX_REQUEST_PAYLOAD)
            })
    }

    /// Requests currently in flight.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Relaxed)
    }

    /// Reads `len` bytes at `offset`.
    ///
    /// # Errors
    /// Server error ([`NbdError::Request`]), closed connection, `len` above the maximum payload.
    pub async fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>> {
        self.read_into(offset, Vec::new(), len).await
    }

    /// Reads `len` bytes at `offset` into `buf` (resized to `len`; its earlier contents do not
    /// matter, so a caller can reuse one buffer without zeroing it) and hands it back.
    ///
    /// # Errors
    /// Server error, closed connection, length above the maximum payload, a reply that does
    /// not cover the whole request.
    pub async fn read_into(&self, offset: u64, mut buf: Vec<u8>, len: u32) -> Result<Vec<u8>> {
        self.check_payload(len)?;
        buf.resize(len as usize, 0);
        self.read_into_buf(offset, buf).await
    }

    /// Reads `buf.len()` bytes at `offset` into `buf`, any owned byte buffer (e.g. a
    /// page-aligned one for `O_DIRECT` writes later), and hands it back; its earlier contents
    /// do not matter.
    ///
    /// # Errors
    /// Server error, closed connection, length above the maximum payload, a reply that does
    /// not cover the whole request.
    pub async fn read_into_buf<B>(&self, offset: u64, buf: B) -> Result<B>
    where
        B: DerefMut<Target = [u8]> + Send + 'static,
    {
        let len = u32::try_from(buf.len()).map_err(|_| NbdError::InvalidArgument {
            what: "read larger than 4 GiB",
        })?;
        self.check_payload(len)?;
        let kind = Kind::Read {
            offset,
            buf: Box::new(buf),
            covered: 0,
        };
        match self.submit(cmd::READ, 0, offset, len, None, kind).await? {
            Outcome::Data(d) => d
                .into_any()
                .downcast::<B>()
                .map(|b| *b)
                .map_err(|_| NbdError::protocol("read answered another buffer")),
            _ => Err(NbdError::protocol("read finished without data")),
        }
    }

    /// Writes `data` at `offset`; with `fua` the server makes it durable before replying.
    ///
    /// # Errors
    /// Server error, closed connection, data above the maximum payload.
    pub async fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<()> {
        let len = u32::try_from(data.len()).map_err(|_| NbdError::InvalidArgument {
            what: "write larger than 4 GiB",
        })?;
        self.check_payload(len)?;
        let flags = if fua { cflag::FUA } else { 0 };
        self.submit(cmd::WRITE, flags, offset, len, Some(data), Kind::Other)
            .await
            .map(drop)
    }

    /// Zeroes `len` bytes at `offset`.
    ///
    /// # Errors
    /// Server error (`ENOTSUP` for a refused fast zero), closed connection.
    pub async fn write_zeroes(&self, offset: u64, len: u32, flags: ZeroFlags) -> Result<()> {
        let mut f = 0;
        if !flags.may_trim {
            f |= cflag::NO_HOLE;
        }
        if flags.fast_zero {
            f |= cflag::FAST_ZERO;
        }
        if flags.fua {
            f |= cflag::FUA;
        }
        self.submit(cmd::WRITE_ZEROES, f, offset, len, None, Kind::Other)
            .await
            .map(drop)
    }

    /// Trims `len` bytes at `offset`.
    ///
    /// # Errors
    /// Server error, closed connection.
    pub async fn trim(&self, offset: u64, len: u32, fua: bool) -> Result<()> {
        let flags = if fua { cflag::FUA } else { 0 };
        self.submit(cmd::TRIM, flags, offset, len, None, Kind::Other)
            .await
            .map(drop)
    }

    /// Makes all completed writes durable.
    ///
    /// # Errors
    /// Server error, closed connection.
    pub async fn flush(&self) -> Result<()> {
        self.submit(cmd::FLUSH, 0, 0, 0, None, Kind::Other)
            .await
            .map(drop)
    }

    /// `base:allocation` status of `len` bytes at `offset`.
    ///
    /// # Errors
    /// [`NbdError::InvalidArgument`] if the context was not negotiated; server error.
    pub async fn block_status(&self, offset: u64, len: u32) -> Result<Vec<BlockExtent>> {
        let Some(context) = self.info.base_allocation else {
            return Err(NbdError::InvalidArgument {
                what: "base:allocation not negotiated",
            });
        };
        let extents = self.block_status_of(context, offset, len).await?;
        Ok(extents
            .into_iter()
            .map(|e| BlockExtent {
                length: e.length,
                hole: e.flags & state::HOLE != 0,
                zero: e.flags & state::ZERO != 0,
            })
            .collect())
    }

    /// Status of `len` bytes at `offset` in the granted context `context` (an id from
    /// [`Self::meta_contexts`]): consecutive extents from `offset`, each of nonzero length; they
    /// may cover less than `len` (ask again from where they end), and the last may reach past
    /// it.
    ///
    /// # Errors
    /// [`NbdError::InvalidArgument`] for a context the server did not grant; server error;
    /// a reply without this context's chunk, with two, or with a zero-length descriptor.
    pub async fn block_status_of(
        &self,
        context: u32,
        offset: u64,
        len: u32,
    ) -> Result<Vec<StatusExtent>> {
        if !self.contexts.iter().any(|c| c.id == context) {
            return Err(NbdError::InvalidArgument {
                what: "metadata context not negotiated",
            });
        }
        let kind = Kind::BlockStatus {
            context,
            extents: None,
        };
        match self
            .submit(cmd::BLOCK_STATUS, 0, offset, len, None, kind)
            .await?
        {
            Outcome::Extents(x) => Ok(x),
            _ => Err(NbdError::protocol("block status without extents")),
        }
    }

    /// Waits for in-flight requests, sends `NBD_CMD_DISC` and closes.
    ///
    /// # Errors
    /// Writing the disconnect failed.
    pub async fn disconnect(self) -> Result<()> {
        let _all = self.inner.window.acquire_many(self.inner.window_size).await;
        let mut out = Vec::new();
        let req = Request {
            flags: 0,
            command: cmd::DISC,
            cookie: 0,
            offset: 0,
            length: 0,
        };
        codec::encode_request(&req, &mut out);
        let mut w = self.inner.writer.lock().await;
        w.write_all(&out).await?;
        w.flush().await?;
        let _ = w.shutdown().await;
        drop(w);
        self.reader.abort();
        Ok(())
    }

    fn check_payload(&self, len: u32) -> Result<()> {
        if len > self.max_payload() {
            return Err(NbdError::InvalidArgument {
                what: "length above the maximum payload",
            });
        }
        Ok(())
    }

    async fn submit(
        &self,
        command: u16,
        flags: u16,
        offset: u64,
        length: u32,
        payload: Option<&[u8]>,
        kind: Kind,
    ) -> Result<Outcome> {
        let _permit = self
            .inner
            .window
            .acquire()
            .await
            .map_err(|_| NbdError::Closed)?;
        let cookie = self.inner.next_cookie.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut p = self.inner.lock();
            if p.closed {
                return Err(NbdError::Closed);
            }
            p.waiters.insert(
                cookie,
                Waiter {
                    kind,
                    error: None,
                    tx,
                },
            );
        }
        self.inner.in_flight.fetch_add(1, Ordering::Relaxed);
        let _count = InFlight(&self.inner.in_flight);
        let mut registration = Registration {
            inner: &self.inner,
            cookie,
            armed: true,
        };
        let req = Request {
            flags,
            command,
            cookie,
            offset,
            length,
        };
        let mut head = Vec::with_capacity(wire::REQUEST_HEADER_LEN);
        codec::encode_request(&req, &mut head);
        let written = async {
            let mut w = self.inner.writer.lock().await;
            w.write_all(&head).await?;
            if let Some(data) = payload {
                w.write_all(data).await?;
            }
            w.flush().await
        }
        .await;
        written?;
        registration.armed = false;
        rx.await.map_err(|_| NbdError::Closed)?
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Removes a waiter whose request was never fully written (error or cancellation).
struct Registration<'a> {
    inner: &'a Inner,
    cookie: u64,
    armed: bool,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.inner.lock().waiters.remove(&self.cookie);
        }
    }
}

struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn fail_all(&self) {
        let mut p = self.lock();
        p.closed = true;
        for (_, w) in p.waiters.drain() {
            let _ = w.tx.send(Err(NbdError::Closed));
        }
    }
}

/// N connections to one export; requests go to the least-loaded connection.
#[derive(Debug)]
pub struct ClientPool {
    clients: Vec<Client>,
    next: AtomicUsize,
}

impl ClientPool {
    /// Opens `connections` (at least one) connections with the same options.
    ///
    /// # Errors
    /// Any connection failing.
    pub async fn connect(
        addr: impl ToSocketAddrs + Clone,
        options: ClientOptions,
        connections: usize,
    ) -> Result<Self> {
        let mut clients = Vec::with_capacity(connections.max(1));
        for _ in 0..connections.max(1) {
            clients.push(Client::connect(addr.clone(), options.clone()).await?);
        }
        Ok(Self {
            clients,
            next: AtomicUsize::new(0),
        })
    }

    /// The least-loaded connection (ties broken round-robin).
    #[must_use]
    pub fn get(&self) -> &Client {
        let start = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        let mut best = &self.clients[start];
        for i in 1..self.clients.len() {
            let c = &self.clients[(start + i) % self.clients.len()];
            if c.in_flight() < best.in_flight() {
                best = c;
            }
        }
        best
    }

    /// Flushes every connection (one suffices with `CAN_MULTI_CONN`; this is safe without).
    ///
    /// # Errors
    /// Any flush failing.
    pub async fn flush(&self) -> Result<()> {
        if self.clients[0].flags() & tflag::CAN_MULTI_CONN != 0 {
            return self.clients[0].flush().await;
        }
        for c in &self.clients {
            c.flush().await?;
        }
        Ok(())
    }

    /// Disconnects every connection.
    ///
    /// # Errors
    /// Any disconnect failing.
    pub async fn disconnect(self) -> Result<()> {
        for c in self.clients {
            c.disconnect().await?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- handshake

/// The greeting, the client flags and `STARTTLS` (when `tls`) on a fresh connection.
async fn start(
    mut io: Box<dyn Stream>,
    tls: Option<&(Arc<rustls::ClientConfig>, String)>,
) -> Result<Box<dyn Stream>> {
    let mut greeting = [0u8; wire::GREETING_LEN];
    io.read_exact(&mut greeting).await?;
    let Some((hflags, _)) = codec::decode_greeting(&greeting)? else {
        return Err(NbdError::protocol("short greeting"));
    };
    if hflags & wire::FLAG_FIXED_NEWSTYLE == 0 {
        return Err(NbdError::protocol("server does not support fixed newstyle"));
    }
    let mut cflags = wire::FLAG_C_FIXED_NEWSTYLE;
    if hflags & wire::FLAG_NO_ZEROES != 0 {
        cflags |= wire::FLAG_C_NO_ZEROES;
    }
    io.write_all(&cflags.to_be_bytes()).await?;
    if let Some((config, name)) = tls {
        send_option(&mut io, &ClientOption::StartTls).await?;
        expect_ack(&mut io).await?;
        let server_name =
            ServerName::try_from(name.clone()).map_err(|_| NbdError::InvalidArgument {
                what: "invalid TLS server name",
            })?;
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
        io = Box::new(connector.connect(server_name, io).await?);
    }
    Ok(io)
}

async fn negotiate(
    io: &mut Box<dyn Stream>,
    options: &ClientOptions,
) -> Result<(ExportInfo, Vec<MetaContext>)> {
    let mut structured = false;
    if options.structured_replies {
        send_option(io, &ClientOption::StructuredReply).await?;
        let reply = read_option_reply(io).await?;
        structured = reply.reply_type == rep::ACK;
    }
    let mut queries = Vec::new();
    if options.block_status {
        queries.push(wire::BASE_ALLOCATION.to_owned());
    }
    for q in &options.meta_contexts {
        if !queries.contains(q) {
            queries.push(q.clone());
        }
    }
    if queries.len() > wire::MAX_META_QUERIES {
        return Err(NbdError::InvalidArgument {
            what: "too many metadata contexts asked for",
        });
    }
    let contexts = if structured && !queries.is_empty() {
        set_meta_contexts(io, &options.export_name, queries).await?
    } else {
        Vec::new()
    };
    let base_allocation = contexts
        .iter()
        .find(|c| c.name == wire::BASE_ALLOCATION)
        .map(|c| c.id);
    let go = InfoRequest {
        name: options.export_name.clone(),
        requests: vec![info::BLOCK_SIZE],
    };
    send_option(io, &ClientOption::Go(go)).await?;
    let mut export = None;
    let mut block_sizes = None;
    loop {
        let reply = read_option_reply(io).await?;
        match codec::parse_reply_payload(&reply)? {
            ReplyPayload::Info(InfoItem::Export { size, flags }) => export = Some((size, flags)),
            ReplyPayload::Info(InfoItem::BlockSize(b)) => block_sizes = Some(b),
            ReplyPayload::Info(_) => {}
            ReplyPayload::Ack => break,
            ReplyPayload::Error { code, message } => {
                if code == rep::ERR_UNKNOWN {
                    return Err(NbdError::UnknownExport {
                        name: options.export_name.clone(),
                    });
                }
                return Err(NbdError::OptionRefused {
                    option: reply.option,
                    reply: code,
                    message,
                });
            }
            _ => return Err(NbdError::protocol("unexpected reply to GO")),
        }
    }
    let Some((size, flags)) = export else {
        return Err(NbdError::protocol("GO without NBD_INFO_EXPORT"));
    };
    let info = ExportInfo {
        size,
        flags,
        block_sizes,
        structured_replies: structured,
        base_allocation,
    };
    Ok((info, contexts))
}

/// `NBD_OPT_SET_META_CONTEXT` with `queries`: the contexts granted, each asked for, once. An
/// error reply grants none. A server answering more replies than it could grant is refused.
async fn set_meta_contexts(
    io: &mut Box<dyn Stream>,
    export: &str,
    queries: Vec<String>,
) -> Result<Vec<MetaContext>> {
    let asked = queries.len();
    let req = MetaContextRequest {
        name: export.to_owned(),
        queries,
    };
    let queries = &req.queries;
    send_option(io, &ClientOption::SetMetaContext(req.clone())).await?;
    let mut granted: Vec<MetaContext> = Vec::new();
    for _ in 0..=asked {
        let reply = read_option_reply(io).await?;
        match codec::parse_reply_payload(&reply)? {
            ReplyPayload::MetaContext { id, name } => {
                if !queries.contains(&name) {
                    return Err(NbdError::protocol("server granted a context not asked for"));
                }
                if granted.iter().any(|c| c.name == name || c.id == id) {
                    return Err(NbdError::protocol("server granted a context twice"));
                }
                granted.push(MetaContext { name, id });
            }
            ReplyPayload::Ack => return Ok(granted),
            ReplyPayload::Error { .. } => return Ok(Vec::new()),
            _ => return Err(NbdError::protocol("unexpected reply to SET_META_CONTEXT")),
        }
    }
    Err(NbdError::protocol(
        "more SET_META_CONTEXT replies than contexts",
    ))
}

async fn send_option(io: &mut Box<dyn Stream>, o: &ClientOption) -> Result<()> {
    let mut out = Vec::new();
    codec::encode_option_request(&codec::encode_client_option(o), &mut out);
    io.write_all(&out).await?;
    io.flush().await?;
    Ok(())
}

/// Reads exactly one option reply (never more, so no TLS bytes are consumed early).
async fn read_option_reply(io: &mut Box<dyn Stream>) -> Result<OptionReply> {
    let mut buf = vec![0u8; wire::OPTION_REPLY_HEADER_LEN];
    io.read_exact(&mut buf).await?;
    let len = u32::from_be_bytes([buf[16], buf[17], buf[18], buf[19]]);
    if len <= wire::MAX_OPTION_REPLY_PAYLOAD {
        buf.resize(wire::OPTION_REPLY_HEADER_LEN + len as usize, 0);
        io.read_exact(&mut buf[wire::OPTION_REPLY_HEADER_LEN..])
            .await?;
    }
    match codec::decode_option_reply(&buf)? {
        Some((r, _)) => Ok(r),
        None => Err(NbdError::protocol("short option reply")),
    }
}

async fn expect_ack(io: &mut Box<dyn Stream>) -> Result<()> {
    let reply = read_option_reply(io).await?;
    if reply.reply_type == rep::ACK {
        return Ok(());
    }
    let message = String::from_utf8_lossy(&reply.data).into_owned();
    Err(NbdError::OptionRefused {
        option: reply.option,
        reply: reply.reply_type,
        message,
    })
}

// ---------------------------------------------------------------- replies

async fn reader_task(rd: ReadHalf<Box<dyn Stream>>, inner: Arc<Inner>, info: ExportInfo) {
    let mut rd = BufReader::with_capacity(256 * 1024, rd);
    if let Err(e) = read_replies(&mut rd, &inner, info).await {
        tracing::debug!(error = %e, "NBD client reader stopped");
    }
    inner.fail_all();
}

async fn read_replies(
    rd: &mut BufReader<ReadHalf<Box<dyn Stream>>>,
    inner: &Inner,
    info: ExportInfo,
) -> Result<()> {
    loop {
        let mut head = [0u8; wire::STRUCTURED_REPLY_HEADER_LEN];
        rd.read_exact(&mut head[..wire::SIMPLE_REPLY_HEADER_LEN])
            .await?;
        if u32::from_be_bytes([head[0], head[1], head[2], head[3]]) == wire::STRUCTURED_REPLY_MAGIC
        {
            if !info.structured_replies {
                return Err(NbdError::protocol("structured reply not negotiated"));
            }
            rd.read_exact(&mut head[wire::SIMPLE_REPLY_HEADER_LEN..])
                .await?;
        }
        let Some((header, _)) = codec::decode_reply_header(&head)? else {
            return Err(NbdError::protocol("short reply header"));
        };
        match header {
            ReplyHeader::Simple { error, cookie } => {
                let Some(w) = inner.lock().waiters.remove(&cookie) else {
                    return Err(NbdError::protocol("reply for unknown cookie"));
                };
                if error != 0 {
                    let _ = w.tx.send(Err(NbdError::Request {
                        errno: Errno::from_code(error),
                    }));
                    continue;
                }
                let outcome = match w.kind {
                    Kind::Read { mut buf, .. } => {
                        rd.read_exact(buf.bytes()).await?;
                        Outcome::Data(buf)
                    }
                    Kind::BlockStatus { .. } => {
                        return Err(NbdError::protocol("simple reply to block status"));
                    }
                    Kind::Other => Outcome::Done,
                };
                let _ = w.tx.send(Ok(outcome));
            }
            ReplyHeader::Chunk {
                flags,
                chunk_type,
                cookie,
                length,
            } => {
                let Some(mut w) = inner.lock().waiters.remove(&cookie) else {
                    return Err(NbdError::protocol("chunk for unknown cookie"));
                };
                if chunk_type == chunk::OFFSET_DATA {
                    read_data_chunk(rd, &mut w, length).await?;
                } else {
                    if length > MAX_META_CHUNK {
                        return Err(NbdError::TooLarge {
                            what: "reply chunk without data",
                            length: u64::from(length),
                            limit: u64::from(MAX_META_CHUNK),
                        });
                    }
                    let mut payload = vec![0u8; length as usize];
                    rd.read_exact(&mut payload).await?;
                    apply_chunk(&mut w, codec::parse_chunk_payload(chunk_type, &payload)?)?;
                }
                if flags & chunk::FLAG_DONE != 0 {
                    let result = match (w.error, w.kind) {
                        (Some(errno), _) => Err(NbdError::Request { errno }),
                        (None, Kind::Read { buf, covered, .. }) if covered == buf.len() => {
                            Ok(Outcome::Data(buf))
                        }
                        (None, Kind::Read { .. }) => Err(NbdError::protocol(
                            "structured read reply does not cover the request",
                        )),
                        (
                            None,
                            Kind::BlockStatus {
                                extents: Some(extents),
                                ..
                            },
                        ) => Ok(Outcome::Extents(extents)),
                        (None, Kind::BlockStatus { extents: None, .. }) => Err(NbdError::protocol(
                            "block status reply without the context's chunk",
                        )),
                        (None, Kind::Other) => Ok(Outcome::Done),
                    };
                    let _ = w.tx.send(result);
                } else {
                    inner.lock().waiters.insert(cookie, w);
                }
            }
        }
    }
}

/// Reads an OFFSET_DATA chunk straight into the read buffer.
async fn read_data_chunk(
    rd: &mut BufReader<ReadHalf<Box<dyn Stream>>>,
    w: &mut Waiter,
    length: u32,
) -> Result<()> {
    let Kind::Read {
        offset: base,
        buf,
        covered,
    } = &mut w.kind
    else {
        return Err(NbdError::protocol("data chunk for a non-read request"));
    };
    if length < 9 {
        return Err(NbdError::protocol("OFFSET_DATA chunk too short"));
    }
    let mut off = [0u8; 8];
    rd.read_exact(&mut off).await?;
    let offset = u64::from_be_bytes(off);
    let n = (length - 8) as usize;
    let start = offset
        .checked_sub(*base)
        .and_then(|s| usize::try_from(s).ok())
        .filter(|s| s.checked_add(n).is_some_and(|e| e <= buf.len()));
    let Some(start) = start else {
        return Err(NbdError::protocol("OFFSET_DATA chunk outside the request"));
    };
    rd.read_exact(&mut buf.bytes()[start..start + n]).await?;
    *covered += n;
    Ok(())
}

fn apply_chunk(w: &mut Waiter, payload: ChunkPayload) -> Result<()> {
    match payload {
        ChunkPayload::None => {}
        ChunkPayload::OffsetHole { offset, size } => {
            let Kind::Read {
                offset: base,
                buf,
                covered,
            } = &mut w.kind
            else {
                return Err(NbdError::protocol("hole chunk for a non-read request"));
            };
            let start = offset
                .checked_sub(*base)
                .and_then(|s| usize::try_from(s).ok())
                .filter(|s| s.checked_add(size as usize).is_some_and(|e| e <= buf.len()));
            let Some(start) = start else {
                return Err(NbdError::protocol("OFFSET_HOLE chunk outside the request"));
            };
            buf.bytes()[start..start + size as usize].fill(0);
            *covered += size as usize;
        }
        ChunkPayload::BlockStatus {
            context_id,
            descriptors,
        } => {
            let Kind::BlockStatus { context, extents } = &mut w.kind else {
                return Err(NbdError::protocol("block status chunk for another request"));
            };
            if *context == context_id {
                if extents.is_some() {
                    return Err(NbdError::protocol(
                        "two block status chunks for one context",
                    ));
                }
                if descriptors.is_empty() {
                    return Err(NbdError::protocol("block status chunk without descriptors"));
                }
                if descriptors.iter().any(|&(len, _)| len == 0) {
                    return Err(NbdError::protocol("zero-length block status descriptor"));
                }
                *extents = Some(
                    descriptors
                        .into_iter()
                        .map(|(len, flags)| StatusExtent {
                            length: u64::from(len),
                            flags,
                        })
                        .collect(),
                );
            }
        }
        ChunkPayload::Error { error, .. } | ChunkPayload::ErrorOffset { error, .. } => {
            w.error.get_or_insert(Errno::from_code(error));
        }
        ChunkPayload::Unknown { chunk_type, .. } if chunk_type & chunk::ERROR_BIT != 0 => {
            w.error.get_or_insert(Errno::Io);
        }
        ChunkPayload::OffsetData { .. } | ChunkPayload::Unknown { .. } => {
            return Err(NbdError::protocol("unexpected chunk type"));
        }
    }
    Ok(())
}
