//! Link-level retransmission for serial links, sans-I/O: sequence numbers, acknowledgements and a
//! bounded retransmit buffer (go-back-N).
//!
//! A UART, a pty or a virtio-serial port can drop, insert or flip bytes. CRCs (header and payload)
//! already make the decoder throw away every damaged frame and resynchronise, but a frame thrown
//! away is lost. When both peers announce `RELIABLE` in HELLO, each side numbers every frame it
//! sends after HELLO (except ACK) with a 16-bit sequence number in the header, keeps a copy until
//! the peer acknowledges it, and sends it again when it was not. The receiver accepts only the
//! next number it expects: a later one means something before it was lost, so it is dropped and
//! the receiver asks for a resend (ACK with `RESEND`); an earlier one is a duplicate and is
//! dropped. The mux above therefore sees exactly the frames the peer built, in order, once.
//!
//! - **Acknowledgement.** After input that contained sequenced frames, one ACK carries the next
//!   number expected (cumulative). ACK is never numbered and never retransmitted: a lost ACK is
//!   covered by the next one, or by the sender's timer.
//! - **Resend request.** A gap makes the receiver send ACK|RESEND once per expected number. It
//!   asks again as soon as a frame arrives that is no further ahead than one already seen since
//!   the request: numbers only go back when the sender starts a resend round, and a round starts
//!   with the expected frame, so that round lost it again (at most one request per round).
//!   Otherwise (a lost request, or nothing after the lost frame) it asks again after a
//!   retransmission timeout if the gap persists. The sender answers by sending every
//!   unacknowledged frame again, oldest first.
//! - **Timer.** Once everything built was written to the link and frames are still unacknowledged,
//!   the retransmission timer runs; on expiry everything unacknowledged is sent again and the
//!   timeout doubles (up to `max_rto`). The timeout follows the measured round trip (RFC 6298:
//!   `srtt + 4 * rttvar`, at least `min_rto`), timing only frames sent once (Karn).
//! - **Window.** Bytes in flight are limited by a loss-adaptive window (AIMD, as TCP's congestion
//!   window): it halves once per loss event (a resend request or an expiry) and grows by about
//!   one frame per window of acknowledged bytes, between one frame and `limit`. On a clean link it
//!   sits at `limit`; on a very noisy one it shrinks until frames get through, so a resend of
//!   "everything unacknowledged" stays small (go-back-N with a fixed large window livelocks).
//!   A resend is paced by the same window: frames go again, oldest first, as ACKs make room.
//! - **Bound.** The retransmit buffer holds at most `limit` bytes (plus the frame that crossed it):
//!   while it is full, or frames wait to be resent, the mux builds no new sequenced frame, which
//!   is the backpressure.
//!
//! This module only keeps the numbers and the buffer; the mux decides which frames go through it.

use crate::time::Instant;
use std::collections::VecDeque;
use std::time::Duration;

/// Half the sequence space: a number this far ahead or more counts as behind (a duplicate).
const HALF: u16 = 0x8000;
/// The smallest window, and the growth step per window of acknowledged bytes.
const MIN_WINDOW: usize = 16 << 10;

/// Settings of the retransmission layer.
#[derive(Debug, Clone, Copy)]
pub struct ArqConfig {
    /// Most bytes of unacknowledged frames kept for resending.
    pub limit: usize,
    /// Shortest retransmission timeout.
    pub min_rto: Duration,
    /// Longest retransmission timeout (after backoff).
    pub max_rto: Duration,
    /// Timeout before any round trip was measured.
    pub initial_rto: Duration,
}

/// What an arriving sequenced frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The next expected: deliver it.
    InOrder,
    /// Already delivered (a resend crossed an ACK): drop it.
    Duplicate,
    /// A frame before it was lost: drop it (a resend will bring it again).
    Gap,
}

/// Counters of the retransmission layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArqStats {
    /// Frames sent again (by resend request or timer).
    pub retransmitted_frames: u64,
    /// Bytes sent again.
    pub retransmitted_bytes: u64,
    /// Retransmission timer expiries.
    pub timeouts: u64,
    /// Resend requests received from the peer.
    pub resend_requests: u64,
    /// Resend requests sent to the peer.
    pub resends_asked: u64,
    /// Frames dropped because one before them was lost.
    pub out_of_order: u64,
    /// Frames dropped because they had already been delivered.
    pub duplicates: u64,
    /// ACK frames built.
    pub acks_sent: u64,
    /// ACKs naming a number this side never sent (ignored).
    pub bad_acks: u64,
}

/// A resend request this side sent, and what arrived since.
#[derive(Debug, Clone, Copy)]
struct Request {
    /// The number asked for (the next expected then).
    next: u16,
    /// When.
    at: Instant,
    /// The furthest ahead of `next` a frame arrived since (distance, mod 2^16).
    highest: u16,
}

/// One direction's sender state and the other direction's receiver state.
#[derive(Debug)]
pub struct Arq {
    config: ArqConfig,
    /// Number of the next new frame.
    tx_next: u16,
    /// Unacknowledged frames, oldest first, back to back.
    retx: VecDeque<u8>,
    /// Length of each frame in `retx`; the oldest has number `tx_next - lens.len()`.
    lens: VecDeque<usize>,
    /// How many of the oldest frames are on the wire (sent, or resent in this round); the rest
    /// wait to be resent.
    in_flight: usize,
    /// Their bytes.
    in_flight_bytes: usize,
    /// The loss-adaptive limit on `in_flight_bytes`.
    window: usize,
    /// Until an ACK reaches this number, a further loss is part of the same event.
    recover_until: Option<u16>,
    /// When the retransmission timer fires, if it runs.
    deadline: Option<Instant>,
    /// The frame being timed for a round-trip sample: (number, written at).
    timing: Option<(u16, Instant)>,
    srtt: Option<Duration>,
    rttvar: Duration,
    /// Consecutive expiries without progress.
    backoff: u32,
    /// Number of the next frame expected from the peer.
    rx_next: u16,
    ack_due: bool,
    resend_due: bool,
    /// The last resend request (it matters while its number is still the one expected).
    last_request: Option<Request>,
    stats: ArqStats,
}

impl Arq {
    /// A fresh link: both directions start at number 0.
    pub fn new(config: ArqConfig) -> Arq {
        Arq {
            config,
            tx_next: 0,
            retx: VecDeque::new(),
            lens: VecDeque::new(),
            in_flight: 0,
            in_flight_bytes: 0,
            window: config.limit.max(MIN_WINDOW),
            recover_until: None,
            deadline: None,
            timing: None,
            srtt: None,
            rttvar: Duration::ZERO,
            backoff: 0,
            rx_next: 0,
            ack_due: false,
            resend_due: false,
            last_request: None,
            stats: ArqStats::default(),
        }
    }

    /// Forgets both directions (the peer restarted); counters are kept.
    pub fn reset(&mut self) {
        let stats = self.stats;
        *self = Arq::new(self.config);
        self.stats = stats;
    }

    /// Counters so far.
    pub fn stats(&self) -> ArqStats {
        self.stats
    }

    /// Bytes held for resending.
    pub fn buffered(&self) -> usize {
        self.retx.len()
    }

    /// Frames sent and not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.lens.len()
    }

    /// Whether a new sequenced frame may be built: nothing waits to be resent, the window has
    /// room and the retransmit buffer is not full.
    pub fn has_room(&self) -> bool {
        // Half the number space is the hard limit of go-back-N with 16-bit numbers.
        self.in_flight == self.lens.len()
            && self.in_flight_bytes < self.window
            && self.retx.len() < self.config.limit
            && self.lens.len() < usize::from(HALF) - 1
    }

    /// Whether frames wait to be resent and the window lets one go now.
    pub fn resend_ready(&self) -> bool {
        self.in_flight < self.lens.len()
            && (self.in_flight == 0 || self.in_flight_bytes < self.window)
    }

    /// The current loss-adaptive window, in bytes.
    pub fn window(&self) -> usize {
        self.window
    }

    /// Appends frames waiting to be resent to `out`, oldest first, as far as the window allows.
    pub fn poll_resend(&mut self, out: &mut Vec<u8>) {
        while self.resend_ready() {
            let len = self.lens[self.in_flight];
            let start = self.in_flight_bytes;
            out.extend(self.retx.range(start..start + len));
            self.in_flight += 1;
            self.in_flight_bytes += len;
            self.stats.retransmitted_frames += 1;
            self.stats.retransmitted_bytes += len as u64;
        }
    }

    /// The current retransmission timeout, backoff included.
    pub fn rto(&self) -> Duration {
        let base = match self.srtt {
            Some(srtt) => srtt + (self.rttvar * 4).max(Duration::from_millis(1)),
            None => self.config.initial_rto,
        };
        let base = base.clamp(self.config.min_rto, self.config.max_rto);
        base.saturating_mul(1 << self.backoff.min(16))
            .min(self.config.max_rto)
    }

    /// When [`Arq::on_timeout`] must run, if the timer runs.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Numbers the frame that fills `frame` (header first) and keeps a copy for resending.
    pub fn sequence(&mut self, frame: &mut [u8]) {
        crate::wire::stamp_seq(frame, self.tx_next);
        self.tx_next = self.tx_next.wrapping_add(1);
        if self.in_flight == self.lens.len() {
            self.in_flight += 1;
            self.in_flight_bytes += frame.len();
        }
        // Otherwise older frames wait to be resent (a frame the mux had to build at once, like
        // a last GOAWAY): this copy goes out of order and the receiver drops it; it is resent
        // in its turn.
        self.retx.extend(frame.iter());
        self.lens.push_back(frame.len());
    }

    /// Everything built so far was written to the link: start the timer if frames wait for an ACK.
    pub fn on_output_drained(&mut self, now: Instant) {
        if self.lens.is_empty() {
            return;
        }
        if self.deadline.is_none() {
            self.deadline = Some(now + self.rto());
        }
        if self.timing.is_none() {
            self.timing = Some((self.tx_next.wrapping_sub(1), now));
        }
    }

    /// Classifies an arriving sequenced frame; only [`Arrival::InOrder`] may be delivered.
    pub fn on_arrival(&mut self, seq: u16, now: Instant) -> Arrival {
        let ahead = seq.wrapping_sub(self.rx_next);
        self.ack_due = true;
        if ahead == 0 {
            self.rx_next = self.rx_next.wrapping_add(1);
            return Arrival::InOrder;
        }
        if ahead >= HALF {
            self.stats.duplicates += 1;
            return Arrival::Duplicate;
        }
        self.stats.out_of_order += 1;
        let rto = self.rto();
        let ask = match &mut self.last_request {
            Some(r) if r.next == self.rx_next => {
                // The sender sends numbers in increasing order except when a resend round
                // starts over from its oldest unacknowledged frame, which is never after the
                // one expected here. So a frame no further ahead than one already seen since
                // the request belongs to a later round, that round's copy of the expected frame
                // came before it and was lost too: ask again now rather than leave the sender
                // to its timer. One request per round at most (`highest` restarts with it).
                let new_round = ahead <= r.highest;
                r.highest = r.highest.max(ahead);
                new_round || now >= r.at + rto
            }
            _ => true,
        };
        if ask {
            self.resend_due = true;
            self.last_request = Some(Request {
                next: self.rx_next,
                at: now,
                highest: ahead,
            });
        }
        Arrival::Gap
    }

    /// Whether an ACK is waiting to be built.
    pub fn ack_due(&self) -> bool {
        self.ack_due
    }

    /// The ACK to build now, if one is due: (next expected, resend request).
    pub fn take_ack(&mut self) -> Option<(u16, bool)> {
        if !self.ack_due {
            return None;
        }
        self.ack_due = false;
        self.stats.acks_sent += 1;
        let resend = std::mem::take(&mut self.resend_due);
        if resend {
            self.stats.resends_asked += 1;
        }
        Some((self.rx_next, resend))
    }

    /// Handles the peer's ACK: frees what it acknowledges, and with `resend` appends every frame
    /// still unacknowledged to `out`. Returns whether anything was acknowledged.
    pub fn on_ack(&mut self, next: u16, resend: bool, now: Instant, out: &mut Vec<u8>) -> bool {
        let oldest = self.tx_next.wrapping_sub(self.lens.len() as u16);
        let acked = usize::from(next.wrapping_sub(oldest));
        if acked > self.lens.len() {
            self.stats.bad_acks += 1;
            return false;
        }
        if acked > 0 {
            let bytes: usize = self.lens.drain(..acked).sum();
            self.retx.drain(..bytes);
            if acked >= self.in_flight {
                // Copies sent before a resend round arrived after all: those are done too.
                self.in_flight = 0;
                self.in_flight_bytes = 0;
            } else {
                self.in_flight -= acked;
                self.in_flight_bytes -= bytes;
            }
            if self
                .recover_until
                .is_some_and(|until| until.wrapping_sub(oldest) as usize <= acked)
            {
                self.recover_until = None;
            }
            // Additive increase: about one MIN_WINDOW per window of acknowledged bytes.
            let grow = (bytes * MIN_WINDOW / self.window.max(1)).max(1);
            self.window = (self.window + grow).min(self.config.limit.max(MIN_WINDOW));
            if let Some((timed, sent)) = self.timing {
                if usize::from(timed.wrapping_sub(oldest)) < acked {
                    self.sample(now.saturating_since(sent));
                    self.timing = None;
                }
            }
            self.backoff = 0;
            self.deadline = if self.lens.is_empty() {
                None
            } else {
                Some(now + self.rto())
            };
        }
        if resend && !self.lens.is_empty() {
            self.stats.resend_requests += 1;
            self.loss();
            self.retransmit(out);
        }
        acked > 0
    }

    /// A loss event: halve the window once per round of frames in flight.
    fn loss(&mut self) {
        if self.recover_until.is_some() {
            return;
        }
        self.window = (self.window / 2).max(MIN_WINDOW);
        self.recover_until = Some(self.tx_next);
    }

    /// Runs the timer: on expiry, appends every unacknowledged frame to `out` and backs off.
    /// Returns whether it expired.
    pub fn on_timeout(&mut self, now: Instant, out: &mut Vec<u8>) -> bool {
        match self.deadline {
            Some(at) if now >= at => {}
            _ => return false,
        }
        self.stats.timeouts += 1;
        self.backoff = self.backoff.saturating_add(1);
        self.recover_until = None;
        self.loss();
        self.retransmit(out);
        true
    }

    /// Starts a resend round: every unacknowledged frame goes again, paced by the window.
    fn retransmit(&mut self, out: &mut Vec<u8>) {
        self.in_flight = 0;
        self.in_flight_bytes = 0;
        self.poll_resend(out);
        // Karn: a resent frame's ACK says nothing about the round trip. The timer restarts once
        // the resend was written.
        self.timing = None;
        self.deadline = None;
    }

    /// RFC 6298 smoothing of one round-trip sample.
    fn sample(&mut self, rtt: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let diff = srtt.abs_diff(rtt);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                self.srtt = Some((srtt * 7 + rtt) / 8);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{self, Flags, Kind};

    fn config() -> ArqConfig {
        ArqConfig {
            limit: 1024,
            min_rto: Duration::from_millis(100),
            max_rto: Duration::from_secs(8),
            initial_rto: Duration::from_secs(1),
        }
    }

    fn frame(stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        wire::emit_frame(&mut out, Kind::Data, Flags::empty(), stream, payload, true);
        out
    }

    fn seq_of(frame: &[u8]) -> u16 {
        wire::FrameHeader::new_unchecked(frame).seq()
    }

    #[test]
    fn numbers_frames_and_keeps_their_crc_valid() {
        let mut arq = Arq::new(config());
        for expected in 0..3u16 {
            let mut f = frame(1, b"abc");
            arq.sequence(&mut f);
            let view = wire::FrameHeader::new_unchecked(&f[..]);
            assert_eq!(view.seq(), expected);
            assert!(view.is_intact());
        }
        assert_eq!(arq.unacked(), 3);
    }

    #[test]
    fn an_ack_frees_exactly_the_acknowledged_frames() {
        let mut arq = Arq::new(config());
        let frames: Vec<Vec<u8>> = (0..4)
            .map(|i| {
                let mut f = frame(1, &[i; 10]);
                arq.sequence(&mut f);
                f
            })
            .collect();
        let mut out = Vec::new();
        assert!(arq.on_ack(2, false, Instant::ZERO, &mut out));
        assert_eq!(arq.unacked(), 2);
        assert!(out.is_empty());
        // A resend request brings back frames 2 and 3, byte for byte.
        assert!(!arq.on_ack(2, true, Instant::ZERO, &mut out));
        assert_eq!(out, [frames[2].clone(), frames[3].clone()].concat());
        assert_eq!(arq.stats().retransmitted_frames, 2);
    }

    #[test]
    fn an_ack_for_a_number_never_sent_is_ignored() {
        let mut arq = Arq::new(config());
        let mut f = frame(1, b"x");
        arq.sequence(&mut f);
        let mut out = Vec::new();
        assert!(!arq.on_ack(5, true, Instant::ZERO, &mut out));
        assert_eq!(arq.unacked(), 1);
        assert!(out.is_empty());
        assert_eq!(arq.stats().bad_acks, 1);
    }

    #[test]
    fn the_receiver_accepts_in_order_and_asks_once_per_gap() {
        let mut rx = Arq::new(config());
        let t = Instant::ZERO;
        assert_eq!(rx.on_arrival(0, t), Arrival::InOrder);
        assert_eq!(rx.take_ack(), Some((1, false)));
        // Frame 1 lost: 2 and 3 are a gap; one resend request only.
        assert_eq!(rx.on_arrival(2, t), Arrival::Gap);
        assert_eq!(rx.on_arrival(3, t), Arrival::Gap);
        assert_eq!(rx.take_ack(), Some((1, true)));
        assert_eq!(rx.on_arrival(4, t), Arrival::Gap);
        assert_eq!(rx.take_ack(), Some((1, false)));
        // After a timeout's worth of time with the gap still open, ask again.
        let later = t + Duration::from_secs(2);
        assert_eq!(rx.on_arrival(5, later), Arrival::Gap);
        assert_eq!(rx.take_ack(), Some((1, true)));
        // The resend arrives; an old copy after it is a duplicate.
        assert_eq!(rx.on_arrival(1, later), Arrival::InOrder);
        assert_eq!(rx.on_arrival(0, later), Arrival::Duplicate);
        assert_eq!(rx.take_ack(), Some((2, false)));
        assert_eq!(rx.take_ack(), None);
    }

    #[test]
    fn a_resend_round_that_loses_the_expected_frame_again_is_asked_for_at_once() {
        let mut rx = Arq::new(config());
        // No time passes: only the arrivals can tell the receiver to ask again.
        let t = Instant::ZERO;
        assert_eq!(rx.on_arrival(0, t), Arrival::InOrder);
        // Frame 1 lost in the first sending: 2..=5 arrive, one request.
        for seq in 2..=5 {
            assert_eq!(rx.on_arrival(seq, t), Arrival::Gap);
        }
        assert_eq!(rx.take_ack(), Some((1, true)));
        // The resend round (1, 2, 3, ...) loses frame 1 again: 2 comes back, a number already
        // seen, so that round is over for frame 1. Ask again, once for the whole round.
        assert_eq!(rx.on_arrival(2, t), Arrival::Gap);
        assert_eq!(rx.on_arrival(3, t), Arrival::Gap);
        assert_eq!(rx.take_ack(), Some((1, true)));
        for seq in 4..=6 {
            assert_eq!(rx.on_arrival(seq, t), Arrival::Gap);
        }
        assert_eq!(rx.take_ack(), Some((1, false)));
        // A round that starts further on than the first gap frame (3: frame 2 damaged too)
        // is a new round all the same.
        assert_eq!(rx.on_arrival(3, t), Arrival::Gap);
        assert_eq!(rx.take_ack(), Some((1, true)));
        // The third round brings frame 1; a new gap is asked for at once, as before.
        assert_eq!(rx.on_arrival(1, t), Arrival::InOrder);
        assert_eq!(rx.on_arrival(3, t), Arrival::Gap);
        assert_eq!(rx.take_ack(), Some((2, true)));
        assert_eq!(rx.stats().resends_asked, 4);
    }

    #[test]
    fn numbers_wrap_around() {
        let mut tx = Arq::new(config());
        let mut rx = Arq::new(config());
        let mut out = Vec::new();
        for i in 0..70_000u32 {
            let mut f = frame(1, &i.to_le_bytes());
            tx.sequence(&mut f);
            assert_eq!(rx.on_arrival(seq_of(&f), Instant::ZERO), Arrival::InOrder);
            let (next, resend) = rx.take_ack().expect("ack due");
            tx.on_ack(next, resend, Instant::ZERO, &mut out);
            assert_eq!(tx.unacked(), 0);
        }
        assert!(out.is_empty());
    }

    #[test]
    fn the_timer_runs_only_after_output_drained_and_backs_off() {
        let mut arq = Arq::new(config());
        let mut f = frame(1, b"x");
        arq.sequence(&mut f);
        assert_eq!(arq.deadline(), None);
        let t0 = Instant::from_millis(10);
        arq.on_output_drained(t0);
        assert_eq!(arq.deadline(), Some(t0 + Duration::from_secs(1)));
        let mut out = Vec::new();
        assert!(!arq.on_timeout(t0, &mut out));
        let t1 = t0 + Duration::from_secs(1);
        assert!(arq.on_timeout(t1, &mut out));
        assert_eq!(out, f);
        assert_eq!(arq.deadline(), None);
        arq.on_output_drained(t1);
        assert_eq!(arq.deadline(), Some(t1 + Duration::from_secs(2)));
    }

    #[test]
    fn the_timeout_follows_the_measured_round_trip() {
        let mut arq = Arq::new(config());
        let mut out = Vec::new();
        let mut now = Instant::ZERO;
        for _ in 0..20 {
            let mut f = frame(1, b"x");
            arq.sequence(&mut f);
            arq.on_output_drained(now);
            now = now + Duration::from_millis(300);
            let next = arq.tx_next;
            arq.on_ack(next, false, now, &mut out);
        }
        let rto = arq.rto();
        assert!(
            rto >= Duration::from_millis(300) && rto < Duration::from_millis(400),
            "{rto:?}"
        );
    }

    #[test]
    fn a_loss_halves_the_window_and_paces_the_resend() {
        let mut arq = Arq::new(ArqConfig {
            limit: 64 << 10,
            ..config()
        });
        let mut built = 0;
        while arq.has_room() {
            let mut f = frame(1, &[7; 4000]);
            arq.sequence(&mut f);
            built += 1;
        }
        assert_eq!(arq.window(), 64 << 10);
        let mut out = Vec::new();
        // Frame 0 lost: the resend goes out half a window at a time.
        arq.on_ack(0, true, Instant::ZERO, &mut out);
        assert_eq!(arq.window(), 32 << 10);
        let first_round = out.len();
        assert!(
            ((32 << 10)..(32 << 10) + 4100).contains(&first_round),
            "{first_round}"
        );
        assert!(
            !arq.has_room(),
            "no new frame while old ones wait to be resent"
        );
        // A second request in the same loss event does not halve again.
        arq.on_ack(0, true, Instant::ZERO, &mut out);
        assert_eq!(arq.window(), 32 << 10);
        // ACKs make room: the rest of the resend follows, then new frames may go.
        let mut next = 0u16;
        while arq.unacked() > 0 {
            next += 1;
            arq.on_ack(next, false, Instant::ZERO, &mut out);
            arq.poll_resend(&mut out);
        }
        assert_eq!(usize::from(next), built);
        assert!(arq.has_room());
        assert!(arq.window() > 32 << 10, "the window grows again");
    }

    #[test]
    fn the_buffer_is_bounded() {
        let mut arq = Arq::new(config());
        let mut built = 0;
        while arq.has_room() {
            let mut f = frame(1, &[0; 100]);
            arq.sequence(&mut f);
            built += 1;
        }
        assert_eq!(built, 1024usize.div_ceil(frame(1, &[0; 100]).len()));
        assert!(arq.buffered() < 1024 + 200);
    }
}
