//! Sendense hub: backup engine, repository, export registry, REST API and
//! the `image` tools that operators run against repository files.
#![forbid(unsafe_code)]

pub mod cli;
