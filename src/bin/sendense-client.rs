//! `sendense-client`: the appliance client (backup a VM's disks into the hub, restore them).
//!
//! Thin by design: parse arguments, install logging, build the runtime, call the client crate
//! with the vSphere crate's provider for `backup --vcenter` (the client crate cannot depend on
//! the vSphere crate, which depends on it).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;

use clap::Parser;
use sendense_client::cli::{Cli, error_report, execute_with, init_tracing};
use sendense_vsphere::flow::VcenterProvider;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute_with(cli.command, Some(&VcenterProvider))) {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("{}", error_report(&err));
            ExitCode::FAILURE
        }
    }
}
