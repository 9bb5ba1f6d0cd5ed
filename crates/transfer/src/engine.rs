//! The transfer engine: moves a disk's extents from a [`DiskSource`] into a write target (an
//! NBD export on the hub), all disks of a VM at once.
//!
//! Per disk: the [`DiskPlan`] gives the extents, [`crate::plan`] cuts them into requests of
//! ≤ 4 MiB on 1 MiB boundaries, and `in_flight` workers each take the next request, read it from
//! the source, cut it into data and zero segments and send them over one of `connections`
//! connections (worker *i* uses connection *i* mod N; the NBD client pipelines requests of
//! several workers on one connection). Reading in some workers overlaps writing in others.
//! Memory is bounded whatever the disk sizes and their number: request buffers come from one
//! [`BufferPool`] shared by every disk of a transfer, so at most `total_buffers` buffers of
//! `request_size` exist at once, e.g. 12 × 4 MiB. The buffers are page-aligned
//! ([`AlignedBuf`]) and travel by ownership: a buffer moves to the source's reading thread (or
//! the NBD reader) and back ([`DiskSource::read_owned`]), then, shared as [`Payload`]s, to the
//! target, which may hand it to a writing thread; a local `O_DIRECT` write (restore) thus
//! costs no extra copy either.
//!
//! Zero runs are found at the block size the target advertises ([`BlockTarget::block_size`],
//! `NBD_INFO_BLOCK_SIZE` of the hub), or [`plan::ZERO_GRANULARITY`] when it advertises none.
//! The data and zero segments of one request go out pipelined on its connection, all at
//! once, and the request is done when every reply is in.
//!
//! A request that fails is retried once on a fresh connection, which then replaces the broken
//! one, unless the failure is final ([`TransferError::is_final`]: a full repository, or a request
//! the server refuses as such); a second failure fails the disk, and the first failing disk fails the transfer (the
//! other workers and disks are dropped). At the end every connection is flushed (FLUSH) and
//! closed; the caller asks the hub to complete the backup only after that.
//!
//! Zeros: in a full backup, all-zero runs are not sent (the new image reads zeros there); in an
//! incremental they are sent as `WRITE_ZEROES` so the overlay masks the parent. An incremental
//! without CBT data sends every allocated extent and `WRITE_ZEROES` for every hole, so it is
//! correct whatever changed.
//!
//! Digests ([`DiskTransfer::digests`], on for backups): the engine records a
//! [`LayerDigests`] per disk from the exact bytes each request read from the [`DiskSource`],
//! before the buffer is cut into segments or sent, and returns it in [`DiskStats::digests`].
//! The plan's extents are first widened to [`sendense_digest::BLOCK_SIZE`] boundaries
//! ([`plan::widen_to_blocks`]), so every request, and every block it records, is whole.
//! Requests of one disk complete out of order: each request's digests are computed on its own
//! (XXH3 hashes 4 MiB in about 0.3 ms) and then inserted into the disk's map under a short
//! lock. A retried request re-sends the bytes already recorded. What is recorded: every block
//! read (zero blocks as zero runs), and for [`DiskPlan::Everything`] every hole zeroed; a
//! full's holes are not recorded (a full's unrecorded blocks read as zeros). Memory: a data
//! block costs 8 bytes, so the digests of a 1 TiB full hold 128 MiB until the caller drops them.
//!
//! Nothing is spawned (STYLE.md §1): workers and disks are futures joined in the caller's task;
//! reads of local files run on tokio's blocking pool.

use std::fmt;
use std::ops::{Deref, Range};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use sendense_digest::{BLOCK_SIZE, LayerDigests};
use sendense_io::{AlignedBuf, BufPool};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::error::TransferError;
use crate::plan::{self, Segment, ZeroPolicy};
use crate::progress::Progress;
use crate::source::{BoxFuture, DiskSource, Extent};
use sendense_io::join::try_join_all;

/// One connection to a write target (an NBD export). Methods take `&self` and may be called
/// concurrently (pipelined).
pub trait BlockTarget: Send + Sync + fmt::Debug {
    /// Writes `data` at `offset`. The target may keep `data` (e.g. move it to a writing
    /// thread) until the write is done; it shares the engine's request buffer, no copy.
    fn write(&self, offset: u64, data: Payload) -> BoxFuture<'_, Result<(), TransferError>>;
    /// Makes `length` bytes at `offset` read as zeros.
    fn write_zeroes(&self, offset: u64, length: u64) -> BoxFuture<'_, Result<(), TransferError>>;
    /// Makes every completed write durable.
    fn flush(&self) -> BoxFuture<'_, Result<(), TransferError>>;
    /// Closes the connection politely (after in-flight requests).
    fn close(self: Arc<Self>) -> BoxFuture<'static, Result<(), TransferError>>;
    /// The block size the target prefers for writes, if it advertised one (an NBD server's
    /// `NBD_INFO_BLOCK_SIZE`): zero runs are detected at this granularity.
    fn block_size(&self) -> Option<u64> {
        None
    }
}

/// Bytes `range` of a shared request buffer: what a [`BlockTarget`] writes. Cloning shares
/// the buffer; the engine takes the buffer back once every write of its request is done.
#[derive(Debug, Clone)]
pub struct Payload {
    buf: Arc<AlignedBuf>,
    range: Range<usize>,
}

impl Payload {
    /// Bytes `range` of `buf`; `None` when `range` is not inside it.
    #[must_use]
    pub fn new(buf: Arc<AlignedBuf>, range: Range<usize>) -> Option<Self> {
        (range.start <= range.end && range.end <= buf.len()).then_some(Self { buf, range })
    }
}

impl Deref for Payload {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[self.range.clone()]
    }
}

/// Opens connections to one write target.
pub trait TargetConnector: Send + Sync + fmt::Debug {
    /// A new connection.
    fn connect(&self) -> BoxFuture<'_, Result<Arc<dyn BlockTarget>, TransferError>>;
}

/// What to send of a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskPlan {
    /// Full backup: the source's allocated extents; zero runs are skipped.
    Full,
    /// Incremental: exactly these changed extents (sorted, merged, inside the disk); zero runs
    /// inside them become `WRITE_ZEROES`.
    Changed(Vec<Extent>),
    /// Incremental without change data: every allocated extent (zero runs as `WRITE_ZEROES`)
    /// and `WRITE_ZEROES` over every hole.
    Everything,
}

/// One disk to transfer.
#[derive(Debug, Clone)]
pub struct DiskTransfer {
    /// VMware disk key.
    pub disk_key: u32,
    /// Where the bytes come from.
    pub source: Arc<dyn DiskSource>,
    /// Where they go.
    pub target: Arc<dyn TargetConnector>,
    /// What to send.
    pub plan: DiskPlan,
    /// Record the digests of the bytes read ([`DiskStats::digests`]; on for backups, off for
    /// restores). Widens the plan's extents to [`BLOCK_SIZE`] boundaries.
    pub digests: bool,
}

/// Tuning of the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferOptions {
    /// Connections per disk (at least 1).
    pub connections: usize,
    /// Requests in flight per disk (at least 1); each holds one buffer of `request_size`.
    pub in_flight: usize,
    /// Largest request in bytes (a multiple of 1 MiB, at most 32 MiB).
    pub request_size: u64,
    /// Request buffers shared by all disks of a transfer (at least 1).
    pub total_buffers: usize,
}

impl Default for TransferOptions {
    fn default() -> Self {
        Self {
            connections: 4,
            in_flight: 8,
            request_size: plan::MAX_REQUEST,
            total_buffers: 12,
        }
    }
}

impl TransferOptions {
    /// Options with `connections` connections and twice as many requests in flight.
    #[must_use]
    pub fn with_connections(connections: usize) -> Self {
        let connections = connections.max(1);
        Self {
            connections,
            in_flight: connections.saturating_mul(2),
            ..Self::default()
        }
    }
}

/// What a disk transfer did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DiskStats {
    /// The disk.
    pub disk_key: u32,
    /// The disk's size.
    pub size: u64,
    /// Bytes sent as WRITE payloads.
    pub bytes_sent: u64,
    /// Bytes covered by WRITE_ZEROES requests.
    pub bytes_zeroed: u64,
    /// Bytes of the plan not sent at all (zero runs of a full).
    pub bytes_zero_skipped: u64,
    /// Bytes the plan covered (read or zeroed).
    pub bytes_planned: u64,
    /// Requests retried on a fresh connection.
    pub retries: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// The digests of the bytes read at the source, when [`DiskTransfer::digests`] asked for
    /// them: every block read, and the holes [`DiskPlan::Everything`] zeroed.
    pub digests: Option<LayerDigests>,
}

impl DiskStats {
    /// Bytes not sent as data: unallocated, unchanged, zero (skipped or `WRITE_ZEROES`).
    #[must_use]
    pub fn bytes_skipped(&self) -> u64 {
        self.size.saturating_sub(self.bytes_sent)
    }
}

/// Transfers every disk at once; the first failure fails all.
///
/// # Errors
/// The first disk's error (see [`transfer_disk`]).
pub async fn transfer_all(
    disks: &[DiskTransfer],
    options: TransferOptions,
    progress: &dyn Progress,
) -> Result<Vec<DiskStats>, TransferError> {
    check_options(options)?;
    let pool = BufferPool::new(options.total_buffers, options.request_size);
    let pool = &pool;
    let futures: Vec<BoxFuture<'_, Result<DiskStats, TransferError>>> = disks
        .iter()
        .map(|d| -> BoxFuture<'_, Result<DiskStats, TransferError>> {
            Box::pin(transfer_disk_in(d, options, progress, pool))
        })
        .collect();
    try_join_all(futures).await
}

/// Request buffers shared by the disks of a transfer: at most `count` exist at once, each
/// page-aligned and sized for the largest request, so that a read fills it in place and a
/// direct (`O_DIRECT`) write can take it as it is.
#[derive(Debug)]
pub struct BufferPool {
    permits: tokio::sync::Semaphore,
    free: BufPool,
    buffer_size: usize,
}

impl BufferPool {
    /// A pool of at most `count` (at least 1) buffers of `buffer_size` bytes, allocated on
    /// first use.
    #[must_use]
    pub fn new(count: usize, buffer_size: u64) -> Self {
        let count = count.max(1);
        Self {
            permits: tokio::sync::Semaphore::new(count),
            free: BufPool::new(count),
            buffer_size: usize::try_from(buffer_size).unwrap_or(usize::MAX),
        }
    }

    /// Waits for a buffer.
    async fn take(&self) -> Result<PooledBuffer<'_>, TransferError> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| TransferError::Interrupted)?;
        let buf = self.free.get(self.buffer_size);
        Ok(PooledBuffer {
            pool: self,
            buf: Some(buf),
            _permit: permit,
        })
    }
}

/// A buffer of a [`BufferPool`], given back when dropped. While a request uses it the buffer
/// is out (`None`); a buffer a cancelled write still holds is not given back, and the pool
/// allocates a fresh one later.
struct PooledBuffer<'a> {
    pool: &'a BufferPool,
    buf: Option<AlignedBuf>,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl Drop for PooledBuffer<'_> {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            self.pool.free.put(buf);
        }
    }
}

/// One unit of work of a disk.
#[derive(Debug, Clone, Copy)]
enum Work {
    /// Read this extent and send its data (and zeros per policy).
    Read(Extent),
    /// A hole to zero without reading.
    Zero(Extent),
}

/// Shared state of one disk's workers.
struct DiskRun<'a> {
    disk: &'a DiskTransfer,
    policy: ZeroPolicy,
    queue: Mutex<Box<dyn Iterator<Item = Work> + Send + 'a>>,
    connections: Mutex<Vec<Arc<dyn BlockTarget>>>,
    progress: &'a dyn Progress,
    pool: &'a BufferPool,
    request_size: u64,
    granularity: u64,
    sent: AtomicU64,
    zeroed: AtomicU64,
    zero_skipped: AtomicU64,
    retries: AtomicU64,
    /// The digests recorded so far, when asked for.
    digests: Option<Mutex<LayerDigests>>,
}

/// Transfers one disk: plan, read, send, retry once on a fresh connection, flush, close.
///
/// # Errors
/// [`TransferError::Source`] when the source fails; the target's error when a request fails
/// twice, a connection cannot be opened, or the flush fails; [`TransferError::InvalidArgument`]
/// for options out of range.
pub async fn transfer_disk(
    disk: &DiskTransfer,
    options: TransferOptions,
    progress: &dyn Progress,
) -> Result<DiskStats, TransferError> {
    check_options(options)?;
    let pool = BufferPool::new(options.total_buffers, options.request_size);
    transfer_disk_in(disk, options, progress, &pool).await
}

async fn transfer_disk_in(
    disk: &DiskTransfer,
    options: TransferOptions,
    progress: &dyn Progress,
    pool: &BufferPool,
) -> Result<DiskStats, TransferError> {
    let span = info_span!("disk", disk_key = disk.disk_key);
    transfer_disk_inner(disk, options, progress, pool)
        .instrument(span)
        .await
}

async fn transfer_disk_inner(
    disk: &DiskTransfer,
    options: TransferOptions,
    progress: &dyn Progress,
    pool: &BufferPool,
) -> Result<DiskStats, TransferError> {
    check_options(options)?;
    let started = Instant::now();
    let size = disk.source.size();
    let (extents, policy) = match &disk.plan {
        DiskPlan::Full => (allocated(disk).await?, ZeroPolicy::Skip),
        DiskPlan::Changed(changed) => (changed.clone(), ZeroPolicy::WriteZeroes),
        DiskPlan::Everything => (allocated(disk).await?, ZeroPolicy::WriteZeroes),
    };
    if let Some(bad) = extents
        .iter()
        .find(|e| e.checked_end().is_none_or(|end| end > size))
    {
        return Err(TransferError::InvalidArgument {
            what: "extent",
            reason: format!(
                "extent at {} of {} bytes passes the disk end ({size} bytes)",
                bad.offset, bad.length
            ),
        });
    }
    // Recorded blocks are read whole.
    let extents = if disk.digests {
        plan::widen_to_blocks(&extents, size, BLOCK_SIZE)
    } else {
        extents
    };
    let holes = match disk.plan {
        DiskPlan::Everything => plan::holes(&extents, size),
        DiskPlan::Full | DiskPlan::Changed(_) => Vec::new(),
    };
    let planned: u64 = extents.iter().chain(&holes).map(|e| e.length).sum();
    info!(
        extents = extents.len(),
        holes = holes.len(),
        planned,
        size,
        "disk transfer starts"
    );
    progress.started(disk.disk_key, planned);

    let mut connections = Vec::with_capacity(options.connections);
    for _ in 0..options.connections {
        connections.push(disk.target.connect().await?);
    }
    let request_size = options.request_size;
    let granularity = plan::zero_granularity(connections.first().and_then(|c| c.block_size()));
    debug!(granularity, "zero detection granularity");
    let work = plan::requests(&extents, request_size, plan::ALIGN)
        .map(Work::Read)
        .chain(holes.iter().copied().map(Work::Zero));
    let run = DiskRun {
        disk,
        policy,
        queue: Mutex::new(Box::new(work)),
        connections: Mutex::new(connections),
        progress,
        pool,
        request_size,
        granularity,
        sent: AtomicU64::new(0),
        zeroed: AtomicU64::new(0),
        zero_skipped: AtomicU64::new(0),
        retries: AtomicU64::new(0),
        digests: disk.digests.then(|| Mutex::new(LayerDigests::new(size))),
    };
    let workers: Vec<BoxFuture<'_, Result<(), TransferError>>> = (0..options.in_flight)
        .map(|i| -> BoxFuture<'_, Result<(), TransferError>> { Box::pin(run.worker(i)) })
        .collect();
    try_join_all(workers).await?;

    let connections = std::mem::take(&mut *run.lock_connections());
    for conn in &connections {
        conn.flush().await?;
    }
    for conn in connections {
        if let Err(e) = conn.close().await {
            debug!(error = %e, "closing a connection failed after the flush");
        }
    }
    progress.finished(disk.disk_key);
    let digests_blocks = run
        .digests
        .as_ref()
        .map(|d| d.lock().unwrap_or_else(PoisonError::into_inner).blocks());
    let stats = DiskStats {
        disk_key: disk.disk_key,
        size,
        bytes_sent: run.sent.load(Ordering::Relaxed),
        bytes_zeroed: run.zeroed.load(Ordering::Relaxed),
        bytes_zero_skipped: run.zero_skipped.load(Ordering::Relaxed),
        bytes_planned: planned,
        retries: run.retries.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
        digests: run
            .digests
            .map(|d| d.into_inner().unwrap_or_else(PoisonError::into_inner)),
    };
    info!(
        bytes_sent = stats.bytes_sent,
        bytes_zeroed = stats.bytes_zeroed,
        bytes_zero_skipped = stats.bytes_zero_skipped,
        retries = stats.retries,
        seconds = stats.seconds,
        digests_blocks,
        "disk transfer done"
    );
    Ok(stats)
}

fn check_options(options: TransferOptions) -> Result<(), TransferError> {
    let bad = |reason: &str| {
        Err(TransferError::InvalidArgument {
            what: "transfer options",
            reason: reason.to_owned(),
        })
    };
    if options.connections == 0 || options.connections > 64 {
        return bad("connections must be 1 to 64");
    }
    if options.in_flight == 0 || options.in_flight > 256 {
        return bad("requests in flight must be 1 to 256");
    }
    if options.total_buffers == 0 || options.total_buffers > 1024 {
        return bad("total buffers must be 1 to 1024");
    }
    if options.request_size == 0
        || !options.request_size.is_multiple_of(plan::ALIGN)
        || options.request_size > 32 << 20
    {
        return bad("request size must be a multiple of 1 MiB, at most 32 MiB");
    }
    Ok(())
}

async fn allocated(disk: &DiskTransfer) -> Result<Vec<Extent>, TransferError> {
    disk.source
        .allocated_extents()
        .await
        .map_err(|e| TransferError::source_failed(disk.disk_key, e))
}

impl DiskRun<'_> {
    fn lock_connections(&self) -> std::sync::MutexGuard<'_, Vec<Arc<dyn BlockTarget>>> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn next_work(&self) -> Option<Work> {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .next()
    }

    fn connection(&self, slot: usize) -> Arc<dyn BlockTarget> {
        let conns = self.lock_connections();
        Arc::clone(&conns[slot % conns.len()])
    }

    async fn worker(&self, index: usize) -> Result<(), TransferError> {
        let capacity = usize::try_from(self.request_size).unwrap_or(usize::MAX);
        while let Some(work) = self.next_work() {
            let extent = match work {
                Work::Read(extent) => {
                    let len = usize::try_from(extent.length)
                        .ok()
                        .filter(|&l| l <= capacity)
                        .ok_or_else(|| TransferError::InvalidArgument {
                            what: "request",
                            reason: format!("request of {} bytes is too large", extent.length),
                        })?;
                    let mut pooled = self.pool.take().await?;
                    let empty = pooled.buf.take().unwrap_or_default();
                    let buf = self
                        .disk
                        .source
                        .read_owned(extent.offset, empty, len)
                        .await
                        .map_err(|e| TransferError::source_failed(self.disk.disk_key, e))?;
                    if buf.len() != len {
                        return Err(TransferError::source_failed(
                            self.disk.disk_key,
                            TransferError::ShortRead {
                                offset: extent.offset,
                            },
                        ));
                    }
                    self.record(extent.offset, Some(&buf[..]), extent.length)?;
                    let segments = plan::segments(&buf, extent.offset, self.granularity);
                    let buf = Arc::new(buf);
                    self.send_with_retry(index, &buf, &segments).await?;
                    // Every write is done: the buffer is ours again, unless a target kept a
                    // share (then the pool makes a new one).
                    pooled.buf = Arc::into_inner(buf);
                    extent
                }
                Work::Zero(extent) => {
                    let segments = [Segment::Zero {
                        offset: extent.offset,
                        length: extent.length,
                    }];
                    let none = Arc::new(AlignedBuf::default());
                    self.send_with_retry(index, &none, &segments).await?;
                    self.record(extent.offset, None, extent.length)?;
                    extent
                }
            };
            self.progress.advanced(self.disk.disk_key, extent.length);
        }
        Ok(())
    }

    /// Records the digests of `length` bytes at `offset`: `bytes` as read at the source, or
    /// zeros (`None`, a hole written as zeros). The digests are computed without the disk's
    /// lock, then inserted under it. Nothing when digests are off.
    fn record(&self, offset: u64, bytes: Option<&[u8]>, length: u64) -> Result<(), TransferError> {
        let Some(all) = &self.digests else {
            return Ok(());
        };
        let failed = |source| TransferError::Digest {
            disk_key: self.disk.disk_key,
            source,
        };
        let size = self.disk.source.size();
        match bytes {
            Some(bytes) => {
                let mut one = LayerDigests::new(size);
                one.record(offset, bytes).map_err(failed)?;
                all.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .overlay(&one)
                    .map_err(failed)
            }
            None => all
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .record_zero(offset, length)
                .map_err(failed),
        }
    }

    async fn send_with_retry(
        &self,
        slot: usize,
        buf: &Arc<AlignedBuf>,
        segments: &[Segment],
    ) -> Result<(), TransferError> {
        let conn = self.connection(slot);
        let Err(first) = self.send(conn.as_ref(), buf, segments).await else {
            return Ok(());
        };
        if first.is_final() {
            return Err(first);
        }
        warn!(error = %first, "request failed; retrying once on a fresh connection");
        self.retries.fetch_add(1, Ordering::Relaxed);
        let fresh = self.disk.target.connect().await.map_err(|_| first)?;
        {
            let mut conns = self.lock_connections();
            let n = conns.len();
            if let Some(entry) = conns.get_mut(slot % n)
                && Arc::ptr_eq(entry, &conn)
            {
                *entry = Arc::clone(&fresh);
            }
        }
        self.send(fresh.as_ref(), buf, segments).await
    }

    /// Sends one request's segments, pipelined: every WRITE and WRITE_ZEROES is issued at
    /// once on `conn`, then all replies are awaited. Counts bytes only when all succeeded.
    async fn send(
        &self,
        conn: &dyn BlockTarget,
        buf: &Arc<AlignedBuf>,
        segments: &[Segment],
    ) -> Result<(), TransferError> {
        let (mut sent, mut zeroed, mut skipped) = (0u64, 0u64, 0u64);
        let mut calls: Vec<BoxFuture<'_, Result<(), TransferError>>> =
            Vec::with_capacity(segments.len());
        for seg in segments {
            match *seg {
                Segment::Data { offset, start, end } => {
                    let payload = Payload::new(Arc::clone(buf), start..end).ok_or_else(|| {
                        TransferError::InvalidArgument {
                            what: "segment",
                            reason: format!("{start}..{end} is outside the request buffer"),
                        }
                    })?;
                    calls.push(conn.write(offset, payload));
                    sent += (end - start) as u64;
                }
                Segment::Zero { offset, length } => match self.policy {
                    ZeroPolicy::Skip => skipped += length,
                    ZeroPolicy::WriteZeroes => {
                        calls.push(conn.write_zeroes(offset, length));
                        zeroed += length;
                    }
                },
            }
        }
        try_join_all(calls).await?;
        self.sent.fetch_add(sent, Ordering::Relaxed);
        self.zeroed.fetch_add(zeroed, Ordering::Relaxed);
        self.zero_skipped.fetch_add(skipped, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::{NoProgress, ProgressCounters};
    use crate::source::MemorySource;
    use sendense_nbd::NbdError;
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    const MIB: usize = 1 << 20;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Op {
        Write(u64, u64),
        Zero(u64, u64),
        Flush,
    }

    /// An in-memory write target shared by all its connections.
    #[derive(Debug)]
    struct Recorder {
        data: Mutex<Vec<u8>>,
        ops: Mutex<Vec<Op>>,
        in_flight: AtomicUsize,
        max_in_flight: AtomicUsize,
        calls: AtomicUsize,
        max_calls: AtomicUsize,
        block_size: Mutex<Option<u64>>,
        unaligned_writes: AtomicUsize,
        failures_left: AtomicUsize,
        failures_are_full: AtomicBool,
        connects: AtomicUsize,
    }

    impl Recorder {
        fn new(initial: Vec<u8>) -> Arc<Self> {
            Arc::new(Self {
                data: Mutex::new(initial),
                ops: Mutex::new(Vec::new()),
                in_flight: AtomicUsize::new(0),
                max_in_flight: AtomicUsize::new(0),
                calls: AtomicUsize::new(0),
                max_calls: AtomicUsize::new(0),
                block_size: Mutex::new(None),
                unaligned_writes: AtomicUsize::new(0),
                failures_left: AtomicUsize::new(0),
                failures_are_full: AtomicBool::new(false),
                connects: AtomicUsize::new(0),
            })
        }

        fn ops(&self) -> Vec<Op> {
            self.ops.lock().unwrap().clone()
        }

        fn data(&self) -> Vec<u8> {
            self.data.lock().unwrap().clone()
        }

        async fn op(&self, op: Op, payload: &[u8]) -> Result<(), TransferError> {
            // Data writes are what buffers bound; zeroes and flushes hold none.
            let counted = matches!(op, Op::Write(..));
            if counted {
                let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            }
            // Every call, whatever its kind: how many are in flight at once.
            let now = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_calls.fetch_max(now, Ordering::SeqCst);
            tokio::task::yield_now().await;
            self.calls.fetch_sub(1, Ordering::SeqCst);
            if counted {
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
            }
            let fail = self
                .failures_left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if fail && self.failures_are_full.load(Ordering::SeqCst) {
                return Err(TransferError::HubFull {
                    operation: "write",
                    target: "fake".into(),
                });
            }
            if fail {
                return Err(TransferError::Nbd {
                    operation: "write",
                    target: "fake".into(),
                    source: NbdError::Closed,
                });
            }
            let mut data = self.data.lock().unwrap();
            match op {
                Op::Write(off, len) => {
                    let off = usize::try_from(off).unwrap();
                    let len = usize::try_from(len).unwrap();
                    data[off..off + len].copy_from_slice(payload);
                }
                Op::Zero(off, len) => {
                    let off = usize::try_from(off).unwrap();
                    let len = usize::try_from(len).unwrap();
                    data[off..off + len].fill(0);
                }
                Op::Flush => {}
            }
            self.ops.lock().unwrap().push(op);
            Ok(())
        }
    }

    #[derive(Debug)]
    struct FakeConn(Arc<Recorder>);

    impl BlockTarget for FakeConn {
        fn write(&self, offset: u64, data: Payload) -> BoxFuture<'_, Result<(), TransferError>> {
            Box::pin(async move {
                if !sendense_io::is_direct_aligned(&data, offset) {
                    self.0.unaligned_writes.fetch_add(1, Ordering::SeqCst);
                }
                self.0.op(Op::Write(offset, data.len() as u64), &data).await
            })
        }

        fn write_zeroes(
            &self,
            offset: u64,
            length: u64,
        ) -> BoxFuture<'_, Result<(), TransferError>> {
            Box::pin(self.0.op(Op::Zero(offset, length), &[]))
        }

        fn flush(&self) -> BoxFuture<'_, Result<(), TransferError>> {
            Box::pin(self.0.op(Op::Flush, &[]))
        }

        fn close(self: Arc<Self>) -> BoxFuture<'static, Result<(), TransferError>> {
            Box::pin(async { Ok(()) })
        }

        fn block_size(&self) -> Option<u64> {
            *self.0.block_size.lock().unwrap()
        }
    }

    #[derive(Debug)]
    struct FakeConnector(Arc<Recorder>);

    impl TargetConnector for FakeConnector {
        fn connect(&self) -> BoxFuture<'_, Result<Arc<dyn BlockTarget>, TransferError>> {
            self.0.connects.fetch_add(1, Ordering::SeqCst);
            let conn: Arc<dyn BlockTarget> = Arc::new(FakeConn(Arc::clone(&self.0)));
            Box::pin(async move { Ok(conn) })
        }
    }

    /// 8 MiB: MiB 0 data, MiB 1 zero, MiB 2..4 data, rest zero.
    fn disk() -> Vec<u8> {
        let mut d = vec![0u8; 8 * MIB];
        for (i, b) in d[..MIB].iter_mut().enumerate() {
            *b = u8::try_from(i % 249).unwrap() | 1;
        }
        for (i, b) in d[2 * MIB..4 * MIB].iter_mut().enumerate() {
            *b = u8::try_from(i % 241).unwrap() | 2;
        }
        d
    }

    fn job(source: MemorySource, rec: &Arc<Recorder>, plan: DiskPlan) -> DiskTransfer {
        DiskTransfer {
            disk_key: 2000,
            source: Arc::new(source),
            target: Arc::new(FakeConnector(Arc::clone(rec))),
            plan,
            digests: false,
        }
    }

    fn opts(connections: usize, in_flight: usize) -> TransferOptions {
        TransferOptions {
            connections,
            in_flight,
            request_size: 1 << 20,
            total_buffers: 16,
        }
    }

    #[tokio::test]
    async fn transfer_full_sends_data_and_skips_zeros() {
        let rec = Recorder::new(vec![0u8; 8 * MIB]);
        let src = MemorySource::new(disk()).with_allocated(vec![Extent::new(0, 4 << 20)]);
        let progress = ProgressCounters::default();

        let stats = transfer_disk(&job(src, &rec, DiskPlan::Full), opts(2, 4), &progress)
            .await
            .unwrap();

        assert_eq!(rec.data(), disk());
        assert!(!rec.ops().iter().any(|op| matches!(op, Op::Zero(..))));
        assert_eq!(stats.bytes_sent, 3 << 20);
        assert_eq!(stats.bytes_zero_skipped, 1 << 20);
        assert_eq!(stats.bytes_skipped(), 5 << 20);
        assert_eq!(progress.snapshot()[&2000].done, 4 << 20);
    }

    #[tokio::test]
    async fn transfer_incremental_zero_run_becomes_write_zeroes() {
        let rec = Recorder::new(vec![0xAAu8; 8 * MIB]);
        let src = MemorySource::new(disk());
        let changed = vec![Extent::new(512 << 10, 1 << 20), Extent::new(6 << 20, 4096)];

        let stats = transfer_disk(
            &job(src, &rec, DiskPlan::Changed(changed)),
            opts(1, 2),
            &NoProgress,
        )
        .await
        .unwrap();

        let got = rec.data();
        let want = disk();
        assert_eq!(
            got[512 << 10..(3 << 20) / 2],
            want[512 << 10..(3 << 20) / 2]
        );
        assert_eq!(
            got[6 << 20..(6 << 20) + 4096],
            want[6 << 20..(6 << 20) + 4096]
        );
        assert!(
            got[..512 << 10].iter().all(|&b| b == 0xAA),
            "outside the extents is untouched"
        );
        assert!(got[(6 << 20) + 4096..].iter().all(|&b| b == 0xAA));
        assert!(rec.ops().contains(&Op::Zero(1 << 20, 512 << 10)));
        assert!(rec.ops().contains(&Op::Zero(6 << 20, 4096)));
        assert_eq!(stats.bytes_sent, 512 << 10);
        assert_eq!(stats.bytes_zeroed, (512 << 10) + 4096);
    }

    #[tokio::test]
    async fn transfer_everything_zeroes_holes() {
        let rec = Recorder::new(vec![0xAAu8; 8 * MIB]);
        let src = MemorySource::new(disk()).with_allocated(vec![Extent::new(0, 4 << 20)]);

        let stats = transfer_disk(
            &job(src, &rec, DiskPlan::Everything),
            opts(2, 2),
            &NoProgress,
        )
        .await
        .unwrap();

        assert_eq!(rec.data(), disk());
        assert!(rec.ops().contains(&Op::Zero(4 << 20, 4 << 20)));
        assert_eq!(stats.bytes_planned, 8 << 20);
    }

    #[tokio::test]
    async fn transfer_in_flight_stays_bounded() {
        let rec = Recorder::new(vec![0u8; 8 * MIB]);
        let src = MemorySource::new(vec![7u8; 8 * MIB]);

        transfer_disk(&job(src, &rec, DiskPlan::Full), opts(2, 3), &NoProgress)
            .await
            .unwrap();

        let max = rec.max_in_flight.load(Ordering::SeqCst);
        assert!((1..=3).contains(&max), "max in flight {max}");
    }

    #[tokio::test]
    async fn transfer_all_buffers_bound_in_flight_across_disks() {
        let rec = Recorder::new(vec![0u8; 8 * MIB]);
        let mut b = job(MemorySource::new(vec![5u8; 8 * MIB]), &rec, DiskPlan::Full);
        b.disk_key = 2001;
        let jobs = [
            job(MemorySource::new(vec![5u8; 8 * MIB]), &rec, DiskPlan::Full),
            b,
        ];
        let options = TransferOptions {
            total_buffers: 2,
            ..opts(2, 4)
        };

        transfer_all(&jobs, options, &NoProgress).await.unwrap();

        let max = rec.max_in_flight.load(Ordering::SeqCst);
        assert!(
            max <= 2,
            "two buffers allow two requests in flight, saw {max}"
        );
        assert_eq!(rec.data(), vec![5u8; 8 * MIB]);
    }

    #[tokio::test]
    async fn transfer_failed_request_is_retried_on_fresh_connection() {
        let rec = Recorder::new(vec![0u8; 8 * MIB]);
        rec.failures_left.store(1, Ordering::SeqCst);
        let src = MemorySource::new(disk());

        let stats = transfer_disk(&job(src, &rec, DiskPlan::Full), opts(2, 2), &NoProgress)
            .await
            .unwrap();

        assert_eq!(stats.retries, 1);
        assert_eq!(rec.connects.load(Ordering::SeqCst), 3);
        assert_eq!(rec.data(), disk());
    }

    #[tokio::test]
    async fn transfer_full_repository_fails_at_once_without_retry() {
        let rec = Recorder::new(vec![0u8; 8 * MIB]);
        rec.failures_left.store(1, Ordering::SeqCst);
        rec.failures_are_full.store(true, Ordering::SeqCst);
        let src = MemorySource::new(disk());

        let err = transfer_disk(&job(src, &rec, DiskPlan::Full), opts(2, 1), &NoProgress)
            .await
            .unwrap_err();

        assert!(matches!(err, TransferError::HubFull { .. }), "{err:?}");
        assert!(err.is_final());
        assert!(err.to_string().contains("DATA/repository"), "{err}");
        assert_eq!(
            rec.connects.load(Ordering::SeqCst),
            2,
            "no fresh connection"
        );
        assert!(!rec.ops().contains(&Op::Flush), "no flush after a failure");
    }

    #[test]
    fn is_final_only_for_refusals_and_a_full_repository() {
        use sendense_nbd::wire::Errno;
        let nbd = |source| TransferError::Nbd {
            operation: "write",
            target: "t".into(),
            source,
        };
        let request = |errno| nbd(NbdError::Request { errno });
        assert!(request(Errno::NoSpc).is_final());
        assert!(request(Errno::Perm).is_final());
        assert!(request(Errno::Inval).is_final());
        assert!(!request(Errno::Io).is_final());
        assert!(!request(Errno::Shutdown).is_final());
        assert!(!nbd(NbdError::Closed).is_final());
    }

    #[tokio::test]
    async fn transfer_request_failing_twice_fails_the_disk() {
        let rec = Recorder::new(vec![0u8; 8 * MIB]);
        rec.failures_left.store(2, Ordering::SeqCst);
        let src = MemorySource::new(disk());

        let err = transfer_disk(&job(src, &rec, DiskPlan::Full), opts(1, 1), &NoProgress)
            .await
            .unwrap_err();

        assert!(matches!(err, TransferError::Nbd { .. }), "{err:?}");
        assert!(!rec.ops().contains(&Op::Flush), "no flush after a failure");
    }

    #[tokio::test]
    async fn transfer_ends_with_a_flush_per_connection() {
        let rec = Recorder::new(vec![0u8; 8 * MIB]);
        let src = MemorySource::new(disk());

        transfer_disk(&job(src, &rec, DiskPlan::Full), opts(3, 4), &NoProgress)
            .await
            .unwrap();

        let ops = rec.ops();
        assert_eq!(ops.iter().filter(|op| **op == Op::Flush).count(), 3);
        assert_eq!(ops[ops.len() - 3..], [Op::Flush, Op::Flush, Op::Flush]);
    }

    #[tokio::test]
    async fn transfer_writes_are_at_least_one_mib_where_extents_allow() {
        let rec = Recorder::new(vec![0u8; 8 * MIB]);
        let src = MemorySource::new(vec![1u8; 8 * MIB]);
        let options = TransferOptions {
            request_size: 4 << 20,
            ..opts(1, 2)
        };

        transfer_disk(&job(src, &rec, DiskPlan::Full), options, &NoProgress)
            .await
            .unwrap();

        let writes: Vec<Op> = rec
            .ops()
            .into_iter()
            .filter(|o| matches!(o, Op::Write(..)))
            .collect();
        assert_eq!(writes.len(), 2);
        assert!(
            writes
                .iter()
                .all(|o| matches!(o, Op::Write(_, len) if *len == 4 << 20))
        );
    }

    #[tokio::test]
    async fn transfer_all_two_disks_both_arrive() {
        let rec_a = Recorder::new(vec![0u8; 8 * MIB]);
        let rec_b = Recorder::new(vec![0u8; 8 * MIB]);
        let mut b = job(
            MemorySource::new(vec![5u8; 8 * MIB]),
            &rec_b,
            DiskPlan::Full,
        );
        b.disk_key = 2001;
        let jobs = [job(MemorySource::new(disk()), &rec_a, DiskPlan::Full), b];

        let stats = transfer_all(&jobs, opts(2, 2), &NoProgress).await.unwrap();

        assert_eq!(stats.len(), 2);
        assert_eq!(rec_a.data(), disk());
        assert_eq!(rec_b.data(), vec![5u8; 8 * MIB]);
    }

    #[tokio::test]
    async fn transfer_extent_past_end_is_refused() {
        let rec = Recorder::new(vec![0u8; 8 * MIB]);
        let plan = DiskPlan::Changed(vec![Extent::new(8 << 20, 512)]);

        let err = transfer_disk(
            &job(MemorySource::new(disk()), &rec, plan),
            opts(1, 1),
            &NoProgress,
        )
        .await
        .unwrap_err();

        assert!(
            matches!(err, TransferError::InvalidArgument { .. }),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn transfer_zero_connections_is_refused() {
        let rec = Recorder::new(vec![0u8; 8 * MIB]);

        let err = transfer_disk(
            &job(MemorySource::new(disk()), &rec, DiskPlan::Full),
            opts(0, 1),
            &NoProgress,
        )
        .await
        .unwrap_err();

        assert!(
            matches!(err, TransferError::InvalidArgument { .. }),
            "{err:?}"
        );
    }

    /// 1 MiB of 64 KiB blocks alternating data and zeros.
    fn striped() -> Vec<u8> {
        let mut d = vec![0u8; MIB];
        for block in d.chunks_mut(64 << 10).step_by(2) {
            block.fill(9);
        }
        d
    }

    #[tokio::test]
    async fn transfer_segments_of_one_request_go_out_pipelined() {
        let rec = Recorder::new(vec![0xAAu8; MIB]);
        let changed = vec![Extent::new(0, MIB as u64)];
        let job = job(
            MemorySource::new(striped()),
            &rec,
            DiskPlan::Changed(changed),
        );

        // One connection, one request in flight: only pipelining puts two calls in flight.
        let stats = transfer_disk(&job, opts(1, 1), &NoProgress).await.unwrap();

        assert_eq!(rec.data(), striped());
        let ops = rec.ops();
        assert_eq!(ops.iter().filter(|o| matches!(o, Op::Write(..))).count(), 8);
        assert_eq!(ops.iter().filter(|o| matches!(o, Op::Zero(..))).count(), 8);
        assert_eq!(stats.bytes_sent, MIB as u64 / 2);
        assert_eq!(stats.bytes_zeroed, MIB as u64 / 2);
        let max = rec.max_calls.load(Ordering::SeqCst);
        assert_eq!(
            max, 16,
            "all 16 segments of the request in flight at once, saw {max}"
        );
    }

    #[tokio::test]
    async fn transfer_zero_scan_uses_the_targets_block_size() {
        // MiB 0: data except one zero 4 KiB block at 8 KiB.
        let mut want = vec![3u8; MIB];
        want[8 << 10..12 << 10].fill(0);
        let rec = Recorder::new(vec![0xAAu8; MIB]);
        *rec.block_size.lock().unwrap() = Some(4096);
        let changed = vec![Extent::new(0, MIB as u64)];
        let job = job(
            MemorySource::new(want.clone()),
            &rec,
            DiskPlan::Changed(changed),
        );

        let stats = transfer_disk(&job, opts(1, 1), &NoProgress).await.unwrap();

        assert_eq!(rec.data(), want);
        let mut ops = rec.ops();
        ops.sort_by_key(|o| match *o {
            Op::Write(off, _) | Op::Zero(off, _) => off,
            Op::Flush => u64::MAX,
        });
        assert_eq!(
            ops,
            [
                Op::Write(0, 8 << 10),
                Op::Zero(8 << 10, 4 << 10),
                Op::Write(12 << 10, MIB as u64 - (12 << 10)),
                Op::Flush,
            ]
        );
        assert_eq!(stats.bytes_zeroed, 4 << 10);
    }

    #[tokio::test]
    async fn transfer_zero_scan_without_advertised_block_size_uses_64_kib() {
        let mut want = vec![3u8; MIB];
        want[8 << 10..12 << 10].fill(0);
        let rec = Recorder::new(vec![0xAAu8; MIB]);
        let changed = vec![Extent::new(0, MIB as u64)];
        let job = job(
            MemorySource::new(want.clone()),
            &rec,
            DiskPlan::Changed(changed),
        );

        let stats = transfer_disk(&job, opts(1, 1), &NoProgress).await.unwrap();

        assert_eq!(rec.data(), want);
        assert_eq!(stats.bytes_zeroed, 0, "a 4 KiB zero run is below 64 KiB");
        assert_eq!(stats.bytes_sent, MIB as u64);
    }

    // ----------------------------------------------------------- digests

    const BLOCK: u64 = BLOCK_SIZE;

    fn digest_job(source: MemorySource, rec: &Arc<Recorder>, plan: DiskPlan) -> DiskTransfer {
        DiskTransfer {
            digests: true,
            ..job(source, rec, plan)
        }
    }

    /// Checks `got` block by block against a recomputation from the source bytes `src`: a
    /// block any of `read` touches holds the digest of its bytes (zeros as zero), a block only
    /// `zeroed` touches is zero, every other block is unrecorded.
    fn assert_digests(got: &LayerDigests, src: &[u8], read: &[Extent], zeroed: &[Extent]) {
        let size = src.len() as u64;
        assert_eq!(got.disk_size(), size);
        let touches = |b: u64, es: &[Extent]| {
            es.iter()
                .any(|e| e.length > 0 && e.offset < (b + 1) * BLOCK && e.end() > b * BLOCK)
        };
        for b in 0..sendense_digest::block_count(size) {
            let start = usize::try_from(b * BLOCK).unwrap();
            let end = usize::try_from(((b + 1) * BLOCK).min(size)).unwrap();
            let want = if touches(b, read) {
                Some(sendense_digest::BlockDigest::of(&src[start..end]))
            } else if touches(b, zeroed) {
                Some(sendense_digest::BlockDigest::Zero)
            } else {
                None
            };
            assert_eq!(got.get(b), want, "block {b}");
        }
    }

    #[tokio::test]
    async fn digests_of_a_full_match_the_source_blocks_read_whole() {
        let rec = Recorder::new(vec![0u8; 8 * MIB]);
        // Unaligned allocated extents: widened to [0, 4 MiB), MiB 1 (zeros) inside.
        let allocated = vec![
            Extent::new(4096, (2 << 20) - 8192),
            Extent::new((2 << 20) + 100, (2 << 20) - 200),
        ];
        let src = MemorySource::new(disk()).with_allocated(allocated);

        let stats = transfer_disk(
            &digest_job(src, &rec, DiskPlan::Full),
            opts(3, 6),
            &NoProgress,
        )
        .await
        .unwrap();

        let digests = stats.digests.expect("digests asked for");
        assert_digests(&digests, &disk(), &[Extent::new(0, 4 << 20)], &[]);
        assert_eq!(digests.blocks(), 64, "4 MiB read, 64 blocks");
        assert_eq!(rec.data(), disk());
        assert_eq!(stats.bytes_planned, 4 << 20, "the widened extents");
        assert_eq!(stats.bytes_sent, 3 << 20);
        assert!(!rec.ops().iter().any(|op| matches!(op, Op::Zero(..))));
    }

    #[tokio::test]
    async fn digests_of_changed_areas_widen_them_to_blocks_and_record_zero_runs() {
        let rec = Recorder::new(vec![0xAAu8; 8 * MIB]);
        let changed = vec![
            Extent::new((512 << 10) + 100, 1 << 20),
            Extent::new((6 << 20) + 10, 4096),
        ];
        let widened = [
            Extent::new(512 << 10, (1 << 20) + BLOCK),
            Extent::new(6 << 20, BLOCK),
        ];
        let src = MemorySource::new(disk());

        let stats = transfer_disk(
            &digest_job(src, &rec, DiskPlan::Changed(changed)),
            opts(2, 4),
            &NoProgress,
        )
        .await
        .unwrap();

        let want = disk();
        let got = rec.data();
        for w in &widened {
            let (a, b) = (
                usize::try_from(w.offset).unwrap(),
                usize::try_from(w.end()).unwrap(),
            );
            assert_eq!(got[a..b], want[a..b], "widened area {w:?} sent whole");
        }
        assert!(got[..512 << 10].iter().all(|&b| b == 0xAA));
        let after = usize::try_from(widened[0].end()).unwrap();
        assert!(got[after..6 << 20].iter().all(|&b| b == 0xAA));
        assert!(got[(6 << 20) + (64 << 10)..].iter().all(|&b| b == 0xAA));
        let digests = stats.digests.expect("digests asked for");
        assert_digests(&digests, &want, &widened, &[]);
        // MiB 1 and the block at 6 MiB are zeros: recorded as zeros, sent as WRITE_ZEROES.
        assert_eq!(
            digests.get(1 << 4),
            Some(sendense_digest::BlockDigest::Zero)
        );
        assert_eq!(stats.bytes_zeroed, (512 << 10) + BLOCK + BLOCK);
    }

    #[tokio::test]
    async fn digests_of_everything_record_holes_as_zeros() {
        let rec = Recorder::new(vec![0xAAu8; 8 * MIB]);
        let src = MemorySource::new(disk()).with_allocated(vec![Extent::new(100, (4 << 20) - 200)]);

        let stats = transfer_disk(
            &digest_job(src, &rec, DiskPlan::Everything),
            opts(2, 3),
            &NoProgress,
        )
        .await
        .unwrap();

        assert_eq!(rec.data(), disk());
        assert!(rec.ops().contains(&Op::Zero(4 << 20, 4 << 20)));
        let digests = stats.digests.expect("digests asked for");
        assert_digests(
            &digests,
            &disk(),
            &[Extent::new(0, 4 << 20)],
            &[Extent::new(4 << 20, 4 << 20)],
        );
        assert_eq!(digests.blocks(), 128, "every block recorded");
    }

    #[tokio::test]
    async fn digests_of_a_retried_request_are_recorded_once_and_right() {
        let rec = Recorder::new(vec![0u8; 8 * MIB]);
        rec.failures_left.store(1, Ordering::SeqCst);
        let src = MemorySource::new(disk());
        let clean = Recorder::new(vec![0u8; 8 * MIB]);

        let stats = transfer_disk(
            &digest_job(src.clone(), &rec, DiskPlan::Full),
            opts(2, 2),
            &NoProgress,
        )
        .await
        .unwrap();
        let reference = transfer_disk(
            &digest_job(src, &clean, DiskPlan::Full),
            opts(1, 1),
            &NoProgress,
        )
        .await
        .unwrap();

        assert!(stats.retries >= 1, "a request was retried");
        assert_eq!(rec.data(), disk());
        let digests = stats.digests.expect("digests asked for");
        assert_digests(&digests, &disk(), &[Extent::new(0, 8 << 20)], &[]);
        assert_eq!(Some(digests), reference.digests);
    }

    #[tokio::test]
    async fn digests_of_a_disk_ending_inside_a_block_cover_the_short_block() {
        let size = (1 << 20) + 4096 + 512;
        let mut bytes = vec![0u8; size];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::try_from(i % 253).unwrap();
        }
        let rec = Recorder::new(vec![0xAAu8; size]);
        let changed = vec![Extent::new(size as u64 - 100, 100)];

        let stats = transfer_disk(
            &digest_job(
                MemorySource::new(bytes.clone()),
                &rec,
                DiskPlan::Changed(changed),
            ),
            opts(1, 1),
            &NoProgress,
        )
        .await
        .unwrap();

        let tail = Extent::new(1 << 20, 4096 + 512);
        assert_eq!(rec.data()[1 << 20..], bytes[1 << 20..]);
        assert!(rec.data()[..1 << 20].iter().all(|&b| b == 0xAA));
        assert_digests(&stats.digests.expect("digests"), &bytes, &[tail], &[]);
    }

    #[tokio::test]
    async fn transfer_without_digests_records_none_and_sends_only_the_extents() {
        let rec = Recorder::new(vec![0xAAu8; 8 * MIB]);
        let changed = vec![Extent::new((512 << 10) + 100, 4096)];

        let stats = transfer_disk(
            &job(MemorySource::new(disk()), &rec, DiskPlan::Changed(changed)),
            opts(1, 1),
            &NoProgress,
        )
        .await
        .unwrap();

        assert!(stats.digests.is_none());
        assert_eq!(stats.bytes_planned, 4096);
        assert!(rec.data()[..(512 << 10) + 100].iter().all(|&b| b == 0xAA));
    }

    #[test]
    fn payload_outside_its_buffer_is_refused() {
        let buf = Arc::new(AlignedBuf::zeroed(4096));

        assert!(Payload::new(Arc::clone(&buf), 0..4097).is_none());
        assert_eq!(Payload::new(buf, 4000..4096).unwrap().len(), 96);
    }

    #[tokio::test]
    async fn transfer_writes_share_page_aligned_request_buffers() {
        // Aligned extents, 64 KiB data runs: every write can go out with O_DIRECT as it is.
        let rec = Recorder::new(vec![0u8; 8 * MIB]);
        let src = MemorySource::new(disk()).with_allocated(vec![Extent::new(0, 4 << 20)]);

        transfer_disk(&job(src, &rec, DiskPlan::Full), opts(2, 4), &NoProgress)
            .await
            .unwrap();

        assert_eq!(rec.data(), disk());
        assert!(rec.ops().iter().any(|o| matches!(o, Op::Write(..))));
        assert_eq!(rec.unaligned_writes.load(Ordering::SeqCst), 0);
    }
}
