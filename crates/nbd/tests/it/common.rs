//! Shared fixtures: certificates in QEMU's folder layout, a server on
//! 127.0.0.1:0, external tool runners that fail loudly when a tool is missing.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use sendense_nbd::{
    BlockExtent, Client, ClientOptions, Export, ExportError, ExportRegistry, MemoryExport, Server,
    ServerOptions, ZeroFlags, tls,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Writes ca-cert.pem, server-cert.pem/-key.pem, client-cert.pem/-key.pem into `dir`.
pub(crate) fn make_certs(dir: &Path) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(DnType::CommonName, "Sendense test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, &ca_key);

    let leaf = |names: Vec<String>, cn: &str, eku: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![eku];
        let cert = p.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(
        vec!["localhost".into(), "127.0.0.1".into()],
        "localhost",
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_cert, client_key) = leaf(
        Vec::new(),
        "sendense-client",
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    std::fs::write(dir.join(tls::CA_CERT), ca_cert.pem()).unwrap();
    std::fs::write(dir.join(tls::SERVER_CERT), server_cert).unwrap();
    std::fs::write(dir.join(tls::SERVER_KEY), server_key).unwrap();
    std::fs::write(dir.join(tls::CLIENT_CERT), client_cert).unwrap();
    std::fs::write(dir.join(tls::CLIENT_KEY), client_key).unwrap();
}

/// A running server; dropping it without `stop` aborts it.
pub(crate) struct TestServer {
    pub(crate) addr: SocketAddr,
    pub(crate) registry: Arc<ExportRegistry>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl TestServer {
    pub(crate) async fn start(
        registry: Arc<ExportRegistry>,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Self {
        Self::start_with(
            registry,
            ServerOptions {
                tls,
                ..Default::default()
            },
        )
        .await
    }

    pub(crate) async fn start_with(registry: Arc<ExportRegistry>, options: ServerOptions) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Server::new(Arc::clone(&registry), options);
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            server
                .serve(listener, async move {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        Self {
            addr,
            registry,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    pub(crate) fn port(&self) -> u16 {
        self.addr.port()
    }

    pub(crate) fn options(&self, export: &str) -> ClientOptions {
        ClientOptions {
            export_name: export.into(),
            ..Default::default()
        }
    }

    pub(crate) async fn client(&self, export: &str) -> Client {
        Client::connect(self.addr, self.options(export))
            .await
            .unwrap()
    }

    /// Signals shutdown and waits for `serve` to return.
    pub(crate) async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(20), h)
                .await
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.abort();
        }
    }
}

/// Registry with a 64 MiB memory export "mem" (data at 1 MiB..2 MiB).
pub(crate) fn memory_registry() -> Arc<ExportRegistry> {
    let r = Arc::new(ExportRegistry::new());
    let mem = MemoryExport::new(64 << 20);
    mem.write(1 << 20, &vec![0xab; 1 << 20], false).unwrap();
    r.add("mem", Arc::new(mem)).unwrap();
    r
}

/// Path of an external tool; panics with a clear message when missing.
pub(crate) fn tool(name: &str) -> PathBuf {
    let out = Command::new("which").arg(name).output().unwrap();
    assert!(
        out.status.success(),
        "required tool `{name}` is not installed (apt-get install -y libnbd-bin nbdkit qemu-utils)"
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Runs a tool on the blocking pool (the server keeps running) and returns its output.
pub(crate) async fn run(name: &str, args: Vec<String>) -> Output {
    let path = tool(name);
    let shown = format!("{name} {}", args.join(" "));
    let out = tokio::task::spawn_blocking(move || Command::new(path).args(&args).output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "`{shown}` failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a tool expecting failure.
pub(crate) async fn run_fails(name: &str, args: Vec<String>) -> Output {
    let path = tool(name);
    let out = tokio::task::spawn_blocking(move || Command::new(path).args(&args).output())
        .await
        .unwrap()
        .unwrap();
    assert!(!out.status.success(), "`{name}` unexpectedly succeeded");
    out
}

pub(crate) fn random_bytes(len: usize) -> Vec<u8> {
    use rand::RngCore;
    let mut v = vec![0u8; len];
    rand::rng().fill_bytes(&mut v);
    v
}

/// A child process killed and reaped on drop (no leaked servers).
pub(crate) struct ChildGuard(pub(crate) Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // A child reading our stdin (nbdkit's `--run` command) ends when it closes, and nbdkit
        // then stops its server cleanly; any other child is killed.
        match self.0.stdin.take() {
            Some(stdin) => drop(stdin),
            None => {
                let _ = self.0.kill();
            }
        }
        let _ = self.0.wait();
    }
}

/// A port that was free a moment ago.
pub(crate) fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A server that daemonised itself once it listened (`qemu-nbd --fork`): killed through its
/// pid file when dropped.
pub(crate) struct Daemon {
    pid_file: PathBuf,
}

impl Daemon {
    /// Runs `cmd`, whose parent process exits once the server accepts connections, and
    /// fails the test if it did not start.
    pub(crate) fn start(mut cmd: Command, pid_file: &Path) -> Self {
        // The daemon keeps the standard streams it inherits: capturing them would wait for it.
        let status = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("{:?} could not be run: {e}", cmd.get_program()));
        assert!(
            status.success(),
            "{:?} did not start: {status}",
            cmd.get_program()
        );
        Self {
            pid_file: pid_file.to_owned(),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.pid_file) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
}

/// Starts `cmd` (an `nbdkit … --run 'echo ready; cat >/dev/null'`) and waits for the line
/// its `--run` command prints once nbdkit accepts connections. The command then waits on
/// stdin, so nbdkit lives until the guard drops.
pub(crate) fn start_when_ready(mut cmd: Command) -> ChildGuard {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{:?} could not be run: {e}", cmd.get_program()));
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        std::io::BufReader::new(out).read_line(&mut line).unwrap();
    }
    assert_eq!(
        line.trim(),
        "ready",
        "{:?} did not get ready",
        cmd.get_program()
    );
    ChildGuard(child)
}

/// A memory export whose reads at offset 0 block until `release` is called.
#[derive(Debug)]
pub(crate) struct GateExport {
    inner: MemoryExport,
    open: Mutex<bool>,
    cv: Condvar,
    pub(crate) entered: Mutex<bool>,
    entered_cv: Condvar,
}

impl GateExport {
    pub(crate) fn new(size: u64) -> Self {
        Self {
            inner: MemoryExport::new(size),
            open: Mutex::new(false),
            cv: Condvar::new(),
            entered: Mutex::new(false),
            entered_cv: Condvar::new(),
        }
    }

    pub(crate) fn release(&self) {
        *self.open.lock().unwrap() = true;
        self.cv.notify_all();
    }

    /// Blocks until a gated read has started.
    pub(crate) fn wait_entered(&self) {
        let mut e = self.entered.lock().unwrap();
        while !*e {
            e = self.entered_cv.wait(e).unwrap();
        }
    }
}

impl Export for GateExport {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn is_read_only(&self) -> bool {
        false
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), ExportError> {
        if offset == 0 {
            *self.entered.lock().unwrap() = true;
            self.entered_cv.notify_all();
            let mut open = self.open.lock().unwrap();
            while !*open {
                open = self.cv.wait(open).unwrap();
            }
        }
        self.inner.read(offset, buf)
    }
    fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), ExportError> {
        self.inner.write(offset, data, fua)
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> Result<(), ExportError> {
        self.inner.write_zeroes(offset, len, flags)
    }
    fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<(), ExportError> {
        self.inner.trim(offset, len, fua)
    }
    fn flush(&self) -> Result<(), ExportError> {
        self.inner.flush()
    }
    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<BlockExtent>, ExportError> {
        self.inner.block_status(offset, len)
    }
}

pub(crate) fn s(x: impl AsRef<str>) -> String {
    x.as_ref().to_owned()
}
