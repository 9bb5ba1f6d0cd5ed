//! An authenticated vCenter session: HTTPS transport, SOAP calls, re-login, tasks.
//!
//! The session keeps the `vmware_soap_session` cookie and sends it on every SOAP call and
//! datastore read. When vCenter answers `NotAuthenticated` (the session expired during a
//! multi-hour transfer), the session logs in again once and retries the call; concurrent
//! callers that hit the expiry together share one re-login (a generation counter).
//!
//! How the session logs in is a [`Login`] strategy: SOAP `Login` with a user and password
//! ([`Login::Password`]), or a session cookie issued by someone who holds the password
//! ([`Login::Issued`]: the hub, for `--vcenter-credential`). Expiry is handled the same way
//! for both: the strategy is asked again.
//!
//! Every HTTP exchange has a timeout, and every response body is read with a size bound
//! ([`crate::xml::MAX_RESPONSE_BYTES`]) before parsing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, COOKIE, HeaderValue, SET_COOKIE};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tracing::{debug, info, warn};

use crate::error::{FaultKind, VsphereError};
use crate::soap::{
    self, DiskChangeInfo, MoRef, ServiceContent, SnapshotInfo, TaskState, VirtualDisk,
};
use crate::xml::{Element, MAX_RESPONSE_BYTES};

/// Name of vCenter's SOAP session cookie.
pub const SESSION_COOKIE: &str = "vmware_soap_session";

/// How vCenter's TLS certificate is checked.
#[derive(Clone)]
#[non_exhaustive]
pub enum TlsMode {
    /// Trust the CA certificates in this PEM file.
    CaFile(PathBuf),
    /// Trust these PEM-encoded CA certificates.
    CaPem(Vec<u8>),
    /// Accept any certificate (`--insecure`): signatures are still checked, the chain is not.
    Insecure,
}

impl std::fmt::Debug for TlsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::CaFile(p) => f.debug_tuple("CaFile").field(p).finish(),
            Self::CaPem(_) => f.write_str("CaPem(..)"),
            Self::Insecure => f.write_str("Insecure"),
        }
    }
}

/// Future returned by a [`SessionIssuer`].
pub type IssueFuture<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<String, VsphereError>> + Send + 'a>>;

/// Hands out logged-in vCenter sessions without revealing how (the hub, which holds the
/// password of a stored credential).
pub trait SessionIssuer: Send + Sync + std::fmt::Debug {
    /// A fresh logged-in session: the value of its `vmware_soap_session` cookie.
    fn issue(&self) -> IssueFuture<'_>;

    /// Who logs in, for log lines (never a secret), e.g. `credential vc1 (via the hub)`.
    fn describe(&self) -> String;
}

/// How a [`Session`] logs in, first and again when vCenter expires the session.
#[derive(Clone)]
#[non_exhaustive]
pub enum Login {
    /// SOAP `Login` with a user name and password.
    Password {
        /// User name.
        user: String,
        /// Password (never logged or printed by `Debug`).
        password: String,
    },
    /// A session cookie from an issuer; asked again on expiry.
    Issued(Arc<dyn SessionIssuer>),
}

impl Login {
    /// User name and password.
    #[must_use]
    pub fn password(user: &str, password: &str) -> Self {
        Self::Password {
            user: user.to_owned(),
            password: password.to_owned(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Password { user, .. } => user.clone(),
            Self::Issued(issuer) => issuer.describe(),
        }
    }
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Password { user, .. } => f
                .debug_struct("Password")
                .field("user", user)
                .field("password", &"<redacted>")
                .finish(),
            Self::Issued(issuer) => f.debug_tuple("Issued").field(issuer).finish(),
        }
    }
}

/// Connection settings.
#[derive(Clone)]
pub struct ConnectOptions {
    /// `HOST[:PORT]` (HTTPS) or a full `https://` / `http://` base URL.
    pub address: String,
    /// How to log in.
    pub login: Login,
    /// Certificate checking.
    pub tls: TlsMode,
    /// Limit for one HTTP exchange (SOAP call or datastore page).
    pub request_timeout: Duration,
    /// Limit for a vCenter task (snapshot create/remove, reconfigure).
    pub task_timeout: Duration,
    /// Interval between task state polls.
    pub task_poll_interval: Duration,
    /// Datastore reads in flight at once, per session.
    pub max_reads_in_flight: usize,
    /// Largest datastore read, in bytes.
    pub max_read_bytes: usize,
    /// Attempts for a datastore read that vCenter answers with HTTP 503.
    pub busy_attempts: u32,
    /// First back-off delay after a 503 (doubles each attempt, capped at 10 s).
    pub busy_backoff: Duration,
}

impl ConnectOptions {
    /// Options logging in with a user and password, with the defaults: 120 s requests, 1 h
    /// tasks, 4 reads of 32 MiB in flight, 8 attempts on HTTP 503 starting at 250 ms.
    #[must_use]
    pub fn new(address: &str, user: &str, password: &str, tls: TlsMode) -> Self {
        Self::with_login(address, Login::password(user, password), tls)
    }

    /// Options with another login strategy, and the defaults of [`Self::new`].
    #[must_use]
    pub fn with_login(address: &str, login: Login, tls: TlsMode) -> Self {
        Self {
            address: address.to_owned(),
            login,
            tls,
            request_timeout: Duration::from_secs(120),
            task_timeout: Duration::from_secs(3600),
            task_poll_interval: Duration::from_millis(500),
            max_reads_in_flight: 4,
            max_read_bytes: 32 * 1024 * 1024,
            busy_attempts: 8,
            busy_backoff: Duration::from_millis(250),
        }
    }
}

/// Read a password file (`--vcenter-password-file`): its first line, without the line end.
///
/// # Errors
/// [`VsphereError::PasswordFile`] when it cannot be read, is not UTF-8 or is empty.
pub fn read_password_file(path: &std::path::Path) -> Result<String, VsphereError> {
    let err = |source| VsphereError::PasswordFile {
        path: path.display().to_string(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(err)?;
    let line = text.lines().next().unwrap_or_default();
    if line.is_empty() {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "empty password",
        )));
    }
    Ok(line.to_owned())
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("address", &self.address)
            .field("login", &self.login)
            .field("tls", &self.tls)
            .field("request_timeout", &self.request_timeout)
            .field("task_timeout", &self.task_timeout)
            .finish_non_exhaustive()
    }
}

/// Properties of a VM used by a backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmInfo {
    /// The VM.
    pub vm: MoRef,
    /// Its name.
    pub name: String,
    /// `config.changeTrackingEnabled`.
    pub cbt_enabled: bool,
    /// Its virtual disks.
    pub disks: Vec<VirtualDisk>,
    /// Its snapshots, flattened.
    pub snapshots: Vec<SnapshotInfo>,
}

/// A VM as [`Session::list_vms`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmEntry {
    /// The VM.
    pub vm: MoRef,
    /// Its name.
    pub name: String,
    /// Its inventory path, e.g. `dc1/vm/web01`.
    pub path: String,
}

/// A logged-in vCenter session. Cheap to clone; clones share the session.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base: String,
    login: Login,
    cookie: Mutex<Option<HeaderValue>>,
    relogin: tokio::sync::Mutex<()>,
    generation: AtomicU64,
    content: ServiceContent,
    options: ConnectOptions,
    reads: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("base", &self.inner.base)
            .field("login", &self.inner.login)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Connect and log in.
    ///
    /// # Errors
    /// Address, TLS and HTTP errors; [`FaultKind::InvalidLogin`] faults for bad credentials.
    pub async fn connect(options: ConnectOptions) -> Result<Self, VsphereError> {
        let base = base_url(&options.address)?;
        let tls = tls_config(&options.tls)?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(options.request_timeout)
            .connect_timeout(options.request_timeout)
            .build()
            .map_err(|source| VsphereError::ClientBuild { source })?;
        let reads = Arc::new(tokio::sync::Semaphore::new(
            options.max_reads_in_flight.max(1),
        ));
        let probe = Probe {
            http: &http,
            base: &base,
            timeout: options.request_timeout,
        };
        let body = probe
            .post(
                "RetrieveServiceContent",
                &soap::retrieve_service_content(),
                None,
            )
            .await?
            .0;
        let content = soap::service_content(&body)?;
        let session = Self {
            inner: Arc::new(Inner {
                http,
                base,
                login: options.login.clone(),
                cookie: Mutex::new(None),
                relogin: tokio::sync::Mutex::new(()),
                generation: AtomicU64::new(0),
                content,
                options,
                reads,
            }),
        };
        session.login().await?;
        info!(vcenter = %session.inner.base, user = %session.inner.login.describe(), "logged in to vCenter");
        Ok(session)
    }

    /// The service content.
    #[must_use]
    pub fn service_content(&self) -> &ServiceContent {
        &self.inner.content
    }

    /// The connection options.
    #[must_use]
    pub fn options(&self) -> &ConnectOptions {
        &self.inner.options
    }

    /// Log out (best effort at the end of a run).
    ///
    /// # Errors
    /// HTTP and SOAP errors.
    pub async fn logout(&self) -> Result<(), VsphereError> {
        self.post("Logout", &soap::logout(&self.inner.content.session_manager))
            .await
            .map(drop)
    }

    /// The value of the session's `vmware_soap_session` cookie (a bearer secret: hand it only
    /// to whom may use the session, never log it); `None` before a login answered one.
    #[must_use]
    pub fn session_cookie(&self) -> Option<String> {
        let cookie = self.cookie()?;
        let pair = cookie.to_str().ok()?;
        pair.split_once('=').map(|(_, v)| v.to_owned())
    }

    async fn login(&self) -> Result<(), VsphereError> {
        match &self.inner.login {
            Login::Password { user, password } => {
                let body = soap::login(&self.inner.content.session_manager, user, password);
                self.post("Login", &body).await.map(drop)
            }
            Login::Issued(issuer) => {
                let value = issuer.issue().await?;
                let header = cookie_header(&value)?;
                if let Ok(mut slot) = self.inner.cookie.lock() {
                    *slot = Some(header);
                }
                Ok(())
            }
        }
    }

    /// Log in again unless another caller did since `seen` generation.
    pub(crate) async fn relogin(&self, seen: u64) -> Result<(), VsphereError> {
        let _guard = self.inner.relogin.lock().await;
        if self.inner.generation.load(Ordering::Acquire) != seen {
            return Ok(());
        }
        warn!(vcenter = %self.inner.base, "vCenter session expired; logging in again");
        self.login().await?;
        self.inner.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    pub(crate) fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    pub(crate) fn cookie(&self) -> Option<HeaderValue> {
        self.inner.cookie.lock().ok().and_then(|c| c.clone())
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    pub(crate) fn base(&self) -> &str {
        &self.inner.base
    }

    pub(crate) fn read_slots(&self) -> &Arc<tokio::sync::Semaphore> {
        &self.inner.reads
    }

    async fn post(&self, call: &'static str, body: &str) -> Result<Element, VsphereError> {
        let probe = Probe {
            http: &self.inner.http,
            base: &self.inner.base,
            timeout: self.inner.options.request_timeout,
        };
        let (el, cookie) = probe.post(call, body, self.cookie()).await?;
        if let Some(c) = cookie
            && let Ok(mut slot) = self.inner.cookie.lock()
        {
            *slot = Some(c);
        }
        Ok(el)
    }

    /// One SOAP call; on `NotAuthenticated`, log in again once and retry.
    pub(crate) async fn call(
        &self,
        call: &'static str,
        body: &str,
    ) -> Result<Element, VsphereError> {
        let seen = self.generation();
        match self.post(call, body).await {
            Err(e) if e.fault_kind() == Some(&FaultKind::NotAuthenticated) => {
                self.relogin(seen).await?;
                self.post(call, body).await
            }
            other => other,
        }
    }

    /// Properties of one object.
    pub(crate) async fn properties(
        &self,
        obj: &MoRef,
        paths: &[&str],
    ) -> Result<Vec<(String, Element)>, VsphereError> {
        let body = soap::retrieve_properties(&self.inner.content.property_collector, obj, paths);
        let resp = self.call("RetrievePropertiesEx", &body).await?;
        let (objects, _) = soap::object_contents(&resp)?;
        Ok(objects
            .into_iter()
            .next()
            .map(|o| o.props)
            .unwrap_or_default())
    }

    /// Find a VM by inventory path (`dc/vm/folder/name`, contains `/`) or by name.
    ///
    /// # Errors
    /// [`VsphereError::VmNotFound`], [`VsphereError::AmbiguousVm`], HTTP and SOAP errors.
    pub async fn find_vm(&self, path_or_name: &str) -> Result<MoRef, VsphereError> {
        let not_found = || VsphereError::VmNotFound {
            vm: path_or_name.to_owned(),
        };
        if path_or_name.contains('/') {
            let body = soap::find_by_inventory_path(&self.inner.content.search_index, path_or_name);
            let resp = self.call("FindByInventoryPath", &body).await?;
            return match soap::returnval_moref(&resp)? {
                Some(m) if m.kind == "VirtualMachine" => Ok(m),
                _ => Err(not_found()),
            };
        }
        let c = &self.inner.content;
        let resp = self
            .call(
                "CreateContainerView",
                &soap::create_container_view(&c.view_manager, &c.root_folder, "VirtualMachine"),
            )
            .await?;
        let view = soap::returnval_moref(&resp)?.ok_or(VsphereError::UnexpectedResponse {
            what: "CreateContainerView returned no view",
        })?;
        let found = self.vms_named(&view, path_or_name).await;
        if let Err(e) = self.call("DestroyView", &soap::destroy_view(&view)).await {
            debug!(error = %e, "DestroyView failed");
        }
        let mut found = found?;
        match found.len() {
            0 => Err(not_found()),
            1 => Ok(found.swap_remove(0)),
            count => Err(VsphereError::AmbiguousVm {
                vm: path_or_name.to_owned(),
                count,
            }),
        }
    }

    async fn vms_named(&self, view: &MoRef, name: &str) -> Result<Vec<MoRef>, VsphereError> {
        let objects = self.view_objects(view, &["name"]).await?;
        Ok(objects
            .into_iter()
            .filter(|o| o.prop("name").is_some_and(|v| v.text == name))
            .map(|o| o.obj)
            .collect())
    }

    /// Every VM of the container view `view`, with the properties `paths`, across all pages.
    async fn view_objects(
        &self,
        view: &MoRef,
        paths: &[&str],
    ) -> Result<Vec<soap::ObjectContent>, VsphereError> {
        let pc = &self.inner.content.property_collector;
        let mut resp = self
            .call(
                "RetrievePropertiesEx",
                &soap::retrieve_view_properties(pc, view, "VirtualMachine", paths),
            )
            .await?;
        let mut out = Vec::new();
        // Bounded: vCenter pages of 100+ objects; 10 000 pages is far beyond any inventory.
        for _ in 0..10_000 {
            let (objects, token) = soap::object_contents(&resp)?;
            out.extend(objects);
            let Some(token) = token else {
                return Ok(out);
            };
            resp = self
                .call(
                    "ContinueRetrievePropertiesEx",
                    &soap::continue_retrieve_properties(pc, &token),
                )
                .await?;
        }
        Err(VsphereError::UnexpectedResponse {
            what: "RetrievePropertiesEx paging did not end",
        })
    }

    /// Every object of the types `kinds` below `container`, with the properties `paths`.
    pub(crate) async fn objects_in(
        &self,
        container: &MoRef,
        kinds: &[&str],
        paths: &[&str],
    ) -> Result<Vec<soap::ObjectContent>, VsphereError> {
        let c = &self.inner.content;
        let resp = self
            .call(
                "CreateContainerView",
                &soap::create_container_view_of(&c.view_manager, container, kinds),
            )
            .await?;
        let view = soap::returnval_moref(&resp)?.ok_or(VsphereError::UnexpectedResponse {
            what: "CreateContainerView returned no view",
        })?;
        let objects = self
            .collect_pages(soap::retrieve_view_properties_of(
                &c.property_collector,
                &view,
                kinds,
                paths,
            ))
            .await;
        if let Err(e) = self.call("DestroyView", &soap::destroy_view(&view)).await {
            debug!(error = %e, "DestroyView failed");
        }
        objects
    }

    /// Every object of a `RetrievePropertiesEx` request, across all pages.
    async fn collect_pages(
        &self,
        request: String,
    ) -> Result<Vec<soap::ObjectContent>, VsphereError> {
        let pc = &self.inner.content.property_collector;
        let mut resp = self.call("RetrievePropertiesEx", &request).await?;
        let mut out = Vec::new();
        for _ in 0..10_000 {
            let (objects, token) = soap::object_contents(&resp)?;
            out.extend(objects);
            let Some(token) = token else {
                return Ok(out);
            };
            resp = self
                .call(
                    "ContinueRetrievePropertiesEx",
                    &soap::continue_retrieve_properties(pc, &token),
                )
                .await?;
        }
        Err(VsphereError::UnexpectedResponse {
            what: "RetrievePropertiesEx paging did not end",
        })
    }

    /// The object at an inventory path (`FindByInventoryPath`), of any type.
    pub(crate) async fn find_by_path(&self, path: &str) -> Result<Option<MoRef>, VsphereError> {
        let body = soap::find_by_inventory_path(&self.inner.content.search_index, path);
        let resp = self.call("FindByInventoryPath", &body).await?;
        soap::returnval_moref(&resp)
    }

    /// Every VM this session sees: its name and inventory path (`dc1/vm/folder/web01`, the
    /// form [`Self::find_vm`] takes), ordered by path. A container view of the root folder
    /// lists the VMs with their `name` and `parent`; each folder above them is read once.
    ///
    /// # Errors
    /// HTTP and SOAP errors; [`VsphereError::UnexpectedResponse`] for a folder chain deeper
    /// than 64 levels.
    pub async fn list_vms(&self) -> Result<Vec<VmEntry>, VsphereError> {
        let c = &self.inner.content;
        let resp = self
            .call(
                "CreateContainerView",
                &soap::create_container_view(&c.view_manager, &c.root_folder, "VirtualMachine"),
            )
            .await?;
        let view = soap::returnval_moref(&resp)?.ok_or(VsphereError::UnexpectedResponse {
            what: "CreateContainerView returned no view",
        })?;
        let objects = self.view_objects(&view, &["name", "parent"]).await;
        if let Err(e) = self.call("DestroyView", &soap::destroy_view(&view)).await {
            debug!(error = %e, "DestroyView failed");
        }
        // Folder (or datacenter) value -> its inventory path ("" for the root folder).
        let mut folders: BTreeMap<String, String> = BTreeMap::new();
        let mut out = Vec::new();
        for o in objects? {
            let name = o.prop("name").map(|v| v.text.clone()).unwrap_or_default();
            let parent = o.prop("parent").map(soap::moref).transpose()?;
            let path = match parent {
                Some(parent) => {
                    let folder = self.folder_path(&parent, &mut folders).await?;
                    if folder.is_empty() {
                        name.clone()
                    } else {
                        format!("{folder}/{name}")
                    }
                }
                None => name.clone(),
            };
            out.push(VmEntry {
                vm: o.obj,
                name,
                path,
            });
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// The inventory path of a folder or datacenter (the root folder, which has no parent, is
    /// not part of paths), remembered in `known`.
    async fn folder_path(
        &self,
        folder: &MoRef,
        known: &mut BTreeMap<String, String>,
    ) -> Result<String, VsphereError> {
        // Walk up until a known folder or the root, then fill the cache on the way down.
        let mut chain: Vec<(String, String)> = Vec::new();
        let mut cur = folder.clone();
        let base = loop {
            if let Some(path) = known.get(&cur.value) {
                break path.clone();
            }
            if chain.len() >= 64 {
                return Err(VsphereError::UnexpectedResponse {
                    what: "folder chain deeper than 64 levels",
                });
            }
            let props = self.properties(&cur, &["name", "parent"]).await?;
            let name = props
                .iter()
                .find(|(n, _)| n == "name")
                .map(|(_, v)| v.text.clone())
                .unwrap_or_default();
            let parent = props
                .iter()
                .find(|(n, _)| n == "parent")
                .map(|(_, v)| soap::moref(v))
                .transpose()?;
            match parent {
                Some(p) => {
                    chain.push((cur.value.clone(), name));
                    cur = p;
                }
                None => {
                    known.insert(cur.value.clone(), String::new());
                    break String::new();
                }
            }
        };
        let mut path = base;
        for (value, name) in chain.into_iter().rev() {
            path = if path.is_empty() {
                name
            } else {
                format!("{path}/{name}")
            };
            known.insert(value, path.clone());
        }
        Ok(path)
    }

    /// Name, CBT state, disks and snapshots of a VM.
    ///
    /// # Errors
    /// HTTP and SOAP errors (`ManagedObjectNotFound` for a VM that vanished).
    pub async fn vm_info(&self, vm: &MoRef) -> Result<VmInfo, VsphereError> {
        let props = self
            .properties(
                vm,
                &[
                    "name",
                    "config.changeTrackingEnabled",
                    "config.hardware.device",
                    "snapshot",
                ],
            )
            .await?;
        let mut info = VmInfo {
            vm: vm.clone(),
            name: String::new(),
            cbt_enabled: false,
            disks: Vec::new(),
            snapshots: Vec::new(),
        };
        for (name, val) in &props {
            match name.as_str() {
                "name" => info.name.clone_from(&val.text),
                "config.changeTrackingEnabled" => info.cbt_enabled = soap::parse_bool(val),
                "config.hardware.device" => info.disks = soap::devices(val)?,
                "snapshot" => info.snapshots = soap::snapshot_list(val),
                _ => {}
            }
        }
        Ok(info)
    }

    /// The disks recorded in a snapshot's configuration (change ids as of the snapshot).
    ///
    /// # Errors
    /// HTTP and SOAP errors.
    pub async fn snapshot_disks(&self, snapshot: &MoRef) -> Result<Vec<VirtualDisk>, VsphereError> {
        let props = self
            .properties(snapshot, &["config.hardware.device"])
            .await?;
        match props.iter().find(|(n, _)| n == "config.hardware.device") {
            Some((_, val)) => soap::devices(val),
            None => Ok(Vec::new()),
        }
    }

    /// The configuration of a VM or snapshot (`config`), as a restore rebuilds it (see
    /// [`crate::config`]); distributed port groups are named by reading their `name`.
    ///
    /// # Errors
    /// [`VsphereError::Config`] for a configuration that is not valid; HTTP and SOAP errors.
    pub async fn vm_config(&self, obj: &MoRef) -> Result<sendense_types::VmConfig, VsphereError> {
        let props = self.properties(obj, &["config"]).await?;
        let config = props
            .iter()
            .find(|(n, _)| n == "config")
            .map(|(_, v)| v)
            .ok_or(VsphereError::UnexpectedResponse {
                what: "object without config",
            })?;
        let mut names = BTreeMap::new();
        for key in crate::config::portgroup_keys(config) {
            let pg = MoRef::new("DistributedVirtualPortgroup", &key);
            match self.properties(&pg, &["name"]).await {
                Ok(p) => {
                    if let Some((_, v)) = p.iter().find(|(n, _)| n == "name") {
                        names.insert(key, v.text.clone());
                    }
                }
                Err(e) => warn!(portgroup = %key, error = %e, "cannot read a port group's name"),
            }
        }
        crate::config::vm_config(config, &|key| names.get(key).cloned())
    }

    /// The inventory path of the VM's datacenter (the `dcPath` of datastore URLs).
    ///
    /// # Errors
    /// HTTP and SOAP errors; [`VsphereError::UnexpectedResponse`] when no datacenter is found.
    pub async fn datacenter_path(&self, vm: &MoRef) -> Result<String, VsphereError> {
        let mut names: Vec<String> = Vec::new();
        let mut found_dc = false;
        let mut cur = vm.clone();
        for _ in 0..64 {
            let props = self.properties(&cur, &["name", "parent"]).await?;
            let name = props
                .iter()
                .find(|(n, _)| n == "name")
                .map(|(_, v)| v.text.clone());
            let parent = props
                .iter()
                .find(|(n, _)| n == "parent")
                .map(|(_, v)| soap::moref(v))
                .transpose()?;
            if cur.kind == "Datacenter" {
                found_dc = true;
            }
            if found_dc && let (Some(name), Some(_)) = (name, &parent) {
                // The root folder (no parent) is not part of the path.
                names.push(name);
            }
            match parent {
                Some(p) => cur = p,
                None if found_dc => {
                    names.reverse();
                    return Ok(names.join("/"));
                }
                None => break,
            }
        }
        Err(VsphereError::UnexpectedResponse {
            what: "VM is not inside a datacenter",
        })
    }

    /// Wait for a task to finish; its result reference.
    ///
    /// # Errors
    /// [`VsphereError::TaskFailed`], [`VsphereError::TaskTimeout`], HTTP and SOAP errors.
    pub async fn wait_task(&self, task: &MoRef) -> Result<Option<MoRef>, VsphereError> {
        let timeout = self.inner.options.task_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let props = self.properties(task, &["info"]).await?;
            let info = props
                .iter()
                .find(|(n, _)| n == "info")
                .map(|(_, v)| v)
                .ok_or(VsphereError::UnexpectedResponse {
                    what: "task without info",
                })?;
            match soap::task_state(info)? {
                TaskState::Success(result) => return Ok(result),
                TaskState::Error(fault) => {
                    return Err(VsphereError::TaskFailed {
                        task: task.value.clone(),
                        fault,
                    });
                }
                _ => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(VsphereError::TaskTimeout {
                    task: task.value.clone(),
                    timeout,
                });
            }
            tokio::time::sleep(self.inner.options.task_poll_interval).await;
        }
    }

    pub(crate) async fn run_task(
        &self,
        call: &'static str,
        body: &str,
    ) -> Result<Option<MoRef>, VsphereError> {
        let resp = self.call(call, body).await?;
        let task = soap::returnval_moref(&resp)?.ok_or(VsphereError::UnexpectedResponse {
            what: "method returned no task",
        })?;
        self.wait_task(&task).await
    }

    /// Turn on changed block tracking (`ReconfigVM_Task`).
    ///
    /// # Errors
    /// Task, HTTP and SOAP errors.
    pub async fn enable_cbt(&self, vm: &MoRef) -> Result<(), VsphereError> {
        self.run_task("ReconfigVM_Task", &soap::reconfig_enable_cbt(vm))
            .await
            .map(drop)
    }

    /// Create a snapshot without memory; its reference.
    ///
    /// # Errors
    /// Task, HTTP and SOAP errors.
    pub async fn create_snapshot(
        &self,
        vm: &MoRef,
        name: &str,
        description: &str,
        quiesce: bool,
    ) -> Result<MoRef, VsphereError> {
        self.run_task(
            "CreateSnapshot_Task",
            &soap::create_snapshot(vm, name, description, quiesce),
        )
        .await?
        .filter(|m| m.kind == "VirtualMachineSnapshot")
        .ok_or(VsphereError::UnexpectedResponse {
            what: "CreateSnapshot_Task returned no snapshot",
        })
    }

    /// Remove a snapshot (its children kept, disks consolidated).
    ///
    /// # Errors
    /// Task, HTTP and SOAP errors.
    pub async fn remove_snapshot(&self, snapshot: &MoRef) -> Result<(), VsphereError> {
        self.run_task("RemoveSnapshot_Task", &soap::remove_snapshot(snapshot))
            .await
            .map(drop)
    }

    /// One `QueryChangedDiskAreas` page (see [`crate::cbt::changed_areas`] for the loop).
    ///
    /// # Errors
    /// HTTP and SOAP errors.
    pub async fn query_changed_disk_areas(
        &self,
        vm: &MoRef,
        snapshot: &MoRef,
        device_key: i32,
        start_offset: u64,
        change_id: &str,
    ) -> Result<DiskChangeInfo, VsphereError> {
        let body =
            soap::query_changed_disk_areas(vm, snapshot, device_key, start_offset, change_id);
        let resp = self.call("QueryChangedDiskAreas", &body).await?;
        soap::disk_change_info(&resp)
    }
}

/// A SOAP POST without session state (used before login exists and by [`Session::post`]).
struct Probe<'a> {
    http: &'a reqwest::Client,
    base: &'a str,
    timeout: Duration,
}

impl Probe<'_> {
    async fn post(
        &self,
        call: &'static str,
        body: &str,
        cookie: Option<HeaderValue>,
    ) -> Result<(Element, Option<HeaderValue>), VsphereError> {
        let mut req = self
            .http
            .post(format!("{}/sdk", self.base))
            .header(CONTENT_TYPE, "text/xml; charset=utf-8")
            .header("SOAPAction", soap::SOAP_ACTION)
            .body(body.to_owned());
        if let Some(c) = cookie {
            req = req.header(COOKIE, c);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| http_error(e, call, self.timeout))?;
        let new_cookie = resp
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .find_map(session_cookie);
        let status = resp.status().as_u16();
        check_soap_status(call, status)?;
        let bytes = read_body_limited(resp, call, self.timeout).await?;
        let el = soap::response_body(&bytes, call)?;
        Ok((el, new_cookie))
    }
}

/// A SOAP answer's HTTP status: 200, or 500 carrying a fault; anything else is an error.
fn check_soap_status(call: &'static str, status: u16) -> Result<(), VsphereError> {
    if status != 200 && status != 500 {
        return Err(VsphereError::HttpStatus { call, status });
    }
    Ok(())
}

/// Reads vCenter's answer to SOAP `Login` as the session does, from its parts: the HTTP status
/// (200, or 500 with a SOAP fault such as `InvalidLogin`), the `Set-Cookie` header values and
/// the body (at most [`MAX_RESPONSE_BYTES`]). Answers the session cookie pair
/// (`vmware_soap_session=...`) when one was set. Pure, so the `vsphere_login` fuzz target can
/// drive it.
///
/// # Errors
/// [`VsphereError::HttpStatus`], [`VsphereError::XmlLimit`], XML and SOAP fault errors.
pub fn parse_login_answer(
    status: u16,
    set_cookies: &[&[u8]],
    body: &[u8],
) -> Result<Option<String>, VsphereError> {
    const CALL: &str = "Login";
    let cookie = set_cookies
        .iter()
        .filter_map(|c| HeaderValue::from_bytes(c).ok())
        .find_map(|c| session_cookie(&c));
    check_soap_status(CALL, status)?;
    if body.len() > MAX_RESPONSE_BYTES {
        return Err(VsphereError::XmlLimit {
            limit: "response size",
        });
    }
    soap::response_body(body, CALL)?;
    Ok(cookie.and_then(|c| c.to_str().ok().map(str::to_owned)))
}

/// Read a response body, refusing more than [`MAX_RESPONSE_BYTES`].
async fn read_body_limited(
    mut resp: reqwest::Response,
    call: &'static str,
    timeout: Duration,
) -> Result<Vec<u8>, VsphereError> {
    if resp
        .content_length()
        .is_some_and(|l| l > MAX_RESPONSE_BYTES as u64)
    {
        return Err(VsphereError::XmlLimit {
            limit: "response size",
        });
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| http_error(e, call, timeout))?
    {
        if out.len().saturating_add(chunk.len()) > MAX_RESPONSE_BYTES {
            return Err(VsphereError::XmlLimit {
                limit: "response size",
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

pub(crate) fn http_error(e: reqwest::Error, call: &'static str, timeout: Duration) -> VsphereError {
    if e.is_timeout() {
        VsphereError::Timeout { call, timeout }
    } else {
        VsphereError::Http { call, source: e }
    }
}

/// `vmware_soap_session=...` from a `Set-Cookie` header, as a `Cookie` header value.
fn session_cookie(v: &HeaderValue) -> Option<HeaderValue> {
    let s = v.to_str().ok()?;
    let first = s.split(';').next()?.trim();
    let (name, _) = first.split_once('=')?;
    (name.trim() == SESSION_COOKIE)
        .then(|| HeaderValue::from_str(first).ok())
        .flatten()
}

/// A `Cookie` header carrying an issued session cookie value.
fn cookie_header(value: &str) -> Result<HeaderValue, VsphereError> {
    let bad = VsphereError::UnexpectedResponse {
        what: "issued session cookie is not a valid cookie value",
    };
    if value.is_empty() || value.contains([';', ',', ' ']) {
        return Err(bad);
    }
    HeaderValue::from_str(&format!("{SESSION_COOKIE}={value}")).map_err(|_| bad)
}

/// `HOST[:PORT]` or an http(s) URL, as a base URL without a trailing slash.
fn base_url(address: &str) -> Result<String, VsphereError> {
    let bad = || VsphereError::InvalidAddress {
        address: address.to_owned(),
    };
    let trimmed = address.trim().trim_end_matches('/');
    let (scheme, rest) = if let Some(r) = trimmed.strip_prefix("https://") {
        ("https", r)
    } else if let Some(r) = trimmed.strip_prefix("http://") {
        ("http", r)
    } else {
        ("https", trimmed)
    };
    let rest = rest.strip_suffix("/sdk").unwrap_or(rest);
    if rest.is_empty()
        || rest
            .chars()
            .any(|c| c.is_whitespace() || c == '/' || c == '?' || c == '#' || c == '@')
    {
        return Err(bad());
    }
    Ok(format!("{scheme}://{rest}"))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_config(mode: &TlsMode) -> Result<rustls::ClientConfig, VsphereError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|source| VsphereError::Tls { source })?;
    let pem = match mode {
        TlsMode::Insecure => {
            warn!("vCenter certificate is not verified (--insecure)");
            return Ok(builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCert { provider }))
                .with_no_client_auth());
        }
        TlsMode::CaFile(path) => std::fs::read(path).map_err(|source| VsphereError::CaFile {
            path: path.display().to_string(),
            source,
        })?,
        TlsMode::CaPem(pem) => pem.clone(),
    };
    let ca_err = |msg: &str| VsphereError::CaFile {
        path: match mode {
            TlsMode::CaFile(p) => p.display().to_string(),
            _ => "<in memory>".to_owned(),
        },
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_owned()),
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|_| ca_err("invalid PEM"))?;
        roots
            .add(cert)
            .map_err(|source| VsphereError::Tls { source })?;
    }
    if roots.is_empty() {
        return Err(ca_err("no certificate in PEM"));
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// `--insecure`: accept any certificate chain, but still verify handshake signatures.
#[derive(Debug)]
struct AcceptAnyCert {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_host_port_defaults_to_https() {
        assert_eq!(
            base_url("vc.example:8443").unwrap(),
            "https://vc.example:8443"
        );
    }

    #[test]
    fn base_url_with_path_is_rejected() {
        assert!(base_url("vc/evil").is_err());
    }

    #[test]
    fn base_url_full_url_keeps_scheme() {
        assert_eq!(
            base_url("http://127.0.0.1:9/sdk").unwrap(),
            "http://127.0.0.1:9"
        );
    }

    #[test]
    fn parse_login_answer_fault_is_invalid_login_and_ok_gives_cookie() {
        let fault = br#"<?xml version="1.0"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>Cannot complete login</faultstring><detail><InvalidLoginFault xmlns="urn:vim25" xsi:type="InvalidLogin"></InvalidLoginFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>"#;
        let ok = br#"<?xml version="1.0"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><LoginResponse xmlns="urn:vim25"><returnval><key>52</key><userName>u</userName></returnval></LoginResponse></soapenv:Body></soapenv:Envelope>"#;

        let refused = parse_login_answer(500, &[], fault).unwrap_err();
        let cookie = parse_login_answer(
            200,
            &[b"other=1", b"vmware_soap_session=\"abc\"; Path=/"],
            ok,
        )
        .unwrap();
        let status = parse_login_answer(302, &[], ok).unwrap_err();

        assert_eq!(refused.fault_kind(), Some(&FaultKind::InvalidLogin));
        assert_eq!(cookie.as_deref(), Some("vmware_soap_session=\"abc\""));
        assert!(matches!(
            status,
            VsphereError::HttpStatus { status: 302, .. }
        ));
    }

    #[test]
    fn session_cookie_takes_only_the_session_pair() {
        let v = HeaderValue::from_static("vmware_soap_session=\"abc\"; Path=/; HttpOnly; Secure");
        assert_eq!(
            session_cookie(&v).unwrap(),
            HeaderValue::from_static("vmware_soap_session=\"abc\"")
        );
    }

    #[test]
    fn read_password_file_strips_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "hunter2\n").unwrap();
        assert_eq!(read_password_file(&p).unwrap(), "hunter2");
    }

    #[test]
    fn read_password_file_empty_is_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "\n").unwrap();
        assert!(matches!(
            read_password_file(&p),
            Err(VsphereError::PasswordFile { .. })
        ));
    }

    #[test]
    fn connect_options_debug_hides_password() {
        let o = ConnectOptions::new("h", "u", "hunter2", TlsMode::Insecure);
        assert!(!format!("{o:?}").contains("hunter2"));
    }
}
