//! The backup engine: the one owner of every step of a backup's life.
//!
//! REST handlers call exactly one method here. The engine keeps the catalog,
//! the repository files and the NBD exports consistent:
//!
//! - `start_backup` decides full or incremental (an incremental is a QCOW2
//!   overlay of the latest completed backup of each disk, with a relative
//!   backing name), creates each image under a hidden temporary name, and
//!   opens one write export per disk under an unguessable name.
//! - `complete_backup` closes the exports (after in-flight writes finish),
//!   flushes, checks each image, renames it into place, fsyncs the folder and
//!   only then commits the catalog: the chain advances in that one write
//!   transaction and nowhere else.
//! - `fail_backup` closes the exports, removes the partial files, and marks
//!   the backup failed; the chain is untouched.
//! - `recover` (at start) fails backups a crash left running and removes
//!   their files.
//!
//! Locking: `live` (running backups and restore exports) is a std mutex held
//! only for map operations, never across I/O or `.await`. A backup's write
//! disks are taken out of the map by whoever completes or fails it, so two
//! racing calls cannot both finish it.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use sendense_catalog::{BackupRecord, Catalog, DiskCompletion};
use sendense_nbd::{Export, ExportRegistry};
use sendense_qcow2::{BackingSpec, CreateOptions, Image, OpenOptions};
use sendense_types::api::BackupSnapshot;
use sendense_types::{
    Backup, BackupId, BackupQuery, BackupStatus, BackupType, Chain, CompleteBackupRequest, DiskKey,
    ExportName, RegisterVmRequest, RestoreDisk, RestoreExports, StartBackupRequest, Timestamp, Vm,
    VmName,
};

use crate::error::HubError;
use crate::qcow2_export::Qcow2Export;

/// Folder of the repository inside the data folder.
pub const REPOSITORY_DIR: &str = "repository";

/// One disk of a running backup.
#[derive(Debug)]
struct WriteDisk {
    key: DiskKey,
    export_name: ExportName,
    export: Arc<Qcow2Export>,
    temp: PathBuf,
    target: PathBuf,
}

/// What this process holds open.
#[derive(Debug, Default)]
struct Live {
    running: HashMap<BackupId, Vec<WriteDisk>>,
    restores: HashMap<BackupId, Vec<(DiskKey, ExportName)>>,
    /// The vCenter snapshot each running backup reads from (`record_snapshot`).
    snapshots: HashMap<BackupId, String>,
}

/// The backup engine.
#[derive(Debug)]
pub struct Engine {
    catalog: Arc<Catalog>,
    repository: PathBuf,
    registry: Arc<ExportRegistry>,
    nbd_base: String,
    live: Mutex<Live>,
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
        }
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
    /// Unknown VM (404), an incremental with no completed backup (409), a
    /// backup of the VM already running (409), or a repository failure.
    pub fn start_backup(&self, req: &StartBackupRequest) -> Result<Backup, HubError> {
        let vm = self.vm(&req.vm_name)?;
        let latest = self.catalog.latest_completed(&vm.name)?;
        let parent = match req.backup_type {
            BackupType::Full => None,
            BackupType::Incremental => Some(latest.ok_or_else(|| HubError::NoFullBackup {
                vm: vm.name.clone(),
            })?),
            BackupType::Auto => latest.filter(|p| chain_can_continue(&vm, p)),
        };
        let now = Timestamp::now();
        let record = BackupRecord::new(
            BackupId::new(&vm.name, now),
            &vm,
            parent.as_ref(),
            BackupStatus::Running,
            now,
        );
        self.catalog.create_backup(&record)?;
        match self.open_write_disks(&record, parent.as_ref()) {
            Ok(disks) => {
                let backup = self.api_backup(&record, Some(&disks));
                tracing::info!(
                    backup_id = %record.backup_id,
                    vm = %vm.name,
                    backup_type = %record.backup_type,
                    disks = disks.len(),
                    "backup started"
                );
                self.live().running.insert(record.backup_id.clone(), disks);
                Ok(backup)
            }
            Err(e) => {
                let reason = format!(
                    "could not prepare the images: {}",
                    crate::cli::error_chain(&e)
                );
                if let Err(fail) =
                    self.catalog
                        .fail_backup(&record.backup_id, &reason, Timestamp::now())
                {
                    tracing::error!(backup_id = %record.backup_id, error = %fail, "cannot mark backup failed");
                }
                Err(e)
            }
        }
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
        let mut opts = CreateOptions::new(disk.capacity_bytes);
        // The parent's image of the same disk, by its bare file name: it lives
        // in the same folder, so the repository can move as a whole.
        if let Some(parent_disk) = parent.and_then(|p| p.disk(key))
            && let Some(name) = Path::new(&parent_disk.file).file_name()
        {
            opts.backing = Some(BackingSpec::qcow2(name.to_string_lossy().into_owned()));
        }
        let image = Image::create(&temp, &opts).map_err(|e| HubError::image(&temp, e))?;
        let export = Arc::new(Qcow2Export::new(Arc::new(image), false));
        let export_name = ExportName::random();
        let as_dyn: Arc<dyn Export> = export.clone();
        if let Err(e) = self.registry.add(export_name.as_str(), as_dyn) {
            drop(export);
            let _ = std::fs::remove_file(&temp);
            return Err(e.into());
        }
        Ok(WriteDisk {
            key,
            export_name,
            export,
            temp,
            target,
        })
    }

    /// Closes exports (without waiting) and removes temporary files.
    fn discard_write_disks(&self, disks: Vec<WriteDisk>) {
        for d in disks {
            drop(self.registry.remove(d.export_name.as_str()));
            drop(d.export);
            remove_quietly(&d.temp);
        }
    }

    /// Completes a running backup: exports closed, images flushed, checked,
    /// renamed into place and fsynced, then the catalog commit.
    ///
    /// # Errors
    /// Unknown backup (404), not running (409), a completion that does not
    /// name each disk exactly once (400), or a failure finishing an image
    /// (the backup is then failed and the error returned).
    pub async fn complete_backup(
        self: &Arc<Self>,
        id: &BackupId,
        req: &CompleteBackupRequest,
    ) -> Result<Backup, HubError> {
        let record = self.running_record(id)?;
        validate_completion(&record, req)?;
        let disks = self
            .live()
            .running
            .remove(id)
            .ok_or_else(|| HubError::NotLive {
                backup_id: id.clone(),
            })?;
        for d in &disks {
            self.registry.remove(d.export_name.as_str()).await;
        }
        let engine = Arc::clone(self);
        let id2 = id.clone();
        let req = req.clone();
        let result = tokio::task::spawn_blocking(move || engine.finish_images(&id2, &req, disks))
            .await
            .map_err(|_| HubError::Worker)?;
        match result {
            Ok(done) => {
                tracing::info!(backup_id = %id, "backup completed");
                Ok(done.to_api())
            }
            Err((e, leftovers)) => {
                let reason = format!("completion failed: {}", crate::cli::error_chain(&e));
                tracing::error!(backup_id = %id, %reason, "backup failed at completion");
                for path in leftovers {
                    remove_quietly(&path);
                }
                if let Err(fail) = self.catalog.fail_backup(id, &reason, Timestamp::now()) {
                    tracing::error!(backup_id = %id, error = %fail, "cannot mark backup failed");
                }
                Err(e)
            }
        }
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
            .flat_map(|d| [d.temp.clone(), d.target.clone()])
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

    /// Fails a running backup: exports closed, partial files removed, chain untouched.
    ///
    /// # Errors
    /// Unknown backup (404) or not running (409).
    pub async fn fail_backup(&self, id: &BackupId, reason: &str) -> Result<Backup, HubError> {
        self.running_record(id)?;
        let disks = self.live().running.remove(id).unwrap_or_default();
        for d in &disks {
            self.registry.remove(d.export_name.as_str()).await;
        }
        for d in disks {
            drop(d.export);
            remove_quietly(&d.temp);
        }
        let record = self.catalog.fail_backup(id, reason, Timestamp::now())?;
        tracing::warn!(backup_id = %id, reason, "backup failed");
        Ok(record.to_api())
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
        self.catalog
            .backup(id)?
            .ok_or_else(|| HubError::BackupNotFound {
                backup_id: id.clone(),
            })
    }

    /// One backup, with live progress while it runs.
    ///
    /// # Errors
    /// Unknown backup, or the catalog fails.
    pub fn backup(&self, id: &BackupId) -> Result<Backup, HubError> {
        let record = self.record(id)?;
        let live = self.live();
        Ok(self.api_backup(&record, live.running.get(id).map(Vec::as_slice)))
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
            .map(|r| self.api_backup(r, live.running.get(&r.backup_id).map(Vec::as_slice)))
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

    /// Deletes a backup nothing depends on, with its files.
    ///
    /// # Errors
    /// Unknown backup (404); dependants, a running backup or open restore
    /// exports (409).
    pub fn delete_backup(&self, id: &BackupId) -> Result<Backup, HubError> {
        if self.live().restores.contains_key(id) {
            return Err(HubError::ExportsOpen {
                backup_id: id.clone(),
            });
        }
        let record = self.catalog.delete_backup(id)?;
        let mut folders = BTreeSet::new();
        for d in &record.disks {
            let path = self.repository.join(&d.file);
            remove_quietly(&path);
            remove_quietly(&temp_path(&path));
            if let Some(folder) = path.parent() {
                folders.insert(folder.to_path_buf());
            }
        }
        for folder in folders {
            if let Err(e) = sync_dir(&folder) {
                tracing::warn!(error = %crate::cli::error_chain(&e), "cannot fsync folder after delete");
            }
        }
        tracing::info!(backup_id = %id, "backup deleted");
        Ok(record.to_api())
    }

    /// Opens a read-only export per disk of a completed backup, serving that
    /// disk's chain as of the backup. Opening twice answers the same exports.
    ///
    /// # Errors
    /// Unknown backup (404), not completed (409), or an image fails to open.
    pub fn open_restore(&self, id: &BackupId) -> Result<RestoreExports, HubError> {
        let record = self.record(id)?;
        if record.status != BackupStatus::Completed {
            return Err(HubError::WrongStatus {
                backup_id: id.clone(),
                status: record.status,
                expected: "completed",
            });
        }
        if let Some(open) = self.live().restores.get(id) {
            return Ok(self.restore_answer(open));
        }
        let mut opened: Vec<(DiskKey, ExportName)> = Vec::new();
        for d in &record.disks {
            let path = self.repository.join(&d.file);
            let added = Image::open(&path, &OpenOptions::read_only())
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
        if let Some(raced) = live.restores.get(id) {
            // Another request opened them meanwhile: keep theirs, drop ours.
            let answer = self.restore_answer(raced);
            drop(live);
            for (_, name) in opened {
                drop(self.registry.remove(name.as_str()));
            }
            return Ok(answer);
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

    /// Closes a backup's restore exports (after in-flight reads finish).
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
        for (_, name) in open {
            self.registry.remove(name.as_str()).await;
        }
        tracing::info!(backup_id = %id, "restore exports closed");
        Ok(())
    }

    // ------------------------------------------------------------ lifecycle

    /// At start: backups a crash left running become failed, and their files
    /// (temporary or already renamed) are removed. Answers how many.
    ///
    /// # Errors
    /// The catalog fails.
    pub fn recover(&self) -> Result<usize, HubError> {
        let stale = self.catalog.running_backups()?;
        for record in &stale {
            for d in &record.disks {
                let path = self.repository.join(&d.file);
                remove_quietly(&temp_path(&path));
                remove_quietly(&path);
            }
            self.catalog.fail_backup(
                &record.backup_id,
                "the hub stopped while this backup was running",
                Timestamp::now(),
            )?;
            tracing::warn!(backup_id = %record.backup_id, "backup left running by a previous hub process marked failed");
        }
        Ok(stale.len())
    }

    /// Fails every running backup whose exports have had no NBD connection
    /// for `idle` (the client went away without calling `fail`).
    pub async fn fail_idle(&self, idle: Duration) {
        let now = Instant::now();
        let idle_ids: Vec<BackupId> = {
            let live = self.live();
            live.running
                .iter()
                .filter(|(_, disks)| {
                    disks.iter().all(|d| {
                        let name = d.export_name.as_str();
                        self.registry.connection_count(name).unwrap_or(0) == 0
                            && self
                                .registry
                                .last_activity(name)
                                .is_none_or(|t| now.saturating_duration_since(t) >= idle)
                    })
                })
                .map(|(id, _)| id.clone())
                .collect()
        };
        for id in idle_ids {
            let reason = format!(
                "no NBD connection to this backup's exports for {} s: the client went away",
                idle.as_secs()
            );
            if let Err(e) = self.fail_backup(&id, &reason).await {
                tracing::error!(backup_id = %id, error = %crate::cli::error_chain(&e), "cannot fail idle backup");
            }
        }
    }

    /// At shutdown: running backups become failed (chain untouched), restore
    /// exports close.
    pub async fn shutdown(&self) {
        let ids: Vec<BackupId> = self.live().running.keys().cloned().collect();
        for id in ids {
            if let Err(e) = self
                .fail_backup(&id, "the hub was shut down during the backup")
                .await
            {
                tracing::error!(backup_id = %id, error = %crate::cli::error_chain(&e), "cannot fail backup at shutdown");
            }
        }
        let restores: Vec<BackupId> = self.live().restores.keys().cloned().collect();
        for id in restores {
            let _ = self.close_restore(&id).await;
        }
    }

    /// The API form of a record, with export names and progress while live.
    fn api_backup(&self, record: &BackupRecord, live: Option<&[WriteDisk]>) -> Backup {
        let mut backup = record.to_api();
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

/// Whether `auto` may continue the chain at `parent`: every disk of the VM
/// has a parent image with a change id, and no capacity changed.
fn chain_can_continue(vm: &Vm, parent: &BackupRecord) -> bool {
    vm.disks.iter().all(|spec| {
        parent
            .disk(spec.key)
            .is_some_and(|d| d.change_id.is_some() && d.capacity_bytes == spec.capacity_bytes)
    })
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

fn remove_quietly(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot remove file"),
    }
}

fn sync_dir(dir: &Path) -> Result<(), HubError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| HubError::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

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
