//! The hub's REST API, as the client uses it: HTTPS with the hub's CA only, a bearer token
//! from a file, and `sendense-types` bodies.
//!
//! Failures name the fix: a hub that does not answer ("is sendense-hub serve running?"), a
//! certificate that does not verify ("check --ca"), a refused token ("check --token-file"), or
//! the hub's own `{error, message}` answer with its HTTP status.
//!
//! The same rustls configuration (ring provider, the hub's CA as the only root) is used for the
//! NBD connections, with the host of the hub URL as the name to verify.

use std::error::Error as StdError;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use reqwest::Method;
use reqwest::{StatusCode, Url};
use sendense_types::api::{BackupSnapshot, SessionRequest, SnapshotRequest, VcenterSession};
use sendense_types::jobs::{
    AgentJob, EnrollRequest, EnrollResponse, FinishJobRequest, HeartbeatRequest, HeartbeatResponse,
    NextJobQuery,
};
use sendense_types::{
    AgentName, ApiError, Backup, BackupId, BackupQuery, Chain, CompleteBackupRequest, Credential,
    CredentialName, CredentialRequest, DiskKey, DiskPartitions, FailBackupRequest, FileListing,
    FilesQuery, Health, InstantId, InstantRecovery, JobAccepted, JobId, RegisterVmRequest,
    RestoreExports, RestoreRequest, StartBackupRequest, Vm, VmConfig, VmName,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::debug;

use crate::error::ClientError;
use sendense_transfer::nbd::NbdTls;

/// Longest error body kept in an error message.
const MAX_ERROR_BODY: usize = 512;

/// How much longer than its `wait` a long poll may take before it counts as failed.
pub const LONG_POLL_MARGIN: Duration = Duration::from_secs(30);

/// Limit of a whole download of a restore point's file or folder (the hub cuts a stalled one
/// itself after 60 s).
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// Limit of a heartbeat or finish call.
const SHORT_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the hub is and how to trust it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubOptions {
    /// Base URL, `https://HOST:PORT`.
    pub url: String,
    /// The hub's CA certificate (PEM), `DATA/tls/ca-cert.pem`.
    pub ca_file: PathBuf,
    /// The file holding the API token, `DATA/api.token`.
    pub token_file: PathBuf,
    /// A client certificate folder in QEMU's layout (`ca-cert.pem`, `client-cert.pem`,
    /// `client-key.pem`, as `sendense-hub cert issue` writes it): the client certificate is
    /// presented on every NBD connection. `None`: no client certificate (a hub run with
    /// `--nbd-client-certs optional`).
    pub tls_dir: Option<PathBuf>,
}

impl HubOptions {
    /// Options trusting the CA of the client folder `dir` (its `ca-cert.pem`, for HTTPS and
    /// NBD) and presenting its client certificate on NBD.
    #[must_use]
    pub fn with_tls_dir(url: &str, dir: &Path, token_file: &Path) -> Self {
        Self {
            url: url.to_owned(),
            ca_file: dir.join(sendense_nbd::tls::CA_CERT),
            token_file: token_file.to_owned(),
            tls_dir: Some(dir.to_owned()),
        }
    }
}

/// A client of one hub's REST API.
#[derive(Clone)]
pub struct HubClient {
    http: reqwest::Client,
    base: Url,
    host: String,
    token: String,
    /// For NBD: trusts the hub's CA and presents the client certificate, if any.
    nbd_tls: Arc<rustls::ClientConfig>,
    /// For the API: trusts the hub's CA (file pieces over connections of their own).
    api_tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for HubClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubClient")
            .field("base", &self.base.as_str())
            .field("token", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl HubClient {
    /// Reads the CA and token files and prepares the client (no request is made).
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] for a URL that is not `https://HOST[:PORT]`;
    /// [`ClientError::File`], [`ClientError::NoCaCertificate`], [`ClientError::EmptyToken`]
    /// for unusable files.
    pub fn new(options: &HubOptions) -> Result<Self, ClientError> {
        let token = read_token(&options.token_file)?;
        Self::build(
            &options.url,
            &options.ca_file,
            options.tls_dir.as_deref(),
            token,
        )
    }

    /// A client without a bearer token, for the one call that needs none
    /// (`POST /api/v1/agents/enroll`): trusts only the CA in `ca_file`.
    ///
    /// # Errors
    /// As [`Self::new`].
    pub fn anonymous(url: &str, ca_file: &Path) -> Result<Self, ClientError> {
        Self::build(url, ca_file, None, String::new())
    }

    fn build(
        url: &str,
        ca_file: &Path,
        tls_dir: Option<&Path>,
        token: String,
    ) -> Result<Self, ClientError> {
        let base = parse_hub_url(url)?;
        let host = base
            .host_str()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned())
            .ok_or_else(|| bad_url(url, "has no host"))?;
        let tls = tls_config(ca_file)?;
        let nbd_tls = match tls_dir {
            Some(dir) => client_cert_config(dir)?,
            None => Arc::clone(&tls),
        };
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(600))
            .build()
            .map_err(|e| ClientError::InvalidArgument {
                what: "HTTP client",
                reason: e.to_string(),
            })?;
        Ok(Self {
            http,
            base,
            host,
            token,
            nbd_tls,
            api_tls: tls,
        })
    }

    /// What a file piece's own connection needs (see `crate::range_get`).
    pub(crate) fn range_target(&self) -> crate::range_get::Target {
        let port = self.base.port_or_known_default().unwrap_or(443);
        crate::range_get::Target {
            host: self.host.clone(),
            port,
            authority: format!("{}:{port}", self.base.host_str().unwrap_or(&self.host)),
            token: self.token.clone(),
            tls: Arc::clone(&self.api_tls),
        }
    }

    /// The hub's base URL.
    #[must_use]
    pub fn url(&self) -> &Url {
        &self.base
    }

    /// TLS for NBD connections to this hub: its CA, the client certificate (with a
    /// [`HubOptions::tls_dir`]), and its host name to verify.
    #[must_use]
    pub fn nbd_tls(&self) -> NbdTls {
        NbdTls {
            config: Arc::clone(&self.nbd_tls),
            server_name: self.host.clone(),
        }
    }

    /// `GET /api/v1/health`.
    ///
    /// # Errors
    /// See the module documentation.
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.call(Method::GET, "/api/v1/health", None::<&()>).await
    }

    /// `POST /api/v1/vms`: registers or updates a VM and its disks.
    ///
    /// # Errors
    /// See the module documentation.
    pub async fn register_vm(&self, request: &RegisterVmRequest) -> Result<Vm, ClientError> {
        self.call(Method::POST, "/api/v1/vms", Some(request)).await
    }

    /// `POST /api/v1/backups`: starts a backup; the answer lists each disk's write export.
    ///
    /// # Errors
    /// See the module documentation (409: a backup already runs, or no full to build on).
    pub async fn start_backup(&self, request: &StartBackupRequest) -> Result<Backup, ClientError> {
        self.call(Method::POST, "/api/v1/backups", Some(request))
            .await
    }

    /// `GET /api/v1/backups/{id}`.
    ///
    /// # Errors
    /// See the module documentation.
    pub async fn backup(&self, id: &BackupId) -> Result<Backup, ClientError> {
        self.call(Method::GET, &format!("/api/v1/backups/{id}"), None::<&()>)
            .await
    }

    /// `POST /api/v1/backups/{id}/complete`. The answer's body is not interpreted; read the
    /// backup with [`Self::backup`].
    ///
    /// # Errors
    /// See the module documentation.
    pub async fn complete_backup(
        &self,
        id: &BackupId,
        request: &CompleteBackupRequest,
    ) -> Result<(), ClientError> {
        let path = format!("/api/v1/backups/{id}/complete");
        self.send(Method::POST, &path, Some(request))
            .await
            .map(drop)
    }

    /// `PUT /api/v1/backups/{id}/disks/{key}/digests`: the encoded digests
    /// (`sendense_digest::LayerDigests::encode`) of one disk of a running backup, taken from
    /// the bytes read at the source; the hub keeps them beside the image once the backup
    /// completes.
    ///
    /// # Errors
    /// See the module documentation; a hub older than the route answers 404 `not_found`
    /// ([`ClientError::is_missing_route`]).
    pub async fn put_digests(
        &self,
        id: &BackupId,
        disk_key: DiskKey,
        encoded: Vec<u8>,
    ) -> Result<(), ClientError> {
        let path = format!("/api/v1/backups/{id}/disks/{disk_key}/digests");
        let request = self
            .request_builder(Method::PUT, &path)?
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(encoded);
        self.exchange("PUT", &path, request).await.map(drop)
    }

    /// `PUT /api/v1/backups/{id}/vm_config`: the VM's configuration captured from the
    /// backup's snapshot, stored with the backup (a whole-VM restore rebuilds the VM from it).
    ///
    /// # Errors
    /// See the module documentation; a hub older than the route answers 404 `not_found`
    /// ([`ClientError::is_missing_route`]).
    pub async fn put_vm_config(&self, id: &BackupId, config: &VmConfig) -> Result<(), ClientError> {
        let path = format!("/api/v1/backups/{id}/vm_config");
        self.send(Method::PUT, &path, Some(config)).await.map(drop)
    }

    /// `POST /api/v1/backups/{id}/restore`: queues a `restore` job (a new VM in vCenter, or the
    /// point's disks into an existing VM), run by the agent of the vCenter's credential.
    ///
    /// # Errors
    /// See the module documentation.
    pub async fn start_vm_restore(
        &self,
        id: &BackupId,
        request: &RestoreRequest,
    ) -> Result<JobAccepted, ClientError> {
        let path = format!("/api/v1/backups/{id}/restore");
        self.call(Method::POST, &path, Some(request)).await
    }

    /// `GET /api/v1/jobs/{id}`: one job, with its progress.
    ///
    /// # Errors
    /// See the module documentation.
    pub async fn job(&self, id: &JobId) -> Result<sendense_types::Job, ClientError> {
        let path = format!("/api/v1/jobs/{id}");
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// `POST /api/v1/backups/{id}/fail`.
    ///
    /// # Errors
    /// See the module documentation.
    pub async fn fail_backup(
        &self,
        id: &BackupId,
        request: &FailBackupRequest,
    ) -> Result<(), ClientError> {
        let path = format!("/api/v1/backups/{id}/fail");
        self.send(Method::POST, &path, Some(request))
            .await
            .map(drop)
    }

    /// `POST /api/v1/backups/{id}/snapshot`: records the vCenter snapshot a running backup
    /// reads from.
    ///
    /// # Errors
    /// See the module documentation.
    pub async fn record_snapshot(
        &self,
        id: &BackupId,
        request: &SnapshotRequest,
    ) -> Result<BackupSnapshot, ClientError> {
        let path = format!("/api/v1/backups/{id}/snapshot");
        self.call(Method::POST, &path, Some(request)).await
    }

    /// `GET /api/v1/backups/{id}/snapshot`: the snapshot a running backup owns.
    ///
    /// # Errors
    /// See the module documentation.
    pub async fn backup_snapshot(&self, id: &BackupId) -> Result<BackupSnapshot, ClientError> {
        let path = format!("/api/v1/backups/{id}/snapshot");
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// `GET /api/v1/backups?vm_name=&status=`: backups matching the query, oldest first.
    ///
    /// # Errors
    /// See the module documentation.
    pub async fn backups(&self, query: &BackupQuery) -> Result<Vec<Backup>, ClientError> {
        let mut path = "/api/v1/backups".to_owned();
        let mut sep = '?';
        if let Some(vm) = &query.vm_name {
            path.push_str(&format!("{sep}vm_name={vm}"));
            sep = '&';
        }
        if let Some(status) = query.status {
            path.push_str(&format!("{sep}status={status}"));
        }
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// `GET /api/v1/backups/chain/{vm_name}`.
    ///
    /// # Errors
    /// See the module documentation.
    pub async fn chain(&self, vm: &VmName) -> Result<Chain, ClientError> {
        self.call(
            Method::GET,
            &format!("/api/v1/backups/chain/{vm}"),
            None::<&()>,
        )
        .await
    }

    /// `POST /api/v1/credentials`: store a vCenter credential (answered without its password).
    ///
    /// # Errors
    /// See the module documentation.
    pub async fn put_credential(
        &self,
        request: &CredentialRequest,
    ) -> Result<Credential, ClientError> {
        self.call(Method::POST, "/api/v1/credentials", Some(request))
            .await
    }

    /// `POST /api/v1/credentials/{name}/session`: the hub logs in to the credential's vCenter
    /// (checking its certificate as the credential's stored trust choice says) and answers the
    /// session (never the password).
    ///
    /// # Errors
    /// See the module documentation (404: no such credential; 409: the credential has no
    /// stored trust choice; 502: vCenter refused or failed).
    pub async fn credential_session(
        &self,
        name: &CredentialName,
    ) -> Result<VcenterSession, ClientError> {
        let path = format!("/api/v1/credentials/{name}/session");
        self.call(Method::POST, &path, Some(&SessionRequest::default()))
            .await
    }

    /// `POST /api/v1/backups/{id}/exports`: read-only exports of a restore point.
    ///
    /// # Errors
    /// See the module documentation.
    pub async fn open_restore_exports(&self, id: &BackupId) -> Result<RestoreExports, ClientError> {
        let path = format!("/api/v1/backups/{id}/exports");
        self.call(Method::POST, &path, None::<&()>).await
    }

    /// `DELETE /api/v1/backups/{id}/exports`.
    ///
    /// # Errors
    /// See the module documentation.
    pub async fn close_restore_exports(&self, id: &BackupId) -> Result<(), ClientError> {
        let path = format!("/api/v1/backups/{id}/exports");
        self.send(Method::DELETE, &path, None::<&()>)
            .await
            .map(drop)
    }

    /// `GET /api/v1/backups/{id}/disks/{key}/partitions`.
    ///
    /// # Errors
    /// See the module documentation.
    pub async fn partitions(
        &self,
        id: &BackupId,
        key: DiskKey,
    ) -> Result<DiskPartitions, ClientError> {
        let path = format!("/api/v1/backups/{id}/disks/{key}/partitions");
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// `GET /api/v1/backups/{id}/disks/{key}/files?partition=&path=`: one folder.
    ///
    /// # Errors
    /// See the module documentation.
    pub async fn list_files(
        &self,
        id: &BackupId,
        key: DiskKey,
        query: &FilesQuery,
    ) -> Result<FileListing, ClientError> {
        let path = files_path(id, key, "files", query);
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// `GET /api/v1/backups/{id}/disks/{key}/files/content?partition=&path=`: starts a download
    /// of a file (from byte `from` when given, with a `Range` header) or of a folder as a tar
    /// stream; the answer's body is read with [`Download::chunk`].
    ///
    /// # Errors
    /// See the module documentation.
    pub async fn download(
        &self,
        id: &BackupId,
        key: DiskKey,
        query: &FilesQuery,
        from: Option<u64>,
    ) -> Result<Download, ClientError> {
        self.download_with(id, key, query, from.map(|f| format!("bytes={f}-")))
            .await
    }

    /// Bytes `start..=end` of a file of a restore point (`Range: bytes=START-END`): a piece
    /// of a parallel download. Check [`Download::partial`] and [`Download::total`].
    ///
    /// # Errors
    /// As [`Self::download`].
    pub async fn download_range(
        &self,
        id: &BackupId,
        key: DiskKey,
        query: &FilesQuery,
        start: u64,
        end: u64,
    ) -> Result<Download, ClientError> {
        self.download_with(id, key, query, Some(format!("bytes={start}-{end}")))
            .await
    }

    async fn download_with(
        &self,
        id: &BackupId,
        key: DiskKey,
        query: &FilesQuery,
        range: Option<String>,
    ) -> Result<Download, ClientError> {
        let path = files_path(id, key, "files/content", query);
        let mut request = self
            .request_builder(Method::GET, &path)?
            .timeout(DOWNLOAD_TIMEOUT);
        if let Some(range) = range {
            request = request.header(reqwest::header::RANGE, range);
        }
        let response = request
            .send()
            .await
            .map_err(|e| self.transport_error("GET", &path, &e))?;
        if !response.status().is_success() {
            // The error body is small JSON: read it as every other call does.
            let status = response.status();
            let bytes = response
                .bytes()
                .await
                .map_err(|e| self.transport_error("GET", &path, &e))?;
            return Err(self.error_answer("GET", &path, status, &bytes));
        }
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let is_tar = header(reqwest::header::CONTENT_TYPE)
            .is_some_and(|t| t.starts_with("application/x-tar"));
        let length = header(reqwest::header::CONTENT_LENGTH).and_then(|v| v.parse().ok());
        let partial = response.status() == StatusCode::PARTIAL_CONTENT;
        // `Content-Range: bytes START-END/TOTAL` of a 206; `Content-Length` of a whole file.
        let total = if partial {
            header(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.rsplit('/').next().and_then(|t| t.parse().ok()))
        } else if is_tar {
            None
        } else {
            length
        };
        Ok(Download {
            response,
            path,
            is_tar,
            length,
            partial,
            total,
        })
    }

    /// `POST /api/v1/backups/{id}/instant`: starts an instant recovery of a completed point.
    ///
    /// # Errors
    /// See the module documentation.
    pub async fn start_instant(&self, id: &BackupId) -> Result<InstantRecovery, ClientError> {
        let path = format!("/api/v1/backups/{id}/instant");
        self.call(Method::POST, &path, None::<&()>).await
    }

    /// `GET /api/v1/instant/{id}`: one instant recovery, with its writable exports.
    ///
    /// # Errors
    /// See the module documentation.
    pub async fn instant(&self, id: &InstantId) -> Result<InstantRecovery, ClientError> {
        let path = format!("/api/v1/instant/{id}");
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// `POST /api/v1/agents/enroll` (no bearer token): the one-time enrollment token and the
    /// agent's CSR for its agent token and NBD client certificate.
    ///
    /// # Errors
    /// See the module documentation (the hub answers 401, 403 or 404 for a wrong, used or
    /// expired token).
    pub async fn enroll(&self, request: &EnrollRequest) -> Result<EnrollResponse, ClientError> {
        self.call(Method::POST, "/api/v1/agents/enroll", Some(request))
            .await
    }

    /// `GET /api/v1/agents/{name}/jobs/next?wait=&slots=&version=`: long-polls for a job;
    /// `None` when the hub answered 204 (no work within `wait` seconds). The request may last
    /// `wait` seconds plus [`LONG_POLL_MARGIN`].
    ///
    /// # Errors
    /// See the module documentation.
    pub async fn next_job(
        &self,
        agent: &AgentName,
        query: &NextJobQuery,
    ) -> Result<Option<AgentJob>, ClientError> {
        let mut path = format!("/api/v1/agents/{agent}/jobs/next");
        let mut pairs = Vec::new();
        if let Some(wait) = query.wait {
            pairs.push(format!("wait={wait}"));
        }
        if let Some(slots) = query.slots {
            pairs.push(format!("slots={slots}"));
        }
        if let Some(version) = &query.version {
            pairs.push(format!("version={}", query_escape(version)));
        }
        if !pairs.is_empty() {
            path.push('?');
            path.push_str(&pairs.join("&"));
        }
        let timeout = Duration::from_secs(u64::from(query.wait.unwrap_or(0))) + LONG_POLL_MARGIN;
        let (status, bytes) = self
            .send_with(Method::GET, &path, None::<&()>, Some(timeout))
            .await?;
        if status == StatusCode::NO_CONTENT || bytes.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ClientError::HubResponse {
                method: "GET",
                path,
                detail: e.to_string(),
            })
    }

    /// `POST /api/v1/jobs/{id}/heartbeat`: keeps the job's lease, reports progress; the answer
    /// says whether the job still runs (`cancelled`: stop it).
    ///
    /// # Errors
    /// See the module documentation.
    pub async fn heartbeat(
        &self,
        job: &JobId,
        request: &HeartbeatRequest,
    ) -> Result<HeartbeatResponse, ClientError> {
        let path = format!("/api/v1/jobs/{job}/heartbeat");
        let (_, bytes) = self
            .send_with(Method::POST, &path, Some(request), Some(SHORT_CALL_TIMEOUT))
            .await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::HubResponse {
            method: "POST",
            path,
            detail: e.to_string(),
        })
    }

    /// `POST /api/v1/jobs/{id}/finish`: the job's outcome. The answer's body is not
    /// interpreted.
    ///
    /// # Errors
    /// See the module documentation.
    pub async fn finish_job(
        &self,
        job: &JobId,
        request: &FinishJobRequest,
    ) -> Result<(), ClientError> {
        let path = format!("/api/v1/jobs/{job}/finish");
        self.send_with(Method::POST, &path, Some(request), Some(SHORT_CALL_TIMEOUT))
            .await
            .map(drop)
    }

    /// Any API call, for tools that speak the API generically (`sendense-hub ctl`): `method`
    /// on `path` (`/api/v1/...`, with its query) with an optional JSON body. Answers the 2xx
    /// body: JSON as a value, `null` when empty, any other text as a JSON string.
    ///
    /// # Errors
    /// See the module documentation.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, ClientError> {
        let bytes = self.send(method, path, body).await?;
        if bytes.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        Ok(serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
        }))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let method_name = method_name(&method);
        let bytes = self.send(method, path, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::HubResponse {
            method: method_name,
            path: path.to_owned(),
            detail: e.to_string(),
        })
    }

    /// Sends a request; answers the body of a 2xx, or the error it stands for.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<Vec<u8>, ClientError> {
        self.send_with(method, path, body, None)
            .await
            .map(|(_, bytes)| bytes)
    }

    /// [`Self::send`] answering the 2xx status too, with an optional limit for the whole
    /// exchange (instead of the client's default).
    async fn send_with(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
        timeout: Option<Duration>,
    ) -> Result<(StatusCode, Vec<u8>), ClientError> {
        let method_name = method_name(&method);
        let mut request = self.request_builder(method, path)?;
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        self.exchange(method_name, path, request).await
    }

    /// A request to `path` with the bearer token, accepting JSON answers.
    fn request_builder(
        &self,
        method: Method,
        path: &str,
    ) -> Result<reqwest::RequestBuilder, ClientError> {
        let url = self.base.join(path).map_err(|e| ClientError::HubRequest {
            method: method_name(&method),
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
        let mut request = self
            .http
            .request(method, url)
            .header(reqwest::header::ACCEPT, "application/json");
        if !self.token.is_empty() {
            request = request.bearer_auth(&self.token);
        }
        Ok(request)
    }

    /// Sends `request`; answers the status and body of a 2xx, or the error it stands for.
    async fn exchange(
        &self,
        method_name: &'static str,
        path: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, Vec<u8>), ClientError> {
        debug!(method = method_name, path, "hub request");
        let response = request
            .send()
            .await
            .map_err(|e| self.transport_error(method_name, path, &e))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(method_name, path, &e))?;
        if status.is_success() {
            return Ok((status, bytes.to_vec()));
        }
        Err(self.error_answer(method_name, path, status, &bytes))
    }

    /// The error a non-2xx answer stands for.
    pub(crate) fn error_answer(
        &self,
        method_name: &'static str,
        path: &str,
        status: StatusCode,
        bytes: &[u8],
    ) -> ClientError {
        if status == StatusCode::UNAUTHORIZED {
            return ClientError::TokenRejected {
                url: self.base_str(),
            };
        }
        let (code, message) = match serde_json::from_slice::<ApiError>(bytes) {
            Ok(e) => (e.error, e.message),
            Err(_) => {
                let text = String::from_utf8_lossy(bytes);
                let text: String = text.chars().take(MAX_ERROR_BODY).collect();
                ("unknown".to_owned(), text)
            }
        };
        ClientError::HubStatus {
            method: method_name,
            path: path.to_owned(),
            status: status.as_u16(),
            code,
            message,
        }
    }

    fn base_str(&self) -> String {
        self.base.as_str().trim_end_matches('/').to_owned()
    }

    /// Classifies a transport failure: TLS (certificate) trouble, the hub not answering, or
    /// anything else.
    fn transport_error(
        &self,
        method: &'static str,
        path: &str,
        err: &reqwest::Error,
    ) -> ClientError {
        if let Some(tls) = find_tls_error(err) {
            return ClientError::HubCertificate {
                url: self.base_str(),
                detail: tls,
            };
        }
        if err.is_connect() || err.is_timeout() {
            return ClientError::HubUnreachable {
                url: self.base_str(),
                detail: connect_detail(err),
            };
        }
        ClientError::HubRequest {
            method,
            path: path.to_owned(),
            detail: sendense_io::error_chain(err),
        }
    }
}

/// A download started by [`HubClient::download`].
#[derive(Debug)]
pub struct Download {
    response: reqwest::Response,
    path: String,
    /// A folder as a tar stream (else a file).
    pub is_tar: bool,
    /// Bytes the answer carries, when the hub said (a file's size, or the rest of it).
    pub length: Option<u64>,
    /// The hub answered the range asked for (206).
    pub partial: bool,
    /// The whole file's size, when the hub said (`Content-Range` of a 206, `Content-Length`
    /// of a whole file).
    pub total: Option<u64>,
}

impl Download {
    /// The next bytes; `None` at the end.
    ///
    /// # Errors
    /// The connection failed or the hub cut the stream (a read error on its side).
    pub async fn chunk(&mut self) -> Result<Option<bytes::Bytes>, ClientError> {
        self.response
            .chunk()
            .await
            .map_err(|e| ClientError::HubRequest {
                method: "GET",
                path: self.path.clone(),
                detail: format!("download cut off: {}", sendense_io::error_chain(&e)),
            })
    }
}

/// The path (with its query) of a file-level restore route.
pub(crate) fn files_path(id: &BackupId, key: DiskKey, route: &str, query: &FilesQuery) -> String {
    let mut path = format!(
        "/api/v1/backups/{id}/disks/{key}/{route}?path={}",
        query_escape(query.path.as_deref().unwrap_or("/"))
    );
    if let Some(n) = query.partition {
        path.push_str(&format!("&partition={n}"));
    }
    path
}

/// Percent-encodes a query value (anything but unreserved characters).
fn query_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        _ => "HTTP",
    }
}

fn bad_url(url: &str, reason: &str) -> ClientError {
    ClientError::InvalidArgument {
        what: "--hub URL",
        reason: format!("{url:?} {reason}; expected https://HOST:PORT"),
    }
}

/// Parses `https://HOST[:PORT][/]`.
fn parse_hub_url(url: &str) -> Result<Url, ClientError> {
    let parsed = Url::parse(url).map_err(|e| bad_url(url, &format!("is not a URL ({e})")))?;
    if parsed.scheme() != "https" {
        return Err(bad_url(url, "must use https"));
    }
    if parsed.path() != "/" || parsed.query().is_some() || !parsed.username().is_empty() {
        return Err(bad_url(url, "must not have a path, query or user"));
    }
    Ok(parsed)
}

/// A rustls client configuration trusting only the CA in `path` (ring provider).
///
/// # Errors
/// [`ClientError::File`] when unreadable, [`ClientError::NoCaCertificate`] when it holds no
/// usable certificate.
pub fn tls_config(path: &Path) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let pem = std::fs::read(path).map_err(|source| ClientError::File {
        what: "CA file",
        path: path.to_owned(),
        source,
    })?;
    if !pem
        .windows(b"-----BEGIN CERTIFICATE-----".len())
        .any(|w| w == b"-----BEGIN CERTIFICATE-----")
    {
        return Err(ClientError::NoCaCertificate {
            path: path.to_owned(),
        });
    }
    sendense_nbd::tls::client_config(path, None).map_err(|e| ClientError::File {
        what: "CA file",
        path: path.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
    })
}

/// A rustls client configuration from a QEMU client folder: trusting its `ca-cert.pem` and
/// presenting `client-cert.pem` with `client-key.pem`.
///
/// # Errors
/// [`ClientError::File`] naming the file that is missing or unusable.
pub fn client_cert_config(dir: &Path) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    use sendense_nbd::tls::{CA_CERT, CLIENT_CERT, CLIENT_KEY};
    tls_config(&dir.join(CA_CERT))?;
    for file in [CLIENT_CERT, CLIENT_KEY] {
        let path = dir.join(file);
        std::fs::metadata(&path).map_err(|source| ClientError::File {
            what: "client certificate folder (sendense-hub cert issue writes it)",
            path,
            source,
        })?;
    }
    let cert = dir.join(CLIENT_CERT);
    let key = dir.join(CLIENT_KEY);
    sendense_nbd::tls::client_config(&dir.join(CA_CERT), Some((&cert, &key))).map_err(|e| {
        ClientError::File {
            what: "client certificate or key",
            path: dir.to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
        }
    })
}

/// Reads the API token: the file's content without surrounding whitespace.
pub(crate) fn read_token(path: &Path) -> Result<String, ClientError> {
    let text = std::fs::read_to_string(path).map_err(|source| ClientError::File {
        what: "token file",
        path: path.to_owned(),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(ClientError::EmptyToken {
            path: path.to_owned(),
        });
    }
    Ok(token.to_owned())
}

/// The TLS part of an error chain, if any (a rustls error, or a message about certificates).
fn find_tls_error(err: &(dyn StdError + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        if let Some(io) = e.downcast_ref::<io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(tls) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(tls.to_string());
        }
        let text = e.to_string();
        if text.contains("certificate") || text.contains("UnknownIssuer") {
            return Some(text);
        }
        cur = e.source();
    }
    None
}

/// The lowest-level cause of a connection failure, in words (`connection refused`).
fn connect_detail(err: &(dyn StdError + 'static)) -> String {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    let mut last = err.to_string();
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return match io.kind() {
                io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
                io::ErrorKind::TimedOut => "timed out".to_owned(),
                _ => io.to_string(),
            };
        }
        last = e.to_string();
        cur = e.source();
    }
    if err
        .downcast_ref::<reqwest::Error>()
        .is_some_and(reqwest::Error::is_timeout)
    {
        return "timed out".to_owned();
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn parse_hub_url_http_is_refused() {
        let err = parse_hub_url("http://hub:8443").unwrap_err();

        assert!(err.to_string().contains("https"), "{err}");
    }

    #[test]
    fn parse_hub_url_with_path_is_refused() {
        let err = parse_hub_url("https://hub:8443/api").unwrap_err();

        assert!(
            matches!(err, ClientError::InvalidArgument { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn read_token_trims_whitespace() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"  s3cret\n").unwrap();

        assert_eq!(read_token(f.path()).unwrap(), "s3cret");
    }

    #[test]
    fn read_token_empty_file_is_refused() {
        let f = tempfile::NamedTempFile::new().unwrap();

        let err = read_token(f.path()).unwrap_err();

        assert!(matches!(err, ClientError::EmptyToken { .. }), "{err:?}");
    }

    #[test]
    fn tls_config_file_without_certificate_is_refused() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"not a pem").unwrap();

        let err = tls_config(f.path()).unwrap_err();

        assert!(
            matches!(err, ClientError::NoCaCertificate { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn tls_config_missing_file_names_it() {
        let err = tls_config(Path::new("/nonexistent/ca.pem")).unwrap_err();

        assert!(
            err.to_string().contains("CA file /nonexistent/ca.pem"),
            "{err}"
        );
    }
}
