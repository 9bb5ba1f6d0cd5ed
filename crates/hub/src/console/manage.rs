//! Pages that change settings: policies (create, edit, run now, next runs), agents (enroll),
//! vCenter credentials, console users. Each change calls the service the REST API calls.

use std::sync::Arc;

use axum::Form;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect};
use maud::{Markup, html};
use sendense_calendar::CalendarEvent;
use sendense_types::jobs::PolicyRequest;
use sendense_types::{
    CreateAgentRequest, CreateUserRequest, CredentialRequest, Policy, PolicyName, Role,
    SetPasswordRequest, UserName,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::auth::SignedIn;
use super::view::{self, Page, PageError, segment, time};
use super::{ConsoleState, blocking};

/// How many next runs the schedule preview shows.
const PREVIEW_RUNS: usize = 5;

fn form<T>(form: Result<Form<T>, FormRejection>) -> Result<T, PageError> {
    form.map(|Form(f)| f).map_err(|e| {
        PageError::bad_request(format!("The form could not be read: {}", e.body_text()))
    })
}

fn policy_name(name: &str) -> Result<PolicyName, PageError> {
    name.parse()
        .map_err(|e| PageError::bad_request(format!("{name:?} is not a policy name: {e}")))
}

/// `GET /policies`: every policy with its schedule and next run.
pub(super) async fn policies(State(s): State<ConsoleState>, user: SignedIn) -> Page {
    let policies = Arc::clone(&s.api.policies);
    let list = blocking(move || policies.list()).await?.policies;
    let content = html! {
        @if user.role.may_administer() {
            p { a.button href="/policies/new" #new-policy { "New policy" } }
        }
        @if list.is_empty() {
            p.muted { "No policy yet." }
        } @else {
            div.scroll { table {
                thead { tr {
                    th { "Policy" } th { "Schedule" } th { "Next run" } th { "Last run" }
                    th.hide-narrow { "VMs" } th { "Enabled" } th { "" }
                } }
                tbody {
                    @for p in &list {
                        tr {
                            td { a href={ "/policies/" (segment(p.name.as_str())) } { (p.name) } }
                            td { code { (p.schedule) } }
                            td { (time(p.next_run)) }
                            td { (time(p.last_run)) }
                            td.hide-narrow { (p.vms.join(", ")) }
                            td { @if p.enabled { span.badge.yes { "yes" } } @else { span.badge.no { "no" } } }
                            td { @if user.role.may_operate() {
                                form.inline method="post" action={ "/policies/" (segment(p.name.as_str())) "/run" } {
                                    (view::csrf(&user))
                                    button.secondary type="submit" { "Run now" }
                                }
                            } }
                        }
                    }
                }
            } }
        }
    };
    Ok(view::page(&user, "Policies", "/policies", &content))
}

/// `GET /policies/new` (admin).
pub(super) async fn new_policy(State(s): State<ConsoleState>, user: SignedIn) -> Page {
    user.require_admin("create policies")?;
    let form = policy_form(&s, &user, None).await?;
    Ok(view::page(&user, "New policy", "/policies", &form))
}

/// `GET /policies/{name}`: the policy's settings as a form (saving needs an admin).
pub(super) async fn edit_policy(
    State(s): State<ConsoleState>,
    user: SignedIn,
    Path(name): Path<String>,
) -> Page {
    let name = policy_name(&name)?;
    let policies = Arc::clone(&s.api.policies);
    let policy = blocking(move || policies.get(&name)).await?;
    let title = format!("Policy {}", policy.name);
    let form = policy_form(&s, &user, Some(&policy)).await?;
    let content = html! {
        p { "Next run: " (time(policy.next_run)) " · last run: " (time(policy.last_run)) }
        div.actions {
            @if user.role.may_operate() {
                form.inline method="post" action={ "/policies/" (segment(policy.name.as_str())) "/run" } {
                    (view::csrf(&user))
                    button type="submit" #run-now { "Run now" }
                }
            }
            a href={ "/jobs?kind=backup" } { "Backup jobs" }
        }
        (form)
        @if user.role.may_administer() {
            form method="post" action={ "/policies/" (segment(policy.name.as_str())) "/delete" } {
                (view::csrf(&user))
                button.danger type="submit" { "Delete this policy" }
            }
        }
    };
    Ok(view::page(&user, &title, "/policies", &content))
}

async fn policy_form(
    s: &ConsoleState,
    user: &SignedIn,
    policy: Option<&Policy>,
) -> Result<Markup, PageError> {
    let credentials = Arc::clone(&s.api.credentials);
    let agents = Arc::clone(&s.api.agents);
    let (creds, agents) =
        blocking(move || Ok((credentials.list()?, agents.list()?.agents))).await?;
    let action = policy.map_or("/policies".to_owned(), |p| {
        format!("/policies/{}", segment(p.name.as_str()))
    });
    let num = |v: Option<u32>| v.map(|n| n.to_string()).unwrap_or_default();
    let r = policy.map(|p| &p.retention);
    let schedule = policy.map_or("daily", |p| p.schedule.as_str());
    let runs = preview(s, schedule);
    Ok(html! {
        form.stack.card method="post" action=(action) #policy-form {
            (view::csrf(user))
            @if policy.is_none() {
                label { "Name" small { "letters, digits, '.', '_' and '-'" }
                    input name="name" #policy-name required maxlength="64"; }
            }
            label { "Schedule" small { "calendar event, e.g. " code { "mon..fri 22:00" } ", " code { "daily" } ", " code { "*:0/15" } }
                input name="schedule" #policy-schedule required value=(schedule)
                    hx-get="/policies/preview" hx-trigger="input changed delay:300ms" hx-target="#next-runs" hx-swap="outerHTML"; }
            (runs)
            label { "vCenter credential" small { "the VMs of a vCenter, through the credential's agent" }
                select name="credential" #policy-credential {
                    @for c in &creds {
                        option value=(c.name) selected[policy.is_some_and(|p| p.credential.as_ref() == Some(&c.name))] { (c.name) " (" (c.host) ")" }
                    }
                    option value="" selected[policy.is_some_and(|p| p.credential.is_none())] { "none: an agent's own NBD sources (below)" }
                }
                @if creds.is_empty() { small { "No credential yet: add one on the Credentials page first." } }
            }
            label { "Or an agent's NBD sources" small { "KVM and other NBD sources the agent lists in its nbd-sources.toml" }
                select name="agent" #policy-agent {
                    option value="" selected[policy.is_none_or(|p| p.agent.is_none())] { "none: a vCenter credential (above)" }
                    @for a in &agents {
                        option value=(a.name) selected[policy.is_some_and(|p| p.agent.as_ref() == Some(&a.name))] { (a.name) }
                    }
                }
            }
            label { "VMs" small { "one inventory path or name glob per line" }
                textarea name="vms" #policy-vms required { (policy.map(|p| p.vms.join("\n")).unwrap_or_default()) } }
            fieldset {
                legend { "Running" }
                label { "At once" input name="max_parallel" type="number" min="1" value=(policy.map_or(1, |p| p.max_parallel)); }
                label { "Retries" input name="retry_count" type="number" min="0" value=(policy.map_or(0, |p| p.retry.count)); }
                label { "Retry after (s)" input name="retry_delay_seconds" type="number" min="0" value=(policy.map_or(600, |p| p.retry.delay_seconds)); }
                label { "Chain length" input name="max_chain_length" type="number" min="1" value=(num(policy.and_then(|p| p.max_chain_length))); }
            }
            fieldset {
                legend { "Keep" }
                label { "last" input name="keep_last" type="number" min="0" value=(num(r.and_then(|r| r.keep_last))); }
                label { "hourly" input name="keep_hourly" type="number" min="0" value=(num(r.and_then(|r| r.keep_hourly))); }
                label { "daily" input name="keep_daily" type="number" min="0" value=(num(r.and_then(|r| r.keep_daily))); }
                label { "weekly" input name="keep_weekly" type="number" min="0" value=(num(r.and_then(|r| r.keep_weekly))); }
                label { "monthly" input name="keep_monthly" type="number" min="0" value=(num(r.and_then(|r| r.keep_monthly))); }
                label { "yearly" input name="keep_yearly" type="number" min="0" value=(num(r.and_then(|r| r.keep_yearly))); }
            }
            label.check { input type="checkbox" name="verify_after_backup" value="on" checked[policy.is_some_and(|p| p.verify_after_backup)]; "Verify each backup after it completes" }
            label.check { input type="checkbox" name="enabled" value="on" checked[policy.is_none_or(|p| p.enabled)]; "Enabled (the scheduler runs it)" }
            @if user.role.may_administer() {
                button type="submit" #save-policy { "Save policy" }
            } @else {
                p.muted { "Only admins may change policies." }
            }
        }
    })
}

/// The schedule preview's query.
#[derive(Debug, Deserialize)]
pub(super) struct PreviewQuery {
    #[serde(default)]
    schedule: String,
}

/// `GET /policies/preview?schedule=`: the next runs of a schedule, or what is wrong with it.
pub(super) async fn schedule_preview(
    State(s): State<ConsoleState>,
    _user: SignedIn,
    query: Result<Query<PreviewQuery>, QueryRejection>,
) -> Page {
    let schedule = query.map(|Query(q)| q.schedule).unwrap_or_default();
    Ok(Html(preview(&s, &schedule).into_string()).into_response())
}

fn preview(s: &ConsoleState, schedule: &str) -> Markup {
    let parsed = CalendarEvent::parse(schedule);
    html! {
        div #next-runs aria-live="polite" {
            @match parsed {
                Ok(event) => {
                    @let runs = next_runs(&event, &s.api.policies.clock().now());
                    @if runs.is_empty() {
                        p.warn { "This schedule never fires." }
                    } @else {
                        p.muted { "Next runs (hub time): "
                            @for (i, run) in runs.iter().enumerate() {
                                @if i > 0 { ", " }
                                time datetime=(run.timestamp()) { (run.strftime("%a %Y-%m-%d %H:%M")) }
                            }
                        }
                    }
                }
                Err(e) => p.warn { "Not a schedule: " (e) }
            }
        }
    }
}

fn next_runs(event: &CalendarEvent, now: &jiff::Zoned) -> Vec<jiff::Zoned> {
    let mut out: Vec<jiff::Zoned> = Vec::new();
    let mut t = now.clone();
    while out.len() < PREVIEW_RUNS {
        match event.next_after(&t) {
            Some(next) => {
                t = next.clone();
                out.push(next);
            }
            None => break,
        }
    }
    out
}

/// The policy form's fields.
#[derive(Debug, Deserialize)]
pub(super) struct PolicyForm {
    #[serde(default)]
    name: String,
    schedule: String,
    #[serde(default)]
    credential: String,
    #[serde(default)]
    agent: String,
    vms: String,
    #[serde(default)]
    max_parallel: String,
    #[serde(default)]
    retry_count: String,
    #[serde(default)]
    retry_delay_seconds: String,
    #[serde(default)]
    max_chain_length: String,
    #[serde(default)]
    keep_last: String,
    #[serde(default)]
    keep_hourly: String,
    #[serde(default)]
    keep_daily: String,
    #[serde(default)]
    keep_weekly: String,
    #[serde(default)]
    keep_monthly: String,
    #[serde(default)]
    keep_yearly: String,
    #[serde(default)]
    verify_after_backup: Option<String>,
    #[serde(default)]
    enabled: Option<String>,
}

impl PolicyForm {
    /// The API's request for this form (validated as the API validates its JSON).
    fn request(&self, name: &str) -> Result<PolicyRequest, PageError> {
        let number = |field: &str, label: &str| -> Result<Value, PageError> {
            let text = match field.trim() {
                "" => return Ok(Value::Null),
                t => t,
            };
            text.parse::<u64>().map(Value::from).map_err(|_| {
                PageError::bad_request(format!("{label} must be a whole number, not {text:?}."))
            })
        };
        let mut retention = Map::new();
        for (key, value, label) in [
            ("keep_last", &self.keep_last, "Keep last"),
            ("keep_hourly", &self.keep_hourly, "Keep hourly"),
            ("keep_daily", &self.keep_daily, "Keep daily"),
            ("keep_weekly", &self.keep_weekly, "Keep weekly"),
            ("keep_monthly", &self.keep_monthly, "Keep monthly"),
            ("keep_yearly", &self.keep_yearly, "Keep yearly"),
        ] {
            let v = number(value, label)?;
            if !v.is_null() {
                retention.insert(key.to_owned(), v);
            }
        }
        let vms: Vec<&str> = self
            .vms
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let mut body = json!({
            "name": name.trim(),
            "schedule": self.schedule.trim(),
            "vms": vms,
            "retention": retention,
            "verify_after_backup": self.verify_after_backup.is_some(),
            "enabled": self.enabled.is_some(),
        });
        // Exactly one of them names where the VMs are: the agent when one is chosen.
        match (self.agent.trim(), self.credential.trim()) {
            ("", "") => {
                return Err(PageError::bad_request(
                    "Choose a vCenter credential or an agent whose NBD sources hold the VMs."
                        .to_owned(),
                ));
            }
            ("", credential) => body["credential"] = json!(credential),
            (agent, _) => body["agent"] = json!(agent),
        }
        let max_parallel = number(&self.max_parallel, "At once")?;
        if !max_parallel.is_null() {
            body["max_parallel"] = max_parallel;
        }
        let count = number(&self.retry_count, "Retries")?;
        let delay = number(&self.retry_delay_seconds, "Retry after")?;
        body["retry"] = json!({
            "count": if count.is_null() { json!(0) } else { count },
            "delay_seconds": if delay.is_null() { json!(600) } else { delay },
        });
        let chain = number(&self.max_chain_length, "Chain length")?;
        if !chain.is_null() {
            body["max_chain_length"] = chain;
        }
        serde_json::from_value(body)
            .map_err(|e| PageError::bad_request(format!("The policy was not saved: {e}")))
    }
}

/// `POST /policies` (admin): creates a policy as `POST /api/v1/policies`.
pub(super) async fn create_policy(
    State(s): State<ConsoleState>,
    user: SignedIn,
    f: Result<Form<PolicyForm>, FormRejection>,
) -> Page {
    user.require_admin("create policies")?;
    let f = form(f)?;
    let req = f.request(&f.name)?;
    let policies = Arc::clone(&s.api.policies);
    let policy = blocking(move || policies.create(&req)).await?;
    user.flash(&s, format!("Policy {} created.", policy.name));
    Ok(Redirect::to(&format!("/policies/{}", segment(policy.name.as_str()))).into_response())
}

/// `POST /policies/{name}` (admin): replaces a policy's settings as `PUT /api/v1/policies/{name}`.
pub(super) async fn replace_policy(
    State(s): State<ConsoleState>,
    user: SignedIn,
    Path(name): Path<String>,
    f: Result<Form<PolicyForm>, FormRejection>,
) -> Page {
    user.require_admin("change policies")?;
    let name = policy_name(&name)?;
    let req = form(f)?.request(name.as_str())?;
    let policies = Arc::clone(&s.api.policies);
    let policy = blocking(move || policies.replace(&name, &req)).await?;
    user.flash(&s, format!("Policy {} saved.", policy.name));
    Ok(Redirect::to(&format!("/policies/{}", segment(policy.name.as_str()))).into_response())
}

/// `POST /policies/{name}/run` (operator): run now, as `POST /api/v1/policies/{name}/run`.
pub(super) async fn run_policy(
    State(s): State<ConsoleState>,
    user: SignedIn,
    Path(name): Path<String>,
) -> Page {
    user.require_operator("run policies")?;
    let name = policy_name(&name)?;
    let policies = Arc::clone(&s.api.policies);
    let n = name.clone();
    let run = blocking(move || policies.run_now(&n)).await?;
    let mut message = format!(
        "Policy {name} started: {} job(s) queued.",
        run.job_ids.len()
    );
    if !run.unmatched.is_empty() {
        message.push_str(&format!(" No VM matched: {}.", run.unmatched.join(", ")));
    }
    if !run.skipped.is_empty() {
        let skipped: Vec<&str> = run.skipped.iter().map(|v| v.as_str()).collect();
        message.push_str(&format!(
            " Already queued or running: {}.",
            skipped.join(", ")
        ));
    }
    tracing::info!(user = %user.name, policy = %name, jobs = run.job_ids.len(), "policy run from the console");
    user.flash(&s, message);
    let to = match run.job_ids.as_slice() {
        [one] => format!("/jobs/{one}"),
        _ => "/jobs?kind=backup".to_owned(),
    };
    Ok(Redirect::to(&to).into_response())
}

/// `POST /policies/{name}/delete` (admin).
pub(super) async fn delete_policy(
    State(s): State<ConsoleState>,
    user: SignedIn,
    Path(name): Path<String>,
) -> Page {
    user.require_admin("delete policies")?;
    let name = policy_name(&name)?;
    let policies = Arc::clone(&s.api.policies);
    let gone = blocking(move || policies.delete(&name)).await?;
    user.flash(&s, format!("Policy {} deleted; its jobs stay.", gone.name));
    Ok(Redirect::to("/policies").into_response())
}

/// `GET /agents`: every agent and its state; admins enroll new ones.
pub(super) async fn agents(State(s): State<ConsoleState>, user: SignedIn) -> Page {
    let content = agents_content(&s, &user, None).await?;
    Ok(view::page(&user, "Agents", "/agents", &content))
}

async fn agents_content(
    s: &ConsoleState,
    user: &SignedIn,
    enrolled: Option<Markup>,
) -> Result<Markup, PageError> {
    let agents = Arc::clone(&s.api.agents);
    let list = blocking(move || agents.list()).await?.agents;
    let admin = user.role.may_administer();
    Ok(html! {
        @if let Some(enrolled) = enrolled { (enrolled) }
        div.scroll { table {
            thead { tr { th { "Agent" } th { "State" } th { "Version" } th.num { "Slots" } th.num { "Running" } th { "Last seen" }
                @if admin { th { span.sr-only { "Actions" } } } } }
            tbody {
                @for a in &list {
                    tr {
                        td { (a.name) }
                        td { span class={ "badge state-" (a.state) } { (a.state) } }
                        td { (a.version.as_deref().unwrap_or("—")) }
                        td.num { (a.slots.map(|n| n.to_string()).unwrap_or_default()) }
                        td.num { (a.running_jobs.len()) }
                        td { (time(a.last_seen)) }
                        @if admin { td {
                            form.inline method="post" action={ "/agents/" (segment(a.name.as_str())) "/delete" } {
                                (view::csrf(user))
                                button.danger type="submit" aria-label={ "Delete agent " (a.name) } { "Delete" }
                            }
                        } }
                    }
                }
            }
        } }
        @if list.is_empty() { p.muted { "No agent yet." } }
        @if user.role.may_administer() {
            section.card {
                h2 { "Enroll an agent" }
                form.filters method="post" action="/agents" {
                    (view::csrf(user))
                    label { "Name" input name="name" #agent-name required maxlength="64"; }
                    button type="submit" { "Create enrollment" }
                }
            }
        }
    })
}

/// The agent form.
#[derive(Debug, Deserialize)]
pub(super) struct AgentForm {
    name: String,
}

/// `POST /agents` (admin): creates an agent as `POST /api/v1/agents` and shows its one-time
/// enrollment command, ready to copy.
pub(super) async fn create_agent(
    State(s): State<ConsoleState>,
    user: SignedIn,
    headers: HeaderMap,
    f: Result<Form<AgentForm>, FormRejection>,
) -> Page {
    user.require_admin("enroll agents")?;
    let f = form(f)?;
    let req: CreateAgentRequest = serde_json::from_value(json!({ "name": f.name.trim() }))
        .map_err(|e| PageError::bad_request(format!("Agent name: {e}")))?;
    let agents = Arc::clone(&s.api.agents);
    let enrollment = blocking(move || agents.create(&req)).await?;
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("HUB:8443");
    let command = format!(
        "printf '%s\\n' '{token}' > enroll.token && chmod 600 enroll.token\n\
         sendense-client agent enroll --hub https://{host} --ca ca-cert.pem --name {name} \\\n  \
         --enrollment-token-file enroll.token --state-dir /var/lib/sendense-agent\n\
         sendense-client agent run --state-dir /var/lib/sendense-agent",
        token = enrollment.enrollment_token,
        name = enrollment.name,
    );
    let enrolled = html! {
        section.card {
            h2 { "Agent " (enrollment.name) " created" }
            p { "Run this on the appliance within 24 hours (until " (time(Some(enrollment.expires_at))) "). "
                "The token works once; ca-cert.pem is this hub's DATA/tls/ca-cert.pem." }
            pre.cmd #enroll-command { (command) }
            button.secondary type="button" data-copy="enroll-command" { "Copy command" }
        }
    };
    let content = agents_content(&s, &user, Some(enrolled)).await?;
    Ok(view::page(&user, "Agents", "/agents", &content))
}

/// `GET /credentials`: stored vCenter credentials (never a password); admins add new ones.
pub(super) async fn credentials(State(s): State<ConsoleState>, user: SignedIn) -> Page {
    let credentials = Arc::clone(&s.api.credentials);
    let agents = Arc::clone(&s.api.agents);
    let (list, agents) = blocking(move || Ok((credentials.list()?, agents.list()?.agents))).await?;
    let admin = user.role.may_administer();
    let content = html! {
        div.scroll { table {
            thead { tr { th { "Credential" } th { "vCenter" } th { "User" } th { "Agent" } th { "Certificate check" } th { "Stored" }
                @if admin { th { span.sr-only { "Actions" } } } } }
            tbody {
                @for c in &list {
                    tr {
                        td { (c.name) } td { (c.host) } td { (c.username) }
                        td { (c.agent.as_ref().map_or("—", |a| a.as_str())) }
                        td { @if c.insecure { span.badge.no { "none (insecure)" } } @else if c.ca_pem.is_some() { "own CA" } @else { "choice missing" } }
                        td { (time(Some(c.created_at))) }
                        @if admin { td {
                            form.inline method="post" action={ "/credentials/" (segment(c.name.as_str())) "/delete" } {
                                (view::csrf(&user))
                                button.danger type="submit" aria-label={ "Delete credential " (c.name) } { "Delete" }
                            }
                        } }
                    }
                }
            }
        } }
        @if list.is_empty() { p.muted { "No credential yet." } }
        @if user.role.may_administer() {
            section.card {
                h2 { "Add a vCenter credential" }
                form.stack method="post" action="/credentials" {
                    (view::csrf(&user))
                    label { "Name" input name="name" required maxlength="64"; }
                    label { "vCenter host" input name="host" required; }
                    label { "User name" input name="username" required autocomplete="off"; }
                    label { "Password" input name="password" type="password" required autocomplete="new-password"; }
                    label { "Agent that reaches this vCenter"
                        select name="agent" {
                            option value="" { "none" }
                            @for a in &agents { option value=(a.name) { (a.name) } }
                        }
                    }
                    label { "vCenter CA certificate (PEM)" small { "leave empty only with the box below" }
                        textarea name="ca_pem" {} }
                    label.check { input type="checkbox" name="insecure" value="on"; "Accept any certificate (insecure: test labs only)" }
                    button type="submit" { "Store credential" }
                }
            }
        }
    };
    Ok(view::page(&user, "Credentials", "/credentials", &content))
}

/// The credential form.
#[derive(Debug, Deserialize)]
pub(super) struct CredentialForm {
    name: String,
    host: String,
    username: String,
    password: String,
    #[serde(default)]
    agent: String,
    #[serde(default)]
    ca_pem: String,
    #[serde(default)]
    insecure: Option<String>,
}

/// `POST /credentials` (admin): stores a credential as `POST /api/v1/credentials`.
pub(super) async fn create_credential(
    State(s): State<ConsoleState>,
    user: SignedIn,
    f: Result<Form<CredentialForm>, FormRejection>,
) -> Page {
    user.require_admin("store credentials")?;
    let f = form(f)?;
    let mut body = json!({
        "name": f.name.trim(), "host": f.host.trim(), "username": f.username.trim(),
        "password": f.password,
    });
    if !f.ca_pem.trim().is_empty() {
        body["ca_pem"] = json!(f.ca_pem);
    } else {
        body["insecure"] = json!(f.insecure.is_some());
    }
    if !f.agent.trim().is_empty() {
        body["agent"] = json!(f.agent.trim());
    }
    let req: CredentialRequest = serde_json::from_value(body)
        .map_err(|e| PageError::bad_request(format!("The credential was not stored: {e}")))?;
    let credentials = Arc::clone(&s.api.credentials);
    let stored = blocking(move || credentials.put(&req)).await?;
    user.flash(&s, format!("Credential {} stored.", stored.name));
    Ok(Redirect::to("/credentials").into_response())
}

/// `GET /users` (admin): console users, new user, new password, delete.
pub(super) async fn users(State(s): State<ConsoleState>, user: SignedIn) -> Page {
    user.require_admin("manage users")?;
    let users = Arc::clone(&s.api.users);
    let list = blocking(move || users.list()).await?.users;
    let content = html! {
        div.scroll { table {
            thead { tr { th { "User" } th { "Role" } th { "Created" } th { "Password set" } th { "New password" } th { span.sr-only { "Delete" } } } }
            tbody {
                @for u in &list {
                    tr id={ "user-" (u.name) } {
                        td { (u.name) }
                        td { @if u.name == user.name { (u.role) } @else {
                            form.filters method="post" action={ "/users/" (segment(u.name.as_str())) "/role" } {
                                (view::csrf(&user))
                                select name="role" aria-label={ "Role of " (u.name) } {
                                    @for r in Role::ALL { option value=(r) selected[r == u.role] { (r) } }
                                }
                                button.secondary type="submit" { "Change" }
                            }
                        } }
                        td { (time(Some(u.created_at))) } td { (time(Some(u.password_changed_at))) }
                        td { form.filters method="post" action={ "/users/" (segment(u.name.as_str())) "/password" } {
                            (view::csrf(&user))
                            input name="password" type="password" required minlength="8" autocomplete="new-password" aria-label={ "New password for " (u.name) };
                            button.secondary type="submit" { "Set" }
                        } }
                        td { @if u.name != user.name {
                            form.inline method="post" action={ "/users/" (segment(u.name.as_str())) "/delete" } {
                                (view::csrf(&user))
                                button.danger type="submit" { "Delete" }
                            }
                        } }
                    }
                }
            }
        } }
        section.card {
            h2 { "Add a user" }
            form.filters method="post" action="/users" {
                (view::csrf(&user))
                label { "Name" input name="name" #user-name required maxlength="64"; }
                label { "Role" select name="role" #user-role {
                    @for r in Role::ALL { option value=(r) selected[r == Role::Viewer] { (r) } } } }
                label { "Password" small { "8 characters or more" }
                    input name="password" #user-password type="password" required minlength="8" autocomplete="new-password"; }
                button type="submit" #add-user { "Add user" }
            }
        }
    };
    Ok(view::page(&user, "Users", "/users", &content))
}

/// The new-user form.
#[derive(Debug, Deserialize)]
pub(super) struct UserForm {
    name: String,
    role: String,
    password: String,
}

/// `POST /users` (admin): creates a user as `POST /api/v1/users`.
pub(super) async fn create_user(
    State(s): State<ConsoleState>,
    user: SignedIn,
    f: Result<Form<UserForm>, FormRejection>,
) -> Page {
    user.require_admin("manage users")?;
    let f = form(f)?;
    let name: UserName = f
        .name
        .trim()
        .parse()
        .map_err(|e| PageError::bad_request(format!("User name: {e}")))?;
    let role: Role = f
        .role
        .parse()
        .map_err(|e| PageError::bad_request(format!("Role: {e}")))?;
    let req = CreateUserRequest::new(name, role, f.password)
        .map_err(|e| PageError::bad_request(e.to_string()))?;
    let users = Arc::clone(&s.api.users);
    let created = blocking(move || users.create(&req)).await?;
    user.flash(
        &s,
        format!("User {} ({}) added.", created.name, created.role),
    );
    Ok(Redirect::to("/users").into_response())
}

/// `POST /users/{name}/delete` (admin; not oneself).
pub(super) async fn delete_user(
    State(s): State<ConsoleState>,
    user: SignedIn,
    Path(name): Path<String>,
) -> Page {
    user.require_admin("manage users")?;
    let name: UserName = name
        .parse()
        .map_err(|e| PageError::bad_request(format!("User name: {e}")))?;
    if name == user.name {
        return Err(PageError::new(
            StatusCode::CONFLICT,
            "You cannot delete yourself while signed in; ask another admin.",
        ));
    }
    let users = Arc::clone(&s.api.users);
    let gone = blocking(move || users.delete(&name)).await?;
    user.flash(&s, format!("User {} deleted.", gone.name));
    Ok(Redirect::to("/users").into_response())
}

/// The role form.
#[derive(Debug, Deserialize)]
pub(super) struct RoleForm {
    role: String,
}

/// `POST /users/{name}/role` (admin; not oneself): changes a user's role; their sessions
/// keep going with it (every request reads the role anew).
pub(super) async fn set_role(
    State(s): State<ConsoleState>,
    user: SignedIn,
    Path(name): Path<String>,
    f: Result<Form<RoleForm>, FormRejection>,
) -> Page {
    user.require_admin("manage users")?;
    let name: UserName = name
        .parse()
        .map_err(|e| PageError::bad_request(format!("User name: {e}")))?;
    let role: Role = form(f)?
        .role
        .parse()
        .map_err(|e| PageError::bad_request(format!("Role: {e}")))?;
    if name == user.name {
        return Err(PageError::new(
            StatusCode::CONFLICT,
            "You cannot change your own role; ask another admin (so that an admin always remains).",
        ));
    }
    let users = Arc::clone(&s.api.users);
    let changed = blocking(move || users.set_role(&name, role)).await?;
    tracing::info!(by = %user.name, user = %changed.name, role = %changed.role, "console user's role changed from the console");
    user.flash(&s, format!("{} is now {}.", changed.name, changed.role));
    Ok(Redirect::to("/users").into_response())
}

/// `POST /credentials/{name}/delete` (admin): deletes a credential no policy or active job
/// uses.
pub(super) async fn delete_credential(
    State(s): State<ConsoleState>,
    user: SignedIn,
    Path(name): Path<String>,
) -> Page {
    user.require_admin("delete credentials")?;
    let name: sendense_types::CredentialName = name
        .parse()
        .map_err(|e| PageError::bad_request(format!("Credential name: {e}")))?;
    let credentials = Arc::clone(&s.api.credentials);
    let target = name.clone();
    blocking(move || credentials.delete(&target)).await?;
    tracing::info!(by = %user.name, credential = %name, "credential deleted from the console");
    user.flash(&s, format!("Credential {name} deleted."));
    Ok(Redirect::to("/credentials").into_response())
}

/// `POST /agents/{name}/delete` (admin): deletes an agent no active job or credential
/// names; its token stops working at once.
pub(super) async fn delete_agent(
    State(s): State<ConsoleState>,
    user: SignedIn,
    Path(name): Path<String>,
) -> Page {
    user.require_admin("delete agents")?;
    let name: sendense_types::AgentName = name
        .parse()
        .map_err(|e| PageError::bad_request(format!("Agent name: {e}")))?;
    let agents = Arc::clone(&s.api.agents);
    let gone = blocking(move || agents.delete(&name)).await?;
    tracing::info!(by = %user.name, agent = %gone.name, "agent deleted from the console");
    user.flash(
        &s,
        format!("Agent {} deleted: its token no longer works.", gone.name),
    );
    Ok(Redirect::to("/agents").into_response())
}

/// The new-password form.
#[derive(Debug, Deserialize)]
pub(super) struct PasswordForm {
    password: String,
}

/// `POST /users/{name}/password` (admin): as `PUT /api/v1/users/{name}/password`; the user's
/// sessions end.
pub(super) async fn set_password(
    State(s): State<ConsoleState>,
    user: SignedIn,
    Path(name): Path<String>,
    f: Result<Form<PasswordForm>, FormRejection>,
) -> Page {
    user.require_admin("manage users")?;
    let name: UserName = name
        .parse()
        .map_err(|e| PageError::bad_request(format!("User name: {e}")))?;
    let req = SetPasswordRequest::new(form(f)?.password)
        .map_err(|e| PageError::bad_request(e.to_string()))?;
    let users = Arc::clone(&s.api.users);
    let changed = blocking(move || users.set_password(&name, &req)).await?;
    user.flash(&s, format!("New password set for {}.", changed.name));
    Ok(Redirect::to("/users").into_response())
}

#[cfg(test)]
mod tests {
    use sendense_types::{AgentName, CredentialName};

    use super::*;

    fn form(fields: &str) -> PolicyForm {
        serde_urlencoded::from_str(&format!("schedule=daily&vms=web01&{fields}"))
            .expect("a policy form")
    }

    #[test]
    fn policy_form_with_an_agent_makes_an_agent_policy_whatever_the_credential_select_says() {
        let Ok(p) = form("credential=vc1&agent=kvm-host1").request("kvm") else {
            panic!("an agent policy was refused");
        };

        assert_eq!(
            (p.agent().map(AgentName::as_str), p.credential()),
            (Some("kvm-host1"), None)
        );
    }

    #[test]
    fn policy_form_without_an_agent_keeps_the_credential_and_with_neither_is_refused() {
        let Ok(p) = form("credential=vc1&agent=").request("nightly") else {
            panic!("a vCenter policy was refused");
        };

        assert_eq!(
            (p.credential().map(CredentialName::as_str), p.agent()),
            (Some("vc1"), None)
        );
        assert!(form("credential=&agent=").request("nightly").is_err());
    }
}
