//! `SEEK_DATA`/`SEEK_HOLE` on flat extent files.
//!
//! std exposes no `SEEK_DATA`/`SEEK_HOLE`, and they are what makes
//! `allocated_extents` of a large thin flat file cheap. They go through
//! `rustix`'s safe `seek`, so this crate has no `unsafe`. The reader uses
//! positional reads only, so moving the shared file offset has no effect on
//! other threads' reads.

use std::fs::File;
use std::io;

use rustix::fs::SeekFrom;
use rustix::io::Errno;

/// Where the next data at or after `offset` starts; `None` when there is
/// none before the end of the file.
pub(crate) fn seek_data(file: &File, offset: u64) -> io::Result<Option<u64>> {
    match rustix::fs::seek(file, SeekFrom::Data(checked_off(offset)?)) {
        Ok(pos) => Ok(Some(pos)),
        Err(Errno::NXIO) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Where the next hole at or after `offset` starts (the file end at the latest).
pub(crate) fn seek_hole(file: &File, offset: u64) -> io::Result<u64> {
    Ok(rustix::fs::seek(
        file,
        SeekFrom::Hole(checked_off(offset)?),
    )?)
}

/// The kernel takes `off_t` (signed 64-bit); rustix casts, so reject offsets
/// above `i64::MAX` here instead of letting them wrap negative.
fn checked_off(offset: u64) -> io::Result<u64> {
    if i64::try_from(offset).is_ok() {
        Ok(offset)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "offset too large",
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;

    #[test]
    fn seek_data_past_last_data_returns_none() {
        let file = tempfile::tempfile().unwrap();
        file.set_len(1 << 20).unwrap();
        file.write_all_at(&[1; 4096], 0).unwrap();

        let next = seek_data(&file, 64 << 10).unwrap();

        assert_eq!(next, None);
    }

    #[test]
    fn seek_hole_after_data_returns_data_end() {
        let file = tempfile::tempfile().unwrap();
        file.set_len(1 << 20).unwrap();
        file.write_all_at(&[1; 4096], 0).unwrap();

        let hole = seek_hole(&file, 0).unwrap();

        assert!((4096..1 << 20).contains(&hole), "hole at {hole}");
    }

    #[test]
    fn seek_data_offset_above_i64_max_is_invalid_input() {
        let file = tempfile::tempfile().unwrap();

        let err = seek_data(&file, u64::MAX).unwrap_err();

        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
