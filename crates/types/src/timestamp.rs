//! UTC timestamps with one-second resolution, written as RFC 3339 (`2026-11-24T23:59:01Z`).
//!
//! The value is whole seconds since the Unix epoch, limited to years 1970..=9999 so every value
//! has exactly one four-digit-year rendering. Parsing accepts `Z` (or `z`) and `+00:00`, and an
//! optional fraction of a second, which is dropped; any other offset is refused, because every
//! time in the API is UTC. Calendar arithmetic is Howard Hinnant's `days_from_civil` /
//! `civil_from_days`, all on `i64` with values bounded by the year range, so nothing overflows.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{TypesError, echo};

/// Seconds since the epoch of 9999-12-31T23:59:59Z, the last representable instant.
const MAX_UNIX_SECONDS: i64 = 253_402_300_799;

/// An instant in UTC, whole seconds since 1970-01-01T00:00:00Z.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

/// A calendar date and time of day in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CivilTime {
    /// Year, 1970..=9999.
    pub year: i64,
    /// Month, 1..=12.
    pub month: u32,
    /// Day of month, 1..=31.
    pub day: u32,
    /// Hour, 0..=23.
    pub hour: u32,
    /// Minute, 0..=59.
    pub minute: u32,
    /// Second, 0..=59.
    pub second: u32,
}

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Self = Self(0);
    /// The last representable instant, 9999-12-31T23:59:59Z.
    pub const MAX: Self = Self(MAX_UNIX_SECONDS);

    /// The current time from the system clock, truncated to whole seconds (the epoch if the
    /// clock is before it).
    #[must_use]
    pub fn now() -> Self {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self(
            i64::try_from(secs)
                .unwrap_or(MAX_UNIX_SECONDS)
                .min(MAX_UNIX_SECONDS),
        )
    }

    /// A timestamp from seconds since the epoch.
    ///
    /// # Errors
    /// [`TypesError::InvalidTimestamp`] if `secs` is negative or after year 9999.
    pub fn from_unix_seconds(secs: i64) -> Result<Self, TypesError> {
        if (0..=MAX_UNIX_SECONDS).contains(&secs) {
            Ok(Self(secs))
        } else {
            Err(TypesError::InvalidTimestamp {
                value: secs.to_string(),
                reason: "outside 1970-01-01T00:00:00Z..=9999-12-31T23:59:59Z",
            })
        }
    }

    /// Seconds since the epoch.
    #[must_use]
    pub const fn unix_seconds(self) -> i64 {
        self.0
    }

    /// The calendar date and time of day.
    #[must_use]
    pub fn civil(self) -> CivilTime {
        let days = self.0.div_euclid(86_400);
        let secs_of_day = self.0.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        CivilTime {
            year,
            month,
            day,
            hour: small(secs_of_day / 3600),
            minute: small(secs_of_day % 3600 / 60),
            second: small(secs_of_day % 60),
        }
    }

    /// The compact form used inside backup ids: `yyyymmddThhmmss`.
    #[must_use]
    pub fn compact(self) -> String {
        let c = self.civil();
        format!(
            "{:04}{:02}{:02}T{:02}{:02}{:02}",
            c.year, c.month, c.day, c.hour, c.minute, c.second
        )
    }

    /// Parses the compact form `yyyymmddThhmmss` (see [`Timestamp::compact`]).
    ///
    /// # Errors
    /// [`TypesError::InvalidTimestamp`] if the text is not a valid compact UTC time.
    pub fn parse_compact(text: &str) -> Result<Self, TypesError> {
        let err = |reason| TypesError::InvalidTimestamp {
            value: echo(text),
            reason,
        };
        let b = text.as_bytes();
        if b.len() != 15 || b[8] != b'T' {
            return Err(err("expected yyyymmddThhmmss"));
        }
        let num = |range: std::ops::Range<usize>| digits(&b[range]).ok_or(err("expected digits"));
        from_fields(
            num(0..4)?,
            num(4..6)?,
            num(6..8)?,
            num(9..11)?,
            num(11..13)?,
            num(13..15)?,
        )
        .map_err(err)
    }

    /// Adds seconds, saturating at the representable range.
    #[must_use]
    pub fn saturating_add_seconds(self, secs: i64) -> Self {
        Self(self.0.saturating_add(secs).clamp(0, MAX_UNIX_SECONDS))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.civil();
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            c.year, c.month, c.day, c.hour, c.minute, c.second
        )
    }
}

impl FromStr for Timestamp {
    type Err = TypesError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |reason| TypesError::InvalidTimestamp {
            value: echo(text),
            reason,
        };
        let b = text.as_bytes();
        if b.len() < 20 || b.len() > 40 {
            return Err(err("expected yyyy-mm-ddThh:mm:ssZ"));
        }
        let seps_ok = b[4] == b'-'
            && b[7] == b'-'
            && (b[10] == b'T' || b[10] == b't')
            && b[13] == b':'
            && b[16] == b':';
        if !seps_ok {
            return Err(err("expected yyyy-mm-ddThh:mm:ssZ"));
        }
        let mut rest = &b[19..];
        if let Some(frac) = rest.strip_prefix(b".") {
            let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
            if n == 0 || n > 9 {
                return Err(err("fraction of a second must have 1 to 9 digits"));
            }
            rest = &frac[n..];
        }
        if rest != b"Z" && rest != b"z" && rest != b"+00:00" {
            return Err(err("offset must be Z (UTC)"));
        }
        let num = |range: std::ops::Range<usize>| digits(&b[range]).ok_or(err("expected digits"));
        from_fields(
            num(0..4)?,
            num(5..7)?,
            num(8..10)?,
            num(11..13)?,
            num(14..16)?,
            num(17..19)?,
        )
        .map_err(err)
    }
}

impl TryFrom<String> for Timestamp {
    type Error = TypesError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<Timestamp> for String {
    fn from(value: Timestamp) -> Self {
        value.to_string()
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Builds a timestamp from calendar fields, checking every range.
fn from_fields(
    year: i64,
    month: i64,
    day: i64,
    hour: i64,
    minute: i64,
    second: i64,
) -> Result<Timestamp, &'static str> {
    if !(1970..=9999).contains(&year) {
        return Err("year must be 1970..=9999");
    }
    if !(1..=12).contains(&month) {
        return Err("month must be 01..=12");
    }
    if day < 1 || day > days_in_month(year, month) {
        return Err("day does not exist in that month");
    }
    if hour > 23 || minute > 59 || second > 59 {
        return Err("time of day out of range");
    }
    let days = days_from_civil(year, month, day);
    Ok(Timestamp(
        days * 86_400 + hour * 3600 + minute * 60 + second,
    ))
}

/// Parses a run of ASCII digits (at most 4, so no overflow).
fn digits(b: &[u8]) -> Option<i64> {
    b.iter().try_fold(0i64, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
    })
}

/// Narrows a value already known to be small and non-negative.
fn small(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Hinnant).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Hinnant).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, small(month), small(day))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn timestamp_epoch_displays_rfc3339() {
        assert_eq!(Timestamp::EPOCH.to_string(), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn timestamp_known_instant_displays_rfc3339() {
        let t = Timestamp::from_unix_seconds(1_795_996_741).unwrap();

        assert_eq!(t.to_string(), "2026-11-29T23:59:01Z");
    }

    #[test]
    fn timestamp_leap_day_parses() {
        let t: Timestamp = "2028-02-29T12:00:00Z".parse().unwrap();

        assert_eq!(t.civil().day, 29);
    }

    #[test]
    fn timestamp_non_leap_feb_29_rejected() {
        assert!("2027-02-29T12:00:00Z".parse::<Timestamp>().is_err());
    }

    #[test]
    fn timestamp_fraction_and_offset_accepted() {
        let t: Timestamp = "2026-11-24T23:59:01.123456+00:00".parse().unwrap();

        assert_eq!(t.to_string(), "2026-11-24T23:59:01Z");
    }

    #[test]
    fn timestamp_non_utc_offset_rejected() {
        let err = "2026-11-24T23:59:01+01:00"
            .parse::<Timestamp>()
            .unwrap_err();

        assert!(err.to_string().contains("offset must be Z"));
    }

    #[test]
    fn timestamp_garbage_rejected() {
        assert!("2026-1x-24T23:59:01Z".parse::<Timestamp>().is_err());
    }

    #[test]
    fn timestamp_before_epoch_rejected() {
        assert!(Timestamp::from_unix_seconds(-1).is_err());
    }

    #[test]
    fn timestamp_compact_known_value_formats() {
        let t: Timestamp = "2026-11-24T23:59:01Z".parse().unwrap();

        assert_eq!(t.compact(), "20261124T235901");
    }

    proptest! {
        #[test]
        fn timestamp_display_parse_round_trips(secs in 0..=MAX_UNIX_SECONDS) {
            let t = Timestamp(secs);

            let back: Timestamp = t.to_string().parse().unwrap();

            prop_assert_eq!(back, t);
        }

        #[test]
        fn timestamp_compact_round_trips(secs in 0..=MAX_UNIX_SECONDS) {
            let t = Timestamp(secs);

            prop_assert_eq!(Timestamp::parse_compact(&t.compact()).unwrap(), t);
        }

        #[test]
        fn timestamp_arbitrary_text_never_panics(text in "\\PC{0,45}") {
            let _ = text.parse::<Timestamp>();
        }
    }
}
