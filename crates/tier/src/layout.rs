//! Object names in a bucket: `<prefix>/<vm>/<backup_id>/<object>`, one folder per restore
//! point, so a listing of the bucket finds every point by its manifest
//! ([`MANIFEST_OBJECT`]) and a human can tell what each object is.

use sendense_types::{BackupId, DiskKey, VmName};

/// The manifest of a point (sealed JSON, see [`crate::manifest`]).
pub const MANIFEST_OBJECT: &str = "manifest.json.sealed";
/// The VM configuration captured with a point (sealed JSON).
pub const VM_CONFIG_OBJECT: &str = "vm_config.json.sealed";

/// The folder of one point under `prefix` (empty: the bucket's root).
#[must_use]
pub fn point_folder(prefix: &str, vm: &VmName, backup_id: &BackupId) -> String {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        format!("{vm}/{backup_id}")
    } else {
        format!("{prefix}/{vm}/{backup_id}")
    }
}

/// The object of disk `key`'s own layer (its QCOW2 file).
#[must_use]
pub fn image_object(key: DiskKey) -> String {
    format!("disk-{}.qcow2.sealed", key.0)
}

/// The object of disk `key`'s digests file.
#[must_use]
pub fn digests_object(key: DiskKey) -> String {
    format!("disk-{}.digests.sealed", key.0)
}

/// Whether `name` (the last part of an object's path) is a point's manifest.
#[must_use]
pub fn is_manifest(path: &str) -> bool {
    path.rsplit('/').next() == Some(MANIFEST_OBJECT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_folder_trims_prefix_slashes() {
        let vm: VmName = "web01".parse().unwrap();
        let id: BackupId = "backup-web01-20261207T101010-abcdef".parse().unwrap();
        assert_eq!(
            point_folder("/off/", &vm, &id),
            "off/web01/backup-web01-20261207T101010-abcdef"
        );
        assert_eq!(
            point_folder("", &vm, &id),
            "web01/backup-web01-20261207T101010-abcdef"
        );
        assert!(is_manifest(&format!(
            "{}/{MANIFEST_OBJECT}",
            point_folder("", &vm, &id)
        )));
    }
}
