//! vCenter credentials, sealed at rest: ChaCha20-Poly1305 with a random
//! 96-bit nonce per record and the credential's name as associated data,
//! under a 256-bit key in `DATA/credentials.key` (mode 0600, created on
//! first use). The catalog only ever sees the sealed bytes; no API answer
//! and no log line carries a password.
//!
//! Clients that refer to a credential by name (`sendense-client backup
//! --vcenter-credential NAME`) get a *session*, never the password:
//! [`Credentials::open_session`] logs in to the credential's vCenter with the
//! sealed password and answers the `vmware_soap_session` cookie value and the
//! host. Each call is one fresh login: a client asks again when vCenter
//! expires its session.
//!
//! How vCenter's certificate is checked (`ca_pem` or `insecure`) is chosen
//! when the credential is created and stored with it: no session request can
//! change it, so a caller holding only the API token cannot make the hub send
//! a stored password to a vCenter impostor. A credential stored before the
//! choice was kept has none and is refused ([`HubError::NoTrustChoice`])
//! until it is created again.

use std::path::Path;
use std::sync::Arc;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use sendense_catalog::Catalog;
use sendense_types::api::VcenterSession;
use sendense_types::{
    AgentCredential, AgentName, Credential, CredentialName, CredentialRequest, Timestamp,
    VcenterTrust,
};
use sendense_vsphere::{ConnectOptions, ErrorKind as VsphereKind, Session, TlsMode, VsphereError};

use crate::error::HubError;
use crate::tls::write_file;

/// Key file name inside the data folder.
pub const KEY_FILE: &str = "credentials.key";

/// Limit for each HTTP exchange of the hub's own vCenter login.
const LOGIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The credential store.
pub struct Credentials {
    catalog: Arc<Catalog>,
    key: LessSafeKey,
}

/// What a login needs, read from the store (the password only in memory, never logged).
struct LoginDetails {
    host: String,
    username: String,
    password: String,
    trust: Option<VcenterTrust>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Opens the store, creating the key file in `data_dir` on first use (while the catalog
    /// holds no credential).
    ///
    /// # Errors
    /// [`HubError::KeyMissing`] when the key file is gone but sealed credentials exist;
    /// [`HubError::Io`] / [`HubError::Crypto`] when the key file cannot be read or written, or is not 32 bytes.
    pub fn open(catalog: Arc<Catalog>, data_dir: &Path) -> Result<Self, HubError> {
        let path = data_dir.join(KEY_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let sealed = catalog.credentials().map_err(HubError::from)?.len();
                if sealed > 0 {
                    return Err(HubError::KeyMissing { path, sealed });
                }
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
    /// [`HubError::UnknownAgent`] when it names an agent the hub does not know (nothing is
    /// stored); sealing or the catalog fails.
    pub fn put(&self, req: &CredentialRequest) -> Result<Credential, HubError> {
        if let Some(agent) = req.agent()
            && self.catalog.agent(agent)?.is_none()
        {
            return Err(HubError::UnknownAgent {
                agent: agent.clone(),
            });
        }
        let sealed = self.seal(req.name(), req.password().as_bytes())?;
        let record = self.catalog.put_credential(req, sealed, Timestamp::now())?;
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

    /// Deletes a stored credential (and its sealed password) that no policy and no queued or
    /// running job uses.
    ///
    /// # Errors
    /// [`HubError::InUse`] naming the policies or jobs; unknown credential (404); the catalog
    /// fails.
    pub fn delete(&self, name: &CredentialName) -> Result<(), HubError> {
        let policies: Vec<String> = self
            .catalog
            .policies()?
            .iter()
            .filter(|p| p.request.credential() == Some(name))
            .map(|p| p.request.name().to_string())
            .collect();
        let jobs: Vec<String> = self
            .catalog
            .jobs(&sendense_types::JobQuery::default())?
            .iter()
            .filter(|j| j.status.is_active() && j.credential.as_ref() == Some(name))
            .map(|j| j.job_id.to_string())
            .collect();
        if !policies.is_empty() || !jobs.is_empty() {
            let mut by = Vec::new();
            if !policies.is_empty() {
                by.push(format!(
                    "policies {} back up with it (change them first)",
                    policies.join(", ")
                ));
            }
            if !jobs.is_empty() {
                by.push(format!(
                    "jobs {} run with it (wait for them or cancel them)",
                    jobs.join(", ")
                ));
            }
            return Err(HubError::InUse {
                what: format!("Credential {name}"),
                by: by.join("; "),
            });
        }
        self.catalog.delete_credential(name)?;
        tracing::info!(%name, "credential deleted");
        Ok(())
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

    /// The credential with its password, for `agent` only: the one agent the credential names
    /// (DESIGN.md "Agents and jobs"), over its authenticated channel.
    ///
    /// # Errors
    /// Unknown credential (404); [`HubError::CredentialNotForAgent`] when it names another
    /// agent or none; [`HubError::NoTrustChoice`]; the record does not open under this key.
    pub fn for_agent(
        &self,
        name: &CredentialName,
        agent: &AgentName,
    ) -> Result<AgentCredential, HubError> {
        let record = self.catalog.credential(name)?.ok_or_else(|| {
            HubError::Catalog(sendense_catalog::CatalogError::CredentialNotFound {
                name: name.clone(),
            })
        })?;
        if record.agent.as_ref() != Some(agent) {
            return Err(HubError::CredentialNotForAgent {
                name: name.clone(),
                agent: agent.clone(),
            });
        }
        let (ca_pem, insecure) = match &record.trust {
            Some(VcenterTrust::CaPem(pem)) => (Some(pem.clone()), false),
            Some(VcenterTrust::Insecure) => (None, true),
            None => return Err(HubError::NoTrustChoice { name: name.clone() }),
        };
        let plain = self.open_sealed(name, &record.sealed_password)?;
        let password = String::from_utf8(plain).map_err(|_| HubError::Crypto)?;
        Ok(AgentCredential {
            name: name.clone(),
            host: record.host,
            username: record.username,
            password,
            ca_pem,
            insecure,
        })
    }

    /// Logs in to the credential's vCenter with its sealed password and answers the session
    /// (cookie value and host): what `POST /api/v1/credentials/{name}/session` answers.
    /// vCenter's certificate is checked as the credential's stored trust choice says.
    ///
    /// # Errors
    /// a store error (unknown credential: its kind is `NotFound`),
    /// [`HubError::NoTrustChoice`], [`HubError::Trust`],
    /// [`HubError::LoginRefused`], [`HubError::Vcenter`].
    pub async fn open_session(
        self: Arc<Self>,
        name: CredentialName,
    ) -> Result<VcenterSession, HubError> {
        let store = Arc::clone(&self);
        let key = name.clone();
        let details = tokio::task::spawn_blocking(move || store.login_details(&key))
            .await
            .map_err(|e| HubError::io(KEY_FILE, std::io::Error::other(e)))??;
        let tls = tls_mode(details.trust.as_ref())
            .ok_or_else(|| HubError::NoTrustChoice { name: name.clone() })?;
        let mut options =
            ConnectOptions::new(&details.host, &details.username, &details.password, tls);
        options.request_timeout = LOGIN_TIMEOUT;
        let session = Session::connect(options).await.map_err(|source| {
            let host = details.host.clone();
            match source.kind() {
                VsphereKind::Authentication => HubError::LoginRefused {
                    name: name.clone(),
                    host,
                    username: details.username.clone(),
                    source: Box::new(source),
                },
                _ if matches!(
                    source,
                    VsphereError::CaFile { .. } | VsphereError::Tls { .. }
                ) =>
                {
                    HubError::Trust {
                        name: name.clone(),
                        source: Box::new(source),
                    }
                }
                _ => HubError::Vcenter {
                    name: name.clone(),
                    host,
                    source: Box::new(source),
                },
            }
        })?;
        let session_cookie = session.session_cookie().ok_or_else(|| HubError::Vcenter {
            name: name.clone(),
            host: details.host.clone(),
            source: Box::new(VsphereError::UnexpectedResponse {
                what: "Login answered no session cookie",
            }),
        })?;
        tracing::info!(credential = %name, host = %details.host, "vCenter session opened for a client");
        Ok(VcenterSession {
            host: details.host,
            session_cookie,
        })
    }

    fn login_details(&self, name: &CredentialName) -> Result<LoginDetails, HubError> {
        let record = self.catalog.credential(name)?.ok_or_else(|| {
            HubError::Catalog(sendense_catalog::CatalogError::CredentialNotFound {
                name: name.clone(),
            })
        })?;
        let plain = self.open_sealed(name, &record.sealed_password)?;
        let password = String::from_utf8(plain).map_err(|_| HubError::Crypto)?;
        Ok(LoginDetails {
            host: record.host,
            username: record.username,
            password,
            trust: record.trust,
        })
    }

    fn seal(&self, name: &CredentialName, plain: &[u8]) -> Result<Vec<u8>, HubError> {
        self.seal_with(name.as_str().as_bytes(), plain)
    }

    fn open_sealed(&self, name: &CredentialName, sealed: &[u8]) -> Result<Vec<u8>, HubError> {
        self.open_with(name.as_str().as_bytes(), sealed)
    }

    /// Seals another secret of the hub (an object-store target's secret key) under the same
    /// key, bound to `aad` (which must name its kind and owner, so it never opens as another).
    pub(crate) fn seal_with(&self, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, HubError> {
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let mut out = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(aad),
                &mut out,
            )
            .map_err(|_| HubError::Crypto)?;
        let mut sealed = nonce_bytes.to_vec();
        sealed.extend_from_slice(&out);
        Ok(sealed)
    }

    /// Opens what [`Credentials::seal_with`] sealed with the same `aad`.
    pub(crate) fn open_with(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, HubError> {
        if sealed.len() < NONCE_LEN {
            return Err(HubError::Crypto);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| HubError::Crypto)?;
        let mut buf = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut buf)
            .map_err(|_| HubError::Crypto)?;
        Ok(plain.to_vec())
    }
}

/// How the hub checks vCenter's certificate for a credential: its stored choice, never a
/// default (`None` when it has none).
fn tls_mode(trust: Option<&VcenterTrust>) -> Option<TlsMode> {
    match trust? {
        VcenterTrust::CaPem(pem) => Some(TlsMode::CaPem(pem.clone().into_bytes())),
        VcenterTrust::Insecure => Some(TlsMode::Insecure),
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
            VcenterTrust::Insecure,
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
    fn open_without_key_file_while_sealed_credentials_exist_refuses_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Arc::new(Catalog::open_in(dir.path()).unwrap());
        let creds = Credentials::open(Arc::clone(&catalog), dir.path()).unwrap();
        let req = CredentialRequest::new(
            "vc1".parse().unwrap(),
            "vc.example".into(),
            "admin".into(),
            "pw".into(),
            VcenterTrust::Insecure,
        )
        .unwrap();
        creds.put(&req).unwrap();
        std::fs::remove_file(dir.path().join(KEY_FILE)).unwrap();

        let err = Credentials::open(catalog, dir.path()).unwrap_err();

        assert!(
            matches!(err, HubError::KeyMissing { sealed: 1, .. })
                && err.to_string().contains(KEY_FILE)
                && !dir.path().join(KEY_FILE).exists(),
            "{err}"
        );
    }

    #[test]
    fn open_without_key_file_and_no_credentials_creates_a_private_key() {
        let dir = tempfile::tempdir().unwrap();

        drop(store(dir.path()));

        let meta = std::fs::metadata(dir.path().join(KEY_FILE)).unwrap();
        assert_eq!(
            (
                meta.len(),
                std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777
            ),
            (32, 0o600)
        );
    }

    #[test]
    fn tls_mode_without_stored_choice_has_none_not_a_default() {
        assert!(tls_mode(None).is_none());
    }

    #[test]
    fn no_trust_choice_error_names_how_to_recreate() {
        let err = HubError::NoTrustChoice {
            name: "old".parse().unwrap(),
        };

        let text = err.to_string();

        assert!(
            text.contains("old") && text.contains("POST /api/v1/credentials"),
            "{text}"
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

    mod sessions {
        use super::*;
        use sendense_vsphere_sim::{SIM_PASSWORD, SIM_USER, Simulator};

        struct World {
            _dir: tempfile::TempDir,
            _sim_dir: tempfile::TempDir,
            sim: Simulator,
            creds: Arc<Credentials>,
        }

        /// A simulator and a store holding credential `vc1` for it; `trust` defaults to the
        /// simulator's own CA.
        async fn world(password: &str, trust: Option<VcenterTrust>) -> World {
            let dir = tempfile::tempdir().unwrap();
            let sim_dir = tempfile::tempdir().unwrap();
            let sim = Simulator::start(sim_dir.path()).await.unwrap();
            let creds = Arc::new(store(dir.path()));
            let req = CredentialRequest::new(
                "vc1".parse().unwrap(),
                sim.address(),
                SIM_USER.into(),
                password.into(),
                trust.unwrap_or_else(|| trusting(&sim)),
            )
            .unwrap();
            creds.put(&req).unwrap();
            World {
                _dir: dir,
                _sim_dir: sim_dir,
                sim,
                creds,
            }
        }

        fn trusting(sim: &Simulator) -> VcenterTrust {
            VcenterTrust::ca_pem(String::from_utf8(sim.ca_pem()).unwrap()).unwrap()
        }

        #[tokio::test]
        async fn open_session_valid_credential_logs_in_once_and_answers_host_and_cookie() {
            let w = world(SIM_PASSWORD, None).await;

            let s = Arc::clone(&w.creds)
                .open_session("vc1".parse().unwrap())
                .await
                .unwrap();

            assert_eq!(
                (
                    s.host.as_str(),
                    s.session_cookie.is_empty(),
                    w.sim.stats().logins
                ),
                (w.sim.address().as_str(), false, 1)
            );
        }

        #[tokio::test]
        async fn open_session_answer_never_holds_the_password() {
            let w = world(SIM_PASSWORD, Some(VcenterTrust::Insecure)).await;

            let s = Arc::clone(&w.creds)
                .open_session("vc1".parse().unwrap())
                .await
                .unwrap();

            assert!(!serde_json::to_string(&s).unwrap().contains(SIM_PASSWORD));
        }

        #[tokio::test]
        async fn open_session_unknown_credential_is_not_found_naming_it() {
            let w = world(SIM_PASSWORD, None).await;

            let err = Arc::clone(&w.creds)
                .open_session("nope".parse().unwrap())
                .await
                .unwrap_err();

            assert!(
                err.kind() == crate::error::ErrorKind::NotFound
                    && sendense_io::error_chain(&err).contains("nope"),
                "{err:?}"
            );
        }

        #[tokio::test]
        async fn open_session_refused_login_names_credential_not_password() {
            let w = world("wrong-Pa55word", None).await;

            let err = Arc::clone(&w.creds)
                .open_session("vc1".parse().unwrap())
                .await
                .unwrap_err();

            let text = sendense_io::error_chain(&err);
            assert!(
                matches!(err, HubError::LoginRefused { .. })
                    && text.contains("vc1")
                    && !text.contains("wrong-Pa55word"),
                "{text}"
            );
        }

        #[tokio::test]
        async fn open_session_stored_ca_of_another_vcenter_is_a_vcenter_error() {
            let other_dir = tempfile::tempdir().unwrap();
            let other = Simulator::start(other_dir.path()).await.unwrap();
            let w = world(SIM_PASSWORD, Some(trusting(&other))).await;

            let err = Arc::clone(&w.creds)
                .open_session("vc1".parse().unwrap())
                .await
                .unwrap_err();

            assert!(
                matches!(err, HubError::Vcenter { .. }) && w.sim.stats().logins == 0,
                "{err:?}"
            );
        }
    }
}
