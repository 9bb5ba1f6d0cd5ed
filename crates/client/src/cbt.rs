//! Changed extents from VMware Changed Block Tracking, in the shape of vSphere's
//! `DiskChangeInfo` (the answer of `QueryChangedDiskAreas`):
//!
//! ```json
//! {"startOffset": 0, "length": 10737418240,
//!  "changedArea": [{"start": 0, "length": 65536}, {"start": 1048576, "length": 4096}]}
//! ```
//!
//! Offsets and lengths are bytes, multiples of 512 (VSPHERE.md). The input is hostile until
//! validated: the answer must cover the whole disk (`startOffset` 0, `length` = capacity — a
//! caller that forgot to page through `QueryChangedDiskAreas` would otherwise silently lose
//! changes), every area must be non-empty, 512-byte aligned and inside the disk, and the number
//! of areas is bounded ([`MAX_CHANGED_AREAS`]) while parsing, before anything is allocated for
//! them. Areas are then sorted and overlapping or adjacent ones merged.
//!
//! [`changed_extents`] is pure (bytes in, extents out) and is what the `cbt_extents` fuzz target
//! drives.

use std::fmt;
use std::path::Path;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

use crate::error::ClientError;
use sendense_transfer::Extent;
use sendense_transfer::plan::merge_extents;

/// Most areas one changed-areas document may list.
pub const MAX_CHANGED_AREAS: usize = 10_000_000;
/// Largest changed-areas file read, in bytes (10 million areas fit easily).
pub const MAX_CHANGE_INFO_BYTES: u64 = 1 << 30;
/// Offsets and lengths must be multiples of this.
pub const SECTOR: u64 = 512;

/// One `changedArea` entry: `{start, length}` in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct ChangedArea {
    /// First changed byte.
    pub start: u64,
    /// Number of changed bytes.
    pub length: u64,
}

/// VMware's `DiskChangeInfo`, as parsed (not yet validated against a capacity).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskChangeInfo {
    /// Start of the range this answer covers.
    pub start_offset: u64,
    /// Length of the range this answer covers.
    pub length: u64,
    /// The changed areas (missing means none).
    #[serde(default, deserialize_with = "bounded_areas::<_, MAX_CHANGED_AREAS>")]
    pub changed_area: Vec<ChangedArea>,
}

/// Parses a `DiskChangeInfo` document, refusing more than [`MAX_CHANGED_AREAS`] areas.
///
/// # Errors
/// [`ClientError::ChangedAreasJson`] when it does not parse; [`ClientError::TooManyChangedAreas`].
pub fn parse_change_info(json: &[u8]) -> Result<DiskChangeInfo, ClientError> {
    serde_json::from_slice(json).map_err(|e| {
        let message = e.to_string();
        if message.starts_with(TOO_MANY_MARK) {
            ClientError::TooManyChangedAreas {
                count: MAX_CHANGED_AREAS + 1,
                limit: MAX_CHANGED_AREAS,
            }
        } else {
            ClientError::ChangedAreasJson { message }
        }
    })
}

/// Parses, validates against `capacity` and merges: the extents an incremental backup sends.
///
/// # Errors
/// A `ChangedArea*` [`ClientError`] naming the first problem (see the module documentation).
pub fn changed_extents(json: &[u8], capacity: u64) -> Result<Vec<Extent>, ClientError> {
    parse_change_info(json)?.extents(capacity)
}

/// Reads a changed-areas file (bounded by [`MAX_CHANGE_INFO_BYTES`]) and returns its merged
/// extents for a disk of `capacity` bytes.
///
/// # Errors
/// [`ClientError::File`] when it cannot be read, [`ClientError::Cbt`] when it is invalid.
pub async fn load_changed_extents(
    path: &Path,
    disk_key: u32,
    capacity: u64,
) -> Result<Vec<Extent>, ClientError> {
    let file_err = |source| ClientError::File {
        what: "changed-areas file",
        path: path.to_owned(),
        source,
    };
    let size = tokio::fs::metadata(path).await.map_err(file_err)?.len();
    if size > MAX_CHANGE_INFO_BYTES {
        return Err(ClientError::Cbt {
            disk_key,
            source: Box::new(ClientError::ChangedAreasTooLarge {
                size,
                limit: MAX_CHANGE_INFO_BYTES,
            }),
        });
    }
    let bytes = tokio::fs::read(path).await.map_err(file_err)?;
    changed_extents(&bytes, capacity).map_err(|source| ClientError::Cbt {
        disk_key,
        source: Box::new(source),
    })
}

impl DiskChangeInfo {
    /// Validates against a disk of `capacity` bytes, then sorts and merges overlapping and
    /// adjacent areas.
    ///
    /// # Errors
    /// [`ClientError::ChangedAreasRange`] when the answer is unaligned or does not cover exactly
    /// `[0, capacity)`; [`ClientError::ChangedArea`] naming the first bad area.
    pub fn extents(&self, capacity: u64) -> Result<Vec<Extent>, ClientError> {
        let bad_range = ClientError::ChangedAreasRange {
            start_offset: self.start_offset,
            length: self.length,
            capacity,
        };
        if self.start_offset != 0 || self.length != capacity || !capacity.is_multiple_of(SECTOR) {
            return Err(bad_range);
        }
        let mut extents = Vec::with_capacity(self.changed_area.len());
        for (index, area) in self.changed_area.iter().enumerate() {
            let bad = |reason| ClientError::ChangedArea {
                index,
                start: area.start,
                length: area.length,
                reason,
            };
            if area.length == 0 {
                return Err(bad("is empty"));
            }
            if !area.start.is_multiple_of(SECTOR) || !area.length.is_multiple_of(SECTOR) {
                return Err(bad("is not 512-byte aligned"));
            }
            match area.start.checked_add(area.length) {
                Some(end) if end <= capacity => {}
                _ => return Err(bad("passes the disk end")),
            }
            extents.push(Extent::new(area.start, area.length));
        }
        Ok(merge_extents(extents))
    }
}

/// The serde error message prefix marking "too many areas".
const TOO_MANY_MARK: &str = "too many changed areas";

/// Deserializes `changedArea` without ever holding more than `LIMIT` entries.
fn bounded_areas<'de, D: Deserializer<'de>, const LIMIT: usize>(
    d: D,
) -> Result<Vec<ChangedArea>, D::Error> {
    struct Areas<const LIMIT: usize>;

    impl<'de, const LIMIT: usize> Visitor<'de> for Areas<LIMIT> {
        type Value = Vec<ChangedArea>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of {start, length} areas")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let hint = seq.size_hint().unwrap_or(0).min(4096);
            let mut areas = Vec::with_capacity(hint);
            while let Some(area) = seq.next_element::<ChangedArea>()? {
                if areas.len() == LIMIT {
                    return Err(de::Error::custom(TOO_MANY_MARK));
                }
                areas.push(area);
            }
            Ok(areas)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
    }

    d.deserialize_any(Areas::<LIMIT>)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CAP: u64 = 1 << 20;

    fn doc(areas: &[(u64, u64)]) -> String {
        let list: Vec<String> = areas
            .iter()
            .map(|(s, l)| format!(r#"{{"start":{s},"length":{l}}}"#))
            .collect();
        format!(
            r#"{{"startOffset":0,"length":{CAP},"changedArea":[{}]}}"#,
            list.join(",")
        )
    }

    #[test]
    fn changed_extents_overlapping_and_adjacent_areas_merge() {
        let json = doc(&[
            (4096, 512),
            (0, 1024),
            (512, 1024),
            (1536, 512),
            (8192, 512),
        ]);

        let got = changed_extents(json.as_bytes(), CAP).unwrap();

        assert_eq!(
            got,
            vec![
                Extent::new(0, 2048),
                Extent::new(4096, 512),
                Extent::new(8192, 512)
            ]
        );
    }

    #[test]
    fn changed_extents_missing_area_list_is_empty() {
        let json = format!(r#"{{"startOffset":0,"length":{CAP}}}"#);

        let got = changed_extents(json.as_bytes(), CAP).unwrap();

        assert!(got.is_empty());
    }

    #[test]
    fn changed_extents_null_area_list_is_empty() {
        let json = format!(r#"{{"startOffset":0,"length":{CAP},"changedArea":null}}"#);

        let got = changed_extents(json.as_bytes(), CAP).unwrap();

        assert!(got.is_empty());
    }

    #[test]
    fn changed_extents_area_past_end_names_area() {
        let json = doc(&[(0, 512), (CAP - 512, 1024)]);

        let err = changed_extents(json.as_bytes(), CAP).unwrap_err();

        assert!(
            matches!(
                err,
                ClientError::ChangedArea {
                    index: 1,
                    start,
                    length: 1024,
                    reason: "passes the disk end"
                } if start == CAP - 512
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("#1"), "{err}");
    }

    #[test]
    fn changed_extents_overflowing_area_is_refused() {
        let json = doc(&[(u64::MAX - 511, 1024)]);

        let err = changed_extents(json.as_bytes(), CAP).unwrap_err();

        assert!(
            matches!(
                err,
                ClientError::ChangedArea {
                    reason: "is not 512-byte aligned" | "passes the disk end",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn changed_extents_unaligned_area_is_refused() {
        let json = doc(&[(100, 512)]);

        let err = changed_extents(json.as_bytes(), CAP).unwrap_err();

        assert!(
            matches!(
                err,
                ClientError::ChangedArea {
                    index: 0,
                    reason: "is not 512-byte aligned",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn changed_extents_empty_area_is_refused() {
        let json = doc(&[(512, 0)]);

        let err = changed_extents(json.as_bytes(), CAP).unwrap_err();

        assert!(
            matches!(
                err,
                ClientError::ChangedArea {
                    reason: "is empty",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn changed_extents_partial_answer_is_refused() {
        let json = r#"{"startOffset":0,"length":4096,"changedArea":[]}"#;

        let err = changed_extents(json.as_bytes(), CAP).unwrap_err();

        assert!(
            matches!(err, ClientError::ChangedAreasRange { length: 4096, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn changed_extents_not_json_is_json_error() {
        let err = changed_extents(b"{\"startOffset\":", CAP).unwrap_err();

        assert!(
            matches!(err, ClientError::ChangedAreasJson { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn changed_extents_negative_offset_is_json_error() {
        let json =
            r#"{"startOffset":0,"length":1048576,"changedArea":[{"start":-512,"length":512}]}"#;

        let err = changed_extents(json.as_bytes(), CAP).unwrap_err();

        assert!(
            matches!(err, ClientError::ChangedAreasJson { .. }),
            "{err:?}"
        );
    }

    #[derive(Debug, Deserialize)]
    struct Small {
        #[serde(deserialize_with = "bounded_areas::<_, 2>")]
        areas: Vec<ChangedArea>,
    }

    #[test]
    fn bounded_areas_over_limit_is_refused_while_parsing() {
        let json = r#"{"areas":[{"start":0,"length":512},{"start":512,"length":512},{"start":1024,"length":512}]}"#;

        let err = serde_json::from_str::<Small>(json).unwrap_err();

        assert!(err.to_string().starts_with(TOO_MANY_MARK), "{err}");
    }

    #[test]
    fn bounded_areas_at_limit_is_accepted() {
        let json = r#"{"areas":[{"start":0,"length":512},{"start":512,"length":512}]}"#;

        let got = serde_json::from_str::<Small>(json).unwrap();

        assert_eq!(got.areas.len(), 2);
    }

    #[test]
    fn merge_extents_drops_empty_and_sorts() {
        let got = merge_extents(vec![
            Extent::new(10, 0),
            Extent::new(20, 5),
            Extent::new(0, 5),
        ]);

        assert_eq!(got, vec![Extent::new(0, 5), Extent::new(20, 5)]);
    }

    #[tokio::test]
    async fn load_changed_extents_missing_file_names_file() {
        let err = load_changed_extents(Path::new("/nonexistent/cbt.json"), 2000, CAP)
            .await
            .unwrap_err();

        assert!(err.to_string().contains("/nonexistent/cbt.json"), "{err}");
    }

    proptest! {
        #[test]
        fn changed_extents_merge_covers_exactly_the_union(
            areas in prop::collection::vec((0u64..2048, 1u64..64), 0..40)
        ) {
            let areas: Vec<(u64, u64)> = areas
                .into_iter()
                .map(|(s, l)| (s * 512, (l * 512).min(CAP - s * 512)))
                .collect();
            let json = doc(&areas);

            let got = changed_extents(json.as_bytes(), CAP).unwrap();

            let mut want = vec![false; 2048];
            for (s, l) in &areas {
                for b in (s / 512)..((s + l) / 512) {
                    want[usize::try_from(b).unwrap()] = true;
                }
            }
            let mut have = vec![false; 2048];
            for e in &got {
                for b in (e.offset / 512)..(e.end() / 512) {
                    have[usize::try_from(b).unwrap()] = true;
                }
            }
            prop_assert_eq!(have, want);
            for pair in got.windows(2) {
                prop_assert!(pair[0].end() < pair[1].offset, "not merged: {:?}", pair);
            }
        }
    }
}
