//! The object tier's tables (DESIGN.md "Object tier"): targets (S3 buckets, secret key sealed
//! by the hub) and the copies of points to them, with what a resumable upload needs.
//!
//! | table | key | value |
//! |---|---|---|
//! | `targets` | target name | JSON [`TargetRecord`] |
//! | `copies` | `<backup_id>/<target>` | JSON [`CopyRecord`] |
//!
//! Created at open when missing, like every table here (a file written before simply lacks
//! them: no new schema version; older builds ignore them). A copy record is written when the
//! copy is queued, then after every part the hub uploads (upload id, each part's entity tag):
//! a hub killed mid-copy finds in it where to continue. Backup ids and target names never
//! contain `/`, so the key splits unambiguously and a point's copies are one key range.

use redb::{Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use sendense_types::{
    BackupCopy, BackupId, BackupStatus, CopyState, DiskSpec, Target, TargetName, Timestamp, Vm,
};
use serde::{Deserialize, Serialize};

use crate::catalog::{
    Catalog, StoredBackup, decode, encode, expect_status, get_id, get_json, load_backup,
};
use crate::error::CatalogError;
use crate::record::BackupRecord;

const TARGETS: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("targets");
const COPIES: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("copies");

type Result<T, E = CatalogError> = std::result::Result<T, E>;

/// A target as stored: its secret key sealed by the hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetRecord {
    /// Its name.
    pub name: TargetName,
    /// The S3 endpoint URL.
    pub endpoint: String,
    /// The bucket.
    pub bucket: String,
    /// The region.
    pub region: String,
    /// The access key id.
    pub access_key: String,
    /// The secret key, sealed by the hub (nonce, ciphertext and tag).
    pub sealed_secret: Vec<u8>,
    /// Days each object stays locked; 0: no lock.
    pub object_lock_days: u32,
    /// When it was stored.
    pub created_at: Timestamp,
}

impl TargetRecord {
    /// The API form, without the secret.
    #[must_use]
    pub fn to_api(&self) -> Target {
        Target {
            name: self.name.clone(),
            endpoint: self.endpoint.clone(),
            bucket: self.bucket.clone(),
            region: self.region.clone(),
            access_key: self.access_key.clone(),
            object_lock_days: self.object_lock_days,
            created_at: self.created_at,
        }
    }
}

/// One object of a copy uploaded in parts: enough to continue it after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    /// The object's full name in the bucket.
    pub object: String,
    /// The sealed object's salt (hex), so a resumed upload seals the same bytes.
    pub salt: String,
    /// The plaintext's length when the upload began (a changed file restarts the upload).
    pub plain_len: u64,
    /// The store's multipart upload id; `None` once completed.
    pub upload_id: Option<String>,
    /// Entity tags of the parts uploaded so far, in order.
    pub parts: Vec<String>,
    /// The object is complete in the bucket.
    pub done: bool,
}

/// A copy of a point to a target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyRecord {
    /// The point.
    pub backup_id: BackupId,
    /// The target.
    pub target: TargetName,
    /// Where it is.
    pub state: CopyState,
    /// When it entered that state.
    pub at: Timestamp,
    /// Why the last attempt failed.
    pub error: Option<String>,
    /// Objects uploaded in parts, finished or not.
    #[serde(default)]
    pub uploads: Vec<UploadRecord>,
}

impl CopyRecord {
    /// A new queued copy.
    #[must_use]
    pub fn queued(backup_id: BackupId, target: TargetName, at: Timestamp) -> Self {
        Self {
            backup_id,
            target,
            state: CopyState::Queued,
            at,
            error: None,
            uploads: Vec::new(),
        }
    }

    /// The API form.
    #[must_use]
    pub fn to_api(&self) -> BackupCopy {
        BackupCopy {
            target: self.target.clone(),
            state: self.state,
            at: self.at,
            error: self.error.clone(),
        }
    }
}

impl Catalog {
    /// Stores a target (replacing one of that name).
    ///
    /// # Errors
    /// Storage errors.
    pub fn put_target(&self, record: &TargetRecord) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(TARGETS)?;
            table.insert(record.name.as_str(), encode(record).as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// One target.
    ///
    /// # Errors
    /// [`CatalogError::TargetNotFound`]; storage or corruption errors.
    pub fn target(&self, name: &TargetName) -> Result<TargetRecord> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TARGETS)?;
        get_json(&table, "targets", name.as_str())?
            .ok_or_else(|| CatalogError::TargetNotFound { name: name.clone() })
    }

    /// Every target, by name.
    ///
    /// # Errors
    /// Storage or corruption errors.
    pub fn targets(&self) -> Result<Vec<TargetRecord>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TARGETS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            out.push(decode("targets", key.value(), value.value())?);
        }
        Ok(out)
    }

    /// The copy of `backup_id` to `target`, if any.
    ///
    /// # Errors
    /// Storage or corruption errors.
    pub fn copy_record(
        &self,
        backup_id: &BackupId,
        target: &TargetName,
    ) -> Result<Option<CopyRecord>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(COPIES)?;
        get_json(&table, "copies", &copy_key(backup_id, target))
    }

    /// Every copy of `backup_id`, by target name.
    ///
    /// # Errors
    /// Storage or corruption errors.
    pub fn copies_of(&self, backup_id: &BackupId) -> Result<Vec<CopyRecord>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(COPIES)?;
        let start = format!("{backup_id}/");
        let mut out = Vec::new();
        for entry in table.range(start.as_str()..)? {
            let (key, value) = entry?;
            if !key.value().starts_with(&start) {
                break;
            }
            out.push(decode("copies", key.value(), value.value())?);
        }
        Ok(out)
    }

    /// Every copy record, by point then target, including those of points removed since
    /// (the object tier deletes their objects, then the record).
    ///
    /// # Errors
    /// Storage or corruption errors.
    pub fn copies(&self) -> Result<Vec<CopyRecord>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(COPIES)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            out.push(decode("copies", key.value(), value.value())?);
        }
        Ok(out)
    }

    /// Forgets the copy of `backup_id` to `target` (its objects are gone from the bucket);
    /// answers whether there was one.
    ///
    /// # Errors
    /// Storage errors.
    pub fn delete_copy(&self, backup_id: &BackupId, target: &TargetName) -> Result<bool> {
        let txn = self.db.begin_write()?;
        let existed = {
            let mut table = txn.open_table(COPIES)?;
            table
                .remove(copy_key(backup_id, target).as_str())?
                .is_some()
        };
        txn.commit()?;
        Ok(existed)
    }

    /// Changes (or creates, `None` in `f`) the copy of `backup_id` to `target` in one
    /// transaction; answers the record as stored. The target must exist.
    ///
    /// # Errors
    /// [`CatalogError::TargetNotFound`]; what `f` answers; storage errors.
    pub fn update_copy<E: From<CatalogError>>(
        &self,
        backup_id: &BackupId,
        target: &TargetName,
        f: impl FnOnce(Option<CopyRecord>) -> std::result::Result<CopyRecord, E>,
    ) -> std::result::Result<CopyRecord, E> {
        let key = copy_key(backup_id, target);
        let txn = self.db.begin_write().map_err(CatalogError::from)?;
        let record = {
            let targets = txn.open_table(TARGETS).map_err(CatalogError::from)?;
            if targets
                .get(target.as_str())
                .map_err(CatalogError::from)?
                .is_none()
            {
                return Err(CatalogError::TargetNotFound {
                    name: target.clone(),
                }
                .into());
            }
            let mut table = txn.open_table(COPIES).map_err(CatalogError::from)?;
            let old: Option<CopyRecord> = get_json(&table, "copies", &key)?;
            let record = f(old)?;
            table
                .insert(key.as_str(), encode(&record).as_slice())
                .map_err(CatalogError::from)?;
            record
        };
        txn.commit().map_err(CatalogError::from)?;
        Ok(record)
    }
}

impl Catalog {
    /// Marks a completed point's files as living only in a bucket (`true`), or back in the
    /// repository (`false`); answers the record.
    ///
    /// # Errors
    /// [`CatalogError::BackupNotFound`]; [`CatalogError::WrongStatus`] unless completed.
    pub fn set_evicted(&self, id: &BackupId, evicted: bool) -> Result<BackupRecord> {
        self.write(Durability::Immediate, |t| {
            let mut stored =
                load_backup(&t.backups, id)?.ok_or_else(|| CatalogError::BackupNotFound {
                    backup_id: id.clone(),
                })?;
            expect_status(&stored.record, &[BackupStatus::Completed], "completed")?;
            stored.record.evicted = evicted;
            t.backups.insert(id.as_str(), encode(&stored).as_slice())?;
            Ok(stored.record)
        })
    }

    /// Records a completed point read from a bucket's manifest (a hub rebuilding its catalog
    /// from a target), as evicted: its files are fetched when it is restored. Registers its
    /// VM when unknown; the point becomes the VM's chain head when it is the newest completed
    /// one. A parent must be recorded first. Answers `false` (and changes nothing) when a
    /// point of that id exists.
    ///
    /// # Errors
    /// [`CatalogError::InvalidRecord`] unless completed, or when its parent is unknown;
    /// storage errors.
    pub fn import_backup(&self, record: &BackupRecord) -> Result<bool> {
        self.write(Durability::Immediate, |t| {
            let id = record.backup_id.as_str();
            if t.backups.get(id)?.is_some() {
                return Ok(false);
            }
            if record.status != BackupStatus::Completed {
                return Err(CatalogError::InvalidRecord {
                    backup_id: record.backup_id.clone(),
                    reason: "only completed points are imported",
                });
            }
            if let Some(parent) = &record.parent_backup_id
                && load_backup(&t.backups, parent)?.is_none()
            {
                return Err(CatalogError::InvalidRecord {
                    backup_id: record.backup_id.clone(),
                    reason: "its parent must be imported first",
                });
            }
            let vm_name = record.vm_name.as_str();
            if get_json::<Vm>(&t.vms, "vms", vm_name)?.is_none() {
                let now = Timestamp::now();
                let vm = Vm {
                    name: record.vm_name.clone(),
                    disks: record
                        .disks
                        .iter()
                        .map(|d| DiskSpec {
                            key: d.disk_key,
                            capacity_bytes: d.capacity_bytes,
                        })
                        .collect(),
                    created_at: now,
                    updated_at: now,
                };
                t.vms.insert(vm_name, encode(&vm).as_slice())?;
            }
            let seq = t.take_backup_seq(&record.backup_id)?;
            let mut imported = record.clone();
            imported.evicted = true;
            let newer = match get_id(&t.heads, "heads", vm_name)? {
                None => true,
                Some(head) => load_backup(&t.backups, &head)?
                    .is_none_or(|h| h.record.created_at < record.created_at),
            };
            t.backups.insert(
                id,
                encode(&StoredBackup {
                    seq,
                    record: imported,
                })
                .as_slice(),
            )?;
            t.vm_backups.insert((vm_name, seq), id)?;
            t.order.insert(seq, id)?;
            if newer {
                t.heads.insert(vm_name, id)?;
            }
            Ok(true)
        })
    }
}

fn copy_key(backup_id: &BackupId, target: &TargetName) -> String {
    format!("{backup_id}/{target}")
}

/// Creates the tables of this module (at open).
pub(crate) fn create_tables(txn: &WriteTransaction) -> Result<()> {
    txn.open_table(TARGETS)?;
    txn.open_table(COPIES)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(name: &str) -> TargetRecord {
        TargetRecord {
            name: name.parse().unwrap(),
            endpoint: "http://127.0.0.1:3900".into(),
            bucket: "b1".into(),
            region: "garage".into(),
            access_key: "GK".into(),
            sealed_secret: vec![1, 2, 3],
            object_lock_days: 0,
            created_at: Timestamp::now(),
        }
    }

    #[test]
    fn copies_of_lists_only_that_points_copies() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open_in(dir.path()).unwrap();
        catalog.put_target(&target("t1")).unwrap();
        catalog.put_target(&target("t2")).unwrap();
        let a: BackupId = "backup-vm-20261207T101010-aaaaaa".parse().unwrap();
        let b: BackupId = "backup-vm-20261207T101010-aaaaab".parse().unwrap();
        for (id, t) in [(&a, "t1"), (&a, "t2"), (&b, "t1")] {
            let t: TargetName = t.parse().unwrap();
            catalog
                .update_copy::<CatalogError>(id, &t, |_| {
                    Ok(CopyRecord::queued(id.clone(), t.clone(), Timestamp::now()))
                })
                .unwrap();
        }
        let names: Vec<String> = catalog
            .copies_of(&a)
            .unwrap()
            .iter()
            .map(|c| c.target.to_string())
            .collect();
        assert_eq!(names, ["t1", "t2"]);
    }

    #[test]
    fn copies_lists_every_record_and_delete_copy_forgets_one() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open_in(dir.path()).unwrap();
        catalog.put_target(&target("t1")).unwrap();
        let t: TargetName = "t1".parse().unwrap();
        let a: BackupId = "backup-vm-20261207T101010-aaaaaa".parse().unwrap();
        let b: BackupId = "backup-vm-20261207T101010-aaaaab".parse().unwrap();
        for id in [&a, &b] {
            catalog
                .update_copy::<CatalogError>(id, &t, |_| {
                    Ok(CopyRecord::queued(id.clone(), t.clone(), Timestamp::now()))
                })
                .unwrap();
        }

        assert!(catalog.delete_copy(&a, &t).unwrap());
        assert!(!catalog.delete_copy(&a, &t).unwrap());

        let left: Vec<BackupId> = catalog
            .copies()
            .unwrap()
            .into_iter()
            .map(|c| c.backup_id)
            .collect();
        assert_eq!(left, [b]);
    }

    #[test]
    fn update_copy_unknown_target_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open_in(dir.path()).unwrap();
        let a: BackupId = "backup-vm-20261207T101010-aaaaaa".parse().unwrap();
        let t: TargetName = "nope".parse().unwrap();
        let err = catalog
            .update_copy::<CatalogError>(&a, &t, |_| {
                Ok(CopyRecord::queued(a.clone(), t.clone(), Timestamp::now()))
            })
            .unwrap_err();
        assert!(matches!(err, CatalogError::TargetNotFound { .. }));
    }
}
