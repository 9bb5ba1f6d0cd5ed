//! The transfer engine and the NBD adapters against real NBD servers: `sendense-nbd`'s server
//! in-process (with TLS) and `qemu-nbd` (plain).

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sendense_transfer::engine::{DiskPlan, DiskTransfer, TransferOptions, transfer_disk};
use sendense_transfer::nbd::{NbdConnector, NbdSource, NbdTls, NbdUri};
use sendense_transfer::progress::NoProgress;
use sendense_transfer::{DiskSource, Extent, MemorySource, RawFileSource, TransferError};

use crate::common::{Op, TestNbd, make_certs, pattern, qemu_img};

const MIB: usize = 1 << 20;

/// 8 MiB: MiB 0 data, MiB 1 zero, MiB 2..4 data, the rest zero.
fn disk() -> Vec<u8> {
    let mut d = vec![0u8; 8 * MIB];
    d[..MIB].copy_from_slice(&pattern(MIB, 1));
    d[2 * MIB..4 * MIB].copy_from_slice(&pattern(2 * MIB, 2));
    d
}

fn tls(ca: &Path) -> NbdTls {
    NbdTls {
        config: sendense_client::hub::tls_config(ca).unwrap(),
        server_name: "localhost".into(),
    }
}

fn options() -> TransferOptions {
    TransferOptions {
        connections: 2,
        in_flight: 4,
        request_size: 4 << 20,
        total_buffers: 8,
    }
}

fn job(source: Arc<dyn DiskSource>, connector: NbdConnector, plan: DiskPlan) -> DiskTransfer {
    DiskTransfer {
        disk_key: 2000,
        source,
        target: Arc::new(connector),
        plan,
        digests: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_full_over_tls_sends_data_and_skips_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let nbd = TestNbd::start(Some(Arc::clone(&certs.server))).await;
    let export = nbd.add("exp-full", &vec![0u8; 8 * MIB]);
    let uri = NbdUri::parse(&nbd.uri(true, "exp-full")).unwrap();
    let connector = NbdConnector::new(uri, Some(tls(&certs.ca()))).unwrap();
    let source = MemorySource::new(disk()).with_allocated(vec![Extent::new(0, 6 << 20)]);

    let stats = transfer_disk(
        &job(Arc::new(source), connector, DiskPlan::Full),
        options(),
        &NoProgress,
    )
    .await
    .unwrap();

    assert!(export.contents() == disk(), "the export holds the disk");
    let ops = export.ops();
    assert!(!ops.iter().any(|op| matches!(op, Op::Zero(..))), "{ops:?}");
    assert!(ops.contains(&Op::Flush));
    assert_eq!(stats.bytes_sent, 3 << 20);
    assert_eq!(stats.bytes_zero_skipped, 3 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_zero_scan_uses_the_servers_advertised_block_size() {
    // sendense-nbd advertises the export's preferred block size (4 KiB for this memory
    // export) in NBD_INFO_BLOCK_SIZE: a 4 KiB zero run inside data is then not sent, where a
    // fixed 64 KiB granularity would send it as data.
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let nbd = TestNbd::start(Some(Arc::clone(&certs.server))).await;
    let export = nbd.add("exp-bs", &vec![0u8; 2 * MIB]);
    let uri = NbdUri::parse(&nbd.uri(true, "exp-bs")).unwrap();
    let connector = NbdConnector::new(uri, Some(tls(&certs.ca()))).unwrap();
    let mut want = vec![0u8; 2 * MIB];
    want[..MIB].copy_from_slice(&pattern(MIB, 3));
    want[8 << 10..12 << 10].fill(0);
    let source = MemorySource::new(want.clone()).with_allocated(vec![Extent::new(0, 1 << 20)]);

    let stats = transfer_disk(
        &job(Arc::new(source), connector, DiskPlan::Full),
        options(),
        &NoProgress,
    )
    .await
    .unwrap();

    assert!(export.contents() == want, "the export holds the disk");
    let mut writes: Vec<Op> = export
        .ops()
        .into_iter()
        .filter(|op| matches!(op, Op::Write(..)))
        .collect();
    writes.sort_by_key(|op| match *op {
        Op::Write(offset, _) | Op::Zero(offset, _) => offset,
        Op::Flush => u64::MAX,
    });
    assert_eq!(
        writes,
        [
            Op::Write(0, 8 << 10),
            Op::Write(12 << 10, (1 << 20) - (12 << 10))
        ]
    );
    assert_eq!(stats.bytes_zero_skipped, 4 << 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_incremental_over_tls_zero_runs_become_write_zeroes() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let nbd = TestNbd::start(Some(Arc::clone(&certs.server))).await;
    let export = nbd.add("exp-inc", &vec![0xAAu8; 8 * MIB]);
    let uri = NbdUri::parse(&nbd.uri(true, "exp-inc")).unwrap();
    let connector = NbdConnector::new(uri, Some(tls(&certs.ca()))).unwrap();
    let changed = vec![Extent::new(0, 2 << 20), Extent::new(7 << 20, 64 << 10)];

    let stats = transfer_disk(
        &job(
            Arc::new(MemorySource::new(disk())),
            connector,
            DiskPlan::Changed(changed),
        ),
        options(),
        &NoProgress,
    )
    .await
    .unwrap();

    let got = export.contents();
    let want = disk();
    assert!(got[..2 * MIB] == want[..2 * MIB]);
    assert!(
        got[2 * MIB..7 * MIB].iter().all(|&b| b == 0xAA),
        "unchanged areas keep old data"
    );
    assert!(got[7 * MIB..7 * MIB + (64 << 10)].iter().all(|&b| b == 0));
    let ops = export.ops();
    assert!(ops.contains(&Op::Zero(1 << 20, 1 << 20)), "{ops:?}");
    assert!(ops.contains(&Op::Zero(7 << 20, 64 << 10)), "{ops:?}");
    assert_eq!(stats.bytes_sent, 1 << 20);
    assert_eq!(stats.bytes_zeroed, (1 << 20) + (64 << 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_wrong_ca_fails_to_connect() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let other = tempfile::tempdir().unwrap();
    let other_certs = make_certs(other.path());
    let nbd = TestNbd::start(Some(Arc::clone(&certs.server))).await;
    nbd.add("exp", &vec![0u8; MIB]);
    let uri = NbdUri::parse(&nbd.uri(true, "exp")).unwrap();
    let connector = NbdConnector::new(uri, Some(tls(&other_certs.ca()))).unwrap();

    let err = transfer_disk(
        &job(
            Arc::new(MemorySource::new(vec![1u8; MIB])),
            connector,
            DiskPlan::Full,
        ),
        options(),
        &NoProgress,
    )
    .await
    .unwrap_err();

    assert!(
        matches!(
            err,
            TransferError::Nbd {
                operation: "connect",
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbd_source_reads_data_and_skips_holes() {
    let nbd = TestNbd::start(None).await;
    let data = pattern(MIB, 9);
    nbd.add_sparse("ro", 8 << 20, &[(3 << 20, &data)]);
    let uri = NbdUri::parse(&nbd.uri(false, "ro")).unwrap();
    let connector = NbdConnector::new(uri, None).unwrap();

    let source = NbdSource::connect(&connector, 2).await.unwrap();

    let allocated = source.allocated_extents().await.unwrap();
    assert_eq!(allocated, vec![Extent::new(3 << 20, 1 << 20)]);
    let mut buf = vec![0u8; 2 * MIB];
    source.read(3 << 20, &mut buf).await.unwrap();
    assert!(buf[..MIB] == data[..]);
    assert!(buf[MIB..].iter().all(|&b| b == 0));
}

/// A `qemu-nbd` serving a file on 127.0.0.1; killed when dropped.
struct QemuNbd {
    child: Child,
    port: u16,
}

impl QemuNbd {
    fn start(file: &Path) -> Self {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let child = Command::new("qemu-nbd")
            .args([
                "-f",
                "raw",
                "-x",
                "disk",
                "-b",
                "127.0.0.1",
                "--shared=8",
                "-p",
            ])
            .arg(port.to_string())
            .arg(file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-nbd is required for this test (apt-get install qemu-utils)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "qemu-nbd did not listen on port {port}"
            );
            std::thread::yield_now();
        }
        Self { child, port }
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_full_into_qemu_nbd_compares_identical() {
    let dir = tempfile::tempdir().unwrap();
    let src_path = dir.path().join("src.raw");
    let dst_path = dir.path().join("dst.raw");
    {
        let f = std::fs::File::create(&src_path).unwrap();
        f.set_len(16 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&pattern(3 * MIB + 4096, 5), 1 << 20)
            .unwrap();
        f.write_all_at(&pattern(MIB, 6), 12 << 20).unwrap();
    }
    std::fs::File::create(&dst_path)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let server = QemuNbd::start(&dst_path);
    let uri = NbdUri::parse(&format!("nbd://127.0.0.1:{}/disk", server.port)).unwrap();
    let connector = NbdConnector::new(uri, None).unwrap();
    let source = RawFileSource::open(&src_path).unwrap();

    let stats = transfer_disk(
        &job(Arc::new(source), connector, DiskPlan::Full),
        options(),
        &NoProgress,
    )
    .await
    .unwrap();
    drop(server);

    qemu_img(&[
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        src_path.to_str().unwrap(),
        dst_path.to_str().unwrap(),
    ]);
    assert!(
        stats.bytes_sent >= (4 << 20) + 4096 && stats.bytes_sent < 16 << 20,
        "{stats:?}"
    );
}
