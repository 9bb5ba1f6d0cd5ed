//! [`Image`]: one open QCOW2 layer with its backing chain, its lifecycle (accessors, flush,
//! finalize, close) and the per-cluster claims that serialise writers.
//!
//! Where each operation lives: opening a layer in `open`, the backing chain in `chain`,
//! creating in `create`, reads in `read`, writes in `write`, zeroing and discard in `zero`,
//! block status in `status`, [`crate::ImageInfo`] in `info`, L2 entries in `l2_entry`,
//! compressed clusters in `compressed`, the file and geometry in `core`, metadata caches in
//! [`crate::meta`], merging a layer into its base in `commit`, merging the backing layer
//! into this image in `absorb`, consistency checks in `check`.
//!
//! # Concurrency
//! All I/O methods take `&self`; [`Image`] is `Send + Sync`. One mutex guards the layer's
//! metadata (`meta::Meta`). A write takes the mutex, waits until none of its guest
//! clusters has another write/zero/discard in flight, marks them in flight, allocates the
//! host clusters it needs (contiguously, at the end of the file) and releases the mutex. It
//! then reads any copy-on-write source and issues its data `pwrite`s without the mutex —
//! one `pwrite` per contiguous run — and finally re-takes the mutex to publish its L2
//! entries and clear its in-flight marks. Readers never wait: they see either the old
//! mapping or the new one, which is only published once the data is written. Overlapping
//! writers are serialised per cluster, so the result equals some serial order.
//!
//! Freed clusters are never reused while the image is open, so a reader that resolved an
//! old mapping still reads the old data.

use std::fs::{self, File};
use std::path::Path;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use crate::chain::Backing;
use crate::core::Core;
use crate::error::Qcow2Error;
use crate::meta::Meta;
use crate::parse::Header;

/// An open QCOW2 image layer with its backing chain.
pub struct Image {
    pub(crate) core: Core,
    pub(crate) header: Header,
    pub(crate) writable: bool,
    pub(crate) backing: Option<Backing>,
    pub(crate) meta: Mutex<Meta>,
    pub(crate) cv: Condvar,
    /// Keeps the OFD locks (a descriptor of the same open file description).
    pub(crate) lock_file: Option<File>,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("path", &self.core.path)
            .field("writable", &self.writable)
            .field("virtual_size", &self.core.geo.virtual_size)
            .field("cluster_size", &self.core.geo.cluster_size)
            .field("backing", &self.backing)
            .finish_non_exhaustive()
    }
}

impl Image {
    /// The path the image was opened with.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.core.path
    }

    /// Virtual size in bytes.
    #[must_use]
    pub fn virtual_size(&self) -> u64 {
        self.core.geo.virtual_size
    }

    /// Cluster size in bytes.
    #[must_use]
    pub fn cluster_size(&self) -> u64 {
        self.core.geo.cluster_size
    }

    /// The backing file, if any.
    #[must_use]
    pub fn backing(&self) -> Option<&Backing> {
        self.backing.as_ref()
    }

    pub(crate) fn lock_meta(&self) -> MutexGuard<'_, Meta> {
        self.meta.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn check_range(&self, offset: u64, length: u64) -> Result<(), Qcow2Error> {
        let vs = self.core.geo.virtual_size;
        if offset.checked_add(length).is_none_or(|end| end > vs) {
            return Err(Qcow2Error::OutOfRange {
                offset,
                length,
                virtual_size: vs,
            });
        }
        Ok(())
    }

    pub(crate) fn check_writable(&self) -> Result<(), Qcow2Error> {
        if self.writable {
            Ok(())
        } else {
            Err(Qcow2Error::ReadOnly {
                path: self.core.path.clone(),
            })
        }
    }

    /// Waits until no guest cluster in `[lo, hi)` is in flight, then marks them all.
    pub(crate) fn claim<'a>(
        &self,
        mut m: MutexGuard<'a, Meta>,
        lo: u64,
        hi: u64,
    ) -> MutexGuard<'a, Meta> {
        while (lo..hi).any(|c| m.inflight.contains(&c)) {
            m = self.cv.wait(m).unwrap_or_else(PoisonError::into_inner);
        }
        m.inflight.extend(lo..hi);
        m
    }

    pub(crate) fn release(&self, mut m: MutexGuard<'_, Meta>, lo: u64, hi: u64) {
        for c in lo..hi {
            m.inflight.remove(&c);
        }
        drop(m);
        self.cv.notify_all();
    }

    /// Makes all data and metadata written so far durable (see [`crate::meta`] for the order).
    ///
    /// # Errors
    /// I/O errors.
    pub fn flush(&self) -> Result<(), Qcow2Error> {
        if !self.writable {
            return Ok(());
        }
        let mut m = self.lock_meta();
        m.flush(&self.core)
    }

    /// Cuts off the space preallocated past the last allocated cluster (writable images with
    /// direct I/O keep some ahead of their writes). Close and [`Self::finalize`] do it; call it
    /// before a last flush when the image stays shared. Writes after it preallocate again.
    ///
    /// # Errors
    /// I/O errors.
    pub fn trim_preallocation(&self) -> Result<(), Qcow2Error> {
        if !self.writable {
            return Ok(());
        }
        self.lock_meta().trim_preallocation(&self.core)
    }

    /// Flushes, `fsync`s, renames the image onto `final_path` and `fsync`s its folder.
    ///
    /// # Errors
    /// I/O errors.
    pub fn finalize(self, final_path: &Path) -> Result<(), Qcow2Error> {
        self.trim_preallocation()?;
        self.flush()?;
        self.core
            .storage
            .sync_all()
            .map_err(|e| Qcow2Error::io("fsync", &self.core.path, e))?;
        fs::rename(&self.core.path, final_path)
            .map_err(|e| Qcow2Error::io("rename", &self.core.path, e))?;
        let dir = match final_path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Qcow2Error::io("fsync folder", dir, e))?;
        Ok(())
    }

    pub(crate) fn reload_metadata(&self) -> Result<(), Qcow2Error> {
        let mut m = self.lock_meta();
        m.reload(&self.core)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        if self.writable {
            let m = self.meta.get_mut().unwrap_or_else(PoisonError::into_inner);
            if let Err(e) = m.trim_preallocation(&self.core) {
                tracing::error!(path = %self.core.path.display(), error = %e, "trimming preallocated space on close failed");
            }
            if m.is_dirty()
                && let Err(e) = m.flush(&self.core)
            {
                tracing::error!(path = %self.core.path.display(), error = %e, "flush on close failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::create::{create_header, create_layout};
    use crate::options::{CreateOptions, OpenOptions};
    use crate::storage::{MemStorage, Storage};

    fn mem_image(size: u64, cs: u32) -> Image {
        let header = create_header(&CreateOptions::new(size).cluster_size(cs)).unwrap();
        let bytes = create_layout(&header).unwrap();
        Image::open_storage(Box::new(MemStorage::new(bytes)), &OpenOptions::writable()).unwrap()
    }

    fn data(seed: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn image_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Image>();
        assert_send_sync::<Backing>();
    }

    #[test]
    fn tiny_caches_evict_and_keep_content() {
        let img = mem_image(4 << 20, 512);
        {
            let mut m = img.lock_meta();
            m.set_cache_caps_for_test(1, 1);
        }
        let mut expected = vec![0u8; 4 << 20];
        for (i, off) in [0u64, 70_000, 1 << 20, 3 << 20, 33_000, 2_000_000]
            .into_iter()
            .enumerate()
        {
            let d = data(i as u8, 40_000);
            img.write_at(&d, off).unwrap();
            expected[off as usize..off as usize + d.len()].copy_from_slice(&d);
        }
        img.write_zeroes(1 << 20, 512 * 10).unwrap();
        expected[1 << 20..(1 << 20) + 5120].fill(0);
        let mut got = vec![0u8; expected.len()];
        img.read_at(&mut got, 0).unwrap();
        assert!(got == expected);
        let report = img.check().unwrap();
        assert!(report.is_clean(), "{report:?}");
    }

    #[test]
    fn refcount_table_growth_keeps_image_consistent() {
        let img = mem_image(16 << 20, 512);
        let d = data(7, 12 << 20);
        img.write_at(&d, 0).unwrap();
        let report = img.check().unwrap();
        assert!(report.is_clean(), "{report:?}");
        let mut got = vec![0u8; d.len()];
        img.read_at(&mut got, 0).unwrap();
        assert!(got == d);
    }

    #[test]
    fn create_layout_refcounts_cover_metadata() {
        let img = mem_image(64 << 20, 512);
        let report = img.check().unwrap();
        assert!(report.is_clean(), "{report:?}");
    }

    /// Records every write, length change and sync, to replay crashes.
    #[derive(Debug, Default)]
    struct Recorder {
        mem: MemStorage,
        log: Mutex<Vec<Rec>>,
    }

    #[derive(Debug, Clone)]
    enum Rec {
        Write(u64, Vec<u8>),
        SetLen(u64),
        Sync,
    }

    impl Storage for std::sync::Arc<Recorder> {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
            self.mem.read_at(buf, offset)
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
            self.log
                .lock()
                .unwrap()
                .push(Rec::Write(offset, buf.to_vec()));
            self.mem.write_at(buf, offset)
        }
        fn file_len(&self) -> std::io::Result<u64> {
            self.mem.file_len()
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.log.lock().unwrap().push(Rec::SetLen(len));
            self.mem.set_len(len)
        }
        fn sync_data(&self) -> std::io::Result<()> {
            self.log.lock().unwrap().push(Rec::Sync);
            Ok(())
        }
        fn sync_all(&self) -> std::io::Result<()> {
            self.sync_data()
        }
    }

    fn apply(image: &mut Vec<u8>, rec: &Rec) {
        match rec {
            Rec::Write(off, d) => {
                let end = *off as usize + d.len();
                if image.len() < end {
                    image.resize(end, 0);
                }
                image[*off as usize..end].copy_from_slice(d);
            }
            Rec::SetLen(n) => image.resize(*n as usize, 0),
            Rec::Sync => {}
        }
    }

    #[test]
    fn crash_at_any_sync_with_any_reordering_leaves_no_corruption() {
        // Arrange: a workload on an overlay-free image, with flushes in between.
        let header = create_header(&CreateOptions::new(4 << 20).cluster_size(4096)).unwrap();
        let initial = create_layout(&header).unwrap();
        let rec = std::sync::Arc::new(Recorder {
            mem: MemStorage::new(initial.clone()),
            ..Recorder::default()
        });
        let img = Image::open_storage(Box::new(rec.clone()), &OpenOptions::writable()).unwrap();
        {
            img.lock_meta().set_cache_caps_for_test(2, 2);
        }
        img.write_at(&data(1, 300_000), 1000).unwrap();
        img.flush().unwrap();
        img.write_at(&data(2, 100_000), 2 << 20).unwrap();
        img.write_zeroes(0, 65536).unwrap();
        img.discard(8192, 200_000).unwrap();
        img.write_at(&data(3, 5000), 3 << 20).unwrap();
        img.flush().unwrap();
        img.write_at(&data(4, 70_000), 100_000).unwrap();
        drop(img);
        let log = rec.log.lock().unwrap().clone();
        let syncs: Vec<usize> = log
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r, Rec::Sync))
            .map(|(i, _)| i)
            .collect();
        // Act + assert: crash after sync k with an arbitrary subset of the next epoch's writes.
        let mut seed = 12345u64;
        for (k, &at) in syncs.iter().enumerate() {
            let next = syncs.get(k + 1).copied().unwrap_or(log.len());
            for _ in 0..8 {
                let mut image = initial.clone();
                for r in &log[..at] {
                    apply(&mut image, r);
                }
                for r in &log[at..next] {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    if seed.is_multiple_of(2) {
                        apply(&mut image, r);
                    }
                }
                let crashed = Image::open_storage(
                    Box::new(MemStorage::new(image)),
                    &OpenOptions::read_only(),
                )
                .unwrap();
                let report = crashed.check().unwrap();
                assert_eq!(
                    report.errors,
                    0,
                    "crash after sync {k}: {:?}",
                    report.messages.first()
                );
                let mut buf = vec![0u8; 4 << 20];
                crashed.read_at(&mut buf, 0).unwrap();
            }
        }
    }
}
