//! One catalog shared by threads.

use std::sync::{Arc, Barrier};
use std::thread;

use sendense_catalog::{BackupRecord, Catalog, CatalogError};
use sendense_types::{BackupId, BackupStatus};

use crate::support::{Fixture, at, register};

#[test]
fn catalog_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}

    assert_send_sync::<Catalog>();
}

#[test]
fn create_backup_racing_threads_exactly_one_wins() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let catalog = Arc::new(f.catalog);
    let barrier = Arc::new(Barrier::new(8));

    let results: Vec<Result<(), CatalogError>> = (0..8u32)
        .map(|i| {
            let (catalog, barrier, vm) = (Arc::clone(&catalog), Arc::clone(&barrier), vm.clone());
            thread::spawn(move || {
                let id = BackupId::from_parts(&vm.name, at(1), i);
                let record = BackupRecord::new(id, &vm, None, BackupStatus::Running, at(1));
                barrier.wait();
                catalog.create_backup(&record)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();

    let wins = results.iter().filter(|r| r.is_ok()).count();
    let conflicts = results
        .iter()
        .filter(|r| matches!(r, Err(CatalogError::BackupInProgress { .. })))
        .count();
    assert_eq!(
        (wins, conflicts, catalog.running_backups().unwrap().len()),
        (1, 7, 1)
    );
}
