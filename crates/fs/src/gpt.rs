//! The GUID partition table (UEFI 2.10, section 5.3).
//!
//! The header sits at LBA 1 ("EFI PART", revision, header size 92..=512, CRC32 of the header
//! with its CRC field zeroed, this header's LBA, the other header's LBA, first and last usable
//! LBA, disk GUID, LBA of the entry array, number of entries, size of one entry (128 × 2^n),
//! CRC32 of the array). The backup header is at the disk's last LBA, its entry array just
//! before it. Entries: type GUID, unique GUID, first LBA, last LBA (inclusive), attributes, a
//! 72-byte UTF-16LE name.
//!
//! When the primary header or its array fails a check, the backup is read (a `tracing` warning
//! says so); when both fail, the error names both faults. The array is at most
//! [`MAX_ARRAY_BYTES`] and the used entries at most [`limits::MAX_PARTITIONS`].

use crate::error::FsError;
use crate::le::{u32_at, u64_at};
use crate::limits;
use crate::mbr::SECTOR;
use crate::table::RawPartition;

/// Fills a buffer from a byte offset of the disk.
pub(crate) type ReadFn<'a> = &'a mut dyn FnMut(&mut [u8], u64) -> Result<(), FsError>;

/// Largest entry array read (the usual one is 128 × 128 bytes = 16 KiB).
const MAX_ARRAY_BYTES: u64 = 1024 * 1024;

/// Reads the GPT of a disk of `disk_sectors` sectors; `read` fills a buffer from a byte offset.
///
/// # Errors
/// [`FsError::Corrupt`] when neither header with its array passes the checks,
/// [`FsError::TooLarge`] beyond the limits, I/O errors.
pub(crate) fn read(disk_sectors: u64, read: ReadFn<'_>) -> Result<Vec<RawPartition>, FsError> {
    let primary = read_at_lba(1, disk_sectors, read);
    let primary_err = match primary {
        Ok(parts) => return Ok(parts),
        Err(e @ (FsError::Io(_) | FsError::TooLarge { .. })) => return Err(e),
        Err(e) => e,
    };
    let last = disk_sectors.saturating_sub(1);
    tracing::warn!(
        error = %primary_err,
        backup_lba = last,
        "primary GPT header damaged, reading the backup at the disk's end"
    );
    read_at_lba(last, disk_sectors, read).map_err(|backup_err| match backup_err {
        FsError::Corrupt { detail, .. } => corrupt(format!(
            "primary: {}; backup: {detail}",
            detail_of(&primary_err)
        )),
        other => other,
    })
}

fn detail_of(e: &FsError) -> String {
    match e {
        FsError::Corrupt { detail, .. } => detail.clone(),
        other => other.to_string(),
    }
}

/// The header at `lba` and its entry array, both checked.
fn read_at_lba(
    lba: u64,
    disk_sectors: u64,
    read: ReadFn<'_>,
) -> Result<Vec<RawPartition>, FsError> {
    if lba < 1 || lba >= disk_sectors {
        return Err(corrupt(format!("header LBA {lba} is outside the disk")));
    }
    let mut h = [0u8; 512];
    read(&mut h, lba * SECTOR)?;
    let header = Header::parse(&h, lba, disk_sectors)?;
    let array_len = u64::from(header.entries) * u64::from(header.entry_size);
    if array_len > MAX_ARRAY_BYTES {
        return Err(FsError::TooLarge {
            what: format!("GPT entry array of {array_len} bytes"),
        });
    }
    let array_end = header
        .array_lba
        .checked_mul(SECTOR)
        .and_then(|s| s.checked_add(array_len))
        .ok_or_else(|| corrupt("entry array offset overflows".to_owned()))?;
    if header.array_lba < 2 || array_end > disk_sectors * SECTOR {
        return Err(corrupt(format!(
            "entry array at LBA {} lies outside the disk",
            header.array_lba
        )));
    }
    // Bounded by MAX_ARRAY_BYTES above.
    let mut array = vec![0u8; usize::try_from(array_len).unwrap_or(0)];
    read(&mut array, header.array_lba * SECTOR)?;
    if crc32fast::hash(&array) != header.array_crc {
        return Err(corrupt(format!(
            "entry array CRC32 mismatch (header at LBA {lba})"
        )));
    }
    entries(&array, &header, disk_sectors)
}

/// The checked fields of a header.
#[derive(Debug)]
struct Header {
    first_usable: u64,
    last_usable: u64,
    array_lba: u64,
    entries: u32,
    entry_size: u32,
    array_crc: u32,
}

impl Header {
    fn parse(h: &[u8; 512], lba: u64, disk_sectors: u64) -> Result<Self, FsError> {
        if &h[0..8] != b"EFI PART" {
            return Err(corrupt(format!("no \"EFI PART\" signature at LBA {lba}")));
        }
        let size = u32_at(h, 12);
        if !(92..=512).contains(&size) {
            return Err(corrupt(format!("header size {size} at LBA {lba}")));
        }
        let stored_crc = u32_at(h, 16);
        let mut copy = *h;
        copy[16..20].fill(0);
        // size <= 512 was checked above.
        let size = size as usize;
        if crc32fast::hash(&copy[..size]) != stored_crc {
            return Err(corrupt(format!("header CRC32 mismatch at LBA {lba}")));
        }
        if u64_at(h, 24) != lba {
            return Err(corrupt(format!(
                "header at LBA {lba} says it is at LBA {}",
                u64_at(h, 24)
            )));
        }
        let header = Self {
            first_usable: u64_at(h, 40),
            last_usable: u64_at(h, 48),
            array_lba: u64_at(h, 72),
            entries: u32_at(h, 80),
            entry_size: u32_at(h, 84),
            array_crc: u32_at(h, 88),
        };
        if header.entry_size < 128
            || !header.entry_size.is_power_of_two()
            || header.entry_size > 4096
        {
            return Err(corrupt(format!(
                "entry size {} at LBA {lba}",
                header.entry_size
            )));
        }
        if header.first_usable > header.last_usable || header.last_usable >= disk_sectors {
            return Err(corrupt(format!(
                "usable range {}..={} does not fit the disk of {disk_sectors} sectors",
                header.first_usable, header.last_usable
            )));
        }
        Ok(header)
    }
}

/// The used entries of a checked array.
fn entries(array: &[u8], header: &Header, disk_sectors: u64) -> Result<Vec<RawPartition>, FsError> {
    // entry_size is 128..=4096, checked in Header::parse.
    let step = header.entry_size as usize;
    let mut out = Vec::new();
    for (index, e) in (1u32..).zip(array.chunks_exact(step)) {
        let type_guid: [u8; 16] = e[0..16].try_into().unwrap_or([0; 16]);
        if type_guid == [0; 16] {
            continue;
        }
        if out.len() >= limits::MAX_PARTITIONS {
            return Err(FsError::TooLarge {
                what: format!("more than {} GPT partitions", limits::MAX_PARTITIONS),
            });
        }
        let first = u64_at(e, 32);
        let last = u64_at(e, 40);
        if first > last || last >= disk_sectors || first == 0 {
            return Err(corrupt(format!(
                "partition {index} spans LBA {first}..={last}, outside the disk of {disk_sectors} sectors"
            )));
        }
        let name: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|c| *c != 0)
            .collect();
        let name = String::from_utf16_lossy(&name);
        out.push(RawPartition {
            index,
            start: first * SECTOR,
            size: (last - first + 1) * SECTOR,
            type_id: guid(&type_guid),
            name: (!name.is_empty()).then_some(name),
        });
    }
    Ok(out)
}

/// A GUID as text: the first three fields are little-endian on disk.
pub(crate) fn guid(b: &[u8; 16]) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_le_bytes([b[4], b[5]]),
        u16::from_le_bytes([b[6], b[7]]),
        b[8],
        b[9],
        b[10],
        b[11],
        b[12],
        b[13],
        b[14],
        b[15]
    )
}

fn corrupt(detail: String) -> FsError {
    FsError::Corrupt {
        what: "GPT partition table",
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_formats_mixed_endian() {
        // Linux filesystem data: 0FC63DAF-8483-4772-8E79-3D69D8477DE4.
        let b = [
            0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47,
            0x7d, 0xe4,
        ];
        assert_eq!(guid(&b), "0fc63daf-8483-4772-8e79-3d69d8477de4");
    }

    #[test]
    fn blank_disk_is_corrupt_not_a_panic() {
        let mut read = |buf: &mut [u8], _| {
            buf.fill(0);
            Ok(())
        };
        let err = super::read(100, &mut read).unwrap_err();
        assert!(err.to_string().contains("primary"), "{err}");
    }
}
