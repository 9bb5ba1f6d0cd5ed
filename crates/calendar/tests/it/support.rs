//! Helpers: events, instants and civil times from text.

use jiff::Zoned;
use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use sendense_calendar::CalendarEvent;

/// Central European time with its EU daylight saving rules, without the system's tz database.
pub(crate) fn berlin() -> TimeZone {
    TimeZone::posix("CET-1CEST,M3.5.0,M10.5.0/3").expect("a valid POSIX TZ string")
}

pub(crate) fn event(text: &str) -> CalendarEvent {
    text.parse()
        .unwrap_or_else(|e| panic!("{text:?} must parse: {e}"))
}

/// `civil` (`2026-01-01T00:00:00`) in UTC.
pub(crate) fn utc(civil: &str) -> Zoned {
    at(civil, &TimeZone::UTC)
}

/// `civil` in `tz` (the earlier instant if ambiguous).
pub(crate) fn at(civil: &str, tz: &TimeZone) -> Zoned {
    let dt: DateTime = civil.parse().expect("a civil date-time");
    dt.to_zoned(tz.clone()).expect("in range")
}

/// The next event after `from` as civil time of `from`'s zone, `None` if there is none.
pub(crate) fn next_civil(text: &str, from: &Zoned) -> Option<String> {
    event(text)
        .next_after(from)
        .map(|z| z.datetime().to_string())
}

/// The first `n` events after `from` (civil times of `from`'s zone).
pub(crate) fn series(text: &str, from: &Zoned, n: usize) -> Vec<String> {
    let event = event(text);
    let mut out = Vec::with_capacity(n);
    let mut t = from.clone();
    for _ in 0..n {
        let Some(next) = event.next_after(&t) else {
            break;
        };
        out.push(next.datetime().to_string());
        t = next;
    }
    out
}
