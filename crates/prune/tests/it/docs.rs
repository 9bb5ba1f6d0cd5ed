//! The worked examples of the Proxmox Backup Server documentation, each checked against both
//! the algorithm and the reference.

use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use sendense_prune::{Mark, Point, Rule, prune};
use sendense_types::Retention;

use crate::reference::reference_prune;

fn point(id: u32, time: &str) -> Point<u32> {
    Point {
        id,
        time: time.parse().unwrap(),
        protected: false,
    }
}

fn marks(points: &[Point<u32>], retention: &Retention) -> Vec<(u32, Mark)> {
    let ours: Vec<(u32, Mark)> = prune(points.to_vec(), retention, &TimeZone::UTC)
        .into_iter()
        .map(|d| (d.id, d.mark))
        .collect();
    assert_eq!(
        ours,
        reference_prune(points, retention, &TimeZone::UTC),
        "the reference disagrees"
    );
    ours
}

/// `proxmox-backup-client prune host/elsa --dry-run --keep-daily 1 --keep-weekly 3`
/// (backup-client documentation, "Pruning and Removing Backups").
#[test]
fn docs_dry_run_keep_daily_1_keep_weekly_3() {
    let points = [
        point(5, "2019-12-04T13:20:37Z"),
        point(4, "2019-12-03T09:35:01Z"),
        point(3, "2019-11-22T11:54:47Z"),
        point(2, "2019-11-21T12:36:25Z"),
        point(1, "2019-11-10T10:42:20Z"),
    ];
    let retention = Retention {
        keep_daily: Some(1),
        keep_weekly: Some(3),
        ..Retention::default()
    };

    let out = marks(&points, &retention);

    assert_eq!(
        out,
        vec![
            (5, Mark::Keep(Rule::Daily)),
            (4, Mark::Remove),
            (3, Mark::Keep(Rule::Weekly)),
            (2, Mark::Remove),
            (1, Mark::Keep(Rule::Weekly)),
        ]
    );
}

/// "Retention Settings Example" (maintenance documentation): daily backups, keep-last 3,
/// keep-daily 13, keep-weekly 8, keep-monthly 11, keep-yearly 9: "at least two weeks of
/// backups", "at least two full months of weekly backups", "at least a year of monthly
/// backups", "a total of at least 10 years of coverage".
#[test]
fn docs_retention_settings_example_daily_backups_over_eleven_years() {
    let newest: Timestamp = "2030-06-15T21:00:00Z".parse().unwrap();
    let points: Vec<Point<u32>> = (0..11 * 366)
        .map(|day: u32| Point {
            id: 100_000 - day,
            time: newest.checked_sub((i64::from(day) * 24).hours()).unwrap(),
            protected: false,
        })
        .collect();
    let retention = Retention {
        keep_last: Some(3),
        keep_daily: Some(13),
        keep_weekly: Some(8),
        keep_monthly: Some(11),
        keep_yearly: Some(9),
        ..Retention::default()
    };

    let out = marks(&points, &retention);

    let count = |rule| out.iter().filter(|(_, m)| *m == Mark::Keep(rule)).count();
    assert_eq!(
        [
            count(Rule::Last),
            count(Rule::Daily),
            count(Rule::Weekly),
            count(Rule::Monthly),
            count(Rule::Yearly)
        ],
        [3, 13, 8, 11, 9]
    );
    // Two weeks of daily backups: the newest 16 days are all kept.
    assert!(out[..16].iter().all(|(_, m)| m.is_kept()));
    // Ten years of coverage: the oldest kept point is more than nine years old.
    let oldest_kept = out.iter().rev().find(|(_, m)| m.is_kept()).unwrap().0;
    let age_days = 100_000 - oldest_kept;
    assert!(age_days > 9 * 365, "oldest kept is {age_days} days old");
}

/// The option descriptions: "If there is more than one backup for a single hour, only the
/// latest is kept" (keep-hourly), and keep-last counts backups, not periods.
#[test]
fn docs_keep_hourly_keeps_the_latest_of_each_hour() {
    let points = [
        point(6, "2019-11-15T11:59:15Z"),
        point(5, "2019-11-15T11:49:15Z"),
        point(4, "2019-11-15T11:39:15Z"),
        point(3, "2019-11-15T10:59:15Z"),
        point(2, "2019-11-15T10:49:15Z"),
        point(1, "2019-11-15T09:39:15Z"),
    ];
    let hourly = Retention {
        keep_hourly: Some(2),
        ..Retention::default()
    };
    let last = Retention {
        keep_last: Some(2),
        ..Retention::default()
    };

    let by_hour = marks(&points, &hourly);
    let by_count = marks(&points, &last);

    let kept = |out: &[(u32, Mark)]| {
        out.iter()
            .filter(|(_, m)| m.is_kept())
            .map(|(id, _)| *id)
            .collect::<Vec<_>>()
    };
    assert_eq!((kept(&by_hour), kept(&by_count)), (vec![6, 3], vec![6, 5]));
}

/// "Weeks start on Monday and end on Sunday. The software uses the ISO week date system and
/// handles weeks at the end of the year correctly": 2020-12-31 and 2021-01-03 are both in ISO
/// week 53 of 2020.
#[test]
fn docs_iso_weeks_span_the_new_year() {
    let points = [
        point(3, "2021-01-03T12:00:00Z"),
        point(2, "2020-12-31T12:00:00Z"),
        point(1, "2020-12-27T12:00:00Z"),
    ];
    let retention = Retention {
        keep_weekly: Some(2),
        ..Retention::default()
    };

    let out = marks(&points, &retention);

    assert_eq!(
        out,
        vec![
            (3, Mark::Keep(Rule::Weekly)),
            (2, Mark::Remove),
            (1, Mark::Keep(Rule::Weekly)),
        ]
    );
}
