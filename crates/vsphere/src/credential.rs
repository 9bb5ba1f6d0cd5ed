//! `--vcenter-credential NAME`: vCenter sessions issued by the hub.
//!
//! The hub holds the credential's password, sealed; it never answers it. Instead
//! `POST /api/v1/credentials/{name}/session` makes the hub log in to the credential's vCenter
//! (checking vCenter's certificate with the trust choice this client sends: its
//! `--vcenter-ca` PEM or `--insecure`) and answer the `vmware_soap_session` cookie value and
//! the host. [`HubSessionIssuer`] is the [`SessionIssuer`] of such sessions: the
//! [`Session`](crate::Session) uses it for its first login and again whenever vCenter
//! answers `NotAuthenticated` (an expired session during a long transfer), exactly as it
//! re-logs in with a password otherwise.

use std::sync::Mutex;

use sendense_client::hub::HubClient;
use sendense_types::CredentialName;
use sendense_types::api::{SessionRequest, VcenterSession};
use tracing::info;

use crate::error::VsphereError;
use crate::session::{IssueFuture, SessionIssuer, TlsMode};

/// Issues vCenter sessions of one stored credential through the hub.
pub struct HubSessionIssuer {
    hub: HubClient,
    name: CredentialName,
    request: SessionRequest,
    /// The session [`Self::open`] fetched, handed out by the first [`SessionIssuer::issue`].
    first: Mutex<Option<String>>,
}

impl std::fmt::Debug for HubSessionIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubSessionIssuer")
            .field("hub", &self.hub)
            .field("credential", &self.name)
            .finish_non_exhaustive()
    }
}

impl HubSessionIssuer {
    /// An issuer of sessions of credential `name`, the hub checking vCenter's certificate as
    /// `request` says.
    #[must_use]
    pub fn new(hub: HubClient, name: CredentialName, request: SessionRequest) -> Self {
        Self {
            hub,
            name,
            request,
            first: Mutex::new(None),
        }
    }

    /// Asks the hub for a session now and keeps it for the first [`SessionIssuer::issue`];
    /// answers the credential's vCenter host (`HOST[:PORT]`).
    ///
    /// # Errors
    /// [`VsphereError::CredentialSession`]: unknown credential (404), vCenter refused or
    /// failed (502), the hub unreachable or refusing the token.
    pub async fn open(&self) -> Result<String, VsphereError> {
        let session = self.fetch().await?;
        if let Ok(mut first) = self.first.lock() {
            *first = Some(session.session_cookie);
        }
        Ok(session.host)
    }

    async fn fetch(&self) -> Result<VcenterSession, VsphereError> {
        let session = self
            .hub
            .credential_session(&self.name, &self.request)
            .await
            .map_err(|source| VsphereError::CredentialSession {
                credential: self.name.to_string(),
                source: Box::new(source),
            })?;
        info!(credential = %self.name, host = %session.host, "vCenter session issued by the hub");
        Ok(session)
    }
}

impl SessionIssuer for HubSessionIssuer {
    fn issue(&self) -> IssueFuture<'_> {
        Box::pin(async move {
            let first = self.first.lock().ok().and_then(|mut f| f.take());
            match first {
                Some(cookie) => Ok(cookie),
                None => self.fetch().await.map(|s| s.session_cookie),
            }
        })
    }

    fn describe(&self) -> String {
        format!("credential {} (via the hub)", self.name)
    }
}

/// The trust choice the hub is asked to use for vCenter's certificate: the same as ours.
///
/// # Errors
/// [`VsphereError::CaFile`] when the CA file cannot be read or is not UTF-8 PEM.
pub fn session_request(tls: &TlsMode) -> Result<SessionRequest, VsphereError> {
    let invalid = |path: String, msg: &str| VsphereError::CaFile {
        path,
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_owned()),
    };
    let (path, bytes) = match tls {
        TlsMode::Insecure => return Ok(SessionRequest::insecure()),
        TlsMode::CaFile(path) => {
            let bytes = std::fs::read(path).map_err(|source| VsphereError::CaFile {
                path: path.display().to_string(),
                source,
            })?;
            (path.display().to_string(), bytes)
        }
        TlsMode::CaPem(pem) => ("<in memory>".to_owned(), pem.clone()),
    };
    let pem = String::from_utf8(bytes).map_err(|_| invalid(path.clone(), "not UTF-8 PEM"))?;
    SessionRequest::trusting(pem).map_err(|e| invalid(path, &e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_request_insecure_asks_the_hub_for_insecure() {
        assert_eq!(
            session_request(&TlsMode::Insecure).unwrap(),
            SessionRequest::insecure()
        );
    }

    #[test]
    fn session_request_ca_file_sends_its_pem() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();

        let req = session_request(&TlsMode::CaFile(ca)).unwrap();

        assert_eq!(req.ca_pem.as_deref(), Some("-----BEGIN CERTIFICATE-----\n"));
    }

    #[test]
    fn session_request_missing_ca_file_names_it() {
        let err = session_request(&TlsMode::CaFile("/nonexistent/ca.pem".into())).unwrap_err();

        assert!(
            matches!(&err, VsphereError::CaFile { path, .. } if path == "/nonexistent/ca.pem"),
            "{err:?}"
        );
    }
}
