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
