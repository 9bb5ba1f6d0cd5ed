//! What a benchmark run measured: one row per scenario case, ours against its peer, rendered as
//! a terminal table or serialized as JSON. A peer that is not installed is `missing`, a step that
//! failed is `failed` with its error: nothing is ever estimated or faked.

use std::fmt::Write as _;

use serde::Serialize;

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The machine and its load.
    pub machine: Machine,
    /// Size of the test disk in bytes.
    pub size_bytes: u64,
    /// Percentage of blocks changed for the incremental.
    pub changed_percent: f64,
    /// One row per measured case.
    pub rows: Vec<Row>,
}

/// Where the run happened.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPUs available to the harness.
    pub nproc: usize,
    /// CPU model, from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// `/proc/loadavg` (1, 5, 15 minutes) when the run started.
    pub load_start: [f64; 3],
    /// `/proc/loadavg` when the run ended.
    pub load_end: [f64; 3],
}

/// One case of a scenario: ours against a peer.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Scenario name (`qcow2`, `serve`, `memory`, `nbd-tls-cost`, `ingest`, `incremental`,
    /// `restore`, `sparse`).
    pub scenario: String,
    /// What exactly ran on our side.
    pub case: String,
    /// Our measurement.
    pub ours: Outcome,
    /// What the peer is.
    pub peer_name: String,
    /// The peer's measurement.
    pub peer: Outcome,
    /// Peer seconds divided by our seconds (our IOPS divided by the peer's when both sides
    /// count IOPS): above 1, ours is faster.
    pub ratio: Option<f64>,
    /// 1-minute load average just before the case ran (the machine is shared).
    pub load_1m: f64,
    /// Extra facts (bytes sent, client RSS, verification).
    pub note: String,
    /// The `sparse` scenario's figures (absent from other rows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sparse: Option<SparseFigures>,
}

/// What the `sparse` scenario measured besides the row's two sides: the sparse disk's backup
/// against the dense disk's backup of the same data.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct SparseFigures {
    /// Virtual size of the sparse disk in bytes.
    pub virtual_bytes: u64,
    /// Bytes of data on each disk (the dense disk's size).
    pub data_bytes: u64,
    /// Runs the data is spread in across the sparse disk.
    pub runs: u64,
    /// The sparse disk's backup.
    pub sparse: SparseSide,
    /// The dense disk's backup.
    pub dense: SparseSide,
    /// The hub's peak RSS (`VmHWM`) after both backups, in bytes.
    pub hub_peak_rss_bytes: Option<u64>,
}

/// One backup of the `sparse` scenario.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct SparseSide {
    /// Wall-clock seconds of `sendense-client backup`, until `completed`.
    pub seconds: f64,
    /// The client's peak RSS (its `VmHWM`, sampled while it ran), in bytes.
    pub client_peak_rss_bytes: u64,
    /// Bytes the client sent, from its `--json` summary.
    pub bytes_sent: u64,
    /// Length of the repository's QCOW2 file, in bytes.
    pub image_bytes: u64,
    /// Bytes the repository's QCOW2 file occupies on disk (`st_blocks * 512`).
    pub image_allocated_bytes: u64,
    /// Whether `qemu-img compare` found the image identical to its source.
    pub verified: bool,
}

/// The result of one side of a case.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Outcome {
    /// It ran.
    Measured(Measure),
    /// A tool it needs is not installed.
    Missing {
        /// The tool's name.
        tool: String,
    },
    /// It failed.
    Failed {
        /// The error and its causes.
        error: String,
    },
}

/// Figures of one measured run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Measure {
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Bytes the case moved (the basis of `mb_per_s`).
    pub bytes: u64,
    /// `bytes / seconds` in MB/s (10^6 bytes).
    pub mb_per_s: f64,
    /// CPU seconds (user + system) of every process of this side: client and server.
    pub cpu_seconds: f64,
    /// Peak RSS in bytes of this side's main process (the server where there is one).
    pub peak_rss_bytes: Option<u64>,
    /// I/O operations per second, for time-based runs (`instant`): their ratio is by IOPS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iops: Option<f64>,
}

impl Measure {
    /// A measurement from its raw figures.
    #[must_use]
    pub fn new(seconds: f64, bytes: u64, cpu_seconds: f64, peak_rss_bytes: Option<u64>) -> Self {
        #[allow(clippy::cast_precision_loss)]
        let mb_per_s = if seconds > 0.0 {
            bytes as f64 / seconds / 1e6
        } else {
            0.0
        };
        Self {
            seconds,
            bytes,
            mb_per_s,
            cpu_seconds,
            peak_rss_bytes,
            iops: None,
        }
    }

    /// The same measurement with its operations per second.
    #[must_use]
    pub fn with_iops(mut self, iops: f64) -> Self {
        self.iops = Some(iops);
        self
    }
}

impl Outcome {
    /// The measurement, if it ran.
    #[must_use]
    pub fn measure(&self) -> Option<&Measure> {
        match self {
            Self::Measured(m) => Some(m),
            Self::Missing { .. } | Self::Failed { .. } => None,
        }
    }

    /// Whether this side failed.
    #[must_use]
    pub fn is_failed(&self) -> bool {
        matches!(self, Self::Failed { .. })
    }
}

impl Row {
    /// A row; the ratio is computed when both sides ran.
    #[must_use]
    pub fn new(scenario: &str, case: &str, ours: Outcome, peer_name: &str, peer: Outcome) -> Self {
        let ratio = match (ours.measure(), peer.measure()) {
            (Some(o), Some(p)) => match (o.iops, p.iops) {
                (Some(oi), Some(pi)) if pi > 0.0 => Some(oi / pi),
                (Some(_), Some(_)) => None,
                _ if o.seconds > 0.0 => Some(p.seconds / o.seconds),
                _ => None,
            },
            _ => None,
        };
        Self {
            scenario: scenario.to_owned(),
            case: case.to_owned(),
            ours,
            peer_name: peer_name.to_owned(),
            peer,
            ratio,
            load_1m: 0.0,
            note: String::new(),
            sparse: None,
        }
    }
}

impl Report {
    /// Whether any side of any row failed.
    #[must_use]
    pub fn has_failures(&self) -> bool {
        self.rows
            .iter()
            .any(|r| r.ours.is_failed() || r.peer.is_failed())
    }

    /// The terminal table, followed by notes and errors.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(
            out,
            "sendense-bench: {} MiB disk, {} CPUs ({}), load {:.2} {:.2} {:.2} at start, {:.2} {:.2} {:.2} at end",
            self.size_bytes / (1 << 20),
            m.nproc,
            m.cpu_model,
            m.load_start[0],
            m.load_start[1],
            m.load_start[2],
            m.load_end[0],
            m.load_end[1],
            m.load_end[2],
        );
        let _ = writeln!(
            out,
            "{:<11} {:<28} {:>7} {:>8} {:>6} {:>7} | {:<34} {:>7} {:>8} {:>6} {:>7} | {:>6} {:>5}",
            "scenario",
            "ours",
            "s",
            "MB/s",
            "CPU s",
            "RSS MiB",
            "peer",
            "s",
            "MB/s",
            "CPU s",
            "RSS MiB",
            "ratio",
            "load"
        );
        for r in &self.rows {
            let ratio = r
                .ratio
                .map_or_else(|| "-".to_owned(), |x| format!("{x:.2}x"));
            let _ = writeln!(
                out,
                "{:<11} {:<28} {} | {:<34} {} | {:>6} {:>5.2}",
                r.scenario,
                r.case,
                cells(&r.ours),
                r.peer_name,
                cells(&r.peer),
                ratio,
                r.load_1m
            );
        }
        let _ = writeln!(
            out,
            "ratio = peer seconds / our seconds, or our IOPS / peer IOPS for instant (above 1: ours is faster); CPU s = all processes of that side"
        );
        for r in &self.rows {
            if !r.note.is_empty() {
                let _ = writeln!(out, "  {} / {}: {}", r.scenario, r.case, r.note);
            }
            for (side, o) in [("ours", &r.ours), ("peer", &r.peer)] {
                match o {
                    Outcome::Missing { tool } => {
                        let _ = writeln!(
                            out,
                            "  {} / {}: {side}: {tool} is not installed",
                            r.scenario, r.case
                        );
                    }
                    Outcome::Failed { error } => {
                        let _ =
                            writeln!(out, "  {} / {}: {side} FAILED: {error}", r.scenario, r.case);
                    }
                    Outcome::Measured(_) => {}
                }
            }
        }
        out
    }
}

fn cells(o: &Outcome) -> String {
    match o {
        Outcome::Measured(m) => {
            let rss = m
                .peak_rss_bytes
                .map_or_else(|| "-".to_owned(), |b| format!("{}", b / (1 << 20)));
            format!(
                "{:>7.2} {:>8.1} {:>6.2} {:>7}",
                m.seconds, m.mb_per_s, m.cpu_seconds, rss
            )
        }
        Outcome::Missing { .. } => format!("{:>31}", "missing"),
        Outcome::Failed { .. } => format!("{:>31}", "FAILED"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_both_measured_ratio_is_peer_over_ours() {
        let ours = Outcome::Measured(Measure::new(1.0, 1_000_000, 0.5, None));
        let peer = Outcome::Measured(Measure::new(2.0, 1_000_000, 0.5, None));

        let row = Row::new("qcow2", "x", ours, "y", peer);

        assert_eq!(row.ratio, Some(2.0));
    }

    #[test]
    fn row_both_counting_iops_ratio_is_ours_over_peer() {
        let ours = Outcome::Measured(Measure::new(10.0, 4096, 1.0, None).with_iops(3000.0));
        let peer = Outcome::Measured(Measure::new(10.0, 4096, 1.0, None).with_iops(2000.0));

        let row = Row::new("instant", "x", ours, "y", peer);

        assert_eq!(row.ratio, Some(1.5));
    }

    #[test]
    fn row_peer_missing_has_no_ratio() {
        let ours = Outcome::Measured(Measure::new(1.0, 1, 0.5, None));
        let peer = Outcome::Missing {
            tool: "qemu-img".into(),
        };

        let row = Row::new("qcow2", "x", ours, "y", peer);

        assert_eq!(row.ratio, None);
    }

    #[test]
    fn measure_rate_is_megabytes_per_second() {
        let m = Measure::new(2.0, 4_000_000, 0.0, None);

        assert!((m.mb_per_s - 2.0).abs() < 1e-9);
    }
}
