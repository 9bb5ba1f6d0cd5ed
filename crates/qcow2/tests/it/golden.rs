//! Golden tests: images we write pass `qemu-img check` and `compare`; images qemu writes read
//! byte-identical to `qemu-img convert -O raw`.

use sendense_qcow2::raw::{RawHeader, U64};
use sendense_qcow2::{BackingSpec, CreateOptions, Image, OpenOptions};
use tempfile::TempDir;

use crate::util::{
    assert_qemu_check_clean, assert_qemu_compare, pattern, qemu_img_ok, qemu_to_raw,
};

const MIB: u64 = 1 << 20;

fn write_mixed(img: &Image, expected: &mut [u8], seed: u64) {
    let size = expected.len() as u64;
    let cs = img.cluster_size();
    let writes = [
        (0u64, 3 * cs as usize + 100),
        (size / 3 + 7, 70_000usize),
        (size / 2, (2 * MIB) as usize),
        (size - 4096, 4096),
    ];
    for (i, (off, len)) in writes.into_iter().enumerate() {
        let len = len.min((size - off) as usize);
        let data = pattern(seed + i as u64, len);
        img.write_at(&data, off).unwrap();
        expected[off as usize..off as usize + len].copy_from_slice(&data);
    }
    img.write_zeroes(size / 2 + 1000, 3 * cs).unwrap();
    let z = (size / 2 + 1000) as usize;
    expected[z..z + 3 * cs as usize].fill(0);
}

fn roundtrip(cluster_size: u32, extended_l2: bool) {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("a.qcow2");
    let size = 8 * MIB.max(u64::from(cluster_size) * 4);
    let mut expected = vec![0u8; size as usize];
    let opts = CreateOptions::new(size)
        .cluster_size(cluster_size)
        .extended_l2(extended_l2);
    let img = Image::create(&path, &opts).unwrap();
    write_mixed(&img, &mut expected, 1);
    img.flush().unwrap();
    drop(img);
    let raw = dir.path().join("expected.raw");
    std::fs::write(&raw, &expected).unwrap();
    assert_qemu_check_clean(&path);
    assert_qemu_compare(&path, &raw);
}

#[test]
fn created_image_64k_passes_qemu_check_and_compare() {
    roundtrip(65536, false);
}

#[test]
fn created_image_512b_passes_qemu_check_and_compare() {
    roundtrip(512, false);
}

#[test]
fn created_image_2m_passes_qemu_check_and_compare() {
    roundtrip(2 << 20, false);
}

#[test]
fn created_image_extended_l2_passes_qemu_check_and_compare() {
    roundtrip(65536, true);
}

#[test]
fn created_overlay_chain_shows_in_qemu_info_and_compares() {
    let dir = TempDir::new().unwrap();
    let base = dir.path().join("base.qcow2");
    let top = dir.path().join("top.qcow2");
    let size = 4 * MIB;
    let mut expected = vec![0u8; size as usize];
    let img = Image::create(&base, &CreateOptions::new(size)).unwrap();
    write_mixed(&img, &mut expected, 10);
    drop(img);
    let opts = CreateOptions::new(size).backing(BackingSpec::qcow2("base.qcow2"));
    let img = Image::create(&top, &opts).unwrap();
    let data = pattern(99, 5000);
    img.write_at(&data, 12345).unwrap();
    expected[12345..12345 + 5000].copy_from_slice(&data);
    img.write_zeroes(0, 65536).unwrap();
    expected[..65536].fill(0);
    img.discard(MIB, MIB).unwrap();
    expected[MIB as usize..2 * MIB as usize].fill(0);
    drop(img);
    let info = qemu_img_ok(&["info", "--backing-chain", top.to_str().unwrap()]);
    assert!(info.contains("backing file: base.qcow2"), "{info}");
    assert!(info.contains("backing file format: qcow2"), "{info}");
    let raw = dir.path().join("expected.raw");
    std::fs::write(&raw, &expected).unwrap();
    assert_qemu_check_clean(&top);
    assert_qemu_check_clean(&base);
    assert_qemu_compare(&top, &raw);
}

fn qemu_made(args: &[&str], name: &str, seed: u64) -> (TempDir, std::path::PathBuf) {
    let dir = TempDir::new().unwrap();
    let raw = dir.path().join("src.raw");
    let mut data = pattern(seed, (4 * MIB) as usize);
    data[MIB as usize..2 * MIB as usize].fill(0);
    std::fs::write(&raw, &data).unwrap();
    let out = dir.path().join(name);
    let mut full = vec!["convert", "-O", "qcow2"];
    full.extend_from_slice(args);
    full.push(raw.to_str().unwrap());
    full.push(out.to_str().unwrap());
    qemu_img_ok(&full);
    (dir, out)
}

fn assert_reads_like_qemu(path: &std::path::Path, dir: &std::path::Path) {
    let expected = qemu_to_raw(path, dir);
    let img = Image::open(path, &OpenOptions::read_only()).unwrap();
    let mut got = vec![0u8; expected.len()];
    img.read_at(&mut got, 0).unwrap();
    assert!(got == expected, "content differs from qemu-img convert");
    let report = img.check().unwrap();
    assert!(report.is_clean(), "{report:?}");
}

#[test]
fn qemu_image_512b_reads_identically() {
    let (dir, p) = qemu_made(&["-o", "cluster_size=512"], "a.qcow2", 1);
    assert_reads_like_qemu(&p, dir.path());
}

#[test]
fn qemu_image_64k_reads_identically() {
    let (dir, p) = qemu_made(&[], "a.qcow2", 2);
    assert_reads_like_qemu(&p, dir.path());
}

#[test]
fn qemu_image_2m_reads_identically() {
    let (dir, p) = qemu_made(&["-o", "cluster_size=2M"], "a.qcow2", 3);
    assert_reads_like_qemu(&p, dir.path());
}

#[test]
fn qemu_image_compressed_reads_identically() {
    let dir = TempDir::new().unwrap();
    let raw = dir.path().join("src.raw");
    // Compressible data: repeated text with some random blocks.
    let mut data = Vec::new();
    while data.len() < (4 * MIB) as usize {
        data.extend_from_slice(b"sendense qcow2 compressed cluster test line\n");
    }
    data.truncate((4 * MIB) as usize);
    data[2 * MIB as usize..2 * MIB as usize + 100_000].copy_from_slice(&pattern(5, 100_000));
    std::fs::write(&raw, &data).unwrap();
    let out = dir.path().join("c.qcow2");
    qemu_img_ok(&[
        "convert",
        "-c",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert_reads_like_qemu(&out, dir.path());
}

#[test]
fn qemu_image_extended_l2_reads_identically() {
    let (dir, p) = qemu_made(&["-o", "extended_l2=on"], "a.qcow2", 4);
    // Partial writes create subcluster allocations.
    qemu_img_ok(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        "extended_l2=on",
        "-b",
        "a.qcow2",
        "-F",
        "qcow2",
        dir.path().join("b.qcow2").to_str().unwrap(),
    ]);
    crate::util::run(
        "qemu-io",
        &[
            "-c",
            "write -P 0x5a 70000 5000",
            "-c",
            "write -z 200000 8192",
            dir.path().join("b.qcow2").to_str().unwrap(),
        ],
    );
    assert_reads_like_qemu(&p, dir.path());
    assert_reads_like_qemu(&dir.path().join("b.qcow2"), dir.path());
}

#[test]
fn qemu_image_compat_v2_reads_identically() {
    let (dir, p) = qemu_made(&["-o", "compat=0.10"], "a.qcow2", 6);
    let img = Image::open(&p, &OpenOptions::read_only()).unwrap();
    assert_eq!(img.info().version, 2);
    drop(img);
    assert_reads_like_qemu(&p, dir.path());
}

#[test]
fn qemu_chain_with_relative_names_reads_identically() {
    let (dir, base) = qemu_made(&[], "base.qcow2", 7);
    let d = dir.path();
    let mid = d.join("mid.qcow2");
    let top = d.join("top.qcow2");
    qemu_img_ok(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        mid.to_str().unwrap(),
    ]);
    crate::util::run(
        "qemu-io",
        &[
            "-c",
            "write -P 0x11 1000 300000",
            "-c",
            "write -z 3000000 65536",
            mid.to_str().unwrap(),
        ],
    );
    qemu_img_ok(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "mid.qcow2",
        "-F",
        "qcow2",
        top.to_str().unwrap(),
    ]);
    crate::util::run(
        "qemu-io",
        &[
            "-c",
            "write -P 0x22 200000 1000",
            "-c",
            "discard 0 65536",
            top.to_str().unwrap(),
        ],
    );
    assert!(base.exists());
    assert_reads_like_qemu(&top, d);
}

#[test]
fn qemu_raw_backing_reads_identically() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    std::fs::write(d.join("base.raw"), pattern(8, (3 * MIB) as usize)).unwrap();
    let top = d.join("top.qcow2");
    qemu_img_ok(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        top.to_str().unwrap(),
        "4M",
    ]);
    crate::util::run(
        "qemu-io",
        &["-c", "write -P 0x33 100000 70000", top.to_str().unwrap()],
    );
    assert_reads_like_qemu(&top, d);
}

#[test]
fn commit_into_qcow2_backing_matches_top() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let base = d.join("base.qcow2");
    let top = d.join("top.qcow2");
    let img = Image::create(&base, &CreateOptions::new(4 * MIB)).unwrap();
    img.write_at(&pattern(1, (4 * MIB) as usize), 0).unwrap();
    drop(img);
    let img = Image::create(
        &top,
        &CreateOptions::new(4 * MIB).backing(BackingSpec::qcow2("base.qcow2")),
    )
    .unwrap();
    img.write_at(&pattern(2, 100_000), 50_000).unwrap();
    img.write_zeroes(MIB, MIB).unwrap();
    img.commit().unwrap();
    let mut via_top = vec![0u8; (4 * MIB) as usize];
    img.read_at(&mut via_top, 0).unwrap();
    drop(img);
    let base_raw = qemu_to_raw(&base, d);
    assert!(
        base_raw == via_top,
        "committed base differs from the top image"
    );
    assert_qemu_check_clean(&base);
    let top_raw = d.join("top.raw");
    std::fs::write(&top_raw, &via_top).unwrap();
    assert_qemu_compare(&base, &top_raw);
    assert_qemu_compare(&top, &top_raw);
}

/// Retention's "merge a layer into its base": commit the middle of a three-point chain into
/// the oldest. The middle and the newest point read exactly as before (qemu-img compare
/// against their contents taken before), the base now reads as the middle, and the base
/// passes qemu-img check. Layers differ in cluster size and extended L2, and the middle
/// holds a compressed cluster, zeroed clusters and discarded clusters written by qemu.
#[test]
fn commit_middle_into_base_keeps_every_remaining_point() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let size = 4 * MIB;
    let base = d.join("base.qcow2");
    let mid = d.join("mid.qcow2");
    let top = d.join("top.qcow2");
    let img = Image::create(&base, &CreateOptions::new(size)).unwrap();
    img.write_at(&pattern(21, size as usize), 0).unwrap();
    drop(img);
    let img = Image::create(
        &mid,
        &CreateOptions::new(size)
            .cluster_size(16384)
            .extended_l2(true)
            .backing(BackingSpec::qcow2("base.qcow2")),
    )
    .unwrap();
    img.write_at(&pattern(22, 100_000), 5_000).unwrap();
    img.write_zeroes(MIB + 512, 40_000).unwrap();
    img.discard(2 * MIB, 3 * 16384).unwrap();
    drop(img);
    let out = crate::util::run(
        "qemu-io",
        &[
            "-c",
            "write -c -P 0x44 3145728 16384",
            "-c",
            "write -z 3211264 65536",
            mid.to_str().unwrap(),
        ],
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !said.contains("error") && out.stderr.is_empty(),
        "qemu-io failed: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `qemu-img check` counts compressed clusters in every QEMU version (`map` names them
    // only from QEMU 8 on).
    let check = qemu_img_ok(&["check", "--output=json", mid.to_str().unwrap()]);
    let compressed = check
        .split("\"compressed-clusters\":")
        .nth(1)
        .and_then(|rest| rest.trim_start().split([',', '}', '\n']).next())
        .and_then(|n| n.trim().parse::<u64>().ok());
    assert!(
        compressed.is_some_and(|n| n > 0),
        "the middle layer must hold a compressed cluster: {check}"
    );
    let img = Image::create(
        &top,
        &CreateOptions::new(size)
            .cluster_size(4096)
            .backing(BackingSpec::qcow2("mid.qcow2")),
    )
    .unwrap();
    img.write_at(&pattern(23, 30_000), 90_000).unwrap();
    img.write_zeroes(3 * MIB + 8192, 8192).unwrap();
    drop(img);
    let mid_raw = d.join("mid.raw");
    std::fs::write(&mid_raw, qemu_to_raw(&mid, d)).unwrap();
    let top_raw = d.join("top.raw");
    std::fs::write(&top_raw, qemu_to_raw(&top, d)).unwrap();

    let img = Image::open(&top, &OpenOptions::read_only()).unwrap();
    let middle = img.backing().and_then(|b| b.as_image()).unwrap();
    middle.commit().unwrap();
    let mut via_top = vec![0u8; size as usize];
    img.read_at(&mut via_top, 0).unwrap();
    drop(img);

    assert!(via_top == std::fs::read(&top_raw).unwrap());
    assert_qemu_compare(&top, &top_raw);
    assert_qemu_compare(&mid, &mid_raw);
    assert_qemu_compare(&base, &mid_raw);
    assert_qemu_check_clean(&base);
    assert_qemu_check_clean(&mid);
}

/// A commit into a backing file another user reads (and so does not let anybody write)
/// fails with a lock conflict; the image and the backing file read as before, and the chain
/// keeps its own read lock on the backing file.
#[test]
fn commit_into_backing_another_reader_holds_fails_locked() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let base = d.join("base.qcow2");
    let top = d.join("top.qcow2");
    let img = Image::create(&base, &CreateOptions::new(MIB)).unwrap();
    img.write_at(&pattern(30, MIB as usize), 0).unwrap();
    drop(img);
    let img = Image::create(
        &top,
        &CreateOptions::new(MIB).backing(BackingSpec::qcow2("base.qcow2")),
    )
    .unwrap();
    img.write_at(&pattern(31, 70_000), 0).unwrap();
    let mut before = vec![0u8; MIB as usize];
    img.read_at(&mut before, 0).unwrap();
    let reader = Image::open(&base, &OpenOptions::read_only()).unwrap();
    let err = img.commit().unwrap_err();
    assert_eq!(err.kind(), sendense_qcow2::ErrorKind::Locked, "{err}");
    let mut after = vec![0u8; MIB as usize];
    img.read_at(&mut after, 0).unwrap();
    assert!(after == before);
    let mut base_now = vec![0u8; MIB as usize];
    reader.read_at(&mut base_now, 0).unwrap();
    assert!(base_now == pattern(30, MIB as usize));
    drop(reader);
    // The chain still holds the base for reading: nobody may open it writable.
    let e = Image::open(&base, &OpenOptions::writable()).unwrap_err();
    assert_eq!(e.kind(), sendense_qcow2::ErrorKind::Locked, "{e}");
}

/// `qemu-img info` of `image`: its backing file name, if any.
fn qemu_backing_name(image: &std::path::Path) -> Option<String> {
    let info = qemu_img_ok(&["info", "--output=json", image.to_str().unwrap()]);
    let key = r#""backing-filename": ""#;
    info.find(key).map(|at| {
        let rest = &info[at + key.len()..];
        rest[..rest.find('"').unwrap()].to_owned()
    })
}

/// Retention's "merge a middle layer into its child": the newest point absorbs the middle
/// one and then names the oldest as its backing file. It reads exactly as before (also once
/// the middle file is deleted), the oldest point is untouched, and qemu agrees.
#[test]
fn absorb_middle_into_child_keeps_every_remaining_point() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let size = 4 * MIB;
    let base = d.join("base.qcow2");
    let mid = d.join("mid.qcow2");
    let top = d.join("top.qcow2");
    let img = Image::create(&base, &CreateOptions::new(size)).unwrap();
    img.write_at(&pattern(41, size as usize), 0).unwrap();
    drop(img);
    let img = Image::create(
        &mid,
        &CreateOptions::new(size)
            .cluster_size(16384)
            .extended_l2(true)
            .backing(BackingSpec::qcow2("base.qcow2")),
    )
    .unwrap();
    img.write_at(&pattern(42, 100_000), 5_000).unwrap();
    img.write_zeroes(MIB + 512, 40_000).unwrap();
    img.discard(2 * MIB, 3 * 16384).unwrap();
    img.write_at(&pattern(43, 70_000), 3 * MIB).unwrap();
    drop(img);
    let img = Image::create(
        &top,
        &CreateOptions::new(size)
            .cluster_size(4096)
            .backing(BackingSpec::qcow2("mid.qcow2")),
    )
    .unwrap();
    img.write_at(&pattern(44, 30_000), 90_000).unwrap();
    img.write_zeroes(3 * MIB + 8192, 8192).unwrap();
    drop(img);
    let base_raw = d.join("base.raw");
    std::fs::write(&base_raw, qemu_to_raw(&base, d)).unwrap();
    let top_raw = d.join("top.raw");
    std::fs::write(&top_raw, qemu_to_raw(&top, d)).unwrap();

    let mut img = Image::open(&top, &OpenOptions::writable()).unwrap();
    img.absorb_backing().unwrap();
    assert_eq!(img.backing().unwrap().path(), d.join("base.qcow2"));
    let mut via_top = vec![0u8; size as usize];
    img.read_at(&mut via_top, 0).unwrap();
    drop(img);

    assert!(via_top == std::fs::read(&top_raw).unwrap());
    assert_eq!(qemu_backing_name(&top).as_deref(), Some("base.qcow2"));
    assert_qemu_check_clean(&top);
    std::fs::remove_file(&mid).unwrap();
    assert_qemu_compare(&top, &top_raw);
    assert_qemu_compare(&base, &base_raw);
    let img = Image::open(&top, &OpenOptions::read_only()).unwrap();
    let mut again = vec![0u8; size as usize];
    img.read_at(&mut again, 0).unwrap();
    assert!(again == via_top);
}

/// Absorbing a backing layer that has no backing file leaves a standalone image.
#[test]
fn absorb_standalone_backing_leaves_a_standalone_image() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let mid = d.join("mid.qcow2");
    let top = d.join("top.qcow2");
    let img = Image::create(&mid, &CreateOptions::new(2 * MIB)).unwrap();
    img.write_at(&pattern(51, 300_000), 1_000).unwrap();
    img.write_zeroes(MIB, 65536).unwrap();
    drop(img);
    let img = Image::create(
        &top,
        &CreateOptions::new(2 * MIB).backing(BackingSpec::qcow2("mid.qcow2")),
    )
    .unwrap();
    img.write_at(&pattern(52, 5_000), 200_000).unwrap();
    drop(img);
    let top_raw = d.join("top.raw");
    std::fs::write(&top_raw, qemu_to_raw(&top, d)).unwrap();
    let mut img = Image::open(&top, &OpenOptions::writable()).unwrap();
    img.absorb_backing().unwrap();
    assert!(img.backing().is_none());
    drop(img);
    std::fs::remove_file(&mid).unwrap();
    assert_eq!(qemu_backing_name(&top), None);
    assert_qemu_check_clean(&top);
    assert_qemu_compare(&top, &top_raw);
}

/// A header this engine would not write back byte for byte (here: qemu added a bitmaps
/// extension) is refused before anything is copied: the image still names its backing
/// layer and reads the same. A plain header qemu-img wrote is absorbed like ours.
#[test]
fn absorb_refuses_a_header_it_cannot_rewrite_faithfully() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let mid = d.join("mid.qcow2");
    let img = Image::create(&mid, &CreateOptions::new(MIB)).unwrap();
    img.write_at(&pattern(61, 100_000), 0).unwrap();
    drop(img);
    for (name, bitmap) in [("plain.qcow2", false), ("bitmap.qcow2", true)] {
        let top = d.join(name);
        qemu_img_ok(&[
            "create",
            "-f",
            "qcow2",
            "-b",
            "mid.qcow2",
            "-F",
            "qcow2",
            top.to_str().unwrap(),
        ]);
        if bitmap {
            qemu_img_ok(&["bitmap", "--add", top.to_str().unwrap(), "b0"]);
        }
        let top_raw = d.join(format!("{name}.raw"));
        std::fs::write(&top_raw, qemu_to_raw(&top, d)).unwrap();
        let mut img = Image::open(&top, &OpenOptions::writable()).unwrap();
        let res = img.absorb_backing();
        if bitmap {
            let err = res.unwrap_err();
            assert_eq!(err.kind(), sendense_qcow2::ErrorKind::Unsupported, "{err}");
            assert!(img.backing().is_some());
        } else {
            res.unwrap();
            assert!(img.backing().is_none());
        }
        drop(img);
        let expected_backing = bitmap.then_some("mid.qcow2");
        assert_eq!(qemu_backing_name(&top).as_deref(), expected_backing);
        assert_qemu_compare(&top, &top_raw);
    }
}

/// The name of the new backing file is stored as the middle layer stores it, so a middle
/// layer in another folder (whose backing name is relative to that folder) is refused.
#[test]
fn absorb_of_a_backing_layer_in_another_folder_is_refused() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("sub")).unwrap();
    drop(Image::create(&d.join("sub/base.qcow2"), &CreateOptions::new(MIB)).unwrap());
    drop(
        Image::create(
            &d.join("sub/mid.qcow2"),
            &CreateOptions::new(MIB).backing(BackingSpec::qcow2("base.qcow2")),
        )
        .unwrap(),
    );
    let top = d.join("top.qcow2");
    drop(
        Image::create(
            &top,
            &CreateOptions::new(MIB).backing(BackingSpec::qcow2("sub/mid.qcow2")),
        )
        .unwrap(),
    );
    let mut img = Image::open(&top, &OpenOptions::writable()).unwrap();
    let e = img.absorb_backing().unwrap_err();
    assert_eq!(e.kind(), sendense_qcow2::ErrorKind::InvalidInput, "{e}");
    assert!(img.backing().is_some());
    drop(img);
    assert_eq!(qemu_backing_name(&top).as_deref(), Some("sub/mid.qcow2"));
}

#[test]
fn absorb_on_a_read_only_image_or_without_backing_is_refused() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let base = d.join("base.qcow2");
    let top = d.join("top.qcow2");
    drop(Image::create(&base, &CreateOptions::new(MIB)).unwrap());
    drop(
        Image::create(
            &top,
            &CreateOptions::new(MIB).backing(BackingSpec::qcow2("base.qcow2")),
        )
        .unwrap(),
    );
    let mut ro = Image::open(&top, &OpenOptions::read_only()).unwrap();
    let e = ro.absorb_backing().unwrap_err();
    assert_eq!(e.kind(), sendense_qcow2::ErrorKind::ReadOnly, "{e}");
    drop(ro);
    let mut standalone = Image::open(&base, &OpenOptions::writable()).unwrap();
    let e = standalone.absorb_backing().unwrap_err();
    assert!(matches!(e, sendense_qcow2::Qcow2Error::NoBacking), "{e}");
}

#[test]
fn commit_into_raw_backing_matches_top() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let base = d.join("base.raw");
    std::fs::write(&base, pattern(3, (2 * MIB) as usize)).unwrap();
    let top = d.join("top.qcow2");
    let img = Image::create(
        &top,
        &CreateOptions::new(2 * MIB).backing(BackingSpec::raw("base.raw")),
    )
    .unwrap();
    img.write_at(&pattern(4, 3000), 77).unwrap();
    img.write_zeroes(MIB, 65536).unwrap();
    img.commit().unwrap();
    let mut via_top = vec![0u8; (2 * MIB) as usize];
    img.read_at(&mut via_top, 0).unwrap();
    drop(img);
    assert!(std::fs::read(&base).unwrap() == via_top);
}

#[test]
fn finalize_renames_and_image_is_clean() {
    let dir = TempDir::new().unwrap();
    let tmp = dir.path().join("a.qcow2.part");
    let fin = dir.path().join("a.qcow2");
    let img = Image::create(&tmp, &CreateOptions::new(2 * MIB)).unwrap();
    img.write_at(&pattern(1, 300_000), 4096).unwrap();
    img.finalize(&fin).unwrap();
    assert!(!tmp.exists());
    assert_qemu_check_clean(&fin);
}

#[test]
fn check_of_written_image_is_clean() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("a.qcow2");
    let img = Image::create(&path, &CreateOptions::new(8 * MIB).cluster_size(4096)).unwrap();
    img.write_at(&pattern(1, (3 * MIB) as usize), 1000).unwrap();
    img.discard(0, MIB).unwrap();
    let report = img.check().unwrap();
    assert!(report.is_clean(), "{report:?}");
}

#[test]
fn created_image_512b_with_refcount_table_growth_passes_qemu_check() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("g.qcow2");
    let size = 16 * MIB;
    let img = Image::create(&path, &CreateOptions::new(size).cluster_size(512)).unwrap();
    let data = pattern(3, (12 * MIB) as usize);
    img.write_at(&data, 512 * 7 + 100).unwrap();
    drop(img);
    let mut expected = vec![0u8; size as usize];
    expected[3684..3684 + data.len()].copy_from_slice(&data);
    let raw = dir.path().join("expected.raw");
    std::fs::write(&raw, &expected).unwrap();
    assert_qemu_check_clean(&path);
    assert_qemu_compare(&path, &raw);
}

#[test]
fn refcount_table_growth_rewrites_only_its_two_header_fields() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("g.qcow2");
    let img = Image::create(&path, &CreateOptions::new(16 * MIB).cluster_size(512)).unwrap();
    let before = RawHeader::read_from_image(&std::fs::read(&path).unwrap());
    img.write_at(&pattern(4, (12 * MIB) as usize), 0).unwrap();
    drop(img);
    let after = RawHeader::read_from_image(&std::fs::read(&path).unwrap());
    assert_ne!(
        after.refcount_table_offset, before.refcount_table_offset,
        "the workload must move the refcount table"
    );
    let mut expected = before;
    expected.refcount_table_offset = after.refcount_table_offset;
    expected.refcount_table_clusters = after.refcount_table_clusters;
    assert_eq!(after, expected);
    assert_qemu_check_clean(&path);
}

#[test]
fn writable_open_clears_autoclear_bits_and_nothing_else() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("a.qcow2");
    drop(Image::create(&path, &CreateOptions::new(2 * MIB)).unwrap());
    let mut bytes = std::fs::read(&path).unwrap();
    RawHeader::patch_image(&mut bytes, |h| h.autoclear_features = U64::new(1 << 5));
    std::fs::write(&path, &bytes).unwrap();
    let before = RawHeader::read_from_image(&bytes);
    drop(Image::open(&path, &OpenOptions::writable()).unwrap());
    let after = RawHeader::read_from_image(&std::fs::read(&path).unwrap());
    let mut expected = before;
    expected.autoclear_features = U64::new(0);
    assert_eq!(after, expected);
    assert_qemu_check_clean(&path);
}

fn chain_ops_golden(cluster_size: u32, extended_l2: bool) {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let size = 4 * MIB;
    let mut expected = vec![0u8; size as usize];
    let mut prev: Option<String> = None;
    let mut seed = 1000u64;
    for layer in 0..3 {
        let name = format!("l{layer}.qcow2");
        let mut opts = CreateOptions::new(size)
            .cluster_size(cluster_size)
            .extended_l2(extended_l2);
        if let Some(p) = &prev {
            opts = opts.backing(BackingSpec::qcow2(p.clone()));
        }
        let img = Image::create(&d.join(&name), &opts).unwrap();
        for i in 0..12u64 {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let off = (seed >> 20) % size;
            let len = ((seed >> 8) % 150_000 + 1).min(size - off);
            match i % 4 {
                0 | 1 => {
                    let data = pattern(seed, len as usize);
                    img.write_at(&data, off).unwrap();
                    expected[off as usize..(off + len) as usize].copy_from_slice(&data);
                }
                2 => {
                    img.write_zeroes(off, len).unwrap();
                    expected[off as usize..(off + len) as usize].fill(0);
                }
                _ => {
                    img.discard(off, len).unwrap();
                    let cs = u64::from(cluster_size);
                    let (lo, hi) = (off.next_multiple_of(cs), (off + len) / cs * cs);
                    if lo < hi {
                        expected[lo as usize..hi as usize].fill(0);
                    }
                }
            }
        }
        drop(img);
        assert_qemu_check_clean(&d.join(&name));
        prev = Some(name);
    }
    let raw = d.join("expected.raw");
    std::fs::write(&raw, &expected).unwrap();
    assert_qemu_compare(&d.join("l2.qcow2"), &raw);
}

#[test]
fn three_layer_chain_with_mixed_ops_matches_qemu() {
    chain_ops_golden(65536, false);
}

#[test]
fn three_layer_extended_l2_chain_with_mixed_ops_matches_qemu() {
    chain_ops_golden(32768, true);
}

#[test]
fn three_layer_512b_chain_with_mixed_ops_matches_qemu() {
    chain_ops_golden(512, false);
}
