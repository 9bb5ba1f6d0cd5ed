//! Sendense hub: backup engine, repository, export registry, REST API and
//! the `image` tools that operators run against repository files.
#![forbid(unsafe_code)]

pub mod api;
#[allow(clippy::print_stdout)] // the CLI prints its results
pub mod cli;
pub mod credentials;
pub mod daemon;
pub mod engine;
pub mod error;
pub mod image_tools;
pub mod openapi;
pub mod qcow2_export;
pub mod quickstart;
pub mod serve_image;
pub mod tls;
pub mod token;
