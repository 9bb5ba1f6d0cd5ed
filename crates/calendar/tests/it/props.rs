//! Properties over generated events: every text of the grammar parses, the normalized display
//! parses back to the same event, and `next_after` is later, matching, and skips no event.

use jiff::civil::DateTime;
use jiff::tz::{Offset, TimeZone};
use jiff::{SignedDuration, Timestamp, Zoned};
use proptest::prelude::*;
use sendense_calendar::CalendarEvent;

use crate::support::berlin;

/// One comma item of a part whose numbers are below `bound`.
fn item(bound: u32) -> impl Strategy<Value = String> {
    prop_oneof![
        (0..bound).prop_map(|v| v.to_string()),
        (0..bound, 0..bound).prop_map(|(a, b)| format!("{}..{}", a.min(b), a.max(b))),
        (0..bound, 0..bound).prop_map(|(v, s)| format!("{v}/{s}")),
        (0..bound, 0..bound, 0..bound).prop_map(|(a, b, s)| format!(
            "{:02}..{}/{s}",
            a.min(b),
            a.max(b)
        )),
    ]
}

/// A part's list: `*`, `*/step` or a comma list.
fn list(bound: u32) -> impl Strategy<Value = String> {
    prop_oneof![
        2 => Just("*".to_owned()),
        1 => (1..bound).prop_map(|s| format!("*/{s}")),
        3 => prop::collection::vec(item(bound), 1..4).prop_map(|v| v.join(",")),
    ]
}

fn weekday_name() -> impl Strategy<Value = String> {
    const NAMES: [&str; 14] = [
        "mon",
        "tue",
        "wed",
        "thu",
        "fri",
        "sat",
        "sun",
        "Monday",
        "TUESDAY",
        "wednesday",
        "Thursday",
        "friday",
        "SATURDAY",
        "sunday",
    ];
    (0..NAMES.len()).prop_map(|i| NAMES[i].to_owned())
}

fn weekdays() -> impl Strategy<Value = String> {
    let range = (weekday_name(), proptest::option::of(weekday_name())).prop_map(|(a, b)| match b {
        Some(b) => format!("{a}..{b}"),
        None => a,
    });
    prop::collection::vec(range, 1..4).prop_map(|v| v.join(","))
}

fn date() -> impl Strategy<Value = String> {
    let years = prop_oneof![3 => Just("*".to_owned()), 1 => list(2200)];
    (proptest::option::of(years), list(13), list(32)).prop_map(|(y, m, d)| match y {
        Some(y) => format!("{y}-{m}-{d}"),
        None => format!("{m}-{d}"),
    })
}

fn time() -> impl Strategy<Value = String> {
    prop_oneof![
        list(60),
        (list(24), list(60)).prop_map(|(h, m)| format!("{h}:{m}")),
        (list(24), list(60), list(60)).prop_map(|(h, m, s)| format!("{h}:{m}:{s}")),
    ]
}

const SHORTCUTS: [&str; 10] = [
    "minutely",
    "hourly",
    "daily",
    "weekly",
    "monthly",
    "yearly",
    "annually",
    "quarterly",
    "semiannually",
    "semi-annually",
];

/// Any text of the grammar.
fn event_text() -> impl Strategy<Value = String> {
    let parts = (
        proptest::option::of(weekdays()),
        proptest::option::of(date()),
        proptest::option::of(time()),
    )
        .prop_filter("one part at least", |(w, d, t)| {
            w.is_some() || d.is_some() || t.is_some()
        })
        .prop_map(|(w, d, t)| {
            [w, d, t]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" ")
        });
    let body = prop_oneof![
        6 => parts,
        1 => (0..SHORTCUTS.len()).prop_map(|i| SHORTCUTS[i].to_owned()),
    ];
    (body, any::<bool>()).prop_map(|(b, utc)| if utc { format!("{b} UTC") } else { b })
}

/// Frequent events: weekdays and a time of hours and minutes, no date, second 0.
fn frequent_text() -> impl Strategy<Value = String> {
    (proptest::option::of(weekdays()), list(24), list(60)).prop_map(|(w, h, m)| match w {
        Some(w) => format!("{w} {h}:{m}"),
        None => format!("{h}:{m}"),
    })
}

/// An instant between 2000 and 2100 with a random sub-second part.
fn instant() -> impl Strategy<Value = Timestamp> {
    (946_684_800i64..4_102_444_800, 0i32..1_000_000_000)
        .prop_map(|(s, ns)| Timestamp::new(s, ns).expect("in range"))
}

/// Civil whole seconds strictly after `t` (in `t`'s zone, which has no transitions), at most
/// `limit` of them and before `end` if given.
fn seconds_between(t: &Zoned, end: Option<&Zoned>, limit: i64) -> impl Iterator<Item = DateTime> {
    let first = t
        .datetime()
        .with()
        .subsec_nanosecond(0)
        .build()
        .expect("valid");
    let end = end.map(Zoned::datetime);
    (1..=limit)
        .map(move |s| first + SignedDuration::from_secs(s))
        .take_while(move |dt| end.is_none_or(|e| *dt < e))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn generated_text_parses_and_its_display_parses_back_equal(text in event_text()) {
        let event: CalendarEvent = text.parse().map_err(|e| {
            TestCaseError::fail(format!("{text:?}: {e}"))
        })?;
        let shown = event.to_string();
        let back: CalendarEvent = shown.parse().map_err(|e| {
            TestCaseError::fail(format!("{shown:?}: {e}"))
        })?;

        prop_assert_eq!(&back, &event);
        prop_assert_eq!(back.to_string(), shown);
    }

    #[test]
    fn next_after_is_later_matching_and_no_second_in_between_matches(
        text in event_text(),
        t in instant(),
    ) {
        let event: CalendarEvent = text.parse().expect("generated texts parse");
        let t = t.to_zoned(TimeZone::UTC);

        let next = event.next_after(&t);

        if let Some(n) = &next {
            prop_assert!(*n > t);
            prop_assert!(event.matches(n.datetime()), "{} does not match {}", n, event);
        }
        let early = seconds_between(&t, next.as_ref(), 3 * 3600).find(|dt| event.matches(*dt));
        prop_assert_eq!(early, None, "an event before {:?}", next);
    }

    #[test]
    fn frequent_events_have_no_match_minute_by_minute_before_next(
        text in frequent_text(),
        t in instant(),
    ) {
        let event: CalendarEvent = text.parse().expect("generated texts parse");
        let t = t.to_zoned(TimeZone::UTC);

        let next = event.next_after(&t).expect("a time of day recurs every week");

        prop_assert!(next > t);
        prop_assert!(event.matches(next.datetime()));
        let start = t.datetime().with().second(0).subsec_nanosecond(0).build().expect("valid");
        let early = (1..=8 * 24 * 60)
            .map(|m| start + SignedDuration::from_mins(m))
            .take_while(|dt| *dt < next.datetime())
            .find(|dt| event.matches(*dt));
        prop_assert_eq!(early, None);
    }

    #[test]
    fn next_after_in_a_fixed_offset_zone_matches_its_civil_time(
        text in frequent_text(),
        t in instant(),
        offset_minutes in -720i32..=840,
    ) {
        let event: CalendarEvent = text.parse().expect("generated texts parse");
        let zone = TimeZone::fixed(Offset::from_seconds(offset_minutes * 60).expect("offset"));
        let t = t.to_zoned(zone.clone());

        let next = event.next_after(&t).expect("a time of day recurs every week");

        prop_assert!(next > t);
        prop_assert_eq!(next.time_zone(), &zone);
        prop_assert!(event.matches(next.datetime()));
    }

    #[test]
    fn next_after_in_a_dst_zone_is_later_and_matches_or_ends_a_gap(
        text in frequent_text(),
        t in instant(),
    ) {
        let event: CalendarEvent = text.parse().expect("generated texts parse");
        let zone = berlin();
        let t = t.to_zoned(zone.clone());

        let next = event.next_after(&t).expect("a time of day recurs every week");

        let before = zone.to_offset(next.timestamp() - SignedDuration::from_secs(1));
        prop_assert!(next > t);
        prop_assert!(
            event.matches(next.datetime()) || before != next.offset(),
            "{} neither matches {} nor ends a gap", next, event
        );
    }

    #[test]
    fn arbitrary_text_never_panics_and_accepted_text_round_trips(
        text in "[a-zA-Z0-9*/.,:\\- \t]{0,40}",
    ) {
        if let Ok(event) = text.parse::<CalendarEvent>() {
            prop_assert_eq!(event.to_string().parse::<CalendarEvent>(), Ok(event));
        }
    }
}
