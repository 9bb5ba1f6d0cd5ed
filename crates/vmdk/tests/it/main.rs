//! Integration tests of the VMDK reader: golden comparisons against
//! `qemu-img`, hand-written descriptors, open policy and hostile files.

#[cfg(test)]
mod golden;
#[cfg(test)]
mod handwritten;
#[cfg(test)]
mod support;
