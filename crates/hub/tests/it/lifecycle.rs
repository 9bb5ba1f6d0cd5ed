//! A backup's life under stress (issue #11): long chains, missing files, stated bases, races
//! between complete, fail and the watchdog, dropped requests, start-up reconciliation and
//! bounded shutdown. One in-process hub per test, real HTTPS and NBD over TLS.

// Sizes here are small constants: the casts cannot truncate.
#![allow(clippy::cast_possible_truncation)]

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use sendense_catalog::Catalog;
use sendense_hub::engine::MAX_CHAIN_LENGTH;
use sendense_types::{
    ApiError, Backup, BackupStatus, BackupType, Chain, RepositoryInfo, RestoreExports,
};
use serde_json::{Value, json};

use crate::hub_api::{Hub, MIB, completion, export_of, file_of, s, typed};
use crate::support::{fill_random, qemu_img_ok};

/// How long a condition may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(30);

fn id_of(b: &Backup) -> String {
    b.backup_id.to_string()
}

async fn try_start(hub: &Hub, body: Value) -> (StatusCode, Value) {
    hub.post("/api/v1/backups", body).await
}

async fn status(hub: &Hub, id: &str) -> Backup {
    hub.get_as(&format!("/api/v1/backups/{id}")).await
}

/// Polls the backup until `want` holds, failing the test after [`DEADLINE`].
async fn wait_for(hub: &Hub, id: &str, want: impl Fn(&Backup) -> bool) -> Backup {
    let deadline = Instant::now() + DEADLINE;
    let mut poll = tokio::time::interval(Duration::from_millis(50));
    loop {
        poll.tick().await;
        let b = status(hub, id).await;
        if want(&b) {
            return b;
        }
        assert!(Instant::now() < deadline, "condition never held: {b:?}");
    }
}

/// Every file left in the repository, relative to it, sorted.
fn repository_files(repo: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![repo.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(repo).unwrap().to_str().unwrap().to_owned());
            }
        }
    }
    out.sort();
    out
}

async fn complete_call(hub: &Hub, backup: &Backup, change: &str) -> (StatusCode, Value) {
    let id = id_of(backup);
    hub.post(
        &format!("/api/v1/backups/{id}/complete"),
        serde_json::to_value(completion(backup, change)).unwrap(),
    )
    .await
}

async fn fail_call(hub: &Hub, id: &str) -> (StatusCode, Value) {
    hub.post(
        &format!("/api/v1/backups/{id}/fail"),
        json!({"reason": "test gives up"}),
    )
    .await
}

/// Issue #11 item 6: a daily `auto` schedule never wedges. 40 points of one VM all complete:
/// point 33 is a new full that says why, an explicit incremental on a full chain is a 409, and
/// restores of the last points read back exactly what was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_of_40_auto_points_all_complete_and_restore_reads_back() {
    let hub = Hub::start().await;
    hub.register("daily", &[MIB]).await;
    let mut source = vec![0u8; MIB as usize];
    let mut states: Vec<Vec<u8>> = Vec::new();
    let mut types = Vec::new();
    let mut ids = Vec::new();
    for point in 0..40u64 {
        if point == MAX_CHAIN_LENGTH as u64 {
            let (st, body) = try_start(
                &hub,
                json!({"vm_name": "daily", "backup_type": "incremental"}),
            )
            .await;
            assert_eq!(st, StatusCode::CONFLICT, "{body}");
            let refused: ApiError = typed(body);
            assert!(refused.message.contains("chain"), "{refused:?}");
        }
        let b = hub.start_backup("daily", "auto").await;
        let offset = (point * 8192) % (MIB - 8192);
        let mut block = vec![0u8; 8192];
        fill_random(&mut block, 1000 + point);
        source[offset as usize..offset as usize + 8192].copy_from_slice(&block);
        let c = hub.nbd(&export_of(&b, 0)).await;
        if b.backup_type == BackupType::Full {
            c.write(0, &source, false).await.unwrap();
        } else {
            c.write(offset, &block, false).await.unwrap();
        }
        c.flush().await.unwrap();
        c.disconnect().await.unwrap();
        let done = hub.complete(&b, &format!("d/{point}")).await;
        types.push((done.backup_type, done.full_reason.clone()));
        ids.push(done.backup_id.to_string());
        states.push(source.clone());
    }

    let fulls: Vec<usize> = types
        .iter()
        .enumerate()
        .filter(|(_, (t, _))| *t == BackupType::Full)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(fulls, [0, MAX_CHAIN_LENGTH]);
    let reason = types[MAX_CHAIN_LENGTH].1.clone().unwrap();
    assert!(reason.contains(&MAX_CHAIN_LENGTH.to_string()), "{reason}");
    for point in [MAX_CHAIN_LENGTH - 1, 38, 39] {
        let id = &ids[point];
        let (st, body) = hub
            .post(&format!("/api/v1/backups/{id}/exports"), json!({}))
            .await;
        assert_eq!(st, StatusCode::OK, "{body}");
        let exports: RestoreExports = typed(body);
        let c = hub.nbd(exports.disks[0].export_name.as_str()).await;
        let read = c.read(0, MIB as u32).await.unwrap();
        c.disconnect().await.unwrap();
        assert!(
            read == states[point],
            "point {point} reads back differently"
        );
        hub.call(
            Method::DELETE,
            &format!("/api/v1/backups/{id}/exports"),
            None,
        )
        .await;
    }
    hub.stop().await;
}

/// Issue #11 items 6 and 10: `auto` whose parent's file is gone starts a full and says why;
/// an explicit incremental on it is a 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_parent_file_auto_starts_full_and_incremental_is_refused() {
    let hub = Hub::start().await;
    hub.register("lost", &[MIB]).await;
    let full = hub.start_backup("lost", "full").await;
    let full = hub.complete(&full, "l/1").await;
    std::fs::remove_file(file_of(&hub, &full, 0)).unwrap();

    let (st, refused) = try_start(
        &hub,
        json!({"vm_name": "lost", "backup_type": "incremental"}),
    )
    .await;
    let auto = hub.start_backup("lost", "auto").await;

    assert_eq!(st, StatusCode::CONFLICT, "{refused}");
    assert_eq!(auto.backup_type, BackupType::Full);
    assert!(
        auto.full_reason
            .as_deref()
            .unwrap()
            .contains("lost its image"),
        "{auto:?}"
    );
    hub.stop().await;
}

/// Issue #11 item 11: an incremental whose stated base is not the hub's parent is a 409; the
/// right base is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_with_other_base_is_refused_and_right_base_accepted() {
    let hub = Hub::start().await;
    hub.register("based", &[MIB]).await;
    let first = hub.start_backup("based", "full").await;
    let first = hub.complete(&first, "b/1").await;
    let second = hub.start_backup("based", "auto").await;
    let second = hub.complete(&second, "b/2").await;

    let (stale, body) = try_start(
        &hub,
        json!({"vm_name": "based", "backup_type": "incremental", "base_backup_id": id_of(&first)}),
    )
    .await;
    let (auto_stale, _) = try_start(
        &hub,
        json!({"vm_name": "based", "backup_type": "auto", "base_backup_id": id_of(&first)}),
    )
    .await;
    let (right, started) = try_start(
        &hub,
        json!({"vm_name": "based", "backup_type": "incremental", "base_backup_id": id_of(&second)}),
    )
    .await;

    assert_eq!(
        (stale, auto_stale, right),
        (
            StatusCode::CONFLICT,
            StatusCode::CONFLICT,
            StatusCode::CREATED
        ),
        "{body} {started}"
    );
    let started: Backup = typed(started);
    assert_eq!(started.parent_backup_id, Some(second.backup_id));
    hub.stop().await;
}

/// Issue #11 item 11: a disk new to the VM in an incremental gets a standalone image and no
/// parent change id; the other disk stays an overlay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_new_in_incremental_is_a_standalone_full_of_that_disk() {
    let hub = Hub::start().await;
    hub.register("grow", &[MIB]).await;
    let full = hub.start_backup("grow", "full").await;
    let full = hub.complete(&full, "g/1").await;
    hub.register("grow", &[MIB, MIB]).await;

    let inc = hub.start_backup("grow", "incremental").await;
    let c = hub.nbd(&export_of(&inc, 1)).await;
    c.write(0, &[5u8; 65536], false).await.unwrap();
    c.disconnect().await.unwrap();
    let done = hub.complete(&inc, "g/2").await;

    assert_eq!(inc.backup_type, BackupType::Incremental);
    assert_eq!(
        (
            inc.disks[0]
                .parent_change_id
                .as_ref()
                .map(|c| c.as_str().to_owned()),
            inc.disks[1].parent_change_id.clone()
        ),
        (Some("g/1".to_owned()), None)
    );
    let info = |i: usize| -> Value {
        serde_json::from_str(&qemu_img_ok(&[
            "info",
            "--output=json",
            s(&file_of(&hub, &done, i)),
        ]))
        .unwrap()
    };
    assert_eq!(
        info(0)["backing-filename"],
        format!("{}.qcow2", id_of(&full))
    );
    assert!(info(1).get("backing-filename").is_none(), "{}", info(1));
    hub.stop().await;
}

/// Issue #11 item 5: `complete` and `fail` racing on one backup: exactly one wins, the other
/// gets a 409, the final status is the winner's and nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_racing_fail_one_wins_other_gets_409() {
    let hub = Hub::start().await;
    hub.register("race", &[MIB]).await;
    for round in 0..6u64 {
        let b = hub.start_backup("race", "full").await;
        let c = hub.nbd(&export_of(&b, 0)).await;
        c.write(0, &[round as u8; 65536], false).await.unwrap();
        c.disconnect().await.unwrap();
        let id = id_of(&b);

        let ((done_st, done), (fail_st, failed)) =
            tokio::join!(complete_call(&hub, &b, "r/1"), fail_call(&hub, &id));

        let outcome = status(&hub, &id).await;
        let winner = match (done_st, fail_st) {
            (StatusCode::OK, StatusCode::CONFLICT) => BackupStatus::Completed,
            (StatusCode::CONFLICT, StatusCode::OK) => BackupStatus::Failed,
            other => panic!("round {round}: {other:?} {done} {failed}"),
        };
        assert_eq!(outcome.status, winner, "round {round}");
        let loser = if winner == BackupStatus::Completed {
            &failed
        } else {
            &done
        };
        let loser: ApiError = typed(loser.clone());
        assert_eq!(loser.error, "conflict");
        assert!(
            !repository_files(&hub.repo())
                .iter()
                .any(|f| f.ends_with(".part")),
            "round {round}"
        );
        assert!(
            outcome.disks[0].export_name.is_none(),
            "round {round}: export left open"
        );
    }
    hub.stop().await;
}

/// Issue #11 item 5: a `complete` whose caller goes away (the HTTP request is dropped while
/// the engine waits for a writer to leave) still runs to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_dropped_by_its_caller_still_completes() {
    let hub = Hub::start().await;
    hub.register("drop", &[MIB]).await;
    let b = hub.start_backup("drop", "full").await;
    let c = hub.nbd(&export_of(&b, 0)).await;
    c.write(0, &[3u8; 65536], false).await.unwrap();
    let engine = std::sync::Arc::clone(&hub.running.as_ref().unwrap().engine);
    let id = b.backup_id.clone();
    let req = completion(&b, "x/1");

    // The caller gives up at once: the future is dropped after its first poll, while the
    // engine waits for the still open connection to leave.
    let gave_up = tokio::time::timeout(Duration::ZERO, engine.complete_backup(&id, &req)).await;
    c.disconnect().await.unwrap();
    let done = wait_for(&hub, &id_of(&b), |b| b.status != BackupStatus::Running).await;

    assert!(gave_up.is_err(), "completion ended within its first poll");
    assert_eq!(done.status, BackupStatus::Completed, "{done:?}");
    qemu_img_ok(&["check", s(&file_of(&hub, &b, 0))]);
    hub.stop().await;
}

/// Issue #11 item 5: a `fail` while the backup is still starting wins: the start is refused
/// (or, if it had just finished, the backup is failed normally); either way the backup ends
/// failed, no export or partial file stays, and the VM backs up again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_during_start_leaves_backup_failed_and_nothing_open() {
    let hub = std::sync::Arc::new(Hub::start().await);
    let sizes = vec![MIB; 48];
    hub.register("wide", &sizes).await;
    let starter = {
        let hub = std::sync::Arc::clone(&hub);
        tokio::spawn(async move {
            try_start(&hub, json!({"vm_name": "wide", "backup_type": "full"})).await
        })
    };
    let deadline = Instant::now() + DEADLINE;
    let id = loop {
        let list: Vec<Backup> = hub.get_as("/api/v1/backups?vm_name=wide").await;
        if let Some(b) = list.first() {
            break id_of(b);
        }
        assert!(Instant::now() < deadline, "the backup never appeared");
        tokio::task::yield_now().await;
    };

    let (fail_st, failed) = fail_call(&hub, &id).await;
    let (start_st, started) = starter.await.unwrap();

    assert_eq!(fail_st, StatusCode::OK, "{failed}");
    assert!(
        matches!(start_st, StatusCode::CONFLICT | StatusCode::CREATED),
        "{start_st} {started}"
    );
    let end = wait_for(&hub, &id, |b| b.status == BackupStatus::Failed).await;
    assert!(end.disks.iter().all(|d| d.export_name.is_none()));
    assert!(
        !repository_files(&hub.repo())
            .iter()
            .any(|f| f.ends_with(".part")),
        "{:?}",
        repository_files(&hub.repo())
    );
    let again = hub.start_backup("wide", "full").await;
    assert_eq!(again.status, BackupStatus::Running);
    std::sync::Arc::try_unwrap(hub).ok().unwrap().stop().await;
}

/// Issue #11 item 4: a client that wrote and then vanished (every connection closed) has its
/// backup failed after the disconnect grace, long before the idle timeout, and the VM can be
/// backed up again at once.
#[tokio::test(start_paused = true)]
async fn vanished_client_backup_is_failed_after_disconnect_grace() {
    let data = tempfile::tempdir().unwrap();
    let hub = Hub::start_with(data, Duration::from_secs(600), Duration::from_millis(300)).await;
    hub.register("gone", &[MIB]).await;
    let b = hub.start_backup("gone", "full").await;
    let c = hub.nbd(&export_of(&b, 0)).await;
    c.write(0, &[1u8; 4096], false).await.unwrap();
    c.disconnect().await.unwrap();

    let failed = wait_for(&hub, &id_of(&b), |b| b.status == BackupStatus::Failed).await;

    assert!(
        failed.failure_reason.as_deref().unwrap().contains("closed"),
        "{failed:?}"
    );
    let again = hub.start_backup("gone", "full").await;
    assert_eq!(again.status, BackupStatus::Running);
    hub.stop().await;
}

/// Issue #11 item 4: an open but silent connection does not keep a backup alive past the
/// idle timeout.
#[tokio::test(start_paused = true)]
async fn silent_open_connection_backup_is_failed_after_idle_timeout() {
    let data = tempfile::tempdir().unwrap();
    let hub = Hub::start_with(data, Duration::from_millis(500), Duration::from_secs(600)).await;
    hub.register("mute", &[MIB]).await;
    let b = hub.start_backup("mute", "full").await;
    let c = hub.nbd(&export_of(&b, 0)).await;
    c.write(0, &[1u8; 4096], false).await.unwrap();

    let failed = wait_for(&hub, &id_of(&b), |b| b.status == BackupStatus::Failed).await;

    assert!(
        failed.failure_reason.as_deref().unwrap().contains("silent"),
        "{failed:?}"
    );
    assert!(c.write(0, &[2u8; 512], false).await.is_err());
    hub.stop().await;
}

/// Issue #11 item 10: a restart removes orphaned `.part` files, reports files the catalog
/// does not know (and keeps them), and marks a completed backup whose file is gone; `auto`
/// then starts a full for that VM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_reconciles_repository_with_catalog() {
    let hub = Hub::start().await;
    hub.register("kept", &[MIB]).await;
    hub.register("lost", &[MIB]).await;
    let kept = hub.start_backup("kept", "full").await;
    let kept = hub.complete(&kept, "k/1").await;
    let lost = hub.start_backup("lost", "full").await;
    let lost = hub.complete(&lost, "l/1").await;
    let repo = hub.repo();
    let data = hub.stop().await;
    let part = repo.join("kept/disk-2000/.backup-kept-20260101T000000-abcdef.qcow2.part");
    std::fs::write(&part, b"half").unwrap();
    std::fs::write(repo.join("stray.bin"), b"who am I").unwrap();
    std::fs::remove_file(repo.join(lost.disks[0].file.as_ref().unwrap())).unwrap();

    let hub = Hub::start_in(data, Duration::from_secs(600)).await;
    let (st, body) = hub.get("/api/v1/repository").await;
    let info: RepositoryInfo = typed(body);
    let lost_now = status(&hub, &id_of(&lost)).await;
    let auto = hub.start_backup("lost", "auto").await;

    assert_eq!(st, StatusCode::OK);
    assert!(!part.exists(), "orphaned .part file kept");
    assert_eq!(info.unknown_files, ["stray.bin"]);
    assert!(repo.join("stray.bin").exists(), "unknown file deleted");
    assert!(
        info.capacity_bytes >= info.free_bytes && info.used_bytes > 0,
        "{info:?}"
    );
    let kept_usage = info
        .vms
        .iter()
        .find(|v| v.vm_name.as_str() == "kept")
        .unwrap();
    assert_eq!(kept_usage.backups, 1);
    assert!(kept_usage.used_bytes > 0);
    assert!(lost_now.files_missing, "{lost_now:?}");
    assert!(!status(&hub, &id_of(&kept)).await.files_missing);
    assert_eq!(auto.backup_type, BackupType::Full);
    assert!(auto.full_reason.is_some());
    hub.stop().await;
}

/// Issue #11 item 10: a hub that dies right after `delete_backup` committed the catalog (its
/// files still on disk) leaves no orphan: the next start finishes the deletion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_interrupted_after_catalog_commit_leaves_no_orphan() {
    let hub = Hub::start().await;
    hub.register("del", &[MIB]).await;
    let full = hub.start_backup("del", "full").await;
    let full = hub.complete(&full, "d/1").await;
    let file = file_of(&hub, &full, 0);
    let data = hub.stop().await;
    // The catalog half of `delete_backup`, as a crash would leave it.
    {
        let catalog = Catalog::open_in(data.path()).unwrap();
        catalog.delete_backup(&full.backup_id).unwrap();
    }
    assert!(file.exists());

    let hub = Hub::start_in(data, Duration::from_secs(600)).await;
    let (st, body) = hub.get("/api/v1/repository").await;
    let info: RepositoryInfo = typed(body);

    assert_eq!(st, StatusCode::OK);
    assert!(!file.exists(), "deleted backup's file left behind");
    assert!(info.unknown_files.is_empty(), "{info:?}");
    hub.stop().await;
}

/// Issue #11 item 10: deleting the head full of a second chain makes the first chain's last
/// point the head again, and `auto` continues it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_head_full_brings_previous_chain_back() {
    let hub = Hub::start().await;
    hub.register("twice", &[MIB]).await;
    let first = hub.start_backup("twice", "full").await;
    let first = hub.complete(&first, "t/1").await;
    let inc = hub.start_backup("twice", "auto").await;
    let inc = hub.complete(&inc, "t/2").await;
    let second = hub.start_backup("twice", "full").await;
    let second = hub.complete(&second, "t/3").await;

    let (st, _) = hub
        .call(
            Method::DELETE,
            &format!("/api/v1/backups/{}", id_of(&second)),
            None,
        )
        .await;
    let (_, chain) = hub.get("/api/v1/backups/chain/twice").await;
    let chain: Chain = typed(chain);
    let next = hub.start_backup("twice", "auto").await;

    assert_eq!(st, StatusCode::OK);
    let ids: Vec<String> = chain
        .backups
        .iter()
        .map(|b| b.backup_id.to_string())
        .collect();
    assert_eq!(ids, [id_of(&first), id_of(&inc)]);
    assert_eq!(
        next.parent_backup_id.map(|p| p.to_string()),
        Some(id_of(&inc))
    );
    hub.stop().await;
}

/// Issue #11: stopping the hub ends in bounded time although an NBD client holds a
/// connection open and never leaves; its backup ends failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_with_connected_client_ends_in_bounded_time() {
    let hub = Hub::start().await;
    hub.register("stuck", &[MIB]).await;
    let b = hub.start_backup("stuck", "full").await;
    let c = hub.nbd(&export_of(&b, 0)).await;
    c.write(0, &[1u8; 4096], false).await.unwrap();
    let started = Instant::now();

    let data = tokio::time::timeout(Duration::from_secs(30), hub.stop())
        .await
        .expect("the hub did not stop within 30 s");

    assert!(started.elapsed() < Duration::from_secs(30));
    let catalog = Catalog::open_in(data.path()).unwrap();
    let record = catalog.backup(&b.backup_id).unwrap().unwrap();
    assert_eq!(record.status, BackupStatus::Failed);
    drop(c);
}

/// `sendense_hub::run` on sockets the caller bound (as a service manager hands them over):
/// it serves the API on them, and returns once `shutdown` resolves, closing them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_on_listeners_bound_by_the_caller_until_shutdown() {
    let data = tempfile::tempdir().unwrap();
    let listeners = sendense_hub::Listeners {
        api: std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        nbd: std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
    };
    let api_port = listeners.api.local_addr().unwrap().port();
    let config = sendense_hub::HubConfig {
        data_dir: data.path().to_path_buf(),
        // Not bound by `run`: the listeners above are used as they are.
        api_listen: "127.0.0.1:9".parse().unwrap(),
        nbd_listen: "127.0.0.1:9".parse().unwrap(),
        public_host: Some("localhost".into()),
        idle_timeout: Duration::from_secs(600),
        disconnect_grace: Duration::from_secs(600),
        nbd_client_certs: sendense_hub::daemon::ClientCerts::Required,
        webhook: None,
        max_running_jobs: None,
        repository: sendense_hub::RepositoryConfig::default(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let hub = tokio::spawn(sendense_hub::run(listeners, config, async {
        let _ = stopped.await;
    }));

    // The first start writes the CA and the token, then serves on the given port.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (http, token) = loop {
        let ca = data.path().join("tls/ca-cert.pem");
        let token = data.path().join("api.token");
        if ca.exists() && token.exists() {
            let tls = sendense_nbd::tls::client_config(&ca, None).unwrap();
            let http = reqwest::Client::builder()
                .use_preconfigured_tls((*tls).clone())
                .build()
                .unwrap();
            let token = std::fs::read_to_string(token).unwrap().trim().to_owned();
            break (http, token);
        }
        assert!(Instant::now() < deadline, "the hub wrote no CA and token");
        tokio::task::yield_now().await;
    };
    let url = format!("https://localhost:{api_port}/api/v1/vms");
    let status = loop {
        match http.get(&url).bearer_auth(&token).send().await {
            Ok(resp) => break resp.status(),
            Err(e) => assert!(Instant::now() < deadline, "API not up: {e}"),
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(status, StatusCode::OK);

    stop.send(()).unwrap();
    let ended = tokio::time::timeout(sendense_hub::daemon::SHUTDOWN_LIMIT, hub)
        .await
        .expect("run returns within the shutdown limit")
        .unwrap();
    assert!(ended.is_ok(), "{ended:?}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", api_port)).is_err(),
        "the API socket is closed once run returns"
    );
}
