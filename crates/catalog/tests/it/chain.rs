//! Chains: following parent links, chain heads, deletion rules.

use sendense_catalog::{CatalogError, ErrorKind};
use sendense_types::{BackupStatus, BackupType};

use crate::support::{
    Fixture, complete, completion, ids, name, register, start_full, start_incremental,
};

#[test]
fn chain_full_then_incrementals_oldest_first() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let full = complete(&f.catalog, &start_full(&f.catalog, &vm, 1), 2);
    let inc1 = complete(&f.catalog, &start_incremental(&f.catalog, &vm, 3), 4);
    let inc2 = complete(&f.catalog, &start_incremental(&f.catalog, &vm, 5), 6);

    let chain = f.catalog.chain(&vm.name).unwrap();

    assert_eq!(
        ids(&chain),
        [full.backup_id, inc1.backup_id, inc2.backup_id]
    );
}

#[test]
fn chain_excludes_running_and_failed() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let full = complete(&f.catalog, &start_full(&f.catalog, &vm, 1), 2);
    let failed = start_incremental(&f.catalog, &vm, 3);
    f.catalog
        .fail_backup(&failed.backup_id, "x", crate::support::at(4))
        .unwrap();
    start_incremental(&f.catalog, &vm, 5);

    let chain = f.catalog.chain(&vm.name).unwrap();

    assert_eq!(ids(&chain), [full.backup_id]);
}

#[test]
fn chain_new_full_starts_new_chain() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    complete(&f.catalog, &start_full(&f.catalog, &vm, 1), 2);
    complete(&f.catalog, &start_incremental(&f.catalog, &vm, 3), 4);
    let second_full = complete(&f.catalog, &start_full(&f.catalog, &vm, 5), 6);

    let chain = f.catalog.chain(&vm.name).unwrap();

    assert_eq!(
        (ids(&chain), chain[0].backup_type),
        (vec![second_full.backup_id], BackupType::Full)
    );
}

#[test]
fn chain_no_completed_backup_is_empty() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    start_full(&f.catalog, &vm, 1);

    assert_eq!(f.catalog.chain(&vm.name).unwrap(), vec![]);
}

#[test]
fn chain_unknown_vm_not_found() {
    let f = Fixture::new();

    let err = f.catalog.chain(&name("ghost")).unwrap_err();

    assert!(matches!(err, CatalogError::VmNotFound { .. }), "{err}");
}

#[test]
fn latest_completed_unknown_vm_not_found() {
    let f = Fixture::new();

    let err = f.catalog.latest_completed(&name("ghost")).unwrap_err();

    assert_eq!(err.kind(), ErrorKind::NotFound);
}

#[test]
fn delete_backup_with_dependents_refused_naming_them() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let full = complete(&f.catalog, &start_full(&f.catalog, &vm, 1), 2);
    let inc = complete(&f.catalog, &start_incremental(&f.catalog, &vm, 3), 4);

    let err = f.catalog.delete_backup(&full.backup_id).unwrap_err();

    assert!(
        matches!(&err, CatalogError::HasDependents { dependents, .. } if *dependents == [inc.backup_id]),
        "{err}"
    );
}

#[test]
fn delete_backup_parent_of_running_incremental_refused() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let full = complete(&f.catalog, &start_full(&f.catalog, &vm, 1), 2);
    start_incremental(&f.catalog, &vm, 3);

    let err = f.catalog.delete_backup(&full.backup_id).unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Conflict);
}

#[test]
fn delete_backup_parent_of_only_failed_incremental_allowed() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let full = complete(&f.catalog, &start_full(&f.catalog, &vm, 1), 2);
    let inc = start_incremental(&f.catalog, &vm, 3);
    f.catalog
        .fail_backup(&inc.backup_id, "x", crate::support::at(4))
        .unwrap();

    let deleted = f.catalog.delete_backup(&full.backup_id).unwrap();

    assert_eq!(
        (deleted.backup_id, f.catalog.chain(&vm.name).unwrap()),
        (full.backup_id, vec![])
    );
}

#[test]
fn delete_backup_head_moves_head_to_parent() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let full = complete(&f.catalog, &start_full(&f.catalog, &vm, 1), 2);
    let inc = complete(&f.catalog, &start_incremental(&f.catalog, &vm, 3), 4);

    f.catalog.delete_backup(&inc.backup_id).unwrap();

    assert_eq!(
        (
            f.catalog.latest_completed(&vm.name).unwrap(),
            f.catalog.backup(&inc.backup_id).unwrap(),
        ),
        (Some(full), None)
    );
}

#[test]
fn delete_backup_head_then_incremental_builds_on_parent() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let full = complete(&f.catalog, &start_full(&f.catalog, &vm, 1), 2);
    let inc = complete(&f.catalog, &start_incremental(&f.catalog, &vm, 3), 4);
    f.catalog.delete_backup(&inc.backup_id).unwrap();

    let next = start_incremental(&f.catalog, &vm, 5);

    assert_eq!(next.parent_backup_id, Some(full.backup_id));
}

#[test]
fn delete_backup_full_head_leaves_no_chain() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let full = complete(&f.catalog, &start_full(&f.catalog, &vm, 1), 2);

    f.catalog.delete_backup(&full.backup_id).unwrap();

    assert_eq!(
        (
            f.catalog.latest_completed(&vm.name).unwrap(),
            f.catalog.chain(&vm.name).unwrap(),
            f.catalog.backups(&Default::default()).unwrap(),
        ),
        (None, vec![], vec![])
    );
}

#[test]
fn delete_backup_old_chain_leaf_keeps_current_head() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    complete(&f.catalog, &start_full(&f.catalog, &vm, 1), 2);
    let old_inc = complete(&f.catalog, &start_incremental(&f.catalog, &vm, 3), 4);
    let new_full = complete(&f.catalog, &start_full(&f.catalog, &vm, 5), 6);

    f.catalog.delete_backup(&old_inc.backup_id).unwrap();

    assert_eq!(
        f.catalog.latest_completed(&vm.name).unwrap(),
        Some(new_full)
    );
}

#[test]
fn delete_backup_running_conflicts() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let running = start_full(&f.catalog, &vm, 1);

    let err = f.catalog.delete_backup(&running.backup_id).unwrap_err();

    assert!(
        matches!(
            err,
            CatalogError::WrongStatus {
                status: BackupStatus::Running,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn delete_backup_unknown_not_found() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let full = complete(&f.catalog, &start_full(&f.catalog, &vm, 1), 2);
    f.catalog.delete_backup(&full.backup_id).unwrap();

    let err = f.catalog.delete_backup(&full.backup_id).unwrap_err();

    assert!(matches!(err, CatalogError::BackupNotFound { .. }), "{err}");
}

/// Issue #11 item 10: deleting the head full of a second chain brings the first chain's last
/// point back as the head, so `auto` continues it instead of starting over.
#[test]
fn delete_backup_head_full_brings_previous_chain_head_back() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    complete(&f.catalog, &start_full(&f.catalog, &vm, 1), 2);
    let inc = complete(&f.catalog, &start_incremental(&f.catalog, &vm, 3), 4);
    let second_full = complete(&f.catalog, &start_full(&f.catalog, &vm, 5), 6);

    f.catalog.delete_backup(&second_full.backup_id).unwrap();

    assert_eq!(
        f.catalog
            .latest_completed(&vm.name)
            .unwrap()
            .map(|r| r.backup_id),
        Some(inc.backup_id)
    );
}

#[test]
fn delete_backup_journals_files_until_finished() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let full = complete(&f.catalog, &start_full(&f.catalog, &vm, 1), 2);
    let files: Vec<String> = full.disks.iter().map(|d| d.file.clone()).collect();

    f.catalog.delete_backup(&full.backup_id).unwrap();
    let journalled = f.catalog.deletions().unwrap();
    f.catalog.finish_deletion(&full.backup_id).unwrap();

    assert_eq!(
        (journalled, f.catalog.deletions().unwrap()),
        (vec![(full.backup_id, files)], vec![])
    );
}

#[test]
fn mark_files_missing_flags_completed_backup() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let full = complete(&f.catalog, &start_full(&f.catalog, &vm, 1), 2);

    f.catalog.mark_files_missing(&full.backup_id).unwrap();

    assert!(
        f.catalog
            .backup(&full.backup_id)
            .unwrap()
            .unwrap()
            .files_missing
    );
}

#[test]
fn mark_files_missing_running_backup_refused() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let running = start_full(&f.catalog, &vm, 1);

    let err = f
        .catalog
        .mark_files_missing(&running.backup_id)
        .unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Conflict);
}

#[test]
fn delete_backup_protected_refused_until_unprotected() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let full = complete(&f.catalog, &start_full(&f.catalog, &vm, 1), 2);
    let protected = f.catalog.set_protected(&full.backup_id, true).unwrap();

    let err = f.catalog.delete_backup(&full.backup_id).unwrap_err();
    f.catalog.set_protected(&full.backup_id, false).unwrap();
    let deleted = f.catalog.delete_backup(&full.backup_id);

    assert!(protected.protected);
    assert!(
        matches!(&err, CatalogError::Protected { backup_id } if *backup_id == full.backup_id)
            && err.kind() == ErrorKind::Conflict,
        "{err}"
    );
    assert!(deleted.is_ok(), "{deleted:?}");
}

#[test]
fn set_protected_running_backup_refused() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let running = start_full(&f.catalog, &vm, 1);

    let err = f
        .catalog
        .set_protected(&running.backup_id, true)
        .unwrap_err();

    assert!(matches!(err, CatalogError::WrongStatus { .. }), "{err}");
    assert!(
        !f.catalog
            .backup(&running.backup_id)
            .unwrap()
            .unwrap()
            .protected
    );
}

#[test]
fn complete_backup_with_digests_marks_the_disks_that_have_them() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let record = start_full(&f.catalog, &vm, 1);
    let mut done = completion(&record, 2);
    done[0].digests = true;

    let completed = f
        .catalog
        .complete_backup(&record.backup_id, &done, crate::support::at(2))
        .unwrap();

    let marked: Vec<(sendense_types::DiskKey, bool)> = completed
        .disks
        .iter()
        .map(|d| (d.disk_key, d.digests))
        .collect();
    assert_eq!(
        marked,
        vec![(done[0].disk_key, true), (done[1].disk_key, false)]
    );
    assert_eq!(
        f.catalog.backup(&record.backup_id).unwrap(),
        Some(completed)
    );
}

#[test]
fn delete_backup_with_digests_journals_their_files_beside_the_images() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    let record = start_full(&f.catalog, &vm, 1);
    let mut done = completion(&record, 2);
    done[1].digests = true;
    let full = f
        .catalog
        .complete_backup(&record.backup_id, &done, crate::support::at(2))
        .unwrap();

    f.catalog.delete_backup(&full.backup_id).unwrap();

    let digests = sendense_types::digest_path(&vm.name, done[1].disk_key, &full.backup_id);
    assert_eq!(
        f.catalog.deletions().unwrap(),
        vec![(
            full.backup_id.clone(),
            vec![
                full.disks[0].file.clone(),
                full.disks[1].file.clone(),
                digests
            ]
        )]
    );
}
