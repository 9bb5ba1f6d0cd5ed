//! A backup's captured VM configuration (issue #16): stored with the backup, kept by a
//! merge-free reopen, refused on a failed backup, removed with the backup.

use sendense_catalog::StoredVmConfig;
use sendense_types::{BackupStatus, VmConfig};

use crate::support::{Fixture, at, complete, register, start_full};

fn config() -> VmConfig {
    serde_json::from_value(serde_json::json!({
        "version": 1, "name": "web01", "guest_id": "ubuntu64Guest", "firmware": "bios",
        "num_cpus": 2, "cores_per_socket": 1, "memory_mb": 2048,
        "controllers": [{"key": 1000, "kind": "pvscsi", "bus_number": 0}],
        "disks": [
            {"key": 2000, "capacity_bytes": 1_048_576, "controller_key": 1000,
             "unit_number": 0, "provisioning": "thin"},
            {"key": 2001, "capacity_bytes": 2_097_152, "controller_key": 1000,
             "unit_number": 1, "provisioning": "thick-lazy"}
        ],
        "nics": [{"key": 4000, "adapter_type": "vmxnet3", "network": "VM Network",
                  "mac_address": "00:50:56:01:02:03", "mac_manual": false}]
    }))
    .unwrap()
}

#[test]
fn set_vm_config_running_then_completed_kept_across_reopen() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let running = start_full(&f.catalog, &vm, 1);

    f.catalog
        .set_vm_config(&running.backup_id, &config())
        .unwrap();
    complete(&f.catalog, &running, 2);
    let path = f.path();
    drop(f.catalog);
    let reopened = sendense_catalog::Catalog::open(&path).unwrap();
    let record = reopened.backup(&running.backup_id).unwrap().unwrap();

    assert_eq!(
        record.vm_config(),
        StoredVmConfig::Known(Box::new(config()))
    );
    assert_eq!(record.to_api().vm_config, Some(config()));
}

#[test]
fn set_vm_config_failed_backup_refused() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let running = start_full(&f.catalog, &vm, 1);
    f.catalog
        .fail_backup(&running.backup_id, "test", at(2))
        .unwrap();

    let err = f
        .catalog
        .set_vm_config(&running.backup_id, &config())
        .unwrap_err();

    assert!(err.to_string().contains("failed"), "{err}");
    assert_eq!(
        f.catalog
            .backup(&running.backup_id)
            .unwrap()
            .unwrap()
            .status,
        BackupStatus::Failed
    );
}

#[test]
fn vm_config_of_a_later_version_told_apart_and_not_answered() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let mut record = start_full(&f.catalog, &vm, 1);
    let mut value = serde_json::to_value(config()).unwrap();
    value["version"] = 7.into();
    record.vm_config = Some(value);

    assert_eq!(record.vm_config(), StoredVmConfig::Newer { version: 7 });
    assert_eq!(record.to_api().vm_config, None);
}

#[test]
fn delete_backup_removes_its_vm_config() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let running = start_full(&f.catalog, &vm, 1);
    f.catalog
        .set_vm_config(&running.backup_id, &config())
        .unwrap();
    complete(&f.catalog, &running, 2);

    let deleted = f.catalog.delete_backup(&running.backup_id).unwrap();

    assert_eq!(deleted.to_api().vm_config, Some(config()));
    assert!(f.catalog.backup(&running.backup_id).unwrap().is_none());
}
