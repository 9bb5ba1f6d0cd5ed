//! The master boot record: four primary entries in sector 0, and logical partitions in a chain
//! of extended boot records (EBRs) inside an extended partition.
//!
//! Layout (512-byte sectors): the 16-byte entries start at byte 446 (status, CHS start, type,
//! CHS end, LBA start `u32` LE, sector count `u32` LE), the signature `55 AA` sits at 510. In an
//! EBR, entry 0 is the logical partition relative to that EBR and entry 1 the next EBR relative
//! to the start of the extended partition. Linux numbers primaries by slot (1..=4) and logical
//! partitions in chain order from 5.
//!
//! The chain is hostile input: it is bounded by [`limits::MAX_PARTITIONS`], an EBR seen twice
//! ends it with an error, every EBR and logical partition must lie inside the extended
//! partition, and every offset is computed with `checked_*`.

use std::collections::HashSet;

use crate::error::FsError;
use crate::limits;
use crate::table::RawPartition;

/// Sector size.
pub(crate) const SECTOR: u64 = 512;

/// One 16-byte partition entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MbrEntry {
    pub(crate) status: u8,
    pub(crate) kind: u8,
    pub(crate) lba: u32,
    pub(crate) sectors: u32,
}

impl MbrEntry {
    fn is_extended(self) -> bool {
        matches!(self.kind, 0x05 | 0x0f | 0x85)
    }

    fn is_empty(self) -> bool {
        self.kind == 0 || self.sectors == 0
    }
}

/// The four entries of a boot record, when `sector` carries the `55 AA` signature.
pub(crate) fn entries(sector: &[u8; 512]) -> Option<[MbrEntry; 4]> {
    if sector[510..512] != [0x55, 0xaa] {
        return None;
    }
    Some(std::array::from_fn(|i| {
        let e = &sector[446 + 16 * i..446 + 16 * (i + 1)];
        MbrEntry {
            status: e[0],
            kind: e[4],
            lba: u32::from_le_bytes([e[8], e[9], e[10], e[11]]),
            sectors: u32::from_le_bytes([e[12], e[13], e[14], e[15]]),
        }
    }))
}

/// Whether the four entries look like a partition table at all (status bytes 0x00 or 0x80, at
/// least one used entry): a boot sector of a file system has code there instead.
pub(crate) fn plausible(entries: &[MbrEntry; 4]) -> bool {
    entries.iter().all(|e| e.status == 0 || e.status == 0x80)
        && entries.iter().any(|e| !e.is_empty())
}

/// Whether sector 0 is a protective MBR (an entry of type 0xEE: the disk carries a GPT).
pub(crate) fn is_protective(entries: &[MbrEntry; 4]) -> bool {
    entries.iter().any(|e| e.kind == 0xee)
}

/// Reads the partitions of an MBR disk: primaries, then the logical partitions of the (first)
/// extended partition. `read_sector` reads one 512-byte sector by LBA.
///
/// # Errors
/// [`FsError::Corrupt`] for a partition past the disk's end, an EBR outside its extended
/// partition or an EBR loop; [`FsError::TooLarge`] beyond [`limits::MAX_PARTITIONS`]; I/O
/// errors of `read_sector`.
pub(crate) fn read(
    primary: &[MbrEntry; 4],
    disk_sectors: u64,
    read_sector: &mut dyn FnMut(u64) -> Result<[u8; 512], FsError>,
) -> Result<Vec<RawPartition>, FsError> {
    let mut out = Vec::new();
    let mut extended = None;
    for (slot, e) in (1u32..).zip(primary) {
        if e.is_empty() {
            continue;
        }
        let (start, end) = span(u64::from(e.lba), u64::from(e.sectors), disk_sectors)
            .ok_or_else(|| corrupt(format!("partition {slot} ends past the disk's end")))?;
        if e.is_extended() {
            if extended.is_none() {
                extended = Some((start, end));
            }
            continue;
        }
        out.push(raw(slot, start, end, e.kind));
    }
    if let Some((ext_start, ext_end)) = extended {
        logicals(ext_start, ext_end, read_sector, &mut out)?;
    }
    Ok(out)
}

/// Walks the EBR chain of the extended partition `[ext_start, ext_end)` (in sectors).
fn logicals(
    ext_start: u64,
    ext_end: u64,
    read_sector: &mut dyn FnMut(u64) -> Result<[u8; 512], FsError>,
    out: &mut Vec<RawPartition>,
) -> Result<(), FsError> {
    let mut seen = HashSet::new();
    let mut ebr = ext_start;
    let mut index = 5u32;
    loop {
        if !seen.insert(ebr) {
            return Err(corrupt(format!(
                "the chain of logical partitions loops back to sector {ebr}"
            )));
        }
        if seen.len() > limits::MAX_PARTITIONS {
            return Err(FsError::TooLarge {
                what: format!("more than {} logical partitions", limits::MAX_PARTITIONS),
            });
        }
        let sector = read_sector(ebr)?;
        let Some(e) = entries(&sector) else {
            return Err(corrupt(format!(
                "extended boot record at sector {ebr} has no 55 AA signature"
            )));
        };
        let [logical, next, ..] = e;
        if !logical.is_empty() {
            let start = ebr
                .checked_add(u64::from(logical.lba))
                .ok_or_else(|| corrupt(format!("logical partition {index} overflows")))?;
            let (start, end) = span(start, u64::from(logical.sectors), ext_end)
                .filter(|(s, _)| *s > ebr)
                .ok_or_else(|| {
                    corrupt(format!(
                        "logical partition {index} lies outside its extended partition"
                    ))
                })?;
            out.push(raw(index, start, end, logical.kind));
            index = index
                .checked_add(1)
                .ok_or_else(|| corrupt("too many logical partitions".to_owned()))?;
        }
        if next.is_empty() {
            return Ok(());
        }
        ebr = ext_start
            .checked_add(u64::from(next.lba))
            .filter(|s| *s < ext_end)
            .ok_or_else(|| {
                corrupt(format!(
                    "the extended boot record after logical partition {} lies outside its extended partition",
                    index - 1
                ))
            })?;
    }
}

/// `[start, start + sectors)` when it ends inside `limit` sectors.
fn span(start: u64, sectors: u64, limit: u64) -> Option<(u64, u64)> {
    let end = start.checked_add(sectors)?;
    (end <= limit && start > 0).then_some((start, end))
}

fn raw(index: u32, start: u64, end: u64, kind: u8) -> RawPartition {
    RawPartition {
        index,
        start: start * SECTOR,
        size: (end - start) * SECTOR,
        type_id: format!("0x{kind:02x}"),
        name: None,
    }
}

fn corrupt(detail: String) -> FsError {
    FsError::Corrupt {
        what: "MBR partition table",
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sector_with(entries: &[(u8, u32, u32)]) -> [u8; 512] {
        let mut s = [0u8; 512];
        for (i, (kind, lba, sectors)) in entries.iter().enumerate() {
            let e = &mut s[446 + 16 * i..446 + 16 * (i + 1)];
            e[4] = *kind;
            e[8..12].copy_from_slice(&lba.to_le_bytes());
            e[12..16].copy_from_slice(&sectors.to_le_bytes());
        }
        s[510] = 0x55;
        s[511] = 0xaa;
        s
    }

    #[test]
    fn ebr_loop_is_an_error() {
        let mbr = sector_with(&[(0x83, 2048, 100), (0x05, 4096, 4096)]);
        let primary = entries(&mbr).unwrap();
        // The EBR points at itself as the next one.
        let ebr = sector_with(&[(0x83, 63, 100), (0x05, 0, 200)]);
        let mut sectors = |_lba: u64| Ok(ebr);
        let err = read(&primary, 10_000, &mut sectors).unwrap_err();
        assert!(err.to_string().contains("loops"), "{err}");
    }

    #[test]
    fn logicals_are_numbered_from_five() {
        let mbr = sector_with(&[(0x83, 2048, 100), (0x05, 4096, 4096)]);
        let primary = entries(&mbr).unwrap();
        let mut sectors = |lba: u64| {
            Ok(if lba == 4096 {
                sector_with(&[(0x83, 63, 100), (0x05, 1024, 1000)])
            } else {
                sector_with(&[(0x07, 63, 100)])
            })
        };
        let parts = read(&primary, 10_000, &mut sectors).unwrap();
        let idx: Vec<_> = parts.iter().map(|p| (p.index, p.start / 512)).collect();
        assert_eq!(idx, [(1, 2048), (5, 4159), (6, 5183)]);
    }

    #[test]
    fn partition_past_the_disk_is_an_error() {
        let mbr = sector_with(&[(0x83, 2048, u32::MAX)]);
        let primary = entries(&mbr).unwrap();
        let mut sectors = |_| Ok([0u8; 512]);
        assert!(read(&primary, 10_000, &mut sectors).is_err());
    }
}
