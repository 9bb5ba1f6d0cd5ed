//! The agent's backup jobs of its own NBD sources (KVM guests through libvirt, `qemu-nbd`, any
//! NBD server): the hub queues them for the agent a policy or `POST /api/v1/vms/{name}/backup`
//! names (`agent` instead of a vCenter `credential`), and the agent runs them with the same
//! flow as `sendense-client backup --nbd-source` ([`crate::nbdsource::run_until`]).
//!
//! # The sources file
//!
//! The hub never sees host paths or sockets: the agent's NBD sources file (`agent run
//! --nbd-sources FILE`, by default `STATE_DIR/nbd-sources.toml`, read again at each job) says
//! how to reach each VM, by a *hook*: a command the agent runs before and after each backup.
//!
//! ```toml
//! [[vm]]
//! name = "kvm01"                                   # the VM's name at the hub
//! hook = ["/usr/share/sendense/libvirt-nbd-hook"]  # argv; the phase is appended
//! # nbd_tls_dir = "/etc/sendense/nbd-tls"          # for nbds:// exports (QEMU's layout)
//! # begin_timeout_seconds = 300
//! # end_timeout_seconds = 60
//! ```
//!
//! # The hook
//!
//! `HOOK... begin` starts a point-in-time export of the VM's disks (libvirt: `virsh
//! backup-begin` in pull mode with a new checkpoint) and prints on stdout
//! `{"disks": [{"key": 2000, "uri": "nbd+unix:///vda?socket=/run/x.sock"}], "bitmap": "NAME"}`
//! (`bitmap` optional: the name the agent proposed). `HOOK... end` ends it (`virsh domjobabort`)
//! and runs whenever `begin` was started: after a success, a failure, a cancellation or a
//! `begin` that failed half way. Both get in their environment:
//!
//! | variable | value |
//! |---|---|
//! | `SENDENSE_PHASE` | `begin` or `end` |
//! | `SENDENSE_VM` | the VM's name |
//! | `SENDENSE_JOB_ID` | the hub's job id |
//! | `SENDENSE_BACKUP_TYPE` | `full`, `incremental` or `auto`, as the job asks |
//! | `SENDENSE_BITMAP` | the new bitmap (checkpoint) name for this backup, unique per job: `sendense-<UTC yyyymmddThhmmss>-<8 hex>` |
//! | `SENDENSE_PARENT_BITMAP` | the bitmap recorded as change id of the VM's last completed backup (unset for a full or the first backup): export its dirty bitmap (`backup-begin` with `<incremental>`, `qemu-nbd -B`) |
//! | `SENDENSE_RESULT` | `end` only: `completed` or `failed` |
//! | `SENDENSE_BACKUP_ID` | `end` only, once the hub started the backup |
//!
//! A new bitmap per backup, never a reused name: a bitmap deleted and created again under the
//! same name would hide the writes in between. The new bitmap is recorded as each disk's change
//! id at the hub; the next incremental reads the parent's. When the source does not offer the
//! parent's bitmap (a checkpoint deleted, a VM recreated), `auto` becomes a full on a new chain,
//! logged with the reason, and `incremental` fails saying why (see [`crate::nbdsource`]).
//!
//! A failing `begin` (non-zero exit, timeout, an answer that does not parse) fails the job with
//! its exit status and the end of its stderr. A failing `end` is logged; it fails the job only
//! when the backup itself failed too. Daemons the hook starts must not keep its stdout or
//! stderr open (redirect them): the agent stops reading them 2 s after the hook exits.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sendense_transfer::engine::TransferOptions;
use sendense_transfer::nbd::{NbdTls, NbdUri};
use sendense_transfer::progress::Progress;
use sendense_types::{
    AgentJob, BackupStatus, BackupType, ChangeId, DiskKey, JobKind, Timestamp, VmName,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};
use tracing::{info, warn};

use crate::agent::{JobContext, JobDone, JobFuture, JobRunner, VcenterRunner};
use crate::error::ClientError;
use crate::hub::HubClient;
use crate::nbdsource::{self, NbdBackupOptions, NbdDiskInput};

/// The NBD sources file in the agent's state folder (used when `--nbd-sources` is not given).
pub const NBD_SOURCES: &str = "nbd-sources.toml";
/// Default limit of a `begin` hook, in seconds.
pub const DEFAULT_BEGIN_TIMEOUT_SECONDS: u64 = 300;
/// Default limit of an `end` hook, in seconds (inside the agent's 90 s to stop).
pub const DEFAULT_END_TIMEOUT_SECONDS: u64 = 60;
/// Longest hook limit accepted, in seconds (one day).
pub const MAX_HOOK_TIMEOUT_SECONDS: u64 = 86_400;
/// Longest sources file read, in bytes.
pub const MAX_SOURCES_FILE_LEN: u64 = 1 << 20;
/// Most bytes of a hook's stdout or stderr kept.
const MAX_HOOK_OUTPUT: usize = 1 << 20;
/// How much of a failed hook's stderr its error shows (its end).
const ERROR_STDERR_BYTES: usize = 2048;
/// How long the pipes of an exited hook are still read (a daemon it started may hold them).
const PIPE_GRACE: Duration = Duration::from_secs(2);

/// The agent's NBD sources file: `[[vm]]` entries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NbdSources {
    /// One entry per VM.
    #[serde(default)]
    pub vm: Vec<NbdSourceVm>,
}

/// How the agent reaches one VM's disks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NbdSourceVm {
    /// The VM's name at the hub.
    pub name: VmName,
    /// The hook's argv (program first); `begin` or `end` is appended.
    pub hook: Vec<String>,
    /// A client certificate folder in QEMU's layout for `nbds://` exports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbd_tls_dir: Option<PathBuf>,
    /// Limit of `begin`, in seconds.
    #[serde(default = "default_begin_timeout")]
    pub begin_timeout_seconds: u64,
    /// Limit of `end`, in seconds.
    #[serde(default = "default_end_timeout")]
    pub end_timeout_seconds: u64,
}

const fn default_begin_timeout() -> u64 {
    DEFAULT_BEGIN_TIMEOUT_SECONDS
}

const fn default_end_timeout() -> u64 {
    DEFAULT_END_TIMEOUT_SECONDS
}

impl NbdSources {
    /// Parses and checks a sources file's text: every VM once, every hook with a program,
    /// timeouts of 1 s to a day.
    ///
    /// # Errors
    /// [`ClientError::NbdSourcesInvalid`] naming what is wrong.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ClientError> {
        let bad = |reason: String| ClientError::NbdSourcesInvalid {
            path: path.to_owned(),
            reason,
        };
        let sources: Self = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        for (i, vm) in sources.vm.iter().enumerate() {
            if sources.vm[..i].iter().any(|other| other.name == vm.name) {
                return Err(bad(format!("VM {} is listed twice", vm.name)));
            }
            if vm.hook.first().is_none_or(String::is_empty) {
                return Err(bad(format!("VM {}: hook names no program", vm.name)));
            }
            for t in [vm.begin_timeout_seconds, vm.end_timeout_seconds] {
                if t == 0 || t > MAX_HOOK_TIMEOUT_SECONDS {
                    return Err(bad(format!(
                        "VM {}: hook timeouts are 1 to {MAX_HOOK_TIMEOUT_SECONDS} seconds",
                        vm.name
                    )));
                }
            }
        }
        Ok(sources)
    }

    /// Reads `path`; a missing file is an empty list (an agent of vCenters only).
    ///
    /// # Errors
    /// [`ClientError::File`] when it cannot be read or is too large;
    /// [`ClientError::NbdSourcesInvalid`].
    pub fn read(path: &Path) -> Result<Self, ClientError> {
        let file_error = |source| ClientError::File {
            what: "NBD sources file",
            path: path.to_owned(),
            source,
        };
        let meta = match std::fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(file_error(e)),
        };
        if meta.len() > MAX_SOURCES_FILE_LEN {
            return Err(file_error(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "larger than 1 MiB",
            )));
        }
        let text = std::fs::read_to_string(path).map_err(file_error)?;
        Self::parse(path, &text)
    }

    /// The entry of `vm`.
    #[must_use]
    pub fn get(&self, vm: &str) -> Option<&NbdSourceVm> {
        self.vm.iter().find(|v| v.name.as_str() == vm)
    }
}

/// What `HOOK begin` prints: the VM's exports and, optionally, the bitmap it created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BeginAnswer {
    /// One export per disk.
    pub disks: Vec<BeginDisk>,
    /// The bitmap (checkpoint) starting at this backup, when not `SENDENSE_BITMAP`.
    #[serde(default)]
    pub bitmap: Option<String>,
}

/// One disk of a [`BeginAnswer`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BeginDisk {
    /// The disk's key at the hub (2000, 2001, ...).
    pub key: DiskKey,
    /// Its export: `nbd://`, `nbds://` or `nbd+unix://`.
    pub uri: String,
}

/// Runs every job: backup jobs without a vCenter credential from the agent's NBD sources
/// ([`run_job`]), everything else with [`VcenterRunner`].
#[derive(Debug, Clone)]
pub struct AgentRunner {
    /// The runner of vCenter jobs (and its engine tuning, used for NBD sources too).
    pub vcenter: VcenterRunner,
    /// The NBD sources file, read at each job.
    pub sources: PathBuf,
}

impl JobRunner for AgentRunner {
    fn run(&self, job: AgentJob, context: JobContext) -> JobFuture {
        if job.kind == JobKind::Backup && job.credential.is_none() {
            let sources = self.sources.clone();
            let transfer = self.vcenter.transfer;
            return Box::pin(async move { run_job(&sources, &job, &context, transfer).await });
        }
        self.vcenter.run(job, context)
    }
}

/// Runs a backup job of a VM of the agent's NBD sources file `sources`: the VM's `begin`
/// hook, the backup of the exports it answers ([`nbdsource::run_until`], stopping when the job
/// must), then always its `end` hook.
///
/// # Errors
/// [`ClientError::JobIncomplete`] without a VM; [`ClientError::NbdSourceUnknown`];
/// [`ClientError::NbdHook`]; the backup's errors.
pub async fn run_job(
    sources: &Path,
    job: &AgentJob,
    context: &JobContext,
    transfer: TransferOptions,
) -> Result<JobDone, ClientError> {
    let vm_text = job
        .vm
        .as_deref()
        .ok_or(ClientError::JobIncomplete { what: "a VM" })?;
    let source = NbdSources::read(sources)?
        .get(vm_text)
        .cloned()
        .ok_or_else(|| ClientError::NbdSourceUnknown {
            vm: vm_text.to_owned(),
            path: sources.to_owned(),
        })?;
    let backup_type = job.backup_type.unwrap_or(BackupType::Auto);
    let hub = HubClient::new(&context.hub)?;
    let parent = match backup_type {
        BackupType::Full => None,
        _ => parent_bitmap(&hub, &source.name).await?,
    };
    let bitmap = new_bitmap_name(Timestamp::now(), job.job_id.as_str());
    let mut env = vec![
        ("SENDENSE_VM", source.name.to_string()),
        ("SENDENSE_JOB_ID", job.job_id.to_string()),
        ("SENDENSE_BACKUP_TYPE", backup_type.to_string()),
        ("SENDENSE_BITMAP", bitmap.clone()),
    ];
    if let Some(parent) = &parent {
        env.push(("SENDENSE_PARENT_BITMAP", parent.clone()));
    }
    info!(vm = %source.name, bitmap = %bitmap, parent_bitmap = parent.as_deref().unwrap_or(""), "running the begin hook");
    let begun = tokio::select! {
        r = run_hook(&source, "begin", &env, source.begin_timeout_seconds) => r,
        () = context.stopped() => Err(ClientError::Interrupted),
    };
    let result = match begun {
        Ok(stdout) => backup(&source, &stdout, &bitmap, backup_type, context, transfer).await,
        Err(e) => Err(e),
    };
    let (outcome, backup_id) = match &result {
        Ok(done) => ("completed", done.backup_id.clone()),
        Err(_) => ("failed", context.backup_id.borrow().clone()),
    };
    env.push(("SENDENSE_RESULT", outcome.to_owned()));
    if let Some(id) = backup_id {
        env.push(("SENDENSE_BACKUP_ID", id.to_string()));
    }
    let ended = run_hook(&source, "end", &env, source.end_timeout_seconds).await;
    match (result, ended) {
        (Ok(done), Ok(_)) => Ok(done),
        (Ok(mut done), Err(e)) => {
            // The backup is good; the job says the hook failed (a checkpoint may be left).
            warn!(error = %e, "the end hook failed after a completed backup");
            let hook = format!("the backup completed, but {e}");
            done.note = Some(match done.note.take() {
                Some(note) => format!("{note}; {hook}"),
                None => hook,
            });
            Ok(done)
        }
        (Err(e), Ok(_)) => Err(e),
        (Err(e), Err(end)) => {
            warn!(error = %end, "the end hook failed too");
            Err(e)
        }
    }
}

/// The backup of the exports `HOOK begin` answered.
async fn backup(
    source: &NbdSourceVm,
    stdout: &[u8],
    proposed: &str,
    backup_type: BackupType,
    context: &JobContext,
    transfer: TransferOptions,
) -> Result<JobDone, ClientError> {
    let answer = parse_begin_answer(source.name.as_str(), stdout)?;
    let bitmap = nbdsource::parse_bitmap(answer.bitmap.as_deref().unwrap_or(proposed))?;
    let disks = answer
        .disks
        .iter()
        .map(|d| {
            Ok(NbdDiskInput {
                key: d.key,
                uri: NbdUri::parse(&d.uri)?,
            })
        })
        .collect::<Result<Vec<_>, ClientError>>()?;
    let tls = match &source.nbd_tls_dir {
        Some(dir) => Some(NbdTls {
            config: crate::hub::client_cert_config(dir)?,
            server_name: String::new(),
        }),
        None => None,
    };
    let mut options = NbdBackupOptions::new(context.hub.clone(), source.name.clone(), disks);
    options.bitmap = Some(bitmap);
    options.backup_type = backup_type;
    options.tls = tls;
    options.transfer = transfer;
    options.progress = Arc::clone(&context.progress) as Arc<dyn Progress>;
    options.started = Some(Arc::clone(&context.backup_id));
    let summary = nbdsource::run_until(options, context.stopped()).await?;
    Ok(JobDone {
        backup_id: Some(summary.backup_id),
        inventory: None,
        note: summary.full_reason.map(|r| format!("full backup: {r}")),
    })
}

/// Parses `HOOK begin`'s stdout: a [`BeginAnswer`] with at least one disk.
///
/// # Errors
/// [`ClientError::NbdHook`] saying what is wrong.
pub fn parse_begin_answer(vm: &str, stdout: &[u8]) -> Result<BeginAnswer, ClientError> {
    let bad = |detail: String| ClientError::NbdHook {
        vm: vm.to_owned(),
        phase: "begin",
        detail,
    };
    let answer: BeginAnswer = serde_json::from_slice(stdout).map_err(|e| {
        bad(format!(
            "its stdout is not {{\"disks\": [{{\"key\": 2000, \"uri\": \"nbd://...\"}}], \"bitmap\": \"NAME\"}}: {e}"
        ))
    })?;
    if answer.disks.is_empty() {
        return Err(bad("it answered no disk".to_owned()));
    }
    Ok(answer)
}

/// The change id (bitmap name) of the VM's last completed backup at the hub, if any.
async fn parent_bitmap(hub: &HubClient, vm: &VmName) -> Result<Option<String>, ClientError> {
    let chain = match hub.chain(vm).await {
        Ok(chain) => chain,
        Err(ClientError::HubStatus { status: 404, .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(chain
        .backups
        .iter()
        .rev()
        .find(|b| b.status == BackupStatus::Completed)
        .and_then(|b| b.disks.iter().find_map(|d| d.change_id.as_ref()))
        .map(ChangeId::to_string))
}

/// `sendense-<UTC yyyymmddThhmmss>-<the job id's last 8 hex digits>`: unique per job, and
/// sorted by time in `virsh checkpoint-list`.
#[must_use]
pub fn new_bitmap_name(now: Timestamp, job_id: &str) -> String {
    let tail = job_id
        .get(job_id.len().saturating_sub(8)..)
        .unwrap_or(job_id);
    format!("sendense-{}-{tail}", now.compact())
}

/// Runs `HOOK... phase` with `env` (plus `SENDENSE_PHASE`), at most `timeout_seconds`; its
/// stdout.
///
/// # Errors
/// [`ClientError::NbdHook`] when it cannot start, times out (it is killed) or exits non-zero
/// (with the end of its stderr).
pub async fn run_hook(
    source: &NbdSourceVm,
    phase: &'static str,
    env: &[(&str, String)],
    timeout_seconds: u64,
) -> Result<Vec<u8>, ClientError> {
    let failed = |detail: String| ClientError::NbdHook {
        vm: source.name.to_string(),
        phase,
        detail,
    };
    let (program, args) = source
        .hook
        .split_first()
        .ok_or_else(|| failed("no program".to_owned()))?;
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .arg(phase)
        .env("SENDENSE_PHASE", phase)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|e| failed(format!("{program} cannot be started: {e}")))?;
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let readers = [
        child
            .stdout
            .take()
            .map(|p| tokio::spawn(collect(p, Arc::clone(&stdout)))),
        child
            .stderr
            .take()
            .map(|p| tokio::spawn(collect(p, Arc::clone(&stderr)))),
    ];
    let waited = tokio::time::timeout(Duration::from_secs(timeout_seconds), child.wait()).await;
    let status = match waited {
        Ok(Ok(status)) => Ok(status),
        Ok(Err(e)) => Err(format!("waiting for it failed: {e}")),
        Err(_) => {
            if let Err(e) = child.kill().await {
                warn!(error = %e, "killing the hook failed");
            }
            Err(format!(
                "it did not finish within {timeout_seconds} s and was killed"
            ))
        }
    };
    for reader in readers.into_iter().flatten() {
        let abort = reader.abort_handle();
        if tokio::time::timeout(PIPE_GRACE, reader).await.is_err() {
            abort.abort();
        }
    }
    let take = |buf: &Mutex<Vec<u8>>| {
        std::mem::take(&mut *buf.lock().unwrap_or_else(PoisonError::into_inner))
    };
    let (out, err) = (take(&stdout), take(&stderr));
    let err_text = String::from_utf8_lossy(&err);
    let err_tail = tail(err_text.trim(), ERROR_STDERR_BYTES);
    match status {
        Ok(status) if status.success() => {
            if !err_tail.is_empty() {
                info!(phase, stderr = err_tail, "hook said");
            }
            info!(phase, "hook done");
            Ok(out)
        }
        Ok(status) => Err(failed(format!("it exited with {status}: {err_tail}"))),
        Err(reason) => Err(failed(format!("{reason}: {err_tail}"))),
    }
}

/// Reads a pipe to its end into `buf`, keeping at most [`MAX_HOOK_OUTPUT`] bytes.
async fn collect(mut pipe: impl AsyncRead + Unpin, buf: Arc<Mutex<Vec<u8>>>) {
    let mut chunk = [0u8; 8192];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let mut buf = buf.lock().unwrap_or_else(PoisonError::into_inner);
                let room = MAX_HOOK_OUTPUT.saturating_sub(buf.len());
                buf.extend_from_slice(chunk.get(..n.min(room)).unwrap_or_default());
            }
        }
    }
}

/// The last `max` bytes of `text`, on a character boundary.
fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text.get(start..).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(text: &str) -> Result<NbdSources, ClientError> {
        NbdSources::parse(Path::new("/state/nbd-sources.toml"), text)
    }

    #[test]
    fn sources_file_parses_with_defaults() {
        let s = sources(
            r#"
            [[vm]]
            name = "kvm01"
            hook = ["/usr/share/sendense/libvirt-nbd-hook", "--uri", "qemu:///system"]
            "#,
        )
        .expect("valid");

        let vm = s.get("kvm01").expect("listed");
        assert_eq!(
            (
                vm.hook.len(),
                vm.begin_timeout_seconds,
                vm.end_timeout_seconds,
                s.get("kvm02").is_none()
            ),
            (3, 300, 60, true)
        );
    }

    #[test]
    fn sources_file_refuses_twice_listed_empty_hook_zero_timeout_and_unknown_keys() {
        let cases = [
            (
                "[[vm]]\nname = \"a\"\nhook = [\"h\"]\n[[vm]]\nname = \"a\"\nhook = [\"h\"]\n",
                "twice",
            ),
            ("[[vm]]\nname = \"a\"\nhook = []\n", "no program"),
            (
                "[[vm]]\nname = \"a\"\nhook = [\"h\"]\nend_timeout_seconds = 0\n",
                "timeouts",
            ),
            ("[[vm]]\nname = \"a\"\nhook = [\"h\"]\ncolor = 1\n", "color"),
        ];

        for (text, want) in cases {
            let err = sources(text).expect_err("refused");

            assert!(err.to_string().contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn missing_sources_file_is_an_empty_list() {
        let dir = tempfile::tempdir().expect("tempdir");

        let s = NbdSources::read(&dir.path().join(NBD_SOURCES)).expect("empty");

        assert!(s.vm.is_empty());
    }

    #[test]
    fn begin_answer_parses_and_junk_or_no_disk_is_refused() {
        let good = parse_begin_answer(
            "kvm01",
            br#"{"disks":[{"key":2000,"uri":"nbd+unix:///vda?socket=/run/a.sock"}],"bitmap":"cp-2"}"#,
        )
        .expect("valid");
        let junk = parse_begin_answer("kvm01", b"started\n").expect_err("junk");
        let none = parse_begin_answer("kvm01", br#"{"disks":[]}"#).expect_err("no disk");

        assert_eq!(
            (good.disks[0].key, good.bitmap.as_deref()),
            (DiskKey(2000), Some("cp-2"))
        );
        assert!(junk.to_string().contains("not {\"disks\""), "{junk}");
        assert!(none.to_string().contains("no disk"), "{none}");
    }

    #[test]
    fn bitmap_names_sort_by_time_and_are_unique_per_job() {
        let t = Timestamp::from_unix_seconds(1_796_630_400).expect("valid");

        let name = new_bitmap_name(t, "job-00112233deadbeef");

        assert_eq!(name, "sendense-20261207T080000-deadbeef");
        assert!(nbdsource::parse_bitmap(&name).is_ok());
    }

    fn vm_with_hook(script: &str) -> NbdSourceVm {
        NbdSourceVm {
            name: "kvm01".parse().expect("name"),
            hook: vec!["/bin/sh".into(), "-c".into(), script.into(), "hook".into()],
            nbd_tls_dir: None,
            begin_timeout_seconds: 30,
            end_timeout_seconds: 30,
        }
    }

    #[tokio::test]
    async fn hook_gets_phase_and_env_and_its_stdout_is_answered() {
        let vm = vm_with_hook(r#"printf '%s %s %s' "$1" "$SENDENSE_PHASE" "$SENDENSE_BITMAP""#);

        let out = run_hook(&vm, "begin", &[("SENDENSE_BITMAP", "bm-1".into())], 30)
            .await
            .expect("runs");

        assert_eq!(String::from_utf8_lossy(&out), "begin begin bm-1");
    }

    #[tokio::test]
    async fn failing_hook_error_carries_status_and_stderr() {
        let vm = vm_with_hook("echo 'error: domain kvm01 not found' >&2; exit 3");

        let err = run_hook(&vm, "begin", &[], 30).await.expect_err("fails");

        let text = err.to_string();
        assert!(
            text.contains("domain kvm01 not found") && text.contains("3"),
            "{text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn hook_over_its_limit_is_killed() {
        let vm = vm_with_hook("exec tail -f /dev/null");

        let err = run_hook(&vm, "end", &[], 5).await.expect_err("times out");

        assert!(err.to_string().contains("within 5 s"), "{err}");
    }
}
