//! Which partition table a disk carries, and its partitions' byte ranges.
//!
//! Order of checks: a protective MBR (type 0xEE) means GPT; a file system's boot sector in
//! sector 0 (FAT and NTFS carry `55 AA` too) means no table; an MBR whose entries are
//! plausible means MBR; anything else means no table, the whole disk one volume.

use std::sync::Arc;

use crate::error::FsError;
use crate::mbr::{self, SECTOR};
use crate::{BlockRead, TableKind, gpt, probe};

/// A partition before probing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawPartition {
    pub(crate) index: u32,
    pub(crate) start: u64,
    pub(crate) size: u64,
    pub(crate) type_id: String,
    pub(crate) name: Option<String>,
}

/// Reads the table of `disk`.
///
/// # Errors
/// [`FsError::Corrupt`] for a damaged table, [`FsError::TooLarge`], I/O errors.
pub(crate) fn read(disk: &Arc<dyn BlockRead>) -> Result<(TableKind, Vec<RawPartition>), FsError> {
    let size = disk.size();
    let whole = || {
        (
            TableKind::None,
            vec![RawPartition {
                index: 0,
                start: 0,
                size,
                type_id: String::new(),
                name: None,
            }],
        )
    };
    if size < SECTOR {
        return Ok(whole());
    }
    let sectors = size / SECTOR;
    let mut s0 = [0u8; 512];
    disk.read_at(&mut s0, 0).map_err(FsError::Io)?;
    let entries = mbr::entries(&s0);
    if entries.as_ref().is_some_and(mbr::is_protective) {
        let mut read = |buf: &mut [u8], off: u64| disk.read_at(buf, off).map_err(FsError::Io);
        return Ok((TableKind::Gpt, gpt::read(sectors, &mut read)?));
    }
    if probe::is_fs_boot_sector(&s0) {
        return Ok(whole());
    }
    match entries {
        Some(e) if mbr::plausible(&e) => {
            let mut read_sector = |lba: u64| {
                let mut s = [0u8; 512];
                let off = lba.checked_mul(SECTOR).ok_or_else(|| FsError::Corrupt {
                    what: "MBR partition table",
                    detail: format!("sector {lba} is past the disk's end"),
                })?;
                if off.checked_add(SECTOR).is_none_or(|end| end > size) {
                    return Err(FsError::Corrupt {
                        what: "MBR partition table",
                        detail: format!("sector {lba} is past the disk's end"),
                    });
                }
                disk.read_at(&mut s, off).map_err(FsError::Io)?;
                Ok(s)
            };
            Ok((TableKind::Mbr, mbr::read(&e, sectors, &mut read_sector)?))
        }
        _ => Ok(whole()),
    }
}
