//! Compressed clusters: inflating the zlib (raw deflate) data a compressed L2 entry points
//! at (the descriptor itself is decoded by [`L2Entry::compressed_range`]).

use flate2::{Decompress, FlushDecompress, Status};

use crate::error::Qcow2Error;
use crate::image::Image;
use crate::l2_entry::L2Entry;

impl Image {
    /// Inflates the compressed cluster described by `entry`.
    pub(crate) fn decompress(&self, entry: L2Entry, file_len: u64) -> Result<Vec<u8>, Qcow2Error> {
        let geo = self.core.geo;
        let range = entry.compressed_range(geo.cluster_bits);
        let off = range.offset.get();
        if off >= file_len {
            return Err(Qcow2Error::Corrupt {
                what: "compressed cluster beyond end of file",
                offset: off,
            });
        }
        let size = range.len.min(file_len - off);
        let mut input = vec![0u8; size as usize];
        self.core
            .read_exact(&mut input, range.offset, "read compressed cluster")?;
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
