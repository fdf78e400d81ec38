//! The incremental frame decoder: bytes from the link in any chunking, verified frames out.
//!
//! The decoder owns framing and integrity, nothing more: it finds the magic, checks the header
//! CRC, the version and the length (against the negotiated maximum, *before* it allocates), and,
//! when the session negotiated it, the payload CRC trailer. On a bad magic or a failed CRC it
//! discards bytes up to the next magic and counts the resync; it never delivers a byte it could
//! not verify. Validating kinds, flags and payloads is the mux's job (see [`crate::wire::Header`]).
//!
//! A whole frame found inside the caller's input is parsed in place (one copy, of the payload);
//! only a frame split across inputs is gathered in an internal buffer, which never holds more
//! than one frame.

use crate::wire::{self, FrameHeader, HEADER_LEN, MAGIC, TRAILER_LEN, VERSION};
use std::fmt;

/// A frame whose header and (if present) payload trailer were verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    /// The raw kind byte (validated by the mux, so that unknown kinds can be answered).
    pub kind: u8,
    /// The raw flags.
    pub flags: u16,
    /// The stream id.
    pub stream: u32,
    /// The link sequence number (meaningful only when `RELIABLE` is in force).
    pub seq: u16,
    /// The payload, trailer removed.
    pub payload: Vec<u8>,
}

/// A fatal framing error: the peer sent an intact header that this side cannot accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The header names a protocol version this side does not speak.
    Version { peer: u8 },
    /// The payload length exceeds the negotiated maximum.
    FrameTooLarge { len: u32, max: u32 },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Version { peer } => {
                write!(
                    f,
                    "peer speaks vmux protocol version {peer}, this side speaks version {VERSION}"
                )
            }
            DecodeError::FrameTooLarge { len, max } => {
                write!(f, "peer sent a {len}-byte frame, the limit is {max}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// What the decoder has seen: integrity failures and discarded bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecoderStats {
    /// Frames delivered.
    pub frames: u64,
    /// Times the decoder lost the frame boundary and scanned for the next magic.
    pub resyncs: u64,
    /// Bytes thrown away while resynchronising.
    pub discarded_bytes: u64,
    /// Headers whose CRC did not match.
    pub header_crc_errors: u64,
    /// Payloads whose CRC trailer did not match.
    pub payload_crc_errors: u64,
}

/// The incremental decoder. Feed it with [`Decoder::decode`]; it keeps at most one partial frame.
#[derive(Debug)]
pub struct Decoder {
    /// A partial frame gathered across inputs; empty when between frames.
    partial: Vec<u8>,
    max_payload: u32,
    payload_crc: bool,
    /// Whether bytes are being skipped (so a run of garbage counts as one resync).
    in_resync: bool,
    stats: DecoderStats,
}

/// Why bytes are skipped.
#[derive(Clone, Copy)]
enum SkipReason {
    NoMagic,
    HeaderCrc,
    PayloadCrc,
}

/// The result of looking at the start of a byte slice.
enum Scan {
    /// A verified frame occupying the first `consumed` bytes.
    Frame(RawFrame, usize),
    /// The first `n` bytes cannot start a frame (bad magic or CRC): skip them.
    Skip(usize, SkipReason),
    /// The slice starts a frame but needs this many bytes in total.
    NeedMore(usize),
    /// An intact header this side cannot accept.
    Fatal(DecodeError),
}

impl Decoder {
    /// A decoder that accepts payloads up to `max_payload` bytes.
    pub fn new(max_payload: u32) -> Decoder {
        Decoder {
            partial: Vec::new(),
            max_payload,
            payload_crc: false,
            in_resync: false,
            stats: DecoderStats::default(),
        }
    }

    /// Expects (or not) a CRC32C trailer on every non-empty payload from the next frame on.
    pub fn set_payload_crc(&mut self, on: bool) {
        self.payload_crc = on;
    }

    /// Whether payload trailers are expected.
    pub fn payload_crc(&self) -> bool {
        self.payload_crc
    }

    /// The largest payload accepted.
    pub fn max_payload(&self) -> u32 {
        self.max_payload
    }

    /// Integrity counters.
    pub fn stats(&self) -> DecoderStats {
        self.stats
    }

    /// Bytes held for a partial frame.
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// Forgets any partial frame (for a link restart).
    pub fn reset(&mut self) {
        self.partial.clear();
        self.in_resync = false;
    }

    /// Decodes the next frame from `input`, advancing it past every byte used or discarded.
    /// Returns `None` when `input` is exhausted without completing a frame (the partial frame is
    /// kept for the next call). Call again until it returns `None`.
    pub fn decode(&mut self, input: &mut &[u8]) -> Option<Result<RawFrame, DecodeError>> {
        loop {
            if self.partial.is_empty() {
                if input.is_empty() {
                    return None;
                }
                match self.scan(input) {
                    Scan::Frame(frame, used) => {
                        *input = &input[used..];
                        return Some(Ok(self.delivered(frame)));
                    }
                    Scan::Skip(n, why) => {
                        self.skipped(n, why);
                        *input = &input[n..];
                    }
                    Scan::NeedMore(_) => {
                        // Bounded: a frame's total length was checked against the maximum, and
                        // a header-less start is shorter than a header.
                        self.partial.extend_from_slice(input);
                        *input = &[];
                        return None;
                    }
                    Scan::Fatal(e) => return Some(Err(e)),
                }
            } else {
                // Top up the partial frame with just the bytes it needs, then look again.
                let need = match self.scan(&self.partial) {
                    Scan::NeedMore(total) => total,
                    _ => self.partial.len(),
                };
                let take = need.saturating_sub(self.partial.len()).min(input.len());
                self.partial.extend_from_slice(&input[..take]);
                *input = &input[take..];
                let partial = std::mem::take(&mut self.partial);
                match self.scan(&partial) {
                    Scan::Frame(frame, used) => {
                        debug_assert_eq!(used, partial.len());
                        self.partial = partial;
                        self.partial.clear();
                        return Some(Ok(self.delivered(frame)));
                    }
                    Scan::Skip(n, why) => {
                        self.skipped(n, why);
                        self.partial = partial;
                        self.partial.drain(..n);
                    }
                    Scan::NeedMore(_) => {
                        self.partial = partial;
                        if input.is_empty() {
                            return None;
                        }
                    }
                    Scan::Fatal(e) => {
                        self.partial = partial;
                        self.partial.clear();
                        return Some(Err(e));
                    }
                }
            }
        }
    }

    fn delivered(&mut self, frame: RawFrame) -> RawFrame {
        self.stats.frames += 1;
        self.in_resync = false;
        frame
    }

    fn skipped(&mut self, n: usize, why: SkipReason) {
        match why {
            SkipReason::NoMagic => {}
            SkipReason::HeaderCrc => self.stats.header_crc_errors += 1,
            SkipReason::PayloadCrc => self.stats.payload_crc_errors += 1,
        }
        if !self.in_resync {
            self.in_resync = true;
            self.stats.resyncs += 1;
        }
        self.stats.discarded_bytes += n as u64;
    }

    /// Looks at the start of `bytes` (never empty).
    fn scan(&self, bytes: &[u8]) -> Scan {
        if !starts_with_magic(bytes) {
            return Scan::Skip(next_magic(bytes), SkipReason::NoMagic);
        }
        let Ok(view) = FrameHeader::new_checked(bytes) else {
            return Scan::NeedMore(HEADER_LEN);
        };
        if !header_crc_ok(&view) {
            return Scan::Skip(1, SkipReason::HeaderCrc);
        }
        if view.version() != VERSION {
            return Scan::Fatal(DecodeError::Version {
                peer: view.version(),
            });
        }
        let len = view.payload_len();
        if len > self.max_payload {
            return Scan::Fatal(DecodeError::FrameTooLarge {
                len,
                max: self.max_payload,
            });
        }
        let kind = view.kind_raw();
        let trailer = len > 0 && (kind == wire::Kind::Hello as u8 || self.payload_crc);
        let body_end = HEADER_LEN + len as usize;
        let total = body_end + if trailer { TRAILER_LEN } else { 0 };
        if bytes.len() < total {
            return Scan::NeedMore(total);
        }
        let payload = &bytes[HEADER_LEN..body_end];
        if trailer && !payload_crc_ok(payload, &bytes[body_end..total]) {
            return Scan::Skip(1, SkipReason::PayloadCrc);
        }
        let frame = RawFrame {
            kind,
            flags: view.flags_raw(),
            stream: view.stream_id(),
            seq: view.seq(),
            payload: payload.to_vec(),
        };
        Scan::Frame(frame, total)
    }
}

fn starts_with_magic(bytes: &[u8]) -> bool {
    match bytes {
        [a] => *a == MAGIC[0],
        [a, b, ..] => [*a, *b] == MAGIC,
        [] => false,
    }
}

/// The offset of the first possible frame start after offset 0 (a lone trailing first magic
/// byte counts), or the length if there is none.
fn next_magic(bytes: &[u8]) -> usize {
    (1..bytes.len())
        .find(|&i| starts_with_magic(&bytes[i..]))
        .unwrap_or(bytes.len())
}

#[cfg(not(fuzzing))]
fn header_crc_ok(view: &FrameHeader<&[u8]>) -> bool {
    view.is_intact()
}

/// Fuzz builds only: check CRCs after all. Targets that damage a link on purpose (to test
/// retransmission) set it; the others leave it off, so the fuzzer reaches the parsers behind the
/// CRCs.
#[cfg(fuzzing)]
pub static FUZZ_CHECK_CRCS: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

#[cfg(fuzzing)]
fn fuzz_checks_crcs() -> bool {
    FUZZ_CHECK_CRCS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Fuzz builds accept any header CRC (unless [`FUZZ_CHECK_CRCS`]) so that the fuzzer can reach
/// the parsers behind it.
#[cfg(fuzzing)]
fn header_crc_ok(view: &FrameHeader<&[u8]>) -> bool {
    !fuzz_checks_crcs() || view.is_intact()
}

#[cfg(not(fuzzing))]
fn payload_crc_ok(payload: &[u8], trailer: &[u8]) -> bool {
    trailer == wire::crc32c(payload).to_le_bytes()
}

#[cfg(fuzzing)]
fn payload_crc_ok(payload: &[u8], trailer: &[u8]) -> bool {
    !fuzz_checks_crcs() || trailer == wire::crc32c(payload).to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{emit_frame, Flags, Kind};

    fn frame(kind: Kind, stream: u32, payload: &[u8], trailer: bool) -> Vec<u8> {
        let mut out = Vec::new();
        emit_frame(&mut out, kind, Flags::empty(), stream, payload, trailer);
        out
    }

    fn decode_all(decoder: &mut Decoder, mut input: &[u8]) -> Vec<RawFrame> {
        let mut frames = Vec::new();
        while let Some(r) = decoder.decode(&mut input) {
            frames.push(r.expect("no fatal error"));
        }
        assert!(input.is_empty());
        frames
    }

    #[test]
    fn decodes_a_frame_in_one_piece() {
        let mut d = Decoder::new(1024);
        let frames = decode_all(&mut d, &frame(Kind::Data, 3, b"hello", false));
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].payload, b"hello");
        assert_eq!(frames[0].stream, 3);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn decodes_byte_by_byte() {
        let mut d = Decoder::new(1024);
        let mut bytes = frame(Kind::Data, 3, b"hello", false);
        bytes.extend(frame(Kind::Close, 3, b"", false));
        let mut frames = Vec::new();
        for b in &bytes {
            frames.extend(decode_all(&mut d, std::slice::from_ref(b)));
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[1].kind, Kind::Close as u8);
    }

    #[test]
    fn resyncs_after_garbage_prefix() {
        let mut d = Decoder::new(1024);
        let mut bytes = b"login: \xF7 console noise \xF7".to_vec();
        bytes.extend(frame(Kind::Data, 1, b"x", false));
        let frames = decode_all(&mut d, &bytes);
        assert_eq!(frames.len(), 1);
        assert_eq!(d.stats().resyncs, 1);
        assert_eq!(d.stats().discarded_bytes, 24);
    }

    #[test]
    fn skips_a_frame_whose_header_crc_fails() {
        let mut d = Decoder::new(1024);
        let mut bad = frame(Kind::Data, 1, b"bad", false);
        bad[9] ^= 0x40;
        let good = frame(Kind::Data, 1, b"good", false);
        let frames = decode_all(&mut d, &[bad, good].concat());
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].payload, b"good");
        assert_eq!(d.stats().header_crc_errors, 1);
    }

    #[test]
    fn payload_crc_catches_a_flipped_payload_bit() {
        let mut d = Decoder::new(1024);
        d.set_payload_crc(true);
        let mut bad = frame(Kind::Data, 1, b"payload", true);
        bad[HEADER_LEN + 2] ^= 0x01;
        let good = frame(Kind::Data, 1, b"ok", true);
        let frames = decode_all(&mut d, &[bad.clone(), good.clone()].concat());
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].payload, b"ok");
        assert_eq!(d.stats().payload_crc_errors, 1);

        // The same, delivered one byte at a time, through the partial-frame path.
        let mut d = Decoder::new(1024);
        d.set_payload_crc(true);
        let mut frames = Vec::new();
        for b in [bad, good].concat() {
            frames.extend(decode_all(&mut d, &[b]));
        }
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].payload, b"ok");
    }

    #[test]
    fn finds_a_frame_hidden_behind_a_dropped_payload_byte() {
        // A byte dropped inside a payload makes the declared length swallow the next frame's
        // start: the decoder must find that frame again.
        let mut d = Decoder::new(1024);
        d.set_payload_crc(true);
        let mut first = frame(Kind::Data, 1, b"abcdefgh", true);
        first.remove(HEADER_LEN + 3);
        let second = frame(Kind::Data, 1, b"second", true);
        let mut frames = Vec::new();
        for chunk in [first, second].concat().chunks(5) {
            frames.extend(decode_all(&mut d, chunk));
        }
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].payload, b"second");
    }

    #[test]
    fn hello_always_carries_a_trailer() {
        let mut d = Decoder::new(1024);
        assert!(!d.payload_crc());
        let hello = frame(Kind::Hello, 0, &[1u8; 40], true);
        let frames = decode_all(&mut d, &hello);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].payload.len(), 40);
    }

    #[test]
    fn oversized_length_is_fatal_before_allocation() {
        let mut d = Decoder::new(1024);
        let mut bytes = vec![0u8; HEADER_LEN];
        crate::wire::Header {
            kind: Kind::Data,
            flags: Flags::empty(),
            stream: 1,
            len: 0xFFFF_FFF0,
        }
        .emit(&mut bytes);
        let mut input = &bytes[..];
        assert_eq!(
            d.decode(&mut input),
            Some(Err(DecodeError::FrameTooLarge {
                len: 0xFFFF_FFF0,
                max: 1024
            }))
        );
        assert!(d.buffered() <= HEADER_LEN);
    }

    #[test]
    fn other_versions_are_fatal_with_a_clear_message() {
        let mut d = Decoder::new(1024);
        let mut bytes = frame(Kind::Data, 1, b"", false);
        bytes[2] = 2;
        let crc = wire::crc32c(&bytes[..16]).to_le_bytes();
        bytes[16..20].copy_from_slice(&crc);
        let mut input = &bytes[..];
        let err = d.decode(&mut input).unwrap().unwrap_err();
        assert_eq!(
            err.to_string(),
            "peer speaks vmux protocol version 2, this side speaks version 1"
        );
    }

    #[test]
    fn truncated_frame_waits_for_more_and_holds_only_it() {
        let mut d = Decoder::new(1024);
        let bytes = frame(Kind::Data, 1, &[7u8; 100], false);
        let mut input = &bytes[..60];
        assert!(d.decode(&mut input).is_none());
        assert_eq!(d.buffered(), 60);
        let frames = decode_all(&mut d, &bytes[60..]);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].payload, vec![7u8; 100]);
    }
}
