//! Command-line interface of `sendense-hub`: argument types and dispatch.
//!
//! The `sendense-hub` binary (root package, which adds `quickstart`) flattens [`Command`] into
//! its command line and calls [`run`]; every command's work is done by a library function so
//! that tests can drive it without a subprocess.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use sendense_image::cli::ImageCommand;
use sendense_nbd::tls::ClientCerts;
use serde::Deserialize;

use crate::daemon::{
    self, DEFAULT_FREE_SPACE_WARNING_PERCENT, HubConfig, Listeners, RepositoryConfig,
};
use crate::error::HubError;
use crate::notify::{WebhookConfig, WebhookSecret};

/// `serve --api` when neither the flag nor the file sets it.
pub const DEFAULT_API: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8443);
/// `serve --nbd` when neither the flag nor the file sets it.
pub const DEFAULT_NBD: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 10809);
/// `serve --idle-timeout` (seconds) when neither the flag nor the file sets it.
pub const DEFAULT_IDLE_TIMEOUT: u64 = 120;
/// `serve --disconnect-grace` (seconds) when neither the flag nor the file sets it.
pub const DEFAULT_DISCONNECT_GRACE: u64 = 20;

/// Logging options shared by every command.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log line format on stderr [default: text; `serve` also reads
    /// `log_format` from its --config file].
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
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
    ///
    /// Every setting can also come from a TOML file (`--config FILE`): its keys
    /// are the flags' names with `_` for `-` (`data_dir = "/var/lib/sendense"`,
    /// `api = "0.0.0.0:8443"`, `idle_timeout = 120`, `nbd_client_certs =
    /// "required"`, `log_format = "json"`, ...). A flag given on the command
    /// line wins over the file; a key the hub does not know is refused.
    Serve(ServeArgs),
    /// Client certificates for the NBD port.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Work on QCOW2 images with Sendense's own engine (no QEMU needed).
    #[command(subcommand)]
    Image(ImageCommand),
}

/// Which NBD clients the hub accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NbdClientCerts {
    /// Only clients with a certificate from the hub's CA.
    Required,
    /// Also clients without a client certificate (they still verify the hub).
    Optional,
}

/// `sendense-hub serve`'s command line: an optional config file and the settings.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML file of settings, keys named as the flags with `_` for `-` (see
    /// above; relative paths in it are relative to its folder); the flags
    /// given here win over it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The settings given as flags.
    #[command(flatten)]
    pub options: ServeOptions,
}

/// The settings of `serve`, each one a flag and a key of the `--config` file (same name, `_`
/// for `-`). `None` is "not given here": the defaults apply only after the flags and the file
/// are merged ([`ServeOptions::or`]), so a flag can override the file either way.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeOptions {
    /// The data folder (needed: here or as data_dir in the config file).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// REST API listen address [default: 127.0.0.1:8443].
    #[arg(long, value_name = "ADDR")]
    pub api: Option<SocketAddr>,
    /// NBD listen address [default: 127.0.0.1:10809].
    #[arg(long, value_name = "ADDR")]
    pub nbd: Option<SocketAddr>,
    /// Host name clients use to reach this hub (put into NBD URIs and the
    /// certificate on first start) [default: the --nbd address's IP].
    #[arg(long, value_name = "HOST")]
    pub public_host: Option<String>,
    /// Fail a running backup whose client has not connected since the
    /// backup started, or whose NBD connections have been silent, for
    /// this many seconds [default: 120].
    #[arg(long, value_name = "SECONDS")]
    pub idle_timeout: Option<u64>,
    /// Fail a running backup whose every NBD connection has been closed
    /// for this many seconds without complete or fail (a client may
    /// reconnect within it) [default: 20].
    #[arg(long, value_name = "SECONDS")]
    pub disconnect_grace: Option<u64>,
    /// Client certificates on the NBD port: `required` accepts only clients
    /// presenting a certificate this hub's CA issued (`sendense-hub cert
    /// issue`); `optional` also accepts clients that only trust the CA
    /// [default: required].
    #[arg(long, value_enum, value_name = "MODE")]
    pub nbd_client_certs: Option<NbdClientCerts>,
    /// POST a signed JSON notification to this URL when a job fails (and, with
    /// --webhook-on-success, when one completes); needs --webhook-secret-file.
    #[arg(long, value_name = "URL")]
    pub webhook_url: Option<String>,
    /// File holding the webhook's secret: notifications carry
    /// `X-Sendense-Signature: sha256=<hex HMAC-SHA256 of the body>` keyed with it.
    #[arg(long, value_name = "FILE")]
    pub webhook_secret_file: Option<PathBuf>,
    /// Also notify completed jobs [default: false; the flag alone means true].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub webhook_on_success: Option<bool>,
    /// CA certificates (PEM) to trust for an https webhook [default: the
    /// system's bundle, /etc/ssl/certs/ca-certificates.crt].
    #[arg(long, value_name = "FILE")]
    pub webhook_ca_file: Option<PathBuf>,
    /// Most jobs running at once across all agents: a job waits queued while
    /// this many run (each agent's --slots and each policy's max_parallel
    /// limit them too) [default: no hub-wide limit].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_running_jobs: Option<u32>,
    /// Warn when the repository's file system has less than this percentage of
    /// its capacity free (in the log and in GET /api/v1/repository) [default: 10].
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(0..100))]
    pub free_space_warning_percent: Option<u8>,
    /// Re-verify every completed restore point whose last verification (or,
    /// never verified, its completion) is older than this many days: the hub
    /// queues verify jobs for them on its own [default: never].
    #[arg(long, value_name = "DAYS", value_parser = clap::value_parser!(u32).range(1..))]
    pub reverify_days: Option<u32>,
    /// Most MiB of the local cache of chunks read from buckets (DATA/tier-cache,
    /// emptied at each start) when a point that lives only in a bucket is
    /// restored, instantly recovered or browsed [default: 4096].
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..))]
    pub tier_cache_mib: Option<u64>,
    /// Log line format: a key of the config file only (on the command line it
    /// is the global --log-format, which wins).
    #[arg(skip)]
    pub log_format: Option<LogFormat>,
}

impl ServeArgs {
    /// The settings: the flags, then the `--config` file for what the flags leave out.
    ///
    /// # Errors
    /// See [`ServeOptions::from_file`].
    pub fn resolve(&self) -> Result<ServeOptions, HubError> {
        match &self.config {
            Some(path) => Ok(self.options.clone().or(ServeOptions::from_file(path)?)),
            None => Ok(self.options.clone()),
        }
    }
}

impl ServeOptions {
    /// Reads a `--config` file: TOML, top-level keys only, each one a setting. Relative paths
    /// in it are relative to the file's folder.
    ///
    /// # Errors
    /// [`HubError::ConfigRead`], [`HubError::ConfigSyntax`], [`HubError::ConfigUnknownKey`]
    /// naming the key, [`HubError::ConfigValue`] naming the key whose value is wrong.
    pub fn from_file(path: &Path) -> Result<Self, HubError> {
        let text = std::fs::read_to_string(path).map_err(|source| HubError::ConfigRead {
            path: path.to_owned(),
            source,
        })?;
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let (line, column) = line_column(&text, e.span().map_or(0, |s| s.start));
            HubError::ConfigSyntax {
                path: path.to_owned(),
                line,
                column,
                reason: first_line(e.message()),
            }
        })?;
        let known = Self::keys();
        let mut options = Self::default();
        for (key, value) in table {
            if !known.contains(&key) {
                return Err(HubError::ConfigUnknownKey {
                    path: path.to_owned(),
                    key,
                });
            }
            // One key at a time, so that a bad value is reported with its key.
            let mut one = toml::Table::new();
            one.insert(key.clone(), value);
            let setting: Self =
                toml::Value::Table(one)
                    .try_into()
                    .map_err(|e| HubError::ConfigValue {
                        path: path.to_owned(),
                        key,
                        reason: first_line(e.message()),
                    })?;
            options = options.or(setting);
        }
        // A relative path in the file is relative to the file's folder, not to wherever the
        // hub was started from (`/` under systemd).
        let base = path.parent().unwrap_or(Path::new(""));
        for file in [
            &mut options.data_dir,
            &mut options.webhook_secret_file,
            &mut options.webhook_ca_file,
        ]
        .into_iter()
        .flatten()
        {
            if file.is_relative() {
                *file = base.join(&*file);
            }
        }
        Ok(options)
    }

    /// The keys a config file may hold: the flags' names, and `log_format`.
    #[must_use]
    pub fn keys() -> Vec<String> {
        let flags = <Self as Args>::augment_args(clap::Command::new("serve"));
        flags
            .get_arguments()
            .map(|a| a.get_id().as_str().to_owned())
            .chain(std::iter::once("log_format".to_owned()))
            .collect()
    }

    /// Each setting from `self` when given there, else from `fallback`.
    #[must_use]
    pub fn or(self, fallback: Self) -> Self {
        Self {
            data_dir: self.data_dir.or(fallback.data_dir),
            api: self.api.or(fallback.api),
            nbd: self.nbd.or(fallback.nbd),
            public_host: self.public_host.or(fallback.public_host),
            idle_timeout: self.idle_timeout.or(fallback.idle_timeout),
            disconnect_grace: self.disconnect_grace.or(fallback.disconnect_grace),
            nbd_client_certs: self.nbd_client_certs.or(fallback.nbd_client_certs),
            webhook_url: self.webhook_url.or(fallback.webhook_url),
            webhook_secret_file: self.webhook_secret_file.or(fallback.webhook_secret_file),
            webhook_on_success: self.webhook_on_success.or(fallback.webhook_on_success),
            webhook_ca_file: self.webhook_ca_file.or(fallback.webhook_ca_file),
            max_running_jobs: self.max_running_jobs.or(fallback.max_running_jobs),
            free_space_warning_percent: self
                .free_space_warning_percent
                .or(fallback.free_space_warning_percent),
            reverify_days: self.reverify_days.or(fallback.reverify_days),
            tier_cache_mib: self.tier_cache_mib.or(fallback.tier_cache_mib),
            log_format: self.log_format.or(fallback.log_format),
        }
    }

    /// The daemon's configuration: these settings, defaults for the rest; reads the
    /// webhook's secret file.
    ///
    /// # Errors
    /// [`HubError::NoDataDir`] when no data folder is set; for the webhook
    /// [`HubError::WebhookIncomplete`], [`HubError::WebhookUrl`], and the secret file's errors
    /// ([`WebhookSecret::from_file`]).
    pub fn into_config(self) -> Result<HubConfig, HubError> {
        let seconds = |s: Option<u64>, default| Duration::from_secs(s.unwrap_or(default).max(1));
        let webhook = self.webhook()?;
        Ok(HubConfig {
            data_dir: self.data_dir.ok_or(HubError::NoDataDir)?,
            api_listen: self.api.unwrap_or(DEFAULT_API),
            nbd_listen: self.nbd.unwrap_or(DEFAULT_NBD),
            public_host: self.public_host,
            idle_timeout: seconds(self.idle_timeout, DEFAULT_IDLE_TIMEOUT),
            disconnect_grace: seconds(self.disconnect_grace, DEFAULT_DISCONNECT_GRACE),
            nbd_client_certs: match self.nbd_client_certs.unwrap_or(NbdClientCerts::Required) {
                NbdClientCerts::Required => ClientCerts::Required,
                NbdClientCerts::Optional => ClientCerts::Optional,
            },
            webhook,
            max_running_jobs: self.max_running_jobs,
            repository: RepositoryConfig {
                free_space_warning_percent: self
                    .free_space_warning_percent
                    .unwrap_or(DEFAULT_FREE_SPACE_WARNING_PERCENT),
                reverify_days: self.reverify_days,
                tier_cache_mib: self
                    .tier_cache_mib
                    .unwrap_or(crate::tier::DEFAULT_CACHE_MIB),
            },
        })
    }

    /// The webhook, when `webhook_url` is set (with `webhook_secret_file`, which it needs).
    fn webhook(&self) -> Result<Option<WebhookConfig>, HubError> {
        let incomplete = |given, needed| HubError::WebhookIncomplete { given, needed };
        let (url, secret) = match (&self.webhook_url, &self.webhook_secret_file) {
            (Some(url), Some(secret)) => (url, secret),
            (Some(_), None) => return Err(incomplete("webhook_url", "webhook_secret_file")),
            (None, Some(_)) => return Err(incomplete("webhook_secret_file", "webhook_url")),
            (None, None) if self.webhook_on_success.is_some() => {
                return Err(incomplete("webhook_on_success", "webhook_url"));
            }
            (None, None) if self.webhook_ca_file.is_some() => {
                return Err(incomplete("webhook_ca_file", "webhook_url"));
            }
            (None, None) => return Ok(None),
        };
        let secret = WebhookSecret::from_file(secret)?;
        let mut webhook =
            WebhookConfig::new(url, secret, self.webhook_on_success.unwrap_or(false))?;
        webhook.ca_file.clone_from(&self.webhook_ca_file);
        Ok(Some(webhook))
    }
}

/// Line and column (from 1) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// A parser message's first line.
fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or_default().trim().to_owned()
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
            Self::Serve(_) | Self::Image(ImageCommand::Serve { .. }) => "info",
            Self::Image(_) | Self::Cert(_) => "warn",
        }
    }
}

impl Command {
    /// Reads `serve --config FILE` into the command, flags winning over the file; call it
    /// before logging starts, as the file may set `log_format`. Other commands are untouched.
    ///
    /// # Errors
    /// See [`ServeOptions::from_file`].
    pub fn load_config(&mut self) -> Result<(), HubError> {
        if let Self::Serve(args) = self {
            args.options = args.resolve()?;
            args.config = None;
        }
        Ok(())
    }

    /// The log format the command's settings choose (`serve`'s `log_format`), if any; the
    /// global `--log-format` wins over it.
    #[must_use]
    pub fn log_format(&self) -> Option<LogFormat> {
        match self {
            Self::Serve(args) => args.options.log_format,
            Self::Image(_) | Self::Cert(_) => None,
        }
    }
}

/// Installs the tracing subscriber on stderr in `format`; `RUST_LOG` filters, else
/// `default_filter`.
pub fn init_tracing(format: LogFormat, default_filter: &str) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    // Every event naming a job is also kept for that job's page in the console.
    match format {
        LogFormat::Text => builder.finish().with(crate::console::JobLogLayer).init(),
        LogFormat::Json => builder
            .json()
            .finish()
            .with(crate::console::JobLogLayer)
            .init(),
    }
}

/// Runs a parsed command line and returns the process exit status.
pub async fn run(command: Command) -> ExitCode {
    let result: Result<ExitCode, BoxError> = match command {
        Command::Serve(args) => match args.resolve().and_then(ServeOptions::into_config) {
            Ok(config) => serve(config).await,
            Err(e) => Err(e.into()),
        },
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

/// `serve`: prepares the data folder, binds, runs until SIGINT/SIGTERM.
async fn serve(config: HubConfig) -> Result<ExitCode, BoxError> {
    let stop = sendense_io::signal::stopped();
    // The data folder is prepared before the ports are bound: once they accept
    // connections, the CA and the token are there to read.
    let listeners = daemon::prepare(&config).and_then(|_| Listeners::bind(&config))?;
    daemon::run(listeners, config, stop).await?;
    Ok(ExitCode::SUCCESS)
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// `sendense-hub`'s hub commands alone, as the binary flattens them.
    #[derive(Debug, Parser)]
    struct Hub {
        #[command(subcommand)]
        command: Command,
    }

    /// Parses `serve ARGS` after writing `toml` to `DIR/hub.toml` (`{config}` in ARGS).
    fn serve(dir: &Path, toml: &str, args: &[&str]) -> Command {
        let file = dir.join("hub.toml");
        std::fs::write(&file, toml).unwrap();
        let file = file.to_str().unwrap().to_owned();
        let args = args.iter().map(|a| a.replace("{config}", &file));
        Hub::try_parse_from(
            ["sendense-hub", "serve"]
                .into_iter()
                .map(String::from)
                .chain(args),
        )
        .unwrap()
        .command
    }

    fn config(mut command: Command) -> Result<(HubConfig, Option<LogFormat>), HubError> {
        command.load_config()?;
        let format = command.log_format();
        let Command::Serve(args) = command else {
            unreachable!("parsed as serve")
        };
        Ok((args.resolve()?.into_config()?, format))
    }

    const FULL: &str = r#"
        data_dir = "/var/lib/sendense"
        api = "0.0.0.0:9443"
        nbd = "[::1]:10900"
        public_host = "hub.example.org"
        idle_timeout = 300
        disconnect_grace = 45
        nbd_client_certs = "optional"
        log_format = "json"
    "#;

    #[test]
    fn serve_config_file_alone_sets_every_setting() {
        let dir = tempfile::tempdir().unwrap();
        let command = serve(dir.path(), FULL, &["--config", "{config}"]);

        let (config, format) = config(command).unwrap();

        assert_eq!(config.data_dir, PathBuf::from("/var/lib/sendense"));
        assert_eq!(config.api_listen, "0.0.0.0:9443".parse().unwrap());
        assert_eq!(config.nbd_listen, "[::1]:10900".parse().unwrap());
        assert_eq!(config.public_host.as_deref(), Some("hub.example.org"));
        assert_eq!(config.idle_timeout, Duration::from_secs(300));
        assert_eq!(config.disconnect_grace, Duration::from_secs(45));
        assert_eq!(config.nbd_client_certs, ClientCerts::Optional);
        assert_eq!(format, Some(LogFormat::Json));
    }

    #[test]
    fn serve_flags_override_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let command = serve(
            dir.path(),
            FULL,
            &[
                "--config",
                "{config}",
                "--data-dir",
                "/srv/hub",
                "--api",
                "127.0.0.1:7443",
                "--idle-timeout",
                "60",
                "--nbd-client-certs",
                "required",
            ],
        );

        let (config, _) = config(command).unwrap();

        assert_eq!(config.data_dir, PathBuf::from("/srv/hub"));
        assert_eq!(config.api_listen, "127.0.0.1:7443".parse().unwrap());
        assert_eq!(config.idle_timeout, Duration::from_secs(60));
        assert_eq!(config.nbd_client_certs, ClientCerts::Required);
        // What no flag names still comes from the file.
        assert_eq!(config.nbd_listen, "[::1]:10900".parse().unwrap());
        assert_eq!(config.disconnect_grace, Duration::from_secs(45));
    }

    #[test]
    fn serve_config_unknown_key_is_refused_naming_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let command = serve(
            dir.path(),
            "data_dir = \"/d\"\nlisten_api = \"0.0.0.0:1\"\n",
            &["--config", "{config}"],
        );

        let err = config(command).unwrap_err();

        let message = err.to_string();
        assert!(
            matches!(&err, HubError::ConfigUnknownKey { key, .. } if key == "listen_api"),
            "{err:?}"
        );
        assert!(message.contains("listen_api"), "{message}");
        assert!(
            message.contains(dir.path().join("hub.toml").to_str().unwrap()),
            "{message}"
        );
    }

    #[test]
    fn serve_config_bad_value_names_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let command = serve(
            dir.path(),
            "data_dir = \"/d\"\nidle_timeout = \"soon\"\n",
            &["--config", "{config}"],
        );

        let err = config(command).unwrap_err();

        assert!(
            matches!(&err, HubError::ConfigValue { key, .. } if key == "idle_timeout"),
            "{err:?}"
        );
        assert!(
            err.to_string().ends_with(
                "bad value for key idle_timeout: invalid type: string \"soon\", expected u64"
            ),
            "{err}"
        );
    }

    #[test]
    fn serve_config_bad_address_names_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let command = serve(
            dir.path(),
            "data_dir = \"/d\"\nnbd = \"localhost\"\n",
            &["--config", "{config}"],
        );

        let err = config(command).unwrap_err();

        assert!(
            matches!(&err, HubError::ConfigValue { key, .. } if key == "nbd"),
            "{err:?}"
        );
    }

    #[test]
    fn serve_config_that_is_not_toml_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let command = serve(
            dir.path(),
            "data_dir = \"/d\"\nidle_timeout = \n",
            &["--config", "{config}"],
        );

        let err = config(command).unwrap_err();

        assert!(
            matches!(
                err,
                HubError::ConfigSyntax {
                    line: 2,
                    column: 16,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn serve_missing_config_file_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("absent.toml");
        let mut command = Hub::try_parse_from([
            "sendense-hub",
            "serve",
            "--config",
            missing.to_str().unwrap(),
        ])
        .unwrap()
        .command;

        let err = command.load_config().unwrap_err();

        assert!(
            matches!(&err, HubError::ConfigRead { path, .. } if *path == missing),
            "{err:?}"
        );
    }

    #[test]
    fn serve_without_data_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let command = serve(
            dir.path(),
            "api = \"127.0.0.1:1\"\n",
            &["--config", "{config}"],
        );

        let err = config(command).unwrap_err();

        assert!(matches!(err, HubError::NoDataDir), "{err:?}");
    }

    #[test]
    fn serve_flags_alone_take_the_defaults() {
        let command = Hub::try_parse_from(["sendense-hub", "serve", "--data-dir", "/d"])
            .unwrap()
            .command;

        let (config, format) = config(command).unwrap();

        assert_eq!(config.api_listen, "127.0.0.1:8443".parse().unwrap());
        assert_eq!(config.nbd_listen, "127.0.0.1:10809".parse().unwrap());
        assert_eq!(config.public_host, None);
        assert_eq!(config.idle_timeout, Duration::from_secs(120));
        assert_eq!(config.disconnect_grace, Duration::from_secs(20));
        assert_eq!(config.nbd_client_certs, ClientCerts::Required);
        assert_eq!(format, None);
    }

    #[test]
    fn serve_webhook_from_the_file_with_on_success_overridden_by_a_flag() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "k3y\n").unwrap();
        let toml = format!(
            "data_dir = \"/d\"\nwebhook_url = \"https://hooks.example.org/sendense\"\n\
             webhook_secret_file = {:?}\nwebhook_on_success = true\n\
             webhook_ca_file = \"/etc/sendense/hooks-ca.pem\"\n",
            secret.to_str().unwrap()
        );
        let from_file = serve(dir.path(), &toml, &["--config", "{config}"]);
        let overridden = serve(
            dir.path(),
            &toml,
            &["--config", "{config}", "--webhook-on-success=false"],
        );

        let (from_file, _) = config(from_file).unwrap();
        let (overridden, _) = config(overridden).unwrap();

        let webhook = from_file.webhook.unwrap();
        assert_eq!(webhook.url.as_str(), "https://hooks.example.org/sendense");
        assert!(webhook.on_success);
        assert_eq!(
            webhook.ca_file,
            Some(PathBuf::from("/etc/sendense/hooks-ca.pem"))
        );
        assert_eq!(
            webhook.secret.sign(b"x"),
            WebhookSecret::new(b"k3y", &secret).unwrap().sign(b"x")
        );
        assert!(!overridden.webhook.unwrap().on_success);
    }

    #[test]
    fn serve_webhook_on_success_flag_alone_means_true() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "k").unwrap();
        let command = Hub::try_parse_from([
            "sendense-hub",
            "serve",
            "--data-dir",
            "/d",
            "--webhook-url",
            "http://127.0.0.1:9/hook",
            "--webhook-secret-file",
            secret.to_str().unwrap(),
            "--webhook-on-success",
        ])
        .unwrap()
        .command;

        let (config, _) = config(command).unwrap();

        assert!(config.webhook.unwrap().on_success);
    }

    #[test]
    fn serve_webhook_url_without_secret_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let command = serve(
            dir.path(),
            "data_dir = \"/d\"\nwebhook_url = \"http://127.0.0.1:9/\"\n",
            &["--config", "{config}"],
        );

        let err = config(command).unwrap_err();

        assert!(
            matches!(
                err,
                HubError::WebhookIncomplete {
                    given: "webhook_url",
                    needed: "webhook_secret_file"
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn serve_without_webhook_settings_has_no_webhook() {
        let command = Hub::try_parse_from(["sendense-hub", "serve", "--data-dir", "/d"])
            .unwrap()
            .command;

        let (config, _) = config(command).unwrap();

        assert!(config.webhook.is_none());
    }

    #[test]
    fn serve_config_relative_paths_are_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hook.secret"), "k").unwrap();
        let command = serve(
            dir.path(),
            "data_dir = \"data\"\nwebhook_url = \"http://127.0.0.1:9/\"\n\
             webhook_secret_file = \"hook.secret\"\n",
            &["--config", "{config}"],
        );

        let (config, _) = config(command).unwrap();

        assert_eq!(config.data_dir, dir.path().join("data"));
        assert!(config.webhook.is_some());
    }

    #[test]
    fn serve_config_keys_are_the_flag_names() {
        let flags = <ServeOptions as Args>::augment_args(clap::Command::new("serve"));
        let longs: Vec<String> = flags
            .get_arguments()
            .map(|a| a.get_long().unwrap().replace('-', "_"))
            .chain(std::iter::once("log_format".to_owned()))
            .collect();

        let keys = ServeOptions::keys();

        assert_eq!(keys, longs);
        assert!(keys.contains(&"data_dir".to_owned()));
        assert!(keys.contains(&"nbd_client_certs".to_owned()));
    }
}
