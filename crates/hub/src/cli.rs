//! Command-line interface of `sendense-hub`: argument types and dispatch.
//!
//! The binary only parses and calls [`run`]; every command's work is done by
//! a library function so that tests can drive it without a subprocess.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

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
    /// Work on QCOW2 images with Sendense's own engine (no QEMU needed).
    #[command(subcommand)]
    Image(ImageCommand),
}

/// `sendense-hub image …`
#[derive(Debug, Subcommand)]
pub enum ImageCommand {}

/// Installs the tracing subscriber (stderr; `RUST_LOG` filters, default `info`).
pub fn init_tracing(log: &LogArgs) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match log.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Runs a parsed command line and returns the process exit status.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Image(cmd) => match cmd {},
    }
}
