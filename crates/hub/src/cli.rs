//! Command-line interface of `sendense-hub`: argument types and dispatch.
//!
//! The `sendense-hub` binary (root package, which adds `quickstart`) flattens [`Command`] into
//! its command line and calls [`run`]; every command's work is done by a library function so
//! that tests can drive it without a subprocess.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use sendense_nbd::tls::ClientCerts;

use sendense_image::cli::ImageCommand;

use crate::daemon::{self, HubConfig, Listeners};

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

impl Command {
    /// Log filter when `RUST_LOG` is not set: `info` for the daemon and
    /// `image serve`, `warn` for the one-shot tools, whose results are their
    /// output.
    #[must_use]
    pub fn default_log_filter(&self) -> &'static str {
        match self {
            Self::Serve { .. } | Self::Image(ImageCommand::Serve { .. }) => "info",
            Self::Image(_) | Self::Cert(_) => "warn",
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
pub async fn run(command: Command) -> ExitCode {
    let result: Result<ExitCode, BoxError> = match command {
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
            let stop = sendense_io::signal::stopped();
            // The data folder is prepared before the ports are bound: once they accept
            // connections, the CA and the token are there to read.
            match daemon::prepare(&config).and_then(|_| Listeners::bind(&config)) {
                Ok(listeners) => daemon::run(listeners, config, stop)
                    .await
                    .map(|()| ExitCode::SUCCESS)
                    .map_err(Into::into),
                Err(e) => Err(e.into()),
            }
        }
        Command::Image(cmd) => sendense_image::cli::run(cmd).await.map_err(Into::into),
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
            eprintln!("sendense-hub: {}", sendense_io::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
