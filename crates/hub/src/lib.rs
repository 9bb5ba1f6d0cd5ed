//! Sendense hub: backup engine, repository, export registry, REST API and
//! the `image` tools that operators run against repository files.
#![forbid(unsafe_code)]

#[allow(clippy::print_stdout)] // the CLI prints its results
pub mod cli;
pub mod image_tools;
pub mod tls;
pub mod token;
