//! [`ImageInfo`]: header facts of an image and its whole backing chain.

use std::path::PathBuf;

use crate::chain::Backing;
use crate::image::Image;
use crate::parse::{BackingFormat, CompressionType, INCOMPAT_CORRUPT, INCOMPAT_DIRTY};

/// Description of one image (and, recursively, its backing chain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// Path as opened.
    pub path: PathBuf,
    /// QCOW2 version, 2 or 3.
    pub version: u32,
    /// Virtual size in bytes.
    pub virtual_size: u64,
    /// Cluster size in bytes.
    pub cluster_size: u64,
    /// Extended L2 entries.
    pub extended_l2: bool,
    /// Refcount width in bits.
    pub refcount_bits: u32,
    /// Backing file name as stored in the header.
    pub backing_file: Option<String>,
    /// Backing format from the header extension.
    pub backing_format: Option<BackingFormat>,
    /// Compression type.
    pub compression: CompressionType,
    /// Length of the image file in bytes.
    pub file_length: u64,
    /// Dirty bit (lazy refcounts).
    pub dirty: bool,
    /// Corrupt bit.
    pub corrupt: bool,
    /// Internal snapshots.
    pub snapshots: u32,
    /// The backing file, opened.
    pub backing: Option<Box<BackingInfo>>,
}

/// Description of a backing file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackingInfo {
    /// A QCOW2 image.
    Qcow2(ImageInfo),
    /// A raw file.
    Raw {
        /// Path as resolved.
        path: PathBuf,
        /// Size in bytes.
        size: u64,
    },
}

impl Image {
    /// Header facts about this image and its whole chain.
    #[must_use]
    pub fn info(&self) -> ImageInfo {
        let h = &self.header;
        let file_length = {
            let m = self.lock_meta();
            self.core.storage.file_len().unwrap_or(0).max(m.eof)
        };
        ImageInfo {
            path: self.core.path.clone(),
            version: h.version,
            virtual_size: h.virtual_size,
            cluster_size: h.cluster_size(),
            extended_l2: h.extended_l2(),
            refcount_bits: 1 << h.refcount_order,
            backing_file: h.backing_file.clone(),
            backing_format: h.backing_format,
            compression: h.compression,
            file_length,
            dirty: h.incompatible & INCOMPAT_DIRTY != 0,
            corrupt: h.incompatible & INCOMPAT_CORRUPT != 0,
            snapshots: h.nb_snapshots,
            backing: self.backing.as_ref().map(|b| {
                Box::new(match b {
                    Backing::Qcow2(i) => BackingInfo::Qcow2(i.info()),
                    Backing::Raw(r) => BackingInfo::Raw {
                        path: r.path.clone(),
                        size: r.size,
                    },
                })
            }),
        }
    }
}
