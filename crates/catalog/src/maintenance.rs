//! The merge journal (DESIGN.md "Retention and chain maintenance"): one entry per step of a
//! point's removal that moves data between image files, so a hub killed at any instant
//! finishes (or, if no file was touched yet, forgets) the step at its next start.
//!
//! Table (created at open when missing, like every table here; a file written before it
//! simply lacks it, so it needs no new schema version, and older builds ignore it):
//!
//! | table | key | value |
//! |---|---|---|
//! | `merges` | id of the point being removed | JSON [`MergeStep`] |
//!
//! A step's life: [`Catalog::begin_merge`] records it in phase [`MergePhase::Planned`] before
//! any file is touched; [`Catalog::set_merge_phase`] moves it to [`MergePhase::Merging`] just
//! before the first file changes and to [`MergePhase::Merged`] when every file is final;
//! [`Catalog::finish_merge`] then, in **one** write transaction, removes the point from the
//! catalog, rewrites its child (its new parent, or a full; its digests flags), journals the
//! removed point's leftover files in `deletions` and drops the step. Until that transaction
//! the removed point and its child read in the catalog exactly as before the step, so an API
//! reader never sees a half-merged point. [`Catalog::abandon_merge`] drops a step that never
//! touched a file.

use redb::{Durability, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};
use sendense_types::{BackupId, BackupStatus, BackupType, DiskKey, Timestamp, VmName};
use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, StoredBackup, WriteTables, decode, encode, get_id, load_backup};
use crate::error::CatalogError;
use crate::record::BackupRecord;

const MERGES: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("merges");

type Result<T, E = CatalogError> = std::result::Result<T, E>;

/// Which merge a step performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MergeKind {
    /// The removed point is a full: its child's layer is committed into the removed point's
    /// file, which is then renamed over the child's file; the child becomes the full.
    Commit,
    /// The removed point is in the middle: its layer is absorbed into its child's file, which
    /// is re-pointed at the removed point's parent; the removed point's files are deleted.
    Absorb,
}

/// How far a step has gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MergePhase {
    /// Recorded; no file touched yet (a restart forgets the step).
    Planned,
    /// Files are being changed (a restart rolls the step forward: every file operation of a
    /// step is idempotent).
    Merging,
    /// Every file is final; only the catalog update is left.
    Merged,
}

/// One disk of a merge step. Paths are relative to the repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeDisk {
    /// The disk.
    pub disk_key: DiskKey,
    /// The removed point's image of this disk, if it has one.
    pub removed_file: Option<String>,
    /// The child's image of this disk, if it has one.
    pub child_file: Option<String>,
    /// Whether the child's image reads through the removed point's (its backing file): only
    /// then does data move; otherwise the removed point's image is simply deleted.
    pub merge: bool,
    /// Whether the merged image keeps digests: both sides had them (set at planning).
    pub digests: bool,
}

/// One journalled step of a point's removal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeStep {
    /// The VM.
    pub vm_name: VmName,
    /// The point removed.
    pub removed: BackupId,
    /// Its child, which takes its data.
    pub child: BackupId,
    /// Commit (removed point is a full) or absorb (a middle point).
    pub kind: MergeKind,
    /// How far it has gone.
    pub phase: MergePhase,
    /// Per disk of either point.
    pub disks: Vec<MergeDisk>,
    /// When the step was recorded.
    pub started_at: Timestamp,
}

impl Catalog {
    /// Records a new merge step (phase as given, normally [`MergePhase::Planned`]) after
    /// checking that `removed` is a completed point of `vm_name` whose child is `child`.
    ///
    /// # Errors
    /// [`CatalogError::BackupNotFound`]; [`CatalogError::InvalidRecord`] when the points do not
    /// match the step or a step for `removed` is already journalled; storage errors.
    pub fn begin_merge(&self, step: &MergeStep) -> Result<()> {
        self.write_merges(|t, merges| {
            let removed = require(&t.backups, &step.removed)?.record;
            let child = require(&t.backups, &step.child)?.record;
            check_pair(step, &removed, &child)?;
            if merges.get(step.removed.as_str())?.is_some() {
                return Err(invalid(&step.removed, "a merge step is already journalled"));
            }
            merges.insert(step.removed.as_str(), encode(step).as_slice())?;
            Ok(())
        })
    }

    /// Moves a journalled step to `phase`.
    ///
    /// # Errors
    /// [`CatalogError::InvalidRecord`] when no step is journalled for `removed`; storage
    /// errors.
    pub fn set_merge_phase(&self, removed: &BackupId, phase: MergePhase) -> Result<()> {
        self.write_merges(|_, merges| {
            let mut step = load_step(merges, removed)?;
            step.phase = phase;
            merges.insert(removed.as_str(), encode(&step).as_slice())?;
            Ok(())
        })
    }

    /// Every journalled step, by removed point id.
    ///
    /// # Errors
    /// Storage or corruption errors.
    pub fn merges(&self) -> Result<Vec<MergeStep>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(MERGES)?;
        table
            .iter()?
            .map(|entry| {
                let (key, value) = entry?;
                decode("merges", key.value(), value.value())
            })
            .collect()
    }

    /// Sets whether a completed point's disk has a digests file beside its image
    /// ([`sendense_types::digest_path`]); answers the record.
    ///
    /// # Errors
    /// [`CatalogError::BackupNotFound`]; [`CatalogError::UnknownDisk`]; storage errors.
    pub fn set_disk_digests(
        &self,
        id: &BackupId,
        disk_key: DiskKey,
        present: bool,
    ) -> Result<BackupRecord> {
        self.write_merges(|t, _| {
            let mut stored = require(&t.backups, id)?;
            let disk = stored
                .record
                .disks
                .iter_mut()
                .find(|d| d.disk_key == disk_key)
                .ok_or_else(|| CatalogError::UnknownDisk {
                    backup_id: id.clone(),
                    disk_key,
                })?;
            disk.digests = present;
            t.backups.insert(id.as_str(), encode(&stored).as_slice())?;
            Ok(stored.record)
        })
    }

    /// Drops a journalled step (one that never touched a file). Unknown ids are fine.
    ///
    /// # Errors
    /// Storage errors.
    pub fn abandon_merge(&self, removed: &BackupId) -> Result<()> {
        self.write_merges(|_, merges| {
            merges.remove(removed.as_str())?;
            Ok(())
        })
    }

    /// Ends a step whose files are final, in one write transaction: the removed point leaves
    /// the catalog, its child takes its place (for [`MergeKind::Commit`] the child becomes a
    /// full without parent change ids; for [`MergeKind::Absorb`] its parent becomes the removed
    /// point's parent and each merged disk takes the removed point's parent change id), each
    /// child disk's `digests` flag becomes `digests(disk_key)`, the removed point's `leftover`
    /// files (relative paths) are journalled in `deletions` for the hub to remove, and the step
    /// is dropped. Answers the child as stored.
    ///
    /// # Errors
    /// [`CatalogError::InvalidRecord`] when no step is journalled or the points no longer
    /// match it; [`CatalogError::BackupNotFound`]; storage errors.
    pub fn finish_merge(
        &self,
        removed: &BackupId,
        digests: impl Fn(DiskKey) -> bool,
        leftover: &[String],
    ) -> Result<BackupRecord> {
        self.write_merges(|t, merges| {
            let step = load_step(merges, removed)?;
            let gone = require(&t.backups, &step.removed)?;
            let mut child = require(&t.backups, &step.child)?;
            check_pair(&step, &gone.record, &child.record)?;
            let record = &mut child.record;
            match step.kind {
                MergeKind::Commit => {
                    record.backup_type = BackupType::Full;
                    record.parent_backup_id = None;
                    for d in &mut record.disks {
                        d.parent_change_id = None;
                    }
                }
                MergeKind::Absorb => {
                    record
                        .parent_backup_id
                        .clone_from(&gone.record.parent_backup_id);
                    for d in &mut record.disks {
                        let merged = step
                            .disks
                            .iter()
                            .any(|m| m.disk_key == d.disk_key && m.merge);
                        if merged {
                            d.parent_change_id = gone
                                .record
                                .disk(d.disk_key)
                                .and_then(|g| g.parent_change_id.clone());
                        }
                    }
                }
            }
            for d in &mut record.disks {
                d.digests = digests(d.disk_key);
            }
            let vm = gone.record.vm_name.as_str();
            t.backups
                .insert(step.child.as_str(), encode(&child).as_slice())?;
            t.backups.remove(step.removed.as_str())?;
            t.vm_backups.remove((vm, gone.seq))?;
            t.order.remove(gone.seq)?;
            if get_id(&t.heads, "heads", vm)?.as_ref() == Some(&step.removed) {
                // A point with a child is never the head; keep the catalog consistent anyway.
                t.heads.insert(vm, step.child.as_str())?;
            }
            t.deletions
                .insert(step.removed.as_str(), encode(&leftover).as_slice())?;
            merges.remove(step.removed.as_str())?;
            tracing::debug!(removed = %step.removed, child = %step.child, "merge step finished");
            Ok(child.record)
        })
    }
}

impl Catalog {
    /// Runs `f` in one write transaction over every catalog table and the merge journal,
    /// committing only if it succeeds.
    fn write_merges<T>(
        &self,
        f: impl FnOnce(&mut WriteTables<'_>, &mut Table<'_, &'static str, &'static [u8]>) -> Result<T>,
    ) -> Result<T> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let out = {
            let mut tables = WriteTables::open(&txn)?;
            let mut merges = txn.open_table(MERGES)?;
            f(&mut tables, &mut merges)?
        };
        txn.commit()?;
        Ok(out)
    }
}

/// Creates the tables of this module (at open, and when upgrading an older file).
pub(crate) fn create_tables(txn: &WriteTransaction) -> Result<()> {
    txn.open_table(MERGES).map(drop)?;
    Ok(())
}

fn invalid(id: &BackupId, reason: &'static str) -> CatalogError {
    CatalogError::InvalidRecord {
        backup_id: id.clone(),
        reason,
    }
}

fn require(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &BackupId,
) -> Result<StoredBackup> {
    load_backup(table, id)?.ok_or_else(|| CatalogError::BackupNotFound {
        backup_id: id.clone(),
    })
}

fn load_step(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    removed: &BackupId,
) -> Result<MergeStep> {
    match table.get(removed.as_str())? {
        Some(v) => decode("merges", removed.as_str(), v.value()),
        None => Err(invalid(
            removed,
            "no merge step is journalled for this point",
        )),
    }
}

/// The points still match the step: both completed, of its VM, the child's parent the
/// removed point, and the removed point without a parent exactly for a commit.
fn check_pair(step: &MergeStep, removed: &BackupRecord, child: &BackupRecord) -> Result<()> {
    if removed.vm_name != step.vm_name || child.vm_name != step.vm_name {
        return Err(invalid(
            &step.removed,
            "merge step names points of another VM",
        ));
    }
    if removed.status != BackupStatus::Completed || child.status != BackupStatus::Completed {
        return Err(invalid(
            &step.removed,
            "merge steps join completed points only",
        ));
    }
    if child.parent_backup_id.as_ref() != Some(&step.removed) {
        return Err(invalid(
            &step.removed,
            "the child's parent is not the removed point",
        ));
    }
    let is_full = removed.parent_backup_id.is_none();
    if is_full != (step.kind == MergeKind::Commit) {
        return Err(invalid(
            &step.removed,
            "a commit removes a full, an absorb a middle point",
        ));
    }
    Ok(())
}
