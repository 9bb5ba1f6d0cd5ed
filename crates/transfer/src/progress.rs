//! Progress of a transfer: bytes done and total per disk.
//!
//! The engine reports through the [`Progress`] trait; what is shown is the caller's choice
//! (the client draws terminal bars or writes log lines, an agent reports to the hub).
//! [`NoProgress`] does nothing, [`ProgressCounters`] remembers. Implementations must be cheap: the engine
//! calls [`Progress::advanced`] once per request.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};

/// Receives progress from the transfer engine.
pub trait Progress: Send + Sync + fmt::Debug {
    /// A disk starts; `total_bytes` is what the plan will go through.
    fn started(&self, disk_key: u32, total_bytes: u64);
    /// `bytes` more of the disk's plan are done (sent, zeroed or skipped).
    fn advanced(&self, disk_key: u32, bytes: u64);
    /// The disk is done (flushed).
    fn finished(&self, disk_key: u32);
}

/// Shows nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn started(&self, _: u32, _: u64) {}
    fn advanced(&self, _: u32, _: u64) {}
    fn finished(&self, _: u32) {}
}

/// Bytes done and total of one disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DiskProgress {
    /// Bytes done.
    pub done: u64,
    /// Bytes planned.
    pub total: u64,
    /// Whether the disk finished.
    pub finished: bool,
}

/// Remembers progress per disk; [`Self::snapshot`] reads it (tests, callers that draw their own).
#[derive(Debug, Default)]
pub struct ProgressCounters {
    disks: Mutex<BTreeMap<u32, DiskProgress>>,
}

impl ProgressCounters {
    /// Per disk, ordered by key.
    #[must_use]
    pub fn snapshot(&self) -> BTreeMap<u32, DiskProgress> {
        self.disks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn update(&self, disk_key: u32, f: impl FnOnce(&mut DiskProgress)) {
        let mut disks = self.disks.lock().unwrap_or_else(PoisonError::into_inner);
        f(disks.entry(disk_key).or_default());
    }
}

impl Progress for ProgressCounters {
    fn started(&self, disk_key: u32, total_bytes: u64) {
        self.update(disk_key, |d| d.total = total_bytes);
    }

    fn advanced(&self, disk_key: u32, bytes: u64) {
        self.update(disk_key, |d| d.done = d.done.saturating_add(bytes));
    }

    fn finished(&self, disk_key: u32) {
        self.update(disk_key, |d| d.finished = true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_counters_accumulate_per_disk() {
        let p = ProgressCounters::default();
        p.started(2000, 100);
        p.started(2001, 50);

        p.advanced(2000, 30);
        p.advanced(2000, 20);
        p.finished(2001);

        let snap = p.snapshot();
        assert_eq!(
            snap[&2000],
            DiskProgress {
                done: 50,
                total: 100,
                finished: false
            }
        );
        assert_eq!(
            snap[&2001],
            DiskProgress {
                done: 0,
                total: 50,
                finished: true
            }
        );
    }
}
