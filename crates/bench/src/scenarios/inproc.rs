//! Scenarios with `sendense-nbd` served inside the harness: its memory export on a tokio runtime
//! over a loopback port, written by `nbdcopy` (against `nbdkit memory`) and by our own client
//! pool (plain against TLS).
//!
//! Those two need no hub: the server is the library's `Server` with a `MemoryExport`, so the
//! figures are the protocol crate's own, without QCOW2 or disk writes. The server's CPU time is
//! the harness process's own (`/proc/self/stat` delta, every thread); the harness's main thread
//! only waits meanwhile. The runtimes are built here because the harness is otherwise
//! synchronous; each is dropped (and the export's memory freed) before the peer runs.

use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use sendense_nbd::{
    ClientOptions, ClientPool, Export, ExportRegistry, MemoryExport, NbdError, Server,
    ServerOptions,
};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{Ctx, failed, loadavg, missing, nbd_uri, outcome, tool};
use crate::proc::free_addr;
use crate::report::{Measure, Row};

/// Connections of our client pool (the `sendense-client` default).
const POOL_CONNECTIONS: usize = 4;
/// Requests in flight over the pool (the `sendense-client` default).
const POOL_IN_FLIGHT: usize = 8;
/// Bytes per WRITE request (the `sendense-client` maximum request).
const POOL_REQUEST: u64 = 4 << 20;
/// Bytes compared per read when verifying the export against the source.
const VERIFY_CHUNK: usize = 4 << 20;

impl Ctx<'_> {
    /// `memory`: `nbdcopy --flush` into our memory export vs into `nbdkit memory`, plain and TLS.
    pub(super) fn memory(&mut self) {
        let certs = self.dir.join("certs");
        let certs_ready = sendense_nbd::tls::ensure_certificates(&certs, &[])
            .map(|_| ())
            .map_err(|e| anyhow!(e).context("cannot make TLS certificates"));
        for tls in [false, true] {
            let load = loadavg()[0];
            let label = if tls { "TLS" } else { "plain" };
            self.say(&format!(
                "memory ({label}): nbdcopy into our memory export, then into nbdkit memory"
            ));
            let tls_dir = tls.then_some(certs.as_path());
            let (ours, peer) = match (&certs_ready, tool("nbdcopy")) {
                (Err(e), _) if tls => (failed(&format!("{e:#}")), failed(&format!("{e:#}"))),
                (_, None) => (missing("nbdcopy"), missing("nbdcopy")),
                (_, Some(nbdcopy)) => {
                    let ours = outcome(self.nbdcopy_into_memory_export(&nbdcopy, tls_dir));
                    let peer = match tool("nbdkit") {
                        Some(nbdkit) => {
                            outcome(self.nbdcopy_into_nbdkit_memory(&nbdcopy, &nbdkit, tls_dir))
                        }
                        None => missing("nbdkit"),
                    };
                    (ours, peer)
                }
            };
            let case = format!("nbdcopy -> our memory {label}");
            let peer_name = format!("nbdcopy -> nbdkit memory {label}");
            let mut row = Row::new("memory", &case, ours, &peer_name, peer);
            row.note = "our export is sendense-nbd's in the harness; CPU is nbdcopy + server; \
                        RSS is the server's; ours verified identical to the source"
                .into();
            self.push(row, load);
        }
    }

    /// `nbd-tls-cost`: our client pool writes the disk into our memory export over TLS, and
    /// plain; the "peer" side of the row is the plain run.
    pub(super) fn nbd_tls_cost(&mut self) {
        let load = loadavg()[0];
        self.say("nbd-tls-cost: our client into our memory export, TLS then plain");
        let certs = self.dir.join("certs");
        let (tls, plain) = match sendense_nbd::tls::ensure_certificates(&certs, &[]) {
            Ok(_) => (
                outcome(self.client_into_memory_export(Some(&certs))),
                outcome(self.client_into_memory_export(None)),
            ),
            Err(e) => {
                let e = format!("{:#}", anyhow!(e).context("cannot make TLS certificates"));
                (failed(&e), outcome(self.client_into_memory_export(None)))
            }
        };
        let cpu = match (tls.measure(), plain.measure()) {
            (Some(t), Some(p)) if p.cpu_seconds > 0.0 => {
                format!(
                    "; TLS uses {:.2}x the CPU of plain",
                    t.cpu_seconds / p.cpu_seconds
                )
            }
            _ => String::new(),
        };
        let mut row = Row::new(
            "nbd-tls-cost",
            "client pool -> our memory TLS",
            tls,
            "client pool -> our memory plain",
            plain,
        );
        row.note = format!(
            "ClientPool of {POOL_CONNECTIONS} connections, {POOL_IN_FLIGHT} writes of {} MiB in \
             flight, then flush; ratio = plain s / TLS s (1 - ratio = the time TLS costs){cpu}; \
             CPU is client + server (one process); both verified identical to the source",
            POOL_REQUEST >> 20
        );
        self.push(row, load);
    }

    fn nbdcopy_into_memory_export(
        &self,
        nbdcopy: &Path,
        tls_dir: Option<&Path>,
    ) -> Result<Measure> {
        let server = MemoryServer::start_memory(self.opts.size, tls_dir)?;
        reset_peak_rss();
        let cpu0 = self_cpu();
        let mut copy = Command::new(nbdcopy);
        copy.arg("--flush")
            .arg(&self.raw)
            .arg(nbd_uri(server.addr, tls_dir));
        let (secs, fin) = self.timed("nbdcopy-memory", copy)?;
        let server_cpu = self_cpu().saturating_sub(cpu0);
        let rss = self_peak_rss();
        let export = server.stop()?;
        verify(export.as_ref(), &self.raw, self.opts.size)?;
        Ok(Measure::new(
            secs,
            self.opts.size,
            (fin.usage.cpu + server_cpu).as_secs_f64(),
            rss,
        ))
    }

    fn nbdcopy_into_nbdkit_memory(
        &self,
        nbdcopy: &Path,
        nbdkit: &Path,
        tls_dir: Option<&Path>,
    ) -> Result<Measure> {
        let addr = free_addr()?;
        let mut cmd = Command::new(nbdkit);
        cmd.args(["--foreground", "--exit-with-parent", "--ipaddr"])
            .arg(addr.ip().to_string())
            .arg("--port")
            .arg(addr.port().to_string());
        if let Some(dir) = tls_dir {
            cmd.arg("--tls=require")
                .arg(format!("--tls-certificates={}", dir.display()));
        }
        cmd.arg("memory").arg(self.opts.size.to_string());
        self.nbdcopy_into_server("nbdkit-memory", cmd, addr, nbdcopy, tls_dir)
    }

    fn client_into_memory_export(&self, tls_dir: Option<&Path>) -> Result<Measure> {
        let server = MemoryServer::start_memory(self.opts.size, tls_dir)?;
        let options = ClientOptions {
            tls: match tls_dir {
                Some(dir) => Some((
                    sendense_nbd::tls::client_config_from_dir(dir)?,
                    "localhost".to_owned(),
                )),
                None => None,
            },
            ..ClientOptions::default()
        };
        let source = Arc::new(
            File::open(&self.raw).with_context(|| format!("cannot open {}", self.raw.display()))?,
        );
        let client_rt = runtime()?;
        reset_peak_rss();
        let cpu0 = self_cpu();
        let start = Instant::now();
        client_rt.block_on(write_with_pool(
            server.addr,
            options,
            source,
            self.opts.size,
        ))?;
        let secs = start.elapsed().as_secs_f64();
        let cpu = self_cpu().saturating_sub(cpu0);
        let rss = self_peak_rss();
        drop(client_rt);
        let export = server.stop()?;
        verify(export.as_ref(), &self.raw, self.opts.size)?;
        Ok(Measure::new(secs, self.opts.size, cpu.as_secs_f64(), rss))
    }
}

/// An export served by `sendense_nbd::Server` on its own runtime, on 127.0.0.1.
pub(super) struct InprocServer<E> {
    runtime: Runtime,
    pub(super) addr: SocketAddr,
    export: Arc<E>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), NbdError>>,
}

/// Our memory export served in the harness.
type MemoryServer = InprocServer<MemoryExport>;

impl MemoryServer {
    /// Serves a fresh `size`-byte memory export named "" (TLS required when `tls_dir` is given).
    fn start_memory(size: u64, tls_dir: Option<&Path>) -> Result<Self> {
        let options = ServerOptions {
            tls: match tls_dir {
                Some(dir) => Some(sendense_nbd::tls::server_config_from_dir(dir, false)?),
                None => None,
            },
            ..ServerOptions::default()
        };
        Self::start(Arc::new(MemoryExport::new(size)), options)
    }
}

impl<E: Export> InprocServer<E> {
    /// Serves `export` under the name "" with `options`.
    pub(super) fn start(export: Arc<E>, options: ServerOptions) -> Result<Self> {
        let registry = Arc::new(ExportRegistry::new());
        let as_dyn: Arc<dyn Export> = Arc::clone(&export) as Arc<dyn Export>;
        registry.add("", as_dyn)?;
        let runtime = runtime()?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .context("cannot bind the NBD listener")?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let server = Server::new(registry, options);
        let task = runtime.spawn(async move {
            server
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await
        });
        Ok(Self {
            runtime,
            addr,
            export,
            stop,
            task,
        })
    }

    /// Stops the server (its connections end) and answers the export.
    pub(super) fn stop(self) -> Result<Arc<E>> {
        let Self {
            runtime,
            export,
            stop,
            task,
            ..
        } = self;
        let _ = stop.send(());
        let served =
            runtime.block_on(async { tokio::time::timeout(Duration::from_secs(60), task).await });
        drop(runtime);
        match served {
            Ok(Ok(Ok(()))) => Ok(export),
            Ok(Ok(Err(e))) => Err(e).context("the in-process NBD server failed"),
            Ok(Err(e)) => Err(e).context("the in-process NBD server panicked"),
            Err(_) => bail!("the in-process NBD server did not stop within 60 s"),
        }
    }
}

/// Writes `size` bytes of `source` through a pool of our clients, then flushes.
async fn write_with_pool(
    addr: SocketAddr,
    options: ClientOptions,
    source: Arc<File>,
    size: u64,
) -> Result<()> {
    let pool = Arc::new(ClientPool::connect(addr, options, POOL_CONNECTIONS).await?);
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..POOL_IN_FLIGHT {
        let (pool, next, source) = (Arc::clone(&pool), Arc::clone(&next), Arc::clone(&source));
        workers.spawn(async move {
            let mut buf = vec![0u8; usize::try_from(POOL_REQUEST)?];
            loop {
                let offset = next.fetch_add(POOL_REQUEST, Ordering::Relaxed);
                if offset >= size {
                    return anyhow::Ok(());
                }
                let len = usize::try_from(POOL_REQUEST.min(size - offset))?;
                let file = Arc::clone(&source);
                let (back, read) = tokio::task::spawn_blocking(move || {
                    let read = file.read_exact_at(&mut buf[..len], offset);
                    (buf, read)
                })
                .await?;
                buf = back;
                read.context("cannot read the source disk")?;
                pool.get()
                    .write(offset, &buf[..len], false)
                    .await
                    .with_context(|| format!("write at {offset} failed"))?;
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done??;
    }
    pool.flush().await.context("flush failed")?;
    let pool = Arc::into_inner(pool).context("a writer still holds the pool")?;
    pool.disconnect().await.context("disconnect failed")?;
    Ok(())
}

fn runtime() -> Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot build a tokio runtime")
}

/// Fails unless the export holds exactly the first `size` bytes of `source`.
fn verify(export: &MemoryExport, source: &Path, size: u64) -> Result<()> {
    let file = File::open(source).with_context(|| format!("cannot open {}", source.display()))?;
    let mut want = vec![0u8; VERIFY_CHUNK];
    let mut got = vec![0u8; VERIFY_CHUNK];
    let mut pos = 0u64;
    while pos < size {
        let n = usize::try_from((size - pos).min(VERIFY_CHUNK as u64))?;
        file.read_exact_at(&mut want[..n], pos)
            .with_context(|| format!("cannot read {}", source.display()))?;
        export
            .read(pos, &mut got[..n])
            .context("cannot read the memory export")?;
        if want[..n] != got[..n] {
            bail!("the memory export differs from the source in the 4 MiB at {pos}");
        }
        pos += n as u64;
    }
    Ok(())
}

/// CPU time (user + system, every thread) of this process so far, from `/proc/self/stat`.
pub(super) fn self_cpu() -> Duration {
    let parse = || -> Option<Duration> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = stat.get(stat.rfind(')')? + 2..)?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        let ticks = utime.checked_add(stime)?;
        let hz = crate::sys::clock_ticks();
        Some(
            Duration::from_secs(ticks / hz)
                + Duration::from_nanos((ticks % hz) * 1_000_000_000 / hz),
        )
    };
    parse().unwrap_or_default()
}

/// Resets this process's peak RSS (`VmHWM`) to its current RSS (Linux 4.0+; best effort).
pub(super) fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// This process's peak RSS (`VmHWM`) in bytes.
pub(super) fn self_peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_server_client_writes_verify_against_source() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        crate::data::write_random(&raw, 9 << 20, 7).unwrap();
        let server = MemoryServer::start_memory(9 << 20, None).unwrap();
        let source = Arc::new(File::open(&raw).unwrap());

        runtime()
            .unwrap()
            .block_on(write_with_pool(
                server.addr,
                ClientOptions::default(),
                source,
                9 << 20,
            ))
            .unwrap();

        let export = server.stop().unwrap();
        verify(export.as_ref(), &raw, 9 << 20).unwrap();
    }

    #[test]
    fn verify_memory_export_differing_from_source_fails() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        crate::data::write_random(&raw, 1 << 20, 7).unwrap();
        let export = MemoryExport::new(1 << 20);

        let result = verify(&export, &raw, 1 << 20);

        assert!(result.is_err());
    }
}
