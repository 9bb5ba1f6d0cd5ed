//! QCOW2 v2/v3 image engine: create, open, read, write, backing chains, check, commit.
