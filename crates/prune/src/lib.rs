//! Proxmox Backup Server's prune algorithm over restore points: which points a retention keeps,
//! which it removes, and why each kept point is kept.
//!
//! The options run in a fixed order: `keep_last`, `keep_hourly`, `keep_daily`, `keep_weekly`
//! (ISO 8601 weeks: Monday to Sunday, the ISO week-numbering year), `keep_monthly`,
//! `keep_yearly`. Periods are read in the hub's time zone (a local hour, day, week, month or
//! year; `keep_last`'s period is the point itself). Each option walks the points newest first:
//!
//! - a point an earlier option already decided (kept, or removed as an older point of a period
//!   that option kept) is passed over;
//! - a point whose period already holds a point kept by an earlier option is passed over, left
//!   undecided (a later option may still keep it);
//! - otherwise, the first point of a new period is kept, unless the option has kept its `N`
//!   periods already: then the option stops there; a further point of a period the option kept
//!   is removed.
//!
//! Points no option kept are removed. As in PBS:
//! - **protected** points are always kept and count for nothing: they take no place of an
//!   option, and their period is not thereby covered (the newest unprotected point of that
//!   period is still kept);
//! - an option set to 0 keeps nothing, and when **no option is above 0** every point is kept
//!   (an empty retention never removes anything).
//!
//! This follows `compute_prune_info` of PBS (`pbs-datastore/src/prune.rs`) step by step,
//! including its two less obvious consequences: an option's removals are final for the later
//! options, and a week that straddles two months can make `keep_monthly` keep an older point of
//! the earlier month (the newer point of that month having been removed by `keep_weekly`).
//! Points of equal time are ordered by id, greater first.

use std::collections::HashSet;

use jiff::Timestamp;
use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use sendense_types::Retention;

/// A restore point to judge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Point<Id> {
    /// Its id (ties of `time` are ordered by it, greater first).
    pub id: Id,
    /// When it was taken.
    pub time: Timestamp,
    /// Never removed; counts toward no option.
    pub protected: bool,
}

/// One retention option, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    /// `keep_last`: the newest N points.
    Last,
    /// `keep_hourly`: the newest point of each of N local hours.
    Hourly,
    /// `keep_daily`: the newest point of each of N local days.
    Daily,
    /// `keep_weekly`: the newest point of each of N ISO weeks.
    Weekly,
    /// `keep_monthly`: the newest point of each of N months.
    Monthly,
    /// `keep_yearly`: the newest point of each of N years.
    Yearly,
}

impl Rule {
    /// Every option, in the order they run.
    pub const ALL: [Self; 6] = [
        Self::Last,
        Self::Hourly,
        Self::Daily,
        Self::Weekly,
        Self::Monthly,
        Self::Yearly,
    ];

    /// How many periods this option keeps under `retention` (`None`: not set).
    #[must_use]
    pub fn count(self, retention: &Retention) -> Option<u32> {
        match self {
            Self::Last => retention.keep_last,
            Self::Hourly => retention.keep_hourly,
            Self::Daily => retention.keep_daily,
            Self::Weekly => retention.keep_weekly,
            Self::Monthly => retention.keep_monthly,
            Self::Yearly => retention.keep_yearly,
        }
    }

    /// The option's name as the API spells it (`keep_last`, ...).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Last => "keep_last",
            Self::Hourly => "keep_hourly",
            Self::Daily => "keep_daily",
            Self::Weekly => "keep_weekly",
            Self::Monthly => "keep_monthly",
            Self::Yearly => "keep_yearly",
        }
    }
}

/// What the prune decided for one point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mark {
    /// Kept because it is protected.
    Protected,
    /// Kept because no option is above 0 (nothing is pruned).
    KeepAll,
    /// Kept by this option.
    Keep(Rule),
    /// Removed.
    Remove,
}

impl Mark {
    /// Whether the point stays.
    #[must_use]
    pub fn is_kept(self) -> bool {
        self != Self::Remove
    }
}

/// A point with its mark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<Id> {
    /// The point's id.
    pub id: Id,
    /// When it was taken.
    pub time: Timestamp,
    /// Kept (and why) or removed.
    pub mark: Mark,
}

/// Whether `retention` removes anything at all: some option is above 0 (PBS's
/// `keeps_something`). When not, [`prune`] keeps every point.
#[must_use]
pub fn keeps_something(retention: &Retention) -> bool {
    Rule::ALL
        .iter()
        .any(|rule| rule.count(retention).is_some_and(|n| n > 0))
}

/// Judges `points` under `retention`, reading periods in `tz`; answers every point once,
/// newest first (see the module documentation).
#[must_use]
pub fn prune<Id: Ord>(
    mut points: Vec<Point<Id>>,
    retention: &Retention,
    tz: &TimeZone,
) -> Vec<Decision<Id>> {
    points.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| b.id.cmp(&a.id)));
    let marks = if keeps_something(retention) {
        let civil: Vec<DateTime> = points.iter().map(|p| tz.to_datetime(p.time)).collect();
        let protected: Vec<bool> = points.iter().map(|p| p.protected).collect();
        let mut marks: Vec<Option<Mark>> = vec![None; points.len()];
        for rule in Rule::ALL {
            if let Some(count) = rule.count(retention) {
                let count = usize::try_from(count).unwrap_or(usize::MAX);
                select(rule, count, &civil, &protected, &mut marks);
            }
        }
        marks
    } else {
        vec![Some(Mark::KeepAll); points.len()]
    };
    points
        .into_iter()
        .zip(marks)
        .map(|(point, mark)| Decision {
            mark: if point.protected {
                Mark::Protected
            } else {
                mark.unwrap_or(Mark::Remove)
            },
            id: point.id,
            time: point.time,
        })
        .collect()
}

/// One option's walk over the points (newest first), marking what it keeps and removes.
fn select(
    rule: Rule,
    count: usize,
    civil: &[DateTime],
    protected: &[bool],
    marks: &mut [Option<Mark>],
) {
    let covered: HashSet<Period> = marks
        .iter()
        .enumerate()
        .filter(|(_, m)| matches!(m, Some(Mark::Keep(_))))
        .map(|(i, _)| period(rule, i, &civil[i]))
        .collect();
    let mut kept: HashSet<Period> = HashSet::new();
    for (i, at) in civil.iter().enumerate() {
        if marks[i].is_some() {
            continue;
        }
        if protected[i] {
            marks[i] = Some(Mark::Protected);
            continue;
        }
        let p = period(rule, i, at);
        if covered.contains(&p) {
            continue;
        }
        if kept.contains(&p) {
            marks[i] = Some(Mark::Remove);
            continue;
        }
        if kept.len() >= count {
            break;
        }
        kept.insert(p);
        marks[i] = Some(Mark::Keep(rule));
    }
}

/// The period of a point under one option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Period {
    /// `keep_last`: the point itself (its place in the sorted list).
    Point(usize),
    /// A local calendar period: (year, month or ISO week, day, hour), unused parts 0.
    Civil(i16, i8, i8, i8),
}

fn period(rule: Rule, index: usize, at: &DateTime) -> Period {
    match rule {
        Rule::Last => Period::Point(index),
        Rule::Hourly => Period::Civil(at.year(), at.month(), at.day(), at.hour()),
        Rule::Daily => Period::Civil(at.year(), at.month(), at.day(), 0),
        Rule::Weekly => {
            let week = at.date().iso_week_date();
            Period::Civil(week.year(), week.week(), 0, 0)
        }
        Rule::Monthly => Period::Civil(at.year(), at.month(), 0, 0),
        Rule::Yearly => Period::Civil(at.year(), 0, 0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn point(id: u32, time: &str) -> Point<u32> {
        Point {
            id,
            time: at(time),
            protected: false,
        }
    }

    fn kept(decisions: &[Decision<u32>]) -> Vec<u32> {
        decisions
            .iter()
            .filter(|d| d.mark.is_kept())
            .map(|d| d.id)
            .collect()
    }

    #[test]
    fn prune_no_option_set_keeps_everything() {
        let points = vec![
            point(1, "2024-01-01T00:00:00Z"),
            point(2, "2024-01-02T00:00:00Z"),
        ];

        let out = prune(points, &Retention::default(), &TimeZone::UTC);

        assert_eq!(
            out.iter().map(|d| (d.id, d.mark)).collect::<Vec<_>>(),
            vec![(2, Mark::KeepAll), (1, Mark::KeepAll)]
        );
    }

    #[test]
    fn prune_only_zero_options_keeps_everything() {
        let retention = Retention {
            keep_last: Some(0),
            keep_daily: Some(0),
            ..Retention::default()
        };

        let out = prune(
            vec![point(1, "2024-01-01T00:00:00Z")],
            &retention,
            &TimeZone::UTC,
        );

        assert_eq!(out[0].mark, Mark::KeepAll);
    }

    #[test]
    fn prune_protected_point_takes_no_place_of_an_option() {
        let mut newest = point(3, "2024-01-03T00:00:00Z");
        newest.protected = true;
        let points = vec![
            newest,
            point(2, "2024-01-02T00:00:00Z"),
            point(1, "2024-01-01T00:00:00Z"),
        ];
        let retention = Retention {
            keep_last: Some(1),
            ..Retention::default()
        };

        let out = prune(points, &retention, &TimeZone::UTC);

        assert_eq!(
            out.iter().map(|d| (d.id, d.mark)).collect::<Vec<_>>(),
            vec![
                (3, Mark::Protected),
                (2, Mark::Keep(Rule::Last)),
                (1, Mark::Remove)
            ]
        );
    }

    #[test]
    fn prune_protected_point_does_not_cover_its_day() {
        let mut late = point(2, "2024-01-02T20:00:00Z");
        late.protected = true;
        let points = vec![late, point(1, "2024-01-02T08:00:00Z")];
        let retention = Retention {
            keep_daily: Some(1),
            ..Retention::default()
        };

        let out = prune(points, &retention, &TimeZone::UTC);

        assert_eq!(kept(&out), vec![2, 1]);
        assert_eq!(out[1].mark, Mark::Keep(Rule::Daily));
    }

    #[test]
    fn prune_days_are_local_to_the_time_zone() {
        // 23:30 UTC and 00:30 UTC are the same day at UTC-2 (21:30 and 22:30).
        let points = vec![
            point(1, "2024-01-01T23:30:00Z"),
            point(2, "2024-01-02T00:30:00Z"),
        ];
        let retention = Retention {
            keep_daily: Some(5),
            ..Retention::default()
        };
        let minus_two = TimeZone::fixed(jiff::tz::offset(-2));

        let utc = prune(points.clone(), &retention, &TimeZone::UTC);
        let local = prune(points, &retention, &minus_two);

        assert_eq!((kept(&utc), kept(&local)), (vec![2, 1], vec![2]));
    }

    #[test]
    fn prune_week_straddling_months_lets_monthly_keep_an_older_point() {
        // ISO week 5 of 2024 runs Mon Jan 29 to Sun Feb 4.
        let points = vec![
            point(3, "2024-02-01T12:00:00Z"),
            point(2, "2024-01-30T12:00:00Z"),
            point(1, "2024-01-10T12:00:00Z"),
        ];
        let retention = Retention {
            keep_weekly: Some(1),
            keep_monthly: Some(2),
            ..Retention::default()
        };

        let out = prune(points, &retention, &TimeZone::UTC);

        assert_eq!(
            out.iter().map(|d| (d.id, d.mark)).collect::<Vec<_>>(),
            vec![
                (3, Mark::Keep(Rule::Weekly)),
                (2, Mark::Remove),
                (1, Mark::Keep(Rule::Monthly))
            ]
        );
    }

    #[test]
    fn prune_equal_times_ordered_by_id() {
        let points = vec![
            point(1, "2024-01-01T00:00:00Z"),
            point(2, "2024-01-01T00:00:00Z"),
        ];
        let retention = Retention {
            keep_last: Some(1),
            ..Retention::default()
        };

        let out = prune(points, &retention, &TimeZone::UTC);

        assert_eq!(kept(&out), vec![2]);
    }
}
