//! The hub drives backups of an agent's own NBD sources (issue #19, "the agent can run these
//! jobs too"): a real `sendense-hub serve`, an agent created by the admin and enrolled with the
//! binary, `sendense-client agent run --nbd-sources FILE` whose hook (a shell script standing
//! in for libvirt's pull-mode backup) adds a new QEMU dirty bitmap per backup with `qemu-img
//! bitmap` and exports the QCOW2 with a real `qemu-nbd -B PARENT`, and `end` stops it. Jobs
//! come from a policy naming the agent and from `POST /api/v1/vms/{name}/backup`; writes
//! between backups go through `qemu-io`; every point is compared with `qemu-img compare`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Proc, Serve, assert_check_clean, assert_same, client, ok, qemu_img, s};

const DEADLINE: Duration = Duration::from_secs(90);
const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
pub(crate) const AGENT: &str = "kvm-host1";

/// The test's hook: `hook.sh DIR PHASE`, DIR holding the VM's `disk.qcow2`. Logs every call
/// with its environment to `DIR/hook.log`; `begin` fails like virsh when `DIR/fail-begin`
/// exists, hangs (after creating `DIR/begin-held`) when `DIR/hold-begin` exists, else adds `$SENDENSE_BITMAP` and exports the disk read-only with the parent's
/// bitmap when the image still has it; `end` fails when `DIR/fail-end` exists, else stops
/// `qemu-nbd` and waits until it is gone (it holds the image's lock).
const HOOK: &str = r#"#!/bin/sh
set -eu
dir="$1"
phase="$2"
echo "$phase type=$SENDENSE_BACKUP_TYPE bitmap=$SENDENSE_BITMAP parent=${SENDENSE_PARENT_BITMAP:-} result=${SENDENSE_RESULT:-} backup=${SENDENSE_BACKUP_ID:-}" >> "$dir/hook.log"
case "$phase" in
begin)
  if [ -e "$dir/fail-begin" ]; then
    echo "error: failed to get domain '$SENDENSE_VM'" >&2
    exit 1
  fi
  if [ -e "$dir/hold-begin" ]; then
    touch "$dir/begin-held"
    exec tail -f /dev/null
  fi
  qemu-img bitmap --add --enable "$dir/disk.qcow2" "$SENDENSE_BITMAP"
  set --
  if [ -n "${SENDENSE_PARENT_BITMAP:-}" ] && qemu-img info --output=json "$dir/disk.qcow2" | grep -q "\"name\": \"$SENDENSE_PARENT_BITMAP\""; then
    set -- -B "$SENDENSE_PARENT_BITMAP"
  fi
  qemu-nbd --fork --persistent -r -e 4 -f qcow2 -x disk -k "$dir/nbd.sock" --pid-file="$dir/qemu-nbd.pid" "$@" "$dir/disk.qcow2" </dev/null >/dev/null 2>>"$dir/qemu-nbd.err"
  printf '{"disks": [{"key": 2000, "uri": "nbd+unix:///disk?socket=%s"}]}\n' "$dir/nbd.sock"
  ;;
end)
  if [ -e "$dir/fail-end" ]; then
    echo "error: checkpoint '$SENDENSE_BITMAP' could not be deleted" >&2
    exit 2
  fi
  if [ -e "$dir/qemu-nbd.pid" ]; then
    pid=$(cat "$dir/qemu-nbd.pid")
    kill "$pid" 2>/dev/null || true
    timeout 10 tail --pid="$pid" -f /dev/null || true
    rm -f "$dir/qemu-nbd.pid"
  fi
  ;;
esac
"#;

/// Runs `qemu-io -f qcow2 -c CMD... FILE`, failing loudly when it is not installed.
pub(crate) fn qemu_io(file: &Path, commands: &[&str]) {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "qcow2"]);
    for c in commands {
        cmd.args(["-c", c]);
    }
    let out = cmd
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("qemu-io is required ({e}); install qemu-utils"));
    ok(&out);
}

/// Bytes allocated in the top layer of `image` (`qemu-img map`, depth 0).
fn top_layer_bytes(image: &Path) -> u64 {
    let out = ok(&qemu_img(&[
        "map",
        "--output=json",
        "-f",
        "qcow2",
        s(image),
    ]));
    let map: Vec<Value> = serde_json::from_str(&out).unwrap();
    map.iter()
        .filter(|e| e["depth"] == 0)
        .map(|e| e["length"].as_u64().unwrap())
        .sum()
}

/// A real hub, agent `kvm-host1` enrolled and running with an NBD sources file listing the VMs
/// `kvm01` and `kvm-broken`, each a folder with its own `disk.qcow2` and the test's hook.
pub(crate) struct KvmWorld {
    pub(crate) hub: Serve,
    pub(crate) agent: Option<Proc>,
    pub(crate) log: std::sync::mpsc::Receiver<Value>,
    pub(crate) dir: tempfile::TempDir,
}

impl KvmWorld {
    pub(crate) fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let hub = Serve::start(&data, &[], "info");
        let created = hub.rest(|h| async move {
            h.request(
                reqwest::Method::POST,
                "/api/v1/agents",
                Some(&json!({ "name": AGENT })),
            )
            .await
            .unwrap()
        });
        let token_file = dir.path().join("enroll.token");
        std::fs::write(&token_file, created["enrollment_token"].as_str().unwrap()).unwrap();
        let state = dir.path().join("agent");
        ok(&client()
            .args(["agent", "enroll", "--hub", &hub.api])
            .args(["--ca", s(&data.join("tls/ca-cert.pem"))])
            .args(["--name", AGENT])
            .args(["--enrollment-token-file", s(&token_file)])
            .args(["--state-dir", s(&state)])
            .output()
            .unwrap());
        let hook = dir.path().join("hook.sh");
        std::fs::write(&hook, HOOK).unwrap();
        let mut sources = String::new();
        for vm in ["kvm01", "kvm-broken"] {
            let vm_dir = dir.path().join(vm);
            std::fs::create_dir(&vm_dir).unwrap();
            sources.push_str(&format!(
                "[[vm]]\nname = \"{vm}\"\nhook = [\"/bin/sh\", \"{}\", \"{}\"]\n",
                s(&hook),
                s(&vm_dir)
            ));
        }
        let sources_file = dir.path().join("sources.toml");
        std::fs::write(&sources_file, sources).unwrap();
        let mut child = client()
            .args(["--log-format", "json", "agent", "run"])
            .args(["--state-dir", s(&state)])
            .args(["--nbd-sources", s(&sources_file)])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = crate::support::log_lines(child.stderr.take().unwrap());
        Self {
            hub,
            agent: Some(Proc(child)),
            log,
            dir,
        }
    }

    fn vm_dir(&self, vm: &str) -> PathBuf {
        self.dir.path().join(vm)
    }

    /// The VM's source disk: a 32 MiB QCOW2 with data in three places and an allocated zero
    /// cluster.
    pub(crate) fn make_disk(&self, vm: &str) -> PathBuf {
        let file = self.vm_dir(vm).join("disk.qcow2");
        ok(&qemu_img(&[
            "create",
            "-f",
            "qcow2",
            s(&file),
            &(32 * MIB).to_string(),
        ]));
        qemu_io(
            &file,
            &[
                "write -P 0x5a 0 1M",
                "write -P 0xa5 8M 2M",
                "write -P 0x33 20M 64k",
                "write -z 24M 64k",
            ],
        );
        file
    }

    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let path = path.to_owned();
        self.hub
            .rest(|h| async move { h.request(method, &path, body.as_ref()).await.unwrap() })
    }

    /// Waits (bounded) until job `id` has ended; its answer.
    fn wait_job(&self, id: &str) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let job = self.call(reqwest::Method::GET, &format!("/api/v1/jobs/{id}"), None);
            if job["status"] != "queued" && job["status"] != "running" {
                return job;
            }
            assert!(Instant::now() < deadline, "job not ended in time: {job}");
            let _ = self.log.recv_timeout(Duration::from_millis(200));
        }
    }

    /// `POST /api/v1/policies/kvm/run`, waited for: its one job's answer.
    fn run_policy(&self) -> Value {
        let run = self.call(reqwest::Method::POST, "/api/v1/policies/kvm/run", None);
        let ids = run["job_ids"].as_array().unwrap();
        assert_eq!(ids.len(), 1, "{run}");
        self.wait_job(ids[0].as_str().unwrap())
    }

    fn backup(&self, id: &str) -> Value {
        self.call(reqwest::Method::GET, &format!("/api/v1/backups/{id}"), None)
    }

    fn hook_log(&self, vm: &str) -> Vec<String> {
        std::fs::read_to_string(self.vm_dir(vm).join("hook.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// SIGTERM to the agent; whether it exited 0 within the deadline.
    fn stop_agent(&mut self) -> bool {
        let mut agent = self.agent.take().expect("the agent runs");
        agent.signal("TERM");
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = agent.0.try_wait().unwrap() {
                return status.success();
            }
            assert!(Instant::now() < deadline, "the agent did not stop");
            let _ = self.log.recv_timeout(Duration::from_millis(100));
        }
    }
}

#[test]
fn agent_policy_backs_up_nbd_source_full_then_incremental_of_changed_blocks_then_full_when_bitmap_gone()
 {
    let mut w = KvmWorld::start();
    let disk = w.make_disk("kvm01");
    w.call(
        reqwest::Method::POST,
        "/api/v1/policies",
        Some(json!({"name": "kvm", "schedule": "yearly", "agent": AGENT, "vms": ["kvm01"]})),
    );
    let policy = w.call(reqwest::Method::GET, "/api/v1/policies/kvm", None);
    assert_eq!(
        (&policy["agent"], &policy["credential"]),
        (&json!(AGENT), &Value::Null),
        "{policy}"
    );

    // 1: a full, by the policy.
    let job1 = w.run_policy();
    assert_eq!(
        (&job1["status"], &job1["agent"], &job1["credential"]),
        (&json!("completed"), &json!(AGENT), &Value::Null),
        "{job1}"
    );
    assert!(
        job1["result"]
            .as_str()
            .is_some_and(|r| r.contains("full backup: the hub has no completed backup")),
        "the job says why auto ran a full: {job1}"
    );
    let id1 = job1["backup_id"].as_str().unwrap().to_owned();
    let full = w.backup(&id1);
    assert_eq!(full["backup_type"], "full", "{full}");
    let bitmap1 = full["disks"][0]["change_id"].as_str().unwrap().to_owned();
    assert!(bitmap1.starts_with("sendense-"), "{full}");
    let image1 = w.hub.image("kvm01", 2000, &id1);
    assert_check_clean(&image1);
    assert_same(&image1, "qcow2", &disk, "qcow2");

    // The guest writes 4 clusters: new data, overwritten data, zeroes over data.
    qemu_io(
        &disk,
        &[
            "write -P 0x11 4M 64k",
            "write -P 0x22 9M 128k",
            "write -z 20M 64k",
        ],
    );

    // 2: an incremental from the first backup's bitmap, by the policy.
    let job2 = w.run_policy();
    assert_eq!(
        (&job2["status"], &job2["result"]),
        (&json!("completed"), &Value::Null),
        "{job2}"
    );
    let id2 = job2["backup_id"].as_str().unwrap().to_owned();
    let incr = w.backup(&id2);
    assert_eq!(incr["backup_type"], "incremental", "{incr}");
    assert_eq!(incr["parent_backup_id"], id1.as_str(), "{incr}");
    let bitmap2 = incr["disks"][0]["change_id"].as_str().unwrap().to_owned();
    assert_ne!(bitmap2, bitmap1);
    let image2 = w.hub.image("kvm01", 2000, &id2);
    assert_check_clean(&image2);
    assert_eq!(
        top_layer_bytes(&image2),
        256 * KIB,
        "only the changed clusters"
    );
    assert!(
        job2["progress"]["bytes_done"].as_u64().unwrap() <= 256 * KIB,
        "{job2}"
    );
    assert_same(&image2, "qcow2", &disk, "qcow2");

    // 3: the second backup's bitmap is gone: "back this VM up now" (the hub finds the agent
    // from the VM's jobs) becomes a full on a new chain.
    qemu_io(&disk, &["write -P 0x44 30M 64k"]);
    ok(&qemu_img(&["bitmap", "--remove", s(&disk), &bitmap2]));
    let accepted = w.call(
        reqwest::Method::POST,
        "/api/v1/vms/kvm01/backup",
        Some(json!({})),
    );
    let job3 = w.wait_job(accepted["job_id"].as_str().unwrap());
    assert_eq!(
        (&job3["status"], &job3["agent"]),
        (&json!("completed"), &json!(AGENT)),
        "{job3}"
    );
    assert!(
        job3["result"]
            .as_str()
            .is_some_and(|r| r.starts_with("full backup: ")
                && r.contains(&format!("does not offer the dirty bitmap \"{bitmap2}\""))),
        "the job says why auto ran a full: {job3}"
    );
    let id3 = job3["backup_id"].as_str().unwrap().to_owned();
    let again = w.backup(&id3);
    assert_eq!(
        (&again["backup_type"], &again["parent_backup_id"]),
        (&json!("full"), &Value::Null),
        "{again}"
    );
    assert_same(&w.hub.image("kvm01", 2000, &id3), "qcow2", &disk, "qcow2");

    let calls = w.hook_log("kvm01");
    assert_eq!(calls.len(), 6, "{calls:?}");
    assert!(
        calls[0].starts_with("begin type=auto") && calls[0].contains("parent= "),
        "{calls:?}"
    );
    assert!(
        calls[1].starts_with("end ")
            && calls[1].contains(&format!("result=completed backup={id1}")),
        "{calls:?}"
    );
    assert!(
        calls[2].contains(&format!("bitmap={bitmap2} parent={bitmap1} ")),
        "{calls:?}"
    );
    assert!(
        calls[4].contains(&format!("parent={bitmap2} ")),
        "{calls:?}"
    );
    assert!(w.stop_agent());
}

#[test]
fn agent_nbd_source_failing_begin_hook_fails_job_with_its_stderr_and_end_still_runs() {
    let mut w = KvmWorld::start();
    std::fs::write(w.vm_dir("kvm-broken").join("fail-begin"), "").unwrap();

    let accepted = w.call(
        reqwest::Method::POST,
        "/api/v1/vms/kvm-broken/backup",
        Some(json!({"backup_type": "full", "agent": AGENT})),
    );
    let job = w.wait_job(accepted["job_id"].as_str().unwrap());
    let (unknown_status, unknown_body) = w.hub.raw(
        reqwest::Method::POST,
        "/api/v1/vms/kvm-broken/backup",
        Some(json!({"agent": "no-such-agent"})),
    );

    assert_eq!(job["status"], "failed", "{job}");
    let error = job["error"].as_str().unwrap();
    assert!(
        error.contains("begin hook") && error.contains("failed to get domain 'kvm-broken'"),
        "{error}"
    );
    assert_eq!(job["backup_id"], Value::Null, "{job}");
    let calls = w.hook_log("kvm-broken");
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(
        calls[0].starts_with("begin type=full") && calls[1].starts_with("end type=full"),
        "{calls:?}"
    );
    assert!(calls[1].contains("result=failed"), "{calls:?}");
    assert!(
        unknown_status == 400 && unknown_body.contains("no-such-agent"),
        "{unknown_status} {unknown_body}"
    );
    assert!(w.stop_agent());
}

#[test]
fn agent_nbd_source_end_hook_failure_after_a_completed_backup_is_told_on_the_job() {
    let mut w = KvmWorld::start();
    let disk = w.make_disk("kvm01");
    std::fs::write(w.vm_dir("kvm01").join("fail-end"), "").unwrap();

    let accepted = w.call(
        reqwest::Method::POST,
        "/api/v1/vms/kvm01/backup",
        Some(json!({"backup_type": "full", "agent": AGENT})),
    );
    let job = w.wait_job(accepted["job_id"].as_str().unwrap());
    // The failing `end` left qemu-nbd running: stop it as the real hook would have.
    let pid = std::fs::read_to_string(w.vm_dir("kvm01").join("qemu-nbd.pid")).unwrap();
    ok(&Command::new("kill").arg(pid.trim()).output().unwrap());

    assert_eq!(
        job["status"], "completed",
        "the backup itself is good: {job}"
    );
    let result = job["result"].as_str().unwrap_or_default();
    assert!(
        result.contains("the backup completed, but")
            && result.contains("end hook")
            && result.contains("could not be deleted"),
        "{job}"
    );
    assert!(
        !result.contains("full backup:"),
        "a full was asked for, so no reason is told: {job}"
    );
    let id = job["backup_id"].as_str().unwrap();
    assert_eq!(w.backup(id)["status"], "completed");
    assert_same(&w.hub.image("kvm01", 2000, id), "qcow2", &disk, "qcow2");
    assert!(w.stop_agent());
}

#[test]
fn agent_nbd_source_job_cancelled_during_its_begin_hook_kills_the_hook_and_still_runs_end() {
    let mut w = KvmWorld::start();
    w.make_disk("kvm01");
    let vm_dir = w.vm_dir("kvm01");
    std::fs::write(vm_dir.join("hold-begin"), "").unwrap();

    let accepted = w.call(
        reqwest::Method::POST,
        "/api/v1/vms/kvm01/backup",
        Some(json!({"agent": AGENT})),
    );
    let id = accepted["job_id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + DEADLINE;
    while !vm_dir.join("begin-held").exists() {
        assert!(Instant::now() < deadline, "the begin hook never ran");
        let _ = w.log.recv_timeout(Duration::from_millis(100));
    }
    let cancelled = w.call(
        reqwest::Method::POST,
        &format!("/api/v1/jobs/{id}/cancel"),
        None,
    );
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    // The agent learns it at its next heartbeat, kills the hook and runs `end`.
    let deadline = Instant::now() + DEADLINE;
    let calls = loop {
        let calls = w.hook_log("kvm01");
        if calls.len() >= 2 {
            break calls;
        }
        assert!(Instant::now() < deadline, "end never ran: {calls:?}");
        let _ = w.log.recv_timeout(Duration::from_millis(200));
    };

    assert!(
        calls[0].starts_with("begin ") && calls[1].starts_with("end "),
        "{calls:?}"
    );
    assert!(calls[1].contains("result=failed"), "{calls:?}");
    let job = w.wait_job(&id);
    assert_eq!(
        (&job["status"], &job["backup_id"]),
        (&json!("cancelled"), &Value::Null),
        "{job}"
    );
    let backups = w.call(reqwest::Method::GET, "/api/v1/backups?vm_name=kvm01", None);
    assert_eq!(
        backups.as_array().map(Vec::len),
        Some(0),
        "no backup was started: {backups}"
    );
    // The agent is free for the next job.
    std::fs::remove_file(vm_dir.join("hold-begin")).unwrap();
    let again = w.call(
        reqwest::Method::POST,
        "/api/v1/vms/kvm01/backup",
        Some(json!({"agent": AGENT})),
    );
    let next = w.wait_job(again["job_id"].as_str().unwrap());
    assert_eq!(next["status"], "completed", "{next}");
    assert!(w.stop_agent());
}
