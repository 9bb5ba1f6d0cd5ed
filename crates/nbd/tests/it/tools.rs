//! Standard clients (libnbd's nbdinfo/nbdcopy, qemu-img) against our server.

use std::path::Path;
use std::sync::Arc;

use sendense_nbd::{ExportRegistry, FileExport, ServerOptions, tls};

use crate::common::{TestServer, make_certs, memory_registry, random_bytes, run, run_fails, s};

const SIZE: usize = 32 << 20;

fn file_registry(dir: &Path, names: &[&str]) -> Arc<ExportRegistry> {
    let r = Arc::new(ExportRegistry::new());
    for n in names {
        let e = FileExport::create(dir.join(format!("{n}.raw")), SIZE as u64).unwrap();
        r.add(*n, Arc::new(e)).unwrap();
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdinfo_plain_lists_and_maps() {
    let r = memory_registry();
    r.add("second", Arc::new(sendense_nbd::MemoryExport::new(1 << 20)))
        .unwrap();
    let listing = ServerOptions {
        list_exports: true,
        ..Default::default()
    };
    let srv = TestServer::start_with(r, listing).await;
    let out = run(
        "nbdinfo",
        vec![s("--list"), format!("nbd://127.0.0.1:{}", srv.port())],
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("export=\"mem\"") || text.contains("mem"),
        "{text}"
    );
    assert!(text.contains("second"), "{text}");
    let out = run(
        "nbdinfo",
        vec![s("--map"), format!("nbd://127.0.0.1:{}/mem", srv.port())],
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("hole") && text.contains("data"), "{text}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdinfo_tls_with_client_cert_lists_and_maps() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let config = tls::server_config_from_dir(dir.path(), true).unwrap();
    let listing = ServerOptions {
        tls: Some(config),
        list_exports: true,
        ..Default::default()
    };
    let srv = TestServer::start_with(memory_registry(), listing).await;
    let q = format!("tls-certificates={}", dir.path().display());
    let out = run(
        "nbdinfo",
        vec![s("--list"), format!("nbds://localhost:{}/?{q}", srv.port())],
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("mem"), "{text}");
    let uri = format!("nbds://localhost:{}/mem?{q}", srv.port());
    let out = run("nbdinfo", vec![s("--map"), uri]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("data"), "{text}");
    // Plain connection to a TLS-only server gets nothing.
    run_fails(
        "nbdinfo",
        vec![s("--list"), format!("nbd://127.0.0.1:{}", srv.port())],
    )
    .await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdinfo_list_refused_by_default_names_stay_secret() {
    let r = memory_registry();
    r.add(
        "secret-name",
        Arc::new(sendense_nbd::MemoryExport::new(1 << 20)),
    )
    .unwrap();
    let srv = TestServer::start(r, None).await;
    let out = run_fails(
        "nbdinfo",
        vec![s("--list"), format!("nbd://127.0.0.1:{}", srv.port())],
    )
    .await;
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !all.contains("secret-name") && !all.contains("\"mem\""),
        "{all}"
    );
    // The export is still served to whoever knows its name.
    let uri = format!("nbd://127.0.0.1:{}/secret-name", srv.port());
    let out = run("nbdinfo", vec![s("--size"), uri]).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1048576");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdcopy_32mib_one_and_four_connections_identical() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    let data = random_bytes(SIZE);
    std::fs::write(&src, &data).unwrap();
    let srv = TestServer::start(file_registry(dir.path(), &["one", "four"]), None).await;
    let base = format!("nbd://127.0.0.1:{}", srv.port());
    run(
        "nbdcopy",
        vec![src.display().to_string(), format!("{base}/one")],
    )
    .await;
    run(
        "nbdcopy",
        vec![
            s("--connections=4"),
            s("--flush"),
            src.display().to_string(),
            format!("{base}/four"),
        ],
    )
    .await;
    assert!(std::fs::read(dir.path().join("one.raw")).unwrap() == data);
    assert!(std::fs::read(dir.path().join("four.raw")).unwrap() == data);
    let back = dir.path().join("back.raw");
    run(
        "nbdcopy",
        vec![format!("{base}/four"), back.display().to_string()],
    )
    .await;
    assert!(std::fs::read(&back).unwrap() == data);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_img_plain_convert_and_compare_identical() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    let mut data = random_bytes(SIZE);
    data[4 << 20..12 << 20].fill(0);
    std::fs::write(&src, &data).unwrap();
    let srv = TestServer::start(file_registry(dir.path(), &["disk"]), None).await;
    let uri = format!("nbd://127.0.0.1:{}/disk", srv.port());
    let src_s = src.display().to_string();
    run(
        "qemu-img",
        vec![
            s("convert"),
            s("-n"),
            s("-f"),
            s("raw"),
            s("-O"),
            s("raw"),
            src_s.clone(),
            uri.clone(),
        ],
    )
    .await;
    run(
        "qemu-img",
        vec![
            s("compare"),
            s("-f"),
            s("raw"),
            s("-F"),
            s("raw"),
            src_s,
            uri.clone(),
        ],
    )
    .await;
    let out = dir.path().join("out.raw");
    run(
        "qemu-img",
        vec![
            s("convert"),
            s("-f"),
            s("raw"),
            s("-O"),
            s("raw"),
            uri,
            out.display().to_string(),
        ],
    )
    .await;
    assert!(std::fs::read(&out).unwrap() == data);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_img_tls_client_cert_convert_and_compare_identical() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("tls");
    std::fs::create_dir(&certs).unwrap();
    make_certs(&certs);
    let src = dir.path().join("src.raw");
    let data = random_bytes(8 << 20);
    std::fs::write(&src, &data).unwrap();
    let config = tls::server_config_from_dir(&certs, true).unwrap();
    let srv = TestServer::start(file_registry(dir.path(), &["disk"]), Some(config)).await;
    let object = format!(
        "tls-creds-x509,id=tls0,dir={},endpoint=client",
        certs.display()
    );
    let opts = format!(
        "driver=nbd,server.type=inet,server.host=localhost,server.port={},export=disk,tls-creds=tls0",
        srv.port()
    );
    let src_s = src.display().to_string();
    run(
        "qemu-img",
        vec![
            s("convert"),
            s("-n"),
            s("--object"),
            object.clone(),
            s("-f"),
            s("raw"),
            s("--target-image-opts"),
            src_s.clone(),
            opts.clone(),
        ],
    )
    .await;
    run(
        "qemu-img",
        vec![
            s("compare"),
            s("--object"),
            object.clone(),
            s("--image-opts"),
            opts.clone(),
            format!("driver=raw,file.filename={src_s}"),
        ],
    )
    .await;
    let out = dir.path().join("out.raw");
    run(
        "qemu-img",
        vec![
            s("convert"),
            s("--object"),
            object,
            s("--image-opts"),
            opts,
            s("-O"),
            s("raw"),
            out.display().to_string(),
        ],
    )
    .await;
    let back = std::fs::read(&out).unwrap();
    assert!(back[..data.len()] == data[..]);
    srv.stop().await;
}
