//! `object`: the object tier against a real three-node store. Issue 18: "Copy throughput to
//! the local three-node store at least 80% of what `aws s3 cp`-class tools reach on the same
//! store; restore from the bucket at least 50% of a local restore."
//!
//! A Garage cluster of three nodes on loopback with replication 3 ([`crate::garage`]), a
//! `sendense-hub serve` of its own, the test data backed up once by `sendense-client backup`.
//! Then, through the hub's public API only (so it measures whatever the hub does):
//! - copy: `POST /api/v1/targets` (the cluster), `POST /api/v1/backups/{id}/copy`, polled
//!   until the copy is `verified` (sealed, uploaded in parts, read back and checked) vs, right
//!   after, the `object_store` crate's own multipart upload (`WriteMultipart`, parts of the
//!   hub's size, as many in flight as the hub's copy) of the point's image file to the same
//!   bucket through the same node. The note adds the peer's upload plus a read-back with
//!   SHA-256 (what our copy's verification does) and that ratio;
//! - restore: `sendense-client restore --format raw` of the point while its files are local,
//!   then `POST /api/v1/backups/{id}/evict` and the same restore of the point that now lives
//!   only in the bucket. Both compared with the test data.
//!
//! MB/s counts the image file's length for the copy rows, the disk size for the restores. CPU
//! is the hub's (ours) or the harness's (peer) plus the three Garage nodes'.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, WriteMultipart};
use sendense_client::hub::{HubClient, HubOptions, Method};
use serde_json::{Value, json};

use super::inproc::self_cpu;
use super::{BackupRun, CLIENT_TLS_DIR, Ctx, DISK_KEY, VM, failed, loadavg};
use crate::garage::{self, Access, Garage, REGION};
use crate::proc::Proc;
use crate::report::{Measure, Outcome, Row};

/// The target's name.
const TARGET: &str = "bench-garage";
/// How long a copy may take.
const COPY_DEADLINE: Duration = Duration::from_secs(3600);
/// Pause between two looks at the copy's state.
const POLL: Duration = Duration::from_millis(20);
/// The bucket.
const BUCKET: &str = "sendense-bench";
/// The access key (Garage ids are `GK` and 24 hex digits; secrets 64 hex digits).
const ACCESS_KEY: &str = "GK0b0e0c0d0a0b0c0d0e0f0a0b";
/// The secret key.
const SECRET_KEY: &str = "b0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecf";
/// The peer's object.
const PEER_OBJECT: &str = "bench-peer/image.qcow2";

/// Figures of one run.
struct Figures {
    copy: Measure,
    upload: Measure,
    upload_read_back_secs: f64,
    local: Measure,
    bucket: Measure,
    image_len: u64,
}

impl Ctx<'_> {
    /// `object`: copy to a three-node Garage vs `object_store`'s multipart upload; restore of
    /// an evicted point vs of the same point while local.
    pub(super) fn object(&mut self) {
        let load = loadavg()[0];
        let work = self.dir.join("object");
        self.say(&format!(
            "object: a three-node Garage cluster, a {} MiB point copied to it, then restored from it",
            self.opts.size >> 20
        ));
        let result = self.object_inner(&work);
        if !self.opts.keep {
            let _ = std::fs::remove_dir_all(&work);
        }
        let copy_case = "copy job to 3-node Garage (sealed, until verified)";
        let copy_peer = "object_store WriteMultipart of the image file";
        let restore_case = "client restore of the evicted point (bucket only)";
        let restore_peer = "client restore of the same point while local";
        match result {
            Ok(f) => {
                let mut copy = Row::new(
                    "object",
                    copy_case,
                    Outcome::Measured(f.copy),
                    copy_peer,
                    Outcome::Measured(f.upload),
                );
                copy.note = format!(
                    "issue 18: ratio >= 0.8; {} MiB image file; ours seals, uploads ({} parts \
                     of about {} MiB, {} at once) and reads every object back with SHA-256; \
                     the peer uploads with the same part size and concurrency ({:.2} s), then \
                     read back with SHA-256 {:.2} s in all: ratio against that {:.2}",
                    f.image_len >> 20,
                    f.image_len
                        .div_ceil(u64::try_from(part_size()).unwrap_or(u64::MAX)),
                    part_size() >> 20,
                    sendense_hub::tier::PARALLEL_PARTS,
                    f.upload.seconds,
                    f.upload_read_back_secs,
                    f.upload_read_back_secs / f.copy.seconds.max(f64::MIN_POSITIVE)
                );
                self.push(copy, load);
                let mut restore = Row::new(
                    "object",
                    restore_case,
                    Outcome::Measured(f.bucket),
                    restore_peer,
                    Outcome::Measured(f.local),
                );
                restore.note = "issue 18: ratio >= 0.5; the same point, evicted after the \
                                local restore; both verified identical to the test data; RSS \
                                is the client's"
                    .into();
                self.push(restore, load);
            }
            Err(e) => {
                let error = failed(&format!("{e:#}"));
                let row = Row::new("object", copy_case, error.clone(), copy_peer, error.clone());
                self.push(row, load);
                let row = Row::new("object", restore_case, error.clone(), restore_peer, error);
                self.push(row, load);
            }
        }
    }

    fn object_inner(&self, work: &Path) -> Result<Figures> {
        let bin = garage::locate(self.opts.garage.as_deref())?;
        let access = Access {
            bucket: BUCKET,
            key_name: "bench",
            access_key: ACCESS_KEY,
            secret_key: SECRET_KEY,
        };
        let cluster = Garage::start(&bin, &work.join("garage"), &self.logs, &access)
            .context("cannot start the Garage cluster")?;
        let data_dir = work.join("hub");
        let (hub, hub_url) = self.start_hub(&data_dir)?;
        self.say("object: full backup of the test data");
        let backup = self.backup(&hub, &hub_url, &data_dir, None, None)?;
        let image = data_dir
            .join("repository")
            .join(VM)
            .join(format!("disk-{DISK_KEY}"))
            .join(format!("{}.qcow2", backup.id));
        let image_len = std::fs::metadata(&image)
            .with_context(|| format!("cannot stat {}", image.display()))?
            .len();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot build a tokio runtime")?;
        let api = HubClient::new(&HubOptions::with_tls_dir(
            &hub_url,
            &data_dir.join(CLIENT_TLS_DIR),
            &data_dir.join("api.token"),
        ))
        .context("cannot make the hub's API client")?;
        let target = json!({
            "name": TARGET, "endpoint": cluster.endpoint(0), "bucket": BUCKET, "region": REGION,
            "access_key": ACCESS_KEY, "secret_key": SECRET_KEY, "object_lock_days": 0
        });
        rt.block_on(api.request(Method::POST, "/api/v1/targets", Some(&target)))
            .context("POST /api/v1/targets")?;

        // Ours: the copy job, until verified. Before each timed step, what earlier steps left
        // in the page cache is written back (`sync -f`), so that no side pays for the
        // kernel flushing another's writes (Garage writes every object three times).
        self.write_back(work)?;
        self.say("object: copy job to the cluster, until verified");
        let (hub0, garage0) = (hub.cpu().unwrap_or_default(), cluster.cpu());
        let started = Instant::now();
        rt.block_on(copy_until_verified(&api, &backup))?;
        let secs = started.elapsed().as_secs_f64();
        let cpu = hub.cpu().unwrap_or_default().saturating_sub(hub0)
            + cluster.cpu().saturating_sub(garage0);
        let copy = Measure::new(secs, image_len, cpu.as_secs_f64(), hub.peak_rss());

        // Peer: object_store's multipart upload of the same file, right after (its SHA-256,
        // which our copy knows from its manifest, taken before the clock starts).
        let digest = sha256_of(&image)?;
        self.write_back(work)?;
        self.say("object: object_store multipart upload of the same image file");
        let (self0, garage0) = (self_cpu(), cluster.cpu());
        let started = Instant::now();
        let store = rt.block_on(peer_upload(&cluster.endpoint(0), &image))?;
        let upload_secs = started.elapsed().as_secs_f64();
        let cpu = self_cpu().saturating_sub(self0) + cluster.cpu().saturating_sub(garage0);
        let upload = Measure::new(upload_secs, image_len, cpu.as_secs_f64(), None);
        rt.block_on(peer_read_back(&store, &digest))?;
        let upload_read_back_secs = started.elapsed().as_secs_f64();

        // Restores: the point while local (peer), then evicted (ours).
        self.say("object: restore of the point while local");
        let work_restore = work.join("restore");
        std::fs::create_dir_all(&work_restore)?;
        self.write_back(work)?;
        let local = self.restore_to_file(&hub, &hub_url, &data_dir, &backup.id, &work_restore)?;
        self.say("object: evict the point, restore it from the bucket");
        rt.block_on(api.request(
            Method::POST,
            &format!("/api/v1/backups/{}/evict", backup.id),
            None,
        ))
        .context("evict")?;
        if image.exists() {
            bail!("the evicted point's image is still in the repository");
        }
        self.write_back(work)?;
        let garage0 = cluster.cpu();
        let mut bucket =
            self.restore_to_file(&hub, &hub_url, &data_dir, &backup.id, &work_restore)?;
        bucket.cpu_seconds += cluster.cpu().saturating_sub(garage0).as_secs_f64();
        stop(hub)?;
        drop(cluster);
        Ok(Figures {
            copy,
            upload,
            upload_read_back_secs,
            local,
            bucket,
            image_len,
        })
    }
}

/// The hub's part size (its copy's `PART_CHUNKS` chunks of `CHUNK_SIZE`, 1 MiB).
fn part_size() -> usize {
    const CHUNK: usize = 1 << 20;
    usize::try_from(sendense_hub::tier::PART_CHUNKS).map_or(8 * CHUNK, |n| n * CHUNK)
}

/// Queues the copy of `backup` and waits until it is verified.
async fn copy_until_verified(api: &HubClient, backup: &BackupRun) -> Result<()> {
    api.request(
        Method::POST,
        &format!("/api/v1/backups/{}/copy", backup.id),
        Some(&json!({ "target": TARGET })),
    )
    .await
    .context("POST copy")?;
    let deadline = Instant::now() + COPY_DEADLINE;
    loop {
        let answer = api
            .request(Method::GET, &format!("/api/v1/backups/{}", backup.id), None)
            .await
            .context("GET the backup")?;
        match copy_state(&answer) {
            Some(("verified", _)) => return Ok(()),
            Some(("failed", error)) => bail!("the copy failed: {error}"),
            _ if Instant::now() > deadline => bail!("the copy did not finish: {answer}"),
            _ => tokio::time::sleep(POLL).await,
        }
    }
}

/// The state and error of the copy to [`TARGET`] in a backup's answer.
fn copy_state(backup: &Value) -> Option<(&str, &str)> {
    let copy = backup["copies"]
        .as_array()?
        .iter()
        .find(|c| c["target"] == TARGET)?;
    Some((
        copy["state"].as_str()?,
        copy["error"].as_str().unwrap_or_default(),
    ))
}

/// The `object_store` crate's multipart upload of `file` to the bucket through `endpoint`:
/// parts of [`part_size`], [`sendense_hub::tier::PARALLEL_PARTS`] in flight.
async fn peer_upload(endpoint: &str, file: &Path) -> Result<object_store::aws::AmazonS3> {
    use tokio::io::AsyncReadExt;
    let store = AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_bucket_name(BUCKET)
        .with_region(REGION)
        .with_access_key_id(ACCESS_KEY)
        .with_secret_access_key(SECRET_KEY)
        .with_virtual_hosted_style_request(false)
        .with_client_options(ClientOptions::new().with_allow_http(true))
        .build()
        .context("cannot configure object_store's S3 client")?;
    let upload = store
        .put_multipart(&ObjectPath::from(PEER_OBJECT))
        .await
        .context("object_store: start the multipart upload")?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, part_size());
    let mut f = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("cannot open {}", file.display()))?;
    let mut buf = vec![0u8; part_size()];
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        writer
            .wait_for_capacity(sendense_hub::tier::PARALLEL_PARTS)
            .await
            .context("object_store: upload a part")?;
        writer.write(buf.get(..n).unwrap_or_default());
    }
    writer
        .finish()
        .await
        .context("object_store: complete the upload")?;
    Ok(store)
}

/// Reads the peer's object back and checks its SHA-256 against `digest`.
async fn peer_read_back(store: &object_store::aws::AmazonS3, digest: &[u8]) -> Result<()> {
    use futures::StreamExt;
    let mut stream = store
        .get(&ObjectPath::from(PEER_OBJECT))
        .await
        .context("object_store: read the object back")?
        .into_stream();
    let mut remote = ring::digest::Context::new(&ring::digest::SHA256);
    while let Some(chunk) = stream.next().await {
        remote.update(&chunk.context("object_store: read the object back")?);
    }
    if remote.finish().as_ref() != digest {
        bail!("the peer's object read back differs from the image file");
    }
    Ok(())
}

/// The SHA-256 of a file, read in 1 MiB pieces.
fn sha256_of(file: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut f =
        std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(ctx.finish().as_ref().to_vec());
        }
        ctx.update(buf.get(..n).unwrap_or_default());
    }
}

fn stop(hub: Proc) -> Result<()> {
    hub.stop().map(drop)
}
