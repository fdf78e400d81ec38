//! A seeded two-peer simulation of the sans-I/O mux with a simulated clock: random chunking and
//! delays on the link, streams opened from both sides, credit exhaustion by slow readers,
//! half-closes, resets, a graceful GOAWAY at the end, and keepalive timeouts on a dead link.
//! Noisy runs put a fault injector on the link (flipped bits, dropped bytes, inserted garbage)
//! and check that retransmission (`Config::serial`) still delivers every byte exactly once.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;
use vmux::mux::{Config, Event, Mux, Phase, StreamId};
use vmux::time::Instant;
use vmux::wire::{ErrorCode, Role};

/// xorshift64*, deterministic per seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Byte `i` of the stream opened as number `tag`: both ends can regenerate it.
fn pattern(tag: u64, i: u64) -> u8 {
    (tag.wrapping_mul(31).wrapping_add(i.wrapping_mul(7)) ^ (i >> 8)) as u8
}

/// One direction of the link: chunks in flight with their arrival times.
#[derive(Default)]
struct Wire {
    in_flight: VecDeque<(Instant, Vec<u8>)>,
    cut: bool,
    /// Chance in 10,000 that a chunk taken from the sender gets one fault.
    fault_rate: u64,
    faults: Faults,
}

/// Faults injected on one direction of the link.
#[derive(Default, Debug, Clone, Copy)]
struct Faults {
    flipped: u64,
    dropped: u64,
    inserted: u64,
}

impl Faults {
    fn total(&self) -> u64 {
        self.flipped + self.dropped + self.inserted
    }
}

impl Wire {
    /// Damages `bytes` once with the wire's fault rate: flips a bit, drops 1-8 bytes, or inserts
    /// 1-24 bytes of garbage (a quarter of which start with the frame magic).
    fn damage(&mut self, rng: &mut Rng, bytes: &mut Vec<u8>) {
        if bytes.is_empty() || rng.below(10_000) >= self.fault_rate {
            return;
        }
        let at = rng.below(bytes.len() as u64) as usize;
        match rng.below(3) {
            0 => {
                bytes[at] ^= 1 << rng.below(8);
                self.faults.flipped += 1;
            }
            1 => {
                let n = (1 + rng.below(8) as usize).min(bytes.len() - at);
                bytes.drain(at..at + n);
                self.faults.dropped += 1;
            }
            _ => {
                let n = 1 + rng.below(24) as usize;
                let mut garbage: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                if rng.chance(25) {
                    garbage.splice(0..0, [0xF7, 0x4D]);
                }
                bytes.splice(at..at, garbage);
                self.faults.inserted += 1;
            }
        }
    }
}

/// What one side does with one stream.
#[derive(Default)]
struct Plan {
    tag: u64,
    to_send: u64,
    sent: u64,
    received: u64,
    closed_write: bool,
    peer_closed: bool,
    reset: bool,
    done: bool,
    /// Bytes taken from the mux but not yet "consumed" (a slow reader).
    unconsumed: u64,
}

struct Peer {
    mux: Mux,
    plans: BTreeMap<StreamId, Plan>,
    /// Streams this side opened that the peer has not answered yet, by tag.
    opening: BTreeMap<StreamId, u64>,
    errors: Vec<String>,
}

impl Peer {
    fn new(config: Config, now: Instant) -> Peer {
        Peer {
            mux: Mux::new(config, now),
            plans: BTreeMap::new(),
            opening: BTreeMap::new(),
            errors: Vec::new(),
        }
    }

    fn open(&mut self, tag: u64, size: u64) {
        if let Ok(id) = self.mux.open("sim", &tag.to_le_bytes()) {
            self.opening.insert(id, size);
            self.plans.insert(
                id,
                Plan {
                    tag,
                    to_send: size,
                    ..Plan::default()
                },
            );
        }
    }

    fn handle_events(&mut self, rng: &mut Rng, sizes: &BTreeMap<u64, (u64, u64)>) {
        while let Some(event) = self.mux.poll_event() {
            match event {
                Event::Incoming { id, args, .. } => {
                    let tag = u64::from_le_bytes(args[..8].try_into().unwrap());
                    // The acceptor sends the size the plan says for the reverse direction.
                    let back = sizes.get(&tag).map_or(0, |s| s.1);
                    if self.mux.accept(id, b"").is_err() {
                        // The peer reset it in the same batch of input: already gone.
                        continue;
                    }
                    self.plans.insert(
                        id,
                        Plan {
                            tag: tag + 1_000_000,
                            to_send: back,
                            ..Plan::default()
                        },
                    );
                }
                Event::Accepted { id, .. } => {
                    self.opening.remove(&id);
                }
                Event::Refused { id, code, message } => {
                    self.errors
                        .push(format!("stream {id} refused: {code} {message}"));
                }
                Event::Readable { .. } | Event::Writable { .. } | Event::Established { .. } => {}
                Event::PeerClosed { id } => {
                    if let Some(p) = self.plans.get_mut(&id) {
                        p.peer_closed = true;
                    }
                }
                Event::Reset {
                    id, by_peer, code, ..
                } => {
                    if let Some(p) = self.plans.get_mut(&id) {
                        p.reset = true;
                        if !by_peer && code != ErrorCode::CANCEL {
                            self.errors.push(format!("stream {id} failed here: {code}"));
                        }
                    }
                }
                Event::Closed { id } => {
                    if let Some(p) = self.plans.get_mut(&id) {
                        p.done = true;
                    }
                }
                Event::GoAway { .. }
                | Event::Pong { .. }
                | Event::PeerSilent { .. }
                | Event::PeerBack { .. } => {}
                Event::Terminated(t) => {
                    if !t.is_graceful() {
                        self.errors.push(format!("terminated: {t}"));
                    }
                }
            }
        }
        let _ = rng;
    }

    /// Sends, reads (slowly, sometimes) and closes, as the plans say.
    fn work(&mut self, rng: &mut Rng, peer_tag_of: &dyn Fn(u64) -> u64) {
        let ids: Vec<StreamId> = self.plans.keys().copied().collect();
        for id in ids {
            if !self.mux.has_stream(id) {
                continue;
            }
            let p = self.plans.get_mut(&id).unwrap();
            // Send a random piece within the capacity.
            if p.sent < p.to_send {
                let cap = self.mux.send_capacity(id) as u64;
                let n = cap.min(p.to_send - p.sent).min(1 + rng.below(40_000));
                if n > 0 {
                    let data: Vec<u8> = (p.sent..p.sent + n).map(|i| pattern(p.tag, i)).collect();
                    let took = self.mux.send(id, &data).unwrap() as u64;
                    p.sent += took;
                }
            }
            if p.sent == p.to_send && !p.closed_write {
                p.closed_write = self.mux.close(id).is_ok();
            }
            // Read: a slow reader takes data but consumes it later.
            if rng.chance(70) {
                let peer_tag = peer_tag_of(p.tag);
                while let Some(chunk) = self.mux.recv(id) {
                    for (k, b) in chunk.iter().enumerate() {
                        let i = p.received + k as u64;
                        if *b != pattern(peer_tag, i) {
                            self.errors.push(format!("stream {id}: byte {i} corrupted"));
                            break;
                        }
                    }
                    p.received += chunk.len() as u64;
                    p.unconsumed += chunk.len() as u64;
                    if !self.mux.has_stream(id) {
                        break;
                    }
                }
            }
            if p.unconsumed > 0 && rng.chance(60) {
                let n = if rng.chance(50) {
                    p.unconsumed
                } else {
                    1 + rng.below(p.unconsumed)
                };
                self.mux.release(id, n as usize);
                p.unconsumed -= n;
            }
            // Rarely, abort a stream.
            if rng.chance(1) && rng.chance(20) && !p.done {
                p.reset = true;
                let _ = self.mux.reset(id, ErrorCode::CANCEL, "sim abort");
            }
        }
    }
}

struct Sim {
    rng: Rng,
    now: Instant,
    a: Peer,
    b: Peer,
    ab: Wire,
    ba: Wire,
    /// tag -> (bytes opener sends, bytes acceptor sends back)
    sizes: BTreeMap<u64, (u64, u64)>,
}

impl Sim {
    fn new(seed: u64, a_cfg: Config, b_cfg: Config) -> Sim {
        let now = Instant::from_millis(1_000);
        Sim {
            rng: Rng::new(seed),
            now,
            a: Peer::new(a_cfg, now),
            b: Peer::new(b_cfg, now),
            ab: Wire::default(),
            ba: Wire::default(),
            sizes: BTreeMap::new(),
        }
    }

    fn transmit(mux: &mut Mux, wire: &mut Wire, rng: &mut Rng, now: Instant) {
        let out = mux.poll_transmit();
        if out.is_empty() {
            return;
        }
        // The link takes a random amount and splits it into random chunks and delays.
        let take = if rng.chance(20) {
            out.len()
        } else {
            (1 + rng.below(out.len() as u64 * 2)) as usize
        };
        let take = take.min(out.len());
        let mut bytes = out[..take].to_vec();
        mux.advance_output(now, take);
        if wire.cut {
            return;
        }
        wire.damage(rng, &mut bytes);
        let mut off = 0;
        while off < bytes.len() {
            let n = (1 + rng.below(9_000) as usize).min(bytes.len() - off);
            let at = now + Duration::from_micros(rng.below(3_000));
            // Deliver in order: never before the previous chunk.
            let at = wire.in_flight.back().map_or(at, |(last, _)| at.max(*last));
            wire.in_flight.push_back((at, bytes[off..off + n].to_vec()));
            off += n;
        }
    }

    fn deliver(mux: &mut Mux, wire: &mut Wire, now: Instant) {
        while wire.in_flight.front().is_some_and(|(at, _)| *at <= now) {
            let (_, chunk) = wire.in_flight.pop_front().unwrap();
            mux.handle_input(now, &chunk);
        }
    }

    fn step(&mut self) {
        self.now = self.now + Duration::from_micros(100 + self.rng.below(2_000));
        let now = self.now;
        for mux in [&mut self.a.mux, &mut self.b.mux] {
            if mux.poll_at().is_some_and(|at| at <= now) {
                mux.handle_timeout(now);
            }
        }
        Sim::transmit(&mut self.a.mux, &mut self.ab, &mut self.rng, now);
        Sim::transmit(&mut self.b.mux, &mut self.ba, &mut self.rng, now);
        Sim::deliver(&mut self.b.mux, &mut self.ab, now);
        Sim::deliver(&mut self.a.mux, &mut self.ba, now);
        let sizes = &self.sizes;
        self.a.handle_events(&mut self.rng, sizes);
        self.b.handle_events(&mut self.rng, sizes);
        let tag_of = |tag: u64| {
            if tag >= 1_000_000 {
                tag - 1_000_000
            } else {
                tag + 1_000_000
            }
        };
        self.a.work(&mut self.rng, &tag_of);
        self.b.work(&mut self.rng, &tag_of);
        self.a.handle_events(&mut self.rng, sizes);
        self.b.handle_events(&mut self.rng, sizes);
    }
}

fn small_window(role: Role, nonce: u64) -> Config {
    let mut c = Config::new(role, nonce);
    c.stream_window = 32 << 10;
    c.min_window = 4 << 10;
    c.max_buffered = 256 << 10;
    c.chunk = 8 << 10;
    c.output_high_water = 32 << 10;
    c
}

fn run_seed(seed: u64) {
    let sim = Sim::new(
        seed,
        small_window(Role::Client, seed),
        small_window(Role::Server, !seed),
    );
    run_sim(seed, sim);
}

/// A serial-link session (CRCs, retransmission) with small windows.
fn noisy_config(role: Role, nonce: u64) -> Config {
    let mut c = Config::serial(role, nonce);
    c.stream_window = 32 << 10;
    c.min_window = 4 << 10;
    c.max_buffered = 256 << 10;
    c.retransmit_limit = 64 << 10;
    c.min_rto = Duration::from_millis(20);
    c
}

/// Runs one seed over a link that damages `rate` in 10,000 chunks; returns the faults injected
/// the frames retransmitted and the stream bytes verified.
fn run_noisy_seed(seed: u64, rate: u64) -> (Faults, u64, u64) {
    let sim = Sim::new(
        seed,
        noisy_config(Role::Client, seed),
        noisy_config(Role::Server, !seed),
    );
    noisy_totals(run_noisy_sim(seed, rate, sim, End::Graceful))
}

fn run_noisy_sim(seed: u64, rate: u64, mut sim: Sim, end: End) -> Sim {
    sim.ab.fault_rate = rate;
    sim.ba.fault_rate = rate;
    run_sim_ending(seed, sim, end)
}

fn noisy_totals(sim: Sim) -> (Faults, u64, u64) {
    let mut faults = sim.ab.faults;
    faults.flipped += sim.ba.faults.flipped;
    faults.dropped += sim.ba.faults.dropped;
    faults.inserted += sim.ba.faults.inserted;
    let resent =
        sim.a.mux.counters().retransmitted_frames + sim.b.mux.counters().retransmitted_frames;
    let verified = [&sim.a, &sim.b]
        .iter()
        .flat_map(|p| p.plans.values())
        .map(|plan| plan.received)
        .sum();
    (faults, resent, verified)
}

/// How the graceful shutdown at the end of a run may end.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    /// DRAINED both ways on both sides.
    Graceful,
    /// Gracefully, or (on a line that loses most frames) with TIMEOUT on a side that drained
    /// and then heard nothing for a keepalive probe: its peer lingered, gave up on delivering
    /// its own DRAINED, and ended.
    GracefulOrDrainTimeout,
}

fn run_sim(seed: u64, sim: Sim) -> Sim {
    run_sim_ending(seed, sim, End::Graceful)
}

fn run_sim_ending(seed: u64, mut sim: Sim, end: End) -> Sim {
    let streams = 4 + sim.rng.below(12);
    for tag in 0..streams {
        let there = sim.rng.below(300_000);
        let back = sim.rng.below(300_000);
        sim.sizes.insert(tag, (there, back));
    }
    // Streams are opened from both sides, some before HELLO completes.
    for tag in 0..streams {
        let (there, _) = sim.sizes[&tag];
        if tag % 2 == 0 {
            sim.a.open(tag, there);
        } else {
            sim.b.open(tag, there);
        }
    }
    let mut steps = 0;
    loop {
        sim.step();
        steps += 1;
        let settled = |p: &Peer| p.plans.values().all(|pl| pl.done || pl.reset);
        if settled(&sim.a) && settled(&sim.b) {
            break;
        }
        assert!(
            steps < 200_000,
            "seed {seed}: did not settle; a={:?} b={:?}",
            sim.a.mux.buffered(),
            sim.b.mux.buffered()
        );
        // Memory stays bounded by the credit budget at every step.
        for p in [&sim.a, &sim.b] {
            let buf = p.mux.buffered();
            let bound = (256 << 10) + p.mux.stream_count() * (4 << 10);
            assert!(
                buf.budget <= 256 << 10,
                "seed {seed}: budget {} over max_buffered",
                buf.budget
            );
            assert!(
                buf.granted <= bound,
                "seed {seed}: granted {} over {bound}",
                buf.granted
            );
            assert!(buf.rx <= bound, "seed {seed}: rx {} over {bound}", buf.rx);
        }
    }
    assert!(
        sim.a.errors.is_empty(),
        "seed {seed}: a: {:?}",
        sim.a.errors
    );
    assert!(
        sim.b.errors.is_empty(),
        "seed {seed}: b: {:?}",
        sim.b.errors
    );
    // Every stream that was not reset delivered exactly what was sent.
    for (side, other) in [(&sim.a, &sim.b), (&sim.b, &sim.a)] {
        for (id, plan) in &side.plans {
            if plan.reset || other.plans.get(id).is_none_or(|o| o.reset) {
                continue;
            }
            let sent_by_other = other.plans[id].to_send;
            assert_eq!(
                plan.received, sent_by_other,
                "seed {seed}: stream {id} lost bytes"
            );
        }
    }
    // A graceful shutdown drains both sides.
    sim.a.mux.goaway(ErrorCode::NORMAL, "done");
    // About 11 s of simulated time, or 110 s where most frames are lost (a HELLO that never got
    // through is still being retried, once a second).
    let steps = match end {
        End::Graceful => 10_000,
        End::GracefulOrDrainTimeout => 100_000,
    };
    for _ in 0..steps {
        sim.step();
        if sim.a.mux.phase() == Phase::Terminated && sim.b.mux.phase() == Phase::Terminated {
            break;
        }
    }
    for p in [&sim.a, &sim.b] {
        assert_eq!(
            p.mux.phase(),
            Phase::Terminated,
            "seed {seed}: {} streams left, {:?}, {:?}",
            p.mux.stream_count(),
            p.mux.buffered(),
            p.mux.counters()
        );
    }
    for p in [&sim.a, &sim.b] {
        let t = p.mux.termination().unwrap();
        let drain_timeout =
            t.code == ErrorCode::TIMEOUT && t.message.contains("DRAINED never came");
        assert!(
            t.is_graceful() || (end == End::GracefulOrDrainTimeout && drain_timeout),
            "seed {seed}: ended with {t:?}"
        );
    }
    sim
}

#[test]
fn a_noisy_link_with_retransmission_delivers_every_byte_exactly_once() {
    let mut faults = Faults::default();
    let mut resent = 0;
    let mut verified = 0;
    for seed in 1..=60 {
        let (f, r, v) = run_noisy_seed(seed, 1500);
        verified += v;
        faults.flipped += f.flipped;
        faults.dropped += f.dropped;
        faults.inserted += f.inserted;
        resent += r;
    }
    eprintln!(
        "faults injected: {faults:?} (total {}), frames resent: {resent}, \
         stream bytes verified: {verified}",
        faults.total()
    );
    assert!(
        faults.total() >= 2000,
        "too few faults to mean anything: {faults:?}"
    );
    assert!(resent > 0);
}

/// A line that damages half of all chunks, in both directions: most frames are lost, some
/// more than once in a row. Every byte still arrives exactly once, and every session still ends:
/// gracefully, or, where a side's DRAINED could not get through before its peer stopped
/// lingering, with TIMEOUT on the side left waiting (it used to wait for ever). Keepalive is
/// short here so a probe fits in the shutdown phase.
#[test]
fn a_line_that_loses_most_frames_still_delivers_and_every_session_ends() {
    let config = |role, nonce| {
        let mut c = noisy_config(role, nonce);
        c.keepalive_interval = Some(Duration::from_secs(5));
        c.keepalive_timeout = Duration::from_secs(10);
        c
    };
    let mut drain_timeouts = 0;
    let mut verified = 0;
    for seed in 1..=12 {
        let sim = Sim::new(
            seed,
            config(Role::Client, seed),
            config(Role::Server, !seed),
        );
        let sim = run_noisy_sim(seed, 5_000, sim, End::GracefulOrDrainTimeout);
        drain_timeouts += [&sim.a, &sim.b]
            .iter()
            .filter(|p| !p.mux.termination().unwrap().is_graceful())
            .count();
        verified += noisy_totals(sim).2;
    }
    eprintln!("{verified} stream bytes verified; {drain_timeouts} sides ended by drain timeout");
    assert!(verified > 0);
}

#[test]
fn a_lossless_serial_link_never_retransmits() {
    let sim = Sim::new(
        5,
        noisy_config(Role::Client, 5),
        noisy_config(Role::Server, 6),
    );
    let sim = run_sim(5, sim);
    for p in [&sim.a, &sim.b] {
        let c = p.mux.counters();
        assert!(p.mux.peer().unwrap().reliable);
        assert_eq!(c.retransmitted_frames, 0, "{c:?}");
        assert_eq!(c.out_of_order + c.duplicates, 0, "{c:?}");
        assert!(c.acks_sent > 0);
    }
}

#[test]
fn random_chunking_delays_and_slow_readers_deliver_every_byte() {
    for seed in 1..=40 {
        run_seed(seed);
    }
}

#[test]
fn a_dead_link_ends_in_keepalive_timeout_on_both_sides() {
    let mut a_cfg = Config::new(Role::Client, 1);
    let mut b_cfg = Config::new(Role::Server, 2);
    for c in [&mut a_cfg, &mut b_cfg] {
        c.keepalive_interval = Some(Duration::from_millis(200));
        c.keepalive_timeout = Duration::from_millis(500);
        c.end_on_silence = true;
    }
    let mut sim = Sim::new(7, a_cfg, b_cfg);
    sim.a.open(0, 1000);
    sim.sizes.insert(0, (1000, 1000));
    for _ in 0..500 {
        sim.step();
    }
    assert_eq!(
        sim.a.mux.phase(),
        Phase::Established,
        "keepalive keeps a quiet session alive"
    );
    sim.ab.cut = true;
    sim.ba.cut = true;
    sim.ab.in_flight.clear();
    sim.ba.in_flight.clear();
    for _ in 0..5_000 {
        sim.step();
    }
    for p in [&sim.a, &sim.b] {
        assert_eq!(p.mux.phase(), Phase::Terminated);
        assert_eq!(p.mux.termination().unwrap().code, ErrorCode::TIMEOUT);
    }
}
