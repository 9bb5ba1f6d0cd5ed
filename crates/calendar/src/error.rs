//! The one error type of this crate: why a schedule text was refused, and where.
//!
//! Every variant that concerns a part of the text carries its `position`: the 0-based character
//! offset of the offending token, so that an API answer can point at the bad part.

use std::fmt;

/// A schedule text that is not a calendar event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CalendarError {
    /// The text is empty or only white space.
    #[error("Empty schedule: expected a weekday, a date, a time or a name such as 'daily'")]
    Empty,
    /// The text is longer than [`MAX_LEN`](crate::MAX_LEN) bytes.
    #[error("Schedule is {len} bytes long, at most {max} are allowed")]
    TooLong {
        /// Length of the text in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// More than [`MAX_ITEMS`](crate::MAX_ITEMS) comma items in one list.
    #[error("Bad schedule at position {position}: more than {max} items in one list")]
    TooManyItems {
        /// Character offset of the first item over the limit.
        position: usize,
        /// The limit.
        max: usize,
    },
    /// A token that does not fit the grammar.
    #[error("Bad schedule at position {position} ('{found}'): expected {expected}")]
    Syntax {
        /// Character offset of the token.
        position: usize,
        /// The token found there (shortened), or `end of input`.
        found: String,
        /// What the grammar allows at that place.
        expected: Expected,
    },
    /// A number outside the values its part allows (`25` as an hour, `13` as a month).
    #[error(
        "Bad schedule at position {position}: {part} value {value} is out of range {min}..={max}"
    )]
    OutOfRange {
        /// Character offset of the number.
        position: usize,
        /// The part of the event the number belongs to.
        part: Part,
        /// The number as written (saturated at `u64::MAX`).
        value: u64,
        /// Smallest value the part allows.
        min: u32,
        /// Largest value the part allows.
        max: u32,
    },
    /// A range `a..b` with `a > b`.
    #[error("Bad schedule at position {position}: {part} range {start}..{end} runs backwards")]
    ReversedRange {
        /// Character offset of the range.
        position: usize,
        /// The part of the event the range belongs to.
        part: Part,
        /// Start of the range.
        start: u32,
        /// End of the range.
        end: u32,
    },
    /// `*/0`: a repetition of every value with step zero.
    #[error("Bad schedule at position {position}: {part} repetition '*/0' needs a step above 0")]
    ZeroStep {
        /// Character offset of the step.
        position: usize,
        /// The part of the event the step belongs to.
        part: Part,
    },
}

impl CalendarError {
    /// The character offset of the bad part, if the error concerns one.
    #[must_use]
    pub fn position(&self) -> Option<usize> {
        match self {
            Self::Empty | Self::TooLong { .. } => None,
            Self::Syntax { position, .. }
            | Self::OutOfRange { position, .. }
            | Self::ReversedRange { position, .. }
            | Self::ZeroStep { position, .. }
            | Self::TooManyItems { position, .. } => Some(*position),
        }
    }
}

/// The part of a calendar event a number belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Part {
    /// `YEARS` in `YEARS-MONTHS-DAYS`.
    Year,
    /// `MONTHS`.
    Month,
    /// `DAYS` (of the month).
    Day,
    /// `HOURS`.
    Hour,
    /// `MINUTES`.
    Minute,
    /// `SECONDS`.
    Second,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Year => "year",
            Self::Month => "month",
            Self::Day => "day",
            Self::Hour => "hour",
            Self::Minute => "minute",
            Self::Second => "second",
        })
    }
}

/// What the grammar allows where a [`CalendarError::Syntax`] was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Expected {
    /// Text starts: a weekday, a date, a time or a shortcut name.
    Schedule,
    /// A weekday name.
    Weekday,
    /// A number or `*`.
    Value,
    /// A number.
    Number,
    /// After a weekday: more weekdays, a date or a time.
    AfterWeekday,
    /// Only ASCII text is part of the grammar.
    Ascii,
    /// Nothing more: the event is complete.
    End,
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Schedule => {
                "a weekday, a date (YEAR-MONTH-DAY or MONTH-DAY), a time (HOUR:MINUTE) \
                 or one of minutely, hourly, daily, weekly, monthly, yearly, annually, \
                 quarterly, semiannually"
            }
            Self::Weekday => "a weekday (mon, tue, wed, thu, fri, sat, sun or the full name)",
            Self::Value => "a number or '*'",
            Self::Number => "a number",
            Self::AfterWeekday => "',' or '..' and a weekday, or a space and a date or time",
            Self::Ascii => "ASCII text",
            Self::End => "the end of the schedule (a time part comes last, after the date)",
        })
    }
}
