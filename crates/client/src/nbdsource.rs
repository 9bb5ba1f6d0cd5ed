//! `sendense-client backup --nbd-source KEY=URI [--bitmap NAME]`: a VM's disks read from NBD
//! exports (QEMU/KVM through `qemu-nbd` or libvirt's pull-mode backup, nbdkit, any NBD
//! server), fully from `base:allocation` or incrementally from a QEMU dirty bitmap.
//!
//! # Bitmaps and change ids
//!
//! A QEMU dirty bitmap records every write from the moment it was created (or last cleared).
//! `--bitmap NAME` names the bitmap that starts at *this* backup's point in time (libvirt: the
//! checkpoint created with it; `qemu-nbd`: the bitmap added right before the export was
//! opened); it is recorded as each disk's change id at the hub. The next incremental reads the
//! `qemu:dirty-bitmap:<change id of the parent>` context of each disk: the writes since the
//! parent. Giving the same name again (one bitmap never cleared) is also sound: it reads
//! everything since that bitmap began, a superset.
//!
//! # Full or incremental (`decide`)
//!
//! `--type full` is a full. Otherwise the hub's chain of the VM is read: no completed backup,
//! a chain at its limit or with missing files, a disk whose change id at the hub is unset or
//! names a bitmap the source does not offer (a bitmap deleted, a VM recreated, a source at
//! another point), or a source smaller than the disk the hub recorded, make `auto` a full on a
//! new chain, logged with the reason, and `incremental` fail saying why. A disk new to the VM
//! is sent whole within an incremental.
//!
//! A source *larger* than the disk the hub recorded is refused unless `--type full`: a
//! `KEY=URI` mapping pointing at another disk must not silently start a new chain; a disk
//! that really grew is backed up with `--type full` once.
//!
//! Every export is opened (and its bitmap looked up) before the hub is touched, so a wrong URI
//! fails before a backup exists. Reads use up to `--connections` connections per disk when the
//! server allows several (`NBD_FLAG_CAN_MULTI_CONN`, e.g. `qemu-nbd -r -e 8`), opened at once,
//! in requests of at most [`NBD_SOURCE_REQUEST_SIZE`] (1 MiB).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use sendense_transfer::engine::{DiskPlan, TransferOptions};
use sendense_transfer::nbd::{NbdConnector, NbdSource, NbdSourceOptions, NbdTls, NbdUri};
use sendense_transfer::progress::{NoProgress, Progress};
use sendense_transfer::{DiskSource, TransferError};
use sendense_types::{
    Backup, BackupId, BackupStatus, BackupSummary, BackupType, ChangeId, DiskKey, DiskSpec,
    RegisterVmRequest, StartBackupRequest, VmName,
};
use sendense_vsphere::PreviousDisk;
use tokio::sync::watch;
use tracing::{Instrument, info, info_span, warn};

use crate::backup::{SendDisk, finish_started, hub_disk, transfer_and_complete};
use crate::error::ClientError;
use crate::hub::{HubClient, HubOptions};
use crate::vcenter::{chain_full_reason, previous_from_chain};

/// One disk read from an NBD export: `KEY=URI`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdDiskInput {
    /// The disk's key at the hub (2000, 2001, ...).
    pub key: DiskKey,
    /// Its export.
    pub uri: NbdUri,
}

/// Everything `backup --nbd-source` needs.
#[derive(Debug, Clone)]
pub struct NbdBackupOptions {
    /// The hub.
    pub hub: HubOptions,
    /// The VM's name at the hub.
    pub vm: VmName,
    /// Its disks (at least one, keys unique).
    pub disks: Vec<NbdDiskInput>,
    /// The bitmap that starts at this backup, recorded as each disk's change id (`--bitmap`).
    pub bitmap: Option<ChangeId>,
    /// Full, incremental or auto.
    pub backup_type: BackupType,
    /// TLS for `nbds://` sources (`--nbd-ca`, `--nbd-tls-dir`).
    pub tls: Option<NbdTls>,
    /// Engine tuning (connections per disk, requests in flight).
    pub transfer: TransferOptions,
    /// Where progress goes.
    pub progress: Arc<dyn Progress>,
    /// Told the backup id once the hub started the backup (the agent's job heartbeat).
    pub started: Option<Arc<watch::Sender<Option<BackupId>>>>,
}

impl NbdBackupOptions {
    /// Options with defaults: auto type, no bitmap, no TLS, default transfer, no progress.
    #[must_use]
    pub fn new(hub: HubOptions, vm: VmName, disks: Vec<NbdDiskInput>) -> Self {
        Self {
            hub,
            vm,
            disks,
            bitmap: None,
            backup_type: BackupType::Auto,
            tls: None,
            transfer: TransferOptions::default(),
            progress: Arc::new(NoProgress),
            started: None,
        }
    }
}

/// Parses `--nbd-source KEY=URI` arguments.
///
/// # Errors
/// [`ClientError::InvalidArgument`] for a bad pair or key; [`ClientError::Transfer`] for a bad
/// URI.
pub fn parse_nbd_sources(args: &[String]) -> Result<Vec<NbdDiskInput>, ClientError> {
    let pairs = crate::backup::parse_key_values("--nbd-source", args)?;
    pairs
        .into_iter()
        .map(|(key, uri)| {
            Ok(NbdDiskInput {
                key,
                uri: NbdUri::parse(&uri)?,
            })
        })
        .collect()
}

/// Parses `--bitmap NAME`: a change id, and a name QEMU accepts (at most 1023 bytes).
///
/// # Errors
/// [`ClientError::InvalidArgument`] naming what is wrong.
pub fn parse_bitmap(name: &str) -> Result<ChangeId, ClientError> {
    let bad = |reason: String| ClientError::InvalidArgument {
        what: "--bitmap",
        reason,
    };
    if name.is_empty() || name.len() > 1023 {
        return Err(bad("a bitmap name is 1 to 1023 bytes".to_owned()));
    }
    ChangeId::try_from(name.to_owned()).map_err(|e| bad(e.to_string()))
}

/// Runs a backup from NBD sources; Ctrl-C (SIGINT), SIGTERM or SIGHUP fails it on the hub.
///
/// # Errors
/// See [`run_until`].
pub async fn run(options: NbdBackupOptions) -> Result<BackupSummary, ClientError> {
    run_until(options, sendense_io::signal::stopped()).await
}

/// Runs a backup from NBD sources until done or until `shutdown` resolves (then the backup is
/// failed on the hub and [`ClientError::Interrupted`] returned).
///
/// # Errors
/// Bad input or an unreachable source before the hub is touched; a source larger than the disk
/// recorded at the hub (unless full); [`ClientError::IncrementalImpossible`] for `incremental`
/// when a full is needed; hub and transfer errors (the backup is failed at the hub first).
pub async fn run_until(
    options: NbdBackupOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<BackupSummary, ClientError> {
    let span = info_span!("backup", vm = %options.vm);
    run_inner(options, shutdown).instrument(span).await
}

/// One disk's open source.
#[derive(Debug)]
struct Opened {
    key: DiskKey,
    source: Arc<NbdSource>,
}

async fn run_inner(
    options: NbdBackupOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<BackupSummary, ClientError> {
    let started = Instant::now();
    check_disks(&options.disks)?;
    let hub = HubClient::new(&options.hub)?;
    let (previous, head, chain_reason) = previous_backup(&hub, &options.vm).await?;
    let opened = open_sources(&options, &previous).await?;
    let result = with_sources(
        &options,
        &hub,
        &opened,
        &previous,
        head,
        chain_reason,
        shutdown,
        started,
    )
    .await;
    for o in opened {
        if let Ok(source) = Arc::try_unwrap(o.source)
            && let Err(e) = source.close().await
        {
            warn!(disk_key = o.key.get(), error = %e, "closing the NBD source failed");
        }
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn with_sources(
    options: &NbdBackupOptions,
    hub: &HubClient,
    opened: &[Opened],
    previous: &BTreeMap<DiskKey, PreviousDisk>,
    head: Option<BackupId>,
    chain_reason: Option<String>,
    shutdown: impl Future<Output = ()> + Send,
    started: Instant,
) -> Result<BackupSummary, ClientError> {
    let decided = decide(
        options.backup_type,
        opened,
        previous,
        head.is_some(),
        chain_reason,
    )?;
    let mut full_reason = None;
    let backup_type = match decided {
        Decision::Full(reason) => {
            info!(vm = %options.vm, %reason, "full backup on a new chain");
            if options.backup_type != BackupType::Full {
                full_reason = Some(reason);
            }
            BackupType::Full
        }
        Decision::Incremental => {
            info!(vm = %options.vm, "incremental backup from dirty bitmaps");
            BackupType::Incremental
        }
    };
    let specs = opened
        .iter()
        .map(|o| DiskSpec {
            key: o.key,
            capacity_bytes: o.source.size(),
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
            backup_type,
            base_backup_id: if backup_type == BackupType::Incremental {
                head
            } else {
                None
            },
        })
        .await?;
    info!(backup_id = %backup.backup_id, backup_type = %backup.backup_type, "backup started");
    if let Some(tx) = &options.started {
        tx.send_replace(Some(backup.backup_id.clone()));
    }
    let work = async {
        let disks = plan(opened, &backup, options.bitmap.as_ref()).await?;
        transfer_and_complete(
            hub,
            &backup,
            disks,
            source_transfer(options.transfer),
            options.progress.as_ref(),
        )
        .await
    };
    let mut summary = finish_started(
        hub,
        &backup,
        work,
        shutdown,
        ClientError::Interrupted,
        |e| e,
        started,
    )
    .await?;
    summary.full_reason = full_reason;
    Ok(summary)
}

/// Largest request read from an NBD source: 1 MiB. `qemu-nbd` serves each READ from a buffer
/// it allocates for that request, and one of 2 MiB or more comes fresh from the kernel every
/// time (page faults and zeroing were a third of its CPU time); reading 1 GiB through 4 MiB
/// requests took 2.0-2.2 s, through 1 MiB requests 0.5-0.8 s, on the same export (nbdcopy
/// reads 256 KiB at a time). Each request is also one WRITE to the hub.
pub const NBD_SOURCE_REQUEST_SIZE: u64 = 1 << 20;

/// The engine options of a backup from NBD sources: `asked`, with requests of at most
/// [`NBD_SOURCE_REQUEST_SIZE`].
#[must_use]
pub fn source_transfer(asked: TransferOptions) -> TransferOptions {
    TransferOptions {
        request_size: asked.request_size.min(NBD_SOURCE_REQUEST_SIZE),
        ..asked
    }
}

fn check_disks(disks: &[NbdDiskInput]) -> Result<(), ClientError> {
    if disks.is_empty() {
        return Err(ClientError::InvalidArgument {
            what: "--nbd-source",
            reason: "give at least one disk as KEY=URI".to_owned(),
        });
    }
    for (i, d) in disks.iter().enumerate() {
        if disks[..i].iter().any(|e| e.key == d.key) {
            return Err(ClientError::InvalidArgument {
                what: "--nbd-source",
                reason: format!("disk key {} is given twice", d.key),
            });
        }
    }
    Ok(())
}

/// The last completed backup's disks, its id, and why the chain itself needs a new full.
async fn previous_backup(
    hub: &HubClient,
    vm: &VmName,
) -> Result<
    (
        BTreeMap<DiskKey, PreviousDisk>,
        Option<BackupId>,
        Option<String>,
    ),
    ClientError,
> {
    let chain = match hub.chain(vm).await {
        Ok(chain) => chain,
        Err(ClientError::HubStatus { status: 404, .. }) => {
            return Ok((BTreeMap::new(), None, None));
        }
        Err(e) => return Err(e),
    };
    let head = chain
        .backups
        .iter()
        .rev()
        .find(|b| b.status == BackupStatus::Completed)
        .map(|b| b.backup_id.clone());
    Ok((previous_from_chain(&chain), head, chain_full_reason(&chain)))
}

/// Opens every source, selecting the dirty bitmap named by the disk's change id at the hub.
async fn open_sources(
    options: &NbdBackupOptions,
    previous: &BTreeMap<DiskKey, PreviousDisk>,
) -> Result<Vec<Opened>, ClientError> {
    let mut opened = Vec::with_capacity(options.disks.len());
    for d in &options.disks {
        let bitmap = match options.backup_type {
            BackupType::Full => None,
            _ => previous
                .get(&d.key)
                .and_then(|p| p.change_id.as_ref())
                .map(ToString::to_string),
        };
        let tls = if d.uri.tls {
            let mut tls = options
                .tls
                .clone()
                .ok_or_else(|| ClientError::InvalidArgument {
                    what: "--nbd-source",
                    reason: format!(
                        "{} needs TLS: give --nbd-ca FILE or --nbd-tls-dir DIR",
                        d.uri
                    ),
                })?;
            if tls.server_name.is_empty() {
                d.uri.host.clone_into(&mut tls.server_name);
            }
            if tls.server_name.is_empty() {
                "localhost".clone_into(&mut tls.server_name);
            }
            Some(tls)
        } else {
            None
        };
        let connector = NbdConnector::new(d.uri.clone(), tls)
            .map_err(|e| TransferError::source_failed(d.key.get(), e))?;
        let source_options = NbdSourceOptions {
            connections: options.transfer.connections,
            bitmap,
        };
        let source = NbdSource::open_source(&connector, &source_options)
            .await
            .map_err(|e| TransferError::source_failed(d.key.get(), e))?;
        info!(
            disk_key = d.key.get(),
            uri = %d.uri,
            size = source.size(),
            connections = source.connections(),
            bitmap = source.bitmap_name().unwrap_or(""),
            bitmap_offered = source.bitmap_offered(),
            "NBD source opened"
        );
        opened.push(Opened {
            key: d.key,
            source: Arc::new(source),
        });
    }
    Ok(opened)
}

/// Full (and why) or incremental.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Decision {
    Full(String),
    Incremental,
}

/// Decides the backup type (see the module documentation).
fn decide(
    asked: BackupType,
    opened: &[Opened],
    previous: &BTreeMap<DiskKey, PreviousDisk>,
    has_chain: bool,
    chain_reason: Option<String>,
) -> Result<Decision, ClientError> {
    if asked == BackupType::Full {
        return Ok(Decision::Full("a full backup was requested".to_owned()));
    }
    for o in opened {
        if let Some(recorded) = previous.get(&o.key).and_then(|p| p.capacity)
            && o.source.size() > recorded
        {
            return Err(ClientError::SourceLargerThanDisk {
                disk_key: o.key.get(),
                source_bytes: o.source.size(),
                recorded_bytes: recorded,
            });
        }
    }
    let reason = if has_chain {
        chain_reason.or_else(|| full_reason(opened, previous))
    } else {
        Some("the hub has no completed backup of this VM".to_owned())
    };
    match (asked, reason) {
        (BackupType::Incremental, Some(reason)) => {
            Err(ClientError::IncrementalImpossible { reason })
        }
        (_, Some(reason)) => Ok(Decision::Full(reason)),
        (_, None) => Ok(Decision::Incremental),
    }
}

/// Why a disk of the previous backup cannot be continued from its source's dirty bitmap.
fn full_reason(opened: &[Opened], previous: &BTreeMap<DiskKey, PreviousDisk>) -> Option<String> {
    opened.iter().find_map(|o| {
        let key = o.key;
        // A disk new to the VM is sent whole inside the incremental.
        let p = previous.get(&key)?;
        let Some(change_id) = &p.change_id else {
            return Some(format!("disk {key} has no change id (bitmap name) at the hub"));
        };
        if p.capacity.is_some_and(|c| c != o.source.size()) {
            return Some(format!(
                "disk {key}'s source is {} bytes, the hub recorded {}",
                o.source.size(),
                p.capacity.unwrap_or_default()
            ));
        }
        if !o.source.bitmap_offered() {
            return Some(format!(
                "disk {key}'s source does not offer the dirty bitmap \"{change_id}\" (its change id at the hub): \
                 the bitmap was removed or never existed there"
            ));
        }
        None
    })
}

/// What to send of each disk, given the backup the hub started.
async fn plan(
    opened: &[Opened],
    backup: &Backup,
    bitmap: Option<&ChangeId>,
) -> Result<Vec<SendDisk>, ClientError> {
    let mut disks = Vec::with_capacity(opened.len());
    for o in opened {
        let at_hub = hub_disk(backup, o.key)?;
        if o.source.size() > at_hub.capacity_bytes {
            return Err(ClientError::SourceLargerThanDisk {
                disk_key: o.key.get(),
                source_bytes: o.source.size(),
                recorded_bytes: at_hub.capacity_bytes,
            });
        }
        let plan = match (backup.backup_type, &at_hub.parent_change_id) {
            (BackupType::Incremental, Some(parent)) => {
                if o.source.bitmap_name() != Some(parent.as_str()) || !o.source.bitmap_offered() {
                    return Err(ClientError::BaseMismatch {
                        disk_key: o.key.get(),
                        base: o.source.bitmap_name().unwrap_or("none").to_owned(),
                        hub: Some(parent.to_string()),
                    });
                }
                let dirty = o
                    .source
                    .dirty_extents()
                    .await
                    .map_err(|e| TransferError::source_failed(o.key.get(), e))?;
                let bytes: u64 = dirty.iter().map(|e| e.length).sum();
                info!(
                    disk_key = o.key.get(),
                    extents = dirty.len(),
                    bytes,
                    "dirty bitmap read"
                );
                DiskPlan::Changed(dirty)
            }
            // A full, or a disk new to the VM (no parent at the hub): all its data.
            _ => DiskPlan::Full,
        };
        let source: Arc<dyn DiskSource> = Arc::clone(&o.source) as Arc<dyn DiskSource>;
        disks.push(SendDisk {
            key: o.key,
            source,
            plan,
            change_id: bitmap.cloned(),
        });
    }
    Ok(disks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_nbd_sources_pairs_parse() {
        let args = vec![
            "2000=nbd://127.0.0.1:10809/vda".to_owned(),
            "2001=nbd+unix:///vdb?socket=/run/s.sock".to_owned(),
        ];

        let got = parse_nbd_sources(&args).unwrap();

        assert_eq!(got.len(), 2);
        assert_eq!(got[0].key, DiskKey(2000));
        assert_eq!(got[1].uri.export, "vdb");
    }

    #[test]
    fn parse_nbd_sources_bad_uri_is_refused() {
        let err = parse_nbd_sources(&["2000=http://h/x".to_owned()]).unwrap_err();

        assert!(err.to_string().contains("nbd://"), "{err}");
    }

    #[test]
    fn parse_bitmap_too_long_is_refused() {
        let err = parse_bitmap(&"b".repeat(1024)).unwrap_err();

        assert!(err.to_string().contains("1023"), "{err}");
    }

    #[test]
    fn parse_bitmap_checkpoint_name_parses() {
        let id = parse_bitmap("sendense-20261207T080000").unwrap();

        assert_eq!(id.as_str(), "sendense-20261207T080000");
    }

    #[test]
    fn check_disks_duplicate_key_is_refused() {
        let uri = NbdUri::parse("nbd://h/x").unwrap();
        let d = NbdDiskInput {
            key: DiskKey(2000),
            uri,
        };

        let err = check_disks(&[d.clone(), d]).unwrap_err();

        assert!(err.to_string().contains("twice"), "{err}");
    }

    #[test]
    fn source_transfer_reads_at_most_1_mib_and_keeps_the_rest() {
        let asked = TransferOptions::with_connections(4);

        let got = source_transfer(asked);

        assert_eq!(got.request_size, 1 << 20);
        assert!(asked.request_size > got.request_size, "{asked:?}");
        assert_eq!(
            (got.connections, got.in_flight, got.total_buffers),
            (asked.connections, asked.in_flight, asked.total_buffers)
        );
    }
}
