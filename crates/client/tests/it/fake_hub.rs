//! A fake hub: just enough of the REST API over HTTPS (one request per connection) in front of
//! the in-process NBD server, recording what the client asked for.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use sendense_types::{
    Backup, BackupDisk, BackupId, BackupStatus, BackupType, ChangeId, CompleteBackupRequest,
    ExportName, FailBackupRequest, RegisterVmRequest, RestoreDisk, RestoreExports,
    StartBackupRequest, Timestamp,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::common::{Recording, TestNbd};

/// What the fake hub saw and holds.
#[derive(Default)]
pub(crate) struct HubState {
    pub(crate) capacities: BTreeMap<u32, u64>,
    pub(crate) backup: Option<Backup>,
    pub(crate) exports: BTreeMap<u32, Arc<Recording>>,
    pub(crate) completed: Option<CompleteBackupRequest>,
    pub(crate) failed: Option<String>,
    pub(crate) restore_closed: bool,
    /// Backup type the hub resolves `auto` to.
    pub(crate) auto_as: Option<BackupType>,
    /// Initial content of new exports (a previous state for incrementals).
    pub(crate) initial: BTreeMap<u32, Vec<u8>>,
    /// Answer export names that the NBD server does not know.
    pub(crate) break_exports: bool,
    /// Parent change id per disk of an incremental (a disk absent here is new to the VM).
    pub(crate) parents: BTreeMap<u32, ChangeId>,
    /// The parent backup an incremental answers.
    pub(crate) parent_backup_id: Option<BackupId>,
    /// Every start request received.
    pub(crate) starts: Vec<StartBackupRequest>,
    /// The digest files uploaded, per disk (the last one of each).
    pub(crate) digests: BTreeMap<u32, Vec<u8>>,
    /// How many digest files had arrived when `complete` came.
    pub(crate) digests_at_complete: Option<usize>,
    /// Answer digest uploads with this status and an error (404: a hub older than the route).
    pub(crate) refuse_digests: Option<u16>,
    /// Every `POST /api/v1/backups/{id}/restore` body received.
    pub(crate) restores: Vec<serde_json::Value>,
    /// What `GET /api/v1/jobs/{id}` answers, one per read (the last one stays).
    pub(crate) job_script: Vec<serde_json::Value>,
}

pub(crate) struct FakeHub {
    pub(crate) url: String,
    pub(crate) state: Arc<Mutex<HubState>>,
    _nbd: Arc<TestNbd>,
}

const TOKEN: &str = "test-token";

impl FakeHub {
    pub(crate) async fn start(tls: Arc<rustls::ServerConfig>, nbd: Arc<TestNbd>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(HubState::default()));
        let acceptor = TlsAcceptor::from(tls);
        let st = Arc::clone(&state);
        let n = Arc::clone(&nbd);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let st = Arc::clone(&st);
                let n = Arc::clone(&n);
                tokio::spawn(async move {
                    let Ok(mut io) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Some((method, path, auth, body)) = read_request(&mut io).await else {
                        return;
                    };
                    let (status, answer) = if auth.as_deref() == Some(&format!("Bearer {TOKEN}")) {
                        route(&st, &n, &method, &path, &body)
                    } else {
                        (
                            401,
                            r#"{"error":"unauthorized","message":"bad token"}"#.to_owned(),
                        )
                    };
                    let head = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        answer.len()
                    );
                    let _ = io.write_all(head.as_bytes()).await;
                    let _ = io.write_all(answer.as_bytes()).await;
                    let _ = io.shutdown().await;
                });
            }
        });
        Self {
            url: format!("https://localhost:{port}"),
            state,
            _nbd: nbd,
        }
    }

    pub(crate) fn token() -> &'static str {
        TOKEN
    }
}

async fn read_request<S: AsyncReadExt + Unpin>(
    io: &mut S,
) -> Option<(String, String, Option<String>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = io.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.lines();
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_owned();
    let path = first.next()?.to_owned();
    let mut len = 0usize;
    let mut auth = None;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => len = v.trim().parse().ok()?,
                "authorization" => auth = Some(v.trim().to_owned()),
                _ => {}
            }
        }
    }
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = io.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some((method, path, auth, body))
}

fn route(
    state: &Mutex<HubState>,
    nbd: &TestNbd,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, String) {
    let mut st = state.lock().unwrap();
    match (method, path) {
        ("POST", "/api/v1/vms") => {
            let req: RegisterVmRequest = serde_json::from_slice(body).unwrap();
            st.capacities = req
                .disks()
                .iter()
                .map(|d| (d.key.get(), d.capacity_bytes))
                .collect();
            let vm = serde_json::json!({
                "name": req.name(), "disks": req.disks(),
                "created_at": Timestamp::now(), "updated_at": Timestamp::now(),
            });
            (200, vm.to_string())
        }
        ("POST", "/api/v1/backups") => {
            let req: StartBackupRequest = serde_json::from_slice(body).unwrap();
            st.starts.push(req.clone());
            let backup_type = match req.backup_type {
                BackupType::Auto => st.auto_as.unwrap_or(BackupType::Full),
                t => t,
            };
            let mut disks = Vec::new();
            let capacities = st.capacities.clone();
            for (key, cap) in capacities {
                let name = ExportName::random();
                let initial = st
                    .initial
                    .get(&key)
                    .cloned()
                    .unwrap_or_else(|| vec![0u8; usize::try_from(cap).unwrap()]);
                if !st.break_exports {
                    let export = nbd.add(name.as_str(), &initial);
                    st.exports.insert(key, export);
                }
                disks.push(BackupDisk {
                    disk_key: key.into(),
                    capacity_bytes: cap,
                    file: None,
                    nbd_uri: Some(nbd.uri(true, name.as_str())),
                    export_name: Some(name),
                    parent_change_id: (backup_type == BackupType::Incremental)
                        .then(|| st.parents.get(&key).cloned())
                        .flatten(),
                    change_id: None,
                    bytes_written: 0,
                });
            }
            let backup = Backup {
                backup_id: BackupId::new(&req.vm_name, Timestamp::now()),
                vm_name: req.vm_name,
                backup_type,
                status: BackupStatus::Running,
                parent_backup_id: (backup_type == BackupType::Incremental)
                    .then(|| st.parent_backup_id.clone())
                    .flatten(),
                created_at: Timestamp::now(),
                completed_at: None,
                failure_reason: None,
                full_reason: None,
                files_missing: false,
                protected: false,
                verification: sendense_types::Verification::default(),
                disks,
                vm_config: None,
                evicted: false,
                copies: Vec::new(),
            };
            st.backup = Some(backup.clone());
            (201, serde_json::to_string(&backup).unwrap())
        }
        ("PUT", p) if p.contains("/disks/") && p.ends_with("/digests") => {
            if let Some(status) = st.refuse_digests {
                return (
                    status,
                    r#"{"error":"refused","message":"digests refused by the test"}"#.to_owned(),
                );
            }
            let key: u32 = p.rsplit('/').nth(1).unwrap().parse().unwrap();
            st.digests.insert(key, body.to_vec());
            (204, String::new())
        }
        ("POST", p) if p.ends_with("/complete") => {
            let req: CompleteBackupRequest = serde_json::from_slice(body).unwrap();
            st.completed = Some(req);
            st.digests_at_complete = Some(st.digests.len());
            if let Some(b) = st.backup.as_mut() {
                b.status = BackupStatus::Completed;
            }
            (200, serde_json::to_string(&st.backup).unwrap())
        }
        ("POST", p) if p.ends_with("/fail") => {
            let req: FailBackupRequest = serde_json::from_slice(body).unwrap();
            st.failed = Some(req.reason().to_owned());
            if let Some(b) = st.backup.as_mut() {
                b.status = BackupStatus::Failed;
            }
            (200, serde_json::to_string(&st.backup).unwrap())
        }
        ("POST", p) if p.ends_with("/exports") => {
            let disks = st
                .exports
                .keys()
                .map(|&key| {
                    let name = ExportName::random();
                    let data = st.exports[&key].contents();
                    nbd.add(name.as_str(), &data);
                    RestoreDisk {
                        disk_key: key.into(),
                        nbd_uri: nbd.uri(true, name.as_str()),
                        export_name: name,
                    }
                })
                .collect();
            (
                200,
                serde_json::to_string(&RestoreExports { disks }).unwrap(),
            )
        }
        ("POST", p) if p.ends_with("/restore") => {
            st.restores.push(serde_json::from_slice(body).unwrap());
            (202, r#"{"job_id":"job-00000000000000aa"}"#.to_owned())
        }
        ("GET", "/api/v1/jobs/job-00000000000000aa") => {
            let job = if st.job_script.len() > 1 {
                st.job_script.remove(0)
            } else {
                st.job_script.first().cloned().unwrap_or_default()
            };
            (200, job.to_string())
        }
        ("DELETE", p) if p.ends_with("/exports") => {
            st.restore_closed = true;
            (204, String::new())
        }
        ("GET", p) if p.starts_with("/api/v1/backups/") => match &st.backup {
            Some(b) => (200, serde_json::to_string(b).unwrap()),
            None => (
                404,
                r#"{"error":"not_found","message":"no such backup"}"#.to_owned(),
            ),
        },
        _ => (
            404,
            r#"{"error":"not_found","message":"no route"}"#.to_owned(),
        ),
    }
}
