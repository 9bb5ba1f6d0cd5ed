//! Policies: which VMs a policy's `vms` patterns name, resolved against an inventory at each
//! run.
//!
//! A pattern with a `/` is an inventory path (`dc1/vm/web01`, `dc1/vm/prod/*`), matched
//! against each VM's path one `/`-separated segment at a time: `*` matches any run of
//! characters within a segment, `?` one character, and a segment `**` any number of segments
//! (`dc1/**/db*`). A pattern without `/` is a name glob (`db*`, `web0?`), matched against VM
//! names, where `*` matches any run. Matching is case-sensitive (vCenter names are); leading
//! and trailing `/` are ignored. A pattern that matches nothing is reported back, not an error:
//! the inventory changes, and the run goes on with the VMs that exist.
//!
//! Cost: exact paths and names are looked up in an index; each glob scans the inventory once,
//! O(pattern x name) per VM at worst.
//!
//! [`answer`] turns a stored policy into the API's answer with its `next_run`.
//!
//! [`Policies`] is the hub's side: the policy API over the catalog, runs that queue backup jobs
//! through [`Jobs`], the scheduler's tick ([`Policies::tick_at`]) and retries of failed jobs
//! ([`Policies::job_ended`]). A run resolves the policy's patterns over its credential's
//! inventory (a policy naming an `agent` instead: over that agent's own NBD sources, see
//! [`plan_agent_run`], its jobs queued for that agent without a credential) and keeps the VMs it cannot queue yet (`max_parallel` of its jobs queued or running
//! at once) in the policy's record, so they survive a restart; each tick and each ended job
//! releases more. A VM that already has a queued or running backup job is skipped (its job
//! covers it). A failed job is queued again `retry.delay_seconds` after it failed, up to
//! `retry.count` times, as attempt 2, 3, ...; a VM whose chain holds `max_chain_length` points
//! gets a full. When a run is over (no VM waiting, none of its backup jobs queued or running),
//! the backups it completed get their maintenance through [`HubJobs`]: a `verify` job each
//! (`verify_after_backup`), then a `prune` job of each VM with the policy's `retention`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use jiff::Zoned;
use jiff::tz::TimeZone;
use sendense_calendar::{CalendarError, CalendarEvent};
use sendense_catalog::{Catalog, CatalogError, CompletedBackup, PolicyRecord};
use sendense_types::api::BackupType;
use sendense_types::jobs::{InventoryVm, Policy, PolicyList, PolicyRequest, PolicyRun};
use sendense_types::{
    AgentName, Job, JobId, JobKind, JobQuery, JobStatus, PolicyName, Timestamp, VmName,
};

use crate::error::HubError;
use crate::hub_jobs::HubJobs;
use crate::jobs::{Jobs, QueueBackup};
use crate::scheduler::{self, Clock, Decision};

/// The answer of `GET /api/v1/policies/{name}`: the stored request, when it was created and
/// last ran, and its next run in the hub's zone `tz` (the first schedule time after the last
/// run, or after its creation if it never ran; `null` when disabled or never again).
///
/// # Errors
/// [`CalendarError`] if the stored schedule does not parse (it was checked when stored).
pub fn answer(
    request: &PolicyRequest,
    created_at: Timestamp,
    last_run: Option<Timestamp>,
    tz: &TimeZone,
) -> Result<Policy, CalendarError> {
    let schedule = CalendarEvent::parse(request.schedule())?;
    let since = scheduler::zoned(last_run.unwrap_or(created_at), tz);
    let next_run =
        scheduler::next_run(&schedule, &since, request.enabled()).map(|z| scheduler::timestamp(&z));
    Ok(Policy {
        name: request.name().clone(),
        schedule: request.schedule().to_owned(),
        credential: request.credential().cloned(),
        agent: request.agent().cloned(),
        vms: request.vms().to_vec(),
        max_parallel: request.max_parallel(),
        retry: request.retry(),
        retention: request.retention(),
        max_chain_length: request.max_chain_length(),
        verify_after_backup: request.verify_after_backup(),
        enabled: request.enabled(),
        copy_to: request.copy_to().cloned(),
        keep_local_last: request.keep_local_last(),
        next_run,
        last_run,
        created_at,
    })
}

/// The VMs a policy's patterns name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolution {
    /// The VMs, each once: in the order of the first pattern naming them, then inventory order.
    pub vms: Vec<InventoryVm>,
    /// The patterns that matched no VM, in the policy's order.
    pub unmatched: Vec<String>,
}

/// The hub's policies (see the module documentation). Share one per hub (`Arc`).
#[derive(Debug)]
pub struct Policies {
    catalog: Arc<Catalog>,
    jobs: Arc<Jobs>,
    clock: Arc<dyn Clock>,
    /// Where the prune and verify jobs after a run go (`None`: no maintenance after runs).
    hub_jobs: Option<Arc<HubJobs>>,
    /// Serializes runs, releases and retries, so two of them never queue the same place.
    runs: Mutex<()>,
}

/// What one scheduler tick did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TickReport {
    /// Policies whose schedule was due: a run started.
    pub started: Vec<PolicyName>,
    /// Jobs queued (new runs and VMs released from earlier runs).
    pub queued: Vec<JobId>,
}

impl Policies {
    /// The policies in `catalog`, queuing through `jobs`, reading the time (and the hub's
    /// zone, in which schedules are read) from `clock`.
    #[must_use]
    pub fn new(catalog: Arc<Catalog>, jobs: Arc<Jobs>, clock: Arc<dyn Clock>) -> Self {
        Self {
            catalog,
            jobs,
            clock,
            hub_jobs: None,
            runs: Mutex::new(()),
        }
    }

    /// The same policies queuing, after each run, a prune (the policy's `retention`) of every
    /// VM the run backed up and, with `verify_after_backup`, a verification of each new point,
    /// through `hub_jobs`.
    #[must_use]
    pub fn with_hub_jobs(mut self, hub_jobs: Arc<HubJobs>) -> Self {
        self.hub_jobs = Some(hub_jobs);
        self
    }

    /// The clock the scheduler reads.
    #[must_use]
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// `POST /api/v1/policies`: stores a new policy.
    ///
    /// # Errors
    /// [`HubError::InvalidSchedule`] (400, naming the bad part); an unknown credential (400);
    /// a policy of that name exists (409); catalog errors.
    pub fn create(&self, request: &PolicyRequest) -> Result<Policy, HubError> {
        self.check(request)?;
        let record = self.catalog.create_policy(request, self.now())?;
        tracing::info!(policy = %record.name(), schedule = record.request.schedule(), "policy created");
        self.answer(&record)
    }

    /// `PUT /api/v1/policies/{name}`: replaces a policy's settings (keeping when it was
    /// created and last ran).
    ///
    /// # Errors
    /// As [`Policies::create`]; [`HubError::PolicyNameMismatch`] (400) when the body names
    /// another policy; unknown policy (404).
    pub fn replace(&self, name: &PolicyName, request: &PolicyRequest) -> Result<Policy, HubError> {
        if request.name() != name {
            return Err(HubError::PolicyNameMismatch {
                path: name.clone(),
                body: request.name().clone(),
            });
        }
        self.check(request)?;
        let record = self.catalog.replace_policy(request, self.now())?;
        tracing::info!(policy = %name, "policy replaced");
        self.answer(&record)
    }

    /// `GET /api/v1/policies/{name}`.
    ///
    /// # Errors
    /// Unknown policy (404); catalog errors.
    pub fn get(&self, name: &PolicyName) -> Result<Policy, HubError> {
        self.answer(&self.require(name)?)
    }

    /// `GET /api/v1/policies`: every policy, by name.
    ///
    /// # Errors
    /// Catalog errors.
    pub fn list(&self) -> Result<PolicyList, HubError> {
        let policies = self
            .catalog
            .policies()?
            .iter()
            .map(|r| self.answer(r))
            .collect::<Result<_, _>>()?;
        Ok(PolicyList { policies })
    }

    /// `DELETE /api/v1/policies/{name}`: removes the policy; jobs it queued stay.
    ///
    /// # Errors
    /// Unknown policy (404); catalog errors.
    pub fn delete(&self, name: &PolicyName) -> Result<Policy, HubError> {
        let _runs = self.lock();
        let record = self.catalog.delete_policy(name)?;
        tracing::info!(policy = %name, "policy deleted");
        self.answer(&record)
    }

    /// `POST /api/v1/policies/{name}/run`: runs the policy now, whatever its schedule and
    /// whether it is enabled; the run counts as its last run.
    ///
    /// # Errors
    /// Unknown policy (404); catalog errors.
    pub fn run_now(&self, name: &PolicyName) -> Result<PolicyRun, HubError> {
        let _runs = self.lock();
        let record = self.require(name)?;
        self.start_run(&record, self.now())
    }

    /// The scheduler's tick at `now` (the hub ticks every minute with its clock's time; tests
    /// pass theirs): starts a run of every enabled policy whose schedule came due since its
    /// last run (once, however many slots passed), then releases waiting VMs of every policy.
    ///
    /// # Errors
    /// Catalog errors (a policy that cannot run is logged and skipped).
    pub fn tick_at(&self, now: &Zoned) -> Result<TickReport, HubError> {
        let _runs = self.lock();
        let at = scheduler::timestamp(now);
        let mut report = TickReport::default();
        for record in self.catalog.policies()? {
            if !record.request.enabled() {
                continue;
            }
            let schedule = match CalendarEvent::parse(record.request.schedule()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(policy = %record.name(), error = %e, "stored schedule does not parse: policy skipped");
                    continue;
                }
            };
            let since = scheduler::zoned(
                record.last_run.unwrap_or(record.created_at),
                now.time_zone(),
            );
            if let Decision::Run { due, missed, .. } = scheduler::decide(&schedule, &since, now) {
                tracing::info!(policy = %record.name(), due = %due, missed, "policy run due");
                let run = self.start_run(&record, at)?;
                report.started.push(record.name().clone());
                report.queued.extend(run.job_ids);
            }
        }
        for record in self.catalog.policies()? {
            if !record.pending.is_empty() {
                report.queued.extend(self.release(record.name())?);
            }
        }
        Ok(report)
    }

    /// Called with every job that ended: a failed backup job of a policy is queued again
    /// after the policy's retry delay, within its retry count (the new job's id is answered);
    /// any ended job of a policy frees a place, so waiting VMs of that policy are released.
    ///
    /// # Errors
    /// Catalog errors.
    pub fn job_ended(&self, job: &Job) -> Result<Option<JobId>, HubError> {
        let Some(policy) = &job.policy else {
            return Ok(None);
        };
        let _runs = self.lock();
        let Some(record) = self.catalog.policy(policy)? else {
            return Ok(None);
        };
        let mut retried = None;
        if job.kind == JobKind::Backup
            && job.status == JobStatus::Failed
            && let Some(vm) = &job.vm_name
        {
            let failed_at = job.finished_at.unwrap_or_else(|| self.now());
            if let Some(at) = scheduler::retry_at(record.request.retry(), job.attempt, failed_at) {
                let queued = self.jobs.queue_backup(QueueBackup {
                    vm: vm.clone(),
                    backup_type: job.backup_type.unwrap_or(BackupType::Auto),
                    credential: job.credential.clone(),
                    // A job without a credential read the agent's own NBD sources.
                    agent: if job.credential.is_none() {
                        job.agent.clone()
                    } else {
                        None
                    },
                    policy: Some(policy.clone()),
                    attempt: job.attempt.saturating_add(1),
                    not_before: Some(at),
                });
                match queued {
                    Ok(id) => {
                        tracing::info!(policy = %policy, vm = %vm, job_id = %id, attempt = job.attempt.saturating_add(1), not_before = %at, "failed job retried");
                        retried = Some(id);
                    }
                    Err(e) => {
                        tracing::warn!(policy = %policy, vm = %vm, error = %sendense_io::error_chain(&e), "cannot retry the failed job");
                    }
                }
            }
        }
        if self.hub_jobs.is_some()
            && job.kind == JobKind::Backup
            && job.status == JobStatus::Completed
            && let Some(vm) = &job.vm_name
        {
            let done = CompletedBackup {
                vm_name: vm.clone(),
                backup_id: job.backup_id.clone(),
            };
            self.catalog.update_policy(policy, |r| {
                r.completed.push(done);
                Ok(())
            })?;
        }
        self.release(policy)?;
        self.maintain_after_run(policy)?;
        Ok(retried)
    }

    /// Once a run is over (no VM waiting, no backup job of the policy queued or running),
    /// queues the maintenance of what it backed up: a verification of each new point
    /// (`verify_after_backup`), then a prune of each VM with the policy's retention (when it
    /// keeps something: an empty retention never prunes). Each is queued once: the backups are
    /// taken from the policy's record in the same transaction that checks them.
    fn maintain_after_run(&self, name: &PolicyName) -> Result<(), HubError> {
        let Some(hub_jobs) = &self.hub_jobs else {
            return Ok(());
        };
        let Some(record) = self.catalog.policy(name)? else {
            return Ok(());
        };
        if record.completed.is_empty() || !record.pending.is_empty() || self.active_jobs(name)? > 0
        {
            return Ok(());
        }
        let done = self
            .catalog
            .update_policy(name, |r| Ok(std::mem::take(&mut r.completed)))?;
        if record.request.verify_after_backup() {
            for backup_id in done.iter().filter_map(|d| d.backup_id.as_ref()) {
                if let Err(e) = hub_jobs.queue_verify_for(backup_id, Some(name.clone())) {
                    tracing::warn!(policy = %name, %backup_id, error = %sendense_io::error_chain(&e), "cannot queue the verification of a new point");
                }
            }
        }
        if let Some(target) = record.request.copy_to() {
            for backup_id in done.iter().filter_map(|d| d.backup_id.as_ref()) {
                if let Err(e) = hub_jobs.queue_copy(backup_id, target, Some(name.clone())) {
                    tracing::warn!(policy = %name, %backup_id, %target, error = %sendense_io::error_chain(&e), "cannot queue the copy of a new point");
                }
            }
        }
        let retention = record.request.retention();
        if sendense_prune::keeps_something(&retention) {
            let mut vms: Vec<&VmName> = Vec::new();
            for d in &done {
                if !vms.contains(&&d.vm_name) {
                    vms.push(&d.vm_name);
                }
            }
            for vm in vms {
                match hub_jobs.prune_for_policy(vm, &retention, name) {
                    Ok(answer) => {
                        tracing::info!(policy = %name, %vm, remove = answer.remove.len(), job_id = ?answer.job_id, "prune after the policy's run");
                    }
                    Err(e) => {
                        tracing::warn!(policy = %name, %vm, error = %sendense_io::error_chain(&e), "cannot prune after the policy's run");
                    }
                }
            }
        }
        Ok(())
    }

    /// Checks what the types cannot: the schedule's grammar and the existence of the credential
    /// or agent.
    fn check(&self, request: &PolicyRequest) -> Result<(), HubError> {
        CalendarEvent::parse(request.schedule()).map_err(|source| HubError::InvalidSchedule {
            schedule: request.schedule().to_owned(),
            source,
        })?;
        if let Some(credential) = request.credential()
            && self.catalog.credential(credential)?.is_none()
        {
            return Err(HubError::PolicyCredentialUnknown {
                name: credential.clone(),
            });
        }
        if let Some(agent) = request.agent()
            && self.catalog.agent(agent)?.is_none()
        {
            return Err(HubError::UnknownAgent {
                agent: agent.clone(),
            });
        }
        Ok(())
    }

    /// Starts a run of `record` at `now`: plans its VMs, appends them to its waiting ones,
    /// records the run, and releases what may start.
    fn start_run(&self, record: &PolicyRecord, now: Timestamp) -> Result<PolicyRun, HubError> {
        let name = record.name().clone();
        let plan = match (record.request.credential(), record.request.agent()) {
            (Some(credential), _) => {
                let inventory = self
                    .catalog
                    .inventory(credential)?
                    .filter(|inv| inv.refreshed_at.is_some());
                plan_run(
                    record.request.vms(),
                    inventory.as_ref().map(|inv| inv.vms.as_slice()),
                )
            }
            (None, Some(agent)) => plan_agent_run(record.request.vms(), &self.agent_vms(agent)?),
            (None, None) => plan_run(record.request.vms(), None),
        };
        if !plan.unmatched.is_empty() {
            tracing::warn!(policy = %name, unmatched = ?plan.unmatched, "patterns matched no VM");
        }
        if !plan.invalid.is_empty() {
            tracing::warn!(policy = %name, names = ?plan.invalid, "inventory names that are not valid VM names left out");
        }
        let vms = plan.vms;
        self.catalog.update_policy(&name, |r| {
            for vm in &vms {
                if !r.pending.contains(vm) {
                    r.pending.push(vm.clone());
                }
            }
            r.last_run = Some(now);
            Ok(())
        })?;
        let (job_ids, skipped) = self.release_with_skips(&name)?;
        tracing::info!(policy = %name, queued = job_ids.len(), skipped = skipped.len(), "policy run started");
        Ok(PolicyRun {
            job_ids,
            unmatched: plan.unmatched,
            skipped,
        })
    }

    fn release(&self, name: &PolicyName) -> Result<Vec<JobId>, HubError> {
        self.release_with_skips(name).map(|(ids, _)| ids)
    }

    /// Queues waiting VMs of the policy while fewer than `max_parallel` of its jobs are queued
    /// or running. A VM with a backup job already queued or running is skipped (answered).
    fn release_with_skips(&self, name: &PolicyName) -> Result<(Vec<JobId>, Vec<VmName>), HubError> {
        let Some(record) = self.catalog.policy(name)? else {
            return Ok((Vec::new(), Vec::new()));
        };
        let active = self.active_jobs(name)?;
        let mut queue = scheduler::RunQueue::new(record.pending.iter().cloned());
        let mut free = usize::try_from(record.request.max_parallel())
            .unwrap_or(usize::MAX)
            .saturating_sub(active);
        let (mut queued, mut skipped) = (Vec::new(), Vec::new());
        while free > 0 {
            let Some(vm) = queue.release(0, 1, 1).pop() else {
                break;
            };
            match self.jobs.queue_backup(QueueBackup {
                backup_type: self.backup_type(&vm, record.request.max_chain_length())?,
                vm: vm.clone(),
                credential: record.request.credential().cloned(),
                agent: record.request.agent().cloned(),
                policy: Some(name.clone()),
                attempt: 1,
                not_before: None,
            }) {
                Ok(id) => {
                    queued.push(id);
                    free -= 1;
                }
                Err(HubError::Catalog(CatalogError::JobInProgress { job_id, .. })) => {
                    tracing::info!(policy = %name, vm = %vm, %job_id, "VM has a backup job already: skipped");
                    skipped.push(vm);
                }
                Err(e) => {
                    tracing::warn!(policy = %name, vm = %vm, error = %sendense_io::error_chain(&e), "cannot queue the VM's backup: skipped");
                    skipped.push(vm);
                }
            }
        }
        let released: Vec<VmName> = record
            .pending
            .iter()
            .take(record.pending.len() - queue.len())
            .cloned()
            .collect();
        if !released.is_empty() {
            self.catalog.update_policy(name, |r| {
                r.pending.retain(|vm| !released.contains(vm));
                Ok(())
            })?;
        }
        Ok((queued, skipped))
    }

    /// The VMs `agent` backed up from its own NBD sources before (its backup jobs without a
    /// credential), each once, oldest first: what the globs of an agent's policy match.
    fn agent_vms(&self, agent: &AgentName) -> Result<Vec<VmName>, HubError> {
        let mut vms: Vec<VmName> = Vec::new();
        let jobs = self.catalog.jobs(&JobQuery {
            kind: Some(JobKind::Backup),
            ..JobQuery::default()
        })?;
        for job in jobs.iter().rev() {
            if job.credential.is_none()
                && job.agent.as_ref() == Some(agent)
                && let Some(vm) = &job.vm_name
                && !vms.contains(vm)
            {
                vms.push(vm.clone());
            }
        }
        Ok(vms)
    }

    /// Backup jobs of the policy queued or running now (its prune and verify jobs, which the
    /// hub runs itself, take no place).
    fn active_jobs(&self, name: &PolicyName) -> Result<usize, HubError> {
        let mut count = 0;
        for status in [JobStatus::Queued, JobStatus::Running] {
            count += self
                .catalog
                .jobs(&JobQuery {
                    status: Some(status),
                    kind: Some(JobKind::Backup),
                    ..JobQuery::default()
                })?
                .iter()
                .filter(|j| j.policy.as_ref() == Some(name))
                .count();
        }
        Ok(count)
    }

    /// `full` once the VM's chain holds `max_chain_length` points, else `auto`.
    fn backup_type(
        &self,
        vm: &VmName,
        max_chain_length: Option<u32>,
    ) -> Result<BackupType, HubError> {
        let Some(max) = max_chain_length else {
            return Ok(BackupType::Auto);
        };
        let len = match self.catalog.chain(vm) {
            Ok(chain) => chain.len(),
            // Not registered yet: its first backup is a full anyway.
            Err(CatalogError::VmNotFound { .. }) => 0,
            Err(e) => return Err(e.into()),
        };
        Ok(if len >= usize::try_from(max).unwrap_or(usize::MAX) {
            BackupType::Full
        } else {
            BackupType::Auto
        })
    }

    fn require(&self, name: &PolicyName) -> Result<PolicyRecord, HubError> {
        self.catalog
            .policy(name)?
            .ok_or_else(|| HubError::Catalog(CatalogError::PolicyNotFound { name: name.clone() }))
    }

    fn answer(&self, record: &PolicyRecord) -> Result<Policy, HubError> {
        let tz = self.clock.now().time_zone().clone();
        answer(&record.request, record.created_at, record.last_run, &tz).map_err(|source| {
            HubError::InvalidSchedule {
                schedule: record.request.schedule().to_owned(),
                source,
            }
        })
    }

    fn now(&self) -> Timestamp {
        scheduler::timestamp(&self.clock.now())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.runs.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The VMs one run of a policy backs up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunPlan {
    /// The VMs, each once, in the order of the first pattern naming them.
    pub vms: Vec<VmName>,
    /// Patterns that matched no VM (a warning for the caller, not a failure).
    pub unmatched: Vec<String>,
    /// Inventory names the hub cannot take as VM names (logged and left out).
    pub invalid: Vec<String>,
}

/// Plans a run of a policy with `patterns` over its credential's `inventory`. Without an
/// inventory yet (the agent never reported one), patterns naming one VM exactly (no `/`, `*`
/// or `?`) are taken as VM names, and the job queue finds their agent; the rest are unmatched.
#[must_use]
pub fn plan_run(patterns: &[String], inventory: Option<&[InventoryVm]>) -> RunPlan {
    let mut plan = RunPlan::default();
    let names: Vec<String> = match inventory {
        Some(inventory) => {
            let resolution = resolve_vms(patterns, inventory);
            plan.unmatched = resolution.unmatched;
            resolution.vms.into_iter().map(|vm| vm.name).collect()
        }
        None => {
            let (exact, rest): (Vec<&String>, Vec<&String>) =
                patterns.iter().partition(|p| !p.contains(['/', '*', '?']));
            plan.unmatched = rest.into_iter().cloned().collect();
            let mut names: Vec<String> = Vec::new();
            for name in exact {
                if !names.contains(name) {
                    names.push(name.clone());
                }
            }
            names
        }
    };
    for name in names {
        match VmName::try_from(name.as_str()) {
            Ok(vm) => plan.vms.push(vm),
            Err(_) => plan.invalid.push(name),
        }
    }
    plan
}

/// Plans a run of a policy of an agent's own NBD sources: the agent, not the hub, knows its
/// sources, so a pattern naming one VM exactly (no `/`, `*` or `?`) is taken as a VM name
/// whatever the hub saw before; a name glob matches the VMs the agent backed up before
/// (`known`); a path pattern matches nothing (NBD sources have no inventory paths).
#[must_use]
pub fn plan_agent_run(patterns: &[String], known: &[VmName]) -> RunPlan {
    let mut plan = RunPlan::default();
    let mut names: Vec<String> = Vec::new();
    for pattern in patterns {
        let matched: Vec<String> = if pattern.contains('/') {
            Vec::new()
        } else if pattern.contains(['*', '?']) {
            let glob: Vec<char> = pattern.chars().collect();
            known
                .iter()
                .filter(|vm| wildcard(&glob, &vm.as_str().chars().collect::<Vec<_>>()))
                .map(|vm| vm.as_str().to_owned())
                .collect()
        } else {
            vec![pattern.clone()]
        };
        if matched.is_empty() {
            plan.unmatched.push(pattern.clone());
        }
        for name in matched {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    for name in names {
        match VmName::try_from(name.as_str()) {
            Ok(vm) => plan.vms.push(vm),
            Err(_) => plan.invalid.push(name),
        }
    }
    plan
}

/// Resolves `patterns` (a policy's `vms`) against `inventory`.
#[must_use]
pub fn resolve_vms(patterns: &[String], inventory: &[InventoryVm]) -> Resolution {
    let mut by_path: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut by_name: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, vm) in inventory.iter().enumerate() {
        by_path.entry(trim_slashes(&vm.path)).or_default().push(i);
        by_name.entry(vm.name.as_str()).or_default().push(i);
    }
    let mut taken = vec![false; inventory.len()];
    let mut out = Resolution::default();
    for pattern in patterns {
        let pattern_glob = Pattern::new(pattern);
        let matches: Vec<usize> = match &pattern_glob {
            Pattern::ExactPath(p) => by_path.get(p).cloned().unwrap_or_default(),
            Pattern::ExactName(n) => by_name.get(n).cloned().unwrap_or_default(),
            Pattern::Glob { .. } => inventory
                .iter()
                .enumerate()
                .filter(|(_, vm)| pattern_glob.matches(vm))
                .map(|(i, _)| i)
                .collect(),
        };
        if matches.is_empty() {
            out.unmatched.push(pattern.clone());
        }
        for i in matches {
            if let (Some(seen), Some(vm)) = (taken.get_mut(i), inventory.get(i))
                && !*seen
            {
                *seen = true;
                out.vms.push(vm.clone());
            }
        }
    }
    out
}

/// Whether `pattern` (a path or name glob, see the module documentation) names `vm`.
#[must_use]
pub fn pattern_matches(pattern: &str, vm: &InventoryVm) -> bool {
    Pattern::new(pattern).matches(vm)
}

/// A pattern, classified once.
#[derive(Debug)]
enum Pattern<'a> {
    /// A path without wildcards.
    ExactPath(&'a str),
    /// A name without wildcards.
    ExactName(&'a str),
    /// Anything with `*` or `?`.
    Glob {
        /// Matched against the path (the pattern has a `/`), else against the name.
        path: bool,
        /// The pattern's segments (one for a name glob), as characters.
        segments: Vec<Vec<char>>,
    },
}

impl<'a> Pattern<'a> {
    fn new(pattern: &'a str) -> Self {
        let path = pattern.contains('/');
        let glob = pattern.contains(['*', '?']);
        match (path, glob) {
            (true, false) => Self::ExactPath(trim_slashes(pattern)),
            (false, false) => Self::ExactName(pattern),
            (true, true) => Self::Glob {
                path,
                segments: trim_slashes(pattern)
                    .split('/')
                    .map(|s| s.chars().collect())
                    .collect(),
            },
            (false, true) => Self::Glob {
                path,
                segments: vec![pattern.chars().collect()],
            },
        }
    }

    fn matches(&self, vm: &InventoryVm) -> bool {
        match self {
            Self::ExactPath(p) => trim_slashes(&vm.path) == *p,
            Self::ExactName(n) => vm.name == *n,
            Self::Glob {
                path: false,
                segments,
            } => {
                let name: Vec<char> = vm.name.chars().collect();
                segments.first().is_some_and(|p| wildcard(p, &name))
            }
            Self::Glob {
                path: true,
                segments,
            } => {
                let path: Vec<Vec<char>> = trim_slashes(&vm.path)
                    .split('/')
                    .map(|s| s.chars().collect())
                    .collect();
                segments_match(segments, &path)
            }
        }
    }
}

fn trim_slashes(s: &str) -> &str {
    s.trim_matches('/')
}

/// `*` (any run) and `?` (one character) glob matching; greedy with one backtrack point, so
/// O(pattern x text) at worst and linear in the common cases.
fn wildcard(pattern: &[char], text: &[char]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == '?' || Some(&c) == text.get(t) => {
                p += 1;
                t += 1;
            }
            _ => match star {
                // Let the last `*` swallow one more character and retry after it.
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern
        .get(p..)
        .is_some_and(|rest| rest.iter().all(|&c| c == '*'))
}

/// Path segments against pattern segments, where a `**` segment spans any number of segments:
/// a table of "pattern from i matches path from j", filled from the ends.
fn segments_match(pattern: &[Vec<char>], path: &[Vec<char>]) -> bool {
    let (np, ns) = (pattern.len(), path.len());
    let width = ns + 1;
    let mut table = vec![false; (np + 1) * width];
    if let Some(end) = table.get_mut(np * width + ns) {
        *end = true;
    }
    for i in (0..np).rev() {
        for j in (0..=ns).rev() {
            let at = |i: usize, j: usize| table.get(i * width + j).copied().unwrap_or(false);
            let value = match pattern.get(i) {
                Some(seg) if seg.as_slice() == ['*', '*'] => {
                    at(i + 1, j) || (j < ns && at(i, j + 1))
                }
                Some(seg) => path
                    .get(j)
                    .is_some_and(|s| wildcard(seg, s) && at(i + 1, j + 1)),
                None => false,
            };
            if let Some(cell) = table.get_mut(i * width + j) {
                *cell = value;
            }
        }
    }
    table.first().copied().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(name: &str, path: &str) -> InventoryVm {
        InventoryVm {
            name: name.to_owned(),
            path: path.to_owned(),
        }
    }

    fn inventory() -> Vec<InventoryVm> {
        vec![
            vm("web01", "dc1/vm/web01"),
            vm("web02", "dc1/vm/web02"),
            vm("db1", "dc1/vm/prod/db1"),
            vm("db2", "dc2/vm/db2"),
            vm("Db3", "dc2/vm/legacy/Db3"),
        ]
    }

    fn names(r: &Resolution) -> Vec<&str> {
        r.vms.iter().map(|v| v.name.as_str()).collect()
    }

    fn patterns(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| (*s).to_owned()).collect()
    }

    fn request(schedule: &str, enabled: bool) -> PolicyRequest {
        serde_json::from_value(serde_json::json!({
            "name": "nightly", "schedule": schedule, "credential": "vc1",
            "vms": ["dc1/vm/web01", "db*"], "max_parallel": 2,
            "retry": {"count": 2, "delay_seconds": 600},
            "retention": {"keep_last": 3, "keep_daily": 7, "keep_weekly": 4, "keep_monthly": 6},
            "max_chain_length": 30, "verify_after_backup": true, "enabled": enabled
        }))
        .expect("DESIGN.md's example policy")
    }

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_unix_seconds(secs).expect("valid")
    }

    #[test]
    fn answer_of_a_new_policy_runs_next_at_the_first_slot_after_creation() {
        // Created Monday 2026-01-05 12:00 UTC; the hub's zone is UTC+1.
        let created = ts(1_767_614_400);
        let tz = TimeZone::fixed(jiff::tz::offset(1));

        let p = answer(&request("mon..fri 22:00", true), created, None, &tz).expect("parses");

        // Monday 22:00 at UTC+1 is 21:00 UTC.
        assert_eq!(
            (p.next_run, p.last_run, p.created_at, p.max_parallel),
            (Some(ts(1_767_614_400 + 9 * 3600)), None, created, 2)
        );
    }

    #[test]
    fn answer_counts_from_the_last_run_and_shows_no_next_run_when_disabled() {
        let created = ts(1_767_614_400);
        let last = ts(1_767_614_400 + 9 * 3600 + 30);
        let tz = TimeZone::UTC;

        let enabled = answer(&request("mon..fri 22:00", true), created, Some(last), &tz);
        let disabled = answer(&request("mon..fri 22:00", false), created, Some(last), &tz);

        assert_eq!(
            (
                enabled.map(|p| p.next_run),
                disabled.map(|p| (p.next_run, p.last_run))
            ),
            (
                Ok(Some(ts(1_767_614_400 + 10 * 3600))),
                Ok((None, Some(last)))
            )
        );
    }

    #[test]
    fn plan_over_an_inventory_takes_the_resolved_names() {
        let plan = plan_run(&patterns(&["db*", "nothing*"]), Some(&inventory()));

        assert_eq!(
            plan,
            RunPlan {
                vms: vec![vm_name("db1"), vm_name("db2")],
                unmatched: patterns(&["nothing*"]),
                invalid: vec![],
            }
        );
    }

    #[test]
    fn plan_without_an_inventory_takes_exact_names_only() {
        let plan = plan_run(&patterns(&["web01", "db*", "dc1/vm/x", "web01"]), None);

        assert_eq!(
            plan,
            RunPlan {
                vms: vec![vm_name("web01")],
                unmatched: patterns(&["db*", "dc1/vm/x"]),
                invalid: vec![],
            }
        );
    }

    #[test]
    fn plan_of_an_agent_takes_exact_names_and_globs_over_known_vms() {
        let known = vec![vm_name("kvm01"), vm_name("kvm02"), vm_name("web9")];

        let plan = plan_agent_run(
            &patterns(&["new-vm", "kvm*", "kvm01", "host/vm/x", "zz?"]),
            &known,
        );

        assert_eq!(
            plan,
            RunPlan {
                vms: vec![vm_name("new-vm"), vm_name("kvm01"), vm_name("kvm02")],
                unmatched: patterns(&["host/vm/x", "zz?"]),
                invalid: vec![],
            }
        );
    }

    #[test]
    fn plan_leaves_out_inventory_names_that_are_not_vm_names() {
        let inv = vec![vm("ok1", "dc/vm/ok1"), vm("web 01", "dc/vm/web 01")];

        let plan = plan_run(&patterns(&["dc/vm/*"]), Some(&inv));

        assert_eq!(
            (plan.vms, plan.invalid),
            (vec![vm_name("ok1")], vec!["web 01".to_owned()])
        );
    }

    fn vm_name(name: &str) -> VmName {
        VmName::try_from(name).expect("a valid VM name")
    }

    #[test]
    fn design_example_resolves_a_path_and_a_name_glob() {
        let r = resolve_vms(&patterns(&["dc1/vm/web01", "db*"]), &inventory());

        assert_eq!(
            (names(&r), r.unmatched.clone()),
            (vec!["web01", "db1", "db2"], vec![])
        );
    }

    #[test]
    fn unmatched_patterns_are_reported_and_the_rest_resolve() {
        let r = resolve_vms(
            &patterns(&["dc9/vm/nothing", "web0?", "zz*", "ghost"]),
            &inventory(),
        );

        assert_eq!(
            (names(&r), r.unmatched.clone()),
            (
                vec!["web01", "web02"],
                patterns(&["dc9/vm/nothing", "zz*", "ghost"])
            )
        );
    }

    #[test]
    fn vms_named_by_several_patterns_are_listed_once_in_first_pattern_order() {
        let r = resolve_vms(&patterns(&["db2", "*", "web01"]), &inventory());

        assert_eq!(
            (names(&r), r.unmatched.clone()),
            (vec!["db2", "web01", "web02", "db1", "Db3"], vec![])
        );
    }

    #[test]
    fn path_star_stays_within_one_segment_and_double_star_spans_segments() {
        let inv = inventory();
        let r_star = resolve_vms(&patterns(&["dc1/vm/*"]), &inv);
        let r_deep = resolve_vms(&patterns(&["dc1/vm/*/*"]), &inv);
        let r_any = resolve_vms(&patterns(&["dc2/**"]), &inv);
        let r_mid = resolve_vms(&patterns(&["**/db?"]), &inv);

        assert_eq!(
            (names(&r_star), names(&r_deep), names(&r_any), names(&r_mid)),
            (
                vec!["web01", "web02"],
                vec!["db1"],
                vec!["db2", "Db3"],
                vec!["db1", "db2"]
            )
        );
    }

    #[test]
    fn matching_is_case_sensitive_and_ignores_outer_slashes() {
        let inv = inventory();

        assert_eq!(
            (
                names(&resolve_vms(&patterns(&["db3", "D*"]), &inv)),
                names(&resolve_vms(&patterns(&["/dc1/vm/web02/"]), &inv)),
            ),
            (vec!["Db3"], vec!["web02"])
        );
    }

    #[test]
    fn wildcard_handles_backtracking_and_trailing_stars() {
        let m = |p: &str, t: &str| {
            wildcard(
                &p.chars().collect::<Vec<_>>(),
                &t.chars().collect::<Vec<_>>(),
            )
        };

        assert_eq!(
            [
                m("a*b*c", "aXbYbZc"),
                m("a*b*c", "aXbYbZ"),
                m("*", ""),
                m("?", ""),
                m("**x**", "abxcd"),
                m("wéb?", "wébé"),
                m("", "a"),
            ],
            [true, false, true, false, true, true, false]
        );
    }

    #[test]
    fn empty_inventory_leaves_every_pattern_unmatched() {
        let r = resolve_vms(&patterns(&["a", "b*"]), &[]);

        assert_eq!((r.vms, r.unmatched), (vec![], patterns(&["a", "b*"])));
    }

    #[test]
    fn long_pathological_glob_finishes() {
        let pattern = "*a".repeat(200) + "b";
        let name = "a".repeat(500);

        assert!(!pattern_matches(&pattern, &vm(&name, "dc/vm/x")));
    }
}
