//! `sendense-client agent`: the appliance as an agent the hub drives (DESIGN.md "Agents and
//! jobs").
//!
//! - [`enroll`] (`agent enroll`): makes a key pair here (it never leaves the appliance), sends
//!   a certificate signing request with the one-time enrollment token, and keeps what the hub
//!   answers in the state folder (0700), in QEMU's client layout: `ca-cert.pem`,
//!   `client-cert.pem`, `client-key.pem` (0600), plus `agent.token` (0600) and `agent.json`
//!   (`{hub, name}`). Every file is written atomically.
//! - [`run`] (`agent run`): opens no listening socket. While a slot is free it long-polls
//!   `GET /api/v1/agents/{name}/jobs/next?wait=30`; each job runs in its own task and span
//!   (`job_id`, `vm`), with a heartbeat every [`AgentOptions::heartbeat_interval`] (well inside
//!   the hub's 90 s lease) carrying bytes done and total and, once started, the backup's id.
//!   A heartbeat answering `cancelled` stops the job through the same path as Ctrl-C in
//!   `sendense-client backup --vcenter` (snapshot removed, backup failed at the hub; heartbeats
//!   keep the lease meanwhile), then reports it `failed` ("cancelled"; the hub keeps it
//!   `cancelled` and releases the lease). A job the hub no longer holds for this agent (another
//!   end status, 403, 404, 409) is stopped the same way and gets no report. Every other outcome
//!   is reported with `POST /api/v1/jobs/{id}/finish`.
//! - Hub calls that fail because the hub is unreachable or answers 5xx are retried with
//!   exponential backoff (1 s doubling to 30 s, jittered): a job's outcome is kept in memory
//!   until the hub takes it. A 4xx is final (a rejected agent token ends [`run`]).
//! - On `shutdown` (SIGTERM, SIGINT) the agent takes no more jobs and stops the running ones
//!   the same way (snapshots removed, backups failed at the hub), reports them `failed`
//!   ("agent stopped"), and returns within [`AgentOptions::stop_timeout`].
//!
//! **One backup flow**: a backup job runs exactly [`crate::vcenter::run_until`], the code of
//! `sendense-client backup --vcenter`, with the job's vCenter credential (password login; the
//! password stays in memory) and the agent's token and client certificate. Inventory jobs list
//! the VMs the credential sees ([`sendense_vsphere::Session::list_vms`]). How jobs run is a
//! [`JobRunner`] ([`VcenterRunner`] unless a test brings its own).

use std::collections::hash_map::RandomState;
use std::convert::Infallible;
use std::fmt;
use std::hash::BuildHasher;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use sendense_nbd::tls::{CA_CERT, CLIENT_CERT, CLIENT_KEY};
use sendense_transfer::engine::TransferOptions;
use sendense_transfer::progress::Progress;
use sendense_types::jobs::{MAX_SLOTS, MAX_WAIT_SECONDS};
use sendense_types::{
    AgentCredential, AgentJob, AgentName, BackupId, BackupType, EnrollRequest, FinishJobRequest,
    HeartbeatProgress, HeartbeatRequest, InventoryVm, JobId, JobKind, JobStatus, NextJobQuery,
};
use sendense_vsphere::{ConnectOptions, Session, TlsMode};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::error::ClientError;
use crate::hub::{HubClient, HubOptions, read_token};
use crate::vcenter::{self, VcenterBackupOptions};

/// The agent's bearer token in the state folder (0600).
pub const AGENT_TOKEN: &str = "agent.token";
/// The agent's settings in the state folder: `{hub, name}`.
pub const AGENT_CONFIG: &str = "agent.json";
/// Mode of the state folder.
pub const STATE_DIR_MODE: u32 = 0o700;
/// Mode of the key and the token.
pub const SECRET_MODE: u32 = 0o600;
/// Mode of the certificates and settings (public).
pub const PUBLIC_MODE: u32 = 0o644;
/// How long a long poll for work lasts, in seconds.
pub const DEFAULT_WAIT_SECONDS: u32 = 30;
/// Interval between heartbeats of a running job.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(20);
/// How long running jobs get to stop cleanly after a stop signal (inside the 120 s systemd
/// gives the agent's unit before it kills it).
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(90);
/// The error a job stopped by the agent's own shutdown is reported failed with.
pub const AGENT_STOPPED: &str = "agent stopped";
/// The error a job cancelled at the hub is reported failed with (the hub keeps it `cancelled`).
pub const CANCELLED: &str = "cancelled";

/// The agent's settings, `DIR/agent.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The hub's REST API, `https://HOST:PORT`.
    pub hub: String,
    /// The agent's name at the hub.
    pub name: AgentName,
}

/// What `agent enroll` is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollOptions {
    /// The hub's REST API, `https://HOST:PORT`.
    pub hub: String,
    /// The hub's CA certificate (trusted for this one call; the hub's answer then provides
    /// the state folder's `ca-cert.pem`).
    pub ca_file: PathBuf,
    /// The agent's name, as the admin created it (`POST /api/v1/agents`).
    pub name: AgentName,
    /// The file holding the one-time enrollment token.
    pub enrollment_token_file: PathBuf,
    /// The state folder to write.
    pub state_dir: PathBuf,
    /// Enroll again over an enrolled state folder.
    pub force: bool,
}

/// Enrolls this appliance as agent `options.name` and writes its state folder.
///
/// # Errors
/// [`ClientError::AlreadyEnrolled`] (without `force`); [`ClientError::EnrollmentRefused`] when
/// the hub refuses the token; [`ClientError::File`] for unusable or unwritable files; hub
/// transport errors; [`ClientError::Certificate`] when the key pair or request cannot be made.
pub async fn enroll(options: &EnrollOptions) -> Result<AgentConfig, ClientError> {
    let dir = &options.state_dir;
    if !options.force && (dir.join(AGENT_CONFIG).exists() || dir.join(AGENT_TOKEN).exists()) {
        return Err(ClientError::AlreadyEnrolled { dir: dir.clone() });
    }
    let token = read_token(&options.enrollment_token_file)?;
    let key = KeyPair::generate().map_err(cert_error("generating the key pair"))?;
    let csr = csr_pem(&key, &options.name)?;
    let request = EnrollRequest::new(options.name.clone(), token, csr).map_err(|e| {
        ClientError::InvalidArgument {
            what: "--enrollment-token-file",
            reason: e.to_string(),
        }
    })?;
    let hub = HubClient::anonymous(&options.hub, &options.ca_file)?;
    let answer = hub.enroll(&request).await.map_err(|e| match e {
        ClientError::TokenRejected { .. } => refused(&options.name, "401 unauthorized".into()),
        ClientError::HubStatus {
            status: status @ (401 | 403 | 404 | 409 | 410),
            message,
            ..
        } => refused(&options.name, format!("{status}: {message}")),
        other => other,
    })?;
    let bad_answer = |detail: &str| ClientError::HubResponse {
        method: "POST",
        path: "/api/v1/agents/enroll".into(),
        detail: detail.to_owned(),
    };
    if !answer
        .client_cert_pem
        .contains("-----BEGIN CERTIFICATE-----")
        || !answer.ca_cert_pem.contains("-----BEGIN CERTIFICATE-----")
    {
        return Err(bad_answer("the certificates are not PEM"));
    }
    if answer.agent_token.is_empty() || !answer.agent_token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad_answer("the agent token is empty or not printable"));
    }
    make_state_dir(dir)?;
    let config = AgentConfig {
        hub: options.hub.trim_end_matches('/').to_owned(),
        name: options.name.clone(),
    };
    let config_json = serde_json::to_vec_pretty(&config).map_err(|_| ClientError::HubState {
        what: "agent settings that do not serialize",
    })?;
    // The settings last: a folder holds them only once everything else is in place.
    write(dir, CLIENT_KEY, key.serialize_pem().as_bytes(), SECRET_MODE)?;
    write(
        dir,
        CLIENT_CERT,
        answer.client_cert_pem.as_bytes(),
        PUBLIC_MODE,
    )?;
    write(dir, CA_CERT, answer.ca_cert_pem.as_bytes(), PUBLIC_MODE)?;
    write(
        dir,
        AGENT_TOKEN,
        format!("{}\n", answer.agent_token).as_bytes(),
        SECRET_MODE,
    )?;
    write(dir, AGENT_CONFIG, &config_json, PUBLIC_MODE)?;
    info!(agent = %config.name, hub = %config.hub, dir = %dir.display(), "agent enrolled");
    Ok(config)
}

/// Reads `DIR/agent.json`.
///
/// # Errors
/// [`ClientError::File`] when it is missing (not enrolled) or does not parse.
pub fn read_config(state_dir: &Path) -> Result<AgentConfig, ClientError> {
    let path = state_dir.join(AGENT_CONFIG);
    let file_error = |source| ClientError::File {
        what: "agent settings (run `sendense-client agent enroll` first)",
        path: path.clone(),
        source,
    };
    let text = std::fs::read(&path).map_err(file_error)?;
    serde_json::from_slice(&text)
        .map_err(|e| file_error(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

/// The hub connection of an enrolled agent: its settings' URL, the state folder's CA and client
/// certificate, its token.
#[must_use]
pub fn hub_options(config: &AgentConfig, state_dir: &Path) -> HubOptions {
    HubOptions::with_tls_dir(&config.hub, state_dir, &state_dir.join(AGENT_TOKEN))
}

/// Retry delays of hub calls: `first`, doubling up to `max`, each jittered to between half and
/// all of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay.
    pub first: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            first: Duration::from_secs(1),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (0 for the first retry), jittered.
    #[must_use]
    pub fn delay(&self, attempt: u32) -> Duration {
        let full = self
            .first
            .checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
            .unwrap_or(self.max)
            .min(self.max);
        // Jitter: between half and all of it, so agents a hub restart disconnected at once do
        // not come back at once.
        let random = RandomState::new().hash_one(attempt);
        let half = full / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(random.checked_rem(nanos.max(1)).unwrap_or(0))
    }
}

/// What `agent run` is asked to do.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AgentOptions {
    /// The enrolled state folder.
    pub state_dir: PathBuf,
    /// Jobs run at once (1 to 64).
    pub slots: u32,
    /// Seconds each long poll lasts (at most [`MAX_WAIT_SECONDS`]).
    pub wait_seconds: u32,
    /// Interval between heartbeats of a running job.
    pub heartbeat_interval: Duration,
    /// Retry delays of hub calls.
    pub backoff: Backoff,
    /// How long running jobs get to stop cleanly after `shutdown`; then they are abandoned.
    pub stop_timeout: Duration,
    /// How jobs run.
    pub runner: Arc<dyn JobRunner>,
}

impl AgentOptions {
    /// The defaults: 1 slot, 30 s long polls, heartbeats every 20 s, backoff 1 s to 30 s, 90 s
    /// to stop, jobs run by [`VcenterRunner`].
    #[must_use]
    pub fn new(state_dir: &Path) -> Self {
        Self {
            state_dir: state_dir.to_owned(),
            slots: 1,
            wait_seconds: DEFAULT_WAIT_SECONDS,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            backoff: Backoff::default(),
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            runner: Arc::new(VcenterRunner::default()),
        }
    }
}

/// Why a running job is asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A person cancelled it at the hub (a heartbeat answered `cancelled`): once stopped it is
    /// reported `failed` ("cancelled"), which releases its lease; the hub keeps it
    /// `cancelled`.
    Cancelled,
    /// The hub no longer holds the job for this agent (a heartbeat answered another end
    /// status, or 403, 404 or 409): it gets no outcome from the agent.
    EndedAtHub,
    /// The agent itself stops (SIGTERM, SIGINT): the job is reported `failed`
    /// ("agent stopped").
    AgentStopping,
}

/// What a job's runner gets besides the job.
#[derive(Debug)]
#[non_exhaustive]
pub struct JobContext {
    /// The hub connection (the agent's token and client certificate).
    pub hub: HubOptions,
    /// Where the transfer reports bytes; heartbeats read it.
    pub progress: Arc<JobProgress>,
    /// Told the backup's id once it is started; heartbeats carry it.
    pub backup_id: Arc<watch::Sender<Option<BackupId>>>,
    stop: watch::Receiver<Option<StopReason>>,
}

impl JobContext {
    /// A context for running a job outside [`run`] (tests, tools), with fresh progress
    /// counters and no backup yet; the sender asks the job to stop.
    #[must_use]
    pub fn new(hub: HubOptions) -> (Self, watch::Sender<Option<StopReason>>) {
        let (stop_tx, stop) = watch::channel(None);
        let context = Self {
            hub,
            progress: Arc::new(JobProgress::default()),
            backup_id: Arc::new(watch::channel(None).0),
            stop,
        };
        (context, stop_tx)
    }

    /// Resolves once the job must stop (see [`StopReason`]).
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stop = self.stop.clone();
        async move {
            // An error: the agent's side of the channel is gone, so nobody awaits the job.
            let _ = stop.wait_for(Option::is_some).await;
        }
    }

    /// Why the job was asked to stop, if it was.
    #[must_use]
    pub fn stop_reason(&self) -> Option<StopReason> {
        *self.stop.borrow()
    }
}

/// A job's successful result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobDone {
    /// The backup a backup job made.
    pub backup_id: Option<BackupId>,
    /// The VMs an inventory job found.
    pub inventory: Option<Vec<InventoryVm>>,
    /// What the job did worth telling the administrator (the job's `result` at the hub): why an
    /// `auto` backup ran as a full, an end hook that failed after the backup completed.
    pub note: Option<String>,
}

/// A job's future.
pub type JobFuture = Pin<Box<dyn Future<Output = Result<JobDone, ClientError>> + Send>>;

/// Runs the jobs the hub hands out. A runner must stop soon after [`JobContext::stopped`]
/// resolves, having cleaned up (the vCenter runner removes its snapshot and fails its backup
/// at the hub).
pub trait JobRunner: Send + Sync + fmt::Debug {
    /// Runs `job`.
    fn run(&self, job: AgentJob, context: JobContext) -> JobFuture;
}

/// Bytes done and total of a job's transfer, summed over its disks: a [`Progress`] sink the
/// transfer engine feeds and heartbeats read.
#[derive(Debug, Default)]
pub struct JobProgress {
    done: AtomicU64,
    total: AtomicU64,
}

impl JobProgress {
    /// `{bytes_done, bytes_total}` now.
    #[must_use]
    pub fn snapshot(&self) -> HeartbeatProgress {
        HeartbeatProgress {
            bytes_done: self.done.load(Ordering::Relaxed),
            bytes_total: self.total.load(Ordering::Relaxed),
        }
    }
}

impl Progress for JobProgress {
    fn started(&self, _disk_key: u32, total_bytes: u64) {
        saturating_add(&self.total, total_bytes);
    }

    fn advanced(&self, _disk_key: u32, bytes: u64) {
        saturating_add(&self.done, bytes);
    }

    fn finished(&self, _disk_key: u32) {}
}

fn saturating_add(counter: &AtomicU64, n: u64) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_add(n))
    });
}

/// Runs backup jobs with [`crate::vcenter::run_until`] and inventory jobs with
/// [`sendense_vsphere::Session::list_vms`], logging in with the job's credential.
#[derive(Debug, Clone, Copy, Default)]
pub struct VcenterRunner {
    /// Engine tuning of backups.
    pub transfer: TransferOptions,
}

impl JobRunner for VcenterRunner {
    fn run(&self, job: AgentJob, context: JobContext) -> JobFuture {
        let transfer = self.transfer;
        Box::pin(async move {
            match job.kind {
                JobKind::Backup => {
                    let options = backup_options(&job, &context, transfer)?;
                    let summary = vcenter::run_until(options, context.stopped()).await?;
                    Ok(JobDone {
                        backup_id: Some(summary.backup_id),
                        inventory: None,
                        note: summary.full_reason.map(|r| format!("full backup: {r}")),
                    })
                }
                JobKind::Inventory => inventory(&job, &context).await,
                JobKind::Restore => crate::vm_restore::run_job(&job, &context, transfer).await,
                kind => Err(ClientError::UnsupportedJob { kind }),
            }
        })
    }
}

/// The options of `sendense-client backup --vcenter` for a backup job: the job's VM, type and
/// credential (password login, its trust choice), the agent's hub connection, progress into
/// the job's counters, the started backup's id into the job's heartbeats.
///
/// # Errors
/// [`ClientError::JobIncomplete`] when the job lacks its VM or credential, or the credential a
/// trust choice.
pub fn backup_options(
    job: &AgentJob,
    context: &JobContext,
    transfer: TransferOptions,
) -> Result<VcenterBackupOptions, ClientError> {
    let vm = job
        .vm
        .as_deref()
        .ok_or(ClientError::JobIncomplete { what: "a VM" })?;
    let credential = job.credential.as_ref().ok_or(ClientError::JobIncomplete {
        what: "a vCenter credential",
    })?;
    let mut options = VcenterBackupOptions::new(context.hub.clone(), connect(credential)?, vm);
    options.backup_type = job.backup_type.unwrap_or(BackupType::Auto);
    options.transfer = transfer;
    options.progress = Arc::clone(&context.progress) as Arc<dyn Progress>;
    options.started = Some(Arc::clone(&context.backup_id));
    Ok(options)
}

/// Connection options from a credential handed to the agent: its host, a password login, its
/// stored trust choice.
///
/// # Errors
/// [`ClientError::JobIncomplete`] when it has neither `ca_pem` nor `insecure`.
pub fn connect(credential: &AgentCredential) -> Result<ConnectOptions, ClientError> {
    let tls = match (&credential.ca_pem, credential.insecure) {
        (Some(pem), _) => TlsMode::CaPem(pem.clone().into_bytes()),
        (None, true) => TlsMode::Insecure,
        (None, false) => {
            return Err(ClientError::JobIncomplete {
                what: "a trust choice for vCenter's certificate (ca_pem or insecure)",
            });
        }
    };
    Ok(ConnectOptions::new(
        &credential.host,
        &credential.username,
        &credential.password,
        tls,
    ))
}

async fn inventory(job: &AgentJob, context: &JobContext) -> Result<JobDone, ClientError> {
    let credential = job.credential.as_ref().ok_or(ClientError::JobIncomplete {
        what: "a vCenter credential",
    })?;
    let session = Session::connect(connect(credential)?).await?;
    let listed = tokio::select! {
        r = session.list_vms() => r.map_err(ClientError::from),
        () = context.stopped() => Err(ClientError::Interrupted),
    };
    if let Err(e) = session.logout().await {
        warn!(error = %e, "vCenter logout failed");
    }
    let vms = listed?
        .into_iter()
        .map(|v| InventoryVm {
            name: v.name,
            path: v.path,
        })
        .collect::<Vec<_>>();
    info!(vms = vms.len(), "inventory listed");
    Ok(JobDone {
        backup_id: None,
        inventory: Some(vms),
        note: None,
    })
}

/// Runs the agent until `shutdown` resolves (then stops running jobs, see the module docs) or
/// a hub answer makes going on pointless.
///
/// # Errors
/// [`ClientError::File`] for a state folder that is not enrolled;
/// [`ClientError::InvalidArgument`] for slots or wait out of range;
/// [`ClientError::AgentTokenRejected`] when the hub refuses the agent's token; another final
/// hub answer to the long poll.
pub async fn run(
    options: AgentOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ClientError> {
    if options.slots == 0 || options.slots > MAX_SLOTS {
        return Err(ClientError::InvalidArgument {
            what: "--slots",
            reason: format!("{} is not between 1 and {MAX_SLOTS}", options.slots),
        });
    }
    if options.wait_seconds > MAX_WAIT_SECONDS {
        return Err(ClientError::InvalidArgument {
            what: "wait",
            reason: format!("at most {MAX_WAIT_SECONDS} seconds"),
        });
    }
    let config = read_config(&options.state_dir)?;
    let hub_options = hub_options(&config, &options.state_dir);
    let hub = HubClient::new(&hub_options)?;
    let agent = Agent {
        hub,
        hub_options,
        config,
        options,
    };
    let span = info_span!("agent", agent = %agent.config.name);
    Arc::new(agent).serve(shutdown).instrument(span).await
}

struct Agent {
    hub: HubClient,
    hub_options: HubOptions,
    config: AgentConfig,
    options: AgentOptions,
}

impl Agent {
    async fn serve(
        self: Arc<Self>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ClientError> {
        let slots = usize::try_from(self.options.slots).unwrap_or(1);
        let free = Arc::new(Semaphore::new(slots));
        let (stop_tx, _) = watch::channel(false);
        let mut jobs = JoinSet::new();
        let mut shutdown = pin!(shutdown);
        let query = NextJobQuery {
            wait: Some(self.options.wait_seconds),
            slots: Some(self.options.slots),
            version: Some(env!("CARGO_PKG_VERSION").to_owned()),
        };
        info!(hub = %self.config.hub, slots = self.options.slots, "agent running: asking the hub for work");
        let result = loop {
            while let Some(done) = jobs.try_join_next() {
                log_join(done);
            }
            // A long poll only when a slot is free.
            let permit = tokio::select! {
                () = &mut shutdown => break Ok(()),
                permit = Arc::clone(&free).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break Ok(()),
                },
            };
            let next = tokio::select! {
                () = &mut shutdown => break Ok(()),
                next = self.next_job(&query) => next,
            };
            match next {
                Ok(Some(job)) => {
                    let agent = Arc::clone(&self);
                    let stop = stop_tx.subscribe();
                    let span = info_span!(
                        "job",
                        job_id = %job.job_id,
                        kind = %job.kind,
                        vm = job.vm.as_deref().unwrap_or("-"),
                    );
                    jobs.spawn(
                        async move {
                            agent.run_job(job, stop).await;
                            drop(permit);
                        }
                        .instrument(span),
                    );
                }
                Ok(None) => drop(permit),
                Err(e) => break Err(e),
            }
        };
        if !jobs.is_empty() {
            info!(
                running = jobs.len(),
                "stopping: no more jobs; stopping the running ones"
            );
        }
        stop_tx.send_replace(true);
        let drained = tokio::time::timeout(self.options.stop_timeout, async {
            while let Some(done) = jobs.join_next().await {
                log_join(done);
            }
        })
        .await;
        if drained.is_err() {
            error!(
                abandoned = jobs.len(),
                timeout_s = self.options.stop_timeout.as_secs(),
                "jobs did not stop in time: abandoning them (the hub fails them when their lease lapses)"
            );
            jobs.abort_all();
        }
        info!("agent stopped");
        result
    }

    /// The long poll, retried while the hub is unreachable or answers 5xx.
    async fn next_job(&self, query: &NextJobQuery) -> Result<Option<AgentJob>, ClientError> {
        let mut attempt = 0u32;
        loop {
            match self.hub.next_job(&self.config.name, query).await {
                Ok(job) => {
                    if attempt > 0 {
                        info!("the hub answers again");
                    }
                    return Ok(job);
                }
                Err(e) if retryable(&e) => {
                    let delay = self.options.backoff.delay(attempt);
                    warn!(error = %e, attempt, retry_in_ms = delay.as_millis(), "asking the hub for work failed; retrying");
                    tokio::time::sleep(delay).await;
                    attempt = attempt.saturating_add(1);
                }
                Err(ClientError::TokenRejected { url }) => {
                    return Err(ClientError::AgentTokenRejected {
                        url,
                        dir: self.options.state_dir.clone(),
                    });
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs one job to its end and reports its outcome.
    async fn run_job(&self, job: AgentJob, agent_stop: watch::Receiver<bool>) {
        info!(attempt = job.attempt, "job started");
        let (stop_tx, stop_rx) = watch::channel(None);
        let (backup_tx, backup_rx) = watch::channel(None);
        let progress = Arc::new(JobProgress::default());
        let context = JobContext {
            hub: self.hub_options.clone(),
            progress: Arc::clone(&progress),
            backup_id: Arc::new(backup_tx),
            stop: stop_rx.clone(),
        };
        let job_id = job.job_id.clone();
        let work = self.options.runner.run(job, context);
        let result = tokio::select! {
            r = work => r,
            never = self.supervise(&job_id, &progress, &backup_rx, &stop_tx, agent_stop) => match never {},
        };
        let reason = *stop_rx.borrow();
        let backup_id = backup_rx.borrow().clone();
        let finish = match (result, reason) {
            (Ok(done), _) => {
                info!(backup_id = ?done.backup_id, "job completed");
                match FinishJobRequest::completed(done.backup_id, done.inventory) {
                    Ok(finish) => finish.with_result(done.note.as_deref()),
                    Err(e) => {
                        error!(error = %e, "the job's result cannot be reported");
                        FinishJobRequest::failed(&e.to_string(), backup_id.clone())
                    }
                }
            }
            (Err(e), Some(StopReason::Cancelled)) => {
                info!(error = %sendense_io::error_chain(&e), "job stopped: cancelled at the hub");
                FinishJobRequest::failed(CANCELLED, backup_id)
            }
            (Err(e), Some(StopReason::EndedAtHub)) => {
                info!(error = %sendense_io::error_chain(&e), "job stopped: the hub ended it");
                return;
            }
            (Err(e), Some(StopReason::AgentStopping)) => {
                warn!(error = %sendense_io::error_chain(&e), "job stopped: the agent stops");
                FinishJobRequest::failed(AGENT_STOPPED, backup_id)
            }
            (Err(e), None) => {
                let reason = sendense_io::error_chain(&e);
                error!(error = %reason, "job failed");
                FinishJobRequest::failed(&reason, backup_id)
            }
        };
        if finish.status() == JobStatus::Completed {
            // The last progress, so the finished job shows every byte it moved (a short job
            // ends before its first heartbeat). Best effort: the outcome matters more.
            let last = HeartbeatRequest {
                progress: progress.snapshot(),
                backup_id: finish.backup_id().cloned(),
            };
            if let Err(e) = self.hub.heartbeat(&job_id, &last).await {
                debug!(error = %e, "the last progress report failed");
            }
        }
        self.finish(&job_id, &finish).await;
    }

    /// Heartbeats every interval; forwards the agent's stop to the job; stops the job when the
    /// hub says it no longer runs. Never returns (the job's end ends it).
    async fn supervise(
        &self,
        job_id: &JobId,
        progress: &JobProgress,
        backup_id: &watch::Receiver<Option<BackupId>>,
        stop: &watch::Sender<Option<StopReason>>,
        mut agent_stop: watch::Receiver<bool>,
    ) -> Infallible {
        let interval = self.options.heartbeat_interval;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut beating = true;
        let mut watching = true;
        loop {
            tokio::select! {
                _ = ticker.tick(), if beating => {
                    let request = HeartbeatRequest {
                        progress: progress.snapshot(),
                        backup_id: backup_id.borrow().clone(),
                    };
                    let answer = tokio::time::timeout(interval.max(Duration::from_secs(1)), self.hub.heartbeat(job_id, &request)).await;
                    match answer {
                        Ok(Ok(a)) if a.status == JobStatus::Running => {
                            debug!(done = request.progress.bytes_done, total = request.progress.bytes_total, "heartbeat");
                        }
                        // Heartbeats of a cancelled job still keep its lease while it cleans up.
                        Ok(Ok(a)) if a.status == JobStatus::Cancelled => {
                            if stop_job(stop, StopReason::Cancelled) {
                                warn!("the job was cancelled at the hub: stopping it");
                            }
                        }
                        Ok(Ok(a)) => {
                            warn!(status = %a.status, "the hub ended the job: stopping it");
                            stop_job(stop, StopReason::EndedAtHub);
                            beating = false;
                        }
                        Ok(Err(e @ ClientError::HubStatus { status: 403 | 404 | 409 | 410, .. })) => {
                            warn!(error = %e, "the hub no longer runs the job: stopping it");
                            stop_job(stop, StopReason::EndedAtHub);
                            beating = false;
                        }
                        Ok(Err(e)) => warn!(error = %e, "heartbeat failed; the next one may get through"),
                        Err(_) => warn!("heartbeat timed out; the next one may get through"),
                    }
                }
                // An error: the agent loop is gone, which only happens when it stops.
                () = stop_requested(&mut agent_stop), if watching => {
                    watching = false;
                    let _ = stop_job(stop, StopReason::AgentStopping);
                }
                // Neither heartbeats nor the agent's stop to watch: wait for the job's end.
                () = std::future::pending::<()>(), if !beating && !watching => {}
            }
        }
    }

    /// Reports a job's outcome, retrying while the hub is unreachable or answers 5xx (the
    /// outcome waits in memory; the agent's stop timeout bounds this when stopping).
    async fn finish(&self, job_id: &JobId, finish: &FinishJobRequest) {
        let mut attempt = 0u32;
        loop {
            match self.hub.finish_job(job_id, finish).await {
                Ok(()) => {
                    info!(status = %finish.status(), "outcome reported to the hub");
                    return;
                }
                Err(e) if retryable(&e) => {
                    let delay = self.options.backoff.delay(attempt);
                    warn!(error = %e, attempt, retry_in_ms = delay.as_millis(), "reporting the outcome failed; keeping it and retrying");
                    tokio::time::sleep(delay).await;
                    attempt = attempt.saturating_add(1);
                }
                Err(e) => {
                    error!(error = %e, "the hub refused the job's outcome");
                    return;
                }
            }
        }
    }
}

/// Resolves once the agent stops (or its side of the channel is gone, which only happens then).
async fn stop_requested(agent_stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` answers is not `Send`: drop it here, before any other await.
    let _ = agent_stop.wait_for(|s| *s).await;
}

/// Asks the job to stop for `reason` unless it was asked already; whether this asked.
fn stop_job(stop: &watch::Sender<Option<StopReason>>, reason: StopReason) -> bool {
    stop.send_if_modified(|r| {
        if r.is_none() {
            *r = Some(reason);
            true
        } else {
            false
        }
    })
}

fn log_join(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done
        && e.is_panic()
    {
        error!(error = %e, "a job task panicked");
    }
}

/// Whether a failed hub call may succeed later: the hub is unreachable, the exchange broke, or
/// it answered 5xx.
#[must_use]
pub fn retryable(e: &ClientError) -> bool {
    match e {
        ClientError::HubUnreachable { .. } | ClientError::HubRequest { .. } => true,
        ClientError::HubStatus { status, .. } => *status >= 500,
        _ => false,
    }
}

/// A PEM certificate signing request for `name` (its common name), signed by `key`.
///
/// # Errors
/// [`ClientError::Certificate`].
pub fn csr_pem(key: &KeyPair, name: &AgentName) -> Result<String, ClientError> {
    let mut params = CertificateParams::new(Vec::<String>::new())
        .map_err(cert_error("making the certificate request"))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name.as_str());
    params.distinguished_name = dn;
    params
        .serialize_request(key)
        .and_then(|csr| csr.pem())
        .map_err(cert_error("signing the certificate request"))
}

fn cert_error(what: &'static str) -> impl Fn(rcgen::Error) -> ClientError {
    move |e| ClientError::Certificate {
        what,
        detail: e.to_string(),
    }
}

fn refused(name: &AgentName, detail: String) -> ClientError {
    ClientError::EnrollmentRefused {
        name: name.to_string(),
        detail,
    }
}

/// Makes the state folder (and its parents) and sets it to 0700.
fn make_state_dir(dir: &Path) -> Result<(), ClientError> {
    let file_error = |source| ClientError::File {
        what: "agent state folder",
        path: dir.to_owned(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(STATE_DIR_MODE)
        .create(dir)
        .map_err(file_error)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(STATE_DIR_MODE))
        .map_err(file_error)
}

fn write(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> Result<(), ClientError> {
    let path = dir.join(name);
    sendense_io::atomic::write_atomic(&path, bytes, mode).map_err(|source| ClientError::File {
        what: "agent state file",
        path,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let b = Backoff::default();

        let delays: Vec<Duration> = (0..8).map(|a| b.delay(a)).collect();

        for (attempt, d) in delays.iter().enumerate() {
            let full = Duration::from_secs(1 << attempt.min(5)).min(Duration::from_secs(30));
            assert!(*d >= full / 2 && *d <= full, "attempt {attempt}: {d:?}");
        }
    }

    #[test]
    fn backoff_huge_attempt_stays_at_the_cap() {
        let b = Backoff::default();

        let d = b.delay(u32::MAX);

        assert!(
            d <= Duration::from_secs(30) && d >= Duration::from_secs(15),
            "{d:?}"
        );
    }

    #[test]
    fn retryable_only_unreachable_broken_or_5xx() {
        let status = |status| ClientError::HubStatus {
            method: "GET",
            path: "/".into(),
            status,
            code: "x".into(),
            message: "m".into(),
        };
        let unreachable = ClientError::HubUnreachable {
            url: "u".into(),
            detail: "refused".into(),
        };

        let judged = [
            retryable(&status(503)),
            retryable(&status(500)),
            retryable(&status(409)),
            retryable(&unreachable),
            retryable(&ClientError::TokenRejected { url: "u".into() }),
        ];

        assert_eq!(judged, [true, true, false, true, false]);
    }

    #[test]
    fn job_progress_sums_disks() {
        let p = JobProgress::default();
        p.started(2000, 100);
        p.started(2001, 50);

        p.advanced(2000, 30);
        p.advanced(2001, 20);

        assert_eq!(
            p.snapshot(),
            HeartbeatProgress {
                bytes_done: 50,
                bytes_total: 150
            }
        );
    }

    fn credential(ca_pem: Option<&str>, insecure: bool) -> AgentCredential {
        AgentCredential {
            name: "vc1".parse().expect("name"),
            host: "vc.example:443".into(),
            username: "backup@vsphere.local".into(),
            password: "hunter2".into(),
            ca_pem: ca_pem.map(str::to_owned),
            insecure,
        }
    }

    #[test]
    fn connect_credential_trust_choice_is_kept() {
        let with_ca = connect(&credential(Some("PEM"), false)).expect("ca");
        let insecure = connect(&credential(None, true)).expect("insecure");
        let neither = connect(&credential(None, false)).expect_err("no trust choice");

        assert!(matches!(with_ca.tls, TlsMode::CaPem(ref p) if p == b"PEM"));
        assert!(matches!(insecure.tls, TlsMode::Insecure));
        assert!(
            matches!(neither, ClientError::JobIncomplete { .. }),
            "{neither}"
        );
    }

    #[test]
    fn connect_password_login_is_not_shown_by_debug() {
        let options = connect(&credential(None, true)).expect("insecure");

        let shown = format!("{:?}", options.login);

        assert!(
            matches!(&options.login, sendense_vsphere::Login::Password { user, password } if user == "backup@vsphere.local" && password == "hunter2")
        );
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn backup_options_built_from_the_job() {
        let (backup_tx, _backup_rx) = watch::channel(None);
        let (_stop_tx, stop_rx) = watch::channel(None);
        let hub = HubOptions::with_tls_dir(
            "https://hub:8443",
            Path::new("/state"),
            Path::new("/state/agent.token"),
        );
        let context = JobContext {
            hub: hub.clone(),
            progress: Arc::new(JobProgress::default()),
            backup_id: Arc::new(backup_tx),
            stop: stop_rx,
        };
        let job = AgentJob {
            job_id: JobId::random(),
            kind: JobKind::Backup,
            vm: Some("dc1/vm/web01".into()),
            backup_type: Some(BackupType::Incremental),
            credential: Some(credential(None, true)),
            attempt: 1,
            lease_seconds: 90,
            restore: None,
        };

        let options = backup_options(&job, &context, TransferOptions::default()).expect("options");

        assert_eq!(
            (
                options.vm.as_str(),
                options.backup_type,
                &options.hub,
                options.credential.is_none()
            ),
            ("dc1/vm/web01", BackupType::Incremental, &hub, true)
        );
        assert_eq!(options.connect.address, "vc.example:443");
        assert!(options.started.is_some());
    }

    #[test]
    fn backup_options_job_without_vm_is_incomplete() {
        let (backup_tx, _backup_rx) = watch::channel(None);
        let (_stop_tx, stop_rx) = watch::channel(None);
        let context = JobContext {
            hub: HubOptions::with_tls_dir("https://h:1", Path::new("/s"), Path::new("/s/t")),
            progress: Arc::new(JobProgress::default()),
            backup_id: Arc::new(backup_tx),
            stop: stop_rx,
        };
        let job = AgentJob {
            job_id: JobId::random(),
            kind: JobKind::Backup,
            vm: None,
            backup_type: None,
            credential: Some(credential(None, true)),
            attempt: 1,
            lease_seconds: 90,
            restore: None,
        };

        let err = backup_options(&job, &context, TransferOptions::default()).expect_err("no vm");

        assert!(err.to_string().contains("a VM"), "{err}");
    }
}
