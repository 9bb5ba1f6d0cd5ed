//! Progress of a transfer shown to a person: [`TerminalProgress`] draws indicatif bars (one
//! per disk and a total: bytes, rate, ETA) when stderr is a terminal, [`LogProgress`] writes a
//! `tracing` line per disk at most every few seconds otherwise. Both implement the transfer
//! engine's [`Progress`] trait; they must be cheap: the engine calls
//! [`Progress::advanced`] once per request.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Write};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
pub use sendense_transfer::progress::{DiskProgress, NoProgress, Progress, ProgressCounters};
use tracing::info;

/// Writes one `info` line per disk at most every `interval`, and one when it finishes.
#[derive(Debug)]
pub struct LogProgress {
    interval: Duration,
    counters: ProgressCounters,
    last: Mutex<BTreeMap<u32, Instant>>,
    started: Instant,
}

impl LogProgress {
    /// Logs at most every `interval` per disk.
    #[must_use]
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            counters: ProgressCounters::default(),
            last: Mutex::new(BTreeMap::new()),
            started: Instant::now(),
        }
    }

    fn log(&self, disk_key: u32) {
        let p = self
            .counters
            .snapshot()
            .get(&disk_key)
            .copied()
            .unwrap_or_default();
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        #[allow(clippy::cast_precision_loss)]
        let mb_per_s = p.done as f64 / secs / 1e6;
        info!(
            disk_key,
            done = p.done,
            total = p.total,
            mb_per_s = format!("{mb_per_s:.1}"),
            finished = p.finished,
            "transfer progress"
        );
    }
}

impl Progress for LogProgress {
    fn started(&self, disk_key: u32, total_bytes: u64) {
        self.counters.started(disk_key, total_bytes);
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(disk_key, Instant::now());
    }

    fn advanced(&self, disk_key: u32, bytes: u64) {
        self.counters.advanced(disk_key, bytes);
        let due = {
            let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
            let entry = last.entry(disk_key).or_insert_with(Instant::now);
            if entry.elapsed() >= self.interval {
                *entry = Instant::now();
                true
            } else {
                false
            }
        };
        if due {
            self.log(disk_key);
        }
    }

    fn finished(&self, disk_key: u32) {
        self.counters.finished(disk_key);
        self.log(disk_key);
    }
}

/// The one set of bars on stderr, shared with [`BarAwareStderr`].
static BARS: OnceLock<MultiProgress> = OnceLock::new();

fn bars() -> &'static MultiProgress {
    BARS.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
}

/// Standard error for log lines that hides the progress bars while a line is written, so logs
/// and bars do not garble each other. Give it to the `tracing` subscriber as its writer.
#[derive(Debug, Clone, Copy, Default)]
pub struct BarAwareStderr;

impl Write for BarAwareStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match BARS.get() {
            Some(multi) => multi.suspend(|| io::stderr().write_all(buf).map(|()| buf.len())),
            None => io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// indicatif bars on stderr: one per disk and one for the total.
pub struct TerminalProgress {
    multi: MultiProgress,
    total: ProgressBar,
    bars: Mutex<BTreeMap<u32, ProgressBar>>,
}

impl fmt::Debug for TerminalProgress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TerminalProgress").finish_non_exhaustive()
    }
}

impl Default for TerminalProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl TerminalProgress {
    /// Bars drawn on stderr.
    #[must_use]
    pub fn new() -> Self {
        let multi = bars().clone();
        let total = multi.add(ProgressBar::new(0));
        total.set_style(style());
        total.set_prefix("total");
        Self {
            multi,
            total,
            bars: Mutex::new(BTreeMap::new()),
        }
    }

    /// Removes the bars from the terminal.
    pub fn clear(&self) {
        for bar in self
            .bars
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
        {
            self.multi.remove(bar);
        }
        self.multi.remove(&self.total);
        let _ = self.multi.clear();
    }
}

/// Bar style: prefix, bar, bytes, rate, ETA.
fn style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{prefix:>10} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ")
}

impl Progress for TerminalProgress {
    fn started(&self, disk_key: u32, total_bytes: u64) {
        let bar = self
            .multi
            .insert_before(&self.total, ProgressBar::new(total_bytes));
        bar.set_style(style());
        bar.set_prefix(format!("disk {disk_key}"));
        self.total.inc_length(total_bytes);
        self.bars
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(disk_key, bar);
    }

    fn advanced(&self, disk_key: u32, bytes: u64) {
        if let Some(bar) = self
            .bars
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&disk_key)
        {
            bar.inc(bytes);
        }
        self.total.inc(bytes);
    }

    fn finished(&self, disk_key: u32) {
        if let Some(bar) = self
            .bars
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&disk_key)
        {
            bar.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_progress_hidden_target_accepts_updates() {
        let p = TerminalProgress::new();

        p.started(2000, 10);
        p.advanced(2000, 10);
        p.finished(2000);

        assert_eq!(p.total.position(), 10);
    }
}
