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

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use sendense_types::{BackupId, DiskKey, DiskPartitions, FileEntry, FileListing, FilesQuery};

use crate::error::ClientError;
use crate::hub::{HubClient, HubOptions};

/// Deepest folder nesting [`find`] descends.
pub const MAX_FIND_DEPTH: usize = 256;

/// Most folders [`find`] lists in one run.
pub const MAX_FIND_FOLDERS: usize = 100_000;

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
    if dest.exists() {
        return Err(file_error(
            dest,
            io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists already: choose another --to or remove it",
            ),
        ));
    }
    let partial = partial_path(dest);
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
