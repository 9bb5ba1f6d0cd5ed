//! Thin wrappers over the Linux calls std does not expose: `lseek` with
//! `SEEK_DATA`/`SEEK_HOLE` and `fallocate` (punch hole, zero range).
//!
//! `FileExport` needs them for `base:allocation` block status and cheap
//! `WRITE_ZEROES`/`TRIM`. They go through `rustix`'s safe API, so this crate
//! has no `unsafe` at all. Each call borrows an open file descriptor and
//! passes plain integers. `lseek` moves the shared file position, which this
//! crate never relies on (all data I/O is positional).

use std::fs::File;
use std::io;

use rustix::fs::{FallocateFlags, SeekFrom};
use rustix::io::Errno;

/// `lseek(SEEK_DATA)`: the next offset at or after `offset` holding data, or
/// `None` if only a hole remains up to end of file.
pub(crate) fn seek_data(file: &File, offset: u64) -> io::Result<Option<u64>> {
    match rustix::fs::seek(file, SeekFrom::Data(checked_off(offset)?)) {
        Ok(v) => Ok(Some(v)),
        Err(Errno::NXIO) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// `lseek(SEEK_HOLE)`: the next hole at or after `offset` (end of file counts as a hole).
pub(crate) fn seek_hole(file: &File, offset: u64) -> io::Result<u64> {
    Ok(rustix::fs::seek(
        file,
        SeekFrom::Hole(checked_off(offset)?),
    )?)
}

/// `fallocate(PUNCH_HOLE | KEEP_SIZE)`: deallocate, reads return zeroes.
pub(crate) fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    fallocate(
        file,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        offset,
        len,
    )
}

/// `fallocate(ZERO_RANGE | KEEP_SIZE)`: zero without writing data blocks.
pub(crate) fn zero_range(file: &File, offset: u64, len: u64) -> io::Result<()> {
    fallocate(
        file,
        FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE,
        offset,
        len,
    )
}

fn fallocate(file: &File, mode: FallocateFlags, offset: u64, len: u64) -> io::Result<()> {
    rustix::fs::fallocate(file, mode, checked_off(offset)?, checked_off(len)?)?;
    Ok(())
}

/// The kernel takes `off_t` (signed 64-bit); rustix casts, so reject values
/// above `i64::MAX` here instead of letting them wrap negative.
fn checked_off(value: u64) -> io::Result<u64> {
    if i64::try_from(value).is_ok() {
        Ok(value)
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

    #[test]
    fn punch_hole_range_reads_back_zeroes() {
        let file = tempfile::tempfile().unwrap();
        file.write_all_at(&[7; 16384], 0).unwrap();

        punch_hole(&file, 4096, 8192).unwrap();

        let mut buf = [1u8; 16384];
        file.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!((buf[4095], buf[4096], buf[12287], buf[12288]), (7, 0, 0, 7));
    }

    #[test]
    fn zero_range_keeps_file_size() {
        let file = tempfile::tempfile().unwrap();
        file.write_all_at(&[7; 16384], 0).unwrap();

        zero_range(&file, 8192, 16384).unwrap();

        assert_eq!(file.metadata().unwrap().len(), 16384);
    }
}
