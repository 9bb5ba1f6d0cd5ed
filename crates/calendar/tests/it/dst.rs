//! Daylight saving time (Central European rules, 2026: clocks jump 02:00 -> 03:00 on March 29
//! and fall back 03:00 -> 02:00 on October 25): skipped civil times fire at the end of the gap,
//! repeated civil times fire once, at their first occurrence.

use crate::support::{at, berlin, event};

/// The next events after `from` (Berlin civil time), as RFC 3339 instants with offsets.
fn series_berlin(text: &str, from: &str, n: usize) -> Vec<String> {
    let event = event(text);
    let mut t = at(from, &berlin());
    let mut out = Vec::new();
    for _ in 0..n {
        let next = event.next_after(&t).expect("an event");
        out.push(next.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string());
        t = next;
    }
    out
}

#[test]
fn daily_time_in_the_spring_gap_fires_at_the_end_of_the_gap() {
    let got = series_berlin("02:30", "2026-03-28T12:00:00", 3);

    assert_eq!(
        got,
        [
            "2026-03-29T03:00:00+02:00",
            "2026-03-30T02:30:00+02:00",
            "2026-03-31T02:30:00+02:00",
        ]
    );
}

#[test]
fn quarter_hours_in_the_spring_gap_fire_once_at_its_end() {
    let got = series_berlin("*:0/15", "2026-03-29T01:40:00", 4);

    assert_eq!(
        got,
        [
            "2026-03-29T01:45:00+01:00",
            "2026-03-29T03:00:00+02:00",
            "2026-03-29T03:15:00+02:00",
            "2026-03-29T03:30:00+02:00",
        ]
    );
}

#[test]
fn daily_time_in_the_autumn_fold_fires_once_at_the_first_pass() {
    let got = series_berlin("02:30", "2026-10-24T12:00:00", 2);

    assert_eq!(
        got,
        ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]
    );
}

#[test]
fn hourly_in_the_autumn_fold_skips_the_repeated_hour() {
    let got = series_berlin("hourly", "2026-10-25T01:30:00", 3);

    assert_eq!(
        got,
        [
            "2026-10-25T02:00:00+02:00",
            "2026-10-25T03:00:00+01:00",
            "2026-10-25T04:00:00+01:00",
        ]
    );
}

#[test]
fn start_in_the_second_pass_of_the_fold_gives_the_first_event_after_the_fold() {
    // 02:10 CET, the second pass: 02:15..02:45 already fired in the first pass (CEST).
    let from = "2026-10-25T01:10:00Z"
        .parse::<jiff::Timestamp>()
        .expect("a timestamp")
        .to_zoned(berlin());

    let next = event("*:0/15").next_after(&from).expect("an event");

    assert_eq!(
        (
            from.strftime("%H:%M%:z").to_string(),
            next.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
        ),
        (
            "02:10+01:00".to_owned(),
            "2026-10-25T03:00:00+01:00".to_owned()
        )
    );
}

#[test]
fn next_events_across_a_year_of_transitions_strictly_increase() {
    let event = event("*:0/20");
    let mut t = at("2026-01-01T00:00:00", &berlin());
    let mut count = 0u32;
    let end = at("2027-01-01T00:00:00", &berlin());
    while t < end {
        let next = event.next_after(&t).expect("an event");
        assert!(next > t, "{next} after {t}");
        t = next;
        count += 1;
    }
    // 365 days of 72 civil times, each firing once; in the spring gap 02:00, 02:20 and 02:40
    // fire together with 03:00 at the gap's end: three instants fewer.
    assert_eq!(count, 365 * 72 - 3);
}
