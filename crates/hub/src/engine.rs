//! The backup engine: the one owner of every step of a backup's life.
//!
//! REST handlers call exactly one method here. The engine keeps the catalog,
//! the repository files and the NBD exports consistent:
//!
//! - `start_backup` decides full or incremental (an incremental is a QCOW2
//!   overlay of the latest completed backup of each disk, with a relative
//!   backing name; `auto` starts a full, and says why in `full_reason`, when
//!   the chain has no head, would pass [`MAX_CHAIN_LENGTH`], has a missing
//!   file, or a disk changed), creates each image under a hidden temporary
//!   name, and opens one write export per disk under an unguessable name. A
//!   disk the parent did not have gets a standalone image.
//! - `complete_backup` closes the exports (after in-flight writes finish, up
//!   to a deadline), flushes, checks each image, renames it into place, fsyncs
//!   the folder and only then commits the catalog: the chain advances in that
//!   one write transaction and nowhere else.
//! - `fail_backup` closes the exports, removes the partial files, and marks
//!   the backup failed; the chain is untouched.
//! - `store_digests` keeps each disk's digests (of the bytes read at the
//!   source) beside its image until `complete` renames them into place
//!   (`engine/digests.rs`).
//! - `watchdog_tick` fails backups whose client is gone: every connection
//!   closed for the disconnect grace, connections silent for the idle
//!   timeout, or no connection at all within the idle timeout.
//! - `reconcile` (at start) fails backups a crash left running, finishes
//!   journalled deletions, removes orphaned `.part` files, marks completed
//!   backups whose files are gone, and reports files the catalog does not know.
//!
//! Completion and failure run on their own task, which the caller awaits:
//! dropping the caller (an HTTP client that hangs up) never stops a teardown
//! half way. Each running backup has one slot in `live`; whoever moves it
//! from `Running` to `Finishing` owns the teardown, and every other caller
//! (a racing `complete`, `fail` or the watchdog) waits for that end and gets
//! a 409 naming the final status.
//!
//! Locking: `live` is a std mutex held only for map operations, never across
//! I/O or `.await`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use sendense_catalog::{BackupRecord, Catalog, DiskCompletion};
use sendense_nbd::{Export, ExportRegistry};
use sendense_qcow2::{
    BackingPolicy, BackingSpec, CreateOptions, DEFAULT_CHAIN_DEPTH, Image, MAX_CHAIN_DEPTH,
    OpenOptions,
};
use sendense_types::api::BackupSnapshot;
use sendense_types::{
    Backup, BackupId, BackupQuery, BackupStatus, BackupType, Chain, CompleteBackupRequest, DiskKey,
    ExportName, RegisterVmRequest, RepositoryInfo, RestoreDisk, RestoreExports, StartBackupRequest,
    Timestamp, VerificationState, Vm, VmName, VmUsage,
};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::HubError;
use crate::maintenance::ChainLocks;
use crate::verify::Verifier;
use digests::DigestSlot;
use sendense_image::export::Qcow2Export;

mod digests;
mod files;

pub use files::{ContentBody, ContentShape, FileContent, MAX_DOWNLOADS, STALL_LIMIT};
mod instant;

pub use instant::INSTANT_DIR;
mod vm_restore;

pub use vm_restore::RestorePlan;

/// Folder of the repository inside the data folder.
pub const REPOSITORY_DIR: &str = "repository";

/// Most restore points in one chain (the full and its incrementals): the
/// engine opens an image with at most [`DEFAULT_CHAIN_DEPTH`] backing files,
/// so a new incremental on a longer chain would not open. `auto` starts a
/// new full instead; an explicit incremental is refused (409).
pub const MAX_CHAIN_LENGTH: usize = sendense_types::api::MAX_CHAIN_LENGTH;

// The last point of a full chain has MAX_CHAIN_LENGTH - 1 backing files; a
// new incremental on it would have MAX_CHAIN_LENGTH: both must open.
const _: () = assert!(MAX_CHAIN_LENGTH <= DEFAULT_CHAIN_DEPTH);

/// How long `fail` waits for the connections of a backup's exports to end
/// before it removes the files anyway (a writer still attached only writes
/// into an unlinked file).
const FAIL_DRAIN: Duration = Duration::from_secs(5);

/// How long `complete` waits for in-flight writes to end before it gives up
/// and fails the backup: an image is flushed only once nobody writes to it.
const COMPLETE_DRAIN: Duration = Duration::from_secs(20);

/// The timers of the dead-client watchdog. A backup whose client never
/// connected is failed after the larger of `idle_timeout / 2` and
/// `disconnect_grace` (60 s by default): a client connects right after the
/// start answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watchdog {
    /// A backup whose connections have been silent this long is failed.
    pub idle_timeout: Duration,
    /// A backup whose every NBD connection has been closed this long (after
    /// at least one was seen) is failed; a client may reconnect within it.
    pub disconnect_grace: Duration,
}

/// One disk of a running backup.
#[derive(Debug)]
struct WriteDisk {
    key: DiskKey,
    export_name: ExportName,
    export: Arc<Qcow2Export>,
    temp: PathBuf,
    target: PathBuf,
    /// Its digests, uploaded before `complete`.
    digests: DigestSlot,
}

/// Where a backup this process holds is in its life.
#[derive(Debug)]
enum Slot {
    /// `start_backup` is creating its images; a `fail` meanwhile records
    /// its reason here and the start gives up when it sees it.
    Starting { cancelled: Option<String> },
    /// Exports open, receiving data.
    Running {
        disks: Vec<WriteDisk>,
        liveness: Liveness,
    },
    /// A `complete` or `fail` owns the teardown; `done` turns true when it
    /// has ended and the catalog says how.
    Finishing { done: watch::Receiver<bool> },
}

/// What this process holds open.
#[derive(Debug, Default)]
struct Live {
    running: HashMap<BackupId, Slot>,
    restores: HashMap<BackupId, Vec<(DiskKey, ExportName)>>,
    /// The vCenter snapshot each running backup reads from (`record_snapshot`).
    snapshots: HashMap<BackupId, String>,
    /// Backups being deleted: no restore exports or instant recovery may open meanwhile.
    deleting: HashSet<BackupId>,
    /// Instant recoveries this process holds (open, or unavailable since the start).
    instants: HashMap<sendense_types::InstantId, instant::OpenInstant>,
    /// Shutdown has begun: no new backup starts.
    closing: bool,
}

/// What start-up reconciliation found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reconciliation {
    /// Backups a crash left running, now failed.
    pub failed_running: usize,
    /// Deletions a crash interrupted, now finished.
    pub finished_deletions: usize,
    /// Orphaned `.part` files removed (relative to the repository).
    pub removed_part_files: Vec<String>,
    /// Completed backups whose files are gone, now marked so.
    pub marked_missing: Vec<BackupId>,
    /// Files the catalog does not know (relative to the repository): reported, kept.
    pub unknown_files: Vec<String>,
}

/// Who ends a backup's slot, and how the others learn it ended.
enum Claim {
    /// The caller owns the teardown of these disks.
    Owner(Vec<WriteDisk>, watch::Sender<bool>),
    /// Someone else is finishing it: wait, then answer the final status.
    Wait(watch::Receiver<bool>),
    /// The start is still running (it has now been told to give up, for a `fail`).
    Starting,
    /// This process holds nothing for it.
    NotLive,
}

/// Repository health settings (DESIGN.md "Verification").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepositoryConfig {
    /// Warn (log, `GET /api/v1/repository`'s `low_space_warning`) when the repository's file
    /// system has less than this percentage of its capacity free.
    pub free_space_warning_percent: u8,
    /// Re-verify completed points whose last verification (or completion, if never verified)
    /// is older than this many days; `None`: never on a schedule.
    pub reverify_days: Option<u32>,
    /// Bound of the object tier's cache of chunks read from buckets, in MiB.
    pub tier_cache_mib: u64,
}

impl Default for RepositoryConfig {
    fn default() -> Self {
        Self {
            free_space_warning_percent: DEFAULT_FREE_SPACE_WARNING_PERCENT,
            reverify_days: None,
            tier_cache_mib: crate::tier::DEFAULT_CACHE_MIB,
        }
    }
}

/// Default of [`RepositoryConfig::free_space_warning_percent`].
pub const DEFAULT_FREE_SPACE_WARNING_PERCENT: u8 = 10;

/// The backup engine.
#[derive(Debug)]
pub struct Engine {
    catalog: Arc<Catalog>,
    repository: PathBuf,
    registry: Arc<ExportRegistry>,
    nbd_base: String,
    live: Mutex<Live>,
    space: RepositoryConfig,
    chain_locks: Arc<ChainLocks>,
    /// Permits of the file downloads streaming now ([`MAX_DOWNLOADS`]).
    downloads: Arc<tokio::sync::Semaphore>,
    /// Serializes the start and discard of instant recoveries (their catalog record, exports
    /// and folder change together); held only by blocking code.
    instant_ops: Mutex<()>,
    /// The object tier, once attached: points that live only in a bucket are read from it.
    tier: std::sync::OnceLock<Arc<crate::tier::Tier>>,
}

impl Engine {
    /// An engine over `catalog` and the repository folder, publishing exports
    /// in `registry`; `nbd_base` is `nbds://HOST:PORT` as clients reach it.
    pub fn new(
        catalog: Arc<Catalog>,
        repository: PathBuf,
        registry: Arc<ExportRegistry>,
        nbd_base: String,
    ) -> Self {
        Self {
            catalog,
            repository,
            registry,
            nbd_base,
            live: Mutex::new(Live::default()),
            space: RepositoryConfig::default(),
            chain_locks: Arc::new(ChainLocks::default()),
            downloads: Arc::new(tokio::sync::Semaphore::new(MAX_DOWNLOADS)),
            instant_ops: Mutex::new(()),
            tier: std::sync::OnceLock::new(),
        }
    }

    /// This engine with repository settings other than the defaults.
    #[must_use]
    pub fn with_repository_config(mut self, config: RepositoryConfig) -> Self {
        self.space = config;
        self
    }

    /// Attaches the object tier: restore exports, instant recoveries and the file browser then
    /// read points that live only in a bucket from it, by range (see [`crate::tier`]). The
    /// first tier attached stays.
    pub fn attach_tier(&self, tier: Arc<crate::tier::Tier>) {
        let _ = self.tier.set(tier);
    }

    /// How the chain of point `id` opens for reading: read-only, any chain the hub wrote,
    /// backing files in the repository, and the layers that live only in a bucket read from
    /// it.
    ///
    /// # Errors
    /// The tier's ([`crate::tier::Tier::layers_for`]).
    pub(crate) fn point_open_options(&self, id: &BackupId) -> Result<OpenOptions, HubError> {
        // Any chain the hub wrote opens: it never writes one longer than
        // MAX_CHAIN_LENGTH, and older hubs at most one more.
        let mut opts = OpenOptions::read_only()
            .max_chain_depth(MAX_CHAIN_DEPTH)
            .backing(BackingPolicy::repository());
        if let Some(source) = self.point_layers(id)? {
            opts = opts.layers(source);
        }
        Ok(opts)
    }

    /// The source of the layers of `id`'s chain that live only in a bucket, if any.
    pub(crate) fn point_layers(
        &self,
        id: &BackupId,
    ) -> Result<Option<Arc<dyn sendense_qcow2::LayerSource>>, HubError> {
        match self.tier.get() {
            Some(tier) => tier.layers_for(id),
            None => Ok(None),
        }
    }

    /// The repository settings.
    #[must_use]
    pub fn repository_config(&self) -> RepositoryConfig {
        self.space
    }

    /// The per-VM chain locks: a backup start, a restore open and a deletion take their VM's
    /// shared, a removal of points ([`crate::maintenance::Maintenance`]) exclusively.
    #[must_use]
    pub fn chain_locks(&self) -> &Arc<ChainLocks> {
        &self.chain_locks
    }

    /// The backups whose restore exports are open.
    #[must_use]
    pub fn restores_open(&self) -> Vec<BackupId> {
        self.live().restores.keys().cloned().collect()
    }

    fn live(&self) -> MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn uri(&self, name: &ExportName) -> String {
        format!("{}/{}", self.nbd_base, name)
    }

    // ------------------------------------------------------------------ VMs

    /// Registers a VM or updates its disks.
    ///
    /// # Errors
    /// The catalog refuses (a backup of the VM is running) or fails.
    pub fn register_vm(&self, req: &RegisterVmRequest) -> Result<Vm, HubError> {
        Ok(self.catalog.upsert_vm(req, Timestamp::now())?)
    }

    /// Every registered VM.
    ///
    /// # Errors
    /// The catalog fails.
    pub fn vms(&self) -> Result<Vec<Vm>, HubError> {
        Ok(self.catalog.vms()?)
    }

    /// One VM.
    ///
    /// # Errors
    /// Unknown VM, or the catalog fails.
    pub fn vm(&self, name: &VmName) -> Result<Vm, HubError> {
        self.catalog
            .vm(name)?
            .ok_or_else(|| HubError::VmNotFound { vm: name.clone() })
    }

    // -------------------------------------------------------------- backups

    /// Starts a backup: decides its type, creates its images and opens one
    /// write export per disk.
    ///
    /// # Errors
    /// Unknown VM (404); 409 for an incremental with no completed backup, a
    /// chain at [`MAX_CHAIN_LENGTH`], a missing parent file, a stated base
    /// that is not the hub's parent, a backup of the VM already running, or a
    /// `fail` that arrived while starting; 503 while shutting down; or a
    /// repository failure.
    pub fn start_backup(&self, req: &StartBackupRequest) -> Result<Backup, HubError> {
        if self.live().closing {
            return Err(HubError::ShuttingDown);
        }
        // A removal of points of this VM refuses the start (409 naming it) rather than hold
        // it for a merge of unknown length; the guard keeps one from starting meanwhile.
        let _chain = self.chain_locks.try_read(&req.vm_name)?;
        let vm = self.vm(&req.vm_name)?;
        let (parent, full_reason) = self.choose_parent(&vm, req)?;
        self.check_space(&vm, parent.is_some())?;
        let now = Timestamp::now();
        let mut record = BackupRecord::new(
            BackupId::new(&vm.name, now),
            &vm,
            parent.as_ref(),
            BackupStatus::Running,
            now,
        );
        record.full_reason = full_reason;
        self.catalog.create_backup(&record)?;
        let id = record.backup_id.clone();
        {
            let mut live = self.live();
            let cancelled = live.closing.then(|| "the hub is shutting down".to_owned());
            live.running
                .insert(id.clone(), Slot::Starting { cancelled });
        }
        let opened = self.open_write_disks(&record, parent.as_ref());
        let mut live = self.live();
        let slot = live.running.remove(&id);
        match (opened, slot) {
            (Ok(disks), Some(Slot::Starting { cancelled: None })) => {
                let backup = self.api_backup(&record, Some(&disks));
                let liveness = Liveness::new(Instant::now(), self.sample(&disks));
                live.running
                    .insert(id.clone(), Slot::Running { disks, liveness });
                drop(live);
                tracing::info!(
                    backup_id = %id,
                    vm = %vm.name,
                    backup_type = %record.backup_type,
                    full_reason = record.full_reason.as_deref(),
                    disks = record.disks.len(),
                    "backup started"
                );
                Ok(backup)
            }
            (opened, slot) => {
                drop(live);
                let cancelled = match slot {
                    Some(Slot::Starting { cancelled }) => cancelled,
                    _ => None,
                };
                if let Ok(disks) = opened {
                    self.discard_write_disks(disks);
                    let reason = cancelled.unwrap_or_else(|| "failed while starting".to_owned());
                    self.fail_in_catalog(&id, &reason);
                    return Err(HubError::StartCancelled {
                        backup_id: id,
                        reason,
                    });
                }
                let Err(e) = opened else {
                    unreachable!("the Ok case returned above")
                };
                let reason = format!(
                    "could not prepare the images: {}",
                    sendense_io::error_chain(&e)
                );
                self.fail_in_catalog(&id, &reason);
                Err(e)
            }
        }
    }

    /// Refuses a backup the repository's file system cannot hold: the estimate is, per disk,
    /// the largest of the VM's last three images of the same kind (full or incremental), or
    /// for a first one the disk's capacity (a full) or a tenth of it (an incremental).
    fn check_space(&self, vm: &Vm, incremental: bool) -> Result<(), HubError> {
        let needed = self.estimate(vm, incremental)?;
        let free = self.free_bytes()?;
        if needed > free {
            return Err(HubError::SpaceShort {
                vm: vm.name.clone(),
                needed,
                free,
                reserve: 0,
            });
        }
        Ok(())
    }

    /// Bytes a new backup of `vm` is estimated to need (see [`Engine::check_space`]).
    fn estimate(&self, vm: &Vm, incremental: bool) -> Result<u64, HubError> {
        let query = BackupQuery {
            vm_name: Some(vm.name.clone()),
            status: Some(BackupStatus::Completed),
        };
        let kind = if incremental {
            BackupType::Incremental
        } else {
            BackupType::Full
        };
        let mut records = self.catalog.backups(&query)?;
        records.retain(|r| r.backup_type == kind && !r.files_missing);
        records.sort_by_key(|r| std::cmp::Reverse(r.created_at));
        let mut needed = 0u64;
        for spec in &vm.disks {
            let seen = records
                .iter()
                .take(3)
                .filter_map(|r| r.disk(spec.key))
                .filter_map(|d| std::fs::metadata(self.repository.join(&d.file)).ok())
                .map(|m| m.blocks().saturating_mul(512))
                .max();
            let first = if incremental {
                spec.capacity_bytes / 10
            } else {
                spec.capacity_bytes
            };
            needed = needed.saturating_add(seen.unwrap_or(first));
        }
        Ok(needed)
    }

    /// Bytes available to the hub on the repository's file system.
    fn free_bytes(&self) -> Result<u64, HubError> {
        let fs = rustix::fs::statvfs(&self.repository)
            .map_err(|e| HubError::io(&self.repository, e.into()))?;
        Ok(fs.f_bavail.saturating_mul(fs.f_frsize))
    }

    /// The warning to give when free space is below the configured share of the capacity.
    fn low_space_warning(&self, capacity: u64, free: u64) -> Option<String> {
        let threshold = capacity / 100 * u64::from(self.space.free_space_warning_percent);
        (free < threshold).then(|| {
            format!(
                "the repository's file system has {} of {} free, below the {}% warning threshold: prune old points (POST /api/v1/vms/{{name}}/prune) or grow it",
                sendense_image::human(free),
                sendense_image::human(capacity),
                self.space.free_space_warning_percent
            )
        })
    }

    /// Logs a warning when free space is below the threshold.
    fn warn_if_low_on_space(&self) {
        if let Ok(fs) = rustix::fs::statvfs(&self.repository) {
            let capacity = fs.f_blocks.saturating_mul(fs.f_frsize);
            let free = fs.f_bavail.saturating_mul(fs.f_frsize);
            if let Some(warning) = self.low_space_warning(capacity, free) {
                tracing::warn!(free_bytes = free, capacity_bytes = capacity, "{warning}");
            }
        }
    }

    /// Marks a backup failed unless something already ended it.
    fn fail_in_catalog(&self, id: &BackupId, reason: &str) {
        match self.catalog.fail_backup(id, reason, Timestamp::now()) {
            Ok(_) => {}
            Err(e) if e.kind() == sendense_catalog::ErrorKind::Conflict => {}
            Err(e) => {
                tracing::error!(backup_id = %id, error = %sendense_io::error_chain(&e), "cannot mark backup failed");
            }
        }
    }

    /// Decides the parent of a new backup: `None` for a full, with the
    /// reason when `auto` could not continue the chain.
    fn choose_parent(
        &self,
        vm: &Vm,
        req: &StartBackupRequest,
    ) -> Result<(Option<BackupRecord>, Option<String>), HubError> {
        if req.backup_type == BackupType::Full {
            return Ok((None, None));
        }
        let chain = self.catalog.chain(&vm.name)?;
        let head = match (chain.last(), req.backup_type) {
            (Some(head), _) => head,
            (None, BackupType::Incremental) => {
                return Err(HubError::NoFullBackup {
                    vm: vm.name.clone(),
                });
            }
            (None, _) => {
                let reason = "the VM has no completed backup yet".to_owned();
                tracing::info!(vm = %vm.name, %reason, "auto starts a full backup");
                return Ok((None, Some(reason)));
            }
        };
        let strict = req.backup_type == BackupType::Incremental;
        match self.chain_break(vm, &chain, strict) {
            None => {
                if let Some(base) = &req.base_backup_id
                    && base != &head.backup_id
                {
                    return Err(HubError::BaseMismatch {
                        vm: vm.name.clone(),
                        base: base.clone(),
                        parent: head.backup_id.clone(),
                    });
                }
                Ok((Some(head.clone()), None))
            }
            Some(why) if strict => Err(why),
            Some(why) => {
                let reason = sendense_io::error_chain(&why);
                tracing::info!(vm = %vm.name, %reason, "auto starts a full backup");
                Ok((None, Some(reason)))
            }
        }
    }

    /// Why a new incremental cannot continue `chain` (oldest first, not
    /// empty), or `None` when it can. `strict` (an explicit incremental)
    /// accepts disks that are new or changed: those become fulls of that disk.
    fn chain_break(&self, vm: &Vm, chain: &[BackupRecord], strict: bool) -> Option<HubError> {
        if chain.len() >= MAX_CHAIN_LENGTH {
            return Some(HubError::ChainTooLong {
                vm: vm.name.clone(),
                length: chain.len(),
                max: MAX_CHAIN_LENGTH,
            });
        }
        for record in chain {
            if record.verification.state == VerificationState::Failed {
                return Some(HubError::ChainFailedVerification {
                    vm: vm.name.clone(),
                    backup_id: record.backup_id.clone(),
                });
            }
            for d in &record.disks {
                if !vm.disks.iter().any(|spec| spec.key == d.disk_key) {
                    continue;
                }
                // A point that lives only in a bucket is read from there (`open_write_disk`).
                if record.evicted && !record.files_missing {
                    continue;
                }
                if record.files_missing || !self.repository.join(&d.file).is_file() {
                    return Some(HubError::FilesMissing {
                        backup_id: record.backup_id.clone(),
                        file: d.file.clone(),
                    });
                }
            }
        }
        let head = chain.last()?;
        if strict {
            return None;
        }
        vm.disks
            .iter()
            .find(|spec| {
                !head.disk(spec.key).is_some_and(|d| {
                    d.change_id.is_some() && d.capacity_bytes == spec.capacity_bytes
                })
            })
            .map(|spec| HubError::DiskChanged {
                backup_id: head.backup_id.clone(),
                disk_key: spec.key,
            })
    }

    /// Creates each disk's image under its temporary name and registers its
    /// write export; on failure removes whatever it made.
    fn open_write_disks(
        &self,
        record: &BackupRecord,
        parent: Option<&BackupRecord>,
    ) -> Result<Vec<WriteDisk>, HubError> {
        let mut disks: Vec<WriteDisk> = Vec::new();
        for disk in &record.disks {
            match self.open_write_disk(record, disk.disk_key, parent) {
                Ok(d) => disks.push(d),
                Err(e) => {
                    self.discard_write_disks(disks);
                    return Err(e);
                }
            }
        }
        Ok(disks)
    }

    fn open_write_disk(
        &self,
        record: &BackupRecord,
        key: DiskKey,
        parent: Option<&BackupRecord>,
    ) -> Result<WriteDisk, HubError> {
        let disk = record.disk(key).ok_or_else(|| HubError::UnknownDisk {
            backup_id: record.backup_id.clone(),
            disk_key: key,
        })?;
        let target = self.repository.join(&disk.file);
        let folder = target
            .parent()
            .map_or_else(|| self.repository.clone(), Path::to_path_buf);
        std::fs::create_dir_all(&folder).map_err(|e| HubError::io(&folder, e))?;
        let temp = temp_path(&target);
        let mut opts =
            CreateOptions::new(disk.capacity_bytes).backing_policy(BackingPolicy::repository());
        // The parent's image of the same disk, by its bare file name: it lives
        // in the same folder, so the repository can move as a whole. A disk
        // the parent did not have gets a standalone image (a full of it).
        if let Some(parent_disk) = parent.and_then(|p| p.disk(key))
            && let Some(name) = Path::new(&parent_disk.file).file_name()
        {
            opts.backing = Some(BackingSpec::qcow2(name.to_string_lossy().into_owned()));
        }
        // Older points of the chain may live only in a bucket: copy-on-write reads them there.
        if let Some(parent) = parent
            && let Some(source) = self.point_layers(&parent.backup_id)?
        {
            opts = opts.layers(source);
        }
        let image = Image::create(&temp, &opts).map_err(|e| HubError::image(&temp, e))?;
        let export = Arc::new(Qcow2Export::new(Arc::new(image), false));
        let export_name = ExportName::random();
        let as_dyn: Arc<dyn Export> = export.clone();
        if let Err(e) = self.registry.add(export_name.as_str(), as_dyn) {
            drop(export);
            remove_quietly(&temp);
            return Err(e.into());
        }
        let digests = DigestSlot::new(self.repository.join(record.digest_file(key)));
        Ok(WriteDisk {
            key,
            export_name,
            export,
            temp,
            target,
            digests,
        })
    }

    /// Closes exports (without waiting) and removes temporary files.
    fn discard_write_disks(&self, disks: Vec<WriteDisk>) {
        for d in disks {
            drop(self.registry.remove(d.export_name.as_str()));
            drop(d.export);
            remove_quietly(&d.temp);
            remove_quietly(&d.digests.temp);
        }
    }

    /// Completes a running backup: exports closed, images flushed, checked,
    /// renamed into place and fsynced, then the catalog commit. Runs on its
    /// own task: dropping the returned future does not stop it half way.
    ///
    /// # Errors
    /// Unknown backup (404), not running or being finished by another call
    /// (409), a completion that does not name each disk exactly once (400),
    /// or a failure finishing an image (the backup is then failed and the
    /// error returned).
    pub async fn complete_backup(
        self: &Arc<Self>,
        id: &BackupId,
        req: &CompleteBackupRequest,
    ) -> Result<Backup, HubError> {
        let engine = Arc::clone(self);
        let id = id.clone();
        let req = req.clone();
        tokio::spawn(async move { engine.complete_owned(id, req).await })
            .await
            .map_err(|_| HubError::Worker)?
    }

    async fn complete_owned(
        self: Arc<Self>,
        id: BackupId,
        req: CompleteBackupRequest,
    ) -> Result<Backup, HubError> {
        let record = self.record(&id)?;
        validate_completion(&record, &req)?;
        let (mut disks, done) = match self.claim(&id, None) {
            Claim::Owner(disks, done) => (disks, done),
            Claim::Wait(rx) => return Err(self.lost_race(&id, rx).await),
            Claim::Starting => {
                return Err(HubError::Busy {
                    backup_id: id,
                    state: "still starting",
                });
            }
            Claim::NotLive => return Err(self.not_live(&record)),
        };
        for d in &mut disks {
            d.digests.close().await;
        }
        let drained = self.close_exports(&disks, COMPLETE_DRAIN).await;
        let result = if drained {
            let engine = Arc::clone(&self);
            let id2 = id.clone();
            tokio::task::spawn_blocking(move || engine.finish_images(&id2, &req, disks))
                .await
                .unwrap_or_else(|_| Err((HubError::Worker, Vec::new())))
        } else {
            let files = disks
                .iter()
                .flat_map(|d| [d.temp.clone(), d.digests.temp.clone()])
                .collect();
            drop(disks);
            Err((
                HubError::DrainTimeout {
                    backup_id: id.clone(),
                    seconds: COMPLETE_DRAIN.as_secs(),
                },
                files,
            ))
        };
        let answer = match result {
            Ok(done) => {
                tracing::info!(backup_id = %id, "backup completed");
                self.warn_if_low_on_space();
                Ok(done.to_api())
            }
            Err((e, leftovers)) => {
                let reason = format!("completion failed: {}", sendense_io::error_chain(&e));
                tracing::error!(backup_id = %id, %reason, "backup failed at completion");
                for path in leftovers {
                    remove_quietly(&path);
                }
                self.fail_in_catalog(&id, &reason);
                Err(e)
            }
        };
        self.release(&id, &done);
        answer
    }

    /// The blocking part of completion. On failure answers the error and
    /// every file of this backup that must be removed.
    fn finish_images(
        &self,
        id: &BackupId,
        req: &CompleteBackupRequest,
        disks: Vec<WriteDisk>,
    ) -> Result<BackupRecord, (HubError, Vec<PathBuf>)> {
        let all_files: Vec<PathBuf> = disks
            .iter()
            .flat_map(|d| {
                [
                    d.temp.clone(),
                    d.target.clone(),
                    d.digests.temp.clone(),
                    d.digests.target.clone(),
                ]
            })
            .collect();
        let fail = |e: HubError| (e, all_files.clone());
        let mut completions = Vec::with_capacity(disks.len());
        let mut folders = BTreeSet::new();
        for d in &disks {
            let image = d.export.image();
            image
                .trim_preallocation()
                .and_then(|()| image.flush())
                .map_err(|e| fail(HubError::image(&d.temp, e)))?;
            let report = image
                .check()
                .map_err(|e| fail(HubError::image(&d.temp, e)))?;
            if !report.is_clean() {
                return Err(fail(HubError::CheckFailed {
                    path: d.temp.clone(),
                    errors: report.errors,
                    leaks: report.leaks,
                }));
            }
            std::fs::rename(&d.temp, &d.target).map_err(|e| fail(HubError::io(&d.target, e)))?;
            let digests = d.digests.stored();
            if digests {
                std::fs::rename(&d.digests.temp, &d.digests.target)
                    .map_err(|e| fail(HubError::io(&d.digests.target, e)))?;
            }
            if let Some(folder) = d.target.parent() {
                folders.insert(folder.to_path_buf());
            }
            let change_id = req
                .disks()
                .iter()
                .find(|c| c.disk_key == d.key)
                .and_then(|c| c.change_id.clone());
            completions.push(DiskCompletion {
                disk_key: d.key,
                change_id,
                bytes_written: d.export.bytes_written(),
                digests,
            });
        }
        for folder in &folders {
            sync_dir(folder).map_err(fail)?;
        }
        drop(disks);
        self.catalog
            .complete_backup(id, &completions, Timestamp::now())
            .map_err(|e| fail(e.into()))
    }

    /// Fails a running backup: exports closed, partial files removed, chain
    /// untouched. A `fail` while the backup is starting wins: the start gives
    /// up. Runs on its own task: dropping the returned future does not stop
    /// it half way.
    ///
    /// # Errors
    /// Unknown backup (404); already completed or failed, or being finished
    /// by another call (409, after that call ended).
    pub async fn fail_backup(
        self: &Arc<Self>,
        id: &BackupId,
        reason: &str,
    ) -> Result<Backup, HubError> {
        let engine = Arc::clone(self);
        let id = id.clone();
        let reason = reason.to_owned();
        tokio::spawn(async move { engine.fail_owned(id, reason).await })
            .await
            .map_err(|_| HubError::Worker)?
    }

    async fn fail_owned(self: Arc<Self>, id: BackupId, reason: String) -> Result<Backup, HubError> {
        let record = self.record(&id)?;
        match self.claim(&id, Some(&reason)) {
            Claim::Owner(mut disks, done) => {
                for d in &mut disks {
                    d.digests.close().await;
                }
                self.close_exports(&disks, FAIL_DRAIN).await;
                for d in disks {
                    drop(d.export);
                    remove_quietly(&d.temp);
                    remove_quietly(&d.digests.temp);
                }
                let answer = self
                    .catalog
                    .fail_backup(&id, &reason, Timestamp::now())
                    .map(|r| r.to_api())
                    .map_err(HubError::from);
                self.release(&id, &done);
                tracing::warn!(backup_id = %id, reason, "backup failed");
                answer
            }
            Claim::Wait(rx) => Err(self.lost_race(&id, rx).await),
            Claim::Starting => {
                let failed = self.catalog.fail_backup(&id, &reason, Timestamp::now())?;
                tracing::warn!(backup_id = %id, reason, "backup failed while starting");
                Ok(failed.to_api())
            }
            Claim::NotLive if record.status.is_active() => {
                // Running in the catalog, nothing open here (cannot happen
                // after `reconcile`): just record the failure.
                let failed = self.catalog.fail_backup(&id, &reason, Timestamp::now())?;
                Ok(failed.to_api())
            }
            Claim::NotLive => Err(self.not_live(&record)),
        }
    }

    /// Takes the slot of a running backup for its teardown; a `fail_reason`
    /// also cancels a start in progress.
    fn claim(&self, id: &BackupId, fail_reason: Option<&str>) -> Claim {
        let mut live = self.live();
        let Some(slot) = live.running.get_mut(id) else {
            return Claim::NotLive;
        };
        match slot {
            Slot::Starting { cancelled } => {
                if cancelled.is_none() {
                    *cancelled = fail_reason.map(str::to_owned);
                }
                Claim::Starting
            }
            Slot::Finishing { done } => Claim::Wait(done.clone()),
            Slot::Running { .. } => {
                let (tx, rx) = watch::channel(false);
                match std::mem::replace(slot, Slot::Finishing { done: rx }) {
                    Slot::Running { disks, .. } => Claim::Owner(disks, tx),
                    _ => unreachable!("matched Running above"),
                }
            }
        }
    }

    /// Frees a backup's slot after its teardown and wakes the losers.
    fn release(&self, id: &BackupId, done: &watch::Sender<bool>) {
        self.live().running.remove(id);
        done.send_replace(true);
    }

    /// The answer to the loser of a race: waits for the winner, then a 409
    /// naming the final status.
    async fn lost_race(&self, id: &BackupId, mut done: watch::Receiver<bool>) -> HubError {
        // An error means the winner's sender is gone, i.e. it ended.
        let _ = done.wait_for(|d| *d).await;
        match self.record(id) {
            Ok(record) => self.not_live(&record),
            Err(e) => e,
        }
    }

    fn not_live(&self, record: &BackupRecord) -> HubError {
        if record.status.is_active() {
            HubError::NotLive {
                backup_id: record.backup_id.clone(),
            }
        } else {
            HubError::WrongStatus {
                backup_id: record.backup_id.clone(),
                status: record.status,
                expected: "running",
            }
        }
    }

    /// Removes the exports of `disks` and waits up to `deadline` for their
    /// connections to end; answers whether they did.
    async fn close_exports(&self, disks: &[WriteDisk], deadline: Duration) -> bool {
        let until = Instant::now() + deadline;
        let waits: Vec<_> = disks
            .iter()
            .map(|d| self.registry.remove(d.export_name.as_str()))
            .collect();
        let mut drained = true;
        for wait in waits {
            if tokio::time::timeout_at(until, wait).await.is_err() {
                drained = false;
            }
        }
        if !drained {
            tracing::warn!(
                seconds = deadline.as_secs(),
                "NBD connections of a backup did not end in time"
            );
        }
        drained
    }

    fn running_record(&self, id: &BackupId) -> Result<BackupRecord, HubError> {
        let record = self.record(id)?;
        if record.status != BackupStatus::Running {
            return Err(HubError::WrongStatus {
                backup_id: id.clone(),
                status: record.status,
                expected: "running",
            });
        }
        Ok(record)
    }

    fn record(&self, id: &BackupId) -> Result<BackupRecord, HubError> {
        backup_record(&self.catalog, id)
    }

    /// One backup, with live progress while it runs.
    ///
    /// # Errors
    /// Unknown backup, or the catalog fails.
    pub fn backup(&self, id: &BackupId) -> Result<Backup, HubError> {
        let record = self.record(id)?;
        let live = self.live();
        Ok(self.api_backup(&record, running_disks(&live, id)))
    }

    /// Records the vCenter snapshot a running backup reads from, so that another run of the
    /// VM removes only leftover snapshots (one run per VM). Kept in memory: ownership ends with
    /// the run (a hub restart fails every running backup).
    ///
    /// # Errors
    /// Unknown backup (404), not running (409), or the catalog fails.
    pub fn record_snapshot(&self, id: &BackupId, moref: &str) -> Result<BackupSnapshot, HubError> {
        self.running_record(id)?;
        let mut live = self.live();
        let Live {
            running, snapshots, ..
        } = &mut *live;
        snapshots.retain(|b, _| running.contains_key(b));
        snapshots.insert(id.clone(), moref.to_owned());
        tracing::info!(backup_id = %id, snapshot = moref, "snapshot recorded");
        Ok(BackupSnapshot {
            backup_id: id.clone(),
            snapshot_moref: Some(moref.to_owned()),
        })
    }

    /// The vCenter snapshot a backup owns: the recorded one while it runs, else none.
    ///
    /// # Errors
    /// Unknown backup (404), or the catalog fails.
    pub fn backup_snapshot(&self, id: &BackupId) -> Result<BackupSnapshot, HubError> {
        let record = self.record(id)?;
        let live = self.live();
        let owned = record.status.is_active() && live.running.contains_key(id);
        Ok(BackupSnapshot {
            backup_id: id.clone(),
            snapshot_moref: owned.then(|| live.snapshots.get(id).cloned()).flatten(),
        })
    }

    /// Backups matching `query`, oldest first.
    ///
    /// # Errors
    /// The catalog fails.
    pub fn backups(&self, query: &BackupQuery) -> Result<Vec<Backup>, HubError> {
        let records = self.catalog.backups(query)?;
        let live = self.live();
        Ok(records
            .iter()
            .map(|r| self.api_backup(r, running_disks(&live, &r.backup_id)))
            .collect())
    }

    /// The VM's current chain: its latest full, then the incrementals on it.
    ///
    /// # Errors
    /// Unknown VM, or the catalog fails.
    pub fn chain(&self, vm: &VmName) -> Result<Chain, HubError> {
        self.vm(vm)?;
        let backups = self
            .catalog
            .chain(vm)?
            .iter()
            .map(BackupRecord::to_api)
            .collect();
        Ok(Chain {
            vm_name: vm.clone(),
            backups,
        })
    }

    /// Deletes a backup nothing depends on, with its files. The catalog
    /// removes the backup and journals its files in one transaction; the
    /// files go next, then the journal entry. A crash in between leaves the
    /// journal entry, which [`Engine::reconcile`] finishes: never a file
    /// nobody knows.
    ///
    /// # Errors
    /// Unknown backup (404); dependants, a running backup, open restore
    /// exports or an instant recovery of it (409).
    pub fn delete_backup(&self, id: &BackupId) -> Result<Backup, HubError> {
        let _chain = self.chain_locks.try_read(&id.vm_name())?;
        {
            let mut live = self.live();
            if live.restores.contains_key(id) {
                return Err(HubError::ExportsOpen {
                    backup_id: id.clone(),
                });
            }
            live.deleting.insert(id.clone());
        }
        // An instant recovery starting from now on sees `deleting` and gives up.
        let held = self
            .refuse_instant_held(&id.vm_name(), std::slice::from_ref(id))
            .and_then(|()| self.refuse_restore_held(&id.vm_name(), std::slice::from_ref(id)));
        if let Err(e) = held {
            self.live().deleting.remove(id);
            return Err(e);
        }
        let deleted = self.catalog.delete_backup(id);
        self.live().deleting.remove(id);
        let record = deleted?;
        self.remove_deleted_files(id, &record.files());
        tracing::info!(backup_id = %id, "backup deleted");
        Ok(record.to_api())
    }

    /// Removes a deleted backup's files, fsyncs their folders, and clears
    /// its journal entry (kept when a removal failed, for the next start).
    fn remove_deleted_files(&self, id: &BackupId, files: &[String]) {
        let mut folders = BTreeSet::new();
        let mut all_gone = true;
        for file in files {
            let path = self.repository.join(file);
            all_gone &= remove_quietly(&path);
            all_gone &= remove_quietly(&temp_path(&path));
            if let Some(folder) = path.parent() {
                folders.insert(folder.to_path_buf());
            }
        }
        for folder in folders {
            if let Err(e) = sync_dir(&folder) {
                all_gone = false;
                tracing::warn!(error = %sendense_io::error_chain(&e), "cannot fsync folder after delete");
            }
        }
        if all_gone && let Err(e) = self.catalog.finish_deletion(id) {
            tracing::warn!(backup_id = %id, error = %sendense_io::error_chain(&e), "cannot clear deletion journal entry");
        }
    }

    /// Opens a read-only export per disk of a completed backup, serving that
    /// disk's chain as of the backup. Opening twice answers the same exports.
    ///
    /// # Errors
    /// Unknown backup (404), not completed, files missing or being deleted
    /// (409), or an image fails to open.
    pub fn open_restore(&self, id: &BackupId) -> Result<RestoreExports, HubError> {
        let (record, _chain) = self.servable_point(id)?;
        if let Some(open) = self.live().restores.get(id) {
            return Ok(self.restore_answer(open));
        }
        let opts = self.point_open_options(id)?;
        let mut opened: Vec<(DiskKey, ExportName)> = Vec::new();
        for d in &record.disks {
            let path = self.repository.join(&d.file);
            let added = Image::open(&path, &opts)
                .map_err(|e| HubError::image(&path, e))
                .and_then(|image| {
                    let export: Arc<dyn Export> = Arc::new(Qcow2Export::new(Arc::new(image), true));
                    let name = ExportName::random();
                    self.registry.add(name.as_str(), export)?;
                    Ok(name)
                });
            match added {
                Ok(name) => opened.push((d.disk_key, name)),
                Err(e) => {
                    for (_, name) in opened {
                        drop(self.registry.remove(name.as_str()));
                    }
                    return Err(e);
                }
            }
        }
        let answer = self.restore_answer(&opened);
        let mut live = self.live();
        let raced = live.restores.get(id).map(|r| self.restore_answer(r));
        if raced.is_some() || live.deleting.contains(id) {
            drop(live);
            for (_, name) in opened {
                drop(self.registry.remove(name.as_str()));
            }
            // Another request opened them meanwhile: answer theirs. Or the
            // backup is being deleted: open nothing.
            return raced.ok_or_else(|| HubError::BackupNotFound {
                backup_id: id.clone(),
            });
        }
        live.restores.insert(id.clone(), opened);
        tracing::info!(backup_id = %id, "restore exports opened");
        Ok(answer)
    }

    fn restore_answer(&self, open: &[(DiskKey, ExportName)]) -> RestoreExports {
        RestoreExports {
            disks: open
                .iter()
                .map(|(key, name)| RestoreDisk {
                    disk_key: *key,
                    export_name: name.clone(),
                    nbd_uri: self.uri(name),
                })
                .collect(),
        }
    }

    /// Closes a backup's restore exports (after in-flight reads finish, up to
    /// a deadline).
    ///
    /// # Errors
    /// No restore exports of that backup are open (404).
    pub async fn close_restore(&self, id: &BackupId) -> Result<(), HubError> {
        let open = self
            .live()
            .restores
            .remove(id)
            .ok_or_else(|| HubError::NoExports {
                backup_id: id.clone(),
            })?;
        let until = Instant::now() + FAIL_DRAIN;
        let waits: Vec<_> = open
            .iter()
            .map(|(_, name)| self.registry.remove(name.as_str()))
            .collect();
        for wait in waits {
            let _ = tokio::time::timeout_at(until, wait).await;
        }
        tracing::info!(backup_id = %id, "restore exports closed");
        Ok(())
    }

    // ----------------------------------------------------------- repository

    /// Space and contents of the repository: file system capacity and free
    /// space, bytes its files occupy (in all and per VM), and the files the
    /// catalog does not know.
    ///
    /// # Errors
    /// The catalog fails, or the repository cannot be read.
    pub fn repository(&self) -> Result<RepositoryInfo, HubError> {
        let fs = rustix::fs::statvfs(&self.repository)
            .map_err(|e| HubError::io(&self.repository, e.into()))?;
        let records = self.catalog.backups(&BackupQuery::default())?;
        let known = self.known_files(&records)?;
        let files = walk_files(&self.repository)?;
        let mut used_bytes = 0u64;
        let mut unknown_files = Vec::new();
        let mut sizes: HashMap<&str, u64> = HashMap::new();
        for (rel, allocated) in &files {
            used_bytes = used_bytes.saturating_add(*allocated);
            sizes.insert(rel.as_str(), *allocated);
            if !is_known(&known, rel) {
                unknown_files.push(rel.clone());
            }
        }
        let mut per_vm: BTreeMap<VmName, VmUsage> = BTreeMap::new();
        for r in &records {
            let usage = per_vm.entry(r.vm_name.clone()).or_insert_with(|| VmUsage {
                vm_name: r.vm_name.clone(),
                used_bytes: 0,
                backups: 0,
            });
            let bytes = r
                .files()
                .iter()
                .filter_map(|f| sizes.get(f.as_str()))
                .fold(0u64, |a, b| a.saturating_add(*b));
            usage.used_bytes = usage.used_bytes.saturating_add(bytes);
            if r.status == BackupStatus::Completed && !r.files_missing {
                usage.backups = usage.backups.saturating_add(1);
            }
        }
        let capacity_bytes = fs.f_blocks.saturating_mul(fs.f_frsize);
        let free_bytes = fs.f_bavail.saturating_mul(fs.f_frsize);
        Ok(RepositoryInfo {
            low_space_warning: self.low_space_warning(capacity_bytes, free_bytes),
            capacity_bytes,
            used_bytes,
            free_bytes,
            vms: per_vm.into_values().collect(),
            unknown_files,
        })
    }

    /// Every file the catalog knows, relative to the repository: each
    /// backup's images and the files of unfinished deletions.
    fn known_files(&self, records: &[BackupRecord]) -> Result<HashSet<String>, HubError> {
        let mut known: HashSet<String> = records.iter().flat_map(BackupRecord::files).collect();
        // A running backup's digests arrive before it completes.
        known.extend(
            records
                .iter()
                .filter(|r| r.status.is_active())
                .flat_map(|r| r.disks.iter().map(|d| r.digest_file(d.disk_key))),
        );
        for (_, files) in self.catalog.deletions()? {
            known.extend(files);
        }
        Ok(known)
    }

    /// The catalog, for in-process callers.
    #[must_use]
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// A verifier of this engine's repository ([`Verifier::verify`]).
    #[must_use]
    pub fn verifier(&self) -> Verifier {
        Verifier::new(
            Arc::clone(&self.catalog),
            self.repository.clone(),
            Arc::clone(&self.chain_locks),
        )
    }

    // ------------------------------------------------------------ lifecycle

    /// At start: backups a crash left running become failed and their files
    /// are removed; deletions a crash interrupted are finished; orphaned
    /// `.part` files are removed; completed backups whose files are gone are
    /// marked (never parents again); files the catalog does not know are
    /// reported, never deleted.
    ///
    /// # Errors
    /// The catalog fails, or the repository cannot be read.
    pub fn reconcile(&self) -> Result<Reconciliation, HubError> {
        let mut report = Reconciliation::default();
        for record in self.catalog.running_backups()? {
            for d in &record.disks {
                for path in [
                    self.repository.join(&d.file),
                    self.repository.join(record.digest_file(d.disk_key)),
                ] {
                    remove_quietly(&temp_path(&path));
                    remove_quietly(&path);
                }
            }
            self.catalog.fail_backup(
                &record.backup_id,
                "the hub stopped while this backup was running",
                Timestamp::now(),
            )?;
            tracing::warn!(backup_id = %record.backup_id, "backup left running by a previous hub process marked failed");
            report.failed_running += 1;
        }
        for (id, files) in self.catalog.deletions()? {
            self.remove_deleted_files(&id, &files);
            tracing::warn!(backup_id = %id, "finished a deletion a previous hub process left half done");
            report.finished_deletions += 1;
        }
        for (rel, _) in walk_files(&self.repository)? {
            if is_part_file(&rel) {
                remove_quietly(&self.repository.join(&rel));
                tracing::warn!(file = %rel, "removed an orphaned partial image");
                report.removed_part_files.push(rel);
            }
        }
        let records = self.catalog.backups(&BackupQuery {
            vm_name: None,
            status: Some(BackupStatus::Completed),
        })?;
        for record in records.iter().filter(|r| !r.evicted) {
            let missing = record
                .disks
                .iter()
                .find(|d| !self.repository.join(&d.file).is_file());
            if let Some(d) = missing
                && !record.files_missing
            {
                self.catalog.mark_files_missing(&record.backup_id)?;
                tracing::error!(backup_id = %record.backup_id, file = %d.file, "a completed backup's image is missing: marked, never used as a parent");
                report.marked_missing.push(record.backup_id.clone());
            }
        }
        let all = self.catalog.backups(&BackupQuery::default())?;
        let known = self.known_files(&all)?;
        for (rel, _) in walk_files(&self.repository)? {
            if !is_known(&known, &rel) {
                tracing::warn!(file = %rel, "file in the repository the catalog does not know (kept; see GET /api/v1/repository)");
                report.unknown_files.push(rel);
            }
        }
        Ok(report)
    }

    /// One pass of the dead-client watchdog: fails every running backup
    /// whose client is gone (see [`Watchdog`]). The daemon calls it every
    /// few seconds; each failure runs as `fail_backup` does.
    pub async fn watchdog_tick(self: &Arc<Self>, timers: Watchdog) {
        let now = Instant::now();
        let dead: Vec<(BackupId, String)> = {
            let mut live = self.live();
            live.running
                .iter_mut()
                .filter_map(|(id, slot)| match slot {
                    Slot::Running { disks, liveness } => {
                        let sample = self.sample(disks);
                        liveness
                            .observe(now, sample, timers)
                            .map(|reason| (id.clone(), reason))
                    }
                    _ => None,
                })
                .collect()
        };
        for (id, reason) in dead {
            match self.fail_backup(&id, &reason).await {
                Ok(_) => {}
                // Completed or failed by someone else meanwhile: fine.
                Err(e) if e.kind() == crate::error::ErrorKind::Conflict => {}
                Err(e) => {
                    tracing::error!(backup_id = %id, error = %sendense_io::error_chain(&e), "cannot fail a backup whose client is gone");
                }
            }
        }
    }

    /// The connection count and last activity of each disk's export.
    fn sample(&self, disks: &[WriteDisk]) -> Vec<ExportActivity> {
        disks
            .iter()
            .map(|d| {
                let name = d.export_name.as_str();
                ExportActivity {
                    connections: self.registry.connection_count(name).unwrap_or(0),
                    last_activity: self.registry.last_activity(name),
                }
            })
            .collect()
    }

    /// At shutdown: no backup starts any more; running backups become failed
    /// (chain untouched), starts in progress give up, completions in progress
    /// end, restore exports close. The caller bounds how long it may take.
    pub async fn shutdown(self: &Arc<Self>) {
        let ids: Vec<BackupId> = {
            let mut live = self.live();
            live.closing = true;
            live.running.keys().cloned().collect()
        };
        for id in ids {
            match self
                .fail_backup(&id, "the hub was shut down during the backup")
                .await
            {
                Ok(_) => {}
                Err(e) if e.kind() == crate::error::ErrorKind::Conflict => {}
                Err(e) => {
                    tracing::error!(backup_id = %id, error = %sendense_io::error_chain(&e), "cannot fail backup at shutdown");
                }
            }
        }
        let restores: Vec<BackupId> = self.live().restores.keys().cloned().collect();
        for id in restores {
            let _ = self.close_restore(&id).await;
        }
        self.close_instants().await;
    }

    /// The API form of a record, with export names and progress while live.
    fn api_backup(&self, record: &BackupRecord, live: Option<&[WriteDisk]>) -> Backup {
        let mut backup = record.to_api();
        match self.catalog.copies_of(&record.backup_id) {
            Ok(copies) => backup.copies = copies.iter().map(|c| c.to_api()).collect(),
            Err(e) => {
                tracing::warn!(backup_id = %record.backup_id, error = %sendense_io::error_chain(&e), "cannot read a backup's copies");
            }
        }
        if let Some(disks) = live {
            for d in &mut backup.disks {
                if let Some(w) = disks.iter().find(|w| w.key == d.disk_key) {
                    d.export_name = Some(w.export_name.clone());
                    d.nbd_uri = Some(self.uri(&w.export_name));
                    d.bytes_written = w.export.bytes_written();
                }
            }
        }
        backup
    }
}

fn running_disks<'a>(live: &'a Live, id: &BackupId) -> Option<&'a [WriteDisk]> {
    match live.running.get(id) {
        Some(Slot::Running { disks, .. }) => Some(disks),
        _ => None,
    }
}

/// What the watchdog reads of one export at one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ExportActivity {
    connections: usize,
    last_activity: Option<std::time::Instant>,
}

/// What the watchdog knows about one running backup's client. Time is
/// tokio's (so tests can pause it); the registry's own clock only serves to
/// notice that something happened between two ticks.
#[derive(Debug)]
struct Liveness {
    started: Instant,
    /// A connection was seen (or activity noticed) since the start.
    connected: bool,
    /// When the watchdog last noticed a change.
    last_change: Instant,
    last: Vec<ExportActivity>,
}

impl Liveness {
    fn new(now: Instant, initial: Vec<ExportActivity>) -> Self {
        Self {
            started: now,
            connected: false,
            last_change: now,
            last: initial,
        }
    }

    /// Takes one sample; answers why the backup must fail, if it must.
    fn observe(
        &mut self,
        now: Instant,
        sample: Vec<ExportActivity>,
        timers: Watchdog,
    ) -> Option<String> {
        let open: usize = sample.iter().map(|a| a.connections).sum();
        if sample != self.last {
            self.last = sample;
            self.last_change = now;
            self.connected = true;
        }
        if open > 0 {
            self.connected = true;
        }
        let quiet = now.saturating_duration_since(self.last_change);
        if !self.connected {
            let first_connect = (timers.idle_timeout / 2).max(timers.disconnect_grace);
            (now.saturating_duration_since(self.started) >= first_connect).then(|| {
                format!(
                    "no NBD connection to this backup's exports in the {} s since it started: the client went away",
                    first_connect.as_secs()
                )
            })
        } else if open == 0 {
            (quiet >= timers.disconnect_grace).then(|| {
                format!(
                    "every NBD connection to this backup's exports closed {} s ago with no complete or fail: the client went away",
                    timers.disconnect_grace.as_secs()
                )
            })
        } else {
            (quiet >= timers.idle_timeout).then(|| {
                format!(
                    "the NBD connections of this backup were silent for {} s: the client is stuck",
                    timers.idle_timeout.as_secs()
                )
            })
        }
    }
}

/// A completion must name each of the backup's disks exactly once.
fn validate_completion(record: &BackupRecord, req: &CompleteBackupRequest) -> Result<(), HubError> {
    let mut seen = BTreeSet::new();
    for c in req.disks() {
        if record.disk(c.disk_key).is_none() {
            return Err(HubError::UnknownDisk {
                backup_id: record.backup_id.clone(),
                disk_key: c.disk_key,
            });
        }
        if !seen.insert(c.disk_key) {
            return Err(HubError::DuplicateDisk {
                backup_id: record.backup_id.clone(),
                disk_key: c.disk_key,
            });
        }
    }
    if let Some(missing) = record.disks.iter().find(|d| !seen.contains(&d.disk_key)) {
        return Err(HubError::MissingDisk {
            backup_id: record.backup_id.clone(),
            disk_key: missing.disk_key,
        });
    }
    Ok(())
}

/// `DIR/.<name>.part`: where an image lives until it is complete.
fn temp_path(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.part"))
}

/// Whether `rel` (relative to the repository) is a temporary image name.
fn is_part_file(rel: &str) -> bool {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    name.starts_with('.') && name.ends_with(".part")
}

/// Whether the catalog knows `rel`: one of its files, or the temporary name
/// of one (an image being written).
fn is_known(known: &HashSet<String>, rel: &str) -> bool {
    if known.contains(rel) {
        return true;
    }
    let (folder, name) = rel.rsplit_once('/').unwrap_or(("", rel));
    let target = name.strip_prefix('.').and_then(|n| n.strip_suffix(".part"));
    target.is_some_and(|t| {
        let full = if folder.is_empty() {
            t.to_owned()
        } else {
            format!("{folder}/{t}")
        };
        known.contains(&full)
    })
}

/// Every regular file under `root` (symlinks are not followed), relative to
/// it with `/` separators, with the bytes it occupies on disk; sorted.
fn walk_files(root: &Path) -> Result<Vec<(String, u64)>, HubError> {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| HubError::io(&dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| HubError::io(&dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let meta = entry
                .path()
                .symlink_metadata()
                .map_err(|e| HubError::io(entry.path(), e))?;
            if meta.is_dir() {
                stack.push((entry.path(), rel));
            } else {
                out.push((rel, meta.blocks().saturating_mul(512)));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Removes a file; answers whether it is gone (a missing file is).
fn remove_quietly(path: &Path) -> bool {
    match std::fs::remove_file(path) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove file");
            false
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), HubError> {
    sendense_io::sync_dir(dir).map_err(|e| HubError::io(dir, e))
}

/// The catalog's record of backup `id`; [`HubError::BackupNotFound`] when there is none.
pub(crate) fn backup_record(catalog: &Catalog, id: &BackupId) -> Result<BackupRecord, HubError> {
    catalog.backup(id)?.ok_or_else(|| HubError::BackupNotFound {
        backup_id: id.clone(),
    })
}

/// The record of backup `id`, which must be `completed` ([`HubError::WrongStatus`] otherwise).
pub(crate) fn completed_record(catalog: &Catalog, id: &BackupId) -> Result<BackupRecord, HubError> {
    let record = backup_record(catalog, id)?;
    if record.status != BackupStatus::Completed {
        return Err(HubError::WrongStatus {
            backup_id: id.clone(),
            status: record.status,
            expected: "completed",
        });
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMERS: Watchdog = Watchdog {
        idle_timeout: Duration::from_secs(120),
        disconnect_grace: Duration::from_secs(20),
    };

    fn activity(connections: usize, at: std::time::Instant) -> ExportActivity {
        ExportActivity {
            connections,
            last_activity: Some(at),
        }
    }

    /// Issue #11 item 4: a client that connected and then vanished (every
    /// connection closed) is failed after the grace, not the idle timeout.
    #[tokio::test(start_paused = true)]
    async fn liveness_all_connections_closed_fails_after_grace() {
        let t0 = std::time::Instant::now();
        let mut l = Liveness::new(Instant::now(), vec![activity(0, t0)]);
        let t1 = t0 + Duration::from_millis(1);
        assert_eq!(
            l.observe(Instant::now(), vec![activity(2, t1)], TIMERS),
            None
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        let t2 = t1 + Duration::from_millis(1);
        assert_eq!(
            l.observe(Instant::now(), vec![activity(0, t2)], TIMERS),
            None
        );
        tokio::time::advance(Duration::from_secs(19)).await;
        assert_eq!(
            l.observe(Instant::now(), vec![activity(0, t2)], TIMERS),
            None
        );

        tokio::time::advance(Duration::from_secs(1)).await;
        let verdict = l.observe(Instant::now(), vec![activity(0, t2)], TIMERS);

        assert!(verdict.is_some_and(|r| r.contains("closed 20 s ago")));
    }

    #[tokio::test(start_paused = true)]
    async fn liveness_reconnect_within_grace_keeps_backup() {
        let t0 = std::time::Instant::now();
        let mut l = Liveness::new(Instant::now(), vec![activity(0, t0)]);
        let t1 = t0 + Duration::from_millis(1);
        l.observe(Instant::now(), vec![activity(0, t1)], TIMERS);
        tokio::time::advance(Duration::from_secs(15)).await;
        let t2 = t1 + Duration::from_millis(1);
        l.observe(Instant::now(), vec![activity(1, t2)], TIMERS);

        tokio::time::advance(Duration::from_secs(60)).await;
        let verdict = l.observe(Instant::now(), vec![activity(1, t2)], TIMERS);

        assert_eq!(verdict, None);
    }

    #[tokio::test(start_paused = true)]
    async fn liveness_open_but_silent_fails_after_idle_timeout() {
        let t0 = std::time::Instant::now();
        let mut l = Liveness::new(Instant::now(), vec![activity(0, t0)]);
        let t1 = t0 + Duration::from_millis(1);
        l.observe(Instant::now(), vec![activity(1, t1)], TIMERS);
        tokio::time::advance(Duration::from_secs(119)).await;
        assert_eq!(
            l.observe(Instant::now(), vec![activity(1, t1)], TIMERS),
            None
        );

        tokio::time::advance(Duration::from_secs(1)).await;
        let verdict = l.observe(Instant::now(), vec![activity(1, t1)], TIMERS);

        assert!(verdict.is_some_and(|r| r.contains("silent for 120 s")));
    }

    #[tokio::test(start_paused = true)]
    async fn liveness_never_connected_fails_after_half_the_idle_timeout() {
        let t0 = std::time::Instant::now();
        let mut l = Liveness::new(Instant::now(), vec![activity(0, t0)]);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(
            l.observe(Instant::now(), vec![activity(0, t0)], TIMERS),
            None
        );

        tokio::time::advance(Duration::from_secs(1)).await;
        let verdict = l.observe(Instant::now(), vec![activity(0, t0)], TIMERS);

        assert!(verdict.is_some_and(|r| r.contains("no NBD connection")));
    }

    #[test]
    fn is_known_accepts_temporary_name_of_a_known_file() {
        let known: HashSet<String> = ["vm/disk-2000/b.qcow2".to_owned()].into();

        assert_eq!(
            [
                is_known(&known, "vm/disk-2000/b.qcow2"),
                is_known(&known, "vm/disk-2000/.b.qcow2.part"),
                is_known(&known, "vm/disk-2000/.c.qcow2.part"),
                is_known(&known, "vm/disk-2000/notes.txt"),
            ],
            [true, true, false, false]
        );
    }

    #[test]
    fn temp_path_hides_the_file_beside_its_target() {
        let t = temp_path(Path::new(
            "/r/vm/disk-2000/backup-vm-20260101T000000-abcdef.qcow2",
        ));
        assert_eq!(
            t,
            Path::new("/r/vm/disk-2000/.backup-vm-20260101T000000-abcdef.qcow2.part")
        );
    }
}
