//! Fuzz target: the LVM2 metadata parser of `sendense-fs` (the text format of a volume group,
//! and the mapping of its logical volumes onto physical volumes).
//!
//! The input is the metadata text. It is wrapped in a valid physical volume (label, PV header
//! and metadata area header, with the checksums LVM2 computes, so the fuzzer reaches the text
//! parser instead of failing a CRC) on a 2 MiB disk without a partition table, whose PV UUID
//! is 32 `f`s. Anything may be refused; nothing may panic or hang, and every logical
//! volume answered lies inside the disk.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sendense_fs::FIRST_LV_INDEX;

#[path = "fs_disk.rs"]
mod fs_disk;

const DISK: usize = 2 << 20;
const MDA: usize = 4096;
const MDA_SIZE: usize = (1 << 20) - MDA;

fuzz_target!(|text: &[u8]| {
    fs_disk::panic_policy();
    if text.len() > MDA_SIZE - 512 {
        return;
    }
    let mut disk = vec![0u8; DISK];
    // Label in sector 1.
    let l = 512;
    disk[l..l + 8].copy_from_slice(b"LABELONE");
    disk[l + 8..l + 16].copy_from_slice(&1u64.to_le_bytes());
    disk[l + 20..l + 24].copy_from_slice(&32u32.to_le_bytes());
    disk[l + 24..l + 32].copy_from_slice(b"LVM2 001");
    let h = l + 32;
    disk[h..h + 32].copy_from_slice(&[b'f'; 32]);
    disk[h + 32..h + 40].copy_from_slice(&(DISK as u64).to_le_bytes());
    let mut at = h + 40;
    for pair in [(1u64 << 20, 0u64), (0, 0), (MDA as u64, MDA_SIZE as u64), (0, 0)] {
        disk[at..at + 8].copy_from_slice(&pair.0.to_le_bytes());
        disk[at + 8..at + 16].copy_from_slice(&pair.1.to_le_bytes());
        at += 16;
    }
    let crc = lvm_crc(&disk[l + 20..l + 512]);
    disk[l + 16..l + 20].copy_from_slice(&crc.to_le_bytes());
    // Metadata area header and text.
    let m = MDA;
    disk[m + 4..m + 20].copy_from_slice(b" LVM2 x[5A%r0N*>");
    disk[m + 20..m + 24].copy_from_slice(&1u32.to_le_bytes());
    disk[m + 24..m + 32].copy_from_slice(&(MDA as u64).to_le_bytes());
    disk[m + 32..m + 40].copy_from_slice(&(MDA_SIZE as u64).to_le_bytes());
    disk[m + 40..m + 48].copy_from_slice(&512u64.to_le_bytes());
    disk[m + 48..m + 56].copy_from_slice(&(text.len() as u64).to_le_bytes());
    disk[m + 56..m + 60].copy_from_slice(&lvm_crc(text).to_le_bytes());
    let crc = lvm_crc(&disk[m + 4..m + 512]);
    disk[m..m + 4].copy_from_slice(&crc.to_le_bytes());
    disk[m + 512..m + 512 + text.len()].copy_from_slice(text);

    let mut data = vec![(DISK / 512) as u8, (DISK / 512 >> 8) as u8, (DISK / 512 >> 16) as u8];
    data.extend_from_slice(&disk);
    let Some(disk) = fs_disk::disk(&data) else {
        return;
    };
    let Ok(table) = sendense_fs::partitions(&disk) else {
        return;
    };
    for p in table.partitions.iter().filter(|p| p.index >= FIRST_LV_INDEX) {
        // A logical volume's segments may lie anywhere on the disk: its start is its first.
        assert!(p.start < disk.size() || p.size == 0);
        let _ = sendense_fs::open(&disk, Some(p.index));
    }
});

/// LVM2's CRC: CRC-32 (reflected 0xedb88320), initial value 0xf597a6cf, no final inversion.
fn lvm_crc(data: &[u8]) -> u32 {
    let mut crc = 0xf597_a6cfu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    crc
}
