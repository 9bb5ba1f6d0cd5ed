//! Issue #11, trust: the real `sendense-hub serve` binary requires NBD client
//! certificates its CA issued (`sendense-hub cert issue`), by default; our
//! client, `nbdinfo`, `nbdcopy` and `qemu-img` work with an issued folder and
//! are refused without one or with one from another CA; `--nbd-client-certs
//! optional` lets CA-only clients in. Everything under the data folder is
//! private to the hub's user (files 0600, folders 0700). 300 idle peers on the
//! NBD port do not keep a real backup out.

use std::fs;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

use crate::support::{
    Serve, assert_same, client, client_tls, ok, qemu_img, s, serve_wrapper, write_random,
};

const MIB: u64 = 1 << 20;

serve_wrapper!(
    /// A running `sendense-hub serve` (see [`Serve`]) with this suite's helpers.
    Hub
);

impl Hub {
    /// Starts a hub on `data` with `extra` serve arguments and waits until it is ready.
    fn start(data: &Path, extra: &[&str]) -> Self {
        Self(Serve::start(data, extra, "info"))
    }

    /// `sendense-client backup` of `disk` as disk 2000 of `vm`, full, trusting the hub with
    /// `trust` (`["--ca", FILE]` or `["--tls-dir", DIR]`).
    fn backup(&self, vm: &str, disk: &Path, trust: [&str; 2]) -> Output {
        client()
            .args(["backup", "--hub", &self.api])
            .args(trust)
            .args([
                "--token-file",
                s(&self.token()),
                "--vm",
                vm,
                "--type",
                "full",
            ])
            .arg("--disk")
            .arg(format!("2000={}", s(disk)))
            .args(["--json", "--log-format", "json"])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// A REST call with the token: (status, JSON body).
    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, text) = self.raw(method, path, body);
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Registers `vm` with one disk (2000) of `size` bytes and starts a full backup of it.
    fn start_backup(&self, vm: &str, size: u64) -> Value {
        let (status, body) = self.call(
            reqwest::Method::POST,
            "/api/v1/vms",
            Some(json!({"name": vm, "disks": [{"key": 2000, "capacity_bytes": size}]})),
        );
        assert_eq!(status, 201, "{body}");
        let (status, body) = self.call(
            reqwest::Method::POST,
            "/api/v1/backups",
            Some(json!({"vm_name": vm, "backup_type": "full"})),
        );
        assert_eq!(status, 201, "{body}");
        body
    }
}

/// A folder holding only the hub's CA certificate: a client that trusts the hub but has no
/// certificate of its own.
fn ca_only(data: &Path, work: &Path) -> PathBuf {
    let dir = work.join("ca-only");
    fs::create_dir_all(&dir).unwrap();
    fs::copy(data.join("tls/ca-cert.pem"), dir.join("ca-cert.pem")).unwrap();
    dir
}

/// A folder trusting the hub's CA but holding a client certificate another hub's CA issued.
fn foreign(data: &Path, work: &Path) -> PathBuf {
    let other_tls = work.join("other-hub-tls");
    sendense_nbd::tls::ensure_certificates(&other_tls, &[]).unwrap();
    let dir = work.join("foreign");
    sendense_hub::tls::issue_client_folder(&other_tls, "intruder", &dir).unwrap();
    fs::copy(data.join("tls/ca-cert.pem"), dir.join("ca-cert.pem")).unwrap();
    dir
}

/// Runs an NBD tool (`nbdinfo`, `nbdcopy`); panics with a clear message when missing.
fn nbd_tool(tool: &str, args: &[&str]) -> Output {
    Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{tool} is required ({e}); install libnbd-bin"))
}

/// `URI?tls-certificates=DIR`, as libnbd takes a QEMU-layout folder.
fn with_certs(uri: &str, dir: &Path) -> String {
    format!("{uri}?tls-certificates={}", s(dir))
}

/// The backup id of a client's `--json` summary.
fn backup_id(out: &Output) -> String {
    let summary: Value = serde_json::from_str(&ok(out)).unwrap();
    summary["backup_id"].as_str().unwrap().to_owned()
}

/// Mode bits (permissions only) of `path`, not following a symbolic link.
fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Every folder and file under `root` (and `root`) whose mode is not 0700 (folders) or 0600
/// (files), with its mode.
fn loose_modes(root: &Path) -> Vec<String> {
    let mut loose = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        if mode(&dir) != 0o700 {
            loose.push(format!("{} {:o}", dir.display(), mode(&dir)));
        }
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                pending.push(path);
            } else if mode(&path) != 0o600 {
                loose.push(format!("{} {:o}", path.display(), mode(&path)));
            }
        }
    }
    loose
}

/// The port of an `nbds://HOST:PORT/NAME` URI.
fn hub_port(uri: &str) -> u16 {
    let rest = uri.strip_prefix("nbds://").unwrap();
    let authority = rest.split('/').next().unwrap();
    authority.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn our_client_without_certificate_is_refused_and_with_issued_certificate_backs_up() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let hub = Hub::start(data.path(), &[]);
    let disk = work.path().join("disk.raw");
    write_random(&disk, 0, MIB as usize, 7);
    let ca = data.path().join("tls/ca-cert.pem");

    let refused = hub.backup("vm1", &disk, ["--ca", s(&ca)]);
    let issued = hub.backup("vm1", &disk, ["--tls-dir", s(&client_tls(data.path()))]);

    assert!(
        !refused.status.success(),
        "a client without a certificate backed up: {}",
        String::from_utf8_lossy(&refused.stdout)
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("sendense-hub cert issue") && stderr.contains("--tls-dir"),
        "the refusal does not name the fix: {stderr}"
    );
    let id = backup_id(&issued);
    assert_same(&hub.image("vm1", 2000, &id), "qcow2", &disk, "raw");
}

#[test]
fn nbdinfo_without_certificate_or_with_another_cas_is_refused_and_issued_one_works() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let hub = Hub::start(data.path(), &[]);
    let backup = hub.start_backup("vm2", 4 * MIB);
    let uri = backup["disks"][0]["nbd_uri"].as_str().unwrap().to_owned();

    let no_cert = nbd_tool(
        "nbdinfo",
        &[&with_certs(&uri, &ca_only(data.path(), work.path()))],
    );
    let other_ca = nbd_tool(
        "nbdinfo",
        &[&with_certs(&uri, &foreign(data.path(), work.path()))],
    );
    let issued = nbd_tool("nbdinfo", &[&with_certs(&uri, &client_tls(data.path()))]);

    assert_eq!(
        (
            no_cert.status.success(),
            other_ca.status.success(),
            issued.status.success()
        ),
        (false, false, true),
        "issued: {}",
        String::from_utf8_lossy(&issued.stderr)
    );
}

#[test]
fn nbdcopy_writes_and_qemu_img_reads_a_restore_export_with_an_issued_certificate() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let hub = Hub::start(data.path(), &[]);
    let certs = client_tls(data.path());
    let src = work.path().join("src.raw");
    write_random(&src, 0, 4 * MIB as usize, 11);
    let backup = hub.start_backup("vm3", 4 * MIB);
    let id = backup["backup_id"].as_str().unwrap().to_owned();
    let uri = backup["disks"][0]["nbd_uri"].as_str().unwrap().to_owned();
    ok(&nbd_tool(
        "nbdcopy",
        &["--flush", s(&src), &with_certs(&uri, &certs)],
    ));
    let (status, body) = hub.call(
        reqwest::Method::POST,
        &format!("/api/v1/backups/{id}/complete"),
        Some(json!({"disks": [{"disk_key": 2000, "change_id": "x/1", "bytes_transferred": 4 * MIB}]})),
    );
    assert_eq!(status, 200, "{body}");
    let (status, exports) = hub.call(
        reqwest::Method::POST,
        &format!("/api/v1/backups/{id}/exports"),
        Some(json!({})),
    );
    assert_eq!(status, 200, "{exports}");
    let port = hub_port(exports["disks"][0]["nbd_uri"].as_str().unwrap());
    let name = exports["disks"][0]["export_name"].as_str().unwrap();
    let restored = work.path().join("restored.raw");

    let object = format!("tls-creds-x509,id=tls0,dir={},endpoint=client", s(&certs));
    let opts = format!(
        "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},export={name},tls-creds=tls0"
    );
    ok(&qemu_img(&[
        "convert",
        "--object",
        &object,
        "--image-opts",
        &opts,
        "-O",
        "raw",
        s(&restored),
    ]));

    assert_eq!(fs::read(&restored).unwrap(), fs::read(&src).unwrap());
}

#[test]
fn optional_client_certs_accept_a_client_that_only_trusts_the_ca() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let hub = Hub::start(data.path(), &["--nbd-client-certs", "optional"]);
    let disk = work.path().join("disk.raw");
    write_random(&disk, 0, MIB as usize, 3);

    let out = hub.backup(
        "vm4",
        &disk,
        ["--ca", s(&data.path().join("tls/ca-cert.pem"))],
    );

    let id = backup_id(&out);
    assert!(id.starts_with("backup-vm4-"), "{id}");
}

#[test]
fn data_folder_is_private_after_a_backup() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let hub = Hub::start(data.path(), &[]);
    let disk = work.path().join("disk.raw");
    write_random(&disk, 0, MIB as usize, 5);
    backup_id(&hub.backup("vm5", &disk, ["--tls-dir", s(&client_tls(data.path()))]));

    let loose = loose_modes(data.path());

    assert!(loose.is_empty(), "not private: {loose:?}");
}

#[test]
fn data_folder_loosened_while_stopped_is_private_again_after_restart() {
    let data = tempfile::tempdir().unwrap();
    drop(Hub::start(data.path(), &[]));
    fs::set_permissions(
        data.path().join("api.token"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    fs::set_permissions(data.path().join("tls"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(data.path(), fs::Permissions::from_mode(0o755)).unwrap();

    let _hub = Hub::start(data.path(), &[]);

    let loose = loose_modes(data.path());
    assert!(loose.is_empty(), "not private: {loose:?}");
}

#[test]
fn three_hundred_idle_connections_do_not_keep_a_real_backup_out() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let hub = Hub::start(data.path(), &[]);
    let disk = work.path().join("disk.raw");
    write_random(&disk, 0, 4 * MIB as usize, 11);
    let port = hub_port(&hub.nbd);
    // 300 peers from this address that connect to the NBD port and never say a word.
    let idle: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();

    let out = hub.backup("vm1", &disk, ["--tls-dir", s(&client_tls(data.path()))]);

    let id = backup_id(&out);
    assert_same(&hub.image("vm1", 2000, &id), "qcow2", &disk, "raw");
    assert_eq!(idle.len(), 300);
}
