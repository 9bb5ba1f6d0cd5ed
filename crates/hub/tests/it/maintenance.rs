//! Removing restore points with chain merges (`sendense_hub::maintenance`): chains of 8+
//! points with known contents written straight into the files the catalog knows; after every
//! removal each remaining point `qemu-img compare`s equal to the content it had when it was
//! taken, `qemu-img check`s clean, and its chain's digests describe what it reads.

#![allow(clippy::cast_possible_truncation)] // small test sizes and seeds: every cast is lossless here

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sendense_catalog::{BackupRecord, Catalog, DiskCompletion, MergeKind, MergePhase};
use sendense_digest::{BLOCK_SIZE, BlockDigest, LayerDigests, PointDigests};
use sendense_hub::HubError;
use sendense_hub::engine::{Engine, REPOSITORY_DIR};
use sendense_hub::error::ErrorKind;
use sendense_hub::maintenance::Maintenance;
use sendense_nbd::ExportRegistry;
use sendense_qcow2::{BackingPolicy, BackingSpec, CreateOptions, Image, OpenOptions};
use sendense_types::{
    BackupId, BackupStatus, BackupType, DiskKey, DiskSpec, RegisterVmRequest, StartBackupRequest,
    Timestamp, VmName, digest_path,
};

use crate::support::{assert_qemu_check_clean, assert_qemu_identical, qemu_img_ok};

const DISK: DiskKey = DiskKey(2000);
const SIZE: u64 = 8 << 20;
const BLOCKS: u64 = SIZE / BLOCK_SIZE;

/// What one point writes: data blocks (block index, seed) and zeroed blocks.
#[derive(Default, Clone)]
struct Layer {
    data: Vec<(u64, u8)>,
    zeros: Vec<u64>,
}

/// A repository with one VM and a catalog, engine and maintenance over it.
struct Repo {
    dir: tempfile::TempDir,
    catalog: Arc<Catalog>,
    engine: Arc<Engine>,
    maintenance: Maintenance,
    vm: VmName,
    /// Raw content of every point when it was taken.
    expected: HashMap<BackupId, PathBuf>,
}

fn block_bytes(block: u64, seed: u8) -> Vec<u8> {
    (0..BLOCK_SIZE)
        .map(|i| (i as u8).wrapping_mul(seed | 1).wrapping_add(block as u8) ^ seed)
        .collect()
}

impl Repo {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Arc::new(Catalog::open_in(dir.path()).unwrap());
        let repository = dir.path().join(REPOSITORY_DIR);
        std::fs::create_dir_all(&repository).unwrap();
        let engine = Arc::new(Engine::new(
            Arc::clone(&catalog),
            repository.clone(),
            Arc::new(ExportRegistry::new()),
            "nbds://127.0.0.1:1".into(),
        ));
        let maintenance = Maintenance::new(Arc::clone(&catalog), repository, Arc::clone(&engine))
            .with_wait(Duration::from_millis(300));
        let vm: VmName = "web01".parse().unwrap();
        let spec = RegisterVmRequest::new(
            vm.clone(),
            vec![DiskSpec {
                key: DISK,
                capacity_bytes: SIZE,
            }],
        )
        .unwrap();
        catalog.upsert_vm(&spec, Timestamp::now()).unwrap();
        std::fs::create_dir_all(dir.path().join("expected")).unwrap();
        Self {
            dir,
            catalog,
            engine,
            maintenance,
            vm,
            expected: HashMap::new(),
        }
    }

    fn repository(&self) -> PathBuf {
        self.dir.path().join(REPOSITORY_DIR)
    }

    fn path(&self, id: &BackupId) -> PathBuf {
        let record = self.catalog.backup(id).unwrap().unwrap();
        self.repository().join(&record.disks[0].file)
    }

    /// Takes a point: a full when `full`, else an incremental on the head; with digests.
    fn point(&mut self, full: bool, layer: &Layer) -> BackupId {
        let vm = self.catalog.vm(&self.vm).unwrap().unwrap();
        let parent = if full {
            None
        } else {
            self.catalog.latest_completed(&self.vm).unwrap()
        };
        let now = Timestamp::now();
        let record = BackupRecord::new(
            BackupId::new(&vm.name, now),
            &vm,
            parent.as_ref(),
            BackupStatus::Running,
            now,
        );
        self.catalog.create_backup(&record).unwrap();
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
        for &(block, seed) in &layer.data {
            let bytes = block_bytes(block, seed);
            image.write_at(&bytes, block * BLOCK_SIZE).unwrap();
            digests.record(block * BLOCK_SIZE, &bytes).unwrap();
        }
        for &block in &layer.zeros {
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
            change_id: Some(
                format!("52 3c 7e/{}", self.expected.len() + 1)
                    .parse()
                    .unwrap(),
            ),
            bytes_written: 0,
            digests: true,
        }];
        self.catalog
            .complete_backup(&id, &done, Timestamp::now())
            .unwrap();
        self.catalog.set_disk_digests(&id, DISK, true).unwrap();
        let raw = self.dir.path().join("expected").join(format!("{id}.raw"));
        qemu_img_ok(&[
            "convert",
            "-O",
            "raw",
            path.to_str().unwrap(),
            raw.to_str().unwrap(),
        ]);
        self.expected.insert(id.clone(), raw);
        id
    }

    /// A chain of `n` points: a full writing many blocks, then incrementals writing a few,
    /// overwriting earlier ones and zeroing some.
    fn chain(&mut self, n: usize) -> Vec<BackupId> {
        let mut ids = Vec::new();
        let full = Layer {
            data: (0..BLOCKS).filter(|b| b % 3 != 2).map(|b| (b, 1)).collect(),
            zeros: Vec::new(),
        };
        ids.push(self.point(true, &full));
        for i in 1..n as u64 {
            let layer = Layer {
                data: (0..BLOCKS)
                    .filter(|b| (b + i) % 7 == 0 || *b == i)
                    .map(|b| (b, 10 + i as u8))
                    .collect(),
                zeros: (0..BLOCKS).filter(|b| (b + 3 * i) % 11 == 0).collect(),
            };
            ids.push(self.point(false, &layer));
        }
        ids
    }

    fn remove(&self, ids: &[&BackupId]) -> sendense_hub::maintenance::RemoveReport {
        let ids: Vec<BackupId> = ids.iter().map(|i| (*i).clone()).collect();
        self.maintenance
            .remove_points(&self.vm, &ids, &|done, total| assert!(done <= total))
            .unwrap()
    }

    /// Every remaining completed point reads as it did, checks clean, keeps its file name,
    /// names its parent's file as a relative backing file, and its chain's digests describe
    /// what it reads.
    fn assert_exact(&self) {
        let all = self
            .catalog
            .backups(&sendense_types::BackupQuery {
                vm_name: Some(self.vm.clone()),
                ..Default::default()
            })
            .unwrap();
        let by_id: HashMap<&BackupId, &BackupRecord> =
            all.iter().map(|r| (&r.backup_id, r)).collect();
        for record in &all {
            let id = &record.backup_id;
            let path = self.repository().join(&record.disks[0].file);
            assert_eq!(
                record.disks[0].file,
                sendense_types::image_path(&self.vm, DISK, id),
                "file names keep matching the points they hold"
            );
            assert_qemu_check_clean(&path);
            assert_qemu_identical(&self.expected[id], &path);
            let info = Image::open(
                &path,
                &OpenOptions::read_only().backing(BackingPolicy::repository()),
            )
            .unwrap()
            .info();
            match &record.parent_backup_id {
                None => {
                    assert_eq!(record.backup_type, BackupType::Full);
                    assert_eq!(info.backing_file, None, "{id} is a full");
                }
                Some(p) => {
                    assert_eq!(record.backup_type, BackupType::Incremental);
                    let parent = by_id[p];
                    let name = Path::new(&parent.disks[0].file).file_name().unwrap();
                    assert_eq!(
                        info.backing_file.as_deref(),
                        Some(name.to_str().unwrap()),
                        "{id} backs on its parent by a relative name"
                    );
                    assert_eq!(
                        record.disks[0].parent_change_id, parent.disks[0].change_id,
                        "{id}'s parent change id is its parent's change id"
                    );
                }
            }
            self.assert_digests(record, &by_id);
        }
        // No file the catalog does not know is left behind.
        let folder = self.repository().join(format!("{}/disk-{DISK}", self.vm));
        let mut files: Vec<String> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        let mut known: Vec<String> = all
            .iter()
            .flat_map(|r| {
                let id = &r.backup_id;
                [format!("{id}.qcow2"), format!("{id}.digests")]
            })
            .collect();
        known.sort();
        assert_eq!(
            files, known,
            "the folder holds exactly the remaining points' files"
        );
        assert!(
            self.catalog.merges().unwrap().is_empty(),
            "no merge step left journalled"
        );
        assert!(
            self.catalog.deletions().unwrap().is_empty(),
            "no deletion left journalled"
        );
    }

    /// The chain's digests, composed, give each block of the point as it reads.
    fn assert_digests(&self, record: &BackupRecord, by_id: &HashMap<&BackupId, &BackupRecord>) {
        let mut chain = vec![record];
        while let Some(p) = &chain.last().unwrap().parent_backup_id {
            chain.push(by_id[p]);
        }
        chain.reverse();
        let layers: Vec<LayerDigests> = chain
            .iter()
            .map(|r| {
                assert!(r.disks[0].digests, "{} keeps its digests", r.backup_id);
                let bytes = std::fs::read(self.repository().join(digest_path(
                    &self.vm,
                    DISK,
                    &r.backup_id,
                )))
                .unwrap();
                LayerDigests::decode(&bytes).unwrap()
            })
            .collect();
        let point = PointDigests::new(&layers);
        let content = std::fs::read(&self.expected[&record.backup_id]).unwrap();
        for block in 0..BLOCKS {
            let at = (block * BLOCK_SIZE) as usize;
            let got = BlockDigest::of(&content[at..at + BLOCK_SIZE as usize]);
            assert_eq!(
                point.expected(block).0,
                got,
                "{} block {block}: digests carried",
                record.backup_id
            );
        }
        // The layer's own digests cover exactly the blocks its image holds.
        let path = self.repository().join(&record.disks[0].file);
        let image = Image::open(
            &path,
            &OpenOptions::read_only().backing(BackingPolicy::repository()),
        )
        .unwrap();
        let own = layers.last().unwrap();
        for block in 0..BLOCKS {
            let held = image
                .block_status(block * BLOCK_SIZE, BLOCK_SIZE)
                .unwrap()
                .iter()
                .any(|e| e.state != sendense_qcow2::ExtentState::Unallocated);
            if record.parent_backup_id.is_some() {
                assert_eq!(
                    held,
                    own.get(block).is_some(),
                    "{} block {block}: digests follow the layer",
                    record.backup_id
                );
            } else if held {
                assert!(
                    own.get(block).is_some(),
                    "{} block {block}",
                    record.backup_id
                );
            }
        }
    }

    fn head(&self) -> Option<BackupId> {
        self.catalog
            .latest_completed(&self.vm)
            .unwrap()
            .map(|r| r.backup_id)
    }
}

#[test]
fn removing_the_oldest_point_commits_the_next_layer_into_the_full() {
    let mut repo = Repo::new();
    let ids = repo.chain(8);
    repo.assert_exact();
    let report = repo.remove(&[&ids[0]]);
    assert_eq!(report.removed, vec![ids[0].clone()]);
    assert_eq!(report.merges, 1);
    assert!(repo.catalog.backup(&ids[0]).unwrap().is_none());
    let child = repo.catalog.backup(&ids[1]).unwrap().unwrap();
    assert_eq!(child.backup_type, BackupType::Full);
    assert_eq!(child.parent_backup_id, None);
    assert_eq!(repo.head(), Some(ids[7].clone()));
    repo.assert_exact();
    // Twice more: the new full goes too.
    repo.remove(&[&ids[1]]);
    repo.remove(&[&ids[2]]);
    repo.assert_exact();
}

#[test]
fn removing_middle_points_absorbs_them_into_their_children() {
    let mut repo = Repo::new();
    let ids = repo.chain(8);
    let report = repo.remove(&[&ids[3]]);
    assert_eq!(report.merges, 1);
    let child = repo.catalog.backup(&ids[4]).unwrap().unwrap();
    assert_eq!(child.parent_backup_id, Some(ids[2].clone()));
    repo.assert_exact();
    repo.remove(&[&ids[5], &ids[1]]);
    repo.assert_exact();
    assert_eq!(repo.head(), Some(ids[7].clone()));
}

#[test]
fn removing_the_head_moves_the_head_back_and_the_next_incremental_builds_on_it() {
    let mut repo = Repo::new();
    let ids = repo.chain(8);
    let report = repo.remove(&[&ids[7]]);
    assert_eq!(report.merges, 0);
    assert_eq!(report.head, Some(ids[6].clone()));
    repo.assert_exact();
    // The next incremental asks for changes since the new head's change id.
    let started = repo
        .engine
        .start_backup(&StartBackupRequest {
            vm_name: repo.vm.clone(),
            backup_type: BackupType::Incremental,
            base_backup_id: None,
        })
        .unwrap();
    let head = repo.catalog.backup(&ids[6]).unwrap().unwrap();
    assert_eq!(started.parent_backup_id, Some(ids[6].clone()));
    assert_eq!(started.disks[0].parent_change_id, head.disks[0].change_id);
}

#[test]
fn gfs_like_sets_of_points_are_removed_at_once() {
    let mut repo = Repo::new();
    let ids = repo.chain(10);
    // Keep 3, 6, 8, 9 (a weekly, a daily, the last two): every other kind of removal at once.
    let remove: Vec<&BackupId> = [0, 1, 2, 4, 5, 7].iter().map(|&i| &ids[i]).collect();
    let report = repo
        .maintenance
        .remove_points(
            &repo.vm,
            &remove.iter().map(|i| (*i).clone()).collect::<Vec<_>>(),
            &|done, total| assert!(done <= total, "progress {done} of {total}"),
        )
        .unwrap();
    assert_eq!(report.removed.len(), 6);
    assert!(report.merges >= 5, "{report:?}");
    let left: Vec<BackupId> = repo
        .catalog
        .chain(&repo.vm)
        .unwrap()
        .into_iter()
        .map(|r| r.backup_id)
        .collect();
    assert_eq!(
        left,
        vec![
            ids[3].clone(),
            ids[6].clone(),
            ids[8].clone(),
            ids[9].clone()
        ]
    );
    repo.assert_exact();
}

#[test]
fn two_chains_of_one_vm_lose_points_of_both() {
    let mut repo = Repo::new();
    let old = repo.chain(4);
    let mut new = vec![
        repo.point(
            true,
            &Layer {
                data: (0..BLOCKS)
                    .filter(|b| b % 2 == 0)
                    .map(|b| (b, 99))
                    .collect(),
                zeros: Vec::new(),
            },
        ),
    ];
    for i in 0..4u64 {
        new.push(repo.point(
            false,
            &Layer {
                data: vec![(i * 5, 50 + i as u8), (i * 5 + 1, 60 + i as u8)],
                zeros: vec![i * 5 + 2],
            },
        ));
    }
    repo.remove(&[&old[0], &old[3], &new[0], &new[2]]);
    repo.assert_exact();
    assert_eq!(repo.head(), Some(new[4].clone()));
}

#[test]
fn protected_points_are_refused_and_nothing_is_removed() {
    let mut repo = Repo::new();
    let ids = repo.chain(8);
    set_protected(&repo, &ids[2]);
    let err = repo
        .maintenance
        .remove_points(&repo.vm, &[ids[1].clone(), ids[2].clone()], &|_, _| {})
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(
        matches!(&err, HubError::Protected { backup_ids } if backup_ids == &vec![ids[2].clone()])
    );
    assert!(err.to_string().contains(ids[2].as_str()), "{err}");
    assert!(repo.catalog.backup(&ids[1]).unwrap().is_some());
    repo.assert_exact();
}

fn set_protected(repo: &Repo, id: &BackupId) {
    let record = repo.catalog.backup(id).unwrap().unwrap();
    assert!(!record.protected);
    repo.catalog.set_protected(id, true).unwrap();
}

#[test]
fn an_open_restore_holds_the_removal_and_a_removal_refuses_backups() {
    let mut repo = Repo::new();
    let ids = repo.chain(8);
    repo.engine.open_restore(&ids[5]).unwrap();
    let err = repo
        .maintenance
        .remove_points(&repo.vm, &[ids[0].clone()], &|_, _| {})
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(err.to_string().contains("restore exports open on"), "{err}");
    assert!(err.to_string().contains(ids[5].as_str()), "{err}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(repo.engine.close_restore(&ids[5])).unwrap();
    repo.remove(&[&ids[0]]);
    repo.assert_exact();

    // While a removal holds the chain, a backup start and a restore open are refused (409)
    // with words naming it.
    let locks = Arc::clone(repo.maintenance.chain_locks());
    let guard = locks
        .write(
            &repo.vm,
            "removing restore points X".into(),
            Duration::from_secs(1),
        )
        .unwrap();
    let err = repo
        .engine
        .start_backup(&StartBackupRequest {
            vm_name: repo.vm.clone(),
            backup_type: BackupType::Auto,
            base_backup_id: None,
        })
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(
        err.to_string().contains("removing restore points X"),
        "{err}"
    );
    let err = repo.engine.open_restore(&ids[3]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    // A verifier's shared hold waits for the removal, then gets in.
    assert!(matches!(
        locks.read(&repo.vm, Duration::from_millis(50)),
        Err(HubError::ChainBusy { .. })
    ));
    drop(guard);
    let read = repo.maintenance.read_lock(&repo.vm).unwrap();
    // And a removal waits for it, then gives up naming what holds the chain.
    let err = repo
        .maintenance
        .remove_points(&repo.vm, &[ids[3].clone()], &|_, _| {})
        .unwrap_err();
    assert!(matches!(err, HubError::ChainBusy { .. }), "{err}");
    drop(read);
    repo.remove(&[&ids[3]]);
    repo.assert_exact();
}

#[test]
fn resume_rolls_interrupted_steps_forward_and_forgets_untouched_ones() {
    let mut repo = Repo::new();
    let ids = repo.chain(8);
    // A commit interrupted after its data moved, before the rename; an absorb recorded but
    // never started.
    let step = commit_step(&repo, &ids[0], &ids[1]);
    repo.catalog.begin_merge(&step).unwrap();
    repo.catalog
        .set_merge_phase(&ids[0], MergePhase::Merging)
        .unwrap();
    let base = repo.path(&ids[0]);
    let layer = repo.path(&ids[1]);
    {
        let child = Image::open(
            &layer,
            &OpenOptions::read_only().backing(BackingPolicy::repository()),
        )
        .unwrap();
        child.commit().unwrap();
    }
    assert!(base.exists());
    let mut absorb = commit_step(&repo, &ids[4], &ids[5]);
    absorb.kind = MergeKind::Absorb;
    repo.catalog.begin_merge(&absorb).unwrap();

    // Until the step is finished, the point being removed is never served.
    let err = repo.engine.open_restore(&ids[0]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(err.to_string().contains("being removed"), "{err}");

    let report = repo.maintenance.resume().unwrap();
    assert_eq!(report.rolled_forward, vec![ids[0].clone()]);
    assert_eq!(report.abandoned, vec![ids[4].clone()]);
    assert!(report.failed.is_empty());
    assert!(repo.catalog.backup(&ids[0]).unwrap().is_none());
    assert!(repo.catalog.backup(&ids[4]).unwrap().is_some());
    repo.assert_exact();
    // Resuming again finds nothing.
    assert_eq!(repo.maintenance.resume().unwrap(), Default::default());
}

fn commit_step(repo: &Repo, removed: &BackupId, child: &BackupId) -> sendense_catalog::MergeStep {
    let r = repo.catalog.backup(removed).unwrap().unwrap();
    let c = repo.catalog.backup(child).unwrap().unwrap();
    sendense_catalog::MergeStep {
        vm_name: repo.vm.clone(),
        removed: removed.clone(),
        child: child.clone(),
        kind: MergeKind::Commit,
        phase: MergePhase::Planned,
        disks: vec![sendense_catalog::MergeDisk {
            disk_key: DISK,
            removed_file: Some(r.disks[0].file.clone()),
            child_file: Some(c.disks[0].file.clone()),
            merge: true,
            digests: true,
        }],
        started_at: Timestamp::now(),
    }
}

#[test]
fn a_commit_gives_space_back_and_costs_the_layer_not_the_disk() {
    // A 1 GiB disk whose full holds 8 MiB; the next layer zeroes 4 MiB of it and writes 1 MiB.
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    let top = dir.path().join("top.qcow2");
    let size = 1u64 << 30;
    let full = Image::create(&base, &CreateOptions::new(size)).unwrap();
    full.write_at(&vec![7u8; 8 << 20], 100 << 20).unwrap();
    drop(full);
    let layer = Image::create(
        &top,
        &CreateOptions::new(size)
            .backing(BackingSpec::qcow2("base.qcow2"))
            .backing_policy(BackingPolicy::repository()),
    )
    .unwrap();
    layer.write_zeroes(100 << 20, 4 << 20).unwrap();
    layer.write_at(&vec![9u8; 1 << 20], 500 << 20).unwrap();
    drop(layer);
    let expected = dir.path().join("expected.raw");
    qemu_img_ok(&[
        "convert",
        "-O",
        "raw",
        top.to_str().unwrap(),
        expected.to_str().unwrap(),
    ]);
    let used_before = disk_usage(&base);
    let layer = Image::open(
        &top,
        &OpenOptions::read_only().backing(BackingPolicy::repository()),
    )
    .unwrap();
    layer.commit().unwrap();
    drop(layer);
    assert_qemu_check_clean(&base);
    assert_qemu_identical(&expected, &base);
    let used_after = disk_usage(&base);
    // 4 MiB freed, 1 MiB written: the file system holds about 3 MiB less.
    assert!(
        used_after + (2 << 20) < used_before,
        "space freed is given back: {used_before} -> {used_after} bytes"
    );
}

fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}
