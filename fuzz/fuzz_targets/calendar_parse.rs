//! Fuzz target: the calendar-event parser of `sendense-calendar` (policy schedules).
//!
//! Anything may be refused; nothing may panic. An accepted event displays as text that parses
//! back to an equal event, and its next event after an instant taken from the input (in UTC and
//! in a zone with daylight saving time) is strictly later; in UTC it matches the event.
#![no_main]

use jiff::Timestamp;
use jiff::tz::TimeZone;
use libfuzzer_sys::fuzz_target;
use sendense_calendar::CalendarEvent;

fuzz_target!(|data: &[u8]| {
    let (seconds, text) = match data.split_first_chunk::<4>() {
        Some((head, rest)) => (i64::from(u32::from_le_bytes(*head)), rest),
        None => (0, data),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let Ok(event) = text.parse::<CalendarEvent>() else {
        return;
    };
    let shown = event.to_string();
    assert_eq!(
        shown.parse::<CalendarEvent>().as_ref(),
        Ok(&event),
        "{shown}"
    );

    // 1970..2106: the u32 seconds of the input's first bytes.
    let t = Timestamp::from_second(seconds).expect("in range");
    let utc = t.to_zoned(TimeZone::UTC);
    if let Some(next) = event.next_after(&utc) {
        assert!(next > utc);
        assert!(event.matches(next.datetime()));
    }
    let berlin = TimeZone::posix("CET-1CEST,M3.5.0,M10.5.0/3").expect("a valid POSIX TZ");
    let local = t.to_zoned(berlin);
    if let Some(next) = event.next_after(&local) {
        assert!(next > local);
    }
});
