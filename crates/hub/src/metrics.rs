//! `GET /api/v1/metrics`: the hub's state in Prometheus' text exposition format (version 0.0.4).
//!
//! Two halves: [`MetricsSnapshot`] is plain data (what the hub knows at one instant), and
//! [`MetricsSnapshot::render`] writes it out by hand, so the format is exactly what the
//! Prometheus documentation specifies: one `# HELP` and one `# TYPE` line per family, then its
//! samples; label values escape `\`, `"` and newlines, help texts `\` and newlines. Every
//! family is a gauge: each value is read from the catalog and the repository at scrape time,
//! none is a counter kept by this process.
//!
//! [`Engine::metrics`] fills what the engine knows (backups, chains, repository space);
//! [`gather`] adds jobs and agents.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use sendense_types::{AgentState, BackupQuery, BackupStatus, JobQuery};

use crate::agents::Agents;
use crate::jobs::Jobs;

use crate::engine::Engine;
use crate::error::HubError;

/// The `Content-Type` of the rendered text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the hub knows at one instant, ready to render.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Jobs by `(kind, status)` (e.g. `("backup", "running")`).
    pub jobs_by_status: BTreeMap<(String, String), u64>,
    /// Backups in the catalog by status (`pending`, `running`, `completed`, `failed`).
    pub backups_by_status: BTreeMap<String, u64>,
    /// Bytes written into the backups the catalog holds (completed and running); falls when
    /// backups are deleted.
    pub bytes_written_total: u64,
    /// Size of the file system holding the repository.
    pub repository_capacity_bytes: u64,
    /// Bytes the repository's files occupy.
    pub repository_used_bytes: u64,
    /// Bytes still available to the hub on that file system.
    pub repository_free_bytes: u64,
    /// Per VM: restore points in its current chain (its latest full and the incrementals on
    /// it); 0 for a VM with no completed full.
    pub chain_length: BTreeMap<String, u64>,
    /// Per VM with a completed backup: Unix time (seconds) its newest one completed.
    pub last_success_timestamp: BTreeMap<String, i64>,
    /// Agents seen within their online window; `None` leaves the family out.
    pub agents_online: Option<u64>,
}

/// Everything the hub knows at one instant: [`Engine::metrics`], plus jobs by kind and status
/// and the agents online.
///
/// # Errors
/// Catalog or repository errors.
pub fn gather(engine: &Engine, jobs: &Jobs, agents: &Agents) -> Result<MetricsSnapshot, HubError> {
    let mut snapshot = engine.metrics()?;
    for job in jobs.list(&JobQuery::default())?.jobs {
        *snapshot
            .jobs_by_status
            .entry((job.kind.as_str().to_owned(), job.status.as_str().to_owned()))
            .or_default() += 1;
    }
    let online = agents
        .list()?
        .agents
        .iter()
        .filter(|a| a.state == AgentState::Online)
        .count();
    snapshot.agents_online = Some(u64::try_from(online).unwrap_or(u64::MAX));
    Ok(snapshot)
}

impl MetricsSnapshot {
    /// The snapshot in Prometheus' text exposition format 0.0.4, families in a fixed order,
    /// samples sorted by their labels.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = Exposition::default();
        out.family(
            "sendense_jobs",
            "Jobs in the hub's job list, by kind and status.",
            self.jobs_by_status.iter().map(|((kind, status), n)| {
                (
                    vec![("kind", kind.as_str()), ("status", status.as_str())],
                    Value::from(*n),
                )
            }),
        );
        out.family(
            "sendense_backups",
            "Backups in the catalog, by status.",
            self.backups_by_status
                .iter()
                .map(|(status, n)| (vec![("status", status.as_str())], Value::from(*n))),
        );
        out.family(
            "sendense_backup_written_bytes",
            "Bytes written into the backups the catalog holds (completed and running); falls when backups are deleted.",
            [(Vec::new(), Value::from(self.bytes_written_total))],
        );
        out.family(
            "sendense_repository_capacity_bytes",
            "Size of the file system holding the repository.",
            [(Vec::new(), Value::from(self.repository_capacity_bytes))],
        );
        out.family(
            "sendense_repository_used_bytes",
            "Bytes the repository's files occupy.",
            [(Vec::new(), Value::from(self.repository_used_bytes))],
        );
        out.family(
            "sendense_repository_free_bytes",
            "Bytes still available to the hub on the repository's file system.",
            [(Vec::new(), Value::from(self.repository_free_bytes))],
        );
        out.family(
            "sendense_chain_length",
            "Restore points in each VM's current chain (its latest full and the incrementals on it).",
            self.chain_length
                .iter()
                .map(|(vm, n)| (vec![("vm", vm.as_str())], Value::from(*n))),
        );
        out.family(
            "sendense_last_success_timestamp_seconds",
            "Unix time at which each VM's newest completed backup completed.",
            self.last_success_timestamp
                .iter()
                .map(|(vm, t)| (vec![("vm", vm.as_str())], Value::from(*t))),
        );
        if let Some(n) = self.agents_online {
            out.family(
                "sendense_agents_online",
                "Agents seen within their online window.",
                [(Vec::new(), Value::from(n))],
            );
        }
        out.text
    }
}

impl Engine {
    /// What the engine knows for `GET /api/v1/metrics`: backups by status, bytes written,
    /// repository space, chain lengths and last success per VM. Jobs and agents are left
    /// empty: their owners add them.
    ///
    /// # Errors
    /// The catalog fails, or the repository cannot be read.
    pub fn metrics(&self) -> Result<MetricsSnapshot, HubError> {
        let repository = self.repository()?;
        let mut snapshot = MetricsSnapshot {
            repository_capacity_bytes: repository.capacity_bytes,
            repository_used_bytes: repository.used_bytes,
            repository_free_bytes: repository.free_bytes,
            ..MetricsSnapshot::default()
        };
        for backup in self.backups(&BackupQuery::default())? {
            *snapshot
                .backups_by_status
                .entry(backup.status.as_str().to_owned())
                .or_default() += 1;
            let written = backup
                .disks
                .iter()
                .fold(0u64, |sum, d| sum.saturating_add(d.bytes_written));
            snapshot.bytes_written_total = snapshot.bytes_written_total.saturating_add(written);
            if backup.status == BackupStatus::Completed
                && let Some(at) = backup.completed_at
            {
                let last = snapshot
                    .last_success_timestamp
                    .entry(backup.vm_name.to_string())
                    .or_insert(i64::MIN);
                *last = (*last).max(at.unix_seconds());
            }
        }
        for vm in self.vms()? {
            let length = self.chain(&vm.name)?.backups.len();
            snapshot.chain_length.insert(
                vm.name.to_string(),
                u64::try_from(length).unwrap_or(u64::MAX),
            );
        }
        Ok(snapshot)
    }
}

/// A sample's value: counts and timestamps are integers, written without a fraction.
#[derive(Debug, Clone, Copy)]
enum Value {
    Unsigned(u64),
    Signed(i64),
}

impl From<u64> for Value {
    fn from(n: u64) -> Self {
        Self::Unsigned(n)
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Self::Signed(n)
    }
}

/// The text being written.
#[derive(Debug, Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    /// One gauge family: `# HELP`, `# TYPE`, then one line per sample.
    fn family<'a>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Vec<(&'a str, &'a str)>, Value)>,
    ) {
        // Writing into a String cannot fail.
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} gauge");
        for (labels, value) in samples {
            self.text.push_str(name);
            if !labels.is_empty() {
                self.text.push('{');
                for (i, (label, v)) in labels.iter().enumerate() {
                    if i > 0 {
                        self.text.push(',');
                    }
                    let _ = write!(self.text, "{label}=\"{}\"", escape_label(v));
                }
                self.text.push('}');
            }
            let _ = match value {
                Value::Unsigned(n) => writeln!(self.text, " {n}"),
                Value::Signed(n) => writeln!(self.text, " {n}"),
            };
        }
    }
}

/// A help text: `\` as `\\`, a newline as `\n`.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A label value: `\` as `\\`, `"` as `\"`, a newline as `\n`.
fn escape_label(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    #[test]
    fn render_empty_snapshot_has_help_and_type_for_every_family() {
        let text = MetricsSnapshot::default().render();

        let families = [
            "sendense_jobs",
            "sendense_backups",
            "sendense_backup_written_bytes",
            "sendense_repository_capacity_bytes",
            "sendense_repository_used_bytes",
            "sendense_repository_free_bytes",
            "sendense_chain_length",
            "sendense_last_success_timestamp_seconds",
        ];
        for name in families {
            assert_eq!(
                text.matches(&format!("# HELP {name} ")).count(),
                1,
                "{name}"
            );
            assert_eq!(
                text.matches(&format!("# TYPE {name} gauge\n")).count(),
                1,
                "{name}"
            );
        }
        assert!(!text.contains("sendense_agents_online"));
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn render_labels_sorted_and_help_before_type_before_samples() {
        let mut snapshot = MetricsSnapshot::default();
        snapshot
            .jobs_by_status
            .insert(("backup".into(), "running".into()), 2);
        snapshot
            .jobs_by_status
            .insert(("backup".into(), "failed".into()), 1);
        snapshot.agents_online = Some(3);

        let text = snapshot.render();

        let l = lines(&text);
        let help = l
            .iter()
            .position(|x| x.starts_with("# HELP sendense_jobs "))
            .unwrap();
        assert_eq!(l[help + 1], "# TYPE sendense_jobs gauge");
        assert_eq!(
            l[help + 2],
            "sendense_jobs{kind=\"backup\",status=\"failed\"} 1"
        );
        assert_eq!(
            l[help + 3],
            "sendense_jobs{kind=\"backup\",status=\"running\"} 2"
        );
        assert!(l[help + 4].starts_with("# HELP sendense_backups "));
        assert!(text.ends_with("# TYPE sendense_agents_online gauge\nsendense_agents_online 3\n"));
    }

    #[test]
    fn render_label_values_escape_backslash_quote_and_newline() {
        let mut snapshot = MetricsSnapshot::default();
        snapshot
            .chain_length
            .insert("we\\ird \"vm\"\nname".into(), 4);

        let text = snapshot.render();

        assert!(
            text.contains("sendense_chain_length{vm=\"we\\\\ird \\\"vm\\\"\\nname\"} 4\n"),
            "{text}"
        );
    }

    #[test]
    fn render_negative_timestamp_and_large_counts_are_plain_integers() {
        let mut snapshot = MetricsSnapshot {
            bytes_written_total: u64::MAX,
            repository_free_bytes: 7,
            ..MetricsSnapshot::default()
        };
        snapshot.last_success_timestamp.insert("vm1".into(), -5);
        snapshot
            .last_success_timestamp
            .insert("vm0".into(), 1_700_000_000);

        let text = snapshot.render();

        assert!(text.contains("\nsendense_backup_written_bytes 18446744073709551615\n"));
        assert!(text.contains("\nsendense_repository_free_bytes 7\n"));
        assert!(text.contains(
            "sendense_last_success_timestamp_seconds{vm=\"vm0\"} 1700000000\n\
             sendense_last_success_timestamp_seconds{vm=\"vm1\"} -5\n"
        ));
    }

    #[test]
    fn escape_help_escapes_backslash_and_newline_only() {
        assert_eq!(escape_help("a\\b\n\"c\""), "a\\\\b\\n\"c\"");
    }

    #[test]
    fn every_line_is_a_comment_or_a_well_formed_sample() {
        let mut snapshot = MetricsSnapshot::default();
        snapshot.backups_by_status.insert("completed".into(), 2);
        snapshot.chain_length.insert("a\"b".into(), 1);

        let text = snapshot.render();

        let (comments, samples): (Vec<&str>, Vec<&str>) =
            text.lines().partition(|l| l.starts_with('#'));
        assert!(
            comments
                .iter()
                .all(|l| l.starts_with("# HELP sendense_") || l.starts_with("# TYPE sendense_")),
            "{text}"
        );
        assert!(
            samples.iter().all(|l| l.starts_with("sendense_")
                && l.rsplit_once(' ')
                    .is_some_and(|(_, v)| v.parse::<i128>().is_ok())),
            "{text}"
        );
        assert_eq!(samples.len(), 6, "{text}");
    }
}
