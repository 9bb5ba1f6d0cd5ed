//! The values one part of an event (years, months, days, hours, minutes, seconds) matches.
//!
//! A part is a comma list of items, each a number `5`, a range `1..7`, or a repetition `0/15`
//! (from 0 every 15) or `8..17/2` (from 8 every 2 up to 17). The empty list is `*`: every value.
//! `*/15` is stored as the repetition from the part's first value (0, or 1 for months and
//! days), exactly as Proxmox Backup Server does. Order and duplicates are kept as written so
//! that the normalized display parses back to an equal event.

use std::fmt;

/// One item of a comma list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Item {
    /// Exactly this value.
    Single(u32),
    /// Every value from the first to the second, both included (`first <= second`).
    Range(u32, u32),
    /// `start`, `start + step`, ... up to `end` if given. A zero step is `start` only.
    Repeat {
        /// First value.
        start: u32,
        /// Distance between values.
        step: u32,
        /// Last allowed value.
        end: Option<u32>,
    },
}

impl Item {
    /// The smallest value of this item that is `>= v`.
    fn next_at_or_after(self, v: u32) -> Option<u32> {
        match self {
            Self::Single(x) => (x >= v).then_some(x),
            Self::Range(a, b) => {
                if v <= a {
                    Some(a)
                } else {
                    (v <= b).then_some(v)
                }
            }
            Self::Repeat { start, step, end } => {
                let next = if v <= start {
                    start
                } else if step == 0 {
                    return None;
                } else {
                    let behind = v - start;
                    let steps = behind.div_ceil(step);
                    start.checked_add(steps.checked_mul(step)?)?
                };
                match end {
                    Some(e) if next > e => None,
                    _ => Some(next),
                }
            }
        }
    }
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Single(v) => write!(f, "{v:02}"),
            Self::Range(a, b) => write!(f, "{a:02}..{b:02}"),
            Self::Repeat {
                start,
                step,
                end: None,
            } => write!(f, "{start:02}/{step}"),
            Self::Repeat {
                start,
                step,
                end: Some(e),
            } => write!(f, "{start:02}..{e:02}/{step}"),
        }
    }
}

/// The values one part matches; empty means every value (`*`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct ValueList(pub(crate) Vec<Item>);

impl ValueList {
    /// A list of one value.
    pub(crate) fn single(v: u32) -> Self {
        Self(vec![Item::Single(v)])
    }

    /// Whether `v` is one of the values.
    pub(crate) fn contains(&self, v: u32) -> bool {
        self.next_at_or_after(v, v) == Some(v)
    }

    /// The smallest value `>= v` and `<= max`.
    pub(crate) fn next_at_or_after(&self, v: u32, max: u32) -> Option<u32> {
        if v > max {
            return None;
        }
        if self.0.is_empty() {
            return Some(v);
        }
        self.0
            .iter()
            .filter_map(|item| item.next_at_or_after(v))
            .filter(|&n| n <= max)
            .min()
    }
}

impl fmt::Display for ValueList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("*");
        }
        for (i, item) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{item}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeat_next_value_rounds_up_to_the_step() {
        let item = Item::Repeat {
            start: 5,
            step: 20,
            end: None,
        };
        assert_eq!(
            [0, 5, 6, 25, 26, 45].map(|v| item.next_at_or_after(v)),
            [Some(5), Some(5), Some(25), Some(25), Some(45), Some(45)]
        );
    }

    #[test]
    fn repeat_with_end_stops_at_the_end() {
        let item = Item::Repeat {
            start: 4,
            step: 2,
            end: Some(10),
        };
        assert_eq!(
            [3, 5, 10, 11].map(|v| item.next_at_or_after(v)),
            [Some(4), Some(6), Some(10), None]
        );
    }

    #[test]
    fn zero_step_repeat_is_its_start_only() {
        let item = Item::Repeat {
            start: 5,
            step: 0,
            end: None,
        };
        assert_eq!(
            [4, 5, 6].map(|v| item.next_at_or_after(v)),
            [Some(5), Some(5), None]
        );
    }

    #[test]
    fn list_next_value_is_the_minimum_over_items_within_max() {
        let list = ValueList(vec![Item::Single(23), Item::Range(4, 10), Item::Single(6)]);
        assert_eq!(
            [0, 7, 11, 24].map(|v| list.next_at_or_after(v, 23)),
            [Some(4), Some(7), Some(23), None]
        );
    }

    #[test]
    fn empty_list_matches_every_value_up_to_max() {
        let list = ValueList::default();
        assert_eq!(
            (list.next_at_or_after(59, 59), list.next_at_or_after(60, 59)),
            (Some(59), None)
        );
    }
}
