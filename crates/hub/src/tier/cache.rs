//! Points that live only in a bucket, read in place: by range, through a bounded local cache.
//!
//! A restore export, an instant recovery or the file browser opens an evicted point's chain
//! with a [`LayerSource`] ([`Tier::layers_for`]): each layer whose file the repository no
//! longer holds is read from the bucket of a target with a verified copy of its point, as a
//! read-only [`Storage`] ([`BucketLayer`]). A read asks for the sealed chunks (1 MiB of
//! plaintext each, see [`sendense_tier::seal`]) that cover it: chunks in the cache are read
//! from there; the others are fetched with ranged GETs (neighbouring chunks in one request,
//! the requests of one read at once), each opened (authenticated: a chunk altered in the
//! store, moved from another object or from another place fails to open and the read fails
//! with `EIO`), copied into the caller's buffer and kept in the cache.
//!
//! **A large, streaming read** (a restore, a download: at least one chunk long) keeps nothing
//! in that cache, which would only push out what small reads come back to. It fetches whole
//! windows of [`super::PART_CHUNKS`] chunks, aligned as the copy uploaded its parts (a store
//! then reads whole stored blocks, not two halves), starts the next [`PREFETCH_WINDOWS`]
//! windows in the background, and keeps the sealed windows (at most [`READ_AHEAD_WINDOWS`]
//! per layer, in memory) for the reads that follow; a read that needs a window being fetched
//! waits for it (at most [`AHEAD_WAIT`], then fetches it itself). A chunk it uses whole is
//! opened straight into the caller's buffer.
//!
//! **The cache** ([`ChunkCache`], `DATA/tier-cache/`, emptied at each start) holds decrypted
//! chunks in one sparse file per object, at most `--tier-cache-mib` MiB in all: when a new
//! chunk does not fit, the chunks read least recently are dropped (their range punched out
//! of the file) first; a chunk being read is never dropped under its reader. Two readers
//! missing the same chunk fetch it once (the second waits for the first). The cache holds
//! plaintext of the disks, as the repository does: same folder, same owner, mode 0600.
//!
//! Nothing is written to the repository: the point stays evicted, and `POST
//! /api/v1/backups/{id}/fetch` still brings its files back whole when an administrator wants
//! them local again.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::hash::{Hash as _, Hasher as _};
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use sendense_qcow2::{LayerSource, Storage};
use sendense_tier::seal::{HEADER_LEN, Header, ObjectCipher};
use sendense_tier::{MasterKey, layout};
use sendense_types::BackupId;

use super::store::Bucket;
use super::{BUCKET_PREFIX, Tier};
use crate::error::HubError;

/// The cache folder inside the data folder.
pub const CACHE_DIR: &str = "tier-cache";
/// Default bound of the cache, in MiB (`--tier-cache-mib`).
pub const DEFAULT_CACHE_MIB: u64 = 4096;
/// Most chunks one GET of a small read asks for (a read of more chunks sends several GETs at
/// once).
const RUN_CHUNKS: u64 = 4;
/// Chunks a streaming read fetches together: one uploaded part ([`super::PART_CHUNKS`]),
/// aligned as the copy uploaded it, so that a GET asks the store for whole parts (Garage, for
/// one, then reads and checks exactly the blocks it stored, not a neighbour's too).
const WINDOW_CHUNKS: u64 = super::PART_CHUNKS;
/// Windows a streaming read fetches ahead of itself, in the background.
const PREFETCH_WINDOWS: u64 = 2;
/// Windows of sealed chunks a layer holds for the streaming reads that follow (the oldest go
/// first): at most this many times [`WINDOW_CHUNKS`] chunks in memory per layer.
const READ_AHEAD_WINDOWS: usize = 6;
/// Longest a streaming read waits for a window another read or the read-ahead is fetching
/// before it fetches the window itself.
const AHEAD_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// Locks that keep two readers from fetching the same chunk (by hash of object and chunk):
/// enough that readers of different chunks (a restore has 8 reads of up to 4 chunks in
/// flight) rarely share one and wait for each other's fetch.
const STRIPES: usize = 4096;

/// The bounded cache of decrypted chunks (see the module docs). Share one (in an `Arc`).
pub struct ChunkCache {
    dir: PathBuf,
    capacity: u64,
    state: Mutex<CacheState>,
    fetching: Vec<Mutex<()>>,
    /// The runtime the fetches run on: its own, so a read can wait for one from any thread
    /// (a blocking-pool thread, a runtime's worker, a plain thread) without starving it.
    io: IoRuntime,
}

/// A small runtime of its own, shut down without waiting when dropped (even in async code).
struct IoRuntime(Option<tokio::runtime::Runtime>);

impl IoRuntime {
    fn handle(&self) -> Option<tokio::runtime::Handle> {
        self.0.as_ref().map(|rt| rt.handle().clone())
    }
}

impl Drop for IoRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl std::fmt::Debug for ChunkCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkCache")
            .field("dir", &self.dir)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct CacheState {
    /// The sparse file of each object (by cache key: target and object name).
    files: HashMap<Arc<str>, Arc<File>>,
    chunks: HashMap<(Arc<str>, u64), Entry>,
    /// Chunks by last use, oldest first.
    lru: BTreeMap<u64, (Arc<str>, u64)>,
    used: u64,
    tick: u64,
}

struct Entry {
    tick: u64,
    len: u64,
    /// Readers copying it out now: never dropped meanwhile.
    pins: u32,
}

impl ChunkCache {
    /// An empty cache in `dir` (whatever an earlier run left there is removed) holding at most
    /// `capacity` bytes.
    ///
    /// # Errors
    /// The folder cannot be emptied or made.
    pub fn open(dir: &Path, capacity: u64) -> Result<Self, HubError> {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(HubError::io(dir, e)),
        }
        {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| HubError::io(dir, e))?;
        }
        let io = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tier-io")
            .enable_all()
            .build()
            .map_err(|e| HubError::io(dir, e))?;
        Ok(Self {
            dir: dir.to_owned(),
            capacity,
            state: Mutex::new(CacheState::default()),
            fetching: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            io: IoRuntime(Some(io)),
        })
    }

    /// The handle of the runtime fetches run on.
    fn io(&self) -> Result<tokio::runtime::Handle, HubError> {
        self.io.handle().ok_or(HubError::Worker)
    }

    /// Bytes held now.
    #[must_use]
    pub fn used(&self) -> u64 {
        self.state().used
    }

    fn state(&self) -> MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Copies bytes `within` of chunk `index` of `object` (chunks of `chunk` bytes) into
    /// `dst`, when the cache holds that chunk; answers whether it did.
    fn read(
        &self,
        object: &Arc<str>,
        index: u64,
        chunk: u64,
        within: u64,
        dst: &mut [u8],
    ) -> io::Result<bool> {
        let file = {
            let mut st = self.state();
            let key = (Arc::clone(object), index);
            let Some(entry) = st.chunks.get(&key) else {
                return Ok(false);
            };
            let old = entry.tick;
            st.tick += 1;
            let tick = st.tick;
            if let Some(entry) = st.chunks.get_mut(&key) {
                entry.tick = tick;
                entry.pins += 1;
            }
            st.lru.remove(&old);
            st.lru.insert(tick, key);
            st.files.get(object).cloned()
        };
        let read = match &file {
            Some(file) => file.read_exact_at(dst, index * chunk + within),
            None => Err(io::Error::other("cache file of a cached chunk is missing")),
        };
        let mut st = self.state();
        if let Some(entry) = st.chunks.get_mut(&(Arc::clone(object), index)) {
            entry.pins -= 1;
        }
        read.map(|()| true)
    }

    /// Keeps chunk `index` of `object` (chunks of `chunk` bytes), dropping the least recently
    /// read chunks to make room; keeps nothing when it cannot (the read still succeeds).
    fn insert(&self, object: &Arc<str>, index: u64, chunk: u64, plain: &[u8]) {
        if let Err(e) = self.try_insert(object, index, chunk, plain) {
            tracing::warn!(object = %object, error = %e, "cannot keep a chunk in the object tier cache");
        }
    }

    fn try_insert(
        &self,
        object: &Arc<str>,
        index: u64,
        chunk: u64,
        plain: &[u8],
    ) -> io::Result<()> {
        let len = plain.len() as u64;
        if len > self.capacity {
            return Ok(());
        }
        let key = (Arc::clone(object), index);
        let file = {
            let mut st = self.state();
            if st.chunks.contains_key(&key) {
                return Ok(());
            }
            let mut victims = Vec::new();
            let mut freed = 0;
            for (tick, k) in &st.lru {
                if st.used + len - freed <= self.capacity {
                    break;
                }
                if let Some(e) = st.chunks.get(k).filter(|e| e.pins == 0) {
                    victims.push(*tick);
                    freed += e.len;
                }
            }
            if st.used + len - freed > self.capacity {
                return Ok(());
            }
            for tick in victims {
                let Some(k) = st.lru.remove(&tick) else {
                    continue;
                };
                if let Some(e) = st.chunks.remove(&k) {
                    st.used -= e.len;
                    if let Some(f) = st.files.get(&k.0) {
                        sendense_io::sparse::punch_hole(f, k.1 * chunk, e.len)?;
                    }
                }
            }
            // Room is reserved before the bytes are written, and the chunk is readable only
            // once they are.
            st.used += len;
            match st.files.get(object) {
                Some(f) => Arc::clone(f),
                None => {
                    let path = self.dir.join(format!("{:016x}", st.files.len()));
                    let f = Arc::new(cache_file(&path)?);
                    st.files.insert(Arc::clone(object), Arc::clone(&f));
                    f
                }
            }
        };
        let written = file.write_all_at(plain, index * chunk);
        let mut st = self.state();
        if let Err(e) = written {
            st.used -= len;
            return Err(e);
        }
        st.tick += 1;
        let tick = st.tick;
        st.lru.insert(tick, key.clone());
        st.chunks.insert(key, Entry { tick, len, pins: 0 });
        Ok(())
    }

    /// The fetch locks of `indices` of `object`, taken in one order (no deadlock).
    fn lock_fetches(&self, object: &str, indices: &[u64]) -> Vec<MutexGuard<'_, ()>> {
        let mut stripes: Vec<usize> = indices
            .iter()
            .map(|i| {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                object.hash(&mut h);
                i.hash(&mut h);
                usize::try_from(h.finish() % STRIPES as u64).unwrap_or(0)
            })
            .collect();
        stripes.sort_unstable();
        stripes.dedup();
        stripes
            .into_iter()
            .filter_map(|s| self.fetching.get(s))
            .map(|m| m.lock().unwrap_or_else(PoisonError::into_inner))
            .collect()
    }
}

fn cache_file(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// One sealed object read by range as a read-only layer.
pub(crate) struct BucketLayer {
    bucket: Bucket,
    name: String,
    /// The cache's key of this object: its target, name and salt.
    key: Arc<str>,
    header: Header,
    cipher: Arc<ObjectCipher>,
    cache: Arc<ChunkCache>,
    handle: tokio::runtime::Handle,
    /// Sealed chunks of whole windows fetched for streaming reads.
    ahead: Arc<ReadAhead>,
}

/// The windows a layer's streaming reads fetched (sealed chunks, kept until the window is
/// pushed out), and the windows being fetched now (a read that needs one waits for it).
#[derive(Default)]
struct ReadAhead {
    state: Mutex<AheadState>,
    ready: std::sync::Condvar,
}

#[derive(Default)]
struct AheadState {
    /// Fetched windows, oldest first: each window's index and its chunks' sealed bytes.
    windows: std::collections::VecDeque<(u64, Vec<(u64, bytes::Bytes)>)>,
    /// Windows being fetched.
    pending: std::collections::HashSet<u64>,
}

impl AheadState {
    fn get(&self, index: u64) -> Option<bytes::Bytes> {
        let w = index / WINDOW_CHUNKS;
        let (_, chunks) = self.windows.iter().find(|(v, _)| *v == w)?;
        chunks
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, b)| b.clone())
    }

    fn holds_window(&self, w: u64) -> bool {
        self.pending.contains(&w) || self.windows.iter().any(|(v, _)| *v == w)
    }
}

impl ReadAhead {
    fn state(&self) -> MutexGuard<'_, AheadState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ends the fetch of `windows`: keeps `chunks` (none when it failed), wakes the waiters.
    fn settle(&self, windows: &[u64], chunks: &[(u64, bytes::Bytes)]) {
        let mut st = self.state();
        for &w in windows {
            st.pending.remove(&w);
            let held: Vec<_> = chunks
                .iter()
                .filter(|(i, _)| i / WINDOW_CHUNKS == w)
                .cloned()
                .collect();
            if !held.is_empty() {
                st.windows.retain(|(v, _)| *v != w);
                st.windows.push_back((w, held));
            }
        }
        while st.windows.len() > READ_AHEAD_WINDOWS {
            st.windows.pop_front();
        }
        drop(st);
        self.ready.notify_all();
    }
}

/// Settles windows still pending when dropped (a fetch that failed or panicked): the readers
/// waiting for them fetch them themselves.
struct Pending<'a> {
    ahead: &'a ReadAhead,
    windows: Vec<u64>,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.windows.is_empty() {
            self.ahead.settle(&self.windows, &[]);
        }
    }
}

impl std::fmt::Debug for BucketLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BucketLayer")
            .field("key", &self.key)
            .field("plain_len", &self.header.plain_len())
            .finish_non_exhaustive()
    }
}

impl BucketLayer {
    /// Opens object `name` of `bucket` (reads and checks its header).
    fn open(
        bucket: Bucket,
        name: String,
        key: &MasterKey,
        cache: Arc<ChunkCache>,
        handle: tokio::runtime::Handle,
    ) -> Result<Self, HubError> {
        let head = {
            let (bucket, name) = (bucket.clone(), name.clone());
            run(&handle, async move {
                bucket.get_range(&name, 0..HEADER_LEN as u64).await
            })?
        };
        let tier = |source| HubError::Tier {
            object: name.clone(),
            source,
        };
        let header = Header::decode(&head).map_err(tier)?;
        let cipher = ObjectCipher::new(key, header, &name).map_err(tier)?;
        Ok(Self {
            // The salt is fresh at each upload: an object uploaded again under the same
            // name (a point merged by a prune, copied again) never reads stale chunks.
            key: format!(
                "{}/{name}/{}",
                bucket.target(),
                sendense_tier::seal::hex(&header.salt())
            )
            .into(),
            bucket,
            name,
            header,
            cipher: Arc::new(cipher),
            cache,
            handle,
            ahead: Arc::default(),
        })
    }

    /// Fetches the sealed bytes of chunks `indices` (ascending), neighbours in one GET (a GET
    /// never crosses a multiple of `align` chunks), the GETs at once; answers each chunk's
    /// sealed bytes (not opened yet).
    fn fetch(&self, indices: &[u64], align: u64) -> Result<Vec<(u64, bytes::Bytes)>, HubError> {
        run(
            &self.handle,
            fetch_chunks(
                self.bucket.clone(),
                self.name.clone(),
                self.header,
                indices.to_vec(),
                align,
            ),
        )
    }

    fn tier(&self, source: sendense_tier::TierError) -> HubError {
        HubError::Tier {
            object: self.name.clone(),
            source,
        }
    }

    /// The chunks of `windows` (ascending windows give ascending chunks).
    fn window_chunks(&self, windows: &[u64]) -> Vec<u64> {
        let count = self.header.chunk_count();
        windows
            .iter()
            .flat_map(|&w| w * WINDOW_CHUNKS..((w + 1) * WINDOW_CHUNKS).min(count))
            .collect()
    }

    /// Starts fetching windows `windows` (already marked pending) in the background.
    fn prefetch(&self, windows: Vec<u64>) {
        if windows.is_empty() {
            return;
        }
        let indices = self.window_chunks(&windows);
        let ahead = Arc::clone(&self.ahead);
        let fetch = fetch_chunks(
            self.bucket.clone(),
            self.name.clone(),
            self.header,
            indices,
            WINDOW_CHUNKS,
        );
        let key = Arc::clone(&self.key);
        self.handle.spawn(async move {
            let pending = Pending {
                ahead: &ahead,
                windows,
            };
            match fetch.await {
                Ok(chunks) => {
                    let mut pending = pending;
                    let windows = std::mem::take(&mut pending.windows);
                    ahead.settle(&windows, &chunks);
                }
                Err(e) => {
                    tracing::debug!(object = %key, error = %sendense_io::error_chain(&e), "read-ahead from the bucket failed (the reads fetch for themselves)");
                }
            }
        });
    }

    /// A streaming read's chunks `missing` (ascending, none in the cache): from the windows
    /// fetched ahead, waiting for those being fetched, fetching the rest as whole windows
    /// (kept for the reads that follow); and the next windows started in the background.
    fn streaming_chunks(
        &self,
        missing: &[u64],
        last: u64,
    ) -> Result<Vec<(u64, bytes::Bytes)>, HubError> {
        let count = self.header.chunk_count();
        let windows = count.div_ceil(WINDOW_CHUNKS);
        let mut found = Vec::with_capacity(missing.len());
        let mut own = Vec::new();
        let mut prefetch = Vec::new();
        {
            let mut st = self.ahead.state();
            for &i in missing {
                let w = i / WINDOW_CHUNKS;
                let deadline = std::time::Instant::now() + AHEAD_WAIT;
                loop {
                    if let Some(sealed) = st.get(i) {
                        found.push((i, sealed));
                        break;
                    }
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    if !st.pending.contains(&w) || left.is_zero() {
                        if !own.contains(&w) {
                            own.push(w);
                        }
                        break;
                    }
                    st = self
                        .ahead
                        .ready
                        .wait_timeout(st, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
            for &w in &own {
                st.pending.insert(w);
            }
            let next = last / WINDOW_CHUNKS + 1;
            for w in next..(next + PREFETCH_WINDOWS).min(windows) {
                if !st.holds_window(w) {
                    st.pending.insert(w);
                    prefetch.push(w);
                }
            }
        }
        self.prefetch(prefetch);
        if own.is_empty() {
            return Ok(found);
        }
        let mut pending = Pending {
            ahead: &self.ahead,
            windows: own,
        };
        let indices = self.window_chunks(&pending.windows);
        let chunks = self.fetch(&indices, WINDOW_CHUNKS)?;
        found.extend(
            chunks
                .iter()
                .filter(|(i, _)| {
                    missing.binary_search(i).is_ok() && !found.iter().any(|(j, _)| j == i)
                })
                .cloned()
                .collect::<Vec<_>>(),
        );
        let windows = std::mem::take(&mut pending.windows);
        self.ahead.settle(&windows, &chunks);
        Ok(found)
    }

    fn read(&self, buf: &mut [u8], offset: u64) -> Result<usize, HubError> {
        let len = self.header.plain_len();
        if offset >= len || buf.is_empty() {
            return Ok(0);
        }
        let end = len.min(offset + buf.len() as u64);
        let chunk = u64::from(self.header.chunk_size());
        let index = |v: u64| usize::try_from(v).map_err(|_| HubError::Worker);
        let n = index(end - offset)?;
        // The part of `buf` chunk `i` covers (within `n`, so it fits a `usize`), and where in
        // the chunk it starts.
        let part = |i: u64| -> Result<(std::ops::Range<usize>, u64), HubError> {
            let r = self.header.plain_range(i);
            let from = r.start.max(offset);
            let to = r.end.min(end);
            Ok((index(from - offset)?..index(to - offset)?, from - r.start))
        };
        // Copies into `buf` the chunks of `indices` the cache holds; answers the others.
        let from_cache = |indices: &mut dyn Iterator<Item = u64>,
                          buf: &mut [u8]|
         -> Result<Vec<u64>, HubError> {
            let mut missing = Vec::new();
            for i in indices {
                let (dst, within) = part(i)?;
                if !self
                    .cache
                    .read(&self.key, i, chunk, within, &mut buf[dst])
                    .map_err(|e| HubError::io(&self.cache.dir, e))?
                {
                    missing.push(i);
                }
            }
            Ok(missing)
        };
        // Opens chunk `i` and copies its part into `buf`; answers its plaintext.
        let open_part = |i: u64, sealed: &[u8], buf: &mut [u8]| -> Result<Vec<u8>, HubError> {
            let (dst, within) = part(i)?;
            let plain = self.cipher.open(i, sealed).map_err(|e| self.tier(e))?;
            let within = index(within)?;
            let src = plain
                .get(within..within + dst.len())
                .ok_or(HubError::Worker)?;
            buf[dst].copy_from_slice(src);
            Ok(plain)
        };
        let missing = from_cache(&mut self.header.chunks_covering(offset..end), buf)?;
        if missing.is_empty() {
            return Ok(n);
        }
        // A large read (a restore, a download) streams: it reads whole windows (uploaded
        // parts), held in memory for the reads that follow, and the next windows ahead of
        // it; it keeps nothing in the cache, which would only push out what small reads
        // (metadata, a guest's working set, listings) come back to. A small read fetches its
        // chunks alone and keeps them in the cache.
        if buf.len() as u64 >= chunk {
            let last = self.header.chunks_covering(offset..end).end - 1;
            for (i, sealed) in self.streaming_chunks(&missing, last)? {
                let (dst, _) = part(i)?;
                if dst.len() + sendense_tier::TAG_LEN == sealed.len() {
                    // Used whole: opened straight into the caller's buffer.
                    self.cipher
                        .open_into(i, &sealed, &mut buf[dst])
                        .map_err(|e| self.tier(e))?;
                } else {
                    open_part(i, &sealed, buf)?;
                }
            }
            return Ok(n);
        }
        let _fetching = self.cache.lock_fetches(&self.key, &missing);
        // Another reader may have fetched some while this one waited.
        let still = from_cache(&mut missing.into_iter(), buf)?;
        for (i, sealed) in self.fetch(&still, RUN_CHUNKS)? {
            let plain = open_part(i, &sealed, buf)?;
            self.cache.insert(&self.key, i, chunk, &plain);
        }
        Ok(n)
    }
}

impl Storage for BucketLayer {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.read(buf, offset).map_err(|e| {
            tracing::warn!(object = %self.key, offset, error = %sendense_io::error_chain(&e), "read from the bucket failed");
            io::Error::other(e)
        })
    }

    fn write_at(&self, _buf: &[u8], _offset: u64) -> io::Result<()> {
        Err(read_only())
    }

    fn file_len(&self) -> io::Result<u64> {
        Ok(self.header.plain_len())
    }

    fn set_len(&self, _len: u64) -> io::Result<()> {
        Err(read_only())
    }

    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }

    fn sync_all(&self) -> io::Result<()> {
        Ok(())
    }
}

fn read_only() -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        "a layer read from a bucket is read-only",
    )
}

/// Fetches the sealed bytes of chunks `indices` (ascending) of object `name`, neighbours in
/// one GET (a GET never crosses a multiple of `align` chunks), the GETs at once; answers each
/// chunk's sealed bytes (not opened yet).
async fn fetch_chunks(
    bucket: Bucket,
    name: String,
    header: Header,
    indices: Vec<u64>,
    align: u64,
) -> Result<Vec<(u64, bytes::Bytes)>, HubError> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &i in &indices {
        match runs.last_mut() {
            Some((_, last)) if *last + 1 == i && i % align != 0 => *last = i,
            _ => runs.push((i, i)),
        }
    }
    let requests = runs.iter().map(|&(first, last)| {
        let range = header.sealed_range(first).start..header.sealed_range(last).end;
        bucket.get_range(&name, range)
    });
    let bodies = futures::future::try_join_all(requests).await?;
    let mut out = Vec::with_capacity(indices.len());
    for (&(first, last), body) in runs.iter().zip(bodies) {
        let base = header.sealed_range(first).start;
        for i in first..=last {
            let r = header.sealed_range(i);
            let at = usize::try_from(r.start - base).map_err(|_| HubError::Worker)?;
            let len = usize::try_from(r.end - r.start).map_err(|_| HubError::Worker)?;
            if body.len() < at + len {
                return Err(HubError::Tier {
                    object: name.clone(),
                    source: sendense_tier::TierError::Truncated {
                        need: r.end - base,
                        have: body.len() as u64,
                    },
                });
            }
            out.push((i, body.slice(at..at + len)));
        }
    }
    Ok(out)
}

/// Runs `fut` on the hub's runtime from any thread (a blocking-pool thread, or a plain one)
/// and waits for it.
fn run<T: Send + 'static>(
    handle: &tokio::runtime::Handle,
    fut: impl Future<Output = Result<T, HubError>> + Send + 'static,
) -> Result<T, HubError> {
    futures::executor::block_on(handle.spawn(fut)).map_err(|_| HubError::Worker)?
}

/// The layers of one chain that live only in buckets, by the canonical path their files had.
#[derive(Debug)]
pub(crate) struct TierLayers {
    layers: HashMap<PathBuf, (Bucket, String)>,
    key: MasterKey,
    cache: Arc<ChunkCache>,
    handle: tokio::runtime::Handle,
}

impl LayerSource for TierLayers {
    fn holds(&self, path: &Path) -> bool {
        self.layers.contains_key(path)
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn Storage>> {
        let (bucket, name) = self
            .layers
            .get(path)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let layer = BucketLayer::open(
            bucket.clone(),
            name.clone(),
            &self.key,
            Arc::clone(&self.cache),
            self.handle.clone(),
        )
        .map_err(io::Error::other)?;
        tracing::debug!(path = %path.display(), object = %layer.key, "layer read from the bucket");
        Ok(Box::new(layer))
    }
}

impl Tier {
    /// The source of the layers of `id`'s chain that live only in a bucket (evicted points:
    /// each read from a target holding a verified copy), for opening that chain; `None` when
    /// every layer is a local file.
    ///
    /// # Errors
    /// Catalog errors; an evicted point with no verified copy on a known target
    /// ([`HubError::NoVerifiedCopy`]); the tier key missing; a target's secret not opening.
    pub fn layers_for(&self, id: &BackupId) -> Result<Option<Arc<dyn LayerSource>>, HubError> {
        let mut layers = HashMap::new();
        let mut buckets: HashMap<sendense_types::TargetName, Bucket> = HashMap::new();
        let mut next = Some(id.clone());
        let mut depth = 0;
        while let Some(point) = next.take() {
            depth += 1;
            if depth > sendense_qcow2::MAX_CHAIN_DEPTH + 1 {
                break;
            }
            let Some(record) = self.catalog.backup(&point)? else {
                break;
            };
            if record.evicted {
                let target = self
                    .catalog
                    .copies_of(&point)?
                    .into_iter()
                    .find(|c| c.state == sendense_types::CopyState::Verified)
                    .map(|c| c.target)
                    .ok_or_else(|| HubError::NoVerifiedCopy {
                        backup_id: point.clone(),
                    })?;
                let bucket = match buckets.get(&target) {
                    Some(b) => b.clone(),
                    None => {
                        let b = self.bucket(&target)?;
                        buckets.insert(target.clone(), b.clone());
                        b
                    }
                };
                let folder = layout::point_folder(BUCKET_PREFIX, &record.vm_name, &point);
                for disk in &record.disks {
                    let path = sendense_qcow2::layers::would_be_at(&self.repo.join(&disk.file))
                        .map_err(|e| HubError::io(&self.repo, e))?;
                    let name = format!("{folder}/{}", layout::image_object(disk.disk_key));
                    layers.insert(path, (bucket.clone(), name));
                }
            }
            next = record.parent_backup_id;
        }
        if layers.is_empty() {
            return Ok(None);
        }
        let cache = self.cache()?;
        Ok(Some(Arc::new(TierLayers {
            layers,
            key: self.key()?,
            handle: cache.io()?,
            cache,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK_LEN: usize = 4096;
    const CHUNK: u64 = CHUNK_LEN as u64;

    fn chunk(byte: u8) -> Vec<u8> {
        vec![byte; CHUNK_LEN]
    }

    fn cached(cache: &ChunkCache, object: &Arc<str>, index: u64) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; CHUNK_LEN];
        cache
            .read(object, index, CHUNK, 0, &mut buf)
            .unwrap()
            .then_some(buf)
    }

    fn sealed(byte: u8) -> bytes::Bytes {
        bytes::Bytes::from(vec![byte; 32])
    }

    #[test]
    fn read_ahead_keeps_the_newest_windows_and_answers_their_chunks() {
        let ahead = ReadAhead::default();
        let windows: Vec<u64> = (0..=READ_AHEAD_WINDOWS as u64).collect();
        ahead.state().pending.extend(windows.iter().copied());
        let chunks: Vec<(u64, bytes::Bytes)> = windows
            .iter()
            .map(|&w| (w * WINDOW_CHUNKS + 1, sealed(u8::try_from(w).unwrap())))
            .collect();

        ahead.settle(&windows, &chunks);

        let st = ahead.state();
        assert!(
            st.pending.is_empty(),
            "settled windows are no longer pending"
        );
        assert_eq!(st.windows.len(), READ_AHEAD_WINDOWS, "bounded");
        assert_eq!(st.get(1), None, "the oldest window went first");
        assert!(!st.holds_window(0));
        assert_eq!(st.get(WINDOW_CHUNKS + 1), Some(sealed(1)));
        assert_eq!(st.get(WINDOW_CHUNKS + 2), None, "a chunk not fetched");
        assert!(st.holds_window(READ_AHEAD_WINDOWS as u64));
    }

    #[test]
    fn a_failed_fetch_wakes_the_reads_waiting_for_its_window() {
        let ahead = Arc::new(ReadAhead::default());
        ahead.state().pending.insert(5);
        let waiter = {
            let ahead = Arc::clone(&ahead);
            std::thread::spawn(move || {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
                let mut st = ahead.state();
                while st.pending.contains(&5) {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    assert!(!left.is_zero(), "never woken");
                    st = ahead.ready.wait_timeout(st, left).unwrap().0;
                }
                st.get(5 * WINDOW_CHUNKS)
            })
        };

        drop(Pending {
            ahead: &ahead,
            windows: vec![5],
        });

        assert_eq!(waiter.join().unwrap(), None, "woken, with nothing kept");
        assert!(!ahead.state().holds_window(5));
    }

    #[test]
    fn a_kept_chunk_reads_back_in_part_and_whole() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(&dir.path().join("c"), 16 * CHUNK).unwrap();
        let object: Arc<str> = "t/a".into();
        assert_eq!(cached(&cache, &object, 3), None);
        let mut plain = chunk(0);
        plain[100..200].fill(7);

        cache.insert(&object, 3, CHUNK, &plain);

        assert_eq!(cached(&cache, &object, 3), Some(plain));
        let mut part = [0u8; 150];
        assert!(cache.read(&object, 3, CHUNK, 50, &mut part).unwrap());
        assert_eq!(&part[..50], &[0; 50]);
        assert_eq!(&part[50..], &[7; 100]);
        assert_eq!(cache.used(), CHUNK);
    }

    #[test]
    fn the_least_recently_read_chunks_go_first_and_the_bound_holds() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(&dir.path().join("c"), 3 * CHUNK).unwrap();
        let a: Arc<str> = "t/a".into();
        let b: Arc<str> = "t/b".into();
        cache.insert(&a, 0, CHUNK, &chunk(1));
        cache.insert(&a, 1, CHUNK, &chunk(2));
        cache.insert(&b, 0, CHUNK, &chunk(3));
        // Reading a/0 makes a/1 the oldest.
        assert!(cached(&cache, &a, 0).is_some());

        cache.insert(&b, 5, CHUNK, &chunk(4));

        assert_eq!(cache.used(), 3 * CHUNK);
        assert_eq!(cached(&cache, &a, 1), None);
        assert_eq!(cached(&cache, &a, 0), Some(chunk(1)));
        assert_eq!(cached(&cache, &b, 0), Some(chunk(3)));
        assert_eq!(cached(&cache, &b, 5), Some(chunk(4)));
        // The dropped chunk's range is punched out of its file: the disk space is bounded too.
        let blocks: u64 = std::fs::read_dir(dir.path().join("c"))
            .unwrap()
            .map(|e| {
                use std::os::unix::fs::MetadataExt as _;
                e.unwrap().metadata().unwrap().blocks() * 512
            })
            .sum();
        assert!(blocks <= 3 * CHUNK, "{blocks} bytes allocated");
    }

    #[test]
    fn a_chunk_being_read_is_never_dropped_and_a_chunk_that_cannot_fit_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(&dir.path().join("c"), CHUNK).unwrap();
        let a: Arc<str> = "t/a".into();
        cache.insert(&a, 0, CHUNK, &chunk(1));
        // A reader holds chunk 0 (pinned as `read` does while it copies).
        if let Some(e) = cache.state().chunks.get_mut(&(Arc::clone(&a), 0)) {
            e.pins += 1;
        }

        cache.insert(&a, 1, CHUNK, &chunk(2));
        cache.insert(&a, 2, CHUNK, &vec![9; 2 * CHUNK_LEN]);

        assert_eq!(cached(&cache, &a, 0), Some(chunk(1)));
        assert_eq!(cached(&cache, &a, 1), None);
        assert_eq!(cached(&cache, &a, 2), None);
        assert_eq!(cache.used(), CHUNK);
    }

    #[test]
    fn opening_the_cache_empties_what_an_earlier_run_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("0000000000000000"), b"stale plaintext").unwrap();

        let cache = ChunkCache::open(&path, CHUNK).unwrap();

        assert_eq!(std::fs::read_dir(&path).unwrap().count(), 0);
        assert_eq!(cache.used(), 0);
    }
}
