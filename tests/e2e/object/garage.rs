//! A real distributed S3 store for the object tier's tests: three Garage nodes on 127.0.0.1,
//! replication factor 3, a key and a bucket, started by the launcher the benchmark harness's
//! `object` scenario uses too ([`sendense_bench::garage`]); every node killed when the cluster
//! is dropped.
//!
//! Garage (crates.io `garage`, AGPL) is only ever run as a separate program: `scripts/test.sh`
//! installs it once into `$SENDENSE_TOOLS` (default `~/.cache/sendense-tools`), and a test
//! finds it there, at `$SENDENSE_GARAGE`, or on `PATH`; it fails loudly when it is missing.

use std::path::{Path, PathBuf};

use sendense_bench::garage::{self, Access};

/// The bucket every test copies to.
pub(crate) const BUCKET: &str = "sendense-e2e";
/// The S3 region the nodes answer for.
pub(crate) const REGION: &str = garage::REGION;
/// The access key (Garage ids are `GK` and 24 hex digits; secrets 64 hex digits).
pub(crate) const ACCESS_KEY: &str = "GK0123456789abcdef01234567";
/// The secret key.
pub(crate) const SECRET_KEY: &str =
    "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// Three Garage nodes on loopback forming one cluster with replication 3.
pub(crate) struct Garage(garage::Garage);

impl Garage {
    /// Starts three nodes under `dir` (logs in `dir/logs`), connects them, applies a layout
    /// with replication 3, imports the key and creates the bucket.
    pub(crate) fn start(dir: &Path) -> Self {
        let bin = garage::locate(None).unwrap_or_else(|e| panic!("{e:#}"));
        let access = Access {
            bucket: BUCKET,
            key_name: "e2e",
            access_key: ACCESS_KEY,
            secret_key: SECRET_KEY,
        };
        let cluster = garage::Garage::start(&bin, dir, &dir.join("logs"), &access)
            .unwrap_or_else(|e| panic!("the Garage cluster did not start: {e:#}"));
        Self(cluster)
    }

    /// The S3 endpoint (`http://127.0.0.1:PORT`) of node `i`.
    pub(crate) fn endpoint(&self, i: usize) -> String {
        self.0.endpoint(i)
    }

    /// The data folders of every node (where object blocks lie).
    pub(crate) fn data_dirs(&self) -> Vec<PathBuf> {
        self.0.data_dirs()
    }

    /// SIGKILLs node `i`.
    pub(crate) fn kill(&mut self, i: usize) {
        self.0.kill(i);
    }

    /// The body of a `POST /api/v1/targets` naming this cluster (through node `i`).
    pub(crate) fn target_body(&self, name: &str, i: usize) -> serde_json::Value {
        serde_json::json!({
            "name": name, "endpoint": self.endpoint(i), "bucket": BUCKET, "region": REGION,
            "access_key": ACCESS_KEY, "secret_key": SECRET_KEY, "object_lock_days": 0
        })
    }
}
