//! Tokio driver of the NBD server.
//!
//! One task per connection runs the handshake (`session`), applying
//! `tokio-rustls` when the session asks for `StartTls`. In transmission the
//! connection task becomes the *reader*: it decodes request headers, reads
//! WRITE payloads, and hands each request to tokio's blocking pool, where the
//! synchronous [`Export`] method runs and the reply is built. A separate
//! *writer* task serialises finished replies, so replies go out in completion
//! order, not request order. Two semaphores bound each connection: requests
//! in flight and payload bytes in flight (READ and WRITE lengths), so a fast
//! client cannot make the server buffer without limit.
//!
//! Why the blocking pool: export calls are positional I/O of 1–32 MiB, where
//! a `spawn_blocking` hop (a few microseconds) is noise, and the pool grows to
//! the parallelism the clients offer without a second pool to size. An export
//! that never blocks ([`Export::never_blocks`], the memory export) runs on the
//! connection's task instead.
//!
//! Shutdown: `serve` stops accepting when its shutdown future resolves,
//! signals every connection, and returns once all have ended. A connection
//! told to stop (server shutdown or export removal) reads no more requests,
//! lets in-flight ones finish and their replies drain, then closes (TLS
//! `close_notify`, then FIN), as proto.md asks of a server shutting down.

use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tracing::{Instrument, debug, info_span, warn};

use crate::codec;
use crate::error::NbdError;
use crate::export::{Export, ExportError, ExportRegistry, ZeroFlags, is_zero};

use crate::session::{Negotiated, ServerSession, SessionAction, TlsPolicy};
use crate::wire::{self, ChunkPayload, Errno, Request, cflag, chunk, cmd, state};

mod payload;
pub use payload::PAYLOAD_ALIGN;
use payload::{Payload, PayloadPool};

/// Server limits and TLS.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// TLS configuration; `Some` makes TLS required (FORCEDTLS).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Most simultaneous connections; further clients wait in the accept queue.
    pub max_connections: usize,
    /// Most requests in flight per connection.
    pub max_in_flight_requests: usize,
    /// Most READ/WRITE payload bytes in flight per connection.
    pub max_in_flight_bytes: u32,
    /// Longest pause allowed between handshake messages.
    pub handshake_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            tls: None,
            max_connections: 256,
            max_in_flight_requests: 64,
            max_in_flight_bytes: 256 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(30),
        }
    }
}

/// The NBD server: serves the exports of a registry on a listener.
#[derive(Debug, Clone)]
pub struct Server {
    registry: Arc<ExportRegistry>,
    options: Arc<ServerOptions>,
}

/// Granule of zero detection when splitting structured READ replies.
const READ_GRAIN: usize = 64 * 1024;
/// Read buffer of the handshake and the request reader.
const READ_BUFFER: usize = 256 * 1024;

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

impl Server {
    /// A server for `registry`.
    #[must_use]
    pub fn new(registry: Arc<ExportRegistry>, options: ServerOptions) -> Self {
        Self {
            registry,
            options: Arc::new(options),
        }
    }

    /// The registry served.
    #[must_use]
    pub const fn registry(&self) -> &Arc<ExportRegistry> {
        &self.registry
    }

    /// Accepts connections until `shutdown` resolves, then waits for every
    /// connection to finish its in-flight requests and close.
    ///
    /// # Errors
    /// Never at present; accept errors are logged and retried.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), NbdError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let permits = Arc::new(Semaphore::new(self.options.max_connections.max(1)));
        let mut tasks = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                () = &mut shutdown => break,
                p = Arc::clone(&permits).acquire_owned() => match p {
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
            let _ = stream.set_nodelay(true);
            let conn = Conn {
                registry: Arc::clone(&self.registry),
                options: Arc::clone(&self.options),
                stop: stop_rx.clone(),
            };
            let span = info_span!("nbd_conn", %peer);
            tasks.spawn(
                async move {
                    let _permit = permit;
                    if let Err(e) = conn.run(stream, peer).await {
                        debug!(error = %e, "connection ended with error");
                    }
                }
                .instrument(span),
            );
            while tasks.try_join_next().is_some() {}
        }
        drop(listener);
        stop_tx.send_replace(true);
        while tasks.join_next().await.is_some() {}
        Ok(())
    }
}

struct Conn {
    registry: Arc<ExportRegistry>,
    options: Arc<ServerOptions>,
    stop: watch::Receiver<bool>,
}

impl Conn {
    async fn run(mut self, stream: TcpStream, peer: SocketAddr) -> Result<(), NbdError> {
        let policy = if self.options.tls.is_some() {
            TlsPolicy::Required
        } else {
            TlsPolicy::Off
        };
        let mut session = ServerSession::new(Arc::clone(&self.registry), policy);
        let mut io: Box<dyn Stream> = Box::new(stream);
        io.write_all(&session.greeting()).await?;
        io.flush().await?;
        let mut buf = vec![0u8; READ_BUFFER];
        loop {
            let read = tokio::time::timeout(self.options.handshake_timeout, io.read(&mut buf));
            let n = tokio::select! {
                r = read => match r {
                    Ok(r) => r?,
                    Err(_) => {
                        debug!(%peer, "handshake timed out");
                        return Ok(());
                    }
                },
                _ = self.stop.wait_for(|s| *s) => return Ok(()),
            };
            if n == 0 {
                return Ok(());
            }
            for action in session.receive(&buf[..n])? {
                match action {
                    SessionAction::Send(bytes) => {
                        io.write_all(&bytes).await?;
                        io.flush().await?;
                    }
                    SessionAction::StartTls => {
                        let Some(config) = self.options.tls.clone() else {
                            return Err(NbdError::protocol("TLS requested without configuration"));
                        };
                        let acceptor = tokio_rustls::TlsAcceptor::from(config);
                        io = Box::new(acceptor.accept(io).await?);
                        session.tls_started();
                    }
                    SessionAction::Close => {
                        let _ = io.shutdown().await;
                        return Ok(());
                    }
                    SessionAction::Transmission(n) => {
                        debug!(export = %n.name, structured = n.structured_replies, "transmission");
                        return self.transmission(io, *n).await;
                    }
                }
            }
        }
    }

    async fn transmission(self, io: Box<dyn Stream>, n: Negotiated) -> Result<(), NbdError> {
        let Negotiated {
            export,
            structured_replies,
            base_allocation,
            leftover,
            guard,
            ..
        } = n;
        let (rd, wr) = tokio::io::split(io);
        let mut rd = BufReader::with_capacity(READ_BUFFER, Cursor::new(leftover).chain(rd));
        let max_requests = self.options.max_in_flight_requests.max(1);
        let max_bytes = self
            .options
            .max_in_flight_bytes
            .max(wire::MAX_REQUEST_PAYLOAD);
        let (tx, rx) = mpsc::channel::<Vec<Bytes>>(max_requests);
        let writer = tokio::spawn(writer_task(wr, rx));
        let requests = Arc::new(Semaphore::new(max_requests));
        let bytes = Arc::new(Semaphore::new(max_bytes as usize));
        let payloads = PayloadPool::default();
        let ctx = Arc::new(Ctx {
            export,
            payloads: payloads.clone(),
            structured: structured_replies,
            base_allocation,
        });
        let mut stop = self.stop.clone();
        let mut closing = guard.entry().closing();
        let result = loop {
            let mut hdr = [0u8; wire::REQUEST_HEADER_LEN];
            let r = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break Ok(true),
                _ = closing.wait_for(|s| *s) => break Ok(true),
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
            guard.entry().touch();
            if req.command == cmd::DISC {
                break Ok(false);
            }
            let Ok(req_permit) = Arc::clone(&requests).acquire_owned().await else {
                break Ok(false);
            };
            let cost = match req.command {
                cmd::READ | cmd::WRITE => req.length.min(max_bytes),
                _ => 0,
            };
            let Ok(byte_permit) = Arc::clone(&bytes).acquire_many_owned(cost).await else {
                break Ok(false);
            };
            let mut payload = Payload::empty();
            if req.command == cmd::WRITE {
                payload = payloads.take(req.length as usize);
                if let Err(e) = rd.read_exact(payload.bytes_mut()).await {
                    break Err(e.into());
                }
            }
            if ctx.export.never_blocks() {
                let _ = tx.send(ctx.answer(&req, payload)).await;
            } else {
                let ctx = Arc::clone(&ctx);
                let tx = tx.clone();
                tokio::task::spawn_blocking(move || {
                    let _ = tx.blocking_send(ctx.answer(&req, payload));
                    drop(byte_permit);
                    drop(req_permit);
                });
            }
        };
        if let Ok(true) = result {
            // Shutting down: requests already received get ESHUTDOWN (proto.md,
            // "Terminating the transmission phase").
            shutdown_buffered(rd.buffer(), &ctx, &tx);
        }
        // Let in-flight requests finish; their replies drain through the writer.
        #[allow(clippy::cast_possible_truncation)] // max_requests is small
        let _ = requests.acquire_many(max_requests as u32).await;
        drop(tx);
        match writer.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!(error = %e, "reply writer failed"),
            Err(e) => debug!(error = %e, "reply writer panicked"),
        }
        drop(guard);
        result.map(drop)
    }
}

/// Answers every complete request in `buf` with `ESHUTDOWN`.
fn shutdown_buffered(buf: &[u8], ctx: &Ctx, tx: &mpsc::Sender<Vec<Bytes>>) {
    let mut pos = 0;
    while let Ok(Some((req, used))) = codec::decode_request(&buf[pos..]) {
        let need = used + req.payload_len() as usize;
        if buf.len() - pos < need || req.command == cmd::DISC {
            break;
        }
        pos += need;
        let _ = tx.try_send(ctx.error_reply(&req, Errno::Shutdown));
    }
}

async fn writer_task(
    wr: tokio::io::WriteHalf<Box<dyn Stream>>,
    mut rx: mpsc::Receiver<Vec<Bytes>>,
) -> std::io::Result<()> {
    let mut w = BufWriter::with_capacity(READ_BUFFER, wr);
    while let Some(msg) = rx.recv().await {
        for b in msg {
            w.write_all(&b).await?;
        }
        while let Ok(msg) = rx.try_recv() {
            for b in msg {
                w.write_all(&b).await?;
            }
        }
        w.flush().await?;
    }
    w.flush().await?;
    w.shutdown().await
}

/// What the request workers of one connection share.
struct Ctx {
    export: Arc<dyn Export>,
    payloads: PayloadPool,
    structured: bool,
    base_allocation: bool,
}

impl Ctx {
    /// [`Self::handle`] with the payload's buffer given back to its pool as soon as the
    /// request is done; a panicking export answers `EIO`.
    fn answer(&self, req: &Request, payload: Payload) -> Vec<Bytes> {
        let reply = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.handle(req, payload.bytes())
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
        // FUA: the export gets the flag, and the server flushes as well, so
        // durability never depends on an export honouring the hint.
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

    fn read(&self, req: &Request) -> Vec<Bytes> {
        let mut buf = self.payloads.take(req.length as usize);
        if let Err(e) = self.export.read(req.offset, buf.bytes_mut()) {
            return self.error_reply(req, e.errno());
        }
        if !self.structured {
            return vec![simple(0, req.cookie), Bytes::from_owner(buf)];
        }
        if buf.bytes().is_empty() {
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
