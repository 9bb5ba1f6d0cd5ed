//! Validated names and identifiers: VM, credential, agent and policy names, job ids, disk keys, backup ids, VMware
//! change ids and NBD export names.
//!
//! Every string newtype here is checked when it is built (`FromStr`, `TryFrom<String>`, serde),
//! so a value of the type is always valid: names that become file or folder names in the
//! repository (`DATA/repository/<vm>/disk-<key>/<backup_id>.qcow2`) can never contain `/`, start
//! with `.` or `-`, or contain `..`. Serde goes through `TryFrom<String>` and `Into<String>`, so an
//! invalid value in a JSON body fails deserialization with the reason.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{TypesError, echo};
use crate::timestamp::Timestamp;

/// Longest VM or credential name, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Longest VMware change id, in bytes.
pub const MAX_CHANGE_ID_LEN: usize = 256;
/// Longest NBD export name we hand out or accept, in bytes.
pub const MAX_EXPORT_NAME_LEN: usize = 128;
/// Number of hex digits at the end of a backup id.
const BACKUP_ID_HEX_DIGITS: usize = 6;
/// Length of the `yyyymmddThhmmss` part of a backup id.
const COMPACT_TIME_LEN: usize = 15;
/// Prefix of every backup id.
const BACKUP_ID_PREFIX: &str = "backup-";
/// Prefix of every job id.
const JOB_ID_PREFIX: &str = "job-";
/// Number of hex digits of a job id.
const JOB_ID_HEX_DIGITS: usize = 16;

/// Implements the common string-newtype plumbing: `as_str`, `Display`, `AsRef<str>`,
/// `TryFrom<String>`, `TryFrom<&str>`, `From<T> for String` (serde uses the last two pairs).
macro_rules! string_newtype {
    ($ty:ident) => {
        impl $ty {
            /// The value as a string slice.
            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $ty {
            type Error = TypesError;

            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::validate(&value)?;
                Ok(Self(value))
            }
        }

        impl TryFrom<&str> for $ty {
            type Error = TypesError;

            fn try_from(value: &str) -> Result<Self, Self::Error> {
                Self::validate(value)?;
                Ok(Self(value.to_owned()))
            }
        }

        impl FromStr for $ty {
            type Err = TypesError;

            fn from_str(value: &str) -> Result<Self, Self::Err> {
                Self::try_from(value)
            }
        }

        impl From<$ty> for String {
            fn from(value: $ty) -> Self {
                value.0
            }
        }
    };
}

/// Checks the safe-file-name rule shared by VM and credential names.
fn check_safe_name(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        return Err("must not be empty");
    }
    if value.len() > MAX_NAME_LEN {
        return Err("must be at most 64 characters");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("only A-Z, a-z, 0-9, '.', '_' and '-' are allowed");
    }
    if value.starts_with('.') || value.starts_with('-') {
        return Err("must not start with '.' or '-'");
    }
    if value.contains("..") {
        return Err("must not contain '..'");
    }
    Ok(())
}

/// A VM name: 1 to 64 characters of `[A-Za-z0-9._-]`, not starting with `.` or `-`, without
/// `..`. It names the VM's folder in the repository.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VmName(String);

impl VmName {
    fn validate(value: &str) -> Result<(), TypesError> {
        check_safe_name(value).map_err(|reason| TypesError::InvalidName {
            value: echo(value),
            reason,
        })
    }
}

string_newtype!(VmName);

/// A name under which vCenter credentials are stored; same rules as [`VmName`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CredentialName(String);

impl CredentialName {
    fn validate(value: &str) -> Result<(), TypesError> {
        check_safe_name(value).map_err(|reason| TypesError::InvalidName {
            value: echo(value),
            reason,
        })
    }
}

string_newtype!(CredentialName);

/// The name of an object-store target (DESIGN.md "Object tier"); same rules as [`VmName`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TargetName(String);

impl TargetName {
    fn validate(value: &str) -> Result<(), TypesError> {
        check_safe_name(value).map_err(|reason| TypesError::InvalidName {
            value: echo(value),
            reason,
        })
    }
}

string_newtype!(TargetName);

/// An appliance agent's name; same rules as [`VmName`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AgentName(String);

impl AgentName {
    fn validate(value: &str) -> Result<(), TypesError> {
        check_safe_name(value).map_err(|reason| TypesError::InvalidName {
            value: echo(value),
            reason,
        })
    }
}

string_newtype!(AgentName);

/// A backup policy's name; same rules as [`VmName`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PolicyName(String);

impl PolicyName {
    fn validate(value: &str) -> Result<(), TypesError> {
        check_safe_name(value).map_err(|reason| TypesError::InvalidName {
            value: echo(value),
            reason,
        })
    }
}

string_newtype!(PolicyName);

/// A web console user's name; same rules as [`VmName`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserName(String);

impl UserName {
    fn validate(value: &str) -> Result<(), TypesError> {
        check_safe_name(value).map_err(|reason| TypesError::InvalidName {
            value: echo(value),
            reason,
        })
    }
}

string_newtype!(UserName);

/// A job id: `job-` and 16 lowercase hex digits (64 random bits), e.g. `job-3fa9c2d41b07e588`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobId(String);

impl JobId {
    /// A fresh random id.
    #[must_use]
    pub fn random() -> Self {
        Self(format!("{JOB_ID_PREFIX}{:016x}", rand::random::<u64>()))
    }

    fn validate(value: &str) -> Result<(), TypesError> {
        let ok = value.strip_prefix(JOB_ID_PREFIX).is_some_and(|hex| {
            hex.len() == JOB_ID_HEX_DIGITS
                && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        });
        if ok {
            Ok(())
        } else {
            Err(TypesError::InvalidField {
                field: "job_id",
                reason: "must be job- and 16 lowercase hex digits",
            })
        }
    }
}

string_newtype!(JobId);

/// A VMware virtual disk device key.
///
/// VMware numbers a VM's disks 2000, 2001, ... (one per virtual disk, never shared between two
/// disks of a VM). Every `u32` is accepted, since other controllers use other ranges; the value
/// only appears in the repository as `disk-<key>`, which is always a safe name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DiskKey(pub u32);

impl DiskKey {
    /// The numeric key.
    #[must_use]
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for DiskKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for DiskKey {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Self)
    }
}

impl From<u32> for DiskKey {
    fn from(value: u32) -> Self {
        Self(value)
    }
}

/// A backup id: `backup-<vm>-<UTC yyyymmddThhmmss>-<6 lowercase hex>`, for example
/// `backup-web01-20261124T235901-3fa9c2`.
///
/// Parsing checks every part (the VM name rules, a real calendar time, six lowercase hex digits),
/// so an id never contains `/` or `..` and is safe as a file name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BackupId(String);

impl BackupId {
    /// A fresh id for a backup of `vm` started at `now`, with 24 random bits.
    #[must_use]
    pub fn new(vm: &VmName, now: Timestamp) -> Self {
        Self::from_parts(vm, now, rand::random::<u32>())
    }

    /// The id with the given parts; only the low 24 bits of `suffix` are used.
    #[must_use]
    pub fn from_parts(vm: &VmName, at: Timestamp, suffix: u32) -> Self {
        Self(format!(
            "{BACKUP_ID_PREFIX}{vm}-{}-{:06x}",
            at.compact(),
            suffix & 0x00ff_ffff
        ))
    }

    /// The VM part of the id.
    #[must_use]
    pub fn vm_name(&self) -> VmName {
        VmName(self.vm_part().to_owned())
    }

    /// The time part of the id.
    #[must_use]
    pub fn timestamp(&self) -> Timestamp {
        let start = self.0.len() - BACKUP_ID_HEX_DIGITS - 1 - COMPACT_TIME_LEN;
        // The id was validated when built, so the time part parses.
        Timestamp::parse_compact(&self.0[start..start + COMPACT_TIME_LEN])
            .unwrap_or(Timestamp::EPOCH)
    }

    fn vm_part(&self) -> &str {
        let end = self.0.len() - BACKUP_ID_HEX_DIGITS - 1 - COMPACT_TIME_LEN - 1;
        &self.0[BACKUP_ID_PREFIX.len()..end]
    }

    fn validate(value: &str) -> Result<(), TypesError> {
        let err = |reason| TypesError::InvalidBackupId {
            value: echo(value),
            reason,
        };
        let rest = value
            .strip_prefix(BACKUP_ID_PREFIX)
            .ok_or(err("must start with 'backup-'"))?;
        let tail = 1 + COMPACT_TIME_LEN + 1 + BACKUP_ID_HEX_DIGITS;
        if rest.len() <= tail || !rest.is_ascii() {
            return Err(err("expected backup-<vm>-<yyyymmddThhmmss>-<6 hex>"));
        }
        let (vm, tail) = rest.split_at(rest.len() - tail);
        let tb = tail.as_bytes();
        if tb[0] != b'-' || tb[1 + COMPACT_TIME_LEN] != b'-' {
            return Err(err("expected backup-<vm>-<yyyymmddThhmmss>-<6 hex>"));
        }
        check_safe_name(vm).map_err(|_| err("the VM part is not a valid VM name"))?;
        Timestamp::parse_compact(&tail[1..=COMPACT_TIME_LEN])
            .map_err(|_| err("the time part is not a valid yyyymmddThhmmss UTC time"))?;
        let hex = &tb[COMPACT_TIME_LEN + 2..];
        if !hex.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(err("must end with 6 lowercase hex digits"));
        }
        Ok(())
    }
}

string_newtype!(BackupId);

/// A VMware CBT change id such as `52 3c 6d 1a 9f 80 2b 11-8e 4d 05 e2 cc a4 c9 7e/12`: the
/// disk's CBT epoch (before `/`) and a sequence number (after it). 1 to 256 printable ASCII
/// characters; VMware's special value `*` (everything allocated) is accepted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ChangeId(String);

impl ChangeId {
    /// The part before the last `/` (the CBT epoch; the whole id if there is no `/`). Two change
    /// ids with different epochs cannot be compared: CBT was reset in between.
    #[must_use]
    pub fn uuid_part(&self) -> &str {
        self.0.rsplit_once('/').map_or(&self.0, |(uuid, _)| uuid)
    }

    /// The part after the last `/`, if any.
    #[must_use]
    pub fn sequence_part(&self) -> Option<&str> {
        self.0.rsplit_once('/').map(|(_, seq)| seq)
    }

    fn validate(value: &str) -> Result<(), TypesError> {
        let err = |reason| TypesError::InvalidChangeId {
            value: echo(value),
            reason,
        };
        if value.is_empty() {
            return Err(err("must not be empty"));
        }
        if value.len() > MAX_CHANGE_ID_LEN {
            return Err(err("must be at most 256 characters"));
        }
        if !value.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
            return Err(err("only printable ASCII is allowed"));
        }
        Ok(())
    }
}

string_newtype!(ChangeId);

/// An NBD export name handed out by the hub: 1 to 128 characters of `[A-Za-z0-9._-]`. Export
/// names are capabilities, so the hub makes them unguessable ([`ExportName::random`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ExportName(String);

impl ExportName {
    /// A fresh unguessable name: 32 lowercase hex digits (128 random bits).
    #[must_use]
    pub fn random() -> Self {
        Self(format!("{:032x}", rand::random::<u128>()))
    }

    fn validate(value: &str) -> Result<(), TypesError> {
        let err = |reason| TypesError::InvalidExportName {
            value: echo(value),
            reason,
        };
        if value.is_empty() {
            return Err(err("must not be empty"));
        }
        if value.len() > MAX_EXPORT_NAME_LEN {
            return Err(err("must be at most 128 characters"));
        }
        if !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(err("only A-Z, a-z, 0-9, '.', '_' and '-' are allowed"));
        }
        Ok(())
    }
}

string_newtype!(ExportName);

/// The path of a disk image relative to `DATA/repository`:
/// `<vm>/disk-<key>/<backup_id>.qcow2`. All three parts are validated names, so the path never
/// escapes the repository.
#[must_use]
pub fn image_path(vm: &VmName, disk_key: DiskKey, backup_id: &BackupId) -> String {
    format!("{vm}/disk-{disk_key}/{backup_id}.qcow2")
}

/// The path of a disk's digests relative to `DATA/repository`, beside its image:
/// `<vm>/disk-<key>/<backup_id>.digests`.
#[must_use]
pub fn digest_path(vm: &VmName, disk_key: DiskKey, backup_id: &BackupId) -> String {
    format!("{vm}/disk-{disk_key}/{backup_id}.digests")
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn vm(name: &str) -> VmName {
        name.parse().unwrap()
    }

    #[test]
    fn vm_name_typical_accepted() {
        assert_eq!(vm("web-01.prod_a").as_str(), "web-01.prod_a");
    }

    #[test]
    fn vm_name_empty_rejected() {
        assert!("".parse::<VmName>().is_err());
    }

    #[test]
    fn vm_name_65_chars_rejected() {
        assert!("a".repeat(65).parse::<VmName>().is_err());
    }

    #[test]
    fn vm_name_64_chars_accepted() {
        assert!("a".repeat(64).parse::<VmName>().is_ok());
    }

    #[test]
    fn vm_name_slash_rejected() {
        assert!("a/b".parse::<VmName>().is_err());
    }

    #[test]
    fn vm_name_dot_dot_rejected() {
        let err = "a..b".parse::<VmName>().unwrap_err();

        assert!(err.to_string().contains("'..'"));
    }

    #[test]
    fn vm_name_leading_dot_rejected() {
        assert!(".hidden".parse::<VmName>().is_err());
    }

    #[test]
    fn vm_name_leading_dash_rejected() {
        assert!("-rf".parse::<VmName>().is_err());
    }

    #[test]
    fn vm_name_space_rejected() {
        assert!("my vm".parse::<VmName>().is_err());
    }

    #[test]
    fn credential_name_same_rules_as_vm_name() {
        assert!("../etc".parse::<CredentialName>().is_err());
    }

    #[test]
    fn backup_id_from_parts_formats() {
        let at: Timestamp = "2026-11-24T23:59:01Z".parse().unwrap();

        let id = BackupId::from_parts(&vm("web01"), at, 0x3f_a9c2);

        assert_eq!(id.as_str(), "backup-web01-20261124T235901-3fa9c2");
    }

    #[test]
    fn backup_id_new_parses_back() {
        let id = BackupId::new(&vm("db-1"), Timestamp::now());

        assert_eq!(id.as_str().parse::<BackupId>().unwrap(), id);
    }

    #[test]
    fn backup_id_vm_with_dashes_split_correctly() {
        let id: BackupId = "backup-a-b-c-20261124T235901-000001".parse().unwrap();

        assert_eq!(id.vm_name(), vm("a-b-c"));
    }

    #[test]
    fn backup_id_timestamp_extracted() {
        let id: BackupId = "backup-a-20261124T235901-000001".parse().unwrap();

        assert_eq!(id.timestamp().to_string(), "2026-11-24T23:59:01Z");
    }

    #[test]
    fn backup_id_uppercase_hex_rejected() {
        assert!(
            "backup-a-20261124T235901-ABCDEF"
                .parse::<BackupId>()
                .is_err()
        );
    }

    #[test]
    fn backup_id_bad_month_rejected() {
        assert!(
            "backup-a-20261324T235901-abcdef"
                .parse::<BackupId>()
                .is_err()
        );
    }

    #[test]
    fn backup_id_dot_dot_vm_rejected() {
        assert!(
            "backup-..-20261124T235901-abcdef"
                .parse::<BackupId>()
                .is_err()
        );
    }

    #[test]
    fn backup_id_slash_rejected() {
        assert!(
            "backup-a/b-20261124T235901-abcdef"
                .parse::<BackupId>()
                .is_err()
        );
    }

    #[test]
    fn backup_id_missing_prefix_rejected() {
        let err = "web01-20261124T235901-abcdef"
            .parse::<BackupId>()
            .unwrap_err();

        assert!(err.to_string().contains("backup-"));
    }

    #[test]
    fn backup_id_multibyte_input_rejected_without_panic() {
        assert!(
            "backup-ééééééééééééééééééééééééé"
                .parse::<BackupId>()
                .is_err()
        );
    }

    #[test]
    fn change_id_uuid_part_before_slash() {
        let id: ChangeId = "52 3c 6d 1a-8e 4d c9 7e/12".parse().unwrap();

        assert_eq!(
            (id.uuid_part(), id.sequence_part()),
            ("52 3c 6d 1a-8e 4d c9 7e", Some("12"))
        );
    }

    #[test]
    fn change_id_star_accepted() {
        let id: ChangeId = "*".parse().unwrap();

        assert_eq!((id.uuid_part(), id.sequence_part()), ("*", None));
    }

    #[test]
    fn change_id_too_long_rejected() {
        assert!("a".repeat(257).parse::<ChangeId>().is_err());
    }

    #[test]
    fn change_id_control_char_rejected() {
        assert!("52 3c\n/1".parse::<ChangeId>().is_err());
    }

    #[test]
    fn export_name_random_is_valid() {
        let name = ExportName::random();

        assert_eq!(name.as_str().parse::<ExportName>().unwrap(), name);
    }

    #[test]
    fn export_name_slash_rejected() {
        assert!("a/b".parse::<ExportName>().is_err());
    }

    #[test]
    fn image_path_formats_repository_layout() {
        let id: BackupId = "backup-web01-20261124T235901-3fa9c2".parse().unwrap();

        let path = image_path(&vm("web01"), DiskKey(2000), &id);

        assert_eq!(
            path,
            "web01/disk-2000/backup-web01-20261124T235901-3fa9c2.qcow2"
        );
    }

    proptest! {
        #[test]
        fn vm_name_valid_round_trips(name in "[A-Za-z0-9_][A-Za-z0-9_-]{0,63}") {
            let parsed: VmName = name.parse().unwrap();

            prop_assert_eq!(parsed.as_str(), name.as_str());
        }

        #[test]
        fn vm_name_accepted_never_escapes(name in "\\PC{0,70}") {
            let safe = name.parse::<VmName>().map_or(true, |v| {
                !v.as_str().contains('/') && !v.as_str().contains("..") && !v.as_str().starts_with('.')
            });

            prop_assert!(safe);
        }

        #[test]
        fn backup_id_from_parts_round_trips(
            name in "[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}",
            secs in 0..=Timestamp::MAX.unix_seconds(),
            suffix in any::<u32>(),
        ) {
            prop_assume!(!name.contains(".."));
            let vm_name: VmName = name.parse().unwrap();
            let at = Timestamp::from_unix_seconds(secs).unwrap();

            let id = BackupId::from_parts(&vm_name, at, suffix);
            let back: BackupId = id.as_str().parse().unwrap();

            prop_assert_eq!((back.vm_name(), back.timestamp()), (vm_name, at));
        }

        #[test]
        fn backup_id_arbitrary_text_never_panics(text in "\\PC{0,100}") {
            let _ = text.parse::<BackupId>();
        }

        #[test]
        fn change_id_printable_round_trips(text in "[ -~]{1,256}") {
            let id: ChangeId = text.parse().unwrap();

            prop_assert_eq!(id.as_str(), text.as_str());
        }
    }
}
