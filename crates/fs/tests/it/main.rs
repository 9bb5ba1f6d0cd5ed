//! sendense-fs against images made by the real tools (mkfs.ext4, mkntfs + ntfs-3g, mkfs.fat +
//! mtools, sgdisk, sfdisk): every listing and every file's SHA-256 equal to the source tree,
//! and damaged or foreign images answering clear errors.

// An integration test binary: every module is test code; helpers unwrap and index 64-bit sizes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    clippy::tests_outside_test_module
)]

mod bad_input;
mod common;
mod ext4;
mod ext4_map;
mod fat;
mod lvm;
mod ntfs;
mod tables;
