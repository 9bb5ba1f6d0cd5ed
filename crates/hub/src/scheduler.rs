//! When policies run: the scheduler's decisions, free of I/O, and its minute tick.
//!
//! A policy's `schedule` is a calendar event ([`sendense_calendar`]) read in the hub's local
//! time zone. Each tick the hub asks [`decide`] for every enabled policy, with the policy's
//! last run (or its creation, if it never ran) and the current time:
//!
//! - the first schedule time after the last run is not yet reached: wait;
//! - it is reached: queue **one** run now, and record `now` as the last run. Slots missed
//!   while the hub was down (or busy) are therefore run once, at the first tick, not once per
//!   missed slot; the next run is the first schedule time after `now`.
//!
//! At most one run per policy and tick follows from this. Time comes from a [`Clock`], so tests
//! set it; the tick loop ([`run_ticks`]) waits on tokio's clock, which tests pause and advance.
//!
//! A failed job is queued again after `retry.delay_seconds`, at most `retry.count` times
//! ([`retry_at`]); a run releases at most `max_parallel` of its jobs at once ([`RunQueue`]).

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Zoned};
use sendense_calendar::CalendarEvent;
use sendense_types::Timestamp;
use sendense_types::jobs::RetryPolicy;

/// The scheduler's period: PBS checks its schedules once a minute too.
pub const TICK: Duration = Duration::from_secs(60);

/// Where the scheduler reads the time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current instant in the hub's time zone.
    fn now(&self) -> Zoned;
}

/// The system clock in the system's time zone (`TZ`, `/etc/localtime`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Zoned {
        Zoned::now()
    }
}

/// A clock that stands still until it is set or advanced: for tests.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<Zoned>>);

impl ManualClock {
    /// A clock showing `now`.
    #[must_use]
    pub fn new(now: Zoned) -> Self {
        Self(Arc::new(Mutex::new(now)))
    }

    /// Sets the time.
    pub fn set(&self, now: Zoned) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = now;
    }

    /// Moves the time forward by `by` (saturating at jiff's range).
    pub fn advance(&self, by: Duration) {
        let mut now = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let by = SignedDuration::try_from(by).unwrap_or(SignedDuration::MAX);
        if let Ok(later) = now.checked_add(by) {
            *now = later;
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Zoned {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// What to do with one policy at one tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Queue one run now and record `now` as its last run.
    Run {
        /// The schedule time that became due (earlier than now when runs were missed).
        due: Zoned,
        /// Whether a later schedule time had passed too (missed runs folded into this one).
        missed: bool,
        /// The first schedule time after now: the run after this one.
        next_run: Option<Zoned>,
    },
    /// Nothing to do before `next_run` (`None`: the schedule never fires again).
    Wait {
        /// The next schedule time.
        next_run: Option<Zoned>,
    },
}

/// The decision for a policy with `schedule`, that last ran at `since` (or was created then),
/// at `now`.
#[must_use]
pub fn decide(schedule: &CalendarEvent, since: &Zoned, now: &Zoned) -> Decision {
    match schedule.next_after(since) {
        Some(due) if due <= *now => {
            let missed = schedule.next_after(&due).is_some_and(|later| later <= *now);
            Decision::Run {
                due,
                missed,
                next_run: schedule.next_after(now),
            }
        }
        next_run => Decision::Wait { next_run },
    }
}

/// The `next_run` a policy's answer shows: `None` when disabled or when the schedule never
/// fires again; a time at or before `now` means a run is due at the next tick.
#[must_use]
pub fn next_run(schedule: &CalendarEvent, since: &Zoned, enabled: bool) -> Option<Zoned> {
    if !enabled {
        return None;
    }
    schedule.next_after(since)
}

/// `ts` in the zone `tz`.
#[must_use]
pub fn zoned(ts: Timestamp, tz: &TimeZone) -> Zoned {
    // Every `sendense_types::Timestamp` (1970..=9999) is a valid jiff timestamp.
    jiff::Timestamp::from_second(ts.unix_seconds())
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .to_zoned(tz.clone())
}

/// `z` as the API's timestamp (whole seconds, clamped to 1970..=9999).
#[must_use]
pub fn timestamp(z: &Zoned) -> Timestamp {
    let secs = z.timestamp().as_second();
    Timestamp::from_unix_seconds(secs).unwrap_or(if secs < 0 {
        Timestamp::EPOCH
    } else {
        Timestamp::MAX
    })
}

/// When to queue a failed job again: `delay_seconds` after `failed_at` if the attempt that
/// failed (1 for the scheduled run, 2 for its first retry, ...) is within `count` retries.
#[must_use]
pub fn retry_at(
    retry: RetryPolicy,
    failed_attempt: u32,
    failed_at: Timestamp,
) -> Option<Timestamp> {
    if failed_attempt == 0 || failed_attempt > retry.count {
        return None;
    }
    let delay = i64::try_from(retry.delay_seconds).unwrap_or(i64::MAX);
    Some(failed_at.saturating_add_seconds(delay))
}

/// The jobs of one policy run that wait for a free place: at most `max_parallel` run at once,
/// and never more than the hub has free places overall.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunQueue<T> {
    pending: VecDeque<T>,
}

impl<T> RunQueue<T> {
    /// A run of `items`, in order.
    pub fn new(items: impl IntoIterator<Item = T>) -> Self {
        Self {
            pending: items.into_iter().collect(),
        }
    }

    /// Items not yet released.
    #[must_use]
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether every item was released.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Takes the items to start now, given `running` items of this run and `free_global`
    /// free places of the hub: at most `max_parallel - running` and at most `free_global`.
    pub fn release(&mut self, running: usize, max_parallel: u32, free_global: usize) -> Vec<T> {
        let per_policy = usize::try_from(max_parallel)
            .unwrap_or(usize::MAX)
            .saturating_sub(running);
        let n = per_policy.min(free_global).min(self.pending.len());
        self.pending.drain(..n).collect()
    }
}

/// Calls `tick` once every `period` ([`TICK`] in the hub; the first call after one period) until `stop`
/// turns true or its sender is dropped. A tick that overruns delays the next one; ticks are
/// never bunched to catch up (the decisions catch up by themselves).
pub async fn run_ticks<F, Fut>(
    period: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
    mut tick: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let start = tokio::time::Instant::now() + period;
    let mut interval = tokio::time::interval_at(start, period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if *stop.borrow() {
            return;
        }
        tokio::select! {
            _ = interval.tick() => tick().await,
            changed = stop.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn utc(civil: &str) -> Zoned {
        civil
            .parse::<jiff::civil::DateTime>()
            .expect("civil time")
            .to_zoned(TimeZone::UTC)
            .expect("in range")
    }

    fn event(text: &str) -> CalendarEvent {
        text.parse().expect("a valid schedule")
    }

    #[test]
    fn decide_before_the_first_slot_waits_for_it() {
        let d = decide(
            &event("mon..fri 22:00"),
            &utc("2026-01-05T10:00:00"),
            &utc("2026-01-05T21:59:00"),
        );

        assert_eq!(
            d,
            Decision::Wait {
                next_run: Some(utc("2026-01-05T22:00:00"))
            }
        );
    }

    #[test]
    fn decide_at_a_due_slot_runs_once_and_names_the_next() {
        let d = decide(
            &event("mon..fri 22:00"),
            &utc("2026-01-05T10:00:00"),
            &utc("2026-01-05T22:00:30"),
        );

        assert_eq!(
            d,
            Decision::Run {
                due: utc("2026-01-05T22:00:00"),
                missed: false,
                next_run: Some(utc("2026-01-06T22:00:00")),
            }
        );
    }

    #[test]
    fn decide_after_downtime_runs_once_for_all_missed_slots() {
        // Last run Monday 22:00; the hub was down until Thursday 08:00: three slots missed.
        let schedule = event("mon..fri 22:00");
        let now = utc("2026-01-08T08:00:00");

        let first = decide(&schedule, &utc("2026-01-05T22:00:00"), &now);
        // The run is recorded at `now`: the next tick at the same time finds nothing due.
        let second = decide(&schedule, &now, &now);

        assert_eq!(
            (first, second),
            (
                Decision::Run {
                    due: utc("2026-01-06T22:00:00"),
                    missed: true,
                    next_run: Some(utc("2026-01-08T22:00:00")),
                },
                Decision::Wait {
                    next_run: Some(utc("2026-01-08T22:00:00"))
                }
            )
        );
    }

    #[test]
    fn decide_every_minute_over_an_hour_of_ticks_runs_once_per_minute() {
        // `*:0/1`, ticks 20 s after each minute, each run recorded at its tick.
        let schedule = event("*:0/1");
        let mut since = utc("2026-01-01T09:59:20");
        let mut runs = 0;
        for minute in 0..60 {
            let now = utc("2026-01-01T10:00:20") + SignedDuration::from_mins(minute);
            if let Decision::Run { .. } = decide(&schedule, &since, &now) {
                runs += 1;
                since = now;
            }
        }

        assert_eq!(runs, 60);
    }

    #[test]
    fn decide_for_a_schedule_that_never_fires_again_waits_forever() {
        let d = decide(
            &event("2020-01-01"),
            &utc("2026-01-01T00:00:00"),
            &utc("2026-01-02T00:00:00"),
        );

        assert_eq!(d, Decision::Wait { next_run: None });
    }

    #[test]
    fn next_run_of_a_disabled_policy_is_none() {
        let schedule = event("daily");
        let since = utc("2026-01-01T12:00:00");

        assert_eq!(
            (
                next_run(&schedule, &since, false),
                next_run(&schedule, &since, true)
            ),
            (None, Some(utc("2026-01-02T00:00:00")))
        );
    }

    #[test]
    fn zoned_and_timestamp_round_trip_in_a_local_zone() {
        let tz = TimeZone::fixed(jiff::tz::offset(2));
        let ts = Timestamp::from_unix_seconds(1_767_225_600).expect("valid");

        let z = zoned(ts, &tz);

        assert_eq!(
            (z.datetime().to_string(), timestamp(&z)),
            ("2026-01-01T02:00:00".to_owned(), ts)
        );
    }

    #[test]
    fn retry_at_within_count_is_delay_after_the_failure() {
        let retry = RetryPolicy {
            count: 2,
            delay_seconds: 600,
        };
        let failed = Timestamp::from_unix_seconds(1000).expect("valid");

        assert_eq!(
            [0, 1, 2, 3].map(|attempt| retry_at(retry, attempt, failed)),
            [
                None,
                Some(Timestamp::from_unix_seconds(1600).expect("valid")),
                Some(Timestamp::from_unix_seconds(1600).expect("valid")),
                None
            ]
        );
    }

    #[test]
    fn run_queue_releases_up_to_the_policy_and_global_limits() {
        let mut queue = RunQueue::new(["a", "b", "c", "d", "e"]);

        let first = queue.release(0, 2, 10);
        let while_full = queue.release(2, 2, 10);
        let one_done = queue.release(1, 2, 10);
        let hub_busy = queue.release(0, 2, 1);
        let rest = queue.release(0, 64, 10);

        assert_eq!(
            (
                first,
                while_full,
                one_done,
                hub_busy,
                rest,
                queue.is_empty()
            ),
            (
                vec!["a", "b"],
                vec![],
                vec!["c"],
                vec!["d"],
                vec!["e"],
                true
            )
        );
    }

    #[test]
    fn manual_clock_advances_only_when_told() {
        let clock = ManualClock::new(utc("2026-01-01T00:00:00"));
        let before = clock.now();

        clock.advance(Duration::from_secs(90));

        assert_eq!(
            (before, clock.now()),
            (utc("2026-01-01T00:00:00"), utc("2026-01-01T00:01:30"))
        );
    }

    /// Moves the paused tokio clock `n` periods forward, letting the tick loop run before the
    /// first step (so it starts its interval) and after each.
    async fn advance_ticks(n: u32) {
        let let_run = || async {
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
        };
        let_run().await;
        for _ in 0..n {
            tokio::time::advance(TICK).await;
            let_run().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn run_ticks_calls_once_per_period_until_stopped() {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let ticks = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&ticks);
        let task = tokio::spawn(run_ticks(TICK, stop_rx, move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async {}
        }));

        advance_ticks(3).await;
        let after_three = ticks.load(Ordering::SeqCst);
        stop_tx.send(true).expect("the loop listens");
        task.await.expect("the loop ends");
        advance_ticks(2).await;

        assert_eq!((after_three, ticks.load(Ordering::SeqCst)), (3, 3));
    }

    #[tokio::test(start_paused = true)]
    async fn run_ticks_drives_a_minute_schedule_on_a_controlled_clock() {
        // The hub's loop in miniature: each tick reads the clock, decides and records the run.
        let clock = ManualClock::new(utc("2026-01-01T10:00:05"));
        let schedule = event("*:0/1");
        let since = Arc::new(Mutex::new(clock.now()));
        let runs = Arc::new(AtomicU32::new(0));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (tick_clock, tick_since, tick_runs) =
            (clock.clone(), Arc::clone(&since), Arc::clone(&runs));
        let task = tokio::spawn(run_ticks(TICK, stop_rx, move || {
            tick_clock.advance(TICK);
            let now = tick_clock.now();
            let mut since = tick_since.lock().expect("not poisoned");
            if let Decision::Run { .. } = decide(&schedule, &since, &now) {
                tick_runs.fetch_add(1, Ordering::SeqCst);
                *since = now;
            }
            async {}
        }));

        advance_ticks(5).await;
        stop_tx.send(true).expect("the loop listens");
        task.await.expect("the loop ends");

        assert_eq!(runs.load(Ordering::SeqCst), 5);
    }
}
