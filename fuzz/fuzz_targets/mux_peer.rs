//! A hostile peer: a structured sequence of frames (with valid CRCs, so this target is just as
//! meaningful outside fuzz builds) and local operations against one mux. The mux must never
//! panic and its memory must stay within its configured bounds. An odd number of operations
//! runs the session with `RELIABLE`: the peer's frames are numbered in order and it may send
//! any ACK (bogus numbers, resend requests) against the retransmit buffer.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::time::Duration;
use vmux::mux::{Config, Mux};
use vmux::time::Instant;
use vmux::wire::{emit_frame, ErrorCode, Features, Flags, Hello, Kind, Role};

#[derive(Debug, Arbitrary)]
enum Op {
    /// A frame from the peer: raw kind, flags, stream and payload.
    Frame {
        kind: u8,
        flags: u16,
        stream: u32,
        payload: Vec<u8>,
        trailer: bool,
    },
    /// A well-formed OPEN from the peer.
    Open {
        stream: u32,
        credit: u32,
    },
    /// DATA from the peer.
    Data {
        stream: u32,
        len: u16,
    },
    /// CREDIT from the peer.
    Credit {
        stream: u32,
        limit: u32,
    },
    /// Raw bytes from the peer.
    Bytes(Vec<u8>),
    /// An ACK from the peer (a protocol error unless `RELIABLE`).
    Ack {
        next: u16,
        resend: bool,
    },
    /// Local operations.
    LocalOpen,
    Accept {
        pick: u8,
    },
    Send {
        pick: u8,
        len: u16,
    },
    Recv {
        pick: u8,
    },
    Close {
        pick: u8,
    },
    Reset {
        pick: u8,
    },
    GoAway,
    /// The link takes this many bytes of output.
    Transmit {
        n: u16,
    },
    /// Time passes.
    Tick {
        millis: u16,
    },
}

fn frame(kind: u8, flags: u16, stream: u32, payload: &[u8], trailer: bool) -> Vec<u8> {
    let mut out = Vec::new();
    // Build with a valid kind first, then patch the raw kind and flags and fix the CRC.
    emit_frame(
        &mut out,
        Kind::Data,
        Flags::empty(),
        stream.max(1),
        payload,
        trailer,
    );
    out[3] = kind;
    out[4..6].copy_from_slice(&flags.to_le_bytes());
    out[8..12].copy_from_slice(&stream.to_le_bytes());
    let crc = vmux::wire::crc32c(&out[..16]).to_le_bytes();
    out[16..20].copy_from_slice(&crc);
    out
}

fuzz_target!(|ops: Vec<Op>| {
    let reliable = ops.len() % 2 == 1;
    let mut config = Config::new(Role::Server, 1);
    config.reliable = reliable;
    config.retransmit_limit = 8 << 10;
    config.max_streams = 8;
    config.stream_window = 8 << 10;
    config.min_window = 2 << 10;
    config.max_buffered = 32 << 10;
    config.max_pending_control = 64;
    config.output_high_water = 4 << 10;
    let mut now = Instant::from_millis(1);
    let mut mux = Mux::new(config.clone(), now);
    let hello = Hello {
        role: Role::Client,
        version: 1,
        features: if reliable {
            Features::RELIABLE
        } else {
            Features::empty()
        },
        max_frame: 1 << 16,
        max_streams: 16,
        nonce: 7,
        boot_id: [0; 16],
    };
    let mut bytes = Vec::new();
    emit_frame(
        &mut bytes,
        Kind::Hello,
        Flags::empty(),
        0,
        &hello.to_bytes(),
        true,
    );
    mux.handle_input(now, &bytes);
    let mut incoming = Vec::new();
    let mut streams: Vec<u32> = Vec::new();
    // The peer numbers its frames in order when RELIABLE is on (garbage may break the order).
    let mut seq: u16 = 0;
    let mut numbered = |mut f: Vec<u8>| {
        if reliable {
            vmux::wire::stamp_seq(&mut f, seq);
            seq = seq.wrapping_add(1);
        }
        f
    };
    for op in ops {
        match op {
            Op::Frame {
                kind,
                flags,
                stream,
                payload,
                trailer,
            } => {
                mux.handle_input(
                    now,
                    &numbered(frame(kind, flags, stream, &payload, trailer)),
                );
            }
            Op::Open { stream, credit } => {
                let mut p = credit.to_le_bytes().to_vec();
                p.extend_from_slice(&[3, b's', b'v', b'c']);
                mux.handle_input(
                    now,
                    &numbered(frame(Kind::Open as u8, 0, stream, &p, false)),
                );
            }
            Op::Data { stream, len } => {
                let p = vec![0xAB; usize::from(len)];
                mux.handle_input(
                    now,
                    &numbered(frame(Kind::Data as u8, 0, stream, &p, false)),
                );
            }
            Op::Credit { stream, limit } => {
                mux.handle_input(
                    now,
                    &numbered(frame(
                        Kind::Credit as u8,
                        0,
                        stream,
                        &limit.to_le_bytes(),
                        false,
                    )),
                );
            }
            Op::Bytes(b) => mux.handle_input(now, &b),
            Op::Ack { next, resend } => {
                let flags = if resend { Flags::RESEND.bits() } else { 0 };
                let f = frame(Kind::Ack as u8, flags, 0, &next.to_le_bytes(), reliable);
                mux.handle_input(now, &f);
            }
            Op::LocalOpen => {
                if let Ok(id) = mux.open("svc", b"args") {
                    streams.push(id);
                }
            }
            Op::Accept { pick } => {
                if !incoming.is_empty() {
                    let id: u32 = incoming.remove(usize::from(pick) % incoming.len());
                    if mux.accept(id, b"").is_ok() {
                        streams.push(id);
                    }
                }
            }
            Op::Send { pick, len } => {
                if let Some(&id) = streams.get(usize::from(pick) % streams.len().max(1)) {
                    let _ = mux.send(id, &vec![1u8; usize::from(len)]);
                }
            }
            Op::Recv { pick } => {
                if let Some(&id) = streams.get(usize::from(pick) % streams.len().max(1)) {
                    while let Some(chunk) = mux.recv(id) {
                        mux.release(id, chunk.len());
                    }
                }
            }
            Op::Close { pick } => {
                if let Some(&id) = streams.get(usize::from(pick) % streams.len().max(1)) {
                    let _ = mux.close(id);
                }
            }
            Op::Reset { pick } => {
                if let Some(&id) = streams.get(usize::from(pick) % streams.len().max(1)) {
                    let _ = mux.reset(id, ErrorCode::CANCEL, "");
                }
            }
            Op::GoAway => mux.goaway(ErrorCode::NORMAL, ""),
            Op::Transmit { n } => {
                let len = mux.poll_transmit().len().min(usize::from(n));
                mux.advance_output(now, len);
            }
            Op::Tick { millis } => {
                now = now + Duration::from_millis(u64::from(millis));
                mux.handle_timeout(now);
            }
        }
        while let Some(event) = mux.poll_event() {
            if let vmux::mux::Event::Incoming { id, .. } = event {
                incoming.push(id);
            }
        }
        let b = mux.buffered();
        let bound = config.max_buffered + mux.stream_count() * config.min_window as usize;
        assert!(
            b.budget <= config.max_buffered,
            "budget {} over max_buffered",
            b.budget
        );
        assert!(b.granted <= bound, "granted {} over {bound}", b.granted);
        assert!(b.rx <= bound, "rx {} over {bound}", b.rx);
        // The retransmit buffer: its limit plus the frame that crossed it (and a last GOAWAY).
        let retransmit_bound = config.retransmit_limit + 2 * ((64 << 10) + 24);
        assert!(
            b.retransmit <= retransmit_bound,
            "retransmit buffer {} over {retransmit_bound}",
            b.retransmit
        );
        assert!(b.decoder <= 20 + (64 << 10) + 4);
        assert!(mux.stream_count() <= 8 + streams.len());
    }
});
