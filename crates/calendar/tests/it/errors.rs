//! Texts that are not calendar events: each error names the bad part and its position.

use sendense_calendar::{CalendarError, CalendarEvent, Expected, MAX_ITEMS, MAX_LEN, Part};

fn error(text: &str) -> CalendarError {
    match text.parse::<CalendarEvent>() {
        Ok(e) => panic!("{text:?} must be refused, parsed as {e}"),
        Err(e) => e,
    }
}

fn syntax(position: usize, found: &str, expected: Expected) -> CalendarError {
    CalendarError::Syntax {
        position,
        found: found.to_owned(),
        expected,
    }
}

#[test]
fn syntax_errors_name_the_token_and_what_was_expected() {
    let cases = [
        ("foo", syntax(0, "foo", Expected::Weekday)),
        ("mon..xyz 22:00", syntax(5, "xyz", Expected::Weekday)),
        ("mon,", syntax(4, "end of input", Expected::Weekday)),
        ("mon-fri", syntax(3, "-fri", Expected::AfterWeekday)),
        ("mon..fri 22:00 extra", syntax(15, "extra", Expected::End)),
        ("12:00 ", syntax(5, "trailing white space", Expected::End)),
        ("12:", syntax(3, "end of input", Expected::Value)),
        ("1..x", syntax(3, "x", Expected::Number)),
        ("*:*/", syntax(4, "end of input", Expected::Number)),
        ("2026-01-01 x", syntax(11, "x", Expected::End)),
        (",", syntax(0, ",", Expected::Schedule)),
        ("UTC", syntax(0, "end of input", Expected::Schedule)),
        ("daily extra", syntax(0, "daily", Expected::Weekday)),
        ("Daily", syntax(0, "Daily", Expected::Weekday)),
        ("mön", syntax(1, "ö", Expected::Ascii)),
        (" mon", syntax(0, "leading white space", Expected::Schedule)),
    ];
    for (text, expected) in cases {
        assert_eq!(error(text), expected, "{text:?}");
    }
}

#[test]
fn out_of_range_numbers_name_the_part_and_its_bounds() {
    let range = |position, part, value, max| CalendarError::OutOfRange {
        position,
        part,
        value,
        min: 0,
        max,
    };
    let cases = [
        ("25:00", range(0, Part::Hour, 25, 23)),
        ("mon..fri 22:61", range(12, Part::Minute, 61, 59)),
        ("*:*:60", range(4, Part::Second, 60, 59)),
        ("2026-13-01", range(5, Part::Month, 13, 12)),
        ("13-01", range(0, Part::Month, 13, 12)),
        ("*-*-32", range(4, Part::Day, 32, 31)),
        ("2200-01-01", range(0, Part::Year, 2200, 2199)),
        ("*:0/60", range(4, Part::Minute, 60, 59)),
        ("1,2,99:00", range(4, Part::Hour, 99, 23)),
        (
            "99999999999999999999999:00",
            range(0, Part::Hour, u64::MAX, 23),
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(error(text), expected, "{text:?}");
    }
}

#[test]
fn reversed_range_and_zero_star_step_are_refused() {
    assert_eq!(
        (error("10..5:00"), error("*:*/0")),
        (
            CalendarError::ReversedRange {
                position: 0,
                part: Part::Hour,
                start: 10,
                end: 5,
            },
            CalendarError::ZeroStep {
                position: 4,
                part: Part::Minute,
            }
        )
    );
}

#[test]
fn empty_and_overlong_texts_are_refused() {
    let long = "1,".repeat(MAX_LEN) + "1";

    assert_eq!(
        (error(""), error("  \t"), error(&long)),
        (
            CalendarError::Empty,
            CalendarError::Empty,
            CalendarError::TooLong {
                len: long.len(),
                max: MAX_LEN,
            }
        )
    );
}

#[test]
fn error_message_points_at_the_bad_part() {
    let message = error("mon..fri 25:00").to_string();

    assert_eq!(
        message,
        "Bad schedule at position 9: hour value 25 is out of range 0..=23"
    );
}

#[test]
fn error_position_is_reported_for_token_errors_only() {
    assert_eq!(
        (error("mon..fri 25:00").position(), error("").position()),
        (Some(9), None)
    );
}

#[test]
fn more_list_items_than_the_limit_are_refused_at_the_first_extra_item() {
    let text = format!("*:{}", vec!["1"; MAX_ITEMS + 1].join(","));

    assert_eq!(
        error(&text),
        CalendarError::TooManyItems {
            position: 2 + 2 * MAX_ITEMS,
            max: MAX_ITEMS,
        }
    );
}
