//! Absorb: merge an image's backing layer into the image — retention's "merge a middle layer
//! into its child" (QEMU calls it block-stream). The image takes every range its backing
//! layer holds and it does not, then names the backing layer's own backing file instead, so
//! it reads exactly as before while the backing layer can be deleted.
//!
//! Order (crash safety): data and metadata are copied and flushed first; until the header
//! names the new backing file the image reads the same through either backing file. The
//! header is then rewritten in one write of its cluster, encoded from the parsed header
//! through [`crate::raw::RawHeader`], and synced.

use std::path::Path;

use crate::chain::Backing;
use crate::copy::{BATCH, Pieces};
use crate::error::Qcow2Error;
use crate::image::Image;
use crate::offset::HostOffset;
use crate::parse::Header;
use crate::status::ExtentState;

/// Guest bytes examined (and at most copied) per step.
const ABSORB_CHUNK: u64 = 4 << 20;

impl Image {
    /// Merges this image's QCOW2 backing layer into it: copies every range the backing layer
    /// allocates (data or zeros) where this image has nothing, flushes, and then makes the
    /// backing layer's own backing file (or none) this image's backing file. This image reads
    /// exactly as before; the backing layer is closed and no longer needed by it.
    ///
    /// The backing layer and its backing file must be in this image's folder (the chains
    /// this engine writes keep every layer in one folder), so the stored name stays valid.
    ///
    /// # Errors
    /// [`Qcow2Error::ReadOnly`]; [`Qcow2Error::NoBacking`] without a QCOW2 backing layer;
    /// [`Qcow2Error::InvalidOptions`] when the backing layer is smaller than this image or
    /// lives in another folder; [`Qcow2Error::UnsupportedFeature`] for a header this engine
    /// would not write back unchanged (extensions it does not know); I/O errors. On error
    /// before the header switch this image still names its old backing layer and reads the
    /// same.
    pub fn absorb_backing(&mut self) -> Result<(), Qcow2Error> {
        self.check_writable()?;
        let Some(Backing::Qcow2(middle)) = &self.backing else {
            return Err(Qcow2Error::NoBacking);
        };
        if middle.virtual_size() < self.virtual_size() {
            return Err(Qcow2Error::InvalidOptions {
                reason: "backing layer is smaller than the image absorbing it",
            });
        }
        if middle.backing.is_some() && !same_folder(self.path(), middle.path())? {
            return Err(Qcow2Error::InvalidOptions {
                reason: "backing layer is in another folder",
            });
        }
        let new_name = middle.header.backing_file.clone();
        let new_format = middle.backing.as_ref().map(Backing::format);
        // Refuse before copying anything if the header cannot be rewritten faithfully.
        let header = self.reencodable_header()?;
        self.copy_from_backing(middle)?;
        self.flush()?;
        let mut header = header;
        header.backing_file = new_name;
        header.backing_format = new_format;
        let bytes = header.encode()?;
        self.core.write(&bytes, HostOffset(0), "write header")?;
        self.core.sync("sync header")?;
        self.header.backing_file = header.backing_file;
        self.header.backing_format = header.backing_format;
        if let Some(Backing::Qcow2(mut middle)) = self.backing.take() {
            self.backing = middle.backing.take();
        }
        Ok(())
    }

    /// The on-disk header, parsed, when encoding it gives back the first cluster byte for
    /// byte (every image this engine creates).
    fn reencodable_header(&self) -> Result<Header, Qcow2Error> {
        let file_len = self.core.storage_len()?;
        let mut first = vec![0u8; self.core.geo.cluster_size.min(file_len) as usize];
        self.core
            .read_exact(&mut first, HostOffset(0), "read header")?;
        let header = Header::parse(&first, file_len)?;
        if header.encode()? != first {
            return Err(Qcow2Error::UnsupportedFeature {
                feature: "rewriting a header with extensions this engine does not write".into(),
            });
        }
        Ok(header)
    }

    /// Copies into this image every range `middle` allocates where this image has nothing:
    /// zeroed ranges as found, data gathered and copied by [`Pieces::copy`], a batch at a time.
    fn copy_from_backing(&self, middle: &Self) -> Result<(), Qcow2Error> {
        let size = self.virtual_size();
        let read = |buf: &mut [u8], off: u64| middle.read_at(buf, off);
        let write = |buf: &[u8], off: u64| self.write_at(buf, off);
        let mut pieces = Pieces::default();
        let mut pos = 0;
        while pos < size {
            let len = ABSORB_CHUNK.min(size - pos);
            for own in self.block_status(pos, len)? {
                if own.state != ExtentState::Unallocated {
                    continue;
                }
                for ext in middle.block_status(own.offset, own.length)? {
                    match ext.state {
                        ExtentState::Unallocated => {}
                        ExtentState::Zero => self.write_zeroes(ext.offset, ext.length)?,
                        ExtentState::Data => pieces.push(ext.offset, ext.length),
                    }
                }
            }
            if pieces.bytes() >= BATCH {
                pieces.copy(&read, &write)?;
            }
            pos += len;
        }
        pieces.copy(&read, &write)
    }
}

/// Whether `a` and `b` are in the same folder (canonical paths).
fn same_folder(a: &Path, b: &Path) -> Result<bool, Qcow2Error> {
    let folder = |p: &Path| {
        let dir = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => Path::new(".").to_path_buf(),
        };
        std::fs::canonicalize(&dir).map_err(|e| Qcow2Error::io("resolve", &dir, e))
    };
    Ok(folder(a)? == folder(b)?)
}
