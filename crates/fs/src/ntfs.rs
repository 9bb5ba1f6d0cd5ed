//! NTFS through the `ntfs` crate, over a [`VolumeCursor`].
//!
//! Choices:
//! - Listings hide the NTFS metadata files: entries whose MFT record number is below 24 (the
//!   records NTFS reserves: `$MFT`, `$MFTMirr`, `$LogFile`, `$Volume`, `$AttrDef`, the root
//!   itself `.`, `$Bitmap`, `$Boot`, `$BadClus`, `$Secure`, `$UpCase`, `$Extend`, ...). They
//!   live only in the root, and a path naming one still resolves.
//! - Each file is listed once per hard link; the 8.3 (DOS namespace) alias of a long name is
//!   left out.
//! - A file's content is its unnamed `$DATA` stream (resident or not; sparse runs read as
//!   zeros); size is that stream's length, 0 for folders. mtime is the modification time of
//!   `$STANDARD_INFORMATION` (100 ns units since 1601, converted to Unix seconds). No mode.
//! - Symbolic links: Windows symbolic links and junctions (reparse tags `0xA000000C`,
//!   `0xA0000003`) are `Symlink` with their print name (else substitute name) as target;
//!   other reparse points are `Other`. `ntfs-3g` writes Interix symbolic links instead: a
//!   file with the SYSTEM attribute whose data starts with `IntxLNK\x01` followed by the
//!   UTF-16LE target; those are `Symlink` too.
//! - Names are looked up with `ntfs`'s case-insensitive index search, as Windows does.

use std::io::SeekFrom;

use ntfs::indexes::NtfsFileNameIndex;
use ntfs::structured_values::{NtfsFileAttributeFlags, NtfsFileNamespace};
use ntfs::{Ntfs, NtfsAttributeType, NtfsError, NtfsFile, NtfsReadSeek};

use crate::error::FsError;
use crate::volume::{Budget, BudgetExceeded, Volume, VolumeCursor};
use crate::{Entry, EntryKind, FileSystem, FsKind, FsPath, limits};

/// First MFT record number that is not an NTFS metadata file.
const FIRST_USER_RECORD: u64 = 24;
/// Interix symbolic link magic.
const INTERIX_LINK: &[u8; 8] = b"IntxLNK\x01";
/// Largest reparse point (NTFS limits them to 16 KiB).
const MAX_REPARSE: u64 = 16 * 1024;

/// An open NTFS file system.
pub(crate) struct NtfsFs {
    ntfs: Ntfs,
    io: VolumeCursor,
    budget: Budget,
}

impl std::fmt::Debug for NtfsFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NtfsFs").finish_non_exhaustive()
    }
}

/// Opens the NTFS file system in `volume`.
///
/// # Errors
/// [`FsError::Corrupt`] for a damaged boot sector or `$UpCase`, I/O errors.
pub(crate) fn open(volume: Volume) -> Result<NtfsFs, FsError> {
    let budget = Budget::default();
    let mut io = VolumeCursor::new(volume, budget.clone());
    let mut ntfs = Ntfs::new(&mut io).map_err(|e| map_err(e, "/"))?;
    ntfs.read_upcase_table(&mut io)
        .map_err(|e| map_err(e, "/"))?;
    Ok(NtfsFs { ntfs, io, budget })
}

impl NtfsFs {
    fn refill(&self, buf_len: usize) {
        self.budget.refill(self.io.volume().size(), buf_len);
    }
}

/// The file `path` names.
fn find<'n>(ntfs: &'n Ntfs, io: &mut VolumeCursor, path: &FsPath) -> Result<NtfsFile<'n>, FsError> {
    let at = path.to_string();
    let mut file = ntfs.root_directory(io).map_err(|e| map_err(e, &at))?;
    for name in path.components() {
        if !file.is_directory() {
            return Err(FsError::NotADirectory { path: at });
        }
        let next = {
            let index = file.directory_index(io).map_err(|e| map_err(e, &at))?;
            let mut finder = index.finder();
            let entry = NtfsFileNameIndex::find(&mut finder, ntfs, io, name)
                .ok_or_else(|| FsError::NotFound { path: at.clone() })?
                .map_err(|e| map_err(e, &at))?;
            entry.to_file(ntfs, io).map_err(|e| map_err(e, &at))?
        };
        file = next;
    }
    Ok(file)
}

/// The entry of `file`, named `name`.
fn entry(
    io: &mut VolumeCursor,
    file: &NtfsFile<'_>,
    name: &str,
    at: &str,
) -> Result<Entry, FsError> {
    let info = file.info().map_err(|e| map_err(e, at))?;
    let attrs = info.file_attributes();
    let mtime = nt_time_to_unix(info.modification_time().nt_timestamp());
    let mut e = Entry {
        name: name.to_owned(),
        kind: EntryKind::File,
        size: 0,
        mode: None,
        mtime: Some(mtime),
        link_target: None,
    };
    if attrs.contains(NtfsFileAttributeFlags::REPARSE_POINT) {
        let (kind, target) = reparse_target(io, file, at)?;
        e.kind = kind;
        e.link_target = target;
        return Ok(e);
    }
    if file.is_directory() {
        e.kind = EntryKind::Directory;
        return Ok(e);
    }
    e.size = data_len(io, file, at)?;
    if attrs.contains(NtfsFileAttributeFlags::SYSTEM)
        && let Some(target) = interix_target(io, file, e.size, at)?
    {
        e.kind = EntryKind::Symlink;
        e.link_target = Some(target);
    }
    Ok(e)
}

/// The length of the unnamed `$DATA` stream (0 when there is none).
fn data_len(io: &mut VolumeCursor, file: &NtfsFile<'_>, at: &str) -> Result<u64, FsError> {
    let Some(item) = file.data(io, "") else {
        return Ok(0);
    };
    let item = item.map_err(|e| map_err(e, at))?;
    let attr = item.to_attribute().map_err(|e| map_err(e, at))?;
    Ok(attr.value_length())
}

/// Reads up to `buf.len()` bytes of the unnamed `$DATA` stream at `offset`.
fn read_data(
    io: &mut VolumeCursor,
    file: &NtfsFile<'_>,
    offset: u64,
    buf: &mut [u8],
    at: &str,
) -> Result<usize, FsError> {
    let Some(item) = file.data(io, "") else {
        return Ok(0);
    };
    let item = item.map_err(|e| map_err(e, at))?;
    let attr = item.to_attribute().map_err(|e| map_err(e, at))?;
    if offset >= attr.value_length() {
        return Ok(0);
    }
    let mut value = attr.value(io).map_err(|e| map_err(e, at))?;
    value
        .seek(io, SeekFrom::Start(offset))
        .map_err(|e| map_err(e, at))?;
    let mut done = 0;
    while done < buf.len() {
        let n = value
            .read(io, &mut buf[done..])
            .map_err(|e| map_err(e, at))?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

/// An Interix symbolic link's target, when `file`'s data is one.
fn interix_target(
    io: &mut VolumeCursor,
    file: &NtfsFile<'_>,
    size: u64,
    at: &str,
) -> Result<Option<String>, FsError> {
    let max = (INTERIX_LINK.len() + 2 * limits::MAX_LINK_TARGET) as u64;
    if size < INTERIX_LINK.len() as u64 || size > max || !size.is_multiple_of(2) {
        return Ok(None);
    }
    // size <= max, a few KiB.
    let mut data = vec![0u8; usize::try_from(size).unwrap_or(0)];
    let n = read_data(io, file, 0, &mut data, at)?;
    data.truncate(n);
    let Some(rest) = data.strip_prefix(INTERIX_LINK) else {
        return Ok(None);
    };
    Ok(Some(utf16le(rest)))
}

/// What a reparse point is: a symbolic link or junction with its target, or something else.
fn reparse_target(
    io: &mut VolumeCursor,
    file: &NtfsFile<'_>,
    at: &str,
) -> Result<(EntryKind, Option<String>), FsError> {
    let mut attrs = file.attributes();
    while let Some(item) = attrs.next(io) {
        let item = item.map_err(|e| map_err(e, at))?;
        let attr = item.to_attribute().map_err(|e| map_err(e, at))?;
        if attr.ty().map_err(|e| map_err(e, at))? != NtfsAttributeType::ReparsePoint {
            continue;
        }
        let len = attr.value_length();
        if len > MAX_REPARSE {
            return Err(corrupt(format!("reparse point of {len} bytes at {at}")));
        }
        // len <= 16 KiB.
        let mut data = vec![0u8; usize::try_from(len).unwrap_or(0)];
        let mut value = attr.value(io).map_err(|e| map_err(e, at))?;
        value
            .read_exact(io, &mut data)
            .map_err(|e| map_err(e, at))?;
        return Ok(parse_reparse(&data)
            .map_or((EntryKind::Other, None), |t| (EntryKind::Symlink, Some(t))));
    }
    Ok((EntryKind::Other, None))
}

/// The target of a symbolic link (`0xA000000C`) or junction (`0xA0000003`) reparse buffer.
fn parse_reparse(data: &[u8]) -> Option<String> {
    let u16_at = |o: usize| Some(u16::from_le_bytes([*data.get(o)?, *data.get(o + 1)?]));
    let tag = u32::from_le_bytes(data.get(0..4)?.try_into().ok()?);
    let path_buffer = match tag {
        0xA000_000C => 20,
        0xA000_0003 => 16,
        _ => return None,
    };
    let name = |off: usize, len: usize| -> Option<String> {
        let start = path_buffer + usize::from(u16_at(off)?);
        let bytes = data.get(start..start.checked_add(usize::from(u16_at(len)?))?)?;
        (!bytes.is_empty()).then(|| utf16le(bytes))
    };
    // Substitute name at 8/10, print name at 12/14.
    name(12, 14).or_else(|| name(8, 10))
}

fn utf16le(b: &[u8]) -> String {
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16_lossy(&units)
}

/// NTFS time (100 ns since 1601-01-01) as Unix seconds.
fn nt_time_to_unix(t: u64) -> i64 {
    const EPOCH_DIFF: i64 = 11_644_473_600;
    // t / 10^7 < 2^64 / 10^7 < 2^41: fits an i64.
    i64::try_from(t / 10_000_000).unwrap_or(i64::MAX) - EPOCH_DIFF
}

impl FileSystem for NtfsFs {
    fn kind(&self) -> FsKind {
        FsKind::Ntfs
    }

    fn stat(&mut self, path: &FsPath) -> Result<Entry, FsError> {
        self.refill(0);
        let file = find(&self.ntfs, &mut self.io, path)?;
        entry(
            &mut self.io,
            &file,
            path.file_name().unwrap_or("/"),
            &path.to_string(),
        )
    }

    fn list(&mut self, path: &FsPath) -> Result<Vec<Entry>, FsError> {
        self.refill(0);
        let at = path.to_string();
        let ntfs = &self.ntfs;
        let io = &mut self.io;
        let dir = find(ntfs, io, path)?;
        if !dir.is_directory() {
            return Err(FsError::NotADirectory { path: at });
        }
        let index = dir.directory_index(io).map_err(|e| map_err(e, &at))?;
        let mut entries = index.entries();
        let mut out = Vec::new();
        while let Some(item) = entries.next(io) {
            let item = item.map_err(|e| map_err(e, &at))?;
            let Some(key) = item.key() else {
                continue;
            };
            let key = key.map_err(|e| map_err(e, &at))?;
            if key.namespace() == NtfsFileNamespace::Dos {
                continue;
            }
            if item.file_reference().file_record_number() < FIRST_USER_RECORD {
                continue;
            }
            if out.len() >= limits::MAX_DIR_ENTRIES {
                return Err(FsError::TooLarge {
                    what: format!(
                        "folder {at} has more than {} entries",
                        limits::MAX_DIR_ENTRIES
                    ),
                });
            }
            let name = key.name().to_string_lossy();
            let file = item.to_file(ntfs, io).map_err(|e| map_err(e, &at))?;
            let child = format!("{}/{name}", at.trim_end_matches('/'));
            out.push(entry(io, &file, &name, &child)?);
        }
        Ok(out)
    }

    fn read(&mut self, path: &FsPath, offset: u64, buf: &mut [u8]) -> Result<usize, FsError> {
        self.refill(buf.len());
        let at = path.to_string();
        let file = find(&self.ntfs, &mut self.io, path)?;
        let e = entry(&mut self.io, &file, path.file_name().unwrap_or("/"), &at)?;
        if e.kind != EntryKind::File {
            return Err(FsError::NotAFile { path: at });
        }
        read_data(&mut self.io, &file, offset, buf, &at)
    }
}

fn corrupt(detail: String) -> FsError {
    FsError::Corrupt {
        what: "NTFS file system",
        detail,
    }
}

/// One `ntfs` error as ours.
fn map_err(e: NtfsError, at: &str) -> FsError {
    match e {
        NtfsError::Io(io) => {
            if io.get_ref().is_some_and(|i| i.is::<BudgetExceeded>()) {
                corrupt(format!("{io} (at {at})"))
            } else if io.kind() == std::io::ErrorKind::UnexpectedEof {
                corrupt(format!(
                    "a structure points past the partition's end (at {at})"
                ))
            } else {
                FsError::Io(io)
            }
        }
        NtfsError::NotADirectory { .. } => FsError::NotADirectory {
            path: at.to_owned(),
        },
        other => corrupt(format!("{other} (at {at})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nt_time_converts_to_unix_seconds() {
        // 2024-01-01T00:00:00Z.
        assert_eq!(nt_time_to_unix(133_485_408_000_000_000), 1_704_067_200);
    }

    #[test]
    fn symlink_reparse_buffer_gives_its_print_name() {
        let sub: Vec<u8> = "\\??\\C:\\t"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        let print: Vec<u8> = "C:\\t".encode_utf16().flat_map(u16::to_le_bytes).collect();
        let mut d = Vec::new();
        d.extend_from_slice(&0xA000_000Cu32.to_le_bytes());
        d.extend_from_slice(&0u16.to_le_bytes());
        d.extend_from_slice(&0u16.to_le_bytes());
        d.extend_from_slice(&0u16.to_le_bytes());
        d.extend_from_slice(&u16::try_from(sub.len()).unwrap().to_le_bytes());
        d.extend_from_slice(&u16::try_from(sub.len()).unwrap().to_le_bytes());
        d.extend_from_slice(&u16::try_from(print.len()).unwrap().to_le_bytes());
        d.extend_from_slice(&0u32.to_le_bytes());
        d.extend_from_slice(&sub);
        d.extend_from_slice(&print);
        assert_eq!(parse_reparse(&d).as_deref(), Some("C:\\t"));
        assert_eq!(parse_reparse(&d[..30]), None);
    }
}
