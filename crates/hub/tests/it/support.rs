//! Test helpers: deterministic data, qemu-img runner.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};

/// Runs `qemu-img` with `args`; panics with a clear message when it is not installed.
pub(crate) fn qemu_img(args: &[&str]) -> Output {
    match Command::new("qemu-img").args(args).output() {
        Ok(out) => out,
        Err(e) => panic!(
            "qemu-img is required by this test and could not be run ({e}); \
             install qemu-utils (scripts/test.sh does)"
        ),
    }
}

/// Runs `qemu-img` and asserts it exits 0, returning stdout.
pub(crate) fn qemu_img_ok(args: &[&str]) -> String {
    let out = qemu_img(args);
    assert!(
        out.status.success(),
        "qemu-img {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `qemu-img check` exits 0: no errors and no leaks.
pub(crate) fn assert_qemu_check_clean(path: &Path) {
    qemu_img_ok(&["check", "-f", "qcow2", path.to_str().unwrap()]);
}

/// `qemu-img compare` says the two images hold identical content.
pub(crate) fn assert_qemu_identical(a: &Path, b: &Path) {
    qemu_img_ok(&["compare", a.to_str().unwrap(), b.to_str().unwrap()]);
}

/// Deterministic pseudo-random bytes (xorshift64*), incompressible enough.
pub(crate) fn fill_random(buf: &mut [u8], seed: u64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

/// Writes `len` random bytes at `offset` of `path` (creating it sparse).
pub(crate) fn write_random(path: &Path, offset: u64, len: usize, seed: u64) {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(path)
        .unwrap();
    let mut buf = vec![0u8; len];
    fill_random(&mut buf, seed);
    file.write_all_at(&buf, offset).unwrap();
}

/// Creates a sparse raw file of `size` bytes with random data in a few
/// scattered, unaligned places.
pub(crate) fn sparse_raw(path: &Path, size: u64, seed: u64) {
    let file = File::create(path).unwrap();
    file.set_len(size).unwrap();
    drop(file);
    let spots = [
        (0u64, 70_000usize),
        (size / 3 + 513, 200_000),
        (size / 2, 1 << 20),
        (size - 5000, 5000),
    ];
    for (i, (offset, len)) in spots.into_iter().enumerate() {
        write_random(path, offset, len, seed + i as u64);
    }
}
