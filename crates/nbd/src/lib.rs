//! NBD protocol: wire types, pure codec, session state machines, tokio server and client with TLS.
//!
//! Layers, bottom up: [`wire`] (constants and message structs), [`codec`]
//! (pure encode/decode with length limits), [`session`] (the server
//! handshake as a state machine: bytes in, actions out), then the tokio
//! drivers [`server`] and [`client`], with [`tls`] building rustls
//! configurations and [`export`] holding the `Export` trait, the registry
//! and the memory/file exports.

#![forbid(unsafe_code)]

pub mod client;
pub mod codec;
pub mod error;
pub mod export;
pub mod server;
pub mod session;
mod sys;
pub mod tls;
pub mod wire;

pub use client::{Client, ClientOptions, ClientPool, ExportInfo};
pub use error::NbdError;
pub use export::{
    BlockExtent, Export, ExportError, ExportRegistry, FileExport, MemoryExport, Removal, ZeroFlags,
};
pub use server::{Server, ServerOptions};
pub use session::{ServerSession, SessionAction, TlsPolicy};
