//! `image create / info / check / convert` against qemu-img.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

use sendense_image::{self as image_tools, ConvertOptions, CreateArgs, ImageError, OutputFormat};
use sendense_qcow2::{BackingPolicy, Qcow2Error};

use crate::support::{
    assert_qemu_check_clean, assert_qemu_identical, qemu_img, qemu_img_ok, sparse_raw, write_random,
};

fn opts(format: OutputFormat, threads: usize) -> ConvertOptions {
    ConvertOptions {
        format,
        backing: None,
        cluster_size: None,
        threads,
        progress: false,
        backing_policy: BackingPolicy::below(),
    }
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `qemu-img create` of the qcow2 overlay `top` over the qcow2 `backing` (a name relative to
/// `top`'s folder).
fn qemu_overlay(top: &Path, backing: &str) {
    qemu_img_ok(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        backing,
        "-F",
        "qcow2",
        p(top),
    ]);
}

#[test]
fn create_standalone_passes_qemu_check_with_requested_geometry() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("a.qcow2");
    let args = CreateArgs {
        size: Some(3 << 30),
        cluster_size: Some(2 << 20),
        backing: None,
        extended_l2: false,
        backing_policy: BackingPolicy::below(),
    };
    image_tools::create(&img, &args).unwrap();
    assert_qemu_check_clean(&img);
    let info = qemu_img_ok(&["info", "--output=json", p(&img)]);
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(v["virtual-size"], 3u64 << 30);
    assert_eq!(v["cluster-size"], 2u64 << 20);
    assert_eq!(v["format-specific"]["data"]["compat"], "1.1");
}

#[test]
fn create_overlay_with_relative_backing_shows_in_qemu_backing_chain() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    let top = dir.path().join("top.qcow2");
    let args = CreateArgs {
        size: Some(1 << 30),
        cluster_size: None,
        backing: None,
        extended_l2: false,
        backing_policy: BackingPolicy::below(),
    };
    image_tools::create(&base, &args).unwrap();
    let args = CreateArgs {
        size: None,
        cluster_size: None,
        backing: Some("base.qcow2".into()),
        extended_l2: true,
        backing_policy: BackingPolicy::below(),
    };
    image_tools::create(&top, &args).unwrap();
    assert_qemu_check_clean(&top);
    let info = qemu_img_ok(&["info", "--output=json", "--backing-chain", p(&top)]);
    let chain: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(chain[0]["backing-filename"], "base.qcow2");
    assert_eq!(chain[0]["backing-filename-format"], "qcow2");
    assert_eq!(chain[0]["virtual-size"], 1u64 << 30);
    assert_eq!(chain[1]["filename"], p(&base));
}

#[test]
fn create_without_size_or_backing_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let args = CreateArgs {
        size: None,
        cluster_size: None,
        backing: None,
        extended_l2: false,
        backing_policy: BackingPolicy::below(),
    };
    let err = image_tools::create(&dir.path().join("x.qcow2"), &args).unwrap_err();
    assert!(matches!(err, ImageError::MissingSize), "{err:?}");
}

#[test]
fn convert_raw_to_qcow2_in_each_cluster_size_is_identical_and_clean() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    sparse_raw(&raw, (24 << 20) + 4096, 1);
    for (cs, threads) in [(512u32, 1usize), (65536, 2), (2 << 20, 3)] {
        let out = dir.path().join(format!("out-{cs}.qcow2"));
        let mut o = opts(OutputFormat::Qcow2, threads);
        o.cluster_size = Some(cs);
        let report = image_tools::convert(&raw, &out, &o).unwrap();
        assert_qemu_check_clean(&out);
        assert_qemu_identical(&raw, &out);
        assert!(
            report.bytes_written < report.virtual_size / 2,
            "holes must not be written: {report:?}"
        );
    }
}

#[test]
fn convert_qemu_made_chain_to_raw_matches_qemu_img_convert() {
    let dir = tempfile::tempdir().unwrap();
    let base_raw = dir.path().join("base.raw");
    sparse_raw(&base_raw, 16 << 20, 7);
    let base = dir.path().join("base.qcow2");
    qemu_img_ok(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        "-c",
        p(&base_raw),
        p(&base),
    ]);
    let top = dir.path().join("top.qcow2");
    qemu_overlay(&top, "base.qcow2");
    let io = std::process::Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            "write -P 0x5a 1M 300k",
            "-c",
            "write -z 8M 1M",
            p(&top),
        ])
        .output()
        .expect("qemu-io (qemu-utils) is required by this test");
    assert!(
        io.status.success(),
        "{}",
        String::from_utf8_lossy(&io.stderr)
    );
    let ours = dir.path().join("ours.raw");
    let theirs = dir.path().join("theirs.raw");
    image_tools::convert(&top, &ours, &opts(OutputFormat::Raw, 2)).unwrap();
    qemu_img_ok(&["convert", "-O", "raw", p(&top), p(&theirs)]);
    assert_eq!(fs::read(&ours).unwrap(), fs::read(&theirs).unwrap());
}

#[test]
fn convert_with_backing_writes_only_differences_and_masks_zeroed_data() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.raw");
    sparse_raw(&old, 16 << 20, 3);
    let new = dir.path().join("new.raw");
    fs::copy(&old, &new).unwrap();
    // Change 128 KiB, zero 64 KiB that held data, add data in a hole.
    write_random(&new, 4 << 20, 128 << 10, 99);
    fs::OpenOptions::new()
        .write(true)
        .open(&new)
        .unwrap()
        .write_all_at(&[0u8; 65536], 0)
        .unwrap();
    write_random(&new, 12 << 20, 4096, 100);

    let base = dir.path().join("base.qcow2");
    image_tools::convert(&old, &base, &opts(OutputFormat::Qcow2, 2)).unwrap();
    let top = dir.path().join("top.qcow2");
    let mut o = opts(OutputFormat::Qcow2, 2);
    o.backing = Some("base.qcow2".into());
    let report = image_tools::convert(&new, &top, &o).unwrap();

    assert_qemu_check_clean(&top);
    assert_qemu_identical(&new, &top);
    assert_eq!(report.bytes_written, (128 << 10) + 65536, "{report:?}");
    assert_eq!(report.bytes_zeroed, 65536, "{report:?}");
    let info: serde_json::Value =
        serde_json::from_str(&qemu_img_ok(&["info", "--output=json", p(&top)])).unwrap();
    assert_eq!(info["backing-filename"], "base.qcow2");
}

#[test]
fn convert_of_missing_input_fails_and_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.qcow2");
    let err = image_tools::convert(
        &dir.path().join("nope.raw"),
        &out,
        &opts(OutputFormat::Qcow2, 1),
    );
    assert!(matches!(err, Err(ImageError::Io { .. })), "{err:?}");
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn info_of_chain_lists_every_layer_top_first() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    qemu_img_ok(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4096",
        p(&base),
        "64M",
    ]);
    let top = dir.path().join("top.qcow2");
    qemu_overlay(&top, "base.qcow2");
    let layers = image_tools::info(&top).unwrap();
    assert_eq!(layers.len(), 2);
    assert_eq!(layers[0].backing_file.as_deref(), Some("base.qcow2"));
    assert_eq!(layers[1].cluster_size, Some(4096));
    assert_eq!(layers[1].virtual_size, 64 << 20);
}

/// Sets the refcount of host cluster 0 (the header) in a 16-bit-refcount image.
fn set_header_refcount(path: &Path, value: u16) {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut word = [0u8; 8];
    file.read_exact_at(&mut word, 48).unwrap();
    let table = u64::from_be_bytes(word);
    file.read_exact_at(&mut word, table).unwrap();
    let block = u64::from_be_bytes(word);
    file.write_all_at(&value.to_be_bytes(), block).unwrap();
}

/// A fresh 64 MiB image whose header's refcount is set to `refcount` (left alone when `None`),
/// checked by `qemu-img check` and by ours: qemu's exit code and our summary.
fn checked(refcount: Option<u16>) -> (Option<i32>, image_tools::CheckSummary) {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("a.qcow2");
    qemu_img_ok(&["create", "-f", "qcow2", p(&img), "64M"]);
    if let Some(value) = refcount {
        set_header_refcount(&img, value);
    }
    let qemu = qemu_img(&["check", p(&img)]).status.code();
    (qemu, image_tools::check(&img).unwrap())
}

#[test]
fn check_of_clean_image_exits_zero() {
    let (qemu, summary) = checked(None);
    assert_eq!(qemu, Some(0));
    assert_eq!(summary.exit_code(), 0, "{summary:?}");
}

#[test]
fn check_of_leaked_cluster_exits_three_like_qemu() {
    let (qemu, summary) = checked(Some(2));
    assert_eq!(qemu, Some(3));
    assert_eq!(summary.exit_code(), 3, "{summary:?}");
}

#[test]
fn check_of_referenced_cluster_without_refcount_exits_two_like_qemu() {
    let (qemu, summary) = checked(Some(0));
    assert_eq!(qemu, Some(2));
    assert_eq!(summary.exit_code(), 2, "{summary:?}");
}

// Issue #11 item 12: `image create -b` opened the whole chain below the
// operator's backing file wherever its images pointed.
#[test]
fn create_overlay_of_image_whose_backing_escapes_its_folder_is_refused_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let base = elsewhere.path().join("base.raw");
    sparse_raw(&base, 1 << 20, 6);
    let sub = dir.path().join("sub");
    fs::create_dir(&sub).unwrap();
    qemu_img_ok(&[
        "create",
        "-f",
        "qcow2",
        "-u",
        "-b",
        p(&base),
        "-F",
        "raw",
        p(&dir.path().join("mid.qcow2")),
        "1M",
    ]);
    let args = CreateArgs {
        size: None,
        cluster_size: None,
        backing: Some("../mid.qcow2".into()),
        extended_l2: false,
        backing_policy: BackingPolicy::below(),
    };

    let err = image_tools::create(&sub.join("top.qcow2"), &args).unwrap_err();

    assert!(
        matches!(
            err,
            ImageError::Qcow2 {
                source: Qcow2Error::BackingRefused { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!sub.join("top.qcow2").exists());
}

#[test]
fn convert_of_input_whose_backing_escapes_its_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let base = elsewhere.path().join("base.raw");
    sparse_raw(&base, 1 << 20, 5);
    let top = dir.path().join("top.qcow2");
    qemu_img_ok(&[
        "create",
        "-f",
        "qcow2",
        "-u",
        "-b",
        p(&base),
        "-F",
        "raw",
        p(&top),
        "1M",
    ]);

    let err = image_tools::convert(
        &top,
        &dir.path().join("out.raw"),
        &opts(OutputFormat::Raw, 1),
    )
    .unwrap_err();

    assert!(
        matches!(
            err,
            ImageError::Qcow2 {
                source: Qcow2Error::BackingRefused { .. },
                ..
            }
        ),
        "{err:?}"
    );
}
