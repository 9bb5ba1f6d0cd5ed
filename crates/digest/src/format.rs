//! The digest file stored beside each image (`<backup_id>.digests`), little-endian:
//!
//! ```text
//! 0   magic "SNDDGST1"
//! 8   block size (u32), reserved (u32, 0)
//! 16  disk size (u64)
//! 24  run count (u64)
//! 32  runs, ascending and non-overlapping, each:
//!       first block (u64), blocks (u64), kind (u64: 0 zeros, 1 data)
//!       and for data, one u64 digest per block
//! end XXH3-64 of every byte before it (u64)
//! ```
//!
//! [`LayerDigests::decode`] is bounded: it never reads past the slice, refuses any count
//! larger than the disk allows before allocating, and checks the trailing hash first.

use std::collections::BTreeMap;

use crate::{BLOCK_SIZE, DigestError, LayerDigests, Run, block_count, digest};

/// The file's first eight bytes.
pub const FORMAT_MAGIC: &[u8; 8] = b"SNDDGST1";

const HEADER_LEN: u64 = 32;
const BLOCK_SIZE_U32: u32 = 64 << 10;
const _: () = assert!(BLOCK_SIZE_U32 as u64 == BLOCK_SIZE);
const RUN_HEADER_LEN: u64 = 24;
const TRAILER_LEN: u64 = 8;
const KIND_ZERO: u64 = 0;
const KIND_DATA: u64 = 1;
/// The largest disk a digest file may describe (the NBD and QCOW2 limits are far below).
const MAX_DISK_SIZE: u64 = 1 << 60;

/// The largest encoding of a layer of a `disk_size`-byte disk: every block its own run is
/// impossible (neighbours join), but a data run per block is the bound a reader may accept.
#[must_use]
pub fn max_encoded_len(disk_size: u64) -> u64 {
    let blocks = block_count(disk_size.min(MAX_DISK_SIZE));
    HEADER_LEN + blocks.saturating_mul(RUN_HEADER_LEN + 8) + TRAILER_LEN
}

impl LayerDigests {
    /// The file form.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            (HEADER_LEN + self.runs().count() as u64 * RUN_HEADER_LEN + self.blocks() * 8) as usize,
        );
        out.extend_from_slice(FORMAT_MAGIC);
        out.extend_from_slice(&BLOCK_SIZE_U32.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&self.disk_size().to_le_bytes());
        out.extend_from_slice(&(self.runs().count() as u64).to_le_bytes());
        for (start, run) in self.runs() {
            out.extend_from_slice(&start.to_le_bytes());
            out.extend_from_slice(&run.len().to_le_bytes());
            match run {
                Run::Zero { .. } => out.extend_from_slice(&KIND_ZERO.to_le_bytes()),
                Run::Data(d) => {
                    out.extend_from_slice(&KIND_DATA.to_le_bytes());
                    for h in d {
                        out.extend_from_slice(&h.to_le_bytes());
                    }
                }
            }
        }
        let sum = digest(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    /// Parses the file form.
    ///
    /// # Errors
    /// [`DigestError::Malformed`] naming what is wrong: bad magic, block size, checksum,
    /// counts, order or length.
    pub fn decode(bytes: &[u8]) -> Result<Self, DigestError> {
        let bad = |reason| DigestError::Malformed { reason };
        if (bytes.len() as u64) < HEADER_LEN + TRAILER_LEN {
            return Err(bad("shorter than its header"));
        }
        let (body, trailer) = bytes.split_at(bytes.len() - TRAILER_LEN as usize);
        if &body[..8] != FORMAT_MAGIC {
            return Err(bad("not a Sendense digest file (magic)"));
        }
        if u64_at(trailer, 0) != digest(body) {
            return Err(bad("checksum mismatch (the file is damaged)"));
        }
        let block_size = u64::from(u32::from_le_bytes([body[8], body[9], body[10], body[11]]));
        if block_size != BLOCK_SIZE {
            return Err(bad("unsupported block size"));
        }
        let disk_size = u64_at(body, 16);
        if disk_size > MAX_DISK_SIZE {
            return Err(bad("disk size too large"));
        }
        let blocks = block_count(disk_size);
        let run_count = u64_at(body, 24);
        if run_count > blocks {
            return Err(bad("more runs than blocks"));
        }
        let mut runs = BTreeMap::new();
        let mut pos = HEADER_LEN;
        let mut next_free = 0u64;
        for _ in 0..run_count {
            if pos + RUN_HEADER_LEN > body.len() as u64 {
                return Err(bad("truncated run"));
            }
            let start = u64_at(body, pos);
            let len = u64_at(body, pos + 8);
            let kind = u64_at(body, pos + 16);
            pos += RUN_HEADER_LEN;
            if len == 0 || start < next_free || start.saturating_add(len) > blocks {
                return Err(bad(
                    "runs overlap, are empty, out of order or past the disk",
                ));
            }
            next_free = start + len;
            let run = match kind {
                KIND_ZERO => Run::Zero { blocks: len },
                KIND_DATA => {
                    let need = len * 8;
                    if pos + need > body.len() as u64 {
                        return Err(bad("truncated digests"));
                    }
                    let d = (0..len).map(|i| u64_at(body, pos + i * 8)).collect();
                    pos += need;
                    Run::Data(d)
                }
                _ => return Err(bad("unknown run kind")),
            };
            runs.insert(start, run);
        }
        if pos != body.len() as u64 {
            return Err(bad("bytes after the last run"));
        }
        let mut layer = Self::new(disk_size);
        // Re-insert so that neighbours of the same kind join as they would have when recorded.
        for (start, run) in runs {
            layer.insert(start, run);
        }
        Ok(layer)
    }
}

/// The u64 at `pos` (the caller checked the bounds).
fn u64_at(bytes: &[u8], pos: u64) -> u64 {
    let p = pos as usize;
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[p..p + 8]);
    u64::from_le_bytes(b)
}
