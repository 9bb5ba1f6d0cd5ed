//! File-level restore: a restore point's partitions, folder listings and file contents, read
//! in process from the point's QCOW2 chain through [`sendense_fs`] (no kernel, no loop device,
//! no helper VM).
//!
//! Every call opens the disk's chain as of the point read-only, holding the VM's chain lock
//! shared (a removal of points waits, or the call answers 409 while one runs), and opens the
//! file system on a blocking thread ([`sendense_fs::FileSystem`] is not `Send`). A download
//! streams from one blocking thread through a small bounded channel: memory stays at a few
//! chunks whatever the file's size, a client that stops reading for [`STALL_LIMIT`] is cut off,
//! and at most [`MAX_DOWNLOADS`] run at once (503 beyond).

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use sendense_fs::{BlockRead, Entry, EntryKind, FileSystem, FsPath};
use sendense_io::BufPool;
use sendense_qcow2::Image;
use sendense_types::{
    BackupId, BackupStatus, DiskKey, DiskPartitions, FileEntry, FileListing, FilesQuery,
    PartitionInfo, Timestamp,
};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

use super::Engine;
use crate::error::HubError;
use crate::maintenance::ChainReadGuard;

/// Most downloads (files and folders) streaming at once, hub-wide.
pub const MAX_DOWNLOADS: usize = 16;

/// A download whose client reads nothing for this long is cut off.
pub const STALL_LIMIT: Duration = Duration::from_secs(60);

/// Bytes per chunk of a download.
const CHUNK: usize = 1 << 20;

/// Chunks buffered between the reading thread and the connection.
const CHANNEL_CHUNKS: usize = 4;

/// One disk of a restore point, readable by [`sendense_fs`]: its chain as of the point, opened
/// read-only, with the VM's chain lock held shared for as long as it lives.
#[derive(Debug)]
struct PointDisk {
    image: Image,
    size: u64,
    _chain: ChainReadGuard,
}

impl BlockRead for PointDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&end| end <= self.size);
        if end.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "read of {} bytes at {offset} past the disk's end ({})",
                    buf.len(),
                    self.size
                ),
            ));
        }
        self.image.read_at(buf, offset).map_err(io::Error::other)
    }
}

/// What a `files/content` call answers: a file (whole or a range of it) or a folder as a tar
/// stream, and the body that streams it.
#[derive(Debug)]
pub struct FileContent {
    /// The file's or folder's name (for `Content-Disposition`); a folder's ends in `.tar`.
    pub name: String,
    /// What is sent.
    pub shape: ContentShape,
    /// The bytes, as they are read.
    pub body: ContentBody,
}

/// The shape of a [`FileContent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentShape {
    /// The whole file: 200 with `Content-Length`.
    Whole {
        /// The file's size.
        size: u64,
    },
    /// Bytes `start..=end` of a file of `size` bytes: 206 with `Content-Range`.
    Partial {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
        /// The file's size.
        size: u64,
    },
    /// A folder as a tar stream of unknown length.
    Tar,
}

/// A download's bytes, produced by a blocking thread; an error ends the stream (the client
/// sees a cut connection, never a silently short file).
#[derive(Debug)]
pub struct ContentBody {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    _permit: OwnedSemaphorePermit,
}

impl http_body::Body for ContentBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, io::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|r| r.map(http_body::Frame::data)))
    }
}

impl Engine {
    /// The partition table of disk `key` of restore point `id`, and the file system found in
    /// each partition. Blocking.
    ///
    /// # Errors
    /// Unknown backup or disk (404), a point not completed or being removed (409), a damaged
    /// table (422), I/O errors.
    pub fn partitions(&self, id: &BackupId, key: DiskKey) -> Result<DiskPartitions, HubError> {
        let disk: Arc<dyn BlockRead> = Arc::new(self.point_disk(id, key)?);
        let table = sendense_fs::partitions(&disk).map_err(|e| files_error(id, key, e))?;
        Ok(DiskPartitions {
            disk_key: key,
            table: table.kind.as_str().to_owned(),
            partitions: table
                .partitions
                .into_iter()
                .map(|p| {
                    let (filesystem, browsable) = match p.detected {
                        sendense_fs::Detected::Supported(kind) => (kind.as_str(), true),
                        sendense_fs::Detected::Unsupported(name) => (name, false),
                        _ => ("unknown", false),
                    };
                    PartitionInfo {
                        index: p.index,
                        start: p.start,
                        size_bytes: p.size,
                        type_id: p.type_id,
                        name: p.name,
                        filesystem: filesystem.to_owned(),
                        browsable,
                    }
                })
                .collect(),
        })
    }

    /// The entries of one folder of a restore point's disk, sorted by name. Blocking.
    ///
    /// # Errors
    /// As [`Engine::partitions`]; a bad path or a path that is not a folder (400), a missing
    /// path or partition (404), a file system Sendense does not read or a damaged one (422).
    pub fn list_files(
        &self,
        id: &BackupId,
        key: DiskKey,
        query: &FilesQuery,
    ) -> Result<FileListing, HubError> {
        let path = parse_path(id, key, query)?;
        let disk: Arc<dyn BlockRead> = Arc::new(self.point_disk(id, key)?);
        let fail = |e| files_error(id, key, e);
        let mut fs = sendense_fs::open(&disk, query.partition).map_err(fail)?;
        let mut entries = fs.list(&path).map_err(fail)?;
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(FileListing {
            disk_key: key,
            partition: query.partition,
            path: path.to_string(),
            entries: entries.into_iter().map(api_entry).collect(),
        })
    }

    /// A file of a restore point's disk (all of it, or the one byte range `range` names, a
    /// `Range` header's value), or a folder as a tar stream, read as the client takes it.
    ///
    /// # Errors
    /// As [`Engine::list_files`]; a range outside the file (416); [`MAX_DOWNLOADS`] running
    /// (503).
    pub async fn file_content(
        self: &Arc<Self>,
        id: &BackupId,
        key: DiskKey,
        query: &FilesQuery,
        range: Option<&str>,
    ) -> Result<FileContent, HubError> {
        let path = parse_path(id, key, query)?;
        let permit = Arc::clone(&self.downloads)
            .try_acquire_owned()
            .map_err(|_| HubError::TooManyDownloads {
                limit: MAX_DOWNLOADS,
            })?;
        let (head_tx, head_rx) = oneshot::channel();
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        let engine = Arc::clone(self);
        let (id, partition, range) = (id.clone(), query.partition, range.map(str::to_owned));
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let sink = Sink { tx, handle };
            let opened = engine
                .point_disk(&id, key)
                .map(|d| Arc::new(d) as Arc<dyn BlockRead>)
                .and_then(|disk| {
                    let mut fs = sendense_fs::open(&disk, partition)
                        .map_err(|e| files_error(&id, key, e))?;
                    let entry = fs.stat(&path).map_err(|e| files_error(&id, key, e))?;
                    Ok((fs, entry))
                });
            let (mut fs, entry) = match opened {
                Ok(v) => v,
                Err(e) => {
                    let _ = head_tx.send(Err(e));
                    return;
                }
            };
            match entry.kind {
                EntryKind::Directory => {
                    let root = tar_root(&path, key, partition);
                    let _ = head_tx.send(Ok((format!("{root}.tar"), ContentShape::Tar)));
                    let result = write_tar(fs.as_mut(), &path, &root, &sink);
                    sink.finish("folder", result);
                }
                EntryKind::File => {
                    let shape = match content_range(range.as_deref(), entry.size) {
                        Ok(shape) => shape,
                        Err(size) => {
                            let _ = head_tx.send(Err(HubError::RangeNotSatisfiable { size }));
                            return;
                        }
                    };
                    let name = path.file_name().unwrap_or("file").to_owned();
                    let _ = head_tx.send(Ok((name, shape)));
                    let (start, end) = match shape {
                        ContentShape::Partial { start, end, .. } => (start, end.saturating_add(1)),
                        _ => (0, entry.size),
                    };
                    let result = send_file(fs.as_mut(), &path, start, end, &sink);
                    sink.finish("file", result);
                }
                _ => {
                    let _ = head_tx.send(Err(files_error(
                        &id,
                        key,
                        sendense_fs::FsError::NotAFile {
                            path: path.to_string(),
                        },
                    )));
                }
            }
        });
        let (name, shape) = head_rx.await.map_err(|_| HubError::Worker)??;
        Ok(FileContent {
            name,
            shape,
            body: ContentBody {
                rx,
                _permit: permit,
            },
        })
    }

    /// Opens disk `key` of completed point `id` for reading, holding the VM's chain lock.
    fn point_disk(&self, id: &BackupId, key: DiskKey) -> Result<PointDisk, HubError> {
        let (record, chain) = self.servable_point(id)?;
        let disk = record
            .disks
            .iter()
            .find(|d| d.disk_key == key)
            .ok_or_else(|| HubError::NoSuchDisk {
                backup_id: id.clone(),
                disk_key: key,
            })?;
        let path = self.repository.join(&disk.file);
        let opts = self.point_open_options(id)?;
        let image = Image::open(&path, &opts).map_err(|e| HubError::image(&path, e))?;
        Ok(PointDisk {
            size: image.virtual_size(),
            image,
            _chain: chain,
        })
    }

    /// The record of completed point `id`, with its VM's chain lock held shared, if the point
    /// may be read: completed, its files present, no unfinished removal step on it.
    ///
    /// # Errors
    /// Unknown backup (404); not completed, files missing, a removal running or unfinished
    /// (409).
    pub(super) fn servable_point(
        &self,
        id: &BackupId,
    ) -> Result<(sendense_catalog::BackupRecord, ChainReadGuard), HubError> {
        let record = self.record(id)?;
        if record.status != BackupStatus::Completed {
            return Err(HubError::WrongStatus {
                backup_id: id.clone(),
                status: record.status,
                expected: "completed",
            });
        }
        if record.files_missing {
            return Err(HubError::FilesMissing {
                backup_id: id.clone(),
                file: record
                    .disks
                    .first()
                    .map(|d| d.file.clone())
                    .unwrap_or_default(),
            });
        }
        let chain = self.chain_locks.try_read(&record.vm_name)?;
        // A point whose removal a failure interrupted (its merge step stays journalled until
        // the next removal of its VM or the next start finishes it) may no longer read as it
        // did: never serve it.
        if self.catalog.merges()?.iter().any(|s| &s.removed == id) {
            return Err(HubError::ChainBusy {
                vm: id.vm_name(),
                holder: format!("restore point {id} is being removed (an unfinished merge step)"),
            });
        }
        Ok((record, chain))
    }
}

/// Where a download's bytes go: the bounded channel to the connection.
struct Sink {
    tx: mpsc::Sender<io::Result<Bytes>>,
    handle: tokio::runtime::Handle,
}

impl Sink {
    /// Sends one chunk, waiting up to [`STALL_LIMIT`] for the client to take the ones before.
    fn send(&self, chunk: Bytes) -> io::Result<()> {
        // The timer is made inside the runtime (`block_on` enters it), so any thread may send.
        let sent = self
            .handle
            .block_on(async { tokio::time::timeout(STALL_LIMIT, self.tx.send(Ok(chunk))).await });
        match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the client went away",
            )),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing for 60 s",
            )),
        }
    }

    /// Ends the stream: an error is logged and passed on, so the client sees a cut
    /// connection rather than a short file.
    fn finish(self, what: &str, result: io::Result<()>) {
        if let Err(e) = result {
            if e.kind() == io::ErrorKind::BrokenPipe {
                tracing::info!("{what} download ended: the client went away");
                return;
            }
            tracing::warn!(error = %sendense_io::error_chain(&e), "{what} download cut off");
            let _ = self.tx.try_send(Err(e));
        }
    }
}

/// A `Write` into a [`Sink`], in chunks of [`CHUNK`] bytes (the tar builder writes headers of
/// 512 bytes).
struct SinkWriter<'a> {
    sink: &'a Sink,
    buf: Vec<u8>,
}

impl Write for SinkWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
            self.sink.send(chunk)?;
        }
        Ok(())
    }
}

/// A file's bytes `start..end` as a `Read`, for the tar builder.
struct FileReader<'a> {
    fs: &'a mut dyn FileSystem,
    path: &'a FsPath,
    pos: u64,
    end: u64,
}

impl Read for FileReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = usize::try_from(self.end.saturating_sub(self.pos)).unwrap_or(usize::MAX);
        let want = buf.len().min(left);
        if want == 0 {
            return Ok(0);
        }
        let n = self
            .fs
            .read(self.path, self.pos, &mut buf[..want])
            .map_err(io::Error::other)?;
        if n == 0 {
            // The file system says the file is shorter than its size: never send a short file.
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{} ends at {} before its size {}",
                    self.path, self.pos, self.end
                ),
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// Sends bytes `start..end` of file `path` in chunks of up to [`CHUNK`] bytes, each read into
/// a page-aligned buffer of a small pool and handed to the connection as it is (no copy): an
/// ext4 file's extents are read from the point's image with `O_DIRECT` straight into it.
fn send_file(
    fs: &mut dyn FileSystem,
    path: &FsPath,
    start: u64,
    end: u64,
    sink: &Sink,
) -> io::Result<()> {
    let mut reader = FileReader {
        fs,
        path,
        pos: start,
        end,
    };
    let pool = BufPool::new(CHANNEL_CHUNKS + 2);
    loop {
        let left = usize::try_from(end.saturating_sub(reader.pos)).unwrap_or(usize::MAX);
        if left == 0 {
            return Ok(());
        }
        // Chunks end on multiples of CHUNK in the file, so after the first one every chunk
        // starts page-aligned in the file as in memory.
        let to_boundary = CHUNK - usize::try_from(reader.pos % CHUNK as u64).unwrap_or(0);
        let mut chunk = pool.take(left.min(to_boundary));
        let mut filled = 0;
        while filled < chunk.len() {
            filled += reader.read(&mut chunk[filled..])?;
        }
        sink.send(Bytes::from_owner(chunk))?;
    }
}

/// Writes folder `path` and everything below it as a tar stream whose members start with
/// `root/`.
fn write_tar(fs: &mut dyn FileSystem, path: &FsPath, root: &str, sink: &Sink) -> io::Result<()> {
    let mut builder = tar::Builder::new(SinkWriter {
        sink,
        buf: Vec::with_capacity(CHUNK),
    });
    builder.follow_symlinks(false);
    let dir = fs.stat(path).map_err(io::Error::other)?;
    append_dir(&mut builder, fs, path, root, &dir, 0)?;
    let mut writer = builder.into_inner()?;
    writer.flush()
}

fn append_dir(
    builder: &mut tar::Builder<SinkWriter<'_>>,
    fs: &mut dyn FileSystem,
    path: &FsPath,
    name: &str,
    entry: &Entry,
    depth: usize,
) -> io::Result<()> {
    if depth > sendense_fs::limits::MAX_DEPTH {
        return Err(io::Error::other(format!(
            "{path} is nested deeper than {} folders",
            sendense_fs::limits::MAX_DEPTH
        )));
    }
    let mut header = tar_header(entry, tar::EntryType::Directory, 0o755);
    builder.append_data(&mut header, format!("{name}/"), io::empty())?;
    let mut entries = fs.list(path).map_err(io::Error::other)?;
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    for child in entries {
        let child_path = path.join(&child.name).map_err(io::Error::other)?;
        let child_name = format!("{name}/{}", child.name);
        match child.kind {
            EntryKind::Directory => {
                append_dir(builder, fs, &child_path, &child_name, &child, depth + 1)?;
            }
            EntryKind::File => {
                let mut header = tar_header(&child, tar::EntryType::Regular, 0o644);
                header.set_size(child.size);
                let reader = FileReader {
                    fs: &mut *fs,
                    path: &child_path,
                    pos: 0,
                    end: child.size,
                };
                builder.append_data(&mut header, &child_name, reader)?;
            }
            EntryKind::Symlink => {
                let mut header = tar_header(&child, tar::EntryType::Symlink, 0o777);
                let target = child.link_target.clone().unwrap_or_default();
                builder.append_link(&mut header, &child_name, target)?;
            }
            _ => {
                tracing::debug!(path = %child_path, "left out of a tar stream: not a file, folder or link");
            }
        }
    }
    Ok(())
}

fn tar_header(entry: &Entry, kind: tar::EntryType, default_mode: u32) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(entry.mode.map_or(default_mode, |m| m & 0o7777));
    header.set_mtime(entry.mtime.and_then(|t| u64::try_from(t).ok()).unwrap_or(0));
    header.set_size(0);
    header
}

/// The top folder of a folder's tar stream: the folder's own name, or for a file system's
/// root `disk-KEY` (with `-pN` for partition N).
fn tar_root(path: &FsPath, key: DiskKey, partition: Option<u32>) -> String {
    match path.file_name() {
        Some(name) => name.to_owned(),
        None => match partition {
            Some(n) => format!("disk-{key}-p{n}"),
            None => format!("disk-{key}"),
        },
    }
}

/// What a `Range` header asks of a file of `size` bytes: the whole file for no header (or one
/// this does not serve: several ranges, another unit), one range otherwise. `Err(size)` for a
/// range wholly outside the file (416).
fn content_range(range: Option<&str>, size: u64) -> Result<ContentShape, u64> {
    let whole = ContentShape::Whole { size };
    let Some(spec) = range.and_then(|r| r.trim().strip_prefix("bytes=")) else {
        return Ok(whole);
    };
    if spec.contains(',') {
        return Ok(whole);
    }
    let Some((first, last)) = spec.split_once('-') else {
        return Ok(whole);
    };
    let (first, last) = (first.trim(), last.trim());
    let (start, end) = if first.is_empty() {
        // A suffix: the last N bytes.
        let Ok(n) = last.parse::<u64>() else {
            return Ok(whole);
        };
        if n == 0 || size == 0 {
            return Err(size);
        }
        (size.saturating_sub(n), size - 1)
    } else {
        let Ok(start) = first.parse::<u64>() else {
            return Ok(whole);
        };
        let end = if last.is_empty() {
            size.saturating_sub(1)
        } else {
            match last.parse::<u64>() {
                Ok(end) if end >= start => end.min(size.saturating_sub(1)),
                _ => return Ok(whole),
            }
        };
        if start >= size {
            return Err(size);
        }
        (start, end)
    };
    Ok(ContentShape::Partial { start, end, size })
}

fn parse_path(id: &BackupId, key: DiskKey, query: &FilesQuery) -> Result<FsPath, HubError> {
    FsPath::parse(query.path.as_deref().unwrap_or("/")).map_err(|e| files_error(id, key, e))
}

fn files_error(id: &BackupId, key: DiskKey, source: sendense_fs::FsError) -> HubError {
    HubError::Files {
        backup_id: id.clone(),
        disk_key: key,
        source,
    }
}

fn api_entry(e: Entry) -> FileEntry {
    FileEntry {
        name: e.name,
        kind: e.kind.as_str().to_owned(),
        size: e.size,
        mode: e.mode,
        mtime: e.mtime.and_then(|t| Timestamp::from_unix_seconds(t).ok()),
        link_target: e.link_target,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let whole = Ok(ContentShape::Whole { size: 100 });
        let part = |start, end| {
            Ok(ContentShape::Partial {
                start,
                end,
                size: 100,
            })
        };
        assert_eq!(content_range(None, 100), whole);
        assert_eq!(content_range(Some("bytes=0-9"), 100), part(0, 9));
        assert_eq!(content_range(Some("bytes=90-"), 100), part(90, 99));
        assert_eq!(content_range(Some("bytes=90-500"), 100), part(90, 99));
        assert_eq!(content_range(Some("bytes=-10"), 100), part(90, 99));
        assert_eq!(content_range(Some("bytes=-500"), 100), part(0, 99));
        assert_eq!(content_range(Some("bytes=100-"), 100), Err(100));
        assert_eq!(content_range(Some("bytes=-0"), 100), Err(100));
        assert_eq!(content_range(Some("bytes=0-0"), 0), Err(0));
        // Not served as ranges: answered whole (RFC 9110 lets a server ignore Range).
        assert_eq!(content_range(Some("bytes=0-1,5-6"), 100), whole);
        assert_eq!(content_range(Some("items=0-1"), 100), whole);
        assert_eq!(content_range(Some("bytes=9-1"), 100), whole);
        assert_eq!(content_range(Some("bytes=x-1"), 100), whole);
    }

    /// A file system with one file whose byte `i` is `i % 251`.
    struct Pattern(u64);

    impl FileSystem for Pattern {
        fn kind(&self) -> sendense_fs::FsKind {
            sendense_fs::FsKind::Ext4
        }
        fn stat(&mut self, path: &FsPath) -> Result<Entry, sendense_fs::FsError> {
            Err(sendense_fs::FsError::NotFound {
                path: path.to_string(),
            })
        }
        fn list(&mut self, path: &FsPath) -> Result<Vec<Entry>, sendense_fs::FsError> {
            self.stat(path).map(|_| Vec::new())
        }
        fn read(
            &mut self,
            _: &FsPath,
            offset: u64,
            buf: &mut [u8],
        ) -> Result<usize, sendense_fs::FsError> {
            let n = usize::try_from(self.0.saturating_sub(offset))
                .unwrap()
                .min(buf.len());
            for (i, b) in buf[..n].iter_mut().enumerate() {
                *b = u8::try_from((offset + i as u64) % 251).unwrap();
            }
            Ok(n)
        }
    }

    #[test]
    fn file_chunks_after_the_first_start_on_chunk_boundaries_in_page_aligned_memory() {
        // Multi-threaded: its worker drives the timer the sending thread's `block_on` uses.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (tx, mut rx) = mpsc::channel(CHANNEL_CHUNKS);
        let sink = Sink {
            tx,
            handle: rt.handle().clone(),
        };
        let (start, end) = (1000u64, 1000 + 2 * CHUNK as u64 + 5);
        let sender = std::thread::spawn(move || {
            let path = FsPath::parse("/f").unwrap();
            send_file(&mut Pattern(end + 10), &path, start, end, &sink)
        });

        let mut chunks = Vec::new();
        while let Some(chunk) = rt.block_on(rx.recv()) {
            chunks.push(chunk.unwrap());
        }
        sender.join().unwrap().unwrap();

        let lens: Vec<usize> = chunks.iter().map(Bytes::len).collect();
        assert_eq!(lens, [CHUNK - 1000, CHUNK, 1005]);
        assert!(
            chunks[1..]
                .iter()
                .all(|c| (c.as_ptr() as usize).is_multiple_of(sendense_io::PAGE_SIZE))
        );
        let all: Vec<u8> = chunks.concat();
        assert!(
            all.iter()
                .enumerate()
                .all(|(i, b)| u64::from(*b) == (start + i as u64) % 251)
        );
    }

    #[test]
    fn tar_roots() {
        let key: DiskKey = "2000".parse().unwrap();
        assert_eq!(tar_root(&FsPath::root(), key, None), "disk-2000");
        assert_eq!(tar_root(&FsPath::root(), key, Some(2)), "disk-2000-p2");
        assert_eq!(
            tar_root(&FsPath::parse("/etc/ssh").unwrap(), key, Some(1)),
            "ssh"
        );
    }
}
