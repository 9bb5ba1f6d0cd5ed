//! Server handshake state machine (fixed newstyle).
//!
//! Bytes from the client go in through [`ServerSession::receive`]; what the
//! driver must do comes out as [`SessionAction`]s: send bytes, start TLS,
//! close, or enter transmission with a negotiated export. No sockets here
//! and no tokio, so the same machine runs under the tokio driver, in unit
//! tests and under the fuzzer. Exports are found through the [`Exports`]
//! trait: the server's `ExportRegistry` (feature `tokio`), or a plain
//! `BTreeMap` of names to exports.
//!
//! TLS policy (proto.md "TLS support"): with [`TlsPolicy::Required`] (FORCEDTLS)
//! every option other than `STARTTLS` and `ABORT` gets `NBD_REP_ERR_TLS_REQD`
//! until TLS is up, `EXPORT_NAME` closes the session, and nothing is listed or
//! served. After the driver finishes the TLS handshake it calls
//! [`ServerSession::tls_started`], which forgets everything negotiated before.
//!
//! Export names are capabilities: `NBD_OPT_LIST` is refused with
//! `NBD_REP_ERR_POLICY` unless the owner allows listing
//! ([`ServerSession::with_listing`]), as proto.md allows a server to do.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::codec;
use crate::error::NbdError;
use crate::export::Export;
use crate::wire::{
    self, BlockSizes, ClientOption, InfoItem, MetaContextRequest, OptionRequest, ReplyPayload,
    info, opt, rep, tflag,
};

/// Where a session finds exports by name.
pub trait Exports {
    /// What a connection holds while it uses an export (the registry counts its
    /// connections with it); dropping it detaches the connection.
    type Attachment: Send + 'static;
    /// Export names, sorted (for `NBD_OPT_LIST`, when listing is allowed).
    fn names(&self) -> Vec<String>;
    /// The export called `name`, if there is one.
    fn export(&self, name: &str) -> Option<Arc<dyn Export>>;
    /// Attaches a connection to the export called `name`: `None` when there is no
    /// such export or it is being removed.
    fn attach(&self, name: &str) -> Option<(Arc<dyn Export>, Self::Attachment)>;
}

/// A fixed set of exports: nothing to count, nothing is ever removed.
impl Exports for BTreeMap<String, Arc<dyn Export>> {
    type Attachment = ();

    fn names(&self) -> Vec<String> {
        self.keys().cloned().collect()
    }

    fn export(&self, name: &str) -> Option<Arc<dyn Export>> {
        self.get(name).cloned()
    }

    fn attach(&self, name: &str) -> Option<(Arc<dyn Export>, ())> {
        self.get(name).map(|e| (Arc::clone(e), ()))
    }
}

/// Whether TLS is required before anything is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsPolicy {
    /// NOTLS: `STARTTLS` is refused with `NBD_REP_ERR_POLICY`.
    Off,
    /// FORCEDTLS: nothing but `STARTTLS`/`ABORT` before TLS.
    Required,
}

/// What the driver must do next; `A` is the [`Exports::Attachment`] handed over
/// with the negotiated export.
#[derive(Debug)]
#[non_exhaustive]
pub enum SessionAction<A> {
    /// Write these bytes to the client.
    Send(Vec<u8>),
    /// Perform the TLS server handshake now, then call [`ServerSession::tls_started`].
    StartTls,
    /// Close the connection.
    Close,
    /// Handshake done: serve this export once the driver admits the connection. The
    /// final reply (the `ACK` of `GO`, the `EXPORT_NAME` answer) is not sent yet: the
    /// driver sends [`Negotiated::reply`] when it admits the connection, or
    /// [`Negotiated::refusal`] and closes when it does not.
    Transmission(Box<Negotiated<A>>),
}

/// The outcome of a successful handshake.
#[derive(Debug)]
pub struct Negotiated<A> {
    /// Export name.
    pub name: String,
    /// The export.
    pub export: Arc<dyn Export>,
    /// Transmission flags sent to the client.
    pub flags: u16,
    /// Structured replies negotiated.
    pub structured_replies: bool,
    /// `base:allocation` selected (its context id is [`wire::BASE_ALLOCATION_ID`]).
    pub base_allocation: bool,
    /// Bytes received after the final option (the first requests, if pipelined).
    pub leftover: Vec<u8>,
    /// The connection's hold on the export ([`Exports::attach`]): keep it for as long
    /// as the connection serves the export.
    pub attachment: A,
    reply: Vec<u8>,
    refusal: Vec<u8>,
}

impl<A> Negotiated<A> {
    /// The bytes that end the handshake (the `ACK` of `GO`, or the `EXPORT_NAME`
    /// answer); the driver sends them when it admits the connection.
    #[must_use]
    pub fn reply(&self) -> &[u8] {
        &self.reply
    }

    /// The bytes to send instead when the connection is not admitted (too many
    /// connections, export or server closing): `NBD_REP_ERR_POLICY` to `GO`,
    /// nothing to `EXPORT_NAME` (which has no error reply); the driver closes the
    /// connection after them.
    #[must_use]
    pub fn refusal(&self) -> &[u8] {
        &self.refusal
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    ClientFlags,
    Options,
    AwaitingTls,
    Finished,
}

/// The server side of one connection's handshake, serving the exports of `E`.
#[derive(Debug)]
pub struct ServerSession<E: Exports> {
    registry: Arc<E>,
    policy: TlsPolicy,
    state: State,
    buf: Vec<u8>,
    tls_active: bool,
    no_zeroes: bool,
    structured: bool,
    meta: Option<(String, bool)>,
    list_exports: bool,
}

impl<E: Exports> ServerSession<E> {
    /// A new session serving exports of `registry`; `NBD_OPT_LIST` is refused.
    #[must_use]
    pub const fn new(registry: Arc<E>, policy: TlsPolicy) -> Self {
        Self {
            registry,
            policy,
            list_exports: false,
            state: State::ClientFlags,
            buf: Vec::new(),
            tls_active: false,
            no_zeroes: false,
            structured: false,
            meta: None,
        }
    }

    /// Whether `NBD_OPT_LIST` answers with the export names (`true`) or is refused with
    /// `NBD_REP_ERR_POLICY` (`false`, the default: names are capabilities).
    #[must_use]
    pub const fn with_listing(mut self, list_exports: bool) -> Self {
        self.list_exports = list_exports;
        self
    }

    /// The greeting to send first: `NBDMAGIC`, `IHAVEOPT`, `FIXED_NEWSTYLE | NO_ZEROES`.
    #[must_use]
    pub fn greeting(&self) -> Vec<u8> {
        codec::encode_greeting(wire::FLAG_FIXED_NEWSTYLE | wire::FLAG_NO_ZEROES)
    }

    /// The driver finished the TLS handshake: negotiation restarts from scratch.
    pub fn tls_started(&mut self) {
        self.tls_active = true;
        self.structured = false;
        self.meta = None;
        self.buf.clear();
        if self.state == State::AwaitingTls {
            self.state = State::Options;
        }
    }

    /// Feeds bytes from the client and returns the actions they cause.
    ///
    /// # Errors
    /// A protocol violation that ends the connection (bad magic, oversized
    /// option, unknown client flags, data while waiting for TLS).
    pub fn receive(&mut self, data: &[u8]) -> Result<Vec<SessionAction<E::Attachment>>, NbdError> {
        let mut actions = Vec::new();
        if self.state == State::Finished {
            return Err(NbdError::protocol("data after the handshake ended"));
        }
        if self.state == State::AwaitingTls && !data.is_empty() {
            return Err(NbdError::protocol("plain data after STARTTLS"));
        }
        self.buf.extend_from_slice(data);
        loop {
            match self.state {
                State::ClientFlags => {
                    let Some((flags, used)) = codec::decode_client_flags(&self.buf)? else {
                        break;
                    };
                    self.buf.drain(..used);
                    let known = wire::FLAG_C_FIXED_NEWSTYLE | wire::FLAG_C_NO_ZEROES;
                    if flags & !known != 0 {
                        return Err(NbdError::protocol("unknown client flags"));
                    }
                    self.no_zeroes = flags & wire::FLAG_C_NO_ZEROES != 0;
                    self.state = State::Options;
                }
                State::Options => {
                    let Some((req, used)) = codec::decode_option_request(&self.buf)? else {
                        break;
                    };
                    self.buf.drain(..used);
                    let stop = self.handle_option(&req, &mut actions);
                    if stop {
                        break;
                    }
                }
                State::AwaitingTls | State::Finished => break,
            }
        }
        if self.state == State::AwaitingTls && !self.buf.is_empty() {
            return Err(NbdError::protocol("plain data after STARTTLS"));
        }
        Ok(actions)
    }

    /// Handles one option; returns true when the option loop must stop.
    fn handle_option(
        &mut self,
        req: &OptionRequest,
        actions: &mut Vec<SessionAction<E::Attachment>>,
    ) -> bool {
        let option = req.option;
        let parsed = codec::parse_client_option(req);
        if self.policy == TlsPolicy::Required && !self.tls_active {
            return self.handle_before_tls(option, parsed.as_ref().ok(), actions);
        }
        let parsed = match parsed {
            Ok(p) => p,
            Err(_) if option == opt::EXPORT_NAME => {
                self.finish(actions, SessionAction::Close);
                return true;
            }
            Err(e) => {
                self.error(actions, option, rep::ERR_INVALID, &e.to_string());
                return false;
            }
        };
        match parsed {
            ClientOption::Abort => {
                self.reply(actions, option, &ReplyPayload::Ack);
                self.finish(actions, SessionAction::Close);
                return true;
            }
            ClientOption::StartTls if self.tls_active => {
                self.error(actions, option, rep::ERR_INVALID, "TLS already active");
            }
            ClientOption::StartTls => {
                self.error(actions, option, rep::ERR_POLICY, "TLS is not offered");
            }
            ClientOption::List if !self.list_exports => {
                self.error(
                    actions,
                    option,
                    rep::ERR_POLICY,
                    "listing exports is not allowed",
                );
            }
            ClientOption::List => {
                for name in self.registry.names() {
                    let p = ReplyPayload::Server {
                        name,
                        details: String::new(),
                    };
                    self.reply(actions, option, &p);
                }
                self.reply(actions, option, &ReplyPayload::Ack);
            }
            ClientOption::ExportName(name) => {
                let Some((export, attachment)) = self.registry.attach(&name) else {
                    self.finish(actions, SessionAction::Close);
                    return true;
                };
                let flags = self.transmission_flags(export.as_ref());
                let mut reply = Vec::new();
                codec::encode_export_name_reply(export.size(), flags, self.no_zeroes, &mut reply);
                let end = Ending {
                    reply,
                    refusal: Vec::new(),
                };
                self.enter_transmission(actions, name, export, flags, attachment, end);
                return true;
            }
            ClientOption::Info(r) | ClientOption::Go(r) => {
                return self.handle_info(option, &r, actions);
            }
            ClientOption::StructuredReply => {
                self.structured = true;
                self.reply(actions, option, &ReplyPayload::Ack);
            }
            ClientOption::ListMetaContext(r) => self.handle_meta(option, &r, false, actions),
            ClientOption::SetMetaContext(r) => self.handle_meta(option, &r, true, actions),
            _ => self.error(actions, option, rep::ERR_UNSUP, "option not supported"),
        }
        false
    }

    fn handle_before_tls(
        &mut self,
        option: u32,
        parsed: Option<&ClientOption>,
        actions: &mut Vec<SessionAction<E::Attachment>>,
    ) -> bool {
        match parsed {
            Some(ClientOption::StartTls) => {
                self.reply(actions, option, &ReplyPayload::Ack);
                actions.push(SessionAction::StartTls);
                self.state = State::AwaitingTls;
                true
            }
            Some(ClientOption::Abort) => {
                self.reply(actions, option, &ReplyPayload::Ack);
                self.finish(actions, SessionAction::Close);
                true
            }
            _ if option == opt::EXPORT_NAME => {
                self.finish(actions, SessionAction::Close);
                true
            }
            _ => {
                self.error(actions, option, rep::ERR_TLS_REQD, "TLS is required");
                false
            }
        }
    }

    fn handle_info(
        &mut self,
        option: u32,
        r: &wire::InfoRequest,
        actions: &mut Vec<SessionAction<E::Attachment>>,
    ) -> bool {
        let Some(export) = self.registry.export(&r.name) else {
            self.error(actions, option, rep::ERR_UNKNOWN, "no such export");
            return false;
        };
        let flags = self.transmission_flags(export.as_ref());
        let size = export.size();
        self.reply(
            actions,
            option,
            &ReplyPayload::Info(InfoItem::Export { size, flags }),
        );
        if r.requests.contains(&info::NAME) {
            self.reply(
                actions,
                option,
                &ReplyPayload::Info(InfoItem::Name(r.name.clone())),
            );
        }
        if r.requests.contains(&info::BLOCK_SIZE) {
            let sizes = block_sizes(export.as_ref());
            self.reply(
                actions,
                option,
                &ReplyPayload::Info(InfoItem::BlockSize(sizes)),
            );
        }
        if option == opt::INFO {
            self.reply(actions, option, &ReplyPayload::Ack);
            return false;
        }
        // The export may be removed between the look-up and here: then it is gone.
        let Some((export, attachment)) = self.registry.attach(&r.name) else {
            self.error(actions, option, rep::ERR_UNKNOWN, "export is being removed");
            return false;
        };
        let end = Ending {
            reply: encode(option, &ReplyPayload::Ack),
            refusal: encode(
                option,
                &ReplyPayload::Error {
                    code: rep::ERR_POLICY,
                    message:
                        "not admitted: connection limit reached, or the export or server is closing"
                            .to_owned(),
                },
            ),
        };
        self.enter_transmission(actions, r.name.clone(), export, flags, attachment, end);
        true
    }

    fn handle_meta(
        &mut self,
        option: u32,
        r: &MetaContextRequest,
        set: bool,
        actions: &mut Vec<SessionAction<E::Attachment>>,
    ) {
        if !self.structured {
            self.error(
                actions,
                option,
                rep::ERR_INVALID,
                "structured replies not negotiated",
            );
            return;
        }
        if self.registry.export(&r.name).is_none() {
            self.error(actions, option, rep::ERR_UNKNOWN, "no such export");
            return;
        }
        let selected = if set {
            r.queries.iter().any(|q| q == wire::BASE_ALLOCATION)
        } else {
            r.queries.is_empty()
                || r.queries
                    .iter()
                    .any(|q| q == "base:" || q == wire::BASE_ALLOCATION)
        };
        if selected {
            let id = if set { wire::BASE_ALLOCATION_ID } else { 0 };
            let name = wire::BASE_ALLOCATION.to_owned();
            self.reply(actions, option, &ReplyPayload::MetaContext { id, name });
        }
        if set {
            self.meta = Some((r.name.clone(), selected));
        }
        self.reply(actions, option, &ReplyPayload::Ack);
    }

    fn enter_transmission(
        &mut self,
        actions: &mut Vec<SessionAction<E::Attachment>>,
        name: String,
        export: Arc<dyn Export>,
        flags: u16,
        attachment: E::Attachment,
        end: Ending,
    ) {
        let base_allocation =
            self.structured && matches!(&self.meta, Some((n, true)) if *n == name);
        let leftover = std::mem::take(&mut self.buf);
        let n = Negotiated {
            name,
            export,
            flags,
            structured_replies: self.structured,
            base_allocation,
            leftover,
            attachment,
            reply: end.reply,
            refusal: end.refusal,
        };
        self.finish(actions, SessionAction::Transmission(Box::new(n)));
    }

    fn transmission_flags(&self, export: &dyn Export) -> u16 {
        let mut f = tflag::HAS_FLAGS | tflag::SEND_FLUSH | tflag::SEND_FUA;
        if export.is_read_only() {
            f |= tflag::READ_ONLY;
        } else {
            f |= tflag::SEND_TRIM | tflag::SEND_WRITE_ZEROES | tflag::SEND_FAST_ZERO;
        }
        if export.can_multi_conn() {
            f |= tflag::CAN_MULTI_CONN;
        }
        if self.structured {
            f |= tflag::SEND_DF;
        }
        f
    }

    fn finish(
        &mut self,
        actions: &mut Vec<SessionAction<E::Attachment>>,
        action: SessionAction<E::Attachment>,
    ) {
        self.state = State::Finished;
        actions.push(action);
    }

    fn reply(
        &self,
        actions: &mut Vec<SessionAction<E::Attachment>>,
        option: u32,
        payload: &ReplyPayload,
    ) {
        push_send(actions, encode(option, payload));
    }

    fn error(
        &self,
        actions: &mut Vec<SessionAction<E::Attachment>>,
        option: u32,
        code: u32,
        message: &str,
    ) {
        let p = ReplyPayload::Error {
            code,
            message: message.to_owned(),
        };
        self.reply(actions, option, &p);
    }
}

/// The final bytes of a handshake: sent on admission, or instead on refusal.
struct Ending {
    reply: Vec<u8>,
    refusal: Vec<u8>,
}

/// One encoded option reply.
fn encode(option: u32, payload: &ReplyPayload) -> Vec<u8> {
    let mut out = Vec::new();
    codec::encode_option_reply(&codec::encode_reply_payload(option, payload), &mut out);
    out
}

/// Appends bytes to the last `Send` action, or starts a new one.
fn push_send<A>(actions: &mut Vec<SessionAction<A>>, bytes: Vec<u8>) {
    if let Some(SessionAction::Send(prev)) = actions.last_mut() {
        prev.extend_from_slice(&bytes);
    } else {
        actions.push(SessionAction::Send(bytes));
    }
}

/// Block size constraints we advertise for an export.
fn block_sizes(export: &dyn Export) -> BlockSizes {
    let preferred = export
        .preferred_block_size()
        .clamp(512, wire::MAX_REQUEST_PAYLOAD)
        .checked_next_power_of_two()
        .unwrap_or(4096)
        .min(wire::MAX_REQUEST_PAYLOAD);
    BlockSizes {
        minimum: 1,
        preferred,
        maximum: wire::MAX_REQUEST_PAYLOAD,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::MemoryExport;
    use crate::wire::{InfoRequest, OptionReply};

    type Registry = BTreeMap<String, Arc<dyn Export>>;

    fn registry() -> Arc<Registry> {
        let mut r = Registry::new();
        r.insert("disk".into(), Arc::new(MemoryExport::new(1 << 20)));
        Arc::new(r)
    }

    fn option_bytes(o: &ClientOption) -> Vec<u8> {
        let mut out = Vec::new();
        codec::encode_option_request(&codec::encode_client_option(o), &mut out);
        out
    }

    fn started(policy: TlsPolicy) -> ServerSession<Registry> {
        let mut s = ServerSession::new(registry(), policy);
        let a = s.receive(&(wire::FLAG_C_FIXED_NEWSTYLE | wire::FLAG_C_NO_ZEROES).to_be_bytes());
        assert!(a.unwrap().is_empty());
        s
    }

    /// Decodes every option reply in the actions' `Send` bytes.
    fn replies(actions: &[SessionAction<()>]) -> Vec<OptionReply> {
        let mut bytes = Vec::new();
        for a in actions {
            if let SessionAction::Send(b) = a {
                bytes.extend_from_slice(b);
            }
        }
        let mut out = Vec::new();
        let mut pos = 0;
        while let Some((r, used)) = codec::decode_option_reply(&bytes[pos..]).unwrap() {
            out.push(r);
            pos += used;
        }
        out
    }

    fn go(name: &str) -> ClientOption {
        ClientOption::Go(InfoRequest {
            name: name.into(),
            requests: vec![info::BLOCK_SIZE],
        })
    }

    fn set_meta() -> ClientOption {
        ClientOption::SetMetaContext(MetaContextRequest {
            name: "disk".into(),
            queries: vec![wire::BASE_ALLOCATION.into()],
        })
    }

    #[test]
    fn session_tls_required_list_refused_with_tls_reqd() {
        let mut s = started(TlsPolicy::Required);
        let a = s.receive(&option_bytes(&ClientOption::List)).unwrap();
        let r = replies(&a);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].reply_type, rep::ERR_TLS_REQD);
    }

    #[test]
    fn session_tls_required_export_name_closes() {
        let mut s = started(TlsPolicy::Required);
        let a = s
            .receive(&option_bytes(&ClientOption::ExportName("disk".into())))
            .unwrap();
        assert!(matches!(a.as_slice(), [SessionAction::Close]));
    }

    #[test]
    fn session_tls_required_starttls_acks_and_starts_tls() {
        let mut s = started(TlsPolicy::Required);
        let a = s.receive(&option_bytes(&ClientOption::StartTls)).unwrap();
        assert_eq!(replies(&a)[0].reply_type, rep::ACK);
        assert!(matches!(a.last(), Some(SessionAction::StartTls)));
    }

    #[test]
    fn session_plain_data_after_starttls_rejected() {
        let mut s = started(TlsPolicy::Required);
        let mut bytes = option_bytes(&ClientOption::StartTls);
        bytes.extend_from_slice(&option_bytes(&ClientOption::List));
        assert!(s.receive(&bytes).is_err());
    }

    #[test]
    fn session_after_starttls_negotiation_reset() {
        let mut s = started(TlsPolicy::Off);
        s.policy = TlsPolicy::Required;
        s.tls_active = true;
        s.receive(&option_bytes(&ClientOption::StructuredReply))
            .unwrap();
        s.tls_active = false;
        s.receive(&option_bytes(&ClientOption::StartTls)).unwrap();
        s.tls_started();
        let a = s.receive(&option_bytes(&set_meta())).unwrap();
        assert_eq!(replies(&a)[0].reply_type, rep::ERR_INVALID);
    }

    #[test]
    fn session_unknown_option_err_unsup() {
        let mut s = started(TlsPolicy::Off);
        let o = ClientOption::Unknown {
            option: opt::EXTENDED_HEADERS,
            data: Vec::new(),
        };
        let a = s.receive(&option_bytes(&o)).unwrap();
        assert_eq!(replies(&a)[0].reply_type, rep::ERR_UNSUP);
    }

    #[test]
    fn session_list_refused_with_policy_by_default() {
        let mut s = started(TlsPolicy::Off);
        let a = s.receive(&option_bytes(&ClientOption::List)).unwrap();
        let r = replies(&a);
        assert_eq!(r.len(), 1, "one error reply, no names");
        assert_eq!(r[0].reply_type, rep::ERR_POLICY);
        // The session goes on: the client may still pick the export it knows.
        let a = s.receive(&option_bytes(&go("disk"))).unwrap();
        assert!(matches!(a.last(), Some(SessionAction::Transmission(_))));
    }

    #[test]
    fn session_list_shows_export_names_when_allowed() {
        let mut s = started(TlsPolicy::Off);
        s.list_exports = true;
        let a = s.receive(&option_bytes(&ClientOption::List)).unwrap();
        let r = replies(&a);
        let p = codec::parse_reply_payload(&r[0]).unwrap();
        assert_eq!(
            p,
            ReplyPayload::Server {
                name: "disk".into(),
                details: String::new()
            }
        );
        assert_eq!(r[1].reply_type, rep::ACK);
    }

    #[test]
    fn session_go_with_meta_context_enters_transmission() {
        let mut s = started(TlsPolicy::Off);
        let mut bytes = option_bytes(&ClientOption::StructuredReply);
        bytes.extend_from_slice(&option_bytes(&set_meta()));
        bytes.extend_from_slice(&option_bytes(&go("disk")));
        let a = s.receive(&bytes).unwrap();
        let Some(SessionAction::Transmission(n)) = a.last() else {
            panic!("no transmission")
        };
        assert!(n.structured_replies && n.base_allocation);
        assert_eq!(n.flags & tflag::SEND_DF, tflag::SEND_DF);
        // The ACK of GO waits for the driver's admission; the refusal is ERR_POLICY.
        let ack = codec::decode_option_reply(n.reply()).unwrap().unwrap().0;
        assert_eq!(ack.reply_type, rep::ACK);
        let no = codec::decode_option_reply(n.refusal()).unwrap().unwrap().0;
        assert_eq!(no.reply_type, rep::ERR_POLICY);
        assert!(
            replies(&a)
                .iter()
                .all(|r| r.reply_type != rep::ACK || r.option != opt::GO)
        );
    }

    #[test]
    fn session_go_unknown_export_err_unknown() {
        let mut s = started(TlsPolicy::Off);
        let a = s.receive(&option_bytes(&go("nope"))).unwrap();
        assert_eq!(replies(&a)[0].reply_type, rep::ERR_UNKNOWN);
    }

    #[test]
    fn session_unknown_client_flags_rejected() {
        let mut s = ServerSession::new(registry(), TlsPolicy::Off);
        assert!(s.receive(&[0, 0, 0, 0x80]).is_err());
    }

    #[test]
    fn session_byte_by_byte_input_same_result() {
        let mut s = started(TlsPolicy::Off);
        let bytes = option_bytes(&go("disk"));
        let mut last = Vec::new();
        for b in &bytes {
            last = s.receive(std::slice::from_ref(b)).unwrap();
        }
        assert!(matches!(last.last(), Some(SessionAction::Transmission(_))));
    }

    #[derive(Debug)]
    struct Clustered(MemoryExport);

    impl Export for Clustered {
        fn size(&self) -> u64 {
            self.0.size()
        }
        fn is_read_only(&self) -> bool {
            true
        }
        fn preferred_block_size(&self) -> u32 {
            65536
        }
        fn read(&self, o: u64, b: &mut [u8]) -> Result<(), crate::ExportError> {
            self.0.read(o, b)
        }
        fn write(&self, o: u64, d: &[u8], f: bool) -> Result<(), crate::ExportError> {
            self.0.write(o, d, f)
        }
        fn write_zeroes(
            &self,
            o: u64,
            l: u64,
            f: crate::ZeroFlags,
        ) -> Result<(), crate::ExportError> {
            self.0.write_zeroes(o, l, f)
        }
        fn trim(&self, o: u64, l: u64, f: bool) -> Result<(), crate::ExportError> {
            self.0.trim(o, l, f)
        }
        fn flush(&self) -> Result<(), crate::ExportError> {
            Ok(())
        }
        fn block_status(
            &self,
            o: u64,
            l: u64,
        ) -> Result<Vec<crate::BlockExtent>, crate::ExportError> {
            self.0.block_status(o, l)
        }
    }

    #[test]
    fn session_info_block_size_uses_export_preference() {
        let mut r = Registry::new();
        r.insert("q".into(), Arc::new(Clustered(MemoryExport::new(1 << 20))));
        let mut s = ServerSession::new(Arc::new(r), TlsPolicy::Off);
        let mut bytes = wire::FLAG_C_FIXED_NEWSTYLE.to_be_bytes().to_vec();
        let info = ClientOption::Info(InfoRequest {
            name: "q".into(),
            requests: vec![info::BLOCK_SIZE],
        });
        bytes.extend_from_slice(&option_bytes(&info));
        let a = s.receive(&bytes).unwrap();
        let r = replies(&a);
        let items: Vec<_> = r
            .iter()
            .map(|x| codec::parse_reply_payload(x).unwrap())
            .collect();
        let flags = tflag::HAS_FLAGS
            | tflag::READ_ONLY
            | tflag::SEND_FLUSH
            | tflag::SEND_FUA
            | tflag::CAN_MULTI_CONN;
        assert_eq!(
            items,
            vec![
                ReplyPayload::Info(InfoItem::Export {
                    size: 1 << 20,
                    flags
                }),
                ReplyPayload::Info(InfoItem::BlockSize(BlockSizes {
                    minimum: 1,
                    preferred: 65536,
                    maximum: wire::MAX_REQUEST_PAYLOAD
                })),
                ReplyPayload::Ack,
            ]
        );
    }

    proptest::proptest! {
        #[test]
        fn session_garbage_input_no_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let mut s = ServerSession::new(registry(), TlsPolicy::Off);
            let _ = s.receive(&data);
        }
    }
}
