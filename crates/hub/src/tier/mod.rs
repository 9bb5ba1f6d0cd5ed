//! The object tier (DESIGN.md "Object tier"): copies of completed restore points in
//! S3-compatible buckets ("targets"), encrypted by the hub, resumable, verified by reading
//! them back, and enough to rebuild the catalog from the bucket alone.
//!
//! **Targets.** `POST /api/v1/targets` stores a bucket's endpoint, region and keys; the secret
//! key is sealed like vCenter passwords (`Credentials::seal_with`, bound to the target's
//! name) and never answered. A target with `object_lock_days` N above 0 is stored only once
//! its bucket has a default retention of N days in COMPLIANCE mode (set and read back by
//! `tier/lock.rs` through S3's PutObjectLockConfiguration): the store then locks every object the
//! copies write, with no per-object header, for N days. A store or bucket that cannot lock
//! objects (Garage answers 501 NotImplemented; a bucket created without Object Lock) is
//! refused with [`HubError::ObjectLockUnsupported`], naming the fix.
//!
//! **Key.** Every object is sealed ([`sendense_tier::seal`]) under the hub's master key
//! `DATA/tier.key` (32 bytes, 0600, made with the first target). Without it a bucket is
//! unreadable: `sendense-hub ctl target export-key` writes it out for disaster recovery, and
//! `ctl target import-key` puts it in the data folder of a new hub.
//!
//! **Layout.** `sendense/<vm>/<backup_id>/` holds, for each disk, the point's *own* layer (its
//! QCOW2 file, an overlay of the parent's for an incremental: parents travel in their own
//! copies, once) and its digests file, the VM configuration, and last the manifest
//! ([`sendense_tier::Manifest`]): the catalog record, the parent, and each file's size and
//! SHA-256. A point whose manifest is in the bucket is complete there.
//!
//! **Copy** (a `copy` job the hub runs itself, see [`crate::hub_jobs`]): each disk's layer goes
//! up as a multipart upload of fixed parts ([`PART_CHUNKS`] chunks of 1 MiB, about 8 MiB, the
//! first part also holding the header), up to [`PARALLEL_PARTS`] at once. The upload id, the
//! object's salt and each part's entity tag are written to the catalog as each part lands, so
//! a copy interrupted anywhere (the hub killed, the store unreachable past the client's
//! retries) continues with the parts it lacks when it runs again: re-sealing a part with the
//! recorded salt gives the same bytes. Then the small files and the manifest; then every
//! object is read back, opened and its SHA-256 compared with the manifest: only then is the
//! copy `verified`.
//!
//! **Restore from a bucket.** A point that lives only in a bucket is read in place, by range
//! through a bounded local cache (`cache.rs`, [`Tier::layers_for`]): restore exports,
//! instant recovery and the file browser open its chain with the bucket's layers standing in
//! for the missing files. [`Tier::fetch`] brings the files of a point and of every point it
//! reads through back whole: downloaded, opened chunk by chunk (each chunk authenticated),
//! checked against the manifest's SHA-256 and written into the repository (temporary name,
//! fsync, rename). **Import** ([`Tier::import`]): a new hub lists a target's manifests and records
//! every point they describe that it does not know, in chain order, as completed points
//! whose files live in the bucket (fetched when restored).
//!
//! **Retention and verification** of points in buckets (a `verify` of an evicted point reads
//! its copies back; a prune fetches what a merge needs, copies merged points again and deletes
//! removed points' objects): see `retain.rs` ([`SettleReport`]).

mod cache;
mod copy;
mod lock;
mod restore;
mod retain;
mod sigv4;
mod store;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sendense_catalog::{Catalog, CopyRecord, TargetRecord};
use sendense_tier::MasterKey;
use sendense_types::{
    BackupId, CopyState, Target, TargetList, TargetName, TargetRequest, Timestamp,
};

use crate::credentials::Credentials;
use crate::error::HubError;

pub use cache::{CACHE_DIR, ChunkCache, DEFAULT_CACHE_MIB};
pub use copy::{PARALLEL_PARTS, PART_CHUNKS};
pub use retain::SettleReport;

/// The master key's file name inside the data folder.
pub const KEY_FILE: &str = "tier.key";
/// The folder under which points lie in every bucket.
pub const BUCKET_PREFIX: &str = "sendense";

/// The object tier of one hub. Share one (in an `Arc`).
pub struct Tier {
    catalog: Arc<Catalog>,
    credentials: Arc<Credentials>,
    data_dir: PathBuf,
    repo: PathBuf,
    /// Bound of the cache of chunks read from buckets, in bytes.
    cache_capacity: u64,
    /// The cache, made (and its folder emptied) at first use.
    cache: std::sync::Mutex<Option<Arc<ChunkCache>>>,
    /// Held by a fetch ([`Tier::fetch`]).
    fetching: std::sync::Mutex<()>,
}

impl std::fmt::Debug for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tier")
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

impl Tier {
    /// The tier of the hub whose data folder is `data_dir` (repository in `repo`).
    #[must_use]
    pub fn new(
        catalog: Arc<Catalog>,
        credentials: Arc<Credentials>,
        data_dir: &Path,
        repo: &Path,
    ) -> Self {
        Self {
            catalog,
            credentials,
            data_dir: data_dir.to_owned(),
            repo: repo.to_owned(),
            cache_capacity: DEFAULT_CACHE_MIB << 20,
            cache: std::sync::Mutex::new(None),
            fetching: std::sync::Mutex::new(()),
        }
    }

    /// Bounds the cache of chunks read from buckets to `mib` MiB (`--tier-cache-mib`).
    #[must_use]
    pub fn with_cache_mib(mut self, mib: u64) -> Self {
        self.cache_capacity = mib.saturating_mul(1 << 20);
        self
    }

    /// The cache of chunks read from buckets (`DATA/tier-cache`), made at first use.
    ///
    /// # Errors
    /// The cache folder cannot be emptied or made.
    pub fn cache(&self) -> Result<Arc<ChunkCache>, HubError> {
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = &*cache {
            return Ok(Arc::clone(c));
        }
        let made = Arc::new(ChunkCache::open(
            &self.data_dir.join(CACHE_DIR),
            self.cache_capacity,
        )?);
        *cache = Some(Arc::clone(&made));
        Ok(made)
    }

    /// `POST /api/v1/targets`: stores (or replaces) a target, its secret sealed; makes the
    /// master key on first use. Answers the target without its secret. With
    /// `object_lock_days` above 0 it first gives the bucket that default retention (see
    /// `tier/lock.rs`); nothing is stored when that fails. Runs on a blocking thread inside the
    /// runtime.
    ///
    /// # Errors
    /// [`HubError::ObjectLockUnsupported`] when it asks for Object Lock and the store or the
    /// bucket cannot keep objects locked; [`HubError::ObjectStore`] when the store cannot be
    /// reached or refuses the keys; key or catalog errors.
    pub fn put_target(&self, req: &TargetRequest) -> Result<Target, HubError> {
        if req.object_lock_days() > 0 {
            tokio::runtime::Handle::current().block_on(lock::set_default_retention(req))?;
        }
        self.key_or_create()?;
        let record = TargetRecord {
            name: req.name().clone(),
            endpoint: req.endpoint().to_owned(),
            bucket: req.bucket().to_owned(),
            region: req.region().to_owned(),
            access_key: req.access_key().to_owned(),
            sealed_secret: self
                .credentials
                .seal_with(&secret_aad(req.name()), req.secret_key().as_bytes())?,
            object_lock_days: req.object_lock_days(),
            created_at: Timestamp::now(),
        };
        self.catalog.put_target(&record)?;
        tracing::info!(target = %record.name, endpoint = %record.endpoint, bucket = %record.bucket, "target stored");
        Ok(record.to_api())
    }

    /// `GET /api/v1/targets`.
    ///
    /// # Errors
    /// Catalog errors.
    pub fn targets(&self) -> Result<TargetList, HubError> {
        Ok(TargetList {
            targets: self
                .catalog
                .targets()?
                .iter()
                .map(TargetRecord::to_api)
                .collect(),
        })
    }

    /// Checks that `backup_id` may be copied to `target` and records the copy as queued
    /// (keeping what a previous attempt uploaded). Called when a copy job is queued.
    ///
    /// # Errors
    /// Unknown backup or target (404); a point that is not completed (409); catalog errors.
    pub fn prepare_copy(&self, backup_id: &BackupId, target: &TargetName) -> Result<(), HubError> {
        let record = self.completed(backup_id)?;
        self.catalog.target(target)?;
        self.catalog
            .update_copy::<HubError>(&record.backup_id, target, |old| {
                let now = Timestamp::now();
                Ok(match old {
                    Some(mut c) if c.state != CopyState::Verified => {
                        c.state = CopyState::Queued;
                        c.at = now;
                        c.error = None;
                        c
                    }
                    Some(c) => CopyRecord {
                        state: CopyState::Queued,
                        at: now,
                        error: None,
                        ..c
                    },
                    None => CopyRecord::queued(record.backup_id.clone(), target.clone(), now),
                })
            })?;
        Ok(())
    }

    /// The copies of a point, as a backup answers them.
    ///
    /// # Errors
    /// Catalog errors.
    pub fn copies(
        &self,
        backup_id: &BackupId,
    ) -> Result<Vec<sendense_types::BackupCopy>, HubError> {
        Ok(self
            .catalog
            .copies_of(backup_id)?
            .iter()
            .map(CopyRecord::to_api)
            .collect())
    }

    /// The master key (read from its file at each use, so an imported key is seen at once).
    ///
    /// # Errors
    /// [`HubError::TierKey`] when the file is missing or not 32 bytes.
    pub fn key(&self) -> Result<MasterKey, HubError> {
        let path = self.key_path();
        let bytes = std::fs::read(&path).map_err(|_| HubError::TierKey { path: path.clone() })?;
        MasterKey::from_bytes(&bytes).map_err(|_| HubError::TierKey { path })
    }

    /// The key file's path.
    #[must_use]
    pub fn key_path(&self) -> PathBuf {
        self.data_dir.join(KEY_FILE)
    }

    fn key_or_create(&self) -> Result<MasterKey, HubError> {
        let path = self.key_path();
        if path.exists() {
            return self.key();
        }
        let key = MasterKey::generate().map_err(|source| HubError::Tier {
            object: KEY_FILE.to_owned(),
            source,
        })?;
        crate::tls::write_file(&path, key.as_bytes(), 0o600)?;
        tracing::info!(path = %path.display(), "object tier key created");
        Ok(key)
    }

    fn completed(&self, backup_id: &BackupId) -> Result<sendense_catalog::BackupRecord, HubError> {
        crate::engine::completed_record(&self.catalog, backup_id)
    }

    fn bucket(&self, target: &TargetName) -> Result<store::Bucket, HubError> {
        let record = self.catalog.target(target)?;
        let secret = self
            .credentials
            .open_with(&secret_aad(target), &record.sealed_secret)?;
        let secret = String::from_utf8(secret).map_err(|_| HubError::Crypto)?;
        store::Bucket::new(&record, &secret)
    }
}

/// What a target's sealed secret is bound to: its kind and name.
fn secret_aad(name: &TargetName) -> Vec<u8> {
    format!("target:{name}").into_bytes()
}

/// Writes a file of the tier's master key (`ctl target export-key`): 64 hex digits, 0600.
///
/// # Errors
/// [`HubError::TierKey`] when the hub has no key; the file cannot be written.
pub fn export_key(data_dir: &Path, out: &Path) -> Result<(), HubError> {
    let path = data_dir.join(KEY_FILE);
    let bytes = std::fs::read(&path).map_err(|_| HubError::TierKey { path: path.clone() })?;
    let key = MasterKey::from_bytes(&bytes).map_err(|_| HubError::TierKey { path })?;
    crate::tls::write_file(out, format!("{}\n", key.to_hex()).as_bytes(), 0o600)
}

/// Installs an exported master key into `data_dir` (`ctl target import-key`); refuses to
/// replace another key.
///
/// # Errors
/// [`HubError::InvalidInput`] when the file is not an exported key or another key is
/// installed; I/O errors.
pub fn import_key(data_dir: &Path, file: &Path) -> Result<(), HubError> {
    let text = std::fs::read_to_string(file).map_err(|e| HubError::io(file, e))?;
    let key = MasterKey::from_hex(&text).map_err(|_| HubError::InvalidInput {
        field: "key file",
        reason: "must hold the 64 hex digits `ctl target export-key` wrote",
    })?;
    let path = data_dir.join(KEY_FILE);
    match std::fs::read(&path) {
        Ok(existing) if existing == key.as_bytes() => Ok(()),
        Ok(_) => Err(HubError::InvalidInput {
            field: "key file",
            reason: "this hub has another object tier key already; it is never replaced",
        }),
        Err(_) => crate::tls::write_file(&path, key.as_bytes(), 0o600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_then_import_key_installs_the_same_key_in_a_new_data_folder() {
        let old = tempfile::tempdir().unwrap();
        let new = tempfile::tempdir().unwrap();
        let key = MasterKey::generate().unwrap();
        std::fs::write(old.path().join(KEY_FILE), key.as_bytes()).unwrap();
        let out = old.path().join("exported.key");

        export_key(old.path(), &out).unwrap();
        import_key(new.path(), &out).unwrap();

        assert_eq!(
            std::fs::read(new.path().join(KEY_FILE)).unwrap(),
            key.as_bytes()
        );
    }

    #[test]
    fn import_key_over_another_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(KEY_FILE), [1u8; 32]).unwrap();
        let file = dir.path().join("other.key");
        std::fs::write(&file, MasterKey::generate().unwrap().to_hex()).unwrap();

        let err = import_key(dir.path(), &file).unwrap_err();

        assert!(matches!(err, HubError::InvalidInput { .. }), "{err}");
        assert_eq!(std::fs::read(dir.path().join(KEY_FILE)).unwrap(), [1u8; 32]);
    }

    #[test]
    fn export_key_without_key_names_the_missing_file() {
        let dir = tempfile::tempdir().unwrap();

        let err = export_key(dir.path(), &dir.path().join("out")).unwrap_err();

        assert!(matches!(err, HubError::TierKey { .. }), "{err}");
    }
}
