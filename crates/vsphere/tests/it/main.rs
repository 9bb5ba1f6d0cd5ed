//! Integration tests of sendense-vsphere against the in-process simulator.

#[cfg(test)]
mod backup;
#[cfg(test)]
mod restore;
#[cfg(test)]
mod session;
#[cfg(test)]
mod support;
