//! `sendense-hub image …`: operator tools over Sendense's own QCOW2 engine, and the QCOW2
//! NBD export that the hub and `image serve` share.
//!
//! `create`, `info`, `check` and `convert` need no QEMU: they are what the
//! hub itself does to repository files, offered to operators and used by our
//! tests. Their outputs are checked against `qemu-img` in the test suite.
//!
//! - [`export::Qcow2Export`]: an open QCOW2 image (with its chain) as an NBD export.
//! - [`serve`]: `image serve`, our `qemu-nbd`.
//! - [`verify`]: `image verify`, a chain read back against its layers' source digests.
//! - [`cli`]: the `image` subcommands' arguments and dispatch.
//!
//! This crate knows nothing about backups: it works on image files.
#![forbid(unsafe_code)]

pub mod cli;
mod convert;
pub mod export;
mod input;
mod report;
pub mod serve;
mod size;
pub mod verify;

use std::path::{Path, PathBuf};

use sendense_qcow2::{BackingFormat, BackingPolicy, BackingSpec, CreateOptions, Image, Qcow2Error};

pub use convert::{ConvertOptions, ConvertReport, OutputFormat, convert};
pub use input::{Input, QCOW2_MAGIC, is_qcow2};
pub use report::{CheckSummary, LayerInfo, check, check_with, info, info_with};
pub use size::{ByteSize, human};

/// Errors of the image tools and `image serve`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// A file could not be read, written or created.
    #[error("I/O error on {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Our QCOW2 engine refused or failed.
    #[error("QCOW2 error in {path}")]
    Qcow2 {
        /// The image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Qcow2Error,
    },
    /// `-B` was given for a raw output.
    #[error("A backing file (-B) needs QCOW2 output (-O qcow2)")]
    BackingNeedsQcow2,
    /// The output path names no file.
    #[error("Output path {0} names no file")]
    BadOutputPath(PathBuf),
    /// `create` without a size and without a backing file to take it from.
    #[error("No size given: name a SIZE, or a backing file (-b) whose size to take")]
    MissingSize,
    /// A worker thread panicked (a bug).
    #[error("A worker thread panicked")]
    WorkerPanicked,
    /// `image serve`: the TLS folder could not be used.
    #[error("Cannot load TLS material from {dir}")]
    Tls {
        /// The folder.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: sendense_nbd::NbdError,
    },
    /// `image serve`: the listen address could not be bound.
    #[error("Cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `image serve`: the NBD server failed.
    #[error("NBD server failed")]
    Nbd(#[from] sendense_nbd::NbdError),
    /// A layer of the chain has no digests file beside it.
    #[error(
        "{image} has no digests beside it (its client did not send them): it cannot be verified"
    )]
    NoDigests {
        /// The layer's image.
        image: PathBuf,
    },
    /// A digests file is damaged.
    #[error("Digests file {path} is damaged")]
    Digests {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: sendense_digest::DigestError,
    },
    /// The digests describe a disk of another size than the image.
    #[error("Image {path} holds {image} bytes but its digests describe {digests}")]
    DigestSize {
        /// The image.
        path: PathBuf,
        /// The size the digests describe.
        digests: u64,
        /// The image's size.
        image: u64,
    },
    /// A chain to verify has a raw layer (Sendense writes QCOW2 layers only).
    #[error("{path} is a raw backing file: only QCOW2 layers carry digests")]
    RawLayer {
        /// The raw file.
        path: PathBuf,
    },
    /// `image serve`: the final flush failed; recent writes may not be durable.
    #[error("Final flush of {path} failed")]
    Flush {
        /// The image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Qcow2Error,
    },
}

impl ImageError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn qcow2(path: &Path, source: Qcow2Error) -> Self {
        Self::Qcow2 {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Options of [`create`].
#[derive(Debug, Clone)]
pub struct CreateArgs {
    /// Virtual size in bytes; `None` takes the backing file's size.
    pub size: Option<u64>,
    /// Cluster size in bytes (default 64 KiB).
    pub cluster_size: Option<u32>,
    /// Backing file, stored as given (relative to the new image's folder).
    pub backing: Option<String>,
    /// Use extended L2 entries (32 subclusters per cluster).
    pub extended_l2: bool,
    /// Which backing files the chain below `backing` may name (`backing`
    /// itself is the operator's choice).
    pub backing_policy: BackingPolicy,
}

/// `image create`: a new, empty QCOW2 v3 image (an overlay with a backing file).
///
/// # Errors
/// The file exists or cannot be created, the options are invalid, or the
/// backing file cannot be opened.
pub fn create(path: &Path, args: &CreateArgs) -> Result<(), ImageError> {
    let backing = match &args.backing {
        Some(name) => {
            let (spec, input) = open_backing(path, name, args.backing_policy)?;
            Some((spec, input.size()))
        }
        None => None,
    };
    let size = match (args.size, &backing) {
        (Some(size), _) => size,
        (None, Some((_, backing_size))) => *backing_size,
        (None, None) => return Err(ImageError::MissingSize),
    };
    let mut opts = CreateOptions::new(size);
    if let Some(cs) = args.cluster_size {
        opts.cluster_size = cs;
    }
    opts.extended_l2 = args.extended_l2;
    opts.backing = backing.map(|(spec, _)| spec);
    opts.backing_policy = args.backing_policy;
    let image = Image::create(path, &opts).map_err(|e| ImageError::qcow2(path, e))?;
    image.flush().map_err(|e| ImageError::qcow2(path, e))
}

/// Opens the backing file `name` of an image to be made at `image`, and
/// the spec to store in its header (the name verbatim, the detected format).
/// The operator names it, so it is opened wherever it is (a relative name
/// from `image`'s folder); the backing files the chain below it names are
/// opened only as `policy` allows, from its own folder.
///
/// # Errors
/// The backing file cannot be opened, or the policy refuses a backing file
/// of its chain.
pub fn open_backing(
    image: &Path,
    name: &str,
    policy: BackingPolicy,
) -> Result<(BackingSpec, Input), ImageError> {
    let path = BackingPolicy::any()
        .resolve(image, name)
        .map_err(|e| ImageError::qcow2(image, e))?;
    let input = Input::open_with(&path, policy)?;
    let format = match input {
        Input::Qcow2(_) => BackingFormat::Qcow2,
        Input::Raw(_) => BackingFormat::Raw,
    };
    Ok((
        BackingSpec {
            file: name.to_owned(),
            format,
        },
        input,
    ))
}

/// A progress bar on stderr when `enabled` and stderr is a terminal; hidden otherwise.
pub fn progress_bar(enabled: bool, total: u64, what: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !enabled || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    let style = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
    )
    .map(|s| s.progress_chars("=> "));
    if let Ok(style) = style {
        bar.set_style(style);
    }
    bar.set_message(what.to_owned());
    bar
}
