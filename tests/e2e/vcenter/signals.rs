//! SIGTERM and SIGHUP stop `sendense-client backup` like Ctrl-C: the backup is failed at the
//! hub, a vCenter snapshot is removed, and the VM can be backed up again at once. The real
//! `sendense-hub serve` and `sendense-client` binaries; no sleeps (conditions with deadlines).

use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc::{self};

use sendense_types::{BackupQuery, BackupStatus};

use super::{DEADLINE, HubProc, MIB, Vc, assert_images_match, backup, summary};
use crate::support::{client, log_lines, s, signal, wait_message, write_random};

/// Waits for `child` to exit, bounded by [`DEADLINE`] (then kills it and fails).
fn wait_exit(mut child: Child) -> ExitStatus {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(status) => status.unwrap(),
        Err(_) => {
            signal(pid, "KILL");
            panic!("the client did not exit within {DEADLINE:?}");
        }
    }
}

/// The VM's backups at the hub.
fn backups(hub: &HubProc, vm: &str) -> Vec<sendense_types::Backup> {
    let query = BackupQuery {
        vm_name: Some(vm.parse().unwrap()),
        status: None,
    };
    hub.rest(|h| async move { h.backups(&query).await.unwrap() })
}

/// A file-source backup of a 64 MiB disk full of data, stopped with `sig` mid-transfer.
fn file_backup_stopped_by(sig: &str) {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProc::start(&dir.path().join("data"));
    let disk = dir.path().join("disk.raw");
    write_random(&disk, 0, usize::try_from(64 * MIB).unwrap(), 7);
    let o = hub.options();
    let command = || {
        let mut c = client();
        c.args([
            "backup",
            "--hub",
            &o.url,
            "--tls-dir",
            s(o.tls_dir.as_deref().unwrap()),
        ])
        .args(["--token-file", s(&o.token_file), "--vm", "vm1"])
        .args(["--disk", &format!("2000={}", s(&disk))])
        .args(["--connections", "1", "--json", "--log-format", "json"])
        .stdin(Stdio::null());
        c
    };
    let mut child = command()
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = log_lines(child.stderr.take().unwrap());
    let started = wait_message(&log, "backup started");
    let id = started["fields"]["backup_id"].as_str().unwrap().to_owned();
    wait_message(&log, "disk transfer starts");

    // Frozen mid-transfer, the signal is pending when it resumes: no race with the end.
    signal(child.id(), "STOP");
    signal(child.id(), sig);
    signal(child.id(), "CONT");
    let status = wait_exit(child);

    assert!(
        !status.success(),
        "the client exited {status} after SIG{sig}"
    );
    let all = backups(&hub, "vm1");
    let stopped = all.iter().find(|b| b.backup_id.as_str() == id).unwrap();
    assert_eq!(stopped.status, BackupStatus::Failed, "{stopped:?}");
    let reason = stopped.failure_reason.as_deref().unwrap();
    assert!(reason.contains("Interrupted"), "{reason}");
    // The VM is free at once: the next backup runs to its end.
    let out = command().output().unwrap();
    let next = summary(&out);
    assert_eq!(next["status"], "completed");
}

#[test]
fn file_backup_sigterm_fails_it_at_the_hub_and_the_vm_backs_up_again() {
    file_backup_stopped_by("TERM");
}

#[test]
fn file_backup_sighup_fails_it_at_the_hub_and_the_vm_backs_up_again() {
    file_backup_stopped_by("HUP");
}

#[test]
fn vcenter_backup_sigterm_removes_the_snapshot_fails_it_and_the_vm_backs_up_again() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProc::start(&dir.path().join("data"));
    let vc = Vc::start();
    // The client gets as far as reading its snapshot's disks, and waits there.
    vc.sim.hold_reads(true);
    let o = hub.options();
    let child = client()
        .args([
            "backup",
            "--hub",
            &o.url,
            "--tls-dir",
            s(o.tls_dir.as_deref().unwrap()),
        ])
        .args(["--token-file", s(&o.token_file), "--vm", "dc1/vm/vm1"])
        .args(["--json", "--log-format", "json"])
        .args(vc.password_args())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(DEADLINE, vc.sim.read_held())
            .await
            .expect("the client reads its snapshot");
    });
    let during = vc.snapshots_left();

    signal(child.id(), "TERM");
    let status = wait_exit(child);

    vc.sim.hold_reads(false);
    assert!(
        !status.success(),
        "the client exited {status} after SIGTERM"
    );
    assert_eq!(during.len(), 1, "{during:?}");
    assert!(vc.snapshots_left().is_empty(), "{:?}", vc.snapshots_left());
    let all = backups(&hub, "vm1");
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].status, BackupStatus::Failed);
    let reason = all[0].failure_reason.as_deref().unwrap();
    assert!(reason.contains("Interrupted"), "{reason}");
    let next = summary(&backup(&hub, &vc.password_args()));
    assert_eq!(next["status"], "completed");
    assert_images_match(&hub, &vc, &next);
    assert!(vc.snapshots_left().is_empty());
}
