//! The object tier's byte formats (DESIGN.md "Object tier"), with no I/O, so the hub, the fuzz
//! targets and the tests share one definition of what lies in a bucket:
//!
//! - [`seal`]: every object is **sealed** by the hub before upload: a 64-byte header (magic,
//!   version, chunk size, plaintext length, a random per-object salt), then the plaintext in
//!   fixed-size chunks, each encrypted and authenticated with ChaCha20-Poly1305 under a key
//!   derived (HKDF-SHA256) from the hub's master key and the object's salt, with the chunk's
//!   index as nonce and the header and object name as associated data. A store (or anyone who
//!   reads the bucket) sees only ciphertext; a swapped, truncated, reordered or altered chunk
//!   fails to open. Chunk `i` sits at a fixed offset, so a reader fetches any byte range by
//!   fetching the chunks that cover it.
//! - [`manifest`]: one per restore point: the backup's catalog record, its parent, and every
//!   file of the point with its size and SHA-256: enough to rebuild a catalog from the bucket.
//! - [`layout`]: object names, `<prefix>/<vm>/<backup_id>/<object>`: self-describing, one
//!   folder per point.
//! - [`lock`]: the S3 Object Lock configuration a target's bucket answers and is given, and
//!   the `<Error>` document of a refused S3 request.
//!
//! Every decoder here is bounded (named limits), never panics, and has a fuzz target.
#![forbid(unsafe_code)]

pub mod error;
pub mod layout;
pub mod lock;
pub mod manifest;
pub mod seal;

pub use error::TierError;
pub use manifest::{FileKind, MANIFEST_VERSION, Manifest, ManifestFile};
pub use seal::{CHUNK_SIZE, HEADER_LEN, Header, MasterKey, ObjectCipher, TAG_LEN};
