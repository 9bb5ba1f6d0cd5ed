//! Integration tests of `sendense-client`: the transfer engine against real NBD servers (the
//! `sendense-nbd` server in-process with TLS, and `qemu-nbd`), backup and restore driven as
//! library calls against a fake hub (HTTPS REST + the in-process NBD server).

#[cfg(test)]
mod agent;
#[cfg(test)]
mod common;
#[cfg(test)]
mod engine;
#[cfg(test)]
mod fake_hub;
#[cfg(test)]
mod flows;
