//! Shared helpers: deterministic data, `qemu-img` (missing = loud failure).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use sendense_vmdk::VmdkImage;

/// Deterministic xorshift64 bytes.
pub(crate) fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Runs `qemu-img` with `args`; panics loudly when it is missing or fails.
pub(crate) fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "qemu-img is required by these tests and could not be run ({e}); install qemu-utils"
            )
        });
    assert!(
        out.status.success(),
        "qemu-img {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A sparse raw file of `size` bytes with `regions` (offset, bytes) written.
pub(crate) fn write_raw(path: &Path, size: u64, regions: &[(u64, Vec<u8>)]) {
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    for (off, data) in regions {
        f.write_all_at(data, *off).unwrap();
    }
}

/// `qemu-img convert -f raw -O vmdk -o subformat=S`.
pub(crate) fn raw_to_vmdk(src: &Path, dst: &Path, subformat: &str) {
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        &format!("subformat={subformat}"),
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
    ]);
}

/// `qemu-img convert -f vmdk -O raw`: the truth for a VMDK.
pub(crate) fn vmdk_to_raw(src: &Path, dir: &Path) -> PathBuf {
    let dst = dir.join("truth.raw");
    qemu_img(&[
        "convert",
        "-f",
        "vmdk",
        "-O",
        "raw",
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
    ]);
    dst
}

/// Data runs of a raw file according to `qemu-img map`.
pub(crate) fn raw_data_runs(raw: &Path) -> Vec<(u64, u64)> {
    let json = qemu_img(&["map", "--output=json", "-f", "raw", raw.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"].as_bool().unwrap())
        .map(|e| (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap()))
        .collect()
}

/// Reads `len` bytes at `offset` through the image.
pub(crate) fn read_image(img: &VmdkImage, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0xEE; len];
    img.read_at(&mut buf, offset).unwrap();
    buf
}

/// Reads `len` bytes at `offset` of a plain file.
pub(crate) fn read_file(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    File::open(path)
        .unwrap()
        .read_exact_at(&mut buf, offset)
        .unwrap();
    buf
}

/// Whether `[off, off + len)` lies inside one of `runs`.
pub(crate) fn covered(runs: &[sendense_io::Extent], off: u64, len: u64) -> bool {
    runs.iter().any(|r| r.offset <= off && off + len <= r.end())
}
