//! Integration tests of `sendense-calendar`: Proxmox Backup Server's documentation examples and
//! its own next-event cases, the normalized display, refused texts with the position of the bad
//! part, daylight saving time, and properties of parse, display and `next_after`.

#[cfg(test)]
mod dst;
#[cfg(test)]
mod errors;
#[cfg(test)]
mod examples;
#[cfg(test)]
mod props;
#[cfg(test)]
mod support;
