//! Integration tests of the prune algorithm: the worked examples of the Proxmox Backup Server
//! documentation, and properties against a reference written from that documentation.

#[cfg(test)]
mod docs;
#[cfg(test)]
mod properties;
#[cfg(test)]
mod reference;
