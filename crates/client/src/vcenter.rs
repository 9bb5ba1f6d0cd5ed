//! `sendense-client backup --vcenter ...`: one VM's disks from vCenter into the hub.
//!
//! The vCenter side (sessions, snapshots, CBT, datastore reads) is `sendense-vsphere`; this
//! module drives it together with the hub and the transfer engine, exactly as
//! [`crate::backup`] does for local disks.
//!
//! # Sequence ([`run_until`])
//!
//! 1. Log in to vCenter (with a password, or with a session the hub issues for a stored
//!    credential, `--vcenter-credential`: see [`crate::credential`]); find the VM; its vCenter name is its name at the hub.
//! 2. Read the hub's chain of the VM (404 or empty: a first full). The last completed backup
//!    gives each disk's previous change id and capacity.
//! 3. Decide full or incremental from the VM's devices as they are now
//!    ([`sendense_vsphere::backup::full_reason_before_snapshot`]: CBT off, a disk's key, UUID or capacity
//!    changed, a CBT epoch changed, no previous backup, or `--type full`), with a log line saying
//!    why. `--type incremental` when a full is needed is refused (nothing is started at the hub).
//!    The hub is asked for `full` or `incremental` explicitly, never `auto`.
//! 4. **One run per VM**: register the VM's disks and start the backup at the hub *before*
//!    touching any snapshot. The hub's start is its per-VM lock: a second run of the VM gets
//!    409 and stops with [`ClientError::VmBusy`], having done nothing in vCenter.
//! 5. [`VsphereBackup::prepare`]: remove leftover snapshots of ours except those a running
//!    backup owns (their moref recorded at the hub), create one snapshot named
//!    `sendense-<backup id>`, read change ids from it, compute extents per disk. Then record the
//!    snapshot's moref with the backup (`POST /api/v1/backups/{id}/snapshot`).
//! 6. If the snapshot reveals a full is needed after all (`QueryChangedDiskAreas` refuses the
//!    stored change id, a CBT epoch changed since step 3): the incremental is failed at the hub
//!    with the reason ("restarted as a full backup on a new chain: ...") and a full started in
//!    its place, reading the same snapshot; `--type incremental` fails instead. A disk new to
//!    the VM needs no full of the VM: the hub answers `parent_change_id: null` for it and all
//!    its allocated areas are sent ([`DiskMode::New`]).
//! 7. Transfer every disk at once with the client's engine: a full sends the allocated areas
//!    (`*`), an incremental the changed areas (zero runs as `WRITE_ZEROES`), after checking each
//!    disk's parent change id at the hub equals the base CBT answered for.
//!    Before the transfer, the VM's configuration read from the snapshot
//!    ([`Prepared::vm_config`]) is stored with the backup (`PUT /api/v1/backups/{id}/vm_config`;
//!    a hub without the route only earns a warning).
//! 8. `complete` with each disk's new change id, only after the transfer.
//! 9. Remove the snapshot, always. On any error or on `shutdown` (Ctrl-C, SIGTERM, SIGHUP)
//!    after the backup was started, the snapshot is removed, then the hub is told `fail` with
//!    the reason (so the VM stays locked until its snapshot is gone); the error is returned.
//!
//! A signal while the snapshot is being created is acted on once `prepare` has returned, so
//! the snapshot it created can be removed.

use std::collections::BTreeMap;
use std::pin::pin;
use std::sync::Arc;
use std::time::Instant;

use sendense_transfer::engine::{DiskPlan, DiskStats, TransferOptions};
use sendense_transfer::progress::{NoProgress, Progress};
use sendense_types::api::{MAX_CHAIN_LENGTH, SnapshotRequest};
use sendense_types::{
    Backup, BackupId, BackupQuery, BackupStatus, BackupSummary, BackupType, Chain, CredentialName,
    DiskKey, DiskSpec, RegisterVmRequest, StartBackupRequest, VmConfig, VmName,
};
use tokio::sync::watch;
use tracing::{Instrument, error, info, info_span, warn};

use sendense_vsphere::backup::{check_vm_disks, full_reason_before_snapshot};
use sendense_vsphere::{
    ConnectOptions, DiskMode, Login, MoRef, PrepareOptions, Prepared, PreviousDisk,
    SNAPSHOT_PREFIX, Session, TlsMode, VsphereBackup, VsphereError, read_password_file,
};

use crate::backup::{SendDisk, hub_disk, transfer_and_complete};
use crate::cli::VcenterRequest;
use crate::credential::HubSessionIssuer;
use crate::error::ClientError;
use crate::hub::{HubClient, HubOptions};

/// Everything a vCenter backup needs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct VcenterBackupOptions {
    /// The hub.
    pub hub: HubOptions,
    /// vCenter address, login, TLS and timeouts. With [`Self::credential`], the login and
    /// (when empty) the address come from the hub.
    pub connect: ConnectOptions,
    /// Log in with this credential stored at the hub (`--vcenter-credential`).
    pub credential: Option<CredentialName>,
    /// The VM's inventory path or name in vCenter.
    pub vm: String,
    /// Full, incremental or auto.
    pub backup_type: BackupType,
    /// Quiesce the guest when snapshotting.
    pub quiesce: bool,
    /// Engine tuning.
    pub transfer: TransferOptions,
    /// Where progress goes.
    pub progress: Arc<dyn Progress>,
    /// Told the id of the backup at the hub as soon as it is started (and again when an
    /// incremental is restarted as a full): an agent reports it in its heartbeats.
    pub started: Option<Arc<watch::Sender<Option<BackupId>>>>,
}

impl VcenterBackupOptions {
    /// Options with defaults: auto type, no quiescing, default transfer, no progress display.
    #[must_use]
    pub fn new(hub: HubOptions, connect: ConnectOptions, vm: &str) -> Self {
        Self {
            hub,
            connect,
            credential: None,
            vm: vm.to_owned(),
            backup_type: BackupType::Auto,
            quiesce: false,
            transfer: TransferOptions::default(),
            progress: Arc::new(NoProgress),
            started: None,
        }
    }

    fn tell_started(&self, backup_id: &BackupId) {
        if let Some(started) = &self.started {
            started.send_replace(Some(backup_id.clone()));
        }
    }
}

/// `sendense-client backup --vcenter ...`: the command line's request, run.
///
/// # Errors
/// See [`options_from_request`] and [`run`].
pub async fn backup(request: &VcenterRequest) -> Result<BackupSummary, ClientError> {
    run(options_from_request(request)?).await
}

/// Turns the command line's request into options (reads the password file).
///
/// # Errors
/// [`VsphereError::PasswordFile`]; [`ClientError::MissingArgument`] when a vCenter flag is
/// absent; [`ClientError::InvalidCredentialName`].
pub fn options_from_request(request: &VcenterRequest) -> Result<VcenterBackupOptions, ClientError> {
    let v = &request.vcenter;
    let missing = |flag: &'static str| ClientError::MissingArgument { flag };
    let tls = match (&v.vcenter_ca, v.insecure) {
        (Some(ca), _) => TlsMode::CaFile(ca.clone()),
        (None, true) => TlsMode::Insecure,
        (None, false) => return Err(missing("--vcenter-ca or --insecure")),
    };
    let (connect, credential) = match &v.vcenter_credential {
        Some(name) => {
            let name = CredentialName::try_from(name.as_str()).map_err(|e| {
                ClientError::InvalidCredentialName {
                    name: name.clone(),
                    reason: e.to_string(),
                }
            })?;
            // The login comes from the hub; the address too unless --vcenter overrides it.
            let address = v.vcenter.as_deref().unwrap_or_default();
            // A placeholder login: `run` replaces it with the hub's sessions.
            let connect = ConnectOptions::with_login(address, Login::password("", ""), tls);
            (connect, Some(name))
        }
        None => {
            let address = v.vcenter.as_deref().ok_or_else(|| missing("--vcenter"))?;
            let user = v
                .vcenter_user
                .as_deref()
                .ok_or_else(|| missing("--vcenter-user (or --vcenter-credential NAME)"))?;
            let password_file = v
                .vcenter_password_file
                .as_deref()
                .ok_or_else(|| missing("--vcenter-password-file"))?;
            let password = read_password_file(password_file)?;
            (ConnectOptions::new(address, user, &password, tls), None)
        }
    };
    let mut options = VcenterBackupOptions::new(request.hub.clone(), connect, &request.vm);
    options.credential = credential;
    options.backup_type = request.backup_type;
    options.quiesce = v.quiesce;
    options.transfer = request.transfer;
    options.progress = Arc::clone(&request.progress);
    Ok(options)
}

/// Runs a vCenter backup; Ctrl-C (SIGINT), SIGTERM or SIGHUP removes the snapshot, fails the
/// backup on the hub and returns [`ClientError::Interrupted`].
///
/// # Errors
/// See [`run_until`].
pub async fn run(options: VcenterBackupOptions) -> Result<BackupSummary, ClientError> {
    // The signal handlers are installed now, not at first poll: a signal during login or the
    // snapshot is not lost (and does not kill the process with the snapshot left).
    run_until(options, sendense_io::signal::stopped()).await
}

/// Runs a vCenter backup until done or until `shutdown` resolves (see the module docs).
///
/// # Errors
/// vCenter errors, hub errors, transfer errors, [`ClientError::IncrementalImpossible`],
/// [`ClientError::Interrupted`]. Whatever the error, the snapshot has been removed (or the
/// removal's failure logged) and a started backup failed at the hub before this returns.
pub async fn run_until(
    options: VcenterBackupOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<BackupSummary, ClientError> {
    let span = info_span!("vcenter_backup", vm = %options.vm);
    run_inner(options, shutdown).instrument(span).await
}

async fn run_inner(
    options: VcenterBackupOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<BackupSummary, ClientError> {
    let started = Instant::now();
    let mut shutdown = pin!(shutdown);
    let hub = HubClient::new(&options.hub)?;
    let connect = match &options.credential {
        None => options.connect.clone(),
        Some(name) => {
            let issuer = HubSessionIssuer::new(hub.clone(), name.clone());
            let host = issuer.open().await?;
            let address = if options.connect.address.is_empty() {
                host
            } else {
                options.connect.address.clone()
            };
            let mut connect = options.connect.clone();
            connect.address = address;
            connect.login = Login::Issued(Arc::new(issuer));
            connect
        }
    };
    let session = Session::connect(connect).await?;
    let result = with_session(&options, &hub, &session, shutdown.as_mut(), started).await;
    if let Err(e) = session.logout().await {
        warn!(error = %e, "vCenter logout failed");
    }
    result
}

async fn with_session(
    options: &VcenterBackupOptions,
    hub: &HubClient,
    session: &Session,
    shutdown: std::pin::Pin<&mut (impl Future<Output = ()> + Send)>,
    started: Instant,
) -> Result<BackupSummary, ClientError> {
    let vm_ref = session.find_vm(&options.vm).await?;
    let vm_info = session.vm_info(&vm_ref).await?;
    let vm_name = VmName::try_from(vm_info.name.as_str()).map_err(|e| ClientError::HubVmName {
        name: vm_info.name.clone(),
        reason: e.to_string(),
    })?;
    check_vm_disks(&vm_info)?;
    let (previous, chain_reason) = previous_disks(hub, &vm_name).await?;
    let mut full_reason = None;
    // The type is decided from the VM's devices now, before the snapshot: the hub's start is the
    // per-VM lock and must come first. The snapshot may still force a full (see `locked`).
    let backup_type = match (
        options.backup_type,
        chain_reason.or_else(|| full_reason_before_snapshot(&vm_info, &previous)),
    ) {
        (BackupType::Full, _) => {
            info!(vm = %vm_name, reason = "a full backup was requested", "full backup on a new chain");
            BackupType::Full
        }
        (BackupType::Incremental, Some(reason)) => {
            return Err(ClientError::IncrementalImpossible { reason });
        }
        (_, Some(reason)) => {
            info!(vm = %vm_name, %reason, "full backup on a new chain");
            full_reason = Some(reason);
            BackupType::Full
        }
        (_, None) => {
            info!(vm = %vm_name, "incremental backup from CBT");
            BackupType::Incremental
        }
    };
    register(hub, &vm_name, &vm_info).await?;
    // One run per VM: nothing in vCenter is touched before the hub's start succeeded.
    let backup = start(hub, &vm_name, backup_type).await?;
    info!(backup_id = %backup.backup_id, backup_type = %backup.backup_type, "backup started");
    options.tell_started(&backup.backup_id);

    let mut current = Some(backup);
    let (work, removed) = locked(
        options,
        hub,
        session,
        &previous,
        &mut current,
        &mut full_reason,
        shutdown,
    )
    .await;
    let result = match (work, current) {
        (Ok(stats), Some(backup)) => hub.backup(&backup.backup_id).await.map(|final_state| {
            let mut summary =
                crate::backup::summary(&final_state, &stats, started.elapsed().as_secs_f64());
            summary.full_reason = full_reason;
            summary
        }),
        (Ok(_), None) => Err(ClientError::HubState {
            what: "no backup at the hub after the transfer",
        }),
        (Err(e), current) => {
            // The snapshot is gone (or its removal failed) before the hub lets the VM go.
            if let Some(backup) = current {
                let reason = sendense_io::error_chain(&e);
                crate::backup::fail_at_hub(hub, &backup.backup_id, &reason).await;
            }
            Err(e)
        }
    };
    match (result, removed) {
        (Ok(summary), Ok(())) => Ok(summary),
        (Ok(summary), Err(source)) => Err(ClientError::SnapshotLeft {
            backup_id: summary.backup_id.to_string(),
            source: Box::new(source),
        }),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(ce)) => {
            error!(error = %ce, "the snapshot could not be removed: remove it in vCenter");
            Err(e)
        }
    }
}

/// Registers the VM's disks (keys and capacities as vCenter reports them now).
async fn register(
    hub: &HubClient,
    vm_name: &VmName,
    info: &sendense_vsphere::VmInfo,
) -> Result<(), ClientError> {
    let mut specs = Vec::with_capacity(info.disks.len());
    for d in &info.disks {
        let key = u32::try_from(d.key).map_err(|_| VsphereError::InvalidNumber {
            field: "key",
            value: d.key.to_string(),
        })?;
        specs.push(DiskSpec {
            key: DiskKey(key),
            capacity_bytes: d.capacity,
        });
    }
    let register =
        RegisterVmRequest::new(vm_name.clone(), specs).map_err(|e| ClientError::HubVmName {
            name: vm_name.to_string(),
            reason: e.to_string(),
        })?;
    match hub.register_vm(&register).await {
        Ok(_) => Ok(()),
        // The hub refuses to change the disks of a VM whose backup is running.
        Err(e @ ClientError::HubStatus { status: 409, .. }) if running_elsewhere(&e) => {
            Err(ClientError::VmBusy {
                vm: vm_name.to_string(),
                source: Box::new(e),
            })
        }
        Err(e) => Err(e),
    }
}

/// Starts a backup at the hub; a 409 (another backup of the VM is running) is
/// [`ClientError::VmBusy`].
async fn start(
    hub: &HubClient,
    vm_name: &VmName,
    backup_type: BackupType,
) -> Result<Backup, ClientError> {
    let request = StartBackupRequest {
        vm_name: vm_name.clone(),
        backup_type,
        base_backup_id: None,
    };
    match hub.start_backup(&request).await {
        Ok(backup) => Ok(backup),
        Err(e @ ClientError::HubStatus { status: 409, .. }) if running_elsewhere(&e) => {
            Err(ClientError::VmBusy {
                vm: vm_name.to_string(),
                source: Box::new(e),
            })
        }
        Err(e) => Err(e),
    }
}

/// Whether a hub 409 says a backup of the VM is in progress (other 409s, such as an incremental
/// without a chain, keep their own message).
fn running_elsewhere(e: &ClientError) -> bool {
    matches!(e, ClientError::HubStatus { message, .. } if message.contains("in progress") || message.contains("running"))
}

/// The snapshots running backups of the VM own (other than `ours`), by managed-object id.
async fn owned_snapshots(
    hub: &HubClient,
    vm_name: &VmName,
    ours: &BackupId,
) -> Result<Vec<String>, ClientError> {
    let query = BackupQuery {
        vm_name: Some(vm_name.clone()),
        status: Some(BackupStatus::Running),
    };
    let running = hub.backups(&query).await?;
    let mut owned = Vec::new();
    for b in running.iter().filter(|b| &b.backup_id != ours) {
        match hub.backup_snapshot(&b.backup_id).await {
            Ok(s) => owned.extend(s.snapshot_moref),
            // It ended in between: its snapshot, if left, is a leftover.
            Err(ClientError::HubStatus { status: 404, .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(owned)
}

/// Records our snapshot with the backup at the hub.
async fn record_snapshot(
    hub: &HubClient,
    backup: &Backup,
    snapshot: &MoRef,
) -> Result<(), ClientError> {
    let request =
        SnapshotRequest::new(snapshot.value.clone()).map_err(|_| ClientError::HubState {
            what: "a snapshot id the hub cannot record",
        })?;
    hub.record_snapshot(&backup.backup_id, &request).await?;
    info!(backup_id = %backup.backup_id, snapshot = %snapshot.value, "snapshot recorded with the backup");
    Ok(())
}

/// Everything done while the hub holds the VM for `current`: remove leftover snapshots (not
/// those running backups own), snapshot, record it, maybe restart as a full, transfer,
/// complete. The snapshot is removed before this returns (second result). `current` is the
/// backup at the hub to fail on error (`None` when none is held).
async fn locked(
    options: &VcenterBackupOptions,
    hub: &HubClient,
    session: &Session,
    previous: &BTreeMap<DiskKey, PreviousDisk>,
    current: &mut Option<Backup>,
    full_reason: &mut Option<String>,
    mut shutdown: std::pin::Pin<&mut (impl Future<Output = ()> + Send)>,
) -> (Result<Vec<DiskStats>, ClientError>, Result<(), ClientError>) {
    let Some(backup) = current.as_ref() else {
        return (
            Err(ClientError::HubState {
                what: "no backup started",
            }),
            Ok(()),
        );
    };
    let keep = match owned_snapshots(hub, &backup.vm_name, &backup.backup_id).await {
        Ok(keep) => keep,
        Err(e) => return (Err(e), Ok(())),
    };
    let prepare_options = PrepareOptions {
        quiesce: options.quiesce,
        force_full: backup.backup_type == BackupType::Full,
        snapshot_name: Some(format!("{SNAPSHOT_PREFIX}{}", backup.backup_id)),
        keep_snapshots: keep,
    };

    // Not cancellable half-way: a snapshot created by a dropped `prepare` would be left.
    let mut interrupted = false;
    let prepared = {
        let mut prepare = pin!(VsphereBackup::prepare(
            session,
            &options.vm,
            previous,
            &prepare_options
        ));
        loop {
            tokio::select! {
                r = &mut prepare => break r,
                () = &mut shutdown, if !interrupted => {
                    warn!("interrupted: waiting for the snapshot to be created, to remove it");
                    interrupted = true;
                }
            }
        }
    };
    let mut prepared = match prepared {
        Ok(p) => p,
        // `prepare` removed its snapshot itself.
        Err(e) => return (Err(e.into()), Ok(())),
    };
    let cleanup = prepared.cleanup_handle();
    let result = if interrupted {
        Err(ClientError::Interrupted)
    } else {
        with_snapshot(options, hub, &mut prepared, current, full_reason, shutdown).await
    };
    // Always remove the snapshot, success or failure.
    let removed = match prepared.finish().await {
        Ok(()) => Ok(()),
        Err(first) => {
            warn!(error = %first, "removing the snapshot failed; trying once more");
            cleanup.remove().await
        }
    };
    (result, removed.map_err(ClientError::from))
}

async fn with_snapshot(
    options: &VcenterBackupOptions,
    hub: &HubClient,
    prepared: &mut Prepared,
    current: &mut Option<Backup>,
    full_reason: &mut Option<String>,
    shutdown: std::pin::Pin<&mut (impl Future<Output = ()> + Send)>,
) -> Result<Vec<DiskStats>, ClientError> {
    let Some(backup) = current.as_ref() else {
        return Err(ClientError::HubState {
            what: "no backup started",
        });
    };
    record_snapshot(hub, backup, &prepared.snapshot).await?;
    match (backup.backup_type, prepared.full_reason()) {
        (BackupType::Incremental, Some(reason)) => {
            if options.backup_type == BackupType::Incremental {
                return Err(ClientError::IncrementalImpossible { reason });
            }
            // CBT said no only once the snapshot existed: the incremental the hub started is
            // failed, saying why, and a full started in its place on the same snapshot.
            warn!(%reason, "the incremental is not possible: failing it at the hub and starting a full on a new chain");
            *full_reason = Some(reason.clone());
            let vm_name = backup.vm_name.clone();
            if let Some(old) = current.take() {
                crate::backup::fail_at_hub(
                    hub,
                    &old.backup_id,
                    &format!("restarted as a full backup on a new chain: {reason}"),
                )
                .await;
            }
            let full = start(hub, &vm_name, BackupType::Full).await.map_err(|e| {
                ClientError::RestartRefused {
                    vm: vm_name.to_string(),
                    reason: reason.clone(),
                    source: Box::new(e),
                }
            })?;
            info!(backup_id = %full.backup_id, %reason, "full backup started instead");
            options.tell_started(&full.backup_id);
            let full = current.insert(full);
            record_snapshot(hub, full, &prepared.snapshot).await?;
            prepared.promote_to_full(&reason).await?;
        }
        (BackupType::Full, _)
            if !prepared
                .disks
                .iter()
                .all(|d| matches!(d.mode, DiskMode::Full { .. })) =>
        {
            prepared
                .promote_to_full("the hub started a full backup")
                .await?;
        }
        _ => {}
    }
    let Some(backup) = current.as_ref() else {
        return Err(ClientError::HubState {
            what: "no backup started",
        });
    };
    if let Some(config) = &prepared.vm_config {
        store_vm_config(hub, &backup.backup_id, config).await?;
    }
    let work = async {
        let disks = plan_vcenter(prepared, backup)?;
        transfer_and_complete(
            hub,
            backup,
            disks,
            options.transfer,
            options.progress.as_ref(),
        )
        .await
    };
    tokio::select! {
        r = work => r,
        () = shutdown => Err(ClientError::Interrupted),
    }
}

/// Stores the VM's configuration captured from the snapshot with the backup
/// (`PUT /api/v1/backups/{id}/vm_config`), before the data moves and so before `complete`. A hub
/// without the route (404) keeps backups working: a warning says whole-VM restores of this
/// point will not be possible.
///
/// # Errors
/// Any other hub error.
async fn store_vm_config(
    hub: &HubClient,
    backup_id: &BackupId,
    config: &VmConfig,
) -> Result<(), ClientError> {
    match hub.put_vm_config(backup_id, config).await {
        Ok(()) => {
            info!(%backup_id, "VM configuration stored with the backup");
            Ok(())
        }
        Err(e) if e.is_missing_route() => {
            warn!(%backup_id, error = %e, "the hub does not store VM configurations; a whole-VM restore of this backup will not be possible");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The previous change ids per disk (from the hub's last completed backup of the VM), and why
/// the hub's chain itself needs a new full, if it does ([`chain_full_reason`]).
async fn previous_disks(
    hub: &HubClient,
    vm: &VmName,
) -> Result<(BTreeMap<DiskKey, PreviousDisk>, Option<String>), ClientError> {
    let chain = match hub.chain(vm).await {
        Ok(chain) => chain,
        Err(ClientError::HubStatus { status: 404, .. }) => {
            info!(vm = %vm, "the hub has no backup of this VM: first full");
            return Ok((BTreeMap::new(), None));
        }
        Err(e) => return Err(e),
    };
    Ok((previous_from_chain(&chain), chain_full_reason(&chain)))
}

/// Why the next backup must start a new chain although CBT could continue this one: the chain
/// already holds [`MAX_CHAIN_LENGTH`] points (the hub refuses an incremental past it), or one of
/// its points lost its files.
#[must_use]
pub fn chain_full_reason(chain: &Chain) -> Option<String> {
    let completed: Vec<_> = chain
        .backups
        .iter()
        .filter(|b| b.status == BackupStatus::Completed)
        .collect();
    if completed.len() >= MAX_CHAIN_LENGTH {
        return Some(format!(
            "the chain already holds {} restore points (at most {MAX_CHAIN_LENGTH})",
            completed.len()
        ));
    }
    completed.iter().find(|b| b.files_missing).map(|b| {
        format!(
            "the files of {} in the chain are missing from the hub",
            b.backup_id
        )
    })
}

/// Per disk, the change id and capacity of the chain's last completed backup.
#[must_use]
pub fn previous_from_chain(chain: &Chain) -> BTreeMap<DiskKey, PreviousDisk> {
    chain
        .backups
        .iter()
        .rev()
        .find(|b| b.status == BackupStatus::Completed)
        .map(|b| {
            b.disks
                .iter()
                .map(|d| {
                    (
                        d.disk_key,
                        PreviousDisk {
                            change_id: d.change_id.clone(),
                            capacity: Some(d.capacity_bytes),
                            uuid: None,
                        },
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// What to send of each disk of the snapshot, given the backup the hub started: the disks must
/// match the hub's (capacity, base change id, backup type).
///
/// # Errors
/// [`ClientError::DiskMismatch`], [`ClientError::BaseMismatch`].
fn plan_vcenter(prepared: &Prepared, backup: &Backup) -> Result<Vec<SendDisk>, ClientError> {
    let mismatch = |key: DiskKey, reason: &'static str| ClientError::DiskMismatch {
        disk_key: key.get(),
        reason,
    };
    let mut disks = Vec::with_capacity(prepared.disks.len());
    for d in &prepared.disks {
        let at_hub = hub_disk(backup, d.key)?;
        if at_hub.capacity_bytes != d.capacity {
            return Err(mismatch(
                d.key,
                "the disk's capacity at the snapshot differs from the one registered at the hub",
            ));
        }
        let plan = match (&d.mode, backup.backup_type) {
            (DiskMode::Incremental { base }, BackupType::Incremental) => {
                if at_hub.parent_change_id.as_ref() != Some(base) {
                    return Err(ClientError::BaseMismatch {
                        disk_key: d.key.get(),
                        base: base.to_string(),
                        hub: at_hub.parent_change_id.as_ref().map(ToString::to_string),
                    });
                }
                DiskPlan::Changed(d.extents.clone())
            }
            // A disk new to the VM: the hub's image of it has no parent, so all its data.
            (DiskMode::New, BackupType::Incremental) => {
                if at_hub.parent_change_id.is_some() {
                    return Err(mismatch(
                        d.key,
                        "the hub has a parent for a disk the previous backup did not have",
                    ));
                }
                DiskPlan::Full
            }
            (DiskMode::Full { .. } | DiskMode::New, BackupType::Full) => DiskPlan::Full,
            _ => {
                return Err(mismatch(
                    d.key,
                    "the hub started another backup type than the one CBT prepared",
                ));
            }
        };
        disks.push(SendDisk {
            key: d.key,
            source: Arc::clone(&d.source),
            plan,
            change_id: d.new_change_id.clone(),
        });
    }
    Ok(disks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sendense_types::{BackupDisk, BackupId, ChangeId};

    fn backup(id: &str, status: BackupStatus, change: &str, cap: u64) -> Backup {
        serde_json::from_value(serde_json::json!({
            "backup_id": id, "vm_name": "vm1", "backup_type": "full", "status": status,
            "parent_backup_id": null, "created_at": "2026-11-25T00:00:00Z", "completed_at": null,
            "failure_reason": null, "disks": [BackupDisk {
                disk_key: DiskKey(2000), capacity_bytes: cap, file: None, export_name: None,
                nbd_uri: None, parent_change_id: None,
                change_id: Some(ChangeId::try_from(change).unwrap()), bytes_written: 0,
            }]
        }))
        .unwrap()
    }

    #[test]
    fn previous_from_chain_last_completed_backup_wins() {
        let chain = Chain {
            vm_name: VmName::try_from("vm1").unwrap(),
            backups: vec![
                backup(
                    "backup-vm1-20261125T000000-000001",
                    BackupStatus::Completed,
                    "52 a/1",
                    10,
                ),
                backup(
                    "backup-vm1-20261125T000001-000002",
                    BackupStatus::Completed,
                    "52 a/2",
                    20,
                ),
                backup(
                    "backup-vm1-20261125T000002-000003",
                    BackupStatus::Failed,
                    "52 a/3",
                    30,
                ),
            ],
        };

        let prev = previous_from_chain(&chain);

        assert_eq!(
            prev[&DiskKey(2000)],
            PreviousDisk {
                change_id: Some(ChangeId::try_from("52 a/2").unwrap()),
                capacity: Some(20),
                uuid: None,
            }
        );
        let _ = BackupId::try_from("backup-vm1-20261125T000000-000001").unwrap();
    }

    fn chain_of(points: usize) -> Chain {
        Chain {
            vm_name: VmName::try_from("vm1").unwrap(),
            backups: (0..points)
                .map(|i| {
                    backup(
                        &format!("backup-vm1-20261125T{:06}-000001", i),
                        BackupStatus::Completed,
                        "52 a/1",
                        10,
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn chain_full_reason_chain_below_the_limit_is_none() {
        let chain = chain_of(MAX_CHAIN_LENGTH - 1);

        assert_eq!(chain_full_reason(&chain), None);
    }

    #[test]
    fn chain_full_reason_chain_at_the_limit_names_it() {
        let chain = chain_of(MAX_CHAIN_LENGTH);

        let reason = chain_full_reason(&chain).unwrap();

        assert!(reason.contains("32 restore points"), "{reason}");
    }

    #[test]
    fn chain_full_reason_point_with_missing_files_names_it() {
        let mut chain = chain_of(3);
        chain.backups[1].files_missing = true;

        let reason = chain_full_reason(&chain).unwrap();

        assert!(
            reason.contains("000001-000001") && reason.contains("missing"),
            "{reason}"
        );
    }
}
