//! `nbd-source`: a full backup from a QEMU NBD export (issue #19) against `nbdcopy` of the
//! same export into `qemu-nbd` of a new QCOW2. Target: ours at least 1.5x the peer.
//!
//! The run's test disk is converted to a QCOW2 (`qemu-img convert`, synced to disk), read once
//! so both sides start from a warm page cache, and served read-only by one
//! `qemu-nbd --shared=8` (which then advertises multi-conn) for both sides. Ours:
//! `sendense-client backup --nbd-source 2000=nbd://ADDR/ --type full` into a
//! `sendense-hub serve` of its own (TLS, durable when
//! `completed`). Peer, right after: `nbdcopy --flush nbd://ADDR/ nbd://PEER/` where PEER is
//! `qemu-nbd --cache=none` of a new QCOW2 (plain, durable after the flush). Both sides count
//! the disk's size; CPU is the copier's and the writing server's; RSS is the writing server's.
//! Our backup is then compared with the source by `qemu-img compare` once the hub stopped.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::{Ctx, DISK_KEY, failed, loadavg, missing, outcome, qemu_nbd_command, remove, tool};
use crate::proc::{Proc, free_addr};
use crate::report::{Measure, Outcome, Row};

/// The VM of the scenario's backup.
const NBD_VM: &str = "benchvm-nbd";

impl Ctx<'_> {
    pub(super) fn nbd_source(&mut self) {
        let load = loadavg()[0];
        let case = "client backup --nbd-source (full, TLS to the hub)";
        let peer_name = "nbdcopy --flush qemu-nbd -> qemu-nbd --cache=none (new QCOW2)";
        let tools = (tool("qemu-img"), tool("qemu-nbd"), tool("nbdcopy"));
        let (Some(qemu_img), Some(qemu_nbd), Some(nbdcopy)) = tools else {
            let which = match tools {
                (None, ..) => "qemu-img",
                (_, None, _) => "qemu-nbd",
                _ => "nbdcopy",
            };
            self.push(
                Row::new(
                    "nbd-source",
                    case,
                    missing(which),
                    peer_name,
                    missing(which),
                ),
                load,
            );
            return;
        };
        self.say("nbd-source: converting the test disk to QCOW2 and serving it with qemu-nbd");
        let source = self.dir.join("nbd-source.qcow2");
        let data_dir = self.dir.join("hub-nbd-source");
        let result = self.nbd_source_sides(&qemu_img, &qemu_nbd, &nbdcopy, &source, &data_dir);
        remove(&source);
        if !self.opts.keep {
            let _ = std::fs::remove_dir_all(&data_dir);
        }
        let row = match result {
            Ok((ours, peer, note)) => {
                let mut row = Row::new("nbd-source", case, ours, peer_name, peer);
                row.note = note;
                row
            }
            Err(e) => {
                let error = failed(&format!("{e:#}"));
                Row::new("nbd-source", case, error.clone(), peer_name, error)
            }
        };
        self.push(row, load);
    }

    fn nbd_source_sides(
        &self,
        qemu_img: &Path,
        qemu_nbd: &Path,
        nbdcopy: &Path,
        source: &Path,
        data_dir: &Path,
    ) -> Result<(Outcome, Outcome, String)> {
        let mut convert = Command::new(qemu_img);
        convert
            .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
            .arg(&self.raw)
            .arg(source);
        Proc::spawn("qemu-img-convert-source", convert, &self.logs, false)?.wait()?;
        // Write the converted source back to disk first: otherwise ours, measured first,
        // competes with the kernel flushing the conversion's dirty pages and the peer doesn't.
        // Then warm the page cache once, so neither side pays for the first read alone.
        let mut file = std::fs::File::open(source).context("reading the source QCOW2")?;
        file.sync_all()
            .context("writing the source QCOW2 to disk")?;
        std::io::copy(&mut file, &mut std::io::sink())?;
        let addr = free_addr()?;
        let mut serve = Command::new(qemu_nbd);
        serve
            .args(["--read-only", "--shared=8", "-f", "qcow2", "--persistent"])
            .arg(format!("--bind={}", addr.ip()))
            .arg(format!("--port={}", addr.port()))
            .arg(source);
        let mut server = Proc::spawn("qemu-nbd-source", serve, &self.logs, false)?;
        server.wait_listening(addr)?;
        let uri = format!("nbd://{addr}/");

        self.say("nbd-source: sendense-client backup --nbd-source into sendense-hub serve");
        let (hub, hub_url) = self.start_hub(data_dir)?;
        let mut cmd = Command::new(&self.bins.client);
        cmd.arg("backup");
        self.client_hub_args(&mut cmd, &hub_url, data_dir);
        cmd.args(["--vm", NBD_VM, "--nbd-source"])
            .arg(format!("{DISK_KEY}={uri}"))
            .args(["--type", "full", "--json"]);
        let ours = self.run_backup(&hub, cmd, Some(self.opts.size));
        hub.stop()?;

        self.say("nbd-source: nbdcopy from the same qemu-nbd into qemu-nbd of a new QCOW2");
        let peer = outcome(self.nbdcopy_from_nbd(qemu_img, qemu_nbd, nbdcopy, &uri));
        server.stop()?;

        let ours = ours?;
        let image = data_dir
            .join("repository")
            .join(NBD_VM)
            .join(format!("disk-{DISK_KEY}"))
            .join(format!("{}.qcow2", ours.id));
        let mut compare = Command::new(qemu_img);
        compare
            .args(["compare", "-q", "-f", "qcow2", "-F", "qcow2"])
            .arg(&image)
            .arg(source);
        let same = Proc::spawn("qemu-img-compare-nbd", compare, &self.logs, false)?.wait();
        if same.is_err() {
            bail!("our backup from the NBD source differs from the source");
        }
        let note = format!(
            "source served by qemu-nbd --read-only --shared=8 (multi-conn), warm page cache; ours verified identical with qemu-img compare; {} bytes sent; client peak RSS {} MiB",
            ours.bytes_sent,
            ours.client_rss >> 20
        );
        Ok((Outcome::Measured(ours.measure), peer, note))
    }

    /// `nbdcopy --flush FROM qemu-nbd-of-a-new-QCOW2`, timed; the server is stopped after.
    fn nbdcopy_from_nbd(
        &self,
        qemu_img: &Path,
        qemu_nbd: &Path,
        nbdcopy: &Path,
        from: &str,
    ) -> Result<Measure> {
        let image = self.dir.join("nbd-source-peer.qcow2");
        let mut create = Command::new(qemu_img);
        create
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&image)
            .arg(self.opts.size.to_string());
        Proc::spawn("qemu-img-create-nbd-peer", create, &self.logs, false)?.wait()?;
        let addr = free_addr()?;
        let cmd = qemu_nbd_command(qemu_nbd, addr, None, false, &image);
        let mut server = Proc::spawn("qemu-nbd-peer", cmd, &self.logs, false)?;
        server.wait_listening(addr)?;
        let cpu0 = server.cpu().unwrap_or_default();
        let mut copy = Command::new(nbdcopy);
        copy.arg("--flush").arg(from).arg(format!("nbd://{addr}/"));
        let timed = self.timed("nbdcopy-nbd-source", copy);
        let server_cpu = server.cpu().unwrap_or_default().saturating_sub(cpu0);
        let rss = server.peak_rss();
        server.stop()?;
        remove(&image);
        let (secs, fin) = timed?;
        Ok(Measure::new(
            secs,
            self.opts.size,
            (fin.usage.cpu + server_cpu).as_secs_f64(),
            rss,
        ))
    }
}
