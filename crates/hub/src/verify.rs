//! Verification of restore points (DESIGN.md "Verification"): reads a point back and compares
//! it with the digests recorded from the bytes read at the source. The `verify` jobs the hub
//! runs itself ([`crate::hub_jobs`]) call [`Verifier::verify`].

use std::sync::Arc;

use sendense_catalog::{Catalog, CatalogError};
use sendense_types::{BackupId, Verification};

use crate::error::HubError;

/// Verifies restore points. Share one per hub (`Arc`).
#[derive(Debug)]
pub struct Verifier {
    catalog: Arc<Catalog>,
}

impl Verifier {
    /// A verifier of the points in `catalog`.
    #[must_use]
    pub fn new(catalog: Arc<Catalog>) -> Self {
        Self { catalog }
    }

    /// Verifies one point (blocking), reporting bytes done and total through `progress`;
    /// answers its verification.
    ///
    /// # Errors
    /// Unknown backup (404); [`HubError::VerificationUnavailable`] while this build cannot
    /// verify.
    pub fn verify(
        &self,
        id: &BackupId,
        progress: &dyn Fn(u64, u64),
    ) -> Result<Verification, HubError> {
        if self.catalog.backup(id)?.is_none() {
            return Err(HubError::Catalog(CatalogError::BackupNotFound {
                backup_id: id.clone(),
            }));
        }
        progress(0, 0);
        Err(HubError::VerificationUnavailable {
            backup_id: id.clone(),
        })
    }
}
