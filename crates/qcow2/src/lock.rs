//! QEMU-compatible image locking with open file description (OFD) locks.
//!
//! QEMU (`block/file-posix.c`, `raw_apply_lock_bytes` / `raw_check_lock_bytes`) describes each
//! open of an image with shared locks on single bytes: byte `100 + i` when the opener holds
//! permission bit `i`, byte `200 + i` when it does *not* share permission bit `i` with others.
//! Before proceeding it tests, for each permission it holds, that nobody else locks
//! `200 + i`, and for each permission it does not share, that nobody else locks `100 + i`.
//! Permission bits: 0 consistent read, 1 write, 2 write unchanged, 3 resize.
//!
//! We use exactly the same bytes, so QEMU sees our opens as one of its own:
//! - writable: holds read, write, write-unchanged and resize; shares read and
//!   write-unchanged only (as a QEMU writer does). `qemu-img info` without `-U` then fails
//!   with "Failed to get shared "write" lock", and we refuse images QEMU writes.
//! - read-only: holds consistent read; shares everything but write and resize, so nobody
//!   may write the image while we read it.
//!
//! The locks belong to the open file description, so they are released when the image's
//! file is closed, and they never conflict with ourselves on the same descriptor.

use std::fs::File;
use std::path::Path;

use crate::error::Qcow2Error;
use crate::sys::{LockType, ofd_conflicts, ofd_setlk};

const PERM_BASE: u64 = 100;
const SHARED_BASE: u64 = 200;
const PERM_READ: u32 = 1 << 0;
const PERM_WRITE: u32 = 1 << 1;
const PERM_WRITE_UNCHANGED: u32 = 1 << 2;
const PERM_RESIZE: u32 = 1 << 3;
const PERM_BITS: u32 = 4;

/// How an image is being opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockMode {
    /// Reader: nobody else may write.
    Read,
    /// Writer: nobody else may write or resize.
    Write,
}

impl LockMode {
    fn perms(self) -> (u32, u32) {
        match self {
            Self::Read => (PERM_READ, PERM_READ | PERM_WRITE_UNCHANGED),
            Self::Write => (
                PERM_READ | PERM_WRITE | PERM_WRITE_UNCHANGED | PERM_RESIZE,
                PERM_READ | PERM_WRITE_UNCHANGED,
            ),
        }
    }
}

/// How many times a conflict is re-checked before it is reported.
const CONFLICT_CHECKS: u32 = 20;
/// Pause between checks. A descriptor inherited by a child process between `fork` and
/// `exec` keeps a just-closed image's locks alive for a moment; this waits that out (at most
/// 20 × 5 ms).
const CONFLICT_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

/// Applies the lock bytes of `mode` on `file` (releasing the others), then checks that no
/// other user conflicts, re-checking briefly before reporting [`Qcow2Error::Locked`].
/// On conflict our own bytes stay applied; callers close the file, which releases them.
pub(crate) fn apply(file: &File, path: &Path, mode: LockMode) -> Result<(), Qcow2Error> {
    let mut attempt = 0;
    loop {
        match apply_once(file, path, mode) {
            Err(Qcow2Error::Locked { .. }) if attempt + 1 < CONFLICT_CHECKS => {
                attempt += 1;
                std::thread::sleep(CONFLICT_PAUSE);
            }
            other => return other,
        }
    }
}

fn apply_once(file: &File, path: &Path, mode: LockMode) -> Result<(), Qcow2Error> {
    let (perm, shared) = mode.perms();
    let io = |e| Qcow2Error::io("lock", path, e);
    for i in 0..PERM_BITS {
        let bit = 1 << i;
        let ty = if perm & bit != 0 {
            LockType::Shared
        } else {
            LockType::Unlock
        };
        ofd_setlk(file, PERM_BASE + u64::from(i), ty).map_err(io)?;
        let ty = if shared & bit == 0 {
            LockType::Shared
        } else {
            LockType::Unlock
        };
        ofd_setlk(file, SHARED_BASE + u64::from(i), ty).map_err(io)?;
    }
    for i in 0..PERM_BITS {
        let bit = 1 << i;
        if perm & bit != 0 && ofd_conflicts(file, SHARED_BASE + u64::from(i)).map_err(io)? {
            return Err(Qcow2Error::Locked {
                path: path.to_path_buf(),
                byte: SHARED_BASE + u64::from(i),
            });
        }
    }
    for i in 0..PERM_BITS {
        let bit = 1 << i;
        if shared & bit == 0 && ofd_conflicts(file, PERM_BASE + u64::from(i)).map_err(io)? {
            return Err(Qcow2Error::Locked {
                path: path.to_path_buf(),
                byte: PERM_BASE + u64::from(i),
            });
        }
    }
    Ok(())
}

/// Releases every lock byte we may hold on `file` except "consistent read" (used while the
/// same process opens the file writable through another descriptor, for commit).
pub(crate) fn release_to_reader_without_unshare(
    file: &File,
    path: &Path,
) -> Result<(), Qcow2Error> {
    let io = |e| Qcow2Error::io("unlock", path, e);
    for i in 0..PERM_BITS {
        if i != 0 {
            ofd_setlk(file, PERM_BASE + u64::from(i), LockType::Unlock).map_err(io)?;
        }
        ofd_setlk(file, SHARED_BASE + u64::from(i), LockType::Unlock).map_err(io)?;
    }
    Ok(())
}
