//! `sendense-hub quickstart`: the whole product in one command.

use crate::support::hub;

#[test]
fn quickstart_small_disks_verifies_everything_and_exits_zero() {
    let out = hub()
        .args(["quickstart", "--disk-size", "64M"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("everything verified"), "{stdout}");
    assert_eq!(
        stdout.matches("identical (qemu-img compare)").count(),
        6,
        "{stdout}"
    );
    assert_eq!(stdout.matches(" full ").count(), 2, "{stdout}");
    assert_eq!(stdout.matches(" incremental ").count(), 2, "{stdout}");
}

#[test]
fn quickstart_without_qemu_img_verifies_with_its_own_comparison() {
    let dir = tempfile::tempdir().unwrap();
    let out = hub()
        .args(["quickstart", "--disk-size", "64M", "--dir"])
        .arg(dir.path())
        .env("PATH", "")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.matches("identical (byte comparison)").count(),
        6,
        "{stdout}"
    );
    assert!(
        dir.path().join("hub/catalog.redb").exists(),
        "--dir keeps the hub's data"
    );
}
