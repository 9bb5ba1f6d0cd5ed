//! Charts as inline SVG rendered on the server: no chart library, no script, nothing to load.
//! Sizes are SVG attributes (the page's CSP allows no inline style).

use maud::{Markup, html};
use sendense_types::{Job, JobStatus, Timestamp};

use super::view::bytes;

/// Hours in the throughput chart.
const HOURS: usize = 24;

/// A horizontal meter of `percent` used.
pub(super) fn meter(percent: u64) -> Markup {
    let width = percent.min(100);
    let class = if width >= 90 { "bar failed" } else { "bar" };
    html! {
        svg class=(class) viewBox="0 0 100 8" preserveAspectRatio="none" role="meter"
            aria-valuemin="0" aria-valuemax="100" aria-valuenow=(width)
            aria-label={ (width) "% of the file system used" } {
            rect.track width="100" height="8" {}
            rect.fill width=(width) height="8" {}
        }
    }
}

/// Bytes moved per hour over the last 24 hours: each job that ended (completed or failed) in
/// an hour counts its bytes done there. A bar chart with the busiest hour's figure.
pub(super) fn throughput(jobs: &[Job], now: Timestamp) -> Markup {
    let buckets = hourly_bytes(jobs, now);
    let max = buckets.iter().copied().max().unwrap_or(0);
    let total: u64 = buckets.iter().fold(0u64, |a, b| a.saturating_add(*b));
    let (w, h, pad) = (720u64, 160u64, 20u64);
    let slot = (w - 2 * pad) / HOURS as u64;
    html! {
        svg.chart viewBox={ "0 0 " (w) " " (h + 2 * pad) } role="img"
            aria-label={ "Data moved per hour over the last 24 hours: " (bytes(total)) " in all, at most " (bytes(max)) " in one hour" } {
            line.axis x1=(pad) y1=(h + pad) x2=(w - pad) y2=(h + pad) {}
            @for (i, value) in buckets.iter().enumerate() {
                @let height = (value.saturating_mul(h)).checked_div(max).unwrap_or(0);
                @let x = pad + i as u64 * slot + 2;
                rect.col x=(x) y=(h + pad - height) width=(slot - 4) height=(height) {
                    title { (24 - i) " h ago: " (bytes(*value)) }
                }
            }
            text x=(pad) y=(pad - 6) { "max " (bytes(max)) " per hour" }
            text x=(pad) y=(h + 2 * pad - 4) { "24 h ago" }
            text x=(w - pad) y=(h + 2 * pad - 4) text-anchor="end" { "now" }
        }
    }
}

/// Bytes done of the jobs that ended in each of the last 24 hours, oldest hour first.
fn hourly_bytes(jobs: &[Job], now: Timestamp) -> [u64; HOURS] {
    let mut out = [0u64; HOURS];
    let now = now.unix_seconds();
    for job in jobs {
        if !matches!(job.status, JobStatus::Completed | JobStatus::Failed) {
            continue;
        }
        let Some(end) = job.finished_at.map(Timestamp::unix_seconds) else {
            continue;
        };
        let Some(ago) = now.checked_sub(end).filter(|a| *a >= 0) else {
            continue;
        };
        let Ok(hour) = usize::try_from(ago / 3600) else {
            continue;
        };
        if let Some(slot) = HOURS.checked_sub(hour + 1) {
            out[slot] = out[slot].saturating_add(job.progress.bytes_done);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(status: JobStatus, finished: i64, done: u64) -> Job {
        // Built from JSON, as the API answers it, so that new optional fields need no change.
        serde_json::from_value(serde_json::json!({
            "job_id": "job-0000000000000001", "kind": "backup", "vm_name": null,
            "status": status.as_str(), "backup_id": null, "agent": null,
            "progress": {"bytes_done": done, "bytes_total": done, "mb_per_s": 0.0, "eta_seconds": null},
            "error": null, "queued_at": "1970-01-01T00:00:00Z", "started_at": null,
            "finished_at": Timestamp::from_unix_seconds(finished).unwrap(),
        }))
        .unwrap()
    }

    #[test]
    fn hourly_bytes_puts_each_ended_job_in_its_hour() {
        let now = Timestamp::from_unix_seconds(100 * 3600).unwrap();
        let jobs = [
            job(JobStatus::Completed, 100 * 3600 - 10, 5),
            job(JobStatus::Failed, 99 * 3600 - 10, 7),
            job(JobStatus::Cancelled, 100 * 3600 - 10, 1000),
            job(JobStatus::Completed, 50 * 3600, 1000),
        ];

        let buckets = hourly_bytes(&jobs, now);

        assert_eq!(buckets[23], 5);
        assert_eq!(buckets[22], 7);
        assert_eq!(buckets.iter().sum::<u64>(), 12);
    }
}
