//! The scenarios: each runs our side and its peer back to back on the same file and produces
//! report rows. Order is fixed (qcow2, serve, memory, nbd-tls-cost, instant, ingest, incremental,
//! restore, sparse, files, nbd-source, vm-restore, object) because the incremental changes the source disk and the restore reads the
//! chain the backups made; `sparse` backs up whatever the source disk holds by then, twice.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::data;
use crate::proc::{Proc, free_addr};
use crate::report::{Machine, Measure, Outcome, Report, Row};
use crate::{Options, Scenario};

mod files;
mod inproc;
mod instant;
mod merge;
mod nbdsource;
mod object;
mod sparse;
mod verify;
mod vmrestore;

const VM: &str = "benchvm";
const DISK_KEY: u32 = 2000;
/// Folder (inside the hub's data folder) of the bench client's NBD certificate.
const CLIENT_TLS_DIR: &str = "bench-client-tls";

/// Runs the scenarios of `opts` and answers the report.
///
/// # Errors
/// The binaries are not found, or the data folder or test disk cannot be made. A failing case
/// is not an error: it is reported as `failed` in its row.
pub fn run(opts: &Options) -> Result<Report> {
    let bins = Bins::locate(opts.bin_dir.as_deref())?;
    let parent = opts.dir.clone().unwrap_or_else(default_parent);
    let work = WorkDir::create(&parent, opts.keep)?;
    let mut ctx = Ctx {
        opts,
        bins,
        dir: work.path.clone(),
        logs: work.path.join("logs"),
        raw: work.path.join("disk.raw"),
        rows: Vec::new(),
    };
    let load_start = loadavg();
    ctx.say(&format!(
        "writing {} MiB of random data into {}",
        opts.size >> 20,
        ctx.raw.display()
    ));
    data::write_random(&ctx.raw, opts.size, 0x5e4d_e45e)?;
    let mut wanted = if opts.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        opts.scenarios.clone()
    };
    wanted.sort();
    wanted.dedup();
    if wanted.contains(&Scenario::Qcow2) {
        ctx.qcow2();
    }
    if wanted.contains(&Scenario::Serve) {
        ctx.serve();
    }
    if wanted.contains(&Scenario::Memory) {
        ctx.memory();
    }
    if wanted.contains(&Scenario::NbdTlsCost) {
        ctx.nbd_tls_cost();
    }
    if wanted.contains(&Scenario::Instant) {
        ctx.instant();
    }
    if wanted.iter().any(|s| {
        matches!(
            s,
            Scenario::Ingest
                | Scenario::Incremental
                | Scenario::Restore
                | Scenario::Merge
                | Scenario::Verify
        )
    }) {
        ctx.backups(&wanted);
    }
    if wanted.contains(&Scenario::Sparse) {
        ctx.sparse();
    }
    if wanted.contains(&Scenario::Files) {
        ctx.files();
    }
    if wanted.contains(&Scenario::NbdSource) {
        ctx.nbd_source();
    }
    if wanted.contains(&Scenario::VmRestore) {
        ctx.vm_restore();
    }
    if wanted.contains(&Scenario::Object) {
        ctx.object();
    }
    let machine = Machine {
        nproc: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        cpu_model: cpu_model(),
        load_start,
        load_end: loadavg(),
    };
    Ok(Report {
        machine,
        size_bytes: opts.size,
        changed_percent: opts.changed_percent,
        rows: ctx.rows,
    })
}

/// Our binaries.
#[derive(Debug)]
struct Bins {
    hub: PathBuf,
    client: PathBuf,
}

impl Bins {
    fn locate(dir: Option<&Path>) -> Result<Self> {
        let dir = match dir {
            Some(d) => d.to_path_buf(),
            None => std::env::current_exe()
                .context("cannot find this executable")?
                .parent()
                .context("this executable has no folder")?
                .to_path_buf(),
        };
        let hub = dir.join("sendense-hub");
        let client = dir.join("sendense-client");
        for b in [&hub, &client] {
            if !b.is_file() {
                bail!(
                    "{} not found: build the binaries (cargo build --release --bins) or pass --bin-dir",
                    b.display()
                );
            }
        }
        Ok(Self { hub, client })
    }
}

/// The run's data folder, removed on drop unless kept.
#[derive(Debug)]
struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl WorkDir {
    fn create(parent: &Path, keep: bool) -> Result<Self> {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = parent.join(format!("sendense-bench-{}-{stamp:x}", std::process::id()));
        std::fs::create_dir(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self { path, keep })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn default_parent() -> PathBuf {
    let var_tmp = PathBuf::from("/var/tmp");
    if var_tmp.is_dir() {
        var_tmp
    } else {
        std::env::temp_dir()
    }
}

/// A full or incremental backup made by our client.
#[derive(Debug, Clone)]
struct BackupRun {
    id: String,
    measure: Measure,
    bytes_sent: u64,
    client_rss: u64,
}

struct Ctx<'a> {
    opts: &'a Options,
    bins: Bins,
    dir: PathBuf,
    logs: PathBuf,
    raw: PathBuf,
    rows: Vec<Row>,
}

impl Ctx<'_> {
    /// Writes back the dirty pages of the file system holding `dir` (`sync -f`), untimed:
    /// called before a timed step, so that it does not pay for the kernel writing back what
    /// earlier steps wrote (and the side measured next does not escape it).
    pub(super) fn write_back(&self, dir: &Path) -> Result<()> {
        let mut sync = Command::new("sync");
        sync.arg("-f").arg(dir);
        Proc::spawn("sync", sync, &self.logs, false)?.wait()?;
        Ok(())
    }

    fn say(&self, what: &str) {
        if self.opts.verbose {
            eprintln!("sendense-bench: {what}");
        }
    }

    fn push(&mut self, mut row: Row, load: f64) {
        row.load_1m = load;
        self.rows.push(row);
    }

    // ---- qcow2 -------------------------------------------------------------------------------

    fn qcow2(&mut self) {
        let load = loadavg()[0];
        self.say("qcow2: image convert (2 threads), qemu-img convert, image convert (1 thread)");
        let ours2 = outcome(self.convert_ours(2));
        let peer = match tool("qemu-img") {
            Some(qemu_img) => outcome(self.convert_peer(&qemu_img)),
            None => missing("qemu-img"),
        };
        let ours1 = outcome(self.convert_ours(1));
        let peer_name = "qemu-img convert -O qcow2 + sync -f";
        let mut r2 = Row::new(
            "qcow2",
            "image convert -O qcow2 -j2",
            ours2,
            peer_name,
            peer.clone(),
        );
        r2.note = "ours fsyncs at finalize; qemu-img runs with its default cache (writeback), then `sync -f OUT`, timed together".into();
        self.push(r2, load);
        let r1 = Row::new(
            "qcow2",
            "image convert -O qcow2 -j1",
            ours1,
            peer_name,
            peer,
        );
        self.push(r1, load);
    }

    fn convert_ours(&self, threads: usize) -> Result<Measure> {
        let out = self.dir.join("convert-ours.qcow2");
        let mut cmd = Command::new(&self.bins.hub);
        cmd.args(["image", "convert", "-O", "qcow2", "--threads"])
            .arg(threads.to_string())
            .arg(&self.raw)
            .arg(&out);
        let (secs, fin) = self.timed("hub-convert", cmd)?;
        remove(&out);
        Ok(Measure::new(
            secs,
            self.opts.size,
            fin.usage.cpu.as_secs_f64(),
            Some(fin.usage.max_rss_bytes),
        ))
    }

    fn convert_peer(&self, qemu_img: &Path) -> Result<Measure> {
        let out = self.dir.join("convert-peer.qcow2");
        let start = Instant::now();
        let mut cmd = Command::new(qemu_img);
        cmd.args(["convert", "-O", "qcow2"])
            .arg(&self.raw)
            .arg(&out);
        let convert = Proc::spawn("qemu-img-convert", cmd, &self.logs, false)?.wait()?;
        let mut sync = Command::new("sync");
        sync.arg("-f").arg(&out);
        let synced = Proc::spawn("sync", sync, &self.logs, false)?.wait()?;
        let secs = start.elapsed().as_secs_f64();
        remove(&out);
        Ok(Measure::new(
            secs,
            self.opts.size,
            (convert.usage.cpu + synced.usage.cpu).as_secs_f64(),
            Some(convert.usage.max_rss_bytes),
        ))
    }

    // ---- serve -------------------------------------------------------------------------------

    fn serve(&mut self) {
        let certs = self.dir.join("certs");
        let certs_ready = sendense_nbd::tls::ensure_certificates(&certs, &[])
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!(e).context("cannot make TLS certificates"));
        for tls in [false, true] {
            let load = loadavg()[0];
            let label = if tls { "TLS" } else { "plain" };
            self.say(&format!(
                "serve ({label}): nbdcopy into image serve, then into qemu-nbd"
            ));
            let tls_dir = if tls { Some(certs.as_path()) } else { None };
            let ours = match (&certs_ready, tool("nbdcopy")) {
                (Err(e), _) if tls => failed(&format!("{e:#}")),
                (_, None) => missing("nbdcopy"),
                (_, Some(nbdcopy)) => outcome(self.serve_ours(&nbdcopy, tls_dir)),
            };
            let peer = match (
                &certs_ready,
                tool("nbdcopy"),
                tool("qemu-nbd"),
                tool("qemu-img"),
            ) {
                (Err(e), ..) if tls => failed(&format!("{e:#}")),
                (_, None, ..) => missing("nbdcopy"),
                (_, _, None, _) => missing("qemu-nbd"),
                (_, _, _, None) => missing("qemu-img"),
                (_, Some(nbdcopy), Some(qemu_nbd), Some(qemu_img)) => {
                    outcome(self.nbdcopy_into_qemu_nbd(&nbdcopy, &qemu_nbd, &qemu_img, tls_dir))
                }
            };
            let case = format!("nbdcopy -> image serve {label}");
            let peer_name = format!("nbdcopy -> qemu-nbd --cache=none {label}");
            let mut row = Row::new("serve", &case, ours, &peer_name, peer);
            row.note = "RSS is the server's; CPU is nbdcopy + server".into();
            self.push(row, load);
        }
    }

    fn serve_ours(&self, nbdcopy: &Path, tls_dir: Option<&Path>) -> Result<Measure> {
        let image = self.dir.join("serve-ours.qcow2");
        let mut create = Command::new(&self.bins.hub);
        create
            .args(["image", "create"])
            .arg(&image)
            .arg(self.opts.size.to_string());
        Proc::spawn("hub-create", create, &self.logs, false)?.wait()?;
        let addr = free_addr()?;
        let mut cmd = Command::new(&self.bins.hub);
        cmd.args(["image", "serve", "--listen"])
            .arg(addr.to_string());
        if let Some(dir) = tls_dir {
            cmd.arg("--tls-dir").arg(dir);
        }
        cmd.arg(&image);
        let result = self.nbdcopy_into_server("hub-image-serve", cmd, addr, nbdcopy, tls_dir);
        remove(&image);
        result
    }

    fn nbdcopy_into_qemu_nbd(
        &self,
        nbdcopy: &Path,
        qemu_nbd: &Path,
        qemu_img: &Path,
        tls_dir: Option<&Path>,
    ) -> Result<Measure> {
        let image = self.dir.join("serve-peer.qcow2");
        let mut create = Command::new(qemu_img);
        create
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&image)
            .arg(self.opts.size.to_string());
        Proc::spawn("qemu-img-create", create, &self.logs, false)?.wait()?;
        let addr = free_addr()?;
        let cmd = qemu_nbd_command(qemu_nbd, addr, tls_dir, false, &image);
        let result = self.nbdcopy_into_server("qemu-nbd", cmd, addr, nbdcopy, tls_dir);
        remove(&image);
        result
    }

    /// Starts a server, times `nbdcopy --flush RAW URI` into it, stops it.
    fn nbdcopy_into_server(
        &self,
        name: &str,
        server: Command,
        addr: std::net::SocketAddr,
        nbdcopy: &Path,
        tls_dir: Option<&Path>,
    ) -> Result<Measure> {
        let mut server = Proc::spawn(name, server, &self.logs, false)?;
        server.wait_listening(addr)?;
        let cpu0 = server.cpu().unwrap_or_default();
        let mut copy = Command::new(nbdcopy);
        copy.arg("--flush")
            .arg(&self.raw)
            .arg(nbd_uri(addr, tls_dir));
        let (secs, fin) = self.timed("nbdcopy", copy)?;
        let server_cpu = server.cpu().unwrap_or_default().saturating_sub(cpu0);
        let rss = server.peak_rss();
        server.stop()?;
        Ok(Measure::new(
            secs,
            self.opts.size,
            (fin.usage.cpu + server_cpu).as_secs_f64(),
            rss,
        ))
    }

    // ---- ingest, incremental, restore ----------------------------------------------------------

    fn backups(&mut self, wanted: &[Scenario]) {
        if let Err(e) = self.backups_inner(wanted) {
            let load = loadavg()[0];
            let error = failed(&format!("{e:#}"));
            let done: Vec<String> = self.rows.iter().map(|r| r.scenario.clone()).collect();
            for s in wanted
                .iter()
                .filter(|s| {
                    matches!(
                        s,
                        Scenario::Ingest
                            | Scenario::Incremental
                            | Scenario::Restore
                            | Scenario::Merge
                            | Scenario::Verify
                    )
                })
                .filter(|s| !done.iter().any(|d| d == s.name()))
            {
                let row = Row::new(
                    s.name(),
                    "sendense-client + sendense-hub serve",
                    error.clone(),
                    "-",
                    error.clone(),
                );
                self.push(row, load);
            }
        }
    }

    fn backups_inner(&mut self, wanted: &[Scenario]) -> Result<()> {
        let data_dir = self.dir.join("hub");
        let (hub, hub_url) = self.start_hub(&data_dir)?;

        // Full backup.
        let load = loadavg()[0];
        self.say("ingest: full backup through sendense-client into sendense-hub serve");
        let full = self.backup(&hub, &hub_url, &data_dir, None, None)?;
        let hub_rss_full = hub.peak_rss();
        if wanted.contains(&Scenario::Ingest) {
            self.say("ingest: nbdcopy into qemu-nbd");
            let peer = match (tool("nbdcopy"), tool("qemu-nbd"), tool("qemu-img")) {
                (None, ..) => missing("nbdcopy"),
                (_, None, _) => missing("qemu-nbd"),
                (_, _, None) => missing("qemu-img"),
                (Some(nbdcopy), Some(qemu_nbd), Some(qemu_img)) => {
                    outcome(self.nbdcopy_into_qemu_nbd(&nbdcopy, &qemu_nbd, &qemu_img, None))
                }
            };
            let mut row = Row::new(
                "ingest",
                "client backup (full, TLS)",
                Outcome::Measured(full.measure),
                "nbdcopy -> qemu-nbd --cache=none plain",
                peer,
            );
            row.note = format!(
                "durable when `completed`; RSS is the hub's peak ({}); client peak RSS {} MiB; {} bytes sent",
                mib(hub_rss_full),
                full.client_rss >> 20,
                full.bytes_sent
            );
            self.push(row, load);
        }
        if !wanted.iter().any(|s| {
            matches!(
                s,
                Scenario::Incremental | Scenario::Restore | Scenario::Merge | Scenario::Verify
            )
        }) {
            hub.stop()?;
            return Ok(());
        }

        // Incremental.
        let load = loadavg()[0];
        let areas = self.dir.join("changed-areas.json");
        let changed = data::change_blocks(
            &self.raw,
            self.opts.size,
            self.opts.changed_percent,
            &areas,
            0xc4a9_6ed5,
        )?;
        self.say("incremental: changed blocks through sendense-client");
        let incr = self.backup(&hub, &hub_url, &data_dir, Some(&areas), Some(&full.id))?;
        if wanted.contains(&Scenario::Incremental) {
            let mut row = Row::new(
                "incremental",
                &format!("client backup ({}% changed)", self.opts.changed_percent),
                Outcome::Measured(incr.measure),
                "our full backup of the same disk",
                Outcome::Measured(full.measure),
            );
            #[allow(clippy::cast_precision_loss)]
            let share = incr.bytes_sent as f64 * 100.0 / full.bytes_sent.max(1) as f64;
            row.note = format!(
                "{} bytes changed; bytes sent {} vs full {} ({share:.2}%); MB/s counts bytes sent",
                changed, incr.bytes_sent, full.bytes_sent
            );
            self.push(row, load);
        }
        if !wanted.contains(&Scenario::Restore) {
            hub.stop()?;
            if wanted.contains(&Scenario::Merge) {
                self.merge(&data_dir, &full, &incr.id);
            }
            if wanted.contains(&Scenario::Verify) {
                self.verify(&data_dir, &incr.id);
            }
            return Ok(());
        }

        // Restore of the chain (full + incremental).
        let load = loadavg()[0];
        self.say("restore: sendense-client restore of the chain");
        let (ours, verified) = match self.restore_ours(&hub, &hub_url, &data_dir, &incr.id) {
            Ok((m, v)) => (Outcome::Measured(m), v),
            Err(e) => (failed(&format!("{e:#}")), false),
        };
        hub.stop()?;
        self.say("restore: nbdcopy from qemu-nbd serving the chain");
        let top = data_dir
            .join("repository")
            .join(VM)
            .join(format!("disk-{DISK_KEY}"))
            .join(format!("{}.qcow2", incr.id));
        let peer = match (tool("nbdcopy"), tool("qemu-nbd")) {
            (None, _) => missing("nbdcopy"),
            (_, None) => missing("qemu-nbd"),
            (Some(nbdcopy), Some(qemu_nbd)) => {
                outcome(self.restore_peer(&nbdcopy, &qemu_nbd, &top))
            }
        };
        let mut row = Row::new(
            "restore",
            "client restore (full+incr, raw)",
            ours,
            "nbdcopy --flush <- qemu-nbd --read-only --cache=none",
            peer,
        );
        row.note = format!(
            "chain of 2; ours {} the source; RSS is the client's",
            if verified {
                "verified identical to"
            } else {
                "NOT identical to"
            }
        );
        self.push(row, load);
        if wanted.contains(&Scenario::Merge) {
            self.merge(&data_dir, &full, &incr.id);
        }
        if wanted.contains(&Scenario::Verify) {
            self.verify(&data_dir, &incr.id);
        }
        Ok(())
    }

    /// Starts `sendense-hub serve` on `data_dir` and waits until its API listens; answers the
    /// running hub and its API's URL.
    fn start_hub(&self, data_dir: &Path) -> Result<(Proc, String)> {
        let api = free_addr()?;
        let nbd = free_addr()?;
        let mut cmd = Command::new(&self.bins.hub);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--api")
            .arg(api.to_string())
            .arg("--nbd")
            .arg(nbd.to_string());
        let mut hub = Proc::spawn("hub-serve", cmd, &self.logs, false)?;
        hub.wait_listening(api)?;
        // The hub's NBD port requires a client certificate from its CA (its default).
        sendense_nbd::tls::issue_client_folder(
            &data_dir.join("tls"),
            "bench-client",
            &data_dir.join(CLIENT_TLS_DIR),
        )
        .context("issuing the bench client's certificate")?;
        Ok((hub, format!("https://{api}")))
    }

    fn client_hub_args(&self, cmd: &mut Command, hub_url: &str, data_dir: &Path) {
        cmd.arg("--hub")
            .arg(hub_url)
            .arg("--tls-dir")
            .arg(data_dir.join(CLIENT_TLS_DIR))
            .arg("--token-file")
            .arg(data_dir.join("api.token"));
    }

    fn backup(
        &self,
        hub: &Proc,
        hub_url: &str,
        data_dir: &Path,
        areas: Option<&Path>,
        base: Option<&str>,
    ) -> Result<BackupRun> {
        let mut cmd = self.backup_command(hub_url, data_dir, VM, &self.raw);
        match areas {
            Some(a) => {
                cmd.args(["--type", "incremental", "--changed-areas"])
                    .arg(format!("{DISK_KEY}={}", a.display()));
                if let Some(base) = base {
                    cmd.args(["--base-backup", base]);
                }
            }
            None => {
                cmd.args(["--type", "full"]);
            }
        }
        let basis = if areas.is_some() {
            None
        } else {
            Some(self.opts.size)
        };
        self.run_backup(hub, cmd, basis)
    }

    /// `sendense-client backup --json` of `vm` with one disk (`DISK_KEY`) read from `disk`; the
    /// caller adds the type.
    fn backup_command(&self, hub_url: &str, data_dir: &Path, vm: &str, disk: &Path) -> Command {
        let mut cmd = Command::new(&self.bins.client);
        cmd.arg("backup");
        self.client_hub_args(&mut cmd, hub_url, data_dir);
        cmd.args(["--vm", vm, "--disk"])
            .arg(format!("{DISK_KEY}={}", disk.display()))
            .arg("--json");
        cmd
    }

    /// Runs a backup command to its end and reads its summary. MB/s counts `basis` bytes, or the
    /// bytes sent when there is none; CPU is the client's and the hub's; RSS is the hub's.
    fn run_backup(&self, hub: &Proc, cmd: Command, basis: Option<u64>) -> Result<BackupRun> {
        let cpu0 = hub.cpu().unwrap_or_default();
        let (secs, fin) = self.timed("client-backup", cmd)?;
        let hub_cpu = hub.cpu().unwrap_or_default().saturating_sub(cpu0);
        let summary: serde_json::Value = serde_json::from_str(fin.stdout.trim())
            .with_context(|| format!("the client's summary is not JSON: {}", fin.stdout))?;
        if summary["status"].as_str() != Some("completed") {
            bail!("the backup did not complete: {summary}");
        }
        let id = summary["backup_id"]
            .as_str()
            .context("the client's summary has no backup_id")?
            .to_owned();
        let bytes_sent = summary["bytes_sent"].as_u64().unwrap_or(0);
        Ok(BackupRun {
            id,
            measure: Measure::new(
                secs,
                basis.unwrap_or(bytes_sent),
                (fin.usage.cpu + hub_cpu).as_secs_f64(),
                hub.peak_rss(),
            ),
            bytes_sent,
            client_rss: fin.usage.max_rss_bytes,
        })
    }

    fn restore_ours(
        &self,
        hub: &Proc,
        hub_url: &str,
        data_dir: &Path,
        id: &str,
    ) -> Result<(Measure, bool)> {
        let out = self.dir.join("restore-ours.raw");
        let mut cmd = Command::new(&self.bins.client);
        cmd.arg("restore");
        self.client_hub_args(&mut cmd, hub_url, data_dir);
        cmd.args(["--backup", id, "--disk"])
            .arg(DISK_KEY.to_string())
            .arg("--to")
            .arg(&out)
            .args(["--format", "raw", "--json"]);
        let cpu0 = hub.cpu().unwrap_or_default();
        let (secs, fin) = self.timed("client-restore", cmd)?;
        let hub_cpu = hub.cpu().unwrap_or_default().saturating_sub(cpu0);
        let verified = data::same_content(&out, &self.raw)?;
        remove(&out);
        Ok((
            Measure::new(
                secs,
                self.opts.size,
                (fin.usage.cpu + hub_cpu).as_secs_f64(),
                Some(fin.usage.max_rss_bytes),
            ),
            verified,
        ))
    }

    fn restore_peer(&self, nbdcopy: &Path, qemu_nbd: &Path, top: &Path) -> Result<Measure> {
        let out = self.dir.join("restore-peer.raw");
        let addr = free_addr()?;
        let cmd = qemu_nbd_command(qemu_nbd, addr, None, true, top);
        let mut server = Proc::spawn("qemu-nbd-restore", cmd, &self.logs, false)?;
        server.wait_listening(addr)?;
        let cpu0 = server.cpu().unwrap_or_default();
        let mut copy = Command::new(nbdcopy);
        copy.arg("--flush").arg(nbd_uri(addr, None)).arg(&out);
        let (secs, fin) = self.timed("nbdcopy-restore", copy)?;
        let server_cpu = server.cpu().unwrap_or_default().saturating_sub(cpu0);
        server.stop()?;
        let verified = data::same_content(&out, &self.raw)?;
        remove(&out);
        if !verified {
            bail!("qemu-nbd's restore differs from the source");
        }
        Ok(Measure::new(
            secs,
            self.opts.size,
            (fin.usage.cpu + server_cpu).as_secs_f64(),
            Some(fin.usage.max_rss_bytes),
        ))
    }

    /// Runs a command to its end and answers its wall time.
    fn timed(&self, name: &str, cmd: Command) -> Result<(f64, crate::proc::Finished)> {
        let start = Instant::now();
        let fin = Proc::spawn(name, cmd, &self.logs, true)?.wait()?;
        Ok((start.elapsed().as_secs_f64(), fin))
    }
}

fn qemu_nbd_command(
    qemu_nbd: &Path,
    addr: std::net::SocketAddr,
    tls_dir: Option<&Path>,
    read_only: bool,
    image: &Path,
) -> Command {
    let mut cmd = Command::new(qemu_nbd);
    cmd.args(["--shared=10", "--cache=none", "-f", "qcow2", "--persistent"])
        .arg(format!("--bind={}", addr.ip()))
        .arg(format!("--port={}", addr.port()));
    if read_only {
        cmd.arg("--read-only");
    }
    if let Some(dir) = tls_dir {
        cmd.arg("--object")
            .arg(format!(
                "tls-creds-x509,id=tls0,dir={},endpoint=server,verify-peer=off",
                dir.display()
            ))
            .args(["--tls-creds", "tls0"]);
    }
    cmd.arg(image);
    cmd
}

fn nbd_uri(addr: std::net::SocketAddr, tls_dir: Option<&Path>) -> String {
    match tls_dir {
        Some(dir) => format!("nbds://{addr}/?tls-certificates={}", dir.display()),
        None => format!("nbd://{addr}/"),
    }
}

/// The first executable named `name` on `PATH`.
pub(crate) fn tool(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

fn outcome(r: Result<Measure>) -> Outcome {
    match r {
        Ok(m) => Outcome::Measured(m),
        Err(e) => failed(&format!("{e:#}")),
    }
}

fn missing(tool: &str) -> Outcome {
    Outcome::Missing {
        tool: tool.to_owned(),
    }
}

fn failed(error: &str) -> Outcome {
    Outcome::Failed {
        error: error.to_owned(),
    }
}

fn remove(path: &Path) {
    let _ = std::fs::remove_file(path);
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "unknown".to_owned(), |b| format!("{} MiB", b >> 20))
}

fn loadavg() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = text.split_whitespace().map(|f| f.parse().unwrap_or(0.0));
    [
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
    ]
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or_else(|| "unknown CPU".to_owned(), |(_, m)| m.trim().to_owned())
}
