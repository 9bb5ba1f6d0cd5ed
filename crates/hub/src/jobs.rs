//! Jobs (DESIGN.md "Agents and jobs"): the hub decides what runs; agents connect out, take
//! jobs by long poll, keep them with heartbeats and report how they ended.
//!
//! A job is `queued` for one agent (a backup job: the agent of its vCenter credential, or the
//! agent named for a VM of its own NBD sources, which gets the job without a credential), handed
//! out by [`Jobs::next_job`] to that agent only (atomically `running`, with a lease of
//! [`LEASE_SECONDS`]), kept by [`Jobs::heartbeat`] (which renews the lease and records progress)
//! and ended by [`Jobs::finish`] (`completed` or `failed`). The vCenter password of the job's
//! credential is unsealed into the job handed out only because the agent asking is the
//! credential's agent.
//!
//! **One backup job per VM.** The catalog refuses a second queued or running backup job of a VM
//! in the same write transaction that would insert it, naming the first (409).
//!
//! **Leases.** [`Jobs::reap`] (the daemon runs it every [`REAP_PERIOD`]) fails running jobs
//! whose lease lapsed ("agent lost: no heartbeat since ...") and fails the backup such a job
//! was writing at the hub ([`Engine::fail_backup`]), so a job whose agent is gone is failed
//! within `LEASE_SECONDS + REAP_PERIOD` (100 s) of its last heartbeat. At hub start,
//! [`Jobs::renew_leases`] gives every held job a fresh lease: an agent that keeps heartbeating
//! across a hub restart keeps its job, one that does not is failed by the reaper.
//!
//! **Cancel.** A queued job is cancelled at once. A running job becomes `cancelled` at once too;
//! its agent learns it from its next heartbeat's answer (`status: cancelled`), removes its
//! snapshot and fails its backup at the hub. The job keeps its lease meanwhile (heartbeats of a
//! cancelled job still renew it) until the agent finishes it; if the agent never does, the
//! reaper fails the job's backup at the hub with reason "cancelled" once the lease lapses. So
//! the agent gets the lease as grace to clean up first, and nothing stays running.
//!
//! **For other modules** (the policy scheduler): [`Jobs::queue_backup`] queues a backup job
//! with a policy name, an attempt number and a time before which it is not handed out;
//! [`Jobs::subscribe_finished`] is a broadcast of every job that ended (`completed`, `failed`
//! or `cancelled`), to retry or notify.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sendense_catalog::{Catalog, CatalogError, JobRecord};
use sendense_types::api::BackupType;
use sendense_types::jobs::{LEASE_SECONDS, MAX_SLOTS, MAX_WAIT_SECONDS};
use sendense_types::{
    AgentJob, AgentName, BackupId, BackupNowRequest, CredentialName, FinishJobRequest,
    HeartbeatProgress, HeartbeatRequest, HeartbeatResponse, Inventory, Job, JobAccepted, JobId,
    JobKind, JobList, JobProgress, JobQuery, JobStatus, NextJobQuery, PolicyName, RestoreRequest,
    Timestamp, VmName,
};
use tokio::sync::{Notify, broadcast, watch};

use crate::agents::Caller;
use crate::credentials::Credentials;
use crate::engine::Engine;
use crate::error::HubError;

/// How often the daemon runs [`Jobs::reap`].
pub const REAP_PERIOD: Duration = Duration::from_secs(10);
/// How many ended jobs the broadcast of [`Jobs::subscribe_finished`] keeps for a slow receiver.
const FINISHED_BACKLOG: usize = 256;
/// Longest version text an agent may report.
const MAX_VERSION_LEN: usize = 64;

/// A backup job to queue (what [`Jobs::queue_backup`] takes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueBackup {
    /// The VM.
    pub vm: VmName,
    /// `full`, `incremental` or `auto`.
    pub backup_type: BackupType,
    /// The vCenter credential (and so the agent). `None` with `agent`: a backup of the agent's
    /// own NBD sources. Both `None`: the credential whose inventory holds the VM, else the
    /// credential (or, without one, the agent) of the VM's newest job.
    pub credential: Option<CredentialName>,
    /// The agent whose own NBD sources hold the VM (only without `credential`).
    pub agent: Option<AgentName>,
    /// The policy queuing it.
    pub policy: Option<PolicyName>,
    /// Which attempt this is (1 for the first run).
    pub attempt: u32,
    /// Not handed out before this time (a retry's delay).
    pub not_before: Option<Timestamp>,
}

/// What an agent asks to do with a backup ([`Jobs::check_backup_access`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupAccess {
    /// `GET /api/v1/backups/{id}`: a backup of the VM its running backup job backs up, or the
    /// point of a restore job it runs.
    Read,
    /// `PUT /api/v1/backups/{id}/vm_config`: a backup of the VM its running backup job backs
    /// up.
    Write,
    /// `POST`/`DELETE /api/v1/backups/{id}/exports`: the point of a restore job it runs.
    Exports,
}

/// The job queue. Share one per hub (`Arc`).
#[derive(Debug)]
pub struct Jobs {
    catalog: Arc<Catalog>,
    engine: Arc<Engine>,
    credentials: Arc<Credentials>,
    wakers: Mutex<HashMap<AgentName, Arc<Notify>>>,
    finished: broadcast::Sender<Job>,
    closing: watch::Sender<bool>,
    max_running: Option<u32>,
}

impl Jobs {
    /// The queue over `catalog`; it fails lost backups through `engine` and unseals passwords
    /// for agents through `credentials`.
    #[must_use]
    pub fn new(catalog: Arc<Catalog>, engine: Arc<Engine>, credentials: Arc<Credentials>) -> Self {
        Self {
            catalog,
            engine,
            credentials,
            wakers: Mutex::new(HashMap::new()),
            finished: broadcast::channel(FINISHED_BACKLOG).0,
            closing: watch::channel(false).0,
            max_running: None,
        }
    }

    /// The same queue handing out no job while `max` jobs hold a lease hub-wide (`None`: only
    /// each agent's slots limit how many run).
    #[must_use]
    pub fn with_max_running(mut self, max: Option<u32>) -> Self {
        self.max_running = max;
        self
    }

    /// Ends every long poll now (each answers "no job") and every later one at once: the hub
    /// calls it when it shuts down, so no poll holds the API's drain.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Every job that ends from now on (`completed`, `failed` or `cancelled`), as it ended. A
    /// receiver more than 256 jobs behind gets `Lagged` and misses the oldest.
    #[must_use]
    pub fn subscribe_finished(&self) -> broadcast::Receiver<Job> {
        self.finished.subscribe()
    }

    /// Queues a backup job for the agent of its credential (see [`QueueBackup`]) and wakes that
    /// agent's long poll; answers the job's id.
    ///
    /// # Errors
    /// [`HubError::NoCredentialForVm`] (400); unknown credential (404);
    /// [`HubError::CredentialHasNoAgent`], [`HubError::CredentialAgentUnknown`] (409); a
    /// queued or running backup job of the VM (409 naming it); [`HubError::UnknownAgent`] and
    /// [`HubError::InvalidInput`] (both a credential and an agent) (400); catalog errors.
    pub fn queue_backup(&self, req: QueueBackup) -> Result<JobId, HubError> {
        let (agent, credential) = match (req.credential, req.agent) {
            (Some(_), Some(_)) => {
                return Err(HubError::InvalidInput {
                    field: "agent",
                    reason: "give credential (a vCenter's VM) or agent (the agent's own NBD sources), not both",
                });
            }
            (Some(c), None) => (self.agent_of(&c)?, Some(c)),
            (None, Some(a)) => (self.existing_agent(a)?, None),
            (None, None) => self.known_source(&req.vm)?,
        };
        let vm_path = match &credential {
            Some(c) => self
                .catalog
                .inventory(c)?
                .and_then(|inv| inv.vms.into_iter().find(|v| v.name == req.vm.as_str()))
                .map_or_else(|| req.vm.as_str().to_owned(), |v| v.path),
            // An NBD-source VM is known to its agent by its name.
            None => req.vm.as_str().to_owned(),
        };
        let record = self.catalog.create_job(JobRecord {
            vm_name: Some(req.vm),
            vm_path: Some(vm_path),
            backup_type: Some(req.backup_type),
            policy: req.policy,
            attempt: req.attempt.max(1),
            not_before: req.not_before,
            agent: Some(agent),
            credential,
            ..JobRecord::queued(JobKind::Backup)
        })?;
        tracing::info!(job_id = %record.job_id, vm = record.vm_name.as_ref().map_or("", VmName::as_str), agent = record.agent.as_ref().map_or("", AgentName::as_str), "backup job queued");
        self.wake(&record);
        Ok(record.job_id)
    }

    /// `POST /api/v1/vms/{name}/backup`: queues a backup job of `vm` now.
    ///
    /// # Errors
    /// As [`Jobs::queue_backup`].
    pub fn backup_now(&self, vm: VmName, req: BackupNowRequest) -> Result<JobAccepted, HubError> {
        let job_id = self.queue_backup(QueueBackup {
            vm,
            backup_type: req.backup_type.unwrap_or(BackupType::Auto),
            credential: req.credential,
            agent: req.agent,
            policy: None,
            attempt: 1,
            not_before: None,
        })?;
        Ok(JobAccepted { job_id })
    }

    /// `POST /api/v1/backups/{id}/restore`: checks the point and the request
    /// ([`Engine::plan_restore`]), resolves the credential (the request's, else the one the
    /// point's VM was last backed up with, else the credential whose inventory holds the VM)
    /// and queues a `restore` job for its agent, holding the point until the job ends.
    ///
    /// # Errors
    /// As [`Engine::plan_restore`]; [`HubError::NoCredentialForRestore`] (400); unknown
    /// credential (404); [`HubError::CredentialHasNoAgent`],
    /// [`HubError::CredentialAgentUnknown`] (409); a queued or running restore to the same
    /// target VM name (409 naming it); catalog errors.
    pub fn queue_restore(
        &self,
        id: &BackupId,
        request: RestoreRequest,
    ) -> Result<JobAccepted, HubError> {
        let vm = id.vm_name();
        let mut plan = self.engine.plan_restore(id, request)?;
        let credential = match plan.job.request.credential.clone() {
            Some(c) => c,
            None => match self.catalog.last_job_credential(&vm)? {
                Some(c) => c,
                None => self
                    .known_credential(&vm)
                    .map_err(|_| HubError::NoCredentialForRestore { vm: vm.clone() })?,
            },
        };
        let agent = self.agent_of(&credential)?;
        plan.job.request.credential = Some(credential.clone());
        let target = plan.job.request.vm_name.clone();
        let record = self.catalog.create_job(JobRecord {
            vm_name: Some(vm),
            vm_path: Some(target.clone()),
            backup_id: Some(id.clone()),
            restore: Some(Box::new(plan.job)),
            ..new_job(JobKind::Restore, agent, credential)
        })?;
        drop(plan.chain);
        tracing::info!(job_id = %record.job_id, backup_id = %id, target, agent = record.agent.as_ref().map_or("", AgentName::as_str), "restore job queued");
        self.wake(&record);
        Ok(JobAccepted {
            job_id: record.job_id,
        })
    }

    /// Whether `caller` may do `access` on backup `id` (given as the route's text). The admin
    /// may do everything; an agent only on backups its own held jobs work on (see
    /// [`BackupAccess`]).
    ///
    /// # Errors
    /// [`HubError::NotYourBackup`] (403); catalog errors.
    pub fn check_backup_access(
        &self,
        caller: &Caller,
        id: &str,
        access: BackupAccess,
    ) -> Result<(), HubError> {
        let Caller::Agent(agent) = caller else {
            return Ok(());
        };
        let vm = id.parse::<BackupId>().ok().map(|b| b.vm_name());
        let allowed = self.catalog.leased_jobs()?.iter().any(|j| {
            if j.agent.as_ref() != Some(agent) || !held(j) {
                return false;
            }
            let on_point = j.backup_id.as_ref().is_some_and(|b| b.as_str() == id);
            let backup_of_vm =
                j.kind == JobKind::Backup && (on_point || (vm.is_some() && j.vm_name == vm));
            match access {
                BackupAccess::Read => backup_of_vm || (j.kind == JobKind::Restore && on_point),
                BackupAccess::Write => backup_of_vm,
                BackupAccess::Exports => j.kind == JobKind::Restore && on_point,
            }
        });
        if allowed {
            Ok(())
        } else {
            Err(HubError::NotYourBackup {
                backup_id: id.to_owned(),
                agent: agent.clone(),
            })
        }
    }

    /// `POST /api/v1/credentials/{name}/inventory/refresh`: queues an inventory job for the
    /// credential's agent.
    ///
    /// # Errors
    /// Unknown credential (404); [`HubError::CredentialHasNoAgent`],
    /// [`HubError::CredentialAgentUnknown`] (409); catalog errors.
    pub fn refresh_inventory(&self, credential: CredentialName) -> Result<JobAccepted, HubError> {
        let agent = self.agent_of(&credential)?;
        let record = self
            .catalog
            .create_job(new_job(JobKind::Inventory, agent, credential))?;
        tracing::info!(job_id = %record.job_id, credential = ?record.credential, "inventory job queued");
        self.wake(&record);
        Ok(JobAccepted {
            job_id: record.job_id,
        })
    }

    /// `GET /api/v1/credentials/{name}/inventory`: the VMs the credential's agent last
    /// reported (none, `refreshed_at: null`, before its first inventory job).
    ///
    /// # Errors
    /// Unknown credential (404); catalog errors.
    pub fn inventory(&self, credential: &CredentialName) -> Result<Inventory, HubError> {
        let record = self.credential_record(credential)?;
        Ok(self.catalog.inventory(credential)?.unwrap_or(Inventory {
            credential: credential.clone(),
            agent: record.agent,
            refreshed_at: None,
            vms: Vec::new(),
        }))
    }

    /// One job.
    ///
    /// # Errors
    /// Unknown job (404); catalog errors.
    pub fn job(&self, id: &JobId) -> Result<Job, HubError> {
        Ok(self.require(id)?.to_api())
    }

    /// Jobs matching `query`, newest first.
    ///
    /// # Errors
    /// Catalog errors.
    pub fn list(&self, query: &JobQuery) -> Result<JobList, HubError> {
        Ok(JobList {
            jobs: self
                .catalog
                .jobs(query)?
                .iter()
                .map(JobRecord::to_api)
                .collect(),
        })
    }

    /// The long poll `GET /api/v1/agents/{name}/jobs/next?wait=S`: hands `agent` its oldest due
    /// queued job (now `running` with a fresh lease), with its credential's password; else
    /// waits up to `wait` seconds (or until [`Jobs::close`]) for one to be queued and answers
    /// `None`. Records that the
    /// agent was seen, with the version and slots it reports.
    ///
    /// # Errors
    /// [`HubError::OtherAgent`] (403) when `caller` is another agent; unknown (404) or not
    /// enrolled (409) agent; `wait`, `slots` or `version` out of range (400); catalog errors.
    pub async fn next_job(
        self: &Arc<Self>,
        caller: &Caller,
        agent: &AgentName,
        query: NextJobQuery,
    ) -> Result<Option<AgentJob>, HubError> {
        if let Caller::Agent(own) = caller
            && own != agent
        {
            return Err(HubError::OtherAgent {
                agent: agent.clone(),
                caller: own.clone(),
            });
        }
        let wait = check_next_query(&query)?;
        let record = self
            .blocking({
                let agent = agent.clone();
                move |jobs| {
                    jobs.catalog
                        .agent(&agent)?
                        .ok_or(HubError::Catalog(CatalogError::AgentNotFound { agent }))
                }
            })
            .await?;
        if !record.enrolled {
            return Err(HubError::AgentNotEnrolled {
                agent: agent.clone(),
            });
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(u64::from(wait));
        let waker = self.waker(agent);
        let mut closing = self.closing.subscribe();
        loop {
            let notified = waker.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = Timestamp::now();
            let claim = self
                .blocking({
                    let (agent, version, slots) =
                        (agent.clone(), query.version.clone(), query.slots);
                    move |jobs| {
                        jobs.catalog
                            .touch_agent(&agent, now, version.as_deref(), slots)?;
                        Ok(jobs
                            .catalog
                            .claim_job(&agent, now, lease_end(now), jobs.max_running)?)
                    }
                })
                .await?;
            if let Some(job) = claim.job {
                match self.hand_out(&job) {
                    Ok(handed) => {
                        tracing::info!(job_id = %job.job_id, %agent, "job handed out");
                        return Ok(Some(handed));
                    }
                    Err(e) => {
                        self.fail_unstartable(&job, &e);
                        continue;
                    }
                }
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() || *closing.borrow() {
                return Ok(None);
            }
            let until_due = claim.next_due.map(|due| {
                Duration::from_secs(
                    u64::try_from(due.unix_seconds().saturating_sub(now.unix_seconds()))
                        .unwrap_or(0)
                        .max(1),
                )
            });
            let nap = until_due.map_or(left, |d| d.min(left));
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep(nap) => {}
                _ = closing.wait_for(|closed| *closed) => {}
            }
        }
    }

    /// `POST /api/v1/jobs/{id}/heartbeat`: renews the lease of a running (or cancelled, still
    /// held) job, records progress (with the rate and time left since it started) and the
    /// backup it writes; answers its status (`cancelled` tells the agent to stop).
    ///
    /// # Errors
    /// Unknown job (404); [`HubError::NotYourJob`] (403) for another agent's job;
    /// [`HubError::JobWrongStatus`] (409) for a job not held by an agent; nothing is changed
    /// then. Catalog errors.
    pub fn heartbeat(
        &self,
        caller: &Caller,
        id: &JobId,
        req: &HeartbeatRequest,
        now: Timestamp,
    ) -> Result<HeartbeatResponse, HubError> {
        let record = self.catalog.update_job(id, |r| {
            check_owner(caller, r)?;
            if !held(r) {
                return Err(wrong_status(r, "running"));
            }
            r.lease_until = Some(lease_end(now));
            if r.status == JobStatus::Running {
                r.progress = progress(r.started_at.unwrap_or(now), now, req.progress);
            }
            if let Some(backup_id) = &req.backup_id {
                r.backup_id = Some(backup_id.clone());
            }
            Ok(())
        })?;
        self.seen(&record, now);
        Ok(HeartbeatResponse {
            status: record.status,
            lease_seconds: LEASE_SECONDS,
        })
    }

    /// `POST /api/v1/jobs/{id}/finish`: ends a running job as `completed` or `failed` (an
    /// inventory job's VMs become its credential's inventory, in the same transaction). A
    /// job cancelled while running stays `cancelled`; its lease is released. A failed backup
    /// job whose backup is still running at the hub has that backup failed too.
    ///
    /// # Errors
    /// As [`Jobs::heartbeat`].
    pub async fn finish(
        self: &Arc<Self>,
        caller: Caller,
        id: JobId,
        req: FinishJobRequest,
    ) -> Result<Job, HubError> {
        let now = Timestamp::now();
        let (before, after) = self
            .blocking(move |jobs| {
                let mut before = None;
                let after = jobs.catalog.update_job_with_inventory(&id, |r| {
                    check_owner(&caller, r)?;
                    if !held(r) {
                        return Err(wrong_status(r, "running"));
                    }
                    before = Some(r.status);
                    r.lease_until = None;
                    if let Some(backup_id) = req.backup_id() {
                        r.backup_id = Some(backup_id.clone());
                    }
                    if r.status != JobStatus::Running {
                        return Ok(None);
                    }
                    r.status = req.status();
                    r.finished_at = Some(now);
                    r.error = req.error().map(str::to_owned);
                    if let Some(result) = req.result() {
                        r.result = Some(result.to_owned());
                    }
                    if r.status == JobStatus::Completed
                        && r.kind == JobKind::Inventory
                        && let Some(credential) = &r.credential
                    {
                        return Ok(Some(Inventory {
                            credential: credential.clone(),
                            agent: r.agent.clone(),
                            refreshed_at: Some(now),
                            vms: req.inventory().map(<[_]>::to_vec).unwrap_or_default(),
                        }));
                    }
                    Ok(None)
                })?;
                jobs.seen(&after, now);
                Ok((before, after))
            })
            .await?;
        if before == Some(JobStatus::Running) {
            tracing::info!(job_id = %after.job_id, status = %after.status, "job finished");
            if after.status == JobStatus::Failed {
                let reason = after.error.clone().unwrap_or_else(|| "job failed".into());
                self.fail_backup_of(&after, &reason).await;
            }
            let _ = self.finished.send(after.to_api());
        }
        self.wake_all();
        Ok(after.to_api())
    }

    /// `POST /api/v1/jobs/{id}/cancel`: a queued job is cancelled at once; a running one is
    /// marked `cancelled` and its agent stops at its next heartbeat (see the module docs).
    ///
    /// # Errors
    /// Unknown job (404); a job that has ended, or a `prune`/`verify` job running inside the
    /// hub (409); catalog errors.
    pub fn cancel(&self, id: &JobId) -> Result<Job, HubError> {
        let now = Timestamp::now();
        let record = self.catalog.update_job(id, |r| {
            if !r.status.is_active() {
                return Err(wrong_status(r, "queued or running"));
            }
            if r.status == JobStatus::Running && r.agent.is_none() {
                return Err(HubError::HubJobRunning {
                    job_id: r.job_id.clone(),
                });
            }
            r.status = JobStatus::Cancelled;
            r.finished_at = Some(now);
            r.error = Some("cancelled".into());
            Ok::<_, HubError>(())
        })?;
        tracing::info!(job_id = %record.job_id, "job cancelled");
        let job = record.to_api();
        let _ = self.finished.send(job.clone());
        Ok(job)
    }

    /// Tells the subscribers of [`Jobs::subscribe_finished`] that a job the hub ran itself
    /// ([`crate::hub_jobs`]) ended.
    pub(crate) fn announce_finished(&self, job: Job) {
        let _ = self.finished.send(job);
    }

    /// Fails every running job whose lease lapsed before `now` ("agent lost"), releases the
    /// lapsed lease of cancelled jobs, and fails the backups such jobs were writing at the hub;
    /// answers how many leases it ended. The daemon calls it every [`REAP_PERIOD`].
    ///
    /// # Errors
    /// Catalog errors (a job that fails to update is skipped and logged).
    pub async fn reap(self: &Arc<Self>, now: Timestamp) -> Result<usize, HubError> {
        let lapsed = self.blocking(move |jobs| {
            let mut ended = Vec::new();
            for job in jobs.catalog.leased_jobs()? {
                if job.lease_until.is_none_or(|l| l >= now) {
                    continue;
                }
                let updated = jobs.catalog.update_job(&job.job_id, |r| {
                    let Some(lease) = r.lease_until.filter(|l| *l < now) else {
                        return Ok::<_, HubError>(());
                    };
                    r.lease_until = None;
                    if r.status == JobStatus::Running {
                        let last = lease.saturating_add_seconds(-i64::from(LEASE_SECONDS));
                        r.status = JobStatus::Failed;
                        r.finished_at = Some(now);
                        r.error = Some(format!("agent lost: no heartbeat since {last}"));
                    }
                    Ok(())
                });
                match updated {
                    Ok(record) if record.lease_until.is_none() => ended.push((job.status, record)),
                    Ok(_) => {}
                    Err(e) => tracing::error!(job_id = %job.job_id, error = %sendense_io::error_chain(&e), "cannot end a lapsed lease"),
                }
            }
            Ok(ended)
        }).await?;
        for (was, record) in &lapsed {
            let reason = record.error.clone().unwrap_or_else(|| "cancelled".into());
            tracing::warn!(job_id = %record.job_id, agent = record.agent.as_ref().map_or("", AgentName::as_str), status = %record.status, reason, "job lease lapsed");
            self.fail_backup_of(record, &reason).await;
            if *was == JobStatus::Running {
                let _ = self.finished.send(record.to_api());
            }
        }
        if !lapsed.is_empty() {
            self.wake_all();
        }
        Ok(lapsed.len())
    }

    /// Gives every job an agent holds a fresh lease from `now` (the hub calls it at start);
    /// answers how many.
    ///
    /// # Errors
    /// Catalog errors.
    pub fn renew_leases(&self, now: Timestamp) -> Result<usize, HubError> {
        Ok(self.catalog.renew_all_leases(lease_end(now))?)
    }

    /// The agent (and credential) a backup of `vm` uses when neither is named: the credential
    /// whose inventory holds the VM, else the VM's newest job's credential, else the agent of its
    /// newest backup job without one (an NBD-source VM of that agent).
    fn known_source(&self, vm: &VmName) -> Result<(AgentName, Option<CredentialName>), HubError> {
        match self.known_credential(vm) {
            Ok(c) => return Ok((self.agent_of(&c)?, Some(c))),
            Err(HubError::NoCredentialForVm { .. }) => {}
            Err(e) => return Err(e),
        }
        let newest = self
            .catalog
            .jobs(&JobQuery {
                vm_name: Some(vm.clone()),
                kind: Some(JobKind::Backup),
                ..JobQuery::default()
            })?
            .into_iter()
            .find_map(|j| j.agent);
        match newest {
            Some(agent) => Ok((self.existing_agent(agent)?, None)),
            None => Err(HubError::NoCredentialForVm { vm: vm.clone() }),
        }
    }

    /// `agent`, when the hub knows it.
    fn existing_agent(&self, agent: AgentName) -> Result<AgentName, HubError> {
        if self.catalog.agent(&agent)?.is_none() {
            return Err(HubError::UnknownAgent { agent });
        }
        Ok(agent)
    }

    /// The credential a backup of `vm` uses when none is named.
    fn known_credential(&self, vm: &VmName) -> Result<CredentialName, HubError> {
        let in_inventory = self
            .catalog
            .inventories()?
            .into_iter()
            .find(|inv| inv.vms.iter().any(|v| v.name == vm.as_str()))
            .map(|inv| inv.credential);
        match in_inventory {
            Some(c) => Ok(c),
            None => self
                .catalog
                .last_job_credential(vm)?
                .ok_or_else(|| HubError::NoCredentialForVm { vm: vm.clone() }),
        }
    }

    fn credential_record(
        &self,
        name: &CredentialName,
    ) -> Result<sendense_catalog::CredentialRecord, HubError> {
        self.catalog.credential(name)?.ok_or_else(|| {
            HubError::Catalog(CatalogError::CredentialNotFound { name: name.clone() })
        })
    }

    /// The (existing) agent a credential names.
    fn agent_of(&self, credential: &CredentialName) -> Result<AgentName, HubError> {
        let agent = self.credential_record(credential)?.agent.ok_or_else(|| {
            HubError::CredentialHasNoAgent {
                name: credential.clone(),
            }
        })?;
        if self.catalog.agent(&agent)?.is_none() {
            return Err(HubError::CredentialAgentUnknown {
                name: credential.clone(),
                agent,
            });
        }
        Ok(agent)
    }

    /// What the agent is handed for `job`: with its credential's password, since the job's
    /// agent is the one asking.
    fn hand_out(&self, job: &JobRecord) -> Result<AgentJob, HubError> {
        let credential = match (&job.credential, &job.agent) {
            (Some(name), Some(agent)) => Some(self.credentials.for_agent(name, agent)?),
            _ => None,
        };
        Ok(AgentJob {
            job_id: job.job_id.clone(),
            kind: job.kind,
            vm: job.vm_path.clone(),
            backup_type: job.backup_type,
            credential,
            attempt: job.attempt,
            lease_seconds: LEASE_SECONDS,
            restore: job.restore.clone(),
        })
    }

    /// Fails a job just claimed that cannot be handed out (its credential changed agent, lost
    /// its trust choice, ...).
    fn fail_unstartable(&self, job: &JobRecord, error: &HubError) {
        let message = sendense_io::error_chain(error);
        tracing::error!(job_id = %job.job_id, error = %message, "job cannot be handed out: failed");
        let now = Timestamp::now();
        let failed = self.catalog.update_job(&job.job_id, |r| {
            r.status = JobStatus::Failed;
            r.lease_until = None;
            r.finished_at = Some(now);
            r.error = Some(message);
            Ok::<_, CatalogError>(())
        });
        match failed {
            Ok(record) => {
                let _ = self.finished.send(record.to_api());
            }
            Err(e) => tracing::error!(job_id = %job.job_id, error = %e, "cannot fail the job"),
        }
    }

    /// Fails the backup `job` was writing, if it is still running at the hub.
    async fn fail_backup_of(&self, job: &JobRecord, reason: &str) {
        let Some(backup_id) = &job.backup_id else {
            return;
        };
        let active = self
            .engine
            .backup(backup_id)
            .is_ok_and(|b| b.status.is_active());
        if active {
            match self.engine.fail_backup(backup_id, reason).await {
                Ok(_) => {
                    tracing::warn!(%backup_id, job_id = %job.job_id, reason, "backup of the job failed at the hub");
                }
                Err(e) => {
                    tracing::warn!(%backup_id, error = %sendense_io::error_chain(&e), "cannot fail the backup of the job");
                }
            }
        }
    }

    /// Records that a job's agent was seen (best effort: a failure only loses the sighting).
    fn seen(&self, job: &JobRecord, now: Timestamp) {
        if let Some(agent) = &job.agent
            && let Err(e) = self.catalog.touch_agent(agent, now, None, None)
        {
            tracing::warn!(%agent, error = %e, "cannot record that the agent was seen");
        }
    }

    fn require(&self, id: &JobId) -> Result<JobRecord, HubError> {
        self.catalog
            .job(id)?
            .ok_or_else(|| HubError::Catalog(CatalogError::JobNotFound { job_id: id.clone() }))
    }

    /// With a hub-wide cap, a job's end frees a place any agent may take: wake every long poll.
    fn wake_all(&self) {
        if self.max_running.is_some() {
            let wakers = self.wakers.lock().unwrap_or_else(PoisonError::into_inner);
            for waker in wakers.values() {
                waker.notify_waiters();
            }
        }
    }

    fn waker(&self, agent: &AgentName) -> Arc<Notify> {
        let mut wakers = self.wakers.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(wakers.entry(agent.clone()).or_default())
    }

    /// Wakes the long polls of a queued job's agent.
    fn wake(&self, job: &JobRecord) {
        if let Some(agent) = &job.agent {
            self.waker(agent).notify_waiters();
        }
    }

    /// Runs catalog work off the async threads.
    async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Self) -> Result<T, HubError> + Send + 'static,
    ) -> Result<T, HubError> {
        let jobs = Arc::clone(self);
        tokio::task::spawn_blocking(move || f(&jobs))
            .await
            .map_err(|_| HubError::Worker)?
    }
}

/// A queued job of `kind` for `agent` with `credential`, queued now.
fn new_job(kind: JobKind, agent: AgentName, credential: CredentialName) -> JobRecord {
    JobRecord {
        agent: Some(agent),
        credential: Some(credential),
        ..JobRecord::queued(kind)
    }
}

fn lease_end(now: Timestamp) -> Timestamp {
    now.saturating_add_seconds(i64::from(LEASE_SECONDS))
}

/// Whether an agent holds the job (running, or cancelled while running and not yet finished).
fn held(record: &JobRecord) -> bool {
    record.lease_until.is_some()
        && matches!(record.status, JobStatus::Running | JobStatus::Cancelled)
}

fn check_owner(caller: &Caller, record: &JobRecord) -> Result<(), HubError> {
    match (caller, &record.agent) {
        (Caller::Admin, _) => Ok(()),
        (Caller::Agent(own), Some(agent)) if own == agent => Ok(()),
        (Caller::Agent(own), _) => Err(HubError::NotYourJob {
            job_id: record.job_id.clone(),
            agent: own.clone(),
        }),
    }
}

fn wrong_status(record: &JobRecord, expected: &'static str) -> HubError {
    HubError::JobWrongStatus {
        job_id: record.job_id.clone(),
        status: record.status,
        expected,
    }
}

/// Checks the long poll's query; answers the wait in seconds.
fn check_next_query(query: &NextJobQuery) -> Result<u32, HubError> {
    let wait = query.wait.unwrap_or(0);
    if wait > MAX_WAIT_SECONDS {
        return Err(HubError::InvalidInput {
            field: "wait",
            reason: "must be 0 to 60 seconds",
        });
    }
    if query.slots.is_some_and(|s| s == 0 || s > MAX_SLOTS) {
        return Err(HubError::InvalidInput {
            field: "slots",
            reason: "must be 1 to 64",
        });
    }
    if query.version.as_ref().is_some_and(|v| {
        v.is_empty() || v.len() > MAX_VERSION_LEN || !v.bytes().all(|b| b.is_ascii_graphic())
    }) {
        return Err(HubError::InvalidInput {
            field: "version",
            reason: "must be 1 to 64 printable ASCII characters",
        });
    }
    Ok(wait)
}

/// Progress with the average rate since `started` and the time left at that rate.
pub(crate) fn progress(
    started: Timestamp,
    now: Timestamp,
    reported: HeartbeatProgress,
) -> JobProgress {
    let elapsed = u64::try_from(now.unix_seconds().saturating_sub(started.unix_seconds()))
        .unwrap_or(0)
        .max(1);
    let done = reported.bytes_done;
    #[allow(clippy::cast_precision_loss)] // a rate for display
    let mb_per_s = done as f64 / 1e6 / elapsed as f64;
    let eta_seconds = (done > 0 && reported.bytes_total >= done).then(|| {
        let left = u128::from(reported.bytes_total - done);
        u64::try_from(left * u128::from(elapsed) / u128::from(done)).unwrap_or(u64::MAX)
    });
    JobProgress {
        bytes_done: done,
        bytes_total: reported.bytes_total,
        mb_per_s,
        eta_seconds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_unix_seconds(1_800_000_000 + secs).unwrap()
    }

    #[test]
    fn progress_rate_and_eta_from_start() {
        let p = progress(
            at(0),
            at(10),
            HeartbeatProgress {
                bytes_done: 50_000_000,
                bytes_total: 200_000_000,
            },
        );

        assert_eq!(
            (p.mb_per_s, p.eta_seconds, p.bytes_done),
            (5.0, Some(30), 50_000_000)
        );
    }

    #[test]
    fn progress_nothing_done_has_no_eta() {
        let p = progress(at(0), at(0), HeartbeatProgress::default());

        assert_eq!((p.mb_per_s, p.eta_seconds), (0.0, None));
    }

    #[test]
    fn next_query_wait_over_limit_refused() {
        let err = check_next_query(&NextJobQuery {
            wait: Some(61),
            ..NextJobQuery::default()
        })
        .unwrap_err();

        assert!(err.to_string().contains("wait"), "{err}");
    }
}
