//! Each job's log as the console shows it: every hub log event that names a job (a `job_id`
//! field: queued, handed out, retried, lease lapsed, cancelled, finished, failed at the hub...)
//! is kept in memory by a [`tracing`] layer, per job, and shown live on the job's page.
//!
//! Bounded: the last [`MAX_LINES`] lines of the last [`MAX_JOBS`] jobs that logged (the
//! oldest job's lines go first). Kept in memory only: after a hub restart a job's page shows
//! what its record says (queued, started, ended, its error) and the lines logged since.
//! What agents log stays on the appliance; its progress reaches the page through heartbeats.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};

use sendense_types::Timestamp;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Lines kept per job.
const MAX_LINES: usize = 200;
/// Jobs whose lines are kept.
const MAX_JOBS: usize = 2_000;
/// Longest line kept (longer ones are cut, on a character boundary).
const MAX_LINE_BYTES: usize = 2_048;

/// One line of a job's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// When it was logged.
    pub at: Timestamp,
    /// `info`, `warn`, `error`...
    pub level: &'static str,
    /// The message, then the event's other fields as `name=value`.
    pub text: String,
}

/// The kept lines, per job id.
#[derive(Debug, Default)]
pub struct JobLogs {
    inner: Mutex<Logs>,
}

#[derive(Debug, Default)]
struct Logs {
    lines: HashMap<String, VecDeque<LogLine>>,
    /// Job ids, oldest first logged first.
    order: VecDeque<String>,
}

impl JobLogs {
    /// Adds a line to `job`'s log.
    pub fn push(&self, job: &str, line: LogLine) {
        let mut logs = self.lock();
        if !logs.lines.contains_key(job) {
            if logs.order.len() >= MAX_JOBS
                && let Some(oldest) = logs.order.pop_front()
            {
                logs.lines.remove(&oldest);
            }
            logs.order.push_back(job.to_owned());
        }
        let lines = logs.lines.entry(job.to_owned()).or_default();
        if lines.len() >= MAX_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// `job`'s lines, oldest first.
    #[must_use]
    pub fn lines(&self, job: &str) -> Vec<LogLine> {
        self.lock()
            .lines
            .get(job)
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Logs> {
        // A poisoned lock only means a thread panicked mid-update of plain collections.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The process's job logs (what [`JobLogLayer`] fills and the job pages read).
pub fn job_logs() -> &'static JobLogs {
    static LOGS: OnceLock<JobLogs> = OnceLock::new();
    LOGS.get_or_init(JobLogs::default)
}

/// A [`tracing`] layer that keeps every event with a `job_id` field in [`job_logs`].
#[derive(Debug, Clone, Copy, Default)]
pub struct JobLogLayer;

impl<S: Subscriber> Layer<S> for JobLogLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut v = LineVisitor::default();
        event.record(&mut v);
        let Some(job) = v.job_id else { return };
        let level = match *event.metadata().level() {
            Level::ERROR => "error",
            Level::WARN => "warn",
            Level::INFO => "info",
            Level::DEBUG => "debug",
            Level::TRACE => "trace",
        };
        let mut text = v.message;
        if !v.fields.is_empty() {
            if !text.is_empty() {
                text.push_str(" · ");
            }
            text.push_str(&v.fields);
        }
        if text.len() > MAX_LINE_BYTES {
            let mut cut = MAX_LINE_BYTES;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push('…');
        }
        job_logs().push(
            &job,
            LogLine {
                at: Timestamp::now(),
                level,
                text,
            },
        );
    }
}

#[derive(Default)]
struct LineVisitor {
    job_id: Option<String>,
    message: String,
    fields: String,
}

impl Visit for LineVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record(field, format!("{value:?}"));
    }
}

impl LineVisitor {
    fn record(&mut self, field: &Field, value: String) {
        match field.name() {
            "job_id" => self.job_id = Some(value.trim_matches('"').to_owned()),
            "message" => self.message = value,
            name => {
                if !self.fields.is_empty() {
                    self.fields.push(' ');
                }
                let _ = write!(self.fields, "{name}={value}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[test]
    fn events_naming_a_job_are_kept_per_job_with_their_fields() {
        let subscriber = tracing_subscriber::registry().with(JobLogLayer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(job_id = %"job-test-1a", agent = "appliance-1", "job handed out");
            tracing::warn!(
                job_id = "job-test-1a",
                reason = "agent gone",
                "job lease lapsed"
            );
            tracing::info!(job_id = "job-test-1b", "backup job queued");
            tracing::info!("no job here");
        });

        let a = job_logs().lines("job-test-1a");
        let b = job_logs().lines("job-test-1b");

        assert_eq!(
            a.iter()
                .map(|l| (l.level, l.text.as_str()))
                .collect::<Vec<_>>(),
            [
                ("info", "job handed out · agent=appliance-1"),
                ("warn", "job lease lapsed · reason=agent gone"),
            ]
        );
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn a_job_keeps_its_last_lines_and_the_oldest_jobs_go_first() {
        let logs = JobLogs::default();
        let line = |n: usize| LogLine {
            at: Timestamp::now(),
            level: "info",
            text: format!("line {n}"),
        };
        for n in 0..MAX_LINES + 5 {
            logs.push("job-first", line(n));
        }
        let kept = logs.lines("job-first");
        for n in 0..MAX_JOBS {
            logs.push(&format!("job-{n}"), line(n));
        }

        assert_eq!(kept.len(), MAX_LINES);
        assert_eq!(kept[0].text, "line 5");
        assert!(logs.lines("job-first").is_empty(), "the oldest job went");
        assert_eq!(logs.lines(&format!("job-{}", MAX_JOBS - 1)).len(), 1);
    }
}
