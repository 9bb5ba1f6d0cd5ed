//! The hub's X.509 folder and the permissions of its data folder.
//!
//! The material itself is [`sendense_nbd::tls`]'s: on first start the daemon
//! has [`sendense_nbd::tls::ensure_certificates`] create a private CA and a
//! server certificate signed by it in `DATA/tls` under QEMU's x509 folder
//! names (`ca-cert.pem`, `server-cert.pem`, `server-key.pem`), so `qemu-img`,
//! `nbdinfo` and `nbdcopy` take the folder as it is; later starts reuse them.
//! The CA key (`ca-key.pem`) stays beside them, readable by the owner only:
//! [`issue_client_folder`] (`sendense-hub cert issue`) signs client
//! certificates with it, which the NBD port requires.
//!
//! What is the hub's alone lives here: the hint an operator gets when the CA
//! is not there yet, and the 0600/0700 modes of
//! everything in `DATA` ([`restrict_tree`]). Files are written through
//! [`sendense_nbd::tls::write_atomic`] (random exclusive temporary, fsync,
//! rename, folder fsync).

use crate::error::HubError;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

pub use sendense_nbd::tls::{CLIENT_CERT, DIR_MODE, FILE_MODE};

/// Issues a client certificate for `name` with the CA in the hub's TLS folder
/// `tls_dir` (`DATA/tls`) and writes QEMU's client layout to `out` (see
/// [`sendense_nbd::tls::issue_client_folder`]): what `sendense-hub cert issue`
/// does.
///
/// # Errors
/// [`HubError::NoCa`] when the hub has no CA yet (it makes one on its
/// first start); [`HubError::TlsMaterial`] for a bad name, bad CA material or
/// a file that cannot be read or written.
pub fn issue_client_folder(tls_dir: &Path, name: &str, out: &Path) -> Result<(), HubError> {
    sendense_nbd::tls::issue_client_folder(tls_dir, name, out).map_err(|e| match e {
        sendense_nbd::NbdError::NoCa { dir, file } => HubError::NoCa { dir, file },
        e => HubError::TlsMaterial(e),
    })
}

/// Makes `dir` (and missing parents) with mode 0700; an existing `dir` is
/// set to 0700.
///
/// # Errors
/// The folder cannot be made or its mode set.
pub fn create_private_dir(dir: &Path) -> Result<(), HubError> {
    sendense_nbd::tls::create_private_dir(dir).map_err(|source| HubError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

/// Sets every folder under `root` (and `root`) to 0700 and every regular
/// file to 0600: what a data folder from an older hub, or one copied with a
/// permissive umask, needs. Symbolic links are neither followed nor changed.
///
/// # Errors
/// A folder cannot be listed or a mode cannot be set.
pub fn restrict_tree(root: &Path) -> Result<(), HubError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| HubError::Io { path, source }
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

/// Writes `bytes` to `path` with `mode`, atomically (see
/// [`sendense_nbd::tls::write_atomic`]).
///
/// # Errors
/// [`HubError::Io`] naming `path`.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), HubError> {
    sendense_nbd::tls::write_atomic(path, bytes, mode).map_err(|source| HubError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn issue_client_folder_without_ca_names_the_missing_file() {
        let dir = tempfile::tempdir().unwrap();

        let err = issue_client_folder(dir.path(), "x", &dir.path().join("out")).unwrap_err();

        assert!(
            matches!(
                err,
                HubError::NoCa {
                    file: sendense_nbd::tls::CA_CERT,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("start the hub once"), "{err}");
    }

    #[test]
    fn issue_client_folder_uses_the_ca_in_the_tls_folder() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        sendense_nbd::tls::ensure_certificates(&tls, &[]).unwrap();
        let out = dir.path().join("client");

        issue_client_folder(&tls, "backup-1", &out).unwrap();

        assert_eq!(
            fs::read(out.join(sendense_nbd::tls::CA_CERT)).unwrap(),
            fs::read(tls.join(sendense_nbd::tls::CA_CERT)).unwrap()
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
}
