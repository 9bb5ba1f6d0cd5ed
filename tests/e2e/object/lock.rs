//! Object Lock on targets (issue #18: "Object Lock retention when the target sets
//! `object_lock_days` and the store supports it; a clear error when it does not"), against the
//! real three-node Garage cluster.
//!
//! Garage (2.5) routes `GET`/`PUT /{bucket}?object-lock` (GetObjectLockConfiguration,
//! PutObjectLockConfiguration) but implements neither: both answer 501 `NotImplemented`
//! (`garage_api_s3::api_server`, the catch-all `endpoint => NotImplemented`). So a target with
//! `object_lock_days` above 0 on Garage must be refused (400) with the store's answer and the
//! fix, and nothing stored; with 0 it is stored. No store that implements Object Lock is
//! installable here (apt has none; the Rust ones on crates.io need a newer toolchain), so the
//! success path (the lock configuration set, read back and checked) is covered by the hub's unit
//! tests of its signing (AWS's SigV4 test vectors) and of the S3 documents, not end to end.

use serde_json::{Value, json};

use super::Hub;
use super::garage::Garage;

const LOCKED: &str = "locked";

/// The names of the hub's targets.
fn target_names(hub: &Hub) -> Vec<String> {
    let listed = hub.ok_call(reqwest::Method::GET, "/api/v1/targets", None);
    listed["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

/// The cluster as target [`LOCKED`] asking for `days` of Object Lock.
fn locked_body(garage: &Garage, days: u32) -> Value {
    let mut body = garage.target_body(LOCKED, 0);
    body["object_lock_days"] = json!(days);
    body
}

#[test]
fn object_lock_on_garage_is_refused_with_the_store_answer_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let garage = Garage::start(&dir.path().join("garage"));
    let hub = Hub::start(&dir.path().join("hub"));

    let (status, answer) = hub.call(
        reqwest::Method::POST,
        "/api/v1/targets",
        Some(locked_body(&garage, 7)),
    );

    assert_eq!(status, 400, "{answer}");
    let message = answer["message"].as_str().unwrap();
    for needle in [
        "object_lock_days = 7",
        "Object Lock",
        "501",
        "NotImplemented",
        "create the bucket with Object Lock enabled",
        "set object_lock_days to 0",
    ] {
        assert!(message.contains(needle), "{needle:?} not in {message}");
    }
}

#[test]
fn object_lock_refused_on_garage_stores_no_target() {
    let dir = tempfile::tempdir().unwrap();
    let garage = Garage::start(&dir.path().join("garage"));
    let hub = Hub::start(&dir.path().join("hub"));

    let (status, _) = hub.call(
        reqwest::Method::POST,
        "/api/v1/targets",
        Some(locked_body(&garage, 7)),
    );

    assert_eq!((status, target_names(&hub)), (400, Vec::<String>::new()));
}

#[test]
fn object_lock_days_zero_on_garage_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let garage = Garage::start(&dir.path().join("garage"));
    let hub = Hub::start(&dir.path().join("hub"));

    let stored = hub.ok_call(
        reqwest::Method::POST,
        "/api/v1/targets",
        Some(locked_body(&garage, 0)),
    );

    assert_eq!(
        (stored["object_lock_days"].clone(), target_names(&hub)),
        (json!(0), vec![LOCKED.to_owned()])
    );
}

#[test]
fn object_lock_on_an_unreachable_store_is_an_upstream_error_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(&dir.path().join("hub"));
    let body = json!({
        "name": LOCKED, "endpoint": "http://127.0.0.1:9", "bucket": "locked-bucket",
        "region": "garage", "access_key": "GK1", "secret_key": "s", "object_lock_days": 30
    });

    let (status, answer) = hub.call(reqwest::Method::POST, "/api/v1/targets", Some(body));

    assert_eq!(
        (status, target_names(&hub)),
        (502, Vec::<String>::new()),
        "{answer}"
    );
}
