//! Serde round trips: `from_json(to_json(x)) == x` for generated values.

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use sendense_types::{
    Backup, BackupDisk, BackupId, BackupStatus, BackupSummary, BackupType, Chain, ChangeId,
    CompleteBackupRequest, CompleteDisk, CredentialRequest, DiskKey, DiskSpec, DiskSummary,
    ExportName, RegisterVmRequest, Timestamp, VcenterTrust, Vm, VmName,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

fn round_trip<T: Serialize + DeserializeOwned>(value: &T) -> T {
    serde_json::from_str(&serde_json::to_string(value).unwrap()).unwrap()
}

fn vm_name() -> impl Strategy<Value = VmName> {
    "[A-Za-z0-9][A-Za-z0-9_-]{0,20}".prop_map(|s| s.parse().unwrap())
}

fn timestamp() -> impl Strategy<Value = Timestamp> {
    (0..=Timestamp::MAX.unix_seconds()).prop_map(|s| Timestamp::from_unix_seconds(s).unwrap())
}

fn backup_id() -> impl Strategy<Value = BackupId> {
    (vm_name(), timestamp(), any::<u32>()).prop_map(|(v, t, s)| BackupId::from_parts(&v, t, s))
}

fn change_id() -> impl Strategy<Value = ChangeId> {
    "[ -~]{1,64}".prop_map(|s| s.parse().unwrap())
}

fn backup_type() -> impl Strategy<Value = BackupType> {
    prop_oneof![
        Just(BackupType::Full),
        Just(BackupType::Incremental),
        Just(BackupType::Auto)
    ]
}

fn status() -> impl Strategy<Value = BackupStatus> {
    prop_oneof![
        Just(BackupStatus::Pending),
        Just(BackupStatus::Running),
        Just(BackupStatus::Completed),
        Just(BackupStatus::Failed)
    ]
}

fn disk_specs() -> impl Strategy<Value = Vec<DiskSpec>> {
    proptest::collection::btree_map(any::<u32>(), 1..=(1u64 << 37), 1..5).prop_map(|m| {
        m.into_iter()
            .map(|(k, sectors)| DiskSpec {
                key: DiskKey(k),
                capacity_bytes: sectors * 512,
            })
            .collect()
    })
}

fn backup_disk() -> impl Strategy<Value = BackupDisk> {
    (
        any::<u32>(),
        any::<u64>(),
        option::of("[a-z0-9/._-]{1,40}"),
        option::of(Just(ExportName::random())),
        option::of(change_id()),
        option::of(change_id()),
        any::<u64>(),
    )
        .prop_map(|(k, cap, file, export, parent, change, bytes)| BackupDisk {
            disk_key: DiskKey(k),
            capacity_bytes: cap,
            nbd_uri: export.as_ref().map(|e| format!("nbds://h:1/{e}")),
            file,
            export_name: export,
            parent_change_id: parent,
            change_id: change,
            bytes_written: bytes,
        })
}

fn backup() -> impl Strategy<Value = Backup> {
    (
        (backup_id(), vm_name(), backup_type(), status()),
        option::of(backup_id()),
        timestamp(),
        option::of(timestamp()),
        option::of("\\PC{0,40}"),
        vec(backup_disk(), 0..4),
    )
        .prop_map(
            |((id, vm, ty, st), parent, created, completed, reason, disks)| Backup {
                backup_id: id,
                vm_name: vm,
                backup_type: ty,
                status: st,
                parent_backup_id: parent,
                created_at: created,
                completed_at: completed,
                failure_reason: reason.clone(),
                full_reason: reason,
                files_missing: st == BackupStatus::Completed,
                evicted: false,
                protected: st == BackupStatus::Failed,
                verification: sendense_types::Verification::default(),
                disks,
                vm_config: None,
                copies: Vec::new(),
            },
        )
}

proptest! {
    #[test]
    fn backup_json_round_trips(b in backup()) {
        prop_assert_eq!(round_trip(&b), b);
    }

    #[test]
    fn chain_json_round_trips(vm in vm_name(), backups in vec(backup(), 0..3)) {
        let chain = Chain { vm_name: vm, backups };

        prop_assert_eq!(round_trip(&chain), chain);
    }

    #[test]
    fn vm_json_round_trips(name in vm_name(), disks in disk_specs(), t in timestamp()) {
        let vm = Vm { name, disks, created_at: t, updated_at: t };

        prop_assert_eq!(round_trip(&vm), vm);
    }

    #[test]
    fn register_vm_request_json_round_trips(name in vm_name(), disks in disk_specs()) {
        let req = RegisterVmRequest::new(name, disks).unwrap();

        prop_assert_eq!(round_trip(&req), req);
    }

    #[test]
    fn complete_backup_request_json_round_trips(
        entries in proptest::collection::btree_map(any::<u32>(), (option::of(change_id()), any::<u64>()), 1..5)
    ) {
        let disks = entries
            .into_iter()
            .map(|(k, (change_id, bytes))| CompleteDisk { disk_key: DiskKey(k), change_id, bytes_transferred: bytes })
            .collect();
        let req = CompleteBackupRequest::new(disks).unwrap();

        prop_assert_eq!(round_trip(&req), req);
    }

    #[test]
    fn credential_request_json_round_trips(password in "[ -~]{1,64}", user in "[a-z@.]{1,20}") {
        let req = CredentialRequest::new("vc".parse().unwrap(), "vc.example".into(), user, password, VcenterTrust::Insecure).unwrap();

        prop_assert_eq!(round_trip(&req), req);
    }

    #[test]
    fn backup_summary_json_round_trips(
        id in backup_id(),
        vm in vm_name(),
        quarters in any::<u32>(),
        sent in any::<u64>(),
        disks in vec((any::<u32>(), any::<u64>(), any::<u64>(), any::<u32>()), 0..4),
    ) {
        let summary = BackupSummary {
            backup_id: id,
            vm_name: vm,
            backup_type: BackupType::Full,
            status: BackupStatus::Completed,
            seconds: f64::from(quarters) / 4.0,
            bytes_sent: sent,
            disks: disks
                .into_iter()
                .map(|(k, s, sk, q)| DiskSummary {
                    disk_key: DiskKey(k),
                    bytes_sent: s,
                    bytes_skipped: sk,
                    seconds: f64::from(q) / 4.0,
                })
                .collect(),
            full_reason: (quarters % 2 == 1).then(|| "CBT was reset".to_owned()),
        };

        prop_assert_eq!(round_trip(&summary), summary);
    }

    #[test]
    fn register_vm_arbitrary_json_never_panics(text in "\\PC{0,200}") {
        let _ = serde_json::from_str::<RegisterVmRequest>(&text);
    }
}
