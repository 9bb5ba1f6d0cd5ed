//! The console's static files, embedded in the binary: htmx 2.0.11 (from the npm registry's
//! `htmx.org` package, `dist/htmx.min.js`, license 0BSD: `assets/htmx-LICENSE`; its SHA-256 is
//! in `assets/htmx-2.0.11.min.js.sha256`), the stylesheet and the copy-button script.
//!
//! Each is served under a name holding its version (htmx) or a digest of its bytes (ours), so
//! it can be cached for a year: a new build with other bytes has another URL.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// htmx's URL (its version is in the name).
pub(super) const HTMX_PATH: &str = "/assets/htmx-2.0.11.min.js";
/// The stylesheet's route; its URL carries a digest as `?v=` ([`css_url`]).
pub(super) const CSS_PATH: &str = "/assets/console.css";
/// The copy script's route; its URL carries a digest as `?v=` ([`js_url`]).
pub(super) const JS_PATH: &str = "/assets/console.js";

const HTMX: &[u8] = include_bytes!("assets/htmx-2.0.11.min.js");
const CSS: &[u8] = include_bytes!("assets/console.css");
const JS: &[u8] = include_bytes!("assets/console.js");

static CSS_URL: LazyLock<String> = LazyLock::new(|| format!("{CSS_PATH}?v={}", digest(CSS)));
static JS_URL: LazyLock<String> = LazyLock::new(|| format!("{JS_PATH}?v={}", digest(JS)));

/// The stylesheet's URL, with the first 16 hex digits of its SHA-256.
#[must_use]
pub(super) fn css_url() -> &'static str {
    &CSS_URL
}

/// The copy script's URL, with the first 16 hex digits of its SHA-256.
#[must_use]
pub(super) fn js_url() -> &'static str {
    &JS_URL
}

fn digest(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn immutable(content_type: &'static str, body: &'static [u8]) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        body,
    )
        .into_response()
}

/// `GET /assets/htmx-2.0.11.min.js`.
pub(super) async fn htmx() -> Response {
    immutable("text/javascript; charset=utf-8", HTMX)
}

/// `GET /assets/console.css`.
pub(super) async fn css() -> Response {
    immutable("text/css; charset=utf-8", CSS)
}

/// `GET /assets/console.js`.
pub(super) async fn js() -> Response {
    immutable("text/javascript; charset=utf-8", JS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendored_htmx_matches_its_recorded_digest() {
        let recorded = include_str!("assets/htmx-2.0.11.min.js.sha256");
        let actual: String = ring::digest::digest(&ring::digest::SHA256, HTMX)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();

        assert_eq!(recorded.split_whitespace().next(), Some(actual.as_str()));
    }

    #[test]
    fn asset_urls_carry_a_digest() {
        assert!(css_url().starts_with("/assets/console.css?v="));
        assert_eq!(css_url().len(), CSS_PATH.len() + 3 + 16);
        assert_ne!(css_url(), js_url());
    }
}
