//! The object tier's API types (DESIGN.md "Object tier"): targets (S3-compatible buckets),
//! copy requests, and the copies a backup answers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::TypesError;
use crate::names::TargetName;
use crate::timestamp::Timestamp;

/// Longest endpoint, bucket, region or access key accepted.
pub const MAX_TARGET_FIELD_LEN: usize = 512;
/// Longest Object Lock retention accepted, in days (100 years).
pub const MAX_OBJECT_LOCK_DAYS: u32 = 36_500;

/// `POST /api/v1/targets`: `{name, endpoint, bucket, region, access_key, secret_key,
/// object_lock_days}`.
///
/// Its `Debug` never shows the secret key; the hub stores it sealed and never answers it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "TargetWire", into = "TargetWire")]
pub struct TargetRequest {
    name: TargetName,
    endpoint: String,
    bucket: String,
    region: String,
    access_key: String,
    secret_key: String,
    object_lock_days: u32,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetWire {
    name: TargetName,
    endpoint: String,
    bucket: String,
    #[serde(default)]
    region: Option<String>,
    access_key: String,
    secret_key: String,
    #[serde(default)]
    object_lock_days: Option<u32>,
}

impl TargetRequest {
    /// A checked request: the endpoint is an `http://` or `https://` URL, the bucket a valid S3
    /// bucket name, the region and keys non-empty, every field at most
    /// [`MAX_TARGET_FIELD_LEN`] bytes without control characters.
    ///
    /// # Errors
    /// [`TypesError::InvalidField`] naming the field.
    pub fn new(
        name: TargetName,
        endpoint: String,
        bucket: String,
        region: String,
        keys: (String, String),
        object_lock_days: u32,
    ) -> Result<Self, TypesError> {
        let (access_key, secret_key) = keys;
        let invalid = |field: &'static str, reason: &'static str| {
            Err(TypesError::InvalidField { field, reason })
        };
        for (field, value) in [
            ("endpoint", &endpoint),
            ("bucket", &bucket),
            ("region", &region),
            ("access_key", &access_key),
            ("secret_key", &secret_key),
        ] {
            if value.len() > MAX_TARGET_FIELD_LEN {
                return invalid(field, "must be at most 512 bytes");
            }
            if value.chars().any(char::is_control) {
                return invalid(field, "must not contain control characters");
            }
        }
        let rest = endpoint
            .strip_prefix("https://")
            .or_else(|| endpoint.strip_prefix("http://"));
        if rest.is_none_or(|r| r.is_empty() || r.contains(char::is_whitespace)) {
            return invalid("endpoint", "must be an http:// or https:// URL");
        }
        if !(3..=63).contains(&bucket.len())
            || !bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.'))
            || bucket.starts_with(['-', '.'])
            || bucket.ends_with(['-', '.'])
        {
            return invalid(
                "bucket",
                "must be 3 to 63 lowercase letters, digits, '-' or '.', not starting or ending with '-' or '.'",
            );
        }
        if region.is_empty() {
            return invalid("region", "must not be empty");
        }
        if access_key.is_empty() {
            return invalid("access_key", "must not be empty");
        }
        if secret_key.is_empty() {
            return invalid("secret_key", "must not be empty");
        }
        if object_lock_days > MAX_OBJECT_LOCK_DAYS {
            return invalid("object_lock_days", "must be at most 36500");
        }
        Ok(Self {
            name,
            endpoint,
            bucket,
            region,
            access_key,
            secret_key,
            object_lock_days,
        })
    }

    /// The target's name.
    #[must_use]
    pub fn name(&self) -> &TargetName {
        &self.name
    }

    /// The S3 endpoint URL.
    #[must_use]
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The bucket.
    #[must_use]
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The region (`us-east-1` when the request left it out).
    #[must_use]
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The access key id.
    #[must_use]
    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    /// The secret key (only for sealing it).
    #[must_use]
    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// Days each object stays locked (S3 Object Lock, compliance mode); 0: no lock.
    #[must_use]
    pub fn object_lock_days(&self) -> u32 {
        self.object_lock_days
    }
}

impl TryFrom<TargetWire> for TargetRequest {
    type Error = TypesError;

    fn try_from(w: TargetWire) -> Result<Self, Self::Error> {
        Self::new(
            w.name,
            w.endpoint,
            w.bucket,
            w.region
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| "us-east-1".to_owned()),
            (w.access_key, w.secret_key),
            w.object_lock_days.unwrap_or(0),
        )
    }
}

impl From<TargetRequest> for TargetWire {
    fn from(r: TargetRequest) -> Self {
        Self {
            name: r.name,
            endpoint: r.endpoint,
            bucket: r.bucket,
            region: Some(r.region),
            access_key: r.access_key,
            secret_key: r.secret_key,
            object_lock_days: Some(r.object_lock_days),
        }
    }
}

impl fmt::Debug for TargetRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TargetRequest")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field("object_lock_days", &self.object_lock_days)
            .finish()
    }
}

/// A stored target as answered: everything but the secret key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// Its name.
    pub name: TargetName,
    /// The S3 endpoint URL.
    pub endpoint: String,
    /// The bucket.
    pub bucket: String,
    /// The region.
    pub region: String,
    /// The access key id.
    pub access_key: String,
    /// Days each object stays locked; 0: no lock.
    pub object_lock_days: u32,
    /// When it was stored.
    pub created_at: Timestamp,
}

/// `GET /api/v1/targets`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetList {
    /// Every target, by name.
    pub targets: Vec<Target>,
}

/// `POST /api/v1/backups/{id}/copy`: `{target}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyRequest {
    /// The target to copy to.
    pub target: TargetName,
}

/// Where a copy of a point to a target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyState {
    /// A copy job is queued.
    Queued,
    /// Uploading (or interrupted while uploading: the next run resumes).
    Running,
    /// Every object is in the bucket and was read back and matched its SHA-256.
    Verified,
    /// The last attempt failed (`error` says why); a new copy request resumes it.
    Failed,
}

lowercase_enum!(CopyState, "state", "queued, running, verified or failed", {
    Queued => "queued",
    Running => "running",
    Verified => "verified",
    Failed => "failed",
});

/// One copy of a point, as `GET /api/v1/backups/{id}` answers it in `copies`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupCopy {
    /// The target.
    pub target: TargetName,
    /// Its state.
    pub state: CopyState,
    /// When it entered that state.
    pub at: Timestamp,
    /// Why the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> serde_json::Value {
        serde_json::json!({
            "name": "offsite", "endpoint": "http://127.0.0.1:3900", "bucket": "sendense",
            "region": "garage", "access_key": "GK1", "secret_key": "s3cr3t",
            "object_lock_days": 0
        })
    }

    #[test]
    fn target_request_valid_body_parses() {
        let req: TargetRequest = serde_json::from_value(body()).unwrap();
        assert_eq!(req.bucket(), "sendense");
        assert_eq!(req.region(), "garage");
    }

    #[test]
    fn target_request_debug_hides_secret() {
        let req: TargetRequest = serde_json::from_value(body()).unwrap();
        assert!(!format!("{req:?}").contains("s3cr3t"));
    }

    #[test]
    fn target_request_bad_bucket_is_refused_naming_field() {
        let mut b = body();
        b["bucket"] = "Bad_Bucket".into();
        let err = serde_json::from_value::<TargetRequest>(b).unwrap_err();
        assert!(err.to_string().contains("bucket"), "{err}");
    }

    #[test]
    fn target_request_endpoint_without_scheme_is_refused() {
        let mut b = body();
        b["endpoint"] = "127.0.0.1:3900".into();
        let err = serde_json::from_value::<TargetRequest>(b).unwrap_err();
        assert!(err.to_string().contains("endpoint"), "{err}");
    }
}
