//! QCOW2 v2/v3 image engine: create, open, read, write, backing chains, check, and the two
//! merges retention needs ([`Image::commit`]: a layer into its base; [`Image::absorb_backing`]:
//! a middle layer into its child).
//!
//! Synchronous and runtime-free: positional I/O (`pread`/`pwrite`) on the image file, all
//! I/O methods on `&self`, [`Image`] is `Send + Sync` and safe to drive from many threads.
//! See [`image`] for the concurrency design and [`meta`] for crash-safe write ordering.
//!
//! # Locking
//! Opens take QEMU's OFD lock bytes (`block/file-posix.c`: byte 100 + permission bit when
//! held, 200 + bit when not shared). A writable open holds read, write, write-unchanged and
//! resize and shares only read and write-unchanged, exactly like a QEMU writer: `qemu-img
//! info` without `-U` then fails, and we fail with [`Qcow2Error::Locked`] on an image QEMU
//! (or another of our opens) writes. A read-only open (also every backing file) holds
//! consistent read and does not share write or resize, so QEMU cannot write it meanwhile.
//!
//! # Formats
//! Reads QCOW2 v2 and v3 as written by qemu-img 10: zlib-compressed clusters, zero flags,
//! extended L2 (subclusters), any refcount width, QCOW2 and raw backing files. Refuses
//! encryption, external data files, zstd compression and unknown incompatible features.
//! Writes v3 images only (16-bit refcounts); v2 images, images with internal snapshots and
//! images with the dirty or corrupt bit open read-only only.
//!
//! Offsets and lengths are `u64`; buffers are indexed with `usize`. The crate only builds for
//! 64-bit targets, where `u64 as usize` is lossless, so that cast lint is allowed crate-wide.
#![allow(clippy::cast_possible_truncation)]

#[cfg(not(target_pointer_width = "64"))]
compile_error!("sendense-qcow2 requires a 64-bit target");

mod absorb;
pub mod backing;
mod chain;
mod check;
mod commit;
mod compressed;
mod copy;
mod core;
mod create;
pub mod error;
pub mod image;
mod info;
mod l2_entry;
pub mod layers;
mod lock;
pub mod meta;
mod offset;
mod open;
mod options;
pub mod parse;
pub mod raw;
mod read;
mod repair;
mod status;
pub mod storage;
mod sys;
mod write;
mod zero;

pub use backing::{BackingPaths, BackingPolicy, MemFolder};
pub use chain::{Backing, RawBacking};
pub use check::{CheckReport, check_path, check_path_with};
pub use error::{ErrorKind, Qcow2Error};
pub use image::Image;
pub use info::{BackingInfo, ImageInfo};
pub use layers::{LayerSource, Layers};
pub use options::{BackingSpec, CreateOptions, OpenOptions};
/// Chain depth limits: [`DEFAULT_CHAIN_DEPTH`] is what [`OpenOptions::read_only`],
/// [`OpenOptions::writable`] and [`Image::create`] open (a chain writer starts a new full
/// before reaching it); [`MAX_CHAIN_DEPTH`] caps any [`OpenOptions::max_chain_depth`].
pub use options::{DEFAULT_CHAIN_DEPTH, MAX_CHAIN_DEPTH};
pub use parse::{BackingFormat, CompressionType};
pub use sendense_io::{AlignedBuf, is_direct_aligned};
pub use status::{Extent, ExtentState};
pub use storage::{CACHED_READ_MAX, DIRECT_ALIGN, FileStorage, MemStorage, Storage};
