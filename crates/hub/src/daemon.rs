//! `sendense-hub serve`: the daemon. One process: catalog, repository, REST
//! API over HTTPS and the NBD server over TLS, sharing one engine.
//!
//! First start creates `DATA/catalog.redb`, `DATA/repository/`, the TLS
//! folder and the API token; later starts reuse them. The hub runs with umask
//! 077 and sets what is already in DATA to 0600 (files) and 0700 (folders)
//! at start, so images, catalog, keys and token are the hub user's alone.
//! Start-up reconciles the repository with the catalog
//! ([`Engine::reconcile`]). A watchdog fails backups whose client is gone.
//!
//! The NBD port requires a client certificate issued by the hub's CA
//! (`--nbd-client-certs required`, the default; `optional` also accepts
//! clients without one). The REST API asks for none: it takes the bearer
//! token.
//!
//! Shutdown stops the API, fails running backups (chain untouched, partial
//! images removed), closes restore exports and instant recovery exports (their overlays
//! flushed and kept for the next start), then stops the NBD server; each
//! step has a deadline, so the hub ends within [`SHUTDOWN_LIMIT`] whatever
//! its peers do.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sendense_catalog::Catalog;
pub use sendense_nbd::tls::ClientCerts;
use sendense_nbd::{ExportRegistry, Server, ServerOptions};

use crate::agents::Agents;
use crate::api::{ApiState, router};
use crate::credentials::Credentials;
use crate::engine::{Engine, REPOSITORY_DIR, Reconciliation, Watchdog};
use crate::error::HubError;
use crate::hub_jobs::HubJobs;
use crate::jobs::{Jobs, REAP_PERIOD};
use crate::maintenance::{Maintenance, ResumeReport};
use crate::notify::{Notifier, WebhookConfig};
use crate::policies::Policies;
use crate::reverify;
use crate::scheduler::{self, SystemClock};

/// Folder of the TLS material inside the data folder.
pub const TLS_DIR: &str = "tls";

/// The longest a shutdown takes, whatever peers do: the sum of the steps' deadlines.
pub const SHUTDOWN_LIMIT: Duration = Duration::from_secs(30);
/// How long in-flight API requests may finish after shutdown begins.
const API_DRAIN: Duration = Duration::from_secs(8);
/// How long the engine may take to fail running backups and close exports.
const ENGINE_DRAIN: Duration = Duration::from_secs(10);
/// How long the NBD server may take to end its connections.
const NBD_DRAIN: Duration = Duration::from_secs(5);
/// How long queued webhook notifications may take to go out (alongside [`NBD_DRAIN`]).
const WEBHOOK_DRAIN: Duration = Duration::from_secs(4);

pub use crate::engine::{DEFAULT_FREE_SPACE_WARNING_PERCENT, RepositoryConfig};

/// When the first look for points due for re-verification happens after start.
const REVERIFY_FIRST: Duration = Duration::from_secs(60);

/// How the daemon is set up.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// The data folder (catalog, repository, TLS, token).
    pub data_dir: PathBuf,
    /// REST API listen address (HTTPS).
    pub api_listen: SocketAddr,
    /// NBD listen address (TLS required).
    pub nbd_listen: SocketAddr,
    /// Host name clients use to reach this hub: goes into the `nbd_uri`s and
    /// the certificate. Defaults to the NBD listen address's IP.
    pub public_host: Option<String>,
    /// A running backup with no NBD connection since its start, or whose
    /// connections are silent, this long is failed.
    pub idle_timeout: Duration,
    /// A running backup whose every NBD connection has been closed this long
    /// is failed (its client may reconnect within it).
    pub disconnect_grace: Duration,
    /// Which client certificates the NBD port accepts: [`ClientCerts::Required`] (only
    /// certificates the hub's CA issued) or [`ClientCerts::Optional`].
    pub nbd_client_certs: ClientCerts,
    /// Where job notifications go; `None`: nowhere.
    pub webhook: Option<WebhookConfig>,
    /// Most jobs running at once across all agents; `None`: only agents' slots limit them.
    pub max_running_jobs: Option<u32>,
    /// Repository space and re-verification.
    pub repository: RepositoryConfig,
}

/// A started hub: its addresses, and the handle that stops it.
#[derive(Debug)]
pub struct RunningHub {
    /// Where the API listens.
    pub api_addr: SocketAddr,
    /// Where the NBD server listens.
    pub nbd_addr: SocketAddr,
    /// The engine, for in-process callers.
    pub engine: Arc<Engine>,
    /// Queues job notifications for the webhook ([`Notifier::disabled`] without one).
    pub notifier: Notifier,
    /// The job queue, for in-process callers (the scheduler, tests driving the reaper).
    pub jobs: Arc<Jobs>,
    /// The agents, for in-process callers.
    pub agents: Arc<Agents>,
    /// The policies and their scheduler, for in-process callers (tests tick it with their
    /// own time: [`Policies::tick_at`]).
    pub policies: Arc<Policies>,
    /// The jobs the hub runs itself (`prune`, `verify`), for in-process callers.
    pub hub_jobs: Arc<HubJobs>,
    /// Removal of restore points with chain merges, for in-process callers (the prune job
    /// runner).
    pub maintenance: Arc<Maintenance>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningHub {
    /// Stops the hub cleanly and waits until it has.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }

    /// Waits until the hub stops (after `shutdown` resolves) .
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) {
        shutdown.await;
        self.stop().await;
    }
}

/// The hub's two listening sockets, bound before the hub starts (by [`Listeners::bind`], or
/// handed over by a service manager or a test).
#[derive(Debug)]
pub struct Listeners {
    /// The REST API's socket (HTTPS).
    pub api: std::net::TcpListener,
    /// The NBD server's socket (TLS).
    pub nbd: std::net::TcpListener,
}

impl Listeners {
    /// Binds `config.api_listen` and `config.nbd_listen`.
    ///
    /// # Errors
    /// [`HubError::Bind`] naming the address in use.
    pub fn bind(config: &HubConfig) -> Result<Self, HubError> {
        let bind = |addr| {
            std::net::TcpListener::bind(addr).map_err(|source| HubError::Bind { addr, source })
        };
        Ok(Self {
            nbd: bind(config.nbd_listen)?,
            api: bind(config.api_listen)?,
        })
    }
}

/// Runs the hub on `listeners` until `shutdown` resolves, then stops it cleanly (within
/// [`SHUTDOWN_LIMIT`]). What `sendense-hub serve` does.
///
/// # Errors
/// The data folder, TLS material, catalog or listeners cannot be used.
pub async fn run(
    listeners: Listeners,
    config: HubConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), HubError> {
    start_on(listeners, config).await?.run_until(shutdown).await;
    Ok(())
}

/// Starts the hub on the addresses of `config`: prepares the data folder ([`prepare`]) before
/// it binds them, so that once the ports accept connections the CA and the token are there to
/// read; then as [`start_on`].
///
/// # Errors
/// See [`start_on`]; [`HubError::Bind`] when an address is taken.
pub async fn start(config: HubConfig) -> Result<RunningHub, HubError> {
    prepare(&config)?;
    let listeners = Listeners::bind(&config)?;
    start_on(listeners, config).await
}

/// Prepares the data folder (idempotent): umask 077, the repository folder, DATA's modes
/// (0600 files, 0700 folders), the CA and server certificate on first start, the API token.
/// Answers the token.
///
/// # Errors
/// [`HubError::Io`] for the folder or the token, [`HubError::TlsMaterial`].
pub fn prepare(config: &HubConfig) -> Result<String, HubError> {
    let data = &config.data_dir;
    // Everything the hub creates from now on is its user's alone (files 0600, folders 0700),
    // whoever else can reach the machine; what an older hub left is set so below.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    crate::tls::create_private_dir(&data.join(REPOSITORY_DIR))?;
    crate::tls::restrict_tree(data)?;
    let tls_dir = data.join(TLS_DIR);
    if sendense_nbd::tls::ensure_certificates(&tls_dir, &[public_host(config)])
        .map_err(HubError::TlsMaterial)?
    {
        tracing::info!(dir = %tls_dir.display(), "created the hub's CA and certificate");
    }
    crate::token::load_or_create(data)
}

/// The host name clients use: `--public-host`, else the NBD listen address's IP.
fn public_host(config: &HubConfig) -> String {
    config
        .public_host
        .clone()
        .unwrap_or_else(|| config.nbd_listen.ip().to_string())
}

/// Starts the hub on `listeners`: prepares the data folder, recovers, and serves in background
/// tasks; the answer stops it.
///
/// # Errors
/// The data folder, TLS material, catalog or listeners cannot be used.
pub async fn start_on(listeners: Listeners, config: HubConfig) -> Result<RunningHub, HubError> {
    let data = config.data_dir.clone();
    let host = public_host(&config);
    let tls_dir = data.join(TLS_DIR);
    let token = prepare(&config)?;
    let api_tls = sendense_nbd::tls::server_config_from_dir(&tls_dir, false)
        .map_err(HubError::TlsMaterial)?;
    let nbd_tls = sendense_nbd::tls::server_config_from_dir_with(&tls_dir, config.nbd_client_certs)
        .map_err(HubError::TlsMaterial)?;

    let (notifier, notifier_task) = match config.webhook.clone() {
        Some(webhook) => {
            let host = webhook.url.host_str().unwrap_or_default().to_owned();
            let (notifier, task) = Notifier::start(webhook)?;
            tracing::info!(host, "job notifications go to a webhook");
            (notifier, Some(task))
        }
        None => (Notifier::disabled(), None),
    };
    let catalog = Arc::new(Catalog::open_in(&data).map_err(HubError::from)?);
    let credentials = Arc::new(Credentials::open(Arc::clone(&catalog), &data)?);
    let registry = Arc::new(ExportRegistry::new());

    let Listeners { api, nbd } = listeners;
    let bind_err = |addr| move |source| HubError::Bind { addr, source };
    let nbd_addr = nbd.local_addr().map_err(bind_err(config.nbd_listen))?;
    let api_addr = api.local_addr().map_err(bind_err(config.api_listen))?;
    nbd.set_nonblocking(true)
        .map_err(bind_err(config.nbd_listen))?;
    api.set_nonblocking(true)
        .map_err(bind_err(config.api_listen))?;
    let nbd_listener =
        tokio::net::TcpListener::from_std(nbd).map_err(bind_err(config.nbd_listen))?;
    let api_listener = api;

    let nbd_base = format!("nbds://{}:{}", uri_host(&host), nbd_addr.port());
    let engine = Arc::new(
        Engine::new(
            Arc::clone(&catalog),
            data.join(REPOSITORY_DIR),
            Arc::clone(&registry),
            nbd_base,
        )
        .with_repository_config(config.repository),
    );
    // Merge steps a crash interrupted are finished first (before the API serves, and before
    // reconciliation looks at the files they leave): no point is ever half-merged when the API
    // answers.
    let tier = Arc::new(crate::tier::Tier::new(
        Arc::clone(&catalog),
        Arc::clone(&credentials),
        &data,
        &data.join(REPOSITORY_DIR),
    ));
    let maintenance = Arc::new(
        Maintenance::new(
            Arc::clone(&catalog),
            data.join(REPOSITORY_DIR),
            Arc::clone(&engine),
        )
        .with_tier(Arc::clone(&tier)),
    );
    let resumed = maintenance.resume()?;
    if resumed != ResumeReport::default() {
        tracing::warn!(
            rolled_forward = resumed.rolled_forward.len(),
            abandoned = resumed.abandoned.len(),
            failed = resumed.failed.len(),
            "finished merge steps a crash interrupted"
        );
    }
    let report = engine.reconcile()?;
    if report != Reconciliation::default() {
        tracing::warn!(
            failed_running = report.failed_running,
            finished_deletions = report.finished_deletions,
            removed_part_files = report.removed_part_files.len(),
            marked_missing = report.marked_missing.len(),
            unknown_files = report.unknown_files.len(),
            "reconciled the repository with the catalog"
        );
    }

    // Points that live only in a bucket are read from it: instant recoveries over them too.
    let tier = Arc::new(
        crate::tier::Tier::new(
            Arc::clone(&catalog),
            Arc::clone(&credentials),
            &data,
            &data.join(REPOSITORY_DIR),
        )
        .with_cache_mib(config.repository.tier_cache_mib),
    );
    engine.attach_tier(Arc::clone(&tier));

    // Instant recoveries come back under the same export names before the NBD port serves,
    // so their guests reconnect to the same URIs.
    let instants = engine.reopen_instants()?;
    if instants > 0 {
        tracing::info!(instants, "instant recoveries opened again");
    }

    let agents = Arc::new(Agents::new(Arc::clone(&catalog), tls_dir));
    let jobs = Arc::new(
        Jobs::new(
            Arc::clone(&catalog),
            Arc::clone(&engine),
            Arc::clone(&credentials),
        )
        .with_max_running(config.max_running_jobs),
    );
    // Agents that keep heartbeating across the restart keep their jobs; the reaper fails the
    // others once this lease lapses.
    let renewed = jobs.renew_leases(sendense_types::Timestamp::now())?;
    if renewed > 0 {
        tracing::info!(jobs = renewed, "running jobs given a fresh lease");
    }

    let hub_jobs = Arc::new(
        HubJobs::new(
            Arc::clone(&catalog),
            Arc::clone(&engine),
            Arc::clone(&jobs),
            Arc::clone(&maintenance) as Arc<dyn crate::hub_jobs::PointRemover>,
            Arc::new(engine.verifier()),
            Arc::new(SystemClock),
        )
        .with_tier(Arc::clone(&tier)),
    );
    let requeued = hub_jobs.recover()?;
    if !requeued.is_empty() {
        tracing::warn!(jobs = ?requeued, "hub jobs a restart interrupted are queued again");
    }
    let policies = Arc::new(
        Policies::new(
            Arc::clone(&catalog),
            Arc::clone(&jobs),
            Arc::new(SystemClock),
        )
        .with_hub_jobs(Arc::clone(&hub_jobs)),
    );

    let state = ApiState {
        engine: Arc::clone(&engine),
        credentials,
        token: token.into(),
        agents: Arc::clone(&agents),
        jobs: Arc::clone(&jobs),
        policies: Arc::clone(&policies),
        hub_jobs: Arc::clone(&hub_jobs),
        users: Arc::new(crate::users::Users::new(Arc::clone(&catalog))?),
        tier,
    };
    let mut api_tls = (*api_tls).clone();
    api_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let rustls_config = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(api_tls));
    let api_handle = axum_server::Handle::new();
    let api_server = axum_server::from_tcp_rustls(api_listener, rustls_config)
        .map_err(|source| HubError::Bind {
            addr: config.api_listen,
            source,
        })?
        .handle(api_handle.clone());
    let app = router(state);

    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let nbd_server = Server::new(
        registry,
        ServerOptions {
            tls: Some(nbd_tls),
            ..ServerOptions::default()
        },
    );
    let (nbd_stop_tx, nbd_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let nbd_task = tokio::spawn(async move {
        let stop = async {
            let _ = nbd_stop_rx.await;
        };
        if let Err(e) = nbd_server.serve(nbd_listener, stop).await {
            tracing::error!(error = %e, "NBD server failed");
        }
    });
    let api_task = tokio::spawn(async move {
        if let Err(e) = api_server
            .serve(app.into_make_service_with_connect_info::<SocketAddr>())
            .await
        {
            tracing::error!(error = %e, "API server failed");
        }
    });
    let watchdog_engine = Arc::clone(&engine);
    let timers = Watchdog {
        idle_timeout: config.idle_timeout,
        disconnect_grace: config.disconnect_grace,
    };
    let mut watchdog_stop = stop_rx.clone();
    let watchdog = tokio::spawn(async move {
        let period = (timers.idle_timeout.min(timers.disconnect_grace) / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(2));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => watchdog_engine.watchdog_tick(timers).await,
                _ = watchdog_stop.changed() => break,
            }
        }
    });

    let reaper_jobs = Arc::clone(&jobs);
    let mut reaper_stop = stop_rx.clone();
    let reaper = tokio::spawn(async move {
        let mut tick = tokio::time::interval(REAP_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(e) = reaper_jobs.reap(sendense_types::Timestamp::now()).await {
                        tracing::error!(error = %sendense_io::error_chain(&e), "lease reaper failed");
                    }
                }
                _ = reaper_stop.changed() => break,
            }
        }
    });

    let hub_job_runner = tokio::spawn(Arc::clone(&hub_jobs).run(stop_rx.clone()));
    let finished = jobs.subscribe_finished();
    let job_notifier = notifier.clone();
    let notifications = tokio::spawn(notify_finished_jobs(finished, job_notifier));
    let scheduler = spawn_scheduler(Arc::clone(&policies), &jobs, stop_rx.clone());
    let reverify = config.repository.reverify_days.map(|days| {
        let catalog = Arc::clone(&catalog);
        let hub_jobs = Arc::clone(&hub_jobs);
        tokio::spawn(scheduler::run_ticks(
            REVERIFY_FIRST,
            reverify::REVERIFY_PERIOD,
            stop_rx.clone(),
            move || {
                let catalog = Arc::clone(&catalog);
                let hub_jobs = Arc::clone(&hub_jobs);
                async move {
                    let now = sendense_types::Timestamp::now();
                    let done = tokio::task::spawn_blocking(move || {
                        reverify::tick(&catalog, &hub_jobs, now, days)
                    })
                    .await;
                    if let Ok(Err(e)) = done {
                        tracing::error!(error = %sendense_io::error_chain(&e), "re-verification look failed");
                    }
                }
            },
        ))
    });

    let shutdown_engine = Arc::clone(&engine);
    let shutdown_jobs = Arc::clone(&jobs);
    let task = tokio::spawn(async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
        tracing::info!("shutting down");
        // Long polls answer at once instead of holding the API's drain.
        shutdown_jobs.close();
        api_handle.graceful_shutdown(Some(API_DRAIN));
        bounded("API server", API_DRAIN + Duration::from_secs(1), api_task).await;
        bounded("watchdog", Duration::from_secs(1), watchdog).await;
        bounded("lease reaper", Duration::from_secs(1), reaper).await;
        notifications.abort();
        bounded("policy scheduler", Duration::from_secs(1), scheduler).await;
        if let Some(task) = reverify {
            bounded("re-verification", Duration::from_secs(1), task).await;
        }
        // A running prune or verify ends on its own (a merge is never left half way); the
        // journal finishes or undoes one a hard stop interrupts.
        bounded("hub job runner", ENGINE_DRAIN, hub_job_runner).await;
        let engine_down = tokio::spawn(async move { shutdown_engine.shutdown().await });
        bounded("backup engine", ENGINE_DRAIN, engine_down).await;
        let _ = nbd_stop_tx.send(());
        // Notifications the engine's shutdown queued go out while the NBD server ends.
        let webhook = async {
            if let Some(task) = notifier_task {
                bounded("webhook", WEBHOOK_DRAIN, task.stop()).await;
            }
        };
        tokio::join!(bounded("NBD server", NBD_DRAIN, nbd_task), webhook);
        tracing::info!("hub stopped");
    });
    tracing::info!(
        data_dir = %data.display(),
        api = %format!("https://{}:{}", uri_host(&host), api_addr.port()),
        nbd = %format!("nbds://{}:{}", uri_host(&host), nbd_addr.port()),
        nbd_client_certs = ?config.nbd_client_certs,
        "hub ready"
    );
    Ok(RunningHub {
        api_addr,
        nbd_addr,
        engine,
        notifier,
        jobs,
        agents,
        policies,
        hub_jobs,
        maintenance,
        stop: stop_tx,
        task,
    })
}

/// The policy scheduler: one tick at start (runs missed while the hub was down run now, once),
/// then one a second past every minute ([`scheduler::until_next_minute`], [`scheduler::TICK`]);
/// and retries and releases as jobs end. Stops with `stop`.
fn spawn_scheduler(
    policies: Arc<Policies>,
    jobs: &Jobs,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let mut ended = jobs.subscribe_finished();
    tokio::spawn(async move {
        let tick = |policies: Arc<Policies>| async move {
            let now = policies.clock().now();
            match tokio::task::spawn_blocking(move || policies.tick_at(&now)).await {
                Ok(Ok(report)) if !report.started.is_empty() || !report.queued.is_empty() => {
                    tracing::info!(started = ?report.started, queued = report.queued.len(), "scheduler tick");
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %sendense_io::error_chain(&e), "scheduler tick failed");
                }
                Err(e) => tracing::error!(error = %e, "scheduler tick panicked"),
            }
        };
        tick(Arc::clone(&policies)).await;
        let on_ended = {
            let policies = Arc::clone(&policies);
            let mut stop = stop.clone();
            async move {
                loop {
                    tokio::select! {
                        job = ended.recv() => match job {
                            Ok(job) => {
                                let policies = Arc::clone(&policies);
                                let done = tokio::task::spawn_blocking(move || policies.job_ended(&job)).await;
                                if let Ok(Err(e)) = done {
                                    tracing::error!(error = %sendense_io::error_chain(&e), "policy retry failed");
                                }
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                                tracing::warn!(missed, "policy scheduler missed ended jobs");
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                        },
                        changed = stop.changed() => if changed.is_err() || *stop.borrow() { return },
                    }
                }
            }
        };
        let first = scheduler::until_next_minute(&policies.clock().now());
        let ticks =
            scheduler::run_ticks(first, scheduler::TICK, stop, || tick(Arc::clone(&policies)));
        tokio::join!(on_ended, ticks);
    })
}

/// Waits for a shutdown step up to `limit`, then abandons it (aborting its
/// task), so no peer can hold the shutdown.
async fn bounded(step: &'static str, limit: Duration, mut task: tokio::task::JoinHandle<()>) {
    if tokio::time::timeout(limit, &mut task).await.is_err() {
        task.abort();
        tracing::warn!(
            step,
            seconds = limit.as_secs(),
            "shutdown step did not end in time: abandoned"
        );
        // An aborted task ends at its next await; what it held is released then.
        let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
    }
}

/// A host for a URI: IPv6 literals in brackets.
fn uri_host(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// Sends every failed job (and completed one, when the webhook asks for successes) to the
/// webhook, until the job queue is gone. Cancelled jobs are a person's choice: not notified.
async fn notify_finished_jobs(
    mut finished: tokio::sync::broadcast::Receiver<sendense_types::Job>,
    notifier: Notifier,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match finished.recv().await {
            Ok(job) => {
                let event = match job.status {
                    sendense_types::JobStatus::Failed => crate::notify::Event::JobFailed,
                    sendense_types::JobStatus::Completed => crate::notify::Event::JobCompleted,
                    _ => continue,
                };
                notifier.notify(event, &job);
            }
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "webhook: finished jobs arrived faster than they were queued; some not notified"
                );
            }
            Err(RecvError::Closed) => break,
        }
    }
}
