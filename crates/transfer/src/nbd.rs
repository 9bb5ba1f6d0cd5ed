//! The NBD side of the client, over `sendense-nbd`: [`NbdConnector`]/[`NbdTarget`] write into
//! a hub export (backup), [`NbdSource`] reads one (restore), and [`NbdUri`] parses the
//! `nbds://HOST:PORT/EXPORT_NAME` URIs the hub answers.
//!
//! TLS: `nbds://` requires a rustls client configuration trusting the hub's CA, and the name
//! to verify the hub's certificate against (the host of `--hub`, which the hub's certificate
//! names; the URI's host is only where to connect).

use std::fmt;
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
const MAX_LENGTH_REQUEST: u64 = 1 << 30;

/// A parsed `nbd://` or `nbds://` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdUri {
    /// Host (name, IPv4, or IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Export name.
    pub export: String,
    /// `nbds`: TLS required.
    pub tls: bool,
}

impl NbdUri {
    /// Parses `nbds://HOST:PORT/EXPORT` (or `nbd://`; the port defaults to 10809). A query
    /// part is refused.
    ///
    /// # Errors
    /// [`TransferError::BadNbdUri`] naming what is wrong.
    pub fn parse(uri: &str) -> Result<Self, TransferError> {
        let bad = |reason| TransferError::BadNbdUri {
            uri: uri.to_owned(),
            reason,
        };
        let (tls, rest) = if let Some(r) = uri.strip_prefix("nbds://") {
            (true, r)
        } else if let Some(r) = uri.strip_prefix("nbd://") {
            (false, r)
        } else {
            return Err(bad("must start with nbds:// or nbd://"));
        };
        if rest.contains('?') || rest.contains('#') {
            return Err(bad("must not have a query or fragment"));
        }
        let (authority, export) = rest
            .split_once('/')
            .ok_or_else(|| bad("has no export name"))?;
        if export.is_empty() {
            return Err(bad("has no export name"));
        }
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
        let port = match port {
            Some(p) => p.parse::<u16>().map_err(|_| bad("has an invalid port"))?,
            None => DEFAULT_PORT,
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            export: export.to_owned(),
            tls,
        })
    }

    /// `host:port` for connecting (brackets around IPv6).
    #[must_use]
    pub fn address(&self) -> String {
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
        write!(f, "{scheme}://{}/{}", self.address(), self.export)
    }
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
        Client::connect(self.uri.address(), self.options.clone())
            .await
            .map_err(|source| self.err("connect", source))
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

/// An NBD export read as a disk (restore): N connections used round-robin, allocation from
/// `base:allocation` block status (holes and zero extents are not allocated).
#[derive(Debug)]
pub struct NbdSource {
    clients: Vec<Client>,
    next: AtomicUsize,
    size: u64,
    uri: String,
}

impl NbdSource {
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
            let client = self.client();
            if client.info().base_allocation.is_none() {
                return Ok(vec![Extent::new(0, self.size)]);
            }
            let mut out: Vec<Extent> = Vec::new();
            let mut pos = 0u64;
            while pos < self.size {
                let n =
                    u32::try_from((self.size - pos).min(MAX_LENGTH_REQUEST)).unwrap_or(u32::MAX);
                let extents = client
                    .block_status(pos, n)
                    .await
                    .map_err(|e| self.err("block_status", e))?;
                let before = pos;
                for e in extents {
                    let length = e.length.min(self.size - pos);
                    if length == 0 {
                        break;
                    }
                    if !e.hole && !e.zero {
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
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
            let uri = NbdUri { host, port, export, tls };

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
                tls: true
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
    fn nbd_connector_nbds_without_tls_is_refused() {
        let uri = NbdUri::parse("nbds://h:1/x").unwrap();

        let err = NbdConnector::new(uri, None).unwrap_err();

        assert!(err.to_string().contains("needs TLS"), "{err}");
    }
}
