//! Consistency check of one image layer, like `qemu-img check`: every reference from the
//! header, L1/L2 tables and refcount structures is counted and compared with the stored
//! refcounts.
//!
//! Reports errors (refcount lower than references, references beyond the end of file,
//! misaligned offsets, clusters used by metadata and something else, wrong COPIED flags) and
//! leaks (refcount higher than references). Memory is one counter per cluster of the file,
//! bounded by the file's size.

use std::path::Path;

use crate::error::Qcow2Error;
use crate::image::Image;
use crate::l2_entry::{L1E_COPIED, L1E_OFFSET_MASK, L2Entry};
use crate::meta::{be_words, get_refcount};
use crate::offset::HostOffset;
use crate::options::OpenOptions;

/// Most messages kept in a report; the counts stay exact.
const MAX_MESSAGES: usize = 1000;

/// Result of [`Image::check`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckReport {
    /// Corruptions: refcount below references, bad offsets, overlaps.
    pub errors: u64,
    /// Leaked clusters: refcount above references.
    pub leaks: u64,
    /// Human-readable findings (at most 1000).
    pub messages: Vec<String>,
    /// Guest clusters allocated in this layer (data, compressed or zero with a host cluster).
    pub allocated_clusters: u64,
    /// Guest clusters of the virtual disk.
    pub total_clusters: u64,
    /// Highest host offset in use, rounded to clusters.
    pub image_end_offset: u64,
}

impl CheckReport {
    /// No errors and no leaks.
    #[must_use]
    pub fn is_clean(&self) -> bool {
        self.errors == 0 && self.leaks == 0
    }

    fn error(&mut self, msg: &str) {
        self.errors += 1;
        if self.messages.len() < MAX_MESSAGES {
            self.messages.push(format!("ERROR {msg}"));
        }
    }

    fn leak(&mut self, msg: &str) {
        self.leaks += 1;
        if self.messages.len() < MAX_MESSAGES {
            self.messages.push(format!("Leaked {msg}"));
        }
    }
}

/// Opens `path` read-only and checks it.
///
/// # Errors
/// As [`Image::open`] and [`Image::check`].
pub fn check_path(path: &Path) -> Result<CheckReport, Qcow2Error> {
    check_path_with(path, &OpenOptions::read_only())
}

/// Opens `path` with `opts` (its backing policy and depth limit; always read-only) and checks
/// it.
///
/// # Errors
/// As [`Image::open`] and [`Image::check`].
pub fn check_path_with(path: &Path, opts: &OpenOptions) -> Result<CheckReport, Qcow2Error> {
    let opts = OpenOptions {
        writable: false,
        ..opts.clone()
    };
    Image::open(path, &opts)?.check()
}

struct Counter {
    cs: u64,
    file_len: u64,
    refs: Vec<u32>,
    meta: Vec<bool>,
}

impl Counter {
    fn add(&mut self, r: &mut CheckReport, off: u64, len: u64, what: &str, is_meta: bool) {
        if !off.is_multiple_of(self.cs) && what != "compressed data" {
            r.error(&format!("{what} at {off:#x} is not cluster aligned"));
            return;
        }
        if off >= self.file_len {
            r.error(&format!(
                "{what} at {off:#x} is beyond the end of the file ({:#x})",
                self.file_len
            ));
            return;
        }
        let first = off / self.cs;
        let last = (off + len.max(1) - 1) / self.cs;
        for c in first..=last {
            let Some(slot) = self.refs.get_mut(c as usize) else {
                r.error(&format!(
                    "{what} at {:#x} is beyond the end of the file",
                    c * self.cs
                ));
                return;
            };
            let was_meta = self.meta[c as usize];
            if *slot > 0 && (was_meta || is_meta) {
                r.error(&format!(
                    "{what} at {:#x} overlaps other metadata or data",
                    c * self.cs
                ));
            }
            *slot = slot.saturating_add(1);
            self.meta[c as usize] |= is_meta;
        }
    }
}

impl Image {
    /// Checks this layer's references against its refcounts (the backing chain is not
    /// checked). A writable image is flushed first.
    ///
    /// # Errors
    /// I/O errors, and internal snapshots (not supported by this check).
    pub fn check(&self) -> Result<CheckReport, Qcow2Error> {
        self.check_leaks(&mut |_, _| {})
    }

    /// [`Image::check`], calling `leaked(cluster, excess)` for every leaked cluster (refcount
    /// above its references by `excess`).
    pub(crate) fn check_leaks(
        &self,
        leaked: &mut dyn FnMut(u64, u64),
    ) -> Result<CheckReport, Qcow2Error> {
        self.flush()?;
        if self.header.nb_snapshots != 0 {
            return Err(Qcow2Error::UnsupportedFeature {
                feature: "check of internal snapshots".into(),
            });
        }
        let _guard = self.lock_meta();
        let core = &self.core;
        let geo = core.geo;
        let cs = geo.cluster_size;
        let file_len = core.storage_len()?;
        let nclusters = file_len.div_ceil(cs);
        let mut r = CheckReport {
            total_clusters: geo.virtual_size.div_ceil(cs),
            ..CheckReport::default()
        };
        let mut cnt = Counter {
            cs,
            file_len,
            refs: vec![0; nclusters as usize],
            meta: vec![false; nclusters as usize],
        };
        // The on-disk header: the refcount table may have moved since open.
        let mut first = vec![0u8; cs.min(file_len) as usize];
        core.read_exact(&mut first, HostOffset(0), "read header")?;
        let h = &crate::parse::Header::parse(&first, file_len)?;
        cnt.add(&mut r, 0, cs, "header", true);
        let l1_bytes = u64::from(h.l1_size) * 8;
        if l1_bytes > 0 {
            cnt.add(&mut r, h.l1_table_offset, l1_bytes, "L1 table", true);
        }
        let rt_bytes = u64::from(h.refcount_table_clusters) * cs;
        cnt.add(
            &mut r,
            h.refcount_table_offset,
            rt_bytes,
            "refcount table",
            true,
        );

        let mut rt = vec![0u8; rt_bytes as usize];
        core.read_exact(
            &mut rt,
            HostOffset(h.refcount_table_offset),
            "read refcount table",
        )?;
        let reftable: Vec<u64> = be_words(&rt);
        for &e in &reftable {
            let off = e & !0x1ff;
            if off != 0 {
                cnt.add(&mut r, off, cs, "refcount block", true);
            }
        }

        let mut l1 = vec![0u8; l1_bytes as usize];
        core.read_exact(&mut l1, HostOffset(h.l1_table_offset), "read L1 table")?;
        let mut l2_checks = Vec::new();
        let mut table = vec![0u8; cs as usize];
        let mut scanned = std::collections::HashSet::new();
        for (i, l1e) in be_words(&l1).into_iter().enumerate() {
            let l2_off = l1e & L1E_OFFSET_MASK;
            if l2_off == 0 {
                continue;
            }
            cnt.add(&mut r, l2_off, cs, "L2 table", true);
            l2_checks.push((l2_off, l1e & L1E_COPIED != 0, format!("L1 entry {i}")));
            // A table referenced twice is already an overlap error; scanning it again would
            // let a small hostile file cost (L1 entries × cluster size) of reads.
            if !l2_off.is_multiple_of(cs) || l2_off >= file_len || !scanned.insert(l2_off) {
                continue;
            }
            core.read_exact(&mut table, HostOffset(l2_off), "read L2 table")?;
            let w = be_words(&table);
            for (j, e) in w.iter().step_by(geo.entry_words).enumerate() {
                // Only the descriptor matters here; the subcluster bitmap names no clusters.
                let e = L2Entry::from_words(*e, 0);
                if e.is_compressed() {
                    let (first, count) = e.compressed_clusters(&geo);
                    r.allocated_clusters += 1;
                    cnt.add(&mut r, first * cs, count * cs, "compressed data", false);
                    continue;
                }
                let Some(host) = e.host_offset() else {
                    continue;
                };
                let host = host.get();
                if geo.extended || !e.has_zero_flag() {
                    r.allocated_clusters += 1;
                }
                cnt.add(&mut r, host, cs, "data cluster", false);
                l2_checks.push((host, e.is_copied(), format!("L2 entry {i}/{j}")));
            }
        }

        let bits = 1u64 << geo.refcount_order;
        let per_block = cs * 8 / bits;
        let mut block = vec![0u8; cs as usize];
        let mut loaded = u64::MAX;
        let mut refcount_of = |c: u64, r: &mut CheckReport| -> Result<u64, Qcow2Error> {
            let bi = c / per_block;
            let Some(&e) = reftable.get(bi as usize) else {
                return Ok(0);
            };
            let off = e & !0x1ff;
            if off == 0 || !off.is_multiple_of(cs) || off >= file_len {
                return Ok(0);
            }
            if loaded != bi {
                core.read_exact(&mut block, HostOffset(off), "read refcount block")?;
                loaded = bi;
            }
            let _ = r;
            Ok(get_refcount(&block, c % per_block, bits))
        };
        let mut rcs = vec![0u64; 0];
        for c in 0..nclusters {
            let rc = refcount_of(c, &mut r)?;
            let refs = u64::from(cnt.refs[c as usize]);
            if rc > 0 || refs > 0 {
                r.image_end_offset = (c + 1) * cs;
            }
            if rc < refs {
                r.error(&format!("cluster {c} refcount={rc} reference={refs}"));
            } else if rc > refs {
                r.leak(&format!("cluster {c} refcount={rc} reference={refs}"));
                leaked(c, rc - refs);
            }
            if c < nclusters {
                rcs.push(rc);
            }
        }
        for (off, copied, what) in l2_checks {
            let c = off / cs;
            let Some(&rc) = rcs.get(c as usize) else {
                continue;
            };
            if (rc == 1) != copied {
                r.error(&format!(
                    "OFLAG_COPIED {what}: offset={off:#x} refcount={rc}"
                ));
            }
        }
        Ok(r)
    }
}
