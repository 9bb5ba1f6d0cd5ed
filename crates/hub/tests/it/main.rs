//! Integration tests of the hub crate. Golden tests check our outputs with
//! `qemu-img`, which must be installed (`scripts/test.sh` installs it).

#[cfg(test)]
mod console;
#[cfg(test)]
mod digests;
#[cfg(test)]
mod hub_api;
#[cfg(test)]
mod image_tools;
#[cfg(test)]
mod instant;
#[cfg(test)]
mod jobs;
#[cfg(test)]
mod lifecycle;
#[cfg(test)]
mod maintenance;
#[cfg(test)]
mod policies;
#[cfg(test)]
mod prune;
#[cfg(test)]
mod support;
#[cfg(test)]
mod verify;
#[cfg(test)]
mod vm_restore;
#[cfg(test)]
mod webhook;
