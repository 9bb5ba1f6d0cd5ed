//! Command line of `sendense-bench`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use crate::{Options, Scenario};

/// Sendense benchmark harness: our binaries against their QEMU/libnbd peers, same data, same run.
///
/// Every scenario runs our side and its peer back to back on the same incompressible raw disk
/// and prints a table: wall seconds, MB/s (10^6 bytes/s of disk size, or of bytes sent for the
/// incremental), CPU seconds (user + system of every process of that side, from wait4 and
/// /proc/PID/stat), peak RSS (each process's own VmHWM, sampled while it runs), and
/// ratio = peer seconds / our seconds (above 1: ours is faster).
///
/// Scenarios (default: all, always run in this order):
///
///   qcow2        `sendense-hub image convert -O qcow2` with 2 and with 1 thread (fsync at
///                finalize) vs `qemu-img convert -O qcow2` (default writeback cache, which
///                flushes at close) followed by `sync -f OUT`, timed together.
///
///   serve        `nbdcopy --flush DISK URI` into `sendense-hub image serve` of a new QCOW2 vs
///                into `qemu-nbd --shared=10 --cache=none -f qcow2` of a new QCOW2; plain, and
///                with TLS on both (qemu-nbd's tls-creds-x509 object with verify-peer=off, as
///                our server does not ask for client certificates either; nbdcopy's
///                nbds://...?tls-certificates=DIR; certificates made by the hub's own code).
///
///   memory       `nbdcopy --flush DISK URI` into sendense-nbd's memory export, served inside
///                the harness (tokio, 127.0.0.1) vs into `nbdkit memory SIZE`; plain, and with
///                TLS on both (nbdkit --tls=require with the same certificates folder). No
///                QCOW2, no disk writes: the NBD servers alone.
///
///   nbd-tls-cost sendense-nbd's own ClientPool (4 connections, 8 writes of 4 MiB in flight,
///                then FLUSH) writes the disk into our memory export over TLS and plain; the
///                ratio (plain s / TLS s) and the CPU seconds show what TLS costs. CPU is the
///                harness process (client and server both run in it).
///
///   instant      instant recovery: a scratch QCOW2 overlay (created as the hub creates its
///                instant overlays) over a restore point of 3 layers written by our engine
///                (full + 2 incrementals, a third of the 64 KiB clusters in each), served by
///                sendense-nbd's Server with the hub's options inside the harness (plain TCP,
///                127.0.0.1) vs `qemu-nbd --cache=none --aio=native -f qcow2` over a `qemu-img
///                create -b` overlay of the same chain. `fio --ioengine=nbd --bs=4k
///                --iodepth=32 --direct=1 --time_based --runtime=--instant-runtime` with
///                --rw=randread, randwrite and randrw; one row each, ratio = our IOPS / peer
///                IOPS (given in the note). Fresh overlays per side and pattern; the chain's
///                page cache is dropped before each side.
///
///   ingest       full backup of the disk by `sendense-client backup` into a running
///                `sendense-hub serve` over TLS, until the backup is `completed` (durable) vs
///                `nbdcopy --flush` into `qemu-nbd --shared=10 --cache=none -f qcow2` (plain).
///                Reports the hub's peak RSS.
///
///   incremental  rewrites --changed PERCENT of the 64 KiB blocks (one in eight with zeros),
///                writes a VMware DiskChangeInfo file and runs an incremental backup with it;
///                compared with the full backup (time and bytes sent).
///
///   restore      `sendense-client restore` of the chain (full + incremental) into a raw file vs
///                `nbdcopy --flush` from `qemu-nbd --read-only --cache=none` serving the same
///                chain; both results are compared with the source.
///
///   merge        removes the full of that chain through the hub's own maintenance code (run in
///                the harness on the stopped hub's data: the journalled step, the incremental's
///                layer committed into the full's file, the rename over the incremental's file,
///                the catalog) vs `qemu-img commit -d` of copies of the same two files followed
///                by `sync -f`; a second row sets the merge against the full backup's time.
///
///   sparse       full backup by `sendense-client backup` of a sparse raw disk of
///                --sparse-virtual bytes (default 64G; set_len, then the SIZE bytes of test data
///                written in 64 runs spread evenly across it) vs of the dense SIZE-byte disk
///                holding the same data, both into one `sendense-hub serve` (TLS) as two VMs,
///                until `completed`. MB/s counts the data bytes (SIZE) for both; the RSS column
///                is the client's peak. The note gives each side's wall seconds and client peak
///                RSS, the hub's peak RSS, and each repository file's length and allocated
///                bytes (the sparse one should be about SIZE, not the virtual size); both images
///                are checked with `qemu-img compare` against their sources. Issue 5's goal:
///                the sparse disk costs about what the dense one does, client RSS <= 128 MiB.
///
///   files        an ext4 file system of --sparse-virtual bytes (`mkfs.ext4 -d`) holding a
///                folder of 10,000 files and the SIZE bytes of test data as one file, backed up
///                into its own `sendense-hub serve`, as is the test data as a disk of its own:
///                `sendense-client files ls` of the folder (process, TLS, hub and JSON
///                included) vs `debugfs -R 'ls -l'` on the raw source (local reference); and
///                `sendense-client files get` of the file vs `sendense-client restore` of the
///                disk of the same bytes, both compared with the test data. Issue 15's goals:
///                the listing under 1 s in a 64 GiB point, the download at least as fast as the
///                restore.
///
///   nbd-source   the test data as a QCOW2 served by `qemu-nbd --read-only --shared=8` (warm
///                page cache): `sendense-client backup --nbd-source 2000=nbd://ADDR/ --type
///                full` into `sendense-hub serve` (TLS, durable when completed, then checked
///                with `qemu-img compare`) vs, right after, `nbdcopy --flush` from the same
///                export into `qemu-nbd --cache=none` of a new QCOW2. Issue 19's goal: ours at
///                least 1.5x.
///
///   vm-restore   the vCenter simulator (crates/vsphere-sim) inside the harness with a VM of one
///                SIZE disk holding the test data, backed up by `sendense-client backup
///                --vcenter` into `sendense-hub serve`; then the agent's restore job (in the
///                harness: the point's exports read over NBD with TLS, a new VM created in the
///                simulator, its disk uploaded with one PUT of the flat extent) vs, right after,
///                `sendense-client restore --format raw` of the same point to a local file.
///                Both compared with the test data. Issue 16's goal: the upload at least as
///                fast (ratio >= 1).
///
///   object       three Garage nodes on 127.0.0.1 (replication 3; --garage PATH, else
///                $SENDENSE_GARAGE, else what scripts/test.sh installs, else PATH), a
///                `sendense-hub serve` and a full backup of the disk; then through the
///                hub's API: a copy job to the cluster (POST /api/v1/backups/{id}/copy),
///                polled until `verified` (sealed, uploaded, read back and checked) vs,
///                right after, the `object_store` crate's own multipart upload of the
///                point's image file (WriteMultipart, the hub's part size and
///                concurrency) to the same bucket; and `sendense-client restore` of the
///                point after POST /api/v1/backups/{id}/evict (it lives only in the
///                bucket) vs of the same point while local, both compared with the test
///                data. Issue 18's goals: copy ratio >= 0.8, restore ratio >= 0.5.
///
/// Our binaries are looked up beside this executable (or in --bin-dir); the peers on PATH. A
/// peer that is not installed is reported `missing`, never estimated. Data lives in a fresh
/// folder under --dir (default /var/tmp), removed at the end unless --keep; every child process
/// is killed on any exit, even if the harness itself is killed. Exit status 1 when any case
/// failed.
#[derive(Debug, Parser)]
#[command(name = "sendense-bench", version, verbatim_doc_comment)]
pub struct Cli {
    /// Size of the test disk: bytes, or with K, M, G, T (binary units).
    #[arg(long, value_name = "SIZE", default_value = "2G", value_parser = parse_size)]
    pub size: u64,
    /// Folder under which the run's data folder is created (needs about 4x SIZE free; 7x for
    /// every scenario, sparse included; 9x for object, whose store keeps 3 replicas of our
    /// copy and of the peer's).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Folder holding sendense-hub and sendense-client (default: this executable's folder).
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Percentage of 64 KiB blocks changed for the incremental.
    #[arg(long = "changed", value_name = "PERCENT", default_value_t = 2.0)]
    pub changed_percent: f64,
    /// Virtual size of the sparse scenario's disk, which holds SIZE bytes of data, and of the
    /// files scenario's file system (K, M, G, T).
    #[arg(long, value_name = "SIZE", default_value = "64G", value_parser = parse_size)]
    pub sparse_virtual: u64,
    /// Seconds each fio run of the instant scenario lasts.
    #[arg(long, value_name = "SECONDS", default_value_t = crate::DEFAULT_INSTANT_RUNTIME_SECS)]
    pub instant_runtime: u64,
    /// The garage binary of the object scenario (default: $SENDENSE_GARAGE, then
    /// ~/.cache/sendense-tools/garage/bin/garage as scripts/test.sh installs it, then PATH).
    #[arg(long, value_name = "PATH")]
    pub garage: Option<PathBuf>,
    /// Print the report as JSON on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Keep the data folder (and the children's logs in DATA/logs) after the run.
    #[arg(long)]
    pub keep: bool,
    /// No progress lines on stderr.
    #[arg(long, short)]
    pub quiet: bool,
    /// Scenarios to run (default: all).
    #[arg(value_enum, value_name = "SCENARIO")]
    pub scenarios: Vec<Scenario>,
}

impl Cli {
    /// The options these arguments ask for.
    #[must_use]
    pub fn options(&self) -> Options {
        Options {
            size: self.size,
            dir: self.dir.clone(),
            bin_dir: self.bin_dir.clone(),
            scenarios: self.scenarios.clone(),
            changed_percent: self.changed_percent,
            sparse_virtual: self.sparse_virtual,
            instant_runtime_secs: self.instant_runtime.max(1),
            garage: self.garage.clone(),
            keep: self.keep,
            verbose: !self.quiet,
        }
    }
}

/// Runs the harness and prints the report; answers the exit status.
#[allow(clippy::print_stdout)]
#[must_use]
pub fn main(cli: &Cli) -> ExitCode {
    match crate::run(&cli.options()) {
        Ok(report) => {
            if cli.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(text) => println!("{text}"),
                    Err(e) => {
                        eprintln!("sendense-bench: cannot serialize the report: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", report.render());
            }
            if report.has_failures() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("sendense-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Parses `2G`, `512M`, `64K`, `1T` or plain bytes.
///
/// # Errors
/// Not a number, an unknown suffix, zero, or an overflow.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("unknown size suffix in {text:?} (K, M, G or T)")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size"))?;
    let bytes = n
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))?;
    if bytes == 0 {
        return Err("the size must not be zero".into());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parse_size_gigabytes_is_binary() {
        assert_eq!(parse_size("2G"), Ok(2 << 30));
    }

    #[test]
    fn parse_size_unknown_suffix_is_refused() {
        assert!(parse_size("2X").is_err());
    }

    #[test]
    fn cli_scenarios_parse_by_name() {
        let cli =
            Cli::try_parse_from(["sendense-bench", "--size", "32M", "qcow2", "restore"]).unwrap();

        assert_eq!(cli.scenarios, vec![Scenario::Qcow2, Scenario::Restore]);
    }

    #[test]
    fn cli_sparse_virtual_default_is_64_gib() {
        let cli = Cli::try_parse_from(["sendense-bench", "--size", "1G", "sparse"]).unwrap();

        assert_eq!(
            (cli.options().sparse_virtual, cli.scenarios),
            (64 << 30, vec![Scenario::Sparse])
        );
    }

    #[test]
    fn cli_sparse_virtual_option_parses_size() {
        let cli =
            Cli::try_parse_from(["sendense-bench", "--sparse-virtual", "256M", "sparse"]).unwrap();

        assert_eq!(cli.options().sparse_virtual, 256 << 20);
    }
}
