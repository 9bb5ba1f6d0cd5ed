//! `sendense-hub quickstart`: the whole product in one command, on a machine
//! with nothing configured.
//!
//! The product as it is used, all in this process on loopback ports: a hub; the vCenter
//! simulator with two VMs (web01 with one disk, db01 with two, sparse, non-uniform data, CBT
//! on); an agent created at the hub and enrolled with its one-time token (its key stays local,
//! the hub signs its CSR), running with two slots and no listening socket; a vCenter credential
//! only that agent receives; an inventory job; a policy (`mon..fri 22:00`, VMs `web01` and
//! `db*`) run now: two full backups through the agent, which takes a snapshot, reads the disks
//! and sends them over NBD+TLS. Then about 2% of every disk changes (some blocks zeroed), the
//! policy runs again (incrementals of what CBT reports), and every disk of both points of both
//! VMs is restored and verified against the disk as it was at that point (`qemu-img compare`
//! when installed, our own byte comparison otherwise). The exit status is 0 only when
//! everything verified.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sendense_client::agent::{self, AgentOptions, EnrollOptions};
use sendense_client::hub::{HubClient, HubOptions, Method};
use sendense_client::restore::{self, RestoreFormat, RestoreOptions};
use sendense_types::{Backup, BackupId, DiskKey, Job, JobStatus, VerificationState, VmName};
use sendense_vsphere_sim::{DiskSpec as SimDisk, SIM_PASSWORD, SIM_USER, Simulator, VmSpec};
use serde_json::json;

use sendense_hub::daemon::{self, HubConfig};
use sendense_image::Input;
use sendense_io::is_zero;

/// Options of [`run`].
#[derive(Debug, Clone)]
pub struct QuickstartOptions {
    /// Working folder; a temporary one (removed at the end) when `None`.
    pub dir: Option<PathBuf>,
    /// Virtual size of each demo disk.
    pub disk_size: u64,
    /// Keep the temporary folder at the end.
    pub keep: bool,
}

/// Errors of the quickstart.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuickstartError {
    /// A local file operation failed.
    #[error("Quickstart file {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The hub did not start.
    #[error("Cannot start the hub")]
    Hub(#[from] sendense_hub::error::HubError),
    /// The client failed.
    #[error("Client")]
    Client(#[from] sendense_client::ClientError),
    /// The agent's task ended abnormally.
    #[error("The agent stopped abnormally: {0}")]
    Agent(String),
    /// The disk size is unusable.
    #[error("Disk size must be a multiple of 1 MiB between 64 MiB and 1 TiB")]
    BadSize,
    /// A restored disk differs from the source at its point.
    #[error("Verification failed: {what}")]
    Mismatch {
        /// What differed.
        what: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> QuickstartError + '_ {
    move |source| QuickstartError::Io {
        path: path.to_path_buf(),
        source,
    }
}

const MIB: u64 = 1 << 20;
const BLOCK: u64 = 64 << 10;
const MIB_USIZE: usize = 1 << 20;
const BLOCK_USIZE: usize = 64 << 10;

/// `min(n, 1 MiB)` as a buffer length.
fn chunk(n: u64) -> usize {
    usize::try_from(n.min(MIB)).unwrap_or(MIB_USIZE)
}

/// Runs the quickstart; answers the report to print.
///
/// # Errors
/// Any step failing, or a verification mismatch.
pub async fn run(opts: QuickstartOptions) -> Result<String, QuickstartError> {
    let size = opts.disk_size;
    if !size.is_multiple_of(MIB) || !(64 * MIB..=1 << 40).contains(&size) {
        return Err(QuickstartError::BadSize);
    }
    let temp = match &opts.dir {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("sendense-quickstart-")
                .tempdir()
                .map_err(io(Path::new("/tmp")))?,
        ),
    };
    let root = opts.dir.clone().unwrap_or_else(|| {
        temp.as_ref()
            .map(|t| t.path().to_path_buf())
            .unwrap_or_default()
    });
    let result = run_in(&root, size).await;
    if let Some(t) = temp
        && opts.keep
    {
        let kept = t.keep();
        eprintln!("quickstart: kept {}", kept.display());
    }
    result
}

/// The agent the quickstart enrolls.
const AGENT: &str = "quickstart-agent";
/// The vCenter credential it stores at the hub.
const CREDENTIAL: &str = "vc1";
/// The policy it creates.
const POLICY: &str = "nightly";
/// The demo VMs in the simulated vCenter: name and number of disks.
const VMS: [(&str, usize); 2] = [("web01", 1), ("db01", 2)];
/// How long one round of jobs may take before the quickstart gives up.
const JOBS_LIMIT: Duration = Duration::from_secs(1800);
/// How often the quickstart looks at its jobs.
const POLL: Duration = Duration::from_millis(200);

async fn run_in(root: &Path, size: u64) -> Result<String, QuickstartError> {
    for d in ["restore", "states", "vcenter"].map(|d| root.join(d)) {
        fs::create_dir_all(&d).map_err(io(&d))?;
    }
    step("starting a hub (TLS on loopback ports, NBD client certificates required)");
    let hub = daemon::start(HubConfig {
        data_dir: root.join("hub"),
        api_listen: ([127, 0, 0, 1], 0).into(),
        nbd_listen: ([127, 0, 0, 1], 0).into(),
        public_host: Some("localhost".into()),
        idle_timeout: Duration::from_secs(600),
        disconnect_grace: Duration::from_secs(20),
        nbd_client_certs: daemon::ClientCerts::Required,
        webhook: None,
        max_running_jobs: None,
        repository: sendense_hub::RepositoryConfig::default(),
    })
    .await?;
    let outcome = with_hub(root, size, hub.api_addr.port()).await;
    hub.stop().await;
    outcome
}

async fn with_hub(root: &Path, size: u64, api_port: u16) -> Result<String, QuickstartError> {
    step("issuing the restore tool's certificate (sendense-hub cert issue quickstart-restore)");
    let client_dir = root.join("client-tls");
    sendense_hub::tls::issue_client_folder(
        &root.join("hub").join(daemon::TLS_DIR),
        "quickstart-restore",
        &client_dir,
    )?;
    step("starting the vCenter simulator in this process: web01 (1 disk), db01 (2 disks)");
    let vcenter = root.join("vcenter");
    let sim = Simulator::start(&vcenter).await.map_err(io(&vcenter))?;
    let mut disks = Vec::new();
    for (seed, (name, count)) in (1_u64..).zip(VMS) {
        let spec = VmSpec {
            name: name.to_owned(),
            cbt_enabled: true,
            disks: vec![SimDisk::flat(size); count],
        };
        let id = sim.add_vm(&spec).map_err(io(&vcenter))?;
        for key in (2000..).take(count) {
            fill_disk(
                &sim,
                &id,
                key,
                size,
                seed * 10 + u64::from(key.unsigned_abs()),
            )?;
            disks.push(VmDisk {
                vm: name.parse().map_err(|_| QuickstartError::BadSize)?,
                id: id.clone(),
                key,
            });
        }
    }
    let url = format!("https://localhost:{api_port}");
    let admin = HubOptions::with_tls_dir(&url, &client_dir, &root.join("hub/api.token"));
    let hub = HubClient::new(&admin)?;
    let agent_dir = root.join("agent");
    enroll_agent(root, &hub, &url, &agent_dir).await?;
    step("storing vCenter credential vc1 at the hub; only quickstart-agent will receive it");
    let ca = String::from_utf8_lossy(&sim.ca_pem()).into_owned();
    hub.request(
        Method::POST,
        "/api/v1/credentials",
        Some(&json!({
            "name": CREDENTIAL, "host": sim.address(), "username": SIM_USER,
            "password": SIM_PASSWORD, "ca_pem": ca, "agent": AGENT,
        })),
    )
    .await?;
    step(
        "starting the agent (sendense-client agent run --slots 2): it connects out, opens no port",
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut options = AgentOptions::new(&agent_dir);
    options.slots = 2;
    let agent = tokio::spawn(agent::run(options, async move {
        let _ = stopped.await;
    }));
    let outcome = drive(root, &sim, &hub, &admin, &disks, size).await;
    let _ = stop.send(());
    match agent.await {
        Ok(Ok(())) => outcome,
        Ok(Err(e)) => outcome.and(Err(e.into())),
        Err(e) => outcome.and(Err(QuickstartError::Agent(e.to_string()))),
    }
}

/// One disk of a demo VM.
struct VmDisk {
    vm: VmName,
    /// The VM's managed object id in the simulator.
    id: String,
    key: i32,
}

impl VmDisk {
    fn key(&self) -> DiskKey {
        DiskKey(self.key.unsigned_abs())
    }
}

/// `POST /api/v1/agents`, then `sendense-client agent enroll` with the one-time token.
async fn enroll_agent(
    root: &Path,
    hub: &HubClient,
    url: &str,
    agent_dir: &Path,
) -> Result<(), QuickstartError> {
    step(
        "creating agent quickstart-agent (POST /api/v1/agents) and enrolling it with its one-time token",
    );
    let created = hub
        .request(
            Method::POST,
            "/api/v1/agents",
            Some(&json!({ "name": AGENT })),
        )
        .await?;
    let token_file = root.join("enrollment.token");
    let token = created["enrollment_token"].as_str().unwrap_or_default();
    sendense_io::atomic::write_atomic(&token_file, token.as_bytes(), 0o600)
        .map_err(io(&token_file))?;
    agent::enroll(&EnrollOptions {
        hub: url.to_owned(),
        ca_file: root.join("hub/tls/ca-cert.pem"),
        name: AGENT.parse().map_err(|_| QuickstartError::BadSize)?,
        enrollment_token_file: token_file,
        state_dir: agent_dir.to_owned(),
        force: false,
    })
    .await?;
    Ok(())
}

async fn drive(
    root: &Path,
    sim: &Simulator,
    hub: &HubClient,
    admin: &HubOptions,
    disks: &[VmDisk],
    size: u64,
) -> Result<String, QuickstartError> {
    step("inventory job: the agent lists the VMs it sees in vCenter");
    let refresh = hub
        .request(
            Method::POST,
            &format!("/api/v1/credentials/{CREDENTIAL}/inventory/refresh"),
            Some(&json!({})),
        )
        .await?;
    wait_jobs(hub, &job_ids(&json!({ "job_ids": [refresh["job_id"]] }))).await?;
    step(
        "policy nightly: mon..fri 22:00, VMs web01 and db*, keep-last 7, verify after backup; running it now",
    );
    hub.request(
        Method::POST,
        "/api/v1/policies",
        Some(&json!({
            "name": POLICY, "schedule": "mon..fri 22:00", "credential": CREDENTIAL,
            "vms": ["web01", "db*"], "max_parallel": 2, "retention": {"keep_last": 7},
            "verify_after_backup": true,
        })),
    )
    .await?;
    let full = run_policy(hub).await?;
    let states = root.join("states");
    let mut saved = Vec::new();
    for d in disks {
        let from = sim
            .disk_file(&d.id, d.key)
            .ok_or_else(|| QuickstartError::Mismatch {
                what: format!("the simulator lost disk {} of {}", d.key, d.vm),
            })?;
        let to = states.join(format!("{}-{}-full.raw", d.vm, d.key));
        copy_sparse(&from, &to)?;
        saved.push((from, to));
    }
    step("changing ~2% of every disk in vCenter (some blocks zeroed); CBT records it");
    for (i, d) in (100_u64..).zip(disks) {
        change_disk(sim, &d.id, d.key, size, i)?;
    }
    step("running the policy again: incrementals carry only the changed blocks");
    let incremental = run_policy(hub).await?;
    step("restoring every disk of both points of both VMs and verifying them");
    let restore_dir = root.join("restore");
    let mut verified = Vec::new();
    for (jobs, full_point) in [(&full, true), (&incremental, false)] {
        for (d, (current, at_full)) in disks.iter().zip(&saved) {
            let job = jobs
                .iter()
                .find(|j| j.vm_name.as_ref() == Some(&d.vm))
                .ok_or_else(|| QuickstartError::Mismatch {
                    what: format!("no job backed up {}", d.vm),
                })?;
            let point = job
                .backup_id
                .clone()
                .ok_or_else(|| QuickstartError::Mismatch {
                    what: format!("job {} of {} names no backup", job.job_id, d.vm),
                })?;
            let to = restore_dir.join(format!("{point}-{}.raw", d.key));
            let mut r = RestoreOptions::new(admin.clone(), point.clone(), d.key(), to.clone());
            r.format = RestoreFormat::Raw;
            restore::run(r).await?;
            let expected = if full_point { at_full } else { current };
            let how = verify(expected, &to)?;
            verified.push(format!("{point} disk {}: identical ({how})", d.key));
        }
    }
    step("waiting for the policy's verify jobs: each point read back against its source digests");
    wait_verifications(hub, full.len() + incremental.len()).await?;
    let mut rows = Vec::new();
    for job in full.iter().chain(&incremental) {
        if let Some(id) = &job.backup_id {
            let value = hub
                .request(Method::GET, &format!("/api/v1/backups/{id}"), None)
                .await?;
            let backup: Backup =
                serde_json::from_value(value).map_err(|e| QuickstartError::Mismatch {
                    what: format!("backup {id} answer: {e}"),
                })?;
            if backup.verification.state != VerificationState::Ok {
                return Err(QuickstartError::Mismatch {
                    what: format!("backup {id} did not verify: {:?}", backup.verification),
                });
            }
            rows.push((job.clone(), backup));
        }
    }
    let repo = root.join("hub/repository");
    Ok(report(&rows, &repo, &verified))
}

/// Waits until the hub has queued `count` verify jobs (the policy queues them once each run's
/// backups end) and every one of them completed.
async fn wait_verifications(hub: &HubClient, count: usize) -> Result<(), QuickstartError> {
    let deadline = tokio::time::Instant::now() + JOBS_LIMIT;
    loop {
        let list = hub
            .request(Method::GET, "/api/v1/jobs?kind=verify", None)
            .await?;
        let ids: Vec<String> = list["jobs"]
            .as_array()
            .map(|jobs| {
                jobs.iter()
                    .filter_map(|j| j["job_id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if ids.len() >= count {
            wait_jobs(hub, &ids).await?;
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(QuickstartError::Mismatch {
                what: format!("the policy queued {} verify jobs, not {count}", ids.len()),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `POST /api/v1/policies/nightly/run`, then waits for every job it queued.
async fn run_policy(hub: &HubClient) -> Result<Vec<Job>, QuickstartError> {
    let run = hub
        .request(
            Method::POST,
            &format!("/api/v1/policies/{POLICY}/run"),
            Some(&json!({})),
        )
        .await?;
    let ids = job_ids(&run);
    if ids.len() != VMS.len() {
        return Err(QuickstartError::Mismatch {
            what: format!(
                "the policy queued {} jobs, not {}: {run}",
                ids.len(),
                VMS.len()
            ),
        });
    }
    wait_jobs(hub, &ids).await
}

fn job_ids(answer: &serde_json::Value) -> Vec<String> {
    answer["job_ids"]
        .as_array()
        .map(|ids| {
            ids.iter()
                .filter_map(|i| i.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `GET /api/v1/jobs/{id}` until every job ended; each must have completed.
async fn wait_jobs(hub: &HubClient, ids: &[String]) -> Result<Vec<Job>, QuickstartError> {
    let deadline = tokio::time::Instant::now() + JOBS_LIMIT;
    let mut last_line = String::new();
    loop {
        let mut jobs = Vec::new();
        for id in ids {
            let value = hub
                .request(Method::GET, &format!("/api/v1/jobs/{id}"), None)
                .await?;
            let job: Job =
                serde_json::from_value(value).map_err(|e| QuickstartError::Mismatch {
                    what: format!("job {id} answer: {e}"),
                })?;
            jobs.push(job);
        }
        if let Some(failed) = jobs
            .iter()
            .find(|j| matches!(j.status, JobStatus::Failed | JobStatus::Cancelled))
        {
            return Err(QuickstartError::Mismatch {
                what: format!(
                    "job {} ({}) {}: {}",
                    failed.job_id,
                    failed.kind,
                    failed.status,
                    failed.error.as_deref().unwrap_or("no reason given")
                ),
            });
        }
        if jobs.iter().all(|j| j.status == JobStatus::Completed) {
            return Ok(jobs);
        }
        let line: Vec<String> = jobs
            .iter()
            .map(|j| {
                format!(
                    "{} {} {}",
                    j.vm_name.as_ref().map_or("inventory", VmName::as_str),
                    j.status,
                    sendense_image::human(j.progress.bytes_done)
                )
            })
            .collect();
        let line = line.join(", ");
        if line != last_line {
            step(&format!("  jobs: {line}"));
            last_line = line;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(QuickstartError::Mismatch {
                what: format!(
                    "jobs still not done after {} s: {last_line}",
                    JOBS_LIMIT.as_secs()
                ),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

fn step(what: &str) {
    eprintln!("quickstart: {what}");
}

/// Fills a simulated disk with realistic, non-uniform content: runs of random data, runs of
/// repeating text-like data, zero blocks inside data, and holes (about 12% of the 1 MiB slots
/// hold data).
fn fill_disk(
    sim: &Simulator,
    vm: &str,
    key: i32,
    size: u64,
    seed: u64,
) -> Result<(), QuickstartError> {
    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut buf = vec![0u8; MIB_USIZE];
    for slot in 0..size / MIB {
        let r = next(&mut rng);
        if !r.is_multiple_of(8) {
            continue;
        }
        match (r >> 8) % 3 {
            0 => fill(&mut buf, &mut rng),
            1 => {
                for (i, b) in buf.iter_mut().enumerate() {
                    *b = b"Sendense demo disk: the quick brown fox jumps over the lazy dog\n"
                        [i % 64];
                }
            }
            _ => {
                fill(&mut buf, &mut rng);
                buf[..(256 << 10)].fill(0);
            }
        }
        sim.write_disk(vm, key, slot * MIB, &buf)
            .map_err(io(Path::new(vm)))?;
    }
    Ok(())
}

fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn fill(buf: &mut [u8], rng: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        let v = next(rng).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

/// Changes ~2% of a simulated disk in 64 KiB blocks: most get new data, every fourth is
/// zeroed. Answers how many blocks changed.
fn change_disk(
    sim: &Simulator,
    vm: &str,
    key: i32,
    size: u64,
    seed: u64,
) -> Result<u64, QuickstartError> {
    let blocks = size / BLOCK;
    let count = (blocks / 50).max(1);
    let mut rng = seed | 1;
    let mut chosen = std::collections::BTreeSet::new();
    while (chosen.len() as u64) < count {
        chosen.insert(next(&mut rng) % blocks);
    }
    let mut buf = vec![0u8; BLOCK_USIZE];
    for (i, b) in chosen.into_iter().enumerate() {
        if i % 4 == 3 {
            buf.fill(0);
        } else {
            fill(&mut buf, &mut rng);
        }
        sim.write_disk(vm, key, b * BLOCK, &buf)
            .map_err(io(Path::new(vm)))?;
    }
    Ok(count)
}

/// Copies a sparse file, writing only its data runs.
fn copy_sparse(from: &Path, to: &Path) -> Result<(), QuickstartError> {
    let input = Input::open(from).map_err(|e| QuickstartError::Io {
        path: from.to_path_buf(),
        source: std::io::Error::other(sendense_io::error_chain(&e)),
    })?;
    let out = File::create(to).map_err(io(to))?;
    out.set_len(input.size()).map_err(io(to))?;
    let mut buf = vec![0u8; MIB_USIZE];
    for run in input.data_extents().map_err(|e| QuickstartError::Io {
        path: from.to_path_buf(),
        source: std::io::Error::other(sendense_io::error_chain(&e)),
    })? {
        let mut at = run.offset;
        while at < run.end() {
            let n = chunk(run.end() - at);
            input
                .read_at(&mut buf[..n], at)
                .map_err(|e| QuickstartError::Io {
                    path: from.to_path_buf(),
                    source: std::io::Error::other(sendense_io::error_chain(&e)),
                })?;
            if !is_zero(&buf[..n]) {
                out.write_all_at(&buf[..n], at).map_err(io(to))?;
            }
            at += n as u64;
        }
    }
    Ok(())
}

/// `qemu-img compare` when installed; otherwise our own comparison.
fn verify(expected: &Path, restored: &Path) -> Result<&'static str, QuickstartError> {
    if let Ok(out) = std::process::Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(expected)
        .arg(restored)
        .output()
    {
        return if out.status.success() {
            Ok("qemu-img compare")
        } else {
            Err(QuickstartError::Mismatch {
                what: format!(
                    "{} vs {}: {}",
                    expected.display(),
                    restored.display(),
                    String::from_utf8_lossy(&out.stdout).trim()
                ),
            })
        };
    }
    let a = File::open(expected).map_err(io(expected))?;
    let b = File::open(restored).map_err(io(restored))?;
    let (la, lb) = (
        a.metadata().map_err(io(expected))?.len(),
        b.metadata().map_err(io(restored))?.len(),
    );
    if la != lb {
        return Err(QuickstartError::Mismatch {
            what: format!("sizes {la} and {lb}"),
        });
    }
    let (mut x, mut y) = (vec![0u8; MIB_USIZE], vec![0u8; MIB_USIZE]);
    let mut at = 0;
    while at < la {
        let n = chunk(la - at);
        a.read_exact_at(&mut x[..n], at).map_err(io(expected))?;
        b.read_exact_at(&mut y[..n], at).map_err(io(restored))?;
        if x[..n] != y[..n] {
            return Err(QuickstartError::Mismatch {
                what: format!("content differs near offset {at}"),
            });
        }
        at += n as u64;
    }
    Ok("byte comparison")
}

/// Bytes a backup's images occupy in the repository.
fn on_disk(repo: &Path, vm: &VmName, id: &BackupId) -> u64 {
    let Ok(folders) = fs::read_dir(repo.join(vm.as_str())) else {
        return 0;
    };
    folders
        .flatten()
        .filter_map(|d| fs::metadata(d.path().join(format!("{id}.qcow2"))).ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

fn report(rows: &[(Job, Backup)], repo: &Path, verified: &[String]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{:<8} {:<45} {:<12} {:>11} {:>11} {:>8} {:>8}  verified",
        "VM", "backup", "type", "sent", "on disk", "MB/s", "seconds"
    );
    for (job, backup) in rows {
        let seconds = match (job.started_at, job.finished_at) {
            (Some(a), Some(b)) => b.unix_seconds().saturating_sub(a.unix_seconds()),
            _ => 0,
        };
        let _ = writeln!(
            out,
            "{:<8} {:<45} {:<12} {:>11} {:>11} {:>8.1} {:>8}  {}",
            backup.vm_name.as_str(),
            backup.backup_id.as_str(),
            backup.backup_type.as_str(),
            sendense_image::human(job.progress.bytes_done),
            sendense_image::human(on_disk(repo, &backup.vm_name, &backup.backup_id)),
            job.progress.mb_per_s,
            seconds,
            backup.verification.state.as_str()
        );
    }
    let _ = writeln!(out);
    for v in verified {
        let _ = writeln!(out, "verified {v}");
    }
    let _ = writeln!(
        out,
        "\nquickstart: policy {POLICY} backed up both VMs twice through agent {AGENT}; everything verified"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_disk_touches_two_percent_of_blocks_one_in_four_zeroed() {
        let dir = tempfile::tempdir().unwrap();
        let sim = Simulator::start_blocking(dir.path()).unwrap();
        let spec = VmSpec {
            name: "t".into(),
            cbt_enabled: true,
            disks: vec![SimDisk::flat(64 * MIB)],
        };
        let vm = sim.add_vm(&spec).unwrap();

        let changed = change_disk(&sim, &vm, 2000, 64 * MIB, 7).unwrap();

        let data = fs::read(sim.disk_file(&vm, 2000).unwrap()).unwrap();
        let nonzero = data.chunks(BLOCK_USIZE).filter(|b| !is_zero(b)).count();
        assert_eq!((changed, nonzero), (64 * MIB / BLOCK / 50, 15));
    }

    #[test]
    fn run_with_bad_size_is_refused() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let err = rt.block_on(run(QuickstartOptions {
            dir: None,
            disk_size: 1000,
            keep: false,
        }));
        assert!(matches!(err, Err(QuickstartError::BadSize)));
    }
}
