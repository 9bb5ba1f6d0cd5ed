//! Throughput probe: sequential 1 MiB writes into a new image from N threads, then flush.
//!
//! `cargo run --release -p sendense-qcow2 --example seqwrite -- DIR [MIB] [THREADS]`
#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation
)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use sendense_qcow2::{CreateOptions, Image};

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| ".".into()));
    let mib: u64 = args.next().map_or(512, |s| s.parse().unwrap());
    let threads: u64 = args.next().map_or(1, |s| s.parse().unwrap());
    let path = dir.join("seqwrite.qcow2");
    let _ = std::fs::remove_file(&path);
    let img = Arc::new(Image::create(&path, &CreateOptions::new(mib << 20)).unwrap());
    let buf: Arc<Vec<u8>> = Arc::new(
        (0..1u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect(),
    );
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let img = Arc::clone(&img);
            let buf = Arc::clone(&buf);
            std::thread::spawn(move || {
                let mut i = t;
                while i < mib {
                    img.write_at(&buf, i << 20).unwrap();
                    i += threads;
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    img.flush().unwrap();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{mib} MiB, {threads} thread(s): {secs:.2} s, {:.0} MB/s",
        (mib << 20) as f64 / secs / 1e6
    );
    drop(img);
    let _ = std::fs::remove_file(&path);
}
