//! Integration tests of the VMDK reader.
