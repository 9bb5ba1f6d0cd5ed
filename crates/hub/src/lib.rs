//! Sendense hub: backup engine, repository, export registry, REST API, and the daemon that runs
//! them ([`run`]). The `image` tools are `sendense-image`; the binary's command line also
//! carries them.
#![forbid(unsafe_code)]

pub mod agents;
pub mod api;
#[allow(clippy::print_stdout)] // the CLI prints its results
pub mod cli;
pub mod console;
pub mod credentials;
pub mod daemon;
pub mod engine;
pub mod error;
pub mod hub_jobs;
pub mod jobs;
pub mod maintenance;
pub mod metrics;
pub mod notify;
pub mod openapi;
pub mod policies;
pub mod reverify;
pub mod scheduler;
pub mod tier;
pub mod tls;
pub mod token;
pub mod users;
pub mod verify;

pub use daemon::{HubConfig, Listeners, RepositoryConfig, RunningHub, run, start};
pub use error::HubError;
