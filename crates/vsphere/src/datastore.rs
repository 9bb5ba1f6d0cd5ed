//! Datastore file reads over vCenter's `/folder` HTTP interface.
//!
//! `GET https://HOST/folder/<path>?dcPath=<datacenter>&dsName=<datastore>` with
//! `Range: bytes=a-b` answers `206 Partial Content`. Reads are split into pages of at most
//! [`crate::ConnectOptions::max_read_bytes`], at most
//! [`crate::ConnectOptions::max_reads_in_flight`] in flight per session (a semaphore),
//! and every answer's `Content-Range` and length are checked. HTTP 503 (ESXi rate limiting)
//! is retried with exponential back-off a bounded number of times; an expired session (401)
//! logs in again once.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use reqwest::header::{CONTENT_RANGE, COOKIE, RANGE};
use tracing::warn;

use crate::error::VsphereError;
use crate::session::{Session, http_error};

/// A datastore path `[datastore] folder/file.vmdk`, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatastorePath {
    /// Datastore name.
    pub datastore: String,
    /// Path inside the datastore.
    pub path: String,
}

impl DatastorePath {
    /// Parse `[datastore] folder/file`.
    ///
    /// # Errors
    /// [`VsphereError::DatastorePath`] when the shape is wrong or the path escapes (`..`).
    pub fn parse(s: &str) -> Result<Self, VsphereError> {
        let bad = || VsphereError::DatastorePath { path: s.to_owned() };
        let rest = s.strip_prefix('[').ok_or_else(bad)?;
        let (ds, path) = rest.split_once(']').ok_or_else(bad)?;
        let path = path.trim_start();
        if ds.is_empty()
            || path.is_empty()
            || path.starts_with('/')
            || path.split('/').any(|seg| seg.is_empty() || seg == "..")
        {
            return Err(bad());
        }
        Ok(Self {
            datastore: ds.to_owned(),
            path: path.to_owned(),
        })
    }

    /// The flat extent of a descriptor `x.vmdk`: `x-flat.vmdk`.
    ///
    /// # Errors
    /// [`VsphereError::DatastorePath`] when the name does not end in `.vmdk`.
    pub fn flat_extent(&self) -> Result<Self, VsphereError> {
        let stem = self
            .path
            .strip_suffix(".vmdk")
            .ok_or_else(|| VsphereError::DatastorePath {
                path: self.path.clone(),
            })?;
        Ok(Self {
            datastore: self.datastore.clone(),
            path: format!("{stem}-flat.vmdk"),
        })
    }
}

impl std::fmt::Display for DatastorePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}", self.datastore, self.path)
    }
}

/// A file on a datastore, readable by ranges.
#[derive(Debug, Clone)]
pub struct DatastoreFile {
    session: Session,
    url: String,
    name: String,
}

impl DatastoreFile {
    /// A file of the datacenter `dc_path`.
    #[must_use]
    pub fn new(session: Session, dc_path: &str, file: &DatastorePath) -> Self {
        let url = format!(
            "{}/folder/{}?dcPath={}&dsName={}",
            session.base(),
            encode(&file.path, true),
            encode(dc_path, false),
            encode(&file.datastore, false)
        );
        Self {
            session,
            url,
            name: file.to_string(),
        }
    }

    pub(crate) fn session(&self) -> &Session {
        &self.session
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The file, `[ds] folder/file`.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Fill `buf` from `offset`, in pages, several in flight.
    ///
    /// # Errors
    /// HTTP errors, [`VsphereError::ContentRange`], [`VsphereError::DatastoreBusy`].
    pub async fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), VsphereError> {
        let page = self.session.options().max_read_bytes.max(512);
        let mut futures = Vec::new();
        let mut at = offset;
        for chunk in buf.chunks_mut(page) {
            let len = chunk.len() as u64;
            futures.push(Box::pin(self.read_page(at, chunk)));
            at = at.checked_add(len).ok_or(VsphereError::ReadOutOfRange {
                offset,
                length: len,
                capacity: u64::MAX,
            })?;
        }
        JoinAll { futures }.await
    }

    async fn read_page(&self, offset: u64, buf: &mut [u8]) -> Result<(), VsphereError> {
        if buf.is_empty() {
            return Ok(());
        }
        let _permit = self.session.read_slots().acquire().await.map_err(|_| {
            VsphereError::UnexpectedResponse {
                what: "read semaphore closed",
            }
        })?;
        let opts = self.session.options();
        let mut delay = opts.busy_backoff;
        let mut relogged = false;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let seen = self.session.generation();
            match self.try_read(offset, buf).await? {
                Attempt::Done => return Ok(()),
                Attempt::Unauthorized if !relogged => {
                    relogged = true;
                    self.session.relogin(seen).await?;
                }
                Attempt::Unauthorized => {
                    return Err(VsphereError::HttpStatus {
                        call: "datastore read",
                        status: 401,
                    });
                }
                Attempt::Busy if attempt < opts.busy_attempts => {
                    warn!(file = %self.name, offset, attempt, ?delay, "datastore busy (HTTP 503); backing off");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
                Attempt::Busy => {
                    return Err(VsphereError::DatastoreBusy {
                        path: self.name.clone(),
                        attempts: attempt,
                    });
                }
            }
        }
    }

    async fn try_read(&self, offset: u64, buf: &mut [u8]) -> Result<Attempt, VsphereError> {
        const CALL: &str = "datastore read";
        let timeout = self.session.options().request_timeout;
        let len = buf.len() as u64;
        let last =
            offset
                .checked_add(len.saturating_sub(1))
                .ok_or(VsphereError::ReadOutOfRange {
                    offset,
                    length: len,
                    capacity: u64::MAX,
                })?;
        let mut req = self
            .session
            .http()
            .get(&self.url)
            .header(RANGE, format!("bytes={offset}-{last}"));
        if let Some(c) = self.session.cookie() {
            req = req.header(COOKIE, c);
        }
        let mut resp = req.send().await.map_err(|e| http_error(e, CALL, timeout))?;
        let content_range = resp
            .headers()
            .get(CONTENT_RANGE)
            .map(|v| v.as_bytes().to_vec());
        match judge_range_answer(
            &self.name,
            resp.status().as_u16(),
            content_range.as_deref(),
            offset,
            len,
        )? {
            RangeAnswer::Data => {}
            RangeAnswer::Busy => return Ok(Attempt::Busy),
            RangeAnswer::Unauthorized => return Ok(Attempt::Unauthorized),
        }
        let mut body = RangeBody::new(&self.name, offset, buf, content_range.as_deref());
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| http_error(e, CALL, timeout))?
        {
            body.push(&chunk)?;
        }
        body.finish()?;
        Ok(Attempt::Done)
    }
}

enum Attempt {
    Done,
    Busy,
    Unauthorized,
}

/// What a `/folder` answer to a Range read means (see [`judge_range_answer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// 206 with the `Content-Range` asked for: read the body.
    Data,
    /// 503: ESXi rate limiting, back off and retry.
    Busy,
    /// 401: the session expired, log in again.
    Unauthorized,
}

/// Judges vCenter's answer to `GET /folder/...` with `Range: bytes=OFFSET-LAST` (`LAST` =
/// `offset + length - 1`) from its status and `Content-Range` header, which must start with
/// `bytes OFFSET-LAST/`. Pure, so the `vsphere_folder` fuzz target can drive it.
///
/// # Errors
/// [`VsphereError::HttpStatus`] for another status; [`VsphereError::ContentRange`] for a 206
/// answering another range (or none); [`VsphereError::ReadOutOfRange`] for an empty or
/// overflowing request.
pub fn judge_range_answer(
    path: &str,
    status: u16,
    content_range: Option<&[u8]>,
    offset: u64,
    length: u64,
) -> Result<RangeAnswer, VsphereError> {
    match status {
        206 => {}
        503 => return Ok(RangeAnswer::Busy),
        401 => return Ok(RangeAnswer::Unauthorized),
        status => {
            return Err(VsphereError::HttpStatus {
                call: "datastore read",
                status,
            });
        }
    }
    let last = length
        .checked_sub(1)
        .and_then(|l| offset.checked_add(l))
        .ok_or(VsphereError::ReadOutOfRange {
            offset,
            length,
            capacity: u64::MAX,
        })?;
    let answered = content_range.and_then(|v| std::str::from_utf8(v).ok());
    let expected = format!("bytes {offset}-{last}/");
    if answered.is_some_and(|a| a.starts_with(&expected)) {
        Ok(RangeAnswer::Data)
    } else {
        Err(range_error(path, offset, length, content_range))
    }
}

fn range_error(path: &str, offset: u64, length: u64, answered: Option<&[u8]>) -> VsphereError {
    VsphereError::ContentRange {
        path: path.to_owned(),
        offset,
        length,
        answered: answered.map(|a| String::from_utf8_lossy(a).chars().take(200).collect()),
    }
}

/// The body of a `/folder` Range answer, copied chunk by chunk into the caller's buffer: more or
/// fewer bytes than asked is [`VsphereError::ContentRange`]. Pure (fuzzed with
/// [`judge_range_answer`]).
#[derive(Debug)]
pub struct RangeBody<'a> {
    path: &'a str,
    offset: u64,
    buf: &'a mut [u8],
    filled: usize,
    answered: Option<&'a [u8]>,
}

impl<'a> RangeBody<'a> {
    /// An empty body for the read of `buf.len()` bytes at `offset` of `path`; `answered` is
    /// the `Content-Range` header, for error messages.
    pub fn new(path: &'a str, offset: u64, buf: &'a mut [u8], answered: Option<&'a [u8]>) -> Self {
        Self {
            path,
            offset,
            buf,
            filled: 0,
            answered,
        }
    }

    fn error(&self) -> VsphereError {
        range_error(self.path, self.offset, self.buf.len() as u64, self.answered)
    }

    /// Appends one chunk of the body.
    ///
    /// # Errors
    /// [`VsphereError::ContentRange`] when the body grows past the length asked.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), VsphereError> {
        let end = self
            .filled
            .checked_add(chunk.len())
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| self.error())?;
        self.buf[self.filled..end].copy_from_slice(chunk);
        self.filled = end;
        Ok(())
    }

    /// Ends the body.
    ///
    /// # Errors
    /// [`VsphereError::ContentRange`] when it is shorter than asked.
    pub fn finish(self) -> Result<(), VsphereError> {
        if self.filled == self.buf.len() {
            Ok(())
        } else {
            Err(self.error())
        }
    }
}

/// Percent-encode for a URL path (`keep_slash`) or query value.
fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let keep = b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || (keep_slash && b == b'/');
        if keep {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Poll several futures to completion concurrently (no spawning); the first error wins and
/// drops the others.
struct JoinAll<F: Future> {
    futures: Vec<Pin<Box<F>>>,
}

impl<F: Future<Output = Result<(), VsphereError>>> Future for JoinAll<F> {
    type Output = Result<(), VsphereError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let mut i = 0;
        while i < this.futures.len() {
            match this.futures[i].as_mut().poll(cx) {
                Poll::Ready(Err(e)) => {
                    this.futures.clear();
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(())) => drop(this.futures.swap_remove(i)),
                Poll::Pending => i += 1,
            }
        }
        if this.futures.is_empty() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judge_range_answer_statuses_and_ranges() {
        let ok = judge_range_answer("f", 206, Some(b"bytes 512-1023/4096"), 512, 512);
        let other = judge_range_answer("f", 206, Some(b"bytes 0-511/4096"), 512, 512);
        let missing = judge_range_answer("f", 206, None, 512, 512);
        let busy = judge_range_answer("f", 503, None, 0, 512);
        let expired = judge_range_answer("f", 401, None, 0, 512);
        let empty = judge_range_answer("f", 206, Some(b"bytes 0--1/1"), 0, 0);
        let overflow = judge_range_answer("f", 206, None, u64::MAX, 2);
        let refused = judge_range_answer("f", 200, None, 0, 512);

        assert_eq!(ok.unwrap(), RangeAnswer::Data);
        assert!(matches!(other, Err(VsphereError::ContentRange { .. })));
        assert!(matches!(
            missing,
            Err(VsphereError::ContentRange { answered: None, .. })
        ));
        assert_eq!(busy.unwrap(), RangeAnswer::Busy);
        assert_eq!(expired.unwrap(), RangeAnswer::Unauthorized);
        assert!(matches!(empty, Err(VsphereError::ReadOutOfRange { .. })));
        assert!(matches!(overflow, Err(VsphereError::ReadOutOfRange { .. })));
        assert!(matches!(
            refused,
            Err(VsphereError::HttpStatus { status: 200, .. })
        ));
    }

    #[test]
    fn range_body_refuses_short_and_long_bodies() {
        let mut buf = [0u8; 4];
        let mut long = RangeBody::new("f", 0, &mut buf, None);
        long.push(b"abc").unwrap();
        assert!(long.push(b"de").is_err());
        let mut buf = [0u8; 4];
        let mut short = RangeBody::new("f", 0, &mut buf, None);
        short.push(b"abc").unwrap();
        assert!(short.finish().is_err());
        let mut buf = [0u8; 4];
        let mut exact = RangeBody::new("f", 0, &mut buf, None);
        exact.push(b"ab").unwrap();
        exact.push(b"cd").unwrap();
        exact.finish().unwrap();
        assert_eq!(&buf, b"abcd");
    }

    #[test]
    fn datastore_path_flat_extent_maps_name() {
        let p = DatastorePath::parse("[ds1] vm1/vm1.vmdk").unwrap();
        assert_eq!(
            p.flat_extent().unwrap(),
            DatastorePath {
                datastore: "ds1".into(),
                path: "vm1/vm1-flat.vmdk".into()
            }
        );
    }

    #[test]
    fn datastore_path_dotdot_is_rejected() {
        assert!(DatastorePath::parse("[ds1] vm1/../etc/passwd").is_err());
    }

    #[test]
    fn datastore_path_without_brackets_is_rejected() {
        assert!(DatastorePath::parse("ds1 vm1/vm1.vmdk").is_err());
    }

    #[test]
    fn encode_query_value_escapes_specials() {
        assert_eq!(encode("dc 1/a&b", false), "dc%201%2Fa%26b");
    }
}
