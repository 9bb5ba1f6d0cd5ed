//! Properties of the prune over random point histories, retentions and time zones (with and
//! without daylight saving time).

use jiff::tz::{self, TimeZone};
use jiff::{Timestamp, ToSpan};
use proptest::prelude::*;
use sendense_prune::{Mark, Point, Rule, prune};
use sendense_types::Retention;

use crate::reference::reference_prune;

fn zones() -> impl Strategy<Value = TimeZone> {
    prop_oneof![
        Just(TimeZone::UTC),
        Just(TimeZone::fixed(tz::offset(-8))),
        Just(TimeZone::fixed(
            tz::Offset::from_seconds(5 * 3600 + 1800).unwrap()
        )),
        Just(TimeZone::posix("CET-1CEST,M3.5.0,M10.5.0/3").unwrap()),
        Just(TimeZone::posix("EST5EDT,M3.2.0,M11.1.0").unwrap()),
    ]
}

/// Points separated by gaps of minutes, days or weeks (so hours, days, weeks, months and years
/// hold several points or none), some protected, in no particular order.
fn histories() -> impl Strategy<Value = Vec<Point<u32>>> {
    let gap = prop_oneof![
        Just(0i64),
        0i64..3_600,
        0i64..3 * 86_400,
        0i64..40 * 86_400,
        0i64..200 * 86_400,
    ];
    (
        1_500_000_000i64..1_900_000_000,
        prop::collection::vec((gap, prop::bool::weighted(0.15)), 0..60),
        any::<u64>(),
    )
        .prop_map(|(start, steps, shuffle)| {
            let mut at = start;
            let mut points: Vec<Point<u32>> = steps
                .into_iter()
                .enumerate()
                .map(|(i, (gap, protected))| {
                    at += gap;
                    Point {
                        id: u32::try_from(i).unwrap(),
                        time: Timestamp::from_second(at).unwrap(),
                        protected,
                    }
                })
                .collect();
            if !points.is_empty() {
                let len = points.len();
                points.rotate_left(usize::try_from(shuffle % len as u64).unwrap());
            }
            points
        })
}

fn retentions() -> impl Strategy<Value = Retention> {
    let n = || prop::option::of(0u32..6);
    (n(), n(), n(), n(), n(), n()).prop_map(
        |(keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly)| Retention {
            keep_last,
            keep_hourly,
            keep_daily,
            keep_weekly,
            keep_monthly,
            keep_yearly,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn prune_matches_the_reference(points in histories(), retention in retentions(), zone in zones()) {
        let ours: Vec<(u32, Mark)> = prune(points.clone(), &retention, &zone)
            .into_iter()
            .map(|d| (d.id, d.mark))
            .collect();

        prop_assert_eq!(ours, reference_prune(&points, &retention, &zone));
    }

    #[test]
    fn prune_answers_each_point_once_newest_first_protected_kept(
        points in histories(), retention in retentions(), zone in zones()
    ) {
        let out = prune(points.clone(), &retention, &zone);

        prop_assert_eq!(out.len(), points.len());
        prop_assert!(out.windows(2).all(|w| (w[0].time, w[0].id) > (w[1].time, w[1].id)));
        for p in points.iter().filter(|p| p.protected) {
            let d = out.iter().find(|d| d.id == p.id).unwrap();
            prop_assert_eq!(d.mark, Mark::Protected);
        }
    }

    #[test]
    fn prune_each_option_keeps_at_most_its_count(
        points in histories(), retention in retentions(), zone in zones()
    ) {
        let out = prune(points, &retention, &zone);

        for rule in Rule::ALL {
            let kept = out.iter().filter(|d| d.mark == Mark::Keep(rule)).count();
            prop_assert!(kept <= rule.count(&retention).unwrap_or(0) as usize, "{:?} kept {}", rule, kept);
        }
    }

    #[test]
    fn prune_keep_last_alone_keeps_the_newest_unprotected(
        points in histories(), n in 1u32..8, zone in zones()
    ) {
        let retention = Retention { keep_last: Some(n), ..Retention::default() };

        let out = prune(points, &retention, &zone);

        let unprotected: Vec<Mark> = out.iter().map(|d| d.mark).filter(|m| *m != Mark::Protected).collect();
        let expect: Vec<Mark> = (0..unprotected.len())
            .map(|i| if i < n as usize { Mark::Keep(Rule::Last) } else { Mark::Remove })
            .collect();
        prop_assert_eq!(unprotected, expect);
    }

    #[test]
    fn prune_keep_daily_keeps_one_per_local_day(
        points in histories(), n in 1u32..8, zone in zones()
    ) {
        let retention = Retention { keep_daily: Some(n), ..Retention::default() };

        let out = prune(points, &retention, &zone);

        let days: Vec<jiff::civil::Date> = out
            .iter()
            .filter(|d| d.mark == Mark::Keep(Rule::Daily))
            .map(|d| zone.to_datetime(d.time).date())
            .collect();
        let mut distinct = days.clone();
        distinct.dedup();
        prop_assert_eq!(distinct, days);
    }
}

#[test]
fn prune_keeps_everything_when_a_day_has_one_point_and_daily_covers_them() {
    let start: Timestamp = "2024-03-01T12:00:00Z".parse().unwrap();
    let points: Vec<Point<u32>> = (0..10u32)
        .map(|i| Point {
            id: i,
            time: start.checked_add((i64::from(i) * 24).hours()).unwrap(),
            protected: false,
        })
        .collect();
    let retention = Retention {
        keep_daily: Some(10),
        ..Retention::default()
    };

    let out = prune(points, &retention, &TimeZone::UTC);

    assert!(out.iter().all(|d| d.mark == Mark::Keep(Rule::Daily)));
}
