//! Two muxes joined by a link that chunks and delays bytes arbitrarily, driven by operations
//! from both sides. Whatever the order, every byte a stream delivers is a byte that was sent
//! on it, in order, and neither side panics. With `reliable` (serial configs: CRCs and
//! retransmission) the link may also flip, drop and insert bytes, and the same must hold.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use std::time::Duration;
use vmux::mux::{Config, Event, Mux};
use vmux::time::Instant;
use vmux::wire::{ErrorCode, Role};

#[derive(Debug, Arbitrary)]
enum Op {
    Open {
        side: bool,
    },
    AcceptAll {
        side: bool,
    },
    Send {
        side: bool,
        pick: u8,
        len: u16,
    },
    Recv {
        side: bool,
        pick: u8,
        release: bool,
    },
    Close {
        side: bool,
        pick: u8,
    },
    Reset {
        side: bool,
        pick: u8,
    },
    Move {
        side: bool,
        n: u16,
    },
    Tick {
        millis: u8,
    },
    GoAway {
        side: bool,
    },
    /// Moves up to `n` bytes, damaged at `at` (only with `reliable`; otherwise a plain move).
    MoveDamaged {
        side: bool,
        n: u16,
        at: u16,
        how: u8,
    },
}

#[derive(Debug, Arbitrary)]
struct Input {
    reliable: bool,
    ops: Vec<Op>,
}

struct Side {
    mux: Mux,
    ids: Vec<u32>,
    incoming: Vec<u32>,
    /// Per stream: bytes sent so far (the pattern is the byte index mod 251).
    sent: HashMap<u32, u64>,
    received: HashMap<u32, u64>,
}

fuzz_target!(|input: Input| {
    let Input { reliable, ops } = input;
    // Both muxes build valid CRCs; damage must be caught by them as in a real build.
    vmux::codec::FUZZ_CHECK_CRCS.store(true, std::sync::atomic::Ordering::Relaxed);
    let now = Instant::from_millis(1);
    let cfg = |role| {
        let mut c = if reliable {
            Config::serial(role, role as u64)
        } else {
            Config::new(role, role as u64)
        };
        c.retransmit_limit = 8 << 10;
        c.stream_window = 4 << 10;
        c.min_window = 1 << 10;
        c.max_buffered = 16 << 10;
        c.chunk = 1 << 10;
        c
    };
    let mut sides = [
        Side {
            mux: Mux::new(cfg(Role::Client), now),
            ids: vec![],
            incoming: vec![],
            sent: HashMap::new(),
            received: HashMap::new(),
        },
        Side {
            mux: Mux::new(cfg(Role::Server), now),
            ids: vec![],
            incoming: vec![],
            sent: HashMap::new(),
            received: HashMap::new(),
        },
    ];
    let mut now = now;
    for op in ops {
        match op {
            Op::Open { side } => {
                let s = &mut sides[usize::from(side)];
                if let Ok(id) = s.mux.open("svc", b"") {
                    s.ids.push(id);
                }
            }
            Op::AcceptAll { side } => {
                let s = &mut sides[usize::from(side)];
                for id in std::mem::take(&mut s.incoming) {
                    if s.mux.accept(id, b"").is_ok() {
                        s.ids.push(id);
                    }
                }
            }
            Op::Send { side, pick, len } => {
                let s = &mut sides[usize::from(side)];
                if let Some(&id) = s.ids.get(usize::from(pick) % s.ids.len().max(1)) {
                    let start = *s.sent.get(&id).unwrap_or(&0);
                    let data: Vec<u8> = (start..start + u64::from(len))
                        .map(|i| (i % 251) as u8)
                        .collect();
                    if let Ok(n) = s.mux.send(id, &data) {
                        *s.sent.entry(id).or_default() += n as u64;
                    }
                }
            }
            Op::Recv {
                side,
                pick,
                release,
            } => {
                let s = &mut sides[usize::from(side)];
                if let Some(&id) = s.ids.get(usize::from(pick) % s.ids.len().max(1)) {
                    while let Some(chunk) = s.mux.recv(id) {
                        let start = *s.received.get(&id).unwrap_or(&0);
                        for (k, b) in chunk.iter().enumerate() {
                            assert_eq!(
                                *b,
                                ((start + k as u64) % 251) as u8,
                                "stream {id} corrupted"
                            );
                        }
                        *s.received.entry(id).or_default() += chunk.len() as u64;
                        if release {
                            s.mux.release(id, chunk.len());
                        }
                    }
                }
            }
            Op::Close { side, pick } => {
                let s = &mut sides[usize::from(side)];
                if let Some(&id) = s.ids.get(usize::from(pick) % s.ids.len().max(1)) {
                    let _ = s.mux.close(id);
                }
            }
            Op::Reset { side, pick } => {
                let s = &mut sides[usize::from(side)];
                if let Some(&id) = s.ids.get(usize::from(pick) % s.ids.len().max(1)) {
                    let _ = s.mux.reset(id, ErrorCode::CANCEL, "");
                }
            }
            Op::Move { side, n } => {
                let (from, to) = if side { (1, 0) } else { (0, 1) };
                let bytes = {
                    let out = sides[from].mux.poll_transmit();
                    out[..out.len().min(usize::from(n))].to_vec()
                };
                sides[from].mux.advance_output(now, bytes.len());
                sides[to].mux.handle_input(now, &bytes);
            }
            Op::MoveDamaged { side, n, at, how } => {
                let (from, to) = if side { (1, 0) } else { (0, 1) };
                let mut bytes = {
                    let out = sides[from].mux.poll_transmit();
                    out[..out.len().min(usize::from(n))].to_vec()
                };
                sides[from].mux.advance_output(now, bytes.len());
                if reliable && !bytes.is_empty() {
                    let at = usize::from(at) % bytes.len();
                    match how % 3 {
                        0 => bytes[at] ^= 1 << (how % 8),
                        1 => {
                            drop(bytes.drain(at..(at + 1 + usize::from(how % 8)).min(bytes.len())))
                        }
                        _ => drop(bytes.splice(at..at, [0xF7, 0x4D, how, how.wrapping_mul(31)])),
                    }
                }
                sides[to].mux.handle_input(now, &bytes);
            }
            Op::Tick { millis } => {
                now = now + Duration::from_millis(u64::from(millis));
                for s in sides.iter_mut() {
                    s.mux.handle_timeout(now);
                }
            }
            Op::GoAway { side } => sides[usize::from(side)].mux.goaway(ErrorCode::NORMAL, ""),
        }
        for s in sides.iter_mut() {
            while let Some(event) = s.mux.poll_event() {
                if let Event::Incoming { id, .. } = event {
                    s.incoming.push(id);
                }
            }
            let b = s.mux.buffered();
            let bound = (16 << 10) + s.mux.stream_count() * (1 << 10);
            assert!(b.budget <= 16 << 10);
            assert!(b.granted <= bound);
            assert!(b.rx <= bound);
        }
        // Both sides agree: nobody received more than was sent.
        for (a, b) in [(0, 1), (1, 0)] {
            for (id, got) in &sides[a].received {
                assert!(
                    *got <= *sides[b].sent.get(id).unwrap_or(&0),
                    "stream {id} received more than was sent"
                );
            }
        }
    }
});
