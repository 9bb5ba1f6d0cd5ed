//! The examples of Proxmox Backup Server's documentation (docs/calendarevents.rst) and the
//! next-event cases of its `proxmox-time` tests, with their next events from fixed starts.

use jiff::Timestamp;
use jiff::tz::TimeZone;

use crate::support::{event, next_civil, series, utc};

/// Thursday, 2026-01-01 00:00:00 UTC: the start of the documentation examples.
const THU: &str = "2026-01-01T00:00:00";

#[test]
fn doc_examples_from_thursday_midnight_give_the_documented_next_event() {
    // (example, next event after THU), from the documentation's table of examples.
    let cases = [
        ("mon,tue,wed,thu,fri", "2026-01-02T00:00:00"),
        ("mon..fri", "2026-01-02T00:00:00"),
        ("sat,sun", "2026-01-03T00:00:00"),
        ("sat..sun", "2026-01-03T00:00:00"),
        ("mon,wed,fri", "2026-01-02T00:00:00"),
        ("12:05", "2026-01-01T12:05:00"),
        ("*:00/5", "2026-01-01T00:05:00"),
        ("0/1:0/5", "2026-01-01T00:05:00"),
        ("mon..wed *:30/10", "2026-01-05T00:30:00"),
        ("mon,tue,wed *:30/10", "2026-01-05T00:30:00"),
        ("mon..fri 8..17,22:0/15", "2026-01-01T08:00:00"),
        ("fri 12..13:5/20", "2026-01-02T12:05:00"),
        ("fri 12,13:5/20", "2026-01-02T12:05:00"),
        ("12,14,16,18,20,22:5", "2026-01-01T12:05:00"),
        ("12/2:5", "2026-01-01T12:05:00"),
        ("*:*", "2026-01-01T00:01:00"),
        ("0/1:0/1", "2026-01-01T00:01:00"),
        ("*-05", "2026-01-05T00:00:00"),
        ("Sat *-1..7 15:00", "2026-01-03T15:00:00"),
    ];
    for (text, expected) in cases {
        assert_eq!(
            next_civil(text, &utc(THU)).as_deref(),
            Some(expected),
            "{text}"
        );
    }
}

#[test]
fn doc_example_and_its_alternative_give_the_same_200_events() {
    let pairs = [
        ("mon,tue,wed,thu,fri", "mon..fri"),
        ("sat,sun", "sat..sun"),
        ("*:00/5", "0/1:0/5"),
        ("mon..wed *:30/10", "mon,tue,wed *:30/10"),
        ("fri 12..13:5/20", "fri 12,13:5/20"),
        ("12,14,16,18,20,22:5", "12/2:5"),
        ("*:*", "0/1:0/1"),
    ];
    for (example, alternative) in pairs {
        assert_eq!(
            series(example, &utc(THU), 200),
            series(alternative, &utc(THU), 200),
            "{example} vs {alternative}"
        );
    }
}

#[test]
fn friday_lunch_repetition_fires_at_the_six_documented_times() {
    // "Friday at 12:05, 12:25, 12:45, 13:05, 13:25 and 13:45"
    let got = series("fri 12..13:5/20", &utc(THU), 7);

    assert_eq!(
        got,
        [
            "2026-01-02T12:05:00",
            "2026-01-02T12:25:00",
            "2026-01-02T12:45:00",
            "2026-01-02T13:05:00",
            "2026-01-02T13:25:00",
            "2026-01-02T13:45:00",
            "2026-01-09T12:05:00",
        ]
    );
}

#[test]
fn working_day_quarter_hours_fire_44_times_on_thursday_then_friday_at_eight() {
    // "Every working day every 15 minutes between 8 AM and 6 PM and between 10 PM and 11 PM"
    let got = series("mon..fri 8..17,22:0/15", &utc(THU), 45);

    assert_eq!(
        (
            got.first().map(String::as_str),
            got.get(39).map(String::as_str),
            got.get(40).map(String::as_str),
            got.get(43).map(String::as_str),
            got.get(44).map(String::as_str),
        ),
        (
            Some("2026-01-01T08:00:00"),
            Some("2026-01-01T17:45:00"),
            Some("2026-01-01T22:00:00"),
            Some("2026-01-01T22:45:00"),
            Some("2026-01-02T08:00:00"),
        )
    );
}

#[test]
fn every_two_hours_from_noon_fires_six_times_a_day() {
    // "Every day starting at 12:05 until 22:05, every 2 hours"
    let got = series("12/2:5", &utc(THU), 7);

    assert_eq!(
        got,
        [
            "2026-01-01T12:05:00",
            "2026-01-01T14:05:00",
            "2026-01-01T16:05:00",
            "2026-01-01T18:05:00",
            "2026-01-01T20:05:00",
            "2026-01-01T22:05:00",
            "2026-01-02T12:05:00",
        ]
    );
}

#[test]
fn first_saturday_of_each_month_fires_in_each_month() {
    let got = series("Sat *-1..7 15:00", &utc(THU), 4);

    assert_eq!(
        got,
        [
            "2026-01-03T15:00:00",
            "2026-02-07T15:00:00",
            "2026-03-07T15:00:00",
            "2026-04-04T15:00:00",
        ]
    );
}

#[test]
fn fixed_date_fires_once_then_never() {
    let from = utc("2015-01-01T00:00:00");

    assert_eq!(
        (
            next_civil("2015-10-21", &from).as_deref(),
            next_civil("2015-10-21", &utc("2015-10-21T00:00:00")),
        ),
        (Some("2015-10-21T00:00:00"), None)
    );
}

#[test]
fn shortcuts_equal_their_documented_expansions() {
    let cases = [
        ("minutely", "*-*-* *:*:00"),
        ("hourly", "*-*-* *:00:00"),
        ("daily", "*-*-* 00:00:00"),
        ("weekly", "mon *-*-* 00:00:00"),
        ("monthly", "*-*-01 00:00:00"),
        ("yearly", "*-01-01 00:00:00"),
        ("annually", "*-01-01 00:00:00"),
        ("quarterly", "*-01,04,07,10-01 00:00:00"),
        ("semiannually", "*-01,07-01 00:00:00"),
        ("semi-annually", "*-01,07-01 00:00:00"),
    ];
    for (name, expansion) in cases {
        assert_eq!(event(name), event(expansion), "{name}");
    }
}

#[test]
fn omitted_parts_take_the_documented_defaults() {
    let cases = [
        ("mon", "mon *-*-* 00:00:00"),
        ("12:30", "*-*-* 12:30:00"),
        ("*:0/5", "*-*-* *:00/5:00"),
        ("*:0/15", "*-*-* *:*/15:00"),
        ("0/2:00", "*-*-* 00/2:00:00"),
        ("2020-01-01", "2020-01-01 00:00:00"),
        ("*-05", "*-*-05 00:00:00"),
        ("30", "*-*-* *:30:00"),
        ("*", "*-*-* *:*:00"),
    ];
    for (short, full) in cases {
        assert_eq!(event(short), event(full), "{short}");
    }
}

#[test]
fn display_writes_the_normalized_form() {
    let cases = [
        ("mon..fri 22:00", "mon..fri *-*-* 22:00:00"),
        ("daily", "*-*-* 00:00:00"),
        ("*:0/15", "*-*-* *:00/15:00"),
        ("*:*/15", "*-*-* *:00/15:00"),
        ("fri..mon", "mon,fri..sun *-*-* 00:00:00"),
        ("MONDAY,Wednesday 1..3/1:7", "mon,wed *-*-* 01..03/1:07:00"),
        ("2020-7..9-2/2 4..10/2:0", "2020-07..09-02/2 04..10/2:00:00"),
        ("quarterly UTC", "*-01,04,07,10-01 00:00:00 UTC"),
        ("*-*/2-1", "*-01/2-01 00:00:00"),
    ];
    for (text, shown) in cases {
        assert_eq!(event(text).to_string(), shown, "{text}");
    }
}

#[test]
fn weekday_names_are_read_in_any_case_and_long_form() {
    let names = [
        "mon",
        "MON",
        "monDay",
        "tue",
        "Tuesday",
        "wed",
        "wednesday",
        "thu",
        "thursday",
        "fri",
        "friday",
        "sat",
        "saturday",
        "sun",
        "sunday",
    ];
    let shown: Vec<String> = names.iter().map(|n| event(n).to_string()).collect();

    assert_eq!(
        shown,
        [
            "mon", "mon", "mon", "tue", "tue", "wed", "wed", "thu", "thu", "fri", "fri", "sat",
            "sat", "sun", "sun"
        ]
        .map(|d| format!("{d} *-*-* 00:00:00"))
    );
}

/// `proxmox-time`'s `test_compute_next_event`: epoch seconds in UTC.
#[test]
fn pbs_next_event_cases_give_pbs_results() {
    const MIN: i64 = 60;
    const HOUR: i64 = 3600;
    const DAY: i64 = 86_400;
    const THU_00: i64 = 0; // 1970-01-01, a Thursday
    const THU_15: i64 = 15 * HOUR;
    const JUL_31_2020: i64 = 1_596_153_600; // a Friday
    const DEC_31_2020: i64 = 1_609_372_800; // a Thursday
    let cases: &[(&str, i64, i64)] = &[
        ("0", THU_00, THU_00 + HOUR),
        ("*", THU_00, THU_00 + MIN),
        ("*:0", THU_00, THU_00 + HOUR),
        ("*:*", THU_00, THU_00 + MIN),
        ("*:*:*", THU_00, THU_00 + 1),
        ("*:3:5", THU_00, THU_00 + 3 * MIN + 5),
        ("mon *:*", THU_00, THU_00 + 4 * DAY),
        ("mon 2:*", THU_00, THU_00 + 4 * DAY + 2 * HOUR),
        ("mon 2:50", THU_00, THU_00 + 4 * DAY + 2 * HOUR + 50 * MIN),
        ("tue", THU_00, THU_00 + 5 * DAY),
        ("wed", THU_00, THU_00 + 6 * DAY),
        ("thu", THU_00, THU_00 + 7 * DAY),
        ("fri", THU_00, THU_00 + DAY),
        ("sat", THU_00, THU_00 + 2 * DAY),
        ("sun", THU_00, THU_00 + 3 * DAY),
        ("4..10/2:0", THU_00, THU_00 + 4 * HOUR),
        ("4..10/2:0", THU_00 + 5 * HOUR, THU_00 + 6 * HOUR),
        ("4..10/2:0", THU_00 + 11 * HOUR, THU_00 + DAY + 4 * HOUR),
        ("5,10:4,8", THU_00, THU_00 + 5 * HOUR + 4 * MIN),
        ("10,5:8,4", THU_00, THU_00 + 5 * HOUR + 4 * MIN),
        ("6,4..10:23,5/5", THU_00, THU_00 + 4 * HOUR + 5 * MIN),
        ("4..10,6:5/5,23", THU_00, THU_00 + 4 * HOUR + 5 * MIN),
        ("sat", JUL_31_2020, JUL_31_2020 + DAY),
        ("sun", JUL_31_2020, JUL_31_2020 + 2 * DAY),
        ("mon", JUL_31_2020, JUL_31_2020 + 3 * DAY),
        ("tue", JUL_31_2020, JUL_31_2020 + 4 * DAY),
        ("wed", JUL_31_2020, JUL_31_2020 + 5 * DAY),
        ("thu", JUL_31_2020, JUL_31_2020 + 6 * DAY),
        ("fri", JUL_31_2020, JUL_31_2020 + 7 * DAY),
        ("fri", DEC_31_2020, DEC_31_2020 + DAY),
        ("sat", DEC_31_2020, DEC_31_2020 + 2 * DAY),
        ("sun", DEC_31_2020, DEC_31_2020 + 3 * DAY),
        ("mon", DEC_31_2020, DEC_31_2020 + 4 * DAY),
        ("tue", DEC_31_2020, DEC_31_2020 + 5 * DAY),
        ("wed", DEC_31_2020, DEC_31_2020 + 6 * DAY),
        ("thu", DEC_31_2020, DEC_31_2020 + 7 * DAY),
        ("daily", THU_00, THU_00 + DAY),
        ("daily", THU_00 + 1, THU_00 + DAY),
        ("5/2:0", THU_00, THU_00 + 5 * HOUR),
        ("5/2:0", THU_00 + 5 * HOUR, THU_00 + 7 * HOUR),
        ("5/2:0", THU_00 + 7 * HOUR, THU_00 + 9 * HOUR),
        ("5/2:0", THU_00 + 9 * HOUR, THU_00 + 11 * HOUR),
        ("1:0", THU_15, THU_00 + DAY + HOUR),
        ("2020-07-31", 0, JUL_31_2020),
        ("02-28", 0, (31 + 27) * DAY),
        ("02-29", 0, 2 * 365 * DAY + (31 + 28) * DAY),
        ("1965/5-01-01", -1, THU_00),
        ("2020-7..9-2/2", JUL_31_2020, JUL_31_2020 + 2 * DAY),
        ("2020,2021-12-31", JUL_31_2020, DEC_31_2020),
        ("monthly", 0, 31 * DAY),
        ("quarterly", 0, (31 + 28 + 31) * DAY),
        ("semiannually", 0, (31 + 28 + 31 + 30 + 31 + 30) * DAY),
        ("yearly", 0, 365 * DAY),
    ];
    for &(text, last, expected) in cases {
        assert_eq!(
            next_epoch(text, last),
            Some(expected),
            "{text} after {last}"
        );
    }
}

#[test]
fn pbs_repeated_minute_and_hour_and_day_series_step_by_one_unit() {
    let minutes = series("*:*", &utc("1970-01-01T00:00:00"), 99);
    let hours = series("*:0", &utc("1970-01-01T00:00:00"), 99);
    let days = series("1:0", &utc("1970-01-01T15:00:00"), 99);

    assert_eq!(
        (minutes.last(), hours.last(), days.last()),
        (
            Some(&"1970-01-01T01:39:00".to_owned()),
            Some(&"1970-01-05T03:00:00".to_owned()),
            Some(&"1970-04-10T01:00:00".to_owned()),
        )
    );
}

#[test]
fn dates_that_never_exist_have_no_next_event() {
    assert_eq!(
        (
            next_epoch("2021-02-29", 0),
            next_epoch("02-30", 0),
            next_epoch("*-*-0", 0)
        ),
        (None, None, None)
    );
}

#[test]
fn utc_event_is_computed_in_utc_and_returned_in_the_callers_zone() {
    let from = crate::support::at("2026-01-01T00:00:00", &crate::support::berlin());

    let next = event("12:00 UTC").next_after(&from).expect("an event");

    assert_eq!(
        (
            next.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string(),
            next.time_zone() == from.time_zone()
        ),
        ("2026-01-01T13:00:00+01:00".to_owned(), true)
    );
}

fn next_epoch(text: &str, last: i64) -> Option<i64> {
    let from = Timestamp::from_second(last)
        .expect("in range")
        .to_zoned(TimeZone::UTC);
    event(text)
        .next_after(&from)
        .map(|z| z.timestamp().as_second())
}

#[test]
fn time_of_day_rolls_over_to_the_next_minute_hour_day_month_and_year() {
    let cases = [
        ("*:*:5", "2026-01-01T10:00:06", "2026-01-01T10:01:05"),
        ("*:5", "2026-01-01T10:06:00", "2026-01-01T11:05:00"),
        ("23:59:59", "2026-01-01T23:59:59", "2026-01-02T23:59:59"),
        ("*-*-31 12:00", "2026-04-01T00:00:00", "2026-05-31T12:00:00"),
        (
            "*-12-31 23:59:59",
            "2026-12-31T23:59:59",
            "2027-12-31T23:59:59",
        ),
        ("*:0/25:0/50", "2026-01-01T10:50:51", "2026-01-01T11:00:00"),
        ("fri *-*-13", "2026-01-01T00:00:00", "2026-02-13T00:00:00"),
        ("mon *-02-29", "2026-01-01T00:00:00", "2044-02-29T00:00:00"),
    ];
    for (text, from, expected) in cases {
        assert_eq!(
            next_civil(text, &utc(from)).as_deref(),
            Some(expected),
            "{text} after {from}"
        );
    }
}

#[test]
fn sub_second_start_gives_the_next_whole_second_event() {
    let from = "2026-01-01T10:00:00.5Z"
        .parse::<Timestamp>()
        .expect("a timestamp")
        .to_zoned(TimeZone::UTC);

    assert_eq!(
        next_civil("*:*:*", &from).as_deref(),
        Some("2026-01-01T10:00:01")
    );
}

/// Fuzz finding (calendar_parse): 104 one-digit minutes displayed two digits wide made the
/// normalized form longer than the input limit, so it did not parse back. Lists are now
/// bounded (`MAX_ITEMS`), and the longest normalized forms fit the input limit.
#[test]
fn display_of_the_largest_events_parses_back() {
    let minutes = format!("*:{}", vec!["4"; sendense_calendar::MAX_ITEMS].join(","));
    let full = |item: &str| vec![item; sendense_calendar::MAX_ITEMS].join(",");
    let years = format!(
        "mon,wed,fri,sun {}-{}-{} {}:{}:{} UTC",
        full("2199..2199/2199"),
        full("12..12/12"),
        full("31..31/31"),
        full("23..23/23"),
        full("59..59/59"),
        full("59..59/59"),
    );
    let shown = [event(&minutes).to_string(), event(&years).to_string()];
    let crash = "44,44,2,4,4,2,4,45,4,4,45,5,4,4,44,45,4,4,42,4,4,2,4,45,4,4,45,5,4,4,44,45";

    assert_eq!(
        shown.clone().map(|s| s
            .parse::<sendense_calendar::CalendarEvent>()
            .map(|e| e.to_string())),
        shown.map(Ok)
    );
    assert!(matches!(
        crash.parse::<sendense_calendar::CalendarEvent>(),
        Err(sendense_calendar::CalendarError::TooManyItems { .. })
    ));
}
