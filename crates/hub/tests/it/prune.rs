//! Retention over the real HTTPS API (issue #14): protecting points (`PUT /api/v1/backups/{id}`,
//! deletion refused while protected), `POST /api/v1/vms/{name}/prune` (dry run, a `prune` job
//! run inside the hub, points protected since the plan skipped, a prune waiting for the VM's
//! backup job), and a policy pruning after its run.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use sendense_types::{Backup, BackupId, Job, JobKind, JobList, JobStatus, PruneAnswer};
use serde_json::{Value, json};

use crate::hub_api::{Hub, MIB, typed};
use crate::jobs::{as_agent, hub_with_agent, poll};

/// A completed full of `vm` (registered with one small disk if needed).
async fn full(hub: &Hub, vm: &str) -> Backup {
    let b = hub.start_backup(vm, "full").await;
    hub.complete(&b, "52 aa/1").await
}

async fn incremental(hub: &Hub, vm: &str) -> Backup {
    let b = hub.start_backup(vm, "incremental").await;
    hub.complete(&b, "52 aa/2").await
}

async fn put_protected(hub: &Hub, id: &BackupId, protected: Value) -> (StatusCode, Value) {
    hub.call(
        Method::PUT,
        &format!("/api/v1/backups/{id}"),
        Some(json!({ "protected": protected })),
    )
    .await
}

async fn prune(hub: &Hub, vm: &str, body: Value) -> (StatusCode, Value) {
    hub.post(&format!("/api/v1/vms/{vm}/prune"), body).await
}

/// Waits (20 s at most) until job `id` has ended, on the hub's finished-job broadcast (the one
/// the webhook listens to); answers the job as the API lists it.
pub(crate) async fn wait_ended(hub: &Hub, id: &str) -> Job {
    let mut ended = hub
        .running
        .as_ref()
        .expect("the hub runs")
        .jobs
        .subscribe_finished();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let job: Job = hub.get_as(&format!("/api/v1/jobs/{id}")).await;
        if !job.status.is_active() {
            return job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id} still {}",
            job.status
        );
        let _ = tokio::time::timeout(Duration::from_millis(200), ended.recv()).await;
    }
}

async fn status_of(hub: &Hub, id: &BackupId) -> StatusCode {
    hub.get(&format!("/api/v1/backups/{id}")).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protect_put_answers_the_backup_and_delete_is_refused_until_unprotected() {
    let hub = Hub::start().await;
    hub.register("web01", &[MIB]).await;
    let point = full(&hub, "web01").await;
    let id = &point.backup_id;

    let (status, body) = put_protected(&hub, id, json!(true)).await;
    let (refused, error) = hub
        .call(Method::DELETE, &format!("/api/v1/backups/{id}"), None)
        .await;
    let (unprotected, after) = put_protected(&hub, id, json!(false)).await;
    let (deleted, _) = hub
        .call(Method::DELETE, &format!("/api/v1/backups/{id}"), None)
        .await;

    assert_eq!(status, StatusCode::OK, "{body}");
    let answered: Backup = typed(body);
    assert!(answered.protected && answered.backup_id == *id);
    assert_eq!(
        (refused, error["error"].as_str()),
        (StatusCode::CONFLICT, Some("conflict")),
        "{error}"
    );
    assert!(
        error["message"].as_str().unwrap().contains("protected"),
        "{error}"
    );
    assert_eq!(
        (unprotected, after["protected"].clone()),
        (StatusCode::OK, json!(false))
    );
    assert_eq!(deleted, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protect_unknown_404_running_409_bad_body_400_agent_403() {
    let (hub, a1) = hub_with_agent().await;
    hub.register("web01", &[MIB]).await;
    let running = hub.start_backup("web01", "full").await;
    let unknown: BackupId = "backup-web01-20240101T000000-abcdef".parse().unwrap();

    let (missing, _) = put_protected(&hub, &unknown, json!(true)).await;
    let (busy, _) = put_protected(&hub, &running.backup_id, json!(true)).await;
    let (bad, _) = put_protected(&hub, &running.backup_id, json!("yes")).await;
    let (extra, _) = hub
        .call(
            Method::PUT,
            &format!("/api/v1/backups/{}", running.backup_id),
            Some(json!({"protected": true, "pinned": true})),
        )
        .await;
    let (agent, _) = crate::jobs::call_as(
        &hub,
        Some(&a1.token),
        Method::PUT,
        &format!("/api/v1/backups/{}", running.backup_id),
        Some(json!({"protected": true})),
    )
    .await;
    let (agent_prune, _) = as_agent(
        &hub,
        &a1,
        "/api/v1/vms/web01/prune",
        json!({"retention": {"keep_last": 1}}),
    )
    .await;

    assert_eq!(
        [missing, busy, bad, extra, agent, agent_prune],
        [
            StatusCode::NOT_FOUND,
            StatusCode::CONFLICT,
            StatusCode::BAD_REQUEST,
            StatusCode::BAD_REQUEST,
            StatusCode::FORBIDDEN,
            StatusCode::FORBIDDEN
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_dry_run_answers_keep_and_remove_newest_first_and_removes_nothing() {
    let hub = Hub::start().await;
    hub.register("web01", &[MIB]).await;
    let p1 = full(&hub, "web01").await;
    let p2 = incremental(&hub, "web01").await;
    let p3 = incremental(&hub, "web01").await;
    let p4 = incremental(&hub, "web01").await;
    let (status, _) = put_protected(&hub, &p2.backup_id, json!(true)).await;
    assert_eq!(status, StatusCode::OK);

    let (status, body) = prune(
        &hub,
        "web01",
        json!({"retention": {"keep_last": 1}, "dry_run": true}),
    )
    .await;

    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["job_id"], Value::Null, "{body}");
    let answer: PruneAnswer = typed(body);
    assert_eq!(
        (answer.keep, answer.remove),
        (
            vec![p4.backup_id.clone(), p2.backup_id.clone()],
            vec![p3.backup_id.clone(), p1.backup_id.clone()]
        )
    );
    let prunes: JobList = hub.get_as("/api/v1/jobs?kind=prune").await;
    assert!(prunes.jobs.is_empty());
    for p in [&p1, &p2, &p3, &p4] {
        assert_eq!(status_of(&hub, &p.backup_id).await, StatusCode::OK);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_empty_retention_keeps_all_unknown_vm_404_bad_body_400() {
    let hub = Hub::start().await;
    hub.register("web01", &[MIB]).await;
    let p1 = full(&hub, "web01").await;

    let (kept, all) = prune(&hub, "web01", json!({"retention": {}})).await;
    let (unknown, _) = prune(&hub, "nosuchvm", json!({"retention": {"keep_last": 1}})).await;
    let (negative, _) = prune(&hub, "web01", json!({"retention": {"keep_last": -1}})).await;
    let (typo, _) = prune(&hub, "web01", json!({"retention": {"keep_lats": 1}})).await;
    let (no_retention, _) = prune(&hub, "web01", json!({"dry_run": true})).await;

    assert_eq!(kept, StatusCode::OK, "{all}");
    let all: PruneAnswer = typed(all);
    assert_eq!(
        (all.keep, all.remove, all.job_id),
        (vec![p1.backup_id], vec![], None)
    );
    assert_eq!(
        [unknown, negative, typo, no_retention],
        [
            StatusCode::NOT_FOUND,
            StatusCode::BAD_REQUEST,
            StatusCode::BAD_REQUEST,
            StatusCode::BAD_REQUEST
        ]
    );
}

/// Two chains: keep_last 2 keeps the newer chain; the older one goes (its incremental first,
/// then its full), by a `prune` job the hub runs itself and announces when it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_job_runs_inside_the_hub_and_removes_the_points() {
    let hub = Hub::start().await;
    hub.register("web01", &[MIB]).await;
    let old_full = full(&hub, "web01").await;
    let old_inc = incremental(&hub, "web01").await;
    let new_full = full(&hub, "web01").await;
    let new_inc = incremental(&hub, "web01").await;
    let old_files: Vec<_> = [&old_full, &old_inc]
        .iter()
        .map(|b| crate::hub_api::file_of(&hub, b, 0))
        .collect();

    let (status, body) = prune(&hub, "web01", json!({"retention": {"keep_last": 2}})).await;

    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let answer: PruneAnswer = typed(body);
    assert_eq!(
        (&answer.keep, &answer.remove),
        (
            &vec![new_inc.backup_id.clone(), new_full.backup_id.clone()],
            &vec![old_inc.backup_id.clone(), old_full.backup_id.clone()]
        )
    );
    let job_id = answer.job_id.expect("a prune job");
    let job = wait_ended(&hub, job_id.as_str()).await;
    assert_eq!(
        (
            job.kind,
            job.status,
            job.agent,
            job.vm_name.map(String::from)
        ),
        (
            JobKind::Prune,
            JobStatus::Completed,
            None,
            Some("web01".to_owned())
        ),
        "{:?}",
        job.error
    );
    assert!(
        job.result
            .as_deref()
            .unwrap()
            .starts_with("removed 2 of 2 points"),
        "{:?}",
        job.result
    );
    assert!(job.started_at.is_some() && job.finished_at.is_some());
    assert_eq!(
        [
            status_of(&hub, &old_inc.backup_id).await,
            status_of(&hub, &old_full.backup_id).await,
            status_of(&hub, &new_full.backup_id).await,
            status_of(&hub, &new_inc.backup_id).await,
        ],
        [
            StatusCode::NOT_FOUND,
            StatusCode::NOT_FOUND,
            StatusCode::OK,
            StatusCode::OK
        ]
    );
    assert!(old_files.iter().all(|f| !f.exists()), "{old_files:?}");
    let (status, restore) = hub
        .post(
            &format!("/api/v1/backups/{}/exports", new_inc.backup_id),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{restore}");
}

/// A prune waits while its VM has a backup job queued or running; a point protected before it
/// runs is skipped, and its result says so. A queued prune job can be cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_job_waits_for_the_backup_job_and_skips_points_protected_since() {
    let (hub, a1) = hub_with_agent().await;
    hub.register("web01", &[MIB]).await;
    let first = full(&hub, "web01").await;
    let second = full(&hub, "web01").await;
    let third = full(&hub, "web01").await;
    let (status, queued) = hub
        .post("/api/v1/vms/web01/backup", json!({"credential": "vc1"}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{queued}");
    let backup_job = queued["job_id"].as_str().unwrap().to_owned();
    let (status, _) = poll(&hub, &a1, 0).await;
    assert_eq!(status, StatusCode::OK);

    let (status, body) = prune(&hub, "web01", json!({"retention": {"keep_last": 1}})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let answer: PruneAnswer = typed(body);
    let (status, second_prune) = prune(&hub, "web01", json!({"retention": {"keep_last": 1}})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{second_prune}");
    let job_id = answer.job_id.unwrap();
    let waiting: Job = hub.get_as(&format!("/api/v1/jobs/{job_id}")).await;
    let (status, cancelled) = hub
        .post(
            &format!(
                "/api/v1/jobs/{}/cancel",
                second_prune["job_id"].as_str().unwrap()
            ),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    let (status, _) = put_protected(&hub, &second.backup_id, json!(true)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = as_agent(
        &hub,
        &a1,
        &format!("/api/v1/jobs/{backup_job}/finish"),
        json!({"status": "failed", "error": "test: no vCenter"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let job = wait_ended(&hub, job_id.as_str()).await;

    assert_eq!(waiting.status, JobStatus::Queued);
    assert_eq!(cancelled["status"], json!("cancelled"));
    assert_eq!(job.status, JobStatus::Completed, "{:?}", job.error);
    let result = job.result.unwrap();
    assert!(
        result.starts_with("removed 1 of 2 points")
            && result.contains(&format!(
                "protected since the prune was planned: {}",
                second.backup_id
            )),
        "{result}"
    );
    assert_eq!(
        [
            status_of(&hub, &third.backup_id).await,
            status_of(&hub, &second.backup_id).await,
            status_of(&hub, &first.backup_id).await
        ],
        [StatusCode::OK, StatusCode::OK, StatusCode::NOT_FOUND]
    );
}

/// A policy with a retention prunes each VM it backed up once its run is over, with a prune
/// job naming the policy; with `verify_after_backup` it queues a verification of the new point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_prunes_after_its_run_and_queues_verification() {
    let (hub, a1) = hub_with_agent().await;
    hub.register("web01", &[MIB]).await;
    let before = full(&hub, "web01").await;
    let (status, body) = hub
        .post(
            "/api/v1/policies",
            json!({"name": "nightly", "schedule": "daily", "credential": "vc1",
                "vms": ["web01"], "retention": {"keep_last": 1},
                "verify_after_backup": true}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, run) = hub.post("/api/v1/policies/nightly/run", json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{run}");
    let (status, handed) = poll(&hub, &a1, 0).await;
    assert_eq!(status, StatusCode::OK, "{handed}");
    let made = full(&hub, "web01").await;
    let mut ended = hub.running.as_ref().unwrap().jobs.subscribe_finished();

    let (status, body) = as_agent(
        &hub,
        &a1,
        &format!("/api/v1/jobs/{}/finish", handed["job_id"].as_str().unwrap()),
        json!({"status": "completed", "backup_id": made.backup_id}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let prune_job = loop {
        let list: JobList = hub.get_as("/api/v1/jobs?kind=prune").await;
        if let Some(job) = list.jobs.into_iter().find(|j| !j.status.is_active()) {
            break job;
        }
        assert!(tokio::time::Instant::now() < deadline, "no prune job ended");
        let _ = tokio::time::timeout(Duration::from_millis(200), ended.recv()).await;
    };
    let verifies: JobList = hub.get_as("/api/v1/jobs?kind=verify").await;

    assert_eq!(
        (
            prune_job.status,
            prune_job.policy.map(String::from),
            prune_job.vm_name.map(String::from)
        ),
        (
            JobStatus::Completed,
            Some("nightly".to_owned()),
            Some("web01".to_owned())
        ),
        "{:?}",
        prune_job.error
    );
    assert_eq!(
        [
            status_of(&hub, &before.backup_id).await,
            status_of(&hub, &made.backup_id).await
        ],
        [StatusCode::NOT_FOUND, StatusCode::OK]
    );
    assert_eq!(
        verifies
            .jobs
            .iter()
            .map(|j| (j.backup_id.clone(), j.policy.clone().map(String::from)))
            .collect::<Vec<_>>(),
        vec![(Some(made.backup_id.clone()), Some("nightly".to_owned()))]
    );
}

/// A chain of 8 points with known contents (each writes its own blocks, some over earlier
/// ones); point 3 protected; keep_last 2 removes the oldest and middle points (commits into
/// the full, absorbs into children) by a prune job. Every remaining point `qemu-img compare`s
/// equal to the disk as it was when it was taken, and checks clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_job_merges_and_every_remaining_point_reads_as_taken() {
    const SIZE: u64 = 4 * MIB;
    let hub = Hub::start().await;
    let work = tempfile::tempdir().unwrap();
    hub.register("web01", &[SIZE]).await;
    let mut disk = vec![0u8; usize::try_from(SIZE).unwrap()];
    let mut points: Vec<(Backup, std::path::PathBuf)> = Vec::new();
    for n in 0..8u64 {
        let kind = if n == 0 { "full" } else { "incremental" };
        let b = hub.start_backup("web01", kind).await;
        let c = hub.nbd(&crate::hub_api::export_of(&b, 0)).await;
        for (k, offset) in [(0, (n * 256) << 10), (1, ((n % 3) * 512 + 64) << 10)] {
            let mut buf = vec![0u8; 64 << 10];
            crate::support::fill_random(&mut buf, n * 10 + k);
            let at = usize::try_from(offset).unwrap();
            disk[at..at + buf.len()].copy_from_slice(&buf);
            c.write(offset, &buf, false).await.unwrap();
        }
        c.flush().await.unwrap();
        c.disconnect().await.unwrap();
        let state = work.path().join(format!("p{n}.raw"));
        std::fs::write(&state, &disk).unwrap();
        let done = hub.complete(&b, &format!("52 aa/{n}")).await;
        points.push((done, state));
    }
    let (status, _) = put_protected(&hub, &points[3].0.backup_id, json!(true)).await;
    assert_eq!(status, StatusCode::OK);

    let (status, body) = prune(&hub, "web01", json!({"retention": {"keep_last": 2}})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let answer: PruneAnswer = typed(body);
    let job = wait_ended(&hub, answer.job_id.unwrap().as_str()).await;

    assert_eq!(job.status, JobStatus::Completed, "{:?}", job.error);
    assert_eq!(
        answer.keep,
        vec![
            points[7].0.backup_id.clone(),
            points[6].0.backup_id.clone(),
            points[3].0.backup_id.clone()
        ]
    );
    assert!(
        job.progress.bytes_total > 0 && job.progress.bytes_done == job.progress.bytes_total,
        "{:?}",
        job.progress
    );
    for (i, (point, state)) in points.iter().enumerate() {
        let kept = [3, 6, 7].contains(&i);
        let status = status_of(&hub, &point.backup_id).await;
        assert_eq!(status == StatusCode::OK, kept, "point {i}: {status}");
        if kept {
            let now = hub.backup(&point.backup_id).await;
            let file = crate::hub_api::file_of(&hub, &now, 0);
            crate::support::qemu_img_ok(&["check", crate::hub_api::s(&file)]);
            crate::support::qemu_img_ok(&[
                "compare",
                "-f",
                "raw",
                "-F",
                "qcow2",
                crate::hub_api::s(state),
                crate::hub_api::s(&file),
            ]);
        }
    }
}

/// A hub stopped while a prune job ran finds it `running` at the next start and queues it
/// again as its next attempt; it then runs to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_job_interrupted_by_a_restart_is_queued_again_and_runs() {
    let hub = Hub::start().await;
    hub.register("web01", &[MIB]).await;
    let old = full(&hub, "web01").await;
    let new = full(&hub, "web01").await;
    let data = hub.stop().await;
    let job_id = {
        let catalog = sendense_catalog::Catalog::open_in(data.path()).unwrap();
        let queued = catalog
            .create_job(sendense_catalog::JobRecord {
                job_id: sendense_types::JobId::random(),
                seq: 0,
                kind: JobKind::Prune,
                vm_name: Some("web01".parse().unwrap()),
                vm_path: None,
                status: JobStatus::Queued,
                agent: None,
                credential: None,
                backup_type: None,
                policy: None,
                attempt: 1,
                not_before: None,
                lease_until: None,
                progress: sendense_types::JobProgress::default(),
                backup_id: None,
                error: None,
                queued_at: sendense_types::Timestamp::now(),
                started_at: None,
                finished_at: None,
                retention: Some(sendense_types::Retention {
                    keep_last: Some(1),
                    ..sendense_types::Retention::default()
                }),
                remove: vec![old.backup_id.clone()],
                result: None,
                restore: None,
                target: None,
            })
            .unwrap();
        catalog
            .update_job(&queued.job_id, |r| {
                r.status = JobStatus::Running;
                r.started_at = Some(sendense_types::Timestamp::now());
                Ok::<_, sendense_catalog::CatalogError>(())
            })
            .unwrap();
        queued.job_id
    };

    let hub = Hub::start_in(data, Duration::from_secs(600)).await;
    let job = wait_ended(&hub, job_id.as_str()).await;

    assert_eq!(
        (job.status, job.attempt),
        (JobStatus::Completed, 2),
        "{:?}",
        job.error
    );
    assert_eq!(
        [
            status_of(&hub, &old.backup_id).await,
            status_of(&hub, &new.backup_id).await
        ],
        [StatusCode::NOT_FOUND, StatusCode::OK]
    );
}

/// The end of a prune job the hub ran itself goes to the webhook like an agent job's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_job_end_is_notified_to_the_webhook() {
    let (url, mut rx) = crate::webhook::receiver().await;
    let secret_dir = tempfile::tempdir().unwrap();
    let secret =
        sendense_hub::notify::WebhookSecret::new(b"hub-secret", secret_dir.path()).unwrap();
    let hub = Hub::start_with_webhook(
        sendense_hub::notify::WebhookConfig::new(&url, secret, true).unwrap(),
    )
    .await;
    hub.register("web01", &[MIB]).await;
    full(&hub, "web01").await;
    full(&hub, "web01").await;

    let (status, body) = prune(&hub, "web01", json!({"retention": {"keep_last": 1}})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let job_id = body["job_id"].as_str().unwrap().to_owned();
    let notified = loop {
        let (_, body) = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("no notification within 20 s")
            .unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        if body["job"]["job_id"] == json!(job_id) {
            break body;
        }
    };

    assert_eq!(
        (
            notified["event"].clone(),
            notified["job"]["kind"].clone(),
            notified["job"]["status"].clone()
        ),
        (json!("job_completed"), json!("prune"), json!("completed"))
    );
}
