//! [`VmDiskSource`]: a VM disk as of a snapshot, read from its base flat file on the datastore.
//!
//! While a snapshot exists, the disk file it froze is read-only, so reading that file over
//! `/folder` gives exactly the disk at the snapshot. Allocated extents come from
//! `QueryChangedDiskAreas` with change id `*`; when that query is refused (CBT not yet
//! active), the whole disk is treated as allocated.

use std::io;
use std::sync::Arc;

use sendense_transfer::{BoxFuture, DiskSource, Extent, TransferError};
use tracing::warn;

use crate::cbt::{ALL_ALLOCATED, changed_areas};
use crate::datastore::DatastoreFile;
use crate::error::{FaultKind, VsphereError};
use crate::session::Session;
use crate::soap::MoRef;

/// Where allocation information comes from.
#[derive(Debug, Clone)]
pub(crate) struct CbtContext {
    pub(crate) session: Session,
    pub(crate) vm: MoRef,
    pub(crate) snapshot: MoRef,
    pub(crate) key: i32,
}

/// A VM disk at a snapshot.
#[derive(Debug)]
pub struct VmDiskSource {
    file: DatastoreFile,
    capacity: u64,
    cbt: Option<CbtContext>,
    allocated: tokio::sync::OnceCell<Vec<Extent>>,
}

impl VmDiskSource {
    /// A disk of `capacity` bytes read from `file`; without CBT context everything is
    /// allocated.
    #[must_use]
    pub fn new(file: DatastoreFile, capacity: u64) -> Self {
        Self {
            file,
            capacity,
            cbt: None,
            allocated: tokio::sync::OnceCell::new(),
        }
    }

    pub(crate) fn with_cbt(mut self, cbt: CbtContext, allocated: Option<Vec<Extent>>) -> Self {
        self.cbt = Some(cbt);
        if let Some(a) = allocated {
            self.allocated = tokio::sync::OnceCell::new_with(Some(a));
        }
        self
    }

    /// Read `buf.len()` bytes at `offset`.
    ///
    /// # Errors
    /// [`VsphereError::ReadOutOfRange`] beyond the capacity; datastore read errors.
    pub async fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), VsphereError> {
        let length = buf.len() as u64;
        if offset
            .checked_add(length)
            .is_none_or(|end| end > self.capacity)
        {
            return Err(VsphereError::ReadOutOfRange {
                offset,
                length,
                capacity: self.capacity,
            });
        }
        self.file.read_at(offset, buf).await
    }

    async fn compute_allocated(&self) -> Result<Vec<Extent>, TransferError> {
        let whole = || {
            if self.capacity == 0 {
                Vec::new()
            } else {
                vec![Extent::new(0, self.capacity)]
            }
        };
        let Some(c) = &self.cbt else {
            return Ok(whole());
        };
        match changed_areas(
            &c.session,
            &c.vm,
            &c.snapshot,
            c.key,
            self.capacity,
            ALL_ALLOCATED,
        )
        .await
        {
            Ok(a) => Ok(a.extents),
            Err(e) if e.fault_kind() == Some(&FaultKind::FileFault) => {
                warn!(disk = c.key, error = %e, "allocated areas unavailable; reading the whole disk");
                Ok(whole())
            }
            Err(e) => Err(TransferError::Io {
                offset: 0,
                len: self.capacity,
                source: io::Error::other(e),
            }),
        }
    }
}

impl DiskSource for VmDiskSource {
    fn size(&self) -> u64 {
        self.capacity
    }

    fn read<'a>(
        &'a self,
        offset: u64,
        buf: &'a mut [u8],
    ) -> BoxFuture<'a, Result<(), TransferError>> {
        Box::pin(async move {
            let len = buf.len() as u64;
            match self.read_at(offset, buf).await {
                Ok(()) => Ok(()),
                Err(VsphereError::ReadOutOfRange { .. }) => Err(TransferError::OutOfRange {
                    offset,
                    len,
                    size: self.capacity,
                }),
                Err(e) => Err(TransferError::Io {
                    offset,
                    len,
                    source: io::Error::other(e),
                }),
            }
        })
    }

    fn allocated_extents(&self) -> BoxFuture<'_, Result<Vec<Extent>, TransferError>> {
        Box::pin(async move {
            self.allocated
                .get_or_try_init(|| self.compute_allocated())
                .await
                .cloned()
        })
    }
}

/// Convenience: an `Arc<dyn DiskSource>` of a [`VmDiskSource`].
#[must_use]
pub fn into_dyn(source: VmDiskSource) -> Arc<dyn DiskSource> {
    Arc::new(source)
}
