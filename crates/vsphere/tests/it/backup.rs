//! The backup orchestration against the simulator: CBT rules, automatic fulls, cleanup.

use std::collections::BTreeMap;

use sendense_types::{ChangeId, DiskKey};
use sendense_vsphere::{DiskMode, PrepareOptions, PreviousDisk, VsphereBackup, VsphereError};
use sendense_vsphere_sim::DiskSpec;

use crate::support::{MIB, assert_extents_match_file, env, env_with, ext, previous_of, session};

fn full_reason(mode: &DiskMode) -> Option<String> {
    match mode {
        DiskMode::Full { reason } => reason.clone(),
        _ => None,
    }
}

#[tokio::test]
async fn prepare_first_backup_is_full_of_allocated_areas_and_reads_data() {
    let e = env().await;
    e.sim.write_disk(&e.vm, 2000, 0, &[1u8; 4096]).unwrap();
    e.sim
        .write_disk(&e.vm, 2001, 2 * MIB, &[2u8; 100_000])
        .unwrap();
    let s = session(&e.sim).await;
    let p = VsphereBackup::prepare(&s, "vm1", &BTreeMap::new(), &PrepareOptions::default())
        .await
        .unwrap();
    for d in &p.disks {
        assert_extents_match_file(&e.sim, &e.vm, d).await;
    }
    let got: Vec<_> = p
        .disks
        .iter()
        .map(|d| {
            (
                d.key,
                d.capacity,
                d.mode.clone(),
                d.extents.clone(),
                d.new_change_id.is_some(),
            )
        })
        .collect();
    p.finish().await.unwrap();
    assert_eq!(
        got,
        vec![
            (
                DiskKey(2000),
                2 * MIB,
                DiskMode::Full { reason: None },
                vec![ext(0, 64 * 1024)],
                true
            ),
            (
                DiskKey(2001),
                3 * MIB,
                DiskMode::Full { reason: None },
                vec![ext(2 * MIB, 128 * 1024)],
                true
            ),
        ]
    );
}

#[tokio::test]
async fn full_then_changes_then_incremental_then_cbt_reset_gives_automatic_full() {
    let e = env().await;
    e.sim.set_change_page(512 * 1024);
    e.sim.write_disk(&e.vm, 2000, 0, &[1u8; 65536]).unwrap();
    let s = session(&e.sim).await;
    let opts = PrepareOptions::default();
    // Full.
    let full = VsphereBackup::prepare(&s, "vm1", &BTreeMap::new(), &opts)
        .await
        .unwrap();
    let prev = previous_of(&full.disks);
    full.finish().await.unwrap();
    // Change blocks (two on disk 2000, one spanning a page boundary on 2001).
    e.sim.write_disk(&e.vm, 2000, 8192, &[9u8; 4096]).unwrap();
    e.sim
        .write_disk(&e.vm, 2000, MIB + 512, &[8u8; 1024])
        .unwrap();
    e.sim
        .write_disk(&e.vm, 2001, 512 * 1024 - 4096, &[7u8; 8192])
        .unwrap();
    let calls_before = e.sim.stats().change_queries;
    let inc = VsphereBackup::prepare(&s, "vm1", &prev, &opts)
        .await
        .unwrap();
    for d in &inc.disks {
        assert_extents_match_file(&e.sim, &e.vm, d).await;
    }
    let got: Vec<_> = inc
        .disks
        .iter()
        .map(|d| (d.mode.clone(), d.extents.clone()))
        .collect();
    let calls = e.sim.stats().change_queries - calls_before;
    let prev2 = previous_of(&inc.disks);
    inc.finish().await.unwrap();
    assert_eq!(
        (got, calls),
        (
            vec![
                (
                    DiskMode::Incremental {
                        base: prev[&DiskKey(2000)].change_id.clone().unwrap()
                    },
                    vec![ext(8192, 4096), ext(MIB + 512, 1024)]
                ),
                (
                    DiskMode::Incremental {
                        base: prev[&DiskKey(2001)].change_id.clone().unwrap()
                    },
                    vec![ext(512 * 1024 - 4096, 8192)]
                ),
            ],
            // 2 MiB / 512 KiB + 3 MiB / 512 KiB pages.
            10
        )
    );
    // CBT reset: the stored change ids' epoch no longer matches.
    e.sim.reset_cbt(&e.vm);
    let after = VsphereBackup::prepare(&s, "vm1", &prev2, &opts)
        .await
        .unwrap();
    let reasons: Vec<Option<String>> = after.disks.iter().map(|d| full_reason(&d.mode)).collect();
    after.finish().await.unwrap();
    assert!(
        reasons
            .iter()
            .all(|r| r.as_deref().is_some_and(|r| r.contains("CBT was reset"))),
        "{reasons:?}"
    );
}

#[tokio::test]
async fn incremental_with_unknown_change_id_same_epoch_falls_back_to_full() {
    let e = env().await;
    let s = session(&e.sim).await;
    let opts = PrepareOptions::default();
    let full = VsphereBackup::prepare(&s, "vm1", &BTreeMap::new(), &opts)
        .await
        .unwrap();
    let mut prev = previous_of(&full.disks);
    full.finish().await.unwrap();
    let d0 = prev.get_mut(&DiskKey(2000)).unwrap();
    let epoch = d0.change_id.as_ref().unwrap().uuid_part().to_owned();
    d0.change_id = Some(ChangeId::try_from(format!("{epoch}/999")).unwrap());
    let p = VsphereBackup::prepare(&s, "vm1", &prev, &opts)
        .await
        .unwrap();
    let reason = full_reason(&p.disks[0].mode);
    let second_incremental = matches!(p.disks[1].mode, DiskMode::Incremental { .. });
    p.finish().await.unwrap();
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.contains("QueryChangedDiskAreas refused"))
            && second_incremental,
        "{reason:?}"
    );
}

#[tokio::test]
async fn incremental_after_resize_falls_back_to_full() {
    let e = env().await;
    let s = session(&e.sim).await;
    let opts = PrepareOptions::default();
    let full = VsphereBackup::prepare(&s, "vm1", &BTreeMap::new(), &opts)
        .await
        .unwrap();
    let prev = previous_of(&full.disks);
    full.finish().await.unwrap();
    e.sim.resize_disk(&e.vm, 2001, 4 * MIB).unwrap();
    let p = VsphereBackup::prepare(&s, "vm1", &prev, &opts)
        .await
        .unwrap();
    let reason = full_reason(&p.disks[1].mode);
    p.finish().await.unwrap();
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.contains("capacity changed")),
        "{reason:?}"
    );
}

#[tokio::test]
async fn incremental_with_other_disk_uuid_falls_back_to_full() {
    let e = env().await;
    let s = session(&e.sim).await;
    let opts = PrepareOptions::default();
    let full = VsphereBackup::prepare(&s, "vm1", &BTreeMap::new(), &opts)
        .await
        .unwrap();
    let mut prev = previous_of(&full.disks);
    full.finish().await.unwrap();
    prev.get_mut(&DiskKey(2000)).unwrap().uuid = Some("6000c29-other".to_owned());
    let p = VsphereBackup::prepare(&s, "vm1", &prev, &opts)
        .await
        .unwrap();
    let reason = full_reason(&p.disks[0].mode);
    p.finish().await.unwrap();
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.contains("UUID changed")),
        "{reason:?}"
    );
}

#[tokio::test]
async fn prepare_cbt_off_enables_it_and_takes_full() {
    let e = env_with("vm2", false, vec![DiskSpec::flat(MIB)]).await;
    e.sim.write_disk(&e.vm, 2000, 0, &[3u8; 512]).unwrap();
    let s = session(&e.sim).await;
    let prev: BTreeMap<DiskKey, PreviousDisk> = [(
        DiskKey(2000),
        PreviousDisk {
            change_id: Some(ChangeId::try_from("52 00-00/1").unwrap()),
            ..PreviousDisk::default()
        },
    )]
    .into();
    let p = VsphereBackup::prepare(&s, "vm2", &prev, &PrepareOptions::default())
        .await
        .unwrap();
    let got = (
        p.cbt_enabled_now,
        full_reason(&p.disks[0].mode).is_some_and(|r| r.contains("just been enabled")),
        e.sim.cbt_enabled(&e.vm),
        e.sim.stats().reconfigs,
    );
    assert_extents_match_file(&e.sim, &e.vm, &p.disks[0]).await;
    p.finish().await.unwrap();
    assert_eq!(got, (true, true, true, 1));
}

#[tokio::test]
async fn prepare_removes_leftover_snapshot_of_ours_before_creating() {
    let e = env().await;
    e.sim.add_user_snapshot(&e.vm, "sendense-1700000000");
    let s = session(&e.sim).await;
    let p = VsphereBackup::prepare(&s, "vm1", &BTreeMap::new(), &PrepareOptions::default())
        .await
        .unwrap();
    let during = e.sim.snapshot_names(&e.vm);
    p.finish().await.unwrap();
    let st = e.sim.stats();
    assert_eq!(
        (
            during.len(),
            during[0] != "sendense-1700000000",
            st.snapshots_removed,
            e.sim.snapshot_names(&e.vm).len()
        ),
        (1, true, 2, 1 - 1)
    );
}

#[tokio::test]
async fn prepare_vm_with_foreign_snapshot_fails_and_removes_ours() {
    let e = env().await;
    e.sim.add_user_snapshot(&e.vm, "before upgrade");
    let s = session(&e.sim).await;
    let err = VsphereBackup::prepare(&s, "vm1", &BTreeMap::new(), &PrepareOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, VsphereError::UnsupportedBacking { .. })
            && e.sim.snapshot_names(&e.vm) == vec!["before upgrade".to_owned()],
        "{err:?}"
    );
}

#[tokio::test]
async fn prepare_failure_midway_removes_snapshot() {
    let e = env().await;
    e.sim.fail_next(
        "QueryChangedDiskAreas",
        "SystemError",
        "A general system error occurred",
    );
    let s = session(&e.sim).await;
    let err = VsphereBackup::prepare(&s, "vm1", &BTreeMap::new(), &PrepareOptions::default())
        .await
        .unwrap_err();
    let st = e.sim.stats();
    assert!(
        matches!(err, VsphereError::Fault { .. })
            && e.sim.snapshot_names(&e.vm).is_empty()
            && st.snapshots_created == 1
            && st.snapshots_removed == 1,
        "{err:?}"
    );
}

#[tokio::test]
async fn transfer_failure_then_finish_removes_snapshot() {
    let e = env().await;
    let s = session(&e.sim).await;
    let p = VsphereBackup::prepare(&s, "vm1", &BTreeMap::new(), &PrepareOptions::default())
        .await
        .unwrap();
    e.sim.set_busy_storm(1000);
    let mut buf = vec![0u8; 4096];
    let read = p.disks[0].source.read(0, &mut buf).await;
    p.finish().await.unwrap();
    assert!(read.is_err() && e.sim.snapshot_names(&e.vm).is_empty());
}

#[tokio::test]
async fn cleanup_handle_removes_once_and_finish_is_then_noop() {
    let e = env().await;
    let s = session(&e.sim).await;
    let p = VsphereBackup::prepare(&s, "vm1", &BTreeMap::new(), &PrepareOptions::default())
        .await
        .unwrap();
    let h = p.cleanup_handle();
    h.remove().await.unwrap();
    h.remove().await.unwrap();
    p.finish().await.unwrap();
    assert_eq!(
        (
            e.sim.snapshot_names(&e.vm).len(),
            e.sim.stats().snapshots_removed,
            h.is_removed().await
        ),
        (0, 1, true)
    );
}

#[tokio::test]
async fn prepare_session_expiring_mid_run_recovers() {
    let e = env().await;
    e.sim.write_disk(&e.vm, 2000, 0, &[5u8; 4096]).unwrap();
    let s = session(&e.sim).await;
    e.sim.expire_sessions_after(Some(4));
    let p = VsphereBackup::prepare(&s, "vm1", &BTreeMap::new(), &PrepareOptions::default())
        .await
        .unwrap();
    e.sim.expire_sessions();
    assert_extents_match_file(&e.sim, &e.vm, &p.disks[0]).await;
    p.finish().await.unwrap();
    assert!(e.sim.stats().logins >= 3 && e.sim.snapshot_names(&e.vm).is_empty());
}

#[tokio::test]
async fn prepare_busy_storm_during_reads_recovers() {
    let e = env().await;
    e.sim.write_disk(&e.vm, 2001, 0, &[6u8; 65536]).unwrap();
    let s = session(&e.sim).await;
    let p = VsphereBackup::prepare(&s, "vm1", &BTreeMap::new(), &PrepareOptions::default())
        .await
        .unwrap();
    e.sim.set_busy_storm(5);
    assert_extents_match_file(&e.sim, &e.vm, &p.disks[1]).await;
    p.finish().await.unwrap();
    assert_eq!(e.sim.stats().busy_answers, 5);
}

#[tokio::test]
async fn prepare_non_flat_backing_is_unsupported_without_snapshot() {
    let e = env_with(
        "vm3",
        true,
        vec![DiskSpec {
            capacity: MIB,
            backing: "VirtualDiskRawDiskMappingVer1BackingInfo".to_owned(),
        }],
    )
    .await;
    let s = session(&e.sim).await;
    let err = VsphereBackup::prepare(&s, "vm3", &BTreeMap::new(), &PrepareOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, VsphereError::UnsupportedBacking { backing, .. } if backing == "VirtualDiskRawDiskMappingVer1BackingInfo")
            && e.sim.stats().snapshots_created == 0,
        "{err:?}"
    );
}

#[tokio::test]
async fn prepare_missing_vm_is_not_found() {
    let e = env().await;
    let s = session(&e.sim).await;
    let err = VsphereBackup::prepare(&s, "ghost", &BTreeMap::new(), &PrepareOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, VsphereError::VmNotFound { .. }) && e.sim.stats().snapshots_created == 0);
}

#[tokio::test]
async fn promote_to_full_turns_incrementals_into_fulls() {
    let e = env().await;
    e.sim.write_disk(&e.vm, 2000, 0, &[1u8; 4096]).unwrap();
    let s = session(&e.sim).await;
    let opts = PrepareOptions::default();
    let full = VsphereBackup::prepare(&s, "vm1", &BTreeMap::new(), &opts)
        .await
        .unwrap();
    let prev = previous_of(&full.disks);
    full.finish().await.unwrap();
    let mut p = VsphereBackup::prepare(&s, "vm1", &prev, &opts)
        .await
        .unwrap();
    let was_incremental = p.all_incremental();
    p.promote_to_full("hub asked for a full").await.unwrap();
    let got = (
        was_incremental,
        p.disks[0].extents.clone(),
        full_reason(&p.disks[0].mode),
    );
    p.finish().await.unwrap();
    assert_eq!(
        got,
        (
            true,
            vec![ext(0, 64 * 1024)],
            Some("hub asked for a full".to_owned())
        )
    );
}

#[tokio::test]
async fn prepare_snapshot_task_failure_is_task_failed_without_snapshot() {
    let e = env().await;
    e.sim.fail_next_task(
        "CreateSnapshot_Task",
        "FileFault",
        "Insufficient disk space on datastore 'ds1'.",
    );
    let s = session(&e.sim).await;
    let err = VsphereBackup::prepare(&s, "vm1", &BTreeMap::new(), &PrepareOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, VsphereError::TaskFailed { fault, .. } if fault.message.contains("Insufficient"))
            && e.sim.snapshot_names(&e.vm).is_empty(),
        "{err:?}"
    );
}

#[tokio::test]
async fn finish_remove_task_failure_can_be_retried_with_handle() {
    let e = env().await;
    let s = session(&e.sim).await;
    let p = VsphereBackup::prepare(&s, "vm1", &BTreeMap::new(), &PrepareOptions::default())
        .await
        .unwrap();
    let h = p.cleanup_handle();
    e.sim.fail_next_task(
        "RemoveSnapshot_Task",
        "TaskInProgress",
        "Another task is already in progress.",
    );
    let first = p.finish().await;
    let left = e.sim.snapshot_names(&e.vm).len();
    h.remove().await.unwrap();
    assert_eq!(
        (first.is_err(), left, e.sim.snapshot_names(&e.vm).len()),
        (true, 1, 0)
    );
}

#[tokio::test]
async fn incremental_with_disk_missing_from_previous_makes_that_disk_new_with_allocated_areas() {
    let e = env().await;
    let s = session(&e.sim).await;
    let opts = PrepareOptions::default();
    let full = VsphereBackup::prepare(&s, "vm1", &BTreeMap::new(), &opts)
        .await
        .unwrap();
    let mut prev = previous_of(&full.disks);
    let allocated = full.disks[1].extents.clone();
    full.finish().await.unwrap();
    prev.remove(&DiskKey(2001));
    let p = VsphereBackup::prepare(&s, "vm1", &prev, &opts)
        .await
        .unwrap();
    let got = (
        matches!(p.disks[0].mode, DiskMode::Incremental { .. }),
        p.disks[1].mode.clone(),
        p.disks[1].extents.clone(),
        p.full_reason(),
    );
    assert_extents_match_file(&e.sim, &e.vm, &p.disks[1]).await;
    p.finish().await.unwrap();
    // A new disk is no reason for a full of the VM: all its allocated areas, in an incremental.
    assert_eq!(got, (true, DiskMode::New, allocated, None));
}

#[tokio::test]
async fn prepare_keeps_snapshots_running_backups_own_and_removes_other_leftovers() {
    let e = env().await;
    e.sim.add_user_snapshot(&e.vm, "sendense-backup-vm1-owned");
    e.sim.add_user_snapshot(&e.vm, "sendense-1700000000");
    let s = session(&e.sim).await;
    let before = s.vm_info(&s.find_vm("vm1").await.unwrap()).await.unwrap();
    let owned = before
        .snapshots
        .iter()
        .find(|x| x.name == "sendense-backup-vm1-owned")
        .unwrap()
        .snapshot
        .value
        .clone();
    let options = PrepareOptions {
        keep_snapshots: vec![owned],
        snapshot_name: Some("sendense-backup-vm1-mine".to_owned()),
        ..PrepareOptions::default()
    };

    let p = VsphereBackup::prepare(&s, "vm1", &BTreeMap::new(), &options).await;

    let during = e.sim.snapshot_names(&e.vm);
    // The owned snapshot stays, the other leftover is gone; with another snapshot on the VM our
    // snapshot's base disk is a delta, which prepare refuses (and removes its own snapshot).
    assert!(
        during.contains(&"sendense-backup-vm1-owned".to_owned()),
        "{during:?}"
    );
    assert!(
        !during.contains(&"sendense-1700000000".to_owned()),
        "{during:?}"
    );
    if let Ok(p) = p {
        p.finish().await.unwrap();
    }
    assert_eq!(
        e.sim.snapshot_names(&e.vm),
        vec!["sendense-backup-vm1-owned".to_owned()]
    );
}

/// Apply a prepared disk's extents (read from its source) onto an image buffer.
async fn apply(image: &mut [u8], d: &sendense_vsphere::PreparedDisk) {
    for e in &d.extents {
        let start = usize::try_from(e.offset).unwrap();
        let end = start + usize::try_from(e.length).unwrap();
        d.source
            .read(e.offset, &mut image[start..end])
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn full_plus_incrementals_reconstruct_the_disk_exactly() {
    let e = env_with("vm4", true, vec![DiskSpec::flat(4 * MIB)]).await;
    e.sim.set_change_page(768 * 1024);
    let pattern = |seed: u8, n: usize| -> Vec<u8> {
        (0..n)
            .map(|i| seed ^ u8::try_from(i % 253).unwrap())
            .collect()
    };
    e.sim
        .write_disk(&e.vm, 2000, 0, &pattern(1, 300_000))
        .unwrap();
    e.sim
        .write_disk(&e.vm, 2000, 3 * MIB, &pattern(2, 70_000))
        .unwrap();
    let s = session(&e.sim).await;
    let opts = PrepareOptions::default();
    let mut image = vec![0u8; usize::try_from(4 * MIB).unwrap()];
    let full = VsphereBackup::prepare(&s, "dc1/vm/vm4", &BTreeMap::new(), &opts)
        .await
        .unwrap();
    apply(&mut image, &full.disks[0]).await;
    let mut prev = previous_of(&full.disks);
    full.finish().await.unwrap();
    for round in 0..3u8 {
        let at = u64::from(round) * 1_000_448 + 512;
        e.sim
            .write_disk(&e.vm, 2000, at, &pattern(10 + round, 50_000))
            .unwrap();
        let inc = VsphereBackup::prepare(&s, "dc1/vm/vm4", &prev, &opts)
            .await
            .unwrap();
        assert!(inc.all_incremental());
        apply(&mut image, &inc.disks[0]).await;
        prev = previous_of(&inc.disks);
        inc.finish().await.unwrap();
    }
    let file = std::fs::read(e.sim.disk_file(&e.vm, 2000).unwrap()).unwrap();
    assert!(image == file, "reconstructed image differs from the disk");
}

#[tokio::test]
async fn prepare_with_quiesce_asks_vcenter_for_a_quiesced_snapshot() {
    let e = env().await;
    let s = session(&e.sim).await;
    let options = PrepareOptions {
        quiesce: true,
        ..PrepareOptions::default()
    };

    let p = VsphereBackup::prepare(&s, "vm1", &BTreeMap::new(), &options)
        .await
        .unwrap();
    p.finish().await.unwrap();

    let stats = e.sim.stats();
    assert_eq!(
        (stats.quiesce_requests, stats.plain_snapshot_requests),
        (1, 0)
    );
}

#[tokio::test]
async fn prepare_without_quiesce_asks_for_a_plain_snapshot() {
    let e = env().await;
    let s = session(&e.sim).await;

    let p = VsphereBackup::prepare(&s, "vm1", &BTreeMap::new(), &PrepareOptions::default())
        .await
        .unwrap();
    p.finish().await.unwrap();

    let stats = e.sim.stats();
    assert_eq!(
        (stats.quiesce_requests, stats.plain_snapshot_requests),
        (0, 1)
    );
}

#[tokio::test]
async fn prepare_quiesce_without_tools_fails_naming_quiesce_and_leaves_no_snapshot() {
    let e = env().await;
    e.sim.set_tools_missing(true);
    let s = session(&e.sim).await;
    let options = PrepareOptions {
        quiesce: true,
        ..PrepareOptions::default()
    };

    let err = VsphereBackup::prepare(&s, "vm1", &BTreeMap::new(), &options)
        .await
        .unwrap_err();

    assert!(
        matches!(&err, VsphereError::QuiesceFailed { .. })
            && err.to_string().contains("without --quiesce")
            && err.to_string().contains("VMware Tools")
            && e.sim.snapshot_names(&e.vm).is_empty(),
        "{err}"
    );
}

#[tokio::test]
async fn prepare_plain_snapshot_without_tools_succeeds() {
    let e = env().await;
    e.sim.set_tools_missing(true);
    let s = session(&e.sim).await;

    let p = VsphereBackup::prepare(&s, "vm1", &BTreeMap::new(), &PrepareOptions::default())
        .await
        .unwrap();
    p.finish().await.unwrap();

    assert!(e.sim.snapshot_names(&e.vm).is_empty());
}
