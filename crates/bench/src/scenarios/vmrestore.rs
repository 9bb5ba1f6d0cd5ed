//! `vm-restore`: a whole VM restored into vCenter against the same point restored to a local
//! file. Issue 16: "Upload at least as fast as our restore to a local file over the same
//! simulator link (measure both in one run)."
//!
//! The vCenter simulator (`sendense-vsphere-sim`) runs inside the harness on a tokio runtime
//! of its own, with a VM of one disk holding the test data (CBT on). `sendense-client backup
//! --vcenter` backs it up into a `sendense-hub serve` of its own (snapshot, the disk read over
//! the simulator's HTTPS). Then, from that one point:
//! - ours: the agent's `restore` job body ([`sendense_client::vm_restore::run_until`], in the
//!   harness on a runtime of its own): the point's exports read over NBD inside TLS, a new VM
//!   created in the simulator and its disk uploaded with one `PUT` of the flat extent;
//! - peer: `sendense-client restore --format raw` of the same disk to a local file (the same
//!   exports, the same NBD inside TLS, written with `O_DIRECT`).
//!
//! Both results are compared with the test data. The ratio is local seconds / upload seconds:
//! at least 1 meets the target. CPU of ours is the harness's (client and simulator: their
//! TLS on both ends of the upload, the simulator's file writes) plus the hub's; of the peer,
//! the client process's plus the hub's.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sendense_client::hub::HubOptions;
use sendense_client::vm_restore::{VmRestoreOptions, run_until};
use sendense_types::{RestoreJob, RestoreJobDisk, RestoreRequest, RestoreTarget};
use sendense_vsphere::{ConnectOptions, Session, TlsMode};
use sendense_vsphere_sim::{
    DiskSpec, SIM_DATACENTER, SIM_DATASTORE, SIM_HOST, SIM_PASSWORD, SIM_USER, Simulator, VmSpec,
};

use super::inproc::self_cpu;
use super::{CLIENT_TLS_DIR, Ctx, DISK_KEY, failed, loadavg, outcome, remove};
use crate::data;
use crate::proc::Proc;
use crate::report::{Measure, Outcome, Row};

/// The simulated VM backed up and restored.
const VC_VM: &str = "benchvm-vc";
/// The VM the restore creates.
const RESTORED_VM: &str = "benchvm-vc-restored";
/// Name of the simulator's runtime threads.
const SIM_THREADS: &str = "bench-vcsim";
/// Name of the upload's runtime threads.
const UPLOAD_THREADS: &str = "bench-upload";

/// CPU time of the upload's parts.
struct UploadCpu {
    /// Our client: NBD reads, the PUT body, its TLS.
    upload: Duration,
    /// The simulator receiving and writing.
    sim: Duration,
    /// The hub serving the exports.
    hub: Duration,
}

/// CPU ticks of this process's live threads of the two runtimes: thread id, whether it is
/// the simulator's, ticks.
type ThreadTicks = std::collections::BTreeMap<u64, (bool, u64)>;

/// A multi-thread tokio runtime whose threads (workers and blocking pool) are named `name`.
fn runtime(name: &str) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .thread_name(name)
        .enable_all()
        .build()
        .context("cannot build a tokio runtime")
}

/// User + system ticks of this process's live threads of the two runtimes
/// (`/proc/self/task`; thread names are cut to 15 bytes).
fn thread_ticks() -> ThreadTicks {
    let mut out = ThreadTicks::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat.get(open + 1..close).unwrap_or_default();
        if name.is_empty() {
            continue;
        }
        let sim = SIM_THREADS.starts_with(name);
        if !sim && !UPLOAD_THREADS.starts_with(name) {
            continue;
        }
        let fields: Vec<&str> = stat
            .get(close + 2..)
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        out.insert(tid, (sim, ticks(11).saturating_add(ticks(12))));
    }
    out
}

/// CPU of the upload's and the simulator's threads between two [`thread_ticks`] (a thread
/// that ended in between is not counted).
fn thread_cpu_between(before: &ThreadTicks, after: &ThreadTicks) -> (Duration, Duration) {
    let hz = crate::sys::clock_ticks();
    let (mut upload, mut sim) = (0u64, 0u64);
    for (tid, (is_sim, t)) in after {
        let t0 = before.get(tid).map_or(0, |(_, t0)| *t0);
        let d = t.saturating_sub(t0);
        if *is_sim {
            sim += d;
        } else {
            upload += d;
        }
    }
    let dur =
        |t: u64| Duration::from_secs(t / hz) + Duration::from_nanos((t % hz) * 1_000_000_000 / hz);
    (dur(upload), dur(sim))
}

impl Ctx<'_> {
    /// `vm-restore`: upload of a restore point into the simulator vs restore to a local file.
    pub(super) fn vm_restore(&mut self) {
        let load = loadavg()[0];
        let work = self.dir.join("vm-restore");
        self.say(&format!(
            "vm-restore: a VM of one {} MiB disk in the vCenter simulator, backed up; restored into the simulator, then to a local file",
            self.opts.size >> 20
        ));
        let result = self.vm_restore_inner(&work);
        if !self.opts.keep {
            let _ = std::fs::remove_dir_all(&work);
        }
        let case = "agent restore job into vCenter (simulator, PUT of the flat disk)";
        let peer_name = "client restore of the same point to a local raw file";
        let row = match result {
            Ok((ours, peer, split)) => {
                let mut row = Row::new("vm-restore", case, ours, peer_name, peer);
                row.note = format!(
                    "issue 16: at least as fast as the local restore (ratio >= 1); both read the \
                     hub's exports over NBD with TLS and are verified identical to the test \
                     data; CPU of ours is the harness + hub: upload (our client) {:.2} s, \
                     simulator (its TLS, copies and writes) {:.2} s, hub {:.2} s; of the peer \
                     the client process + hub",
                    split.upload.as_secs_f64(),
                    split.sim.as_secs_f64(),
                    split.hub.as_secs_f64()
                );
                row
            }
            Err(e) => {
                let error = failed(&format!("{e:#}"));
                Row::new("vm-restore", case, error.clone(), peer_name, error)
            }
        };
        self.push(row, load);
    }

    fn vm_restore_inner(&self, work: &Path) -> Result<(Outcome, Outcome, UploadCpu)> {
        std::fs::create_dir_all(work.join("sim"))
            .with_context(|| format!("cannot create {}", work.display()))?;
        // Named threads: the note splits the harness's CPU between the simulator and the upload.
        let sim_rt = runtime(SIM_THREADS)?;
        let sim = sim_rt
            .block_on(Simulator::start(&work.join("sim")))
            .context("cannot start the vCenter simulator")?;
        let vm = sim
            .add_vm(&VmSpec {
                name: VC_VM.to_owned(),
                cbt_enabled: true,
                disks: vec![DiskSpec::flat(self.opts.size)],
            })
            .context("cannot add the simulated VM")?;
        let key = i32::try_from(DISK_KEY)?;
        let flat = sim
            .disk_file(&vm, key)
            .context("the simulated VM has no disk 2000")?;
        std::fs::copy(&self.raw, &flat).context("cannot fill the simulated disk")?;
        let ca = work.join("vc-ca.pem");
        std::fs::write(&ca, sim.ca_pem())?;
        let password = work.join("vc.pw");
        std::fs::write(&password, format!("{SIM_PASSWORD}\n"))?;

        let data_dir = work.join("hub");
        let (hub, hub_url) = self.start_hub(&data_dir)?;
        let mut cmd = Command::new(&self.bins.client);
        cmd.arg("backup");
        self.client_hub_args(&mut cmd, &hub_url, &data_dir);
        cmd.args(["--vm", &format!("{SIM_DATACENTER}/vm/{VC_VM}")])
            .args(["--vcenter", &sim.address(), "--vcenter-user", SIM_USER])
            .arg("--vcenter-password-file")
            .arg(&password)
            .arg("--vcenter-ca")
            .arg(&ca)
            .args(["--type", "full", "--json"]);
        let backup = self
            .run_backup(&hub, cmd, Some(self.opts.size))
            .context("the backup from the simulator failed")?;

        let rt = runtime(UPLOAD_THREADS)?;
        let connect = {
            let mut o = ConnectOptions::new(
                &sim.address(),
                SIM_USER,
                SIM_PASSWORD,
                TlsMode::CaPem(sim.ca_pem()),
            );
            o.task_poll_interval = Duration::from_millis(20);
            o
        };
        let config = rt
            .block_on(async {
                let session = Session::connect(connect.clone()).await?;
                let vm = session
                    .find_vm(&format!("{SIM_DATACENTER}/vm/{VC_VM}"))
                    .await?;
                let config = session.vm_config(&vm).await;
                session.logout().await?;
                config
            })
            .context("cannot read the VM's configuration from the simulator")?;
        let job = RestoreJob {
            backup_id: backup.id.parse().context("the backup id")?,
            disks: config
                .disks
                .iter()
                .map(|d| RestoreJobDisk {
                    disk_key: d.key,
                    capacity_bytes: d.capacity_bytes,
                })
                .collect(),
            vm_config: config,
            request: RestoreRequest {
                target: RestoreTarget::Vcenter,
                vm_name: RESTORED_VM.to_owned(),
                credential: None,
                datacenter: SIM_DATACENTER.to_owned(),
                folder: None,
                resource_pool: None,
                host: Some(SIM_HOST.to_owned()),
                datastore: SIM_DATASTORE.to_owned(),
                network_map: std::collections::BTreeMap::new(),
                power_on: false,
                keep_macs: false,
                disks: None,
            },
        };
        let hub_options = HubOptions::with_tls_dir(
            &hub_url,
            &data_dir.join(CLIENT_TLS_DIR),
            &data_dir.join("api.token"),
        );

        // Ours: the upload. Before each side, what earlier steps wrote (the backup, the
        // upload) is written back, so that neither waits behind the kernel's writeback.
        self.write_back(work)?;
        self.say("vm-restore: the agent's restore job into the simulator");
        let cpu0 = hub.cpu().unwrap_or_default();
        let self0 = self_cpu();
        let threads0 = thread_ticks();
        let started = Instant::now();
        rt.block_on(run_until(
            VmRestoreOptions::new(hub_options, connect, job),
            std::future::pending(),
        ))
        .context("the restore into the simulator failed")?;
        let secs = started.elapsed().as_secs_f64();
        let hub_cpu = hub.cpu().unwrap_or_default().saturating_sub(cpu0);
        let cpu = self_cpu().saturating_sub(self0) + hub_cpu;
        let (upload, sim_cpu) = thread_cpu_between(&threads0, &thread_ticks());
        let split = UploadCpu {
            upload,
            sim: sim_cpu,
            hub: hub_cpu,
        };
        let restored = sim
            .vm_by_name(RESTORED_VM)
            .context("the simulator has no restored VM")?;
        let uploaded = restored
            .disks
            .first()
            .context("the restored VM has no disk")?
            .local
            .clone();
        if !data::same_content(&uploaded, &self.raw)? {
            bail!("the disk uploaded into the simulator differs from the test data");
        }
        remove(&uploaded);
        let ours = Outcome::Measured(Measure::new(secs, self.opts.size, cpu.as_secs_f64(), None));

        // Peer: the same point restored to a local file, right after.
        self.write_back(work)?;
        self.say("vm-restore: sendense-client restore of the same point to a local file");
        let peer = outcome(self.restore_to_file(&hub, &hub_url, &data_dir, &backup.id, work));
        hub.stop()?;
        drop(rt);
        drop(sim);
        drop(sim_rt);
        Ok((ours, peer, split))
    }

    /// `sendense-client restore --format raw` of `id` to a file in `work`, compared with the
    /// test data and removed.
    pub(super) fn restore_to_file(
        &self,
        hub: &Proc,
        hub_url: &str,
        data_dir: &Path,
        id: &str,
        work: &Path,
    ) -> Result<Measure> {
        let out = work.join("restore.raw");
        let mut cmd = Command::new(&self.bins.client);
        cmd.arg("restore");
        self.client_hub_args(&mut cmd, hub_url, data_dir);
        cmd.args(["--backup", id, "--disk"])
            .arg(DISK_KEY.to_string())
            .arg("--to")
            .arg(&out)
            .args(["--format", "raw", "--json"]);
        let cpu0 = hub.cpu().unwrap_or_default();
        let (secs, fin) = self.timed("client-restore-vc", cmd)?;
        let hub_cpu = hub.cpu().unwrap_or_default().saturating_sub(cpu0);
        if !data::same_content(&out, &self.raw)? {
            bail!("the local restore differs from the test data");
        }
        remove(&out);
        Ok(Measure::new(
            secs,
            self.opts.size,
            (fin.usage.cpu + hub_cpu).as_secs_f64(),
            Some(fin.usage.max_rss_bytes),
        ))
    }
}
