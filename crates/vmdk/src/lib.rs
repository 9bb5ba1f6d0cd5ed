//! VMDK reader: descriptors, flat, monolithicSparse, twoGbMaxExtent and streamOptimized extents.
