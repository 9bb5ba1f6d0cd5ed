//! Property test: random sequences of create / complete / fail / delete against a simple model
//! of the rules (one active backup per VM, incrementals on the head, deletion refuses
//! dependants, the head moves only on completion or deletion).

use proptest::prelude::*;
use sendense_catalog::{BackupRecord, Catalog, CatalogError, ErrorKind};
use sendense_types::{BackupId, BackupQuery, BackupStatus, Vm};

use crate::support::{Fixture, at, ids, register};

#[derive(Debug, Clone)]
enum Op {
    Create { vm: usize, incremental: bool },
    Complete { pick: usize },
    Fail { pick: usize },
    Delete { pick: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..2usize, any::<bool>()).prop_map(|(vm, incremental)| Op::Create { vm, incremental }),
        3 => any::<usize>().prop_map(|pick| Op::Complete { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Fail { pick }),
        2 => any::<usize>().prop_map(|pick| Op::Delete { pick }),
    ]
}

struct ModelBackup {
    id: BackupId,
    vm: usize,
    status: BackupStatus,
    parent: Option<usize>,
    deleted: bool,
}

#[derive(Default)]
struct Model {
    backups: Vec<ModelBackup>,
    heads: [Option<usize>; 2],
}

impl Model {
    fn active(&self, vm: usize) -> bool {
        self.backups
            .iter()
            .any(|b| b.vm == vm && !b.deleted && b.status.is_active())
    }

    fn chain(&self, vm: usize) -> Vec<BackupId> {
        let mut out = Vec::new();
        let mut next = self.heads[vm];
        while let Some(i) = next {
            out.push(self.backups[i].id.clone());
            next = self.backups[i].parent;
        }
        out.reverse();
        out
    }
}

fn kind<T>(result: &Result<T, CatalogError>) -> Option<ErrorKind> {
    result.as_ref().err().map(CatalogError::kind)
}

/// Applies `op` to both; answers (model's expected kind, catalog's kind).
fn apply(
    step: usize,
    op: &Op,
    model: &mut Model,
    catalog: &Catalog,
    vms: &[Vm; 2],
) -> (Option<ErrorKind>, Option<ErrorKind>) {
    let secs = i64::try_from(step).unwrap() * 10;
    match *op {
        Op::Create { vm, incremental } => {
            let id = BackupId::from_parts(&vms[vm].name, at(secs), u32::try_from(step).unwrap());
            let head = model.heads[vm];
            let parent_record = match (incremental, head) {
                (true, Some(h)) => catalog.backup(&model.backups[h].id).unwrap(),
                _ => None,
            };
            let mut record = BackupRecord::new(
                id.clone(),
                &vms[vm],
                parent_record.as_ref(),
                BackupStatus::Running,
                at(secs),
            );
            if incremental && head.is_none() {
                record.backup_type = sendense_types::BackupType::Incremental;
                record.parent_backup_id = Some(BackupId::from_parts(&vms[vm].name, at(0), 0));
            }
            let expected = if model.active(vm) || (incremental && head.is_none()) {
                Some(ErrorKind::Conflict)
            } else {
                model.backups.push(ModelBackup {
                    id,
                    vm,
                    status: BackupStatus::Running,
                    parent: if incremental { head } else { None },
                    deleted: false,
                });
                None
            };
            (expected, kind(&catalog.create_backup(&record)))
        }
        Op::Complete { pick } | Op::Fail { pick } | Op::Delete { pick } => {
            if model.backups.is_empty() {
                return (None, None);
            }
            let i = pick % model.backups.len();
            let id = model.backups[i].id.clone();
            let (deleted, status, vm, parent) = {
                let b = &model.backups[i];
                (b.deleted, b.status, b.vm, b.parent)
            };
            match op {
                Op::Complete { .. } => {
                    let disks = vms[vm]
                        .disks
                        .iter()
                        .map(|d| sendense_catalog::DiskCompletion {
                            disk_key: d.key,
                            change_id: Some(crate::support::change_id(d.key, secs)),
                            bytes_written: 1,
                            digests: false,
                        })
                        .collect::<Vec<_>>();
                    let expected = if deleted {
                        Some(ErrorKind::NotFound)
                    } else if status != BackupStatus::Running {
                        Some(ErrorKind::Conflict)
                    } else {
                        model.backups[i].status = BackupStatus::Completed;
                        model.heads[vm] = Some(i);
                        None
                    };
                    (
                        expected,
                        kind(&catalog.complete_backup(&id, &disks, at(secs))),
                    )
                }
                Op::Fail { .. } => {
                    let expected = if deleted {
                        Some(ErrorKind::NotFound)
                    } else if !status.is_active() {
                        Some(ErrorKind::Conflict)
                    } else {
                        model.backups[i].status = BackupStatus::Failed;
                        None
                    };
                    (expected, kind(&catalog.fail_backup(&id, "model", at(secs))))
                }
                Op::Delete { .. } => {
                    let has_dependents = model.backups.iter().any(|b| {
                        !b.deleted && b.status != BackupStatus::Failed && b.parent == Some(i)
                    });
                    let expected = if deleted {
                        Some(ErrorKind::NotFound)
                    } else if status.is_active() || has_dependents {
                        Some(ErrorKind::Conflict)
                    } else {
                        model.backups[i].deleted = true;
                        if model.heads[vm] == Some(i) {
                            // The latest remaining completed backup of the VM: the parent
                            // of an incremental, the previous chain's last point for a full.
                            model.heads[vm] = model
                                .backups
                                .iter()
                                .enumerate()
                                .filter(|(_, b)| {
                                    b.vm == vm && !b.deleted && b.status == BackupStatus::Completed
                                })
                                .map(|(j, _)| j)
                                .next_back();
                            assert!(parent.is_none() || model.heads[vm] == parent);
                        }
                        None
                    };
                    (expected, kind(&catalog.delete_backup(&id)))
                }
                Op::Create { .. } => unreachable!("handled above"),
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn catalog_random_operations_match_model(ops in proptest::collection::vec(op(), 1..30)) {
        let f = Fixture::new();
        let vms = [register(&f.catalog, "m0"), register(&f.catalog, "m1")];
        let mut model = Model::default();

        for (step, op) in ops.iter().enumerate() {
            let (expected, actual) = apply(step + 1, op, &mut model, &f.catalog, &vms);
            prop_assert_eq!(expected, actual, "step {} {:?}", step, op);
            for (v, vm) in vms.iter().enumerate() {
                prop_assert_eq!(ids(&f.catalog.chain(&vm.name).unwrap()), model.chain(v));
            }
            let live: Vec<BackupId> =
                model.backups.iter().filter(|b| !b.deleted).map(|b| b.id.clone()).collect();
            prop_assert_eq!(ids(&f.catalog.backups(&BackupQuery::default()).unwrap()), live);
            let running: Vec<BackupId> = model
                .backups
                .iter()
                .filter(|b| !b.deleted && b.status.is_active())
                .map(|b| b.id.clone())
                .collect();
            prop_assert_eq!(ids(&f.catalog.running_backups().unwrap()), running);
        }
    }
}
