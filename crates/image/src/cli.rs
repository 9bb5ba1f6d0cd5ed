//! `sendense-hub image …`: the image subcommands' arguments ([`ImageCommand`]) and their
//! dispatch ([`run`]). The hub binary flattens them into its command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};

use crate::serve::{ServeOptions, serve_image};
use crate::{ByteSize, ConvertOptions, CreateArgs, ImageError, OutputFormat};

/// Which backing files the image commands open.
#[derive(Debug, Clone, Copy, Args)]
pub struct BackingArgs {
    /// Open backing files wherever an image names them: absolute paths,
    /// `..`, symlinks out of the image's folder. By default only relative
    /// names resolving to the image's folder or below are opened, so that a
    /// crafted image cannot make us read (or serve) a file such as
    /// /etc/shadow. Needed for overlays whose backing name is an absolute
    /// path (as `qemu-img create -b /abs/base.qcow2` stores it); use only on
    /// images you trust.
    #[arg(long)]
    pub allow_any_backing: bool,
}

impl BackingArgs {
    /// The engine's policy for these flags.
    #[must_use]
    pub fn policy(self) -> sendense_qcow2::BackingPolicy {
        if self.allow_any_backing {
            sendense_qcow2::BackingPolicy::any()
        } else {
            sendense_qcow2::BackingPolicy::below()
        }
    }
}

/// `sendense-hub image …`
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Create a new, empty QCOW2 v3 image; with -b, an overlay of BACKING.
    Create {
        /// Backing file, stored as given; a relative name is resolved from
        /// FILE's folder (as QEMU does). Its format (qcow2 or raw) is detected.
        #[arg(short = 'b', long = "backing", value_name = "BACKING")]
        backing: Option<String>,
        /// Cluster size: a power of two from 512 to 2M.
        #[arg(long, value_name = "N", default_value = "64K")]
        cluster_size: ByteSize,
        /// Use extended L2 entries (32 subclusters per cluster).
        #[arg(long)]
        extended_l2: bool,
        /// Backing file policy.
        #[command(flatten)]
        backing_files: BackingArgs,
        /// The image to create (must not exist).
        file: PathBuf,
        /// Virtual size, e.g. 10G or 512M; defaults to the backing file's size.
        size: Option<ByteSize>,
    },
    /// Show an image's format, sizes, cluster size and backing chain.
    Info {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Backing file policy.
        #[command(flatten)]
        backing_files: BackingArgs,
        /// The image (QCOW2 or raw).
        file: PathBuf,
    },
    /// Check a QCOW2 image's consistency (references vs refcounts).
    ///
    /// Exit status: 0 clean, 2 errors found, 3 leaked clusters only, 1 the
    /// check itself could not run.
    Check {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Backing file policy.
        #[command(flatten)]
        backing_files: BackingArgs,
        /// The QCOW2 image.
        file: PathBuf,
    },
    /// Verify a restore point: read the QCOW2 chain back and compare every
    /// 64 KiB block with the digests of the bytes read at the source, stored
    /// beside each layer as `<name>.digests` by the hub.
    ///
    /// Exit status: 0 every block matches, 2 some blocks differ (listed with
    /// the layer holding them), 1 the verification could not run (a layer
    /// without digests, a damaged digests file, an unreadable image).
    Verify {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Backing file policy.
        #[command(flatten)]
        backing_files: BackingArgs,
        /// The top QCOW2 image of the point.
        file: PathBuf,
    },
    /// Convert between QCOW2 (read with its backing chain) and raw.
    ///
    /// The output is written under a temporary name beside OUT and renamed
    /// into place only when complete and flushed to disk.
    Convert {
        /// Output format.
        #[arg(short = 'O', long = "output-format", value_enum, default_value_t = Format::Qcow2)]
        output_format: Format,
        /// Make OUT an overlay of BACKING holding only what differs from it
        /// (zero clusters where BACKING has data and IN has zeros). The name
        /// is stored as given, relative to OUT's folder.
        #[arg(short = 'B', long = "backing", value_name = "BACKING")]
        backing: Option<String>,
        /// Cluster size of a QCOW2 output.
        #[arg(long, value_name = "N")]
        cluster_size: Option<ByteSize>,
        /// Worker threads reading and writing in parallel.
        #[arg(long, value_name = "N", default_value_t = default_threads())]
        threads: usize,
        /// Print a JSON report (bytes read, written, seconds) on stdout.
        #[arg(long)]
        json: bool,
        /// Backing file policy.
        #[command(flatten)]
        backing_files: BackingArgs,
        /// Input image: QCOW2 (with its chain) or raw, detected from content.
        input: PathBuf,
        /// Output file (replaced if it exists).
        output: PathBuf,
    },
    /// Serve an image (and its backing chain) over NBD, like qemu-nbd.
    ///
    /// QCOW2 images go through our engine: writes land in the top layer,
    /// reads and block status come through the chain. Other files are served
    /// raw. Stops cleanly (flush, close) on SIGINT/SIGTERM.
    Serve {
        /// Refuse writes; the image is opened read-only.
        #[arg(long)]
        read_only: bool,
        /// Address to listen on.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:10809")]
        listen: std::net::SocketAddr,
        /// Export name (default: the empty, default export).
        #[arg(long, value_name = "NAME", default_value = "")]
        export: String,
        /// Require TLS, with the certificates in this folder under QEMU's
        /// names: ca-cert.pem, server-cert.pem, server-key.pem.
        #[arg(long, value_name = "DIR")]
        tls_dir: Option<PathBuf>,
        /// Require client certificates signed by the folder's ca-cert.pem.
        #[arg(long, requires = "tls_dir")]
        verify_clients: bool,
        /// Backing file policy.
        #[command(flatten)]
        backing_files: BackingArgs,
        /// The image to serve.
        file: PathBuf,
    },
}

/// Image formats the tools write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Sparse raw file.
    Raw,
    /// QCOW2 v3.
    Qcow2,
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4))
}

/// Runs an image command. The synchronous ones block this (otherwise idle)
/// runtime thread; `serve` is the only one that needs the runtime.
///
/// # Errors
/// The command's error; `check` reports what it found through the exit status instead.
#[allow(clippy::print_stdout)] // the commands print their results
pub async fn run(cmd: ImageCommand) -> Result<ExitCode, ImageError> {
    match cmd {
        ImageCommand::Serve {
            read_only,
            listen,
            export,
            tls_dir,
            verify_clients,
            backing_files,
            file,
        } => {
            let opts = ServeOptions {
                file,
                read_only,
                listen,
                export,
                tls_dir,
                verify_clients,
                backing: backing_files.policy(),
            };
            serve_image(opts, sendense_io::signal::stopped()).await?;
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Create {
            backing,
            cluster_size,
            extended_l2,
            backing_files,
            file,
            size,
        } => {
            let cluster_size = u32::try_from(cluster_size.0).unwrap_or(u32::MAX);
            let args = CreateArgs {
                size: size.map(|s| s.0),
                cluster_size: Some(cluster_size),
                backing,
                extended_l2,
                backing_policy: backing_files.policy(),
            };
            crate::create(&file, &args)?;
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Info {
            json,
            backing_files,
            file,
        } => {
            let layers = crate::info_with(&file, backing_files.policy())?;
            if json {
                print_json(&layers);
            } else {
                print!("{}", crate::LayerInfo::render_chain(&layers));
            }
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Check {
            json,
            backing_files,
            file,
        } => {
            let summary = crate::check_with(&file, backing_files.policy())?;
            if json {
                print_json(&summary);
            } else {
                print!("{}", summary.render());
            }
            Ok(ExitCode::from(summary.exit_code()))
        }
        ImageCommand::Verify {
            json,
            backing_files,
            file,
        } => {
            let report = crate::verify::verify_chain(&file, backing_files.policy(), &mut |_| {})?;
            if json {
                print_json(&report);
            } else {
                print!("{}", render_verification(&file, &report));
            }
            Ok(ExitCode::from(if report.ok() { 0 } else { 2 }))
        }
        ImageCommand::Convert {
            output_format,
            backing,
            cluster_size,
            threads,
            json,
            backing_files,
            input,
            output,
        } => {
            let opts = ConvertOptions {
                format: match output_format {
                    Format::Raw => OutputFormat::Raw,
                    Format::Qcow2 => OutputFormat::Qcow2,
                },
                backing,
                cluster_size: cluster_size.map(|c| u32::try_from(c.0).unwrap_or(u32::MAX)),
                threads,
                progress: true,
                backing_policy: backing_files.policy(),
            };
            let report = crate::convert(&input, &output, &opts)?;
            if json {
                print_json(&report);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[allow(clippy::print_stdout, clippy::print_stderr)]
fn print_json<T: serde::Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("sendense-hub: cannot encode JSON: {e}"),
    }
}

/// `image verify`'s text output.
fn render_verification(file: &Path, report: &crate::verify::ChainVerification) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let layers = report.layers.len();
    if report.ok() {
        let _ = writeln!(
            out,
            "{}: ok: {} bytes through {layers} layer(s) read exactly as at the source",
            file.display(),
            report.bytes_read
        );
        return out;
    }
    let _ = writeln!(
        out,
        "{}: FAILED: {} block(s) of 64 KiB read differently from the source",
        file.display(),
        report.bad.len()
    );
    for b in &report.bad {
        let offset = b.block * sendense_digest::BLOCK_SIZE;
        let _ = writeln!(
            out,
            "  offset {offset} (block {}): held by {}",
            b.block,
            report.layers[b.layer].display()
        );
    }
    out
}
