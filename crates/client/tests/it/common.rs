//! Fixtures: a CA with a server certificate for `localhost`/`127.0.0.1`, an in-process NBD
//! server with TLS on 127.0.0.1:0, an export that records the requests it serves, `qemu-img`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use sendense_nbd::{
    BlockExtent, Export, ExportError, ExportRegistry, MemoryExport, Server, ServerOptions,
    ZeroFlags, tls,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A CA and a server certificate in a folder (QEMU names).
pub(crate) struct Certs {
    pub(crate) dir: PathBuf,
    pub(crate) server: Arc<rustls::ServerConfig>,
}

impl Certs {
    pub(crate) fn ca(&self) -> PathBuf {
        self.dir.join(tls::CA_CERT)
    }
}

/// Writes `ca-cert.pem`, `server-cert.pem`, `server-key.pem` into `dir`.
pub(crate) fn make_certs(dir: &Path) -> Certs {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(DnType::CommonName, "client test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, &ca_key);
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, "localhost");
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = p.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join(tls::CA_CERT), ca_cert.pem()).unwrap();
    std::fs::write(dir.join(tls::SERVER_CERT), cert.pem()).unwrap();
    std::fs::write(dir.join(tls::SERVER_KEY), key.serialize_pem()).unwrap();
    let server = tls::server_config_from_dir(dir, false).unwrap();
    Certs {
        dir: dir.to_owned(),
        server,
    }
}

/// An in-process NBD server; stops when dropped.
pub(crate) struct TestNbd {
    pub(crate) addr: SocketAddr,
    pub(crate) registry: Arc<ExportRegistry>,
    _stop: oneshot::Sender<()>,
}

impl TestNbd {
    pub(crate) async fn start(tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let registry = Arc::new(ExportRegistry::new());
        let server = Server::new(
            Arc::clone(&registry),
            ServerOptions {
                tls,
                ..ServerOptions::default()
            },
        );
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = server
                .serve(listener, async move {
                    let _ = rx.await;
                })
                .await;
        });
        Self {
            addr,
            registry,
            _stop: tx,
        }
    }

    /// Adds a recording export and answers it.
    pub(crate) fn add(&self, name: &str, initial: &[u8]) -> Arc<Recording> {
        let export = Arc::new(Recording::new(initial));
        self.registry
            .add(name, Arc::clone(&export) as Arc<dyn Export>)
            .unwrap();
        export
    }

    /// Adds an export of `size` bytes holding only `pieces` (the rest unallocated).
    pub(crate) fn add_sparse(
        &self,
        name: &str,
        size: u64,
        pieces: &[(u64, &[u8])],
    ) -> Arc<Recording> {
        let export = Arc::new(Recording {
            inner: MemoryExport::new(size),
            ops: Mutex::new(Vec::new()),
        });
        for (offset, data) in pieces {
            export.inner.write(*offset, data, false).unwrap();
        }
        self.registry
            .add(name, Arc::clone(&export) as Arc<dyn Export>)
            .unwrap();
        export
    }

    pub(crate) fn uri(&self, tls: bool, name: &str) -> String {
        let scheme = if tls { "nbds" } else { "nbd" };
        format!("{scheme}://127.0.0.1:{}/{name}", self.addr.port())
    }
}

/// A request an export served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Write(u64, u64),
    Zero(u64, u64),
    Flush,
}

/// A memory export that records writes, zeroes and flushes.
#[derive(Debug)]
pub(crate) struct Recording {
    inner: MemoryExport,
    ops: Mutex<Vec<Op>>,
}

impl Recording {
    fn new(initial: &[u8]) -> Self {
        Self {
            inner: MemoryExport::with_data(initial),
            ops: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn ops(&self) -> Vec<Op> {
        self.ops.lock().unwrap().clone()
    }

    pub(crate) fn contents(&self) -> Vec<u8> {
        let mut buf = vec![0u8; usize::try_from(self.inner.size()).unwrap()];
        self.inner.read(0, &mut buf).unwrap();
        buf
    }
}

impl Export for Recording {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn is_read_only(&self) -> bool {
        false
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), ExportError> {
        self.inner.read(offset, buf)
    }
    fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), ExportError> {
        self.ops
            .lock()
            .unwrap()
            .push(Op::Write(offset, data.len() as u64));
        self.inner.write(offset, data, fua)
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> Result<(), ExportError> {
        self.ops.lock().unwrap().push(Op::Zero(offset, len));
        self.inner.write_zeroes(offset, len, flags)
    }
    fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<(), ExportError> {
        self.inner.trim(offset, len, fua)
    }
    fn flush(&self) -> Result<(), ExportError> {
        self.ops.lock().unwrap().push(Op::Flush);
        self.inner.flush()
    }
    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<BlockExtent>, ExportError> {
        self.inner.block_status(offset, len)
    }
}

/// Deterministic non-zero bytes.
pub(crate) fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| u8::try_from(i % 251).unwrap().wrapping_add(seed) | 1)
        .collect()
}

/// Runs `qemu-img`, failing loudly when it is missing or fails.
pub(crate) fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img is required for this test (apt-get install qemu-utils)");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
