//! One piece of a file download (`GET .../files/content` with `Range: bytes=START-END`) over
//! a TLS connection of its own, read straight into the caller's buffers.
//!
//! Through `reqwest` every byte is copied twice in this process: rustls's plaintext into
//! hyper's read buffer, then that chunk into the page-aligned buffer an `O_DIRECT` write
//! needs. Here rustls's plaintext lands in the caller's buffer directly (one copy, as an NBD
//! read of `restore` does). The request is plain HTTP/1.1 with `Connection: close`; the
//! answer's head is read up to [`MAX_HEAD`] bytes and parsed strictly (a status line, then
//! `Name: value` lines; `Transfer-Encoding` is refused: a piece always has a length), and an
//! error answer's JSON body (up to [`MAX_ERROR_BODY`] bytes) becomes the same
//! [`ClientError`] a `reqwest` call would give. Every read waits at most [`STALL_LIMIT`].

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::error::ClientError;
use crate::hub::HubClient;

/// Largest answer head read.
pub const MAX_HEAD: usize = 16 * 1024;

/// Largest error body read.
pub const MAX_ERROR_BODY: usize = 64 * 1024;

/// A connection that delivers nothing for this long is given up.
pub const STALL_LIMIT: Duration = Duration::from_secs(60);

/// Where and how to connect: from [`HubClient::range_target`].
#[derive(Clone)]
pub(crate) struct Target {
    /// Host name or address to connect to and verify (no brackets).
    pub(crate) host: String,
    /// TCP port.
    pub(crate) port: u16,
    /// The `Host` header's value.
    pub(crate) authority: String,
    /// Bearer token (empty: none).
    pub(crate) token: String,
    /// TLS trusting the hub's CA.
    pub(crate) tls: Arc<rustls::ClientConfig>,
}

/// The head of an answer: what the piece checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Status code.
    pub status: u16,
    /// `Content-Length`.
    pub length: Option<u64>,
    /// The total of `Content-Range: bytes START-END/TOTAL`.
    pub total: Option<u64>,
}

/// An answer whose head was read: its body comes by [`Body::read_exact`].
pub(crate) struct Body {
    tls: Box<TlsStream<TcpStream>>,
    /// Body bytes that came with the head.
    early: Vec<u8>,
    early_at: usize,
    path: String,
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Body {
    /// Fills `buf` from the body.
    ///
    /// # Errors
    /// [`ClientError::HubRequest`] when the connection fails, ends early or stalls.
    pub(crate) async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), ClientError> {
        let mut filled = 0;
        if let Some(early) = self.early.get(self.early_at..) {
            let n = early.len().min(buf.len());
            buf[..n].copy_from_slice(&early[..n]);
            self.early_at += n;
            filled = n;
        }
        while filled < buf.len() {
            let n = read_some(&mut self.tls, &mut buf[filled..], &self.path).await?;
            if n == 0 {
                return Err(cut(
                    &self.path,
                    "the hub closed the connection early".to_owned(),
                ));
            }
            filled += n;
        }
        Ok(())
    }
}

/// Sends `GET path` with `Range: bytes=start-end` and reads the answer's head. An error
/// answer (not 2xx) is read whole and answered as the error it stands for.
///
/// # Errors
/// Connection and TLS failures, a head that is not HTTP/1.x or too long
/// ([`ClientError::HubRequest`]), the hub's error answers.
pub(crate) async fn get(
    hub: &HubClient,
    path: &str,
    start: u64,
    end: u64,
) -> Result<(Head, Body), ClientError> {
    let target = hub.range_target();
    let fail = |detail: String| cut(path, detail);
    let tcp = tokio::time::timeout(
        STALL_LIMIT,
        TcpStream::connect((target.host.as_str(), target.port)),
    )
    .await
    .map_err(|_| fail("connecting timed out".to_owned()))?
    .map_err(|e| fail(format!("cannot connect: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let name = rustls::pki_types::ServerName::try_from(target.host.clone())
        .map_err(|e| fail(format!("bad host name {}: {e}", target.host)))?;
    let mut tls = tokio::time::timeout(
        STALL_LIMIT,
        TlsConnector::from(Arc::clone(&target.tls)).connect(name, tcp),
    )
    .await
    .map_err(|_| fail("the TLS handshake timed out".to_owned()))?
    .map_err(|e| fail(format!("TLS: {}", sendense_io::error_chain(&e))))?;
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nRange: bytes={start}-{end}\r\nConnection: close\r\n",
        target.authority
    );
    if !target.token.is_empty() {
        request.push_str(&format!("Authorization: Bearer {}\r\n", target.token));
    }
    request.push_str("\r\n");
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| fail(format!("sending the request: {e}")))?;
    tls.flush()
        .await
        .map_err(|e| fail(format!("sending the request: {e}")))?;

    let mut received = Vec::with_capacity(8192);
    let mut scratch = vec![0u8; 8192];
    let head_end = loop {
        if let Some(at) = find_head_end(&received) {
            break at;
        }
        if received.len() > MAX_HEAD {
            return Err(fail(format!("an answer head longer than {MAX_HEAD} bytes")));
        }
        let n = read_some(&mut tls, &mut scratch, path).await?;
        if n == 0 {
            return Err(fail(
                "the hub closed the connection before answering".to_owned(),
            ));
        }
        received.extend_from_slice(&scratch[..n]);
    };
    let head = parse_head(&received[..head_end]).map_err(fail)?;
    let early = received.split_off(head_end + 4);
    let mut body = Body {
        tls: Box::new(tls),
        early,
        early_at: 0,
        path: path.to_owned(),
    };
    if !(200..300).contains(&head.status) {
        let len = head
            .length
            .and_then(|l| usize::try_from(l).ok())
            .unwrap_or(0)
            .min(MAX_ERROR_BODY);
        let mut bytes = vec![0u8; len];
        body.read_exact(&mut bytes).await?;
        let status = StatusCode::from_u16(head.status)
            .map_err(|_| fail(format!("status {}", head.status)))?;
        return Err(hub.error_answer("GET", path, status, &bytes));
    }
    Ok((head, body))
}

/// One read, waiting at most [`STALL_LIMIT`].
async fn read_some(
    tls: &mut TlsStream<TcpStream>,
    buf: &mut [u8],
    path: &str,
) -> Result<usize, ClientError> {
    match tokio::time::timeout(STALL_LIMIT, tls.read(buf)).await {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => Err(cut(path, format!("download cut off: {e}"))),
        Err(_) => Err(cut(
            path,
            format!("the hub sent nothing for {} s", STALL_LIMIT.as_secs()),
        )),
    }
}

/// Where the head's blank line starts, if it came.
fn find_head_end(received: &[u8]) -> Option<usize> {
    received.windows(4).position(|w| w == b"\r\n\r\n")
}

/// Parses an answer head (without its blank line).
///
/// # Errors
/// What is wrong with it.
pub fn parse_head(head: &[u8]) -> Result<Head, String> {
    let text =
        std::str::from_utf8(head).map_err(|_| "an answer head that is not text".to_owned())?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let (version, code) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1.x answer: {status_line:?}"));
    }
    let status = code
        .parse::<u16>()
        .ok()
        .filter(|s| (100..1000).contains(s))
        .ok_or_else(|| format!("a bad status line: {status_line:?}"))?;
    let mut head = Head {
        status,
        length: None,
        total: None,
    };
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("a bad header line: {line:?}"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let length = value
                .parse()
                .map_err(|_| format!("a bad Content-Length: {value:?}"))?;
            if head.length.replace(length).is_some_and(|l| l != length) {
                return Err("two different Content-Length headers".to_owned());
            }
        } else if name.eq_ignore_ascii_case("content-range") {
            head.total = value.rsplit('/').next().and_then(|t| t.parse().ok());
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(format!(
                "an answer with Transfer-Encoding {value:?}, not a length"
            ));
        }
    }
    Ok(head)
}

fn cut(path: &str, detail: String) -> ClientError {
    ClientError::HubRequest {
        method: "GET",
        path: path.to_owned(),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };
    use sendense_nbd::tls;

    use super::*;
    use crate::hub::HubOptions;

    /// A hub on 127.0.0.1 that answers every connection with `answer` (after reading the
    /// request head), and a client of it; the hub hands back each request head it read.
    async fn one_answer_hub(
        dir: &std::path::Path,
        answer: Vec<u8>,
    ) -> (HubClient, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, &ca_key);
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["127.0.0.1".into()]).unwrap();
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = p.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join(tls::CA_CERT), ca_cert.pem()).unwrap();
        std::fs::write(dir.join(tls::SERVER_CERT), cert.pem()).unwrap();
        std::fs::write(dir.join(tls::SERVER_KEY), key.serialize_pem()).unwrap();
        std::fs::write(dir.join("token"), "secret").unwrap();
        let acceptor =
            tokio_rustls::TlsAcceptor::from(tls::server_config_from_dir(dir, false).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (seen_tx, seen) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let mut io = acceptor.accept(tcp).await.unwrap();
                let mut head = Vec::new();
                while find_head_end(&head).is_none() {
                    let mut b = [0u8; 1024];
                    let n = io.read(&mut b).await.unwrap();
                    assert_ne!(n, 0, "the client closed before its request head ended");
                    head.extend_from_slice(&b[..n]);
                }
                let _ = seen_tx.send(String::from_utf8_lossy(&head).into_owned());
                io.write_all(&answer).await.unwrap();
                io.shutdown().await.unwrap();
            }
        });
        let hub = HubClient::new(&HubOptions {
            url: format!("https://127.0.0.1:{port}"),
            ca_file: dir.join(tls::CA_CERT),
            token_file: dir.join("token"),
            tls_dir: None,
        })
        .unwrap();
        (hub, seen)
    }

    #[tokio::test]
    async fn get_sends_the_range_and_reads_the_body_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut answer = format!(
            "HTTP/1.1 206 Partial Content\r\ncontent-length: {}\r\ncontent-range: bytes 5-100004/200000\r\n\r\n",
            body.len()
        )
        .into_bytes();
        answer.extend_from_slice(&body);
        let (hub, mut seen) = one_answer_hub(dir.path(), answer).await;

        let (head, mut reader) = get(&hub, "/api/v1/x?path=%2Fa", 5, 100_004).await.unwrap();
        let mut got = vec![0u8; body.len()];
        reader.read_exact(&mut got).await.unwrap();
        let mut more = [0u8; 1];
        let past_end = reader.read_exact(&mut more).await;

        assert_eq!(
            head,
            Head {
                status: 206,
                length: Some(100_000),
                total: Some(200_000)
            }
        );
        assert!(got == body);
        assert!(past_end.is_err());
        let request = seen.recv().await.unwrap();
        assert!(
            request.starts_with("GET /api/v1/x?path=%2Fa HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request.contains("Range: bytes=5-100004\r\n"), "{request}");
        assert!(
            request.contains("Authorization: Bearer secret\r\n"),
            "{request}"
        );
    }

    #[tokio::test]
    async fn get_of_an_error_answer_is_the_hubs_error() {
        let dir = tempfile::tempdir().unwrap();
        let json = r#"{"error":"not_found","message":"No such file or folder: /a"}"#;
        let answer = format!(
            "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{json}",
            json.len()
        );
        let (hub, _seen) = one_answer_hub(dir.path(), answer.into_bytes()).await;

        let err = get(&hub, "/api/v1/x", 0, 9).await.unwrap_err();

        assert!(
            matches!(&err, ClientError::HubStatus { status: 404, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("No such file"), "{err}");
    }

    #[test]
    fn parse_head_of_a_partial_answer_gives_its_length_and_total() {
        let head = b"HTTP/1.1 206 Partial Content\r\ncontent-type: application/octet-stream\r\nContent-Length: 100\r\ncontent-range: bytes 0-99/1000";

        let parsed = parse_head(head).unwrap();

        assert_eq!(
            parsed,
            Head {
                status: 206,
                length: Some(100),
                total: Some(1000)
            }
        );
    }

    #[test]
    fn parse_head_refuses_chunked_bad_status_and_bad_lines() {
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked";
        let not_http = b"SSH-2.0-OpenSSH_9.2";
        let bad_status = b"HTTP/1.1 2x6 Partial";
        let bad_line = b"HTTP/1.1 206 Partial\r\nno colon here";
        let two_lengths = b"HTTP/1.1 206 Partial\r\ncontent-length: 1\r\ncontent-length: 2";

        let errors = [
            chunked.as_slice(),
            not_http,
            bad_status,
            bad_line,
            two_lengths,
        ]
        .map(|h| parse_head(h).unwrap_err());

        assert!(errors[0].contains("Transfer-Encoding"), "{}", errors[0]);
        assert!(errors[1].contains("not an HTTP"), "{}", errors[1]);
        assert!(errors[2].contains("status line"), "{}", errors[2]);
        assert!(errors[3].contains("header line"), "{}", errors[3]);
        assert!(errors[4].contains("two different"), "{}", errors[4]);
    }

    #[test]
    fn find_head_end_finds_the_blank_line_only() {
        assert_eq!(find_head_end(b"HTTP/1.1 200 OK\r\n\r\nbody"), Some(15));
        assert_eq!(find_head_end(b"HTTP/1.1 200 OK\r\n"), None);
    }
}
