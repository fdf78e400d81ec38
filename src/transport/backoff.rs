//! Redial pacing (sans-I/O): [`Backoff`], a capped exponential delay sequence, and [`Redial`], the
//! schedule a dialer follows so a peer that is not there (or that drops the link at once) is retried
//! at a bounded rate, never in a tight loop.
//!
//! Neither type reads the clock or sleeps: `now` is an argument and [`Redial::poll_at`] says when the
//! next attempt is due, so the reactor can fold it into its timers and tests are deterministic. The
//! sequence has no jitter on purpose: there is one dialer per link, so there is no herd to spread.

use std::time::Duration;

use crate::time::Instant;

/// The delay before the first retry of a dial that found nobody.
pub const INITIAL_DELAY: Duration = Duration::from_millis(50);
/// The longest delay between two dial attempts.
pub const MAX_DELAY: Duration = Duration::from_secs(1);

/// A capped exponential sequence of delays: `initial, 2×initial, 4×initial, ... max, max, ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A sequence starting at `initial` and doubling up to `max` (`max` is raised to `initial` if lower).
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        let max = max.max(initial);
        Backoff {
            initial,
            max,
            next: initial,
        }
    }

    /// The delay to wait before the next attempt; advances the sequence.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        delay
    }

    /// The delay [`Backoff::next_delay`] would return, without advancing.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// Starts the sequence over (after a success).
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

impl Default for Backoff {
    /// [`INITIAL_DELAY`] doubling to [`MAX_DELAY`].
    fn default() -> Backoff {
        Backoff::new(INITIAL_DELAY, MAX_DELAY)
    }
}

/// When a supervised link should be (re)dialed.
///
/// A link counts as a success only if it stayed up for at least `stable_after`: a peer that accepts
/// and drops at once (an hvsock muxer with no agent behind it, a session that fails its HELLO) keeps
/// the delays growing instead of resetting them, so even that case cannot become a tight loop.
#[derive(Debug, Clone)]
pub struct Redial {
    backoff: Backoff,
    stable_after: Duration,
    state: RedialState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RedialState {
    /// Waiting to dial; due at the instant (or at once if `None`).
    Idle(Option<Instant>),
    /// A link is up since the instant.
    Up(Instant),
}

impl Redial {
    /// A schedule with its first attempt due at once.
    pub fn new(backoff: Backoff, stable_after: Duration) -> Redial {
        Redial {
            backoff,
            stable_after,
            state: RedialState::Idle(None),
        }
    }

    /// Whether a dial attempt should be made at `now`.
    pub fn due(&self, now: Instant) -> bool {
        match self.state {
            RedialState::Idle(None) => true,
            RedialState::Idle(Some(at)) => now >= at,
            RedialState::Up(_) => false,
        }
    }

    /// When the next attempt is due, or `None` while a link is up (nothing to wait for).
    pub fn poll_at(&self) -> Option<Instant> {
        match self.state {
            RedialState::Idle(None) => Some(Instant::ZERO),
            RedialState::Idle(Some(at)) => Some(at),
            RedialState::Up(_) => None,
        }
    }

    /// Records a failed attempt at `now`; the next one is due after the next backoff delay.
    pub fn failed(&mut self, now: Instant) {
        self.state = RedialState::Idle(Some(now + self.backoff.next_delay()));
    }

    /// Records that a link came up at `now`.
    pub fn up(&mut self, now: Instant) {
        self.state = RedialState::Up(now);
    }

    /// Records that the link went down at `now`; resets the backoff if it had been up long enough.
    pub fn down(&mut self, now: Instant) {
        if let RedialState::Up(since) = self.state {
            if now.saturating_since(since) >= self.stable_after {
                self.backoff.reset();
            }
        }
        self.failed(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let mut b = Backoff::default();
        let seq: Vec<u128> = (0..8).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(seq, [50, 100, 200, 400, 800, 1000, 1000, 1000]);
    }

    #[test]
    fn reset_starts_the_sequence_over() {
        let mut b = Backoff::new(ms(10), ms(35));
        assert_eq!(
            [b.next_delay(), b.next_delay(), b.next_delay()],
            [ms(10), ms(20), ms(35)]
        );
        b.reset();
        assert_eq!(b.peek(), ms(10));
        assert_eq!(b.next_delay(), ms(10));
    }

    #[test]
    fn cap_below_initial_is_raised_and_huge_values_saturate() {
        let mut b = Backoff::new(ms(100), ms(10));
        assert_eq!([b.next_delay(), b.next_delay()], [ms(100), ms(100)]);
        let mut big = Backoff::new(Duration::MAX, Duration::MAX);
        assert_eq!(big.next_delay(), Duration::MAX);
        assert_eq!(big.next_delay(), Duration::MAX);
    }

    #[test]
    fn redial_is_due_at_once_then_after_each_delay() {
        let mut r = Redial::new(Backoff::default(), Duration::from_secs(5));
        let t0 = Instant::from_millis(1000);
        assert!(r.due(t0));
        r.failed(t0);
        assert_eq!(r.poll_at(), Some(t0 + ms(50)));
        assert!(!r.due(t0 + ms(49)));
        assert!(r.due(t0 + ms(50)));
        r.failed(t0 + ms(50));
        assert_eq!(r.poll_at(), Some(t0 + ms(150)));
    }

    #[test]
    fn link_that_drops_at_once_keeps_backing_off() {
        let mut r = Redial::new(Backoff::default(), Duration::from_secs(5));
        let mut now = Instant::from_millis(0);
        let mut gaps = Vec::new();
        for _ in 0..7 {
            r.up(now);
            assert!(!r.due(now));
            assert_eq!(r.poll_at(), None);
            r.down(now + ms(1));
            let at = r.poll_at().unwrap();
            gaps.push(at.saturating_since(now + ms(1)).as_millis());
            now = at;
        }
        assert_eq!(gaps, [50, 100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn link_that_stayed_up_resets_the_backoff() {
        let mut r = Redial::new(Backoff::default(), Duration::from_secs(5));
        let t = Instant::from_millis(0);
        for _ in 0..5 {
            r.failed(t);
        }
        r.up(t);
        r.down(t + Duration::from_secs(60));
        assert_eq!(
            r.poll_at(),
            Some(t + Duration::from_secs(60) + INITIAL_DELAY)
        );
    }
}
