//! The NBD side of the client, over `sendense-nbd`: [`NbdConnector`]/[`NbdTarget`] write into
//! a hub export (backup), [`NbdSource`] reads one (restore), and [`NbdUri`] parses the
//! `nbds://HOST:PORT/EXPORT_NAME` URIs the hub answers and the URIs of outside NBD sources
//! (`nbd://HOST[:PORT]/EXPORT`, `nbds://…`, `nbd+unix:///EXPORT?socket=PATH`,
//! `nbds+unix:///EXPORT?socket=PATH`, as libnbd and QEMU write them; the export name and the
//! socket path are percent-decoded). A backup *from* such a source reads it through [`NbdSource`].
//!
//! TLS: `nbds://` requires a rustls client configuration trusting the hub's CA, and the name
//! to verify the hub's certificate against (the host of `--hub`, which the hub's certificate
//! names; the URI's host is only where to connect).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use sendense_io::AlignedBuf;
use sendense_nbd::{Client, ClientOptions, NbdError, ZeroFlags};

use crate::engine::{BlockTarget, Payload, TargetConnector};
use crate::error::TransferError;
use crate::source::{BoxFuture, DiskSource, Extent};

/// Default NBD port.
pub const DEFAULT_PORT: u16 = 10809;
/// Largest single WRITE_ZEROES / BLOCK_STATUS length sent (NBD lengths are 32-bit).
pub(crate) const MAX_LENGTH_REQUEST: u64 = 1 << 30;
/// Longest URI parsed (an export name is at most 4096 bytes, a socket path far less).
const MAX_URI_LEN: usize = 16 * 1024;

/// A parsed `nbd://`, `nbds://`, `nbd+unix://` or `nbds+unix://` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdUri {
    /// Host (name, IPv4, or IPv6 without brackets); empty for a Unix socket.
    pub host: String,
    /// Port; 0 for a Unix socket.
    pub port: u16,
    /// Export name (percent-decoded).
    pub export: String,
    /// `nbds`: TLS required.
    pub tls: bool,
    /// The Unix socket to connect to (`nbd+unix://`), instead of `host:port`.
    pub socket: Option<PathBuf>,
}

impl NbdUri {
    /// Parses `nbds://HOST:PORT/EXPORT` (or `nbd://`; the port defaults to 10809; no export
    /// name is the default export ""; a query part is refused), or `nbd+unix:///EXPORT?socket=PATH` (or `nbds+unix://`: no host, the
    /// one query key `socket`, an absolute path). Export and socket are percent-decoded.
    ///
    /// # Errors
    /// [`TransferError::BadNbdUri`] naming what is wrong.
    pub fn parse(uri: &str) -> Result<Self, TransferError> {
        let bad = |reason| TransferError::BadNbdUri {
            uri: uri.chars().take(256).collect(),
            reason,
        };
        if uri.len() > MAX_URI_LEN {
            return Err(bad("is longer than 16 KiB"));
        }
        if let Some(r) = uri.strip_prefix("nbds+unix://") {
            return Self::parse_unix(r, true).map_err(bad);
        }
        if let Some(r) = uri.strip_prefix("nbd+unix://") {
            return Self::parse_unix(r, false).map_err(bad);
        }
        let (tls, rest) = if let Some(r) = uri.strip_prefix("nbds://") {
            (true, r)
        } else if let Some(r) = uri.strip_prefix("nbd://") {
            (false, r)
        } else {
            return Err(bad(
                "must start with nbds://, nbd://, nbd+unix:// or nbds+unix://",
            ));
        };
        if rest.contains('?') || rest.contains('#') {
            return Err(bad("must not have a query or fragment"));
        }
        // No path, or an empty one: the server's default export "" (as libnbd and QEMU read it).
        let (authority, export) = rest.split_once('/').unwrap_or((rest, ""));
        let export = percent_decode(export).map_err(bad)?;
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("has an unclosed '['"))?;
            match after.strip_prefix(':') {
                Some(p) => (host, Some(p)),
                None if after.is_empty() => (host, None),
                None => return Err(bad("has junk after the IPv6 address")),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("has no host"));
        }
        if host.contains(['[', ']', '@']) || host.contains(char::is_whitespace) {
            return Err(bad("has an invalid host"));
        }
        let port = match port {
            Some(p) => p.parse::<u16>().map_err(|_| bad("has an invalid port"))?,
            None => DEFAULT_PORT,
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            export,
            tls,
            socket: None,
        })
    }

    /// The part after `nbd+unix://`: `/EXPORT?socket=PATH`.
    fn parse_unix(rest: &str, tls: bool) -> Result<Self, &'static str> {
        if rest.contains('#') {
            return Err("must not have a fragment");
        }
        let (path, query) = rest
            .split_once('?')
            .ok_or("needs ?socket=PATH (a Unix socket URI)")?;
        let export = path
            .strip_prefix('/')
            .ok_or("must have no host: nbd+unix:///EXPORT?socket=PATH")?;
        let export = percent_decode(export)?;
        let mut socket = None;
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("socket", value)) if socket.is_none() => {
                    socket = Some(percent_decode(value)?);
                }
                Some(("socket", _)) => return Err("names socket twice"),
                _ => return Err("has a query key other than socket"),
            }
        }
        let socket = socket.ok_or("needs ?socket=PATH (a Unix socket URI)")?;
        if !socket.starts_with('/') {
            return Err("needs an absolute socket path");
        }
        Ok(Self {
            host: String::new(),
            port: 0,
            export,
            tls,
            socket: Some(PathBuf::from(socket)),
        })
    }

    /// `host:port` for connecting (brackets around IPv6); the socket path for a Unix socket.
    #[must_use]
    pub fn address(&self) -> String {
        if let Some(socket) = &self.socket {
            return socket.display().to_string();
        }
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for NbdUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "nbds" } else { "nbd" };
        let export = percent_encode(&self.export);
        match &self.socket {
            Some(socket) => write!(
                f,
                "{scheme}+unix:///{export}?socket={}",
                percent_encode(&socket.to_string_lossy())
            ),
            None => write!(f, "{scheme}://{}/{export}", self.address()),
        }
    }
}

/// Decodes `%XX` escapes (RFC 3986); the result must be UTF-8 without NUL.
fn percent_decode(s: &str) -> Result<String, &'static str> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or("has a cut %-escape")?;
            let hex = std::str::from_utf8(hex).map_err(|_| "has a bad %-escape")?;
            let b = u8::from_str_radix(hex, 16).map_err(|_| "has a bad %-escape")?;
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    if out.contains(&0) {
        return Err("has a NUL byte");
    }
    String::from_utf8(out).map_err(|_| "is not UTF-8 once decoded")
}

/// Escapes every byte but RFC 3986's unreserved characters and `/`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// TLS for NBD connections: the client configuration and the server name to verify.
#[derive(Debug, Clone)]
pub struct NbdTls {
    /// rustls client configuration trusting the hub's CA.
    pub config: Arc<rustls::ClientConfig>,
    /// Name the server certificate must carry.
    pub server_name: String,
}

/// Opens connections to one export.
#[derive(Debug, Clone)]
pub struct NbdConnector {
    uri: NbdUri,
    options: ClientOptions,
}

impl NbdConnector {
    /// A connector for `uri`; `tls` is required for `nbds://` and refused for `nbd://`.
    ///
    /// # Errors
    /// [`TransferError::BadNbdUri`] when TLS and the scheme disagree.
    pub fn new(uri: NbdUri, tls: Option<NbdTls>) -> Result<Self, TransferError> {
        if uri.tls != tls.is_some() {
            return Err(TransferError::BadNbdUri {
                uri: uri.to_string(),
                reason: if uri.tls {
                    "needs TLS, but no CA was given"
                } else {
                    "is plain nbd://, but TLS was asked for"
                },
            });
        }
        let options = ClientOptions {
            tls: tls.map(|t| (t.config, t.server_name)),
            export_name: uri.export.clone(),
            ..ClientOptions::default()
        };
        Ok(Self { uri, options })
    }

    /// The export's URI.
    #[must_use]
    pub fn uri(&self) -> &NbdUri {
        &self.uri
    }

    /// One connection.
    ///
    /// # Errors
    /// [`TransferError::Nbd`] when connecting or negotiating fails.
    pub async fn connect_client(&self) -> Result<Client, TransferError> {
        self.connect_with(self.options.clone()).await
    }

    /// One connection selecting the metadata contexts `contexts` besides `base:allocation`.
    ///
    /// # Errors
    /// [`TransferError::Nbd`] when connecting or negotiating fails.
    pub async fn connect_with_contexts(
        &self,
        contexts: &[String],
    ) -> Result<Client, TransferError> {
        let options = ClientOptions {
            meta_contexts: contexts.to_vec(),
            ..self.options.clone()
        };
        self.connect_with(options).await
    }

    async fn connect_with(&self, options: ClientOptions) -> Result<Client, TransferError> {
        let connected = match &self.uri.socket {
            Some(socket) => Client::connect_unix(socket, options).await,
            None => Client::connect(self.uri.address(), options).await,
        };
        connected.map_err(|source| self.err("connect", source))
    }

    fn err(&self, operation: &'static str, source: NbdError) -> TransferError {
        if certificate_refused(&source) {
            return TransferError::NbdCertificateRefused {
                target: self.uri.to_string(),
                source,
            };
        }
        TransferError::Nbd {
            operation,
            target: self.uri.to_string(),
            source,
        }
    }
}

/// Whether the server ended the TLS handshake because of our client certificate: it asked for
/// one we did not present, or did not accept the one we did.
fn certificate_refused(e: &NbdError) -> bool {
    use rustls::AlertDescription as A;
    let NbdError::Io(io) = e else { return false };
    let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return false;
    };
    matches!(
        tls,
        rustls::Error::AlertReceived(
            A::CertificateRequired
                | A::BadCertificate
                | A::UnknownCA
                | A::CertificateUnknown
                | A::CertificateRevoked
                | A::CertificateExpired
                | A::UnsupportedCertificate
        )
    )
}

impl TargetConnector for NbdConnector {
    fn connect(&self) -> BoxFuture<'_, Result<Arc<dyn BlockTarget>, TransferError>> {
        Box::pin(async move {
            let client = self.connect_client().await?;
            let target: Arc<dyn BlockTarget> = Arc::new(NbdTarget {
                client,
                uri: self.uri.to_string(),
            });
            Ok(target)
        })
    }
}

/// One NBD connection used as a write target.
#[derive(Debug)]
pub struct NbdTarget {
    client: Client,
    uri: String,
}

impl NbdTarget {
    fn err(&self, operation: &'static str, source: NbdError) -> TransferError {
        if let NbdError::Request {
            errno: sendense_nbd::wire::Errno::NoSpc,
        } = source
        {
            return TransferError::HubFull {
                operation,
                target: self.uri.clone(),
            };
        }
        TransferError::Nbd {
            operation,
            target: self.uri.clone(),
            source,
        }
    }
}

impl BlockTarget for NbdTarget {
    fn write(&self, offset: u64, data: Payload) -> BoxFuture<'_, Result<(), TransferError>> {
        Box::pin(async move {
            let max = usize::try_from(self.client.max_payload())
                .unwrap_or(usize::MAX)
                .max(512);
            let mut pos = offset;
            for piece in data.chunks(max) {
                self.client
                    .write(pos, piece, false)
                    .await
                    .map_err(|e| self.err("write", e))?;
                pos += piece.len() as u64;
            }
            Ok(())
        })
    }

    fn write_zeroes(&self, offset: u64, length: u64) -> BoxFuture<'_, Result<(), TransferError>> {
        Box::pin(async move {
            let flags = ZeroFlags {
                may_trim: true,
                ..ZeroFlags::default()
            };
            let end = offset.saturating_add(length);
            let mut pos = offset;
            while pos < end {
                let n = (end - pos).min(MAX_LENGTH_REQUEST);
                let n32 = u32::try_from(n).unwrap_or(u32::MAX);
                self.client
                    .write_zeroes(pos, n32, flags)
                    .await
                    .map_err(|e| self.err("write_zeroes", e))?;
                pos += u64::from(n32);
            }
            Ok(())
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), TransferError>> {
        Box::pin(async move { self.client.flush().await.map_err(|e| self.err("flush", e)) })
    }

    fn block_size(&self) -> Option<u64> {
        self.client
            .info()
            .block_sizes
            .map(|b| u64::from(b.preferred.max(b.minimum)))
    }

    fn close(self: Arc<Self>) -> BoxFuture<'static, Result<(), TransferError>> {
        Box::pin(async move {
            match Arc::try_unwrap(self) {
                Ok(target) => {
                    let uri = target.uri.clone();
                    target
                        .client
                        .disconnect()
                        .await
                        .map_err(|source| TransferError::Nbd {
                            operation: "disconnect",
                            target: uri,
                            source,
                        })
                }
                // Still shared: dropping the last reference closes the socket.
                Err(_) => Ok(()),
            }
        })
    }
}

/// An NBD export read as a disk: a hub's restore point (restore), or any outside export
/// (a backup from QEMU, libvirt, nbdkit: [`NbdSource::open_source`]). N connections used
/// round-robin; allocation from `base:allocation` block status: what reads as zeroes
/// (`NBD_STATE_ZERO`) is not read; a hole that does not say it reads as zeroes is read.
/// [`NbdSource::dirty_extents`] answers a QEMU dirty bitmap's changed extents.
#[derive(Debug)]
pub struct NbdSource {
    clients: Vec<Client>,
    next: AtomicUsize,
    size: u64,
    uri: String,
    bitmap: Option<DirtyBitmap>,
}

/// A dirty bitmap the source was asked for, and its context id if the export offers it.
#[derive(Debug, Clone)]
struct DirtyBitmap {
    name: String,
    context: Option<u32>,
}

/// How to open an outside NBD export as a backup source.
#[derive(Debug, Clone, Default)]
pub struct NbdSourceOptions {
    /// Most connections (at least 1). More than one only when the server advertises
    /// `NBD_FLAG_CAN_MULTI_CONN` (`qemu-nbd -r -e N`); a server that accepts fewer is used with
    /// what it accepted.
    pub connections: usize,
    /// The QEMU dirty bitmap to select (`qemu:dirty-bitmap:NAME`), for an incremental.
    pub bitmap: Option<String>,
}

/// How long an extra connection may take to be greeted: a server with fewer connection slots
/// than asked for (`qemu-nbd` without `-e`) leaves it unanswered.
const EXTRA_CONNECTION_DEADLINE: std::time::Duration = std::time::Duration::from_secs(3);

impl NbdSource {
    /// Opens an outside export as a backup source: one connection selecting `base:allocation`
    /// and, when asked, `qemu:dirty-bitmap:NAME`; then, when the server allows several
    /// connections (`CAN_MULTI_CONN`), up to `options.connections` in all. Whether the bitmap
    /// is offered is [`Self::bitmap_offered`].
    ///
    /// # Errors
    /// [`TransferError::Nbd`] when the first connection fails; [`TransferError::NbdSource`]
    /// when the export has no `base:allocation` (structured replies refused).
    pub async fn open_source(
        connector: &NbdConnector,
        options: &NbdSourceOptions,
    ) -> Result<Self, TransferError> {
        let contexts: Vec<String> = options
            .bitmap
            .iter()
            .map(|b| format!("{}{b}", sendense_nbd::client::DIRTY_BITMAP_PREFIX))
            .collect();
        let first = connector.connect_with_contexts(&contexts).await?;
        let uri = connector.uri.to_string();
        if first.info().base_allocation.is_none() {
            return Err(TransferError::NbdSource {
                uri,
                reason: "the server offers no base:allocation block status",
            });
        }
        let bitmap = options.bitmap.as_ref().map(|name| DirtyBitmap {
            name: name.clone(),
            context: contexts.first().and_then(|c| first.meta_context(c)),
        });
        let size = first.size();
        let multi = first.flags() & sendense_nbd::wire::tflag::CAN_MULTI_CONN != 0;
        let mut clients = vec![first];
        if multi && options.connections > 1 {
            // The extra connections negotiate at once: each handshake waits on the server's
            // replies (tens of milliseconds with some servers), one after the other they add up.
            let extra: Vec<BoxFuture<'_, Result<_, std::convert::Infallible>>> = (1..options
                .connections)
                .map(|_| -> BoxFuture<'_, Result<_, std::convert::Infallible>> {
                    Box::pin(async {
                        Ok(tokio::time::timeout(
                            EXTRA_CONNECTION_DEADLINE,
                            connector.connect_with_contexts(&contexts),
                        )
                        .await)
                    })
                })
                .collect();
            let Ok(results) = sendense_io::join::try_join_all(extra).await;
            for more in results {
                match more {
                    Ok(Ok(c)) if c.size() == size => clients.push(c),
                    Ok(Ok(_)) => {
                        return Err(TransferError::NbdSource {
                            uri,
                            reason: "the export's size changed between two connections",
                        });
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(%uri, connections = clients.len(), error = %e, "the NBD source accepted fewer connections than asked for");
                    }
                    Err(_) => {
                        tracing::warn!(%uri, connections = clients.len(), "the NBD source did not greet another connection in time; going on with fewer");
                    }
                }
            }
        }
        Ok(Self {
            clients,
            next: AtomicUsize::new(0),
            size,
            uri,
            bitmap,
        })
    }

    /// Connections in use.
    #[must_use]
    pub fn connections(&self) -> usize {
        self.clients.len()
    }

    /// Whether the export offers the dirty bitmap asked for in [`NbdSourceOptions::bitmap`]
    /// (`false` when none was asked for).
    #[must_use]
    pub fn bitmap_offered(&self) -> bool {
        self.bitmap.as_ref().is_some_and(|b| b.context.is_some())
    }

    /// The changed extents of the dirty bitmap (descriptors with bit 0 set), sorted, merged,
    /// inside the disk.
    ///
    /// # Errors
    /// [`TransferError::NbdSource`] when no bitmap was asked for or the export does not offer
    /// it; [`TransferError::Nbd`] when block status fails or answers nothing.
    pub async fn dirty_extents(&self) -> Result<Vec<Extent>, TransferError> {
        let Some(context) = self.bitmap.as_ref().and_then(|b| b.context) else {
            return Err(TransferError::NbdSource {
                uri: self.uri.clone(),
                reason: "the export does not offer the dirty bitmap asked for",
            });
        };
        self.extents_where(context, |flags| flags & sendense_nbd::client::DIRTY != 0)
            .await
    }

    /// The name of the dirty bitmap asked for.
    #[must_use]
    pub fn bitmap_name(&self) -> Option<&str> {
        self.bitmap.as_ref().map(|b| b.name.as_str())
    }

    /// Walks `context` over the whole disk and answers the extents whose flags satisfy `keep`,
    /// merged. Descriptors past the disk's end are cut; a reply that makes no progress is an
    /// error (never a loop).
    async fn extents_where(
        &self,
        context: u32,
        keep: impl Fn(u32) -> bool,
    ) -> Result<Vec<Extent>, TransferError> {
        let client = self.client();
        let mut out: Vec<Extent> = Vec::new();
        let mut pos = 0u64;
        while pos < self.size {
            let n = u32::try_from((self.size - pos).min(MAX_LENGTH_REQUEST)).unwrap_or(u32::MAX);
            let extents = client
                .block_status_of(context, pos, n)
                .await
                .map_err(|e| self.err("block_status", e))?;
            let before = pos;
            for e in extents {
                let length = e.length.min(self.size - pos);
                if length == 0 {
                    break;
                }
                if keep(e.flags) {
                    match out.last_mut() {
                        Some(last) if last.end() == pos => last.length += length,
                        _ => out.push(Extent::new(pos, length)),
                    }
                }
                pos += length;
            }
            if pos == before {
                return Err(self.err(
                    "block_status",
                    NbdError::Protocol {
                        what: "block status answered no extent",
                    },
                ));
            }
        }
        Ok(out)
    }

    /// Opens `connections` (at least 1) connections.
    ///
    /// # Errors
    /// [`TransferError::Nbd`] when a connection fails.
    pub async fn connect(
        connector: &NbdConnector,
        connections: usize,
    ) -> Result<Self, TransferError> {
        let mut clients = Vec::with_capacity(connections.max(1));
        for _ in 0..connections.max(1) {
            clients.push(connector.connect_client().await?);
        }
        let size = clients.first().map_or(0, Client::size);
        Ok(Self {
            clients,
            next: AtomicUsize::new(0),
            size,
            uri: connector.uri.to_string(),
            bitmap: None,
        })
    }

    fn client(&self) -> &Client {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        &self.clients[i]
    }

    fn err(&self, operation: &'static str, source: NbdError) -> TransferError {
        TransferError::Nbd {
            operation,
            target: self.uri.clone(),
            source,
        }
    }

    /// Disconnects every connection.
    ///
    /// # Errors
    /// [`TransferError::Nbd`] when a disconnect fails.
    pub async fn close(self) -> Result<(), TransferError> {
        for c in self.clients {
            c.disconnect().await.map_err(|source| TransferError::Nbd {
                operation: "disconnect",
                target: self.uri.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

impl DiskSource for NbdSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn read<'a>(
        &'a self,
        offset: u64,
        buf: &'a mut [u8],
    ) -> BoxFuture<'a, Result<(), TransferError>> {
        Box::pin(async move {
            crate::source::check_range(offset, buf.len(), self.size)?;
            let client = self.client();
            let max = usize::try_from(client.max_payload())
                .unwrap_or(usize::MAX)
                .max(512);
            let mut pos = offset;
            for piece in buf.chunks_mut(max) {
                let n = u32::try_from(piece.len()).unwrap_or(u32::MAX);
                let data = client.read(pos, n).await.map_err(|e| self.err("read", e))?;
                if data.len() != piece.len() {
                    return Err(TransferError::ShortRead { offset: pos });
                }
                piece.copy_from_slice(&data);
                pos += piece.len() as u64;
            }
            Ok(())
        })
    }

    fn read_owned(
        &self,
        offset: u64,
        mut buf: AlignedBuf,
        len: usize,
    ) -> BoxFuture<'_, Result<AlignedBuf, TransferError>> {
        Box::pin(async move {
            let client = self.client();
            // One request fills the caller's buffer without a copy; longer reads go piecewise.
            match u32::try_from(len) {
                Ok(n) if n <= client.max_payload() => {
                    crate::source::check_range(offset, len, self.size)?;
                    buf.resize(len);
                    client
                        .read_into_buf(offset, buf)
                        .await
                        .map_err(|e| self.err("read", e))
                }
                _ => {
                    buf.resize(len);
                    self.read(offset, &mut buf).await?;
                    Ok(buf)
                }
            }
        })
    }

    fn allocated_extents(&self) -> BoxFuture<'_, Result<Vec<Extent>, TransferError>> {
        Box::pin(async move {
            let Some(context) = self.client().info().base_allocation else {
                return Ok(vec![Extent::new(0, self.size)]);
            };
            // A hole need not read as zeroes (NBD_STATE_HOLE alone): only ZERO is skipped.
            self.extents_where(context, |flags| {
                flags & sendense_nbd::wire::state::ZERO == 0
            })
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::Path;

    fn alert(description: rustls::AlertDescription) -> NbdError {
        NbdError::Io(std::io::Error::other(rustls::Error::AlertReceived(
            description,
        )))
    }

    #[test]
    fn certificate_refused_certificate_required_alert_is_true() {
        assert!(certificate_refused(&alert(
            rustls::AlertDescription::CertificateRequired
        )));
    }

    #[test]
    fn certificate_refused_other_alert_is_false() {
        assert!(!certificate_refused(&alert(
            rustls::AlertDescription::HandshakeFailure
        )));
    }

    #[test]
    fn certificate_refused_plain_io_error_is_false() {
        let e = NbdError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));

        assert!(!certificate_refused(&e));
    }

    proptest! {
        #[test]
        fn nbd_uri_display_parse_round_trip(
            host in prop_oneof!["[a-z][a-z0-9.-]{0,20}", "::1", "fe80::[0-9a-f]{1,4}"],
            port in 1u16..,
            export in "[A-Za-z0-9._-]{1,40}",
            tls in any::<bool>(),
        ) {
            let uri = NbdUri { host, port, export, tls, socket: None };

            let parsed = NbdUri::parse(&uri.to_string()).unwrap();

            prop_assert_eq!(parsed, uri);
        }
    }

    #[test]
    fn nbd_uri_nbds_with_port_parses() {
        let uri = NbdUri::parse("nbds://hub.example:10809/exp-abc_1").unwrap();

        assert_eq!(
            uri,
            NbdUri {
                host: "hub.example".into(),
                port: 10809,
                export: "exp-abc_1".into(),
                tls: true,
                socket: None,
            }
        );
    }

    #[test]
    fn nbd_uri_ipv6_parses_and_formats() {
        let uri = NbdUri::parse("nbd://[::1]:1234/x").unwrap();

        assert_eq!(uri.host, "::1");
        assert_eq!(uri.address(), "[::1]:1234");
        assert_eq!(uri.to_string(), "nbd://[::1]:1234/x");
    }

    #[test]
    fn nbd_uri_without_export_is_default_export() {
        for text in ["nbd://127.0.0.1:10810", "nbd://127.0.0.1:10810/"] {
            let uri = NbdUri::parse(text).unwrap();

            assert_eq!(uri.export, "", "{text}");
            assert_eq!(uri.port, 10810, "{text}");
        }
    }

    #[test]
    fn nbd_uri_without_port_uses_default() {
        let uri = NbdUri::parse("nbds://h/x").unwrap();

        assert_eq!(uri.port, DEFAULT_PORT);
    }

    #[test]
    fn nbd_uri_with_query_is_refused() {
        let err = NbdUri::parse("nbds://h:1/x?tls-certificates=/tmp").unwrap_err();

        assert!(matches!(err, TransferError::BadNbdUri { .. }), "{err:?}");
    }

    #[test]
    fn nbd_uri_wrong_scheme_is_refused() {
        let err = NbdUri::parse("https://h:1/x").unwrap_err();

        assert!(err.to_string().contains("nbds://"), "{err}");
    }

    #[test]
    fn nbd_uri_unix_socket_parses() {
        let uri = NbdUri::parse("nbd+unix:///disk%20a?socket=/run/vm%201.sock").unwrap();

        assert_eq!(uri.export, "disk a");
        assert_eq!(uri.socket.as_deref(), Some(Path::new("/run/vm 1.sock")));
        assert!(!uri.tls);
        assert_eq!(uri.address(), "/run/vm 1.sock");
    }

    #[test]
    fn nbd_uri_unix_socket_empty_export_is_default_export() {
        let uri = NbdUri::parse("nbds+unix:///?socket=/s").unwrap();

        assert_eq!(uri.export, "");
        assert!(uri.tls);
    }

    #[test]
    fn nbd_uri_unix_without_socket_is_refused() {
        let err = NbdUri::parse("nbd+unix:///disk").unwrap_err();

        assert!(err.to_string().contains("socket=PATH"), "{err}");
    }

    #[test]
    fn nbd_uri_unix_with_host_is_refused() {
        let err = NbdUri::parse("nbd+unix://h/disk?socket=/s").unwrap_err();

        assert!(err.to_string().contains("no host"), "{err}");
    }

    #[test]
    fn nbd_uri_unix_relative_socket_is_refused() {
        let err = NbdUri::parse("nbd+unix:///d?socket=s.sock").unwrap_err();

        assert!(err.to_string().contains("absolute"), "{err}");
    }

    #[test]
    fn nbd_uri_unix_other_query_key_is_refused() {
        let err = NbdUri::parse("nbd+unix:///d?socket=/s&tls-certificates=/x").unwrap_err();

        assert!(err.to_string().contains("other than socket"), "{err}");
    }

    #[test]
    fn nbd_uri_bad_percent_escape_is_refused() {
        for uri in ["nbd://h/a%2", "nbd://h/a%zz", "nbd://h/a%00", "nbd://h/%ff"] {
            let err = NbdUri::parse(uri).unwrap_err();

            assert!(
                matches!(err, TransferError::BadNbdUri { .. }),
                "{uri}: {err:?}"
            );
        }
    }

    #[test]
    fn nbd_uri_bracket_in_host_is_refused() {
        let err = NbdUri::parse("nbd://a]:b:1/x").unwrap_err();

        assert!(err.to_string().contains("invalid host"), "{err}");
    }

    #[test]
    fn nbd_uri_too_long_is_refused() {
        let uri = format!("nbd://h/{}", "a".repeat(MAX_URI_LEN));

        let err = NbdUri::parse(&uri).unwrap_err();

        assert!(err.to_string().contains("16 KiB"), "{err}");
    }

    proptest! {
        #[test]
        fn nbd_uri_unix_display_parse_round_trip(
            export in "[ -~]{0,40}",
            socket in "/[ -~]{1,60}",
            tls in any::<bool>(),
        ) {
            let uri = NbdUri {
                host: String::new(),
                port: 0,
                export,
                tls,
                socket: Some(PathBuf::from(socket)),
            };

            let parsed = NbdUri::parse(&uri.to_string()).unwrap();

            prop_assert_eq!(parsed, uri);
        }

        #[test]
        fn nbd_uri_parse_any_input_no_panic(s in "\\PC{0,80}") {
            let _ = NbdUri::parse(&s);
            let _ = NbdUri::parse(&format!("nbd+unix://{s}"));
            let _ = NbdUri::parse(&format!("nbd://{s}"));
        }
    }

    /// A server on 127.0.0.1 that greets its first connection at once and the next three only
    /// once all three are connected: connected one after the other, each extra connection would
    /// wait for a greeting that never comes.
    #[tokio::test]
    async fn nbd_source_open_source_negotiates_extra_connections_at_once() {
        use sendense_nbd::export::{ExportRegistry, MemoryExport};
        use sendense_nbd::server::{Server, ServerOptions};
        let registry = Arc::new(ExportRegistry::new());
        registry
            .add("d", Arc::new(MemoryExport::new(1 << 20)))
            .unwrap();
        let server = Arc::new(Server::new(registry, ServerOptions::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serving = tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            let (first, peer) = listener.accept().await.unwrap();
            let s = Arc::clone(&server);
            tasks.spawn(async move { s.serve_stream(first, peer).await });
            let mut waiting = Vec::new();
            for _ in 0..3 {
                waiting.push(listener.accept().await.unwrap());
            }
            for (io, peer) in waiting {
                let s = Arc::clone(&server);
                tasks.spawn(async move { s.serve_stream(io, peer).await });
            }
            tasks.join_all().await
        });
        let uri = NbdUri::parse(&format!("nbd://{addr}/d")).unwrap();
        let connector = NbdConnector::new(uri, None).unwrap();
        let options = NbdSourceOptions {
            connections: 4,
            bitmap: None,
        };

        let source = NbdSource::open_source(&connector, &options).await.unwrap();

        assert_eq!(source.connections(), 4);
        source.close().await.unwrap();
        serving.await.unwrap();
    }

    #[test]
    fn nbd_connector_nbds_without_tls_is_refused() {
        let uri = NbdUri::parse("nbds://h:1/x").unwrap();

        let err = NbdConnector::new(uri, None).unwrap_err();

        assert!(err.to_string().contains("needs TLS"), "{err}");
    }
}
