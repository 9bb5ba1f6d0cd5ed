//! Sealed credentials.

use sendense_catalog::CatalogError;
use sendense_types::{CredentialName, VcenterTrust};

use crate::support::{Fixture, at, credential_request};

fn cred(name: &str) -> CredentialName {
    name.parse().unwrap()
}

#[test]
fn put_credential_then_credential_answers_it() {
    let f = Fixture::new();

    let stored = f
        .catalog
        .put_credential(
            &credential_request("vc1", "vc.example", "backup", VcenterTrust::Insecure),
            vec![1, 2, 3],
            at(1),
        )
        .unwrap();

    assert_eq!(f.catalog.credential(&cred("vc1")).unwrap(), Some(stored));
}

#[test]
fn put_credential_replace_keeps_created_at() {
    let f = Fixture::new();
    f.catalog
        .put_credential(
            &credential_request("vc1", "old", "u", VcenterTrust::Insecure),
            vec![1],
            at(1),
        )
        .unwrap();

    let replaced = f
        .catalog
        .put_credential(
            &credential_request("vc1", "new", "u", VcenterTrust::Insecure),
            vec![2],
            at(5),
        )
        .unwrap();

    assert_eq!(
        (
            replaced.host.as_str(),
            replaced.sealed_password,
            replaced.created_at,
            replaced.updated_at
        ),
        ("new", vec![2], at(1), at(5))
    );
}

#[test]
fn credentials_listed_by_name() {
    let f = Fixture::new();
    f.catalog
        .put_credential(
            &credential_request("b", "h", "u", VcenterTrust::Insecure),
            vec![1],
            at(1),
        )
        .unwrap();
    f.catalog
        .put_credential(
            &credential_request("a", "h", "u", VcenterTrust::Insecure),
            vec![1],
            at(1),
        )
        .unwrap();

    let names: Vec<String> = f
        .catalog
        .credentials()
        .unwrap()
        .into_iter()
        .map(|c| c.name.into())
        .collect();

    assert_eq!(names, ["a", "b"]);
}

#[test]
fn credential_unknown_answers_none() {
    let f = Fixture::new();

    assert_eq!(f.catalog.credential(&cred("nope")).unwrap(), None);
}

#[test]
fn credential_debug_and_api_hide_sealed_password() {
    let f = Fixture::new();
    let stored = f
        .catalog
        .put_credential(
            &credential_request("vc1", "h", "u", VcenterTrust::Insecure),
            vec![0xde, 0xad],
            at(1),
        )
        .unwrap();

    let shown = format!(
        "{stored:?} {}",
        serde_json::to_string(&stored.to_api()).unwrap()
    );

    assert!(
        !shown.contains("222") && !shown.contains("sealed_password\":"),
        "{shown}"
    );
}

#[test]
fn delete_credential_removes_it() {
    let f = Fixture::new();
    f.catalog
        .put_credential(
            &credential_request("vc1", "h", "u", VcenterTrust::Insecure),
            vec![1],
            at(1),
        )
        .unwrap();

    f.catalog.delete_credential(&cred("vc1")).unwrap();

    assert_eq!(f.catalog.credential(&cred("vc1")).unwrap(), None);
}

#[test]
fn delete_credential_unknown_not_found() {
    let f = Fixture::new();

    let err = f.catalog.delete_credential(&cred("nope")).unwrap_err();

    assert!(
        matches!(err, CatalogError::CredentialNotFound { .. }),
        "{err}"
    );
}
