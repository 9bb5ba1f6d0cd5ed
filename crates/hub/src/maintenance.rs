//! Chain maintenance (DESIGN.md "Retention and chain maintenance"): removing restore points
//! of a VM so that every remaining point restores exactly what it did, with a journal that
//! survives a crash at any instant, and the per-VM [`ChainLocks`] that keep backups, restores
//! and verifications off a chain while it changes.
//!
//! How one point `R` is removed ([`Maintenance::remove_points`]):
//! - `R` has no child (the head, or the last point of an older chain): its files are deleted;
//!   when it was the head the head moves back to its parent, so the next incremental asks CBT
//!   for the changes since the parent's change id.
//! - `R` is a full with a child `C`: `C`'s layer is committed into `R`'s file
//!   ([`Image::commit`]), which then reads as `C`, and is renamed over `C`'s file (atomic
//!   rename, folder fsynced), so file names keep matching the points they hold; `C` becomes a
//!   full. Digests: `R.overlay(C)`.
//! - `R` is a middle point with a child `C`: `C` absorbs `R`'s layer
//!   ([`Image::absorb_backing`]) and is re-pointed at `R`'s parent (a relative name);
//!   `R`'s files are deleted. Digests: `C.underlay(R)`.
//!
//! A disk without a digests file on either side leaves the merged point without one.
//!
//! # Points in buckets
//! With the object tier ([`Maintenance::with_tier`]), a removal decides over evicted points
//! too. Before `R` is merged into `C`, [`Tier::prepare_merge`] fetches back `C` and every
//! evicted point it reads through and marks `C`'s copies to be made again; `R`'s copy records
//! outlive it, and the prune job ([`crate::hub_jobs`]) then copies `C` again, evicts again what
//! was evicted, and deletes `R`'s objects from a bucket once nothing there reads through them
//! ([`Tier::settle`]; the design is in the object tier's `retain.rs`). A removed point nothing
//! reads through needs no fetch: its objects are deleted the same way.
//!
//! # Journal and crash safety
//! A merge step is journalled in the catalog ([`sendense_catalog::MergeStep`]) before any
//! file is touched, and its phase moves as it goes. Every file operation of a step is
//! idempotent and can be rolled forward: while `C` is committed into `R`, every point from `C`
//! up reads the same at every instant (`R` changes only where `C` masks it), and while `C`
//! absorbs `R`, `C` reads the same at every instant (its header names the new backing file
//! only once the data is durable). Merged digests are written under a temporary name (folder
//! fsynced) before the image step that makes them true, and renamed into place after it. The
//! catalog changes in one transaction at the end of each step, so the API never answers a
//! half-merged point: until then the removed point and its child read as before.
//! [`Maintenance::resume`] (at hub start, before the API serves) rolls every unfinished step
//! forward, repairs clusters a crash leaked in the image being written, and forgets steps that
//! never touched a file.
//!
//! # Concurrency
//! A removal holds its VM's chain lock exclusively ([`ChainLocks::write`]); backup starts,
//! restore opens and deletions take it shared and without waiting ([`ChainLocks::try_read`]):
//! a backup asked for while a merge of its VM runs is refused with 409 naming the merge (a
//! policy retries at its next run; a client can retry when the removal ends) rather than held
//! for a merge of unknown length. Before touching files, a removal waits (up to
//! [`Maintenance::with_wait`], one minute by default) for the VM's running backup and for
//! restore exports open on any point of the VM to end, and otherwise fails naming them. A point
//! an instant recovery reads (its point or one below it) is refused at once
//! ([`HubError::InstantHeld`], naming the instant): an instant recovery may last for days.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use sendense_catalog::{BackupRecord, Catalog, MergeDisk, MergeKind, MergePhase, MergeStep};
use sendense_digest::LayerDigests;
use sendense_qcow2::{BackingPolicy, Image, MAX_CHAIN_DEPTH, OpenOptions};
use sendense_types::{
    BackupId, BackupQuery, BackupStatus, DiskKey, Timestamp, VmName, digest_path,
};

use crate::engine::Engine;
use crate::error::HubError;
use crate::tier::Tier;

/// How long a removal waits, by default, for a running backup or open restore exports of its
/// VM to end before it fails.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// How often a waiting removal looks again.
const POLL: Duration = Duration::from_millis(100);

// ------------------------------------------------------------------------------ locks

/// Per-VM reader/writer locks on a VM's chains. A removal takes its VM's lock exclusively;
/// anything that reads or extends a chain (a backup start, a restore open, a verification)
/// takes it shared. Guards release on drop and may be held across threads and `.await`s.
/// A writer waiting for readers to leave keeps new readers out, so it is not starved.
#[derive(Debug, Default)]
pub struct ChainLocks {
    state: Mutex<HashMap<VmName, LockState>>,
    cv: Condvar,
}

#[derive(Debug, Default)]
struct LockState {
    readers: usize,
    /// What holds (or waits for) the exclusive lock.
    writer: Option<String>,
    writer_holds: bool,
}

/// A shared hold of one VM's chains (see [`ChainLocks`]).
#[derive(Debug)]
#[must_use = "the lock is released when the guard drops"]
pub struct ChainReadGuard {
    locks: Arc<ChainLocks>,
    vm: VmName,
}

/// The exclusive hold of one VM's chains (see [`ChainLocks`]).
#[derive(Debug)]
#[must_use = "the lock is released when the guard drops"]
pub struct ChainWriteGuard {
    locks: Arc<ChainLocks>,
    vm: VmName,
}

impl ChainLocks {
    fn lock(&self) -> MutexGuard<'_, HashMap<VmName, LockState>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes `vm`'s lock shared without waiting.
    ///
    /// # Errors
    /// [`HubError::ChainBusy`] (409) naming the removal that holds or waits for it.
    pub fn try_read(self: &Arc<Self>, vm: &VmName) -> Result<ChainReadGuard, HubError> {
        let mut map = self.lock();
        let state = map.entry(vm.clone()).or_default();
        if let Some(holder) = &state.writer {
            return Err(HubError::ChainBusy {
                vm: vm.clone(),
                holder: holder.clone(),
            });
        }
        state.readers += 1;
        Ok(ChainReadGuard {
            locks: Arc::clone(self),
            vm: vm.clone(),
        })
    }

    /// Takes `vm`'s lock shared, waiting up to `limit` for a removal to end (blocking: call it
    /// from a blocking thread).
    ///
    /// # Errors
    /// [`HubError::ChainBusy`] when the removal still runs after `limit`.
    pub fn read(
        self: &Arc<Self>,
        vm: &VmName,
        limit: Duration,
    ) -> Result<ChainReadGuard, HubError> {
        let until = Instant::now() + limit;
        let mut map = self.lock();
        loop {
            let state = map.entry(vm.clone()).or_default();
            match &state.writer {
                None => {
                    state.readers += 1;
                    return Ok(ChainReadGuard {
                        locks: Arc::clone(self),
                        vm: vm.clone(),
                    });
                }
                Some(holder) => {
                    let now = Instant::now();
                    if now >= until {
                        return Err(HubError::ChainBusy {
                            vm: vm.clone(),
                            holder: holder.clone(),
                        });
                    }
                    map = self
                        .cv
                        .wait_timeout(map, until - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
        }
    }

    /// Takes `vm`'s lock exclusively for `holder` (what the error of a refused reader names),
    /// waiting up to `limit` for readers and another removal to leave (blocking).
    ///
    /// # Errors
    /// [`HubError::ChainBusy`] when they do not leave within `limit`.
    pub fn write(
        self: &Arc<Self>,
        vm: &VmName,
        holder: String,
        limit: Duration,
    ) -> Result<ChainWriteGuard, HubError> {
        let until = Instant::now() + limit;
        let mut map = self.lock();
        // Wait for another writer to finish, then announce ourselves.
        loop {
            let state = map.entry(vm.clone()).or_default();
            match &state.writer {
                None => {
                    state.writer = Some(holder);
                    break;
                }
                Some(other) => {
                    let now = Instant::now();
                    if now >= until {
                        return Err(HubError::ChainBusy {
                            vm: vm.clone(),
                            holder: other.clone(),
                        });
                    }
                    map = self
                        .cv
                        .wait_timeout(map, until - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
        }
        // New readers are now refused; wait for the present ones.
        loop {
            let state = map.entry(vm.clone()).or_default();
            if state.readers == 0 {
                state.writer_holds = true;
                return Ok(ChainWriteGuard {
                    locks: Arc::clone(self),
                    vm: vm.clone(),
                });
            }
            let now = Instant::now();
            if now >= until {
                let readers = state.readers;
                state.writer = None;
                drop(map);
                self.cv.notify_all();
                return Err(HubError::ChainBusy {
                    vm: vm.clone(),
                    holder: format!("{readers} backup start(s), restore(s) or verification(s)"),
                });
            }
            map = self
                .cv
                .wait_timeout(map, until - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// What holds (or waits for) `vm`'s lock exclusively, if anything.
    #[must_use]
    pub fn writer(&self, vm: &VmName) -> Option<String> {
        self.lock().get(vm).and_then(|s| s.writer.clone())
    }
}

impl Drop for ChainReadGuard {
    fn drop(&mut self) {
        let mut map = self.locks.lock();
        if let Some(state) = map.get_mut(&self.vm) {
            state.readers = state.readers.saturating_sub(1);
            if state.readers == 0 && state.writer.is_none() {
                map.remove(&self.vm);
            }
        }
        drop(map);
        self.locks.cv.notify_all();
    }
}

impl Drop for ChainWriteGuard {
    fn drop(&mut self) {
        let mut map = self.locks.lock();
        if let Some(state) = map.get_mut(&self.vm) {
            state.writer = None;
            state.writer_holds = false;
            if state.readers == 0 {
                map.remove(&self.vm);
            }
        }
        drop(map);
        self.locks.cv.notify_all();
    }
}

// ------------------------------------------------------------------------ maintenance

/// What [`Maintenance::remove_points`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoveReport {
    /// The points removed, in the order they were.
    pub removed: Vec<BackupId>,
    /// Merge steps run (commits and absorbs).
    pub merges: usize,
    /// Bytes of image files moved by the merges (estimated from the layers' file sizes).
    pub bytes_moved: u64,
    /// The VM's chain head afterwards.
    pub head: Option<BackupId>,
}

/// What [`Maintenance::resume`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResumeReport {
    /// Steps a crash interrupted after they touched files, now rolled forward (removed ids).
    pub rolled_forward: Vec<BackupId>,
    /// Steps a crash interrupted before they touched a file, now forgotten (removed ids).
    pub abandoned: Vec<BackupId>,
    /// Steps that could not be finished (removed id, error): they stay journalled and the next
    /// removal of that VM, or the next start, tries again.
    pub failed: Vec<(BackupId, String)>,
}

/// Removes restore points with chain merges (see the module docs).
#[derive(Debug)]
pub struct Maintenance {
    catalog: Arc<Catalog>,
    repository: PathBuf,
    engine: Arc<Engine>,
    locks: Arc<ChainLocks>,
    wait: Duration,
    tier: Option<Arc<Tier>>,
}

impl Maintenance {
    /// Maintenance of the repository folder `repository` (`DATA/repository`) that `catalog`
    /// describes and `engine` serves; it shares the engine's [`ChainLocks`].
    #[must_use]
    pub fn new(catalog: Arc<Catalog>, repository: PathBuf, engine: Arc<Engine>) -> Self {
        let locks = Arc::clone(engine.chain_locks());
        Self {
            catalog,
            repository,
            engine,
            locks,
            wait: DEFAULT_WAIT,
            tier: None,
        }
    }

    /// The same maintenance, removing points whose files live in buckets too (see the module
    /// docs, "Points in buckets").
    #[must_use]
    pub fn with_tier(mut self, tier: Arc<Tier>) -> Self {
        self.tier = Some(tier);
        self
    }

    /// How long a removal waits for the VM's running backup, open restore exports or other
    /// holders of its chain lock to end ([`DEFAULT_WAIT`] unless set).
    #[must_use]
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// The per-VM chain locks (shared with the engine): a verification takes its VM's lock
    /// shared ([`ChainLocks::read`]) so no merge changes the files it reads.
    #[must_use]
    pub fn chain_locks(&self) -> &Arc<ChainLocks> {
        &self.locks
    }

    /// Takes `vm`'s chain lock shared, waiting up to the removal wait for a running removal.
    ///
    /// # Errors
    /// [`HubError::ChainBusy`].
    pub fn read_lock(&self, vm: &VmName) -> Result<ChainReadGuard, HubError> {
        self.locks.read(vm, self.wait)
    }

    /// Removes the completed points `ids` of `vm` (any of its chains, several at once) so that
    /// every remaining point restores exactly what it did (see the module docs). Blocking: run
    /// it on a blocking thread. `progress(done, total)` is called with the bytes moved so far
    /// and the total estimated, after each disk's merge.
    ///
    /// # Errors
    /// [`HubError::VmNotFound`], [`HubError::BackupNotFound`]; [`HubError::InvalidInput`]
    /// for a point of another VM; [`HubError::WrongStatus`] for a point not completed;
    /// [`HubError::Protected`] naming protected points (nothing is removed);
    /// [`HubError::InstantHeld`] naming the instant recoveries that read any of the points;
    /// [`HubError::ChainBusy`] when the VM's running backup, restore exports or chain lock
    /// holders do not end within the wait; image and repository errors (the step stays
    /// journalled and is rolled forward by the next removal of the VM or the next start).
    pub fn remove_points(
        &self,
        vm: &VmName,
        ids: &[BackupId],
        progress: &dyn Fn(u64, u64),
    ) -> Result<RemoveReport, HubError> {
        if self.catalog.vm(vm)?.is_none() {
            return Err(HubError::VmNotFound { vm: vm.clone() });
        }
        let mut records = Vec::new();
        let mut protected = Vec::new();
        for id in ids.iter().collect::<BTreeSet<_>>() {
            let record = self
                .catalog
                .backup(id)?
                .ok_or_else(|| HubError::BackupNotFound {
                    backup_id: id.clone(),
                })?;
            if &record.vm_name != vm {
                return Err(HubError::InvalidInput {
                    field: "ids",
                    reason: "every point removed must be a backup of the VM named",
                });
            }
            if record.status != BackupStatus::Completed {
                return Err(HubError::WrongStatus {
                    backup_id: id.clone(),
                    status: record.status,
                    expected: "completed",
                });
            }
            if record.protected {
                protected.push(id.clone());
            }
            records.push(record);
        }
        if !protected.is_empty() {
            return Err(HubError::Protected {
                backup_ids: protected,
            });
        }
        // Oldest first, in the catalog's creation order.
        let order: HashMap<BackupId, usize> = self
            .vm_backups(vm)?
            .into_iter()
            .enumerate()
            .map(|(i, r)| (r.backup_id, i))
            .collect();
        records.sort_by_key(|r| order.get(&r.backup_id).copied().unwrap_or(usize::MAX));
        let names: Vec<&str> = records.iter().map(|r| r.backup_id.as_str()).collect();
        let _guard = self.locks.write(
            vm,
            format!("removing restore points {}", names.join(", ")),
            self.wait,
        )?;
        // Steps a crash or an error left for this VM go first: they hold the catalog's view.
        for step in self.catalog.merges()? {
            if &step.vm_name == vm {
                self.resume_step(&step)?;
            }
        }
        // An instant recovery reads its point and every point below it: none of them may be
        // merged or removed while it exists (it may last for days: refused, not waited for).
        self.engine.refuse_instant_held(vm, ids)?;
        // A queued or running restore job reads its point the same way, until it ends.
        self.engine.refuse_restore_held(vm, ids)?;
        self.wait_idle(vm)?;
        let all = self.vm_backups(vm)?;
        let total: u64 = records
            .iter()
            .map(|r| self.estimate(r, &all))
            .fold(0, u64::saturating_add);
        let mut report = RemoveReport::default();
        progress(0, total);
        for record in &records {
            let moved = self.remove_one(&record.backup_id, &mut report)?;
            report.bytes_moved = report.bytes_moved.saturating_add(moved);
            progress(report.bytes_moved, total.max(report.bytes_moved));
            report.removed.push(record.backup_id.clone());
        }
        report.head = self.catalog.latest_completed(vm)?.map(|r| r.backup_id);
        tracing::info!(
            vm = %vm,
            removed = report.removed.len(),
            merges = report.merges,
            bytes_moved = report.bytes_moved,
            "restore points removed"
        );
        Ok(report)
    }

    /// Rolls forward every unfinished merge step (at hub start, before the API serves): steps
    /// that touched files are finished, steps that did not are forgotten. Logs each.
    ///
    /// # Errors
    /// The catalog cannot be read. A step that fails is reported in
    /// [`ResumeReport::failed`] (and logged) and stays journalled.
    pub fn resume(&self) -> Result<ResumeReport, HubError> {
        let mut report = ResumeReport::default();
        for step in self.catalog.merges()? {
            let _guard = self.locks.write(
                &step.vm_name,
                format!("finishing the removal of {}", step.removed),
                self.wait,
            )?;
            let touched = step.phase != MergePhase::Planned;
            match self.resume_step(&step) {
                Ok(()) if touched => {
                    tracing::warn!(
                        removed = %step.removed,
                        child = %step.child,
                        kind = ?step.kind,
                        phase = ?step.phase,
                        "merge step interrupted by a crash: rolled forward"
                    );
                    report.rolled_forward.push(step.removed.clone());
                }
                Ok(()) => {
                    tracing::warn!(
                        removed = %step.removed,
                        "merge step interrupted before touching a file: forgotten"
                    );
                    report.abandoned.push(step.removed.clone());
                }
                Err(e) => {
                    let msg = sendense_io::error_chain(&e);
                    tracing::error!(removed = %step.removed, error = %msg, "cannot finish an interrupted merge step; it stays journalled");
                    report.failed.push((step.removed.clone(), msg));
                }
            }
        }
        Ok(report)
    }

    /// Finishes (or forgets) one journalled step.
    fn resume_step(&self, step: &MergeStep) -> Result<(), HubError> {
        if step.phase == MergePhase::Planned {
            self.catalog.abandon_merge(&step.removed)?;
            return Ok(());
        }
        if step.phase == MergePhase::Merging {
            self.run_step(step, true)?;
            self.catalog
                .set_merge_phase(&step.removed, MergePhase::Merged)?;
        }
        self.finish_step(step)
    }

    /// Every backup of the VM.
    fn vm_backups(&self, vm: &VmName) -> Result<Vec<BackupRecord>, HubError> {
        Ok(self.catalog.backups(&BackupQuery {
            vm_name: Some(vm.clone()),
            ..BackupQuery::default()
        })?)
    }

    /// Waits until the VM has no running backup and no restore exports open on its points.
    fn wait_idle(&self, vm: &VmName) -> Result<(), HubError> {
        let until = Instant::now() + self.wait;
        loop {
            let running: Vec<BackupId> = self
                .catalog
                .running_backups()?
                .into_iter()
                .filter(|r| &r.vm_name == vm)
                .map(|r| r.backup_id)
                .collect();
            let restores: Vec<BackupId> = self
                .engine
                .restores_open()
                .into_iter()
                .filter(|id| &id.vm_name() == vm)
                .collect();
            if running.is_empty() && restores.is_empty() {
                return Ok(());
            }
            if Instant::now() >= until {
                let mut what = Vec::new();
                if !running.is_empty() {
                    what.push(format!("running backup {}", join(&running)));
                }
                if !restores.is_empty() {
                    what.push(format!("restore exports open on {}", join(&restores)));
                }
                return Err(HubError::ChainBusy {
                    vm: vm.clone(),
                    holder: what.join(" and "),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Bytes a removal of `r` is expected to move.
    fn estimate(&self, r: &BackupRecord, all: &[BackupRecord]) -> u64 {
        let Some(child) = child_of(all, &r.backup_id) else {
            return 0;
        };
        let moved = if r.parent_backup_id.is_none() {
            child
        } else {
            r
        };
        moved
            .disks
            .iter()
            .map(|d| fs::metadata(self.repository.join(&d.file)).map_or(0, |m| m.len()))
            .fold(0, u64::saturating_add)
    }

    /// Removes one point; answers the bytes moved.
    fn remove_one(&self, id: &BackupId, report: &mut RemoveReport) -> Result<u64, HubError> {
        let Some(record) = self.catalog.backup(id)? else {
            // An interrupted step finished before this removal began removed it already.
            tracing::info!(backup_id = %id, "restore point already removed");
            return Ok(0);
        };
        let all = self.vm_backups(&record.vm_name)?;
        let Some(child) = child_of(&all, id).cloned() else {
            // Nothing reads through it: delete it (the head moves back to its parent).
            let deleted = self.catalog.delete_backup(id)?;
            let mut files: Vec<String> = Vec::new();
            for d in &deleted.disks {
                files.push(d.file.clone());
                files.push(digest_path(&deleted.vm_name, d.disk_key, id));
            }
            self.remove_files(id, &files);
            tracing::info!(backup_id = %id, "restore point removed (nothing read through it)");
            return Ok(0);
        };
        if let Some(tier) = &self.tier {
            // Fetches back what the merge reads and writes; marks the child's copies to be
            // made again (before the step is journalled).
            tier.prepare_merge(id, &child.backup_id)?;
        }
        let step = self.plan(&record, &child)?;
        let moved = self.estimate(&record, &all);
        self.catalog.begin_merge(&step)?;
        tracing::info!(removed = %id, into = %child.backup_id, kind = ?step.kind, "merge step started");
        self.catalog
            .set_merge_phase(&step.removed, MergePhase::Merging)?;
        self.run_step(&step, false)?;
        self.catalog
            .set_merge_phase(&step.removed, MergePhase::Merged)?;
        self.finish_step(&step)?;
        report.merges += 1;
        tracing::info!(
            removed = %id,
            into = %child.backup_id,
            kind = ?step.kind,
            bytes = moved,
            "restore point removed by a merge"
        );
        Ok(moved)
    }

    /// The merge step removing `r` into its child `c`.
    fn plan(&self, r: &BackupRecord, c: &BackupRecord) -> Result<MergeStep, HubError> {
        let kind = if r.parent_backup_id.is_none() {
            MergeKind::Commit
        } else {
            MergeKind::Absorb
        };
        let keys: BTreeSet<DiskKey> = r.disks.iter().chain(&c.disks).map(|d| d.disk_key).collect();
        let mut disks = Vec::new();
        for key in keys {
            let rd = r.disk(key);
            let cd = c.disk(key);
            let merge = match (rd, cd) {
                (Some(rd), Some(cd)) => {
                    let path = self.repository.join(&cd.file);
                    let info = Image::open(&path, &read_opts())
                        .map_err(|e| HubError::image(&path, e))?
                        .info();
                    info.backing_file.as_deref() == file_name(&rd.file)
                }
                _ => false,
            };
            let digests = match (rd, cd) {
                (Some(rd), Some(cd)) if merge => rd.digests && cd.digests,
                (_, Some(cd)) => cd.digests,
                _ => false,
            };
            disks.push(MergeDisk {
                disk_key: key,
                removed_file: rd.map(|d| d.file.clone()),
                child_file: cd.map(|d| d.file.clone()),
                merge,
                digests,
            });
        }
        Ok(MergeStep {
            vm_name: r.vm_name.clone(),
            removed: r.backup_id.clone(),
            child: c.backup_id.clone(),
            kind,
            phase: MergePhase::Planned,
            disks,
            started_at: Timestamp::now(),
        })
    }

    /// Runs (or re-runs: every operation is idempotent) the file part of a step.
    /// `recovering`: a crash may have interrupted an earlier run; repair leaks of the image
    /// written.
    fn run_step(&self, step: &MergeStep, recovering: bool) -> Result<(), HubError> {
        for disk in step.disks.iter().filter(|d| d.merge) {
            let (Some(removed_file), Some(child_file)) = (&disk.removed_file, &disk.child_file)
            else {
                continue;
            };
            let files = DiskFiles {
                removed: self.repository.join(removed_file),
                child: self.repository.join(child_file),
                removed_digests: self.repository.join(digest_path(
                    &step.vm_name,
                    disk.disk_key,
                    &step.removed,
                )),
                child_digests: self.repository.join(digest_path(
                    &step.vm_name,
                    disk.disk_key,
                    &step.child,
                )),
            };
            match step.kind {
                MergeKind::Commit => commit_disk(&files, disk.digests, recovering)?,
                MergeKind::Absorb => absorb_disk(&files, disk.digests, recovering)?,
            }
        }
        Ok(())
    }

    /// The catalog transaction ending a step, then the removed point's leftover files.
    fn finish_step(&self, step: &MergeStep) -> Result<(), HubError> {
        let mut leftover = Vec::new();
        for d in &step.disks {
            if let Some(f) = &d.removed_file {
                leftover.push(f.clone());
                leftover.push(digest_path(&step.vm_name, d.disk_key, &step.removed));
            }
            if d.merge && !d.digests && d.child_file.is_some() {
                leftover.push(digest_path(&step.vm_name, d.disk_key, &step.child));
            }
        }
        let flags: HashMap<DiskKey, bool> =
            step.disks.iter().map(|d| (d.disk_key, d.digests)).collect();
        self.catalog.finish_merge(
            &step.removed,
            |k| flags.get(&k).copied().unwrap_or(false),
            &leftover,
        )?;
        self.remove_files(&step.removed, &leftover);
        Ok(())
    }

    /// Removes files of a removed point, fsyncs their folders and clears the deletion
    /// journal entry (kept when a removal failed: the next start finishes it).
    fn remove_files(&self, id: &BackupId, files: &[String]) {
        let mut folders = BTreeSet::new();
        let mut all_gone = true;
        for file in files {
            let path = self.repository.join(file);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    all_gone = false;
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove file");
                }
            }
            if let Some(folder) = path.parent() {
                folders.insert(folder.to_path_buf());
            }
        }
        for folder in folders {
            if let Err(e) = sendense_io::sync_dir(&folder) {
                all_gone = false;
                tracing::warn!(folder = %folder.display(), error = %e, "cannot fsync folder");
            }
        }
        if all_gone && let Err(e) = self.catalog.finish_deletion(id) {
            tracing::warn!(backup_id = %id, error = %sendense_io::error_chain(&e), "cannot clear deletion journal entry");
        }
    }
}

impl crate::hub_jobs::PointRemover for Maintenance {
    fn remove_points(
        &self,
        vm: &VmName,
        ids: &[BackupId],
        progress: &dyn Fn(u64, u64),
    ) -> Result<String, HubError> {
        let report = Self::remove_points(self, vm, ids, progress)?;
        Ok(format!(
            "removed {} points with {} merges ({} bytes moved)",
            report.removed.len(),
            report.merges,
            report.bytes_moved
        ))
    }
}

/// The files of one disk of a step.
struct DiskFiles {
    removed: PathBuf,
    child: PathBuf,
    removed_digests: PathBuf,
    child_digests: PathBuf,
}

impl DiskFiles {
    /// Where merged digests wait for the image step that makes them true.
    fn merged_digests(&self) -> PathBuf {
        let name = self
            .child_digests
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.child_digests.with_file_name(format!(".{name}.part"))
    }
}

fn read_opts() -> OpenOptions {
    OpenOptions::read_only()
        .max_chain_depth(MAX_CHAIN_DEPTH)
        .backing(BackingPolicy::repository())
}

fn write_opts() -> OpenOptions {
    OpenOptions::writable()
        .max_chain_depth(MAX_CHAIN_DEPTH)
        .backing(BackingPolicy::repository())
}

/// Commits the child's layer into the removed full's file and renames it over the child's.
/// Idempotent: once the removed file is gone the rename happened.
fn commit_disk(f: &DiskFiles, digests: bool, recovering: bool) -> Result<(), HubError> {
    if f.removed.exists() {
        {
            let child =
                Image::open(&f.child, &read_opts()).map_err(|e| HubError::image(&f.child, e))?;
            let backs_on_removed = child
                .backing()
                .is_some_and(|b| b.path().file_name() == f.removed.file_name());
            if !backs_on_removed {
                return Err(HubError::image(
                    &f.child,
                    sendense_qcow2::Qcow2Error::InvalidOptions {
                        reason: "the child's image does not read through the removed full's",
                    },
                ));
            }
            child.commit().map_err(|e| HubError::image(&f.removed, e))?;
        }
        if recovering {
            repair(&f.removed)?;
        }
        if digests {
            let mut merged = read_digests(&f.removed_digests)?;
            merged
                .overlay(&read_digests(&f.child_digests)?)
                .map_err(|e| digest_error(&f.child_digests, e))?;
            write_durably(&f.merged_digests(), &merged.encode())?;
        }
        fs::rename(&f.removed, &f.child).map_err(|e| HubError::io(&f.removed, e))?;
        sync_parent(&f.child)?;
    }
    place_digests(f)
}

/// Absorbs the removed middle layer into the child, re-pointing it at the removed point's
/// parent. Idempotent: once the child no longer names the removed file it is done.
fn absorb_disk(f: &DiskFiles, digests: bool, recovering: bool) -> Result<(), HubError> {
    let mut child =
        Image::open(&f.child, &write_opts()).map_err(|e| HubError::image(&f.child, e))?;
    let names_removed = child
        .backing()
        .is_some_and(|b| b.path().file_name() == f.removed.file_name());
    if names_removed {
        if digests {
            let mut merged = read_digests(&f.child_digests)?;
            merged
                .underlay(&read_digests(&f.removed_digests)?)
                .map_err(|e| digest_error(&f.removed_digests, e))?;
            write_durably(&f.merged_digests(), &merged.encode())?;
        }
        child
            .absorb_backing()
            .map_err(|e| HubError::image(&f.child, e))?;
        if recovering {
            child
                .repair_leaks()
                .map_err(|e| HubError::image(&f.child, e))?;
        }
    }
    drop(child);
    place_digests(f)
}

/// Moves merged digests into place (after the image step that makes them true).
fn place_digests(f: &DiskFiles) -> Result<(), HubError> {
    let merged = f.merged_digests();
    if merged.exists() {
        fs::rename(&merged, &f.child_digests).map_err(|e| HubError::io(&merged, e))?;
        sync_parent(&f.child_digests)?;
    }
    Ok(())
}

/// Gives back clusters a crash leaked in `path`.
fn repair(path: &Path) -> Result<(), HubError> {
    let image = Image::open(path, &write_opts()).map_err(|e| HubError::image(path, e))?;
    let leaked = image.repair_leaks().map_err(|e| HubError::image(path, e))?;
    if leaked > 0 {
        tracing::warn!(path = %path.display(), clusters = leaked, "repaired clusters a crash leaked");
    }
    Ok(())
}

fn read_digests(path: &Path) -> Result<LayerDigests, HubError> {
    let bytes = fs::read(path).map_err(|e| HubError::io(path, e))?;
    LayerDigests::decode(&bytes).map_err(|e| digest_error(path, e))
}

fn digest_error(path: &Path, e: sendense_digest::DigestError) -> HubError {
    HubError::io(
        path,
        std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    )
}

/// Writes `bytes` to `path` (replacing it), fsyncs it and its folder.
fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), HubError> {
    let mut file = fs::File::create(path).map_err(|e| HubError::io(path, e))?;
    file.write_all(bytes).map_err(|e| HubError::io(path, e))?;
    file.sync_all().map_err(|e| HubError::io(path, e))?;
    sync_parent(path)
}

fn sync_parent(path: &Path) -> Result<(), HubError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    sendense_io::sync_dir(dir).map_err(|e| HubError::io(dir, e))
}

fn file_name(rel: &str) -> Option<&str> {
    rel.rsplit('/').next()
}

/// The completed point whose parent is `id`, if any (chains are linear).
fn child_of<'a>(all: &'a [BackupRecord], id: &BackupId) -> Option<&'a BackupRecord> {
    all.iter()
        .find(|b| b.parent_backup_id.as_ref() == Some(id) && b.status == BackupStatus::Completed)
}

fn join(ids: &[BackupId]) -> String {
    ids.iter()
        .map(BackupId::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}
