//! Creating an image: header for the options, initial layout (header, refcount table and
//! blocks, L1 table), file creation and open.

use std::fs;
use std::path::Path;

use crate::chain::FileChain;
use crate::error::Qcow2Error;
use crate::image::Image;
use crate::lock::{self, LockMode};
use crate::options::{CreateOptions, DEFAULT_CHAIN_DEPTH};
use crate::parse::{
    CompressionType, Header, INCOMPAT_EXTL2, MAX_BACKING_NAME, MAX_CLUSTER_BITS, MIN_CLUSTER_BITS,
    MIN_EXTENDED_L2_CLUSTER_BITS, default_feature_names,
};
use crate::raw::RAW_HEADER_LEN;

impl Image {
    /// Creates a new image at `path` (which must not exist) and opens it writable and locked.
    ///
    /// # Errors
    /// Invalid options, an existing file, I/O errors, or a backing file that cannot be opened.
    pub fn create(path: &Path, opts: &CreateOptions) -> Result<Self, Qcow2Error> {
        let header = create_header(opts)?;
        let bytes = create_layout(&header)?;
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    Qcow2Error::AlreadyExists {
                        path: path.to_path_buf(),
                    }
                } else {
                    Qcow2Error::io("create", path, e)
                }
            })?;
        let res = (|| {
            lock::apply(&file, path, LockMode::Write)?;
            std::io::Write::write_all(&mut file, &bytes)
                .map_err(|e| Qcow2Error::io("write new image", path, e))?;
            file.sync_all()
                .map_err(|e| Qcow2Error::io("sync new image", path, e))?;
            let mut chain = FileChain::new(path, DEFAULT_CHAIN_DEPTH, opts.backing_policy);
            // The caller named this backing file itself: the policy governs the names read
            // from images below it, relative to its folder.
            chain.trust_first = true;
            chain.writeback = opts.writeback;
            chain.layers = opts.layers.clone();
            Self::from_file(file, path, true, 0, &mut chain)
        })();
        if res.is_err() {
            let _ = fs::remove_file(path);
        }
        res
    }
}

pub(crate) fn create_header(opts: &CreateOptions) -> Result<Header, Qcow2Error> {
    let cs = opts.cluster_size;
    if !cs.is_power_of_two() {
        return Err(Qcow2Error::InvalidOptions {
            reason: "cluster size must be a power of two",
        });
    }
    let cluster_bits = cs.trailing_zeros();
    if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
        return Err(Qcow2Error::InvalidOptions {
            reason: "cluster size must be 512 B to 2 MiB",
        });
    }
    if opts.extended_l2 && cluster_bits < MIN_EXTENDED_L2_CLUSTER_BITS {
        return Err(Qcow2Error::InvalidOptions {
            reason: "extended L2 needs clusters of 16 KiB or more",
        });
    }
    if opts.virtual_size == 0 || !opts.virtual_size.is_multiple_of(512) {
        return Err(Qcow2Error::InvalidOptions {
            reason: "virtual size must be a non-zero multiple of 512",
        });
    }
    if opts.virtual_size > crate::parse::MAX_VIRTUAL_SIZE {
        return Err(Qcow2Error::InvalidOptions {
            reason: "virtual size too large",
        });
    }
    if let Some(b) = &opts.backing
        && (b.file.is_empty() || b.file.len() > MAX_BACKING_NAME as usize)
    {
        return Err(Qcow2Error::InvalidOptions {
            reason: "backing file name must be 1 to 1023 bytes",
        });
    }
    let csz = u64::from(cs);
    let entry = if opts.extended_l2 { 16 } else { 8 };
    let l1_size = opts.virtual_size.div_ceil((csz / entry) * csz);
    if l1_size > crate::parse::MAX_L1_ENTRIES {
        return Err(Qcow2Error::InvalidOptions {
            reason: "virtual size too large for the cluster size",
        });
    }
    Ok(Header {
        version: 3,
        cluster_bits,
        virtual_size: opts.virtual_size,
        l1_size: l1_size as u32,
        l1_table_offset: 0,
        refcount_table_offset: 0,
        refcount_table_clusters: 0,
        nb_snapshots: 0,
        snapshots_offset: 0,
        incompatible: if opts.extended_l2 { INCOMPAT_EXTL2 } else { 0 },
        compatible: 0,
        autoclear: 0,
        refcount_order: 4,
        header_length: RAW_HEADER_LEN as u32,
        compression: CompressionType::Zlib,
        backing_file: opts.backing.as_ref().map(|b| b.file.clone()),
        backing_format: opts.backing.as_ref().map(|b| b.format),
        feature_names: default_feature_names(),
    })
}

/// Lays out a new image: header cluster, refcount table, refcount blocks, L1 table; every
/// cluster has refcount 1. Returns the whole initial file.
pub(crate) fn create_layout(header: &Header) -> Result<Vec<u8>, Qcow2Error> {
    let mut h = header.clone();
    let cs = h.cluster_size();
    let l1_clusters = (u64::from(h.l1_size) * 8).div_ceil(cs).max(1);
    let per_block = cs * 8 / 16;
    let per_table_cluster = cs / 8;
    let (mut t, mut b) = (1u64, 1u64);
    loop {
        let n = 1 + t + b + l1_clusters;
        let nb = n.div_ceil(per_block);
        let nt = nb.div_ceil(per_table_cluster);
        if nb == b && nt == t {
            break;
        }
        b = nb.max(b);
        t = nt.max(t);
    }
    let total = 1 + t + b + l1_clusters;
    h.refcount_table_offset = cs;
    h.refcount_table_clusters = u32::try_from(t).map_err(|_| Qcow2Error::TooLarge {
        what: "refcount table",
    })?;
    h.l1_table_offset = (1 + t + b) * cs;
    let mut out = h.encode()?;
    let len = usize::try_from(total * cs).map_err(|_| Qcow2Error::TooLarge { what: "metadata" })?;
    out.resize(len, 0);
    for i in 0..b {
        let at = (cs + i * 8) as usize;
        out[at..at + 8].copy_from_slice(&((1 + t + i) * cs).to_be_bytes());
    }
    let blocks_start = ((1 + t) * cs) as usize;
    for c in 0..total {
        let at = blocks_start + (c * 2) as usize;
        out[at..at + 2].copy_from_slice(&1u16.to_be_bytes());
    }
    Ok(out)
}
