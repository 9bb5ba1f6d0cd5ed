//! Images the tools read: QCOW2 (with its backing chain, through our engine)
//! or raw files, told apart by content (the QCOW2 magic `QFI\xfb`).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sendense_io::Extent;
use sendense_io::extent::merge;
use sendense_qcow2::{BackingPolicy, ExtentState, Image, OpenOptions};

use super::ImageError;

/// QCOW2 files begin with these four bytes.
pub const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

/// A readable disk image: QCOW2 (chain included) or raw.
#[derive(Debug)]
pub enum Input {
    /// A QCOW2 image opened read-only with its backing chain.
    Qcow2(Box<Image>),
    /// A raw file; its length is the disk size.
    Raw(RawFile),
}

/// A raw disk image file.
#[derive(Debug)]
pub struct RawFile {
    path: PathBuf,
    file: File,
    size: u64,
}

impl Input {
    /// Opens `path` read-only, detecting QCOW2 by its magic; a QCOW2 chain
    /// under [`BackingPolicy::below`].
    ///
    /// # Errors
    /// The file cannot be opened or read, or it is a QCOW2 our engine refuses.
    pub fn open(path: &Path) -> Result<Self, ImageError> {
        Self::open_with(path, BackingPolicy::below())
    }

    /// Opens `path` read-only, detecting QCOW2 by its magic; a QCOW2 chain
    /// opens backing files only as `policy` allows.
    ///
    /// # Errors
    /// The file cannot be opened or read, or it is a QCOW2 our engine (or
    /// the policy) refuses.
    pub fn open_with(path: &Path, policy: BackingPolicy) -> Result<Self, ImageError> {
        if is_qcow2(path)? {
            let image = Image::open(path, &OpenOptions::read_only().backing(policy))
                .map_err(|source| ImageError::qcow2(path, source))?;
            Ok(Self::Qcow2(Box::new(image)))
        } else {
            let file = File::open(path).map_err(|e| ImageError::io(path, e))?;
            let size = file.metadata().map_err(|e| ImageError::io(path, e))?.len();
            Ok(Self::Raw(RawFile {
                path: path.to_path_buf(),
                file,
                size,
            }))
        }
    }

    /// Short format name, as `qemu-img` spells it.
    pub fn format(&self) -> &'static str {
        match self {
            Self::Qcow2(_) => "qcow2",
            Self::Raw(_) => "raw",
        }
    }

    /// Virtual size in bytes.
    pub fn size(&self) -> u64 {
        match self {
            Self::Qcow2(image) => image.virtual_size(),
            Self::Raw(raw) => raw.size,
        }
    }

    /// Reads exactly `buf.len()` bytes at `offset` (zeros past a raw file's end).
    ///
    /// # Errors
    /// An I/O error, or a corrupt QCOW2 image.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), ImageError> {
        match self {
            Self::Qcow2(image) => image
                .read_at(buf, offset)
                .map_err(|e| ImageError::qcow2(image.path(), e)),
            Self::Raw(raw) => raw.read_at(buf, offset),
        }
    }

    /// The `(offset, length)` runs that may hold non-zero data, in order;
    /// everything else reads as zeros.
    ///
    /// # Errors
    /// An I/O error, or a corrupt QCOW2 image.
    pub fn data_extents(&self) -> Result<Vec<Extent>, ImageError> {
        match self {
            Self::Qcow2(image) => {
                let extents = image
                    .chain_status(0, image.virtual_size())
                    .map_err(|e| ImageError::qcow2(image.path(), e))?;
                Ok(merge(
                    extents
                        .iter()
                        .filter(|e| e.state == ExtentState::Data)
                        .map(|e| Extent::new(e.offset, e.length))
                        .collect(),
                ))
            }
            Self::Raw(raw) => raw.data_extents(),
        }
    }
}

impl RawFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), ImageError> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            match self.file.read_at(&mut buf[done..], at) {
                Ok(0) => {
                    // Past the end of the file: a raw image reads zeros there.
                    buf[done..].fill(0);
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ImageError::io(&self.path, e)),
            }
        }
        Ok(())
    }

    /// Data runs from `SEEK_DATA`/`SEEK_HOLE` ([`sendense_io::sparse::data_runs`]); a file
    /// system without them reports the whole file as data, which is correct, only slower.
    fn data_extents(&self) -> Result<Vec<Extent>, ImageError> {
        sendense_io::sparse::data_runs(&self.file, 0, self.size)
            .map_err(|e| ImageError::io(&self.path, e))
    }
}

/// True when the file begins with the QCOW2 magic.
///
/// # Errors
/// The file cannot be opened or read.
pub fn is_qcow2(path: &Path) -> Result<bool, ImageError> {
    let file = File::open(path).map_err(|e| ImageError::io(path, e))?;
    let mut magic = [0u8; 4];
    match file.read_exact_at(&mut magic, 0) {
        Ok(()) => Ok(magic == QCOW2_MAGIC),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(ImageError::io(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_with_touching_runs_merges_them() {
        let e = Extent::new;
        let runs = merge(vec![e(0, 10), e(10, 5), e(20, 5), e(30, 0)]);
        assert_eq!(runs, vec![e(0, 15), e(20, 5)]);
    }

    #[test]
    fn raw_data_extents_of_sparse_file_skip_holes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse.raw");
        let file = File::create(&path).unwrap();
        file.set_len(64 << 20).unwrap();
        file.write_all_at(&[7u8; 4096], 32 << 20).unwrap();
        drop(file);
        let input = Input::open(&path).unwrap();
        let runs = input.data_extents().unwrap();
        let covered: u64 = runs.iter().map(|r| r.length).sum();
        assert!(
            runs.iter()
                .any(|r| r.offset <= 32 << 20 && r.end() >= (32 << 20) + 4096)
        );
        assert!(
            covered < 64 << 20,
            "holes must not be reported as data: {runs:?}"
        );
    }
}
