//! Points that live only in a bucket: evicting a point's local files once a verified copy
//! exists, fetching them back (with every evicted point it reads through) before a restore,
//! and importing a bucket's points into a new hub's catalog. See [`super`].

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use ring::digest::{Context, SHA256};
use sendense_catalog::{BackupRecord, CopyRecord};
use sendense_tier::seal::hex;
use sendense_tier::{FileKind, layout};
use sendense_types::{
    BackupId, BackupQuery, BackupStatus, CopyState, TargetName, Timestamp, VmName,
};

use super::copy::{read_manifest, read_object};
use super::{BUCKET_PREFIX, Tier};
use crate::error::HubError;

impl Tier {
    /// `POST /api/v1/backups/{id}/evict`: removes a completed point's files from the
    /// repository once a target holds a verified copy of it; answers the record. The point
    /// is marked evicted before its files go, so a crash in between never looks like lost
    /// files. Evicting an evicted point does nothing.
    ///
    /// # Errors
    /// Unknown or not completed point; [`HubError::NoVerifiedCopy`]; catalog or I/O errors.
    pub fn evict(&self, backup_id: &BackupId) -> Result<BackupRecord, HubError> {
        let record = self.completed(backup_id)?;
        if record.evicted {
            return Ok(record);
        }
        let verified = self
            .catalog
            .copies_of(backup_id)?
            .iter()
            .any(|c| c.state == CopyState::Verified);
        if !verified {
            return Err(HubError::NoVerifiedCopy {
                backup_id: backup_id.clone(),
            });
        }
        let record = self.catalog.set_evicted(backup_id, true)?;
        for file in record.files() {
            let path = self.repo.join(&file);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(HubError::io(&path, e)),
            }
        }
        tracing::info!(%backup_id, "point evicted: its files live only in the bucket");
        Ok(record)
    }

    /// A policy's `keep_local_last`: evicts every completed point of `vm` but its `keep`
    /// newest that has a verified copy and local files; answers the points evicted.
    ///
    /// # Errors
    /// Catalog or I/O errors (points evicted before stay evicted).
    pub fn keep_local_last(&self, vm: &VmName, keep: u32) -> Result<Vec<BackupId>, HubError> {
        let mut points = self.catalog.backups(&BackupQuery {
            vm_name: Some(vm.clone()),
            status: Some(BackupStatus::Completed),
        })?;
        points.sort_by(|a, b| (b.created_at, &b.backup_id).cmp(&(a.created_at, &a.backup_id)));
        let mut evicted = Vec::new();
        for point in points
            .iter()
            .skip(usize::try_from(keep).unwrap_or(usize::MAX))
        {
            if point.evicted {
                continue;
            }
            let verified = self
                .catalog
                .copies_of(&point.backup_id)?
                .iter()
                .any(|c| c.state == CopyState::Verified);
            if verified {
                self.evict(&point.backup_id)?;
                evicted.push(point.backup_id.clone());
            }
        }
        Ok(evicted)
    }

    /// Brings back the files of `backup_id` and of every evicted point it reads through, from
    /// a target holding a verified copy of each (downloaded chunk by chunk, every chunk
    /// authenticated, each file checked against its manifest SHA-256, written under a
    /// temporary name, fsynced and renamed into place); answers the points fetched. A point
    /// whose files are all local needs nothing. Runs on a blocking thread inside the runtime.
    ///
    /// # Errors
    /// Unknown point; no target with a verified copy of an evicted point; the store; a
    /// mismatch; I/O.
    pub fn fetch(&self, backup_id: &BackupId) -> Result<Vec<BackupId>, HubError> {
        // One fetch at a time: two of one point would write the same temporary files. The
        // chain is read once the lock is held, so a point another fetch brought back is seen.
        let _one = self
            .fetching
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut chain = Vec::new();
        let mut next = Some(backup_id.clone());
        while let Some(id) = next {
            let record = self
                .catalog
                .backup(&id)?
                .ok_or_else(|| HubError::BackupNotFound {
                    backup_id: id.clone(),
                })?;
            next = record.parent_backup_id.clone();
            chain.push(record);
        }
        let mut fetched = Vec::new();
        for record in chain.iter().rev().filter(|r| r.evicted) {
            self.fetch_point(record)?;
            fetched.push(record.backup_id.clone());
        }
        Ok(fetched)
    }

    fn fetch_point(&self, record: &BackupRecord) -> Result<(), HubError> {
        let id = &record.backup_id;
        let target = self
            .catalog
            .copies_of(id)?
            .into_iter()
            .find(|c| c.state == CopyState::Verified)
            .map(|c| c.target)
            .ok_or_else(|| HubError::NoVerifiedCopy {
                backup_id: id.clone(),
            })?;
        let bucket = self.bucket(&target)?;
        let key = self.key()?;
        let folder = layout::point_folder(BUCKET_PREFIX, &record.vm_name, id);
        let handle = tokio::runtime::Handle::current();
        let manifest = handle.block_on(read_manifest(
            &bucket,
            &key,
            &format!("{folder}/{}", layout::MANIFEST_OBJECT),
        ))?;
        if &manifest.backup_id != id {
            return Err(HubError::CopyMismatch {
                backup_id: id.clone(),
                target,
                object: layout::MANIFEST_OBJECT.to_owned(),
            });
        }
        for disk in &record.disks {
            let wanted = [
                (FileKind::Image, disk.file.clone(), true),
                (
                    FileKind::Digests,
                    record.digest_file(disk.disk_key),
                    disk.digests,
                ),
            ];
            for (kind, rel, needed) in wanted {
                if !needed {
                    continue;
                }
                let file = manifest.file(kind, Some(disk.disk_key)).ok_or_else(|| {
                    HubError::CopyMismatch {
                        backup_id: id.clone(),
                        target: target.clone(),
                        object: format!("{kind:?} of disk {}", disk.disk_key),
                    }
                })?;
                let name = format!("{folder}/{}", file.object);
                let path = self.repo.join(&rel);
                if let Some(dir) = path.parent() {
                    // A new hub (after an import) has no folder for the VM's disks yet.
                    use std::os::unix::fs::DirBuilderExt as _;
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(dir)
                        .map_err(|e| HubError::io(dir, e))?;
                }
                let tmp = part_path(&path);
                let written = handle.block_on(download(&bucket, &key, &name, file.size, &tmp));
                let sha = match written {
                    Ok(sha) => sha,
                    Err(e) => {
                        let _ = std::fs::remove_file(&tmp);
                        return Err(e);
                    }
                };
                if sha != file.sha256 {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(HubError::CopyMismatch {
                        backup_id: id.clone(),
                        target: target.clone(),
                        object: name,
                    });
                }
                std::fs::rename(&tmp, &path).map_err(|e| HubError::io(&path, e))?;
                if let Some(dir) = path.parent() {
                    File::open(dir)
                        .and_then(|d| d.sync_all())
                        .map_err(|e| HubError::io(dir, e))?;
                }
            }
        }
        self.catalog.set_evicted(id, false)?;
        tracing::info!(backup_id = %id, %target, "point fetched back from the bucket");
        Ok(())
    }

    /// `POST /api/v1/targets/{name}/import`: records every point the target's manifests
    /// describe that this hub does not know (parents first), as evicted points with a
    /// verified copy on that target; answers the points recorded. For a new hub rebuilding
    /// its catalog from a bucket (its key installed with `ctl target import-key`).
    ///
    /// # Errors
    /// Unknown target; key missing; the store; a manifest that does not open or parse, or
    /// a point whose parent is in neither the bucket nor the catalog.
    pub fn import(&self, target: &TargetName) -> Result<Vec<BackupId>, HubError> {
        let bucket = self.bucket(target)?;
        let key = self.key()?;
        let handle = tokio::runtime::Handle::current();
        let names = handle.block_on(bucket.list(BUCKET_PREFIX))?;
        let mut pending = Vec::new();
        for name in names.iter().filter(|n| layout::is_manifest(n)) {
            let manifest = handle.block_on(read_manifest(&bucket, &key, name))?;
            let folder =
                layout::point_folder(BUCKET_PREFIX, &manifest.vm_name, &manifest.backup_id);
            if name != &format!("{folder}/{}", layout::MANIFEST_OBJECT) {
                return Err(HubError::CopyMismatch {
                    backup_id: manifest.backup_id,
                    target: target.clone(),
                    object: name.clone(),
                });
            }
            let record: BackupRecord =
                serde_json::from_value(manifest.backup.clone()).map_err(|_| {
                    HubError::CopyMismatch {
                        backup_id: manifest.backup_id.clone(),
                        target: target.clone(),
                        object: name.clone(),
                    }
                })?;
            if record.backup_id != manifest.backup_id
                || record.vm_name != manifest.vm_name
                || record.parent_backup_id != manifest.parent_backup_id
            {
                return Err(HubError::CopyMismatch {
                    backup_id: manifest.backup_id,
                    target: target.clone(),
                    object: name.clone(),
                });
            }
            pending.push(record);
        }
        // Parents first: a point is recorded once its parent is (points of one second have
        // no order by time, so the chain's links decide), in rounds until none is left.
        pending.sort_by(|a, b| (a.created_at, &a.backup_id).cmp(&(b.created_at, &b.backup_id)));
        let mut imported = Vec::new();
        while !pending.is_empty() {
            let before = pending.len();
            let mut waiting = Vec::new();
            for record in pending {
                let parent_known = match &record.parent_backup_id {
                    None => true,
                    Some(parent) => self.catalog.backup(parent)?.is_some(),
                };
                if !parent_known {
                    waiting.push(record);
                    continue;
                }
                if self.catalog.import_backup(&record)? {
                    self.catalog
                        .update_copy::<HubError>(&record.backup_id, target, |_| {
                            Ok(CopyRecord {
                                state: CopyState::Verified,
                                ..CopyRecord::queued(
                                    record.backup_id.clone(),
                                    target.clone(),
                                    Timestamp::now(),
                                )
                            })
                        })?;
                    tracing::info!(backup_id = %record.backup_id, %target, "point imported from the bucket");
                    imported.push(record.backup_id);
                }
            }
            if waiting.len() == before {
                // No parent of the rest is in the bucket or the catalog: the first one's
                // import names the problem.
                if let Some(orphan) = waiting.first() {
                    self.catalog.import_backup(orphan)?;
                }
                break;
            }
            pending = waiting;
        }
        Ok(imported)
    }
}

/// The temporary name of a file being fetched (`.<name>.fetch.part`, which the hub's start
/// removes when a crash left it).
fn part_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.fetch.part"))
}

/// Downloads and opens the sealed object `name` into `tmp` (0600, fsynced); answers the
/// plaintext's SHA-256.
async fn download(
    bucket: &super::store::Bucket,
    key: &sendense_tier::MasterKey,
    name: &str,
    size: u64,
    tmp: &Path,
) -> Result<String, HubError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(tmp)
        .map_err(|e| HubError::io(tmp, e))?;
    let mut sha = Context::new(&SHA256);
    read_object(bucket, key, name, size, &mut |plain| {
        sha.update(plain);
        out.write_all(plain).map_err(|e| HubError::io(tmp, e))
    })
    .await?;
    out.sync_all().map_err(|e| HubError::io(tmp, e))?;
    Ok(hex(sha.finish().as_ref()))
}
