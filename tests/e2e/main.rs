//! End-to-end tests that drive the real `sendense-hub` binary.
//!
//! External tools (`qemu-img`) must be installed: a missing tool fails the
//! test with a message naming it (`scripts/test.sh` installs them).

// Sizes here are small constants: u64 -> usize casts cannot truncate.
#![allow(clippy::cast_possible_truncation)]

#[cfg(test)]
mod agent;
#[cfg(test)]
mod agent_nbd;
#[cfg(test)]
mod backup_flow;
#[cfg(test)]
mod console;
#[cfg(test)]
mod ctl;
#[cfg(test)]
mod digests;
#[cfg(test)]
mod disk_full;
#[cfg(test)]
mod files;
#[cfg(test)]
mod image_cli;
#[cfg(test)]
mod image_serve;
#[cfg(test)]
mod instant;
#[cfg(test)]
mod lifecycle;
#[cfg(test)]
mod merge_crash;
#[cfg(test)]
mod nbd_source;
#[cfg(test)]
mod object;
#[cfg(test)]
mod quickstart;
#[cfg(test)]
mod security;
#[cfg(test)]
mod service;
#[cfg(test)]
mod support;
#[cfg(test)]
mod vcenter;
