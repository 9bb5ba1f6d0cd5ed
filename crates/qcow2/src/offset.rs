//! Typed offsets: [`GuestOffset`] (a byte of the virtual disk) and [`HostOffset`] (a byte of
//! the image file), so the engine cannot pass one where the other is meant.

use std::fmt;
use std::ops::Add;

/// A byte offset in the virtual disk the guest sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct GuestOffset(pub(crate) u64);

/// A byte offset in the image file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct HostOffset(pub(crate) u64);

impl GuestOffset {
    /// The offset in bytes.
    pub(crate) fn get(self) -> u64 {
        self.0
    }
}

impl HostOffset {
    /// The offset in bytes.
    pub(crate) fn get(self) -> u64 {
        self.0
    }
}

impl Add<u64> for GuestOffset {
    type Output = Self;
    fn add(self, bytes: u64) -> Self {
        Self(self.0 + bytes)
    }
}

impl Add<u64> for HostOffset {
    type Output = Self;
    fn add(self, bytes: u64) -> Self {
        Self(self.0 + bytes)
    }
}

impl fmt::Display for GuestOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "guest {:#x}", self.0)
    }
}

impl fmt::Display for HostOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "host {:#x}", self.0)
    }
}
