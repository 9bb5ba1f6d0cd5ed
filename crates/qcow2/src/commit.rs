//! Commit: merge an image's clusters into its backing file — retention's "merge a layer into
//! its base" (the base then reads as the layer; the layer and every overlay above it read as
//! before).
//!
//! The backing file stays open read-only inside the chain; for the commit its read-only lock
//! bytes are relaxed on that descriptor, the file is opened writable through a second
//! descriptor (which takes QEMU's writer locks and so fails if anybody else uses it), the
//! image's allocated ranges are copied and its zeroed ranges zeroed, the writable handle
//! is flushed and closed, and the read-only lock is re-taken. The image itself is left as
//! it is: it still reads the same, since everything it holds now also lives below it.

use std::fs;
use std::os::unix::fs::FileExt;

use crate::chain::Backing;
use crate::copy::{BATCH, Pieces, WriteFn};
use crate::error::Qcow2Error;
use crate::image::Image;
use crate::lock::{self, LockMode};
use crate::options::OpenOptions;
use crate::status::ExtentState;

/// Guest bytes whose block status is read per step.
const COMMIT_CHUNK: u64 = 4 << 20;

impl Image {
    /// Merges this image's allocated and zeroed clusters into its backing file (QCOW2 or
    /// raw), which is opened writable for the duration. Afterwards the backing file reads
    /// exactly as this image, and this image (and any overlay above it) reads as before.
    /// Works on any layer of a chain: `top.backing().and_then(Backing::as_image)` commits
    /// a middle layer into its base.
    ///
    /// Data is copied through the guest view (compressed clusters land uncompressed); the
    /// backing file is flushed before this returns. On error the backing file may hold part
    /// of this image's clusters (this image still reads as before); it is not usable as the
    /// point it was.
    ///
    /// # Errors
    /// [`Qcow2Error::NoBacking`]; a backing file smaller than this image; lock conflicts;
    /// I/O errors.
    pub fn commit(&self) -> Result<(), Qcow2Error> {
        let backing = self.backing.as_ref().ok_or(Qcow2Error::NoBacking)?;
        if backing.virtual_size() < self.virtual_size() {
            return Err(Qcow2Error::InvalidOptions {
                reason: "backing file is smaller than the image to commit",
            });
        }
        let path = backing.path().to_path_buf();
        let ro_lock = match backing {
            Backing::Qcow2(img) => img.lock_file.as_ref(),
            Backing::Raw(r) => r.lock_file(),
        };
        if let Some(f) = ro_lock {
            lock::release_to_reader_without_unshare(f, &path)?;
        }
        let result = match backing {
            Backing::Qcow2(_) => {
                let target = Self::open(&path, &OpenOptions::writable());
                match target {
                    Ok(t) => {
                        let r = self
                            .copy_into(&|buf, off| t.write_at(buf, off), &mut |off, len| {
                                t.write_zeroes(off, len)
                            });
                        let r = r.and_then(|()| t.flush());
                        drop(t);
                        r
                    }
                    Err(e) => Err(e),
                }
            }
            Backing::Raw(_) => {
                let file = fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(|e| Qcow2Error::io("open backing writable", &path, e));
                match file {
                    Ok(f) => {
                        let r = lock::apply(&f, &path, LockMode::Write).and_then(|()| {
                            let write = |buf: &[u8], off: u64| {
                                f.write_all_at(buf, off)
                                    .map_err(|e| Qcow2Error::io("write backing", &path, e))
                            };
                            self.copy_into(&write, &mut |off, len| {
                                let zeros = vec![0u8; len as usize];
                                f.write_all_at(&zeros, off)
                                    .map_err(|e| Qcow2Error::io("write backing", &path, e))
                            })?;
                            f.sync_data()
                                .map_err(|e| Qcow2Error::io("sync backing", &path, e))
                        });
                        drop(f);
                        r
                    }
                    Err(e) => Err(e),
                }
            }
        };
        if let Some(f) = ro_lock {
            lock::apply(f, &path, LockMode::Read)?;
        }
        if let Backing::Qcow2(img) = backing {
            img.reload_metadata()?;
        }
        result
    }

    /// Walks this layer's block status: zeroed ranges go to `zero` as found, allocated ones
    /// are gathered and copied through `write` by [`Pieces::copy`], a batch at a time.
    fn copy_into(
        &self,
        write: &WriteFn<'_>,
        zero: &mut dyn FnMut(u64, u64) -> Result<(), Qcow2Error>,
    ) -> Result<(), Qcow2Error> {
        let size = self.virtual_size();
        let read = |buf: &mut [u8], off: u64| self.read_at(buf, off);
        let mut pieces = Pieces::default();
        let mut pos = 0;
        while pos < size {
            let len = COMMIT_CHUNK.min(size - pos);
            for ext in self.block_status(pos, len)? {
                match ext.state {
                    ExtentState::Unallocated => {}
                    ExtentState::Zero => zero(ext.offset, ext.length)?,
                    ExtentState::Data => pieces.push(ext.offset, ext.length),
                }
            }
            if pieces.bytes() >= BATCH {
                pieces.copy(&read, write)?;
            }
            pos += len;
        }
        pieces.copy(&read, write)
    }
}
