//! Which backing files an image may name: the caller's [`BackingPolicy`] (STYLE §6, as imago's
//! `ImplicitOpenGate` and the vmdk reader's extent policy).
//!
//! A QCOW2 header names its backing file as free text. Whoever wrote the image chooses it, so
//! opening it blindly lets a crafted image read any file the process can: `image serve` of an
//! image whose backing file is `/etc/shadow` would serve that file's bytes. Every backing file
//! therefore passes two checks before it is opened:
//!
//! 1. the name, as text, against the policy ([`BackingPolicy::check_name`], pure): no name at
//!    all under [`BackingPaths::Refuse`]; a bare file name under [`BackingPaths::SameFolder`];
//!    a relative name without `..` under [`BackingPaths::Below`];
//! 2. the file, after symlinks (`canonicalize`), against the folder of the image the caller
//!    opened (the *root*): a symlink in the folder that points elsewhere is refused like the
//!    name it points to. The canonical path is what gets opened.
//!
//! The declared (or, without a declaration, probed) format must be one the policy allows:
//! the hub's repository holds only QCOW2 images, so a `raw` backing file there is refused.
//!
//! The check and the open are two steps: someone who can rename files inside the root between
//! them can still swap in a symlink. The roots we use (the hub's 0700 repository, the folder of
//! an image an operator serves) are not writable by the authors of the images.

use std::collections::HashMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};

use crate::error::Qcow2Error;
use crate::layers::Layers;
use crate::parse::BackingFormat;
use crate::storage::{MemStorage, Storage};

/// Where the backing files named by an image may live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackingPaths {
    /// No backing file at all.
    Refuse,
    /// A bare file name (no `/`), resolving after symlinks to a file directly in the folder of
    /// the opened image.
    SameFolder,
    /// A relative name without `..`, resolving after symlinks to a file in the folder of the
    /// opened image or below it.
    Below,
    /// Any name, absolute or with `..` (relative names from the naming image's folder).
    Any,
}

/// The caller's policy for backing files: where they may live and which formats they may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackingPolicy {
    /// Where backing files may live.
    pub paths: BackingPaths,
    /// Whether a raw backing file is allowed (QCOW2 always is, unless `paths` refuses all).
    pub allow_raw: bool,
}

impl BackingPolicy {
    /// No backing file at all: an image naming one is refused.
    #[must_use]
    pub fn refuse() -> Self {
        Self {
            paths: BackingPaths::Refuse,
            allow_raw: false,
        }
    }

    /// The hub's repository: a bare file name in the image's own folder, QCOW2 only.
    #[must_use]
    pub fn repository() -> Self {
        Self {
            paths: BackingPaths::SameFolder,
            allow_raw: false,
        }
    }

    /// Image tools (`image serve`, `info`, `convert`, `check`): relative names in the image's
    /// folder or below it, QCOW2 or raw. The default of [`crate::OpenOptions`].
    #[must_use]
    pub fn below() -> Self {
        Self {
            paths: BackingPaths::Below,
            allow_raw: true,
        }
    }

    /// Any path, QCOW2 or raw: only for images whose author the caller trusts.
    #[must_use]
    pub fn any() -> Self {
        Self {
            paths: BackingPaths::Any,
            allow_raw: true,
        }
    }

    /// Checks a backing file name as text (no I/O).
    ///
    /// # Errors
    /// [`Qcow2Error::BackingRefused`] naming the file and this policy.
    pub fn check_name(&self, name: &str) -> Result<(), Qcow2Error> {
        let refuse = |reason| self.refused(name, reason);
        let rel = Path::new(name);
        match self.paths {
            BackingPaths::Refuse => Err(refuse("the image may not have a backing file")),
            BackingPaths::Any => Ok(()),
            BackingPaths::SameFolder | BackingPaths::Below => {
                if rel.is_absolute() {
                    return Err(refuse("absolute path"));
                }
                if rel.components().any(|c| c == Component::ParentDir) {
                    return Err(refuse("path contains .."));
                }
                if self.paths == BackingPaths::SameFolder
                    && (name.contains('/') || rel.components().count() != 1)
                {
                    return Err(refuse("not a bare file name"));
                }
                if !rel.components().any(|c| matches!(c, Component::Normal(_))) {
                    return Err(refuse("names no file"));
                }
                Ok(())
            }
        }
    }

    /// The path to open for backing file `name` of the image at `image` (which need not exist
    /// yet: `image create` asks before making it), after checking the name and, following
    /// symlinks, where it leads against the folder of `image`.
    ///
    /// # Errors
    /// [`Qcow2Error::BackingRefused`], [`Qcow2Error::BackingMissing`], or an I/O error
    /// resolving the folder or the file.
    pub fn resolve(&self, image: &Path, name: &str) -> Result<PathBuf, Qcow2Error> {
        self.check_name(name)?;
        let dir = match image.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let root = std::fs::canonicalize(dir).map_err(|e| Qcow2Error::io("resolve", dir, e))?;
        let (_, canonical) = resolve_file(self, image, name, &root, &Layers::none())?;
        Ok(canonical)
    }

    /// Checks a backing file's format.
    ///
    /// # Errors
    /// [`Qcow2Error::BackingFormatRefused`] for a raw backing file when raw is not allowed.
    pub fn check_format(&self, name: &str, format: BackingFormat) -> Result<(), Qcow2Error> {
        if format == BackingFormat::Raw && !self.allow_raw {
            return Err(Qcow2Error::BackingFormatRefused {
                name: name.to_owned(),
                format,
                policy: *self,
            });
        }
        Ok(())
    }

    /// Checks that `canonical` (a backing file after symlinks) lies where this policy allows,
    /// relative to `root`, the canonical folder of the image the caller opened.
    pub(crate) fn check_place(
        &self,
        name: &str,
        canonical: &Path,
        root: &Path,
    ) -> Result<(), Qcow2Error> {
        let inside = match self.paths {
            BackingPaths::Refuse => false,
            BackingPaths::Any => true,
            BackingPaths::SameFolder => canonical.parent() == Some(root),
            BackingPaths::Below => canonical.starts_with(root) && canonical != root,
        };
        if inside {
            Ok(())
        } else {
            Err(self.refused(name, "resolves outside the image's folder"))
        }
    }

    fn refused(&self, name: &str, reason: &'static str) -> Qcow2Error {
        Qcow2Error::BackingRefused {
            name: name.to_owned(),
            reason,
            policy: *self,
        }
    }
}

impl Default for BackingPolicy {
    fn default() -> Self {
        Self::below()
    }
}

impl fmt::Display for BackingPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let formats = if self.allow_raw {
            "qcow2 or raw"
        } else {
            "qcow2 only"
        };
        match self.paths {
            BackingPaths::Refuse => f.write_str("no backing file"),
            BackingPaths::SameFolder => {
                write!(f, "bare file name in the image's folder, {formats}")
            }
            BackingPaths::Below => {
                write!(f, "relative name in the image's folder or below, {formats}")
            }
            BackingPaths::Any => write!(f, "any path, {formats}"),
        }
    }
}

/// Resolves a backing file name from the file-system image at `image` (not yet checked against
/// the root): the path to open and its canonical form.
pub(crate) fn resolve_file(
    policy: &BackingPolicy,
    image: &Path,
    name: &str,
    root: &Path,
    layers: &Layers,
) -> Result<(PathBuf, PathBuf), Qcow2Error> {
    policy.check_name(name)?;
    let rel = Path::new(name);
    let joined = if rel.is_absolute() {
        rel.to_path_buf()
    } else {
        image
            .parent()
            .map_or_else(|| rel.to_path_buf(), |d| d.join(rel))
    };
    let canonical = match std::fs::canonicalize(&joined) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && layers.holds_missing(&joined) => {
            crate::layers::would_be_at(&joined)
        }
        other => other,
    };
    let canonical = canonical.map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Qcow2Error::BackingMissing {
                name: name.to_owned(),
                path: joined.clone(),
            }
        } else {
            Qcow2Error::io("resolve backing", &joined, e)
        }
    })?;
    policy.check_place(name, &canonical, root)?;
    Ok((joined, canonical))
}

/// Backing files held in memory, by the name an image stores: the file system of
/// [`crate::Image::open_storage_chain`], for tests and fuzzing.
///
/// Names are compared after dropping `.` components, so `./a` and `a` are one file. A lookup
/// hands out a fresh [`MemStorage`] holding a copy of the file.
#[derive(Debug, Default, Clone)]
pub struct MemFolder {
    files: HashMap<String, Vec<u8>>,
}

impl MemFolder {
    /// An empty folder.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the file `name`.
    pub fn insert(&mut self, name: &str, bytes: Vec<u8>) {
        self.files.insert(normalize(name), bytes);
    }

    /// The canonical name of `name` and a storage holding a copy of it.
    pub(crate) fn open(
        &self,
        policy: &BackingPolicy,
        name: &str,
    ) -> Result<(String, Box<dyn Storage>), Qcow2Error> {
        policy.check_name(name)?;
        let key = normalize(name);
        let bytes = self
            .files
            .get(&key)
            .ok_or_else(|| Qcow2Error::BackingMissing {
                name: name.to_owned(),
                path: PathBuf::from(&key),
            })?;
        Ok((key, Box::new(MemStorage::new(bytes.clone()))))
    }
}

fn normalize(name: &str) -> String {
    let p: PathBuf = Path::new(name)
        .components()
        .filter(|c| *c != Component::CurDir)
        .collect();
    p.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused_reason(policy: BackingPolicy, name: &str) -> &'static str {
        match policy.check_name(name) {
            Err(Qcow2Error::BackingRefused { reason, .. }) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn repository_bare_name_is_accepted() {
        assert!(BackingPolicy::repository().check_name("base.qcow2").is_ok());
    }

    #[test]
    fn repository_absolute_path_is_refused() {
        assert_eq!(
            refused_reason(BackingPolicy::repository(), "/etc/shadow"),
            "absolute path"
        );
    }

    #[test]
    fn repository_parent_dir_is_refused() {
        assert_eq!(
            refused_reason(BackingPolicy::repository(), "../../etc/shadow"),
            "path contains .."
        );
    }

    #[test]
    fn repository_subfolder_name_is_refused() {
        assert_eq!(
            refused_reason(BackingPolicy::repository(), "sub/base.qcow2"),
            "not a bare file name"
        );
    }

    #[test]
    fn repository_dot_slash_name_is_refused() {
        assert_eq!(
            refused_reason(BackingPolicy::repository(), "./base.qcow2"),
            "not a bare file name"
        );
    }

    #[test]
    fn repository_lone_dot_is_refused() {
        assert_eq!(
            refused_reason(BackingPolicy::repository(), "."),
            "names no file"
        );
    }

    #[test]
    fn repository_raw_format_is_refused() {
        let e = BackingPolicy::repository()
            .check_format("base.raw", BackingFormat::Raw)
            .unwrap_err();
        assert!(matches!(e, Qcow2Error::BackingFormatRefused { .. }), "{e}");
    }

    #[test]
    fn below_subfolder_name_is_accepted() {
        assert!(BackingPolicy::below().check_name("sub/base.qcow2").is_ok());
    }

    #[test]
    fn below_hidden_parent_dir_is_refused() {
        assert_eq!(
            refused_reason(BackingPolicy::below(), "sub/../../x"),
            "path contains .."
        );
    }

    #[test]
    fn below_raw_format_is_accepted() {
        assert!(
            BackingPolicy::below()
                .check_format("base.raw", BackingFormat::Raw)
                .is_ok()
        );
    }

    #[test]
    fn refuse_any_name_is_refused() {
        assert_eq!(
            refused_reason(BackingPolicy::refuse(), "base.qcow2"),
            "the image may not have a backing file"
        );
    }

    #[test]
    fn any_absolute_path_is_accepted() {
        assert!(BackingPolicy::any().check_name("/srv/base.qcow2").is_ok());
    }

    #[test]
    fn same_folder_place_in_subfolder_is_refused() {
        let e = BackingPolicy::repository()
            .check_place("b", Path::new("/r/sub/b"), Path::new("/r"))
            .unwrap_err();
        assert!(matches!(e, Qcow2Error::BackingRefused { .. }), "{e}");
    }

    #[test]
    fn below_place_outside_root_is_refused() {
        let e = BackingPolicy::below()
            .check_place("b", Path::new("/etc/shadow"), Path::new("/r"))
            .unwrap_err();
        assert!(matches!(e, Qcow2Error::BackingRefused { .. }), "{e}");
    }

    #[test]
    fn below_place_in_sibling_with_common_prefix_is_refused() {
        let e = BackingPolicy::below()
            .check_place("b", Path::new("/r2/b"), Path::new("/r"))
            .unwrap_err();
        assert!(matches!(e, Qcow2Error::BackingRefused { .. }), "{e}");
    }

    #[test]
    fn refusal_message_names_file_and_policy() {
        let e = BackingPolicy::repository()
            .check_name("/etc/shadow")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "Backing file \"/etc/shadow\" refused (absolute path) by the backing policy: \
             bare file name in the image's folder, qcow2 only"
        );
    }

    #[test]
    fn mem_folder_missing_name_is_backing_missing() {
        let e = MemFolder::new()
            .open(&BackingPolicy::below(), "base.qcow2")
            .unwrap_err();
        assert!(matches!(e, Qcow2Error::BackingMissing { .. }), "{e}");
    }
}
