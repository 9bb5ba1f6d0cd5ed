//! Layers of a chain that are not files on this machine: [`LayerSource`].
//!
//! A backup repository may keep some layers elsewhere (the hub's object tier: a restore point
//! whose local file was removed once a verified copy sat in a bucket). Opening a chain with a
//! source ([`crate::OpenOptions::layers`], [`crate::CreateOptions::layers`]) lets such a
//! layer be read in place, through whatever [`Storage`] the source gives, instead of first
//! copying it back: when the file a chain names does not exist, the chain asks the source for
//! the path the file would have, and opens the layer from the storage it answers, read-only.
//!
//! The path a source is asked about is absolute, with the symbolic links of its existing
//! folders resolved and `.`/`..` taken lexically below them ([`would_be_at`]), so a source
//! can key its layers by their canonical paths. The caller's [`crate::BackingPolicy`] still
//! decides whether the chain may name that path at all: a source never widens what a chain
//! may reach, it only stands in for files that are missing.

use std::fmt;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use crate::storage::Storage;

/// Where the layers that are missing as files can be read from.
pub trait LayerSource: Send + Sync + fmt::Debug {
    /// Whether this source holds the layer that would be the file at `path` (absolute, see
    /// [`would_be_at`]).
    fn holds(&self, path: &Path) -> bool;

    /// Opens that layer for reading. Only called for paths [`LayerSource::holds`] accepts.
    ///
    /// # Errors
    /// Whatever keeps the source from reading the layer.
    fn open(&self, path: &Path) -> io::Result<Box<dyn Storage>>;
}

/// An optional [`LayerSource`] as the open options carry it; equal when it is the same
/// source (or both have none).
#[derive(Clone, Default)]
pub struct Layers(Option<Arc<dyn LayerSource>>);

impl Layers {
    /// No source: a missing file is a missing file.
    #[must_use]
    pub fn none() -> Self {
        Self(None)
    }

    /// Missing files are looked for in `source`.
    #[must_use]
    pub fn from_source(source: Arc<dyn LayerSource>) -> Self {
        Self(Some(source))
    }

    /// The source, if any.
    #[must_use]
    pub fn source(&self) -> Option<&Arc<dyn LayerSource>> {
        self.0.as_ref()
    }

    /// The source's storage for the layer that would be the missing file `path`, when the
    /// source holds it: `Ok(None)` when there is no source or it does not.
    pub(crate) fn open_missing(&self, path: &Path) -> io::Result<Option<Box<dyn Storage>>> {
        let Some(source) = &self.0 else {
            return Ok(None);
        };
        let at = would_be_at(path)?;
        if !source.holds(&at) {
            return Ok(None);
        }
        source.open(&at).map(Some)
    }

    /// Whether the source holds the layer that would be the missing file `path`.
    pub(crate) fn holds_missing(&self, path: &Path) -> bool {
        self.0
            .as_ref()
            .is_some_and(|s| would_be_at(path).is_ok_and(|at| s.holds(&at)))
    }
}

impl fmt::Debug for Layers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str("Layers(none)"),
            Some(s) => f.debug_tuple("Layers").field(s).finish(),
        }
    }
}

impl PartialEq for Layers {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for Layers {}

/// The canonical path a file at `path` would have, whether or not it exists: the deepest
/// existing ancestor of `path` canonicalized (symbolic links resolved), then the remaining
/// components applied lexically (`..` removes the last one, `.` nothing). A relative `path`
/// is taken from the current folder.
///
/// # Errors
/// When no ancestor can be canonicalized (not even `/`), or the current folder is unknown.
pub fn would_be_at(path: &Path) -> io::Result<PathBuf> {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    };
    let mut rest = Vec::new();
    let mut base = absolute.as_path();
    let canonical = loop {
        match std::fs::canonicalize(base) {
            Ok(c) => break c,
            Err(e) => {
                let (Some(parent), Some(name)) = (base.parent(), base.file_name()) else {
                    // `..` as a last component has no file name: step over it too.
                    match base.parent() {
                        Some(parent) => {
                            rest.push(Component::ParentDir);
                            base = parent;
                            continue;
                        }
                        None => return Err(e),
                    }
                };
                rest.push(Component::Normal(name));
                base = parent;
            }
        }
    };
    let mut out = canonical;
    for c in rest.into_iter().rev() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => out.push(name),
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;
    use crate::{BackingPolicy, BackingSpec, CreateOptions, Image, OpenOptions, Qcow2Error};
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// Layers held in memory by canonical path, counting opens.
    #[derive(Debug, Default)]
    struct MemLayers {
        files: HashMap<PathBuf, Vec<u8>>,
        opened: Mutex<Vec<PathBuf>>,
    }

    impl LayerSource for MemLayers {
        fn holds(&self, path: &Path) -> bool {
            self.files.contains_key(path)
        }

        fn open(&self, path: &Path) -> io::Result<Box<dyn Storage>> {
            self.opened.lock().unwrap().push(path.to_path_buf());
            let bytes = self.files.get(path).ok_or(io::ErrorKind::NotFound)?;
            Ok(Box::new(MemStorage::new(bytes.clone())))
        }
    }

    /// base (A at 0) <- mid (B at 64 KiB) <- top (C at 128 KiB), in `dir/vm/`.
    fn three_layers(dir: &Path) -> [PathBuf; 3] {
        let vm = dir.join("vm");
        std::fs::create_dir(&vm).unwrap();
        let paths = ["base", "mid", "top"].map(|n| vm.join(format!("{n}.qcow2")));
        let mut backing = None;
        for (i, path) in paths.iter().enumerate() {
            let mut opts = CreateOptions::new(1 << 20);
            if let Some(b) = backing.take() {
                opts = opts.backing(BackingSpec::qcow2(b));
            }
            let image = Image::create(path, &opts).unwrap();
            let byte = b'A' + u8::try_from(i).unwrap();
            image
                .write_at(&vec![byte; 65536], i as u64 * 65536)
                .unwrap();
            image.flush().unwrap();
            backing = Some(format!("{}", path.file_name().unwrap().to_string_lossy()));
        }
        paths
    }

    fn take(paths: &[&PathBuf]) -> MemLayers {
        let mut layers = MemLayers::default();
        for path in paths {
            let canonical = std::fs::canonicalize(path).unwrap();
            layers.files.insert(canonical, std::fs::read(path).unwrap());
            std::fs::remove_file(path).unwrap();
        }
        layers
    }

    fn read_three(image: &Image) -> Vec<u8> {
        let mut buf = vec![0u8; 3 * 65536];
        image.read_at(&mut buf, 0).unwrap();
        buf
    }

    fn expected() -> Vec<u8> {
        [b'A', b'B', b'C']
            .iter()
            .flat_map(|b| vec![*b; 65536])
            .collect()
    }

    #[test]
    fn missing_layers_anywhere_in_the_chain_are_read_from_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let [base, mid, top] = three_layers(dir.path());
        let source = Arc::new(take(&[&base, &top]));
        let opts = OpenOptions::read_only()
            .backing(BackingPolicy::repository())
            .layers(Arc::clone(&source) as Arc<dyn LayerSource>);

        let image = Image::open(&top, &opts).unwrap();

        assert_eq!(read_three(&image), expected());
        assert_eq!(source.opened.lock().unwrap().len(), 2);
        assert!(mid.exists());
    }

    #[test]
    fn without_a_source_a_missing_backing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let [_, mid, top] = three_layers(dir.path());
        let _gone = take(&[&mid]);

        let err = Image::open(&top, &OpenOptions::read_only()).unwrap_err();

        assert!(matches!(err, Qcow2Error::BackingMissing { .. }), "{err}");
    }

    #[test]
    fn a_source_never_opens_a_layer_the_policy_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let [_, mid, top] = three_layers(dir.path());
        let source = Arc::new(take(&[&mid]));
        let opts = OpenOptions::read_only()
            .backing(BackingPolicy::refuse())
            .layers(Arc::clone(&source) as Arc<dyn LayerSource>);

        let err = Image::open(&top, &opts).unwrap_err();

        assert!(matches!(err, Qcow2Error::BackingRefused { .. }), "{err}");
        assert!(source.opened.lock().unwrap().is_empty());
    }

    #[test]
    fn a_writable_open_never_takes_its_top_layer_from_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let [_, _, top] = three_layers(dir.path());
        let source = Arc::new(take(&[&top]));
        let opts = OpenOptions::writable().layers(Arc::clone(&source) as Arc<dyn LayerSource>);

        assert!(Image::open(&top, &opts).is_err());
        assert!(source.opened.lock().unwrap().is_empty());
    }

    #[test]
    fn an_overlay_is_created_over_a_layer_only_the_source_holds() {
        let dir = tempfile::tempdir().unwrap();
        let [_, _, top] = three_layers(dir.path());
        let source = Arc::new(take(&[&top]));
        let overlay = dir.path().join("vm/overlay.qcow2");
        let opts = CreateOptions::new(1 << 20)
            .backing(BackingSpec::qcow2("top.qcow2"))
            .layers(Arc::clone(&source) as Arc<dyn LayerSource>);

        let image = Image::create(&overlay, &opts).unwrap();

        assert_eq!(read_three(&image), expected());
    }

    #[test]
    fn an_existing_file_is_its_canonical_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.qcow2");
        std::fs::write(&file, b"x").unwrap();

        assert_eq!(
            would_be_at(&file).unwrap(),
            std::fs::canonicalize(&file).unwrap()
        );
    }

    #[test]
    fn a_missing_file_in_missing_folders_resolves_dot_dot_lexically_below_what_exists() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let path = dir.path().join("vm-a/../vm-b/./x/../disk.qcow2");

        assert_eq!(would_be_at(&path).unwrap(), root.join("vm-b/disk.qcow2"));
    }

    #[test]
    fn symbolic_links_of_existing_folders_are_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();

        assert_eq!(
            would_be_at(&link.join("gone.qcow2")).unwrap(),
            std::fs::canonicalize(&real).unwrap().join("gone.qcow2")
        );
    }
}
