//! Hand-written descriptors: vmfs, several mixed extents, open policy,
//! hostile files.
