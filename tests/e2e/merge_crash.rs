//! A hub killed with SIGKILL at random instants of merges (issue #14): the real
//! `sendense-hub serve` runs a prune job (`POST /api/v1/vms/{name}/prune`) whose removals
//! merge layers; it is killed at a random instant after a merge step starts, at least ten times
//! with the kill landing inside a step (proved by the restarted hub rolling the step forward
//! from its journal before it serves); after the last restart every remaining point
//! `qemu-img compare`s equal to the content it had when it was taken and `qemu-img check`s
//! clean, and the digests carried describe it.
//!
//! The chain is written straight into the catalog and repository while the hub is stopped
//! (the images and digests files exactly as a backup leaves them), so the test needs no agent
//! and stays small: a 16 MiB disk, 2 MiB changed per point.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sendense_catalog::{BackupRecord, Catalog, DiskCompletion};
use sendense_digest::{BLOCK_SIZE, BlockDigest, LayerDigests, PointDigests};
use sendense_qcow2::{BackingPolicy, BackingSpec, CreateOptions, Image, OpenOptions};
use sendense_types::{
    BackupId, BackupQuery, BackupStatus, DiskKey, DiskSpec, RegisterVmRequest, Timestamp, VmName,
    digest_path,
};

use crate::support::{Serve, ok, qemu_img, s};

const DISK: DiskKey = DiskKey(2000);
const SIZE: u64 = 16 << 20;
const BLOCKS: u64 = SIZE / BLOCK_SIZE;
/// Kills that must land inside a merge step.
const LANDED: usize = 10;
/// Kills tried at most.
const ATTEMPTS: usize = 60;
const ROLLED: &str = "merge step interrupted by a crash: rolled forward";
const FORGOTTEN: &str = "merge step interrupted before touching a file: forgotten";

/// xorshift: deterministic per seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// The repository seen offline (hub stopped).
struct Offline {
    data: PathBuf,
    vm: VmName,
    /// Raw content of every point not yet removed, as taken.
    expected: HashMap<BackupId, PathBuf>,
    /// Creation time of the next point (one a day, in the past).
    next_day: i64,
    rng: Rng,
}

impl Offline {
    fn repository(&self) -> PathBuf {
        self.data.join("repository")
    }

    /// Appends `n` points (a full first when the VM has none) to the VM's chain.
    fn add_points(&mut self, n: usize) {
        let catalog = Catalog::open_in(&self.data).unwrap();
        let spec = RegisterVmRequest::new(
            self.vm.clone(),
            vec![DiskSpec {
                key: DISK,
                capacity_bytes: SIZE,
            }],
        )
        .unwrap();
        let vm = catalog.upsert_vm(&spec, Timestamp::now()).unwrap();
        for _ in 0..n {
            let parent = catalog.latest_completed(&self.vm).unwrap();
            let at = Timestamp::from_unix_seconds(self.next_day).unwrap();
            self.next_day += 86_400;
            let record = BackupRecord::new(
                BackupId::new(&vm.name, at),
                &vm,
                parent.as_ref(),
                BackupStatus::Running,
                at,
            );
            catalog.create_backup(&record).unwrap();
            let id = record.backup_id.clone();
            let path = self.repository().join(&record.disks[0].file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let mut opts = CreateOptions::new(SIZE).backing_policy(BackingPolicy::repository());
            if let Some(p) = &parent {
                let name = Path::new(&p.disks[0].file).file_name().unwrap();
                opts.backing = Some(BackingSpec::qcow2(name.to_string_lossy().into_owned()));
            }
            let image = Image::create(&path, &opts).unwrap();
            let mut digests = LayerDigests::new(SIZE);
            // A full writes three quarters of the disk; an incremental 2 MiB in 32 scattered
            // blocks and zeroes 8 more.
            let (data_blocks, zero_blocks): (Vec<u64>, Vec<u64>) = if parent.is_none() {
                ((0..BLOCKS).filter(|b| b % 4 != 3).collect(), Vec::new())
            } else {
                let pick = |rng: &mut Rng, n: usize| -> Vec<u64> {
                    let mut v: Vec<u64> = (0..n).map(|_| rng.next() % BLOCKS).collect();
                    v.sort_unstable();
                    v.dedup();
                    v
                };
                let data = pick(&mut self.rng, 32);
                let zeros: Vec<u64> = pick(&mut self.rng, 8)
                    .into_iter()
                    .filter(|b| !data.contains(b))
                    .collect();
                (data, zeros)
            };
            for block in data_blocks {
                let bytes = self.rng.bytes(BLOCK_SIZE as usize);
                image.write_at(&bytes, block * BLOCK_SIZE).unwrap();
                digests.record(block * BLOCK_SIZE, &bytes).unwrap();
            }
            for block in zero_blocks {
                image.write_zeroes(block * BLOCK_SIZE, BLOCK_SIZE).unwrap();
                digests.record_zero(block * BLOCK_SIZE, BLOCK_SIZE).unwrap();
            }
            image.flush().unwrap();
            drop(image);
            std::fs::write(
                self.repository().join(digest_path(&self.vm, DISK, &id)),
                digests.encode(),
            )
            .unwrap();
            let done = [DiskCompletion {
                disk_key: DISK,
                change_id: Some(format!("52 3c 7e/{}", self.next_day).parse().unwrap()),
                bytes_written: 0,
                digests: true,
            }];
            catalog
                .complete_backup(&id, &done, Timestamp::now())
                .unwrap();
            catalog.set_disk_digests(&id, DISK, true).unwrap();
            let raw = self.data.join(format!("expected-{id}.raw"));
            ok(&qemu_img(&["convert", "-O", "raw", s(&path), s(&raw)]));
            self.expected.insert(id, raw);
        }
    }

    /// Every remaining point is exact, checks clean, and its chain's digests describe it;
    /// nothing is left journalled. Forgets the expectations of removed points.
    fn assert_exact(&mut self) -> usize {
        let catalog = Catalog::open_in(&self.data).unwrap();
        assert!(catalog.merges().unwrap().is_empty(), "a merge step is left");
        let all = catalog
            .backups(&BackupQuery {
                vm_name: Some(self.vm.clone()),
                ..BackupQuery::default()
            })
            .unwrap();
        let by_id: HashMap<&BackupId, &BackupRecord> =
            all.iter().map(|r| (&r.backup_id, r)).collect();
        for record in &all {
            assert_eq!(record.status, BackupStatus::Completed);
            let path = self.repository().join(&record.disks[0].file);
            let out = qemu_img(&["check", "-f", "qcow2", s(&path)]);
            assert!(
                out.status.success(),
                "qemu-img check {}: {}{}",
                path.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let expected = &self.expected[&record.backup_id];
            let out = qemu_img(&["compare", "-F", "raw", s(&path), s(expected)]);
            assert!(
                out.status.success(),
                "{} no longer reads as it did: {}{}",
                record.backup_id,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let mut chain = vec![record];
            while let Some(p) = &chain.last().unwrap().parent_backup_id {
                chain.push(by_id[p]);
            }
            chain.reverse();
            let layers: Vec<LayerDigests> = chain
                .iter()
                .map(|r| {
                    assert!(r.disks[0].digests, "{} lost its digests", r.backup_id);
                    let file = self
                        .repository()
                        .join(digest_path(&self.vm, DISK, &r.backup_id));
                    LayerDigests::decode(&std::fs::read(file).unwrap()).unwrap()
                })
                .collect();
            let point = PointDigests::new(&layers);
            let content = std::fs::read(expected).unwrap();
            for block in 0..BLOCKS {
                let at = (block * BLOCK_SIZE) as usize;
                assert_eq!(
                    point.expected(block).0,
                    BlockDigest::of(&content[at..at + BLOCK_SIZE as usize]),
                    "{} block {block}: digests carried",
                    record.backup_id
                );
            }
            let info = Image::open(
                &path,
                &OpenOptions::read_only().backing(BackingPolicy::repository()),
            )
            .unwrap()
            .info();
            let parent_file = record
                .parent_backup_id
                .as_ref()
                .map(|p| format!("{p}.qcow2"));
            assert_eq!(info.backing_file, parent_file, "relative backing names");
        }
        let kept: Vec<&BackupId> = all.iter().map(|r| &r.backup_id).collect();
        self.expected.retain(|id, raw| {
            let keep = kept.contains(&id);
            if !keep {
                let _ = std::fs::remove_file(raw);
            }
            keep
        });
        all.len()
    }
}

/// Queues a prune job; answers its id.
fn prune(hub: &Serve, vm: &VmName, retention: &serde_json::Value) -> String {
    let (status, body) = hub.raw(
        reqwest::Method::POST,
        &format!("/api/v1/vms/{vm}/prune"),
        Some(serde_json::json!({ "retention": retention, "dry_run": false })),
    );
    assert_eq!(status, 202, "prune: {body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    answer["job_id"].as_str().unwrap().to_owned()
}

/// Waits (up to a minute) for the next "merge step started" line (true), or for the prune
/// job to have completed (false; a failed job fails the test).
fn next_merge(hub: &Serve, job: &str) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match hub.log.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if crate::support::message(&line) == "merge step started" => return true,
            Ok(_) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(e) => panic!("the hub's log ended ({e}):\n{}", hub.all_lines()),
        }
        let (status, body) = hub.raw(reqwest::Method::GET, &format!("/api/v1/jobs/{job}"), None);
        assert_eq!(status, 200, "{body}");
        let job: serde_json::Value = serde_json::from_str(&body).unwrap();
        match job["status"].as_str().unwrap() {
            "completed" => return false,
            "failed" | "cancelled" => panic!("the prune job ended {job}:\n{}", hub.all_lines()),
            _ => assert!(
                std::time::Instant::now() < deadline,
                "the prune job made no progress in a minute: {job}\n{}",
                hub.all_lines()
            ),
        }
    }
}

#[test]
fn hub_killed_at_random_instants_of_merges_leaves_every_point_exact() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A first start creates the data folder; the chain is then written while it is stopped.
    let mut first = Serve::start(&data, &[], "info");
    first.proc.kill();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("random seed {seed}");
    let mut offline = Offline {
        data: data.clone(),
        vm: "crashvm".parse().unwrap(),
        expected: HashMap::new(),
        next_day: Timestamp::now().unix_seconds() - 400 * 86_400,
        rng: Rng(seed),
    };
    let retentions = [
        serde_json::json!({ "keep_last": 2, "keep_weekly": 2 }),
        serde_json::json!({ "keep_last": 3 }),
        serde_json::json!({ "keep_daily": 2, "keep_monthly": 1 }),
    ];
    let mut landed = 0;
    let mut attempts = 0;
    let mut round = 0;
    while landed < LANDED {
        assert!(
            attempts < ATTEMPTS,
            "only {landed} of {attempts} kills landed inside a merge step"
        );
        offline.add_points(if round == 0 { 12 } else { 9 });
        let mut hub = Serve::start(&data, &[], "info");
        let job = prune(&hub, &offline.vm, &retentions[round % retentions.len()]);
        round += 1;
        // Kill at a random instant after each merge step starts, restart, until the job ends.
        while landed < LANDED && next_merge(&hub, &job) {
            attempts += 1;
            // The kill instant is what the test randomises: 0 to 30 ms into the step.
            let delay = offline.rng.next() % 300_000;
            std::thread::sleep(Duration::from_micros(delay));
            hub.proc.kill();
            drop(hub);
            hub = Serve::start(&data, &[], "info");
            let inside = hub.count(ROLLED) + hub.count(FORGOTTEN);
            assert!(
                inside <= 1,
                "one step at most is interrupted:\n{}",
                hub.all_lines()
            );
            if inside == 1 {
                landed += 1;
                let phase = hub
                    .all_lines()
                    .lines()
                    .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                    .find(|l| {
                        let m = crate::support::message(l);
                        m == ROLLED || m == FORGOTTEN
                    })
                    .map(|l| format!("{} {}", l["fields"]["kind"], l["fields"]["phase"]))
                    .unwrap_or_default();
                eprintln!("kill {attempts} after {delay} us landed in {phase}");
            }
            // The re-queued prune job goes on from where it stopped.
        }
        // Let the job finish, stop the hub, and check everything offline.
        if landed >= LANDED {
            while next_merge(&hub, &job) {}
        }
        hub.proc.signal("TERM");
        hub.proc.0.wait().unwrap();
        drop(hub);
        let left = offline.assert_exact();
        assert!(left >= 2, "the prune keeps points");
    }
    eprintln!("{landed} of {attempts} kills landed inside a merge step");
}
