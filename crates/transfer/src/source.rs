//! Disk sources: where the bytes of a virtual disk come from.
//!
//! [`DiskSource`] is the one interface the transfer engine reads through. It is object safe
//! (boxed futures), so a backup can mix sources: a local raw file ([`RawFileSource`]), a local
//! VMDK ([`VmdkSource`]), a vSphere snapshot read over HTTPS (the vSphere crate), an NBD export
//! (restore), or memory in tests ([`MemorySource`]).
//!
//! Local files are read with positional reads on tokio's blocking pool, so reads of several
//! requests run in parallel and never block the async workers. A full backup reads only
//! [`DiskSource::allocated_extents`]: holes of a sparse raw file (found with `SEEK_DATA` /
//! `SEEK_HOLE`) and unallocated VMDK grains are never read at all.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::SeekFrom;
use sendense_io::AlignedBuf;
use sendense_vmdk::VmdkImage;

use crate::error::TransferError;

pub use sendense_io::{BoxFuture, Extent};

/// Where a disk's bytes come from.
pub trait DiskSource: Send + Sync + fmt::Debug {
    /// Size of the disk in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset` (all of it, or an error).
    fn read<'a>(
        &'a self,
        offset: u64,
        buf: &'a mut [u8],
    ) -> BoxFuture<'a, Result<(), TransferError>>;
    /// Runs that may hold non-zero data, sorted, non-overlapping; a full backup reads only these.
    fn allocated_extents(&self) -> BoxFuture<'_, Result<Vec<Extent>, TransferError>>;
    /// Like [`Self::read`] of `len` bytes, into an owned page-aligned buffer that is resized
    /// to `len` and handed back: a source that reads on another thread (local files, on
    /// tokio's blocking pool; an NBD connection's reader) fills it there without a scratch
    /// copy. The default reads through [`Self::read`].
    fn read_owned(
        &self,
        offset: u64,
        mut buf: AlignedBuf,
        len: usize,
    ) -> BoxFuture<'_, Result<AlignedBuf, TransferError>> {
        Box::pin(async move {
            buf.resize(len);
            self.read(offset, &mut buf[..len]).await?;
            Ok(buf)
        })
    }
}

/// Opens a local disk file, detecting its format from its content: a VMDK (sparse magic `KDMV`
/// or a text descriptor starting with `# Disk DescriptorFile`) or else raw.
///
/// # Errors
/// [`TransferError::Open`] when the file cannot be opened or read; [`TransferError::Vmdk`] when it
/// looks like a VMDK but does not open as one.
pub async fn open_local(path: &Path) -> Result<Arc<dyn DiskSource>, TransferError> {
    let owned = path.to_owned();
    tokio::task::spawn_blocking(move || open_local_blocking(&owned))
        .await
        .map_err(|_| TransferError::Cancelled)?
}

/// The blocking body of [`open_local`].
fn open_local_blocking(path: &Path) -> Result<Arc<dyn DiskSource>, TransferError> {
    let open_err = |source| TransferError::Open {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(open_err)?;
    let mut head = Vec::with_capacity(512);
    (&mut file)
        .take(512)
        .read_to_end(&mut head)
        .map_err(open_err)?;
    if VmdkImage::is_vmdk(&head) {
        Ok(Arc::new(VmdkSource::open_blocking(path)?))
    } else {
        Ok(Arc::new(RawFileSource::from_file(path, file)?))
    }
}

/// Checks that `[offset, offset + len)` lies within `size`.
pub(crate) fn check_range(offset: u64, len: usize, size: u64) -> Result<(), TransferError> {
    let len = len as u64;
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(TransferError::OutOfRange { offset, len, size }),
    }
}

/// Largest piece read on the blocking pool at once: the scratch buffer a read needs there
/// (the pool needs owned data), so a read costs this much extra memory, not its own size.
const BLOCKING_READ_CHUNK: usize = 1 << 20;

/// Positional reads of a local file or image, run on tokio's blocking pool.
trait BlockingRead: Send + Sync + 'static {
    /// Fills `buf` from `offset` (all of it, or an error).
    fn fill_at(&self, buf: &mut [u8], offset: u64) -> Result<(), TransferError>;
}

impl BlockingRead for File {
    fn fill_at(&self, buf: &mut [u8], offset: u64) -> Result<(), TransferError> {
        read_exact_at(self, buf, offset)
    }
}

impl BlockingRead for VmdkImage {
    fn fill_at(&self, buf: &mut [u8], offset: u64) -> Result<(), TransferError> {
        Ok(self.read_at(buf, offset)?)
    }
}

/// [`DiskSource::read`] of a blocking reader of `size` bytes.
fn read_via<'a, R: BlockingRead>(
    reader: &Arc<R>,
    size: u64,
    offset: u64,
    buf: &'a mut [u8],
) -> BoxFuture<'a, Result<(), TransferError>> {
    let reader = Arc::clone(reader);
    Box::pin(async move {
        check_range(offset, buf.len(), size)?;
        read_blocking(buf, offset, move |b, at| reader.fill_at(b, at)).await
    })
}

/// [`DiskSource::read_owned`] of a blocking reader of `size` bytes.
fn read_owned_via<R: BlockingRead>(
    reader: &Arc<R>,
    size: u64,
    offset: u64,
    buf: AlignedBuf,
    len: usize,
) -> BoxFuture<'static, Result<AlignedBuf, TransferError>> {
    let reader = Arc::clone(reader);
    Box::pin(async move {
        check_range(offset, len, size)?;
        read_owned_blocking(buf, len, offset, move |b, at| reader.fill_at(b, at)).await
    })
}

/// Runs `f(buf, offset)` on tokio's blocking pool on the owned `buf` resized to `len`, and
/// hands the buffer back.
async fn read_owned_blocking<F>(
    mut buf: AlignedBuf,
    len: usize,
    offset: u64,
    f: F,
) -> Result<AlignedBuf, TransferError>
where
    F: FnOnce(&mut [u8], u64) -> Result<(), TransferError> + Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        buf.resize(len);
        f(&mut buf[..len], offset).map(|()| buf)
    })
    .await
    .map_err(|_| TransferError::Cancelled)?
}

/// Fills `buf` from disk offset `offset` by running `f(scratch, offset)` on tokio's blocking
/// pool, piece by piece of at most [`BLOCKING_READ_CHUNK`] bytes, copying each piece into `buf`.
async fn read_blocking<F>(buf: &mut [u8], offset: u64, f: F) -> Result<(), TransferError>
where
    F: Fn(&mut [u8], u64) -> Result<(), TransferError> + Send + Sync + 'static,
{
    let f = Arc::new(f);
    let mut scratch = Vec::new();
    let mut pos = offset;
    for piece in buf.chunks_mut(BLOCKING_READ_CHUNK) {
        let len = piece.len();
        let f = Arc::clone(&f);
        let mut owned = std::mem::take(&mut scratch);
        scratch = tokio::task::spawn_blocking(move || {
            owned.resize(len, 0);
            f(&mut owned[..len], pos).map(|()| owned)
        })
        .await
        .map_err(|_| TransferError::Cancelled)??;
        piece.copy_from_slice(&scratch[..len]);
        pos += len as u64;
    }
    Ok(())
}

/// A raw disk image in a local file (or a block device).
pub struct RawFileSource {
    path: PathBuf,
    file: Arc<File>,
    size: u64,
}

impl fmt::Debug for RawFileSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawFileSource")
            .field("path", &self.path)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl RawFileSource {
    /// Opens a raw file read-only.
    ///
    /// # Errors
    /// [`TransferError::Open`] when the file cannot be opened or its size read.
    pub fn open(path: &Path) -> Result<Self, TransferError> {
        let file = File::open(path).map_err(|source| TransferError::Open {
            path: path.to_owned(),
            source,
        })?;
        Self::from_file(path, file)
    }

    fn from_file(path: &Path, file: File) -> Result<Self, TransferError> {
        let open_err = |source| TransferError::Open {
            path: path.to_owned(),
            source,
        };
        // `seek(End)` also gives the size of a block device, where metadata says 0.
        let size =
            rustix::fs::seek(&file, SeekFrom::End(0)).map_err(|e| open_err(io::Error::from(e)))?;
        Ok(Self {
            path: path.to_owned(),
            file: Arc::new(file),
            size,
        })
    }

    /// The file's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Data runs of the file with `SEEK_DATA`/`SEEK_HOLE` ([`sendense_io::sparse::data_runs`]),
    /// on a fresh descriptor (seeking moves the file offset).
    fn data_runs_blocking(path: &Path, size: u64) -> Result<Vec<Extent>, TransferError> {
        let io_err = |source| TransferError::Io {
            offset: 0,
            len: size,
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        sendense_io::sparse::data_runs(&file, 0, size).map_err(io_err)
    }
}

impl DiskSource for RawFileSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn read<'a>(
        &'a self,
        offset: u64,
        buf: &'a mut [u8],
    ) -> BoxFuture<'a, Result<(), TransferError>> {
        read_via(&self.file, self.size, offset, buf)
    }

    fn read_owned(
        &self,
        offset: u64,
        buf: AlignedBuf,
        len: usize,
    ) -> BoxFuture<'_, Result<AlignedBuf, TransferError>> {
        read_owned_via(&self.file, self.size, offset, buf, len)
    }

    fn allocated_extents(&self) -> BoxFuture<'_, Result<Vec<Extent>, TransferError>> {
        Box::pin(async move {
            let path = self.path.clone();
            let size = self.size;
            tokio::task::spawn_blocking(move || Self::data_runs_blocking(&path, size))
                .await
                .map_err(|_| TransferError::Cancelled)?
        })
    }
}

/// `pread` until `buf` is full; a file that ends early is [`TransferError::ShortRead`].
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> Result<(), TransferError> {
    let mut done = 0usize;
    while done < buf.len() {
        let pos = offset + done as u64;
        match file.read_at(&mut buf[done..], pos) {
            Ok(0) => return Err(TransferError::ShortRead { offset: pos }),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(TransferError::Io {
                    offset: pos,
                    len: (buf.len() - done) as u64,
                    source,
                });
            }
        }
    }
    Ok(())
}

/// A local VMDK (any subformat `sendense-vmdk` reads), read-only.
#[derive(Debug)]
pub struct VmdkSource {
    image: Arc<VmdkImage>,
}

impl VmdkSource {
    /// Opens a VMDK. This does blocking I/O: call it from a blocking context, or use
    /// [`open_local`].
    ///
    /// # Errors
    /// [`TransferError::Vmdk`] naming what is wrong with the image.
    pub fn open_blocking(path: &Path) -> Result<Self, TransferError> {
        Ok(Self {
            image: Arc::new(VmdkImage::open(path)?),
        })
    }

    /// Wraps an image already open.
    #[must_use]
    pub fn new(image: VmdkImage) -> Self {
        Self {
            image: Arc::new(image),
        }
    }
}

impl DiskSource for VmdkSource {
    fn size(&self) -> u64 {
        self.image.size()
    }

    fn read<'a>(
        &'a self,
        offset: u64,
        buf: &'a mut [u8],
    ) -> BoxFuture<'a, Result<(), TransferError>> {
        read_via(&self.image, self.image.size(), offset, buf)
    }

    fn read_owned(
        &self,
        offset: u64,
        buf: AlignedBuf,
        len: usize,
    ) -> BoxFuture<'_, Result<AlignedBuf, TransferError>> {
        read_owned_via(&self.image, self.image.size(), offset, buf, len)
    }

    fn allocated_extents(&self) -> BoxFuture<'_, Result<Vec<Extent>, TransferError>> {
        Box::pin(async move {
            let image = Arc::clone(&self.image);
            let runs = tokio::task::spawn_blocking(move || image.allocated_extents())
                .await
                .map_err(|_| TransferError::Cancelled)??;
            Ok(runs)
        })
    }
}

/// A disk held in memory, for tests and tools: reads come from the vector, allocated extents
/// are given (or the whole disk).
#[derive(Debug, Clone)]
pub struct MemorySource {
    data: Arc<Vec<u8>>,
    allocated: Option<Vec<Extent>>,
}

impl MemorySource {
    /// A disk whose allocated extents are the whole disk.
    #[must_use]
    pub fn new(data: Vec<u8>) -> Self {
        Self {
            data: Arc::new(data),
            allocated: None,
        }
    }

    /// The same disk reporting `extents` as allocated.
    #[must_use]
    pub fn with_allocated(mut self, extents: Vec<Extent>) -> Self {
        self.allocated = Some(extents);
        self
    }
}

impl DiskSource for MemorySource {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }

    fn read<'a>(
        &'a self,
        offset: u64,
        buf: &'a mut [u8],
    ) -> BoxFuture<'a, Result<(), TransferError>> {
        Box::pin(async move {
            check_range(offset, buf.len(), self.size())?;
            let start = usize::try_from(offset).map_err(|_| TransferError::OutOfRange {
                offset,
                len: buf.len() as u64,
                size: self.size(),
            })?;
            buf.copy_from_slice(&self.data[start..start + buf.len()]);
            Ok(())
        })
    }

    fn allocated_extents(&self) -> BoxFuture<'_, Result<Vec<Extent>, TransferError>> {
        Box::pin(async move {
            Ok(self.allocated.clone().unwrap_or_else(|| {
                if self.data.is_empty() {
                    Vec::new()
                } else {
                    vec![Extent::new(0, self.size())]
                }
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::Command;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| {
                u8::try_from(i % 251)
                    .unwrap()
                    .wrapping_mul(31)
                    .wrapping_add(seed)
            })
            .collect()
    }

    /// A 4 MiB sparse raw file with data at 0..64K and at 2M..2M+128K.
    fn sparse_raw(dir: &Path) -> (PathBuf, Vec<u8>) {
        let path = dir.join("disk.raw");
        let mut want = vec![0u8; 4 << 20];
        want[..65536].copy_from_slice(&pattern(65536, 1));
        want[2 << 20..(2 << 20) + 131_072].copy_from_slice(&pattern(131_072, 7));
        let f = File::create(&path).unwrap();
        f.set_len(4 << 20).unwrap();
        f.write_all_at(&want[..65536], 0).unwrap();
        f.write_all_at(&want[2 << 20..(2 << 20) + 131_072], 2 << 20)
            .unwrap();
        (path, want)
    }

    fn qemu_img(args: &[&str]) {
        let out = Command::new("qemu-img")
            .args(args)
            .output()
            .expect("qemu-img is required for this test (apt-get install qemu-utils)");
        assert!(
            out.status.success(),
            "qemu-img {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    async fn read_all(src: &dyn DiskSource) -> Vec<u8> {
        let mut buf = vec![0u8; usize::try_from(src.size()).unwrap()];
        src.read(0, &mut buf).await.unwrap();
        buf
    }

    #[tokio::test]
    async fn raw_source_sparse_file_reads_content() {
        let dir = tempfile::tempdir().unwrap();
        let (path, want) = sparse_raw(dir.path());

        let src = RawFileSource::open(&path).unwrap();

        assert_eq!(read_all(&src).await, want);
    }

    #[tokio::test]
    async fn raw_source_sparse_file_reports_data_runs_only() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = sparse_raw(dir.path());
        let src = RawFileSource::open(&path).unwrap();

        let runs = src.allocated_extents().await.unwrap();

        let total: u64 = runs.iter().map(|e| e.length).sum();
        assert!(total < 1 << 20, "runs {runs:?} should skip the holes");
        assert!(runs.iter().any(|e| e.offset == 0));
        assert!(
            runs.iter()
                .any(|e| e.offset <= 2 << 20 && e.end() >= (2 << 20) + 131_072)
        );
    }

    #[tokio::test]
    async fn raw_source_read_past_end_is_out_of_range() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = sparse_raw(dir.path());
        let src = RawFileSource::open(&path).unwrap();
        let mut buf = vec![0u8; 1024];

        let err = src.read((4 << 20) - 512, &mut buf).await.unwrap_err();

        assert!(matches!(err, TransferError::OutOfRange { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn open_local_missing_file_names_path() {
        let err = open_local(Path::new("/nonexistent/disk.raw"))
            .await
            .unwrap_err();

        assert!(err.to_string().contains("/nonexistent/disk.raw"), "{err}");
    }

    #[tokio::test]
    async fn open_local_raw_content_opens_raw() {
        let dir = tempfile::tempdir().unwrap();
        let (path, want) = sparse_raw(dir.path());

        let src = open_local(&path).await.unwrap();

        assert!(format!("{src:?}").starts_with("RawFileSource"));
        assert_eq!(read_all(src.as_ref()).await, want);
    }

    /// `qemu-img convert -O vmdk` (monolithicSparse) of `raw` into `dir/s.vmdk`.
    fn to_vmdk(raw: &Path, dir: &Path) -> PathBuf {
        let vmdk = dir.join("s.vmdk");
        qemu_img(&[
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            raw.to_str().unwrap(),
            vmdk.to_str().unwrap(),
        ]);
        vmdk
    }

    /// Reads the whole source in 1 MiB pieces through `read_owned`, reusing one buffer.
    async fn read_all_owned(src: &dyn DiskSource) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = AlignedBuf::default();
        let mut pos = 0;
        while pos < src.size() {
            let len = (src.size() - pos).min(1 << 20) as usize;
            buf = src.read_owned(pos, buf, len).await.unwrap();
            assert_eq!(buf.len(), len);
            out.extend_from_slice(&buf);
            pos += len as u64;
        }
        out
    }

    #[tokio::test]
    async fn read_owned_equals_read_for_raw_vmdk_and_memory_sources() {
        let dir = tempfile::tempdir().unwrap();
        let (raw, want) = sparse_raw(dir.path());
        let vmdk = to_vmdk(&raw, dir.path());
        let sources = [
            open_local(&raw).await.unwrap(),
            open_local(&vmdk).await.unwrap(),
            Arc::new(MemorySource::new(want.clone())) as Arc<dyn DiskSource>,
        ];
        for src in sources {
            assert!(read_all_owned(src.as_ref()).await == want, "{src:?}");
            let err = src
                .read_owned(src.size() - 10, AlignedBuf::default(), 20)
                .await
                .unwrap_err();
            assert!(
                matches!(err, TransferError::OutOfRange { .. }),
                "{src:?}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn open_local_vmdk_from_qemu_img_reads_equal_to_raw() {
        let dir = tempfile::tempdir().unwrap();
        let (raw, want) = sparse_raw(dir.path());
        for sub in [
            "monolithicSparse",
            "monolithicFlat",
            "streamOptimized",
            "twoGbMaxExtentSparse",
            "twoGbMaxExtentFlat",
        ] {
            let vmdk = dir.path().join(format!("{sub}.vmdk"));
            qemu_img(&[
                "convert",
                "-f",
                "raw",
                "-O",
                "vmdk",
                "-o",
                &format!("subformat={sub}"),
                raw.to_str().unwrap(),
                vmdk.to_str().unwrap(),
            ]);

            let src = open_local(&vmdk).await.unwrap();

            assert!(format!("{src:?}").starts_with("VmdkSource"), "{sub}");
            assert_eq!(src.size(), 4 << 20, "{sub}");
            assert!(
                read_all(src.as_ref()).await == want,
                "{sub} content differs"
            );
        }
    }

    #[tokio::test]
    async fn vmdk_source_sparse_reports_allocated_grains_only() {
        let dir = tempfile::tempdir().unwrap();
        let (raw, _) = sparse_raw(dir.path());
        let vmdk = to_vmdk(&raw, dir.path());
        let src = open_local(&vmdk).await.unwrap();

        let runs = src.allocated_extents().await.unwrap();

        let total: u64 = runs.iter().map(|e| e.length).sum();
        assert!((196_608..1 << 20).contains(&total), "{runs:?}");
    }

    #[tokio::test]
    async fn open_local_truncated_vmdk_is_vmdk_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.vmdk");
        let mut f = File::create(&path).unwrap();
        f.write_all(b"KDMV\x01\x00\x00\x00").unwrap();

        let err = open_local(&path).await.unwrap_err();

        assert!(matches!(err, TransferError::Vmdk(_)), "{err:?}");
    }

    #[tokio::test]
    async fn memory_source_read_returns_slice() {
        let src = MemorySource::new(pattern(4096, 3));
        let mut buf = vec![0u8; 512];

        src.read(1024, &mut buf).await.unwrap();

        assert_eq!(buf, pattern(4096, 3)[1024..1536]);
    }
}
