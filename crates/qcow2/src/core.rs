//! [`Core`]: the image file and its geometry, shared by the engine and its metadata code.
//!
//! Everything that does I/O on the image file goes through `Core`, which turns `io::Error`
//! into [`Qcow2Error::Io`] naming the operation and the file.

use std::path::PathBuf;

use zerocopy::{FromZeros, IntoBytes};

use crate::error::Qcow2Error;
use crate::offset::HostOffset;
use crate::parse::Header;
use crate::raw::RawHeader;
use crate::storage::{CACHED_READ_MAX, Storage, read_data_or_zero, read_or_zero};

/// Geometry derived from the header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geo {
    pub(crate) version: u32,
    pub(crate) cluster_bits: u32,
    pub(crate) cluster_size: u64,
    pub(crate) extended: bool,
    /// u64 words per L2 entry (1, or 2 with extended L2).
    pub(crate) entry_words: usize,
    /// Entries per L2 table.
    pub(crate) l2_entries: u64,
    /// Allocation granule: subcluster size with extended L2, else the cluster size.
    pub(crate) granule: u64,
    /// Granules per cluster (32 or 1).
    pub(crate) granules: u64,
    pub(crate) virtual_size: u64,
    pub(crate) refcount_order: u32,
}

impl Geo {
    pub(crate) fn new(h: &Header) -> Self {
        let cluster_size = h.cluster_size();
        let extended = h.extended_l2();
        let entry_words = if extended { 2 } else { 1 };
        let granules = if extended { 32 } else { 1 };
        Self {
            version: h.version,
            cluster_bits: h.cluster_bits,
            cluster_size,
            extended,
            entry_words,
            l2_entries: cluster_size / (8 * entry_words as u64),
            granule: cluster_size / granules,
            granules,
            virtual_size: h.virtual_size,
            refcount_order: h.refcount_order,
        }
    }
}

/// The file and its geometry: what metadata code needs for I/O.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) storage: Box<dyn Storage>,
    pub(crate) path: PathBuf,
    pub(crate) geo: Geo,
}

impl Core {
    pub(crate) fn read_exact(
        &self,
        buf: &mut [u8],
        off: HostOffset,
        op: &'static str,
    ) -> Result<(), Qcow2Error> {
        read_or_zero(self.storage.as_ref(), buf, off.get())
            .map_err(|e| Qcow2Error::io(op, &self.path, e))
    }
    pub(crate) fn write(
        &self,
        buf: &[u8],
        off: HostOffset,
        op: &'static str,
    ) -> Result<(), Qcow2Error> {
        self.storage
            .write_at(buf, off.get())
            .map_err(|e| Qcow2Error::io(op, &self.path, e))
    }
    /// Reads guest data (may bypass the page cache, see [`crate::storage`]). A small read
    /// first asks the storage to read ahead the whole cluster around it (read-only layers
    /// cache it, see [`crate::storage`]).
    pub(crate) fn read_data(&self, buf: &mut [u8], off: HostOffset) -> Result<(), Qcow2Error> {
        if buf.len() < CACHED_READ_MAX {
            let cs = self.geo.cluster_size;
            let start = off.get() / cs * cs;
            let end = (off.get() + buf.len() as u64).next_multiple_of(cs);
            self.storage.read_ahead(start, end - start);
        }
        read_data_or_zero(self.storage.as_ref(), buf, off.get())
            .map_err(|e| Qcow2Error::io("read data", &self.path, e))
    }
    /// [`Self::read_data`] if it needs no waiting; `false` when it would wait.
    pub(crate) fn read_data_now(
        &self,
        buf: &mut [u8],
        off: HostOffset,
    ) -> Result<bool, Qcow2Error> {
        match self.storage.read_data_now(buf, off.get()) {
            Ok(Some(n)) => Ok(n == buf.len()),
            Ok(None) => Ok(false),
            Err(e) => Err(Qcow2Error::io("read data", &self.path, e)),
        }
    }
    /// Writes guest data (may bypass the page cache, see [`crate::storage`]).
    pub(crate) fn write_data(
        &self,
        buf: &[u8],
        off: HostOffset,
        op: &'static str,
    ) -> Result<(), Qcow2Error> {
        self.storage
            .write_data_at(buf, off.get())
            .map_err(|e| Qcow2Error::io(op, &self.path, e))
    }
    /// Rewrites the fixed header through [`RawHeader`]: reads it, lets `change` set fields,
    /// and writes it back (only writable version 3 images, whose header is at least 104
    /// bytes long in a first cluster of at least 512, get here; bytes read are bytes written).
    pub(crate) fn update_header(
        &self,
        change: impl FnOnce(&mut RawHeader),
    ) -> Result<(), Qcow2Error> {
        let mut raw = RawHeader::new_zeroed();
        self.read_exact(raw.as_mut_bytes(), HostOffset(0), "read header")?;
        change(&mut raw);
        self.write(raw.as_bytes(), HostOffset(0), "write header")
    }
    pub(crate) fn sync(&self, op: &'static str) -> Result<(), Qcow2Error> {
        self.storage
            .sync_data()
            .map_err(|e| Qcow2Error::io(op, &self.path, e))
    }
    pub(crate) fn storage_len(&self) -> Result<u64, Qcow2Error> {
        self.storage
            .file_len()
            .map_err(|e| Qcow2Error::io("stat", &self.path, e))
    }
    pub(crate) fn set_len(&self, len: u64) -> Result<(), Qcow2Error> {
        self.storage
            .set_len(len)
            .map_err(|e| Qcow2Error::io("set length", &self.path, e))
    }
}
