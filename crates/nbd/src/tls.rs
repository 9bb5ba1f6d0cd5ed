//! TLS material: rustls configurations, and the X.509 certificates they load.
//!
//! Certificates are read from PEM files named as QEMU names them in its
//! x509 credentials folder (`ca-cert.pem`, `server-cert.pem`,
//! `server-key.pem`, `client-cert.pem`, `client-key.pem`), so one folder
//! serves us, `qemu-img` and libnbd alike. Cipher suites are ordered
//! AES-256-GCM, AES-128-GCM, then the rest, and the server enforces its own
//! order (AES-GCM is hardware accelerated on the machines we target).
//!
//! It also makes that material. [`ensure_certificates`] creates a private CA
//! and a server certificate signed by it in a folder of that layout (the CA
//! key `ca-key.pem` beside them), and reuses them later. Client certificates
//! come from such a CA: [`issue_client_cert`] makes a new key pair,
//! [`sign_client_csr`] signs a peer's certificate signing request, and
//! [`issue_client_folder`] writes QEMU's client layout (`ca-cert.pem`,
//! `client-cert.pem`, `client-key.pem`). Client certificates get the
//! `clientAuth` extended key usage and nothing else, whatever a request asks.
//!
//! Every file is written 0600 (folders made 0700) through a fresh temporary
//! file (a random name, created exclusively: a file a crash left behind is
//! never reused) that is fsynced and renamed into place; then the folder is
//! fsynced, so the rename survives a power loss ([`write_atomic`]).

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::NbdError;

/// CA certificate file name in a QEMU x509 folder.
pub const CA_CERT: &str = "ca-cert.pem";
/// CA private key file name (beside the CA certificate; only the CA's owner has it).
pub const CA_KEY: &str = "ca-key.pem";
/// Server certificate file name.
pub const SERVER_CERT: &str = "server-cert.pem";
/// Server key file name.
pub const SERVER_KEY: &str = "server-key.pem";
/// Client certificate file name.
pub const CLIENT_CERT: &str = "client-cert.pem";
/// Client key file name.
pub const CLIENT_KEY: &str = "client-key.pem";

/// Mode of every file this module writes: owner read and write only.
pub const FILE_MODE: u32 = 0o600;
/// Mode of every folder this module makes: owner only.
pub const DIR_MODE: u32 = 0o700;

/// Longest name [`issue_client_cert`] and [`sign_client_csr`] put into a
/// certificate's common name (X.509's upper bound for it).
pub const MAX_CLIENT_NAME_LEN: usize = 64;

/// Which client certificates a server asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCerts {
    /// No client certificate is asked for.
    None,
    /// Every client must present a certificate its CA issued.
    Required,
    /// A client may present one (then it must verify against the CA) or none.
    Optional,
}

/// Server configuration from a QEMU-style x509 folder. With `verify_clients`,
/// clients must present a certificate signed by `ca-cert.pem`.
///
/// # Errors
/// Unreadable or invalid PEM files, or a key not matching the certificate.
pub fn server_config_from_dir(
    dir: &Path,
    verify_clients: bool,
) -> Result<Arc<ServerConfig>, NbdError> {
    let mode = if verify_clients {
        ClientCerts::Required
    } else {
        ClientCerts::None
    };
    server_config_from_dir_with(dir, mode)
}

/// Server configuration from a QEMU-style x509 folder; client certificates
/// are verified against the folder's `ca-cert.pem` as `clients` says.
///
/// # Errors
/// Unreadable or invalid PEM files, or a key not matching the certificate.
pub fn server_config_from_dir_with(
    dir: &Path,
    clients: ClientCerts,
) -> Result<Arc<ServerConfig>, NbdError> {
    let ca = dir.join(CA_CERT);
    server_config_with(&dir.join(SERVER_CERT), &dir.join(SERVER_KEY), &ca, clients)
}

/// Server configuration from a certificate chain and key; client
/// certificates are verified against the CA bundle `client_ca` as `clients`
/// says (`client_ca` is not read with [`ClientCerts::None`]).
///
/// # Errors
/// Unreadable or invalid PEM files, or a key not matching the certificate.
pub fn server_config_with(
    cert_chain: &Path,
    key: &Path,
    client_ca: &Path,
    clients: ClientCerts,
) -> Result<Arc<ServerConfig>, NbdError> {
    let provider = provider();
    let certs = read_certs(cert_chain)?;
    let key = read_key(key)?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)?;
    let builder = if clients == ClientCerts::None {
        builder.with_no_client_auth()
    } else {
        let roots = Arc::new(read_roots(client_ca)?);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider);
        let verifier = if clients == ClientCerts::Optional {
            verifier.allow_unauthenticated()
        } else {
            verifier
        };
        builder.with_client_cert_verifier(verifier.build()?)
    };
    let mut config = builder.with_single_cert(certs, key)?;
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// Client configuration trusting the CA in `ca_pem`, optionally presenting a
/// client certificate `(cert_pem, key_pem)`.
///
/// # Errors
/// Unreadable or invalid PEM files.
pub fn client_config(
    ca_pem: &Path,
    client_cert: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, NbdError> {
    let roots = read_roots(ca_pem)?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)?
        .with_root_certificates(roots);
    let config = match client_cert {
        Some((cert, key)) => builder.with_client_auth_cert(read_certs(cert)?, read_key(key)?)?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Client configuration from a QEMU-style folder: `ca-cert.pem`, and the
/// client certificate and key when both files exist.
///
/// # Errors
/// Unreadable or invalid PEM files.
pub fn client_config_from_dir(dir: &Path) -> Result<Arc<ClientConfig>, NbdError> {
    let cert = dir.join(CLIENT_CERT);
    let key = dir.join(CLIENT_KEY);
    let auth = (cert.exists() && key.exists()).then_some((cert.as_path(), key.as_path()));
    client_config(&dir.join(CA_CERT), auth)
}

/// A client certificate and its private key, both PEM.
pub struct IssuedCert {
    /// The certificate, signed by the CA.
    pub cert_pem: String,
    /// Its private key (PKCS#8): keep it 0600.
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Issues a client certificate for `name` (its common name) with a new key
/// pair, signed by the CA whose certificate and key are given in PEM. The
/// certificate may only authenticate TLS clients (`clientAuth`).
///
/// # Errors
/// [`NbdError::InvalidArgument`] for a name that is empty, longer than
/// [`MAX_CLIENT_NAME_LEN`] or holds control characters;
/// [`NbdError::Certificate`] when the CA material does not parse.
pub fn issue_client_cert(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    name: &str,
) -> Result<IssuedCert, NbdError> {
    let issuer = issuer(ca_cert_pem, ca_key_pem)?;
    let params = client_params(name)?;
    let key = KeyPair::generate().map_err(cert_err("generating the client key"))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(cert_err("signing the client certificate"))?;
    Ok(IssuedCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Signs a peer's PEM certificate signing request as a client certificate
/// for `name`. Only the request's public key is used (after its signature
/// checks out): the subject, key usages and extensions are ours, so a
/// request cannot ask to become a CA or a server.
///
/// # Errors
/// [`NbdError::InvalidArgument`] for a bad name (see [`issue_client_cert`]);
/// [`NbdError::Certificate`] when the request or the CA material does not
/// parse, or the request's signature is wrong.
pub fn sign_client_csr(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    csr_pem: &str,
    name: &str,
) -> Result<String, NbdError> {
    let issuer = issuer(ca_cert_pem, ca_key_pem)?;
    let params = client_params(name)?;
    let request = CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(cert_err("parsing the certificate signing request"))?;
    let csr = CertificateSigningRequestParams {
        params,
        public_key: request.public_key,
    };
    let cert = csr
        .signed_by(&issuer)
        .map_err(cert_err("signing the client certificate"))?;
    Ok(cert.pem())
}

/// Makes sure `dir` holds a CA and a server certificate valid for `hosts`
/// (plus `localhost` and `127.0.0.1`; wildcard addresses are skipped), in
/// QEMU's server layout with the CA key beside it; creates them when the
/// folder has none. Returns true when it created them.
///
/// # Errors
/// [`NbdError::IncompleteTlsFolder`] when only some of the files exist (we
/// refuse to guess which to trust); [`NbdError::TlsFile`] when a file cannot
/// be written; [`NbdError::Certificate`] when generation fails.
pub fn ensure_certificates(dir: &Path, hosts: &[String]) -> Result<bool, NbdError> {
    let files = [CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY];
    let present: Vec<bool> = files.iter().map(|f| dir.join(f).exists()).collect();
    if present.iter().all(|p| *p) {
        return Ok(false);
    }
    if let Some(i) = present
        .iter()
        .position(|p| !*p)
        .filter(|_| present.iter().any(|p| *p))
    {
        return Err(NbdError::IncompleteTlsFolder {
            dir: dir.to_path_buf(),
            missing: files[i],
        });
    }
    create_private_dir(dir).map_err(file_err(dir))?;

    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into()];
    for h in hosts {
        if !h.is_empty() && !names.contains(h) && h != "0.0.0.0" && h != "::" {
            names.push(h.clone());
        }
    }
    let (ca_pem, ca_key_pem, cert_pem, key_pem) =
        generate(&names).map_err(cert_err("generating the CA and server certificate"))?;
    write_private(&dir.join(CA_KEY), ca_key_pem.as_bytes())?;
    write_private(&dir.join(SERVER_KEY), key_pem.as_bytes())?;
    write_private(&dir.join(SERVER_CERT), cert_pem.as_bytes())?;
    // The CA certificate last: its presence marks a complete folder.
    write_private(&dir.join(CA_CERT), ca_pem.as_bytes())?;
    Ok(true)
}

/// Issues a client certificate for `name` with the CA in `ca_dir`
/// (`ca-cert.pem`, `ca-key.pem`, as [`ensure_certificates`] makes them) and
/// writes QEMU's client layout to `out`: `ca-cert.pem`, `client-cert.pem`,
/// `client-key.pem` (each 0600, the folder 0700, made if missing).
/// `nbdinfo`/`nbdcopy` (`tls-certificates=OUT`), `qemu-img`
/// (`tls-creds-x509,dir=OUT,endpoint=client`) and [`client_config_from_dir`]
/// take that folder as it is.
///
/// # Errors
/// [`NbdError::NoCa`] when `ca_dir` has no CA; [`NbdError::InvalidArgument`]
/// for a bad name and [`NbdError::Certificate`] for bad CA material (see
/// [`issue_client_cert`]); [`NbdError::TlsFile`] when a file cannot be read or
/// written.
pub fn issue_client_folder(ca_dir: &Path, name: &str, out: &Path) -> Result<(), NbdError> {
    let read = |file: &'static str| {
        let path = ca_dir.join(file);
        fs::read_to_string(&path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                NbdError::NoCa {
                    dir: ca_dir.to_path_buf(),
                    file,
                }
            } else {
                NbdError::TlsFile { path, source }
            }
        })
    };
    let ca_pem = read(CA_CERT)?;
    let ca_key = read(CA_KEY)?;
    let issued = issue_client_cert(&ca_pem, &ca_key, name)?;
    create_private_dir(out).map_err(file_err(out))?;
    write_private(&out.join(CA_CERT), ca_pem.as_bytes())?;
    write_private(&out.join(CLIENT_KEY), issued.key_pem.as_bytes())?;
    write_private(&out.join(CLIENT_CERT), issued.cert_pem.as_bytes())?;
    Ok(())
}

/// Makes `dir` (and missing parents) with mode 0700; an existing `dir` is
/// set to 0700.
///
/// # Errors
/// The folder cannot be made or its mode set.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
}

/// [`sendense_io::write_atomic`] (exact `mode`, never a reused temporary, folder fsynced),
/// after removing the `NAME.tmp` an older hub's crashed write could have left.
///
/// # Errors
/// The failing I/O call's error; the temporary file is removed.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    // Older hubs wrote through `NAME.tmp` (extension replaced): a crash could leave one.
    if let Err(e) = fs::remove_file(path.with_extension("tmp"))
        && e.kind() != std::io::ErrorKind::NotFound
    {
        return Err(e);
    }
    sendense_io::write_atomic(path, bytes, mode)
}

/// [`write_atomic`] with [`FILE_MODE`], the error naming the file.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), NbdError> {
    write_atomic(path, bytes, FILE_MODE).map_err(file_err(path))
}

fn file_err(path: &Path) -> impl FnOnce(std::io::Error) -> NbdError + '_ {
    move |source| NbdError::TlsFile {
        path: path.to_path_buf(),
        source,
    }
}

/// (CA cert, CA key, server cert, server key), all PEM; the server certificate
/// names `names` (the first is its common name).
fn generate(names: &[String]) -> Result<(String, String, String, String), rcgen::Error> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, "Sendense hub CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca, ca_key);

    let mut server = CertificateParams::new(names.to_vec())?;
    server.distinguished_name = DistinguishedName::new();
    if let Some(first) = names.first() {
        server
            .distinguished_name
            .push(DnType::CommonName, first.clone());
    }
    server.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate()?;
    let cert = server.signed_by(&key, &issuer)?;
    Ok((ca_cert.pem(), ca_key_pem, cert.pem(), key.serialize_pem()))
}

fn issuer(ca_cert_pem: &str, ca_key_pem: &str) -> Result<Issuer<'static, KeyPair>, NbdError> {
    let key = KeyPair::from_pem(ca_key_pem).map_err(cert_err("parsing the CA key"))?;
    Issuer::from_ca_cert_pem(ca_cert_pem, key).map_err(cert_err("parsing the CA certificate"))
}

fn client_params(name: &str) -> Result<CertificateParams, NbdError> {
    if name.is_empty() || name.len() > MAX_CLIENT_NAME_LEN || name.chars().any(char::is_control) {
        return Err(NbdError::InvalidArgument {
            what: "client name must be 1 to 64 bytes without control characters",
        });
    }
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::ExplicitNoCa;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    // QEMU's x509 credentials refuse a client certificate whose key usage lacks
    // keyEncipherment, even with an ECDSA key.
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn cert_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> NbdError {
    move |source| NbdError::Certificate { what, source }
}

/// The ring provider with AES-GCM suites first.
fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites.sort_by_key(|s| {
        let name = format!("{:?}", s.suite());
        if name.contains("AES_256_GCM") {
            0
        } else if name.contains("AES_128_GCM") {
            1
        } else {
            2
        }
    });
    Arc::new(p)
}

fn pem_err(path: &Path) -> impl FnOnce(rustls_pki_types::pem::Error) -> NbdError + '_ {
    move |source| NbdError::Pem {
        path: path.to_path_buf(),
        source,
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, NbdError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem_err(path))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err(path))?;
    if certs.is_empty() {
        return Err(NbdError::InvalidArgument {
            what: "PEM file holds no certificate",
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, NbdError> {
    PrivateKeyDer::from_pem_file(path).map_err(pem_err(path))
}

fn read_roots(path: &Path) -> Result<RootCertStore, NbdError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_aes_gcm_suites_first() {
        let p = provider();
        let first = format!("{:?}", p.cipher_suites[0].suite());
        let second = format!("{:?}", p.cipher_suites[1].suite());
        assert!(
            first.contains("AES_256_GCM") && second.contains("AES_256_GCM"),
            "{first} {second}"
        );
    }

    /// A CA (cert PEM, key PEM) and a server certificate folder signed by it.
    fn ca_folder(dir: &Path) -> (String, String) {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "test CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, KeyPair::from_pem(&ca_key.serialize_pem()).unwrap());
        let mut server = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = KeyPair::generate().unwrap();
        let server_cert = server.signed_by(&server_key, &issuer).unwrap();
        fs::write(dir.join(CA_CERT), ca_cert.pem()).unwrap();
        fs::write(dir.join(SERVER_CERT), server_cert.pem()).unwrap();
        fs::write(dir.join(SERVER_KEY), server_key.serialize_pem()).unwrap();
        (ca_cert.pem(), ca_key.serialize_pem())
    }

    /// Runs a TLS handshake in memory; Ok when both sides complete it.
    fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
    ) -> Result<(), rustls::Error> {
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut c = rustls::ClientConnection::new(client, name)?;
        let mut s = rustls::ServerConnection::new(server)?;
        for _ in 0..10 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            let mut rd = buf.as_slice();
            while !rd.is_empty() {
                s.read_tls(&mut rd).unwrap();
            }
            s.process_new_packets()?;
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            let mut rd = buf.as_slice();
            while !rd.is_empty() {
                c.read_tls(&mut rd).unwrap();
            }
            c.process_new_packets()?;
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(());
            }
        }
        Err(rustls::Error::General("handshake did not finish".into()))
    }

    fn client_folder(dir: &Path, ca_pem: &str, issued: Option<&IssuedCert>) {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join(CA_CERT), ca_pem).unwrap();
        if let Some(i) = issued {
            fs::write(dir.join(CLIENT_CERT), &i.cert_pem).unwrap();
            fs::write(dir.join(CLIENT_KEY), &i.key_pem).unwrap();
        }
    }

    #[test]
    fn required_client_certs_issued_certificate_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, ca_key) = ca_folder(dir.path());
        let issued = issue_client_cert(&ca, &ca_key, "backup-1").unwrap();
        client_folder(&dir.path().join("c"), &ca, Some(&issued));
        let server = server_config_from_dir_with(dir.path(), ClientCerts::Required).unwrap();

        let result = handshake(
            server,
            client_config_from_dir(&dir.path().join("c")).unwrap(),
        );

        assert!(result.is_ok(), "{result:?}");
    }

    #[test]
    fn required_client_certs_without_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = ca_folder(dir.path());
        client_folder(&dir.path().join("c"), &ca, None);
        let server = server_config_from_dir_with(dir.path(), ClientCerts::Required).unwrap();

        let result = handshake(
            server,
            client_config_from_dir(&dir.path().join("c")).unwrap(),
        );

        assert!(result.is_err());
    }

    #[test]
    fn required_client_certs_certificate_of_another_ca_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let (ca, _) = ca_folder(dir.path());
        let (other_ca, other_key) = ca_folder(other.path());
        let foreign = issue_client_cert(&other_ca, &other_key, "intruder").unwrap();
        client_folder(&dir.path().join("c"), &ca, Some(&foreign));
        let server = server_config_from_dir_with(dir.path(), ClientCerts::Required).unwrap();

        let result = handshake(
            server,
            client_config_from_dir(&dir.path().join("c")).unwrap(),
        );

        assert!(result.is_err());
    }

    #[test]
    fn optional_client_certs_without_certificate_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = ca_folder(dir.path());
        client_folder(&dir.path().join("c"), &ca, None);
        let server = server_config_from_dir_with(dir.path(), ClientCerts::Optional).unwrap();

        let result = handshake(
            server,
            client_config_from_dir(&dir.path().join("c")).unwrap(),
        );

        assert!(result.is_ok(), "{result:?}");
    }

    #[test]
    fn sign_client_csr_certificate_is_accepted_and_cannot_be_a_ca() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, ca_key) = ca_folder(dir.path());
        let mut wants_ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        wants_ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let agent_key = KeyPair::generate().unwrap();
        let csr = wants_ca
            .serialize_request(&agent_key)
            .unwrap()
            .pem()
            .unwrap();

        let cert_pem = sign_client_csr(&ca, &ca_key, &csr, "agent-1").unwrap();

        let issued = IssuedCert {
            cert_pem,
            key_pem: agent_key.serialize_pem(),
        };
        client_folder(&dir.path().join("c"), &ca, Some(&issued));
        let server = server_config_from_dir_with(dir.path(), ClientCerts::Required).unwrap();
        assert!(
            handshake(
                server,
                client_config_from_dir(&dir.path().join("c")).unwrap()
            )
            .is_ok()
        );
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(!parsed.basic_constraints().unwrap().unwrap().value.ca);
    }

    #[test]
    fn sign_client_csr_garbage_is_a_certificate_error() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, ca_key) = ca_folder(dir.path());

        let err = sign_client_csr(&ca, &ca_key, "not a request", "agent-1").unwrap_err();

        assert!(matches!(err, NbdError::Certificate { .. }), "{err}");
    }

    #[test]
    fn issue_client_cert_empty_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, ca_key) = ca_folder(dir.path());

        let err = issue_client_cert(&ca, &ca_key, "").unwrap_err();

        assert!(matches!(err, NbdError::InvalidArgument { .. }), "{err}");
    }

    #[test]
    fn server_config_missing_files_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            server_config_from_dir(dir.path(), false),
            Err(NbdError::Pem { .. })
        ));
    }
    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn write_atomic_removes_the_temporary_an_older_hub_left() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("api.token");
        let legacy = dir.path().join("api.tmp");
        fs::write(&legacy, b"old secret of an older hub's crashed write").unwrap();

        write_atomic(&target, b"new", 0o600).unwrap();

        assert_eq!(
            (fs::read(&target).unwrap(), mode(&target), legacy.exists()),
            (b"new".to_vec(), 0o600, false)
        );
    }

    #[test]
    fn issue_client_folder_writes_qemu_client_layout_private() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        ensure_certificates(&tls, &[]).unwrap();
        let out = dir.path().join("client");

        issue_client_folder(&tls, "backup-1", &out).unwrap();

        let modes: Vec<u32> = [CA_CERT, CLIENT_CERT, CLIENT_KEY]
            .iter()
            .map(|f| mode(&out.join(f)))
            .collect();
        assert_eq!(
            (modes, mode(&out), fs::read(out.join(CA_CERT)).unwrap()),
            (vec![0o600; 3], 0o700, fs::read(tls.join(CA_CERT)).unwrap())
        );
    }

    #[test]
    fn issue_client_folder_certificate_is_accepted_by_the_folders_server() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        ensure_certificates(&tls, &[]).unwrap();
        let out = dir.path().join("client");
        issue_client_folder(&tls, "backup-1", &out).unwrap();
        let server = server_config_from_dir_with(&tls, ClientCerts::Required).unwrap();

        let result = handshake(server, client_config_from_dir(&out).unwrap());

        assert!(result.is_ok(), "{result:?}");
    }

    #[test]
    fn issue_client_folder_without_ca_names_the_missing_file() {
        let dir = tempfile::tempdir().unwrap();

        let err = issue_client_folder(dir.path(), "x", &dir.path().join("out")).unwrap_err();

        assert!(matches!(err, NbdError::NoCa { file: CA_CERT, .. }), "{err}");
    }

    #[test]
    fn ensure_certificates_on_empty_dir_creates_all_files_keys_private() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        assert!(ensure_certificates(&tls, &["hub.example".into()]).unwrap());
        for f in [CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY] {
            assert!(tls.join(f).exists(), "{f}");
        }
        assert_eq!((mode(&tls.join(SERVER_KEY)), mode(&tls)), (0o600, 0o700));
    }

    #[test]
    fn ensure_certificates_second_time_reuses_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ensure_certificates(dir.path(), &[]).unwrap());
        let before = fs::read(dir.path().join(SERVER_CERT)).unwrap();
        assert!(!ensure_certificates(dir.path(), &[]).unwrap());
        assert_eq!(fs::read(dir.path().join(SERVER_CERT)).unwrap(), before);
    }

    #[test]
    fn ensure_certificates_with_partial_folder_refuses() {
        let dir = tempfile::tempdir().unwrap();
        ensure_certificates(dir.path(), &[]).unwrap();
        fs::remove_file(dir.path().join(SERVER_KEY)).unwrap();
        let err = ensure_certificates(dir.path(), &[]).unwrap_err();
        assert!(
            matches!(
                err,
                NbdError::IncompleteTlsFolder {
                    missing: SERVER_KEY,
                    ..
                }
            ),
            "{err}"
        );
    }
}
