//! `merge`: removing the oldest point of the chain the backups made (the full), which merges
//! the incremental's layer (`--changed PERCENT` of the disk) into the full's file. Issue 14: "A
//! merge of a 2% layer into a 2 GiB base: at most 5% of the time of that base's full backup,
//! and faster than `qemu-img commit` of the same layer."
//!
//! Ours is the hub's own `Maintenance::remove_points`, run in the harness on the stopped hub's
//! data folder: the journalled step, [`sendense_qcow2::Image::commit`], the rename of the base
//! over the incremental's file with folder fsyncs, and the catalog transaction, timed together.
//! The peer is `qemu-img commit -d` (writeback cache, which flushes at close) of copies of the
//! same two files followed by `sync -f BASE`, timed together; copying is not timed. Both
//! results are compared with `qemu-img compare`. The full backup's time comes from the
//! `ingest` run of the same disk.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use sendense_catalog::Catalog;
use sendense_hub::engine::{Engine, REPOSITORY_DIR};
use sendense_hub::maintenance::Maintenance;
use sendense_nbd::ExportRegistry;

use super::inproc::self_cpu;
use super::{BackupRun, Ctx, DISK_KEY, VM, loadavg, missing, outcome, tool};
use crate::proc::Proc;
use crate::report::{Measure, Outcome, Row};

impl Ctx<'_> {
    /// `merge` (see the module docs) on the stopped hub's `data_dir`, whose chain is `full`
    /// then the incremental `incr_id`.
    pub(super) fn merge(&mut self, data_dir: &Path, full: &BackupRun, incr_id: &str) {
        let load = loadavg()[0];
        let folder = data_dir
            .join(REPOSITORY_DIR)
            .join(VM)
            .join(format!("disk-{DISK_KEY}"));
        let base = folder.join(format!("{}.qcow2", full.id));
        let layer = folder.join(format!("{incr_id}.qcow2"));
        let peer_dir = self.dir.join("merge-peer");
        self.say("merge: qemu-img commit -d of copies of the full and the incremental");
        let peer = match tool("qemu-img") {
            Some(qemu_img) => outcome(self.commit_peer(&qemu_img, &base, &layer, &peer_dir)),
            None => missing("qemu-img"),
        };
        self.say("merge: removing the full (our merge of the incremental into it)");
        let ours = outcome(self.merge_ours(data_dir, &full.id));
        let verified = match (&ours, &peer, tool("qemu-img")) {
            (Outcome::Measured(_), Outcome::Measured(_), Some(qemu_img)) => {
                let peer_base = peer_dir.join(base.file_name().unwrap_or_default());
                Command::new(qemu_img)
                    .args(["compare", "-f", "qcow2", "-F", "qcow2"])
                    .arg(&layer)
                    .arg(&peer_base)
                    .output()
                    .is_ok_and(|o| o.status.success())
            }
            _ => false,
        };
        let _ = std::fs::remove_dir_all(&peer_dir);
        let verdict = if verified {
            "identical to"
        } else {
            "NOT verified against"
        };
        let mut row = Row::new(
            "merge",
            &format!(
                "remove the full: merge a {}% layer into it (journal, commit, rename)",
                self.opts.changed_percent
            ),
            ours.clone(),
            "qemu-img commit -d + sync -f",
            peer,
        );
        row.note = format!("our merged image {verdict} qemu-img's; MB/s counts the layer's bytes");
        self.push(row, load);
        let mut row = Row::new(
            "merge",
            "the same merge, against the base's full backup",
            ours.clone(),
            "our full backup of that base",
            Outcome::Measured(full.measure),
        );
        if let Outcome::Measured(m) = &ours {
            let share = m.seconds * 100.0 / full.measure.seconds.max(f64::MIN_POSITIVE);
            row.note = format!("the merge takes {share:.2}% of the full backup's time");
        }
        self.push(row, load);
    }

    /// `qemu-img commit -d` of copies of `base` and `layer` in `dir` (same names, so the
    /// layer's relative backing name finds the copy), then `sync -f` of the base.
    fn commit_peer(
        &self,
        qemu_img: &Path,
        base: &Path,
        layer: &Path,
        dir: &Path,
    ) -> Result<Measure> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let copy = |from: &Path| -> Result<PathBuf> {
            let to = dir.join(from.file_name().unwrap_or_default());
            std::fs::copy(from, &to)
                .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
            Ok(to)
        };
        let peer_base = copy(base)?;
        let peer_layer = copy(layer)?;
        let bytes = std::fs::metadata(&peer_layer)?.len();
        let start = Instant::now();
        let mut cmd = Command::new(qemu_img);
        cmd.args(["commit", "-d", "-f", "qcow2"]).arg(&peer_layer);
        let commit = Proc::spawn("qemu-img-commit", cmd, &self.logs, false)?.wait()?;
        let mut sync = Command::new("sync");
        sync.arg("-f").arg(&peer_base);
        let synced = Proc::spawn("sync", sync, &self.logs, false)?.wait()?;
        let secs = start.elapsed().as_secs_f64();
        Ok(Measure::new(
            secs,
            bytes,
            (commit.usage.cpu + synced.usage.cpu).as_secs_f64(),
            Some(commit.usage.max_rss_bytes),
        ))
    }

    /// The hub's removal of the full `full_id`, in this process, on the stopped hub's data.
    fn merge_ours(&self, data_dir: &Path, full_id: &str) -> Result<Measure> {
        let catalog = Arc::new(Catalog::open_in(data_dir).context("cannot open the catalog")?);
        let repository = data_dir.join(REPOSITORY_DIR);
        let engine = Arc::new(Engine::new(
            Arc::clone(&catalog),
            repository.clone(),
            Arc::new(ExportRegistry::new()),
            "nbds://127.0.0.1:1".to_owned(),
        ));
        let maintenance = Maintenance::new(catalog, repository, engine);
        let vm = VM.parse().context("the bench VM's name")?;
        let id = full_id.parse().context("the full's backup id")?;
        let cpu = self_cpu();
        let start = Instant::now();
        let report = maintenance
            .remove_points(&vm, &[id], &|_, _| {})
            .context("removing the full")?;
        let secs = start.elapsed().as_secs_f64();
        if report.merges != 1 {
            bail!("removing the full ran {} merges, not 1", report.merges);
        }
        Ok(Measure::new(
            secs,
            report.bytes_moved,
            self_cpu().saturating_sub(cpu).as_secs_f64(),
            None,
        ))
    }
}
