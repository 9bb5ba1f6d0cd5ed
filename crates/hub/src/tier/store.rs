//! [`Bucket`]: one target's bucket through the `object_store` crate's S3 client (path-style
//! requests, plain HTTP allowed for endpoints on a private network or loopback), with every
//! error mapped to [`HubError::ObjectStore`] naming the target and the operation.
//!
//! The client retries what S3 says is transient (5xx, timeouts, dropped connections) with
//! backoff, bounded by [`RETRY_TIMEOUT`]: a store node going away mid-copy costs a retry,
//! not the copy.

use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, Checksum};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStore, PutPayload, RetryConfig};
use sendense_catalog::TargetRecord;
use sendense_types::TargetName;

use crate::error::HubError;

/// How long one request (with its retries) may take before the copy fails (and resumes at
/// its next run).
pub(crate) const RETRY_TIMEOUT: Duration = Duration::from_secs(120);
/// Timeout of one HTTP exchange.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Timeout of one connection attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One target's bucket.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    target: TargetName,
    store: AmazonS3,
}

impl Bucket {
    /// The bucket of `record`, signing with `secret`.
    pub(crate) fn new(record: &TargetRecord, secret: &str) -> Result<Self, HubError> {
        let options = ClientOptions::new()
            .with_allow_http(true)
            .with_timeout(REQUEST_TIMEOUT)
            .with_connect_timeout(CONNECT_TIMEOUT);
        let retry = RetryConfig {
            max_retries: 10,
            retry_timeout: RETRY_TIMEOUT,
            ..RetryConfig::default()
        };
        let mut builder = AmazonS3Builder::new();
        if record.object_lock_days > 0 {
            // S3 refuses a write without a checksum into a bucket with a default retention
            // ("Content-MD5 or x-amz-checksum- HTTP header is required"): see `lock`.
            builder = builder.with_checksum_algorithm(Checksum::SHA256);
        }
        let store = builder
            .with_endpoint(record.endpoint.trim_end_matches('/'))
            .with_bucket_name(&record.bucket)
            .with_region(&record.region)
            .with_access_key_id(&record.access_key)
            .with_secret_access_key(secret)
            .with_virtual_hosted_style_request(false)
            .with_client_options(options)
            .with_retry(retry)
            .build()
            .map_err(|e| store_error(&record.name, "configure the S3 client", e))?;
        Ok(Self {
            target: record.name.clone(),
            store,
        })
    }

    /// The target's name.
    pub(crate) fn target(&self) -> &TargetName {
        &self.target
    }

    /// Writes a whole (small) object.
    pub(crate) async fn put(&self, name: &str, bytes: Vec<u8>) -> Result<(), HubError> {
        self.store
            .put(&Path::from(name), PutPayload::from(bytes))
            .await
            .map(drop)
            .map_err(|e| self.error(format!("put {name}"), e))
    }

    /// Reads a whole object, refusing one larger than `max` bytes (checked before reading).
    pub(crate) async fn get(&self, name: &str, max: u64) -> Result<Bytes, HubError> {
        let size = self.size(name).await?;
        if size > max {
            return Err(HubError::Tier {
                object: name.to_owned(),
                source: sendense_tier::TierError::TooLarge { len: size, max },
            });
        }
        self.get_range(name, 0..size).await
    }

    /// Reads bytes `range` of an object.
    pub(crate) async fn get_range(&self, name: &str, range: Range<u64>) -> Result<Bytes, HubError> {
        if range.start >= range.end {
            return Ok(Bytes::new());
        }
        self.store
            .get_range(&Path::from(name), range)
            .await
            .map_err(|e| self.error(format!("read {name}"), e))
    }

    /// Streams a whole object in one request, in the pieces the connection delivers (the
    /// client resumes a body cut mid-way by range, as long as the object is unchanged).
    pub(crate) async fn get_stream(
        &self,
        name: &str,
    ) -> Result<impl futures::Stream<Item = Result<Bytes, HubError>> + use<>, HubError> {
        let result = self
            .store
            .get(&Path::from(name))
            .await
            .map_err(|e| self.error(format!("read {name}"), e))?;
        let (this, name) = (self.clone(), name.to_owned());
        Ok(result
            .into_stream()
            .map_err(move |e| this.error(format!("read {name}"), e)))
    }

    /// An object's size.
    pub(crate) async fn size(&self, name: &str) -> Result<u64, HubError> {
        self.store
            .head(&Path::from(name))
            .await
            .map(|meta| meta.size)
            .map_err(|e| self.error(format!("head {name}"), e))
    }

    /// Every object name under `prefix`.
    pub(crate) async fn list(&self, prefix: &str) -> Result<Vec<String>, HubError> {
        let prefix = Path::from(prefix);
        self.store
            .list(Some(&prefix))
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await
            .map_err(|e| self.error(format!("list {prefix}"), e))
    }

    /// Deletes an object (deleting one that does not exist is not an error in S3).
    pub(crate) async fn delete(&self, name: &str) -> Result<(), HubError> {
        match self.store.delete(&Path::from(name)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(format!("delete {name}"), e)),
        }
    }

    /// Deletes every object under `prefix`, the names for which `first` holds before the
    /// others (a point's manifest goes first: a half-deleted point is then no point at all in
    /// the bucket); answers how many were deleted.
    pub(crate) async fn delete_prefix(
        &self,
        prefix: &str,
        first: impl Fn(&str) -> bool,
    ) -> Result<usize, HubError> {
        let mut names = self.list(prefix).await?;
        names.sort_by_key(|n| !first(n));
        for name in &names {
            self.delete(name).await?;
        }
        Ok(names.len())
    }

    /// Starts a multipart upload of `name`; answers its id.
    pub(crate) async fn create_multipart(&self, name: &str) -> Result<String, HubError> {
        self.store
            .create_multipart(&Path::from(name))
            .await
            .map_err(|e| self.error(format!("start upload of {name}"), e))
    }

    /// Uploads part `index` (0-based) of upload `id`; answers its entity tag.
    pub(crate) async fn put_part(
        &self,
        name: &str,
        id: &str,
        index: usize,
        bytes: Vec<u8>,
    ) -> Result<String, HubError> {
        self.store
            .put_part(
                &Path::from(name),
                &id.to_owned(),
                index,
                PutPayload::from(bytes),
            )
            .await
            .map(|part| part.content_id)
            .map_err(|e| self.error(format!("upload part {index} of {name}"), e))
    }

    /// Completes upload `id` of `name` from its parts' entity tags, in order.
    pub(crate) async fn complete_multipart(
        &self,
        name: &str,
        id: &str,
        parts: Vec<String>,
    ) -> Result<(), HubError> {
        let parts = parts
            .into_iter()
            .map(|content_id| PartId { content_id })
            .collect();
        self.store
            .complete_multipart(&Path::from(name), &id.to_owned(), parts)
            .await
            .map(drop)
            .map_err(|e| self.error(format!("complete upload of {name}"), e))
    }

    fn error(&self, operation: String, source: object_store::Error) -> HubError {
        HubError::ObjectStore {
            target: self.target.clone(),
            operation,
            source: Box::new(source),
        }
    }
}

fn store_error(target: &TargetName, operation: &str, source: object_store::Error) -> HubError {
    HubError::ObjectStore {
        target: target.clone(),
        operation: operation.to_owned(),
        source: Box::new(source),
    }
}

/// Whether `e` says the object or upload does not exist (a stale upload id: start again).
pub(crate) fn is_not_found(e: &HubError) -> bool {
    matches!(e, HubError::ObjectStore { source, .. }
        if matches!(**source, object_store::Error::NotFound { .. }))
}
