//! Integration tests of `sendense-types`: the exact JSON of every API body (golden), request
//! validation and unknown-field refusal, and serde round trips of the main structs.

#[cfg(test)]
mod golden;
#[cfg(test)]
mod requests;
#[cfg(test)]
mod round_trip;
