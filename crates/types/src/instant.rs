//! Instant recovery (DESIGN.md "Restore"): a restore point served as *writable* NBD exports,
//! one per disk, each over a scratch QCOW2 overlay in `DATA/instant/<instant_id>/` whose
//! backing file is the point's image. The point itself never changes; discarding the instant
//! removes the overlays and everything the guest wrote.
//!
//! - [`InstantId`]: `instant-` and 16 lowercase hex digits, safe as a folder name.
//! - [`InstantRecovery`]: `POST /api/v1/backups/{id}/instant` (201), `GET /api/v1/instant/{id}`,
//!   and the items of [`InstantList`] (`GET /api/v1/instant`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::TypesError;
use crate::names::{BackupId, DiskKey, ExportName, VmName};
use crate::timestamp::Timestamp;

/// Prefix of every instant recovery id.
const INSTANT_ID_PREFIX: &str = "instant-";
/// Number of hex digits of an instant recovery id.
const INSTANT_ID_HEX_DIGITS: usize = 16;

/// An instant recovery's id: `instant-` and 16 lowercase hex digits (64 random bits), e.g.
/// `instant-3fa9c2d41b07e588`. It names the scratch folder `DATA/instant/<id>/`, so it never
/// holds `/` or `.`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct InstantId(String);

impl InstantId {
    /// A fresh random id.
    #[must_use]
    pub fn random() -> Self {
        Self(format!("{INSTANT_ID_PREFIX}{:016x}", rand::random::<u64>()))
    }

    /// The id as a string slice.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn validate(value: &str) -> Result<(), TypesError> {
        let ok = value.strip_prefix(INSTANT_ID_PREFIX).is_some_and(|hex| {
            hex.len() == INSTANT_ID_HEX_DIGITS
                && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        });
        if ok {
            Ok(())
        } else {
            Err(TypesError::InvalidField {
                field: "instant_id",
                reason: "must be instant- and 16 lowercase hex digits",
            })
        }
    }
}

impl fmt::Display for InstantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for InstantId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for InstantId {
    type Error = TypesError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::validate(&value)?;
        Ok(Self(value))
    }
}

impl TryFrom<&str> for InstantId {
    type Error = TypesError;

    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::validate(value)?;
        Ok(Self(value.to_owned()))
    }
}

impl FromStr for InstantId {
    type Err = TypesError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::try_from(value)
    }
}

impl From<InstantId> for String {
    fn from(value: InstantId) -> Self {
        value.0
    }
}

/// Whether an instant recovery's exports are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstantState {
    /// Its writable exports are open.
    Open,
    /// Its overlays could not be opened again at the hub's start (`error` says why); its files
    /// are kept, and its points stay held, until it is discarded.
    Unavailable,
}

impl fmt::Display for InstantState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Open => "open",
            Self::Unavailable => "unavailable",
        })
    }
}

/// One disk of an [`InstantRecovery`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstantDisk {
    /// The disk.
    pub disk_key: DiskKey,
    /// The writable export over the disk's scratch overlay (the same across hub restarts).
    pub export_name: ExportName,
    /// `nbds://HOST:PORT/EXPORT_NAME`.
    pub nbd_uri: String,
    /// The scratch overlay, relative to the hub's data folder: `instant/<instant_id>/disk-<key>.qcow2`.
    pub overlay: String,
    /// The point's image it reads through, relative to `DATA/repository`.
    pub backing_file: String,
}

/// An instant recovery: `{instant_id, backup_id, vm_name, created_at, state, error, disks:
/// [{disk_key, export_name, nbd_uri, overlay, backing_file}]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstantRecovery {
    /// Its id.
    pub instant_id: InstantId,
    /// The restore point it runs from.
    pub backup_id: BackupId,
    /// The VM of that point.
    pub vm_name: VmName,
    /// When it was started.
    pub created_at: Timestamp,
    /// Whether its exports are served.
    pub state: InstantState,
    /// Why it is [`InstantState::Unavailable`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// One writable export per disk of the point.
    pub disks: Vec<InstantDisk>,
}

/// `GET /api/v1/instant`: `{instants: [...]}`, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstantList {
    /// Every instant recovery the hub holds.
    pub instants: Vec<InstantRecovery>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instant_id_random_round_trips_through_parse() {
        let id = InstantId::random();

        let parsed: InstantId = id.as_str().parse().unwrap();

        assert_eq!(parsed, id);
    }

    #[test]
    fn instant_id_with_path_characters_is_refused() {
        let refused = [
            "instant-../../etc",
            "instant-0123456789abcdeF",
            "backup-x",
            "",
        ]
        .iter()
        .filter(|v| v.parse::<InstantId>().is_err())
        .count();

        assert_eq!(refused, 4);
    }

    #[test]
    fn instant_state_serializes_snake_case() {
        let json = serde_json::to_string(&InstantState::Unavailable).unwrap();

        assert_eq!(json, "\"unavailable\"");
    }
}
