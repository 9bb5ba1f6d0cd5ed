//! Jobs the hub runs itself: `prune` and `verify` (DESIGN.md "Retention and chain
//! maintenance", "Verification"), beside the agent jobs of [`crate::jobs`]; and the calls that
//! queue them: protecting points, `POST /api/v1/vms/{name}/prune`, verification requests.
//!
//! **Queue.** A hub job is a job record without an agent, `queued` in the catalog's
//! `hub_job_queue` index. [`HubJobs::run`] (one task, spawned by the daemon, ended by its
//! stop signal) takes them oldest first, at most [`HUB_JOB_SLOTS`] at once and one at a time
//! per VM; a prune waits while its VM has a queued or running backup job. Taking a job marks
//! it `running` in one catalog transaction (a job cancelled meanwhile is not taken). Each runs
//! on a blocking thread, reporting bytes done and total into the same [`JobProgress`] agent
//! jobs carry (written at most once a second); it ends `completed` or `failed`, with its
//! `result` in words, and is announced on [`Jobs::subscribe_finished`] like an agent job (so
//! the webhook fires and policies see it).
//!
//! **Cancel.** A queued hub job is cancelled at once ([`Jobs::cancel`]); a running one is not
//! (409): a merge that has begun is finished, not abandoned half way.
//!
//! **Restart.** A hub stopped or killed while a hub job ran finds it `running` at the next
//! start; [`HubJobs::recover`] puts it back in the queue as its next attempt. Both kinds are
//! safe to run again: the merge journal has finished or undone the interrupted merge at start,
//! a prune skips the points already gone, and a verification simply reads again.
//!
//! **Prune.** The plan is [`sendense_prune::prune`] over every completed point of the VM (all
//! its chains) with their `protected` flags, in the hub's time zone. A prune job holds the
//! list of points to remove as planned; when it runs, points protected since, or gone, are
//! skipped and its result says so. Points evicted to buckets are planned like the others:
//! with an object tier, the removal fetches back what a merge needs, and the job then copies
//! merged points again, evicts again what was evicted, and deletes removed points' objects
//! from buckets once nothing there reads through them ([`Tier::settle`]); its result says
//! what it did and what a store refused.
//!
//! **Verify** of an evicted point reads its copies back from their buckets instead of its
//! chain ([`Tier::verify_copies`]); the outcome is recorded on the point the same way.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use jiff::tz::TimeZone;
use sendense_catalog::{Catalog, CatalogError, JobRecord};
use sendense_prune::{Decision, Point};
use sendense_types::{
    Backup, BackupId, BackupQuery, BackupStatus, HeartbeatProgress, InstantId, JobAccepted, JobId,
    JobKind, JobProgress, JobQuery, JobStatus, PolicyName, PruneAnswer, PruneRequest, Retention,
    TargetName, Timestamp, UpdateBackupRequest, VerificationState, VmName,
};
use tokio::sync::{Notify, watch};

use crate::engine::Engine;
use crate::error::HubError;
use crate::jobs::Jobs;
use crate::scheduler::Clock;
use crate::tier::Tier;
use crate::verify::Verifier;

/// Most hub jobs running at once.
pub const HUB_JOB_SLOTS: usize = 2;
/// How often the runner looks at its queue when nothing wakes it (a VM's backup job ending
/// lets its waiting prune start).
const POLL: Duration = Duration::from_secs(2);
/// How long a verification of an evicted point waits for a removal of its VM's points.
const VERIFY_LOCK_WAIT: Duration = Duration::from_secs(3600);
/// Progress is written to the catalog at most this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Removes restore points of a VM, keeping what every remaining point restores (merging
/// layers as needed): the hub's [`crate::maintenance::Maintenance`]; tests may give their own.
pub trait PointRemover: Send + Sync + fmt::Debug {
    /// Removes `ids` (points of `vm`, newest first) on the calling (blocking) thread,
    /// reporting bytes done and total through `progress`; answers what it did, in words.
    ///
    /// # Errors
    /// Whatever stops the removal; points removed before it stay removed.
    fn remove_points(
        &self,
        vm: &VmName,
        ids: &[BackupId],
        progress: &dyn Fn(u64, u64),
    ) -> Result<String, HubError>;
}

/// The hub's own job queue and its runner (see the module documentation). Share one per hub.
#[derive(Debug)]
pub struct HubJobs {
    catalog: Arc<Catalog>,
    engine: Arc<Engine>,
    jobs: Arc<Jobs>,
    remover: Arc<dyn PointRemover>,
    verifier: Arc<Verifier>,
    clock: Arc<dyn Clock>,
    tier: Option<Arc<Tier>>,
    wake: Notify,
    busy: Mutex<Busy>,
}

/// What runs now.
#[derive(Debug, Default)]
struct Busy {
    vms: HashSet<VmName>,
    running: usize,
}

/// How a hub job ended.
struct Outcome {
    status: JobStatus,
    result: Option<String>,
    error: Option<String>,
}

impl HubJobs {
    /// The queue over `catalog`: prunes remove points through `remover`, verifications go to
    /// `verifier`, ends are announced through `jobs`, periods are read in `clock`'s zone.
    #[must_use]
    pub fn new(
        catalog: Arc<Catalog>,
        engine: Arc<Engine>,
        jobs: Arc<Jobs>,
        remover: Arc<dyn PointRemover>,
        verifier: Arc<Verifier>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            catalog,
            engine,
            jobs,
            remover,
            verifier,
            clock,
            tier: None,
            wake: Notify::new(),
            busy: Mutex::new(Busy::default()),
        }
    }

    /// The same queue, running `copy` jobs through `tier` (DESIGN.md "Object tier").
    #[must_use]
    pub fn with_tier(mut self, tier: Arc<Tier>) -> Self {
        self.tier = Some(tier);
        self
    }

    /// `POST /api/v1/backups/{id}/copy` `{target}`: queues a `copy` job of a completed point to
    /// a target (the copy resumes what an earlier attempt uploaded).
    ///
    /// # Errors
    /// Unknown backup or target (404); a point that is not completed (409); catalog errors.
    pub fn queue_copy(
        &self,
        backup_id: &BackupId,
        target: &TargetName,
        policy: Option<PolicyName>,
    ) -> Result<JobAccepted, HubError> {
        let tier = self.tier()?;
        tier.prepare_copy(backup_id, target)?;
        let vm = crate::engine::backup_record(&self.catalog, backup_id)?.vm_name;
        let job = self.catalog.create_job(JobRecord {
            backup_id: Some(backup_id.clone()),
            policy,
            target: Some(target.clone()),
            ..hub_job(JobKind::Copy, vm)
        })?;
        tracing::info!(job_id = %job.job_id, %backup_id, %target, "copy job queued");
        self.wake.notify_one();
        Ok(JobAccepted { job_id: job.job_id })
    }

    fn tier(&self) -> Result<&Arc<Tier>, HubError> {
        self.tier.as_ref().ok_or(HubError::InvalidInput {
            field: "kind",
            reason: "this hub runs without an object tier",
        })
    }

    /// `PUT /api/v1/backups/{id}` `{protected}`: protects a completed point from every prune
    /// and from deletion, or lifts that; answers the backup.
    ///
    /// # Errors
    /// Unknown backup (404); protecting a point that is not completed (409); catalog errors.
    pub fn update_backup(
        &self,
        id: &BackupId,
        req: UpdateBackupRequest,
    ) -> Result<Backup, HubError> {
        self.catalog.set_protected(id, req.protected)?;
        tracing::info!(backup_id = %id, protected = req.protected, "backup protection set");
        self.engine.backup(id)
    }

    /// The prune plan of `vm` under `retention`: every completed point (all its chains) with
    /// its mark, newest first (points taken in the same second: the later created first).
    ///
    /// # Errors
    /// Unknown VM (404); catalog errors.
    pub fn plan(
        &self,
        vm: &VmName,
        retention: &Retention,
    ) -> Result<Vec<Decision<BackupId>>, HubError> {
        self.engine.vm(vm)?;
        // The catalog answers creation order: points of the same second are ordered by it.
        let points = self
            .completed_points(vm)?
            .into_iter()
            .enumerate()
            .map(|(created, r)| Point {
                time: jiff_time(r.created_at),
                protected: r.protected,
                id: (created, r.backup_id),
            })
            .collect();
        Ok(sendense_prune::prune(points, retention, &self.time_zone())
            .into_iter()
            .map(|d| Decision {
                id: d.id.1,
                time: d.time,
                mark: d.mark,
            })
            .collect())
    }

    /// Every completed point of `vm`, in creation order.
    fn completed_points(
        &self,
        vm: &VmName,
    ) -> Result<Vec<sendense_catalog::BackupRecord>, HubError> {
        Ok(self.catalog.backups(&BackupQuery {
            vm_name: Some(vm.clone()),
            status: Some(BackupStatus::Completed),
        })?)
    }

    /// `POST /api/v1/vms/{name}/prune`: what `retention` keeps and removes of the VM's
    /// completed points (newest first) and, unless `dry_run` or nothing is removed, the
    /// queued `prune` job removing them.
    ///
    /// # Errors
    /// As [`HubJobs::plan`].
    pub fn prune(&self, vm: &VmName, req: &PruneRequest) -> Result<PruneAnswer, HubError> {
        self.prune_for(vm, &req.retention, req.dry_run, None)
    }

    /// As [`HubJobs::prune`] (not a dry run), for a policy's run: the job carries the
    /// policy's name.
    ///
    /// # Errors
    /// As [`HubJobs::plan`].
    pub fn prune_for_policy(
        &self,
        vm: &VmName,
        retention: &Retention,
        policy: &PolicyName,
    ) -> Result<PruneAnswer, HubError> {
        self.prune_for(vm, retention, false, Some(policy.clone()))
    }

    fn prune_for(
        &self,
        vm: &VmName,
        retention: &Retention,
        dry_run: bool,
        policy: Option<PolicyName>,
    ) -> Result<PruneAnswer, HubError> {
        let plan = self.plan(vm, retention)?;
        let (kept, removed): (Vec<_>, Vec<_>) = plan.into_iter().partition(|d| d.mark.is_kept());
        let keep: Vec<BackupId> = kept.into_iter().map(|d| d.id).collect();
        let remove: Vec<BackupId> = removed.into_iter().map(|d| d.id).collect();
        let job_id = if dry_run || remove.is_empty() {
            None
        } else {
            let record = self.catalog.create_job(JobRecord {
                retention: Some(*retention),
                remove: remove.clone(),
                policy,
                ..hub_job(JobKind::Prune, vm.clone())
            })?;
            tracing::info!(job_id = %record.job_id, %vm, remove = remove.len(), keep = keep.len(), "prune job queued");
            self.wake.notify_one();
            Some(record.job_id)
        };
        Ok(PruneAnswer {
            keep,
            remove,
            job_id,
        })
    }

    /// `POST /api/v1/backups/{id}/verify`: queues a `verify` job of a completed point.
    ///
    /// # Errors
    /// Unknown backup (404); a point that is not completed (409); catalog errors.
    pub fn queue_verify(&self, backup_id: &BackupId) -> Result<JobAccepted, HubError> {
        self.queue_verify_for(backup_id, None)
    }

    /// As [`HubJobs::queue_verify`], the job carrying the policy that asked for it.
    ///
    /// # Errors
    /// As [`HubJobs::queue_verify`].
    pub fn queue_verify_for(
        &self,
        backup_id: &BackupId,
        policy: Option<PolicyName>,
    ) -> Result<JobAccepted, HubError> {
        let record = crate::engine::completed_record(&self.catalog, backup_id)?;
        let job = self.catalog.create_job(JobRecord {
            backup_id: Some(backup_id.clone()),
            policy,
            ..hub_job(JobKind::Verify, record.vm_name)
        })?;
        tracing::info!(job_id = %job.job_id, %backup_id, "verify job queued");
        self.wake.notify_one();
        Ok(JobAccepted { job_id: job.job_id })
    }

    /// At hub start, before [`HubJobs::run`]: hub jobs a stop or crash left `running` are
    /// queued again as their next attempt (see the module documentation); answers their ids.
    ///
    /// # Errors
    /// Catalog errors.
    pub fn recover(&self) -> Result<Vec<JobId>, HubError> {
        let running = self.catalog.jobs(&JobQuery {
            status: Some(JobStatus::Running),
            ..JobQuery::default()
        })?;
        let mut requeued = Vec::new();
        for job in running.into_iter().filter(|j| j.agent.is_none()) {
            let record = self.catalog.update_job(&job.job_id, |r| {
                r.status = JobStatus::Queued;
                r.started_at = None;
                r.progress = JobProgress::default();
                r.attempt = r.attempt.saturating_add(1);
                Ok::<_, CatalogError>(())
            })?;
            tracing::warn!(job_id = %record.job_id, kind = %record.kind, attempt = record.attempt, "hub job interrupted by a restart: queued again");
            requeued.push(record.job_id);
        }
        Ok(requeued)
    }

    /// The runner: takes queued hub jobs and runs them (see the module documentation) until
    /// `stop` turns true; then takes no more and waits for the running ones to end.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            if *stop.borrow() {
                break;
            }
            let me = Arc::clone(&self);
            match tokio::task::spawn_blocking(move || me.take_ready()).await {
                Ok(Ok(ready)) => {
                    for job in ready {
                        let me = Arc::clone(&self);
                        tasks.spawn_blocking(move || me.execute(&job));
                    }
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %sendense_io::error_chain(&e), "cannot read the hub's job queue");
                }
                Err(e) => tracing::error!(error = %e, "hub job queue reader panicked"),
            }
            tokio::select! {
                () = self.wake.notified() => {}
                Some(_) = tasks.join_next() => {}
                () = tokio::time::sleep(POLL) => {}
                changed = stop.changed() => if changed.is_err() { break },
            }
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Marks `running` the queued jobs that may start now, answering them.
    fn take_ready(&self) -> Result<Vec<JobRecord>, HubError> {
        let mut taken = Vec::new();
        for job in self.catalog.queued_hub_jobs()? {
            let vm = job.vm_name.clone();
            {
                let busy = self.lock();
                if busy.running >= HUB_JOB_SLOTS {
                    break;
                }
                if vm.as_ref().is_some_and(|vm| busy.vms.contains(vm)) {
                    continue;
                }
            }
            if job.kind == JobKind::Prune
                && let Some(vm) = &vm
                && self.catalog.active_backup_job(vm)?.is_some()
            {
                continue;
            }
            let now = Timestamp::now();
            let claimed = self.catalog.update_job(&job.job_id, |r| {
                if r.status != JobStatus::Queued {
                    return Err(HubError::JobWrongStatus {
                        job_id: r.job_id.clone(),
                        status: r.status,
                        expected: "queued",
                    });
                }
                r.status = JobStatus::Running;
                r.started_at = Some(now);
                r.progress = JobProgress::default();
                Ok(())
            });
            match claimed {
                Ok(record) => {
                    let mut busy = self.lock();
                    busy.running += 1;
                    if let Some(vm) = &vm {
                        busy.vms.insert(vm.clone());
                    }
                    tracing::info!(job_id = %record.job_id, kind = %record.kind, vm = ?record.vm_name, "hub job started");
                    taken.push(record);
                }
                Err(e) => {
                    tracing::info!(job_id = %job.job_id, error = %sendense_io::error_chain(&e), "hub job not taken");
                }
            }
        }
        Ok(taken)
    }

    /// Runs one taken job to its end (blocking) and records and announces that end.
    fn execute(&self, job: &JobRecord) {
        let outcome = match job.kind {
            JobKind::Prune => self.run_prune(job),
            JobKind::Verify => self.run_verify(job),
            JobKind::Copy => self.run_copy(job),
            other => Err(HubError::InvalidInput {
                field: "kind",
                reason: if other == JobKind::Backup {
                    "a backup job needs an agent"
                } else {
                    "only prune, verify and copy jobs run inside the hub"
                },
            }),
        };
        let outcome = outcome.unwrap_or_else(|e| Outcome {
            status: JobStatus::Failed,
            result: None,
            error: Some(sendense_io::error_chain(&e)),
        });
        let now = Timestamp::now();
        let ended = self.catalog.update_job(&job.job_id, |r| {
            r.status = outcome.status;
            r.finished_at = Some(now);
            if outcome.status == JobStatus::Completed {
                // A throttled last report may be missing: a completed job did all its work.
                r.progress.bytes_done = r.progress.bytes_done.max(r.progress.bytes_total);
                r.progress.eta_seconds = Some(0);
            }
            r.result.clone_from(&outcome.result);
            r.error.clone_from(&outcome.error);
            Ok::<_, CatalogError>(())
        });
        {
            let mut busy = self.lock();
            busy.running = busy.running.saturating_sub(1);
            if let Some(vm) = &job.vm_name {
                busy.vms.remove(vm);
            }
        }
        match ended {
            Ok(record) => {
                tracing::info!(job_id = %record.job_id, status = %record.status, result = ?record.result, error = ?record.error, "hub job finished");
                self.jobs.announce_finished(record.to_api());
            }
            Err(e) => {
                tracing::error!(job_id = %job.job_id, error = %sendense_io::error_chain(&e), "cannot record the end of a hub job");
            }
        }
        self.wake.notify_one();
    }

    fn run_prune(&self, job: &JobRecord) -> Result<Outcome, HubError> {
        let vm = job.vm_name.clone().ok_or(HubError::InvalidInput {
            field: "vm_name",
            reason: "a prune job names its VM",
        })?;
        let (mut todo, mut protected, mut gone) = (Vec::new(), Vec::new(), Vec::new());
        let mut held: Vec<BackupId> = Vec::new();
        let mut held_by: Vec<InstantId> = Vec::new();
        let (mut restoring, mut restored_by): (Vec<BackupId>, Vec<JobId>) =
            (Vec::new(), Vec::new());
        for id in &job.remove {
            match self.catalog.backup(id)? {
                Some(r) if r.protected => protected.push(id.clone()),
                Some(r) if r.status == BackupStatus::Completed => todo.push(id.clone()),
                _ => gone.push(id.clone()),
            }
        }
        let progress = self.progress_writer(job);
        // Points in buckets before the removal: evicted again once their copies are made
        // again (a merge fetches them back).
        let evicted_before: Vec<BackupId> = match &self.tier {
            Some(_) => self
                .completed_points(&vm)?
                .into_iter()
                .filter(|r| r.evicted)
                .map(|r| r.backup_id)
                .collect(),
            None => Vec::new(),
        };
        let mut done = "nothing left to remove".to_owned();
        let mut failure = None;
        while !todo.is_empty() {
            match self.remover.remove_points(&vm, &todo, &progress) {
                Ok(report) => {
                    done = report;
                    break;
                }
                // Protected between the check above and the removal: skip them too.
                Err(HubError::Protected { backup_ids })
                    if backup_ids.iter().all(|id| todo.contains(id)) && !backup_ids.is_empty() =>
                {
                    todo.retain(|id| !backup_ids.contains(id));
                    protected.extend(backup_ids);
                }
                // Read by an instant recovery: skipped, naming it.
                Err(HubError::InstantHeld {
                    backup_ids,
                    instant_ids,
                }) if backup_ids.iter().all(|id| todo.contains(id)) && !backup_ids.is_empty() => {
                    todo.retain(|id| !backup_ids.contains(id));
                    held.extend(backup_ids);
                    held_by.extend(instant_ids);
                }
                // Read by a queued or running restore job: skipped, naming it.
                Err(HubError::RestoreHeld {
                    backup_ids,
                    job_ids,
                }) if backup_ids.iter().all(|id| todo.contains(id)) && !backup_ids.is_empty() => {
                    todo.retain(|id| !backup_ids.contains(id));
                    restoring.extend(backup_ids);
                    restored_by.extend(job_ids);
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        // Bucket copies follow what the removal did, also when it stopped half way.
        let settled = match &self.tier {
            Some(tier) => Some(tier.settle(&vm, &evicted_before, &progress)?),
            None => None,
        };
        if let Some(e) = failure {
            if let Some(settled) = settled.as_ref().map(crate::tier::SettleReport::describe)
                && !settled.is_empty()
            {
                tracing::warn!(%vm, object_tier = %settled, "prune failed after part of its work");
            }
            return Err(e);
        }
        let mut result = format!(
            "removed {} of {} points ({done})",
            todo.len(),
            job.remove.len()
        );
        if let Some(settled) = settled.as_ref().map(crate::tier::SettleReport::describe)
            && !settled.is_empty()
        {
            result.push_str(&format!("; {settled}"));
        }
        if !protected.is_empty() {
            result.push_str(&format!(
                "; skipped, protected since the prune was planned: {}",
                join(&protected)
            ));
        }
        if !gone.is_empty() {
            result.push_str(&format!("; skipped, already gone: {}", join(&gone)));
        }
        if !held.is_empty() {
            let by: Vec<&str> = held_by.iter().map(InstantId::as_str).collect();
            result.push_str(&format!(
                "; skipped, read by instant recovery {}: {}",
                by.join(", "),
                join(&held)
            ));
        }
        if !restoring.is_empty() {
            let by: Vec<&str> = restored_by.iter().map(JobId::as_str).collect();
            result.push_str(&format!(
                "; skipped, read by restore job {}: {}",
                by.join(", "),
                join(&restoring)
            ));
        }
        Ok(Outcome {
            status: JobStatus::Completed,
            result: Some(result),
            error: None,
        })
    }

    fn run_verify(&self, job: &JobRecord) -> Result<Outcome, HubError> {
        let id = job.backup_id.clone().ok_or(HubError::InvalidInput {
            field: "backup_id",
            reason: "a verify job names its backup",
        })?;
        let progress = self.progress_writer(job);
        let record = crate::engine::completed_record(&self.catalog, &id)?;
        let verification = if record.evicted {
            // Its files live only in buckets: its copies are read back (see the object tier).
            let _chain = self
                .engine
                .chain_locks()
                .read(&record.vm_name, VERIFY_LOCK_WAIT)?;
            self.tier()?.verify_copies(&id, &progress)?
        } else {
            self.verifier.verify(&id, &progress)?
        };
        Ok(match verification.state {
            VerificationState::Ok => Outcome {
                status: JobStatus::Completed,
                result: Some(format!("backup {id} verified: ok")),
                error: None,
            },
            VerificationState::Failed => Outcome {
                status: JobStatus::Failed,
                result: Some(format!(
                    "backup {id} failed verification: {} bad ranges",
                    verification.bad_ranges.len()
                )),
                error: Some(verification.message.unwrap_or_else(|| {
                    format!(
                        "backup {id} failed verification: {} bad ranges",
                        verification.bad_ranges.len()
                    )
                })),
            },
            VerificationState::Unverified => Outcome {
                status: JobStatus::Failed,
                result: None,
                error: Some(
                    verification
                        .message
                        .unwrap_or_else(|| format!("backup {id} could not be verified")),
                ),
            },
        })
    }

    fn run_copy(&self, job: &JobRecord) -> Result<Outcome, HubError> {
        let id = job.backup_id.clone().ok_or(HubError::InvalidInput {
            field: "backup_id",
            reason: "a copy job names its backup",
        })?;
        let target = job.target.clone().ok_or(HubError::InvalidInput {
            field: "target",
            reason: "a copy job names its target",
        })?;
        let progress = self.progress_writer(job);
        let tier = self.tier()?;
        let mut result = tier.copy(&id, &target, &progress)?;
        let keep = match &job.policy {
            Some(policy) => self
                .catalog
                .policy(policy)?
                .and_then(|p| p.request.keep_local_last()),
            None => None,
        };
        if let (Some(keep), Some(vm)) = (keep, &job.vm_name) {
            let evicted = tier.keep_local_last(vm, keep)?;
            if !evicted.is_empty() {
                result = format!(
                    "{result}; evicted (keep_local_last {keep}): {}",
                    join(&evicted)
                );
            }
        }
        // Objects of removed points that waited for this copy go now.
        match tier.sweep().map(|r| r.describe()) {
            Ok(swept) if !swept.is_empty() => result = format!("{result}; {swept}"),
            Ok(_) => {}
            // The copy itself is done: a sweep that cannot run waits for the next one.
            Err(e) => {
                tracing::warn!(error = %sendense_io::error_chain(&e), "cannot sweep removed points' objects");
            }
        }
        Ok(Outcome {
            status: JobStatus::Completed,
            result: Some(result),
            error: None,
        })
    }

    /// A progress callback writing the job's progress (with rate and time left) at most every
    /// [`PROGRESS_EVERY`], and always the final report.
    fn progress_writer(&self, job: &JobRecord) -> impl Fn(u64, u64) + '_ {
        let id = job.job_id.clone();
        let started = job.started_at.unwrap_or_else(Timestamp::now);
        let last: Mutex<Option<Instant>> = Mutex::new(None);
        move |done, total| {
            {
                let mut last = last.lock().unwrap_or_else(PoisonError::into_inner);
                let due = last.is_none_or(|at| at.elapsed() >= PROGRESS_EVERY);
                if !due && done < total {
                    return;
                }
                *last = Some(Instant::now());
            }
            let now = Timestamp::now();
            let written = self.catalog.update_job(&id, |r| {
                if r.status == JobStatus::Running {
                    r.progress = crate::jobs::progress(
                        started,
                        now,
                        HeartbeatProgress {
                            bytes_done: done,
                            bytes_total: total,
                        },
                    );
                }
                Ok::<_, CatalogError>(())
            });
            if let Err(e) = written {
                tracing::warn!(job_id = %id, error = %sendense_io::error_chain(&e), "cannot record a hub job's progress");
            }
        }
    }

    fn time_zone(&self) -> TimeZone {
        self.clock.now().time_zone().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Busy> {
        self.busy.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A queued job of the hub's own queue, for `vm`, queued now.
fn hub_job(kind: JobKind, vm: VmName) -> JobRecord {
    JobRecord {
        vm_name: Some(vm),
        ..JobRecord::queued(kind)
    }
}

/// Every `sendense_types::Timestamp` (1970..=9999) is a valid jiff timestamp.
fn jiff_time(ts: Timestamp) -> jiff::Timestamp {
    jiff::Timestamp::from_second(ts.unix_seconds()).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

fn join(ids: &[BackupId]) -> String {
    ids.iter()
        .map(BackupId::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use sendense_catalog::{BackupRecord, DiskCompletion};
    use sendense_nbd::ExportRegistry;
    use sendense_prune::Mark;
    use sendense_types::{RegisterVmRequest, Vm};

    use super::*;
    use crate::credentials::Credentials;
    use crate::scheduler::ManualClock;

    /// A remover that reports half its work, says it started, and waits to be let go.
    #[derive(Debug)]
    struct Gate {
        entered: tokio::sync::mpsc::UnboundedSender<VmName>,
        release: Mutex<mpsc::Receiver<()>>,
    }

    impl PointRemover for Gate {
        fn remove_points(
            &self,
            vm: &VmName,
            ids: &[BackupId],
            progress: &dyn Fn(u64, u64),
        ) -> Result<String, HubError> {
            progress(1, 2);
            let _ = self.entered.send(vm.clone());
            let _ = self
                .release
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .recv();
            progress(2, 2);
            Ok(format!("gated {}", ids.len()))
        }
    }

    struct Setup {
        _dir: tempfile::TempDir,
        catalog: Arc<Catalog>,
        jobs: Arc<Jobs>,
        hub_jobs: Arc<HubJobs>,
        entered: tokio::sync::mpsc::UnboundedReceiver<VmName>,
        release: mpsc::Sender<()>,
    }

    /// Hub jobs over a fresh catalog, in the zone UTC-5, removing through a [`Gate`].
    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Arc::new(Catalog::open_in(dir.path()).unwrap());
        let engine = Arc::new(Engine::new(
            Arc::clone(&catalog),
            dir.path().join("repository"),
            Arc::new(ExportRegistry::new()),
            "nbds://localhost:1".into(),
        ));
        let credentials = Arc::new(Credentials::open(Arc::clone(&catalog), dir.path()).unwrap());
        let jobs = Arc::new(Jobs::new(
            Arc::clone(&catalog),
            Arc::clone(&engine),
            credentials,
        ));
        let (entered_tx, entered) = tokio::sync::mpsc::unbounded_channel();
        let (release, release_rx) = mpsc::channel();
        let zone = TimeZone::fixed(jiff::tz::offset(-5));
        let now = jiff::Timestamp::from_second(1_800_000_000)
            .unwrap()
            .to_zoned(zone);
        let verifier = Arc::new(engine.verifier());
        let hub_jobs = Arc::new(HubJobs::new(
            Arc::clone(&catalog),
            engine,
            Arc::clone(&jobs),
            Arc::new(Gate {
                entered: entered_tx,
                release: Mutex::new(release_rx),
            }),
            verifier,
            Arc::new(ManualClock::new(now)),
        ));
        Setup {
            _dir: dir,
            catalog,
            jobs,
            hub_jobs,
            entered,
            release,
        }
    }

    fn vm(catalog: &Catalog, name: &str) -> Vm {
        let req: RegisterVmRequest =
            serde_json::from_value(serde_json::json!({"name": name, "disks": [{"key": 2000, "capacity_bytes": 1_048_576}]}))
                .unwrap();
        catalog.upsert_vm(&req, Timestamp::EPOCH).unwrap()
    }

    /// A completed full of `vm` taken at `at` (an RFC 3339 time).
    fn point(catalog: &Catalog, vm: &Vm, at: &str) -> BackupId {
        let at: Timestamp = at.parse().unwrap();
        let id = BackupId::from_parts(&vm.name, at, 7);
        let record = BackupRecord::new(id.clone(), vm, None, BackupStatus::Running, at);
        catalog.create_backup(&record).unwrap();
        catalog
            .complete_backup(
                &id,
                &[DiskCompletion {
                    disk_key: record.disks[0].disk_key,
                    change_id: Some("52 aa/1".parse().unwrap()),
                    bytes_written: 0,
                    digests: false,
                }],
                at,
            )
            .unwrap();
        id
    }

    #[test]
    fn plan_reads_days_in_the_hub_zone() {
        let s = setup();
        let web = vm(&s.catalog, "web01");
        // 03:00 UTC is 22:00 of the day before at UTC-5.
        let a = point(&s.catalog, &web, "2026-03-01T20:00:00Z");
        let b = point(&s.catalog, &web, "2026-03-02T03:00:00Z");
        let c = point(&s.catalog, &web, "2026-03-02T20:00:00Z");
        let retention = Retention {
            keep_daily: Some(5),
            ..Retention::default()
        };

        let plan = s.hub_jobs.plan(&web.name, &retention).unwrap();

        assert_eq!(
            plan.into_iter().map(|d| (d.id, d.mark)).collect::<Vec<_>>(),
            vec![
                (c, Mark::Keep(sendense_prune::Rule::Daily)),
                (b, Mark::Keep(sendense_prune::Rule::Daily)),
                (a, Mark::Remove)
            ]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runner_one_job_per_vm_running_job_not_cancellable_progress_recorded() {
        let mut s = setup();
        let web = vm(&s.catalog, "web01");
        let db = vm(&s.catalog, "db01");
        for v in [&web, &db] {
            point(&s.catalog, v, "2026-03-01T20:00:00Z");
            point(&s.catalog, v, "2026-03-02T20:00:00Z");
        }
        let last = Retention {
            keep_last: Some(1),
            ..Retention::default()
        };
        let prune = |vm: &VmName| {
            s.hub_jobs
                .prune(
                    vm,
                    &PruneRequest {
                        retention: last,
                        dry_run: false,
                    },
                )
                .unwrap()
                .job_id
                .unwrap()
        };
        let web_first = prune(&web.name);
        let web_second = prune(&web.name);
        let db_job = prune(&db.name);
        let mut ended = s.jobs.subscribe_finished();
        let (stop, stop_rx) = watch::channel(false);
        let runner = tokio::spawn(Arc::clone(&s.hub_jobs).run(stop_rx));

        let started = [
            s.entered.recv().await.unwrap(),
            s.entered.recv().await.unwrap(),
        ];
        let running = s.catalog.job(&web_first).unwrap().unwrap();
        let waiting = s.catalog.job(&web_second).unwrap().unwrap();
        let refused = s.jobs.cancel(&web_first).unwrap_err();
        let cancelled = s.jobs.cancel(&web_second).unwrap();
        s.release.send(()).unwrap();
        s.release.send(()).unwrap();
        let mut finished = Vec::new();
        while finished.len() < 3 {
            let job = ended.recv().await.unwrap();
            finished.push((job.job_id, job.status));
        }
        stop.send_replace(true);
        runner.await.unwrap();

        assert!(started.contains(&web.name) && started.contains(&db.name));
        assert_eq!(
            (
                running.status,
                running.progress.bytes_done,
                running.progress.bytes_total
            ),
            (JobStatus::Running, 1, 2)
        );
        assert_eq!(waiting.status, JobStatus::Queued);
        assert!(
            matches!(refused, HubError::HubJobRunning { .. }),
            "{refused}"
        );
        assert_eq!(cancelled.status, JobStatus::Cancelled);
        finished.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        let mut expect = vec![
            (web_first.clone(), JobStatus::Completed),
            (web_second, JobStatus::Cancelled),
            (db_job, JobStatus::Completed),
        ];
        expect.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        assert_eq!(finished, expect);
        let done = s.catalog.job(&web_first).unwrap().unwrap();
        assert_eq!(
            (done.result.as_deref(), done.progress.bytes_done),
            (Some("removed 1 of 1 points (gated 1)"), 2)
        );
    }
}
