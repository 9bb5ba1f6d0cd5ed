//! vCenter credentials, sealed at rest: ChaCha20-Poly1305 with a random
//! 96-bit nonce per record and the credential's name as associated data,
//! under a 256-bit key in `DATA/credentials.key` (mode 0600, created on
//! first use). The catalog only ever sees the sealed bytes; no API answer
//! and no log line carries a password.

use std::path::Path;
use std::sync::Arc;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use sendense_catalog::Catalog;
use sendense_types::{Credential, CredentialName, CredentialRequest, Timestamp};

use crate::error::HubError;
use crate::tls::write_file;

/// Key file name inside the data folder.
pub const KEY_FILE: &str = "credentials.key";

/// The credential store.
pub struct Credentials {
    catalog: Arc<Catalog>,
    key: LessSafeKey,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Opens the store, creating the key file in `data_dir` on first use.
    ///
    /// # Errors
    /// The key file cannot be read or written, or is not 32 bytes.
    pub fn open(catalog: Arc<Catalog>, data_dir: &Path) -> Result<Self, HubError> {
        let path = data_dir.join(KEY_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let fresh: [u8; 32] = rand::random();
                write_file(&path, &fresh, 0o600)
                    .map_err(|e| HubError::io(&path, std::io::Error::other(e)))?;
                fresh.to_vec()
            }
            Err(e) => return Err(HubError::io(&path, e)),
        };
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &bytes).map_err(|_| {
            HubError::io(
                &path,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "key file must hold 32 bytes",
                ),
            )
        })?;
        Ok(Self {
            catalog,
            key: LessSafeKey::new(unbound),
        })
    }

    /// Seals and stores a credential; answers it without its password.
    ///
    /// # Errors
    /// Sealing or the catalog fails.
    pub fn put(&self, req: &CredentialRequest) -> Result<Credential, HubError> {
        let sealed = self.seal(req.name(), req.password().as_bytes())?;
        let record = self.catalog.put_credential(
            req.name(),
            req.host(),
            req.username(),
            sealed,
            Timestamp::now(),
        )?;
        tracing::info!(name = %req.name(), host = req.host(), "credential stored");
        Ok(record.to_api())
    }

    /// Every stored credential, without passwords.
    ///
    /// # Errors
    /// The catalog fails.
    pub fn list(&self) -> Result<Vec<Credential>, HubError> {
        Ok(self
            .catalog
            .credentials()?
            .iter()
            .map(|c| c.to_api())
            .collect())
    }

    /// The plaintext password of a stored credential, for the hub's own use.
    ///
    /// # Errors
    /// Unknown credential, or the record does not open under this key.
    pub fn password(&self, name: &CredentialName) -> Result<String, HubError> {
        let record = self.catalog.credential(name)?.ok_or_else(|| {
            HubError::Catalog(sendense_catalog::CatalogError::CredentialNotFound {
                name: name.clone(),
            })
        })?;
        let plain = self.open_sealed(name, &record.sealed_password)?;
        String::from_utf8(plain).map_err(|_| HubError::Crypto)
    }

    fn seal(&self, name: &CredentialName, plain: &[u8]) -> Result<Vec<u8>, HubError> {
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let mut out = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(name.as_str().as_bytes()),
                &mut out,
            )
            .map_err(|_| HubError::Crypto)?;
        let mut sealed = nonce_bytes.to_vec();
        sealed.extend_from_slice(&out);
        Ok(sealed)
    }

    fn open_sealed(&self, name: &CredentialName, sealed: &[u8]) -> Result<Vec<u8>, HubError> {
        if sealed.len() < NONCE_LEN {
            return Err(HubError::Crypto);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| HubError::Crypto)?;
        let mut buf = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(name.as_str().as_bytes()), &mut buf)
            .map_err(|_| HubError::Crypto)?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> Credentials {
        let catalog = Arc::new(Catalog::open_in(dir).unwrap());
        Credentials::open(catalog, dir).unwrap()
    }

    #[test]
    fn put_then_password_round_trips_and_catalog_holds_no_plaintext() {
        let dir = tempfile::tempdir().unwrap();
        let creds = store(dir.path());
        let name: CredentialName = "vc1".parse().unwrap();
        let req = CredentialRequest::new(
            name.clone(),
            "vc.example".into(),
            "admin".into(),
            "s3cret-pw".into(),
        )
        .unwrap();
        let answer = creds.put(&req).unwrap();
        assert_eq!(answer.username, "admin");
        assert!(
            !serde_json::to_string(&answer)
                .unwrap()
                .contains("s3cret-pw")
        );
        assert_eq!(creds.password(&name).unwrap(), "s3cret-pw");
        let raw = std::fs::read(dir.path().join(sendense_catalog::FILE_NAME)).unwrap();
        assert!(
            !raw.windows(9).any(|w| w == b"s3cret-pw"),
            "plaintext in the catalog file"
        );
    }

    #[test]
    fn sealed_record_under_another_name_does_not_open() {
        let dir = tempfile::tempdir().unwrap();
        let creds = store(dir.path());
        let a: CredentialName = "a".parse().unwrap();
        let b: CredentialName = "b".parse().unwrap();
        let sealed = creds.seal(&a, b"pw").unwrap();
        assert!(creds.open_sealed(&b, &sealed).is_err());
        assert_eq!(creds.open_sealed(&a, &sealed).unwrap(), b"pw");
    }
}
