//! Copying a point to a target (resumable multipart uploads of sealed objects), reading it
//! back to verify it, and fetching a point's files back from a bucket. See [`super`].

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use ring::digest::{Context, SHA256};
use sendense_catalog::{BackupRecord, CopyRecord, UploadRecord};
use sendense_tier::manifest::MAX_MANIFEST_BYTES;
use sendense_tier::seal::{self, hex};
use sendense_tier::{
    CHUNK_SIZE, FileKind, HEADER_LEN, Header, MANIFEST_VERSION, Manifest, ManifestFile, MasterKey,
    ObjectCipher, layout,
};
use sendense_types::{BackupId, CopyState, TargetName, Timestamp};

use super::store::{self, Bucket};
use super::{BUCKET_PREFIX, Tier};
use crate::error::HubError;

/// Chunks per uploaded part: 8 MiB of plaintext (S3 parts but the last must be 5 MiB or more).
pub const PART_CHUNKS: u64 = 8;
/// Parts of one object in flight at once.
pub const PARALLEL_PARTS: usize = 4;
/// A file of a point to copy.
struct Source {
    kind: FileKind,
    disk_key: Option<sendense_types::DiskKey>,
    /// On disk, or the bytes themselves (the VM configuration).
    content: Content,
}

enum Content {
    File(std::path::PathBuf),
    Bytes(Vec<u8>),
}

impl Tier {
    /// Runs a copy job: copies `backup_id` to `target` (resuming what an earlier attempt
    /// uploaded), then verifies it; answers what it did, in words. Runs on a blocking thread
    /// inside the hub's runtime.
    ///
    /// # Errors
    /// Unknown or not completed point, unknown target, key missing, the store failing past
    /// its retries, a read-back mismatch. The copy is recorded `failed` with the reason; the
    /// parts uploaded so far stay recorded for the next attempt.
    pub fn copy(
        &self,
        backup_id: &BackupId,
        target: &TargetName,
        progress: &dyn Fn(u64, u64),
    ) -> Result<String, HubError> {
        let outcome = self.copy_inner(backup_id, target, progress);
        let (state, error) = match &outcome {
            Ok(_) => (CopyState::Verified, None),
            Err(e) => (CopyState::Failed, Some(sendense_io::error_chain(e))),
        };
        let recorded = self
            .catalog
            .update_copy::<HubError>(backup_id, target, |old| {
                let mut c = old.unwrap_or_else(|| {
                    CopyRecord::queued(backup_id.clone(), target.clone(), Timestamp::now())
                });
                c.state = state;
                c.at = Timestamp::now();
                c.error.clone_from(&error);
                Ok(c)
            });
        if let Err(e) = recorded {
            tracing::error!(%backup_id, %target, error = %sendense_io::error_chain(&e), "cannot record the end of a copy");
        }
        outcome
    }

    fn copy_inner(
        &self,
        backup_id: &BackupId,
        target: &TargetName,
        progress: &dyn Fn(u64, u64),
    ) -> Result<String, HubError> {
        let record = self.completed(backup_id)?;
        let bucket = self.bucket(target)?;
        let key = self.key()?;
        self.catalog
            .update_copy::<HubError>(backup_id, target, |old| {
                let mut c = old.unwrap_or_else(|| {
                    CopyRecord::queued(backup_id.clone(), target.clone(), Timestamp::now())
                });
                c.state = CopyState::Running;
                c.at = Timestamp::now();
                c.error = None;
                Ok(c)
            })?;
        let sources = self.sources(&record)?;
        let total: u64 = sources.iter().map(Source::len).sum::<Result<u64, _>>()?;
        let done = AtomicU64::new(0);
        let report = |n: u64| progress(done.fetch_add(n, Ordering::Relaxed) + n, total);
        let folder = layout::point_folder(BUCKET_PREFIX, &record.vm_name, &record.backup_id);
        let handle = tokio::runtime::Handle::current();
        let mut files = Vec::with_capacity(sources.len());
        for source in &sources {
            let object = ManifestFile::expected_object(source.kind, source.disk_key)
                .ok_or(HubError::Worker)?;
            let name = format!("{folder}/{object}");
            let (size, sha256) = match &source.content {
                Content::File(path) if source.kind == FileKind::Image => handle
                    .block_on(self.upload_file(&bucket, &key, backup_id, &name, path, &report))?,
                content => {
                    let bytes = match content {
                        Content::File(path) => {
                            std::fs::read(path).map_err(|e| HubError::io(path, e))?
                        }
                        Content::Bytes(b) => b.clone(),
                    };
                    let sealed =
                        seal::seal_all(&key, &name, &bytes).map_err(|source| HubError::Tier {
                            object: name.clone(),
                            source,
                        })?;
                    handle.block_on(bucket.put(&name, sealed))?;
                    report(bytes.len() as u64);
                    (bytes.len() as u64, sha256_hex(&bytes))
                }
            };
            files.push(ManifestFile {
                kind: source.kind,
                disk_key: source.disk_key,
                object,
                size,
                sha256,
            });
        }
        let manifest = Manifest {
            format_version: MANIFEST_VERSION,
            vm_name: record.vm_name.clone(),
            backup_id: record.backup_id.clone(),
            parent_backup_id: record.parent_backup_id.clone(),
            backup: serde_json::to_value(&record).map_err(|_| HubError::Worker)?,
            files,
        };
        let manifest_name = format!("{folder}/{}", layout::MANIFEST_OBJECT);
        let plain = manifest.encode().map_err(|source| HubError::Tier {
            object: manifest_name.clone(),
            source,
        })?;
        let sealed =
            seal::seal_all(&key, &manifest_name, &plain).map_err(|source| HubError::Tier {
                object: manifest_name.clone(),
                source,
            })?;
        handle.block_on(bucket.put(&manifest_name, sealed))?;
        let bytes = handle.block_on(verify_point(&bucket, &key, &folder, &manifest))?;
        tracing::info!(%backup_id, %target, bytes, "copy verified");
        Ok(format!(
            "backup {backup_id} copied to {target} and verified: {} objects, {bytes} bytes",
            manifest.files.len() + 1
        ))
    }

    /// The files of a point: each disk's own layer and digests, and its VM configuration.
    fn sources(&self, record: &BackupRecord) -> Result<Vec<Source>, HubError> {
        let mut out = Vec::new();
        for disk in &record.disks {
            out.push(Source {
                kind: FileKind::Image,
                disk_key: Some(disk.disk_key),
                content: Content::File(self.repo.join(&disk.file)),
            });
            if disk.digests {
                out.push(Source {
                    kind: FileKind::Digests,
                    disk_key: Some(disk.disk_key),
                    content: Content::File(self.repo.join(record.digest_file(disk.disk_key))),
                });
            }
        }
        if let Some(config) = &record.vm_config {
            out.push(Source {
                kind: FileKind::VmConfig,
                disk_key: None,
                content: Content::Bytes(serde_json::to_vec(config).map_err(|_| HubError::Worker)?),
            });
        }
        Ok(out)
    }

    /// Uploads the file at `path` as the sealed object `name` in parts, continuing a recorded
    /// upload of the same file; answers its size and SHA-256.
    async fn upload_file(
        &self,
        bucket: &Bucket,
        key: &MasterKey,
        backup_id: &BackupId,
        name: &str,
        path: &Path,
        report: &dyn Fn(u64),
    ) -> Result<(u64, String), HubError> {
        let file = File::open(path).map_err(|e| HubError::io(path, e))?;
        let plain_len = file.metadata().map_err(|e| HubError::io(path, e))?.len();
        let target = bucket.target().clone();
        let recorded = self
            .catalog
            .copy_record(backup_id, &target)?
            .and_then(|c| c.uploads.into_iter().find(|u| u.object == name))
            .filter(|u| u.plain_len == plain_len);
        let upload = match recorded {
            Some(u) if u.done || u.upload_id.is_some() => u,
            _ => {
                let header =
                    Header::random(CHUNK_SIZE, plain_len).map_err(|source| HubError::Tier {
                        object: name.to_owned(),
                        source,
                    })?;
                let id = bucket.create_multipart(name).await?;
                let fresh = UploadRecord {
                    object: name.to_owned(),
                    salt: hex(&header.salt()),
                    plain_len,
                    upload_id: Some(id),
                    parts: Vec::new(),
                    done: false,
                };
                self.record_upload(backup_id, &target, fresh.clone())?;
                fresh
            }
        };
        let salt = parse_salt(&upload.salt).ok_or(HubError::Worker)?;
        let header = Header::new(CHUNK_SIZE, plain_len, salt).map_err(|source| HubError::Tier {
            object: name.to_owned(),
            source,
        })?;
        let cipher = ObjectCipher::new(key, header, name).map_err(|source| HubError::Tier {
            object: name.to_owned(),
            source,
        })?;
        let part_count = usize::try_from(header.chunk_count().div_ceil(PART_CHUNKS).max(1))
            .map_err(|_| HubError::Worker)?;
        let mut parts: Vec<Option<String>> = upload
            .parts
            .iter()
            .map(|p| (!p.is_empty()).then(|| p.clone()))
            .collect();
        parts.resize(part_count, None);
        if upload.done {
            // Complete in the bucket already: only the digest is needed (verification reads
            // the object back).
            let mut sha = Context::new(&SHA256);
            for index in 0..header.chunk_count() {
                sha.update(&read_chunk(&file, path, &header, index)?);
            }
            report(plain_len);
            return Ok((plain_len, hex(sha.finish().as_ref())));
        }
        let upload_id = upload.upload_id.clone().ok_or(HubError::Worker)?;
        let resumed = parts.iter().filter(|p| p.is_some()).count();
        if resumed > 0 {
            tracing::info!(%backup_id, %target, object = name, parts = resumed, of = part_count, "resuming an interrupted upload");
        }
        let mut sha = Context::new(&SHA256);
        let mut in_flight = tokio::task::JoinSet::new();
        for (part, slot) in parts.iter().enumerate() {
            let first = part as u64 * PART_CHUNKS;
            let last = (first + PART_CHUNKS).min(header.chunk_count());
            if slot.is_some() {
                // Uploaded by an earlier attempt: only its digest.
                let mut plain_bytes = 0;
                for index in first..last {
                    let plain = read_chunk(&file, path, &header, index)?;
                    sha.update(&plain);
                    plain_bytes += plain.len() as u64;
                }
                report(plain_bytes);
                continue;
            }
            // The part's sealed bytes: each chunk read into its place, hashed, sealed there,
            // its tag after it.
            let sealed_len = header.sealed_range(last - 1).end - header.sealed_range(first).start;
            let mut body = Vec::with_capacity(
                usize::try_from(sealed_len).map_err(|_| HubError::Worker)? + HEADER_LEN,
            );
            if part == 0 {
                body.extend_from_slice(&header.encode());
            }
            let mut plain_bytes = 0;
            for index in first..last {
                let range = header.plain_range(index);
                let len = usize::try_from(range.end - range.start).map_err(|_| HubError::Worker)?;
                let at = body.len();
                body.resize(at + len, 0);
                let plain = &mut body[at..];
                file.read_exact_at(plain, range.start)
                    .map_err(|e| HubError::io(path, e))?;
                sha.update(plain);
                plain_bytes += len as u64;
                let tag = cipher
                    .seal_in_place(index, plain)
                    .map_err(|source| HubError::Tier {
                        object: name.to_owned(),
                        source,
                    })?;
                body.extend_from_slice(&tag);
            }
            while in_flight.len() >= PARALLEL_PARTS {
                self.land_part(&mut in_flight, backup_id, &target, name, report)
                    .await?;
            }
            let bucket = bucket.clone();
            let object = name.to_owned();
            let id = upload_id.clone();
            in_flight.spawn(async move {
                let etag = bucket.put_part(&object, &id, part, body).await;
                (part, plain_bytes, etag)
            });
        }
        while !in_flight.is_empty() {
            self.land_part(&mut in_flight, backup_id, &target, name, report)
                .await?;
        }
        let tags: Vec<String> = self
            .catalog
            .copy_record(backup_id, &target)?
            .and_then(|c| c.uploads.into_iter().find(|u| u.object == name))
            .map(|u| u.parts)
            .unwrap_or_default();
        if tags.len() != part_count || tags.iter().any(String::is_empty) {
            return Err(HubError::Worker);
        }
        match bucket.complete_multipart(name, &upload_id, tags).await {
            Ok(()) => {}
            Err(e) if store::is_not_found(&e) => {
                // The store forgot the upload (expired or aborted): start it again next time.
                self.forget_upload(backup_id, &target, name)?;
                return Err(e);
            }
            Err(e) => return Err(e),
        }
        self.update_upload(backup_id, &target, name, |u| {
            u.done = true;
            u.upload_id = None;
        })?;
        Ok((plain_len, hex(sha.finish().as_ref())))
    }

    /// Waits for one part in flight and records its entity tag.
    async fn land_part(
        &self,
        in_flight: &mut tokio::task::JoinSet<(usize, u64, Result<String, HubError>)>,
        backup_id: &BackupId,
        target: &TargetName,
        name: &str,
        report: &dyn Fn(u64),
    ) -> Result<(), HubError> {
        let Some(joined) = in_flight.join_next().await else {
            return Ok(());
        };
        let (part, plain_bytes, etag) = joined.map_err(|_| HubError::Worker)?;
        let etag = match etag {
            Ok(tag) => tag,
            Err(e) => {
                if store::is_not_found(&e) {
                    self.forget_upload(backup_id, target, name)?;
                }
                return Err(e);
            }
        };
        self.update_upload(backup_id, target, name, |u| {
            if u.parts.len() <= part {
                u.parts.resize(part + 1, String::new());
            }
            u.parts[part] = etag;
        })?;
        // Logged once recorded: a hub killed after this line resumes after this part.
        tracing::debug!(%backup_id, %target, object = name, part, "copy part uploaded");
        report(plain_bytes);
        Ok(())
    }

    fn record_upload(
        &self,
        backup_id: &BackupId,
        target: &TargetName,
        upload: UploadRecord,
    ) -> Result<(), HubError> {
        self.catalog
            .update_copy::<HubError>(backup_id, target, |old| {
                let mut c = old.ok_or(HubError::Worker)?;
                c.uploads.retain(|u| u.object != upload.object);
                c.uploads.push(upload);
                Ok(c)
            })?;
        Ok(())
    }

    fn forget_upload(
        &self,
        backup_id: &BackupId,
        target: &TargetName,
        name: &str,
    ) -> Result<(), HubError> {
        self.catalog
            .update_copy::<HubError>(backup_id, target, |old| {
                let mut c = old.ok_or(HubError::Worker)?;
                c.uploads.retain(|u| u.object != name);
                Ok(c)
            })?;
        Ok(())
    }

    fn update_upload(
        &self,
        backup_id: &BackupId,
        target: &TargetName,
        name: &str,
        f: impl FnOnce(&mut UploadRecord),
    ) -> Result<(), HubError> {
        self.catalog
            .update_copy::<HubError>(backup_id, target, |old| {
                let mut c = old.ok_or(HubError::Worker)?;
                let u = c
                    .uploads
                    .iter_mut()
                    .find(|u| u.object == name)
                    .ok_or(HubError::Worker)?;
                f(u);
                Ok(c)
            })?;
        Ok(())
    }
}

/// Reads every object of a point back, opens it and compares its SHA-256 with `manifest`, and
/// the manifest with what was written; answers the plaintext bytes checked.
async fn verify_point(
    bucket: &Bucket,
    key: &MasterKey,
    folder: &str,
    manifest: &Manifest,
) -> Result<u64, HubError> {
    let name = format!("{folder}/{}", layout::MANIFEST_OBJECT);
    let stored = read_manifest(bucket, key, &name).await?;
    if &stored != manifest {
        return Err(mismatch(manifest, bucket, &name));
    }
    let mut bytes = 0;
    for f in &manifest.files {
        let name = format!("{folder}/{}", f.object);
        let mut sha = Context::new(&SHA256);
        let size = read_object(bucket, key, &name, f.size, &mut |plain| {
            sha.update(plain);
            Ok(())
        })
        .await?;
        if size != f.size || hex(sha.finish().as_ref()) != f.sha256 {
            return Err(mismatch(manifest, bucket, &name));
        }
        bytes += size;
    }
    Ok(bytes)
}

/// Reads and opens a point's manifest.
pub(super) async fn read_manifest(
    bucket: &Bucket,
    key: &MasterKey,
    name: &str,
) -> Result<Manifest, HubError> {
    let max_sealed = seal_bound(MAX_MANIFEST_BYTES as u64);
    let sealed = bucket.get(name, max_sealed).await?;
    let plain =
        seal::open_all(key, name, &sealed, MAX_MANIFEST_BYTES as u64).map_err(|source| {
            HubError::Tier {
                object: name.to_owned(),
                source,
            }
        })?;
    Manifest::decode(&plain).map_err(|source| HubError::Tier {
        object: name.to_owned(),
        source,
    })
}

/// Reads the sealed object `name` in one streaming request (bounded memory: a chunk and what
/// the connection delivers at once), opening each chunk and handing its plaintext to `sink`;
/// refuses an object whose header announces another length than `expected`, or whose bytes
/// end early or run past its last chunk. Answers the plaintext length.
pub(super) async fn read_object(
    bucket: &Bucket,
    key: &MasterKey,
    name: &str,
    expected: u64,
    sink: &mut dyn FnMut(&[u8]) -> Result<(), HubError>,
) -> Result<u64, HubError> {
    use futures::TryStreamExt;
    let tier = |source| HubError::Tier {
        object: name.to_owned(),
        source,
    };
    let mut stream = std::pin::pin!(bucket.get_stream(name).await?);
    let mut pending = bytes::BytesMut::new();
    let mut cipher: Option<ObjectCipher> = None;
    let mut index = 0;
    // Sealed bytes received so far.
    let mut received = 0u64;
    while let Some(piece) = stream.try_next().await? {
        received += piece.len() as u64;
        pending.extend_from_slice(&piece);
        loop {
            let Some(c) = &cipher else {
                if pending.len() < HEADER_LEN {
                    break;
                }
                let header = Header::decode(&pending.split_to(HEADER_LEN)).map_err(tier)?;
                if header.plain_len() != expected {
                    return Err(tier(sendense_tier::TierError::Truncated {
                        need: expected,
                        have: header.plain_len(),
                    }));
                }
                cipher = Some(ObjectCipher::new(key, header, name).map_err(tier)?);
                continue;
            };
            let header = c.header();
            if index == header.chunk_count() {
                if !pending.is_empty() || received > header.sealed_len() {
                    return Err(tier(sendense_tier::TierError::TooLarge {
                        len: received,
                        max: header.sealed_len(),
                    }));
                }
                break;
            }
            let r = header.sealed_range(index);
            let len = usize::try_from(r.end - r.start).map_err(|_| HubError::Worker)?;
            if pending.len() < len {
                break;
            }
            let mut sealed = pending.split_to(len);
            sink(c.open_in_place(index, &mut sealed).map_err(tier)?)?;
            index += 1;
        }
    }
    let Some(c) = cipher else {
        return Err(tier(sendense_tier::TierError::Truncated {
            need: HEADER_LEN as u64,
            have: received,
        }));
    };
    if index != c.header().chunk_count() {
        return Err(tier(sendense_tier::TierError::Truncated {
            need: c.header().sealed_len(),
            have: received,
        }));
    }
    Ok(c.header().plain_len())
}

fn mismatch(manifest: &Manifest, bucket: &Bucket, object: &str) -> HubError {
    HubError::CopyMismatch {
        backup_id: manifest.backup_id.clone(),
        target: bucket.target().clone(),
        object: object.to_owned(),
    }
}

/// The sealed size of a plaintext of `plain` bytes in [`CHUNK_SIZE`] chunks.
fn seal_bound(plain: u64) -> u64 {
    HEADER_LEN as u64
        + plain.div_ceil(u64::from(CHUNK_SIZE)) * sendense_tier::TAG_LEN as u64
        + plain
}

fn read_chunk(file: &File, path: &Path, header: &Header, index: u64) -> Result<Vec<u8>, HubError> {
    let range = header.plain_range(index);
    let len = usize::try_from(range.end - range.start).map_err(|_| HubError::Worker)?;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, range.start)
        .map_err(|e| HubError::io(path, e))?;
    Ok(buf)
}

fn parse_salt(text: &str) -> Option<[u8; 32]> {
    let key = MasterKey::from_hex(text).ok()?;
    Some(*key.as_bytes())
}

pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&SHA256, bytes).as_ref())
}

impl Source {
    fn len(&self) -> Result<u64, HubError> {
        match &self.content {
            Content::File(path) => std::fs::metadata(path)
                .map(|m| m.len())
                .map_err(|e| HubError::io(path, e)),
            Content::Bytes(b) => Ok(b.len() as u64),
        }
    }
}
