//! A repository filesystem that fills up mid-backup: the hub's data dir is a
//! small tmpfs, a filler file leaves less room than the next backup needs.
//! The client must exit non-zero naming the problem, the hub must fail that
//! backup, remove its partial image and keep the earlier backup intact, and
//! the same backup must succeed once space is freed. A first full the file system cannot
//! hold is refused before anything is made (507).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{
    Serve, assert_check_clean, assert_same, client, files_under, message, ok, s, serve_wrapper,
    write_random,
};

const MIB: u64 = 1 << 20;

/// How long any wait on a subprocess may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(60);

/// Size of the tmpfs holding the hub's data dir.
const TMPFS_SIZE: &str = "48m";

/// Free space the filler file leaves on the tmpfs.
const LEFT_FREE: u64 = 4 * MIB;

/// A tmpfs mounted on a directory, lazily unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` on `dir` (created); panics if that fails.
    fn mount(dir: &Path, size: &str) -> Self {
        fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                s(dir),
            ])
            .output()
            .unwrap_or_else(|e| panic!("cannot run mount ({e}): this test needs root"));
        assert!(
            out.status.success(),
            "mount -t tmpfs on {} failed ({}): {}; this test needs root \
             (CAP_SYS_ADMIN) to give the hub a small filesystem",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Self(dir.to_owned())
    }

    /// Bytes available (tmpfs reserves none for root).
    fn available(&self) -> u64 {
        let out = Command::new("stat")
            .args(["-f", "--format=%a %S", s(&self.0)])
            .output()
            .unwrap();
        let text = ok(&out);
        let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().unwrap());
        let (blocks, block_size) = (fields.next().unwrap(), fields.next().unwrap());
        blocks * block_size
    }

    /// Waits (bounded by [`DEADLINE`]) until at least `bytes` are available.
    fn wait_available(&self, bytes: u64) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let available = self.available();
            if available >= bytes {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {available} bytes free, want {bytes}: space not released"
            );
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: succeeds even if something still holds a file open. Nothing
        // to do about a failure in a drop but say so.
        match Command::new("umount").arg("-l").arg(&self.0).status() {
            Ok(status) if status.success() => {}
            other => eprintln!("umount -l {}: {other:?}", self.0.display()),
        }
    }
}

serve_wrapper!(
    /// A running `sendense-hub serve` (see [`Serve`]) with this suite's helpers.
    Hub
);

impl Hub {
    /// Starts a hub on `data` and waits (bounded) until it logs `hub ready`.
    fn start(data: &Path, idle_timeout_s: u64) -> Self {
        Self(Serve::start(
            data,
            &["--idle-timeout", &idle_timeout_s.to_string()],
            "info",
        ))
    }

    /// `sendense-client backup` of one disk (key 2000), `--type full`.
    fn backup_full(&self, vm: &str, disk: &Path) -> Output {
        client()
            .args(["backup", "--hub", &self.api])
            .args(["--tls-dir", s(&self.tls_dir())])
            .args(["--token-file", s(&self.token())])
            .args(["--vm", vm, "--type", "full"])
            .arg("--disk")
            .arg(format!("2000={}", s(disk)))
            .args(["--json", "--log-format", "json"])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `GET /api/v1/backups/chain/{vm}` as (backup id, status) per backup.
    fn chain(&self, vm: &str) -> Vec<(String, String)> {
        let name = serde_json::from_value(json!(vm)).unwrap();
        let chain = self.rest(|h| async move { h.chain(&name).await.unwrap() });
        chain
            .backups
            .into_iter()
            .map(|b| (b.backup_id.to_string(), b.status.to_string()))
            .collect()
    }

    /// Polls `GET /api/v1/backups/{id}` until it is no longer `running`
    /// (bounded by [`DEADLINE`]); returns (status, failure reason).
    fn wait_settled(&self, backup_id: &str) -> (String, Option<String>) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let id = serde_json::from_value(json!(backup_id)).unwrap();
            let backup = self.rest(|h| async move { h.backup(&id).await.unwrap() });
            let status = backup.status.to_string();
            if status != "running" || Instant::now() >= deadline {
                return (status, backup.failure_reason);
            }
        }
    }
}

/// A raw file of `size` bytes of random data.
fn random_raw(path: &Path, size: u64, seed: u64) {
    write_random(path, 0, size as usize, seed);
}

/// Writes a file of `len` zero bytes (tmpfs allocates written zeros).
fn filler(path: &Path, len: u64) {
    let mut file = fs::File::create(path).unwrap();
    let chunk = vec![0u8; MIB as usize];
    let mut left = len;
    while left > 0 {
        let n = left.min(MIB);
        file.write_all(&chunk[..n as usize]).unwrap();
        left -= n;
    }
    file.sync_all().unwrap();
}

/// `qemu-img check` clean and `qemu-img compare` identical to the raw `source`.
fn assert_image_matches(image: &Path, source: &Path) {
    assert_check_clean(image);
    assert_same(image, "qcow2", source, "raw");
}

/// The `--json` summary of a backup that must have succeeded.
fn summary(out: &Output) -> Value {
    serde_json::from_str(&ok(out)).unwrap()
}

/// The summary's `backup_id`.
fn id_of(summary: &Value) -> String {
    summary["backup_id"].as_str().unwrap().to_owned()
}

/// The `backup_id` of the client's `backup started` log line.
fn started_id(stderr: &str) -> String {
    stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| message(l) == "backup started")
        .and_then(|l| l["fields"]["backup_id"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no 'backup started' line in:\n{stderr}"))
}

#[test]
fn repository_filesystem_full_fails_backup_cleanly_and_next_backup_works() {
    // Drop order (reverse): hub killed, then tmpfs unmounted, then dir removed.
    let dir = tempfile::tempdir().unwrap();
    let tmpfs = Tmpfs::mount(&dir.path().join("data"), TMPFS_SIZE);
    let hub = Hub::start(&dir.path().join("data/hub"), 2);
    let small = dir.path().join("small.raw");
    random_raw(&small, 16 * MIB, 1);
    // Fits next to `small` on the tmpfs, but not in what the filler leaves. Its first full
    // holds 1 MiB, so the hub estimates its next full from that image and lets it start: the
    // repository then fills up in the middle of the transfer.
    let big = dir.path().join("big.raw");
    fs::File::create(&big).unwrap().set_len(24 * MIB).unwrap();
    write_random(&big, 0, MIB as usize, 3);
    let first = summary(&hub.backup_full("small", &small));
    let first_image = hub.image("small", 2000, &id_of(&first));
    let small_big = summary(&hub.backup_full("big", &big));
    random_raw(&big, 24 * MIB, 2);
    let fill = dir.path().join("data/filler");
    filler(&fill, tmpfs.available().saturating_sub(LEFT_FREE));
    assert!(
        tmpfs.available() <= LEFT_FREE + MIB,
        "filler left too much room"
    );

    // A first full is estimated at its disk's capacity: refused before anything is made.
    let out = hub.backup_full("new", &big);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "backup of 24 MiB into 4 MiB started");
    assert!(
        stderr.contains("507")
            && stderr.contains("insufficient_storage")
            && stderr.contains("prune"),
        "client error does not say the repository lacks space up front:\n{stderr}"
    );
    assert!(hub.chain("new").is_empty());
    assert!(!hub.data.join("repository/new").exists());

    let out = hub.backup_full("big", &big);

    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "backup into a full disk succeeded");
    assert!(
        stderr.contains("repository is full")
            && stderr.contains("ENOSPC")
            && stderr.contains("DATA/repository"),
        "client error does not say the hub's repository is full (ENOSPC):\n{stderr}"
    );
    assert!(
        !stderr.contains("retrying once"),
        "ENOSPC is final, yet the client retried:\n{stderr}"
    );
    let failed_id = started_id(&stderr);
    let (status, reason) = hub.wait_settled(&failed_id);
    assert_eq!(status, "failed", "reason {reason:?}; client:\n{stderr}");
    let reason = reason.unwrap_or_default();
    assert!(reason.contains("ENOSPC"), "hub failure reason: {reason}");
    let parts: Vec<PathBuf> = files_under(&hub.data.join("repository"))
        .into_iter()
        .filter(|p| s(p).ends_with(".part"))
        .collect();
    assert!(parts.is_empty(), "partial images left: {parts:?}");
    assert_image_matches(&first_image, &small);
    assert_eq!(
        hub.chain("small"),
        vec![(id_of(&first), "completed".to_owned())]
    );
    // The partial image's space is given back (no deleted file kept open).
    tmpfs.wait_available(LEFT_FREE - MIB);
    assert_eq!(
        hub.chain("big"),
        vec![(id_of(&small_big), "completed".to_owned())]
    );
    fs::remove_file(&fill).unwrap();
    let again = summary(&hub.backup_full("big", &big));
    assert_eq!(again["status"], "completed");
    assert_image_matches(&hub.image("big", 2000, &id_of(&again)), &big);
}
