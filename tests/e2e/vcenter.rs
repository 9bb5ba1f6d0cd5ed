//! vCenter backups end to end, against the in-process vCenter simulator of
//! `sendense-vsphere` (feature `simulator`).
//!
//! - [`agent_job`]: the agent's job runner (the same flow, with a job's credential).
//! - [`flow`]: the client's vCenter flow (`sendense_client::vcenter::run_until`) with an in-process hub.
//! - this module: the real `sendense-hub serve` and `sendense-client backup --vcenter ...`
//!   binaries, with a password file and with `--vcenter-credential`.

mod agent_job;
mod flow;
mod govmomi;
mod signals;
mod vm_restore;

use std::time::Duration;

use sendense_vsphere::{ConnectOptions, TlsMode};
use sendense_vsphere_sim::{SIM_PASSWORD, SIM_USER, Simulator};

const MIB: u64 = 1024 * 1024;

/// Session options for the simulator (short timeouts and polls).
fn options(sim: &Simulator) -> ConnectOptions {
    let mut o = ConnectOptions::new(
        &sim.address(),
        SIM_USER,
        SIM_PASSWORD,
        TlsMode::CaPem(sim.ca_pem()),
    );
    o.request_timeout = Duration::from_secs(10);
    o.task_poll_interval = Duration::from_millis(5);
    o.busy_backoff = Duration::from_millis(1);
    o
}

// ---------------------------------------------------------------------------------------------
// The real binaries: `sendense-hub serve` and `sendense-client backup --vcenter ...`.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use sendense_types::{BackupId, CredentialRequest, VcenterTrust};
use sendense_vsphere_sim::{DiskSpec, VmSpec};
use serde_json::Value;
use tempfile::TempDir;

use crate::support::{Serve, assert_same, client, s, serve_wrapper, write_random};

/// How long a wait on a process may take.
const DEADLINE: Duration = Duration::from_secs(60);

serve_wrapper!(
    /// A `sendense-hub serve` subprocess (see [`Serve`]) with debug logs, every line kept.
    HubProc
);

impl HubProc {
    fn start(data: &Path) -> Self {
        Self(Serve::start(data, &[], "debug"))
    }

    /// Every log line so far.
    fn log(&self) -> String {
        self.all_lines()
    }

    /// Stores a credential whose vCenter certificate the hub checks against `ca_pem`.
    fn put_credential(&self, name: &str, host: &str, password: &str, ca_pem: &[u8]) {
        let trust = VcenterTrust::ca_pem(String::from_utf8(ca_pem.to_vec()).unwrap()).unwrap();
        let req = CredentialRequest::new(
            name.parse().unwrap(),
            host.to_owned(),
            SIM_USER.to_owned(),
            password.to_owned(),
            trust,
        )
        .unwrap();
        let answer = self.rest(|h| async move { h.put_credential(&req).await.unwrap() });
        assert!(!serde_json::to_string(&answer).unwrap().contains(password));
    }
}

/// The simulator (own runtime) with VM `vm1`: CBT on, disks 2000 (4 MiB) and 2001 (2 MiB)
/// holding some data; the files the client needs to trust and log in to it.
struct Vc {
    sim: Simulator,
    vm: String,
    ca: PathBuf,
    password_file: PathBuf,
    dir: TempDir,
}

impl Vc {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sim_dir = dir.path().join("sim");
        std::fs::create_dir(&sim_dir).unwrap();
        let sim = Simulator::start_blocking(&sim_dir).unwrap();
        let vm = sim
            .add_vm(&VmSpec {
                name: "vm1".to_owned(),
                cbt_enabled: true,
                disks: vec![DiskSpec::flat(4 * MIB), DiskSpec::flat(2 * MIB)],
            })
            .unwrap();
        let ca = dir.path().join("vc-ca.pem");
        std::fs::write(&ca, sim.ca_pem()).unwrap();
        let password_file = dir.path().join("vc.pw");
        std::fs::write(&password_file, format!("{SIM_PASSWORD}\n")).unwrap();
        let vc = Self {
            sim,
            vm,
            ca,
            password_file,
            dir,
        };
        vc.write(2000, 0, 300 * 1024, 1);
        vc.write(2000, 3 * MIB, 128 * 1024, 2);
        vc.write(2001, 512 * 1024, 192 * 1024, 3);
        vc
    }

    /// Writes pseudo-random bytes into a disk through the simulator (CBT records them).
    fn write(&self, key: i32, offset: u64, len: usize, seed: u64) {
        let scratch = self.dir.path().join("scratch");
        write_random(&scratch, 0, len, seed);
        let data = std::fs::read(&scratch).unwrap();
        self.sim
            .write_disk(&self.vm, key, offset, &data[..len])
            .unwrap();
    }

    fn password_args(&self) -> Vec<String> {
        vec![
            "--vcenter".into(),
            self.sim.address(),
            "--vcenter-user".into(),
            SIM_USER.into(),
            "--vcenter-password-file".into(),
            s(&self.password_file).into(),
            "--vcenter-ca".into(),
            s(&self.ca).into(),
        ]
    }

    fn credential_args(&self, name: &str) -> Vec<String> {
        vec![
            "--vcenter-credential".into(),
            name.into(),
            "--vcenter-ca".into(),
            s(&self.ca).into(),
        ]
    }

    fn snapshots_left(&self) -> Vec<String> {
        self.sim.snapshot_names(&self.vm)
    }
}

/// `sendense-client backup --vm dc1/vm/vm1 --json` against `hub` with `extra` arguments.
fn backup(hub: &HubProc, extra: &[String]) -> Output {
    let o = hub.options();
    client()
        .args(["backup", "--hub", &o.url])
        .args(["--tls-dir", s(o.tls_dir.as_deref().unwrap())])
        .args(["--token-file", s(&o.token_file), "--vm", "dc1/vm/vm1"])
        .args(["--connections", "2", "--json", "--log-format", "json"])
        .args(extra)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The `--json` summary of a successful run.
fn summary(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "exit {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Stderr of a failed run.
fn failure(out: &Output) -> String {
    assert!(!out.status.success(), "the run succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn disk_bytes(summary: &Value, key: u64) -> u64 {
    summary["disks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["disk_key"] == key)
        .unwrap()["bytes_sent"]
        .as_u64()
        .unwrap()
}

/// `qemu-img compare` of every disk image of the backup (with its chain) with the
/// simulator's flat file.
fn assert_images_match(hub: &HubProc, vc: &Vc, summary: &Value) {
    let id: BackupId = summary["backup_id"].as_str().unwrap().parse().unwrap();
    let backup = hub.rest(|h| async move { h.backup(&id).await.unwrap() });
    assert_eq!(backup.disks.len(), 2);
    for d in &backup.disks {
        let image = hub.data.join("repository").join(d.file.as_deref().unwrap());
        let flat = vc
            .sim
            .disk_file(&vc.vm, i32::try_from(d.disk_key.get()).unwrap())
            .unwrap();
        assert_same(&image, "qcow2", &flat, "raw");
    }
}

/// The run's full → changed blocks → incremental → CBT reset → automatic full sequence,
/// with `login` arguments; answers the three summaries.
fn full_incremental_reset(hub: &HubProc, vc: &Vc, login: &[String]) -> [Value; 3] {
    let full = summary(&backup(hub, login));
    assert_eq!(
        (&full["backup_type"], &full["status"]),
        (&Value::from("full"), &Value::from("completed"))
    );
    assert!(vc.snapshots_left().is_empty());
    assert_images_match(hub, vc, &full);

    // 64 KiB on disk 2000 and 128 KiB on disk 2001 change; only they travel.
    vc.write(2000, MIB, 64 * 1024, 11);
    vc.write(2001, 0, 128 * 1024, 12);
    let inc = summary(&backup(hub, login));
    assert_eq!(
        (&inc["backup_type"], &inc["status"]),
        (&Value::from("incremental"), &Value::from("completed"))
    );
    assert_eq!(
        (
            disk_bytes(&inc, 2000),
            disk_bytes(&inc, 2001),
            &inc["bytes_sent"]
        ),
        (64 * 1024, 128 * 1024, &Value::from(192 * 1024)),
        "{inc}"
    );
    assert!(vc.snapshots_left().is_empty());
    assert_images_match(hub, vc, &inc);

    // CBT reset: an automatic full on a new chain.
    vc.sim.reset_cbt(&vc.vm);
    vc.write(2001, MIB, 64 * 1024, 13);
    let again = summary(&backup(hub, login));
    assert_eq!(
        (&again["backup_type"], &again["status"]),
        (&Value::from("full"), &Value::from("completed"))
    );
    assert!(vc.snapshots_left().is_empty());
    assert_images_match(hub, vc, &again);
    let chain = hub.rest(|h| async move { h.chain(&"vm1".parse().unwrap()).await.unwrap() });
    assert_eq!(chain.backups[0].backup_id.as_str(), again["backup_id"]);
    [full, inc, again]
}

#[test]
fn binaries_vcenter_password_full_incremental_cbt_reset_new_full_match_simulator() {
    let data = tempfile::tempdir().unwrap();
    let hub = HubProc::start(data.path());
    let vc = Vc::start();

    let [full, ..] = full_incremental_reset(&hub, &vc, &vc.password_args());

    assert!(disk_bytes(&full, 2000) >= 428 * 1024, "{full}");
    let st = vc.sim.stats();
    assert_eq!((st.snapshots_created, st.snapshots_removed), (3, 3));
}

#[test]
fn binaries_vcenter_credential_full_incremental_cbt_reset_new_full_match_simulator() {
    let data = tempfile::tempdir().unwrap();
    let hub = HubProc::start(data.path());
    let vc = Vc::start();
    hub.put_credential("vc1", &vc.sim.address(), SIM_PASSWORD, &vc.sim.ca_pem());

    full_incremental_reset(&hub, &vc, &vc.credential_args("vc1"));

    // One session per run, issued by the hub (the client never logs in itself).
    assert_eq!(
        (
            hub.count("vCenter session opened for a client"),
            vc.sim.stats().logins
        ),
        (3, 3)
    );
    assert!(
        !hub.log().contains(SIM_PASSWORD),
        "password in the hub's log"
    );
}

#[test]
fn binaries_vcenter_credential_session_expiring_mid_run_is_renewed_through_the_hub() {
    let data = tempfile::tempdir().unwrap();
    let hub = HubProc::start(data.path());
    let vc = Vc::start();
    hub.put_credential("vc1", &vc.sim.address(), SIM_PASSWORD, &vc.sim.ca_pem());
    // Every session dies after 6 SOAP calls: a run needs several.
    vc.sim.expire_sessions_after(Some(6));

    let out = backup(&hub, &vc.credential_args("vc1"));

    let full = summary(&out);
    assert_eq!(full["status"], "completed");
    assert!(
        hub.count("vCenter session opened for a client") >= 2,
        "the hub issued no second session"
    );
    assert!(vc.snapshots_left().is_empty());
    assert_images_match(&hub, &vc, &full);
    let client_log = String::from_utf8_lossy(&out.stderr);
    assert!(
        client_log.contains("vCenter session expired"),
        "{client_log}"
    );
}

/// A session request: `{}` (the trust choice is the credential's, issue #11).
fn session_body() -> Value {
    serde_json::json!({})
}

#[test]
fn binaries_vcenter_session_request_cannot_choose_trust_and_stored_choice_is_used() {
    let data = tempfile::tempdir().unwrap();
    let hub = HubProc::start(data.path());
    let vc = Vc::start();
    let other = Vc::start();
    // Stored trusting another vCenter's CA: the hub must refuse vc's certificate.
    hub.put_credential("vc1", &vc.sim.address(), SIM_PASSWORD, &other.sim.ca_pem());

    let (insecure_status, insecure) = hub.raw(
        reqwest::Method::POST,
        "/api/v1/credentials/vc1/session",
        Some(serde_json::json!({ "insecure": true })),
    );
    let (pem_status, _) = hub.raw(
        reqwest::Method::POST,
        "/api/v1/credentials/vc1/session",
        Some(serde_json::json!({ "ca_pem": String::from_utf8(vc.sim.ca_pem()).unwrap() })),
    );
    let (stored_status, stored) = hub.raw(
        reqwest::Method::POST,
        "/api/v1/credentials/vc1/session",
        Some(session_body()),
    );

    assert_eq!(
        (
            insecure_status,
            pem_status,
            stored_status,
            vc.sim.stats().logins
        ),
        (400, 400, 502, 0),
        "{insecure}\n{stored}"
    );
    assert!(
        insecure.contains("stored with the credential"),
        "{insecure}"
    );
}

#[test]
fn binaries_vcenter_credential_without_trust_choice_is_refused_at_creation() {
    let data = tempfile::tempdir().unwrap();
    let hub = HubProc::start(data.path());
    let vc = Vc::start();

    let (status, body) = hub.raw(
        reqwest::Method::POST,
        "/api/v1/credentials",
        Some(serde_json::json!({
            "name": "vc1", "host": vc.sim.address(), "username": SIM_USER, "password": SIM_PASSWORD
        })),
    );
    let (_, list) = hub.raw(reqwest::Method::GET, "/api/v1/credentials", None);

    assert!(status == 400 && body.contains("ca_pem"), "{status} {body}");
    assert_eq!(list.trim(), "[]");
}

#[test]
fn binaries_vcenter_credential_password_never_in_answers_or_logs() {
    let data = tempfile::tempdir().unwrap();
    let hub = HubProc::start(data.path());
    let vc = Vc::start();
    hub.put_credential("vc1", &vc.sim.address(), SIM_PASSWORD, &vc.sim.ca_pem());

    let out = backup(&hub, &vc.credential_args("vc1"));
    let (list_status, list) = hub.raw(reqwest::Method::GET, "/api/v1/credentials", None);
    let (session_status, session) = hub.raw(
        reqwest::Method::POST,
        "/api/v1/credentials/vc1/session",
        Some(session_body()),
    );

    summary(&out);
    assert_eq!(
        (list_status, session_status),
        (200, 200),
        "{list}\n{session}"
    );
    let answer: Value = serde_json::from_str(&session).unwrap();
    assert_eq!(answer["host"], vc.sim.address());
    let everything = format!(
        "{}\n{}\n{}\n{list}\n{session}",
        hub.log(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!everything.contains(SIM_PASSWORD), "password leaked");
    assert!(
        hub.log().contains(r#""level":"DEBUG""#),
        "the hub did not log at debug"
    );
    let cookie = answer["session_cookie"].as_str().unwrap();
    assert!(
        !hub.log().contains(cookie),
        "session cookie in the hub's log"
    );
    assert!(
        hub.log().contains("vc1"),
        "the hub's log never names the credential"
    );
}

#[test]
fn binaries_vcenter_unknown_credential_is_404_naming_it_and_nothing_started() {
    let data = tempfile::tempdir().unwrap();
    let hub = HubProc::start(data.path());
    let vc = Vc::start();

    let stderr = failure(&backup(&hub, &vc.credential_args("nosuch")));
    let (status, body) = hub.raw(
        reqwest::Method::POST,
        "/api/v1/credentials/nosuch/session",
        Some(session_body()),
    );

    assert!(
        stderr.contains("404") && stderr.contains("nosuch"),
        "{stderr}"
    );
    assert!(status == 404 && body.contains("nosuch"), "{status} {body}");
    assert_eq!(vc.sim.stats().snapshots_created, 0);
}

#[test]
fn binaries_vcenter_credential_refused_login_names_credential_never_password() {
    let data = tempfile::tempdir().unwrap();
    let hub = HubProc::start(data.path());
    let vc = Vc::start();
    hub.put_credential("vc1", &vc.sim.address(), "Wr0ng-pa55word", &vc.sim.ca_pem());

    let out = backup(&hub, &vc.credential_args("vc1"));
    let (status, body) = hub.raw(
        reqwest::Method::POST,
        "/api/v1/credentials/vc1/session",
        Some(session_body()),
    );

    let stderr = failure(&out);
    assert!(
        stderr.contains("vc1") && stderr.contains("refused the login"),
        "{stderr}"
    );
    assert!(status == 502 && body.contains("vc1"), "{status} {body}");
    let everything = format!("{}\n{stderr}\n{body}", hub.log());
    assert!(!everything.contains("Wr0ng-pa55word"), "password leaked");
    assert_eq!(vc.sim.stats().snapshots_created, 0);
}

#[test]
fn binaries_vcenter_quiesce_is_asked_of_vcenter() {
    let data = tempfile::tempdir().unwrap();
    let hub = HubProc::start(data.path());
    let vc = Vc::start();
    let mut args = vc.password_args();
    args.push("--quiesce".into());

    let out = backup(&hub, &args);

    let full = summary(&out);
    assert_eq!(full["status"], "completed");
    assert_eq!(vc.sim.stats().quiesce_requests, 1);
    assert!(!String::from_utf8_lossy(&out.stderr).contains(SIM_PASSWORD));
    assert!(vc.snapshots_left().is_empty());
}

#[test]
fn binaries_vcenter_quiesce_without_tools_fails_suggesting_no_quiesce_leaving_no_snapshot() {
    let data = tempfile::tempdir().unwrap();
    let hub = HubProc::start(data.path());
    let vc = Vc::start();
    vc.sim.set_tools_missing(true);
    hub.put_credential("vc1", &vc.sim.address(), SIM_PASSWORD, &vc.sim.ca_pem());
    let mut args = vc.credential_args("vc1");
    args.push("--quiesce".into());

    let stderr = failure(&backup(&hub, &args));

    assert!(
        stderr.contains("VMware Tools") && stderr.contains("without --quiesce"),
        "{stderr}"
    );
    assert!(vc.snapshots_left().is_empty());
    let (status, backups) = hub.raw(reqwest::Method::GET, "/api/v1/backups?vm_name=vm1", None);
    // One run per VM: the backup is started (the hub's lock) before the snapshot is asked
    // for, so the refused snapshot fails that backup, saying why; nothing else is left.
    let backups: Value = serde_json::from_str(&backups).unwrap();
    assert_eq!(status, 200);
    assert_eq!(backups.as_array().unwrap().len(), 1, "{backups}");
    assert_eq!(backups[0]["status"], "failed");
    assert!(
        backups[0]["failure_reason"]
            .as_str()
            .unwrap()
            .contains("without --quiesce"),
        "{backups}"
    );
    assert!(backups[0]["disks"].as_array().unwrap().iter().all(|d| {
        !hub.data
            .join("repository")
            .join(d["file"].as_str().unwrap())
            .exists()
    }));
}

#[test]
fn binaries_vcenter_credential_with_password_flags_is_refused_by_the_parser() {
    let out = client()
        .args(["backup", "--hub", "https://127.0.0.1:1", "--ca", "ca.pem"])
        .args(["--token-file", "t", "--vm", "vm1", "--insecure"])
        .args(["--vcenter-credential", "vc1", "--vcenter", "h:443"])
        .args(["--vcenter-user", "u", "--vcenter-password-file", "pw"])
        .output()
        .unwrap();

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(2) && stderr.contains("cannot be used with"),
        "{stderr}"
    );
}

#[test]
fn binaries_client_backup_help_explains_credential_and_quiesce() {
    let out = client().args(["backup", "--help"]).output().unwrap();

    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("--vcenter-credential <NAME>")
            && help.contains("never the password")
            && help.contains("--quiesce"),
        "{help}"
    );
}
