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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_saturates_and_checked_end_reports_overflow() {
        let e = Extent::new(u64::MAX - 1, 4);
        assert_eq!(e.end(), u64::MAX);
        assert_eq!(e.checked_end(), None);
        assert_eq!(Extent::new(10, 5).checked_end(), Some(15));
    }
}
