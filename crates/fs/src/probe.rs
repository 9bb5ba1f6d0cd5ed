//! Naming the file system in a volume from its magic numbers (the offsets `blkid` uses).
//!
//! Read: ext2/3/4 (`53 EF` at byte 1080), NTFS (`NTFS    ` OEM id at byte 3), FAT12/16/32 (a
//! boot sector whose BIOS parameter block is sane). Named but not read: xfs, btrfs, swap, LVM2
//! physical volumes, LUKS, iso9660, exFAT, ReFS, BitLocker, f2fs, squashfs, zfs.

use crate::error::FsError;
use crate::volume::Volume;
use crate::{Detected, FsKind};

/// What the first bytes of `volume` show.
///
/// # Errors
/// I/O errors of the disk.
pub(crate) fn detect(volume: &Volume) -> Result<Detected, FsError> {
    let mut head = vec![0u8; 4096];
    let n = volume.read_some(&mut head, 0).map_err(FsError::Io)?;
    head.truncate(n);
    let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);

    if at(1080, &[0x53, 0xef]) {
        return Ok(Detected::Supported(FsKind::Ext4));
    }
    if at(3, b"NTFS    ") {
        return Ok(Detected::Supported(FsKind::Ntfs));
    }
    if at(3, b"EXFAT   ") {
        return Ok(Detected::Unsupported("exfat"));
    }
    if at(3, b"ReFS\0\0\0\0") {
        return Ok(Detected::Unsupported("refs"));
    }
    if at(3, b"-FVE-FS-") {
        return Ok(Detected::Unsupported("bitlocker"));
    }
    if at(0, b"XFSB") {
        return Ok(Detected::Unsupported("xfs"));
    }
    if at(0, b"LUKS\xba\xbe") {
        return Ok(Detected::Unsupported("luks"));
    }
    if at(0, b"hsqs") {
        return Ok(Detected::Unsupported("squashfs"));
    }
    if at(1024, &[0x10, 0x20, 0xf5, 0xf2]) {
        return Ok(Detected::Unsupported("f2fs"));
    }
    if (0..4).any(|s| at(s * 512, b"LABELONE") && at(s * 512 + 24, b"LVM2 001")) {
        return Ok(Detected::Unsupported("lvm2"));
    }
    if at(4086, b"SWAPSPACE2") || at(4086, b"SWAP-SPACE") {
        return Ok(Detected::Unsupported("swap"));
    }
    if is_fat(&head) {
        return Ok(Detected::Supported(FsKind::Fat));
    }
    if magic_at(volume, 65_536 + 64, b"_BHRfS_M")? {
        return Ok(Detected::Unsupported("btrfs"));
    }
    if magic_at(volume, 32_769, b"CD001")? {
        return Ok(Detected::Unsupported("iso9660"));
    }
    Ok(Detected::Unknown)
}

/// Whether `sector` (the first bytes of a volume) is a FAT boot sector: a jump instruction,
/// the `55 AA` signature, and a BIOS parameter block with sane geometry.
pub(crate) fn is_fat(sector: &[u8]) -> bool {
    let Some(s) = sector.get(..512) else {
        return false;
    };
    let bytes_per_sector = u16::from_le_bytes([s[11], s[12]]);
    let sectors_per_cluster = s[13];
    let reserved = u16::from_le_bytes([s[14], s[15]]);
    let fats = s[16];
    let media = s[21];
    (s[0] == 0xeb || s[0] == 0xe9)
        && s[510..512] == [0x55, 0xaa]
        && matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096)
        && sectors_per_cluster.is_power_of_two()
        && reserved >= 1
        && (1..=4).contains(&fats)
        && (media == 0xf0 || media >= 0xf8)
}

/// Whether a boot sector at the start of a disk is a file system's rather than a partition
/// table's (NTFS, exFAT, FAT, ...): a disk without a table.
pub(crate) fn is_fs_boot_sector(sector: &[u8; 512]) -> bool {
    [&b"NTFS    "[..], b"EXFAT   ", b"-FVE-FS-", b"ReFS\0\0\0\0"]
        .iter()
        .any(|m| &sector[3..11] == *m)
        || is_fat(sector)
}

fn magic_at(volume: &Volume, off: u64, magic: &[u8]) -> Result<bool, FsError> {
    let mut buf = vec![0u8; magic.len()];
    let n = volume.read_some(&mut buf, off).map_err(FsError::Io)?;
    Ok(n == magic.len() && buf == magic)
}
