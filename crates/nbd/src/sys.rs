//! Thin wrappers over the Linux calls std does not expose: `lseek` with
//! `SEEK_DATA`/`SEEK_HOLE` and `fallocate` (punch hole, zero range).
//!
//! JUSTIFICATION: std has no safe API for sparse-file queries or
//! `fallocate`; `FileExport` needs them for `base:allocation` block status and
//! cheap `WRITE_ZEROES`/`TRIM`. Each call takes a borrowed, open file
//! descriptor and plain integers; no memory is shared with the kernel.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// `lseek(SEEK_DATA)`: the next offset at or after `offset` holding data, or
/// `None` if only a hole remains up to end of file.
pub(crate) fn seek_data(file: &File, offset: u64) -> io::Result<Option<u64>> {
    match lseek(file, offset, libc::SEEK_DATA) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `lseek(SEEK_HOLE)`: the next hole at or after `offset` (end of file counts as a hole).
pub(crate) fn seek_hole(file: &File, offset: u64) -> io::Result<u64> {
    lseek(file, offset, libc::SEEK_HOLE)
}

fn lseek(file: &File, offset: u64, whence: libc::c_int) -> io::Result<u64> {
    let off = libc::off_t::try_from(offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
    // SAFETY: `file` is an open descriptor borrowed for the duration of the
    // call; lseek takes no pointers. It moves the shared file position, which
    // this crate never relies on (all data I/O is positional).
    let r = unsafe { libc::lseek(file.as_raw_fd(), off, whence) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    u64::try_from(r).map_err(|_| io::Error::other("negative lseek result"))
}

/// `fallocate(PUNCH_HOLE | KEEP_SIZE)`: deallocate, reads return zeroes.
pub(crate) fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    fallocate(
        file,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        offset,
        len,
    )
}

/// `fallocate(ZERO_RANGE | KEEP_SIZE)`: zero without writing data blocks.
pub(crate) fn zero_range(file: &File, offset: u64, len: u64) -> io::Result<()> {
    fallocate(
        file,
        libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
        offset,
        len,
    )
}

fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    let bad = || io::Error::new(io::ErrorKind::InvalidInput, "range too large");
    let off = libc::off_t::try_from(offset).map_err(|_| bad())?;
    let len = libc::off_t::try_from(len).map_err(|_| bad())?;
    // SAFETY: `file` is an open descriptor borrowed for the call; fallocate
    // takes no pointers and only affects the given byte range of that file.
    let r = unsafe { libc::fallocate(file.as_raw_fd(), mode, off, len) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
