//! A policy's object-tier fields end to end: `copy_to` and `keep_local_last` on a real agent
//! backing up its own NBD source ([`crate::agent_nbd::KvmWorld`]: `qemu-nbd`, QEMU dirty
//! bitmaps) into a real hub that copies to three Garage nodes; then verification of points
//! that live only in the bucket, a prune over them (chain merges fed from the bucket, merged
//! points copied again, removed points' objects deleted), and a corrupted object found by a
//! verification. Every restored point is compared with its source by `qemu-img compare`.

use std::path::{Path, PathBuf};

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};
use reqwest::Method;
use sendense_types::BackupId;
use serde_json::{Value, json};

use super::{Hub, TARGET, garage, snapshot};
use crate::agent_nbd::{AGENT, KvmWorld, qemu_io};
use crate::support::{assert_same, s};

const VM: &str = "kvm01";

impl Hub {
    /// Runs policy `kvm` and waits for its backup job, then for the copy job of the new point:
    /// both must complete. Answers the new point.
    fn run_and_copy(&self) -> String {
        let run = self.ok_call(Method::POST, "/api/v1/policies/kvm/run", None);
        let job = self.wait_job(run["job_ids"][0].as_str().unwrap());
        assert_eq!(job["status"], "completed", "{job}\n{}", self.all_lines());
        let id = job["backup_id"].as_str().unwrap().to_owned();
        let copy = self.wait_for(|| {
            let jobs = self.ok_call(
                Method::GET,
                &format!("/api/v1/jobs?vm_name={VM}&kind=copy"),
                None,
            );
            jobs["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .find(|j| j["backup_id"] == id.as_str())
                .map(|j| j["job_id"].as_str().unwrap().to_owned())
        });
        let done = self.wait_job(&copy);
        assert_eq!(done["status"], "completed", "{done}\n{}", self.all_lines());
        id
    }

    /// Waits (bounded, on the hub's log) until `f` answers something.
    fn wait_for<T>(&self, f: impl Fn() -> Option<T>) -> T {
        let deadline = std::time::Instant::now() + super::DEADLINE;
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(std::time::Instant::now() < deadline, "not in time");
            let _ = self.log.recv_timeout(std::time::Duration::from_millis(200));
        }
    }

    fn get_backup(&self, id: &str) -> Value {
        self.ok_call(Method::GET, &format!("/api/v1/backups/{id}"), None)
    }

    /// Queues a verification of `id` and waits for it; the job's answer.
    fn verify(&self, id: &str) -> Value {
        let queued = self.ok_call(Method::POST, &format!("/api/v1/backups/{id}/verify"), None);
        self.wait_job(queued["job_id"].as_str().unwrap())
    }

    /// Opens the restore exports of `id` (fetching it back from the bucket when evicted),
    /// compares its disk with `source`, closes them.
    fn assert_restores(&self, id: &str, source: &Path, source_fmt: &str) {
        // Read through the hub's exports like any restore (an evicted point from the bucket).
        let restored = source.with_file_name(format!("restored-{id}.raw"));
        self.restore(&["--backup", id], &restored);
        assert_same(&restored, "raw", source, source_fmt);
        std::fs::remove_file(&restored).unwrap();
    }

    /// A prune keeping the `keep` newest points that must remove `removed` (newest first)
    /// and complete; its result.
    fn prune_keep_last(&self, keep: u32, removed: &[&str]) -> String {
        let vm = vm_of(removed[0]);
        let answer = self.ok_call(
            Method::POST,
            &format!("/api/v1/vms/{vm}/prune"),
            Some(json!({"retention": {"keep_last": keep}, "dry_run": false})),
        );
        assert_eq!(answer["remove"], json!(removed), "{answer}");
        let pruned = self.wait_job(answer["job_id"].as_str().unwrap());
        assert_eq!(
            pruned["status"],
            "completed",
            "{pruned}\n{}",
            self.all_lines()
        );
        pruned["result"].as_str().unwrap().to_owned()
    }

    fn evict(&self, id: &str) {
        self.ok_call(Method::POST, &format!("/api/v1/backups/{id}/evict"), None);
        assert!(!self.image(&vm_of(id), 2000, id).exists());
    }
}

/// The e2e bucket through the `object_store` crate (what the test reads and damages).
fn bucket(garage: &garage::Garage) -> AmazonS3 {
    AmazonS3Builder::new()
        .with_endpoint(garage.endpoint(1))
        .with_bucket_name(garage::BUCKET)
        .with_region(garage::REGION)
        .with_access_key_id(garage::ACCESS_KEY)
        .with_secret_access_key(garage::SECRET_KEY)
        .with_virtual_hosted_style_request(false)
        .with_allow_http(true)
        .build()
        .unwrap()
}

fn block_on<T>(f: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// The VM of a backup id.
fn vm_of(id: &str) -> String {
    id.parse::<BackupId>().unwrap().vm_name().to_string()
}

/// The point folders of `vm` in the bucket (`sendense/<vm>/<backup_id>`), by id.
fn points_in_bucket(store: &AmazonS3, vm: &str) -> Vec<String> {
    let listed =
        block_on(store.list_with_delimiter(Some(&ObjectPath::from(format!("sendense/{vm}")))))
            .unwrap();
    let mut ids: Vec<String> = listed
        .common_prefixes
        .iter()
        .filter_map(|p| p.filename().map(str::to_owned))
        .collect();
    ids.sort();
    ids
}

/// Waits (bounded) until the bucket lists exactly the points `want` of `vm` (a store's
/// listing may trail its deletes for a moment); on timeout, fails with the listing and the
/// hub's log.
fn assert_points_in_bucket(hub: &Hub, store: &AmazonS3, vm: &str, want: &[String]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let got = points_in_bucket(store, vm);
        if got == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the bucket lists {got:?}, expected {want:?}\n{}",
            hub.all_lines()
        );
        // Waits on the hub's log: a new line (or 200 ms without one) is the next look.
        let _ = hub.log.recv_timeout(std::time::Duration::from_millis(200));
    }
}

#[test]
fn object_policy_copy_to_keep_local_last_then_verify_and_prune_points_in_the_bucket() {
    let world = KvmWorld::start();
    let disk = world.make_disk(VM);
    let garage = garage::Garage::start(&world.dir.path().join("garage"));
    let KvmWorld {
        hub,
        agent: _agent,
        log: _agent_log,
        dir: _dir,
    } = world;
    let hub = Hub(hub);
    hub.add_target(&garage, 0);
    hub.ok_call(
        Method::POST,
        "/api/v1/policies",
        Some(json!({
            "name": "kvm", "schedule": "yearly", "agent": AGENT, "vms": [VM],
            "copy_to": TARGET, "keep_local_last": 1
        })),
    );

    // Three runs: a full and two incrementals of the guest's writes. The third is taken while
    // the older points live only in the bucket (its copy-on-write reads them there).
    let mut points: Vec<(String, PathBuf)> = Vec::new();
    for step in 0..3u32 {
        if step > 0 {
            qemu_io(
                &disk,
                &[
                    &format!("write -P 0x{:x} {}M 256k", 0x60 + step, 4 * step),
                    &format!("write -P 0x{:x} 8M 64k", 0x70 + step),
                ],
            );
        }
        let id = hub.run_and_copy();
        points.push((id, snapshot(&disk, &format!("p{step}.qcow2"))));
    }
    let ids: Vec<&str> = points.iter().map(|(id, _)| id.as_str()).collect();
    let types: Vec<Value> = ids
        .iter()
        .map(|id| hub.get_backup(id)["backup_type"].clone())
        .collect();
    assert_eq!(
        types,
        [json!("full"), json!("incremental"), json!("incremental")]
    );

    // Every point has a verified copy; all but the newest live only in the bucket.
    for (i, id) in ids.iter().enumerate() {
        let backup = hub.get_backup(id);
        assert_eq!(backup["copies"][0]["state"], "verified", "{backup}");
        let newest = i == ids.len() - 1;
        assert_eq!(backup["evicted"], !newest, "{backup}");
        assert_eq!(hub.image(VM, 2000, id).exists(), newest, "{id}");
    }
    let store = bucket(&garage);
    let in_bucket = |of: &[&str]| {
        let mut v: Vec<String> = of.iter().map(|s| (*s).to_owned()).collect();
        v.sort();
        v
    };
    assert_points_in_bucket(&hub, &store, VM, &in_bucket(&ids));

    // A verification of a point that lives only in the bucket reads its copy back.
    let verified = hub.verify(ids[0]);
    assert_eq!(
        verified["status"],
        "completed",
        "{verified}\n{}",
        hub.all_lines()
    );
    let backup = hub.get_backup(ids[0]);
    assert_eq!(backup["verification"]["state"], "ok", "{backup}");
    assert_eq!(
        backup["evicted"], true,
        "verifying does not fetch: {backup}"
    );

    // Every point restores as its source was (the evicted ones read from the bucket, and
    // left there).
    for (id, source) in &points {
        hub.assert_restores(id, source, "qcow2");
    }
    for id in &ids[..2] {
        assert!(!hub.image(VM, 2000, id).exists(), "{id}");
    }

    // Keeping two points removes the evicted full: it and its child are fetched back for the
    // merge, the child (now a full) is copied again and evicted again, and the removed
    // point's objects leave the bucket.
    let result = hub.prune_keep_last(2, &[ids[0]]);
    for said in [
        format!("copied again: {} to {TARGET}", ids[1]),
        format!("evicted again: {}", ids[1]),
        format!("deleted: {} from {TARGET}", ids[0]),
    ] {
        assert!(result.contains(&said), "{said} in {result}");
    }
    let merged = hub.get_backup(ids[1]);
    assert_eq!(
        (
            &merged["backup_type"],
            &merged["evicted"],
            &merged["copies"][0]["state"]
        ),
        (&json!("full"), &json!(true), &json!("verified")),
        "{merged}"
    );
    assert_points_in_bucket(&hub, &store, VM, &in_bucket(&ids[1..]));
    // The merged point restores from the bucket alone.
    hub.assert_restores(ids[1], &points[1].1, "qcow2");

    // Keeping one removes it: the newest point, which reads through it, takes in its data
    // (fed from the bucket) and is copied again; the removed point's objects leave the bucket.
    let result = hub.prune_keep_last(1, &[ids[1]]);
    for said in [
        format!("copied again: {} to {TARGET}", ids[2]),
        format!("deleted: {} from {TARGET}", ids[1]),
    ] {
        assert!(result.contains(&said), "{said} in {result}");
    }
    assert_points_in_bucket(&hub, &store, VM, &in_bucket(&ids[2..]));
    hub.assert_restores(ids[2], &points[2].1, "qcow2");

    // The kept point, evicted, verifies from the bucket; one flipped byte in the middle of
    // its image object fails the verification naming it, and the copy is no longer trusted.
    hub.evict(ids[2]);
    let verified = hub.verify(ids[2]);
    assert_eq!(verified["status"], "completed", "{verified}");
    let object = ObjectPath::from(format!("sendense/{VM}/{}/disk-2000.qcow2.sealed", ids[2]));
    let mut bytes =
        block_on(async { store.get(&object).await.unwrap().bytes().await.unwrap() }).to_vec();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    block_on(store.put(&object, PutPayload::from(bytes))).unwrap();
    let failed = hub.verify(ids[2]);
    assert_eq!(failed["status"], "failed", "{failed}");
    let backup = hub.get_backup(ids[2]);
    assert_eq!(backup["verification"]["state"], "failed", "{backup}");
    let message = backup["verification"]["message"].as_str().unwrap();
    assert!(message.contains("disk-2000.qcow2.sealed"), "{message}");
    assert_eq!(backup["copies"][0]["state"], "failed", "{backup}");
}

#[test]
fn object_prune_absorbs_an_evicted_middle_point_from_the_bucket_and_a_new_hub_rebuilds_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let garage = garage::Garage::start(&dir.path().join("garage"));
    let data = dir.path().join("hub-a");
    let hub = Hub::start(&data);
    let disk = dir.path().join("disk.raw");
    super::make_disk(&disk, 8 * super::MIB, 5);
    let mut points = vec![(
        hub.backup(&disk, &["--type", "full"]),
        snapshot(&disk, "q0"),
    )];
    for step in 1..=2u64 {
        let areas = super::change(&disk, &[(step * super::MIB, 256 * 1024)], 20 * step);
        let id = hub.incremental(&disk, &points.last().unwrap().0, &areas);
        points.push((id, snapshot(&disk, &format!("q{step}"))));
    }
    let ids: Vec<&str> = points.iter().map(|(id, _)| id.as_str()).collect();
    hub.add_target(&garage, 0);
    for id in &ids {
        hub.copy(id);
        hub.evict(id);
    }
    let vm = vm_of(ids[0]);

    // The full is protected: keeping the newest removes only the middle point, whose layer
    // the newest absorbs (all three fetched back), re-pointed at the full.
    hub.ok_call(
        Method::PUT,
        &format!("/api/v1/backups/{}", ids[0]),
        Some(json!({"protected": true})),
    );
    let result = hub.prune_keep_last(1, &[ids[1]]);
    for said in [
        format!("copied again: {} to {TARGET}", ids[2]),
        format!("evicted again: {}, {}", ids[0], ids[2]),
        format!("deleted: {} from {TARGET}", ids[1]),
    ] {
        assert!(result.contains(&said), "{said} in {result}");
    }
    let head = hub.get_backup(ids[2]);
    assert_eq!(
        (&head["parent_backup_id"], &head["evicted"]),
        (&json!(ids[0]), &json!(true)),
        "{head}"
    );
    let store = bucket(&garage);
    let mut left = vec![ids[0].to_owned(), ids[2].to_owned()];
    left.sort();
    assert_points_in_bucket(&hub, &store, &vm, &left);
    for i in [2, 0] {
        hub.assert_restores(ids[i], &points[i].1, "raw");
    }

    // The bucket alone still describes the chain: a new hub imports both points and restores
    // the newest through the full.
    let key = dir.path().join("tier-key.txt");
    super::ctl(&data, &["target", "export-key", "--out", s(&key)]);
    drop(hub);
    let data_b = dir.path().join("hub-b");
    let hub_b = Hub::start(&data_b);
    super::ctl(&data_b, &["target", "import-key", "--key-file", s(&key)]);
    hub_b.add_target(&garage, 1);
    let imported = hub_b.ok_call(
        Method::POST,
        &format!("/api/v1/targets/{TARGET}/import"),
        None,
    );
    assert_eq!(imported["imported"], json!([ids[0], ids[2]]), "{imported}");
    hub_b.assert_restores(ids[2], &points[2].1, "raw");
}
