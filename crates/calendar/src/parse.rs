//! The parser: text to [`CalendarEvent`], with the position of the first bad token on failure.
//!
//! The grammar is in the crate documentation. The parser decides deterministically (by the
//! character after a list: `-` for a date, `:` for a time) where PBS's combinators try one
//! reading and fall back to another; so the first error found is the bad part, and its
//! position is precise.

use crate::error::{CalendarError, Expected, Part};
use crate::value::{Item, ValueList};
use crate::{CalendarEvent, MAX_ITEMS, MAX_LEN, WeekdaySet};

/// Parses `text` as a calendar event.
pub(crate) fn parse(text: &str) -> Result<CalendarEvent, CalendarError> {
    if text.len() > MAX_LEN {
        return Err(CalendarError::TooLong {
            len: text.len(),
            max: MAX_LEN,
        });
    }
    if let Some((position, c)) = text.chars().enumerate().find(|(_, c)| !c.is_ascii()) {
        return Err(CalendarError::Syntax {
            position,
            found: c.to_string(),
            expected: Expected::Ascii,
        });
    }
    if text.trim().is_empty() {
        return Err(CalendarError::Empty);
    }
    // From here on the text is ASCII: byte offsets are character offsets.
    let (body, utc) = match text.strip_suffix("UTC") {
        Some(rest) => (rest.trim_end_matches(' '), true),
        None => (text, false),
    };
    if let Some(event) = shortcut(body) {
        return Ok(CalendarEvent { utc, ..event });
    }
    let mut p = Parser { text: body, pos: 0 };
    if body.starts_with([' ', '\t']) {
        return Err(CalendarError::Syntax {
            position: 0,
            found: "leading white space".to_owned(),
            expected: Expected::Schedule,
        });
    }
    let mut event = CalendarEvent {
        utc,
        ..CalendarEvent::default()
    };
    let mut any = false;
    let mut only_weekdays = false;
    if p.peek().is_some_and(|c| c.is_ascii_alphabetic()) {
        event.weekdays = p.weekdays()?;
        p.skip_blanks();
        any = true;
        only_weekdays = true;
    }
    let mut time = None;
    if p.at_list_start() {
        let first = p.list()?;
        if p.eat("-") {
            let second = p.list()?;
            let third = if p.eat("-") { Some(p.list()?) } else { None };
            match third {
                Some(days) => {
                    event.years = first.resolve(Part::Year)?;
                    event.months = second.resolve(Part::Month)?;
                    event.days = days.resolve(Part::Day)?;
                }
                None => {
                    event.months = first.resolve(Part::Month)?;
                    event.days = second.resolve(Part::Day)?;
                }
            }
            p.skip_blanks();
            if p.at_list_start() {
                let first = p.list()?;
                time = Some(p.time(first)?);
            }
        } else {
            time = Some(p.time(first)?);
        }
        any = true;
        only_weekdays = false;
    }
    if !any {
        return Err(p.syntax(Expected::Schedule));
    }
    if p.pos < p.text.len() {
        return Err(p.syntax(if only_weekdays {
            Expected::AfterWeekday
        } else {
            Expected::End
        }));
    }
    let (hours, minutes, seconds) = time.unwrap_or_else(|| {
        (
            ValueList::single(0),
            ValueList::single(0),
            ValueList::single(0),
        )
    });
    event.hours = hours;
    event.minutes = minutes;
    event.seconds = seconds;
    Ok(event)
}

/// The named events, as PBS defines them.
fn shortcut(name: &str) -> Option<CalendarEvent> {
    let zero = ValueList::single(0);
    let first = ValueList::single(1);
    let midnight = CalendarEvent {
        hours: zero.clone(),
        minutes: zero.clone(),
        seconds: zero.clone(),
        ..CalendarEvent::default()
    };
    let months = |m: &[u32]| ValueList(m.iter().map(|&v| Item::Single(v)).collect());
    Some(match name {
        "minutely" => CalendarEvent {
            seconds: zero,
            ..CalendarEvent::default()
        },
        "hourly" => CalendarEvent {
            minutes: zero.clone(),
            seconds: zero,
            ..CalendarEvent::default()
        },
        "daily" => midnight,
        "weekly" => CalendarEvent {
            weekdays: WeekdaySet::MONDAY,
            ..midnight
        },
        "monthly" => CalendarEvent {
            days: first,
            ..midnight
        },
        "yearly" | "annually" => CalendarEvent {
            months: first.clone(),
            days: first,
            ..midnight
        },
        "quarterly" => CalendarEvent {
            months: months(&[1, 4, 7, 10]),
            days: first,
            ..midnight
        },
        "semiannually" | "semi-annually" => CalendarEvent {
            months: months(&[1, 7]),
            days: first,
            ..midnight
        },
        _ => return None,
    })
}

/// A number as written, with its position.
#[derive(Debug, Clone, Copy)]
struct Num {
    value: u64,
    pos: usize,
}

/// One comma item before its part is known.
#[derive(Debug)]
struct RawItem {
    value: Num,
    end: Option<Num>,
    step: Option<Num>,
}

/// A list before its part is known: the bounds depend on whether a `-` or `:` follows.
#[derive(Debug)]
enum RawList {
    /// `*` or `*/step`.
    Star(Option<Num>),
    /// A comma list.
    Items(Vec<RawItem>),
}

impl RawList {
    fn resolve(self, part: Part) -> Result<ValueList, CalendarError> {
        let (first, bound) = bounds(part);
        let check = |n: Num| -> Result<u32, CalendarError> {
            u32::try_from(n.value)
                .ok()
                .filter(|&v| v < bound)
                .ok_or(CalendarError::OutOfRange {
                    position: n.pos,
                    part,
                    value: n.value,
                    min: 0,
                    max: bound - 1,
                })
        };
        match self {
            Self::Star(None) => Ok(ValueList::default()),
            Self::Star(Some(step)) => {
                let s = check(step)?;
                if s == 0 {
                    return Err(CalendarError::ZeroStep {
                        position: step.pos,
                        part,
                    });
                }
                Ok(ValueList(vec![Item::Repeat {
                    start: first,
                    step: s,
                    end: None,
                }]))
            }
            Self::Items(items) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    let start = check(item.value)?;
                    let end = item.end.map(check).transpose()?;
                    if let Some(end) = end
                        && start > end
                    {
                        return Err(CalendarError::ReversedRange {
                            position: item.value.pos,
                            part,
                            start,
                            end,
                        });
                    }
                    let step = item.step.map(check).transpose()?;
                    out.push(match (end, step) {
                        (None, None) => Item::Single(start),
                        (Some(end), None) => Item::Range(start, end),
                        (end, Some(step)) => Item::Repeat { start, step, end },
                    });
                }
                Ok(ValueList(out))
            }
        }
    }
}

/// The value `*/n` starts at, and the exclusive upper bound of numbers, per part (PBS's bounds;
/// month and day 0 parse but never match).
fn bounds(part: Part) -> (u32, u32) {
    match part {
        Part::Year => (0, 2200),
        Part::Month => (1, 13),
        Part::Day => (1, 32),
        Part::Hour => (0, 24),
        Part::Minute | Part::Second => (0, 60),
    }
}

/// A cursor over the (ASCII) text.
struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn rest(&self) -> &str {
        self.text.get(self.pos..).unwrap_or("")
    }

    fn eat(&mut self, token: &str) -> bool {
        if self.rest().starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    fn skip_blanks(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    fn at_list_start(&self) -> bool {
        self.peek().is_some_and(|c| c == b'*' || c.is_ascii_digit())
    }

    /// A syntax error at the cursor, naming the token found there (after white space).
    fn syntax(&self, expected: Expected) -> CalendarError {
        let rest = self.rest();
        let token = rest.trim_start_matches([' ', '\t']);
        let found: String = token
            .split([' ', '\t'])
            .next()
            .unwrap_or("")
            .chars()
            .take(24)
            .collect();
        let (position, found) = if rest.is_empty() {
            (self.pos, "end of input".to_owned())
        } else if token.is_empty() {
            (self.pos, "trailing white space".to_owned())
        } else {
            (self.pos + (rest.len() - token.len()), found)
        };
        CalendarError::Syntax {
            position,
            found,
            expected,
        }
    }

    fn weekdays(&mut self) -> Result<WeekdaySet, CalendarError> {
        let mut set = WeekdaySet::default();
        loop {
            let start = self.weekday()?;
            let end = if self.eat("..") {
                self.weekday()?
            } else {
                start
            };
            set = set.with_range(start, end);
            if !self.eat(",") {
                return Ok(set);
            }
        }
    }

    /// One weekday name: its Monday-based index.
    fn weekday(&mut self) -> Result<u8, CalendarError> {
        let word_len = self
            .rest()
            .bytes()
            .take_while(u8::is_ascii_alphabetic)
            .count();
        let word = self.rest().get(..word_len).unwrap_or("");
        let day = match word.to_ascii_lowercase().as_str() {
            "mon" | "monday" => 0,
            "tue" | "tuesday" => 1,
            "wed" | "wednesday" => 2,
            "thu" | "thursday" => 3,
            "fri" | "friday" => 4,
            "sat" | "saturday" => 5,
            "sun" | "sunday" => 6,
            _ => return Err(self.syntax(Expected::Weekday)),
        };
        self.pos += word_len;
        Ok(day)
    }

    fn number(&mut self) -> Result<Num, CalendarError> {
        let pos = self.pos;
        let digits = self.rest().bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(self.syntax(Expected::Number));
        }
        let value = self.rest().bytes().take(digits).fold(0u64, |acc, d| {
            acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
        });
        self.pos += digits;
        Ok(Num { value, pos })
    }

    fn list(&mut self) -> Result<RawList, CalendarError> {
        if self.eat("*") {
            let step = if self.eat("/") {
                Some(self.number()?)
            } else {
                None
            };
            return Ok(RawList::Star(step));
        }
        if !self.peek().is_some_and(|c| c.is_ascii_digit()) {
            return Err(self.syntax(Expected::Value));
        }
        let mut items = Vec::new();
        loop {
            if items.len() == MAX_ITEMS {
                return Err(CalendarError::TooManyItems {
                    position: self.pos,
                    max: MAX_ITEMS,
                });
            }
            let value = self.number()?;
            let end = if self.eat("..") {
                Some(self.number()?)
            } else {
                None
            };
            let step = if self.eat("/") {
                Some(self.number()?)
            } else {
                None
            };
            items.push(RawItem { value, end, step });
            if !self.eat(",") {
                return Ok(RawList::Items(items));
            }
        }
    }

    /// The time part, its first list already read.
    fn time(&mut self, first: RawList) -> Result<(ValueList, ValueList, ValueList), CalendarError> {
        if !self.eat(":") {
            return Ok((
                ValueList::default(),
                first.resolve(Part::Minute)?,
                ValueList::single(0),
            ));
        }
        let hours = first.resolve(Part::Hour)?;
        let minutes = self.list()?.resolve(Part::Minute)?;
        let seconds = if self.eat(":") {
            self.list()?.resolve(Part::Second)?
        } else {
            ValueList::single(0)
        };
        Ok((hours, minutes, seconds))
    }
}
