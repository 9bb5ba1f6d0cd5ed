//! `sendense-hub quickstart`: the whole product in one command, on a machine
//! with nothing configured.
//!
//! It starts a hub (in this process, on loopback ports), makes a demo VM
//! with two sparse disks holding non-uniform data (disk 2000 raw, disk 2001
//! a monolithicFlat VMDK), runs a full backup through the real client over
//! TLS, changes about 2% of the disk (some of it zeroed), runs an
//! incremental from a VMware-style changed-areas file, restores both points
//! of both disks, verifies every restored disk against the source as it was
//! at that point (`qemu-img compare` when qemu-img is installed, our own
//! byte comparison otherwise), and prints a table. The exit status is 0
//! only when everything verified.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sendense_client::backup::{self, BackupOptions, DiskInput};
use sendense_client::hub::HubOptions;
use sendense_client::restore::{self, RestoreFormat, RestoreOptions};
use sendense_types::{BackupId, BackupSummary, BackupType, DiskKey, VmName};

use sendense_hub::daemon::{self, HubConfig};
use sendense_image::Input;
use sendense_io::is_zero;

/// Options of [`run`].
#[derive(Debug, Clone)]
pub struct QuickstartOptions {
    /// Working folder; a temporary one (removed at the end) when `None`.
    pub dir: Option<PathBuf>,
    /// Virtual size of each demo disk.
    pub disk_size: u64,
    /// Keep the temporary folder at the end.
    pub keep: bool,
}

/// Errors of the quickstart.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuickstartError {
    /// A local file operation failed.
    #[error("Quickstart file {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The hub did not start.
    #[error("Cannot start the hub")]
    Hub(#[from] sendense_hub::error::HubError),
    /// The client failed.
    #[error("Client")]
    Client(#[from] sendense_client::ClientError),
    /// The disk size is unusable.
    #[error("Disk size must be a multiple of 1 MiB between 64 MiB and 1 TiB")]
    BadSize,
    /// A restored disk differs from the source at its point.
    #[error("Verification failed: {what}")]
    Mismatch {
        /// What differed.
        what: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> QuickstartError + '_ {
    move |source| QuickstartError::Io {
        path: path.to_path_buf(),
        source,
    }
}

const MIB: u64 = 1 << 20;
const BLOCK: u64 = 64 << 10;
const MIB_USIZE: usize = 1 << 20;
const BLOCK_USIZE: usize = 64 << 10;

/// `min(n, 1 MiB)` as a buffer length.
fn chunk(n: u64) -> usize {
    usize::try_from(n.min(MIB)).unwrap_or(MIB_USIZE)
}

/// Runs the quickstart; answers the report to print.
///
/// # Errors
/// Any step failing, or a verification mismatch.
pub async fn run(opts: QuickstartOptions) -> Result<String, QuickstartError> {
    let size = opts.disk_size;
    if !size.is_multiple_of(MIB) || !(64 * MIB..=1 << 40).contains(&size) {
        return Err(QuickstartError::BadSize);
    }
    let temp = match &opts.dir {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("sendense-quickstart-")
                .tempdir()
                .map_err(io(Path::new("/tmp")))?,
        ),
    };
    let root = opts.dir.clone().unwrap_or_else(|| {
        temp.as_ref()
            .map(|t| t.path().to_path_buf())
            .unwrap_or_default()
    });
    let result = run_in(&root, size).await;
    if let Some(t) = temp
        && opts.keep
    {
        let kept = t.keep();
        eprintln!("quickstart: kept {}", kept.display());
    }
    result
}

async fn run_in(root: &Path, size: u64) -> Result<String, QuickstartError> {
    let vm_dir = root.join("vm");
    let restore_dir = root.join("restore");
    for d in [&vm_dir, &restore_dir] {
        fs::create_dir_all(d).map_err(io(d))?;
    }
    step("starting a hub (TLS on loopback ports, NBD client certificates required)");
    let hub = daemon::start(HubConfig {
        data_dir: root.join("hub"),
        api_listen: ([127, 0, 0, 1], 0).into(),
        nbd_listen: ([127, 0, 0, 1], 0).into(),
        public_host: Some("localhost".into()),
        idle_timeout: Duration::from_secs(600),
        disconnect_grace: Duration::from_secs(20),
        nbd_client_certs: daemon::ClientCerts::Required,
        webhook: None,
    })
    .await?;
    step("issuing the client's certificate (sendense-hub cert issue quickstart-client)");
    let client_dir = root.join("client-tls");
    if let Err(e) = sendense_hub::tls::issue_client_folder(
        &root.join("hub").join(daemon::TLS_DIR),
        "quickstart-client",
        &client_dir,
    ) {
        hub.stop().await;
        return Err(QuickstartError::Hub(e));
    }
    let outcome = drive(root, &vm_dir, &restore_dir, size, hub.api_addr.port()).await;
    hub.stop().await;
    outcome
}

async fn drive(
    root: &Path,
    vm_dir: &Path,
    restore_dir: &Path,
    size: u64,
    api_port: u16,
) -> Result<String, QuickstartError> {
    let hub_opts = HubOptions::with_tls_dir(
        &format!("https://localhost:{api_port}"),
        &root.join("client-tls"),
        &root.join("hub/api.token"),
    );
    let vm: VmName = "demo-vm".parse().map_err(|_| QuickstartError::BadSize)?;
    step("making a demo VM: disk 2000 (raw) and disk 2001 (VMDK), sparse, non-uniform data");
    let raw = vm_dir.join("demo-disk0.raw");
    make_disk(&raw, size, 1)?;
    let flat = vm_dir.join("demo-disk1-flat.vmdk");
    make_disk(&flat, size, 2)?;
    let vmdk = vm_dir.join("demo-disk1.vmdk");
    write_descriptor(&vmdk, "demo-disk1-flat.vmdk", size)?;
    let sources = [(DiskKey(2000), raw.clone()), (DiskKey(2001), flat.clone())];

    step("full backup through sendense-client (NBD over TLS)");
    let inputs = vec![
        DiskInput {
            key: DiskKey(2000),
            path: raw.clone(),
            changed_areas: None,
            change_id: None,
        },
        DiskInput {
            key: DiskKey(2001),
            path: vmdk.clone(),
            changed_areas: None,
            change_id: None,
        },
    ];
    let mut full_opts = BackupOptions::new(hub_opts.clone(), vm.clone(), inputs.clone());
    full_opts.backup_type = BackupType::Full;
    let full = backup::run(full_opts).await?;
    let saved: Vec<PathBuf> = sources
        .iter()
        .map(|(k, p)| {
            let to = vm_dir.join(format!("state-full-{}.raw", k.get()));
            copy_sparse(p, &to).map(|()| to)
        })
        .collect::<Result<_, _>>()?;

    step("changing ~2% of each disk (some blocks zeroed) and writing changed-areas files");
    let mut inc_inputs = Vec::new();
    for (i, (key, path)) in sources.iter().enumerate() {
        let areas = change_disk(path, size, 100 + i as u64)?;
        let cbt = vm_dir.join(format!("changed-{}.json", key.get()));
        write_change_info(&cbt, size, &areas)?;
        let mut input = inputs[i].clone();
        input.changed_areas = Some(cbt);
        inc_inputs.push(input);
    }
    step("incremental backup of the changed areas only");
    let mut inc_opts = BackupOptions::new(hub_opts.clone(), vm.clone(), inc_inputs);
    inc_opts.backup_type = BackupType::Incremental;
    let inc = backup::run(inc_opts).await?;

    step("restoring both points of both disks and verifying them");
    let mut verified = Vec::new();
    for (point, states) in [
        (&full.backup_id, saved.clone()),
        (
            &inc.backup_id,
            sources.iter().map(|s| s.1.clone()).collect(),
        ),
    ] {
        for ((key, _), state) in sources.iter().zip(&states) {
            let to = restore_dir.join(format!("{point}-{}.raw", key.get()));
            let mut r = RestoreOptions::new(hub_opts.clone(), point.clone(), *key, to.clone());
            r.format = RestoreFormat::Raw;
            restore::run(r).await?;
            let how = verify(state, &to)?;
            verified.push(format!("{point} disk {}: identical ({how})", key.get()));
        }
    }
    let repo = root.join("hub/repository");
    Ok(report(&[&full, &inc], &repo, &vm, &verified))
}

fn step(what: &str) {
    eprintln!("quickstart: {what}");
}

/// A sparse disk with realistic, non-uniform content: runs of random data,
/// runs of repeating text-like data, zero blocks inside data, and holes.
fn make_disk(path: &Path, size: u64, seed: u64) -> Result<(), QuickstartError> {
    let file = File::create(path).map_err(io(path))?;
    file.set_len(size).map_err(io(path))?;
    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut buf = vec![0u8; MIB_USIZE];
    // About 12% of the 1 MiB slots hold data.
    for slot in 0..size / MIB {
        let r = next(&mut rng);
        if !r.is_multiple_of(8) {
            continue;
        }
        match (r >> 8) % 3 {
            0 => fill(&mut buf, &mut rng),
            1 => {
                for (i, b) in buf.iter_mut().enumerate() {
                    *b = b"Sendense demo disk: the quick brown fox jumps over the lazy dog\n"
                        [i % 64];
                }
            }
            _ => {
                fill(&mut buf, &mut rng);
                buf[..(256 << 10)].fill(0);
            }
        }
        file.write_all_at(&buf, slot * MIB).map_err(io(path))?;
    }
    Ok(())
}

fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn fill(buf: &mut [u8], rng: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        let v = next(rng).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

/// A monolithicFlat descriptor over `flat`.
fn write_descriptor(path: &Path, flat: &str, size: u64) -> Result<(), QuickstartError> {
    let sectors = size / 512;
    let text = format!(
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\n\
         # Extent description\nRW {sectors} FLAT \"{flat}\" 0\n\n# The Disk Data Base\n#DDB\n\n\
         ddb.virtualHWVersion = \"4\"\nddb.adapterType = \"lsilogic\"\n"
    );
    fs::write(path, text).map_err(io(path))
}

/// Changes ~2% of the disk in 64 KiB blocks: most get new data, every
/// fourth is zeroed. Answers the changed areas (offset, length), sorted.
fn change_disk(path: &Path, size: u64, seed: u64) -> Result<Vec<(u64, u64)>, QuickstartError> {
    let file = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io(path))?;
    let blocks = size / BLOCK;
    let count = (blocks / 50).max(1);
    let mut rng = seed | 1;
    let mut chosen = std::collections::BTreeSet::new();
    while (chosen.len() as u64) < count {
        chosen.insert(next(&mut rng) % blocks);
    }
    let mut buf = vec![0u8; BLOCK_USIZE];
    let mut areas: Vec<(u64, u64)> = Vec::new();
    for (i, b) in chosen.into_iter().enumerate() {
        if i % 4 == 3 {
            buf.fill(0);
        } else {
            fill(&mut buf, &mut rng);
        }
        file.write_all_at(&buf, b * BLOCK).map_err(io(path))?;
        match areas.last_mut() {
            Some(last) if last.0 + last.1 == b * BLOCK => last.1 += BLOCK,
            _ => areas.push((b * BLOCK, BLOCK)),
        }
    }
    file.sync_all().map_err(io(path))?;
    Ok(areas)
}

/// VMware's `DiskChangeInfo` JSON covering the whole disk.
fn write_change_info(path: &Path, size: u64, areas: &[(u64, u64)]) -> Result<(), QuickstartError> {
    let changed: Vec<serde_json::Value> = areas
        .iter()
        .map(|(s, l)| serde_json::json!({"start": s, "length": l}))
        .collect();
    let doc = serde_json::json!({"startOffset": 0, "length": size, "changedArea": changed});
    fs::write(path, doc.to_string()).map_err(io(path))
}

/// Copies a sparse file, writing only its data runs.
fn copy_sparse(from: &Path, to: &Path) -> Result<(), QuickstartError> {
    let input = Input::open(from).map_err(|e| QuickstartError::Io {
        path: from.to_path_buf(),
        source: std::io::Error::other(sendense_io::error_chain(&e)),
    })?;
    let out = File::create(to).map_err(io(to))?;
    out.set_len(input.size()).map_err(io(to))?;
    let mut buf = vec![0u8; MIB_USIZE];
    for run in input.data_extents().map_err(|e| QuickstartError::Io {
        path: from.to_path_buf(),
        source: std::io::Error::other(sendense_io::error_chain(&e)),
    })? {
        let mut at = run.offset;
        while at < run.end() {
            let n = chunk(run.end() - at);
            input
                .read_at(&mut buf[..n], at)
                .map_err(|e| QuickstartError::Io {
                    path: from.to_path_buf(),
                    source: std::io::Error::other(sendense_io::error_chain(&e)),
                })?;
            if !is_zero(&buf[..n]) {
                out.write_all_at(&buf[..n], at).map_err(io(to))?;
            }
            at += n as u64;
        }
    }
    Ok(())
}

/// `qemu-img compare` when installed; otherwise our own comparison.
fn verify(expected: &Path, restored: &Path) -> Result<&'static str, QuickstartError> {
    if let Ok(out) = std::process::Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(expected)
        .arg(restored)
        .output()
    {
        return if out.status.success() {
            Ok("qemu-img compare")
        } else {
            Err(QuickstartError::Mismatch {
                what: format!(
                    "{} vs {}: {}",
                    expected.display(),
                    restored.display(),
                    String::from_utf8_lossy(&out.stdout).trim()
                ),
            })
        };
    }
    let a = File::open(expected).map_err(io(expected))?;
    let b = File::open(restored).map_err(io(restored))?;
    let (la, lb) = (
        a.metadata().map_err(io(expected))?.len(),
        b.metadata().map_err(io(restored))?.len(),
    );
    if la != lb {
        return Err(QuickstartError::Mismatch {
            what: format!("sizes {la} and {lb}"),
        });
    }
    let (mut x, mut y) = (vec![0u8; MIB_USIZE], vec![0u8; MIB_USIZE]);
    let mut at = 0;
    while at < la {
        let n = chunk(la - at);
        a.read_exact_at(&mut x[..n], at).map_err(io(expected))?;
        b.read_exact_at(&mut y[..n], at).map_err(io(restored))?;
        if x[..n] != y[..n] {
            return Err(QuickstartError::Mismatch {
                what: format!("content differs near offset {at}"),
            });
        }
        at += n as u64;
    }
    Ok("byte comparison")
}

fn on_disk(repo: &Path, vm: &VmName, id: &BackupId) -> u64 {
    let Ok(folders) = fs::read_dir(repo.join(vm.as_str())) else {
        return 0;
    };
    folders
        .flatten()
        .filter_map(|d| fs::metadata(d.path().join(format!("{id}.qcow2"))).ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

fn report(backups: &[&BackupSummary], repo: &Path, vm: &VmName, verified: &[String]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{:<46} {:<12} {:>12} {:>12} {:>9} {:>8}",
        "backup", "type", "sent", "on disk", "MB/s", "seconds"
    );
    for b in backups {
        #[allow(clippy::cast_precision_loss)] // display only
        let rate = if b.seconds > 0.0 {
            b.bytes_sent as f64 / 1e6 / b.seconds
        } else {
            0.0
        };
        let _ = writeln!(
            out,
            "{:<46} {:<12} {:>12} {:>12} {:>9.1} {:>8.2}",
            b.backup_id.as_str(),
            b.backup_type.as_str(),
            sendense_image::human(b.bytes_sent),
            sendense_image::human(on_disk(repo, vm, &b.backup_id)),
            rate,
            b.seconds
        );
    }
    let chain: Vec<&str> = backups.iter().map(|b| b.backup_id.as_str()).collect();
    let _ = writeln!(out, "\nchain of {vm}: {}", chain.join(" <- "));
    for v in verified {
        let _ = writeln!(out, "verified {v}");
    }
    let _ = writeln!(out, "\nquickstart: everything verified");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_disk_touches_about_two_percent_in_sorted_areas() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.raw");
        make_disk(&p, 64 * MIB, 1).unwrap();
        let areas = change_disk(&p, 64 * MIB, 7).unwrap();
        let total: u64 = areas.iter().map(|a| a.1).sum();
        assert_eq!(total, (64 * MIB / BLOCK / 50) * BLOCK);
        assert!(areas.windows(2).all(|w| w[0].0 + w[0].1 < w[1].0));
    }

    #[test]
    fn run_with_bad_size_is_refused() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let err = rt.block_on(run(QuickstartOptions {
            dir: None,
            disk_size: 1000,
            keep: false,
        }));
        assert!(matches!(err, Err(QuickstartError::BadSize)));
    }
}
