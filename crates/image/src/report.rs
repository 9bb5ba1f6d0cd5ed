//! `image info` and `image check`: what an image is, and whether its
//! metadata is consistent, as text for people and JSON for scripts.

use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use sendense_qcow2::{
    BackingFormat, BackingInfo, BackingPolicy, CheckReport, Image, ImageInfo, OpenOptions,
};
use serde::Serialize;

use super::ImageError;
use super::input::is_qcow2;
use super::size::human;

/// One layer of an image's backing chain, as `image info` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerInfo {
    /// Path of the file.
    pub filename: String,
    /// `qcow2` or `raw`.
    pub format: &'static str,
    /// Virtual size in bytes.
    pub virtual_size: u64,
    /// Bytes the file occupies on disk (allocated blocks).
    pub disk_size: u64,
    /// Cluster size (QCOW2 only).
    pub cluster_size: Option<u64>,
    /// `0.10` (version 2) or `1.1` (version 3), QCOW2 only.
    pub compat: Option<&'static str>,
    /// Extended L2 entries (subclusters), QCOW2 only.
    pub extended_l2: Option<bool>,
    /// Refcount width, QCOW2 only.
    pub refcount_bits: Option<u32>,
    /// Backing file name as stored in the header.
    pub backing_file: Option<String>,
    /// Backing file format from the header.
    pub backing_format: Option<&'static str>,
    /// The image was not closed cleanly (lazy refcounts).
    pub dirty: bool,
    /// The image is marked corrupt.
    pub corrupt: bool,
}

/// `image info`: the image and every layer below it, top first.
///
/// # Errors
/// The file (or a backing file) cannot be opened.
pub fn info(path: &Path) -> Result<Vec<LayerInfo>, ImageError> {
    info_with(path, BackingPolicy::below())
}

/// `image info` opening backing files only as `policy` allows.
///
/// # Errors
/// The file (or a backing file) cannot be opened, or the policy refuses a
/// backing file.
pub fn info_with(path: &Path, policy: BackingPolicy) -> Result<Vec<LayerInfo>, ImageError> {
    if !is_qcow2(path)? {
        let meta = std::fs::metadata(path).map_err(|e| ImageError::io(path, e))?;
        return Ok(vec![raw_layer(path, meta.len())?]);
    }
    let image = Image::open(path, &OpenOptions::read_only().backing(policy))
        .map_err(|e| ImageError::qcow2(path, e))?;
    let mut layers = Vec::new();
    let mut next = Some(image.info());
    while let Some(info) = next.take() {
        layers.push(qcow2_layer(&info)?);
        next = match info.backing.map(|b| *b) {
            Some(BackingInfo::Qcow2(below)) => Some(below),
            Some(BackingInfo::Raw { path, size }) => {
                layers.push(raw_layer(&path, size)?);
                None
            }
            None => None,
        };
    }
    Ok(layers)
}

fn disk_size(path: &Path) -> Result<u64, ImageError> {
    let meta = std::fs::metadata(path).map_err(|e| ImageError::io(path, e))?;
    Ok(meta.blocks() * 512)
}

fn raw_layer(path: &Path, size: u64) -> Result<LayerInfo, ImageError> {
    Ok(LayerInfo {
        filename: path.display().to_string(),
        format: "raw",
        virtual_size: size,
        disk_size: disk_size(path)?,
        cluster_size: None,
        compat: None,
        extended_l2: None,
        refcount_bits: None,
        backing_file: None,
        backing_format: None,
        dirty: false,
        corrupt: false,
    })
}

fn qcow2_layer(info: &ImageInfo) -> Result<LayerInfo, ImageError> {
    Ok(LayerInfo {
        filename: info.path.display().to_string(),
        format: "qcow2",
        virtual_size: info.virtual_size,
        disk_size: disk_size(&info.path)?,
        cluster_size: Some(info.cluster_size),
        compat: Some(if info.version == 2 { "0.10" } else { "1.1" }),
        extended_l2: Some(info.extended_l2),
        refcount_bits: Some(info.refcount_bits),
        backing_file: info.backing_file.clone(),
        backing_format: info.backing_format.map(|f| match f {
            BackingFormat::Qcow2 => "qcow2",
            BackingFormat::Raw => "raw",
        }),
        dirty: info.dirty,
        corrupt: info.corrupt,
    })
}

impl LayerInfo {
    /// Text like `qemu-img info --backing-chain`, one block per layer.
    pub fn render_chain(layers: &[Self]) -> String {
        let mut out = String::new();
        for (i, l) in layers.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            let _ = writeln!(out, "image: {}", l.filename);
            let _ = writeln!(out, "file format: {}", l.format);
            let _ = writeln!(
                out,
                "virtual size: {} ({} bytes)",
                human(l.virtual_size),
                l.virtual_size
            );
            let _ = writeln!(out, "disk size: {}", human(l.disk_size));
            if let Some(cs) = l.cluster_size {
                let _ = writeln!(out, "cluster_size: {cs}");
            }
            if let Some(b) = &l.backing_file {
                let _ = writeln!(out, "backing file: {b}");
            }
            if let Some(f) = l.backing_format {
                let _ = writeln!(out, "backing file format: {f}");
            }
            if let (Some(compat), Some(ext), Some(rb)) = (l.compat, l.extended_l2, l.refcount_bits)
            {
                let _ = writeln!(out, "Format specific information:");
                let _ = writeln!(out, "    compat: {compat}");
                let _ = writeln!(out, "    refcount bits: {rb}");
                let _ = writeln!(out, "    extended l2: {ext}");
                let _ = writeln!(out, "    corrupt: {}", l.corrupt);
            }
        }
        out
    }
}

/// `image check`'s result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckSummary {
    /// The image checked.
    pub filename: String,
    /// Corruptions found (exit status 2).
    pub errors: u64,
    /// Leaked clusters found (exit status 3 when there are no errors).
    pub leaks: u64,
    /// What was found, one line each (capped; the counts are exact).
    pub messages: Vec<String>,
    /// Guest clusters allocated in this layer.
    pub allocated_clusters: u64,
    /// Guest clusters of the virtual disk.
    pub total_clusters: u64,
    /// End of the used part of the file.
    pub image_end_offset: u64,
}

impl CheckSummary {
    /// `qemu-img check`'s convention: 0 clean, 2 errors, 3 leaks only.
    pub fn exit_code(&self) -> u8 {
        if self.errors > 0 {
            2
        } else if self.leaks > 0 {
            3
        } else {
            0
        }
    }

    /// Text like `qemu-img check`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for m in &self.messages {
            let _ = writeln!(out, "{m}");
        }
        if self.errors == 0 && self.leaks == 0 {
            let _ = writeln!(out, "No errors were found on the image.");
        } else {
            if self.errors > 0 {
                let _ = writeln!(out, "\n{} errors were found on the image.", self.errors);
            }
            if self.leaks > 0 {
                let _ = writeln!(
                    out,
                    "\n{} leaked clusters were found on the image.",
                    self.leaks
                );
                let _ = writeln!(out, "This means waste of disk space, but no harm to data.");
            }
        }
        #[allow(clippy::cast_precision_loss)] // display only
        let pct = if self.total_clusters == 0 {
            0.0
        } else {
            self.allocated_clusters as f64 * 100.0 / self.total_clusters as f64
        };
        let _ = writeln!(
            out,
            "{}/{} = {pct:.2}% allocated clusters.\nImage end offset: {}",
            self.allocated_clusters, self.total_clusters, self.image_end_offset
        );
        out
    }
}

/// `image check`: references against refcounts in a QCOW2 image.
///
/// # Errors
/// The image cannot be opened at all (a header too broken to check).
pub fn check(path: &Path) -> Result<CheckSummary, ImageError> {
    check_with(path, BackingPolicy::below())
}

/// `image check` opening backing files only as `policy` allows.
///
/// # Errors
/// The image cannot be opened at all, or the policy refuses a backing file.
pub fn check_with(path: &Path, policy: BackingPolicy) -> Result<CheckSummary, ImageError> {
    let opts = OpenOptions::read_only().backing(policy);
    let report: CheckReport =
        sendense_qcow2::check_path_with(path, &opts).map_err(|e| ImageError::qcow2(path, e))?;
    Ok(CheckSummary {
        filename: path.display().to_string(),
        errors: report.errors,
        leaks: report.leaks,
        messages: report.messages,
        allocated_clusters: report.allocated_clusters,
        total_clusters: report.total_clusters,
        image_end_offset: report.image_end_offset,
    })
}
