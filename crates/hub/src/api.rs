//! The REST API (axum): typed input, one engine call, mapped result.
//!
//! Handlers never touch the catalog or the repository; they parse, call the
//! [`Engine`] (or the [`Jobs`], [`Agents`], [`Credentials`]), and answer JSON. Every error is
//! `{error, message}` with the status [`HubError::kind`] gives. Every call but `health` and
//! `agents/enroll` needs a bearer token: the admin token (`DATA/api.token`) may call
//! everything; an enrolled agent's token only the routes of [`AGENT_ROUTES`] (its own jobs and
//! the backup flow), everything else answers 403 `forbidden` to it.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Extension, FromRequest, Path, Query, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use sendense_types::api::error_codes;
use sendense_types::api::{SessionRequest, SnapshotRequest};
use sendense_types::jobs::PolicyRequest;
use sendense_types::{
    AgentName, ApiError, BackupId, BackupNowRequest, BackupQuery, CompleteBackupRequest,
    CreateAgentRequest, CredentialName, CredentialRequest, DiskKey, EnrollRequest,
    FailBackupRequest, FilesQuery, FinishJobRequest, Health, HeartbeatRequest, InstantId, JobId,
    JobQuery, NextJobQuery, PolicyName, PruneRequest, RegisterVmRequest, RestoreRequest,
    StartBackupRequest, Timestamp, UpdateBackupRequest, VmConfig, VmName,
};
use sendense_types::{CopyRequest, TargetName, TargetRequest};
use sendense_types::{CreateUserRequest, SetPasswordRequest, UserName};
use serde::de::DeserializeOwned;

use crate::agents::{Agents, Caller};
use crate::credentials::Credentials;
use crate::engine::{ContentShape, Engine};
use crate::error::{ErrorKind, HubError};
use crate::hub_jobs::HubJobs;
use crate::jobs::{BackupAccess, Jobs};
use crate::policies::Policies;
use crate::tier::Tier;
use crate::users::Users;

/// The routes (method, path) an agent's token may call besides `health`: its own job poll,
/// heartbeat and finish of jobs assigned to it (the handlers check the agent), what its
/// backup flow needs, and the restore exports of the point of a restore job it runs. On one
/// backup (`GET`, `vm_config`, `exports`) the handler checks that a job the agent holds works
/// on it ([`Jobs::check_backup_access`]), else 403.
pub const AGENT_ROUTES: &[(Method, &str)] = &[
    (Method::GET, "/api/v1/agents/{name}/jobs/next"),
    (Method::POST, "/api/v1/jobs/{id}/heartbeat"),
    (Method::POST, "/api/v1/jobs/{id}/finish"),
    (Method::POST, "/api/v1/vms"),
    (Method::POST, "/api/v1/backups"),
    (Method::GET, "/api/v1/backups"),
    (Method::GET, "/api/v1/backups/{id}"),
    (Method::GET, "/api/v1/backups/chain/{vm_name}"),
    (Method::POST, "/api/v1/backups/{id}/complete"),
    (Method::POST, "/api/v1/backups/{id}/fail"),
    (Method::POST, "/api/v1/backups/{id}/snapshot"),
    (Method::GET, "/api/v1/backups/{id}/snapshot"),
    (Method::PUT, "/api/v1/backups/{id}/disks/{key}/digests"),
    (Method::PUT, "/api/v1/backups/{id}/vm_config"),
    (Method::POST, "/api/v1/backups/{id}/exports"),
    (Method::DELETE, "/api/v1/backups/{id}/exports"),
];

/// Largest request body accepted.
const MAX_BODY: usize = 1 << 20;

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct ApiState {
    /// The backup engine.
    pub engine: Arc<Engine>,
    /// The credential store.
    pub credentials: Arc<Credentials>,
    /// The bearer token.
    pub token: Arc<str>,
    /// The agents.
    pub agents: Arc<Agents>,
    /// The job queue.
    pub jobs: Arc<Jobs>,
    /// The policies and their scheduler.
    pub policies: Arc<Policies>,
    /// The jobs the hub runs itself (prune, verify) and protection of points.
    pub hub_jobs: Arc<HubJobs>,
    /// The web console's users.
    pub users: Arc<Users>,
    /// The object tier: targets and copies.
    pub tier: Arc<Tier>,
}

/// The API's routes.
pub fn router(state: ApiState) -> Router {
    let authed = Router::new()
        .route("/api/v1/vms", post(register_vm).get(list_vms))
        .route("/api/v1/vms/{name}", get(get_vm))
        .route("/api/v1/backups", post(start_backup).get(list_backups))
        .route("/api/v1/backups/chain/{vm_name}", get(chain))
        .route(
            "/api/v1/backups/{id}",
            get(get_backup).delete(delete_backup).put(update_backup),
        )
        .route("/api/v1/backups/{id}/complete", post(complete_backup))
        .route("/api/v1/backups/{id}/fail", post(fail_backup))
        .route(
            "/api/v1/backups/{id}/disks/{key}/digests",
            axum::routing::put(put_digests).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route(
            "/api/v1/backups/{id}/disks/{key}/partitions",
            get(disk_partitions),
        )
        .route("/api/v1/backups/{id}/disks/{key}/files", get(list_files))
        .route(
            "/api/v1/backups/{id}/disks/{key}/files/content",
            get(file_content),
        )
        .route(
            "/api/v1/backups/{id}/snapshot",
            post(record_snapshot).get(backup_snapshot),
        )
        .route(
            "/api/v1/backups/{id}/exports",
            post(open_exports).delete(close_exports),
        )
        .route("/api/v1/backups/{id}/instant", post(start_instant))
        .route(
            "/api/v1/backups/{id}/vm_config",
            axum::routing::put(put_vm_config).layer(axum::extract::DefaultBodyLimit::max(
                sendense_types::vm_config::MAX_VM_CONFIG_BYTES,
            )),
        )
        .route("/api/v1/backups/{id}/restore", post(restore_vm))
        .route("/api/v1/instant", get(list_instants))
        .route(
            "/api/v1/instant/{id}",
            get(get_instant).delete(discard_instant),
        )
        .route(
            "/api/v1/credentials",
            post(put_credential).get(list_credentials),
        )
        .route(
            "/api/v1/credentials/{name}/session",
            post(credential_session),
        )
        .route("/api/v1/repository", get(repository))
        .route("/api/v1/metrics", get(metrics))
        .route("/api/v1/agents", post(create_agent).get(list_agents))
        .route("/api/v1/agents/{name}", get(get_agent))
        .route("/api/v1/agents/{name}/jobs/next", get(next_job))
        .route("/api/v1/jobs", get(list_jobs))
        .route("/api/v1/jobs/{id}", get(get_job))
        .route("/api/v1/jobs/{id}/heartbeat", post(heartbeat))
        .route("/api/v1/jobs/{id}/finish", post(finish_job))
        .route("/api/v1/jobs/{id}/cancel", post(cancel_job))
        .route("/api/v1/vms/{name}/backup", post(backup_now))
        .route("/api/v1/vms/{name}/prune", post(prune_vm))
        .route("/api/v1/backups/{id}/verify", post(verify_backup))
        .route("/api/v1/backups/{id}/copy", post(copy_backup))
        .route("/api/v1/targets", post(put_target).get(list_targets))
        .route("/api/v1/targets/{name}/import", post(import_target))
        .route("/api/v1/backups/{id}/evict", post(evict_backup))
        .route("/api/v1/backups/{id}/fetch", post(fetch_backup))
        .route("/api/v1/credentials/{name}/inventory", get(inventory))
        .route(
            "/api/v1/credentials/{name}/inventory/refresh",
            post(refresh_inventory),
        )
        .route("/api/v1/policies", post(create_policy).get(list_policies))
        .route(
            "/api/v1/policies/{name}",
            get(get_policy).put(replace_policy).delete(delete_policy),
        )
        .route("/api/v1/policies/{name}/run", post(run_policy))
        .route("/api/v1/openapi.json", get(openapi))
        // Web console users (admin token only: agents' tokens never reach these).
        .route("/api/v1/users", post(create_user).get(list_users))
        .route("/api/v1/users/{name}", get(get_user).delete(delete_user))
        .route(
            "/api/v1/users/{name}/password",
            axum::routing::put(set_user_password),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/api/v1/health", get(health))
        .route("/api/v1/agents/enroll", post(enroll_agent))
        .merge(authed)
        .merge(crate::console::router(state.clone()))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// An error answer.
#[derive(Debug)]
pub struct ApiFailure(StatusCode, ApiError);

impl ApiFailure {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self(status, ApiError::new(code, message))
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error_codes::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

impl From<HubError> for ApiFailure {
    fn from(e: HubError) -> Self {
        let message = sendense_io::error_chain(&e);
        let (status, code) = match e.kind() {
            ErrorKind::BadRequest => (StatusCode::BAD_REQUEST, error_codes::BAD_REQUEST),
            ErrorKind::NotFound => (StatusCode::NOT_FOUND, error_codes::NOT_FOUND),
            ErrorKind::Conflict => (StatusCode::CONFLICT, error_codes::CONFLICT),
            ErrorKind::Unauthorized => (StatusCode::UNAUTHORIZED, error_codes::UNAUTHORIZED),
            ErrorKind::Forbidden => (StatusCode::FORBIDDEN, error_codes::FORBIDDEN),
            ErrorKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, error_codes::UNAVAILABLE),
            ErrorKind::InsufficientStorage => {
                tracing::warn!(error = %message, "refused: repository space");
                (
                    StatusCode::INSUFFICIENT_STORAGE,
                    error_codes::INSUFFICIENT_STORAGE,
                )
            }
            ErrorKind::Unprocessable => {
                (StatusCode::UNPROCESSABLE_ENTITY, error_codes::UNPROCESSABLE)
            }
            ErrorKind::RangeNotSatisfiable => (
                StatusCode::RANGE_NOT_SATISFIABLE,
                error_codes::RANGE_NOT_SATISFIABLE,
            ),
            ErrorKind::Upstream => {
                tracing::warn!(error = %message, "vCenter session for a client refused");
                (StatusCode::BAD_GATEWAY, error_codes::BAD_GATEWAY)
            }
            _ => {
                tracing::error!(error = %message, "request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, error_codes::INTERNAL)
            }
        };
        Self::new(status, code, message)
    }
}

type ApiResult<T> = Result<T, ApiFailure>;

/// A JSON body whose every rejection is a JSON 400 naming the problem.
#[derive(Debug)]
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiFailure;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Self(v)),
            Err(rejection) => Err(json_rejection(&rejection)),
        }
    }
}

/// A JSON body that may be left out (no bytes: `T::default()`), for calls whose every field is
/// optional; a body given must be valid JSON of `T` (400 otherwise).
#[derive(Debug)]
pub struct OptionalBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalBody<T> {
    type Rejection = ApiFailure;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| {
                ApiFailure::bad_request(format!("Cannot read the body: {}", e.body_text()))
            })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(T::default()));
        }
        Json::<T>::from_bytes(&bytes)
            .map(|Json(v)| Self(v))
            .map_err(|e| json_rejection(&e))
    }
}

fn json_rejection(r: &JsonRejection) -> ApiFailure {
    match r {
        JsonRejection::MissingJsonContentType(_) => {
            ApiFailure::bad_request("Send the body as JSON with Content-Type: application/json")
        }
        other => ApiFailure::bad_request(format!("Malformed request body: {}", other.body_text())),
    }
}

fn parse<T: std::str::FromStr>(what: &str, raw: &str) -> ApiResult<T>
where
    T::Err: std::fmt::Display,
{
    raw.parse()
        .map_err(|e| ApiFailure::bad_request(format!("Invalid {what} {raw:?}: {e}")))
}

/// Runs blocking engine work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, HubError> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| HubError::Worker)?
        .map_err(Into::into)
}

async fn require_token(State(state): State<ApiState>, mut req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned());
    let Some(given) = given else {
        return ApiFailure::new(
            StatusCode::UNAUTHORIZED,
            error_codes::UNAUTHORIZED,
            "Missing 'Authorization: Bearer <token>' header (the token is in the hub's DATA/api.token)",
        )
        .into_response();
    };
    let caller = if crate::token::matches(&state.token, &given) {
        Caller::Admin
    } else {
        let agents = Arc::clone(&state.agents);
        match blocking(move || agents.authenticate(&given)).await {
            Ok(Some(agent)) => Caller::Agent(agent),
            Ok(None) => {
                return ApiFailure::new(
                    StatusCode::UNAUTHORIZED,
                    error_codes::UNAUTHORIZED,
                    "Token rejected: use the token in the hub's DATA/api.token (or an enrolled agent's token)",
                )
                .into_response();
            }
            Err(failure) => return failure.into_response(),
        }
    };
    if let Caller::Agent(agent) = &caller {
        let path = req.uri().path();
        let allowed = AGENT_ROUTES
            .iter()
            .any(|(m, route)| m == req.method() && route_matches(route, path));
        if !allowed {
            return ApiFailure::new(
                StatusCode::FORBIDDEN,
                error_codes::FORBIDDEN,
                format!(
                    "Agent {agent}'s token may call only the agent routes (its jobs and the backup flow); {} {} needs the admin token (DATA/api.token)",
                    req.method(),
                    path
                ),
            )
            .into_response();
        }
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// Whether `path` is an instance of the route pattern `route` (`{param}` stands for one
/// non-empty segment).
fn route_matches(route: &str, path: &str) -> bool {
    let mut pattern = route.split('/');
    let mut given = path.split('/');
    loop {
        match (pattern.next(), given.next()) {
            (None, None) => return true,
            (Some(p), Some(g)) if p.starts_with('{') && p.ends_with('}') && !g.is_empty() => {}
            (Some(p), Some(g)) if p == g => {}
            _ => return false,
        }
    }
}

async fn not_found() -> ApiFailure {
    ApiFailure::new(
        StatusCode::NOT_FOUND,
        error_codes::NOT_FOUND,
        "No such API endpoint",
    )
}

async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

async fn register_vm(
    State(s): State<ApiState>,
    Body(req): Body<RegisterVmRequest>,
) -> ApiResult<impl IntoResponse> {
    let vm = blocking(move || s.engine.register_vm(&req)).await?;
    Ok((StatusCode::CREATED, Json(vm)))
}

async fn list_vms(State(s): State<ApiState>) -> ApiResult<impl IntoResponse> {
    Ok(Json(blocking(move || s.engine.vms()).await?))
}

async fn get_vm(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let name: VmName = parse("VM name", &name)?;
    Ok(Json(blocking(move || s.engine.vm(&name)).await?))
}

async fn start_backup(
    State(s): State<ApiState>,
    Body(req): Body<StartBackupRequest>,
) -> ApiResult<impl IntoResponse> {
    let backup = blocking(move || s.engine.start_backup(&req)).await?;
    Ok((StatusCode::CREATED, Json(backup)))
}

async fn list_backups(
    State(s): State<ApiState>,
    query: Result<Query<BackupQuery>, QueryRejection>,
) -> ApiResult<impl IntoResponse> {
    let Query(query) =
        query.map_err(|e| ApiFailure::bad_request(format!("Invalid query: {}", e.body_text())))?;
    Ok(Json(blocking(move || s.engine.backups(&query)).await?))
}

async fn get_backup(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    check_access(&s, caller, &id, BackupAccess::Read).await?;
    let id: BackupId = parse("backup id", &id)?;
    Ok(Json(blocking(move || s.engine.backup(&id)).await?))
}

async fn delete_backup(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let id: BackupId = parse("backup id", &id)?;
    Ok(Json(blocking(move || s.engine.delete_backup(&id)).await?))
}

/// `PUT /api/v1/backups/{id}` `{protected}`: answers the backup.
async fn update_backup(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    Body(req): Body<UpdateBackupRequest>,
) -> ApiResult<impl IntoResponse> {
    let id: BackupId = parse("backup id", &id)?;
    Ok(Json(
        blocking(move || s.hub_jobs.update_backup(&id, req)).await?,
    ))
}

/// `POST /api/v1/vms/{name}/prune` `{retention, dry_run}`: 200 with what would be kept and
/// removed (dry run, or nothing to remove), 202 when a prune job was queued (`job_id`).
async fn prune_vm(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    Body(req): Body<PruneRequest>,
) -> ApiResult<impl IntoResponse> {
    let vm: VmName = parse("VM name", &name)?;
    let answer = blocking(move || s.hub_jobs.prune(&vm, &req)).await?;
    let status = if answer.job_id.is_some() {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(answer)))
}

/// `POST /api/v1/backups/{id}/verify`: 202 `{job_id}` of the queued `verify` job.
async fn verify_backup(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let id: BackupId = parse("backup id", &id)?;
    let accepted = blocking(move || s.hub_jobs.queue_verify(&id)).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

async fn copy_backup(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    Body(req): Body<CopyRequest>,
) -> ApiResult<impl IntoResponse> {
    let id: BackupId = parse("backup id", &id)?;
    let accepted = blocking(move || s.hub_jobs.queue_copy(&id, &req.target, None)).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

async fn put_target(
    State(s): State<ApiState>,
    Body(req): Body<TargetRequest>,
) -> ApiResult<impl IntoResponse> {
    let target = blocking(move || s.tier.put_target(&req)).await?;
    Ok((StatusCode::CREATED, Json(target)))
}

async fn list_targets(State(s): State<ApiState>) -> ApiResult<impl IntoResponse> {
    Ok(Json(blocking(move || s.tier.targets()).await?))
}

async fn import_target(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let name: TargetName = parse("target name", &name)?;
    let imported = blocking(move || s.tier.import(&name)).await?;
    Ok(Json(serde_json::json!({ "imported": imported })))
}

async fn evict_backup(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let id: BackupId = parse("backup id", &id)?;
    Ok(Json(
        blocking(move || {
            s.tier.evict(&id)?;
            s.engine.backup(&id)
        })
        .await?,
    ))
}

async fn fetch_backup(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let id: BackupId = parse("backup id", &id)?;
    let fetched = blocking(move || s.tier.fetch(&id)).await?;
    Ok(Json(serde_json::json!({ "fetched": fetched })))
}

async fn complete_backup(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    Body(req): Body<CompleteBackupRequest>,
) -> ApiResult<impl IntoResponse> {
    let id: BackupId = parse("backup id", &id)?;
    Ok(Json(s.engine.complete_backup(&id, &req).await?))
}

/// The body is bounded by the largest digest file of the disk's capacity
/// ([`sendense_digest::max_encoded_len`]), not by the API's usual limit. A body over it is
/// answered at once, unread, with `Connection: close` (the client must not reuse a
/// connection whose request body was left unread).
async fn put_digests(
    State(s): State<ApiState>,
    Path((id, key)): Path<(String, String)>,
    body: axum::body::Body,
) -> ApiResult<Response> {
    use http_body_util::BodyExt;
    let id: BackupId = parse("backup id", &id)?;
    let key: DiskKey = parse("disk key", &key)?;
    let engine = Arc::clone(&s.engine);
    let asked = id.clone();
    let limit = blocking(move || engine.digests_limit(&asked, key)).await?;
    let collected =
        http_body_util::Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX))
            .collect()
            .await;
    let bytes = match collected {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            let mut resp = ApiFailure::from(HubError::DigestsTooLarge {
                backup_id: id,
                disk_key: key,
                limit,
            })
            .into_response();
            resp.headers_mut().insert(
                header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            return Ok(resp);
        }
        Err(e) => {
            return Err(ApiFailure::bad_request(format!(
                "Cannot read the body: {e}"
            )));
        }
    };
    s.engine.store_digests(&id, key, bytes).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn fail_backup(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    Body(req): Body<FailBackupRequest>,
) -> ApiResult<impl IntoResponse> {
    let id: BackupId = parse("backup id", &id)?;
    Ok(Json(s.engine.fail_backup(&id, req.reason()).await?))
}

async fn repository(State(s): State<ApiState>) -> ApiResult<impl IntoResponse> {
    Ok(Json(blocking(move || s.engine.repository()).await?))
}

/// Prometheus text: what [`crate::metrics::gather`] collects, rendered.
async fn metrics(State(s): State<ApiState>) -> ApiResult<impl IntoResponse> {
    let snapshot = blocking(move || crate::metrics::gather(&s.engine, &s.jobs, &s.agents)).await?;
    Ok((
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        snapshot.render(),
    ))
}

async fn record_snapshot(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    Body(req): Body<SnapshotRequest>,
) -> ApiResult<impl IntoResponse> {
    let id: BackupId = parse("backup id", &id)?;
    Ok(Json(
        blocking(move || s.engine.record_snapshot(&id, req.snapshot_moref())).await?,
    ))
}

async fn backup_snapshot(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let id: BackupId = parse("backup id", &id)?;
    Ok(Json(blocking(move || s.engine.backup_snapshot(&id)).await?))
}

async fn chain(State(s): State<ApiState>, Path(vm): Path<String>) -> ApiResult<impl IntoResponse> {
    let vm: VmName = parse("VM name", &vm)?;
    Ok(Json(blocking(move || s.engine.chain(&vm)).await?))
}

async fn open_exports(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    check_access(&s, caller, &id, BackupAccess::Exports).await?;
    let id: BackupId = parse("backup id", &id)?;
    Ok(Json(blocking(move || s.engine.open_restore(&id)).await?))
}

async fn disk_partitions(
    State(s): State<ApiState>,
    Path((id, key)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    let id: BackupId = parse("backup id", &id)?;
    let key: DiskKey = parse("disk key", &key)?;
    Ok(Json(blocking(move || s.engine.partitions(&id, key)).await?))
}

async fn list_files(
    State(s): State<ApiState>,
    Path((id, key)): Path<(String, String)>,
    query: Result<Query<FilesQuery>, QueryRejection>,
) -> ApiResult<impl IntoResponse> {
    let id: BackupId = parse("backup id", &id)?;
    let key: DiskKey = parse("disk key", &key)?;
    let Query(query) = query_or_400(query)?;
    Ok(Json(
        blocking(move || s.engine.list_files(&id, key, &query)).await?,
    ))
}

/// A file (with `Range` support) or a folder as a tar stream.
async fn file_content(
    State(s): State<ApiState>,
    Path((id, key)): Path<(String, String)>,
    query: Result<Query<FilesQuery>, QueryRejection>,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    let id: BackupId = parse("backup id", &id)?;
    let key: DiskKey = parse("disk key", &key)?;
    let Query(query) = query_or_400(query)?;
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let content = match s.engine.file_content(&id, key, &query, range).await {
        Ok(content) => content,
        Err(HubError::RangeNotSatisfiable { size }) => {
            let failure = ApiFailure::from(HubError::RangeNotSatisfiable { size });
            let mut response = failure.into_response();
            if let Ok(v) = header::HeaderValue::from_str(&format!("bytes */{size}")) {
                response.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(response);
        }
        Err(e) => return Err(e.into()),
    };
    Ok(content_response(content))
}

/// The answer carrying a file (whole or a range) or a folder's tar stream; the web console's
/// download answers the same.
pub(crate) fn content_response(content: crate::engine::FileContent) -> Response {
    let (status, content_type) = match content.shape {
        ContentShape::Partial { .. } => (StatusCode::PARTIAL_CONTENT, "application/octet-stream"),
        ContentShape::Whole { .. } => (StatusCode::OK, "application/octet-stream"),
        ContentShape::Tar => (StatusCode::OK, "application/x-tar"),
    };
    let mut response = Response::new(axum::body::Body::new(content.body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    let mut put = |name, value: String| {
        if let Ok(v) = header::HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    match content.shape {
        ContentShape::Whole { size } => {
            put(header::CONTENT_LENGTH, size.to_string());
            put(header::ACCEPT_RANGES, "bytes".to_owned());
        }
        ContentShape::Partial { start, end, size } => {
            put(header::CONTENT_LENGTH, (end - start + 1).to_string());
            put(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}"));
            put(header::ACCEPT_RANGES, "bytes".to_owned());
        }
        ContentShape::Tar => {}
    }
    put(
        header::CONTENT_DISPOSITION,
        content_disposition(&content.name),
    );
    response
}

/// `attachment` with the name in RFC 6266 form: an ASCII fallback and the UTF-8 name.
fn content_disposition(name: &str) -> String {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' && c != '%' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

async fn close_exports(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    check_access(&s, caller, &id, BackupAccess::Exports).await?;
    let id: BackupId = parse("backup id", &id)?;
    s.engine.close_restore(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Refuses (403) an agent whose held jobs do not work on backup `id` ([`Jobs::check_backup_access`]);
/// the admin passes.
async fn check_access(
    s: &ApiState,
    caller: Caller,
    id: &str,
    access: BackupAccess,
) -> ApiResult<()> {
    if caller == Caller::Admin {
        return Ok(());
    }
    let (jobs, id) = (Arc::clone(&s.jobs), id.to_owned());
    blocking(move || jobs.check_backup_access(&caller, &id, access)).await
}

/// `PUT /api/v1/backups/{id}/vm_config`: stores the VM configuration captured at that backup
/// (at most [`sendense_types::vm_config::MAX_VM_CONFIG_BYTES`], validated); answers the backup.
async fn put_vm_config(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<impl IntoResponse> {
    // Who may store it is checked before the body is looked at: a stranger learns nothing.
    check_access(&s, caller, &id, BackupAccess::Write).await?;
    let id: BackupId = parse("backup id", &id)?;
    let bytes = body
        .map_err(|e| ApiFailure::bad_request(format!("Cannot read the body: {}", e.body_text())))?;
    let Json(config) = Json::<VmConfig>::from_bytes(&bytes).map_err(|e| json_rejection(&e))?;
    Ok(Json(
        blocking(move || s.engine.put_vm_config(&id, &config)).await?,
    ))
}

/// `POST /api/v1/backups/{id}/restore`: 202 `{job_id}` of the queued `restore` job.
async fn restore_vm(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    Body(req): Body<RestoreRequest>,
) -> ApiResult<impl IntoResponse> {
    let id: BackupId = parse("backup id", &id)?;
    let accepted = blocking(move || s.jobs.queue_restore(&id, req)).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

async fn start_instant(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let id: BackupId = parse("backup id", &id)?;
    let instant = blocking(move || s.engine.start_instant(&id)).await?;
    Ok((StatusCode::CREATED, Json(instant)))
}

async fn list_instants(State(s): State<ApiState>) -> ApiResult<impl IntoResponse> {
    Ok(Json(blocking(move || s.engine.instants()).await?))
}

async fn get_instant(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let id: InstantId = parse("instant recovery id", &id)?;
    Ok(Json(blocking(move || s.engine.instant(&id)).await?))
}

async fn discard_instant(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let id: InstantId = parse("instant recovery id", &id)?;
    Ok(Json(s.engine.discard_instant(&id).await?))
}

async fn put_credential(
    State(s): State<ApiState>,
    Body(req): Body<CredentialRequest>,
) -> ApiResult<impl IntoResponse> {
    let credential = blocking(move || s.credentials.put(&req)).await?;
    Ok((StatusCode::CREATED, Json(credential)))
}

async fn list_credentials(State(s): State<ApiState>) -> ApiResult<impl IntoResponse> {
    Ok(Json(blocking(move || s.credentials.list()).await?))
}

/// Logs in to the credential's vCenter for the client, checking its certificate as the
/// credential's stored trust choice says; answers the session, never the password. The body
/// is `{}`: one naming `ca_pem` or `insecure` was refused (400) when parsed.
async fn credential_session(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    Body(SessionRequest {}): Body<SessionRequest>,
) -> ApiResult<impl IntoResponse> {
    let name: CredentialName = parse("credential name", &name)?;
    let session = Arc::clone(&s.credentials).open_session(name).await?;
    Ok(Json(session))
}

async fn create_agent(
    State(s): State<ApiState>,
    Body(req): Body<CreateAgentRequest>,
) -> ApiResult<impl IntoResponse> {
    let enrollment = blocking(move || s.agents.create(&req)).await?;
    Ok((StatusCode::CREATED, Json(enrollment)))
}

async fn enroll_agent(
    State(s): State<ApiState>,
    Body(req): Body<EnrollRequest>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(blocking(move || s.agents.enroll(&req)).await?))
}

async fn list_agents(State(s): State<ApiState>) -> ApiResult<impl IntoResponse> {
    Ok(Json(blocking(move || s.agents.list()).await?))
}

async fn get_agent(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let name: AgentName = parse("agent name", &name)?;
    Ok(Json(blocking(move || s.agents.agent(&name)).await?))
}

/// The long poll: 200 with a job, or 204 after `wait` seconds without one.
async fn next_job(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    query: Result<Query<NextJobQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let name: AgentName = parse("agent name", &name)?;
    let Query(query) = query_or_400(query)?;
    Ok(match s.jobs.next_job(&caller, &name, query).await? {
        Some(job) => Json(job).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

async fn list_jobs(
    State(s): State<ApiState>,
    query: Result<Query<JobQuery>, QueryRejection>,
) -> ApiResult<impl IntoResponse> {
    let Query(query) = query_or_400(query)?;
    Ok(Json(blocking(move || s.jobs.list(&query)).await?))
}

async fn get_job(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let id: JobId = parse("job id", &id)?;
    Ok(Json(blocking(move || s.jobs.job(&id)).await?))
}

async fn heartbeat(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    OptionalBody(req): OptionalBody<HeartbeatRequest>,
) -> ApiResult<impl IntoResponse> {
    let id: JobId = parse("job id", &id)?;
    Ok(Json(
        blocking(move || s.jobs.heartbeat(&caller, &id, &req, Timestamp::now())).await?,
    ))
}

async fn finish_job(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Body(req): Body<FinishJobRequest>,
) -> ApiResult<impl IntoResponse> {
    let id: JobId = parse("job id", &id)?;
    Ok(Json(s.jobs.finish(caller, id, req).await?))
}

async fn cancel_job(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let id: JobId = parse("job id", &id)?;
    Ok(Json(blocking(move || s.jobs.cancel(&id)).await?))
}

async fn create_policy(
    State(s): State<ApiState>,
    Body(req): Body<PolicyRequest>,
) -> ApiResult<impl IntoResponse> {
    let policy = blocking(move || s.policies.create(&req)).await?;
    Ok((StatusCode::CREATED, Json(policy)))
}

async fn list_policies(State(s): State<ApiState>) -> ApiResult<impl IntoResponse> {
    Ok(Json(blocking(move || s.policies.list()).await?))
}

async fn get_policy(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let name: PolicyName = parse("policy name", &name)?;
    Ok(Json(blocking(move || s.policies.get(&name)).await?))
}

async fn replace_policy(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    Body(req): Body<PolicyRequest>,
) -> ApiResult<impl IntoResponse> {
    let name: PolicyName = parse("policy name", &name)?;
    Ok(Json(
        blocking(move || s.policies.replace(&name, &req)).await?,
    ))
}

async fn delete_policy(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let name: PolicyName = parse("policy name", &name)?;
    Ok(Json(blocking(move || s.policies.delete(&name)).await?))
}

async fn run_policy(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let name: PolicyName = parse("policy name", &name)?;
    let run = blocking(move || s.policies.run_now(&name)).await?;
    Ok((StatusCode::ACCEPTED, Json(run)))
}

async fn backup_now(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    OptionalBody(req): OptionalBody<BackupNowRequest>,
) -> ApiResult<impl IntoResponse> {
    let vm: VmName = parse("VM name", &name)?;
    let accepted = blocking(move || s.jobs.backup_now(vm, req)).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

async fn inventory(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let name: CredentialName = parse("credential name", &name)?;
    Ok(Json(blocking(move || s.jobs.inventory(&name)).await?))
}

async fn refresh_inventory(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let name: CredentialName = parse("credential name", &name)?;
    let accepted = blocking(move || s.jobs.refresh_inventory(name)).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

async fn create_user(
    State(s): State<ApiState>,
    Body(req): Body<CreateUserRequest>,
) -> ApiResult<impl IntoResponse> {
    let user = blocking(move || s.users.create(&req)).await?;
    Ok((StatusCode::CREATED, Json(user)))
}

async fn list_users(State(s): State<ApiState>) -> ApiResult<impl IntoResponse> {
    Ok(Json(blocking(move || s.users.list()).await?))
}

async fn get_user(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let name: UserName = parse("user name", &name)?;
    Ok(Json(blocking(move || s.users.user(&name)).await?))
}

async fn delete_user(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let name: UserName = parse("user name", &name)?;
    Ok(Json(blocking(move || s.users.delete(&name)).await?))
}

async fn set_user_password(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    Body(req): Body<SetPasswordRequest>,
) -> ApiResult<impl IntoResponse> {
    let name: UserName = parse("user name", &name)?;
    Ok(Json(
        blocking(move || s.users.set_password(&name, &req)).await?,
    ))
}

fn query_or_400<T>(query: Result<Query<T>, QueryRejection>) -> ApiResult<Query<T>> {
    query.map_err(|e| ApiFailure::bad_request(format!("Invalid query: {}", e.body_text())))
}

async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::DOCUMENT,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_matches_params_one_segment_each() {
        assert_eq!(
            [
                route_matches(
                    "/api/v1/jobs/{id}/heartbeat",
                    "/api/v1/jobs/job-1/heartbeat"
                ),
                route_matches("/api/v1/jobs/{id}/heartbeat", "/api/v1/jobs/job-1/cancel"),
                route_matches("/api/v1/backups/{id}", "/api/v1/backups/a/exports"),
                route_matches("/api/v1/backups/{id}", "/api/v1/backups/"),
                route_matches("/api/v1/vms", "/api/v1/vms"),
            ],
            [true, false, false, false, true]
        );
    }
}
