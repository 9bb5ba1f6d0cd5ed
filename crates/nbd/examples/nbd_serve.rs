//! Serves one export over NBD until Ctrl-C (for manual tests and throughput runs).
//!
//! `nbd_serve [--listen ADDR] [--name NAME] [--tls-dir DIR] (--memory BYTES | --file PATH)`
//!
//! With `--tls-dir` TLS is required (QEMU x509 folder layout). `--file`
//! creates nothing: the file must exist; its size is the export size.

use std::sync::Arc;

use anyhow::{Context, bail};
use sendense_nbd::{Export, ExportRegistry, FileExport, MemoryExport, Server, ServerOptions, tls};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut listen = "127.0.0.1:10809".to_owned();
    let mut name = String::new();
    let mut tls_dir = None;
    let mut export: Option<Arc<dyn Export>> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--listen" => listen = value()?,
            "--name" => name = value()?,
            "--tls-dir" => tls_dir = Some(value()?),
            "--memory" => export = Some(Arc::new(MemoryExport::new(value()?.parse()?))),
            "--file" => export = Some(Arc::new(FileExport::open(value()?, false)?)),
            other => bail!("unknown argument {other}"),
        }
    }
    let Some(export) = export else {
        bail!("give --memory BYTES or --file PATH")
    };
    let registry = Arc::new(ExportRegistry::new());
    registry.add(name, export)?;
    let tls = match tls_dir {
        Some(d) => Some(tls::server_config_from_dir(
            std::path::Path::new(&d),
            false,
        )?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    let server = Server::new(
        registry,
        ServerOptions {
            tls,
            list_exports: true,
            ..Default::default()
        },
    );
    server
        .serve(listener, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
