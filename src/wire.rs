//! The vmux wire format: frame headers and payloads as views over byte buffers.
//!
//! This module owns the byte layout of every frame (docs/protocol.md is the reference and
//! changes with it). [`FrameHeader`] is a zero-copy view over the fixed 20-byte header, in the
//! smoltcp style: `field` names every byte range, each accessor spells out its byte order, and
//! [`FrameHeader::new_checked`] is the one place a length is validated. The `*Repr`-style structs
//! ([`Header`], [`Hello`], [`Open`], [`OpenOk`], [`ErrorBody`], [`Credit`], [`PingBody`]) are the
//! validated, owned forms with `parse`, `emit` and `buffer_len`. Nothing here allocates except
//! when a caller asks for an owned copy, and nothing here performs I/O.

use std::fmt;

/// The two bytes every frame starts with. 0xF7 never occurs in UTF-8 text, so console noise
/// rarely imitates a frame start.
pub const MAGIC: [u8; 2] = [0xF7, 0x4D];
/// The protocol version this implementation speaks.
pub const VERSION: u8 = 1;
/// Length of the fixed frame header.
pub const HEADER_LEN: usize = 20;
/// Length of the optional CRC32C trailer that follows a payload.
pub const TRAILER_LEN: usize = 4;
/// Longest service name an OPEN may carry.
pub const MAX_SERVICE_LEN: usize = 64;
/// Longest error message an OPEN_ERR, RESET or GOAWAY may carry.
pub const MAX_MESSAGE_LEN: usize = 1024;
/// Largest payload any peer may announce as its `max_frame` (16 MiB).
pub const MAX_FRAME_LIMIT: u32 = 16 << 20;
/// Smallest `max_frame` a peer may announce: room for an OPEN with 16 KiB of arguments.
pub const MIN_FRAME_LIMIT: u32 = 16 << 10;

/// Byte ranges of the header fields (all integers little-endian).
mod field {
    use std::ops::Range;
    pub const MAGIC: Range<usize> = 0..2;
    pub const VERSION: usize = 2;
    pub const KIND: usize = 3;
    pub const FLAGS: Range<usize> = 4..6;
    pub const SEQ: Range<usize> = 6..8;
    pub const STREAM: Range<usize> = 8..12;
    pub const LENGTH: Range<usize> = 12..16;
    pub const CRC: Range<usize> = 16..20;
}

/// CRC32C (Castagnoli) of `bytes`, hardware-accelerated where the CPU has it.
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// Errors found while validating bytes from the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The buffer is shorter than the structure it should hold.
    Truncated { needed: usize, got: usize },
    /// The frame kind byte names no known kind.
    UnknownKind(u8),
    /// Flags not defined for this kind were set.
    UnknownFlags { kind: Kind, flags: u16 },
    /// A payload has the wrong size or shape for its kind.
    BadPayload { kind: Kind, reason: &'static str },
    /// A stream id is not allowed for this kind (0 for a stream frame, or non-zero for a session frame).
    BadStreamId { kind: Kind, stream: u32 },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Truncated { needed, got } => {
                write!(f, "truncated: need {needed} bytes, got {got}")
            }
            WireError::UnknownKind(k) => write!(f, "unknown frame kind 0x{k:02x}"),
            WireError::UnknownFlags { kind, flags } => {
                write!(f, "unknown flags 0x{flags:04x} on {kind}")
            }
            WireError::BadPayload { kind, reason } => write!(f, "bad {kind} payload: {reason}"),
            WireError::BadStreamId { kind, stream } => {
                write!(f, "stream id {stream} not allowed on {kind}")
            }
        }
    }
}

impl std::error::Error for WireError {}

/// Every frame kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Link start: version, limits, features, identity. Stream 0.
    Hello = 0x01,
    /// Opens a stream: initial credit, service name, arguments.
    Open = 0x02,
    /// Accepts a stream: initial credit, optional reply bytes.
    OpenOk = 0x03,
    /// Refuses a stream: error code and message.
    OpenErr = 0x04,
    /// Stream bytes, within the receiver's credit.
    Data = 0x05,
    /// Raises the sender's credit limit on a stream.
    Credit = 0x06,
    /// Half-close: the sender will send no more DATA on the stream.
    Close = 0x07,
    /// Aborts a stream in both directions with an error code.
    Reset = 0x08,
    /// Keepalive probe. Stream 0.
    Ping = 0x09,
    /// Keepalive answer, echoing the probe. Stream 0.
    Pong = 0x0A,
    /// Graceful or error shutdown of the session. Stream 0.
    GoAway = 0x0B,
    /// Link-level acknowledgement when `RELIABLE` is in force: the next sequence number
    /// expected, and with `RESEND`, a request to resend from there. Stream 0, never sequenced.
    Ack = 0x0C,
}

impl Kind {
    /// Parses the kind byte.
    pub fn from_u8(raw: u8) -> Result<Kind, WireError> {
        Ok(match raw {
            0x01 => Kind::Hello,
            0x02 => Kind::Open,
            0x03 => Kind::OpenOk,
            0x04 => Kind::OpenErr,
            0x05 => Kind::Data,
            0x06 => Kind::Credit,
            0x07 => Kind::Close,
            0x08 => Kind::Reset,
            0x09 => Kind::Ping,
            0x0A => Kind::Pong,
            0x0B => Kind::GoAway,
            0x0C => Kind::Ack,
            other => return Err(WireError::UnknownKind(other)),
        })
    }

    /// Whether frames of this kind belong to the session (stream id 0) rather than a stream.
    pub fn is_session_level(self) -> bool {
        matches!(
            self,
            Kind::Hello | Kind::Ping | Kind::Pong | Kind::GoAway | Kind::Ack
        )
    }

    /// The flags defined for this kind.
    pub fn allowed_flags(self) -> Flags {
        match self {
            Kind::Hello => Flags::REPLY,
            Kind::GoAway => Flags::DRAINED,
            Kind::Ack => Flags::RESEND,
            _ => Flags::empty(),
        }
    }

    /// The protocol name of the kind, as in docs/protocol.md.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Hello => "HELLO",
            Kind::Open => "OPEN",
            Kind::OpenOk => "OPEN_OK",
            Kind::OpenErr => "OPEN_ERR",
            Kind::Data => "DATA",
            Kind::Credit => "CREDIT",
            Kind::Close => "CLOSE",
            Kind::Reset => "RESET",
            Kind::Ping => "PING",
            Kind::Pong => "PONG",
            Kind::GoAway => "GOAWAY",
            Kind::Ack => "ACK",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

bitflags::bitflags! {
    /// Frame flags. Each is defined for one kind only; see [`Kind::allowed_flags`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Flags: u16 {
        /// HELLO: this HELLO answers the peer's; do not answer it again.
        const REPLY = 0x0001;
        /// GOAWAY: the sender has no stream left and will open none: the session may end.
        const DRAINED = 0x0001;
        /// ACK: frames from `next` on were lost; resend them.
        const RESEND = 0x0001;
    }
}

/// A read-only or writable view over the 20-byte frame header.
#[derive(Debug, Clone, Copy)]
pub struct FrameHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> FrameHeader<T> {
    /// Wraps a buffer without checking its length; accessors may panic if it is short.
    pub const fn new_unchecked(buffer: T) -> FrameHeader<T> {
        FrameHeader { buffer }
    }

    /// Wraps a buffer after checking it holds a whole header; after this no accessor panics.
    pub fn new_checked(buffer: T) -> Result<FrameHeader<T>, WireError> {
        let header = FrameHeader::new_unchecked(buffer);
        header.check_len()?;
        Ok(header)
    }

    /// Checks the buffer holds a whole header.
    pub fn check_len(&self) -> Result<(), WireError> {
        let got = self.buffer.as_ref().len();
        if got < HEADER_LEN {
            return Err(WireError::Truncated {
                needed: HEADER_LEN,
                got,
            });
        }
        Ok(())
    }

    /// The magic bytes.
    pub fn magic(&self) -> [u8; 2] {
        let b = self.buffer.as_ref();
        [b[field::MAGIC.start], b[field::MAGIC.start + 1]]
    }

    /// The version byte.
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION]
    }

    /// The raw kind byte.
    pub fn kind_raw(&self) -> u8 {
        self.buffer.as_ref()[field::KIND]
    }

    /// The raw flags, little-endian u16.
    pub fn flags_raw(&self) -> u16 {
        u16::from_le_bytes(array(&self.buffer.as_ref()[field::FLAGS]))
    }

    /// The link sequence number, little-endian u16 (0 unless `RELIABLE` is in force).
    pub fn seq(&self) -> u16 {
        u16::from_le_bytes(array(&self.buffer.as_ref()[field::SEQ]))
    }

    /// The stream id, little-endian u32.
    pub fn stream_id(&self) -> u32 {
        u32::from_le_bytes(array(&self.buffer.as_ref()[field::STREAM]))
    }

    /// The payload length (not counting the trailer), little-endian u32.
    pub fn payload_len(&self) -> u32 {
        u32::from_le_bytes(array(&self.buffer.as_ref()[field::LENGTH]))
    }

    /// The header CRC as stored, little-endian u32.
    pub fn header_crc(&self) -> u32 {
        u32::from_le_bytes(array(&self.buffer.as_ref()[field::CRC]))
    }

    /// The CRC32C of bytes 0..16, which the header CRC field must equal.
    pub fn compute_crc(&self) -> u32 {
        crc32c(&self.buffer.as_ref()[..field::CRC.start])
    }

    /// Whether the magic is right and the header CRC matches.
    pub fn is_intact(&self) -> bool {
        self.magic() == MAGIC && self.header_crc() == self.compute_crc()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> FrameHeader<T> {
    /// Writes the magic and the current version.
    pub fn set_magic_and_version(&mut self) {
        let b = self.buffer.as_mut();
        b[field::MAGIC].copy_from_slice(&MAGIC);
        b[field::VERSION] = VERSION;
        b[field::SEQ].copy_from_slice(&[0, 0]);
    }

    /// Writes the kind byte.
    pub fn set_kind(&mut self, kind: Kind) {
        self.buffer.as_mut()[field::KIND] = kind as u8;
    }

    /// Writes the flags.
    pub fn set_flags(&mut self, flags: u16) {
        self.buffer.as_mut()[field::FLAGS].copy_from_slice(&flags.to_le_bytes());
    }

    /// Writes the link sequence number (refill the CRC afterwards).
    pub fn set_seq(&mut self, seq: u16) {
        self.buffer.as_mut()[field::SEQ].copy_from_slice(&seq.to_le_bytes());
    }

    /// Writes the stream id.
    pub fn set_stream_id(&mut self, id: u32) {
        self.buffer.as_mut()[field::STREAM].copy_from_slice(&id.to_le_bytes());
    }

    /// Writes the payload length.
    pub fn set_payload_len(&mut self, len: u32) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&len.to_le_bytes());
    }

    /// Computes and writes the header CRC; call after every other field is set.
    pub fn fill_crc(&mut self) {
        let crc = self.compute_crc();
        self.buffer.as_mut()[field::CRC].copy_from_slice(&crc.to_le_bytes());
    }
}

/// A validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// What the frame is.
    pub kind: Kind,
    /// Flags defined for that kind.
    pub flags: Flags,
    /// The stream the frame belongs to; 0 for session-level frames.
    pub stream: u32,
    /// Payload length, not counting the trailer.
    pub len: u32,
}

impl Header {
    /// Validates the kind, flags and stream id of an intact header (magic, CRC and version
    /// are the codec's business and are not checked here).
    pub fn parse<T: AsRef<[u8]>>(view: &FrameHeader<T>) -> Result<Header, WireError> {
        view.check_len()?;
        Header::validate(
            view.kind_raw(),
            view.flags_raw(),
            view.stream_id(),
            view.payload_len(),
        )
    }

    /// Validates raw header fields: a known kind, only that kind's flags, and a stream id that
    /// is 0 exactly for session-level kinds.
    pub fn validate(kind: u8, flags: u16, stream: u32, len: u32) -> Result<Header, WireError> {
        let kind = Kind::from_u8(kind)?;
        let checked = Flags::from_bits(flags)
            .filter(|f| kind.allowed_flags().contains(*f))
            .ok_or(WireError::UnknownFlags { kind, flags })?;
        if kind.is_session_level() != (stream == 0) {
            return Err(WireError::BadStreamId { kind, stream });
        }
        Ok(Header {
            kind,
            flags: checked,
            stream,
            len,
        })
    }

    /// Writes the header, CRC included, into the first [`HEADER_LEN`] bytes of `buf`.
    pub fn emit(&self, buf: &mut [u8]) {
        let mut view = FrameHeader::new_unchecked(&mut buf[..HEADER_LEN]);
        view.set_magic_and_version();
        view.set_kind(self.kind);
        view.set_flags(self.flags.bits());
        view.set_stream_id(self.stream);
        view.set_payload_len(self.len);
        view.fill_crc();
    }
}

/// Appends a whole frame (header, payload, and the CRC32C trailer when `trailer` is set and the
/// payload is not empty) to `out`.
pub fn emit_frame(
    out: &mut Vec<u8>,
    kind: Kind,
    flags: Flags,
    stream: u32,
    payload: &[u8],
    trailer: bool,
) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let start = out.len();
    out.resize(start + HEADER_LEN, 0);
    Header {
        kind,
        flags,
        stream,
        len,
    }
    .emit(&mut out[start..]);
    out.extend_from_slice(payload);
    if trailer && !payload.is_empty() {
        out.extend_from_slice(&crc32c(payload).to_le_bytes());
    }
}

/// Writes `seq` into the header of the frame that starts `frame`, and refills its CRC.
pub fn stamp_seq(frame: &mut [u8], seq: u16) {
    if frame.len() < HEADER_LEN {
        return;
    }
    let mut view = FrameHeader::new_unchecked(&mut frame[..HEADER_LEN]);
    view.set_seq(seq);
    view.fill_crc();
}

/// Whether a frame of this kind is numbered and acknowledged when `RELIABLE` is in force:
/// everything but HELLO (which starts the numbering) and ACK (which carries it).
pub fn is_sequenced(kind: Kind) -> bool {
    !matches!(kind, Kind::Hello | Kind::Ack)
}

/// Whether a frame of this kind carries a payload trailer, given the session's setting.
/// HELLO always does: it is exchanged before the setting is known and must be verifiable.
pub fn has_trailer(kind: Kind, payload_len: u32, session_payload_crc: bool) -> bool {
    payload_len > 0 && (kind == Kind::Hello || session_payload_crc)
}

/// Which side of a session this is; decides stream id parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The dialling side (normally the host): opens odd stream ids.
    Client = 1,
    /// The listening side (normally the guest): opens even stream ids.
    Server = 2,
}

impl Role {
    /// Parses the HELLO role byte.
    pub fn from_u8(raw: u8) -> Option<Role> {
        match raw {
            1 => Some(Role::Client),
            2 => Some(Role::Server),
            _ => None,
        }
    }

    /// The first stream id this role allocates.
    pub fn first_stream_id(self) -> u32 {
        match self {
            Role::Client => 1,
            Role::Server => 2,
        }
    }

    /// Whether `id` belongs to the ids this role allocates.
    pub fn owns(self, id: u32) -> bool {
        id != 0 && (id % 2 == 1) == (self == Role::Client)
    }
}

bitflags::bitflags! {
    /// Features a side announces in HELLO.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Features: u32 {
        /// Every non-empty payload carries a CRC32C trailer. On if either side asks for it.
        const PAYLOAD_CRC = 0x0000_0001;
        /// Link sequence numbers, ACK and retransmission (serial links). On only if both sides
        /// ask for it; it implies `PAYLOAD_CRC`.
        const RELIABLE = 0x0000_0002;
    }
}

/// The HELLO payload: who this side is and what it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// The sender's role.
    pub role: Role,
    /// The protocol version the sender speaks.
    pub version: u16,
    /// Features the sender asks for or supports.
    pub features: Features,
    /// Largest payload the sender accepts.
    pub max_frame: u32,
    /// Most concurrent streams the sender accepts from its peer.
    pub max_streams: u32,
    /// Random per link start; a new value means the peer restarted.
    pub nonce: u64,
    /// Identifies the sender's boot or process (the guest sends its kernel boot id).
    pub boot_id: [u8; 16],
}

impl Hello {
    /// Encoded length of the payload.
    pub const LEN: usize = 40;

    /// Parses a HELLO payload. Unknown feature bits are ignored (a newer peer may know more).
    pub fn parse(p: &[u8]) -> Result<Hello, WireError> {
        const BAD: fn(&'static str) -> WireError = |reason| WireError::BadPayload {
            kind: Kind::Hello,
            reason,
        };
        if p.len() < Hello::LEN {
            return Err(WireError::Truncated {
                needed: Hello::LEN,
                got: p.len(),
            });
        }
        let role = Role::from_u8(p[0]).ok_or(BAD("unknown role"))?;
        let version = u16::from_le_bytes(array(&p[2..4]));
        let features = Features::from_bits_truncate(u32::from_le_bytes(array(&p[4..8])));
        let max_frame = u32::from_le_bytes(array(&p[8..12]));
        if !(MIN_FRAME_LIMIT..=MAX_FRAME_LIMIT).contains(&max_frame) {
            return Err(BAD("max_frame out of range"));
        }
        let max_streams = u32::from_le_bytes(array(&p[12..16]));
        let nonce = u64::from_le_bytes(array(&p[16..24]));
        let boot_id = array(&p[24..40]);
        Ok(Hello {
            role,
            version,
            features,
            max_frame,
            max_streams,
            nonce,
            boot_id,
        })
    }

    /// Writes the payload into the first [`Hello::LEN`] bytes of `buf`.
    pub fn emit(&self, buf: &mut [u8]) {
        buf[0] = self.role as u8;
        buf[1] = 0;
        buf[2..4].copy_from_slice(&self.version.to_le_bytes());
        buf[4..8].copy_from_slice(&self.features.bits().to_le_bytes());
        buf[8..12].copy_from_slice(&self.max_frame.to_le_bytes());
        buf[12..16].copy_from_slice(&self.max_streams.to_le_bytes());
        buf[16..24].copy_from_slice(&self.nonce.to_le_bytes());
        buf[24..40].copy_from_slice(&self.boot_id);
    }

    /// The payload as a byte array.
    pub fn to_bytes(&self) -> [u8; Hello::LEN] {
        let mut b = [0u8; Hello::LEN];
        self.emit(&mut b);
        b
    }
}

/// The OPEN payload: the opener's initial credit, the service name, and argument bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Open<'a> {
    /// Bytes the acceptor may send before any CREDIT.
    pub initial_credit: u32,
    /// Service name: 1 to 64 bytes of ASCII letters, digits, '.', '-', '_'.
    pub service: &'a str,
    /// Service-defined arguments.
    pub args: &'a [u8],
}

impl<'a> Open<'a> {
    /// Parses an OPEN payload.
    pub fn parse(p: &'a [u8]) -> Result<Open<'a>, WireError> {
        const BAD: fn(&'static str) -> WireError = |reason| WireError::BadPayload {
            kind: Kind::Open,
            reason,
        };
        if p.len() < 5 {
            return Err(WireError::Truncated {
                needed: 5,
                got: p.len(),
            });
        }
        let initial_credit = u32::from_le_bytes(array(&p[0..4]));
        let name_len = usize::from(p[4]);
        let name = p
            .get(5..5 + name_len)
            .ok_or(BAD("service name runs past the payload"))?;
        let service = std::str::from_utf8(name).map_err(|_| BAD("service name is not text"))?;
        if !is_valid_service_name(service) {
            return Err(BAD("service name must be 1-64 of [A-Za-z0-9._-]"));
        }
        Ok(Open {
            initial_credit,
            service,
            args: &p[5 + name_len..],
        })
    }

    /// Encoded length of the payload.
    pub fn buffer_len(&self) -> usize {
        5 + self.service.len() + self.args.len()
    }

    /// Appends the payload to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.initial_credit.to_le_bytes());
        out.push(u8::try_from(self.service.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(self.service.as_bytes());
        out.extend_from_slice(self.args);
    }
}

/// Whether `name` is a valid service name for OPEN.
pub fn is_valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SERVICE_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// The OPEN_OK payload: the acceptor's initial credit and optional reply bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenOk<'a> {
    /// Bytes the opener may send before any CREDIT.
    pub initial_credit: u32,
    /// Service-defined reply.
    pub reply: &'a [u8],
}

impl<'a> OpenOk<'a> {
    /// Parses an OPEN_OK payload.
    pub fn parse(p: &'a [u8]) -> Result<OpenOk<'a>, WireError> {
        if p.len() < 4 {
            return Err(WireError::Truncated {
                needed: 4,
                got: p.len(),
            });
        }
        Ok(OpenOk {
            initial_credit: u32::from_le_bytes(array(&p[0..4])),
            reply: &p[4..],
        })
    }

    /// Appends the payload to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.initial_credit.to_le_bytes());
        out.extend_from_slice(self.reply);
    }
}

/// The payload of OPEN_ERR, RESET and GOAWAY: an error code and a UTF-8 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorBody<'a> {
    /// Why.
    pub code: ErrorCode,
    /// Human-readable detail (at most [`MAX_MESSAGE_LEN`] bytes; longer ones are cut on emit).
    pub message: &'a str,
}

impl<'a> ErrorBody<'a> {
    /// Parses the payload of `kind`. A message that is not UTF-8 or too long is an error.
    pub fn parse(kind: Kind, p: &'a [u8]) -> Result<ErrorBody<'a>, WireError> {
        if p.len() < 4 {
            return Err(WireError::Truncated {
                needed: 4,
                got: p.len(),
            });
        }
        let code = ErrorCode(u32::from_le_bytes(array(&p[0..4])));
        let text = &p[4..];
        if text.len() > MAX_MESSAGE_LEN {
            return Err(WireError::BadPayload {
                kind,
                reason: "message longer than 1024 bytes",
            });
        }
        let message = std::str::from_utf8(text).map_err(|_| WireError::BadPayload {
            kind,
            reason: "message is not UTF-8",
        })?;
        Ok(ErrorBody { code, message })
    }

    /// Appends the payload to `out`, cutting the message at a character boundary if too long.
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.code.0.to_le_bytes());
        out.extend_from_slice(truncate_utf8(self.message, MAX_MESSAGE_LEN).as_bytes());
    }
}

/// The CREDIT payload: the new absolute limit (wrapping byte offset) the peer may send up to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credit {
    /// Total stream bytes (mod 2^32) the receiver allows the sender to have sent.
    pub limit: u32,
}

impl Credit {
    /// Encoded length of the payload.
    pub const LEN: usize = 4;

    /// Parses a CREDIT payload.
    pub fn parse(p: &[u8]) -> Result<Credit, WireError> {
        if p.len() != Credit::LEN {
            return Err(WireError::BadPayload {
                kind: Kind::Credit,
                reason: "must be 4 bytes",
            });
        }
        Ok(Credit {
            limit: u32::from_le_bytes(array(p)),
        })
    }

    /// The payload bytes.
    pub fn to_bytes(self) -> [u8; 4] {
        self.limit.to_le_bytes()
    }
}

/// The ACK payload: the next link sequence number the sender expects (every frame before it
/// arrived intact and in order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// The next sequence number expected.
    pub next: u16,
}

impl Ack {
    /// Encoded length of the payload.
    pub const LEN: usize = 2;

    /// Parses an ACK payload.
    pub fn parse(p: &[u8]) -> Result<Ack, WireError> {
        if p.len() != Ack::LEN {
            return Err(WireError::BadPayload {
                kind: Kind::Ack,
                reason: "must be 2 bytes",
            });
        }
        Ok(Ack {
            next: u16::from_le_bytes(array(p)),
        })
    }

    /// The payload bytes.
    pub fn to_bytes(self) -> [u8; 2] {
        self.next.to_le_bytes()
    }
}

/// The PING and PONG payload: an opaque value the PONG echoes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PingBody {
    /// Opaque to the receiver.
    pub opaque: u64,
}

impl PingBody {
    /// Encoded length of the payload.
    pub const LEN: usize = 8;

    /// Parses a PING or PONG payload.
    pub fn parse(kind: Kind, p: &[u8]) -> Result<PingBody, WireError> {
        if p.len() != PingBody::LEN {
            return Err(WireError::BadPayload {
                kind,
                reason: "must be 8 bytes",
            });
        }
        Ok(PingBody {
            opaque: u64::from_le_bytes(array(p)),
        })
    }

    /// The payload bytes.
    pub fn to_bytes(self) -> [u8; 8] {
        self.opaque.to_le_bytes()
    }
}

/// An error code carried by OPEN_ERR, RESET and GOAWAY. Codes are open-ended: unknown values
/// from a peer are kept and shown as numbers.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    /// No error: a graceful GOAWAY.
    pub const NORMAL: ErrorCode = ErrorCode(0);
    /// The peer broke the protocol (bad frame, unknown kind or flag, wrong stream id, bad payload).
    pub const PROTOCOL: ErrorCode = ErrorCode(1);
    /// Versions differ.
    pub const VERSION: ErrorCode = ErrorCode(2);
    /// A frame was longer than the receiver's `max_frame`.
    pub const FRAME_TOO_LARGE: ErrorCode = ErrorCode(3);
    /// DATA past the granted credit.
    pub const FLOW_CONTROL: ErrorCode = ErrorCode(4);
    /// An OPEN beyond the receiver's `max_streams`.
    pub const STREAM_LIMIT: ErrorCode = ErrorCode(5);
    /// No service by that name.
    pub const UNKNOWN_SERVICE: ErrorCode = ErrorCode(6);
    /// The service refused the request (bad arguments, missing file, ...).
    pub const REFUSED: ErrorCode = ErrorCode(7);
    /// The session is shutting down and opens no stream.
    pub const GOING_AWAY: ErrorCode = ErrorCode(8);
    /// The application aborted the stream.
    pub const CANCEL: ErrorCode = ErrorCode(9);
    /// The link dropped or the peer restarted; the stream cannot continue.
    pub const LINK_LOST: ErrorCode = ErrorCode(10);
    /// No sign of life from the peer within the keepalive timeout.
    pub const TIMEOUT: ErrorCode = ErrorCode(11);
    /// The peer stopped reading and its backlog hit the limit.
    pub const OVERLOAD: ErrorCode = ErrorCode(12);
    /// Both sides claimed the same role.
    pub const ROLE_CONFLICT: ErrorCode = ErrorCode(13);
    /// An internal failure of the sender.
    pub const INTERNAL: ErrorCode = ErrorCode(14);

    /// The protocol name of a known code.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            ErrorCode::NORMAL => "NORMAL",
            ErrorCode::PROTOCOL => "PROTOCOL",
            ErrorCode::VERSION => "VERSION",
            ErrorCode::FRAME_TOO_LARGE => "FRAME_TOO_LARGE",
            ErrorCode::FLOW_CONTROL => "FLOW_CONTROL",
            ErrorCode::STREAM_LIMIT => "STREAM_LIMIT",
            ErrorCode::UNKNOWN_SERVICE => "UNKNOWN_SERVICE",
            ErrorCode::REFUSED => "REFUSED",
            ErrorCode::GOING_AWAY => "GOING_AWAY",
            ErrorCode::CANCEL => "CANCEL",
            ErrorCode::LINK_LOST => "LINK_LOST",
            ErrorCode::TIMEOUT => "TIMEOUT",
            ErrorCode::OVERLOAD => "OVERLOAD",
            ErrorCode::ROLE_CONFLICT => "ROLE_CONFLICT",
            ErrorCode::INTERNAL => "INTERNAL",
            _ => return None,
        })
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "code {}", self.0),
        }
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ErrorCode({self})")
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Copies a slice whose length the caller has already checked into an array.
fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[..N]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DATA frame on stream 3 carrying "hi", byte by byte.
    const DATA_FRAME: [u8; 22] = [
        0xF7, 0x4D, // magic
        0x01, // version
        0x05, // kind DATA
        0x00, 0x00, // flags
        0x00, 0x00, // reserved
        0x03, 0x00, 0x00, 0x00, // stream 3
        0x02, 0x00, 0x00, 0x00, // length 2
        0x00, 0x00, 0x00, 0x00, // header crc, filled in by the test from the spec's rule
        b'h', b'i',
    ];

    fn data_frame_bytes() -> Vec<u8> {
        let mut bytes = DATA_FRAME.to_vec();
        let crc = crc32c(&bytes[..16]).to_le_bytes();
        bytes[16..20].copy_from_slice(&crc);
        bytes
    }

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // The CRC-32C check value from RFC 3720 / the Castagnoli catalogue.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn parses_literal_data_frame() {
        let bytes = data_frame_bytes();
        let view = FrameHeader::new_checked(&bytes[..]).unwrap();
        assert!(view.is_intact());
        assert_eq!(view.version(), 1);
        let header = Header::parse(&view).unwrap();
        assert_eq!(
            header,
            Header {
                kind: Kind::Data,
                flags: Flags::empty(),
                stream: 3,
                len: 2
            }
        );
    }

    #[test]
    fn emits_literal_data_frame() {
        let mut out = Vec::new();
        emit_frame(&mut out, Kind::Data, Flags::empty(), 3, b"hi", false);
        assert_eq!(out, data_frame_bytes());
    }

    #[test]
    fn emit_adds_payload_trailer_when_asked() {
        let mut out = Vec::new();
        emit_frame(&mut out, Kind::Data, Flags::empty(), 3, b"hi", true);
        assert_eq!(out.len(), HEADER_LEN + 2 + TRAILER_LEN);
        assert_eq!(&out[22..26], &crc32c(b"hi").to_le_bytes());
        // An empty payload never has a trailer.
        let mut empty = Vec::new();
        emit_frame(&mut empty, Kind::Close, Flags::empty(), 3, b"", true);
        assert_eq!(empty.len(), HEADER_LEN);
    }

    #[test]
    fn header_crc_detects_a_flipped_bit() {
        let mut bytes = data_frame_bytes();
        bytes[13] ^= 0x01;
        assert!(!FrameHeader::new_checked(&bytes[..]).unwrap().is_intact());
    }

    #[test]
    fn short_buffer_is_rejected_before_any_access() {
        assert_eq!(
            FrameHeader::new_checked(&[0xF7u8, 0x4D][..]).unwrap_err(),
            WireError::Truncated { needed: 20, got: 2 }
        );
    }

    #[test]
    fn rejects_unknown_kind_and_flags_and_bad_stream_ids() {
        let mut buf = [0u8; HEADER_LEN];
        Header {
            kind: Kind::Data,
            flags: Flags::empty(),
            stream: 1,
            len: 0,
        }
        .emit(&mut buf);
        buf[3] = 0x7F;
        assert_eq!(
            Header::parse(&FrameHeader::new_unchecked(&buf[..])),
            Err(WireError::UnknownKind(0x7F))
        );

        Header {
            kind: Kind::Data,
            flags: Flags::empty(),
            stream: 1,
            len: 0,
        }
        .emit(&mut buf);
        buf[4] = 0x01;
        assert_eq!(
            Header::parse(&FrameHeader::new_unchecked(&buf[..])),
            Err(WireError::UnknownFlags {
                kind: Kind::Data,
                flags: 1
            })
        );

        Header {
            kind: Kind::Data,
            flags: Flags::empty(),
            stream: 0,
            len: 0,
        }
        .emit(&mut buf);
        assert_eq!(
            Header::parse(&FrameHeader::new_unchecked(&buf[..])),
            Err(WireError::BadStreamId {
                kind: Kind::Data,
                stream: 0
            })
        );
        Header {
            kind: Kind::Ping,
            flags: Flags::empty(),
            stream: 5,
            len: 0,
        }
        .emit(&mut buf);
        assert_eq!(
            Header::parse(&FrameHeader::new_unchecked(&buf[..])),
            Err(WireError::BadStreamId {
                kind: Kind::Ping,
                stream: 5
            })
        );
    }

    #[test]
    fn hello_round_trips_through_literal_bytes() {
        let hello = Hello {
            role: Role::Server,
            version: 1,
            features: Features::PAYLOAD_CRC,
            max_frame: 0x1_0000,
            max_streams: 1024,
            nonce: 0x0102_0304_0506_0708,
            boot_id: [0xAB; 16],
        };
        let bytes = hello.to_bytes();
        assert_eq!(
            &bytes[..16],
            &[2, 0, 1, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 4, 0, 0]
        );
        assert_eq!(&bytes[16..24], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(Hello::parse(&bytes).unwrap(), hello);
    }

    #[test]
    fn hello_rejects_bad_role_and_limits() {
        let mut bytes = Hello {
            role: Role::Client,
            version: 1,
            features: Features::empty(),
            max_frame: 16384,
            max_streams: 1,
            nonce: 1,
            boot_id: [0; 16],
        }
        .to_bytes();
        assert!(Hello::parse(&bytes[..39]).is_err());
        bytes[0] = 9;
        assert!(Hello::parse(&bytes).is_err());
        bytes[0] = 1;
        bytes[8..12].copy_from_slice(&16u32.to_le_bytes());
        assert!(Hello::parse(&bytes).is_err());
    }

    #[test]
    fn open_round_trips_and_validates_the_service_name() {
        let open = Open {
            initial_credit: 65536,
            service: "exec",
            args: b"\x01\x02",
        };
        let mut out = Vec::new();
        open.emit(&mut out);
        assert_eq!(out, [0, 0, 1, 0, 4, b'e', b'x', b'e', b'c', 1, 2]);
        assert_eq!(out.len(), open.buffer_len());
        assert_eq!(Open::parse(&out).unwrap(), open);

        assert!(
            Open::parse(&[0, 0, 0, 0, 9, b'a']).is_err(),
            "name runs past the end"
        );
        assert!(Open::parse(&[0, 0, 0, 0, 0]).is_err(), "empty name");
        assert!(
            Open::parse(&[0, 0, 0, 0, 2, b'a', b'/']).is_err(),
            "bad character"
        );
    }

    #[test]
    fn error_body_round_trips_and_cuts_long_messages() {
        let mut out = Vec::new();
        ErrorBody {
            code: ErrorCode::REFUSED,
            message: "nope",
        }
        .emit(&mut out);
        assert_eq!(out, [7, 0, 0, 0, b'n', b'o', b'p', b'e']);
        let parsed = ErrorBody::parse(Kind::OpenErr, &out).unwrap();
        assert_eq!(parsed.code, ErrorCode::REFUSED);
        assert_eq!(parsed.message, "nope");

        let long = "é".repeat(600); // 1200 bytes
        let mut out = Vec::new();
        ErrorBody {
            code: ErrorCode::CANCEL,
            message: &long,
        }
        .emit(&mut out);
        assert_eq!(out.len(), 4 + 1024);
        assert!(ErrorBody::parse(Kind::Reset, &out).is_ok());
        assert!(
            ErrorBody::parse(Kind::Reset, &[1, 0, 0, 0, 0xFF]).is_err(),
            "not UTF-8"
        );
    }

    #[test]
    fn error_codes_display_by_name_or_number() {
        assert_eq!(ErrorCode::FLOW_CONTROL.to_string(), "FLOW_CONTROL");
        assert_eq!(ErrorCode(4242).to_string(), "code 4242");
    }

    #[test]
    fn role_parity() {
        assert!(Role::Client.owns(1) && Role::Client.owns(7) && !Role::Client.owns(2));
        assert!(Role::Server.owns(2) && !Role::Server.owns(3) && !Role::Server.owns(0));
    }

    #[test]
    fn wire_error_messages() {
        assert_eq!(
            WireError::UnknownKind(0x42).to_string(),
            "unknown frame kind 0x42"
        );
        assert_eq!(
            WireError::BadPayload {
                kind: Kind::Credit,
                reason: "must be 4 bytes"
            }
            .to_string(),
            "bad CREDIT payload: must be 4 bytes"
        );
    }
}
