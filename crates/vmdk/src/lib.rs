//! VMDK reader: descriptors, flat, monolithicSparse, twoGbMaxExtent and
//! streamOptimized extents.
//!
//! [`VmdkImage`] opens a VMware virtual disk read-only and serves positional
//! reads of guest data plus the runs that may hold data
//! ([`VmdkImage::allocated_extents`]), which is what the client sends for a
//! full backup. Everything read from disk is hostile until validated: sizes
//! are checked against the file length and named limits before any
//! allocation, and damage is reported as a [`VmdkError`] naming the problem.
//!
//! Modules: [`descriptor`] (text descriptor, pure), [`header`] (sparse
//! header and markers, pure), `raw` (byte layouts), `sparse` (grain
//! directory/tables, compressed grains), `image` (extent concatenation,
//! open policy), `storage` (positional file access; `SEEK_DATA` through `sendense-io`).
//!
//! Limits (all named constants): descriptor text 1 MiB and 1024 extents;
//! grains of 1 to 2048 sectors (power of two); 1 to 512 grain table entries
//! per table; 2^40 sectors (512 TiB) per disk; grain directory 16 MiB; grain
//! table cache 4 MiB per image by default; one inflated grain cached per
//! image; compressed grains at most one grain + 4 KiB and inflating to at most
//! one grain. Not supported (clear errors): delta disks with a parent,
//! `COWD`/`VMFSSPARSE`, device extents (`VMFSRDM`, `VMFSRAW`).
//!
//! # Why not `vmdk-core`
//!
//! The issue asked to evaluate crates.io's `vmdk-core` (0.8.4) first. It
//! reads the right subformats, but it is rejected because: its reader is
//! `VmdkReader<R: Read + Seek>` with `&mut self` reads (a cursor), so
//! concurrent positional reads need one mutex around every read instead of
//! `&self` + `pread`; descriptor extent names are joined onto the
//! descriptor's folder without any policy (absolute paths and `..` escape it,
//! against STYLE §6 "open extents only through a caller policy"); and it
//! pulls forensic extras (md-5, sha2, safe-read, chain/COWD/SESparse
//! recovery) we would have to audit but do not need. Our reader is a few
//! hundred lines focused on the backup path.

#![forbid(unsafe_code)]

mod error;
mod image;
mod raw;
mod runs;
mod sparse;
mod storage;

pub mod descriptor;
pub mod header;

pub use descriptor::{Access, DdbEntry, Descriptor, Extent, ExtentKind};
pub use error::{VmdkError, VmdkErrorKind};
pub use image::{ExtentPathPolicy, OpenOptions, VmdkImage};
