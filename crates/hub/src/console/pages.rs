//! Read-mostly pages: the dashboard, jobs (with live progress and cancel), VMs and their chains.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Form;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Redirect};
use maud::{Markup, html};
use sendense_types::{
    Backup, BackupNowRequest, BackupQuery, BackupStatus, BackupType, Job, JobId, JobKind, JobQuery,
    JobStatus, Timestamp, VmName,
};
use serde::Deserialize;

use super::auth::SignedIn;
use super::view::{self, Page, PageError, bytes, progress_bar, segment, status_badge, time};
use super::{ConsoleState, blocking, chart};

/// Jobs shown on the jobs page at most (newest first).
const MAX_LISTED_JOBS: usize = 200;
/// Seconds in the dashboard's window.
const DAY: i64 = 24 * 60 * 60;

/// `GET /`: jobs of the last 24 h by outcome, running jobs, repository space, agents, and
/// the data moved per hour.
pub(super) async fn dashboard(State(s): State<ConsoleState>, user: SignedIn) -> Page {
    let api = s.api.clone();
    let (jobs, repo, agents) = blocking(move || {
        Ok((
            api.jobs.list(&JobQuery::default())?.jobs,
            api.engine.repository()?,
            api.agents.list()?.agents,
        ))
    })
    .await?;
    let now = Timestamp::now();
    let since = now.saturating_add_seconds(-DAY);
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for job in &jobs {
        let recent = job.finished_at.is_some_and(|t| t >= since);
        if job.status.is_active() || recent {
            *counts.entry(job.status.as_str()).or_default() += 1;
        }
    }
    let online = agents
        .iter()
        .filter(|a| a.state == sendense_types::AgentState::Online)
        .count();
    let used_percent = if repo.capacity_bytes == 0 {
        0
    } else {
        u64::try_from(
            u128::from(repo.capacity_bytes - repo.free_bytes.min(repo.capacity_bytes)) * 100
                / u128::from(repo.capacity_bytes),
        )
        .unwrap_or(100)
    };
    let content = html! {
        div.grid {
            section.card aria-labelledby="h-jobs" {
                h2 #h-jobs { "Jobs, last 24 hours" }
                div.counts {
                    @for status in ["completed", "failed", "cancelled", "running", "queued"] {
                        a class={ "count " (status) } href={ "/jobs?status=" (status) } {
                            b { (counts.get(status).copied().unwrap_or(0)) } (status)
                        }
                    }
                }
            }
            section.card aria-labelledby="h-repo" {
                h2 #h-repo { "Repository space" }
                @if let Some(warning) = &repo.low_space_warning {
                    div.warn role="alert" { (warning) }
                }
                (chart::meter(used_percent))
                p {
                    (bytes(repo.used_bytes)) " used by backups · "
                    (bytes(repo.free_bytes)) " free of " (bytes(repo.capacity_bytes))
                    " (" (used_percent) "% of the file system used)"
                }
            }
            section.card aria-labelledby="h-agents" {
                h2 #h-agents { "Agents" }
                p { b { (online) } " of " (agents.len()) " online" }
                ul {
                    @for agent in agents.iter().take(8) {
                        li { (agent.name) " " span class={ "badge state-" (agent.state) } { (agent.state) } }
                    }
                }
                a href="/agents" { "All agents" }
            }
            section.card.wide aria-labelledby="h-running" {
                h2 #h-running { "Running and queued jobs" }
                (running(&jobs))
            }
            section.card.wide aria-labelledby="h-rate" {
                h2 #h-rate { "Data moved per hour, last 24 hours" }
                (chart::throughput(&jobs, now))
            }
        }
    };
    Ok(view::page(&user, "Dashboard", "/", &content))
}

/// `GET /live/running`: the dashboard's running jobs (htmx polls it).
pub(super) async fn running_fragment(State(s): State<ConsoleState>, _user: SignedIn) -> Page {
    let jobs = Arc::clone(&s.api.jobs);
    let jobs = blocking(move || Ok(jobs.list(&JobQuery::default())?.jobs)).await?;
    Ok(Html(running(&jobs).into_string()).into_response())
}

/// The running and queued jobs with progress bars, polled every 2 s.
fn running(jobs: &[Job]) -> Markup {
    let active: Vec<&Job> = jobs.iter().filter(|j| j.status.is_active()).collect();
    html! {
        div #running hx-get="/live/running" hx-trigger="every 2s" hx-swap="outerHTML" {
            @if active.is_empty() {
                p.muted { "Nothing is running." }
            } @else {
                div.scroll { (job_table(&active)) }
            }
        }
    }
}

fn job_table(jobs: &[&Job]) -> Markup {
    html! {
        table {
            thead { tr {
                th { "Job" } th { "Kind" } th { "VM" } th { "Status" } th { "Progress" }
                th.num { "MB/s" } th.hide-narrow { "Agent" } th.hide-narrow { "Queued" }
            } }
            tbody {
                @for job in jobs {
                    tr {
                        td { a href={ "/jobs/" (job.job_id) } { (job.job_id) } }
                        td { (job.kind) }
                        td { @if let Some(vm) = &job.vm_name { a href={ "/vms/" (segment(vm.as_str())) } { (vm) } } }
                        td { (status_badge(job.status.as_str())) }
                        td { (progress_bar(&job.progress, job.status)) }
                        td.num { (format!("{:.1}", job.progress.mb_per_s)) }
                        td.hide-narrow { @if let Some(a) = &job.agent { (a) } @else { span.muted { "hub" } } }
                        td.hide-narrow { (time(Some(job.queued_at))) }
                    }
                }
            }
        }
    }
}

/// `GET /jobs?status=&kind=&vm_name=`: the newest jobs matching, refreshed every 3 s.
pub(super) async fn jobs(
    State(s): State<ConsoleState>,
    user: SignedIn,
    headers: HeaderMap,
    query: Result<Query<JobQuery>, QueryRejection>,
) -> Page {
    let Query(query) =
        query.map_err(|e| PageError::bad_request(format!("Bad filter: {}", e.body_text())))?;
    let jobs = Arc::clone(&s.api.jobs);
    let q = query.clone();
    let list = blocking(move || Ok(jobs.list(&q)?.jobs)).await?;
    let url = jobs_url(&query);
    let shown: Vec<&Job> = list.iter().take(MAX_LISTED_JOBS).collect();
    let table = html! {
        div #jobs-table hx-get=(url) hx-trigger="every 3s" hx-swap="outerHTML" {
            @if shown.is_empty() {
                p.muted { "No job matches." }
            } @else {
                p.muted { (list.len()) " jobs match"
                    @if list.len() > shown.len() { "; the newest " (shown.len()) " are shown" } "." }
                div.scroll { (job_table(&shown)) }
            }
        }
    };
    if headers.contains_key("hx-request") {
        return Ok(Html(table.into_string()).into_response());
    }
    let selected = |a: Option<&str>, b: &str| a == Some(b);
    let status = query.status.map(JobStatus::as_str);
    let kind = query.kind.map(JobKind::as_str);
    let content = html! {
        form.filters method="get" action="/jobs" {
            label { "Status"
                select name="status" {
                    option value="" { "any" }
                    @for st in ["queued", "running", "completed", "failed", "cancelled"] {
                        option value=(st) selected[selected(status, st)] { (st) }
                    }
                }
            }
            label { "Kind"
                select name="kind" {
                    option value="" { "any" }
                    @for k in ["backup", "restore", "prune", "verify", "copy", "inventory"] {
                        option value=(k) selected[selected(kind, k)] { (k) }
                    }
                }
            }
            label { "VM" input name="vm_name" value=[query.vm_name.as_ref().map(VmName::as_str)] placeholder="any VM"; }
            button type="submit" { "Filter" }
        }
        (table)
    };
    Ok(view::page(&user, "Jobs", "/jobs", &content))
}

fn jobs_url(query: &JobQuery) -> String {
    let mut parts = Vec::new();
    if let Some(s) = query.status {
        parts.push(format!("status={s}"));
    }
    if let Some(k) = query.kind {
        parts.push(format!("kind={k}"));
    }
    if let Some(vm) = &query.vm_name {
        parts.push(format!("vm_name={}", segment(vm.as_str())));
    }
    if parts.is_empty() {
        "/jobs".to_owned()
    } else {
        format!("/jobs?{}", parts.join("&"))
    }
}

/// `GET /jobs/{id}`: one job, live while it runs.
pub(super) async fn job(
    State(s): State<ConsoleState>,
    user: SignedIn,
    Path(id): Path<String>,
) -> Page {
    let job = load_job(&s, &id).await?;
    // Outside the part that polls, so that keyboard focus on it survives the refreshes.
    let cancel = job.status.is_active() && user.role.may_operate();
    let content = html! {
        (job_live(&job))
        @if cancel {
            form.inline method="post" action={ "/jobs/" (job.job_id) "/cancel" } {
                (view::csrf(&user))
                button.danger type="submit" #cancel { "Cancel this job" }
            }
        }
    };
    Ok(view::page(
        &user,
        &format!("Job {}", job.job_id),
        "/jobs",
        &content,
    ))
}

/// `GET /jobs/{id}/live`: the live part of a job's page.
pub(super) async fn job_fragment(
    State(s): State<ConsoleState>,
    _user: SignedIn,
    Path(id): Path<String>,
) -> Page {
    let job = load_job(&s, &id).await?;
    Ok(Html(job_live(&job).into_string()).into_response())
}

async fn load_job(s: &ConsoleState, id: &str) -> Result<Job, PageError> {
    let id: JobId = id
        .parse()
        .map_err(|e| PageError::bad_request(format!("{id:?} is not a job id: {e}")))?;
    let jobs = Arc::clone(&s.api.jobs);
    Ok(blocking(move || jobs.job(&id)).await?)
}

/// A job's state, progress and log (its record's events and what the hub logged about it);
/// polls itself every second while the job is active.
fn job_live(job: &Job) -> Markup {
    let lines = super::job_logs().lines(job.job_id.as_str());
    let body = html! {
        div.card {
            div.actions {
                (status_badge(job.status.as_str()))
                span { (job.kind) @if let Some(vm) = &job.vm_name { " of " a href={ "/vms/" (segment(vm.as_str())) } { (vm) } } }
            }
            p { (progress_bar(&job.progress, job.status)) }
            p #progress-text {
                (view::percent(&job.progress, job.status)) "% · "
                (bytes(job.progress.bytes_done)) " of " (bytes(job.progress.bytes_total))
                " · " (format!("{:.1}", job.progress.mb_per_s)) " MB/s"
                @if let Some(eta) = job.progress.eta_seconds { " · about " (eta) " s left" }
            }
            @if let Some(error) = &job.error { div.error role="alert" { (error) } }
            @if let Some(result) = &job.result { p { (result) } }
            @if let Some(id) = &job.backup_id {
                p { "Restore point: " a href={ "/restore/" (id) } { (id) } }
            }
        }
        section.card aria-labelledby="h-log" {
            h2 #h-log { "Log" }
            ol.log #job-log aria-live="polite" {
                li { (time(Some(job.queued_at))) span.lvl-info { "info" } span { "queued"
                    @if let Some(p) = &job.policy { " by policy " a href={ "/policies/" (segment(p.as_str())) } { (p) } }
                    @if let Some(t) = job.backup_type { " (" (t) ")" } } }
                @if let Some(t) = job.started_at {
                    li { (time(Some(t))) span.lvl-info { "info" } span { "started, attempt " (job.attempt.max(1))
                        @if let Some(a) = &job.agent { " on agent " (a) } } }
                }
                @for line in &lines {
                    li { (time(Some(line.at))) span class={ "lvl-" (line.level) } { (line.level) } span { (line.text) } }
                }
                @if let Some(t) = job.finished_at {
                    @let level = if job.status == JobStatus::Completed { "info" } else { "error" };
                    li { (time(Some(t))) span class={ "lvl-" (level) } { (level) }
                        span { "ended " (job.status) @if let Some(e) = &job.error { ": " (e) } } }
                }
            }
            @if lines.is_empty() { p.muted { "The hub has logged nothing about this job since it started." } }
        }
    };
    // Polls while the job runs, and a few seconds after it ends (its last lines come then).
    let recent_end = job
        .finished_at
        .is_some_and(|t| Timestamp::now().unix_seconds() - t.unix_seconds() < 5);
    if job.status.is_active() || recent_end {
        html! { div #job-live hx-get={ "/jobs/" (job.job_id) "/live" } hx-trigger="every 1s" hx-swap="outerHTML" { (body) } }
    } else {
        html! { div #job-live { (body) } }
    }
}
/// `POST /jobs/{id}/cancel` (operator).
pub(super) async fn cancel_job(
    State(s): State<ConsoleState>,
    user: SignedIn,
    Path(id): Path<String>,
) -> Page {
    user.require_operator("cancel jobs")?;
    let job_id: JobId = id
        .parse()
        .map_err(|e| PageError::bad_request(format!("{id:?} is not a job id: {e}")))?;
    let jobs = Arc::clone(&s.api.jobs);
    let target = job_id.clone();
    blocking(move || jobs.cancel(&target)).await?;
    tracing::info!(user = %user.name, job_id = %job_id, "job cancelled from the console");
    user.flash(&s, format!("Job {job_id} cancelled."));
    Ok(Redirect::to(&format!("/jobs/{job_id}")).into_response())
}

/// `GET /vms`: every VM, protected or not, with its last good backup and its points' size.
pub(super) async fn vms(State(s): State<ConsoleState>, user: SignedIn) -> Page {
    let engine = Arc::clone(&s.api.engine);
    let (vms, backups) =
        blocking(move || Ok((engine.vms()?, engine.backups(&BackupQuery::default())?))).await?;
    let mut by_vm: BTreeMap<&str, (Option<&Backup>, usize, u64)> = BTreeMap::new();
    for b in backups
        .iter()
        .filter(|b| b.status == BackupStatus::Completed)
    {
        let entry = by_vm.entry(b.vm_name.as_str()).or_default();
        if entry.0.is_none_or(|last| b.created_at > last.created_at) {
            entry.0 = Some(b);
        }
        entry.1 += 1;
        entry.2 = entry.2.saturating_add(point_size(b));
    }
    let unprotected = vms
        .iter()
        .filter(|vm| !by_vm.contains_key(vm.name.as_str()))
        .count();
    let content = html! {
        p { (vms.len()) " VMs; " b { (unprotected) } " without any restore point." }
        div.scroll {
            table {
                thead { tr {
                    th { "VM" } th { "Protected" } th { "Last good backup" } th.num { "Points" }
                    th.num { "Size" } th.num.hide-narrow { "Disks" }
                } }
                tbody {
                    @for vm in &vms {
                        @let (last, points, size) = by_vm.get(vm.name.as_str()).copied().unwrap_or_default();
                        tr {
                            td { a href={ "/vms/" (segment(vm.name.as_str())) } { (vm.name) } }
                            td { @if last.is_some() { span.badge.yes { "yes" } } @else { span.badge.no { "no" } } }
                            td { (time(last.and_then(|b| b.completed_at))) }
                            td.num { (points) }
                            td.num { (bytes(size)) }
                            td.num.hide-narrow { (vm.disks.len()) }
                        }
                    }
                }
            }
        }
    };
    Ok(view::page(&user, "VMs", "/vms", &content))
}

/// Bytes a point's images took to write (the size of its layer).
fn point_size(b: &Backup) -> u64 {
    b.disks
        .iter()
        .fold(0u64, |sum, d| sum.saturating_add(d.bytes_written))
}

/// `GET /vms/{name}`: the VM's chain as a timeline, every point, and "back up now".
pub(super) async fn vm(
    State(s): State<ConsoleState>,
    user: SignedIn,
    Path(name): Path<String>,
) -> Page {
    let vm_name: VmName = name
        .parse()
        .map_err(|e| PageError::bad_request(format!("{name:?} is not a VM name: {e}")))?;
    let engine = Arc::clone(&s.api.engine);
    let credentials = Arc::clone(&s.api.credentials);
    let n = vm_name.clone();
    let (vm, chain, points, creds) = blocking(move || {
        let query = BackupQuery {
            vm_name: Some(n.clone()),
            ..BackupQuery::default()
        };
        Ok((
            engine.vm(&n)?,
            engine.chain(&n)?,
            engine.backups(&query)?,
            credentials.list()?,
        ))
    })
    .await?;
    let content = html! {
        p { (vm.disks.len()) " disks: "
            @for (i, d) in vm.disks.iter().enumerate() { @if i > 0 { ", " } (d.key) " (" (bytes(d.capacity_bytes)) ")" } }
        section.card {
            h2 { "Current chain" }
            @if chain.backups.is_empty() {
                p.muted { "No restore point yet." }
            } @else {
                ol.timeline aria-label="Restore points, oldest first" {
                    @for b in &chain.backups {
                        li class={ "point " (b.backup_type) " " (b.status) } {
                            b { (b.backup_type) } " · " (status_badge(b.status.as_str())) br;
                            (time(Some(b.created_at))) br;
                            (bytes(point_size(b))) @if b.protected { " · protected" } br;
                            a href={ "/restore/" (b.backup_id) } { "Restore…" }
                        }
                    }
                }
            }
        }
        @if user.role.may_operate() {
            section.card {
                h2 { "Back up now" }
                form.filters method="post" action={ "/vms/" (segment(vm.name.as_str())) "/backup" } {
                    (view::csrf(&user))
                    label { "Type" select name="backup_type" {
                        option value="auto" { "auto" } option value="incremental" { "incremental" } option value="full" { "full" } } }
                    label { "vCenter credential" select name="credential" {
                        option value="" { "the one the hub knows" }
                        @for c in &creds { option value=(c.name) { (c.name) } } } }
                    button type="submit" #backup-now { "Back up now" }
                }
            }
        }
        section.card {
            h2 { "Every point" }
            div.scroll { table {
                thead { tr { th { "Point" } th { "Type" } th { "Status" } th { "Created" } th.num { "Size" } th { "Verified" } } }
                tbody {
                    @for b in points.iter().rev() {
                        tr {
                            td { a href={ "/restore/" (b.backup_id) } { (b.backup_id) } }
                            td { (b.backup_type) }
                            td { (status_badge(b.status.as_str())) }
                            td { (time(Some(b.created_at))) }
                            td.num { (bytes(point_size(b))) }
                            td { (b.verification.state.as_str()) }
                        }
                    }
                }
            } }
        }
    };
    Ok(view::page(
        &user,
        &format!("VM {}", vm.name),
        "/vms",
        &content,
    ))
}

/// The "back up now" form.
#[derive(Debug, Deserialize)]
pub(super) struct BackupNowForm {
    backup_type: String,
    #[serde(default)]
    credential: String,
}

/// `POST /vms/{name}/backup` (operator): queues a backup job as `POST /api/v1/vms/{name}/backup`.
pub(super) async fn backup_now(
    State(s): State<ConsoleState>,
    user: SignedIn,
    Path(name): Path<String>,
    form: Result<Form<BackupNowForm>, FormRejection>,
) -> Page {
    user.require_operator("start backups")?;
    let Form(form) = form.map_err(|e| PageError::bad_request(e.body_text()))?;
    let vm: VmName = name
        .parse()
        .map_err(|e| PageError::bad_request(format!("{name:?} is not a VM name: {e}")))?;
    let backup_type: BackupType = form
        .backup_type
        .parse()
        .map_err(|e| PageError::bad_request(format!("Backup type: {e}")))?;
    let credential = match form.credential.trim() {
        "" => None,
        c => Some(
            c.parse()
                .map_err(|e| PageError::bad_request(format!("Credential: {e}")))?,
        ),
    };
    let req = BackupNowRequest {
        backup_type: Some(backup_type),
        credential,
        agent: None,
    };
    let jobs = Arc::clone(&s.api.jobs);
    let accepted = blocking(move || jobs.backup_now(vm, req)).await?;
    user.flash(&s, format!("Backup job {} queued.", accepted.job_id));
    Ok(Redirect::to(&format!("/jobs/{}", accepted.job_id)).into_response())
}
