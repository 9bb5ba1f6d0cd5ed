//! The agent's job runner (`sendense_client::agent::VcenterRunner`) against the simulator and a
//! real in-process hub: a backup job runs the `backup --vcenter` flow with the credential the
//! hub hands over (password login, its CA) and the agent's hub connection, reports its progress
//! and backup id, and the images compare equal to the simulator's disks; an inventory job lists
//! the VMs with their inventory paths; a stop mid-job removes the snapshot and fails the backup.

use std::sync::Arc;
use std::time::Duration;

use sendense_client::ClientError;
use sendense_client::agent::{JobContext, JobDone, JobRunner, StopReason, VcenterRunner};
use sendense_client::hub::{HubClient, HubOptions};
use sendense_hub::daemon::{self, ClientCerts, HubConfig, RunningHub};
use sendense_transfer::engine::TransferOptions;
use sendense_types::{
    AgentCredential, AgentJob, BackupQuery, BackupStatus, BackupType, InventoryVm, JobId, JobKind,
    VmName,
};
use sendense_vsphere_sim::{DiskSpec, SIM_PASSWORD, SIM_USER, Simulator, VmSpec};
use tempfile::TempDir;

use super::MIB;
use crate::support::assert_same;

struct World {
    sim: Simulator,
    vm: String,
    hub: RunningHub,
    data: TempDir,
    _sim_dir: TempDir,
}

impl World {
    async fn start() -> Self {
        let sim_dir = tempfile::tempdir().unwrap();
        let sim = Simulator::start(sim_dir.path()).await.unwrap();
        let vm = sim
            .add_vm(&VmSpec {
                name: "vm1".to_owned(),
                cbt_enabled: true,
                disks: vec![DiskSpec::flat(4 * MIB), DiskSpec::flat(2 * MIB)],
            })
            .unwrap();
        sim.write_disk(&vm, 2000, MIB, &[0x5a; 65536]).unwrap();
        sim.write_disk(&vm, 2001, 0, &[0xa5; 4096]).unwrap();
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
            hub,
            data,
            _sim_dir: sim_dir,
        }
    }

    fn hub_options(&self) -> HubOptions {
        HubOptions::with_tls_dir(
            &format!("https://localhost:{}", self.hub.api_addr.port()),
            &crate::support::client_tls_in_process(self.data.path()),
            &self.data.path().join("api.token"),
        )
    }

    /// A job as the hub hands it to the credential's agent.
    fn job(&self, kind: JobKind) -> AgentJob {
        AgentJob {
            job_id: JobId::random(),
            kind,
            vm: (kind == JobKind::Backup).then(|| "dc1/vm/vm1".to_owned()),
            backup_type: (kind == JobKind::Backup).then_some(BackupType::Auto),
            credential: Some(AgentCredential {
                name: "vc1".parse().unwrap(),
                host: self.sim.address(),
                username: SIM_USER.to_owned(),
                password: SIM_PASSWORD.to_owned(),
                ca_pem: Some(String::from_utf8(self.sim.ca_pem()).unwrap()),
                insecure: false,
            }),
            attempt: 1,
            lease_seconds: 90,
            restore: None,
        }
    }

    fn runner() -> VcenterRunner {
        VcenterRunner {
            transfer: TransferOptions::with_connections(2),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_backup_job_runs_the_vcenter_flow_and_images_match() {
    let w = World::start().await;
    let (context, _stop) = JobContext::new(w.hub_options());
    let progress = Arc::clone(&context.progress);
    let started = context.backup_id.subscribe();

    let done = World::runner()
        .run(w.job(JobKind::Backup), context)
        .await
        .unwrap();

    let backup_id = done.backup_id.clone().unwrap();
    assert_eq!(started.borrow().as_ref(), Some(&backup_id));
    let p = progress.snapshot();
    assert!(p.bytes_total > 0 && p.bytes_done == p.bytes_total, "{p:?}");
    let hub = HubClient::new(&w.hub_options()).unwrap();
    let backup = hub.backup(&backup_id).await.unwrap();
    assert_eq!(backup.status, BackupStatus::Completed);
    for d in &backup.disks {
        let image = w
            .data
            .path()
            .join("repository")
            .join(d.file.as_deref().unwrap());
        let raw = w
            .sim
            .disk_file(&w.vm, i32::try_from(d.disk_key.get()).unwrap())
            .unwrap();
        assert_same(&image, "qcow2", &raw, "raw");
    }
    assert!(w.sim.snapshot_names(&w.vm).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_inventory_job_lists_vms_with_paths() {
    let w = World::start().await;
    w.sim
        .add_vm(&VmSpec {
            name: "db01".to_owned(),
            cbt_enabled: false,
            disks: vec![DiskSpec::flat(MIB)],
        })
        .unwrap();
    let (context, _stop) = JobContext::new(w.hub_options());

    let done = World::runner()
        .run(w.job(JobKind::Inventory), context)
        .await
        .unwrap();

    let vm = |name: &str| InventoryVm {
        name: name.to_owned(),
        path: format!("dc1/vm/{name}"),
    };
    assert_eq!(
        done,
        JobDone {
            backup_id: None,
            inventory: Some(vec![vm("db01"), vm("vm1")]),
            note: None,
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_backup_job_stopped_mid_transfer_leaves_no_snapshot_and_fails_the_backup() {
    let w = World::start().await;
    w.sim.hold_reads(true);
    let (context, stop) = JobContext::new(w.hub_options());
    let started = context.backup_id.subscribe();
    let job = tokio::spawn(World::runner().run(w.job(JobKind::Backup), context));

    tokio::time::timeout(Duration::from_secs(60), w.sim.read_held())
        .await
        .expect("the job reads its snapshot");
    stop.send_replace(Some(StopReason::AgentStopping));
    let result = tokio::time::timeout(Duration::from_secs(60), job)
        .await
        .expect("the job stops in time")
        .unwrap();
    w.sim.hold_reads(false);

    let err = result.unwrap_err();
    assert!(matches!(err, ClientError::Interrupted), "{err:?}");
    assert!(w.sim.snapshot_names(&w.vm).is_empty());
    let backup_id = started.borrow().clone().expect("the backup was started");
    let hub = HubClient::new(&w.hub_options()).unwrap();
    let failed = hub
        .backups(&BackupQuery {
            vm_name: Some(VmName::try_from("vm1").unwrap()),
            status: Some(BackupStatus::Failed),
        })
        .await
        .unwrap();
    assert_eq!(
        failed.iter().map(|b| &b.backup_id).collect::<Vec<_>>(),
        [&backup_id]
    );
}
