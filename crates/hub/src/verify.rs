//! Verification (DESIGN.md "Verification"): a restore point read back, block by block, against
//! the digests of the bytes read at the source ([`sendense_digest`]).
//!
//! Each disk of the point is opened read-only through its chain (QEMU's read locks: backups
//! that build on it keep running; a merge that must write one of its files waits), read in
//! [`CHUNK`] pieces by a reader thread while this thread hashes the previous piece, and every
//! [`BLOCK_SIZE`] block compared with what the chain's digest layers say it must read as.
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
use std::sync::mpsc;

use sendense_catalog::{BackupRecord, Catalog};
use sendense_digest::{BLOCK_SIZE, BlockDigest, LayerDigests, PointDigests, max_encoded_len};
use sendense_qcow2::{Backing, BackingPolicy, ExtentState, Image, MAX_CHAIN_DEPTH, OpenOptions};
use sendense_types::{
    BackupId, BackupQuery, BackupStatus, BadRange, DiskKey, Timestamp, Verification,
    VerificationState, VmName,
};

use crate::error::HubError;

/// Bytes read (and hashed) per step: 64 blocks.
pub const CHUNK: usize = 4 << 20;
/// [`BLOCK_SIZE`] as a buffer length.
const BLOCK: usize = 64 << 10;
const _: () = assert!(BLOCK as u64 == BLOCK_SIZE && CHUNK.is_multiple_of(BLOCK));

/// What a verification found on the disks of one point.
type Hits = BTreeMap<BackupId, (BTreeSet<(DiskKey, u64)>, Option<BackupId>)>;
/// Bad ranges kept per point (the rest are counted in the message).
const MAX_BAD_RANGES: usize = 1024;

/// Verifies restore points of the repository.
#[derive(Debug, Clone)]
pub struct Verifier {
    catalog: Arc<Catalog>,
    repository: PathBuf,
}

/// A block that read wrong: its disk, index, and the backup whose layer holds it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct BadBlock {
    disk_key: DiskKey,
    block: u64,
    owner: BackupId,
}

impl Verifier {
    /// A verifier of the points `catalog` knows, whose files live under `repository`.
    #[must_use]
    pub fn new(catalog: Arc<Catalog>, repository: PathBuf) -> Self {
        Self {
            catalog,
            repository,
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
    /// an image that cannot be read ([`HubError::Digests`], [`HubError::Image`]). A point whose
    /// bytes differ is not an error: it answers `state: failed`.
    pub fn verify(
        &self,
        id: &BackupId,
        progress: &dyn Fn(u64, u64),
    ) -> Result<Verification, HubError> {
        let record = self
            .catalog
            .backup(id)?
            .ok_or_else(|| HubError::BackupNotFound {
                backup_id: id.clone(),
            })?;
        if record.status != BackupStatus::Completed {
            return Err(HubError::WrongStatus {
                backup_id: id.clone(),
                status: record.status,
                expected: "completed",
            });
        }
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
            let chain = DiskChain::open(&path, disk.disk_key)?;
            let found = chain.verify(&mut |n| {
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
        Ok(load_digests(&path, d.capacity_bytes)?.get(block).is_some())
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

/// One disk of a point: its image chain (top first in `images`, owners oldest first) and the
/// digests of every layer.
#[derive(Debug)]
struct DiskChain {
    disk_key: DiskKey,
    image: Arc<Image>,
    /// The backup each layer belongs to, oldest (the full) first.
    owners: Vec<BackupId>,
    /// The digests of each layer, in the same order.
    layers: Vec<LayerDigests>,
}

impl DiskChain {
    fn open(path: &Path, disk_key: DiskKey) -> Result<Self, HubError> {
        let opts = OpenOptions::read_only()
            .max_chain_depth(MAX_CHAIN_DEPTH)
            .backing(BackingPolicy::repository());
        let image = Image::open(path, &opts).map_err(|e| HubError::image(path, e))?;
        let mut files = Vec::new();
        let mut level = Some(&image);
        while let Some(img) = level {
            files.push((img.path().to_path_buf(), img.virtual_size()));
            level = match img.backing() {
                None => None,
                Some(Backing::Qcow2(b)) => Some(b),
                Some(raw @ Backing::Raw(_)) => {
                    return Err(HubError::NotOurChain {
                        path: raw.path().to_path_buf(),
                    });
                }
            };
        }
        files.reverse();
        let mut owners = Vec::with_capacity(files.len());
        let mut layers = Vec::with_capacity(files.len());
        for (f, size) in &files {
            let owner = f
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<BackupId>().ok())
                .ok_or_else(|| HubError::NotOurChain { path: f.clone() })?;
            let digests = digests_path(f);
            if !digests.is_file() {
                return Err(HubError::NoDigests {
                    backup_id: owner,
                    disk_key,
                });
            }
            layers.push(load_digests(&digests, *size)?);
            owners.push(owner);
        }
        Ok(Self {
            disk_key,
            image: Arc::new(image),
            owners,
            layers,
        })
    }

    /// The digests of `id`'s layer, if it is one of this chain's.
    fn layer_of(&self, id: &BackupId) -> Option<&LayerDigests> {
        self.owners
            .iter()
            .position(|o| o == id)
            .map(|i| &self.layers[i])
    }

    /// Reads the whole disk and answers the blocks that read differently from their digests.
    /// `read(n)` is told after each chunk.
    fn verify(&self, read: &mut dyn FnMut(u64)) -> Result<Vec<BadBlock>, HubError> {
        let point = PointDigests::new(&self.layers);
        let size = self.image.virtual_size();
        if point.disk_size() != size {
            return Err(HubError::DigestSize {
                path: self.image.path().to_path_buf(),
                digests: point.disk_size(),
                image: size,
            });
        }
        let mut bad = Vec::new();
        let (full_tx, full_rx) = mpsc::sync_channel::<Result<(u64, Vec<u8>), HubError>>(2);
        let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
        for _ in 0..3 {
            let _ = empty_tx.send(Vec::with_capacity(CHUNK));
        }
        let image = Arc::clone(&self.image);
        std::thread::scope(|scope| -> Result<(), HubError> {
            scope.spawn(move || {
                let mut pos = 0u64;
                while pos < size {
                    let Ok(mut buf) = empty_rx.recv() else {
                        return;
                    };
                    let len = usize::try_from(size - pos).map_or(CHUNK, |rest| rest.min(CHUNK));
                    buf.resize(len, 0);
                    let r = image
                        .read_at(&mut buf, pos)
                        .map(|()| (pos, buf))
                        .map_err(|e| HubError::image(image.path(), e));
                    let failed = r.is_err();
                    if full_tx.send(r).is_err() || failed {
                        return;
                    }
                    pos += len as u64;
                }
            });
            let mut pos = 0u64;
            while pos < size {
                let (offset, buf) = full_rx.recv().map_err(|_| HubError::Worker)??;
                for (i, block) in buf.chunks(BLOCK).enumerate() {
                    let index = offset / BLOCK_SIZE + i as u64;
                    let (expected, owner) = point.expected(index);
                    if BlockDigest::of(block) != expected {
                        let owner = match owner {
                            Some(o) => o,
                            None => self.allocating_layer(index)?,
                        };
                        bad.push(BadBlock {
                            disk_key: self.disk_key,
                            block: index,
                            owner: self.owners[owner].clone(),
                        });
                    }
                }
                pos = offset + buf.len() as u64;
                read(buf.len() as u64);
                let _ = empty_tx.send(buf);
            }
            Ok(())
        })?;
        Ok(bad)
    }

    /// The index of the newest layer whose image allocates `block` (0, the full, when none
    /// does): the owner of bytes no digest layer recorded.
    fn allocating_layer(&self, block: u64) -> Result<usize, HubError> {
        let mut level = Some(self.image.as_ref());
        let mut index = self.owners.len();
        let offset = block * BLOCK_SIZE;
        let len = BLOCK_SIZE.min(self.image.virtual_size() - offset);
        while let Some(img) = level {
            index = index.saturating_sub(1);
            if offset < img.virtual_size() {
                let len = len.min(img.virtual_size() - offset);
                let status = img
                    .block_status(offset, len)
                    .map_err(|e| HubError::image(img.path(), e))?;
                if status.iter().any(|e| e.state != ExtentState::Unallocated) {
                    return Ok(index);
                }
            }
            level = img.backing().and_then(Backing::as_image);
        }
        Ok(0)
    }
}

/// The digests file beside an image.
fn digests_path(image: &Path) -> PathBuf {
    image.with_extension("digests")
}

/// Reads and decodes a digests file of a `capacity`-byte disk, refusing one larger than any
/// such file can be.
fn load_digests(path: &Path, capacity: u64) -> Result<LayerDigests, HubError> {
    let len = std::fs::metadata(path)
        .map_err(|e| HubError::io(path, e))?
        .len();
    if len > max_encoded_len(capacity) {
        return Err(HubError::Digests {
            path: path.to_path_buf(),
            source: sendense_digest::DigestError::Malformed {
                reason: "larger than any digests file of this disk",
            },
        });
    }
    let bytes = std::fs::read(path).map_err(|e| HubError::io(path, e))?;
    LayerDigests::decode(&bytes).map_err(|source| HubError::Digests {
        path: path.to_path_buf(),
        source,
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
