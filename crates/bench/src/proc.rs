//! Child processes under guard: every process the harness starts is killed and reaped when its
//! guard drops (error, panic or normal end), and dies with the harness's main thread through
//! `PR_SET_PDEATHSIG` even if the harness is killed outright. Usage comes from `wait4` (CPU and
//! peak RSS of that one child) and, for servers still running, from `/proc/PID`.

use std::fs::File;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::sys::{self, Usage};

/// How often a waited-for child's peak RSS is sampled.
const RSS_SAMPLE: Duration = Duration::from_millis(5);
/// How long to wait for a starting server to end before trying its port again.
const CONNECT_RETRY: Duration = Duration::from_millis(20);

/// How long a server may take to start listening, or to stop after SIGTERM.
const SERVER_DEADLINE: Duration = Duration::from_secs(60);

/// A running child process that is killed and reaped when dropped.
#[derive(Debug)]
pub(crate) struct Proc {
    name: String,
    pid: i32,
    child: Child,
    reaped: bool,
    /// Gets a message (or hangs up) once the child has ended, from a watcher thread that does
    /// not reap it.
    ended: Receiver<()>,
    has_ended: bool,
    log: PathBuf,
}

/// A child that ended.
#[derive(Debug)]
pub(crate) struct Finished {
    /// Its CPU time and peak RSS.
    pub(crate) usage: Usage,
    /// What it printed on stdout (when captured).
    pub(crate) stdout: String,
}

impl Proc {
    /// Starts `cmd`, its stderr going to `LOG_DIR/NAME.log`; stdout is captured when `capture`.
    pub(crate) fn spawn(
        name: &str,
        mut cmd: Command,
        log_dir: &Path,
        capture: bool,
    ) -> Result<Self> {
        std::fs::create_dir_all(log_dir)
            .with_context(|| format!("cannot create {}", log_dir.display()))?;
        let log = unique_log(log_dir, name);
        let err = File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(if capture {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(err);
        sys::die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} ({:?})", cmd.get_program()))?;
        let pid = i32::try_from(child.id()).context("process id out of range")?;
        let (tx, ended) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("watch-{name}"))
            .spawn(move || {
                let _ = sys::wait_ended(pid);
                let _ = tx.send(());
            })
            .with_context(|| format!("cannot watch {name}"))?;
        Ok(Self {
            name: name.to_owned(),
            pid,
            child,
            reaped: false,
            ended,
            has_ended: false,
            log,
        })
    }

    /// Waits up to `limit` for the child to end (it is not reaped); answers whether it has.
    fn ended_within(&mut self, limit: Duration) -> bool {
        if !self.has_ended {
            self.has_ended = match self.ended.recv_timeout(limit) {
                Ok(()) | Err(RecvTimeoutError::Disconnected) => true,
                Err(RecvTimeoutError::Timeout) => false,
            };
        }
        self.has_ended
    }

    /// Peak resident set size so far (`VmHWM`), in bytes.
    pub(crate) fn peak_rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        kib.checked_mul(1024)
    }

    /// CPU time (user + system) used so far, from `/proc/PID/stat`.
    pub(crate) fn cpu(&self) -> Option<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = stat.get(stat.rfind(')')? + 2..)?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        let ticks = utime.checked_add(stime)?;
        let hz = sys::clock_ticks();
        Some(
            Duration::from_secs(ticks / hz)
                + Duration::from_nanos((ticks % hz) * 1_000_000_000 / hz),
        )
    }

    /// Waits until the child listens on `addr` (TCP connect succeeds).
    pub(crate) fn wait_listening(&mut self, addr: SocketAddr) -> Result<()> {
        let deadline = Instant::now() + SERVER_DEADLINE;
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if self.ended_within(CONNECT_RETRY) {
                let (status, _) = self.reap(true)?;
                bail!(
                    "{} exited ({status}) before listening on {addr}{}",
                    self.name,
                    self.log_tail()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not listen on {addr} within {SERVER_DEADLINE:?}{}",
                    self.name,
                    self.log_tail()
                );
            }
        }
    }

    /// Waits for the child to end by itself; an unsuccessful exit is an error.
    ///
    /// Peak RSS is the child's own `VmHWM`, sampled every few milliseconds while it runs:
    /// `wait4`'s `ru_maxrss` also counts the harness's resident size at `fork` (Linux carries
    /// the forked copy's high-water mark across `exec`), which would charge the harness's
    /// buffers to the child. `ru_maxrss` is the fallback for a child too short to sample.
    pub(crate) fn wait(mut self) -> Result<Finished> {
        let reader = self.child.stdout.take().map(|mut out| {
            std::thread::spawn(move || {
                let mut text = String::new();
                out.read_to_string(&mut text).map(|_| text)
            })
        });
        let mut sampled = 0u64;
        loop {
            if let Some(peak) = self.peak_rss() {
                sampled = sampled.max(peak);
            }
            if self.ended_within(RSS_SAMPLE) {
                break;
            }
        }
        let (status, mut usage) = self.reap(true)?;
        let stdout = match reader {
            Some(r) => r
                .join()
                .map_err(|_| anyhow::anyhow!("the reader of {}'s output panicked", self.name))?
                .with_context(|| format!("cannot read {}'s output", self.name))?,
            None => String::new(),
        };
        if sampled > 0 {
            usage.max_rss_bytes = sampled;
        }
        if !status.success() {
            bail!("{} failed ({status}){}", self.name, self.log_tail());
        }
        Ok(Finished { usage, stdout })
    }

    /// Stops a server with SIGTERM (SIGKILL after a deadline) and reaps it.
    pub(crate) fn stop(mut self) -> Result<Finished> {
        sys::kill(self.pid, libc::SIGTERM)
            .with_context(|| format!("cannot signal {}", self.name))?;
        let gently = self.ended_within(SERVER_DEADLINE);
        let (_, usage) = self.reap(gently)?;
        Ok(Finished {
            usage,
            stdout: String::new(),
        })
    }

    /// Reaps the child (killing it first unless `gently`).
    fn reap(&mut self, gently: bool) -> Result<(ExitStatus, Usage)> {
        if !gently {
            let _ = sys::kill(self.pid, libc::SIGKILL);
        }
        let reaped =
            sys::wait4(self.pid, true).with_context(|| format!("cannot wait for {}", self.name))?;
        self.reaped = true;
        reaped.with_context(|| format!("{} did not end", self.name))
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n  ");
        if tail.is_empty() {
            String::new()
        } else {
            format!("; its stderr ends with:\n  {tail}")
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = sys::kill(self.pid, libc::SIGKILL);
            let _ = sys::wait4(self.pid, true);
            self.reaped = true;
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound then released; the child binds it right after).
pub(crate) fn free_addr() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    listener.local_addr().context("cannot find a free port")
}

fn unique_log(dir: &Path, name: &str) -> PathBuf {
    (0u32..)
        .map(|n| dir.join(format!("{name}-{n}.log")))
        .find(|p| !p.exists())
        .unwrap_or_else(|| dir.join(format!("{name}.log")))
}
