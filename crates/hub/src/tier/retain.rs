//! Verification and retention of points that live in buckets (issue #18: "retention and
//! verification cover bucket points too").
//!
//! # Verifying a point from its copies
//! A `verify` job of an *evicted* point (its files only in buckets) cannot read its chain from
//! the repository; [`Tier::verify_copies`] reads it back from every target holding a verified
//! copy instead, the same way a copy is verified when it is made:
//! - the manifest is read and opened (authenticated under the hub's key) and must name the
//!   point, its parent, and an image (and a digests file where the point has one) for each
//!   of its disks;
//! - every object is read back in full, every 1 MiB chunk authenticated as it is opened, and
//!   its length and SHA-256 compared with the manifest's (the manifest's SHA-256 are those of
//!   the repository's files when they were copied);
//! - each digests file must decode (its trailing hash checks it) for a disk of the point's
//!   size: the digests of an evicted point are what a later restore verifies against.
//!
//! Reading the point's data back through its whole chain against its digests (what a local
//! verification does) would download every layer the point reads through on every
//! verification; it is not done: the bytes in the bucket are proven to be the bytes that were
//! in the repository, chunk by chunk, which a local verification (of the point before it was
//! evicted, or after a fetch) checks against the source.
//!
//! The outcome is recorded like a local verification's (`verification: {state, at, message}`
//! on the point, so the API and the console show it). A copy found damaged (an object missing,
//! a chunk that does not open, a length or SHA-256 that differs) fails the verification, and
//! that copy is marked `failed` with the reason, so no fetch or eviction trusts it again. A
//! store that cannot be reached is not a verdict: the job fails and the point's verification
//! is left as it was. A verification of a point with local files stays local (its copies were
//! verified when they were made, and are verified again whenever the point is evicted and
//! verified).
//!
//! # Removing points whose files are in buckets
//! A prune decides over every completed point of a VM, evicted or not, and removes points
//! with chain merges ([`crate::maintenance`]). The object tier keeps every remaining chain
//! readable, in the repository and in every bucket:
//! 1. Before a removed point `R` is merged into its child `C`, [`Tier::prepare_merge`] fetches
//!    back `C` and every evicted point it reads through ([`Tier::fetch`]: the merge reads and
//!    writes those files), and marks every copy of `C` `queued` again with its uploads
//!    forgotten, *before* the merge is journalled: `C`'s layer (and its manifest's parent)
//!    are about to change, so its copies in buckets stop being copies of it. A crash after
//!    this leaves a copy to be made again, never a stale copy marked verified.
//! 2. The merge runs as usual; `R`'s catalog record is gone, but its copy records stay: they
//!    say which buckets still hold `R`'s objects.
//! 3. After the removal, [`Tier::settle`] copies again every copy of the VM's local points
//!    that is not verified (`C`'s, among them: uploaded whole, read back, verified), evicts
//!    again the points that were evicted before the prune (now that their copies are
//!    verified), and then [`Tier::sweep`]s: the objects of a removed point are deleted from a
//!    bucket (its manifest first, so a half-deleted point is no point in the bucket) and its
//!    copy record forgotten only once no local point of its VM has a copy in that bucket
//!    that is not verified: until `C`'s new copy is verified, `C`'s old copy reads through
//!    `R`'s objects there. (A failed copy of an evicted point holds nothing back: it cannot
//!    be made again, and nothing trusts it.)
//!
//! A removed point nothing read through (the head, an old chain's last point, or a point
//! `DELETE /api/v1/backups/{id}` removed) is simply swept. Every copy job sweeps too, so
//! objects left behind by a prune whose re-copies failed go as soon as a copy succeeds.
//! A store refusing a deletion (Object Lock retention on the bucket) is logged and reported in
//! the job's result; the copy record stays and the next sweep tries again.

use std::collections::HashSet;

use ring::digest::{Context, SHA256};
use sendense_catalog::BackupRecord;
use sendense_digest::{LayerDigests, max_encoded_len};
use sendense_tier::seal::hex;
use sendense_tier::{FileKind, Manifest, layout};
use sendense_types::{
    BackupId, BackupQuery, BackupStatus, CopyState, TargetName, Timestamp, Verification,
    VerificationState, VmName,
};

use super::copy::{read_manifest, read_object};
use super::store::{self, Bucket};
use super::{BUCKET_PREFIX, Tier};
use crate::error::HubError;

/// What [`Tier::settle`] and [`Tier::sweep`] did, for a job's result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettleReport {
    /// Copies made again (point, target).
    pub recopied: Vec<(BackupId, TargetName)>,
    /// Copies that could not be made again (point, target, why).
    pub recopy_failed: Vec<(BackupId, TargetName, String)>,
    /// Points evicted again.
    pub evicted: Vec<BackupId>,
    /// Removed points whose objects were deleted (point, target, objects).
    pub deleted: Vec<(BackupId, TargetName, usize)>,
    /// Removed points whose objects stay for now (point, target, why).
    pub kept: Vec<(BackupId, TargetName, String)>,
}

impl SettleReport {
    /// The report in words (empty when nothing happened).
    #[must_use]
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        said(&mut parts, "copied again", &self.recopied, |(id, t)| {
            format!("{id} to {t}")
        });
        said(
            &mut parts,
            "not copied again",
            &self.recopy_failed,
            |(id, t, why)| format!("{id} to {t} ({why})"),
        );
        said(
            &mut parts,
            "evicted again",
            &self.evicted,
            ToString::to_string,
        );
        said(
            &mut parts,
            "bucket objects of removed points deleted",
            &self.deleted,
            |(id, t, n)| format!("{id} from {t} ({n} objects)"),
        );
        said(
            &mut parts,
            "bucket objects of removed points kept",
            &self.kept,
            |(id, t, why)| format!("{id} in {t} ({why})"),
        );
        parts.join("; ")
    }
}

/// Adds `label: item, item...` to `parts` unless `items` is empty.
fn said<T>(parts: &mut Vec<String>, label: &str, items: &[T], show: impl Fn(&T) -> String) {
    if !items.is_empty() {
        let shown: Vec<String> = items.iter().map(show).collect();
        parts.push(format!("{label}: {}", shown.join(", ")));
    }
}

/// Why a copy's objects cannot be deleted yet (see the module docs), or `None` when they can:
/// `pending` holds the (VM, target) pairs with a copy of a local point that is not verified.
fn hold_reason(
    vm: &VmName,
    target: &TargetName,
    pending: &HashSet<(VmName, TargetName)>,
) -> Option<String> {
    pending
        .contains(&(vm.clone(), target.clone()))
        .then(|| format!("a copy of a point of {vm} there is not verified yet"))
}

/// Whether `e` says a copy is damaged (a verdict), not that the store could not be asked.
fn is_damage(e: &HubError) -> bool {
    matches!(e, HubError::CopyMismatch { .. } | HubError::Tier { .. }) || store::is_not_found(e)
}

impl Tier {
    /// A `verify` job of an evicted point: reads back every verified copy of `backup_id`
    /// (see the module docs), records the outcome on the point and answers it.
    /// `progress(done, total)` counts plaintext bytes read. Runs on a blocking thread inside
    /// the runtime.
    ///
    /// # Errors
    /// Unknown or not completed point; [`HubError::NoVerifiedCopy`]; the key; a store that
    /// cannot be reached (nothing recorded). A damaged copy is not an error: the answer is
    /// `failed`.
    pub fn verify_copies(
        &self,
        backup_id: &BackupId,
        progress: &dyn Fn(u64, u64),
    ) -> Result<Verification, HubError> {
        let record = self.completed(backup_id)?;
        let targets: Vec<TargetName> = self
            .catalog
            .copies_of(backup_id)?
            .into_iter()
            .filter(|c| c.state == CopyState::Verified)
            .map(|c| c.target)
            .collect();
        if targets.is_empty() {
            return Err(HubError::NoVerifiedCopy {
                backup_id: backup_id.clone(),
            });
        }
        let key = self.key()?;
        let handle = tokio::runtime::Handle::current();
        let mut damaged = Vec::new();
        let mut bytes = 0u64;
        for target in &targets {
            let bucket = self.bucket(target)?;
            let checked =
                handle.block_on(check_copy(&bucket, &key, &record, &mut |done, total| {
                    progress(bytes + done, bytes + total);
                }));
            match checked {
                Ok(n) => bytes += n,
                Err(e) if is_damage(&e) => {
                    let why = sendense_io::error_chain(&e);
                    tracing::warn!(%backup_id, %target, error = %why, "copy damaged");
                    self.catalog
                        .update_copy::<HubError>(backup_id, target, |old| {
                            let mut c = old.ok_or(HubError::Worker)?;
                            c.state = CopyState::Failed;
                            c.at = Timestamp::now();
                            c.error = Some(format!("verification: {why}"));
                            Ok(c)
                        })?;
                    damaged.push(format!("copy on {target}: {why}"));
                }
                Err(e) => return Err(e),
            }
        }
        let now = Timestamp::now();
        let names: Vec<&str> = targets.iter().map(TargetName::as_str).collect();
        let verification = if damaged.is_empty() {
            tracing::info!(%backup_id, bytes, targets = ?names, "evicted point verified from its copies");
            Verification {
                state: VerificationState::Ok,
                at: Some(now),
                message: Some(format!(
                    "verified from its copies on {}: every object read back, every chunk \
                     authenticated, {bytes} bytes matching their SHA-256",
                    names.join(", ")
                )),
                ..Verification::default()
            }
        } else {
            Verification {
                state: VerificationState::Failed,
                at: Some(now),
                message: Some(damaged.join("; ")),
                ..Verification::default()
            }
        };
        self.catalog
            .set_verifications(&[(backup_id.clone(), verification.clone())])?;
        Ok(verification)
    }

    /// Before the removed point `removed` is merged into `child` (see the module docs):
    /// fetches back `child` and every evicted point it reads through, and marks every copy of
    /// `child` to be made again. Answers the points fetched. Runs on a blocking thread inside
    /// the runtime.
    ///
    /// # Errors
    /// As [`Tier::fetch`]; catalog errors.
    pub fn prepare_merge(
        &self,
        removed: &BackupId,
        child: &BackupId,
    ) -> Result<Vec<BackupId>, HubError> {
        let fetched = self.fetch(child)?;
        if !fetched.is_empty() {
            tracing::info!(%removed, %child, fetched = fetched.len(), "points fetched back from the bucket for a merge");
        }
        for copy in self.catalog.copies_of(child)? {
            self.catalog
                .update_copy::<HubError>(child, &copy.target, |old| {
                    let mut c = old.ok_or(HubError::Worker)?;
                    c.state = CopyState::Queued;
                    c.at = Timestamp::now();
                    c.uploads.clear();
                    c.error = Some(format!(
                        "to be copied again: its layer changes as {removed} is merged into it"
                    ));
                    Ok(c)
                })?;
        }
        Ok(fetched)
    }

    /// After points of `vm` were removed (see the module docs): copies again every copy of its
    /// local points that is not verified, evicts again the points of `evicted_before` that are
    /// local now, then [`Tier::sweep`]s. Problems are logged and reported, not returned.
    /// Runs on a blocking thread inside the runtime.
    ///
    /// # Errors
    /// Catalog errors.
    pub fn settle(
        &self,
        vm: &VmName,
        evicted_before: &[BackupId],
        progress: &dyn Fn(u64, u64),
    ) -> Result<SettleReport, HubError> {
        let mut report = SettleReport::default();
        let points = self.catalog.backups(&BackupQuery {
            vm_name: Some(vm.clone()),
            status: Some(BackupStatus::Completed),
        })?;
        for point in points.iter().filter(|p| !p.evicted) {
            for copy in self.catalog.copies_of(&point.backup_id)? {
                if copy.state == CopyState::Verified {
                    continue;
                }
                let id = &point.backup_id;
                match self.copy(id, &copy.target, progress) {
                    Ok(_) => report.recopied.push((id.clone(), copy.target)),
                    Err(e) => {
                        let why = sendense_io::error_chain(&e);
                        tracing::warn!(backup_id = %id, target = %copy.target, error = %why, "cannot copy a merged point again");
                        report.recopy_failed.push((id.clone(), copy.target, why));
                    }
                }
            }
        }
        for id in evicted_before {
            let Some(point) = self.catalog.backup(id)? else {
                continue;
            };
            if point.evicted || point.status != BackupStatus::Completed {
                continue;
            }
            match self.evict(id) {
                Ok(_) => report.evicted.push(id.clone()),
                Err(e) => {
                    tracing::warn!(backup_id = %id, error = %sendense_io::error_chain(&e), "point not evicted again");
                }
            }
        }
        let swept = self.sweep()?;
        report.deleted = swept.deleted;
        report.kept = swept.kept;
        Ok(report)
    }

    /// Deletes from buckets the objects of removed points nothing reads through any more
    /// (see the module docs) and forgets their copies. Runs on a blocking thread inside the
    /// runtime.
    ///
    /// # Errors
    /// Catalog errors (a store's refusal is reported in [`SettleReport::kept`]).
    pub fn sweep(&self) -> Result<SettleReport, HubError> {
        let mut report = SettleReport::default();
        let mut gone = Vec::new();
        for copy in self.catalog.copies()? {
            if self.catalog.backup(&copy.backup_id)?.is_none() {
                gone.push(copy);
            }
        }
        if gone.is_empty() {
            return Ok(report);
        }
        // Read after the removed points were seen gone: a merge marks its child's copies to be
        // made again before it removes a point, so a child's stale copy is seen here.
        let mut pending: HashSet<(VmName, TargetName)> = HashSet::new();
        for copy in self.catalog.copies()? {
            if copy.state == CopyState::Verified {
                continue;
            }
            // Only a local point's copy is made again; an evicted point's failed copy is
            // trusted by nothing.
            if self
                .catalog
                .backup(&copy.backup_id)?
                .is_some_and(|r| !r.evicted)
            {
                pending.insert((copy.backup_id.vm_name(), copy.target));
            }
        }
        let handle = tokio::runtime::Handle::current();
        for copy in gone {
            let (id, target) = (copy.backup_id, copy.target);
            let vm = id.vm_name();
            if let Some(why) = hold_reason(&vm, &target, &pending) {
                tracing::info!(backup_id = %id, %target, reason = %why, "objects of a removed point kept for now");
                report.kept.push((id, target, why));
                continue;
            }
            let folder = layout::point_folder(BUCKET_PREFIX, &vm, &id);
            let deleted = self.bucket(&target).and_then(|bucket| {
                handle.block_on(bucket.delete_prefix(&folder, layout::is_manifest))
            });
            match deleted {
                Ok(n) => {
                    self.catalog.delete_copy(&id, &target)?;
                    tracing::info!(backup_id = %id, %target, objects = n, "objects of a removed point deleted from the bucket");
                    report.deleted.push((id, target, n));
                }
                Err(e) => {
                    let why = sendense_io::error_chain(&e);
                    tracing::warn!(backup_id = %id, %target, error = %why, "the store refused to delete the objects of a removed point; they stay (Object Lock?)");
                    report
                        .kept
                        .push((id, target, format!("the store refused: {why}")));
                }
            }
        }
        Ok(report)
    }
}

/// Reads back one copy of `record` (see the module docs); answers the plaintext bytes read.
async fn check_copy(
    bucket: &Bucket,
    key: &sendense_tier::MasterKey,
    record: &BackupRecord,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<u64, HubError> {
    let folder = layout::point_folder(BUCKET_PREFIX, &record.vm_name, &record.backup_id);
    let manifest_name = format!("{folder}/{}", layout::MANIFEST_OBJECT);
    let manifest = read_manifest(bucket, key, &manifest_name).await?;
    let mismatch = |object: String| HubError::CopyMismatch {
        backup_id: record.backup_id.clone(),
        target: bucket.target().clone(),
        object,
    };
    expected_files(record, &manifest)
        .map_err(|what| mismatch(format!("{manifest_name}: {what}")))?;
    let total: u64 = manifest.files.iter().map(|f| f.size).sum();
    let mut done = 0u64;
    for f in &manifest.files {
        let name = format!("{folder}/{}", f.object);
        let mut sha = Context::new(&SHA256);
        // Digests files are small and decoded below: keep them (bounded by their disk's
        // largest digests file).
        let capacity = f
            .disk_key
            .and_then(|k| record.disk(k))
            .map(|d| d.capacity_bytes);
        let keep = f.kind == FileKind::Digests;
        if keep && capacity.is_none_or(|c| f.size > max_encoded_len(c)) {
            return Err(mismatch(format!(
                "{name}: larger than any digests file of its disk"
            )));
        }
        let mut kept = Vec::new();
        let size = read_object(bucket, key, &name, f.size, &mut |plain| {
            sha.update(plain);
            if keep {
                kept.extend_from_slice(plain);
            }
            done += plain.len() as u64;
            progress(done, total);
            Ok(())
        })
        .await?;
        if size != f.size || hex(sha.finish().as_ref()) != f.sha256 {
            return Err(mismatch(name));
        }
        if keep {
            let layer = LayerDigests::decode(&kept)
                .map_err(|e| mismatch(format!("{name}: not a digests file ({e})")))?;
            if Some(layer.disk_size()) != capacity {
                return Err(mismatch(format!(
                    "{name}: digests of a disk of {} bytes",
                    layer.disk_size()
                )));
            }
        }
    }
    Ok(total)
}

/// Checks that `manifest` describes `record`: its id and parent, and for each disk an image
/// (and digests where the point has them). Answers what differs.
fn expected_files(record: &BackupRecord, manifest: &Manifest) -> Result<(), String> {
    if manifest.backup_id != record.backup_id {
        return Err(format!("names backup {}", manifest.backup_id));
    }
    if manifest.parent_backup_id != record.parent_backup_id {
        return Err("names another parent".to_owned());
    }
    for disk in &record.disks {
        let mut kinds = vec![FileKind::Image];
        if disk.digests {
            kinds.push(FileKind::Digests);
        }
        for kind in kinds {
            if manifest.file(kind, Some(disk.disk_key)).is_none() {
                return Err(format!("has no {kind:?} of disk {}", disk.disk_key));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sendense_catalog::{Catalog, CopyRecord, DiskCompletion, TargetRecord, UploadRecord};
    use sendense_tier::{MANIFEST_VERSION, ManifestFile};
    use sendense_types::{RegisterVmRequest, Vm};

    use super::*;
    use crate::credentials::Credentials;

    fn vm(catalog: &Catalog) -> Vm {
        let req: RegisterVmRequest = serde_json::from_value(serde_json::json!(
            {"name": "web01", "disks": [{"key": 2000, "capacity_bytes": 1_048_576}]}
        ))
        .unwrap();
        catalog.upsert_vm(&req, Timestamp::EPOCH).unwrap()
    }

    /// A point of `vm` (a full, or an incremental of `parent`), recorded in `catalog`.
    fn point(catalog: &Catalog, vm: &Vm, parent: Option<&BackupRecord>, n: u32) -> BackupRecord {
        let at = Timestamp::EPOCH.saturating_add_seconds(i64::from(n));
        let id = BackupId::from_parts(&vm.name, at, n);
        let record = BackupRecord::new(id.clone(), vm, parent, BackupStatus::Running, at);
        catalog.create_backup(&record).unwrap();
        let completion = DiskCompletion {
            disk_key: record.disks[0].disk_key,
            change_id: Some("52 aa/1".parse().unwrap()),
            bytes_written: 0,
            digests: false,
        };
        catalog.complete_backup(&id, &[completion], at).unwrap()
    }

    fn manifest_of(record: &BackupRecord, kinds: &[FileKind]) -> Manifest {
        Manifest {
            format_version: MANIFEST_VERSION,
            vm_name: record.vm_name.clone(),
            backup_id: record.backup_id.clone(),
            parent_backup_id: record.parent_backup_id.clone(),
            backup: serde_json::Value::Null,
            files: kinds
                .iter()
                .map(|&kind| ManifestFile {
                    kind,
                    disk_key: Some(record.disks[0].disk_key),
                    object: ManifestFile::expected_object(kind, Some(record.disks[0].disk_key))
                        .unwrap(),
                    size: 0,
                    sha256: String::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn hold_reason_keeps_objects_while_a_copy_of_the_vm_there_is_not_verified() {
        let web: VmName = "web01".parse().unwrap();
        let db: VmName = "db01".parse().unwrap();
        let t1: TargetName = "t1".parse().unwrap();
        let t2: TargetName = "t2".parse().unwrap();
        let pending: HashSet<(VmName, TargetName)> = [(web.clone(), t1.clone())].into();

        assert!(hold_reason(&web, &t1, &pending).is_some());
        assert_eq!(hold_reason(&web, &t2, &pending), None);
        assert_eq!(hold_reason(&db, &t1, &pending), None);
    }

    #[test]
    fn expected_files_needs_the_points_id_parent_image_and_digests() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open_in(dir.path()).unwrap();
        let web = vm(&catalog);
        let full = point(&catalog, &web, None, 1);
        let mut incr = point(&catalog, &web, Some(&full), 2);
        incr.disks[0].digests = true;
        let both = [FileKind::Image, FileKind::Digests];

        assert_eq!(expected_files(&incr, &manifest_of(&incr, &both)), Ok(()));
        let no_digests = expected_files(&incr, &manifest_of(&incr, &[FileKind::Image]));
        assert!(no_digests.is_err_and(|e| e.contains("Digests")));
        let mut other_parent = manifest_of(&incr, &both);
        other_parent.parent_backup_id = None;
        assert!(expected_files(&incr, &other_parent).is_err());
        assert!(expected_files(&full, &manifest_of(&incr, &both)).is_err());
    }

    #[test]
    fn prepare_merge_marks_the_childs_copies_to_be_made_again_from_scratch() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Arc::new(Catalog::open_in(dir.path()).unwrap());
        let credentials = Arc::new(Credentials::open(Arc::clone(&catalog), dir.path()).unwrap());
        let tier = Tier::new(
            Arc::clone(&catalog),
            credentials,
            dir.path(),
            &dir.path().join("repository"),
        );
        let web = vm(&catalog);
        let full = point(&catalog, &web, None, 1);
        let child = point(&catalog, &web, Some(&full), 2);
        let target: TargetName = "offsite".parse().unwrap();
        catalog
            .put_target(&TargetRecord {
                name: target.clone(),
                endpoint: "http://127.0.0.1:9".into(),
                bucket: "b".into(),
                region: "r".into(),
                access_key: "k".into(),
                sealed_secret: Vec::new(),
                object_lock_days: 0,
                created_at: Timestamp::EPOCH,
            })
            .unwrap();
        for id in [&full.backup_id, &child.backup_id] {
            catalog
                .update_copy::<HubError>(id, &target, |_| {
                    Ok(CopyRecord {
                        state: CopyState::Verified,
                        uploads: vec![UploadRecord {
                            object: "disk-2000.qcow2.sealed".into(),
                            salt: "00".into(),
                            plain_len: 1,
                            upload_id: None,
                            parts: vec!["etag".into()],
                            done: true,
                        }],
                        ..CopyRecord::queued(id.clone(), target.clone(), Timestamp::EPOCH)
                    })
                })
                .unwrap();
        }

        let fetched = tier
            .prepare_merge(&full.backup_id, &child.backup_id)
            .unwrap();

        assert!(fetched.is_empty(), "nothing was evicted: {fetched:?}");
        let copy = catalog
            .copy_record(&child.backup_id, &target)
            .unwrap()
            .unwrap();
        assert_eq!((copy.state, copy.uploads.len()), (CopyState::Queued, 0));
        assert!(
            copy.error
                .is_some_and(|e| e.contains(full.backup_id.as_str()))
        );
        let untouched = catalog
            .copy_record(&full.backup_id, &target)
            .unwrap()
            .unwrap();
        assert_eq!(untouched.state, CopyState::Verified);
    }

    #[test]
    fn describe_names_what_was_done_and_what_a_store_refused() {
        let id: BackupId = "backup-web01-20261207T101010-abcdef".parse().unwrap();
        let t: TargetName = "offsite".parse().unwrap();
        let report = SettleReport {
            recopied: vec![(id.clone(), t.clone())],
            deleted: vec![(id.clone(), t.clone(), 4)],
            kept: vec![(id.clone(), t, "the store refused: locked".into())],
            ..SettleReport::default()
        };

        assert_eq!(
            report.describe(),
            format!(
                "copied again: {id} to offsite; bucket objects of removed points deleted: {id} \
                 from offsite (4 objects); bucket objects of removed points kept: {id} in \
                 offsite (the store refused: locked)"
            )
        );
        assert_eq!(SettleReport::default().describe(), "");
    }
}
