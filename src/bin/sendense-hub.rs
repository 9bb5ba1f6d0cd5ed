//! `sendense-hub`: the backup repository daemon, its image tools and the quickstart.
//!
//! Thin by design: parse arguments, install logging, build the runtime, call
//! [`sendense::hub_cli::run`].

use clap::Parser;

fn main() -> std::process::ExitCode {
    let mut cli = sendense::hub_cli::Cli::parse();
    // Before logging starts: `serve --config FILE` may choose the log format.
    if let Err(e) = cli.load_config() {
        eprintln!("sendense-hub: {}", sendense_io::error_chain(&e));
        return std::process::ExitCode::FAILURE;
    }
    sendense_hub::cli::init_tracing(cli.log_format(), cli.default_log_filter());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sendense-hub: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(sendense::hub_cli::run(cli))
}
