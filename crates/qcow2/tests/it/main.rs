//! Integration tests of the QCOW2 engine, many against real `qemu-img`.

// An integration test binary: every module is test code; helpers unwrap and index 64-bit sizes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    clippy::tests_outside_test_module
)]

mod chain;
mod concurrency;
mod direct;
mod golden;
mod hostile;
mod locking;
mod model;
mod policy;
mod util;
