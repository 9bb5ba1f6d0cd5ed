//! The crate's error type.
//!
//! `NbdError` covers protocol violations (what the peer sent was wrong),
//! negotiation refusals, transport and TLS failures, and per-request errors
//! reported by the server (`Request`, carrying the NBD error value).

use crate::wire::Errno;

/// Errors of the NBD crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NbdError {
    /// The peer sent bytes that violate the protocol.
    #[error("Protocol violation: {what}")]
    Protocol {
        /// What was wrong.
        what: &'static str,
    },
    /// A length field exceeded our limit.
    #[error("Length {length} of {what} exceeds limit {limit}")]
    TooLarge {
        /// What carried the length.
        what: &'static str,
        /// The length received.
        length: u64,
        /// Our limit.
        limit: u64,
    },
    /// A message had bytes left after its fields.
    #[error("Trailing bytes after {what}")]
    TrailingBytes {
        /// What was parsed.
        what: &'static str,
    },
    /// The server refused an option with an error reply.
    #[error("Server refused option {option} with reply type {reply:#x}: {message}")]
    OptionRefused {
        /// Option number.
        option: u32,
        /// Error reply type.
        reply: u32,
        /// Server's message.
        message: String,
    },
    /// A transmission request failed on the server.
    #[error("Request failed with {errno}")]
    Request {
        /// NBD error value.
        errno: Errno,
    },
    /// The export is not known (or was removed).
    #[error("Unknown export {name:?}")]
    UnknownExport {
        /// Export name.
        name: String,
    },
    /// An export with this name already exists.
    #[error("Export {name:?} already exists")]
    DuplicateExport {
        /// Export name.
        name: String,
    },
    /// The request does not fit the negotiated export (bounds, flags, size).
    #[error("Invalid argument: {what}")]
    InvalidArgument {
        /// What was wrong.
        what: &'static str,
    },
    /// The connection is closed.
    #[error("Connection closed")]
    Closed,
    /// A peer missed a deadline (handshake, request payload, reply write).
    #[error("Timed out waiting for {what}")]
    TimedOut {
        /// What did not happen in time.
        what: &'static str,
    },
    /// The connection was cut (export removal or server shutdown past its deadline).
    #[error("Connection cut: {why}")]
    Cut {
        /// Why it was cut.
        why: &'static str,
    },
    /// Socket I/O failed.
    #[error("I/O error")]
    Io(#[from] std::io::Error),
    /// TLS configuration failed.
    #[error("TLS configuration error")]
    Tls(#[from] rustls::Error),
    /// A PEM file could not be read.
    #[error("Cannot read PEM file {path}")]
    Pem {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// TLS certificate verifier configuration failed.
    #[error("TLS verifier configuration error")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// A TLS file (certificate, key) could not be read or written.
    #[error("Cannot access TLS file {path}")]
    TlsFile {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A TLS folder holds only some of its files: we refuse to guess which to trust.
    #[error(
        "TLS folder {dir} is incomplete ({missing} is missing); restore it or remove the folder to start afresh"
    )]
    IncompleteTlsFolder {
        /// The folder.
        dir: std::path::PathBuf,
        /// The first missing file.
        missing: &'static str,
    },
    /// Issuing a client certificate needs a CA, and the folder has none.
    #[error("No CA in {dir} ({file} is missing)")]
    NoCa {
        /// The folder searched.
        dir: std::path::PathBuf,
        /// The missing file.
        file: &'static str,
    },
    /// A certificate could not be generated, issued or signed.
    #[error("Certificate error while {what}")]
    Certificate {
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
}

impl NbdError {
    /// Shorthand for a protocol violation.
    #[must_use]
    pub const fn protocol(what: &'static str) -> Self {
        Self::Protocol { what }
    }

    /// The NBD error value if this is a server-reported request error.
    #[must_use]
    pub const fn errno(&self) -> Option<Errno> {
        match self {
            Self::Request { errno } => Some(*errno),
            _ => None,
        }
    }
}
