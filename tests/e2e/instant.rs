//! Instant recovery end to end (issue #15): a tiny bootable Linux disk (Debian's kernel, a
//! busybox initramfs, `extlinux`) is backed up by the real `sendense-client`, instant-recovered
//! by `sendense-hub ctl instant start`, and booted by `qemu-system-x86_64` (TCG) straight from
//! the hub's writable NBD export over TLS. The guest prints a marker on its serial console,
//! writes a known pattern to a known sector and powers off. Then: `sendense-client restore
//! --from-instant` copies the instant's state out (the pattern is there, and nothing else
//! changed: `qemu-img compare`), the point's files are byte-identical (SHA-256), its
//! verification passes, and `ctl instant discard` removes the scratch folder.
//!
//! Building the disk needs root (a loop device and a mount), `sfdisk`, `mkfs.ext4`,
//! `extlinux` and syslinux's `mbr.bin`, `busybox` (static), `cpio` and a kernel in `/boot`
//! with its modules; booting needs `qemu-system-x86_64`. A missing one fails the test naming
//! its Debian package (`scripts/test.sh` installs them all).

use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Proc, Serve, hub, ok, qemu_img, s};

const MIB: u64 = 1 << 20;
/// The guest disk.
const DISK: u64 = 64 * MIB;
/// Its one partition: 1 MiB to 48 MiB.
const PART_START: u64 = MIB;
const PART_SIZE: u64 = 47 * MIB;
/// Where the guest writes its pattern: past the partition, so nothing else is there.
const PATTERN_AT: u64 = 56 * MIB;
const PATTERN_LEN: usize = 4096;
/// What the guest prints on its serial console once the pattern is on its disk.
const MARKER: &str = "SENDENSE-INSTANT-BOOT-OK";
/// The longest the guest may take from qemu's start to the marker.
const BOOT_DEADLINE: Duration = Duration::from_secs(90);
/// The virtio modules the guest loads, in dependency order (Debian builds them as modules).
const MODULES: &[&str] = &[
    "virtio/virtio_ring",
    "virtio/virtio",
    "virtio/virtio_pci_modern_dev",
    "virtio/virtio_pci_legacy_dev",
    "virtio/virtio_pci",
    "block/virtio_blk",
];

/// The path of `tool`, or a panic naming the Debian package that has it.
fn need(tool: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{tool} is required: install the Debian package {package} (scripts/test.sh does)"
            )
        })
}

/// Runs `cmd`, panicking with its output when it fails; answers its stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A loop device, detached when dropped.
struct LoopDevice(String);

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// A mounted file system, unmounted when dropped.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Debian's kernel in `/boot` and its modules folder.
fn kernel() -> (PathBuf, PathBuf) {
    let mut kernels: Vec<PathBuf> = std::fs::read_dir("/boot")
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    kernels.retain(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("vmlinuz-"))
    });
    kernels.sort();
    let kernel = kernels.pop().unwrap_or_else(|| {
        panic!("no /boot/vmlinuz-*: install the Debian package linux-image-amd64 (scripts/test.sh does)")
    });
    let version = kernel.file_name().unwrap().to_str().unwrap()["vmlinuz-".len()..].to_owned();
    let modules = PathBuf::from(format!("/lib/modules/{version}/kernel/drivers"));
    assert!(
        modules.is_dir(),
        "{} missing: install the Debian package linux-image-{version}",
        modules.display()
    );
    (kernel, modules)
}

/// The bytes the guest writes.
fn pattern() -> Vec<u8> {
    let mut p: Vec<u8> = (0..PATTERN_LEN).map(|i| (i * 31 + 7) as u8).collect();
    p[..MARKER.len()].copy_from_slice(MARKER.as_bytes());
    p
}

/// A newc cpio initramfs: static busybox, the virtio modules, the pattern and an `/init` that
/// writes it to `/dev/vda` at [`PATTERN_AT`], prints [`MARKER`] and powers off.
fn initramfs(work: &Path, modules: &Path) -> PathBuf {
    let busybox = need("busybox", "busybox-static");
    need("cpio", "cpio");
    let root = work.join("initramfs");
    for d in ["bin", "dev", "proc", "sys", "lib/modules"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(&busybox, root.join("bin/busybox")).unwrap();
    let mut insmods = String::new();
    for m in MODULES {
        let name = Path::new(m).file_name().unwrap().to_str().unwrap();
        let plain = modules.join(format!("{m}.ko"));
        let xz = modules.join(format!("{m}.ko.xz"));
        let to = root.join(format!("lib/modules/{name}.ko"));
        if plain.is_file() {
            std::fs::copy(&plain, &to).unwrap();
        } else {
            assert!(
                xz.is_file(),
                "kernel module {m} missing in {}",
                modules.display()
            );
            let bytes = run(Command::new(need("xz", "xz-utils")).arg("-dc").arg(&xz));
            std::fs::write(&to, bytes).unwrap();
        }
        insmods.push_str(&format!("/bin/busybox insmod /lib/modules/{name}.ko\n"));
    }
    std::fs::write(root.join("pattern.bin"), pattern()).unwrap();
    let (head, tail) = MARKER.split_at(9);
    let init = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox mount -t proc proc /proc\n\
         /bin/busybox mount -t sysfs sysfs /sys\n\
         /bin/busybox mount -t devtmpfs devtmpfs /dev\n\
         {insmods}\
         n=0\n\
         while [ ! -b /dev/vda ] && [ $n -lt 300 ]; do /bin/busybox sleep 0.1; n=$((n+1)); done\n\
         /bin/busybox dd if=/pattern.bin of=/dev/vda bs={PATTERN_LEN} seek={} conv=fsync\n\
         /bin/busybox sync\n\
         tail={tail}\n\
         echo \"{head}$tail\"\n\
         /bin/busybox poweroff -f\n",
        PATTERN_AT / PATTERN_LEN as u64
    );
    std::fs::write(root.join("init"), init).unwrap();
    run(Command::new("chmod").args(["0755", s(&root.join("init"))]));
    let out = work.join("initrd.img");
    run(Command::new("sh").current_dir(&root).args([
        "-c",
        &format!("find . | cpio -o -H newc --quiet > {}", s(&out)),
    ]));
    out
}

/// The bootable disk: MBR with one bootable Linux partition holding ext4 with the kernel, the
/// initramfs and extlinux; syslinux's `mbr.bin` in the first 440 bytes.
fn bootable_disk(work: &Path) -> PathBuf {
    for (tool, package) in [
        ("sfdisk", "fdisk"),
        ("mkfs.ext4", "e2fsprogs"),
        ("extlinux", "extlinux"),
        ("losetup", "mount"),
    ] {
        need(tool, package);
    }
    let mbr = ["/usr/lib/syslinux/mbr/mbr.bin", "/usr/lib/SYSLINUX/mbr.bin"]
        .map(PathBuf::from)
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("syslinux's mbr.bin is required: install the Debian package syslinux-common (scripts/test.sh does)"));
    let (kernel, modules) = kernel();
    let initrd = initramfs(work, &modules);
    let disk = work.join("guest.raw");
    std::fs::File::create(&disk).unwrap().set_len(DISK).unwrap();
    let mut sfdisk = Command::new("sfdisk")
        .args(["--quiet", "--no-reread", "--no-tell-kernel", s(&disk)])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        sfdisk.stdin.as_mut().unwrap(),
        format!(
            "label: dos\nstart={}, size={}, type=83, bootable\n",
            PART_START / 512,
            PART_SIZE / 512
        )
        .as_bytes(),
    )
    .unwrap();
    assert!(sfdisk.wait().unwrap().success(), "sfdisk failed");
    let device = run(Command::new("losetup").args([
        "--find",
        "--show",
        "--offset",
        &PART_START.to_string(),
        "--sizelimit",
        &PART_SIZE.to_string(),
        s(&disk),
    ]))
    .trim()
    .to_owned();
    let device = LoopDevice(device);
    // syslinux reads ext4 without the 64-bit and checksum features.
    run(Command::new("mkfs.ext4").args([
        "-q",
        "-F",
        "-O",
        "^64bit,^metadata_csum",
        "-L",
        "guest",
        &device.0,
    ]));
    let mnt = work.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    run(Command::new("mount").args([&device.0, s(&mnt)]));
    let mounted = Mounted(mnt.clone());
    std::fs::copy(&kernel, mnt.join("vmlinuz")).unwrap();
    std::fs::copy(&initrd, mnt.join("initrd.img")).unwrap();
    std::fs::write(
        mnt.join("extlinux.conf"),
        "DEFAULT linux\nPROMPT 0\nTIMEOUT 0\nLABEL linux\n  KERNEL /vmlinuz\n  INITRD /initrd.img\n  APPEND console=ttyS0 panic=-1 quiet loglevel=3\n",
    )
    .unwrap();
    run(Command::new("extlinux").args(["--install", s(&mnt)]));
    run(&mut Command::new("sync"));
    drop(mounted);
    drop(device);
    let code = std::fs::read(&mbr).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    f.write_all_at(&code[..440.min(code.len())], 0).unwrap();
    f.sync_all().unwrap();
    disk
}

/// `sendense-hub ctl` against `serve`, JSON answer.
fn ctl(serve: &Serve, args: &[&str]) -> Value {
    let out = hub()
        .args([
            "ctl",
            "--hub",
            &serve.api,
            "--data-dir",
            s(&serve.data),
            "--json",
        ])
        .args(args)
        .output()
        .unwrap();
    serde_json::from_str(&ok(&out)).unwrap()
}

/// SHA-256 of a file, by `sha256sum`.
fn sha256(path: &Path) -> String {
    run(Command::new(need("sha256sum", "coreutils")).arg(path))
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// Boots `qemu-system-x86_64` from the NBD export (TLS with the client certificates in
/// `certs`) and waits for [`MARKER`] on its serial console and for its exit; answers how long
/// the boot took.
fn boot(port: &str, export: &str, certs: &Path) -> Duration {
    let qemu = need("qemu-system-x86_64", "qemu-system-x86");
    let started = Instant::now();
    let mut child = Command::new(qemu)
        .args(["-nographic", "-m", "256", "-accel", "tcg", "-no-reboot"])
        .arg("-object")
        .arg(format!(
            "tls-creds-x509,id=tls0,dir={},endpoint=client",
            s(certs)
        ))
        .arg("-drive")
        .arg(format!(
            "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},export={export},tls-creds=tls0,if=virtio"
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut qemu = Proc(child);
    let (tx, lines) = mpsc::channel::<String>();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx2.send(format!("stderr: {line}"));
        }
    });
    let mut seen = Vec::new();
    loop {
        let left = BOOT_DEADLINE.saturating_sub(started.elapsed());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(MARKER) => break,
            Ok(line) => seen.push(line),
            Err(_) => panic!(
                "no {MARKER} within {BOOT_DEADLINE:?}; the guest said:\n{}",
                seen.join("\n")
            ),
        }
    }
    let took = started.elapsed();
    while qemu.0.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < BOOT_DEADLINE,
            "qemu did not power off:\n{}",
            seen.join("\n")
        );
        let _ = lines.recv_timeout(Duration::from_millis(100));
    }
    assert!(qemu.0.wait().unwrap().success(), "{}", seen.join("\n"));
    took
}

/// `sendense-client restore --from-instant` of disk 2000 into `to` in `format`.
fn restore_from_instant(serve: &Serve, instant: &str, to: &Path, format: &str) -> Value {
    let out = serve
        .client_to("restore")
        .args(["--from-instant", instant])
        .args([
            "--disk",
            "2000",
            "--to",
            s(to),
            "--format",
            format,
            "--json",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    serde_json::from_str(&ok(&out)).unwrap()
}

#[test]
fn instant_recovery_boots_a_backed_up_linux_disk_and_its_writes_stay_in_the_overlay() {
    let test_started = Instant::now();
    let work = tempfile::tempdir().unwrap();
    let disk = bootable_disk(work.path());
    let data = work.path().join("data");
    let serve = Serve::start(&data, &[], "info");
    let out = serve
        .client_to("backup")
        .args(["--vm", "bootme"])
        .args([
            "--disk",
            &format!("2000={}", s(&disk)),
            "--type",
            "full",
            "--json",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let summary: Value = serde_json::from_str(&ok(&out)).unwrap();
    let backup_id = summary["backup_id"].as_str().unwrap().to_owned();
    let image = serve.image("bootme", 2000, &backup_id);
    let digests = image.with_extension("digests");
    let before = (sha256(&image), sha256(&digests));

    let started = ctl(&serve, &["instant", "start", &backup_id]);
    let instant = started["instant_id"].as_str().unwrap().to_owned();
    let export = started["disks"][0]["export_name"]
        .as_str()
        .unwrap()
        .to_owned();
    let port = serve.nbd.rsplit(':').next().unwrap().to_owned();
    let took = boot(&port, &export, &serve.tls_dir());
    eprintln!("instant boot: marker after {:.1} s", took.as_secs_f64());

    let raw = work.path().join("production.raw");
    let qcow2 = work.path().join("production.qcow2");
    let copied = restore_from_instant(&serve, &instant, &raw, "raw");
    restore_from_instant(&serve, &instant, &qcow2, "qcow2");
    let expected = work.path().join("expected.raw");
    std::fs::copy(&disk, &expected).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&expected)
        .unwrap()
        .write_all_at(&pattern(), PATTERN_AT)
        .unwrap();
    assert_eq!(
        copied["instant_id"].as_str(),
        Some(instant.as_str()),
        "{copied}"
    );
    let mut read = vec![0u8; PATTERN_LEN];
    std::fs::File::open(&raw)
        .unwrap()
        .read_exact_at(&mut read, PATTERN_AT)
        .unwrap();
    assert!(read == pattern(), "the guest's pattern is not in the copy");
    ok(&qemu_img(&[
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        s(&expected),
        s(&raw),
    ]));
    ok(&qemu_img(&[
        "compare",
        "-f",
        "raw",
        "-F",
        "qcow2",
        s(&expected),
        s(&qcow2),
    ]));
    assert_eq!(
        (sha256(&image), sha256(&digests)),
        before,
        "the point changed"
    );
    let chain = ok(&qemu_img(&[
        "info",
        "-U",
        "--backing-chain",
        s(&data.join(format!("instant/{instant}/disk-2000.qcow2"))),
    ]));
    assert!(chain.contains(&backup_id), "{chain}");
    let verify = hub()
        .args(["ctl", "--hub", &serve.api, "--data-dir", s(&serve.data)])
        .args(["verify", &backup_id, "--wait"])
        .output()
        .unwrap();
    let verdict = ok(&verify);
    assert!(verdict.contains("ok"), "{verdict}");
    ctl(&serve, &["instant", "discard", &instant]);
    assert!(!data.join("instant").join(&instant).exists());
    let list = ctl(&serve, &["instant", "list"]);
    assert_eq!(list["instants"].as_array().map(Vec::len), Some(0), "{list}");
    assert_eq!(
        (sha256(&image), sha256(&digests)),
        before,
        "the point changed"
    );
    eprintln!(
        "instant boot test: {:.1} s in all",
        test_started.elapsed().as_secs_f64()
    );
}
