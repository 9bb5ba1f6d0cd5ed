//! Fuzz target: every file system `sendense-fs` reads (ext4-view, ntfs, fatfs through our
//! adapters) on a hostile disk (see `fs_disk.rs` for the input layout).
//!
//! Each partition is opened; the root is listed and a few levels below it, a few entries of
//! each folder are stated, files are read at their start and at an offset. Anything may be
//! refused; nothing may panic in our code, hang or allocate from an on-disk length (a panic in
//! a third-party crate is contained by `sendense-fs` and answers an error).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sendense_fs::{EntryKind, FileSystem, FsPath};

#[path = "fs_disk.rs"]
mod fs_disk;

fuzz_target!(|data: &[u8]| {
    fs_disk::panic_policy();
    let Some(disk) = fs_disk::disk(data) else {
        return;
    };
    let Ok(table) = sendense_fs::partitions(&disk) else {
        return;
    };
    for p in &table.partitions {
        if let Ok(mut fs) = sendense_fs::open(&disk, Some(p.index)) {
            walk(&mut *fs, &FsPath::root(), 0);
        }
    }
});

fn walk(fs: &mut dyn FileSystem, at: &FsPath, depth: usize) {
    let _ = fs.stat(at);
    let Ok(list) = fs.list(at) else {
        return;
    };
    let mut buf = [0u8; 4096];
    for e in list.iter().take(16) {
        let Ok(child) = at.join(&e.name) else {
            continue;
        };
        let _ = fs.stat(&child);
        match e.kind {
            EntryKind::Directory if depth < 3 => walk(fs, &child, depth + 1),
            EntryKind::File => {
                let _ = fs.read(&child, 0, &mut buf);
                let _ = fs.read(&child, e.size / 2, &mut buf);
            }
            _ => {}
        }
    }
}
