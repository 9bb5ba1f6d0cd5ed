//! Shared helpers: deterministic data, qemu tool runners.

use std::path::Path;
use std::process::{Command, Output};

/// Deterministic pseudo-random bytes (xorshift64*).
pub(crate) fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Runs a qemu tool; fails the test with a clear message when it is missing.
pub(crate) fn run(tool: &str, args: &[&str]) -> Output {
    Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool} is required for this test and could not be run: {e}"))
}

/// `qemu-img` with arguments; returns the output.
pub(crate) fn qemu_img(args: &[&str]) -> Output {
    run("qemu-img", args)
}

/// Asserts a qemu-img command succeeds.
pub(crate) fn qemu_img_ok(args: &[&str]) -> String {
    let out = qemu_img(args);
    assert!(
        out.status.success(),
        "qemu-img {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts `qemu-img check` reports a clean image (exit 0, no leaks).
pub(crate) fn assert_qemu_check_clean(path: &Path) {
    let out = qemu_img(&["check", path.to_str().unwrap()]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "qemu-img check failed for {}: {text}",
        path.display()
    );
    assert!(
        !text.contains("leaked"),
        "qemu-img check found leaks: {text}"
    );
}

/// Asserts `qemu-img compare` finds the image identical to a raw file.
pub(crate) fn assert_qemu_compare(image: &Path, raw: &Path) {
    let out = qemu_img(&[
        "compare",
        "-f",
        "qcow2",
        "-F",
        "raw",
        image.to_str().unwrap(),
        raw.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "qemu-img compare differs: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Converts an image to raw with qemu-img and returns the bytes.
pub(crate) fn qemu_to_raw(image: &Path, dir: &Path) -> Vec<u8> {
    let raw = dir.join(format!(
        "conv-{}.raw",
        image.file_name().unwrap().to_str().unwrap()
    ));
    qemu_img_ok(&[
        "convert",
        "-O",
        "raw",
        image.to_str().unwrap(),
        raw.to_str().unwrap(),
    ]);
    std::fs::read(raw).unwrap()
}
