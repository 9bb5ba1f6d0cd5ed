//! `sendense-bench`: the end-to-end benchmark harness.
//!
//! It drives the real binaries (`sendense-hub`, `sendense-client`) and their peers (`qemu-img`,
//! `qemu-nbd`, `nbdcopy`) in the same run, on the same incompressible data, one pair right
//! after the other, and reports wall time, MB/s, CPU seconds (from `wait4` for each child, and
//! `/proc/PID/stat` deltas for servers that keep running) and peak RSS (each process's own
//! `VmHWM`, sampled while it runs: `ru_maxrss` would also count the harness at `fork`). A peer that is not installed is reported missing, never faked.
//!
//! Every child is guarded: killed and reaped when its guard drops, and tied to the harness with
//! `PR_SET_PDEATHSIG` so that not even a killed harness leaks a `qemu-nbd`. The data folder is
//! removed at the end unless `--keep`.
//!
//! The harness is synchronous: it only starts processes and waits, except for the `memory` and
//! `nbd-tls-cost` scenarios, which serve `sendense-nbd`'s memory export (and run its client) on
//! tokio runtimes of their own inside the harness.

mod data;
mod proc;
mod scenarios;
mod sys;

pub mod cli;
pub mod garage;
pub mod report;

use std::path::PathBuf;

pub use report::{Machine, Measure, Outcome, Report, Row, SparseFigures, SparseSide};
pub use scenarios::run;

/// Default virtual size of the `sparse` scenario's disk: 64 GiB.
pub const DEFAULT_SPARSE_VIRTUAL: u64 = 64 << 30;

/// Default seconds of each fio run of the `instant` scenario.
pub const DEFAULT_INSTANT_RUNTIME_SECS: u64 = 10;

/// A benchmark scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Scenario {
    /// `sendense-hub image convert -O qcow2` (2 and 1 threads) vs `qemu-img convert -O qcow2`.
    Qcow2,
    /// `nbdcopy --flush` into `sendense-hub image serve` vs into `qemu-nbd`, plain and TLS.
    Serve,
    /// `nbdcopy --flush` into our memory export (served in the harness) vs into `nbdkit memory`,
    /// plain and TLS.
    Memory,
    /// Our client pool into our memory export over TLS vs plain: the cost of TLS.
    NbdTlsCost,
    /// fio random 4 KiB I/O at queue depth 32 into an instant-recovery export (a scratch
    /// overlay over a 3-layer chain) vs into `qemu-nbd --cache=none --aio=native`.
    Instant,
    /// Full backup through `sendense-client` into `sendense-hub serve` vs `nbdcopy` into
    /// `qemu-nbd`.
    Ingest,
    /// Incremental backup of the changed blocks vs the full backup.
    Incremental,
    /// `sendense-client restore` of the chain vs `nbdcopy` from `qemu-nbd` serving the chain.
    Restore,
    /// Removal of the full of the chain the backups made (the incremental's layer merged into
    /// it) vs `qemu-img commit` of the same layer, and vs the full backup's time.
    Merge,
    /// The newest point read back against its source digests (`image verify`) vs `qemu-img
    /// compare` of that point with the source disk.
    Verify,
    /// Full backup of a large sparse disk holding the test data vs of a dense disk holding the
    /// same data: sparseness must cost nothing.
    Sparse,
    /// File-level restore: listing a folder of 10,000 files in a large ext4 point and
    /// downloading a file of the test data, vs `debugfs` and vs `restore` of the same bytes.
    Files,
    /// Full backup from a `qemu-nbd` export (`backup --nbd-source`) vs `nbdcopy` from the same
    /// export into `qemu-nbd` of a new QCOW2.
    NbdSource,
    /// A whole VM restored into the in-process vCenter simulator (the agent's restore job:
    /// its disk uploaded with one `PUT`) vs `sendense-client restore` of the same point to a
    /// local raw file.
    VmRestore,
    /// The object tier on a three-node Garage cluster: our copy job (until verified) vs the
    /// `object_store` crate's multipart upload of the same image file; restore of the point
    /// evicted to the bucket vs of the same point while local.
    Object,
}

impl Scenario {
    /// Every scenario, in the order they run.
    pub const ALL: [Self; 15] = [
        Self::Qcow2,
        Self::Serve,
        Self::Memory,
        Self::NbdTlsCost,
        Self::Instant,
        Self::Ingest,
        Self::Incremental,
        Self::Restore,
        Self::Merge,
        Self::Verify,
        Self::Sparse,
        Self::Files,
        Self::NbdSource,
        Self::VmRestore,
        Self::Object,
    ];

    /// The scenario's command-line name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Qcow2 => "qcow2",
            Self::Serve => "serve",
            Self::Memory => "memory",
            Self::NbdTlsCost => "nbd-tls-cost",
            Self::Instant => "instant",
            Self::Ingest => "ingest",
            Self::Incremental => "incremental",
            Self::Restore => "restore",
            Self::Merge => "merge",
            Self::Verify => "verify",
            Self::Sparse => "sparse",
            Self::Files => "files",
            Self::NbdSource => "nbd-source",
            Self::VmRestore => "vm-restore",
            Self::Object => "object",
        }
    }
}

/// What to run and where.
#[derive(Debug, Clone)]
pub struct Options {
    /// Size of the test disk in bytes.
    pub size: u64,
    /// Folder under which the run's data folder is made (default `/var/tmp`).
    pub dir: Option<PathBuf>,
    /// Folder holding `sendense-hub` and `sendense-client` (default: beside this executable).
    pub bin_dir: Option<PathBuf>,
    /// Scenarios to run (empty: all).
    pub scenarios: Vec<Scenario>,
    /// Percentage of blocks changed for the incremental.
    pub changed_percent: f64,
    /// Virtual size in bytes of the `sparse` scenario's disk (which holds `size` bytes of data).
    pub sparse_virtual: u64,
    /// Seconds each fio run of the `instant` scenario lasts.
    pub instant_runtime_secs: u64,
    /// The `garage` binary of the `object` scenario (default: `$SENDENSE_GARAGE`, what
    /// `scripts/test.sh` installs, `PATH`).
    pub garage: Option<PathBuf>,
    /// Keep the data folder.
    pub keep: bool,
    /// Print progress lines on stderr.
    pub verbose: bool,
}

impl Options {
    /// Options for `size` bytes, every scenario, 2 % changed, a 64 GiB sparse disk, 10 s fio runs.
    #[must_use]
    pub fn new(size: u64) -> Self {
        Self {
            size,
            dir: None,
            bin_dir: None,
            scenarios: Vec::new(),
            changed_percent: 2.0,
            sparse_virtual: DEFAULT_SPARSE_VIRTUAL,
            instant_runtime_secs: DEFAULT_INSTANT_RUNTIME_SECS,
            garage: None,
            keep: false,
            verbose: false,
        }
    }
}
