//! Fuzz target: the NBD server handshake state machine fed arbitrary client bytes.
//!
//! The first byte chooses the TLS policy and how the input is split into
//! `receive` calls; the rest is the client's byte stream. Any input must give
//! actions or an error, never a panic; after an error or a `Close`, nothing more is fed.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use sendense_nbd::{ExportRegistry, MemoryExport, ServerSession, SessionAction, TlsPolicy};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, stream)) = data.split_first() else {
        return;
    };
    let registry = Arc::new(ExportRegistry::new());
    let _ = registry.add("disk", Arc::new(MemoryExport::new(1 << 20)));
    let _ = registry.add("", Arc::new(MemoryExport::new(4096).read_only()));
    let policy = if mode & 1 == 0 { TlsPolicy::Off } else { TlsPolicy::Required };
    let step = usize::from(mode >> 1).max(1);
    let mut session = ServerSession::new(registry, policy);
    let _ = session.greeting();
    for piece in stream.chunks(step) {
        match session.receive(piece) {
            Ok(actions) => {
                let mut done = false;
                for a in actions {
                    match a {
                        SessionAction::StartTls => session.tls_started(),
                        SessionAction::Close | SessionAction::Transmission(_) => done = true,
                        _ => {}
                    }
                }
                if done {
                    return;
                }
            }
            Err(_) => return,
        }
    }
});
