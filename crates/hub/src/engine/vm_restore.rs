//! Whole-VM restores into vCenter, the hub's side (DESIGN.md "Restore", issue #16).
//!
//! - **Captured configuration.** [`Engine::put_vm_config`] stores the [`VmConfig`] an agent or
//!   client captured from a backup's snapshot with that backup (`PUT
//!   /api/v1/backups/{id}/vm_config`): its disks must be exactly the backup's disks. Accepted
//!   while the backup is pending or running, and once completed (a capture sent after the data,
//!   or a retry); replaced when sent again; refused for a failed backup.
//! - **What a restore needs.** [`Engine::plan_restore`] checks that a point can be restored as a
//!   whole VM before any job is queued: servable (completed, files present, no unfinished merge:
//!   the same check as file and instant restores), not failed verification, a configuration
//!   this build reads, and the disks asked for. It answers the [`RestoreJob`] the agent is
//!   handed, with the VM's chain lock held shared so no removal starts before the job exists.
//! - **Restores hold their point.** While a restore job is queued or running, its point and the
//!   points it reads through cannot be deleted, pruned or merged away:
//!   [`Engine::refuse_restore_held`] answers [`HubError::RestoreHeld`] (409) naming the job,
//!   as [`Engine::refuse_instant_held`] does for instant recoveries.

use std::collections::BTreeSet;

use sendense_catalog::{BackupRecord, StoredVmConfig};
use sendense_types::{
    Backup, BackupId, DiskKey, JobId, RestoreJob, RestoreJobDisk, RestoreRequest,
    VM_CONFIG_VERSION, VerificationState, VmConfig, VmName,
};

use super::Engine;
use crate::error::HubError;
use crate::maintenance::ChainReadGuard;

/// A restore checked by [`Engine::plan_restore`]: the job to hand out, and the point's chain
/// lock held (shared) until the job is queued.
#[derive(Debug)]
pub struct RestorePlan {
    /// What the agent is handed.
    pub job: RestoreJob,
    /// Keeps removals of the point's VM out until the job is stored.
    pub chain: ChainReadGuard,
}

impl Engine {
    /// `PUT /api/v1/backups/{id}/vm_config`: stores the captured configuration with the
    /// backup; answers the backup (with `vm_config`).
    ///
    /// # Errors
    /// Unknown backup (404); a failed backup (409); config disks that are not the backup's
    /// disks (400, naming them); the catalog fails.
    pub fn put_vm_config(&self, id: &BackupId, config: &VmConfig) -> Result<Backup, HubError> {
        let record = self.record(id)?;
        check_config_disks(&record, config)?;
        self.catalog.set_vm_config(id, config)?;
        tracing::info!(backup_id = %id, version = config.version, disks = config.disks.len(), nics = config.nics.len(), "vm_config stored");
        self.backup(id)
    }

    /// Checks that point `id` can be restored as a whole VM as `request` asks, and answers the
    /// job the agent is handed (disks ordered by key, all of the point's unless `request.disks`
    /// names some).
    ///
    /// # Errors
    /// Unknown backup (404); not completed, files missing, an unfinished merge, failed
    /// verification, no captured configuration, a configuration of a later version (409);
    /// disks the point lacks (400).
    pub fn plan_restore(
        &self,
        id: &BackupId,
        request: RestoreRequest,
    ) -> Result<RestorePlan, HubError> {
        let (record, chain) = self.servable_point(id)?;
        if record.verification.state == VerificationState::Failed {
            return Err(HubError::PointFailedVerification {
                backup_id: id.clone(),
            });
        }
        let vm_config = match record.vm_config() {
            StoredVmConfig::Known(config) => *config,
            StoredVmConfig::None => {
                return Err(HubError::NoVmConfig {
                    backup_id: id.clone(),
                });
            }
            StoredVmConfig::Newer { version } => {
                return Err(HubError::VmConfigNewer {
                    backup_id: id.clone(),
                    version,
                    known: VM_CONFIG_VERSION,
                });
            }
            StoredVmConfig::Unreadable => {
                return Err(HubError::VmConfigUnreadable {
                    backup_id: id.clone(),
                });
            }
        };
        let disks = restore_disks(&record, request.disks.as_deref())?;
        Ok(RestorePlan {
            job: RestoreJob {
                backup_id: id.clone(),
                vm_config,
                request,
                disks,
            },
            chain,
        })
    }

    /// Refuses when a queued or running restore job reads one of `points` of `vm` (its point or
    /// a point below it).
    ///
    /// # Errors
    /// [`HubError::RestoreHeld`] naming the points and the jobs; the catalog fails.
    pub fn refuse_restore_held(&self, vm: &VmName, points: &[BackupId]) -> Result<(), HubError> {
        let asked: BTreeSet<&BackupId> = points.iter().collect();
        let mut backup_ids = BTreeSet::new();
        let mut job_ids = BTreeSet::new();
        for (point, job) in self.restore_holds(vm)? {
            if asked.contains(&point) {
                backup_ids.insert(point);
                job_ids.insert(job);
            }
        }
        if backup_ids.is_empty() {
            Ok(())
        } else {
            Err(HubError::RestoreHeld {
                backup_ids: backup_ids.into_iter().collect(),
                job_ids: job_ids.into_iter().collect(),
            })
        }
    }

    /// Every point of `vm` a queued or running restore job reads (its point and that point's
    /// ancestors), with the job.
    ///
    /// # Errors
    /// The catalog fails.
    pub fn restore_holds(&self, vm: &VmName) -> Result<Vec<(BackupId, JobId)>, HubError> {
        let starts: Vec<(BackupId, JobId)> = self
            .catalog
            .active_restore_jobs()?
            .into_iter()
            .filter_map(|j| {
                let point = j.backup_id?;
                (&point.vm_name() == vm).then_some((point, j.job_id))
            })
            .collect();
        self.with_ancestors(vm, starts)
    }
}

/// The config's disks must be exactly the backup's.
fn check_config_disks(record: &BackupRecord, config: &VmConfig) -> Result<(), HubError> {
    let backup: BTreeSet<DiskKey> = record.disks.iter().map(|d| d.disk_key).collect();
    let captured: BTreeSet<DiskKey> = config.disks.iter().map(|d| d.key).collect();
    let not_in_backup: Vec<DiskKey> = captured.difference(&backup).copied().collect();
    let not_in_config: Vec<DiskKey> = backup.difference(&captured).copied().collect();
    if not_in_backup.is_empty() && not_in_config.is_empty() {
        Ok(())
    } else {
        Err(HubError::VmConfigDisks {
            backup_id: record.backup_id.clone(),
            not_in_backup,
            not_in_config,
        })
    }
}

/// The disks a restore uploads: those asked for (each must be the point's), else all.
fn restore_disks(
    record: &BackupRecord,
    asked: Option<&[DiskKey]>,
) -> Result<Vec<RestoreJobDisk>, HubError> {
    let all = record.disks.iter().map(|d| RestoreJobDisk {
        disk_key: d.disk_key,
        capacity_bytes: d.capacity_bytes,
    });
    let Some(asked) = asked else {
        let mut disks: Vec<RestoreJobDisk> = all.collect();
        disks.sort_by_key(|d| d.disk_key);
        return Ok(disks);
    };
    let unknown: Vec<DiskKey> = asked
        .iter()
        .filter(|k| record.disk(**k).is_none())
        .copied()
        .collect();
    if !unknown.is_empty() {
        return Err(HubError::RestoreDisksUnknown {
            backup_id: record.backup_id.clone(),
            disk_keys: unknown,
            known: record.disks.iter().map(|d| d.disk_key).collect(),
        });
    }
    let mut disks: Vec<RestoreJobDisk> = all.filter(|d| asked.contains(&d.disk_key)).collect();
    disks.sort_by_key(|d| d.disk_key);
    Ok(disks)
}
