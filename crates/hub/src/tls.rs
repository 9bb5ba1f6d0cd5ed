//! The hub's X.509 material: a private CA and a server certificate signed by
//! it, created on first start in `DATA/tls` under QEMU's x509 folder names
//! (`ca-cert.pem`, `server-cert.pem`, `server-key.pem`), so `qemu-img`,
//! `nbdinfo` and `nbdcopy` take the folder as it is. Later starts reuse them.
//!
//! The CA key (`ca-key.pem`) stays beside them, readable by the owner only,
//! so an operator can issue client certificates. Keys are written 0600,
//! through a temporary file that is fsynced and renamed into place.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// CA certificate file name (QEMU's).
pub const CA_CERT: &str = "ca-cert.pem";
/// CA private key file name.
pub const CA_KEY: &str = "ca-key.pem";
/// Server certificate file name (QEMU's).
pub const SERVER_CERT: &str = "server-cert.pem";
/// Server private key file name (QEMU's).
pub const SERVER_KEY: &str = "server-key.pem";

/// Errors creating or reading the TLS folder.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsSetupError {
    /// A file could not be read or written.
    #[error("Cannot write TLS file {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Certificate generation failed.
    #[error("Cannot generate the hub's certificates")]
    Generate(#[source] rcgen::Error),
    /// Only some of the files exist: refuse to guess which to trust.
    #[error(
        "TLS folder {dir} is incomplete ({missing} is missing); restore it or remove the folder to start afresh"
    )]
    Incomplete {
        /// The folder.
        dir: PathBuf,
        /// The missing file.
        missing: &'static str,
    },
}

/// Makes sure `dir` holds a CA and a server certificate valid for `hosts`
/// (plus `localhost` and `127.0.0.1`); creates them when the folder has none.
/// Returns true when it created them.
///
/// # Errors
/// The folder is only partly there, or the files cannot be written.
pub fn ensure_certificates(dir: &Path, hosts: &[String]) -> Result<bool, TlsSetupError> {
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
        return Err(TlsSetupError::Incomplete {
            dir: dir.to_path_buf(),
            missing: files[i],
        });
    }
    fs::create_dir_all(dir).map_err(|source| TlsSetupError::Io {
        path: dir.to_path_buf(),
        source,
    })?;

    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into()];
    for h in hosts {
        if !h.is_empty() && !names.contains(h) && h != "0.0.0.0" && h != "::" {
            names.push(h.clone());
        }
    }
    let (ca_pem, ca_key_pem, cert_pem, key_pem) =
        generate(&names).map_err(TlsSetupError::Generate)?;
    write_file(&dir.join(CA_KEY), ca_key_pem.as_bytes(), 0o600)?;
    write_file(&dir.join(SERVER_KEY), key_pem.as_bytes(), 0o600)?;
    write_file(&dir.join(SERVER_CERT), cert_pem.as_bytes(), 0o644)?;
    // The CA certificate last: its presence marks a complete folder.
    write_file(&dir.join(CA_CERT), ca_pem.as_bytes(), 0o644)?;
    Ok(true)
}

/// (CA cert, CA key, server cert, server key), all PEM.
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
    server
        .distinguished_name
        .push(DnType::CommonName, names[0].clone());
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

/// Writes `bytes` to `path` with `mode` through a fsynced temporary file.
pub(crate) fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsSetupError> {
    let io = |source| TlsSetupError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn ensure_certificates_on_empty_dir_creates_all_files_keys_private() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        assert!(ensure_certificates(&tls, &["hub.example".into()]).unwrap());
        for f in [CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY] {
            assert!(tls.join(f).exists(), "{f}");
        }
        let mode = fs::metadata(tls.join(SERVER_KEY))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
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
                TlsSetupError::Incomplete {
                    missing: SERVER_KEY,
                    ..
                }
            ),
            "{err}"
        );
    }
}
