//! [`Catalog`]: the typed API over the redb database `DATA/catalog.redb`.
//!
//! Tables (frozen for [`SCHEMA_VERSION`] 3; `meta` stays `&str -> u64` in every version, so any
//! build can read the version and refuse what it does not know; version 1 lacked `deletions`,
//! version 2 the agent and job tables of [`crate::jobs`] (and `meta`'s `"next_job_seq"`); both
//! are upgraded in place by adding what they lack, empty):
//!
//! | table | key | value |
//! |---|---|---|
//! | `meta` | `"schema_version"`, `"next_seq"` | `u64` |
//! | `vms` | VM name | JSON [`Vm`] |
//! | `backups` | backup id | JSON `{seq, record: BackupRecord}` |
//! | `vm_backups` | (VM name, seq) | backup id: a VM's backups in creation order |
//! | `backup_order` | seq | backup id: all backups in creation order |
//! | `active` | VM name | id of its one pending or running backup |
//! | `heads` | VM name | id of its latest completed backup: the chain head |
//! | `credentials` | credential name | JSON [`CredentialRecord`] |
//! | `deletions` | backup id | JSON list of the deleted backup's files: removed from the catalog, files not yet removed |
//!
//! A credential's `trust` (how the hub checks vCenter's certificate, issue #11) is an optional
//! JSON field of its record, so adding it needs no new schema version: a record written
//! before has none and decodes with `trust: None`, and the hub refuses to log in with such a
//! credential until it is created again with `ca_pem` or `insecure` (it never guesses one,
//! neither "insecure" nor some CA). Older builds reading a newer record ignore the field.
//!
//! Invariants, each kept by doing every mutation in one write transaction (redb serializes
//! writers, so check-then-write is atomic, and a failed or interrupted transaction leaves no
//! trace):
//! - a VM has at most one pending or running backup (`active`);
//! - an incremental's parent is the VM's head when the incremental is created, and stays
//!   completed and present until it completes or fails (deletion refuses dependants);
//! - the head only moves in [`Catalog::complete_backup`] (forward) and
//!   [`Catalog::delete_backup`] (back to the VM's latest remaining completed backup: the
//!   deleted head's parent, or the previous chain's last point when a full is deleted), so a
//!   backup is either completed with the chain advanced, or neither;
//! - a deleted backup's files are listed in `deletions` in the same transaction that removes
//!   it, until the hub has removed them ([`Catalog::finish_deletion`]): a crash in between
//!   leaves a journal entry the next start finishes, never an unknown file.
//!
//! Every commit is durable (fsync): a crash never loses a status or a chain link. Live
//! progress is not kept here; the hub reads it from the NBD exports while a backup runs.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;

use redb::{
    Database, Durability, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable, Table,
    TableDefinition, WriteTransaction,
};
use sendense_types::api::MAX_REASON_LEN;
use sendense_types::{
    BackupId, BackupQuery, BackupStatus, BackupType, CredentialName, CredentialRequest,
    RegisterVmRequest, Timestamp, Verification, Vm, VmName,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use crate::error::CatalogError;
use crate::record::{BackupRecord, CredentialRecord, DiskCompletion};

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: u64 = 3;
/// The oldest schema version this build upgrades in place.
const OLDEST_UPGRADABLE: u64 = 1;
/// The catalog's file name inside the hub's data folder.
pub const FILE_NAME: &str = "catalog.redb";

const SCHEMA_KEY: &str = "schema_version";
pub(crate) const NEXT_SEQ_KEY: &str = "next_seq";

pub(crate) const META: TableDefinition<'static, &str, u64> = TableDefinition::new("meta");
const VMS: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("vms");
pub(crate) const BACKUPS: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("backups");
const VM_BACKUPS: TableDefinition<'static, (&str, u64), &str> = TableDefinition::new("vm_backups");
const BACKUP_ORDER: TableDefinition<'static, u64, &str> = TableDefinition::new("backup_order");
const ACTIVE: TableDefinition<'static, &str, &str> = TableDefinition::new("active");
const HEADS: TableDefinition<'static, &str, &str> = TableDefinition::new("heads");
const CREDENTIALS: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("credentials");
const DELETIONS: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("deletions");

type Result<T, E = CatalogError> = std::result::Result<T, E>;

/// The embedded catalog. `Send + Sync`: share one per data folder (e.g. in an `Arc`); redb
/// locks the file, so a second `open` of the same file fails while this one lives.
#[derive(Debug)]
pub struct Catalog {
    pub(crate) db: Database,
}

/// A backup as stored, with its creation sequence number (the order key).
#[derive(Serialize, Deserialize)]
pub(crate) struct StoredBackup {
    pub(crate) seq: u64,
    pub(crate) record: BackupRecord,
}

impl Catalog {
    /// Opens the catalog file at `path` (conventionally `DATA/`[`FILE_NAME`]), creating it and
    /// its tables if needed.
    ///
    /// # Errors
    /// [`CatalogError::SchemaVersion`] if the file has another schema version;
    /// [`CatalogError::Storage`] if redb cannot open it (not a redb file, locked, I/O).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let db = Database::create(path.as_ref())?;
        let txn = db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let found = meta.get(SCHEMA_KEY)?.map(|v| v.value());
            match found {
                None => {
                    meta.insert(SCHEMA_KEY, SCHEMA_VERSION)?;
                    meta.insert(NEXT_SEQ_KEY, 0)?;
                    info!(path = %path.as_ref().display(), version = SCHEMA_VERSION, "created catalog");
                }
                Some(SCHEMA_VERSION) => {}
                Some(found @ OLDEST_UPGRADABLE..SCHEMA_VERSION) => {
                    // Every later table is created by `WriteTables::open` below.
                    meta.insert(SCHEMA_KEY, SCHEMA_VERSION)?;
                    info!(path = %path.as_ref().display(), from = found, to = SCHEMA_VERSION, "upgraded catalog schema");
                }
                Some(found) => {
                    return Err(CatalogError::SchemaVersion {
                        found,
                        supported: SCHEMA_VERSION,
                    });
                }
            }
        }
        WriteTables::open(&txn)?;
        crate::jobs::create_tables(&txn)?;
        crate::policies::create_tables(&txn)?;
        crate::maintenance::create_tables(&txn)?;
        crate::instant::create_tables(&txn)?;
        crate::users::create_tables(&txn)?;
        crate::tier::create_tables(&txn)?;
        txn.commit()?;
        Ok(Self { db })
    }

    /// Opens (or creates) `data_dir/`[`FILE_NAME`].
    ///
    /// # Errors
    /// As [`Catalog::open`].
    pub fn open_in(data_dir: impl AsRef<Path>) -> Result<Self> {
        Self::open(data_dir.as_ref().join(FILE_NAME))
    }

    /// Registers a VM or replaces its disk list, answering the stored VM (disks ordered by
    /// key; `created_at` kept from the first registration).
    ///
    /// # Errors
    /// [`CatalogError::VmBusy`] if the disks change while a backup of the VM is in progress.
    pub fn upsert_vm(&self, spec: &RegisterVmRequest, now: Timestamp) -> Result<Vm> {
        let mut disks = spec.disks().to_vec();
        disks.sort_by_key(|d| d.key);
        self.write(Durability::Immediate, |t| {
            let name = spec.name();
            let existing: Option<Vm> = get_json(&t.vms, "vms", name.as_str())?;
            if let Some(existing) = &existing
                && existing.disks != disks
                && let Some(backup_id) = get_id(&t.active, "active", name.as_str())?
            {
                return Err(CatalogError::VmBusy {
                    vm: name.clone(),
                    backup_id,
                });
            }
            let vm = Vm {
                name: name.clone(),
                disks,
                created_at: existing.map_or(now, |e| e.created_at),
                updated_at: now,
            };
            t.vms.insert(name.as_str(), encode(&vm).as_slice())?;
            Ok(vm)
        })
    }

    /// The VM, if registered.
    ///
    /// # Errors
    /// [`CatalogError::Storage`] or a corruption error.
    pub fn vm(&self, name: &VmName) -> Result<Option<Vm>> {
        self.read(|t| get_json(&t.vms, "vms", name.as_str()))
    }

    /// All VMs, ordered by name.
    ///
    /// # Errors
    /// [`CatalogError::Storage`] or a corruption error.
    pub fn vms(&self) -> Result<Vec<Vm>> {
        self.read(|t| {
            t.vms
                .iter()?
                .map(|entry| {
                    let (key, value) = entry?;
                    decode("vms", key.value(), value.value())
                })
                .collect()
        })
    }

    /// Records a new backup (see [`BackupRecord::new`]).
    ///
    /// The record must be `Pending` or `Running`, carry no completion or failure fields, name
    /// each disk once with the VM's capacity and a relative file, and be `Full` without a parent
    /// or `Incremental` with one; an incremental's parent must be the VM's latest completed
    /// backup and each disk's `parent_change_id` must be the parent's `change_id` of that disk.
    ///
    /// # Errors
    /// [`CatalogError::BackupInProgress`] if the VM already has a pending or running backup;
    /// [`CatalogError::NoCompletedParent`] / [`CatalogError::ParentNotLatest`] for an
    /// incremental without the right parent; [`CatalogError::VmNotFound`];
    /// [`CatalogError::BackupExists`]; `Invalid`-kind errors for an inconsistent record.
    pub fn create_backup(&self, record: &BackupRecord) -> Result<()> {
        check_new_record(record)?;
        self.write(Durability::Immediate, |t| {
            let vm_name = record.vm_name.as_str();
            let vm: Vm =
                get_json(&t.vms, "vms", vm_name)?.ok_or_else(|| CatalogError::VmNotFound {
                    vm: record.vm_name.clone(),
                })?;
            for disk in &record.disks {
                let matches = vm
                    .disks
                    .iter()
                    .any(|d| d.key == disk.disk_key && d.capacity_bytes == disk.capacity_bytes);
                if !matches {
                    return Err(CatalogError::VmDiskMismatch {
                        vm: vm.name,
                        disk_key: disk.disk_key,
                    });
                }
            }
            if t.backups.get(record.backup_id.as_str())?.is_some() {
                return Err(CatalogError::BackupExists {
                    backup_id: record.backup_id.clone(),
                });
            }
            if let Some(backup_id) = get_id(&t.active, "active", vm_name)? {
                return Err(CatalogError::BackupInProgress {
                    vm: vm.name,
                    backup_id,
                });
            }
            if let Some(parent_id) = &record.parent_backup_id {
                let latest = get_id(&t.heads, "heads", vm_name)?.ok_or_else(|| {
                    CatalogError::NoCompletedParent {
                        vm: vm.name.clone(),
                    }
                })?;
                if &latest != parent_id {
                    return Err(CatalogError::ParentNotLatest {
                        parent: parent_id.clone(),
                        latest,
                    });
                }
                let parent = load_backup(&t.backups, parent_id)?
                    .ok_or_else(|| CatalogError::BrokenChain {
                        backup_id: record.backup_id.clone(),
                        parent: parent_id.clone(),
                    })?
                    .record;
                for disk in &record.disks {
                    let expected = parent
                        .disk(disk.disk_key)
                        .and_then(|d| d.change_id.as_ref());
                    if disk.parent_change_id.as_ref() != expected {
                        return Err(CatalogError::InvalidRecord {
                            backup_id: record.backup_id.clone(),
                            reason: "a disk's parent_change_id is not the parent's change_id",
                        });
                    }
                }
            }
            let seq = t.take_backup_seq(&record.backup_id)?;
            let id = record.backup_id.as_str();
            let stored = StoredBackup {
                seq,
                record: record.clone(),
            };
            t.backups.insert(id, encode(&stored).as_slice())?;
            t.vm_backups.insert((vm_name, seq), id)?;
            t.order.insert(seq, id)?;
            t.active.insert(vm_name, id)?;
            debug!(backup_id = %id, "backup created");
            Ok(())
        })
    }

    /// One backup.
    ///
    /// # Errors
    /// [`CatalogError::Storage`] or a corruption error.
    pub fn backup(&self, id: &BackupId) -> Result<Option<BackupRecord>> {
        self.read(|t| Ok(load_backup(&t.backups, id)?.map(|s| s.record)))
    }

    /// Backups matching the query (VM and/or status), oldest first.
    ///
    /// # Errors
    /// [`CatalogError::Storage`] or a corruption error.
    pub fn backups(&self, query: &BackupQuery) -> Result<Vec<BackupRecord>> {
        self.read(|t| {
            let ids = match &query.vm_name {
                Some(vm) => vm_backup_ids(&t.vm_backups, vm)?,
                None => t
                    .order
                    .iter()?
                    .map(|entry| {
                        let (seq, id) = entry?;
                        parse_id("backup_order", &seq.value().to_string(), id.value())
                    })
                    .collect::<Result<Vec<_>>>()?,
            };
            let mut out = Vec::new();
            for id in ids {
                let record = require_backup(&t.backups, "backup index", &id)?;
                if query.status.is_none_or(|s| s == record.status) {
                    out.push(record);
                }
            }
            Ok(out)
        })
    }

    /// Completes a running backup and advances the VM's chain to it, in one transaction: the
    /// record's disks get their change ids and byte counts, the status becomes `Completed`, the
    /// VM's in-progress slot is freed and its head becomes this backup. Answers the record.
    ///
    /// # Errors
    /// [`CatalogError::WrongStatus`] unless running; [`CatalogError::UnknownDisk`],
    /// [`CatalogError::MissingDisk`] or [`CatalogError::DuplicateDisk`] unless `disks` names
    /// each of the backup's disks exactly once; [`CatalogError::ParentNotLatest`] if the chain
    /// moved (cannot happen through this API).
    pub fn complete_backup(
        &self,
        id: &BackupId,
        disks: &[DiskCompletion],
        completed_at: Timestamp,
    ) -> Result<BackupRecord> {
        self.update_backup(Durability::Immediate, id, |t, stored| {
            let record = &mut stored.record;
            expect_status(record, &[BackupStatus::Running], "running")?;
            let mut seen = BTreeSet::new();
            for done in disks {
                if !seen.insert(done.disk_key) {
                    return Err(CatalogError::DuplicateDisk {
                        disk_key: done.disk_key,
                    });
                }
                let disk = record
                    .disks
                    .iter_mut()
                    .find(|d| d.disk_key == done.disk_key)
                    .ok_or_else(|| CatalogError::UnknownDisk {
                        backup_id: id.clone(),
                        disk_key: done.disk_key,
                    })?;
                disk.change_id.clone_from(&done.change_id);
                disk.bytes_written = done.bytes_written;
                disk.digests = done.digests;
            }
            if let Some(missing) = record.disks.iter().find(|d| !seen.contains(&d.disk_key)) {
                return Err(CatalogError::MissingDisk {
                    backup_id: id.clone(),
                    disk_key: missing.disk_key,
                });
            }
            let vm = record.vm_name.as_str();
            let head = get_id(&t.heads, "heads", vm)?;
            if let Some(parent) = &record.parent_backup_id
                && head.as_ref() != Some(parent)
            {
                return Err(match head {
                    Some(latest) => CatalogError::ParentNotLatest {
                        parent: parent.clone(),
                        latest,
                    },
                    None => CatalogError::NoCompletedParent {
                        vm: record.vm_name.clone(),
                    },
                });
            }
            record.status = BackupStatus::Completed;
            record.completed_at = Some(completed_at);
            fail_point::check(fail_point::COMPLETE_BEFORE_HEAD)?;
            t.active.remove(vm)?;
            t.heads.insert(vm, id.as_str())?;
            debug!(backup_id = %id, "backup completed, chain head advanced");
            Ok(())
        })
    }

    /// Marks a pending or running backup failed, freeing the VM's in-progress slot; the chain is
    /// untouched. `reason` is cut to 4096 bytes. Answers the record.
    ///
    /// # Errors
    /// [`CatalogError::BackupNotFound`]; [`CatalogError::WrongStatus`] unless pending or
    /// running.
    pub fn fail_backup(&self, id: &BackupId, reason: &str, at: Timestamp) -> Result<BackupRecord> {
        self.update_backup(Durability::Immediate, id, |t, stored| {
            let record = &mut stored.record;
            expect_active(record)?;
            record.status = BackupStatus::Failed;
            record.failed_at = Some(at);
            record.failure_reason = Some(truncate(reason, MAX_REASON_LEN).to_owned());
            t.active.remove(record.vm_name.as_str())?;
            debug!(backup_id = %id, "backup failed");
            Ok(())
        })
    }

    /// Removes a completed or failed backup that no other (non-failed) backup has as its parent,
    /// answering the removed record so the caller can delete its files; the files are listed in
    /// the deletion journal in the same transaction (see [`Catalog::deletions`]). If it was the
    /// VM's head, the head moves to the VM's latest remaining completed backup: its parent for
    /// an incremental, the previous chain's last point for a full (or no chain is left).
    ///
    /// # Errors
    /// [`CatalogError::HasDependents`] listing the backups that depend on it;
    /// [`CatalogError::WrongStatus`] if it is pending or running (fail it first);
    /// [`CatalogError::Protected`]; [`CatalogError::BackupNotFound`].
    pub fn delete_backup(&self, id: &BackupId) -> Result<BackupRecord> {
        self.write(Durability::Immediate, |t| {
            let stored =
                load_backup(&t.backups, id)?.ok_or_else(|| CatalogError::BackupNotFound {
                    backup_id: id.clone(),
                })?;
            let record = stored.record;
            if record.status.is_active() {
                return Err(CatalogError::WrongStatus {
                    backup_id: id.clone(),
                    status: record.status,
                    expected: "completed or failed",
                });
            }
            if record.protected {
                return Err(CatalogError::Protected {
                    backup_id: id.clone(),
                });
            }
            let mut dependents = Vec::new();
            for other in vm_backup_ids(&t.vm_backups, &record.vm_name)? {
                let other = require_backup(&t.backups, "vm_backups", &other)?;
                if other.parent_backup_id.as_ref() == Some(id)
                    && other.status != BackupStatus::Failed
                {
                    dependents.push(other.backup_id);
                }
            }
            if !dependents.is_empty() {
                return Err(CatalogError::HasDependents {
                    backup_id: id.clone(),
                    dependents,
                });
            }
            let vm = record.vm_name.as_str();
            t.backups.remove(id.as_str())?;
            t.vm_backups.remove((vm, stored.seq))?;
            t.order.remove(stored.seq)?;
            let files = record.files();
            t.deletions.insert(id.as_str(), encode(&files).as_slice())?;
            if get_id(&t.heads, "heads", vm)?.as_ref() == Some(id) {
                let mut latest = None;
                for other in vm_backup_ids(&t.vm_backups, &record.vm_name)? {
                    let other = require_backup(&t.backups, "vm_backups", &other)?;
                    if other.status == BackupStatus::Completed {
                        latest = Some(other.backup_id);
                    }
                }
                match latest {
                    Some(head) => t.heads.insert(vm, head.as_str())?,
                    None => t.heads.remove(vm)?,
                };
            }
            debug!(backup_id = %id, "backup deleted");
            Ok(record)
        })
    }

    /// Sets or clears a backup's `protected` flag (a protected point is never deleted nor
    /// pruned); answers the record. Only a completed backup can be protected; any backup can be
    /// unprotected.
    ///
    /// # Errors
    /// [`CatalogError::BackupNotFound`]; [`CatalogError::WrongStatus`] when protecting a
    /// backup that is not completed.
    pub fn set_protected(&self, id: &BackupId, protected: bool) -> Result<BackupRecord> {
        self.update_backup(Durability::Immediate, id, |_, stored| {
            if protected {
                expect_status(&stored.record, &[BackupStatus::Completed], "completed")?;
            }
            stored.record.protected = protected;
            Ok(())
        })
    }

    /// Stores (or replaces) the VM configuration captured at backup `id`, answering the
    /// record. Accepted while the backup is pending or running (the agent captures it from the
    /// snapshot while the disks move) and once it completed (a capture sent after the data, or
    /// a retry); a failed backup is refused. The caller checks that the config's disks are the
    /// backup's (a backup's disks never change once created).
    ///
    /// # Errors
    /// [`CatalogError::BackupNotFound`]; [`CatalogError::WrongStatus`] for a failed backup;
    /// storage errors.
    pub fn set_vm_config(
        &self,
        id: &BackupId,
        config: &sendense_types::VmConfig,
    ) -> Result<BackupRecord> {
        let value = serde_json::to_value(config).map_err(|_| CatalogError::InvalidRecord {
            backup_id: id.clone(),
            reason: "the VM configuration does not encode as JSON",
        })?;
        self.update_backup(Durability::Immediate, id, |_, stored| {
            expect_status(
                &stored.record,
                &[
                    BackupStatus::Pending,
                    BackupStatus::Running,
                    BackupStatus::Completed,
                ],
                "pending, running or completed",
            )?;
            stored.record.vm_config = Some(value);
            Ok(())
        })
    }

    /// Deleted backups whose files the hub has not yet confirmed removed, with those files
    /// (relative to the repository), oldest deletion id first.
    ///
    /// # Errors
    /// Storage or corruption errors.
    pub fn deletions(&self) -> Result<Vec<(BackupId, Vec<String>)>> {
        self.read(|t| {
            t.deletions
                .iter()?
                .map(|entry| {
                    let (key, value) = entry?;
                    let id = parse_id("deletions", key.value(), key.value())?;
                    let files: Vec<String> = decode("deletions", key.value(), value.value())?;
                    Ok((id, files))
                })
                .collect()
        })
    }

    /// Forgets a deletion journal entry once its files are gone. Unknown ids are fine.
    ///
    /// # Errors
    /// Storage errors.
    pub fn finish_deletion(&self, id: &BackupId) -> Result<()> {
        self.write(Durability::Immediate, |t| {
            t.deletions.remove(id.as_str())?;
            Ok(())
        })
    }

    /// Marks a completed backup whose image files are gone, answering the record: it stays
    /// listed (so an operator sees what was lost) but is never the parent of an incremental.
    ///
    /// # Errors
    /// [`CatalogError::BackupNotFound`]; [`CatalogError::WrongStatus`] unless completed.
    pub fn mark_files_missing(&self, id: &BackupId) -> Result<BackupRecord> {
        self.update_backup(Durability::Immediate, id, |_, stored| {
            expect_status(&stored.record, &[BackupStatus::Completed], "completed")?;
            stored.record.files_missing = true;
            Ok(())
        })
    }

    /// Records verification outcomes, all in one transaction: each named completed backup gets
    /// its `verification` replaced. Answers the updated records.
    ///
    /// # Errors
    /// [`CatalogError::BackupNotFound`]; [`CatalogError::WrongStatus`] unless completed.
    pub fn set_verifications(
        &self,
        outcomes: &[(BackupId, Verification)],
    ) -> Result<Vec<BackupRecord>> {
        self.write(Durability::Immediate, |t| {
            let mut out = Vec::with_capacity(outcomes.len());
            for (id, verification) in outcomes {
                let mut stored =
                    load_backup(&t.backups, id)?.ok_or_else(|| CatalogError::BackupNotFound {
                        backup_id: id.clone(),
                    })?;
                expect_status(&stored.record, &[BackupStatus::Completed], "completed")?;
                stored.record.verification = verification.clone();
                t.backups.insert(id.as_str(), encode(&stored).as_slice())?;
                out.push(stored.record);
            }
            Ok(out)
        })
    }

    /// The VM's current chain, oldest first: from its latest completed backup (the head) follow
    /// `parent_backup_id` back to a full; empty if the VM has no completed backup.
    ///
    /// # Errors
    /// [`CatalogError::VmNotFound`]; [`CatalogError::BrokenChain`] if a link is missing.
    pub fn chain(&self, vm: &VmName) -> Result<Vec<BackupRecord>> {
        self.read(|t| {
            if t.vms.get(vm.as_str())?.is_none() {
                return Err(CatalogError::VmNotFound { vm: vm.clone() });
            }
            match get_id(&t.heads, "heads", vm.as_str())? {
                Some(head) => walk_chain(&t.backups, &head),
                None => Ok(Vec::new()),
            }
        })
    }

    /// The VM's latest completed backup (the chain head), if any.
    ///
    /// # Errors
    /// [`CatalogError::VmNotFound`]; storage or corruption errors.
    pub fn latest_completed(&self, vm: &VmName) -> Result<Option<BackupRecord>> {
        self.read(|t| {
            if t.vms.get(vm.as_str())?.is_none() {
                return Err(CatalogError::VmNotFound { vm: vm.clone() });
            }
            get_id(&t.heads, "heads", vm.as_str())?
                .map(|id| require_backup(&t.backups, "heads", &id))
                .transpose()
        })
    }

    /// Every pending or running backup, oldest first: at start the hub fails these (their
    /// exports and partial images did not survive the restart).
    ///
    /// # Errors
    /// Storage or corruption errors.
    pub fn running_backups(&self) -> Result<Vec<BackupRecord>> {
        self.read(|t| {
            let mut found = Vec::new();
            for entry in t.active.iter()? {
                let (vm, id) = entry?;
                let id = parse_id("active", vm.value(), id.value())?;
                let stored = load_backup(&t.backups, &id)?.ok_or(CatalogError::DanglingIndex {
                    table: "active",
                    backup_id: id,
                })?;
                found.push(stored);
            }
            found.sort_by_key(|s| s.seq);
            Ok(found.into_iter().map(|s| s.record).collect())
        })
    }

    /// Stores (or replaces) the credential `req` describes; its password arrives already
    /// sealed by the hub (`req`'s plaintext password is not stored). Answers the record
    /// (`created_at` kept from the first store).
    ///
    /// # Errors
    /// Storage or corruption errors.
    pub fn put_credential(
        &self,
        req: &CredentialRequest,
        sealed_password: Vec<u8>,
        now: Timestamp,
    ) -> Result<CredentialRecord> {
        let name = req.name();
        self.write(Durability::Immediate, |t| {
            let existing: Option<CredentialRecord> =
                get_json(&t.credentials, "credentials", name.as_str())?;
            let record = CredentialRecord {
                name: name.clone(),
                host: req.host().to_owned(),
                username: req.username().to_owned(),
                sealed_password,
                trust: Some(req.trust().clone()),
                agent: req.agent().cloned(),
                created_at: existing.map_or(now, |e| e.created_at),
                updated_at: now,
            };
            t.credentials
                .insert(name.as_str(), encode(&record).as_slice())?;
            Ok(record)
        })
    }

    /// One credential.
    ///
    /// # Errors
    /// Storage or corruption errors.
    pub fn credential(&self, name: &CredentialName) -> Result<Option<CredentialRecord>> {
        self.read(|t| get_json(&t.credentials, "credentials", name.as_str()))
    }

    /// All credentials, ordered by name.
    ///
    /// # Errors
    /// Storage or corruption errors.
    pub fn credentials(&self) -> Result<Vec<CredentialRecord>> {
        self.read(|t| {
            t.credentials
                .iter()?
                .map(|entry| {
                    let (key, value) = entry?;
                    decode("credentials", key.value(), value.value())
                })
                .collect()
        })
    }

    /// Removes a credential.
    ///
    /// # Errors
    /// [`CatalogError::CredentialNotFound`]; storage errors.
    pub fn delete_credential(&self, name: &CredentialName) -> Result<()> {
        self.write(Durability::Immediate, |t| {
            match t.credentials.remove(name.as_str())? {
                Some(_) => Ok(()),
                None => Err(CatalogError::CredentialNotFound { name: name.clone() }),
            }
        })
    }

    /// Runs `f` in one write transaction, committing only if it succeeds.
    pub(crate) fn write<T>(
        &self,
        durability: Durability,
        f: impl FnOnce(&mut WriteTables<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(durability)?;
        let out = {
            let mut tables = WriteTables::open(&txn)?;
            f(&mut tables)?
        };
        txn.commit()?;
        Ok(out)
    }

    /// Loads a backup, lets `f` change it (and other tables), stores it back, in one write
    /// transaction; answers the updated record.
    fn update_backup(
        &self,
        durability: Durability,
        id: &BackupId,
        f: impl FnOnce(&mut WriteTables<'_>, &mut StoredBackup) -> Result<()>,
    ) -> Result<BackupRecord> {
        self.write(durability, |t| {
            let mut stored =
                load_backup(&t.backups, id)?.ok_or_else(|| CatalogError::BackupNotFound {
                    backup_id: id.clone(),
                })?;
            f(t, &mut stored)?;
            t.backups.insert(id.as_str(), encode(&stored).as_slice())?;
            Ok(stored.record)
        })
    }

    /// Runs `f` on a consistent read snapshot.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&ReadTables) -> Result<T>) -> Result<T> {
        let txn = self.db.begin_read()?;
        let tables = ReadTables::open(&txn)?;
        f(&tables)
    }
}

/// Every table, opened in one write transaction.
pub(crate) struct WriteTables<'txn> {
    pub(crate) meta: Table<'txn, &'static str, u64>,
    pub(crate) vms: Table<'txn, &'static str, &'static [u8]>,
    pub(crate) backups: Table<'txn, &'static str, &'static [u8]>,
    pub(crate) vm_backups: Table<'txn, (&'static str, u64), &'static str>,
    pub(crate) order: Table<'txn, u64, &'static str>,
    pub(crate) active: Table<'txn, &'static str, &'static str>,
    pub(crate) heads: Table<'txn, &'static str, &'static str>,
    pub(crate) credentials: Table<'txn, &'static str, &'static [u8]>,
    pub(crate) deletions: Table<'txn, &'static str, &'static [u8]>,
}

impl<'txn> WriteTables<'txn> {
    /// The next backup sequence number (the order of backups in the catalog), taken.
    pub(crate) fn take_backup_seq(&mut self, backup_id: &BackupId) -> Result<u64> {
        let seq = self.meta.get(NEXT_SEQ_KEY)?.map_or(0, |v| v.value());
        let next = seq.checked_add(1).ok_or(CatalogError::InvalidRecord {
            backup_id: backup_id.clone(),
            reason: "backup sequence exhausted",
        })?;
        self.meta.insert(NEXT_SEQ_KEY, next)?;
        Ok(seq)
    }

    pub(crate) fn open(txn: &'txn WriteTransaction) -> Result<Self> {
        Ok(Self {
            meta: txn.open_table(META)?,
            vms: txn.open_table(VMS)?,
            backups: txn.open_table(BACKUPS)?,
            vm_backups: txn.open_table(VM_BACKUPS)?,
            order: txn.open_table(BACKUP_ORDER)?,
            active: txn.open_table(ACTIVE)?,
            heads: txn.open_table(HEADS)?,
            credentials: txn.open_table(CREDENTIALS)?,
            deletions: txn.open_table(DELETIONS)?,
        })
    }
}

/// The tables readers use, opened in one read transaction.
pub(crate) struct ReadTables {
    pub(crate) vms: ReadOnlyTable<&'static str, &'static [u8]>,
    pub(crate) backups: ReadOnlyTable<&'static str, &'static [u8]>,
    pub(crate) vm_backups: ReadOnlyTable<(&'static str, u64), &'static str>,
    pub(crate) order: ReadOnlyTable<u64, &'static str>,
    pub(crate) active: ReadOnlyTable<&'static str, &'static str>,
    pub(crate) heads: ReadOnlyTable<&'static str, &'static str>,
    pub(crate) credentials: ReadOnlyTable<&'static str, &'static [u8]>,
    pub(crate) deletions: ReadOnlyTable<&'static str, &'static [u8]>,
}

impl ReadTables {
    fn open(txn: &ReadTransaction) -> Result<Self> {
        Ok(Self {
            vms: txn.open_table(VMS)?,
            backups: txn.open_table(BACKUPS)?,
            vm_backups: txn.open_table(VM_BACKUPS)?,
            order: txn.open_table(BACKUP_ORDER)?,
            active: txn.open_table(ACTIVE)?,
            heads: txn.open_table(HEADS)?,
            credentials: txn.open_table(CREDENTIALS)?,
            deletions: txn.open_table(DELETIONS)?,
        })
    }
}

/// Checks what a new record must satisfy on its own, before looking at the database.
fn check_new_record(record: &BackupRecord) -> Result<()> {
    let invalid = |reason| {
        Err(CatalogError::InvalidRecord {
            backup_id: record.backup_id.clone(),
            reason,
        })
    };
    if record.backup_id.vm_name() != record.vm_name {
        return invalid("vm_name is not the VM named in the backup id");
    }
    if !record.status.is_active() {
        return invalid("a new backup must be pending or running");
    }
    if record.completed_at.is_some()
        || record.failed_at.is_some()
        || record.failure_reason.is_some()
        || record.files_missing
        || record.disks.iter().any(|d| d.change_id.is_some())
    {
        return invalid("a new backup cannot carry completion or failure fields");
    }
    match (record.backup_type, &record.parent_backup_id) {
        (BackupType::Auto, _) => return invalid("backup_type auto must be resolved first"),
        (BackupType::Full, Some(_)) => return invalid("a full backup has no parent"),
        (BackupType::Incremental, None) => return invalid("an incremental needs a parent"),
        (BackupType::Incremental, Some(_)) if record.full_reason.is_some() => {
            return invalid("an incremental has no full_reason");
        }
        (BackupType::Full, None) if record.disks.iter().any(|d| d.parent_change_id.is_some()) => {
            return invalid("a full backup has no parent change ids");
        }
        _ => {}
    }
    if record.disks.is_empty() {
        return invalid("a backup needs at least one disk");
    }
    let mut seen = BTreeSet::new();
    for disk in &record.disks {
        if !seen.insert(disk.disk_key) {
            return Err(CatalogError::DuplicateDisk {
                disk_key: disk.disk_key,
            });
        }
        if !is_safe_relative_path(&disk.file) {
            return invalid("a disk file must be a relative path inside the repository");
        }
    }
    Ok(())
}

/// A non-empty relative path whose components are all plain names (no `..`, `.`, empty parts
/// or backslashes).
fn is_safe_relative_path(path: &str) -> bool {
    !path.is_empty()
        && !path.contains('\\')
        && !path.contains('\0')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

pub(crate) fn expect_status(
    record: &BackupRecord,
    allowed: &[BackupStatus],
    expected: &'static str,
) -> Result<()> {
    if allowed.contains(&record.status) {
        Ok(())
    } else {
        Err(CatalogError::WrongStatus {
            backup_id: record.backup_id.clone(),
            status: record.status,
            expected,
        })
    }
}

fn expect_active(record: &BackupRecord) -> Result<()> {
    expect_status(
        record,
        &[BackupStatus::Pending, BackupStatus::Running],
        "pending or running",
    )
}

/// Cuts `text` to at most `max` bytes on a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Our records are structs with string keys and no non-finite floats: JSON encoding of them
    // cannot fail.
    serde_json::to_vec(value).expect("catalog records always encode as JSON")
}

pub(crate) fn decode<T: DeserializeOwned>(
    table: &'static str,
    key: &str,
    bytes: &[u8],
) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| CatalogError::Corrupt {
        table,
        key: key.to_owned(),
        source,
    })
}

fn parse_id(table: &'static str, key: &str, value: &str) -> Result<BackupId> {
    value.parse().map_err(|source| CatalogError::CorruptId {
        table,
        key: key.to_owned(),
        source,
    })
}

pub(crate) fn get_json<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &'static str,
    key: &str,
) -> Result<Option<T>> {
    match table.get(key)? {
        Some(value) => decode(name, key, value.value()).map(Some),
        None => Ok(None),
    }
}

pub(crate) fn get_id(
    table: &impl ReadableTable<&'static str, &'static str>,
    name: &'static str,
    key: &str,
) -> Result<Option<BackupId>> {
    match table.get(key)? {
        Some(value) => parse_id(name, key, value.value()).map(Some),
        None => Ok(None),
    }
}

pub(crate) fn load_backup(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &BackupId,
) -> Result<Option<StoredBackup>> {
    get_json(table, "backups", id.as_str())
}

/// Loads a backup the index `index` points to; a dangling index entry is corruption.
pub(crate) fn require_backup(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    index: &'static str,
    id: &BackupId,
) -> Result<BackupRecord> {
    load_backup(table, id)?
        .map(|s| s.record)
        .ok_or_else(|| CatalogError::DanglingIndex {
            table: index,
            backup_id: id.clone(),
        })
}

/// A VM's backup ids in creation order.
pub(crate) fn vm_backup_ids(
    table: &impl ReadableTable<(&'static str, u64), &'static str>,
    vm: &VmName,
) -> Result<Vec<BackupId>> {
    table
        .range((vm.as_str(), 0)..=(vm.as_str(), u64::MAX))?
        .map(|entry| {
            let (_, id) = entry?;
            parse_id("vm_backups", vm.as_str(), id.value())
        })
        .collect()
}

/// Follows parent links from `last` back to a full; answers oldest first.
fn walk_chain(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    last: &BackupId,
) -> Result<Vec<BackupRecord>> {
    let mut chain = Vec::new();
    let mut seen = HashSet::new();
    let mut next = Some(require_backup(table, "heads", last)?);
    while let Some(record) = next {
        seen.insert(record.backup_id.clone());
        next = match &record.parent_backup_id {
            Some(parent) => {
                let broken = || CatalogError::BrokenChain {
                    backup_id: record.backup_id.clone(),
                    parent: parent.clone(),
                };
                if seen.contains(parent) {
                    return Err(broken());
                }
                Some(load_backup(table, parent)?.ok_or_else(broken)?.record)
            }
            None => None,
        };
        chain.push(record);
    }
    chain.reverse();
    Ok(chain)
}

/// Test-only fault injection: makes a transaction fail at a named point, to prove that a
/// failure midway leaves nothing behind.
mod fail_point {
    use crate::error::CatalogError;

    /// In `complete_backup`, after the record is rewritten and before the head moves.
    pub(super) const COMPLETE_BEFORE_HEAD: &str = "complete_before_head";

    #[cfg(test)]
    thread_local! {
        static ARMED: std::cell::RefCell<Option<&'static str>> =
            const { std::cell::RefCell::new(None) };
    }

    /// Arms `point` for the current thread until it fires once.
    #[cfg(test)]
    pub(super) fn arm(point: &'static str) {
        ARMED.with(|a| *a.borrow_mut() = Some(point));
    }

    #[cfg(test)]
    pub(super) fn check(point: &'static str) -> Result<(), CatalogError> {
        let fire = ARMED.with(|a| {
            let mut armed = a.borrow_mut();
            let hit = *armed == Some(point);
            if hit {
                *armed = None;
            }
            hit
        });
        if fire {
            Err(CatalogError::Storage {
                source: Box::new(redb::Error::Io(std::io::Error::other("injected failure"))),
            })
        } else {
            Ok(())
        }
    }

    #[cfg(not(test))]
    #[inline]
    pub(super) fn check(_point: &'static str) -> Result<(), CatalogError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use sendense_types::{DiskKey, DiskSpec, RegisterVmRequest};

    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_unix_seconds(1_800_000_000 + secs).unwrap()
    }

    fn catalog_with_running_full(dir: &Path) -> (Catalog, BackupId) {
        let catalog = Catalog::open(dir.join(FILE_NAME)).unwrap();
        let spec = RegisterVmRequest::new(
            "vm1".parse().unwrap(),
            vec![DiskSpec {
                key: DiskKey(2000),
                capacity_bytes: 1 << 20,
            }],
        )
        .unwrap();
        let vm = catalog.upsert_vm(&spec, at(0)).unwrap();
        let id = BackupId::from_parts(&vm.name, at(1), 1);
        let record = BackupRecord::new(id.clone(), &vm, None, BackupStatus::Running, at(1));
        catalog.create_backup(&record).unwrap();
        (catalog, id)
    }

    #[test]
    fn complete_backup_failure_before_head_moves_leaves_backup_running() {
        let dir = tempfile::tempdir().unwrap();
        let (catalog, id) = catalog_with_running_full(dir.path());
        let done = [DiskCompletion {
            disk_key: DiskKey(2000),
            change_id: None,
            bytes_written: 1,
            digests: false,
        }];
        fail_point::arm(fail_point::COMPLETE_BEFORE_HEAD);

        let result = catalog.complete_backup(&id, &done, at(2));

        let vm: VmName = "vm1".parse().unwrap();
        assert_eq!(
            (
                result.is_err(),
                catalog.backup(&id).unwrap().unwrap().status,
                catalog.latest_completed(&vm).unwrap(),
                catalog.running_backups().unwrap().len(),
            ),
            (true, BackupStatus::Running, None, 1)
        );
    }

    #[test]
    fn complete_backup_after_injected_failure_retry_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let (catalog, id) = catalog_with_running_full(dir.path());
        let done = [DiskCompletion {
            disk_key: DiskKey(2000),
            change_id: None,
            bytes_written: 1,
            digests: false,
        }];
        fail_point::arm(fail_point::COMPLETE_BEFORE_HEAD);
        let _ = catalog.complete_backup(&id, &done, at(2));

        let record = catalog.complete_backup(&id, &done, at(3)).unwrap();

        assert_eq!(record.status, BackupStatus::Completed);
    }

    #[test]
    fn credential_stored_before_trust_was_kept_reads_without_trust_and_needs_a_choice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        drop(Catalog::open(&path).unwrap());
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            let legacy = br#"{"name":"vc1","host":"h","username":"u","sealed_password":[1,2],"created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z"}"#;
            txn.open_table(CREDENTIALS)
                .unwrap()
                .insert("vc1", legacy.as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let catalog = Catalog::open(&path).unwrap();

        let record = catalog
            .credential(&"vc1".parse().unwrap())
            .unwrap()
            .unwrap();

        assert_eq!(
            (record.to_api().needs_trust_choice, record.trust),
            (true, None)
        );
    }

    #[test]
    fn open_newer_schema_version_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        drop(Catalog::open(&path).unwrap());
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(SCHEMA_KEY, SCHEMA_VERSION + 1)
                .unwrap();
            txn.commit().unwrap();
        }

        let err = Catalog::open(&path).unwrap_err();

        assert!(
            matches!(
                err,
                CatalogError::SchemaVersion {
                    found: 4,
                    supported: 3
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn open_version_1_file_upgrades_and_journals_deletions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        drop(Catalog::open(&path).unwrap());
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META).unwrap().insert(SCHEMA_KEY, 1).unwrap();
            txn.delete_table(DELETIONS).unwrap();
            txn.commit().unwrap();
        }

        let catalog = Catalog::open(&path).unwrap();

        assert_eq!(catalog.deletions().unwrap(), vec![]);
    }

    #[test]
    fn open_version_2_file_upgrades_with_empty_job_tables() {
        use redb::TableHandle;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        drop(Catalog::open(&path).unwrap());
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META).unwrap().insert(SCHEMA_KEY, 2).unwrap();
            let names = [
                "agents",
                "agent_tokens",
                "jobs",
                "job_order",
                "vm_jobs",
                "job_queue",
                "job_leases",
                "active_backup_jobs",
                "inventories",
            ];
            let handles: Vec<_> = txn
                .list_tables()
                .unwrap()
                .filter(|h| names.contains(&h.name()))
                .collect();
            assert_eq!(handles.len(), names.len());
            for handle in handles {
                txn.delete_table(handle).unwrap();
            }
            txn.commit().unwrap();
        }

        let catalog = Catalog::open(&path).unwrap();

        assert_eq!(
            (
                catalog.agents().unwrap().len(),
                catalog
                    .jobs(&sendense_types::JobQuery::default())
                    .unwrap()
                    .len(),
                catalog.leased_jobs().unwrap().len(),
                catalog.inventories().unwrap().len(),
            ),
            (0, 0, 0, 0)
        );
        let db_version = catalog
            .db
            .begin_read()
            .unwrap()
            .open_table(META)
            .unwrap()
            .get(SCHEMA_KEY)
            .unwrap()
            .map(|v| v.value());
        assert_eq!(db_version, Some(3));
    }

    #[test]
    fn open_fresh_file_writes_schema_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        drop(Catalog::open(&path).unwrap());

        let db = Database::create(&path).unwrap();
        let txn = db.begin_read().unwrap();
        let version = txn
            .open_table(META)
            .unwrap()
            .get(SCHEMA_KEY)
            .unwrap()
            .map(|v| v.value());

        assert_eq!(version, Some(SCHEMA_VERSION));
    }

    #[test]
    fn backup_corrupt_record_is_storage_error() {
        let dir = tempfile::tempdir().unwrap();
        let (catalog, id) = catalog_with_running_full(dir.path());
        {
            let txn = catalog.db.begin_write().unwrap();
            txn.open_table(BACKUPS)
                .unwrap()
                .insert(id.as_str(), &b"{not json"[..])
                .unwrap();
            txn.commit().unwrap();
        }

        let err = catalog.backup(&id).unwrap_err();

        assert!(
            matches!(
                err,
                CatalogError::Corrupt {
                    table: "backups",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn running_backups_dangling_active_entry_is_storage_error() {
        let dir = tempfile::tempdir().unwrap();
        let (catalog, id) = catalog_with_running_full(dir.path());
        {
            let txn = catalog.db.begin_write().unwrap();
            txn.open_table(BACKUPS)
                .unwrap()
                .remove(id.as_str())
                .unwrap();
            txn.commit().unwrap();
        }

        let err = catalog.running_backups().unwrap_err();

        assert_eq!(err.kind(), crate::ErrorKind::Storage);
    }

    #[test]
    fn truncate_multibyte_cuts_on_char_boundary() {
        assert_eq!(truncate("aé", 2), "a");
    }

    #[test]
    fn safe_relative_path_rejects_traversal() {
        assert_eq!(
            [
                is_safe_relative_path("vm/disk-2000/x.qcow2"),
                is_safe_relative_path("../x"),
                is_safe_relative_path("/abs"),
                is_safe_relative_path("a//b"),
                is_safe_relative_path(""),
            ],
            [true, false, false, false, false]
        );
    }
}
