//! `sendense-client agent enroll` / `agent run` as processes against a small fake hub (axum
//! over HTTPS on 127.0.0.1:0: enrollment signs the agent's CSR with a CA made here; the long
//! poll answers 204): the agent opens no listening socket, and SIGTERM stops it with exit 0.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sendense_types::{EnrollRequest, EnrollResponse, NextJobQuery};

use crate::support::{Proc, client, ok, s};

const DEADLINE: Duration = Duration::from_secs(60);
const TOKEN: &str = "agent-token-e2e";

#[derive(Clone)]
struct Fake {
    ca_cert: String,
    ca_key: String,
    events: Arc<tokio::sync::watch::Sender<u32>>,
}

async fn enroll(State(f): State<Fake>, Json(req): Json<EnrollRequest>) -> Response {
    if req.enrollment_token() != "one-time" {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let cert = sendense_nbd::tls::sign_client_csr(
        &f.ca_cert,
        &f.ca_key,
        req.csr_pem(),
        req.name().as_str(),
    )
    .unwrap();
    Json(EnrollResponse {
        agent_token: TOKEN.into(),
        client_cert_pem: cert,
        ca_cert_pem: f.ca_cert,
    })
    .into_response()
}

async fn next(
    State(f): State<Fake>,
    Query(query): Query<NextJobQuery>,
    headers: HeaderMap,
) -> Response {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    if auth != Some(&format!("Bearer {TOKEN}")) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    f.events.send_modify(|v| *v += 1);
    // Hold the long poll (at most its wait) so the agent keeps a connection open.
    let wait = Duration::from_secs(u64::from(query.wait.unwrap_or(0)).min(2));
    tokio::time::sleep(wait).await;
    StatusCode::NO_CONTENT.into_response()
}

/// Socket inodes among the process's open files (`/proc/PID/fd/* -> socket:[INODE]`).
fn socket_inodes(pid: u32) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let Ok(target) = std::fs::read_link(entry.unwrap().path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|t| t.strip_suffix(']'))
        {
            out.insert(inode.to_owned());
        }
    }
    out
}

/// `(inode, state)` of every TCP socket in the process's network namespace
/// (`/proc/PID/net/tcp` and `tcp6`; state `0A` is LISTEN).
fn tcp_sockets(pid: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for file in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")).unwrap();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            out.push((fields[9].to_owned(), fields[3].to_owned()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_run_opens_no_listening_socket_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    sendense_nbd::tls::ensure_certificates(&ca_dir, &[]).unwrap();
    let read = |f: &str| std::fs::read_to_string(ca_dir.join(f)).unwrap();
    let events = Arc::new(tokio::sync::watch::channel(0u32).0);
    let fake = Fake {
        ca_cert: read(sendense_nbd::tls::CA_CERT),
        ca_key: read(sendense_nbd::tls::CA_KEY),
        events: Arc::clone(&events),
    };
    let mut tls = (*sendense_nbd::tls::server_config_from_dir(&ca_dir, false).unwrap()).clone();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    let app = axum::Router::new()
        .route("/api/v1/agents/enroll", post(enroll))
        .route("/api/v1/agents/{name}/jobs/next", get(next))
        .with_state(fake.clone());
    let server = axum_server::from_tcp_rustls(
        listener,
        axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls)),
    )
    .unwrap();
    tokio::spawn(async move {
        let _ = server.serve(app.into_make_service()).await;
    });
    let token_file = dir.path().join("enroll.token");
    std::fs::write(&token_file, "one-time\n").unwrap();
    let state = dir.path().join("agent");
    let ca = ca_dir.join(sendense_nbd::tls::CA_CERT);

    let enrolled = {
        let (url, ca, token_file, state) =
            (url.clone(), ca.clone(), token_file.clone(), state.clone());
        tokio::task::spawn_blocking(move || {
            client()
                .args(["agent", "enroll", "--hub", &url, "--ca", s(&ca)])
                .args([
                    "--name",
                    "appliance-1",
                    "--enrollment-token-file",
                    s(&token_file),
                ])
                .args(["--state-dir", s(&state)])
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    };
    let said = ok(&enrolled);
    let child = client()
        .args(["agent", "run", "--state-dir", s(&state), "--slots", "2"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let agent = Proc(child);
    let mut rx = events.subscribe();
    tokio::time::timeout(DEADLINE, rx.wait_for(|polls| *polls >= 2))
        .await
        .expect("the agent long-polls the hub")
        .unwrap();

    let pid = agent.pid();
    let inodes = socket_inodes(pid);
    let sockets = tcp_sockets(pid);
    let own: Vec<&(String, String)> = sockets.iter().filter(|(i, _)| inodes.contains(i)).collect();
    agent.signal("TERM");
    let status = tokio::task::spawn_blocking(move || exit_code(agent))
        .await
        .unwrap();

    assert!(said.contains("enrolled agent appliance-1"), "{said}");
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert!(
        !own.is_empty(),
        "the agent holds its connection to the hub: {sockets:?} {inodes:?}"
    );
    assert!(
        own.iter().all(|(_, st)| st != "0A"),
        "the agent listens: {own:?}"
    );
    assert_eq!(status, Some(0));
    assert!(state_has(&state, "client-key.pem"));
}

fn state_has(state: &Path, file: &str) -> bool {
    state.join(file).exists()
}

// ---------------------------------------------------------------------------------------------
// The real hub: an admin creates the agent, the agent enrolls, a backup queued at the hub for a
// credential naming the agent is run by the agent from the vCenter simulator.

/// Waits (bounded by [`DEADLINE`]) for the child to exit; its exit code. A child still running
/// at the deadline is killed and the test fails.
fn exit_code(agent: Proc) -> Option<i32> {
    let pid = agent.pid();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut agent = agent;
        let _ = tx.send(agent.0.wait().map(|s| s.code()));
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(code) => code.unwrap(),
        Err(e) => {
            crate::support::signal(pid, "KILL");
            panic!("the agent did not stop within {DEADLINE:?}: {e}");
        }
    }
}

use sendense_vsphere_sim::Simulator;

use crate::support::Serve;

/// The simulator with `vm1` (CBT on, 4 MiB and 2 MiB disks holding data), a real hub, an agent
/// `appliance-1` created by the admin and enrolled with the binary, a credential `vc1` naming
/// it; the agent runs (JSON logs) with 2 slots.
struct RealWorld {
    sim: Simulator,
    vm: String,
    hub: Serve,
    agent: Option<Proc>,
    log: std::sync::mpsc::Receiver<serde_json::Value>,
    _dir: tempfile::TempDir,
}

impl RealWorld {
    fn start() -> Self {
        use sendense_types::{CredentialRequest, VcenterTrust};
        use sendense_vsphere_sim::{DiskSpec, SIM_PASSWORD, SIM_USER, VmSpec};

        const MIB: u64 = 1024 * 1024;
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
        sim.write_disk(&vm, 2000, 0, &[0x11; 300 * 1024]).unwrap();
        sim.write_disk(&vm, 2001, 512 * 1024, &[0x22; 64 * 1024])
            .unwrap();
        let data = dir.path().join("data");
        let hub = Serve::start(&data, &[], "info");
        let created = hub.rest(|h| async move {
            h.request(
                reqwest::Method::POST,
                "/api/v1/agents",
                Some(&serde_json::json!({"name": "appliance-1"})),
            )
            .await
            .unwrap()
        });
        let token_file = dir.path().join("enroll.token");
        std::fs::write(&token_file, created["enrollment_token"].as_str().unwrap()).unwrap();
        let credential = CredentialRequest::new(
            "vc1".parse().unwrap(),
            sim.address(),
            SIM_USER.to_owned(),
            SIM_PASSWORD.to_owned(),
            VcenterTrust::ca_pem(String::from_utf8(sim.ca_pem()).unwrap()).unwrap(),
        )
        .unwrap()
        .with_agent(Some("appliance-1".parse().unwrap()));
        hub.rest(|h| async move { h.put_credential(&credential).await.unwrap() });
        let state = dir.path().join("agent");
        ok(&client()
            .args(["agent", "enroll", "--hub", &hub.api])
            .args(["--ca", s(&data.join("tls/ca-cert.pem"))])
            .args(["--name", "appliance-1"])
            .args(["--enrollment-token-file", s(&token_file)])
            .args(["--state-dir", s(&state)])
            .output()
            .unwrap());
        let (agent, log) = spawn_agent(&state);
        Self {
            sim,
            vm,
            hub,
            agent: Some(agent),
            log,
            _dir: dir,
        }
    }

    /// `POST /api/v1/vms/vm1/backup` (full, credential vc1): the job's id.
    fn queue_backup(&self) -> String {
        let accepted = self.hub.rest(|h| async move {
            h.request(
                reqwest::Method::POST,
                "/api/v1/vms/vm1/backup",
                Some(&serde_json::json!({"backup_type": "full", "credential": "vc1"})),
            )
            .await
            .unwrap()
        });
        accepted["job_id"].as_str().unwrap().to_owned()
    }

    fn call(&self, method: reqwest::Method, path: &str) -> serde_json::Value {
        let path = path.to_owned();
        self.hub
            .rest(|h| async move { h.request(method, &path, None).await.unwrap() })
    }

    /// Waits (bounded) until the agent's transfer waits on a held datastore read: the job is
    /// mid-transfer, its snapshot exists. Reads must be held ([`Simulator::hold_reads`])
    /// before the job is queued, or a fast agent may read every block first.
    fn hold_mid_transfer(&self) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async { tokio::time::timeout(DEADLINE, self.sim.read_held()).await })
            .expect("the agent reads the snapshot");
    }

    /// SIGTERM to the agent; its exit code.
    fn stop_agent(&mut self) -> Option<i32> {
        let agent = self.agent.take().expect("the agent runs");
        agent.signal("TERM");
        exit_code(agent)
    }

    /// The backups of vm1 at the hub, by status.
    fn backup_statuses(&self) -> Vec<String> {
        let backups = self.call(reqwest::Method::GET, "/api/v1/backups?vm_name=vm1");
        backups
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["status"].as_str().unwrap().to_owned())
            .collect()
    }
}

#[test]
fn agent_runs_backup_queued_at_the_hub_job_completed_images_match() {
    use crate::support::{assert_same, wait_message};

    let mut w = RealWorld::start();

    let job_id = w.queue_backup();
    let reported = wait_message(&w.log, "outcome reported to the hub");
    let job = w.call(reqwest::Method::GET, &format!("/api/v1/jobs/{job_id}"));
    let code = w.stop_agent();

    assert_eq!(reported["span"]["job_id"], job_id.as_str(), "{reported}");
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["agent"], "appliance-1", "{job}");
    let backup_id = job["backup_id"].as_str().unwrap();
    for key in [2000, 2001] {
        assert_same(
            &w.hub.image("vm1", key, backup_id),
            "qcow2",
            &w.sim.disk_file(&w.vm, i32::try_from(key).unwrap()).unwrap(),
            "raw",
        );
    }
    assert!(w.sim.snapshot_names(&w.vm).is_empty());
    assert_eq!(code, Some(0));
}

#[test]
fn agent_sigterm_mid_transfer_fails_job_and_backup_leaves_no_snapshot_exits_0() {
    let mut w = RealWorld::start();
    w.sim.hold_reads(true);
    let job_id = w.queue_backup();
    w.hold_mid_transfer();

    let code = w.stop_agent();

    w.sim.hold_reads(false);
    let job = w.call(reqwest::Method::GET, &format!("/api/v1/jobs/{job_id}"));
    assert_eq!(code, Some(0));
    assert_eq!(
        (&job["status"], &job["error"]),
        (
            &serde_json::json!("failed"),
            &serde_json::json!("agent stopped")
        ),
        "{job}"
    );
    assert_eq!(w.backup_statuses(), ["failed"]);
    assert!(w.sim.snapshot_names(&w.vm).is_empty());
}

#[test]
fn agent_job_cancelled_at_the_hub_mid_transfer_stops_cleanly() {
    use crate::support::wait_message;

    let mut w = RealWorld::start();
    w.sim.hold_reads(true);
    let job_id = w.queue_backup();
    w.hold_mid_transfer();

    w.call(
        reqwest::Method::POST,
        &format!("/api/v1/jobs/{job_id}/cancel"),
    );
    // The next heartbeat (at most 20 s away) learns it.
    wait_message(&w.log, "job stopped: cancelled at the hub");
    let reported = wait_message(&w.log, "outcome reported to the hub");

    w.sim.hold_reads(false);
    let job = w.call(reqwest::Method::GET, &format!("/api/v1/jobs/{job_id}"));
    assert_eq!(reported["span"]["job_id"], job_id.as_str(), "{reported}");
    assert_eq!(job["status"], "cancelled", "{job}");
    assert_eq!(w.backup_statuses(), ["failed"]);
    assert!(w.sim.snapshot_names(&w.vm).is_empty());
    assert_eq!(w.stop_agent(), Some(0));
}

impl RealWorld {
    /// Adds VM `name` to the simulator (CBT on, one 2 MiB disk holding `fill` bytes): its id.
    fn add_vm(&self, name: &str, fill: u8) -> String {
        let id = self
            .sim
            .add_vm(&sendense_vsphere_sim::VmSpec {
                name: name.to_owned(),
                cbt_enabled: true,
                disks: vec![sendense_vsphere_sim::DiskSpec::flat(2 * 1024 * 1024)],
            })
            .unwrap();
        self.sim
            .write_disk(&id, 2000, 4096, &[fill; 128 * 1024])
            .unwrap();
        id
    }

    /// `POST /api/v1/vms/{vm}/backup` (full, credential vc1): the job's id.
    fn queue_backup_of(&self, vm: &str) -> String {
        let path = format!("/api/v1/vms/{vm}/backup");
        let accepted = self.hub.rest(|h| async move {
            h.request(
                reqwest::Method::POST,
                &path,
                Some(&serde_json::json!({"backup_type": "full", "credential": "vc1"})),
            )
            .await
            .unwrap()
        });
        accepted["job_id"].as_str().unwrap().to_owned()
    }

    /// Waits (bounded by `limit`) until `want` holds for the jobs `ids`; their answers.
    fn wait_jobs(
        &self,
        ids: &[String],
        limit: Duration,
        want: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let jobs: Vec<serde_json::Value> = ids
                .iter()
                .map(|id| self.call(reqwest::Method::GET, &format!("/api/v1/jobs/{id}")))
                .collect();
            if want(&jobs) {
                return jobs;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "jobs not as wanted within {limit:?}: {jobs:?}"
            );
            std::thread::yield_now();
            let _ = self.log.recv_timeout(Duration::from_millis(200));
        }
    }
}

fn statuses(jobs: &[serde_json::Value]) -> Vec<&str> {
    let mut s: Vec<&str> = jobs
        .iter()
        .map(|j| j["status"].as_str().unwrap_or(""))
        .collect();
    s.sort_unstable();
    s
}

#[test]
fn agent_with_two_slots_runs_two_of_three_backups_third_waits_all_complete_and_match() {
    use crate::support::assert_same;

    let mut w = RealWorld::start();
    let vm2 = w.add_vm("vm2", 0x33);
    let vm3 = w.add_vm("vm3", 0x44);
    w.sim.hold_reads(true);

    let ids: Vec<String> = ["vm1", "vm2", "vm3"]
        .iter()
        .map(|vm| w.queue_backup_of(vm))
        .collect();
    let mid = w.wait_jobs(&ids, DEADLINE, |jobs| {
        statuses(jobs) == ["queued", "running", "running"]
    });
    w.sim.hold_reads(false);
    let done = w.wait_jobs(&ids, DEADLINE, |jobs| {
        statuses(jobs)
            .iter()
            .all(|s| *s != "queued" && *s != "running")
    });
    let code = w.stop_agent();

    assert_eq!(statuses(&mid), ["queued", "running", "running"]);
    assert_eq!(
        statuses(&done),
        ["completed", "completed", "completed"],
        "{done:?}"
    );
    for (job, (vm, id)) in done
        .iter()
        .zip([("vm1", w.vm.clone()), ("vm2", vm2), ("vm3", vm3)])
    {
        assert_eq!(job["vm_name"], vm);
        let backup_id = job["backup_id"].as_str().unwrap();
        assert_same(
            &w.hub.image(vm, 2000, backup_id),
            "qcow2",
            &w.sim.disk_file(&id, 2000).unwrap(),
            "raw",
        );
        assert!(w.sim.snapshot_names(&id).is_empty());
    }
    assert_eq!(code, Some(0));
}

#[test]
fn agent_killed_mid_job_job_failed_by_lease_retried_by_policy_completes_after_restart() {
    use crate::support::assert_same;

    // The lease (90 s) lapses and the reaper (every 10 s) fails the job within 2 minutes.
    const LEASE_LIMIT: Duration = Duration::from_secs(130);
    let mut w = RealWorld::start();
    let policy = serde_json::json!({
        "name": "p1", "schedule": "yearly", "credential": "vc1", "vms": ["vm1"],
        "retry": {"count": 1, "delay_seconds": 0}
    });
    w.hub.rest(|h| async move {
        h.request(reqwest::Method::POST, "/api/v1/policies", Some(&policy))
            .await
            .unwrap()
    });
    w.sim.hold_reads(true);
    let run = w.call(reqwest::Method::POST, "/api/v1/policies/p1/run");
    let first = run["job_ids"][0].as_str().unwrap().to_owned();
    w.hold_mid_transfer();

    w.agent.take().expect("the agent runs").signal("KILL");
    let failed = w.wait_jobs(std::slice::from_ref(&first), LEASE_LIMIT, |jobs| {
        jobs[0]["status"] == "failed"
    });
    w.sim.hold_reads(false);
    let jobs = w.call(reqwest::Method::GET, "/api/v1/jobs?vm_name=vm1&kind=backup");
    let retry = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_id"] != first.as_str())
        .expect("the policy queued a retry")["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    w.restart_agent();
    let done = w.wait_jobs(std::slice::from_ref(&retry), DEADLINE, |jobs| {
        jobs[0]["status"] != "queued" && jobs[0]["status"] != "running"
    });
    let code = w.stop_agent();

    let error = failed[0]["error"].as_str().unwrap_or("");
    assert!(error.contains("agent lost"), "{error}");
    assert_eq!(
        (&done[0]["status"], &done[0]["attempt"]),
        (&serde_json::json!("completed"), &serde_json::json!(2)),
        "{done:?}"
    );
    let backup_id = done[0]["backup_id"].as_str().unwrap();
    assert_same(
        &w.hub.image("vm1", 2000, backup_id),
        "qcow2",
        &w.sim.disk_file(&w.vm, 2000).unwrap(),
        "raw",
    );
    let mut backups = w.backup_statuses();
    backups.sort();
    assert_eq!(backups, ["completed", "failed"]);
    assert!(
        w.sim.snapshot_names(&w.vm).is_empty(),
        "the retry removed the killed run's snapshot"
    );
    assert_eq!(code, Some(0));
}

impl RealWorld {
    /// Starts `agent run` again on the same state folder (after the first was killed).
    fn restart_agent(&mut self) {
        let (agent, log) = spawn_agent(&self._dir.path().join("agent"));
        self.agent = Some(agent);
        self.log = log;
    }
}

/// `sendense-client agent run` on the enrolled `state` folder with 2 slots (JSON logs): the
/// process and its parsed log lines.
fn spawn_agent(state: &Path) -> (Proc, std::sync::mpsc::Receiver<serde_json::Value>) {
    let mut child = client()
        .args(["--log-format", "json", "agent", "run"])
        .args(["--state-dir", s(state), "--slots", "2"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = crate::support::log_lines(child.stderr.take().unwrap());
    (Proc(child), log)
}

impl RealWorld {
    /// Queues a full backup of vm1 and waits until the agent reports it: the backup's id.
    fn backed_up(&self) -> String {
        let job_id = self.queue_backup();
        crate::support::wait_message(&self.log, "outcome reported to the hub");
        let job = self.call(reqwest::Method::GET, &format!("/api/v1/jobs/{job_id}"));
        assert_eq!(job["status"], "completed", "{job}");
        job["backup_id"].as_str().unwrap().to_owned()
    }

    /// `sendense-client restore --to-vcenter` of `backup_id` as `vm_name` into dc1/ds1 on the
    /// simulator's host, with `extra` flags; it follows the job to its end.
    fn restore_to_vcenter(
        &self,
        backup_id: &str,
        vm_name: &str,
        extra: &[&str],
    ) -> std::process::Output {
        client()
            .args(["restore", "--hub", &self.hub.api])
            .args(["--tls-dir", s(&self.hub.tls_dir())])
            .args(["--token-file", s(&self.hub.token())])
            .args(["--to-vcenter", "--backup", backup_id, "--vm-name", vm_name])
            .args(["--datacenter", "dc1", "--datastore", "ds1"])
            .args(["--host", sendense_vsphere_sim::SIM_HOST])
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

/// The whole path of issue #16 through the product's own surfaces: a backup run by the agent
/// captures the VM's configuration (the hub answers it as `vm_config`), `sendense-client
/// restore --to-vcenter` queues the restore at the hub's route and follows it, the agent
/// process builds the VM in the simulator: same hardware, the network mapped, powered on, its
/// disks byte for byte the backup's.
#[test]
fn restore_to_vcenter_through_the_hub_route_and_the_agent_rebuilds_the_vm() {
    let mut w = RealWorld::start();
    let backup_id = w.backed_up();

    let backup = w.call(
        reqwest::Method::GET,
        &format!("/api/v1/backups/{backup_id}"),
    );
    let config = &backup["vm_config"];
    assert_eq!(config["version"], 1, "{backup}");
    assert_eq!(config["disks"].as_array().unwrap().len(), 2, "{config}");
    assert_eq!(config["nics"].as_array().unwrap().len(), 2, "{config}");

    let out = w.restore_to_vcenter(
        &backup_id,
        "vm1-restored",
        &[
            "--network-map",
            "Backup Net=Restore Net",
            "--power-on",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let original = w.sim.vm_by_name("vm1").unwrap();
    let restored = w
        .sim
        .vm_by_name("vm1-restored")
        .expect("the VM was created");
    assert!(restored.powered_on);
    let (a, b) = (&original.hardware, &restored.hardware);
    assert_eq!(
        (&b.guest_id, &b.firmware, b.num_cpus, b.memory_mb),
        (&a.guest_id, &a.firmware, a.num_cpus, a.memory_mb)
    );
    let networks: Vec<&str> = b.nics.iter().map(|n| n.network.as_str()).collect();
    assert_eq!(networks, ["VM Network", "Restore Net"]);
    assert_eq!(restored.disks.len(), 2);
    for (o, r) in original.disks.iter().zip(&restored.disks) {
        assert_eq!(o.capacity, r.capacity);
        assert!(
            std::fs::read(&o.local).unwrap() == std::fs::read(&r.local).unwrap(),
            "disk {} differs from the backup",
            o.key
        );
    }
    let jobs = w.call(reqwest::Method::GET, "/api/v1/jobs?kind=restore");
    let job = &jobs["jobs"][0];
    assert_eq!(job["status"], "completed", "{jobs}");
    assert_eq!(job["agent"], "appliance-1", "{jobs}");
    assert_eq!(w.stop_agent(), Some(0));
}

/// A network of the captured configuration that the map does not send anywhere that exists is
/// refused by the agent before anything is made: the CLI fails naming it, the job is failed,
/// and the simulator holds no new VM and no new file.
#[test]
fn restore_to_vcenter_with_an_unmapped_missing_network_creates_nothing() {
    let mut w = RealWorld::start();
    let backup_id = w.backed_up();
    let files_before = w.sim.datastore_files();

    let out = w.restore_to_vcenter(
        &backup_id,
        "vm1-nowhere",
        &["--network-map", "Backup Net=No Such Net"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("No Such Net"), "{stderr}");

    assert!(w.sim.vm_by_name("vm1-nowhere").is_none());
    assert_eq!(w.sim.datastore_files(), files_before);
    let jobs = w.call(reqwest::Method::GET, "/api/v1/jobs?kind=restore");
    assert_eq!(jobs["jobs"][0]["status"], "failed", "{jobs}");
    assert_eq!(w.stop_agent(), Some(0));
}
