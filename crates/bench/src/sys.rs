//! The few system calls std does not offer: per-child resource usage, signals, and tying a
//! child's life to ours.
//!
//! JUSTIFICATION for `unsafe`: `wait4` is the only way to get one child's own CPU times and peak
//! RSS (`getrusage(RUSAGE_CHILDREN)` mixes every reaped child); `waitid(WNOWAIT)` lets a
//! watcher thread learn that a child ended without reaping it (so its pid stays ours and
//! `wait4` still gets its usage); `kill` sends SIGTERM for a
//! graceful stop (std only sends SIGKILL); `prctl(PR_SET_PDEATHSIG)` in `pre_exec` makes every
//! child die with the harness even when the harness itself is SIGKILLed, so no `qemu-nbd` is
//! ever leaked; `sysconf(_SC_CLK_TCK)` converts `/proc/PID/stat` ticks. Each call passes only
//! plain integers or pointers to live locals.
#![allow(unsafe_code)]

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus};
use std::time::Duration;

/// One reaped child's resource usage, from `wait4`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Usage {
    /// User plus system CPU time.
    pub(crate) cpu: Duration,
    /// Peak resident set size in bytes (`ru_maxrss`).
    pub(crate) max_rss_bytes: u64,
}

/// Waits for child `pid`; with `block == false` answers `None` at once when it still runs.
pub(crate) fn wait4(pid: i32, block: bool) -> io::Result<Option<(ExitStatus, Usage)>> {
    use std::os::unix::process::ExitStatusExt;
    let flags = if block { 0 } else { libc::WNOHANG };
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: all-zero bytes are a valid `rusage` (a struct of integers).
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers point to live, writable locals of the right types.
        let rc = unsafe { libc::wait4(pid, &raw mut status, flags, &raw mut usage) };
        if rc == -1 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if rc == 0 {
            return Ok(None);
        }
        let cpu = timeval(usage.ru_utime) + timeval(usage.ru_stime);
        let max_rss_bytes = u64::try_from(usage.ru_maxrss)
            .unwrap_or(0)
            .saturating_mul(1024);
        return Ok(Some((
            ExitStatus::from_raw(status),
            Usage { cpu, max_rss_bytes },
        )));
    }
}

/// Blocks until child `pid` has ended, without reaping it (`waitid` with `WNOWAIT`): the
/// caller can still `wait4` it for its usage, and no other process can take its pid meanwhile.
pub(crate) fn wait_ended(pid: i32) -> io::Result<()> {
    let id = libc::id_t::try_from(pid).map_err(|_| io::Error::other("negative process id"))?;
    loop {
        // SAFETY: all-zero bytes are a valid `siginfo_t` (integers and unions of integers).
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a live, writable local of the right type.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                id,
                &raw mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Sends `signal` to process `pid`.
pub(crate) fn kill(pid: i32, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill takes two integers and touches no memory of ours.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Makes the child started by `cmd` receive SIGKILL when the spawning thread (the harness's
/// main thread) dies, however it dies.
pub(crate) fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe calls
    // (prctl) without allocating.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Clock ticks per second of `/proc/PID/stat` times.
pub(crate) fn clock_ticks() -> u64 {
    // SAFETY: sysconf takes an integer and touches no memory of ours.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|t| *t > 0).unwrap_or(100)
}

fn timeval(tv: libc::timeval) -> Duration {
    let secs = u64::try_from(tv.tv_sec).unwrap_or(0);
    let micros = u32::try_from(tv.tv_usec).unwrap_or(0).min(999_999);
    Duration::new(secs, micros * 1000)
}
