//! The `sendense-hub` command line: the hub crate's commands ([`sendense_hub::cli::Command`],
//! flattened) and `quickstart`, which lives here because it drives the client too.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sendense_hub::cli::{LogArgs, LogFormat};
use sendense_image::ByteSize;

use crate::ctl::{self, CtlArgs};
use crate::quickstart::{self, QuickstartOptions};

/// Sendense hub: the backup repository daemon and its image tools.
#[derive(Debug, Parser)]
#[command(name = "sendense-hub", version, long_about = None)]
pub struct Cli {
    /// Logging options.
    #[command(flatten)]
    pub log: LogArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process: boxing buys nothing
pub enum Command {
    /// Run the whole product once on this machine, with nothing configured.
    ///
    /// In this process, on loopback ports: a hub, the vCenter simulator with
    /// two VMs (web01: 1 disk, db01: 2 disks; sparse, non-uniform data), an
    /// agent enrolled with a one-time token (two slots, no listening port), a
    /// vCenter credential only that agent receives, an inventory job, and a
    /// policy run now: full backups of both VMs through the agent over NBD+TLS.
    /// Then ~2% of every disk changes (some blocks zeroed), the policy runs
    /// again (incrementals of what CBT reports), and every disk of both points
    /// is restored and verified (qemu-img compare when installed, our own
    /// comparison otherwise). Prints a table. Exit status 0 only when
    /// everything verified.
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
    /// Operate a running hub over its REST API (agents, jobs, backups now, policies,
    /// credentials, VMs, console users, metrics) with its API token; --json prints the hub's answers.
    Ctl(CtlArgs),
    /// The hub's own commands.
    #[command(flatten)]
    Hub(sendense_hub::cli::Command),
}

impl Cli {
    /// Reads `serve --config FILE` into the command line (flags win over the file). Call it
    /// before logging starts: the file may choose the log format.
    ///
    /// # Errors
    /// The file cannot be read, is not TOML, or holds an unknown key or a bad value.
    pub fn load_config(&mut self) -> Result<(), sendense_hub::HubError> {
        match &mut self.command {
            Command::Quickstart { .. } | Command::Ctl(_) => Ok(()),
            Command::Hub(command) => command.load_config(),
        }
    }

    /// The log format: `--log-format`, else the one `serve`'s config file sets, else text.
    #[must_use]
    pub fn log_format(&self) -> LogFormat {
        let chosen = match &self.command {
            Command::Quickstart { .. } | Command::Ctl(_) => None,
            Command::Hub(command) => command.log_format(),
        };
        self.log.log_format.or(chosen).unwrap_or(LogFormat::Text)
    }

    /// Log filter when `RUST_LOG` is not set: `warn` for the quickstart, whose result is its
    /// table; the hub's commands choose their own.
    #[must_use]
    pub fn default_log_filter(&self) -> &'static str {
        match &self.command {
            Command::Quickstart { .. } | Command::Ctl(_) => "warn",
            Command::Hub(command) => command.default_log_filter(),
        }
    }
}

/// Runs a parsed command line and returns the process exit status.
#[allow(clippy::print_stdout, clippy::print_stderr)] // the quickstart prints its table
pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
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
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sendense-hub: {}", sendense_io::error_chain(&e));
                    ExitCode::FAILURE
                }
            }
        }
        Command::Ctl(args) => match ctl::run(args).await {
            Ok(output) => {
                print!("{}", output.text);
                if output.failed {
                    ExitCode::from(2)
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(e) => {
                eprintln!("sendense-hub ctl: {}", sendense_io::error_chain(&e));
                ExitCode::FAILURE
            }
        },
        Command::Hub(command) => sendense_hub::cli::run(command).await,
    }
}
