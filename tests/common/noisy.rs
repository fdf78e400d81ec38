//! A fault-injecting link for tests and benchmarks: two socketpairs joined by a relay that, in
//! each direction, flips bits, drops bytes and inserts garbage at random points, like a noisy
//! UART. Seeded, so a failing run can be repeated; counts every fault it injects.
//!
//! Used by `tests/reactor_noisy.rs` and by the `noisy` case of the bench crate (which includes
//! this file by path).
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

/// Faults injected so far, both directions together.
#[derive(Debug, Default)]
pub struct FaultCounts {
    /// Single bits flipped.
    pub flipped: AtomicU64,
    /// Runs of 1-8 bytes dropped.
    pub dropped: AtomicU64,
    /// Runs of 1-24 garbage bytes inserted (a quarter start with the frame magic).
    pub inserted: AtomicU64,
    /// Bytes relayed (before damage).
    pub bytes: AtomicU64,
}

impl FaultCounts {
    /// Every fault injected.
    pub fn total(&self) -> u64 {
        self.flipped.load(Ordering::Relaxed)
            + self.dropped.load(Ordering::Relaxed)
            + self.inserted.load(Ordering::Relaxed)
    }

    /// One line for logs and bench tables.
    pub fn summary(&self) -> String {
        format!(
            "{} faults ({} bit flips, {} drops, {} insertions) in {} bytes",
            self.total(),
            self.flipped.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
            self.inserted.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed)
        )
    }
}

/// The two ends of a noisy link and the relay between them.
pub struct NoisyLink {
    /// One side's end.
    pub a: UnixStream,
    /// The other side's end.
    pub b: UnixStream,
    /// What was injected.
    pub faults: Arc<FaultCounts>,
    relays: Vec<JoinHandle<()>>,
}

impl NoisyLink {
    /// A link that injects on average one fault per `bytes_per_fault` bytes relayed in each
    /// direction (0: none).
    pub fn new(seed: u64, bytes_per_fault: u64) -> io::Result<NoisyLink> {
        let (a, relay_a) = UnixStream::pair()?;
        let (b, relay_b) = UnixStream::pair()?;
        let faults = Arc::new(FaultCounts::default());
        let mut relays = Vec::new();
        for (i, (from, to)) in [
            (relay_a.try_clone()?, relay_b.try_clone()?),
            (relay_b, relay_a),
        ]
        .into_iter()
        .enumerate()
        {
            let faults = faults.clone();
            let mut rng = Rng::new(seed.wrapping_add(i as u64 * 0x1234_5678));
            relays.push(thread::spawn(move || {
                relay(from, to, &mut rng, bytes_per_fault, &faults)
            }));
        }
        Ok(NoisyLink {
            a,
            b,
            faults,
            relays,
        })
    }

    /// Waits for the relay threads (they end when both sides closed their ends).
    pub fn join(self) {
        drop(self.a);
        drop(self.b);
        for r in self.relays {
            let _ = r.join();
        }
    }
}

fn relay(
    mut from: UnixStream,
    mut to: UnixStream,
    rng: &mut Rng,
    per_fault: u64,
    faults: &FaultCounts,
) {
    let mut buf = vec![0u8; 4096];
    // Bytes until the next fault, carried across reads: one fault per `per_fault` bytes on average.
    let mut until_fault = 1 + rng.below(2 * per_fault.max(1));
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        faults.bytes.fetch_add(n as u64, Ordering::Relaxed);
        let mut chunk = buf[..n].to_vec();
        if per_fault > 0 {
            let mut at = 0u64;
            while at + until_fault < n as u64 {
                at += until_fault;
                until_fault = 1 + rng.below(2 * per_fault);
                // Positions refer to the undamaged read; earlier damage may have shifted them.
                let pos = (at as usize).min(chunk.len().saturating_sub(1));
                damage(&mut chunk, pos, rng, faults);
            }
            until_fault -= n as u64 - at;
        }
        if to.write_all(&chunk).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn damage(chunk: &mut Vec<u8>, at: usize, rng: &mut Rng, faults: &FaultCounts) {
    if chunk.is_empty() {
        return;
    }
    match rng.below(3) {
        0 => {
            chunk[at] ^= 1 << rng.below(8);
            faults.flipped.fetch_add(1, Ordering::Relaxed);
        }
        1 => {
            let n = (1 + rng.below(8) as usize).min(chunk.len() - at);
            chunk.drain(at..at + n);
            faults.dropped.fetch_add(1, Ordering::Relaxed);
        }
        _ => {
            let n = 1 + rng.below(24) as usize;
            let mut garbage: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            if rng.below(4) == 0 {
                garbage.splice(0..0, [0xF7, 0x4D]);
            }
            chunk.splice(at..at, garbage);
            faults.inserted.fetch_add(1, Ordering::Relaxed);
        }
    }
}

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
}
