//! `sendense-client files`: single files and folders from a restore point, read by the hub from
//! its own images (no restore of the disk, no mount).
//!
//! - [`partitions`]: the disk's partition table and the file system in each partition.
//! - [`list`]: one folder.
//! - [`find`]: walks folders (one listing call per folder) and answers the entries whose name
//!   matches a shell-style pattern.
//! - [`get`]: downloads a file into a local file (written as `PATH.partial`, renamed when
//!   complete; `resume` continues a `.partial` left by a cut download with a `Range` request)
//!   or a folder, which the hub streams as tar, unpacked into a local folder (or kept as a
//!   `.tar` file).
//!
//! # Parallel downloads
//! A file larger than one piece ([`Pieces::piece_bytes`], 64 MiB by default) downloads as
//! pieces, [`Pieces::streams`] (4) `Range` requests at once, each on its own connection, as
//! `restore` reads a disk over 4 NBD connections: one TLS stream is bound by one core on each
//! side. A piece's answer is read straight into page-aligned buffers of 1 MiB (its own
//! HTTP/1.1 connection, module `range_get`: one copy of each byte out of TLS, not two through
//! `reqwest`), each written at its offset in `NAME.partial` with `O_DIRECT` where the file
//! system allows it, as `restore` writes. Which pieces are complete is kept in a small JSON file beside it,
//! `NAME.partial.pieces` (`{"size":…,"piece_bytes":…,"done":[0,3,…]}`): a piece is listed
//! only after its bytes are durable (`fdatasync`), and the list is replaced atomically, so
//! `resume` fetches exactly the pieces not listed, whatever was cut and however. The
//! `.pieces` file is written before the first byte of the `.partial` and removed after the
//! rename; a `.partial` without one comes from a one-stream download and resumes from its
//! length.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use sendense_io::AlignedBuf;
use sendense_qcow2::{FileStorage, Storage};
use sendense_types::{BackupId, DiskKey, DiskPartitions, FileEntry, FileListing, FilesQuery};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::error::ClientError;
use crate::hub::{HubClient, HubOptions};

/// Deepest folder nesting [`find`] descends.
pub const MAX_FIND_DEPTH: usize = 256;

/// Most folders [`find`] lists in one run.
pub const MAX_FIND_FOLDERS: usize = 100_000;

/// Default of [`Pieces::streams`].
pub const DEFAULT_STREAMS: usize = 4;

/// Default of [`Pieces::piece_bytes`].
pub const DEFAULT_PIECE_BYTES: u64 = 64 << 20;

/// Most streams of one download.
pub const MAX_STREAMS: usize = 16;

/// Bytes a piece's stream gathers before writing them (page-aligned, so `O_DIRECT` can take
/// them).
const STAGE_BYTES: usize = 1 << 20;

/// How a large file downloads (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pieces {
    /// Requests in flight at once (1 to [`MAX_STREAMS`]; 1: one stream, no pieces).
    pub streams: usize,
    /// Bytes per piece, a multiple of 4096 (the last piece may be shorter). A file larger
    /// than one piece downloads in pieces.
    pub piece_bytes: u64,
}

impl Default for Pieces {
    fn default() -> Self {
        Self {
            streams: DEFAULT_STREAMS,
            piece_bytes: DEFAULT_PIECE_BYTES,
        }
    }
}

impl Pieces {
    /// Checks the values.
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] for no stream, too many, or a piece size that is not
    /// a non-zero multiple of 4096.
    pub fn check(&self) -> Result<(), ClientError> {
        if !(1..=MAX_STREAMS).contains(&self.streams) {
            return Err(ClientError::InvalidArgument {
                what: "--streams",
                reason: format!("{} is not 1 to {MAX_STREAMS}", self.streams),
            });
        }
        if self.piece_bytes == 0
            || !self
                .piece_bytes
                .is_multiple_of(sendense_io::PAGE_SIZE as u64)
        {
            return Err(ClientError::InvalidArgument {
                what: "--piece-size",
                reason: format!(
                    "{} is not a non-zero multiple of 4096 bytes",
                    self.piece_bytes
                ),
            });
        }
        Ok(())
    }

    /// Whether a file of `size` bytes downloads in pieces.
    #[must_use]
    pub fn split(&self, size: u64) -> bool {
        self.streams > 1 && size > self.piece_bytes
    }
}

/// Which disk of which restore point, and which partition of it.
#[derive(Debug, Clone)]
pub struct FilesTarget {
    /// The hub.
    pub hub: HubOptions,
    /// The restore point.
    pub backup: BackupId,
    /// The disk.
    pub disk: DiskKey,
    /// The partition (left out for a disk without a table or with one partition).
    pub partition: Option<u32>,
}

impl FilesTarget {
    fn query(&self, path: &str) -> FilesQuery {
        FilesQuery {
            partition: self.partition,
            path: Some(path.to_owned()),
        }
    }
}

/// The disk's partition table.
///
/// # Errors
/// The hub's refusal (unknown point or disk, damaged table) or a transport failure.
pub async fn partitions(target: &FilesTarget) -> Result<DiskPartitions, ClientError> {
    let hub = HubClient::new(&target.hub)?;
    hub.partitions(&target.backup, target.disk).await
}

/// One folder.
///
/// # Errors
/// The hub's refusal (no such path, not a folder, a file system it does not read) or a
/// transport failure.
pub async fn list(target: &FilesTarget, path: &str) -> Result<FileListing, ClientError> {
    let hub = HubClient::new(&target.hub)?;
    hub.list_files(&target.backup, target.disk, &target.query(path))
        .await
}

/// An entry [`find`] found, with its full path.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Found {
    /// Absolute path inside the file system.
    pub path: String,
    /// The entry.
    #[serde(flatten)]
    pub entry: FileEntry,
}

/// Walks the folders below `path` (breadth first, at most [`MAX_FIND_DEPTH`] deep and
/// [`MAX_FIND_FOLDERS`] folders) and answers the entries whose name matches `pattern` (`*`
/// any run of characters, `?` one character; `None` matches all), of type `kind` when given
/// (`file`, `directory`, `symlink`, `other`).
///
/// # Errors
/// As [`list`]; [`ClientError::InvalidArgument`] beyond the limits.
pub async fn find(
    target: &FilesTarget,
    path: &str,
    pattern: Option<&str>,
    kind: Option<&str>,
) -> Result<Vec<Found>, ClientError> {
    let hub = HubClient::new(&target.hub)?;
    let mut found = Vec::new();
    let mut queue = VecDeque::from([(path.trim_end_matches('/').to_owned(), 0usize)]);
    let mut listed = 0usize;
    while let Some((folder, depth)) = queue.pop_front() {
        listed += 1;
        if listed > MAX_FIND_FOLDERS {
            return Err(ClientError::InvalidArgument {
                what: "find",
                reason: format!(
                    "more than {MAX_FIND_FOLDERS} folders below {path}: start lower in the tree"
                ),
            });
        }
        let shown = if folder.is_empty() { "/" } else { &folder };
        let listing = hub
            .list_files(&target.backup, target.disk, &target.query(shown))
            .await?;
        for entry in listing.entries {
            let child = format!("{folder}/{}", entry.name);
            if entry.kind == "directory" && depth < MAX_FIND_DEPTH {
                queue.push_back((child.clone(), depth + 1));
            }
            let name_ok = pattern.is_none_or(|p| glob_matches(p, &entry.name));
            let kind_ok = kind.is_none_or(|k| k == entry.kind);
            if name_ok && kind_ok {
                found.push(Found { path: child, entry });
            }
        }
    }
    Ok(found)
}

/// How [`get`] stores a folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FolderAs {
    /// Unpacked into a local folder.
    Unpacked,
    /// Kept as the tar stream the hub sends.
    Tar,
}

/// What [`get`] did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GetSummary {
    /// What was written: the file, the folder unpacked into, or the tar file.
    pub written: PathBuf,
    /// `file`, `folder` or `tar`.
    pub kind: &'static str,
    /// Bytes received from the hub.
    pub bytes: u64,
    /// Seconds taken.
    pub seconds: f64,
    /// Bytes a resumed download found already written.
    pub resumed_from: u64,
}

/// Options of [`get`].
#[derive(Debug, Clone)]
pub struct GetOptions {
    /// Path inside the file system.
    pub path: String,
    /// Where to write: a file for a file (an existing folder: the file goes inside it under its
    /// own name), a folder for a folder (created; the folder goes inside it under its own
    /// name), the tar file with [`FolderAs::Tar`]. Default: the current folder.
    pub to: Option<PathBuf>,
    /// How to store a folder.
    pub folder_as: FolderAs,
    /// Continue a cut file download from its `.partial` file.
    pub resume: bool,
    /// How a large file downloads.
    pub pieces: Pieces,
}

/// Downloads a file or folder of the restore point.
///
/// # Errors
/// As [`list`]; a local file that exists already (never overwritten) or cannot be written; a
/// download the hub cut.
pub async fn get(
    target: &FilesTarget,
    options: &GetOptions,
    progress: &dyn Fn(u64, Option<u64>),
) -> Result<GetSummary, ClientError> {
    options.pieces.check()?;
    let hub = HubClient::new(&target.hub)?;
    let started = Instant::now();
    let name = options
        .path
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty())
        .map(str::to_owned);
    let query = target.query(&options.path);
    // A resumed download asks for the rest of the file (a folder cannot resume).
    let dest_if_file = name
        .as_deref()
        .map(|n| file_destination(options.to.as_deref(), n));
    if let (Some(dest), true) = (&dest_if_file, options.resume)
        && partial_path(dest).exists()
        && let Some(state) = PieceState::load(&pieces_path(dest))?
    {
        let job = PieceJob::new(&hub, target, query.clone(), dest, state);
        let (bytes, resumed_from) = job.run(options.pieces.streams, progress).await?;
        return Ok(summary(dest.clone(), "file", bytes, started, resumed_from));
    }
    let partial_len = match (&dest_if_file, options.resume) {
        (Some(dest), true) => std::fs::metadata(partial_path(dest)).map_or(0, |m| m.len()),
        _ => 0,
    };
    let from = (partial_len > 0).then_some(partial_len);
    let mut download = hub
        .download(&target.backup, target.disk, &query, from)
        .await?;
    if download.is_tar {
        let root = default_tar_name(target, name.as_deref());
        return match options.folder_as {
            FolderAs::Tar => {
                let dest = match options.to.clone() {
                    Some(to) if to.is_dir() => to.join(format!("{root}.tar")),
                    Some(to) => to,
                    None => PathBuf::from(format!("{root}.tar")),
                };
                let bytes = save(&mut download, &dest, 0, progress).await?;
                Ok(summary(dest, "tar", bytes, started, 0))
            }
            FolderAs::Unpacked => {
                let into = options.to.clone().unwrap_or_else(|| PathBuf::from("."));
                let bytes = unpack(&mut download, &into, progress).await?;
                Ok(summary(into.join(&root), "folder", bytes, started, 0))
            }
        };
    }
    let dest = dest_if_file.unwrap_or_else(|| PathBuf::from("file"));
    if let (false, Some(size)) = (download.partial, download.total)
        && options.pieces.split(size)
    {
        // The pieces come by ranges of their own: this whole-file answer only told the size.
        drop(download);
        let state = PieceState {
            size,
            piece_bytes: options.pieces.piece_bytes,
            done: Vec::new(),
        };
        let job = PieceJob::new(&hub, target, query.clone(), &dest, state);
        job.start()?;
        let (bytes, _) = job.run(options.pieces.streams, progress).await?;
        return Ok(summary(dest, "file", bytes, started, 0));
    }
    let resumed_from = if download.partial { partial_len } else { 0 };
    let bytes = save(&mut download, &dest, resumed_from, progress).await?;
    Ok(summary(dest, "file", bytes, started, resumed_from))
}

fn summary(
    written: PathBuf,
    kind: &'static str,
    bytes: u64,
    started: Instant,
    resumed_from: u64,
) -> GetSummary {
    GetSummary {
        written,
        kind,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
        resumed_from,
    }
}

/// The name the hub gives a folder's tar stream's top folder.
fn default_tar_name(target: &FilesTarget, name: Option<&str>) -> String {
    match (name, target.partition) {
        (Some(n), _) => n.to_owned(),
        (None, Some(p)) => format!("disk-{}-p{p}", target.disk),
        (None, None) => format!("disk-{}", target.disk),
    }
}

fn file_destination(to: Option<&Path>, name: &str) -> PathBuf {
    match to {
        Some(to) if to.is_dir() => to.join(name),
        Some(to) => to.to_path_buf(),
        None => PathBuf::from(name),
    }
}

fn partial_path(dest: &Path) -> PathBuf {
    let mut p = dest.as_os_str().to_owned();
    p.push(".partial");
    PathBuf::from(p)
}

/// The list of complete pieces of `dest.partial` (see the module docs).
fn pieces_path(dest: &Path) -> PathBuf {
    let mut p = dest.as_os_str().to_owned();
    p.push(".partial.pieces");
    PathBuf::from(p)
}

/// What `NAME.partial.pieces` holds: the file's size, the piece size, the pieces complete.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PieceState {
    size: u64,
    piece_bytes: u64,
    done: Vec<u64>,
}

impl PieceState {
    /// Reads `path`; `None` when there is none.
    fn load(path: &Path) -> Result<Option<Self>, ClientError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(file_error(path, e)),
        };
        let state: Self = serde_json::from_slice(&bytes).map_err(|e| {
            file_error(
                path,
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("not a pieces list: {e}"),
                ),
            )
        })?;
        if state.piece_bytes == 0
            || !state
                .piece_bytes
                .is_multiple_of(sendense_io::PAGE_SIZE as u64)
            || state.done.iter().any(|&i| i >= state.count())
        {
            return Err(file_error(
                path,
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a pieces list with a bad piece size or piece number: remove it and the \
                     .partial file to download again",
                ),
            ));
        }
        Ok(Some(state))
    }

    /// Replaces `path` with this state, durably.
    fn save(&self, path: &Path) -> io::Result<()> {
        let bytes = serde_json::to_vec(self).map_err(io::Error::other)?;
        sendense_io::write_atomic(path, &bytes, 0o600)
    }

    fn count(&self) -> u64 {
        self.size.div_ceil(self.piece_bytes)
    }

    /// Bytes `start..end` of piece `i`.
    fn range(&self, i: u64) -> (u64, u64) {
        let start = i.saturating_mul(self.piece_bytes);
        (start, start.saturating_add(self.piece_bytes).min(self.size))
    }

    /// Pieces not yet complete, in order.
    fn missing(&self) -> VecDeque<u64> {
        (0..self.count())
            .filter(|i| !self.done.contains(i))
            .collect()
    }

    /// Bytes of the complete pieces.
    fn done_bytes(&self) -> u64 {
        self.done
            .iter()
            .map(|&i| {
                let (a, b) = self.range(i);
                b - a
            })
            .sum()
    }
}

/// A download in pieces of one file into `dest.partial`.
#[derive(Clone)]
struct PieceJob {
    hub: HubClient,
    backup: BackupId,
    disk: DiskKey,
    query: FilesQuery,
    dest: PathBuf,
    partial: PathBuf,
    state_path: PathBuf,
    state: Arc<Mutex<PieceState>>,
}

impl PieceJob {
    fn new(
        hub: &HubClient,
        target: &FilesTarget,
        query: FilesQuery,
        dest: &Path,
        state: PieceState,
    ) -> Self {
        Self {
            hub: hub.clone(),
            backup: target.backup.clone(),
            disk: target.disk,
            query,
            dest: dest.to_path_buf(),
            partial: partial_path(dest),
            state_path: pieces_path(dest),
            state: Arc::new(Mutex::new(state)),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, PieceState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A fresh download: the pieces list (none done) first, then an empty `.partial` of the
    /// file's size.
    fn start(&self) -> Result<(), ClientError> {
        exists_already(&self.dest)?;
        self.state()
            .save(&self.state_path)
            .map_err(|e| file_error(&self.state_path, e))?;
        sendense_io::sync_parent(&self.state_path).map_err(|e| file_error(&self.state_path, e))?;
        let size = self.state().size;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&self.partial)
            .map_err(|e| file_error(&self.partial, e))?;
        file.set_len(size)
            .map_err(|e| file_error(&self.partial, e))?;
        Ok(())
    }

    /// Fetches the missing pieces, `streams` at once, then makes the file durable and renames
    /// it onto `dest`. Answers the bytes received and the bytes found complete.
    async fn run(
        &self,
        streams: usize,
        progress: &dyn Fn(u64, Option<u64>),
    ) -> Result<(u64, u64), ClientError> {
        exists_already(&self.dest)?;
        let (missing, size, resumed_from) = {
            let s = self.state();
            (s.missing(), s.size, s.done_bytes())
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.partial)
            .map_err(|e| file_error(&self.partial, e))?;
        let storage = Arc::new(FileStorage::with_direct_io(file, &self.partial, true));
        let queue = Arc::new(Mutex::new(missing));
        let (tx, mut rx) = mpsc::unbounded_channel::<u64>();
        let mut workers = JoinSet::new();
        for _ in 0..streams {
            let (job, storage, queue, tx) = (
                self.clone(),
                Arc::clone(&storage),
                Arc::clone(&queue),
                tx.clone(),
            );
            workers.spawn(async move {
                loop {
                    let next = queue
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .pop_front();
                    let Some(i) = next else {
                        return Ok(());
                    };
                    job.piece(&storage, i, &tx).await?;
                }
            });
        }
        drop(tx);
        let mut done = resumed_from;
        progress(done, Some(size));
        let mut failed = None;
        loop {
            tokio::select! {
                Some(n) = rx.recv() => {
                    done += n;
                    progress(done, Some(size));
                }
                joined = workers.join_next() => match joined {
                    None => break,
                    Some(Ok(Ok(()))) => {}
                    Some(Ok(Err(e))) => {
                        failed = Some(e);
                        workers.abort_all();
                    }
                    Some(Err(e)) if e.is_cancelled() => {}
                    Some(Err(e)) => {
                        failed = Some(ClientError::HubResponse {
                            method: "GET",
                            path: self.dest.display().to_string(),
                            detail: format!("a download stream failed: {e}"),
                        });
                        workers.abort_all();
                    }
                },
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        let left = self.state().missing();
        if !left.is_empty() {
            return Err(ClientError::HubResponse {
                method: "GET",
                path: self.dest.display().to_string(),
                detail: format!("{} pieces were not downloaded", left.len()),
            });
        }
        let (partial, dest, state_path) = (
            self.partial.clone(),
            self.dest.clone(),
            self.state_path.clone(),
        );
        tokio::task::spawn_blocking(move || {
            storage.sync_all().map_err(|e| file_error(&partial, e))?;
            drop(storage);
            sendense_io::rename_durable(&partial, &dest).map_err(|e| file_error(&dest, e))?;
            match std::fs::remove_file(&state_path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(file_error(&state_path, e)),
                _ => Ok(()),
            }
        })
        .await
        .map_err(|e| ClientError::HubResponse {
            method: "GET",
            path: self.dest.display().to_string(),
            detail: format!("finishing the download failed: {e}"),
        })??;
        Ok((done - resumed_from, resumed_from))
    }

    /// Downloads piece `i` into `storage`, makes it durable and lists it as complete.
    async fn piece(
        &self,
        storage: &Arc<FileStorage>,
        i: u64,
        tx: &mpsc::UnboundedSender<u64>,
    ) -> Result<(), ClientError> {
        let (size, (start, end)) = {
            let s = self.state();
            (s.size, s.range(i))
        };
        let cut = |detail: String| ClientError::HubResponse {
            method: "GET",
            path: self.dest.display().to_string(),
            detail,
        };
        // Its own connection, read straight into the page-aligned stage (see `range_get`).
        let path = crate::hub::files_path(&self.backup, self.disk, "files/content", &self.query);
        let (head, mut body) = crate::range_get::get(&self.hub, &path, start, end - 1).await?;
        if head.status != 206 || head.total != Some(size) || head.length != Some(end - start) {
            return Err(cut(format!(
                "asked for bytes {start}-{} of a file of {size} bytes, the hub answered {} \
                 bytes of a file of {} (a different file? remove {} and download again)",
                end - 1,
                head.length
                    .map_or_else(|| "?".to_owned(), |l| l.to_string()),
                head.total.map_or_else(|| "?".to_owned(), |t| t.to_string()),
                self.partial.display(),
            )));
        }
        let mut stage = AlignedBuf::zeroed(STAGE_BYTES);
        let mut at = start;
        while at < end {
            // Up to the next multiple of STAGE_BYTES (or the piece's end), so that every write
            // but the last of the file is page-aligned.
            let n = usize::try_from(
                (at + 1)
                    .next_multiple_of(STAGE_BYTES as u64)
                    .min(end)
                    .saturating_sub(at),
            )
            .unwrap_or(STAGE_BYTES)
            .min(STAGE_BYTES);
            body.read_exact(&mut stage[..n]).await?;
            stage = self.write_stage(storage, stage, n, at).await?;
            let _ = tx.send(n as u64);
            at += n as u64;
        }
        if at != end {
            return Err(cut(format!(
                "the download of bytes {start}-{} was cut off after {} bytes",
                end - 1,
                at - start
            )));
        }
        let (storage, state, state_path, partial) = (
            Arc::clone(storage),
            Arc::clone(&self.state),
            self.state_path.clone(),
            self.partial.clone(),
        );
        self.blocking(move || {
            storage.sync_data().map_err(|e| file_error(&partial, e))?;
            let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
            s.done.push(i);
            s.done.sort_unstable();
            s.save(&state_path).map_err(|e| file_error(&state_path, e))
        })
        .await
    }

    /// Writes `stage[..used]` at `at` on the blocking pool; answers the buffer for reuse.
    async fn write_stage(
        &self,
        storage: &Arc<FileStorage>,
        stage: AlignedBuf,
        used: usize,
        at: u64,
    ) -> Result<AlignedBuf, ClientError> {
        let (storage, partial) = (Arc::clone(storage), self.partial.clone());
        self.blocking(move || {
            storage
                .write_data_at(&stage[..used], at)
                .map_err(|e| file_error(&partial, e))?;
            Ok(stage)
        })
        .await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, ClientError> + Send + 'static,
    ) -> Result<T, ClientError> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| ClientError::HubResponse {
                method: "GET",
                path: self.dest.display().to_string(),
                detail: format!("a write of the download failed: {e}"),
            })?
    }
}

/// Refuses to write onto an existing `dest`.
fn exists_already(dest: &Path) -> Result<(), ClientError> {
    if dest.exists() {
        return Err(file_error(
            dest,
            io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists already: choose another --to or remove it",
            ),
        ));
    }
    Ok(())
}

fn file_error(path: &Path, source: io::Error) -> ClientError {
    ClientError::File {
        what: "download target",
        path: path.to_path_buf(),
        source,
    }
}

/// Writes the download into `dest` through `dest.partial` (appending after `resumed_from`
/// bytes), fsyncs and renames it; never overwrites an existing `dest`.
async fn save(
    download: &mut crate::hub::Download,
    dest: &Path,
    resumed_from: u64,
    progress: &dyn Fn(u64, Option<u64>),
) -> Result<u64, ClientError> {
    exists_already(dest)?;
    let partial = partial_path(dest);
    // A pieces list left by an earlier download in pieces would describe another `.partial`.
    match std::fs::remove_file(pieces_path(dest)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(file_error(&pieces_path(dest), e));
        }
        _ => {}
    }
    let mut file = if resumed_from > 0 {
        std::fs::OpenOptions::new().append(true).open(&partial)
    } else {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&partial)
    }
    .map_err(|e| file_error(&partial, e))?;
    let total = download.length.map(|l| l + resumed_from);
    let mut done = resumed_from;
    while let Some(chunk) = download.chunk().await? {
        file.write_all(&chunk)
            .map_err(|e| file_error(&partial, e))?;
        done += chunk.len() as u64;
        progress(done, total);
    }
    if let Some(total) = total
        && done != total
    {
        return Err(ClientError::HubResponse {
            method: "GET",
            path: dest.display().to_string(),
            detail: format!("the download ended after {done} of {total} bytes"),
        });
    }
    file.sync_all().map_err(|e| file_error(&partial, e))?;
    drop(file);
    sendense_io::rename_durable(&partial, dest).map_err(|e| file_error(dest, e))?;
    Ok(done - resumed_from)
}

/// Unpacks the tar stream into `into` on a blocking thread while the chunks arrive.
async fn unpack(
    download: &mut crate::hub::Download,
    into: &Path,
    progress: &dyn Fn(u64, Option<u64>),
) -> Result<u64, ClientError> {
    std::fs::create_dir_all(into).map_err(|e| file_error(into, e))?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<bytes::Bytes>(4);
    let target = into.to_path_buf();
    let unpacker = tokio::task::spawn_blocking(move || {
        let mut archive = tar::Archive::new(ChannelReader {
            rx,
            current: bytes::Bytes::new(),
        });
        archive.set_preserve_permissions(true);
        archive.set_preserve_mtime(true);
        archive.set_overwrite(false);
        archive.unpack(&target)
    });
    let mut done = 0u64;
    let mut cut = None;
    loop {
        match download.chunk().await {
            Ok(Some(chunk)) => {
                done += chunk.len() as u64;
                progress(done, None);
                if tx.send(chunk).is_err() {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                cut = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let unpacked = unpacker.await.map_err(|e| ClientError::HubResponse {
        method: "GET",
        path: into.display().to_string(),
        detail: format!("the unpacking thread failed: {e}"),
    })?;
    if let Some(e) = cut {
        return Err(e);
    }
    unpacked.map_err(|e| file_error(into, e))?;
    Ok(done)
}

/// A `Read` over the chunks a download hands over.
struct ChannelReader {
    rx: std::sync::mpsc::Receiver<bytes::Bytes>,
    current: bytes::Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.recv() {
                Ok(chunk) => self.current = chunk,
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// A progress bar for a download (bytes, rate, ETA once the size is known).
#[must_use]
pub fn download_bar() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
    ) {
        bar.set_style(style);
    }
    bar
}

/// A partition table as text: one line per partition.
#[must_use]
pub fn format_partitions(table: &DiskPartitions) -> String {
    let mut out = format!("disk {}: partition table {}\n", table.disk_key, table.table);
    out.push_str("  #  START           SIZE            TYPE                                  FILESYSTEM  NAME\n");
    for p in &table.partitions {
        out.push_str(&format!(
            "{:>3}  {:<14}  {:<14}  {:<36}  {:<10}  {}{}\n",
            p.index,
            p.start,
            p.size_bytes,
            p.type_id,
            p.filesystem,
            p.name.as_deref().unwrap_or(""),
            if p.browsable { "" } else { " (not browsable)" }
        ));
    }
    out.trim_end().to_owned()
}

/// Folder entries as text, `ls -l` style: type and mode, size, modification time (UTC), name
/// (and `-> target` for a link).
#[must_use]
pub fn format_listing(entries: &[FileEntry]) -> String {
    entries
        .iter()
        .map(|e| {
            let kind = match e.kind.as_str() {
                "directory" => 'd',
                "symlink" => 'l',
                "file" => '-',
                _ => '?',
            };
            let mode = e.mode.map_or_else(|| "---------".to_owned(), mode_string);
            let mtime = e.mtime.map_or_else(|| "-".repeat(20), |t| t.to_string());
            let link = e
                .link_target
                .as_deref()
                .map(|t| format!(" -> {t}"))
                .unwrap_or_default();
            format!("{kind}{mode} {:>14} {mtime} {}{link}", e.size, e.name)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `rwxr-x---` of Unix mode bits.
fn mode_string(mode: u32) -> String {
    let mut s = String::with_capacity(9);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// Shell-style match of a whole name: `*` any run of characters (none too), `?` exactly one.
#[must_use]
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_matches("*.conf", "ssh.conf"));
        assert!(glob_matches("*", ""));
        assert!(glob_matches("a?c", "abc"));
        assert!(glob_matches("*文件*", "Ünïcødé-文件.txt"));
        assert!(glob_matches("a*b*c", "aXXbYYc"));
        assert!(!glob_matches("*.conf", "ssh.config"));
        assert!(!glob_matches("a?c", "ac"));
        assert!(!glob_matches("abc", "abcd"));
    }

    #[test]
    fn modes() {
        assert_eq!(mode_string(0o100_755), "rwxr-xr-x");
        assert_eq!(mode_string(0o640), "rw-r-----");
    }
}
