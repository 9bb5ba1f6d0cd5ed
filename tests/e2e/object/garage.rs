//! A real distributed S3 store for the object tier's tests: three Garage nodes on 127.0.0.1,
//! replication factor 3, one layout zone each, a key and a bucket; every node killed when the
//! cluster is dropped.
//!
//! Garage (crates.io `garage`, AGPL) is only ever run as a separate program: `scripts/test.sh`
//! installs it once into `$SENDENSE_TOOLS` (default `~/.cache/sendense-tools`), and a test
//! finds it there, at `$SENDENSE_GARAGE`, or on `PATH`; it fails loudly when it is missing.
//! Every wait is on a condition with a deadline.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Proc, s};

/// How long the cluster may take to form, and each command to succeed.
const DEADLINE: Duration = Duration::from_secs(60);
/// The bucket every test copies to.
pub(crate) const BUCKET: &str = "sendense-e2e";
/// The S3 region the nodes answer for.
pub(crate) const REGION: &str = "garage";
const RPC_SECRET: &str = "5e1d6a2f7b4c9e8d0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6071";
/// The access key (Garage ids are `GK` and 24 hex digits; secrets 64 hex digits).
pub(crate) const ACCESS_KEY: &str = "GK0123456789abcdef01234567";
/// The secret key.
pub(crate) const SECRET_KEY: &str =
    "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// The `garage` binary: `$SENDENSE_GARAGE`, else what `scripts/test.sh` installs, else `PATH`.
pub(crate) fn garage_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("SENDENSE_GARAGE") {
        return PathBuf::from(path);
    }
    let tools = std::env::var_os("SENDENSE_TOOLS").map_or_else(
        || {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/sendense-tools")
        },
        PathBuf::from,
    );
    let installed = tools.join("garage/bin/garage");
    if installed.exists() {
        return installed;
    }
    let on_path = Command::new("garage").arg("--version").output();
    assert!(
        on_path.is_ok_and(|o| o.status.success()),
        "garage is required (a real three-node S3 store for the object tier tests): \
         scripts/test.sh installs it into {} (cargo install --locked garage)",
        installed.display()
    );
    PathBuf::from("garage")
}

/// One node.
struct Node {
    config: PathBuf,
    s3: String,
    rpc: String,
    data: PathBuf,
    proc: Option<Proc>,
}

/// Three Garage nodes on loopback forming one cluster with replication 3.
pub(crate) struct Garage {
    nodes: Vec<Node>,
}

impl Garage {
    /// Starts three nodes under `dir`, connects them, applies a layout with replication 3,
    /// imports the key and creates the bucket.
    pub(crate) fn start(dir: &Path) -> Self {
        let bin = garage_bin();
        let mut nodes = Vec::new();
        for i in 0..3 {
            let root = dir.join(format!("garage{i}"));
            std::fs::create_dir_all(&root).unwrap();
            let s3 = format!("127.0.0.1:{}", free_port());
            let rpc = format!("127.0.0.1:{}", free_port());
            let admin = format!("127.0.0.1:{}", free_port());
            let data = root.join("data");
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
                    data = data.display(),
                ),
            )
            .unwrap();
            let log = std::fs::File::create(root.join("garage.log")).unwrap();
            let child = Command::new(&bin)
                .args(["-c", s(&config), "server"])
                .env("RUST_LOG", "garage=warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
            nodes.push(Node {
                config,
                s3,
                rpc,
                data,
                proc: Some(Proc(child)),
            });
        }
        let cluster = Self { nodes };
        let ids: Vec<String> = (0..3)
            .map(|i| {
                let out = cluster.cli_until_ok(i, &["node", "id", "-q"]);
                let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                // `node id -q` answers `<hex id>@<rpc address>`.
                id.split('@').next().unwrap().to_owned()
            })
            .collect();
        for (id, node) in ids.iter().zip(&cluster.nodes).skip(1) {
            let peer = format!("{id}@{}", node.rpc);
            cluster.cli_until_ok(0, &["node", "connect", &peer]);
        }
        for (i, id) in ids.iter().enumerate() {
            let zone = format!("z{i}");
            cluster.cli_until_ok(0, &["layout", "assign", "-z", &zone, "-c", "1G", id]);
        }
        cluster.cli_until_ok(0, &["layout", "apply", "--version", "1"]);
        cluster.cli_until_ok(
            0,
            &[
                "key", "import", "--yes", "-n", "e2e", ACCESS_KEY, SECRET_KEY,
            ],
        );
        cluster.cli_until_ok(0, &["bucket", "create", BUCKET]);
        cluster.cli_until_ok(
            0,
            &[
                "bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", "e2e",
            ],
        );
        // Every node must see the bucket before the S3 API of node 0 is used.
        for i in 0..3 {
            cluster.cli_until_ok(i, &["bucket", "info", BUCKET]);
        }
        cluster
    }

    /// The S3 endpoint (`http://127.0.0.1:PORT`) of node `i`.
    pub(crate) fn endpoint(&self, i: usize) -> String {
        format!("http://{}", self.nodes[i].s3)
    }

    /// The data folders of every node (where object blocks lie).
    pub(crate) fn data_dirs(&self) -> Vec<PathBuf> {
        self.nodes.iter().map(|n| n.data.clone()).collect()
    }

    /// SIGKILLs node `i`.
    pub(crate) fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].proc.take() {
            p.kill();
        }
    }

    /// The body of a `POST /api/v1/targets` naming this cluster (through node `i`).
    pub(crate) fn target_body(&self, name: &str, i: usize) -> serde_json::Value {
        serde_json::json!({
            "name": name, "endpoint": self.endpoint(i), "bucket": BUCKET, "region": REGION,
            "access_key": ACCESS_KEY, "secret_key": SECRET_KEY, "object_lock_days": 0
        })
    }

    /// Runs `garage -c <node i's config> ARGS` until it succeeds, up to [`DEADLINE`]; panics
    /// with its last output otherwise.
    fn cli_until_ok(&self, i: usize, args: &[&str]) -> Output {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let out = Command::new(garage_bin())
                .args(["-c", s(&self.nodes[i].config)])
                .args(args)
                .stdin(Stdio::null())
                .output()
                .unwrap();
            if out.status.success() {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "garage {args:?} on node {i} kept failing: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            // A command that needs the cluster formed fails fast until it is; asking again is
            // the wait (each attempt is a full RPC round trip, not a timed sleep).
            std::thread::yield_now();
        }
    }
}

/// A port free on 127.0.0.1 now (the node binds it right after).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
