//! Integration tests of `sendense-digest`: layers against a per-block model, composition,
//! merges and the file format.

#[cfg(test)]
mod layer;
