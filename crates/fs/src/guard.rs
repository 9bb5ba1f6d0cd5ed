//! The one place where a panic inside a third-party file system crate is contained.
//!
//! `ext4-view`, `ntfs` and `fatfs` parse hostile images; our adapters check what they can, but
//! a panic inside one of those crates must not take the hub's request thread down. [`contain`]
//! runs one call under `catch_unwind` and turns a panic into [`FsError::Corrupt`];
//! [`Guarded`] wraps every call of an open file system that way and, after a panic, refuses
//! further calls (the library's state may be half-updated). Our own code does not panic on
//! disk data: the fuzz targets abort on any panic outside a third-party crate.

use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::error::FsError;
use crate::{Entry, FileSystem, FsKind, FsPath};

/// Runs `f`, turning a panic into [`FsError::Corrupt`] about `what`.
///
/// # Errors
/// What `f` answers, or [`FsError::Corrupt`] when it panicked.
pub(crate) fn contain<T>(
    what: &'static str,
    f: impl FnOnce() -> Result<T, FsError>,
) -> Result<T, FsError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".to_owned());
        tracing::warn!(what, panic = %msg, "file system library panicked on a damaged image");
        Err(FsError::Corrupt {
            what,
            detail: format!("the reader gave up on damaged metadata ({msg})"),
        })
    })
}

/// A file system whose every call runs under [`contain`].
pub(crate) struct Guarded {
    inner: Box<dyn FileSystem>,
    what: &'static str,
    poisoned: bool,
}

impl Guarded {
    pub(crate) fn new(inner: Box<dyn FileSystem>, what: &'static str) -> Self {
        Self {
            inner,
            what,
            poisoned: false,
        }
    }

    fn call<T>(
        &mut self,
        f: impl FnOnce(&mut dyn FileSystem) -> Result<T, FsError>,
    ) -> Result<T, FsError> {
        if self.poisoned {
            return Err(FsError::Corrupt {
                what: self.what,
                detail: "an earlier call found damaged metadata; open it again".to_owned(),
            });
        }
        let inner = &mut *self.inner;
        let mut panicked = true;
        let out = contain(self.what, || {
            let r = f(inner);
            panicked = false;
            r
        });
        self.poisoned = panicked;
        out
    }
}

impl FileSystem for Guarded {
    fn kind(&self) -> FsKind {
        self.inner.kind()
    }

    fn stat(&mut self, path: &FsPath) -> Result<Entry, FsError> {
        self.call(|fs| fs.stat(path))
    }

    fn list(&mut self, path: &FsPath) -> Result<Vec<Entry>, FsError> {
        self.call(|fs| fs.list(path))
    }

    fn read(&mut self, path: &FsPath, offset: u64, buf: &mut [u8]) -> Result<usize, FsError> {
        self.call(|fs| fs.read(path, offset, buf))
    }
}
