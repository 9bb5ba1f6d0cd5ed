//! `sendense-client backup`: one VM, its disks from local files, into the hub.
//!
//! Sequence (DESIGN.md "Client"): open every source (format from content) and validate every
//! changed-areas file first, so bad input fails before the hub is touched; register the VM with
//! each disk's capacity; start the backup; transfer every disk at once to the `nbd_uri` the hub
//! answered; complete it with each disk's change id. From the moment the backup exists, any
//! error — or the shutdown future (Ctrl-C, SIGTERM, SIGHUP) — makes the client call `fail` with the reason
//! before returning the error, so the hub never keeps a half-written backup.
//!
//! # The base of an incremental
//!
//! [`BackupOptions::base_backup`] (`--base-backup`, required by the CLI for `--type
//! incremental`) is sent as `base_backup_id`: the hub refuses the start (409) when its parent is
//! another backup, and the client refuses an incremental whose answered parent differs (a hub
//! without that check), before any data is sent. A disk the hub has no base for
//! (`parent_change_id: null`: new to the VM) is sent whole, allocated data and holes, not only
//! its changed areas.
//!
//! # Change ids of file sources
//!
//! Without `--change-id`, a file source gets a derived change id of VMware's shape
//! `EPOCH/SEQUENCE`: `EPOCH` is `file-` followed by 16 hex digits of FNV-1a 64 over the
//! canonical path and the disk's capacity (so a resized or different file starts a new epoch,
//! like a CBT reset), and `SEQUENCE` is one more than the parent's when the parent's epoch is the
//! same, else 1. Example: `file-3f2a9c0d11e4b7a2/3`. It identifies the copy; it cannot be used
//! to query changes (file sources give changes with `--changed-areas`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use sendense_types::{
    Backup, BackupId, BackupStatus, BackupSummary, BackupType, ChangeId, CompleteBackupRequest,
    CompleteDisk, DiskKey, DiskSpec, DiskSummary, FailBackupRequest, RegisterVmRequest,
    StartBackupRequest, VmName,
};
use tracing::{Instrument, error, info, info_span, warn};

use crate::cbt::load_changed_extents;
use sendense_transfer::TransferError;

use crate::error::ClientError;
use crate::hub::{HubClient, HubOptions};
use crate::progress::{NoProgress, Progress};
use sendense_transfer::engine::{
    DiskPlan, DiskStats, DiskTransfer, TargetConnector, TransferOptions, transfer_all,
};
use sendense_transfer::nbd::{NbdConnector, NbdUri};
use sendense_transfer::source::{DiskSource, Extent, open_local};

/// One disk given on the command line: `KEY=PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskInput {
    /// VMware disk key.
    pub key: DiskKey,
    /// Local raw or VMDK file.
    pub path: PathBuf,
    /// VMware `DiskChangeInfo` JSON of the changes since the parent (incrementals).
    pub changed_areas: Option<PathBuf>,
    /// The change id to record; derived for file sources when absent.
    pub change_id: Option<ChangeId>,
}

/// Everything `backup` needs.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// The hub.
    pub hub: HubOptions,
    /// The VM's name.
    pub vm: VmName,
    /// Its disks (at least one, keys unique).
    pub disks: Vec<DiskInput>,
    /// Full, incremental or auto.
    pub backup_type: BackupType,
    /// The backup the changes are relative to (`--base-backup`): sent as `base_backup_id`, the
    /// hub refuses the start when its parent is another one.
    pub base_backup: Option<BackupId>,
    /// Engine tuning (connections per disk, requests in flight).
    pub transfer: TransferOptions,
    /// Where progress goes.
    pub progress: Arc<dyn Progress>,
}

impl BackupOptions {
    /// Options with defaults: auto type, default transfer options, no progress display.
    #[must_use]
    pub fn new(hub: HubOptions, vm: VmName, disks: Vec<DiskInput>) -> Self {
        Self {
            hub,
            vm,
            disks,
            backup_type: BackupType::Auto,
            base_backup: None,
            transfer: TransferOptions::default(),
            progress: Arc::new(NoProgress),
        }
    }
}

/// Runs a backup; Ctrl-C (SIGINT), SIGTERM or SIGHUP fails it on the hub and returns [`ClientError::Interrupted`].
///
/// # Errors
/// See [`run_until`].
pub async fn run(options: BackupOptions) -> Result<BackupSummary, ClientError> {
    run_until(options, sendense_io::signal::stopped()).await
}

/// Runs a backup until done or until `shutdown` resolves (then the backup is failed on the hub
/// and [`ClientError::Interrupted`] returned).
///
/// # Errors
/// Invalid input (sources, changed areas, names) before the hub is touched; hub errors; the
/// first transfer error. Once the backup exists on the hub, it has been failed there with the
/// error's text before this returns.
pub async fn run_until(
    options: BackupOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<BackupSummary, ClientError> {
    let span = info_span!("backup", vm = %options.vm);
    run_inner(options, shutdown).instrument(span).await
}

/// A disk ready to go: its source and validated changed extents.
#[derive(Debug)]
struct Prepared {
    input: DiskInput,
    source: Arc<dyn DiskSource>,
    changed: Option<Vec<Extent>>,
}

async fn run_inner(
    options: BackupOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<BackupSummary, ClientError> {
    let started = Instant::now();
    let prepared = prepare(&options.disks).await?;
    let hub = HubClient::new(&options.hub)?;

    let specs = prepared
        .iter()
        .map(|p| DiskSpec {
            key: p.input.key,
            capacity_bytes: p.source.size(),
        })
        .collect();
    let register = RegisterVmRequest::new(options.vm.clone(), specs).map_err(|e| {
        ClientError::InvalidArgument {
            what: "disks",
            reason: e.to_string(),
        }
    })?;
    hub.register_vm(&register).await?;
    let backup = hub
        .start_backup(&StartBackupRequest {
            vm_name: options.vm.clone(),
            backup_type: options.backup_type,
            base_backup_id: options.base_backup.clone(),
        })
        .await?;
    if let Some(base) = &options.base_backup
        && backup.parent_backup_id.as_ref() != Some(base)
        && backup.backup_type == BackupType::Incremental
    {
        // A hub without the base check: refuse here, before any data is sent.
        let err = ClientError::InvalidArgument {
            what: "--base-backup",
            reason: format!(
                "the hub's parent is {}, not {base}",
                backup
                    .parent_backup_id
                    .as_ref()
                    .map_or("none", BackupId::as_str)
            ),
        };
        fail_at_hub(&hub, &backup.backup_id, &sendense_io::error_chain(&err)).await;
        return Err(err);
    }
    info!(backup_id = %backup.backup_id, backup_type = %backup.backup_type, "backup started");

    let work = async {
        let disks = plan_local(&prepared, &backup)?;
        transfer_and_complete(
            &hub,
            &backup,
            disks,
            options.transfer,
            options.progress.as_ref(),
        )
        .await
    };
    finish_started(
        &hub,
        &backup,
        work,
        shutdown,
        ClientError::Interrupted,
        |e| e,
        started,
    )
    .await
}

/// Drives `work` (transfer and complete) of a started backup until it ends or `shutdown`
/// resolves (then `interrupted` is the error). Success answers the summary from the hub's
/// final state; any error first fails the backup at the hub with the error and its causes as
/// the reason. Shared by local-file and vCenter backups; `client` wraps this crate's errors in
/// the caller's.
///
/// # Errors
/// `work`'s error, `interrupted`, or the hub's error reading the final state.
pub async fn finish_started<E: std::error::Error>(
    hub: &HubClient,
    backup: &Backup,
    work: impl Future<Output = Result<Vec<DiskStats>, E>>,
    shutdown: impl Future<Output = ()>,
    interrupted: E,
    client: impl Fn(ClientError) -> E,
    started: Instant,
) -> Result<BackupSummary, E> {
    // A shutdown already asked for wins: `work` may be able to finish within one poll (a fast
    // hub on loopback), and an unbiased select would then pick it half the time.
    let result = tokio::select! {
        biased;
        () = shutdown => Err(interrupted),
        r = work => r,
    };
    match result {
        Ok(stats) => {
            let final_state = hub.backup(&backup.backup_id).await.map_err(client)?;
            Ok(summary(
                &final_state,
                &stats,
                started.elapsed().as_secs_f64(),
            ))
        }
        Err(err) => {
            fail_at_hub(hub, &backup.backup_id, &sendense_io::error_chain(&err)).await;
            Err(err)
        }
    }
}

/// Tells the hub a started backup failed, with `reason` (cut to 4000 bytes, control characters
/// removed); a failure to tell it is logged, not returned (the caller is already failing).
pub async fn fail_at_hub(hub: &HubClient, backup_id: &BackupId, reason: &str) {
    let reason: String = reason.chars().filter(|c| !c.is_control()).collect();
    error!(%backup_id, %reason, "backup failed; telling the hub");
    let request = FailBackupRequest::new(truncate(&reason, 4000))
        .or_else(|_| FailBackupRequest::new("client error".to_owned()));
    if let Ok(request) = request
        && let Err(e) = hub.fail_backup(backup_id, &request).await
    {
        warn!(error = %e, "could not mark the backup failed on the hub");
    }
}

/// Opens the sources and loads the changed areas, before anything is sent to the hub.
async fn prepare(disks: &[DiskInput]) -> Result<Vec<Prepared>, ClientError> {
    if disks.is_empty() {
        return Err(ClientError::InvalidArgument {
            what: "--disk",
            reason: "give at least one disk as KEY=PATH".to_owned(),
        });
    }
    let mut prepared = Vec::with_capacity(disks.len());
    for input in disks {
        if prepared.iter().any(|p: &Prepared| p.input.key == input.key) {
            return Err(ClientError::InvalidArgument {
                what: "--disk",
                reason: format!("disk key {} is given twice", input.key),
            });
        }
        let source = open_local(&input.path)
            .await
            .map_err(|e| TransferError::source_failed(input.key.get(), e))?;
        let changed = match &input.changed_areas {
            Some(path) => Some(load_changed_extents(path, input.key.get(), source.size()).await?),
            None => None,
        };
        prepared.push(Prepared {
            input: input.clone(),
            source,
            changed,
        });
    }
    Ok(prepared)
}

/// One disk ready to go: where its bytes come from, what to send, and the change id to record
/// once the data is durable.
#[derive(Debug)]
pub(crate) struct SendDisk {
    /// The disk.
    pub(crate) key: DiskKey,
    /// Its bytes.
    pub(crate) source: Arc<dyn DiskSource>,
    /// What to send.
    pub(crate) plan: DiskPlan,
    /// Recorded with `complete`.
    pub(crate) change_id: Option<ChangeId>,
}

/// Sends every disk of a started backup to its export at the hub, all at once, uploads each
/// disk's digests (of the bytes read at the source, recorded by the transfer), then completes
/// the backup with each disk's change id. The one end of every backup flow (local disks,
/// vCenter, agent jobs). A hub older than the digests route (404) gets a warning and the
/// backup completes without digests.
///
/// # Errors
/// [`ClientError::DiskMismatch`] when the hub's backup lists a disk not in `disks` or has no
/// NBD URI for one; the transfer's error; the hub's answer to a digests upload (but 404) or to
/// `complete`.
pub(crate) async fn transfer_and_complete(
    hub: &HubClient,
    backup: &Backup,
    disks: Vec<SendDisk>,
    transfer: TransferOptions,
    progress: &dyn Progress,
) -> Result<Vec<DiskStats>, ClientError> {
    if let Some(extra) = backup
        .disks
        .iter()
        .find(|h| !disks.iter().any(|d| d.key == h.disk_key))
    {
        return Err(ClientError::DiskMismatch {
            disk_key: extra.disk_key.get(),
            reason: "the hub's backup lists a disk this run does not send",
        });
    }
    let mut jobs = Vec::with_capacity(disks.len());
    let mut complete = Vec::with_capacity(disks.len());
    for d in disks {
        let mismatch = |reason| ClientError::DiskMismatch {
            disk_key: d.key.get(),
            reason,
        };
        let at_hub = hub_disk(backup, d.key)?;
        let uri = at_hub
            .nbd_uri
            .as_deref()
            .ok_or_else(|| mismatch("the hub answered no nbd_uri for this disk"))?;
        let uri = NbdUri::parse(uri)?;
        let tls = uri.tls.then(|| hub.nbd_tls());
        let target: Arc<dyn TargetConnector> = Arc::new(NbdConnector::new(uri, tls)?);
        jobs.push(DiskTransfer {
            disk_key: d.key.get(),
            source: d.source,
            target,
            plan: d.plan,
            digests: true,
        });
        complete.push((d.key, d.change_id));
    }

    let mut stats = transfer_all(&jobs, transfer, progress).await?;
    upload_digests(hub, &backup.backup_id, &mut stats).await?;

    let disks = complete
        .into_iter()
        .zip(&stats)
        .map(|((disk_key, change_id), s)| CompleteDisk {
            disk_key,
            change_id,
            bytes_transferred: s.bytes_sent,
        })
        .collect();
    let request = CompleteBackupRequest::new(disks).map_err(|e| ClientError::InvalidArgument {
        what: "disks",
        reason: e.to_string(),
    })?;
    hub.complete_backup(&backup.backup_id, &request).await?;
    info!(backup_id = %backup.backup_id, "backup completed");
    Ok(stats)
}

/// Uploads each disk's digests (taken out of `stats`, freeing them) before `complete`. A 404
/// (a hub without the route) is warned about once and the rest skipped.
async fn upload_digests(
    hub: &HubClient,
    backup_id: &BackupId,
    stats: &mut [DiskStats],
) -> Result<(), ClientError> {
    for s in stats.iter_mut() {
        let Some(digests) = s.digests.take() else {
            continue;
        };
        let disk_key = DiskKey(s.disk_key);
        let encoded = digests.encode();
        let bytes = encoded.len();
        drop(digests);
        match hub.put_digests(backup_id, disk_key, encoded).await {
            Ok(()) => {
                info!(disk_key = disk_key.get(), bytes, "digests uploaded");
            }
            Err(e) if e.is_missing_route() => {
                warn!(
                    %backup_id,
                    error = %sendense_io::error_chain(&e),
                    "the hub does not take digests (an older hub?): this backup completes without them and cannot be verified end to end"
                );
                for rest in stats.iter_mut() {
                    rest.digests = None;
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The hub's record of disk `key` in `backup`.
///
/// # Errors
/// [`ClientError::DiskMismatch`] when the hub's backup does not list it.
pub(crate) fn hub_disk(
    backup: &Backup,
    key: DiskKey,
) -> Result<&sendense_types::BackupDisk, ClientError> {
    backup
        .disks
        .iter()
        .find(|d| d.disk_key == key)
        .ok_or(ClientError::DiskMismatch {
            disk_key: key.get(),
            reason: "the hub's backup does not list this disk",
        })
}

/// What to send of each local disk, given the backup the hub started.
///
/// # Errors
/// [`ClientError::DiskMismatch`]; [`ClientError::File`] when a change id cannot be derived.
fn plan_local(prepared: &[Prepared], backup: &Backup) -> Result<Vec<SendDisk>, ClientError> {
    let mut disks = Vec::with_capacity(prepared.len());
    for p in prepared {
        let key = p.input.key;
        let disk = hub_disk(backup, key)?;
        let plan = match (backup.backup_type, &p.changed) {
            // The hub has no base for this disk (new to the VM): its changed areas are relative
            // to nothing, so all its data.
            (BackupType::Incremental, Some(_)) if disk.parent_change_id.is_none() => {
                info!(
                    disk_key = key.get(),
                    "the hub has no previous backup of this disk (a disk new to the VM): sending all its data, not only --changed-areas"
                );
                DiskPlan::Everything
            }
            (BackupType::Incremental, Some(changed)) => DiskPlan::Changed(changed.clone()),
            (BackupType::Incremental, None) => {
                info!(
                    disk_key = key.get(),
                    "no --changed-areas for this disk: sending every allocated extent and zeroing the holes"
                );
                DiskPlan::Everything
            }
            (_, changed) => {
                if changed.is_some() {
                    info!(
                        disk_key = key.get(),
                        "the hub made this a full backup: --changed-areas is not needed and ignored"
                    );
                }
                DiskPlan::Full
            }
        };
        let change_id = match &p.input.change_id {
            Some(id) => id.clone(),
            None => derive_change_id(
                &p.input.path,
                p.source.size(),
                disk.parent_change_id.as_ref(),
            )?,
        };
        disks.push(SendDisk {
            key,
            source: Arc::clone(&p.source),
            plan,
            change_id: Some(change_id),
        });
    }
    Ok(disks)
}

/// The change id of a file source (see the module documentation).
///
/// # Errors
/// [`ClientError::File`] when the path cannot be canonicalized.
pub fn derive_change_id(
    path: &Path,
    capacity: u64,
    parent: Option<&ChangeId>,
) -> Result<ChangeId, ClientError> {
    let canonical = std::fs::canonicalize(path).map_err(|source| ClientError::File {
        what: "disk file",
        path: path.to_owned(),
        source,
    })?;
    let mut hash = Fnv1a::new();
    hash.write(canonical.as_os_str().as_encoded_bytes());
    hash.write(&[0]);
    hash.write(&capacity.to_le_bytes());
    let epoch = format!("file-{:016x}", hash.finish());
    let sequence = parent
        .filter(|p| p.uuid_part() == epoch)
        .and_then(ChangeId::sequence_part)
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(1, |s| s.saturating_add(1));
    ChangeId::try_from(format!("{epoch}/{sequence}")).map_err(|e| ClientError::InvalidArgument {
        what: "change id",
        reason: e.to_string(),
    })
}

/// FNV-1a, 64 bits: a stable, dependency-free hash for derived change ids (not security).
#[derive(Debug)]
struct Fnv1a(u64);

impl Fnv1a {
    const fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    const fn finish(&self) -> u64 {
        self.0
    }
}

/// The summary `--json` prints, from the hub's final view of the backup and
/// the transfer's per-disk statistics (shared with the vCenter flow).
#[must_use]
pub fn summary(backup: &Backup, stats: &[DiskStats], seconds: f64) -> BackupSummary {
    let disks: Vec<DiskSummary> = stats
        .iter()
        .map(|s| DiskSummary {
            disk_key: DiskKey(s.disk_key),
            bytes_sent: s.bytes_sent,
            bytes_skipped: s.bytes_skipped(),
            seconds: s.seconds,
        })
        .collect();
    BackupSummary {
        backup_id: backup.backup_id.clone(),
        vm_name: backup.vm_name.clone(),
        backup_type: backup.backup_type,
        status: backup.status,
        seconds,
        bytes_sent: disks.iter().map(|d| d.bytes_sent).sum(),
        disks,
        full_reason: None,
    }
}

fn truncate(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// Megabytes (10^6) per second of `bytes` over `seconds`.
#[must_use]
#[allow(clippy::cast_precision_loss)]
pub fn mb_per_s(bytes: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        bytes as f64 / seconds / 1e6
    } else {
        0.0
    }
}

/// Whether a summary's status is the good end.
#[must_use]
pub fn succeeded(summary: &BackupSummary) -> bool {
    summary.status == BackupStatus::Completed
}

/// Maps disk keys to values given as `KEY=VALUE` arguments; keys must be unique.
///
/// # Errors
/// [`ClientError::InvalidArgument`] naming the bad argument.
pub fn parse_key_values(
    what: &'static str,
    args: &[String],
) -> Result<BTreeMap<DiskKey, String>, ClientError> {
    let mut out = BTreeMap::new();
    for arg in args {
        let bad = |reason: &str| ClientError::InvalidArgument {
            what,
            reason: format!("{arg:?}: {reason} (expected KEY=VALUE, e.g. 2000=...)"),
        };
        let (key, value) = arg.split_once('=').ok_or_else(|| bad("has no '='"))?;
        let key: u32 = key
            .trim()
            .parse()
            .map_err(|_| bad("the key is not a number"))?;
        if value.is_empty() {
            return Err(bad("the value is empty"));
        }
        if out.insert(DiskKey(key), value.to_owned()).is_some() {
            return Err(bad("this key is given twice"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derive_change_id_without_parent_starts_at_one() {
        let f = tempfile::NamedTempFile::new().unwrap();

        let id = derive_change_id(f.path(), 1 << 20, None).unwrap();

        assert!(id.as_str().starts_with("file-"), "{id}");
        assert_eq!(id.sequence_part(), Some("1"));
    }

    #[test]
    fn derive_change_id_same_epoch_parent_increments() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let first = derive_change_id(f.path(), 1 << 20, None).unwrap();

        let second = derive_change_id(f.path(), 1 << 20, Some(&first)).unwrap();

        assert_eq!(second.uuid_part(), first.uuid_part());
        assert_eq!(second.sequence_part(), Some("2"));
    }

    #[test]
    fn derive_change_id_resized_disk_starts_new_epoch() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let first = derive_change_id(f.path(), 1 << 20, None).unwrap();

        let resized = derive_change_id(f.path(), 2 << 20, Some(&first)).unwrap();

        assert_ne!(resized.uuid_part(), first.uuid_part());
        assert_eq!(resized.sequence_part(), Some("1"));
    }

    #[test]
    fn parse_key_values_valid_pairs_map_keys() {
        let args = vec!["2000=/a.raw".to_owned(), "2001=/b=c.vmdk".to_owned()];

        let got = parse_key_values("--disk", &args).unwrap();

        assert_eq!(got[&DiskKey(2000)], "/a.raw");
        assert_eq!(got[&DiskKey(2001)], "/b=c.vmdk");
    }

    #[test]
    fn parse_key_values_duplicate_key_is_refused() {
        let args = vec!["2000=/a".to_owned(), "2000=/b".to_owned()];

        let err = parse_key_values("--disk", &args).unwrap_err();

        assert!(err.to_string().contains("twice"), "{err}");
    }

    #[test]
    fn parse_key_values_missing_equals_is_refused() {
        let err = parse_key_values("--disk", &["2000".to_owned()]).unwrap_err();

        assert!(err.to_string().contains("no '='"), "{err}");
    }

    #[tokio::test]
    async fn prepare_bad_changed_areas_fails_before_the_hub() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("d.raw");
        std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
        let cbt = dir.path().join("cbt.json");
        std::fs::write(
            &cbt,
            r#"{"startOffset":0,"length":1048576,"changedArea":[{"start":1048576,"length":512}]}"#,
        )
        .unwrap();
        let input = DiskInput {
            key: DiskKey(2000),
            path: disk,
            changed_areas: Some(cbt),
            change_id: None,
        };

        let err = prepare(&[input]).await.unwrap_err();

        assert!(
            matches!(err, ClientError::Cbt { disk_key: 2000, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn fail_reason_includes_causes() {
        let err = ClientError::Cbt {
            disk_key: 2000,
            source: Box::new(ClientError::ChangedAreasJson {
                message: "eof".into(),
            }),
        };

        assert_eq!(
            sendense_io::error_chain(&err),
            "Disk 2000: invalid changed areas: Changed areas are not DiskChangeInfo JSON: eof"
        );
    }
}
