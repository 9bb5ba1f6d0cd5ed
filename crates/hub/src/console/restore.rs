//! Restore: pick a point, then instant recovery or the file browser with download. The browser
//! reads through the same files engine as `GET /api/v1/backups/{id}/disks/{key}/files` and
//! `.../files/content`; a download is answered exactly as the API answers it.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use maud::html;
use sendense_types::{BackupId, BackupQuery, BackupStatus, DiskKey, FilesQuery, VmName};
use serde::Deserialize;

use super::auth::SignedIn;
use super::view::{self, Page, PageError, bytes, segment, status_badge, time};
use super::{ConsoleState, blocking};

/// Points listed on the restore page at most (newest first).
const MAX_LISTED_POINTS: usize = 300;

fn backup_id(id: &str) -> Result<BackupId, PageError> {
    id.parse()
        .map_err(|e| PageError::bad_request(format!("{id:?} is not a restore point id: {e}")))
}

fn disk_key(key: &str) -> Result<DiskKey, PageError> {
    key.parse()
        .map_err(|e| PageError::bad_request(format!("{key:?} is not a disk key: {e}")))
}

/// The restore page's filter.
#[derive(Debug, Default, Deserialize)]
pub(super) struct PointsQuery {
    #[serde(default)]
    vm_name: String,
}

/// `GET /restore?vm_name=`: completed points, newest first.
pub(super) async fn points(
    State(s): State<ConsoleState>,
    user: SignedIn,
    query: Result<Query<PointsQuery>, QueryRejection>,
) -> Page {
    let filter = query.map(|Query(q)| q).unwrap_or_default();
    let vm: Option<VmName> = match filter.vm_name.trim() {
        "" => None,
        v => Some(
            v.parse()
                .map_err(|e| PageError::bad_request(format!("{v:?} is not a VM name: {e}")))?,
        ),
    };
    let engine = Arc::clone(&s.api.engine);
    let query = BackupQuery {
        vm_name: vm,
        status: Some(BackupStatus::Completed),
    };
    let mut list = blocking(move || engine.backups(&query)).await?;
    list.sort_by_key(|b| std::cmp::Reverse(b.created_at));
    let content = html! {
        form.filters method="get" action="/restore" {
            label { "VM" input name="vm_name" value=(filter.vm_name) placeholder="any VM"; }
            button type="submit" { "Show" }
        }
        @if list.is_empty() { p.muted { "No completed restore point." } }
        div.scroll { table {
            thead { tr { th { "Point" } th { "VM" } th { "Type" } th { "Completed" } th.num { "Disks" } th { "Verified" } } }
            tbody {
                @for b in list.iter().take(MAX_LISTED_POINTS) {
                    tr {
                        td { a href={ "/restore/" (b.backup_id) } { (b.backup_id) } }
                        td { (b.vm_name) }
                        td { (b.backup_type) }
                        td { (time(b.completed_at)) }
                        td.num { (b.disks.len()) }
                        td { (b.verification.state.as_str()) }
                    }
                }
            }
        } }
    };
    Ok(view::page(&user, "Restore", "/restore", &content))
}

/// `GET /restore/{id}`: one point: its disks and partitions, instant recovery, files.
pub(super) async fn point(
    State(s): State<ConsoleState>,
    user: SignedIn,
    Path(id): Path<String>,
) -> Page {
    let id = backup_id(&id)?;
    let engine = Arc::clone(&s.api.engine);
    let target = id.clone();
    let (backup, partitions) = blocking(move || {
        let backup = engine.backup(&target)?;
        let partitions: Vec<_> = if backup.status == BackupStatus::Completed {
            backup
                .disks
                .iter()
                .map(|d| (d.disk_key, engine.partitions(&target, d.disk_key)))
                .collect()
        } else {
            Vec::new()
        };
        Ok((backup, partitions))
    })
    .await?;
    let operate = user.role.may_operate();
    let content = html! {
        p { "VM " a href={ "/vms/" (segment(backup.vm_name.as_str())) } { (backup.vm_name) } " · "
            (backup.backup_type) " · " (status_badge(backup.status.as_str())) " · created " (time(Some(backup.created_at))) }
        @if !operate {
            div.warn { "Your role (" (user.role) ") may look at points; restoring needs an operator or admin." }
        }
        @if operate && backup.status == BackupStatus::Completed {
            section.card {
                h2 { "Instant recovery" }
                p { "Run the VM straight from this point: the hub opens one writable NBD export per disk over a scratch overlay; the point itself never changes." }
                form.inline method="post" action={ "/restore/" (backup.backup_id) "/instant" } {
                    (view::csrf(&user))
                    button type="submit" { "Start instant recovery" }
                }
            }
        }
        section.card {
            h2 { "Files" }
            @for (key, parts) in &partitions {
                h3 { "Disk " (key) }
                @match parts {
                    Ok(p) => {
                        p.muted { "Partition table: " (p.table) }
                        div.scroll { table {
                            thead { tr { th { "Partition" } th { "File system" } th.num { "Size" } th { "" } } }
                            tbody {
                                @for part in &p.partitions {
                                    tr {
                                        td { (part.index) @if let Some(n) = &part.name { " " (n) } }
                                        td { (part.filesystem) }
                                        td.num { (bytes(part.size_bytes)) }
                                        td { @if part.browsable && operate {
                                            a href={ "/restore/" (backup.backup_id) "/disks/" (key) "/files?partition=" (part.index) "&path=%2F" } { "Browse files" }
                                        } }
                                    }
                                }
                                @if p.partitions.is_empty() && operate {
                                    tr { td colspan="4" {
                                        a href={ "/restore/" (backup.backup_id) "/disks/" (key) "/files?path=%2F" } { "Browse the whole disk as one file system" }
                                    } }
                                }
                            }
                        } }
                    }
                    Err(e) => { p.muted { "No file system can be read on this disk: " (view::words(e)) } }
                }
            }
            @if partitions.is_empty() { p.muted { "Files can be browsed on completed points only." } }
        }
    };
    Ok(view::page(
        &user,
        &format!("Restore point {}", backup.backup_id),
        "/restore",
        &content,
    ))
}

/// `POST /restore/{id}/instant` (operator): as `POST /api/v1/backups/{id}/instant`.
pub(super) async fn start_instant(
    State(s): State<ConsoleState>,
    user: SignedIn,
    Path(id): Path<String>,
) -> Page {
    user.require_operator("start instant recoveries")?;
    let id = backup_id(&id)?;
    let engine = Arc::clone(&s.api.engine);
    let instant = blocking(move || engine.start_instant(&id)).await?;
    tracing::info!(user = %user.name, instant = %instant.instant_id, "instant recovery started from the console");
    let content = html! {
        p { "Instant recovery " b { (instant.instant_id) } " of " (instant.backup_id) " is running. Point a hypervisor at these writable exports (NBD over TLS with a client certificate from the hub's CA):" }
        div.scroll { table {
            thead { tr { th { "Disk" } th { "NBD URI" } } }
            tbody { @for d in &instant.disks { tr { td { (d.disk_key) } td { code { (d.nbd_uri) } } } } }
        } }
        p.muted { "Discard it with " code { "sendense-hub ctl instant discard " (instant.instant_id) } " when done (what the guest wrote is lost)." }
    };
    Ok(view::page(
        &user,
        "Instant recovery started",
        "/restore",
        &content,
    ))
}

/// `GET /restore/{id}/disks/{key}/files?partition=&path=` (operator): a folder of a point.
pub(super) async fn browse(
    State(s): State<ConsoleState>,
    user: SignedIn,
    Path((id, key)): Path<(String, String)>,
    query: Result<Query<FilesQuery>, QueryRejection>,
) -> Page {
    user.require_operator("browse restore points")?;
    let (id, key) = (backup_id(&id)?, disk_key(&key)?);
    let Query(query) =
        query.map_err(|e| PageError::bad_request(format!("Bad folder: {}", e.body_text())))?;
    let engine = Arc::clone(&s.api.engine);
    let (target, q) = (id.clone(), query.clone());
    let listing = blocking(move || engine.list_files(&target, key, &q)).await?;
    let part = query
        .partition
        .map(|p| format!("partition={p}&"))
        .unwrap_or_default();
    let base = format!("/restore/{id}/disks/{key}");
    let join = |name: &str| {
        if listing.path.ends_with('/') {
            format!("{}{name}", listing.path)
        } else {
            format!("{}/{name}", listing.path)
        }
    };
    let parent = listing
        .path
        .trim_end_matches('/')
        .rsplit_once('/')
        .map(|(p, _)| if p.is_empty() { "/" } else { p }.to_owned());
    let content = html! {
        p { a href={ "/restore/" (id) } { "← " (id) } " · disk " (key)
            @if let Some(p) = query.partition { " · partition " (p) } }
        p { "Folder " code #folder { (listing.path) }
            " · " a href={ (base) "/download?" (part) "path=" (segment(&listing.path)) } { "download it as .tar" } }
        div.scroll { table #files {
            thead { tr { th { "Name" } th { "Type" } th.num { "Size" } th.hide-narrow { "Modified" } } }
            tbody {
                @if let Some(parent) = &parent {
                    tr { td { a href={ (base) "/files?" (part) "path=" (segment(parent)) } { ".. (up)" } } td { "directory" } td {} td.hide-narrow {} }
                }
                @for e in &listing.entries {
                    @let path = join(&e.name);
                    tr {
                        td { @match e.kind.as_str() {
                            "directory" => a href={ (base) "/files?" (part) "path=" (segment(&path)) } { (e.name) "/" },
                            "file" => a href={ (base) "/download?" (part) "path=" (segment(&path)) } download=(e.name) { (e.name) },
                            _ => span { (e.name) @if let Some(t) = &e.link_target { " → " (t) } },
                        } }
                        td { (e.kind) }
                        td.num { @if e.kind == "file" { (bytes(e.size)) } }
                        td.hide-narrow { (time(e.mtime)) }
                    }
                }
            }
        } }
    };
    Ok(view::page(&user, "Files", "/restore", &content))
}

/// `GET /restore/{id}/disks/{key}/download?partition=&path=` (operator): a file, or a folder as
/// tar, from the files engine, answered as the API answers it.
pub(super) async fn download(
    State(s): State<ConsoleState>,
    user: SignedIn,
    Path((id, key)): Path<(String, String)>,
    query: Result<Query<FilesQuery>, QueryRejection>,
) -> Page {
    user.require_operator("download files from restore points")?;
    let (id, key) = (backup_id(&id)?, disk_key(&key)?);
    let Query(query) =
        query.map_err(|e| PageError::bad_request(format!("Bad file: {}", e.body_text())))?;
    let content = s.api.engine.file_content(&id, key, &query, None).await?;
    tracing::info!(user = %user.name, backup = %id, disk = %key, path = ?query.path, "file downloaded from the console");
    // Private data: the console's `no-store` applies to it too.
    Ok(crate::api::content_response(content).into_response())
}
