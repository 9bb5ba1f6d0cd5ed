//! Files that appear whole or not at all: write under a temporary name, fsync, rename into
//! place, fsync the folder (without that last step a crash can lose the rename).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Writes `bytes` to `path` atomically with exactly the permission bits `mode` (e.g. `0o600`
/// for secrets, whatever the umask): a reader sees the old file or the new one, never a part,
/// and the new one survives a crash once this returns.
///
/// The data goes to a fresh `.NAME.<random>.tmp` beside `path` (created, never reused, so a
/// temporary left by a crash with other permissions cannot carry them over), is fsynced and
/// renamed over `path`, then the folder is fsynced. Temporaries of `path` that a crash left
/// are removed first.
///
/// # Errors
/// The failing I/O call's error; the temporary file is removed.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let (dir, name) = split(path)?;
    let prefix = format!(".{name}.");
    remove_stale_temps(dir, &prefix)?;
    let tmp = dir.join(format!("{prefix}{:016x}.tmp", unique()));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // create_new applied `mode` through the umask; make it exact.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    rename_durable(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// Renames a complete, already fsynced file `from` to `to` and fsyncs the folder of `to`, so
/// the new name survives a crash.
///
/// # Errors
/// The rename's or the folder fsync's error.
pub fn rename_durable(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)?;
    sync_parent(to)
}

/// Fsyncs the folder holding `path` (after a create, rename or unlink in it).
///
/// # Errors
/// Opening or syncing the folder failed.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    sync_dir(dir)
}

/// Fsyncs the folder `dir` itself (after creates, renames or unlinks in it; one call covers
/// all of them).
///
/// # Errors
/// Opening or syncing the folder failed.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The folder and the file name of `path`.
fn split(path: &Path) -> io::Result<(&Path, String)> {
    match (path.parent(), path.file_name()) {
        (Some(d), Some(n)) => Ok((
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            },
            n.to_string_lossy().into_owned(),
        )),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "path has no file name",
        )),
    }
}

/// Removes `DIR/<prefix>*.tmp`: temporary files of one target a crash left.
fn remove_stale_temps(dir: &Path, prefix: &str) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let file = entry.file_name();
        let file = file.to_string_lossy();
        if file.starts_with(prefix) && file.ends_with(".tmp") {
            tracing::warn!(file = %entry.path().display(), "removing a temporary file a crash left");
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// A value no other temporary of this process, or of another process now, uses.
fn unique() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (u64::from(std::process::id()) << 32 | u64::from(nanos))
        .wrapping_add(COUNTER.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn write_atomic_with_stale_temp_left_by_a_crash_does_not_reuse_it() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("api.token");
        let stale = dir.path().join(".api.token.00000000deadbeef.tmp");
        fs::write(&stale, b"old secret of a crashed write, world-readable").unwrap();
        fs::set_permissions(&stale, fs::Permissions::from_mode(0o644)).unwrap();

        write_atomic(&target, b"new", 0o600).unwrap();

        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            (fs::read(&target).unwrap(), mode(&target), names.len()),
            (b"new".to_vec(), 0o600, 1),
            "{names:?}"
        );
    }

    #[test]
    fn write_atomic_mode_is_exact_whatever_the_umask_allows() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("f");
        fs::write(&target, b"old").unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o666)).unwrap();

        write_atomic(&target, b"new", 0o640).unwrap();

        assert_eq!(mode(&target), 0o640);
    }

    #[test]
    fn write_atomic_replaces_the_file_with_the_mode_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.token");
        fs::write(&path, b"old").unwrap();
        write_atomic(&path, b"new secret", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new secret");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("api.token")]);
        let fresh = dir.path().join("fresh");
        write_atomic(&fresh, b"x", 0o600).unwrap();
        let mode = fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn write_atomic_into_a_missing_folder_fails_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("file");
        assert!(write_atomic(&path, b"x", 0o644).is_err());
        assert!(!dir.path().join("missing").exists());
    }

    #[test]
    fn rename_durable_moves_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.partial");
        let b = dir.path().join("b");
        fs::write(&a, b"data").unwrap();
        rename_durable(&a, &b).unwrap();
        assert!(!a.exists());
        assert_eq!(fs::read(&b).unwrap(), b"data");
        assert!(rename_durable(&a, &b).is_err(), "a is gone");
    }
}
