//! Calendar events as Proxmox Backup Server writes schedules: `mon..fri 22:00`, `*:0/15`,
//! `sat *-1..7 15:00`, `daily`.
//!
//! Why a crate of our own: policies of the hub carry a `schedule` in exactly PBS's grammar (its
//! users know it, and PBS's documentation is our reference), and no maintained crate parses that
//! grammar.
//!
//! # Grammar
//!
//! Proxmox Backup Server's calendar events (crate `proxmox-time`, after systemd.time):
//!
//! ```text
//! event    = shortcut [" "* "UTC"] | [weekdays sp*] [date sp*] [time] [" "* "UTC"]
//! shortcut = minutely | hourly | daily | weekly | monthly | yearly | annually
//!          | quarterly | semiannually | semi-annually
//! weekdays = wrange ("," wrange)*         wrange = weekday [".." weekday]
//! date     = list "-" list ["-" list]     (YEARS-MONTHS-DAYS or MONTHS-DAYS)
//! time     = list [":" list [":" list]]   (MINUTES, HOURS:MINUTES or HOURS:MINUTES:SECONDS)
//! list     = "*" ["/" num] | item ("," item)*
//! item     = num [".." num] ["/" num]     (value, range, repetition start/step, a..b/step)
//! ```
//!
//! `sp` is a space or a tab; at least one of weekdays, date and time is present. Shortcut
//! names are lower case; weekday names (`mon`..`sun`, `monday`..`sunday`) are read in any
//! case, and a weekday range wraps around the week (`fri..mon`). Numbers are below their
//! part's bound: years 2200, months 13, days 32, hours 24, minutes and seconds 60; so is a
//! step. `*/n` repeats from the part's first value (0, or 1 for months and days).
//!
//! Omitted parts, as PBS: no weekday or date means every day (`12:30` is every day at 12:30);
//! no time means `00:00:00` (`mon` is `mon *-*-* 00:00:00`); a time without seconds means
//! second 0; a time of one list is minutes of every hour (`30`, `*`, `*/5`). The shortcuts
//! are `minutely` = `*-*-* *:*:00`, `hourly` = `*-*-* *:00:00`, `daily` = `*-*-* 00:00:00`,
//! `weekly` = `mon *-*-* 00:00:00`, `monthly` = `*-*-01 00:00:00`, `yearly`/`annually` =
//! `*-01-01 00:00:00`, `quarterly` = `*-01,04,07,10-01 00:00:00`, `semiannually` =
//! `*-01,07-01 00:00:00`. A trailing `UTC` evaluates the event in UTC instead of the
//! caller's time zone.
//!
//! The parser accepts the texts PBS accepts, with one deliberate difference: when the number
//! before the first `:` is not a valid hour, PBS silently re-reads the time as
//! `MINUTES:SECONDS` (`25:00` becomes minute 25 of every hour). The documented grammar is
//! `HOURS:MINUTES`, so here `25:00` is refused, naming the hour out of range.
//!
//! # API
//!
//! - [`CalendarEvent::parse`] (or [`str::parse`]) checks the text; a [`CalendarError`] names the
//!   position and token of the bad part and what was expected there.
//! - [`CalendarEvent::next_after`] gives the first event strictly after an instant, in that
//!   instant's time zone (see there for daylight saving time).
//! - [`Display`](std::fmt::Display) writes the normalized form, `mon..fri *-*-* 22:00:00`,
//!   which parses back to an equal event.
//!
//! Bounded work: texts longer than [`MAX_LEN`] bytes or with more than [`MAX_ITEMS`] items in
//! a list are refused, and the search for the next event
//! looks at most 400 years ahead (the Gregorian calendar repeats every 400 years, so an event
//! with no occurrence in that span has none at all).
#![forbid(unsafe_code)]

mod error;
mod parse;
mod search;
mod value;

use std::fmt;
use std::str::FromStr;

use jiff::civil::{DateTime, Weekday};

pub use error::{CalendarError, Expected, Part};
use value::ValueList;

/// Longest schedule text accepted, in bytes.
pub const MAX_LEN: usize = 2048;

/// Most comma items (numbers, ranges, repetitions) in one list. Display keeps each list's
/// items (an omitted part becomes one item), so with this bound the normalized form (a year
/// item takes at most 16 bytes, `2199..2199/2199,`, any other 10, `59..59/59,`; weekdays,
/// separators and `UTC` at most 25) stays within [`MAX_LEN`] and always parses back.
pub const MAX_ITEMS: usize = 30;

/// A parsed calendar event: the set of civil date-times (in a time zone) it matches.
///
/// Two events are equal when they were written with the same lists in the same order
/// (`5,10` and `10,5` differ although they match the same times); `parse(e.to_string()) == e`
/// holds for every event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct CalendarEvent {
    /// Evaluate in UTC instead of the caller's zone.
    utc: bool,
    weekdays: WeekdaySet,
    years: ValueList,
    months: ValueList,
    days: ValueList,
    hours: ValueList,
    minutes: ValueList,
    seconds: ValueList,
}

impl CalendarEvent {
    /// Parses a schedule text.
    ///
    /// # Errors
    /// [`CalendarError`] naming the bad part: its character position, the token and what was
    /// expected, a number out of its part's range, a reversed range, or a text that is empty or
    /// longer than [`MAX_LEN`].
    pub fn parse(text: &str) -> Result<Self, CalendarError> {
        parse::parse(text)
    }

    /// Whether the event is evaluated in UTC (written with a trailing `UTC`) rather than in the
    /// time zone of the instant given to [`next_after`](Self::next_after).
    #[must_use]
    pub fn is_utc(&self) -> bool {
        self.utc
    }

    /// Whether the civil date-time `dt` is one of the event's times (whole seconds only).
    #[must_use]
    pub fn matches(&self, dt: DateTime) -> bool {
        let Ok(year) = u32::try_from(dt.year()) else {
            return self.years.0.is_empty() && self.matches_below_year(dt);
        };
        self.years.contains(year) && self.matches_below_year(dt)
    }

    fn matches_below_year(&self, dt: DateTime) -> bool {
        dt.subsec_nanosecond() == 0
            && self.months.contains(unsigned(dt.month()))
            && self.days.contains(unsigned(dt.day()))
            && self.weekdays.contains(dt.weekday())
            && self.hours.contains(unsigned(dt.hour()))
            && self.minutes.contains(unsigned(dt.minute()))
            && self.seconds.contains(unsigned(dt.second()))
    }
}

impl FromStr for CalendarEvent {
    type Err = CalendarError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for CalendarEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.weekdays.is_empty() {
            write!(f, "{} ", self.weekdays)?;
        }
        write!(
            f,
            "{}-{}-{} {}:{}:{}",
            self.years, self.months, self.days, self.hours, self.minutes, self.seconds
        )?;
        if self.utc {
            f.write_str(" UTC")?;
        }
        Ok(())
    }
}

/// A civil field of jiff (month, day, hour, ...: never negative) as the lists' `u32`.
fn unsigned(v: i8) -> u32 {
    u32::from(v.unsigned_abs())
}

/// The weekdays an event matches; empty means every day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub(crate) struct WeekdaySet(u8);

impl WeekdaySet {
    pub(crate) const MONDAY: Self = Self(1);
    const NAMES: [&'static str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

    fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Adds the days from `start` to `end` (Monday-based indexes), wrapping past Sunday.
    pub(crate) fn with_range(self, start: u8, end: u8) -> Self {
        let mut bits = self.0;
        let mut day = start % 7;
        loop {
            bits |= 1 << day;
            if day == end % 7 {
                return Self(bits);
            }
            day = (day + 1) % 7;
        }
    }

    pub(crate) fn contains(self, day: Weekday) -> bool {
        let index = day.to_monday_zero_offset().unsigned_abs();
        self.is_empty() || self.0 & (1 << index) != 0
    }
}

impl fmt::Display for WeekdaySet {
    /// Runs of days as ranges, Monday first: `mon..wed,fri`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let has = |d: usize| self.0 & (1 << d) != 0;
        let mut first = true;
        let mut d = 0;
        while d < 7 {
            if !has(d) {
                d += 1;
                continue;
            }
            let start = d;
            while d + 1 < 7 && has(d + 1) {
                d += 1;
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            f.write_str(Self::NAMES[start])?;
            if d > start {
                write!(f, "..{}", Self::NAMES[d])?;
            }
            d += 1;
        }
        Ok(())
    }
}
