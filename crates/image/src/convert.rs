//! `image convert`: QCOW2 (with chain) or raw in; sparse raw or QCOW2 out;
//! with a backing file, an overlay holding only what differs from it.
//!
//! The work is split into chunks aligned to a fixed grid (a multiple of every
//! cluster size), so no two worker threads ever touch the same output cluster;
//! each worker reads its chunk, drops all-zero clusters (or, for an overlay,
//! clusters equal to the backing image) and writes the rest with large
//! positional writes. The output is written under a temporary name in the
//! destination folder and renamed into place only once it is complete and
//! durable, so a failed or interrupted convert never leaves a half image under
//! the requested name.
//!
//! Chunks are read into page-aligned buffers, so the writes of whole clusters
//! (QCOW2) and blocks (raw) bypass the page cache with `O_DIRECT` where the file
//! system allows it (see `sendense_qcow2::storage`).

use std::fs::{self, OpenOptions as FsOpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use sendense_qcow2::{
    AlignedBuf, BackingPolicy, BackingSpec, CreateOptions, FileStorage, Image, Storage,
};

use sendense_io::extent::merge;
use sendense_io::{Extent, is_zero};

use super::input::Input;
use super::{ImageError, open_backing, progress_bar};

/// Guest bytes handled by one work item: a multiple of every legal cluster size.
const CHUNK: u64 = 4 << 20;
/// Granularity at which a raw output skips zeros.
const RAW_BLOCK: u64 = 64 << 10;

/// Output format of `image convert`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// A sparse raw file.
    Raw,
    /// A QCOW2 v3 image.
    Qcow2,
}

/// Options of [`convert`].
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// Format to write.
    pub format: OutputFormat,
    /// Make the output an overlay of this file (stored verbatim; a relative
    /// name is resolved from the output's folder). QCOW2 output only.
    pub backing: Option<String>,
    /// Cluster size of a QCOW2 output (default 64 KiB).
    pub cluster_size: Option<u32>,
    /// Worker threads (at least 1).
    pub threads: usize,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Which backing files the input's chain and `backing` may name.
    pub backing_policy: BackingPolicy,
}

/// What a conversion did.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ConvertReport {
    /// Virtual size of the output.
    pub virtual_size: u64,
    /// Guest bytes read from the input (the rest was known to be zero).
    pub bytes_read: u64,
    /// Bytes of data written into the output.
    pub bytes_written: u64,
    /// Bytes marked zero in an overlay (to mask backing data).
    pub bytes_zeroed: u64,
    /// Wall-clock seconds, fsync included.
    pub seconds: f64,
}

/// Converts `input` into `output` as `opts` say.
///
/// # Errors
/// Unreadable input, an unusable backing file, or a failed write; the
/// destination is then left untouched.
pub fn convert(
    input: &Path,
    output: &Path,
    opts: &ConvertOptions,
) -> Result<ConvertReport, ImageError> {
    let started = Instant::now();
    let source = Input::open_with(input, opts.backing_policy)?;
    let size = source.size();
    if opts.backing.is_some() && opts.format != OutputFormat::Qcow2 {
        return Err(ImageError::BackingNeedsQcow2);
    }
    let backing = match &opts.backing {
        Some(name) => Some(open_backing(output, name, opts.backing_policy)?),
        None => None,
    };
    let grid = match opts.format {
        OutputFormat::Qcow2 => u64::from(opts.cluster_size.unwrap_or(65536)),
        OutputFormat::Raw => RAW_BLOCK,
    };

    let mut regions = source.data_extents()?;
    if let Some((_, b)) = &backing {
        let mut theirs = b.data_extents()?;
        theirs.retain(|r| r.offset < size);
        regions.append(&mut theirs);
        regions = merge(regions);
    }
    let chunks = chunk_regions(&regions, grid, size);

    let temp = temp_name(output)?;
    let sink = Sink::create(&temp, size, opts, backing.as_ref().map(|(spec, _)| spec))?;
    let work = Work {
        source: &source,
        backing: backing.as_ref().map(|(_, b)| b),
        sink: &sink,
        temp: &temp,
        chunks: &chunks,
        grid,
        next: AtomicUsize::new(0),
        failed: AtomicBool::new(false),
        error: Mutex::new(None),
        totals: Mutex::new((0, 0, 0)),
        bar: progress_bar(
            opts.progress,
            chunks.iter().map(|c| c.length).sum(),
            "converting",
        ),
    };
    std::thread::scope(|scope| {
        for _ in 0..opts.threads.max(1) {
            scope.spawn(|| work.run());
        }
    });
    work.bar.finish_and_clear();
    let error = work
        .error
        .lock()
        .map_err(|_| ImageError::WorkerPanicked)?
        .take();
    if let Some(e) = error {
        sink.abandon(&temp);
        return Err(e);
    }
    let (bytes_read, bytes_written, bytes_zeroed) =
        *work.totals.lock().map_err(|_| ImageError::WorkerPanicked)?;
    if let Err(e) = sink.finish(&temp, output) {
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    Ok(ConvertReport {
        virtual_size: size,
        bytes_read,
        bytes_written,
        bytes_zeroed,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Where the output is written until it is complete.
enum Sink {
    Qcow2(Box<Image>),
    Raw(FileStorage),
}

impl Sink {
    fn create(
        temp: &Path,
        size: u64,
        opts: &ConvertOptions,
        backing: Option<&BackingSpec>,
    ) -> Result<Self, ImageError> {
        match opts.format {
            OutputFormat::Qcow2 => {
                let mut create = CreateOptions::new(size);
                if let Some(cs) = opts.cluster_size {
                    create.cluster_size = cs;
                }
                create.backing = backing.cloned();
                create.backing_policy = opts.backing_policy;
                let image = Image::create(temp, &create).map_err(|e| ImageError::qcow2(temp, e))?;
                Ok(Self::Qcow2(Box::new(image)))
            }
            OutputFormat::Raw => {
                let file = FsOpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(temp)
                    .map_err(|e| ImageError::io(temp, e))?;
                file.set_len(size).map_err(|e| ImageError::io(temp, e))?;
                Ok(Self::Raw(FileStorage::with_direct_io(file, temp, true)))
            }
        }
    }

    fn write(&self, temp: &Path, data: &[u8], offset: u64) -> Result<(), ImageError> {
        match self {
            Self::Qcow2(image) => image
                .write_at(data, offset)
                .map_err(|e| ImageError::qcow2(temp, e)),
            Self::Raw(file) => file
                .write_data_at(data, offset)
                .map_err(|e| ImageError::io(temp, e)),
        }
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), ImageError> {
        match self {
            Self::Qcow2(image) => image
                .write_zeroes(offset, len)
                .map_err(|e| ImageError::qcow2(image.path(), e)),
            // A raw output starts as a hole: zeros need no write.
            Self::Raw(_) => Ok(()),
        }
    }

    fn finish(self, temp: &Path, output: &Path) -> Result<(), ImageError> {
        match self {
            Self::Qcow2(image) => (*image)
                .finalize(output)
                .map_err(|e| ImageError::qcow2(temp, e)),
            Self::Raw(file) => {
                file.sync_all().map_err(|e| ImageError::io(temp, e))?;
                drop(file);
                sendense_io::rename_durable(temp, output).map_err(|e| ImageError::io(output, e))
            }
        }
    }

    fn abandon(self, temp: &Path) {
        drop(self);
        let _ = fs::remove_file(temp);
    }
}

/// Shared state of the worker threads.
struct Work<'a> {
    source: &'a Input,
    backing: Option<&'a Input>,
    sink: &'a Sink,
    temp: &'a Path,
    chunks: &'a [Extent],
    grid: u64,
    next: AtomicUsize,
    failed: AtomicBool,
    error: Mutex<Option<ImageError>>,
    /// (bytes read, bytes written, bytes zeroed)
    totals: Mutex<(u64, u64, u64)>,
    bar: indicatif::ProgressBar,
}

impl Work<'_> {
    fn run(&self) {
        let mut buf = AlignedBuf::zeroed(usize_of(CHUNK));
        let mut theirs = if self.backing.is_some() {
            vec![0u8; usize_of(CHUNK)]
        } else {
            Vec::new()
        };
        while !self.failed.load(Ordering::Relaxed) {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(&Extent {
                offset,
                length: len,
            }) = self.chunks.get(i)
            else {
                break;
            };
            match self.chunk(offset, &mut buf[..usize_of(len)], &mut theirs) {
                Ok(counts) => {
                    if let Ok(mut t) = self.totals.lock() {
                        t.0 += len;
                        t.1 += counts.0;
                        t.2 += counts.1;
                    }
                    self.bar.inc(len);
                }
                Err(e) => {
                    self.failed.store(true, Ordering::Relaxed);
                    if let Ok(mut slot) = self.error.lock() {
                        slot.get_or_insert(e);
                    }
                }
            }
        }
    }

    /// Converts one chunk; returns (bytes written, bytes zeroed).
    fn chunk(
        &self,
        offset: u64,
        buf: &mut [u8],
        theirs: &mut [u8],
    ) -> Result<(u64, u64), ImageError> {
        self.source.read_at(buf, offset)?;
        let block = usize_of(self.grid);
        let mut written = 0u64;
        let mut zeroed = 0u64;
        // Classify each block, then write maximal runs of equal action.
        let backing_view: Option<&[u8]> = match self.backing {
            Some(b) => {
                let theirs = &mut theirs[..buf.len()];
                read_clipped(b, theirs, offset)?;
                Some(theirs)
            }
            None => None,
        };
        let mut run: Option<(Action, usize)> = None;
        let mut pos = 0usize;
        while pos <= buf.len() {
            let action = if pos == buf.len() {
                None
            } else {
                let end = (pos + block).min(buf.len());
                Some(classify(&buf[pos..end], backing_view.map(|t| &t[pos..end])))
            };
            match (run, action) {
                (Some((a, _)), Some(b)) if a == b => {}
                (prev, next) => {
                    if let Some((a, start)) = prev {
                        let at = offset + start as u64;
                        match a {
                            Action::Write => {
                                self.sink.write(self.temp, &buf[start..pos], at)?;
                                written += (pos - start) as u64;
                            }
                            Action::Zero => {
                                self.sink.write_zeroes(at, (pos - start) as u64)?;
                                zeroed += (pos - start) as u64;
                            }
                            Action::Skip => {}
                        }
                    }
                    run = next.map(|b| (b, pos));
                }
            }
            if pos == buf.len() {
                break;
            }
            pos = (pos + block).min(buf.len());
        }
        Ok((written, zeroed))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Skip,
    Write,
    Zero,
}

/// What one output block needs: nothing, its data, or a zero mark.
fn classify(ours: &[u8], theirs: Option<&[u8]>) -> Action {
    match theirs {
        None if is_zero(ours) => Action::Skip,
        None => Action::Write,
        Some(t) if t == ours => Action::Skip,
        Some(_) if is_zero(ours) => Action::Zero,
        Some(_) => Action::Write,
    }
}

/// Reads `buf.len()` bytes at `offset`, zeros past the image's end.
fn read_clipped(input: &Input, buf: &mut [u8], offset: u64) -> Result<(), ImageError> {
    let size = input.size();
    let avail = usize_of(size.saturating_sub(offset).min(buf.len() as u64));
    buf[avail..].fill(0);
    if avail > 0 {
        input.read_at(&mut buf[..avail], offset)?;
    }
    Ok(())
}

/// Widens runs to `grid` boundaries, merges them, and cuts them at every
/// multiple of [`CHUNK`], clipped to `size`.
fn chunk_regions(regions: &[Extent], grid: u64, size: u64) -> Vec<Extent> {
    let aligned = merge(
        regions
            .iter()
            .map(|r| {
                let start = r.offset / grid * grid;
                let end = r.end().div_ceil(grid).saturating_mul(grid).min(size);
                Extent::new(start, end.saturating_sub(start))
            })
            .collect(),
    );
    let mut chunks = Vec::new();
    for r in aligned {
        let mut at = r.offset;
        let end = r.end();
        while at < end {
            let next = ((at / CHUNK) + 1) * CHUNK;
            let stop = next.min(end);
            chunks.push(Extent::new(at, stop - at));
            at = stop;
        }
    }
    chunks
}

/// A hidden temporary name beside `output`.
fn temp_name(output: &Path) -> Result<PathBuf, ImageError> {
    let name = output
        .file_name()
        .ok_or_else(|| ImageError::BadOutputPath(output.to_path_buf()))?
        .to_string_lossy();
    Ok(output.with_file_name(format!(".{name}.part-{}", std::process::id())))
}

/// A chunk-sized length as `usize` (chunks are at most [`CHUNK`]).
fn usize_of(n: u64) -> usize {
    usize::try_from(n).expect("chunk lengths are at most CHUNK, which fits usize")
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn e(offset: u64, length: u64) -> Extent {
        Extent::new(offset, length)
    }

    #[test]
    fn chunk_regions_with_unaligned_runs_align_merge_and_split() {
        let chunks = chunk_regions(&[e(100, 10), e(70_000, 10), e(5 << 20, 1)], 65536, 8 << 20);
        assert_eq!(chunks, vec![e(0, 131_072), e(5 << 20, 65536)]);
    }

    #[test]
    fn chunk_regions_with_long_run_splits_at_chunk_grid() {
        let chunks = chunk_regions(&[e(1 << 20, 8 << 20)], 65536, 16 << 20);
        assert_eq!(
            chunks,
            vec![
                e(1 << 20, 3 << 20),
                e(4 << 20, 4 << 20),
                e(8 << 20, 1 << 20)
            ]
        );
    }

    #[test]
    fn union_of_own_and_backing_runs_with_overlaps_merges() {
        assert_eq!(
            merge(vec![e(0, 10), e(50, 10), e(5, 10), e(100, 1)]),
            vec![e(0, 15), e(50, 10), e(100, 1)]
        );
    }

    #[test]
    fn classify_overlay_blocks_masks_only_differences() {
        assert_eq!(classify(&[0; 4], None), Action::Skip);
        assert_eq!(classify(&[1; 4], None), Action::Write);
        assert_eq!(classify(&[1; 4], Some(&[1; 4])), Action::Skip);
        assert_eq!(classify(&[0; 4], Some(&[1; 4])), Action::Zero);
        assert_eq!(classify(&[2; 4], Some(&[1; 4])), Action::Write);
    }
}
