//! Pure encode/decode of NBD messages.
//!
//! Two kinds of decoders live here:
//!
//! - *framing* decoders (`decode_*`) take the bytes received so far and
//!   return `Ok(None)` when the message is incomplete, or the message and
//!   the number of bytes it used. They enforce the length limits of `wire`
//!   before any allocation, so a hostile length never allocates.
//! - *payload* parsers (`parse_*`) take one complete payload whose length the
//!   frame already fixed, and reject trailing bytes.
//!
//! No I/O happens here; the server, the client and the fuzz targets all share it.

use crate::error::NbdError;
use crate::wire::{
    self, BlockSizes, ChunkPayload, ClientOption, InfoItem, InfoRequest, MetaContextRequest,
    OptionReply, OptionRequest, Reply, ReplyChunk, ReplyPayload, Request, chunk, info, opt, rep,
};

type Result<T> = std::result::Result<T, NbdError>;

/// A transmission reply header, before its payload is consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyHeader {
    /// Simple reply (READ data may follow; its length is known only to the requester).
    Simple {
        /// Error value.
        error: u32,
        /// Cookie.
        cookie: u64,
    },
    /// Structured chunk header; `length` payload bytes follow.
    Chunk {
        /// Flags.
        flags: u16,
        /// Chunk type.
        chunk_type: u16,
        /// Cookie.
        cookie: u64,
        /// Payload length.
        length: u32,
    },
}

// ---------------------------------------------------------------- handshake

/// Encodes the server greeting: `NBDMAGIC`, `IHAVEOPT`, handshake flags.
#[must_use]
pub fn encode_greeting(handshake_flags: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(wire::GREETING_LEN);
    out.extend_from_slice(&wire::NBD_MAGIC.to_be_bytes());
    out.extend_from_slice(&wire::IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&handshake_flags.to_be_bytes());
    out
}

/// Decodes the server greeting, returning the handshake flags.
///
/// # Errors
/// Wrong magic numbers (including oldstyle servers).
pub fn decode_greeting(buf: &[u8]) -> Result<Option<(u16, usize)>> {
    if buf.len() < wire::GREETING_LEN {
        return Ok(None);
    }
    if be_u64(buf, 0) != wire::NBD_MAGIC {
        return Err(NbdError::protocol("bad NBDMAGIC in greeting"));
    }
    if be_u64(buf, 8) != wire::IHAVEOPT {
        return Err(NbdError::protocol("server is not newstyle"));
    }
    Ok(Some((be_u16(buf, 16), wire::GREETING_LEN)))
}

/// Decodes the 32-bit client flags.
///
/// # Errors
/// Never (any value is framed); the session validates the bits.
pub fn decode_client_flags(buf: &[u8]) -> Result<Option<(u32, usize)>> {
    if buf.len() < 4 {
        return Ok(None);
    }
    Ok(Some((be_u32(buf, 0), 4)))
}

// ---------------------------------------------------------------- options

/// Encodes an option request frame.
///
/// # Panics
/// If `data` is longer than `u32::MAX` (callers build options from bounded names).
pub fn encode_option_request(req: &OptionRequest, out: &mut Vec<u8>) {
    out.extend_from_slice(&wire::IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&req.option.to_be_bytes());
    let len = u32::try_from(req.data.len()).expect("option payload fits u32");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&req.data);
}

/// Decodes an option request frame.
///
/// # Errors
/// Wrong magic, or a payload longer than [`wire::MAX_OPTION_PAYLOAD`].
pub fn decode_option_request(buf: &[u8]) -> Result<Option<(OptionRequest, usize)>> {
    if buf.len() < wire::OPTION_HEADER_LEN {
        return Ok(None);
    }
    if be_u64(buf, 0) != wire::IHAVEOPT {
        return Err(NbdError::protocol("option without IHAVEOPT magic"));
    }
    let option = be_u32(buf, 8);
    let len = be_u32(buf, 12);
    if len > wire::MAX_OPTION_PAYLOAD {
        return Err(NbdError::TooLarge {
            what: "option payload",
            length: u64::from(len),
            limit: u64::from(wire::MAX_OPTION_PAYLOAD),
        });
    }
    let total = wire::OPTION_HEADER_LEN + len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    let data = buf[wire::OPTION_HEADER_LEN..total].to_vec();
    Ok(Some((OptionRequest { option, data }, total)))
}

/// Builds the wire form of a client option.
#[must_use]
pub fn encode_client_option(option: &ClientOption) -> OptionRequest {
    let (option, data) = match option {
        ClientOption::ExportName(name) => (opt::EXPORT_NAME, name.as_bytes().to_vec()),
        ClientOption::Abort => (opt::ABORT, Vec::new()),
        ClientOption::List => (opt::LIST, Vec::new()),
        ClientOption::StartTls => (opt::STARTTLS, Vec::new()),
        ClientOption::Info(r) => (opt::INFO, encode_info_request(r)),
        ClientOption::Go(r) => (opt::GO, encode_info_request(r)),
        ClientOption::StructuredReply => (opt::STRUCTURED_REPLY, Vec::new()),
        ClientOption::ListMetaContext(r) => (opt::LIST_META_CONTEXT, encode_meta_request(r)),
        ClientOption::SetMetaContext(r) => (opt::SET_META_CONTEXT, encode_meta_request(r)),
        ClientOption::Unknown { option, data } => (*option, data.clone()),
    };
    OptionRequest { option, data }
}

/// Parses an option's payload.
///
/// # Errors
/// Malformed payload (the server answers `NBD_REP_ERR_INVALID`).
pub fn parse_client_option(req: &OptionRequest) -> Result<ClientOption> {
    let data = &req.data[..];
    let empty = |o: ClientOption| {
        if data.is_empty() {
            Ok(o)
        } else {
            Err(NbdError::TrailingBytes {
                what: "option without payload",
            })
        }
    };
    match req.option {
        opt::EXPORT_NAME => Ok(ClientOption::ExportName(name_string(data)?)),
        opt::ABORT => empty(ClientOption::Abort),
        opt::LIST => empty(ClientOption::List),
        opt::STARTTLS => empty(ClientOption::StartTls),
        opt::STRUCTURED_REPLY => empty(ClientOption::StructuredReply),
        opt::INFO => Ok(ClientOption::Info(parse_info_request(data)?)),
        opt::GO => Ok(ClientOption::Go(parse_info_request(data)?)),
        opt::LIST_META_CONTEXT => Ok(ClientOption::ListMetaContext(parse_meta_request(data)?)),
        opt::SET_META_CONTEXT => Ok(ClientOption::SetMetaContext(parse_meta_request(data)?)),
        option => Ok(ClientOption::Unknown {
            option,
            data: data.to_vec(),
        }),
    }
}

fn encode_info_request(r: &InfoRequest) -> Vec<u8> {
    let mut out = Vec::new();
    put_string32(&mut out, &r.name);
    let n = u16::try_from(r.requests.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&n.to_be_bytes());
    for i in r.requests.iter().take(usize::from(n)) {
        out.extend_from_slice(&i.to_be_bytes());
    }
    out
}

fn parse_info_request(data: &[u8]) -> Result<InfoRequest> {
    let mut r = Cursor::new(data);
    let name = r.string32("export name")?;
    let n = r.u16()?;
    if usize::from(n) > wire::MAX_INFO_REQUESTS {
        return Err(NbdError::TooLarge {
            what: "info requests",
            length: u64::from(n),
            limit: wire::MAX_INFO_REQUESTS as u64,
        });
    }
    let mut requests = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        requests.push(r.u16()?);
    }
    r.finish("info request")?;
    Ok(InfoRequest { name, requests })
}

fn encode_meta_request(r: &MetaContextRequest) -> Vec<u8> {
    let mut out = Vec::new();
    put_string32(&mut out, &r.name);
    let n = u32::try_from(r.queries.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&n.to_be_bytes());
    for q in &r.queries {
        put_string32(&mut out, q);
    }
    out
}

fn parse_meta_request(data: &[u8]) -> Result<MetaContextRequest> {
    let mut r = Cursor::new(data);
    let name = r.string32("export name")?;
    let n = r.u32()?;
    if n as usize > wire::MAX_META_QUERIES {
        return Err(NbdError::TooLarge {
            what: "meta context queries",
            length: u64::from(n),
            limit: wire::MAX_META_QUERIES as u64,
        });
    }
    let mut queries = Vec::with_capacity(n as usize);
    for _ in 0..n {
        queries.push(r.string32("meta context query")?);
    }
    r.finish("meta context request")?;
    Ok(MetaContextRequest { name, queries })
}

/// Encodes an option reply frame.
///
/// # Panics
/// If `data` is longer than `u32::MAX` (server replies are built from bounded names).
pub fn encode_option_reply(reply: &OptionReply, out: &mut Vec<u8>) {
    out.extend_from_slice(&wire::OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&reply.option.to_be_bytes());
    out.extend_from_slice(&reply.reply_type.to_be_bytes());
    let len = u32::try_from(reply.data.len()).expect("option reply fits u32");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&reply.data);
}

/// Decodes an option reply frame.
///
/// # Errors
/// Wrong magic or a payload longer than [`wire::MAX_OPTION_REPLY_PAYLOAD`].
pub fn decode_option_reply(buf: &[u8]) -> Result<Option<(OptionReply, usize)>> {
    if buf.len() < wire::OPTION_REPLY_HEADER_LEN {
        return Ok(None);
    }
    if be_u64(buf, 0) != wire::OPTION_REPLY_MAGIC {
        return Err(NbdError::protocol("bad option reply magic"));
    }
    let option = be_u32(buf, 8);
    let reply_type = be_u32(buf, 12);
    let len = be_u32(buf, 16);
    if len > wire::MAX_OPTION_REPLY_PAYLOAD {
        return Err(NbdError::TooLarge {
            what: "option reply payload",
            length: u64::from(len),
            limit: u64::from(wire::MAX_OPTION_REPLY_PAYLOAD),
        });
    }
    let total = wire::OPTION_REPLY_HEADER_LEN + len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    let data = buf[wire::OPTION_REPLY_HEADER_LEN..total].to_vec();
    Ok(Some((
        OptionReply {
            option,
            reply_type,
            data,
        },
        total,
    )))
}

/// Builds the option reply frame for a payload.
#[must_use]
pub fn encode_reply_payload(option: u32, payload: &ReplyPayload) -> OptionReply {
    let mut data = Vec::new();
    let reply_type = match payload {
        ReplyPayload::Ack => rep::ACK,
        ReplyPayload::Server { name, details } => {
            put_string32(&mut data, name);
            data.extend_from_slice(details.as_bytes());
            rep::SERVER
        }
        ReplyPayload::Info(item) => {
            encode_info_item(item, &mut data);
            rep::INFO
        }
        ReplyPayload::MetaContext { id, name } => {
            data.extend_from_slice(&id.to_be_bytes());
            data.extend_from_slice(name.as_bytes());
            rep::META_CONTEXT
        }
        ReplyPayload::Error { code, message } => {
            data.extend_from_slice(message.as_bytes());
            *code
        }
        ReplyPayload::Unknown { code, data: d } => {
            data.extend_from_slice(d);
            *code
        }
    };
    OptionReply {
        option,
        reply_type,
        data,
    }
}

fn encode_info_item(item: &InfoItem, out: &mut Vec<u8>) {
    match item {
        InfoItem::Export { size, flags } => {
            out.extend_from_slice(&info::EXPORT.to_be_bytes());
            out.extend_from_slice(&size.to_be_bytes());
            out.extend_from_slice(&flags.to_be_bytes());
        }
        InfoItem::Name(n) => {
            out.extend_from_slice(&info::NAME.to_be_bytes());
            out.extend_from_slice(n.as_bytes());
        }
        InfoItem::Description(d) => {
            out.extend_from_slice(&info::DESCRIPTION.to_be_bytes());
            out.extend_from_slice(d.as_bytes());
        }
        InfoItem::BlockSize(b) => {
            out.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
            out.extend_from_slice(&b.minimum.to_be_bytes());
            out.extend_from_slice(&b.preferred.to_be_bytes());
            out.extend_from_slice(&b.maximum.to_be_bytes());
        }
        InfoItem::Unknown { info_type, data } => {
            out.extend_from_slice(&info_type.to_be_bytes());
            out.extend_from_slice(data);
        }
    }
}

/// Parses an option reply's payload according to its type.
///
/// # Errors
/// Malformed payload or trailing bytes.
pub fn parse_reply_payload(reply: &OptionReply) -> Result<ReplyPayload> {
    let data = &reply.data[..];
    let mut r = Cursor::new(data);
    let payload = match reply.reply_type {
        rep::ACK => {
            r.finish("ACK")?;
            ReplyPayload::Ack
        }
        rep::SERVER => {
            let name = r.string32("export name")?;
            let details = utf8(r.rest(), "export details")?;
            ReplyPayload::Server { name, details }
        }
        rep::INFO => ReplyPayload::Info(parse_info_item(&mut r)?),
        rep::META_CONTEXT => {
            let id = r.u32()?;
            let name = utf8(r.rest(), "meta context name")?;
            ReplyPayload::MetaContext { id, name }
        }
        code if code & rep::ERR_BIT != 0 => ReplyPayload::Error {
            code,
            message: String::from_utf8_lossy(data).into_owned(),
        },
        code => ReplyPayload::Unknown {
            code,
            data: data.to_vec(),
        },
    };
    Ok(payload)
}

fn parse_info_item(r: &mut Cursor<'_>) -> Result<InfoItem> {
    let t = r.u16()?;
    let item = match t {
        info::EXPORT => {
            let size = r.u64()?;
            let flags = r.u16()?;
            r.finish("NBD_INFO_EXPORT")?;
            InfoItem::Export { size, flags }
        }
        info::NAME => InfoItem::Name(utf8(r.rest(), "info name")?),
        info::DESCRIPTION => InfoItem::Description(utf8(r.rest(), "info description")?),
        info::BLOCK_SIZE => {
            let minimum = r.u32()?;
            let preferred = r.u32()?;
            let maximum = r.u32()?;
            r.finish("NBD_INFO_BLOCK_SIZE")?;
            InfoItem::BlockSize(BlockSizes {
                minimum,
                preferred,
                maximum,
            })
        }
        info_type => InfoItem::Unknown {
            info_type,
            data: r.rest().to_vec(),
        },
    };
    Ok(item)
}

/// Encodes the reply to `NBD_OPT_EXPORT_NAME`: size, flags, and 124 zeroes unless `no_zeroes`.
pub fn encode_export_name_reply(size: u64, flags: u16, no_zeroes: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    if !no_zeroes {
        out.extend_from_slice(&[0u8; 124]);
    }
}

// ---------------------------------------------------------------- transmission

/// Encodes a request header (the WRITE payload is sent separately).
pub fn encode_request(req: &Request, out: &mut Vec<u8>) {
    out.extend_from_slice(&wire::REQUEST_MAGIC.to_be_bytes());
    out.extend_from_slice(&req.flags.to_be_bytes());
    out.extend_from_slice(&req.command.to_be_bytes());
    out.extend_from_slice(&req.cookie.to_be_bytes());
    out.extend_from_slice(&req.offset.to_be_bytes());
    out.extend_from_slice(&req.length.to_be_bytes());
}

/// Decodes a request header.
///
/// # Errors
/// Wrong magic, or a WRITE payload above [`wire::MAX_REQUEST_PAYLOAD`]
/// (the connection cannot be resynchronised without reading it, so it is fatal).
pub fn decode_request(buf: &[u8]) -> Result<Option<(Request, usize)>> {
    if buf.len() < wire::REQUEST_HEADER_LEN {
        return Ok(None);
    }
    if be_u32(buf, 0) != wire::REQUEST_MAGIC {
        return Err(NbdError::protocol("bad request magic"));
    }
    let req = Request {
        flags: be_u16(buf, 4),
        command: be_u16(buf, 6),
        cookie: be_u64(buf, 8),
        offset: be_u64(buf, 16),
        length: be_u32(buf, 24),
    };
    if req.payload_len() > wire::MAX_REQUEST_PAYLOAD {
        return Err(NbdError::TooLarge {
            what: "write payload",
            length: u64::from(req.length),
            limit: u64::from(wire::MAX_REQUEST_PAYLOAD),
        });
    }
    Ok(Some((req, wire::REQUEST_HEADER_LEN)))
}

/// Encodes a simple reply header.
pub fn encode_simple_reply(error: u32, cookie: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(&wire::SIMPLE_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
}

/// Encodes a structured chunk header.
pub fn encode_chunk_header(
    flags: u16,
    chunk_type: u16,
    cookie: u64,
    length: u32,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(&wire::STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&chunk_type.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
    out.extend_from_slice(&length.to_be_bytes());
}

/// Encodes a full reply (simple header, or structured chunk with payload).
///
/// # Panics
/// If a chunk payload exceeds `u32::MAX` bytes or an error message exceeds
/// `u16::MAX` bytes (never for replies built by this crate).
pub fn encode_reply(reply: &Reply, out: &mut Vec<u8>) {
    match reply {
        Reply::Simple { error, cookie } => encode_simple_reply(*error, *cookie, out),
        Reply::Chunk(c) => {
            let mut payload = Vec::new();
            encode_chunk_payload(&c.payload, &mut payload);
            let len = u32::try_from(payload.len()).expect("chunk payload fits u32");
            encode_chunk_header(c.flags, c.payload.chunk_type(), c.cookie, len, out);
            out.extend_from_slice(&payload);
        }
    }
}

/// Encodes a chunk payload.
///
/// # Panics
/// If an error message exceeds `u16::MAX` bytes.
fn encode_chunk_payload(p: &ChunkPayload, out: &mut Vec<u8>) {
    match p {
        ChunkPayload::None => {}
        ChunkPayload::OffsetData { offset, data } => {
            out.extend_from_slice(&offset.to_be_bytes());
            out.extend_from_slice(data);
        }
        ChunkPayload::OffsetHole { offset, size } => {
            out.extend_from_slice(&offset.to_be_bytes());
            out.extend_from_slice(&size.to_be_bytes());
        }
        ChunkPayload::BlockStatus {
            context_id,
            descriptors,
        } => {
            out.extend_from_slice(&context_id.to_be_bytes());
            for (len, flags) in descriptors {
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&flags.to_be_bytes());
            }
        }
        ChunkPayload::Error { error, message } => {
            out.extend_from_slice(&error.to_be_bytes());
            let n = u16::try_from(message.len()).expect("error message fits u16");
            out.extend_from_slice(&n.to_be_bytes());
            out.extend_from_slice(message.as_bytes());
        }
        ChunkPayload::ErrorOffset {
            error,
            message,
            offset,
        } => {
            out.extend_from_slice(&error.to_be_bytes());
            let n = u16::try_from(message.len()).expect("error message fits u16");
            out.extend_from_slice(&n.to_be_bytes());
            out.extend_from_slice(message.as_bytes());
            out.extend_from_slice(&offset.to_be_bytes());
        }
        ChunkPayload::Unknown { data, .. } => out.extend_from_slice(data),
    }
}

/// Decodes a reply header (simple or structured).
///
/// # Errors
/// Unknown magic, or a chunk payload above [`wire::MAX_REPLY_CHUNK_PAYLOAD`].
pub fn decode_reply_header(buf: &[u8]) -> Result<Option<(ReplyHeader, usize)>> {
    if buf.len() < 4 {
        return Ok(None);
    }
    match be_u32(buf, 0) {
        wire::SIMPLE_REPLY_MAGIC => {
            if buf.len() < wire::SIMPLE_REPLY_HEADER_LEN {
                return Ok(None);
            }
            let h = ReplyHeader::Simple {
                error: be_u32(buf, 4),
                cookie: be_u64(buf, 8),
            };
            Ok(Some((h, wire::SIMPLE_REPLY_HEADER_LEN)))
        }
        wire::STRUCTURED_REPLY_MAGIC => {
            if buf.len() < wire::STRUCTURED_REPLY_HEADER_LEN {
                return Ok(None);
            }
            let length = be_u32(buf, 16);
            if length > wire::MAX_REPLY_CHUNK_PAYLOAD {
                return Err(NbdError::TooLarge {
                    what: "reply chunk payload",
                    length: u64::from(length),
                    limit: u64::from(wire::MAX_REPLY_CHUNK_PAYLOAD),
                });
            }
            let h = ReplyHeader::Chunk {
                flags: be_u16(buf, 4),
                chunk_type: be_u16(buf, 6),
                cookie: be_u64(buf, 8),
                length,
            };
            Ok(Some((h, wire::STRUCTURED_REPLY_HEADER_LEN)))
        }
        _ => Err(NbdError::protocol("bad reply magic")),
    }
}

/// Decodes one complete reply: a simple header, or a chunk with its parsed payload.
///
/// # Errors
/// As [`decode_reply_header`] and [`parse_chunk_payload`].
pub fn decode_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>> {
    let Some((h, used)) = decode_reply_header(buf)? else {
        return Ok(None);
    };
    match h {
        ReplyHeader::Simple { error, cookie } => Ok(Some((Reply::Simple { error, cookie }, used))),
        ReplyHeader::Chunk {
            flags,
            chunk_type,
            cookie,
            length,
        } => {
            let total = used + length as usize;
            if buf.len() < total {
                return Ok(None);
            }
            let payload = parse_chunk_payload(chunk_type, &buf[used..total])?;
            Ok(Some((
                Reply::Chunk(ReplyChunk {
                    flags,
                    cookie,
                    payload,
                }),
                total,
            )))
        }
    }
}

/// Parses a chunk payload of the given type.
///
/// # Errors
/// Payload shorter than its type requires, lengths inconsistent, trailing bytes.
pub fn parse_chunk_payload(chunk_type: u16, data: &[u8]) -> Result<ChunkPayload> {
    let mut r = Cursor::new(data);
    let p = match chunk_type {
        chunk::NONE => {
            r.finish("NONE chunk")?;
            ChunkPayload::None
        }
        chunk::OFFSET_DATA => {
            let offset = r.u64()?;
            let data = r.rest();
            if data.is_empty() {
                return Err(NbdError::protocol("OFFSET_DATA chunk without data"));
            }
            ChunkPayload::OffsetData {
                offset,
                data: data.to_vec(),
            }
        }
        chunk::OFFSET_HOLE => {
            let offset = r.u64()?;
            let size = r.u32()?;
            r.finish("OFFSET_HOLE chunk")?;
            if size == 0 {
                return Err(NbdError::protocol("OFFSET_HOLE chunk of size 0"));
            }
            ChunkPayload::OffsetHole { offset, size }
        }
        chunk::BLOCK_STATUS => {
            let context_id = r.u32()?;
            let rest = r.rest();
            if rest.is_empty() || !rest.len().is_multiple_of(8) {
                return Err(NbdError::protocol("BLOCK_STATUS chunk length"));
            }
            if rest.len() / 8 > wire::MAX_BLOCK_STATUS_DESCRIPTORS {
                return Err(NbdError::TooLarge {
                    what: "block status descriptors",
                    length: (rest.len() / 8) as u64,
                    limit: wire::MAX_BLOCK_STATUS_DESCRIPTORS as u64,
                });
            }
            let descriptors = rest
                .chunks_exact(8)
                .map(|d| (be_u32(d, 0), be_u32(d, 4)))
                .collect();
            ChunkPayload::BlockStatus {
                context_id,
                descriptors,
            }
        }
        chunk::ERROR | chunk::ERROR_OFFSET => {
            let error = r.u32()?;
            let n = r.u16()?;
            let message = String::from_utf8_lossy(r.take(usize::from(n))?).into_owned();
            if chunk_type == chunk::ERROR {
                r.finish("ERROR chunk")?;
                ChunkPayload::Error { error, message }
            } else {
                let offset = r.u64()?;
                r.finish("ERROR_OFFSET chunk")?;
                ChunkPayload::ErrorOffset {
                    error,
                    message,
                    offset,
                }
            }
        }
        chunk_type => ChunkPayload::Unknown {
            chunk_type,
            data: data.to_vec(),
        },
    };
    Ok(p)
}

// ---------------------------------------------------------------- helpers

fn be_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

fn put_string32(out: &mut Vec<u8>, s: &str) {
    let n = u32::try_from(s.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn utf8(b: &[u8], what: &'static str) -> Result<String> {
    if b.len() > wire::MAX_NAME_LEN {
        return Err(NbdError::TooLarge {
            what,
            length: b.len() as u64,
            limit: wire::MAX_NAME_LEN as u64,
        });
    }
    String::from_utf8(b.to_vec()).map_err(|_| NbdError::Protocol { what })
}

fn name_string(b: &[u8]) -> Result<String> {
    utf8(b, "export name")
}

/// Bounds-checked big-endian reader over one payload.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    const fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len());
        let Some(end) = end else {
            return Err(NbdError::protocol("payload too short"));
        };
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u16(&mut self) -> Result<u16> {
        self.take(2).map(|b| be_u16(b, 0))
    }

    fn u32(&mut self) -> Result<u32> {
        self.take(4).map(|b| be_u32(b, 0))
    }

    fn u64(&mut self) -> Result<u64> {
        self.take(8).map(|b| be_u64(b, 0))
    }

    fn string32(&mut self, what: &'static str) -> Result<String> {
        let n = self.u32()? as usize;
        if n > wire::MAX_NAME_LEN {
            return Err(NbdError::TooLarge {
                what,
                length: n as u64,
                limit: wire::MAX_NAME_LEN as u64,
            });
        }
        let b = self.take(n)?;
        utf8(b, what)
    }

    fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }

    fn finish(&self, what: &'static str) -> Result<()> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(NbdError::TrailingBytes { what })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::InfoRequest;
    use proptest::prelude::*;

    fn name() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9:/_.-]{0,40}"
    }

    fn client_option() -> impl Strategy<Value = ClientOption> {
        prop_oneof![
            name().prop_map(ClientOption::ExportName),
            Just(ClientOption::Abort),
            Just(ClientOption::List),
            Just(ClientOption::StartTls),
            Just(ClientOption::StructuredReply),
            (name(), proptest::collection::vec(any::<u16>(), 0..8))
                .prop_map(|(name, requests)| ClientOption::Info(InfoRequest { name, requests })),
            (name(), proptest::collection::vec(any::<u16>(), 0..8))
                .prop_map(|(name, requests)| ClientOption::Go(InfoRequest { name, requests })),
            (name(), proptest::collection::vec(name(), 0..4)).prop_map(|(name, queries)| {
                ClientOption::ListMetaContext(MetaContextRequest { name, queries })
            }),
            (name(), proptest::collection::vec(name(), 0..4)).prop_map(|(name, queries)| {
                ClientOption::SetMetaContext(MetaContextRequest { name, queries })
            }),
            (12u32..1000, proptest::collection::vec(any::<u8>(), 0..32))
                .prop_map(|(option, data)| ClientOption::Unknown { option, data }),
        ]
    }

    fn reply_payload() -> impl Strategy<Value = ReplyPayload> {
        prop_oneof![
            Just(ReplyPayload::Ack),
            (name(), name()).prop_map(|(name, details)| ReplyPayload::Server { name, details }),
            (any::<u64>(), any::<u16>())
                .prop_map(|(size, flags)| ReplyPayload::Info(InfoItem::Export { size, flags })),
            name().prop_map(|n| ReplyPayload::Info(InfoItem::Name(n))),
            name().prop_map(|n| ReplyPayload::Info(InfoItem::Description(n))),
            (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(minimum, preferred, maximum)| {
                ReplyPayload::Info(InfoItem::BlockSize(BlockSizes {
                    minimum,
                    preferred,
                    maximum,
                }))
            }),
            (any::<u32>(), name()).prop_map(|(id, name)| ReplyPayload::MetaContext { id, name }),
            (1u32..10, name()).prop_map(|(c, message)| ReplyPayload::Error {
                code: rep::ERR_BIT + c,
                message
            }),
        ]
    }

    fn chunk_payload() -> impl Strategy<Value = ChunkPayload> {
        prop_oneof![
            Just(ChunkPayload::None),
            (any::<u64>(), proptest::collection::vec(any::<u8>(), 1..64))
                .prop_map(|(offset, data)| ChunkPayload::OffsetData { offset, data }),
            (any::<u64>(), 1u32..)
                .prop_map(|(offset, size)| ChunkPayload::OffsetHole { offset, size }),
            (
                any::<u32>(),
                proptest::collection::vec((any::<u32>(), any::<u32>()), 1..16)
            )
                .prop_map(|(context_id, descriptors)| ChunkPayload::BlockStatus {
                    context_id,
                    descriptors
                }),
            (1u32..200, name()).prop_map(|(error, message)| ChunkPayload::Error { error, message }),
            (1u32..200, name(), any::<u64>()).prop_map(|(error, message, offset)| {
                ChunkPayload::ErrorOffset {
                    error,
                    message,
                    offset,
                }
            }),
        ]
    }

    proptest! {
        #[test]
        fn request_round_trip_any_header_equal(flags in any::<u16>(), command in 0u16..10,
            cookie in any::<u64>(), offset in any::<u64>(), length in 0u32..=wire::MAX_REQUEST_PAYLOAD) {
            let req = Request { flags, command, cookie, offset, length };
            let mut buf = Vec::new();
            encode_request(&req, &mut buf);
            let (back, used) = decode_request(&buf).unwrap().unwrap();
            prop_assert_eq!(back, req);
            prop_assert_eq!(used, buf.len());
            prop_assert!(decode_request(&buf[..buf.len() - 1]).unwrap().is_none());
        }

        #[test]
        fn client_option_round_trip_any_option_equal(o in client_option()) {
            let frame = encode_client_option(&o);
            let mut buf = Vec::new();
            encode_option_request(&frame, &mut buf);
            let (back_frame, used) = decode_option_request(&buf).unwrap().unwrap();
            prop_assert_eq!(used, buf.len());
            prop_assert_eq!(parse_client_option(&back_frame).unwrap(), o);
        }

        #[test]
        fn option_reply_round_trip_any_payload_equal(option in any::<u32>(), p in reply_payload()) {
            let frame = encode_reply_payload(option, &p);
            let mut buf = Vec::new();
            encode_option_reply(&frame, &mut buf);
            let (back, used) = decode_option_reply(&buf).unwrap().unwrap();
            prop_assert_eq!(used, buf.len());
            prop_assert_eq!(back.option, option);
            prop_assert_eq!(parse_reply_payload(&back).unwrap(), p);
        }

        #[test]
        fn reply_round_trip_any_chunk_equal(flags in any::<u16>(), cookie in any::<u64>(),
            payload in chunk_payload()) {
            let reply = Reply::Chunk(ReplyChunk { flags, cookie, payload });
            let mut buf = Vec::new();
            encode_reply(&reply, &mut buf);
            let (back, used) = decode_reply(&buf).unwrap().unwrap();
            prop_assert_eq!(used, buf.len());
            prop_assert_eq!(back, reply);
        }

        #[test]
        fn simple_reply_round_trip_any_header_equal(error in any::<u32>(), cookie in any::<u64>()) {
            let reply = Reply::Simple { error, cookie };
            let mut buf = Vec::new();
            encode_reply(&reply, &mut buf);
            let (back, used) = decode_reply(&buf).unwrap().unwrap();
            prop_assert_eq!(used, buf.len());
            prop_assert_eq!(back, reply);
        }

        #[test]
        fn decoders_garbage_input_no_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_request(&data);
            let _ = decode_reply(&data);
            let _ = decode_option_request(&data);
            let _ = decode_option_reply(&data);
            for t in [0u16, 1, 2, 5, 0x8001, 0x8002] {
                let _ = parse_chunk_payload(t, &data);
            }
            for o in 1u32..12 {
                let _ = parse_client_option(&OptionRequest { option: o, data: data.clone() });
            }
        }
    }

    #[test]
    fn decode_request_oversized_write_rejected() {
        let req = Request {
            flags: 0,
            command: wire::cmd::WRITE,
            cookie: 1,
            offset: 0,
            length: wire::MAX_REQUEST_PAYLOAD + 1,
        };
        let mut buf = Vec::new();
        encode_request(&req, &mut buf);
        assert!(matches!(
            decode_request(&buf),
            Err(NbdError::TooLarge { .. })
        ));
    }

    #[test]
    fn decode_option_request_oversized_rejected() {
        let mut buf = Vec::new();
        buf.extend_from_slice(&wire::IHAVEOPT.to_be_bytes());
        buf.extend_from_slice(&opt::GO.to_be_bytes());
        buf.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            decode_option_request(&buf),
            Err(NbdError::TooLarge { .. })
        ));
    }

    #[test]
    fn parse_client_option_list_with_payload_rejected() {
        let req = OptionRequest {
            option: opt::LIST,
            data: vec![1],
        };
        assert!(matches!(
            parse_client_option(&req),
            Err(NbdError::TrailingBytes { .. })
        ));
    }

    #[test]
    fn parse_info_request_trailing_bytes_rejected() {
        let mut data = encode_info_request(&InfoRequest {
            name: "a".into(),
            requests: vec![3],
        });
        data.push(0);
        let req = OptionRequest {
            option: opt::GO,
            data,
        };
        assert!(matches!(
            parse_client_option(&req),
            Err(NbdError::TrailingBytes { .. })
        ));
    }

    #[test]
    fn decode_reply_header_huge_chunk_rejected() {
        let mut buf = Vec::new();
        encode_chunk_header(0, chunk::OFFSET_DATA, 1, u32::MAX, &mut buf);
        assert!(matches!(
            decode_reply_header(&buf),
            Err(NbdError::TooLarge { .. })
        ));
    }
}
