//! Verification (DESIGN.md "Verification"): a restore point read back, block by block, against
//! the digests of the bytes read at the source ([`sendense_digest`]).
//!
//! Each disk of the point is read through its chain by [`sendense_image::verify`] (read-only,
//! QEMU's read locks: backups that build on it keep running; a merge that must write one of
//! its files waits) and every [`BLOCK_SIZE`] block compared with what the chain's digest
//! layers say it must read as.
//!
//! A block that reads wrong is owned by the layer that holds it: the newest layer whose digests
//! record it (or, for a block no layer recorded, the newest image that allocates it). Every
//! point that reads through that layer's block fails with it: the owner, and each later point
//! of the chain up to the first one whose own layer rewrote the block. Earlier points and later
//! points that rewrote the block are untouched, so a restore of an earlier point still
//! verifies. The verified point answers `failed_through` when the bad bytes are an earlier
//! point's.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sendense_catalog::{BackupRecord, Catalog};
use sendense_digest::{BLOCK_SIZE, LayerDigests};
use sendense_image::ImageError;
use sendense_image::verify::{ChainVerification, digests_path, load_digests, verify_chain};
use sendense_qcow2::BackingPolicy;
use sendense_types::{
    BackupId, BackupQuery, BackupStatus, BadRange, DiskKey, Timestamp, Verification,
    VerificationState, VmName,
};

use crate::error::HubError;
use crate::maintenance::ChainLocks;

/// How long a verification waits for a removal of points of the same VM to end.
const LOCK_WAIT: Duration = Duration::from_secs(3600);

/// What a verification found on the disks of one point.
type Hits = BTreeMap<BackupId, (BTreeSet<(DiskKey, u64)>, Option<BackupId>)>;
/// Bad ranges kept per point (the rest are counted in the message).
const MAX_BAD_RANGES: usize = 1024;

/// Verifies restore points of the repository.
#[derive(Debug, Clone)]
pub struct Verifier {
    catalog: Arc<Catalog>,
    repository: PathBuf,
    locks: Arc<ChainLocks>,
}

/// A block that read wrong: its disk, index, and the backup whose layer holds it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct BadBlock {
    disk_key: DiskKey,
    block: u64,
    owner: BackupId,
}

impl Verifier {
    /// A verifier of the points `catalog` knows, whose files live under `repository`; it
    /// holds the VM's chain lock shared (`locks`) while it reads, so no removal of points
    /// changes the files under it.
    #[must_use]
    pub fn new(catalog: Arc<Catalog>, repository: PathBuf, locks: Arc<ChainLocks>) -> Self {
        Self {
            catalog,
            repository,
            locks,
        }
    }

    /// Verifies completed backup `id`: every disk read back through its chain and compared with
    /// its digests. Records the outcome on the point and on every point that reads through a
    /// bad block (see the module documentation) and answers the point's verification.
    /// `progress(done, total)` is called after each chunk with bytes read so far and the
    /// point's total. Blocking: call it from a blocking thread.
    ///
    /// # Errors
    /// [`HubError::BackupNotFound`]; [`HubError::WrongStatus`] unless completed;
    /// [`HubError::FilesMissing`]; [`HubError::NoDigests`] when a layer the point reads has no
    /// digests (it was written by a client that does not send them); a damaged digests file or
    /// an image that cannot be read ([`HubError::Verify`]). A point whose
    /// bytes differ is not an error: it answers `state: failed`.
    pub fn verify(
        &self,
        id: &BackupId,
        progress: &dyn Fn(u64, u64),
    ) -> Result<Verification, HubError> {
        let record = crate::engine::completed_record(&self.catalog, id)?;
        let _chain = self.locks.read(&record.vm_name, LOCK_WAIT)?;
        let total: u64 = record.disks.iter().map(|d| d.capacity_bytes).sum();
        let mut done = 0u64;
        let mut bad = Vec::new();
        let mut layers_by_disk = HashMap::new();
        for disk in &record.disks {
            let path = self.repository.join(&disk.file);
            if record.files_missing || !path.is_file() {
                return Err(HubError::FilesMissing {
                    backup_id: id.clone(),
                    file: disk.file.clone(),
                });
            }
            let (chain, found) = DiskChain::verify(&path, disk.disk_key, &mut |n| {
                done = done.saturating_add(n);
                progress(done, total);
            })?;
            bad.extend(found);
            layers_by_disk.insert(disk.disk_key, chain);
        }
        let now = Timestamp::now();
        let outcomes = self.outcomes(&record, &bad, &layers_by_disk, now)?;
        let mine = outcomes.iter().find(|(b, _)| b == id).map_or_else(
            || Verification {
                state: VerificationState::Ok,
                at: Some(now),
                ..Verification::default()
            },
            |(_, v)| v.clone(),
        );
        let mut all = outcomes;
        if !all.iter().any(|(b, _)| b == id) {
            all.push((id.clone(), mine.clone()));
        }
        self.catalog.set_verifications(&all)?;
        match mine.state {
            VerificationState::Failed => tracing::warn!(
                backup_id = %id,
                bad_ranges = mine.bad_ranges.len(),
                points = all.len(),
                "verification failed"
            ),
            _ => tracing::info!(backup_id = %id, bytes = total, "verification passed"),
        }
        Ok(mine)
    }

    /// The verification of every point a bad block touches (empty when none is bad).
    fn outcomes(
        &self,
        record: &BackupRecord,
        bad: &[BadBlock],
        chains: &HashMap<DiskKey, DiskChain>,
        now: Timestamp,
    ) -> Result<Vec<(BackupId, Verification)>, HubError> {
        if bad.is_empty() {
            return Ok(Vec::new());
        }
        let children = self.children(&record.vm_name)?;
        // point -> (disk, block) pairs it reads wrong, and the owner of the first one.
        let mut hits = Hits::new();
        for b in bad {
            let mut point = Some(b.owner.clone());
            let mut first = true;
            while let Some(p) = point {
                if !first {
                    let own = chains.get(&b.disk_key).and_then(|c| c.layer_of(&p));
                    let rewrote = match own {
                        Some(layer) => layer.get(b.block).is_some(),
                        None => self.rewrote(&p, b.disk_key, b.block)?,
                    };
                    if rewrote {
                        break;
                    }
                }
                first = false;
                let entry = hits.entry(p.clone()).or_default();
                entry.0.insert((b.disk_key, b.block));
                if p != b.owner && entry.1.is_none() {
                    entry.1 = Some(b.owner.clone());
                }
                point = children.get(&p).cloned();
            }
        }
        // The verified point reads every bad block, whoever owns it.
        let me = hits.entry(record.backup_id.clone()).or_default();
        for b in bad {
            me.0.insert((b.disk_key, b.block));
            if b.owner != record.backup_id && me.1.is_none() {
                me.1 = Some(b.owner.clone());
            }
        }
        Ok(hits
            .into_iter()
            .map(|(id, (blocks, through))| {
                let (ranges, dropped) = ranges_of(&blocks, |k| {
                    record.disk(k).map_or(u64::MAX, |d| d.capacity_bytes)
                });
                let bytes: u64 = ranges.iter().map(|r| r.length).sum();
                let mut message = format!(
                    "{bytes} bytes in {} ranges read differently from the source",
                    ranges.len() + dropped
                );
                if let Some(t) = &through {
                    message.push_str(&format!(" (they belong to backup {t}, read through)"));
                }
                (
                    id,
                    Verification {
                        state: VerificationState::Failed,
                        at: Some(now),
                        bad_ranges: ranges,
                        failed_through: through,
                        message: Some(message),
                    },
                )
            })
            .collect())
    }

    /// Whether later point `id`'s own layer of `disk` recorded `block` (so it does not read an
    /// earlier layer's copy). Reads that point's digests file.
    fn rewrote(&self, id: &BackupId, disk: DiskKey, block: u64) -> Result<bool, HubError> {
        let Some(record) = self.catalog.backup(id)? else {
            return Ok(false);
        };
        let Some(d) = record.disk(disk) else {
            return Ok(false);
        };
        let image = self.repository.join(&d.file);
        let path = digests_path(&image);
        if !path.is_file() {
            // Without digests it cannot be told: assume it reads the bad block.
            return Ok(false);
        }
        let layer = load_digests(&path, d.capacity_bytes).map_err(HubError::Verify)?;
        Ok(layer.get(block).is_some())
    }

    /// parent -> child among the VM's completed points.
    fn children(&self, vm: &VmName) -> Result<HashMap<BackupId, BackupId>, HubError> {
        let query = BackupQuery {
            vm_name: Some(vm.clone()),
            status: Some(BackupStatus::Completed),
        };
        Ok(self
            .catalog
            .backups(&query)?
            .into_iter()
            .filter_map(|r| r.parent_backup_id.map(|p| (p, r.backup_id)))
            .collect())
    }
}

/// One disk of a point, verified: its chain's owners (oldest first) and what was found.
#[derive(Debug)]
struct DiskChain {
    /// The backup each layer belongs to, oldest (the full) first.
    owners: Vec<BackupId>,
    report: ChainVerification,
}

impl DiskChain {
    /// Verifies the chain of `path`; the bad blocks with the backups owning them.
    fn verify(
        path: &Path,
        disk_key: DiskKey,
        read: &mut dyn FnMut(u64),
    ) -> Result<(Self, Vec<BadBlock>), HubError> {
        let report =
            verify_chain(path, BackingPolicy::repository(), read).map_err(|e| match e {
                ImageError::NoDigests { image } => match owner_of(&image) {
                    Ok(backup_id) => HubError::NoDigests {
                        backup_id,
                        disk_key,
                    },
                    Err(e) => e,
                },
                other => HubError::Verify(other),
            })?;
        let owners = report
            .layers
            .iter()
            .map(|f| owner_of(f))
            .collect::<Result<Vec<_>, _>>()?;
        let bad = report
            .bad
            .iter()
            .map(|b| BadBlock {
                disk_key,
                block: b.block,
                owner: owners[b.layer].clone(),
            })
            .collect();
        Ok((Self { owners, report }, bad))
    }

    /// The digests of `id`'s layer, if it is one of this chain's.
    fn layer_of(&self, id: &BackupId) -> Option<&LayerDigests> {
        self.owners
            .iter()
            .position(|o| o == id)
            .map(|i| &self.report.digests[i])
    }
}

/// The backup a repository image belongs to: its file name is `<backup_id>.qcow2`.
fn owner_of(file: &Path) -> Result<BackupId, HubError> {
    file.file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse::<BackupId>().ok())
        .ok_or_else(|| HubError::NotOurChain {
            path: file.to_path_buf(),
        })
}

/// Joins bad blocks into byte ranges per disk (at most [`MAX_BAD_RANGES`]; answers how many
/// more there were). `capacity(disk)` clips the last block.
fn ranges_of(
    blocks: &BTreeSet<(DiskKey, u64)>,
    capacity: impl Fn(DiskKey) -> u64,
) -> (Vec<BadRange>, usize) {
    let mut out: Vec<BadRange> = Vec::new();
    for &(disk_key, block) in blocks {
        let offset = block * BLOCK_SIZE;
        let length = BLOCK_SIZE.min(capacity(disk_key).saturating_sub(offset));
        match out.last_mut() {
            Some(r) if r.disk_key == disk_key && r.offset + r.length == offset => {
                r.length += length;
            }
            _ => out.push(BadRange {
                disk_key,
                offset,
                length,
            }),
        }
    }
    let dropped = out.len().saturating_sub(MAX_BAD_RANGES);
    out.truncate(MAX_BAD_RANGES);
    (out, dropped)
}
