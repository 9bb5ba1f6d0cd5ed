//! rustls configuration helpers.
//!
//! Certificates are read from PEM files named as QEMU names them in its
//! x509 credentials folder (`ca-cert.pem`, `server-cert.pem`,
//! `server-key.pem`, `client-cert.pem`, `client-key.pem`), so one folder
//! serves us, `qemu-img` and libnbd alike. Cipher suites are ordered
//! AES-256-GCM, AES-128-GCM, then the rest, and the server enforces its own
//! order (AES-GCM is hardware accelerated on the machines we target).
//!
//! It also issues client certificates from a CA (its certificate and key in
//! PEM): [`issue_client_cert`] makes a new key pair, [`sign_client_csr`] signs
//! a peer's certificate signing request. Both give the certificate the
//! `clientAuth` extended key usage and nothing else, whatever a request asks.

use std::path::Path;
use std::sync::Arc;

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::NbdError;

/// CA certificate file name in a QEMU x509 folder.
pub const CA_CERT: &str = "ca-cert.pem";
/// Server certificate file name.
pub const SERVER_CERT: &str = "server-cert.pem";
/// Server key file name.
pub const SERVER_KEY: &str = "server-key.pem";
/// Client certificate file name.
pub const CLIENT_CERT: &str = "client-cert.pem";
/// Client key file name.
pub const CLIENT_KEY: &str = "client-key.pem";

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
        ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
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
        std::fs::write(dir.join(CA_CERT), ca_cert.pem()).unwrap();
        std::fs::write(dir.join(SERVER_CERT), server_cert.pem()).unwrap();
        std::fs::write(dir.join(SERVER_KEY), server_key.serialize_pem()).unwrap();
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
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(CA_CERT), ca_pem).unwrap();
        if let Some(i) = issued {
            std::fs::write(dir.join(CLIENT_CERT), &i.cert_pem).unwrap();
            std::fs::write(dir.join(CLIENT_KEY), &i.key_pem).unwrap();
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
        wants_ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
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
}
