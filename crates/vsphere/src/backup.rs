//! Backup orchestration: the VMware CBT rules of `shared/VSPHERE.md`.
//!
//! [`VsphereBackup::prepare`] finds the VM, checks every disk is a flat VMDK, removes leftover
//! snapshots of ours except those a running backup owns ([`PrepareOptions::keep_snapshots`];
//! nothing is recorded from them: the previous change ids come from the hub), enables CBT when it is off (that backup is a full), creates one snapshot, reads the
//! change ids from the **snapshot's** devices and computes each disk's extents:
//! `QueryChangedDiskAreas` (paged) from the stored change id, or `*` for a full. A disk falls
//! back to a full on a new chain, with a log line saying why, when its key, UUID or capacity
//! changed, the stored change id's epoch (UUID part) differs, or the query faults on it. A disk
//! the previous backup did not have is [`DiskMode::New`]: all its allocated areas, no full of
//! the VM.
//!
//! The new change id is only returned: the caller hands it to the hub in `complete`, after the
//! data is durable. The snapshot is removed by [`Prepared::finish`] or a [`SnapshotCleanup`]
//! handle (for a Ctrl-C path) and by `prepare` itself when it fails after creating it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use sendense_transfer::{DiskSource, Extent};
use sendense_types::{ChangeId, DiskKey, VmConfig};
use tracing::{error, info, warn};

use crate::cbt::{ALL_ALLOCATED, changed_areas};
use crate::datastore::{DatastoreFile, DatastorePath};
use crate::error::{FaultKind, SoapFault, VsphereError};
use crate::session::{Session, VmInfo};
use crate::soap::{DiskBacking, MoRef, VirtualDisk};
use crate::source::{CbtContext, VmDiskSource};

/// Name prefix of the snapshots this crate creates (and removes when left over).
pub const SNAPSHOT_PREFIX: &str = "sendense-";

/// What the hub remembers of a disk's previous completed backup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreviousDisk {
    /// The change id recorded by the previous completed backup.
    pub change_id: Option<ChangeId>,
    /// The capacity then, if known.
    pub capacity: Option<u64>,
    /// The disk UUID then, if known.
    pub uuid: Option<String>,
}

/// Options of [`VsphereBackup::prepare`].
#[derive(Debug, Clone, Default)]
pub struct PrepareOptions {
    /// Quiesce the guest file systems (VMware Tools) when snapshotting.
    pub quiesce: bool,
    /// Take a full of every disk whatever the previous change ids.
    pub force_full: bool,
    /// The snapshot's name (it must start with [`SNAPSHOT_PREFIX`]); `sendense-<unix seconds>`
    /// when `None`. The vCenter flow names it after the hub's backup id.
    pub snapshot_name: Option<String>,
    /// Snapshots of ours (by managed-object id, e.g. `snapshot-42`) that running backups own:
    /// they are not leftovers and are never removed.
    pub keep_snapshots: Vec<String>,
}

/// How a disk is backed up.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DiskMode {
    /// All allocated areas, on a new chain; `reason` says why when a full was not asked for.
    Full {
        /// Why an automatic full (`None`: no previous backup, or a full was asked for).
        reason: Option<String>,
    },
    /// The areas changed since `base`.
    Incremental {
        /// The previous change id the extents are relative to.
        base: ChangeId,
    },
    /// A disk the previous backup did not have (added to the VM since): all allocated areas,
    /// into a standalone image of that disk inside an incremental of the VM (the hub answers
    /// `parent_change_id: null` for it).
    New,
}

/// One disk ready to transfer.
#[derive(Debug, Clone)]
pub struct PreparedDisk {
    /// Device key (2000, 2001, ...).
    pub key: DiskKey,
    /// Capacity in bytes.
    pub capacity: u64,
    /// The disk's UUID, if reported.
    pub uuid: Option<String>,
    /// The datastore file read (`[ds] folder/x-flat.vmdk`).
    pub file: String,
    /// The disk at the snapshot.
    pub source: Arc<dyn DiskSource>,
    /// The extents to send: changed areas (incremental) or allocated areas (full).
    pub extents: Vec<Extent>,
    /// The snapshot's change id: give it to the hub in `complete`, never earlier.
    pub new_change_id: Option<ChangeId>,
    /// Full or incremental.
    pub mode: DiskMode,
    /// `QueryChangedDiskAreas` calls made for the extents.
    pub cbt_calls: u32,
}

/// A prepared backup: our snapshot exists until [`Prepared::finish`].
#[derive(Debug)]
pub struct Prepared {
    /// The VM.
    pub vm: MoRef,
    /// The VM's name.
    pub vm_name: String,
    /// Our snapshot.
    pub snapshot: MoRef,
    /// CBT was off and has been enabled by this run.
    pub cbt_enabled_now: bool,
    /// The disks, by key order.
    pub disks: Vec<PreparedDisk>,
    /// The VM's configuration read from our snapshot (what a whole-VM restore rebuilds); `None`
    /// when it could not be read (logged; the backup goes on without it).
    pub vm_config: Option<VmConfig>,
    session: Session,
    cleanup: SnapshotCleanup,
}

/// Removes our snapshot once; clone it into a Ctrl-C handler.
#[derive(Debug, Clone)]
pub struct SnapshotCleanup {
    session: Session,
    snapshot: Arc<tokio::sync::Mutex<Option<MoRef>>>,
}

impl SnapshotCleanup {
    fn new(session: Session, snapshot: MoRef) -> Self {
        Self {
            session,
            snapshot: Arc::new(tokio::sync::Mutex::new(Some(snapshot))),
        }
    }

    /// Remove the snapshot (consolidating); a no-op once done.
    ///
    /// # Errors
    /// Task, HTTP and SOAP errors (the snapshot is then still there: call again).
    pub async fn remove(&self) -> Result<(), VsphereError> {
        let mut slot = self.snapshot.lock().await;
        if let Some(s) = slot.as_ref() {
            match self.session.remove_snapshot(s).await {
                Ok(()) => info!(snapshot = %s, "snapshot removed"),
                Err(e) if e.fault_kind() == Some(&FaultKind::ManagedObjectNotFound) => {
                    info!(snapshot = %s, "snapshot already gone");
                }
                Err(e) => return Err(e),
            }
            *slot = None;
        }
        Ok(())
    }

    /// Whether the snapshot has been removed.
    pub async fn is_removed(&self) -> bool {
        self.snapshot.lock().await.is_none()
    }
}

impl Prepared {
    /// A handle that removes the snapshot (for a Ctrl-C path).
    #[must_use]
    pub fn cleanup_handle(&self) -> SnapshotCleanup {
        self.cleanup.clone()
    }

    /// Whether every disk is incremental.
    #[must_use]
    pub fn all_incremental(&self) -> bool {
        self.disks
            .iter()
            .all(|d| matches!(d.mode, DiskMode::Incremental { .. }))
    }

    /// Turn every incremental (and new) disk into a full (all allocated areas), for when the
    /// hub must start a new chain for the whole VM because one disk needs it.
    ///
    /// # Errors
    /// SOAP errors of the allocated-areas query.
    pub async fn promote_to_full(&mut self, reason: &str) -> Result<(), VsphereError> {
        for d in &mut self.disks {
            if d.mode == DiskMode::New {
                // Its extents are already the allocated areas.
                d.mode = DiskMode::Full {
                    reason: Some(reason.to_owned()),
                };
            }
            if matches!(d.mode, DiskMode::Incremental { .. }) {
                let key =
                    i32::try_from(d.key.get()).map_err(|_| VsphereError::UnexpectedResponse {
                        what: "disk key out of range",
                    })?;
                let (extents, calls) =
                    full_extents(&self.session, &self.vm, &self.snapshot, key, d.capacity).await?;
                d.extents = extents;
                d.cbt_calls = d.cbt_calls.saturating_add(calls);
                d.mode = DiskMode::Full {
                    reason: Some(reason.to_owned()),
                };
                info!(disk = %d.key, reason, "disk switched to a full backup");
            }
        }
        Ok(())
    }

    /// Whether a disk needs a full on a new chain (a new disk does not: see [`DiskMode::New`]),
    /// and why.
    #[must_use]
    pub fn full_reason(&self) -> Option<String> {
        self.disks.iter().find_map(|d| match &d.mode {
            DiskMode::Full {
                reason: Some(reason),
            } => Some(format!("disk {}: {reason}", d.key)),
            DiskMode::Full { reason: None } => {
                Some(format!("disk {}: no previous backup to build on", d.key))
            }
            _ => None,
        })
    }

    /// Remove our snapshot. Call it on every path, success or failure.
    ///
    /// # Errors
    /// Task, HTTP and SOAP errors.
    pub async fn finish(self) -> Result<(), VsphereError> {
        self.cleanup.remove().await
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        let left = self.cleanup.snapshot.try_lock().is_ok_and(|s| s.is_some());
        if left && Arc::strong_count(&self.cleanup.snapshot) == 1 {
            error!(vm = %self.vm_name, snapshot = %self.snapshot, "prepared backup dropped without finish(): the snapshot is left on the VM");
        }
    }
}

/// The backup entry points.
#[derive(Debug, Clone, Copy)]
pub struct VsphereBackup;

impl VsphereBackup {
    /// Snapshot the VM and compute what to send for each disk (see the module docs).
    ///
    /// # Errors
    /// [`VsphereError::VmNotFound`], [`VsphereError::UnsupportedBacking`],
    /// [`VsphereError::UnsupportedDiskMode`], [`VsphereError::NoDisks`], task, HTTP and SOAP
    /// errors. When it fails after creating the snapshot, the snapshot is removed first.
    pub async fn prepare(
        session: &Session,
        vm: &str,
        previous: &BTreeMap<DiskKey, PreviousDisk>,
        options: &PrepareOptions,
    ) -> Result<Prepared, VsphereError> {
        let vm_ref = session.find_vm(vm).await?;
        let info = session.vm_info(&vm_ref).await?;
        if info.disks.is_empty() {
            return Err(VsphereError::NoDisks { vm: info.name });
        }
        for d in &info.disks {
            check_disk(d)?;
        }
        // Order rule (forklift #1184): old change ids are the hub's (already recorded); remove
        // the leftover snapshot, then create ours.
        // Only leftovers: a snapshot a running backup owns is being read (one run per VM).
        for s in info
            .snapshots
            .iter()
            .filter(|s| s.name.starts_with(SNAPSHOT_PREFIX))
        {
            if options.keep_snapshots.contains(&s.snapshot.value) {
                info!(vm = %info.name, snapshot = %s.name, moref = %s.snapshot.value, "keeping a snapshot a running backup owns");
                continue;
            }
            warn!(vm = %info.name, snapshot = %s.name, "removing a leftover snapshot of an earlier run");
            session.remove_snapshot(&s.snapshot).await?;
        }
        let cbt_enabled_now = if info.cbt_enabled {
            false
        } else {
            session.enable_cbt(&vm_ref).await?;
            info!(vm = %info.name, "CBT enabled; it takes effect after the next snapshot cycle, so this backup is a full");
            true
        };
        let dc_path = session.datacenter_path(&vm_ref).await?;
        let name = match &options.snapshot_name {
            Some(name) if name.starts_with(SNAPSHOT_PREFIX) => name.clone(),
            Some(name) => format!("{SNAPSHOT_PREFIX}{name}"),
            None => {
                let secs = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                format!("{SNAPSHOT_PREFIX}{secs}")
            }
        };
        let snapshot = session
            .create_snapshot(
                &vm_ref,
                &name,
                "Sendense backup (removed automatically)",
                options.quiesce,
            )
            .await
            .map_err(|e| match e {
                VsphereError::TaskFailed { fault, .. }
                    if options.quiesce && is_quiesce_fault(&fault) =>
                {
                    VsphereError::QuiesceFailed { fault }
                }
                other => other,
            })?;
        info!(vm = %info.name, snapshot = %snapshot, name, "snapshot created");
        let cleanup = SnapshotCleanup::new(session.clone(), snapshot.clone());
        let plan = Plan {
            session,
            vm: &vm_ref,
            snapshot: &snapshot,
            dc_path: &dc_path,
            previous,
            options,
            cbt_enabled_now,
        };
        match plan.disks().await {
            Ok(disks) => Ok(Prepared {
                vm_config: capture_config(session, &snapshot, &info.name).await,
                vm: vm_ref,
                vm_name: info.name,
                snapshot,
                cbt_enabled_now,
                disks,
                session: session.clone(),
                cleanup,
            }),
            Err(e) => {
                if let Err(ce) = cleanup.remove().await {
                    error!(error = %ce, "removing the snapshot after a failure failed");
                }
                Err(e)
            }
        }
    }
}

/// The snapshot's configuration; `None` (with a log line) when it cannot be read.
async fn capture_config(session: &Session, snapshot: &MoRef, vm: &str) -> Option<VmConfig> {
    match session.vm_config(snapshot).await {
        Ok(config) => {
            info!(
                vm,
                disks = config.disks.len(),
                nics = config.nics.len(),
                "VM configuration captured"
            );
            Some(config)
        }
        Err(e) => {
            warn!(vm, error = %e, "the VM's configuration could not be captured; a whole-VM restore of this backup will not be possible");
            None
        }
    }
}

/// Checks the VM has disks and each one can be backed up (flat VMDK, not independent), before
/// anything is started.
///
/// # Errors
/// [`VsphereError::NoDisks`], [`VsphereError::UnsupportedBacking`],
/// [`VsphereError::UnsupportedDiskMode`].
pub fn check_vm_disks(info: &VmInfo) -> Result<(), VsphereError> {
    if info.disks.is_empty() {
        return Err(VsphereError::NoDisks {
            vm: info.name.clone(),
        });
    }
    info.disks.iter().try_for_each(check_disk)
}

fn check_disk(d: &VirtualDisk) -> Result<(), VsphereError> {
    if let Some(mode) = &d.backing.disk_mode
        && mode.starts_with("independent")
    {
        return Err(VsphereError::UnsupportedDiskMode {
            key: d.key,
            mode: mode.clone(),
        });
    }
    let mut b = Some(&d.backing);
    while let Some(x) = b {
        if !x.is_flat() {
            return Err(VsphereError::UnsupportedBacking {
                key: d.key,
                backing: x.kind.clone(),
                file: x.file_name.clone(),
            });
        }
        b = x.parent.as_deref();
    }
    Ok(())
}

/// The frozen disk file of a snapshot's device, as a flat extent path.
///
/// The snapshot's configuration names the disk as it was when the snapshot was taken. If it
/// names the file the VM now writes (some servers report the post-snapshot delta), the frozen
/// file is its parent. The frozen file must be a base disk: a delta (other snapshots exist)
/// cannot be read over `/folder`.
fn frozen_file(
    snap: &VirtualDisk,
    current: Option<&VirtualDisk>,
) -> Result<DatastorePath, VsphereError> {
    let b = &snap.backing;
    let unsupported = |x: &DiskBacking, what: &str| VsphereError::UnsupportedBacking {
        key: snap.key,
        backing: what.to_owned(),
        file: x.file_name.clone(),
    };
    let frozen = match current {
        Some(c) if c.backing.file_name == b.file_name => b
            .parent
            .as_deref()
            .ok_or_else(|| unsupported(b, "snapshot disk without parent"))?,
        _ => b,
    };
    if frozen.parent.is_some() {
        return Err(unsupported(
            frozen,
            "delta disk (the VM has other snapshots)",
        ));
    }
    if !frozen.is_flat() {
        return Err(unsupported(frozen, &frozen.kind));
    }
    DatastorePath::parse(&frozen.file_name)?.flat_extent()
}

enum Decision {
    Full(Option<String>),
    New,
    TryIncremental(ChangeId),
}

struct Plan<'a> {
    session: &'a Session,
    vm: &'a MoRef,
    snapshot: &'a MoRef,
    dc_path: &'a str,
    previous: &'a BTreeMap<DiskKey, PreviousDisk>,
    options: &'a PrepareOptions,
    cbt_enabled_now: bool,
}

impl Plan<'_> {
    async fn disks(&self) -> Result<Vec<PreparedDisk>, VsphereError> {
        let snap_disks = self.session.snapshot_disks(self.snapshot).await?;
        if snap_disks.is_empty() {
            return Err(VsphereError::UnexpectedResponse {
                what: "snapshot lists no disks",
            });
        }
        let current = self.session.vm_info(self.vm).await?.disks;
        let mut out = Vec::new();
        for sd in &snap_disks {
            check_disk(sd)?;
            out.push(
                self.disk(sd, current.iter().find(|c| c.key == sd.key))
                    .await?,
            );
        }
        out.sort_by_key(|d| d.key);
        Ok(out)
    }

    fn decide(&self, key: DiskKey, sd: &VirtualDisk, new_id: Option<&ChangeId>) -> Decision {
        decide(
            self.previous,
            key,
            sd,
            new_id,
            self.options.force_full,
            self.cbt_enabled_now,
        )
    }

    async fn disk(
        &self,
        sd: &VirtualDisk,
        current: Option<&VirtualDisk>,
    ) -> Result<PreparedDisk, VsphereError> {
        let key_u32 = u32::try_from(sd.key).map_err(|_| VsphereError::InvalidNumber {
            field: "key",
            value: sd.key.to_string(),
        })?;
        let key = DiskKey(key_u32);
        let file = frozen_file(sd, current)?;
        let new_change_id = sd.backing.change_id.as_deref().and_then(|c| {
            ChangeId::try_from(c)
                .inspect_err(|e| warn!(disk = sd.key, error = %e, "ignoring an invalid change id"))
                .ok()
        });
        let decision = self.decide(key, sd, new_change_id.as_ref());
        let (mode, extents, calls) = match decision {
            Decision::TryIncremental(base) => {
                match changed_areas(
                    self.session,
                    self.vm,
                    self.snapshot,
                    sd.key,
                    sd.capacity,
                    base.as_str(),
                )
                .await
                {
                    Ok(a) => (DiskMode::Incremental { base }, a.extents, a.calls),
                    Err(e)
                        if matches!(
                            e.fault_kind(),
                            Some(FaultKind::FileFault | FaultKind::InvalidArgument)
                        ) =>
                    {
                        let reason = format!(
                            "QueryChangedDiskAreas refused the stored change id {base}: {e}"
                        );
                        let (x, c) =
                            full_extents(self.session, self.vm, self.snapshot, sd.key, sd.capacity)
                                .await?;
                        (
                            DiskMode::Full {
                                reason: Some(reason),
                            },
                            x,
                            c,
                        )
                    }
                    Err(e) => return Err(e),
                }
            }
            Decision::Full(reason) => {
                let (x, c) =
                    full_extents(self.session, self.vm, self.snapshot, sd.key, sd.capacity).await?;
                (DiskMode::Full { reason }, x, c)
            }
            Decision::New => {
                let (x, c) =
                    full_extents(self.session, self.vm, self.snapshot, sd.key, sd.capacity).await?;
                (DiskMode::New, x, c)
            }
        };
        match &mode {
            DiskMode::Full { reason: Some(r) } => {
                warn!(disk = %key, reason = %r, "automatic full backup on a new chain");
            }
            DiskMode::Full { reason: None } => info!(disk = %key, "full backup"),
            DiskMode::Incremental { base } => {
                info!(disk = %key, %base, extents = extents.len(), "incremental backup");
            }
            DiskMode::New => {
                info!(disk = %key, "a disk new to the VM: all its allocated areas");
            }
        }
        let allocated =
            matches!(mode, DiskMode::Full { .. } | DiskMode::New).then(|| extents.clone());
        let source = VmDiskSource::new(
            DatastoreFile::new(self.session.clone(), self.dc_path, &file),
            sd.capacity,
        )
        .with_cbt(
            CbtContext {
                session: self.session.clone(),
                vm: self.vm.clone(),
                snapshot: self.snapshot.clone(),
                key: sd.key,
            },
            allocated,
        );
        Ok(PreparedDisk {
            key,
            capacity: sd.capacity,
            uuid: sd.backing.uuid.clone(),
            file: file.to_string(),
            source: Arc::new(source),
            extents,
            new_change_id,
            mode,
            cbt_calls: calls,
        })
    }
}

/// The CBT rules for one disk: a full (with the reason when one was not asked for), a disk new
/// to the VM, or an incremental from the stored change id. `new_id` is the disk's change id now
/// (the snapshot's, or the VM's before the snapshot).
fn decide(
    previous: &BTreeMap<DiskKey, PreviousDisk>,
    key: DiskKey,
    sd: &VirtualDisk,
    new_id: Option<&ChangeId>,
    force_full: bool,
    cbt_enabled_now: bool,
) -> Decision {
    let Some(prev) = previous.get(&key) else {
        if previous.is_empty() || force_full {
            return Decision::Full(None);
        }
        return Decision::New;
    };
    let Some(base) = &prev.change_id else {
        return Decision::Full(None);
    };
    if force_full {
        return Decision::Full(None);
    }
    if cbt_enabled_now {
        return Decision::Full(Some("CBT was off and has just been enabled".to_owned()));
    }
    if let Some(cap) = prev.capacity
        && cap != sd.capacity
    {
        return Decision::Full(Some(format!(
            "capacity changed from {cap} to {} bytes",
            sd.capacity
        )));
    }
    if let (Some(old), Some(new)) = (&prev.uuid, &sd.backing.uuid)
        && old != new
    {
        return Decision::Full(Some(format!("disk UUID changed from {old} to {new}")));
    }
    let Some(new_id) = new_id else {
        return Decision::Full(Some(
            "the disk reports no change id (CBT not active on this disk)".to_owned(),
        ));
    };
    if new_id.uuid_part() != base.uuid_part() {
        return Decision::Full(Some(format!(
            "CBT epoch changed (stored change id {base}, disk now {new_id}): CBT was reset"
        )));
    }
    Decision::TryIncremental(base.clone())
}

/// Before any snapshot: why the VM's next backup must be a full on a new chain, if it must,
/// judged from the VM's current devices with the rules [`VsphereBackup::prepare`] applies to the
/// snapshot's (no previous backup, CBT off, a disk's key, UUID or capacity changed, a CBT epoch
/// changed). A disk new to the VM is no reason ([`DiskMode::New`]). The snapshot may still
/// reveal a reason (`QueryChangedDiskAreas` refusing the stored change id).
#[must_use]
pub fn full_reason_before_snapshot(
    info: &VmInfo,
    previous: &BTreeMap<DiskKey, PreviousDisk>,
) -> Option<String> {
    if previous.is_empty() {
        return Some("no previous backup of this VM to build on".to_owned());
    }
    info.disks.iter().find_map(|d| {
        let key = DiskKey(u32::try_from(d.key).ok()?);
        let now = d
            .backing
            .change_id
            .as_deref()
            .and_then(|c| ChangeId::try_from(c).ok());
        match decide(previous, key, d, now.as_ref(), false, !info.cbt_enabled) {
            Decision::Full(Some(reason)) => Some(format!("disk {key}: {reason}")),
            Decision::Full(None) => Some(format!("disk {key}: no previous backup to build on")),
            Decision::New | Decision::TryIncremental(_) => None,
        }
    })
}

/// All allocated areas (`*`); the whole disk when CBT cannot answer yet.
async fn full_extents(
    session: &Session,
    vm: &MoRef,
    snapshot: &MoRef,
    key: i32,
    capacity: u64,
) -> Result<(Vec<Extent>, u32), VsphereError> {
    match changed_areas(session, vm, snapshot, key, capacity, ALL_ALLOCATED).await {
        Ok(a) => Ok((a.extents, a.calls)),
        Err(e) if e.fault_kind() == Some(&FaultKind::FileFault) => {
            warn!(disk = key, error = %e, "allocated areas unavailable (CBT not active yet); reading the whole disk");
            let whole = if capacity == 0 {
                Vec::new()
            } else {
                vec![Extent::new(0, capacity)]
            };
            Ok((whole, 1))
        }
        Err(e) => Err(e),
    }
}

/// Whether a failed `CreateSnapshot_Task` failed because the guest could not be quiesced
/// (no VMware Tools, or the guest's quiescing failed), rather than for another reason.
fn is_quiesce_fault(fault: &SoapFault) -> bool {
    matches!(
        fault.kind.type_name(),
        "ToolsUnavailable" | "ApplicationQuiesceFault" | "GuestOperationsUnavailable"
    ) || fault.message.to_ascii_lowercase().contains("quiesce")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(file: &str, parent: Option<&str>) -> VirtualDisk {
        VirtualDisk {
            key: 2000,
            capacity: 1024,
            backing: DiskBacking {
                kind: crate::soap::FLAT_BACKING.to_owned(),
                file_name: file.to_owned(),
                uuid: None,
                change_id: None,
                disk_mode: Some("persistent".to_owned()),
                parent: parent.map(|p| Box::new(disk(p, None).backing)),
            },
        }
    }

    #[test]
    fn frozen_file_base_disk_maps_to_flat() {
        let snap = disk("[ds1] vm1/vm1.vmdk", None);
        let cur = disk("[ds1] vm1/vm1-000001.vmdk", Some("[ds1] vm1/vm1.vmdk"));
        assert_eq!(
            frozen_file(&snap, Some(&cur)).unwrap().to_string(),
            "[ds1] vm1/vm1-flat.vmdk"
        );
    }

    #[test]
    fn frozen_file_reported_as_running_delta_uses_parent() {
        let snap = disk("[ds1] vm1/vm1-000001.vmdk", Some("[ds1] vm1/vm1.vmdk"));
        let cur = snap.clone();
        assert_eq!(
            frozen_file(&snap, Some(&cur)).unwrap().to_string(),
            "[ds1] vm1/vm1-flat.vmdk"
        );
    }

    #[test]
    fn frozen_file_delta_is_unsupported() {
        let snap = disk("[ds1] vm1/vm1-000001.vmdk", Some("[ds1] vm1/vm1.vmdk"));
        let cur = disk(
            "[ds1] vm1/vm1-000002.vmdk",
            Some("[ds1] vm1/vm1-000001.vmdk"),
        );
        assert!(matches!(
            frozen_file(&snap, Some(&cur)),
            Err(VsphereError::UnsupportedBacking { .. })
        ));
    }

    #[test]
    fn check_disk_independent_is_unsupported() {
        let mut d = disk("[ds1] vm1/vm1.vmdk", None);
        d.backing.disk_mode = Some("independent_persistent".to_owned());
        assert!(matches!(
            check_disk(&d),
            Err(VsphereError::UnsupportedDiskMode { .. })
        ));
    }
}
