//! The records the catalog stores and answers: backups with their disks, and credentials.
//!
//! Records are stored as JSON (serde) inside redb values, so every field goes through the same
//! validating newtypes as the API on the way back in: a damaged record is refused as
//! [`CatalogError::Corrupt`](crate::CatalogError::Corrupt), never trusted.

use std::fmt;

use sendense_types::{
    AgentName, Backup, BackupDisk, BackupId, BackupStatus, BackupType, ChangeId, Credential,
    CredentialName, DiskKey, Timestamp, VcenterTrust, Verification, Vm, VmConfig, VmName,
    digest_path, image_path,
};
use serde::{Deserialize, Serialize};

/// One disk of a backup as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskRecord {
    /// The VMware disk key.
    pub disk_key: DiskKey,
    /// The disk's size when the backup was taken.
    pub capacity_bytes: u64,
    /// The image's final path relative to `DATA/repository`.
    pub file: String,
    /// The change id of this disk in the parent backup (ask CBT for changes since it); `None`
    /// for a full, or a disk the parent did not have.
    pub parent_change_id: Option<ChangeId>,
    /// The change id captured by this backup; set on completion.
    pub change_id: Option<ChangeId>,
    /// Bytes written into the image so far.
    pub bytes_written: u64,
    /// Whether the digests of the bytes read at the source were stored beside the image
    /// ([`sendense_types::digest_path`]); set on completion.
    #[serde(default)]
    pub digests: bool,
}

/// A backup as stored: everything the API's [`Backup`] needs except the live export names,
/// which the hub adds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRecord {
    /// The backup's id.
    pub backup_id: BackupId,
    /// The VM backed up (always the VM part of `backup_id`).
    pub vm_name: VmName,
    /// `Full` or `Incremental`; never `Auto`.
    pub backup_type: BackupType,
    /// Where it is in its life.
    pub status: BackupStatus,
    /// The backup this one is an overlay of: `None` exactly for a full.
    pub parent_backup_id: Option<BackupId>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it completed.
    pub completed_at: Option<Timestamp>,
    /// When it failed.
    pub failed_at: Option<Timestamp>,
    /// Why it failed.
    pub failure_reason: Option<String>,
    /// Why the hub made this a full although `auto` was asked for.
    #[serde(default)]
    pub full_reason: Option<String>,
    /// Set on a completed backup whose image files were found missing: it is never the parent
    /// of a new incremental.
    #[serde(default)]
    pub files_missing: bool,
    /// Never removed by a prune while set.
    #[serde(default)]
    pub protected: bool,
    /// The latest verification of this point.
    #[serde(default)]
    pub verification: Verification,
    /// Its disks, ordered by key.
    pub disks: Vec<DiskRecord>,
    /// The VM's configuration captured at this backup ([`VmConfig`] as JSON), kept as stored:
    /// a config of a later version than this build knows still decodes (as JSON) so the record
    /// stays readable, and [`BackupRecord::vm_config`] tells it apart. Removed with the
    /// backup; a merge rewrites the surviving record in place, so it keeps its own.
    #[serde(default)]
    pub vm_config: Option<serde_json::Value>,
    /// Its files were removed from the repository after a verified copy: they live only in a
    /// target's bucket (DESIGN.md "Object tier") until fetched back.
    #[serde(default)]
    pub evicted: bool,
}

/// What [`BackupRecord::vm_config`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredVmConfig {
    /// No configuration is stored (a backup taken before capture existed).
    None,
    /// A configuration this build reads.
    Known(Box<VmConfig>),
    /// A configuration of a version later than this build knows.
    Newer {
        /// Its version.
        version: u64,
    },
    /// A stored configuration that does not decode (damaged).
    Unreadable,
}

impl BackupRecord {
    /// A new backup of every disk of `vm`, ready for [`Catalog::create_backup`]: files at
    /// [`image_path`], and for an incremental (`parent` given) each disk's `parent_change_id`
    /// taken from the parent's same disk. `status` should be `Pending` or `Running`.
    ///
    /// [`Catalog::create_backup`]: crate::Catalog::create_backup
    #[must_use]
    pub fn new(
        backup_id: BackupId,
        vm: &Vm,
        parent: Option<&Self>,
        status: BackupStatus,
        created_at: Timestamp,
    ) -> Self {
        let disks = vm
            .disks
            .iter()
            .map(|spec| DiskRecord {
                disk_key: spec.key,
                capacity_bytes: spec.capacity_bytes,
                file: image_path(&vm.name, spec.key, &backup_id),
                parent_change_id: parent
                    .and_then(|p| p.disk(spec.key))
                    .and_then(|d| d.change_id.clone()),
                change_id: None,
                bytes_written: 0,
                digests: false,
            })
            .collect();
        Self {
            vm_name: vm.name.clone(),
            backup_type: if parent.is_some() {
                BackupType::Incremental
            } else {
                BackupType::Full
            },
            status,
            parent_backup_id: parent.map(|p| p.backup_id.clone()),
            created_at,
            completed_at: None,
            failed_at: None,
            failure_reason: None,
            full_reason: None,
            files_missing: false,
            protected: false,
            verification: Verification::default(),
            disks,
            vm_config: None,
            evicted: false,
            backup_id,
        }
    }

    /// The stored configuration, decoded and validated.
    #[must_use]
    pub fn vm_config(&self) -> StoredVmConfig {
        let Some(value) = &self.vm_config else {
            return StoredVmConfig::None;
        };
        let version = value.get("version").and_then(serde_json::Value::as_u64);
        if let Some(version) = version
            && version > u64::from(sendense_types::VM_CONFIG_VERSION)
        {
            return StoredVmConfig::Newer { version };
        }
        match VmConfig::deserialize(value) {
            Ok(config) => StoredVmConfig::Known(Box::new(config)),
            Err(_) => StoredVmConfig::Unreadable,
        }
    }

    /// The record of one disk.
    #[must_use]
    pub fn disk(&self, disk_key: DiskKey) -> Option<&DiskRecord> {
        self.disks.iter().find(|d| d.disk_key == disk_key)
    }

    /// The digests file of disk `disk_key`, relative to `DATA/repository` ([`digest_path`]):
    /// where it is (or will be) stored, whether or not it was.
    #[must_use]
    pub fn digest_file(&self, disk_key: DiskKey) -> String {
        digest_path(&self.vm_name, disk_key, &self.backup_id)
    }

    /// Every file of this backup in the repository, relative to it: each disk's image, and its
    /// digests where they were stored ([`DiskRecord::digests`]).
    #[must_use]
    pub fn files(&self) -> Vec<String> {
        let mut files = Vec::with_capacity(self.disks.len() * 2);
        for d in &self.disks {
            files.push(d.file.clone());
            if d.digests {
                files.push(self.digest_file(d.disk_key));
            }
        }
        files
    }

    /// The API form, without export names or NBD URIs (the hub fills those in for a running
    /// backup).
    #[must_use]
    pub fn to_api(&self) -> Backup {
        Backup {
            backup_id: self.backup_id.clone(),
            vm_name: self.vm_name.clone(),
            backup_type: self.backup_type,
            status: self.status,
            parent_backup_id: self.parent_backup_id.clone(),
            created_at: self.created_at,
            completed_at: self.completed_at,
            failure_reason: self.failure_reason.clone(),
            full_reason: self.full_reason.clone(),
            files_missing: self.files_missing,
            evicted: self.evicted,
            protected: self.protected,
            verification: self.verification.clone(),
            disks: self
                .disks
                .iter()
                .map(|d| BackupDisk {
                    disk_key: d.disk_key,
                    capacity_bytes: d.capacity_bytes,
                    file: Some(d.file.clone()),
                    export_name: None,
                    nbd_uri: None,
                    parent_change_id: d.parent_change_id.clone(),
                    change_id: d.change_id.clone(),
                    bytes_written: d.bytes_written,
                })
                .collect(),
            vm_config: match self.vm_config() {
                StoredVmConfig::Known(config) => Some(*config),
                _ => None,
            },
            copies: Vec::new(),
        }
    }
}

impl From<&BackupRecord> for Backup {
    fn from(record: &BackupRecord) -> Self {
        record.to_api()
    }
}

/// What the hub reports for one disk when a backup completes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskCompletion {
    /// The disk.
    pub disk_key: DiskKey,
    /// The change id of the snapshot copied, base of the next incremental.
    pub change_id: Option<ChangeId>,
    /// Bytes written into the image.
    pub bytes_written: u64,
    /// Whether the disk's digests were stored beside its image
    /// ([`sendense_types::digest_path`]): sets [`DiskRecord::digests`].
    pub digests: bool,
}

/// A stored vCenter credential. The password is kept only sealed (encrypted by the hub); the
/// catalog never sees it in plaintext, and `Debug` does not show the sealed bytes either.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialRecord {
    /// The credential's name.
    pub name: CredentialName,
    /// The vCenter host.
    pub host: String,
    /// The vCenter user name.
    pub username: String,
    /// The password as sealed by the hub.
    pub sealed_password: Vec<u8>,
    /// How the hub checks vCenter's certificate, chosen at creation. `None` for a record
    /// stored before the choice was kept: such a credential is not used (see the catalog's
    /// module documentation).
    #[serde(default)]
    pub trust: Option<VcenterTrust>,
    /// The agent that reaches this vCenter and alone receives its password (`None` for a
    /// credential stored without one; an optional field, so no schema change).
    #[serde(default)]
    pub agent: Option<AgentName>,
    /// When it was first stored.
    pub created_at: Timestamp,
    /// When it was last replaced.
    pub updated_at: Timestamp,
}

impl CredentialRecord {
    /// The API form: no password.
    #[must_use]
    pub fn to_api(&self) -> Credential {
        Credential {
            name: self.name.clone(),
            host: self.host.clone(),
            username: self.username.clone(),
            created_at: self.created_at,
            ca_pem: match &self.trust {
                Some(VcenterTrust::CaPem(pem)) => Some(pem.clone()),
                _ => None,
            },
            insecure: self.trust == Some(VcenterTrust::Insecure),
            needs_trust_choice: self.trust.is_none(),
            agent: self.agent.clone(),
        }
    }
}

impl fmt::Debug for CredentialRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialRecord")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("username", &self.username)
            .field(
                "sealed_password",
                &format_args!("<{} bytes>", self.sealed_password.len()),
            )
            .field("trust", &self.trust)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use proptest::option;
    use proptest::prelude::*;
    use sendense_types::{DiskSpec, VmName};

    use super::*;

    fn timestamp() -> impl Strategy<Value = Timestamp> {
        (0..=Timestamp::MAX.unix_seconds()).prop_map(|s| Timestamp::from_unix_seconds(s).unwrap())
    }

    fn change_id() -> impl Strategy<Value = ChangeId> {
        "[ -~]{1,40}".prop_map(|s| s.parse().unwrap())
    }

    fn disk() -> impl Strategy<Value = DiskRecord> {
        (
            any::<u32>(),
            any::<u64>(),
            "[a-z0-9._-]{1,20}",
            option::of(change_id()),
            option::of(change_id()),
            any::<u64>(),
        )
            .prop_map(|(k, cap, file, parent, change, bytes)| DiskRecord {
                disk_key: DiskKey(k),
                capacity_bytes: cap,
                file,
                parent_change_id: parent,
                change_id: change,
                digests: bytes % 2 == 0,
                bytes_written: bytes,
            })
    }

    fn status() -> impl Strategy<Value = BackupStatus> {
        prop_oneof![
            Just(BackupStatus::Pending),
            Just(BackupStatus::Running),
            Just(BackupStatus::Completed),
            Just(BackupStatus::Failed)
        ]
    }

    fn record() -> impl Strategy<Value = BackupRecord> {
        (
            (
                "[a-z0-9][a-z0-9_-]{0,15}",
                timestamp(),
                any::<u32>(),
                any::<bool>(),
            ),
            status(),
            option::of(any::<u32>()),
            (
                option::of(timestamp()),
                option::of(timestamp()),
                option::of("\\PC{0,30}"),
            ),
            proptest::collection::vec(disk(), 0..4),
        )
            .prop_map(
                |((vm, created, suffix, incremental), status, parent, ends, disks)| {
                    let vm_name: VmName = vm.parse().unwrap();
                    BackupRecord {
                        backup_id: BackupId::from_parts(&vm_name, created, suffix),
                        backup_type: if incremental {
                            BackupType::Incremental
                        } else {
                            BackupType::Full
                        },
                        status,
                        parent_backup_id: parent
                            .map(|p| BackupId::from_parts(&vm_name, created, p)),
                        created_at: created,
                        completed_at: ends.0,
                        failed_at: ends.1,
                        full_reason: ends.2.clone(),
                        failure_reason: ends.2,
                        files_missing: incremental,
                        protected: !incremental,
                        verification: Verification::default(),
                        disks,
                        vm_config: incremental.then(|| serde_json::json!({"version": 1})),
                        evicted: !incremental,
                        vm_name,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn backup_record_json_round_trips(r in record()) {
            let bytes = serde_json::to_vec(&r).unwrap();

            prop_assert_eq!(serde_json::from_slice::<BackupRecord>(&bytes).unwrap(), r);
        }

        #[test]
        fn credential_record_json_round_trips(
            sealed in proptest::collection::vec(any::<u8>(), 0..64),
            t in timestamp(),
            trust in option::of(prop_oneof![
                Just(VcenterTrust::Insecure),
                "[ -~]{0,40}".prop_map(|p| VcenterTrust::CaPem(format!("-----BEGIN CERTIFICATE-----{p}"))),
            ]),
        ) {
            let r = CredentialRecord {
                name: "vc".parse().unwrap(),
                host: "h".into(),
                username: "u".into(),
                sealed_password: sealed,
                trust,
                agent: None,
                created_at: t,
                updated_at: t,
            };
            let bytes = serde_json::to_vec(&r).unwrap();

            prop_assert_eq!(serde_json::from_slice::<CredentialRecord>(&bytes).unwrap(), r);
        }
    }

    #[test]
    fn backup_record_new_incremental_copies_parent_change_ids() {
        let vm = Vm {
            name: "vm".parse().unwrap(),
            disks: vec![
                DiskSpec {
                    key: DiskKey(2000),
                    capacity_bytes: 512,
                },
                DiskSpec {
                    key: DiskKey(2001),
                    capacity_bytes: 512,
                },
            ],
            created_at: Timestamp::EPOCH,
            updated_at: Timestamp::EPOCH,
        };
        let mut parent = BackupRecord::new(
            BackupId::from_parts(&vm.name, Timestamp::EPOCH, 1),
            &vm,
            None,
            BackupStatus::Completed,
            Timestamp::EPOCH,
        );
        parent.disks[0].change_id = Some("52 aa/1".parse().unwrap());
        parent.disks.truncate(1);

        let child = BackupRecord::new(
            BackupId::from_parts(&vm.name, Timestamp::EPOCH, 2),
            &vm,
            Some(&parent),
            BackupStatus::Running,
            Timestamp::EPOCH,
        );

        let parent_ids: Vec<Option<ChangeId>> = child
            .disks
            .iter()
            .map(|d| d.parent_change_id.clone())
            .collect();
        assert_eq!(parent_ids, [Some("52 aa/1".parse().unwrap()), None]);
    }
}
