//! Our client against independent servers: qemu-nbd and nbdkit.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;

use sendense_nbd::{Client, ClientOptions, ZeroFlags};

use crate::common::{Daemon, free_port, random_bytes, start_when_ready, tool};

async fn exercise(c: &Client) {
    let data = random_bytes(1 << 20);
    c.write(1 << 20, &data, false).await.unwrap();
    assert_eq!(c.read(1 << 20, 1 << 20).await.unwrap(), data);
    c.write_zeroes(1 << 20, 65536, ZeroFlags::default())
        .await
        .unwrap();
    let back = c.read(1 << 20, 131_072).await.unwrap();
    assert!(back[..65536].iter().all(|b| *b == 0));
    assert_eq!(&back[65536..], &data[65536..131_072]);
    c.flush().await.unwrap();
    let ext = c.block_status(0, 4 << 20).await.unwrap();
    assert!(!ext.is_empty());
    assert!(ext.iter().map(|e| e.length).sum::<u64>() <= 4 << 20);
}

/// Pipelined reads from 16 tasks on one connection.
async fn pipelined_reads(c: &Arc<Client>) {
    let tasks: Vec<_> = (0..16u64)
        .map(|i| {
            let c = Arc::clone(c);
            tokio::spawn(async move { c.read(i * 65536, 65536).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_against_qemu_nbd_all_commands_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("disk.raw");
    std::fs::File::create(&file)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let port = free_port();
    let pid_file = dir.path().join("qemu-nbd.pid");
    // --fork: the parent exits once the server is running.
    let mut cmd = Command::new(tool("qemu-nbd"));
    cmd.args([
        "--fork",
        "--persistent",
        "-f",
        "raw",
        "-b",
        "127.0.0.1",
        "-x",
        "disk",
    ])
    .arg(format!("--port={port}"))
    .arg(format!("--pid-file={}", pid_file.display()))
    .arg(&file)
    .stdout(Stdio::null());
    let _guard = Daemon::start(cmd, &pid_file);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let opts = ClientOptions {
        export_name: "disk".into(),
        ..Default::default()
    };
    let c = Client::connect(addr, opts).await.unwrap();
    assert_eq!(c.size(), 16 << 20);
    assert!(c.info().base_allocation.is_some());
    exercise(&c).await;
    let c = Arc::new(c);
    pipelined_reads(&c).await;
    Arc::into_inner(c).unwrap().disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_against_nbdkit_memory_all_commands_succeed() {
    let port = free_port();
    let mut cmd = Command::new(tool("nbdkit"));
    cmd.args(["-f", "--exit-with-parent", "-i", "127.0.0.1"])
        .arg(format!("--port={port}"))
        .args(["--run", "echo ready; cat >/dev/null", "memory", "64M"]);
    let _guard = start_when_ready(cmd);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let c = Client::connect(addr, ClientOptions::default())
        .await
        .unwrap();
    assert_eq!(c.size(), 64 << 20);
    exercise(&c).await;
    let c = Arc::new(c);
    pipelined_reads(&c).await;
    let names = Client::list_exports(addr, None).await.unwrap();
    assert!(names.len() <= 1);
    Arc::into_inner(c).unwrap().disconnect().await.unwrap();
}
