//! L2 entries: what one guest cluster maps to in this layer.

use crate::error::Qcow2Error;
use crate::image::Image;
use crate::meta::{L2E_OFFSET_MASK, OFLAG_COMPRESSED, OFLAG_ZERO};

/// State of one allocation granule of a guest cluster in this layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Granule {
    Unalloc,
    Zero,
    /// Host offset of the granule's data.
    Data(u64),
    Compressed,
}

impl Image {
    /// Granule states of a cluster from its L2 entry.
    pub(crate) fn granules(
        &self,
        e: u64,
        bm: u64,
        file_len: u64,
    ) -> Result<Vec<Granule>, Qcow2Error> {
        let geo = &self.core.geo;
        if e & OFLAG_COMPRESSED != 0 {
            return Ok(vec![Granule::Compressed; geo.granules as usize]);
        }
        let host = e & L2E_OFFSET_MASK;
        let check_host = || {
            if !host.is_multiple_of(geo.cluster_size) {
                return Err(Qcow2Error::Corrupt {
                    what: "misaligned data cluster offset",
                    offset: host,
                });
            }
            if host >= file_len {
                return Err(Qcow2Error::Corrupt {
                    what: "data cluster beyond end of file",
                    offset: host,
                });
            }
            Ok(())
        };
        if !geo.extended {
            let g = if geo.version >= 3 && e & OFLAG_ZERO != 0 {
                Granule::Zero
            } else if host == 0 {
                Granule::Unalloc
            } else {
                check_host()?;
                Granule::Data(host)
            };
            return Ok(vec![g]);
        }
        let alloc = bm & 0xffff_ffff;
        let zero = bm >> 32;
        if alloc & zero != 0 {
            return Err(Qcow2Error::Corrupt {
                what: "subcluster both allocated and zero",
                offset: host,
            });
        }
        if alloc != 0 {
            if host == 0 {
                return Err(Qcow2Error::Corrupt {
                    what: "allocated subclusters without host cluster",
                    offset: 0,
                });
            }
            check_host()?;
        }
        Ok((0..32)
            .map(|g| {
                if alloc & (1 << g) != 0 {
                    Granule::Data(host + g * geo.granule)
                } else if zero & (1 << g) != 0 {
                    Granule::Zero
                } else {
                    Granule::Unalloc
                }
            })
            .collect())
    }
}
