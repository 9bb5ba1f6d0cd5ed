//! The hub's X.509 material: a private CA and a server certificate signed by
//! it, created on first start in `DATA/tls` under QEMU's x509 folder names
//! (`ca-cert.pem`, `server-cert.pem`, `server-key.pem`), so `qemu-img`,
//! `nbdinfo` and `nbdcopy` take the folder as it is. Later starts reuse them.
//!
//! The CA key (`ca-key.pem`) stays beside them, readable by the owner only:
//! [`issue_client_folder`] (`sendense-hub cert issue`) signs client
//! certificates with it, which the NBD port requires. Every file is written
//! 0600 (the folder 0700) through a fresh temporary file (a random name,
//! created exclusively: a file a crash left behind is never reused) that is
//! fsynced and renamed into place; then the folder is fsynced, so the rename
//! survives a power loss.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
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
/// Client certificate file name (QEMU's).
pub const CLIENT_CERT: &str = "client-cert.pem";
/// Client private key file name (QEMU's).
pub const CLIENT_KEY: &str = "client-key.pem";

/// Mode of every file the hub writes: owner read and write only.
pub const FILE_MODE: u32 = 0o600;
/// Mode of every folder the hub makes: owner only.
pub const DIR_MODE: u32 = 0o700;

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
    /// A client certificate could not be issued.
    #[error("Cannot issue a client certificate")]
    Issue(#[source] sendense_nbd::NbdError),
    /// `cert issue` needs the hub's CA, which is not there.
    #[error(
        "No CA in {dir} ({file} is missing): start the hub once with this --data-dir to create it"
    )]
    NoCa {
        /// The hub's TLS folder.
        dir: PathBuf,
        /// The missing file.
        file: &'static str,
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
    create_private_dir(dir)?;

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
    write_file(&dir.join(SERVER_CERT), cert_pem.as_bytes(), 0o600)?;
    // The CA certificate last: its presence marks a complete folder.
    write_file(&dir.join(CA_CERT), ca_pem.as_bytes(), 0o600)?;
    Ok(true)
}

/// Issues a client certificate for `name` with the CA in the hub's TLS
/// folder `tls_dir` and writes QEMU's client layout to `out`:
/// `ca-cert.pem`, `client-cert.pem`, `client-key.pem` (each 0600, the folder
/// 0700, made if missing). `nbdinfo`/`nbdcopy` (`tls-certificates=OUT`),
/// `qemu-img` (`tls-creds-x509,dir=OUT,endpoint=client`) and
/// `sendense-client --tls-dir OUT` take that folder as it is.
///
/// # Errors
/// [`TlsSetupError::NoCa`] when the hub has no CA yet, [`TlsSetupError::Issue`]
/// for a bad name or CA, [`TlsSetupError::Io`] when a file cannot be read or
/// written.
pub fn issue_client_folder(tls_dir: &Path, name: &str, out: &Path) -> Result<(), TlsSetupError> {
    let read = |file: &'static str| {
        let path = tls_dir.join(file);
        fs::read_to_string(&path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                TlsSetupError::NoCa {
                    dir: tls_dir.to_path_buf(),
                    file,
                }
            } else {
                TlsSetupError::Io { path, source }
            }
        })
    };
    let ca_pem = read(CA_CERT)?;
    let ca_key = read(CA_KEY)?;
    let issued = sendense_nbd::tls::issue_client_cert(&ca_pem, &ca_key, name)
        .map_err(TlsSetupError::Issue)?;
    create_private_dir(out)?;
    write_file(&out.join(CA_CERT), ca_pem.as_bytes(), FILE_MODE)?;
    write_file(&out.join(CLIENT_KEY), issued.key_pem.as_bytes(), FILE_MODE)?;
    write_file(
        &out.join(CLIENT_CERT),
        issued.cert_pem.as_bytes(),
        FILE_MODE,
    )?;
    Ok(())
}

/// Makes `dir` (and missing parents) with mode 0700; an existing `dir` is
/// set to 0700.
///
/// # Errors
/// The folder cannot be made or its mode set.
pub fn create_private_dir(dir: &Path) -> Result<(), TlsSetupError> {
    let io = |source| TlsSetupError::Io {
        path: dir.to_path_buf(),
        source,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(io)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE)).map_err(io)
}

/// Sets every folder under `root` (and `root`) to 0700 and every regular
/// file to 0600: what a data folder from an older hub, or one copied with a
/// permissive umask, needs. Symbolic links are neither followed nor changed.
///
/// # Errors
/// A folder cannot be listed or a mode cannot be set.
pub fn restrict_tree(root: &Path) -> Result<(), TlsSetupError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsSetupError::Io { path, source }
    };
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        fs::set_permissions(&dir, fs::Permissions::from_mode(DIR_MODE)).map_err(io(&dir))?;
        for entry in fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(io(&path))?;
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() {
                let meta = entry.metadata().map_err(io(&path))?;
                if meta.permissions().mode() & 0o7777 != FILE_MODE {
                    fs::set_permissions(&path, fs::Permissions::from_mode(FILE_MODE))
                        .map_err(io(&path))?;
                }
            }
        }
    }
    Ok(())
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

/// Writes `bytes` to `path` with `mode`, atomically: a new temporary file
/// beside it (random name, created exclusively with `mode`, so a file a
/// crash left behind is never reused with its old contents or mode) is
/// written, fsynced and renamed over `path`, then the folder is fsynced.
/// Temporary files of `path` a crash left behind are removed first.
///
/// # Errors
/// [`TlsSetupError::Io`] naming `path`.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsSetupError> {
    let io = |source| TlsSetupError::Io {
        path: path.to_path_buf(),
        source,
    };
    let (dir, name) = match (path.parent(), path.file_name()) {
        (Some(d), Some(n)) => (
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            },
            n.to_string_lossy().into_owned(),
        ),
        _ => {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a file path",
            )));
        }
    };
    let prefix = format!(".{name}.");
    remove_stale_temps(dir, &prefix).map_err(io)?;
    // Older hubs wrote through `NAME.tmp` (extension replaced): a crash could leave one.
    if let Err(e) = fs::remove_file(path.with_extension("tmp"))
        && e.kind() != std::io::ErrorKind::NotFound
    {
        return Err(io(e));
    }
    let suffix: u64 = rand::random();
    let tmp = dir.join(format!("{prefix}{suffix:016x}.tmp"));
    let written = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // create_new applied `mode` through the umask; make it exact.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io(e));
    }
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}

/// Removes `DIR/<prefix>*.tmp`: temporary files of one target a crash left.
fn remove_stale_temps(dir: &Path, prefix: &str) -> std::io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let file = entry.file_name();
        let file = file.to_string_lossy();
        if file.starts_with(prefix) && file.ends_with(".tmp") {
            tracing::warn!(file = %entry.path().display(), "removing a temporary file a crash left");
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn write_file_with_stale_temp_left_by_a_crash_does_not_reuse_it() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("api.token");
        let stale = dir.path().join(".api.token.00000000deadbeef.tmp");
        fs::write(&stale, b"old secret of a crashed write, world-readable").unwrap();
        fs::set_permissions(&stale, fs::Permissions::from_mode(0o644)).unwrap();
        let legacy = dir.path().join("api.tmp");
        fs::write(&legacy, b"old secret of an older hub's crashed write").unwrap();

        write_file(&target, b"new", 0o600).unwrap();

        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            (fs::read(&target).unwrap(), mode(&target), names.len()),
            (b"new".to_vec(), 0o600, 1),
            "{names:?}"
        );
    }

    #[test]
    fn write_file_mode_is_exact_whatever_the_umask_allows() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("f");
        fs::write(&target, b"old").unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o666)).unwrap();

        write_file(&target, b"new", 0o600).unwrap();

        assert_eq!(mode(&target), 0o600);
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
    fn issue_client_folder_without_ca_names_the_missing_file() {
        let dir = tempfile::tempdir().unwrap();

        let err = issue_client_folder(dir.path(), "x", &dir.path().join("out")).unwrap_err();

        assert!(
            matches!(err, TlsSetupError::NoCa { file: CA_CERT, .. }),
            "{err}"
        );
    }

    #[test]
    fn restrict_tree_makes_files_0600_and_folders_0700() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("repository/vm");
        fs::create_dir_all(&sub).unwrap();
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o755)).unwrap();
        let file = sub.join("a.qcow2");
        fs::write(&file, b"x").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();

        restrict_tree(dir.path()).unwrap();

        assert_eq!(
            (mode(dir.path()), mode(&sub), mode(&file)),
            (0o700, 0o700, 0o600)
        );
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
                TlsSetupError::Incomplete {
                    missing: SERVER_KEY,
                    ..
                }
            ),
            "{err}"
        );
    }
}
