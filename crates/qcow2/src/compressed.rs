//! Compressed clusters: the host range a compressed descriptor spans, and inflating it.

use flate2::{Decompress, FlushDecompress, Status};

use crate::core::Geo;
use crate::error::Qcow2Error;
use crate::image::Image;
use crate::meta::{OFLAG_COMPRESSED, OFLAG_COPIED};

impl Image {
    /// Inflates the compressed cluster described by L2 entry `e`.
    pub(crate) fn decompress(&self, e: u64, file_len: u64) -> Result<Vec<u8>, Qcow2Error> {
        let geo = self.core.geo;
        let x = 62 - (geo.cluster_bits - 8);
        let off = e & ((1u64 << x) - 1);
        let sectors = ((e & !OFLAG_COMPRESSED & !OFLAG_COPIED) >> x) + 1;
        let size = sectors * 512 - (off & 511);
        if off >= file_len {
            return Err(Qcow2Error::Corrupt {
                what: "compressed cluster beyond end of file",
                offset: off,
            });
        }
        let size = size.min(file_len - off);
        let mut input = vec![0u8; size as usize];
        self.core
            .read_exact(&mut input, off, "read compressed cluster")?;
        let mut out = vec![0u8; geo.cluster_size as usize];
        let mut d = Decompress::new(false);
        let status = d
            .decompress(&input, &mut out, FlushDecompress::Finish)
            .map_err(|_| Qcow2Error::Decompress { offset: off })?;
        let full = d.total_out() == geo.cluster_size;
        match status {
            Status::StreamEnd | Status::Ok | Status::BufError if full => Ok(out),
            _ => Err(Qcow2Error::Decompress { offset: off }),
        }
    }
}

/// Host clusters spanned by a compressed cluster descriptor: (first cluster, count).
pub(crate) fn compressed_clusters(geo: &Geo, e: u64) -> (u64, u64) {
    let x = 62 - (geo.cluster_bits - 8);
    let off = e & ((1u64 << x) - 1);
    let sectors = ((e & !OFLAG_COMPRESSED & !OFLAG_COPIED) >> x) + 1;
    let size = sectors * 512 - (off & 511);
    let first = off / geo.cluster_size;
    let last = (off + size - 1) / geo.cluster_size;
    (first, last - first + 1)
}
