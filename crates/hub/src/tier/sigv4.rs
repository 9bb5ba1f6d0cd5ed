//! AWS Signature Version 4 for the few S3 requests the `object_store` crate cannot send (the
//! bucket's Object Lock configuration, [`super::lock`]): header-based, single-chunk, the
//! payload's SHA-256 signed (`x-amz-content-sha256`), as the S3 API reference's
//! "Authenticating Requests: Using the Authorization Header" describes:
//!
//! - canonical request: method, canonical URI (the path, already URI-encoded), canonical query
//!   (each name and value URI-encoded, sorted; `?object-lock` is `object-lock=`), canonical
//!   headers (lower-case names, sorted, values trimmed with inner runs of spaces collapsed,
//!   repeated names joined with commas), the signed header names, the payload's hex SHA-256;
//! - string to sign: `AWS4-HMAC-SHA256`, the time, the scope `date/region/service/aws4_request`,
//!   the hex SHA-256 of the canonical request;
//! - signing key: HMAC-SHA256 chained from `AWS4` + secret over date, region, service and
//!   `aws4_request`; the signature is the hex HMAC of the string to sign under it.
//!
//! Tested against AWS's published SigV4 test suite (`get-vanilla`, `get-vanilla-query-order-key-case`,
//! `get-header-key-duplicate`, `get-header-value-multiline`) and the S3 reference's signed
//! `GET /test.txt` example.

use ring::{digest, hmac};

/// The signing algorithm's name.
const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// Who signs, and for which region and service.
#[derive(Clone, Copy)]
pub(crate) struct Signer<'a> {
    /// The access key id.
    pub(crate) access_key: &'a str,
    /// The secret access key.
    pub(crate) secret_key: &'a str,
    /// The region (`us-east-1`, `garage`, ...).
    pub(crate) region: &'a str,
    /// The service (`s3`).
    pub(crate) service: &'a str,
}

impl std::fmt::Debug for Signer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("access_key", &self.access_key)
            .field("region", &self.region)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

/// A request to sign.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Request<'a> {
    /// `GET`, `PUT`, ...
    pub(crate) method: &'a str,
    /// The path, URI-encoded as sent (`/bucket`).
    pub(crate) path: &'a str,
    /// The query's names and values, not encoded.
    pub(crate) query: &'a [(&'a str, &'a str)],
    /// Every header to sign (`host` and `x-amz-date` among them), names in any case.
    pub(crate) headers: &'a [(&'a str, &'a str)],
    /// The payload's hex SHA-256.
    pub(crate) payload_sha256: &'a str,
}

impl Signer<'_> {
    /// The `Authorization` header's value for `request` at `amz_date` (`YYYYMMDDTHHMMSSZ`, the
    /// value of its `x-amz-date` header).
    pub(crate) fn authorization(&self, request: &Request<'_>, amz_date: &str) -> String {
        let (_, signed_headers) = canonical_headers(request.headers);
        let scope = self.scope(amz_date);
        let signature = self.signature(request, amz_date);
        format!(
            "{ALGORITHM} Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            self.access_key
        )
    }

    /// The hex signature of `request` at `amz_date`.
    fn signature(&self, request: &Request<'_>, amz_date: &str) -> String {
        let to_sign = self.string_to_sign(request, amz_date);
        let date = amz_date.get(..8).unwrap_or(amz_date);
        let secret = format!("AWS4{}", self.secret_key);
        let key = [date, self.region, self.service, "aws4_request"]
            .iter()
            .fold(secret.into_bytes(), |key, part| {
                hmac_sha256(&key, part.as_bytes())
            });
        hex(&hmac_sha256(&key, to_sign.as_bytes()))
    }

    fn string_to_sign(&self, request: &Request<'_>, amz_date: &str) -> String {
        let creq = canonical_request(request);
        format!(
            "{ALGORITHM}\n{amz_date}\n{}\n{}",
            self.scope(amz_date),
            sha256_hex(creq.as_bytes())
        )
    }

    fn scope(&self, amz_date: &str) -> String {
        let date = amz_date.get(..8).unwrap_or(amz_date);
        format!("{date}/{}/{}/aws4_request", self.region, self.service)
    }
}

/// The hex SHA-256 of `bytes`.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, bytes).as_ref())
}

/// The canonical request of `request`.
fn canonical_request(request: &Request<'_>) -> String {
    let mut query: Vec<(String, String)> = request
        .query
        .iter()
        .map(|(k, v)| (uri_encode(k), uri_encode(v)))
        .collect();
    query.sort();
    let query = query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let (headers, signed) = canonical_headers(request.headers);
    format!(
        "{}\n{}\n{query}\n{headers}\n{signed}\n{}",
        request.method, request.path, request.payload_sha256
    )
}

/// The canonical headers block (each line ending in `\n`) and the signed header names.
fn canonical_headers(headers: &[(&str, &str)]) -> (String, String) {
    let mut merged: std::collections::BTreeMap<String, Vec<String>> =
        std::collections::BTreeMap::new();
    for (name, value) in headers {
        merged
            .entry(name.trim().to_ascii_lowercase())
            .or_default()
            .push(collapse_spaces(value));
    }
    let block = merged
        .iter()
        .map(|(name, values)| format!("{name}:{}\n", values.join(",")))
        .collect();
    let signed = merged.keys().cloned().collect::<Vec<_>>().join(";");
    (block, signed)
}

/// A header value trimmed, each inner run of whitespace (folded lines included) one space.
fn collapse_spaces(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// URI-encodes everything but the unreserved characters `A-Z a-z 0-9 - _ . ~`.
pub(crate) fn uri_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    hmac::sign(&key, data).as_ref().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SigV4 test suite's signer (AKIDEXAMPLE, us-east-1, service `service`).
    const SUITE: Signer<'static> = Signer {
        access_key: "AKIDEXAMPLE",
        secret_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        region: "us-east-1",
        service: "service",
    };
    const SUITE_DATE: &str = "20150830T123600Z";
    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    /// The suite's headers (`Host`, `X-Amz-Date`) and `extra`.
    fn suite_get(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut headers = vec![
            ("Host", "example.amazonaws.com"),
            ("X-Amz-Date", SUITE_DATE),
        ];
        headers.extend_from_slice(extra);
        headers
    }

    fn suite_request<'a>(
        query: &'a [(&'a str, &'a str)],
        headers: &'a [(&'a str, &'a str)],
    ) -> Request<'a> {
        Request {
            method: "GET",
            path: "/",
            query,
            headers,
            payload_sha256: EMPTY_SHA256,
        }
    }

    #[test]
    fn get_vanilla_matches_the_test_suite() {
        let headers = suite_get(&[]);

        let authz = SUITE.authorization(&suite_request(&[], &headers), SUITE_DATE);

        assert_eq!(
            authz,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    #[test]
    fn get_vanilla_canonical_request_matches_the_test_suite() {
        let headers = suite_get(&[]);

        let creq = canonical_request(&suite_request(&[], &headers));

        assert_eq!(
            creq,
            format!(
                "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\n\
                 host;x-amz-date\n{EMPTY_SHA256}"
            )
        );
    }

    #[test]
    fn get_vanilla_query_order_key_case_sorts_the_query() {
        let headers = suite_get(&[]);
        let query = [("Param2", "value2"), ("Param1", "value1")];

        let sig = SUITE.signature(&suite_request(&query, &headers), SUITE_DATE);

        assert_eq!(
            sig,
            "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"
        );
    }

    #[test]
    fn get_header_key_duplicate_joins_values_in_order() {
        let headers = suite_get(&[
            ("My-Header1", "value2"),
            ("My-Header1", "value2"),
            ("My-Header1", "value1"),
        ]);

        let sig = SUITE.signature(&suite_request(&[], &headers), SUITE_DATE);

        assert_eq!(
            sig,
            "c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea"
        );
    }

    #[test]
    fn get_header_value_multiline_matches_the_test_suite() {
        // The suite's folded header, as its request unfolds it (the suite's own fixtures give
        // the signer `value1,value2,value3`).
        let headers = suite_get(&[("My-Header1", "value1,value2,value3")]);

        let sig = SUITE.signature(&suite_request(&[], &headers), SUITE_DATE);

        assert_eq!(
            sig,
            "ba17b383a53190154eb5fa66a1b836cc297cc0a3d70a5d00705980573d8ff790"
        );
    }

    #[test]
    fn s3_reference_get_object_example_matches() {
        // The S3 API reference's "GET Object" example of header-based SigV4 authentication.
        let signer = Signer {
            access_key: "AKIAIOSFODNN7EXAMPLE",
            secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            region: "us-east-1",
            service: "s3",
        };
        let headers = [
            ("Host", "examplebucket.s3.amazonaws.com"),
            ("Range", "bytes=0-9"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("x-amz-date", "20130524T000000Z"),
        ];
        let request = Request {
            method: "GET",
            path: "/test.txt",
            query: &[],
            headers: &headers,
            payload_sha256: EMPTY_SHA256,
        };

        let authz = signer.authorization(&request, "20130524T000000Z");

        assert_eq!(
            authz,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn subresource_without_value_is_encoded_with_an_empty_value() {
        let headers = suite_get(&[]);

        let creq = canonical_request(&suite_request(&[("object-lock", "")], &headers));

        assert_eq!(creq.lines().nth(2), Some("object-lock="));
    }

    #[test]
    fn uri_encode_keeps_unreserved_and_encodes_the_rest() {
        assert_eq!(uri_encode("a-Z_0.~ /+="), "a-Z_0.~%20%2F%2B%3D");
    }
}
