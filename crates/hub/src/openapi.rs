//! The OpenAPI 3.1 document served at `GET /api/v1/openapi.json`, written by
//! hand from the types in `sendense-types`; a test checks that every route of
//! the router is in it.

/// The document, as served.
pub const DOCUMENT: &str = r##"{
  "openapi": "3.1.0",
  "info": {
    "title": "Sendense hub API",
    "version": "1",
    "description": "Register VMs, run full and incremental backups into QCOW2 over NBD, list chains, open restore exports. Every call but /api/v1/health needs 'Authorization: Bearer <token>' (DATA/api.token). Errors are {error, message}."
  },
  "components": {
    "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
    "schemas": {
      "ApiError": { "type": "object", "required": ["error", "message"], "properties": {
        "error": { "type": "string", "enum": ["bad_request", "unauthorized", "not_found", "conflict", "internal", "bad_gateway", "unavailable"] },
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
        "disks": { "type": "array", "items": { "$ref": "#/components/schemas/BackupDisk" } } } },
      "RepositoryInfo": { "type": "object", "properties": {
        "capacity_bytes": { "type": "integer", "description": "Size of the file system holding the repository" },
        "used_bytes": { "type": "integer", "description": "Bytes the repository's files occupy" },
        "free_bytes": { "type": "integer", "description": "Bytes available to the hub" },
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
      "RestoreExports": { "type": "object", "properties": {
        "disks": { "type": "array", "items": { "type": "object", "properties": {
          "disk_key": { "type": "integer" }, "export_name": { "type": "string" }, "nbd_uri": { "type": "string" } } } } } },
      "CredentialRequest": { "type": "object", "additionalProperties": false, "required": ["name", "host", "username", "password"],
        "description": "The trust choice for vCenter's certificate is exactly one of ca_pem and insecure=true; it is stored with the credential and no session request can change it",
        "properties": {
        "name": { "type": "string" }, "host": { "type": "string" }, "username": { "type": "string" },
        "password": { "type": "string", "writeOnly": true },
        "ca_pem": { "type": "string", "maxLength": 262144, "description": "PEM CA certificate(s) of vCenter" },
        "insecure": { "type": "boolean", "default": false, "description": "Accept any vCenter certificate" } } },
      "Credential": { "type": "object", "properties": {
        "name": { "type": "string" }, "host": { "type": "string" }, "username": { "type": "string" },
        "created_at": { "type": "string", "format": "date-time" },
        "ca_pem": { "type": "string", "description": "The stored CA certificate(s) of vCenter" },
        "insecure": { "type": "boolean", "description": "Any vCenter certificate is accepted" },
        "needs_trust_choice": { "type": "boolean", "description": "Stored before the trust choice was kept: create it again to use it" } } },
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
          "400": { "$ref": "#/components/responses/Error" }, "404": { "$ref": "#/components/responses/Error" }, "409": { "$ref": "#/components/responses/Error" } } },
      "get": { "summary": "List backups",
        "parameters": [ { "name": "vm_name", "in": "query", "schema": { "type": "string" } },
          { "name": "status", "in": "query", "schema": { "type": "string", "enum": ["pending", "running", "completed", "failed"] } } ],
        "responses": { "200": { "description": "Backups, oldest first", "content": { "application/json": { "schema": { "type": "array", "items": { "$ref": "#/components/schemas/Backup" } } } } } } } },
    "/api/v1/backups/{id}": {
      "parameters": [ { "name": "id", "in": "path", "required": true, "schema": { "type": "string" } } ],
      "get": { "summary": "One backup with per-disk progress",
        "responses": { "200": { "description": "The backup", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Backup" } } } },
          "404": { "$ref": "#/components/responses/Error" } } },
      "delete": { "summary": "Delete a backup nothing depends on",
        "responses": { "200": { "description": "The deleted backup", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Backup" } } } },
          "404": { "$ref": "#/components/responses/Error" }, "409": { "$ref": "#/components/responses/Error" } } } },
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
            "/api/v1/backups/{id}/snapshot",
            "/api/v1/backups/chain/{vm_name}",
            "/api/v1/backups/{id}/exports",
            "/api/v1/credentials",
            "/api/v1/credentials/{name}/session",
            "/api/v1/repository",
            "/api/v1/metrics",
            "/api/v1/openapi.json",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} missing");
        }
    }
}
