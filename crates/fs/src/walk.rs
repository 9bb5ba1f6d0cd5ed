//! A bounded depth-first walk over a folder, for `find` and tar streams.

use crate::error::FsError;
use crate::{Entry, EntryKind, FileSystem, FsPath, limits};

/// Calls `visit` with the path and entry of everything below `root`, depth first, each folder
/// before its contents and entries in the file system's order. Symbolic links are not
/// followed. `visit` answering an error stops the walk with it.
///
/// # Errors
/// What `list` answers for `root` or a folder below it (a folder that cannot be listed stops
/// the walk), [`FsError::TooLarge`] for folders nested deeper than [`limits::MAX_DEPTH`],
/// or what `visit` answers.
pub fn walk(
    fs: &mut dyn FileSystem,
    root: &FsPath,
    visit: &mut dyn FnMut(&FsPath, &Entry) -> Result<(), FsError>,
) -> Result<(), FsError> {
    // Pending entries, the next one last; with its depth below `root` (1 = in `root`).
    let mut stack: Vec<(FsPath, Entry, usize)> = Vec::new();
    push_children(fs, root, 1, &mut stack)?;
    while let Some((path, entry, depth)) = stack.pop() {
        visit(&path, &entry)?;
        if entry.kind == EntryKind::Directory {
            if depth >= limits::MAX_DEPTH {
                return Err(FsError::TooLarge {
                    what: format!("folders nested deeper than {} at {path}", limits::MAX_DEPTH),
                });
            }
            push_children(fs, &path, depth + 1, &mut stack)?;
        }
    }
    Ok(())
}

fn push_children(
    fs: &mut dyn FileSystem,
    dir: &FsPath,
    depth: usize,
    stack: &mut Vec<(FsPath, Entry, usize)>,
) -> Result<(), FsError> {
    let list = fs.list(dir)?;
    for entry in list.into_iter().rev() {
        match dir.join(&entry.name) {
            Ok(path) => stack.push((path, entry, depth)),
            Err(_) => {
                tracing::warn!(folder = %dir, name = ?entry.name, "skipping a bad file name");
            }
        }
    }
    Ok(())
}
