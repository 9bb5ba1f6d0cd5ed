//! `sendense-bench`: the end-to-end benchmark harness (ours against qemu-img, qemu-nbd, nbdcopy).
//!
//! Thin by design: parse arguments, call the bench crate.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = sendense_bench::cli::Cli::parse();
    sendense_bench::cli::main(&cli)
}
