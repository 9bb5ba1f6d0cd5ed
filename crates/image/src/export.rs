//! An NBD export backed by a QCOW2 image of our engine: writes go to the top
//! layer, reads and block status go through the whole backing chain.
//!
//! The image is shared (`Arc`) with its owner, who flushes and renames it
//! when a backup completes; the export counts what it wrote so the owner can
//! report progress and notice an idle client.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sendense_nbd::export::{BlockExtent, Export, ExportError, ZeroFlags};
use sendense_qcow2::{BackingSpec, CreateOptions, ErrorKind, ExtentState, Image, Qcow2Error};

/// Cluster size of scratch overlays ([`scratch_overlay_options`]).
pub const SCRATCH_CLUSTER_SIZE: u32 = 64 * 1024;

/// How to create the writable scratch overlay of an instant-recovery export over the restore
/// point `backing`: 64 KiB clusters with extended L2 entries, opened with writeback.
///
/// Guests write in small pieces (4 KiB pages and file-system blocks) all over a disk whose
/// data lives in the backing chain. In a plain overlay every first write into a 64 KiB
/// cluster must copy the other 60 KiB from the chain (read, then write 64 KiB); with extended
/// L2 a cluster holds 32 subclusters of 2 KiB, each allocated on its own, so a 4 KiB write
/// writes 4 KiB and reads nothing. QEMU reads such overlays since 5.2 (`qemu-img create -o
/// extended_l2=on`).
///
/// Writeback (as QEMU's default `cache=writeback`): a guest's small writes go through the page
/// cache instead of waiting for the disk's random-write speed; an NBD `FLUSH` (and `FUA`,
/// which the server turns into a flush) makes data and metadata durable. Reopen such an
/// overlay with [`sendense_qcow2::OpenOptions::writeback`].
#[must_use]
pub fn scratch_overlay_options(virtual_size: u64, backing: BackingSpec) -> CreateOptions {
    CreateOptions::new(virtual_size)
        .cluster_size(SCRATCH_CLUSTER_SIZE)
        .extended_l2(true)
        .backing(backing)
        .writeback(true)
}

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

    fn read_now(&self, offset: u64, buf: &mut [u8]) -> Option<Result<(), ExportError>> {
        match self.image.read_at_now(buf, offset) {
            Ok(true) => Some(Ok(())),
            Ok(false) => None,
            Err(e) => Some(Err(nbd_error(e))),
        }
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

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test sizes are small
mod tests {
    use super::*;
    use sendense_qcow2::{BackingPolicy, Extent};

    const MIB: u64 = 1 << 20;

    fn pattern(seed: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
            .collect()
    }

    /// A 1 MiB restore point holding `pattern(7)` and a scratch overlay over it, served.
    fn instant_export(dir: &std::path::Path) -> Qcow2Export {
        let base = Image::create(&dir.join("point.qcow2"), &CreateOptions::new(MIB)).unwrap();
        base.write_at(&pattern(7, MIB as usize), 0).unwrap();
        drop(base);
        let opts = scratch_overlay_options(MIB, BackingSpec::qcow2("point.qcow2"))
            .backing_policy(BackingPolicy::repository());
        let overlay = Image::create(&dir.join("scratch.qcow2"), &opts).unwrap();
        Qcow2Export::new(Arc::new(overlay), false)
    }

    #[test]
    fn scratch_overlay_small_write_allocates_only_its_subclusters() {
        let dir = tempfile::tempdir().unwrap();
        let export = instant_export(dir.path());

        export.write(8192, &[0xee; 4096], false).unwrap();

        let mut expected = pattern(7, 65536);
        expected[8192..12288].fill(0xee);
        let mut back = vec![0u8; 65536];
        export.read(0, &mut back).unwrap();
        assert!(back == expected);
        assert!(export.image().info().extended_l2);
        // Only the 4 KiB written is the overlay's: nothing was copied up from the point.
        let own = export.image().block_status(0, 65536).unwrap();
        let data: Vec<(u64, u64)> = own
            .iter()
            .filter(|e: &&Extent| e.state == ExtentState::Data)
            .map(|e| (e.offset, e.length))
            .collect();
        assert_eq!(data, [(8192, 4096)]);
    }

    #[test]
    fn scratch_overlay_writes_back_and_a_flush_makes_every_write_durable() {
        let dir = tempfile::tempdir().unwrap();
        let export = instant_export(dir.path());
        let mut expected = pattern(7, MIB as usize);
        for (i, offset) in [8192u64, 65536, 4096, 500_000, MIB - 4096]
            .into_iter()
            .enumerate()
        {
            let data = pattern(100 + i as u8, 4096);
            export.write(offset, &data, false).unwrap();
            expected[offset as usize..offset as usize + 4096].copy_from_slice(&data);
        }

        export.flush().unwrap();
        drop(export);

        assert!(scratch_overlay_options(MIB, BackingSpec::qcow2("point.qcow2")).writeback);
        let opts = sendense_qcow2::OpenOptions::read_only().backing(BackingPolicy::repository());
        let reopened = Image::open(&dir.path().join("scratch.qcow2"), &opts).unwrap();
        let report = reopened.check().unwrap();
        assert!(report.is_clean(), "{report:?}");
        let mut back = vec![0u8; MIB as usize];
        reopened.read_at(&mut back, 0).unwrap();
        assert!(back == expected);
    }

    #[test]
    fn qcow2_export_read_now_answers_restore_point_data_once_cached() {
        let dir = tempfile::tempdir().unwrap();
        let export = instant_export(dir.path());
        let mut first = vec![0u8; 4096];
        export.read(MIB / 2, &mut first).unwrap();

        let mut now = vec![0u8; 4096];
        let answered = export.read_now(MIB / 2, &mut now);

        assert!(matches!(answered, Some(Ok(()))));
        assert_eq!(now, first);
        assert_eq!(
            now,
            &pattern(7, MIB as usize)[MIB as usize / 2..MIB as usize / 2 + 4096]
        );
    }
}
