//! An in-process vCenter simulator for tests, quickstart and the benchmark harness.
//!
//! It serves HTTPS on `127.0.0.1:0` with an rcgen self-signed certificate
//! ([`Simulator::ca_pem`]) and answers the vim25 SOAP calls this crate makes with real-looking
//! envelopes and real faults: `InvalidLogin`, `NotAuthenticated` after a session expiry,
//! `InvalidArgument` for `startOffset >= capacity`, `FileFault` for an unknown change id,
//! `ManagedObjectNotFound`. `QueryChangedDiskAreas` answers cover at most
//! [`Simulator::set_change_page`] bytes, so clients must page. `/folder` Range reads are served
//! from local flat files, with an injectable HTTP 503 storm.
//!
//! CBT model: each disk has an epoch (the change id's UUID part) and a sequence number.
//! [`Simulator::write_disk`] writes the local file and logs the area with the current sequence
//! number. Creating a snapshot records `epoch/seq` as the snapshot's change id and starts a new
//! sequence; the areas changed since change id `epoch/s` at a snapshot `epoch/t` are the writes
//! logged in `(s, t]`. [`Simulator::reset_cbt`] starts a new epoch. Allocated areas (`*`) are
//! the non-zero 64 KiB blocks of the file.
//!
//! Test-only code: it spawns its accept loop and connection tasks on the caller's runtime and
//! stops them when dropped.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use sendense_vsphere::xml::{self, Element, escape};

mod hardware;

pub use hardware::{
    ControllerView, DiskView, Hardware, MAX_PUT_BYTES, NicView, SIM_HOST, SIM_NETWORKS,
    SIM_RESOURCE_POOL, VmView,
};

/// User name the simulator accepts.
pub const SIM_USER: &str = "administrator@vsphere.local";
/// Password the simulator accepts.
pub const SIM_PASSWORD: &str = "s3cret!";
/// Datacenter name of the simulated inventory.
pub const SIM_DATACENTER: &str = "dc1";
/// Datastore name of the simulated inventory.
pub const SIM_DATASTORE: &str = "ds1";
/// Block size of the allocation scan for `*` queries.
const ALLOC_BLOCK: u64 = 64 * 1024;

/// A disk of a simulated VM.
#[derive(Debug, Clone)]
pub struct DiskSpec {
    /// Capacity in bytes (a multiple of 512).
    pub capacity: u64,
    /// Backing type; `VirtualDiskFlatVer2BackingInfo` unless testing other backings.
    pub backing: String,
}

impl DiskSpec {
    /// A flat disk of `capacity` bytes.
    #[must_use]
    pub fn flat(capacity: u64) -> Self {
        Self {
            capacity,
            backing: sendense_vsphere::soap::FLAT_BACKING.to_owned(),
        }
    }
}

/// A simulated VM.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// VM name (also its folder on the datastore).
    pub name: String,
    /// Whether CBT is already on (and active).
    pub cbt_enabled: bool,
    /// Disks: keys 2000, 2001, ... in order.
    pub disks: Vec<DiskSpec>,
}

/// Counters a test can assert on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Successful logins.
    pub logins: u32,
    /// `QueryChangedDiskAreas` calls (answered or faulted).
    pub change_queries: u32,
    /// `/folder` requests answered 206.
    pub folder_reads: u32,
    /// `/folder` requests answered 503.
    pub busy_answers: u32,
    /// Most `/folder` requests seen in flight at once.
    pub max_reads_in_flight: usize,
    /// Snapshots created.
    pub snapshots_created: u32,
    /// Snapshots removed.
    pub snapshots_removed: u32,
    /// `ReconfigVM_Task` calls.
    pub reconfigs: u32,
    /// `CreateSnapshot_Task` calls that asked for a quiesced snapshot.
    pub quiesce_requests: u32,
    /// `CreateSnapshot_Task` calls that asked for no quiescing.
    pub plain_snapshot_requests: u32,
    /// `CreateVM_Task` calls.
    pub vms_created: u32,
    /// `Destroy_Task` calls.
    pub vms_destroyed: u32,
    /// `PowerOnVM_Task` calls.
    pub power_ons: u32,
    /// `/folder` PUT requests.
    pub uploads: u32,
    /// Bytes received by `/folder` PUT requests.
    pub upload_bytes: u64,
    /// `DeleteDatastoreFile_Task` calls.
    pub file_deletes: u32,
}

/// A running simulator. Dropping it stops the server.
#[derive(Debug)]
pub struct Simulator {
    addr: std::net::SocketAddr,
    ca_pem: Vec<u8>,
    state: Arc<Mutex<State>>,
    in_flight: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
    /// Own runtime of [`Simulator::start_blocking`].
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.accept.abort();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Holds `/folder` reads while a test looks at the world mid-transfer.
#[derive(Debug)]
struct ReadGate {
    /// Reads wait while this is `true`.
    held: tokio::sync::watch::Sender<bool>,
    /// Reads waiting at the gate now.
    waiting: tokio::sync::watch::Sender<u32>,
}

impl Default for ReadGate {
    fn default() -> Self {
        Self {
            held: tokio::sync::watch::channel(false).0,
            waiting: tokio::sync::watch::channel(0).0,
        }
    }
}

#[derive(Debug, Clone)]
struct SimDisk {
    key: i32,
    capacity: u64,
    backing: String,
    /// `vm1/vm1_1.vmdk` style path of the descriptor inside the datastore.
    descriptor: String,
    local: PathBuf,
    uuid: String,
    epoch: Option<String>,
    seq: u64,
    /// (sequence tag, start, length) of every write.
    writes: Vec<(u64, u64, u64)>,
    /// Its controller's key.
    controller_key: i32,
    /// Its unit on the controller.
    unit: u32,
    /// Thin provisioned.
    thin: bool,
    /// Thick, eagerly zeroed.
    eager: bool,
}

impl SimDisk {
    fn ds_file(&self) -> String {
        format!("[{SIM_DATASTORE}] {}", self.descriptor)
    }

    fn flat_path(&self) -> String {
        self.descriptor.replace(".vmdk", "-flat.vmdk")
    }

    fn change_id(&self) -> Option<String> {
        self.epoch.as_ref().map(|e| format!("{e}/{}", self.seq))
    }
}

#[derive(Debug, Clone)]
struct SimVm {
    id: String,
    name: String,
    cbt_enabled: bool,
    /// Everything but the disks.
    hw: Hardware,
    /// The folder holding it.
    folder: String,
    powered_on: bool,
    disks: Vec<SimDisk>,
    /// Snapshot ids, oldest first (a linear chain).
    snapshots: Vec<String>,
}

#[derive(Debug, Clone)]
struct SnapDisk {
    key: i32,
    capacity: u64,
    backing: String,
    file: String,
    uuid: String,
    change_id: Option<String>,
    /// Sequence number recorded (for change queries).
    seq: u64,
    epoch: Option<String>,
    /// File the snapshot's disk state is in (a delta if earlier snapshots exist).
    parent: Option<String>,
    controller_key: i32,
    unit: u32,
    thin: bool,
    eager: bool,
}

#[derive(Debug)]
struct SimSnapshot {
    vm: String,
    name: String,
    /// The VM's hardware when it was taken.
    hw: Hardware,
    vm_name: String,
    disks: Vec<SnapDisk>,
}

#[derive(Debug)]
struct Task {
    polls_left: u32,
    result: Option<(String, String)>,
    error: Option<(String, String)>,
}

#[derive(Debug, Default)]
struct State {
    sessions: HashMap<String, u32>,
    session_call_limit: Option<u32>,
    vms: Vec<SimVm>,
    snapshots: HashMap<String, SimSnapshot>,
    tasks: HashMap<String, Task>,
    next_id: u64,
    change_page: u64,
    busy_storm: u32,
    hang: bool,
    gate: Arc<ReadGate>,
    task_polls: u32,
    fail_next: Vec<(String, String, String)>,
    raw_next: Option<Vec<u8>>,
    fail_task_next: Vec<(String, String, String)>,
    /// Fault quiesced snapshots, as vCenter does for a VM without VMware Tools.
    no_tools: bool,
    /// Container views and the object types they list.
    views: HashMap<String, Vec<String>>,
    /// VM folders below the datacenter's root VM folder: id -> name.
    folders: Vec<(String, String)>,
    /// Datastore files that are no VM's (uploaded by `/folder` PUT): path -> local file.
    files: std::collections::BTreeMap<String, PathBuf>,
    /// A `/folder` PUT fails (HTTP 500, body no longer read) once it received this many bytes.
    fail_put_after: Option<u64>,
    stats: SimStats,
    dir: PathBuf,
}

impl State {
    fn id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}-{}", self.next_id)
    }

    fn vm_mut(&mut self, id: &str) -> Option<&mut SimVm> {
        self.vms.iter_mut().find(|v| v.id == id)
    }
}

fn random_hex(bytes: usize, sep: &str) -> String {
    let v: Vec<String> = (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    v.join(sep)
}

fn new_epoch() -> String {
    format!("52 {}-{}", random_hex(7, " "), random_hex(8, " "))
}

impl Simulator {
    /// Start a simulator whose flat files live in `dir`.
    ///
    /// # Errors
    /// Binding the listener or building the certificate fails.
    pub async fn start(dir: &Path) -> io::Result<Self> {
        let cert = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
        ])
        .map_err(io::Error::other)?;
        let ca_pem = cert.cert.pem().into_bytes();
        let key_der =
            rustls_pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server_config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key_der)
            .map_err(io::Error::other)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            change_page: 1024 * 1024,
            dir: dir.to_owned(),
            ..State::default()
        }));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let accept = tokio::spawn(accept_loop(
            listener,
            acceptor,
            Arc::clone(&state),
            Arc::clone(&in_flight),
        ));
        Ok(Self {
            addr,
            ca_pem,
            state,
            in_flight,
            accept,
            runtime: None,
        })
    }

    /// Start a simulator on its own runtime (two worker threads), for tests that are not async
    /// or that block while a child process (the client binary) talks to the simulator.
    ///
    /// # Errors
    /// As [`Simulator::start`], or the runtime cannot be built.
    pub fn start_blocking(dir: &Path) -> io::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let mut sim = rt.block_on(Self::start(dir))?;
        sim.runtime = Some(rt);
        Ok(sim)
    }

    /// `127.0.0.1:PORT`.
    #[must_use]
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// The server certificate, PEM (trust it as the CA).
    #[must_use]
    pub fn ca_pem(&self) -> Vec<u8> {
        self.ca_pem.clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Add a VM; its managed object id.
    ///
    /// # Errors
    /// Creating the flat files fails.
    pub fn add_vm(&self, spec: &VmSpec) -> io::Result<String> {
        let mut st = self.lock();
        let id = st.id("vm");
        let mut disks = Vec::new();
        for (i, d) in spec.disks.iter().enumerate() {
            let key = 2000 + i32::try_from(i).map_err(io::Error::other)?;
            let descriptor = if i == 0 {
                format!("{0}/{0}.vmdk", spec.name)
            } else {
                format!("{0}/{0}_{i}.vmdk", spec.name)
            };
            let local = st.dir.join(format!("{}-{key}-flat.vmdk", spec.name));
            File::create(&local)?.set_len(d.capacity)?;
            let (controller_key, unit) = hardware::default_slot(i);
            disks.push(SimDisk {
                key,
                capacity: d.capacity,
                backing: d.backing.clone(),
                descriptor,
                local,
                uuid: format!("6000c29{}", random_hex(12, "")),
                epoch: spec.cbt_enabled.then(new_epoch),
                seq: 0,
                writes: Vec::new(),
                controller_key,
                unit,
                thin: i % 2 == 0,
                eager: i % 2 == 1,
            });
        }
        st.vms.push(SimVm {
            id: id.clone(),
            name: spec.name.clone(),
            cbt_enabled: spec.cbt_enabled,
            hw: Hardware::default_for(&spec.name),
            folder: hardware::ROOT_VM_FOLDER.to_owned(),
            powered_on: false,
            disks,
            snapshots: Vec::new(),
        });
        Ok(id)
    }

    /// Add a disk to a VM (hot add): the next key (2000 + number of disks), CBT as the VM's.
    /// Answers the key.
    ///
    /// # Errors
    /// Unknown VM, or creating the disk file fails.
    pub fn add_disk(&self, vm: &str, spec: &DiskSpec) -> io::Result<i32> {
        let mut st = self.lock();
        let dir = st.dir.clone();
        let v = st
            .vm_mut(vm)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such VM"))?;
        let i = v.disks.len();
        let key = 2000 + i32::try_from(i).map_err(io::Error::other)?;
        let local = dir.join(format!("{}-{key}-flat.vmdk", v.name));
        File::create(&local)?.set_len(spec.capacity)?;
        let epoch = v.cbt_enabled.then(new_epoch);
        let (controller_key, unit) = hardware::free_slot(v, hardware::PVSCSI_KEY)
            .ok_or_else(|| io::Error::other("no free unit on the SCSI controller"))?;
        v.disks.push(SimDisk {
            key,
            capacity: spec.capacity,
            backing: spec.backing.clone(),
            descriptor: format!("{0}/{0}_{i}.vmdk", v.name),
            local,
            uuid: format!("6000c29{}", random_hex(12, "")),
            epoch,
            seq: 0,
            writes: Vec::new(),
            controller_key,
            unit,
            thin: true,
            eager: false,
        });
        Ok(key)
    }

    /// Write guest data into a disk (between backups), logging the change for CBT.
    ///
    /// # Errors
    /// Unknown VM or disk, a write beyond the capacity, or an I/O error.
    pub fn write_disk(&self, vm: &str, key: i32, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut st = self.lock();
        let v = st
            .vm_mut(vm)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such VM"))?;
        let d = v
            .disks
            .iter_mut()
            .find(|d| d.key == key)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such disk"))?;
        let len = data.len() as u64;
        if offset.checked_add(len).is_none_or(|e| e > d.capacity) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "beyond capacity",
            ));
        }
        OpenOptions::new()
            .write(true)
            .open(&d.local)?
            .write_all_at(data, offset)?;
        d.writes.push((d.seq, offset, len));
        Ok(())
    }

    /// Path of a disk's local flat file.
    #[must_use]
    pub fn disk_file(&self, vm: &str, key: i32) -> Option<PathBuf> {
        let st = self.lock();
        st.vms
            .iter()
            .find(|v| v.id == vm)?
            .disks
            .iter()
            .find(|d| d.key == key)
            .map(|d| d.local.clone())
    }

    /// The current change id of a disk (as the VM reports it).
    #[must_use]
    pub fn current_change_id(&self, vm: &str, key: i32) -> Option<String> {
        let st = self.lock();
        st.vms
            .iter()
            .find(|v| v.id == vm)?
            .disks
            .iter()
            .find(|d| d.key == key)?
            .change_id()
    }

    /// Reset CBT of every disk of a VM: new epochs, older change ids become unknown.
    pub fn reset_cbt(&self, vm: &str) {
        let mut st = self.lock();
        if let Some(v) = st.vm_mut(vm) {
            for d in &mut v.disks {
                if d.epoch.is_some() {
                    d.epoch = Some(new_epoch());
                    d.seq = 0;
                    d.writes.clear();
                }
            }
        }
    }

    /// Change the capacity of a disk (a resize).
    ///
    /// # Errors
    /// I/O errors resizing the local file.
    pub fn resize_disk(&self, vm: &str, key: i32, capacity: u64) -> io::Result<()> {
        let mut st = self.lock();
        if let Some(d) = st
            .vm_mut(vm)
            .and_then(|v| v.disks.iter_mut().find(|d| d.key == key))
        {
            OpenOptions::new()
                .write(true)
                .open(&d.local)?
                .set_len(capacity)?;
            d.capacity = capacity;
        }
        Ok(())
    }

    /// Expire every session now: the next call answers `NotAuthenticated`.
    pub fn expire_sessions(&self) {
        self.lock().sessions.clear();
    }

    /// Expire a session after it made `calls` authenticated SOAP calls (`None`: never).
    pub fn expire_sessions_after(&self, calls: Option<u32>) {
        self.lock().session_call_limit = calls;
    }

    /// Answer the next `count` `/folder` requests with HTTP 503.
    pub fn set_busy_storm(&self, count: u32) {
        self.lock().busy_storm = count;
    }

    /// Stop answering (requests hang) or resume.
    pub fn set_hang(&self, hang: bool) {
        self.lock().hang = hang;
    }

    /// Hold every `/folder` read (they wait, unanswered) until called with `false`.
    pub fn hold_reads(&self, hold: bool) {
        self.lock().gate.held.send_replace(hold);
    }

    /// Resolves once at least one `/folder` read waits at the gate of [`Self::hold_reads`].
    pub async fn read_held(&self) {
        let mut waiting = self.lock().gate.waiting.subscribe();
        // The sender lives in the state as long as the simulator: an error cannot happen.
        let _ = waiting.wait_for(|n| *n > 0).await;
    }

    /// Bytes covered by one `QueryChangedDiskAreas` answer.
    pub fn set_change_page(&self, bytes: u64) {
        self.lock().change_page = bytes.max(512);
    }

    /// Tasks report `running` for this many polls before finishing.
    pub fn set_task_polls(&self, polls: u32) {
        self.lock().task_polls = polls;
    }

    /// Make the next call of `method` fail with a fault of type `fault`.
    pub fn fail_next(&self, method: &str, fault: &str, message: &str) {
        self.lock()
            .fail_next
            .push((method.to_owned(), fault.to_owned(), message.to_owned()));
    }

    /// Make the task of the next call of `method` (a `..._Task` method) end in error with a
    /// fault of type `fault`, without doing anything.
    pub fn fail_next_task(&self, method: &str, fault: &str, message: &str) {
        self.lock()
            .fail_task_next
            .push((method.to_owned(), fault.to_owned(), message.to_owned()));
    }

    /// Pretend every VM lacks VMware Tools: a `CreateSnapshot_Task` with `quiesce=true` fails
    /// (`ToolsUnavailable`) and creates no snapshot; unquiesced snapshots still work.
    pub fn set_tools_missing(&self, missing: bool) {
        self.lock().no_tools = missing;
    }

    /// Answer the next SOAP call (after login) with these raw bytes, HTTP 200.
    pub fn answer_next_raw(&self, body: Vec<u8>) {
        self.lock().raw_next = Some(body);
    }

    /// Names of a VM's snapshots.
    #[must_use]
    pub fn snapshot_names(&self, vm: &str) -> Vec<String> {
        let st = self.lock();
        st.vms
            .iter()
            .find(|v| v.id == vm)
            .map(|v| {
                v.snapshots
                    .iter()
                    .filter_map(|s| st.snapshots.get(s).map(|s| s.name.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Add a snapshot that is not ours (a user's), as vCenter would.
    pub fn add_user_snapshot(&self, vm: &str, name: &str) {
        let mut st = self.lock();
        create_snapshot(&mut st, vm, name);
    }

    /// Whether CBT is enabled on a VM.
    #[must_use]
    pub fn cbt_enabled(&self, vm: &str) -> bool {
        self.lock().vms.iter().any(|v| v.id == vm && v.cbt_enabled)
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> SimStats {
        let mut s = self.lock().stats;
        s.max_reads_in_flight = s
            .max_reads_in_flight
            .max(self.in_flight.load(Ordering::Relaxed));
        s
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    match state.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<Mutex<State>>,
    in_flight: Arc<AtomicUsize>,
) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let state = Arc::clone(&state);
        let in_flight = Arc::clone(&in_flight);
        conns.spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let svc = hyper::service::service_fn(move |req| {
                handle(Arc::clone(&state), Arc::clone(&in_flight), req)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
        while conns.try_join_next().is_some() {}
    }
}

type Resp = Response<Full<Bytes>>;

fn response(status: StatusCode, body: String) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/xml; charset=utf-8"),
    );
    r
}

fn envelope(body: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<soapenv:Envelope xmlns:soapenc=\"http://schemas.xmlsoap.org/soap/encoding/\" xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">\n<soapenv:Body>{body}</soapenv:Body>\n</soapenv:Envelope>"
    )
}

fn ok(method: &str, inner: &str) -> Resp {
    response(
        StatusCode::OK,
        envelope(&format!(
            "<{method}Response xmlns=\"urn:vim25\">{inner}</{method}Response>"
        )),
    )
}

fn fault(kind: &str, message: &str) -> Resp {
    response(
        StatusCode::INTERNAL_SERVER_ERROR,
        envelope(&format!(
            "<soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>{}</faultstring><detail><{kind}Fault xmlns=\"urn:vim25\" xsi:type=\"{kind}\"></{kind}Fault></detail></soapenv:Fault>",
            escape(message)
        )),
    )
}

fn mo(tag: &str, kind: &str, value: &str) -> String {
    format!("<{tag} type=\"{kind}\">{}</{tag}>", escape(value))
}

async fn handle(
    state: Arc<Mutex<State>>,
    in_flight: Arc<AtomicUsize>,
    req: Request<Incoming>,
) -> Result<Resp, hyper::Error> {
    if lock(&state).hang {
        std::future::pending::<()>().await;
    }
    let cookie = req
        .headers()
        .get(hyper::header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|c| {
            c.split(';').find_map(|p| {
                p.trim()
                    .strip_prefix("vmware_soap_session=")
                    .map(|t| t.trim_matches('"').to_owned())
            })
        });
    let path = req.uri().path().to_owned();
    if req.method() == hyper::Method::GET && path.starts_with("/folder/") {
        let range = req
            .headers()
            .get(hyper::header::RANGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let query = req.uri().query().unwrap_or_default().to_owned();
        let gate = Arc::clone(&lock(&state).gate);
        let mut held = gate.held.subscribe();
        if *held.borrow_and_update() {
            gate.waiting.send_modify(|n| *n += 1);
            let _ = held.wait_for(|h| !*h).await;
            gate.waiting.send_modify(|n| *n -= 1);
        }
        let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        {
            let mut st = lock(&state);
            st.stats.max_reads_in_flight = st.stats.max_reads_in_flight.max(now);
        }
        tokio::task::yield_now().await;
        let r = folder_read(&state, cookie.as_deref(), &path, &query, range.as_deref());
        in_flight.fetch_sub(1, Ordering::SeqCst);
        return Ok(r);
    }
    if req.method() == hyper::Method::PUT && path.starts_with("/folder/") {
        return Ok(hardware::folder_put(&state, cookie.as_deref(), req).await);
    }
    if req.method() != hyper::Method::POST || path != "/sdk" {
        return Ok(response(StatusCode::NOT_FOUND, String::new()));
    }
    let body = req.into_body().collect().await?.to_bytes();
    Ok(soap_call(&state, cookie.as_deref(), &body))
}

fn folder_read(
    state: &Mutex<State>,
    cookie: Option<&str>,
    path: &str,
    query: &str,
    range: Option<&str>,
) -> Resp {
    let mut st = lock(state);
    if !cookie.is_some_and(|c| st.sessions.contains_key(c)) {
        return response(StatusCode::UNAUTHORIZED, String::new());
    }
    if st.busy_storm > 0 {
        st.busy_storm -= 1;
        st.stats.busy_answers += 1;
        return response(StatusCode::SERVICE_UNAVAILABLE, String::new());
    }
    let file = percent_decode(path.trim_start_matches("/folder/"));
    let params: HashMap<String, String> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), percent_decode(v)))
        .collect();
    if params.get("dcPath").map(String::as_str) != Some(SIM_DATACENTER)
        || params.get("dsName").map(String::as_str) != Some(SIM_DATASTORE)
    {
        return response(StatusCode::NOT_FOUND, String::new());
    }
    let Some(disk) = st
        .vms
        .iter()
        .flat_map(|v| v.disks.iter())
        .find(|d| d.flat_path() == file)
    else {
        return response(StatusCode::NOT_FOUND, String::new());
    };
    let Some((a, b)) = range
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
        .filter(|(a, b)| a <= b && *b < disk.capacity)
    else {
        return response(StatusCode::RANGE_NOT_SATISFIABLE, String::new());
    };
    let Ok(len) = usize::try_from(b - a + 1) else {
        return response(StatusCode::RANGE_NOT_SATISFIABLE, String::new());
    };
    let mut buf = vec![0u8; len];
    let read = File::open(&disk.local).and_then(|f| f.read_exact_at(&mut buf, a));
    if read.is_err() {
        return response(StatusCode::INTERNAL_SERVER_ERROR, String::new());
    }
    let capacity = disk.capacity;
    st.stats.folder_reads += 1;
    let mut r = Response::new(Full::new(Bytes::from(buf)));
    *r.status_mut() = StatusCode::PARTIAL_CONTENT;
    if let Ok(v) = hyper::header::HeaderValue::from_str(&format!("bytes {a}-{b}/{capacity}")) {
        r.headers_mut().insert(hyper::header::CONTENT_RANGE, v);
    }
    r
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn text<'a>(m: &'a Element, name: &str) -> &'a str {
    m.child_text(name).unwrap_or_default()
}

fn soap_call(state: &Mutex<State>, cookie: Option<&str>, body: &[u8]) -> Resp {
    let Ok(root) = xml::parse(body) else {
        return fault("InvalidRequest", "Malformed request");
    };
    let Some(m) = root.path(&["Body"]).and_then(|b| b.children.first()) else {
        return fault("InvalidRequest", "No method");
    };
    let method = m.name.as_str();
    let mut st = lock(state);
    if let Some(i) = st.fail_next.iter().position(|(n, _, _)| n == method) {
        let (_, kind, msg) = st.fail_next.remove(i);
        return fault(&kind, &msg);
    }
    match method {
        "RetrieveServiceContent" => return ok(method, SERVICE_CONTENT),
        "Login" => {
            if text(m, "userName") != SIM_USER || text(m, "password") != SIM_PASSWORD {
                return fault(
                    "InvalidLogin",
                    "Cannot complete login due to an incorrect user name or password.",
                );
            }
            let token = random_hex(20, "");
            st.sessions.insert(token.clone(), 0);
            st.stats.logins += 1;
            let mut r = ok(
                method,
                &format!(
                    "<returnval><key>{}</key><userName>{SIM_USER}</userName><fullName>Administrator</fullName></returnval>",
                    random_hex(8, "")
                ),
            );
            if let Ok(v) = hyper::header::HeaderValue::from_str(&format!(
                "vmware_soap_session=\"{token}\"; Path=/; HttpOnly; Secure;"
            )) {
                r.headers_mut().insert(hyper::header::SET_COOKIE, v);
            }
            return r;
        }
        _ => {}
    }
    let limit = st.session_call_limit;
    let authed = match cookie.and_then(|c| st.sessions.get_mut(c).map(|n| (c, n))) {
        Some((c, n)) => {
            *n += 1;
            if limit.is_some_and(|l| *n > l) {
                let c = c.to_owned();
                st.sessions.remove(&c);
                false
            } else {
                true
            }
        }
        None => false,
    };
    if !authed {
        return fault("NotAuthenticated", "The session is not authenticated.");
    }
    if let Some(raw) = st.raw_next.take() {
        let mut r = Response::new(Full::new(Bytes::from(raw)));
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/xml; charset=utf-8"),
        );
        return r;
    }
    dispatch(&mut st, method, m)
}

const SERVICE_CONTENT: &str = "<returnval>\
<rootFolder type=\"Folder\">group-d1</rootFolder>\
<propertyCollector type=\"PropertyCollector\">propertyCollector</propertyCollector>\
<viewManager type=\"ViewManager\">ViewManager</viewManager>\
<about><name>VMware vCenter Server</name><fullName>VMware vCenter Server 7.0.3 build-0 (Sendense simulator)</fullName><vendor>VMware, Inc.</vendor><version>7.0.3</version><apiType>VirtualCenter</apiType><apiVersion>7.0.3.0</apiVersion></about>\
<setting type=\"OptionManager\">VpxSettings</setting>\
<userDirectory type=\"UserDirectory\">UserDirectory</userDirectory>\
<sessionManager type=\"SessionManager\">SessionManager</sessionManager>\
<fileManager type=\"FileManager\">FileManager</fileManager>\
<searchIndex type=\"SearchIndex\">SearchIndex</searchIndex>\
<taskManager type=\"TaskManager\">TaskManager</taskManager>\
</returnval>";

fn dispatch(st: &mut State, method: &str, m: &Element) -> Resp {
    let this = text(m, "_this").to_owned();
    if let Some(i) = st.fail_task_next.iter().position(|(n, _, _)| n == method) {
        let (_, kind, msg) = st.fail_task_next.remove(i);
        let id = st.id("task");
        let polls_left = st.task_polls;
        st.tasks.insert(
            id.clone(),
            Task {
                polls_left,
                result: None,
                error: Some((kind, msg)),
            },
        );
        return ok(method, &mo("returnval", "Task", &id));
    }
    match method {
        "Logout" => ok(method, ""),
        "FindByInventoryPath" => {
            let path = text(m, "inventoryPath");
            match hardware::find_by_path(st, path) {
                Some((kind, id)) => ok(method, &mo("returnval", &kind, &id)),
                None => ok(method, ""),
            }
        }
        "CreateContainerView" => {
            let id = st.id("session[sim]view");
            let types = m
                .children_named("type")
                .map(|t| t.text.clone())
                .collect::<Vec<_>>();
            st.views.insert(id.clone(), types);
            ok(method, &mo("returnval", "ContainerView", &id))
        }
        "DestroyView" => {
            st.views.remove(&this);
            ok(method, "")
        }
        "RetrievePropertiesEx" => retrieve_properties(st, m),
        "ReconfigVM_Task" => {
            let Some(vm) = st.vm_mut(&this) else {
                return not_found(&this);
            };
            let enable = m
                .path(&["spec", "changeTrackingEnabled"])
                .map(|e| e.text == "true");
            if let Some(e) = enable {
                vm.cbt_enabled = e;
            }
            st.stats.reconfigs += 1;
            if let Some(spec) = m.child("spec")
                && spec.child("deviceChange").is_some()
                && let Err((kind, message)) = hardware::reconfigure(st, &this, spec)
            {
                return failed_task(st, method, &kind, &message);
            }
            new_task(st, method, None)
        }
        "CreateVM_Task" => {
            st.stats.vms_created += 1;
            match hardware::create_vm(st, &this, m) {
                Ok(vm) => new_task(st, method, Some(("VirtualMachine".to_owned(), vm))),
                Err((kind, message)) => failed_task(st, method, &kind, &message),
            }
        }
        "PowerOnVM_Task" => {
            let Some(vm) = st.vm_mut(&this) else {
                return not_found(&this);
            };
            vm.powered_on = true;
            st.stats.power_ons += 1;
            new_task(st, method, None)
        }
        "PowerOffVM_Task" => {
            let Some(vm) = st.vm_mut(&this) else {
                return not_found(&this);
            };
            vm.powered_on = false;
            new_task(st, method, None)
        }
        "Destroy_Task" => {
            st.stats.vms_destroyed += 1;
            match hardware::destroy_vm(st, &this) {
                Ok(()) => new_task(st, method, None),
                Err((kind, message)) => failed_task(st, method, &kind, &message),
            }
        }
        "DeleteDatastoreFile_Task" => {
            st.stats.file_deletes += 1;
            match hardware::delete_file(st, text(m, "name")) {
                Ok(()) => new_task(st, method, None),
                Err((kind, message)) => failed_task(st, method, &kind, &message),
            }
        }
        "CreateSnapshot_Task" => {
            if st.vm_mut(&this).is_none() {
                return not_found(&this);
            }
            let name = text(m, "name").to_owned();
            if text(m, "quiesce") == "true" {
                st.stats.quiesce_requests += 1;
                if st.no_tools {
                    return failed_task(
                        st,
                        method,
                        "ToolsUnavailable",
                        "Cannot create a quiesced snapshot because VMware Tools are not running in the guest.",
                    );
                }
            } else {
                st.stats.plain_snapshot_requests += 1;
            }
            let snap = create_snapshot(st, &this, &name);
            st.stats.snapshots_created += 1;
            new_task(
                st,
                method,
                Some(("VirtualMachineSnapshot".to_owned(), snap)),
            )
        }
        "RemoveSnapshot_Task" => {
            let Some(snap) = st.snapshots.remove(&this) else {
                return not_found(&this);
            };
            if let Some(vm) = st.vm_mut(&snap.vm) {
                vm.snapshots.retain(|s| *s != this);
            }
            st.stats.snapshots_removed += 1;
            new_task(st, method, None)
        }
        "QueryChangedDiskAreas" => {
            st.stats.change_queries += 1;
            query_changed(st, &this, m)
        }
        _ => fault(
            "MethodNotFound",
            &format!("Method {method} not supported by the simulator"),
        ),
    }
}

fn not_found(id: &str) -> Resp {
    fault(
        "ManagedObjectNotFound",
        &format!("The object '{id}' has already been deleted or has not been completely created"),
    )
}

/// A task that ends in `kind`'s fault (after the configured polls).
fn failed_task(st: &mut State, method: &str, kind: &str, message: &str) -> Resp {
    let id = st.id("task");
    let polls_left = st.task_polls;
    st.tasks.insert(
        id.clone(),
        Task {
            polls_left,
            result: None,
            error: Some((kind.to_owned(), message.to_owned())),
        },
    );
    ok(method, &mo("returnval", "Task", &id))
}

fn new_task(st: &mut State, method: &str, result: Option<(String, String)>) -> Resp {
    let id = st.id("task");
    let polls_left = st.task_polls;
    st.tasks.insert(
        id.clone(),
        Task {
            polls_left,
            result,
            error: None,
        },
    );
    response(
        StatusCode::OK,
        envelope(&format!(
            "<{method}Response xmlns=\"urn:vim25\">{}</{method}Response>",
            mo("returnval", "Task", &id)
        )),
    )
}

fn create_snapshot(st: &mut State, vm_id: &str, name: &str) -> String {
    let id = st.id("snapshot");
    let Some(vm) = st.vm_mut(vm_id) else {
        return id;
    };
    let depth = vm.snapshots.len();
    let cbt = vm.cbt_enabled;
    let mut disks = Vec::new();
    for d in &mut vm.disks {
        if cbt && d.epoch.is_none() {
            // The stun activates CBT.
            d.epoch = Some(new_epoch());
            d.seq = 0;
            d.writes.clear();
        }
        let (file, parent) = disk_files(d, depth);
        disks.push(SnapDisk {
            key: d.key,
            capacity: d.capacity,
            backing: d.backing.clone(),
            file,
            uuid: d.uuid.clone(),
            change_id: if cbt { d.change_id() } else { None },
            seq: d.seq,
            epoch: if cbt { d.epoch.clone() } else { None },
            parent,
            controller_key: d.controller_key,
            unit: d.unit,
            thin: d.thin,
            eager: d.eager,
        });
        if cbt && d.epoch.is_some() {
            d.seq += 1;
        }
    }
    vm.snapshots.push(id.clone());
    let hw = vm.hw.clone();
    let vm_name = vm.name.clone();
    let vm = vm.id.clone();
    st.snapshots.insert(
        id.clone(),
        SimSnapshot {
            vm,
            name: name.to_owned(),
            hw,
            vm_name,
            disks,
        },
    );
    id
}

/// File and parent of a disk's state at a snapshot depth (0: base disk).
fn disk_files(d: &SimDisk, depth: usize) -> (String, Option<String>) {
    let name = |n: usize| {
        if n == 0 {
            d.ds_file()
        } else {
            d.ds_file().replace(".vmdk", &format!("-{n:06}.vmdk"))
        }
    };
    (name(depth), depth.checked_sub(1).map(name))
}

fn retrieve_properties(st: &mut State, m: &Element) -> Resp {
    let Some(spec) = m.child("specSet") else {
        return fault("InvalidArgument", "specSet");
    };
    let paths: Vec<&str> = spec
        .path(&["propSet"])
        .map(|p| {
            p.children_named("pathSet")
                .map(|e| e.text.as_str())
                .collect()
        })
        .unwrap_or_default();
    let Some(obj) = spec.path(&["objectSet", "obj"]) else {
        return fault("InvalidArgument", "objectSet");
    };
    let kind = obj.mo_type.clone().unwrap_or_default();
    let id = obj.text.clone();
    let mut objects = String::new();
    match kind.as_str() {
        "ContainerView" => {
            let types = st
                .views
                .get(&id)
                .cloned()
                .unwrap_or_else(|| vec!["VirtualMachine".to_owned()]);
            for t in &types {
                if t == "VirtualMachine" {
                    for v in &st.vms {
                        let mut props = vec![prop_str("name", &v.name)];
                        if paths.contains(&"parent") {
                            props.push(prop_mo("parent", "Folder", &v.folder));
                        }
                        objects.push_str(&object("VirtualMachine", &v.id, &props));
                    }
                } else {
                    objects.push_str(&hardware::view_objects(t, &paths));
                }
            }
        }
        "VirtualMachine" => {
            let Some(vm) = st.vms.iter().find(|v| v.id == id) else {
                return not_found(&id);
            };
            let mut props = Vec::new();
            for p in &paths {
                match *p {
                    "name" => props.push(prop_str("name", &vm.name)),
                    "parent" => props.push(prop_mo("parent", "Folder", &vm.folder)),
                    "config.changeTrackingEnabled" => props.push(format!(
                        "<propSet><name>config.changeTrackingEnabled</name><val xsi:type=\"xsd:boolean\">{}</val></propSet>",
                        vm.cbt_enabled
                    )),
                    "config.hardware.device" => {
                        props.push(device_prop(&vm.hw, &hardware::vm_snap_disks(vm)));
                    }
                    "config" => props.push(hardware::config_prop(&vm.name, &vm.hw, &hardware::vm_snap_disks(vm))),
                    "runtime.powerState" => props.push(prop_str(
                        "runtime.powerState",
                        if vm.powered_on { "poweredOn" } else { "poweredOff" },
                    )),
                    "snapshot" if !vm.snapshots.is_empty() => {
                        props.push(snapshot_prop(st, vm));
                    }
                    _ => {}
                }
            }
            objects.push_str(&object("VirtualMachine", &id, &props));
        }
        "VirtualMachineSnapshot" => {
            let Some(s) = st.snapshots.get(&id) else {
                return not_found(&id);
            };
            let mut props = Vec::new();
            if paths.contains(&"config.hardware.device") {
                props.push(device_prop(&s.hw, &s.disks));
            }
            if paths.contains(&"config") {
                props.push(hardware::config_prop(&s.vm_name, &s.hw, &s.disks));
            }
            objects.push_str(&object("VirtualMachineSnapshot", &id, &props));
        }
        "Folder" | "Datacenter" => {
            let added = st
                .folders
                .iter()
                .find(|(f, _)| *f == id)
                .map(|(_, n)| n.clone());
            let (name, parent) = match (id.as_str(), &added) {
                ("group-d1", _) => ("Datacenters", None),
                ("datacenter-1", _) => (SIM_DATACENTER, Some(("Folder", "group-d1"))),
                ("group-v1", _) => ("vm", Some(("Datacenter", "datacenter-1"))),
                ("group-h1", _) => ("host", Some(("Datacenter", "datacenter-1"))),
                (_, Some(n)) => (n.as_str(), Some(("Folder", hardware::ROOT_VM_FOLDER))),
                _ => return not_found(&id),
            };
            let mut props = Vec::new();
            for p in &paths {
                match *p {
                    "name" => props.push(prop_str("name", name)),
                    "parent" => {
                        if let Some((k, v)) = parent {
                            props.push(prop_mo("parent", k, v));
                        }
                    }
                    "vmFolder" if kind == "Datacenter" => {
                        props.push(prop_mo("vmFolder", "Folder", hardware::ROOT_VM_FOLDER));
                    }
                    "hostFolder" if kind == "Datacenter" => {
                        props.push(prop_mo("hostFolder", "Folder", "group-h1"));
                    }
                    _ => {}
                }
            }
            objects.push_str(&object(&kind, &id, &props));
        }
        "HostSystem"
        | "ClusterComputeResource"
        | "ComputeResource"
        | "ResourcePool"
        | "Datastore"
        | "Network" => match hardware::inventory_props(&kind, &id, &paths) {
            Some(props) => objects.push_str(&object(&kind, &id, &props)),
            None => return not_found(&id),
        },
        "Task" => {
            let Some(t) = st.tasks.get_mut(&id) else {
                return not_found(&id);
            };
            let state = if t.polls_left > 0 {
                t.polls_left -= 1;
                "running"
            } else if t.error.is_some() {
                "error"
            } else {
                "success"
            };
            let result = match (&t.result, state) {
                (Some((k, v)), "success") => {
                    format!("<result type=\"{k}\" xsi:type=\"ManagedObjectReference\">{v}</result>")
                }
                _ => String::new(),
            };
            let error = match (&t.error, state) {
                (Some((k, msg)), "error") => format!(
                    "<error><fault xsi:type=\"{k}\"></fault><localizedMessage>{}</localizedMessage></error>",
                    escape(msg)
                ),
                _ => String::new(),
            };
            let info = format!(
                "<propSet><name>info</name><val xsi:type=\"TaskInfo\"><key>{id}</key><task type=\"Task\">{id}</task><name>task</name><descriptionId>task</descriptionId><state>{state}</state><cancelled>false</cancelled><cancelable>false</cancelable>{error}{result}</val></propSet>"
            );
            objects.push_str(&object("Task", &id, &[info]));
        }
        _ => return not_found(&id),
    }
    ok(
        "RetrievePropertiesEx",
        &format!("<returnval>{objects}</returnval>"),
    )
}

fn object(kind: &str, id: &str, props: &[String]) -> String {
    format!(
        "<objects>{}{}</objects>",
        mo("obj", kind, id),
        props.concat()
    )
}

fn prop_str(name: &str, v: &str) -> String {
    format!(
        "<propSet><name>{name}</name><val xsi:type=\"xsd:string\">{}</val></propSet>",
        escape(v)
    )
}

fn prop_mo(name: &str, kind: &str, v: &str) -> String {
    format!(
        "<propSet><name>{name}</name><val type=\"{kind}\" xsi:type=\"ManagedObjectReference\">{v}</val></propSet>"
    )
}

fn device_prop(hw: &Hardware, disks: &[SnapDisk]) -> String {
    format!(
        "<propSet><name>config.hardware.device</name><val xsi:type=\"ArrayOfVirtualDevice\">{}</val></propSet>",
        hardware::devices_xml(hw, disks, "VirtualDevice")
    )
}

fn snapshot_prop(st: &State, vm: &SimVm) -> String {
    let mut tree = String::new();
    for (n, sid) in vm.snapshots.iter().enumerate().rev() {
        let name = st
            .snapshots
            .get(sid)
            .map(|s| s.name.as_str())
            .unwrap_or_default();
        let tag = if n == 0 {
            "rootSnapshotList"
        } else {
            "childSnapshotList"
        };
        tree = format!(
            "<{tag}>{}{}<name>{}</name><description></description><id>{}</id><createTime>2026-11-24T23:00:00Z</createTime><state>poweredOn</state><quiesced>false</quiesced>{tree}<replaySupported>false</replaySupported></{tag}>",
            mo("snapshot", "VirtualMachineSnapshot", sid),
            mo("vm", "VirtualMachine", &vm.id),
            escape(name),
            n + 1
        );
    }
    let current = vm.snapshots.last().map_or(String::new(), |s| {
        mo("currentSnapshot", "VirtualMachineSnapshot", s)
    });
    format!(
        "<propSet><name>snapshot</name><val xsi:type=\"VirtualMachineSnapshotInfo\">{current}{tree}</val></propSet>"
    )
}

fn query_changed(st: &mut State, vm_id: &str, m: &Element) -> Resp {
    let snap_id = text(m, "snapshot").to_owned();
    let Ok(key) = text(m, "deviceKey").parse::<i32>() else {
        return fault(
            "InvalidArgument",
            "A specified parameter was not correct: deviceKey",
        );
    };
    let Ok(start) = text(m, "startOffset").parse::<u64>() else {
        return fault(
            "InvalidArgument",
            "A specified parameter was not correct: startOffset",
        );
    };
    let change_id = text(m, "changeId").to_owned();
    let page = st.change_page;
    let Some(vm) = st.vms.iter().find(|v| v.id == vm_id) else {
        return not_found(vm_id);
    };
    let Some(snap) = st.snapshots.get(&snap_id).filter(|s| s.vm == vm_id) else {
        return not_found(&snap_id);
    };
    let (Some(sd), Some(disk)) = (
        snap.disks.iter().find(|d| d.key == key),
        vm.disks.iter().find(|d| d.key == key),
    ) else {
        return fault(
            "InvalidArgument",
            "A specified parameter was not correct: deviceKey",
        );
    };
    if start >= sd.capacity {
        return fault(
            "InvalidArgument",
            "A specified parameter was not correct: startOffset",
        );
    }
    let Some(epoch) = sd.epoch.as_deref().filter(|_| disk.epoch.is_some()) else {
        return fault(
            "FileFault",
            &format!("Error caused by file {} (noEpoch)", sd.file),
        );
    };
    let end = start.saturating_add(page).min(sd.capacity);
    let mut areas: Vec<(u64, u64)> = Vec::new();
    if change_id == "*" {
        let Ok(f) = File::open(&disk.local) else {
            return fault("FileFault", "Cannot open the disk");
        };
        let mut block = vec![0u8; usize::try_from(ALLOC_BLOCK).unwrap_or(65536)];
        let mut at = start - start % ALLOC_BLOCK;
        while at < end {
            let n = usize::try_from(ALLOC_BLOCK.min(sd.capacity - at)).unwrap_or(0);
            if f.read_exact_at(&mut block[..n], at).is_err() {
                return fault("FileFault", "Cannot read the disk");
            }
            if block[..n].iter().any(|&b| b != 0) {
                areas.push((at, at + n as u64));
            }
            at += ALLOC_BLOCK;
        }
    } else {
        let from_seq = change_id
            .rsplit_once('/')
            .filter(|(e, _)| *e == epoch)
            .and_then(|(_, s)| s.parse::<u64>().ok())
            .filter(|s| *s <= sd.seq);
        let Some(from_seq) = from_seq else {
            return fault(
                "FileFault",
                &format!(
                    "Error caused by file {}: unknown change id {change_id}",
                    sd.file
                ),
            );
        };
        for (tag, s, l) in &disk.writes {
            if *tag > from_seq && *tag <= sd.seq {
                areas.push((*s, s + l));
            }
        }
    }
    // Clip to the page, sort, merge.
    let mut clipped: Vec<(u64, u64)> = areas
        .into_iter()
        .map(|(a, b)| (a.max(start), b.min(end)))
        .filter(|(a, b)| a < b)
        .collect();
    clipped.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (a, b) in clipped {
        match merged.last_mut() {
            Some(last) if last.1 >= a => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    let mut inner = format!(
        "<returnval><startOffset>{start}</startOffset><length>{}</length>",
        end - start
    );
    for (a, b) in merged {
        inner.push_str(&format!(
            "<changedArea><start>{a}</start><length>{}</length></changedArea>",
            b - a
        ));
    }
    inner.push_str("</returnval>");
    ok("QueryChangedDiskAreas", &inner)
}
