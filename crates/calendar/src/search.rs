//! The next event after an instant, in a time zone.
//!
//! An event is a set of civil date-times. The search walks civil time forward field by field
//! (year, month, day and weekday, then the time of day), jumping straight to the next value each
//! list allows, and maps the civil result to an instant with [`instant_of`]:
//!
//! - a civil time that exists once is that instant;
//! - a civil time that exists twice (a fold: clocks go back, `02:30` happens twice) is its
//!   first occurrence; the repeated hour's second pass matches nothing, so `02:30` daily runs
//!   once on that day and `hourly` has one two-hour interval;
//! - a civil time that does not exist (a gap: clocks jump from `02:00` to `03:00`) fires at the
//!   first instant after the gap (`03:00` new time), so a daily `02:30` still runs that day, and
//!   several events inside one gap fire once, together.
//!
//! This mapping never goes backwards in time, so "the first matching civil time whose instant is
//! after `t`" is the first event after `t`.

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{SignedDuration, Timestamp, Zoned};

use crate::{CalendarEvent, unsigned};

/// How many years past the start the search looks: the Gregorian calendar repeats every 400
/// years, so an event without an occurrence in this span never occurs (unless it names years,
/// which all lie below 2200).
const SEARCH_YEARS: i32 = 400;

/// Bound on loop turns of one search, far above the need of any event (a few per month).
const MAX_STEPS: u32 = 1_000_000;

impl CalendarEvent {
    /// The first event strictly after `t`, in `t`'s time zone (computed in UTC, and returned in
    /// `t`'s zone, for an event written with `UTC`). `None` if there is none: a date that
    /// never exists (`02-30`), years all in the past, or none within 400 years.
    ///
    /// Daylight saving time: a civil time the clocks skip fires at the first instant after the
    /// gap; a civil time that happens twice fires at its first occurrence only.
    #[must_use]
    pub fn next_after(&self, t: &Zoned) -> Option<Zoned> {
        let tz = if self.utc {
            TimeZone::UTC
        } else {
            t.time_zone().clone()
        };
        let after = t.timestamp();
        let from = first_civil_after(&tz, after)?;
        let civil = self.next_civil_from(from)?;
        let instant = instant_of(&tz, civil)?;
        debug_assert!(instant > after, "the civil-to-instant mapping is monotone");
        Some(Zoned::new(instant, t.time_zone().clone()))
    }

    /// The first matching civil date-time `>= from` (whole seconds).
    fn next_civil_from(&self, from: DateTime) -> Option<DateTime> {
        let last_year = if self.years.0.is_empty() {
            i32::from(from.year()).saturating_add(SEARCH_YEARS)
        } else {
            2199
        }
        .min(9999);
        let mut date = from.date();
        let mut floor = Some(from.time());
        for _ in 0..MAX_STEPS {
            let year = i32::from(date.year());
            if year > last_year {
                return None;
            }
            // Years: jump to January 1 of the next listed year.
            let year_u = u32::try_from(year).unwrap_or(0);
            if !self.years.0.is_empty() && (year < 0 || !self.years.contains(year_u)) {
                let start = if year < 0 { 0 } else { year_u.checked_add(1)? };
                let next = self
                    .years
                    .next_at_or_after(start, u32::try_from(last_year).ok()?)?;
                date = Date::new(i16::try_from(next).ok()?, 1, 1).ok()?;
                floor = None;
                continue;
            }
            // Months: the next listed month of this year, else January of the next year.
            let month = unsigned(date.month());
            if !self.months.contains(month) {
                date = match self.months.next_at_or_after(month + 1, 12) {
                    Some(m) => Date::new(date.year(), i8::try_from(m).ok()?, 1).ok()?,
                    None => Date::new(date.year().checked_add(1)?, 1, 1).ok()?,
                };
                floor = None;
                continue;
            }
            // Days of the month: the next listed day that exists, else the next month.
            let day = unsigned(date.day());
            if !self.days.contains(day) {
                let last = unsigned(date.days_in_month());
                date = match self.days.next_at_or_after(day + 1, last) {
                    Some(d) => Date::new(date.year(), date.month(), i8::try_from(d).ok()?).ok()?,
                    None => date.last_of_month().tomorrow().ok()?,
                };
                floor = None;
                continue;
            }
            if self.weekdays.contains(date.weekday())
                && let Some(time) = self.first_time_from(floor.unwrap_or(Time::midnight()))
            {
                return Some(date.to_datetime(time));
            }
            date = date.tomorrow().ok()?;
            floor = None;
        }
        None
    }

    /// The first matching time of day `>= floor`.
    fn first_time_from(&self, floor: Time) -> Option<Time> {
        let (h0, m0, s0) = (
            unsigned(floor.hour()),
            unsigned(floor.minute()),
            unsigned(floor.second()),
        );
        let mut hour = self.hours.next_at_or_after(h0, 23)?;
        loop {
            let (m_floor, s_floor) = if hour == h0 { (m0, s0) } else { (0, 0) };
            if let Some(minute) = self.minutes.next_at_or_after(m_floor, 59) {
                let s_floor = if minute == m_floor { s_floor } else { 0 };
                let found = match self.seconds.next_at_or_after(s_floor, 59) {
                    Some(second) => Some((minute, second)),
                    // No second left in this minute: the first second of the next minute.
                    None => self
                        .minutes
                        .next_at_or_after(minute + 1, 59)
                        .zip(self.seconds.next_at_or_after(0, 59)),
                };
                if let Some((minute, second)) = found {
                    return Time::new(
                        i8::try_from(hour).ok()?,
                        i8::try_from(minute).ok()?,
                        i8::try_from(second).ok()?,
                        0,
                    )
                    .ok();
                }
            }
            hour = self.hours.next_at_or_after(hour + 1, 23)?;
        }
    }
}

/// The smallest whole-second civil date-time whose instant ([`instant_of`]) is after `t`.
fn first_civil_after(tz: &TimeZone, t: Timestamp) -> Option<DateTime> {
    let civil = tz.to_datetime(t).with().subsec_nanosecond(0).build().ok()?;
    let next = civil.checked_add(SignedDuration::from_secs(1)).ok()?;
    if instant_of(tz, next)? > t {
        return Some(next);
    }
    // `t` lies in the second pass of a fold: every civil time up to the fold's end maps to its
    // first pass, before `t`. The fold ends, in civil time, where the transition at or before
    // `t` ends under the offset in force before it.
    let transition = tz
        .preceding(t.checked_add(SignedDuration::from_nanos(1)).ok()?)
        .next()?
        .timestamp();
    let before = tz.to_offset(transition.checked_sub(SignedDuration::from_secs(1)).ok()?);
    let end = before.to_datetime(transition);
    let end = if end.subsec_nanosecond() == 0 {
        end
    } else {
        end.with()
            .subsec_nanosecond(0)
            .build()
            .ok()?
            .checked_add(SignedDuration::from_secs(1))
            .ok()?
    };
    (instant_of(tz, end)? > t).then_some(end)
}

/// The instant a civil date-time fires at (see the module documentation for gaps and folds).
fn instant_of(tz: &TimeZone, dt: DateTime) -> Option<Timestamp> {
    match tz.to_ambiguous_timestamp(dt).offset() {
        AmbiguousOffset::Unambiguous { offset } => offset.to_timestamp(dt).ok(),
        // The larger offset before the clocks go back gives the earlier instant.
        AmbiguousOffset::Fold { before, .. } => before.to_timestamp(dt).ok(),
        // Read with the offset after the gap, `dt` lies before the transition; the transition
        // itself is the first instant after the gap.
        AmbiguousOffset::Gap { after, .. } => {
            let early = after.to_timestamp(dt).ok()?;
            tz.following(early).next().map(|tr| tr.timestamp())
        }
    }
}
