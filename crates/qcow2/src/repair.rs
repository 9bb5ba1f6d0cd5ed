//! Leak repair: gives back clusters whose refcount is above their references. A crash in the
//! middle of writing an image leaves at worst such leaks (see [`crate::meta`]); a merge that
//! is rolled forward after a crash repairs the image it wrote, so `qemu-img check` finds it
//! clean again.

use crate::error::Qcow2Error;
use crate::image::Image;

impl Image {
    /// Drops the refcount of every leaked cluster of this layer to its references, freeing
    /// (and punching out) those no longer used, and flushes. Answers how many clusters were
    /// leaked. Refuses an image whose check finds errors (those are not leaks: nothing is
    /// changed).
    ///
    /// # Errors
    /// [`Qcow2Error::ReadOnly`]; [`Qcow2Error::InvalidOptions`] when the check finds errors;
    /// I/O errors.
    pub fn repair_leaks(&self) -> Result<u64, Qcow2Error> {
        self.check_writable()?;
        let mut leaks: Vec<(u64, u64)> = Vec::new();
        let report = self.check_leaks(&mut |c, excess| leaks.push((c, excess)))?;
        if report.errors > 0 {
            return Err(Qcow2Error::InvalidOptions {
                reason: "the image has errors beyond leaked clusters",
            });
        }
        if leaks.is_empty() {
            return Ok(0);
        }
        {
            let mut m = self.lock_meta();
            for &(c, excess) in &leaks {
                for _ in 0..excess {
                    m.free_later(c, 1);
                }
            }
        }
        self.flush()?;
        Ok(leaks.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use crate::create::{create_header, create_layout};
    use crate::image::Image;
    use crate::options::{CreateOptions, OpenOptions};
    use crate::storage::MemStorage;

    #[test]
    fn leaked_clusters_are_given_back_and_data_stays() {
        let header = create_header(&CreateOptions::new(4 << 20).cluster_size(4096)).unwrap();
        let bytes = create_layout(&header).unwrap();
        let img = Image::open_storage(Box::new(MemStorage::new(bytes)), &OpenOptions::writable())
            .unwrap();
        let data = vec![7u8; 20_000];
        img.write_at(&data, 8192).unwrap();
        // Clusters allocated (refcount 1) that no L2 entry references: what a crash between
        // the refcount write and the L2 write leaves.
        {
            let mut m = img.lock_meta();
            let core = &img.core;
            m.alloc(core, 3).unwrap();
        }
        let before = img.check().unwrap();
        assert_eq!(before.errors, 0, "{before:?}");
        assert_eq!(before.leaks, 3, "{before:?}");
        assert_eq!(img.repair_leaks().unwrap(), 3);
        let after = img.check().unwrap();
        assert!(after.is_clean(), "{after:?}");
        let mut got = vec![0u8; data.len()];
        img.read_at(&mut got, 8192).unwrap();
        assert_eq!(got, data);
        assert_eq!(img.repair_leaks().unwrap(), 0);
    }
}
