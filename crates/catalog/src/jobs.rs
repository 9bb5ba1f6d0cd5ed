//! Agents, jobs and inventories (DESIGN.md "Agents and jobs"): the hub's side of the appliance
//! agents that connect out, the jobs it hands them, and the VMs they report.
//!
//! Tables (added in [`SCHEMA_VERSION`](crate::SCHEMA_VERSION) 3; a version 1 or 2 file is
//! upgraded in place by creating them, empty):
//!
//! | table | key | value |
//! |---|---|---|
//! | `agents` | agent name | JSON [`AgentRecord`] |
//! | `agent_tokens` | hex SHA-256 of an agent's token | agent name |
//! | `jobs` | job id | JSON [`JobRecord`] |
//! | `job_order` | job seq | job id: every job in creation order |
//! | `vm_jobs` | (VM name, job seq) | job id: a VM's jobs in creation order |
//! | `job_queue` | (agent name, job seq) | job id: the agent's `queued` jobs, oldest first |
//! | `job_leases` | job id | lease end (Unix seconds): jobs an agent holds |
//! | `active_backup_jobs` | VM name | id of its one `queued` or `running` backup job |
//! | `hub_job_queue` | job seq | job id: `queued` jobs the hub runs itself (no agent: `prune`, `verify`), oldest first |
//! | `active_restores` | target VM name | id of the one `queued` or `running` restore job to that name |
//! | `inventories` | credential name | JSON [`Inventory`] |
//!
//! The index tables are derived from the job records: every write of a job goes through one
//! function that removes the old record's index entries and adds the new one's, in the same
//! write transaction as the record (`hub_job_queue` was added later: a file written before
//! holds no job without an agent, so creating it empty at open is the whole upgrade; likewise
//! `active_restores`, since no file written before holds a restore job). So a VM has at most one queued or running backup job (the
//! insert into `active_backup_jobs` refuses a second, naming the first), a job is in its
//! agent's queue exactly while it is `queued`, and it holds a lease exactly while its record
//! has `lease_until`.
//!
//! Secrets are stored only as SHA-256 hashes (hex) the hub computes: enrollment tokens and agent
//! tokens are 256-bit random values, so a fast hash is the right one; hashes are compared in
//! time independent of where they differ.

use redb::{
    Durability, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, Table, TableDefinition, WriteTransaction,
};
use sendense_types::api::BackupType;
use sendense_types::{
    AgentName, BackupId, CredentialName, Inventory, JobId, JobKind, JobProgress, JobQuery,
    JobStatus, PolicyName, RestoreJob, Retention, Timestamp, VmName,
};
use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, META, decode, encode, get_json};
use crate::error::CatalogError;

const AGENTS: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("agents");
const AGENT_TOKENS: TableDefinition<'static, &str, &str> = TableDefinition::new("agent_tokens");
const JOBS: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("jobs");
const JOB_ORDER: TableDefinition<'static, u64, &str> = TableDefinition::new("job_order");
const VM_JOBS: TableDefinition<'static, (&str, u64), &str> = TableDefinition::new("vm_jobs");
const JOB_QUEUE: TableDefinition<'static, (&str, u64), &str> = TableDefinition::new("job_queue");
const JOB_LEASES: TableDefinition<'static, &str, i64> = TableDefinition::new("job_leases");
const ACTIVE_BACKUP_JOBS: TableDefinition<'static, &str, &str> =
    TableDefinition::new("active_backup_jobs");
const INVENTORIES: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("inventories");
const HUB_JOB_QUEUE: TableDefinition<'static, u64, &str> = TableDefinition::new("hub_job_queue");
const ACTIVE_RESTORES: TableDefinition<'static, &str, &str> =
    TableDefinition::new("active_restores");

const NEXT_JOB_SEQ_KEY: &str = "next_job_seq";

type Result<T, E = CatalogError> = std::result::Result<T, E>;

/// An agent as stored: its enrollment state and what it last reported.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// The agent's name.
    pub name: AgentName,
    /// Hex SHA-256 of its one-time enrollment token.
    pub enrollment_token_sha256: String,
    /// When the enrollment token stops being accepted.
    pub enrollment_expires_at: Timestamp,
    /// Whether the enrollment token was used (it is good for one enrollment).
    pub enrolled: bool,
    /// Hex SHA-256 of the agent's bearer token, once enrolled.
    pub agent_token_sha256: Option<String>,
    /// Hex SHA-256 of its client certificate (DER), once enrolled.
    pub cert_sha256: Option<String>,
    /// The agent's version, as it last reported it.
    pub version: Option<String>,
    /// Its job slots, as it last reported them.
    pub slots: Option<u32>,
    /// When it last asked for work or sent a heartbeat.
    pub last_seen: Option<Timestamp>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it enrolled.
    pub enrolled_at: Option<Timestamp>,
}

impl std::fmt::Debug for AgentRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentRecord")
            .field("name", &self.name)
            .field("enrolled", &self.enrolled)
            .field("enrollment_expires_at", &self.enrollment_expires_at)
            .field("version", &self.version)
            .field("slots", &self.slots)
            .field("last_seen", &self.last_seen)
            .finish_non_exhaustive()
    }
}

/// What an enrollment stores: the agent's token hash and certificate fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrollment {
    /// Hex SHA-256 of the enrollment token the agent presented.
    pub enrollment_token_sha256: String,
    /// Hex SHA-256 of the agent's new bearer token.
    pub agent_token_sha256: String,
    /// Hex SHA-256 of the certificate issued to it.
    pub cert_sha256: String,
}

/// A job as stored. `seq` orders jobs (set by [`Catalog::create_job`]); the index tables follow
/// the other fields (see the module documentation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job's id.
    pub job_id: JobId,
    /// Creation order, assigned by the catalog.
    pub seq: u64,
    /// What it does.
    pub kind: JobKind,
    /// The VM (backup jobs).
    pub vm_name: Option<VmName>,
    /// How the agent finds the VM in vCenter: its inventory path when known, else its name.
    pub vm_path: Option<String>,
    /// Where it is.
    pub status: JobStatus,
    /// The agent that runs it.
    pub agent: Option<AgentName>,
    /// The vCenter credential it runs with.
    pub credential: Option<CredentialName>,
    /// The backup type asked for (backup jobs).
    pub backup_type: Option<BackupType>,
    /// The policy that queued it.
    pub policy: Option<PolicyName>,
    /// Which attempt this is (1 for the first).
    pub attempt: u32,
    /// Not handed out before this time (retries).
    pub not_before: Option<Timestamp>,
    /// While an agent holds it: when its lease lapses unless renewed.
    pub lease_until: Option<Timestamp>,
    /// Progress as last reported.
    pub progress: JobProgress,
    /// The backup it made or works on.
    pub backup_id: Option<BackupId>,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
    /// When it was queued.
    pub queued_at: Timestamp,
    /// When an agent took it.
    pub started_at: Option<Timestamp>,
    /// When it ended.
    pub finished_at: Option<Timestamp>,
    /// A prune job: the retention it applies.
    #[serde(default)]
    pub retention: Option<Retention>,
    /// A prune job: the points it removes, newest first.
    #[serde(default)]
    pub remove: Vec<BackupId>,
    /// What a job the hub ran itself did, in words.
    #[serde(default)]
    pub result: Option<String>,
    /// A restore job: what to restore and where (handed to the agent as
    /// [`sendense_types::AgentJob::restore`]); `backup_id` is its point.
    #[serde(default)]
    pub restore: Option<Box<RestoreJob>>,
    /// A copy job: the object-store target it copies to.
    #[serde(default)]
    pub target: Option<sendense_types::TargetName>,
}

impl JobRecord {
    /// A new job of `kind`, queued now, with a fresh id and nothing else set (the catalog
    /// assigns `seq` when it stores it).
    #[must_use]
    pub fn queued(kind: JobKind) -> Self {
        Self {
            job_id: JobId::random(),
            seq: 0,
            kind,
            vm_name: None,
            vm_path: None,
            status: JobStatus::Queued,
            agent: None,
            credential: None,
            backup_type: None,
            policy: None,
            attempt: 1,
            not_before: None,
            lease_until: None,
            progress: JobProgress::default(),
            backup_id: None,
            error: None,
            queued_at: Timestamp::now(),
            started_at: None,
            finished_at: None,
            retention: None,
            remove: Vec::new(),
            result: None,
            restore: None,
            target: None,
        }
    }

    /// The API form.
    #[must_use]
    pub fn to_api(&self) -> sendense_types::Job {
        sendense_types::Job {
            job_id: self.job_id.clone(),
            kind: self.kind,
            vm_name: self.vm_name.clone(),
            status: self.status,
            backup_id: self.backup_id.clone(),
            agent: self.agent.clone(),
            progress: self.progress,
            error: self.error.clone(),
            queued_at: self.queued_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
            backup_type: self.backup_type,
            credential: self.credential.clone(),
            policy: self.policy.clone(),
            attempt: self.attempt,
            result: self.result.clone(),
        }
    }
}

/// What [`Catalog::claim_job`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    /// The job handed out (now `running` with a lease), if one was due.
    pub job: Option<JobRecord>,
    /// The earliest `not_before` of the agent's queued jobs not yet due.
    pub next_due: Option<Timestamp>,
}

impl Catalog {
    /// Creates an agent awaiting enrollment, or gives a not yet enrolled one a new token.
    ///
    /// # Errors
    /// [`CatalogError::AgentExists`] when an agent of that name has enrolled.
    pub fn create_agent(
        &self,
        name: &AgentName,
        enrollment_token_sha256: String,
        expires_at: Timestamp,
        now: Timestamp,
    ) -> Result<AgentRecord> {
        self.write_jobs(|t| {
            let existing: Option<AgentRecord> = get_json(&t.agents, "agents", name.as_str())?;
            if existing.as_ref().is_some_and(|a| a.enrolled) {
                return Err(CatalogError::AgentExists {
                    agent: name.clone(),
                });
            }
            let record = AgentRecord {
                name: name.clone(),
                enrollment_token_sha256,
                enrollment_expires_at: expires_at,
                enrolled: false,
                agent_token_sha256: None,
                cert_sha256: None,
                version: None,
                slots: None,
                last_seen: None,
                created_at: existing.map_or(now, |e| e.created_at),
                enrolled_at: None,
            };
            t.agents.insert(name.as_str(), encode(&record).as_slice())?;
            Ok(record)
        })
    }

    /// Checks an enrollment token without using it: the agent exists, has not enrolled, its
    /// token has not expired at `now` and hashes to `enrollment_token_sha256`.
    ///
    /// # Errors
    /// [`CatalogError::EnrollmentRefused`] (unknown agent or wrong token),
    /// [`CatalogError::EnrollmentExpired`], [`CatalogError::AlreadyEnrolled`].
    pub fn check_enrollment(
        &self,
        name: &AgentName,
        enrollment_token_sha256: &str,
        now: Timestamp,
    ) -> Result<AgentRecord> {
        let txn = self.db.begin_read()?;
        let agents = txn.open_table(AGENTS)?;
        let record = get_json(&agents, "agents", name.as_str())?;
        check_enrollment(name, record, enrollment_token_sha256, now)
    }

    /// Enrolls an agent: checks its token as [`Catalog::check_enrollment`] does and, in the
    /// same transaction, marks the token used and stores the agent's token hash and
    /// certificate fingerprint.
    ///
    /// # Errors
    /// As [`Catalog::check_enrollment`]; nothing is changed then.
    pub fn enroll_agent(
        &self,
        name: &AgentName,
        enrollment: Enrollment,
        now: Timestamp,
    ) -> Result<AgentRecord> {
        self.write_jobs(|t| {
            let record = get_json(&t.agents, "agents", name.as_str())?;
            let mut record =
                check_enrollment(name, record, &enrollment.enrollment_token_sha256, now)?;
            record.enrolled = true;
            record.agent_token_sha256 = Some(enrollment.agent_token_sha256.clone());
            record.cert_sha256 = Some(enrollment.cert_sha256);
            record.enrolled_at = Some(now);
            t.agents.insert(name.as_str(), encode(&record).as_slice())?;
            t.agent_tokens
                .insert(enrollment.agent_token_sha256.as_str(), name.as_str())?;
            Ok(record)
        })
    }

    /// The enrolled agent whose bearer token hashes to `agent_token_sha256`.
    ///
    /// # Errors
    /// Storage or corruption errors.
    pub fn agent_by_token(&self, agent_token_sha256: &str) -> Result<Option<AgentRecord>> {
        let txn = self.db.begin_read()?;
        let tokens = txn.open_table(AGENT_TOKENS)?;
        let Some(name) = tokens
            .get(agent_token_sha256)?
            .map(|v| v.value().to_owned())
        else {
            return Ok(None);
        };
        let agents = txn.open_table(AGENTS)?;
        let record: Option<AgentRecord> = get_json(&agents, "agents", &name)?;
        Ok(record.filter(|r| {
            r.agent_token_sha256
                .as_deref()
                .is_some_and(|h| hashes_equal(h, agent_token_sha256))
        }))
    }

    /// One agent.
    ///
    /// # Errors
    /// Storage or corruption errors.
    pub fn agent(&self, name: &AgentName) -> Result<Option<AgentRecord>> {
        let txn = self.db.begin_read()?;
        let agents = txn.open_table(AGENTS)?;
        get_json(&agents, "agents", name.as_str())
    }

    /// Removes an agent and its bearer token (it can no longer ask for work or report);
    /// answers what it was. The caller checks that nothing still needs it.
    ///
    /// # Errors
    /// [`CatalogError::AgentNotFound`]; storage errors.
    pub fn delete_agent(&self, name: &AgentName) -> Result<AgentRecord> {
        self.write_jobs(|t| {
            let record: AgentRecord =
                get_json(&t.agents, "agents", name.as_str())?.ok_or_else(|| {
                    CatalogError::AgentNotFound {
                        agent: name.clone(),
                    }
                })?;
            t.agents.remove(name.as_str())?;
            if let Some(token) = &record.agent_token_sha256 {
                t.agent_tokens.remove(token.as_str())?;
            }
            Ok(record)
        })
    }

    /// Every agent, by name.
    ///
    /// # Errors
    /// Storage or corruption errors.
    pub fn agents(&self) -> Result<Vec<AgentRecord>> {
        let txn = self.db.begin_read()?;
        let agents = txn.open_table(AGENTS)?;
        agents
            .iter()?
            .map(|entry| {
                let (key, value) = entry?;
                decode("agents", key.value(), value.value())
            })
            .collect()
    }

    /// Records that an agent was seen at `now`, with the version and slots it reported (kept
    /// when it reports none). Not fsynced on its own: a crash may lose the latest sighting.
    ///
    /// # Errors
    /// [`CatalogError::AgentNotFound`]; storage errors.
    pub fn touch_agent(
        &self,
        name: &AgentName,
        now: Timestamp,
        version: Option<&str>,
        slots: Option<u32>,
    ) -> Result<()> {
        self.write_jobs_with(Durability::None, |t| {
            let mut record: AgentRecord = get_json(&t.agents, "agents", name.as_str())?
                .ok_or_else(|| CatalogError::AgentNotFound {
                    agent: name.clone(),
                })?;
            record.last_seen = Some(now);
            if let Some(v) = version {
                record.version = Some(v.to_owned());
            }
            if slots.is_some() {
                record.slots = slots;
            }
            t.agents.insert(name.as_str(), encode(&record).as_slice())?;
            Ok(())
        })
    }

    /// Stores a new job (its `seq` assigned here) and its index entries.
    ///
    /// # Errors
    /// [`CatalogError::JobInProgress`] naming the VM's queued or running backup job;
    /// [`CatalogError::AgentNotFound`] when the job's agent is unknown;
    /// [`CatalogError::JobExists`]; [`CatalogError::InvalidJob`] for a job that is not
    /// `queued` or carries an end.
    pub fn create_job(&self, mut record: JobRecord) -> Result<JobRecord> {
        if record.status != JobStatus::Queued
            || record.finished_at.is_some()
            || record.lease_until.is_some()
        {
            return Err(CatalogError::InvalidJob {
                job_id: record.job_id,
                reason: "a new job must be queued, without lease or end",
            });
        }
        self.write_jobs(|t| {
            if t.jobs.get(record.job_id.as_str())?.is_some() {
                return Err(CatalogError::JobExists {
                    job_id: record.job_id.clone(),
                });
            }
            if let Some(agent) = &record.agent
                && t.agents.get(agent.as_str())?.is_none()
            {
                return Err(CatalogError::AgentNotFound {
                    agent: agent.clone(),
                });
            }
            let seq = t.meta.get(NEXT_JOB_SEQ_KEY)?.map_or(0, |v| v.value());
            t.meta.insert(NEXT_JOB_SEQ_KEY, seq + 1)?;
            record.seq = seq;
            t.order.insert(seq, record.job_id.as_str())?;
            if let Some(vm) = &record.vm_name {
                t.vm_jobs
                    .insert((vm.as_str(), seq), record.job_id.as_str())?;
            }
            t.store_job(None, &record)?;
            Ok(record)
        })
    }

    /// One job.
    ///
    /// # Errors
    /// Storage or corruption errors.
    pub fn job(&self, id: &JobId) -> Result<Option<JobRecord>> {
        let txn = self.db.begin_read()?;
        let jobs = txn.open_table(JOBS)?;
        get_json(&jobs, "jobs", id.as_str())
    }

    /// Jobs matching `query`, newest first.
    ///
    /// # Errors
    /// Storage or corruption errors.
    pub fn jobs(&self, query: &JobQuery) -> Result<Vec<JobRecord>> {
        let t = ReadJobTables::open(&self.db.begin_read()?)?;
        let ids: Vec<String> = match &query.vm_name {
            Some(vm) => t
                .vm_jobs
                .range((vm.as_str(), 0)..=(vm.as_str(), u64::MAX))?
                .rev()
                .map(|e| e.map(|(_, id)| id.value().to_owned()))
                .collect::<Result<_, _>>()?,
            None => t
                .order
                .iter()?
                .rev()
                .map(|e| e.map(|(_, id)| id.value().to_owned()))
                .collect::<Result<_, _>>()?,
        };
        let mut out = Vec::new();
        for id in ids {
            let record = t.require_job(&id)?;
            if query.status.is_none_or(|s| s == record.status)
                && query.kind.is_none_or(|k| k == record.kind)
            {
                out.push(record);
            }
        }
        Ok(out)
    }

    /// The id of the VM's queued or running backup job, if any.
    ///
    /// # Errors
    /// Storage or corruption errors.
    pub fn active_backup_job(&self, vm: &VmName) -> Result<Option<JobId>> {
        let txn = self.db.begin_read()?;
        let active = txn.open_table(ACTIVE_BACKUP_JOBS)?;
        active
            .get(vm.as_str())?
            .map(|v| parse_job_id("active_backup_jobs", vm.as_str(), v.value()))
            .transpose()
    }

    /// Every queued or running restore job, oldest first.
    ///
    /// # Errors
    /// Storage or corruption errors.
    pub fn active_restore_jobs(&self) -> Result<Vec<JobRecord>> {
        let txn = self.db.begin_read()?;
        let active = txn.open_table(ACTIVE_RESTORES)?;
        let jobs = txn.open_table(JOBS)?;
        let mut out = Vec::new();
        for entry in active.iter()? {
            let (_, id) = entry?;
            out.push(require_job(&jobs, id.value())?);
        }
        out.sort_by_key(|r| r.seq);
        Ok(out)
    }

    /// The credential the VM's newest job that named one used.
    ///
    /// # Errors
    /// Storage or corruption errors.
    pub fn last_job_credential(&self, vm: &VmName) -> Result<Option<CredentialName>> {
        let t = ReadJobTables::open(&self.db.begin_read()?)?;
        for entry in t
            .vm_jobs
            .range((vm.as_str(), 0)..=(vm.as_str(), u64::MAX))?
            .rev()
        {
            let (_, id) = entry?;
            if let Some(credential) = t.require_job(id.value())?.credential {
                return Ok(Some(credential));
            }
        }
        Ok(None)
    }

    /// Hands out the agent's oldest queued job due at `now`: in one transaction it becomes
    /// `running`, started at `now`, with its lease ending at `lease_until`. With `max_held`,
    /// nothing is handed out while that many jobs (of any agent) hold a lease: the hub-wide cap
    /// on jobs running at once, checked in the same transaction.
    ///
    /// # Errors
    /// Storage or corruption errors.
    pub fn claim_job(
        &self,
        agent: &AgentName,
        now: Timestamp,
        lease_until: Timestamp,
        max_held: Option<u32>,
    ) -> Result<Claim> {
        self.write_jobs(|t| {
            let mut next_due: Option<Timestamp> = None;
            if let Some(max) = max_held
                && t.leases.len()? >= u64::from(max)
            {
                // The hub-wide cap: as many jobs as it allows are held already.
                return Ok(Claim {
                    job: None,
                    next_due: None,
                });
            }
            let mut found = None;
            for entry in t
                .queue
                .range((agent.as_str(), 0)..=(agent.as_str(), u64::MAX))?
            {
                let (_, id) = entry?;
                let record = require_job(&t.jobs, id.value())?;
                match record.not_before {
                    Some(at) if at > now => {
                        next_due = Some(next_due.map_or(at, |d| d.min(at)));
                    }
                    _ => {
                        found = Some(record);
                        break;
                    }
                }
            }
            let job = match found {
                Some(before) => {
                    let mut after = before.clone();
                    after.status = JobStatus::Running;
                    after.started_at = Some(now);
                    after.lease_until = Some(lease_until);
                    after.progress = JobProgress::default();
                    t.store_job(Some(&before), &after)?;
                    Some(after)
                }
                None => None,
            };
            Ok(Claim { job, next_due })
        })
    }

    /// Loads a job, lets `f` change it, stores it back with its index entries, in one write
    /// transaction; answers the stored record. `f` may refuse (nothing is changed then).
    ///
    /// # Errors
    /// [`CatalogError::JobNotFound`]; what `f` answers; [`CatalogError::InvalidJob`] when `f`
    /// changed the job's id, seq, kind, VM or agent.
    pub fn update_job<E: From<CatalogError>>(
        &self,
        id: &JobId,
        f: impl FnOnce(&mut JobRecord) -> Result<(), E>,
    ) -> Result<JobRecord, E> {
        self.update_job_with_inventory(id, |r| f(r).map(|()| None))
    }

    /// As [`Catalog::update_job`]; the inventory `f` answers (if any) is stored in the same
    /// transaction, replacing the one of its credential.
    ///
    /// # Errors
    /// As [`Catalog::update_job`].
    pub fn update_job_with_inventory<E: From<CatalogError>>(
        &self,
        id: &JobId,
        f: impl FnOnce(&mut JobRecord) -> Result<Option<Inventory>, E>,
    ) -> Result<JobRecord, E> {
        let mut txn = self.db.begin_write().map_err(CatalogError::from)?;
        txn.set_durability(Durability::Immediate)
            .map_err(CatalogError::from)?;
        let after = {
            let mut t = WriteJobTables::open(&txn)?;
            let before: JobRecord = get_json(&t.jobs, "jobs", id.as_str())?
                .ok_or_else(|| CatalogError::JobNotFound { job_id: id.clone() })?;
            let mut after = before.clone();
            let inventory = f(&mut after)?;
            if (
                &after.job_id,
                after.seq,
                after.kind,
                &after.vm_name,
                &after.agent,
            ) != (
                &before.job_id,
                before.seq,
                before.kind,
                &before.vm_name,
                &before.agent,
            ) {
                return Err(CatalogError::InvalidJob {
                    job_id: before.job_id,
                    reason: "a job's id, kind, VM and agent never change",
                }
                .into());
            }
            t.store_job(Some(&before), &after)?;
            if let Some(inventory) = inventory {
                t.inventories
                    .insert(inventory.credential.as_str(), encode(&inventory).as_slice())
                    .map_err(CatalogError::from)?;
            }
            after
        };
        txn.commit().map_err(CatalogError::from)?;
        Ok(after)
    }

    /// The `queued` jobs the hub runs itself (no agent), oldest first.
    ///
    /// # Errors
    /// Storage or corruption errors.
    pub fn queued_hub_jobs(&self) -> Result<Vec<JobRecord>> {
        let txn = self.db.begin_read()?;
        let queue = txn.open_table(HUB_JOB_QUEUE)?;
        let jobs = txn.open_table(JOBS)?;
        queue
            .iter()?
            .map(|entry| {
                let (_, id) = entry?;
                require_job(&jobs, id.value())
            })
            .collect()
    }

    /// Every job an agent holds a lease on (running, or cancelled while running and not yet
    /// finished by its agent), in no particular order.
    ///
    /// # Errors
    /// Storage or corruption errors.
    pub fn leased_jobs(&self) -> Result<Vec<JobRecord>> {
        let t = ReadJobTables::open(&self.db.begin_read()?)?;
        t.leases
            .iter()?
            .map(|entry| {
                let (id, _) = entry?;
                t.require_job(id.value())
            })
            .collect()
    }

    /// Gives every leased job a lease ending at `lease_until` (what the hub does at start, so
    /// an agent that keeps heartbeating across a restart keeps its job); answers how many.
    ///
    /// # Errors
    /// Storage or corruption errors.
    pub fn renew_all_leases(&self, lease_until: Timestamp) -> Result<usize> {
        self.write_jobs(|t| {
            let ids: Vec<String> = t
                .leases
                .iter()?
                .map(|e| e.map(|(id, _)| id.value().to_owned()))
                .collect::<Result<_, _>>()?;
            for id in &ids {
                let before = require_job(&t.jobs, id)?;
                let mut after = before.clone();
                after.lease_until = Some(lease_until);
                t.store_job(Some(&before), &after)?;
            }
            Ok(ids.len())
        })
    }

    /// The inventory last reported for a credential.
    ///
    /// # Errors
    /// Storage or corruption errors.
    pub fn inventory(&self, credential: &CredentialName) -> Result<Option<Inventory>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(INVENTORIES)?;
        get_json(&table, "inventories", credential.as_str())
    }

    /// Every stored inventory, by credential.
    ///
    /// # Errors
    /// Storage or corruption errors.
    pub fn inventories(&self) -> Result<Vec<Inventory>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(INVENTORIES)?;
        table
            .iter()?
            .map(|entry| {
                let (key, value) = entry?;
                decode("inventories", key.value(), value.value())
            })
            .collect()
    }

    fn write_jobs<T>(&self, f: impl FnOnce(&mut WriteJobTables<'_>) -> Result<T>) -> Result<T> {
        self.write_jobs_with(Durability::Immediate, f)
    }

    fn write_jobs_with<T>(
        &self,
        durability: Durability,
        f: impl FnOnce(&mut WriteJobTables<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(durability)?;
        let out = {
            let mut tables = WriteJobTables::open(&txn)?;
            f(&mut tables)?
        };
        txn.commit()?;
        Ok(out)
    }
}

/// Creates the tables of this module (at open, and when upgrading an older file).
pub(crate) fn create_tables(txn: &WriteTransaction) -> Result<()> {
    WriteJobTables::open(txn).map(drop)
}

/// Compares two hex hashes in time independent of where they differ.
fn hashes_equal(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn check_enrollment(
    name: &AgentName,
    record: Option<AgentRecord>,
    enrollment_token_sha256: &str,
    now: Timestamp,
) -> Result<AgentRecord> {
    let refused = || CatalogError::EnrollmentRefused {
        agent: name.clone(),
    };
    let record = record.ok_or_else(refused)?;
    if !hashes_equal(&record.enrollment_token_sha256, enrollment_token_sha256) {
        return Err(refused());
    }
    if record.enrolled {
        return Err(CatalogError::AlreadyEnrolled {
            agent: name.clone(),
        });
    }
    if now > record.enrollment_expires_at {
        return Err(CatalogError::EnrollmentExpired {
            agent: name.clone(),
            expired_at: record.enrollment_expires_at,
        });
    }
    Ok(record)
}

fn parse_job_id(table: &'static str, key: &str, value: &str) -> Result<JobId> {
    value.parse().map_err(|source| CatalogError::CorruptId {
        table,
        key: key.to_owned(),
        source,
    })
}

/// Loads a job an index names; a dangling entry is corruption.
fn require_job(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> Result<JobRecord> {
    get_json(table, "jobs", id)?.ok_or_else(|| CatalogError::DanglingJobIndex {
        job_id: id.to_owned(),
    })
}

struct WriteJobTables<'txn> {
    meta: Table<'txn, &'static str, u64>,
    agents: Table<'txn, &'static str, &'static [u8]>,
    agent_tokens: Table<'txn, &'static str, &'static str>,
    jobs: Table<'txn, &'static str, &'static [u8]>,
    order: Table<'txn, u64, &'static str>,
    vm_jobs: Table<'txn, (&'static str, u64), &'static str>,
    queue: Table<'txn, (&'static str, u64), &'static str>,
    leases: Table<'txn, &'static str, i64>,
    active: Table<'txn, &'static str, &'static str>,
    inventories: Table<'txn, &'static str, &'static [u8]>,
    hub_queue: Table<'txn, u64, &'static str>,
    restores: Table<'txn, &'static str, &'static str>,
}

impl<'txn> WriteJobTables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> Result<Self> {
        Ok(Self {
            meta: txn.open_table(META)?,
            agents: txn.open_table(AGENTS)?,
            agent_tokens: txn.open_table(AGENT_TOKENS)?,
            jobs: txn.open_table(JOBS)?,
            order: txn.open_table(JOB_ORDER)?,
            vm_jobs: txn.open_table(VM_JOBS)?,
            queue: txn.open_table(JOB_QUEUE)?,
            leases: txn.open_table(JOB_LEASES)?,
            active: txn.open_table(ACTIVE_BACKUP_JOBS)?,
            inventories: txn.open_table(INVENTORIES)?,
            hub_queue: txn.open_table(HUB_JOB_QUEUE)?,
            restores: txn.open_table(ACTIVE_RESTORES)?,
        })
    }

    /// Writes `after` and moves its index entries from what `before` had to what it has now.
    fn store_job(&mut self, before: Option<&JobRecord>, after: &JobRecord) -> Result<()> {
        let id = after.job_id.as_str();
        if let Some(b) = before {
            if let (JobStatus::Queued, Some(agent)) = (b.status, &b.agent) {
                self.queue.remove((agent.as_str(), b.seq))?;
            }
            if b.lease_until.is_some() {
                self.leases.remove(id)?;
            }
            if hub_queued(b) {
                self.hub_queue.remove(b.seq)?;
            }
            if let Some(vm) = active_backup_vm(b) {
                let ours = self
                    .active
                    .get(vm.as_str())?
                    .is_some_and(|v| v.value() == id);
                if ours {
                    self.active.remove(vm.as_str())?;
                }
            }
            if let Some(target) = active_restore_target(b) {
                let ours = self.restores.get(target)?.is_some_and(|v| v.value() == id);
                if ours {
                    self.restores.remove(target)?;
                }
            }
        }
        if let (JobStatus::Queued, Some(agent)) = (after.status, &after.agent) {
            self.queue.insert((agent.as_str(), after.seq), id)?;
        }
        if let Some(lease) = after.lease_until {
            self.leases.insert(id, lease.unix_seconds())?;
        }
        if hub_queued(after) {
            self.hub_queue.insert(after.seq, id)?;
        }
        if let Some(vm) = active_backup_vm(after) {
            if let Some(other) = self.active.get(vm.as_str())?.map(|v| v.value().to_owned()) {
                return Err(CatalogError::JobInProgress {
                    vm: vm.clone(),
                    job_id: parse_job_id("active_backup_jobs", vm.as_str(), &other)?,
                });
            }
            self.active.insert(vm.as_str(), id)?;
        }
        if let Some(target) = active_restore_target(after) {
            if let Some(other) = self.restores.get(target)?.map(|v| v.value().to_owned()) {
                return Err(CatalogError::RestoreInProgress {
                    target: target.to_owned(),
                    job_id: parse_job_id("active_restores", target, &other)?,
                });
            }
            self.restores.insert(target, id)?;
        }
        self.jobs.insert(id, encode(after).as_slice())?;
        Ok(())
    }
}

/// Whether the job waits in the hub's own queue (queued, no agent).
fn hub_queued(record: &JobRecord) -> bool {
    record.status == JobStatus::Queued && record.agent.is_none()
}

/// The VM whose one active backup job this is, if it is one.
fn active_backup_vm(record: &JobRecord) -> Option<&VmName> {
    (record.kind == JobKind::Backup && record.status.is_active())
        .then_some(record.vm_name.as_ref())
        .flatten()
}

/// The target VM name of an active restore job (one active restore per target name).
fn active_restore_target(record: &JobRecord) -> Option<&str> {
    (record.kind == JobKind::Restore && record.status.is_active())
        .then_some(record.restore.as_deref())
        .flatten()
        .map(|r| r.request.vm_name.as_str())
}

struct ReadJobTables {
    jobs: ReadOnlyTable<&'static str, &'static [u8]>,
    order: ReadOnlyTable<u64, &'static str>,
    vm_jobs: ReadOnlyTable<(&'static str, u64), &'static str>,
    leases: ReadOnlyTable<&'static str, i64>,
}

impl ReadJobTables {
    fn open(txn: &ReadTransaction) -> Result<Self> {
        Ok(Self {
            jobs: txn.open_table(JOBS)?,
            order: txn.open_table(JOB_ORDER)?,
            vm_jobs: txn.open_table(VM_JOBS)?,
            leases: txn.open_table(JOB_LEASES)?,
        })
    }

    fn require_job(&self, id: &str) -> Result<JobRecord> {
        require_job(&self.jobs, id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FILE_NAME;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_unix_seconds(1_800_000_000 + secs).unwrap()
    }

    fn agent_name() -> AgentName {
        "a1".parse().unwrap()
    }

    fn catalog_with_agent(dir: &std::path::Path) -> Catalog {
        let catalog = Catalog::open(dir.join(FILE_NAME)).unwrap();
        catalog
            .create_agent(&agent_name(), "aa".repeat(32), at(100), at(0))
            .unwrap();
        catalog
    }

    fn backup_job(vm: &str) -> JobRecord {
        JobRecord {
            job_id: JobId::random(),
            seq: 0,
            kind: JobKind::Backup,
            vm_name: Some(vm.parse().unwrap()),
            vm_path: Some(vm.to_owned()),
            status: JobStatus::Queued,
            agent: Some(agent_name()),
            credential: Some("vc1".parse().unwrap()),
            backup_type: Some(BackupType::Auto),
            policy: None,
            attempt: 1,
            not_before: None,
            lease_until: None,
            progress: JobProgress::default(),
            backup_id: None,
            error: None,
            queued_at: at(1),
            started_at: None,
            finished_at: None,
            retention: None,
            remove: Vec::new(),
            result: None,
            restore: None,
            target: None,
        }
    }

    fn restore_job(target: &str) -> JobRecord {
        let restore: RestoreJob = serde_json::from_value(serde_json::json!({
            "backup_id": "backup-vm1-20261125T000000-000001",
            "vm_config": {
                "version": 1, "name": "vm1", "guest_id": "otherGuest", "firmware": "bios",
                "num_cpus": 1, "cores_per_socket": 1, "memory_mb": 512,
                "controllers": [{"key": 1000, "kind": "lsilogic", "bus_number": 0}],
                "disks": [{"key": 2000, "capacity_bytes": 1_048_576, "controller_key": 1000,
                           "unit_number": 0, "provisioning": "thin"}]
            },
            "request": {"target": "vcenter", "vm_name": target, "datacenter": "dc1",
                        "datastore": "ds1"},
            "disks": [{"disk_key": 2000, "capacity_bytes": 1_048_576}]
        }))
        .unwrap();
        JobRecord {
            kind: JobKind::Restore,
            backup_type: None,
            backup_id: Some(restore.backup_id.clone()),
            restore: Some(Box::new(restore)),
            ..backup_job("vm1")
        }
    }

    #[test]
    fn create_job_second_restore_to_same_name_refused_until_first_ends() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = catalog_with_agent(dir.path());
        let first = catalog.create_job(restore_job("web01-r")).unwrap();
        catalog.create_job(restore_job("other")).unwrap();

        let err = catalog.create_job(restore_job("web01-r")).unwrap_err();
        assert!(
            matches!(&err, CatalogError::RestoreInProgress { target, job_id }
                if target == "web01-r" && *job_id == first.job_id),
            "{err}"
        );
        assert_eq!(catalog.active_restore_jobs().unwrap().len(), 2);
        catalog
            .update_job(&first.job_id, |r| {
                r.status = JobStatus::Cancelled;
                Ok::<_, CatalogError>(())
            })
            .unwrap();

        catalog.create_job(restore_job("web01-r")).unwrap();
        assert_eq!(catalog.active_restore_jobs().unwrap().len(), 2);
    }

    #[test]
    fn create_job_second_backup_of_vm_refused_naming_first() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = catalog_with_agent(dir.path());
        let first = catalog.create_job(backup_job("vm1")).unwrap();

        let err = catalog.create_job(backup_job("vm1")).unwrap_err();

        assert!(
            matches!(&err, CatalogError::JobInProgress { job_id, .. } if *job_id == first.job_id),
            "{err}"
        );
        assert_eq!(catalog.jobs(&JobQuery::default()).unwrap().len(), 1);
    }

    #[test]
    fn claim_job_oldest_due_first_and_not_before_respected() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = catalog_with_agent(dir.path());
        let mut later = backup_job("vm1");
        later.not_before = Some(at(50));
        catalog.create_job(later).unwrap();
        let due = catalog.create_job(backup_job("vm2")).unwrap();

        let claim = catalog
            .claim_job(&agent_name(), at(10), at(100), None)
            .unwrap();

        let job = claim.job.unwrap();
        assert_eq!(
            (job.job_id, job.status, job.lease_until, claim.next_due),
            (due.job_id, JobStatus::Running, Some(at(100)), Some(at(50)))
        );
        let again = catalog
            .claim_job(&agent_name(), at(10), at(100), None)
            .unwrap();
        assert_eq!((again.job, again.next_due), (None, Some(at(50))));
    }

    #[test]
    fn claim_job_holds_back_while_the_hub_wide_cap_is_reached() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = catalog_with_agent(dir.path());
        catalog.create_job(backup_job("vm1")).unwrap();
        catalog.create_job(backup_job("vm2")).unwrap();
        let first = catalog
            .claim_job(&agent_name(), at(2), at(90), Some(1))
            .unwrap();

        let capped = catalog
            .claim_job(&agent_name(), at(2), at(90), Some(1))
            .unwrap();
        let uncapped = catalog
            .claim_job(&agent_name(), at(2), at(90), Some(2))
            .unwrap();

        assert!(first.job.is_some());
        assert!(capped.job.is_none());
        assert_eq!(
            uncapped.job.map(|j| j.vm_name.map(String::from)),
            Some(Some("vm2".to_owned()))
        );
    }

    #[test]
    fn update_job_finished_frees_vm_and_lease() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = catalog_with_agent(dir.path());
        catalog.create_job(backup_job("vm1")).unwrap();
        let job = catalog
            .claim_job(&agent_name(), at(2), at(90), None)
            .unwrap()
            .job
            .unwrap();

        catalog
            .update_job(&job.job_id, |r| {
                r.status = JobStatus::Completed;
                r.lease_until = None;
                Ok::<_, CatalogError>(())
            })
            .unwrap();

        assert_eq!(
            (
                catalog.active_backup_job(&"vm1".parse().unwrap()).unwrap(),
                catalog.leased_jobs().unwrap().len(),
            ),
            (None, 0)
        );
        catalog.create_job(backup_job("vm1")).unwrap();
    }

    #[test]
    fn update_job_refusal_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = catalog_with_agent(dir.path());
        let job = catalog.create_job(backup_job("vm1")).unwrap();

        let err = catalog
            .update_job(&job.job_id, |r| {
                r.agent = Some("other".parse().unwrap());
                Ok::<_, CatalogError>(())
            })
            .unwrap_err();

        assert!(matches!(err, CatalogError::InvalidJob { .. }), "{err}");
        assert_eq!(catalog.job(&job.job_id).unwrap(), Some(job));
    }

    #[test]
    fn enroll_agent_token_single_use_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = catalog_with_agent(dir.path());
        let enrollment = |token: &str| Enrollment {
            enrollment_token_sha256: token.to_owned(),
            agent_token_sha256: "bb".repeat(32),
            cert_sha256: "cc".repeat(32),
        };

        let wrong = catalog
            .enroll_agent(&agent_name(), enrollment(&"ab".repeat(32)), at(1))
            .unwrap_err();
        let expired = catalog
            .enroll_agent(&agent_name(), enrollment(&"aa".repeat(32)), at(101))
            .unwrap_err();
        catalog
            .enroll_agent(&agent_name(), enrollment(&"aa".repeat(32)), at(2))
            .unwrap();
        let replayed = catalog
            .enroll_agent(&agent_name(), enrollment(&"aa".repeat(32)), at(3))
            .unwrap_err();

        assert!(
            matches!(wrong, CatalogError::EnrollmentRefused { .. })
                && matches!(expired, CatalogError::EnrollmentExpired { .. })
                && matches!(replayed, CatalogError::AlreadyEnrolled { .. }),
            "{wrong} / {expired} / {replayed}"
        );
        assert_eq!(
            catalog
                .agent_by_token(&"bb".repeat(32))
                .unwrap()
                .map(|a| a.name),
            Some(agent_name())
        );
    }

    #[test]
    fn jobs_listed_newest_first_and_filtered() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = catalog_with_agent(dir.path());
        let a = catalog.create_job(backup_job("vm1")).unwrap();
        let b = catalog.create_job(backup_job("vm2")).unwrap();

        let all = catalog.jobs(&JobQuery::default()).unwrap();
        let vm1 = catalog
            .jobs(&JobQuery {
                vm_name: Some("vm1".parse().unwrap()),
                ..JobQuery::default()
            })
            .unwrap();

        assert_eq!(
            (
                all.iter().map(|j| j.job_id.clone()).collect::<Vec<_>>(),
                vm1.iter().map(|j| j.job_id.clone()).collect::<Vec<_>>()
            ),
            (vec![b.job_id, a.job_id.clone()], vec![a.job_id])
        );
    }

    #[test]
    fn renew_all_leases_moves_every_lease() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = catalog_with_agent(dir.path());
        catalog.create_job(backup_job("vm1")).unwrap();
        catalog
            .claim_job(&agent_name(), at(2), at(90), None)
            .unwrap();

        let renewed = catalog.renew_all_leases(at(500)).unwrap();

        assert_eq!(
            (renewed, catalog.leased_jobs().unwrap()[0].lease_until,),
            (1, Some(at(500)))
        );
    }

    #[test]
    fn queued_hub_jobs_only_agentless_queued_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = catalog_with_agent(dir.path());
        catalog.create_job(backup_job("vm1")).unwrap();
        let hub_job = |vm: &str| JobRecord {
            kind: JobKind::Prune,
            agent: None,
            credential: None,
            backup_type: None,
            remove: vec!["backup-vm9-20240101T000000-000001".parse().unwrap()],
            ..backup_job(vm)
        };
        let first = catalog.create_job(hub_job("vm2")).unwrap();
        let second = catalog.create_job(hub_job("vm3")).unwrap();

        let before = catalog.queued_hub_jobs().unwrap();
        catalog
            .update_job(&first.job_id, |r| {
                r.status = JobStatus::Running;
                Ok::<_, CatalogError>(())
            })
            .unwrap();
        let after = catalog.queued_hub_jobs().unwrap();

        assert_eq!(
            (
                before.iter().map(|j| j.job_id.clone()).collect::<Vec<_>>(),
                after.iter().map(|j| j.job_id.clone()).collect::<Vec<_>>(),
                before[0].remove.len(),
            ),
            (
                vec![first.job_id, second.job_id.clone()],
                vec![second.job_id],
                1
            )
        );
    }
}
