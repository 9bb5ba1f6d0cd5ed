//! Test data: an incompressible raw disk, a changed-block pass with its VMware `DiskChangeInfo`
//! file, and a byte comparison. The generator is SplitMix64: fast (the disk must be written in
//! seconds), deterministic from a seed, and incompressible to zlib and zstd.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// Granularity of changed blocks (VMware's CBT commonly reports 64 KiB blocks).
pub(crate) const BLOCK: u64 = 64 * 1024;
const CHUNK: usize = 1 << 20;

/// A SplitMix64 stream.
#[derive(Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Writes `size` incompressible bytes to `path` and fsyncs it.
pub(crate) fn write_random(path: &Path, size: u64, seed: u64) -> Result<()> {
    let mut file =
        File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut rng = Rng::new(seed);
    let mut buf = vec![0u8; CHUNK];
    let mut left = size;
    while left > 0 {
        let n = usize::try_from(left.min(CHUNK as u64)).unwrap_or(CHUNK);
        rng.fill(&mut buf[..n]);
        file.write_all(&buf[..n])
            .with_context(|| format!("cannot write {}", path.display()))?;
        left -= n as u64;
    }
    file.sync_all()
        .with_context(|| format!("cannot fsync {}", path.display()))
}

/// Rewrites `percent` % of the `BLOCK`s of `path` (one in eight with zeros, the rest with new
/// random data), fsyncs, and writes the changed areas as `DiskChangeInfo` JSON to `areas`.
/// Answers the number of bytes changed.
pub(crate) fn change_blocks(
    path: &Path,
    size: u64,
    percent: f64,
    areas: &Path,
    seed: u64,
) -> Result<u64> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let blocks = size / BLOCK;
    if blocks == 0 {
        bail!("the disk is smaller than one {BLOCK}-byte block");
    }
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let wanted = ((blocks as f64 * percent / 100.0).ceil() as u64).clamp(1, blocks);
    let mut chosen = vec![false; usize::try_from(blocks).context("disk too large")?];
    let mut rng = Rng::new(seed);
    let mut picked = 0u64;
    while picked < wanted {
        let i = usize::try_from(rng.next_u64() % blocks).unwrap_or(0);
        if !chosen[i] {
            chosen[i] = true;
            picked += 1;
        }
    }
    let mut buf = vec![0u8; usize::try_from(BLOCK).unwrap_or(65536)];
    let mut extents: Vec<(u64, u64)> = Vec::new();
    for (i, _) in chosen.iter().enumerate().filter(|(_, c)| **c) {
        let offset = i as u64 * BLOCK;
        if rng.next_u64().is_multiple_of(8) {
            buf.fill(0);
        } else {
            rng.fill(&mut buf);
        }
        file.write_all_at(&buf, offset)
            .with_context(|| format!("cannot write {}", path.display()))?;
        match extents.last_mut() {
            Some((start, len)) if *start + *len == offset => *len += BLOCK,
            _ => extents.push((offset, BLOCK)),
        }
    }
    file.sync_all()
        .with_context(|| format!("cannot fsync {}", path.display()))?;
    let changed: Vec<serde_json::Value> = extents
        .iter()
        .map(|(s, l)| serde_json::json!({"start": s, "length": l}))
        .collect();
    let info = serde_json::json!({"startOffset": 0, "length": size, "changedArea": changed});
    std::fs::write(areas, info.to_string())
        .with_context(|| format!("cannot write {}", areas.display()))?;
    Ok(picked * BLOCK)
}

/// One run of data in the sparse disk: `len` bytes of the dense disk at `from`, written at `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run {
    pub(crate) from: u64,
    pub(crate) to: u64,
    pub(crate) len: u64,
}

/// Where the `size` bytes of a dense disk go in a sparse disk of `virtual_size` bytes: at most
/// `runs` runs of equal length (a multiple of `BLOCK`, the last one shorter), each starting at a
/// `BLOCK`-aligned multiple of an even stride, the first at 0.
///
/// # Errors
/// `runs` is zero, or the runs do not fit in `virtual_size` with a hole between them.
pub(crate) fn sparse_layout(size: u64, virtual_size: u64, runs: u64) -> Result<Vec<Run>> {
    if runs == 0 || size == 0 {
        bail!("a sparse layout needs data and at least one run");
    }
    let len = size.div_ceil(runs).div_ceil(BLOCK).saturating_mul(BLOCK);
    let count = size.div_ceil(len);
    let stride = virtual_size / count / BLOCK * BLOCK;
    if stride <= len {
        bail!(
            "a sparse disk of {virtual_size} bytes cannot hold {size} bytes in {count} runs of              {len} bytes with holes between them: make it larger"
        );
    }
    Ok((0..count)
        .map(|i| Run {
            from: i * len,
            to: i * stride,
            len: len.min(size - i * len),
        })
        .collect())
}

/// Makes `sparse`: a file of `virtual_size` bytes (`set_len`, so all holes) holding the runs of
/// `layout` copied from `dense`, then fsyncs it.
pub(crate) fn write_sparse(
    dense: &Path,
    sparse: &Path,
    virtual_size: u64,
    layout: &[Run],
) -> Result<()> {
    let src = File::open(dense).with_context(|| format!("cannot open {}", dense.display()))?;
    let dst =
        File::create(sparse).with_context(|| format!("cannot create {}", sparse.display()))?;
    dst.set_len(virtual_size)
        .with_context(|| format!("cannot size {}", sparse.display()))?;
    let mut buf = vec![0u8; CHUNK];
    for run in layout {
        let mut done = 0u64;
        while done < run.len {
            let n = usize::try_from((run.len - done).min(CHUNK as u64)).unwrap_or(CHUNK);
            src.read_exact_at(&mut buf[..n], run.from + done)
                .with_context(|| format!("cannot read {}", dense.display()))?;
            dst.write_all_at(&buf[..n], run.to + done)
                .with_context(|| format!("cannot write {}", sparse.display()))?;
            done += n as u64;
        }
    }
    dst.sync_all()
        .with_context(|| format!("cannot fsync {}", sparse.display()))
}

/// Whether two files hold the same bytes.
pub(crate) fn same_content(a: &Path, b: &Path) -> Result<bool> {
    let mut fa = File::open(a).with_context(|| format!("cannot open {}", a.display()))?;
    let mut fb = File::open(b).with_context(|| format!("cannot open {}", b.display()))?;
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let mut ba = vec![0u8; CHUNK];
    let mut bb = vec![0u8; CHUNK];
    loop {
        let n = read_full(&mut fa, &mut ba)?;
        let m = read_full(&mut fb, &mut bb)?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let n = f.read(&mut buf[done..])?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_layout_tiny_disk_spreads_block_aligned_runs() {
        let layout = sparse_layout(8 << 20, 256 << 20, 64).unwrap();

        assert_eq!(
            (
                layout.len(),
                layout[1],
                layout.iter().map(|r| r.len).sum::<u64>()
            ),
            (
                64,
                Run {
                    from: 128 << 10,
                    to: 4 << 20,
                    len: 128 << 10
                },
                8 << 20
            )
        );
    }

    #[test]
    fn sparse_layout_uneven_size_last_run_is_shorter_and_fits() {
        let size = (3 << 20) + 1000;

        let layout = sparse_layout(size, 64 << 20, 64).unwrap();

        let last = layout.last().copied().unwrap();
        assert_eq!(
            (
                layout.iter().map(|r| r.len).sum::<u64>(),
                last.to + last.len <= 64 << 20
            ),
            (size, true)
        );
    }

    #[test]
    fn sparse_layout_virtual_too_small_is_refused() {
        assert!(sparse_layout(8 << 20, 8 << 20, 64).is_err());
    }

    #[test]
    fn write_sparse_copies_runs_and_leaves_holes_zero() {
        let dir = tempfile::tempdir().unwrap();
        let dense = dir.path().join("d.raw");
        let sparse = dir.path().join("s.raw");
        write_random(&dense, 1 << 20, 3).unwrap();
        let layout = sparse_layout(1 << 20, 16 << 20, 4).unwrap();

        write_sparse(&dense, &sparse, 16 << 20, &layout).unwrap();

        let d = std::fs::read(&dense).unwrap();
        let s = std::fs::read(&sparse).unwrap();
        let mut expected = vec![0u8; 16 << 20];
        for r in &layout {
            let at = |x: u64| usize::try_from(x).unwrap();
            let (from, to, len) = (at(r.from), at(r.to), at(r.len));
            expected[to..to + len].copy_from_slice(&d[from..from + len]);
        }
        assert!(s == expected);
    }

    #[test]
    fn change_blocks_two_percent_writes_areas_json() {
        let dir = std::env::temp_dir().join(format!("sendense-bench-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let disk = dir.join("d.raw");
        let areas = dir.join("a.json");
        write_random(&disk, 4 << 20, 1).unwrap();

        let changed = change_blocks(&disk, 4 << 20, 2.0, &areas, 2).unwrap();

        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&areas).unwrap()).unwrap();
        let total: u64 = json["changedArea"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["length"].as_u64().unwrap())
            .sum();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!((changed, total), (2 * BLOCK, 2 * BLOCK));
    }
}
