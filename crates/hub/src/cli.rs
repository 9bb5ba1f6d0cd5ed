//! Command-line interface of `sendense-hub`: argument types and dispatch.
//!
//! The binary only parses and calls [`run`]; every command's work is done by
//! a library function so that tests can drive it without a subprocess.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use sendense_nbd::tls::ClientCerts;

use crate::daemon::{self, HubConfig};
use crate::image_tools::{self, ByteSize, ConvertOptions, CreateArgs, OutputFormat};
use crate::quickstart::{self, QuickstartOptions};
use crate::serve_image::{ServeOptions, serve_image, shutdown_signal};

/// Sendense hub: the backup repository daemon and its image tools.
#[derive(Debug, Parser)]
#[command(name = "sendense-hub", version, about, long_about = None)]
pub struct Cli {
    /// Logging options.
    #[command(flatten)]
    pub log: LogArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Logging options shared by every command.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole product once on this machine, with nothing configured.
    ///
    /// Starts a hub on loopback ports, makes a demo VM with two sparse disks
    /// (one raw, one VMDK), backs it up fully through the real client over
    /// TLS, changes ~2% of the blocks (some zeroed), backs up incrementally,
    /// restores both points of both disks, verifies them (qemu-img compare
    /// when installed, our own comparison otherwise) and prints a table.
    /// Exit status 0 only when everything verified.
    Quickstart {
        /// Working folder (kept); default: a temporary folder, removed at the end.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Size of each demo disk (sparse; about 12% holds data).
        #[arg(long, value_name = "SIZE", default_value = "2G")]
        disk_size: ByteSize,
        /// Keep the temporary folder to look at afterwards.
        #[arg(long)]
        keep: bool,
    },
    /// Run the hub: catalog, QCOW2 repository, REST API (HTTPS) and NBD
    /// server (TLS) in one process.
    ///
    /// The first start creates DIR/catalog.redb, DIR/repository/, a CA and
    /// certificate in DIR/tls (QEMU's file names) and the API token in
    /// DIR/api.token. Everything in DIR is made (and at each start set) 0600,
    /// folders 0700. NBD clients need a certificate from `sendense-hub cert
    /// issue`. Stops cleanly on SIGINT/SIGTERM: running backups are failed
    /// (their chains untouched), images closed.
    Serve {
        /// The data folder.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// REST API listen address.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8443")]
        api: std::net::SocketAddr,
        /// NBD listen address.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:10809")]
        nbd: std::net::SocketAddr,
        /// Host name clients use to reach this hub (put into NBD URIs and the
        /// certificate on first start); default: the --nbd address's IP.
        #[arg(long, value_name = "HOST")]
        public_host: Option<String>,
        /// Fail a running backup whose client has not connected since the
        /// backup started, or whose NBD connections have been silent, for
        /// this many seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 120)]
        idle_timeout: u64,
        /// Fail a running backup whose every NBD connection has been closed
        /// for this many seconds without complete or fail (a client may
        /// reconnect within it).
        #[arg(long, value_name = "SECONDS", default_value_t = 20)]
        disconnect_grace: u64,
        /// Client certificates on the NBD port: `required` accepts only clients
        /// presenting a certificate this hub's CA issued (`sendense-hub cert
        /// issue`); `optional` also accepts clients that only trust the CA.
        #[arg(long, value_enum, value_name = "MODE", default_value_t = NbdClientCerts::Required)]
        nbd_client_certs: NbdClientCerts,
    },
    /// Client certificates for the NBD port.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Work on QCOW2 images with Sendense's own engine (no QEMU needed).
    #[command(subcommand)]
    Image(ImageCommand),
}

/// Which NBD clients the hub accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NbdClientCerts {
    /// Only clients with a certificate from the hub's CA.
    Required,
    /// Also clients without a client certificate (they still verify the hub).
    Optional,
}

/// `sendense-hub cert …`
#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Issue a client certificate from the hub's CA (DATA/tls/ca-key.pem).
    ///
    /// Writes OUT/ca-cert.pem, OUT/client-cert.pem and OUT/client-key.pem
    /// (mode 0600, OUT 0700): QEMU's client layout, taken as it is by
    /// `sendense-client --tls-dir OUT`, nbdinfo/nbdcopy
    /// (nbds://HOST:PORT/EXPORT?tls-certificates=OUT) and qemu-img
    /// (--object tls-creds-x509,id=tls0,dir=OUT,endpoint=client). Run it on
    /// the hub, as the user the hub runs as; the hub need not be running.
    Issue {
        /// The client's name (the certificate's common name), 1-64 bytes.
        name: String,
        /// The hub's data folder.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Folder to write the client files to (made if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

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

impl Cli {
    /// Log filter when `RUST_LOG` is not set: `info` for the daemon and
    /// `image serve`, `warn` for the quickstart and one-shot tools, whose
    /// results are their output.
    pub fn default_log_filter(&self) -> &'static str {
        match &self.command {
            Command::Serve { .. } | Command::Image(ImageCommand::Serve { .. }) => "info",
            Command::Quickstart { .. } | Command::Image(_) | Command::Cert(_) => "warn",
        }
    }
}

/// Installs the tracing subscriber on stderr; `RUST_LOG` filters, else `default_filter`.
pub fn init_tracing(log: &LogArgs, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match log.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Runs a parsed command line and returns the process exit status.
pub async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Serve {
            data_dir,
            api,
            nbd,
            public_host,
            idle_timeout,
            disconnect_grace,
            nbd_client_certs,
        } => {
            let config = HubConfig {
                data_dir,
                api_listen: api,
                nbd_listen: nbd,
                public_host,
                idle_timeout: std::time::Duration::from_secs(idle_timeout.max(1)),
                disconnect_grace: std::time::Duration::from_secs(disconnect_grace.max(1)),
                nbd_client_certs: match nbd_client_certs {
                    NbdClientCerts::Required => ClientCerts::Required,
                    NbdClientCerts::Optional => ClientCerts::Optional,
                },
            };
            match daemon::start(config).await {
                Ok(hub) => {
                    hub.run_until(shutdown_signal()).await;
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::Quickstart {
            dir,
            disk_size,
            keep,
        } => {
            let opts = QuickstartOptions {
                dir,
                disk_size: disk_size.0,
                keep,
            };
            match quickstart::run(opts).await {
                Ok(report) => {
                    print!("{report}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::Image(cmd) => run_image(cmd).await,
        Command::Cert(CertCommand::Issue {
            name,
            data_dir,
            out,
        }) => crate::tls::issue_client_folder(&data_dir.join(daemon::TLS_DIR), &name, &out)
            .map(|()| {
                println!(
                    "issued client certificate {name:?}: {}",
                    out.join(crate::tls::CLIENT_CERT).display()
                );
                ExitCode::SUCCESS
            })
            .map_err(Into::into),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sendense-hub: {}", error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `error: cause: cause …`, the whole source chain on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Runs an image command. The synchronous ones block this (otherwise idle)
/// runtime thread; `serve` is the only one that needs the runtime.
async fn run_image(cmd: ImageCommand) -> Result<ExitCode, BoxError> {
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
            serve_image(opts, shutdown_signal()).await?;
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
            image_tools::create(&file, &args)?;
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Info {
            json,
            backing_files,
            file,
        } => {
            let layers = image_tools::info_with(&file, backing_files.policy())?;
            if json {
                print_json(&layers);
            } else {
                print!("{}", image_tools::LayerInfo::render_chain(&layers));
            }
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Check {
            json,
            backing_files,
            file,
        } => {
            let summary = image_tools::check_with(&file, backing_files.policy())?;
            if json {
                print_json(&summary);
            } else {
                print!("{}", summary.render());
            }
            Ok(ExitCode::from(summary.exit_code()))
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
            let report = image_tools::convert(&input, &output, &opts)?;
            if json {
                print_json(&report);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_json<T: serde::Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("sendense-hub: cannot encode JSON: {e}"),
    }
}
