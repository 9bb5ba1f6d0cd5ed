//! The hub's webhook as `serve` sets it up: the running hub's notifier POSTs signed
//! notifications, and what is queued when the hub stops still goes out.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use sendense_hub::daemon::{self, ClientCerts, HubConfig};
use sendense_hub::notify::{EVENT_HEADER, Event, SIGNATURE_HEADER, WebhookConfig, WebhookSecret};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// A receiver on 127.0.0.1:0 answering 200 and passing each `(headers, body)` on.
pub(crate) async fn receiver() -> (String, mpsc::UnboundedReceiver<(HeaderMap, Bytes)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((headers, body));
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_hub_notifies_its_webhook_and_drains_the_queue_when_stopping() {
    let data = tempfile::tempdir().unwrap();
    let (url, mut rx) = receiver().await;
    let secret = WebhookSecret::new(b"hub-secret", data.path()).unwrap();
    let hub = daemon::start(HubConfig {
        data_dir: data.path().to_path_buf(),
        api_listen: "127.0.0.1:0".parse().unwrap(),
        nbd_listen: "127.0.0.1:0".parse().unwrap(),
        public_host: Some("localhost".into()),
        idle_timeout: Duration::from_secs(600),
        disconnect_grace: Duration::from_secs(600),
        nbd_client_certs: ClientCerts::Required,
        webhook: Some(WebhookConfig::new(&url, secret.clone(), true).unwrap()),
        max_running_jobs: None,
        repository: sendense_hub::RepositoryConfig::default(),
    })
    .await
    .unwrap();

    hub.notifier.notify(
        Event::JobFailed,
        &json!({"job_id": "j-1", "error": "agent gone"}),
    );
    let (headers, body) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no notification within 10 s")
        .unwrap();
    let queued_at_stop = hub
        .notifier
        .notify(Event::JobCompleted, &json!({"job_id": "j-2"}));
    tokio::time::timeout(daemon::SHUTDOWN_LIMIT, hub.stop())
        .await
        .expect("the hub stops within its limit");
    let (_, last) = rx.try_recv().expect("the queued notification went out");

    assert_eq!(
        headers[SIGNATURE_HEADER].to_str().unwrap(),
        secret.sign(&body)
    );
    assert_eq!(headers[EVENT_HEADER].to_str().unwrap(), "job_failed");
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        body,
        json!({"event": "job_failed", "job": {"job_id": "j-1", "error": "agent gone"}})
    );
    assert!(queued_at_stop);
    let last: Value = serde_json::from_slice(&last).unwrap();
    assert_eq!(last["event"], "job_completed");
}
