//! Restore: pick a point, then the whole VM or its disks into vCenter (a `restore` job, as
//! `POST /api/v1/backups/{id}/restore` queues it), instant recovery (start, list with the NBD
//! URIs, discard, as `POST /api/v1/backups/{id}/instant` and `DELETE /api/v1/instant/{id}`),
//! or the file browser with download. The browser reads through the same files engine as
//! `GET /api/v1/backups/{id}/disks/{key}/files` and `.../files/content`; a download is
//! answered exactly as the API answers it.

use std::sync::Arc;

use axum::Form;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect};
use maud::{Markup, html};
use sendense_types::{
    BackupId, BackupQuery, BackupStatus, DiskKey, FilesQuery, InstantId, InstantRecovery,
    RestoreRequest, VmName,
};
use serde::Deserialize;
use serde_json::json;

use crate::error::HubError;

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
    let (mut list, instants) =
        blocking(move || Ok((engine.backups(&query)?, engine.instants()?.instants))).await?;
    list.sort_by_key(|b| std::cmp::Reverse(b.created_at));
    let content = html! {
        (instant_list(&user, &instants, true))
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
    let credentials = Arc::clone(&s.api.credentials);
    let (backup, partitions, instants, creds) = blocking(move || {
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
        let instants: Vec<InstantRecovery> = engine
            .instants()?
            .instants
            .into_iter()
            .filter(|i| i.backup_id == target)
            .collect();
        Ok((backup, partitions, instants, credentials.list()?))
    })
    .await?;
    let operate = user.role.may_operate();
    let networks: Vec<&str> = backup
        .vm_config
        .as_ref()
        .map(|c| c.networks().into_iter().collect())
        .unwrap_or_default();
    let content = html! {
        p { "VM " a href={ "/vms/" (segment(backup.vm_name.as_str())) } { (backup.vm_name) } " · "
            (backup.backup_type) " · " (status_badge(backup.status.as_str())) " · created " (time(Some(backup.created_at))) }
        @if !operate {
            div.warn { "Your role (" (user.role) ") may look at points; restoring needs an operator or admin." }
        }
        @if operate && backup.status == BackupStatus::Completed {
            section.card #restore-vm-card {
                h2 { "Restore the VM or its disks into vCenter" }
                @match &backup.vm_config {
                    None => {
                        div.warn #no-vm-config { "This point has no captured VM configuration (it was taken before configurations were captured, or by a plain " code { "sendense-client backup" } "): the hub will refuse to restore it into vCenter. Its files can still be browsed below." }
                    }
                    Some(c) => {
                        p.muted { "Captured: " (c.num_cpus) " vCPU, " (c.memory_mb) " MiB memory, " (c.disks.len()) " disks, " (c.nics.len()) " network adapters, guest " (c.guest_id) "." }
                    }
                }
                form.stack.wide-form #restore-vm method="post" action={ "/restore/" (backup.backup_id) "/vm" } {
                    (view::csrf(&user))
                    fieldset {
                        legend { "Restore to" }
                        label.check { input type="radio" name="target" value="vcenter" checked; "a new VM (built from the captured configuration)" }
                        label.check { input type="radio" name="target" value="existing_vm"; "an existing VM (the disks are added as new disks; none is overwritten)" }
                    }
                    div.fields {
                        label { "VM name" small { "the new VM, or the existing VM's name or inventory path" }
                            input #restore-name name="vm_name" required maxlength="1024" value={ (backup.vm_name) "-restored" }; }
                        label { "vCenter credential" small { "its agent runs the restore" }
                            select #restore-credential name="credential" {
                                option value="" { "the one this VM was backed up with" }
                                @for c in &creds { option value=(c.name) { (c.name) " (" (c.host) ")" } }
                            } }
                        label { "Datacenter" input #restore-datacenter name="datacenter" required maxlength="1024" placeholder="dc1"; }
                        label { "Datastore" input #restore-datastore name="datastore" required maxlength="1024" placeholder="datastore1"; }
                        label { "VM folder" small { "optional, below the datacenter" } input name="folder" maxlength="1024" placeholder="vm/restored"; }
                        label { "Resource pool" small { "optional" } input name="resource_pool" maxlength="1024"; }
                        label { "Host" small { "optional: vCenter chooses" } input name="host" maxlength="1024"; }
                    }
                    @if !networks.is_empty() {
                        fieldset {
                            legend { "Networks" }
                            p.muted { "Each captured network is connected to the network of the same name unless you type another." }
                            div.fields {
                                @for n in &networks {
                                    label { "Captured network " b { (n) } input name={ "net:" (n) } maxlength="1024" placeholder=(n) aria-label={ "Network for " (n) }; }
                                }
                            }
                        }
                    }
                    fieldset {
                        legend { "Disks" }
                        @for d in &backup.disks {
                            label.check { input type="checkbox" name="disk" value=(d.disk_key) checked; "Disk " (d.disk_key) " (" (bytes(d.capacity_bytes)) ")" }
                        }
                    }
                    label.check { input type="checkbox" name="power_on" value="on"; "Power the new VM on when its disks are uploaded" }
                    label.check { input type="checkbox" name="keep_macs" value="on"; "Keep the captured MAC addresses (only if the original VM is gone)" }
                    div { button type="submit" #restore-start { "Queue the restore" } }
                }
            }
            section.card {
                h2 { "Instant recovery" }
                p { "Run the VM straight from this point: the hub opens one writable NBD export per disk over a scratch overlay; the point itself never changes." }
                form.inline method="post" action={ "/restore/" (backup.backup_id) "/instant" } {
                    (view::csrf(&user))
                    button type="submit" #instant-start { "Start instant recovery" }
                }
            }
        }
        @if !instants.is_empty() { (instant_list(&user, &instants, false)) }
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

/// The running instant recoveries, each disk's NBD URI ready to copy, and a discard button
/// for operators; `points` also names each one's point.
fn instant_list(user: &SignedIn, instants: &[InstantRecovery], points: bool) -> Markup {
    let operate = user.role.may_operate();
    html! {
        section.card #instants aria-labelledby="h-instants" {
            h2 #h-instants { "Instant recoveries" }
            @if instants.is_empty() {
                p.muted { "None is running." }
            }
            @for i in instants {
                div.instant id={ "instant-" (i.instant_id) } {
                    p {
                        b { (i.instant_id) } " · "
                        span class={ "badge state-" (i.state) } { (i.state) }
                        @if points { " · point " a href={ "/restore/" (i.backup_id) } { (i.backup_id) } }
                        " · VM " (i.vm_name) " · started " (time(Some(i.created_at)))
                    }
                    @if let Some(e) = &i.error { div.error role="alert" { (e) } }
                    ul.uris {
                        @for d in &i.disks {
                            @let id = format!("uri-{}-{}", i.instant_id, d.disk_key);
                            li {
                                "Disk " (d.disk_key) ": "
                                code.uri id=(id) { (d.nbd_uri) }
                                " " button.secondary type="button" data-copy=(id) aria-label={ "Copy the NBD URI of disk " (d.disk_key) } { "Copy" }
                            }
                        }
                    }
                    @if operate {
                        form.inline method="post" action={ "/restore/instant/" (i.instant_id) "/discard" } {
                            (view::csrf(user))
                            button.danger type="submit" aria-label={ "Discard instant recovery " (i.instant_id) } { "Discard (what the guest wrote is lost)" }
                        }
                    }
                }
            }
            @if !instants.is_empty() {
                p.muted { "Exports are NBD over TLS: the peer needs a client certificate from the hub's CA (" code { "sendense-hub cert issue" } ")." }
            }
        }
    }
}

/// `POST /restore/{id}/instant` (operator): as `POST /api/v1/backups/{id}/instant`; back to
/// the point, whose page lists it with its NBD URIs.
pub(super) async fn start_instant(
    State(s): State<ConsoleState>,
    user: SignedIn,
    Path(id): Path<String>,
) -> Page {
    user.require_operator("start instant recoveries")?;
    let id = backup_id(&id)?;
    let engine = Arc::clone(&s.api.engine);
    let target = id.clone();
    let instant = blocking(move || engine.start_instant(&target)).await?;
    tracing::info!(user = %user.name, instant = %instant.instant_id, "instant recovery started from the console");
    user.flash(
        &s,
        format!(
            "Instant recovery {} started: point a hypervisor at the NBD URIs below.",
            instant.instant_id
        ),
    );
    Ok(Redirect::to(&format!("/restore/{id}#instants")).into_response())
}

/// `POST /restore/instant/{id}/discard` (operator): as `DELETE /api/v1/instant/{id}`.
pub(super) async fn discard_instant(
    State(s): State<ConsoleState>,
    user: SignedIn,
    Path(id): Path<String>,
) -> Page {
    user.require_operator("discard instant recoveries")?;
    let id: InstantId = id.parse().map_err(|e| {
        PageError::bad_request(format!("{id:?} is not an instant recovery id: {e}"))
    })?;
    let gone = s.api.engine.discard_instant(&id).await?;
    tracing::info!(user = %user.name, instant = %gone.instant_id, "instant recovery discarded from the console");
    user.flash(
        &s,
        format!(
            "Instant recovery {} discarded; point {} is as it was.",
            gone.instant_id, gone.backup_id
        ),
    );
    Ok(Redirect::to("/restore").into_response())
}

/// The restore form as the browser posts it: repeated `disk` fields, `net:NAME` fields.
type Fields = Vec<(String, String)>;

/// The [`RestoreRequest`] of the restore form, checked as the API checks its body.
///
/// # Errors
/// [`PageError`] 400 naming the field that is wrong.
fn restore_request(fields: &Fields) -> Result<RestoreRequest, PageError> {
    let one = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    };
    let mut network_map = serde_json::Map::new();
    for (k, v) in fields {
        if let Some(from) = k.strip_prefix("net:")
            && !v.trim().is_empty()
            && v.trim() != from
        {
            network_map.insert(from.to_owned(), json!(v.trim()));
        }
    }
    let disks: Vec<&str> = fields
        .iter()
        .filter(|(k, _)| k == "disk")
        .map(|(_, v)| v.as_str())
        .collect();
    if disks.is_empty() {
        return Err(PageError::bad_request("Tick at least one disk to restore."));
    }
    let keys = disks
        .iter()
        .map(|d| {
            d.parse::<u32>()
                .map_err(|_| PageError::bad_request(format!("{d:?} is not a disk key")))
        })
        .collect::<Result<Vec<u32>, PageError>>()?;
    let mut body = json!({
        "target": one("target").unwrap_or("vcenter"),
        "vm_name": one("vm_name").unwrap_or_default(),
        "datacenter": one("datacenter").unwrap_or_default(),
        "datastore": one("datastore").unwrap_or_default(),
        "network_map": network_map,
        "power_on": one("power_on").is_some(),
        "keep_macs": one("keep_macs").is_some(),
        "disks": keys,
    });
    for field in ["credential", "folder", "resource_pool", "host"] {
        if let Some(v) = one(field) {
            body[field] = json!(v);
        }
    }
    for (field, what) in [
        ("vm_name", "a VM name"),
        ("datacenter", "the datacenter"),
        ("datastore", "the datastore"),
    ] {
        if one(field).is_none() {
            return Err(PageError::bad_request(format!(
                "Type {what}: the restore cannot be placed without it."
            )));
        }
    }
    serde_json::from_value(body).map_err(|e| {
        let e = e.to_string();
        let e = if e.contains("power_on") {
            "Powering on applies to a new VM only: untick it to add the disks to an existing VM."
                .to_owned()
        } else {
            e
        };
        PageError::bad_request(format!("The restore was not queued: {e}"))
    })
}

/// A refused restore in words: what is wrong with this point or this form, and what to do.
fn restore_refusal(e: HubError) -> PageError {
    let lead = "The restore was not queued.";
    match &e {
        HubError::NoVmConfig { .. } => PageError::new(
            axum::http::StatusCode::CONFLICT,
            format!(
                "{lead} This restore point has no captured VM configuration (it was taken \
                 before configurations were captured, or by a plain sendense-client backup), so \
                 the hub cannot tell vCenter what VM to build or where its disks go. Restore a \
                 point taken by a policy or \"back up now\", or browse this point's files."
            ),
        ),
        HubError::NoCredentialForRestore { vm } => PageError::bad_request(format!(
            "{lead} The hub does not know which vCenter VM {vm} came from: choose the vCenter \
             credential whose agent should run the restore."
        )),
        _ => {
            let page = PageError::from(e);
            page.with_lead(lead)
        }
    }
}

/// `POST /restore/{id}/vm` (operator): queues a `restore` job as
/// `POST /api/v1/backups/{id}/restore` does, then shows the job.
pub(super) async fn restore_vm(
    State(s): State<ConsoleState>,
    user: SignedIn,
    Path(id): Path<String>,
    form: Result<Form<Fields>, FormRejection>,
) -> Page {
    user.require_operator("restore VMs")?;
    let id = backup_id(&id)?;
    let Form(fields) = form.map_err(|e| PageError::bad_request(e.body_text()))?;
    let request = restore_request(&fields)?;
    let jobs = Arc::clone(&s.api.jobs);
    let target = id.clone();
    let accepted = blocking(move || jobs.queue_restore(&target, request))
        .await
        .map_err(restore_refusal)?;
    tracing::info!(user = %user.name, backup = %id, job_id = %accepted.job_id, "restore queued from the console");
    user.flash(
        &s,
        format!(
            "Restore job {} queued from point {id}; its progress and log are below.",
            accepted.job_id
        ),
    );
    Ok(Redirect::to(&format!("/jobs/{}", accepted.job_id)).into_response())
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

#[cfg(test)]
mod tests {
    use sendense_types::RestoreTarget;

    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Fields {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn message(e: PageError) -> String {
        let body = e.into_response().into_body();
        let bytes = body_bytes(body);
        String::from_utf8(bytes).unwrap()
    }

    fn body_bytes(body: axum::body::Body) -> Vec<u8> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(axum::body::to_bytes(body, 1 << 20))
            .unwrap()
            .to_vec()
    }

    #[test]
    fn restore_form_becomes_the_apis_request() {
        let form = fields(&[
            ("csrf", "x"),
            ("target", "vcenter"),
            ("vm_name", " web-restored "),
            ("credential", "vc1"),
            ("datacenter", "dc1"),
            ("datastore", "ds1"),
            ("folder", ""),
            ("host", "esx1"),
            ("net:Backup Net", "Restore Net"),
            ("net:VM Network", ""),
            ("net:Same", "Same"),
            ("disk", "2000"),
            ("disk", "2001"),
            ("power_on", "on"),
        ]);

        let Ok(r) = restore_request(&form) else {
            panic!("the form was refused");
        };

        assert_eq!(r.target, RestoreTarget::Vcenter);
        assert_eq!(r.vm_name, "web-restored");
        assert_eq!(r.credential.as_ref().map(|c| c.as_str()), Some("vc1"));
        assert_eq!((r.folder, r.host.as_deref()), (None, Some("esx1")));
        assert_eq!(
            r.network_map.into_iter().collect::<Vec<_>>(),
            [("Backup Net".to_owned(), "Restore Net".to_owned())]
        );
        assert_eq!(r.disks, Some(vec![DiskKey(2000), DiskKey(2001)]));
        assert!(r.power_on && !r.keep_macs);
    }

    #[test]
    fn restore_form_refusals_say_what_to_do() {
        let base = [
            ("vm_name", "x"),
            ("datacenter", "dc1"),
            ("datastore", "ds1"),
            ("disk", "2000"),
        ];
        let without = |name: &str| {
            fields(
                &base
                    .iter()
                    .copied()
                    .filter(|(k, _)| *k != name)
                    .collect::<Vec<_>>(),
            )
        };
        let mut existing_on = fields(&base);
        existing_on.push(("target".into(), "existing_vm".into()));
        existing_on.push(("power_on".into(), "on".into()));

        let no_store = restore_request(&without("datastore")).map(|_| ());
        let no_disk = restore_request(&without("disk")).map(|_| ());
        let powered = restore_request(&existing_on).map(|_| ());

        assert!(message(no_store.unwrap_err()).contains("Type the datastore"));
        assert!(message(no_disk.unwrap_err()).contains("Tick at least one disk"));
        assert!(message(powered.unwrap_err()).contains("Powering on applies to a new VM only"));
    }
}
