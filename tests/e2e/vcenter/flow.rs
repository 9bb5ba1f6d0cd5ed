//! `backup --vcenter` end to end: the simulator, a real in-process hub (HTTPS API, NBD over
//! TLS, QCOW2 repository), the client's transfer engine, and `qemu-img compare` of every
//! repository image against the simulator's disk files.
//!
//! (Moved here from `sendense-vsphere`'s own tests: the hub now depends on `sendense-vsphere`
//! for its vCenter logins, so that crate can no longer use the hub in its tests.)

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sendense_client::ClientError;
use sendense_client::cli::{Cli, execute};
use sendense_client::hub::{HubClient, HubOptions};
use sendense_client::progress::Progress;
use sendense_client::vcenter::{VcenterBackupOptions, run_until};
use sendense_hub::daemon::{self, ClientCerts, HubConfig, RunningHub};
use sendense_transfer::TransferError;
use sendense_transfer::engine::TransferOptions;
use sendense_types::{Backup, BackupStatus, BackupSummary, BackupType, VmName};
use sendense_vsphere::VsphereError;
use sendense_vsphere_sim::{DiskSpec, Simulator, VmSpec};
use tempfile::TempDir;

use super::{MIB, options};
use crate::digests::{assert_point_matches, layer_in, read_point};
use crate::support::assert_same;

/// A simulator with VM `vm1` (CBT on, disks of 4 MiB and 2 MiB) and a running hub.
struct World {
    sim: Arc<Simulator>,
    vm: String,
    hub: Option<RunningHub>,
    data: TempDir,
    _sim_dir: TempDir,
}

impl World {
    async fn start() -> Self {
        let sim_dir = tempfile::tempdir().unwrap();
        let sim = Arc::new(Simulator::start(sim_dir.path()).await.unwrap());
        let vm = sim
            .add_vm(&VmSpec {
                name: "vm1".to_owned(),
                cbt_enabled: true,
                disks: vec![DiskSpec::flat(4 * MIB), DiskSpec::flat(2 * MIB)],
            })
            .unwrap();
        let data = tempfile::tempdir().unwrap();
        let hub = daemon::start(HubConfig {
            data_dir: data.path().to_path_buf(),
            api_listen: "127.0.0.1:0".parse().unwrap(),
            nbd_listen: "127.0.0.1:0".parse().unwrap(),
            public_host: Some("localhost".into()),
            idle_timeout: Duration::from_secs(600),
            disconnect_grace: Duration::from_secs(20),
            nbd_client_certs: ClientCerts::Required,
            webhook: None,
            max_running_jobs: None,
            repository: sendense_hub::RepositoryConfig::default(),
        })
        .await
        .unwrap();
        Self {
            sim,
            vm,
            hub: Some(hub),
            data,
            _sim_dir: sim_dir,
        }
    }

    fn hub_options(&self) -> HubOptions {
        let port = self.hub.as_ref().unwrap().api_addr.port();
        HubOptions::with_tls_dir(
            &format!("https://localhost:{port}"),
            &crate::support::client_tls_in_process(self.data.path()),
            &self.data.path().join("api.token"),
        )
    }

    fn hub_client(&self) -> HubClient {
        HubClient::new(&self.hub_options()).unwrap()
    }

    fn backup_options(&self, backup_type: BackupType) -> VcenterBackupOptions {
        let mut o = VcenterBackupOptions::new(self.hub_options(), options(&self.sim), "vm1");
        o.backup_type = backup_type;
        o.transfer = TransferOptions::with_connections(2);
        o
    }

    async fn backup(&self, backup_type: BackupType) -> Result<BackupSummary, ClientError> {
        run_until(self.backup_options(backup_type), std::future::pending()).await
    }

    /// Writes `len` bytes of [`pattern`] `seed` at `offset` of the VM's disk `key`.
    fn write(&self, key: i32, offset: u64, seed: u8, len: usize) {
        self.sim
            .write_disk(&self.vm, key, offset, &pattern(seed, len))
            .unwrap();
    }

    fn disk_file(&self, key: i32) -> PathBuf {
        self.sim.disk_file(&self.vm, key).unwrap()
    }

    /// `qemu-img compare` of each disk's image of `backup_id` with the simulator's file.
    async fn assert_images_match(&self, backup_id: &str) {
        let backup = self
            .hub_client()
            .backup(&backup_id.try_into().unwrap())
            .await
            .unwrap();
        for d in &backup.disks {
            let image = self
                .data
                .path()
                .join("repository")
                .join(d.file.as_deref().unwrap());
            let raw = self.disk_file(i32::try_from(d.disk_key.get()).unwrap());
            assert_same(&image, "qcow2", &raw, "raw");
        }
    }

    /// `GET /api/v1/backups?vm_name=vm1`: every backup of the VM, any status.
    async fn all_backups(&self) -> Vec<Backup> {
        let o = self.hub_options();
        let tls = sendense_client::hub::tls_config(&o.ca_file).unwrap();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .build()
            .unwrap();
        let token = std::fs::read_to_string(&o.token_file).unwrap();
        let body = http
            .get(format!("{}/api/v1/backups?vm_name=vm1", o.url))
            .bearer_auth(token.trim())
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        serde_json::from_str(&body).unwrap()
    }

    fn snapshots_left(&self) -> Vec<String> {
        self.sim.snapshot_names(&self.vm)
    }

    /// Spawns an `auto` run and returns once it reads its snapshot's disks: the simulator
    /// holds every read until [`Self::release`].
    async fn run_held(&self) -> tokio::task::JoinHandle<Result<BackupSummary, ClientError>> {
        self.sim.hold_reads(true);
        let run = tokio::spawn(run_until(
            self.backup_options(BackupType::Auto),
            std::future::pending(),
        ));
        tokio::time::timeout(WAIT, self.sim.read_held())
            .await
            .expect("the run reads its snapshot");
        run
    }

    /// Lets the held reads go and waits (bounded by [`WAIT`]) for `run` to complete.
    async fn release(
        &self,
        run: tokio::task::JoinHandle<Result<BackupSummary, ClientError>>,
    ) -> BackupSummary {
        self.sim.hold_reads(false);
        tokio::time::timeout(WAIT, run)
            .await
            .expect("the run ends")
            .unwrap()
            .unwrap()
    }
}

fn pattern(seed: u8, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| seed ^ u8::try_from(i % 251).unwrap())
        .collect()
}

fn vm1() -> VmName {
    VmName::try_from("vm1").unwrap()
}

/// A hook run once.
type Hook = Box<dyn FnOnce() + Send>;

/// Calls `on_first` the first time a disk reports progress.
struct OnFirstProgress {
    fired: AtomicBool,
    on_first: Mutex<Option<Hook>>,
}

impl OnFirstProgress {
    fn new(f: impl FnOnce() + Send + 'static) -> Arc<Self> {
        Arc::new(Self {
            fired: AtomicBool::new(false),
            on_first: Mutex::new(Some(Box::new(f))),
        })
    }
}

impl std::fmt::Debug for OnFirstProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnFirstProgress")
            .field("fired", &self.fired)
            .finish_non_exhaustive()
    }
}

impl Progress for OnFirstProgress {
    fn started(&self, _: u32, _: u64) {}
    fn advanced(&self, _: u32, _: u64) {
        if !self.fired.swap(true, Ordering::SeqCst)
            && let Some(f) = self.on_first.lock().unwrap().take()
        {
            f();
        }
    }
    fn finished(&self, _: u32) {}
}

/// Sequential 1 MiB requests, so a hook after the first one fires mid-transfer.
fn slow_transfer() -> TransferOptions {
    TransferOptions {
        connections: 1,
        in_flight: 1,
        request_size: MIB,
        total_buffers: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vcenter_backup_full_incremental_then_cbt_reset_makes_new_full_chain() {
    let w = World::start().await;
    w.write(2000, 0, 1, 300_000);
    w.write(2000, 3 * MIB, 2, 100_000);
    w.write(2001, 512 * 1024, 3, 200_000);

    // 1. First full.
    let full = w.backup(BackupType::Auto).await.unwrap();
    assert_eq!(
        (full.backup_type, full.status, full.disks.len()),
        (BackupType::Full, BackupStatus::Completed, 2)
    );
    assert!(w.snapshots_left().is_empty());
    w.assert_images_match(full.backup_id.as_str()).await;

    // 2. 64 KiB changed on disk 2000; on disk 2001 data overwritten with zeros.
    w.write(2000, MIB, 4, 65536);
    w.sim
        .write_disk(&w.vm, 2001, 512 * 1024, &vec![0u8; 65536])
        .unwrap();
    let inc = w.backup(BackupType::Auto).await.unwrap();
    assert_eq!(
        (inc.backup_type, inc.status),
        (BackupType::Incremental, BackupStatus::Completed)
    );
    // Only the changed extents traveled: the 64 KiB block as data, the zeros as WRITE_ZEROES.
    assert_eq!(
        (inc.disks[0].bytes_sent, inc.disks[1].bytes_sent),
        (65536, 0),
        "{inc:?}"
    );
    assert!(full.bytes_sent >= 500_000, "{full:?}");
    assert!(w.snapshots_left().is_empty());
    w.assert_images_match(inc.backup_id.as_str()).await;

    // 3. CBT reset: an automatic full on a new chain.
    w.sim.reset_cbt(&w.vm);
    w.write(2001, 0, 5, 4096);
    let again = w.backup(BackupType::Auto).await.unwrap();
    assert_eq!(
        (again.backup_type, again.status),
        (BackupType::Full, BackupStatus::Completed)
    );
    let chain = w.hub_client().chain(&vm1()).await.unwrap();
    assert_eq!(chain.backups[0].backup_id, again.backup_id);
    assert_eq!(chain.backups[0].backup_type, BackupType::Full);
    w.assert_images_match(again.backup_id.as_str()).await;
    let st = w.sim.stats();
    assert_eq!(
        (
            st.snapshots_created,
            st.snapshots_removed,
            w.snapshots_left().len()
        ),
        (3, 3, 0)
    );
}

/// The digests stored with each point of a vCenter chain, composed, match the simulator's disk
/// (the source) and every point as qemu-img reads it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vcenter_backup_full_and_incremental_store_digests_matching_source_and_points() {
    let w = World::start().await;
    w.write(2000, 100, 1, 300_000);
    w.write(2001, 512 * 1024, 3, 200_000);
    let full = w.backup(BackupType::Auto).await.unwrap();
    let full_source: Vec<Vec<u8>> = [2000, 2001]
        .iter()
        .map(|&k| std::fs::read(w.disk_file(k)).unwrap())
        .collect();
    w.write(2000, MIB + 1000, 4, 5000);
    w.sim
        .write_disk(&w.vm, 2001, 512 * 1024, &vec![0u8; 65536])
        .unwrap();

    let inc = w.backup(BackupType::Auto).await.unwrap();

    assert_eq!(
        (full.backup_type, inc.backup_type),
        (BackupType::Full, BackupType::Incremental)
    );
    let data = w.data.path();
    let scratch = data.join("point.raw");
    for (i, key) in [2000u32, 2001].into_iter().enumerate() {
        let layers = [
            layer_in(data, "vm1", key, full.backup_id.as_str()),
            layer_in(data, "vm1", key, inc.backup_id.as_str()),
        ];
        let image = |id: &str| data.join(format!("repository/vm1/disk-{key}/{id}.qcow2"));
        assert_point_matches(&layers[..1], &full_source[i]);
        assert_point_matches(
            &layers[..1],
            &read_point(&image(full.backup_id.as_str()), &scratch),
        );
        let source = std::fs::read(w.disk_file(i32::try_from(key).unwrap())).unwrap();
        assert_point_matches(&layers, &source);
        assert_point_matches(
            &layers,
            &read_point(&image(inc.backup_id.as_str()), &scratch),
        );
        assert!(
            layers[1].blocks() < layers[0].blocks(),
            "the incremental's layer holds its changes only"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vcenter_backup_datastore_failure_mid_transfer_fails_backup_and_removes_snapshot() {
    let w = World::start().await;
    w.write(2000, 0, 7, 4 * 1024 * 1024);
    let mut options = w.backup_options(BackupType::Auto);
    options.transfer = slow_transfer();
    let sim = Arc::clone(&w.sim);
    options.progress = OnFirstProgress::new(move || sim.set_busy_storm(u32::MAX));

    let err = run_until(options, std::future::pending())
        .await
        .unwrap_err();

    w.sim.set_busy_storm(0);
    assert!(
        matches!(err, ClientError::Transfer(TransferError::Source { .. })),
        "{err:?}"
    );
    let backups = w.all_backups().await;
    assert_eq!(backups.len(), 1);
    assert_eq!(backups[0].status, BackupStatus::Failed);
    assert!(w.snapshots_left().is_empty());
    assert_eq!(w.sim.stats().snapshots_removed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vcenter_backup_interrupted_mid_transfer_fails_backup_and_removes_snapshot() {
    let w = World::start().await;
    w.write(2000, 0, 8, 4 * 1024 * 1024);
    let mut options = w.backup_options(BackupType::Auto);
    options.transfer = slow_transfer();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    options.progress = OnFirstProgress::new(move || {
        let _ = tx.send(());
    });
    let shutdown = async move {
        let _ = rx.await;
    };

    let err = run_until(options, shutdown).await.unwrap_err();

    assert!(matches!(err, ClientError::Interrupted), "{err:?}");
    let backups = w.all_backups().await;
    assert_eq!(backups.len(), 1);
    assert_eq!(backups[0].status, BackupStatus::Failed);
    assert!(w.snapshots_left().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vcenter_backup_incremental_without_chain_is_refused_before_the_hub() {
    let w = World::start().await;

    let err = w.backup(BackupType::Incremental).await.unwrap_err();

    assert!(
        matches!(err, ClientError::IncrementalImpossible { .. }),
        "{err:?}"
    );
    let backups = w.all_backups().await;
    assert!(backups.is_empty());
    assert!(w.snapshots_left().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_backup_vcenter_json_runs_full_through_provider() {
    let w = World::start().await;
    w.write(2001, 0, 9, 70_000);
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("vc-ca.pem");
    std::fs::write(&ca, w.sim.ca_pem()).unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, format!("{}\n", sendense_vsphere_sim::SIM_PASSWORD)).unwrap();
    let hub = w.hub_options();
    let args: Vec<String> = vec![
        "sendense-client".into(),
        "backup".into(),
        "--vcenter".into(),
        w.sim.address(),
        "--vcenter-user".into(),
        sendense_vsphere_sim::SIM_USER.into(),
        "--vcenter-password-file".into(),
        pw.display().to_string(),
        "--vcenter-ca".into(),
        ca.display().to_string(),
        "--vm".into(),
        "dc1/vm/vm1".into(),
        "--hub".into(),
        hub.url.clone(),
        "--tls-dir".into(),
        hub.tls_dir.as_ref().unwrap().display().to_string(),
        "--token-file".into(),
        hub.token_file.display().to_string(),
        "--type".into(),
        "full".into(),
        "--json".into(),
    ];
    let cli = <Cli as clap::Parser>::try_parse_from(args).unwrap();

    let out = execute(cli.command).await.unwrap();

    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (
            &v["backup_type"],
            &v["status"],
            v["disks"].as_array().map(Vec::len)
        ),
        (
            &serde_json::json!("full"),
            &serde_json::json!("completed"),
            Some(2)
        ),
        "{out}"
    );
    assert!(w.snapshots_left().is_empty());
    w.assert_images_match(v["backup_id"].as_str().unwrap())
        .await;
}

#[tokio::test]
async fn cli_backup_vcenter_with_a_missing_password_file_is_refused_before_any_login() {
    let cli = <Cli as clap::Parser>::try_parse_from([
        "sendense-client",
        "backup",
        "--vcenter",
        "vc:443",
        "--vcenter-user",
        "u",
        "--vcenter-password-file",
        "/nonexistent/sendense-test/vcenter-password",
        "--insecure",
        "--vm",
        "vm1",
        "--hub",
        "https://h:8443",
        "--ca",
        "c",
        "--token-file",
        "t",
    ])
    .unwrap();

    let err = execute(cli.command).await.unwrap_err();

    assert!(
        matches!(err, ClientError::Vsphere(VsphereError::PasswordFile { .. })),
        "{err:?}"
    );
}

#[test]
fn cli_backup_vcenter_with_disk_is_refused() {
    let err = <Cli as clap::Parser>::try_parse_from([
        "sendense-client",
        "backup",
        "--vcenter",
        "vc",
        "--vcenter-user",
        "u",
        "--vcenter-password-file",
        "/nonexistent/sendense-test/vcenter-password",
        "--insecure",
        "--vm",
        "vm1",
        "--disk",
        "2000=a.raw",
        "--hub",
        "https://h",
        "--ca",
        "c",
        "--token-file",
        "t",
    ])
    .unwrap_err();

    assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vcenter_backup_one_disk_resized_makes_whole_vm_full() {
    let w = World::start().await;
    w.write(2000, 0, 10, 100_000);
    w.write(2001, 0, 11, 100_000);
    let first = w.backup(BackupType::Auto).await.unwrap();
    w.sim.resize_disk(&w.vm, 2001, 3 * MIB).unwrap();
    w.write(2001, 2 * MIB, 12, 4096);

    let second = w.backup(BackupType::Auto).await.unwrap();

    let chain = w.hub_client().chain(&vm1()).await.unwrap();
    assert_eq!(
        (
            first.backup_type,
            second.backup_type,
            chain.backups.len(),
            chain.backups[0].disks[1].capacity_bytes
        ),
        (BackupType::Full, BackupType::Full, 1, 3 * MIB)
    );
    assert!(second.disks[0].bytes_sent >= 100_000, "{second:?}");
    w.assert_images_match(second.backup_id.as_str()).await;
    assert!(w.snapshots_left().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vcenter_backup_type_full_with_chain_starts_new_chain() {
    let w = World::start().await;
    w.write(2000, 0, 13, 65536);
    let first = w.backup(BackupType::Auto).await.unwrap();

    let second = w.backup(BackupType::Full).await.unwrap();

    let chain = w.hub_client().chain(&vm1()).await.unwrap();
    assert_eq!(
        (
            first.backup_type,
            second.backup_type,
            &chain.backups[0].backup_id
        ),
        (BackupType::Full, BackupType::Full, &second.backup_id)
    );
    w.assert_images_match(second.backup_id.as_str()).await;
}

/// How long a test waits for a condition.
const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vcenter_two_runs_of_one_vm_at_once_second_refused_first_snapshot_survives_and_exact() {
    let w = World::start().await;
    w.write(2000, 0, 11, 3 * 1024 * 1024);
    w.write(2001, MIB, 12, 300_000);
    // Run A gets as far as reading its snapshot's disks, and waits there.
    let first = w.run_held().await;
    let during_a = w.snapshots_left();
    let created_before_b = w.sim.stats().snapshots_created;

    // Run B of the same VM while A reads: refused by the hub, nothing done in vCenter.
    let err = w.backup(BackupType::Auto).await.unwrap_err();

    let after_b = w.snapshots_left();
    let a = w.release(first).await;
    assert!(matches!(err, ClientError::VmBusy { .. }), "{err:?}");
    let text = format!("{err}: {:?}", std::error::Error::source(&err));
    assert!(
        text.contains("Another backup of VM vm1 is running") && text.contains("409"),
        "{text}"
    );
    assert_eq!(
        during_a,
        vec![format!("sendense-{}", a.backup_id)],
        "A's snapshot is named after its backup"
    );
    assert_eq!(after_b, during_a, "B left A's snapshot alone");
    assert_eq!(
        w.sim.stats().snapshots_created,
        created_before_b,
        "B made no snapshot"
    );
    assert_eq!(
        (a.backup_type, a.status),
        (BackupType::Full, BackupStatus::Completed)
    );
    w.assert_images_match(a.backup_id.as_str()).await;
    let backups = w.all_backups().await;
    assert_eq!(
        backups.len(),
        1,
        "B started nothing at the hub: {backups:?}"
    );
    assert!(w.snapshots_left().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vcenter_run_records_its_snapshot_at_the_hub_while_it_runs() {
    let w = World::start().await;
    w.write(2000, 0, 13, 65536);
    let run = w.run_held().await;
    let running = w.all_backups().await;
    let id = running[0].backup_id.clone();

    let owned = w.hub_client().backup_snapshot(&id).await.unwrap();

    let done = w.release(run).await;
    let after = w.hub_client().backup_snapshot(&id).await.unwrap();
    assert_eq!(done.backup_id, id);
    assert!(
        owned
            .snapshot_moref
            .as_deref()
            .is_some_and(|m| m.starts_with("snapshot-")),
        "{owned:?}"
    );
    assert_eq!(
        after.snapshot_moref, None,
        "a completed backup owns no snapshot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vcenter_leftover_snapshot_of_a_failed_run_is_removed_by_the_next_run() {
    let w = World::start().await;
    w.write(2000, 0, 14, 65536);
    w.sim
        .add_user_snapshot(&w.vm, "sendense-backup-vm1-20261125T000000-000001");

    let full = w.backup(BackupType::Auto).await.unwrap();

    assert_eq!(full.status, BackupStatus::Completed);
    assert!(w.snapshots_left().is_empty());
    assert_eq!(w.sim.stats().snapshots_removed, 2);
    w.assert_images_match(full.backup_id.as_str()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vcenter_incremental_cbt_refusing_base_fails_it_at_the_hub_and_runs_a_full_instead() {
    let w = World::start().await;
    w.write(2000, 0, 15, 200_000);
    let full = w.backup(BackupType::Auto).await.unwrap();
    w.write(2001, 0, 16, 65536);
    // The VM's change ids look fine, so the hub starts an incremental; the snapshot's query on
    // the stored change id then faults (a CBT reset vCenter reports only there).
    w.sim.fail_next(
        "QueryChangedDiskAreas",
        "FileFault",
        "change tracking reset",
    );

    let again = w.backup(BackupType::Auto).await.unwrap();

    assert_eq!(
        (again.backup_type, again.status),
        (BackupType::Full, BackupStatus::Completed)
    );
    let backups = w.all_backups().await;
    let states: Vec<_> = backups.iter().map(|b| (b.backup_type, b.status)).collect();
    assert_eq!(
        states,
        vec![
            (BackupType::Full, BackupStatus::Completed),
            (BackupType::Incremental, BackupStatus::Failed),
            (BackupType::Full, BackupStatus::Completed),
        ]
    );
    let reason = backups[1].failure_reason.as_deref().unwrap();
    assert!(
        reason.contains("restarted as a full") && reason.contains("QueryChangedDiskAreas"),
        "{reason}"
    );
    assert_ne!(again.backup_id, full.backup_id);
    w.assert_images_match(again.backup_id.as_str()).await;
    let st = w.sim.stats();
    assert_eq!(
        (
            st.snapshots_created,
            st.snapshots_removed,
            w.snapshots_left().len()
        ),
        (2, 2, 0),
        "the full reads the incremental's snapshot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vcenter_incremental_with_a_disk_new_to_the_vm_sends_that_disk_whole() {
    let w = World::start().await;
    w.write(2000, 0, 17, 100_000);
    let full = w.backup(BackupType::Auto).await.unwrap();
    let key = w.sim.add_disk(&w.vm, &DiskSpec::flat(2 * MIB)).unwrap();
    w.write(key, 0, 18, 300_000);
    w.write(2000, MIB, 19, 4096);

    let inc = w.backup(BackupType::Auto).await.unwrap();

    assert_eq!(
        (inc.backup_type, inc.status),
        (BackupType::Incremental, BackupStatus::Completed),
        "a new disk is no reason for a full of the VM"
    );
    let sent: Vec<_> = inc
        .disks
        .iter()
        .map(|d| (d.disk_key.get(), d.bytes_sent))
        .collect();
    assert!(
        sent.contains(&(2000, 65536)) || sent.contains(&(2000, 4096)),
        "{sent:?}"
    );
    assert!(
        sent.iter()
            .any(|&(k, b)| i32::try_from(k).unwrap() == key && b >= 300_000),
        "{sent:?}"
    );
    let at_hub = w.hub_client().backup(&inc.backup_id).await.unwrap();
    let new_disk = at_hub
        .disks
        .iter()
        .find(|d| i32::try_from(d.disk_key.get()).unwrap() == key)
        .unwrap();
    assert_eq!(new_disk.parent_change_id, None);
    assert_eq!(at_hub.parent_backup_id.as_ref(), Some(&full.backup_id));
    w.assert_images_match(inc.backup_id.as_str()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_route_refuses_a_backup_not_running_and_a_bad_moref() {
    let w = World::start().await;
    let done = w.backup(BackupType::Auto).await.unwrap();
    let o = w.hub_options();
    let tls = sendense_client::hub::tls_config(&o.ca_file).unwrap();
    let http = reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .build()
        .unwrap();
    let token = std::fs::read_to_string(&o.token_file).unwrap();
    let post = |body: serde_json::Value| {
        http.post(format!(
            "{}/api/v1/backups/{}/snapshot",
            o.url, done.backup_id
        ))
        .bearer_auth(token.trim())
        .json(&body)
        .send()
    };

    let ended = post(serde_json::json!({"snapshot_moref": "snapshot-9"}))
        .await
        .unwrap();
    let bad = post(serde_json::json!({"snapshot_moref": "snap shot"}))
        .await
        .unwrap();

    assert_eq!(ended.status().as_u16(), 409);
    assert_eq!(bad.status().as_u16(), 400);
    assert!(bad.text().await.unwrap().contains("snapshot_moref"));
}
