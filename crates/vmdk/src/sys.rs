//! `SEEK_DATA`/`SEEK_HOLE` on flat extent files.
//!
//! JUSTIFICATION for `unsafe`: std exposes no `SEEK_DATA`/`SEEK_HOLE`, and
//! they are what makes `allocated_extents` of a large thin flat file cheap.
//! The only unsafe operation is the `lseek` FFI call on a file descriptor
//! borrowed from a live `File`. The reader uses positional reads only, so
//! moving the shared file offset has no effect on other threads' reads.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Where the next data at or after `offset` starts; `None` when there is
/// none before the end of the file.
pub(crate) fn seek_data(file: &File, offset: u64) -> io::Result<Option<u64>> {
    match lseek(file, offset, libc::SEEK_DATA) {
        Ok(pos) => Ok(Some(pos)),
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Where the next hole at or after `offset` starts (the file end at the latest).
pub(crate) fn seek_hole(file: &File, offset: u64) -> io::Result<u64> {
    lseek(file, offset, libc::SEEK_HOLE)
}

fn lseek(file: &File, offset: u64, whence: libc::c_int) -> io::Result<u64> {
    let off = libc::off_t::try_from(offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
    // SAFETY: `file` is a live, open File, so its descriptor is valid for the
    // duration of the call; lseek takes no pointers and has no other preconditions.
    let pos = unsafe { libc::lseek(file.as_raw_fd(), off, whence) };
    if pos < 0 {
        return Err(io::Error::last_os_error());
    }
    u64::try_from(pos).map_err(|_| io::Error::other("negative lseek result"))
}
