//! Thin wrappers over the libc calls this crate needs: open file description (OFD) locks.
//!
//! JUSTIFICATION: `fcntl(F_OFD_SETLK / F_OFD_GETLK)` on single bytes has no safe wrapper in
//! std or rustix (rustix's `fcntl_lock` locks whole files); QEMU's locking protocol needs
//! exactly these calls. Hole punching goes through `sendense-io` (rustix, no `unsafe`).
#![allow(unsafe_code)]

use std::io;
use std::os::fd::AsRawFd;

/// Lock type for [`ofd_setlk`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockType {
    /// A shared (read) lock, as QEMU takes on every lock byte.
    Shared,
    /// Release.
    Unlock,
}

fn flock_for(start: u64, l_type: libc::c_short) -> io::Result<libc::flock> {
    let start = libc::off_t::try_from(start).map_err(|_| io::Error::other("lock offset"))?;
    // SAFETY: `flock` is a plain C struct for which all-zero bytes are a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = l_type;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start;
    fl.l_len = 1;
    fl.l_pid = 0;
    Ok(fl)
}

/// Sets or releases a one-byte OFD lock at `start` without waiting.
pub(crate) fn ofd_setlk(fd: &impl AsRawFd, start: u64, ty: LockType) -> io::Result<()> {
    let l_type = match ty {
        LockType::Shared => libc::F_RDLCK,
        LockType::Unlock => libc::F_UNLCK,
    };
    let fl = flock_for(start, l_type as libc::c_short)?;
    loop {
        // SAFETY: the fd is open for the duration of the call (borrowed), and `fl` is a valid,
        // initialised `flock` that outlives the call.
        let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &raw const fl) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Whether another open file description holds any lock on the byte at `start`
/// (tests for an exclusive lock, as QEMU's `qemu_lock_fd_test(.., exclusive=true)`).
pub(crate) fn ofd_conflicts(fd: &impl AsRawFd, start: u64) -> io::Result<bool> {
    let mut fl = flock_for(start, libc::F_WRLCK as libc::c_short)?;
    loop {
        // SAFETY: the fd is open for the duration of the call (borrowed), and `fl` is a valid,
        // initialised `flock` that the kernel may overwrite; it outlives the call.
        let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_GETLK, &raw mut fl) };
        if r == 0 {
            return Ok(fl.l_type != libc::F_UNLCK as libc::c_short);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
