//! `--vcenter-credential NAME`: vCenter sessions issued by the hub.
//!
//! The hub holds the credential's password, sealed; it never answers it. Instead
//! `POST /api/v1/credentials/{name}/session` makes the hub log in to the credential's vCenter
//! (checking vCenter's certificate as the credential's trust choice, stored at its creation,
//! says: this client cannot change it) and answer the `vmware_soap_session` cookie value and
//! the host. [`HubSessionIssuer`] is the [`SessionIssuer`] of such sessions: the
//! [`Session`](sendense_vsphere::Session) uses it for its first login and again whenever vCenter
//! answers `NotAuthenticated` (an expired session during a long transfer), exactly as it
//! re-logs in with a password otherwise.

use std::sync::Mutex;

use sendense_types::CredentialName;
use sendense_types::api::VcenterSession;
use sendense_vsphere::{IssueFuture, SessionIssuer, VsphereError};
use tracing::info;

use crate::error::ClientError;
use crate::hub::HubClient;

/// Issues vCenter sessions of one stored credential through the hub.
pub struct HubSessionIssuer {
    hub: HubClient,
    name: CredentialName,
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
    /// An issuer of sessions of credential `name`.
    #[must_use]
    pub fn new(hub: HubClient, name: CredentialName) -> Self {
        Self {
            hub,
            name,
            first: Mutex::new(None),
        }
    }

    /// Asks the hub for a session now and keeps it for the first [`SessionIssuer::issue`];
    /// answers the credential's vCenter host (`HOST[:PORT]`).
    ///
    /// # Errors
    /// [`ClientError::CredentialSession`]: unknown credential (404), vCenter refused or
    /// failed (502), the hub unreachable or refusing the token.
    pub async fn open(&self) -> Result<String, ClientError> {
        let session = self.fetch().await?;
        if let Ok(mut first) = self.first.lock() {
            *first = Some(session.session_cookie);
        }
        Ok(session.host)
    }

    async fn fetch(&self) -> Result<VcenterSession, ClientError> {
        let session = self
            .hub
            .credential_session(&self.name)
            .await
            .map_err(|source| ClientError::CredentialSession {
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
                None => self.fetch().await.map(|s| s.session_cookie).map_err(|e| {
                    VsphereError::SessionIssue {
                        issuer: self.describe(),
                        reason: sendense_io::error_chain(&e),
                    }
                }),
            }
        })
    }

    fn describe(&self) -> String {
        format!("credential {} (via the hub)", self.name)
    }
}
