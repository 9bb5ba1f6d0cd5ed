//! NBD protocol: wire types, pure codec, session state machines, tokio server and client with TLS.
//!
//! Layers, bottom up: [`wire`] (constants and message structs), [`codec`]
//! (pure encode/decode with length limits), [`session`] (the server
//! handshake as a state machine: bytes in, actions out), [`export`] (the
//! `Export` trait and the memory/file exports) and [`tls`] (rustls
//! configurations and the X.509 material they load). None of these needs
//! tokio.
//!
//! The `tokio` feature (opt-in) adds the drivers: `server` and `client`, the
//! export registry (`ExportRegistry`) that connects a server to its owner, and
//! TLS streams through `tokio-rustls`.

#![forbid(unsafe_code)]

#[cfg(feature = "tokio")]
pub mod client;
pub mod codec;
pub mod error;
pub mod export;
#[cfg(feature = "tokio")]
pub mod server;
pub mod session;
pub mod tls;
pub mod wire;

#[cfg(feature = "tokio")]
pub use client::{Client, ClientOptions, ClientPool, ExportInfo, MetaContext, StatusExtent};
pub use error::NbdError;
pub use export::{BlockExtent, Export, ExportError, FileExport, MemoryExport, ZeroFlags};
#[cfg(feature = "tokio")]
pub use export::{ExportRegistry, Removal};
#[cfg(feature = "tokio")]
pub use server::{Server, ServerOptions};
pub use session::{Exports, ServerSession, SessionAction, TlsPolicy};
