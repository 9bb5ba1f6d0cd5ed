//! `PUT /api/v1/backups/{id}/disks/{key}/digests`: a running backup's digests are kept beside
//! the image under a temporary name, renamed into place on complete, removed on fail and with
//! the backup; malformed or mis-sized files are refused with the decoder's words.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::StatusCode;
use sendense_digest::{BLOCK_SIZE, LayerDigests};
use sendense_types::{Backup, BackupStatus, RepositoryInfo};
use serde_json::{Value, json};

use crate::hub_api::{Hub, MIB, export_of, file_of, typed};

/// `PUT` the digests of disk `key` of backup `id`; the status and the JSON answer (`Null`
/// when empty).
async fn put_digests(hub: &Hub, id: &str, key: u32, body: Vec<u8>) -> (StatusCode, Value) {
    let resp = hub
        .http
        .put(format!(
            "{}/api/v1/backups/{id}/disks/{key}/digests",
            hub.base
        ))
        .bearer_auth(&hub.token)
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    };
    (status, value)
}

/// The digests of `size`-byte disk whose first block holds `data` (zero-padded).
fn layer(size: u64, data: &[u8]) -> LayerDigests {
    let mut block = vec![0u8; usize::try_from(BLOCK_SIZE).unwrap()];
    block[..data.len()].copy_from_slice(data);
    let mut layer = LayerDigests::new(size);
    layer.record(0, &block).unwrap();
    layer
}

/// `<backup_id>.digests` beside the image of disk `i`, and its temporary name.
fn digest_files(hub: &Hub, backup: &Backup, i: usize) -> (PathBuf, PathBuf) {
    let image = file_of(hub, backup, i);
    let target = image.with_file_name(format!("{}.digests", backup.backup_id));
    let temp = image.with_file_name(format!(".{}.digests.part", backup.backup_id));
    (target, temp)
}

fn names_in(folder: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digests_upload_is_renamed_into_place_on_complete_and_deleted_with_the_backup() {
    let hub = Hub::start().await;
    hub.register("dg1", &[4 * MIB]).await;
    let full = hub.start_backup("dg1", "full").await;
    let c = hub.nbd(&export_of(&full, 0)).await;
    c.write(0, &[7u8; 65536], false).await.unwrap();
    c.disconnect().await.unwrap();
    let (target, temp) = digest_files(&hub, &full, 0);
    let first = layer(4 * MIB, &[1u8; 10]).encode();
    let second = layer(4 * MIB, &[7u8; 65536]).encode();
    let id = full.backup_id.to_string();

    let (st1, _) = put_digests(&hub, &id, 2000, first).await;
    let (st2, body2) = put_digests(&hub, &id, 2000, second.clone()).await;
    let kept_before_complete = (temp.exists(), target.exists());
    let (st_repo_running, repo_running) = hub.get("/api/v1/repository").await;
    let full = hub.complete(&full, "u/1").await;
    let (_, repo_done) = hub.get("/api/v1/repository").await;

    assert_eq!(
        (st1, st2),
        (StatusCode::NO_CONTENT, StatusCode::NO_CONTENT),
        "{body2}"
    );
    assert_eq!(kept_before_complete, (true, false));
    assert_eq!(st_repo_running, StatusCode::OK);
    let running: RepositoryInfo = typed(repo_running);
    assert!(running.unknown_files.is_empty(), "{running:?}");
    assert_eq!(
        std::fs::read(&target).unwrap(),
        second,
        "the last upload wins"
    );
    assert!(!temp.exists());
    assert_eq!(
        LayerDigests::decode(&std::fs::read(&target).unwrap()).unwrap(),
        layer(4 * MIB, &[7u8; 65536])
    );
    let done: RepositoryInfo = typed(repo_done);
    assert!(done.unknown_files.is_empty(), "{done:?}");
    assert_eq!(
        std::fs::metadata(&target).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let (st, body) = hub
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/backups/{}", full.backup_id),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert!(!target.exists(), "digests left behind by delete");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digests_refused_when_malformed_mis_sized_too_large_unknown_or_not_running() {
    let hub = Hub::start().await;
    hub.register("dg2", &[4 * MIB]).await;
    let b = hub.start_backup("dg2", "full").await;
    let id = b.backup_id.to_string();
    let mut damaged = layer(4 * MIB, &[3u8; 100]).encode();
    damaged[40] ^= 1;

    let (st_bad, bad) = put_digests(&hub, &id, 2000, b"not digests at all, no".to_vec()).await;
    let (st_damaged, damaged) = put_digests(&hub, &id, 2000, damaged).await;
    let (st_size, size) = put_digests(&hub, &id, 2000, layer(8 * MIB, &[1]).encode()).await;
    let (st_large, large) = put_digests(&hub, &id, 2000, vec![0u8; 1 << 20]).await;
    let (st_disk, disk) = put_digests(&hub, &id, 2001, layer(4 * MIB, &[1]).encode()).await;
    let unknown = "backup-dg2-20260101T000000-abcdef";
    let (st_unknown, _) = put_digests(&hub, unknown, 2000, layer(4 * MIB, &[1]).encode()).await;
    let (_, temp) = digest_files(&hub, &b, 0);
    let left = temp.exists();
    let done = hub.complete(&b, "u/1").await;
    let (st_done, done_body) = put_digests(&hub, &id, 2000, layer(4 * MIB, &[1]).encode()).await;

    let message = |v: &Value| v["message"].as_str().unwrap().to_owned();
    assert_eq!(st_bad, StatusCode::BAD_REQUEST);
    assert_eq!(bad["error"], "bad_request");
    assert!(message(&bad).contains("digest file is malformed"), "{bad}");
    assert_eq!(st_damaged, StatusCode::BAD_REQUEST);
    assert!(message(&damaged).contains("checksum mismatch"), "{damaged}");
    assert_eq!(st_size, StatusCode::BAD_REQUEST);
    assert!(
        message(&size).contains(&format!("{}-byte disk", 8 * MIB))
            && message(&size).contains(&format!("{} bytes", 4 * MIB)),
        "{size}"
    );
    assert_eq!(st_large, StatusCode::BAD_REQUEST);
    let limit = sendense_digest::max_encoded_len(4 * MIB);
    assert!(message(&large).contains(&limit.to_string()), "{large}");
    assert_eq!(st_disk, StatusCode::BAD_REQUEST, "{disk}");
    assert_eq!(st_unknown, StatusCode::NOT_FOUND);
    assert!(!left, "a refused upload left a file");
    assert_eq!(done.status, BackupStatus::Completed);
    assert_eq!(st_done, StatusCode::CONFLICT, "{done_body}");
    let (target, _) = digest_files(&hub, &done, 0);
    assert!(!target.exists(), "no digests were stored");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digests_of_a_failed_backup_are_removed() {
    let hub = Hub::start().await;
    hub.register("dg3", &[2 * MIB]).await;
    let b = hub.start_backup("dg3", "full").await;
    let id = b.backup_id.to_string();
    let (target, temp) = digest_files(&hub, &b, 0);
    let folder = temp.parent().unwrap().to_path_buf();

    let (st, _) = put_digests(&hub, &id, 2000, layer(2 * MIB, &[5u8; 7]).encode()).await;
    let stored = temp.exists();
    let (st_fail, body) = hub
        .post(
            &format!("/api/v1/backups/{id}/fail"),
            json!({"reason": "source vanished"}),
        )
        .await;

    assert_eq!(st, StatusCode::NO_CONTENT);
    assert!(stored);
    assert_eq!(st_fail, StatusCode::OK, "{body}");
    assert!(!temp.exists() && !target.exists());
    assert!(names_in(&folder).is_empty(), "{:?}", names_in(&folder));
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_removes_leftover_digests_part_files_and_knows_stored_digests() {
    let hub = Hub::start().await;
    hub.register("dg4", &[MIB]).await;
    let b = hub.start_backup("dg4", "full").await;
    let (st, _) = put_digests(&hub, b.backup_id.as_str(), 2000, layer(MIB, &[9]).encode()).await;
    let b = hub.complete(&b, "u/1").await;
    let (target, _) = digest_files(&hub, &b, 0);
    let leftover = target.with_file_name(".backup-dg4-20260101T000000-abcdef.digests.part");
    let data = hub.stop().await;
    std::fs::write(&leftover, b"half").unwrap();

    let hub = Hub::start_in(data, Duration::from_secs(600)).await;
    let info: RepositoryInfo = hub.get_as("/api/v1/repository").await;

    assert_eq!(st, StatusCode::NO_CONTENT);
    assert!(target.exists());
    assert!(!leftover.exists(), "orphaned .digests.part kept");
    assert!(info.unknown_files.is_empty(), "{info:?}");
    hub.stop().await;
}
