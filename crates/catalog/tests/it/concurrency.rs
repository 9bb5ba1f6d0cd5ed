//! One catalog shared by threads.

use std::sync::{Arc, Barrier};
use std::thread;

use sendense_catalog::{BackupRecord, Catalog, CatalogError};
use sendense_types::{BackupId, BackupQuery, BackupStatus, DiskKey};

use crate::support::{Fixture, at, register, start_full};

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

#[test]
fn progress_writers_and_readers_concurrently_see_consistent_records() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let record = start_full(&f.catalog, &vm, 1);
    let catalog = Arc::new(f.catalog);

    let writers: Vec<_> = [DiskKey(2000), DiskKey(2001)]
        .into_iter()
        .map(|key| {
            let (catalog, id) = (Arc::clone(&catalog), record.backup_id.clone());
            thread::spawn(move || {
                for bytes in 1..=50u64 {
                    catalog.set_disk_progress(&id, key, bytes * 4096).unwrap();
                }
            })
        })
        .collect();
    let reader = {
        let catalog = Arc::clone(&catalog);
        thread::spawn(move || {
            (0..50)
                .map(|_| catalog.backups(&BackupQuery::default()).unwrap().len())
                .all(|n| n == 1)
        })
    };
    writers.into_iter().for_each(|h| h.join().unwrap());
    let reader_consistent = reader.join().unwrap();

    let stored = catalog.backup(&record.backup_id).unwrap().unwrap();
    assert_eq!(
        (
            reader_consistent,
            stored.disks[0].bytes_written,
            stored.disks[1].bytes_written
        ),
        (true, 50 * 4096, 50 * 4096)
    );
}
