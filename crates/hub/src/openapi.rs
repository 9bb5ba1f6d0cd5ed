//! The OpenAPI 3.1 document served at `GET /api/v1/openapi.json`, written by
//! hand from the types in `sendense-types`; a test checks that every route of
//! the router is in it.

/// The document, as served.
pub const DOCUMENT: &str = r##"{
  "openapi": "3.1.0",
  "info": {
    "title": "Sendense hub API",
    "version": "1",
    "description": "Register VMs, run full and incremental backups into QCOW2 over NBD, list chains, open restore exports, run instant recoveries. Every call but /api/v1/health and /api/v1/agents/enroll needs 'Authorization: Bearer <token>': the admin token (DATA/api.token) may call all; an agent's token only its job poll, heartbeat and finish of its jobs, and the backup flow (others answer 403 forbidden). Errors are {error, message}."
  },
  "components": {
    "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
    "schemas": {
      "ApiError": { "type": "object", "required": ["error", "message"], "properties": {
        "error": { "type": "string", "enum": ["bad_request", "unauthorized", "forbidden", "not_found", "conflict", "internal", "bad_gateway", "unavailable"] },
        "message": { "type": "string" } } },
      "DiskSpec": { "type": "object", "required": ["key", "capacity_bytes"], "properties": {
        "key": { "type": "integer", "minimum": 0, "description": "VMware device key: 2000, 2001, ..." },
        "capacity_bytes": { "type": "integer", "minimum": 512, "description": "multiple of 512, at most 64 TiB" } } },
      "RegisterVmRequest": { "type": "object", "additionalProperties": false, "required": ["name", "disks"], "properties": {
        "name": { "type": "string", "pattern": "^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$" },
        "disks": { "type": "array", "minItems": 1, "items": { "$ref": "#/components/schemas/DiskSpec" } } } },
      "Vm": { "type": "object", "properties": {
        "name": { "type": "string" },
        "disks": { "type": "array", "items": { "$ref": "#/components/schemas/DiskSpec" } },
        "created_at": { "type": "string", "format": "date-time" },
        "updated_at": { "type": "string", "format": "date-time" } } },
      "StartBackupRequest": { "type": "object", "additionalProperties": false, "required": ["vm_name", "backup_type"], "properties": {
        "vm_name": { "type": "string" },
        "backup_type": { "type": "string", "enum": ["full", "incremental", "auto"] },
        "base_backup_id": { "type": "string", "description": "The backup the client's changes are relative to; an incremental (or an auto that continues the chain) on another parent is refused with 409" } } },
      "BackupDisk": { "type": "object", "properties": {
        "disk_key": { "type": "integer" },
        "capacity_bytes": { "type": "integer" },
        "file": { "type": ["string", "null"], "description": "relative to DATA/repository" },
        "export_name": { "type": ["string", "null"] },
        "nbd_uri": { "type": ["string", "null"], "description": "nbds://HOST:PORT/EXPORT_NAME while running" },
        "parent_change_id": { "type": ["string", "null"] },
        "change_id": { "type": ["string", "null"] },
        "bytes_written": { "type": "integer" } } },
      "Backup": { "type": "object", "properties": {
        "backup_id": { "type": "string" },
        "vm_name": { "type": "string" },
        "backup_type": { "type": "string", "enum": ["full", "incremental"] },
        "status": { "type": "string", "enum": ["pending", "running", "completed", "failed"] },
        "parent_backup_id": { "type": ["string", "null"] },
        "created_at": { "type": "string", "format": "date-time" },
        "completed_at": { "type": ["string", "null"], "format": "date-time" },
        "failure_reason": { "type": ["string", "null"] },
        "full_reason": { "type": ["string", "null"], "description": "Why the hub made this a full although auto was asked for" },
        "files_missing": { "type": "boolean", "description": "A completed backup whose image files are gone: never a parent, not restorable" },
        "protected": { "type": "boolean", "description": "Never pruned nor deleted while set (PUT /api/v1/backups/{id})" },
        "verification": { "$ref": "#/components/schemas/Verification" },
        "disks": { "type": "array", "items": { "$ref": "#/components/schemas/BackupDisk" } } } },
      "Verification": { "type": "object", "description": "The latest verification of the point against the digests of the bytes read at the source", "properties": {
        "state": { "type": "string", "enum": ["unverified", "ok", "failed"] },
        "at": { "type": ["string", "null"], "format": "date-time" },
        "bad_ranges": { "type": "array", "items": { "type": "object", "properties": {
          "disk_key": { "type": "integer" }, "offset": { "type": "integer" }, "length": { "type": "integer" } } } },
        "failed_through": { "type": "string", "description": "Set when the bad bytes belong to this earlier point's layer, read through" },
        "message": { "type": "string" } } },
      "RepositoryInfo": { "type": "object", "properties": {
        "capacity_bytes": { "type": "integer", "description": "Size of the file system holding the repository" },
        "used_bytes": { "type": "integer", "description": "Bytes the repository's files occupy" },
        "free_bytes": { "type": "integer", "description": "Bytes available to the hub" },
        "low_space_warning": { "type": "string", "description": "Present when free space is below the hub's --free-space-warning-percent" },
        "vms": { "type": "array", "items": { "type": "object", "properties": {
          "vm_name": { "type": "string" }, "used_bytes": { "type": "integer" }, "backups": { "type": "integer" } } } },
        "unknown_files": { "type": "array", "items": { "type": "string" }, "description": "Files the catalog does not know, relative to the repository; never deleted by the hub" } } },
      "BackupSnapshot": { "type": "object", "properties": {
        "backup_id": { "type": "string" },
        "snapshot_moref": { "type": ["string", "null"] } } },
      "CompleteBackupRequest": { "type": "object", "additionalProperties": false, "required": ["disks"], "properties": {
        "disks": { "type": "array", "items": { "type": "object", "additionalProperties": false,
          "required": ["disk_key", "bytes_transferred"], "properties": {
            "disk_key": { "type": "integer" },
            "change_id": { "type": ["string", "null"] },
            "bytes_transferred": { "type": "integer" } } } } } },
      "SnapshotRequest": { "type": "object", "additionalProperties": false, "required": ["snapshot_moref"], "properties": {
        "snapshot_moref": { "type": "string", "maxLength": 80 } } },
      "FailBackupRequest": { "type": "object", "additionalProperties": false, "required": ["reason"], "properties": {
        "reason": { "type": "string", "maxLength": 4096 } } },
      "Chain": { "type": "object", "properties": {
        "vm_name": { "type": "string" },
        "backups": { "type": "array", "items": { "$ref": "#/components/schemas/Backup" } } } },
      "InstantRecovery": { "type": "object", "required": ["instant_id", "backup_id", "vm_name", "created_at", "state", "disks"], "properties": {
        "instant_id": { "type": "string", "pattern": "^instant-[0-9a-f]{16}$" },
        "backup_id": { "type": "string" },
        "vm_name": { "type": "string" },
        "created_at": { "type": "string", "format": "date-time" },
        "state": { "type": "string", "enum": ["open", "unavailable"], "description": "unavailable: the overlays could not be opened again at the hub's start (error says why); discard it" },
        "error": { "type": "string" },
        "disks": { "type": "array", "items": { "type": "object", "required": ["disk_key", "export_name", "nbd_uri", "overlay", "backing_file"], "properties": {
          "disk_key": { "type": "integer" },
          "export_name": { "type": "string" },
          "nbd_uri": { "type": "string", "description": "nbds://HOST:PORT/EXPORT_NAME, writable, the same after a hub restart" },
          "overlay": { "type": "string", "description": "The scratch overlay, relative to the hub's data folder" },
          "backing_file": { "type": "string", "description": "The point's image it reads through, relative to DATA/repository" } } } } } },
      "InstantList": { "type": "object", "properties": {
        "instants": { "type": "array", "items": { "$ref": "#/components/schemas/InstantRecovery" } } } },
      "RestoreExports": { "type": "object", "properties": {
        "disks": { "type": "array", "items": { "type": "object", "properties": {
          "disk_key": { "type": "integer" }, "export_name": { "type": "string" }, "nbd_uri": { "type": "string" } } } } } },
      "CredentialRequest": { "type": "object", "additionalProperties": false, "required": ["name", "host", "username", "password"],
        "description": "The trust choice for vCenter's certificate is exactly one of ca_pem and insecure=true; it is stored with the credential and no session request can change it",
        "properties": {
        "name": { "type": "string" }, "host": { "type": "string" }, "username": { "type": "string" },
        "password": { "type": "string", "writeOnly": true },
        "ca_pem": { "type": "string", "maxLength": 262144, "description": "PEM CA certificate(s) of vCenter" },
        "insecure": { "type": "boolean", "default": false, "description": "Accept any vCenter certificate" },
        "agent": { "type": "string", "description": "The agent that reaches this vCenter: it alone receives the password. Must be a known agent (400 otherwise)" } } },
      "Credential": { "type": "object", "properties": {
        "name": { "type": "string" }, "host": { "type": "string" }, "username": { "type": "string" },
        "created_at": { "type": "string", "format": "date-time" },
        "ca_pem": { "type": "string", "description": "The stored CA certificate(s) of vCenter" },
        "insecure": { "type": "boolean", "description": "Any vCenter certificate is accepted" },
        "needs_trust_choice": { "type": "boolean", "description": "Stored before the trust choice was kept: create it again to use it" },
        "agent": { "type": ["string", "null"], "description": "The agent that reaches this vCenter" } } },
      "CreateAgentRequest": { "type": "object", "additionalProperties": false, "required": ["name"], "properties": { "name": { "type": "string" } } },
      "AgentEnrollment": { "type": "object", "properties": {
        "name": { "type": "string" },
        "enrollment_token": { "type": "string", "description": "One use, until expires_at (24 h): a secret for the appliance" },
        "expires_at": { "type": "string", "format": "date-time" } } },
      "EnrollRequest": { "type": "object", "additionalProperties": false, "required": ["name", "enrollment_token", "csr_pem"], "properties": {
        "name": { "type": "string" }, "enrollment_token": { "type": "string", "maxLength": 256 },
        "csr_pem": { "type": "string", "maxLength": 16384, "description": "PKCS#10 CSR (PEM) for the agent's NBD client certificate" } } },
      "EnrollResponse": { "type": "object", "properties": {
        "agent_token": { "type": "string", "description": "The agent's bearer token (a secret)" },
        "client_cert_pem": { "type": "string" }, "ca_cert_pem": { "type": "string" } } },
      "Agent": { "type": "object", "properties": {
        "name": { "type": "string" },
        "state": { "type": "string", "enum": ["pending", "online", "offline"], "description": "online when seen within 60 s" },
        "version": { "type": ["string", "null"] }, "slots": { "type": ["integer", "null"] },
        "running_jobs": { "type": "array", "items": { "type": "string" } },
        "last_seen": { "type": ["string", "null"], "format": "date-time" },
        "created_at": { "type": "string", "format": "date-time" },
        "enrolled_at": { "type": ["string", "null"], "format": "date-time" } } },
      "AgentList": { "type": "object", "properties": { "agents": { "type": "array", "items": { "$ref": "#/components/schemas/Agent" } } } },
      "JobProgress": { "type": "object", "properties": {
        "bytes_done": { "type": "integer" }, "bytes_total": { "type": "integer" },
        "mb_per_s": { "type": "number", "description": "Average since the job started, 10^6 bytes per second" },
        "eta_seconds": { "type": ["integer", "null"] } } },
      "Job": { "type": "object", "properties": {
        "job_id": { "type": "string" },
        "kind": { "type": "string", "enum": ["backup", "restore", "prune", "verify", "copy", "inventory"] },
        "vm_name": { "type": ["string", "null"] },
        "status": { "type": "string", "enum": ["queued", "running", "completed", "failed", "cancelled"] },
        "backup_id": { "type": ["string", "null"] }, "agent": { "type": ["string", "null"] },
        "progress": { "$ref": "#/components/schemas/JobProgress" },
        "error": { "type": ["string", "null"] },
        "queued_at": { "type": "string", "format": "date-time" },
        "started_at": { "type": ["string", "null"], "format": "date-time" },
        "finished_at": { "type": ["string", "null"], "format": "date-time" },
        "backup_type": { "type": ["string", "null"] }, "credential": { "type": ["string", "null"] },
        "policy": { "type": ["string", "null"] }, "attempt": { "type": "integer" },
        "result": { "type": ["string", "null"], "description": "What a prune or verify job (run inside the hub) did: points removed, points skipped because protected since" } } },
      "PolicyRequest": { "type": "object", "additionalProperties": false, "required": ["name", "schedule", "credential", "vms"], "properties": {
        "name": { "type": "string" },
        "schedule": { "type": "string", "maxLength": 256, "description": "PBS calendar event, e.g. 'mon..fri 22:00', '*:0/15', 'daily'" },
        "credential": { "type": "string" },
        "vms": { "type": "array", "items": { "type": "string" }, "description": "Inventory paths (dc1/vm/web01, dc1/vm/*, dc1/**) or name globs (db*)" },
        "max_parallel": { "type": "integer", "minimum": 1, "maximum": 64, "default": 1 },
        "retry": { "type": "object", "properties": { "count": { "type": "integer", "maximum": 10 }, "delay_seconds": { "type": "integer", "maximum": 86400, "default": 600 } } },
        "retention": { "type": "object", "properties": { "keep_last": { "type": "integer" }, "keep_hourly": { "type": "integer" }, "keep_daily": { "type": "integer" }, "keep_weekly": { "type": "integer" }, "keep_monthly": { "type": "integer" }, "keep_yearly": { "type": "integer" } } },
        "max_chain_length": { "type": ["integer", "null"], "minimum": 1 },
        "verify_after_backup": { "type": "boolean", "default": false },
        "enabled": { "type": "boolean", "default": true } } },
      "Policy": { "allOf": [ { "$ref": "#/components/schemas/PolicyRequest" }, { "type": "object", "properties": {
        "next_run": { "type": ["string", "null"], "format": "date-time", "description": "null when disabled or never again; a past time means due at the next tick" },
        "last_run": { "type": ["string", "null"], "format": "date-time" },
        "created_at": { "type": "string", "format": "date-time" } } } ] },
      "PolicyList": { "type": "object", "properties": { "policies": { "type": "array", "items": { "$ref": "#/components/schemas/Policy" } } } },
      "PolicyRun": { "type": "object", "properties": {
        "job_ids": { "type": "array", "items": { "type": "string" } },
        "unmatched": { "type": "array", "items": { "type": "string" } },
        "skipped": { "type": "array", "items": { "type": "string" } } } },
      "JobList": { "type": "object", "properties": { "jobs": { "type": "array", "items": { "$ref": "#/components/schemas/Job" } } } },
      "JobAccepted": { "type": "object", "properties": { "job_id": { "type": "string" } } },
      "Retention": { "type": "object", "additionalProperties": false, "description": "Proxmox Backup Server's prune options, run in this order, periods in the hub's time zone (weeks are ISO weeks); no option above 0 keeps everything", "properties": {
        "keep_last": { "type": "integer", "minimum": 0 }, "keep_hourly": { "type": "integer", "minimum": 0 }, "keep_daily": { "type": "integer", "minimum": 0 },
        "keep_weekly": { "type": "integer", "minimum": 0 }, "keep_monthly": { "type": "integer", "minimum": 0 }, "keep_yearly": { "type": "integer", "minimum": 0 } } },
      "UpdateBackupRequest": { "type": "object", "additionalProperties": false, "required": ["protected"], "properties": {
        "protected": { "type": "boolean", "description": "A protected point is never pruned nor deleted (409)" } } },
      "PruneRequest": { "type": "object", "additionalProperties": false, "required": ["retention"], "properties": {
        "retention": { "$ref": "#/components/schemas/Retention" },
        "dry_run": { "type": "boolean", "default": false } } },
      "PruneAnswer": { "type": "object", "properties": {
        "keep": { "type": "array", "items": { "type": "string" }, "description": "Points kept (protected ones among them), newest first" },
        "remove": { "type": "array", "items": { "type": "string" }, "description": "Points removed, or that would be for a dry run, newest first" },
        "job_id": { "type": ["string", "null"], "description": "The queued prune job; null for a dry run or when nothing is removed" } } },
      "BackupNowRequest": { "type": "object", "additionalProperties": false, "properties": {
        "backup_type": { "type": "string", "enum": ["full", "incremental", "auto"], "default": "auto" },
        "credential": { "type": "string", "description": "Optional when the VM is in a credential's inventory or a previous job of it named one" } } },
      "AgentJob": { "type": "object", "properties": {
        "job_id": { "type": "string" }, "kind": { "type": "string" },
        "vm": { "type": ["string", "null"], "description": "The VM's inventory path, or its name" },
        "backup_type": { "type": ["string", "null"] },
        "credential": { "type": ["object", "null"], "description": "{name, host, username, password, ca_pem, insecure}: only to the credential's own agent" },
        "attempt": { "type": "integer" }, "lease_seconds": { "type": "integer" } } },
      "HeartbeatRequest": { "type": "object", "additionalProperties": false, "properties": {
        "progress": { "type": "object", "properties": { "bytes_done": { "type": "integer" }, "bytes_total": { "type": "integer" } } },
        "backup_id": { "type": ["string", "null"] } } },
      "HeartbeatResponse": { "type": "object", "properties": {
        "status": { "type": "string", "description": "cancelled: stop, remove the snapshot, fail the backup" },
        "lease_seconds": { "type": "integer" } } },
      "FinishJobRequest": { "type": "object", "additionalProperties": false, "required": ["status"], "properties": {
        "status": { "type": "string", "enum": ["completed", "failed"] },
        "error": { "type": ["string", "null"] }, "backup_id": { "type": "string" },
        "inventory": { "type": "array", "items": { "$ref": "#/components/schemas/InventoryVm" } } } },
      "InventoryVm": { "type": "object", "properties": { "name": { "type": "string" }, "path": { "type": "string" } } },
      "Inventory": { "type": "object", "properties": {
        "credential": { "type": "string" }, "agent": { "type": ["string", "null"] },
        "refreshed_at": { "type": ["string", "null"], "format": "date-time" },
        "vms": { "type": "array", "items": { "$ref": "#/components/schemas/InventoryVm" } } } },
      "SessionRequest": { "type": "object", "additionalProperties": false,
        "description": "Empty: the hub checks vCenter's certificate as the credential's stored trust choice says; ca_pem or insecure here are refused with 400",
        "properties": { } },
      "VcenterSession": { "type": "object", "required": ["host", "session_cookie"], "properties": {
        "host": { "type": "string", "description": "The credential's vCenter, HOST[:PORT]" },
        "session_cookie": { "type": "string", "description": "Value of vCenter's vmware_soap_session cookie (a bearer secret)" } } },
      "Health": { "type": "object", "properties": { "status": { "type": "string" }, "version": { "type": "string" } } }
    },
    "responses": {
      "Error": { "description": "Error", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ApiError" } } } }
    }
  },
  "security": [ { "bearer": [] } ],
  "paths": {
    "/api/v1/health": { "get": { "summary": "Liveness and version", "security": [],
      "responses": { "200": { "description": "OK", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Health" } } } } } } },
    "/api/v1/vms": {
      "post": { "summary": "Register or update a VM",
        "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/RegisterVmRequest" } } } },
        "responses": { "201": { "description": "The VM", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Vm" } } } },
          "400": { "$ref": "#/components/responses/Error" }, "401": { "$ref": "#/components/responses/Error" }, "409": { "$ref": "#/components/responses/Error" } } },
      "get": { "summary": "List VMs",
        "responses": { "200": { "description": "VMs", "content": { "application/json": { "schema": { "type": "array", "items": { "$ref": "#/components/schemas/Vm" } } } } } } } },
    "/api/v1/vms/{name}": { "get": { "summary": "One VM",
      "parameters": [ { "name": "name", "in": "path", "required": true, "schema": { "type": "string" } } ],
      "responses": { "200": { "description": "The VM", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Vm" } } } },
        "404": { "$ref": "#/components/responses/Error" } } } },
    "/api/v1/backups": {
      "post": { "summary": "Start a backup: creates the images and opens one write export per disk",
        "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/StartBackupRequest" } } } },
        "responses": { "201": { "description": "The backup, with export_name and nbd_uri per disk", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Backup" } } } },
          "400": { "$ref": "#/components/responses/Error" }, "404": { "$ref": "#/components/responses/Error" }, "409": { "$ref": "#/components/responses/Error" },
          "507": { "description": "insufficient_storage: the repository's file system cannot hold what the backup is estimated to need (the message says how much, and what to do)", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ApiError" } } } } } },
      "get": { "summary": "List backups",
        "parameters": [ { "name": "vm_name", "in": "query", "schema": { "type": "string" } },
          { "name": "status", "in": "query", "schema": { "type": "string", "enum": ["pending", "running", "completed", "failed"] } } ],
        "responses": { "200": { "description": "Backups, oldest first", "content": { "application/json": { "schema": { "type": "array", "items": { "$ref": "#/components/schemas/Backup" } } } } } } } },
    "/api/v1/backups/{id}": {
      "parameters": [ { "name": "id", "in": "path", "required": true, "schema": { "type": "string" } } ],
      "get": { "summary": "One backup with per-disk progress",
        "responses": { "200": { "description": "The backup", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Backup" } } } },
          "404": { "$ref": "#/components/responses/Error" } } },
      "delete": { "summary": "Delete a backup nothing depends on (a protected one: 409)",
        "responses": { "200": { "description": "The deleted backup", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Backup" } } } },
          "404": { "$ref": "#/components/responses/Error" }, "409": { "$ref": "#/components/responses/Error" } } },
      "put": { "summary": "Admin: protect a completed point from prunes and deletion, or lift that",
        "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/UpdateBackupRequest" } } } },
        "responses": { "200": { "description": "The backup", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Backup" } } } },
          "400": { "$ref": "#/components/responses/Error" }, "404": { "$ref": "#/components/responses/Error" }, "409": { "$ref": "#/components/responses/Error" } } } },
    "/api/v1/backups/{id}/complete": { "post": { "summary": "Flush, fsync, check, rename into place, mark completed, advance the chain",
      "parameters": [ { "name": "id", "in": "path", "required": true, "schema": { "type": "string" } } ],
      "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/CompleteBackupRequest" } } } },
      "responses": { "200": { "description": "The completed backup", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Backup" } } } },
        "400": { "$ref": "#/components/responses/Error" }, "404": { "$ref": "#/components/responses/Error" }, "409": { "$ref": "#/components/responses/Error" }, "500": { "$ref": "#/components/responses/Error" } } } },
    "/api/v1/backups/{id}/fail": { "post": { "summary": "Close exports, remove partial images, mark failed; the chain is untouched",
      "parameters": [ { "name": "id", "in": "path", "required": true, "schema": { "type": "string" } } ],
      "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/FailBackupRequest" } } } },
      "responses": { "200": { "description": "The failed backup", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Backup" } } } },
        "404": { "$ref": "#/components/responses/Error" }, "409": { "$ref": "#/components/responses/Error" } } } },
    "/api/v1/backups/{id}/disks/{key}/digests": { "put": { "summary": "Store a running backup's digests of one disk: the per-block digests (XXH3-64 of 64 KiB blocks) of the bytes the client read at the source, in the digest file format (magic SNDDGST1). Kept under a temporary name beside the image; complete renames it into place as <backup_id>.digests, fail removes it; a later upload replaces an earlier one. Agents' tokens may call it",
      "parameters": [ { "name": "id", "in": "path", "required": true, "schema": { "type": "string" } },
        { "name": "key", "in": "path", "required": true, "schema": { "type": "integer", "minimum": 0 } } ],
      "requestBody": { "required": true, "content": { "application/octet-stream": { "schema": { "type": "string", "format": "binary",
        "description": "The encoded digest file; at most the largest digest file of a disk of its capacity (32 bytes per 64 KiB block, plus 40)" } } } },
      "responses": { "204": { "description": "Stored; renamed into place when the backup completes" },
        "400": { "$ref": "#/components/responses/Error" }, "404": { "$ref": "#/components/responses/Error" }, "409": { "$ref": "#/components/responses/Error" } } } },
    "/api/v1/backups/{id}/snapshot": {
      "parameters": [ { "name": "id", "in": "path", "required": true, "schema": { "type": "string" } } ],
      "post": { "summary": "Record the vCenter snapshot a running backup reads from; another run of the VM keeps it",
        "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/SnapshotRequest" } } } },
        "responses": { "200": { "description": "Recorded", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/BackupSnapshot" } } } },
          "400": { "$ref": "#/components/responses/Error" }, "404": { "$ref": "#/components/responses/Error" }, "409": { "$ref": "#/components/responses/Error" } } },
      "get": { "summary": "The snapshot a running backup owns (null once it ended)",
        "responses": { "200": { "description": "The snapshot", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/BackupSnapshot" } } } },
          "404": { "$ref": "#/components/responses/Error" } } } },
    "/api/v1/backups/chain/{vm_name}": { "get": { "summary": "The VM's chain: full, then incrementals, oldest first",
      "parameters": [ { "name": "vm_name", "in": "path", "required": true, "schema": { "type": "string" } } ],
      "responses": { "200": { "description": "The chain", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Chain" } } } },
        "404": { "$ref": "#/components/responses/Error" } } } },
    "/api/v1/backups/{id}/exports": {
      "parameters": [ { "name": "id", "in": "path", "required": true, "schema": { "type": "string" } } ],
      "post": { "summary": "Open read-only exports of this restore point",
        "responses": { "200": { "description": "One export per disk", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/RestoreExports" } } } },
          "404": { "$ref": "#/components/responses/Error" }, "409": { "$ref": "#/components/responses/Error" } } },
      "delete": { "summary": "Close them", "responses": { "204": { "description": "Closed" }, "404": { "$ref": "#/components/responses/Error" } } } },
    "/api/v1/backups/{id}/instant": {
      "parameters": [ { "name": "id", "in": "path", "required": true, "schema": { "type": "string" } } ],
      "post": { "summary": "Instant recovery: per disk of this completed point a scratch QCOW2 overlay in DATA/instant/<instant_id>/ (backing file: the point's image, named ../../repository/<file>) and one writable NBD export over it; the point never changes. Survives a hub restart under the same export names",
        "responses": { "201": { "description": "Started", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/InstantRecovery" } } } },
          "400": { "$ref": "#/components/responses/Error" }, "404": { "$ref": "#/components/responses/Error" }, "409": { "$ref": "#/components/responses/Error" },
          "507": { "description": "insufficient_storage: the overlays (a tenth of each disk's capacity) are estimated not to fit", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ApiError" } } } } } } },
    "/api/v1/instant": {
      "get": { "summary": "Every instant recovery, oldest first",
        "responses": { "200": { "description": "The instant recoveries", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/InstantList" } } } } } } },
    "/api/v1/instant/{id}": {
      "parameters": [ { "name": "id", "in": "path", "required": true, "schema": { "type": "string", "pattern": "^instant-[0-9a-f]{16}$" } } ],
      "get": { "summary": "One instant recovery",
        "responses": { "200": { "description": "The instant recovery", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/InstantRecovery" } } } },
          "400": { "$ref": "#/components/responses/Error" }, "404": { "$ref": "#/components/responses/Error" } } },
      "delete": { "summary": "Discard: close the exports (connections drained up to a deadline, then cut), remove the scratch overlays and everything the guest wrote; answers the discarded instant recovery",
        "responses": { "200": { "description": "Discarded", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/InstantRecovery" } } } },
          "400": { "$ref": "#/components/responses/Error" }, "404": { "$ref": "#/components/responses/Error" } } } },
    "/api/v1/credentials": {
      "post": { "summary": "Store vCenter credentials, encrypted at rest",
        "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/CredentialRequest" } } } },
        "responses": { "201": { "description": "Stored (no password in the answer)", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Credential" } } } },
          "400": { "$ref": "#/components/responses/Error" } } },
      "get": { "summary": "List credentials (never passwords)",
        "responses": { "200": { "description": "Credentials", "content": { "application/json": { "schema": { "type": "array", "items": { "$ref": "#/components/schemas/Credential" } } } } } } } },
    "/api/v1/credentials/{name}/session": {
      "parameters": [ { "name": "name", "in": "path", "required": true, "schema": { "type": "string" } } ],
      "post": { "summary": "Log in to the credential's vCenter (the hub must reach it) and answer the session, never the password",
        "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/SessionRequest" } } } },
        "responses": { "200": { "description": "A logged-in vCenter session", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/VcenterSession" } } } },
          "400": { "$ref": "#/components/responses/Error" }, "404": { "$ref": "#/components/responses/Error" }, "409": { "$ref": "#/components/responses/Error" },
          "502": { "description": "vCenter refused the login or could not be reached", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ApiError" } } } } } } },
    "/api/v1/repository": { "get": { "summary": "Capacity, used and free space, per-VM usage, and files the catalog does not know",
        "responses": { "200": { "description": "The repository", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/RepositoryInfo" } } } } } } },
    "/api/v1/metrics": { "get": { "summary": "Prometheus text (format 0.0.4): jobs and backups by status, bytes written, repository space, chain length and last success per VM",
        "responses": { "200": { "description": "The metrics", "content": { "text/plain": { "schema": { "type": "string" } } } } } } },
    "/api/v1/agents": { "post": { "summary": "Admin: create an agent; answers its one-time enrollment token (24 h)", "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/CreateAgentRequest" } } } },
        "responses": { "201": { "description": "OK", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/AgentEnrollment" } } } }, "400": { "$ref": "#/components/responses/Error" }, "401": { "$ref": "#/components/responses/Error" }, "403": { "$ref": "#/components/responses/Error" }, "404": { "$ref": "#/components/responses/Error" }, "409": { "$ref": "#/components/responses/Error" } } },
      "get": { "summary": "Admin: every agent and its state",
        "responses": { "200": { "description": "OK", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/AgentList" } } } }, "400": { "$ref": "#/components/responses/Error" }, "401": { "$ref": "#/components/responses/Error" }, "403": { "$ref": "#/components/responses/Error" }, "404": { "$ref": "#/components/responses/Error" }, "409": { "$ref": "#/components/responses/Error" } } } },
    "/api/v1/agents/enroll": { "post": { "summary": "No bearer: enroll with the one-time token and a CSR; answers the agent's token, its client certificate and the CA", "security": [], "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/EnrollRequest" } } } },
        "responses": { "200": { "description": "OK", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/EnrollResponse" } } } }, "400": { "$ref": "#/components/responses/Error" }, "401": { "$ref": "#/components/responses/Error" }, "403": { "$ref": "#/components/responses/Error" }, "404": { "$ref": "#/components/responses/Error" }, "409": { "$ref": "#/components/responses/Error" } } } },
    "/api/v1/agents/{name}": { "get": { "summary": "Admin: one agent (online when seen within 60 s, running jobs)",
        "responses": { "200": { "description": "OK", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Agent" } } } }, "400": { "$ref": "#/components/responses/Error" }, "401": { "$ref": "#/components/responses/Error" }, "403": { "$ref": "#/components/responses/Error" }, "404": { "$ref": "#/components/responses/Error" }, "409": { "$ref": "#/components/responses/Error" } } } },
    "/api/v1/agents/{name}/jobs/next": { "get": { "summary": "That agent: long poll (?wait=0..60&slots=&version=); 200 with a job now running under a 90 s lease, or 204 after wait seconds",
        "responses": { "200": { "description": "OK", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/AgentJob" } } } }, "400": { "$ref": "#/components/responses/Error" }, "401": { "$ref": "#/components/responses/Error" }, "403": { "$ref": "#/components/responses/Error" }, "404": { "$ref": "#/components/responses/Error" }, "409": { "$ref": "#/components/responses/Error" } } } },
    "/api/v1/jobs": { "get": { "summary": "Admin: jobs newest first (?vm_name=&status=&kind=)",
        "responses": { "200": { "description": "OK", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/JobList" } } } }, "400": { "$ref": "#/components/responses/Error" }, "401": { "$ref": "#/components/responses/Error" }, "403": { "$ref": "#/components/responses/Error" }, "404": { "$ref": "#/components/responses/Error" }, "409": { "$ref": "#/components/responses/Error" } } } },
    "/api/v1/jobs/{id}": { "get": { "summary": "Admin: one job with its progress",
        "responses": { "200": { "description": "OK", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Job" } } } }, "400": { "$ref": "#/components/responses/Error" }, "401": { "$ref": "#/components/responses/Error" }, "403": { "$ref": "#/components/responses/Error" }, "404": { "$ref": "#/components/responses/Error" }, "409": { "$ref": "#/components/responses/Error" } } } },
    "/api/v1/jobs/{id}/heartbeat": { "post": { "summary": "The job's agent: renews the lease, reports progress; status cancelled tells it to stop", "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/HeartbeatRequest" } } } },
        "responses": { "200": { "description": "OK", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/HeartbeatResponse" } } } }, "400": { "$ref": "#/components/responses/Error" }, "401": { "$ref": "#/components/responses/Error" }, "403": { "$ref": "#/components/responses/Error" }, "404": { "$ref": "#/components/responses/Error" }, "409": { "$ref": "#/components/responses/Error" } } } },
    "/api/v1/jobs/{id}/finish": { "post": { "summary": "The job's agent: completed or failed (an inventory job sends its VMs)", "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/FinishJobRequest" } } } },
        "responses": { "200": { "description": "OK", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Job" } } } }, "400": { "$ref": "#/components/responses/Error" }, "401": { "$ref": "#/components/responses/Error" }, "403": { "$ref": "#/components/responses/Error" }, "404": { "$ref": "#/components/responses/Error" }, "409": { "$ref": "#/components/responses/Error" } } } },
    "/api/v1/jobs/{id}/cancel": { "post": { "summary": "Admin: cancel; a running job's agent stops at its next heartbeat",
        "responses": { "200": { "description": "OK", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Job" } } } }, "400": { "$ref": "#/components/responses/Error" }, "401": { "$ref": "#/components/responses/Error" }, "403": { "$ref": "#/components/responses/Error" }, "404": { "$ref": "#/components/responses/Error" }, "409": { "$ref": "#/components/responses/Error" } } } },
    "/api/v1/vms/{name}/backup": { "post": { "summary": "Admin: queue a backup job for the agent of the VM's vCenter credential; 409 naming the queued or running one", "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/BackupNowRequest" } } } },
        "responses": { "202": { "description": "OK", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/JobAccepted" } } } }, "400": { "$ref": "#/components/responses/Error" }, "401": { "$ref": "#/components/responses/Error" }, "403": { "$ref": "#/components/responses/Error" }, "404": { "$ref": "#/components/responses/Error" }, "409": { "$ref": "#/components/responses/Error" } } } },
    "/api/v1/vms/{name}/prune": { "post": { "summary": "Admin: what the retention keeps and removes of the VM's completed points (all chains, newest first) and, unless dry_run or nothing is removed, a queued prune job removing them (run inside the hub: merges keep every remaining point restoring what it did)",
        "parameters": [ { "name": "name", "in": "path", "required": true, "schema": { "type": "string" } } ],
        "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/PruneRequest" } } } },
        "responses": { "200": { "description": "Dry run, or nothing to remove", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/PruneAnswer" } } } },
          "202": { "description": "A prune job was queued (job_id)", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/PruneAnswer" } } } },
          "400": { "$ref": "#/components/responses/Error" }, "401": { "$ref": "#/components/responses/Error" }, "403": { "$ref": "#/components/responses/Error" }, "404": { "$ref": "#/components/responses/Error" } } } },
    "/api/v1/backups/{id}/verify": { "post": { "summary": "Admin: queue a verify job (run inside the hub): the point is read back and compared with the digests of the bytes read at its source; a failed point and every later point reading its bad blocks are marked failed, the VM's next backup is a full, the webhook fires",
        "parameters": [ { "name": "id", "in": "path", "required": true, "schema": { "type": "string" } } ],
        "responses": { "202": { "description": "Queued", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/JobAccepted" } } } }, "400": { "$ref": "#/components/responses/Error" }, "401": { "$ref": "#/components/responses/Error" }, "403": { "$ref": "#/components/responses/Error" }, "404": { "$ref": "#/components/responses/Error" }, "409": { "$ref": "#/components/responses/Error" } } } },
    "/api/v1/credentials/{name}/inventory": { "get": { "summary": "Admin: the VMs the credential's agent last reported",
        "responses": { "200": { "description": "OK", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Inventory" } } } }, "400": { "$ref": "#/components/responses/Error" }, "401": { "$ref": "#/components/responses/Error" }, "403": { "$ref": "#/components/responses/Error" }, "404": { "$ref": "#/components/responses/Error" }, "409": { "$ref": "#/components/responses/Error" } } } },
    "/api/v1/credentials/{name}/inventory/refresh": { "post": { "summary": "Admin: queue an inventory job for the credential's agent",
        "responses": { "202": { "description": "OK", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/JobAccepted" } } } }, "400": { "$ref": "#/components/responses/Error" }, "401": { "$ref": "#/components/responses/Error" }, "403": { "$ref": "#/components/responses/Error" }, "404": { "$ref": "#/components/responses/Error" }, "409": { "$ref": "#/components/responses/Error" } } } },
    "/api/v1/policies": { "post": { "summary": "Admin: create a policy; the schedule is a Proxmox Backup Server calendar event in the hub's time zone (400 names the bad part)", "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/PolicyRequest" } } } },
        "responses": { "201": { "description": "OK", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Policy" } } } }, "400": { "$ref": "#/components/responses/Error" }, "401": { "$ref": "#/components/responses/Error" }, "403": { "$ref": "#/components/responses/Error" }, "404": { "$ref": "#/components/responses/Error" }, "409": { "$ref": "#/components/responses/Error" } } },
      "get": { "summary": "Admin: every policy with next_run and last_run",
        "responses": { "200": { "description": "OK", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/PolicyList" } } } }, "400": { "$ref": "#/components/responses/Error" }, "401": { "$ref": "#/components/responses/Error" }, "403": { "$ref": "#/components/responses/Error" }, "404": { "$ref": "#/components/responses/Error" }, "409": { "$ref": "#/components/responses/Error" } } } },
    "/api/v1/policies/{name}": { "get": { "summary": "Admin: one policy with next_run and last_run",
        "responses": { "200": { "description": "OK", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Policy" } } } }, "400": { "$ref": "#/components/responses/Error" }, "401": { "$ref": "#/components/responses/Error" }, "403": { "$ref": "#/components/responses/Error" }, "404": { "$ref": "#/components/responses/Error" }, "409": { "$ref": "#/components/responses/Error" } } },
      "put": { "summary": "Admin: replace a policy's settings (keeps created_at and last_run)", "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/PolicyRequest" } } } },
        "responses": { "200": { "description": "OK", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Policy" } } } }, "400": { "$ref": "#/components/responses/Error" }, "401": { "$ref": "#/components/responses/Error" }, "403": { "$ref": "#/components/responses/Error" }, "404": { "$ref": "#/components/responses/Error" }, "409": { "$ref": "#/components/responses/Error" } } },
      "delete": { "summary": "Admin: delete a policy (its jobs stay); answers it",
        "responses": { "200": { "description": "OK", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Policy" } } } }, "400": { "$ref": "#/components/responses/Error" }, "401": { "$ref": "#/components/responses/Error" }, "403": { "$ref": "#/components/responses/Error" }, "404": { "$ref": "#/components/responses/Error" }, "409": { "$ref": "#/components/responses/Error" } } } },
    "/api/v1/policies/{name}/run": { "post": { "summary": "Admin: run now: queue backup jobs of its VMs (max_parallel at once); patterns matching no VM come back in unmatched, VMs with a job already in skipped",
        "responses": { "202": { "description": "OK", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/PolicyRun" } } } }, "400": { "$ref": "#/components/responses/Error" }, "401": { "$ref": "#/components/responses/Error" }, "403": { "$ref": "#/components/responses/Error" }, "404": { "$ref": "#/components/responses/Error" }, "409": { "$ref": "#/components/responses/Error" } } } },
    "/api/v1/openapi.json": { "get": { "summary": "This document", "responses": { "200": { "description": "OpenAPI 3.1" } } } }
  }
}"##;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_is_json_and_lists_every_route() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).unwrap();
        for path in [
            "/api/v1/health",
            "/api/v1/vms",
            "/api/v1/vms/{name}",
            "/api/v1/backups",
            "/api/v1/backups/{id}",
            "/api/v1/backups/{id}/complete",
            "/api/v1/backups/{id}/fail",
            "/api/v1/backups/{id}/disks/{key}/digests",
            "/api/v1/backups/{id}/snapshot",
            "/api/v1/backups/chain/{vm_name}",
            "/api/v1/backups/{id}/exports",
            "/api/v1/backups/{id}/instant",
            "/api/v1/instant",
            "/api/v1/instant/{id}",
            "/api/v1/credentials",
            "/api/v1/credentials/{name}/session",
            "/api/v1/repository",
            "/api/v1/metrics",
            "/api/v1/openapi.json",
            "/api/v1/agents",
            "/api/v1/agents/enroll",
            "/api/v1/agents/{name}",
            "/api/v1/agents/{name}/jobs/next",
            "/api/v1/jobs",
            "/api/v1/jobs/{id}",
            "/api/v1/jobs/{id}/heartbeat",
            "/api/v1/jobs/{id}/finish",
            "/api/v1/jobs/{id}/cancel",
            "/api/v1/vms/{name}/backup",
            "/api/v1/vms/{name}/prune",
            "/api/v1/backups/{id}/verify",
            "/api/v1/credentials/{name}/inventory",
            "/api/v1/credentials/{name}/inventory/refresh",
            "/api/v1/policies",
            "/api/v1/policies/{name}",
            "/api/v1/policies/{name}/run",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} missing");
        }
        assert!(doc["paths"]["/api/v1/backups/{id}"]["put"].is_object());
    }
}
