//! Property tests against an in-memory model: random unaligned writes, zeroing, discards,
//! reopen and new overlay layers, for several cluster sizes with and without extended L2.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use sendense_qcow2::{BackingSpec, CreateOptions, ExtentState, Image, OpenOptions};
use tempfile::TempDir;

use crate::util::pattern;

#[derive(Debug, Clone)]
enum Op {
    Write { at: u32, len: usize, seed: u64 },
    Zero { at: u32, len: usize },
    Discard { at: u32, len: usize },
    Reopen,
    NewLayer,
}

fn op(max_len: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (any::<u32>(), 1..max_len, any::<u64>()).prop_map(|(at, len, seed)| Op::Write { at, len, seed }),
        2 => (any::<u32>(), 1..max_len).prop_map(|(at, len)| Op::Zero { at, len }),
        2 => (any::<u32>(), 1..max_len).prop_map(|(at, len)| Op::Discard { at, len }),
        1 => Just(Op::Reopen),
        1 => Just(Op::NewLayer),
    ]
}

fn span(size: u64, at: u32, len: usize) -> (u64, u64) {
    let off = (size * u64::from(at)) >> 32;
    (off, (len as u64).min(size - off))
}

struct Harness {
    dir: TempDir,
    layers: Vec<PathBuf>,
    img: Option<Image>,
    model: Vec<u8>,
    size: u64,
    cs: u32,
    ext: bool,
}

impl Harness {
    fn new(size: u64, cs: u32, ext: bool) -> Self {
        let dir = TempDir::new().unwrap();
        let p = dir.path().join("l0.qcow2");
        let img = Image::create(
            &p,
            &CreateOptions::new(size).cluster_size(cs).extended_l2(ext),
        )
        .unwrap();
        Self {
            dir,
            layers: vec![p],
            img: Some(img),
            model: vec![0; size as usize],
            size,
            cs,
            ext,
        }
    }

    fn img(&self) -> &Image {
        self.img.as_ref().unwrap()
    }

    fn apply(&mut self, op: &Op) {
        let size = self.size;
        let cs = u64::from(self.cs);
        match *op {
            Op::Write { at, len, seed } => {
                let (off, len) = span(size, at, len);
                let data = pattern(seed, len as usize);
                self.img().write_at(&data, off).unwrap();
                self.model[off as usize..(off + len) as usize].copy_from_slice(&data);
            }
            Op::Zero { at, len } => {
                let (off, len) = span(size, at, len);
                self.img().write_zeroes(off, len).unwrap();
                self.model[off as usize..(off + len) as usize].fill(0);
            }
            Op::Discard { at, len } => {
                let (off, len) = span(size, at, len);
                self.img().discard(off, len).unwrap();
                let lo = off.next_multiple_of(cs);
                let hi = (off + len) / cs * cs;
                if lo < hi {
                    self.model[lo as usize..hi as usize].fill(0);
                }
            }
            Op::Reopen => {
                let p = self.layers.last().unwrap().clone();
                self.img = None;
                self.img = Some(Image::open(&p, &OpenOptions::writable()).unwrap());
            }
            Op::NewLayer => {
                if self.layers.len() >= 4 {
                    return;
                }
                self.img = None;
                let name = format!("l{}.qcow2", self.layers.len());
                let prev = self
                    .layers
                    .last()
                    .unwrap()
                    .file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_owned();
                let p = self.dir.path().join(&name);
                let opts = CreateOptions::new(self.size)
                    .cluster_size(self.cs)
                    .extended_l2(self.ext)
                    .backing(BackingSpec::qcow2(prev));
                self.img = Some(Image::create(&p, &opts).unwrap());
                self.layers.push(p);
            }
        }
    }

    fn verify(&self) {
        let img = self.img();
        let mut got = vec![0u8; self.size as usize];
        img.read_at(&mut got, 0).unwrap();
        assert!(got == self.model, "content differs from the model");
        let status = img.chain_status(0, self.size).unwrap();
        let covered: u64 = status.iter().map(|e| e.length).sum();
        assert_eq!(covered, self.size);
        for e in status.iter().filter(|e| e.state == ExtentState::Zero) {
            assert!(
                self.model[e.offset as usize..(e.offset + e.length) as usize]
                    .iter()
                    .all(|&b| b == 0)
            );
        }
        let report = img.check().unwrap();
        assert!(report.is_clean(), "{report:?}");
    }
}

fn layer_paths_check(paths: &[PathBuf]) {
    for p in paths {
        let r = sendense_qcow2::check_path(Path::new(p)).unwrap();
        assert!(r.is_clean(), "{}: {r:?}", p.display());
    }
}

fn run_case(size: u64, cs: u32, ext: bool, ops: &[Op]) {
    let mut h = Harness::new(size, cs, ext);
    for op in ops {
        h.apply(op);
    }
    h.verify();
    h.img = None;
    layer_paths_check(&h.layers);
    let img = Image::open(h.layers.last().unwrap(), &OpenOptions::read_only()).unwrap();
    let mut got = vec![0u8; size as usize];
    img.read_at(&mut got, 0).unwrap();
    assert!(
        got == h.model,
        "content differs from the model after reopen"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn model_512b_clusters_matches(ops in proptest::collection::vec(op(3000), 1..25)) {
        run_case(2 << 20, 512, false, &ops);
    }

    #[test]
    fn model_64k_clusters_matches(ops in proptest::collection::vec(op(300_000), 1..25)) {
        run_case(4 << 20, 65536, false, &ops);
    }

    #[test]
    fn model_64k_extended_l2_matches(ops in proptest::collection::vec(op(300_000), 1..25)) {
        run_case(4 << 20, 65536, true, &ops);
    }

    #[test]
    fn model_16k_extended_l2_matches(ops in proptest::collection::vec(op(40_000), 1..25)) {
        run_case(1 << 20, 16384, true, &ops);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn model_2m_clusters_matches(ops in proptest::collection::vec(op(5 << 20), 1..12)) {
        run_case(16 << 20, 2 << 20, false, &ops);
    }

    #[test]
    fn model_2m_extended_l2_matches(ops in proptest::collection::vec(op(5 << 20), 1..12)) {
        run_case(16 << 20, 2 << 20, true, &ops);
    }
}
