//! A real distributed S3 store for the `object` scenario and the object tier's end-to-end
//! tests (one launcher for both): three Garage nodes on 127.0.0.1, replication factor 3, one
//! layout zone each, a key and a bucket ([`Access`]), every node a guarded child (killed when
//! the cluster is dropped, and with the process that started it). Every wait is on a
//! condition with a deadline.
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
/// The S3 region the nodes answer for.
pub const REGION: &str = "garage";
const RPC_SECRET: &str = "7e1d6a2f7b4c9e8d0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6072";

/// The bucket and the key a cluster is made with.
#[derive(Debug, Clone, Copy)]
pub struct Access<'a> {
    /// The bucket.
    pub bucket: &'a str,
    /// The key's name in Garage.
    pub key_name: &'a str,
    /// The access key id (`GK` and 24 hex digits).
    pub access_key: &'a str,
    /// The secret key (64 hex digits).
    pub secret_key: &'a str,
}

/// The `garage` binary: `explicit`, else `$SENDENSE_GARAGE`, else what `scripts/test.sh`
/// installs into `$SENDENSE_TOOLS` (default `~/.cache/sendense-tools`), else `garage` on
/// `PATH`.
///
/// # Errors
/// None of them exists; the message names `scripts/test.sh`.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf> {
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
    data: PathBuf,
    proc: Option<Proc>,
}

/// Three Garage nodes on loopback forming one cluster with replication 3.
#[derive(Debug)]
pub struct Garage {
    bin: PathBuf,
    nodes: Vec<Node>,
}

impl Garage {
    /// Starts three nodes of `bin` under `dir` (their logs in `logs`), connects them, applies
    /// a layout with replication 3, imports the key and creates the bucket of `access`.
    ///
    /// # Errors
    /// A node does not start, or the cluster does not form within the deadline.
    pub fn start(bin: &Path, dir: &Path, logs: &Path, access: &Access<'_>) -> Result<Self> {
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
                data: root.join("data"),
                proc: Some(proc),
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
        let Access {
            bucket,
            key_name,
            access_key,
            secret_key,
        } = *access;
        cluster.cli_until_ok(
            0,
            &[
                "key", "import", "--yes", "-n", key_name, access_key, secret_key,
            ],
        )?;
        cluster.cli_until_ok(0, &["bucket", "create", bucket])?;
        cluster.cli_until_ok(
            0,
            &[
                "bucket", "allow", "--read", "--write", "--owner", bucket, "--key", key_name,
            ],
        )?;
        // Every node must see the bucket before the S3 API is used.
        for i in 0..3 {
            cluster.cli_until_ok(i, &["bucket", "info", bucket])?;
        }
        for node in &mut cluster.nodes {
            if let Some(proc) = node.proc.as_mut() {
                proc.wait_listening(node.s3)?;
            }
        }
        Ok(cluster)
    }

    /// The S3 endpoint (`http://127.0.0.1:PORT`) of node `i` (empty for no such node).
    #[must_use]
    pub fn endpoint(&self, i: usize) -> String {
        self.nodes
            .get(i)
            .map_or_else(String::new, |n| format!("http://{}", n.s3))
    }

    /// The data folders of every node (where object blocks lie).
    #[must_use]
    pub fn data_dirs(&self) -> Vec<PathBuf> {
        self.nodes.iter().map(|n| n.data.clone()).collect()
    }

    /// SIGKILLs node `i` (and reaps it).
    pub fn kill(&mut self, i: usize) {
        if let Some(node) = self.nodes.get_mut(i) {
            drop(node.proc.take());
        }
    }

    /// CPU time used so far by every running node.
    #[must_use]
    pub fn cpu(&self) -> Duration {
        self.nodes
            .iter()
            .filter_map(|n| n.proc.as_ref().and_then(Proc::cpu))
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
            // A command that needs the cluster formed fails fast until it is; asking again is
            // the wait (each attempt is a full RPC round trip, not a timed sleep).
            std::thread::yield_now();
        }
    }
}
