//! Fuzz target: backing-chain resolution through the caller's policy, in memory.
//!
//! Input: `[mode] [rest]`. Mode bits 0-1 pick the policy (refuse, repository, below, any).
//! With mode bit 2 clear, `rest` is `[len:u16] [overlay] [base]`, both fuzzer-made, and the
//! folder holds `base.qcow2` and `top.qcow2` (so loops are reachable). With bit 2 set, an overlay
//! and base made by our engine are patched: `[k] [k patches: file+offset:u24, value:u8] [name]`,
//! and a non-empty `name` replaces the overlay's backing file name (the folder holds the base
//! under that name too, so only the policy stands between the name and the bytes).
//!
//! The chain is opened read-only through `Image::open_storage_chain`, read, mapped and checked.
//! Errors are fine; a panic, a hang, an unbounded allocation, or a chain the policy should have
//! refused is a bug.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sendense_qcow2::raw::{RawHeader, U32, U64};
use sendense_qcow2::{
    Backing, BackingPolicy, BackingSpec, CreateOptions, Image, MemFolder, MemStorage, OpenOptions,
};

const MAX_PATCHES: usize = 64;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let policy = match mode & 3 {
        0 => BackingPolicy::refuse(),
        1 => BackingPolicy::repository(),
        2 => BackingPolicy::below(),
        _ => BackingPolicy::any(),
    };
    let mut folder = MemFolder::new();
    let top = if mode & 4 == 0 {
        let Some((len, rest)) = rest.split_first_chunk::<2>() else {
            return;
        };
        let len = usize::from(u16::from_le_bytes(*len)).min(rest.len());
        let (top, base) = rest.split_at(len);
        folder.insert("base.qcow2", base.to_vec());
        folder.insert("top.qcow2", top.to_vec());
        top.to_vec()
    } else {
        let (t_top, t_base) = templates();
        let (mut top, mut base) = (t_top.clone(), t_base.clone());
        let Some((&k, rest)) = rest.split_first() else {
            return;
        };
        let k = usize::from(k).min(MAX_PATCHES);
        let Some((patches, name)) = rest.split_at_checked(k * 4) else {
            return;
        };
        for p in patches.chunks_exact(4) {
            let file = if p[0] & 0x80 == 0 { &mut top } else { &mut base };
            let at = (usize::from(p[0] & 0x7f) << 16 | usize::from(p[1]) << 8 | usize::from(p[2]))
                % file.len();
            file[at] = p[3];
        }
        if !name.is_empty() && name.len() <= 512 {
            // The name at 2048, the header's backing_file_offset and _size pointing at it.
            let at = 2048;
            top[at..at + name.len()].copy_from_slice(name);
            RawHeader::patch_image(&mut top, |h| {
                h.backing_file_offset = U64::new(at as u64);
                h.backing_file_size = U32::new(name.len() as u32);
            });
            folder.insert(&String::from_utf8_lossy(name), base.clone());
        }
        folder.insert("base.qcow2", base);
        top
    };
    let opts = OpenOptions::read_only().backing(policy);
    let Ok(img) = Image::open_storage_chain(Box::new(MemStorage::new(top)), &opts, &folder) else {
        return;
    };
    let mut layer = img.backing();
    while let Some(b) = layer {
        // Every backing file that opened passed the policy.
        let name = b.path().to_string_lossy();
        assert!(policy.check_name(&name).is_ok(), "policy let {name:?} through");
        assert!(policy.check_format(&name, b.format()).is_ok());
        layer = match b {
            Backing::Qcow2(i) => i.backing(),
            Backing::Raw(_) => None,
        };
    }
    let size = img.virtual_size();
    let mut buf = vec![0u8; 64 * 1024];
    for start in [0, size / 2, size.saturating_sub(4096)] {
        let len = (buf.len() as u64).min(size.saturating_sub(start)) as usize;
        let _ = img.read_at(&mut buf[..len], start);
    }
    let _ = img.chain_status(0, size.min(1 << 30));
    let _ = img.block_status(0, size.min(1 << 30));
    let _ = img.check();
    let _ = img.info();
});

/// An overlay naming `base.qcow2` (format qcow2) and its base, both with data.
fn templates() -> &'static (Vec<u8>, Vec<u8>) {
    static T: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    T.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("sendense-fuzz-chain-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let base_path = dir.join("base.qcow2");
        let top_path = dir.join("top.qcow2");
        let _ = std::fs::remove_file(&base_path);
        let _ = std::fs::remove_file(&top_path);
        let base = Image::create(&base_path, &CreateOptions::new(2 << 20).cluster_size(4096))
            .expect("create base");
        base.write_at(&[0x5a; 20_000], 0).expect("write base");
        drop(base);
        let top = Image::create(
            &top_path,
            &CreateOptions::new(2 << 20)
                .cluster_size(4096)
                .backing(BackingSpec::qcow2("base.qcow2")),
        )
        .expect("create overlay");
        top.write_at(&[0xa5; 6000], 10_000).expect("write overlay");
        drop(top);
        let out = (
            std::fs::read(&top_path).expect("read overlay"),
            std::fs::read(&base_path).expect("read base"),
        );
        let _ = std::fs::remove_file(&base_path);
        let _ = std::fs::remove_file(&top_path);
        let _ = std::fs::remove_dir(&dir);
        out
    })
}
