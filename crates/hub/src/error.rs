//! The hub's error type and its mapping to HTTP statuses (in one place).

use std::path::PathBuf;

use sendense_catalog::CatalogError;
use sendense_types::{
    AgentName, BackupId, BackupStatus, CredentialName, DiskKey, InstantId, JobId, JobStatus,
    PolicyName, VmName,
};
use sendense_vsphere::VsphereError;

/// Everything the backup engine can refuse or fail at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// The catalog refused or failed.
    #[error("Catalog")]
    Catalog(#[from] CatalogError),
    /// A QCOW2 image could not be created, opened, flushed or checked.
    #[error("Image {path}")]
    Image {
        /// The image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: sendense_qcow2::Qcow2Error,
    },
    /// A repository file operation failed.
    #[error("Repository file {path}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The NBD export registry refused.
    #[error("NBD export")]
    Nbd(#[from] sendense_nbd::NbdError),
    /// No VM of that name is registered.
    #[error("Unknown VM {vm}: register it first (POST /api/v1/vms)")]
    VmNotFound {
        /// The name asked for.
        vm: VmName,
    },
    /// No backup has that id.
    #[error("Unknown backup {backup_id}")]
    BackupNotFound {
        /// The id asked for.
        backup_id: BackupId,
    },
    /// An incremental was asked for with nothing to build on.
    #[error(
        "VM {vm} has no completed full backup to base an incremental on: take a full (or use auto)"
    )]
    NoFullBackup {
        /// The VM.
        vm: VmName,
    },
    /// The backup is not in the state the operation needs.
    #[error("Backup {backup_id} is {status}; this needs it {expected}")]
    WrongStatus {
        /// The backup.
        backup_id: BackupId,
        /// Its state.
        status: BackupStatus,
        /// The state needed.
        expected: &'static str,
    },
    /// The backup is running in the catalog but this hub process holds no exports for it.
    #[error("Backup {backup_id} is not being written through this hub process")]
    NotLive {
        /// The backup.
        backup_id: BackupId,
    },
    /// A completion named a disk the backup does not have.
    #[error("Backup {backup_id} has no disk {disk_key}")]
    UnknownDisk {
        /// The backup.
        backup_id: BackupId,
        /// The disk named.
        disk_key: DiskKey,
    },
    /// A completion left out one of the backup's disks.
    #[error("Completion of backup {backup_id} is missing disk {disk_key}")]
    MissingDisk {
        /// The backup.
        backup_id: BackupId,
        /// The disk left out.
        disk_key: DiskKey,
    },
    /// A completion named a disk twice.
    #[error("Completion of backup {backup_id} names disk {disk_key} twice")]
    DuplicateDisk {
        /// The backup.
        backup_id: BackupId,
        /// The disk.
        disk_key: DiskKey,
    },
    /// The finished image failed its consistency check; the backup is failed.
    #[error("Image {path} failed its check: {errors} errors, {leaks} leaks")]
    CheckFailed {
        /// The image.
        path: PathBuf,
        /// Corruptions found.
        errors: u64,
        /// Leaks found.
        leaks: u64,
    },
    /// Restore exports of this backup are open: close them first.
    #[error(
        "Backup {backup_id} has open restore exports: close them first (DELETE /api/v1/backups/{backup_id}/exports)"
    )]
    ExportsOpen {
        /// The backup.
        backup_id: BackupId,
    },
    /// A VM's chains are held by a removal of restore points (or, for a removal, by what it
    /// waited for in vain).
    #[error("VM {vm}'s backup chain is busy: {holder}; try again when it ends")]
    ChainBusy {
        /// The VM.
        vm: VmName,
        /// What holds the chain.
        holder: String,
    },
    /// Protected points cannot be removed.
    #[error(
        "Protected restore points cannot be removed: {backup_ids:?} (unprotect them first: PUT /api/v1/backups/{{id}} {{\"protected\": false}})"
    )]
    Protected {
        /// The protected points asked for.
        backup_ids: Vec<BackupId>,
    },
    /// No instant recovery has that id.
    #[error("Unknown instant recovery {instant_id}")]
    InstantNotFound {
        /// The id asked for.
        instant_id: InstantId,
    },
    /// Instant recoveries read through these points: they cannot be removed or merged.
    #[error(
        "Restore points {backup_ids:?} are read by instant recovery {instant_ids:?}: discard it first (DELETE /api/v1/instant/{{id}})"
    )]
    InstantHeld {
        /// The points asked for that an instant recovery reads.
        backup_ids: Vec<BackupId>,
        /// The instant recoveries reading them.
        instant_ids: Vec<InstantId>,
    },
    /// No restore exports of this backup are open.
    #[error("Backup {backup_id} has no open restore exports")]
    NoExports {
        /// The backup.
        backup_id: BackupId,
    },
    /// An incremental would pass the longest chain the engine opens.
    #[error(
        "VM {vm}'s chain has {length} restore points, the most one chain may hold ({max}): take a full (or use auto)"
    )]
    ChainTooLong {
        /// The VM.
        vm: VmName,
        /// Points in its current chain.
        length: usize,
        /// The most a chain may hold.
        max: usize,
    },
    /// An image of the chain (or of the restore point) is not in the repository.
    #[error("Backup {backup_id} has lost its image {file}: take a full (or use auto)")]
    FilesMissing {
        /// The backup whose file is gone.
        backup_id: BackupId,
        /// The file, relative to the repository.
        file: String,
    },
    /// A disk of the VM is new or resized since the chain's head (auto then takes a full).
    #[error("Disk {disk_key} is new, resized or without a change id since backup {backup_id}")]
    DiskChanged {
        /// The chain's head.
        backup_id: BackupId,
        /// The disk.
        disk_key: DiskKey,
    },
    /// The client's stated base is not the backup the hub would build on.
    #[error(
        "VM {vm}: the client's changes are relative to backup {base}, but the hub's chain ends at {parent}: take a full"
    )]
    BaseMismatch {
        /// The VM.
        vm: VmName,
        /// The base the client stated.
        base: BackupId,
        /// The hub's parent for a new incremental.
        parent: BackupId,
    },
    /// Another call is working on this backup right now.
    #[error("Backup {backup_id} is {state}: try again")]
    Busy {
        /// The backup.
        backup_id: BackupId,
        /// What it is doing.
        state: &'static str,
    },
    /// A `fail` (or shutdown) arrived while the backup was starting: it was failed.
    #[error("Backup {backup_id} was failed while starting: {reason}")]
    StartCancelled {
        /// The backup.
        backup_id: BackupId,
        /// Why it was failed.
        reason: String,
    },
    /// NBD connections still wrote when the backup was to complete; it was failed.
    #[error(
        "Backup {backup_id}: NBD connections to its exports did not end within {seconds} s of the completion request"
    )]
    DrainTimeout {
        /// The backup.
        backup_id: BackupId,
        /// How long the hub waited.
        seconds: u64,
    },
    /// A layer a point reads has no digests: it cannot be verified.
    #[error(
        "Backup {backup_id} has no digests for disk {disk_key} (its client did not send them): it cannot be verified; a new full made by this version's client can"
    )]
    NoDigests {
        /// The backup whose layer has none.
        backup_id: BackupId,
        /// The disk.
        disk_key: DiskKey,
    },
    /// A file-level restore call named a disk the point does not have.
    #[error("Backup {backup_id} has no disk {disk_key}")]
    NoSuchDisk {
        /// The backup.
        backup_id: BackupId,
        /// The disk named.
        disk_key: DiskKey,
    },
    /// A restore point's partition table or file system could not be read as asked.
    #[error("Disk {disk_key} of backup {backup_id}")]
    Files {
        /// The backup.
        backup_id: BackupId,
        /// The disk.
        disk_key: DiskKey,
        /// What the file-system reader said.
        #[source]
        source: sendense_fs::FsError,
    },
    /// A `Range` header outside the file.
    #[error("The range asked for is outside the file ({size} bytes)")]
    RangeNotSatisfiable {
        /// The file's size.
        size: u64,
    },
    /// Too many downloads of restore-point files run at once.
    #[error("{limit} file downloads are running: try again when one has ended")]
    TooManyDownloads {
        /// The hub-wide limit.
        limit: usize,
    },
    /// Verification could not read a point's chain or digests.
    #[error("Verification could not run")]
    Verify(#[source] sendense_image::ImageError),
    /// An image's chain names a file the hub did not write (not `<backup_id>.qcow2`, or raw).
    #[error("{path} is not a restore point image of this repository")]
    NotOurChain {
        /// The file.
        path: PathBuf,
    },
    /// A point of the VM's chain failed verification: an incremental would build on bad data.
    #[error(
        "VM {vm}: backup {backup_id} of its chain failed verification: take a full (or use auto)"
    )]
    ChainFailedVerification {
        /// The VM.
        vm: VmName,
        /// The failed point.
        backup_id: BackupId,
    },
    /// A `vm_config` whose disks are not the backup's disks.
    #[error(
        "The vm_config does not match backup {backup_id}'s disks: config disks the backup lacks: {}; backup disks the config lacks: {}",
        list(not_in_backup),
        list(not_in_config)
    )]
    VmConfigDisks {
        /// The backup.
        backup_id: BackupId,
        /// Disks of the config that the backup does not have.
        not_in_backup: Vec<DiskKey>,
        /// Disks of the backup that the config does not have.
        not_in_config: Vec<DiskKey>,
    },
    /// A whole-VM restore of a point that has no captured configuration.
    #[error(
        "Backup {backup_id} has no captured VM configuration (it was taken before this version captured it): a whole-VM restore needs a backup taken by this version; its disks can still be restored with `sendense-client restore --to FILE`"
    )]
    NoVmConfig {
        /// The point.
        backup_id: BackupId,
    },
    /// A whole-VM restore of a point whose configuration is of a later version.
    #[error(
        "Backup {backup_id}'s VM configuration is version {version}, newer than this hub knows ({known}): restore it with the newer hub, or restore its disks with `sendense-client restore --to FILE`"
    )]
    VmConfigNewer {
        /// The point.
        backup_id: BackupId,
        /// The stored version.
        version: u64,
        /// The newest version this build reads.
        known: u32,
    },
    /// The stored configuration of a point does not decode.
    #[error(
        "Backup {backup_id}'s stored VM configuration is damaged: send it again (PUT /api/v1/backups/{{id}}/vm_config)"
    )]
    VmConfigUnreadable {
        /// The point.
        backup_id: BackupId,
    },
    /// A restore of a point that failed verification.
    #[error(
        "Restore point {backup_id} failed verification: restore an earlier point, or verify it again (POST /api/v1/backups/{{id}}/verify)"
    )]
    PointFailedVerification {
        /// The point.
        backup_id: BackupId,
    },
    /// A restore names disks the point does not hold.
    #[error(
        "Restore point {backup_id} has no disk {} (its disks: {})",
        list(disk_keys),
        list(known)
    )]
    RestoreDisksUnknown {
        /// The point.
        backup_id: BackupId,
        /// The disks asked for that it lacks.
        disk_keys: Vec<DiskKey>,
        /// The disks it holds.
        known: Vec<DiskKey>,
    },
    /// A restore without a credential, and none is known for the point's VM.
    #[error(
        "No vCenter credential known for VM {vm}: name the one whose agent should run the restore (\"credential\")"
    )]
    NoCredentialForRestore {
        /// The VM of the point.
        vm: VmName,
    },
    /// Restore jobs read these points: they cannot be removed or merged until the jobs end.
    #[error(
        "Restore points {} are read by restore job {}: wait for it to end or cancel it (POST /api/v1/jobs/{{id}}/cancel)",
        list(backup_ids),
        list(job_ids)
    )]
    RestoreHeld {
        /// The points asked for that a restore job reads.
        backup_ids: Vec<BackupId>,
        /// The restore jobs reading them.
        job_ids: Vec<JobId>,
    },
    /// An agent asked for a backup none of its jobs works on.
    #[error(
        "Agent {agent} runs no job on backup {backup_id}: an agent may read a backup its own running backup job writes, and open the exports of the point of a restore job it runs"
    )]
    NotYourBackup {
        /// The backup asked for (as given).
        backup_id: String,
        /// The agent asking.
        agent: AgentName,
    },
    /// The repository's file system cannot hold what a backup is estimated to need.
    #[error(
        "VM {vm}: the repository has {free} bytes free but this backup is estimated to need {needed} (plus {reserve} kept free): free space (prune old points: POST /api/v1/vms/{{name}}/prune) or grow the file system"
    )]
    SpaceShort {
        /// The VM.
        vm: VmName,
        /// Bytes estimated.
        needed: u64,
        /// Bytes free.
        free: u64,
        /// Bytes the hub keeps free.
        reserve: u64,
    },
    /// The hub is shutting down and starts nothing new.
    #[error("The hub is shutting down")]
    ShuttingDown,
    /// The credential key could not be used.
    #[error("Credential encryption failed")]
    Crypto,
    /// A blocking worker panicked (a bug).
    #[error("Internal worker failure")]
    Worker,
    /// argon2id could not hash a password, or a stored hash is not a PHC string.
    #[error("Password hashing failed: {reason}")]
    PasswordHash {
        /// What argon2 reported (never the password).
        reason: String,
    },
    /// The hub's TLS material could not be made, read or issued.
    #[error("Cannot prepare the hub's TLS material")]
    TlsMaterial(#[source] sendense_nbd::NbdError),
    /// `cert issue` needs the hub's CA, which is not there.
    #[error(
        "No CA in {dir} ({file} is missing): start the hub once with this --data-dir to create it"
    )]
    NoCa {
        /// The hub's TLS folder.
        dir: PathBuf,
        /// The missing file.
        file: &'static str,
    },
    /// A listen address could not be bound.
    #[error("Cannot listen on {addr}: is another hub running there? (--api / --nbd choose others)")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The `serve --config` file cannot be read.
    #[error("Cannot read the config file {path}")]
    ConfigRead {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The `serve --config` file is not TOML.
    #[error("Config file {path}, line {line}, column {column}: not valid TOML: {reason}")]
    ConfigSyntax {
        /// The file.
        path: PathBuf,
        /// Where (from 1).
        line: usize,
        /// Where in the line (from 1, in characters).
        column: usize,
        /// The TOML parser's complaint.
        reason: String,
    },
    /// The `serve --config` file has a key `serve` does not know.
    #[error(
        "Config file {path}: unknown key {key:?} (the keys are the names of the serve flags, \
         with _ for -, such as data_dir)"
    )]
    ConfigUnknownKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// A value of the `serve --config` file is of the wrong type or does not parse.
    #[error("Config file {path}: bad value for key {key}: {reason}")]
    ConfigValue {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// `serve` was given no data folder.
    #[error("No data folder: give --data-dir DIR, or data_dir in the --config file")]
    NoDataDir,
    /// The webhook URL is unusable (the message leaves the URL out: it may carry a token).
    #[error("The webhook URL is unusable: {reason}")]
    WebhookUrl {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A webhook setting was given without the others it needs.
    #[error("{given} needs {needed}")]
    WebhookIncomplete {
        /// The setting given.
        given: &'static str,
        /// The setting missing.
        needed: &'static str,
    },
    /// The webhook secret file cannot be read.
    #[error("Cannot read the webhook secret file {path}")]
    WebhookSecretFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The webhook secret file is empty.
    #[error("The webhook secret file {path} is empty")]
    WebhookSecretEmpty {
        /// The file.
        path: PathBuf,
    },
    /// An `https` webhook without a CA file, and no system CA bundle found.
    #[error(
        "No system CA bundle found for the https webhook: install ca-certificates or give \
         --webhook-ca-file"
    )]
    WebhookNoCa,
    /// The webhook's CA file is unusable.
    #[error("Webhook CA file {path}: {reason}")]
    WebhookCa {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The webhook's HTTP client cannot be built.
    #[error("Cannot set up the webhook's HTTP client")]
    WebhookClient {
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The key file is gone while the catalog holds credentials sealed with it: a new key
    /// would silently make them unusable.
    #[error(
        "{path} is missing, but the catalog holds {sealed} vCenter credential(s) sealed with it; \
         restore the file (32 bytes, mode 0600) from your copy of the data folder and start \
         again: a new key cannot open them"
    )]
    KeyMissing {
        /// The key file.
        path: PathBuf,
        /// How many sealed credentials the catalog holds.
        sealed: usize,
    },
    /// The credential was stored before its trust choice was kept with it.
    #[error(
        "Credential {name} has no stored trust choice for vCenter's certificate (it predates \
         it): create it again with POST /api/v1/credentials giving ca_pem or insecure: true"
    )]
    NoTrustChoice {
        /// The credential.
        name: CredentialName,
    },
    /// The credential's stored `ca_pem` is unusable.
    #[error("Cannot use the stored ca_pem for vCenter of credential {name}")]
    Trust {
        /// The credential.
        name: CredentialName,
        /// The cause.
        #[source]
        source: Box<VsphereError>,
    },
    /// vCenter refused the credential's user name and password.
    #[error("vCenter {host} refused the login of credential {name} (user {username})")]
    LoginRefused {
        /// The credential.
        name: CredentialName,
        /// Its vCenter.
        host: String,
        /// Its user name.
        username: String,
        /// vCenter's fault.
        #[source]
        source: Box<VsphereError>,
    },
    /// vCenter could not be reached, its certificate did not verify, or it failed.
    #[error("Cannot log in to vCenter {host} with credential {name}")]
    Vcenter {
        /// The credential.
        name: CredentialName,
        /// Its vCenter.
        host: String,
        /// The cause.
        #[source]
        source: Box<VsphereError>,
    },
    /// A job was asked about by an agent it is not assigned to.
    #[error("Job {job_id} is not assigned to agent {agent}; nothing was changed")]
    NotYourJob {
        /// The job.
        job_id: JobId,
        /// The agent that asked.
        agent: AgentName,
    },
    /// An agent asked for another agent's work.
    #[error("Agent {caller} may ask only for its own jobs, not for agent {agent}'s")]
    OtherAgent {
        /// The agent named in the route.
        agent: AgentName,
        /// The agent whose token was used.
        caller: AgentName,
    },
    /// A credential's password was to go to an agent the credential does not name.
    #[error(
        "Credential {name} is not assigned to agent {agent}: its password goes only to its own agent"
    )]
    CredentialNotForAgent {
        /// The credential.
        name: CredentialName,
        /// The agent that would have received it.
        agent: AgentName,
    },
    /// A request names an agent the hub does not know.
    #[error("Unknown agent {agent}: create it first (POST /api/v1/agents)")]
    UnknownAgent {
        /// The agent named.
        agent: AgentName,
    },
    /// Something asked to be deleted is still used by something else.
    #[error("{what} is still in use: {by}")]
    InUse {
        /// What was to be deleted, e.g. `Agent appliance-1`.
        what: String,
        /// What uses it, in words.
        by: String,
    },
    /// A credential names no agent, so no agent can run its jobs.
    #[error(
        "Credential {name} names no agent: store it again with \"agent\" (POST /api/v1/credentials) so an agent can reach its vCenter"
    )]
    CredentialHasNoAgent {
        /// The credential.
        name: CredentialName,
    },
    /// A credential names an agent that does not exist (any more).
    #[error(
        "Credential {name} names agent {agent}, which is unknown: create the agent (POST /api/v1/agents)"
    )]
    CredentialAgentUnknown {
        /// The credential.
        name: CredentialName,
        /// The agent it names.
        agent: AgentName,
    },
    /// A backup of a VM was asked for without a credential, and the hub knows none for it.
    #[error(
        "No credential known for VM {vm}: name one (\"credential\"), or refresh the inventory of its vCenter's credential; for a VM of an agent's own NBD sources name the agent (\"agent\")"
    )]
    NoCredentialForVm {
        /// The VM.
        vm: VmName,
    },
    /// The job is not in the state the call needs.
    #[error("Job {job_id} is {status}; this needs it {expected}")]
    JobWrongStatus {
        /// The job.
        job_id: JobId,
        /// Its state.
        status: JobStatus,
        /// What the call needs.
        expected: &'static str,
    },
    /// The agent has not enrolled yet.
    #[error("Agent {agent} has not enrolled yet (sendense-client agent enroll)")]
    AgentNotEnrolled {
        /// The agent.
        agent: AgentName,
    },
    /// A request field or query value is out of range.
    #[error("Invalid {field}: {reason}")]
    InvalidInput {
        /// The field.
        field: &'static str,
        /// What it must be.
        reason: &'static str,
    },
    /// A policy's schedule is not a calendar event (the source names the bad part).
    #[error("Invalid schedule {schedule:?}")]
    InvalidSchedule {
        /// The schedule as given.
        schedule: String,
        /// What is wrong, and where.
        #[source]
        source: sendense_calendar::CalendarError,
    },
    /// `PUT /api/v1/policies/{name}` with a body naming another policy.
    #[error("The path names policy {path} but the body {body}: a policy keeps its name")]
    PolicyNameMismatch {
        /// The name in the path.
        path: PolicyName,
        /// The name in the body.
        body: PolicyName,
    },
    /// A policy names a credential the hub does not have.
    #[error("Unknown credential {name}: store it first (POST /api/v1/credentials)")]
    PolicyCredentialUnknown {
        /// The credential named.
        name: CredentialName,
    },
    /// An enrollment's certificate signing request could not be signed.
    #[error("Cannot sign the certificate signing request (csr_pem)")]
    Csr(#[source] sendense_nbd::NbdError),
    /// A `prune` or `verify` job the hub runs itself cannot be cancelled once it runs.
    #[error("Job {job_id} is running inside the hub and runs to its end: it cannot be cancelled")]
    HubJobRunning {
        /// The job.
        job_id: JobId,
    },
    /// An uploaded digest file does not decode (the source says why).
    #[error("Digests of disk {disk_key} of backup {backup_id} refused")]
    DigestsMalformed {
        /// The backup.
        backup_id: BackupId,
        /// The disk.
        disk_key: DiskKey,
        /// What the decoder refused.
        #[source]
        source: sendense_digest::DigestError,
    },
    /// An uploaded digest file describes a disk of another size.
    #[error(
        "Digests of disk {disk_key} of backup {backup_id} refused: they describe a {found}-byte disk, the disk has {capacity} bytes"
    )]
    DigestsWrongSize {
        /// The backup.
        backup_id: BackupId,
        /// The disk.
        disk_key: DiskKey,
        /// The size the file describes.
        found: u64,
        /// The disk's capacity.
        capacity: u64,
    },
    /// An uploaded digest file is larger than any of a disk of its capacity can be.
    #[error(
        "Digests of disk {disk_key} of backup {backup_id} refused: the body passes {limit} bytes, the largest digest file of this disk"
    )]
    DigestsTooLarge {
        /// The backup.
        backup_id: BackupId,
        /// The disk.
        disk_key: DiskKey,
        /// The largest body accepted.
        limit: u64,
    },
    /// A sealed object or a manifest of the object tier was refused.
    #[error("Object {object} of the object tier")]
    Tier {
        /// The object (its name in the bucket).
        object: String,
        /// What is wrong.
        #[source]
        source: sendense_tier::TierError,
    },
    /// An object-store target refused or failed a request.
    #[error("Target {target}: {operation}")]
    ObjectStore {
        /// The target.
        target: sendense_types::TargetName,
        /// What the hub asked.
        operation: String,
        /// The store's answer.
        #[source]
        source: Box<object_store::Error>,
    },
    /// An object read back from a target does not match what the hub uploaded.
    #[error(
        "Copy of backup {backup_id} to {target}: object {object} read back does not match its SHA-256"
    )]
    CopyMismatch {
        /// The point.
        backup_id: BackupId,
        /// The target.
        target: sendense_types::TargetName,
        /// The object.
        object: String,
    },
    /// A point's local files cannot be dropped: no target holds a verified copy of it.
    #[error(
        "Backup {backup_id} has no verified copy on any target: copy it first (POST /api/v1/backups/{backup_id}/copy)"
    )]
    NoVerifiedCopy {
        /// The point.
        backup_id: BackupId,
    },
    /// The target's bucket cannot keep objects locked (S3 Object Lock).
    #[error(
        "Target {target} asks for object_lock_days = {days}, but its bucket does not support Object Lock: {reason}"
    )]
    ObjectLockUnsupported {
        /// The target.
        target: sendense_types::TargetName,
        /// The days asked for.
        days: u32,
        /// What the store answered.
        reason: String,
    },
    /// The object tier's key file is missing while targets or copies exist, or unreadable.
    #[error(
        "Object tier key {path} is missing or not 32 bytes: restore it (sendense-hub ctl target import-key) before using targets"
    )]
    TierKey {
        /// The key file.
        path: PathBuf,
    },
}

/// How a caller should read a [`HubError`]: the HTTP status class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// 400: the request is malformed or inconsistent.
    BadRequest,
    /// 404: the thing named does not exist.
    NotFound,
    /// 409: the request conflicts with the current state.
    Conflict,
    /// 401: a secret presented (an enrollment token) is wrong or expired.
    Unauthorized,
    /// 403: the caller may not do this (an agent acting on another agent's job).
    Forbidden,
    /// 503: the hub is shutting down.
    Unavailable,
    /// 502: a system the hub talks to on the caller's behalf (vCenter) refused or failed.
    Upstream,
    /// 507: the repository's file system cannot hold what the request needs.
    InsufficientStorage,
    /// 422: a restore point's partition or file system is damaged or of a kind not read.
    Unprocessable,
    /// 416: a `Range` outside the file.
    RangeNotSatisfiable,
    /// 500: the hub failed.
    Internal,
}

impl HubError {
    /// The stable classification of this error.
    pub fn kind(&self) -> ErrorKind {
        use sendense_catalog::ErrorKind as C;
        match self {
            Self::Catalog(e) => match e.kind() {
                C::NotFound => ErrorKind::NotFound,
                C::Conflict => ErrorKind::Conflict,
                C::Invalid => ErrorKind::BadRequest,
                C::Unauthorized => ErrorKind::Unauthorized,
                _ => ErrorKind::Internal,
            },
            Self::VmNotFound { .. }
            | Self::BackupNotFound { .. }
            | Self::NoExports { .. }
            | Self::InstantNotFound { .. } => ErrorKind::NotFound,
            Self::NoFullBackup { .. }
            | Self::WrongStatus { .. }
            | Self::NotLive { .. }
            | Self::ExportsOpen { .. }
            | Self::InstantHeld { .. }
            | Self::ChainBusy { .. }
            | Self::Protected { .. }
            | Self::ChainTooLong { .. }
            | Self::FilesMissing { .. }
            | Self::DiskChanged { .. }
            | Self::BaseMismatch { .. }
            | Self::Busy { .. }
            | Self::StartCancelled { .. }
            | Self::DrainTimeout { .. }
            | Self::NoDigests { .. }
            | Self::ChainFailedVerification { .. }
            | Self::NoVmConfig { .. }
            | Self::VmConfigNewer { .. }
            | Self::VmConfigUnreadable { .. }
            | Self::PointFailedVerification { .. }
            | Self::RestoreHeld { .. } => ErrorKind::Conflict,
            Self::VmConfigDisks { .. }
            | Self::RestoreDisksUnknown { .. }
            | Self::NoCredentialForRestore { .. } => ErrorKind::BadRequest,
            Self::NotYourBackup { .. } => ErrorKind::Forbidden,
            Self::SpaceShort { .. } => ErrorKind::InsufficientStorage,
            Self::ShuttingDown => ErrorKind::Unavailable,
            Self::HubJobRunning { .. } => ErrorKind::Conflict,
            Self::NotYourJob { .. }
            | Self::OtherAgent { .. }
            | Self::CredentialNotForAgent { .. } => ErrorKind::Forbidden,
            Self::UnknownAgent { .. }
            | Self::NoCredentialForVm { .. }
            | Self::InvalidInput { .. }
            | Self::InvalidSchedule { .. }
            | Self::PolicyNameMismatch { .. }
            | Self::PolicyCredentialUnknown { .. }
            | Self::Csr(_) => ErrorKind::BadRequest,
            Self::CredentialHasNoAgent { .. }
            | Self::InUse { .. }
            | Self::CredentialAgentUnknown { .. }
            | Self::JobWrongStatus { .. }
            | Self::AgentNotEnrolled { .. } => ErrorKind::Conflict,
            Self::NoTrustChoice { .. } => ErrorKind::Conflict,
            Self::Trust { .. } => ErrorKind::BadRequest,
            Self::LoginRefused { .. } | Self::Vcenter { .. } => ErrorKind::Upstream,
            Self::UnknownDisk { .. } | Self::MissingDisk { .. } | Self::DuplicateDisk { .. } => {
                ErrorKind::BadRequest
            }
            Self::DigestsMalformed { .. }
            | Self::DigestsWrongSize { .. }
            | Self::DigestsTooLarge { .. } => ErrorKind::BadRequest,
            Self::NoSuchDisk { .. } => ErrorKind::NotFound,
            Self::Files { source, .. } => {
                use sendense_fs::FsErrorKind as F;
                match source.kind() {
                    F::NotFound | F::NoSuchPartition => ErrorKind::NotFound,
                    F::NotADirectory | F::NotAFile | F::BadPath => ErrorKind::BadRequest,
                    F::Unsupported | F::Corrupt | F::TooLarge => ErrorKind::Unprocessable,
                    _ => ErrorKind::Internal,
                }
            }
            Self::RangeNotSatisfiable { .. } => ErrorKind::RangeNotSatisfiable,
            Self::ObjectStore { .. } => ErrorKind::Upstream,
            Self::NoVerifiedCopy { .. } => ErrorKind::Conflict,
            Self::ObjectLockUnsupported { .. } => ErrorKind::BadRequest,
            Self::TooManyDownloads { .. } => ErrorKind::Unavailable,
            _ => ErrorKind::Internal,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn image(path: impl Into<PathBuf>, source: sendense_qcow2::Qcow2Error) -> Self {
        Self::Image {
            path: path.into(),
            source,
        }
    }
}

/// `a, b, c`, or `none`.
fn list<T: std::fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        return "none".to_owned();
    }
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
