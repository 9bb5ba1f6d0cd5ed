//! Read-only file systems inside a disk image, in process and in pure Rust: no kernel module,
//! no loop device, no helper VM.
//!
//! A disk is anything that reads at an offset ([`BlockRead`]); the hub hands in a restore
//! point's QCOW2 chain. [`partitions`] reads its partition table (GPT, or MBR with logical
//! partitions; LVM2 linear logical volumes on its physical volumes follow from
//! [`FIRST_LV_INDEX`]) and names the file system found in each; [`open`] opens one of them (or
//! the whole disk when it has no table) behind the one [`FileSystem`] trait: ext2/3/4
//! (`ext4-view`), NTFS (`ntfs`), FAT12/16/32 (`fatfs`). [`walk`] visits a folder's tree.
//!
//! Everything here reads bytes an attacker may have written: every size is checked, memory is
//! bounded ([`limits`]), and a damaged image answers an [`FsError`], never a panic: the
//! third-party readers run under one `catch_unwind` (module `guard`) that turns a panic of
//! theirs into [`FsError::Corrupt`] and refuses further calls on that open file system.

mod error;
mod ext4;
mod ext4_map;
mod fat;
mod gpt;
mod guard;
mod le;
mod lvm;
mod mbr;
mod ntfs;
mod path;
mod probe;
mod table;
mod volume;
mod walk;

pub use error::{FsError, FsErrorKind};
pub use path::FsPath;
pub use walk::walk;

/// Limits on what one request may cost, whatever the image says.
pub mod limits {
    /// Most entries one directory listing answers (a larger directory is an error naming it).
    pub const MAX_DIR_ENTRIES: usize = 1_000_000;
    /// Deepest folder nesting a walk descends.
    pub const MAX_DEPTH: usize = 256;
    /// Longest symbolic-link target read.
    pub const MAX_LINK_TARGET: usize = 4096;
    /// Most partitions read from one table (GPT entries and MBR logical partitions together).
    pub const MAX_PARTITIONS: usize = 256;
}

/// A disk (or part of one) that reads at an offset. Implementations must be cheap to call from
/// several threads.
pub trait BlockRead: Send + Sync {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`; reading past the end is an error.
    ///
    /// # Errors
    /// I/O errors of the underlying image.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
}

/// Which partition table a disk carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TableKind {
    /// GUID partition table (protective MBR in sector 0).
    Gpt,
    /// Master boot record, with logical partitions in extended ones.
    Mbr,
    /// No partition table: the whole disk is one volume (a file system, or nothing we know).
    None,
}

impl TableKind {
    /// `gpt`, `mbr` or `none`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gpt => "gpt",
            Self::Mbr => "mbr",
            Self::None => "none",
        }
    }
}

/// A file system this crate reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FsKind {
    /// ext2, ext3 or ext4.
    Ext4,
    /// NTFS.
    Ntfs,
    /// FAT12, FAT16 or FAT32.
    Fat,
}

impl FsKind {
    /// `ext4`, `ntfs` or `fat`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ext4 => "ext4",
            Self::Ntfs => "ntfs",
            Self::Fat => "fat",
        }
    }
}

/// What [`partitions`] found in one volume.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Detected {
    /// A file system this crate reads.
    Supported(FsKind),
    /// A known file system or volume this crate does not read (`"xfs"`, `"btrfs"`, `"swap"`,
    /// `"lvm2"`, `"luks"`, ...).
    Unsupported(&'static str),
    /// Nothing recognised.
    Unknown,
}

/// A disk's partition table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionTable {
    /// Which table.
    pub kind: TableKind,
    /// Its partitions in table order; for [`TableKind::None`] one entry covering the disk.
    pub partitions: Vec<Partition>,
}

/// One partition (or the whole disk when there is no table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Its number as Linux names it: GPT entries and MBR primaries 1..=4, MBR logicals from 5;
    /// 0 for the whole disk of a [`TableKind::None`] table. LVM2 logical volumes found on the
    /// disk's physical volumes follow the partitions, numbered from [`FIRST_LV_INDEX`] in the
    /// order of their volume group's metadata.
    pub index: u32,
    /// First byte on the disk (of a logical volume: of its first segment).
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
    /// The table's type: a GPT type GUID (lower-case, hyphenated) or an MBR type as `0x83`;
    /// `lvm2` for a logical volume.
    pub type_id: String,
    /// The GPT partition name, when set; `vg/lv` for a logical volume.
    pub name: Option<String>,
    /// What its first bytes show.
    pub detected: Detected,
}

/// The index of the first LVM2 logical volume in a [`PartitionTable`].
pub const FIRST_LV_INDEX: u32 = 1001;

/// What kind of entry a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A folder.
    Directory,
    /// A symbolic link (see [`Entry::link_target`]).
    Symlink,
    /// Anything else (device, FIFO, socket, NTFS reparse point we do not follow).
    Other,
}

impl EntryKind {
    /// `file`, `directory`, `symlink` or `other`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Directory => "directory",
            Self::Symlink => "symlink",
            Self::Other => "other",
        }
    }
}

/// One directory entry, or what [`FileSystem::stat`] answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its name in its folder (`/` for the root).
    pub name: String,
    /// What it is.
    pub kind: EntryKind,
    /// Size in bytes (a file's length; 0 for folders where the file system has none).
    pub size: u64,
    /// Unix permission bits (and file type bits) where the file system keeps them.
    pub mode: Option<u32>,
    /// Last modification, seconds since the Unix epoch, UTC.
    pub mtime: Option<i64>,
    /// A symbolic link's target, as stored.
    pub link_target: Option<String>,
}

/// A read-only file system. Not `Send` (ext4-view shares its state through `Rc`): open it,
/// use it and drop it on one thread (the hub does so on a blocking thread per request).
pub trait FileSystem {
    /// Which file system.
    fn kind(&self) -> FsKind;

    /// The entry `path` names (symbolic links are not followed).
    ///
    /// # Errors
    /// [`FsErrorKind::NotFound`] for a missing path, [`FsErrorKind::Corrupt`] for damaged
    /// metadata, I/O errors.
    fn stat(&mut self, path: &FsPath) -> Result<Entry, FsError>;

    /// The entries of the folder `path`, without `.` and `..`, in the file system's order.
    ///
    /// # Errors
    /// As [`FileSystem::stat`]; [`FsErrorKind::NotADirectory`] when `path` is not a folder;
    /// [`FsErrorKind::TooLarge`] beyond [`limits::MAX_DIR_ENTRIES`].
    fn list(&mut self, path: &FsPath) -> Result<Vec<Entry>, FsError>;

    /// Reads the regular file `path` from `offset` into `buf`; answers how many bytes were
    /// read (0 at or past its end). Sparse parts read as zeros.
    ///
    /// # Errors
    /// As [`FileSystem::stat`]; [`FsErrorKind::NotAFile`] when `path` is not a regular file.
    fn read(&mut self, path: &FsPath, offset: u64, buf: &mut [u8]) -> Result<usize, FsError>;
}

/// Reads the partition table of `disk` and probes each partition; the linear logical volumes
/// of LVM2 physical volumes on the disk follow as partitions of their own.
///
/// # Errors
/// [`FsErrorKind::Corrupt`] for a damaged table, I/O errors.
pub fn partitions(disk: &std::sync::Arc<dyn BlockRead>) -> Result<PartitionTable, FsError> {
    scan(disk).map(|(table, _)| table)
}

/// The table, and for each of its partitions its bytes or why they cannot be read.
type Scanned = (PartitionTable, Vec<Result<volume::Volume, &'static str>>);

fn scan(disk: &std::sync::Arc<dyn BlockRead>) -> Result<Scanned, FsError> {
    let (kind, raw) = table::read(disk)?;
    let mut partitions = Vec::with_capacity(raw.len());
    let mut volumes = Vec::with_capacity(raw.len());
    let mut pvs = Vec::new();
    for p in raw {
        let volume =
            volume::Volume::new(disk.clone(), p.start, p.size).ok_or_else(|| FsError::Corrupt {
                what: "partition table",
                detail: format!("partition {} lies outside the disk", p.index),
            })?;
        let detected = probe::detect(&volume)?;
        if detected == Detected::Unsupported("lvm2") {
            match lvm::read_pv(&volume) {
                Ok(pv) => pvs.push(pv),
                Err(e) => {
                    tracing::warn!(partition = p.index, error = %e, "unreadable LVM2 physical volume");
                }
            }
        }
        partitions.push(Partition {
            index: p.index,
            start: p.start,
            size: p.size,
            type_id: p.type_id,
            name: p.name,
            detected,
        });
        volumes.push(Ok(volume));
    }
    if !pvs.is_empty() {
        let lvs = match lvm::logical_volumes(&pvs) {
            Ok(lvs) => lvs,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable LVM2 metadata");
                Vec::new()
            }
        };
        for (index, lv) in (FIRST_LV_INDEX..).zip(lvs) {
            let (start, size, detected) = match &lv.volume {
                Ok(v) => (v.disk_start(), v.size(), probe::detect(v)?),
                Err(_) => (0, 0, Detected::Unsupported("lvm2 logical volume")),
            };
            partitions.push(Partition {
                index,
                start,
                size,
                type_id: "lvm2".to_owned(),
                name: Some(lv.name),
                detected,
            });
            volumes.push(lv.volume);
        }
    }
    Ok((PartitionTable { kind, partitions }, volumes))
}

/// Opens the file system in partition `index` of `disk` (as [`partitions`] numbers them;
/// `None` for a disk without a table, or when the disk has exactly one partition).
///
/// # Errors
/// [`FsErrorKind::NoSuchPartition`], [`FsErrorKind::Unsupported`] naming what was found,
/// [`FsErrorKind::Corrupt`], I/O errors.
pub fn open(
    disk: &std::sync::Arc<dyn BlockRead>,
    index: Option<u32>,
) -> Result<Box<dyn FileSystem>, FsError> {
    let (table, volumes) = scan(disk)?;
    let count = table.partitions.len();
    let at = match index {
        Some(i) => table.partitions.iter().position(|p| p.index == i),
        None if count == 1 => Some(0),
        None => None,
    }
    .ok_or(FsError::NoSuchPartition {
        index: index.unwrap_or(0),
        count,
    })?;
    let part = &table.partitions[at];
    let where_ = if table.kind == TableKind::None && part.index == 0 {
        "on the disk".to_owned()
    } else if let (true, Some(name)) = (part.index >= FIRST_LV_INDEX, &part.name) {
        format!("in logical volume {name}")
    } else {
        format!("in partition {}", part.index)
    };
    let volume = match &volumes[at] {
        Ok(v) => v.clone(),
        Err(why) => {
            return Err(FsError::unsupported(format!("{where_}: {why}")));
        }
    };
    let kind = match &part.detected {
        Detected::Supported(kind) => *kind,
        Detected::Unsupported(name) => {
            return Err(FsError::unsupported(format!("{name} {where_}")));
        }
        Detected::Unknown => {
            return Err(FsError::unsupported(format!(
                "no file system recognised {where_}"
            )));
        }
    };
    let what = match kind {
        FsKind::Ext4 => "ext4 file system",
        FsKind::Ntfs => "NTFS file system",
        FsKind::Fat => "FAT file system",
    };
    let fs = guard::contain(what, || -> Result<Box<dyn FileSystem>, FsError> {
        Ok(match kind {
            FsKind::Ext4 => Box::new(ext4::open(volume)?),
            FsKind::Ntfs => Box::new(ntfs::open(volume)?),
            FsKind::Fat => Box::new(fat::open(volume)?),
        })
    })?;
    Ok(Box::new(guard::Guarded::new(fs, what)))
}
