//! The console's page frame, its error page and small formatting helpers.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};
use sendense_types::{JobProgress, JobStatus, Timestamp};

use super::assets;
use super::auth::SignedIn;
use crate::error::{ErrorKind, HubError};

/// The sections of the navigation bar: (path, label).
const NAV: &[(&str, &str)] = &[
    ("/", "Dashboard"),
    ("/jobs", "Jobs"),
    ("/vms", "VMs"),
    ("/policies", "Policies"),
    ("/restore", "Restore"),
    ("/agents", "Agents"),
    ("/credentials", "Credentials"),
    ("/users", "Users"),
];

/// What a console handler answers.
pub(super) type Page = Result<Response, PageError>;

/// A page's failure, shown to a person in plain words with a fitting status.
#[derive(Debug)]
pub(super) struct PageError {
    status: StatusCode,
    message: String,
}

impl PageError {
    /// A failure with its status and words.
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// 403 with its reason.
    pub(super) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    /// The same failure with `lead` (a sentence) before its words.
    pub(super) fn with_lead(self, lead: &str) -> Self {
        Self {
            status: self.status,
            message: format!("{lead} {}", self.message),
        }
    }

    /// 400 with its reason.
    pub(super) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

/// A hub error in words: its cause chain, without the "Catalog: " layer name.
pub(super) fn words(e: &HubError) -> String {
    let chain = sendense_io::error_chain(e);
    chain.strip_prefix("Catalog: ").unwrap_or(&chain).to_owned()
}

impl From<HubError> for PageError {
    fn from(e: HubError) -> Self {
        let words = words(&e);
        let (status, message) = match e.kind() {
            ErrorKind::BadRequest | ErrorKind::Unprocessable => (StatusCode::BAD_REQUEST, words),
            ErrorKind::NotFound => (StatusCode::NOT_FOUND, words),
            ErrorKind::Conflict => (StatusCode::CONFLICT, words),
            ErrorKind::Forbidden | ErrorKind::Unauthorized => (StatusCode::FORBIDDEN, words),
            ErrorKind::InsufficientStorage => (StatusCode::INSUFFICIENT_STORAGE, words),
            ErrorKind::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "The hub is shutting down; try again once it is back.".to_owned(),
            ),
            ErrorKind::Upstream => (StatusCode::BAD_GATEWAY, words),
            _ => {
                tracing::error!(error = %words, "console request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("The hub failed: {words}. The hub's log has the details."),
                )
            }
        };
        Self { status, message }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let title = match self.status {
            StatusCode::FORBIDDEN => "Not allowed",
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::CONFLICT => "Cannot do that now",
            StatusCode::BAD_REQUEST => "Please check what you typed",
            _ => "Something went wrong",
        };
        let body = html! {
            (DOCTYPE)
            html lang="en" {
                (head(title))
                body {
                    main {
                        h1 { (title) }
                        div.error role="alert" { (self.message) }
                        p { "Use your browser's Back button to return to the form, or go to the " a href="/" { "dashboard" } "." }
                    }
                }
            }
        };
        (self.status, Html(body.into_string())).into_response()
    }
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            // htmx must not inject its indicator styles: the CSP allows no inline style.
            meta name="htmx-config" content=r#"{"includeIndicatorStyles":false,"allowEval":false}"#;
            title { (title) " · Sendense" }
            link rel="stylesheet" href=(assets::css_url());
            script src=(assets::HTMX_PATH) defer {}
            script src=(assets::js_url()) defer {}
        }
    }
}

/// A full page: navigation (with `active` marked), the user and sign-out, the flash message,
/// then `content`. htmx requests carry the CSRF token in a header set on `body`.
pub(super) fn page(user: &SignedIn, title: &str, active: &str, content: &Markup) -> Response {
    let headers = format!(r#"{{"X-CSRF-Token": "{}"}}"#, user.csrf);
    let body = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body hx-headers=(headers) {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/" { "Sendense" }
                    nav aria-label="Sections" {
                        @for (path, label) in NAV {
                            @if *path == active {
                                a href=(path) aria-current="page" { (label) }
                            } @else {
                                a href=(path) { (label) }
                            }
                        }
                    }
                    div.who {
                        span { (user.name) " (" (user.role) ")" }
                        form.inline method="post" action="/logout" {
                            (csrf(user))
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main #main {
                    @if let Some(flash) = &user.flash {
                        div.flash role="status" { (flash) }
                    }
                    h1 { (title) }
                    (content)
                }
            }
        }
    };
    Html(body.into_string()).into_response()
}

/// The sign-in page; `token` is the form's own CSRF token (also in its cookie).
pub(super) fn login(token: &str, error: Option<&str>, name: &str, no_users: bool) -> Html<String> {
    let body = html! {
        (DOCTYPE)
        html lang="en" {
            (head("Sign in"))
            body {
                main.login {
                    div.card {
                        h1 { "Sendense" }
                        @if let Some(error) = error {
                            div.error role="alert" #login-error { (error) }
                        }
                        @if no_users {
                            div.warn {
                                "No console user exists yet. On the hub, create the first admin: "
                                pre.cmd { "sendense-hub ctl --data-dir DATA user add NAME --role admin --password-file FILE" }
                            }
                        }
                        form.stack method="post" action="/login" {
                            input type="hidden" name="csrf" value=(token);
                            label { "User name" input #name name="name" autocomplete="username" required value=(name) autofocus; }
                            label { "Password" input #password name="password" type="password" autocomplete="current-password" required; }
                            button type="submit" #sign-in { "Sign in" }
                        }
                    }
                }
            }
        }
    };
    Html(body.into_string())
}

/// The hidden CSRF field of a form.
pub(super) fn csrf(user: &SignedIn) -> Markup {
    html! { input type="hidden" name="csrf" value=(user.csrf); }
}

/// A status badge (`class="badge status-<status>"`).
pub(super) fn status_badge(status: &str) -> Markup {
    html! { span class={ "badge status-" (status) } { (status) } }
}

/// A job's progress as a bar (an SVG with the ARIA progressbar role; inline styles are not
/// allowed by the page's CSP, so the width is an attribute).
pub(super) fn progress_bar(progress: &JobProgress, status: JobStatus) -> Markup {
    let percent = percent(progress, status);
    let class = match status {
        JobStatus::Completed => "bar done",
        JobStatus::Failed | JobStatus::Cancelled => "bar failed",
        _ => "bar",
    };
    html! {
        svg class=(class) viewBox="0 0 100 8" preserveAspectRatio="none" role="progressbar"
            aria-valuemin="0" aria-valuemax="100" aria-valuenow=(percent)
            aria-label={ (percent) "% done" } {
            rect.track width="100" height="8" {}
            rect.fill width=(percent) height="8" {}
        }
    }
}

/// Whole percent done: 100 once completed, else bytes done of bytes total.
pub(super) fn percent(progress: &JobProgress, status: JobStatus) -> u64 {
    if status == JobStatus::Completed {
        return 100;
    }
    if progress.bytes_total == 0 {
        return 0;
    }
    (u128::from(progress.bytes_done) * 100 / u128::from(progress.bytes_total))
        .min(100)
        .try_into()
        .unwrap_or(100)
}

/// Bytes in binary units, one decimal.
pub(super) fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut unit = 0;
    let mut whole = n;
    while whole >= 1024 && unit < UNITS.len() - 1 {
        whole /= 1024;
        unit += 1;
    }
    if unit == 0 {
        return format!("{n} B");
    }
    let scaled = u128::from(n) * 10 / (1u128 << (10 * unit));
    format!("{}.{} {}", scaled / 10, scaled % 10, UNITS[unit])
}

/// A time as `YYYY-MM-DD HH:MM` UTC, with the full instant in a tooltip.
pub(super) fn time(t: Option<Timestamp>) -> Markup {
    match t {
        Some(t) => {
            let text = t.to_string();
            let short = text.get(..16).unwrap_or(&text).replace('T', " ");
            html! { time datetime=(text) title=(text) { (short) } }
        }
        None => html! { span.muted { "—" } },
    }
}

/// `text` percent-encoded for one URL path segment or query value.
pub(super) fn segment(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_uses_binary_units_with_one_decimal() {
        assert_eq!(
            [bytes(512), bytes(1536), bytes(5 << 30)],
            ["512 B", "1.5 KiB", "5.0 GiB"]
        );
    }

    #[test]
    fn percent_is_100_when_completed_and_clamped_otherwise() {
        let p = |done, total| JobProgress {
            bytes_done: done,
            bytes_total: total,
            mb_per_s: 0.0,
            eta_seconds: None,
        };

        assert_eq!(percent(&p(0, 0), JobStatus::Completed), 100);
        assert_eq!(percent(&p(50, 200), JobStatus::Running), 25);
        assert_eq!(percent(&p(300, 200), JobStatus::Running), 100);
        assert_eq!(percent(&p(5, 0), JobStatus::Running), 0);
    }
}
