//! Reopening the catalog file.

use sendense_catalog::{Catalog, ErrorKind};
use sendense_types::{BackupQuery, VcenterTrust};

use crate::support::{
    Fixture, at, complete, credential_request, ids, register, start_full, start_incremental,
};

#[test]
fn reopen_keeps_vms_backups_chain_and_credentials() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let full = complete(&f.catalog, &start_full(&f.catalog, &vm, 1), 2);
    let running = start_incremental(&f.catalog, &vm, 3);
    f.catalog
        .put_credential(
            &credential_request("vc1", "h", "u", VcenterTrust::Insecure),
            vec![9],
            at(1),
        )
        .unwrap();
    let path = f.path();
    drop(f.catalog);

    let catalog = Catalog::open(&path).unwrap();

    assert_eq!(
        (
            catalog.vm(&vm.name).unwrap(),
            ids(&catalog.chain(&vm.name).unwrap()),
            ids(&catalog.running_backups().unwrap()),
            ids(&catalog.backups(&BackupQuery::default()).unwrap()),
            catalog.credentials().unwrap().len(),
        ),
        (
            Some(vm),
            vec![full.backup_id.clone()],
            vec![running.backup_id.clone()],
            vec![full.backup_id, running.backup_id],
            1
        )
    );
}

#[test]
fn reopen_keeps_creation_order_after_more_backups() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let first = complete(&f.catalog, &start_full(&f.catalog, &vm, 1), 2);
    let path = f.path();
    drop(f.catalog);
    let catalog = Catalog::open(&path).unwrap();

    let second = complete(&catalog, &start_incremental(&catalog, &vm, 3), 4);

    assert_eq!(
        ids(&catalog.backups(&BackupQuery::default()).unwrap()),
        [first.backup_id, second.backup_id]
    );
}

#[test]
fn open_second_handle_same_file_refused() {
    let f = Fixture::new();

    let err = Catalog::open(f.path()).unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Storage);
}

#[test]
fn open_garbage_file_storage_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.redb");
    std::fs::write(&path, vec![0x5a; 8192]).unwrap();

    let err = Catalog::open(&path).unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Storage);
}

#[test]
fn open_in_uses_catalog_file_name() {
    let dir = tempfile::tempdir().unwrap();

    drop(Catalog::open_in(dir.path()).unwrap());

    assert!(dir.path().join(sendense_catalog::FILE_NAME).is_file());
}
