//! `sendense-hub image serve` against real NBD clients: libnbd's `nbdcopy`
//! and `nbdinfo`, and `qemu-img` over `nbd://` and `nbds://`.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{assert_same, hub, ok, qemu_img, s, write_random};

/// A running `image serve`, stopped with SIGTERM on drop.
struct Served {
    child: Child,
    port: u16,
}

impl Served {
    fn start(args: &[&str]) -> Self {
        let mut child = hub()
            .args(["image", "serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            assert!(
                Instant::now() < deadline,
                "image serve did not report its address in time"
            );
            let line = lines
                .next()
                .expect("image serve exited before serving")
                .unwrap();
            let line = strip_ansi(&line);
            if let Some(uri) = line.split_whitespace().find_map(|w| w.strip_prefix("uri=")) {
                let after = uri.split("://").nth(1).unwrap();
                let hostport = after.split('/').next().unwrap();
                break hostport.rsplit(':').next().unwrap().parse::<u16>().unwrap();
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self { child, port }
    }

    fn uri(&self, scheme: &str) -> String {
        format!("{scheme}://localhost:{}/", self.port)
    }

    /// SIGTERM, then wait: the server flushes and closes the image.
    fn stop(mut self) {
        terminate(&mut self.child);
    }
}

/// Drops terminal colour sequences (`ESC [ … m`) from a log line.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn terminate(child: &mut Child) {
    if child.try_wait().unwrap().is_none() {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let status = child.wait().unwrap();
        assert!(
            status.success(),
            "image serve exited with {status} after SIGTERM"
        );
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs an external tool, failing loudly when it is not installed.
fn tool(name: &str, args: &[&str]) -> std::process::Output {
    Command::new(name).args(args).output().unwrap_or_else(|e| {
        panic!("{name} is required ({e}); install libnbd-bin (scripts/test.sh does)")
    })
}

fn new_image(path: &Path, size: &str) {
    ok(&hub()
        .args(["image", "create", s(path), size])
        .output()
        .unwrap());
}

#[test]
fn nbdcopy_into_served_qcow2_with_one_and_four_connections_is_identical_and_clean() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    write_random(&src, 0, 256 << 20, 42);
    for conns in ["1", "4"] {
        let img = dir.path().join(format!("c{conns}.qcow2"));
        new_image(&img, "256M");
        let served = Served::start(&[s(&img)]);
        let uri = served.uri("nbd");
        ok(&tool(
            "nbdcopy",
            &["--flush", &format!("--connections={conns}"), s(&src), &uri],
        ));
        let back = dir.path().join(format!("back{conns}.raw"));
        ok(&tool("nbdcopy", &[&uri, s(&back)]));
        served.stop();
        assert!(
            fs::read(&back).unwrap() == fs::read(&src).unwrap(),
            "read back differs"
        );
        ok(&qemu_img(&["check", s(&img)]));
        assert_same(&img, "qcow2", &src, "raw");
    }
}

#[test]
fn served_writable_image_is_locked_against_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("a.qcow2");
    new_image(&img, "64M");
    let served = Served::start(&[s(&img)]);
    let out = qemu_img(&["info", s(&img)]);
    assert!(
        !out.status.success(),
        "qemu-img opened an image we serve for writing"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lock"),
        "{out:?}"
    );
    served.stop();
    ok(&qemu_img(&["info", s(&img)]));
}

#[test]
fn chain_served_over_tls_reads_like_qemu_and_maps_allocation() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    sendense_nbd::tls::ensure_certificates(&tls, &[]).unwrap();
    let base_raw = dir.path().join("base.raw");
    fs::File::create(&base_raw)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    write_random(&base_raw, 0, 4 << 20, 1);
    let base = dir.path().join("base.qcow2");
    ok(&hub()
        .args(["image", "convert", s(&base_raw), s(&base)])
        .output()
        .unwrap());
    let top = dir.path().join("top.qcow2");
    ok(&hub()
        .args(["image", "create", "-b", "base.qcow2", s(&top)])
        .output()
        .unwrap());
    ok(&Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            "write -P 0x11 16M 1M",
            "-c",
            "write -z 0 1M",
            s(&top),
        ])
        .output()
        .expect("qemu-io (qemu-utils) is required"));

    let served = Served::start(&["--read-only", "--tls-dir", s(&tls), s(&top)]);
    let uri = format!("{}?tls-certificates={}", served.uri("nbds"), s(&tls));
    let map = ok(&tool("nbdinfo", &["--map", &uri]));
    assert!(map.contains("data"), "{map}");
    assert!(map.contains("hole") || map.contains("zero"), "{map}");

    let ours = dir.path().join("ours.raw");
    let object = format!("tls-creds-x509,id=tls0,dir={},endpoint=client", s(&tls));
    let opts = format!(
        "driver=nbd,server.type=inet,server.host=localhost,server.port={},tls-creds=tls0",
        served.port
    );
    ok(&qemu_img(&[
        "convert",
        "--object",
        &object,
        "--image-opts",
        &opts,
        "-O",
        "raw",
        s(&ours),
    ]));
    served.stop();
    let theirs = dir.path().join("theirs.raw");
    ok(&qemu_img(&["convert", "-O", "raw", s(&top), s(&theirs)]));
    assert!(
        fs::read(&ours).unwrap() == fs::read(&theirs).unwrap(),
        "chain read over TLS differs"
    );
}

#[test]
fn tls_server_refuses_plain_clients() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    sendense_nbd::tls::ensure_certificates(&tls, &[]).unwrap();
    let img = dir.path().join("a.qcow2");
    new_image(&img, "16M");
    let served = Served::start(&["--tls-dir", s(&tls), s(&img)]);
    let out = tool("nbdinfo", &[&served.uri("nbd")]);
    assert!(
        !out.status.success(),
        "a plain client was served by a TLS-only server"
    );
    served.stop();
}

/// Runs `image serve` on `image`, expecting it to refuse to start: reads its
/// stderr to the end (it exits) and fails if it ever reports an address.
fn serve_refused(image: &Path) -> String {
    let mut child = hub()
        .args(["image", "serve", "--read-only", "--listen", "127.0.0.1:0"])
        .arg(image)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut text = String::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        if line.contains("uri=") {
            let _ = child.kill();
            let _ = child.wait();
            panic!("image serve started serving a crafted image: {line}");
        }
        text.push_str(&line);
        text.push('\n');
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "image serve exited 0: {text}");
    text
}

/// A QCOW2 image in `dir` whose header names `backing` (format `fmt`),
/// written by `qemu-img create -u` as an attacker would.
fn crafted(dir: &Path, backing: &str, fmt: &str) -> std::path::PathBuf {
    let image = dir.join("crafted.qcow2");
    ok(&qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-u",
        "-b",
        backing,
        "-F",
        fmt,
        s(&image),
        "1M",
    ]));
    image
}

// Issue #11 item 12: the engine opened any backing file an image named.
#[test]
fn serve_of_image_backed_by_etc_shadow_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let image = crafted(dir.path(), "/etc/shadow", "raw");

    let stderr = serve_refused(&image);

    assert!(
        stderr.contains("\"/etc/shadow\"") && stderr.contains("backing policy"),
        "{stderr}"
    );
}

#[test]
fn serve_of_image_backed_by_parent_path_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let image = crafted(dir.path(), "../../../../../../etc/shadow", "raw");

    let stderr = serve_refused(&image);

    assert!(stderr.contains("path contains .."), "{stderr}");
}

#[test]
fn serve_of_image_backed_by_symlink_out_of_its_folder_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/etc/shadow", dir.path().join("base.raw")).unwrap();
    let image = crafted(dir.path(), "base.raw", "raw");

    let stderr = serve_refused(&image);

    assert!(
        stderr.contains("resolves outside the image's folder"),
        "{stderr}"
    );
}

#[test]
fn info_of_image_backed_by_etc_shadow_names_file_and_policy() {
    let dir = tempfile::tempdir().unwrap();
    let image = crafted(dir.path(), "/etc/shadow", "raw");

    let out = hub().args(["image", "info"]).arg(&image).output().unwrap();

    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("\"/etc/shadow\" refused (absolute path) by the backing policy"),
        "{stderr}"
    );
}

#[test]
fn info_with_allow_any_backing_opens_an_absolute_backing_path() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let base = elsewhere.path().join("base.raw");
    write_random(&base, 0, 4096, 3);
    let image = crafted(dir.path(), s(&base), "raw");

    let refused = hub().args(["image", "info"]).arg(&image).output().unwrap();
    let allowed = hub()
        .args(["image", "info", "--allow-any-backing"])
        .arg(&image)
        .output()
        .unwrap();

    assert!(!refused.status.success());
    assert!(ok(&allowed).contains(s(&base)));
}
