//! [`VmdkImage`]: a whole virtual disk, the concatenation of its extents.
//!
//! Opening detects the kind from content: a `KDMV` sparse extent (with or
//! without an embedded descriptor) is the whole disk by itself; otherwise the
//! file must be a text descriptor whose extents are opened from the
//! descriptor's folder under the caller's [`ExtentPathPolicy`].
//!
//! The image is immutable after open. Reads are positional and take no
//! lock except the small grain-table cache inside each sparse extent, so a
//! `VmdkImage` is `Send + Sync` and can be shared by reader threads.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use crate::descriptor::{CID_NO_PARENT, Descriptor, Extent, ExtentKind, MAX_DESCRIPTOR_BYTES};
use crate::header::{MAX_CAPACITY_SECTORS, SPARSE_MAGIC, SparseHeader};
use crate::raw::SECTOR;
use crate::runs::Runs;
use crate::sparse::{CacheBudget, DEFAULT_GT_CACHE_BYTES, SparseExtent};
use crate::storage::{FileStorage, Storage};
use crate::{VmdkError, descriptor};

/// Signature line that starts a text descriptor.
const DESCRIPTOR_SIGNATURE: &[u8] = b"# Disk DescriptorFile";

/// Where extent files named by a descriptor may live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ExtentPathPolicy {
    /// Only relative names without `..` that resolve (after symlinks) inside
    /// the descriptor's folder.
    #[default]
    SameFolder,
    /// Any path; relative names are still taken from the descriptor's folder.
    Any,
}

/// Options for [`VmdkImage::open_with`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct OpenOptions {
    /// Which extent paths a descriptor may name.
    pub extent_paths: ExtentPathPolicy,
    /// Grain table cache size for the whole image, in bytes (split evenly
    /// between sparse extents, at least 4 tables each).
    pub grain_table_cache_bytes: usize,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            extent_paths: ExtentPathPolicy::SameFolder,
            grain_table_cache_bytes: DEFAULT_GT_CACHE_BYTES,
        }
    }
}

impl OpenOptions {
    /// The defaults: extents in the descriptor's folder, 4 MiB of grain tables.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the extent path policy.
    #[must_use]
    pub fn extent_paths(mut self, policy: ExtentPathPolicy) -> Self {
        self.extent_paths = policy;
        self
    }

    /// Sets the grain table cache size for the whole image.
    #[must_use]
    pub fn grain_table_cache_bytes(mut self, bytes: usize) -> Self {
        self.grain_table_cache_bytes = bytes;
        self
    }
}

/// An open VMDK virtual disk (read-only).
pub struct VmdkImage {
    path: PathBuf,
    descriptor: Descriptor,
    size: u64,
    extents: Vec<Mapped>,
}

impl fmt::Debug for VmdkImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VmdkImage")
            .field("path", &self.path)
            .field("create_type", &self.descriptor.create_type)
            .field("size", &self.size)
            .field("extents", &self.extents.len())
            .finish_non_exhaustive()
    }
}

/// One extent placed on the guest address space.
#[derive(Debug)]
struct Mapped {
    /// Guest byte offset of the extent.
    start: u64,
    /// Length in bytes.
    len: u64,
    reader: ExtentReader,
}

#[derive(Debug)]
enum ExtentReader {
    Zero,
    Flat {
        storage: Box<dyn Storage>,
        start: u64,
    },
    Sparse(Box<SparseExtent>),
}

impl VmdkImage {
    /// Opens an image with the default [`OpenOptions`].
    ///
    /// # Errors
    /// See [`VmdkImage::open_with`].
    pub fn open(path: &Path) -> Result<Self, VmdkError> {
        Self::open_with(path, &OpenOptions::default())
    }

    /// Opens a text descriptor (with its extents) or a sparse file with an
    /// embedded descriptor (monolithicSparse, streamOptimized).
    ///
    /// # Errors
    /// [`VmdkError::NotVmdk`] when the content is neither; a descriptor,
    /// header or metadata error when it is damaged; [`VmdkError::HasParent`]
    /// for delta disks; [`VmdkError::UnsupportedExtent`] for `COWD`/device
    /// extents; [`VmdkError::ExtentPathRefused`] when the policy refuses an
    /// extent path; [`VmdkError::Io`] on I/O errors.
    pub fn open_with(path: &Path, opts: &OpenOptions) -> Result<Self, VmdkError> {
        let storage = FileStorage::open(path)?;
        let mut head = vec![0u8; usize::try_from(storage.len().min(512)).unwrap_or(512)];
        storage.read_at_checked(&mut head, 0)?;
        if head.starts_with(&SPARSE_MAGIC) {
            return Self::open_sparse(path, Box::new(storage), opts);
        }
        if head.starts_with(b"COWD") {
            return Err(VmdkError::UnsupportedExtent {
                extent: 0,
                kind: "VMFSSPARSE",
            });
        }
        let signed = head.starts_with(DESCRIPTOR_SIGNATURE);
        if storage.len() > MAX_DESCRIPTOR_BYTES {
            return Err(if signed {
                VmdkError::DescriptorTooLarge {
                    size: storage.len(),
                    limit: MAX_DESCRIPTOR_BYTES,
                }
            } else {
                VmdkError::NotVmdk {
                    path: path.to_owned(),
                }
            });
        }
        let mut text = vec![0u8; usize::try_from(storage.len()).unwrap_or_default()];
        storage.read_at_checked(&mut text, 0)?;
        let descriptor = match Descriptor::parse(&text) {
            Ok(d) => d,
            Err(e) if signed => return Err(e),
            Err(_) => {
                return Err(VmdkError::NotVmdk {
                    path: path.to_owned(),
                });
            }
        };
        Self::open_descriptor(path, descriptor, opts)
    }

    /// Virtual disk size in bytes.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The `createType` of the descriptor, e.g. `monolithicSparse`.
    #[must_use]
    pub fn create_type(&self) -> &str {
        &self.descriptor.create_type
    }

    /// The descriptor (embedded, from the descriptor file, or synthesized
    /// for a sparse file without one).
    #[must_use]
    pub fn descriptor(&self) -> &Descriptor {
        &self.descriptor
    }

    /// Fills `buf` with guest data at `offset`; unallocated grains read as zeros.
    ///
    /// # Errors
    /// [`VmdkError::OutOfRange`] when the range passes the disk end; metadata
    /// or grain errors when the image is damaged; [`VmdkError::Io`].
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), VmdkError> {
        let len = buf.len() as u64;
        let end =
            offset
                .checked_add(len)
                .filter(|&e| e <= self.size)
                .ok_or(VmdkError::OutOfRange {
                    offset,
                    len,
                    size: self.size,
                })?;
        let mut pos = offset;
        let mut buf = buf;
        let mut i = self.extents.partition_point(|m| m.start + m.len <= offset);
        while pos < end {
            let Some(m) = self.extents.get(i) else {
                return Err(VmdkError::OutOfRange {
                    offset,
                    len,
                    size: self.size,
                });
            };
            let within = pos - m.start;
            let n = usize::try_from((m.len - within).min(end - pos)).unwrap_or(buf.len());
            let (now, rest) = buf.split_at_mut(n);
            match &m.reader {
                ExtentReader::Zero => now.fill(0),
                ExtentReader::Flat { storage, start } => {
                    storage.read_at_checked(now, start + within)?;
                }
                ExtentReader::Sparse(s) => {
                    let cap = s.capacity_bytes();
                    let inside =
                        usize::try_from(cap.saturating_sub(within).min(n as u64)).unwrap_or(n);
                    let (data, past) = now.split_at_mut(inside);
                    s.read_at(data, within)?;
                    past.fill(0);
                }
            }
            buf = rest;
            pos += n as u64;
            i += 1;
        }
        Ok(())
    }

    /// Runs `(offset, len)` of guest bytes that may be non-zero, ascending
    /// and merged. Sparse extents report allocated grains (zeroed grains
    /// excluded); flat extents report their file's data runs
    /// (`SEEK_DATA`/`SEEK_HOLE`) or the whole extent when unknown.
    ///
    /// # Errors
    /// Metadata errors when a grain table is damaged; [`VmdkError::Io`].
    pub fn allocated_extents(&self) -> Result<Vec<sendense_io::Extent>, VmdkError> {
        let mut runs = Runs::default();
        for m in &self.extents {
            match &m.reader {
                ExtentReader::Zero => {}
                ExtentReader::Flat { storage, start } => {
                    match storage.data_runs(*start, start + m.len) {
                        Some(data) => {
                            for run in data {
                                runs.push(m.start + (run.offset - start), run.length);
                            }
                        }
                        None => runs.push(m.start, m.len),
                    }
                }
                ExtentReader::Sparse(s) => {
                    s.allocated(&mut runs, m.start, m.len.min(s.capacity_bytes()))?;
                }
            }
        }
        Ok(runs.into_vec())
    }

    /// Content sniffing: `true` for a sparse extent (`KDMV`) or a text
    /// descriptor starting with `# Disk DescriptorFile`.
    #[must_use]
    pub fn is_vmdk(header_bytes: &[u8]) -> bool {
        header_bytes.starts_with(&SPARSE_MAGIC) || header_bytes.starts_with(DESCRIPTOR_SIGNATURE)
    }

    fn open_sparse(
        path: &Path,
        storage: Box<dyn Storage>,
        opts: &OpenOptions,
    ) -> Result<Self, VmdkError> {
        let mut head = [0u8; 512];
        storage
            .read_at_checked(&mut head, 0)
            .map_err(|_| VmdkError::InvalidSparseHeader {
                extent: 0,
                reason: "shorter than 512 bytes",
            })?;
        let primary = SparseHeader::parse(&head)
            .map_err(|reason| VmdkError::InvalidSparseHeader { extent: 0, reason })?;
        let embedded = read_embedded_descriptor(storage.as_ref(), &primary)?;
        let cache = CacheBudget {
            gt_bytes: opts.grain_table_cache_bytes,
            ..CacheBudget::default()
        };
        let sparse = SparseExtent::open(0, storage, primary, cache)?;
        let header = *sparse.header();
        let size = header.capacity * SECTOR;
        let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let descriptor = match embedded {
            Some(d) => d,
            None => Descriptor {
                version: 1,
                encoding: None,
                cid: 0xFFFF_FFFE,
                parent_cid: CID_NO_PARENT,
                create_type: if header.compressed() {
                    "streamOptimized"
                } else {
                    "monolithicSparse"
                }
                .to_owned(),
                parent_file_name_hint: None,
                extents: vec![Extent {
                    access: descriptor::Access::ReadWrite,
                    sectors: header.capacity,
                    kind: ExtentKind::Sparse,
                    file: file_name,
                    offset: 0,
                }],
                ddb: Vec::new(),
            },
        };
        if descriptor.has_parent() {
            return Err(VmdkError::HasParent);
        }
        Ok(Self {
            path: path.to_owned(),
            descriptor,
            size,
            extents: vec![Mapped {
                start: 0,
                len: size,
                reader: ExtentReader::Sparse(Box::new(sparse)),
            }],
        })
    }

    fn open_descriptor(
        path: &Path,
        descriptor: Descriptor,
        opts: &OpenOptions,
    ) -> Result<Self, VmdkError> {
        if descriptor.has_parent() {
            return Err(VmdkError::HasParent);
        }
        let total = descriptor
            .total_sectors()
            .filter(|&s| s <= MAX_CAPACITY_SECTORS);
        let size = total.ok_or(VmdkError::DiskTooLarge)? * SECTOR;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let sparse_count = descriptor
            .extents
            .iter()
            .filter(|e| e.kind == ExtentKind::Sparse)
            .count();
        let cache = CacheBudget {
            gt_bytes: opts.grain_table_cache_bytes / sparse_count.max(1),
            ..CacheBudget::default()
        };
        let mut extents = Vec::with_capacity(descriptor.extents.len());
        let mut start = 0u64;
        for (index, e) in descriptor.extents.iter().enumerate() {
            let len = e.sectors * SECTOR;
            let reader = open_extent(index, e, &dir, opts.extent_paths, &cache)?;
            if let ExtentReader::Sparse(s) = &reader
                && s.capacity_bytes() < len
            {
                return Err(VmdkError::InvalidSparseHeader {
                    extent: index,
                    reason: "capacity smaller than the descriptor's extent",
                });
            }
            if len > 0 {
                extents.push(Mapped { start, len, reader });
            }
            start += len;
        }
        Ok(Self {
            path: path.to_owned(),
            descriptor,
            size,
            extents,
        })
    }
}

fn open_extent(
    index: usize,
    e: &Extent,
    dir: &Path,
    policy: ExtentPathPolicy,
    cache: &CacheBudget,
) -> Result<ExtentReader, VmdkError> {
    let len = e.sectors * SECTOR;
    match e.kind {
        ExtentKind::Zero => Ok(ExtentReader::Zero),
        ExtentKind::Flat | ExtentKind::Vmfs => {
            let storage = FileStorage::open(&resolve(e, dir, policy)?)?;
            let start = e.offset.checked_mul(SECTOR);
            let needed = start.and_then(|s| s.checked_add(len)).unwrap_or(u64::MAX);
            if needed > storage.len() {
                return Err(VmdkError::FlatExtentTooShort {
                    extent: index,
                    needed,
                    actual: storage.len(),
                });
            }
            Ok(ExtentReader::Flat {
                storage: Box::new(storage),
                start: start.unwrap_or_default(),
            })
        }
        ExtentKind::Sparse => {
            let storage = FileStorage::open(&resolve(e, dir, policy)?)?;
            let mut head = [0u8; 512];
            if storage.len() < 512 {
                return Err(VmdkError::InvalidSparseHeader {
                    extent: index,
                    reason: "shorter than 512 bytes",
                });
            }
            storage.read_at_checked(&mut head, 0)?;
            if head.starts_with(b"COWD") {
                return Err(VmdkError::UnsupportedExtent {
                    extent: index,
                    kind: "COWD sparse",
                });
            }
            let primary =
                SparseHeader::parse(&head).map_err(|reason| VmdkError::InvalidSparseHeader {
                    extent: index,
                    reason,
                })?;
            let s = SparseExtent::open(index, Box::new(storage), primary, cache.clone())?;
            Ok(ExtentReader::Sparse(Box::new(s)))
        }
        other => Err(VmdkError::UnsupportedExtent {
            extent: index,
            kind: other.as_str(),
        }),
    }
}

/// Applies the extent path policy and returns the path to open.
fn resolve(e: &Extent, dir: &Path, policy: ExtentPathPolicy) -> Result<PathBuf, VmdkError> {
    let name = e.file.as_deref().unwrap_or_default();
    let refused = || VmdkError::ExtentPathRefused {
        name: name.to_owned(),
    };
    let rel = Path::new(name);
    let joined = dir.join(rel);
    if policy == ExtentPathPolicy::Any {
        return Ok(joined);
    }
    if rel
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(refused());
    }
    let real_dir = dir.canonicalize().map_err(|err| VmdkError::io(dir, err))?;
    let real = joined
        .canonicalize()
        .map_err(|err| VmdkError::io(&joined, err))?;
    if !real.starts_with(&real_dir) {
        return Err(refused());
    }
    Ok(real)
}

/// Reads the embedded descriptor of a sparse file, if it has one.
fn read_embedded_descriptor(
    storage: &dyn Storage,
    header: &SparseHeader,
) -> Result<Option<Descriptor>, VmdkError> {
    if header.descriptor_offset == 0 || header.descriptor_sectors == 0 {
        return Ok(None);
    }
    let start = header.descriptor_offset.checked_mul(SECTOR);
    let len = header.descriptor_sectors * SECTOR;
    let end = start.and_then(|s| s.checked_add(len));
    let Some(start) = start.filter(|_| end.is_some_and(|e| e <= storage.len())) else {
        return Err(VmdkError::MetadataBeyondEof {
            extent: 0,
            what: "embedded descriptor",
        });
    };
    let mut text = vec![0u8; usize::try_from(len).unwrap_or_default()];
    storage.read_at_checked(&mut text, start)?;
    Descriptor::parse(&text).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sparse::tests::{build_plain, build_stream};

    fn open_bytes(bytes: &[u8]) -> Result<VmdkImage, VmdkError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.vmdk");
        std::fs::write(&path, bytes).unwrap();
        VmdkImage::open(&path)
    }

    #[test]
    fn open_stream_gd_at_end_without_descriptor_synthesizes_one() {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut z, &[9u8; 4096]).unwrap();
        let bytes = build_stream(64, &[(3, z.finish().unwrap())]);

        let img = open_bytes(&bytes).unwrap();
        let mut buf = vec![0u8; 8192];
        img.read_at(&mut buf, 2 * 4096).unwrap();

        assert_eq!(img.create_type(), "streamOptimized");
        assert_eq!(img.size(), 64 * 512);
        assert!(buf[..4096].iter().all(|&b| b == 0) && buf[4096..].iter().all(|&b| b == 9));
        assert_eq!(
            img.allocated_extents().unwrap(),
            vec![sendense_io::Extent::new(3 * 4096, 4096)]
        );
    }

    #[test]
    fn open_embedded_descriptor_beyond_eof_is_rejected() {
        let mut bytes = build_plain(64, &[(0, 1)]);
        let h = SparseHeader {
            descriptor_offset: 1000,
            descriptor_sectors: 4,
            ..SparseHeader::parse(&bytes).unwrap()
        };
        bytes[..512].copy_from_slice(&h.encode());

        assert!(matches!(
            open_bytes(&bytes),
            Err(VmdkError::MetadataBeyondEof {
                what: "embedded descriptor",
                ..
            })
        ));
    }

    #[test]
    fn open_sparse_with_garbage_embedded_descriptor_is_rejected() {
        let mut bytes = build_plain(64, &[]);
        let h = SparseHeader {
            descriptor_offset: 1,
            descriptor_sectors: 1,
            ..SparseHeader::parse(&bytes).unwrap()
        };
        bytes[..512].copy_from_slice(&h.encode());
        bytes[512..520].copy_from_slice(b"garbage\n");

        assert!(matches!(
            open_bytes(&bytes),
            Err(VmdkError::InvalidDescriptor { .. })
        ));
    }

    #[test]
    fn open_sparse_header_shorter_than_sector_is_rejected() {
        assert!(matches!(
            open_bytes(b"KDMV\x01\x00"),
            Err(VmdkError::InvalidSparseHeader { .. })
        ));
    }
}
