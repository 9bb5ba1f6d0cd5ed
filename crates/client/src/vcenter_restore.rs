//! `sendense-client restore --to-vcenter`: a whole VM back into vCenter from a restore point
//! (DESIGN.md "Restore", issue #16), or the point's disks added to an existing VM
//! (`--attach-to VM`).
//!
//! The client only asks: it posts `POST /api/v1/backups/{id}/restore` and the hub queues a
//! `restore` job for the agent of the vCenter credential, which creates the VM from the
//! point's captured configuration and uploads the disks. The client then follows the job
//! (`GET /api/v1/jobs/{id}`) with a progress bar (bytes, MB/s, ETA as the hub computes them
//! from the agent's heartbeats) until it ends, and fails with the job's error when the job
//! failed or was cancelled. `--no-wait` prints the job id and returns at once.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sendense_types::{
    BackupId, CredentialName, DiskKey, Job, JobId, JobStatus, RestoreRequest, RestoreTarget,
};
use tracing::info;

use crate::error::ClientError;
use crate::hub::{HubClient, HubOptions};

/// How often a followed job is read back.
pub const POLL_PERIOD: Duration = Duration::from_secs(1);

/// The flags of `restore --to-vcenter` (flattened into `restore`'s arguments; `--backup`,
/// `--disk` and `--json` are `restore`'s own).
#[derive(Debug, Clone, Default, Args)]
pub struct VcenterRestoreArgs {
    /// Restore the whole VM into vCenter (a restore job run by the agent of the vCenter's
    /// credential) instead of one disk into a local file. Needs a backup taken by a version
    /// that captures the VM's configuration. Example: sendense-client restore --hub URL --ca
    /// CA --token-file T --to-vcenter --backup backup-web01-20261124T235901-3fa9c2 --vm-name
    /// web01-restored --datacenter dc1 --datastore ds2 --network-map "VM Network=Restore Net"
    /// --power-on
    #[arg(long, conflicts_with_all = ["to", "from_instant"], requires = "backup")]
    pub to_vcenter: bool,
    /// The new VM's name (--to-vcenter without --attach-to).
    #[arg(long, value_name = "NAME", conflicts_with = "attach_to")]
    pub vm_name: Option<String>,
    /// Add the point's disks as new disks to this existing VM (name or inventory path, e.g.
    /// dc1/vm/web01) instead of creating a VM; its own disks are never touched.
    #[arg(long, value_name = "VM")]
    pub attach_to: Option<String>,
    /// The datacenter, e.g. dc1.
    #[arg(long, value_name = "DC", required_if_eq("to_vcenter", "true"))]
    pub datacenter: Option<String>,
    /// The datastore the VM's files and disks go to, e.g. ds2.
    #[arg(long, value_name = "DS", required_if_eq("to_vcenter", "true"))]
    pub datastore: Option<String>,
    /// The VM folder below the datacenter, e.g. vm/restored (default: its root VM folder).
    #[arg(long, value_name = "PATH")]
    pub folder: Option<String>,
    /// The resource pool's inventory path (default: the host's or cluster's root pool).
    #[arg(long, value_name = "PATH")]
    pub resource_pool: Option<String>,
    /// The ESXi host to place the VM on (default: vCenter chooses).
    #[arg(long = "host", value_name = "HOST")]
    pub esxi_host: Option<String>,
    /// Connect NICs of captured network OLD to network NEW (repeat per network). A captured
    /// network neither mapped nor present in vCenter is refused before anything is created.
    #[arg(long, value_name = "OLD=NEW")]
    pub network_map: Vec<String>,
    /// Power the new VM on once its disks are uploaded.
    #[arg(long, conflicts_with = "attach_to")]
    pub power_on: bool,
    /// Keep the captured MAC addresses (default: vCenter generates new ones, so the copy can
    /// run beside the original).
    #[arg(long)]
    pub keep_macs: bool,
    /// The vCenter credential whose agent runs the restore (default: the one the VM was last
    /// backed up with).
    #[arg(long, value_name = "NAME")]
    pub credential: Option<String>,
    /// Print the queued job's id and return without following it.
    #[arg(long)]
    pub no_wait: bool,
}

/// Everything a vCenter restore needs.
#[derive(Debug, Clone)]
pub struct VcenterRestoreOptions {
    /// The hub.
    pub hub: HubOptions,
    /// The restore point.
    pub backup_id: BackupId,
    /// What to ask the hub.
    pub request: RestoreRequest,
    /// Follow the job until it ends.
    pub wait: bool,
    /// Draw a progress bar (a terminal, no `--json`).
    pub bar: bool,
    /// How often the job is read back while followed ([`POLL_PERIOD`]).
    pub poll: Duration,
}

/// How a vCenter restore ended (or, with `wait: false`, the queued job).
#[derive(Debug, Clone, PartialEq)]
pub struct VcenterRestoreSummary {
    /// The restore job.
    pub job_id: JobId,
    /// The job as last read (`None` when not followed).
    pub job: Option<Job>,
}

impl VcenterRestoreArgs {
    /// The first flag of `--to-vcenter` given without it (clap cannot tell: `--to-vcenter` is a
    /// flag, which always has a value for it).
    #[must_use]
    pub fn stray_flag(&self) -> Option<&'static str> {
        if self.to_vcenter {
            return None;
        }
        [
            ("--vm-name", self.vm_name.is_some()),
            ("--attach-to", self.attach_to.is_some()),
            ("--datacenter", self.datacenter.is_some()),
            ("--datastore", self.datastore.is_some()),
            ("--folder", self.folder.is_some()),
            ("--resource-pool", self.resource_pool.is_some()),
            ("--host", self.esxi_host.is_some()),
            ("--network-map", !self.network_map.is_empty()),
            ("--power-on", self.power_on),
            ("--keep-macs", self.keep_macs),
            ("--credential", self.credential.is_some()),
            ("--no-wait", self.no_wait),
        ]
        .into_iter()
        .find_map(|(flag, given)| given.then_some(flag))
    }

    /// The request these flags ask for, restoring `disks` (all when empty).
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] or [`ClientError::MissingArgument`] naming the flag.
    pub fn request(&self, disks: &[u32]) -> Result<RestoreRequest, ClientError> {
        let (target, vm_name) = match (&self.attach_to, &self.vm_name) {
            (Some(vm), _) => (RestoreTarget::ExistingVm, vm.clone()),
            (None, Some(name)) => (RestoreTarget::Vcenter, name.clone()),
            (None, None) => {
                return Err(ClientError::MissingArgument {
                    flag: "--vm-name NAME (or --attach-to VM)",
                });
            }
        };
        let credential = self
            .credential
            .as_deref()
            .map(|c| {
                CredentialName::try_from(c).map_err(|e| invalid("--credential", e.to_string()))
            })
            .transpose()?;
        let mut network_map = BTreeMap::new();
        for pair in &self.network_map {
            let Some((from, to)) = pair.split_once('=') else {
                return Err(invalid("--network-map", format!("{pair:?} is not OLD=NEW")));
            };
            if network_map.insert(from.to_owned(), to.to_owned()).is_some() {
                return Err(invalid(
                    "--network-map",
                    format!("network {from:?} is mapped twice"),
                ));
            }
        }
        let request = RestoreRequest {
            target,
            vm_name,
            credential,
            datacenter: self
                .datacenter
                .clone()
                .ok_or(ClientError::MissingArgument {
                    flag: "--datacenter",
                })?,
            folder: self.folder.clone(),
            resource_pool: self.resource_pool.clone(),
            host: self.esxi_host.clone(),
            datastore: self.datastore.clone().ok_or(ClientError::MissingArgument {
                flag: "--datastore",
            })?,
            network_map,
            power_on: self.power_on,
            keep_macs: self.keep_macs,
            disks: (!disks.is_empty()).then(|| disks.iter().copied().map(DiskKey).collect()),
        };
        request
            .validate()
            .map_err(|e| invalid("--to-vcenter", e.to_string()))?;
        Ok(request)
    }
}

/// Queues the restore at the hub and, with `wait`, follows its job until it ends.
///
/// # Errors
/// The hub's refusal (404, 409, 400 with its message); [`ClientError::RestoreJobEnded`] when
/// the job failed or was cancelled; connection errors.
pub async fn run(options: VcenterRestoreOptions) -> Result<VcenterRestoreSummary, ClientError> {
    let hub = HubClient::new(&options.hub)?;
    let accepted = hub
        .start_vm_restore(&options.backup_id, &options.request)
        .await?;
    info!(job_id = %accepted.job_id, backup_id = %options.backup_id, vm = options.request.vm_name, "restore job queued");
    if !options.wait {
        return Ok(VcenterRestoreSummary {
            job_id: accepted.job_id,
            job: None,
        });
    }
    let job = follow(&hub, &accepted.job_id, options.bar, options.poll).await?;
    match job.status {
        JobStatus::Completed => Ok(VcenterRestoreSummary {
            job_id: accepted.job_id,
            job: Some(job),
        }),
        status => Err(ClientError::RestoreJobEnded {
            job_id: accepted.job_id,
            status,
            error: job.error.unwrap_or_else(|| "no reason given".into()),
        }),
    }
}

/// Reads job `id` every `poll` until it ends; answers it as it ended.
async fn follow(
    hub: &HubClient,
    id: &JobId,
    bar: bool,
    poll: Duration,
) -> Result<Job, ClientError> {
    let bar = bar.then(|| {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:40}] {bytes}/{total_bytes} {msg} ({elapsed})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(format!("restore {id}"));
        bar
    });
    let mut last_status = None;
    loop {
        let job = hub.job(id).await?;
        if let Some(bar) = &bar {
            bar.set_length(job.progress.bytes_total);
            bar.set_position(job.progress.bytes_done);
            bar.set_message(describe(&job));
        } else if last_status != Some(job.status) {
            info!(job_id = %id, status = %job.status, progress = describe(&job), "restore job");
        }
        last_status = Some(job.status);
        if !job.status.is_active() {
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            return Ok(job);
        }
        tokio::time::sleep(poll).await;
    }
}

/// `queued`, or `running 12.5 MB/s, ETA 40 s`.
fn describe(job: &Job) -> String {
    if job.status != JobStatus::Running {
        return job.status.to_string();
    }
    let eta = job
        .progress
        .eta_seconds
        .map_or_else(|| "ETA -".to_owned(), |s| format!("ETA {s} s"));
    format!("running {:.1} MB/s, {eta}", job.progress.mb_per_s)
}

/// Whether progress bars can be drawn.
#[must_use]
pub fn bar_wanted(json: bool) -> bool {
    !json && std::io::stderr().is_terminal()
}

fn invalid(what: &'static str, reason: String) -> ClientError {
    ClientError::InvalidArgument { what, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> VcenterRestoreArgs {
        VcenterRestoreArgs {
            to_vcenter: true,
            vm_name: Some("web01-r".into()),
            datacenter: Some("dc1".into()),
            datastore: Some("ds2".into()),
            network_map: vec!["VM Network=Restore Net".into()],
            ..VcenterRestoreArgs::default()
        }
    }

    #[test]
    fn request_network_map_without_equals_refused() {
        let mut a = args();
        a.network_map.push("Backup Net".into());

        let err = a.request(&[]).unwrap_err();

        assert!(err.to_string().contains("--network-map"), "{err}");
    }

    #[test]
    fn request_network_mapped_twice_refused() {
        let mut a = args();
        a.network_map.push("VM Network=Other".into());

        let err = a.request(&[]).unwrap_err();

        assert!(err.to_string().contains("mapped twice"), "{err}");
    }

    #[test]
    fn request_without_vm_name_or_attach_to_refused() {
        let mut a = args();
        a.vm_name = None;

        let err = a.request(&[]).unwrap_err();

        assert!(err.to_string().contains("--vm-name"), "{err}");
    }

    #[test]
    fn stray_flag_without_to_vcenter_named() {
        let mut a = args();
        a.to_vcenter = false;

        assert_eq!(a.stray_flag(), Some("--vm-name"));
        assert_eq!(args().stray_flag(), None);
    }

    #[test]
    fn describe_running_job_shows_rate_and_eta() {
        let job: Job = serde_json::from_value(serde_json::json!({
            "job_id": "job-00000000000000aa", "kind": "restore", "vm_name": "web01",
            "status": "running", "backup_id": null, "agent": "a1",
            "progress": {"bytes_done": 10, "bytes_total": 20, "mb_per_s": 12.54, "eta_seconds": 40},
            "error": null, "queued_at": "2026-11-25T00:00:00Z", "started_at": null,
            "finished_at": null
        }))
        .unwrap();

        assert_eq!(describe(&job), "running 12.5 MB/s, ETA 40 s");
    }
}
