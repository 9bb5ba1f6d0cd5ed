//! Writes a byte count through our pipelined client and reports MiB/s.
//!
//! `nbd_write_bench ADDR EXPORT BYTES [--connections N] [--request BYTES] [--tls-ca PEM]`

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use sendense_nbd::{ClientOptions, ClientPool, tls};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut pos = Vec::new();
    let mut connections = 4usize;
    let mut request = 4usize << 20;
    let mut ca = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--connections" => connections = value()?.parse()?,
            "--request" => request = value()?.parse()?,
            "--tls-ca" => ca = Some(value()?),
            _ => pos.push(a),
        }
    }
    let [addr, export, bytes] = pos.as_slice() else {
        bail!("ADDR EXPORT BYTES")
    };
    let total: u64 = bytes.parse()?;
    let tls = match ca {
        Some(p) => Some((
            tls::client_config(std::path::Path::new(&p), None)?,
            "localhost".to_owned(),
        )),
        None => None,
    };
    let options = ClientOptions {
        tls,
        export_name: export.clone(),
        ..Default::default()
    };
    let pool = Arc::new(ClientPool::connect(addr.as_str(), options, connections).await?);
    let data = Arc::new(vec![0x5au8; request]);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let window = Arc::new(tokio::sync::Semaphore::new(connections * 8));
    let mut offset = 0u64;
    while offset < total {
        let n = (total - offset).min(request as u64);
        let permit = Arc::clone(&window).acquire_owned().await?;
        let (pool, data) = (Arc::clone(&pool), Arc::clone(&data));
        tasks.spawn(async move {
            let _permit = permit;
            pool.get()
                .write(offset, &data[..usize::try_from(n)?], false)
                .await?;
            anyhow::Ok(())
        });
        offset += n;
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    pool.flush().await?;
    let secs = start.elapsed().as_secs_f64();
    #[allow(clippy::cast_precision_loss, clippy::print_stdout)]
    {
        println!(
            "{:.1} MiB/s ({total} bytes in {secs:.2} s)",
            total as f64 / secs / 1048576.0
        );
    }
    Ok(())
}
