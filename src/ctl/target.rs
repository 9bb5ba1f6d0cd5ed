//! `ctl target ...`: object-store targets (DESIGN.md "Object tier"): store and list them, copy
//! a point to one, and keep the tier's key (export it for disaster recovery, install it on a
//! new hub). The key commands work on the data folder (`--data-dir`) and call no API.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use sendense_client::ClientError;
use serde_json::{Value, json};

use super::{Plan, Step, first_line, segment, table, text};

/// `ctl target ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum TargetCommand {
    /// Store an S3-compatible bucket as a target (replacing a target of that name). The
    /// secret key is read from the first line of --secret-key-file; the hub keeps it sealed
    /// and never shows it.
    Add {
        /// The target's name.
        name: String,
        /// The S3 endpoint, `http(s)://HOST:PORT`.
        #[arg(long, value_name = "URL")]
        endpoint: String,
        /// The bucket.
        #[arg(long)]
        bucket: String,
        /// The region (default us-east-1).
        #[arg(long)]
        region: Option<String>,
        /// The access key id.
        #[arg(long, value_name = "ID")]
        access_key: String,
        /// File whose first line is the secret key.
        #[arg(long, value_name = "FILE")]
        secret_key_file: PathBuf,
        /// Keep each object locked (S3 Object Lock) this many days; 0: no lock.
        #[arg(long, value_name = "DAYS", default_value_t = 0)]
        object_lock_days: u32,
    },
    /// List the targets (without secrets).
    List,
    /// Copy a restore point to a target: queues a copy job (its own layer, digests and VM
    /// configuration, encrypted by the hub, resumed where an earlier attempt stopped, then
    /// read back and verified). Follow it with `ctl job show JOB`.
    Copy {
        /// The backup id of the point.
        backup_id: String,
        /// The target.
        target: String,
    },
    /// On a new hub (its key installed with import-key, the target added): record every
    /// point the target's bucket holds that this hub does not know, parents first, as points
    /// living only in the bucket (fetched back when restored).
    Import {
        /// The target.
        target: String,
    },
    /// Bring an evicted point's files (and those of every evicted point it reads through)
    /// back from the bucket into the repository, each checked against its SHA-256.
    Fetch {
        /// The backup id of the point.
        backup_id: String,
    },
    /// Write the object tier's key (64 hex digits, 0600) to FILE: without it no bucket this
    /// hub wrote can be read. Keep it away from the hub. Needs --data-dir.
    ExportKey {
        /// Where to write it.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Install an exported key into a (new) hub's data folder, so it reads the buckets the
    /// old hub wrote; refuses to replace another key. Needs --data-dir.
    ImportKey {
        /// The file `ctl target export-key` wrote.
        #[arg(long, value_name = "FILE")]
        key_file: PathBuf,
    },
}

/// The local work of a key command, if `command` is one; its message.
///
/// # Errors
/// No `--data-dir`; the hub library's refusal, as a file error.
pub(super) fn local(
    command: &TargetCommand,
    data_dir: Option<&Path>,
) -> Option<Result<String, ClientError>> {
    let (what, file) = match command {
        TargetCommand::ExportKey { out } => ("object tier key export", out),
        TargetCommand::ImportKey { key_file } => ("object tier key import", key_file),
        _ => return None,
    };
    let Some(data) = data_dir else {
        return Some(Err(ClientError::File {
            what,
            path: file.clone(),
            source: std::io::Error::other("needs --data-dir (the hub's data folder)"),
        }));
    };
    let done = match command {
        TargetCommand::ExportKey { out } => sendense_hub::tier::export_key(data, out)
            .map(|()| format!("Object tier key written to {} (0600).\n", out.display())),
        _ => sendense_hub::tier::import_key(data, file).map(|()| {
            format!(
                "Object tier key installed in {}.\n",
                data.join(sendense_hub::tier::KEY_FILE).display()
            )
        }),
    };
    Some(done.map_err(|e| ClientError::File {
        what,
        path: file.clone(),
        source: std::io::Error::other(sendense_io::error_chain(&e)),
    }))
}

/// The requests of an API command.
pub(super) fn plan(command: &TargetCommand) -> Result<Plan, ClientError> {
    let step = match command {
        TargetCommand::Add {
            name,
            endpoint,
            bucket,
            region,
            access_key,
            secret_key_file,
            object_lock_days,
        } => {
            let mut body = json!({
                "name": name, "endpoint": endpoint, "bucket": bucket,
                "access_key": access_key, "secret_key": first_line(secret_key_file)?,
                "object_lock_days": object_lock_days,
            });
            if let Some(region) = region {
                body["region"] = json!(region);
            }
            Step::post("/api/v1/targets".into(), body)
        }
        TargetCommand::List => Step::get("/api/v1/targets".into()),
        TargetCommand::Copy { backup_id, target } => Step::post(
            format!("/api/v1/backups/{}/copy", segment(backup_id)),
            json!({ "target": target }),
        ),
        TargetCommand::Import { target } => Step::post(
            format!("/api/v1/targets/{}/import", segment(target)),
            json!({}),
        ),
        TargetCommand::Fetch { backup_id } => Step::post(
            format!("/api/v1/backups/{}/fetch", segment(backup_id)),
            json!({}),
        ),
        // Local commands never reach the API (see `local`).
        TargetCommand::ExportKey { .. } | TargetCommand::ImportKey { .. } => {
            Step::get("/api/v1/health".into())
        }
    };
    Ok(Plan::Fixed(vec![step]))
}

/// The human-readable form of an answer.
pub(super) fn render(out: &mut String, command: &TargetCommand, answer: &Value) {
    match command {
        TargetCommand::Add { .. } => {
            let _ = writeln!(
                out,
                "Target {} stored: bucket {} at {}.",
                text(&answer["name"]),
                text(&answer["bucket"]),
                text(&answer["endpoint"])
            );
        }
        TargetCommand::List => table(
            out,
            &answer["targets"],
            &["name", "endpoint", "bucket", "region", "object_lock_days"],
        ),
        TargetCommand::Copy { backup_id, target } => {
            let job = text(&answer["job_id"]);
            let _ = writeln!(
                out,
                "Copy of {backup_id} to {target} queued as job {job} (ctl job show {job})."
            );
        }
        TargetCommand::Import { target } => {
            let ids = answer["imported"]
                .as_array()
                .map(Vec::len)
                .unwrap_or_default();
            let _ = writeln!(out, "{ids} points imported from {target}.");
        }
        TargetCommand::Fetch { backup_id } => {
            let ids = answer["fetched"]
                .as_array()
                .map(Vec::len)
                .unwrap_or_default();
            let _ = writeln!(out, "{ids} points fetched back for {backup_id}.");
        }
        TargetCommand::ExportKey { .. } | TargetCommand::ImportKey { .. } => {}
    }
}
