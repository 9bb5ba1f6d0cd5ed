//! A real distributed S3 store for the `object` scenario: three Garage nodes on 127.0.0.1,
//! replication factor 3, one layout zone each, a key and a bucket, every node a guarded child
//! ([`Proc`]: killed with the harness).
//!
//! Garage (crates.io `garage`, AGPL) is only ever run as a separate program: `scripts/test.sh`
//! installs it once into `$SENDENSE_TOOLS` (default `~/.cache/sendense-tools`); the harness
//! takes `--garage PATH`, else `$SENDENSE_GARAGE`, else that install, else `garage` on `PATH`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::proc::{Proc, free_addr};

/// How long the cluster may take to form, and each setup command to succeed.
const DEADLINE: Duration = Duration::from_secs(120);
/// Pause between attempts of a setup command that needs the cluster formed.
const RETRY: Duration = Duration::from_millis(100);
/// The bucket.
pub(crate) const BUCKET: &str = "sendense-bench";
/// The S3 region the nodes answer for.
pub(crate) const REGION: &str = "garage";
/// The access key (Garage ids are `GK` and 24 hex digits; secrets 64 hex digits).
pub(crate) const ACCESS_KEY: &str = "GK0b0e0c0h0a0b0c0d0e0f0a0b";
/// The secret key.
pub(crate) const SECRET_KEY: &str =
    "b0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecf";
const RPC_SECRET: &str = "7e1d6a2f7b4c9e8d0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6072";

/// The `garage` binary: `explicit`, else `$SENDENSE_GARAGE`, else what `scripts/test.sh`
/// installs, else `garage` on `PATH`.
///
/// # Errors
/// None of them exists; the message names `scripts/test.sh`.
pub(crate) fn locate(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("SENDENSE_GARAGE").map(PathBuf::from))
    {
        if path.is_file() {
            return Ok(path);
        }
        bail!("garage not found at {}", path.display());
    }
    let tools = std::env::var_os("SENDENSE_TOOLS").map_or_else(
        || {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/sendense-tools")
        },
        PathBuf::from,
    );
    let installed = tools.join("garage/bin/garage");
    if installed.is_file() {
        return Ok(installed);
    }
    if let Some(on_path) = super::scenarios::tool("garage") {
        return Ok(on_path);
    }
    bail!(
        "garage is required (a real three-node S3 store for the object scenario): \
         scripts/test.sh installs it into {} (cargo install --locked garage), or pass --garage PATH",
        installed.display()
    )
}

/// One node.
#[derive(Debug)]
struct Node {
    config: PathBuf,
    s3: SocketAddr,
    rpc: SocketAddr,
    proc: Proc,
}

/// Three Garage nodes on loopback forming one cluster with replication 3.
#[derive(Debug)]
pub(crate) struct Garage {
    bin: PathBuf,
    nodes: Vec<Node>,
}

impl Garage {
    /// Starts three nodes under `dir` (logs in `logs`), connects them, applies a layout with
    /// replication 3, imports the key and creates the bucket.
    pub(crate) fn start(bin: &Path, dir: &Path, logs: &Path) -> Result<Self> {
        let mut nodes = Vec::new();
        for i in 0..3 {
            let root = dir.join(format!("garage{i}"));
            std::fs::create_dir_all(&root)
                .with_context(|| format!("cannot create {}", root.display()))?;
            let (s3, rpc, admin) = (free_addr()?, free_addr()?, free_addr()?);
            let config = root.join("garage.toml");
            std::fs::write(
                &config,
                format!(
                    r#"metadata_dir = "{meta}"
data_dir = "{data}"
db_engine = "lmdb"
replication_factor = 3
compression_level = "none"
rpc_bind_addr = "{rpc}"
rpc_public_addr = "{rpc}"
rpc_secret = "{RPC_SECRET}"

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "{s3}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "{admin}"
"#,
                    meta = root.join("meta").display(),
                    data = root.join("data").display(),
                ),
            )
            .with_context(|| format!("cannot write {}", config.display()))?;
            let mut cmd = Command::new(bin);
            cmd.arg("-c")
                .arg(&config)
                .arg("server")
                .env("RUST_LOG", "garage=warn");
            let mut proc = Proc::spawn(&format!("garage{i}"), cmd, logs, false)?;
            proc.wait_listening(rpc)?;
            nodes.push(Node {
                config,
                s3,
                rpc,
                proc,
            });
        }
        let mut cluster = Self {
            bin: bin.to_path_buf(),
            nodes,
        };
        let mut ids = Vec::new();
        for i in 0..3 {
            let out = cluster.cli_until_ok(i, &["node", "id", "-q"])?;
            // `node id -q` answers `<hex id>@<rpc address>`.
            let text = String::from_utf8_lossy(&out.stdout);
            let id = text.trim().split('@').next().unwrap_or_default().to_owned();
            ids.push(id);
        }
        for (id, node) in ids.iter().zip(&cluster.nodes).skip(1) {
            let peer = format!("{id}@{}", node.rpc);
            cluster.cli_until_ok(0, &["node", "connect", &peer])?;
        }
        for (i, id) in ids.iter().enumerate() {
            let zone = format!("z{i}");
            cluster.cli_until_ok(0, &["layout", "assign", "-z", &zone, "-c", "10G", id])?;
        }
        cluster.cli_until_ok(0, &["layout", "apply", "--version", "1"])?;
        cluster.cli_until_ok(
            0,
            &[
                "key", "import", "--yes", "-n", "bench", ACCESS_KEY, SECRET_KEY,
            ],
        )?;
        cluster.cli_until_ok(0, &["bucket", "create", BUCKET])?;
        cluster.cli_until_ok(
            0,
            &[
                "bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", "bench",
            ],
        )?;
        // Every node must see the bucket before the S3 API is used.
        for i in 0..3 {
            cluster.cli_until_ok(i, &["bucket", "info", BUCKET])?;
        }
        for node in &mut cluster.nodes {
            node.proc.wait_listening(node.s3)?;
        }
        Ok(cluster)
    }

    /// The S3 endpoint (`http://127.0.0.1:PORT`) of node `i`.
    pub(crate) fn endpoint(&self, i: usize) -> String {
        self.nodes
            .get(i)
            .map_or_else(String::new, |n| format!("http://{}", n.s3))
    }

    /// CPU time used so far by every node.
    pub(crate) fn cpu(&self) -> Duration {
        self.nodes
            .iter()
            .filter_map(|n| n.proc.cpu())
            .sum::<Duration>()
    }

    /// Runs `garage -c <node i's config> ARGS` until it succeeds, up to [`DEADLINE`].
    fn cli_until_ok(&self, i: usize, args: &[&str]) -> Result<Output> {
        let node = self.nodes.get(i).context("no such Garage node")?;
        let deadline = Instant::now() + DEADLINE;
        loop {
            let out = Command::new(&self.bin)
                .arg("-c")
                .arg(&node.config)
                .args(args)
                .stdin(Stdio::null())
                .output()
                .with_context(|| format!("cannot run {}", self.bin.display()))?;
            if out.status.success() {
                return Ok(out);
            }
            if Instant::now() > deadline {
                bail!(
                    "garage {args:?} on node {i} kept failing: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            // The cluster is still forming: ask again shortly.
            std::thread::sleep(RETRY);
        }
    }
}
