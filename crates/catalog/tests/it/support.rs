//! Shared fixtures: a catalog in a temporary folder, a registered VM, backups at each stage.

use std::path::PathBuf;

use sendense_catalog::{BackupRecord, Catalog, DiskCompletion, FILE_NAME};
use sendense_types::{
    BackupId, BackupStatus, ChangeId, DiskKey, DiskSpec, RegisterVmRequest, Timestamp, Vm, VmName,
};
use tempfile::TempDir;

/// A catalog in its own temporary folder.
pub(crate) struct Fixture {
    pub(crate) dir: TempDir,
    pub(crate) catalog: Catalog,
}

impl Fixture {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path().join(FILE_NAME)).unwrap();
        Self { dir, catalog }
    }

    pub(crate) fn path(&self) -> PathBuf {
        self.dir.path().join(FILE_NAME)
    }
}

/// A fixed instant plus `secs`.
pub(crate) fn at(secs: i64) -> Timestamp {
    Timestamp::from_unix_seconds(1_800_000_000 + secs).unwrap()
}

pub(crate) fn name(text: &str) -> VmName {
    text.parse().unwrap()
}

pub(crate) fn spec(vm: &str, disks: &[(u32, u64)]) -> RegisterVmRequest {
    RegisterVmRequest::new(
        name(vm),
        disks
            .iter()
            .map(|&(key, capacity_bytes)| DiskSpec {
                key: DiskKey(key),
                capacity_bytes,
            })
            .collect(),
    )
    .unwrap()
}

/// Registers `vm` with disks 2000 (1 MiB) and 2001 (2 MiB).
pub(crate) fn register(catalog: &Catalog, vm: &str) -> Vm {
    catalog
        .upsert_vm(&spec(vm, &[(2001, 2 << 20), (2000, 1 << 20)]), at(0))
        .unwrap()
}

/// A backup record of `vm` at `at(secs)` (id suffix `secs`) in `status`, not stored.
pub(crate) fn new_record(
    vm: &Vm,
    secs: i64,
    parent: Option<&BackupRecord>,
    status: BackupStatus,
) -> BackupRecord {
    let id = BackupId::from_parts(&vm.name, at(secs), u32::try_from(secs).unwrap());
    BackupRecord::new(id, vm, parent, status, at(secs))
}

/// Creates a running full backup of `vm` at `at(secs)`.
pub(crate) fn start_full(catalog: &Catalog, vm: &Vm, secs: i64) -> BackupRecord {
    let id = BackupId::from_parts(&vm.name, at(secs), 0xf0);
    let record = BackupRecord::new(id, vm, None, BackupStatus::Running, at(secs));
    catalog.create_backup(&record).unwrap();
    record
}

/// Creates a running incremental on top of the VM's latest completed backup.
pub(crate) fn start_incremental(catalog: &Catalog, vm: &Vm, secs: i64) -> BackupRecord {
    let parent = catalog.latest_completed(&vm.name).unwrap().unwrap();
    let id = BackupId::from_parts(&vm.name, at(secs), 0x1c);
    let record = BackupRecord::new(id, vm, Some(&parent), BackupStatus::Running, at(secs));
    catalog.create_backup(&record).unwrap();
    record
}

/// Change id `52 aa/<seq>` for disk `key` (`<key>` in the epoch keeps disks apart).
pub(crate) fn change_id(key: DiskKey, seq: i64) -> ChangeId {
    format!("52 aa {key}/{seq}").parse().unwrap()
}

/// A completion of every disk of `record` with change ids `.../<secs>` and 4096 bytes.
pub(crate) fn completion(record: &BackupRecord, secs: i64) -> Vec<DiskCompletion> {
    record
        .disks
        .iter()
        .map(|d| DiskCompletion {
            disk_key: d.disk_key,
            change_id: Some(change_id(d.disk_key, secs)),
            bytes_written: 4096,
            digests: false,
        })
        .collect()
}

/// Completes `record` at `at(secs)`.
pub(crate) fn complete(catalog: &Catalog, record: &BackupRecord, secs: i64) -> BackupRecord {
    catalog
        .complete_backup(&record.backup_id, &completion(record, secs), at(secs))
        .unwrap()
}

/// The ids of records, in order.
pub(crate) fn ids(records: &[BackupRecord]) -> Vec<BackupId> {
    records.iter().map(|r| r.backup_id.clone()).collect()
}

/// A credential request for `name` at `host` as `user`, with a fixed password.
pub(crate) fn credential_request(
    name: &str,
    host: &str,
    user: &str,
    trust: sendense_types::VcenterTrust,
) -> sendense_types::CredentialRequest {
    sendense_types::CredentialRequest::new(
        name.parse().unwrap(),
        host.into(),
        user.into(),
        "pw".into(),
        trust,
    )
    .unwrap()
}
