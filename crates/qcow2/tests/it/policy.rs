//! Backing-file policy (issue #11 item 12): a crafted image cannot make the engine read a file
//! outside the folder the caller allows, whatever name, symlink or format it uses.

use std::path::{Path, PathBuf};

use sendense_qcow2::raw::{RawHeader, U32, U64};
use sendense_qcow2::{
    BackingPolicy, BackingSpec, CreateOptions, ErrorKind, Image, MemFolder, MemStorage,
    OpenOptions, Qcow2Error,
};
use tempfile::TempDir;

use crate::util::pattern;

const MIB: u64 = 1 << 20;

/// A folder `images/` holding images, next to a folder `outside/` holding a secret raw file.
struct Layout {
    _dir: TempDir,
    images: PathBuf,
    outside: PathBuf,
}

fn layout() -> Layout {
    let dir = TempDir::new().unwrap();
    let images = dir.path().join("images");
    let outside = dir.path().join("outside");
    std::fs::create_dir(&images).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret.raw"), pattern(7, MIB as usize)).unwrap();
    Image::create(&outside.join("secret.qcow2"), &CreateOptions::new(MIB)).unwrap();
    Layout {
        _dir: dir,
        images,
        outside,
    }
}

/// Writes `images/top.qcow2` naming `spec` as its backing file (created with the `any` policy,
/// as a crafted image would be).
fn overlay(images: &Path, spec: BackingSpec) -> PathBuf {
    let top = images.join("top.qcow2");
    Image::create(
        &top,
        &CreateOptions::new(MIB)
            .backing(spec)
            .backing_policy(BackingPolicy::any()),
    )
    .unwrap();
    top
}

fn open_with(path: &Path, policy: BackingPolicy) -> Result<Image, Qcow2Error> {
    Image::open(path, &OpenOptions::read_only().backing(policy))
}

fn refusal_reason(r: Result<Image, Qcow2Error>) -> &'static str {
    match r {
        Err(Qcow2Error::BackingRefused { reason, .. }) => reason,
        other => panic!("expected BackingRefused, got {other:?}"),
    }
}

#[test]
fn policy_repository_bare_name_in_folder_is_opened() {
    let l = layout();
    Image::create(&l.images.join("base.qcow2"), &CreateOptions::new(MIB)).unwrap();
    let top = overlay(&l.images, BackingSpec::qcow2("base.qcow2"));

    let img = open_with(&top, BackingPolicy::repository()).unwrap();

    assert_eq!(img.backing().unwrap().path(), l.images.join("base.qcow2"));
}

#[test]
fn policy_absolute_backing_is_refused_by_repository() {
    let l = layout();
    let secret = l.outside.join("secret.raw");
    let top = overlay(&l.images, BackingSpec::raw(secret.to_str().unwrap()));

    let e = open_with(&top, BackingPolicy::repository()).unwrap_err();

    let msg = e.to_string();
    assert!(
        msg.contains(secret.to_str().unwrap()) && msg.contains("absolute path"),
        "{msg}"
    );
}

#[test]
fn policy_absolute_backing_is_refused_by_below() {
    let l = layout();
    let top = overlay(
        &l.images,
        BackingSpec::raw(l.outside.join("secret.raw").to_str().unwrap()),
    );

    assert_eq!(
        refusal_reason(open_with(&top, BackingPolicy::below())),
        "absolute path"
    );
}

#[test]
fn policy_etc_shadow_backing_is_refused_before_any_open() {
    let l = layout();
    let top = l.images.join("top.qcow2");
    Image::create(&top, &CreateOptions::new(MIB)).unwrap();
    patch_backing_name(&top, "/etc/shadow");

    let e = open_with(&top, BackingPolicy::below()).unwrap_err();

    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
}

#[test]
fn policy_absolute_backing_is_opened_by_any() {
    let l = layout();
    let top = overlay(
        &l.images,
        BackingSpec::raw(l.outside.join("secret.raw").to_str().unwrap()),
    );

    let img = open_with(&top, BackingPolicy::any()).unwrap();

    let mut buf = vec![0u8; 4096];
    img.read_at(&mut buf, 0).unwrap();
    assert_eq!(buf, pattern(7, 4096));
}

#[test]
fn policy_parent_dir_backing_is_refused() {
    let l = layout();
    let top = overlay(&l.images, BackingSpec::raw("../outside/secret.raw"));

    assert_eq!(
        refusal_reason(open_with(&top, BackingPolicy::below())),
        "path contains .."
    );
}

#[test]
fn policy_symlink_escaping_folder_is_refused() {
    let l = layout();
    std::os::unix::fs::symlink(l.outside.join("secret.qcow2"), l.images.join("base.qcow2"))
        .unwrap();
    let top = overlay(&l.images, BackingSpec::qcow2("base.qcow2"));

    assert_eq!(
        refusal_reason(open_with(&top, BackingPolicy::repository())),
        "resolves outside the image's folder"
    );
}

#[test]
fn policy_symlinked_subfolder_escaping_folder_is_refused_by_below() {
    let l = layout();
    std::os::unix::fs::symlink(&l.outside, l.images.join("sub")).unwrap();
    let top = overlay(&l.images, BackingSpec::qcow2("sub/secret.qcow2"));

    assert_eq!(
        refusal_reason(open_with(&top, BackingPolicy::below())),
        "resolves outside the image's folder"
    );
}

#[test]
fn policy_subfolder_backing_is_opened_by_below() {
    let l = layout();
    std::fs::create_dir(l.images.join("sub")).unwrap();
    Image::create(&l.images.join("sub/base.qcow2"), &CreateOptions::new(MIB)).unwrap();
    let top = overlay(&l.images, BackingSpec::qcow2("sub/base.qcow2"));

    let img = open_with(&top, BackingPolicy::below()).unwrap();

    assert_eq!(
        img.backing().unwrap().path(),
        l.images.join("sub/base.qcow2")
    );
}

#[test]
fn policy_subfolder_backing_is_refused_by_repository() {
    let l = layout();
    std::fs::create_dir(l.images.join("sub")).unwrap();
    Image::create(&l.images.join("sub/base.qcow2"), &CreateOptions::new(MIB)).unwrap();
    let top = overlay(&l.images, BackingSpec::qcow2("sub/base.qcow2"));

    assert_eq!(
        refusal_reason(open_with(&top, BackingPolicy::repository())),
        "not a bare file name"
    );
}

#[test]
fn policy_symlink_to_subfolder_is_refused_by_repository() {
    let l = layout();
    std::fs::create_dir(l.images.join("sub")).unwrap();
    Image::create(&l.images.join("sub/base.qcow2"), &CreateOptions::new(MIB)).unwrap();
    std::os::unix::fs::symlink("sub/base.qcow2", l.images.join("base.qcow2")).unwrap();
    let top = overlay(&l.images, BackingSpec::qcow2("base.qcow2"));

    assert_eq!(
        refusal_reason(open_with(&top, BackingPolicy::repository())),
        "resolves outside the image's folder"
    );
}

#[test]
fn policy_missing_backing_names_the_file() {
    let l = layout();
    Image::create(&l.images.join("base.qcow2"), &CreateOptions::new(MIB)).unwrap();
    let top = overlay(&l.images, BackingSpec::qcow2("base.qcow2"));
    std::fs::remove_file(l.images.join("base.qcow2")).unwrap();

    let e = open_with(&top, BackingPolicy::repository()).unwrap_err();

    assert_eq!(
        e.to_string(),
        format!(
            "Backing file \"base.qcow2\" not found at {}",
            l.images.join("base.qcow2").display()
        )
    );
}

#[test]
fn policy_raw_backing_in_folder_is_refused_by_repository() {
    let l = layout();
    std::fs::write(l.images.join("base.raw"), pattern(3, MIB as usize)).unwrap();
    let top = overlay(&l.images, BackingSpec::raw("base.raw"));

    let e = open_with(&top, BackingPolicy::repository()).unwrap_err();

    assert!(matches!(e, Qcow2Error::BackingFormatRefused { .. }), "{e}");
}

#[test]
fn policy_refuse_rejects_a_backing_in_folder() {
    let l = layout();
    Image::create(&l.images.join("base.qcow2"), &CreateOptions::new(MIB)).unwrap();
    let top = overlay(&l.images, BackingSpec::qcow2("base.qcow2"));

    assert_eq!(
        refusal_reason(open_with(&top, BackingPolicy::refuse())),
        "the image may not have a backing file"
    );
}

#[test]
fn policy_create_opens_the_callers_own_backing_anywhere() {
    let l = layout();
    let spec = BackingSpec::qcow2(l.outside.join("secret.qcow2").to_str().unwrap());

    let img = Image::create(
        &l.images.join("top.qcow2"),
        &CreateOptions::new(MIB).backing(spec),
    )
    .unwrap();

    assert_eq!(
        img.backing().unwrap().path(),
        l.outside.join("secret.qcow2")
    );
}

#[test]
fn policy_create_refuses_a_backing_whose_own_backing_escapes_its_folder() {
    let l = layout();
    let mid = overlay(
        &l.images,
        BackingSpec::raw(l.outside.join("secret.raw").to_str().unwrap()),
    );
    let other = TempDir::new().unwrap();
    let spec = BackingSpec::qcow2(mid.to_str().unwrap());

    let e = Image::create(
        &other.path().join("new.qcow2"),
        &CreateOptions::new(MIB).backing(spec),
    )
    .unwrap_err();

    assert!(matches!(e, Qcow2Error::BackingRefused { .. }), "{e}");
    assert!(!other.path().join("new.qcow2").exists());
}

#[test]
fn policy_mem_chain_reads_through_base() {
    let (base, top) = mem_pair("base.qcow2");
    let mut folder = MemFolder::new();
    folder.insert("base.qcow2", base);

    let img = Image::open_storage_chain(
        Box::new(MemStorage::new(top)),
        &OpenOptions::read_only().backing(BackingPolicy::repository()),
        &folder,
    )
    .unwrap();

    let mut buf = vec![0u8; 4096];
    img.read_at(&mut buf, 0).unwrap();
    assert_eq!(buf, pattern(11, 4096));
}

#[test]
fn policy_mem_chain_absolute_name_is_refused() {
    let (base, top) = mem_pair("/etc/shadow");
    let mut folder = MemFolder::new();
    folder.insert("/etc/shadow", base);

    let r = Image::open_storage_chain(
        Box::new(MemStorage::new(top)),
        &OpenOptions::read_only().backing(BackingPolicy::below()),
        &folder,
    );

    assert_eq!(refusal_reason(r), "absolute path");
}

#[test]
fn policy_mem_chain_self_loop_is_refused() {
    let (_, top) = mem_pair("top.qcow2");
    let mut folder = MemFolder::new();
    folder.insert("top.qcow2", top.clone());

    let e = Image::open_storage_chain(
        Box::new(MemStorage::new(top)),
        &OpenOptions::read_only(),
        &folder,
    )
    .unwrap_err();

    assert!(matches!(e, Qcow2Error::BackingLoop { .. }), "{e}");
}

/// A base image with data and the bytes of an overlay naming `name` as its backing file.
fn mem_pair(name: &str) -> (Vec<u8>, Vec<u8>) {
    let dir = TempDir::new().unwrap();
    let base_path = dir.path().join("base.qcow2");
    let base = Image::create(&base_path, &CreateOptions::new(MIB)).unwrap();
    base.write_at(&pattern(11, 65536), 0).unwrap();
    drop(base);
    let top_path = dir.path().join("top.qcow2");
    drop(
        Image::create(
            &top_path,
            &CreateOptions::new(MIB).backing(BackingSpec::qcow2("base.qcow2")),
        )
        .unwrap(),
    );
    let mut top = std::fs::read(&top_path).unwrap();
    set_backing_name(&mut top, name);
    (std::fs::read(&base_path).unwrap(), top)
}

/// Rewrites the backing file name of the QCOW2 image in `bytes`: the name at 0x400, the
/// header's `backing_file_offset` and `backing_file_size` pointing at it.
fn set_backing_name(bytes: &mut [u8], name: &str) {
    let off = 0x400;
    bytes[off..off + name.len()].copy_from_slice(name.as_bytes());
    RawHeader::patch_image(bytes, |h| {
        h.backing_file_offset = U64::new(off as u64);
        h.backing_file_size = U32::new(name.len() as u32);
    });
}

fn patch_backing_name(path: &Path, name: &str) {
    let mut bytes = std::fs::read(path).unwrap();
    set_backing_name(&mut bytes, name);
    std::fs::write(path, bytes).unwrap();
}
