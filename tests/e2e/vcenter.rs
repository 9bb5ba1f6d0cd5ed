//! vCenter backups end to end, against the in-process vCenter simulator of
//! `sendense-vsphere` (feature `simulator`).
//!
//! - [`flow`]: the library flow (`run_until`, `VcenterProvider`) with an in-process hub.
//! - this module: the real `sendense-hub serve` and `sendense-client backup --vcenter ...`
//!   binaries, with a password file and with `--vcenter-credential`.

mod flow;

use std::time::Duration;

use sendense_vsphere::simulator::{SIM_PASSWORD, SIM_USER, Simulator};
use sendense_vsphere::{ConnectOptions, TlsMode};

const MIB: u64 = 1024 * 1024;

/// Session options for the simulator (short timeouts and polls).
fn options(sim: &Simulator) -> ConnectOptions {
    let mut o = ConnectOptions::new(
        &sim.address(),
        SIM_USER,
        SIM_PASSWORD,
        TlsMode::CaPem(sim.ca_pem()),
    );
    o.request_timeout = Duration::from_secs(10);
    o.task_poll_interval = Duration::from_millis(5);
    o.busy_backoff = Duration::from_millis(1);
    o
}
