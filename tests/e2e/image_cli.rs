//! `sendense-hub image …` through the binary: exit codes, JSON, and what a
//! SIGKILL in the middle of writing leaves behind.

use std::fs;
use std::time::{Duration, Instant};

use crate::support::{hub, ok, qemu_img, s, write_random};

#[test]
fn help_lists_every_image_command() {
    let text = ok(&hub().args(["image", "--help"]).output().unwrap());
    for cmd in ["create", "info", "check", "convert"] {
        assert!(text.contains(cmd), "{cmd} missing from:\n{text}");
    }
}

#[test]
fn create_info_check_round_trip_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("a.qcow2");
    ok(&hub()
        .args(["image", "create", "--cluster-size", "128K", s(&img), "1G"])
        .output()
        .unwrap());
    let info = ok(&hub()
        .args(["image", "info", "--json", s(&img)])
        .output()
        .unwrap());
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(v[0]["virtual_size"], 1u64 << 30);
    assert_eq!(v[0]["cluster_size"], 128 << 10);
    let check = hub().args(["image", "check", s(&img)]).output().unwrap();
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    ok(&qemu_img(&["check", s(&img)]));
}

#[test]
fn check_of_corrupt_image_exits_two() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("a.qcow2");
    ok(&qemu_img(&["create", "-f", "qcow2", s(&img), "64M"]));
    // Refcount of the header cluster to 0: a referenced cluster without refcount.
    let bytes = fs::read(&img).unwrap();
    let table = u64::from_be_bytes(bytes[48..56].try_into().unwrap()) as usize;
    let block = u64::from_be_bytes(bytes[table..table + 8].try_into().unwrap()) as usize;
    let mut patched = bytes;
    patched[block..block + 2].copy_from_slice(&[0, 0]);
    fs::write(&img, patched).unwrap();
    let out = hub()
        .args(["image", "check", "--json", s(&img)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["errors"].as_u64().unwrap() >= 1, "{v}");
}

#[test]
fn missing_input_names_the_file_and_exits_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = hub()
        .args([
            "image",
            "convert",
            s(&dir.path().join("nope.raw")),
            s(&dir.path().join("o.qcow2")),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nope.raw") && err.contains("No such file"),
        "{err}"
    );
}

/// Kills `sendense-hub image convert -B base` once its temporary output has
/// grown past `threshold` bytes (or it has finished), polling with a deadline.
fn convert_and_kill_at(dir: &std::path::Path, threshold: u64) {
    let mut child = hub()
        .current_dir(dir)
        .args([
            "image",
            "convert",
            "--threads",
            "2",
            "-B",
            "base.qcow2",
            "new.raw",
            "top.qcow2",
        ])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let grown = fs::read_dir(dir).unwrap().flatten().any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".top.qcow2.part")
                && e.metadata().is_ok_and(|m| m.len() >= threshold)
        });
        if grown || child.try_wait().unwrap().is_some() || Instant::now() > deadline {
            break;
        }
        std::thread::yield_now();
    }
    let _ = child.kill(); // SIGKILL
    child.wait().unwrap();
}

#[test]
fn sigkill_mid_write_never_touches_finalized_images_and_leaves_only_leaks() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let size = 48u64 << 20;
    write_random(&d.join("old.raw"), 0, size as usize, 1);
    fs::copy(d.join("old.raw"), d.join("new.raw")).unwrap();
    for i in 0..12u64 {
        write_random(&d.join("new.raw"), i * (4 << 20) + 12_345, 1 << 20, 100 + i);
    }
    ok(&hub()
        .current_dir(d)
        .args(["image", "convert", "old.raw", "base.qcow2"])
        .output()
        .unwrap());
    let base_before = fs::read(d.join("base.qcow2")).unwrap();

    for (round, threshold) in [64u64 << 10, 1 << 20, 3 << 20, 6 << 20, 9 << 20]
        .into_iter()
        .enumerate()
    {
        convert_and_kill_at(d, threshold);
        assert_eq!(
            fs::read(d.join("base.qcow2")).unwrap(),
            base_before,
            "round {round}: base changed"
        );
        for entry in fs::read_dir(d).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == "top.qcow2" {
                // Finished before the kill: then it must be complete and right.
                ok(&qemu_img(&["check", s(&entry.path())]));
                ok(&qemu_img(&[
                    "compare",
                    s(&d.join("new.raw")),
                    s(&entry.path()),
                ]));
                fs::remove_file(entry.path()).unwrap();
            } else if name.starts_with(".top.qcow2.part") {
                let bytes = fs::read(entry.path()).unwrap();
                if bytes.len() >= 512 && bytes.starts_with(b"QFI\xfb") {
                    let check = qemu_img(&["check", "-f", "qcow2", s(&entry.path())]);
                    assert!(
                        matches!(check.status.code(), Some(0 | 3)),
                        "round {round}: unfinished image is corrupt, not just leaky:\n{}",
                        String::from_utf8_lossy(&check.stdout)
                    );
                }
                fs::remove_file(entry.path()).unwrap();
            }
        }
    }
    ok(&qemu_img(&["check", s(&d.join("base.qcow2"))]));
}

/// `image verify` on a chain QEMU made (`qemu-img convert`, `qemu-img create -b`, `qemu-io`
/// writes), with digests of the source bytes beside each layer: exit 0; a byte flipped in the
/// overlay's own cluster: exit 2, naming the block and the overlay; a layer without digests:
/// exit 1 saying it cannot be verified.
#[test]
fn verify_of_a_qemu_made_chain_against_source_digests() {
    use sendense_digest::{BLOCK_SIZE, LayerDigests};

    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    let size = 4u64 << 20;
    write_random(&raw, 0, size as usize, 11);
    let base = dir.path().join("base.qcow2");
    let top = dir.path().join("top.qcow2");
    ok(&qemu_img(&["convert", "-O", "qcow2", s(&raw), s(&base)]));
    ok(&qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        s(&top),
    ]));
    // Block 5 becomes 0xab bytes in the overlay.
    let io = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0xab 327680 65536", s(&top)])
        .output()
        .expect("qemu-io must be installed (scripts/test.sh installs qemu-utils)");
    ok(&io);
    let source = fs::read(&raw).unwrap();
    let mut full = LayerDigests::new(size);
    full.record(0, &source).unwrap();
    fs::write(dir.path().join("base.digests"), full.encode()).unwrap();
    let mut incr = LayerDigests::new(size);
    incr.record(5 * BLOCK_SIZE, &[0xab; 65536]).unwrap();

    // The overlay without digests cannot be verified.
    let out = hub().args(["image", "verify", s(&top)]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot be verified"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::write(dir.path().join("top.digests"), incr.encode()).unwrap();
    let text = ok(&hub().args(["image", "verify", s(&top)]).output().unwrap());
    assert!(text.contains("ok"), "{text}");

    // Flip a byte of the overlay's data cluster (found with qemu-img map).
    let map = ok(&qemu_img(&["map", "--output=json", s(&top)]));
    let map: Vec<serde_json::Value> = serde_json::from_str(&map).unwrap();
    let host = map
        .iter()
        .find(|e| e["depth"] == 0 && e["data"] == true)
        .and_then(|e| e["offset"].as_u64())
        .unwrap();
    let mut bytes = fs::read(&top).unwrap();
    bytes[host as usize + 17] ^= 1;
    fs::write(&top, bytes).unwrap();
    let out = hub()
        .args(["image", "verify", "--json", s(&top)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["bad"],
        serde_json::json!([{"block": 5, "layer": 1}]),
        "{v}"
    );
    assert!(v["layers"][1].as_str().unwrap().ends_with("top.qcow2"));
    // The base alone still verifies.
    ok(&hub().args(["image", "verify", s(&base)]).output().unwrap());
}
