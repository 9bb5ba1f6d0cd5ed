//! Webhook notifications: one URL per hub, told when a job fails (and, when asked, when one
//! completes).
//!
//! Each notification is a `POST` of `{"event": "job_failed"|"job_completed", "job": {...}}`
//! with the headers
//! - `X-Sendense-Event`: the event,
//! - `X-Sendense-Delivery`: an id, the same for every attempt of one notification,
//! - `X-Sendense-Signature`: `sha256=<hex HMAC-SHA256 of the body, keyed with the secret>`,
//!
//! so the receiver can check that the hub sent it, unchanged. An attempt that cannot connect,
//! times out, or is answered 5xx or 429 is tried again after 1 s, 2 s, 4 s... (capped), up to a
//! bounded number of attempts; any other answer ends it (2xx delivered, else refused).
//!
//! [`Notifier::notify`] never waits: it puts the notification on a bounded queue that one task
//! works off in order, and drops it with a warning when the queue is full. The secret never
//! appears in logs or `Debug` output; neither does the URL (it may carry a token): logs name
//! its host only.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::error::HubError;

/// CA bundles tried, in order, for an `https` webhook when no CA file is given: Debian and
/// Ubuntu, Fedora and RHEL, then Alpine, openSUSE and others.
pub const SYSTEM_CA_BUNDLES: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// Notifications waiting at most; more are dropped (with a warning).
pub const DEFAULT_QUEUE: usize = 1024;

/// The header naming the event.
pub const EVENT_HEADER: &str = "X-Sendense-Event";
/// The header holding the delivery id.
pub const DELIVERY_HEADER: &str = "X-Sendense-Delivery";
/// The header holding `sha256=<hex>`.
pub const SIGNATURE_HEADER: &str = "X-Sendense-Signature";

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A job failed.
    JobFailed,
    /// A job completed (sent only when the webhook asks for successes).
    JobCompleted,
}

impl Event {
    /// The name on the wire: `job_failed`, `job_completed`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::JobFailed => "job_failed",
            Self::JobCompleted => "job_completed",
        }
    }
}

/// The HMAC key of the signatures. Its `Debug` output hides it.
#[derive(Clone)]
pub struct WebhookSecret(Arc<[u8]>);

impl WebhookSecret {
    /// A secret of these bytes.
    ///
    /// # Errors
    /// [`HubError::WebhookSecretEmpty`] for no bytes (`path` names where they came from).
    pub fn new(bytes: &[u8], path: &Path) -> Result<Self, HubError> {
        if bytes.is_empty() {
            return Err(HubError::WebhookSecretEmpty {
                path: path.to_owned(),
            });
        }
        Ok(Self(bytes.into()))
    }

    /// Reads the secret from a file: its content without the trailing line break.
    ///
    /// # Errors
    /// [`HubError::WebhookSecretFile`] when unreadable, [`HubError::WebhookSecretEmpty`].
    pub fn from_file(path: &Path) -> Result<Self, HubError> {
        let bytes = std::fs::read(path).map_err(|source| HubError::WebhookSecretFile {
            path: path.to_owned(),
            source,
        })?;
        let end = bytes
            .iter()
            .rposition(|b| !matches!(b, b'\n' | b'\r'))
            .map_or(0, |i| i + 1);
        Self::new(&bytes[..end], path)
    }

    /// `sha256=<hex>` of `body`.
    #[must_use]
    pub fn sign(&self, body: &[u8]) -> String {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.0);
        let tag = ring::hmac::sign(&key, body);
        let mut text = String::with_capacity(7 + 64);
        text.push_str("sha256=");
        for b in tag.as_ref() {
            text.push(char::from(HEX[usize::from(b >> 4)]));
            text.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        text
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(<hidden>)")
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// When to try a delivery again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Attempts in all (at least 1).
    pub attempts: u32,
    /// Wait before the second attempt; each later wait doubles.
    pub first_delay: Duration,
    /// The longest wait.
    pub max_delay: Duration,
    /// One attempt's limit (connect, send, answer).
    pub request_timeout: Duration,
}

impl Default for Retry {
    /// 5 attempts, waiting 1 s, 2 s, 4 s, 8 s (capped at 60 s); 10 s per attempt.
    fn default() -> Self {
        Self {
            attempts: 5,
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
        }
    }
}

impl Retry {
    /// The wait after failed attempt `n` (1 = the first attempt).
    #[must_use]
    pub fn delay(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
        self.first_delay
            .checked_mul(factor)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }
}

/// The hub's webhook: where, the secret, which events.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Where notifications are POSTed (`http` or `https`).
    pub url: reqwest::Url,
    /// The signing key.
    pub secret: WebhookSecret,
    /// Also notify completed jobs (failures are always notified).
    pub on_success: bool,
    /// CA certificates (PEM) to trust for an `https` URL; `None`: the system's bundle
    /// ([`SYSTEM_CA_BUNDLES`]).
    pub ca_file: Option<PathBuf>,
    /// Retries.
    pub retry: Retry,
    /// Notifications waiting at most.
    pub queue: usize,
}

impl WebhookConfig {
    /// A webhook to `url` with this secret, default retries and queue.
    ///
    /// # Errors
    /// [`HubError::WebhookUrl`] for a URL that is not `http://` or `https://` with a host.
    pub fn new(url: &str, secret: WebhookSecret, on_success: bool) -> Result<Self, HubError> {
        let bad = |reason| HubError::WebhookUrl { reason };
        let parsed = reqwest::Url::parse(url).map_err(|_| bad("not a URL"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(bad("not http:// or https://"));
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(bad("no host"));
        }
        Ok(Self {
            url: parsed,
            secret,
            on_success,
            ca_file: None,
            retry: Retry::default(),
            queue: DEFAULT_QUEUE,
        })
    }
}

/// Queues notifications for the webhook's task; cheap to clone. [`Notifier::disabled`] (no
/// webhook) accepts and drops everything.
#[derive(Debug, Clone)]
pub struct Notifier {
    inner: Option<Arc<Sender>>,
}

#[derive(Debug)]
struct Sender {
    queue: mpsc::Sender<Delivery>,
    on_success: bool,
}

/// The task delivering notifications; stop it with [`NotifierTask::stop`].
#[derive(Debug)]
pub struct NotifierTask {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl NotifierTask {
    /// Tells the task to stop: what is queued gets one more attempt each, no retry; answers
    /// the task to await (bounded by the caller).
    #[must_use]
    pub fn stop(self) -> tokio::task::JoinHandle<()> {
        self.stop.send_replace(true);
        self.task
    }
}

/// One notification on the queue.
#[derive(Debug)]
struct Delivery {
    id: String,
    event: Event,
    body: bytes::Bytes,
}

#[derive(Serialize)]
struct Envelope<'a, J: Serialize> {
    event: Event,
    job: &'a J,
}

impl Notifier {
    /// No webhook: every notification is dropped silently.
    #[must_use]
    pub const fn disabled() -> Self {
        Self { inner: None }
    }

    /// Starts the delivery task for `config` (call within a tokio runtime).
    ///
    /// # Errors
    /// [`HubError::WebhookCa`] when the CA file (or, for `https`, any system bundle) cannot be
    /// used; [`HubError::WebhookClient`] when the HTTP client cannot be built.
    pub fn start(config: WebhookConfig) -> Result<(Self, NotifierTask), HubError> {
        let tls = tls_config(&config)?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.retry.request_timeout)
            .timeout(config.retry.request_timeout)
            .user_agent(concat!("sendense-hub/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| HubError::WebhookClient {
                source: e.without_url(),
            })?;
        let (queue, rx) = mpsc::channel(config.queue.max(1));
        let (stop, stop_rx) = watch::channel(false);
        let worker = Worker {
            http,
            url: config.url,
            secret: config.secret,
            retry: config.retry,
        };
        let task = tokio::spawn(worker.run(rx, stop_rx));
        let notifier = Self {
            inner: Some(Arc::new(Sender {
                queue,
                on_success: config.on_success,
            })),
        };
        Ok((notifier, NotifierTask { stop, task }))
    }

    /// Queues a notification of `event` about `job` (any serializable job, sent as the
    /// `job` field) and returns at once. Answers whether it was queued: not without a
    /// webhook, not a `job_completed` when the webhook does not ask for successes, not when
    /// the queue is full (a warning is logged) or `job` does not serialize.
    pub fn notify(&self, event: Event, job: &impl Serialize) -> bool {
        let Some(sender) = &self.inner else {
            return false;
        };
        if event == Event::JobCompleted && !sender.on_success {
            return false;
        }
        let body = match serde_json::to_vec(&Envelope { event, job }) {
            Ok(body) => bytes::Bytes::from(body),
            Err(e) => {
                tracing::warn!(event = event.as_str(), error = %e, "webhook: job does not serialize, notification dropped");
                return false;
            }
        };
        let id = delivery_id();
        match sender.queue.try_send(Delivery {
            id: id.clone(),
            event,
            body,
        }) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(event = event.as_str(), delivery = %id, "webhook queue full: notification dropped");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::warn!(event = event.as_str(), delivery = %id, "webhook stopped: notification dropped");
                false
            }
        }
    }
}

/// 16 random bytes in hex.
fn delivery_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes
        .iter()
        .flat_map(|b| [HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]])
        .map(char::from)
        .collect()
}

/// TLS for the webhook: the CA file, else for `https` the first system bundle found; for
/// `http` with no CA file, no roots (never used).
fn tls_config(config: &WebhookConfig) -> Result<rustls::ClientConfig, HubError> {
    let ca = match &config.ca_file {
        Some(path) => Some(path.clone()),
        None if config.url.scheme() == "https" => Some(
            SYSTEM_CA_BUNDLES
                .iter()
                .map(PathBuf::from)
                .find(|p| p.exists())
                .ok_or(HubError::WebhookNoCa)?,
        ),
        None => None,
    };
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = ca {
        let bad = |reason: &'static str| HubError::WebhookCa {
            path: path.clone(),
            reason,
        };
        let certs = CertificateDer::pem_file_iter(&path).map_err(|_| bad("cannot read it"))?;
        for cert in certs {
            // A bundle may hold certificates rustls cannot use; the others still count.
            let _ = roots.add(cert.map_err(|_| bad("invalid PEM"))?);
        }
        if roots.is_empty() {
            return Err(bad("no usable CA certificate in it"));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|_| HubError::WebhookCa {
            path: PathBuf::new(),
            reason: "no TLS protocol version available",
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// The delivery task's state.
struct Worker {
    http: reqwest::Client,
    url: reqwest::Url,
    secret: WebhookSecret,
    retry: Retry,
}

/// How one attempt ended.
enum Attempt {
    Delivered,
    /// Worth another attempt (connection, timeout, 5xx, 429).
    Again(String),
    /// Not worth another (any other answer).
    Refused(reqwest::StatusCode),
}

impl Worker {
    async fn run(self, mut rx: mpsc::Receiver<Delivery>, mut stop: watch::Receiver<bool>) {
        loop {
            let delivery = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break,
                d = rx.recv() => match d {
                    Some(d) => d,
                    None => return,
                },
            };
            self.deliver(&delivery, &mut stop).await;
        }
        // Stopping: what is queued gets one attempt each (the caller bounds the time).
        rx.close();
        while let Some(delivery) = rx.recv().await {
            self.deliver(&delivery, &mut stop).await;
        }
    }

    /// Attempts `delivery` until delivered, refused, out of attempts, or stopped (then after
    /// one more attempt).
    async fn deliver(&self, delivery: &Delivery, stop: &mut watch::Receiver<bool>) {
        let signature = self.secret.sign(&delivery.body);
        let host = self.url.host_str().unwrap_or_default();
        let attempts = self.retry.attempts.max(1);
        let mut n = 1;
        loop {
            match self.attempt(delivery, &signature).await {
                Attempt::Delivered => {
                    tracing::debug!(event = delivery.event.as_str(), delivery = %delivery.id, host, attempts = n, "webhook delivered");
                    return;
                }
                Attempt::Refused(status) => {
                    tracing::warn!(event = delivery.event.as_str(), delivery = %delivery.id, host, status = status.as_u16(), "webhook refused the notification");
                    return;
                }
                Attempt::Again(why) if n >= attempts || *stop.borrow() => {
                    tracing::warn!(event = delivery.event.as_str(), delivery = %delivery.id, host, attempts = n, error = %why, "webhook notification given up");
                    return;
                }
                Attempt::Again(why) => {
                    let delay = self.retry.delay(n);
                    tracing::debug!(event = delivery.event.as_str(), delivery = %delivery.id, host, attempt = n, error = %why, delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), "webhook attempt failed, trying again");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        _ = stop.wait_for(|s| *s) => {}
                    }
                    n += 1;
                }
            }
        }
    }

    async fn attempt(&self, delivery: &Delivery, signature: &str) -> Attempt {
        let sent = self
            .http
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(EVENT_HEADER, delivery.event.as_str())
            .header(DELIVERY_HEADER, &delivery.id)
            .header(SIGNATURE_HEADER, signature)
            .body(delivery.body.clone())
            .send()
            .await;
        match sent {
            Ok(answer) if answer.status().is_success() => Attempt::Delivered,
            Ok(answer)
                if answer.status().is_server_error()
                    || answer.status() == reqwest::StatusCode::TOO_MANY_REQUESTS =>
            {
                Attempt::Again(format!("answered {}", answer.status()))
            }
            Ok(answer) => Attempt::Refused(answer.status()),
            // Without the URL: it may carry a token.
            Err(e) => Attempt::Again(sendense_io::error_chain(&e.without_url())),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use serde_json::{Value, json};

    use super::*;

    /// What the test receiver saw of one request.
    #[derive(Debug, Clone)]
    struct Received {
        headers: HeaderMap,
        body: Bytes,
    }

    impl Received {
        fn header(&self, name: &str) -> &str {
            self.headers[name].to_str().unwrap()
        }

        fn json(&self) -> Value {
            serde_json::from_slice(&self.body).unwrap()
        }
    }

    type Answer = Arc<dyn Fn(&Value, usize) -> StatusCode + Send + Sync>;

    #[derive(Clone)]
    struct ReceiverState {
        seen: Arc<Mutex<Vec<Received>>>,
        tx: mpsc::UnboundedSender<Received>,
        answer: Answer,
    }

    /// A webhook receiver app: `answer(body, attempt of this delivery id)` picks the status;
    /// each request is sent on the channel as it arrives.
    fn app(answer: Answer) -> (axum::Router, mpsc::UnboundedReceiver<Received>) {
        async fn hook(
            State(s): State<ReceiverState>,
            headers: HeaderMap,
            body: Bytes,
        ) -> StatusCode {
            let got = Received { headers, body };
            let attempt = {
                let mut seen = s.seen.lock().unwrap();
                seen.push(got.clone());
                let id = got.header(DELIVERY_HEADER).to_owned();
                seen.iter()
                    .filter(|r| r.header(DELIVERY_HEADER) == id)
                    .count()
            };
            let status = (s.answer)(&got.json(), attempt);
            let _ = s.tx.send(got);
            status
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let state = ReceiverState {
            seen: Arc::default(),
            tx,
            answer,
        };
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state(state);
        (app, rx)
    }

    /// [`app`] over plain HTTP on 127.0.0.1:0; answers its URL (with a query token, which
    /// must never be logged).
    async fn receiver(answer: Answer) -> (String, mpsc::UnboundedReceiver<Received>) {
        let (app, rx) = app(answer);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}/hook?token=t0p"), rx)
    }

    /// The next request, within 10 s.
    async fn next(rx: &mut mpsc::UnboundedReceiver<Received>) -> Received {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("no webhook request within 10 s")
            .unwrap()
    }

    fn config(url: &str, on_success: bool) -> WebhookConfig {
        let secret = WebhookSecret::new(b"s3cret", Path::new("test")).unwrap();
        let mut config = WebhookConfig::new(url, secret, on_success).unwrap();
        config.retry = Retry {
            attempts: 4,
            first_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(20),
            request_timeout: Duration::from_secs(5),
        };
        config
    }

    fn ok() -> Answer {
        Arc::new(|_, _| StatusCode::NO_CONTENT)
    }

    #[tokio::test]
    async fn delivery_is_signed_over_its_body_and_names_event_and_delivery() {
        let (url, mut rx) = receiver(ok()).await;
        let (notifier, _task) = Notifier::start(config(&url, false)).unwrap();

        let queued = notifier.notify(
            Event::JobFailed,
            &json!({"job_id": "j1", "status": "failed"}),
        );
        let got = next(&mut rx).await;

        assert!(queued);
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"s3cret");
        let hex = got
            .header(SIGNATURE_HEADER)
            .strip_prefix("sha256=")
            .unwrap()
            .to_owned();
        let tag: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        ring::hmac::verify(&key, &got.body, &tag).unwrap();
        assert_eq!(got.header(EVENT_HEADER), "job_failed");
        assert_eq!(got.header("content-type"), "application/json");
        assert_eq!(got.header(DELIVERY_HEADER).len(), 32);
        assert_eq!(
            got.json(),
            json!({"event": "job_failed", "job": {"job_id": "j1", "status": "failed"}})
        );
    }

    #[tokio::test]
    async fn receiver_failing_twice_gets_a_third_attempt_of_the_same_delivery() {
        let answer: Answer = Arc::new(|_, attempt| {
            if attempt <= 2 {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            }
        });
        let (url, mut rx) = receiver(answer).await;
        let (notifier, _task) = Notifier::start(config(&url, false)).unwrap();

        notifier.notify(Event::JobFailed, &json!({"job_id": "j2"}));
        let attempts = [
            next(&mut rx).await,
            next(&mut rx).await,
            next(&mut rx).await,
        ];
        // A later notification arrives next: the third attempt was the last of j2.
        notifier.notify(Event::JobFailed, &json!({"job_id": "j3"}));
        let after = next(&mut rx).await;

        let id = attempts[0].header(DELIVERY_HEADER);
        assert!(attempts.iter().all(|r| r.header(DELIVERY_HEADER) == id));
        assert!(attempts.iter().all(|r| r.body == attempts[0].body));
        assert_eq!(after.json()["job"]["job_id"], "j3");
    }

    #[tokio::test]
    async fn failing_receiver_gets_the_bounded_number_of_attempts() {
        let answer: Answer = Arc::new(|body, _| {
            if body["job"]["job_id"] == "bad" {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::OK
            }
        });
        let (url, mut rx) = receiver(answer).await;
        let (notifier, _task) = Notifier::start(config(&url, false)).unwrap();

        notifier.notify(Event::JobFailed, &json!({"job_id": "bad"}));
        notifier.notify(Event::JobFailed, &json!({"job_id": "good"}));
        let mut bad = 0;
        while next(&mut rx).await.json()["job"]["job_id"] == "bad" {
            bad += 1;
        }

        assert_eq!(bad, 4);
    }

    #[tokio::test]
    async fn client_error_answer_is_not_retried() {
        let answer: Answer = Arc::new(|body, _| {
            if body["job"]["job_id"] == "refused" {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::OK
            }
        });
        let (url, mut rx) = receiver(answer).await;
        let (notifier, _task) = Notifier::start(config(&url, false)).unwrap();

        notifier.notify(Event::JobFailed, &json!({"job_id": "refused"}));
        notifier.notify(Event::JobFailed, &json!({"job_id": "next"}));
        let first = next(&mut rx).await;
        let second = next(&mut rx).await;

        assert_eq!(first.json()["job"]["job_id"], "refused");
        assert_eq!(second.json()["job"]["job_id"], "next");
    }

    #[tokio::test]
    async fn completed_jobs_are_sent_only_when_on_success() {
        let (url, mut rx) = receiver(ok()).await;
        let (quiet, _t1) = Notifier::start(config(&url, false)).unwrap();
        let (chatty, _t2) = Notifier::start(config(&url, true)).unwrap();

        let quiet_queued = quiet.notify(Event::JobCompleted, &json!({"job_id": "q"}));
        quiet.notify(Event::JobFailed, &json!({"job_id": "q-failed"}));
        let first = next(&mut rx).await;
        let chatty_queued = chatty.notify(Event::JobCompleted, &json!({"job_id": "c"}));
        let second = next(&mut rx).await;

        assert!(!quiet_queued);
        assert!(chatty_queued);
        assert_eq!(first.json()["job"]["job_id"], "q-failed");
        assert_eq!(second.header(EVENT_HEADER), "job_completed");
        assert_eq!(second.json()["event"], "job_completed");
    }

    #[tokio::test]
    async fn full_queue_drops_without_waiting() {
        // A peer that accepts connections and never answers holds the first delivery.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", silent.local_addr().unwrap());
        let mut config = config(&url, false);
        config.queue = 1;
        let (notifier, task) = Notifier::start(config).unwrap();

        let first = notifier.notify(Event::JobFailed, &json!({"n": 1}));
        notifier.notify(Event::JobFailed, &json!({"n": 2}));
        let third = notifier.notify(Event::JobFailed, &json!({"n": 3}));

        assert!(first);
        // Whether or not the task took the first off the queue yet, it holds one at most.
        assert!(!third);
        task.stop().abort();
    }

    #[tokio::test]
    async fn https_webhook_is_verified_with_the_given_ca_file() {
        let dir = tempfile::tempdir().unwrap();
        sendense_nbd::tls::ensure_certificates(dir.path(), &["localhost".to_owned()]).unwrap();
        let tls = sendense_nbd::tls::server_config_from_dir(dir.path(), false).unwrap();
        let (app, mut rx) = app(ok());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let server = axum_server::from_tcp_rustls(
            listener,
            axum_server::tls_rustls::RustlsConfig::from_config(tls),
        )
        .unwrap();
        tokio::spawn(async move { server.serve(app.into_make_service()).await.unwrap() });
        let mut config = config(&format!("https://localhost:{port}/hook"), false);
        config.ca_file = Some(dir.path().join("ca-cert.pem"));
        let (notifier, _task) = Notifier::start(config).unwrap();

        notifier.notify(Event::JobFailed, &json!({"job_id": "tls"}));
        let got = next(&mut rx).await;

        assert_eq!(got.json()["job"]["job_id"], "tls");
    }

    #[tokio::test]
    async fn unusable_ca_file_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate\n").unwrap();
        let mut config = config("https://localhost:1/hook", false);
        config.ca_file = Some(ca);

        let err = Notifier::start(config).unwrap_err();

        assert!(matches!(err, HubError::WebhookCa { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn disabled_notifier_queues_nothing() {
        assert!(!Notifier::disabled().notify(Event::JobFailed, &json!({})));
    }

    #[tokio::test]
    async fn stop_ends_the_task_with_an_unreachable_webhook() {
        // Nothing listens on a port just released: every attempt fails to connect.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut config = config(&format!("http://127.0.0.1:{port}/"), false);
        config.retry.first_delay = Duration::from_secs(3600);
        config.retry.max_delay = Duration::from_secs(3600);
        let (notifier, task) = Notifier::start(config).unwrap();
        notifier.notify(Event::JobFailed, &json!({"n": 1}));

        let ended = tokio::time::timeout(Duration::from_secs(10), task.stop()).await;

        assert!(ended.is_ok(), "the task waited out its hour-long backoff");
    }

    /// What a failed attempt logs (its `error` field; the other fields are the event, the
    /// delivery id, the host and counts) holds neither the URL's token nor its password.
    #[tokio::test]
    async fn failed_attempt_error_leaves_the_url_out() {
        // A peer that closes every connection at once: the request fails before any answer.
        let closer = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = closer.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((stream, _)) = closer.accept().await {
                drop(stream);
            }
        });
        let config = config(
            &format!("http://user:pw0@127.0.0.1:{port}/x?token=t0p"),
            false,
        );
        let tls = tls_config(&config).unwrap();
        let worker = Worker {
            http: reqwest::Client::builder()
                .use_preconfigured_tls(tls)
                .build()
                .unwrap(),
            url: config.url,
            secret: config.secret,
            retry: config.retry,
        };
        let delivery = Delivery {
            id: delivery_id(),
            event: Event::JobFailed,
            body: Bytes::from_static(b"{}"),
        };

        let outcome = worker.attempt(&delivery, "sha256=00").await;

        let Attempt::Again(why) = outcome else {
            panic!("a closed connection is worth another attempt")
        };
        assert!(!why.is_empty());
        assert!(
            !why.contains("t0p") && !why.contains("pw0") && !why.contains("/x"),
            "{why}"
        );
    }

    #[test]
    fn signature_is_hex_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        let secret = WebhookSecret::new(b"Jefe", Path::new("t")).unwrap();

        let signature = secret.sign(b"what do ya want for nothing?");

        assert_eq!(
            signature,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn secret_never_shows_in_debug_output() {
        let config = config("https://hooks.example.org/x", true);

        let text = format!("{config:?}");

        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("<hidden>"), "{text}");
    }

    #[test]
    fn secret_file_loses_its_trailing_line_break_and_empty_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (file, empty) = (dir.path().join("s"), dir.path().join("e"));
        std::fs::write(&file, "Jefe\n").unwrap();
        std::fs::write(&empty, "\n").unwrap();

        let secret = WebhookSecret::from_file(&file).unwrap();
        let refused = WebhookSecret::from_file(&empty).unwrap_err();

        assert_eq!(
            secret.sign(b"what do ya want for nothing?"),
            WebhookSecret::new(b"Jefe", &file)
                .unwrap()
                .sign(b"what do ya want for nothing?")
        );
        assert!(matches!(refused, HubError::WebhookSecretEmpty { .. }));
    }

    #[test]
    fn backoff_doubles_from_the_first_delay_up_to_the_cap() {
        let retry = Retry::default();

        let delays: Vec<u64> = (1..=8).map(|n| retry.delay(n).as_secs()).collect();

        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(retry.delay(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn url_must_be_http_or_https_with_a_host() {
        let secret = || WebhookSecret::new(b"k", Path::new("t")).unwrap();

        let ftp = WebhookConfig::new("ftp://example.org/", secret(), false).unwrap_err();
        let junk = WebhookConfig::new("not a url", secret(), false).unwrap_err();

        assert!(matches!(ftp, HubError::WebhookUrl { .. }), "{ftp:?}");
        assert!(matches!(junk, HubError::WebhookUrl { .. }), "{junk:?}");
    }
}
