//! Sparse files: `SEEK_DATA` / `SEEK_HOLE` and `fallocate` (punch hole, zero range), through
//! rustix's safe API (no `unsafe`).
//!
//! [`data_runs`] is the one walk over a file's data runs that every reader uses. `lseek` moves
//! the shared file position; Sendense does only positional I/O, so that never matters.

use std::fs::File;
use std::io;

use rustix::fs::{FallocateFlags, SeekFrom};
use rustix::io::Errno;

use crate::Extent;

/// Most runs [`data_runs`] returns; the rest of a file more fragmented than this is reported
/// as one run of data (correct, only slower to copy).
pub const MAX_DATA_RUNS: usize = 1 << 20;

/// `lseek(SEEK_DATA)`: the next offset at or after `offset` holding data, or `None` if only a
/// hole remains up to the end of the file.
///
/// # Errors
/// The call's error (`EINVAL`/`EOPNOTSUPP` where the file system cannot say); an offset above
/// `i64::MAX` is `InvalidInput`.
pub fn seek_data(file: &File, offset: u64) -> io::Result<Option<u64>> {
    match rustix::fs::seek(file, SeekFrom::Data(checked_off(offset)?)) {
        Ok(v) => Ok(Some(v)),
        Err(Errno::NXIO) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// `lseek(SEEK_HOLE)`: the next hole at or after `offset` (the end of the file counts as one).
///
/// # Errors
/// The call's error; an offset above `i64::MAX` is `InvalidInput`.
pub fn seek_hole(file: &File, offset: u64) -> io::Result<u64> {
    Ok(rustix::fs::seek(
        file,
        SeekFrom::Hole(checked_off(offset)?),
    )?)
}

/// The runs of `[start, end)` that hold data, in order, touching runs merged.
///
/// A file system that cannot answer `SEEK_DATA` reports the whole range as data, and so does
/// one answering nonsense (a hole that does not lie past its data): from that point on the rest
/// of the range is one run. Reading a hole is correct, only slower; skipping data never is.
///
/// # Errors
/// Any other `lseek` error.
pub fn data_runs(file: &File, start: u64, end: u64) -> io::Result<Vec<Extent>> {
    let mut runs: Vec<Extent> = Vec::new();
    let mut pos = start;
    while pos < end {
        let data = match seek_data(file, pos) {
            Ok(Some(d)) => d,
            Ok(None) => break,
            Err(e) if pos == start && unsupported(&e) => return Ok(vec![whole(start, end)]),
            Err(e) => return Err(e),
        };
        if data >= end {
            break;
        }
        let hole = match seek_hole(file, data.max(pos)) {
            Ok(h) => h.min(end),
            Err(e) if e.raw_os_error() == Some(Errno::NXIO.raw_os_error()) => end,
            Err(e) => return Err(e),
        };
        let data = data.max(pos);
        if hole <= data || runs.len() >= MAX_DATA_RUNS {
            push(&mut runs, whole(data, end));
            break;
        }
        push(&mut runs, Extent::new(data, hole - data));
        pos = hole;
    }
    Ok(runs)
}

/// `fallocate(PUNCH_HOLE | KEEP_SIZE)`: deallocates `[offset, offset + len)`; reads return
/// zeros and the space goes back to the file system.
///
/// # Errors
/// The call's error (`EOPNOTSUPP` where the file system cannot punch holes).
pub fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    fallocate(
        file,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        offset,
        len,
    )
}

/// `fallocate(ZERO_RANGE | KEEP_SIZE)`: zeros `[offset, offset + len)` without writing data
/// blocks.
///
/// # Errors
/// The call's error (`EOPNOTSUPP` where the file system cannot do it).
pub fn zero_range(file: &File, offset: u64, len: u64) -> io::Result<()> {
    fallocate(
        file,
        FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE,
        offset,
        len,
    )
}

/// Whether `e` says the file system does not support the call (as opposed to failing it).
#[must_use]
pub fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(c) if c == Errno::INVAL.raw_os_error()
            || c == Errno::OPNOTSUPP.raw_os_error()
            || c == Errno::NOSYS.raw_os_error()
    )
}

fn fallocate(file: &File, mode: FallocateFlags, offset: u64, len: u64) -> io::Result<()> {
    rustix::fs::fallocate(file, mode, checked_off(offset)?, checked_off(len)?)?;
    Ok(())
}

fn whole(start: u64, end: u64) -> Extent {
    Extent::new(start, end - start)
}

fn push(runs: &mut Vec<Extent>, run: Extent) {
    match runs.last_mut() {
        Some(last) if last.end() == run.offset => last.length += run.length,
        _ => runs.push(run),
    }
}

/// The kernel takes `off_t` (signed 64-bit); rustix casts, so reject values above `i64::MAX`
/// here instead of letting them wrap negative.
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

    /// A 1 MiB sparse file with data at [64 KiB, 128 KiB) and [512 KiB, 576 KiB), or `None`
    /// where the temporary folder's file system does not keep holes.
    fn sparse_file() -> (tempfile::NamedTempFile, File) {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        let f = tmp.reopen().unwrap();
        f.set_len(1 << 20).unwrap();
        f.write_all_at(&[7u8; 64 << 10], 64 << 10).unwrap();
        f.write_all_at(&[9u8; 64 << 10], 512 << 10).unwrap();
        f.sync_all().unwrap();
        (tmp, f)
    }

    fn keeps_holes(f: &File) -> bool {
        seek_data(f, 0).unwrap() == Some(64 << 10)
    }

    #[test]
    fn data_runs_lists_the_written_runs_or_everything() {
        let (_tmp, f) = sparse_file();
        let runs = data_runs(&f, 0, 1 << 20).unwrap();
        if keeps_holes(&f) {
            assert_eq!(
                runs,
                vec![
                    Extent::new(64 << 10, 64 << 10),
                    Extent::new(512 << 10, 64 << 10)
                ]
            );
        } else {
            assert_eq!(runs, vec![Extent::new(0, 1 << 20)]);
        }
    }

    #[test]
    fn data_runs_clips_to_the_range() {
        let (_tmp, f) = sparse_file();
        let runs = data_runs(&f, 96 << 10, 520 << 10).unwrap();
        if keeps_holes(&f) {
            assert_eq!(
                runs,
                vec![
                    Extent::new(96 << 10, 32 << 10),
                    Extent::new(512 << 10, 8 << 10)
                ]
            );
        }
        for r in &runs {
            assert!(r.offset >= 96 << 10 && r.end() <= 520 << 10, "{r:?}");
        }
        assert!(data_runs(&f, 5, 5).unwrap().is_empty());
    }

    #[test]
    fn seek_data_past_last_data_returns_none_and_huge_offsets_are_invalid() {
        let (_tmp, f) = sparse_file();
        if keeps_holes(&f) {
            assert_eq!(seek_data(&f, 600 << 10).unwrap(), None);
            assert_eq!(seek_hole(&f, 64 << 10).unwrap(), 128 << 10);
        }
        let err = seek_data(&f, u64::MAX).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn punch_hole_and_zero_range_read_back_zeroes() {
        let (_tmp, f) = sparse_file();
        for (i, op) in [punch_hole, zero_range].into_iter().enumerate() {
            let at = if i == 0 { 64 << 10 } else { 512 << 10 };
            match op(&f, at, 4096) {
                Ok(()) => {
                    let mut back = [1u8; 4096];
                    f.read_exact_at(&mut back, at).unwrap();
                    assert!(back.iter().all(|&b| b == 0));
                }
                Err(e) => assert!(unsupported(&e), "{e}"),
            }
        }
        let len = f.metadata().unwrap().len();
        assert_eq!(len, 1 << 20, "KEEP_SIZE");
    }
}
