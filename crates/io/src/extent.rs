//! [`Extent`]: a run of bytes of a disk.

/// A run of bytes of a disk: `[offset, offset + length)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Extent {
    /// First byte.
    pub offset: u64,
    /// Number of bytes.
    pub length: u64,
}

impl Extent {
    /// A new extent.
    #[must_use]
    pub const fn new(offset: u64, length: u64) -> Self {
        Self { offset, length }
    }

    /// One past the last byte, or `None` when that overflows `u64`.
    #[must_use]
    pub const fn checked_end(&self) -> Option<u64> {
        self.offset.checked_add(self.length)
    }

    /// One past the last byte, saturating (for extents already validated).
    #[must_use]
    pub const fn end(&self) -> u64 {
        self.offset.saturating_add(self.length)
    }
}

/// Sorts extents and merges overlapping and touching ones into the fewest covering the same
/// bytes. Empty extents are dropped. Extents must not overflow `u64` (validated ones never do).
#[must_use]
pub fn merge(mut extents: Vec<Extent>) -> Vec<Extent> {
    extents.retain(|e| e.length > 0);
    extents.sort_unstable_by_key(|e| e.offset);
    let mut merged: Vec<Extent> = Vec::with_capacity(extents.len());
    for e in extents {
        match merged.last_mut() {
            Some(last) if e.offset <= last.end() => {
                let end = last.end().max(e.end());
                last.length = end - last.offset;
            }
            _ => merged.push(e),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_sorts_joins_touching_and_overlapping_and_drops_empty() {
        let e = Extent::new;
        assert_eq!(
            merge(vec![
                e(50, 10),
                e(0, 10),
                e(5, 10),
                e(100, 1),
                e(15, 0),
                e(60, 5)
            ]),
            vec![e(0, 15), e(50, 15), e(100, 1)]
        );
        assert!(merge(Vec::new()).is_empty());
    }

    #[test]
    fn end_saturates_and_checked_end_reports_overflow() {
        let e = Extent::new(u64::MAX - 1, 4);
        assert_eq!(e.end(), u64::MAX);
        assert_eq!(e.checked_end(), None);
        assert_eq!(Extent::new(10, 5).checked_end(), Some(15));
    }
}
