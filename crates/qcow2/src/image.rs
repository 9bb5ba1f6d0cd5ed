//! The image engine: open (with its backing chain), create, read, write, zeroing, discard,
//! block status, flush and finalize.
//!
//! # Concurrency
//! All I/O methods take `&self`; [`Image`] is `Send + Sync`. One mutex guards the layer's
//! metadata (`meta::Meta`). A write takes the mutex, waits until none of its guest
//! clusters has another write/zero/discard in flight, marks them in flight, allocates the
//! host clusters it needs (contiguously, at the end of the file) and releases the mutex. It
//! then reads any copy-on-write source and issues its data `pwrite`s without the mutex —
//! one `pwrite` per contiguous run — and finally re-takes the mutex to publish its L2
//! entries and clear its in-flight marks. Readers never wait: they see either the old
//! mapping or the new one, which is only published once the data is written. Overlapping
//! writers are serialised per cluster, so the result equals some serial order.
//!
//! Freed clusters are never reused while the image is open, so a reader that resolved an
//! old mapping still reads the old data.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use flate2::{Decompress, FlushDecompress, Status};

use crate::backing::{self, BackingPolicy, MemFolder};
use crate::error::Qcow2Error;
use crate::lock::{self, LockMode};
use crate::meta::{L2E_OFFSET_MASK, Meta, OFLAG_COMPRESSED, OFLAG_COPIED, OFLAG_ZERO, Refcounts};
use crate::parse::{
    BackingFormat, CompressionType, Header, INCOMPAT_CORRUPT, INCOMPAT_DIRTY, INCOMPAT_EXTL2,
    MAX_BACKING_NAME, MAX_CLUSTER_BITS, MIN_CLUSTER_BITS, MIN_EXTENDED_L2_CLUSTER_BITS,
    default_feature_names,
};
use crate::raw::{OFF_AUTOCLEAR, QCOW2_MAGIC, RAW_HEADER_LEN};
use crate::storage::{FileStorage, Storage, read_data_or_zero, read_or_zero};

/// Hard upper bound on backing chain depth, whatever the caller asks for in
/// [`OpenOptions::max_chain_depth`].
pub const MAX_CHAIN_DEPTH: usize = 256;
/// Backing chain depth limit of [`OpenOptions::read_only`], [`OpenOptions::writable`] and
/// [`Image::create`]: an image with more backing files below it than this fails to open with
/// [`Qcow2Error::ChainTooDeep`], so a writer of chains (the hub) starts a new full before its
/// chain reaches it.
pub const DEFAULT_CHAIN_DEPTH: usize = 32;
/// Default cluster size of new images.
pub const DEFAULT_CLUSTER_SIZE: u32 = 65536;
/// Clusters zeroed/discarded per metadata batch.
const ZERO_BATCH: u64 = 4096;

/// Options for [`Image::create`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateOptions {
    /// Virtual size in bytes (a multiple of 512, not 0).
    pub virtual_size: u64,
    /// Cluster size: a power of two from 512 to 2 MiB (default 64 KiB).
    pub cluster_size: u32,
    /// Backing file, for an overlay.
    pub backing: Option<BackingSpec>,
    /// Extended L2 entries (32 subclusters per cluster; clusters of at least 16 KiB).
    pub extended_l2: bool,
    /// Policy for the backing files named by the images below the new overlay, relative to
    /// the folder of `backing` (default [`BackingPolicy::below`]). `backing` itself is the
    /// caller's own choice and is opened wherever it is.
    pub backing_policy: BackingPolicy,
}

impl CreateOptions {
    /// A standalone image of `virtual_size` bytes with 64 KiB clusters.
    #[must_use]
    pub fn new(virtual_size: u64) -> Self {
        Self {
            virtual_size,
            cluster_size: DEFAULT_CLUSTER_SIZE,
            backing: None,
            extended_l2: false,
            backing_policy: BackingPolicy::below(),
        }
    }

    /// Sets the cluster size.
    #[must_use]
    pub fn cluster_size(mut self, cluster_size: u32) -> Self {
        self.cluster_size = cluster_size;
        self
    }

    /// Sets the backing file.
    #[must_use]
    pub fn backing(mut self, backing: BackingSpec) -> Self {
        self.backing = Some(backing);
        self
    }

    /// Enables or disables extended L2 entries.
    #[must_use]
    pub fn extended_l2(mut self, on: bool) -> Self {
        self.extended_l2 = on;
        self
    }

    /// Sets the policy for the backing chain below the new overlay.
    #[must_use]
    pub fn backing_policy(mut self, policy: BackingPolicy) -> Self {
        self.backing_policy = policy;
        self
    }
}

/// A backing file to record in a new overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackingSpec {
    /// Stored verbatim in the header; a relative name is resolved from the image's folder.
    pub file: String,
    /// Its format, stored in the backing format header extension.
    pub format: BackingFormat,
}

impl BackingSpec {
    /// A QCOW2 backing file.
    #[must_use]
    pub fn qcow2(file: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            format: BackingFormat::Qcow2,
        }
    }

    /// A raw backing file.
    #[must_use]
    pub fn raw(file: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            format: BackingFormat::Raw,
        }
    }
}

/// Options for [`Image::open`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenOptions {
    /// Open the top image for writing (backing files are always read-only).
    pub writable: bool,
    /// Maximum number of backing files below the top image (capped at [`MAX_CHAIN_DEPTH`]).
    pub max_chain_depth: usize,
    /// Which backing files the chain may name (see [`crate::backing`]).
    pub backing: BackingPolicy,
}

impl OpenOptions {
    /// Read-only, default depth limit, backing files under [`BackingPolicy::below`].
    #[must_use]
    pub fn read_only() -> Self {
        Self {
            writable: false,
            max_chain_depth: DEFAULT_CHAIN_DEPTH,
            backing: BackingPolicy::below(),
        }
    }

    /// Writable, default depth limit, backing files under [`BackingPolicy::below`].
    #[must_use]
    pub fn writable() -> Self {
        Self {
            writable: true,
            max_chain_depth: DEFAULT_CHAIN_DEPTH,
            backing: BackingPolicy::below(),
        }
    }

    /// Sets the backing file policy.
    #[must_use]
    pub fn backing(mut self, policy: BackingPolicy) -> Self {
        self.backing = policy;
        self
    }

    /// Sets the chain depth limit (capped at [`MAX_CHAIN_DEPTH`]).
    #[must_use]
    pub fn max_chain_depth(mut self, depth: usize) -> Self {
        self.max_chain_depth = depth;
        self
    }
}

/// Allocation state of a guest range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentState {
    /// Data stored in this layer (or, for chain status, somewhere in the chain).
    Data,
    /// Reads as zeros.
    Zero,
    /// Not allocated in this layer: reads fall through to the backing file.
    Unallocated,
}

/// A run of guest bytes with one state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Guest offset.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// State.
    pub state: ExtentState,
}

/// Description of one image (and, recursively, its backing chain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// Path as opened.
    pub path: PathBuf,
    /// QCOW2 version, 2 or 3.
    pub version: u32,
    /// Virtual size in bytes.
    pub virtual_size: u64,
    /// Cluster size in bytes.
    pub cluster_size: u64,
    /// Extended L2 entries.
    pub extended_l2: bool,
    /// Refcount width in bits.
    pub refcount_bits: u32,
    /// Backing file name as stored in the header.
    pub backing_file: Option<String>,
    /// Backing format from the header extension.
    pub backing_format: Option<BackingFormat>,
    /// Compression type.
    pub compression: CompressionType,
    /// Length of the image file in bytes.
    pub file_length: u64,
    /// Dirty bit (lazy refcounts).
    pub dirty: bool,
    /// Corrupt bit.
    pub corrupt: bool,
    /// Internal snapshots.
    pub snapshots: u32,
    /// The backing file, opened.
    pub backing: Option<Box<BackingInfo>>,
}

/// Description of a backing file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackingInfo {
    /// A QCOW2 image.
    Qcow2(ImageInfo),
    /// A raw file.
    Raw {
        /// Path as resolved.
        path: PathBuf,
        /// Size in bytes.
        size: u64,
    },
}

/// An opened backing file.
#[derive(Debug)]
pub enum Backing {
    /// A QCOW2 image (with its own chain).
    Qcow2(Box<Image>),
    /// A raw file.
    Raw(RawBacking),
}

/// A raw backing file, read-only.
#[derive(Debug)]
pub struct RawBacking {
    path: PathBuf,
    storage: Box<dyn Storage>,
    /// Keeps the OFD lock of a file on disk.
    lock_file: Option<File>,
    size: u64,
}

impl RawBacking {
    pub(crate) fn lock_file(&self) -> Option<&File> {
        self.lock_file.as_ref()
    }

    fn open(path: &Path, open_at: &Path) -> Result<Self, Qcow2Error> {
        let file = File::open(open_at).map_err(|e| Qcow2Error::io("open backing", path, e))?;
        lock::apply(&file, path, LockMode::Read)?;
        let lock_file = file
            .try_clone()
            .map_err(|e| Qcow2Error::io("dup", path, e))?;
        Self::from_storage(path, Box::new(file), Some(lock_file))
    }

    fn from_storage(
        path: &Path,
        storage: Box<dyn Storage>,
        lock_file: Option<File>,
    ) -> Result<Self, Qcow2Error> {
        let size = storage
            .file_len()
            .map_err(|e| Qcow2Error::io("stat", path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            storage,
            lock_file,
            size,
        })
    }
}

impl Backing {
    /// The backing file's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        match self {
            Self::Qcow2(i) => i.path(),
            Self::Raw(r) => &r.path,
        }
    }

    /// Its format.
    #[must_use]
    pub fn format(&self) -> BackingFormat {
        match self {
            Self::Qcow2(_) => BackingFormat::Qcow2,
            Self::Raw(_) => BackingFormat::Raw,
        }
    }

    /// Its virtual size.
    #[must_use]
    pub fn virtual_size(&self) -> u64 {
        match self {
            Self::Qcow2(i) => i.virtual_size(),
            Self::Raw(r) => r.size,
        }
    }

    /// The QCOW2 image, when it is one.
    #[must_use]
    pub fn as_image(&self) -> Option<&Image> {
        match self {
            Self::Qcow2(i) => Some(i),
            Self::Raw(_) => None,
        }
    }

    /// Reads `buf.len()` bytes at `offset`; bytes beyond its size read as zeros.
    ///
    /// # Errors
    /// I/O errors and corrupt metadata.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), Qcow2Error> {
        let size = self.virtual_size();
        let n = usize::try_from(size.saturating_sub(offset))
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let (head, tail) = buf.split_at_mut(n);
        tail.fill(0);
        if head.is_empty() {
            return Ok(());
        }
        match self {
            Self::Qcow2(i) => i.read_at(head, offset),
            Self::Raw(r) => read_or_zero(r.storage.as_ref(), head, offset)
                .map_err(|e| Qcow2Error::io("read backing", &r.path, e)),
        }
    }

    fn chain_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, Qcow2Error> {
        let size = self.virtual_size();
        let inside = size.saturating_sub(offset).min(len);
        let mut out = Vec::new();
        if inside > 0 {
            match self {
                Self::Qcow2(i) => out = i.chain_status(offset, inside)?,
                Self::Raw(_) => {
                    out.push(Extent {
                        offset,
                        length: inside,
                        state: ExtentState::Data,
                    });
                }
            }
        }
        if inside < len {
            push_extent(&mut out, offset + inside, len - inside, ExtentState::Zero);
        }
        Ok(out)
    }
}

/// Geometry derived from the header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geo {
    pub(crate) version: u32,
    pub(crate) cluster_bits: u32,
    pub(crate) cluster_size: u64,
    pub(crate) extended: bool,
    /// u64 words per L2 entry (1, or 2 with extended L2).
    pub(crate) entry_words: usize,
    /// Entries per L2 table.
    pub(crate) l2_entries: u64,
    /// Allocation granule: subcluster size with extended L2, else the cluster size.
    pub(crate) granule: u64,
    /// Granules per cluster (32 or 1).
    pub(crate) granules: u64,
    pub(crate) virtual_size: u64,
    pub(crate) refcount_order: u32,
}

impl Geo {
    fn new(h: &Header) -> Self {
        let cluster_size = h.cluster_size();
        let extended = h.extended_l2();
        let entry_words = if extended { 2 } else { 1 };
        let granules = if extended { 32 } else { 1 };
        Self {
            version: h.version,
            cluster_bits: h.cluster_bits,
            cluster_size,
            extended,
            entry_words,
            l2_entries: cluster_size / (8 * entry_words as u64),
            granule: cluster_size / granules,
            granules,
            virtual_size: h.virtual_size,
            refcount_order: h.refcount_order,
        }
    }
}

/// The file and its geometry: what metadata code needs for I/O.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) storage: Box<dyn Storage>,
    pub(crate) path: PathBuf,
    pub(crate) geo: Geo,
}

impl Core {
    pub(crate) fn read_exact(
        &self,
        buf: &mut [u8],
        off: u64,
        op: &'static str,
    ) -> Result<(), Qcow2Error> {
        read_or_zero(self.storage.as_ref(), buf, off).map_err(|e| Qcow2Error::io(op, &self.path, e))
    }
    pub(crate) fn write(&self, buf: &[u8], off: u64, op: &'static str) -> Result<(), Qcow2Error> {
        self.storage
            .write_at(buf, off)
            .map_err(|e| Qcow2Error::io(op, &self.path, e))
    }
    /// Reads guest data (may bypass the page cache, see [`crate::storage`]).
    pub(crate) fn read_data(&self, buf: &mut [u8], off: u64) -> Result<(), Qcow2Error> {
        read_data_or_zero(self.storage.as_ref(), buf, off)
            .map_err(|e| Qcow2Error::io("read data", &self.path, e))
    }
    /// Writes guest data (may bypass the page cache, see [`crate::storage`]).
    pub(crate) fn write_data(
        &self,
        buf: &[u8],
        off: u64,
        op: &'static str,
    ) -> Result<(), Qcow2Error> {
        self.storage
            .write_data_at(buf, off)
            .map_err(|e| Qcow2Error::io(op, &self.path, e))
    }
    pub(crate) fn sync(&self, op: &'static str) -> Result<(), Qcow2Error> {
        self.storage
            .sync_data()
            .map_err(|e| Qcow2Error::io(op, &self.path, e))
    }
    pub(crate) fn storage_len(&self) -> Result<u64, Qcow2Error> {
        self.storage
            .file_len()
            .map_err(|e| Qcow2Error::io("stat", &self.path, e))
    }
    pub(crate) fn set_len(&self, len: u64) -> Result<(), Qcow2Error> {
        self.storage
            .set_len(len)
            .map_err(|e| Qcow2Error::io("set length", &self.path, e))
    }
}

/// State of one allocation granule of a guest cluster in this layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Granule {
    Unalloc,
    Zero,
    /// Host offset of the granule's data.
    Data(u64),
    Compressed,
}

/// An open QCOW2 image layer with its backing chain.
pub struct Image {
    pub(crate) core: Core,
    pub(crate) header: Header,
    writable: bool,
    pub(crate) backing: Option<Backing>,
    pub(crate) meta: Mutex<Meta>,
    cv: Condvar,
    /// Keeps the OFD locks (a descriptor of the same open file description).
    pub(crate) lock_file: Option<File>,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("path", &self.core.path)
            .field("writable", &self.writable)
            .field("virtual_size", &self.core.geo.virtual_size)
            .field("cluster_size", &self.core.geo.cluster_size)
            .field("backing", &self.backing)
            .finish_non_exhaustive()
    }
}

fn push_extent(out: &mut Vec<Extent>, offset: u64, length: u64, state: ExtentState) {
    if length == 0 {
        return;
    }
    if let Some(last) = out.last_mut()
        && last.state == state
        && last.offset + last.length == offset
    {
        last.length += length;
        return;
    }
    out.push(Extent {
        offset,
        length,
        state,
    });
}

/// Source of the bytes of one piece of a read.
#[derive(Debug)]
enum ReadSrc {
    Host(u64),
    Zero,
    Backing,
    Compressed { entry: u64, within: u64 },
}

#[derive(Debug)]
struct ReadSeg {
    guest: u64,
    len: u64,
    src: ReadSrc,
}

/// One cluster's part of a write.
#[derive(Debug)]
struct ClusterPlan {
    gc: u64,
    /// Written byte range within the cluster.
    a: u64,
    b: u64,
    /// Offset in the caller's buffer of byte `a`.
    buf_off: usize,
    host: u64,
    in_place: bool,
    /// Granule range to write.
    g_lo: u64,
    g_hi: u64,
    /// State of every granule before the write.
    prior: Vec<Granule>,
    old_entry: u64,
    new_entry: Option<(u64, u64)>,
    free_old: Option<(u64, u64)>,
    needs_alloc: bool,
}

/// A data write: host offset and either a range of the caller's buffer or owned bytes.
enum Piece {
    User(u64, usize, usize),
    Owned(u64, Vec<u8>),
}

impl Image {
    /// Creates a new image at `path` (which must not exist) and opens it writable and locked.
    ///
    /// # Errors
    /// Invalid options, an existing file, I/O errors, or a backing file that cannot be opened.
    pub fn create(path: &Path, opts: &CreateOptions) -> Result<Self, Qcow2Error> {
        let header = create_header(opts)?;
        let bytes = create_layout(&header)?;
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    Qcow2Error::AlreadyExists {
                        path: path.to_path_buf(),
                    }
                } else {
                    Qcow2Error::io("create", path, e)
                }
            })?;
        let res = (|| {
            lock::apply(&file, path, LockMode::Write)?;
            std::io::Write::write_all(&mut file, &bytes)
                .map_err(|e| Qcow2Error::io("write new image", path, e))?;
            file.sync_all()
                .map_err(|e| Qcow2Error::io("sync new image", path, e))?;
            let mut chain = FileChain::new(path, DEFAULT_CHAIN_DEPTH, opts.backing_policy);
            // The caller named this backing file itself: the policy governs the names read
            // from images below it, relative to its folder.
            chain.trust_first = true;
            Self::from_file(file, path, true, 0, &mut chain)
        })();
        if res.is_err() {
            let _ = fs::remove_file(path);
        }
        res
    }

    /// Opens the image at `path` and its backing chain (always read-only). Backing files are
    /// opened only as `opts.backing` allows, relative to the folder of `path`.
    ///
    /// # Errors
    /// I/O errors, lock conflicts ([`Qcow2Error::Locked`]), invalid or unsupported images,
    /// backing loops, chains deeper than `opts.max_chain_depth`, backing files the policy
    /// refuses ([`Qcow2Error::BackingRefused`], [`Qcow2Error::BackingFormatRefused`]) and
    /// missing backing files ([`Qcow2Error::BackingMissing`]).
    pub fn open(path: &Path, opts: &OpenOptions) -> Result<Self, Qcow2Error> {
        let limit = opts.max_chain_depth.min(MAX_CHAIN_DEPTH);
        let mut chain = FileChain::new(path, limit, opts.backing);
        Self::open_layer(path, path, opts.writable, 0, &mut chain)
    }

    /// Opens an image held in `storage` with its backing chain taken from `folder` by the
    /// names the images store, under `opts.backing`: for tests and fuzzing. Backing files
    /// are read-only copies; [`Image::commit`] is not available on such a chain.
    ///
    /// # Errors
    /// As [`Image::open`].
    pub fn open_storage_chain(
        storage: Box<dyn Storage>,
        opts: &OpenOptions,
        folder: &MemFolder,
    ) -> Result<Self, Qcow2Error> {
        let mut chain = MemChain {
            limit: opts.max_chain_depth.min(MAX_CHAIN_DEPTH),
            policy: opts.backing,
            folder,
            seen: Vec::new(),
        };
        Self::mem_layer(storage, Path::new("<memory>"), opts.writable, 0, &mut chain)
    }

    fn mem_layer(
        storage: Box<dyn Storage>,
        path: &Path,
        writable: bool,
        depth: usize,
        chain: &mut MemChain<'_>,
    ) -> Result<Self, Qcow2Error> {
        let mut img = Self::from_storage(storage, path, writable)?;
        if let Some(name) = img.header.backing_file.clone() {
            let (key, storage) = chain.folder.open(&chain.policy, &name)?;
            if depth + 1 > chain.limit {
                return Err(Qcow2Error::ChainTooDeep {
                    max_depth: chain.limit,
                });
            }
            let bpath = PathBuf::from(key);
            if chain.seen.contains(&bpath) {
                return Err(Qcow2Error::BackingLoop { path: bpath });
            }
            chain.seen.push(bpath.clone());
            let format = match img.header.backing_format {
                Some(f) => f,
                None => probe_format(storage.as_ref(), &bpath)?,
            };
            chain.policy.check_format(&name, format)?;
            img.backing = Some(match format {
                BackingFormat::Qcow2 => Backing::Qcow2(Box::new(Self::mem_layer(
                    storage,
                    &bpath,
                    false,
                    depth + 1,
                    chain,
                )?)),
                BackingFormat::Raw => {
                    Backing::Raw(RawBacking::from_storage(&bpath, storage, None)?)
                }
            });
        }
        Ok(img)
    }

    /// Opens an image held in `storage` (no path, no locks, no backing files): for tests and
    /// fuzzing.
    ///
    /// # Errors
    /// As [`Image::open`]; an image naming a backing file is refused.
    pub fn open_storage(storage: Box<dyn Storage>, opts: &OpenOptions) -> Result<Self, Qcow2Error> {
        let img = Self::from_storage(storage, Path::new("<memory>"), opts.writable)?;
        if let Some(name) = &img.header.backing_file {
            return Err(Qcow2Error::BackingWithoutPath { name: name.clone() });
        }
        Ok(img)
    }

    /// Opens the layer at `open_at` (its canonical path, for a backing file), known to the
    /// user as `path`.
    fn open_layer(
        path: &Path,
        open_at: &Path,
        writable: bool,
        depth: usize,
        chain: &mut FileChain,
    ) -> Result<Self, Qcow2Error> {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(writable)
            .open(open_at)
            .map_err(|e| Qcow2Error::io("open", path, e))?;
        let mode = if writable {
            LockMode::Write
        } else {
            LockMode::Read
        };
        lock::apply(&file, path, mode)?;
        Self::from_file(file, path, writable, depth, chain)
    }

    fn from_file(
        file: File,
        path: &Path,
        writable: bool,
        depth: usize,
        chain: &mut FileChain,
    ) -> Result<Self, Qcow2Error> {
        let canonical = fs::canonicalize(path).map_err(|e| Qcow2Error::io("resolve", path, e))?;
        if chain.seen.contains(&canonical) {
            return Err(Qcow2Error::BackingLoop { path: canonical });
        }
        chain.seen.push(canonical);
        let lock_file = file
            .try_clone()
            .map_err(|e| Qcow2Error::io("dup", path, e))?;
        let storage = FileStorage::with_direct_io(file, path, writable);
        let mut img = Self::from_storage(Box::new(storage), path, writable)?;
        img.lock_file = Some(lock_file);
        if let Some(name) = img.header.backing_file.clone() {
            let (bpath, real) = if depth == 0 && chain.trust_first {
                let (bpath, real) =
                    backing::resolve_file(&BackingPolicy::any(), path, &name, Path::new("/"))?;
                chain.root = real.parent().map(Path::to_path_buf);
                (bpath, real)
            } else {
                let root = chain.root()?;
                backing::resolve_file(&chain.policy, path, &name, &root)?
            };
            if depth + 1 > chain.limit {
                return Err(Qcow2Error::ChainTooDeep {
                    max_depth: chain.limit,
                });
            }
            let format = match img.header.backing_format {
                Some(f) => f,
                None => {
                    let f =
                        File::open(&real).map_err(|e| Qcow2Error::io("open backing", &bpath, e))?;
                    probe_format(&f, &bpath)?
                }
            };
            chain.policy.check_format(&name, format)?;
            img.backing = Some(match format {
                BackingFormat::Qcow2 => Backing::Qcow2(Box::new(Self::open_layer(
                    &bpath,
                    &real,
                    false,
                    depth + 1,
                    chain,
                )?)),
                BackingFormat::Raw => {
                    if chain.seen.contains(&real) {
                        return Err(Qcow2Error::BackingLoop { path: real });
                    }
                    Backing::Raw(RawBacking::open(&bpath, &real)?)
                }
            });
        }
        Ok(img)
    }

    fn from_storage(
        storage: Box<dyn Storage>,
        path: &Path,
        writable: bool,
    ) -> Result<Self, Qcow2Error> {
        let io = |op| move |e| Qcow2Error::io(op, path, e);
        let file_len = storage.file_len().map_err(io("stat"))?;
        let mut prefix = vec![0u8; (RAW_HEADER_LEN as u64).min(file_len) as usize];
        read_or_zero(storage.as_ref(), &mut prefix, 0).map_err(io("read header"))?;
        let first = Header::first_cluster_len(&prefix, file_len)?;
        let mut buf = vec![0u8; first as usize];
        read_or_zero(storage.as_ref(), &mut buf, 0).map_err(io("read header"))?;
        let header = Header::parse(&buf, file_len)?;
        if writable {
            let refuse = |reason| Qcow2Error::NotWritable {
                path: path.to_path_buf(),
                reason,
            };
            if header.version != 3 {
                return Err(refuse("version 2 images are opened read-only"));
            }
            if header.incompatible & INCOMPAT_DIRTY != 0 {
                return Err(refuse(
                    "dirty bit set (lazy refcounts); run qemu-img check -r all",
                ));
            }
            if header.incompatible & INCOMPAT_CORRUPT != 0 {
                return Err(refuse("corrupt bit set"));
            }
            if header.nb_snapshots != 0 {
                return Err(refuse("internal snapshots"));
            }
        }
        let geo = Geo::new(&header);
        let core = Core {
            storage,
            path: path.to_path_buf(),
            geo,
        };
        let mut l1_bytes = vec![0u8; header.l1_size as usize * 8];
        core.read_exact(&mut l1_bytes, header.l1_table_offset, "read L1 table")?;
        let l1: Vec<u64> = l1_bytes
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        let rc = if writable {
            let cs = geo.cluster_size;
            let clusters = u64::from(header.refcount_table_clusters);
            let mut t = vec![0u8; (clusters * cs) as usize];
            core.read_exact(&mut t, header.refcount_table_offset, "read refcount table")?;
            let table = t
                .chunks_exact(8)
                .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .map(|e| e & !0x1ff)
                .collect();
            if header.autoclear != 0 {
                core.write(&[0u8; 8], OFF_AUTOCLEAR, "clear autoclear features")?;
                core.sync("sync header")?;
            }
            Some(Refcounts::new(
                table,
                header.refcount_table_offset,
                clusters,
                cs,
            ))
        } else {
            None
        };
        let meta = Meta::new(&core, l1, header.l1_table_offset, rc, file_len);
        Ok(Self {
            core,
            header,
            writable,
            backing: None,
            meta: Mutex::new(meta),
            cv: Condvar::new(),
            lock_file: None,
        })
    }

    /// The path the image was opened with.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.core.path
    }

    /// Virtual size in bytes.
    #[must_use]
    pub fn virtual_size(&self) -> u64 {
        self.core.geo.virtual_size
    }

    /// Cluster size in bytes.
    #[must_use]
    pub fn cluster_size(&self) -> u64 {
        self.core.geo.cluster_size
    }

    /// Whether the image is open for writing.
    #[must_use]
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// The backing file, if any.
    #[must_use]
    pub fn backing(&self) -> Option<&Backing> {
        self.backing.as_ref()
    }

    /// Header facts about this image and its whole chain.
    #[must_use]
    pub fn info(&self) -> ImageInfo {
        let h = &self.header;
        let file_length = {
            let m = self.lock_meta();
            self.core.storage.file_len().unwrap_or(0).max(m.eof)
        };
        ImageInfo {
            path: self.core.path.clone(),
            version: h.version,
            virtual_size: h.virtual_size,
            cluster_size: h.cluster_size(),
            extended_l2: h.extended_l2(),
            refcount_bits: 1 << h.refcount_order,
            backing_file: h.backing_file.clone(),
            backing_format: h.backing_format,
            compression: h.compression,
            file_length,
            dirty: h.incompatible & INCOMPAT_DIRTY != 0,
            corrupt: h.incompatible & INCOMPAT_CORRUPT != 0,
            snapshots: h.nb_snapshots,
            backing: self.backing.as_ref().map(|b| {
                Box::new(match b {
                    Backing::Qcow2(i) => BackingInfo::Qcow2(i.info()),
                    Backing::Raw(r) => BackingInfo::Raw {
                        path: r.path.clone(),
                        size: r.size,
                    },
                })
            }),
        }
    }

    pub(crate) fn lock_meta(&self) -> MutexGuard<'_, Meta> {
        self.meta.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn check_range(&self, offset: u64, length: u64) -> Result<(), Qcow2Error> {
        let vs = self.core.geo.virtual_size;
        if offset.checked_add(length).is_none_or(|end| end > vs) {
            return Err(Qcow2Error::OutOfRange {
                offset,
                length,
                virtual_size: vs,
            });
        }
        Ok(())
    }

    fn check_writable(&self) -> Result<(), Qcow2Error> {
        if self.writable {
            Ok(())
        } else {
            Err(Qcow2Error::ReadOnly {
                path: self.core.path.clone(),
            })
        }
    }

    /// Granule states of a cluster from its L2 entry.
    pub(crate) fn granules(
        &self,
        e: u64,
        bm: u64,
        file_len: u64,
    ) -> Result<Vec<Granule>, Qcow2Error> {
        let geo = &self.core.geo;
        if e & OFLAG_COMPRESSED != 0 {
            return Ok(vec![Granule::Compressed; geo.granules as usize]);
        }
        let host = e & L2E_OFFSET_MASK;
        let check_host = || {
            if !host.is_multiple_of(geo.cluster_size) {
                return Err(Qcow2Error::Corrupt {
                    what: "misaligned data cluster offset",
                    offset: host,
                });
            }
            if host >= file_len {
                return Err(Qcow2Error::Corrupt {
                    what: "data cluster beyond end of file",
                    offset: host,
                });
            }
            Ok(())
        };
        if !geo.extended {
            let g = if geo.version >= 3 && e & OFLAG_ZERO != 0 {
                Granule::Zero
            } else if host == 0 {
                Granule::Unalloc
            } else {
                check_host()?;
                Granule::Data(host)
            };
            return Ok(vec![g]);
        }
        let alloc = bm & 0xffff_ffff;
        let zero = bm >> 32;
        if alloc & zero != 0 {
            return Err(Qcow2Error::Corrupt {
                what: "subcluster both allocated and zero",
                offset: host,
            });
        }
        if alloc != 0 {
            if host == 0 {
                return Err(Qcow2Error::Corrupt {
                    what: "allocated subclusters without host cluster",
                    offset: 0,
                });
            }
            check_host()?;
        }
        Ok((0..32)
            .map(|g| {
                if alloc & (1 << g) != 0 {
                    Granule::Data(host + g * geo.granule)
                } else if zero & (1 << g) != 0 {
                    Granule::Zero
                } else {
                    Granule::Unalloc
                }
            })
            .collect())
    }

    /// Reads `buf.len()` bytes at guest `offset`, through the backing chain.
    ///
    /// # Errors
    /// [`Qcow2Error::OutOfRange`] past the virtual size; I/O errors; corrupt metadata.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), Qcow2Error> {
        let len = buf.len() as u64;
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let (segs, file_len) = {
            let mut m = self.lock_meta();
            (self.read_plan(&mut m, offset, len)?, m.file_len)
        };
        let mut cached: Option<(u64, Vec<u8>)> = None;
        for s in segs {
            let start = (s.guest - offset) as usize;
            let out = &mut buf[start..start + s.len as usize];
            match s.src {
                ReadSrc::Host(h) => self.core.read_data(out, h)?,
                ReadSrc::Zero => out.fill(0),
                ReadSrc::Backing => self.read_backing(out, s.guest)?,
                ReadSrc::Compressed { entry, within } => {
                    if cached.as_ref().is_none_or(|(e, _)| *e != entry) {
                        cached = Some((entry, self.decompress(entry, file_len)?));
                    }
                    if let Some((_, data)) = &cached {
                        out.copy_from_slice(&data[within as usize..(within + s.len) as usize]);
                    }
                }
            }
        }
        Ok(())
    }

    fn read_plan(&self, m: &mut Meta, offset: u64, len: u64) -> Result<Vec<ReadSeg>, Qcow2Error> {
        let geo = self.core.geo;
        let cs = geo.cluster_size;
        let mut segs: Vec<ReadSeg> = Vec::new();
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let gc = pos / cs;
            let cbase = gc * cs;
            let cend = (cbase + cs).min(end);
            if m.l2_missing(&self.core, gc) {
                let l2_end = ((gc / geo.l2_entries + 1) * geo.l2_entries * cs).min(end);
                push_seg(&mut segs, pos, l2_end - pos, ReadSrc::Backing);
                pos = l2_end;
                continue;
            }
            let (e, bm) = m.entry(&self.core, gc)?;
            let gs = self.granules(e, bm, m.file_len)?;
            while pos < cend {
                let within = pos - cbase;
                let g = within / geo.granule;
                let gend = (cbase + (g + 1) * geo.granule).min(cend);
                let n = gend - pos;
                let src = match gs[g as usize] {
                    Granule::Unalloc => ReadSrc::Backing,
                    Granule::Zero => ReadSrc::Zero,
                    Granule::Data(h) => ReadSrc::Host(h + (within - g * geo.granule)),
                    Granule::Compressed => ReadSrc::Compressed { entry: e, within },
                };
                push_seg(&mut segs, pos, n, src);
                pos = gend;
            }
        }
        Ok(segs)
    }

    fn read_backing(&self, out: &mut [u8], guest: u64) -> Result<(), Qcow2Error> {
        match &self.backing {
            None => {
                out.fill(0);
                Ok(())
            }
            Some(b) => b.read_at(out, guest),
        }
    }

    /// Inflates the compressed cluster described by L2 entry `e`.
    pub(crate) fn decompress(&self, e: u64, file_len: u64) -> Result<Vec<u8>, Qcow2Error> {
        let geo = self.core.geo;
        let x = 62 - (geo.cluster_bits - 8);
        let off = e & ((1u64 << x) - 1);
        let sectors = ((e & !OFLAG_COMPRESSED & !OFLAG_COPIED) >> x) + 1;
        let size = sectors * 512 - (off & 511);
        if off >= file_len {
            return Err(Qcow2Error::Corrupt {
                what: "compressed cluster beyond end of file",
                offset: off,
            });
        }
        let size = size.min(file_len - off);
        let mut input = vec![0u8; size as usize];
        self.core
            .read_exact(&mut input, off, "read compressed cluster")?;
        let mut out = vec![0u8; geo.cluster_size as usize];
        let mut d = Decompress::new(false);
        let status = d
            .decompress(&input, &mut out, FlushDecompress::Finish)
            .map_err(|_| Qcow2Error::Decompress { offset: off })?;
        let full = d.total_out() == geo.cluster_size;
        match status {
            Status::StreamEnd | Status::Ok | Status::BufError if full => Ok(out),
            _ => Err(Qcow2Error::Decompress { offset: off }),
        }
    }

    /// Writes `buf` at guest `offset`, allocating clusters and copying the rest of partially
    /// written clusters (subclusters with extended L2) from the backing chain.
    ///
    /// # Errors
    /// Read-only image, out of range, I/O errors, corrupt metadata.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), Qcow2Error> {
        self.check_writable()?;
        let len = buf.len() as u64;
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let cs = self.core.geo.cluster_size;
        let first = offset / cs;
        let last = (offset + len - 1) / cs;
        let mut m = self.lock_meta();
        m = self.claim(m, first, last + 1);
        let plan = match self.write_plan(&mut m, buf, offset) {
            Ok(p) => p,
            Err(e) => {
                self.release(m, first, last + 1);
                return Err(e);
            }
        };
        let file_len = m.file_len;
        drop(m);
        let io = self.write_data(&plan, buf, file_len);
        let mut m = self.lock_meta();
        let res = match io {
            Ok(()) => self.publish(&mut m, &plan),
            Err(e) => {
                for p in plan.iter().filter(|p| p.needs_alloc) {
                    m.free_later(p.host / cs, 1);
                }
                Err(e)
            }
        };
        self.release(m, first, last + 1);
        res
    }

    /// Waits until no guest cluster in `[lo, hi)` is in flight, then marks them all.
    fn claim<'a>(&self, mut m: MutexGuard<'a, Meta>, lo: u64, hi: u64) -> MutexGuard<'a, Meta> {
        while (lo..hi).any(|c| m.inflight.contains(&c)) {
            m = self.cv.wait(m).unwrap_or_else(PoisonError::into_inner);
        }
        m.inflight.extend(lo..hi);
        m
    }

    fn release(&self, mut m: MutexGuard<'_, Meta>, lo: u64, hi: u64) {
        for c in lo..hi {
            m.inflight.remove(&c);
        }
        drop(m);
        self.cv.notify_all();
    }

    fn write_plan(
        &self,
        m: &mut Meta,
        buf: &[u8],
        offset: u64,
    ) -> Result<Vec<ClusterPlan>, Qcow2Error> {
        let geo = self.core.geo;
        let cs = geo.cluster_size;
        let sg = geo.granule;
        let end = offset + buf.len() as u64;
        let mut plans = Vec::new();
        let mut pos = offset;
        while pos < end {
            let gc = pos / cs;
            let cbase = gc * cs;
            let a = pos - cbase;
            let b = (end - cbase).min(cs);
            let (e, bm) = m.entry(&self.core, gc)?;
            let prior = self.granules(e, bm, m.file_len)?;
            let host_existing = e & L2E_OFFSET_MASK;
            let compressed = e & OFLAG_COMPRESSED != 0;
            let in_place = !compressed && host_existing != 0 && e & OFLAG_COPIED != 0;
            let (g_lo, g_hi, free_old) = if in_place {
                (a / sg, b.div_ceil(sg), None)
            } else if compressed {
                (0, geo.granules, Some(compressed_clusters(&geo, e)))
            } else if host_existing != 0 {
                (0, geo.granules, Some((host_existing / cs, 1)))
            } else if geo.extended {
                (a / sg, b.div_ceil(sg), None)
            } else {
                (0, 1, None)
            };
            let fill_mask = ((1u64 << g_hi) - 1) & !((1u64 << g_lo) - 1);
            let new_entry = if geo.extended {
                let (alloc, zero) = if in_place {
                    (bm & 0xffff_ffff, bm >> 32)
                } else {
                    (0, bm >> 32)
                };
                let nb = ((alloc | fill_mask) & 0xffff_ffff)
                    | (((zero & !fill_mask) & 0xffff_ffff) << 32);
                (!in_place || nb != bm).then_some((0, nb))
            } else {
                (!in_place || e & OFLAG_ZERO != 0).then_some((0, 0))
            };
            plans.push(ClusterPlan {
                gc,
                a,
                b,
                buf_off: (pos - offset) as usize,
                host: if in_place { host_existing } else { 0 },
                in_place,
                g_lo,
                g_hi,
                prior,
                old_entry: e,
                new_entry,
                free_old,
                needs_alloc: !in_place,
            });
            pos = cbase + b;
        }
        for p in plans.iter().filter(|p| p.new_entry.is_some()) {
            m.ensure_l2(&self.core, p.gc)?;
        }
        let n = plans.iter().filter(|p| p.needs_alloc).count() as u64;
        if n > 0 {
            let mut host = m.alloc(&self.core, n)?;
            for p in plans.iter_mut().filter(|p| p.needs_alloc) {
                p.host = host;
                host += cs;
            }
        }
        for p in &mut plans {
            if let Some((_, nb)) = p.new_entry {
                p.new_entry = Some((p.host | OFLAG_COPIED, nb));
            }
        }
        Ok(plans)
    }

    fn write_data(
        &self,
        plans: &[ClusterPlan],
        buf: &[u8],
        file_len: u64,
    ) -> Result<(), Qcow2Error> {
        let geo = self.core.geo;
        let sg = geo.granule;
        let mut pieces: Vec<Piece> = Vec::new();
        for p in plans {
            let mut decompressed: Option<Vec<u8>> = None;
            for g in p.g_lo..p.g_hi {
                let glo = g * sg;
                let ghi = glo + sg;
                let cov_lo = glo.max(p.a);
                let cov_hi = ghi.min(p.b);
                let user = |lo: u64, hi: u64| (p.buf_off + (lo - p.a) as usize, (hi - lo) as usize);
                if cov_lo == glo && cov_hi == ghi {
                    let (s, n) = user(glo, ghi);
                    push_piece(&mut pieces, Piece::User(p.host + glo, s, n));
                    continue;
                }
                let prior = p.prior[g as usize];
                if p.in_place && matches!(prior, Granule::Data(_)) {
                    if cov_lo < cov_hi {
                        let (s, n) = user(cov_lo, cov_hi);
                        push_piece(&mut pieces, Piece::User(p.host + cov_lo, s, n));
                    }
                    continue;
                }
                let mut data = vec![0u8; sg as usize];
                match prior {
                    Granule::Zero => {}
                    Granule::Unalloc => {
                        self.read_backing(&mut data, p.gc * geo.cluster_size + glo)?;
                    }
                    Granule::Data(h) => {
                        self.core
                            .read_exact(&mut data, h, "read for copy-on-write")?;
                    }
                    Granule::Compressed => {
                        if decompressed.is_none() {
                            decompressed = Some(self.decompress(p.old_entry, file_len)?);
                        }
                        if let Some(d) = &decompressed {
                            data.copy_from_slice(&d[glo as usize..ghi as usize]);
                        }
                    }
                }
                if cov_lo < cov_hi {
                    let (s, n) = user(cov_lo, cov_hi);
                    data[(cov_lo - glo) as usize..(cov_hi - glo) as usize]
                        .copy_from_slice(&buf[s..s + n]);
                }
                push_piece(&mut pieces, Piece::Owned(p.host + glo, data));
            }
        }
        for piece in &pieces {
            match piece {
                Piece::User(h, s, n) => {
                    self.core.write_data(&buf[*s..*s + *n], *h, "write data")?;
                }
                Piece::Owned(h, d) => self.core.write_data(d, *h, "write data")?,
            }
        }
        Ok(())
    }

    fn publish(&self, m: &mut Meta, plans: &[ClusterPlan]) -> Result<(), Qcow2Error> {
        for p in plans {
            if let Some((e, bm)) = p.new_entry {
                m.set_entry(&self.core, p.gc, e, bm)?;
            }
            if let Some((first, count)) = p.free_old {
                m.free_later(first, count);
            }
        }
        Ok(())
    }

    /// Makes `[offset, offset + len)` read as zeros.
    ///
    /// Whole clusters get the zero flag where a backing file or earlier data exists (their
    /// data clusters are freed) and stay unallocated in a standalone image; partial clusters
    /// get zeros written (copy-on-write), unless they already read as zeros in this image.
    ///
    /// # Errors
    /// Read-only image, out of range, I/O errors, corrupt metadata.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), Qcow2Error> {
        self.check_writable()?;
        self.check_range(offset, len)?;
        self.zero_range(offset, len, false)
    }

    /// Discards whole clusters in `[offset, offset + len)`; partial clusters at either end are
    /// left unchanged.
    ///
    /// In a standalone image a discarded cluster becomes unallocated (reads zeros). In an
    /// overlay it gets the zero flag instead, so backing data is never exposed: discarded
    /// clusters always read as zeros. Their host clusters are freed.
    ///
    /// # Errors
    /// Read-only image, out of range, I/O errors, corrupt metadata.
    pub fn discard(&self, offset: u64, len: u64) -> Result<(), Qcow2Error> {
        self.check_writable()?;
        self.check_range(offset, len)?;
        let cs = self.core.geo.cluster_size;
        let lo = offset.next_multiple_of(cs);
        let hi = (offset + len) / cs * cs;
        if lo < hi {
            self.zero_clusters(lo / cs, hi / cs, true)?;
        }
        Ok(())
    }

    fn zero_range(&self, offset: u64, len: u64, discard: bool) -> Result<(), Qcow2Error> {
        let cs = self.core.geo.cluster_size;
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let cbase = pos / cs * cs;
            let cend = (cbase + cs).min(end);
            if pos == cbase && cend == cbase + cs {
                let whole_end = end / cs * cs;
                self.zero_clusters(cbase / cs, whole_end / cs, discard)?;
                pos = whole_end;
            } else {
                self.zero_partial(pos, cend - pos)?;
                pos = cend;
            }
        }
        Ok(())
    }

    fn zero_partial(&self, offset: u64, len: u64) -> Result<(), Qcow2Error> {
        let geo = self.core.geo;
        let gc = offset / geo.cluster_size;
        let already_zero = {
            let mut m = self.lock_meta();
            let (e, bm) = m.entry(&self.core, gc)?;
            let gs = self.granules(e, bm, m.file_len)?;
            let within = offset % geo.cluster_size;
            let g_lo = within / geo.granule;
            let g_hi = (within + len).div_ceil(geo.granule);
            gs[g_lo as usize..g_hi as usize]
                .iter()
                .all(|g| *g == Granule::Zero || (*g == Granule::Unalloc && self.backing.is_none()))
        };
        if already_zero {
            return Ok(());
        }
        let zeros = vec![0u8; len as usize];
        self.write_at(&zeros, offset)
    }

    fn zero_clusters(&self, lo: u64, hi: u64, discard: bool) -> Result<(), Qcow2Error> {
        let geo = self.core.geo;
        let cs = geo.cluster_size;
        let mut start = lo;
        while start < hi {
            let stop = (start + ZERO_BATCH).min(hi);
            let mut m = self.lock_meta();
            m = self.claim(m, start, stop);
            let res = (|| {
                for gc in start..stop {
                    let standalone = self.backing.is_none();
                    if standalone && m.l2_missing(&self.core, gc) {
                        continue;
                    }
                    let (e, bm) = m.entry(&self.core, gc)?;
                    let target = if standalone && (discard || (e == 0 && bm == 0)) {
                        (0, 0)
                    } else if geo.extended {
                        (0, 0xffff_ffffu64 << 32)
                    } else {
                        (OFLAG_ZERO, 0)
                    };
                    if (e, bm) == target {
                        continue;
                    }
                    m.ensure_l2(&self.core, gc)?;
                    m.set_entry(&self.core, gc, target.0, target.1)?;
                    if e & OFLAG_COMPRESSED != 0 {
                        let (first, count) = compressed_clusters(&geo, e);
                        m.free_later(first, count);
                    } else if e & L2E_OFFSET_MASK != 0 {
                        m.free_later((e & L2E_OFFSET_MASK) / cs, 1);
                    }
                }
                Ok(())
            })();
            self.release(m, start, stop);
            res?;
            start = stop;
        }
        Ok(())
    }

    /// Allocation state of `[offset, offset + len)` in this layer only.
    ///
    /// # Errors
    /// Out of range, I/O errors, corrupt metadata.
    pub fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, Qcow2Error> {
        self.check_range(offset, len)?;
        let geo = self.core.geo;
        let cs = geo.cluster_size;
        let mut out = Vec::new();
        let end = offset + len;
        let mut m = self.lock_meta();
        let mut pos = offset;
        while pos < end {
            let gc = pos / cs;
            let cbase = gc * cs;
            if m.l2_missing(&self.core, gc) {
                let l2_end = ((gc / geo.l2_entries + 1) * geo.l2_entries * cs).min(end);
                push_extent(&mut out, pos, l2_end - pos, ExtentState::Unallocated);
                pos = l2_end;
                continue;
            }
            let (e, bm) = m.entry(&self.core, gc)?;
            let gs = self.granules(e, bm, m.file_len)?;
            let cend = (cbase + cs).min(end);
            while pos < cend {
                let g = (pos - cbase) / geo.granule;
                let gend = (cbase + (g + 1) * geo.granule).min(cend);
                let state = match gs[g as usize] {
                    Granule::Unalloc => ExtentState::Unallocated,
                    Granule::Zero => ExtentState::Zero,
                    Granule::Data(_) | Granule::Compressed => ExtentState::Data,
                };
                push_extent(&mut out, pos, gend - pos, state);
                pos = gend;
            }
        }
        Ok(out)
    }

    /// Allocation state of `[offset, offset + len)` resolved through the whole chain: only
    /// [`ExtentState::Data`] and [`ExtentState::Zero`].
    ///
    /// # Errors
    /// Out of range, I/O errors, corrupt metadata.
    pub fn chain_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, Qcow2Error> {
        let mut out = Vec::new();
        for ext in self.block_status(offset, len)? {
            if ext.state != ExtentState::Unallocated {
                push_extent(&mut out, ext.offset, ext.length, ext.state);
                continue;
            }
            match &self.backing {
                None => push_extent(&mut out, ext.offset, ext.length, ExtentState::Zero),
                Some(b) => {
                    for sub in b.chain_status(ext.offset, ext.length)? {
                        push_extent(&mut out, sub.offset, sub.length, sub.state);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Makes all data and metadata written so far durable (see [`crate::meta`] for the order).
    ///
    /// # Errors
    /// I/O errors.
    pub fn flush(&self) -> Result<(), Qcow2Error> {
        if !self.writable {
            return Ok(());
        }
        let mut m = self.lock_meta();
        m.flush(&self.core)
    }

    /// Cuts off the space preallocated past the last allocated cluster (writable images with
    /// direct I/O keep some ahead of their writes). Close and [`Self::finalize`] do it; call it
    /// before a last flush when the image stays shared. Writes after it preallocate again.
    ///
    /// # Errors
    /// I/O errors.
    pub fn trim_preallocation(&self) -> Result<(), Qcow2Error> {
        if !self.writable {
            return Ok(());
        }
        self.lock_meta().trim_preallocation(&self.core)
    }

    /// Flushes, `fsync`s, renames the image onto `final_path` and `fsync`s its folder.
    ///
    /// # Errors
    /// I/O errors.
    pub fn finalize(self, final_path: &Path) -> Result<(), Qcow2Error> {
        self.trim_preallocation()?;
        self.flush()?;
        self.core
            .storage
            .sync_all()
            .map_err(|e| Qcow2Error::io("fsync", &self.core.path, e))?;
        fs::rename(&self.core.path, final_path)
            .map_err(|e| Qcow2Error::io("rename", &self.core.path, e))?;
        let dir = match final_path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Qcow2Error::io("fsync folder", dir, e))?;
        Ok(())
    }

    pub(crate) fn reload_metadata(&self) -> Result<(), Qcow2Error> {
        let mut m = self.lock_meta();
        m.reload(&self.core)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        if self.writable {
            let m = self.meta.get_mut().unwrap_or_else(PoisonError::into_inner);
            if let Err(e) = m.trim_preallocation(&self.core) {
                tracing::error!(path = %self.core.path.display(), error = %e, "trimming preallocated space on close failed");
            }
            if m.is_dirty()
                && let Err(e) = m.flush(&self.core)
            {
                tracing::error!(path = %self.core.path.display(), error = %e, "flush on close failed");
            }
        }
    }
}

fn push_seg(segs: &mut Vec<ReadSeg>, guest: u64, len: u64, src: ReadSrc) {
    if let Some(last) = segs.last_mut()
        && last.guest + last.len == guest
    {
        let merge = match (&last.src, &src) {
            (ReadSrc::Host(a), ReadSrc::Host(b)) => a + last.len == *b,
            (ReadSrc::Zero, ReadSrc::Zero) | (ReadSrc::Backing, ReadSrc::Backing) => true,
            _ => false,
        };
        if merge {
            last.len += len;
            return;
        }
    }
    segs.push(ReadSeg { guest, len, src });
}

fn push_piece(pieces: &mut Vec<Piece>, piece: Piece) {
    match (pieces.last_mut(), piece) {
        (Some(Piece::Owned(h, d)), Piece::Owned(h2, d2)) if *h + d.len() as u64 == h2 => {
            d.extend_from_slice(&d2);
        }
        (Some(Piece::User(h, s, n)), Piece::User(h2, s2, n2))
            if *h + *n as u64 == h2 && *s + *n == s2 =>
        {
            *n += n2;
        }
        (_, piece) => pieces.push(piece),
    }
}

/// Host clusters spanned by a compressed cluster descriptor: (first cluster, count).
pub(crate) fn compressed_clusters(geo: &Geo, e: u64) -> (u64, u64) {
    let x = 62 - (geo.cluster_bits - 8);
    let off = e & ((1u64 << x) - 1);
    let sectors = ((e & !OFLAG_COMPRESSED & !OFLAG_COPIED) >> x) + 1;
    let size = sectors * 512 - (off & 511);
    let first = off / geo.cluster_size;
    let last = (off + size - 1) / geo.cluster_size;
    (first, last - first + 1)
}

/// A file-system chain being opened: what passes from layer to layer.
#[derive(Debug)]
struct FileChain {
    /// The image the caller opened.
    top: PathBuf,
    /// Canonical folder of `top`, once a backing file needs it.
    root: Option<PathBuf>,
    limit: usize,
    policy: BackingPolicy,
    /// The top image's own backing file is the caller's choice (`create`), not the policy's.
    trust_first: bool,
    /// Canonical paths of the layers opened so far.
    seen: Vec<PathBuf>,
}

impl FileChain {
    fn new(top: &Path, limit: usize, policy: BackingPolicy) -> Self {
        Self {
            top: top.to_path_buf(),
            root: None,
            limit,
            policy,
            trust_first: false,
            seen: Vec::new(),
        }
    }

    /// The folder backing files must stay in: the canonical folder of the opened image.
    fn root(&mut self) -> Result<PathBuf, Qcow2Error> {
        if let Some(r) = &self.root {
            return Ok(r.clone());
        }
        let dir = match self.top.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let r = fs::canonicalize(dir).map_err(|e| Qcow2Error::io("resolve", dir, e))?;
        self.root = Some(r.clone());
        Ok(r)
    }
}

/// An in-memory chain being opened.
#[derive(Debug)]
struct MemChain<'a> {
    limit: usize,
    policy: BackingPolicy,
    folder: &'a MemFolder,
    seen: Vec<PathBuf>,
}

fn probe_format(s: &dyn Storage, path: &Path) -> Result<BackingFormat, Qcow2Error> {
    let mut magic = [0u8; 4];
    read_or_zero(s, &mut magic, 0).map_err(|e| Qcow2Error::io("probe backing", path, e))?;
    Ok(if u32::from_be_bytes(magic) == QCOW2_MAGIC {
        BackingFormat::Qcow2
    } else {
        BackingFormat::Raw
    })
}

fn create_header(opts: &CreateOptions) -> Result<Header, Qcow2Error> {
    let cs = opts.cluster_size;
    if !cs.is_power_of_two() {
        return Err(Qcow2Error::InvalidOptions {
            reason: "cluster size must be a power of two",
        });
    }
    let cluster_bits = cs.trailing_zeros();
    if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
        return Err(Qcow2Error::InvalidOptions {
            reason: "cluster size must be 512 B to 2 MiB",
        });
    }
    if opts.extended_l2 && cluster_bits < MIN_EXTENDED_L2_CLUSTER_BITS {
        return Err(Qcow2Error::InvalidOptions {
            reason: "extended L2 needs clusters of 16 KiB or more",
        });
    }
    if opts.virtual_size == 0 || !opts.virtual_size.is_multiple_of(512) {
        return Err(Qcow2Error::InvalidOptions {
            reason: "virtual size must be a non-zero multiple of 512",
        });
    }
    if opts.virtual_size > crate::parse::MAX_VIRTUAL_SIZE {
        return Err(Qcow2Error::InvalidOptions {
            reason: "virtual size too large",
        });
    }
    if let Some(b) = &opts.backing
        && (b.file.is_empty() || b.file.len() > MAX_BACKING_NAME as usize)
    {
        return Err(Qcow2Error::InvalidOptions {
            reason: "backing file name must be 1 to 1023 bytes",
        });
    }
    let csz = u64::from(cs);
    let entry = if opts.extended_l2 { 16 } else { 8 };
    let l1_size = opts.virtual_size.div_ceil((csz / entry) * csz);
    if l1_size > crate::parse::MAX_L1_ENTRIES {
        return Err(Qcow2Error::InvalidOptions {
            reason: "virtual size too large for the cluster size",
        });
    }
    Ok(Header {
        version: 3,
        cluster_bits,
        virtual_size: opts.virtual_size,
        l1_size: l1_size as u32,
        l1_table_offset: 0,
        refcount_table_offset: 0,
        refcount_table_clusters: 0,
        nb_snapshots: 0,
        snapshots_offset: 0,
        incompatible: if opts.extended_l2 { INCOMPAT_EXTL2 } else { 0 },
        compatible: 0,
        autoclear: 0,
        refcount_order: 4,
        header_length: RAW_HEADER_LEN as u32,
        compression: CompressionType::Zlib,
        backing_file: opts.backing.as_ref().map(|b| b.file.clone()),
        backing_format: opts.backing.as_ref().map(|b| b.format),
        feature_names: default_feature_names(),
    })
}

/// Lays out a new image: header cluster, refcount table, refcount blocks, L1 table; every
/// cluster has refcount 1. Returns the whole initial file.
fn create_layout(header: &Header) -> Result<Vec<u8>, Qcow2Error> {
    let mut h = header.clone();
    let cs = h.cluster_size();
    let l1_clusters = (u64::from(h.l1_size) * 8).div_ceil(cs).max(1);
    let per_block = cs * 8 / 16;
    let per_table_cluster = cs / 8;
    let (mut t, mut b) = (1u64, 1u64);
    loop {
        let n = 1 + t + b + l1_clusters;
        let nb = n.div_ceil(per_block);
        let nt = nb.div_ceil(per_table_cluster);
        if nb == b && nt == t {
            break;
        }
        b = nb.max(b);
        t = nt.max(t);
    }
    let total = 1 + t + b + l1_clusters;
    h.refcount_table_offset = cs;
    h.refcount_table_clusters = u32::try_from(t).map_err(|_| Qcow2Error::TooLarge {
        what: "refcount table",
    })?;
    h.l1_table_offset = (1 + t + b) * cs;
    let mut out = h.encode()?;
    let len = usize::try_from(total * cs).map_err(|_| Qcow2Error::TooLarge { what: "metadata" })?;
    out.resize(len, 0);
    for i in 0..b {
        let at = (cs + i * 8) as usize;
        out[at..at + 8].copy_from_slice(&((1 + t + i) * cs).to_be_bytes());
    }
    let blocks_start = ((1 + t) * cs) as usize;
    for c in 0..total {
        let at = blocks_start + (c * 2) as usize;
        out[at..at + 2].copy_from_slice(&1u16.to_be_bytes());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;

    fn mem_image(size: u64, cs: u32) -> Image {
        let header = create_header(&CreateOptions::new(size).cluster_size(cs)).unwrap();
        let bytes = create_layout(&header).unwrap();
        Image::open_storage(Box::new(MemStorage::new(bytes)), &OpenOptions::writable()).unwrap()
    }

    fn data(seed: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn image_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Image>();
        assert_send_sync::<Backing>();
    }

    #[test]
    fn tiny_caches_evict_and_keep_content() {
        let img = mem_image(4 << 20, 512);
        {
            let mut m = img.lock_meta();
            m.set_cache_caps_for_test(1, 1);
        }
        let mut expected = vec![0u8; 4 << 20];
        for (i, off) in [0u64, 70_000, 1 << 20, 3 << 20, 33_000, 2_000_000]
            .into_iter()
            .enumerate()
        {
            let d = data(i as u8, 40_000);
            img.write_at(&d, off).unwrap();
            expected[off as usize..off as usize + d.len()].copy_from_slice(&d);
        }
        img.write_zeroes(1 << 20, 512 * 10).unwrap();
        expected[1 << 20..(1 << 20) + 5120].fill(0);
        let mut got = vec![0u8; expected.len()];
        img.read_at(&mut got, 0).unwrap();
        assert!(got == expected);
        let report = img.check().unwrap();
        assert!(report.is_clean(), "{report:?}");
    }

    #[test]
    fn refcount_table_growth_keeps_image_consistent() {
        let img = mem_image(16 << 20, 512);
        let d = data(7, 12 << 20);
        img.write_at(&d, 0).unwrap();
        let report = img.check().unwrap();
        assert!(report.is_clean(), "{report:?}");
        let mut got = vec![0u8; d.len()];
        img.read_at(&mut got, 0).unwrap();
        assert!(got == d);
    }

    #[test]
    fn create_layout_refcounts_cover_metadata() {
        let img = mem_image(64 << 20, 512);
        let report = img.check().unwrap();
        assert!(report.is_clean(), "{report:?}");
    }

    /// Records every write, length change and sync, to replay crashes.
    #[derive(Debug, Default)]
    struct Recorder {
        mem: MemStorage,
        log: Mutex<Vec<Rec>>,
    }

    #[derive(Debug, Clone)]
    enum Rec {
        Write(u64, Vec<u8>),
        SetLen(u64),
        Sync,
    }

    impl Storage for std::sync::Arc<Recorder> {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
            self.mem.read_at(buf, offset)
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
            self.log
                .lock()
                .unwrap()
                .push(Rec::Write(offset, buf.to_vec()));
            self.mem.write_at(buf, offset)
        }
        fn file_len(&self) -> std::io::Result<u64> {
            self.mem.file_len()
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.log.lock().unwrap().push(Rec::SetLen(len));
            self.mem.set_len(len)
        }
        fn sync_data(&self) -> std::io::Result<()> {
            self.log.lock().unwrap().push(Rec::Sync);
            Ok(())
        }
        fn sync_all(&self) -> std::io::Result<()> {
            self.sync_data()
        }
    }

    fn apply(image: &mut Vec<u8>, rec: &Rec) {
        match rec {
            Rec::Write(off, d) => {
                let end = *off as usize + d.len();
                if image.len() < end {
                    image.resize(end, 0);
                }
                image[*off as usize..end].copy_from_slice(d);
            }
            Rec::SetLen(n) => image.resize(*n as usize, 0),
            Rec::Sync => {}
        }
    }

    #[test]
    fn crash_at_any_sync_with_any_reordering_leaves_no_corruption() {
        // Arrange: a workload on an overlay-free image, with flushes in between.
        let header = create_header(&CreateOptions::new(4 << 20).cluster_size(4096)).unwrap();
        let initial = create_layout(&header).unwrap();
        let rec = std::sync::Arc::new(Recorder {
            mem: MemStorage::new(initial.clone()),
            ..Recorder::default()
        });
        let img = Image::open_storage(Box::new(rec.clone()), &OpenOptions::writable()).unwrap();
        {
            img.lock_meta().set_cache_caps_for_test(2, 2);
        }
        img.write_at(&data(1, 300_000), 1000).unwrap();
        img.flush().unwrap();
        img.write_at(&data(2, 100_000), 2 << 20).unwrap();
        img.write_zeroes(0, 65536).unwrap();
        img.discard(8192, 200_000).unwrap();
        img.write_at(&data(3, 5000), 3 << 20).unwrap();
        img.flush().unwrap();
        img.write_at(&data(4, 70_000), 100_000).unwrap();
        drop(img);
        let log = rec.log.lock().unwrap().clone();
        let syncs: Vec<usize> = log
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r, Rec::Sync))
            .map(|(i, _)| i)
            .collect();
        // Act + assert: crash after sync k with an arbitrary subset of the next epoch's writes.
        let mut seed = 12345u64;
        for (k, &at) in syncs.iter().enumerate() {
            let next = syncs.get(k + 1).copied().unwrap_or(log.len());
            for _ in 0..8 {
                let mut image = initial.clone();
                for r in &log[..at] {
                    apply(&mut image, r);
                }
                for r in &log[at..next] {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    if seed.is_multiple_of(2) {
                        apply(&mut image, r);
                    }
                }
                let crashed = Image::open_storage(
                    Box::new(MemStorage::new(image)),
                    &OpenOptions::read_only(),
                )
                .unwrap();
                let report = crashed.check().unwrap();
                assert_eq!(
                    report.errors,
                    0,
                    "crash after sync {k}: {:?}",
                    report.messages.first()
                );
                let mut buf = vec![0u8; 4 << 20];
                crashed.read_at(&mut buf, 0).unwrap();
            }
        }
    }
}
