//! Against govmomi's vCenter simulator (vcsim, VPX model), built from Debian's
//! `golang-github-vmware-govmomi-dev` by `tests/govmomi-sim` (README "Testing against govmomi's
//! simulator"): a configuration captured from one of its VMs, and a restore of it as a new VM
//! whose uploaded disk reads back equal from vcsim's datastore folder.
//!
//! The launcher is built once per test run into `target/govmomi-sim` (rebuilt when its source is
//! newer); a missing `go` fails the test. vcsim 0.24 has no `QueryChangedDiskAreas`, so a backup
//! (which needs CBT) is not run against it; capture and restore are.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use sendense_transfer::progress::NoProgress;
use sendense_transfer::source::MemorySource;
use sendense_transfer::{DiskSource, Extent};
use sendense_types::{RestoreRequest, RestoreTarget};
use sendense_vsphere::{
    ConnectOptions, DatastorePath, RestoreDisk, Session, TlsMode, UploadOptions, restore,
};

use super::MIB;

/// Serializes builds of the launcher inside this test process.
static BUILD: Mutex<()> = Mutex::new(());

/// `target/govmomi-sim`, built when missing or older than its source.
fn launcher() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let source = root.join("tests/govmomi-sim/main.go");
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let binary = target.join("govmomi-sim");
    let _guard = BUILD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let fresh = match (binary.metadata(), source.metadata()) {
        (Ok(b), Ok(s)) => b.modified().unwrap() >= s.modified().unwrap(),
        _ => false,
    };
    if !fresh {
        std::fs::create_dir_all(&target).unwrap();
        let partial = target.join(format!("govmomi-sim.{}", std::process::id()));
        let status = Command::new("go")
            .args(["build", "-o"])
            .arg(&partial)
            .arg("./tests/govmomi-sim")
            .current_dir(root)
            .env("GOPATH", "/usr/share/gocode")
            .env("GO111MODULE", "off")
            .status()
            .unwrap_or_else(|e| {
                panic!("`go` is needed to build tests/govmomi-sim (apt-get install golang-go golang-github-vmware-govmomi-dev): {e}")
            });
        assert!(
            status.success(),
            "building tests/govmomi-sim failed: {status}"
        );
        std::fs::rename(&partial, &binary).unwrap();
    }
    binary
}

/// A running vcsim; killed when dropped.
struct Vcsim {
    child: Child,
    address: String,
    user: String,
    password: String,
    ca_file: PathBuf,
    datastore: (String, PathBuf),
}

impl Drop for Vcsim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Vcsim {
    fn start() -> Self {
        let mut child = Command::new(launcher())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut fields: BTreeMap<String, String> = BTreeMap::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if line == "READY" {
                break;
            }
            let (k, v) = line.split_once(' ').unwrap();
            fields.entry(k.to_owned()).or_insert_with(|| v.to_owned());
        }
        let url = &fields["URL"];
        let rest = url.strip_prefix("https://").unwrap();
        let (creds, host) = rest.split_once('@').unwrap();
        let (user, password) = creds.split_once(':').unwrap();
        let (ds_name, ds_dir) = fields["DATASTORE"].split_once(' ').unwrap();
        Self {
            address: format!("https://{}", host.trim_end_matches("/sdk")),
            user: user.to_owned(),
            password: password.to_owned(),
            ca_file: PathBuf::from(&fields["CA_FILE"]),
            datastore: (ds_name.to_owned(), PathBuf::from(ds_dir)),
            child,
        }
    }

    async fn session(&self) -> Session {
        // vcsim serves a self-signed CA certificate as its own certificate, which webpki
        // refuses as an end entity (CaUsedAsEndEntity): the file is still read to check the
        // launcher wrote it, and the connection skips chain checks as `--insecure` does.
        assert!(
            std::fs::read_to_string(&self.ca_file)
                .unwrap()
                .contains("BEGIN CERTIFICATE")
        );
        let mut o =
            ConnectOptions::new(&self.address, &self.user, &self.password, TlsMode::Insecure);
        o.task_poll_interval = std::time::Duration::from_millis(20);
        Session::connect(o).await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn govmomi_simulator_config_capture_and_restore_as_a_new_vm() {
    let sim = Vcsim::start();
    let s = sim.session().await;
    let vm = s.find_vm("DC0/vm/DC0_H0_VM0").await.unwrap();

    let mut config = s.vm_config(&vm).await.unwrap();

    assert_eq!(config.name, "DC0_H0_VM0");
    assert!(config.num_cpus >= 1 && config.memory_mb >= 1, "{config:?}");
    assert!(
        !config.disks.is_empty() && !config.nics.is_empty(),
        "{config:?}"
    );
    let disk = &config.disks[0];
    assert!(
        config.controller(disk.controller_key).is_some(),
        "{config:?}"
    );
    // Restore it (smaller disks: the bytes are compared in memory).
    config.disks.truncate(1);
    config.disks[0].capacity_bytes = 4 * MIB;
    let mut data = vec![0u8; usize::try_from(4 * MIB).unwrap()];
    for (i, b) in data
        .iter_mut()
        .enumerate()
        .take(usize::try_from(MIB).unwrap())
    {
        *b = u8::try_from(i % 253).unwrap();
    }
    data[usize::try_from(3 * MIB).unwrap()..].fill(0x42);
    let source = MemorySource::new(data.clone())
        .with_allocated(vec![Extent::new(0, MIB), Extent::new(3 * MIB, MIB)]);
    let request = RestoreRequest {
        target: RestoreTarget::Vcenter,
        vm_name: "restored-by-sendense".to_owned(),
        credential: None,
        datacenter: "DC0".to_owned(),
        folder: None,
        resource_pool: None,
        host: None,
        datastore: sim.datastore.0.clone(),
        network_map: BTreeMap::new(),
        power_on: true,
        keep_macs: false,
        disks: None,
    };

    let done = restore(
        &s,
        &config,
        &request,
        vec![RestoreDisk {
            key: config.disks[0].key,
            source: Arc::new(source) as Arc<dyn DiskSource>,
        }],
        &UploadOptions::default(),
        Arc::new(NoProgress),
        std::future::pending(),
    )
    .await
    .unwrap();

    let restored = s.vm_config(&done.vm).await.unwrap();
    assert_eq!(
        (
            restored.num_cpus,
            restored.memory_mb,
            restored.guest_id.as_str(),
            restored.disks.len(),
            restored.disks[0].capacity_bytes,
            restored.nics.len()
        ),
        (
            config.num_cpus,
            config.memory_mb,
            config.guest_id.as_str(),
            1,
            4 * MIB,
            config.nics.len()
        )
    );
    let flat = DatastorePath::parse(&done.disks[0].file)
        .unwrap()
        .flat_extent()
        .unwrap();
    let local = sim.datastore.1.join(&flat.path);
    assert!(
        std::fs::read(&local).unwrap() == data,
        "{} differs",
        local.display()
    );
}
