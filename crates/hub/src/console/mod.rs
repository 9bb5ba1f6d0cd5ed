//! The web console (DESIGN.md "Web console"): server-rendered HTML pages on the API port at `/`.
//!
//! Pages are rendered with `maud` on the server; the only scripts are htmx 2 (vendored in
//! `assets/`, 0BSD, for live parts: running jobs, a job's progress, the schedule preview) and a
//! ten-line copy button. Everything is embedded in the binary (module `assets`); no build step.
//!
//! Who may do what is decided here, on the server, for every request (module `auth`): a page needs a
//! session of a console user (HttpOnly Secure SameSite=Strict cookie); every change (`POST`)
//! also needs the session's CSRF token (form field `csrf` or header `X-CSRF-Token`), else 403;
//! and the user's role: `viewer` reads, `operator` also runs jobs and restores, `admin` also
//! manages policies, agents, credentials and users. The REST API keeps its bearer tokens.
//!
//! Handlers here do what the REST handlers do: they call the same [`crate::engine::Engine`],
//! [`crate::jobs::Jobs`], [`crate::policies::Policies`], [`crate::agents::Agents`],
//! [`crate::credentials::Credentials`] and [`crate::users::Users`] methods, never the catalog
//! or the repository.

mod assets;
mod auth;
mod chart;
mod joblog;
mod manage;
mod pages;
mod restore;
mod view;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};

use crate::api::ApiState;
use crate::error::HubError;
use auth::{Flashes, LoginLimiter};
pub use joblog::{JobLogLayer, JobLogs, LogLine, job_logs};

/// What the console's handlers share: the API's services and the console's sessions.
#[derive(Debug, Clone)]
struct ConsoleState {
    /// The services the REST API calls (the console calls the same).
    api: ApiState,
    /// One-time messages for the next page of a session (sessions themselves are in the
    /// catalog, through [`crate::users::Users`]).
    flashes: Arc<Flashes>,
    /// Failed sign-ins per user name and per address.
    limiter: Arc<LoginLimiter>,
}

/// Largest form accepted.
const MAX_FORM: usize = 256 * 1024;

/// The console's routes (with their state applied), to merge into the API's router.
pub fn router<S: Clone + Send + Sync + 'static>(api: ApiState) -> Router<S> {
    let state = ConsoleState {
        api,
        flashes: Arc::new(Flashes::default()),
        limiter: Arc::new(LoginLimiter::default()),
    };
    Router::new()
        .route("/", get(pages::dashboard))
        .route("/login", get(auth::login_page).post(auth::login))
        .route("/logout", post(auth::logout))
        .route(assets::HTMX_PATH, get(assets::htmx))
        .route(assets::CSS_PATH, get(assets::css))
        .route(assets::JS_PATH, get(assets::js))
        .route("/live/running", get(pages::running_fragment))
        .route("/jobs", get(pages::jobs))
        .route("/jobs/{id}", get(pages::job))
        .route("/jobs/{id}/live", get(pages::job_fragment))
        .route("/jobs/{id}/cancel", post(pages::cancel_job))
        .route("/vms", get(pages::vms))
        .route("/vms/{name}", get(pages::vm))
        .route("/vms/{name}/backup", post(pages::backup_now))
        .route(
            "/policies",
            get(manage::policies).post(manage::create_policy),
        )
        .route("/policies/new", get(manage::new_policy))
        .route("/policies/preview", get(manage::schedule_preview))
        .route(
            "/policies/{name}",
            get(manage::edit_policy).post(manage::replace_policy),
        )
        .route("/policies/{name}/run", post(manage::run_policy))
        .route("/policies/{name}/delete", post(manage::delete_policy))
        .route("/restore", get(restore::points))
        .route("/restore/{id}", get(restore::point))
        .route("/restore/{id}/instant", post(restore::start_instant))
        .route("/restore/{id}/vm", post(restore::restore_vm))
        .route(
            "/restore/instant/{id}/discard",
            post(restore::discard_instant),
        )
        .route("/restore/{id}/disks/{key}/files", get(restore::browse))
        .route("/restore/{id}/disks/{key}/download", get(restore::download))
        .route("/agents", get(manage::agents).post(manage::create_agent))
        .route("/agents/{name}/delete", post(manage::delete_agent))
        .route(
            "/credentials",
            get(manage::credentials).post(manage::create_credential),
        )
        .route(
            "/credentials/{name}/delete",
            post(manage::delete_credential),
        )
        .route("/users", get(manage::users).post(manage::create_user))
        .route("/users/{name}/delete", post(manage::delete_user))
        .route("/users/{name}/role", post(manage::set_role))
        .route("/users/{name}/password", post(manage::set_password))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::csrf_guard,
        ))
        .route_layer(middleware::from_fn(security_headers))
        .route_layer(DefaultBodyLimit::max(MAX_FORM))
        .with_state(state)
}

/// Headers on every console answer: no framing, no sniffing, scripts and styles from the hub
/// only, pages never cached (assets set their own long cache).
async fn security_headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// Runs blocking service work (catalog reads, argon2) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, HubError> + Send + 'static,
) -> Result<T, HubError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| HubError::Worker)?
}
