//! Policies: create, replace, update, delete, list, and persistence across reopen.

use sendense_catalog::{Catalog, CatalogError, ErrorKind};
use sendense_types::PolicyName;
use sendense_types::jobs::PolicyRequest;

use crate::support::{Fixture, at, name};

fn policy(policy_name: &str, schedule: &str) -> PolicyRequest {
    serde_json::from_value(serde_json::json!({
        "name": policy_name, "schedule": schedule, "credential": "vc1",
        "vms": ["dc1/vm/web01", "db*"], "max_parallel": 2
    }))
    .unwrap()
}

fn policy_name(text: &str) -> PolicyName {
    text.parse().unwrap()
}

#[test]
fn create_twice_is_a_conflict_and_keeps_the_first() {
    let f = Fixture::new();
    f.catalog
        .create_policy(&policy("nightly", "22:00"), at(0))
        .unwrap();

    let err = f
        .catalog
        .create_policy(&policy("nightly", "23:00"), at(1))
        .unwrap_err();

    let stored = f.catalog.policy(&policy_name("nightly")).unwrap().unwrap();
    assert_eq!(
        (err.kind(), stored.request.schedule(), stored.created_at),
        (ErrorKind::Conflict, "22:00", at(0))
    );
}

#[test]
fn replace_keeps_creation_last_run_and_pending_vms() {
    let f = Fixture::new();
    let nightly = policy_name("nightly");
    f.catalog
        .create_policy(&policy("nightly", "22:00"), at(0))
        .unwrap();
    f.catalog
        .update_policy(&nightly, |r| {
            r.last_run = Some(at(5));
            r.pending = vec![name("db2")];
            Ok(())
        })
        .unwrap();

    let replaced = f
        .catalog
        .replace_policy(&policy("nightly", "daily"), at(9))
        .unwrap();

    assert_eq!(
        (
            replaced.request.schedule(),
            replaced.created_at,
            replaced.updated_at,
            replaced.last_run,
            replaced.pending
        ),
        ("daily", at(0), at(9), Some(at(5)), vec![name("db2")])
    );
}

#[test]
fn unknown_policy_is_not_found_for_replace_update_and_delete() {
    let f = Fixture::new();
    let ghost = policy_name("ghost");

    let errors = [
        f.catalog
            .replace_policy(&policy("ghost", "daily"), at(0))
            .unwrap_err(),
        f.catalog.update_policy(&ghost, |_| Ok(())).unwrap_err(),
        f.catalog.delete_policy(&ghost).unwrap_err(),
    ];

    assert!(
        errors
            .iter()
            .all(|e| matches!(e, CatalogError::PolicyNotFound { name } if *name == ghost)),
        "{errors:?}"
    );
}

#[test]
fn failed_update_changes_nothing() {
    let f = Fixture::new();
    let nightly = policy_name("nightly");
    f.catalog
        .create_policy(&policy("nightly", "22:00"), at(0))
        .unwrap();

    let err = f
        .catalog
        .update_policy(&nightly, |r| {
            r.last_run = Some(at(7));
            Err::<(), _>(CatalogError::PolicyNotFound {
                name: policy_name("other"),
            })
        })
        .unwrap_err();

    let stored = f.catalog.policy(&nightly).unwrap().unwrap();
    assert_eq!((err.kind(), stored.last_run), (ErrorKind::NotFound, None));
}

#[test]
fn policies_are_listed_by_name_deleted_and_persist_across_reopen() {
    let f = Fixture::new();
    for n in ["weekly", "nightly", "hourly"] {
        f.catalog.create_policy(&policy(n, "daily"), at(0)).unwrap();
    }
    f.catalog.delete_policy(&policy_name("weekly")).unwrap();
    let path = f.path();
    drop(f.catalog);

    let reopened = Catalog::open(&path).unwrap();
    let names: Vec<String> = reopened
        .policies()
        .unwrap()
        .iter()
        .map(|p| p.name().to_string())
        .collect();

    assert_eq!(names, ["hourly", "nightly"]);
}
