//! Agent mode against a fake hub (axum over HTTPS on 127.0.0.1:0) implementing enroll, the
//! long poll, heartbeat and finish, with a job runner the test controls: enrollment files and
//! modes, slots, cancel by heartbeat, a hub that goes away and comes back, stopping.
//!
//! Intervals are short (heartbeats every 50 ms, backoff 10 ms to 50 ms) and every wait is a
//! condition with a deadline, woken by the fake hub's and the runner's change counters.

use std::collections::{BTreeSet, VecDeque};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sendense_client::ClientError;
use sendense_client::agent::{
    self, AGENT_STOPPED, AgentOptions, Backoff, CANCELLED, EnrollOptions, JobContext, JobDone,
    JobFuture, JobRunner, StopReason,
};
use sendense_client::progress::Progress;
use sendense_types::{
    AgentJob, AgentName, BackupId, EnrollRequest, EnrollResponse, FinishJobRequest,
    HeartbeatRequest, HeartbeatResponse, JobId, JobKind, JobStatus, NextJobQuery,
};
use tempfile::TempDir;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

const ENROLLMENT_TOKEN: &str = "enroll-once-1234";
const AGENT: &str = "appliance-1";
const DEADLINE: Duration = Duration::from_secs(30);

/// A change counter: every state change bumps it; waiters re-check their condition.
type Events = Arc<watch::Sender<u64>>;

fn bump(events: &Events) {
    events.send_modify(|v| *v = v.wrapping_add(1));
}

/// Waits until `cond` holds, re-checking on every event; panics naming `what` after the
/// deadline.
async fn until(events: &Events, what: &str, mut cond: impl FnMut() -> bool) {
    let mut rx = events.subscribe();
    let waited = tokio::time::timeout(DEADLINE, async {
        loop {
            if cond() {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(waited.is_ok() && cond(), "timed out waiting for {what}");
}

#[derive(Default)]
struct HubState {
    queue: VecDeque<AgentJob>,
    handed_out: BTreeSet<JobId>,
    max_handed_out: usize,
    cancelled: BTreeSet<JobId>,
    lost: BTreeSet<JobId>,
    heartbeats: Vec<(JobId, HeartbeatRequest)>,
    finished: Vec<(JobId, FinishJobRequest)>,
    unavailable: bool,
    refused_finishes: usize,
    enrollment_used: bool,
    agent_token: String,
    polls: Vec<NextJobQuery>,
}

#[derive(Clone)]
struct Shared {
    state: Arc<Mutex<HubState>>,
    events: Events,
    ca_cert: String,
    ca_key: String,
}

struct FakeHub {
    url: String,
    ca: PathBuf,
    shared: Shared,
    _dir: TempDir,
}

impl FakeHub {
    async fn start(events: Events) -> Self {
        let dir = tempfile::tempdir().unwrap();
        sendense_nbd::tls::ensure_certificates(dir.path(), &[]).unwrap();
        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
        let shared = Shared {
            state: Arc::new(Mutex::new(HubState {
                agent_token: "agent-token-1".into(),
                ..HubState::default()
            })),
            events,
            ca_cert: read(sendense_nbd::tls::CA_CERT),
            ca_key: read(sendense_nbd::tls::CA_KEY),
        };
        let mut tls =
            (*sendense_nbd::tls::server_config_from_dir(dir.path(), false).unwrap()).clone();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new()
            .route("/api/v1/agents/enroll", post(enroll))
            .route("/api/v1/agents/{name}/jobs/next", get(next))
            .route("/api/v1/jobs/{id}/heartbeat", post(heartbeat))
            .route("/api/v1/jobs/{id}/finish", post(finish))
            .with_state(shared.clone());
        let server = axum_server::from_tcp_rustls(listener, config).unwrap();
        tokio::spawn(async move {
            let _ = server.serve(app.into_make_service()).await;
        });
        Self {
            url: format!("https://127.0.0.1:{port}"),
            ca: dir.path().join(sendense_nbd::tls::CA_CERT),
            shared,
            _dir: dir,
        }
    }

    /// Changes the hub's state (and wakes waiters).
    fn with<T>(&self, f: impl FnOnce(&mut HubState) -> T) -> T {
        let out = f(&mut self.shared.state.lock().unwrap());
        bump(&self.shared.events);
        out
    }

    /// Reads the hub's state.
    fn read<T>(&self, f: impl FnOnce(&HubState) -> T) -> T {
        f(&self.shared.state.lock().unwrap())
    }

    fn queue(&self, vm: &str) -> JobId {
        let job = AgentJob {
            job_id: JobId::random(),
            kind: JobKind::Backup,
            vm: Some(vm.to_owned()),
            backup_type: None,
            credential: None,
            attempt: 1,
            lease_seconds: 90,
            restore: None,
        };
        let id = job.job_id.clone();
        self.with(|s| s.queue.push_back(job));
        id
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({"error": "refused", "message": message})),
    )
        .into_response()
}

/// Why the fake hub refuses an agent call: `None` when it takes it.
fn refusal(shared: &Shared, headers: &HeaderMap) -> Option<Response> {
    let st = shared.state.lock().unwrap();
    if st.unavailable {
        return Some(error(StatusCode::SERVICE_UNAVAILABLE, "restarting"));
    }
    let expected = format!("Bearer {}", st.agent_token);
    match headers.get("authorization").and_then(|v| v.to_str().ok()) {
        Some(got) if got == expected => None,
        _ => Some(error(StatusCode::UNAUTHORIZED, "bad token")),
    }
}

async fn enroll(State(shared): State<Shared>, Json(req): Json<EnrollRequest>) -> Response {
    let mut st = shared.state.lock().unwrap();
    if req.enrollment_token() != ENROLLMENT_TOKEN || st.enrollment_used {
        return error(StatusCode::UNAUTHORIZED, "invalid or used enrollment token");
    }
    let cert = sendense_nbd::tls::sign_client_csr(
        &shared.ca_cert,
        &shared.ca_key,
        req.csr_pem(),
        req.name().as_str(),
    )
    .unwrap();
    st.enrollment_used = true;
    Json(EnrollResponse {
        agent_token: st.agent_token.clone(),
        client_cert_pem: cert,
        ca_cert_pem: shared.ca_cert.clone(),
    })
    .into_response()
}

async fn next(
    State(shared): State<Shared>,
    UrlPath(name): UrlPath<String>,
    Query(query): Query<NextJobQuery>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = refusal(&shared, &headers) {
        return r;
    }
    assert_eq!(name, AGENT);
    let mut rx = shared.events.subscribe();
    shared.state.lock().unwrap().polls.push(query.clone());
    let wait = Duration::from_secs(u64::from(query.wait.unwrap_or(0)));
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        {
            let mut st = shared.state.lock().unwrap();
            if let Some(job) = st.queue.pop_front() {
                st.handed_out.insert(job.job_id.clone());
                st.max_handed_out = st.max_handed_out.max(st.handed_out.len());
                drop(st);
                bump(&shared.events);
                return Json(job).into_response();
            }
        }
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            return StatusCode::NO_CONTENT.into_response();
        }
    }
}

async fn heartbeat(
    State(shared): State<Shared>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    Json(req): Json<HeartbeatRequest>,
) -> Response {
    if let Some(r) = refusal(&shared, &headers) {
        return r;
    }
    let id: JobId = id.parse().unwrap();
    let status = {
        let mut st = shared.state.lock().unwrap();
        if st.lost.contains(&id) {
            return error(StatusCode::CONFLICT, "job is failed, not running");
        }
        st.heartbeats.push((id.clone(), req));
        if st.cancelled.contains(&id) {
            JobStatus::Cancelled
        } else {
            JobStatus::Running
        }
    };
    bump(&shared.events);
    Json(HeartbeatResponse {
        status,
        lease_seconds: 90,
    })
    .into_response()
}

async fn finish(
    State(shared): State<Shared>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    Json(req): Json<FinishJobRequest>,
) -> Response {
    let refused = refusal(&shared, &headers);
    let id: JobId = id.parse().unwrap();
    {
        let mut st = shared.state.lock().unwrap();
        if refused.is_some() {
            st.refused_finishes += 1;
        } else {
            st.handed_out.remove(&id);
            st.finished.push((id, req));
        }
    }
    bump(&shared.events);
    refused.unwrap_or_else(|| Json(serde_json::json!({})).into_response())
}

/// What the test runner saw.
#[derive(Default)]
struct RunnerState {
    running: usize,
    max_running: usize,
    started: Vec<JobId>,
    stops: Vec<(JobId, Option<StopReason>)>,
    release: BTreeSet<JobId>,
    release_all: bool,
}

/// Runs every job as: report 40 of 100 bytes and a backup id, then wait until released (done)
/// or stopped (interrupted).
#[derive(Debug, Clone)]
struct TestRunner {
    state: Arc<Mutex<RunnerState>>,
    events: Events,
}

impl std::fmt::Debug for RunnerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunnerState").finish_non_exhaustive()
    }
}

fn backup_id() -> BackupId {
    BackupId::try_from("backup-vm1-20261206T000000-000001").unwrap()
}

impl TestRunner {
    fn with<T>(&self, f: impl FnOnce(&mut RunnerState) -> T) -> T {
        let out = f(&mut self.state.lock().unwrap());
        bump(&self.events);
        out
    }

    fn read<T>(&self, f: impl FnOnce(&RunnerState) -> T) -> T {
        f(&self.state.lock().unwrap())
    }
}

impl JobRunner for TestRunner {
    fn run(&self, job: AgentJob, context: JobContext) -> JobFuture {
        let me = self.clone();
        Box::pin(async move {
            let id = job.job_id.clone();
            me.with(|s| {
                s.running += 1;
                s.max_running = s.max_running.max(s.running);
                s.started.push(id.clone());
            });
            context.progress.started(2000, 100);
            context.progress.advanced(2000, 40);
            context.backup_id.send_replace(Some(backup_id()));
            let mut rx = me.events.subscribe();
            let released = async {
                loop {
                    if me.read(|s| s.release_all || s.release.contains(&id)) {
                        return;
                    }
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
            };
            let result = tokio::select! {
                () = released => Ok(JobDone { backup_id: Some(backup_id()), inventory: None, note: None }),
                () = context.stopped() => Err(ClientError::Interrupted),
            };
            me.with(|s| {
                s.running -= 1;
                if result.is_err() {
                    s.stops.push((id.clone(), context.stop_reason()));
                }
            });
            result
        })
    }
}

struct Running {
    hub: FakeHub,
    runner: TestRunner,
    events: Events,
    state_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    agent: Option<JoinHandle<Result<(), ClientError>>>,
    _dir: TempDir,
}

impl Running {
    /// Changes the hub's state.
    fn hub<T>(&self, f: impl FnOnce(&mut HubState) -> T) -> T {
        self.hub.with(f)
    }

    /// Reads the hub's state.
    fn seen<T>(&self, f: impl FnOnce(&HubState) -> T) -> T {
        self.hub.read(f)
    }

    async fn until(&self, what: &str, cond: impl FnMut() -> bool) {
        until(&self.events, what, cond).await;
    }

    /// Sends the stop (as SIGTERM would) and waits for `agent::run` to return.
    async fn stop(&mut self) -> Result<(), ClientError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let agent = self.agent.take().expect("agent running");
        tokio::time::timeout(DEADLINE, agent)
            .await
            .expect("agent stops in time")
            .expect("agent task")
    }
}

async fn enrolled(events: &Events) -> (FakeHub, TempDir, PathBuf) {
    let hub = FakeHub::start(Arc::clone(events)).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("enroll.token");
    std::fs::write(&token_file, format!("{ENROLLMENT_TOKEN}\n")).unwrap();
    let state_dir = dir.path().join("state");
    agent::enroll(&enroll_options(&hub, &token_file, &state_dir))
        .await
        .unwrap();
    (hub, dir, state_dir)
}

fn enroll_options(hub: &FakeHub, token_file: &Path, state_dir: &Path) -> EnrollOptions {
    EnrollOptions {
        hub: hub.url.clone(),
        ca_file: hub.ca.clone(),
        name: AgentName::try_from(AGENT).unwrap(),
        enrollment_token_file: token_file.to_owned(),
        state_dir: state_dir.to_owned(),
        force: false,
    }
}

/// An enrolled agent with `slots`, running against the fake hub with the test runner.
async fn start_agent(slots: u32, queued: &[&str]) -> (Running, Vec<JobId>) {
    let events: Events = Arc::new(watch::channel(0).0);
    let (hub, dir, state_dir) = enrolled(&events).await;
    let ids = queued.iter().map(|vm| hub.queue(vm)).collect();
    let runner = TestRunner {
        state: Arc::new(Mutex::new(RunnerState::default())),
        events: Arc::clone(&events),
    };
    let mut options = AgentOptions::new(&state_dir);
    options.slots = slots;
    options.wait_seconds = 1;
    options.heartbeat_interval = Duration::from_millis(50);
    options.backoff = Backoff {
        first: Duration::from_millis(10),
        max: Duration::from_millis(50),
    };
    options.stop_timeout = Duration::from_secs(10);
    options.runner = Arc::new(runner.clone());
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let agent = tokio::spawn(agent::run(options, async move {
        let _ = stop_rx.await;
    }));
    (
        Running {
            hub,
            runner,
            events,
            state_dir,
            stop: Some(stop_tx),
            agent: Some(agent),
            _dir: dir,
        },
        ids,
    )
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn enroll_writes_state_with_modes_and_a_certificate_for_the_local_key() {
    let events: Events = Arc::new(watch::channel(0).0);

    let (hub, _dir, state) = enrolled(&events).await;

    let key_pem = std::fs::read_to_string(state.join("client-key.pem")).unwrap();
    let cert_pem = std::fs::read(state.join("client-cert.pem")).unwrap();
    let key = rcgen::KeyPair::from_pem(&key_pem).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&cert_pem).unwrap();
    let cert = pem.parse_x509().unwrap();
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );
    assert!(
        cert.subject().to_string().contains(AGENT),
        "{}",
        cert.subject()
    );
    assert_eq!(
        [
            mode(&state),
            mode(&state.join("client-key.pem")),
            mode(&state.join("agent.token")),
        ],
        [0o700, 0o600, 0o600]
    );
    assert_eq!(
        std::fs::read_to_string(state.join("agent.token"))
            .unwrap()
            .trim(),
        "agent-token-1"
    );
    assert_eq!(
        std::fs::read_to_string(state.join("ca-cert.pem")).unwrap(),
        hub.shared.ca_cert
    );
    let config = agent::read_config(&state).unwrap();
    assert_eq!(
        (config.hub.as_str(), config.name.as_str()),
        (hub.url.as_str(), AGENT)
    );
}

#[tokio::test]
async fn enroll_wrong_token_is_refused_naming_the_fix_and_writes_nothing() {
    let events: Events = Arc::new(watch::channel(0).0);
    let hub = FakeHub::start(events).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("enroll.token");
    std::fs::write(&token_file, "wrong-token").unwrap();
    let state = dir.path().join("state");

    let err = agent::enroll(&enroll_options(&hub, &token_file, &state))
        .await
        .unwrap_err();

    let text = err.to_string();
    assert!(
        matches!(err, ClientError::EnrollmentRefused { .. }),
        "{err:?}"
    );
    assert!(
        text.contains("refused the enrollment token") && text.contains("POST /api/v1/agents"),
        "{text}"
    );
    assert!(!state.exists());
}

#[tokio::test]
async fn enroll_over_enrolled_state_needs_force() {
    let events: Events = Arc::new(watch::channel(0).0);
    let (hub, dir, state) = enrolled(&events).await;
    hub.with(|s| {
        s.enrollment_used = false;
        s.agent_token = "agent-token-2".into();
    });
    let token_file = dir.path().join("enroll.token");
    let mut options = enroll_options(&hub, &token_file, &state);

    let refused = agent::enroll(&options).await.unwrap_err();
    options.force = true;
    agent::enroll(&options).await.unwrap();

    assert!(
        matches!(refused, ClientError::AlreadyEnrolled { .. }),
        "{refused:?}"
    );
    assert!(refused.to_string().contains("--force"), "{refused}");
    assert_eq!(
        std::fs::read_to_string(state.join("agent.token"))
            .unwrap()
            .trim(),
        "agent-token-2"
    );
}

#[tokio::test]
async fn run_two_slots_three_jobs_at_most_two_at_once_all_complete() {
    let (mut r, ids) = start_agent(2, &["vm1", "vm2", "vm3"]).await;
    r.until("two jobs running", || r.runner.read(|s| s.running == 2))
        .await;
    let waiting = r.seen(|s| s.queue.len());

    r.runner.with(|s| s.release_all = true);
    r.until("three outcomes", || r.seen(|s| s.finished.len() == 3))
        .await;

    let stopped = r.stop().await;
    assert!(stopped.is_ok(), "{stopped:?}");
    assert_eq!(waiting, 1);
    assert_eq!(r.runner.read(|s| s.max_running), 2);
    assert_eq!(r.seen(|s| s.max_handed_out), 2);
    let finished = r.seen(|s| s.finished.clone());
    let mut done: Vec<JobId> = finished.iter().map(|(id, _)| id.clone()).collect();
    let mut expected = ids.clone();
    done.sort();
    expected.sort();
    assert_eq!(done, expected);
    assert!(finished.iter().all(|(_, f)| f.status() == JobStatus::Completed
        && f.backup_id() == Some(&backup_id())));
    assert!(r.seen(|s| {
        s.polls
            .iter()
            .all(|q| q.slots == Some(2) && q.wait == Some(1))
    }));
}

#[tokio::test]
async fn run_heartbeats_carry_progress_and_backup_id() {
    let (mut r, ids) = start_agent(1, &["vm1"]).await;

    r.until("a heartbeat with progress", || {
        r.seen(|s| {
            s.heartbeats.iter().any(|(id, h)| {
                id == &ids[0]
                    && h.progress.bytes_done == 40
                    && h.progress.bytes_total == 100
                    && h.backup_id == Some(backup_id())
            })
        })
    })
    .await;

    r.runner.with(|s| s.release_all = true);
    r.until("the outcome", || r.seen(|s| s.finished.len() == 1))
        .await;
    assert!(r.stop().await.is_ok());
}

#[tokio::test]
async fn run_heartbeat_answering_cancelled_stops_the_job_and_reports_it() {
    let (mut r, ids) = start_agent(1, &["vm1"]).await;
    r.until("the job running", || r.runner.read(|s| s.running == 1))
        .await;

    r.hub(|s| s.cancelled.insert(ids[0].clone()));
    r.until("the report", || r.seen(|s| s.finished.len() == 1))
        .await;

    assert!(r.stop().await.is_ok());
    assert_eq!(
        r.runner.read(|s| s.stops.clone()),
        [(ids[0].clone(), Some(StopReason::Cancelled))]
    );
    let finished = r.seen(|s| s.finished.clone());
    assert_eq!(finished[0].0, ids[0]);
    assert_eq!(
        (finished[0].1.status(), finished[0].1.error()),
        (JobStatus::Failed, Some(CANCELLED))
    );
}

#[tokio::test]
async fn run_job_the_hub_no_longer_holds_is_stopped_without_report() {
    let (mut r, ids) = start_agent(1, &["vm1"]).await;
    r.until("the job running", || r.runner.read(|s| s.running == 1))
        .await;

    r.hub(|s| s.lost.insert(ids[0].clone()));
    r.until("the job stopped", || r.runner.read(|s| !s.stops.is_empty()))
        .await;

    assert!(r.stop().await.is_ok());
    assert_eq!(
        r.runner.read(|s| s.stops.clone()),
        [(ids[0].clone(), Some(StopReason::EndedAtHub))]
    );
    assert!(r.seen(|s| s.finished.is_empty()));
}

#[tokio::test]
async fn run_hub_unavailable_then_back_outcome_delivered_after_reconnect() {
    let (mut r, ids) = start_agent(1, &["vm1"]).await;
    r.until("the job running", || r.runner.read(|s| s.running == 1))
        .await;

    r.hub(|s| s.unavailable = true);
    r.runner.with(|s| s.release_all = true);
    r.until("two refused reports", || {
        r.seen(|s| s.refused_finishes >= 2)
    })
    .await;
    r.hub(|s| s.unavailable = false);
    r.until("the outcome", || r.seen(|s| s.finished.len() == 1))
        .await;

    assert!(r.stop().await.is_ok());
    let finished = r.seen(|s| s.finished.clone());
    assert_eq!(finished[0].0, ids[0]);
    assert_eq!(finished[0].1.status(), JobStatus::Completed);
}

#[tokio::test]
async fn run_stop_fails_running_jobs_at_the_hub_and_returns() {
    let (mut r, ids) = start_agent(2, &["vm1", "vm2"]).await;
    r.until("two jobs running", || r.runner.read(|s| s.running == 2))
        .await;

    let stopped = r.stop().await;

    assert!(stopped.is_ok(), "{stopped:?}");
    let mut stops = r.runner.read(|s| s.stops.clone());
    stops.sort_by(|a, b| a.0.cmp(&b.0));
    let mut expected: Vec<(JobId, Option<StopReason>)> = ids
        .iter()
        .map(|id| (id.clone(), Some(StopReason::AgentStopping)))
        .collect();
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(stops, expected);
    let finished = r.seen(|s| s.finished.clone());
    assert_eq!(finished.len(), 2);
    assert!(finished.iter().all(|(_, f)| f.status() == JobStatus::Failed
        && f.error() == Some(AGENT_STOPPED)
        && f.backup_id() == Some(&backup_id())));
}

#[tokio::test]
async fn run_with_rejected_agent_token_ends_naming_the_fix() {
    let (mut r, _) = start_agent(1, &[]).await;

    r.hub(|s| s.agent_token = "revoked".into());
    let agent = r.agent.take().expect("agent running");
    let result = tokio::time::timeout(DEADLINE, agent)
        .await
        .expect("agent ends")
        .expect("agent task");

    let err = result.unwrap_err();
    assert!(
        matches!(err, ClientError::AgentTokenRejected { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("agent enroll --force"), "{err}");
    assert!(r.state_dir.exists());
}
