//! Integration tests of `sendense-catalog` through its public API: every method, the conflict
//! cases, persistence across reopen, concurrent use, and a model-based property test.

#[cfg(test)]
mod backups;
#[cfg(test)]
mod chain;
#[cfg(test)]
mod concurrency;
#[cfg(test)]
mod credentials;
#[cfg(test)]
mod instant;
#[cfg(test)]
mod model;
#[cfg(test)]
mod persistence;
#[cfg(test)]
mod policies;
#[cfg(test)]
mod support;
#[cfg(test)]
mod vm_config;
#[cfg(test)]
mod vms;
