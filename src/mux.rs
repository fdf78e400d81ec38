//! The session state machine: streams, credit, keepalive and shutdown over one byte pipe, sans-I/O.
//!
//! # Protocol primer
//!
//! (docs/protocol.md is the full reference.) A *session* is one byte pipe between two peers, a
//! `Client` (normally the host, odd stream ids) and a `Server` (normally the guest, even ids).
//!
//! - **Start.** Each side sends HELLO as soon as the link is up (version, role, limits, features,
//!   a per-link nonce). A HELLO without the REPLY flag is always answered with HELLO|REPLY, so a
//!   HELLO lost on a serial line before the peer was listening costs one retry, not the session.
//!   Until a HELLO arrives, every other frame is stale (an earlier link's bytes) and is dropped.
//!   A HELLO with a new nonce later means the peer restarted: every stream fails with LINK_LOST.
//! - **Streams.** OPEN(id, initial credit, service, args) is answered by OPEN_OK(initial credit,
//!   reply) or OPEN_ERR(code, message). Each side then sends DATA within its credit, and CLOSE
//!   when it has no more to send (a half-close). A stream ends when both CLOSEs crossed and the
//!   application took every byte; RESET(code) ends it at once in both directions.
//! - **Credit.** Per stream and direction, the receiver grants an absolute limit: the sender may
//!   have sent at most `limit` bytes (mod 2^32) in total. `available = limit - sent`. The
//!   receiver raises the limit with CREDIT as the application consumes, never lowers it. Every
//!   stream may always have `min_window` granted and unconsumed (so idle streams cannot starve
//!   the others); what a stream holds above that comes from a shared `max_buffered` budget.
//!   Receive memory is therefore bounded by `max_streams * min_window + max_buffered` whatever
//!   the peer does. DATA beyond the limit gets RESET(FLOW_CONTROL).
//! - **Keepalive.** After `keepalive_interval` without any frame from the peer, send PING; if
//!   nothing arrives within `keepalive_timeout` after it, the peer is reported silent and probed
//!   again (or, with `end_on_silence`, the session ends with TIMEOUT). A timer call that comes
//!   more than half a timeout after its deadline means this process was frozen (VM paused, host
//!   suspended): it re-arms the probe instead of counting the peer silent.
//! - **Retransmission** (serial links, `RELIABLE`): frames carry sequence numbers and are resent
//!   until acknowledged; see [`crate::arq`].
//! - **Shutdown.** GOAWAY(NORMAL) stops new streams; existing ones finish. A side with no stream
//!   left sends GOAWAY|DRAINED; the session ends once DRAINED went both ways, which proves each
//!   side received everything the other sent (an EOF alone proves nothing). GOAWAY with any
//!   other code ends the session at once.
//!
//! # Use
//!
//! Feed received bytes to [`Mux::handle_input`], write what [`Mux::poll_transmit`] returns and
//! report it with [`Mux::advance_output`], call [`Mux::handle_timeout`] at [`Mux::poll_at`], and
//! drain [`Mux::poll_event`]. Stream operations ([`Mux::open`], [`Mux::send`], [`Mux::recv`],
//! [`Mux::release`], [`Mux::close`], [`Mux::reset`]) only record work; frames are built when the
//! caller asks for output, data streams taking turns in chunks of at most `chunk` bytes.

use crate::arq::{Arq, ArqConfig, Arrival};
use crate::codec::{DecodeError, Decoder, RawFrame};
use crate::time::Instant;
use crate::wire::{
    self, Ack, Credit, ErrorBody, ErrorCode, Features, Flags, Hello, Kind, Open, OpenOk, PingBody,
    Role, MAX_FRAME_LIMIT, MIN_FRAME_LIMIT,
};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::num::Wrapping;
use std::time::Duration;

/// Most framed send buffers kept for reuse.
const MAX_SPENT: usize = 8;
/// Larger send buffers are freed rather than kept.
const SPENT_MAX_CAP: usize = 256 << 10;

/// A stream id (odd: opened by the client; even: opened by the server).
pub type StreamId = u32;

/// Session settings. Limits are what *this* side accepts; the peer's come in its HELLO.
#[derive(Debug, Clone)]
pub struct Config {
    /// Which ids this side opens.
    pub role: Role,
    /// Largest payload this side accepts (announced in HELLO).
    pub max_frame: u32,
    /// Most concurrent streams this side accepts from the peer.
    pub max_streams: u32,
    /// Receive window per stream: credit is raised to `consumed + stream_window`.
    pub stream_window: u32,
    /// Credit every stream may always have outstanding (and starts with), outside the budget.
    pub min_window: u32,
    /// Credit outstanding above `min_window`, summed over all streams: the shared budget.
    pub max_buffered: usize,
    /// Largest DATA payload per scheduling turn, so one stream cannot starve the others.
    pub chunk: usize,
    /// Ask for CRC32C trailers on every payload (serial links).
    pub payload_crc: bool,
    /// Ask for link sequence numbers, ACKs and retransmission (serial links; see [`crate::arq`]).
    /// In force only when both sides ask; it implies payload CRCs.
    pub reliable: bool,
    /// Most bytes of unacknowledged frames kept for retransmission.
    pub retransmit_limit: usize,
    /// Shortest retransmission timeout (the timeout follows the measured round trip above it).
    pub min_rto: Duration,
    /// Silence before a keepalive PING; `None` disables keepalive.
    pub keepalive_interval: Option<Duration>,
    /// Silence after a PING before the peer counts as silent (see `end_on_silence`).
    pub keepalive_timeout: Duration,
    /// Whether a silent peer ends the session (TIMEOUT). Off by default: a paused VM cannot be
    /// told from a hung one, and every link vmux runs on reports a dead peer by itself (EOF or
    /// reset on sockets, a closed chardev, a new HELLO nonce on a serial line), so silence is
    /// reported ([`Event::PeerSilent`]) and probed, not punished.
    pub end_on_silence: bool,
    /// How often HELLO is resent while the peer has not answered (only when nothing is queued).
    pub hello_retry: Duration,
    /// Most control frames queued while the peer does not read, before OVERLOAD ends the session.
    pub max_pending_control: usize,
    /// Stop building frames when this many output bytes are waiting.
    pub output_high_water: usize,
    /// Random per link start; the caller supplies it (the core has no randomness).
    pub nonce: u64,
    /// Identifies this boot or process in HELLO.
    pub boot_id: [u8; 16],
}

impl Config {
    /// Defaults for a reliable socket link (unix, vsock, hybrid vsock).
    pub fn new(role: Role, nonce: u64) -> Config {
        Config {
            role,
            max_frame: 64 << 10,
            max_streams: 1024,
            stream_window: 512 << 10,
            min_window: 64 << 10,
            max_buffered: 1 << 20,
            chunk: 64 << 10,
            payload_crc: false,
            reliable: false,
            retransmit_limit: 256 << 10,
            min_rto: Duration::from_millis(20),
            keepalive_interval: Some(Duration::from_secs(15)),
            keepalive_timeout: Duration::from_secs(30),
            end_on_silence: false,
            hello_retry: Duration::from_secs(1),
            max_pending_control: 4096,
            output_high_water: 256 << 10,
            nonce,
            boot_id: [0; 16],
        }
    }

    /// Defaults for a UART or pty: [`Config::serial`] with small receive windows. A UART has no
    /// flow control of its own and the kernel's tty buffers hold about 64 KiB; what this side
    /// grants in total (`max_buffered + streams * min_window`) must fit, or bytes overflow and
    /// frames are lost.
    pub fn uart(role: Role, nonce: u64) -> Config {
        Config {
            stream_window: 16 << 10,
            min_window: 4 << 10,
            max_buffered: 32 << 10,
            retransmit_limit: 32 << 10,
            ..Config::serial(role, nonce)
        }
    }

    /// Defaults for a virtio-serial port: a virtqueue is lossless and ordered like a socket, so
    /// the socket defaults (no payload CRC, 64 KiB chunks), with retransmission *offered*: it is in
    /// force only when the host asks for it too (`vmux-shim --serial`). What a host reconnect
    /// leaves on the port is an earlier session's bytes, which header CRCs, resync and the
    /// pre-HELLO rule already drop. (Payload CRCs cost the agent about 5 s of emulated CPU per
    /// GiB under TCG, whose default CPU model has no SSE4.2.)
    pub fn virtio_serial(role: Role, nonce: u64) -> Config {
        Config {
            reliable: true,
            ..Config::new(role, nonce)
        }
    }

    /// Defaults for a serial line (UART, pty, or any link the host marks `--serial`): payload
    /// CRCs, retransmission of lost frames, and small chunks so streams interleave finely on
    /// slow lines.
    pub fn serial(role: Role, nonce: u64) -> Config {
        Config {
            payload_crc: true,
            reliable: true,
            chunk: 4 << 10,
            stream_window: 256 << 10,
            min_window: 16 << 10,
            output_high_water: 32 << 10,
            ..Config::new(role, nonce)
        }
    }
}

/// Errors from misusing the API (the peer's misbehaviour is reported as events instead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MuxError {
    /// The session is shutting down: no new stream.
    GoingAway,
    /// The session has ended.
    Terminated,
    /// The peer accepts no more concurrent streams.
    StreamLimit { max: u32 },
    /// No such stream (never opened, or already ended).
    UnknownStream(StreamId),
    /// The service name is not 1-64 of `[A-Za-z0-9._-]`.
    BadServiceName(String),
    /// The OPEN or OPEN_OK would not fit in one frame.
    TooLarge { len: usize, max: usize },
    /// The stream's write side was closed.
    WriteClosed(StreamId),
    /// The stream is not waiting for this operation (e.g. accept on an accepted stream).
    WrongState(StreamId),
}

impl fmt::Display for MuxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MuxError::GoingAway => f.write_str("session is shutting down"),
            MuxError::Terminated => f.write_str("session has ended"),
            MuxError::StreamLimit { max } => {
                write!(f, "peer accepts at most {max} concurrent streams")
            }
            MuxError::UnknownStream(id) => write!(f, "no stream {id}"),
            MuxError::BadServiceName(name) => {
                write!(f, "bad service name {name:?}: use 1-64 of [A-Za-z0-9._-]")
            }
            MuxError::TooLarge { len, max } => {
                write!(f, "{len} bytes do not fit in one frame (max {max})")
            }
            MuxError::WriteClosed(id) => write!(f, "stream {id} is closed for writing"),
            MuxError::WrongState(id) => write!(f, "stream {id} is not in a state for that"),
        }
    }
}

impl std::error::Error for MuxError {}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Termination {
    /// NORMAL for a graceful end; otherwise the error.
    pub code: ErrorCode,
    /// Detail for people.
    pub message: String,
    /// Whether the peer ended it (its GOAWAY) rather than this side.
    pub by_peer: bool,
}

impl Termination {
    /// Whether the session ended gracefully.
    pub fn is_graceful(&self) -> bool {
        self.code == ErrorCode::NORMAL
    }
}

impl fmt::Display for Termination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let who = if self.by_peer { "peer" } else { "this side" };
        if self.is_graceful() {
            write!(f, "session closed by {who}")
        } else if self.message.is_empty() {
            write!(f, "session ended by {who}: {}", self.code)
        } else {
            write!(f, "session ended by {who}: {}: {}", self.code, self.message)
        }
    }
}

/// What the peer announced in its HELLO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's HELLO.
    pub hello: Hello,
    /// Whether payload trailers are on for this session.
    pub payload_crc: bool,
    /// Whether sequence numbers and retransmission are on for this session.
    pub reliable: bool,
}

/// Something the caller must know or act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// HELLO exchanged; `restarted` when it replaced an earlier peer (whose streams were reset).
    Established { peer: PeerInfo, restarted: bool },
    /// The peer opened a stream: accept or reject it.
    Incoming {
        id: StreamId,
        service: String,
        args: Vec<u8>,
    },
    /// The peer accepted a stream this side opened.
    Accepted { id: StreamId, reply: Vec<u8> },
    /// The peer refused a stream this side opened (the stream is gone).
    Refused {
        id: StreamId,
        code: ErrorCode,
        message: String,
    },
    /// Received data is waiting in [`Mux::recv`].
    Readable { id: StreamId },
    /// The peer raised the stream's credit: [`Mux::send_capacity`] grew.
    Writable { id: StreamId },
    /// The peer half-closed: after the data already received, nothing more will come.
    PeerClosed { id: StreamId },
    /// The stream ended abnormally (peer RESET, a violation, or the session ending).
    Reset {
        id: StreamId,
        code: ErrorCode,
        message: String,
        by_peer: bool,
    },
    /// The stream ended normally: both sides closed and every byte was taken.
    Closed { id: StreamId },
    /// The peer asked for a graceful shutdown: no new stream.
    GoAway { code: ErrorCode, message: String },
    /// An answer to [`Mux::ping`].
    Pong { rtt: Duration },
    /// Nothing arrived for `keepalive_timeout` after a PING (and `end_on_silence` is off): the
    /// peer is paused, hung, or cut off. Probing goes on; streams stay.
    PeerSilent { silent_for: Duration },
    /// A frame arrived from a peer that had been reported silent.
    PeerBack { silent_for: Duration },
    /// The session is over; flush [`Mux::poll_transmit`] and close the link.
    Terminated(Termination),
}

/// Counters, for logs, `info` and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Verified frames received.
    pub frames_in: u64,
    /// Frames built.
    pub frames_out: u64,
    /// Link bytes received.
    pub bytes_in: u64,
    /// Link bytes handed to the caller to write.
    pub bytes_out: u64,
    /// Stream payload bytes received.
    pub data_in: u64,
    /// Stream payload bytes sent.
    pub data_out: u64,
    /// Times the decoder lost and re-found the frame boundary.
    pub resyncs: u64,
    /// Bytes dropped while resynchronising.
    pub discarded_bytes: u64,
    /// Headers that failed their CRC.
    pub header_crc_errors: u64,
    /// Payloads that failed their CRC.
    pub payload_crc_errors: u64,
    /// Frames ignored: before HELLO, or for a stream that already ended.
    pub stale_frames: u64,
    /// RESET frames sent.
    pub resets_sent: u64,
    /// RESET frames received.
    pub resets_received: u64,
    /// Streams opened by either side.
    pub streams_opened: u64,
    /// Incoming OPENs refused (limit, shutdown, bad request, or by the application).
    pub opens_refused: u64,
    /// PINGs sent (keepalive and on request).
    pub pings_sent: u64,
    /// Times a long gap between calls was taken for a pause rather than a dead peer.
    pub pauses: u64,
    /// Times the peer restarted (a HELLO with a new nonce).
    pub peer_restarts: u64,
    /// Times the peer went silent past the keepalive timeout without ending the session.
    pub silences: u64,
    /// Frames sent again because the peer asked or the retransmission timer fired.
    pub retransmitted_frames: u64,
    /// Retransmission timer expiries.
    pub retransmit_timeouts: u64,
    /// Resend requests (ACK|RESEND) received.
    pub resend_requests: u64,
    /// Resend requests sent.
    pub resends_asked: u64,
    /// Sequenced frames dropped because one before them was lost.
    pub out_of_order: u64,
    /// Sequenced frames dropped because they had been delivered already.
    pub duplicates: u64,
    /// ACK frames sent.
    pub acks_sent: u64,
}

/// Bytes held in memory right now, for bounds checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Buffered {
    /// Received stream bytes waiting in [`Mux::recv`].
    pub rx: usize,
    /// Stream bytes accepted by [`Mux::send`] and not yet framed.
    pub tx: usize,
    /// Framed bytes waiting to be written.
    pub output: usize,
    /// Partial frame held by the decoder.
    pub decoder: usize,
    /// Credit granted to the peer and not yet consumed by the application (the receive bound).
    pub granted: usize,
    /// The part of `granted` above each stream's `min_window`, which `max_buffered` bounds.
    pub budget: usize,
    /// Sent frames kept until the peer acknowledges them, which `retransmit_limit` bounds.
    pub retransmit: usize,
}

/// The session's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the peer's HELLO.
    AwaitingHello,
    /// Streams may be opened.
    Established,
    /// GOAWAY sent or received: existing streams finish, no new ones.
    Draining,
    /// Over.
    Terminated,
}

/// Where a stream is in its opening handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opening {
    /// This side sent OPEN and waits for OPEN_OK / OPEN_ERR.
    Sent,
    /// The peer sent OPEN and the application has not decided.
    Received,
    /// Accepted: data may flow.
    Done,
}

/// This side's sending half.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteHalf {
    Open,
    /// CLOSE is owed once the queued data is framed.
    Closing,
    /// CLOSE was framed.
    Closed,
}

/// The peer's sending half, as seen here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadHalf {
    Open,
    /// The peer's CLOSE arrived.
    Closed,
}

#[derive(Debug)]
struct Stream {
    opening: Opening,
    write: WriteHalf,
    read: ReadHalf,
    /// Queued outgoing bytes: chunks, the first one partly sent from `tx_head`.
    tx: VecDeque<Vec<u8>>,
    tx_head: usize,
    tx_len: usize,
    /// Bytes framed so far, and the peer's limit.
    tx_sent: Wrapping<u32>,
    tx_limit: Wrapping<u32>,
    /// Received bytes not yet taken by the application.
    rx: VecDeque<Vec<u8>>,
    rx_len: usize,
    rx_received: Wrapping<u32>,
    rx_consumed: Wrapping<u32>,
    rx_limit: Wrapping<u32>,
    /// A CREDIT for this stream is queued.
    credit_queued: bool,
    /// The stream is in the data round-robin ring.
    in_ring: bool,
    /// A Readable event is outstanding (cleared when `recv` finds the queue empty).
    readable_signalled: bool,
}

impl Stream {
    fn new(opening: Opening) -> Stream {
        Stream {
            opening,
            write: WriteHalf::Open,
            read: ReadHalf::Open,
            tx: VecDeque::new(),
            tx_head: 0,
            tx_len: 0,
            tx_sent: Wrapping(0),
            tx_limit: Wrapping(0),
            rx: VecDeque::new(),
            rx_len: 0,
            rx_received: Wrapping(0),
            rx_consumed: Wrapping(0),
            rx_limit: Wrapping(0),
            credit_queued: false,
            in_ring: false,
            readable_signalled: false,
        }
    }

    /// Credit the peer granted that is not used yet.
    fn peer_avail_credit(&self) -> usize {
        (self.tx_limit - self.tx_sent).0 as usize
    }

    /// Bytes `send` may still queue: the peer's credit minus what is already queued.
    fn send_capacity(&self) -> usize {
        self.peer_avail_credit().saturating_sub(self.tx_len)
    }

    /// Credit granted to the peer and not yet consumed here.
    fn granted_unconsumed(&self) -> usize {
        (self.rx_limit - self.rx_consumed).0 as usize
    }

    /// Bytes the peer may still send before it exceeds its credit.
    fn rx_room(&self) -> usize {
        (self.rx_limit - self.rx_received).0 as usize
    }

    /// Whether the scheduler has something to frame for this stream.
    fn wants_turn(&self) -> bool {
        self.opening == Opening::Done
            && ((self.tx_len > 0 && self.peer_avail_credit() > 0)
                || (self.write == WriteHalf::Closing && self.tx_len == 0))
    }

    fn is_finished(&self) -> bool {
        self.opening == Opening::Done
            && self.write == WriteHalf::Closed
            && self.read == ReadHalf::Closed
            && self.rx_len == 0
    }
}

/// Control frames waiting to be built, in order.
#[derive(Debug)]
enum Control {
    Hello {
        reply: bool,
    },
    Open {
        id: StreamId,
        service: String,
        args: Vec<u8>,
    },
    OpenOk {
        id: StreamId,
        reply: Vec<u8>,
    },
    OpenErr {
        id: StreamId,
        code: ErrorCode,
        message: String,
    },
    Credit {
        id: StreamId,
    },
    Reset {
        id: StreamId,
        code: ErrorCode,
        message: String,
    },
    Ping {
        opaque: u64,
    },
    GoAway {
        code: ErrorCode,
        message: String,
        drained: bool,
    },
}

/// Keepalive and ping bookkeeping.
#[derive(Debug)]
struct Liveness {
    /// When a frame last arrived (or the session started).
    last_rx: Instant,
    /// The keepalive probe in flight: (opaque, sent at).
    probe: Option<(u64, Instant)>,
    /// Pings requested by the application: (opaque, sent at).
    user_pings: VecDeque<(u64, Instant)>,
    next_opaque: u64,
    /// The latest PING to answer (only the newest is answered: a flood costs one PONG).
    pong_owed: Option<u64>,
    /// When HELLO was last queued.
    hello_sent: Instant,
    /// Whether the peer was reported silent and has not been heard since.
    silent: bool,
}

/// Shutdown bookkeeping while draining.
#[derive(Debug, Clone, Copy, Default)]
struct Drain {
    goaway_sent: bool,
    drained_sent: bool,
    drained_received: bool,
    /// Retransmission timeouts spent waiting for the ACK of our last frames after DRAINED crossed.
    linger_timeouts: u32,
}

/// How many retransmission timeouts a drained session waits for the ACK of its last frames.
const MAX_LINGER_TIMEOUTS: u32 = 3;

/// The sans-I/O session state machine.
#[derive(Debug)]
pub struct Mux {
    config: Config,
    phase: Phase,
    decoder: Decoder,
    /// Sequence numbers and the retransmit buffer; used only while `reliable` is in force.
    arq: Arq,
    reliable: bool,
    peer: Option<PeerInfo>,
    streams: HashMap<StreamId, Stream>,
    next_local_id: u32,
    /// The highest id the peer has opened; lower peer ids not in `streams` are ended.
    peer_highest_id: u32,
    local_open_count: u32,
    peer_open_count: u32,
    control: VecDeque<Control>,
    ring: VecDeque<StreamId>,
    /// Streams that wanted more credit than the budget allowed.
    starved: VecDeque<StreamId>,
    granted_total: usize,
    /// The part of `granted_total` above each stream's `min_window`.
    budget_used: usize,
    out: Vec<u8>,
    out_pos: usize,
    /// Send buffers whose bytes were all framed, kept for reuse (see [`Mux::take_spent`]).
    spent: Vec<Vec<u8>>,
    events: VecDeque<Event>,
    live: Liveness,
    drain: Drain,
    counters: Counters,
    termination: Option<Termination>,
}

impl Mux {
    /// A session at link start: HELLO is queued at once.
    pub fn new(config: Config, now: Instant) -> Mux {
        let max_frame = config.max_frame.clamp(MIN_FRAME_LIMIT, MAX_FRAME_LIMIT);
        let mut decoder = Decoder::new(max_frame);
        decoder.set_payload_crc(config.payload_crc);
        let config = Config {
            max_frame,
            chunk: config.chunk.clamp(1, max_frame as usize),
            ..config
        };
        let arq = Arq::new(ArqConfig {
            limit: config.retransmit_limit.max(1),
            min_rto: config.min_rto,
            max_rto: Duration::from_secs(8).max(config.min_rto),
            initial_rto: Duration::from_secs(1).max(config.min_rto),
        });
        let mut mux = Mux {
            next_local_id: config.role.first_stream_id(),
            arq,
            reliable: false,
            config,
            phase: Phase::AwaitingHello,
            decoder,
            peer: None,
            streams: HashMap::new(),
            peer_highest_id: 0,
            local_open_count: 0,
            peer_open_count: 0,
            control: VecDeque::new(),
            ring: VecDeque::new(),
            starved: VecDeque::new(),
            granted_total: 0,
            budget_used: 0,
            out: Vec::new(),
            out_pos: 0,
            spent: Vec::new(),
            events: VecDeque::new(),
            live: Liveness {
                last_rx: now,
                probe: None,
                user_pings: VecDeque::new(),
                next_opaque: 1,
                pong_owed: None,
                hello_sent: now,
                silent: false,
            },
            drain: Drain::default(),
            counters: Counters::default(),
            termination: None,
        };
        mux.control.push_back(Control::Hello { reply: false });
        mux
    }

    // ----- observation -----

    /// The session's phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// What the peer announced, once its HELLO arrived.
    pub fn peer(&self) -> Option<&PeerInfo> {
        self.peer.as_ref()
    }

    /// This side's settings (after clamping).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Why the session ended, once it has.
    pub fn termination(&self) -> Option<&Termination> {
        self.termination.as_ref()
    }

    /// Counters so far.
    pub fn counters(&self) -> Counters {
        let d = self.decoder.stats();
        let a = self.arq.stats();
        Counters {
            retransmitted_frames: a.retransmitted_frames,
            retransmit_timeouts: a.timeouts,
            resend_requests: a.resend_requests,
            resends_asked: a.resends_asked,
            out_of_order: a.out_of_order,
            duplicates: a.duplicates,
            acks_sent: a.acks_sent,
            resyncs: d.resyncs,
            discarded_bytes: d.discarded_bytes,
            header_crc_errors: d.header_crc_errors,
            payload_crc_errors: d.payload_crc_errors,
            ..self.counters
        }
    }

    /// Bytes held in memory right now.
    pub fn buffered(&self) -> Buffered {
        let (rx, tx) = self
            .streams
            .values()
            .fold((0, 0), |(rx, tx), s| (rx + s.rx_len, tx + s.tx_len));
        Buffered {
            rx,
            tx,
            output: self.out.len() - self.out_pos,
            decoder: self.decoder.buffered(),
            granted: self.granted_total,
            budget: self.budget_used,
            retransmit: self.arq.buffered(),
        }
    }

    /// Streams not yet ended.
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// Whether `id` names a stream that has not ended.
    pub fn has_stream(&self, id: StreamId) -> bool {
        self.streams.contains_key(&id)
    }

    /// The next deadline at which [`Mux::handle_timeout`] must be called, if any.
    pub fn poll_at(&self) -> Option<Instant> {
        let keepalive = self.keepalive_at();
        let retransmit = self.arq.deadline().filter(|_| self.live_reliable());
        match (keepalive, retransmit) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether retransmission is in force and the session still runs.
    fn live_reliable(&self) -> bool {
        self.reliable && matches!(self.phase, Phase::Established | Phase::Draining)
    }

    /// The HELLO retry or keepalive deadline.
    fn keepalive_at(&self) -> Option<Instant> {
        match self.phase {
            Phase::Terminated => None,
            Phase::AwaitingHello => Some(self.live.hello_sent + self.config.hello_retry),
            Phase::Established | Phase::Draining => {
                let interval = self.config.keepalive_interval?;
                Some(match self.live.probe {
                    Some((_, sent)) => sent + self.config.keepalive_timeout,
                    None => self.live.last_rx + interval,
                })
            }
        }
    }

    /// The next event, if any. Drain after every call that feeds the mux.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ----- driving -----

    /// Feeds bytes received from the link.
    pub fn handle_input(&mut self, now: Instant, mut bytes: &[u8]) {
        if self.phase == Phase::Terminated {
            return;
        }
        self.counters.bytes_in += bytes.len() as u64;
        while let Some(result) = self.decoder.decode(&mut bytes) {
            match result {
                Ok(frame) => {
                    self.counters.frames_in += 1;
                    if self.live.silent {
                        self.live.silent = false;
                        let silent_for = now.saturating_since(self.live.last_rx);
                        self.events.push_back(Event::PeerBack { silent_for });
                    }
                    self.live.last_rx = now;
                    self.live.probe = None;
                    if self.live_reliable()
                        && Kind::from_u8(frame.kind).map_or(true, wire::is_sequenced)
                        && self.arq.on_arrival(frame.seq, now) != Arrival::InOrder
                    {
                        // A frame before it was lost, or it is a resent copy: it proves the peer
                        // is alive, nothing more.
                        continue;
                    }
                    self.handle_frame(now, frame);
                }
                Err(DecodeError::Version { peer }) => {
                    let e = DecodeError::Version { peer };
                    self.fail(ErrorCode::VERSION, e.to_string());
                }
                Err(e @ DecodeError::FrameTooLarge { .. }) => {
                    self.fail(ErrorCode::FRAME_TOO_LARGE, e.to_string())
                }
            }
            if self.phase == Phase::Terminated {
                return;
            }
        }
    }

    /// Runs the timers: HELLO retry, keepalive probe and timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.woke_from_pause(now) {
            return;
        }
        let resent = self.live_reliable() && self.arq.on_timeout(now, &mut self.out);
        if resent && self.drain.drained_sent && self.drain.drained_received {
            self.drain.linger_timeouts += 1;
            self.check_drained();
        }
        match self.phase {
            Phase::Terminated => {}
            Phase::AwaitingHello => {
                if now >= self.live.hello_sent + self.config.hello_retry {
                    // The deadline moves on either way: a port with no peer keeps its first
                    // HELLO unsent, and a deadline left in the past would wake the loop at once,
                    // forever.
                    self.live.hello_sent = now;
                    // Only when the last HELLO left: a port with no peer keeps one waiting,
                    // not a pile. OPENs queued behind it cannot go before the answer anyway.
                    let hello_waiting = self.out_pos < self.out.len()
                        || self
                            .control
                            .iter()
                            .any(|c| matches!(c, Control::Hello { .. }));
                    if !hello_waiting {
                        self.control.push_back(Control::Hello { reply: false });
                    }
                }
            }
            Phase::Established | Phase::Draining => {
                let Some(interval) = self.config.keepalive_interval else {
                    return;
                };
                match self.live.probe {
                    Some((_, sent)) if now >= sent + self.config.keepalive_timeout => {
                        let secs = self.config.keepalive_timeout.as_secs_f64();
                        if self.reliable && self.phase == Phase::Draining && self.drain.drained_sent
                        {
                            // Nothing of ours is left and the peer has said nothing for a whole
                            // probe: on a damaged line it most likely ended after lingering while
                            // its own DRAINED was lost. Waiting longer cannot deliver anything
                            // more. (A port stays open and starts its next session on the same
                            // fd, so its frames still queued there reach a peer that was only
                            // paused.) Socket links report a dead peer themselves and closing
                            // them drops unread bytes: there silence is only reported, as for
                            // any session.
                            return self.fail(
                                ErrorCode::TIMEOUT,
                                format!(
                                    "this side drained and the peer's DRAINED never came: \
                                     no frame for {secs:.1} s after a PING"
                                ),
                            );
                        }
                        if self.config.end_on_silence {
                            return self.fail(
                                ErrorCode::TIMEOUT,
                                format!("no frame from the peer for {secs:.1} s after a PING"),
                            );
                        }
                        if !self.live.silent {
                            self.live.silent = true;
                            self.counters.silences += 1;
                            let silent_for = now.saturating_since(self.live.last_rx);
                            self.events.push_back(Event::PeerSilent { silent_for });
                        }
                        // Probe again; the first frame that arrives ends the silence.
                        let opaque = self.next_opaque();
                        self.live.probe = Some((opaque, now));
                        self.control.push_back(Control::Ping { opaque });
                    }
                    Some(_) => {}
                    None if now >= self.live.last_rx + interval => {
                        let opaque = self.next_opaque();
                        self.live.probe = Some((opaque, now));
                        self.control.push_back(Control::Ping { opaque });
                    }
                    None => {}
                }
            }
        }
    }

    /// Whether this call comes so long after the deadline it was scheduled for (more than half
    /// the keepalive timeout) that this process must have been frozen: the VM was paused or the
    /// host suspended. The peer was frozen out of our view, not silent, so liveness restarts
    /// from now and the probe is sent again instead of declaring the peer dead.
    fn woke_from_pause(&mut self, now: Instant) -> bool {
        let late = match self.keepalive_at() {
            Some(deadline) if self.phase != Phase::AwaitingHello => now.saturating_since(deadline),
            _ => return false,
        };
        if late <= self.config.keepalive_timeout / 2 {
            return false;
        }
        self.counters.pauses += 1;
        self.live.last_rx = now;
        self.live.probe = None;
        true
    }

    /// Bytes to write to the link now (possibly empty). Builds frames up to the high-water mark:
    /// control frames first, then DATA, streams taking turns.
    pub fn poll_transmit(&mut self) -> &[u8] {
        self.fill_output();
        &self.out[self.out_pos..]
    }

    /// Reports that the first `n` bytes returned by [`Mux::poll_transmit`] were written at `now`.
    pub fn advance_output(&mut self, now: Instant, n: usize) {
        self.out_pos = (self.out_pos + n).min(self.out.len());
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
            if self.live_reliable() {
                self.arq.on_output_drained(now);
            }
        } else if self.out_pos > self.config.output_high_water {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
    }

    /// Whether output is waiting or could be built now.
    pub fn wants_to_write(&self) -> bool {
        if self.out_pos < self.out.len()
            || (self.live_reliable() && (self.arq.ack_due() || self.arq.resend_ready()))
            || self
                .control
                .iter()
                .any(|c| matches!(c, Control::Hello { .. }))
        {
            return true;
        }
        if !self.seq_room() {
            return false;
        }
        (!self.control.is_empty() && self.phase != Phase::AwaitingHello)
            || self.live.pong_owed.is_some()
            || self
                .ring
                .iter()
                .any(|id| self.streams.get(id).is_some_and(Stream::wants_turn))
    }

    /// Whether a sequenced frame may be built: always, unless the retransmit buffer is full.
    fn seq_room(&self) -> bool {
        !self.reliable || self.arq.has_room()
    }

    /// The link is gone: every stream fails with LINK_LOST and the session ends.
    pub fn link_lost(&mut self, why: &str) {
        if self.phase == Phase::Terminated {
            return;
        }
        self.terminate(Termination {
            code: ErrorCode::LINK_LOST,
            message: why.to_string(),
            by_peer: false,
        });
    }

    // ----- streams -----

    /// Opens a stream to `service`. Allowed before HELLO completes (the OPEN waits for it).
    pub fn open(&mut self, service: &str, args: &[u8]) -> Result<StreamId, MuxError> {
        match self.phase {
            Phase::Terminated => return Err(MuxError::Terminated),
            Phase::Draining => return Err(MuxError::GoingAway),
            Phase::AwaitingHello if self.drain.goaway_sent => return Err(MuxError::GoingAway),
            Phase::AwaitingHello | Phase::Established => {}
        }
        if !wire::is_valid_service_name(service) {
            return Err(MuxError::BadServiceName(service.to_string()));
        }
        let len = 5 + service.len() + args.len();
        let max = self.peer_max_frame();
        if len > max {
            return Err(MuxError::TooLarge { len, max });
        }
        let peer_max_streams = self
            .peer
            .map_or(self.config.max_streams, |p| p.hello.max_streams);
        if self.local_open_count >= peer_max_streams {
            return Err(MuxError::StreamLimit {
                max: peer_max_streams,
            });
        }
        let id = self.next_local_id;
        self.next_local_id = id.checked_add(2).ok_or(MuxError::StreamLimit {
            max: peer_max_streams,
        })?;
        let mut stream = Stream::new(Opening::Sent);
        // An idle stream holds only its guaranteed minimum; it grows as it is used.
        let grant = self.allow(0, self.config.min_window as usize);
        stream.rx_limit = Wrapping(grant as u32);
        self.streams.insert(id, stream);
        self.local_open_count += 1;
        self.counters.streams_opened += 1;
        self.control.push_back(Control::Open {
            id,
            service: service.to_string(),
            args: args.to_vec(),
        });
        Ok(id)
    }

    /// Accepts an incoming stream, with optional reply bytes for the opener.
    pub fn accept(&mut self, id: StreamId, reply: &[u8]) -> Result<(), MuxError> {
        let max = self.peer_max_frame();
        if 4 + reply.len() > max {
            return Err(MuxError::TooLarge {
                len: 4 + reply.len(),
                max,
            });
        }
        let stream = self
            .streams
            .get_mut(&id)
            .ok_or(MuxError::UnknownStream(id))?;
        if stream.opening != Opening::Received {
            return Err(MuxError::WrongState(id));
        }
        stream.opening = Opening::Done;
        let grant = self.allow(0, self.config.min_window as usize);
        if let Some(stream) = self.streams.get_mut(&id) {
            stream.rx_limit = Wrapping(grant as u32);
        }
        self.control.push_back(Control::OpenOk {
            id,
            reply: reply.to_vec(),
        });
        self.schedule(id);
        self.check_control_backlog();
        Ok(())
    }

    /// Refuses an incoming stream with a code and message.
    pub fn reject(&mut self, id: StreamId, code: ErrorCode, message: &str) -> Result<(), MuxError> {
        let stream = self.streams.get(&id).ok_or(MuxError::UnknownStream(id))?;
        if stream.opening != Opening::Received {
            return Err(MuxError::WrongState(id));
        }
        self.remove_stream(id);
        self.counters.opens_refused += 1;
        self.control.push_back(Control::OpenErr {
            id,
            code,
            message: message.to_string(),
        });
        self.check_control_backlog();
        Ok(())
    }

    /// Bytes [`Mux::send`] will take now on `id` (0 for an unknown or not-yet-open stream).
    pub fn send_capacity(&self, id: StreamId) -> usize {
        match self.streams.get(&id) {
            Some(s) if s.write == WriteHalf::Open && s.opening == Opening::Done => {
                s.send_capacity()
            }
            _ => 0,
        }
    }

    /// Queues up to [`Mux::send_capacity`] bytes of `data` on `id`; returns how many it took.
    pub fn send(&mut self, id: StreamId, data: &[u8]) -> Result<usize, MuxError> {
        let n = self.send_capacity_checked(id)?.min(data.len());
        if n > 0 {
            let mut buf = self.spent.pop().unwrap_or_default();
            buf.extend_from_slice(&data[..n]);
            self.queue_tx(id, buf);
        }
        Ok(n)
    }

    /// A cleared send buffer whose bytes were all framed, for the caller to fill and pass to
    /// [`Mux::send_owned`] again: steady streaming then allocates (and page-faults) nothing.
    pub fn take_spent(&mut self) -> Option<Vec<u8>> {
        self.spent.pop()
    }

    /// Queues an owned buffer without copying it; it must fit in [`Mux::send_capacity`],
    /// otherwise it is handed back untouched.
    pub fn send_owned(&mut self, id: StreamId, data: Vec<u8>) -> Result<(), SendError> {
        match self.send_capacity_checked(id) {
            Err(e) => Err(SendError {
                error: Some(e),
                data,
            }),
            Ok(cap) if cap < data.len() => Err(SendError { error: None, data }),
            Ok(_) => {
                if !data.is_empty() {
                    self.queue_tx(id, data);
                }
                Ok(())
            }
        }
    }

    fn send_capacity_checked(&self, id: StreamId) -> Result<usize, MuxError> {
        let stream = self.streams.get(&id).ok_or(MuxError::UnknownStream(id))?;
        if stream.write != WriteHalf::Open {
            return Err(MuxError::WriteClosed(id));
        }
        Ok(if stream.opening == Opening::Done {
            stream.send_capacity()
        } else {
            0
        })
    }

    fn queue_tx(&mut self, id: StreamId, data: Vec<u8>) {
        if let Some(stream) = self.streams.get_mut(&id) {
            stream.tx_len += data.len();
            stream.tx.push_back(data);
        }
        self.schedule(id);
    }

    /// Takes the next received chunk of `id`, in order. Taking does not grant credit: call
    /// [`Mux::release`] when the application has consumed the bytes.
    pub fn recv(&mut self, id: StreamId) -> Option<Vec<u8>> {
        let stream = self.streams.get_mut(&id)?;
        match stream.rx.pop_front() {
            Some(chunk) => {
                stream.rx_len -= chunk.len();
                if stream.rx_len == 0 {
                    self.maybe_finish(id);
                }
                Some(chunk)
            }
            None => {
                stream.readable_signalled = false;
                None
            }
        }
    }

    /// Whether the peer has half-closed `id` (its CLOSE arrived).
    pub fn is_peer_closed(&self, id: StreamId) -> bool {
        self.streams
            .get(&id)
            .is_some_and(|s| s.read == ReadHalf::Closed)
    }

    /// Whether `id` has received bytes waiting in [`Mux::recv`].
    pub fn has_rx(&self, id: StreamId) -> bool {
        self.streams.get(&id).is_some_and(|s| s.rx_len > 0)
    }

    /// Reports that the application consumed `n` received bytes of `id`: raises the peer's
    /// credit when enough has been consumed and the buffer budget allows.
    pub fn release(&mut self, id: StreamId, n: usize) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let before = stream.granted_unconsumed();
        let n = n.min(before);
        stream.rx_consumed += Wrapping(n as u32);
        self.granted_total -= n;
        self.budget_used -= self.share(before) - self.share(before - n);
        // Consumption freed budget: streams that went without come first, so that a busy
        // stream cannot keep the whole budget to itself.
        self.feed_starved(id);
        self.grant_credit(id);
    }

    /// Offers freed budget to the streams that wanted more than it allowed (except `skip`).
    fn feed_starved(&mut self, skip: StreamId) {
        for _ in 0..self.starved.len() {
            if self.budget_used >= self.config.max_buffered {
                break;
            }
            let Some(other) = self.starved.pop_front() else {
                break;
            };
            if other != skip {
                self.grant_credit(other);
            }
        }
    }

    /// Half-closes `id`: CLOSE follows the data already queued.
    pub fn close(&mut self, id: StreamId) -> Result<(), MuxError> {
        let stream = self
            .streams
            .get_mut(&id)
            .ok_or(MuxError::UnknownStream(id))?;
        if stream.opening == Opening::Received {
            return Err(MuxError::WrongState(id));
        }
        if stream.write == WriteHalf::Open {
            stream.write = WriteHalf::Closing;
            self.schedule(id);
        }
        Ok(())
    }

    /// Aborts `id` in both directions with `code`; queued data is dropped.
    pub fn reset(&mut self, id: StreamId, code: ErrorCode, message: &str) -> Result<(), MuxError> {
        if !self.streams.contains_key(&id) {
            return Err(MuxError::UnknownStream(id));
        }
        self.remove_stream(id);
        // An OPEN still queued is withdrawn instead: the peer never hears of the stream, and a
        // RESET for an id it never saw opened would be a protocol error there.
        let unsent_open = self
            .control
            .iter()
            .position(|c| matches!(c, Control::Open { id: open, .. } if *open == id));
        if let Some(pos) = unsent_open {
            self.control.remove(pos);
            return Ok(());
        }
        self.counters.resets_sent += 1;
        self.control.push_back(Control::Reset {
            id,
            code,
            message: message.to_string(),
        });
        self.check_control_backlog();
        Ok(())
    }

    /// Starts a graceful shutdown (code NORMAL), or ends the session at once with an error code.
    pub fn goaway(&mut self, code: ErrorCode, message: &str) {
        if self.phase == Phase::Terminated {
            return;
        }
        if code != ErrorCode::NORMAL {
            self.fail(code, message.to_string());
            return;
        }
        if !self.drain.goaway_sent {
            self.drain.goaway_sent = true;
            self.control.push_back(Control::GoAway {
                code,
                message: message.to_string(),
                drained: false,
            });
        }
        // Before the peer's HELLO, draining starts once it arrives (see `on_hello`).
        if self.phase != Phase::AwaitingHello {
            self.phase = Phase::Draining;
        }
        self.check_drained();
    }

    /// Sends a PING now; its PONG comes back as [`Event::Pong`] with the round-trip time.
    pub fn ping(&mut self, now: Instant) -> Result<(), MuxError> {
        if self.phase == Phase::Terminated {
            return Err(MuxError::Terminated);
        }
        let opaque = self.next_opaque();
        if self.live.user_pings.len() >= 64 {
            self.live.user_pings.pop_front();
        }
        self.live.user_pings.push_back((opaque, now));
        self.control.push_back(Control::Ping { opaque });
        Ok(())
    }

    // ----- internals: input -----

    fn handle_frame(&mut self, now: Instant, frame: RawFrame) {
        let len = frame.payload.len() as u32;
        let header = match wire::Header::validate(frame.kind, frame.flags, frame.stream, len) {
            Ok(h) => h,
            Err(e) => return self.fail(ErrorCode::PROTOCOL, e.to_string()),
        };
        if self.phase == Phase::AwaitingHello && header.kind != Kind::Hello {
            // Bytes from an earlier link (virtio-serial keeps them): not ours.
            self.counters.stale_frames += 1;
            return;
        }
        let id = header.stream;
        let p = &frame.payload[..];
        match header.kind {
            // Link start or restart; answer a HELLO that is not itself an answer.
            Kind::Hello => self.on_hello(header.flags, p),
            // Keepalive or user probe: owe a PONG (the newest only).
            Kind::Ping => match PingBody::parse(Kind::Ping, p) {
                Ok(b) => self.live.pong_owed = Some(b.opaque),
                Err(e) => self.fail(ErrorCode::PROTOCOL, e.to_string()),
            },
            // Answer to a probe: liveness was already noted; report user pings.
            Kind::Pong => match PingBody::parse(Kind::Pong, p) {
                Ok(b) => self.on_pong(now, b.opaque),
                Err(e) => self.fail(ErrorCode::PROTOCOL, e.to_string()),
            },
            Kind::GoAway => match ErrorBody::parse(Kind::GoAway, p) {
                Ok(b) => {
                    let (code, message) = (b.code, b.message.to_string());
                    self.on_goaway(code, message, header.flags.contains(Flags::DRAINED));
                }
                Err(e) => self.fail(ErrorCode::PROTOCOL, e.to_string()),
            },
            // Link-level acknowledgement: free what it covers, resend if asked.
            Kind::Ack => self.on_ack(now, header.flags, p),
            // A new stream from the peer.
            Kind::Open => self.on_open(id, p),
            // Everything else names an existing stream.
            _ => {
                if !self.streams.contains_key(&id) {
                    return self.on_unknown_stream(header.kind, id);
                }
                match header.kind {
                    Kind::OpenOk => self.on_open_ok(id, p),
                    Kind::OpenErr => self.on_open_err(id, p),
                    Kind::Data => self.on_data(id, frame.payload),
                    Kind::Credit => self.on_credit(id, p),
                    Kind::Close => self.on_close(id, p),
                    Kind::Reset => self.on_reset(id, p),
                    Kind::Hello
                    | Kind::Ping
                    | Kind::Pong
                    | Kind::GoAway
                    | Kind::Ack
                    | Kind::Open => {}
                }
            }
        }
    }

    fn on_hello(&mut self, flags: Flags, p: &[u8]) {
        let hello = match Hello::parse(p) {
            Ok(h) => h,
            Err(e) => return self.fail(ErrorCode::PROTOCOL, e.to_string()),
        };
        if hello.version != u16::from(wire::VERSION) {
            let msg = format!(
                "peer speaks vmux protocol version {}, this side speaks version {}",
                hello.version,
                wire::VERSION
            );
            return self.fail(ErrorCode::VERSION, msg);
        }
        if hello.role == self.config.role {
            let msg = format!("both sides claim the {:?} role", hello.role);
            return self.fail(ErrorCode::ROLE_CONFLICT, msg);
        }
        let restarted = match self.peer {
            Some(known) if known.hello.nonce == hello.nonce => {
                // A duplicate (our retry crossed its answer): answer only if asked.
                if !flags.contains(Flags::REPLY) {
                    self.control.push_back(Control::Hello { reply: true });
                }
                return;
            }
            Some(_) => {
                self.counters.peer_restarts += 1;
                let ids: Vec<StreamId> = self.streams.keys().copied().collect();
                for id in ids {
                    self.fail_stream(id, ErrorCode::LINK_LOST, "the peer restarted");
                }
                // A new peer starts a new session: whatever shutdown, probes and control frames
                // were under way belonged to the old one.
                self.peer_highest_id = 0;
                self.phase = Phase::Established;
                self.drain = Drain::default();
                self.control.clear();
                self.ring.clear();
                self.starved.clear();
                self.live.probe = None;
                self.live.pong_owed = None;
                self.live.user_pings.clear();
                // Numbering starts again on both sides; what the old peer never acknowledged
                // belonged to streams that just failed.
                self.arq.reset();
                true
            }
            None => false,
        };
        let reliable = self.config.reliable && hello.features.contains(Features::RELIABLE);
        let payload_crc =
            self.config.payload_crc || hello.features.contains(Features::PAYLOAD_CRC) || reliable;
        self.decoder.set_payload_crc(payload_crc);
        self.reliable = reliable;
        let peer = PeerInfo {
            hello,
            payload_crc,
            reliable,
        };
        self.peer = Some(peer);
        let shutting_down = self.phase == Phase::AwaitingHello && self.drain.goaway_sent;
        if self.phase == Phase::AwaitingHello {
            self.phase = Phase::Established;
        }
        if !flags.contains(Flags::REPLY) {
            self.control.push_back(Control::Hello { reply: true });
        }
        self.events
            .push_back(Event::Established { peer, restarted });
        if shutting_down {
            // GOAWAY was asked for before the peer was there; it is queued behind the HELLO.
            self.phase = Phase::Draining;
            self.check_drained();
        }
    }

    fn on_pong(&mut self, now: Instant, opaque: u64) {
        if let Some(pos) = self.live.user_pings.iter().position(|(o, _)| *o == opaque) {
            let (_, sent) = self.live.user_pings.remove(pos).unwrap_or((0, now));
            self.live.user_pings.drain(..pos);
            self.events.push_back(Event::Pong {
                rtt: now.saturating_since(sent),
            });
        }
    }

    fn on_ack(&mut self, now: Instant, flags: Flags, p: &[u8]) {
        if !self.reliable {
            return self.fail(
                ErrorCode::PROTOCOL,
                "ACK on a session without RELIABLE".to_string(),
            );
        }
        let ack = match Ack::parse(p) {
            Ok(a) => a,
            Err(e) => return self.fail(ErrorCode::PROTOCOL, e.to_string()),
        };
        let resend = flags.contains(Flags::RESEND);
        if self.arq.on_ack(ack.next, resend, now, &mut self.out) {
            self.check_drained();
        }
    }

    fn on_goaway(&mut self, code: ErrorCode, message: String, drained: bool) {
        if code != ErrorCode::NORMAL {
            return self.terminate(Termination {
                code,
                message,
                by_peer: true,
            });
        }
        if self.phase != Phase::Draining {
            self.phase = Phase::Draining;
            self.events.push_back(Event::GoAway { code, message });
        }
        if drained {
            self.drain.drained_received = true;
        }
        self.check_drained();
    }

    fn on_open(&mut self, id: StreamId, p: &[u8]) {
        if self.config.role.owns(id) || id <= self.peer_highest_id {
            return self.fail(
                ErrorCode::PROTOCOL,
                format!("OPEN with stream id {id}, which the peer may not open now"),
            );
        }
        self.peer_highest_id = id;
        let refuse = |mux: &mut Mux, code: ErrorCode, message: String| {
            mux.counters.opens_refused += 1;
            mux.control
                .push_back(Control::OpenErr { id, code, message });
            mux.check_control_backlog();
        };
        if self.phase == Phase::Draining {
            return refuse(
                self,
                ErrorCode::GOING_AWAY,
                "session is shutting down".into(),
            );
        }
        if self.peer_open_count >= self.config.max_streams {
            let max = self.config.max_streams;
            return refuse(
                self,
                ErrorCode::STREAM_LIMIT,
                format!("at most {max} concurrent streams"),
            );
        }
        let open = match Open::parse(p) {
            Ok(o) => o,
            Err(e) => return refuse(self, ErrorCode::PROTOCOL, e.to_string()),
        };
        let mut stream = Stream::new(Opening::Received);
        stream.tx_limit = Wrapping(open.initial_credit);
        let (service, args) = (open.service.to_string(), open.args.to_vec());
        self.streams.insert(id, stream);
        self.peer_open_count += 1;
        self.counters.streams_opened += 1;
        self.events.push_back(Event::Incoming { id, service, args });
    }

    fn on_unknown_stream(&mut self, kind: Kind, id: StreamId) {
        let used = if self.config.role.owns(id) {
            id < self.next_local_id
        } else {
            id <= self.peer_highest_id
        };
        if used {
            // The stream ended here while the peer was still sending: harmless, drop it.
            self.counters.stale_frames += 1;
        } else {
            self.fail(
                ErrorCode::PROTOCOL,
                format!("{kind} on stream {id}, which was never opened"),
            );
        }
    }

    fn on_open_ok(&mut self, id: StreamId, p: &[u8]) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        if stream.opening != Opening::Sent {
            return self.fail_stream_protocol(id, "OPEN_OK on a stream that is not opening");
        }
        let ok = match OpenOk::parse(p) {
            Ok(ok) => ok,
            Err(e) => return self.fail_stream_protocol(id, &e.to_string()),
        };
        stream.opening = Opening::Done;
        stream.tx_limit = Wrapping(ok.initial_credit);
        let reply = ok.reply.to_vec();
        self.events.push_back(Event::Accepted { id, reply });
        self.schedule(id);
        // Data or a CLOSE may have arrived before the application asked for anything.
        self.maybe_finish(id);
    }

    fn on_open_err(&mut self, id: StreamId, p: &[u8]) {
        let Some(stream) = self.streams.get(&id) else {
            return;
        };
        if stream.opening != Opening::Sent {
            return self.fail_stream_protocol(id, "OPEN_ERR on a stream that is not opening");
        }
        let (code, message) = match ErrorBody::parse(Kind::OpenErr, p) {
            Ok(b) => (b.code, b.message.to_string()),
            Err(e) => (ErrorCode::PROTOCOL, e.to_string()),
        };
        self.remove_stream(id);
        self.events.push_back(Event::Refused { id, code, message });
        self.check_drained();
    }

    fn on_data(&mut self, id: StreamId, payload: Vec<u8>) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        if payload.is_empty() {
            return;
        }
        if stream.read == ReadHalf::Closed {
            return self.fail_stream_protocol(id, "DATA after CLOSE");
        }
        if payload.len() > stream.rx_room() {
            let msg = format!(
                "{} bytes of DATA with {} bytes of credit",
                payload.len(),
                stream.rx_room()
            );
            self.counters.resets_sent += 1;
            self.remove_stream(id);
            self.control.push_back(Control::Reset {
                id,
                code: ErrorCode::FLOW_CONTROL,
                message: msg.clone(),
            });
            self.events.push_back(Event::Reset {
                id,
                code: ErrorCode::FLOW_CONTROL,
                message: msg,
                by_peer: false,
            });
            return self.check_control_backlog();
        }
        stream.rx_received += Wrapping(payload.len() as u32);
        stream.rx_len += payload.len();
        self.counters.data_in += payload.len() as u64;
        stream.rx.push_back(payload);
        if !stream.readable_signalled {
            stream.readable_signalled = true;
            self.events.push_back(Event::Readable { id });
        }
    }

    fn on_credit(&mut self, id: StreamId, p: &[u8]) {
        let credit = match Credit::parse(p) {
            Ok(c) => c,
            Err(e) => return self.fail_stream_protocol(id, &e.to_string()),
        };
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let new_limit = Wrapping(credit.limit);
        // A limit behind the current one (mod 2^32, within half the space) is stale: ignore it.
        let raise = (new_limit - stream.tx_limit).0;
        if raise == 0 || raise > u32::MAX / 2 {
            return;
        }
        if (new_limit - stream.tx_sent).0 > u32::MAX / 2 {
            return self.fail_stream_protocol(id, "CREDIT limit behind the bytes already sent");
        }
        let was_blocked = stream.send_capacity() == 0;
        stream.tx_limit = new_limit;
        let writable =
            stream.write == WriteHalf::Open && stream.opening == Opening::Done && was_blocked;
        self.schedule(id);
        if writable {
            self.events.push_back(Event::Writable { id });
        }
    }

    fn on_close(&mut self, id: StreamId, p: &[u8]) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        if !p.is_empty() {
            return self.fail_stream_protocol(id, "CLOSE with a payload");
        }
        if stream.opening == Opening::Sent {
            return self.fail_stream_protocol(id, "CLOSE before OPEN_OK");
        }
        if stream.read == ReadHalf::Closed {
            self.counters.stale_frames += 1;
            return;
        }
        stream.read = ReadHalf::Closed;
        self.events.push_back(Event::PeerClosed { id });
        self.maybe_finish(id);
    }

    fn on_reset(&mut self, id: StreamId, p: &[u8]) {
        let (code, message) = match ErrorBody::parse(Kind::Reset, p) {
            Ok(b) => (b.code, b.message.to_string()),
            Err(e) => (ErrorCode::PROTOCOL, e.to_string()),
        };
        self.counters.resets_received += 1;
        self.remove_stream(id);
        self.events.push_back(Event::Reset {
            id,
            code,
            message,
            by_peer: true,
        });
        self.check_drained();
    }

    // ----- internals: streams -----

    fn fail_stream_protocol(&mut self, id: StreamId, message: &str) {
        self.counters.resets_sent += 1;
        self.remove_stream(id);
        self.control.push_back(Control::Reset {
            id,
            code: ErrorCode::PROTOCOL,
            message: message.to_string(),
        });
        self.events.push_back(Event::Reset {
            id,
            code: ErrorCode::PROTOCOL,
            message: message.to_string(),
            by_peer: false,
        });
        self.check_control_backlog();
        self.check_drained();
    }

    /// Ends a stream locally without telling the peer (the peer is gone or restarted).
    fn fail_stream(&mut self, id: StreamId, code: ErrorCode, message: &str) {
        if self.streams.contains_key(&id) {
            self.remove_stream(id);
            self.events.push_back(Event::Reset {
                id,
                code,
                message: message.to_string(),
                by_peer: false,
            });
        }
    }

    fn remove_stream(&mut self, id: StreamId) {
        if let Some(stream) = self.streams.remove(&id) {
            let out = stream.granted_unconsumed();
            self.granted_total -= out.min(self.granted_total);
            self.budget_used -= self.share(out).min(self.budget_used);
            if self.config.role.owns(id) {
                self.local_open_count -= 1;
            } else {
                self.peer_open_count -= 1;
            }
            // Its unconsumed grant is free again: streams waiting for budget may have it.
            if self.phase != Phase::Terminated {
                self.feed_starved(id);
            }
        }
    }

    fn maybe_finish(&mut self, id: StreamId) {
        if self.streams.get(&id).is_some_and(Stream::is_finished) {
            self.remove_stream(id);
            self.events.push_back(Event::Closed { id });
            self.check_drained();
        }
    }

    /// Puts `id` in the data ring if it has something to frame.
    fn schedule(&mut self, id: StreamId) {
        if let Some(stream) = self.streams.get_mut(&id) {
            if !stream.in_ring && stream.wants_turn() {
                stream.in_ring = true;
                self.ring.push_back(id);
            }
        }
    }

    /// The part of a stream's outstanding credit that counts against the shared budget.
    fn share(&self, outstanding: usize) -> usize {
        outstanding.saturating_sub(self.config.min_window as usize)
    }

    /// How much of `want` more credit a stream with `outstanding` credit may have: up to its
    /// guaranteed minimum for free, the rest from the shared budget.
    fn allow(&mut self, outstanding: usize, want: usize) -> usize {
        let free = (self.config.min_window as usize)
            .saturating_sub(outstanding)
            .min(want);
        let extra = (want - free).min(self.config.max_buffered.saturating_sub(self.budget_used));
        self.budget_used += extra;
        self.granted_total += free + extra;
        free + extra
    }

    /// Raises `id`'s limit towards `consumed + window` once a quarter window was consumed.
    fn grant_credit(&mut self, id: StreamId) {
        let window = self.config.stream_window as usize;
        let Some(stream) = self.streams.get(&id) else {
            return;
        };
        if stream.read == ReadHalf::Closed || stream.opening == Opening::Received {
            return;
        }
        let outstanding = stream.granted_unconsumed();
        let want = window.saturating_sub(outstanding);
        if want < window / 4 {
            return;
        }
        let grant = self.allow(outstanding, want);
        if grant < want && !self.starved.contains(&id) {
            self.starved.push_back(id);
        }
        if grant == 0 {
            return;
        }
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        stream.rx_limit += Wrapping(grant as u32);
        if !stream.credit_queued {
            stream.credit_queued = true;
            self.control.push_back(Control::Credit { id });
        }
    }

    // ----- internals: session -----

    fn peer_max_frame(&self) -> usize {
        self.peer.map_or(MIN_FRAME_LIMIT, |p| p.hello.max_frame) as usize
    }

    fn next_opaque(&mut self) -> u64 {
        let o = self.live.next_opaque;
        self.live.next_opaque = o.wrapping_add(1);
        o
    }

    fn check_control_backlog(&mut self) {
        if self.control.len() > self.config.max_pending_control {
            let n = self.control.len();
            self.fail(
                ErrorCode::OVERLOAD,
                format!("peer is not reading: {n} control frames backed up"),
            );
        }
    }

    /// Sends DRAINED once nothing is left, and ends the session once DRAINED crossed.
    fn check_drained(&mut self) {
        if self.phase != Phase::Draining {
            return;
        }
        if !self.drain.drained_sent && self.streams.is_empty() {
            self.drain.drained_sent = true;
            self.control.push_back(Control::GoAway {
                code: ErrorCode::NORMAL,
                message: String::new(),
                drained: true,
            });
        }
        if self.drain.drained_sent && self.drain.drained_received {
            // Our DRAINED (and anything before it) must still reach the peer.
            self.emit_control_now();
            if self.reliable {
                // The peer's last frames need our ACK, and ours need the peer's: linger a few
                // retransmission timeouts for it. The peer's DRAINED already proved every
                // stream byte arrived, so giving up after that is still a clean end.
                self.emit_ack();
                if self.arq.unacked() > 0 && self.drain.linger_timeouts < MAX_LINGER_TIMEOUTS {
                    return;
                }
            }
            let by_peer = !self.drain.goaway_sent;
            self.terminate(Termination {
                code: ErrorCode::NORMAL,
                message: String::new(),
                by_peer,
            });
        }
    }

    /// Ends the session because of an error found here: GOAWAY(code) is the last frame.
    fn fail(&mut self, code: ErrorCode, message: String) {
        if self.phase == Phase::Terminated {
            return;
        }
        self.control.clear();
        self.live.pong_owed = None;
        // Only a peer that said HELLO can read our frames; before that the GOAWAY is still the
        // best explanation we can give.
        self.control.push_back(Control::GoAway {
            code,
            message: message.clone(),
            drained: false,
        });
        self.emit_control_now();
        self.terminate(Termination {
            code,
            message,
            by_peer: false,
        });
    }

    fn terminate(&mut self, termination: Termination) {
        let code = if termination.is_graceful() {
            ErrorCode::LINK_LOST
        } else {
            termination.code
        };
        let ids: Vec<StreamId> = self.streams.keys().copied().collect();
        for id in ids {
            self.fail_stream(id, code, &termination.to_string());
        }
        self.ring.clear();
        self.starved.clear();
        self.control.clear();
        self.phase = Phase::Terminated;
        self.termination = Some(termination.clone());
        self.events.push_back(Event::Terminated(termination));
    }

    // ----- internals: output -----

    fn fill_output(&mut self) {
        if self.phase == Phase::Terminated {
            return;
        }
        let high = self.config.output_high_water;
        if self.phase == Phase::AwaitingHello {
            // Only HELLO may go before the peer's HELLO arrived.
            if let Some(pos) = self
                .control
                .iter()
                .position(|c| matches!(c, Control::Hello { .. }))
            {
                if let Some(c) = self.control.remove(pos) {
                    self.emit_control(c);
                }
            }
            return;
        }
        self.emit_ack();
        if self.live_reliable() {
            self.arq.poll_resend(&mut self.out);
        }
        if !self.seq_room() {
            return;
        }
        if let Some(opaque) = self.live.pong_owed.take() {
            self.emit_frame(
                Kind::Pong,
                Flags::empty(),
                0,
                &PingBody { opaque }.to_bytes(),
            );
        }
        while self.pending_out() < high && self.seq_room() {
            let Some(c) = self.control.pop_front() else {
                break;
            };
            self.emit_control(c);
        }
        self.fill_data(high);
    }

    /// Builds the ACK that is due, if retransmission is in force.
    fn emit_ack(&mut self) {
        if !self.live_reliable() {
            return;
        }
        if let Some((next, resend)) = self.arq.take_ack() {
            let flags = if resend {
                Flags::RESEND
            } else {
                Flags::empty()
            };
            self.emit_frame(Kind::Ack, flags, 0, &Ack { next }.to_bytes());
        }
    }

    fn emit_control_now(&mut self) {
        while let Some(c) = self.control.pop_front() {
            self.emit_control(c);
        }
    }

    fn pending_out(&self) -> usize {
        self.out.len() - self.out_pos
    }

    fn emit_control(&mut self, c: Control) {
        let mut payload = Vec::new();
        match c {
            Control::Hello { reply } => {
                let mut features = Features::empty();
                if self.config.payload_crc {
                    features |= Features::PAYLOAD_CRC;
                }
                if self.config.reliable {
                    features |= Features::RELIABLE;
                }
                let hello = Hello {
                    role: self.config.role,
                    version: u16::from(wire::VERSION),
                    features,
                    max_frame: self.config.max_frame,
                    max_streams: self.config.max_streams,
                    nonce: self.config.nonce,
                    boot_id: self.config.boot_id,
                };
                let flags = if reply { Flags::REPLY } else { Flags::empty() };
                self.emit_frame(Kind::Hello, flags, 0, &hello.to_bytes());
            }
            Control::Open { id, service, args } => {
                let Some(stream) = self.streams.get(&id) else {
                    return;
                };
                let credit = stream.rx_limit.0;
                Open {
                    initial_credit: credit,
                    service: &service,
                    args: &args,
                }
                .emit(&mut payload);
                self.emit_frame(Kind::Open, Flags::empty(), id, &payload);
            }
            Control::OpenOk { id, reply } => {
                let Some(stream) = self.streams.get_mut(&id) else {
                    return;
                };
                // The limit carried here is absolute; nothing was received yet.
                stream.credit_queued = false;
                let credit = stream.rx_limit.0;
                OpenOk {
                    initial_credit: credit,
                    reply: &reply,
                }
                .emit(&mut payload);
                self.emit_frame(Kind::OpenOk, Flags::empty(), id, &payload);
            }
            Control::OpenErr { id, code, message } => {
                ErrorBody {
                    code,
                    message: &message,
                }
                .emit(&mut payload);
                self.emit_frame(Kind::OpenErr, Flags::empty(), id, &payload);
            }
            Control::Credit { id } => {
                let Some(stream) = self.streams.get_mut(&id) else {
                    return;
                };
                if !stream.credit_queued {
                    return;
                }
                stream.credit_queued = false;
                let limit = stream.rx_limit.0;
                self.emit_frame(
                    Kind::Credit,
                    Flags::empty(),
                    id,
                    &Credit { limit }.to_bytes(),
                );
            }
            Control::Reset { id, code, message } => {
                ErrorBody {
                    code,
                    message: &message,
                }
                .emit(&mut payload);
                self.emit_frame(Kind::Reset, Flags::empty(), id, &payload);
            }
            Control::Ping { opaque } => {
                self.counters.pings_sent += 1;
                self.emit_frame(
                    Kind::Ping,
                    Flags::empty(),
                    0,
                    &PingBody { opaque }.to_bytes(),
                );
            }
            Control::GoAway {
                code,
                message,
                drained,
            } => {
                ErrorBody {
                    code,
                    message: &message,
                }
                .emit(&mut payload);
                let flags = if drained {
                    Flags::DRAINED
                } else {
                    Flags::empty()
                };
                self.emit_frame(Kind::GoAway, flags, 0, &payload);
            }
        }
    }

    fn emit_frame(&mut self, kind: Kind, flags: Flags, stream: u32, payload: &[u8]) {
        let before = self.out.len();
        let trailer = wire::has_trailer(kind, payload.len() as u32, self.decoder.payload_crc());
        wire::emit_frame(&mut self.out, kind, flags, stream, payload, trailer);
        if self.reliable && wire::is_sequenced(kind) {
            self.arq.sequence(&mut self.out[before..]);
        }
        self.counters.frames_out += 1;
        self.counters.bytes_out += (self.out.len() - before) as u64;
    }

    /// Frames DATA round-robin, at most one chunk per stream per turn.
    fn fill_data(&mut self, high: usize) {
        let chunk_max = self.config.chunk.min(self.peer_max_frame());
        let trailer = self.decoder.payload_crc();
        while self.pending_out() < high && self.seq_room() {
            let Some(id) = self.ring.pop_front() else {
                break;
            };
            let Some(stream) = self.streams.get_mut(&id) else {
                continue;
            };
            stream.in_ring = false;
            if stream.opening != Opening::Done {
                continue;
            }
            let n = chunk_max.min(stream.peer_avail_credit()).min(stream.tx_len);
            if n > 0 {
                let start = self.out.len();
                self.out.resize(start + wire::HEADER_LEN, 0);
                wire::Header {
                    kind: Kind::Data,
                    flags: Flags::empty(),
                    stream: id,
                    len: n as u32,
                }
                .emit(&mut self.out[start..]);
                let mut left = n;
                while left > 0 {
                    let Some(front) = stream.tx.front() else {
                        break;
                    };
                    let take = (front.len() - stream.tx_head).min(left);
                    self.out
                        .extend_from_slice(&front[stream.tx_head..stream.tx_head + take]);
                    stream.tx_head += take;
                    left -= take;
                    if stream.tx_head == front.len() {
                        if let Some(mut buf) = stream.tx.pop_front() {
                            if self.spent.len() < MAX_SPENT && buf.capacity() <= SPENT_MAX_CAP {
                                buf.clear();
                                self.spent.push(buf);
                            }
                        }
                        stream.tx_head = 0;
                    }
                }
                if trailer {
                    let crc = wire::crc32c(&self.out[start + wire::HEADER_LEN..]);
                    self.out.extend_from_slice(&crc.to_le_bytes());
                }
                if self.reliable {
                    self.arq.sequence(&mut self.out[start..]);
                }
                stream.tx_len -= n;
                stream.tx_sent += Wrapping(n as u32);
                self.counters.frames_out += 1;
                self.counters.bytes_out += (self.out.len() - start) as u64;
                self.counters.data_out += n as u64;
            }
            if stream.tx_len == 0 && stream.write == WriteHalf::Closing {
                stream.write = WriteHalf::Closed;
                self.emit_frame(Kind::Close, Flags::empty(), id, &[]);
                self.maybe_finish(id);
            } else if stream.wants_turn() {
                stream.in_ring = true;
                self.ring.push_back(id);
            }
        }
    }
}

/// A buffer [`Mux::send_owned`] could not take, handed back.
#[derive(Debug)]
pub struct SendError {
    /// Why, when it is not just a lack of capacity.
    pub error: Option<MuxError>,
    /// The caller's buffer, untouched.
    pub data: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two muxes joined back to back, with a manual clock.
    struct Pair {
        a: Mux,
        b: Mux,
        now: Instant,
        a_events: Vec<Event>,
        b_events: Vec<Event>,
    }

    impl Pair {
        fn new() -> Pair {
            Pair::with(Config::new(Role::Client, 11), Config::new(Role::Server, 22))
        }

        fn with(a: Config, b: Config) -> Pair {
            let now = Instant::from_millis(1000);
            Pair {
                a: Mux::new(a, now),
                b: Mux::new(b, now),
                now,
                a_events: vec![],
                b_events: vec![],
            }
        }

        /// Moves bytes both ways until nothing moves.
        fn run(&mut self) {
            loop {
                while let Some(e) = self.a.poll_event() {
                    self.a_events.push(e);
                }
                while let Some(e) = self.b.poll_event() {
                    self.b_events.push(e);
                }
                let ab = self.a.poll_transmit().to_vec();
                self.a.advance_output(self.now, ab.len());
                let ba = self.b.poll_transmit().to_vec();
                self.b.advance_output(self.now, ba.len());
                if ab.is_empty() && ba.is_empty() {
                    break;
                }
                self.b.handle_input(self.now, &ab);
                self.a.handle_input(self.now, &ba);
            }
        }

        fn take_incoming(&mut self) -> (StreamId, String, Vec<u8>) {
            let pos = self
                .b_events
                .iter()
                .position(|e| matches!(e, Event::Incoming { .. }))
                .expect("incoming");
            match self.b_events.remove(pos) {
                Event::Incoming { id, service, args } => (id, service, args),
                _ => unreachable!(),
            }
        }

        fn drain_rx(mux: &mut Mux, id: StreamId) -> Vec<u8> {
            let mut out = Vec::new();
            while let Some(chunk) = mux.recv(id) {
                mux.release(id, chunk.len());
                out.extend(chunk);
            }
            out
        }
    }

    /// Splits `bytes` (whole frames) into frames and keeps those `keep` accepts.
    fn filter_frames(
        bytes: &[u8],
        payload_crc: bool,
        mut keep: impl FnMut(&wire::FrameHeader<&[u8]>) -> bool,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let view = wire::FrameHeader::new_unchecked(rest);
            let len = view.payload_len();
            let trailer = Kind::from_u8(view.kind_raw())
                .is_ok_and(|k| wire::has_trailer(k, len, payload_crc));
            let total =
                wire::HEADER_LEN + len as usize + if trailer { wire::TRAILER_LEN } else { 0 };
            if keep(&view) {
                out.extend_from_slice(&rest[..total]);
            }
            rest = &rest[total..];
        }
        out
    }

    #[test]
    fn a_resend_that_is_lost_again_is_asked_for_again_without_the_timer() {
        let mut p = Pair::with(
            Config::serial(Role::Client, 11),
            Config::serial(Role::Server, 22),
        );
        let id = p.a.open("svc", b"").unwrap();
        p.run();
        let (bid, _, _) = p.take_incoming();
        p.b.accept(bid, b"").unwrap();
        p.run();
        let data: Vec<u8> = (0..64 << 10).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut sent = 0;
        // The link loses one DATA frame, and then its first resend too. The clock never moves,
        // so no retransmission timer can fire: only resend requests recover.
        let mut victim = None;
        let mut losses = 0;
        let mut received = Vec::new();
        for _ in 0..1000 {
            sent += p.a.send(id, &data[sent..]).unwrap();
            let ab = p.a.poll_transmit().to_vec();
            p.a.advance_output(p.now, ab.len());
            let ba = p.b.poll_transmit().to_vec();
            p.b.advance_output(p.now, ba.len());
            if ab.is_empty() && ba.is_empty() {
                break;
            }
            let ab = filter_frames(&ab, true, |f| {
                if f.kind_raw() != Kind::Data as u8 {
                    return true;
                }
                let seq = f.seq();
                if victim.is_none() && f.payload_len() > 0 {
                    victim = Some(seq);
                }
                if victim == Some(seq) && losses < 2 {
                    losses += 1;
                    return false;
                }
                true
            });
            p.b.handle_input(p.now, &ab);
            p.a.handle_input(p.now, &ba);
            received.extend(Pair::drain_rx(&mut p.b, id));
        }
        assert_eq!((losses, sent), (2, data.len()));
        assert_eq!(received.len(), data.len(), "{:?}", p.b.counters());
        assert!(received == data);
        let (a, b) = (p.a.counters(), p.b.counters());
        assert_eq!(a.retransmit_timeouts, 0);
        // One request for the first loss, one for the resend lost again.
        assert_eq!((b.resends_asked, a.resend_requests), (2, 2), "{b:?}");
        assert_eq!(p.a.buffered().retransmit, 0, "everything acknowledged");
    }

    #[test]
    fn hello_exchange_establishes_both_sides() {
        let mut p = Pair::new();
        p.run();
        assert_eq!(p.a.phase(), Phase::Established);
        assert_eq!(p.b.phase(), Phase::Established);
        assert!(matches!(
            p.a_events[0],
            Event::Established {
                restarted: false,
                ..
            }
        ));
        assert_eq!(p.a.peer().unwrap().hello.nonce, 22);
        assert_eq!(p.b.peer().unwrap().hello.role, Role::Client);
    }

    #[test]
    fn virtio_serial_offers_retransmission_but_needs_no_payload_crc() {
        let agent = || Config::virtio_serial(Role::Server, 22);
        // A host with the socket defaults: neither payload CRCs nor retransmission.
        let mut p = Pair::with(Config::new(Role::Client, 11), agent());
        p.run();
        let peer = p.b.peer().unwrap();
        assert_eq!((peer.payload_crc, peer.reliable), (false, false));
        assert!(!p.a.peer().unwrap().payload_crc);
        // A host that asks for a serial line (`--serial`) gets both.
        let mut p = Pair::with(Config::serial(Role::Client, 11), agent());
        p.run();
        let peer = p.b.peer().unwrap();
        assert_eq!((peer.payload_crc, peer.reliable), (true, true));
        let peer = p.a.peer().unwrap();
        assert_eq!((peer.payload_crc, peer.reliable), (true, true));
    }

    #[test]
    fn open_accept_data_close_both_ways() {
        let mut p = Pair::new();
        let id = p.a.open("echo", b"args").unwrap();
        assert_eq!(id, 1);
        p.run();
        let (bid, service, args) = p.take_incoming();
        assert_eq!(
            (bid, service.as_str(), &args[..]),
            (1, "echo", &b"args"[..])
        );
        p.b.accept(bid, b"hi").unwrap();
        p.run();
        assert!(p.a_events.contains(&Event::Accepted {
            id,
            reply: b"hi".to_vec()
        }));
        assert_eq!(p.a.send(id, b"ping").unwrap(), 4);
        p.a.close(id).unwrap();
        p.run();
        assert_eq!(Pair::drain_rx(&mut p.b, id), b"ping");
        assert!(p.b_events.contains(&Event::PeerClosed { id }));
        p.b.send(id, b"pong").unwrap();
        p.b.close(id).unwrap();
        p.run();
        assert_eq!(Pair::drain_rx(&mut p.a, id), b"pong");
        p.run();
        assert!(p.a_events.contains(&Event::Closed { id }));
        assert!(p.b_events.contains(&Event::Closed { id }));
        assert_eq!(p.a.stream_count(), 0);
        assert_eq!(p.b.stream_count(), 0);
    }

    #[test]
    fn goaway_ends_only_after_both_sides_drained() {
        let mut p = Pair::new();
        let id = p.a.open("svc", b"").unwrap();
        p.run();
        let (bid, _, _) = p.take_incoming();
        p.b.accept(bid, b"").unwrap();
        p.run();
        p.a.goaway(ErrorCode::NORMAL, "bye");
        p.run();
        assert_eq!(p.a.phase(), Phase::Draining);
        assert_eq!(p.b.phase(), Phase::Draining);
        assert_eq!(p.b.open("x", b""), Err(MuxError::GoingAway));
        p.a.send(id, b"last words").unwrap();
        p.a.close(id).unwrap();
        p.b.close(id).unwrap();
        p.run();
        assert_eq!(p.b.phase(), Phase::Draining, "b has not taken the data yet");
        assert_eq!(Pair::drain_rx(&mut p.b, id), b"last words");
        p.run();
        assert_eq!(p.a.phase(), Phase::Terminated);
        assert_eq!(p.b.phase(), Phase::Terminated);
        assert!(p.a.termination().unwrap().is_graceful());
        assert!(!p.a.termination().unwrap().by_peer);
        assert!(p.b.termination().unwrap().by_peer);
    }

    #[test]
    fn data_past_credit_is_reset_with_flow_control() {
        let mut server = Config::new(Role::Server, 2);
        server.stream_window = 16 << 10;
        server.min_window = 16 << 10;
        let mut p = Pair::with(Config::new(Role::Client, 1), server);
        let id = p.a.open("svc", b"").unwrap();
        p.run();
        let (bid, _, _) = p.take_incoming();
        p.b.accept(bid, b"").unwrap();
        p.run();
        // Forge DATA beyond the 16 KiB the server granted.
        let mut forged = Vec::new();
        wire::emit_frame(
            &mut forged,
            Kind::Data,
            Flags::empty(),
            id,
            &[0u8; 20 << 10],
            false,
        );
        p.b.handle_input(p.now, &forged);
        let events: Vec<Event> = std::iter::from_fn(|| p.b.poll_event()).collect();
        assert!(events.iter().any(|e| matches!(
            e,
            Event::Reset {
                code: ErrorCode::FLOW_CONTROL,
                by_peer: false,
                ..
            }
        )));
        p.run();
        assert!(p.a_events.iter().any(|e| matches!(
            e,
            Event::Reset {
                code: ErrorCode::FLOW_CONTROL,
                by_peer: true,
                ..
            }
        )));
        assert_eq!(p.b.phase(), Phase::Established, "the session survives");
    }

    #[test]
    fn keepalive_times_out_a_silent_peer_when_asked_to() {
        let mut a = Config::new(Role::Client, 11);
        a.end_on_silence = true;
        let mut p = Pair::with(a, Config::new(Role::Server, 22));
        p.run();
        let interval = p.a.config().keepalive_interval.unwrap();
        let deadline = p.a.poll_at().unwrap();
        assert_eq!(deadline, p.now + interval);
        // Step time in small increments so no step looks like a pause.
        let mut now = p.now;
        while p.a.phase() != Phase::Terminated {
            now = now + Duration::from_secs(1);
            p.a.handle_timeout(now);
            let _ = p.a.poll_transmit().len(); // the PING goes nowhere
            let n = p.a.poll_transmit().len();
            p.a.advance_output(now, n);
            assert!(now < p.now + Duration::from_secs(60), "never timed out");
        }
        assert_eq!(p.a.termination().unwrap().code, ErrorCode::TIMEOUT);
        assert_eq!(p.a.counters().pings_sent, 1);
    }

    /// The end of the drain-silence test below: a drained, then silence in one-second steps.
    fn drain_then_silence(p: &mut Pair, limit: Duration) -> Instant {
        let id = p.a.open("svc", b"").unwrap();
        p.run();
        p.b.accept(id, b"").unwrap();
        p.run();
        p.a.close(id).unwrap();
        p.b.close(id).unwrap();
        p.run();
        assert!(!p.a.has_stream(id));
        // a drains and says so; the peer's DRAINED (and everything after) is lost: the peer
        // ended without a's hearing of it, or its VM was paused.
        p.a.goaway(ErrorCode::NORMAL, "done");
        let n = p.a.poll_transmit().len();
        p.a.advance_output(p.now, n);
        assert_eq!(p.a.phase(), Phase::Draining);
        let mut now = p.now;
        while p.a.phase() != Phase::Terminated && now < p.now + limit {
            now = now + Duration::from_secs(1);
            p.a.handle_timeout(now);
            let n = p.a.poll_transmit().len(); // PINGs go nowhere
            p.a.advance_output(now, n);
        }
        now
    }

    #[test]
    fn a_drained_side_on_a_socket_link_keeps_waiting_through_silence() {
        // A paused peer may not have read our last frames yet; ending would close the link
        // and drop them. The socket reports a peer that is gone.
        let mut p = Pair::new();
        drain_then_silence(&mut p, Duration::from_secs(300));
        assert_eq!(p.a.phase(), Phase::Draining);
        assert_eq!(p.a.counters().silences, 1);
    }

    #[test]
    fn a_drained_side_whose_peer_falls_silent_on_a_serial_line_ends() {
        let mut p = Pair::with(
            Config::serial(Role::Client, 1),
            Config::serial(Role::Server, 2),
        );
        let now = drain_then_silence(&mut p, Duration::from_secs(120));
        assert_eq!(p.a.phase(), Phase::Terminated, "still draining at {now:?}");
        assert!(p.a.peer().is_some_and(|peer| peer.reliable));
        let end = p.a.termination().unwrap();
        assert_eq!(end.code, ErrorCode::TIMEOUT);
        assert!(
            end.message.contains("DRAINED never came"),
            "{}",
            end.message
        );
    }

    #[test]
    fn a_silent_peer_is_reported_and_probed_but_keeps_its_session() {
        let mut p = Pair::new();
        let id = p.a.open("svc", b"").unwrap();
        p.run();
        p.b.accept(id, b"").unwrap();
        p.run();
        let mut now = p.now;
        // Five minutes of silence (a paused VM), in steps that do not look like our own pause.
        for _ in 0..300 {
            now = now + Duration::from_secs(1);
            p.a.handle_timeout(now);
            let n = p.a.poll_transmit().len(); // PINGs go nowhere
            p.a.advance_output(now, n);
        }
        assert_eq!(p.a.phase(), Phase::Established);
        assert!(p.a.has_stream(id));
        let silent: Vec<Event> = events(&mut p.a)
            .into_iter()
            .filter(|e| matches!(e, Event::PeerSilent { .. }))
            .collect();
        assert_eq!(silent.len(), 1, "reported once per silence");
        assert_eq!(p.a.counters().silences, 1);
        assert!(p.a.counters().pings_sent >= 10, "still probing");
        // The VM resumes: its first frame ends the silence.
        p.now = now;
        p.b.ping(now).unwrap();
        p.run();
        assert!(p
            .a_events
            .iter()
            .any(|e| matches!(e, Event::PeerBack { silent_for } if *silent_for >= Duration::from_secs(250))));
        assert!(p.a.has_stream(id));
    }

    #[test]
    fn a_long_gap_is_a_pause_not_a_dead_peer() {
        let mut p = Pair::new();
        p.run();
        let later = p.now + Duration::from_secs(3600);
        p.a.handle_timeout(later);
        assert_eq!(p.a.phase(), Phase::Established);
        assert_eq!(p.a.counters().pauses, 1);
    }

    fn raw(kind: Kind, flags: Flags, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        wire::emit_frame(&mut out, kind, flags, stream, payload, kind == Kind::Hello);
        out
    }

    fn events(mux: &mut Mux) -> Vec<Event> {
        std::iter::from_fn(|| mux.poll_event()).collect()
    }

    /// Established pair, events drained.
    fn established() -> Pair {
        let mut p = Pair::new();
        p.run();
        p.a_events.clear();
        p.b_events.clear();
        p
    }

    fn open_payload(service: &str) -> Vec<u8> {
        let mut out = Vec::new();
        Open {
            initial_credit: 1024,
            service,
            args: b"",
        }
        .emit(&mut out);
        out
    }

    #[test]
    fn opening_past_the_stream_limit_is_refused_and_the_session_survives() {
        let mut server = Config::new(Role::Server, 2);
        server.max_streams = 2;
        let mut p = Pair::with(Config::new(Role::Client, 1), server);
        p.run();
        for id in [1u32, 3, 5] {
            p.b.handle_input(
                p.now,
                &raw(Kind::Open, Flags::empty(), id, &open_payload("svc")),
            );
        }
        let incoming = events(&mut p.b)
            .iter()
            .filter(|e| matches!(e, Event::Incoming { .. }))
            .count();
        assert_eq!(incoming, 2);
        let out = p.b.poll_transmit().to_vec();
        let mut d = crate::codec::Decoder::new(1 << 20);
        let mut input = &out[..];
        let mut refusals = Vec::new();
        while let Some(Ok(f)) = d.decode(&mut input) {
            if f.kind == Kind::OpenErr as u8 {
                refusals.push((
                    f.stream,
                    ErrorBody::parse(Kind::OpenErr, &f.payload).unwrap().code,
                ));
            }
        }
        assert_eq!(refusals, vec![(5, ErrorCode::STREAM_LIMIT)]);
        assert_eq!(p.b.phase(), Phase::Established);
        assert_eq!(p.b.counters().opens_refused, 1);
    }

    #[test]
    fn an_oversized_length_ends_the_session_with_frame_too_large() {
        let mut p = established();
        let mut header = [0u8; wire::HEADER_LEN];
        wire::Header {
            kind: Kind::Data,
            flags: Flags::empty(),
            stream: 1,
            len: 1 << 30,
        }
        .emit(&mut header);
        p.b.handle_input(p.now, &header);
        assert_eq!(p.b.phase(), Phase::Terminated);
        let t = p.b.termination().unwrap();
        assert_eq!(t.code, ErrorCode::FRAME_TOO_LARGE);
        assert!(!t.by_peer);
        // The peer learns why.
        p.run();
        assert_eq!(p.a.termination().unwrap().code, ErrorCode::FRAME_TOO_LARGE);
        assert!(p.a.termination().unwrap().by_peer);
        assert!(p.b.buffered().decoder <= wire::HEADER_LEN);
    }

    #[test]
    fn an_unknown_kind_or_flag_is_a_protocol_error() {
        for (kind, flags) in [(0x42u8, 0u16), (Kind::Data as u8, 0x8000)] {
            let mut p = established();
            let mut bytes = raw(Kind::Data, Flags::empty(), 1, b"x");
            bytes[3] = kind;
            bytes[4..6].copy_from_slice(&flags.to_le_bytes());
            let crc = wire::crc32c(&bytes[..16]).to_le_bytes();
            bytes[16..20].copy_from_slice(&crc);
            p.b.handle_input(p.now, &bytes);
            assert_eq!(
                p.b.termination().unwrap().code,
                ErrorCode::PROTOCOL,
                "kind {kind:#x} flags {flags:#x}"
            );
        }
    }

    #[test]
    fn data_on_a_never_opened_stream_is_a_protocol_error_but_on_an_ended_one_is_dropped() {
        let mut p = established();
        let id = p.a.open("svc", b"").unwrap();
        p.run();
        let (bid, _, _) = p.take_incoming();
        p.b.accept(bid, b"").unwrap();
        p.run();
        p.a.reset(id, ErrorCode::CANCEL, "").unwrap();
        p.run();
        assert!(!p.b.has_stream(id));
        p.b.handle_input(p.now, &raw(Kind::Data, Flags::empty(), id, b"late"));
        assert_eq!(p.b.phase(), Phase::Established);
        assert_eq!(p.b.counters().stale_frames, 1);
        p.b.handle_input(p.now, &raw(Kind::Data, Flags::empty(), 99, b"never"));
        assert_eq!(p.b.termination().unwrap().code, ErrorCode::PROTOCOL);
    }

    #[test]
    fn a_ping_flood_costs_one_pong() {
        let mut p = established();
        let mut flood = Vec::new();
        for i in 0..10_000u64 {
            flood.extend(raw(Kind::Ping, Flags::empty(), 0, &i.to_le_bytes()));
        }
        p.b.handle_input(p.now, &flood);
        let out = p.b.poll_transmit().to_vec();
        let mut d = crate::codec::Decoder::new(1 << 20);
        let mut input = &out[..];
        let pongs: Vec<u64> = std::iter::from_fn(|| d.decode(&mut input))
            .filter_map(Result::ok)
            .filter(|f| f.kind == Kind::Pong as u8)
            .map(|f| u64::from_le_bytes(f.payload[..8].try_into().unwrap()))
            .collect();
        assert_eq!(pongs, vec![9_999]);
    }

    #[test]
    fn a_peer_that_never_reads_gets_overload_not_unbounded_memory() {
        let mut p = established();
        // The peer opens stream after stream past the limit and never reads the refusals.
        let mut server = Config::new(Role::Server, 2);
        server.max_streams = 0;
        server.max_pending_control = 100;
        server.output_high_water = 1024;
        let mut b = Mux::new(server, p.now);
        let hello = Hello {
            role: Role::Client,
            version: 1,
            features: Features::empty(),
            max_frame: 1 << 16,
            max_streams: 8,
            nonce: 5,
            boot_id: [0; 16],
        };
        b.handle_input(p.now, &raw(Kind::Hello, Flags::REPLY, 0, &hello.to_bytes()));
        for i in 0..1000u32 {
            b.handle_input(
                p.now,
                &raw(Kind::Open, Flags::empty(), 2 * i + 1, &open_payload("svc")),
            );
            let _ = b.poll_transmit(); // built, but the link never takes it
            if b.phase() == Phase::Terminated {
                break;
            }
        }
        assert_eq!(b.termination().unwrap().code, ErrorCode::OVERLOAD);
        assert!(
            b.buffered().output < 64 << 10,
            "output {}",
            b.buffered().output
        );
        p.a.goaway(ErrorCode::NORMAL, "");
    }

    #[test]
    fn frames_before_hello_are_stale_and_dropped() {
        let mut b = Mux::new(Config::new(Role::Server, 2), Instant::ZERO);
        b.handle_input(
            Instant::ZERO,
            &raw(Kind::Data, Flags::empty(), 1, b"old session"),
        );
        b.handle_input(Instant::ZERO, &raw(Kind::Close, Flags::empty(), 1, b""));
        assert_eq!(b.phase(), Phase::AwaitingHello);
        assert_eq!(b.counters().stale_frames, 2);
    }

    #[test]
    fn a_new_nonce_means_the_peer_restarted() {
        let mut p = established();
        let id = p.a.open("svc", b"").unwrap();
        p.run();
        let (bid, _, _) = p.take_incoming();
        p.b.accept(bid, b"").unwrap();
        p.run();
        // A fresh client on the same port: new nonce.
        let mut fresh = Mux::new(Config::new(Role::Client, 999), p.now);
        let hello = fresh.poll_transmit().to_vec();
        p.b.handle_input(p.now, &hello);
        let ev = events(&mut p.b);
        assert!(ev.iter().any(
            |e| matches!(e, Event::Reset { id: i, code: ErrorCode::LINK_LOST, .. } if *i == id)
        ));
        assert!(ev.iter().any(|e| matches!(
            e,
            Event::Established {
                restarted: true,
                ..
            }
        )));
        assert_eq!(p.b.counters().peer_restarts, 1);
        assert_eq!(p.b.stream_count(), 0);
    }

    #[test]
    fn same_roles_and_other_versions_are_refused_clearly() {
        let mut p = Pair::with(Config::new(Role::Client, 1), Config::new(Role::Client, 2));
        p.run();
        assert_eq!(p.a.termination().unwrap().code, ErrorCode::ROLE_CONFLICT);

        let mut b = Mux::new(Config::new(Role::Server, 2), Instant::ZERO);
        let mut hello = Hello {
            role: Role::Client,
            version: 7,
            features: Features::empty(),
            max_frame: 1 << 16,
            max_streams: 8,
            nonce: 5,
            boot_id: [0; 16],
        };
        b.handle_input(
            Instant::ZERO,
            &raw(Kind::Hello, Flags::empty(), 0, &hello.to_bytes()),
        );
        let t = b.termination().unwrap();
        assert_eq!(t.code, ErrorCode::VERSION);
        assert_eq!(
            t.message,
            "peer speaks vmux protocol version 7, this side speaks version 1"
        );
        hello.version = 1;
        let _ = hello;
    }

    #[test]
    fn a_lost_hello_is_resent_until_answered() {
        let mut a = Mux::new(Config::new(Role::Client, 1), Instant::ZERO);
        let first = a.poll_transmit().len();
        a.advance_output(Instant::ZERO, first); // lost on the wire
        assert_eq!(a.poll_at(), Some(Instant::from_millis(1000)));
        a.handle_timeout(Instant::from_millis(1000));
        let again = a.poll_transmit().to_vec();
        assert_eq!(again.len(), first);
        let mut b = Mux::new(Config::new(Role::Server, 2), Instant::ZERO);
        let b_hello = b.poll_transmit().len();
        b.advance_output(Instant::ZERO, b_hello); // also lost
        b.handle_input(Instant::from_millis(1000), &again);
        let answer = b.poll_transmit().to_vec();
        a.handle_input(Instant::from_millis(1000), &answer);
        assert_eq!(a.phase(), Phase::Established);
        assert_eq!(b.phase(), Phase::Established);
    }

    #[test]
    fn idle_streams_hold_only_the_minimum_window() {
        let mut server = Config::new(Role::Server, 2);
        server.min_window = 4 << 10;
        server.stream_window = 64 << 10;
        server.max_buffered = 64 << 10;
        let mut p = Pair::with(Config::new(Role::Client, 1), server);
        let idle: Vec<StreamId> = (0..100).map(|_| p.a.open("svc", b"").unwrap()).collect();
        let active = p.a.open("svc", b"").unwrap();
        p.run();
        for _ in 0..101 {
            let (id, _, _) = p.take_incoming();
            p.b.accept(id, b"").unwrap();
        }
        p.run();
        assert_eq!(p.b.buffered().granted, 101 * (4 << 10));
        assert_eq!(
            p.b.buffered().budget,
            0,
            "idle streams take nothing from the budget"
        );
        assert!(idle.iter().all(|id| p.a.send_capacity(*id) == 4 << 10));
        // The one busy stream still grows to a full window from the budget.
        p.a.send(active, &[7u8; 4 << 10]).unwrap();
        p.run();
        assert_eq!(Pair::drain_rx(&mut p.b, active).len(), 4 << 10);
        p.run();
        assert_eq!(p.a.send_capacity(active), 64 << 10);
        assert_eq!(p.b.buffered().budget, 60 << 10);
    }

    /// Two streams whose receiver's budget fits one grown window: (pair, first, second), with
    /// `first` grown to 20 KiB and `second` starved at its 4 KiB minimum.
    fn budget_for_one_window() -> (Pair, StreamId, StreamId) {
        let mut server = Config::new(Role::Server, 2);
        server.min_window = 4 << 10;
        server.stream_window = 20 << 10;
        server.max_buffered = 16 << 10;
        let mut p = Pair::with(Config::new(Role::Client, 1), server);
        let first = p.a.open("svc", b"").unwrap();
        let second = p.a.open("svc", b"").unwrap();
        p.run();
        for _ in 0..2 {
            let (id, _, _) = p.take_incoming();
            p.b.accept(id, b"").unwrap();
        }
        p.run();
        for id in [first, second] {
            assert_eq!(
                p.a.send_capacity(id),
                4 << 10,
                "every stream starts with its minimum"
            );
            p.a.send(id, &[1u8; 4 << 10]).unwrap();
            p.run();
            assert_eq!(Pair::drain_rx(&mut p.b, id).len(), 4 << 10);
            p.run();
        }
        assert_eq!(p.a.send_capacity(first), 20 << 10);
        assert_eq!(p.a.send_capacity(second), 4 << 10, "the budget is spent");
        assert_eq!(p.b.buffered().budget, 16 << 10);
        (p, first, second)
    }

    #[test]
    fn consumed_budget_goes_to_a_starved_stream_first() {
        let (mut p, first, second) = budget_for_one_window();
        p.a.send(first, &[1u8; 20 << 10]).unwrap();
        p.run();
        assert_eq!(Pair::drain_rx(&mut p.b, first).len(), 20 << 10);
        p.run();
        assert_eq!(
            p.a.send_capacity(second),
            20 << 10,
            "the starved stream is served"
        );
        assert_eq!(
            p.a.send_capacity(first),
            4 << 10,
            "the busy stream waits its turn"
        );
        assert!(p.b.buffered().budget <= 16 << 10);
    }

    #[test]
    fn an_ended_stream_frees_budget_for_a_starved_one() {
        let (mut p, first, second) = budget_for_one_window();
        p.a.reset(first, ErrorCode::CANCEL, "").unwrap();
        p.run();
        assert_eq!(p.a.send_capacity(second), 20 << 10);
    }

    #[test]
    fn a_restarted_peer_gets_a_fresh_session_even_while_draining() {
        // A serial line: the old host said GOAWAY and vanished before DRAINED; a new host
        // (new nonce) must find an established session, not the old shutdown.
        let now = Instant::from_millis(5);
        let mut c = Mux::new(Config::new(Role::Server, 30), now);
        let mut old = Mux::new(Config::new(Role::Client, 31), now);
        let hello = old.poll_transmit().to_vec();
        c.handle_input(now, &hello);
        c.goaway(ErrorCode::NORMAL, "");
        assert_eq!(c.phase(), Phase::Draining);
        let mut fresh = Mux::new(Config::new(Role::Client, 32), now);
        let hello = fresh.poll_transmit().to_vec();
        c.handle_input(now, &hello);
        assert_eq!(c.phase(), Phase::Established);
        let answer = c.poll_transmit().to_vec();
        fresh.handle_input(now, &answer);
        let ev = events(&mut fresh);
        assert!(
            ev.iter().all(|e| !matches!(e, Event::GoAway { .. })),
            "{ev:?}"
        );
        assert!(fresh.open("svc", b"").is_ok());
    }

    #[test]
    fn the_hello_retry_deadline_moves_on_while_output_is_stuck() {
        // A virtio-serial port with no host: the first HELLO cannot be written.
        let mut a = Mux::new(Config::new(Role::Server, 1), Instant::ZERO);
        assert!(!a.poll_transmit().is_empty());
        for second in 1..=5u64 {
            let now = Instant::from_millis(1000 * second);
            a.handle_timeout(now);
            assert_eq!(
                a.poll_at(),
                Some(now + Duration::from_secs(1)),
                "the deadline is in the future"
            );
        }
        // Still only the one HELLO waiting, not five.
        let waiting = a.poll_transmit().len();
        assert_eq!(waiting, wire::HEADER_LEN + Hello::LEN + wire::TRAILER_LEN);
    }

    #[test]
    fn refusals_by_the_application_count_toward_the_control_backlog() {
        // The peer opens one stream at a time (never near the stream limit), the application
        // refuses each, and the peer never reads: the refusals must not queue without bound.
        let mut p = established();
        let mut server = Config::new(Role::Server, 2);
        server.max_pending_control = 100;
        server.output_high_water = 1024;
        let mut b = Mux::new(server, p.now);
        let hello = Hello {
            role: Role::Client,
            version: 1,
            features: Features::empty(),
            max_frame: 1 << 16,
            max_streams: 8,
            nonce: 5,
            boot_id: [0; 16],
        };
        b.handle_input(p.now, &raw(Kind::Hello, Flags::REPLY, 0, &hello.to_bytes()));
        for i in 0..1000u32 {
            let id = 2 * i + 1;
            b.handle_input(
                p.now,
                &raw(Kind::Open, Flags::empty(), id, &open_payload("svc")),
            );
            let _ = b.reject(id, ErrorCode::UNKNOWN_SERVICE, "no service named svc");
            let _ = b.poll_transmit(); // built, but the link never takes it
            if b.phase() == Phase::Terminated {
                break;
            }
        }
        assert_eq!(b.termination().unwrap().code, ErrorCode::OVERLOAD);
        p.a.goaway(ErrorCode::NORMAL, "");
    }

    #[test]
    fn resetting_a_stream_whose_open_is_unsent_withdraws_the_open() {
        let mut p = established();
        // The OPEN is only queued when the application gives up on the stream.
        let id = p.a.open("svc", b"").unwrap();
        p.a.reset(id, ErrorCode::CANCEL, "gave up").unwrap();
        let later = p.a.open("svc", b"").unwrap();
        p.run();
        // The peer never heard of the first stream and did not take a RESET for it as a
        // protocol error; the next stream opens normally.
        assert_eq!(p.b.phase(), Phase::Established);
        let (bid, _, _) = p.take_incoming();
        assert_eq!(bid, later);
        assert_eq!(p.b.counters().resets_received, 0);
    }
}
