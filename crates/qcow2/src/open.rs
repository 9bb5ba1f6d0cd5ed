//! Opening one image layer: header, writability checks, L1 table and refcount table.
//! (Whole chains are opened in `chain`.)

use std::path::Path;
use std::sync::{Condvar, Mutex};

use crate::core::{Core, Geo};
use crate::error::Qcow2Error;
use crate::image::Image;
use crate::meta::{Meta, Refcounts, be_words};
use crate::offset::HostOffset;
use crate::options::OpenOptions;
use crate::parse::{Header, INCOMPAT_CORRUPT, INCOMPAT_DIRTY};
use crate::raw::RAW_HEADER_LEN;
use crate::storage::{Storage, read_or_zero};

use zerocopy::byteorder::big_endian::U64;

impl Image {
    /// Opens an image held in `storage` (no path, no locks, no backing files): for tests and
    /// fuzzing.
    ///
    /// # Errors
    /// As [`Image::open`]; an image naming a backing file is refused.
    pub fn open_storage(storage: Box<dyn Storage>, opts: &OpenOptions) -> Result<Self, Qcow2Error> {
        let img = Self::from_storage(storage, Path::new("<memory>"), opts.writable)?;
        if let Some(name) = &img.header.backing_file {
            return Err(Qcow2Error::BackingWithoutPath { name: name.clone() });
        }
        Ok(img)
    }

    pub(crate) fn from_storage(
        storage: Box<dyn Storage>,
        path: &Path,
        writable: bool,
    ) -> Result<Self, Qcow2Error> {
        let io = |op| move |e| Qcow2Error::io(op, path, e);
        let file_len = storage.file_len().map_err(io("stat"))?;
        let mut prefix = vec![0u8; (RAW_HEADER_LEN as u64).min(file_len) as usize];
        read_or_zero(storage.as_ref(), &mut prefix, 0).map_err(io("read header"))?;
        let first = Header::first_cluster_len(&prefix, file_len)?;
        let mut buf = vec![0u8; first as usize];
        read_or_zero(storage.as_ref(), &mut buf, 0).map_err(io("read header"))?;
        let header = Header::parse(&buf, file_len)?;
        if writable {
            let refuse = |reason| Qcow2Error::NotWritable {
                path: path.to_path_buf(),
                reason,
            };
            if header.version != 3 {
                return Err(refuse("version 2 images are opened read-only"));
            }
            if header.incompatible & INCOMPAT_DIRTY != 0 {
                return Err(refuse(
                    "dirty bit set (lazy refcounts); run qemu-img check -r all",
                ));
            }
            if header.incompatible & INCOMPAT_CORRUPT != 0 {
                return Err(refuse("corrupt bit set"));
            }
            if header.nb_snapshots != 0 {
                return Err(refuse("internal snapshots"));
            }
        }
        let geo = Geo::new(&header);
        let core = Core {
            storage,
            path: path.to_path_buf(),
            geo,
        };
        let mut l1_bytes = vec![0u8; header.l1_size as usize * 8];
        core.read_exact(
            &mut l1_bytes,
            HostOffset(header.l1_table_offset),
            "read L1 table",
        )?;
        let l1 = be_words(&l1_bytes);
        let rc = if writable {
            let cs = geo.cluster_size;
            let clusters = u64::from(header.refcount_table_clusters);
            let mut t = vec![0u8; (clusters * cs) as usize];
            core.read_exact(
                &mut t,
                HostOffset(header.refcount_table_offset),
                "read refcount table",
            )?;
            let table = be_words(&t).into_iter().map(|e| e & !0x1ff).collect();
            if header.autoclear != 0 {
                // "Auto-clear features: bitmask of auto-clear features. An implementation
                // may only write to an image with unknown auto-clear features if it clears
                // the respective bits from this field first."
                core.update_header(|h| h.autoclear_features = U64::ZERO)?;
                core.sync("sync header")?;
            }
            Some(Refcounts::new(
                table,
                HostOffset(header.refcount_table_offset),
                clusters,
                cs,
            ))
        } else {
            None
        };
        let meta = Meta::new(&core, l1, HostOffset(header.l1_table_offset), rc, file_len);
        Ok(Self {
            core,
            header,
            writable,
            backing: None,
            meta: Mutex::new(meta),
            cv: Condvar::new(),
            lock_file: None,
        })
    }
}
