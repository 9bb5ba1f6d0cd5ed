//! Helpers shared by the end-to-end tests.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `sendense-hub` binary under test.
pub(crate) fn hub() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sendense-hub"))
}

/// The `sendense-client` binary under test.
pub(crate) fn client() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sendense-client"))
}

/// Folder (inside the hub's data folder) of the client certificate [`client_tls`] issues.
pub(crate) const CLIENT_TLS_DIR: &str = "e2e-client-tls";

/// An NBD client certificate folder (QEMU layout: `ca-cert.pem`, `client-cert.pem`,
/// `client-key.pem`) for the hub whose data folder is `data`, issued once with
/// `sendense-hub cert issue` (the hub must have started once, so its CA exists). The hub
/// requires such a certificate on its NBD port by default (issue #11).
pub(crate) fn client_tls(data: &Path) -> PathBuf {
    let out = data.join(CLIENT_TLS_DIR);
    if !out.join("client-cert.pem").exists() {
        ok(&hub()
            .args([
                "cert",
                "issue",
                "e2e-client",
                "--data-dir",
                s(data),
                "--out",
                s(&out),
            ])
            .output()
            .unwrap());
    }
    out
}

/// [`client_tls`] without a subprocess, for tests that run the hub in-process.
pub(crate) fn client_tls_in_process(data: &Path) -> PathBuf {
    let out = data.join(CLIENT_TLS_DIR);
    if !out.join("client-cert.pem").exists() {
        sendense_hub::tls::issue_client_folder(&data.join("tls"), "e2e-client", &out).unwrap();
    }
    out
}

/// Runs `qemu-img`; panics with a clear message when it is not installed.
pub(crate) fn qemu_img(args: &[&str]) -> Output {
    Command::new("qemu-img")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("qemu-img is required ({e}); install qemu-utils (scripts/test.sh does)")
        })
}

/// Asserts a command exited 0 and returns its stdout.
pub(crate) fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes `len` deterministic pseudo-random bytes at `offset` of `path`.
pub(crate) fn write_random(path: &Path, offset: u64, len: usize, seed: u64) {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(path)
        .unwrap();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut buf = vec![0u8; len];
    for chunk in buf.chunks_mut(8) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
    file.write_all_at(&buf, offset).unwrap();
}

/// The path as `&str` (temp paths are UTF-8).
pub(crate) fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Reads a child's stderr on a thread, one JSON value per line (a line that is not JSON as a
/// string), until EOF; the receiver may be dropped, the thread keeps draining so the child never
/// blocks on a full pipe.
pub(crate) fn log_lines(
    stderr: impl std::io::Read + Send + 'static,
) -> std::sync::mpsc::Receiver<serde_json::Value> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let value = serde_json::from_str(&line).unwrap_or(serde_json::Value::String(line));
            let _ = tx.send(value);
        }
    });
    rx
}

/// How long [`wait_log`] waits for a log line before the test fails.
pub(crate) const LOG_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// Waits (blocking, bounded by [`LOG_DEADLINE`]) for a log line matching `want`; fails the test
/// naming `what` and every line seen otherwise.
pub(crate) fn wait_log(
    log: &std::sync::mpsc::Receiver<serde_json::Value>,
    what: &str,
    want: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + LOG_DEADLINE;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match log.recv_timeout(left) {
            Ok(line) if want(&line) => return line,
            Ok(line) => seen.push(line.to_string()),
            Err(e) => panic!("no log line {what} ({e}); saw:\n{}", seen.join("\n")),
        }
    }
}

/// [`wait_log`] for a line whose message is `message`.
pub(crate) fn wait_message(
    log: &std::sync::mpsc::Receiver<serde_json::Value>,
    message: &str,
) -> serde_json::Value {
    wait_log(log, &format!("{message:?}"), |line| {
        line["fields"]["message"] == message
    })
}
