//! Instant recoveries (DESIGN.md "Restore"): what the hub needs to open an instant recovery's
//! writable exports again after a restart, so a guest reconnects with the same `nbd_uri`.
//!
//! Table (created at open when missing, like every table here; a file written before it simply
//! lacks it, so it needs no new schema version, and older builds ignore it):
//!
//! | table | key | value |
//! |---|---|---|
//! | `instants` | instant id | JSON [`InstantRecord`] |
//!
//! A record is written (in one transaction that also checks that its point is a completed
//! backup) after the overlays exist and before the exports are announced, and removed when the
//! instant is discarded, before its folder is removed: a crash in between leaves a folder no
//! record names, which the hub's start removes.

use redb::{ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};
use sendense_types::{BackupId, BackupStatus, DiskKey, ExportName, InstantId, Timestamp, VmName};
use serde::{Deserialize, Serialize};

use crate::catalog::{BACKUPS, Catalog, decode, encode, get_json, load_backup};
use crate::error::CatalogError;

const INSTANTS: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("instants");

type Result<T, E = CatalogError> = std::result::Result<T, E>;

/// One disk of an instant recovery as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstantDiskRecord {
    /// The disk.
    pub disk_key: DiskKey,
    /// Its writable export's name (kept across restarts).
    pub export_name: ExportName,
    /// The scratch overlay, relative to the hub's data folder.
    pub overlay: String,
    /// The point's image the overlay reads through, relative to `DATA/repository`.
    pub backing_file: String,
}

/// An instant recovery as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstantRecord {
    /// Its id.
    pub instant_id: InstantId,
    /// The restore point it runs from.
    pub backup_id: BackupId,
    /// The VM of that point.
    pub vm_name: VmName,
    /// When it was started.
    pub created_at: Timestamp,
    /// One overlay and export per disk.
    pub disks: Vec<InstantDiskRecord>,
}

impl Catalog {
    /// Stores a new instant recovery after checking, in the same transaction, that its point
    /// is a completed backup.
    ///
    /// # Errors
    /// [`CatalogError::BackupNotFound`]; [`CatalogError::InvalidRecord`] when the point is not
    /// completed or the id is taken; storage errors.
    pub fn create_instant(&self, record: &InstantRecord) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let backups = txn.open_table(BACKUPS)?;
            let point = load_backup(&backups, &record.backup_id)?.ok_or_else(|| {
                CatalogError::BackupNotFound {
                    backup_id: record.backup_id.clone(),
                }
            })?;
            if point.record.status != BackupStatus::Completed {
                return Err(CatalogError::InvalidRecord {
                    backup_id: record.backup_id.clone(),
                    reason: "an instant recovery needs a completed backup",
                });
            }
            let mut instants = txn.open_table(INSTANTS)?;
            if instants.get(record.instant_id.as_str())?.is_some() {
                return Err(CatalogError::InvalidRecord {
                    backup_id: record.backup_id.clone(),
                    reason: "an instant recovery of that id exists",
                });
            }
            instants.insert(record.instant_id.as_str(), encode(record).as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// One instant recovery.
    ///
    /// # Errors
    /// Storage or corruption errors.
    pub fn instant(&self, id: &InstantId) -> Result<Option<InstantRecord>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(INSTANTS)?;
        get_json(&table, "instants", id.as_str())
    }

    /// Every instant recovery, oldest first.
    ///
    /// # Errors
    /// Storage or corruption errors.
    pub fn instants(&self) -> Result<Vec<InstantRecord>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(INSTANTS)?;
        let mut out: Vec<InstantRecord> = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            out.push(decode("instants", key.value(), value.value())?);
        }
        out.sort_by(|a, b| (a.created_at, &a.instant_id).cmp(&(b.created_at, &b.instant_id)));
        Ok(out)
    }

    /// Removes an instant recovery's record; answers it (`None`: there was none).
    ///
    /// # Errors
    /// Storage or corruption errors.
    pub fn delete_instant(&self, id: &InstantId) -> Result<Option<InstantRecord>> {
        self.write_instants(|t| {
            let record: Option<InstantRecord> = get_json(t, "instants", id.as_str())?;
            if record.is_some() {
                t.remove(id.as_str())?;
            }
            Ok(record)
        })
    }

    fn write_instants<T>(
        &self,
        f: impl FnOnce(&mut Table<'_, &'static str, &'static [u8]>) -> Result<T>,
    ) -> Result<T> {
        let txn = self.db.begin_write()?;
        let out = {
            let mut table = txn.open_table(INSTANTS)?;
            f(&mut table)?
        };
        txn.commit()?;
        Ok(out)
    }
}

/// Creates the table of this module (at open).
pub(crate) fn create_tables(txn: &WriteTransaction) -> Result<()> {
    txn.open_table(INSTANTS)
        .map(drop)
        .map_err(CatalogError::from)
}
