//! `image verify`: a QCOW2 chain read back against the digests stored beside each of its
//! layers (`<name>.digests`, [`sendense_digest`]): the digests of the bytes a Sendense client
//! read at its source, so a match proves the chain holds what the source held.
//!
//! The chain is opened read-only (QEMU's read locks), read in [`CHUNK`] pieces by a reader
//! thread while the caller's thread hashes the previous piece, and each block compared with
//! what the composed layers say it must read as ([`PointDigests`]). A block that reads wrong is
//! attributed to the layer that holds it: the newest layer whose digests record it, or, for a
//! block no layer recorded, the newest image that allocates it (the full when none does).

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use sendense_digest::{BLOCK_SIZE, BlockDigest, LayerDigests, PointDigests, max_encoded_len};
use sendense_qcow2::{Backing, BackingPolicy, ExtentState, Image, MAX_CHAIN_DEPTH, OpenOptions};
use serde::Serialize;

use crate::ImageError;

/// Bytes read (and hashed) per step: 64 blocks.
pub const CHUNK: usize = 4 << 20;
/// [`BLOCK_SIZE`] as a buffer length.
const BLOCK: usize = 64 << 10;
const _: () = assert!(BLOCK as u64 == BLOCK_SIZE && CHUNK.is_multiple_of(BLOCK));

/// A block that read differently from its digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BadBlock {
    /// The block's index (its offset is `block * BLOCK_SIZE`).
    pub block: u64,
    /// The layer that holds it: an index into [`ChainVerification::layers`].
    pub layer: usize,
}

/// What [`verify_chain`] found.
#[derive(Debug, Clone, Serialize)]
pub struct ChainVerification {
    /// The chain's files, oldest (the base) first.
    pub layers: Vec<PathBuf>,
    /// The top image's virtual size.
    pub disk_size: u64,
    /// The blocks that read wrong, ascending.
    pub bad: Vec<BadBlock>,
    /// Bytes read.
    pub bytes_read: u64,
    /// The digests of each layer, in the order of `layers`.
    #[serde(skip)]
    pub digests: Vec<LayerDigests>,
}

impl ChainVerification {
    /// Whether every block read as its digest says.
    #[must_use]
    pub fn ok(&self) -> bool {
        self.bad.is_empty()
    }
}

/// The digests file beside an image: the same name with the extension `digests`.
#[must_use]
pub fn digests_path(image: &Path) -> PathBuf {
    image.with_extension("digests")
}

/// Reads and decodes a digests file of a `capacity`-byte disk, refusing one larger than any
/// such file can be before reading it.
///
/// # Errors
/// [`ImageError::Io`]; [`ImageError::Digests`] for a damaged or oversized file.
pub fn load_digests(path: &Path, capacity: u64) -> Result<LayerDigests, ImageError> {
    let len = std::fs::metadata(path)
        .map_err(|e| ImageError::io(path, e))?
        .len();
    if len > max_encoded_len(capacity) {
        return Err(ImageError::Digests {
            path: path.to_path_buf(),
            source: sendense_digest::DigestError::Malformed {
                reason: "larger than any digests file of this disk",
            },
        });
    }
    let bytes = std::fs::read(path).map_err(|e| ImageError::io(path, e))?;
    LayerDigests::decode(&bytes).map_err(|source| ImageError::Digests {
        path: path.to_path_buf(),
        source,
    })
}

/// Verifies the chain whose top image is `path` (backing files allowed by `policy`).
/// `read(n)` is told after each chunk of `n` bytes.
///
/// # Errors
/// The chain cannot be opened or read ([`ImageError::Qcow2`]); a layer has no digests file
/// ([`ImageError::NoDigests`]) or a damaged one ([`ImageError::Digests`]); a raw backing
/// file ([`ImageError::RawLayer`]); digests of another disk size
/// ([`ImageError::DigestSize`]). Bytes that differ are not an error: see
/// [`ChainVerification::bad`].
pub fn verify_chain(
    path: &Path,
    policy: BackingPolicy,
    read: &mut dyn FnMut(u64),
) -> Result<ChainVerification, ImageError> {
    let opts = OpenOptions::read_only()
        .max_chain_depth(MAX_CHAIN_DEPTH)
        .backing(policy);
    let image = Image::open(path, &opts).map_err(|e| ImageError::qcow2(path, e))?;
    let mut files = Vec::new();
    let mut level = Some(&image);
    while let Some(img) = level {
        files.push((img.path().to_path_buf(), img.virtual_size()));
        level = match img.backing() {
            None => None,
            Some(Backing::Qcow2(b)) => Some(b),
            Some(raw @ Backing::Raw(_)) => {
                return Err(ImageError::RawLayer {
                    path: raw.path().to_path_buf(),
                });
            }
        };
    }
    files.reverse();
    let mut layers = Vec::with_capacity(files.len());
    let mut digests = Vec::with_capacity(files.len());
    for (f, size) in files {
        let d = digests_path(&f);
        if !d.is_file() {
            return Err(ImageError::NoDigests { image: f });
        }
        digests.push(load_digests(&d, size)?);
        layers.push(f);
    }
    let point = PointDigests::new(&digests);
    let size = image.virtual_size();
    if point.disk_size() != size {
        return Err(ImageError::DigestSize {
            path: path.to_path_buf(),
            digests: point.disk_size(),
            image: size,
        });
    }
    let bad = compare(&image, &point, layers.len(), read)?;
    Ok(ChainVerification {
        layers,
        disk_size: size,
        bad,
        bytes_read: size,
        digests,
    })
}

/// Reads the whole image and answers the blocks that differ from `point`.
fn compare(
    image: &Image,
    point: &PointDigests<'_>,
    depth: usize,
    read: &mut dyn FnMut(u64),
) -> Result<Vec<BadBlock>, ImageError> {
    let size = image.virtual_size();
    let (full_tx, full_rx) = mpsc::sync_channel::<Result<(u64, Vec<u8>), ImageError>>(2);
    let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
    for _ in 0..3 {
        let _ = empty_tx.send(Vec::with_capacity(CHUNK));
    }
    let mut bad = Vec::new();
    std::thread::scope(|scope| -> Result<(), ImageError> {
        scope.spawn(move || {
            let mut pos = 0u64;
            while pos < size {
                let Ok(mut buf) = empty_rx.recv() else {
                    return;
                };
                let len = usize::try_from(size - pos).map_or(CHUNK, |rest| rest.min(CHUNK));
                buf.resize(len, 0);
                let r = image
                    .read_at(&mut buf, pos)
                    .map(|()| (pos, buf))
                    .map_err(|e| ImageError::qcow2(image.path(), e));
                let failed = r.is_err();
                if full_tx.send(r).is_err() || failed {
                    return;
                }
                pos += len as u64;
            }
        });
        let mut pos = 0u64;
        while pos < size {
            let (offset, buf) = full_rx.recv().map_err(|_| ImageError::WorkerPanicked)??;
            for (i, block) in buf.chunks(BLOCK).enumerate() {
                let index = offset / BLOCK_SIZE + i as u64;
                let (expected, owner) = point.expected(index);
                if BlockDigest::of(block) != expected {
                    let layer = match owner {
                        Some(o) => o,
                        None => allocating_layer(image, depth, index)?,
                    };
                    bad.push(BadBlock {
                        block: index,
                        layer,
                    });
                }
            }
            pos = offset + buf.len() as u64;
            read(buf.len() as u64);
            let _ = empty_tx.send(buf);
        }
        Ok(())
    })?;
    Ok(bad)
}

/// The index (oldest first, of `depth` layers) of the newest layer whose image allocates
/// `block`; 0, the base, when none does.
fn allocating_layer(top: &Image, depth: usize, block: u64) -> Result<usize, ImageError> {
    let offset = block * BLOCK_SIZE;
    let mut level = Some(top);
    let mut index = depth;
    while let Some(img) = level {
        index = index.saturating_sub(1);
        if offset < img.virtual_size() {
            let len = BLOCK_SIZE.min(img.virtual_size() - offset);
            let status = img
                .block_status(offset, len)
                .map_err(|e| ImageError::qcow2(img.path(), e))?;
            if status.iter().any(|e| e.state != ExtentState::Unallocated) {
                return Ok(index);
            }
        }
        level = img.backing().and_then(Backing::as_image);
    }
    Ok(0)
}
