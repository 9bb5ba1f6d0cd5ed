//! `sendense-hub ctl`: the operators' command line over the hub's REST API, so nobody needs
//! curl. Every command is one API call (or two, for `policy edit`), made with the API token;
//! `--json` prints the hub's JSON answer as it is, otherwise a short human-readable form.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};
use sendense_client::ClientError;
use sendense_client::hub::{HubClient, HubOptions, Method};
use serde_json::{Value, json};

pub mod target;

/// Where the hub is and how to reach it.
#[derive(Debug, Clone, Args)]
pub struct CtlArgs {
    /// The hub's REST API, `https://HOST:PORT`.
    #[arg(
        long,
        value_name = "URL",
        default_value = "https://127.0.0.1:8443",
        global = true
    )]
    pub hub: String,
    /// The hub's data folder on this machine: its `tls/ca-cert.pem` and `api.token` are used
    /// unless --ca or --token-file say otherwise.
    #[arg(long, value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// The hub's CA certificate (default: DATA/tls/ca-cert.pem).
    #[arg(long, value_name = "FILE", global = true)]
    pub ca: Option<PathBuf>,
    /// File holding the hub's API token (default: DATA/api.token).
    #[arg(long, value_name = "FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// Print the hub's JSON answer instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// `ctl` commands.
#[derive(Debug, Clone, Subcommand)]
pub enum CtlCommand {
    /// Appliance agents: create one (and its one-time enrollment token), list, show.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Jobs: list, show, cancel.
    #[command(subcommand)]
    Job(JobCommand),
    /// Back a VM up now: queue a backup job for the agent of its vCenter credential
    /// (`ctl backup VM`); or protect a restore point from prunes and deletion
    /// (`ctl backup protect ID`, `ctl backup unprotect ID`).
    #[command(
        args_conflicts_with_subcommands = true,
        subcommand_negates_reqs = true,
        subcommand_value_name = "protect|unprotect"
    )]
    Backup {
        /// Protect or unprotect a point instead of backing up.
        #[command(subcommand)]
        point: Option<PointCommand>,
        /// The VM's name (its name in vCenter).
        #[arg(required = true)]
        vm: Option<String>,
        /// Backup type.
        #[arg(long = "type", value_enum, default_value_t = BackupTypeArg::Auto)]
        backup_type: BackupTypeArg,
        /// The vCenter credential (and so the agent) to use; optional when the hub already
        /// knows the VM from an inventory or an earlier job.
        #[arg(long, value_name = "NAME")]
        credential: Option<String>,
        /// Instead of --credential: the agent whose own NBD sources (KVM guests) hold the VM.
        #[arg(long, value_name = "NAME", conflicts_with = "credential")]
        agent: Option<String>,
    },
    /// Backup policies: schedules, VMs, retention.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// vCenter credentials: store, list, inventory.
    #[command(subcommand)]
    Credential(CredentialCommand),
    /// VMs the hub knows.
    #[command(subcommand)]
    Vm(VmCommand),
    /// Web console users: add, list, set a password, delete.
    #[command(subcommand)]
    User(UserCommand),
    /// Prune a VM's restore points with Proxmox Backup Server's retention options.
    ///
    /// The options run in this order: --keep-last, --keep-hourly, --keep-daily, --keep-weekly
    /// (ISO weeks, Monday to Sunday), --keep-monthly, --keep-yearly, with periods in the hub's
    /// time zone. Each keeps the newest point of each of its N most recent periods that no
    /// earlier option covers already (--keep-last: the N newest points); every other point is
    /// removed. Protected points (`ctl backup protect ID`) are always kept and count for
    /// nothing; with no option above 0 nothing is removed. All chains of the VM count.
    ///
    /// Prints what is kept and removed, newest first; unless --dry-run, the hub queues a prune
    /// job that removes them, merging layers so that every remaining point restores exactly
    /// what it did (follow it with `ctl job show JOB`).
    Prune {
        /// The VM's name.
        vm: String,
        /// The retention to apply.
        #[command(flatten)]
        retention: RetentionArgs,
        /// Only show what would be kept and removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Verify a restore point: the hub reads it back through its chain and compares every
    /// 64 KiB block with the digests of the bytes its client read at the source.
    ///
    /// Queues a verify job (run inside the hub, at disk speed, beside backups). A failed point
    /// is marked with its bad ranges, so is every later point that reads them, the VM's next
    /// backup becomes a full and the webhook fires. With --wait, waits for the job and prints
    /// the point's verification; the exit status is then 0 when it is ok, 2 when not.
    Verify {
        /// The backup id of the point.
        id: String,
        /// Wait for the verify job to end and print the outcome.
        #[arg(long)]
        wait: bool,
    },
    /// Instant recovery: run a VM straight from a restore point through writable NBD exports
    /// over scratch overlays (the point never changes); list, start, discard.
    #[command(subcommand)]
    Instant(InstantCommand),
    /// The repository: capacity, used and free space, usage per VM, files the catalog does not
    /// know, and a warning when free space is low.
    Repository,
    /// The hub's metrics in Prometheus text format.
    Metrics,
    /// Object-store targets (off-site copies): add, list, copy a point, export or import
    /// the tier's key.
    #[command(subcommand)]
    Target(target::TargetCommand),
}

/// `ctl user ...`: the web console's users (`https://HOST:PORT/` of the hub's API).
#[derive(Debug, Clone, Subcommand)]
pub enum UserCommand {
    /// Add a console user. The password (8 characters or more) is read from the first line of
    /// --password-file, or of standard input when that is `-`; it never goes on the command
    /// line, and the hub keeps only its argon2id hash.
    Add {
        /// The user's name.
        name: String,
        /// admin (everything), operator (run jobs and restores) or viewer (read only).
        #[arg(long, value_parser = ["admin", "operator", "viewer"])]
        role: String,
        /// File holding the password (`-`: standard input).
        #[arg(long, value_name = "FILE")]
        password_file: PathBuf,
    },
    /// Every console user with their role.
    List,
    /// Set a user's password (their console sessions end).
    Passwd {
        /// The user's name.
        name: String,
        /// File holding the new password (`-`: standard input).
        #[arg(long, value_name = "FILE")]
        password_file: PathBuf,
    },
    /// Delete a console user (their console sessions end).
    Del {
        /// The user's name.
        name: String,
    },
}

/// `ctl instant ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum InstantCommand {
    /// Every instant recovery: id, point, state, when it started.
    List,
    /// Start an instant recovery of a completed restore point: prints one writable `nbds://`
    /// URI per disk (a guest boots from it; it survives a hub restart).
    Start {
        /// The backup id of the point.
        backup_id: String,
    },
    /// Discard an instant recovery: close its exports and remove its scratch overlays, with
    /// everything its guest wrote (copy it out first with `sendense-client restore
    /// --from-instant ID` to keep it).
    Discard {
        /// The instant recovery's id.
        id: String,
    },
}

/// What `ctl` prints, and whether the command's outcome was a failure (a verification that
/// failed) although every call succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtlOutput {
    /// The text (or JSON) to print.
    pub text: String,
    /// Exit non-zero.
    pub failed: bool,
}

/// How often `ctl verify --wait` looks at its job.
const VERIFY_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// `ctl agent ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum AgentCommand {
    /// Create an agent: prints its one-time enrollment token (valid 24 h) and the command to
    /// run on the appliance.
    Add {
        /// The agent's name.
        name: String,
    },
    /// Every agent with its state (online when seen within 60 s).
    List,
    /// One agent.
    Show {
        /// The agent's name.
        name: String,
    },
}

/// `ctl backup protect|unprotect ID`.
#[derive(Debug, Clone, Subcommand)]
pub enum PointCommand {
    /// Protect a completed restore point: no prune removes it and it cannot be deleted.
    Protect {
        /// The backup id.
        id: String,
    },
    /// Lift a point's protection.
    Unprotect {
        /// The backup id.
        id: String,
    },
}

/// The retention options of `ctl prune` (Proxmox Backup Server's names).
#[derive(Debug, Clone, Default, Args)]
pub struct RetentionArgs {
    /// Keep the newest N points.
    #[arg(long, value_name = "N")]
    pub keep_last: Option<u32>,
    /// Keep the newest point of each of the last N hours.
    #[arg(long, value_name = "N")]
    pub keep_hourly: Option<u32>,
    /// Keep the newest point of each of the last N days.
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<u32>,
    /// Keep the newest point of each of the last N ISO weeks.
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<u32>,
    /// Keep the newest point of each of the last N months.
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<u32>,
    /// Keep the newest point of each of the last N years.
    #[arg(long, value_name = "N")]
    pub keep_yearly: Option<u32>,
}

impl RetentionArgs {
    /// The API's `retention` object: the options given.
    fn body(&self) -> Value {
        let mut body = json!({});
        for (key, value) in [
            ("keep_last", self.keep_last),
            ("keep_hourly", self.keep_hourly),
            ("keep_daily", self.keep_daily),
            ("keep_weekly", self.keep_weekly),
            ("keep_monthly", self.keep_monthly),
            ("keep_yearly", self.keep_yearly),
        ] {
            if let Some(n) = value {
                body[key] = json!(n);
            }
        }
        body
    }
}

/// `ctl job ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum JobCommand {
    /// Jobs, newest first.
    List {
        /// Only this VM's jobs.
        #[arg(long, value_name = "NAME")]
        vm: Option<String>,
        /// Only jobs in this state (queued, running, completed, failed, cancelled).
        #[arg(long, value_name = "STATUS")]
        status: Option<String>,
        /// Only jobs of this kind (backup, restore, prune, verify, copy, inventory).
        #[arg(long, value_name = "KIND")]
        kind: Option<String>,
    },
    /// One job with its progress.
    Show {
        /// The job id.
        id: String,
    },
    /// Cancel a job: a queued one at once, a running one at its agent's next heartbeat (its
    /// backup fails cleanly and its snapshot is removed).
    Cancel {
        /// The job id.
        id: String,
    },
}

/// `ctl policy ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum PolicyCommand {
    /// Create a policy.
    Add(PolicySpec),
    /// Change some fields of a policy (the others stay).
    Edit(PolicyEdit),
    /// Every policy with its next and last run.
    List,
    /// One policy.
    Show {
        /// The policy's name.
        name: String,
    },
    /// Delete a policy (its backups stay).
    Del {
        /// The policy's name.
        name: String,
    },
    /// Run a policy now, whatever its schedule says.
    Run {
        /// The policy's name.
        name: String,
    },
}

/// A whole policy, as flags.
#[derive(Debug, Clone, Args)]
pub struct PolicySpec {
    /// The policy's name.
    pub name: String,
    /// When to run, in Proxmox Backup Server's calendar-event grammar, in the hub's local
    /// time, e.g. "mon..fri 22:00", "daily", "*:0/30".
    #[arg(long, value_name = "EVENT")]
    pub schedule: String,
    /// The vCenter credential (and so the agent) its jobs use.
    #[arg(long, value_name = "NAME", required_unless_present = "agent")]
    pub credential: Option<String>,
    /// Instead of --credential: the agent whose own NBD sources (KVM guests) the VMs are.
    #[arg(long, value_name = "NAME", conflicts_with = "credential")]
    pub agent: Option<String>,
    /// An inventory path (dc1/vm/web01) or a name glob (db*); repeat for more. Resolved at
    /// each run.
    #[arg(long = "vm", value_name = "PATTERN", required = true)]
    pub vms: Vec<String>,
    /// Common options.
    #[command(flatten)]
    pub options: PolicyOptions,
}

/// `ctl policy edit NAME [fields]`.
#[derive(Debug, Clone, Args)]
pub struct PolicyEdit {
    /// The policy's name.
    pub name: String,
    /// New schedule.
    #[arg(long, value_name = "EVENT")]
    pub schedule: Option<String>,
    /// New credential (the policy then names no agent).
    #[arg(long, value_name = "NAME")]
    pub credential: Option<String>,
    /// New agent of NBD sources (the policy then names no credential).
    #[arg(long, value_name = "NAME", conflicts_with = "credential")]
    pub agent: Option<String>,
    /// New VM patterns (replace the old list; repeat for more).
    #[arg(long = "vm", value_name = "PATTERN")]
    pub vms: Vec<String>,
    /// Common options.
    #[command(flatten)]
    pub options: PolicyOptions,
}

/// Policy options shared by `add` and `edit` (for `edit`, only those given change).
#[derive(Debug, Clone, Default, Args)]
pub struct PolicyOptions {
    /// Most of its jobs running at once (default 1).
    #[arg(long, value_name = "N")]
    pub max_parallel: Option<u32>,
    /// Times a failed job is retried (default 0).
    #[arg(long, value_name = "N")]
    pub retry_count: Option<u32>,
    /// Seconds between a failure and its retry (default 600).
    #[arg(long, value_name = "SECONDS")]
    pub retry_delay: Option<u64>,
    /// Keep the newest N points.
    #[arg(long, value_name = "N")]
    pub keep_last: Option<u32>,
    /// Keep the newest point of each of the last N hours.
    #[arg(long, value_name = "N")]
    pub keep_hourly: Option<u32>,
    /// Keep the newest point of each of the last N days.
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<u32>,
    /// Keep the newest point of each of the last N ISO weeks.
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<u32>,
    /// Keep the newest point of each of the last N months.
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<u32>,
    /// Keep the newest point of each of the last N years.
    #[arg(long, value_name = "N")]
    pub keep_yearly: Option<u32>,
    /// Start a new full once a chain holds this many points.
    #[arg(long, value_name = "N")]
    pub max_chain_length: Option<u32>,
    /// Verify each backup after it completes (true or false).
    #[arg(long, value_name = "BOOL")]
    pub verify_after_backup: Option<bool>,
    /// Whether the scheduler runs it (true or false; default true).
    #[arg(long, value_name = "BOOL")]
    pub enabled: Option<bool>,
}

/// `ctl credential ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum CredentialCommand {
    /// Store (or replace) a vCenter credential; the password is sealed by the hub and handed
    /// only to the agent named here.
    Add {
        /// The credential's name.
        name: String,
        /// The vCenter, HOST or HOST:PORT.
        #[arg(long, value_name = "HOST")]
        host: String,
        /// The vCenter user, e.g. backup@vsphere.local.
        #[arg(long, value_name = "USER")]
        username: String,
        /// File whose first line is the password (keep it 0600).
        #[arg(long, value_name = "FILE")]
        password_file: PathBuf,
        /// PEM file of the CA(s) that signed vCenter's certificate.
        #[arg(
            long,
            value_name = "FILE",
            conflicts_with = "insecure",
            required_unless_present = "insecure"
        )]
        ca_file: Option<PathBuf>,
        /// Accept any vCenter certificate (only on a trusted network).
        #[arg(long)]
        insecure: bool,
        /// The agent that reaches this vCenter.
        #[arg(long, value_name = "NAME")]
        agent: Option<String>,
    },
    /// Stored credentials (never their passwords).
    List,
    /// The VMs the credential's agent last saw; with --refresh, queue an inventory job first.
    Inventory {
        /// The credential's name.
        name: String,
        /// Queue an inventory job (the answer shows the previous inventory).
        #[arg(long)]
        refresh: bool,
    },
}

/// `ctl vm ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum VmCommand {
    /// VMs and their disks.
    List,
    /// One VM's chain of restore points.
    Chain {
        /// The VM's name.
        name: String,
    },
}

/// `--type` of `ctl backup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackupTypeArg {
    /// Every allocated extent, into a new chain.
    Full,
    /// Only the changes since the last backup.
    Incremental,
    /// Incremental when possible, else full.
    Auto,
}

impl BackupTypeArg {
    fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Incremental => "incremental",
            Self::Auto => "auto",
        }
    }
}

/// Runs one `ctl` command; answers what to print on stdout.
///
/// # Errors
/// The hub refused or could not be reached (the error says which and why), or a local file
/// (CA, token, password, CA for a credential) could not be read.
pub async fn run(args: CtlArgs) -> Result<CtlOutput, ClientError> {
    if let CtlCommand::Target(command) = &args.command
        && let Some(done) = target::local(command, args.data_dir.as_deref())
    {
        return done.map(|text| CtlOutput {
            text,
            failed: false,
        });
    }
    let hub = HubClient::new(&hub_options(&args))?;
    let call = plan(&args.command)?;
    let mut answer = Value::Null;
    for step in call.steps(&hub).await? {
        answer = hub
            .request(step.method, &step.path, step.body.as_ref())
            .await?;
    }
    let mut failed = false;
    if let CtlCommand::Verify { id, wait: true } = &args.command {
        answer = wait_for_verification(&hub, id, &answer).await?;
        failed = answer["verification"]["state"] != "ok";
    }
    let text = if args.json {
        format!(
            "{}\n",
            serde_json::to_string_pretty(&answer).unwrap_or_default()
        )
    } else {
        render(&args.command, &answer, &args)
    };
    Ok(CtlOutput { text, failed })
}

/// Polls the verify job `queued` names until it ends; answers `{job, verification}`.
async fn wait_for_verification(
    hub: &HubClient,
    id: &str,
    queued: &Value,
) -> Result<Value, ClientError> {
    let job_path = format!("/api/v1/jobs/{}", segment(&text(&queued["job_id"])));
    let job = loop {
        let job = hub.request(Method::GET, &job_path, None).await?;
        if !matches!(job["status"].as_str(), Some("queued" | "running")) {
            break job;
        }
        tokio::time::sleep(VERIFY_POLL).await;
    };
    let backup = hub
        .request(
            Method::GET,
            &format!("/api/v1/backups/{}", segment(id)),
            None,
        )
        .await?;
    Ok(json!({ "job": job, "verification": backup["verification"] }))
}

/// The hub options `args` describe.
fn hub_options(args: &CtlArgs) -> HubOptions {
    let data = args.data_dir.clone().unwrap_or_else(|| PathBuf::from("."));
    HubOptions {
        url: args.hub.clone(),
        ca_file: args
            .ca
            .clone()
            .unwrap_or_else(|| data.join("tls").join("ca-cert.pem")),
        token_file: args
            .token_file
            .clone()
            .unwrap_or_else(|| data.join("api.token")),
        tls_dir: None,
    }
}

/// One API request.
#[derive(Debug, Clone, PartialEq)]
struct Step {
    method: Method,
    path: String,
    body: Option<Value>,
}

impl Step {
    fn get(path: String) -> Self {
        Self {
            method: Method::GET,
            path,
            body: None,
        }
    }

    fn post(path: String, body: Value) -> Self {
        Self {
            method: Method::POST,
            path,
            body: Some(body),
        }
    }
}

/// What a command sends: fixed requests, or (`policy edit`) a read, a merge and a write.
#[derive(Debug, Clone, PartialEq)]
enum Plan {
    Fixed(Vec<Step>),
    EditPolicy { name: String, changes: Value },
}

impl Plan {
    async fn steps(self, hub: &HubClient) -> Result<Vec<Step>, ClientError> {
        match self {
            Self::Fixed(steps) => Ok(steps),
            Self::EditPolicy { name, changes } => {
                let path = format!("/api/v1/policies/{}", segment(&name));
                let current = hub.request(Method::GET, &path, None).await?;
                let body = merge_policy(current, &changes);
                Ok(vec![Step {
                    method: Method::PUT,
                    path,
                    body: Some(body),
                }])
            }
        }
    }
}

/// The requests of `command`.
fn plan(command: &CtlCommand) -> Result<Plan, ClientError> {
    let one = |step| Ok(Plan::Fixed(vec![step]));
    match command {
        CtlCommand::Agent(AgentCommand::Add { name }) => {
            one(Step::post("/api/v1/agents".into(), json!({ "name": name })))
        }
        CtlCommand::Agent(AgentCommand::List) => one(Step::get("/api/v1/agents".into())),
        CtlCommand::Agent(AgentCommand::Show { name }) => {
            one(Step::get(format!("/api/v1/agents/{}", segment(name))))
        }
        CtlCommand::Job(JobCommand::List { vm, status, kind }) => {
            let mut query = Vec::new();
            for (key, value) in [("vm_name", vm), ("status", status), ("kind", kind)] {
                if let Some(value) = value {
                    query.push(format!("{key}={}", segment(value)));
                }
            }
            let path = if query.is_empty() {
                "/api/v1/jobs".to_owned()
            } else {
                format!("/api/v1/jobs?{}", query.join("&"))
            };
            one(Step::get(path))
        }
        CtlCommand::Job(JobCommand::Show { id }) => {
            one(Step::get(format!("/api/v1/jobs/{}", segment(id))))
        }
        CtlCommand::Job(JobCommand::Cancel { id }) => one(Step::post(
            format!("/api/v1/jobs/{}/cancel", segment(id)),
            json!({}),
        )),
        CtlCommand::Backup {
            point: Some(point), ..
        } => {
            let (id, protected) = match point {
                PointCommand::Protect { id } => (id, true),
                PointCommand::Unprotect { id } => (id, false),
            };
            one(Step {
                method: Method::PUT,
                path: format!("/api/v1/backups/{}", segment(id)),
                body: Some(json!({ "protected": protected })),
            })
        }
        CtlCommand::Prune {
            vm,
            retention,
            dry_run,
        } => one(Step::post(
            format!("/api/v1/vms/{}/prune", segment(vm)),
            json!({ "retention": retention.body(), "dry_run": dry_run }),
        )),
        CtlCommand::Backup {
            point: None,
            vm,
            backup_type,
            credential,
            agent,
        } => {
            let vm = vm.as_deref().unwrap_or_default();
            let mut body = json!({ "backup_type": backup_type.as_str() });
            if let Some(credential) = credential {
                body["credential"] = json!(credential);
            }
            if let Some(agent) = agent {
                body["agent"] = json!(agent);
            }
            one(Step::post(
                format!("/api/v1/vms/{}/backup", segment(vm)),
                body,
            ))
        }
        CtlCommand::Policy(command) => plan_policy(command),
        CtlCommand::Credential(command) => plan_credential(command),
        CtlCommand::User(command) => plan_user(command),
        CtlCommand::Vm(VmCommand::List) => one(Step::get("/api/v1/vms".into())),
        CtlCommand::Vm(VmCommand::Chain { name }) => one(Step::get(format!(
            "/api/v1/backups/chain/{}",
            segment(name)
        ))),
        CtlCommand::Verify { id, .. } => one(Step::post(
            format!("/api/v1/backups/{}/verify", segment(id)),
            json!({}),
        )),
        CtlCommand::Instant(InstantCommand::List) => one(Step::get("/api/v1/instant".into())),
        CtlCommand::Instant(InstantCommand::Start { backup_id }) => one(Step::post(
            format!("/api/v1/backups/{}/instant", segment(backup_id)),
            json!({}),
        )),
        CtlCommand::Instant(InstantCommand::Discard { id }) => one(Step {
            method: Method::DELETE,
            path: format!("/api/v1/instant/{}", segment(id)),
            body: None,
        }),
        CtlCommand::Repository => one(Step::get("/api/v1/repository".into())),
        CtlCommand::Metrics => one(Step::get("/api/v1/metrics".into())),
        CtlCommand::Target(command) => target::plan(command),
    }
}

fn plan_policy(command: &PolicyCommand) -> Result<Plan, ClientError> {
    let path = |name: &str| format!("/api/v1/policies/{}", segment(name));
    let step = match command {
        PolicyCommand::Add(spec) => {
            let mut body = json!({
                "name": spec.name,
                "schedule": spec.schedule,
                "vms": spec.vms,
            });
            if let Some(credential) = &spec.credential {
                body["credential"] = json!(credential);
            }
            if let Some(agent) = &spec.agent {
                body["agent"] = json!(agent);
            }
            apply_options(&mut body, &spec.options);
            Step::post("/api/v1/policies".into(), body)
        }
        PolicyCommand::Edit(edit) => {
            let mut changes = json!({});
            if let Some(schedule) = &edit.schedule {
                changes["schedule"] = json!(schedule);
            }
            if let Some(credential) = &edit.credential {
                changes["credential"] = json!(credential);
                changes["agent"] = Value::Null;
            }
            if let Some(agent) = &edit.agent {
                changes["agent"] = json!(agent);
                changes["credential"] = Value::Null;
            }
            if !edit.vms.is_empty() {
                changes["vms"] = json!(edit.vms);
            }
            apply_options(&mut changes, &edit.options);
            return Ok(Plan::EditPolicy {
                name: edit.name.clone(),
                changes,
            });
        }
        PolicyCommand::List => Step::get("/api/v1/policies".into()),
        PolicyCommand::Show { name } => Step::get(path(name)),
        PolicyCommand::Del { name } => Step {
            method: Method::DELETE,
            path: path(name),
            body: None,
        },
        PolicyCommand::Run { name } => Step::post(format!("{}/run", path(name)), json!({})),
    };
    Ok(Plan::Fixed(vec![step]))
}

fn plan_user(command: &UserCommand) -> Result<Plan, ClientError> {
    let path = |name: &str| format!("/api/v1/users/{}", segment(name));
    let step = match command {
        UserCommand::Add {
            name,
            role,
            password_file,
        } => Step::post(
            "/api/v1/users".into(),
            json!({ "name": name, "role": role, "password": password(password_file)? }),
        ),
        UserCommand::List => Step::get("/api/v1/users".into()),
        UserCommand::Passwd {
            name,
            password_file,
        } => Step {
            method: Method::PUT,
            path: format!("{}/password", path(name)),
            body: Some(json!({ "password": password(password_file)? })),
        },
        UserCommand::Del { name } => Step {
            method: Method::DELETE,
            path: path(name),
            body: None,
        },
    };
    Ok(Plan::Fixed(vec![step]))
}

/// A password: the first line of `path`, or of standard input for `-`.
fn password(path: &Path) -> Result<String, ClientError> {
    if path.as_os_str() == "-" {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|source| ClientError::File {
                what: "password (standard input)",
                path: path.to_owned(),
                source,
            })?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_owned());
    }
    first_line(path)
}

fn plan_credential(command: &CredentialCommand) -> Result<Plan, ClientError> {
    let step = match command {
        CredentialCommand::Add {
            name,
            host,
            username,
            password_file,
            ca_file,
            insecure,
            agent,
        } => {
            let password = first_line(password_file)?;
            let mut body = json!({
                "name": name,
                "host": host,
                "username": username,
                "password": password,
            });
            match ca_file {
                Some(file) => body["ca_pem"] = json!(read_text("vCenter CA file", file)?),
                None => body["insecure"] = json!(*insecure),
            }
            if let Some(agent) = agent {
                body["agent"] = json!(agent);
            }
            Step::post("/api/v1/credentials".into(), body)
        }
        CredentialCommand::List => Step::get("/api/v1/credentials".into()),
        CredentialCommand::Inventory { name, refresh } => {
            let path = format!("/api/v1/credentials/{}/inventory", segment(name));
            if *refresh {
                return Ok(Plan::Fixed(vec![
                    Step::post(format!("{path}/refresh"), json!({})),
                    Step::get(path),
                ]));
            }
            Step::get(path)
        }
    };
    Ok(Plan::Fixed(vec![step]))
}

/// Sets the options given in `options` on a policy body.
fn apply_options(body: &mut Value, options: &PolicyOptions) {
    if let Some(n) = options.max_parallel {
        body["max_parallel"] = json!(n);
    }
    if options.retry_count.is_some() || options.retry_delay.is_some() {
        let retry = &mut body["retry"];
        if !retry.is_object() {
            *retry = json!({});
        }
        if let Some(count) = options.retry_count {
            retry["count"] = json!(count);
        }
        if let Some(delay) = options.retry_delay {
            retry["delay_seconds"] = json!(delay);
        }
    }
    let keeps = [
        ("keep_last", options.keep_last),
        ("keep_hourly", options.keep_hourly),
        ("keep_daily", options.keep_daily),
        ("keep_weekly", options.keep_weekly),
        ("keep_monthly", options.keep_monthly),
        ("keep_yearly", options.keep_yearly),
    ];
    for (key, value) in keeps {
        if let Some(value) = value {
            let retention = &mut body["retention"];
            if !retention.is_object() {
                *retention = json!({});
            }
            retention[key] = json!(value);
        }
    }
    if let Some(n) = options.max_chain_length {
        body["max_chain_length"] = json!(n);
    }
    if let Some(verify) = options.verify_after_backup {
        body["verify_after_backup"] = json!(verify);
    }
    if let Some(enabled) = options.enabled {
        body["enabled"] = json!(enabled);
    }
}

/// The hub's policy answer with `changes` applied, as a `PUT` body: the answer-only fields
/// (`next_run`, `last_run`, `created_at`) dropped, objects (`retry`, `retention`) merged key by
/// key.
fn merge_policy(current: Value, changes: &Value) -> Value {
    let mut body = current;
    if let Some(map) = body.as_object_mut() {
        for key in ["next_run", "last_run", "created_at"] {
            map.remove(key);
        }
        if let Some(changes) = changes.as_object() {
            for (key, value) in changes {
                match (map.get_mut(key), value) {
                    (Some(Value::Object(old)), Value::Object(new)) => {
                        for (k, v) in new {
                            old.insert(k.clone(), v.clone());
                        }
                    }
                    _ => {
                        map.insert(key.clone(), value.clone());
                    }
                }
            }
        }
    }
    body
}

/// A path segment with everything but unreserved characters percent-encoded.
fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn read_text(what: &'static str, path: &Path) -> Result<String, ClientError> {
    std::fs::read_to_string(path).map_err(|source| ClientError::File {
        what,
        path: path.to_owned(),
        source,
    })
}

fn first_line(path: &Path) -> Result<String, ClientError> {
    let text = read_text("password file", path)?;
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

/// The human-readable form of an answer.
fn render(command: &CtlCommand, answer: &Value, args: &CtlArgs) -> String {
    let mut out = String::new();
    match command {
        CtlCommand::Agent(AgentCommand::Add { name }) => {
            let token = text(&answer["enrollment_token"]);
            let _ = writeln!(
                out,
                "Agent {name} created. Its one-time enrollment token (valid until {}):\n\n  {token}\n\n\
                 On the appliance, put the token in a file (0600) and run:\n\n  \
                 sendense-client agent enroll --hub {} --ca ca-cert.pem --name {name} \\\n    \
                 --enrollment-token-file TOKEN_FILE --state-dir /var/lib/sendense-agent\n\n\
                 (ca-cert.pem is this hub's DATA/tls/ca-cert.pem.)",
                text(&answer["expires_at"]),
                args.hub,
            );
        }
        CtlCommand::Agent(AgentCommand::List) => table(
            &mut out,
            &answer["agents"],
            &["name", "state", "version", "slots", "last_seen"],
        ),
        CtlCommand::Job(JobCommand::List { .. }) => table(
            &mut out,
            &answer["jobs"],
            &[
                "job_id",
                "kind",
                "vm_name",
                "status",
                "agent",
                "queued_at",
                "error",
            ],
        ),
        CtlCommand::Job(JobCommand::Show { .. }) => {
            fields(&mut out, answer);
            let p = &answer["progress"];
            let _ = writeln!(
                out,
                "progress: {} / {} bytes, {} MB/s, ETA {} s",
                text(&p["bytes_done"]),
                text(&p["bytes_total"]),
                text(&p["mb_per_s"]),
                text(&p["eta_seconds"]),
            );
        }
        CtlCommand::Backup { point: Some(_), .. } => {
            let state = if answer["protected"] == json!(true) {
                "protected"
            } else {
                "not protected"
            };
            let _ = writeln!(out, "Backup {} is {state}", text(&answer["backup_id"]));
        }
        CtlCommand::Backup { vm, .. } => {
            let _ = writeln!(
                out,
                "Backup of {} queued as {}",
                vm.as_deref().unwrap_or_default(),
                text(&answer["job_id"])
            );
        }
        CtlCommand::Prune { vm, dry_run, .. } => {
            let ids = |key: &str| -> Vec<String> {
                answer[key]
                    .as_array()
                    .map(|a| a.iter().map(text).collect())
                    .unwrap_or_default()
            };
            for (title, list) in [("keep", ids("keep")), ("remove", ids("remove"))] {
                let _ = writeln!(out, "{title} ({}):", list.len());
                for id in &list {
                    let _ = writeln!(out, "  {id}");
                }
            }
            let _ = match (&answer["job_id"], dry_run) {
                (Value::String(job), _) => writeln!(
                    out,
                    "Prune of {vm} queued as job {job} (ctl job show {job})"
                ),
                (_, true) => writeln!(out, "Dry run: nothing removed"),
                _ => writeln!(out, "Nothing to remove"),
            };
        }
        CtlCommand::Policy(PolicyCommand::List) => table(
            &mut out,
            &answer["policies"],
            &[
                "name",
                "schedule",
                "credential",
                "enabled",
                "next_run",
                "last_run",
            ],
        ),
        CtlCommand::Policy(PolicyCommand::Run { name }) => {
            let _ = writeln!(out, "Policy {name} queued: {}", text(&answer["job_ids"]));
            if answer["unmatched"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
            {
                let _ = writeln!(out, "warning: no VM matched {}", text(&answer["unmatched"]));
            }
        }
        CtlCommand::Credential(CredentialCommand::List) => table(
            &mut out,
            answer,
            &["name", "host", "username", "agent", "insecure"],
        ),
        CtlCommand::Credential(CredentialCommand::Inventory { .. }) => {
            table(&mut out, &answer["vms"], &["name", "path"]);
        }
        CtlCommand::User(UserCommand::Add { .. }) => {
            let _ = writeln!(
                out,
                "User {} ({}) added: sign in at {}/",
                text(&answer["name"]),
                text(&answer["role"]),
                args.hub.trim_end_matches('/')
            );
        }
        CtlCommand::User(UserCommand::List) => table(
            &mut out,
            &answer["users"],
            &["name", "role", "created_at", "password_changed_at"],
        ),
        CtlCommand::User(UserCommand::Passwd { name, .. }) => {
            let _ = writeln!(
                out,
                "New password set for {name}; their console sessions ended."
            );
        }
        CtlCommand::User(UserCommand::Del { name }) => {
            let _ = writeln!(out, "User {name} deleted.");
        }
        CtlCommand::Vm(VmCommand::List) => table(&mut out, answer, &["name", "updated_at"]),
        CtlCommand::Vm(VmCommand::Chain { .. }) => table(
            &mut out,
            &answer["backups"],
            &["backup_id", "backup_type", "status", "created_at"],
        ),
        CtlCommand::Verify { id, wait: false } => {
            let job = text(&answer["job_id"]);
            let _ = writeln!(
                out,
                "Verification of {id} queued as job {job} (ctl job show {job}; ctl verify {id} --wait waits for it)"
            );
        }
        CtlCommand::Verify { id, wait: true } => render_verification(&mut out, id, answer),
        CtlCommand::Instant(InstantCommand::List) => table(
            &mut out,
            &answer["instants"],
            &["instant_id", "backup_id", "state", "created_at"],
        ),
        CtlCommand::Instant(InstantCommand::Start { .. }) => {
            let _ = writeln!(
                out,
                "Instant recovery {} of {} started:",
                text(&answer["instant_id"]),
                text(&answer["backup_id"])
            );
            for disk in answer["disks"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    out,
                    "  disk {}: {}",
                    text(&disk["disk_key"]),
                    text(&disk["nbd_uri"])
                );
            }
        }
        CtlCommand::Instant(InstantCommand::Discard { id }) => {
            let _ = writeln!(out, "Instant recovery {id} discarded");
        }
        CtlCommand::Repository => render_repository(&mut out, answer),
        CtlCommand::Metrics => out.push_str(answer.as_str().unwrap_or_default()),
        CtlCommand::Target(command) => target::render(&mut out, command, answer),
        _ => fields(&mut out, answer),
    }
    out
}

/// `ctl verify --wait`: the point's verification, or why the job could not verify it.
fn render_verification(out: &mut String, id: &str, answer: &Value) {
    let v = &answer["verification"];
    match v["state"].as_str() {
        Some("ok") => {
            let _ = writeln!(out, "{id}: ok (verified at {})", text(&v["at"]));
        }
        Some("failed") => {
            let _ = writeln!(
                out,
                "{id}: FAILED at {}: {}",
                text(&v["at"]),
                text(&v["message"])
            );
            if v["failed_through"].is_string() {
                let _ = writeln!(
                    out,
                    "  the bad bytes belong to {}, which this point reads through",
                    text(&v["failed_through"])
                );
            }
            for r in v["bad_ranges"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    out,
                    "  disk {} offset {} length {}",
                    text(&r["disk_key"]),
                    text(&r["offset"]),
                    text(&r["length"])
                );
            }
            let _ = writeln!(
                out,
                "The VM's next backup will be a full; restore from a point that verifies."
            );
        }
        _ => {
            let _ = writeln!(
                out,
                "{id}: not verified: job {} {}: {}",
                text(&answer["job"]["job_id"]),
                text(&answer["job"]["status"]),
                text(&answer["job"]["error"])
            );
        }
    }
}

/// `ctl repository`: space, then usage per VM and unknown files.
fn render_repository(out: &mut String, answer: &Value) {
    let gib = |v: &Value| {
        v.as_u64().map_or_else(
            || "-".to_owned(),
            |b| format!("{:.1} GiB", b as f64 / f64::from(1u32 << 30)),
        )
    };
    let _ = writeln!(
        out,
        "capacity {}, used by the repository {}, free {}",
        gib(&answer["capacity_bytes"]),
        gib(&answer["used_bytes"]),
        gib(&answer["free_bytes"])
    );
    if answer["low_space_warning"].is_string() {
        let _ = writeln!(out, "WARNING: {}", text(&answer["low_space_warning"]));
    }
    table(out, &answer["vms"], &["vm_name", "used_bytes", "backups"]);
    if let Some(unknown) = answer["unknown_files"].as_array().filter(|a| !a.is_empty()) {
        let _ = writeln!(out, "files the catalog does not know ({}):", unknown.len());
        for f in unknown {
            let _ = writeln!(out, "  {}", text(f));
        }
    }
}

/// A JSON value as one line of text (`-` for null).
fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// An object's scalar fields, one `key: value` line each.
fn fields(out: &mut String, answer: &Value) {
    match answer.as_object() {
        Some(map) => {
            for (key, value) in map {
                if !value.is_object() {
                    let _ = writeln!(out, "{key}: {}", text(value));
                }
            }
        }
        None if answer.is_null() => out.push_str("done\n"),
        None => {
            let _ = writeln!(out, "{}", text(answer));
        }
    }
}

/// Rows of `rows` (a JSON array of objects) as an aligned table of `columns`.
fn table(out: &mut String, rows: &Value, columns: &[&str]) {
    let rows = rows.as_array().map(Vec::as_slice).unwrap_or_default();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| columns.iter().map(|c| text(&row[*c])).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |out: &mut String, values: Vec<&str>| {
        let parts: Vec<String> = values
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", parts.join("  ").trim_end());
    };
    line(out, columns.to_vec());
    for row in &cells {
        line(out, row.iter().map(String::as_str).collect());
    }
    if cells.is_empty() {
        out.push_str("(none)\n");
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Probe {
        #[command(flatten)]
        args: CtlArgs,
    }

    fn parse(line: &[&str]) -> CtlArgs {
        let mut argv = vec!["ctl"];
        argv.extend_from_slice(line);
        Probe::try_parse_from(argv).expect("parses").args
    }

    fn steps(line: &[&str]) -> Vec<Step> {
        match plan(&parse(line).command).expect("plans") {
            Plan::Fixed(steps) => steps,
            Plan::EditPolicy { .. } => panic!("expected fixed steps"),
        }
    }

    #[test]
    fn user_commands_call_the_user_routes_with_the_password_from_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret pass\nignored\n").unwrap();
        let file = file.to_str().unwrap();

        let add = steps(&[
            "user",
            "add",
            "ann",
            "--role",
            "viewer",
            "--password-file",
            file,
        ]);
        let passwd = steps(&["user", "passwd", "ann", "--password-file", file]);
        let del = steps(&["user", "del", "ann"]);

        assert_eq!(
            add,
            [Step::post(
                "/api/v1/users".into(),
                json!({"name": "ann", "role": "viewer", "password": "s3cret pass"})
            )]
        );
        assert_eq!(passwd[0].method, Method::PUT);
        assert_eq!(passwd[0].path, "/api/v1/users/ann/password");
        assert_eq!(passwd[0].body, Some(json!({"password": "s3cret pass"})));
        assert_eq!(
            (del[0].method.clone(), del[0].path.as_str()),
            (Method::DELETE, "/api/v1/users/ann")
        );
    }

    #[test]
    fn backup_now_posts_type_and_credential() {
        let s = steps(&["backup", "web 01", "--type", "full", "--credential", "vc1"]);

        assert_eq!(
            s,
            vec![Step::post(
                "/api/v1/vms/web%2001/backup".into(),
                json!({"backup_type": "full", "credential": "vc1"})
            )]
        );
    }

    #[test]
    fn prune_posts_the_options_given_and_dry_run() {
        let s = steps(&[
            "prune",
            "web01",
            "--keep-last",
            "3",
            "--keep-weekly",
            "4",
            "--dry-run",
        ]);

        assert_eq!(
            s,
            vec![Step::post(
                "/api/v1/vms/web01/prune".into(),
                json!({"retention": {"keep_last": 3, "keep_weekly": 4}, "dry_run": true})
            )]
        );
    }

    #[test]
    fn backup_protect_and_unprotect_put_the_flag_and_backup_vm_still_queues() {
        let protect = steps(&["backup", "protect", "backup-web01-20240101T000000-abcdef"]);
        let unprotect = steps(&["backup", "unprotect", "backup-web01-20240101T000000-abcdef"]);
        let backup = steps(&["backup", "web01"]);

        assert_eq!(
            (
                protect[0].method.clone(),
                protect[0].path.as_str(),
                protect[0].body.clone(),
                unprotect[0].body.clone(),
                backup[0].path.as_str()
            ),
            (
                Method::PUT,
                "/api/v1/backups/backup-web01-20240101T000000-abcdef",
                Some(json!({"protected": true})),
                Some(json!({"protected": false})),
                "/api/v1/vms/web01/backup"
            )
        );
    }

    #[test]
    fn instant_list_start_and_discard_call_the_instant_routes() {
        let list = steps(&["instant", "list"]);
        let start = steps(&["instant", "start", "backup-web01-20261124T235901-3fa9c2"]);
        let discard = steps(&["instant", "discard", "instant-3fa9c2d41b07e588"]);

        assert_eq!(
            [list, start, discard],
            [
                vec![Step::get("/api/v1/instant".into())],
                vec![Step::post(
                    "/api/v1/backups/backup-web01-20261124T235901-3fa9c2/instant".into(),
                    json!({})
                )],
                vec![Step {
                    method: Method::DELETE,
                    path: "/api/v1/instant/instant-3fa9c2d41b07e588".into(),
                    body: None,
                }],
            ]
        );
    }

    #[test]
    fn job_list_filters_become_query() {
        let s = steps(&["job", "list", "--vm", "web01", "--status", "running"]);

        assert_eq!(s[0].path, "/api/v1/jobs?vm_name=web01&status=running");
    }

    #[test]
    fn policy_add_builds_design_body() {
        let s = steps(&[
            "policy",
            "add",
            "nightly",
            "--schedule",
            "mon..fri 22:00",
            "--credential",
            "vc1",
            "--vm",
            "dc1/vm/web01",
            "--vm",
            "db*",
            "--max-parallel",
            "2",
            "--retry-count",
            "2",
            "--keep-last",
            "3",
            "--keep-daily",
            "7",
            "--verify-after-backup",
            "true",
        ]);

        assert_eq!(
            s[0].body,
            Some(json!({
                "name": "nightly", "schedule": "mon..fri 22:00", "credential": "vc1",
                "vms": ["dc1/vm/web01", "db*"], "max_parallel": 2, "retry": {"count": 2},
                "retention": {"keep_last": 3, "keep_daily": 7}, "verify_after_backup": true
            }))
        );
    }

    #[test]
    fn policy_add_and_backup_of_an_agent_name_it_instead_of_a_credential() {
        let add = steps(&[
            "policy",
            "add",
            "kvm",
            "--schedule",
            "daily",
            "--agent",
            "kvm-host1",
            "--vm",
            "kvm01",
        ]);
        let now = steps(&["backup", "kvm01", "--agent", "kvm-host1"]);

        assert_eq!(
            (add[0].body.clone(), now[0].body.clone()),
            (
                Some(
                    json!({"name": "kvm", "schedule": "daily", "agent": "kvm-host1", "vms": ["kvm01"]})
                ),
                Some(json!({"backup_type": "auto", "agent": "kvm-host1"}))
            )
        );
    }

    #[test]
    fn policy_edit_merges_into_current_answer() {
        let current = json!({
            "name": "n", "schedule": "daily", "credential": "vc1", "vms": ["a"],
            "retry": {"count": 1, "delay_seconds": 60}, "retention": {"keep_last": 3},
            "next_run": "2026-12-07T00:00:00Z", "last_run": null, "created_at": "x"
        });
        let Plan::EditPolicy { changes, .. } = plan(
            &parse(&[
                "policy",
                "edit",
                "n",
                "--retry-delay",
                "600",
                "--keep-daily",
                "7",
            ])
            .command,
        )
        .expect("plans") else {
            panic!("expected an edit");
        };

        let body = merge_policy(current, &changes);

        assert_eq!(
            body,
            json!({
                "name": "n", "schedule": "daily", "credential": "vc1", "vms": ["a"],
                "retry": {"count": 1, "delay_seconds": 600},
                "retention": {"keep_last": 3, "keep_daily": 7}
            })
        );
    }

    #[test]
    fn credential_add_reads_password_and_ca_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pw = dir.path().join("pw");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&pw, "s3cret\nignored\n").expect("write");
        std::fs::write(&ca, "PEM").expect("write");
        let (pw, ca) = (pw.to_string_lossy(), ca.to_string_lossy());

        let s = steps(&[
            "credential",
            "add",
            "vc1",
            "--host",
            "vc",
            "--username",
            "u",
            "--password-file",
            &pw,
            "--ca-file",
            &ca,
            "--agent",
            "a1",
        ]);

        assert_eq!(
            s[0].body,
            Some(
                json!({"name": "vc1", "host": "vc", "username": "u", "password": "s3cret",
                        "ca_pem": "PEM", "agent": "a1"})
            )
        );
    }

    #[test]
    fn credential_add_needs_ca_or_insecure() {
        let argv = [
            "ctl",
            "credential",
            "add",
            "vc1",
            "--host",
            "h",
            "--username",
            "u",
            "--password-file",
            "pw",
        ];

        let err = Probe::try_parse_from(argv).expect_err("refused");

        assert!(err.to_string().contains("--ca-file"), "{err}");
    }

    #[test]
    fn table_aligns_columns_and_marks_empty() {
        let mut out = String::new();

        table(
            &mut out,
            &json!([{"a": "x", "b": 1}, {"a": "longer", "b": null}]),
            &["a", "b"],
        );
        table(&mut out, &json!([]), &["a"]);

        assert_eq!(out, "a       b\nx       1\nlonger  -\na\n(none)\n");
    }

    #[test]
    fn data_dir_gives_default_ca_and_token() {
        let args = parse(&["--data-dir", "/srv/hub", "metrics"]);

        let options = hub_options(&args);

        assert_eq!(
            (options.ca_file, options.token_file),
            (
                PathBuf::from("/srv/hub/tls/ca-cert.pem"),
                PathBuf::from("/srv/hub/api.token")
            )
        );
    }
}
