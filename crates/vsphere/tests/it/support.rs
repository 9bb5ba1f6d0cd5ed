//! Shared helpers: a simulator with a VM, session options, data checks.

use std::collections::BTreeMap;
use std::time::Duration;

use sendense_transfer::Extent;
use sendense_types::DiskKey;
use sendense_vsphere::{ConnectOptions, PreparedDisk, PreviousDisk, Session, TlsMode};
use sendense_vsphere_sim::{DiskSpec, SIM_PASSWORD, SIM_USER, Simulator, VmSpec};
use tempfile::TempDir;

/// A simulator with one VM, and the VM's id.
pub(crate) struct Env {
    pub(crate) _dir: TempDir,
    pub(crate) sim: Simulator,
    pub(crate) vm: String,
}

pub(crate) const MIB: u64 = 1024 * 1024;

pub(crate) async fn env_with(name: &str, cbt: bool, disks: Vec<DiskSpec>) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::start(dir.path()).await.unwrap();
    let vm = sim
        .add_vm(&VmSpec {
            name: name.to_owned(),
            cbt_enabled: cbt,
            disks,
        })
        .unwrap();
    Env { _dir: dir, sim, vm }
}

/// VM `vm1` with CBT on and two disks of 2 MiB and 3 MiB.
pub(crate) async fn env() -> Env {
    env_with(
        "vm1",
        true,
        vec![DiskSpec::flat(2 * MIB), DiskSpec::flat(3 * MIB)],
    )
    .await
}

pub(crate) fn options(sim: &Simulator) -> ConnectOptions {
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

pub(crate) async fn session(sim: &Simulator) -> Session {
    Session::connect(options(sim)).await.unwrap()
}

/// Read every extent of a prepared disk and compare with the simulator's local file.
pub(crate) async fn assert_extents_match_file(sim: &Simulator, vm: &str, disk: &PreparedDisk) {
    let key = i32::try_from(disk.key.get()).unwrap();
    let file = std::fs::read(sim.disk_file(vm, key).unwrap()).unwrap();
    for e in &disk.extents {
        let mut buf = vec![0u8; usize::try_from(e.length).unwrap()];
        disk.source.read(e.offset, &mut buf).await.unwrap();
        let start = usize::try_from(e.offset).unwrap();
        assert!(
            buf == file[start..start + buf.len()],
            "extent {e:?} differs"
        );
    }
}

/// Previous-backup records from a prepared backup (what the hub stores on `complete`).
pub(crate) fn previous_of(disks: &[PreparedDisk]) -> BTreeMap<DiskKey, PreviousDisk> {
    disks
        .iter()
        .map(|d| {
            (
                d.key,
                PreviousDisk {
                    change_id: d.new_change_id.clone(),
                    capacity: Some(d.capacity),
                    uuid: d.uuid.clone(),
                },
            )
        })
        .collect()
}

pub(crate) fn ext(offset: u64, length: u64) -> Extent {
    Extent::new(offset, length)
}
