//! QCOW2 v2/v3 image engine: create, open, read, write, backing chains, check, commit.
//!
//! Synchronous and runtime-free: positional I/O (`pread`/`pwrite`) on the image file, all
//! I/O methods on `&self`, [`Image`] is `Send + Sync` and safe to drive from many threads.
//! See [`image`] for the concurrency design and [`meta`] for crash-safe write ordering.
//!
//! Offsets and lengths are `u64`; buffers are indexed with `usize`. The crate only builds for
//! 64-bit targets, where `u64 as usize` is lossless, so that cast lint is allowed crate-wide.
#![allow(clippy::cast_possible_truncation)]

#[cfg(not(target_pointer_width = "64"))]
compile_error!("sendense-qcow2 requires a 64-bit target");

mod check;
mod commit;
pub mod error;
pub mod image;
mod lock;
pub mod meta;
pub mod parse;
pub mod raw;
pub mod storage;
mod sys;

pub use check::{CheckReport, check_path};
pub use error::{ErrorKind, Qcow2Error};
pub use image::{
    Backing, BackingInfo, BackingSpec, CreateOptions, Extent, ExtentState, Image, ImageInfo,
    OpenOptions, RawBacking,
};
pub use parse::{BackingFormat, CompressionType};
pub use storage::{MemStorage, Storage};
