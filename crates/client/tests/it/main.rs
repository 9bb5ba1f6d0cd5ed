//! Integration tests of `sendense-client`.
