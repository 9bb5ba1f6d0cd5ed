//! Configuration capture and restores into vCenter, against the simulator.

use std::collections::BTreeMap;

use sendense_types::{ControllerKind, Firmware, NicAdapter, Provisioning};
use sendense_vsphere::{PrepareOptions, VsphereBackup};

use crate::support::{MIB, env, session};

#[tokio::test]
async fn prepare_captures_the_snapshot_configuration() {
    let e = env().await;
    let s = session(&e.sim).await;
    let hw = e.sim.vm_by_name("vm1").unwrap().hardware;

    let p = VsphereBackup::prepare(&s, "vm1", &BTreeMap::new(), &PrepareOptions::default())
        .await
        .unwrap();
    let config = p.vm_config.clone().unwrap();
    p.finish().await.unwrap();

    assert_eq!(
        (
            config.name.as_str(),
            config.guest_id.as_str(),
            config.hardware_version.as_deref(),
            config.firmware,
            config.secure_boot,
            config.num_cpus,
            config.cores_per_socket,
            config.memory_mb,
            config.annotation.as_str(),
        ),
        (
            "vm1",
            "ubuntu64Guest",
            Some("vmx-19"),
            Firmware::Efi,
            true,
            4,
            2,
            4096,
            hw.annotation.as_str(),
        )
    );
    let controllers: Vec<_> = config
        .controllers
        .iter()
        .map(|c| (c.key, c.kind, c.bus_number))
        .collect();
    assert_eq!(
        controllers,
        [
            (200, ControllerKind::Ide, 0),
            (201, ControllerKind::Ide, 1),
            (1000, ControllerKind::Pvscsi, 0),
            (15000, ControllerKind::Sata, 0)
        ]
    );
    let disks: Vec<_> = config
        .disks
        .iter()
        .map(|d| {
            (
                d.key.get(),
                d.controller_key,
                d.unit_number,
                d.capacity_bytes,
                d.provisioning,
                d.file_name.clone(),
            )
        })
        .collect();
    assert_eq!(
        disks,
        [
            (
                2000,
                1000,
                0,
                2 * MIB,
                Provisioning::Thin,
                Some("[ds1] vm1/vm1.vmdk".to_owned())
            ),
            (
                2001,
                15000,
                0,
                3 * MIB,
                Provisioning::ThickEager,
                Some("[ds1] vm1/vm1_1.vmdk".to_owned())
            )
        ]
    );
    let nics: Vec<_> = config
        .nics
        .iter()
        .map(|n| {
            (
                n.adapter_type,
                n.network.clone(),
                n.mac_address.clone(),
                n.mac_manual,
                n.start_connected,
            )
        })
        .collect();
    assert_eq!(
        nics,
        [
            (
                NicAdapter::Vmxnet3,
                "VM Network".to_owned(),
                hw.nics[0].mac.clone(),
                false,
                true
            ),
            (
                NicAdapter::E1000e,
                "Backup Net".to_owned(),
                "00:50:56:3f:00:01".to_owned(),
                true,
                false
            )
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Restores.

use std::sync::Arc;

use sendense_transfer::progress::NoProgress;
use sendense_transfer::source::{BoxFuture, MemorySource};
use sendense_transfer::{DiskSource, Extent, TransferError};
use sendense_types::{DiskKey, RestoreRequest, RestoreTarget, VmConfig};
use sendense_vsphere::{RestoreDisk, UploadOptions, VsphereError, restore};
use sendense_vsphere_sim::Simulator;

/// The configuration `vm1` of [`env`] captured by a backup.
async fn captured(sim: &Simulator) -> VmConfig {
    let s = session(sim).await;
    let p = VsphereBackup::prepare(&s, "vm1", &BTreeMap::new(), &PrepareOptions::default())
        .await
        .unwrap();
    let config = p.vm_config.clone().unwrap();
    p.finish().await.unwrap();
    config
}

/// A disk image of `size` bytes: a pattern in its first and last MiB, a hole between.
fn image(size: u64, seed: u8) -> (Vec<u8>, Vec<Extent>) {
    let mut data = vec![0u8; usize::try_from(size).unwrap()];
    let mib = usize::try_from(MIB).unwrap();
    for (i, b) in data[..mib].iter_mut().enumerate() {
        *b = seed.wrapping_add(u8::try_from(i % 251).unwrap());
    }
    let n = data.len();
    for (i, b) in data[n - mib..].iter_mut().enumerate() {
        *b = seed ^ u8::try_from(i % 241).unwrap();
    }
    (
        data,
        vec![Extent::new(0, MIB), Extent::new(size - MIB, MIB)],
    )
}

fn sources(config: &VmConfig) -> (Vec<RestoreDisk>, Vec<Vec<u8>>) {
    let mut disks = Vec::new();
    let mut images = Vec::new();
    for (i, d) in config.disks.iter().enumerate() {
        let (data, allocated) = image(d.capacity_bytes, u8::try_from(i).unwrap() + 1);
        disks.push(RestoreDisk {
            key: d.key,
            source: Arc::new(MemorySource::new(data.clone()).with_allocated(allocated)),
        });
        images.push(data);
    }
    (disks, images)
}

fn request(target: RestoreTarget, vm_name: &str) -> RestoreRequest {
    RestoreRequest {
        target,
        vm_name: vm_name.to_owned(),
        credential: None,
        datacenter: "dc1".to_owned(),
        folder: None,
        resource_pool: None,
        host: None,
        datastore: "ds1".to_owned(),
        network_map: BTreeMap::new(),
        power_on: false,
        keep_macs: false,
        disks: None,
    }
}

fn small_chunks() -> UploadOptions {
    UploadOptions {
        chunk_bytes: 256 * 1024,
        read_ahead: 4,
        ..UploadOptions::default()
    }
}

#[tokio::test]
async fn restore_new_vm_rebuilds_the_hardware_and_uploads_the_disks() {
    let e = env().await;
    let config = captured(&e.sim).await;
    e.sim.add_folder("restored");
    let (disks, images) = sources(&config);
    let mut req = request(RestoreTarget::Vcenter, "vm1-restored");
    req.folder = Some("vm/restored".to_owned());
    req.resource_pool = Some(sendense_vsphere_sim::SIM_RESOURCE_POOL.to_owned());
    req.network_map
        .insert("Backup Net".to_owned(), "Restore Net".to_owned());
    req.power_on = true;
    let s = session(&e.sim).await;

    let done = restore(
        &s,
        &config,
        &req,
        disks,
        &small_chunks(),
        Arc::new(NoProgress),
        std::future::pending(),
    )
    .await
    .unwrap();

    let vm = e.sim.vm_by_name("vm1-restored").unwrap();
    let original = e.sim.vm_by_name("vm1").unwrap();
    let hw = &vm.hardware;
    assert_eq!(
        (
            vm.path.as_str(),
            vm.powered_on,
            done.powered_on,
            hw.guest_id.as_str(),
            hw.version.as_str(),
            hw.firmware.as_str(),
            hw.secure_boot,
            hw.num_cpus,
            hw.cores_per_socket,
            hw.memory_mb,
            hw.annotation.as_str()
        ),
        (
            "dc1/vm/restored/vm1-restored",
            true,
            true,
            "ubuntu64Guest",
            "vmx-19",
            "efi",
            true,
            4,
            2,
            4096,
            original.hardware.annotation.as_str()
        )
    );
    let kind_of = |key: i32| {
        hw.controllers
            .iter()
            .find(|c| c.key == key)
            .map(|c| (c.kind.clone(), c.bus))
            .unwrap()
    };
    let placed: Vec<_> = vm
        .disks
        .iter()
        .map(|d| {
            (
                kind_of(d.controller_key),
                d.unit,
                d.capacity,
                d.thin,
                d.eager,
            )
        })
        .collect();
    assert_eq!(
        placed,
        [
            (
                ("ParaVirtualSCSIController".to_owned(), 0),
                0,
                2 * MIB,
                true,
                false
            ),
            (
                ("VirtualAHCIController".to_owned(), 0),
                0,
                3 * MIB,
                false,
                true
            )
        ]
    );
    for (d, data) in vm.disks.iter().zip(&images) {
        assert!(
            std::fs::read(&d.local).unwrap() == *data,
            "disk {} differs",
            d.key
        );
    }
    let nics: Vec<_> = hw
        .nics
        .iter()
        .map(|n| {
            (
                n.kind.as_str(),
                n.network.as_str(),
                n.start_connected,
                n.address_type.as_str(),
            )
        })
        .collect();
    assert_eq!(
        nics,
        [
            ("VirtualVmxnet3", "VM Network", true, "assigned"),
            ("VirtualE1000e", "Restore Net", false, "assigned")
        ]
    );
    assert_ne!(hw.nics[1].mac, "00:50:56:3f:00:01");
    assert_eq!(done.disks.iter().map(|d| d.bytes).sum::<u64>(), 5 * MIB);
}

#[tokio::test]
async fn restore_keep_macs_sets_the_captured_macs() {
    let e = env().await;
    let config = captured(&e.sim).await;
    let (disks, _) = sources(&config);
    let mut req = request(RestoreTarget::Vcenter, "vm1-macs");
    req.keep_macs = true;
    let s = session(&e.sim).await;

    restore(
        &s,
        &config,
        &req,
        disks,
        &small_chunks(),
        Arc::new(NoProgress),
        std::future::pending(),
    )
    .await
    .unwrap();

    let macs: Vec<_> = e
        .sim
        .vm_by_name("vm1-macs")
        .unwrap()
        .hardware
        .nics
        .iter()
        .map(|n| (n.mac.clone(), n.address_type.clone()))
        .collect();
    let captured: Vec<_> = config
        .nics
        .iter()
        .map(|n| (n.mac_address.clone(), "manual".to_owned()))
        .collect();
    assert_eq!(macs, captured);
}

#[tokio::test]
async fn restore_network_missing_from_the_map_creates_nothing() {
    let e = env().await;
    let config = captured(&e.sim).await;
    let (disks, _) = sources(&config);
    let mut req = request(RestoreTarget::Vcenter, "vm1-restored");
    req.network_map
        .insert("Backup Net".to_owned(), "DMZ".to_owned());
    let files = e.sim.datastore_files();
    let s = session(&e.sim).await;

    let err = restore(
        &s,
        &config,
        &req,
        disks,
        &small_chunks(),
        Arc::new(NoProgress),
        std::future::pending(),
    )
    .await
    .unwrap_err();

    assert!(
        matches!(&err, VsphereError::NetworkNotMapped { network, target, .. } if network == "Backup Net" && target == "DMZ"),
        "{err}"
    );
    assert!(err.to_string().contains("network_map"), "{err}");
    assert_eq!(
        (
            e.sim.stats().vms_created,
            e.sim.vms().len(),
            e.sim.datastore_files()
        ),
        (0, 1, files)
    );
}

#[tokio::test]
async fn restore_failing_mid_upload_leaves_no_vm_and_no_files() {
    let e = env().await;
    let config = captured(&e.sim).await;
    let (disks, _) = sources(&config);
    let files = e.sim.datastore_files();
    e.sim.fail_put_after(Some(MIB));
    let s = session(&e.sim).await;

    let err = restore(
        &s,
        &config,
        &request(RestoreTarget::Vcenter, "vm1-restored"),
        disks,
        &small_chunks(),
        Arc::new(NoProgress),
        std::future::pending(),
    )
    .await
    .unwrap_err();

    let stats = e.sim.stats();
    assert!(stats.upload_bytes >= MIB, "{err}");
    assert_eq!(
        (
            stats.vms_created,
            stats.vms_destroyed,
            e.sim.vm_by_name("vm1-restored").is_none(),
            e.sim.datastore_files()
        ),
        (1, 1, true, files)
    );
}

#[tokio::test]
async fn restore_create_vm_fault_leaves_nothing() {
    let e = env().await;
    let config = captured(&e.sim).await;
    let (disks, _) = sources(&config);
    let files = e.sim.datastore_files();
    e.sim
        .fail_next_task("CreateVM_Task", "InsufficientResourcesFault", "no room");
    let s = session(&e.sim).await;

    let err = restore(
        &s,
        &config,
        &request(RestoreTarget::Vcenter, "vm1-restored"),
        disks,
        &small_chunks(),
        Arc::new(NoProgress),
        std::future::pending(),
    )
    .await
    .unwrap_err();

    assert!(matches!(err, VsphereError::TaskFailed { .. }), "{err}");
    assert_eq!((e.sim.vms().len(), e.sim.datastore_files()), (1, files));
}

/// A source whose reads never end, telling when the first one started.
#[derive(Debug)]
struct StuckSource {
    size: u64,
    started: tokio::sync::watch::Sender<bool>,
}

impl DiskSource for StuckSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn read<'a>(&'a self, _: u64, _: &'a mut [u8]) -> BoxFuture<'a, Result<(), TransferError>> {
        self.started.send_replace(true);
        Box::pin(std::future::pending())
    }

    fn allocated_extents(&self) -> BoxFuture<'_, Result<Vec<Extent>, TransferError>> {
        let size = self.size;
        Box::pin(async move { Ok(vec![Extent::new(0, size)]) })
    }
}

#[tokio::test]
async fn restore_cancelled_during_upload_destroys_the_vm() {
    let e = env().await;
    let config = captured(&e.sim).await;
    let (started, mut seen) = tokio::sync::watch::channel(false);
    let disks = config
        .disks
        .iter()
        .map(|d| RestoreDisk {
            key: d.key,
            source: Arc::new(StuckSource {
                size: d.capacity_bytes,
                started: started.clone(),
            }) as Arc<dyn DiskSource>,
        })
        .collect();
    let files = e.sim.datastore_files();
    let s = session(&e.sim).await;

    let err = restore(
        &s,
        &config,
        &request(RestoreTarget::Vcenter, "vm1-restored"),
        disks,
        &small_chunks(),
        Arc::new(NoProgress),
        async move {
            let _ = seen.wait_for(|s| *s).await;
        },
    )
    .await
    .unwrap_err();

    assert!(matches!(err, VsphereError::Cancelled), "{err}");
    assert_eq!(
        (
            e.sim.vms().len(),
            e.sim.stats().vms_destroyed,
            e.sim.datastore_files()
        ),
        (1, 1, files)
    );
}

#[tokio::test]
async fn restore_into_existing_vm_adds_disks_on_free_slots_and_keeps_its_disks() {
    let e = env().await;
    e.sim.write_disk(&e.vm, 2000, 0, &[7u8; 8192]).unwrap();
    let config = captured(&e.sim).await;
    let before = e.sim.vm_by_name("vm1").unwrap();
    let before_data: Vec<Vec<u8>> = before
        .disks
        .iter()
        .map(|d| std::fs::read(&d.local).unwrap())
        .collect();
    let (disks, images) = sources(&config);
    let s = session(&e.sim).await;

    let done = restore(
        &s,
        &config,
        &request(RestoreTarget::ExistingVm, "vm1"),
        disks,
        &small_chunks(),
        Arc::new(NoProgress),
        std::future::pending(),
    )
    .await
    .unwrap();

    let after = e.sim.vm_by_name("vm1").unwrap();
    assert_eq!(&after.disks[..2], &before.disks[..]);
    for (d, data) in before.disks.iter().zip(&before_data) {
        assert!(
            std::fs::read(&d.local).unwrap() == *data,
            "existing disk {} changed",
            d.key
        );
    }
    let added: Vec<_> = after.disks[2..]
        .iter()
        .map(|d| (d.controller_key, d.unit, d.capacity))
        .collect();
    assert_eq!(added, [(1000, 1, 2 * MIB), (15000, 1, 3 * MIB)]);
    for (d, data) in after.disks[2..].iter().zip(&images) {
        assert!(
            std::fs::read(&d.local).unwrap() == *data,
            "restored disk {} differs",
            d.key
        );
    }
    assert_eq!(
        done.disks.iter().map(|d| d.key).collect::<Vec<_>>(),
        [DiskKey(2000), DiskKey(2001)]
    );
}

#[tokio::test]
async fn restore_into_existing_vm_failing_mid_upload_removes_the_added_disks() {
    let e = env().await;
    let config = captured(&e.sim).await;
    let before = e.sim.vm_by_name("vm1").unwrap();
    let files = e.sim.datastore_files();
    let (disks, _) = sources(&config);
    e.sim.fail_put_after(Some(MIB / 2));
    let s = session(&e.sim).await;

    restore(
        &s,
        &config,
        &request(RestoreTarget::ExistingVm, "vm1"),
        disks,
        &small_chunks(),
        Arc::new(NoProgress),
        std::future::pending(),
    )
    .await
    .unwrap_err();

    assert_eq!(
        (e.sim.vm_by_name("vm1").unwrap(), e.sim.datastore_files()),
        (before, files)
    );
}

#[tokio::test]
async fn restore_into_powered_on_vm_is_refused() {
    let e = env().await;
    let config = captured(&e.sim).await;
    let (disks, _) = sources(&config);
    e.sim.set_powered_on(&e.vm, true);
    let s = session(&e.sim).await;

    let err = restore(
        &s,
        &config,
        &request(RestoreTarget::ExistingVm, "vm1"),
        disks,
        &small_chunks(),
        Arc::new(NoProgress),
        std::future::pending(),
    )
    .await
    .unwrap_err();

    assert!(matches!(err, VsphereError::VmPoweredOn { .. }), "{err}");
    assert_eq!(e.sim.stats().reconfigs, 0);
}
