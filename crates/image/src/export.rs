//! An NBD export backed by a QCOW2 image of our engine: writes go to the top
//! layer, reads and block status go through the whole backing chain.
//!
//! The image is shared (`Arc`) with its owner, who flushes and renames it
//! when a backup completes; the export counts what it wrote so the owner can
//! report progress and notice an idle client.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sendense_nbd::export::{BlockExtent, Export, ExportError, ZeroFlags};
use sendense_qcow2::{ErrorKind, ExtentState, Image, Qcow2Error};

/// NBD export over a QCOW2 image (and its chain).
#[derive(Debug)]
pub struct Qcow2Export {
    image: Arc<Image>,
    read_only: bool,
    bytes_written: AtomicU64,
}

impl Qcow2Export {
    /// Serves `image`; with `read_only`, every write is refused with `EPERM`.
    pub fn new(image: Arc<Image>, read_only: bool) -> Self {
        Self {
            image,
            read_only,
            bytes_written: AtomicU64::new(0),
        }
    }

    /// The image served.
    pub fn image(&self) -> &Arc<Image> {
        &self.image
    }

    /// Bytes written or zeroed through this export so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written.load(Ordering::Relaxed)
    }

    fn writable(&self) -> Result<(), ExportError> {
        if self.read_only {
            Err(ExportError::read_only())
        } else {
            Ok(())
        }
    }
}

/// Maps an engine error to the NBD error a client sees.
fn nbd_error(e: Qcow2Error) -> ExportError {
    match e.kind() {
        ErrorKind::OutOfRange => ExportError::invalid(),
        ErrorKind::ReadOnly => ExportError::read_only(),
        _ => {
            tracing::warn!(error = %sendense_io::error_chain(&e), "QCOW2 export operation failed");
            match e {
                Qcow2Error::Io { source, .. } => ExportError::io(source),
                _ => ExportError::io_failed(),
            }
        }
    }
}

impl Export for Qcow2Export {
    fn size(&self) -> u64 {
        self.image.virtual_size()
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn preferred_block_size(&self) -> u32 {
        u32::try_from(self.image.cluster_size())
            .unwrap_or(65536)
            .clamp(4096, 2 << 20)
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), ExportError> {
        self.image.read_at(buf, offset).map_err(nbd_error)
    }

    // FUA (here and below) is the server's: it calls `flush` once after the request
    // (the `Export::write` contract), so flushing here too would flush twice.
    fn write(&self, offset: u64, data: &[u8], _fua: bool) -> Result<(), ExportError> {
        self.writable()?;
        self.image.write_at(data, offset).map_err(nbd_error)?;
        self.bytes_written
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64, _flags: ZeroFlags) -> Result<(), ExportError> {
        // Zeroing in our engine is a metadata operation (zero flags, or
        // nothing at all in a standalone image), so FAST_ZERO always holds.
        self.writable()?;
        self.image.write_zeroes(offset, len).map_err(nbd_error)?;
        self.bytes_written.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    fn trim(&self, offset: u64, len: u64, _fua: bool) -> Result<(), ExportError> {
        self.writable()?;
        self.image.discard(offset, len).map_err(nbd_error)?;
        Ok(())
    }

    fn flush(&self) -> Result<(), ExportError> {
        if self.read_only {
            return Ok(());
        }
        self.image.flush().map_err(nbd_error)
    }

    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<BlockExtent>, ExportError> {
        let extents = self.image.chain_status(offset, len).map_err(nbd_error)?;
        Ok(extents
            .into_iter()
            .map(|e| {
                let zero = e.state != ExtentState::Data;
                BlockExtent {
                    length: e.length,
                    hole: zero,
                    zero,
                }
            })
            .collect())
    }
}
