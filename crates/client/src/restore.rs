//! `sendense-client restore`: one disk of a restore point, or of an instant recovery's current
//! state, from the hub into a local image.
//!
//! From a restore point ([`RestoreFrom::Backup`]) it opens the backup's read-only exports
//! (`POST /api/v1/backups/{id}/exports`) and closes them at the end, also when something
//! failed. From an instant recovery ([`RestoreFrom::Instant`], `--from-instant`: the "move to
//! production" step) it reads the instant's writable export of the disk as it stands
//! (`GET /api/v1/instant/{id}`), the guest's writes included, and leaves it open: stop the
//! guest first so its disk holds still while it is copied. Either way it reads the disk
//! with N NBD connections ([`NbdSource`]: block status skips holes and zero extents), and
//! writes through the same transfer engine as a backup (a full: zero runs are not written)
//! into a sparse raw file or a QCOW2 image made by `sendense-qcow2`. The image is built under
//! `<to>.partial` and renamed onto `<to>` only when complete.
//!
//! Writes, zeroing and flushes run on tokio's blocking pool. A write takes the engine's
//! page-aligned request buffer as it is ([`Payload`], no copy), so that both formats write
//! with `O_DIRECT` where the file system allows it: a buffered write of fresh data costs more
//! CPU than the network (see `sendense_qcow2::storage`).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use sendense_qcow2::{CreateOptions, FileStorage, Image, Storage};
use sendense_types::{BackupId, DiskKey, InstantId, RestoreDisk, RestoreExports};
use tracing::{Instrument, info, info_span, warn};

use sendense_transfer::TransferError;

use crate::error::ClientError;
use crate::hub::{HubClient, HubOptions};
use crate::progress::{NoProgress, Progress};
use sendense_transfer::engine::{
    BlockTarget, DiskPlan, DiskTransfer, Payload, TargetConnector, TransferOptions, transfer_disk,
};
use sendense_transfer::nbd::{NbdConnector, NbdSource, NbdUri};
use sendense_transfer::source::{BoxFuture, DiskSource};

/// Format of the restored image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestoreFormat {
    /// Sparse raw file.
    #[default]
    Raw,
    /// QCOW2 v3 (64 KiB clusters).
    Qcow2,
}

/// What a restore reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreFrom {
    /// A restore point, through read-only exports opened for the restore and closed after it.
    Backup(BackupId),
    /// An instant recovery's current state (the point plus what its guest wrote), through its
    /// writable exports, which stay open.
    Instant(InstantId),
}

impl fmt::Display for RestoreFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Backup(id) => id.fmt(f),
            Self::Instant(id) => id.fmt(f),
        }
    }
}

/// Everything `restore` needs.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The hub.
    pub hub: HubOptions,
    /// What to read.
    pub from: RestoreFrom,
    /// The disk to restore.
    pub disk: DiskKey,
    /// The image to write (must not exist).
    pub to: PathBuf,
    /// Its format.
    pub format: RestoreFormat,
    /// Engine tuning.
    pub transfer: TransferOptions,
    /// Where progress goes.
    pub progress: Arc<dyn Progress>,
}

impl RestoreOptions {
    /// Options restoring from the restore point `backup_id`, with defaults: raw, default
    /// transfer options, no progress display.
    #[must_use]
    pub fn new(hub: HubOptions, backup_id: BackupId, disk: DiskKey, to: PathBuf) -> Self {
        Self::reading(hub, RestoreFrom::Backup(backup_id), disk, to)
    }

    /// Options copying the current state of the instant recovery `instant_id` out, with the
    /// defaults of [`RestoreOptions::new`].
    #[must_use]
    pub fn from_instant(
        hub: HubOptions,
        instant_id: InstantId,
        disk: DiskKey,
        to: PathBuf,
    ) -> Self {
        Self::reading(hub, RestoreFrom::Instant(instant_id), disk, to)
    }

    /// Options reading `from`, with the defaults of [`RestoreOptions::new`].
    #[must_use]
    pub fn reading(hub: HubOptions, from: RestoreFrom, disk: DiskKey, to: PathBuf) -> Self {
        Self {
            hub,
            from,
            disk,
            to,
            format: RestoreFormat::Raw,
            transfer: TransferOptions::default(),
            progress: Arc::new(NoProgress),
        }
    }
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq)]
pub struct RestoreSummary {
    /// The restore point (for an instant recovery, the point it runs from).
    pub backup_id: BackupId,
    /// The instant recovery copied out, if it was one.
    pub instant_id: Option<InstantId>,
    /// The disk.
    pub disk_key: DiskKey,
    /// The image written.
    pub path: PathBuf,
    /// Size of the disk.
    pub size: u64,
    /// Bytes of data written.
    pub bytes_written: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Restores one disk; Ctrl-C (SIGINT), SIGTERM or SIGHUP stops it, removes the partial image, closes the exports
/// and returns [`ClientError::Interrupted`].
///
/// # Errors
/// See [`run_until`].
pub async fn run(options: RestoreOptions) -> Result<RestoreSummary, ClientError> {
    run_until(options, sendense_io::signal::stopped()).await
}

/// Restores one disk until done or until `shutdown` resolves.
///
/// # Errors
/// An existing target, hub errors (unknown backup, disk not in it), NBD errors, write errors,
/// [`ClientError::Interrupted`]. The exports are closed and the partial image removed on every
/// error.
pub async fn run_until(
    options: RestoreOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<RestoreSummary, ClientError> {
    let span = info_span!("restore", from = %options.from, disk_key = options.disk.get());
    run_inner(options, shutdown).instrument(span).await
}

async fn run_inner(
    options: RestoreOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<RestoreSummary, ClientError> {
    let started = Instant::now();
    if options.to.exists() {
        return Err(TransferError::Write {
            path: options.to.clone(),
            source: io::Error::new(io::ErrorKind::AlreadyExists, "the target file exists"),
        }
        .into());
    }
    let hub = HubClient::new(&options.hub)?;
    let (backup_id, instant_id, exports) = match &options.from {
        RestoreFrom::Backup(id) => (id.clone(), None, hub.open_restore_exports(id).await?),
        RestoreFrom::Instant(id) => {
            let instant = hub.instant(id).await?;
            let exports = RestoreExports {
                disks: instant
                    .disks
                    .into_iter()
                    .map(|d| RestoreDisk {
                        disk_key: d.disk_key,
                        export_name: d.export_name,
                        nbd_uri: d.nbd_uri,
                    })
                    .collect(),
            };
            (instant.backup_id, Some(id.clone()), exports)
        }
    };
    // A shutdown already asked for wins (see `backup::finish_started`).
    let result = tokio::select! {
        biased;
        () = shutdown => Err(ClientError::Interrupted),
        r = restore_disk(&hub, &options, &exports) => r,
    };
    if result.is_err() {
        let _ = std::fs::remove_file(partial_path(&options.to));
    }
    // An instant recovery's exports are its guest's: they stay open.
    if let RestoreFrom::Backup(id) = &options.from
        && let Err(e) = hub.close_restore_exports(id).await
    {
        warn!(error = %e, "closing the restore exports failed");
    }
    let (size, bytes_written) = result?;
    Ok(RestoreSummary {
        backup_id,
        instant_id,
        disk_key: options.disk,
        path: options.to,
        size,
        bytes_written,
        seconds: started.elapsed().as_secs_f64(),
    })
}

async fn restore_disk(
    hub: &HubClient,
    options: &RestoreOptions,
    exports: &RestoreExports,
) -> Result<(u64, u64), ClientError> {
    let disk = exports
        .disks
        .iter()
        .find(|d| d.disk_key == options.disk)
        .ok_or(ClientError::DiskMismatch {
            disk_key: options.disk.get(),
            reason: "the backup (or instant recovery) has no such disk",
        })?;
    let uri = NbdUri::parse(&disk.nbd_uri)?;
    let tls = uri.tls.then(|| hub.nbd_tls());
    let connector = NbdConnector::new(uri, tls)?;
    let source = Arc::new(NbdSource::connect(&connector, options.transfer.connections).await?);
    let size = source.size();
    let partial = partial_path(&options.to);
    let target = LocalTarget::create(&partial, options.format, size).await?;
    let job = DiskTransfer {
        disk_key: options.disk.get(),
        source: Arc::clone(&source) as Arc<dyn DiskSource>,
        target: Arc::new(LocalConnector(Arc::clone(&target))) as Arc<dyn TargetConnector>,
        plan: DiskPlan::Full,
        digests: false,
    };
    let stats = match transfer_disk(&job, options.transfer, options.progress.as_ref()).await {
        Ok(stats) => stats,
        Err(e) => {
            drop(job);
            drop(target);
            let _ = std::fs::remove_file(&partial);
            return Err(e.into());
        }
    };
    drop(job);
    if let Ok(source) = Arc::try_unwrap(source)
        && let Err(e) = source.close().await
    {
        warn!(error = %e, "disconnecting from the restore export failed");
    }
    finish(target, &partial, &options.to).await?;
    info!(bytes_written = stats.bytes_sent, path = %options.to.display(), "disk restored");
    Ok((size, stats.bytes_sent))
}

/// `<to>.partial`, beside the target.
fn partial_path(to: &Path) -> PathBuf {
    let mut name = to.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// Closes the local image and renames it into place.
async fn finish(target: Arc<LocalTarget>, partial: &Path, to: &Path) -> Result<(), ClientError> {
    let target = Arc::try_unwrap(target).map_err(|_| TransferError::Write {
        path: to.to_owned(),
        source: io::Error::other("the image is still in use"),
    })?;
    let image = Arc::try_unwrap(target.image).map_err(|_| TransferError::Write {
        path: to.to_owned(),
        source: io::Error::other("the image is still in use"),
    })?;
    let partial = partial.to_owned();
    let to = to.to_owned();
    let finished = tokio::task::spawn_blocking(move || {
        let err = |source| TransferError::Write {
            path: to.clone(),
            source,
        };
        match image {
            LocalImage::Raw(file) => {
                file.sync_all().map_err(err)?;
                drop(file);
                std::fs::rename(&partial, &to).map_err(err)
            }
            LocalImage::Qcow2(image) => image
                .finalize(&to)
                .map_err(|e| err(io::Error::other(e.to_string()))),
        }
    })
    .await
    .map_err(|_| ClientError::Interrupted)?;
    Ok(finished?)
}

/// The restored image being written.
enum LocalImage {
    Raw(FileStorage),
    Qcow2(Box<Image>),
}

impl LocalImage {
    fn write_blocking(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        match self {
            Self::Raw(file) => file.write_data_at(data, offset),
            Self::Qcow2(image) => image
                .write_at(data, offset)
                .map_err(|e| io::Error::other(e.to_string())),
        }
    }
}

/// A local image as a write target (one shared "connection").
struct LocalTarget {
    image: Arc<LocalImage>,
    path: PathBuf,
}

impl fmt::Debug for LocalTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalTarget")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl LocalTarget {
    /// Creates a new image of `size` bytes at `path` (which must not exist).
    ///
    /// # Errors
    /// [`TransferError::Write`].
    async fn create(
        path: &Path,
        format: RestoreFormat,
        size: u64,
    ) -> Result<Arc<Self>, TransferError> {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || {
            let err = |source| TransferError::Write {
                path: path.clone(),
                source,
            };
            let image = match format {
                RestoreFormat::Raw => {
                    let file = std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create_new(true)
                        .open(&path)
                        .map_err(err)?;
                    file.set_len(size).map_err(err)?;
                    LocalImage::Raw(FileStorage::with_direct_io(file, &path, true))
                }
                RestoreFormat::Qcow2 => LocalImage::Qcow2(Box::new(
                    Image::create(&path, &CreateOptions::new(size))
                        .map_err(|e| err(io::Error::other(e.to_string())))?,
                )),
            };
            Ok(Arc::new(Self {
                image: Arc::new(image),
                path,
            }))
        })
        .await
        .map_err(|_| TransferError::Interrupted)?
    }

    /// Runs `f` on the image on tokio's blocking pool.
    async fn blocking<F>(&self, f: F) -> Result<(), TransferError>
    where
        F: FnOnce(&LocalImage) -> io::Result<()> + Send + 'static,
    {
        let image = Arc::clone(&self.image);
        tokio::task::spawn_blocking(move || f(&image))
            .await
            .map_err(|_| TransferError::Interrupted)?
            .map_err(|e| self.err(e))
    }

    fn err(&self, source: io::Error) -> TransferError {
        TransferError::Write {
            path: self.path.clone(),
            source,
        }
    }
}

/// Connects to a [`LocalTarget`]: every "connection" is the target itself.
#[derive(Debug)]
struct LocalConnector(Arc<LocalTarget>);

impl TargetConnector for LocalConnector {
    fn connect(&self) -> BoxFuture<'_, Result<Arc<dyn BlockTarget>, TransferError>> {
        let target: Arc<dyn BlockTarget> = Arc::clone(&self.0) as Arc<dyn BlockTarget>;
        Box::pin(async move { Ok(target) })
    }
}

impl BlockTarget for LocalTarget {
    fn write(&self, offset: u64, data: Payload) -> BoxFuture<'_, Result<(), TransferError>> {
        Box::pin(self.blocking(move |image| image.write_blocking(offset, &data)))
    }

    fn write_zeroes(&self, offset: u64, length: u64) -> BoxFuture<'_, Result<(), TransferError>> {
        Box::pin(async move {
            match self.image.as_ref() {
                // A new sparse file reads zeros already; punching is not needed.
                LocalImage::Raw(_) => Ok(()),
                LocalImage::Qcow2(_) => {
                    self.blocking(move |image| match image {
                        LocalImage::Raw(_) => Ok(()),
                        LocalImage::Qcow2(image) => image
                            .write_zeroes(offset, length)
                            .map_err(|e| io::Error::other(e.to_string())),
                    })
                    .await
                }
            }
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), TransferError>> {
        Box::pin(async move {
            match self.image.as_ref() {
                // The raw file is synced once, when it is renamed into place.
                LocalImage::Raw(_) => Ok(()),
                LocalImage::Qcow2(_) => {
                    self.blocking(|image| match image {
                        LocalImage::Raw(_) => Ok(()),
                        LocalImage::Qcow2(image) => {
                            image.flush().map_err(|e| io::Error::other(e.to_string()))
                        }
                    })
                    .await
                }
            }
        })
    }

    fn close(self: Arc<Self>) -> BoxFuture<'static, Result<(), TransferError>> {
        Box::pin(async { Ok(()) })
    }
}
