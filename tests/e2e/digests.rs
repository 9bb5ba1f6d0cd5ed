//! Digests end to end: the real `sendense-client` backs up a raw and a VMDK disk (a full, then
//! an incremental) into a real `sendense-hub serve`; the hub keeps `<backup_id>.digests` beside
//! each image, and the layers, composed with `PointDigests`, match every block of each
//! restore point as qemu-img reads it back (`qemu-img convert -O raw`).

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use sendense_digest::{BLOCK_SIZE, BlockDigest, LayerDigests, PointDigests};
use serde_json::{Value, json};

use crate::support::{
    Serve, assert_check_clean, client, files_under, ok, qemu_img, s, serve_wrapper, write_random,
};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

serve_wrapper!(
    /// A running `sendense-hub serve` (see [`Serve`]).
    Hub
);

impl Hub {
    fn start(data: &Path) -> Self {
        Self(Serve::start(data, &[], "info"))
    }

    /// `sendense-client backup` that must succeed; its `--json` summary.
    fn backup(&self, vm: &str, disks: &[(u32, &Path)], extra: &[&str]) -> Value {
        let mut cmd = client();
        cmd.args([
            "backup",
            "--hub",
            &self.api,
            "--tls-dir",
            s(&self.tls_dir()),
        ])
        .args(["--token-file", s(&self.token()), "--vm", vm])
        .args(["--json", "--log-format", "json"])
        .stdin(Stdio::null());
        for (key, path) in disks {
            cmd.arg("--disk").arg(format!("{key}={}", s(path)));
        }
        cmd.args(extra);
        serde_json::from_str(&ok(&cmd.output().unwrap())).unwrap()
    }

    /// The decoded digests of one disk of one backup (the file must exist).
    fn layer(&self, vm: &str, key: u32, backup_id: &str) -> LayerDigests {
        layer_in(&self.data, vm, key, backup_id)
    }
}

/// The decoded digests of one disk of one backup in the hub data folder `data` (the file must
/// exist).
pub(crate) fn layer_in(data: &Path, vm: &str, key: u32, backup_id: &str) -> LayerDigests {
    let path = data.join(format!("repository/{vm}/disk-{key}/{backup_id}.digests"));
    let bytes =
        std::fs::read(&path).unwrap_or_else(|e| panic!("digests {} missing: {e}", path.display()));
    LayerDigests::decode(&bytes).unwrap()
}

/// What the restore point `image` (with its backing chain) reads, by `qemu-img convert`.
pub(crate) fn read_point(image: &Path, scratch: &Path) -> Vec<u8> {
    let _ = std::fs::remove_file(scratch);
    ok(&qemu_img(&[
        "convert",
        "-f",
        "qcow2",
        "-O",
        "raw",
        s(image),
        s(scratch),
    ]));
    std::fs::read(scratch).unwrap()
}

/// Every block of `bytes` (a point read back) hashes as the composed `layers` say.
pub(crate) fn assert_point_matches(layers: &[LayerDigests], bytes: &[u8]) {
    let point = PointDigests::new(layers);
    assert_eq!(point.disk_size(), bytes.len() as u64);
    let mut data_blocks = 0;
    for b in 0..point.block_count() {
        let start = (b * BLOCK_SIZE) as usize;
        let end = start + point.block_len(b) as usize;
        let (want, _) = point.expected(b);
        assert_eq!(BlockDigest::of(&bytes[start..end]), want, "block {b}");
        data_blocks += usize::from(matches!(want, BlockDigest::Data(_)));
    }
    assert!(data_blocks > 0, "a point with data has data blocks");
}

fn id_of(summary: &Value) -> String {
    summary["backup_id"].as_str().unwrap().to_owned()
}

#[test]
fn full_and_incremental_by_the_client_leave_digests_matching_each_point() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(&dir.path().join("data"));
    // A raw disk whose size is not a multiple of the 64 KiB block, data at odd places.
    let raw = dir.path().join("disk0.raw");
    let raw_size = 8 * MIB + 12 * KIB;
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(raw_size)
        .unwrap();
    write_random(&raw, 4 * KIB, 100 * KIB as usize, 1);
    write_random(&raw, 3 * MIB + 512, 700 * KIB as usize, 2);
    write_random(&raw, raw_size - 8 * KIB, 8 * KIB as usize, 3);
    // A VMDK disk (sent whole by the incremental: no changed areas given for it).
    let vmdk_raw = dir.path().join("disk1.raw");
    std::fs::File::create(&vmdk_raw)
        .unwrap()
        .set_len(4 * MIB)
        .unwrap();
    write_random(&vmdk_raw, MIB, 300 * KIB as usize, 4);
    let vmdk = dir.path().join("disk1.vmdk");
    ok(&qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        s(&vmdk_raw),
        s(&vmdk),
    ]));
    let disks = [(2000, raw.as_path()), (2001, vmdk.as_path())];
    let full = id_of(&hub.backup("web01", &disks, &["--type", "full"]));
    // Changes: new data inside and across blocks, data over a hole, a zeroed area.
    write_random(&raw, 100 * KIB, 4 * KIB as usize, 10);
    write_random(&raw, 6 * MIB + 1024, 70 * KIB as usize, 11);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&raw)
        .unwrap()
        .write_all_at(&vec![0u8; 256 * KIB as usize], 3 * MIB)
        .unwrap();
    let areas = dir.path().join("areas.json");
    let changed: Vec<Value> = [
        (100 * KIB, 4 * KIB),
        (6 * MIB + 1024, 70 * KIB),
        (3 * MIB, 256 * KIB),
    ]
    .iter()
    .map(|&(start, length)| json!({"start": start, "length": length}))
    .collect();
    std::fs::write(
        &areas,
        json!({"startOffset": 0, "length": raw_size, "changedArea": changed}).to_string(),
    )
    .unwrap();

    let incremental = id_of(&hub.backup(
        "web01",
        &disks,
        &[
            "--type",
            "incremental",
            "--base-backup",
            &full,
            "--changed-areas",
            &format!("2000={}", s(&areas)),
        ],
    ));

    let scratch = dir.path().join("point.raw");
    for key in [2000, 2001] {
        let layers = [
            hub.layer("web01", key, &full),
            hub.layer("web01", key, &incremental),
        ];
        let first = read_point(&hub.image("web01", key, &full), &scratch);
        assert_point_matches(&layers[..1], &first);
        let second = read_point(&hub.image("web01", key, &incremental), &scratch);
        assert_point_matches(&layers, &second);
        assert_check_clean(&hub.image("web01", key, &incremental));
    }
    // The incremental's layer of the raw disk holds its changed blocks, not the whole disk.
    let raw_layer = hub.layer("web01", 2000, &incremental);
    assert_eq!(raw_layer.blocks(), 1 + 2 + 4, "{raw_layer:?}");
    let now = read_point(&hub.image("web01", 2000, &incremental), &scratch);
    assert!(
        now == std::fs::read(&raw).unwrap(),
        "the point reads as the disk"
    );
    let leftovers: Vec<PathBuf> = files_under(&hub.data.join("repository"))
        .into_iter()
        .filter(|p| s(p).ends_with(".part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
