//! `sendense-hub`: the backup repository daemon and its image tools.
//!
//! Thin by design: parse arguments, install logging, call the hub crate.
#![allow(clippy::print_stdout)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = sendense_hub::cli::Cli::parse();
    sendense_hub::cli::init_tracing(&cli.log);
    sendense_hub::cli::run(cli)
}
