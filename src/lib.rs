//! The `sendense` package: the three binaries (`sendense-hub`, `sendense-client`,
//! `sendense-bench`) and the quickstart, which drives the hub and the client together.
//!
//! - [`ctl`]: `sendense-hub ctl`, the operators' command line over the REST API.
//! - [`hub_cli`]: the `sendense-hub` command line: the hub's commands and `quickstart`.
//! - [`quickstart`]: the whole product once, on a machine with nothing configured.
#![forbid(unsafe_code)]

pub mod ctl;
pub mod hub_cli;
pub mod quickstart;
