//! The hub end to end in one process: real HTTPS API (reqwest with the
//! hub's CA), real NBD over TLS (our client and libnbd's nbdcopy), the real
//! catalog, and qemu-img checking every repository file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use sendense_hub::daemon::{self, ClientCerts, HubConfig, RunningHub};
use sendense_nbd::{Client, ClientOptions, ZeroFlags};
use sendense_types::{
    Backup, BackupId, BackupStatus, BackupType, Chain, CompleteBackupRequest, CompleteDisk,
    RestoreExports, Vm,
};
use serde_json::{Value, json};

use crate::support::{fill_random, qemu_img_ok};

pub(crate) const MIB: u64 = 1 << 20;

pub(crate) struct Hub {
    pub(crate) running: Option<RunningHub>,
    pub(crate) data: tempfile::TempDir,
    pub(crate) http: reqwest::Client,
    pub(crate) base: String,
    pub(crate) token: String,
    pub(crate) tls: Arc<rustls::ClientConfig>,
}

/// The test's NBD client certificate folder (QEMU layout) inside the data folder.
const CLIENT_DIR: &str = "test-client";

impl Hub {
    pub(crate) async fn start() -> Self {
        let data = tempfile::tempdir().unwrap();
        Self::start_in(data, Duration::from_secs(600)).await
    }

    pub(crate) async fn start_in(data: tempfile::TempDir, idle: Duration) -> Self {
        Self::start_with(data, idle, idle).await
    }

    /// A hub over `data` with these watchdog timers.
    pub(crate) async fn start_with(
        data: tempfile::TempDir,
        idle: Duration,
        disconnect_grace: Duration,
    ) -> Self {
        Self::start_configured(data, idle, disconnect_grace, None, None).await
    }

    /// A hub running at most `max` jobs at once across its agents.
    pub(crate) async fn start_with_max_running(max: u32) -> Self {
        let data = tempfile::tempdir().unwrap();
        let idle = Duration::from_secs(600);
        Self::start_configured(data, idle, idle, None, Some(max)).await
    }

    /// A hub notifying `webhook`.
    pub(crate) async fn start_with_webhook(webhook: sendense_hub::notify::WebhookConfig) -> Self {
        let data = tempfile::tempdir().unwrap();
        let idle = Duration::from_secs(600);
        Self::start_configured(data, idle, idle, Some(webhook), None).await
    }

    async fn start_configured(
        data: tempfile::TempDir,
        idle: Duration,
        disconnect_grace: Duration,
        webhook: Option<sendense_hub::notify::WebhookConfig>,
        max_running_jobs: Option<u32>,
    ) -> Self {
        let config = HubConfig {
            data_dir: data.path().to_path_buf(),
            api_listen: "127.0.0.1:0".parse().unwrap(),
            nbd_listen: "127.0.0.1:0".parse().unwrap(),
            public_host: Some("localhost".into()),
            idle_timeout: idle,
            disconnect_grace,
            nbd_client_certs: ClientCerts::Required,
            webhook,
            max_running_jobs,
            repository: sendense_hub::RepositoryConfig::default(),
        };
        let running = daemon::start(config).await.unwrap();
        let api_tls =
            sendense_nbd::tls::client_config(&data.path().join("tls/ca-cert.pem"), None).unwrap();
        // The NBD port requires a certificate the hub's CA issued (issue #11).
        sendense_hub::tls::issue_client_folder(
            &data.path().join("tls"),
            "hub-api-test",
            &data.path().join(CLIENT_DIR),
        )
        .unwrap();
        let tls = sendense_nbd::tls::client_config_from_dir(&data.path().join(CLIENT_DIR)).unwrap();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*api_tls).clone())
            .build()
            .unwrap();
        let token = std::fs::read_to_string(data.path().join("api.token"))
            .unwrap()
            .trim()
            .to_owned();
        let base = format!("https://localhost:{}", running.api_addr.port());
        Self {
            running: Some(running),
            data,
            http,
            base,
            token,
            tls,
        }
    }

    pub(crate) async fn stop(mut self) -> tempfile::TempDir {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
        self.data
    }

    pub(crate) fn repo(&self) -> PathBuf {
        self.data.path().join("repository")
    }

    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            if text.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).unwrap()
            },
        )
    }

    pub(crate) async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub(crate) async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub(crate) async fn register(&self, vm: &str, sizes: &[u64]) {
        let disks: Vec<Value> = sizes
            .iter()
            .enumerate()
            .map(|(i, s)| json!({"key": 2000 + i, "capacity_bytes": s}))
            .collect();
        let (status, body) = self
            .post("/api/v1/vms", json!({"name": vm, "disks": disks}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    /// Starts a backup; the answer as the API's [`Backup`].
    pub(crate) async fn start_backup(&self, vm: &str, kind: &str) -> Backup {
        typed(self.start_backup_json(vm, kind).await)
    }

    /// Starts a backup; the answer as JSON, to check the field names of DESIGN.md.
    pub(crate) async fn start_backup_json(&self, vm: &str, kind: &str) -> Value {
        let (status, body) = self
            .post(
                "/api/v1/backups",
                json!({"vm_name": vm, "backup_type": kind}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    /// Completes `backup` with change id `change` on every disk; the completed [`Backup`].
    pub(crate) async fn complete(&self, backup: &Backup, change: &str) -> Backup {
        let id = &backup.backup_id;
        let (status, body) = self
            .post(
                &format!("/api/v1/backups/{id}/complete"),
                serde_json::to_value(completion(backup, change)).unwrap(),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let done: Backup = typed(body);
        assert_eq!(done.status, BackupStatus::Completed);
        done
    }

    /// `GET path` answered 200, as `T`.
    pub(crate) async fn get_as<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        let (status, body) = self.get(path).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        typed(body)
    }

    /// `GET /api/v1/backups/{id}`.
    pub(crate) async fn backup(&self, id: &BackupId) -> Backup {
        self.get_as(&format!("/api/v1/backups/{id}")).await
    }

    pub(crate) async fn nbd(&self, export: &str) -> Client {
        let port = self.running.as_ref().unwrap().nbd_addr.port();
        let opts = ClientOptions {
            tls: Some((Arc::clone(&self.tls), "localhost".into())),
            export_name: export.to_owned(),
            ..ClientOptions::default()
        };
        Client::connect(("127.0.0.1", port), opts).await.unwrap()
    }
}

/// A source disk kept as a local raw file; writes go to it and to the hub.
struct Disk {
    path: PathBuf,
    size: u64,
}

impl Disk {
    fn new(dir: &Path, name: &str, size: u64) -> Self {
        let path = dir.join(name);
        std::fs::File::create(&path).unwrap().set_len(size).unwrap();
        Self { path, size }
    }

    /// Writes random data at `offset` locally and through `client`.
    async fn write(&self, client: &Client, offset: u64, len: usize, seed: u64) {
        let mut buf = vec![0u8; len];
        fill_random(&mut buf, seed);
        std::os::unix::fs::FileExt::write_all_at(
            &std::fs::OpenOptions::new()
                .write(true)
                .open(&self.path)
                .unwrap(),
            &buf,
            offset,
        )
        .unwrap();
        client.write(offset, &buf, false).await.unwrap();
    }

    /// Zeroes locally and with WRITE_ZEROES through `client`.
    async fn zero(&self, client: &Client, offset: u64, len: u32) {
        let zeros = vec![0u8; len as usize];
        std::os::unix::fs::FileExt::write_all_at(
            &std::fs::OpenOptions::new()
                .write(true)
                .open(&self.path)
                .unwrap(),
            &zeros,
            offset,
        )
        .unwrap();
        client
            .write_zeroes(offset, len, ZeroFlags::default())
            .await
            .unwrap();
    }

    fn snapshot(&self, to: &Path) -> PathBuf {
        std::fs::copy(&self.path, to).unwrap();
        to.to_path_buf()
    }
}

/// `qemu-img compare` says the qcow2 `image` (with its backing chain) reads like the raw file.
fn assert_qcow2_matches_raw(image: &Path, raw: &Path) {
    qemu_img_ok(&["compare", "-f", "raw", "-F", "qcow2", s(raw), s(image)]);
}

pub(crate) fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A JSON answer as the API type `T`.
pub(crate) fn typed<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

/// A completion of every disk of `backup` with change id `change`.
pub(crate) fn completion(backup: &Backup, change: &str) -> CompleteBackupRequest {
    CompleteBackupRequest::new(
        backup
            .disks
            .iter()
            .map(|d| CompleteDisk {
                disk_key: d.disk_key,
                change_id: Some(change.parse().unwrap()),
                bytes_transferred: 0,
            })
            .collect(),
    )
    .unwrap()
}

/// The write export of disk `i` of a running backup.
pub(crate) fn export_of(backup: &Backup, i: usize) -> String {
    backup.disks[i]
        .export_name
        .as_ref()
        .unwrap()
        .as_str()
        .to_owned()
}

/// The repository file of disk `i` of `backup`.
pub(crate) fn file_of(hub: &Hub, backup: &Backup, i: usize) -> PathBuf {
    hub.repo().join(backup.disks[i].file.as_ref().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_then_incremental_then_restore_matches_source_at_each_point() {
    let hub = Hub::start().await;
    let work = tempfile::tempdir().unwrap();
    let disks = [
        Disk::new(work.path(), "d0.raw", 24 * MIB),
        Disk::new(work.path(), "d1.raw", 8 * MIB + 4096),
    ];
    hub.register("vm1", &[disks[0].size, disks[1].size]).await;

    // Full backup: scattered data through our NBD client over TLS.
    let full = hub.start_backup("vm1", "full").await;
    assert_eq!(full.backup_type, BackupType::Full);
    for (i, d) in disks.iter().enumerate() {
        assert!(
            full.disks[i]
                .nbd_uri
                .as_deref()
                .unwrap()
                .starts_with("nbds://localhost:")
        );
        let c = hub.nbd(&export_of(&full, i)).await;
        d.write(&c, 0, 3 << 20, 10 + i as u64).await;
        d.write(&c, 5 * MIB + 512, 700_000, 20 + i as u64).await;
        c.flush().await.unwrap();
        c.disconnect().await.unwrap();
    }
    let full_state: Vec<PathBuf> = disks
        .iter()
        .enumerate()
        .map(|(i, d)| d.snapshot(&work.path().join(format!("full{i}.raw"))))
        .collect();
    let full = hub.complete(&full, "52 aa/1").await;
    for (i, state) in full_state.iter().enumerate() {
        let img = file_of(&hub, &full, i);
        qemu_img_ok(&["check", s(&img)]);
        assert_qcow2_matches_raw(&img, state);
    }

    // Incremental: change a little, zero a range that held data.
    // Once on the wire: the field names and values of DESIGN.md's backup answer.
    let inc = hub.start_backup_json("vm1", "auto").await;
    assert_eq!(inc["backup_type"], "incremental");
    assert_eq!(inc["parent_backup_id"], full.backup_id.as_str());
    assert_eq!(inc["disks"][0]["parent_change_id"], "52 aa/1");
    let inc: Backup = typed(inc);
    let c = hub.nbd(&export_of(&inc, 0)).await;
    disks[0].write(&c, 2 * MIB, 128 << 10, 99).await;
    disks[0].zero(&c, 0, 1 << 20).await;
    c.flush().await.unwrap();
    c.disconnect().await.unwrap();
    let progress = hub.backup(&inc.backup_id).await;
    assert_eq!(progress.disks[0].bytes_written, (128 << 10) + (1 << 20));
    let inc = hub.complete(&inc, "52 aa/2").await;
    let inc_file = file_of(&hub, &inc, 0);
    qemu_img_ok(&["check", s(&inc_file)]);
    assert_qcow2_matches_raw(&inc_file, &disks[0].path);
    let info: Value =
        serde_json::from_str(&qemu_img_ok(&["info", "--output=json", s(&inc_file)])).unwrap();
    assert_eq!(
        info["backing-filename"],
        format!("{}.qcow2", full.backup_id)
    );
    let size_on_disk = std::fs::metadata(&inc_file).unwrap().len();
    assert!(
        size_on_disk < 2 * MIB,
        "incremental holds only changes: {size_on_disk}"
    );

    // Chain listing.
    let chain: Chain = hub.get_as("/api/v1/backups/chain/vm1").await;
    let ids: Vec<&BackupId> = chain.backups.iter().map(|b| &b.backup_id).collect();
    assert_eq!(ids, vec![&full.backup_id, &inc.backup_id]);

    // Restore the full point through a read-only export with qemu-img over TLS.
    let id = &full.backup_id;
    let (status, exports) = hub
        .post(&format!("/api/v1/backups/{id}/exports"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{exports}");
    let exports: RestoreExports = typed(exports);
    let port = hub.running.as_ref().unwrap().nbd_addr.port();
    let name = exports.disks[0].export_name.as_str();
    let restored = work.path().join("restored.raw");
    let object = format!(
        "tls-creds-x509,id=tls0,dir={},endpoint=client",
        s(&hub.data.path().join(CLIENT_DIR))
    );
    let opts = format!(
        "driver=nbd,server.type=inet,server.host=localhost,server.port={port},export={name},tls-creds=tls0"
    );
    qemu_img_ok(&[
        "convert",
        "--object",
        &object,
        "--image-opts",
        &opts,
        "-O",
        "raw",
        s(&restored),
    ]);
    assert!(std::fs::read(&restored).unwrap() == std::fs::read(&full_state[0]).unwrap());
    let (status, _) = hub
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/backups/{id}/exports"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdcopy_into_write_export_over_tls_completes_clean() {
    let hub = Hub::start().await;
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src.raw");
    let mut data = vec![0u8; 16 << 20];
    fill_random(&mut data, 5);
    std::fs::write(&src, &data).unwrap();
    hub.register("vm2", &[16 * MIB]).await;
    let b = hub.start_backup("vm2", "full").await;
    let uri = format!(
        "{}?tls-certificates={}",
        b.disks[0].nbd_uri.as_deref().unwrap(),
        s(&hub.data.path().join(CLIENT_DIR))
    );
    let out = std::process::Command::new("nbdcopy")
        .args(["--flush", "--connections=4", s(&src), &uri])
        .output()
        .expect("nbdcopy (libnbd-bin) is required; scripts/test.sh installs it");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done = hub.complete(&b, "x/1").await;
    let img = file_of(&hub, &done, 0);
    qemu_img_ok(&["check", s(&img)]);
    assert_qcow2_matches_raw(&img, &src);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_backup_leaves_chain_and_earlier_files_untouched() {
    let hub = Hub::start().await;
    hub.register("vm3", &[4 * MIB]).await;
    let full = hub.start_backup("vm3", "full").await;
    let c = hub.nbd(&export_of(&full, 0)).await;
    c.write(0, &[7u8; 65536], false).await.unwrap();
    c.disconnect().await.unwrap();
    let full = hub.complete(&full, "u/1").await;
    let full_file = file_of(&hub, &full, 0);
    let before = std::fs::read(&full_file).unwrap();

    let inc = hub.start_backup("vm3", "incremental").await;
    let c = hub.nbd(&export_of(&inc, 0)).await;
    c.write(0, &[9u8; 65536], false).await.unwrap();
    let id = &inc.backup_id;
    let (status, failed) = hub
        .post(
            &format!("/api/v1/backups/{id}/fail"),
            json!({"reason": "source vanished"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{failed}");
    let failed: Backup = typed(failed);
    assert_eq!(failed.status, BackupStatus::Failed);
    assert_eq!(failed.failure_reason.as_deref(), Some("source vanished"));
    assert!(
        c.write(0, &[1u8; 512], false).await.is_err(),
        "export must be closed"
    );

    assert_eq!(std::fs::read(&full_file).unwrap(), before);
    let folder = full_file.parent().unwrap();
    let names: Vec<String> = std::fs::read_dir(folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 1, "partial files left: {names:?}");
    let chain: Chain = hub.get_as("/api/v1/backups/chain/vm3").await;
    assert_eq!(chain.backups.len(), 1);
    // The next incremental builds on the full again.
    let next = hub.start_backup("vm3", "incremental").await;
    assert_eq!(next.parent_backup_id, Some(full.backup_id));
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_statuses_are_json_with_the_right_codes() {
    let hub = Hub::start().await;
    // 401: missing and wrong token.
    let resp = hub
        .http
        .get(format!("{}/api/v1/vms", hub.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = hub
        .http
        .get(format!("{}/api/v1/vms", hub.base))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");
    // Health needs no token.
    let resp = hub
        .http
        .get(format!("{}/api/v1/health", hub.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // 400: malformed JSON, unknown fields, unsafe names, absurd sizes.
    let resp = hub
        .http
        .post(format!("{}/api/v1/vms", hub.base))
        .bearer_auth(&hub.token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let (st, _) = hub
        .post(
            "/api/v1/vms",
            json!({"name": "a", "disks": [{"key": 2000, "capacity_bytes": 512}], "x": 1}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, _) = hub
        .post(
            "/api/v1/vms",
            json!({"name": "../etc", "disks": [{"key": 2000, "capacity_bytes": 512}]}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, _) = hub
        .post(
            "/api/v1/vms",
            json!({"name": "big", "disks": [{"key": 2000, "capacity_bytes": 1u64 << 62}]}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, body) = hub.get("/api/v1/backups/..%2F..%2Fetc").await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");

    // 404: unknown VM and backup.
    let (st, body) = hub
        .post(
            "/api/v1/backups",
            json!({"vm_name": "ghost", "backup_type": "full"}),
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "not_found");
    let (st, _) = hub
        .get("/api/v1/backups/backup-ghost-20260101T000000-abcdef")
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    // 409: incremental without full; second running backup; delete with dependants.
    hub.register("vm4", &[MIB]).await;
    let (st, body) = hub
        .post(
            "/api/v1/backups",
            json!({"vm_name": "vm4", "backup_type": "incremental"}),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{body}");
    let b = hub.start_backup("vm4", "full").await;
    let (st, _) = hub
        .post(
            "/api/v1/backups",
            json!({"vm_name": "vm4", "backup_type": "full"}),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT);
    // 400: completion naming an unknown disk, or missing one; nothing changes.
    let id = &b.backup_id;
    let (st, _) = hub
        .post(
            &format!("/api/v1/backups/{id}/complete"),
            json!({"disks": [{"disk_key": 2999, "bytes_transferred": 0}]}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, _) = hub
        .post(
            &format!("/api/v1/backups/{id}/complete"),
            json!({"disks": []}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let full = hub.complete(&b, "c/1").await;
    let inc = hub.start_backup("vm4", "incremental").await;
    hub.complete(&inc, "c/2").await;
    let fid = &full.backup_id;
    let (st, body) = hub
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/backups/{fid}"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains(inc.backup_id.as_str()),
        "{body}"
    );
    // Deleting the leaf works and removes its file.
    let iid = &inc.backup_id;
    let (st, _) = hub
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/backups/{iid}"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert!(!file_of(&hub, &inc, 0).exists());
    // The OpenAPI document is served.
    let (st, doc) = hub.get("/api/v1/openapi.json").await;
    assert_eq!(st, StatusCode::OK);
    assert!(doc["paths"]["/api/v1/backups"].is_object());
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_past_disk_end_is_refused_and_backup_still_completes() {
    let hub = Hub::start().await;
    hub.register("vm5", &[MIB]).await;
    let b = hub.start_backup("vm5", "full").await;
    let c = hub.nbd(&export_of(&b, 0)).await;
    assert!(c.write(MIB - 512, &[1u8; 4096], false).await.is_err());
    c.write(0, &[2u8; 4096], false).await.unwrap();
    c.disconnect().await.unwrap();
    let done = hub.complete(&b, "p/1").await;
    let image = file_of(&hub, &done, 0);
    qemu_img_ok(&["check", s(&image)]);
    // The refused write left nothing behind; the accepted one is there.
    let work = tempfile::tempdir().unwrap();
    let expected = work.path().join("expected.raw");
    let mut bytes = vec![0u8; 1 << 20];
    bytes[..4096].fill(2);
    std::fs::write(&expected, &bytes).unwrap();
    assert_qcow2_matches_raw(&image, &expected);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_vms_back_up_at_once_and_each_image_matches_its_source() {
    let hub = Arc::new(Hub::start().await);
    let work = Arc::new(tempfile::tempdir().unwrap());
    for vm in ["va", "vb", "vc"] {
        hub.register(vm, &[8 * MIB, 4 * MIB]).await;
    }
    let mut tasks = Vec::new();
    for (n, vm) in ["va", "vb", "vc"].into_iter().enumerate() {
        let hub = Arc::clone(&hub);
        let work = Arc::clone(&work);
        tasks.push(tokio::spawn(async move {
            let b = hub.start_backup(vm, "full").await;
            let mut sources = Vec::new();
            for (i, size) in [8 * MIB, 4 * MIB].into_iter().enumerate() {
                let disk = Disk::new(work.path(), &format!("{vm}-{i}.raw"), size);
                let c = hub.nbd(&export_of(&b, i)).await;
                disk.write(&c, MIB, 2 << 20, n as u64 * 10 + i as u64).await;
                c.disconnect().await.unwrap();
                sources.push(disk.path);
            }
            (hub.complete(&b, "m/1").await, sources)
        }));
    }
    for t in tasks {
        let (done, sources) = t.await.unwrap();
        for (i, source) in sources.iter().enumerate() {
            let image = file_of(&hub, &done, i);
            qemu_img_ok(&["check", s(&image)]);
            // Each VM's data landed in its own images, whole: three writers at once mixed nothing.
            assert_qcow2_matches_raw(&image, source);
        }
    }
    let hub = Arc::try_unwrap(hub).ok().unwrap();
    hub.stop().await;
}

#[tokio::test(start_paused = true)]
async fn vanished_client_backup_is_failed_after_idle_timeout_and_restart_recovers() {
    let data = tempfile::tempdir().unwrap();
    let hub = Hub::start_in(data, Duration::from_millis(400)).await;
    hub.register("vm6", &[MIB]).await;
    let b = hub.start_backup("vm6", "full").await;
    let id = b.backup_id.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut poll = tokio::time::interval(Duration::from_millis(100));
    loop {
        poll.tick().await;
        let now = hub.backup(&id).await;
        if now.status == BackupStatus::Failed {
            assert!(
                now.failure_reason
                    .as_deref()
                    .unwrap()
                    .contains("no NBD connection"),
                "{now:?}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "idle backup never failed: {now:?}"
        );
    }
    let data = hub.stop().await;
    // A restart over the same data folder keeps the catalog and token.
    let hub = Hub::start_in(data, Duration::from_secs(600)).await;
    let vms: Vec<Vm> = hub.get_as("/api/v1/vms").await;
    assert_eq!(vms[0].name.as_str(), "vm6");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_answer_prometheus_text_of_backups_chains_and_space() {
    let hub = Hub::start().await;
    hub.register("vm-m", &[4 * MIB]).await;
    let full = hub.start_backup("vm-m", "full").await;
    let c = hub.nbd(&export_of(&full, 0)).await;
    c.write(0, &[7u8; 65536], false).await.unwrap();
    c.disconnect().await.unwrap();
    hub.complete(&full, "m/1").await;
    let inc = hub.start_backup("vm-m", "incremental").await;
    let inc = hub.complete(&inc, "m/2").await;
    hub.register("vm-n", &[MIB]).await;
    let failed = hub.start_backup("vm-n", "full").await;
    let (status, body) = hub
        .post(
            &format!("/api/v1/backups/{}/fail", failed.backup_id),
            json!({"reason": "test"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let url = format!("{}/api/v1/metrics", hub.base);

    let unauthorized = hub.http.get(&url).send().await.unwrap();
    let resp = hub
        .http
        .get(&url)
        .bearer_auth(&hub.token)
        .send()
        .await
        .unwrap();

    assert_eq!(unauthorized.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.status(), StatusCode::OK);
    let content_type = resp.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = resp.text().await.unwrap();
    let completed_at = inc.completed_at.unwrap().unix_seconds();
    for line in [
        "# TYPE sendense_chain_length gauge".to_owned(),
        "sendense_chain_length{vm=\"vm-m\"} 2".to_owned(),
        "sendense_chain_length{vm=\"vm-n\"} 0".to_owned(),
        "sendense_backups{status=\"completed\"} 2".to_owned(),
        "sendense_backups{status=\"failed\"} 1".to_owned(),
        format!("sendense_last_success_timestamp_seconds{{vm=\"vm-m\"}} {completed_at}"),
        "sendense_backup_written_bytes 65536".to_owned(),
        "# TYPE sendense_jobs gauge".to_owned(),
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
    }
    assert!(!text.contains("vm=\"vm-n\"} 1"), "{text}");
    let capacity = text
        .lines()
        .find_map(|l| l.strip_prefix("sendense_repository_capacity_bytes "))
        .unwrap();
    assert!(capacity.parse::<u64>().unwrap() > 0, "{text}");
    hub.stop().await;
}
