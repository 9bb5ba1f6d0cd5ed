//! Policies over the real HTTPS API (issue #13): create, list, replace, delete with
//! `next_run` and `last_run`; refused schedules naming the bad part; runs that queue backup
//! jobs of the VMs the patterns name in the inventory (`max_parallel` at once, unmatched
//! patterns reported, retries of failed jobs); and the scheduler's tick on a time the test
//! chooses (a `*:0/1` policy runs each minute, runs missed while down run once).

use std::time::Duration;

use jiff::SignedDuration;
use reqwest::StatusCode;
use sendense_types::{Job, JobList, JobStatus, Policy, Timestamp};
use serde_json::{Value, json};

use crate::hub_api::{Hub, typed};
use crate::jobs::{TestAgent, as_agent, hub_with_agent, poll};

fn design_policy(name: &str, schedule: &str) -> Value {
    json!({"name": name, "schedule": schedule, "credential": "vc1",
        "vms": ["dc1/vm/web01", "db*"], "max_parallel": 2,
        "retry": {"count": 2, "delay_seconds": 600},
        "retention": {"keep_last": 3, "keep_daily": 7, "keep_weekly": 4, "keep_monthly": 6},
        "max_chain_length": 30, "verify_after_backup": true, "enabled": true})
}

/// Reports an inventory of `vms` (name, path) for vc1 through agent `a1`.
async fn report_inventory(hub: &Hub, a1: &TestAgent, vms: &[(&str, &str)]) {
    let (status, accepted) = hub
        .post("/api/v1/credentials/vc1/inventory/refresh", json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let (status, handed) = poll(hub, a1, 0).await;
    assert_eq!(status, StatusCode::OK, "{handed}");
    let list: Vec<Value> = vms
        .iter()
        .map(|(name, path)| json!({"name": name, "path": path}))
        .collect();
    let (status, body) = as_agent(
        hub,
        a1,
        &format!(
            "/api/v1/jobs/{}/finish",
            accepted["job_id"].as_str().unwrap()
        ),
        json!({"status": "completed", "inventory": list}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn policy_jobs(hub: &Hub, policy: &str) -> Vec<Job> {
    let list: JobList = hub.get_as("/api/v1/jobs?kind=backup").await;
    list.jobs
        .into_iter()
        .filter(|j| j.policy.as_ref().is_some_and(|p| p.as_str() == policy))
        .collect()
}

/// Reads the job list until `done` holds, within 20 s. The scheduler reacts to ended jobs in
/// its own task, so the list is read again at each job's end and, since the scheduler's
/// reaction comes just after that end, at least every 50 ms.
async fn wait_for_jobs(hub: &Hub, policy: &str, done: impl Fn(&[Job]) -> bool) -> Vec<Job> {
    let mut ended = hub
        .running
        .as_ref()
        .expect("the hub runs")
        .jobs
        .subscribe_finished();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let jobs = policy_jobs(hub, policy).await;
        if done(&jobs) || tokio::time::Instant::now() > deadline {
            return jobs;
        }
        let _ = tokio::time::timeout(Duration::from_millis(50), ended.recv()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_crud_answers_next_run_last_run_and_created_at() {
    let (hub, _a1) = hub_with_agent().await;

    let (created, body) = hub
        .post(
            "/api/v1/policies",
            design_policy("nightly", "mon..fri 22:00"),
        )
        .await;
    let (dup, _) = hub
        .post("/api/v1/policies", design_policy("nightly", "daily"))
        .await;
    let replaced = hub
        .call(
            reqwest::Method::PUT,
            "/api/v1/policies/nightly",
            Some(design_policy("nightly", "daily")),
        )
        .await;
    let renamed = hub
        .call(
            reqwest::Method::PUT,
            "/api/v1/policies/nightly",
            Some(design_policy("other", "daily")),
        )
        .await;
    let listed: Value = hub.get_as("/api/v1/policies").await;
    let deleted = hub
        .call(reqwest::Method::DELETE, "/api/v1/policies/nightly", None)
        .await;
    let (gone, _) = hub.get("/api/v1/policies/nightly").await;

    assert_eq!(created, StatusCode::CREATED, "{body}");
    let policy: Policy = typed(body.clone());
    assert_eq!(
        (
            policy.schedule.as_str(),
            policy.max_parallel,
            policy.next_run.is_some(),
            body["last_run"].clone(),
            body["created_at"].is_string()
        ),
        ("mon..fri 22:00", 2, true, Value::Null, true)
    );
    assert_eq!(
        (
            dup,
            replaced.0,
            replaced.1["schedule"].clone(),
            renamed.0,
            listed["policies"].as_array().map(Vec::len),
            deleted.0,
            gone
        ),
        (
            StatusCode::CONFLICT,
            StatusCode::OK,
            json!("daily"),
            StatusCode::BAD_REQUEST,
            Some(1),
            StatusCode::OK,
            StatusCode::NOT_FOUND
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_schedule_is_400_naming_the_bad_part_and_nothing_is_stored() {
    let (hub, _a1) = hub_with_agent().await;

    let (status, body) = hub
        .post(
            "/api/v1/policies",
            design_policy("nightly", "mon..fri 25:00"),
        )
        .await;
    let (foo_status, foo) = hub
        .post(
            "/api/v1/policies",
            design_policy("nightly", "every tuesday"),
        )
        .await;

    let listed: Value = hub.get_as("/api/v1/policies").await;
    let message = body["message"].as_str().unwrap_or_default().to_owned();
    assert_eq!(
        (
            status,
            foo_status,
            listed["policies"].as_array().map(Vec::len)
        ),
        (StatusCode::BAD_REQUEST, StatusCode::BAD_REQUEST, Some(0))
    );
    assert!(
        message.contains("position 9") && message.contains("hour value 25"),
        "{message}"
    );
    assert!(
        foo["message"]
            .as_str()
            .is_some_and(|m| m.contains("position 0") && m.contains("'every'")),
        "{foo}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_with_unknown_credential_is_400() {
    let hub = Hub::start().await;

    let (status, body) = hub
        .post("/api/v1/policies", design_policy("nightly", "daily"))
        .await;

    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("Unknown credential vc1")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_now_queues_max_parallel_reports_unmatched_and_releases_and_retries_as_jobs_end() {
    let (hub, a1) = hub_with_agent().await;
    report_inventory(
        &hub,
        &a1,
        &[
            ("web01", "dc1/vm/web01"),
            ("db1", "dc1/vm/db1"),
            ("db2", "dc2/vm/db2"),
        ],
    )
    .await;
    let mut body = design_policy("nightly", "mon..fri 22:00");
    body["vms"] = json!(["dc1/vm/web01", "db*", "ghost*"]);
    body["retry"] = json!({"count": 1, "delay_seconds": 0});
    let (status, created) = hub.post("/api/v1/policies", body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");

    let (status, run) = hub.post("/api/v1/policies/nightly/run", json!({})).await;
    let first = summary(&policy_jobs(&hub, "nightly").await);
    // The agent takes the oldest job (web01) and fails it: a retry (attempt 2) is queued, and
    // with it two jobs are queued again, so db2 still waits.
    let (_, handed) = poll(&hub, &a1, 0).await;
    let failed_id = handed["job_id"].as_str().unwrap().to_owned();
    let (finish, _) = as_agent(
        &hub,
        &a1,
        &format!("/api/v1/jobs/{failed_id}/finish"),
        json!({"status": "failed", "error": "snapshot refused"}),
    )
    .await;
    let retried = summary(&wait_for_jobs(&hub, "nightly", |jobs| jobs.len() == 3).await);
    // Cancelling db1's job frees a place: db2 is released.
    let db1 = policy_jobs(&hub, "nightly")
        .await
        .into_iter()
        .find(|j| j.vm_name.as_ref().is_some_and(|v| v.as_str() == "db1"))
        .unwrap();
    let (cancel, _) = hub
        .post(&format!("/api/v1/jobs/{}/cancel", db1.job_id), json!({}))
        .await;
    let released = summary(&wait_for_jobs(&hub, "nightly", |jobs| jobs.len() == 4).await);
    let policy: Policy = hub.get_as("/api/v1/policies/nightly").await;

    assert_eq!(
        (
            status,
            run["job_ids"].as_array().map(Vec::len),
            run["unmatched"].clone()
        ),
        (StatusCode::ACCEPTED, Some(2), json!(["ghost*"])),
        "{run}"
    );
    assert_eq!(
        (finish, cancel, policy.last_run.is_some()),
        (StatusCode::OK, StatusCode::OK, true)
    );
    assert_eq!(
        (first, retried, released),
        (
            vec![
                ("db1".to_owned(), 1, JobStatus::Queued),
                ("web01".to_owned(), 1, JobStatus::Queued),
            ],
            vec![
                ("db1".to_owned(), 1, JobStatus::Queued),
                ("web01".to_owned(), 1, JobStatus::Failed),
                ("web01".to_owned(), 2, JobStatus::Queued),
            ],
            vec![
                ("db1".to_owned(), 1, JobStatus::Cancelled),
                ("db2".to_owned(), 1, JobStatus::Queued),
                ("web01".to_owned(), 1, JobStatus::Failed),
                ("web01".to_owned(), 2, JobStatus::Queued),
            ],
        )
    );
}

/// (VM, attempt, status) of each job, sorted.
fn summary(jobs: &[Job]) -> Vec<(String, u32, JobStatus)> {
    let mut out: Vec<(String, u32, JobStatus)> = jobs
        .iter()
        .map(|j| {
            (
                j.vm_name
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                j.attempt,
                j.status,
            )
        })
        .collect();
    out.sort_by(|a, b| (a.0.as_str(), a.1).cmp(&(b.0.as_str(), b.1)));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minute_schedule_runs_each_minute_and_missed_minutes_run_once() {
    let (hub, a1) = hub_with_agent().await;
    report_inventory(&hub, &a1, &[("web01", "dc1/vm/web01")]).await;
    let mut body = design_policy("often", "*:0/1");
    body["vms"] = json!(["web01"]);
    let (status, created) = hub.post("/api/v1/policies", body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let policies = &hub.running.as_ref().unwrap().policies;
    let created_at: Timestamp = typed(created["created_at"].clone());
    let start = jiff::Timestamp::from_second(created_at.unix_seconds())
        .unwrap()
        .to_zoned(jiff::tz::TimeZone::system());
    let at = |secs: i64| &start + SignedDuration::from_secs(secs);

    // Before the first minute boundary after creation nothing is due; at it, one run.
    let early = policies.tick_at(&start).unwrap();
    let first = policies.tick_at(&at(61)).unwrap();
    let again = policies.tick_at(&at(61)).unwrap();
    // The hub "was down" for ten minutes: one run, not ten.
    let late = policies.tick_at(&at(661)).unwrap();
    let late_again = policies.tick_at(&at(661)).unwrap();
    let answer: Policy = hub.get_as("/api/v1/policies/often").await;

    assert_eq!(
        (
            early.started.len(),
            first.started.len(),
            first.queued.len(),
            again.started.len(),
            late.started.len(),
            late_again.started.len()
        ),
        (0, 1, 1, 0, 1, 0)
    );
    assert_eq!(
        answer.last_run.map(|t| t.unix_seconds()),
        Some(at(661).timestamp().as_second())
    );
}

/// A policy naming an agent instead of a credential (issue #19: an agent's own NBD sources):
/// its exact names are queued without an inventory, for that agent, without a credential (the
/// agent gets none); a failed job is retried for the same agent; an unknown agent is 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_of_an_agent_queues_jobs_without_credential_and_retries_them_there() {
    let (hub, a1) = hub_with_agent().await;
    let body = json!({"name": "kvm", "schedule": "yearly", "agent": "a1",
        "vms": ["kvm01", "kvm*"], "retry": {"count": 1, "delay_seconds": 0}});
    let (status, created) = hub.post("/api/v1/policies", body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let (unknown, refused) = hub
        .post(
            "/api/v1/policies",
            json!({"name": "x", "schedule": "daily", "agent": "nobody", "vms": ["a"]}),
        )
        .await;

    let (_, run) = hub.post("/api/v1/policies/kvm/run", json!({})).await;
    let (_, handed) = poll(&hub, &a1, 0).await;
    let (finish, _) = as_agent(
        &hub,
        &a1,
        &format!("/api/v1/jobs/{}/finish", handed["job_id"].as_str().unwrap()),
        json!({"status": "failed", "error": "begin hook failed"}),
    )
    .await;
    let jobs = wait_for_jobs(&hub, "kvm", |jobs| jobs.len() == 2).await;
    let (_, retry) = poll(&hub, &a1, 0).await;

    assert_eq!(
        (&created["agent"], &created["credential"]),
        (&json!("a1"), &Value::Null),
        "{created}"
    );
    assert!(
        unknown == StatusCode::BAD_REQUEST
            && refused["message"]
                .as_str()
                .is_some_and(|m| m.contains("nobody")),
        "{refused}"
    );
    assert_eq!(
        (run["job_ids"].as_array().map(Vec::len), &run["unmatched"]),
        (Some(1), &json!(["kvm*"])),
        "{run}"
    );
    assert_eq!(
        (&handed["vm"], &handed["credential"], finish),
        (&json!("kvm01"), &Value::Null, StatusCode::OK),
        "{handed}"
    );
    assert_eq!(
        summary(&jobs),
        vec![
            ("kvm01".to_owned(), 1, JobStatus::Failed),
            ("kvm01".to_owned(), 2, JobStatus::Queued),
        ]
    );
    assert!(
        jobs.iter()
            .all(|j| j.credential.is_none() && j.agent.as_ref().is_some_and(|a| a.as_str() == "a1")),
        "{jobs:?}"
    );
    assert_eq!(
        (&retry["vm"], &retry["credential"], &retry["attempt"]),
        (&json!("kvm01"), &Value::Null, &json!(2)),
        "{retry}"
    );
}
