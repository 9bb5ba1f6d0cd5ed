//! FAT12, FAT16 and FAT32 through `fatfs`, behind a read-only adapter.
//!
//! `fatfs` wants `Read + Write + Seek`; it gets a [`ReadOnly`] cursor whose writes fail, so
//! nothing can change the image (it does not write when only reading, and its unmount on drop
//! fails harmlessly). Paths are resolved here, one component at a time over a bounded
//! iteration of each folder (long names first, then short names, case-insensitively as FAT
//! does), instead of `fatfs`'s own `open_dir`, so a hostile folder costs at most
//! [`limits::MAX_DIR_ENTRIES`] entries and a [`Budget`] of reads.
//!
//! FAT keeps no permissions (mode is `None`) and local times: they are reported as if UTC.

use std::io::{Read, Seek, SeekFrom};

use fatfs::{Dir, DirEntry, FsOptions};

use crate::error::FsError;
use crate::volume::{Budget, BudgetExceeded, ReadOnly, Volume, VolumeCursor};
use crate::{Entry, EntryKind, FileSystem, FsKind, FsPath, limits};

type Io = ReadOnly<VolumeCursor>;

/// An open FAT file system.
pub(crate) struct FatFs {
    fs: fatfs::FileSystem<Io>,
    budget: Budget,
    volume_size: u64,
}

impl std::fmt::Debug for FatFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FatFs").finish_non_exhaustive()
    }
}

/// Opens the FAT file system in `volume`.
///
/// # Errors
/// [`FsError::Corrupt`] for a damaged boot sector, I/O errors.
pub(crate) fn open(volume: Volume) -> Result<FatFs, FsError> {
    let budget = Budget::default();
    let volume_size = volume.size();
    let cursor = VolumeCursor::new(volume, budget.clone());
    let fs =
        fatfs::FileSystem::new(ReadOnly(cursor), FsOptions::new()).map_err(|e| map_io(e, "/"))?;
    Ok(FatFs {
        fs,
        budget,
        volume_size,
    })
}

/// What a path resolves to.
enum Found<'a> {
    Root,
    Entry(DirEntry<'a, Io>),
}

impl FatFs {
    /// Resolves `path` one component at a time.
    fn find(&self, path: &FsPath) -> Result<Found<'_>, FsError> {
        let mut dir = self.fs.root_dir();
        let mut found = Found::Root;
        let comps = path.components();
        for (i, name) in comps.iter().enumerate() {
            let here = || FsPath::parse(&format!("/{}", comps[..=i].join("/")));
            let entry = lookup(&dir, name, path)?.ok_or_else(|| FsError::NotFound {
                path: here().map_or_else(|_| path.to_string(), |p| p.to_string()),
            })?;
            if i + 1 < comps.len() {
                if !entry.is_dir() {
                    return Err(FsError::NotADirectory {
                        path: path.to_string(),
                    });
                }
                dir = entry.to_dir();
            }
            found = Found::Entry(entry);
        }
        Ok(found)
    }
}

/// The entry `name` in `dir`: an exact long name, else a case-insensitive long or short name.
fn lookup<'a>(
    dir: &Dir<'a, Io>,
    name: &str,
    path: &FsPath,
) -> Result<Option<DirEntry<'a, Io>>, FsError> {
    let mut loose = None;
    for (count, item) in dir.iter().enumerate() {
        if count >= limits::MAX_DIR_ENTRIES {
            return Err(too_many(path));
        }
        let item = item.map_err(|e| map_io(e, &path.to_string()))?;
        let long = item.file_name();
        if long == name {
            return Ok(Some(item));
        }
        if loose.is_none()
            && (long.to_lowercase() == name.to_lowercase()
                || item.short_file_name().eq_ignore_ascii_case(name))
        {
            loose = Some(item);
        }
    }
    Ok(loose)
}

impl FileSystem for FatFs {
    fn kind(&self) -> FsKind {
        FsKind::Fat
    }

    fn stat(&mut self, path: &FsPath) -> Result<Entry, FsError> {
        self.budget.refill(self.volume_size, 0);
        Ok(match self.find(path)? {
            Found::Root => root_entry(),
            Found::Entry(e) => entry(&e),
        })
    }

    fn list(&mut self, path: &FsPath) -> Result<Vec<Entry>, FsError> {
        self.budget.refill(self.volume_size, 0);
        let dir = match self.find(path)? {
            Found::Root => self.fs.root_dir(),
            Found::Entry(e) if e.is_dir() => e.to_dir(),
            Found::Entry(_) => {
                return Err(FsError::NotADirectory {
                    path: path.to_string(),
                });
            }
        };
        let mut out = Vec::new();
        for item in dir.iter() {
            let item = item.map_err(|e| map_io(e, &path.to_string()))?;
            let name = item.file_name();
            if name == "." || name == ".." {
                continue;
            }
            if out.len() >= limits::MAX_DIR_ENTRIES {
                return Err(too_many(path));
            }
            out.push(entry(&item));
        }
        Ok(out)
    }

    fn read(&mut self, path: &FsPath, offset: u64, buf: &mut [u8]) -> Result<usize, FsError> {
        self.budget.refill(self.volume_size, buf.len());
        let e = match self.find(path)? {
            Found::Entry(e) if e.is_file() => e,
            _ => {
                return Err(FsError::NotAFile {
                    path: path.to_string(),
                });
            }
        };
        if offset >= e.len() {
            return Ok(0);
        }
        let at = path.to_string();
        let mut file = e.to_file();
        file.seek(SeekFrom::Start(offset))
            .map_err(|err| map_io(err, &at))?;
        let mut done = 0;
        while done < buf.len() {
            let n = file
                .read(&mut buf[done..])
                .map_err(|err| map_io(err, &at))?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(done)
    }
}

fn root_entry() -> Entry {
    Entry {
        name: "/".to_owned(),
        kind: EntryKind::Directory,
        size: 0,
        mode: None,
        mtime: None,
        link_target: None,
    }
}

fn entry(e: &DirEntry<'_, Io>) -> Entry {
    let dir = e.is_dir();
    Entry {
        name: e.file_name(),
        kind: if dir {
            EntryKind::Directory
        } else {
            EntryKind::File
        },
        size: if dir { 0 } else { e.len() },
        mode: None,
        mtime: unix_time(e.modified()),
        link_target: None,
    }
}

/// A FAT local date and time as Unix seconds, read as UTC; `None` for an impossible date.
fn unix_time(t: fatfs::DateTime) -> Option<i64> {
    let (y, m, d) = (
        i64::from(t.date.year),
        i64::from(t.date.month),
        i64::from(t.date.day),
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || t.time.hour > 23 || t.time.min > 59 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(
        days * 86_400
            + i64::from(t.time.hour) * 3600
            + i64::from(t.time.min) * 60
            + i64::from(t.time.sec),
    )
}

fn too_many(path: &FsPath) -> FsError {
    FsError::TooLarge {
        what: format!(
            "folder {path} has more than {} entries",
            limits::MAX_DIR_ENTRIES
        ),
    }
}

/// A `fatfs` error: ours when the cursor ran out of budget, corrupt metadata when `fatfs`
/// found it invalid, else an I/O error.
fn map_io(e: std::io::Error, path: &str) -> FsError {
    if e.get_ref()
        .is_some_and(|inner| inner.is::<BudgetExceeded>())
    {
        return FsError::Corrupt {
            what: "FAT file system",
            detail: format!("{e} (at {path})"),
        };
    }
    match e.kind() {
        std::io::ErrorKind::InvalidData
        | std::io::ErrorKind::InvalidInput
        | std::io::ErrorKind::UnexpectedEof
        | std::io::ErrorKind::Other => FsError::Corrupt {
            what: "FAT file system",
            detail: format!("{e} (at {path})"),
        },
        _ => FsError::Io(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fat_time_converts_as_utc() {
        let t = fatfs::DateTime {
            date: fatfs::Date {
                year: 2024,
                month: 2,
                day: 29,
            },
            time: fatfs::Time {
                hour: 13,
                min: 14,
                sec: 16,
                millis: 0,
            },
        };
        assert_eq!(unix_time(t), Some(1_709_212_456));
    }
}
