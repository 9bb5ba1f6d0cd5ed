//! VM registration.

use sendense_catalog::{CatalogError, ErrorKind};
use sendense_types::DiskKey;

use crate::support::{Fixture, at, name, register, spec, start_full};

#[test]
fn upsert_vm_new_vm_answers_disks_sorted_by_key() {
    let f = Fixture::new();

    let vm = register(&f.catalog, "web01");

    let keys: Vec<DiskKey> = vm.disks.iter().map(|d| d.key).collect();
    assert_eq!(keys, [DiskKey(2000), DiskKey(2001)]);
}

#[test]
fn upsert_vm_existing_keeps_created_at_and_updates_disks() {
    let f = Fixture::new();
    register(&f.catalog, "web01");

    let vm = f
        .catalog
        .upsert_vm(&spec("web01", &[(2000, 4 << 20)]), at(50))
        .unwrap();

    assert_eq!(
        (
            vm.created_at,
            vm.updated_at,
            vm.disks.len(),
            vm.disks[0].capacity_bytes
        ),
        (at(0), at(50), 1, 4 << 20)
    );
}

#[test]
fn vm_registered_is_answered() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");

    assert_eq!(f.catalog.vm(&name("web01")).unwrap(), Some(vm));
}

#[test]
fn vm_unknown_answers_none() {
    let f = Fixture::new();

    assert_eq!(f.catalog.vm(&name("nope")).unwrap(), None);
}

#[test]
fn vms_listed_by_name() {
    let f = Fixture::new();
    register(&f.catalog, "b");
    register(&f.catalog, "a");

    let names: Vec<String> = f
        .catalog
        .vms()
        .unwrap()
        .into_iter()
        .map(|v| v.name.into())
        .collect();

    assert_eq!(names, ["a", "b"]);
}

#[test]
fn upsert_vm_changed_disks_while_backup_running_conflicts() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    start_full(&f.catalog, &vm, 1);

    let err = f
        .catalog
        .upsert_vm(&spec("web01", &[(2000, 1 << 20)]), at(2))
        .unwrap_err();

    assert!(matches!(err, CatalogError::VmBusy { .. }), "{err}");
}

#[test]
fn upsert_vm_same_disks_while_backup_running_succeeds() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    start_full(&f.catalog, &vm, 1);

    let again = f
        .catalog
        .upsert_vm(&spec("web01", &[(2000, 1 << 20), (2001, 2 << 20)]), at(2))
        .unwrap();

    assert_eq!((again.disks, again.updated_at), (vm.disks, at(2)));
}

#[test]
fn error_kind_vm_busy_is_conflict() {
    let f = Fixture::new();
    let vm = register(&f.catalog, "web01");
    start_full(&f.catalog, &vm, 1);

    let err = f
        .catalog
        .upsert_vm(&spec("web01", &[(2000, 1 << 20)]), at(2))
        .unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Conflict);
}
