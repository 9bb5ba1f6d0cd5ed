//! `files`: file-level restore from a point. Issue 15: "Listing a folder of 10,000 files in a
//! 64 GiB point: under 1 s; downloading a 1 GiB file: at least as fast as `restore` of the same
//! bytes."
//!
//! An ext4 file system of `--sparse-virtual` bytes (default 64 GiB) made by `mkfs.ext4 -d`
//! holds a folder of [`FILES`] small files and the run's test data as one file (SIZE bytes).
//! It is backed up with `sendense-client backup` into a `sendense-hub serve` of its own, and so
//! is the test data as a disk of its own. Two rows:
//! - listing the folder with `sendense-client files ls --json` (process start, TLS, the hub
//!   opening the chain and the file system, JSON of every entry) vs `debugfs -R "ls -l"` on the
//!   raw source disk (local, no network: a reference, not a rival);
//! - downloading the file with `sendense-client files get` vs `sendense-client restore` of the
//!   disk holding the same bytes; both results are compared with the test data.
//!
//! The disks and the hub's data folder are removed at the end unless `--keep`.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::{Ctx, DISK_KEY, failed, loadavg, missing, remove, tool};
use crate::data;
use crate::report::{Measure, Outcome, Row};

/// Files in the listed folder.
pub(super) const FILES: usize = 10_000;
/// The VM whose disk holds the ext4 file system.
const FS_VM: &str = "benchvm-files";
/// The VM whose disk is the test data itself (the restore to compare with).
const DATA_VM: &str = "benchvm-filedata";
/// The big file's path in the file system.
const BIG: &str = "/big.bin";

impl Ctx<'_> {
    /// `files`: listing a big folder and downloading a big file from a point.
    pub(super) fn files(&mut self) {
        let load = loadavg()[0];
        let work = self.dir.join("files");
        let data_dir = work.join("hub");
        self.say(&format!(
            "files: ext4 of {} GiB with {FILES} files and a {} MiB file, backed up; listing and download",
            self.opts.sparse_virtual >> 30,
            self.opts.size >> 20
        ));
        let result = self.files_inner(&work, &data_dir);
        if !self.opts.keep {
            let _ = std::fs::remove_dir_all(&work);
        }
        let list_case = format!("client files ls ({FILES} entries, TLS)");
        let get_case = format!("client files get ({} MiB file)", self.opts.size >> 20);
        match result {
            Ok(((ours_ls, peer_ls), (ours_get, peer_get))) => {
                let mut row = Row::new(
                    "files",
                    &list_case,
                    ours_ls,
                    "debugfs -R 'ls -l' on the raw source (local)",
                    peer_ls,
                );
                row.note = format!(
                    "issue 15: under 1 s for {FILES} files in a {} GiB point",
                    self.opts.sparse_virtual >> 30
                );
                self.push(row, load);
                let mut row = Row::new(
                    "files",
                    &get_case,
                    ours_get,
                    "client restore of a disk of the same bytes",
                    peer_get,
                );
                row.note =
                    "both verified identical to the test data; issue 15: at least as fast as restore"
                        .to_owned();
                self.push(row, load);
            }
            Err(e) => {
                let error = failed(&format!("{e:#}"));
                let row = Row::new("files", &list_case, error.clone(), "-", error.clone());
                self.push(row, load);
                let row = Row::new("files", &get_case, error.clone(), "-", error);
                self.push(row, load);
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn files_inner(
        &self,
        work: &Path,
        data_dir: &Path,
    ) -> Result<((Outcome, Outcome), (Outcome, Outcome))> {
        let (Some(mkfs), Some(debugfs)) = (tool("mkfs.ext4"), tool("debugfs")) else {
            let m = missing("mkfs.ext4 or debugfs (e2fsprogs)");
            return Ok(((m.clone(), m.clone()), (m.clone(), m)));
        };
        std::fs::create_dir_all(work.join("tree/many"))?;
        for i in 0..FILES {
            std::fs::write(
                work.join(format!("tree/many/file-{i:05}.txt")),
                format!("file {i}\n"),
            )?;
        }
        // A hard link, so mkfs copies the test data without a second copy on disk here.
        let big = work.join("tree").join(BIG.trim_start_matches('/'));
        if std::fs::hard_link(&self.raw, &big).is_err() {
            std::fs::copy(&self.raw, &big)?;
        }
        let disk = work.join("fs.raw");
        let mut cmd = Command::new(&mkfs);
        cmd.args([
            "-q",
            "-F",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1",
            "-d",
        ])
        .arg(work.join("tree"))
        .arg(&disk)
        .arg(format!("{}k", self.opts.sparse_virtual >> 10));
        self.timed("mkfs-ext4", cmd)?;
        std::fs::remove_dir_all(work.join("tree"))?;

        let (hub, hub_url) = self.start_hub(data_dir)?;
        let mut cmd = self.backup_command(&hub_url, data_dir, FS_VM, &disk);
        cmd.args(["--type", "full"]);
        let fs_backup = self
            .run_backup(&hub, cmd, None)
            .context("the file system disk's backup failed")?;
        let mut cmd = self.backup_command(&hub_url, data_dir, DATA_VM, &self.raw);
        cmd.args(["--type", "full"]);
        let data_backup = self
            .run_backup(&hub, cmd, None)
            .context("the test data disk's backup failed")?;

        // Listing. Before each timed step, what earlier steps wrote (the file system, the
        // backups) is written back first: the download and the restore both write 1 GiB
        // with `O_DIRECT`, which waits behind the kernel's writeback.
        self.write_back(work)?;
        let mut cmd = self.files_command(&hub_url, data_dir, "ls", &fs_backup.id);
        cmd.args(["/many", "--json"]);
        let cpu0 = hub.cpu().unwrap_or_default();
        let (secs, fin) = self.timed("client-files-ls", cmd)?;
        let hub_cpu = hub.cpu().unwrap_or_default().saturating_sub(cpu0);
        let listing: serde_json::Value =
            serde_json::from_str(fin.stdout.trim()).context("files ls answered no JSON")?;
        let entries = listing["entries"].as_array().map_or(0, Vec::len);
        if entries != FILES {
            bail!("files ls listed {entries} entries, not {FILES}");
        }
        let ours_ls = Outcome::Measured(Measure::new(
            secs,
            fin.stdout.len() as u64,
            (fin.usage.cpu + hub_cpu).as_secs_f64(),
            hub.peak_rss(),
        ));
        let mut cmd = Command::new(&debugfs);
        cmd.args(["-R", "ls -l /many"]).arg(&disk);
        let peer_ls = match self.timed("debugfs-ls", cmd) {
            Ok((secs, fin)) => Outcome::Measured(Measure::new(
                secs,
                fin.stdout.len() as u64,
                fin.usage.cpu.as_secs_f64(),
                Some(fin.usage.max_rss_bytes),
            )),
            Err(e) => failed(&format!("{e:#}")),
        };
        remove(&disk);

        // Download against restore.
        let got = work.join("big.download");
        let mut cmd = self.files_command(&hub_url, data_dir, "get", &fs_backup.id);
        cmd.arg(BIG).arg("--to").arg(&got).arg("--json");
        self.write_back(work)?;
        let cpu0 = hub.cpu().unwrap_or_default();
        let (secs, fin) = self.timed("client-files-get", cmd)?;
        let hub_cpu = hub.cpu().unwrap_or_default().saturating_sub(cpu0);
        if !data::same_content(&got, &self.raw)? {
            bail!("files get did not bring the test data back");
        }
        remove(&got);
        let ours_get = Outcome::Measured(Measure::new(
            secs,
            self.opts.size,
            (fin.usage.cpu + hub_cpu).as_secs_f64(),
            Some(fin.usage.max_rss_bytes),
        ));
        let restored = work.join("restore.raw");
        let mut cmd = Command::new(&self.bins.client);
        cmd.arg("restore");
        self.client_hub_args(&mut cmd, &hub_url, data_dir);
        cmd.args(["--backup", &data_backup.id, "--disk"])
            .arg(DISK_KEY.to_string())
            .arg("--to")
            .arg(&restored)
            .args(["--format", "raw", "--json"]);
        self.write_back(work)?;
        let cpu0 = hub.cpu().unwrap_or_default();
        let (secs, fin) = self.timed("client-restore-filedata", cmd)?;
        let hub_cpu = hub.cpu().unwrap_or_default().saturating_sub(cpu0);
        if !data::same_content(&restored, &self.raw)? {
            bail!("restore did not bring the test data back");
        }
        remove(&restored);
        let peer_get = Outcome::Measured(Measure::new(
            secs,
            self.opts.size,
            (fin.usage.cpu + hub_cpu).as_secs_f64(),
            Some(fin.usage.max_rss_bytes),
        ));
        hub.stop()?;
        Ok(((ours_ls, peer_ls), (ours_get, peer_get)))
    }

    /// `sendense-client files SUB` of disk `DISK_KEY` of `backup`; the caller adds the rest.
    fn files_command(&self, hub_url: &str, data_dir: &Path, sub: &str, backup: &str) -> Command {
        let mut cmd = Command::new(&self.bins.client);
        cmd.args(["files", sub]);
        self.client_hub_args(&mut cmd, hub_url, data_dir);
        cmd.args(["--backup", backup, "--disk"])
            .arg(DISK_KEY.to_string());
        cmd
    }
}
