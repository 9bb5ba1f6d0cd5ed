//! NBD wire constants and message structs.
//!
//! Values follow the NBD protocol document (`doc/proto.md` of the reference
//! implementation, "Values" section). Every integer on the wire is big-endian.
//! The structs here are plain data; `codec` turns them into bytes and back.

/// `NBDMAGIC`: first 8 bytes the server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: newstyle magic, also the prefix of every client option.
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
/// Magic of every option reply (`0x3e889045565a9`).
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of a transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Size of a request header on the wire.
pub const REQUEST_HEADER_LEN: usize = 28;
/// Size of a simple reply header on the wire.
pub const SIMPLE_REPLY_HEADER_LEN: usize = 16;
/// Size of a structured reply chunk header on the wire.
pub const STRUCTURED_REPLY_HEADER_LEN: usize = 20;
/// Size of an option request header (magic, option, length).
pub const OPTION_HEADER_LEN: usize = 16;
/// Size of an option reply header (magic, option, type, length).
pub const OPTION_REPLY_HEADER_LEN: usize = 20;
/// Size of the server greeting (magic, IHAVEOPT, handshake flags).
pub const GREETING_LEN: usize = 18;

/// Largest option payload we accept or send (names are at most 4096 bytes by spec).
pub const MAX_OPTION_PAYLOAD: u32 = 64 * 1024;
/// Largest option reply payload a client accepts.
pub const MAX_OPTION_REPLY_PAYLOAD: u32 = 64 * 1024;
/// Largest READ or WRITE payload of one request (advertised as maximum block size).
pub const MAX_REQUEST_PAYLOAD: u32 = 32 * 1024 * 1024;
/// Largest structured reply chunk payload a client accepts (data plus offset).
pub const MAX_REPLY_CHUNK_PAYLOAD: u32 = MAX_REQUEST_PAYLOAD + 8;
/// Longest export name or metadata context name (spec: 4096 bytes).
pub const MAX_NAME_LEN: usize = 4096;
/// Most queries accepted in one LIST/SET_META_CONTEXT option.
pub const MAX_META_QUERIES: usize = 128;
/// Most info requests accepted in one INFO/GO option.
pub const MAX_INFO_REQUESTS: usize = 64;
/// Most block-status descriptors sent or accepted in one chunk.
pub const MAX_BLOCK_STATUS_DESCRIPTORS: usize = 64 * 1024;

/// Handshake flag: fixed newstyle supported.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag: the 124 zero bytes after EXPORT_NAME may be omitted.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: fixed newstyle.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: no zeroes.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Option numbers.
pub mod opt {
    /// `NBD_OPT_EXPORT_NAME`.
    pub const EXPORT_NAME: u32 = 1;
    /// `NBD_OPT_ABORT`.
    pub const ABORT: u32 = 2;
    /// `NBD_OPT_LIST`.
    pub const LIST: u32 = 3;
    /// `NBD_OPT_STARTTLS`.
    pub const STARTTLS: u32 = 5;
    /// `NBD_OPT_INFO`.
    pub const INFO: u32 = 6;
    /// `NBD_OPT_GO`.
    pub const GO: u32 = 7;
    /// `NBD_OPT_STRUCTURED_REPLY`.
    pub const STRUCTURED_REPLY: u32 = 8;
    /// `NBD_OPT_LIST_META_CONTEXT`.
    pub const LIST_META_CONTEXT: u32 = 9;
    /// `NBD_OPT_SET_META_CONTEXT`.
    pub const SET_META_CONTEXT: u32 = 10;
    /// `NBD_OPT_EXTENDED_HEADERS` (not supported: answered with `ERR_UNSUP`).
    pub const EXTENDED_HEADERS: u32 = 11;
}

/// Option reply types.
pub mod rep {
    /// `NBD_REP_ACK`.
    pub const ACK: u32 = 1;
    /// `NBD_REP_SERVER`.
    pub const SERVER: u32 = 2;
    /// `NBD_REP_INFO`.
    pub const INFO: u32 = 3;
    /// `NBD_REP_META_CONTEXT`.
    pub const META_CONTEXT: u32 = 4;
    /// Bit set on every error reply.
    pub const ERR_BIT: u32 = 1 << 31;
    /// `NBD_REP_ERR_UNSUP`.
    pub const ERR_UNSUP: u32 = ERR_BIT + 1;
    /// `NBD_REP_ERR_POLICY`.
    pub const ERR_POLICY: u32 = ERR_BIT + 2;
    /// `NBD_REP_ERR_INVALID`.
    pub const ERR_INVALID: u32 = ERR_BIT + 3;
    /// `NBD_REP_ERR_PLATFORM`.
    pub const ERR_PLATFORM: u32 = ERR_BIT + 4;
    /// `NBD_REP_ERR_TLS_REQD`.
    pub const ERR_TLS_REQD: u32 = ERR_BIT + 5;
    /// `NBD_REP_ERR_UNKNOWN`.
    pub const ERR_UNKNOWN: u32 = ERR_BIT + 6;
    /// `NBD_REP_ERR_SHUTDOWN`.
    pub const ERR_SHUTDOWN: u32 = ERR_BIT + 7;
    /// `NBD_REP_ERR_BLOCK_SIZE_REQD`.
    pub const ERR_BLOCK_SIZE_REQD: u32 = ERR_BIT + 8;
    /// `NBD_REP_ERR_TOO_BIG`.
    pub const ERR_TOO_BIG: u32 = ERR_BIT + 9;
}

/// `NBD_INFO_*` types carried in `NBD_REP_INFO`.
pub mod info {
    /// `NBD_INFO_EXPORT`: size and transmission flags.
    pub const EXPORT: u16 = 0;
    /// `NBD_INFO_NAME`.
    pub const NAME: u16 = 1;
    /// `NBD_INFO_DESCRIPTION`.
    pub const DESCRIPTION: u16 = 2;
    /// `NBD_INFO_BLOCK_SIZE`.
    pub const BLOCK_SIZE: u16 = 3;
}

/// Transmission flags (16 bits) sent with the export.
pub mod tflag {
    /// `NBD_FLAG_HAS_FLAGS`.
    pub const HAS_FLAGS: u16 = 1 << 0;
    /// `NBD_FLAG_READ_ONLY`.
    pub const READ_ONLY: u16 = 1 << 1;
    /// `NBD_FLAG_SEND_FLUSH`.
    pub const SEND_FLUSH: u16 = 1 << 2;
    /// `NBD_FLAG_SEND_FUA`.
    pub const SEND_FUA: u16 = 1 << 3;
    /// `NBD_FLAG_ROTATIONAL`.
    pub const ROTATIONAL: u16 = 1 << 4;
    /// `NBD_FLAG_SEND_TRIM`.
    pub const SEND_TRIM: u16 = 1 << 5;
    /// `NBD_FLAG_SEND_WRITE_ZEROES`.
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    /// `NBD_FLAG_SEND_DF`.
    pub const SEND_DF: u16 = 1 << 7;
    /// `NBD_FLAG_CAN_MULTI_CONN`.
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
    /// `NBD_FLAG_SEND_FAST_ZERO`.
    pub const SEND_FAST_ZERO: u16 = 1 << 11;
}

/// Command flags (16 bits) of a request.
pub mod cflag {
    /// `NBD_CMD_FLAG_FUA`.
    pub const FUA: u16 = 1 << 0;
    /// `NBD_CMD_FLAG_NO_HOLE`.
    pub const NO_HOLE: u16 = 1 << 1;
    /// `NBD_CMD_FLAG_DF`.
    pub const DF: u16 = 1 << 2;
    /// `NBD_CMD_FLAG_REQ_ONE`.
    pub const REQ_ONE: u16 = 1 << 3;
    /// `NBD_CMD_FLAG_FAST_ZERO`.
    pub const FAST_ZERO: u16 = 1 << 4;
}

/// Command types.
pub mod cmd {
    /// `NBD_CMD_READ`.
    pub const READ: u16 = 0;
    /// `NBD_CMD_WRITE`.
    pub const WRITE: u16 = 1;
    /// `NBD_CMD_DISC`.
    pub const DISC: u16 = 2;
    /// `NBD_CMD_FLUSH`.
    pub const FLUSH: u16 = 3;
    /// `NBD_CMD_TRIM`.
    pub const TRIM: u16 = 4;
    /// `NBD_CMD_CACHE`.
    pub const CACHE: u16 = 5;
    /// `NBD_CMD_WRITE_ZEROES`.
    pub const WRITE_ZEROES: u16 = 6;
    /// `NBD_CMD_BLOCK_STATUS`.
    pub const BLOCK_STATUS: u16 = 7;
}

/// Structured reply chunk types and flags.
pub mod chunk {
    /// `NBD_REPLY_FLAG_DONE`.
    pub const FLAG_DONE: u16 = 1 << 0;
    /// `NBD_REPLY_TYPE_NONE`.
    pub const NONE: u16 = 0;
    /// `NBD_REPLY_TYPE_OFFSET_DATA`.
    pub const OFFSET_DATA: u16 = 1;
    /// `NBD_REPLY_TYPE_OFFSET_HOLE`.
    pub const OFFSET_HOLE: u16 = 2;
    /// `NBD_REPLY_TYPE_BLOCK_STATUS`.
    pub const BLOCK_STATUS: u16 = 5;
    /// Bit set on every error chunk type.
    pub const ERROR_BIT: u16 = 1 << 15;
    /// `NBD_REPLY_TYPE_ERROR`.
    pub const ERROR: u16 = ERROR_BIT + 1;
    /// `NBD_REPLY_TYPE_ERROR_OFFSET`.
    pub const ERROR_OFFSET: u16 = ERROR_BIT + 2;
}

/// `base:allocation` status flags.
pub mod state {
    /// `NBD_STATE_HOLE`.
    pub const HOLE: u32 = 1 << 0;
    /// `NBD_STATE_ZERO`.
    pub const ZERO: u32 = 1 << 1;
}

/// The only metadata context we implement.
pub const BASE_ALLOCATION: &str = "base:allocation";
/// The context id we hand out for `base:allocation`.
pub const BASE_ALLOCATION_ID: u32 = 1;

/// Error values allowed in replies (proto.md "Error values").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Errno {
    /// Operation not permitted (1).
    Perm,
    /// Input/output error (5).
    Io,
    /// Cannot allocate memory (12).
    NoMem,
    /// Invalid argument (22).
    Inval,
    /// No space left on device (28).
    NoSpc,
    /// Value too large (75).
    Overflow,
    /// Operation not supported (95; only for `FAST_ZERO`).
    NotSup,
    /// Server is shutting down (108).
    Shutdown,
}

impl Errno {
    /// The wire value.
    #[must_use]
    pub const fn code(self) -> u32 {
        match self {
            Self::Perm => 1,
            Self::Io => 5,
            Self::NoMem => 12,
            Self::Inval => 22,
            Self::NoSpc => 28,
            Self::Overflow => 75,
            Self::NotSup => 95,
            Self::Shutdown => 108,
        }
    }

    /// Maps a wire value back; unknown values read as `EINVAL` as the spec asks
    /// clients to treat unknown errors as generic failures.
    #[must_use]
    pub const fn from_code(code: u32) -> Self {
        match code {
            1 => Self::Perm,
            5 => Self::Io,
            12 => Self::NoMem,
            28 => Self::NoSpc,
            75 => Self::Overflow,
            95 => Self::NotSup,
            108 => Self::Shutdown,
            _ => Self::Inval,
        }
    }
}

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Self::Perm => "EPERM",
            Self::Io => "EIO",
            Self::NoMem => "ENOMEM",
            Self::Inval => "EINVAL",
            Self::NoSpc => "ENOSPC",
            Self::Overflow => "EOVERFLOW",
            Self::NotSup => "ENOTSUP",
            Self::Shutdown => "ESHUTDOWN",
        };
        f.write_str(s)
    }
}

/// A transmission-phase request header (the WRITE payload follows it on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Command flags (`cflag`).
    pub flags: u16,
    /// Command type (`cmd`).
    pub command: u16,
    /// Cookie (handle) echoed in the reply.
    pub cookie: u64,
    /// Byte offset.
    pub offset: u64,
    /// Byte length.
    pub length: u32,
}

impl Request {
    /// Bytes of payload that follow this header on the wire.
    #[must_use]
    pub const fn payload_len(&self) -> u32 {
        if self.command == cmd::WRITE {
            self.length
        } else {
            0
        }
    }
}

/// An option request: the option number and its raw payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionRequest {
    /// Option number (`opt`).
    pub option: u32,
    /// Raw payload.
    pub data: Vec<u8>,
}

/// A parsed client option.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientOption {
    /// `NBD_OPT_EXPORT_NAME`.
    ExportName(String),
    /// `NBD_OPT_ABORT`.
    Abort,
    /// `NBD_OPT_LIST`.
    List,
    /// `NBD_OPT_STARTTLS`.
    StartTls,
    /// `NBD_OPT_INFO`.
    Info(InfoRequest),
    /// `NBD_OPT_GO`.
    Go(InfoRequest),
    /// `NBD_OPT_STRUCTURED_REPLY`.
    StructuredReply,
    /// `NBD_OPT_LIST_META_CONTEXT`.
    ListMetaContext(MetaContextRequest),
    /// `NBD_OPT_SET_META_CONTEXT`.
    SetMetaContext(MetaContextRequest),
    /// Any other option, with its raw payload.
    Unknown {
        /// Option number.
        option: u32,
        /// Raw payload.
        data: Vec<u8>,
    },
}

/// Payload of `NBD_OPT_INFO` / `NBD_OPT_GO`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InfoRequest {
    /// Export name.
    pub name: String,
    /// Requested `NBD_INFO_*` items.
    pub requests: Vec<u16>,
}

/// Payload of `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetaContextRequest {
    /// Export name.
    pub name: String,
    /// Queries.
    pub queries: Vec<String>,
}

/// An option reply as framed on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionReply {
    /// The option this replies to.
    pub option: u32,
    /// Reply type (`rep`).
    pub reply_type: u32,
    /// Raw payload.
    pub data: Vec<u8>,
}

/// A parsed option reply payload.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplyPayload {
    /// `NBD_REP_ACK`.
    Ack,
    /// `NBD_REP_SERVER`: an export name (and optional description).
    Server {
        /// Export name.
        name: String,
        /// Free-form details after the name.
        details: String,
    },
    /// `NBD_REP_INFO`.
    Info(InfoItem),
    /// `NBD_REP_META_CONTEXT`.
    MetaContext {
        /// Context id.
        id: u32,
        /// Context name.
        name: String,
    },
    /// Any error reply (bit 31 set) with its message.
    Error {
        /// Reply type.
        code: u32,
        /// Human-readable message.
        message: String,
    },
    /// A non-error reply type we don't know.
    Unknown {
        /// Reply type.
        code: u32,
        /// Raw payload.
        data: Vec<u8>,
    },
}

/// One `NBD_REP_INFO` item.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InfoItem {
    /// `NBD_INFO_EXPORT`.
    Export {
        /// Export size in bytes.
        size: u64,
        /// Transmission flags.
        flags: u16,
    },
    /// `NBD_INFO_NAME`.
    Name(String),
    /// `NBD_INFO_DESCRIPTION`.
    Description(String),
    /// `NBD_INFO_BLOCK_SIZE`.
    BlockSize(BlockSizes),
    /// Another info type with raw payload.
    Unknown {
        /// Info type.
        info_type: u16,
        /// Raw payload.
        data: Vec<u8>,
    },
}

/// Block size constraints (`NBD_INFO_BLOCK_SIZE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSizes {
    /// Minimum block size.
    pub minimum: u32,
    /// Preferred block size.
    pub preferred: u32,
    /// Maximum payload size.
    pub maximum: u32,
}

/// One reply message of the transmission phase.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reply {
    /// A simple reply header (READ data, if any, follows and is not part of this value).
    Simple {
        /// Error (0 = success).
        error: u32,
        /// Cookie.
        cookie: u64,
    },
    /// A structured reply chunk.
    Chunk(ReplyChunk),
}

/// A structured reply chunk with its parsed payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyChunk {
    /// Chunk flags (`chunk::FLAG_DONE`).
    pub flags: u16,
    /// Cookie.
    pub cookie: u64,
    /// Payload.
    pub payload: ChunkPayload,
}

/// Structured reply chunk payloads.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChunkPayload {
    /// `NBD_REPLY_TYPE_NONE`.
    None,
    /// `NBD_REPLY_TYPE_OFFSET_DATA`.
    OffsetData {
        /// Offset in the export.
        offset: u64,
        /// Data.
        data: Vec<u8>,
    },
    /// `NBD_REPLY_TYPE_OFFSET_HOLE`.
    OffsetHole {
        /// Offset in the export.
        offset: u64,
        /// Hole size (nonzero).
        size: u32,
    },
    /// `NBD_REPLY_TYPE_BLOCK_STATUS`.
    BlockStatus {
        /// Metadata context id.
        context_id: u32,
        /// Descriptors (length, status flags).
        descriptors: Vec<(u32, u32)>,
    },
    /// `NBD_REPLY_TYPE_ERROR`.
    Error {
        /// Error value.
        error: u32,
        /// Message.
        message: String,
    },
    /// `NBD_REPLY_TYPE_ERROR_OFFSET`.
    ErrorOffset {
        /// Error value.
        error: u32,
        /// Message.
        message: String,
        /// Offset of the error.
        offset: u64,
    },
    /// Unknown chunk type with raw payload.
    Unknown {
        /// Chunk type.
        chunk_type: u16,
        /// Raw payload.
        data: Vec<u8>,
    },
}

impl ChunkPayload {
    /// The chunk type on the wire.
    #[must_use]
    pub const fn chunk_type(&self) -> u16 {
        match self {
            Self::None => chunk::NONE,
            Self::OffsetData { .. } => chunk::OFFSET_DATA,
            Self::OffsetHole { .. } => chunk::OFFSET_HOLE,
            Self::BlockStatus { .. } => chunk::BLOCK_STATUS,
            Self::Error { .. } => chunk::ERROR,
            Self::ErrorOffset { .. } => chunk::ERROR_OFFSET,
            Self::Unknown { chunk_type, .. } => *chunk_type,
        }
    }
}
