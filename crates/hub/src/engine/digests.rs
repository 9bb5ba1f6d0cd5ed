//! The digests of a running backup's disks (`PUT /api/v1/backups/{id}/disks/{key}/digests`):
//! the client sends each disk's [`LayerDigests`] file, taken from the bytes it read at the
//! source, before `complete`.
//!
//! An upload is decoded (bounded: [`sendense_digest::max_encoded_len`] of the disk's
//! capacity), its disk size checked against the disk's, and written beside the image under a
//! hidden temporary name (`.<backup_id>.digests.part`), fsynced. `complete` renames it into
//! place ([`sendense_types::digest_path`]) with the image and sets `DiskRecord.digests` in the
//! same catalog update; `fail` removes it. A later upload of the same disk replaces the earlier
//! one. Each disk's [`DigestSlot`] serializes uploads with the teardown: once `complete` or
//! `fail` has closed it, an upload answers 409 and touches no file.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use sendense_digest::LayerDigests;
use sendense_types::{BackupId, DiskKey};

use super::{Engine, Slot, remove_quietly, temp_path};
use crate::error::HubError;

/// Where one disk's digests go, and whether they arrived.
#[derive(Debug)]
pub(super) struct DigestSlot {
    /// `.<backup_id>.digests.part` beside the image.
    pub(super) temp: PathBuf,
    /// `<backup_id>.digests` beside the image.
    pub(super) target: PathBuf,
    state: Arc<tokio::sync::Mutex<UploadState>>,
    /// Set by [`DigestSlot::close`]: a file is stored at `temp`.
    stored: bool,
}

/// What uploads have done, guarded by the slot's lock.
#[derive(Debug, Default)]
struct UploadState {
    /// A complete, checked file is at `temp`.
    stored: bool,
    /// `complete` or `fail` took over: no upload may write any more.
    closed: bool,
}

impl DigestSlot {
    /// The slot of the digests at `target` (relative names resolved by the caller).
    pub(super) fn new(target: PathBuf) -> Self {
        Self {
            temp: temp_path(&target),
            target,
            state: Arc::default(),
            stored: false,
        }
    }

    /// Ends uploads (waiting for one in progress); afterwards [`DigestSlot::stored`] says
    /// whether a file is stored at `temp`.
    pub(super) async fn close(&mut self) {
        let mut state = self.state.lock().await;
        state.closed = true;
        self.stored = state.stored;
    }

    /// After [`DigestSlot::close`]: whether a checked file is stored at `temp`.
    pub(super) fn stored(&self) -> bool {
        self.stored
    }
}

impl Engine {
    /// The largest digest file accepted for disk `key` of running backup `id`: the bound of
    /// [`sendense_digest::max_encoded_len`] for its capacity.
    ///
    /// # Errors
    /// Unknown backup (404), not running (409), no such disk (400).
    pub fn digests_limit(&self, id: &BackupId, key: DiskKey) -> Result<u64, HubError> {
        let record = self.running_record(id)?;
        let disk = record.disk(key).ok_or_else(|| HubError::UnknownDisk {
            backup_id: id.clone(),
            disk_key: key,
        })?;
        Ok(sendense_digest::max_encoded_len(disk.capacity_bytes))
    }

    /// Stores the digests of disk `key` of running backup `id` under their temporary name
    /// (see the module documentation). Runs on its own task: dropping the returned future
    /// does not stop a write half way.
    ///
    /// # Errors
    /// Unknown backup (404); not running, still starting, or being completed or failed (409);
    /// no such disk, a malformed file, or one of another disk size (400); a repository
    /// failure.
    pub async fn store_digests(
        self: &Arc<Self>,
        id: &BackupId,
        key: DiskKey,
        body: Bytes,
    ) -> Result<(), HubError> {
        let engine = Arc::clone(self);
        let id = id.clone();
        tokio::spawn(async move { engine.store_owned(id, key, body).await })
            .await
            .map_err(|_| HubError::Worker)?
    }

    async fn store_owned(
        self: Arc<Self>,
        id: BackupId,
        key: DiskKey,
        body: Bytes,
    ) -> Result<(), HubError> {
        let record = self.running_record(&id)?;
        let capacity = record
            .disk(key)
            .ok_or_else(|| HubError::UnknownDisk {
                backup_id: id.clone(),
                disk_key: key,
            })?
            .capacity_bytes;
        let (state, temp) = {
            let live = self.live();
            match live.running.get(&id) {
                Some(Slot::Running { disks, .. }) => {
                    let disk = disks.iter().find(|d| d.key == key).ok_or_else(|| {
                        HubError::UnknownDisk {
                            backup_id: id.clone(),
                            disk_key: key,
                        }
                    })?;
                    (Arc::clone(&disk.digests.state), disk.digests.temp.clone())
                }
                Some(Slot::Starting { .. }) => {
                    return Err(HubError::Busy {
                        backup_id: id,
                        state: "still starting",
                    });
                }
                Some(Slot::Finishing { .. }) => {
                    return Err(HubError::Busy {
                        backup_id: id,
                        state: "being completed or failed",
                    });
                }
                None => return Err(self.not_live(&record)),
            }
        };
        let mut guard = state.lock_owned().await;
        if guard.closed {
            return Err(HubError::Busy {
                backup_id: id,
                state: "being completed or failed",
            });
        }
        let written = tokio::task::spawn_blocking(move || {
            let result = check_and_write(&id, key, capacity, &body, &temp);
            guard.stored = result.is_ok();
            if result.is_err() {
                remove_quietly(&temp);
            }
            result.map(|blocks| (id, blocks))
        })
        .await
        .map_err(|_| HubError::Worker)?;
        let (id, blocks) = written?;
        tracing::info!(backup_id = %id, disk_key = %key, blocks, "digests stored");
        Ok(())
    }
}

/// Decodes `body`, checks it describes a disk of `capacity` bytes, and writes it at `temp`
/// (mode 0600, fsynced); answers the number of blocks it records.
fn check_and_write(
    id: &BackupId,
    key: DiskKey,
    capacity: u64,
    body: &[u8],
    temp: &Path,
) -> Result<u64, HubError> {
    let layer = LayerDigests::decode(body).map_err(|source| HubError::DigestsMalformed {
        backup_id: id.clone(),
        disk_key: key,
        source,
    })?;
    if layer.disk_size() != capacity {
        return Err(HubError::DigestsWrongSize {
            backup_id: id.clone(),
            disk_key: key,
            found: layer.disk_size(),
            capacity,
        });
    }
    let io = |e| HubError::io(temp, e);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(temp)
        .map_err(io)?;
    file.write_all(body).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(layer.blocks())
}
