//! Pins the exact JSON field names and shapes of DESIGN.md's REST API.

use sendense_types::{
    ApiError, Backup, BackupDisk, BackupStatus, BackupSummary, BackupType, Chain, Credential,
    DiskKey, DiskSpec, DiskSummary, Health, RestoreDisk, RestoreExports, Vm,
};
use serde_json::{Value, json};

fn backup() -> Backup {
    Backup {
        backup_id: "backup-web01-20261124T235901-3fa9c2".parse().unwrap(),
        vm_name: "web01".parse().unwrap(),
        backup_type: BackupType::Incremental,
        status: BackupStatus::Running,
        parent_backup_id: Some("backup-web01-20261123T235901-000abc".parse().unwrap()),
        created_at: "2026-11-24T23:59:01Z".parse().unwrap(),
        completed_at: None,
        failure_reason: None,
        full_reason: None,
        files_missing: false,
        evicted: false,
        protected: false,
        verification: sendense_types::Verification::default(),
        disks: vec![BackupDisk {
            disk_key: DiskKey(2000),
            capacity_bytes: 1 << 30,
            file: Some("web01/disk-2000/backup-web01-20261124T235901-3fa9c2.qcow2".into()),
            export_name: Some("0123456789abcdef0123456789abcdef".parse().unwrap()),
            nbd_uri: Some("nbds://127.0.0.1:10809/0123456789abcdef0123456789abcdef".into()),
            parent_change_id: Some("52 3c 7e/12".parse().unwrap()),
            change_id: None,
            bytes_written: 4096,
        }],
        vm_config: None,
        copies: Vec::new(),
    }
}

fn backup_json() -> Value {
    json!({
        "backup_id": "backup-web01-20261124T235901-3fa9c2",
        "vm_name": "web01",
        "backup_type": "incremental",
        "status": "running",
        "parent_backup_id": "backup-web01-20261123T235901-000abc",
        "created_at": "2026-11-24T23:59:01Z",
        "completed_at": null,
        "failure_reason": null,
        "full_reason": null,
        "files_missing": false,
        "evicted": false,
        "protected": false,
        "verification": {"state": "unverified", "at": null, "bad_ranges": []},
        "disks": [{
            "disk_key": 2000,
            "capacity_bytes": 1_073_741_824_u64,
            "file": "web01/disk-2000/backup-web01-20261124T235901-3fa9c2.qcow2",
            "export_name": "0123456789abcdef0123456789abcdef",
            "nbd_uri": "nbds://127.0.0.1:10809/0123456789abcdef0123456789abcdef",
            "parent_change_id": "52 3c 7e/12",
            "change_id": null,
            "bytes_written": 4096
        }],
        "vm_config": null,
        "copies": []
    })
}

#[test]
fn backup_serializes_golden_json() {
    assert_eq!(serde_json::to_value(backup()).unwrap(), backup_json());
}

#[test]
fn chain_serializes_golden_json() {
    let chain = Chain {
        vm_name: "web01".parse().unwrap(),
        backups: vec![backup()],
    };

    assert_eq!(
        serde_json::to_value(chain).unwrap(),
        json!({"vm_name": "web01", "backups": [backup_json()]})
    );
}

#[test]
fn vm_serializes_golden_json() {
    let vm = Vm {
        name: "web01".parse().unwrap(),
        disks: vec![DiskSpec {
            key: DiskKey(2000),
            capacity_bytes: 512,
        }],
        created_at: "2026-11-24T00:00:00Z".parse().unwrap(),
        updated_at: "2026-11-24T00:00:01Z".parse().unwrap(),
    };

    assert_eq!(
        serde_json::to_value(vm).unwrap(),
        json!({
            "name": "web01",
            "disks": [{"key": 2000, "capacity_bytes": 512}],
            "created_at": "2026-11-24T00:00:00Z",
            "updated_at": "2026-11-24T00:00:01Z"
        })
    );
}

#[test]
fn restore_exports_serializes_golden_json() {
    let exports = RestoreExports {
        disks: vec![RestoreDisk {
            disk_key: DiskKey(2001),
            export_name: "abc".parse().unwrap(),
            nbd_uri: "nbds://hub:10809/abc".into(),
        }],
    };

    assert_eq!(
        serde_json::to_value(exports).unwrap(),
        json!({"disks": [{"disk_key": 2001, "export_name": "abc", "nbd_uri": "nbds://hub:10809/abc"}]})
    );
}

#[test]
fn credential_serializes_without_password() {
    let credential = Credential {
        name: "vc1".parse().unwrap(),
        host: "vcenter.example".into(),
        username: "backup@vsphere.local".into(),
        created_at: "2026-11-24T00:00:00Z".parse().unwrap(),
        ca_pem: None,
        insecure: true,
        needs_trust_choice: false,
        agent: Some("appliance1".parse().unwrap()),
    };

    assert_eq!(
        serde_json::to_value(credential).unwrap(),
        json!({
            "name": "vc1",
            "host": "vcenter.example",
            "username": "backup@vsphere.local",
            "created_at": "2026-11-24T00:00:00Z",
            "insecure": true,
            "agent": "appliance1"
        })
    );
}

#[test]
fn health_and_error_serialize_golden_json() {
    let health = Health {
        status: "ok".into(),
        version: "0.1.0".into(),
    };
    let error = ApiError::new(sendense_types::error_codes::NOT_FOUND, "Unknown VM web02");

    assert_eq!(
        (
            serde_json::to_value(health).unwrap(),
            serde_json::to_value(error).unwrap()
        ),
        (
            json!({"status": "ok", "version": "0.1.0"}),
            json!({"error": "not_found", "message": "Unknown VM web02"})
        )
    );
}

#[test]
fn backup_summary_serializes_golden_json() {
    let summary = BackupSummary {
        backup_id: "backup-web01-20261124T235901-3fa9c2".parse().unwrap(),
        vm_name: "web01".parse().unwrap(),
        backup_type: BackupType::Full,
        status: BackupStatus::Completed,
        seconds: 1.5,
        bytes_sent: 100,
        disks: vec![DiskSummary {
            disk_key: DiskKey(2000),
            bytes_sent: 100,
            bytes_skipped: 924,
            seconds: 1.25,
        }],
        full_reason: None,
    };

    assert_eq!(
        serde_json::to_value(summary).unwrap(),
        json!({
            "backup_id": "backup-web01-20261124T235901-3fa9c2",
            "vm_name": "web01",
            "backup_type": "full",
            "status": "completed",
            "seconds": 1.5,
            "bytes_sent": 100,
            "disks": [{"disk_key": 2000, "bytes_sent": 100, "bytes_skipped": 924, "seconds": 1.25}]
        })
    );
}

#[test]
fn backup_type_and_status_names_are_lowercase() {
    let names = serde_json::to_value((
        [BackupType::Full, BackupType::Incremental, BackupType::Auto],
        [
            BackupStatus::Pending,
            BackupStatus::Running,
            BackupStatus::Completed,
            BackupStatus::Failed,
        ],
    ))
    .unwrap();

    assert_eq!(
        names,
        json!([
            ["full", "incremental", "auto"],
            ["pending", "running", "completed", "failed"]
        ])
    );
}
