//! Instant recoveries: stored only for a completed point, listed oldest first, kept across
//! reopen, deleted once.

use sendense_catalog::{Catalog, ErrorKind, InstantDiskRecord, InstantRecord};
use sendense_types::{DiskKey, ExportName, InstantId};

use crate::support::{Fixture, at, complete, register, start_full};

fn instant(point: &sendense_catalog::BackupRecord, id: &str, secs: i64) -> InstantRecord {
    InstantRecord {
        instant_id: id.parse::<InstantId>().unwrap(),
        backup_id: point.backup_id.clone(),
        vm_name: point.vm_name.clone(),
        created_at: at(secs),
        disks: vec![InstantDiskRecord {
            disk_key: DiskKey(2000),
            export_name: ExportName::random(),
            overlay: format!("instant/{id}/disk-2000.qcow2"),
            backing_file: point.disks[0].file.clone(),
        }],
    }
}

#[test]
fn instant_of_a_running_backup_is_refused_and_of_a_completed_one_kept_across_reopen() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let running = start_full(&f.catalog, &vm, 0);
    let refused = f
        .catalog
        .create_instant(&instant(&running, "instant-0000000000000001", 1))
        .unwrap_err();
    let done = complete(&f.catalog, &running, 2);
    let second = instant(&done, "instant-0000000000000002", 4);
    let first = instant(&done, "instant-00000000000000ff", 3);
    f.catalog.create_instant(&second).unwrap();
    f.catalog.create_instant(&first).unwrap();
    let path = f.path();
    drop(f.catalog);

    let catalog = Catalog::open(&path).unwrap();

    assert_eq!(refused.kind(), ErrorKind::Invalid);
    assert_eq!(catalog.instants().unwrap(), [first.clone(), second.clone()]);
    assert_eq!(
        catalog.delete_instant(&first.instant_id).unwrap(),
        Some(first.clone())
    );
    assert_eq!(catalog.delete_instant(&first.instant_id).unwrap(), None);
    assert_eq!(catalog.instants().unwrap(), [second]);
}
