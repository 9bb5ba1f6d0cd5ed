//! Verification (issue #14): points written through the hub's NBD exports, with the digests a
//! client records of the bytes it read at its source stored beside each image, read back and
//! compared; a byte flipped inside a data cluster of a middle layer fails exactly the points
//! that read it, and the next `auto` backup of the VM is a full.

// Sizes here are small constants: the casts cannot truncate.
#![allow(clippy::cast_possible_truncation)]

use std::os::unix::fs::FileExt;
use std::path::Path;

use reqwest::StatusCode;
use sendense_digest::{BLOCK_SIZE, LayerDigests};
use sendense_hub::HubError;
use sendense_nbd::ZeroFlags;
use sendense_types::{
    ApiError, Backup, BackupType, BadRange, DiskKey, VerificationState, digest_path,
};
use serde_json::json;

use crate::hub_api::{Hub, export_of, typed};
use crate::support::{fill_random, qemu_img_ok};

pub(crate) const BLOCKS: u64 = 32;
pub(crate) const SIZE: u64 = BLOCKS * BLOCK_SIZE;
const BS: usize = BLOCK_SIZE as usize;

/// One point's writes: block ranges with data (seeded) or zeros.
pub(crate) enum Write {
    Data { first: u64, blocks: u64, seed: u64 },
    Zero { first: u64, blocks: u64 },
}

/// Takes one backup of `vm` of `kind`, sends `writes` through NBD, completes it, and stores the
/// digests a client would have recorded beside its image.
pub(crate) async fn point(hub: &Hub, vm: &str, kind: &str, writes: &[Write], seq: u64) -> Backup {
    let b = hub.start_backup(vm, kind).await;
    let c = hub.nbd(&export_of(&b, 0)).await;
    let mut layer = LayerDigests::new(SIZE);
    for w in writes {
        match *w {
            Write::Data {
                first,
                blocks,
                seed,
            } => {
                let mut bytes = vec![0u8; (blocks * BLOCK_SIZE) as usize];
                fill_random(&mut bytes, seed);
                c.write(first * BLOCK_SIZE, &bytes, false).await.unwrap();
                layer.record(first * BLOCK_SIZE, &bytes).unwrap();
            }
            Write::Zero { first, blocks } => {
                c.write_zeroes(
                    first * BLOCK_SIZE,
                    (blocks * BLOCK_SIZE) as u32,
                    ZeroFlags::default(),
                )
                .await
                .unwrap();
                layer
                    .record_zero(first * BLOCK_SIZE, blocks * BLOCK_SIZE)
                    .unwrap();
            }
        }
    }
    c.flush().await.unwrap();
    c.disconnect().await.unwrap();
    let done = hub.complete(&b, &format!("52 00/{seq}")).await;
    let rel = digest_path(&done.vm_name, DiskKey(2000), &done.backup_id);
    std::fs::write(hub.repo().join(rel), layer.encode()).unwrap();
    done
}

/// The host offset, in `file`, of the data cluster holding guest offset `guest` (the layer's
/// own cluster), from `qemu-img map`.
fn host_offset(file: &Path, guest: u64) -> u64 {
    let out = qemu_img_ok(&["map", "-U", "--output=json", file.to_str().unwrap()]);
    let map: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    for e in map {
        let start = e["start"].as_u64().unwrap();
        let len = e["length"].as_u64().unwrap();
        if e["depth"] == 0 && e["data"] == true && start <= guest && guest < start + len {
            return e["offset"].as_u64().unwrap() + (guest - start);
        }
    }
    panic!("{} holds no data cluster at {guest}", file.display());
}

/// Inverts the byte of `file`'s own data cluster that holds guest offset `guest` (found with
/// `qemu-img map`), as a bad disk would.
pub(crate) fn flip_byte(file: &Path, guest: u64) {
    let at = host_offset(file, guest);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .unwrap();
    let mut byte = [0u8];
    f.read_exact_at(&mut byte, at).unwrap();
    f.write_all_at(&[!byte[0]], at).unwrap();
    f.sync_all().unwrap();
}

pub(crate) fn verify(hub: &Hub, b: &Backup) -> Result<sendense_types::Verification, HubError> {
    let engine = &hub.running.as_ref().unwrap().engine;
    engine.verifier().verify(&b.backup_id, &|_, _| {})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_a_middle_layer_fails_exactly_the_points_that_read_it() {
    let hub = Hub::start().await;
    hub.register("vv", &[SIZE]).await;
    let p0 = point(
        &hub,
        "vv",
        "full",
        &[
            Write::Data {
                first: 0,
                blocks: 24,
                seed: 1,
            },
            Write::Data {
                first: 28,
                blocks: 4,
                seed: 2,
            },
        ],
        0,
    )
    .await;
    let p1 = point(
        &hub,
        "vv",
        "incremental",
        &[
            Write::Data {
                first: 4,
                blocks: 4,
                seed: 3,
            },
            Write::Zero {
                first: 8,
                blocks: 1,
            },
        ],
        1,
    )
    .await;
    let p2 = point(
        &hub,
        "vv",
        "incremental",
        &[Write::Data {
            first: 10,
            blocks: 4,
            seed: 4,
        }],
        2,
    )
    .await;
    let p3 = point(
        &hub,
        "vv",
        "incremental",
        &[Write::Data {
            first: 20,
            blocks: 2,
            seed: 5,
        }],
        3,
    )
    .await;
    let p4 = point(
        &hub,
        "vv",
        "incremental",
        &[Write::Data {
            first: 11,
            blocks: 1,
            seed: 6,
        }],
        4,
    )
    .await;
    for p in [&p0, &p1, &p2, &p3, &p4] {
        let v = verify(&hub, p).unwrap();
        assert_eq!(v.state, VerificationState::Ok, "{}: {v:?}", p.backup_id);
        assert_eq!(hub.backup(&p.backup_id).await.verification, v);
    }

    // Flip one byte inside p2's own cluster of block 11.
    flip_byte(
        &hub.repo().join(p2.disks[0].file.as_ref().unwrap()),
        11 * BLOCK_SIZE + 100,
    );

    // p3 reads block 11 through p2: it fails, and so does p2; p4 rewrote block 11.
    let v3 = verify(&hub, &p3).unwrap();
    assert_eq!(v3.state, VerificationState::Failed);
    let bad = vec![BadRange {
        disk_key: DiskKey(2000),
        offset: 11 * BLOCK_SIZE,
        length: BLOCK_SIZE,
    }];
    assert_eq!(v3.bad_ranges, bad);
    assert_eq!(v3.failed_through.as_ref(), Some(&p2.backup_id));
    let v2 = hub.backup(&p2.backup_id).await.verification;
    assert_eq!(v2.state, VerificationState::Failed);
    assert_eq!(v2.bad_ranges, bad);
    assert_eq!(v2.failed_through, None);
    assert!(v2.message.unwrap().contains("65536 bytes"));
    // Earlier points still verify; p4 does not read the bad block.
    for p in [&p0, &p1, &p4] {
        assert_eq!(
            hub.backup(&p.backup_id).await.verification.state,
            VerificationState::Ok,
            "{} was marked",
            p.backup_id
        );
        assert_eq!(verify(&hub, p).unwrap().state, VerificationState::Ok);
    }

    // An explicit incremental would build on bad data: refused; auto takes a full and says why.
    let (st, body) = hub
        .post(
            "/api/v1/backups",
            json!({"vm_name": "vv", "backup_type": "incremental"}),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{body}");
    let refused: ApiError = typed(body);
    assert!(
        refused.message.contains("failed verification"),
        "{refused:?}"
    );
    let next = hub.start_backup("vv", "auto").await;
    assert_eq!(next.backup_type, BackupType::Full);
    assert!(
        next.full_reason
            .as_deref()
            .is_some_and(|r| r.contains("failed verification")),
        "{next:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_last_block_and_zeroed_blocks_verify_and_a_point_without_digests_is_refused() {
    let hub = Hub::start().await;
    let size = SIZE + 4096;
    hub.register("odd", &[size]).await;
    // A full written through NBD with the short last block, without digests.
    let b = hub.start_backup("odd", "full").await;
    let c = hub.nbd(&export_of(&b, 0)).await;
    let mut bytes = vec![0u8; size as usize];
    fill_random(&mut bytes[..BS * 3], 7);
    fill_random(&mut bytes[SIZE as usize..], 8);
    c.write(0, &bytes, false).await.unwrap();
    c.flush().await.unwrap();
    c.disconnect().await.unwrap();
    let full = hub.complete(&b, "52 00/1").await;
    let err = verify(&hub, &full).unwrap_err();
    assert!(
        matches!(err, HubError::NoDigests { .. }),
        "{err}: want a refusal naming the missing digests"
    );
    assert!(err.to_string().contains("cannot be verified"), "{err}");

    let mut layer = LayerDigests::new(size);
    layer.record(0, &bytes).unwrap();
    let rel = digest_path(&full.vm_name, DiskKey(2000), &full.backup_id);
    std::fs::write(hub.repo().join(rel), layer.encode()).unwrap();
    assert_eq!(verify(&hub, &full).unwrap().state, VerificationState::Ok);
    // A damaged digests file is an error, not a verdict on the data.
    let rel = digest_path(&full.vm_name, DiskKey(2000), &full.backup_id);
    let mut damaged = layer.encode();
    damaged[40] ^= 1;
    std::fs::write(hub.repo().join(rel), damaged).unwrap();
    let err = verify(&hub, &full).unwrap_err();
    assert!(
        matches!(
            err,
            HubError::Verify(sendense_image::ImageError::Digests { .. })
        ),
        "{err}"
    );
}

/// Repository health: a backup the file system cannot hold is refused up front with 507 and
/// words naming the fix, and nothing is created; `GET /api/v1/repository` says how much is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_the_file_system_cannot_hold_is_refused_before_anything_is_made() {
    let hub = Hub::start().await;
    // 16 TiB, thin: its first full is estimated at its capacity.
    hub.register("huge", &[1 << 44]).await;
    let (st, body) = hub
        .post(
            "/api/v1/backups",
            json!({"vm_name": "huge", "backup_type": "full"}),
        )
        .await;
    assert_eq!(st, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    let refused: ApiError = typed(body);
    assert_eq!(refused.error, "insufficient_storage");
    assert!(refused.message.contains("prune"), "{refused:?}");
    let (st, body) = hub.get("/api/v1/backups?vm_name=huge").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(body.as_array().map(Vec::len), Some(0), "{body}");
    assert!(!hub.repo().join("huge").exists());

    let info: sendense_types::RepositoryInfo = hub.get_as("/api/v1/repository").await;
    assert!(info.free_bytes > 0 && info.free_bytes <= info.capacity_bytes);
    // The default threshold is 10%: the warning is there exactly when free space is below it.
    assert_eq!(
        info.low_space_warning.is_some(),
        info.free_bytes < info.capacity_bytes / 100 * 10,
        "{info:?}"
    );
}

/// Polls `GET /api/v1/jobs/{id}` until the job ended, failing the test after 30 s.
async fn ended_job(hub: &Hub, id: &str) -> sendense_types::Job {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut poll = tokio::time::interval(std::time::Duration::from_millis(20));
    loop {
        poll.tick().await;
        let job: sendense_types::Job = hub.get_as(&format!("/api/v1/jobs/{id}")).await;
        if matches!(
            job.status,
            sendense_types::JobStatus::Completed
                | sendense_types::JobStatus::Failed
                | sendense_types::JobStatus::Cancelled
        ) {
            return job;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "job never ended: {job:?}"
        );
    }
}

/// `POST /api/v1/backups/{id}/verify` queues a verify job the hub runs: it completes for a
/// sound point; after a byte flips it fails, names the bad bytes, and the webhook hears of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_route_runs_a_job_and_a_failed_verification_fires_the_webhook() {
    use sendense_hub::notify::{WebhookConfig, WebhookSecret};

    let (url, mut rx) = crate::webhook::receiver().await;
    let secrets = tempfile::tempdir().unwrap();
    let secret = WebhookSecret::new(b"verify-secret", secrets.path()).unwrap();
    let hub = Hub::start_with_webhook(WebhookConfig::new(&url, secret, false).unwrap()).await;
    hub.register("vw", &[SIZE]).await;
    let full = point(
        &hub,
        "vw",
        "full",
        &[Write::Data {
            first: 0,
            blocks: BLOCKS,
            seed: 21,
        }],
        0,
    )
    .await;
    let (st, body) = hub
        .post(
            &format!("/api/v1/backups/{}/verify", full.backup_id),
            json!({}),
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{body}");
    let job = ended_job(&hub, body["job_id"].as_str().unwrap()).await;
    assert_eq!(job.status, sendense_types::JobStatus::Completed, "{job:?}");
    assert_eq!(job.kind, sendense_types::JobKind::Verify);
    let v = hub.backup(&full.backup_id).await.verification;
    assert_eq!(v.state, VerificationState::Ok);
    assert!(v.at.is_some());

    flip_byte(
        &hub.repo().join(full.disks[0].file.as_ref().unwrap()),
        3 * BLOCK_SIZE + 9,
    );
    let (st, body) = hub
        .post(
            &format!("/api/v1/backups/{}/verify", full.backup_id),
            json!({}),
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{body}");
    let job = ended_job(&hub, body["job_id"].as_str().unwrap()).await;
    assert_eq!(job.status, sendense_types::JobStatus::Failed, "{job:?}");
    assert!(
        job.error
            .as_deref()
            .is_some_and(|e| e.contains("read differently")),
        "{job:?}"
    );
    let v = hub.backup(&full.backup_id).await.verification;
    assert_eq!(v.state, VerificationState::Failed);
    assert_eq!(
        v.bad_ranges,
        vec![BadRange {
            disk_key: DiskKey(2000),
            offset: 3 * BLOCK_SIZE,
            length: BLOCK_SIZE
        }]
    );
    let (_, hook) = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
        .await
        .expect("no webhook notification within 10 s")
        .unwrap();
    let hook: serde_json::Value = serde_json::from_slice(&hook).unwrap();
    assert_eq!(hook["event"], "job_failed", "{hook}");
    assert_eq!(hook["job"]["kind"], "verify", "{hook}");

    // Unknown and not-completed points are refused.
    let (st, _) = hub
        .post(
            "/api/v1/backups/backup-vw-20200101T000000-abcdef/verify",
            json!({}),
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

/// `--reverify-days`: a point is due once its last verification (or its completion) is that
/// old, gets one verify job, and is not due again while the job is pending or once verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_are_re_verified_once_their_last_verification_is_n_days_old() {
    use sendense_hub::reverify;
    use sendense_types::Timestamp;

    let hub = Hub::start().await;
    hub.register("rv", &[SIZE]).await;
    let full = point(
        &hub,
        "rv",
        "full",
        &[Write::Data {
            first: 0,
            blocks: 2,
            seed: 31,
        }],
        0,
    )
    .await;
    let running = hub.running.as_ref().unwrap();
    let catalog = running.engine.catalog();
    let now = Timestamp::now();
    let day = 86_400;
    assert!(reverify::due(catalog, now, 1).unwrap().is_empty());
    let later = now.saturating_add_seconds(2 * day);
    assert_eq!(
        reverify::due(catalog, later, 1).unwrap(),
        vec![full.backup_id.clone()]
    );
    let queued = reverify::tick(catalog, &running.hub_jobs, later, 1).unwrap();
    assert_eq!(queued.len(), 1);
    // Pending: not queued twice.
    assert!(reverify::due(catalog, later, 1).unwrap().is_empty());
    let job = ended_job(&hub, queued[0].as_str()).await;
    assert_eq!(job.status, sendense_types::JobStatus::Completed, "{job:?}");
    let at = hub.backup(&full.backup_id).await.verification.at.unwrap();
    assert!(
        reverify::due(catalog, at.saturating_add_seconds(day / 2), 1)
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        reverify::due(catalog, at.saturating_add_seconds(day), 1).unwrap(),
        vec![full.backup_id]
    );
}
