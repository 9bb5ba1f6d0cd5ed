//! The agent's `restore` job (DESIGN.md "Restore", "Agents and jobs"): a restore point rebuilt
//! in vCenter as a new VM from its captured configuration, or its disks added to an existing
//! VM, by [`sendense_vsphere::restore()`].
//!
//! A job ([`run_job`]) carries a [`RestoreJob`] (the point, its `vm_config`, the request and the
//! disks) and the vCenter credential. The agent
//! 1. logs in to vCenter with the credential (password login, its stored trust choice);
//! 2. opens the point's read-only exports at the hub (`POST /api/v1/backups/{id}/exports`) and
//!    reads each disk over NBD inside TLS with the agent's client certificate, as its backups
//!    write ([`NbdSource`]: block status lets holes go out as zeros without being read);
//! 3. restores (placement and network checks before anything is created, create, upload every
//!    disk at once, power on), feeding the job's progress (bytes done and total; the hub
//!    computes rate and ETA from the heartbeats);
//! 4. on a stop (cancel at the hub, agent shutdown) or any failure, removes what it made in
//!    vCenter before returning;
//! 5. always closes the exports at the hub and logs out.
//!
//! [`run_until`] is the same without a job (tests, tools).

use std::sync::Arc;
use std::time::Instant;

use sendense_transfer::DiskSource;
use sendense_transfer::engine::TransferOptions;
use sendense_transfer::nbd::{NbdConnector, NbdSource, NbdUri};
use sendense_transfer::progress::{NoProgress, Progress};
use sendense_types::{AgentJob, RestoreExports, RestoreJob};
use sendense_vsphere::{
    ConnectOptions, RestoreDisk, RestoredVm, Session, UploadOptions, VsphereError,
};
use tracing::{Instrument, info, info_span, warn};

use crate::agent::{JobContext, JobDone, connect};
use crate::error::ClientError;
use crate::hub::{HubClient, HubOptions};

/// Everything a restore into vCenter needs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct VmRestoreOptions {
    /// The hub (the agent's token and client certificate).
    pub hub: HubOptions,
    /// vCenter address, login and trust.
    pub connect: ConnectOptions,
    /// What to restore.
    pub job: RestoreJob,
    /// NBD connections per disk (`connections`; the rest of the engine tuning is unused).
    pub transfer: TransferOptions,
    /// Upload tuning.
    pub upload: UploadOptions,
    /// Where progress goes.
    pub progress: Arc<dyn Progress>,
}

impl VmRestoreOptions {
    /// Options with defaults: default transfer and upload tuning, no progress display.
    #[must_use]
    pub fn new(hub: HubOptions, connect: ConnectOptions, job: RestoreJob) -> Self {
        Self {
            hub,
            connect,
            job,
            transfer: TransferOptions::default(),
            upload: UploadOptions::default(),
            progress: Arc::new(NoProgress),
        }
    }
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRestoreSummary {
    /// The VM in vCenter.
    pub vm: RestoredVm,
    /// Bytes uploaded.
    pub bytes: u64,
    /// Wall-clock seconds.
    pub seconds: u64,
}

/// Runs a `restore` job with the job's credential and the agent's hub connection.
///
/// # Errors
/// [`ClientError::JobIncomplete`] when the job lacks its restore or credential; see
/// [`run_until`].
pub async fn run_job(
    job: &AgentJob,
    context: &JobContext,
    transfer: TransferOptions,
) -> Result<JobDone, ClientError> {
    let restore = job.restore.as_deref().ok_or(ClientError::JobIncomplete {
        what: "a restore (the point, its vm_config and the request)",
    })?;
    let credential = job.credential.as_ref().ok_or(ClientError::JobIncomplete {
        what: "a vCenter credential",
    })?;
    let mut options =
        VmRestoreOptions::new(context.hub.clone(), connect(credential)?, restore.clone());
    options.transfer = transfer;
    options.progress = Arc::clone(&context.progress) as Arc<dyn Progress>;
    run_until(options, context.stopped()).await?;
    Ok(JobDone::default())
}

/// Restores until done or until `stop` resolves (then what was made in vCenter is removed and
/// [`ClientError::Interrupted`] returned). The point's exports are closed on every path.
///
/// # Errors
/// vCenter login and restore errors ([`VsphereError::NetworkNotMapped`] and the other
/// refusals come before anything is created), hub errors, NBD errors,
/// [`ClientError::DiskMismatch`] when the point lacks a disk of the job,
/// [`ClientError::Interrupted`].
pub async fn run_until(
    options: VmRestoreOptions,
    stop: impl Future<Output = ()> + Send,
) -> Result<VmRestoreSummary, ClientError> {
    let span = info_span!("vm_restore", backup_id = %options.job.backup_id, vm = %options.job.request.vm_name);
    run_inner(options, stop).instrument(span).await
}

async fn run_inner(
    options: VmRestoreOptions,
    stop: impl Future<Output = ()> + Send,
) -> Result<VmRestoreSummary, ClientError> {
    let started = Instant::now();
    let session = Session::connect(options.connect.clone()).await?;
    let hub = HubClient::new(&options.hub)?;
    let backup_id = &options.job.backup_id;
    let result = match hub.open_restore_exports(backup_id).await {
        Ok(exports) => {
            let r = with_exports(&options, &hub, &session, &exports, stop).await;
            if let Err(e) = hub.close_restore_exports(backup_id).await {
                warn!(error = %e, "closing the restore exports failed");
            }
            r
        }
        Err(e) => Err(e),
    };
    if let Err(e) = session.logout().await {
        warn!(error = %e, "vCenter logout failed");
    }
    let vm = result?;
    let bytes = vm.disks.iter().map(|d| d.bytes).sum();
    let seconds = started.elapsed().as_secs();
    info!(vm = %vm.name, moref = %vm.vm, bytes, seconds, "restore into vCenter completed");
    Ok(VmRestoreSummary { vm, bytes, seconds })
}

async fn with_exports(
    options: &VmRestoreOptions,
    hub: &HubClient,
    session: &Session,
    exports: &RestoreExports,
    stop: impl Future<Output = ()> + Send,
) -> Result<RestoredVm, ClientError> {
    let mut stop = std::pin::pin!(stop);
    let mut sources: Vec<Arc<NbdSource>> = Vec::new();
    let mut disks = Vec::with_capacity(options.job.disks.len());
    for d in &options.job.disks {
        let export = exports
            .disks
            .iter()
            .find(|e| e.disk_key == d.disk_key)
            .ok_or(ClientError::DiskMismatch {
                disk_key: d.disk_key.get(),
                reason: "the restore point has no such disk",
            })?;
        let uri = NbdUri::parse(&export.nbd_uri)?;
        let tls = uri.tls.then(|| hub.nbd_tls());
        let connector = NbdConnector::new(uri, tls)?;
        let source = tokio::select! {
            s = NbdSource::connect(&connector, options.transfer.connections) => Arc::new(s?),
            () = stop.as_mut() => return Err(ClientError::Interrupted),
        };
        sources.push(Arc::clone(&source));
        disks.push(RestoreDisk {
            key: d.disk_key,
            source: source as Arc<dyn DiskSource>,
        });
    }
    let result = sendense_vsphere::restore(
        session,
        &options.job.vm_config,
        &options.job.request,
        disks,
        &options.upload,
        Arc::clone(&options.progress),
        stop,
    )
    .await;
    for source in sources {
        if let Ok(source) = Arc::try_unwrap(source)
            && let Err(e) = source.close().await
        {
            warn!(error = %e, "disconnecting from a restore export failed");
        }
    }
    result.map_err(|e| match e {
        VsphereError::Cancelled => ClientError::Interrupted,
        other => other.into(),
    })
}
