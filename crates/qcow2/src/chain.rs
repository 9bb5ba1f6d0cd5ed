//! The backing chain: opened backing files ([`Backing`], [`RawBacking`]) and the walk that
//! opens them below an image, file by file on disk or from a [`MemFolder`], under the caller's
//! [`BackingPolicy`], with loop and depth checks.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use crate::backing::{self, BackingPolicy, MemFolder};
use crate::error::Qcow2Error;
use crate::image::Image;
use crate::layers::Layers;
use crate::lock::{self, LockMode};
use crate::options::{MAX_CHAIN_DEPTH, OpenOptions};
use crate::parse::BackingFormat;
use crate::raw::QCOW2_MAGIC;
use crate::storage::{FileStorage, Storage, read_or_zero};

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
    pub(crate) path: PathBuf,
    storage: Box<dyn Storage>,
    /// Keeps the OFD lock of a file on disk.
    lock_file: Option<File>,
    pub(crate) size: u64,
}

impl RawBacking {
    pub(crate) fn lock_file(&self) -> Option<&File> {
        self.lock_file.as_ref()
    }

    pub(crate) fn open(path: &Path, open_at: &Path) -> Result<Self, Qcow2Error> {
        let file = File::open(open_at).map_err(|e| Qcow2Error::io("open backing", path, e))?;
        lock::apply(&file, path, LockMode::Read)?;
        let lock_file = file
            .try_clone()
            .map_err(|e| Qcow2Error::io("dup", path, e))?;
        Self::from_storage(path, Box::new(file), Some(lock_file))
    }

    pub(crate) fn from_storage(
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
}

impl Backing {
    /// [`Self::read_at`] if nothing has to wait (see [`Image::read_at_now`]); `false` when it
    /// would.
    ///
    /// # Errors
    /// I/O errors and corrupt metadata.
    pub fn read_at_now(&self, buf: &mut [u8], offset: u64) -> Result<bool, Qcow2Error> {
        let size = self.virtual_size();
        let n = usize::try_from(size.saturating_sub(offset))
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let (head, tail) = buf.split_at_mut(n);
        tail.fill(0);
        if head.is_empty() {
            return Ok(true);
        }
        match self {
            Self::Qcow2(i) => i.read_at_now(head, offset),
            Self::Raw(r) => match r.storage.read_data_now(head, offset) {
                Ok(Some(got)) => Ok(got == head.len()),
                Ok(None) => Ok(false),
                Err(e) => Err(Qcow2Error::io("read backing", &r.path, e)),
            },
        }
    }
}

impl Image {
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
        chain.writeback = opts.writeback;
        chain.layers = opts.layers.clone();
        Self::open_layer(path, path, opts.writable, 0, &mut chain)
    }

    /// Opens the image at `path` as [`Image::open`] does, except that its own backing file name
    /// is the caller's choice and is not checked against `opts.backing`, as [`Image::create`]
    /// treats it: for images the caller wrote itself (the hub's instant-recovery overlays name
    /// a restore point's image in the repository by a relative path with `..`). The policy
    /// governs every name below that backing file, relative to the backing file's folder; the
    /// caller checks that the backing file is the one it meant ([`Backing::path`]).
    ///
    /// # Errors
    /// As [`Image::open`].
    pub fn open_trusting_backing(path: &Path, opts: &OpenOptions) -> Result<Self, Qcow2Error> {
        let limit = opts.max_chain_depth.min(MAX_CHAIN_DEPTH);
        let mut chain = FileChain::new(path, limit, opts.backing);
        chain.trust_first = true;
        chain.writeback = opts.writeback;
        chain.layers = opts.layers.clone();
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

    pub(crate) fn mem_layer(
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

    /// Opens the layer at `open_at` (its canonical path, for a backing file), known to the
    /// user as `path`. A read-only layer whose file is missing is read from the chain's
    /// [`LayerSource`](crate::LayerSource) when it holds it.
    pub(crate) fn open_layer(
        path: &Path,
        open_at: &Path,
        writable: bool,
        depth: usize,
        chain: &mut FileChain,
    ) -> Result<Self, Qcow2Error> {
        let file = match fs::OpenOptions::new()
            .read(true)
            .write(writable)
            .open(open_at)
        {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !writable => {
                let storage = chain
                    .layers
                    .open_missing(open_at)
                    .map_err(|e| Qcow2Error::io("open", path, e))?;
                return match storage {
                    Some(storage) => Self::from_source(storage, path, open_at, depth, chain),
                    None => Err(Qcow2Error::io("open", path, e)),
                };
            }
            Err(e) => return Err(Qcow2Error::io("open", path, e)),
        };
        let mode = if writable {
            LockMode::Write
        } else {
            LockMode::Read
        };
        lock::apply(&file, path, mode)?;
        Self::from_file(file, path, writable, depth, chain)
    }

    pub(crate) fn from_file(
        file: File,
        path: &Path,
        writable: bool,
        depth: usize,
        chain: &mut FileChain,
    ) -> Result<Self, Qcow2Error> {
        let canonical = fs::canonicalize(path).map_err(|e| Qcow2Error::io("resolve", path, e))?;
        let lock_file = file
            .try_clone()
            .map_err(|e| Qcow2Error::io("dup", path, e))?;
        let storage = FileStorage::with_direct_io(file, path, writable)
            .writeback(writable && depth == 0 && chain.writeback);
        let mut img =
            Self::chain_layer(Box::new(storage), path, canonical, writable, depth, chain)?;
        img.lock_file = Some(lock_file);
        Ok(img)
    }

    /// A read-only layer the chain's source gives for the missing file `open_at`.
    fn from_source(
        storage: Box<dyn Storage>,
        path: &Path,
        open_at: &Path,
        depth: usize,
        chain: &mut FileChain,
    ) -> Result<Self, Qcow2Error> {
        let canonical =
            crate::layers::would_be_at(open_at).map_err(|e| Qcow2Error::io("resolve", path, e))?;
        if depth == 0 && chain.root.is_none() && !chain.trust_first {
            // The top layer itself is missing (its folder may be too): the folder it would be
            // in is the root backing files must stay in.
            chain.root = canonical.parent().map(Path::to_path_buf);
        }
        Self::chain_layer(storage, path, canonical, false, depth, chain)
    }

    /// The layer in `storage` (whose file is, or would be, `canonical`) and the chain below it.
    fn chain_layer(
        storage: Box<dyn Storage>,
        path: &Path,
        canonical: PathBuf,
        writable: bool,
        depth: usize,
        chain: &mut FileChain,
    ) -> Result<Self, Qcow2Error> {
        if chain.seen.contains(&canonical) {
            return Err(Qcow2Error::BackingLoop { path: canonical });
        }
        chain.seen.push(canonical);
        let mut img = Self::from_storage(storage, path, writable)?;
        if let Some(name) = img.header.backing_file.clone() {
            let (bpath, real) = if depth == 0 && chain.trust_first {
                let (bpath, real) = backing::resolve_file(
                    &BackingPolicy::any(),
                    path,
                    &name,
                    Path::new("/"),
                    &chain.layers,
                )?;
                chain.root = real.parent().map(Path::to_path_buf);
                (bpath, real)
            } else {
                let root = chain.root()?;
                backing::resolve_file(&chain.policy, path, &name, &root, &chain.layers)?
            };
            if depth + 1 > chain.limit {
                return Err(Qcow2Error::ChainTooDeep {
                    max_depth: chain.limit,
                });
            }
            let format = match img.header.backing_format {
                Some(f) => f,
                None => match File::open(&real) {
                    Ok(f) => probe_format(&f, &bpath)?,
                    Err(e) => {
                        probe_format(missing(&chain.layers, &real, &bpath, e)?.as_ref(), &bpath)?
                    }
                },
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
                    if real.exists() {
                        Backing::Raw(RawBacking::open(&bpath, &real)?)
                    } else {
                        let e = std::io::Error::from(std::io::ErrorKind::NotFound);
                        let storage = missing(&chain.layers, &real, &bpath, e)?;
                        Backing::Raw(RawBacking::from_storage(&bpath, storage, None)?)
                    }
                }
            });
        }
        Ok(img)
    }
}

/// The source's storage for the missing backing file `real` (named `bpath`); `e` (why the file
/// did not open) when there is no such layer.
fn missing(
    layers: &Layers,
    real: &Path,
    bpath: &Path,
    e: std::io::Error,
) -> Result<Box<dyn Storage>, Qcow2Error> {
    if e.kind() != std::io::ErrorKind::NotFound {
        return Err(Qcow2Error::io("open backing", bpath, e));
    }
    layers
        .open_missing(real)
        .map_err(|e| Qcow2Error::io("open backing", bpath, e))?
        .ok_or_else(|| Qcow2Error::io("open backing", bpath, e))
}

/// A file-system chain being opened: what passes from layer to layer.
#[derive(Debug)]
pub(crate) struct FileChain {
    /// The image the caller opened.
    top: PathBuf,
    /// Canonical folder of `top`, once a backing file needs it.
    root: Option<PathBuf>,
    limit: usize,
    policy: BackingPolicy,
    /// The top image's own backing file is the caller's choice (`create`), not the policy's.
    pub(crate) trust_first: bool,
    /// The top image writes small data through the page cache ([`FileStorage::writeback`]).
    pub(crate) writeback: bool,
    /// Canonical paths of the layers opened so far.
    seen: Vec<PathBuf>,
    /// Where missing read-only layers are read from.
    pub(crate) layers: Layers,
}

impl FileChain {
    pub(crate) fn new(top: &Path, limit: usize, policy: BackingPolicy) -> Self {
        Self {
            top: top.to_path_buf(),
            root: None,
            limit,
            policy,
            trust_first: false,
            writeback: false,
            seen: Vec::new(),
            layers: Layers::none(),
        }
    }

    /// The folder backing files must stay in: the canonical folder of the opened image.
    pub(crate) fn root(&mut self) -> Result<PathBuf, Qcow2Error> {
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
pub(crate) struct MemChain<'a> {
    limit: usize,
    policy: BackingPolicy,
    folder: &'a MemFolder,
    seen: Vec<PathBuf>,
}

pub(crate) fn probe_format(s: &dyn Storage, path: &Path) -> Result<BackingFormat, Qcow2Error> {
    let mut magic = [0u8; 4];
    read_or_zero(s, &mut magic, 0).map_err(|e| Qcow2Error::io("probe backing", path, e))?;
    Ok(if u32::from_be_bytes(magic) == QCOW2_MAGIC {
        BackingFormat::Qcow2
    } else {
        BackingFormat::Raw
    })
}
