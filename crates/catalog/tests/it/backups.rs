//! Creating, progressing, completing and failing backups.

use sendense_catalog::{BackupRecord, CatalogError, DiskCompletion, ErrorKind};
use sendense_types::{BackupId, BackupQuery, BackupStatus, BackupType, DiskKey};

use crate::support::{
    Fixture, at, change_id, complete, completion, ids, name, new_record, register, start_full,
    start_incremental,
};

#[test]
fn create_backup_full_is_stored_running() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");

    let record = start_full(&f.catalog, &vm, 1);

    assert_eq!(f.catalog.backup(&record.backup_id).unwrap(), Some(record));
}

#[test]
fn create_backup_files_follow_repository_layout() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");

    let record = start_full(&f.catalog, &vm, 1);

    assert_eq!(
        record.disks[1].file,
        format!("web01/disk-2001/{}.qcow2", record.backup_id)
    );
}

#[test]
fn create_backup_second_while_running_conflicts() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let first = start_full(&f.catalog, &vm, 1);
    let second = new_record(&vm, 2, None, BackupStatus::Running);

    let err = f.catalog.create_backup(&second).unwrap_err();

    assert!(
        matches!(&err, CatalogError::BackupInProgress { backup_id, .. } if *backup_id == first.backup_id),
        "{err}"
    );
}

#[test]
fn create_backup_second_while_pending_conflicts() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let pending = new_record(&vm, 1, None, BackupStatus::Pending);
    f.catalog.create_backup(&pending).unwrap();
    let second = new_record(&vm, 2, None, BackupStatus::Running);

    let err = f.catalog.create_backup(&second).unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Conflict);
}

#[test]
fn create_backup_other_vm_while_running_succeeds() {
    let f = Fixture::new();
    let a = register(&f.catalog, "a");
    let b = register(&f.catalog, "b");
    start_full(&f.catalog, &a, 1);

    start_full(&f.catalog, &b, 1);

    assert_eq!(f.catalog.running_backups().unwrap().len(), 2);
}

#[test]
fn create_backup_unknown_vm_not_found() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let mut record = BackupRecord::new(
        BackupId::from_parts(&name("ghost"), at(1), 1),
        &vm,
        None,
        BackupStatus::Running,
        at(1),
    );
    record.vm_name = name("ghost");
    record
        .disks
        .iter_mut()
        .for_each(|d| d.file = "ghost/x.qcow2".into());

    let err = f.catalog.create_backup(&record).unwrap_err();

    assert!(matches!(err, CatalogError::VmNotFound { .. }), "{err}");
}

#[test]
fn create_backup_incremental_without_completed_full_conflicts() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let full = start_full(&f.catalog, &vm, 1);
    f.catalog
        .fail_backup(&full.backup_id, "network", at(2))
        .unwrap();
    let incremental = new_record(&vm, 3, Some(&full), BackupStatus::Running);

    let err = f.catalog.create_backup(&incremental).unwrap_err();

    assert!(
        matches!(err, CatalogError::NoCompletedParent { .. }),
        "{err}"
    );
}

#[test]
fn create_backup_incremental_parent_not_latest_conflicts() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let old = complete(&f.catalog, &start_full(&f.catalog, &vm, 1), 2);
    complete(&f.catalog, &start_incremental(&f.catalog, &vm, 3), 4);
    let stale = new_record(&vm, 5, Some(&old), BackupStatus::Running);

    let err = f.catalog.create_backup(&stale).unwrap_err();

    assert!(matches!(err, CatalogError::ParentNotLatest { .. }), "{err}");
}

#[test]
fn create_backup_incremental_wrong_parent_change_id_invalid() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let full = complete(&f.catalog, &start_full(&f.catalog, &vm, 1), 2);
    let mut incremental = new_record(&vm, 3, Some(&full), BackupStatus::Running);
    incremental.disks[0].parent_change_id = Some(change_id(DiskKey(2000), 99));

    let err = f.catalog.create_backup(&incremental).unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Invalid);
}

#[test]
fn create_backup_incremental_takes_parent_change_ids() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    complete(&f.catalog, &start_full(&f.catalog, &vm, 1), 2);

    let incremental = start_incremental(&f.catalog, &vm, 3);

    assert_eq!(
        (
            incremental.backup_type,
            incremental.disks[1].parent_change_id.clone()
        ),
        (BackupType::Incremental, Some(change_id(DiskKey(2001), 2)))
    );
}

#[test]
fn create_backup_auto_type_invalid() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let mut record = new_record(&vm, 1, None, BackupStatus::Running);
    record.backup_type = BackupType::Auto;

    let err = f.catalog.create_backup(&record).unwrap_err();

    assert!(matches!(err, CatalogError::InvalidRecord { .. }), "{err}");
}

#[test]
fn create_backup_completed_status_invalid() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let record = new_record(&vm, 1, None, BackupStatus::Completed);

    let err = f.catalog.create_backup(&record).unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Invalid);
}

#[test]
fn create_backup_id_of_other_vm_invalid() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let record = BackupRecord::new(
        BackupId::from_parts(&name("other"), at(1), 1),
        &vm,
        None,
        BackupStatus::Running,
        at(1),
    );

    let err = f.catalog.create_backup(&record).unwrap_err();

    assert!(matches!(err, CatalogError::InvalidRecord { .. }), "{err}");
}

#[test]
fn create_backup_traversal_file_invalid() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let mut record = new_record(&vm, 1, None, BackupStatus::Running);
    record.disks[0].file = "../../etc/passwd".into();

    let err = f.catalog.create_backup(&record).unwrap_err();

    assert!(matches!(err, CatalogError::InvalidRecord { .. }), "{err}");
}

#[test]
fn create_backup_capacity_mismatch_invalid() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let mut record = new_record(&vm, 1, None, BackupStatus::Running);
    record.disks[0].capacity_bytes += 512;

    let err = f.catalog.create_backup(&record).unwrap_err();

    assert!(matches!(err, CatalogError::VmDiskMismatch { .. }), "{err}");
}

#[test]
fn create_backup_duplicate_disk_invalid() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let mut record = new_record(&vm, 1, None, BackupStatus::Running);
    record.disks[1].disk_key = DiskKey(2000);

    let err = f.catalog.create_backup(&record).unwrap_err();

    assert!(matches!(err, CatalogError::DuplicateDisk { .. }), "{err}");
}

#[test]
fn create_backup_existing_id_conflicts() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let first = start_full(&f.catalog, &vm, 1);
    complete(&f.catalog, &first, 2);

    let err = f.catalog.create_backup(&first).unwrap_err();

    assert!(matches!(err, CatalogError::BackupExists { .. }), "{err}");
}

#[test]
fn complete_backup_marks_completed_and_advances_head() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let record = start_full(&f.catalog, &vm, 1);

    let done = complete(&f.catalog, &record, 2);

    assert_eq!(
        (
            done.status,
            done.completed_at,
            done.disks[0].change_id.clone(),
            done.disks[0].bytes_written,
            f.catalog.latest_completed(&vm.name).unwrap(),
            f.catalog.running_backups().unwrap(),
        ),
        (
            BackupStatus::Completed,
            Some(at(2)),
            Some(change_id(DiskKey(2000), 2)),
            4096,
            Some(done.clone()),
            vec![]
        )
    );
}

#[test]
fn complete_backup_missing_disk_invalid_and_nothing_changes() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let record = start_full(&f.catalog, &vm, 1);
    let partial = &completion(&record, 2)[..1];

    let err = f
        .catalog
        .complete_backup(&record.backup_id, partial, at(2))
        .unwrap_err();

    assert_eq!(
        (
            matches!(
                err,
                CatalogError::MissingDisk {
                    disk_key: DiskKey(2001),
                    ..
                }
            ),
            f.catalog.backup(&record.backup_id).unwrap(),
            f.catalog.latest_completed(&vm.name).unwrap(),
        ),
        (true, Some(record), None)
    );
}

#[test]
fn complete_backup_unknown_disk_invalid() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let record = start_full(&f.catalog, &vm, 1);
    let mut disks = completion(&record, 2);
    disks.push(DiskCompletion {
        disk_key: DiskKey(2002),
        change_id: None,
        bytes_written: 0,
        digests: false,
    });

    let err = f
        .catalog
        .complete_backup(&record.backup_id, &disks, at(2))
        .unwrap_err();

    assert!(matches!(err, CatalogError::UnknownDisk { .. }), "{err}");
}

#[test]
fn complete_backup_duplicate_disk_invalid() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let record = start_full(&f.catalog, &vm, 1);
    let mut disks = completion(&record, 2);
    disks.push(disks[0].clone());

    let err = f
        .catalog
        .complete_backup(&record.backup_id, &disks, at(2))
        .unwrap_err();

    assert!(matches!(err, CatalogError::DuplicateDisk { .. }), "{err}");
}

#[test]
fn complete_backup_pending_conflicts() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let record = new_record(&vm, 1, None, BackupStatus::Pending);
    f.catalog.create_backup(&record).unwrap();

    let err = f
        .catalog
        .complete_backup(&record.backup_id, &completion(&record, 2), at(2))
        .unwrap_err();

    assert!(matches!(err, CatalogError::WrongStatus { .. }), "{err}");
}

#[test]
fn complete_backup_twice_conflicts() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let record = start_full(&f.catalog, &vm, 1);
    complete(&f.catalog, &record, 2);

    let err = f
        .catalog
        .complete_backup(&record.backup_id, &completion(&record, 3), at(3))
        .unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Conflict);
}

#[test]
fn complete_backup_unknown_not_found() {
    let f = Fixture::new();
    let id = BackupId::from_parts(&name("web01"), at(1), 1);

    let err = f.catalog.complete_backup(&id, &[], at(2)).unwrap_err();

    assert!(matches!(err, CatalogError::BackupNotFound { .. }), "{err}");
}

#[test]
fn fail_backup_marks_failed_and_leaves_chain() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let full = complete(&f.catalog, &start_full(&f.catalog, &vm, 1), 2);
    let incremental = start_incremental(&f.catalog, &vm, 3);

    let failed = f
        .catalog
        .fail_backup(&incremental.backup_id, "source vanished", at(4))
        .unwrap();

    assert_eq!(
        (
            failed.status,
            failed.failure_reason.as_deref(),
            failed.failed_at,
            failed.completed_at,
            f.catalog.latest_completed(&vm.name).unwrap(),
            f.catalog.running_backups().unwrap().len(),
        ),
        (
            BackupStatus::Failed,
            Some("source vanished"),
            Some(at(4)),
            None,
            Some(full),
            0
        )
    );
}

#[test]
fn fail_backup_frees_slot_for_next_backup() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let first = start_full(&f.catalog, &vm, 1);
    f.catalog.fail_backup(&first.backup_id, "x", at(2)).unwrap();

    let second = start_full(&f.catalog, &vm, 3);

    assert_eq!(
        ids(&f.catalog.running_backups().unwrap()),
        [second.backup_id]
    );
}

#[test]
fn fail_backup_completed_conflicts() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let record = complete(&f.catalog, &start_full(&f.catalog, &vm, 1), 2);

    let err = f
        .catalog
        .fail_backup(&record.backup_id, "late", at(3))
        .unwrap_err();

    assert!(matches!(err, CatalogError::WrongStatus { .. }), "{err}");
}

#[test]
fn fail_backup_long_reason_truncated() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let record = start_full(&f.catalog, &vm, 1);

    let failed = f
        .catalog
        .fail_backup(&record.backup_id, &"é".repeat(5000), at(2))
        .unwrap();

    assert_eq!(failed.failure_reason.map(|r| r.len()), Some(4096));
}

#[test]
fn backups_filtered_by_vm_and_status_oldest_first() {
    let f = Fixture::new();
    let a = register(&f.catalog, "a");
    let b = register(&f.catalog, "b");
    let a1 = complete(&f.catalog, &start_full(&f.catalog, &a, 1), 2);
    let b1 = start_full(&f.catalog, &b, 3);
    let a2 = start_incremental(&f.catalog, &a, 4);
    let all = BackupQuery::default();
    let only_a = BackupQuery {
        vm_name: Some(a.name),
        status: None,
    };
    let running = BackupQuery {
        vm_name: None,
        status: Some(BackupStatus::Running),
    };
    let completed_b = BackupQuery {
        vm_name: Some(b.name),
        status: Some(BackupStatus::Completed),
    };

    let answers =
        [&all, &only_a, &running, &completed_b].map(|q| ids(&f.catalog.backups(q).unwrap()));

    assert_eq!(
        answers,
        [
            vec![
                a1.backup_id.clone(),
                b1.backup_id.clone(),
                a2.backup_id.clone()
            ],
            vec![a1.backup_id, a2.backup_id.clone()],
            vec![b1.backup_id, a2.backup_id],
            vec![],
        ]
    );
}

#[test]
fn backups_vm_prefix_of_other_vm_not_mixed() {
    let f = Fixture::new();
    let a = register(&f.catalog, "a");
    let ab = register(&f.catalog, "a-b");
    start_full(&f.catalog, &a, 1);
    let other = start_full(&f.catalog, &ab, 2);
    let query = BackupQuery {
        vm_name: Some(ab.name),
        status: None,
    };

    let found = f.catalog.backups(&query).unwrap();

    assert_eq!(ids(&found), [other.backup_id]);
}

#[test]
fn backup_unknown_answers_none() {
    let f = Fixture::new();
    let id = BackupId::from_parts(&name("web01"), at(1), 1);

    assert_eq!(f.catalog.backup(&id).unwrap(), None);
}

#[test]
fn running_backups_lists_active_oldest_first() {
    let f = Fixture::new();
    let a = register(&f.catalog, "a");
    let b = register(&f.catalog, "b");
    let c = register(&f.catalog, "c");
    let c1 = start_full(&f.catalog, &c, 1);
    let a1 = start_full(&f.catalog, &a, 2);
    complete(&f.catalog, &start_full(&f.catalog, &b, 3), 4);

    let running = f.catalog.running_backups().unwrap();

    assert_eq!(ids(&running), [c1.backup_id, a1.backup_id]);
}

#[test]
fn to_api_maps_every_field() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let record = complete(&f.catalog, &start_full(&f.catalog, &vm, 1), 2);

    let api = record.to_api();

    assert_eq!(
        (
            api.backup_id,
            api.status,
            api.completed_at,
            api.disks[0].file.clone(),
            api.disks[0].export_name.clone(),
            api.disks[0].change_id.clone(),
            api.disks[0].bytes_written,
        ),
        (
            record.backup_id,
            BackupStatus::Completed,
            Some(at(2)),
            Some(record.disks[0].file.clone()),
            None,
            Some(change_id(DiskKey(2000), 2)),
            4096,
        )
    );
}
