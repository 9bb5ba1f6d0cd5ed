//! The object tier end to end (issue #18), against a real distributed S3 store: three Garage
//! nodes on loopback with replication 3 ([`garage`]), never a mock. The real `sendense-client`
//! backs a raw disk up into a real `sendense-hub serve`; the hub copies points to the bucket
//! (encrypted, resumable, verified), evicts them, restores, instantly recovers and browses
//! them from the bucket (by range, through the hub's cache) or fetches them back, and a new
//! hub rebuilds its catalog from the bucket alone. Every restored point is compared with the
//! source by `qemu-img compare`.

mod garage;
mod lock;
mod retention;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Serve, assert_same, files_under, hub, ok, s, serve_wrapper, write_random};
use garage::Garage;

const MIB: u64 = 1 << 20;
const VM: &str = "tier01";
const TARGET: &str = "offsite";
/// A string written into the disks: it must never appear in the store's files.
const MARKER: &[u8] = b"SENDENSE-PLAINTEXT-MARKER-5f1c2a9e";
/// How long a copy, fetch or import may take.
const DEADLINE: Duration = Duration::from_secs(300);

serve_wrapper!(
    /// A running `sendense-hub serve` (see [`Serve`]) logging the object tier's parts.
    Hub
);

impl Hub {
    fn start(data: &Path) -> Self {
        Self(Serve::start(data, &[], "info,sendense_hub::tier=debug"))
    }

    /// A REST call: status and JSON answer.
    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, text) = self.raw(method, path, body);
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    /// A REST call that must succeed (2xx); its answer.
    fn ok_call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let shown = method.to_string();
        let (status, value) = self.call(method, path, body);
        assert!(
            (200..300).contains(&status),
            "{shown} {path}: {status} {value}"
        );
        value
    }

    /// `sendense-client backup` that must succeed; the new backup's id.
    fn backup(&self, disk: &Path, extra: &[&str]) -> String {
        let out = self
            .client_to("backup")
            .args(["--vm", VM, "--json"])
            .arg("--disk")
            .arg(format!("2000={}", s(disk)))
            .args(extra)
            .output()
            .unwrap();
        let summary: Value = serde_json::from_str(&ok(&out)).unwrap();
        assert_eq!(summary["status"], "completed", "{summary}");
        summary["backup_id"].as_str().unwrap().to_owned()
    }

    /// `sendense-client backup` of an incremental on `base` with the changed-areas file
    /// `areas`; the new backup's id.
    fn incremental(&self, disk: &Path, base: &str, areas: &Path) -> String {
        self.backup(
            disk,
            &[
                "--type",
                "incremental",
                "--base-backup",
                base,
                "--changed-areas",
                &format!("2000={}", s(areas)),
            ],
        )
    }

    /// Stores the cluster as target [`TARGET`], reached through node `node`.
    fn add_target(&self, garage: &Garage, node: usize) {
        self.ok_call(
            reqwest::Method::POST,
            "/api/v1/targets",
            Some(garage.target_body(TARGET, node)),
        );
    }

    /// Queues a copy of `id` to [`TARGET`]; the job id.
    fn queue_copy(&self, id: &str) -> String {
        let queued = self.ok_call(
            reqwest::Method::POST,
            &format!("/api/v1/backups/{id}/copy"),
            Some(json!({ "target": TARGET })),
        );
        queued["job_id"].as_str().unwrap().to_owned()
    }

    /// Waits (bounded) until job `id` has ended; its answer.
    fn wait_job(&self, id: &str) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let job = self.ok_call(reqwest::Method::GET, &format!("/api/v1/jobs/{id}"), None);
            if job["status"] != "queued" && job["status"] != "running" {
                return job;
            }
            assert!(Instant::now() < deadline, "job not ended in time: {job}");
            // Waits on the hub's log: a new line (or 200 ms without one) is the next look.
            let _ = self.log.recv_timeout(Duration::from_millis(200));
        }
    }

    /// Copies `id` to [`TARGET`] and waits for the job, which must complete.
    fn copy(&self, id: &str) {
        let job = self.queue_copy(id);
        let done = self.wait_job(&job);
        assert_eq!(done["status"], "completed", "{done}\n{}", self.all_lines());
    }

    /// The copies `GET /api/v1/backups/{id}` answers.
    fn copies(&self, id: &str) -> Value {
        self.ok_call(reqwest::Method::GET, &format!("/api/v1/backups/{id}"), None)["copies"].clone()
    }

    /// `sendense-client restore` of disk 2000 of point `id` (or, with `--from-instant`, of
    /// an instant recovery) into the raw file `to`, which must succeed.
    fn restore(&self, source: &[&str], to: &Path) {
        let out = self
            .client_to("restore")
            .args(source)
            .args(["--disk", "2000", "--to", s(to), "--format", "raw", "--json"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        ok(&out);
    }

    /// Waits until the hub logs that a part of a copy landed in the bucket.
    fn wait_part_uploaded(&self) {
        crate::support::wait_message(&self.log, "copy part uploaded");
    }
}

/// Fills `disk` (`size` bytes) with pseudo-random data and the marker at a few places.
fn make_disk(disk: &Path, size: u64, seed: u64) {
    std::fs::File::create(disk).unwrap().set_len(size).unwrap();
    write_random(disk, 0, usize::try_from(size).unwrap(), seed);
    mark(disk, &[MIB, size / 2, size - 64 * 1024]);
}

fn mark(disk: &Path, offsets: &[u64]) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().write(true).open(disk).unwrap();
    for &at in offsets {
        file.write_all_at(&MARKER.repeat(100), at).unwrap();
    }
}

/// Changes areas of `disk` (random data and the marker) and writes the changed-areas file of
/// them (VMware's shape); answers its path.
fn change(disk: &Path, areas: &[(u64, u64)], seed: u64) -> PathBuf {
    for (i, &(start, len)) in areas.iter().enumerate() {
        write_random(disk, start, usize::try_from(len).unwrap(), seed + i as u64);
        mark(disk, &[start]);
    }
    let size = std::fs::metadata(disk).unwrap().len();
    let changed: Vec<Value> = areas
        .iter()
        .map(|&(start, length)| json!({"start": start, "length": length}))
        .collect();
    let file = disk.with_extension(format!("areas{seed}.json"));
    std::fs::write(
        &file,
        json!({"startOffset": 0, "length": size, "changedArea": changed}).to_string(),
    )
    .unwrap();
    file
}

/// A copy of `disk` as it is now (the source of one point).
fn snapshot(disk: &Path, name: &str) -> PathBuf {
    let copy = disk.with_file_name(name);
    std::fs::copy(disk, &copy).unwrap();
    copy
}

/// Whether any file under `dirs` holds `needle`.
fn any_file_holds(dirs: &[PathBuf], needle: &[u8]) -> bool {
    dirs.iter().flat_map(|d| files_under(d)).any(|f| {
        std::fs::read(&f).is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
    })
}

/// `sendense-hub ctl --data-dir DATA ARGS` that must succeed.
fn ctl(data: &Path, args: &[&str]) -> String {
    ok(&hub()
        .args(["ctl", "--data-dir", s(data)])
        .args(args)
        .output()
        .unwrap())
}

#[test]
fn object_chain_copied_then_new_hub_imports_and_restores_every_point_from_the_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let garage = Garage::start(&dir.path().join("garage"));
    let data_a = dir.path().join("hub-a");
    let hub_a = Hub::start(&data_a);
    let disk = dir.path().join("disk.raw");
    make_disk(&disk, 24 * MIB, 1);
    let mut points = vec![(
        hub_a.backup(&disk, &["--type", "full"]),
        snapshot(&disk, "p0"),
    )];
    for step in 1..=2u64 {
        let areas = change(
            &disk,
            &[
                (step * 3 * MIB, 512 * 1024),
                (20 * MIB + step * 64 * 1024, 64 * 1024),
            ],
            10 * step,
        );
        let id = hub_a.incremental(&disk, &points.last().unwrap().0, &areas);
        points.push((id, snapshot(&disk, &format!("p{step}"))));
    }
    hub_a.add_target(&garage, 0);
    let listed = hub_a.ok_call(reqwest::Method::GET, "/api/v1/targets", None);
    assert_eq!(listed["targets"][0]["name"], TARGET, "{listed}");
    assert!(!listed.to_string().contains(garage::SECRET_KEY), "{listed}");

    for (id, _) in &points {
        hub_a.copy(id);
        let copies = hub_a.copies(id);
        assert_eq!(copies[0]["target"], TARGET, "{copies}");
        assert_eq!(copies[0]["state"], "verified", "{copies}");
    }
    // The marker is in the hub's images (so the search below can find it) and nowhere in the
    // store's files (objects are sealed before upload; the nodes do not compress).
    assert!(any_file_holds(&[data_a.join("repository")], MARKER));
    assert!(!any_file_holds(&garage.data_dirs(), MARKER));

    let key = dir.path().join("tier-key.txt");
    ctl(&data_a, &["target", "export-key", "--out", s(&key)]);
    drop(hub_a);

    let data_b = dir.path().join("hub-b");
    // A first start creates the new hub's data folder; the key goes in before targets.
    let hub_b = Hub::start(&data_b);
    ctl(&data_b, &["target", "import-key", "--key-file", s(&key)]);
    hub_b.add_target(&garage, 1);
    let imported: Value = serde_json::from_str(&ctl(
        &data_b,
        &["--hub", &hub_b.api, "--json", "target", "import", TARGET],
    ))
    .unwrap();
    assert_eq!(
        imported["imported"].as_array().unwrap().len(),
        3,
        "{imported}"
    );
    for (id, source) in &points {
        let backup = hub_b.ok_call(reqwest::Method::GET, &format!("/api/v1/backups/{id}"), None);
        assert_eq!(backup["evicted"], true, "{backup}");
        // The restore reads the point and its parents from the bucket, by range through the
        // cache: nothing comes back into the repository.
        let restored = dir.path().join(format!("restored-{id}.raw"));
        hub_b.restore(&["--backup", id], &restored);
        assert_same(&restored, "raw", source, "raw");
        assert!(!hub_b.image(VM, 2000, id).exists());
    }
    assert!(
        hub_b.count("layer read from the bucket") >= 3,
        "{}",
        hub_b.all_lines()
    );

    // Instant recovery of the newest point, whose whole chain lives only in the bucket: the
    // scratch overlay reads through to it.
    let (newest, source) = points.last().unwrap();
    let started = hub_b.ok_call(
        reqwest::Method::POST,
        &format!("/api/v1/backups/{newest}/instant"),
        None,
    );
    let instant = started["instant_id"].as_str().unwrap().to_owned();
    // A restarted hub opens the instant recovery again over the bucket's layers.
    drop(hub_b);
    let hub_b = Hub::start(&data_b);
    let recovered = dir.path().join("instant.raw");
    hub_b.restore(&["--from-instant", &instant], &recovered);
    assert_same(&recovered, "raw", source, "raw");
    hub_b.ok_call(
        reqwest::Method::DELETE,
        &format!("/api/v1/instant/{instant}"),
        None,
    );
    let repository = files_under(&dir.path().join("hub-b").join("repository"));
    assert!(
        !repository
            .iter()
            .any(|f| f.extension().is_some_and(|e| e == "qcow2")),
        "{repository:?}"
    );
}

#[test]
fn object_hub_killed_mid_copy_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let garage = Garage::start(&dir.path().join("garage"));
    let data = dir.path().join("hub");
    let mut first = Hub::start(&data);
    let disk = dir.path().join("disk.raw");
    make_disk(&disk, 128 * MIB, 2);
    let id = first.backup(&disk, &["--type", "full"]);
    first.add_target(&garage, 0);
    let job = first.queue_copy(&id);
    first.wait_part_uploaded();
    first.proc.kill();
    drop(first);

    let hub = Hub::start(&data);
    let done = hub.wait_job(&job);
    assert_eq!(done["status"], "completed", "{done}\n{}", hub.all_lines());
    assert_eq!(
        hub.count("resuming an interrupted upload"),
        1,
        "{}",
        hub.all_lines()
    );
    assert_eq!(hub.copies(&id)[0]["state"], "verified");
    // The resumed object restores exactly: evict the point, restore it from the bucket.
    hub.ok_call(
        reqwest::Method::POST,
        &format!("/api/v1/backups/{id}/evict"),
        None,
    );
    assert!(!hub.image(VM, 2000, &id).exists());
    let restored = dir.path().join("restored.raw");
    hub.restore(&["--backup", &id], &restored);
    assert_same(&restored, "raw", &disk, "raw");
}

#[test]
fn object_store_node_killed_mid_copy_copy_completes_and_restores() {
    let dir = tempfile::tempdir().unwrap();
    let mut garage = Garage::start(&dir.path().join("garage"));
    let hub = Hub::start(&dir.path().join("hub"));
    let disk = dir.path().join("disk.raw");
    make_disk(&disk, 96 * MIB, 3);
    let id = hub.backup(&disk, &["--type", "full"]);
    hub.add_target(&garage, 0);
    let job = hub.queue_copy(&id);
    hub.wait_part_uploaded();
    garage.kill(2);
    let done = hub.wait_job(&job);
    assert_eq!(done["status"], "completed", "{done}\n{}", hub.all_lines());
    hub.ok_call(
        reqwest::Method::POST,
        &format!("/api/v1/backups/{id}/evict"),
        None,
    );
    let fetched = hub.ok_call(
        reqwest::Method::POST,
        &format!("/api/v1/backups/{id}/fetch"),
        None,
    );
    assert_eq!(fetched["fetched"][0], id.as_str(), "{fetched}");
    assert_same(&hub.image(VM, 2000, &id), "qcow2", &disk, "raw");
}

#[test]
fn object_evict_without_verified_copy_is_refused_and_keeps_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(&dir.path().join("hub"));
    let disk = dir.path().join("disk.raw");
    make_disk(&disk, 4 * MIB, 4);
    let id = hub.backup(&disk, &["--type", "full"]);

    let (status, answer) = hub.call(
        reqwest::Method::POST,
        &format!("/api/v1/backups/{id}/evict"),
        None,
    );

    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("no verified copy"),
        "{answer}"
    );
    assert!(hub.image(VM, 2000, &id).exists());
}

#[test]
fn object_bucket_only_point_is_browsed_and_its_files_read_by_range() {
    let dir = tempfile::tempdir().unwrap();
    let garage = Garage::start(&dir.path().join("garage"));
    let hub = Hub::start(&dir.path().join("hub"));
    // An ext4 file system (the whole disk, no partition table) made by mkfs.ext4 from a tree.
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/hostname"), "bucket-only\n").unwrap();
    let blob: String = (0..40_000u32)
        .map(|i| format!("{i:08x} {}\n", i.wrapping_mul(2_654_435_761)))
        .collect();
    std::fs::write(tree.join("blob.txt"), &blob).unwrap();
    let disk = dir.path().join("disk.raw");
    let mkfs = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d", s(&tree), s(&disk), "32M"])
        .output()
        .expect("mkfs.ext4 (e2fsprogs; scripts/test.sh installs it)");
    assert!(mkfs.status.success(), "{mkfs:?}");
    let id = hub.backup(&disk, &["--type", "full"]);
    hub.add_target(&garage, 0);
    hub.copy(&id);
    hub.ok_call(
        reqwest::Method::POST,
        &format!("/api/v1/backups/{id}/evict"),
        None,
    );

    let base = format!("/api/v1/backups/{id}/disks/2000");
    let table = hub.ok_call(reqwest::Method::GET, &format!("{base}/partitions"), None);
    assert_eq!(table["partitions"][0]["index"], 0, "{table}");
    let listing = hub.ok_call(
        reqwest::Method::GET,
        &format!("{base}/files?partition=0&path=/etc"),
        None,
    );
    assert_eq!(listing["entries"][0]["name"], "hostname", "{listing}");
    let (status, hostname) = hub.raw(
        reqwest::Method::GET,
        &format!("{base}/files/content?partition=0&path=/etc/hostname"),
        None,
    );
    assert_eq!((status, hostname.as_str()), (200, "bucket-only\n"));
    let (status, got) = hub.raw(
        reqwest::Method::GET,
        &format!("{base}/files/content?partition=0&path=/blob.txt"),
        None,
    );
    assert_eq!(status, 200);
    assert!(
        got == blob,
        "blob.txt read back differs ({} bytes)",
        got.len()
    );
    // Read in place: the point stays evicted, its file absent from the repository.
    assert!(!hub.image(VM, 2000, &id).exists());
    let backup = hub.ok_call(reqwest::Method::GET, &format!("/api/v1/backups/{id}"), None);
    assert_eq!(backup["evicted"], true, "{backup}");
}
