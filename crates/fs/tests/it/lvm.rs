//! LVM2 linear logical volumes made by `pvcreate`, `vgcreate`, `lvcreate` and `lvextend` (on a
//! loop device over an MBR partition; `--driverloaded n`: no device-mapper is needed, nothing
//! is activated), filled at the extents `lvs` reports.

use std::path::Path;
use std::process::Command;

use sendense_fs::{Detected, FIRST_LV_INDEX, FsKind, FsPath, TableKind};

use crate::common::{self, Compare};

/// Detaches the loop device when dropped.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// Runs an LVM command with its configuration, backups and archives in `sys` (the host's
/// /etc/lvm stays untouched).
fn lvm(sys: &Path, args: &[&str]) -> String {
    common::run(
        Command::new(args[0])
            .args(["--driverloaded", "n"])
            .args(&args[1..])
            .env("LVM_SYSTEM_DIR", sys)
            .env("LVM_SUPPRESS_FD_WARNINGS", "1"),
    )
}

/// Writes `image` into the logical volume whose extents `ranges` lists (`start_le:pv_first-
/// pv_last` per segment, 1 MiB extents), on a PV at `pv_offset` whose data starts at
/// `pe_start`.
fn fill_lv(disk: &Path, pv_offset: u64, pe_start: u64, ranges: &[(u64, u64, u64)], image: &Path) {
    const MIB: u64 = 1 << 20;
    let data = std::fs::read(image).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(disk).unwrap();
    for (le, first, last) in ranges {
        let from = usize::try_from(le * MIB).unwrap();
        let to = usize::try_from((le + last - first + 1) * MIB)
            .unwrap()
            .min(data.len());
        std::os::unix::fs::FileExt::write_all_at(
            &f,
            &data[from..to],
            pv_offset + pe_start + first * MIB,
        )
        .unwrap();
    }
}

/// `lvs` segments of `lv`: `(first LV extent, first PV extent, last PV extent)`.
fn segments(sys: &Path, vg: &str, lv: &str) -> Vec<(u64, u64, u64)> {
    let out = lvm(
        sys,
        &[
            "lvs",
            "--noheadings",
            "--separator",
            ";",
            "-o",
            "seg_start_pe,seg_pe_ranges",
            &format!("{vg}/{lv}"),
        ],
    );
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (le, range) = l.trim().split_once(';').unwrap();
            let range = range.trim().rsplit_once(':').unwrap().1;
            let (a, b) = range.split_once('-').unwrap();
            (le.parse().unwrap(), a.parse().unwrap(), b.parse().unwrap())
        })
        .collect()
}

#[test]
fn lvm2_linear_volumes_in_an_mbr_partition_match_the_trees() {
    common::need("pvcreate", "lvm2");
    common::need("losetup", "mount");
    common::need("sfdisk", "fdisk");
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    common::make_tree(&tree, true);
    let flat = dir.path().join("flat");
    common::make_tree(&flat, false);
    let img = dir.path().join("disk.img");
    common::blank(&img, 40 << 20);
    let mut child = Command::new("sfdisk")
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(&img)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("sfdisk runs");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"label: dos\n2048,,8e\n").unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk failed");

    let pv_offset = 2048 * 512;
    let dev = common::run(
        Command::new("losetup")
            .args(["-f", "--show", "-o", &pv_offset.to_string()])
            .arg(&img),
    )
    .trim()
    .to_owned();
    let attached = Loop(dev.clone());
    let vg = format!("sendensetest{}", std::process::id());
    let sys = &dir.path().join("lvm");
    std::fs::create_dir_all(sys).unwrap();
    std::fs::write(sys.join("lvm.conf"), "").unwrap();
    lvm(sys, &["pvcreate", "-q", "-y", &dev]);
    lvm(sys, &["vgcreate", "-q", "-s", "1M", &vg, &dev]);
    lvm(
        sys,
        &[
            "lvcreate", "-q", "-an", "-Zn", "-y", "-L", "8M", "-n", "root", &vg,
        ],
    );
    lvm(
        sys,
        &[
            "lvcreate", "-q", "-an", "-Zn", "-y", "-L", "4M", "-n", "data", &vg,
        ],
    );
    lvm(sys, &["lvextend", "-q", "-L", "+4M", &format!("{vg}/root")]);
    let root_segments = segments(sys, &vg, "root");
    let data_segments = segments(sys, &vg, "data");
    let pe_start: u64 = lvm(
        sys,
        &[
            "pvs",
            "--noheadings",
            "--units",
            "b",
            "--nosuffix",
            "-o",
            "pe_start",
            &dev,
        ],
    )
    .trim()
    .parse()
    .unwrap();
    lvm(sys, &["vgchange", "-q", "-an", &vg]);
    drop(attached);
    assert_eq!(
        root_segments.len(),
        2,
        "lvextend after another LV splits root"
    );

    let ext = dir.path().join("ext.img");
    common::mkfs_ext(&ext, &tree, "ext4", 12 << 20);
    fill_lv(&img, pv_offset, pe_start, &root_segments, &ext);
    let fat = dir.path().join("fat.img");
    common::mkfs_fat(&fat, &flat, 12, 4 << 20);
    fill_lv(&img, pv_offset, pe_start, &data_segments, &fat);

    let disk = common::disk(&img);
    let table = sendense_fs::partitions(&disk).unwrap();
    assert_eq!(table.kind, TableKind::Mbr);
    let found: Vec<_> = table
        .partitions
        .iter()
        .map(|p| (p.index, p.name.clone(), p.detected.clone(), p.size))
        .collect();
    assert_eq!(
        found,
        [
            (
                1,
                None,
                Detected::Unsupported("lvm2"),
                (40 << 20) - pv_offset
            ),
            (
                FIRST_LV_INDEX,
                Some(format!("{vg}/root")),
                Detected::Supported(FsKind::Ext4),
                12 << 20
            ),
            (
                FIRST_LV_INDEX + 1,
                Some(format!("{vg}/data")),
                Detected::Supported(FsKind::Fat),
                4 << 20
            ),
        ]
    );
    let how = Compare {
        mode: true,
        mtime: true,
    };
    let mut fs = sendense_fs::open(&disk, Some(FIRST_LV_INDEX)).unwrap();
    assert!(common::compare_tree(&mut *fs, &tree, &FsPath::root(), how) > 40);
    let mut fs = sendense_fs::open(&disk, Some(FIRST_LV_INDEX + 1)).unwrap();
    let how = Compare {
        mode: false,
        mtime: true,
    };
    assert!(common::compare_tree(&mut *fs, &flat, &FsPath::root(), how) > 40);
    let Err(err) = sendense_fs::open(&disk, Some(1)) else {
        panic!("opened a physical volume")
    };
    assert_eq!(err.to_string(), "Unsupported: lvm2 in partition 1");
}
