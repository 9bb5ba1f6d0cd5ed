//! NBD protocol: wire types, pure codec, session state machines, tokio server and client with TLS.
