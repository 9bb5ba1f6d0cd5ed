//! Instant recovery (DESIGN.md "Restore"): a completed restore point served as one *writable*
//! NBD export per disk, each over a scratch QCOW2 overlay, so a VM boots from its backup in
//! seconds while the point itself never changes.
//!
//! # Files
//! `DATA/instant/<instant_id>/disk-<key>.qcow2`, one per disk of the point. Each overlay's
//! backing file is the point's image of that disk (that disk's chain as of the point), named
//! *relative* to the overlay's folder: `../../repository/<vm>/disk-<key>/<backup_id>.qcow2`, so
//! the data folder can move as a whole and `qemu-img info --backing-chain` follows it as our
//! engine does. The hub wrote that name itself, so it is trusted as the caller's choice
//! ([`Image::open_trusting_backing`]; an image's *own* backing name is never checked against a
//! policy at create either), and after opening, the hub checks that the backing file resolves
//! to exactly the catalog's image of that point and disk ([`HubError::NotOurChain`]
//! otherwise). Every name below it follows the repository's policy (a bare file name in the
//! same folder, QCOW2 only). The point's images are opened read-only (and OFD read-locked) and
//! never written: the guest's writes, zeroes and trims land in the overlay only.
//!
//! # Restart
//! An instant recovery survives a restart of the hub: its catalog record
//! ([`sendense_catalog::InstantRecord`]) keeps the point, the overlays and the export names,
//! and [`Engine::reopen_instants`] (at start, before the API and NBD ports serve) opens the
//! overlays again under the same export names, so a guest reconnects to the same `nbd_uri`.
//! Shutdown flushes each overlay after its connections end (up to a deadline). An overlay that
//! cannot be opened again leaves its instant `unavailable` (files kept, points still held)
//! until it is discarded; a folder no record names (a crash between the folder's creation and
//! the record, or between the record's removal and the folder's) is removed at start.
//!
//! # Interplay
//! While an instant recovery exists, its point and every point it reads through (the point's
//! ancestors) cannot be deleted or removed by a merge: [`Engine::refuse_instant_held`] answers
//! [`HubError::InstantHeld`] (409) naming the instant; a prune job skips them and says why.
//! Starting takes the VM's chain lock shared, as a restore open does, so no merge runs while
//! the overlays are made.
//!
//! # Locking
//! `instant_ops` serializes start, discard and reopen (catalog record, exports and folder
//! change together); `live` is held only for map operations.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sendense_catalog::{InstantDiskRecord, InstantRecord};
use sendense_nbd::Export;
use sendense_qcow2::{BackingPolicy, BackingSpec, Image, MAX_CHAIN_DEPTH, OpenOptions};
use sendense_types::{
    BackupId, BackupQuery, DiskKey, ExportName, InstantDisk, InstantId, InstantList,
    InstantRecovery, InstantState, Timestamp, VmName,
};
use tokio::time::Instant;

use super::{Engine, FAIL_DRAIN, REPOSITORY_DIR, sync_dir};
use crate::error::HubError;
use sendense_image::export::{Qcow2Export, scratch_overlay_options};

/// Folder of the instant recoveries' scratch overlays inside the data folder (beside
/// [`REPOSITORY_DIR`]).
pub const INSTANT_DIR: &str = "instant";

/// One disk of an instant recovery this process serves.
#[derive(Debug)]
struct OpenDisk {
    export_name: ExportName,
    export: Arc<Qcow2Export>,
}

/// An instant recovery this process holds.
#[derive(Debug)]
pub(super) struct OpenInstant {
    backup_id: BackupId,
    vm_name: VmName,
    /// Its open exports; empty when unavailable.
    disks: Vec<OpenDisk>,
    /// Why its overlays could not be opened again at start.
    error: Option<String>,
}

impl Engine {
    /// The folder of the instant recoveries: `DATA/instant`, beside the repository.
    fn instant_root(&self) -> PathBuf {
        self.repository.parent().map_or_else(
            || self.repository.join(INSTANT_DIR),
            |d| d.join(INSTANT_DIR),
        )
    }

    /// Starts an instant recovery of a completed point: per disk a scratch overlay in
    /// `DATA/instant/<instant_id>/` over the point's image, and a writable export over it.
    ///
    /// # Errors
    /// Unknown backup (404); not completed, files missing, being deleted, a removal of its VM
    /// running (409); the overlays estimated not to fit (507, a tenth of each disk's
    /// capacity); 503 while shutting down; image, repository or catalog failures.
    pub fn start_instant(&self, id: &BackupId) -> Result<InstantRecovery, HubError> {
        if self.live().closing {
            return Err(HubError::ShuttingDown);
        }
        let (record, _chain) = self.servable_point(id)?;
        let needed = record
            .disks
            .iter()
            .map(|d| d.capacity_bytes / 10)
            .fold(0u64, u64::saturating_add);
        let free = self.free_bytes()?;
        if needed > free {
            return Err(HubError::SpaceShort {
                vm: record.vm_name,
                needed,
                free,
                reserve: 0,
            });
        }
        let _ops = self
            .instant_ops
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let instant_id = InstantId::random();
        let root = self.instant_root();
        let dir = root.join(instant_id.as_str());
        std::fs::create_dir_all(&root).map_err(|e| HubError::io(&root, e))?;
        std::fs::create_dir(&dir).map_err(|e| HubError::io(&dir, e))?;
        let made = self.make_overlays(&record, &instant_id, &dir);
        let (disks, stored) = match made {
            Ok(made) => made,
            Err(e) => {
                remove_folder(&dir, &root);
                return Err(e);
            }
        };
        let instant = InstantRecord {
            instant_id: instant_id.clone(),
            backup_id: id.clone(),
            vm_name: record.vm_name.clone(),
            created_at: Timestamp::now(),
            disks: stored,
        };
        let registered = sync_dir(&dir)
            .and_then(|()| sync_dir(&root))
            .and_then(|()| self.register_disks(&disks));
        if let Err(e) = registered {
            drop(disks);
            remove_folder(&dir, &root);
            return Err(e);
        }
        // Held from here on: a deletion of the point that begins now sees the instant, and one
        // that began before is seen here (both under `live`).
        let refused = {
            let mut live = self.live();
            if live.deleting.contains(id) || live.closing {
                Some(disks)
            } else {
                live.instants.insert(
                    instant_id.clone(),
                    OpenInstant {
                        backup_id: id.clone(),
                        vm_name: record.vm_name,
                        disks,
                        error: None,
                    },
                );
                None
            }
        };
        let committed = match refused {
            Some(disks) => {
                self.unregister(&disks);
                Err(HubError::BackupNotFound {
                    backup_id: id.clone(),
                })
            }
            None => self.catalog.create_instant(&instant).map_err(|e| {
                if let Some(open) = self.live().instants.remove(&instant_id) {
                    self.unregister(&open.disks);
                }
                HubError::from(e)
            }),
        };
        if let Err(e) = committed {
            remove_folder(&dir, &root);
            return Err(e);
        }
        tracing::info!(instant_id = %instant_id, backup_id = %id, disks = instant.disks.len(), "instant recovery started");
        Ok(self.instant_answer(&instant, InstantState::Open, None))
    }

    /// Creates the overlay of each disk of `point` in `dir` and its export (not registered).
    fn make_overlays(
        &self,
        point: &sendense_catalog::BackupRecord,
        instant_id: &InstantId,
        dir: &Path,
    ) -> Result<(Vec<OpenDisk>, Vec<InstantDiskRecord>), HubError> {
        let mut disks = Vec::with_capacity(point.disks.len());
        let mut stored = Vec::with_capacity(point.disks.len());
        let layers = self.point_layers(&point.backup_id)?;
        for d in &point.disks {
            let name = overlay_name(d.disk_key);
            let path = dir.join(&name);
            // 64 KiB clusters with subclusters: a guest's small write allocates only its
            // subclusters and copies nothing up from the point (the `instant` benchmark).
            let opts = scratch_overlay_options(
                d.capacity_bytes,
                BackingSpec::qcow2(backing_name(&d.file)),
            )
            .backing_policy(BackingPolicy::repository());
            let opts = match &layers {
                Some(source) => opts.layers(Arc::clone(source)),
                None => opts,
            };
            let image = Image::create(&path, &opts).map_err(|e| HubError::image(&path, e))?;
            self.check_backing(&image, &path, &d.file)?;
            let export_name = ExportName::random();
            disks.push(OpenDisk {
                export_name: export_name.clone(),
                export: Arc::new(Qcow2Export::new(Arc::new(image), false)),
            });
            stored.push(InstantDiskRecord {
                disk_key: d.disk_key,
                export_name,
                overlay: format!("{INSTANT_DIR}/{instant_id}/{name}"),
                backing_file: d.file.clone(),
            });
        }
        Ok((disks, stored))
    }

    /// Checks that `image`'s backing file is the repository's `file`.
    fn check_backing(&self, image: &Image, path: &Path, file: &str) -> Result<(), HubError> {
        // The point's file may be missing (a point read from a bucket): compare the paths the
        // files have, or would have.
        let expected = sendense_qcow2::layers::would_be_at(&self.repository.join(file))
            .map_err(|e| HubError::io(self.repository.join(file), e))?;
        let found = image
            .backing()
            .and_then(|b| sendense_qcow2::layers::would_be_at(b.path()).ok());
        if found.as_deref() == Some(expected.as_path()) {
            Ok(())
        } else {
            Err(HubError::NotOurChain {
                path: path.to_path_buf(),
            })
        }
    }

    /// Publishes each disk's export; on failure removes those it published.
    fn register_disks(&self, disks: &[OpenDisk]) -> Result<(), HubError> {
        for (i, d) in disks.iter().enumerate() {
            let export: Arc<dyn Export> = d.export.clone();
            if let Err(e) = self.registry.add(d.export_name.as_str(), export) {
                for done in &disks[..i] {
                    drop(self.registry.remove(done.export_name.as_str()));
                }
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// Withdraws each disk's export (without waiting: nobody was told its name yet).
    fn unregister(&self, disks: &[OpenDisk]) {
        for d in disks {
            drop(self.registry.remove(d.export_name.as_str()));
        }
    }

    /// Every instant recovery, oldest first.
    ///
    /// # Errors
    /// The catalog fails.
    pub fn instants(&self) -> Result<InstantList, HubError> {
        let records = self.catalog.instants()?;
        let live = self.live();
        let instants = records
            .iter()
            .map(|r| {
                let (state, error) = match live.instants.get(&r.instant_id) {
                    Some(open) if open.error.is_none() => (InstantState::Open, None),
                    Some(open) => (InstantState::Unavailable, open.error.clone()),
                    None => (
                        InstantState::Unavailable,
                        Some("not opened by this hub process".to_owned()),
                    ),
                };
                self.instant_answer(r, state, error)
            })
            .collect();
        Ok(InstantList { instants })
    }

    /// One instant recovery.
    ///
    /// # Errors
    /// Unknown instant (404); the catalog fails.
    pub fn instant(&self, id: &InstantId) -> Result<InstantRecovery, HubError> {
        self.instants()?
            .instants
            .into_iter()
            .find(|i| &i.instant_id == id)
            .ok_or_else(|| HubError::InstantNotFound {
                instant_id: id.clone(),
            })
    }

    /// Discards an instant recovery: closes its exports (after in-flight requests end, up to
    /// a deadline, then cut), forgets it and removes its scratch folder (parent fsynced).
    /// Everything the guest wrote is gone; the point is as it was.
    ///
    /// # Errors
    /// Unknown instant (404); the catalog fails.
    pub async fn discard_instant(&self, id: &InstantId) -> Result<InstantRecovery, HubError> {
        let (open, record) = {
            let _ops = self
                .instant_ops
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let record = self.catalog.delete_instant(id)?;
            let open = self.live().instants.remove(id);
            (open, record)
        };
        let Some(record) = record else {
            return Err(HubError::InstantNotFound {
                instant_id: id.clone(),
            });
        };
        let answer = self.instant_answer(&record, InstantState::Open, None);
        if let Some(open) = open {
            self.close_instant_exports(&open).await;
        }
        let root = self.instant_root();
        remove_folder(&root.join(id.as_str()), &root);
        tracing::info!(instant_id = %id, backup_id = %record.backup_id, "instant recovery discarded");
        Ok(answer)
    }

    /// At start, before the ports serve: opens every stored instant recovery's overlays again
    /// under the same export names; one that fails stays listed as unavailable. Removes
    /// folders of `DATA/instant` no record names.
    ///
    /// # Errors
    /// The catalog fails, or `DATA/instant` cannot be read.
    pub fn reopen_instants(&self) -> Result<usize, HubError> {
        let _ops = self
            .instant_ops
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let records = self.catalog.instants()?;
        let root = self.instant_root();
        let known: HashSet<&str> = records.iter().map(|r| r.instant_id.as_str()).collect();
        if root.is_dir() {
            let entries = std::fs::read_dir(&root).map_err(|e| HubError::io(&root, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| HubError::io(&root, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if !known.contains(name.as_str()) {
                    tracing::warn!(folder = %name, "removed an instant recovery folder no record names");
                    remove_folder(&entry.path(), &root);
                }
            }
        }
        let mut opened = 0;
        for r in &records {
            let (disks, error) = match self.reopen(r) {
                Ok(disks) => {
                    opened += 1;
                    tracing::info!(instant_id = %r.instant_id, backup_id = %r.backup_id, "instant recovery opened again");
                    (disks, None)
                }
                Err(e) => {
                    let msg = sendense_io::error_chain(&e);
                    tracing::error!(instant_id = %r.instant_id, error = %msg, "cannot open an instant recovery again: it stays unavailable until discarded");
                    (Vec::new(), Some(msg))
                }
            };
            self.live().instants.insert(
                r.instant_id.clone(),
                OpenInstant {
                    backup_id: r.backup_id.clone(),
                    vm_name: r.vm_name.clone(),
                    disks,
                    error,
                },
            );
        }
        Ok(opened)
    }

    fn reopen(&self, r: &InstantRecord) -> Result<Vec<OpenDisk>, HubError> {
        let data = self.instant_root();
        let data = data.parent().unwrap_or(&data);
        // Writeback, as the overlay was created (`scratch_overlay_options`).
        let mut opts = OpenOptions::writable()
            .writeback(true)
            .max_chain_depth(MAX_CHAIN_DEPTH)
            .backing(BackingPolicy::repository());
        if let Some(source) = self.point_layers(&r.backup_id)? {
            opts = opts.layers(source);
        }
        let mut disks = Vec::with_capacity(r.disks.len());
        for d in &r.disks {
            let path = data.join(&d.overlay);
            let image = Image::open_trusting_backing(&path, &opts)
                .map_err(|e| HubError::image(&path, e))?;
            self.check_backing(&image, &path, &d.backing_file)?;
            disks.push(OpenDisk {
                export_name: d.export_name.clone(),
                export: Arc::new(Qcow2Export::new(Arc::new(image), false)),
            });
        }
        self.register_disks(&disks)?;
        Ok(disks)
    }

    /// Refuses (409 naming the instant recoveries) when an instant recovery of `vm` reads
    /// through any of `points`: its own point or one of that point's ancestors.
    ///
    /// # Errors
    /// [`HubError::InstantHeld`]; the catalog fails.
    pub fn refuse_instant_held(&self, vm: &VmName, points: &[BackupId]) -> Result<(), HubError> {
        let holds = self.instant_holds(vm)?;
        let asked: BTreeSet<&BackupId> = points.iter().collect();
        let mut backup_ids = BTreeSet::new();
        let mut instant_ids = BTreeSet::new();
        for (point, instant) in holds {
            if asked.contains(&point) {
                backup_ids.insert(point);
                instant_ids.insert(instant);
            }
        }
        if backup_ids.is_empty() {
            Ok(())
        } else {
            Err(HubError::InstantHeld {
                backup_ids: backup_ids.into_iter().collect(),
                instant_ids: instant_ids.into_iter().collect(),
            })
        }
    }

    /// Every point of `vm` an instant recovery reads (its point and that point's ancestors),
    /// with the instant reading it.
    ///
    /// # Errors
    /// The catalog fails.
    pub fn instant_holds(&self, vm: &VmName) -> Result<Vec<(BackupId, InstantId)>, HubError> {
        let starts: Vec<(BackupId, InstantId)> = self
            .live()
            .instants
            .iter()
            .filter(|(_, o)| &o.vm_name == vm)
            .map(|(i, o)| (o.backup_id.clone(), i.clone()))
            .collect();
        self.with_ancestors(vm, starts)
    }

    /// Each `(point, holder)` of `vm`, followed by the point's ancestors held by the same
    /// holder: what a reader of the point reads through (a loop in the records ends the walk).
    ///
    /// # Errors
    /// The catalog fails.
    pub(crate) fn with_ancestors<H: Clone>(
        &self,
        vm: &VmName,
        starts: Vec<(BackupId, H)>,
    ) -> Result<Vec<(BackupId, H)>, HubError> {
        if starts.is_empty() {
            return Ok(Vec::new());
        }
        let records = self.catalog.backups(&BackupQuery {
            vm_name: Some(vm.clone()),
            ..BackupQuery::default()
        })?;
        let mut out = Vec::new();
        for (start, holder) in starts {
            let mut next = Some(start);
            let mut seen = HashSet::new();
            while let Some(id) = next.take() {
                if !seen.insert(id.clone()) {
                    break;
                }
                next = records
                    .iter()
                    .find(|r| r.backup_id == id)
                    .and_then(|r| r.parent_backup_id.clone());
                out.push((id, holder.clone()));
            }
        }
        Ok(out)
    }

    /// At shutdown: closes every instant recovery's exports and flushes its overlays; the
    /// records and files stay for the next start.
    pub(super) async fn close_instants(&self) {
        let open: Vec<(InstantId, OpenInstant)> = self.live().instants.drain().collect();
        for (id, instant) in open {
            self.close_instant_exports(&instant).await;
            for d in &instant.disks {
                if let Err(e) = d.export.image().flush() {
                    tracing::error!(instant_id = %id, error = %sendense_io::error_chain(&e), "cannot flush an instant recovery overlay at shutdown");
                }
            }
        }
    }

    /// Removes the exports of `open` and waits up to [`FAIL_DRAIN`] for their connections.
    async fn close_instant_exports(&self, open: &OpenInstant) {
        let until = Instant::now() + FAIL_DRAIN;
        let waits: Vec<_> = open
            .disks
            .iter()
            .map(|d| self.registry.remove(d.export_name.as_str()))
            .collect();
        for wait in waits {
            if tokio::time::timeout_at(until, wait).await.is_err() {
                tracing::warn!(
                    seconds = FAIL_DRAIN.as_secs(),
                    "NBD connections of an instant recovery did not end in time: cut"
                );
            }
        }
    }

    fn instant_answer(
        &self,
        r: &InstantRecord,
        state: InstantState,
        error: Option<String>,
    ) -> InstantRecovery {
        InstantRecovery {
            instant_id: r.instant_id.clone(),
            backup_id: r.backup_id.clone(),
            vm_name: r.vm_name.clone(),
            created_at: r.created_at,
            state,
            error,
            disks: r
                .disks
                .iter()
                .map(|d| InstantDisk {
                    disk_key: d.disk_key,
                    export_name: d.export_name.clone(),
                    nbd_uri: self.uri(&d.export_name),
                    overlay: d.overlay.clone(),
                    backing_file: d.backing_file.clone(),
                })
                .collect(),
        }
    }
}

/// `disk-<key>.qcow2`: an overlay's file name in its instant's folder.
fn overlay_name(key: DiskKey) -> String {
    format!("disk-{key}.qcow2")
}

/// The backing name an overlay in `DATA/instant/<id>/` stores for the repository's `file`.
fn backing_name(file: &str) -> String {
    format!("../../{REPOSITORY_DIR}/{file}")
}

/// Removes an instant's folder and fsyncs its parent; failures are logged.
fn remove_folder(dir: &Path, parent: &Path) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(folder = %dir.display(), error = %e, "cannot remove an instant recovery folder");
        }
    }
    if let Err(e) = sync_dir(parent) {
        tracing::warn!(error = %sendense_io::error_chain(&e), "cannot fsync the instant folder");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backing_name_climbs_from_the_instant_folder_into_the_repository() {
        let name = backing_name("web01/disk-2000/backup-web01-20260101T000000-abcdef.qcow2");

        assert_eq!(
            name,
            "../../repository/web01/disk-2000/backup-web01-20260101T000000-abcdef.qcow2"
        );
    }
}
