//! File-level restore: a restore point's partitions, folder listings and file contents
//! (`GET /api/v1/backups/{id}/disks/{key}/partitions`, `.../files`, `.../files/content`).

use serde::{Deserialize, Serialize};

use crate::names::DiskKey;
use crate::timestamp::Timestamp;

/// The query of the `files` and `files/content` routes: which partition (as `partitions`
/// numbers them; left out for a disk without a partition table or with exactly one partition)
/// and which absolute path (`/` when left out).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesQuery {
    /// Partition number (Linux numbering: 1-4 primary or GPT, 5 and up logical; 0 the whole
    /// disk).
    #[serde(default)]
    pub partition: Option<u32>,
    /// Absolute path inside the file system.
    #[serde(default)]
    pub path: Option<String>,
}

/// `GET /api/v1/backups/{id}/disks/{key}/partitions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskPartitions {
    /// The disk.
    pub disk_key: DiskKey,
    /// `gpt`, `mbr` or `none` (no table: the whole disk is partition 0).
    pub table: String,
    /// Its partitions in table order.
    pub partitions: Vec<PartitionInfo>,
}

/// One partition of [`DiskPartitions`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionInfo {
    /// Its number (the `partition` query parameter).
    pub index: u32,
    /// First byte on the disk.
    pub start: u64,
    /// Length in bytes.
    pub size_bytes: u64,
    /// The table's type: a GPT type GUID or an MBR type such as `0x83`.
    pub type_id: String,
    /// The GPT partition name, when set.
    #[serde(default)]
    pub name: Option<String>,
    /// What its first bytes show: `ext4`, `ntfs`, `fat`, a file system or volume Sendense does
    /// not read (`xfs`, `swap`, `lvm2`, ...) or `unknown`.
    pub filesystem: String,
    /// Whether its files can be browsed.
    pub browsable: bool,
}

/// `GET /api/v1/backups/{id}/disks/{key}/files`: one folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileListing {
    /// The disk.
    pub disk_key: DiskKey,
    /// The partition read.
    #[serde(default)]
    pub partition: Option<u32>,
    /// The folder listed, normalized.
    pub path: String,
    /// Its entries, without `.` and `..`, sorted by name.
    pub entries: Vec<FileEntry>,
}

/// One entry of a [`FileListing`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Its name in the folder.
    pub name: String,
    /// `file`, `directory`, `symlink` or `other`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Size in bytes.
    pub size: u64,
    /// Unix mode bits, where the file system keeps them.
    #[serde(default)]
    pub mode: Option<u32>,
    /// Last modification (left out when the file system has none, or it is before 1970).
    #[serde(default)]
    pub mtime: Option<Timestamp>,
    /// A symbolic link's target.
    #[serde(default)]
    pub link_target: Option<String>,
}
