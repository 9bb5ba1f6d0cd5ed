//! Lock compatibility with QEMU's OFD lock bytes, against real qemu-img, qemu-io, qemu-nbd.

use std::path::Path;

use sendense_qcow2::{CreateOptions, ErrorKind, Image, OpenOptions};
use tempfile::TempDir;

use crate::util::{qemu_img, qemu_img_ok, run};

fn stderr_of(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn new_image(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("a.qcow2");
    Image::create(&p, &CreateOptions::new(1 << 20)).unwrap();
    p
}

#[test]
fn writable_open_blocks_qemu_img_info() {
    let dir = TempDir::new().unwrap();
    let p = new_image(dir.path());
    let img = Image::open(&p, &OpenOptions::writable()).unwrap();
    let out = qemu_img(&["info", p.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("lock"), "{}", stderr_of(&out));
    qemu_img_ok(&["info", "-U", p.to_str().unwrap()]);
    drop(img);
    qemu_img_ok(&["info", p.to_str().unwrap()]);
}

#[test]
fn read_only_open_blocks_qemu_writes_but_not_reads() {
    let dir = TempDir::new().unwrap();
    let p = new_image(dir.path());
    let img = Image::open(&p, &OpenOptions::read_only()).unwrap();
    let out = run("qemu-io", &["-c", "write 0 512", p.to_str().unwrap()]);
    assert!(stderr_of(&out).contains("lock"), "{}", stderr_of(&out));
    qemu_img_ok(&["info", p.to_str().unwrap()]);
    drop(img);
}

#[test]
fn qemu_nbd_holding_image_makes_our_open_fail_locked() {
    let dir = TempDir::new().unwrap();
    let p = new_image(dir.path());
    let sock = dir.path().join("nbd.sock");
    let pid_file = dir.path().join("nbd.pid");
    let out = run(
        "qemu-nbd",
        &[
            "--fork",
            "--persistent",
            "-f",
            "qcow2",
            "-k",
            sock.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
            p.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "qemu-nbd failed: {}", stderr_of(&out));
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .to_owned();
    let writable = Image::open(&p, &OpenOptions::writable());
    let read_only = Image::open(&p, &OpenOptions::read_only());
    run("kill", &[&pid]);
    let e = writable.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Locked, "{e}");
    assert_eq!(read_only.unwrap_err().kind(), ErrorKind::Locked);
}

#[test]
fn two_writable_opens_conflict() {
    let dir = TempDir::new().unwrap();
    let p = new_image(dir.path());
    let _first = Image::open(&p, &OpenOptions::writable()).unwrap();
    let e = Image::open(&p, &OpenOptions::writable()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Locked);
}

#[test]
fn two_read_only_opens_share() {
    let dir = TempDir::new().unwrap();
    let p = new_image(dir.path());
    let _a = Image::open(&p, &OpenOptions::read_only()).unwrap();
    let _b = Image::open(&p, &OpenOptions::read_only()).unwrap();
}
