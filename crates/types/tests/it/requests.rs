//! Request bodies: validation while deserializing, unknown fields refused with a clear message.

use sendense_types::{
    BackupQuery, BackupStatus, BackupType, CompleteBackupRequest, CredentialRequest,
    FailBackupRequest, RegisterVmRequest, StartBackupRequest, TypesError,
};
use serde_json::json;

fn parse_err<T: serde::de::DeserializeOwned + std::fmt::Debug>(value: serde_json::Value) -> String {
    serde_json::from_value::<T>(value).unwrap_err().to_string()
}

#[test]
fn register_vm_valid_body_parses() {
    let req: RegisterVmRequest = serde_json::from_value(json!({
        "name": "web01",
        "disks": [{"key": 2000, "capacity_bytes": 1024}, {"key": 2001, "capacity_bytes": 512}]
    }))
    .unwrap();

    assert_eq!((req.name().as_str(), req.disks().len()), ("web01", 2));
}

#[test]
fn register_vm_unknown_field_rejected() {
    let msg = parse_err::<RegisterVmRequest>(json!({"name": "a", "disks": [], "extra": 1}));

    assert!(msg.contains("unknown field `extra`"), "{msg}");
}

#[test]
fn register_vm_unknown_disk_field_rejected() {
    let msg = parse_err::<RegisterVmRequest>(
        json!({"name": "a", "disks": [{"key": 2000, "capacity_bytes": 512, "path": "/x"}]}),
    );

    assert!(msg.contains("unknown field `path`"), "{msg}");
}

#[test]
fn register_vm_no_disks_rejected() {
    let msg = parse_err::<RegisterVmRequest>(json!({"name": "a", "disks": []}));

    assert!(msg.contains("at least one disk"), "{msg}");
}

#[test]
fn register_vm_duplicate_key_rejected() {
    let msg = parse_err::<RegisterVmRequest>(json!({"name": "a", "disks": [
        {"key": 2000, "capacity_bytes": 512}, {"key": 2000, "capacity_bytes": 1024}
    ]}));

    assert!(
        msg.contains("Disk key 2000 appears more than once"),
        "{msg}"
    );
}

#[test]
fn register_vm_zero_capacity_rejected() {
    let msg = parse_err::<RegisterVmRequest>(
        json!({"name": "a", "disks": [{"key": 2000, "capacity_bytes": 0}]}),
    );

    assert!(msg.contains("must be more than 0"), "{msg}");
}

#[test]
fn register_vm_unaligned_capacity_rejected() {
    let msg = parse_err::<RegisterVmRequest>(
        json!({"name": "a", "disks": [{"key": 2000, "capacity_bytes": 1000}]}),
    );

    assert!(msg.contains("multiple of 512"), "{msg}");
}

#[test]
fn register_vm_over_64_tib_rejected() {
    let msg = parse_err::<RegisterVmRequest>(
        json!({"name": "a", "disks": [{"key": 2000, "capacity_bytes": (64_u64 << 40) + 512}]}),
    );

    assert!(msg.contains("at most 64 TiB"), "{msg}");
}

#[test]
fn register_vm_64_tib_accepted() {
    let req = serde_json::from_value::<RegisterVmRequest>(
        json!({"name": "a", "disks": [{"key": 2000, "capacity_bytes": 64_u64 << 40}]}),
    );

    assert!(req.is_ok());
}

#[test]
fn register_vm_path_traversal_name_rejected() {
    let msg = parse_err::<RegisterVmRequest>(
        json!({"name": "../etc", "disks": [{"key": 2000, "capacity_bytes": 512}]}),
    );

    assert!(msg.contains("Invalid name"), "{msg}");
}

#[test]
fn register_vm_negative_key_rejected() {
    let msg = parse_err::<RegisterVmRequest>(
        json!({"name": "a", "disks": [{"key": -1, "capacity_bytes": 512}]}),
    );

    assert!(msg.contains("invalid value"), "{msg}");
}

#[test]
fn start_backup_valid_body_parses() {
    let req: StartBackupRequest =
        serde_json::from_value(json!({"vm_name": "web01", "backup_type": "auto"})).unwrap();

    assert_eq!(req.backup_type, BackupType::Auto);
}

#[test]
fn start_backup_base_backup_id_parses_and_is_omitted_when_absent() {
    let req: StartBackupRequest = serde_json::from_value(json!({
        "vm_name": "web01", "backup_type": "incremental",
        "base_backup_id": "backup-web01-20261124T235901-3fa9c2"
    }))
    .unwrap();
    let without = StartBackupRequest {
        base_backup_id: None,
        ..req.clone()
    };

    assert_eq!(
        (
            req.base_backup_id.map(|b| b.to_string()),
            serde_json::to_value(&without).unwrap()
        ),
        (
            Some("backup-web01-20261124T235901-3fa9c2".to_owned()),
            json!({"vm_name": "web01", "backup_type": "incremental"})
        )
    );
}

#[test]
fn start_backup_unknown_type_rejected() {
    let msg = parse_err::<StartBackupRequest>(json!({"vm_name": "web01", "backup_type": "Full"}));

    assert!(msg.contains("unknown variant `Full`"), "{msg}");
}

#[test]
fn start_backup_unknown_field_rejected() {
    let msg = parse_err::<StartBackupRequest>(
        json!({"vm_name": "web01", "backup_type": "full", "force": true}),
    );

    assert!(msg.contains("unknown field `force`"), "{msg}");
}

#[test]
fn complete_backup_valid_body_parses() {
    let req: CompleteBackupRequest = serde_json::from_value(json!({"disks": [
        {"disk_key": 2000, "change_id": "52 3c/4", "bytes_transferred": 10},
        {"disk_key": 2001, "bytes_transferred": 0}
    ]}))
    .unwrap();

    assert_eq!(req.disks()[1].change_id, None);
}

#[test]
fn complete_backup_duplicate_key_rejected() {
    let msg = parse_err::<CompleteBackupRequest>(json!({"disks": [
        {"disk_key": 2000, "change_id": null, "bytes_transferred": 10},
        {"disk_key": 2000, "change_id": null, "bytes_transferred": 10}
    ]}));

    assert!(msg.contains("appears more than once"), "{msg}");
}

#[test]
fn complete_backup_unknown_disk_field_rejected() {
    let msg = parse_err::<CompleteBackupRequest>(
        json!({"disks": [{"disk_key": 2000, "bytes_transferred": 1, "bytes": 1}]}),
    );

    assert!(msg.contains("unknown field `bytes`"), "{msg}");
}

#[test]
fn complete_backup_control_char_change_id_rejected() {
    let msg = parse_err::<CompleteBackupRequest>(
        json!({"disks": [{"disk_key": 2000, "change_id": "a\u{0}b", "bytes_transferred": 1}]}),
    );

    assert!(msg.contains("Invalid change id"), "{msg}");
}

#[test]
fn fail_backup_empty_reason_rejected() {
    let msg = parse_err::<FailBackupRequest>(json!({"reason": ""}));

    assert!(msg.contains("Invalid field reason"), "{msg}");
}

#[test]
fn fail_backup_reason_parses() {
    let req: FailBackupRequest =
        serde_json::from_value(json!({"reason": "source vanished"})).unwrap();

    assert_eq!(req.reason(), "source vanished");
}

#[test]
fn credential_request_parses_and_debug_hides_password() {
    let req: CredentialRequest = serde_json::from_value(json!({
        "name": "vc1", "host": "vcenter.example", "username": "u", "password": "hunter2",
        "insecure": true
    }))
    .unwrap();

    assert!(!format!("{req:?}").contains("hunter2"));
}

#[test]
fn credential_request_host_with_slash_rejected() {
    let msg = parse_err::<CredentialRequest>(json!({
        "name": "vc1", "host": "a/b", "username": "u", "password": "p", "insecure": true
    }));

    assert!(msg.contains("Invalid field host"), "{msg}");
}

#[test]
fn credential_request_missing_password_rejected() {
    let msg = parse_err::<CredentialRequest>(json!({"name": "vc1", "host": "h", "username": "u"}));

    assert!(msg.contains("missing field `password`"), "{msg}");
}

#[test]
fn backup_query_partial_parses() {
    let q: BackupQuery = serde_json::from_value(json!({"status": "failed"})).unwrap();

    assert_eq!((q.vm_name, q.status), (None, Some(BackupStatus::Failed)));
}

#[test]
fn register_vm_new_rejects_like_deserialize() {
    let err = RegisterVmRequest::new("a".parse().unwrap(), vec![]).unwrap_err();

    assert!(matches!(
        err,
        TypesError::InvalidField { field: "disks", .. }
    ));
}

#[test]
fn timestamp_field_invalid_rejected_with_reason() {
    let msg = parse_err::<sendense_types::Vm>(json!({
        "name": "a", "disks": [], "created_at": "yesterday", "updated_at": "2026-11-24T00:00:00Z"
    }));

    assert!(msg.contains("Invalid timestamp"), "{msg}");
}

#[test]
fn backup_query_empty_values_mean_no_filter() {
    let q: BackupQuery = serde_json::from_value(json!({"vm_name": "", "status": ""})).unwrap();

    assert_eq!(q, BackupQuery::default());
}

#[test]
fn backup_query_bad_status_rejected() {
    let msg = parse_err::<BackupQuery>(json!({"status": "done"}));

    assert!(
        msg.contains("must be pending, running, completed or failed"),
        "{msg}"
    );
}

#[test]
fn backup_query_unknown_param_rejected() {
    let msg = parse_err::<BackupQuery>(json!({"vm": "a"}));

    assert!(msg.contains("unknown field `vm`"), "{msg}");
}
