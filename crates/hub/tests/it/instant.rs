//! Instant recovery (issue #15): writable exports over scratch overlays in `DATA/instant/`,
//! the point never changing (its files byte-identical, its verification still `ok`), listing,
//! discarding, status codes, a hub restart that brings the same exports back, and the points an
//! instant reads held against deletion, merges and prunes.

// Sizes here are small constants: the casts cannot truncate.
#![allow(clippy::cast_possible_truncation)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use sendense_digest::{BLOCK_SIZE, LayerDigests};
use sendense_hub::HubError;
use sendense_types::{
    ApiError, Backup, DiskKey, InstantList, InstantRecovery, InstantState, JobStatus, PruneAnswer,
    VerificationState, digest_path,
};
use serde_json::{Value, json};

use crate::hub_api::{Hub, export_of, file_of, s, typed};
use crate::support::{fill_random, qemu_img_ok};

const SIZE: u64 = 16 * BLOCK_SIZE;

/// A completed point of `vm` of `kind` whose bytes are `blocks` (first block, count, seed),
/// with the digests a client would have recorded stored beside its image.
async fn point(hub: &Hub, vm: &str, kind: &str, blocks: &[(u64, u64, u64)], seq: u64) -> Backup {
    let b = hub.start_backup(vm, kind).await;
    let c = hub.nbd(&export_of(&b, 0)).await;
    let mut layer = LayerDigests::new(SIZE);
    for &(first, count, seed) in blocks {
        let mut bytes = vec![0u8; (count * BLOCK_SIZE) as usize];
        fill_random(&mut bytes, seed);
        c.write(first * BLOCK_SIZE, &bytes, false).await.unwrap();
        layer.record(first * BLOCK_SIZE, &bytes).unwrap();
    }
    c.flush().await.unwrap();
    c.disconnect().await.unwrap();
    let done = hub.complete(&b, &format!("52 00/{seq}")).await;
    let rel = digest_path(&done.vm_name, DiskKey(2000), &done.backup_id);
    std::fs::write(hub.repo().join(rel), layer.encode()).unwrap();
    done
}

/// A full and an incremental of `vm`; answers both.
async fn chain(hub: &Hub, vm: &str) -> (Backup, Backup) {
    hub.register(vm, &[SIZE]).await;
    let full = point(hub, vm, "full", &[(0, 16, 1)], 1).await;
    let inc = point(hub, vm, "incremental", &[(3, 2, 2)], 2).await;
    (full, inc)
}

async fn start(hub: &Hub, b: &Backup) -> (StatusCode, Value) {
    hub.post(
        &format!("/api/v1/backups/{}/instant", b.backup_id),
        json!({}),
    )
    .await
}

async fn started(hub: &Hub, b: &Backup) -> InstantRecovery {
    let (st, body) = start(hub, b).await;
    assert_eq!(st, StatusCode::CREATED, "{body}");
    typed(body)
}

async fn discard(hub: &Hub, id: &str) -> (StatusCode, Value) {
    hub.call(Method::DELETE, &format!("/api/v1/instant/{id}"), None)
        .await
}

/// The bytes of every image of `points`' disk 2000, in order.
fn contents(hub: &Hub, points: &[&Backup]) -> Vec<Vec<u8>> {
    points
        .iter()
        .map(|b| std::fs::read(file_of(hub, b, 0)).unwrap())
        .collect()
}

fn overlay_path(hub: &Hub, instant: &InstantRecovery) -> PathBuf {
    hub.data.path().join(&instant.disks[0].overlay)
}

fn verify(hub: &Hub, b: &Backup) -> Result<sendense_types::Verification, HubError> {
    let engine = &hub.running.as_ref().unwrap().engine;
    engine.verifier().verify(&b.backup_id, &|_, _| {})
}

/// What `qemu-img info --backing-chain` lists for `image` (read with `-U`: the hub holds it).
fn backing_chain(image: &Path) -> Vec<PathBuf> {
    let out = qemu_img_ok(&["info", "-U", "--backing-chain", "--output=json", s(image)]);
    let infos: Vec<Value> = serde_json::from_str(&out).unwrap();
    infos
        .iter()
        .map(|i| std::fs::canonicalize(i["filename"].as_str().unwrap()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instant_writes_land_in_the_overlay_only_and_the_point_still_verifies() {
    let hub = Hub::start().await;
    let (full, inc) = chain(&hub, "web01").await;
    let before = contents(&hub, &[&full, &inc]);
    let restore = hub
        .post(
            &format!("/api/v1/backups/{}/exports", inc.backup_id),
            json!({}),
        )
        .await;
    let point_bytes = {
        let exports: sendense_types::RestoreExports = typed(restore.1);
        let c = hub.nbd(exports.disks[0].export_name.as_str()).await;
        let bytes = c.read(0, SIZE as u32).await.unwrap();
        c.disconnect().await.unwrap();
        bytes
    };
    hub.call(
        Method::DELETE,
        &format!("/api/v1/backups/{}/exports", inc.backup_id),
        None,
    )
    .await;

    let (st, body) = start(&hub, &inc).await;

    assert_eq!(st, StatusCode::CREATED, "{body}");
    for field in ["instant_id", "backup_id", "vm_name", "created_at", "disks"] {
        assert!(!body[field].is_null(), "{field} missing: {body}");
    }
    for field in ["disk_key", "export_name", "nbd_uri"] {
        assert!(
            !body["disks"][0][field].is_null(),
            "{field} missing: {body}"
        );
    }
    let instant: InstantRecovery = typed(body);
    assert_eq!(instant.backup_id, inc.backup_id);
    assert_eq!(instant.state, InstantState::Open);
    assert!(
        instant.disks[0]
            .nbd_uri
            .ends_with(&format!("/{}", instant.disks[0].export_name)),
        "{instant:?}"
    );
    let overlay = overlay_path(&hub, &instant);
    assert_eq!(
        overlay,
        hub.data
            .path()
            .join("instant")
            .join(instant.instant_id.as_str())
            .join("disk-2000.qcow2")
    );
    let c = hub.nbd(instant.disks[0].export_name.as_str()).await;
    assert!(c.read(0, SIZE as u32).await.unwrap() == point_bytes);
    let mut pattern = vec![0u8; 3 * 4096];
    fill_random(&mut pattern, 77);
    let at = 5 * BLOCK_SIZE - 4096;
    c.write(at, &pattern, false).await.unwrap();
    c.flush().await.unwrap();
    let read = c.read(at, pattern.len() as u32).await.unwrap();
    c.disconnect().await.unwrap();
    assert!(read == pattern);
    assert_eq!(
        backing_chain(&overlay),
        [
            std::fs::canonicalize(&overlay).unwrap(),
            std::fs::canonicalize(file_of(&hub, &inc, 0)).unwrap(),
            std::fs::canonicalize(file_of(&hub, &full, 0)).unwrap(),
        ]
    );
    let verification = verify(&hub, &inc).unwrap();
    assert_eq!(
        verification.state,
        VerificationState::Ok,
        "{verification:?}"
    );
    assert!(
        contents(&hub, &[&full, &inc]) == before,
        "the point changed"
    );
    let list: InstantList = hub.get_as("/api/v1/instant").await;
    assert_eq!(list.instants, std::slice::from_ref(&instant));

    let (st, body) = discard(&hub, instant.instant_id.as_str()).await;

    assert_eq!(st, StatusCode::OK, "{body}");
    assert!(!overlay.parent().unwrap().exists());
    let list: InstantList = hub.get_as("/api/v1/instant").await;
    assert!(list.instants.is_empty(), "{list:?}");
    assert_eq!(
        discard(&hub, instant.instant_id.as_str()).await.0,
        StatusCode::NOT_FOUND
    );
    assert!(
        contents(&hub, &[&full, &inc]) == before,
        "the point changed"
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instant_unknown_backup_404_running_409_unknown_instant_404_bad_id_400() {
    let hub = Hub::start().await;
    hub.register("vm2", &[SIZE]).await;
    let running = hub.start_backup("vm2", "full").await;
    let unknown = json!({"backup_id": "backup-vm2-20200101T000000-abcdef"});
    let unknown: Backup = {
        let mut b = running.clone();
        b.backup_id = typed(unknown["backup_id"].clone());
        b
    };

    let (unknown_st, unknown_body) = start(&hub, &unknown).await;
    let (running_st, running_body) = start(&hub, &running).await;
    let (get_st, _) = hub.get("/api/v1/instant/instant-0123456789abcdef").await;
    let (del_st, _) = discard(&hub, "instant-0123456789abcdef").await;
    let (bad_st, bad_body) = hub.get("/api/v1/instant/..%2Fetc").await;

    assert_eq!(unknown_st, StatusCode::NOT_FOUND, "{unknown_body}");
    assert_eq!(running_st, StatusCode::CONFLICT, "{running_body}");
    let refused: ApiError = typed(running_body);
    assert!(refused.message.contains("completed"), "{refused:?}");
    assert_eq!(get_st, StatusCode::NOT_FOUND);
    assert_eq!(del_st, StatusCode::NOT_FOUND);
    assert_eq!(bad_st, StatusCode::BAD_REQUEST, "{bad_body}");
    assert!(
        !hub.data.path().join("instant").exists()
            || std::fs::read_dir(hub.data.path().join("instant"))
                .unwrap()
                .next()
                .is_none()
    );
    hub.stop().await;
}

/// Polls `GET /api/v1/jobs/{id}` until the job ended (20 s at most).
async fn ended_job(hub: &Hub, id: &str) -> sendense_types::Job {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut poll = tokio::time::interval(Duration::from_millis(50));
    loop {
        poll.tick().await;
        let job: sendense_types::Job = hub.get_as(&format!("/api/v1/jobs/{id}")).await;
        if !job.status.is_active() {
            return job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id} still {}",
            job.status
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instant_holds_its_point_and_the_points_below_against_delete_merge_and_prune() {
    let hub = Hub::start().await;
    let (full, inc) = chain(&hub, "held").await;
    let instant = started(&hub, &inc).await;
    let name = instant.instant_id.to_string();

    let (del_st, del_body) = hub
        .call(
            Method::DELETE,
            &format!("/api/v1/backups/{}", inc.backup_id),
            None,
        )
        .await;
    let maintenance = std::sync::Arc::clone(&hub.running.as_ref().unwrap().maintenance);
    let vm = full.vm_name.clone();
    let ids = vec![full.backup_id.clone()];
    let merge =
        tokio::task::spawn_blocking(move || maintenance.remove_points(&vm, &ids, &|_, _| {}))
            .await
            .unwrap();
    let (prune_st, prune_body) = hub
        .post(
            "/api/v1/vms/held/prune",
            json!({"retention": {"keep_last": 1}}),
        )
        .await;

    assert_eq!(del_st, StatusCode::CONFLICT, "{del_body}");
    let refused: ApiError = typed(del_body);
    assert!(refused.message.contains(&name), "{refused:?}");
    assert!(
        matches!(&merge, Err(HubError::InstantHeld { backup_ids, instant_ids })
            if backup_ids.as_slice() == std::slice::from_ref(&full.backup_id)
                && instant_ids.as_slice() == std::slice::from_ref(&instant.instant_id)),
        "{merge:?}"
    );
    assert_eq!(prune_st, StatusCode::ACCEPTED, "{prune_body}");
    let answer: PruneAnswer = typed(prune_body);
    let job = ended_job(&hub, answer.job_id.unwrap().as_str()).await;
    assert_eq!(job.status, JobStatus::Completed, "{job:?}");
    let result = job.result.unwrap();
    assert!(
        result.contains("skipped, read by instant recovery") && result.contains(&name),
        "{result}"
    );
    assert_eq!(
        hub.get(&format!("/api/v1/backups/{}", full.backup_id))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(discard(&hub, &name).await.0, StatusCode::OK);
    let (del_st, del_body) = hub
        .call(
            Method::DELETE,
            &format!("/api/v1/backups/{}", inc.backup_id),
            None,
        )
        .await;
    assert_eq!(del_st, StatusCode::OK, "{del_body}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instant_survives_a_hub_restart_with_the_same_export_and_the_guest_writes() {
    let hub = Hub::start().await;
    let (full, inc) = chain(&hub, "phoenix").await;
    let before = contents(&hub, &[&full, &inc]);
    let instant = started(&hub, &inc).await;
    let export = instant.disks[0].export_name.to_string();
    let c = hub.nbd(&export).await;
    let mut pattern = vec![0u8; 8192];
    fill_random(&mut pattern, 99);
    c.write(7 * BLOCK_SIZE + 512, &pattern, false)
        .await
        .unwrap();
    c.flush().await.unwrap();
    c.disconnect().await.unwrap();
    let stray = hub.data.path().join("instant/instant-00000000000000ff");
    std::fs::create_dir_all(&stray).unwrap();

    let data = hub.stop().await;
    let hub = Hub::start_in(data, Duration::from_secs(600)).await;

    let list: InstantList = hub.get_as("/api/v1/instant").await;
    assert_eq!(list.instants.len(), 1, "{list:?}");
    let again = &list.instants[0];
    assert_eq!(
        (
            again.instant_id.clone(),
            again.state,
            again.disks[0].export_name.to_string()
        ),
        (
            instant.instant_id.clone(),
            InstantState::Open,
            export.clone()
        )
    );
    assert!(!stray.exists(), "a folder no record names stays");
    let c = hub.nbd(&export).await;
    let read = c.read(7 * BLOCK_SIZE + 512, 8192).await.unwrap();
    c.disconnect().await.unwrap();
    assert!(read == pattern);
    assert!(
        contents(&hub, &[&full, &inc]) == before,
        "the point changed"
    );
    assert_eq!(verify(&hub, &inc).unwrap().state, VerificationState::Ok);
    let overlay = overlay_path(&hub, again);
    assert_eq!(
        discard(&hub, instant.instant_id.as_str()).await.0,
        StatusCode::OK
    );
    assert!(!overlay.exists());
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instant_whose_overlay_is_lost_comes_back_unavailable_still_holds_and_discards() {
    let hub = Hub::start().await;
    let (_full, inc) = chain(&hub, "lost").await;
    let instant = started(&hub, &inc).await;
    let overlay = overlay_path(&hub, &instant);
    let data = hub.stop().await;
    std::fs::remove_file(&overlay).unwrap();

    let hub = Hub::start_in(data, Duration::from_secs(600)).await;

    let one: InstantRecovery = hub
        .get_as(&format!("/api/v1/instant/{}", instant.instant_id))
        .await;
    assert_eq!(one.state, InstantState::Unavailable, "{one:?}");
    assert!(one.error.is_some(), "{one:?}");
    let (del_st, del_body) = hub
        .call(
            Method::DELETE,
            &format!("/api/v1/backups/{}", inc.backup_id),
            None,
        )
        .await;
    assert_eq!(del_st, StatusCode::CONFLICT, "{del_body}");
    assert_eq!(
        discard(&hub, instant.instant_id.as_str()).await.0,
        StatusCode::OK
    );
    assert!(!overlay.parent().unwrap().exists());
    let (del_st, del_body) = hub
        .call(
            Method::DELETE,
            &format!("/api/v1/backups/{}", inc.backup_id),
            None,
        )
        .await;
    assert_eq!(del_st, StatusCode::OK, "{del_body}");
    hub.stop().await;
}
