//! The manifest of a restore point in a bucket: what the point is (its catalog record, its
//! parent) and every object of it with the size and SHA-256 of its plaintext, so a hub can
//! verify a copy, restore from it, and rebuild its catalog from the bucket alone.
//!
//! Stored sealed as [`crate::layout::MANIFEST_OBJECT`]; JSON inside. [`Manifest::decode`] is
//! bounded ([`MAX_MANIFEST_BYTES`], [`MAX_FILES`]) and checks every rule below before the hub
//! uses a byte of it: the version is [`MANIFEST_VERSION`]; names are valid VM names and backup
//! ids (so they are safe file names); each file's object name is the one [`crate::layout`]
//! gives its kind and disk; no file is listed twice; digests are 64 hex digits.

use sendense_types::{BackupId, DiskKey, VmName};
use serde::{Deserialize, Serialize};

use crate::error::TierError;
use crate::layout;

/// The manifest format version written and read.
pub const MANIFEST_VERSION: u32 = 1;
/// Largest manifest accepted (plaintext bytes).
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;
/// Most files one point may list.
pub const MAX_FILES: usize = 512;

/// A point's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`MANIFEST_VERSION`].
    pub format_version: u32,
    /// The VM.
    pub vm_name: VmName,
    /// The point.
    pub backup_id: BackupId,
    /// The point it is an overlay of (its own copy holds that layer); `null` for a full.
    pub parent_backup_id: Option<BackupId>,
    /// The hub's catalog record of the point, as the hub stores it (a JSON object).
    pub backup: serde_json::Value,
    /// Every object of the point but the manifest.
    pub files: Vec<ManifestFile>,
}

/// What a file of a point is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    /// A disk's own QCOW2 layer (an overlay of the parent's for an incremental).
    Image,
    /// A disk's digests file (`sendense-digest`).
    Digests,
    /// The VM configuration captured with the point (JSON).
    VmConfig,
}

/// One file of a point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestFile {
    /// What it is.
    pub kind: FileKind,
    /// Its disk (images and digests).
    pub disk_key: Option<DiskKey>,
    /// The object's name inside the point's folder.
    pub object: String,
    /// Plaintext bytes.
    pub size: u64,
    /// SHA-256 of the plaintext, 64 lowercase hex digits.
    pub sha256: String,
}

impl ManifestFile {
    /// The object name a file of `kind` and `disk_key` must have (`None`: the combination is
    /// invalid).
    #[must_use]
    pub fn expected_object(kind: FileKind, disk_key: Option<DiskKey>) -> Option<String> {
        match (kind, disk_key) {
            (FileKind::Image, Some(key)) => Some(layout::image_object(key)),
            (FileKind::Digests, Some(key)) => Some(layout::digests_object(key)),
            (FileKind::VmConfig, None) => Some(layout::VM_CONFIG_OBJECT.to_owned()),
            _ => None,
        }
    }
}

impl Manifest {
    /// The manifest's JSON bytes.
    ///
    /// # Errors
    /// [`TierError::Manifest`] when it breaks a rule (it is checked as [`Manifest::decode`]
    /// would) or does not serialize.
    pub fn encode(&self) -> Result<Vec<u8>, TierError> {
        self.check()?;
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| manifest_error(&e))?;
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(TierError::Manifest {
                reason: format!("{} bytes exceed {MAX_MANIFEST_BYTES}", bytes.len()),
            });
        }
        Ok(bytes)
    }

    /// Parses and checks a manifest's JSON bytes (see the module documentation).
    ///
    /// # Errors
    /// [`TierError::Manifest`] naming the rule broken; [`TierError::UnsupportedVersion`].
    pub fn decode(bytes: &[u8]) -> Result<Self, TierError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(TierError::Manifest {
                reason: format!("{} bytes exceed {MAX_MANIFEST_BYTES}", bytes.len()),
            });
        }
        let manifest: Self = serde_json::from_slice(bytes).map_err(|e| manifest_error(&e))?;
        manifest.check()?;
        Ok(manifest)
    }

    /// The file of `kind` for `disk_key`, if listed.
    #[must_use]
    pub fn file(&self, kind: FileKind, disk_key: Option<DiskKey>) -> Option<&ManifestFile> {
        self.files
            .iter()
            .find(|f| f.kind == kind && f.disk_key == disk_key)
    }

    fn check(&self) -> Result<(), TierError> {
        if self.format_version != MANIFEST_VERSION {
            return Err(TierError::UnsupportedVersion {
                version: self.format_version,
            });
        }
        let refuse = |reason: String| Err(TierError::Manifest { reason });
        if !self.backup.is_object() {
            return refuse("`backup` is not a JSON object".to_owned());
        }
        if self.files.len() > MAX_FILES {
            return refuse(format!("{} files exceed {MAX_FILES}", self.files.len()));
        }
        if self.parent_backup_id.as_ref() == Some(&self.backup_id) {
            return refuse("a point cannot be its own parent".to_owned());
        }
        let mut seen = std::collections::HashSet::new();
        for f in &self.files {
            let Some(object) = ManifestFile::expected_object(f.kind, f.disk_key) else {
                return refuse(format!("{:?} file with disk {:?}", f.kind, f.disk_key));
            };
            if f.object != object {
                return refuse(format!("object {:?} should be {object:?}", f.object));
            }
            if !seen.insert(object) {
                return refuse(format!("object {:?} listed twice", f.object));
            }
            if f.sha256.len() != 64
                || !f
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return refuse(format!("sha256 of {:?} is not 64 hex digits", f.object));
            }
        }
        Ok(())
    }
}

fn manifest_error(e: &serde_json::Error) -> TierError {
    TierError::Manifest {
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn manifest(disks: &[u32]) -> Manifest {
        let mut files = Vec::new();
        for &key in disks {
            files.push(ManifestFile {
                kind: FileKind::Image,
                disk_key: Some(DiskKey(key)),
                object: layout::image_object(DiskKey(key)),
                size: u64::from(key) * 1000,
                sha256: "ab".repeat(32),
            });
        }
        Manifest {
            format_version: MANIFEST_VERSION,
            vm_name: "web01".parse().unwrap(),
            backup_id: "backup-web01-20261207T101010-abcdef".parse().unwrap(),
            parent_backup_id: None,
            backup: serde_json::json!({"status": "completed"}),
            files,
        }
    }

    #[test]
    fn decode_wrong_object_name_is_refused_naming_it() {
        let mut m = manifest(&[2000]);
        m.files[0].object = "../../etc/passwd".to_owned();
        let bytes = serde_json::to_vec(&m).unwrap();
        let err = Manifest::decode(&bytes).unwrap_err();
        assert!(err.to_string().contains("etc/passwd"), "{err}");
    }

    #[test]
    fn decode_duplicate_file_is_refused() {
        let mut m = manifest(&[2000]);
        m.files.push(m.files[0].clone());
        let bytes = serde_json::to_vec(&m).unwrap();
        assert!(matches!(
            Manifest::decode(&bytes),
            Err(TierError::Manifest { .. })
        ));
    }

    #[test]
    fn decode_other_version_is_refused() {
        let mut m = manifest(&[]);
        m.format_version = 2;
        let bytes = serde_json::to_vec(&m).unwrap();
        assert_eq!(
            Manifest::decode(&bytes),
            Err(TierError::UnsupportedVersion { version: 2 })
        );
    }

    proptest! {
        #[test]
        fn encode_decode_round_trips(disks in proptest::collection::btree_set(2000u32..2100, 0..8)) {
            let disks: Vec<u32> = disks.into_iter().collect();
            let m = manifest(&disks);
            prop_assert_eq!(Manifest::decode(&m.encode().unwrap()).unwrap(), m);
        }
    }
}
