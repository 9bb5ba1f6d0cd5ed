//! Several threads writing one image at once.

use std::sync::Arc;
use std::thread;

use sendense_qcow2::{BackingSpec, CreateOptions, Image};
use tempfile::TempDir;

use crate::util::{assert_qemu_check_clean, pattern, qemu_to_raw};

const MIB: u64 = 1 << 20;
const THREADS: u64 = 4;

#[test]
fn parallel_disjoint_writes_all_land() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("a.qcow2");
    let img = Arc::new(Image::create(&path, &CreateOptions::new(16 * MIB)).unwrap());
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let img = Arc::clone(&img);
            thread::spawn(move || {
                // Interleaved 192 KiB + 1000 B chunks, so threads share clusters at the edges.
                let chunk = 200_000u64;
                let mut off = t * chunk;
                while off + chunk <= 16 * MIB {
                    img.write_at(&pattern(off, chunk as usize), off).unwrap();
                    off += THREADS * chunk;
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let mut expected = vec![0u8; (16 * MIB) as usize];
    let chunk = 200_000u64;
    let mut off = 0;
    while off + chunk <= 16 * MIB {
        expected[off as usize..(off + chunk) as usize]
            .copy_from_slice(&pattern(off, chunk as usize));
        off += chunk;
    }
    let mut got = vec![0u8; expected.len()];
    img.read_at(&mut got, 0).unwrap();
    assert!(got == expected);
    drop(img);
    assert_qemu_check_clean(&path);
    assert!(qemu_to_raw(&path, dir.path()) == expected);
}

#[test]
fn parallel_overlapping_writes_equal_a_serial_order() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("a.qcow2");
    let img = Arc::new(Image::create(&path, &CreateOptions::new(4 * MIB)).unwrap());
    let len = 300_000usize;
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let img = Arc::clone(&img);
            thread::spawn(move || {
                for round in 0..20 {
                    img.write_at(&pattern(t * 1000 + round, len), 12_345)
                        .unwrap();
                }
                img.write_at(&pattern(t + 77, len), 12_345).unwrap();
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let mut got = vec![0u8; len];
    img.read_at(&mut got, 12_345).unwrap();
    let winners: Vec<u64> = (0..THREADS)
        .filter(|t| got == pattern(t + 77, len))
        .collect();
    assert_eq!(winners.len(), 1, "result is not any thread's last write");
    drop(img);
    assert_qemu_check_clean(&path);
}

#[test]
fn parallel_partial_writes_in_overlay_keep_every_write() {
    let dir = TempDir::new().unwrap();
    let base = dir.path().join("base.qcow2");
    let top = dir.path().join("top.qcow2");
    let base_data = pattern(5, (2 * MIB) as usize);
    let b = Image::create(&base, &CreateOptions::new(2 * MIB)).unwrap();
    b.write_at(&base_data, 0).unwrap();
    drop(b);
    let opts = CreateOptions::new(2 * MIB).backing(BackingSpec::qcow2("base.qcow2"));
    let img = Arc::new(Image::create(&top, &opts).unwrap());
    // Each thread writes its own 512-byte slot in every cluster: all copy-on-write races.
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let img = Arc::clone(&img);
            thread::spawn(move || {
                for c in 0..32u64 {
                    let off = c * 65536 + t * 512;
                    img.write_at(&pattern(c * 10 + t, 512), off).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let mut expected = base_data;
    for c in 0..32u64 {
        for t in 0..THREADS {
            let off = (c * 65536 + t * 512) as usize;
            expected[off..off + 512].copy_from_slice(&pattern(c * 10 + t, 512));
        }
    }
    let mut got = vec![0u8; expected.len()];
    img.read_at(&mut got, 0).unwrap();
    assert!(got == expected, "a concurrent partial write was lost");
    drop(img);
    assert_qemu_check_clean(&top);
    assert!(qemu_to_raw(&top, dir.path()) == expected);
}

#[test]
fn parallel_readers_and_writers_see_old_or_new_data() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("a.qcow2");
    let img = Arc::new(Image::create(&path, &CreateOptions::new(4 * MIB)).unwrap());
    let old = vec![0xAAu8; 65536];
    let new = vec![0x55u8; 65536];
    for c in 0..64u64 {
        img.write_at(&old, c * 65536).unwrap();
    }
    let writer = {
        let img = Arc::clone(&img);
        let new = new.clone();
        thread::spawn(move || {
            for c in 0..64u64 {
                img.write_zeroes(c * 65536, 65536).unwrap();
                img.write_at(&new, c * 65536).unwrap();
            }
        })
    };
    let mut buf = vec![0u8; 65536];
    for _ in 0..4 {
        for c in 0..64u64 {
            img.read_at(&mut buf, c * 65536).unwrap();
            assert!(
                buf == old || buf == new || buf.iter().all(|&b| b == 0),
                "torn cluster read"
            );
        }
    }
    writer.join().unwrap();
    drop(img);
    assert_qemu_check_clean(&path);
}
