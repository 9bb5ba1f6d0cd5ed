//! `sendense-hub ctl`: the operators' command line against a real hub process.

use crate::support::{Serve, hub, ok, s};

/// Runs `sendense-hub ctl --hub API --data-dir DATA ARGS...`.
fn ctl(serve: &Serve, args: &[&str]) -> std::process::Output {
    hub()
        .args(["ctl", "--hub", &serve.api, "--data-dir", s(&serve.data)])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn ctl_creates_agent_lists_it_and_reads_jobs_and_metrics() {
    let data = tempfile::tempdir().unwrap();
    let serve = Serve::start(data.path(), &[], "info");

    let added = ok(&ctl(&serve, &["agent", "add", "appliance-1"]));
    let listed: serde_json::Value =
        serde_json::from_str(&ok(&ctl(&serve, &["--json", "agent", "list"]))).unwrap();
    let jobs = ok(&ctl(&serve, &["job", "list", "--status", "running"]));
    let metrics = ok(&ctl(&serve, &["metrics"]));
    let missing = ctl(&serve, &["job", "show", "job-0000000000000000"]);

    assert!(
        added.contains("sendense-client agent enroll") && added.contains("--name appliance-1"),
        "{added}"
    );
    assert_eq!(listed["agents"][0]["name"], "appliance-1");
    assert_eq!(listed["agents"][0]["state"], "pending");
    assert!(jobs.contains("(none)"), "{jobs}");
    assert!(metrics.contains("# TYPE sendense_jobs gauge"), "{metrics}");
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("404") || err.contains("not found") || err.contains("Unknown"),
        "{err}"
    );
}

#[test]
fn ctl_policy_with_bad_schedule_is_refused_naming_the_bad_part() {
    let data = tempfile::tempdir().unwrap();
    let serve = Serve::start(data.path(), &[], "info");

    let out = ctl(
        &serve,
        &[
            "policy",
            "add",
            "nightly",
            "--schedule",
            "mon..fry 22:00",
            "--credential",
            "vc1",
            "--vm",
            "web01",
        ],
    );

    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fry"), "{err}");
}

#[test]
fn ctl_policy_add_edit_show_and_list_round_trip() {
    let data = tempfile::tempdir().unwrap();
    let serve = Serve::start(data.path(), &[], "info");
    let password = data.path().join("vc1.password");
    std::fs::write(&password, "s3cret\n").unwrap();
    ok(&ctl(
        &serve,
        &[
            "credential",
            "add",
            "vc1",
            "--host",
            "vcenter.example",
            "--username",
            "u",
            "--password-file",
            s(&password),
            "--insecure",
        ],
    ));

    ok(&ctl(
        &serve,
        &[
            "policy",
            "add",
            "nightly",
            "--schedule",
            "mon..fri 22:00",
            "--credential",
            "vc1",
            "--vm",
            "web01",
            "--vm",
            "db*",
            "--retry-count",
            "2",
            "--keep-last",
            "3",
        ],
    ));
    ok(&ctl(
        &serve,
        &[
            "policy",
            "edit",
            "nightly",
            "--schedule",
            "*:0/30",
            "--keep-daily",
            "7",
        ],
    ));
    let shown: serde_json::Value =
        serde_json::from_str(&ok(&ctl(&serve, &["--json", "policy", "show", "nightly"]))).unwrap();
    let listed = ok(&ctl(&serve, &["policy", "list"]));

    assert_eq!(shown["schedule"], "*:0/30");
    assert_eq!(shown["vms"], serde_json::json!(["web01", "db*"]));
    assert_eq!(shown["retry"]["count"], 2);
    assert_eq!(
        shown["retention"],
        serde_json::json!({"keep_last": 3, "keep_daily": 7})
    );
    assert!(shown["next_run"].is_string(), "{shown}");
    assert!(
        listed.contains("nightly") && listed.contains("*:0/30"),
        "{listed}"
    );
}

/// A completed full of `vm` made through the REST API (nothing written: an empty disk);
/// answers its id.
fn completed_full(serve: &Serve, vm: &str) -> String {
    let (status, body) = serve.raw(
        reqwest::Method::POST,
        "/api/v1/backups",
        Some(serde_json::json!({"vm_name": vm, "backup_type": "full"})),
    );
    assert_eq!(status, 201, "{body}");
    let backup: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = backup["backup_id"].as_str().unwrap().to_owned();
    let (status, body) = serve.raw(
        reqwest::Method::POST,
        &format!("/api/v1/backups/{id}/complete"),
        Some(serde_json::json!({"disks": [
            {"disk_key": 2000, "change_id": "52 aa/1", "bytes_transferred": 0}
        ]})),
    );
    assert_eq!(status, 200, "{body}");
    id
}

#[test]
fn ctl_prune_dry_run_protect_and_prune_job() {
    let data = tempfile::tempdir().unwrap();
    let serve = Serve::start(data.path(), &[], "info");
    let (status, body) = serve.raw(
        reqwest::Method::POST,
        "/api/v1/vms",
        Some(serde_json::json!({"name": "web01", "disks": [{"key": 2000, "capacity_bytes": 1048576}]})),
    );
    assert_eq!(status, 201, "{body}");
    let oldest = completed_full(&serve, "web01");
    let middle = completed_full(&serve, "web01");
    let newest = completed_full(&serve, "web01");

    let dry = ok(&ctl(
        &serve,
        &["prune", "web01", "--keep-last", "1", "--dry-run"],
    ));
    let protected = ok(&ctl(&serve, &["backup", "protect", &middle]));
    let refused = ctl(
        &serve,
        &["backup", "protect", "backup-web01-20240101T000000-abcdef"],
    );
    let pruned: serde_json::Value = serde_json::from_str(&ok(&ctl(
        &serve,
        &["--json", "prune", "web01", "--keep-last", "1"],
    )))
    .unwrap();
    let job_id = pruned["job_id"].as_str().unwrap().to_owned();
    // The hub logs the end of every job it runs itself.
    crate::support::wait_message(&serve.log, "hub job finished");
    let job: serde_json::Value =
        serde_json::from_str(&ok(&ctl(&serve, &["--json", "job", "show", &job_id]))).unwrap();
    let unprotected = ok(&ctl(&serve, &["backup", "unprotect", &middle]));
    let (gone, _) = serve.raw(
        reqwest::Method::GET,
        &format!("/api/v1/backups/{oldest}"),
        None,
    );

    assert!(
        dry.contains("keep (1):")
            && dry.contains(&newest)
            && dry.contains("remove (2):")
            && dry.contains("Dry run: nothing removed"),
        "{dry}"
    );
    assert!(
        protected.contains(&format!("Backup {middle} is protected")),
        "{protected}"
    );
    assert!(!refused.status.success());
    assert_eq!(
        (
            pruned["keep"].clone(),
            pruned["remove"].clone(),
            job["status"].clone()
        ),
        (
            serde_json::json!([newest, middle]),
            serde_json::json!([oldest]),
            serde_json::json!("completed")
        ),
        "{job}"
    );
    assert!(unprotected.contains("is not protected"), "{unprotected}");
    assert_eq!(gone, 404);
}
