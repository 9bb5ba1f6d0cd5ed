//! QCOW2 engine micro-benchmarks: sequential 1 MiB writes into a new image,
//! random 64 KiB writes, and reads through a 3-layer backing chain.
//!
//! Run: `cargo bench --bench qcow2`. Paths live in the system temp folder
//! (set `TMPDIR` to bench another file system). `scripts/test.sh` runs each
//! once in `--test` mode as a smoke test; figures come from real runs.

// Sizes here are small constants: u64 -> usize casts cannot truncate.
#![allow(clippy::cast_possible_truncation)]
// criterion_group!/criterion_main! generate undocumented functions.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sendense_qcow2::{BackingFormat, BackingSpec, CreateOptions, Image, OpenOptions};

const MIB: u64 = 1 << 20;
/// Data written per sequential-write iteration.
const SEQ_BYTES: u64 = 256 * MIB;
/// Virtual size of the random-write and chain images.
const DISK: u64 = 1024 * MIB;

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

/// Next pseudo-random number of a tiny xorshift generator.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn sequential_writes(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let buf = pattern(MIB as usize, 1);
    let mut group = c.benchmark_group("qcow2");
    group
        .sample_size(10)
        .throughput(Throughput::Bytes(SEQ_BYTES));
    group.bench_function("sequential_1MiB_writes_256MiB", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for i in 0..iters {
                let path = dir.path().join(format!("seq-{i}.qcow2"));
                let image = Image::create(&path, &CreateOptions::new(SEQ_BYTES)).expect("create");
                let start = Instant::now();
                for off in (0..SEQ_BYTES).step_by(MIB as usize) {
                    image.write_at(&buf, off).expect("write");
                }
                image.flush().expect("flush");
                total += start.elapsed();
                drop(image);
                std::fs::remove_file(&path).expect("remove");
            }
            total
        });
    });
    group.finish();
}

fn random_writes(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("random.qcow2");
    let image = Image::create(&path, &CreateOptions::new(DISK)).expect("create");
    let buf = pattern(64 << 10, 2);
    let mut state = 0x1234_5678_u64;
    let mut group = c.benchmark_group("qcow2");
    group.throughput(Throughput::Bytes(64 << 10));
    group.bench_function("random_64KiB_writes", |b| {
        b.iter(|| {
            let slot = next(&mut state) % (DISK / (64 << 10));
            image
                .write_at(black_box(&buf), slot * (64 << 10))
                .expect("write");
        });
    });
    group.finish();
    image.flush().expect("flush");
}

fn chain_reads(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let names = ["l0.qcow2", "l1.qcow2", "l2.qcow2"];
    let buf = pattern(MIB as usize, 3);
    for (i, name) in names.iter().enumerate() {
        let mut opts = CreateOptions::new(DISK);
        if i > 0 {
            opts.backing = Some(BackingSpec {
                file: names[i - 1].to_owned(),
                format: BackingFormat::Qcow2,
            });
        }
        let image = Image::create(&dir.path().join(name), &opts).expect("create layer");
        // Each layer holds every third MiB, so reads fall through to all three.
        for off in (i as u64 * MIB..DISK).step_by(3 * MIB as usize) {
            image.write_at(&buf, off).expect("write");
        }
        image.finalize(&dir.path().join(name)).expect("finalize");
    }
    let top = Image::open(&dir.path().join(names[2]), &OpenOptions::read_only()).expect("open");
    let mut out = vec![0u8; MIB as usize];
    let mut state = 0x9abc_def0_u64;
    let mut group = c.benchmark_group("qcow2");
    group.throughput(Throughput::Bytes(MIB));
    group.bench_function("chain3_random_1MiB_reads", |b| {
        b.iter(|| {
            let slot = next(&mut state) % (DISK / MIB);
            top.read_at(black_box(&mut out), slot * MIB).expect("read");
        });
    });
    group.finish();
}

criterion_group!(benches, sequential_writes, random_writes, chain_reads);
criterion_main!(benches);
