//! Policies (DESIGN.md "Policies and schedules"): what the scheduler backs up, when, and where
//! its current run stands.
//!
//! Table (created at open when missing, like every table here; files written before it simply
//! lack it, so it needs no new schema version, and older builds ignore it):
//!
//! | table | key | value |
//! |---|---|---|
//! | `policies` | policy name | JSON [`PolicyRecord`] |
//!
//! A record keeps the request as the API took it, when the policy was created, when it last
//! ran, the VMs of its current run that wait for a free place (`max_parallel`), and the
//! backups its jobs completed since the run's maintenance (prune, verify) was last queued, so
//! a run survives a hub restart.

use redb::{ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};
use sendense_types::jobs::PolicyRequest;
use sendense_types::{BackupId, PolicyName, Timestamp, VmName};
use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, decode, encode, get_json};
use crate::error::CatalogError;

const POLICIES: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("policies");

type Result<T, E = CatalogError> = std::result::Result<T, E>;

/// A policy as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRecord {
    /// The policy as the API took it.
    pub request: PolicyRequest,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it was last created or replaced.
    pub updated_at: Timestamp,
    /// When its last run started (`None`: never).
    #[serde(default)]
    pub last_run: Option<Timestamp>,
    /// VMs of the current run not yet queued: they wait for a free place of the policy.
    #[serde(default)]
    pub pending: Vec<VmName>,
    /// Backups the policy's jobs completed whose prune and verification are not queued yet
    /// (they are, once the run's last backup job has ended).
    #[serde(default)]
    pub completed: Vec<CompletedBackup>,
}

/// A backup a policy's job completed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletedBackup {
    /// The VM backed up.
    pub vm_name: VmName,
    /// The point the job made, when it reported one.
    pub backup_id: Option<BackupId>,
}

impl PolicyRecord {
    /// The policy's name.
    #[must_use]
    pub fn name(&self) -> &PolicyName {
        self.request.name()
    }
}

impl Catalog {
    /// Stores a new policy.
    ///
    /// # Errors
    /// [`CatalogError::PolicyExists`] (conflict) if one of that name exists; storage errors.
    pub fn create_policy(&self, request: &PolicyRequest, now: Timestamp) -> Result<PolicyRecord> {
        self.write_policies(|t| {
            let name = request.name();
            if t.get(name.as_str())?.is_some() {
                return Err(CatalogError::PolicyExists { name: name.clone() });
            }
            let record = PolicyRecord {
                request: request.clone(),
                created_at: now,
                updated_at: now,
                last_run: None,
                pending: Vec::new(),
                completed: Vec::new(),
            };
            t.insert(name.as_str(), encode(&record).as_slice())?;
            Ok(record)
        })
    }

    /// Replaces a policy's settings, keeping when it was created and last ran, and its
    /// current run.
    ///
    /// # Errors
    /// [`CatalogError::PolicyNotFound`]; storage errors.
    pub fn replace_policy(&self, request: &PolicyRequest, now: Timestamp) -> Result<PolicyRecord> {
        self.update_policy(request.name(), |record| {
            record.request = request.clone();
            record.updated_at = now;
            Ok(record.clone())
        })
    }

    /// Changes a policy's record with `f` in one write transaction; nothing is written if `f`
    /// fails.
    ///
    /// # Errors
    /// [`CatalogError::PolicyNotFound`]; `f`'s error; storage errors.
    pub fn update_policy<T>(
        &self,
        name: &PolicyName,
        f: impl FnOnce(&mut PolicyRecord) -> Result<T>,
    ) -> Result<T> {
        self.write_policies(|t| {
            let mut record: PolicyRecord = get_json(t, "policies", name.as_str())?
                .ok_or_else(|| CatalogError::PolicyNotFound { name: name.clone() })?;
            let out = f(&mut record)?;
            t.insert(name.as_str(), encode(&record).as_slice())?;
            Ok(out)
        })
    }

    /// One policy.
    ///
    /// # Errors
    /// Storage or corruption errors.
    pub fn policy(&self, name: &PolicyName) -> Result<Option<PolicyRecord>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(POLICIES)?;
        get_json(&table, "policies", name.as_str())
    }

    /// Every policy, by name.
    ///
    /// # Errors
    /// Storage or corruption errors.
    pub fn policies(&self) -> Result<Vec<PolicyRecord>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(POLICIES)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            out.push(decode("policies", key.value(), value.value())?);
        }
        Ok(out)
    }

    /// Deletes a policy; its queued jobs stay (they are ordinary jobs).
    ///
    /// # Errors
    /// [`CatalogError::PolicyNotFound`]; storage errors.
    pub fn delete_policy(&self, name: &PolicyName) -> Result<PolicyRecord> {
        self.write_policies(|t| {
            let record: PolicyRecord = get_json(t, "policies", name.as_str())?
                .ok_or_else(|| CatalogError::PolicyNotFound { name: name.clone() })?;
            t.remove(name.as_str())?;
            Ok(record)
        })
    }

    fn write_policies<T>(
        &self,
        f: impl FnOnce(&mut Table<'_, &'static str, &'static [u8]>) -> Result<T>,
    ) -> Result<T> {
        let txn = self.db.begin_write()?;
        let out = {
            let mut table = txn.open_table(POLICIES)?;
            f(&mut table)?
        };
        txn.commit()?;
        Ok(out)
    }
}

/// Creates the table of this module (at open).
pub(crate) fn create_tables(txn: &WriteTransaction) -> Result<()> {
    txn.open_table(POLICIES)
        .map(drop)
        .map_err(CatalogError::from)
}
