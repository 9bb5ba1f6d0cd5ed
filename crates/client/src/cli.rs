//! Command-line interface of `sendense-client`: argument types and dispatch.
//!
//! The binary parses [`Cli`], installs logging, builds the runtime and awaits [`execute`],
//! which returns the text to print on stdout; every command's work is a library call
//! ([`crate::backup::run`], [`crate::vcenter::run`], [`crate::restore::run`]) that tests drive
//! directly.

use std::fmt;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use sendense_types::{AgentName, BackupId, BackupType, ChangeId, DiskKey, InstantId, VmName};

use crate::agent::{self, AgentOptions, EnrollOptions, VcenterRunner};

use crate::backup::{self, BackupOptions, DiskInput, mb_per_s, parse_key_values};
use crate::error::ClientError;
use crate::files::{self, FilesTarget};
use crate::hub::HubOptions;
use crate::nbdsource::{self, NbdBackupOptions};
use crate::progress::{BarAwareStderr, LogProgress, Progress, TerminalProgress};
use crate::restore::{self, RestoreFormat, RestoreFrom, RestoreOptions};
use sendense_transfer::engine::TransferOptions;
use sendense_transfer::nbd::NbdTls;

/// Sendense appliance client: back up a VM's disks into a Sendense hub, restore them, or run as
/// an agent the hub drives (`agent enroll`, `agent run`).
#[derive(Debug, Parser)]
#[command(name = "sendense-client", version)]
pub struct Cli {
    /// Log line format on stderr (filter with RUST_LOG, default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Commands.
#[derive(Debug, Subcommand)]
// Parsed once per run: the size of `backup`'s arguments costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Back up a VM's disks (local raw or VMDK files with --disk, or every disk of a vCenter VM
    /// with --vcenter) into the hub: register the VM, start a backup, stream every disk over
    /// NBD+TLS, complete it (or fail it on any error or Ctrl-C).
    Backup(BackupArgs),
    /// Restore one disk of a backup from the hub into a local sparse raw or QCOW2 file.
    Restore(RestoreArgs),
    /// Run as an agent the hub drives: `agent enroll` once, then `agent run` (as a service).
    /// The agent opens no port: it connects out to the hub, asks for work, runs it, reports.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Single files and folders from a restore point, read by the hub from its own images (no
    /// disk restore, no mount): `partitions`, `ls`, `find`, `get`. ext2/3/4, NTFS and FAT in GPT
    /// or MBR partitions (logical ones too) or on a whole disk.
    #[command(subcommand)]
    Files(FilesCommand),
}

/// `sendense-client files ...`.
#[derive(Debug, Subcommand)]
pub enum FilesCommand {
    /// The disk's partition table and the file system found in each partition (the numbers
    /// --partition takes).
    Partitions(FilesPointArgs),
    /// List one folder: type, mode, size, modification time, name (-> link target).
    Ls(FilesPathArgs),
    /// Walk the folders below PATH and print every entry whose name matches --name.
    Find(FilesFindArgs),
    /// Download a file (into --to, or the current folder under its own name), or a folder
    /// (unpacked below --to, or kept as one .tar file with --tar). Never overwrites: a file is
    /// written as NAME.partial and renamed when complete; --resume continues a cut download.
    Get(FilesGetArgs),
}

/// Which restore point and disk.
#[derive(Debug, Clone, Args)]
pub struct FilesPointArgs {
    /// Hub connection.
    #[command(flatten)]
    pub hub: HubArgs,
    /// The backup (restore point), e.g. backup-web01-20261124T235901-3fa9c2.
    #[arg(long, value_name = "ID")]
    pub backup: String,
    /// The disk's VMware key, e.g. 2000.
    #[arg(long, value_name = "KEY")]
    pub disk: u32,
    /// Print the hub's JSON answer.
    #[arg(long)]
    pub json: bool,
}

/// Which restore point, disk, partition and path.
#[derive(Debug, Clone, Args)]
pub struct FilesPathArgs {
    /// Restore point and disk.
    #[command(flatten)]
    pub point: FilesPointArgs,
    /// The partition (see `files partitions`); leave it out for a disk without a partition
    /// table or with one partition.
    #[arg(long, value_name = "N")]
    pub partition: Option<u32>,
    /// Absolute path inside the file system.
    #[arg(value_name = "PATH", default_value = "/")]
    pub path: String,
}

/// `sendense-client files find`.
#[derive(Debug, Clone, Args)]
pub struct FilesFindArgs {
    /// Where to search.
    #[command(flatten)]
    pub at: FilesPathArgs,
    /// Shell-style name pattern (`*` and `?`), e.g. '*.conf'; all entries when left out.
    #[arg(long, value_name = "PATTERN")]
    pub name: Option<String>,
    /// Only entries of this type.
    #[arg(long = "type", value_enum, value_name = "TYPE")]
    pub kind: Option<EntryKindArg>,
}

/// `--type` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EntryKindArg {
    /// Regular files.
    File,
    /// Folders.
    Directory,
    /// Symbolic links.
    Symlink,
}

/// `sendense-client files get`.
#[derive(Debug, Clone, Args)]
pub struct FilesGetArgs {
    /// What to download.
    #[command(flatten)]
    pub at: FilesPathArgs,
    /// Where to write it (see above).
    #[arg(long, value_name = "PATH")]
    pub to: Option<PathBuf>,
    /// Keep a folder as one .tar file instead of unpacking it.
    #[arg(long)]
    pub tar: bool,
    /// Continue a file download cut off earlier (from its NAME.partial; a download in pieces
    /// fetches only the pieces its NAME.partial.pieces does not list as complete).
    #[arg(long)]
    pub resume: bool,
    /// A file larger than --piece-size downloads in pieces, this many Range requests at once,
    /// each on its own connection (1: one stream).
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub streams: u16,
    /// Size of one piece: bytes, or with K, M, G (binary units); a multiple of 4 KiB.
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = parse_piece_size)]
    pub piece_size: u64,
}

/// Parses `64M`, `512K`, `1G` or plain bytes.
fn parse_piece_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, shift) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 30),
        _ => (t, 0),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1u64 << shift))
        .filter(|&n| n > 0 && n.is_multiple_of(4096))
        .ok_or_else(|| format!("{text:?} is not a size that is a multiple of 4 KiB (e.g. 64M)"))
}

/// `sendense-client agent ...`.
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Enroll this appliance as agent NAME with a one-time enrollment token (an admin makes it
    /// with POST /api/v1/agents {"name": NAME}; good for one use within 24 h). A key pair is
    /// made here and never leaves the appliance: the hub signs a certificate request for it.
    /// Writes the state folder (0700): ca-cert.pem, client-cert.pem, client-key.pem (0600),
    /// agent.token (0600) and agent.json (hub URL and name).
    Enroll(EnrollArgs),
    /// Run the agent: long-poll the hub for jobs while a slot is free, run up to --slots jobs at
    /// once (backups with the same code as `backup --vcenter`, with the vCenter credential the
    /// hub hands over; inventories), keep their leases with heartbeats reporting progress, and
    /// report each outcome (kept and retried while the hub is down). SIGTERM or Ctrl-C: no new
    /// jobs, running ones stopped cleanly (snapshots removed, backups failed at the hub) and
    /// reported failed ("agent stopped"); exits 0.
    Run(AgentRunArgs),
}

/// `sendense-client agent enroll`.
#[derive(Debug, Clone, Args)]
pub struct EnrollArgs {
    /// The hub's REST API as https://HOST:PORT.
    #[arg(long, value_name = "URL")]
    pub hub: String,
    /// The hub's CA certificate (its DATA/tls/ca-cert.pem), trusted for the enrollment.
    #[arg(long, value_name = "FILE")]
    pub ca: PathBuf,
    /// The agent's name, as the admin created it (1-64 characters of A-Z a-z 0-9 . _ -).
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// File holding the one-time enrollment token (keep it 0600; it is useless once used).
    #[arg(long, value_name = "FILE")]
    pub enrollment_token_file: PathBuf,
    /// The agent's state folder (made 0700), e.g. /var/lib/sendense-agent.
    #[arg(long, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// Enroll again over a state folder that already holds an enrolled agent.
    #[arg(long)]
    pub force: bool,
}

/// `sendense-client agent run`.
#[derive(Debug, Clone, Args)]
pub struct AgentRunArgs {
    /// The state folder `agent enroll` wrote.
    #[arg(long, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// Jobs run at once (1-64); the agent asks for work only while one is free.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub slots: u32,
    /// NBD connections per disk of a backup.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub connections: u16,
    /// The agent's own NBD sources (KVM guests): a TOML file of `[[vm]]` entries, each with
    /// `name` and `hook` (README "KVM and other NBD sources"), read again at each job.
    /// Default: STATE_DIR/nbd-sources.toml when it exists.
    #[arg(long, value_name = "FILE")]
    pub nbd_sources: Option<PathBuf>,
}

/// How to reach the hub.
#[derive(Debug, Clone, Args)]
pub struct HubArgs {
    /// The hub's REST API as https://HOST:PORT (the hub's --api address).
    #[arg(long, value_name = "URL")]
    pub hub: String,
    /// The hub's CA certificate (its DATA/tls/ca-cert.pem); the only CA trusted, for HTTPS and
    /// for NBD. Presents no client certificate: only for a hub run with
    /// --nbd-client-certs optional. One of --ca and --tls-dir is required.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "tls_dir",
        conflicts_with = "tls_dir"
    )]
    pub ca: Option<PathBuf>,
    /// A client certificate folder in QEMU's layout (ca-cert.pem, client-cert.pem,
    /// client-key.pem), as `sendense-hub cert issue NAME --data-dir DATA --out DIR` writes it:
    /// its ca-cert.pem is the only CA trusted (HTTPS and NBD), and the client certificate is
    /// presented on every NBD connection (the hub requires one by default).
    #[arg(long, value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
    /// File holding the hub's API token (its DATA/api.token).
    #[arg(long, value_name = "FILE")]
    pub token_file: PathBuf,
}

/// `sendense-client backup`.
#[derive(Debug, Clone, Args)]
pub struct BackupArgs {
    /// Hub connection.
    #[command(flatten)]
    pub hub: HubArgs,
    /// The VM's name (1-64 characters of A-Z a-z 0-9 . _ -). With --vcenter: its inventory
    /// path (dc1/vm/web01) or its name in vCenter; the hub stores it under its vCenter name.
    #[arg(long, value_name = "NAME|PATH")]
    pub vm: String,
    /// A disk as VMware key and local file: 2000=/path/disk.vmdk. Repeat for each disk; raw or
    /// VMDK is detected from the content. All disks are sent at once.
    #[arg(
        long = "disk",
        value_name = "KEY=PATH",
        required_unless_present_any = ["vcenter", "vcenter_credential", "nbd_sources"]
    )]
    pub disks: Vec<String>,
    /// Backup type; auto is incremental when the VM has a completed chain, else full. With
    /// --disk, --type incremental needs --base-backup.
    #[arg(long = "type", value_enum, default_value_t = TypeArg::Auto)]
    pub backup_type: TypeArg,
    /// The backup the changes are relative to (the previous restore point of the VM, e.g. the
    /// last backup_id in GET /api/v1/backups/chain/VM). Required with --disk and --type
    /// incremental; optional with --type auto. The hub refuses the backup (409) when the parent
    /// it would use is another one, so --changed-areas never land on the wrong base.
    #[arg(long = "base-backup", value_name = "ID")]
    pub base_backup: Option<String>,
    /// Changed areas of a disk since the previous backup, as VMware DiskChangeInfo JSON
    /// ({"startOffset":0,"length":N,"changedArea":[{"start":S,"length":L},...]}): 2000=FILE.
    /// An incremental of a disk without it sends every allocated extent and zeroes the holes.
    #[arg(long = "changed-areas", value_name = "KEY=FILE")]
    pub changed_areas: Vec<String>,
    /// The CBT change id to record for a disk (the base of the next incremental): 2000=ID.
    /// Without it, a file source gets a derived id file-HASH/SEQUENCE (HASH of the path and size).
    #[arg(long = "change-id", value_name = "KEY=ID")]
    pub change_ids: Vec<String>,
    /// NBD connections per disk.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub connections: u16,
    /// Print a JSON summary on stdout instead of progress bars.
    #[arg(long)]
    pub json: bool,
    /// The VM's disks come from vCenter instead of local files (last: its help heading).
    #[command(flatten)]
    pub vcenter: VcenterArgs,
    /// The VM's disks come from NBD exports (QEMU/KVM, libvirt) instead of local files.
    #[command(flatten)]
    pub nbd: NbdSourceArgs,
}

/// `sendense-client backup --nbd-source ...`: the VM's disks read from NBD exports.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "NBD sources: QEMU/KVM, libvirt (instead of --disk)")]
pub struct NbdSourceArgs {
    /// A disk as key and NBD export: 2000=nbd://HOST:PORT/EXPORT (port optional), nbds://... (TLS),
    /// nbd+unix:///EXPORT?socket=/PATH. Repeat for each disk; all are sent at once. A full
    /// reads the allocated extents (base:allocation; what reads as zeroes is skipped); an
    /// incremental reads each disk's QEMU dirty bitmap named by its change id at the hub (the
    /// --bitmap of the previous backup), as `qemu-nbd -B NAME` or libvirt's pull-mode backup
    /// exports it. With --type auto, a bitmap the source does not offer (removed, or another
    /// name) makes the run a full on a new chain, with a log line saying why. A source larger
    /// than the disk the hub recorded is refused (unless --type full). Reads use up to
    /// --connections connections when the server allows several (qemu-nbd -r -e N).
    #[arg(
        long = "nbd-source",
        value_name = "KEY=URI",
        conflicts_with_all = ["disks", "changed_areas", "change_ids", "base_backup", "vcenter", "vcenter_credential"]
    )]
    pub nbd_sources: Vec<String>,
    /// The dirty bitmap that starts at this backup (the libvirt checkpoint created with it, or
    /// the bitmap added with `qemu-img bitmap --add --enable` before exporting), recorded as
    /// every disk's change id: the next incremental reads it. Name one per backup (e.g.
    /// sendense-20261207T220000, as libvirt names checkpoints), so an old name never stands
    /// for a newer bitmap. Without it, nothing is recorded and the next backup is a full.
    #[arg(long, value_name = "NAME", requires = "nbd_sources")]
    pub bitmap: Option<String>,
    /// PEM file of the CA that signed the NBD server's certificate (for nbds:// sources); the
    /// server's name is the URI's host (localhost for nbds+unix://).
    #[arg(
        long,
        value_name = "FILE",
        requires = "nbd_sources",
        conflicts_with = "nbd_tls_dir"
    )]
    pub nbd_ca: Option<PathBuf>,
    /// Folder in QEMU's client layout (ca-cert.pem, client-cert.pem, client-key.pem) for
    /// nbds:// sources that require a client certificate.
    #[arg(long, value_name = "DIR", requires = "nbd_sources")]
    pub nbd_tls_dir: Option<PathBuf>,
}

/// `sendense-client backup --vcenter ...`: the VM's disks read from vCenter.
///
/// Two exclusive ways to log in: `--vcenter-user` with `--vcenter-password-file`, or
/// `--vcenter-credential NAME` (a credential stored at the hub; the hub logs in and hands out a
/// vCenter session, never the password).
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "vCenter source (instead of --disk)")]
#[command(group = clap::ArgGroup::new("vcenter_source").args(["vcenter", "vcenter_credential"]).multiple(true))]
pub struct VcenterArgs {
    /// Back up every disk of the VM (keys 2000, 2001, ...) from this vCenter or ESXi host,
    /// HOST or HOST:PORT (443 by default). One snapshot for all disks, always removed at the
    /// end (also on failure and Ctrl-C); a full sends the allocated areas, an incremental the
    /// areas CBT reports changed since the hub's last completed backup. When CBT was reset or a
    /// disk changed (key, UUID, size), the backup becomes a full on a new chain, with a log line
    /// saying why. Needs --vcenter-user and --vcenter-password-file, or --vcenter-credential
    /// (then this overrides the credential's host, e.g. when the client reaches vCenter under
    /// another name).
    #[arg(
        long,
        value_name = "HOST[:PORT]",
        conflicts_with_all = ["disks", "changed_areas", "change_ids", "base_backup"]
    )]
    pub vcenter: Option<String>,
    /// vCenter user, e.g. backup@vsphere.local (with --vcenter-password-file).
    #[arg(
        long,
        value_name = "USER",
        requires_all = ["vcenter", "vcenter_password_file"]
    )]
    pub vcenter_user: Option<String>,
    /// File whose first line is the vCenter user's password (keep it 0600).
    #[arg(
        long,
        value_name = "FILE",
        requires_all = ["vcenter", "vcenter_user"]
    )]
    pub vcenter_password_file: Option<PathBuf>,
    /// Log in with the vCenter credential NAME stored at the hub (POST /api/v1/credentials)
    /// instead of --vcenter-user/--vcenter-password-file: the hub logs in to the credential's
    /// vCenter with the sealed password and hands this client a session, never the password
    /// (and a fresh one when the session expires). The hub must reach vCenter. The host is the
    /// credential's unless --vcenter is given.
    #[arg(
        long,
        value_name = "NAME",
        conflicts_with_all = ["vcenter_user", "vcenter_password_file", "disks", "changed_areas", "change_ids", "base_backup"]
    )]
    pub vcenter_credential: Option<String>,
    /// PEM file of the CA(s) that signed vCenter's certificate (e.g. vCenter's VMCA root,
    /// https://VCENTER/certs/download.zip). One of --vcenter-ca and --insecure is required.
    /// With --vcenter-credential this only concerns this client's own connections to vCenter:
    /// the hub checks vCenter's certificate as the credential's stored trust choice says.
    #[arg(
        long,
        value_name = "FILE",
        requires = "vcenter_source",
        conflicts_with = "insecure"
    )]
    pub vcenter_ca: Option<PathBuf>,
    /// Accept any vCenter certificate (no chain check): only on a trusted network.
    #[arg(long, requires = "vcenter_source")]
    pub insecure: bool,
    /// Quiesce the guest's file systems for the snapshot (VMware Tools must run in the guest;
    /// without them vCenter refuses the snapshot and the backup fails, leaving no snapshot).
    #[arg(long, requires = "vcenter_source")]
    pub quiesce: bool,
}

/// What `backup --vcenter ...` is asked to do.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct VcenterRequest {
    /// The hub.
    pub hub: HubOptions,
    /// `--vm`: the VM's inventory path or name in vCenter.
    pub vm: String,
    /// The vCenter flags.
    pub vcenter: VcenterArgs,
    /// `--type`.
    pub backup_type: BackupType,
    /// Engine tuning (`--connections`).
    pub transfer: TransferOptions,
    /// Where progress goes.
    pub progress: Arc<dyn Progress>,
}

/// `--type` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TypeArg {
    /// Every allocated extent, into a new chain.
    Full,
    /// Only the changes since the last backup, into an overlay.
    Incremental,
    /// Incremental if possible, else full.
    Auto,
}

/// `sendense-client restore`.
#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    /// Hub connection.
    #[command(flatten)]
    pub hub: HubArgs,
    /// The backup (restore point), e.g. backup-web01-20261124T235901-3fa9c2.
    #[arg(long, value_name = "ID", required_unless_present = "from_instant")]
    pub backup: Option<String>,
    /// Whole VM into vCenter instead (`--to-vcenter` and its flags).
    #[command(flatten)]
    pub vcenter: crate::vcenter_restore::VcenterRestoreArgs,
    /// Copy out the current state of this instant recovery instead (the point plus what its
    /// guest wrote: the "move to production" step; stop the guest first), e.g.
    /// instant-3fa9c2d41b07e588. Its exports stay open.
    #[arg(long, value_name = "ID", conflicts_with = "backup")]
    pub from_instant: Option<String>,
    /// The disk's VMware key, e.g. 2000 (with --to-vcenter: repeat to restore only these disks;
    /// default all).
    #[arg(long, value_name = "KEY", required_unless_present = "to_vcenter")]
    pub disk: Vec<u32>,
    /// The image to write; must not exist (written as PATH.partial, renamed when complete).
    #[arg(long, value_name = "PATH", required_unless_present = "to_vcenter")]
    pub to: Option<PathBuf>,
    /// Format of the image written.
    #[arg(long, value_enum, default_value_t = FormatArg::Raw)]
    pub format: FormatArg,
    /// NBD connections.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub connections: u16,
    /// Print a JSON summary on stdout instead of progress bars.
    #[arg(long)]
    pub json: bool,
}

/// `--format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// Sparse raw file.
    Raw,
    /// QCOW2 v3 made by Sendense's engine.
    Qcow2,
}

/// Runs a command; answers what to print on stdout.
///
/// # Errors
/// The command's error.
pub async fn execute(command: Command) -> Result<String, ClientError> {
    match command {
        Command::Backup(args) => run_backup(args).await,
        Command::Restore(args) => run_restore(args).await,
        Command::Files(command) => run_files(command).await,
        Command::Agent(AgentCommand::Enroll(args)) => run_enroll(args).await,
        Command::Agent(AgentCommand::Run(args)) => {
            run_agent(args, sendense_io::signal::stopped()).await
        }
    }
}

async fn run_enroll(args: EnrollArgs) -> Result<String, ClientError> {
    let name = AgentName::try_from(args.name.as_str()).map_err(|e| invalid("--name", e))?;
    let options = EnrollOptions {
        hub: args.hub,
        ca_file: args.ca,
        name,
        enrollment_token_file: args.enrollment_token_file,
        state_dir: args.state_dir.clone(),
        force: args.force,
    };
    let config = agent::enroll(&options).await?;
    Ok(format!(
        "enrolled agent {} with hub {}; state in {}; now run: sendense-client agent run --state-dir {}",
        config.name,
        config.hub,
        args.state_dir.display(),
        args.state_dir.display()
    ))
}

/// `agent run` until `shutdown` resolves.
///
/// # Errors
/// See [`agent::run`].
pub async fn run_agent(
    args: AgentRunArgs,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<String, ClientError> {
    let mut options = AgentOptions::new(&args.state_dir);
    options.slots = args.slots;
    let sources = args
        .nbd_sources
        .clone()
        .unwrap_or_else(|| args.state_dir.join(crate::nbdjob::NBD_SOURCES));
    // A broken sources file stops the agent at start, not at its first job.
    let listed = crate::nbdjob::NbdSources::read(&sources)?;
    if !listed.vm.is_empty() {
        tracing::info!(file = %sources.display(), vms = listed.vm.len(), "NBD sources listed");
    }
    options.runner = Arc::new(crate::nbdjob::AgentRunner {
        vcenter: VcenterRunner {
            transfer: TransferOptions::with_connections(usize::from(args.connections)),
        },
        sources,
    });
    agent::run(options, shutdown).await?;
    Ok("agent stopped".to_owned())
}

/// Installs the `tracing` subscriber on stderr (`RUST_LOG` filter, default `info`). Called once
/// by the binary.
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| BarAwareStderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn files_target(
    point: &FilesPointArgs,
    partition: Option<u32>,
) -> Result<FilesTarget, ClientError> {
    Ok(FilesTarget {
        hub: hub_options(&point.hub),
        backup: BackupId::try_from(point.backup.as_str()).map_err(|e| invalid("--backup", e))?,
        disk: DiskKey(point.disk),
        partition,
    })
}

fn to_json(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

async fn run_files(command: FilesCommand) -> Result<String, ClientError> {
    match command {
        FilesCommand::Partitions(point) => {
            let table = files::partitions(&files_target(&point, None)?).await?;
            if point.json {
                return Ok(to_json(&table));
            }
            Ok(files::format_partitions(&table))
        }
        FilesCommand::Ls(args) => {
            let target = files_target(&args.point, args.partition)?;
            let listing = files::list(&target, &args.path).await?;
            if args.point.json {
                return Ok(to_json(&listing));
            }
            Ok(files::format_listing(&listing.entries))
        }
        FilesCommand::Find(args) => {
            let target = files_target(&args.at.point, args.at.partition)?;
            let kind = args.kind.map(|k| match k {
                EntryKindArg::File => "file",
                EntryKindArg::Directory => "directory",
                EntryKindArg::Symlink => "symlink",
            });
            let found = files::find(&target, &args.at.path, args.name.as_deref(), kind).await?;
            if args.at.point.json {
                return Ok(to_json(&found));
            }
            Ok(found
                .iter()
                .map(|f| f.path.as_str())
                .collect::<Vec<_>>()
                .join("\n"))
        }
        FilesCommand::Get(args) => {
            let target = files_target(&args.at.point, args.at.partition)?;
            let options = files::GetOptions {
                path: args.at.path.clone(),
                to: args.to.clone(),
                folder_as: if args.tar {
                    files::FolderAs::Tar
                } else {
                    files::FolderAs::Unpacked
                },
                resume: args.resume,
                pieces: files::Pieces {
                    streams: usize::from(args.streams),
                    piece_bytes: args.piece_size,
                },
            };
            let bar =
                (!args.at.point.json && std::io::stderr().is_terminal()).then(files::download_bar);
            let show = |done: u64, total: Option<u64>| {
                if let Some(bar) = &bar {
                    if let Some(total) = total {
                        bar.set_length(total);
                    }
                    bar.set_position(done);
                }
            };
            let result = files::get(&target, &options, &show).await;
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            let s = result?;
            if args.at.point.json {
                return Ok(to_json(&s));
            }
            let rate = mb_per_s(s.bytes, s.seconds);
            Ok(format!(
                "{} {} written: {} bytes in {:.1} s ({rate:.1} MB/s){}",
                s.kind,
                s.written.display(),
                s.bytes,
                s.seconds,
                if s.resumed_from > 0 {
                    format!(", resumed after {} bytes", s.resumed_from)
                } else {
                    String::new()
                }
            ))
        }
    }
}

fn hub_options(args: &HubArgs) -> HubOptions {
    match (&args.tls_dir, &args.ca) {
        (Some(dir), _) => HubOptions::with_tls_dir(&args.hub, dir, &args.token_file),
        (None, ca) => HubOptions {
            url: args.hub.clone(),
            // clap requires one of --ca and --tls-dir.
            ca_file: ca.clone().unwrap_or_default(),
            token_file: args.token_file.clone(),
            tls_dir: None,
        },
    }
}

/// Bars on a terminal (unless `--json`), log lines otherwise.
fn progress(json: bool) -> (Arc<dyn Progress>, Option<Arc<TerminalProgress>>) {
    if !json && std::io::stderr().is_terminal() {
        let bars = Arc::new(TerminalProgress::new());
        (Arc::clone(&bars) as Arc<dyn Progress>, Some(bars))
    } else {
        (Arc::new(LogProgress::new(Duration::from_secs(10))), None)
    }
}

fn invalid(what: &'static str, e: impl fmt::Display) -> ClientError {
    ClientError::InvalidArgument {
        what,
        reason: e.to_string(),
    }
}

/// Turns the command-line disk arguments into [`DiskInput`]s.
///
/// # Errors
/// [`ClientError::InvalidArgument`] naming the bad argument (also a `--changed-areas` or
/// `--change-id` for a disk not given with `--disk`).
pub fn disk_inputs(
    disks: &[String],
    changed_areas: &[String],
    change_ids: &[String],
) -> Result<Vec<DiskInput>, ClientError> {
    let paths = parse_key_values("--disk", disks)?;
    let mut areas = parse_key_values("--changed-areas", changed_areas)?;
    let mut ids = parse_key_values("--change-id", change_ids)?;
    let mut out = Vec::with_capacity(paths.len());
    for (key, path) in paths {
        let change_id = ids
            .remove(&key)
            .map(|id| ChangeId::try_from(id).map_err(|e| invalid("--change-id", e)))
            .transpose()?;
        out.push(DiskInput {
            key,
            path: PathBuf::from(path),
            changed_areas: areas.remove(&key).map(PathBuf::from),
            change_id,
        });
    }
    if let Some(key) = areas.keys().chain(ids.keys()).next() {
        return Err(invalid(
            "--changed-areas/--change-id",
            format!("disk {key} is not given with --disk"),
        ));
    }
    Ok(out)
}

/// `--base-backup` of a file-source backup: required for `--type incremental` (the changes are
/// relative to a base the user names), optional for `auto`, refused for `full`.
///
/// # Errors
/// [`ClientError::InvalidArgument`] naming the fix.
pub fn base_backup(
    given: Option<&str>,
    backup_type: BackupType,
    vm: &VmName,
) -> Result<Option<BackupId>, ClientError> {
    let base = given
        .map(|id| BackupId::try_from(id).map_err(|e| invalid("--base-backup", e)))
        .transpose()?;
    match (backup_type, &base) {
        (BackupType::Incremental, None) => Err(invalid(
            "--base-backup",
            format!(
                "an incremental of local disk files must state its base: add --base-backup ID \
                 (the backup the changes are relative to, the last backup_id of \
                 GET /api/v1/backups/chain/{vm}), or use --type auto"
            ),
        )),
        (BackupType::Full, Some(_)) => Err(invalid(
            "--base-backup",
            "a full backup has no base: drop --base-backup or use --type incremental",
        )),
        _ => Ok(base),
    }
}

async fn run_backup(args: BackupArgs) -> Result<String, ClientError> {
    let backup_type = match args.backup_type {
        TypeArg::Full => BackupType::Full,
        TypeArg::Incremental => BackupType::Incremental,
        TypeArg::Auto => BackupType::Auto,
    };
    let transfer = TransferOptions::with_connections(usize::from(args.connections));
    let result = if !args.nbd.nbd_sources.is_empty() {
        let vm = VmName::try_from(args.vm.as_str()).map_err(|e| invalid("--vm", e))?;
        let disks = nbdsource::parse_nbd_sources(&args.nbd.nbd_sources)?;
        let (progress, bars) = progress(args.json);
        let mut options = NbdBackupOptions::new(hub_options(&args.hub), vm, disks);
        options.bitmap = args
            .nbd
            .bitmap
            .as_deref()
            .map(nbdsource::parse_bitmap)
            .transpose()?;
        options.backup_type = backup_type;
        options.tls = nbd_source_tls(&args.nbd)?;
        options.transfer = transfer;
        options.progress = progress;
        let result = nbdsource::run(options).await;
        if let Some(bars) = bars {
            bars.clear();
        }
        result
    } else if args.vcenter.vcenter.is_some() || args.vcenter.vcenter_credential.is_some() {
        if args.vcenter.vcenter_ca.is_none() && !args.vcenter.insecure {
            return Err(invalid(
                "--vcenter",
                "give --vcenter-ca FILE (vCenter's CA) or --insecure",
            ));
        }
        let (progress, bars) = progress(args.json);
        let request = VcenterRequest {
            hub: hub_options(&args.hub),
            vm: args.vm.clone(),
            vcenter: args.vcenter.clone(),
            backup_type,
            transfer,
            progress,
        };
        let result = crate::vcenter::backup(&request).await;
        if let Some(bars) = bars {
            bars.clear();
        }
        result
    } else {
        let vm = VmName::try_from(args.vm.as_str()).map_err(|e| invalid("--vm", e))?;
        let base_backup = base_backup(args.base_backup.as_deref(), backup_type, &vm)?;
        let disks = disk_inputs(&args.disks, &args.changed_areas, &args.change_ids)?;
        let (progress, bars) = progress(args.json);
        let mut options = BackupOptions::new(hub_options(&args.hub), vm, disks);
        options.backup_type = backup_type;
        options.base_backup = base_backup;
        options.transfer = transfer;
        options.progress = progress;
        let result = backup::run(options).await;
        if let Some(bars) = bars {
            bars.clear();
        }
        result
    };
    let summary = result?;
    let rate = mb_per_s(summary.bytes_sent, summary.seconds);
    if args.json {
        let mut value = serde_json::to_value(&summary).map_err(|e| invalid("summary", e))?;
        if let Some(obj) = value.as_object_mut() {
            obj.insert("mb_per_s".into(), round2(rate));
        }
        if let Some(disks) = value.get_mut("disks").and_then(|d| d.as_array_mut()) {
            for (disk, s) in disks.iter_mut().zip(&summary.disks) {
                if let Some(obj) = disk.as_object_mut() {
                    obj.insert("mb_per_s".into(), round2(mb_per_s(s.bytes_sent, s.seconds)));
                }
            }
        }
        Ok(value.to_string())
    } else {
        let mut text = format!(
            "{} {} backup {}: {} bytes sent in {:.1} s ({rate:.1} MB/s)",
            summary.backup_type,
            summary.status,
            summary.backup_id,
            summary.bytes_sent,
            summary.seconds
        );
        for d in &summary.disks {
            text.push_str(&format!(
                "\n  disk {}: {} bytes sent, {} skipped, {:.1} s",
                d.disk_key, d.bytes_sent, d.bytes_skipped, d.seconds
            ));
        }
        Ok(text)
    }
}

/// TLS for `nbds://` sources from `--nbd-ca` or `--nbd-tls-dir` (`None` without either); the
/// server name is filled in per source from its URI.
fn nbd_source_tls(args: &NbdSourceArgs) -> Result<Option<NbdTls>, ClientError> {
    let config = match (&args.nbd_ca, &args.nbd_tls_dir) {
        (Some(ca), _) => crate::hub::tls_config(ca)?,
        (None, Some(dir)) => crate::hub::client_cert_config(dir)?,
        (None, None) => return Ok(None),
    };
    Ok(Some(NbdTls {
        config,
        server_name: String::new(),
    }))
}

fn round2(x: f64) -> serde_json::Value {
    serde_json::json!((x * 100.0).round() / 100.0)
}

async fn run_restore(args: RestoreArgs) -> Result<String, ClientError> {
    if args.vcenter.to_vcenter {
        return run_vcenter_restore(args).await;
    }
    if let Some(flag) = args.vcenter.stray_flag() {
        return Err(invalid(flag, "applies only with --to-vcenter"));
    }
    let (Some(to), [disk]) = (args.to.clone(), args.disk.as_slice()) else {
        return Err(invalid(
            "--disk",
            "restore --to FILE restores one disk: name it once",
        ));
    };
    let from = match (&args.backup, &args.from_instant) {
        (_, Some(instant)) => RestoreFrom::Instant(
            InstantId::try_from(instant.as_str()).map_err(|e| invalid("--from-instant", e))?,
        ),
        (Some(backup), None) => RestoreFrom::Backup(
            BackupId::try_from(backup.as_str()).map_err(|e| invalid("--backup", e))?,
        ),
        (None, None) => {
            return Err(invalid(
                "--backup",
                "name a restore point (--backup ID) or an instant recovery (--from-instant ID)",
            ));
        }
    };
    let (progress, bars) = progress(args.json);
    let mut options = RestoreOptions::reading(hub_options(&args.hub), from, DiskKey(*disk), to);
    options.format = match args.format {
        FormatArg::Raw => RestoreFormat::Raw,
        FormatArg::Qcow2 => RestoreFormat::Qcow2,
    };
    options.transfer = TransferOptions::with_connections(usize::from(args.connections));
    options.progress = progress;
    let result = restore::run(options).await;
    if let Some(bars) = bars {
        bars.clear();
    }
    let s = result?;
    let rate = mb_per_s(s.bytes_written, s.seconds);
    if args.json {
        Ok(serde_json::json!({
            "backup_id": s.backup_id,
            "instant_id": s.instant_id,
            "disk_key": s.disk_key,
            "path": s.path,
            "size": s.size,
            "bytes_written": s.bytes_written,
            "seconds": s.seconds,
            "mb_per_s": round2(rate),
        })
        .to_string())
    } else {
        let of = s.instant_id.as_ref().map_or_else(
            || s.backup_id.to_string(),
            |i| format!("instant recovery {i} (of {})", s.backup_id),
        );
        Ok(format!(
            "restored disk {} of {of} into {}: {} bytes written in {:.1} s ({rate:.1} MB/s)",
            s.disk_key,
            s.path.display(),
            s.bytes_written,
            s.seconds
        ))
    }
}

async fn run_vcenter_restore(args: RestoreArgs) -> Result<String, ClientError> {
    let backup = args.backup.as_deref().unwrap_or_default();
    let backup_id = BackupId::try_from(backup).map_err(|e| invalid("--backup", e))?;
    let options = crate::vcenter_restore::VcenterRestoreOptions {
        hub: hub_options(&args.hub),
        backup_id,
        request: args.vcenter.request(&args.disk)?,
        wait: !args.vcenter.no_wait,
        bar: crate::vcenter_restore::bar_wanted(args.json),
        poll: crate::vcenter_restore::POLL_PERIOD,
    };
    let s = crate::vcenter_restore::run(options).await?;
    Ok(match (&s.job, args.json) {
        (_, true) => serde_json::json!({"job_id": s.job_id, "job": s.job}).to_string(),
        (None, false) => s.job_id.to_string(),
        (Some(job), false) => format!(
            "restore job {} completed: {} bytes in {} s",
            s.job_id,
            job.progress.bytes_done,
            job.started_at.zip(job.finished_at).map_or(0, |(a, b)| b
                .unix_seconds()
                .saturating_sub(a.unix_seconds()))
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn cli_backup_arguments_parse() {
        let cli = Cli::try_parse_from([
            "sendense-client",
            "backup",
            "--hub",
            "https://h:8443",
            "--ca",
            "ca.pem",
            "--token-file",
            "t",
            "--vm",
            "web01",
            "--disk",
            "2000=a.raw",
            "--disk",
            "2001=b.vmdk",
            "--type",
            "incremental",
            "--changed-areas",
            "2000=c.json",
            "--change-id",
            "2001=52 aa/7",
            "--connections",
            "8",
            "--json",
        ])
        .unwrap();

        let Command::Backup(args) = cli.command else {
            panic!("not backup")
        };
        let disks = disk_inputs(&args.disks, &args.changed_areas, &args.change_ids).unwrap();
        assert_eq!(disks.len(), 2);
        assert_eq!(disks[0].changed_areas, Some(PathBuf::from("c.json")));
        assert_eq!(
            disks[1].change_id.as_ref().map(ChangeId::as_str),
            Some("52 aa/7")
        );
        assert_eq!(args.connections, 8);
        assert_eq!(args.backup_type, TypeArg::Incremental);
    }

    #[test]
    fn cli_agent_arguments_parse_and_zero_slots_is_refused() {
        let run = Cli::try_parse_from([
            "sendense-client",
            "agent",
            "run",
            "--state-dir",
            "/var/lib/sendense-agent",
            "--slots",
            "3",
        ])
        .unwrap();
        let enroll = Cli::try_parse_from([
            "sendense-client",
            "agent",
            "enroll",
            "--hub",
            "https://h:8443",
            "--ca",
            "ca.pem",
            "--name",
            "appliance-1",
            "--enrollment-token-file",
            "t",
            "--state-dir",
            "s",
        ])
        .unwrap();
        let zero = Cli::try_parse_from([
            "sendense-client",
            "agent",
            "run",
            "--state-dir",
            "s",
            "--slots",
            "0",
        ])
        .unwrap_err();

        let Command::Agent(AgentCommand::Run(run)) = run.command else {
            panic!("not agent run")
        };
        let Command::Agent(AgentCommand::Enroll(enroll)) = enroll.command else {
            panic!("not agent enroll")
        };
        assert_eq!((run.slots, run.connections), (3, 4));
        assert_eq!((enroll.name.as_str(), enroll.force), ("appliance-1", false));
        assert_eq!(zero.kind(), clap::error::ErrorKind::ValueValidation);
    }

    #[test]
    fn cli_zero_connections_is_refused() {
        let err = Cli::try_parse_from([
            "sendense-client",
            "backup",
            "--hub",
            "https://h",
            "--ca",
            "c",
            "--token-file",
            "t",
            "--vm",
            "v",
            "--disk",
            "2000=a",
            "--connections",
            "0",
        ])
        .unwrap_err();

        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
    }

    #[tokio::test]
    async fn cli_file_incremental_without_base_backup_is_refused_naming_the_flag() {
        let cli = Cli::try_parse_from([
            "sendense-client",
            "backup",
            "--hub",
            "https://h",
            "--ca",
            "c",
            "--token-file",
            "t",
            "--vm",
            "v",
            "--disk",
            "2000=a",
            "--type",
            "incremental",
        ])
        .unwrap();

        let err = execute(cli.command).await.unwrap_err();

        assert!(
            err.to_string().contains("--base-backup") && err.to_string().contains("--type auto"),
            "{err}"
        );
    }

    #[test]
    fn base_backup_rules_per_type() {
        let vm = VmName::try_from("v").unwrap();
        let id = "backup-v-20261124T235901-3fa9c2";

        let incremental = base_backup(Some(id), BackupType::Incremental, &vm).unwrap();
        let auto = base_backup(None, BackupType::Auto, &vm).unwrap();
        let full = base_backup(Some(id), BackupType::Full, &vm).unwrap_err();
        let bad = base_backup(Some("nope"), BackupType::Incremental, &vm).unwrap_err();

        assert_eq!(incremental.as_ref().map(BackupId::as_str), Some(id));
        assert_eq!(auto, None);
        assert!(full.to_string().contains("full"), "{full}");
        assert!(bad.to_string().contains("--base-backup"), "{bad}");
    }

    #[test]
    fn cli_base_backup_with_vcenter_is_refused_by_the_parser() {
        let err = Cli::try_parse_from([
            "sendense-client",
            "backup",
            "--hub",
            "https://h",
            "--ca",
            "c",
            "--token-file",
            "t",
            "--vm",
            "v",
            "--vcenter",
            "vc",
            "--insecure",
            "--base-backup",
            "backup-v-20261124T235901-3fa9c2",
        ])
        .unwrap_err();

        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn disk_inputs_changed_areas_for_unknown_disk_is_refused() {
        let err = disk_inputs(&["2000=a".into()], &["2001=c.json".into()], &[]).unwrap_err();

        assert!(err.to_string().contains("disk 2001"), "{err}");
    }

    #[test]
    fn cli_restore_arguments_parse() {
        let cli = Cli::try_parse_from([
            "sendense-client",
            "restore",
            "--hub",
            "https://h:8443",
            "--ca",
            "ca.pem",
            "--token-file",
            "t",
            "--backup",
            "backup-web01-20261124T235901-3fa9c2",
            "--disk",
            "2000",
            "--to",
            "/tmp/x.qcow2",
            "--format",
            "qcow2",
        ])
        .unwrap();

        let Command::Restore(args) = cli.command else {
            panic!("not restore")
        };
        assert_eq!(args.format, FormatArg::Qcow2);
        assert_eq!(args.disk, [2000]);
    }

    fn restore_args(source: &[&str]) -> Result<Cli, clap::Error> {
        let mut argv = vec![
            "sendense-client",
            "restore",
            "--hub",
            "https://h:8443",
            "--ca",
            "ca.pem",
            "--token-file",
            "t",
            "--disk",
            "2000",
            "--to",
            "/tmp/x.raw",
        ];
        argv.extend_from_slice(source);
        Cli::try_parse_from(argv)
    }

    #[test]
    fn cli_restore_from_instant_parses() {
        let cli = restore_args(&["--from-instant", "instant-3fa9c2d41b07e588"]).unwrap();

        let Command::Restore(args) = cli.command else {
            panic!("not restore")
        };
        assert_eq!(
            (args.backup, args.from_instant.as_deref()),
            (None, Some("instant-3fa9c2d41b07e588"))
        );
    }

    #[test]
    fn cli_restore_backup_and_from_instant_conflict() {
        let err = restore_args(&[
            "--backup",
            "backup-web01-20261124T235901-3fa9c2",
            "--from-instant",
            "instant-3fa9c2d41b07e588",
        ])
        .unwrap_err();

        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    fn vcenter_args(extra: &[&str]) -> Result<Cli, clap::Error> {
        let mut argv = vec![
            "sendense-client",
            "restore",
            "--hub",
            "https://h:8443",
            "--ca",
            "ca.pem",
            "--token-file",
            "t",
            "--to-vcenter",
            "--backup",
            "backup-web01-20261124T235901-3fa9c2",
            "--datacenter",
            "dc1",
            "--datastore",
            "ds2",
        ];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv)
    }

    fn restore_of(cli: Cli) -> RestoreArgs {
        let Command::Restore(args) = cli.command else {
            panic!("not restore")
        };
        args
    }

    #[test]
    fn cli_restore_to_vcenter_builds_the_request() {
        let args = restore_of(
            vcenter_args(&[
                "--vm-name",
                "web01-r",
                "--folder",
                "vm/restored",
                "--resource-pool",
                "dc1/host/c1/Resources",
                "--host",
                "esx1",
                "--network-map",
                "VM Network=Restore Net",
                "--network-map",
                "B=C",
                "--power-on",
                "--keep-macs",
                "--disk",
                "2001",
                "--credential",
                "vc1",
                "--json",
            ])
            .unwrap(),
        );

        let req = args.vcenter.request(&args.disk).unwrap();
        assert_eq!(
            (req.target, req.vm_name.as_str()),
            (sendense_types::RestoreTarget::Vcenter, "web01-r")
        );
        assert_eq!(
            (req.datacenter.as_str(), req.datastore.as_str()),
            ("dc1", "ds2")
        );
        assert_eq!(req.folder.as_deref(), Some("vm/restored"));
        assert_eq!(req.resource_pool.as_deref(), Some("dc1/host/c1/Resources"));
        assert_eq!(req.host.as_deref(), Some("esx1"));
        assert_eq!(req.map_network("VM Network"), "Restore Net");
        assert_eq!(req.map_network("B"), "C");
        assert!(req.power_on && req.keep_macs && args.json && !args.vcenter.no_wait);
        assert_eq!(req.disks, Some(vec![DiskKey(2001)]));
        assert_eq!(
            req.credential.map(|c| c.to_string()).as_deref(),
            Some("vc1")
        );
    }

    #[test]
    fn cli_restore_attach_to_targets_existing_vm_with_all_disks() {
        let args = restore_of(vcenter_args(&["--attach-to", "dc1/vm/web01", "--no-wait"]).unwrap());

        let req = args.vcenter.request(&args.disk).unwrap();
        assert_eq!(
            (
                req.target,
                req.vm_name.as_str(),
                req.disks,
                args.vcenter.no_wait
            ),
            (
                sendense_types::RestoreTarget::ExistingVm,
                "dc1/vm/web01",
                None,
                true
            )
        );
    }

    #[test]
    fn cli_restore_to_vcenter_refuses_what_does_not_fit() {
        let cases: [(&[&str], clap::error::ErrorKind); 4] = [
            (
                &["--vm-name", "a", "--to", "/tmp/x"],
                clap::error::ErrorKind::ArgumentConflict,
            ),
            (
                &["--vm-name", "a", "--attach-to", "b"],
                clap::error::ErrorKind::ArgumentConflict,
            ),
            (
                &["--attach-to", "b", "--power-on"],
                clap::error::ErrorKind::ArgumentConflict,
            ),
            (
                &["--vm-name", "a", "--bogus"],
                clap::error::ErrorKind::UnknownArgument,
            ),
        ];
        for (extra, kind) in cases {
            let err = vcenter_args(extra).unwrap_err();
            assert_eq!(err.kind(), kind, "{extra:?}: {err}");
        }
        let no_datastore = Cli::try_parse_from([
            "sendense-client",
            "restore",
            "--hub",
            "https://h:8443",
            "--ca",
            "ca.pem",
            "--token-file",
            "t",
            "--to-vcenter",
            "--backup",
            "backup-web01-20261124T235901-3fa9c2",
            "--datacenter",
            "dc1",
            "--vm-name",
            "a",
        ])
        .unwrap_err();
        assert_eq!(
            no_datastore.kind(),
            clap::error::ErrorKind::MissingRequiredArgument
        );
    }

    #[tokio::test]
    async fn execute_restore_vcenter_flag_without_to_vcenter_is_refused() {
        let cli = restore_args(&[
            "--backup",
            "backup-web01-20261124T235901-3fa9c2",
            "--vm-name",
            "a",
        ])
        .unwrap();

        let err = execute(cli.command).await.unwrap_err();

        assert!(err.to_string().contains("--vm-name"), "{err}");
    }

    #[tokio::test]
    async fn execute_restore_to_file_with_two_disks_is_refused() {
        let cli = restore_args(&[
            "--backup",
            "backup-web01-20261124T235901-3fa9c2",
            "--disk",
            "2001",
        ])
        .unwrap();

        let err = execute(cli.command).await.unwrap_err();

        assert!(err.to_string().contains("one disk"), "{err}");
    }

    #[test]
    fn cli_restore_help_explains_to_vcenter_with_an_example() {
        let help = Cli::command()
            .find_subcommand_mut("restore")
            .unwrap()
            .render_long_help()
            .to_string();

        for flag in [
            "--to-vcenter",
            "--vm-name",
            "--datacenter",
            "--datastore",
            "--folder",
            "--resource-pool",
            "--host",
            "--network-map",
            "--power-on",
            "--keep-macs",
            "--credential",
            "--attach-to",
            "--no-wait",
            "Example: sendense-client restore",
        ] {
            assert!(help.contains(flag), "{flag} missing from:\n{help}");
        }
    }

    #[test]
    fn cli_restore_without_backup_or_instant_is_refused() {
        let err = restore_args(&[]).unwrap_err();

        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    }

    #[tokio::test]
    async fn execute_backup_with_hub_down_names_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("d.raw");
        std::fs::write(&disk, vec![1u8; 65536]).unwrap();
        let ca = dir.path().join("ca.pem");
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(&ca, cert.cert.pem()).unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "t0k3n").unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let cli = Cli::try_parse_from([
            "sendense-client".to_owned(),
            "backup".into(),
            "--hub".into(),
            format!("https://127.0.0.1:{port}"),
            "--ca".into(),
            ca.display().to_string(),
            "--token-file".into(),
            token.display().to_string(),
            "--vm".into(),
            "web01".into(),
            "--disk".into(),
            format!("2000={}", disk.display()),
            "--json".into(),
        ])
        .unwrap();

        let err = execute(cli.command).await.unwrap_err();

        let text = err.to_string();
        assert!(matches!(err, ClientError::HubUnreachable { .. }), "{err:?}");
        assert!(text.contains("connection refused"), "{text}");
        assert!(text.contains("is sendense-hub serve running?"), "{text}");
    }
}
