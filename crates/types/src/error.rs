//! The one error type of this crate: a value from outside did not pass validation.
//!
//! Each variant names the kind of value, keeps (a bounded prefix of) the offending input and a
//! static reason, so the hub can answer `400` with a message that says exactly what was wrong.

use thiserror::Error;

/// Longest prefix of an offending input kept in an error, in characters.
const MAX_ECHO_CHARS: usize = 80;

/// A value failed validation.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TypesError {
    /// A VM or credential name is not a safe file name.
    #[error("Invalid name {value:?}: {reason}")]
    InvalidName {
        /// The offending input (truncated).
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A backup id does not have the form `backup-<vm>-<yyyymmddThhmmss>-<6 hex>`.
    #[error("Invalid backup id {value:?}: {reason}")]
    InvalidBackupId {
        /// The offending input (truncated).
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A VMware change id is empty, too long or not printable.
    #[error("Invalid change id {value:?}: {reason}")]
    InvalidChangeId {
        /// The offending input (truncated).
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An NBD export name is not acceptable.
    #[error("Invalid export name {value:?}: {reason}")]
    InvalidExportName {
        /// The offending input (truncated).
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A timestamp is not an RFC 3339 UTC time such as `2026-11-24T23:59:01Z`.
    #[error("Invalid timestamp {value:?}: {reason}")]
    InvalidTimestamp {
        /// The offending input (truncated).
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A disk capacity is zero, too large or not a multiple of 512.
    #[error("Invalid capacity {capacity_bytes} for disk {disk_key}: {reason}")]
    InvalidCapacity {
        /// The disk.
        disk_key: u32,
        /// The offending capacity in bytes.
        capacity_bytes: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The same disk key appears twice in one request.
    #[error("Disk key {disk_key} appears more than once")]
    DuplicateDiskKey {
        /// The repeated key.
        disk_key: u32,
    },
    /// A request field is missing, empty or too long.
    #[error("Invalid field {field}: {reason}")]
    InvalidField {
        /// The JSON field name.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Keeps at most [`MAX_ECHO_CHARS`] characters of an input for an error message.
pub(crate) fn echo(value: &str) -> String {
    match value.char_indices().nth(MAX_ECHO_CHARS) {
        Some((end, _)) => format!("{}...", &value[..end]),
        None => value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_long_input_truncated() {
        let long = "x".repeat(1000);

        let shown = echo(&long);

        assert_eq!(shown.len(), MAX_ECHO_CHARS + 3);
    }

    #[test]
    fn echo_multibyte_input_cut_on_char_boundary() {
        let long = "é".repeat(200);

        let shown = echo(&long);

        assert_eq!(shown.chars().count(), MAX_ECHO_CHARS + 3);
    }
}
