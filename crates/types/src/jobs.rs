//! The JSON bodies of the hub-driven part of the API (DESIGN.md "Agents and jobs", "Policies
//! and schedules"): agents and their enrollment, jobs and what an agent is handed to run,
//! policies.
//!
//! Requests refuse unknown fields and validate while they are deserialized, as in [`crate::api`].
//! Responses are plain structs with public fields. Secrets (enrollment and agent tokens, the
//! vCenter password handed to an agent) never show in `Debug`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::api::{BackupType, check_text, empty_as_none};
use crate::error::TypesError;
use crate::names::{AgentName, BackupId, CredentialName, JobId, PolicyName, VmName};
use crate::timestamp::Timestamp;

/// Longest long poll an agent may ask for (`GET .../jobs/next?wait=`), in seconds.
pub const MAX_WAIT_SECONDS: u32 = 60;
/// How long a running job's lease lasts after its last heartbeat, in seconds.
pub const LEASE_SECONDS: u32 = 90;
/// An agent seen within this many seconds is `online`.
pub const ONLINE_SECONDS: u32 = 60;
/// How long an enrollment token stays valid, in seconds (24 h).
pub const ENROLLMENT_TTL_SECONDS: u32 = 24 * 3600;
/// Most job slots an agent may declare.
pub const MAX_SLOTS: u32 = 64;
/// Longest CSR accepted at enrollment, in bytes.
pub const MAX_CSR_LEN: usize = 16 * 1024;
/// Longest token (enrollment or agent) accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 256;
/// Longest error text of a finished job, in bytes (longer ones are cut by the hub).
pub const MAX_JOB_ERROR_LEN: usize = 4096;
/// Longest inventory path or VM pattern, in bytes.
pub const MAX_VM_PATTERN_LEN: usize = 512;
/// Most VM patterns one policy may list.
pub const MAX_POLICY_VMS: usize = 1024;
/// Most VMs one inventory may hold.
pub const MAX_INVENTORY_VMS: usize = 100_000;
/// Longest calendar-event schedule, in bytes.
pub const MAX_SCHEDULE_LEN: usize = 256;
/// Most retries a policy may ask for.
pub const MAX_RETRIES: u32 = 10;
/// Longest delay between retries, in seconds (one day).
pub const MAX_RETRY_DELAY_SECONDS: u64 = 86_400;
/// Most jobs one policy may run at once.
pub const MAX_PARALLEL: u32 = 64;

// ---------------------------------------------------------------------------------------------
// Agents

/// `POST /api/v1/agents` `{name}` (admin): creates an agent awaiting enrollment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateAgentRequest {
    /// The agent's name.
    pub name: AgentName,
}

/// The answer of `POST /api/v1/agents`: `{name, enrollment_token, expires_at}`. The token is
/// good for one enrollment, until `expires_at`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentEnrollment {
    /// The agent's name.
    pub name: AgentName,
    /// The one-time enrollment token (a secret: give it to the appliance only).
    pub enrollment_token: String,
    /// When the token stops being accepted.
    pub expires_at: Timestamp,
}

impl fmt::Debug for AgentEnrollment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentEnrollment")
            .field("name", &self.name)
            .field("enrollment_token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// `POST /api/v1/agents/enroll` `{name, enrollment_token, csr_pem}` (no bearer token): the
/// agent proves it holds the one-time token and sends a PKCS#10 CSR for its NBD client
/// certificate (its key never leaves the appliance).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "EnrollWire", into = "EnrollWire")]
pub struct EnrollRequest {
    name: AgentName,
    enrollment_token: String,
    csr_pem: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrollWire {
    name: AgentName,
    enrollment_token: String,
    csr_pem: String,
}

impl TryFrom<EnrollWire> for EnrollRequest {
    type Error = TypesError;

    fn try_from(wire: EnrollWire) -> Result<Self, Self::Error> {
        Self::new(wire.name, wire.enrollment_token, wire.csr_pem)
    }
}

impl From<EnrollRequest> for EnrollWire {
    fn from(req: EnrollRequest) -> Self {
        Self {
            name: req.name,
            enrollment_token: req.enrollment_token,
            csr_pem: req.csr_pem,
        }
    }
}

impl fmt::Debug for EnrollRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollRequest")
            .field("name", &self.name)
            .field("enrollment_token", &"<redacted>")
            .field("csr_pem", &format_args!("{} bytes", self.csr_pem.len()))
            .finish()
    }
}

impl EnrollRequest {
    /// A validated request: a token of 1 to [`MAX_TOKEN_LEN`] printable ASCII characters, a CSR
    /// of at most [`MAX_CSR_LEN`] bytes holding a `CERTIFICATE REQUEST` PEM block.
    ///
    /// # Errors
    /// [`TypesError::InvalidField`] naming the field.
    pub fn new(
        name: AgentName,
        enrollment_token: String,
        csr_pem: String,
    ) -> Result<Self, TypesError> {
        check_token("enrollment_token", &enrollment_token)?;
        if csr_pem.len() > MAX_CSR_LEN || !csr_pem.contains("-----BEGIN CERTIFICATE REQUEST-----") {
            return Err(TypesError::InvalidField {
                field: "csr_pem",
                reason: "must be up to 16 KiB of PEM holding a CERTIFICATE REQUEST block",
            });
        }
        Ok(Self {
            name,
            enrollment_token,
            csr_pem,
        })
    }

    /// The agent's name.
    #[must_use]
    pub fn name(&self) -> &AgentName {
        &self.name
    }

    /// The one-time token.
    #[must_use]
    pub fn enrollment_token(&self) -> &str {
        &self.enrollment_token
    }

    /// The PEM CSR.
    #[must_use]
    pub fn csr_pem(&self) -> &str {
        &self.csr_pem
    }
}

/// The answer of `POST /api/v1/agents/enroll`: `{agent_token, client_cert_pem, ca_cert_pem}`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollResponse {
    /// The agent's own bearer token (a secret: kept 0600 in the agent's state folder).
    pub agent_token: String,
    /// The agent's NBD client certificate, signed by the hub's CA.
    pub client_cert_pem: String,
    /// The hub's CA certificate.
    pub ca_cert_pem: String,
}

impl fmt::Debug for EnrollResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollResponse")
            .field("agent_token", &"<redacted>")
            .field("client_cert_pem", &self.client_cert_pem)
            .field("ca_cert_pem", &self.ca_cert_pem)
            .finish()
    }
}

/// Whether an agent is reachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentState {
    /// Created, not yet enrolled.
    Pending,
    /// Seen within [`ONLINE_SECONDS`].
    Online,
    /// Enrolled, not seen for longer.
    Offline,
}

lowercase_enum!(AgentState, "state", "pending, online or offline", {
    Pending => "pending",
    Online => "online",
    Offline => "offline",
});

/// `GET /api/v1/agents/{name}`: `{name, state, version, slots, running_jobs, last_seen, ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agent {
    /// The agent's name.
    pub name: AgentName,
    /// `online` when seen within 60 s.
    pub state: AgentState,
    /// The agent's version, as it last reported it.
    pub version: Option<String>,
    /// How many jobs it runs at once, as it last reported it.
    pub slots: Option<u32>,
    /// The jobs it runs now.
    pub running_jobs: Vec<JobId>,
    /// When it last asked for work or sent a heartbeat.
    pub last_seen: Option<Timestamp>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it enrolled.
    pub enrolled_at: Option<Timestamp>,
}

/// `{agents: [...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentList {
    /// Every agent, by name.
    pub agents: Vec<Agent>,
}

/// The query of `GET /api/v1/agents/{name}/jobs/next?wait=SECONDS&slots=N&version=V`. `slots`
/// and `version` are optional reports the hub shows in [`Agent`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NextJobQuery {
    /// Long-poll up to this many seconds (at most [`MAX_WAIT_SECONDS`]; 0 answers at once).
    #[serde(default)]
    pub wait: Option<u32>,
    /// The agent's slot count.
    #[serde(default)]
    pub slots: Option<u32>,
    /// The agent's version.
    #[serde(default)]
    pub version: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Jobs

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// Back a VM up.
    Backup,
    /// Restore a backup.
    Restore,
    /// Apply a retention policy.
    Prune,
    /// Verify a backup's data.
    Verify,
    /// Copy a backup to an object-store target.
    Copy,
    /// List the VMs an agent sees in its vCenter.
    Inventory,
}

lowercase_enum!(JobKind, "kind", "backup, restore, prune, verify, copy or inventory", {
    Backup => "backup",
    Restore => "restore",
    Prune => "prune",
    Verify => "verify",
    Copy => "copy",
    Inventory => "inventory",
});

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Waiting for an agent (or for its retry time).
    Queued,
    /// Handed to an agent, whose heartbeats keep its lease.
    Running,
    /// Done.
    Completed,
    /// Given up (the error says why).
    Failed,
    /// Cancelled by a person.
    Cancelled,
}

lowercase_enum!(JobStatus, "status", "queued, running, completed, failed or cancelled", {
    Queued => "queued",
    Running => "running",
    Completed => "completed",
    Failed => "failed",
    Cancelled => "cancelled",
});

impl JobStatus {
    /// Whether the job is still to run or running (`queued` or `running`).
    #[must_use]
    pub const fn is_active(self) -> bool {
        matches!(self, Self::Queued | Self::Running)
    }
}

/// A job's progress: `{bytes_done, bytes_total, mb_per_s, eta_seconds}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct JobProgress {
    /// Bytes moved so far.
    pub bytes_done: u64,
    /// Bytes to move in all (0 while unknown).
    pub bytes_total: u64,
    /// Average rate since the job started, in MB/s (10^6 bytes).
    pub mb_per_s: f64,
    /// Seconds left at that rate; `null` while unknown.
    pub eta_seconds: Option<u64>,
}

/// A job: `{job_id, kind, vm_name, status, backup_id, agent, progress, error, queued_at,
/// started_at, finished_at}`, plus what it was asked to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// The job's id.
    pub job_id: JobId,
    /// What it does.
    pub kind: JobKind,
    /// The VM it concerns (`null` for inventory jobs).
    pub vm_name: Option<VmName>,
    /// Where it is.
    pub status: JobStatus,
    /// The backup it made or works on, once known.
    pub backup_id: Option<BackupId>,
    /// The agent that runs it (or will).
    pub agent: Option<AgentName>,
    /// Progress, as the agent last reported it.
    pub progress: JobProgress,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
    /// When it was queued.
    pub queued_at: Timestamp,
    /// When an agent took it (the latest attempt).
    pub started_at: Option<Timestamp>,
    /// When it ended.
    pub finished_at: Option<Timestamp>,
    /// The backup type asked for (backup jobs).
    #[serde(default)]
    pub backup_type: Option<BackupType>,
    /// The vCenter credential it runs with.
    #[serde(default)]
    pub credential: Option<CredentialName>,
    /// The policy that queued it, if any.
    #[serde(default)]
    pub policy: Option<PolicyName>,
    /// Which attempt this is (1 for the first run; retries count up).
    #[serde(default)]
    pub attempt: u32,
    /// What a job the hub ran itself (`prune`, `verify`) did, in words: for a prune, the points
    /// removed and those skipped because they became protected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
}

/// `{jobs: [...]}`, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobList {
    /// The jobs.
    pub jobs: Vec<Job>,
}

/// The query of `GET /api/v1/jobs?vm_name=&status=&kind=`; every filter optional, an empty
/// value meaning no filter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobQuery {
    /// Only this VM's jobs.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "empty_as_none"
    )]
    pub vm_name: Option<VmName>,
    /// Only jobs in this state.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "empty_as_none"
    )]
    pub status: Option<JobStatus>,
    /// Only jobs of this kind.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "empty_as_none"
    )]
    pub kind: Option<JobKind>,
}

/// `POST /api/v1/vms/{name}/backup` `{backup_type, credential, agent}`: back this VM up now.
/// `backup_type` defaults to `auto`; `credential` may be left out when the hub already knows
/// which credential's inventory holds the VM. `agent` instead of `credential` names the agent
/// whose own NBD sources (README "KVM and other NBD sources") hold the VM; both may be left out
/// when the VM's last backup job says which.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupNowRequest {
    /// `full`, `incremental` or `auto` (the default).
    #[serde(default)]
    pub backup_type: Option<BackupType>,
    /// The vCenter credential (and so the agent) to use.
    #[serde(default)]
    pub credential: Option<CredentialName>,
    /// The agent whose NBD sources hold the VM (not with `credential`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentName>,
}

/// `202 {job_id}`: a job was queued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobAccepted {
    /// The queued job.
    pub job_id: JobId,
}

/// A vCenter credential as handed to the one agent it names, with its password, over the
/// agent's authenticated channel. Its `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentCredential {
    /// The credential's name.
    pub name: CredentialName,
    /// The vCenter, `HOST[:PORT]`.
    pub host: String,
    /// The vCenter user.
    pub username: String,
    /// The password (a secret: never log it, never write it to disk).
    pub password: String,
    /// The PEM CA(s) vCenter's certificate is checked against.
    #[serde(default)]
    pub ca_pem: Option<String>,
    /// Any vCenter certificate is accepted.
    #[serde(default)]
    pub insecure: bool,
}

impl fmt::Debug for AgentCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentCredential")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("insecure", &self.insecure)
            .finish_non_exhaustive()
    }
}

/// The answer of `GET /api/v1/agents/{name}/jobs/next` when there is work: the job and what
/// the agent needs to run it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentJob {
    /// The job's id (heartbeat and finish name it).
    pub job_id: JobId,
    /// What to do.
    pub kind: JobKind,
    /// The VM: its name in vCenter (or its inventory path) for backup jobs.
    pub vm: Option<String>,
    /// `full`, `incremental` or `auto` (backup jobs).
    pub backup_type: Option<BackupType>,
    /// The vCenter credential to log in with.
    pub credential: Option<AgentCredential>,
    /// Which attempt this is (1 for the first run).
    pub attempt: u32,
    /// Seconds the lease lasts after each heartbeat.
    pub lease_seconds: u32,
    /// What to restore and where (`restore` jobs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<Box<crate::vm_config::RestoreJob>>,
}

/// `POST /api/v1/jobs/{id}/heartbeat` `{progress, backup_id}`: keeps the lease, reports
/// progress (and, once started, the backup the job makes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatProgress {
    /// Bytes moved so far.
    pub bytes_done: u64,
    /// Bytes to move in all (0 while unknown).
    pub bytes_total: u64,
}

/// `POST /api/v1/jobs/{id}/heartbeat`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// Bytes done and total.
    #[serde(default)]
    pub progress: HeartbeatProgress,
    /// The backup this job started at the hub, once it has.
    #[serde(default)]
    pub backup_id: Option<BackupId>,
}

/// The answer of a heartbeat: the job's status at the hub. `cancelled` tells the agent to stop
/// (remove its snapshot, fail its backup); `running` renews the lease for `lease_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// The job's status.
    pub status: JobStatus,
    /// Seconds the lease now lasts.
    pub lease_seconds: u32,
}

/// One VM an agent sees in its vCenter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryVm {
    /// Its name in vCenter (its name at the hub).
    pub name: String,
    /// Its inventory path, e.g. `dc1/vm/web01`.
    pub path: String,
}

/// `POST /api/v1/jobs/{id}/finish` `{status, error}`: `completed` or `failed`. An inventory job
/// sends the VMs it found; a backup job the backup it made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "FinishWire", into = "FinishWire")]
pub struct FinishJobRequest {
    status: JobStatus,
    error: Option<String>,
    backup_id: Option<BackupId>,
    inventory: Option<Vec<InventoryVm>>,
    result: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FinishWire {
    status: JobStatus,
    #[serde(default)]
    error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    backup_id: Option<BackupId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    inventory: Option<Vec<InventoryVm>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<String>,
}

impl TryFrom<FinishWire> for FinishJobRequest {
    type Error = TypesError;

    fn try_from(wire: FinishWire) -> Result<Self, Self::Error> {
        match wire.status {
            JobStatus::Completed => Ok(Self::completed(wire.backup_id, wire.inventory)?
                .with_result(wire.result.as_deref())),
            JobStatus::Failed => Ok(Self::failed(
                wire.error.as_deref().unwrap_or("the agent gave no reason"),
                wire.backup_id,
            )
            .with_result(wire.result.as_deref())),
            _ => Err(TypesError::InvalidField {
                field: "status",
                reason: "must be completed or failed",
            }),
        }
    }
}

impl From<FinishJobRequest> for FinishWire {
    fn from(req: FinishJobRequest) -> Self {
        Self {
            status: req.status,
            error: req.error,
            backup_id: req.backup_id,
            inventory: req.inventory,
            result: req.result,
        }
    }
}

impl FinishJobRequest {
    /// The job completed, having made `backup_id` or found `inventory`.
    ///
    /// # Errors
    /// [`TypesError::InvalidField`] when the inventory holds more than [`MAX_INVENTORY_VMS`]
    /// VMs or an entry with an empty, too long or control-character name or path.
    pub fn completed(
        backup_id: Option<BackupId>,
        inventory: Option<Vec<InventoryVm>>,
    ) -> Result<Self, TypesError> {
        if let Some(vms) = &inventory {
            if vms.len() > MAX_INVENTORY_VMS {
                return Err(TypesError::InvalidField {
                    field: "inventory",
                    reason: "holds too many VMs",
                });
            }
            for vm in vms {
                check_text("inventory.name", &vm.name, MAX_VM_PATTERN_LEN)?;
                check_text("inventory.path", &vm.path, MAX_VM_PATTERN_LEN)?;
            }
        }
        Ok(Self {
            status: JobStatus::Completed,
            error: None,
            backup_id,
            inventory,
            result: None,
        })
    }

    /// The job failed because of `error` (cut to [`MAX_JOB_ERROR_LEN`] bytes).
    #[must_use]
    pub fn failed(error: &str, backup_id: Option<BackupId>) -> Self {
        Self {
            status: JobStatus::Failed,
            error: Some(cut(error, MAX_JOB_ERROR_LEN)),
            backup_id,
            inventory: None,
            result: None,
        }
    }

    /// What the job did worth telling, in words (cut to [`MAX_JOB_ERROR_LEN`] bytes; an empty
    /// text is none): why an `auto` backup ran as a full, a hook that failed after the backup
    /// completed. The hub keeps it as the job's `result`.
    #[must_use]
    pub fn with_result(mut self, result: Option<&str>) -> Self {
        self.result = result
            .map(|r| cut(r.trim(), MAX_JOB_ERROR_LEN))
            .filter(|r| !r.is_empty());
        self
    }

    /// What the job did worth telling ([`FinishJobRequest::with_result`]).
    #[must_use]
    pub fn result(&self) -> Option<&str> {
        self.result.as_deref()
    }

    /// `completed` or `failed`.
    #[must_use]
    pub fn status(&self) -> JobStatus {
        self.status
    }

    /// Why it failed.
    #[must_use]
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// The backup the job made or worked on.
    #[must_use]
    pub fn backup_id(&self) -> Option<&BackupId> {
        self.backup_id.as_ref()
    }

    /// The VMs an inventory job found.
    #[must_use]
    pub fn inventory(&self) -> Option<&[InventoryVm]> {
        self.inventory.as_deref()
    }
}

/// `GET /api/v1/credentials/{name}/inventory`: the VMs the credential's agent last saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// The credential.
    pub credential: CredentialName,
    /// The agent that reported it.
    pub agent: Option<AgentName>,
    /// When it was reported (`null`: never).
    pub refreshed_at: Option<Timestamp>,
    /// The VMs, by path.
    pub vms: Vec<InventoryVm>,
}

// ---------------------------------------------------------------------------------------------
// Policies

/// A policy's retries: `{count, delay_seconds}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// How many times a failed job is queued again (at most [`MAX_RETRIES`]).
    #[serde(default)]
    pub count: u32,
    /// Seconds between a failure and the retry (at most [`MAX_RETRY_DELAY_SECONDS`]).
    #[serde(default = "default_retry_delay")]
    pub delay_seconds: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            count: 0,
            delay_seconds: default_retry_delay(),
        }
    }
}

const fn default_retry_delay() -> u64 {
    600
}

/// Retention options, as Proxmox Backup Server names them: each keeps the newest point of that
/// many periods (`keep_last`: that many newest points). Absent options keep nothing by
/// themselves; all absent keeps everything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Keep the newest N points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    /// Keep the newest point of each of the last N hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_hourly: Option<u32>,
    /// Keep the newest point of each of the last N days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_daily: Option<u32>,
    /// Keep the newest point of each of the last N ISO weeks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_weekly: Option<u32>,
    /// Keep the newest point of each of the last N months.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_monthly: Option<u32>,
    /// Keep the newest point of each of the last N years.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_yearly: Option<u32>,
}

impl Retention {
    /// Whether no option is set (keep everything).
    #[must_use]
    pub fn keeps_all(&self) -> bool {
        *self == Self::default()
    }
}

/// `POST /api/v1/policies`, `PUT /api/v1/policies/{name}`: DESIGN.md's policy shape. The
/// schedule's grammar is checked by the hub (it owns the calendar parser); everything else here.
/// A policy names exactly one of `credential` (the VMs of a vCenter, through the credential's
/// agent) and `agent` (VMs the agent reads from its own NBD sources, e.g. KVM guests).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "PolicyWire", into = "PolicyWire")]
pub struct PolicyRequest {
    name: PolicyName,
    schedule: String,
    credential: Option<CredentialName>,
    agent: Option<AgentName>,
    vms: Vec<String>,
    max_parallel: u32,
    retry: RetryPolicy,
    retention: Retention,
    max_chain_length: Option<u32>,
    verify_after_backup: bool,
    enabled: bool,
    copy_to: Option<crate::names::TargetName>,
    keep_local_last: Option<u32>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyWire {
    name: PolicyName,
    schedule: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    credential: Option<CredentialName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    agent: Option<AgentName>,
    vms: Vec<String>,
    #[serde(default = "default_parallel")]
    max_parallel: u32,
    #[serde(default)]
    retry: RetryPolicy,
    #[serde(default)]
    retention: Retention,
    #[serde(default)]
    max_chain_length: Option<u32>,
    #[serde(default)]
    verify_after_backup: bool,
    #[serde(default = "default_enabled")]
    enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    copy_to: Option<crate::names::TargetName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    keep_local_last: Option<u32>,
}

const fn default_parallel() -> u32 {
    1
}

const fn default_enabled() -> bool {
    true
}

impl TryFrom<PolicyWire> for PolicyRequest {
    type Error = TypesError;

    fn try_from(w: PolicyWire) -> Result<Self, Self::Error> {
        check_text("schedule", &w.schedule, MAX_SCHEDULE_LEN)?;
        if w.credential.is_some() == w.agent.is_some() {
            return Err(TypesError::InvalidField {
                field: "credential",
                reason: "give either credential (the VMs of a vCenter) or agent (the agent's own NBD sources), not both",
            });
        }
        if w.vms.is_empty() || w.vms.len() > MAX_POLICY_VMS {
            return Err(TypesError::InvalidField {
                field: "vms",
                reason: "must list 1 to 1024 inventory paths or name globs",
            });
        }
        for vm in &w.vms {
            check_text("vms", vm, MAX_VM_PATTERN_LEN)?;
        }
        if w.max_parallel == 0 || w.max_parallel > MAX_PARALLEL {
            return Err(TypesError::InvalidField {
                field: "max_parallel",
                reason: "must be 1 to 64",
            });
        }
        if w.retry.count > MAX_RETRIES || w.retry.delay_seconds > MAX_RETRY_DELAY_SECONDS {
            return Err(TypesError::InvalidField {
                field: "retry",
                reason: "count must be at most 10 and delay_seconds at most 86400",
            });
        }
        if w.keep_local_last.is_some() && w.copy_to.is_none() {
            return Err(TypesError::InvalidField {
                field: "keep_local_last",
                reason: "needs copy_to (points are evicted only once copied there)",
            });
        }
        if w.keep_local_last == Some(0) {
            return Err(TypesError::InvalidField {
                field: "keep_local_last",
                reason: "must be at least 1 (the newest point stays local for the next incremental)",
            });
        }
        if w.max_chain_length == Some(0) {
            return Err(TypesError::InvalidField {
                field: "max_chain_length",
                reason: "must be at least 1",
            });
        }
        Ok(Self {
            name: w.name,
            schedule: w.schedule.trim().to_owned(),
            credential: w.credential,
            agent: w.agent,
            vms: w.vms,
            max_parallel: w.max_parallel,
            retry: w.retry,
            retention: w.retention,
            max_chain_length: w.max_chain_length,
            verify_after_backup: w.verify_after_backup,
            enabled: w.enabled,
            copy_to: w.copy_to,
            keep_local_last: w.keep_local_last,
        })
    }
}

impl From<PolicyRequest> for PolicyWire {
    fn from(p: PolicyRequest) -> Self {
        Self {
            name: p.name,
            schedule: p.schedule,
            credential: p.credential,
            agent: p.agent,
            vms: p.vms,
            max_parallel: p.max_parallel,
            retry: p.retry,
            retention: p.retention,
            max_chain_length: p.max_chain_length,
            verify_after_backup: p.verify_after_backup,
            enabled: p.enabled,
            copy_to: p.copy_to,
            keep_local_last: p.keep_local_last,
        }
    }
}

impl PolicyRequest {
    /// The policy's name.
    #[must_use]
    pub fn name(&self) -> &PolicyName {
        &self.name
    }
    /// The calendar-event schedule, trimmed (not yet parsed).
    #[must_use]
    pub fn schedule(&self) -> &str {
        &self.schedule
    }
    /// The vCenter credential (and so the agent) its jobs use; `None` for a policy of an
    /// agent's NBD sources ([`PolicyRequest::agent`]).
    #[must_use]
    pub fn credential(&self) -> Option<&CredentialName> {
        self.credential.as_ref()
    }
    /// The agent whose own NBD sources its VMs are (`None` for a vCenter policy).
    #[must_use]
    pub fn agent(&self) -> Option<&AgentName> {
        self.agent.as_ref()
    }
    /// Inventory paths or name globs, resolved at each run.
    #[must_use]
    pub fn vms(&self) -> &[String] {
        &self.vms
    }
    /// Most of its jobs running at once.
    #[must_use]
    pub fn max_parallel(&self) -> u32 {
        self.max_parallel
    }
    /// Retries of a failed job.
    #[must_use]
    pub fn retry(&self) -> RetryPolicy {
        self.retry
    }
    /// What to keep after each run.
    #[must_use]
    pub fn retention(&self) -> Retention {
        self.retention
    }
    /// Start a new full once a chain holds this many points.
    #[must_use]
    pub fn max_chain_length(&self) -> Option<u32> {
        self.max_chain_length
    }
    /// Verify each backup after it completes.
    #[must_use]
    pub fn verify_after_backup(&self) -> bool {
        self.verify_after_backup
    }
    /// Whether the scheduler runs it.
    #[must_use]
    pub fn enabled(&self) -> bool {
        self.enabled
    }
    /// The object-store target each new point is copied to (DESIGN.md "Object tier").
    #[must_use]
    pub fn copy_to(&self) -> Option<&crate::names::TargetName> {
        self.copy_to.as_ref()
    }
    /// With `copy_to`: how many of a VM's newest points keep their local files; older ones
    /// are evicted once their copy is verified.
    #[must_use]
    pub fn keep_local_last(&self) -> Option<u32> {
        self.keep_local_last
    }
}

/// A policy as answered: the request's fields plus `next_run`, `last_run` and `created_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// The policy's name.
    pub name: PolicyName,
    /// The calendar-event schedule.
    pub schedule: String,
    /// The vCenter credential its jobs use (`null` for a policy of an agent's NBD sources).
    pub credential: Option<CredentialName>,
    /// The agent whose own NBD sources its VMs are (left out for a vCenter policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentName>,
    /// Inventory paths or name globs.
    pub vms: Vec<String>,
    /// Most of its jobs running at once.
    pub max_parallel: u32,
    /// Retries of a failed job.
    pub retry: RetryPolicy,
    /// What to keep after each run.
    pub retention: Retention,
    /// Start a new full once a chain holds this many points.
    pub max_chain_length: Option<u32>,
    /// Verify each backup after it completes.
    pub verify_after_backup: bool,
    /// Whether the scheduler runs it.
    pub enabled: bool,
    /// The object-store target each new point is copied to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_to: Option<crate::names::TargetName>,
    /// How many of a VM's newest points keep their local files (with `copy_to`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_local_last: Option<u32>,
    /// The next time the schedule fires (`null` when disabled or never again).
    pub next_run: Option<Timestamp>,
    /// When it last ran (`null`: never).
    pub last_run: Option<Timestamp>,
    /// When it was created.
    pub created_at: Timestamp,
}

/// `{policies: [...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyList {
    /// Every policy, by name.
    pub policies: Vec<Policy>,
}

/// The answer of `POST /api/v1/policies/{name}/run`: the jobs it queued, and the patterns that
/// matched no VM (a warning, not a failure).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRun {
    /// The jobs queued.
    pub job_ids: Vec<JobId>,
    /// Patterns of `vms` that matched nothing in the inventory.
    pub unmatched: Vec<String>,
    /// VMs skipped because a backup job of theirs is already queued or running.
    pub skipped: Vec<VmName>,
}

/// Checks a token: 1 to [`MAX_TOKEN_LEN`] printable ASCII characters.
fn check_token(field: &'static str, value: &str) -> Result<(), TypesError> {
    if value.is_empty()
        || value.len() > MAX_TOKEN_LEN
        || !value.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(TypesError::InvalidField {
            field,
            reason: "must be 1 to 256 printable ASCII characters",
        });
    }
    Ok(())
}

/// `text` cut to at most `max` bytes on a character boundary.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy_json(extra: &str) -> String {
        format!(
            r#"{{"name":"nightly","schedule":" mon..fri 22:00 ","credential":"vc1",
                "vms":["dc1/vm/web01","db*"]{extra}}}"#
        )
    }

    #[test]
    fn policy_defaults_fill_in() {
        let p: PolicyRequest = serde_json::from_str(&policy_json("")).expect("valid policy");

        assert_eq!(
            (
                p.schedule(),
                p.max_parallel(),
                p.retry(),
                p.enabled(),
                p.verify_after_backup()
            ),
            ("mon..fri 22:00", 1, RetryPolicy::default(), true, false)
        );
    }

    #[test]
    fn policy_design_example_parses() {
        let body = policy_json(
            r#","max_parallel":2,"retry":{"count":2,"delay_seconds":600},
               "retention":{"keep_last":3,"keep_daily":7,"keep_weekly":4,"keep_monthly":6},
               "max_chain_length":30,"verify_after_backup":true,"enabled":true"#,
        );

        let p: PolicyRequest = serde_json::from_str(&body).expect("valid policy");

        assert_eq!(
            (
                p.retention().keep_weekly,
                p.max_chain_length(),
                p.retry().count
            ),
            (Some(4), Some(30), 2)
        );
    }

    #[test]
    fn policy_bad_fields_refused_by_name() {
        for (extra, field) in [
            (r#","max_parallel":0"#, "max_parallel"),
            (r#","retry":{"count":11}"#, "retry"),
            (r#","max_chain_length":0"#, "max_chain_length"),
            (r#","color":"red""#, "color"),
        ] {
            let err =
                serde_json::from_str::<PolicyRequest>(&policy_json(extra)).expect_err("refused");

            assert!(err.to_string().contains(field), "{extra}: {err}");
        }
    }

    #[test]
    fn policy_of_an_agent_parses_without_credential() {
        let body = r#"{"name":"kvm","schedule":"daily","agent":"kvm-host1","vms":["kvm01"]}"#;

        let p: PolicyRequest = serde_json::from_str(body).expect("valid policy");
        let back = serde_json::to_value(&p).expect("serializes");

        assert_eq!(
            (p.agent().map(AgentName::as_str), p.credential()),
            (Some("kvm-host1"), None)
        );
        assert!(back.get("credential").is_none(), "{back}");
    }

    #[test]
    fn policy_with_both_or_neither_of_credential_and_agent_refused() {
        for body in [
            r#"{"name":"p","schedule":"daily","vms":["a"]}"#,
            r#"{"name":"p","schedule":"daily","credential":"vc1","agent":"a1","vms":["a"]}"#,
        ] {
            let err = serde_json::from_str::<PolicyRequest>(body).expect_err("refused");

            assert!(err.to_string().contains("credential"), "{body}: {err}");
        }
    }

    #[test]
    fn policy_without_vms_refused() {
        let body = r#"{"name":"p","schedule":"daily","credential":"vc1","vms":[]}"#;

        let err = serde_json::from_str::<PolicyRequest>(body).expect_err("refused");

        assert!(err.to_string().contains("vms"), "{err}");
    }

    #[test]
    fn finish_result_travels_trimmed_and_cut_and_an_empty_one_is_none() {
        let req = FinishJobRequest::completed(None, None)
            .expect("valid")
            .with_result(Some(" full backup: bitmap b1 is gone \n"));
        let wire = serde_json::to_string(&req).expect("serializes");
        let back: FinishJobRequest = serde_json::from_str(&wire).expect("parses");

        assert_eq!(
            back.result(),
            Some("full backup: bitmap b1 is gone"),
            "{wire}"
        );
        let long = FinishJobRequest::failed("x", None).with_result(Some(&"é".repeat(4000)));
        assert!(long.result().is_some_and(|r| r.len() <= MAX_JOB_ERROR_LEN));
        let empty = FinishJobRequest::failed("x", None).with_result(Some("  "));
        assert_eq!(empty.result(), None);
        let plain = serde_json::to_value(FinishJobRequest::failed("x", None)).expect("serializes");
        assert!(plain.get("result").is_none(), "{plain}");
    }

    #[test]
    fn finish_with_running_status_refused() {
        let err = serde_json::from_str::<FinishJobRequest>(r#"{"status":"running"}"#)
            .expect_err("refused");

        assert!(err.to_string().contains("completed or failed"), "{err}");
    }

    #[test]
    fn finish_failed_long_error_cut_on_char_boundary() {
        let long = "é".repeat(MAX_JOB_ERROR_LEN);

        let req = FinishJobRequest::failed(&long, None);

        assert!(
            req.error()
                .is_some_and(|e| e.len() <= MAX_JOB_ERROR_LEN && !e.is_empty())
        );
    }

    #[test]
    fn enroll_request_refuses_non_csr() {
        let body = r#"{"name":"a1","enrollment_token":"tok","csr_pem":"hello"}"#;

        let err = serde_json::from_str::<EnrollRequest>(body).expect_err("refused");

        assert!(err.to_string().contains("csr_pem"), "{err}");
    }

    #[test]
    fn secrets_hidden_from_debug() {
        let cred = AgentCredential {
            name: "vc1".parse().expect("name"),
            host: "vc".into(),
            username: "u".into(),
            password: "hunter2".into(),
            ca_pem: None,
            insecure: true,
        };
        let enrollment = AgentEnrollment {
            name: "a1".parse().expect("name"),
            enrollment_token: "sekrit-token".into(),
            expires_at: Timestamp::EPOCH,
        };

        let shown = format!("{cred:?} {enrollment:?}");

        assert!(
            !shown.contains("hunter2") && !shown.contains("sekrit"),
            "{shown}"
        );
    }

    #[test]
    fn job_query_empty_values_mean_no_filter() {
        let q: JobQuery = serde_json::from_value(
            serde_json::json!({"vm_name": "", "status": "running", "kind": ""}),
        )
        .expect("valid query");

        assert_eq!(
            (q.vm_name, q.status, q.kind),
            (None, Some(JobStatus::Running), None)
        );
    }

    #[test]
    fn job_id_round_trips_and_refuses_junk() {
        let id = JobId::random();

        let parsed: JobId = id.as_str().parse().expect("own id parses");

        assert_eq!(parsed, id);
        assert!("job-XYZ".parse::<JobId>().is_err());
        assert!("../../etc".parse::<JobId>().is_err());
    }
}
