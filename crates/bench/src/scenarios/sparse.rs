//! `sparse`: a full backup of a large sparse disk against one of a dense disk holding the same
//! data. Issue 5: "A sparse 64 GiB disk holding 1 GiB of data costs about what 1 GiB does.
//! Client RSS ≤ 128 MiB whatever the disk size."
//!
//! The dense disk is the run's test disk; the sparse one is made from it (`set_len` to the
//! virtual size, then its bytes copied in `RUNS` runs spread evenly across it). Both go through
//! `sendense-client backup --type full` into one `sendense-hub serve` of their own, as two VMs,
//! the sparse one first, so the hub's `VmHWM` read after it is the sparse backup's alone. Once
//! the hub has stopped, `qemu-img compare` checks each repository image against its source.
//! The sparse disk and the hub's data folder are removed at the end of the scenario unless
//! `--keep`: disk space is short where this runs.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use super::{BackupRun, Ctx, DISK_KEY, failed, loadavg, mib, missing, remove, tool};
use crate::data;
use crate::proc::Proc;
use crate::report::{Measure, Outcome, Row, SparseFigures, SparseSide};

/// Runs the data is spread in across the sparse disk.
const RUNS: u64 = 64;
/// The VM whose disk is the sparse file.
const SPARSE_VM: &str = "benchvm-sparse";
/// The VM whose disk is the dense file.
const DENSE_VM: &str = "benchvm-dense";

/// One backup of the scenario, with its image's facts.
#[derive(Debug)]
struct Side {
    run: BackupRun,
    image_bytes: u64,
    image_allocated_bytes: u64,
    /// `Ok` when `qemu-img compare` found the image identical to its source; otherwise the
    /// outcome to report for that side (qemu-img missing, or the comparison failed).
    verified: Result<(), Outcome>,
}

impl Side {
    fn outcome(&self, data_bytes: u64) -> Outcome {
        match &self.verified {
            Ok(()) => Outcome::Measured(Measure::new(
                self.run.measure.seconds,
                data_bytes,
                self.run.measure.cpu_seconds,
                Some(self.run.client_rss),
            )),
            Err(o) => o.clone(),
        }
    }

    fn figures(&self) -> SparseSide {
        SparseSide {
            seconds: self.run.measure.seconds,
            client_peak_rss_bytes: self.run.client_rss,
            bytes_sent: self.run.bytes_sent,
            image_bytes: self.image_bytes,
            image_allocated_bytes: self.image_allocated_bytes,
            verified: self.verified.is_ok(),
        }
    }
}

impl Ctx<'_> {
    /// `sparse`: our full backup of a sparse disk vs of a dense disk holding the same data.
    pub(super) fn sparse(&mut self) {
        let load = loadavg()[0];
        let virtual_size = self.opts.sparse_virtual;
        let case = format!("client full, {} sparse", human(virtual_size));
        let peer_name = format!("client full, {} dense", human(self.opts.size));
        let sparse = self.dir.join("sparse.raw");
        let data_dir = self.dir.join("hub-sparse");
        self.say(&format!(
            "sparse: {} MiB of data in {RUNS} runs across a {} disk, backed up; then the dense disk",
            self.opts.size >> 20,
            human(virtual_size)
        ));
        let result = self.sparse_backups(&sparse, &data_dir);
        if !self.opts.keep {
            remove(&sparse);
            let _ = std::fs::remove_dir_all(&data_dir);
        }
        let row = match result {
            Ok((sparse, dense, hub_rss)) => {
                let mut row = Row::new(
                    "sparse",
                    &case,
                    sparse.outcome(self.opts.size),
                    &peer_name,
                    dense.outcome(self.opts.size),
                );
                row.note = self.sparse_note(&sparse, &dense, hub_rss);
                row.sparse = Some(SparseFigures {
                    virtual_bytes: virtual_size,
                    data_bytes: self.opts.size,
                    runs: RUNS,
                    sparse: sparse.figures(),
                    dense: dense.figures(),
                    hub_peak_rss_bytes: hub_rss[1],
                });
                row
            }
            Err(e) => {
                let error = failed(&format!("{e:#}"));
                Row::new("sparse", &case, error.clone(), &peer_name, error)
            }
        };
        self.push(row, load);
    }

    /// Makes the sparse disk, backs up both disks into a hub of their own and checks both
    /// images; answers the sparse side, the dense side, and the hub's peak RSS after the sparse
    /// backup and after both.
    fn sparse_backups(
        &self,
        sparse: &Path,
        data_dir: &Path,
    ) -> Result<(Side, Side, [Option<u64>; 2])> {
        let layout = data::sparse_layout(self.opts.size, self.opts.sparse_virtual, RUNS)?;
        data::write_sparse(&self.raw, sparse, self.opts.sparse_virtual, &layout)?;
        let (hub, hub_url) = self.start_hub(data_dir)?;
        let mut cmd = self.backup_command(&hub_url, data_dir, SPARSE_VM, sparse);
        cmd.args(["--type", "full"]);
        let sparse_run = self
            .run_backup(&hub, cmd, Some(self.opts.size))
            .context("the sparse disk's backup failed")?;
        let hub_rss_sparse = hub.peak_rss();
        let mut cmd = self.backup_command(&hub_url, data_dir, DENSE_VM, &self.raw);
        cmd.args(["--type", "full"]);
        let dense_run = self
            .run_backup(&hub, cmd, Some(self.opts.size))
            .context("the dense disk's backup failed")?;
        let hub_rss_both = hub.peak_rss();
        hub.stop()?;
        let qemu_img = tool("qemu-img");
        let sparse_side =
            self.side(qemu_img.as_deref(), data_dir, SPARSE_VM, sparse_run, sparse)?;
        let dense_side = self.side(
            qemu_img.as_deref(),
            data_dir,
            DENSE_VM,
            dense_run,
            &self.raw,
        )?;
        Ok((sparse_side, dense_side, [hub_rss_sparse, hub_rss_both]))
    }

    /// The facts of `run`'s repository image, checked against `source`.
    fn side(
        &self,
        qemu_img: Option<&Path>,
        data_dir: &Path,
        vm: &str,
        run: BackupRun,
        source: &Path,
    ) -> Result<Side> {
        let image = data_dir
            .join("repository")
            .join(vm)
            .join(format!("disk-{DISK_KEY}"))
            .join(format!("{}.qcow2", run.id));
        let meta = std::fs::metadata(&image)
            .with_context(|| format!("the backup's image {} is not there", image.display()))?;
        let verified = match qemu_img {
            None => Err(missing("qemu-img")),
            Some(q) => self
                .compare(q, source, &image)
                .map_err(|e| failed(&format!("{e:#}"))),
        };
        Ok(Side {
            run,
            image_bytes: meta.len(),
            image_allocated_bytes: meta.blocks().saturating_mul(512),
            verified,
        })
    }

    /// `qemu-img compare -f raw -F qcow2 SOURCE IMAGE`: an error unless identical.
    fn compare(&self, qemu_img: &Path, source: &Path, image: &Path) -> Result<()> {
        let mut cmd = Command::new(qemu_img);
        cmd.args(["compare", "-q", "-f", "raw", "-F", "qcow2"])
            .arg(source)
            .arg(image);
        Proc::spawn("qemu-img-compare", cmd, &self.logs, false)?
            .wait()
            .with_context(|| {
                format!(
                    "{} differs from its source {} (qemu-img compare)",
                    image.display(),
                    source.display()
                )
            })?;
        Ok(())
    }

    fn sparse_note(&self, sparse: &Side, dense: &Side, hub_rss: [Option<u64>; 2]) -> String {
        let verdict = |s: &Side| {
            if s.verified.is_ok() {
                "identical to"
            } else {
                "NOT verified identical to"
            }
        };
        format!(
            "{} MiB of data in {RUNS} runs across {} vs the dense {} MiB; MB/s counts the data; \
             CPU is client + hub; RSS is the client's; wall {:.2} s sparse vs {:.2} s dense; \
             client peak RSS {} MiB sparse vs {} MiB dense; hub peak RSS {} after the sparse \
             backup, {} after both; repository images: sparse {} MiB long, {} MiB allocated, \
             dense {} MiB long, {} MiB allocated; bytes sent {} vs {}; qemu-img compare: \
             sparse image {} its source, dense image {} its source",
            self.opts.size >> 20,
            human(self.opts.sparse_virtual),
            self.opts.size >> 20,
            sparse.run.measure.seconds,
            dense.run.measure.seconds,
            sparse.run.client_rss >> 20,
            dense.run.client_rss >> 20,
            mib(hub_rss[0]),
            mib(hub_rss[1]),
            sparse.image_bytes >> 20,
            sparse.image_allocated_bytes >> 20,
            dense.image_bytes >> 20,
            dense.image_allocated_bytes >> 20,
            sparse.run.bytes_sent,
            dense.run.bytes_sent,
            verdict(sparse),
            verdict(dense),
        )
    }
}

/// `64 GiB`, `256 MiB`, or bytes, whichever is exact.
fn human(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes.is_multiple_of(1 << 30) {
        format!("{} GiB", bytes >> 30)
    } else if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_whole_gibibytes_are_named_in_gib() {
        assert_eq!(human(64 << 30), "64 GiB");
    }

    #[test]
    fn human_odd_size_is_bytes() {
        assert_eq!(human((1 << 20) + 1), "1048577 B");
    }
}
