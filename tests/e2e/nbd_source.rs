//! Backups from NBD sources (issue #19): a QCOW2 with QEMU dirty bitmaps (`qemu-img bitmap`),
//! exported read-only by a real `qemu-nbd` on a Unix socket in a temporary folder, backed up
//! by the real `sendense-client backup --nbd-source` into a real `sendense-hub serve`; writes
//! between backups go through `qemu-io`; the chain is compared with the source by
//! `qemu-img compare`. Every `qemu-nbd` is stopped (and waited for) when its guard drops.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Serve, assert_check_clean, assert_same, client, ok, qemu_img, s};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// Runs `tool` (a QEMU tool), failing loudly when it is not installed.
fn run_tool(tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool} is required ({e}); install qemu-utils"));
    ok(&out)
}

/// `qemu-io -c CMD ... FILE` on a QCOW2 (writes are tracked by its enabled bitmaps).
fn qemu_io(file: &Path, commands: &[&str]) {
    let mut args = vec!["-f", "qcow2"];
    for c in commands {
        args.extend(["-c", c]);
    }
    args.push(s(file));
    run_tool("qemu-io", &args);
}

/// A `qemu-nbd --fork` serving one file read-only on a Unix socket; stopped, and waited for
/// (it holds the image's lock), on drop.
struct QemuNbd {
    pid: u32,
    uri: String,
}

impl QemuNbd {
    /// Exports `file` as `disk` read-only with `-e 4` (multi-conn) and the bitmaps `bitmaps`.
    fn start(dir: &Path, file: &Path, bitmaps: &[&str]) -> Self {
        let socket = dir.join(format!("nbd-{}.sock", rand_suffix()));
        let pid_file = dir.join("qemu-nbd.pid");
        let _ = std::fs::remove_file(&pid_file);
        let mut cmd = Command::new("qemu-nbd");
        cmd.args(["--fork", "--persistent", "-r", "-e", "4", "-f", "qcow2"])
            .args(["-x", "disk", "-k", s(&socket)])
            .arg(format!("--pid-file={}", s(&pid_file)));
        for b in bitmaps {
            cmd.args(["-B", b]);
        }
        let status = cmd
            .arg(file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("qemu-nbd is required ({e}); install qemu-utils"));
        assert!(status.success(), "qemu-nbd did not start: {status}");
        let pid = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        Self {
            pid,
            uri: format!("nbd+unix:///disk?socket={}", s(&socket)),
        }
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.pid.to_string()).status();
        // Wait (bounded) until it is gone: it holds the image's write lock for qemu-io.
        let deadline = Instant::now() + Duration::from_secs(10);
        let proc = PathBuf::from(format!("/proc/{}", self.pid));
        while proc.exists() && Instant::now() < deadline {
            std::thread::yield_now();
        }
    }
}

fn rand_suffix() -> u64 {
    use std::time::SystemTime;
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A QCOW2 of `size` (at least 8 MiB) with data in three places and a zeroed, allocated
/// cluster.
fn source_image(dir: &Path, size: u64) -> PathBuf {
    let file = dir.join("vm-disk.qcow2");
    ok(&qemu_img(&[
        "create",
        "-f",
        "qcow2",
        s(&file),
        &size.to_string(),
    ]));
    // For 32 MiB: data at 0 (1 MiB), 8 MiB (2 MiB), 20 MiB (64 KiB), zeroes at 24 MiB.
    qemu_io(
        &file,
        &[
            "write -P 0x5a 0 1M",
            &format!("write -P 0xa5 {} 2M", size / 4),
            &format!("write -P 0x33 {} 64k", size / 8 * 5),
            &format!("write -z {} 64k", size / 4 * 3),
        ],
    );
    file
}

/// `sendense-client backup --nbd-source 2000=URI [extra]`, JSON summary; the output.
fn backup_cmd(hub: &Serve, vm: &str, uris: &[(u32, &str)], extra: &[&str]) -> std::process::Output {
    let mut cmd = client();
    cmd.args(["backup", "--hub", &hub.api, "--tls-dir", s(&hub.tls_dir())])
        .args(["--token-file", s(&hub.token()), "--vm", vm])
        .args(["--json", "--log-format", "json"])
        .stdin(Stdio::null());
    for (key, uri) in uris {
        cmd.arg("--nbd-source").arg(format!("{key}={uri}"));
    }
    cmd.args(extra).output().unwrap()
}

fn backup(hub: &Serve, vm: &str, uris: &[(u32, &str)], extra: &[&str]) -> (Value, String) {
    let out = backup_cmd(hub, vm, uris, extra);
    let summary = serde_json::from_str(&ok(&out)).unwrap();
    (summary, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Bytes allocated in the top layer of `image` (`qemu-img map`, depth 0: data and zero
/// clusters the layer itself holds).
fn top_layer_bytes(image: &Path) -> u64 {
    let out = ok(&qemu_img(&[
        "map",
        "--output=json",
        "-f",
        "qcow2",
        s(image),
    ]));
    let map: Vec<Value> = serde_json::from_str(&out).unwrap();
    map.iter()
        .filter(|e| e["depth"] == 0)
        .map(|e| e["length"].as_u64().unwrap())
        .sum()
}

fn hub_with_data(dir: &Path) -> Serve {
    Serve::start(&dir.join("hub"), &[], "info")
}

#[test]
fn nbd_source_full_then_bitmap_incremental_sends_changed_clusters_and_compares_equal() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with_data(dir.path());
    let disk = source_image(dir.path(), 32 * MIB);
    // The checkpoint of the full: tracks every write from here on.
    ok(&qemu_img(&[
        "bitmap",
        "--add",
        "--enable",
        s(&disk),
        "cp-1",
    ]));

    let export = QemuNbd::start(dir.path(), &disk, &[]);
    let (full, log) = backup(&hub, "kvm01", &[(2000, &export.uri)], &["--bitmap", "cp-1"]);
    drop(export);
    assert_eq!(full["backup_type"], "full", "{log}");
    let full_id = full["backup_id"].as_str().unwrap().to_owned();
    let full_image = hub.image("kvm01", 2000, &full_id);
    assert_check_clean(&full_image);
    assert_same(&full_image, "qcow2", &disk, "qcow2");

    // The guest writes 4 clusters: new data, overwritten data, and zeroes over data.
    qemu_io(
        &disk,
        &[
            "write -P 0x11 4M 64k",
            "write -P 0x22 9M 128k",
            "write -z 20M 64k",
        ],
    );
    ok(&qemu_img(&[
        "bitmap",
        "--add",
        "--enable",
        s(&disk),
        "cp-2",
    ]));
    let export = QemuNbd::start(dir.path(), &disk, &["cp-1"]);
    let (incr, log) = backup(&hub, "kvm01", &[(2000, &export.uri)], &["--bitmap", "cp-2"]);
    drop(export);

    assert_eq!(incr["backup_type"], "incremental", "{log}");
    let incr_id = incr["backup_id"].as_str().unwrap().to_owned();
    let incr_image = hub.image("kvm01", 2000, &incr_id);
    assert_check_clean(&incr_image);
    assert_eq!(top_layer_bytes(&incr_image), 256 * KIB, "{log}");
    assert!(incr["bytes_sent"].as_u64().unwrap() <= 192 * KIB, "{incr}");
    assert_same(&incr_image, "qcow2", &disk, "qcow2");
    let chain = hub.rest(|h| async move {
        h.chain(&serde_json::from_value(serde_json::json!("kvm01")).unwrap())
            .await
            .unwrap()
    });
    let change_ids: Vec<_> = chain
        .backups
        .iter()
        .map(|b| b.disks[0].change_id.as_ref().map(ToString::to_string))
        .collect();
    assert_eq!(
        change_ids,
        vec![Some("cp-1".to_owned()), Some("cp-2".to_owned())]
    );
}

#[test]
fn nbd_source_removed_bitmap_makes_auto_a_full_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with_data(dir.path());
    let disk = source_image(dir.path(), 16 * MIB);
    ok(&qemu_img(&[
        "bitmap",
        "--add",
        "--enable",
        s(&disk),
        "cp-1",
    ]));
    let export = QemuNbd::start(dir.path(), &disk, &[]);
    backup(&hub, "kvm02", &[(2000, &export.uri)], &["--bitmap", "cp-1"]);
    drop(export);
    qemu_io(&disk, &["write -P 0x77 2M 64k"]);
    ok(&qemu_img(&["bitmap", "--remove", s(&disk), "cp-1"]));
    ok(&qemu_img(&[
        "bitmap",
        "--add",
        "--enable",
        s(&disk),
        "cp-2",
    ]));
    let export = QemuNbd::start(dir.path(), &disk, &["cp-2"]);

    let (second, log) = backup(&hub, "kvm02", &[(2000, &export.uri)], &["--bitmap", "cp-2"]);
    let continued = backup_cmd(
        &hub,
        "kvm02",
        &[(2000, &export.uri)],
        &["--bitmap", "cp-3", "--type", "incremental"],
    );
    drop(export);

    assert_eq!(second["backup_type"], "full", "{log}");
    assert!(
        log.contains("does not offer the dirty bitmap") && log.contains("cp-1"),
        "{log}"
    );
    let id = second["backup_id"].as_str().unwrap();
    assert_same(&hub.image("kvm02", 2000, id), "qcow2", &disk, "qcow2");
    // The new chain recorded cp-2, which the export offers: `incremental` continues it.
    assert!(
        continued.status.success(),
        "{}",
        String::from_utf8_lossy(&continued.stderr)
    );
}

#[test]
fn nbd_source_larger_than_recorded_disk_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with_data(dir.path());
    let disk = source_image(dir.path(), 32 * MIB);
    let export = QemuNbd::start(dir.path(), &disk, &[]);
    backup(&hub, "kvm03", &[(2000, &export.uri)], &["--bitmap", "cp-1"]);
    drop(export);
    ok(&qemu_img(&["resize", "-f", "qcow2", s(&disk), "64M"]));
    let export = QemuNbd::start(dir.path(), &disk, &[]);

    let out = backup_cmd(&hub, "kvm03", &[(2000, &export.uri)], &["--bitmap", "cp-2"]);

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("larger than the 33554432 bytes the hub recorded"),
        "{stderr}"
    );
    let chain = hub.rest(|h| async move {
        h.chain(&serde_json::from_value(serde_json::json!("kvm03")).unwrap())
            .await
            .unwrap()
    });
    assert_eq!(chain.backups.len(), 1, "nothing was started at the hub");
}

#[test]
fn nbd_source_two_disks_one_run_incremental_needs_offered_bitmap() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with_data(dir.path());
    let a_dir = dir.path().join("a");
    let b_dir = dir.path().join("b");
    std::fs::create_dir_all(&a_dir).unwrap();
    std::fs::create_dir_all(&b_dir).unwrap();
    let a = source_image(&a_dir, 16 * MIB);
    let b = source_image(&b_dir, 8 * MIB);
    let export_a = QemuNbd::start(&a_dir, &a, &[]);
    let export_b = QemuNbd::start(&b_dir, &b, &[]);

    let (full, log) = backup(
        &hub,
        "kvm04",
        &[(2000, &export_a.uri), (2001, &export_b.uri)],
        &["--bitmap", "cp-1", "--type", "full"],
    );
    let refused = backup_cmd(
        &hub,
        "kvm04",
        &[(2000, &export_a.uri), (2001, &export_b.uri)],
        &["--bitmap", "cp-2", "--type", "incremental"],
    );
    drop((export_a, export_b));

    assert_eq!(full["disks"].as_array().unwrap().len(), 2, "{log}");
    let id = full["backup_id"].as_str().unwrap();
    assert_same(&hub.image("kvm04", 2000, id), "qcow2", &a, "qcow2");
    assert_same(&hub.image("kvm04", 2001, id), "qcow2", &b, "qcow2");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("incremental backup is not possible"),
        "{stderr}"
    );
}
