//! `backup::run_until` and `restore::run` against the fake hub (HTTPS REST) and the in-process
//! NBD server with TLS.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sendense_client::ClientError;
use sendense_client::backup::{self, BackupOptions, DiskInput};
use sendense_client::hub::HubOptions;
use sendense_client::restore::{self, RestoreFormat, RestoreOptions};
use sendense_digest::{BLOCK_SIZE, BlockDigest, LayerDigests, PointDigests};
use sendense_transfer::TransferError;
use sendense_transfer::engine::TransferOptions;
use sendense_types::{BackupStatus, BackupType, DiskKey, VmName};

use crate::common::{Certs, Op, TestNbd, make_certs, pattern, qemu_img};
use crate::fake_hub::FakeHub;

const MIB: usize = 1 << 20;

struct World {
    dir: tempfile::TempDir,
    certs: Certs,
    hub: FakeHub,
}

impl World {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let certs = make_certs(dir.path());
        let nbd = Arc::new(TestNbd::start(Some(Arc::clone(&certs.server))).await);
        let hub = FakeHub::start(Arc::clone(&certs.server), nbd).await;
        std::fs::write(dir.path().join("token"), format!("{}\n", FakeHub::token())).unwrap();
        Self { dir, certs, hub }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn hub_options(&self) -> HubOptions {
        HubOptions {
            url: self.hub.url.clone(),
            ca_file: self.certs.ca(),
            token_file: self.path("token"),
            tls_dir: None,
        }
    }

    fn backup_options(&self, disks: Vec<DiskInput>) -> BackupOptions {
        let mut o = BackupOptions::new(
            self.hub_options(),
            VmName::try_from("web01").unwrap(),
            disks,
        );
        o.transfer = TransferOptions::with_connections(2);
        o
    }
}

fn disk_input(key: u32, path: &Path) -> DiskInput {
    DiskInput {
        key: DiskKey(key),
        path: path.to_owned(),
        changed_areas: None,
        change_id: None,
    }
}

/// A sparse raw file of `size` bytes with `pieces` written.
fn raw_file(path: &Path, size: u64, pieces: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    let mut content = vec![0u8; usize::try_from(size).unwrap()];
    for (off, data) in pieces {
        f.write_all_at(data, *off).unwrap();
        let o = usize::try_from(*off).unwrap();
        content[o..o + data.len()].copy_from_slice(data);
    }
    content
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_full_raw_and_vmdk_disks_arrive_and_complete() {
    let w = World::new().await;
    let raw = raw_file(
        &w.path("a.raw"),
        8 << 20,
        &[(0, pattern(MIB, 1)), (5 << 20, pattern(4096, 2))],
    );
    let b_raw = raw_file(
        &w.path("b.raw"),
        4 << 20,
        &[(MIB as u64, pattern(2 * MIB, 3))],
    );
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        w.path("b.raw").to_str().unwrap(),
        w.path("b.vmdk").to_str().unwrap(),
    ]);
    let mut b = disk_input(2001, &w.path("b.vmdk"));
    b.change_id = Some("52 aa bb/4".try_into().unwrap());
    let options = w.backup_options(vec![disk_input(2000, &w.path("a.raw")), b]);

    let summary = backup::run_until(options, std::future::pending())
        .await
        .unwrap();

    assert_eq!(summary.status, BackupStatus::Completed);
    assert_eq!(summary.backup_type, BackupType::Full);
    assert_eq!(summary.bytes_sent, (MIB + 4096 + 2 * MIB) as u64);
    assert_eq!(
        summary.disks[0].bytes_skipped,
        (8 << 20) - (MIB as u64 + 4096)
    );
    let st = w.hub.state.lock().unwrap();
    assert!(st.exports[&2000].contents() == raw);
    assert!(st.exports[&2001].contents() == b_raw);
    let done = st.completed.as_ref().unwrap();
    assert!(
        done.disks()[0]
            .change_id
            .as_ref()
            .unwrap()
            .as_str()
            .starts_with("file-")
    );
    assert_eq!(
        done.disks()[1].change_id.as_ref().unwrap().as_str(),
        "52 aa bb/4"
    );
    assert_eq!(
        done.disks()[0].bytes_transferred,
        summary.disks[0].bytes_sent
    );
    assert!(st.failed.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_incremental_sends_only_changed_areas_and_masks_zeros() {
    let w = World::new().await;
    let old = pattern(8 * MIB, 7);
    let new = raw_file(
        &w.path("a.raw"),
        8 << 20,
        &[
            (0, old[..4 * MIB].to_vec()),
            (4 << 20, pattern(MIB, 9)),
            (6 << 20, old[6 * MIB..].to_vec()),
        ],
    );
    // MiB 4 rewritten, MiB 5 zeroed since the last backup.
    std::fs::write(
        w.path("cbt.json"),
        r#"{"startOffset":0,"length":8388608,"changedArea":[{"start":4194304,"length":1048576},{"start":5242880,"length":1048576}]}"#,
    )
    .unwrap();
    {
        let mut st = w.hub.state.lock().unwrap();
        st.initial.insert(2000, old);
        st.auto_as = Some(BackupType::Incremental);
        st.parents.insert(2000, "file-1/1".try_into().unwrap());
    }
    let mut disk = disk_input(2000, &w.path("a.raw"));
    disk.changed_areas = Some(w.path("cbt.json"));
    let options = w.backup_options(vec![disk]);

    let summary = backup::run_until(options, std::future::pending())
        .await
        .unwrap();

    assert_eq!(summary.backup_type, BackupType::Incremental);
    assert_eq!(
        summary.bytes_sent, MIB as u64,
        "only the changed data travels"
    );
    let st = w.hub.state.lock().unwrap();
    let export = &st.exports[&2000];
    assert!(
        export.contents() == new,
        "the overlay reads as the new state"
    );
    assert!(export.ops().contains(&Op::Zero(5 << 20, 1 << 20)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_incremental_disk_new_to_the_vm_sends_all_its_data_not_only_changed_areas() {
    let w = World::new().await;
    let old = pattern(4 * MIB, 7);
    let a = raw_file(&w.path("a.raw"), 4 << 20, &[(0, old.clone())]);
    // The new disk holds data outside its changed areas too: all of it must arrive.
    let b = raw_file(
        &w.path("b.raw"),
        4 << 20,
        &[(0, pattern(MIB, 3)), (3 << 20, pattern(MIB, 4))],
    );
    let nothing =
        r#"{"startOffset":0,"length":4194304,"changedArea":[{"start":0,"length":65536}]}"#;
    std::fs::write(w.path("cbt-a.json"), nothing).unwrap();
    std::fs::write(w.path("cbt-b.json"), nothing).unwrap();
    {
        let mut st = w.hub.state.lock().unwrap();
        st.initial.insert(2000, old);
        st.auto_as = Some(BackupType::Incremental);
        // Only disk 2000 has a parent: 2001 is new to the VM (parent_change_id null).
        st.parents.insert(2000, "file-1/1".try_into().unwrap());
    }
    let mut da = disk_input(2000, &w.path("a.raw"));
    da.changed_areas = Some(w.path("cbt-a.json"));
    let mut db = disk_input(2001, &w.path("b.raw"));
    db.changed_areas = Some(w.path("cbt-b.json"));
    let options = w.backup_options(vec![da, db]);

    let summary = backup::run_until(options, std::future::pending())
        .await
        .unwrap();

    assert_eq!(summary.backup_type, BackupType::Incremental);
    assert_eq!(
        summary.disks[0].bytes_sent, 65536,
        "disk 2000: its changes only"
    );
    assert_eq!(
        summary.disks[1].bytes_sent,
        2 * MIB as u64,
        "disk 2001: all its data"
    );
    let st = w.hub.state.lock().unwrap();
    assert!(st.exports[&2000].contents() == a);
    assert!(
        st.exports[&2001].contents() == b,
        "the new disk arrives whole"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_base_backup_is_sent_and_a_hub_parent_that_differs_is_refused() {
    let w = World::new().await;
    raw_file(&w.path("a.raw"), 4 << 20, &[(0, pattern(MIB, 1))]);
    let base: sendense_types::BackupId = "backup-web01-20261125T000000-000001".try_into().unwrap();
    let other: sendense_types::BackupId = "backup-web01-20261125T000001-000002".try_into().unwrap();
    {
        let mut st = w.hub.state.lock().unwrap();
        st.parents.insert(2000, "file-1/1".try_into().unwrap());
        st.parent_backup_id = Some(other.clone());
    }
    let mut options = w.backup_options(vec![disk_input(2000, &w.path("a.raw"))]);
    options.backup_type = BackupType::Incremental;
    options.base_backup = Some(base.clone());

    let err = backup::run_until(options, std::future::pending())
        .await
        .unwrap_err();

    assert!(
        err.to_string().contains("--base-backup") && format!("{err:?}").contains(other.as_str()),
        "{err:?}"
    );
    let st = w.hub.state.lock().unwrap();
    assert_eq!(st.starts.len(), 1);
    assert_eq!(st.starts[0].base_backup_id.as_ref(), Some(&base));
    assert!(
        st.failed
            .as_deref()
            .is_some_and(|r| r.contains("--base-backup")),
        "{:?}",
        st.failed
    );
    assert!(st.completed.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_interrupted_fails_the_backup_on_the_hub() {
    let w = World::new().await;
    raw_file(&w.path("a.raw"), 8 << 20, &[(0, pattern(MIB, 1))]);
    let options = w.backup_options(vec![disk_input(2000, &w.path("a.raw"))]);

    let err = backup::run_until(options, std::future::ready(()))
        .await
        .unwrap_err();

    assert!(matches!(err, ClientError::Interrupted), "{err:?}");
    let st = w.hub.state.lock().unwrap();
    assert!(
        st.failed
            .as_deref()
            .is_some_and(|r| r.starts_with("Interrupted")),
        "{:?}",
        st.failed
    );
    assert!(st.completed.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_nbd_failure_fails_the_backup_with_the_reason() {
    let w = World::new().await;
    raw_file(&w.path("a.raw"), 8 << 20, &[(0, pattern(MIB, 1))]);
    w.hub.state.lock().unwrap().break_exports = true;
    let options = w.backup_options(vec![disk_input(2000, &w.path("a.raw"))]);

    let err = backup::run_until(options, std::future::pending())
        .await
        .unwrap_err();

    assert!(
        matches!(err, ClientError::Transfer(TransferError::Nbd { .. })),
        "{err:?}"
    );
    let st = w.hub.state.lock().unwrap();
    let reason = st.failed.clone().unwrap();
    assert!(reason.contains("NBD connect failed"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_wrong_token_names_the_token_file() {
    let w = World::new().await;
    raw_file(&w.path("a.raw"), 1 << 20, &[]);
    std::fs::write(w.path("token"), "wrong").unwrap();
    let options = w.backup_options(vec![disk_input(2000, &w.path("a.raw"))]);

    let err = backup::run_until(options, std::future::pending())
        .await
        .unwrap_err();

    assert!(matches!(err, ClientError::TokenRejected { .. }), "{err:?}");
    assert!(err.to_string().contains("--token-file"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_wrong_ca_is_a_certificate_error() {
    let w = World::new().await;
    raw_file(&w.path("a.raw"), 1 << 20, &[]);
    let other = tempfile::tempdir().unwrap();
    let other_certs = make_certs(other.path());
    let mut options = w.backup_options(vec![disk_input(2000, &w.path("a.raw"))]);
    options.hub.ca_file = other_certs.ca();

    let err = backup::run_until(options, std::future::pending())
        .await
        .unwrap_err();

    assert!(matches!(err, ClientError::HubCertificate { .. }), "{err:?}");
    assert!(err.to_string().contains("--ca"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_after_full_backup_equals_source_in_raw_and_qcow2() {
    let w = World::new().await;
    raw_file(
        &w.path("a.raw"),
        8 << 20,
        &[
            (MIB as u64, pattern(2 * MIB, 4)),
            (7 << 20, pattern(4096, 5)),
        ],
    );
    let options = w.backup_options(vec![disk_input(2000, &w.path("a.raw"))]);
    let summary = backup::run_until(options, std::future::pending())
        .await
        .unwrap();

    for (format, name, fmt) in [
        (RestoreFormat::Raw, "r.raw", "raw"),
        (RestoreFormat::Qcow2, "r.qcow2", "qcow2"),
    ] {
        let mut ro = RestoreOptions::new(
            w.hub_options(),
            summary.backup_id.clone(),
            DiskKey(2000),
            w.path(name),
        );
        ro.format = format;
        ro.transfer = TransferOptions::with_connections(2);

        let restored = restore::run(ro).await.unwrap();

        assert_eq!(restored.size, 8 << 20);
        qemu_img(&[
            "compare",
            "-f",
            "raw",
            "-F",
            fmt,
            w.path("a.raw").to_str().unwrap(),
            w.path(name).to_str().unwrap(),
        ]);
        assert!(!w.path(&format!("{name}.partial")).exists());
    }
    if let Ok(st) = w.hub.state.lock() {
        assert!(st.restore_closed, "exports closed after the restore");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_existing_target_is_refused() {
    let w = World::new().await;
    std::fs::write(w.path("exists.raw"), b"x").unwrap();
    let ro = RestoreOptions::new(
        w.hub_options(),
        "backup-web01-20261124T235901-3fa9c2".try_into().unwrap(),
        DiskKey(2000),
        w.path("exists.raw"),
    );

    let err = restore::run(ro).await.unwrap_err();

    assert!(
        matches!(err, ClientError::Transfer(TransferError::Write { .. })),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_interrupted_closes_exports_and_leaves_no_file() {
    let w = World::new().await;
    raw_file(&w.path("a.raw"), 8 << 20, &[(0, pattern(MIB, 4))]);
    let options = w.backup_options(vec![disk_input(2000, &w.path("a.raw"))]);
    let summary = backup::run_until(options, std::future::pending())
        .await
        .unwrap();
    let ro = RestoreOptions::new(
        w.hub_options(),
        summary.backup_id,
        DiskKey(2000),
        w.path("r.raw"),
    );

    let err = restore::run_until(ro, std::future::ready(()))
        .await
        .unwrap_err();

    assert!(matches!(err, ClientError::Interrupted), "{err:?}");
    assert!(!w.path("r.raw").exists());
    assert!(!w.path("r.raw.partial").exists());
    assert!(w.hub.state.lock().unwrap().restore_closed);
}

/// Every block of the point whose chain is `layers` (oldest first) reads as `content` says.
fn assert_point_digests(layers: &[LayerDigests], content: &[u8]) {
    let point = PointDigests::new(layers);
    assert_eq!(point.disk_size(), content.len() as u64);
    for b in 0..point.block_count() {
        let start = usize::try_from(b * BLOCK_SIZE).unwrap();
        let end = start + usize::try_from(point.block_len(b)).unwrap();
        assert_eq!(
            point.expected(b).0,
            BlockDigest::of(&content[start..end]),
            "block {b}"
        );
    }
}

fn decoded(bytes: &[u8]) -> LayerDigests {
    LayerDigests::decode(bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_full_uploads_each_disks_digests_before_complete() {
    let w = World::new().await;
    let a = raw_file(
        &w.path("a.raw"),
        8 << 20,
        &[(100, pattern(MIB, 1)), (5 << 20, pattern(4096, 2))],
    );
    let b = raw_file(&w.path("b.raw"), 3 << 20, &[(MIB as u64, pattern(77, 3))]);
    let options = w.backup_options(vec![
        disk_input(2000, &w.path("a.raw")),
        disk_input(2001, &w.path("b.raw")),
    ]);

    let summary = backup::run_until(options, std::future::pending())
        .await
        .unwrap();

    assert_eq!(summary.status, BackupStatus::Completed);
    let st = w.hub.state.lock().unwrap();
    assert_eq!(st.digests_at_complete, Some(2), "both before complete");
    let da = decoded(&st.digests[&2000]);
    let db = decoded(&st.digests[&2001]);
    assert_point_digests(std::slice::from_ref(&da), &a);
    assert_point_digests(std::slice::from_ref(&db), &b);
    // The data blocks were read and recorded (not left to "unrecorded reads as zeros").
    assert!(matches!(da.get(0), Some(BlockDigest::Data(_))));
    assert!(matches!(da.get(16), Some(BlockDigest::Data(_))));
    assert!(matches!(da.get(80), Some(BlockDigest::Data(_))));
    assert!(matches!(db.get(16), Some(BlockDigest::Data(_))));
    assert!(st.exports[&2000].contents() == a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_incremental_digests_compose_over_the_parents_into_the_new_state() {
    let w = World::new().await;
    let old = pattern(8 * MIB, 7);
    let new = raw_file(
        &w.path("a.raw"),
        8 << 20,
        &[
            (0, old[..4 * MIB].to_vec()),
            (4 << 20, pattern(MIB, 9)),
            (6 << 20, old[6 * MIB..].to_vec()),
        ],
    );
    // MiB 4 rewritten, MiB 5 zeroed; the changed areas start or end inside blocks.
    std::fs::write(
        w.path("cbt.json"),
        r#"{"startOffset":0,"length":8388608,"changedArea":[{"start":4194816,"length":1048064},{"start":5242880,"length":1044480}]}"#,
    )
    .unwrap();
    {
        let mut st = w.hub.state.lock().unwrap();
        st.initial.insert(2000, old.clone());
        st.auto_as = Some(BackupType::Incremental);
        st.parents.insert(2000, "file-1/1".try_into().unwrap());
    }
    let mut disk = disk_input(2000, &w.path("a.raw"));
    disk.changed_areas = Some(w.path("cbt.json"));
    let options = w.backup_options(vec![disk]);
    let mut base = LayerDigests::new(8 << 20);
    base.record(0, &old).unwrap();

    let summary = backup::run_until(options, std::future::pending())
        .await
        .unwrap();

    assert_eq!(summary.backup_type, BackupType::Incremental);
    let st = w.hub.state.lock().unwrap();
    let layer = decoded(&st.digests[&2000]);
    assert_eq!(layer.blocks(), 32, "MiB 4 and 5, widened to whole blocks");
    assert!(layer.get(63).is_none() && layer.get(96).is_none());
    assert_eq!(layer.get(80), Some(BlockDigest::Zero));
    assert_point_digests(&[base, layer], &new);
    assert!(st.exports[&2000].contents() == new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_to_a_hub_without_the_digests_route_completes_without_them() {
    let w = World::new().await;
    raw_file(&w.path("a.raw"), 4 << 20, &[(0, pattern(MIB, 1))]);
    raw_file(&w.path("b.raw"), 4 << 20, &[(0, pattern(MIB, 2))]);
    w.hub.state.lock().unwrap().refuse_digests = Some(404);
    let options = w.backup_options(vec![
        disk_input(2000, &w.path("a.raw")),
        disk_input(2001, &w.path("b.raw")),
    ]);

    let summary = backup::run_until(options, std::future::pending())
        .await
        .unwrap();

    assert_eq!(summary.status, BackupStatus::Completed);
    let st = w.hub.state.lock().unwrap();
    assert!(st.completed.is_some() && st.failed.is_none());
    assert!(st.digests.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_whose_digests_the_hub_refuses_fails_with_the_hubs_words() {
    let w = World::new().await;
    raw_file(&w.path("a.raw"), 4 << 20, &[(0, pattern(MIB, 1))]);
    w.hub.state.lock().unwrap().refuse_digests = Some(400);
    let options = w.backup_options(vec![disk_input(2000, &w.path("a.raw"))]);

    let err = backup::run_until(options, std::future::pending())
        .await
        .unwrap_err();

    assert!(
        matches!(err, ClientError::HubStatus { status: 400, .. }),
        "{err:?}"
    );
    let st = w.hub.state.lock().unwrap();
    assert!(st.completed.is_none());
    let reason = st.failed.clone().unwrap();
    assert!(reason.contains("digests refused by the test"), "{reason}");
}

/// A job of the fake hub's script.
fn job(status: &str, done: u64, error: Option<&str>) -> serde_json::Value {
    serde_json::json!({
        "job_id": "job-00000000000000aa", "kind": "restore", "vm_name": "web01",
        "status": status, "backup_id": "backup-web01-20261124T235901-3fa9c2", "agent": "a1",
        "progress": {"bytes_done": done, "bytes_total": 4096, "mb_per_s": 1.5, "eta_seconds": null},
        "error": error, "queued_at": "2026-11-25T00:00:00Z", "started_at": null,
        "finished_at": null
    })
}

fn vcenter_options(world: &World) -> sendense_client::vcenter_restore::VcenterRestoreOptions {
    sendense_client::vcenter_restore::VcenterRestoreOptions {
        hub: world.hub_options(),
        backup_id: "backup-web01-20261124T235901-3fa9c2".parse().unwrap(),
        request: serde_json::from_value(serde_json::json!({
            "target": "vcenter", "vm_name": "web01-r", "datacenter": "dc1", "datastore": "ds2",
            "network_map": {"VM Network": "Restore Net"}, "power_on": true
        }))
        .unwrap(),
        wait: true,
        bar: false,
        poll: std::time::Duration::ZERO,
    }
}

#[tokio::test]
async fn vcenter_restore_posts_the_request_and_follows_the_job_to_completion() {
    let world = World::new().await;
    world.hub.state.lock().unwrap().job_script = vec![
        job("queued", 0, None),
        job("running", 2048, None),
        job("completed", 4096, None),
    ];

    let summary = sendense_client::vcenter_restore::run(vcenter_options(&world))
        .await
        .unwrap();

    let st = world.hub.state.lock().unwrap();
    assert_eq!(st.restores.len(), 1);
    assert_eq!(st.restores[0]["vm_name"], "web01-r");
    assert_eq!(st.restores[0]["network_map"]["VM Network"], "Restore Net");
    assert_eq!(summary.job_id.as_str(), "job-00000000000000aa");
    let done = summary.job.unwrap();
    assert_eq!(
        (done.status, done.progress.bytes_done),
        (sendense_types::JobStatus::Completed, 4096)
    );
}

#[tokio::test]
async fn vcenter_restore_failed_job_is_an_error_with_its_reason() {
    let world = World::new().await;
    world.hub.state.lock().unwrap().job_script = vec![
        job("running", 1024, None),
        job(
            "failed",
            1024,
            Some("network Backup Net is neither mapped nor in dc1"),
        ),
    ];

    let err = sendense_client::vcenter_restore::run(vcenter_options(&world))
        .await
        .unwrap_err();

    let text = err.to_string();
    assert!(
        text.contains("failed") && text.contains("neither mapped"),
        "{text}"
    );
}

#[tokio::test]
async fn vcenter_restore_no_wait_answers_the_queued_job_without_reading_it() {
    let world = World::new().await;
    let mut options = vcenter_options(&world);
    options.wait = false;

    let summary = sendense_client::vcenter_restore::run(options)
        .await
        .unwrap();

    assert_eq!(
        (summary.job_id.as_str(), summary.job),
        ("job-00000000000000aa", None)
    );
}
