//! Agents and jobs over the real HTTPS API (issue #13): enrollment with a CSR, the agent
//! token's limits, backup and inventory jobs handed out by long poll, heartbeats, finish,
//! cancel, the lease reaper (driven with a controlled clock) and a hub restart.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use sendense_types::{Backup, BackupStatus, Job, JobStatus, Timestamp};
use serde_json::{Value, json};

use sendense_hub::notify::{SIGNATURE_HEADER, WebhookConfig, WebhookSecret};

use crate::hub_api::{Hub, typed};

/// An enrolled agent as the test holds it.
pub(crate) struct TestAgent {
    pub(crate) name: String,
    pub(crate) token: String,
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
}

/// A request with `token` (none: no Authorization header).
pub(crate) async fn call_as(
    hub: &Hub,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = hub.http.request(method, format!("{}{path}", hub.base));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    };
    (status, value)
}

fn csr_for(name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
    let csr = params.serialize_request(&key).unwrap();
    (csr.pem().unwrap(), key.serialize_pem())
}

/// Creates agent `name` (admin) and answers its enrollment token.
async fn create_agent(hub: &Hub, name: &str) -> String {
    let (status, body) = hub.post("/api/v1/agents", json!({"name": name})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["enrollment_token"].as_str().unwrap().to_owned()
}

pub(crate) async fn enroll(hub: &Hub, name: &str) -> TestAgent {
    let token = create_agent(hub, name).await;
    let (csr, key_pem) = csr_for(name);
    let (status, body) = call_as(
        hub,
        None,
        Method::POST,
        "/api/v1/agents/enroll",
        Some(json!({"name": name, "enrollment_token": token, "csr_pem": csr})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    TestAgent {
        name: name.to_owned(),
        token: body["agent_token"].as_str().unwrap().to_owned(),
        cert_pem: body["client_cert_pem"].as_str().unwrap().to_owned(),
        key_pem,
    }
}

pub(crate) async fn put_credential(
    hub: &Hub,
    name: &str,
    agent: Option<&str>,
) -> (StatusCode, Value) {
    let mut body = json!({"name": name, "host": "vc.example:443", "username": "admin",
        "password": format!("pw-of-{name}"), "insecure": true});
    if let Some(a) = agent {
        body["agent"] = json!(a);
    }
    hub.post("/api/v1/credentials", body).await
}

pub(crate) async fn poll(hub: &Hub, agent: &TestAgent, wait: u32) -> (StatusCode, Value) {
    call_as(
        hub,
        Some(&agent.token),
        Method::GET,
        &format!("/api/v1/agents/{}/jobs/next?wait={wait}", agent.name),
        None,
    )
    .await
}

pub(crate) async fn queue_backup(hub: &Hub, vm: &str, body: Value) -> String {
    let (status, answer) = hub.post(&format!("/api/v1/vms/{vm}/backup"), body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    answer["job_id"].as_str().unwrap().to_owned()
}

async fn job(hub: &Hub, id: &str) -> Job {
    hub.get_as(&format!("/api/v1/jobs/{id}")).await
}

pub(crate) async fn as_agent(
    hub: &Hub,
    agent: &TestAgent,
    path: &str,
    body: Value,
) -> (StatusCode, Value) {
    call_as(hub, Some(&agent.token), Method::POST, path, Some(body)).await
}

/// A hub with agent `a1` enrolled and credential `vc1` assigned to it.
pub(crate) async fn hub_with_agent() -> (Hub, TestAgent) {
    let hub = Hub::start().await;
    let a1 = enroll(&hub, "a1").await;
    let (status, body) = put_credential(&hub, "vc1", Some("a1")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    (hub, a1)
}

/// Queues a backup of `vm` through vc1 and has `agent` take it; answers the job id.
async fn running_job(hub: &Hub, agent: &TestAgent, vm: &str) -> String {
    let id = queue_backup(hub, vm, json!({"credential": "vc1"})).await;
    let (status, handed) = poll(hub, agent, 0).await;
    assert_eq!(status, StatusCode::OK, "{handed}");
    assert_eq!(handed["job_id"], json!(id));
    id
}

/// A long poll of `agent` running in its own task: its status and body (`null` for 204).
fn spawn_poll(
    hub: &Hub,
    agent: &TestAgent,
    wait: u32,
) -> tokio::task::JoinHandle<(StatusCode, Value)> {
    let (http, token) = (hub.http.clone(), agent.token.clone());
    let url = format!(
        "{}/api/v1/agents/{}/jobs/next?wait={wait}",
        hub.base, agent.name
    );
    tokio::spawn(async move {
        let resp = http.get(url).bearer_auth(token).send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        };
        (status, body)
    })
}

/// Waits (deadline 20 s) until the hub has seen agent `name`, which had never polled before.
async fn wait_until_seen(hub: &Hub, name: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, agent) = hub.get(&format!("/api/v1/agents/{name}")).await;
        if agent["last_seen"].is_string() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name}'s poll never arrived"
        );
        tokio::task::yield_now().await;
    }
}

fn seconds_from_now(secs: i64) -> Timestamp {
    Timestamp::now().saturating_add_seconds(secs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_with_csr_answers_cert_of_hub_ca_named_for_agent_usable_on_nbd() {
    let hub = Hub::start().await;

    let a1 = enroll(&hub, "a1").await;

    let ca_pem = std::fs::read_to_string(hub.data.path().join("tls/ca-cert.pem")).unwrap();
    let (_, cert_der) = x509_parser::pem::parse_x509_pem(a1.cert_pem.as_bytes()).unwrap();
    let cert = cert_der.parse_x509().unwrap();
    let (_, ca_der) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes()).unwrap();
    let ca = ca_der.parse_x509().unwrap();
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(cn, "a1");
    assert_eq!(cert.issuer(), ca.subject());
    // The NBD port takes only certificates of the hub's CA: the agent's works there.
    let client_dir = hub.data.path().join("agent-a1");
    std::fs::create_dir(&client_dir).unwrap();
    std::fs::write(client_dir.join("ca-cert.pem"), &ca_pem).unwrap();
    std::fs::write(client_dir.join("client-cert.pem"), &a1.cert_pem).unwrap();
    std::fs::write(client_dir.join("client-key.pem"), &a1.key_pem).unwrap();
    let (status, body) = as_agent(
        &hub,
        &a1,
        "/api/v1/vms",
        json!({"name": "web01", "disks": [{"key": 2000, "capacity_bytes": 1 << 20}]}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = as_agent(
        &hub,
        &a1,
        "/api/v1/backups",
        json!({"vm_name": "web01", "backup_type": "full"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let backup: Backup = typed(body);
    let tls = sendense_nbd::tls::client_config_from_dir(&client_dir).unwrap();
    let port = hub.running.as_ref().unwrap().nbd_addr.port();
    let client = sendense_nbd::Client::connect(
        ("127.0.0.1", port),
        sendense_nbd::ClientOptions {
            tls: Some((tls, "localhost".into())),
            export_name: backup.disks[0]
                .export_name
                .clone()
                .unwrap()
                .as_str()
                .to_owned(),
            ..sendense_nbd::ClientOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(client.size(), 1 << 20);
    let (status, agent) = hub.get("/api/v1/agents/a1").await;
    assert_eq!(
        (
            status,
            agent["state"].as_str(),
            agent["enrolled_at"].is_string()
        ),
        (StatusCode::OK, Some("offline"), true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_wrong_expired_or_replayed_token_refused_and_nothing_changed() {
    let hub = Hub::start().await;
    let token = create_agent(&hub, "a1").await;
    let (csr, _) = csr_for("a1");
    let enroll_with =
        |token: String| json!({"name": "a1", "enrollment_token": token, "csr_pem": csr.clone()});
    let enroll_path = "/api/v1/agents/enroll";

    let (wrong, wrong_body) = call_as(
        &hub,
        None,
        Method::POST,
        enroll_path,
        Some(enroll_with("f".repeat(64))),
    )
    .await;
    let (unknown, _) = call_as(
        &hub,
        None,
        Method::POST,
        enroll_path,
        Some(json!({"name": "ghost", "enrollment_token": token.clone(), "csr_pem": csr.clone()})),
    )
    .await;
    let expired = hub
        .running
        .as_ref()
        .unwrap()
        .agents
        .enroll_at(
            &serde_json::from_value(enroll_with(token.clone())).unwrap(),
            seconds_from_now(25 * 3600),
        )
        .unwrap_err();
    let (pending, pending_body) = hub.get("/api/v1/agents/a1").await;
    let (first, _) = call_as(
        &hub,
        None,
        Method::POST,
        enroll_path,
        Some(enroll_with(token.clone())),
    )
    .await;
    let (replayed, replayed_body) = call_as(
        &hub,
        None,
        Method::POST,
        enroll_path,
        Some(enroll_with(token)),
    )
    .await;

    assert_eq!(
        (wrong, wrong_body["error"].as_str(), unknown),
        (
            StatusCode::UNAUTHORIZED,
            Some("unauthorized"),
            StatusCode::UNAUTHORIZED
        )
    );
    assert!(
        wrong_body["message"]
            .as_str()
            .unwrap()
            .contains("Enrollment token refused"),
        "{wrong_body}"
    );
    assert!(
        format!("{expired:?}").contains("EnrollmentExpired"),
        "{expired:?}"
    );
    assert_eq!(expired.kind(), sendense_hub::error::ErrorKind::Unauthorized);
    assert_eq!(
        (pending, pending_body["state"].as_str()),
        (StatusCode::OK, Some("pending"))
    );
    assert_eq!((first, replayed), (StatusCode::OK, StatusCode::CONFLICT));
    assert!(
        replayed_body["message"]
            .as_str()
            .unwrap()
            .contains("enrolled already"),
        "{replayed_body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_token_on_admin_routes_forbidden() {
    let (hub, a1) = hub_with_agent().await;
    let a2 = enroll(&hub, "a2").await;
    let routes = [
        (Method::GET, "/api/v1/agents"),
        (Method::POST, "/api/v1/agents"),
        (Method::GET, "/api/v1/agents/a1"),
        (Method::GET, "/api/v1/credentials"),
        (Method::POST, "/api/v1/credentials"),
        (Method::GET, "/api/v1/credentials/vc1/inventory"),
        (Method::POST, "/api/v1/credentials/vc1/inventory/refresh"),
        (Method::GET, "/api/v1/jobs"),
        (Method::POST, "/api/v1/jobs/job-0000000000000000/cancel"),
        (Method::POST, "/api/v1/vms/web01/backup"),
        (Method::GET, "/api/v1/vms"),
        (Method::GET, "/api/v1/repository"),
        (Method::DELETE, "/api/v1/backups/x"),
        (Method::POST, "/api/v1/backups/x/exports"),
    ];

    for (method, path) in routes {
        let (status, body) =
            call_as(&hub, Some(&a1.token), method.clone(), path, Some(json!({}))).await;

        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {body}");
        assert_eq!(body["error"], json!("forbidden"), "{method} {path}");
    }
    let (other, other_body) = call_as(
        &hub,
        Some(&a1.token),
        Method::GET,
        &format!("/api/v1/agents/{}/jobs/next?wait=0", a2.name),
        None,
    )
    .await;
    assert_eq!(other, StatusCode::FORBIDDEN, "{other_body}");
    let (own, _) = poll(&hub, &a1, 0).await;
    assert_eq!(own, StatusCode::NO_CONTENT);
    let (bad, _) = call_as(
        &hub,
        Some("not-a-token"),
        Method::GET,
        "/api/v1/backups",
        None,
    )
    .await;
    assert_eq!(bad, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_job_handed_with_password_to_its_agent_progress_visible_then_completed() {
    let (hub, a1) = hub_with_agent().await;
    let a2 = enroll(&hub, "a2").await;
    let mut finished = hub.running.as_ref().unwrap().jobs.subscribe_finished();
    let id = queue_backup(
        &hub,
        "web01",
        json!({"backup_type": "full", "credential": "vc1"}),
    )
    .await;

    let (other_agent, _) = poll(&hub, &a2, 0).await;
    let (status, handed) = poll(&hub, &a1, 0).await;

    assert_eq!(
        (other_agent, status),
        (StatusCode::NO_CONTENT, StatusCode::OK)
    );
    assert_eq!(
        (
            handed["job_id"].as_str(),
            handed["kind"].as_str(),
            handed["vm"].as_str(),
            handed["backup_type"].as_str(),
            handed["credential"]["password"].as_str(),
            handed["lease_seconds"].as_u64(),
        ),
        (
            Some(id.as_str()),
            Some("backup"),
            Some("web01"),
            Some("full"),
            Some("pw-of-vc1"),
            Some(90)
        )
    );
    let running = job(&hub, &id).await;
    assert_eq!(
        (
            running.status,
            running.agent.as_ref().map(|a| a.as_str().to_owned()),
            running.started_at.is_some()
        ),
        (JobStatus::Running, Some("a1".to_owned()), true)
    );
    let (status, beat) = as_agent(
        &hub,
        &a1,
        &format!("/api/v1/jobs/{id}/heartbeat"),
        json!({"progress": {"bytes_done": 50_000_000u64, "bytes_total": 200_000_000u64}}),
    )
    .await;
    assert_eq!(
        (status, beat),
        (
            StatusCode::OK,
            json!({"status": "running", "lease_seconds": 90})
        )
    );
    let progressing = job(&hub, &id).await;
    assert_eq!(
        (
            progressing.progress.bytes_done,
            progressing.progress.bytes_total
        ),
        (50_000_000, 200_000_000)
    );
    assert!(progressing.progress.mb_per_s > 0.0, "{progressing:?}");
    assert!(
        progressing.progress.eta_seconds.is_some(),
        "{progressing:?}"
    );
    let (status, done) = as_agent(
        &hub,
        &a1,
        &format!("/api/v1/jobs/{id}/finish"),
        json!({"status": "completed"}),
    )
    .await;
    assert_eq!(
        (status, done["status"].as_str()),
        (StatusCode::OK, Some("completed"))
    );
    let ended = job(&hub, &id).await;
    assert_eq!(
        (ended.status, ended.finished_at.is_some()),
        (JobStatus::Completed, true)
    );
    let announced = tokio::time::timeout(Duration::from_secs(10), finished.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (announced.job_id.as_str(), announced.status),
        (id.as_str(), JobStatus::Completed)
    );
    let (_, list) = hub
        .get("/api/v1/jobs?vm_name=web01&status=completed&kind=backup")
        .await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1, "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_backup_request_for_vm_conflicts_naming_first_job() {
    let (hub, _a1) = hub_with_agent().await;
    let first = queue_backup(&hub, "web01", json!({"credential": "vc1"})).await;

    let (named, named_body) = hub
        .post("/api/v1/vms/web01/backup", json!({"credential": "vc1"}))
        .await;
    let (unnamed, unnamed_body) = hub.post("/api/v1/vms/web01/backup", json!({})).await;

    assert_eq!(
        (named, unnamed),
        (StatusCode::CONFLICT, StatusCode::CONFLICT)
    );
    for body in [&named_body, &unnamed_body] {
        assert!(body["message"].as_str().unwrap().contains(&first), "{body}");
    }
    let (_, list) = hub.get("/api/v1/jobs?vm_name=web01").await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1, "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_agents_heartbeat_and_finish_refused_and_nothing_changed() {
    let (hub, a1) = hub_with_agent().await;
    let a2 = enroll(&hub, "a2").await;
    let id = running_job(&hub, &a1, "web01").await;
    let before = job(&hub, &id).await;

    let (beat, beat_body) = as_agent(
        &hub,
        &a2,
        &format!("/api/v1/jobs/{id}/heartbeat"),
        json!({"progress": {"bytes_done": 7, "bytes_total": 9}}),
    )
    .await;
    let (finish, _) = as_agent(
        &hub,
        &a2,
        &format!("/api/v1/jobs/{id}/finish"),
        json!({"status": "failed", "error": "not mine"}),
    )
    .await;

    assert_eq!(
        (beat, finish),
        (StatusCode::FORBIDDEN, StatusCode::FORBIDDEN)
    );
    assert!(
        beat_body["message"]
            .as_str()
            .unwrap()
            .contains("not assigned to agent a2"),
        "{beat_body}"
    );
    assert_eq!(job(&hub, &id).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_queued_job_at_once_and_running_job_at_next_heartbeat() {
    let (hub, a1) = hub_with_agent().await;
    let queued = queue_backup(&hub, "web01", json!({"credential": "vc1"})).await;

    let (status, cancelled) = hub
        .post(&format!("/api/v1/jobs/{queued}/cancel"), json!({}))
        .await;

    assert_eq!(
        (status, cancelled["status"].as_str()),
        (StatusCode::OK, Some("cancelled"))
    );
    assert_eq!(poll(&hub, &a1, 0).await.0, StatusCode::NO_CONTENT);
    let running = running_job(&hub, &a1, "web01").await;
    let (status, _) = hub
        .post(&format!("/api/v1/jobs/{running}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, beat) = as_agent(
        &hub,
        &a1,
        &format!("/api/v1/jobs/{running}/heartbeat"),
        json!({}),
    )
    .await;
    assert_eq!(beat["status"], json!("cancelled"));
    let (status, _) = as_agent(
        &hub,
        &a1,
        &format!("/api/v1/jobs/{running}/finish"),
        json!({"status": "failed", "error": "cancelled by the hub"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(job(&hub, &running).await.status, JobStatus::Cancelled);
    let (again, again_body) = hub
        .post(&format!("/api/v1/jobs/{running}/cancel"), json!({}))
        .await;
    assert_eq!(again, StatusCode::CONFLICT, "{again_body}");
    // Cancelled jobs free the VM; without a credential the previous job's is used.
    queue_backup(&hub, "web01", json!({})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapsed_lease_fails_job_and_its_running_backup() {
    let (hub, a1) = hub_with_agent().await;
    let id = running_job(&hub, &a1, "web01").await;
    hub.register("web01", &[1 << 20]).await;
    let (status, body) = as_agent(
        &hub,
        &a1,
        "/api/v1/backups",
        json!({"vm_name": "web01", "backup_type": "full"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let backup: Backup = typed(body);
    let (status, _) = as_agent(
        &hub,
        &a1,
        &format!("/api/v1/jobs/{id}/heartbeat"),
        json!({"backup_id": backup.backup_id}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let jobs = std::sync::Arc::clone(&hub.running.as_ref().unwrap().jobs);

    let early = jobs.reap(seconds_from_now(60)).await.unwrap();
    let still = job(&hub, &id).await.status;
    let reaped = jobs.reap(seconds_from_now(120)).await.unwrap();

    assert_eq!((early, still, reaped), (0, JobStatus::Running, 1));
    let failed = job(&hub, &id).await;
    assert_eq!(failed.status, JobStatus::Failed);
    assert!(
        failed
            .error
            .as_deref()
            .unwrap()
            .contains("agent lost: no heartbeat since"),
        "{failed:?}"
    );
    assert_eq!(
        hub.backup(&backup.backup_id).await.status,
        BackupStatus::Failed
    );
    let (late, _) = as_agent(
        &hub,
        &a1,
        &format!("/api/v1/jobs/{id}/heartbeat"),
        json!({}),
    )
    .await;
    assert_eq!(late, StatusCode::CONFLICT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_restart_keeps_running_job_running_with_fresh_lease() {
    let (hub, a1) = hub_with_agent().await;
    let id = running_job(&hub, &a1, "web01").await;
    let data = hub.stop().await;

    let hub = Hub::start_in(data, Duration::from_secs(600)).await;
    let jobs = std::sync::Arc::clone(&hub.running.as_ref().unwrap().jobs);

    let kept = jobs.reap(seconds_from_now(80)).await.unwrap();
    assert_eq!((kept, job(&hub, &id).await.status), (0, JobStatus::Running));
    let (status, beat) = as_agent(
        &hub,
        &a1,
        &format!("/api/v1/jobs/{id}/heartbeat"),
        json!({}),
    )
    .await;
    assert_eq!(
        (status, beat["status"].as_str()),
        (StatusCode::OK, Some("running"))
    );
    let lost = jobs.reap(seconds_from_now(200)).await.unwrap();
    assert_eq!((lost, job(&hub, &id).await.status), (1, JobStatus::Failed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_answers_204_after_wait_and_wakes_when_job_queued() {
    let (hub, a1) = hub_with_agent().await;
    let (empty, _) = poll(&hub, &a1, 0).await;
    assert_eq!(empty, StatusCode::NO_CONTENT);
    let a2 = enroll(&hub, "a2").await;
    let (status, body) = put_credential(&hub, "vc2", Some("a2")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let started = std::time::Instant::now();
    let waiting = spawn_poll(&hub, &a2, 60);
    // The poll has begun once the hub has seen a2 (it never polled before).
    wait_until_seen(&hub, "a2").await;

    let id = queue_backup(&hub, "db01", json!({"credential": "vc2"})).await;

    let (status, handed) = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (status, handed["job_id"].as_str()),
        (StatusCode::OK, Some(id.as_str()))
    );
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "{:?}",
        started.elapsed()
    );
    let (_, agent) = hub.get("/api/v1/agents/a2").await;
    assert_eq!(
        (agent["state"].as_str(), agent["running_jobs"].clone()),
        (Some("online"), json!([id]))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_refresh_finished_with_vms_is_served_and_names_the_vm_path() {
    let (hub, a1) = hub_with_agent().await;
    let (status, accepted) = hub
        .post("/api/v1/credentials/vc1/inventory/refresh", json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let id = accepted["job_id"].as_str().unwrap().to_owned();
    let (never, before) = hub.get("/api/v1/credentials/vc1/inventory").await;
    assert_eq!(
        (never, before["refreshed_at"].clone()),
        (StatusCode::OK, Value::Null)
    );
    let (_, handed) = poll(&hub, &a1, 0).await;
    assert_eq!(
        (
            handed["kind"].as_str(),
            handed["credential"]["name"].as_str()
        ),
        (Some("inventory"), Some("vc1"))
    );

    let (status, _) = as_agent(
        &hub,
        &a1,
        &format!("/api/v1/jobs/{id}/finish"),
        json!({"status": "completed", "inventory": [
            {"name": "web01", "path": "dc1/vm/web01"}, {"name": "db01", "path": "dc1/vm/db01"}]}),
    )
    .await;

    assert_eq!(status, StatusCode::OK);
    let (_, inventory) = hub.get("/api/v1/credentials/vc1/inventory").await;
    assert_eq!(
        (
            inventory["agent"].as_str(),
            inventory["vms"].as_array().unwrap().len()
        ),
        (Some("a1"), 2)
    );
    assert!(inventory["refreshed_at"].is_string(), "{inventory}");
    // The body may be left out: every field is optional.
    let (status, accepted) = call_as(
        &hub,
        Some(&hub.token),
        Method::POST,
        "/api/v1/vms/web01/backup",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let (_, backup_job) = poll(&hub, &a1, 0).await;
    assert_eq!(backup_job["vm"], json!("dc1/vm/web01"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_naming_unknown_agent_refused_and_nothing_stored() {
    let hub = Hub::start().await;

    let (status, body) = put_credential(&hub, "vc1", Some("ghost")).await;

    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("Unknown agent ghost"),
        "{body}"
    );
    let (_, list) = hub.get("/api/v1/credentials").await;
    assert_eq!(list, json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_routes_bad_input_answer_clear_4xx_and_change_nothing() {
    let (hub, a1) = hub_with_agent().await;
    let (status, body) = put_credential(&hub, "orphan", None).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let cases: Vec<(Method, &str, Value, StatusCode, &str)> = vec![
        (
            Method::GET,
            "/api/v1/jobs/not-a-job",
            Value::Null,
            StatusCode::BAD_REQUEST,
            "job id",
        ),
        (
            Method::GET,
            "/api/v1/jobs/job-0000000000000000",
            Value::Null,
            StatusCode::NOT_FOUND,
            "Unknown job",
        ),
        (
            Method::GET,
            "/api/v1/jobs?status=bogus",
            Value::Null,
            StatusCode::BAD_REQUEST,
            "status",
        ),
        (
            Method::GET,
            "/api/v1/agents/a1/jobs/next?wait=999",
            Value::Null,
            StatusCode::BAD_REQUEST,
            "wait",
        ),
        (
            Method::GET,
            "/api/v1/agents/nobody/jobs/next?wait=0",
            Value::Null,
            StatusCode::NOT_FOUND,
            "Unknown agent",
        ),
        (
            Method::POST,
            "/api/v1/vms/web01/backup",
            json!({}),
            StatusCode::BAD_REQUEST,
            "No credential known",
        ),
        (
            Method::POST,
            "/api/v1/vms/web01/backup",
            json!({"credential": "nope"}),
            StatusCode::NOT_FOUND,
            "nope",
        ),
        (
            Method::POST,
            "/api/v1/vms/web01/backup",
            json!({"credential": "orphan"}),
            StatusCode::CONFLICT,
            "names no agent",
        ),
        (
            Method::POST,
            "/api/v1/vms/web01/backup",
            json!({"backup_type": "weekly"}),
            StatusCode::BAD_REQUEST,
            "backup_type",
        ),
        (
            Method::POST,
            "/api/v1/agents",
            json!({"name": "../x"}),
            StatusCode::BAD_REQUEST,
            "name",
        ),
        (
            Method::POST,
            "/api/v1/agents",
            json!({"name": "a1"}),
            StatusCode::CONFLICT,
            "enrolled",
        ),
        (
            Method::POST,
            "/api/v1/credentials/nope/inventory/refresh",
            json!({}),
            StatusCode::NOT_FOUND,
            "nope",
        ),
        (
            Method::POST,
            "/api/v1/agents/enroll",
            json!({"name": "a1", "enrollment_token": "x", "csr_pem": "no"}),
            StatusCode::BAD_REQUEST,
            "csr_pem",
        ),
    ];

    for (method, path, body, expected, needle) in cases {
        let body = (!body.is_null()).then_some(body);
        let (status, answer) = hub.call(method.clone(), path, body).await;

        assert_eq!(status, expected, "{method} {path}: {answer}");
        assert!(
            answer["message"]
                .as_str()
                .unwrap_or_default()
                .contains(needle),
            "{method} {path}: {answer}"
        );
    }
    let (_, list) = hub.get("/api/v1/jobs").await;
    assert_eq!(list, json!({"jobs": []}));
    let id = running_job(&hub, &a1, "web01").await;
    let (status, answer) = as_agent(
        &hub,
        &a1,
        &format!("/api/v1/jobs/{id}/finish"),
        json!({"status": "running"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(job(&hub, &id).await.status, JobStatus::Running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_answers_204_when_hub_stops() {
    let (hub, a1) = hub_with_agent().await;
    let waiting = spawn_poll(&hub, &a1, 60);
    wait_until_seen(&hub, "a1").await;

    let stopped = std::time::Instant::now();
    hub.stop().await;

    let (status, body) = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
    // The API's drain (8 s) was not needed to end the poll.
    assert!(
        stopped.elapsed() < Duration::from_secs(6),
        "{:?}",
        stopped.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_running_job_its_agent_abandons_has_backup_failed_when_lease_lapses() {
    let (hub, a1) = hub_with_agent().await;
    let id = running_job(&hub, &a1, "web01").await;
    hub.register("web01", &[1 << 20]).await;
    let (_, body) = as_agent(
        &hub,
        &a1,
        "/api/v1/backups",
        json!({"vm_name": "web01", "backup_type": "full"}),
    )
    .await;
    let backup: Backup = typed(body);
    as_agent(
        &hub,
        &a1,
        &format!("/api/v1/jobs/{id}/heartbeat"),
        json!({"backup_id": backup.backup_id}),
    )
    .await;
    let (status, _) = hub
        .post(&format!("/api/v1/jobs/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let jobs = std::sync::Arc::clone(&hub.running.as_ref().unwrap().jobs);

    let in_grace = jobs.reap(seconds_from_now(60)).await.unwrap();
    let running_in_grace = hub.backup(&backup.backup_id).await.status;
    let lapsed = jobs.reap(seconds_from_now(120)).await.unwrap();

    assert_eq!(
        (in_grace, running_in_grace, lapsed),
        (0, BackupStatus::Running, 1)
    );
    let failed = hub.backup(&backup.backup_id).await;
    assert_eq!(
        (failed.status, failed.failure_reason.as_deref()),
        (BackupStatus::Failed, Some("cancelled"))
    );
    assert_eq!(job(&hub, &id).await.status, JobStatus::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_backup_for_scheduler_holds_job_until_not_before() {
    let (hub, a1) = hub_with_agent().await;
    let jobs = std::sync::Arc::clone(&hub.running.as_ref().unwrap().jobs);
    let retry = |vm: &str, not_before: i64| sendense_hub::jobs::QueueBackup {
        vm: vm.parse().unwrap(),
        backup_type: sendense_types::BackupType::Auto,
        credential: Some("vc1".parse().unwrap()),
        agent: None,
        policy: Some("nightly".parse().unwrap()),
        attempt: 2,
        not_before: Some(seconds_from_now(not_before)),
    };

    let later = jobs.queue_backup(retry("web01", 3600)).unwrap();
    let (held, _) = poll(&hub, &a1, 0).await;
    let due = jobs.queue_backup(retry("db01", -1)).unwrap();
    let (status, handed) = poll(&hub, &a1, 0).await;

    assert_eq!((held, status), (StatusCode::NO_CONTENT, StatusCode::OK));
    assert_eq!(
        (handed["job_id"].as_str(), handed["attempt"].as_u64()),
        (Some(due.as_str()), Some(2))
    );
    let waiting = job(&hub, later.as_str()).await;
    assert_eq!(
        (
            waiting.status,
            waiting.policy.map(|p| p.as_str().to_owned()),
            waiting.attempt
        ),
        (JobStatus::Queued, Some("nightly".to_owned()), 2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_jobs_by_kind_and_status_and_agents_online() {
    let (hub, agent) = hub_with_agent().await;
    running_job(&hub, &agent, "vm-run").await;
    queue_backup(&hub, "vm-wait", json!({"credential": "vc1"})).await;

    let resp = hub
        .http
        .get(format!("{}/api/v1/metrics", hub.base))
        .bearer_auth(&hub.token)
        .send()
        .await
        .unwrap();

    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();
    for line in [
        "sendense_jobs{kind=\"backup\",status=\"running\"} 1",
        "sendense_jobs{kind=\"backup\",status=\"queued\"} 1",
        "sendense_agents_online 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
    }
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_job_notifies_the_webhook_with_the_job_signed() {
    let (url, mut rx) = crate::webhook::receiver().await;
    let secret_dir = tempfile::tempdir().unwrap();
    let secret = WebhookSecret::new(b"hook-secret", secret_dir.path()).unwrap();
    let hub =
        Hub::start_with_webhook(WebhookConfig::new(&url, secret.clone(), false).unwrap()).await;
    let a1 = enroll(&hub, "a1").await;
    let (status, body) = put_credential(&hub, "vc1", Some("a1")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let ok = running_job(&hub, &a1, "vm-ok").await;
    let bad = running_job(&hub, &a1, "vm-bad").await;

    let (s1, _) = as_agent(
        &hub,
        &a1,
        &format!("/api/v1/jobs/{ok}/finish"),
        json!({"status": "completed"}),
    )
    .await;
    let (s2, _) = as_agent(
        &hub,
        &a1,
        &format!("/api/v1/jobs/{bad}/finish"),
        json!({"status": "failed", "error": "snapshot refused"}),
    )
    .await;
    let (headers, body) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no notification within 10 s")
        .unwrap();

    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));
    assert_eq!(
        headers[SIGNATURE_HEADER].to_str().unwrap(),
        secret.sign(&body)
    );
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (
            &body["event"],
            &body["job"]["job_id"],
            &body["job"]["error"]
        ),
        (
            &json!("job_failed"),
            &json!(bad),
            &json!("snapshot refused")
        ),
        "only the failure is sent (on_success is off): {body}"
    );
    hub.stop().await;
    assert!(rx.try_recv().is_err(), "the completed job was not notified");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_wide_cap_holds_jobs_back_until_a_running_one_ends() {
    let hub = Hub::start_with_max_running(1).await;
    let a1 = enroll(&hub, "a1").await;
    let a2 = enroll(&hub, "a2").await;
    for (credential, agent) in [("vc1", "a1"), ("vc2", "a2")] {
        let (status, body) = put_credential(&hub, credential, Some(agent)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let first = running_job(&hub, &a1, "vm-1").await;
    let second = queue_backup(&hub, "vm-2", json!({"credential": "vc2"})).await;

    let (capped, _) = poll(&hub, &a2, 0).await;
    let waiting = spawn_poll(&hub, &a2, 30);
    let (finished, _) = as_agent(
        &hub,
        &a1,
        &format!("/api/v1/jobs/{first}/finish"),
        json!({"status": "completed"}),
    )
    .await;
    let (status, handed) = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the long poll gets the job once the running one ends")
        .unwrap();

    assert_eq!(
        capped,
        StatusCode::NO_CONTENT,
        "the cap holds the second job back"
    );
    assert_eq!(finished, StatusCode::OK);
    assert_eq!(
        (status, &handed["job_id"]),
        (StatusCode::OK, &json!(second))
    );
    hub.stop().await;
}
