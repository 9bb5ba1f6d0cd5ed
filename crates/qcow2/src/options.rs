//! Options of [`crate::Image::create`] and [`crate::Image::open`], and the chain depth
//! limits.

use std::sync::Arc;

use crate::backing::BackingPolicy;
use crate::layers::{LayerSource, Layers};
use crate::parse::BackingFormat;

/// Hard upper bound on backing chain depth, whatever the caller asks for in
/// [`OpenOptions::max_chain_depth`].
pub const MAX_CHAIN_DEPTH: usize = 256;
/// Backing chain depth limit of [`OpenOptions::read_only`], [`OpenOptions::writable`] and
/// [`crate::Image::create`]: an image with more backing files below it than this fails to open with
/// [`crate::Qcow2Error::ChainTooDeep`], so a writer of chains (the hub) starts a new full before its
/// chain reaches it.
pub const DEFAULT_CHAIN_DEPTH: usize = 32;
/// Default cluster size of new images.
pub(crate) const DEFAULT_CLUSTER_SIZE: u32 = 65536;

/// Options for [`crate::Image::create`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateOptions {
    /// Virtual size in bytes (a multiple of 512, not 0).
    pub virtual_size: u64,
    /// Cluster size: a power of two from 512 to 2 MiB (default 64 KiB).
    pub cluster_size: u32,
    /// Backing file, for an overlay.
    pub backing: Option<BackingSpec>,
    /// Extended L2 entries (32 subclusters per cluster; clusters of at least 16 KiB).
    pub extended_l2: bool,
    /// Policy for the backing files named by the images below the new overlay, relative to
    /// the folder of `backing` (default [`BackingPolicy::below`]). `backing` itself is the
    /// caller's own choice and is opened wherever it is.
    pub backing_policy: BackingPolicy,
    /// Open the new image with writeback: small data writes go through the page cache and
    /// a flush makes them durable (see [`crate::storage`]; for scratch overlays).
    pub writeback: bool,
    /// Where the backing chain's read-only layers whose files are missing are read from
    /// (see [`crate::layers`]).
    pub layers: Layers,
}

impl CreateOptions {
    /// A standalone image of `virtual_size` bytes with 64 KiB clusters.
    #[must_use]
    pub fn new(virtual_size: u64) -> Self {
        Self {
            virtual_size,
            cluster_size: DEFAULT_CLUSTER_SIZE,
            backing: None,
            extended_l2: false,
            backing_policy: BackingPolicy::below(),
            writeback: false,
            layers: Layers::none(),
        }
    }

    /// Opens the new image with writeback (the `writeback` field).
    #[must_use]
    pub fn writeback(mut self, on: bool) -> Self {
        self.writeback = on;
        self
    }

    /// Sets the cluster size.
    #[must_use]
    pub fn cluster_size(mut self, cluster_size: u32) -> Self {
        self.cluster_size = cluster_size;
        self
    }

    /// Sets the backing file.
    #[must_use]
    pub fn backing(mut self, backing: BackingSpec) -> Self {
        self.backing = Some(backing);
        self
    }

    /// Enables or disables extended L2 entries.
    #[must_use]
    pub fn extended_l2(mut self, on: bool) -> Self {
        self.extended_l2 = on;
        self
    }

    /// Sets the policy for the backing chain below the new overlay.
    #[must_use]
    pub fn backing_policy(mut self, policy: BackingPolicy) -> Self {
        self.backing_policy = policy;
        self
    }

    /// Reads the backing chain's layers whose files are missing from `source` (the `layers`
    /// field).
    #[must_use]
    pub fn layers(mut self, source: Arc<dyn LayerSource>) -> Self {
        self.layers = Layers::from_source(source);
        self
    }
}

/// A backing file to record in a new overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackingSpec {
    /// Stored verbatim in the header; a relative name is resolved from the image's folder.
    pub file: String,
    /// Its format, stored in the backing format header extension.
    pub format: BackingFormat,
}

impl BackingSpec {
    /// A QCOW2 backing file.
    #[must_use]
    pub fn qcow2(file: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            format: BackingFormat::Qcow2,
        }
    }

    /// A raw backing file.
    #[must_use]
    pub fn raw(file: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            format: BackingFormat::Raw,
        }
    }
}

/// Options for [`crate::Image::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenOptions {
    /// Open the top image for writing (backing files are always read-only).
    pub writable: bool,
    /// Maximum number of backing files below the top image (capped at [`MAX_CHAIN_DEPTH`]).
    pub max_chain_depth: usize,
    /// Which backing files the chain may name (see [`crate::backing`]).
    pub backing: BackingPolicy,
    /// With `writable`: small data writes of the top image go through the page cache and a
    /// flush makes them durable (see [`crate::storage`]; for scratch overlays).
    pub writeback: bool,
    /// Where read-only layers whose files are missing are read from (see [`crate::layers`]).
    pub layers: Layers,
}

impl OpenOptions {
    /// Read-only, default depth limit, backing files under [`BackingPolicy::below`].
    #[must_use]
    pub fn read_only() -> Self {
        Self {
            writable: false,
            max_chain_depth: DEFAULT_CHAIN_DEPTH,
            backing: BackingPolicy::below(),
            writeback: false,
            layers: Layers::none(),
        }
    }

    /// Writable, default depth limit, backing files under [`BackingPolicy::below`].
    #[must_use]
    pub fn writable() -> Self {
        Self {
            writable: true,
            max_chain_depth: DEFAULT_CHAIN_DEPTH,
            backing: BackingPolicy::below(),
            writeback: false,
            layers: Layers::none(),
        }
    }

    /// Sets the backing file policy.
    #[must_use]
    pub fn backing(mut self, policy: BackingPolicy) -> Self {
        self.backing = policy;
        self
    }

    /// Sets writeback of the top image (the `writeback` field).
    #[must_use]
    pub fn writeback(mut self, on: bool) -> Self {
        self.writeback = on;
        self
    }

    /// Sets the chain depth limit (capped at [`MAX_CHAIN_DEPTH`]).
    #[must_use]
    pub fn max_chain_depth(mut self, depth: usize) -> Self {
        self.max_chain_depth = depth;
        self
    }

    /// Reads read-only layers whose files are missing from `source` (the `layers` field).
    #[must_use]
    pub fn layers(mut self, source: Arc<dyn LayerSource>) -> Self {
        self.layers = Layers::from_source(source);
        self
    }
}
