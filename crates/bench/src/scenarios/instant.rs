//! `instant`: an instant-recovery export under random 4 KiB I/O at queue depth 32, measured
//! with `fio --ioengine=nbd`, against `qemu-nbd --cache=none --aio=native` serving the same
//! chain through a scratch overlay of its own.
//!
//! The chain is a restore point of three layers made by our engine: a full holding the test
//! disk, and two incrementals, each rewriting a third of the 64 KiB clusters (cluster `k` lives
//! in layer `k % 3`), so random reads land in every layer evenly. Our side is the hub's export
//! exactly: a scratch overlay created with [`sendense_image::export::scratch_overlay_options`]
//! (what the hub's instant recovery creates), served by `sendense_nbd::Server` with the hub's
//! [`ServerOptions`] (TLS aside) through [`Qcow2Export`], on a tokio runtime inside the
//! harness. The peer gets its own `qemu-img create -b` overlay of the same top layer. Both
//! listen on plain TCP on 127.0.0.1; each side gets a fresh overlay per pattern, and the
//! chain's pages are dropped from the page cache before each side runs, so both start cold.

use std::fs::File;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use sendense_image::export::{Qcow2Export, scratch_overlay_options};
use sendense_nbd::ServerOptions;
use sendense_qcow2::{AlignedBuf, BackingPolicy, BackingSpec, CreateOptions, Image};

use super::inproc::{InprocServer, self_cpu, self_peak_rss};
use super::{Ctx, failed, loadavg, missing, outcome, remove, tool};
use crate::data::Rng;
use crate::proc::{Proc, free_addr};
use crate::report::{Measure, Row};

/// The fio patterns measured, in order.
const PATTERNS: [&str; 3] = ["randread", "randwrite", "randrw"];
/// Cluster size of the chain's layers (the hub's default).
const CLUSTER_BYTES: usize = 64 * 1024;
const CLUSTER: u64 = CLUSTER_BYTES as u64;
/// File names of the chain, oldest first.
const LAYERS: [&str; 3] = ["full.qcow2", "incr-1.qcow2", "incr-2.qcow2"];

/// The restore point the scenario serves.
#[derive(Debug)]
struct Chain {
    dir: PathBuf,
    size: u64,
}

impl Chain {
    fn layer(&self, i: usize) -> PathBuf {
        self.dir.join(LAYERS[i])
    }

    fn top(&self) -> PathBuf {
        self.layer(LAYERS.len() - 1)
    }

    /// Drops the chain's pages from the page cache, so the next side starts cold.
    fn evict(&self) -> Result<()> {
        for i in 0..LAYERS.len() {
            let path = self.layer(i);
            let file =
                File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
            rustix::fs::fadvise(&file, 0, None::<NonZeroU64>, rustix::fs::Advice::DontNeed)
                .with_context(|| format!("cannot drop {} from the page cache", path.display()))?;
        }
        Ok(())
    }
}

/// What fio measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct FioFigures {
    /// Read plus write operations per second.
    pub(super) iops: f64,
    /// Bytes read and written.
    pub(super) bytes: u64,
    /// Seconds the job ran.
    pub(super) seconds: f64,
}

impl Ctx<'_> {
    /// `instant`: fio random 4 KiB QD32 reads, writes and a 50/50 mix into our instant export vs
    /// into qemu-nbd, one row per pattern.
    pub(super) fn instant(&mut self) {
        self.say("instant: building a chain of 3 layers (full + 2 incrementals)");
        let chain = self.instant_chain();
        let peer_name = "fio -> qemu-nbd --cache=none --aio=native";
        for pattern in PATTERNS {
            let load = loadavg()[0];
            let case = format!("fio {pattern} -> instant export");
            self.say(&format!(
                "instant ({pattern}): fio into our export, then into qemu-nbd"
            ));
            let (ours, peer) = match (&chain, tool("fio")) {
                (Err(e), _) => {
                    let e = format!("{e:#}");
                    (failed(&e), failed(&e))
                }
                (_, None) => (missing("fio"), missing("fio")),
                (Ok(chain), Some(fio)) => {
                    let ours = outcome(self.instant_ours(&fio, chain, pattern));
                    let peer = match (tool("qemu-nbd"), tool("qemu-img")) {
                        (None, _) => missing("qemu-nbd"),
                        (_, None) => missing("qemu-img"),
                        (Some(qemu_nbd), Some(qemu_img)) => {
                            outcome(self.instant_peer(&fio, &qemu_nbd, &qemu_img, chain, pattern))
                        }
                    };
                    (ours, peer)
                }
            };
            let iops = |o: &crate::report::Outcome| {
                o.measure()
                    .and_then(|m| m.iops)
                    .map_or_else(|| "-".to_owned(), |x| format!("{x:.0}"))
            };
            let mut row = Row::new("instant", &case, ours, peer_name, peer);
            row.note = format!(
                "IOPS ours {} vs peer {}; ratio = our IOPS / peer IOPS; 4 KiB, iodepth 32, \
                 --direct=1, {} s time based, plain TCP on 127.0.0.1; chain of 3 layers \
                 (full + 2 incrementals, a third of the clusters in each), fresh scratch \
                 overlay per side, page cache of the chain dropped before each side; CPU is \
                 fio + server; RSS is the server's",
                iops(&row.ours),
                iops(&row.peer),
                self.opts.instant_runtime_secs
            );
            self.push(row, load);
        }
        if let Ok(chain) = chain
            && !self.opts.keep
        {
            let _ = std::fs::remove_dir_all(&chain.dir);
        }
    }

    /// Writes the chain with our engine: the test disk into the full, then a third of the
    /// clusters rewritten (fresh random data) in each incremental.
    fn instant_chain(&self) -> Result<Chain> {
        let dir = self.dir.join("instant");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let size = self.opts.size.next_multiple_of(CLUSTER);
        let chain = Chain { dir, size };
        let source =
            File::open(&self.raw).with_context(|| format!("cannot open {}", self.raw.display()))?;
        let mut buf = AlignedBuf::zeroed(CLUSTER_BYTES);
        let mut rng = Rng::new(0x0125_7a47);
        for (i, name) in LAYERS.iter().enumerate() {
            let path = chain.layer(i);
            let mut opts = CreateOptions::new(size).backing_policy(BackingPolicy::repository());
            if i > 0 {
                opts = opts.backing(BackingSpec::qcow2(LAYERS[i - 1]));
            }
            let image = Image::create(&path, &opts)
                .with_context(|| format!("cannot create {}", path.display()))?;
            for cluster in (0..size / CLUSTER).filter(|c| i == 0 || c % 3 == i as u64) {
                let offset = cluster * CLUSTER;
                if i == 0 {
                    read_source(&source, &mut buf, offset)?;
                } else {
                    rng.fill(&mut buf);
                }
                image
                    .write_at(&buf, offset)
                    .with_context(|| format!("cannot write {name}"))?;
            }
            image
                .finalize(&path)
                .with_context(|| format!("cannot close {}", path.display()))?;
        }
        Ok(chain)
    }

    fn instant_ours(&self, fio: &Path, chain: &Chain, pattern: &str) -> Result<Measure> {
        let overlay = chain.dir.join("scratch-ours.qcow2");
        let backing = BackingSpec::qcow2(LAYERS[LAYERS.len() - 1]);
        let opts = scratch_overlay_options(chain.size, backing)
            .backing_policy(BackingPolicy::repository());
        chain.evict()?;
        let image = Image::create(&overlay, &opts)
            .with_context(|| format!("cannot create {}", overlay.display()))?;
        let export = Arc::new(Qcow2Export::new(Arc::new(image), false));
        // The hub's NBD server options, TLS aside.
        let server = InprocServer::start(export, ServerOptions::default())?;
        super::inproc::reset_peak_rss();
        let cpu0 = self_cpu();
        let run = self.fio(fio, &format!("nbd://{}/", server.addr), pattern, "fio-ours");
        let server_cpu = self_cpu().saturating_sub(cpu0);
        let rss = self_peak_rss();
        let stopped = server.stop();
        remove(&overlay);
        let (figures, fio_cpu) = run?;
        stopped?;
        Ok(measure(figures, fio_cpu + server_cpu.as_secs_f64(), rss))
    }

    fn instant_peer(
        &self,
        fio: &Path,
        qemu_nbd: &Path,
        qemu_img: &Path,
        chain: &Chain,
        pattern: &str,
    ) -> Result<Measure> {
        let overlay = chain.dir.join("scratch-peer.qcow2");
        let mut create = Command::new(qemu_img);
        create
            .args(["create", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(chain.top())
            .arg(&overlay);
        Proc::spawn("qemu-img-create-overlay", create, &self.logs, false)?.wait()?;
        chain.evict()?;
        let addr = free_addr()?;
        let mut cmd = Command::new(qemu_nbd);
        cmd.args([
            "--cache=none",
            "--aio=native",
            "-f",
            "qcow2",
            "--persistent",
        ])
        .arg(format!("--bind={}", addr.ip()))
        .arg(format!("--port={}", addr.port()))
        .arg(&overlay);
        let result = (|| {
            let mut server = Proc::spawn("qemu-nbd-instant", cmd, &self.logs, false)?;
            server.wait_listening(addr)?;
            let cpu0 = server.cpu().unwrap_or_default();
            let (figures, fio_cpu) =
                self.fio(fio, &format!("nbd://{addr}/"), pattern, "fio-peer")?;
            let server_cpu = server.cpu().unwrap_or_default().saturating_sub(cpu0);
            let rss = server.peak_rss();
            server.stop()?;
            Ok(measure(figures, fio_cpu + server_cpu.as_secs_f64(), rss))
        })();
        remove(&overlay);
        result
    }

    /// Runs fio's NBD engine against `uri`; answers its figures and its CPU seconds.
    fn fio(&self, fio: &Path, uri: &str, pattern: &str, name: &str) -> Result<(FioFigures, f64)> {
        let out = self.dir.join(format!("{name}.json"));
        let mut cmd = Command::new(fio);
        cmd.args([
            "--name=instant",
            "--ioengine=nbd",
            "--bs=4k",
            "--iodepth=32",
            "--direct=1",
            "--time_based",
            "--output-format=json",
        ])
        .arg(format!("--uri={uri}"))
        .arg(format!("--rw={pattern}"))
        .arg(format!("--runtime={}", self.opts.instant_runtime_secs))
        .arg(format!("--output={}", out.display()));
        let fin = Proc::spawn(name, cmd, &self.logs, false)?.wait()?;
        let text = std::fs::read_to_string(&out)
            .with_context(|| format!("fio wrote no report to {}", out.display()))?;
        remove(&out);
        Ok((parse_fio(&text)?, fin.usage.cpu.as_secs_f64()))
    }
}

/// Reads one cluster of the source disk (zeros past its end).
fn read_source(source: &File, buf: &mut [u8], offset: u64) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let mut done = 0;
    while done < buf.len() {
        let n = source
            .read_at(&mut buf[done..], offset + done as u64)
            .context("cannot read the source disk")?;
        if n == 0 {
            break;
        }
        done += n;
    }
    buf[done..].fill(0);
    Ok(())
}

fn measure(f: FioFigures, cpu_seconds: f64, rss: Option<u64>) -> Measure {
    Measure::new(f.seconds, f.bytes, cpu_seconds, rss).with_iops(f.iops)
}

/// The figures of fio's JSON report (`--output-format=json`) of one job.
///
/// # Errors
/// Not a fio JSON report, no job, a job that failed, or no I/O at all.
pub(super) fn parse_fio(text: &str) -> Result<FioFigures> {
    // fio may print lines (the NBD engine's "connected") before the JSON object.
    let start = text.find('{').context("fio printed no JSON report")?;
    let report: serde_json::Value =
        serde_json::from_str(&text[start..]).context("fio's report is not JSON")?;
    let job = &report["jobs"][0];
    if job.is_null() {
        bail!("fio's report has no job");
    }
    let error = job["error"].as_i64().unwrap_or(0);
    if error != 0 {
        bail!("fio's job failed with error {error}");
    }
    let side = |name: &str| {
        (
            job[name]["iops"].as_f64().unwrap_or(0.0),
            job[name]["io_bytes"].as_u64().unwrap_or(0),
        )
    };
    let (read_iops, read_bytes) = side("read");
    let (write_iops, write_bytes) = side("write");
    let bytes = read_bytes + write_bytes;
    if bytes == 0 {
        bail!("fio did no I/O");
    }
    // `job_runtime` is in milliseconds.
    #[allow(clippy::cast_precision_loss)]
    let seconds = job["job_runtime"].as_u64().unwrap_or(0) as f64 / 1000.0;
    Ok(FioFigures {
        iops: read_iops + write_iops,
        bytes,
        seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_fio_mixed_job_sums_reads_and_writes() {
        let text = "fio: connected to NBD server\n{\"jobs\":[{\"error\":0,\"job_runtime\":2000,\
                    \"read\":{\"iops\":100.5,\"io_bytes\":4096},\
                    \"write\":{\"iops\":50.0,\"io_bytes\":8192}}]}";

        let f = parse_fio(text).unwrap();

        assert_eq!(
            f,
            FioFigures {
                iops: 150.5,
                bytes: 12288,
                seconds: 2.0
            }
        );
    }

    #[test]
    fn parse_fio_failed_job_is_an_error() {
        let text = "{\"jobs\":[{\"error\":5,\"read\":{\"iops\":1.0,\"io_bytes\":4096}}]}";

        let e = parse_fio(text).unwrap_err();

        assert!(format!("{e:#}").contains("error 5"), "{e:#}");
    }

    #[test]
    fn parse_fio_no_io_is_an_error() {
        let text = "{\"jobs\":[{\"error\":0,\"read\":{\"iops\":0,\"io_bytes\":0}}]}";

        assert!(parse_fio(text).is_err());
    }
}
