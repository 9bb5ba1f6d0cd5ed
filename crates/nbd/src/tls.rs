//! rustls configuration helpers.
//!
//! Certificates are read from PEM files named as QEMU names them in its
//! x509 credentials folder (`ca-cert.pem`, `server-cert.pem`,
//! `server-key.pem`, `client-cert.pem`, `client-key.pem`), so one folder
//! serves us, `qemu-img` and libnbd alike. Cipher suites are ordered
//! AES-256-GCM, AES-128-GCM, then the rest, and the server enforces its own
//! order (AES-GCM is hardware accelerated on the machines we target).

use std::path::Path;
use std::sync::Arc;

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

/// Server configuration from a QEMU-style x509 folder. With `verify_clients`,
/// clients must present a certificate signed by `ca-cert.pem`.
///
/// # Errors
/// Unreadable or invalid PEM files, or a key not matching the certificate.
pub fn server_config_from_dir(
    dir: &Path,
    verify_clients: bool,
) -> Result<Arc<ServerConfig>, NbdError> {
    let ca = dir.join(CA_CERT);
    server_config(
        &dir.join(SERVER_CERT),
        &dir.join(SERVER_KEY),
        if verify_clients {
            Some(ca.as_path())
        } else {
            None
        },
    )
}

/// Server configuration from a certificate chain and key; `client_ca`
/// enables client-certificate verification against that CA bundle.
///
/// # Errors
/// Unreadable or invalid PEM files, or a key not matching the certificate.
pub fn server_config(
    cert_chain: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, NbdError> {
    let provider = provider();
    let certs = read_certs(cert_chain)?;
    let key = read_key(key)?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)?;
    let builder = match client_ca {
        Some(ca) => {
            let roots = Arc::new(read_roots(ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider).build()?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
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

    #[test]
    fn server_config_missing_files_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            server_config_from_dir(dir.path(), false),
            Err(NbdError::Pem { .. })
        ));
    }
}
