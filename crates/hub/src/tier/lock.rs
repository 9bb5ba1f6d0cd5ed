//! Object Lock on a target's bucket (issue #18: "Object Lock retention when the target sets
//! `object_lock_days` and the store supports it; a clear error when it does not").
//!
//! **How objects get locked.** A target with `object_lock_days` N above 0 makes the hub give
//! the bucket a *default retention* of N days ([`set_default_retention`], before the target
//! is stored): S3 then locks every object version written to the bucket from then on for N
//! days after its creation, with no header on the uploads themselves. That is why the
//! `object_store` crate, which cannot send per-object lock headers, is enough for the copies:
//! the store applies the lock, not the client. Uploads to such a bucket carry a SHA-256
//! checksum (`x-amz-checksum-sha256`, see `store.rs`), which S3 requires of every write
//! into a bucket with a default retention.
//!
//! **Mode: COMPLIANCE.** In GOVERNANCE mode anyone holding `s3:BypassGovernanceRetention`
//! can shorten the retention or delete a locked version: an attacker holding the keys of an
//! admin account could erase the copies, which is what an off-site copy is kept against. In
//! COMPLIANCE mode nobody, not even the account's root user, can shorten or remove it before
//! it expires. The cost is real: for N days the objects cannot be deleted, by the hub's
//! retention either (a `DELETE` in a locked, versioned bucket only adds a delete marker; the
//! locked version stays, and is billed, until its retention ends).
//!
//! **Steps** (SigV4-signed, path-style, [`super::sigv4`]): `GET /{bucket}?object-lock`
//! (GetObjectLockConfiguration) must say `ObjectLockEnabled` = `Enabled` (S3 only enables it
//! for a bucket created with Object Lock); `PUT /{bucket}?object-lock`
//! (PutObjectLockConfiguration, with the `Content-MD5` S3 requires of it) sets the default
//! retention; the configuration read back must say COMPLIANCE for N days. Every "this store
//! or bucket cannot" answer (501 `NotImplemented`, as Garage answers both calls,
//! `ObjectLockConfigurationNotFoundError`, `InvalidBucketState`, a document that is not a lock
//! configuration, a configuration not kept) is [`HubError::ObjectLockUnsupported`] (400),
//! with a reason that names the fix; nothing is stored then. A store that cannot be reached,
//! or refuses the keys or the bucket, is [`HubError::ObjectStore`] (502), naming its answer.

use std::time::Duration;

use base64::Engine as _;
use md5::Digest as _;
use sendense_tier::lock::{LockConfiguration, LockMode, MAX_XML_BYTES, S3ErrorBody};
use sendense_types::TargetRequest;

use super::sigv4::{Request, Signer, sha256_hex, uri_encode};
use crate::error::HubError;

/// The retention mode the hub sets (see the module documentation).
pub(crate) const LOCK_MODE: LockMode = LockMode::Compliance;
/// Timeout of one connection attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout of one exchange.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Error codes that say the store or the bucket cannot keep objects locked.
const UNSUPPORTED_CODES: [&str; 4] = [
    "NotImplemented",
    "ObjectLockConfigurationNotFoundError",
    "InvalidBucketState",
    "MethodNotAllowed",
];

/// What to do when the bucket cannot lock objects: named in every refusal.
const FIX: &str = "create the bucket with Object Lock enabled on a store that supports it \
                   (S3 enables Object Lock only for a bucket created with it), or set \
                   object_lock_days to 0";

/// Gives the bucket of `req` a default retention of `req.object_lock_days()` days in
/// [`LOCK_MODE`] and checks that the store keeps it.
///
/// # Errors
/// [`HubError::ObjectLockUnsupported`] when the store or the bucket cannot lock objects;
/// [`HubError::ObjectStore`] when the store cannot be reached or refuses the request
/// otherwise (keys, bucket name).
pub(crate) async fn set_default_retention(req: &TargetRequest) -> Result<(), HubError> {
    let days = req.object_lock_days();
    let api = LockApi::new(req)?;
    let current = api.read().await?;
    if !current.enabled {
        return Err(api.unsupported(&format!(
            "GetObjectLockConfiguration says Object Lock is not enabled on bucket {}",
            req.bucket()
        )));
    }
    let wanted = LockConfiguration::days(LOCK_MODE, days);
    api.write(&wanted).await?;
    let back = api.read().await?;
    if back != wanted {
        return Err(api.unsupported(&format!(
            "the store accepted a default retention of {days} days ({}) but answers {} when \
             read back: it does not keep it",
            LOCK_MODE.as_str(),
            describe(&back)
        )));
    }
    tracing::info!(target = %req.name(), bucket = req.bucket(), days, mode = LOCK_MODE.as_str(), "bucket default retention set");
    Ok(())
}

/// The `?object-lock` subresource of one bucket.
struct LockApi<'a> {
    req: &'a TargetRequest,
    http: reqwest::Client,
    url: reqwest::Url,
    host: String,
}

/// What the store answered.
enum Answer {
    /// A 2xx and its body.
    Done(Vec<u8>),
    /// A refusal that says the store or bucket cannot lock objects: what it said.
    Unsupported(String),
}

impl<'a> LockApi<'a> {
    fn new(req: &'a TargetRequest) -> Result<Self, HubError> {
        let mut url = reqwest::Url::parse(req.endpoint().trim_end_matches('/'))
            .map_err(|e| generic(req, "parse the endpoint", e.to_string()))?;
        let path = format!(
            "{}/{}",
            url.path().trim_end_matches('/'),
            uri_encode(req.bucket())
        );
        url.set_path(&path);
        url.set_query(Some("object-lock"));
        let host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            (None, _) => return Err(generic(req, "parse the endpoint", "no host".to_owned())),
        };
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| generic(req, "build the HTTP client", e.to_string()))?;
        Ok(Self {
            req,
            http,
            url,
            host,
        })
    }

    /// GetObjectLockConfiguration.
    async fn read(&self) -> Result<LockConfiguration, HubError> {
        match self.send(reqwest::Method::GET, Vec::new()).await? {
            Answer::Done(body) => LockConfiguration::decode(&body).map_err(|_| {
                self.unsupported(&format!(
                    "GetObjectLockConfiguration answered a document that is not an Object \
                     Lock configuration ({})",
                    first_bytes(&body)
                ))
            }),
            Answer::Unsupported(said) => Err(self.unsupported(&format!(
                "GetObjectLockConfiguration on bucket {} answered {said}",
                self.req.bucket()
            ))),
        }
    }

    /// PutObjectLockConfiguration.
    async fn write(&self, config: &LockConfiguration) -> Result<(), HubError> {
        match self
            .send(reqwest::Method::PUT, config.encode().into_bytes())
            .await?
        {
            Answer::Done(_) => Ok(()),
            Answer::Unsupported(said) => Err(self.unsupported(&format!(
                "PutObjectLockConfiguration on bucket {} answered {said}",
                self.req.bucket()
            ))),
        }
    }

    /// Sends a signed request with `body`; reads at most [`MAX_XML_BYTES`] of the answer.
    async fn send(&self, method: reqwest::Method, body: Vec<u8>) -> Result<Answer, HubError> {
        let operation = format!("{method} ?object-lock of bucket {}", self.req.bucket());
        let amz_date = jiff::Timestamp::now()
            .strftime("%Y%m%dT%H%M%SZ")
            .to_string();
        let payload_sha256 = sha256_hex(&body);
        let content_md5 = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(&body));
        let mut headers = vec![
            ("host", self.host.as_str()),
            ("x-amz-content-sha256", payload_sha256.as_str()),
            ("x-amz-date", amz_date.as_str()),
        ];
        if !body.is_empty() {
            headers.push(("content-md5", content_md5.as_str()));
        }
        let signer = Signer {
            access_key: self.req.access_key(),
            secret_key: self.req.secret_key(),
            region: self.req.region(),
            service: "s3",
        };
        let authorization = signer.authorization(
            &Request {
                method: method.as_str(),
                path: self.url.path(),
                query: &[("object-lock", "")],
                headers: &headers,
                payload_sha256: &payload_sha256,
            },
            &amz_date,
        );
        let mut request = self
            .http
            .request(method, self.url.clone())
            .header(reqwest::header::AUTHORIZATION, authorization);
        for (name, value) in &headers {
            request = request.header(*name, *value);
        }
        let mut response = request
            .body(body)
            .send()
            .await
            .map_err(|e| generic(self.req, &operation, e.without_url().to_string()))?;
        let status = response.status();
        let mut answer = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| generic(self.req, &operation, e.without_url().to_string()))?
        {
            let room = MAX_XML_BYTES.saturating_sub(answer.len());
            answer.extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or_default());
            if answer.len() >= MAX_XML_BYTES {
                break;
            }
        }
        classify(status, answer).map_err(|said| generic(self.req, &operation, said))
    }

    fn unsupported(&self, what: &str) -> HubError {
        HubError::ObjectLockUnsupported {
            target: self.req.name().clone(),
            days: self.req.object_lock_days(),
            reason: format!("{what}; {FIX}"),
        }
    }
}

/// Sorts an answer: 2xx is done; a refusal that says the store or bucket cannot lock objects
/// (501, or one of [`UNSUPPORTED_CODES`]) is unsupported; any other refusal is an error,
/// described as `status code (message)`.
fn classify(status: reqwest::StatusCode, body: Vec<u8>) -> Result<Answer, String> {
    if status.is_success() {
        return Ok(Answer::Done(body));
    }
    let error = S3ErrorBody::decode(&body).unwrap_or(S3ErrorBody {
        code: String::new(),
        message: String::new(),
    });
    let mut said = status.to_string();
    if !error.code.is_empty() {
        said.push_str(&format!(" {}", error.code));
    }
    if !error.message.is_empty() {
        said.push_str(&format!(" ({})", error.message));
    }
    if status == reqwest::StatusCode::NOT_IMPLEMENTED
        || UNSUPPORTED_CODES.contains(&error.code.as_str())
    {
        Ok(Answer::Unsupported(said))
    } else {
        Err(said)
    }
}

/// A configuration in words.
fn describe(config: &LockConfiguration) -> String {
    match (config.enabled, config.default_retention) {
        (false, _) => "Object Lock not enabled".to_owned(),
        (true, None) => "no default retention".to_owned(),
        (true, Some(r)) => format!("{} for {:?}", r.mode.as_str(), r.period),
    }
}

/// The start of an unexpected answer, printable.
fn first_bytes(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body.get(..body.len().min(80)).unwrap_or_default());
    text.chars().filter(|c| !c.is_control()).collect()
}

fn generic(req: &TargetRequest, operation: &str, detail: String) -> HubError {
    HubError::ObjectStore {
        target: req.name().clone(),
        operation: operation.to_owned(),
        source: Box::new(object_store::Error::Generic {
            store: "S3",
            source: detail.into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    fn error(code: &str) -> Vec<u8> {
        format!("<Error><Code>{code}</Code><Message>m</Message></Error>").into_bytes()
    }

    #[test]
    fn classify_garage_not_implemented_is_unsupported() {
        let answer = classify(StatusCode::NOT_IMPLEMENTED, error("NotImplemented"));

        assert!(
            matches!(&answer, Ok(Answer::Unsupported(said)) if said.contains("NotImplemented")),
            "{:?}",
            answer.err()
        );
    }

    #[test]
    fn classify_bucket_without_lock_configuration_is_unsupported() {
        let answer = classify(
            StatusCode::NOT_FOUND,
            error("ObjectLockConfigurationNotFoundError"),
        );

        assert!(matches!(answer, Ok(Answer::Unsupported(_))));
    }

    #[test]
    fn classify_access_denied_is_an_error_naming_the_code() {
        let answer = classify(StatusCode::FORBIDDEN, error("AccessDenied"));

        assert!(
            matches!(&answer, Err(said) if said.contains("403") && said.contains("AccessDenied"))
        );
    }

    #[test]
    fn classify_success_keeps_the_body() {
        let answer = classify(StatusCode::OK, b"<ObjectLockConfiguration/>".to_vec());

        assert!(matches!(answer, Ok(Answer::Done(body)) if body == b"<ObjectLockConfiguration/>"));
    }

    #[test]
    fn classify_bare_501_without_xml_is_unsupported() {
        let answer = classify(StatusCode::NOT_IMPLEMENTED, b"nope".to_vec());

        assert!(matches!(answer, Ok(Answer::Unsupported(_))));
    }
}
