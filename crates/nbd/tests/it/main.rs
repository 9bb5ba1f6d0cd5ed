//! Integration tests of the NBD crate: our client and server against each
//! other and against libnbd (nbdinfo, nbdcopy), qemu-img, qemu-nbd and nbdkit.

#[cfg(test)]
mod common;
#[cfg(test)]
mod contexts;
#[cfg(test)]
mod limits;
#[cfg(test)]
mod ours;
#[cfg(test)]
mod peers;
#[cfg(test)]
mod tools;
