//! Whole-VM restores into vCenter, the hub's side (issue #16): the captured `vm_config` stored
//! with a backup and answered, `POST /api/v1/backups/{id}/restore` refusing what cannot be
//! restored before queuing, the `restore` job handed to the credential's agent with its
//! payload, the agent's rights on its point, the point held while the job lives, and cancel.

use reqwest::{Method, StatusCode};
use sendense_types::{
    AgentJob, Backup, BackupId, Chain, Job, JobKind, JobStatus, RestoreTarget, VmConfig,
};
use serde_json::{Value, json};

use crate::hub_api::{Hub, MIB, typed};
use crate::jobs::{
    TestAgent, as_agent, call_as, enroll, hub_with_agent, poll, put_credential, queue_backup,
};
use crate::prune::wait_ended;

/// A captured configuration of `vm` with disks 2000 and 2001 (on two controllers) and two NICs.
fn config_json(vm: &str) -> Value {
    json!({
        "version": 1, "name": vm, "guest_id": "ubuntu64Guest", "hardware_version": "vmx-19",
        "firmware": "efi", "secure_boot": true, "num_cpus": 4, "cores_per_socket": 2,
        "memory_mb": 4096, "annotation": "web server",
        "controllers": [
            {"key": 1000, "kind": "pvscsi", "bus_number": 0},
            {"key": 15000, "kind": "sata", "bus_number": 0}
        ],
        "disks": [
            {"key": 2000, "capacity_bytes": MIB, "controller_key": 1000, "unit_number": 0,
             "provisioning": "thin", "file_name": "[ds1] web01/web01.vmdk"},
            {"key": 2001, "capacity_bytes": 2 * MIB, "controller_key": 15000, "unit_number": 0,
             "provisioning": "thick-lazy"}
        ],
        "nics": [
            {"key": 4000, "adapter_type": "vmxnet3", "network": "VM Network",
             "mac_address": "00:50:56:aa:bb:01", "mac_manual": false},
            {"key": 4001, "adapter_type": "e1000e", "network": "Backup Net",
             "mac_address": "00:50:56:aa:bb:02", "mac_manual": true}
        ]
    })
}

fn config(vm: &str) -> VmConfig {
    serde_json::from_value(config_json(vm)).unwrap()
}

async fn put_config(hub: &Hub, id: &str, body: &Value) -> (StatusCode, Value) {
    hub.call(
        Method::PUT,
        &format!("/api/v1/backups/{id}/vm_config"),
        Some(body.clone()),
    )
    .await
}

/// A completed full of `vm` (disks 2000 and 2001), with its config stored while it ran.
async fn point_with_config(hub: &Hub, vm: &str) -> Backup {
    hub.register(vm, &[MIB, 2 * MIB]).await;
    let running = hub.start_backup(vm, "full").await;
    let (status, body) = put_config(hub, running.backup_id.as_str(), &config_json(vm)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    hub.complete(&running, "52 aa/1").await
}

fn restore_body(target_name: &str) -> Value {
    json!({"target": "vcenter", "vm_name": target_name, "datacenter": "dc1",
           "folder": "vm/restored", "datastore": "ds2",
           "network_map": {"VM Network": "Restore Net"}, "power_on": true})
}

async fn restore(hub: &Hub, id: &BackupId, body: Value) -> (StatusCode, Value) {
    hub.post(&format!("/api/v1/backups/{id}/restore"), body)
        .await
}

async fn queued_restore(hub: &Hub, id: &BackupId, body: Value) -> String {
    let (status, answer) = restore(hub, id, body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    answer["job_id"].as_str().unwrap().to_owned()
}

fn assert_refused(answer: &(StatusCode, Value), status: StatusCode, words: &[&str]) {
    assert_eq!(answer.0, status, "{}", answer.1);
    let message = answer.1["message"].as_str().unwrap_or_default();
    for w in words {
        assert!(message.contains(w), "{w:?} not in {message:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_config_put_while_running_answered_by_get_list_and_chain() {
    let hub = Hub::start().await;
    hub.register("web01", &[MIB, 2 * MIB]).await;
    let running = hub.start_backup("web01", "full").await;

    let (status, body) = put_config(&hub, running.backup_id.as_str(), &config_json("web01")).await;

    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(typed::<Backup>(body).vm_config, Some(config("web01")));
    let done = hub.complete(&running, "52 aa/1").await;
    assert_eq!(done.vm_config, Some(config("web01")));
    let one = hub.backup(&running.backup_id).await;
    assert_eq!(one.vm_config, Some(config("web01")));
    let listed: Vec<Backup> = hub.get_as("/api/v1/backups?vm_name=web01").await;
    assert_eq!(listed[0].vm_config, Some(config("web01")));
    let chain: Chain = hub.get_as("/api/v1/backups/chain/web01").await;
    assert_eq!(chain.backups[0].vm_config, Some(config("web01")));
    // A backup without a captured config answers null.
    let bare = hub.start_backup("web01", "incremental").await;
    let (_, raw) = hub
        .get(&format!("/api/v1/backups/{}", bare.backup_id))
        .await;
    assert_eq!(raw["vm_config"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_config_put_on_completed_replaces_and_on_failed_is_refused() {
    let hub = Hub::start().await;
    let point = point_with_config(&hub, "web01").await;
    let mut changed = config_json("web01");
    changed["memory_mb"] = json!(8192);

    let (status, body) = put_config(&hub, point.backup_id.as_str(), &changed).await;

    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        hub.backup(&point.backup_id)
            .await
            .vm_config
            .map(|c| c.memory_mb),
        Some(8192)
    );
    let failing = hub.start_backup("web01", "incremental").await;
    let (status, body) = hub
        .post(
            &format!("/api/v1/backups/{}/fail", failing.backup_id),
            json!({"reason": "test"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let refused = put_config(&hub, failing.backup_id.as_str(), &config_json("web01")).await;
    assert_refused(&refused, StatusCode::CONFLICT, &["failed"]);
    let unknown = put_config(
        &hub,
        "backup-web01-20200101T000000-000001",
        &config_json("web01"),
    )
    .await;
    assert_refused(&unknown, StatusCode::NOT_FOUND, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_config_bad_bodies_refused_with_400_and_nothing_stored() {
    let hub = Hub::start().await;
    hub.register("web01", &[MIB, 2 * MIB]).await;
    let running = hub.start_backup("web01", "full").await;
    let id = running.backup_id.as_str();
    let mut other_disk = config_json("web01");
    other_disk["disks"][1]["key"] = json!(2005);
    let mut one_disk = config_json("web01");
    one_disk["disks"].as_array_mut().unwrap().pop();
    let mut unknown_field = config_json("web01");
    unknown_field["cpus"] = json!(4);
    let mut bad_mac = config_json("web01");
    bad_mac["nics"][0]["mac_address"] = json!("00:50:56:AA:BB:01");
    let mut too_big = config_json("web01");
    too_big["annotation"] = json!("x".repeat(1_100_000));

    let cases = [
        (other_disk, vec!["2005", "2001"]),
        (one_disk, vec!["2001"]),
        (unknown_field, vec!["cpus"]),
        (bad_mac, vec!["mac_address"]),
        (too_big, vec![]),
    ];
    for (body, words) in cases {
        let answer = put_config(&hub, id, &body).await;
        assert_refused(&answer, StatusCode::BAD_REQUEST, &words);
    }
    assert_eq!(hub.backup(&running.backup_id).await.vm_config, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refused_before_queuing_with_clear_errors() {
    let (hub, _a1) = hub_with_agent().await;
    let point = point_with_config(&hub, "web01").await;
    hub.register("old01", &[MIB]).await;
    let bare = hub.start_backup("old01", "full").await;
    let bare = hub.complete(&bare, "52 aa/1").await;
    let running = hub.start_backup("web01", "incremental").await;
    let (status, body) = put_credential(&hub, "vc0", None).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let with_vc1 = |mut b: Value| {
        b["credential"] = json!("vc1");
        b
    };

    let unknown = restore(
        &hub,
        &"backup-web01-20200101T000000-000001".parse().unwrap(),
        with_vc1(restore_body("r1")),
    )
    .await;
    assert_refused(&unknown, StatusCode::NOT_FOUND, &[]);
    let not_completed = restore(&hub, &running.backup_id, with_vc1(restore_body("r1"))).await;
    assert_refused(&not_completed, StatusCode::CONFLICT, &["running"]);
    let no_config = restore(&hub, &bare.backup_id, with_vc1(restore_body("r1"))).await;
    assert_refused(
        &no_config,
        StatusCode::CONFLICT,
        &["no captured VM configuration", "restore --to FILE"],
    );
    let mut bad_disk = with_vc1(restore_body("r1"));
    bad_disk["disks"] = json!([2000, 2009]);
    let bad_disk = restore(&hub, &point.backup_id, bad_disk).await;
    assert_refused(&bad_disk, StatusCode::BAD_REQUEST, &["2009"]);
    let no_credential = restore(&hub, &point.backup_id, restore_body("r1")).await;
    assert_refused(&no_credential, StatusCode::BAD_REQUEST, &["credential"]);
    let mut no_agent = restore_body("r1");
    no_agent["credential"] = json!("vc0");
    let no_agent = restore(&hub, &point.backup_id, no_agent).await;
    assert_refused(&no_agent, StatusCode::CONFLICT, &["vc0", "agent"]);
    let mut unknown_credential = restore_body("r1");
    unknown_credential["credential"] = json!("vc9");
    let unknown_credential = restore(&hub, &point.backup_id, unknown_credential).await;
    assert_refused(&unknown_credential, StatusCode::NOT_FOUND, &["vc9"]);
    let mut bad_body = with_vc1(restore_body("r1"));
    bad_body["colour"] = json!("red");
    let bad_body = restore(&hub, &point.backup_id, bad_body).await;
    assert_refused(&bad_body, StatusCode::BAD_REQUEST, &["colour"]);
    let first = queued_restore(&hub, &point.backup_id, with_vc1(restore_body("r1"))).await;
    let twice = restore(&hub, &point.backup_id, with_vc1(restore_body("r1"))).await;
    assert_refused(&twice, StatusCode::CONFLICT, &["r1", &first]);
    let jobs: sendense_types::JobList = hub.get_as("/api/v1/jobs?kind=restore").await;
    assert_eq!(jobs.jobs.len(), 1, "only the first restore was queued");
}

/// Has `agent` take its next job: a restore.
async fn take_restore(hub: &Hub, agent: &TestAgent) -> AgentJob {
    let (status, handed) = poll(hub, agent, 0).await;
    assert_eq!(status, StatusCode::OK, "{handed}");
    typed(handed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_job_handed_to_credentials_agent_with_payload_progress_and_finish() {
    let (hub, a1) = hub_with_agent().await;
    let a2 = enroll(&hub, "a2").await;
    let (status, body) = put_credential(&hub, "vc2", Some("a2")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let point = point_with_config(&hub, "web01").await;
    // The VM was last backed up through vc1: a restore naming no credential uses it.
    let backup_job = queue_backup(&hub, "web01", json!({"credential": "vc1"})).await;
    let (status, body) = hub
        .post(&format!("/api/v1/jobs/{backup_job}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut body = restore_body("web01-restored");
    body["disks"] = json!([2001]);
    body["keep_macs"] = json!(true);

    let id = queued_restore(&hub, &point.backup_id, body).await;

    let (other, _) = poll(&hub, &a2, 0).await;
    assert_eq!(other, StatusCode::NO_CONTENT, "a2 runs vc2, not vc1");
    let handed = take_restore(&hub, &a1).await;
    assert_eq!(
        (handed.job_id.as_str(), handed.kind),
        (id.as_str(), JobKind::Restore)
    );
    assert_eq!(
        handed.credential.as_ref().map(|c| c.name.as_str()),
        Some("vc1")
    );
    assert_eq!(
        handed.credential.as_ref().map(|c| c.password.as_str()),
        Some("pw-of-vc1")
    );
    let restore = handed.restore.expect("a restore job carries its payload");
    assert_eq!(restore.backup_id, point.backup_id);
    assert_eq!(restore.vm_config, config("web01"));
    assert_eq!(restore.request.target, RestoreTarget::Vcenter);
    assert_eq!(restore.request.vm_name, "web01-restored");
    assert_eq!(
        restore.request.credential.as_ref().map(|c| c.as_str()),
        Some("vc1")
    );
    assert!(restore.request.keep_macs && restore.request.power_on);
    assert_eq!(restore.request.map_network("VM Network"), "Restore Net");
    let disks: Vec<(u32, u64)> = restore
        .disks
        .iter()
        .map(|d| (d.disk_key.0, d.capacity_bytes))
        .collect();
    assert_eq!(disks, [(2001, 2 * MIB)]);
    let (status, beat) = as_agent(
        &hub,
        &a1,
        &format!("/api/v1/jobs/{id}/heartbeat"),
        json!({"progress": {"bytes_done": MIB, "bytes_total": 2 * MIB}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{beat}");
    let job: Job = hub.get_as(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(
        (
            job.kind,
            job.status,
            job.progress.bytes_done,
            job.progress.bytes_total
        ),
        (JobKind::Restore, JobStatus::Running, MIB, 2 * MIB)
    );
    assert_eq!(job.backup_id.as_ref(), Some(&point.backup_id));
    let (status, done) = as_agent(
        &hub,
        &a1,
        &format!("/api/v1/jobs/{id}/finish"),
        json!({"status": "completed"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(typed::<Job>(done).status, JobStatus::Completed);
    assert_eq!(
        hub.backup(&point.backup_id).await.status,
        sendense_types::BackupStatus::Completed,
        "a restore never changes its point"
    );
}

/// An NBD connection to `export` with `agent`'s enrolled client certificate.
async fn agent_nbd(hub: &Hub, agent: &TestAgent, export: &str) -> sendense_nbd::Client {
    let dir = hub.data.path().join(format!("agent-{}", agent.name));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = std::fs::read(hub.data.path().join("tls/ca-cert.pem")).unwrap();
    std::fs::write(dir.join("ca-cert.pem"), ca).unwrap();
    std::fs::write(dir.join("client-cert.pem"), &agent.cert_pem).unwrap();
    std::fs::write(dir.join("client-key.pem"), &agent.key_pem).unwrap();
    let tls = sendense_nbd::tls::client_config_from_dir(&dir).unwrap();
    let port = hub.running.as_ref().unwrap().nbd_addr.port();
    let options = sendense_nbd::ClientOptions {
        tls: Some((tls, "localhost".into())),
        export_name: export.to_owned(),
        ..sendense_nbd::ClientOptions::default()
    };
    sendense_nbd::Client::connect(("127.0.0.1", port), options)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reads_and_exports_only_the_point_of_its_restore_job() {
    let (hub, a1) = hub_with_agent().await;
    let a2 = enroll(&hub, "a2").await;
    let point = point_with_config(&hub, "web01").await;
    hub.register("db01", &[MIB]).await;
    let other = hub.start_backup("db01", "full").await;
    let other = hub.complete(&other, "52 aa/1").await;
    let mut body = restore_body("web01-restored");
    body["credential"] = json!("vc1");
    let id = queued_restore(&hub, &point.backup_id, body).await;
    let exports = format!("/api/v1/backups/{}/exports", point.backup_id);
    // Queued, not yet taken: the agent has no right on the point yet.
    let (early, early_body) = call_as(&hub, Some(&a1.token), Method::POST, &exports, None).await;
    assert_eq!(early, StatusCode::FORBIDDEN, "{early_body}");
    take_restore(&hub, &a1).await;

    let (read, backup) = call_as(
        &hub,
        Some(&a1.token),
        Method::GET,
        &format!("/api/v1/backups/{}", point.backup_id),
        None,
    )
    .await;
    assert_eq!(read, StatusCode::OK, "{backup}");
    let (opened, answer) = call_as(&hub, Some(&a1.token), Method::POST, &exports, None).await;
    assert_eq!(opened, StatusCode::OK, "{answer}");
    let export = answer["disks"][0]["export_name"]
        .as_str()
        .unwrap()
        .to_owned();
    // The agent's own NBD client certificate reads the export it was handed.
    let nbd = agent_nbd(&hub, &a1, &export).await;
    assert_eq!(nbd.size(), MIB);
    drop(nbd);
    for (agent, method, path) in [
        (
            &a1,
            Method::GET,
            format!("/api/v1/backups/{}", other.backup_id),
        ),
        (
            &a1,
            Method::POST,
            format!("/api/v1/backups/{}/exports", other.backup_id),
        ),
        (
            &a1,
            Method::DELETE,
            format!("/api/v1/backups/{}/exports", other.backup_id),
        ),
        (&a1, Method::POST, "/api/v1/backups/x/exports".to_owned()),
        (&a2, Method::POST, exports.clone()),
        (
            &a2,
            Method::GET,
            format!("/api/v1/backups/{}", point.backup_id),
        ),
        (
            &a1,
            Method::POST,
            format!("/api/v1/backups/{}/restore", point.backup_id),
        ),
        (
            &a1,
            Method::PUT,
            format!("/api/v1/backups/{}/vm_config", point.backup_id),
        ),
    ] {
        let (status, body) = call_as(
            &hub,
            Some(&agent.token),
            method.clone(),
            &path,
            Some(json!({})),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {body}");
    }
    let (closed, body) = call_as(&hub, Some(&a1.token), Method::DELETE, &exports, None).await;
    assert_eq!(closed, StatusCode::NO_CONTENT, "{body}");
    let (status, body) = as_agent(
        &hub,
        &a1,
        &format!("/api/v1/jobs/{id}/finish"),
        json!({"status": "failed", "error": "datastore full"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (after, _) = call_as(&hub, Some(&a1.token), Method::POST, &exports, None).await;
    assert_eq!(
        after,
        StatusCode::FORBIDDEN,
        "the job ended: no more rights"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_puts_vm_config_only_for_the_vm_of_its_running_backup_job() {
    let (hub, a1) = hub_with_agent().await;
    hub.register("web01", &[MIB, 2 * MIB]).await;
    let job = queue_backup(&hub, "web01", json!({"credential": "vc1"})).await;
    let path = |id: &BackupId| format!("/api/v1/backups/{id}/vm_config");
    let running = hub.start_backup("web01", "full").await;
    let (before, _) = call_as(
        &hub,
        Some(&a1.token),
        Method::PUT,
        &path(&running.backup_id),
        Some(config_json("web01")),
    )
    .await;
    assert_eq!(before, StatusCode::FORBIDDEN, "no job taken yet");
    let (status, handed) = poll(&hub, &a1, 0).await;
    assert_eq!(status, StatusCode::OK, "{handed}");
    assert_eq!(handed["job_id"], json!(job));

    let (status, body) = call_as(
        &hub,
        Some(&a1.token),
        Method::PUT,
        &path(&running.backup_id),
        Some(config_json("web01")),
    )
    .await;

    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(typed::<Backup>(body).vm_config, Some(config("web01")));
    hub.register("db01", &[MIB]).await;
    let other = hub.start_backup("db01", "full").await;
    let mut db = config_json("db01");
    db["disks"].as_array_mut().unwrap().pop();
    let (status, body) = call_as(
        &hub,
        Some(&a1.token),
        Method::PUT,
        &path(&other.backup_id),
        Some(db),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_restore_holds_its_point_against_delete_and_prune_until_cancelled() {
    let (hub, _a1) = hub_with_agent().await;
    let point = point_with_config(&hub, "web01").await;
    let newer = hub.start_backup("web01", "incremental").await;
    let newer = hub.complete(&newer, "52 aa/2").await;
    let mut body = restore_body("web01-restored");
    body["credential"] = json!("vc1");
    let id = queued_restore(&hub, &point.backup_id, body.clone()).await;

    let (status, refused) = hub
        .call(
            Method::DELETE,
            &format!("/api/v1/backups/{}", newer.backup_id),
            None,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the newer point is not read by the restore: {refused}"
    );
    let delete = hub
        .call(
            Method::DELETE,
            &format!("/api/v1/backups/{}", point.backup_id),
            None,
        )
        .await;
    assert_refused(&delete, StatusCode::CONFLICT, &["restore job", &id]);
    let newest = hub.start_backup("web01", "incremental").await;
    hub.complete(&newest, "52 aa/3").await;
    let (status, plan) = hub
        .post(
            "/api/v1/vms/web01/prune",
            json!({"retention": {"keep_last": 1}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{plan}");
    let pruned = wait_ended(&hub, plan["job_id"].as_str().unwrap()).await;
    assert_eq!(pruned.status, JobStatus::Completed, "{:?}", pruned.error);
    let result = pruned.result.unwrap_or_default();
    assert!(
        result.contains("read by restore job") && result.contains(&id),
        "{result}"
    );
    assert_eq!(
        hub.backup(&point.backup_id).await.backup_id,
        point.backup_id
    );

    let (status, cancelled) = hub
        .post(&format!("/api/v1/jobs/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(typed::<Job>(cancelled).status, JobStatus::Cancelled);
    let again = queued_restore(&hub, &point.backup_id, body).await;
    assert_ne!(again, id, "a cancelled restore frees its target name");
    let (status, body) = hub
        .post(&format!("/api/v1/jobs/{again}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = hub
        .call(
            Method::DELETE,
            &format!("/api/v1/backups/{}", newest.backup_id),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_of_point_failing_verification_or_missing_files_refused() {
    use crate::verify::{BLOCKS, SIZE, Write, flip_byte, point, verify};
    let hub = Hub::start().await;
    hub.register("vw", &[SIZE]).await;
    let bad = point(
        &hub,
        "vw",
        "full",
        &[Write::Data {
            first: 0,
            blocks: BLOCKS,
            seed: 7,
        }],
        0,
    )
    .await;
    let mut vw = config_json("vw");
    vw["disks"].as_array_mut().unwrap().pop();
    vw["disks"][0]["capacity_bytes"] = json!(SIZE);
    let (status, body) = put_config(&hub, bad.backup_id.as_str(), &vw).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    flip_byte(&hub.repo().join(bad.disks[0].file.as_ref().unwrap()), 100);
    let verdict = verify(&hub, &bad).unwrap();
    assert_eq!(verdict.state, sendense_types::VerificationState::Failed);
    let lost = point_with_config(&hub, "lost").await;
    let mut body = restore_body("r1");
    body["credential"] = json!("vc1");

    let failed = restore(&hub, &bad.backup_id, body.clone()).await;
    let repo = hub.repo();
    let data = hub.stop().await;
    std::fs::remove_file(repo.join(lost.disks[0].file.as_ref().unwrap())).unwrap();
    let hub = Hub::start_in(data, std::time::Duration::from_secs(600)).await;
    let missing = restore(&hub, &lost.backup_id, body).await;

    assert_refused(&failed, StatusCode::CONFLICT, &["failed verification"]);
    assert_refused(&missing, StatusCode::CONFLICT, &[lost.backup_id.as_str()]);
    let jobs: sendense_types::JobList = hub.get_as("/api/v1/jobs?kind=restore").await;
    assert!(jobs.jobs.is_empty(), "nothing queued: {jobs:?}");
}
