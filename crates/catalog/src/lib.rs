//! Embedded backup catalog on redb: VMs, disks, backups, chains, credentials.
