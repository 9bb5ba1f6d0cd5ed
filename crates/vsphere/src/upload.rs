//! Disk uploads over vCenter's `/folder` interface: `PUT` of a whole flat extent.
//!
//! # Why `/folder` PUT and not an NFC lease
//! A restore creates the VM (or the new disks) with vCenter first, so vCenter makes each disk's
//! descriptor, geometry and provisioning (thin, thick lazy, thick eager) itself; the agent then
//! writes the disk's bytes into its flat extent (`<disk>-flat.vmdk`) with one HTTP `PUT` whose
//! `Content-Length` is the whole capacity. That is the interface backups already read through
//! (same session cookie, same TLS trust, no VDDK), and it needs no stream-optimized VMDK
//! encoder, no OVF descriptor and no lease keep-alive, which an NFC import (`ImportVApp`,
//! `HttpNfcLease`) would. The cost: the body carries every byte of the disk, zeros included
//! (the holes of the point are sent as zeros without being read), where an NFC stream would
//! skip them; and the flat file must not be locked, so disks go into powered-off VMs only.
//!
//! # Streaming
//! The body is produced as hyper asks for it: the disk is cut into chunks
//! ([`UploadOptions::chunk_bytes`]), up to [`UploadOptions::read_ahead`] of them are read from
//! the [`DiskSource`] at once while earlier ones are sent (nothing is spawned: the reads are
//! futures polled by the body), and chunks that the source's allocation map says are holes are
//! sent from one shared zero buffer without being read. Consecutive data chunks are read
//! together, up to [`UploadOptions::read_bytes`] per read, into page-aligned buffers taken
//! from a pool (each comes back once the connection has sent its last chunk), so the server
//! answers as large requests as the restore engine's and no chunk allocates or zeroes fresh
//! memory. Memory stays at `chunk_bytes × read_ahead` whatever the disk's size. Progress is
//! reported per chunk handed to the connection.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, COOKIE};
use sendense_io::BufPool;
use sendense_transfer::progress::Progress;
use sendense_transfer::{DiskSource, Extent, TransferError};
use tracing::{info, warn};

use crate::datastore::DatastoreFile;
use crate::error::VsphereError;
use crate::session::http_error;

/// Tuning of an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadOptions {
    /// Bytes handed to the connection as one frame; holes are found at this granularity.
    pub chunk_bytes: usize,
    /// Bytes asked of the source in one read, at most: consecutive chunks that are not holes
    /// are read together (fewer, larger requests for the server) and sent chunk by chunk.
    pub read_bytes: usize,
    /// Chunks read ahead of the one being sent (memory: this many chunks).
    pub read_ahead: usize,
    /// The slowest rate an upload may average before it times out, in bytes per second (the
    /// request's time limit is the session's request timeout plus the capacity at this rate).
    pub min_bytes_per_second: u64,
}

impl Default for UploadOptions {
    /// 1 MiB chunks read 4 MiB at a time (the restore engine's request size), 24 read ahead
    /// (24 MiB in memory), at least 1 MiB/s. Against the simulator, 1 MiB frames uploaded
    /// 550 MB/s where 4 MiB ones did 400 MB/s and 16 MiB ones 310 MB/s: smaller frames keep
    /// the TLS writer and the reads overlapping.
    fn default() -> Self {
        Self {
            chunk_bytes: 1024 * 1024,
            read_bytes: 4 * 1024 * 1024,
            read_ahead: 24,
            min_bytes_per_second: 1024 * 1024,
        }
    }
}

type ChunkRead = Pin<Box<dyn Future<Output = Result<Bytes, TransferError>> + Send>>;

enum Slot {
    Ready(Bytes),
    Reading(ChunkRead),
}

struct BodyState {
    source: Arc<dyn DiskSource>,
    size: u64,
    chunk: u64,
    next: u64,
    allocated: Vec<Extent>,
    /// Reads and chunks in order; a finished read holds one or more chunks.
    window: VecDeque<Slot>,
    /// Chunks the window holds or reads.
    queued: usize,
    read_ahead: usize,
    /// Chunks per read, at most.
    per_read: usize,
    /// Chunk buffers: one comes back when the connection has sent its chunk, so reads after
    /// the first window neither allocate nor zero fresh memory.
    pool: BufPool,
    zeros: Bytes,
    sent: u64,
    /// A read failed: the body ends in an error.
    failed: bool,
}

/// The PUT body: the disk, in order, read ahead (see the module docs).
struct UploadBody {
    state: Mutex<BodyState>,
    disk_key: u32,
    progress: Arc<dyn Progress>,
    failure: Arc<Mutex<Option<TransferError>>>,
    sent: Arc<AtomicU64>,
}

impl BodyState {
    fn is_hole(&self, offset: u64, len: u64) -> bool {
        let end = offset.saturating_add(len);
        !self
            .allocated
            .iter()
            .any(|e| e.offset < end && e.offset.saturating_add(e.length) > offset)
    }

    fn fill(&mut self) {
        while self.queued < self.read_ahead && self.next < self.size {
            let offset = self.next;
            let first = self.chunk.min(self.size - offset);
            if self.is_hole(offset, first) {
                let Ok(ulen) = usize::try_from(first) else {
                    return;
                };
                self.next = offset + first;
                self.queued += 1;
                self.window.push_back(Slot::Ready(self.zeros.slice(..ulen)));
            } else {
                // The chunks that follow, while they are data and the window has room.
                let (mut len, mut chunks) = (first, 1);
                while chunks < self.per_read
                    && self.queued + chunks < self.read_ahead
                    && offset + len < self.size
                {
                    let more = self.chunk.min(self.size - offset - len);
                    if self.is_hole(offset + len, more) {
                        break;
                    }
                    len += more;
                    chunks += 1;
                }
                let Ok(ulen) = usize::try_from(len) else {
                    return;
                };
                self.next = offset + len;
                self.queued += chunks;
                let source = Arc::clone(&self.source);
                let mut loan = self.pool.take(ulen);
                self.window.push_back(Slot::Reading(Box::pin(async move {
                    let buf = std::mem::take(&mut *loan);
                    *loan = source.read_owned(offset, buf, ulen).await?;
                    Ok(Bytes::from_owner(loan))
                })));
            }
        }
    }
}

impl BodyState {
    /// Polls every read in flight, keeping those done.
    fn poll_reads(&mut self, cx: &mut Context<'_>) -> Result<(), TransferError> {
        for slot in &mut self.window {
            if let Slot::Reading(read) = slot
                && let Poll::Ready(r) = read.as_mut().poll(cx)
            {
                // A finished read is never polled again, failed or not.
                *slot = Slot::Ready(Bytes::new());
                match r {
                    Ok(bytes) => *slot = Slot::Ready(bytes),
                    Err(e) => {
                        self.failed = true;
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }
}

impl http_body::Body for UploadBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        // Start every read the window has room for, then poll them all: a read's request goes
        // out on its first poll, so new reads are polled at once, not on hyper's next call.
        if st.failed {
            return Poll::Ready(Some(Err(std::io::Error::other("reading the disk failed"))));
        }
        st.fill();
        if let Err(e) = st.poll_reads(cx) {
            let message = e.to_string();
            if let Ok(mut f) = self.failure.lock() {
                f.get_or_insert(e);
            }
            return Poll::Ready(Some(Err(std::io::Error::other(message))));
        }
        if !matches!(st.window.front(), Some(Slot::Ready(_))) {
            return if st.window.is_empty() {
                Poll::Ready(None)
            } else {
                Poll::Pending
            };
        }
        let chunk = usize::try_from(st.chunk).unwrap_or(usize::MAX);
        let bytes = match st.window.front_mut() {
            // A read of several chunks goes out chunk by chunk (slices of its buffer).
            Some(Slot::Ready(b)) if b.len() > chunk => b.split_to(chunk),
            _ => match st.window.pop_front() {
                Some(Slot::Ready(b)) => b,
                _ => return Poll::Ready(None),
            },
        };
        st.queued = st.queued.saturating_sub(1);
        let len = bytes.len() as u64;
        st.sent += len;
        self.sent.fetch_add(len, Ordering::Relaxed);
        self.progress.advanced(self.disk_key, len);
        st.fill();
        if let Err(e) = st.poll_reads(cx) {
            // Reported on the next call; this chunk is good.
            if let Ok(mut f) = self.failure.lock() {
                f.get_or_insert(e);
            }
        }
        Poll::Ready(Some(Ok(Frame::data(bytes))))
    }

    fn is_end_stream(&self) -> bool {
        let st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.sent >= st.size
    }

    fn size_hint(&self) -> SizeHint {
        let st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        SizeHint::with_exact(st.size - st.sent.min(st.size))
    }
}

impl DatastoreFile {
    /// Writes the whole of `source` into this file with one `PUT` (see the module docs); the
    /// bytes sent. `disk_key` names the disk in `progress`. A session that expired before the
    /// body started is logged in again and the upload redone once.
    ///
    /// # Errors
    /// [`VsphereError::UploadSource`] when reading the source failed; HTTP errors and
    /// [`VsphereError::HttpStatus`] for an answer other than 200 or 201.
    pub async fn upload(
        &self,
        source: &Arc<dyn DiskSource>,
        disk_key: u32,
        options: &UploadOptions,
        progress: &Arc<dyn Progress>,
    ) -> Result<u64, VsphereError> {
        const CALL: &str = "datastore upload";
        let size = source.size();
        let allocated = source
            .allocated_extents()
            .await
            .map_err(|e| self.source_error(e))?;
        let opts = self.session().options();
        let limit =
            opts.request_timeout + Duration::from_secs(size / options.min_bytes_per_second.max(1));
        let chunk = options.chunk_bytes.clamp(4096, 64 * 1024 * 1024);
        progress.started(disk_key, size);
        let mut relogged = false;
        loop {
            let seen = self.session().generation();
            let failure = Arc::new(Mutex::new(None));
            let sent = Arc::new(AtomicU64::new(0));
            let body = UploadBody {
                state: Mutex::new(BodyState {
                    source: Arc::clone(source),
                    size,
                    chunk: chunk as u64,
                    next: 0,
                    allocated: allocated.clone(),
                    window: VecDeque::new(),
                    queued: 0,
                    read_ahead: options.read_ahead.max(1),
                    per_read: (options.read_bytes / chunk).max(1),
                    pool: BufPool::new(options.read_ahead.max(1) + 2),
                    zeros: Bytes::from(vec![0u8; chunk]),
                    sent: 0,
                    failed: false,
                }),
                disk_key,
                progress: Arc::clone(progress),
                failure: Arc::clone(&failure),
                sent: Arc::clone(&sent),
            };
            let mut req = self
                .session()
                .http()
                .put(self.url())
                .timeout(limit)
                .header(CONTENT_LENGTH, size)
                .header(CONTENT_TYPE, "application/octet-stream")
                .body(reqwest::Body::wrap(body));
            if let Some(c) = self.session().cookie() {
                req = req.header(COOKIE, c);
            }
            let answer = req.send().await;
            let source_failure = failure.lock().ok().and_then(|mut f| f.take());
            if let Some(e) = source_failure {
                return Err(self.source_error(e));
            }
            let resp = answer.map_err(|e| http_error(e, CALL, limit))?;
            match resp.status().as_u16() {
                200 | 201 => {
                    let bytes = sent.load(Ordering::Relaxed);
                    progress.finished(disk_key);
                    info!(file = %self.name(), bytes, "disk uploaded");
                    return Ok(bytes);
                }
                401 if !relogged => {
                    warn!(file = %self.name(), "vCenter session expired before the upload; logging in again");
                    relogged = true;
                    self.session().relogin(seen).await?;
                }
                status => return Err(VsphereError::HttpStatus { call: CALL, status }),
            }
        }
    }

    fn source_error(&self, e: TransferError) -> VsphereError {
        VsphereError::UploadSource {
            path: self.name().to_owned(),
            source: Box::new(e),
        }
    }
}
