//! Aligned buffers take the `O_DIRECT` path for data; mixed with buffered (unaligned) writes,
//! copy-on-write and overlays, the image still reads right and `qemu-img` agrees.

use std::sync::Arc;
use std::thread;

use sendense_qcow2::{AlignedBuf, BackingSpec, CreateOptions, DIRECT_ALIGN, Image, OpenOptions};
use tempfile::TempDir;

use crate::util::{assert_qemu_check_clean, pattern, qemu_to_raw};

const MIB: usize = 1 << 20;

fn aligned(seed: u64, len: usize) -> AlignedBuf {
    let mut b = AlignedBuf::zeroed(len);
    b.copy_from_slice(&pattern(seed, len));
    b
}

#[test]
fn aligned_and_unaligned_writes_mixed_read_back_and_check_clean() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("d.qcow2");
    let size = 8 * MIB;
    let img = Image::create(&path, &CreateOptions::new(size as u64)).unwrap();
    let mut model = vec![0u8; size];
    let mut put = |img: &Image, off: usize, data: &[u8]| {
        img.write_at(data, off as u64).unwrap();
        model[off..off + data.len()].copy_from_slice(data);
    };
    // Whole clusters from an aligned buffer (direct), then buffered partial writes into the
    // same clusters, then direct rewrites over buffered data.
    put(&img, 0, &aligned(1, 2 * MIB));
    put(&img, 1000, &pattern(2, 5000));
    put(&img, 3 * MIB + 512, &pattern(3, 70_000));
    put(&img, 3 * MIB, &aligned(4, 64 * 1024));
    put(&img, 5 * MIB, &aligned(5, MIB));
    put(&img, 5 * MIB + 4096, &aligned(6, 8192));
    let mut got = AlignedBuf::zeroed(size);
    img.read_at(&mut got, 0).unwrap();
    assert!(got[..] == model[..], "aligned (direct) read differs");
    let mut unaligned = vec![0u8; size - 3];
    img.read_at(&mut unaligned, 3).unwrap();
    assert!(unaligned[..] == model[3..], "buffered read differs");
    img.flush().unwrap();
    drop(img);
    assert_qemu_check_clean(&path);
    assert!(qemu_to_raw(&path, dir.path()) == model);
    // Reopened read-only, the direct read path still agrees.
    let ro = Image::open(&path, &OpenOptions::read_only()).unwrap();
    let mut again = AlignedBuf::zeroed(size);
    ro.read_at(&mut again, 0).unwrap();
    assert!(again[..] == model[..]);
}

#[test]
fn parallel_aligned_writes_into_an_overlay_read_through_the_chain() {
    let dir = TempDir::new().unwrap();
    let base = dir.path().join("base.qcow2");
    let size = 8 * MIB;
    let b = Image::create(&base, &CreateOptions::new(size as u64)).unwrap();
    let base_data = aligned(10, size);
    b.write_at(&base_data, 0).unwrap();
    b.flush().unwrap();
    drop(b);
    let top = dir.path().join("top.qcow2");
    let mut opts = CreateOptions::new(size as u64);
    opts.backing = Some(BackingSpec::qcow2("base.qcow2"));
    let img = Arc::new(Image::create(&top, &opts).unwrap());
    let handles: Vec<_> = (0..4u64)
        .map(|t| {
            let img = Arc::clone(&img);
            thread::spawn(move || {
                // Each thread writes every fourth 256 KiB piece of the second half.
                let piece = 256 * 1024;
                let mut off = 4 * MIB + t as usize * piece;
                while off < size {
                    img.write_at(&aligned(off as u64, piece), off as u64)
                        .unwrap();
                    off += 4 * piece;
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let mut model = base_data.to_vec();
    let piece = 256 * 1024;
    let mut off = 4 * MIB;
    while off < size {
        model[off..off + piece].copy_from_slice(&pattern(off as u64, piece));
        off += piece;
    }
    let mut got = AlignedBuf::zeroed(size);
    img.read_at(&mut got, 0).unwrap();
    assert!(got[..] == model[..]);
    img.flush().unwrap();
    drop(img);
    assert_qemu_check_clean(&top);
    assert!(qemu_to_raw(&top, dir.path()) == model);
    assert_eq!(got.as_ptr() as usize % DIRECT_ALIGN, 0);
}

#[test]
fn preallocated_tail_is_cut_at_close_and_harmless_after_a_crash() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("p.qcow2");
    let size = 64 * MIB;
    let img = Image::create(&path, &CreateOptions::new(size as u64)).unwrap();
    img.write_at(&aligned(7, 4 * MIB), 8 * MIB as u64).unwrap();
    img.flush().unwrap();
    let open_len = std::fs::metadata(&path).unwrap().len();
    // What a crash would leave: the flushed image with its preallocated tail.
    let crashed = dir.path().join("crashed.qcow2");
    std::fs::copy(&path, &crashed).unwrap();
    drop(img);
    let closed_len = std::fs::metadata(&path).unwrap().len();
    assert!(
        closed_len < 5 * MIB as u64,
        "closed image is {closed_len} bytes"
    );
    assert!(open_len >= closed_len);
    assert_qemu_check_clean(&path);
    assert_qemu_check_clean(&crashed);
    let mut model = vec![0u8; size];
    model[8 * MIB..12 * MIB].copy_from_slice(&pattern(7, 4 * MIB));
    assert!(qemu_to_raw(&crashed, dir.path()) == model);
    // Reopened writable, the crashed copy takes more writes and closes clean.
    let again = Image::open(&crashed, &OpenOptions::writable()).unwrap();
    again.write_at(&aligned(8, MIB), 0).unwrap();
    assert!(again.check().unwrap().is_clean());
    drop(again);
    model[..MIB].copy_from_slice(&pattern(8, MIB));
    assert_qemu_check_clean(&crashed);
    assert!(qemu_to_raw(&crashed, dir.path()) == model);
}
