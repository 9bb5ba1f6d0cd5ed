//! Re-verification on a schedule (`--reverify-days N`, DESIGN.md "Verification"): every
//! [`REVERIFY_PERIOD`] the hub queues `verify` jobs for completed points whose last
//! verification (or, never verified, their completion) is at least N days old, oldest first,
//! at most [`MAX_PER_TICK`] at a time, and never a second job for a point that already has one
//! queued or running. Verification reads at disk speed on the hub's own job runner, so it never
//! holds up backups.

use std::collections::HashSet;
use std::time::Duration;

use sendense_catalog::Catalog;
use sendense_types::{
    BackupId, BackupQuery, BackupStatus, JobId, JobKind, JobQuery, JobStatus, Timestamp,
};

use crate::error::HubError;
use crate::hub_jobs::HubJobs;

/// How often the hub looks for points due for re-verification.
pub const REVERIFY_PERIOD: Duration = Duration::from_secs(3600);
/// Most verify jobs one look queues.
pub const MAX_PER_TICK: usize = 32;

/// The completed points due for re-verification at `now` (see the module documentation),
/// oldest verification first, at most [`MAX_PER_TICK`].
///
/// # Errors
/// Catalog errors.
pub fn due(catalog: &Catalog, now: Timestamp, days: u32) -> Result<Vec<BackupId>, HubError> {
    let cutoff = now.saturating_add_seconds(-i64::from(days).saturating_mul(86_400));
    let mut pending: HashSet<BackupId> = HashSet::new();
    for status in [JobStatus::Queued, JobStatus::Running] {
        let query = JobQuery {
            status: Some(status),
            kind: Some(JobKind::Verify),
            ..JobQuery::default()
        };
        pending.extend(
            catalog
                .jobs(&query)?
                .into_iter()
                .filter_map(|j| j.backup_id),
        );
    }
    let query = BackupQuery {
        vm_name: None,
        status: Some(BackupStatus::Completed),
    };
    let mut due: Vec<(Timestamp, BackupId)> = catalog
        .backups(&query)?
        .into_iter()
        .filter(|r| !r.files_missing && !pending.contains(&r.backup_id))
        .filter_map(|r| {
            let last = r.verification.at.or(r.completed_at)?;
            (last <= cutoff).then_some((last, r.backup_id))
        })
        .collect();
    due.sort();
    Ok(due
        .into_iter()
        .take(MAX_PER_TICK)
        .map(|(_, id)| id)
        .collect())
}

/// Queues a verify job for each point [`due`] at `now`; answers the jobs queued. A point that
/// cannot be queued (it changed meanwhile) is logged and skipped.
///
/// # Errors
/// Catalog errors while looking.
pub fn tick(
    catalog: &Catalog,
    jobs: &HubJobs,
    now: Timestamp,
    days: u32,
) -> Result<Vec<JobId>, HubError> {
    let mut queued = Vec::new();
    for id in due(catalog, now, days)? {
        match jobs.queue_verify(&id) {
            Ok(accepted) => queued.push(accepted.job_id),
            Err(e) => tracing::warn!(
                backup_id = %id,
                error = %sendense_io::error_chain(&e),
                "cannot queue its re-verification"
            ),
        }
    }
    if !queued.is_empty() {
        tracing::info!(jobs = queued.len(), days, "re-verification queued");
    }
    Ok(queued)
}
