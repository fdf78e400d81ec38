//! The `noisy` bench: what retransmission costs on a damaged serial line.
//!
//! One stream moves `size` bytes through a relay (tests/common/noisy.rs) that flips bits, drops
//! bytes and inserts garbage at a given average rate. Baseline: a raw copy through the same relay
//! with no faults (the relay's own cost is in every row). Rows: vmux with `Config::serial` but
//! retransmission off (CRCs only: what a clean line costs without it), with retransmission on a
//! clean line, and with retransmission at several fault rates. Runs in this process, cases
//! interleaved per repetition.

#[path = "../../tests/common/noisy.rs"]
mod relay;

use crate::cases::{self, VmuxPair};
use crate::measure;
use relay::NoisyLink;
use std::time::{Duration, Instant};
use vmux::mux::Config;
use vmux::transport::{Link, LinkKind};
use vmux::wire::Role;

/// Bytes moved per case unless `--size` says otherwise.
pub const DEFAULT_SIZE: u64 = 32 << 20;

/// One row: label, bytes per fault (0: clean), retransmission on.
const ROWS: [(&str, u64, bool); 6] = [
    ("vmux serial, retransmission off, clean", 0, false),
    ("vmux serial, retransmission on, clean", 0, true),
    ("1 fault / 1 MiB", 1 << 20, true),
    ("1 fault / 256 KiB", 256 << 10, true),
    ("1 fault / 64 KiB", 64 << 10, true),
    ("1 fault / 16 KiB", 16 << 10, true),
];

struct Sample {
    mibps: f64,
    faults: u64,
    resent: u64,
}

fn raw(size: u64, seed: u64) -> Sample {
    let link = NoisyLink::new(seed, 0).expect("relay");
    let w = link.a.try_clone().expect("clone");
    let r = link.b.try_clone().expect("clone");
    let secs = cases::raw_throughput(w, r, size, cases::CHUNK);
    link.join();
    Sample {
        mibps: size as f64 / (1 << 20) as f64 / secs.as_secs_f64(),
        faults: 0,
        resent: 0,
    }
}

fn vmux(size: u64, seed: u64, per_fault: u64, reliable: bool) -> Sample {
    let link = NoisyLink::new(seed, per_fault).expect("relay");
    let a = Link::from_unix(link.a.try_clone().expect("clone"), LinkKind::Unix, "noisy").unwrap();
    let b = Link::from_unix(link.b.try_clone().expect("clone"), LinkKind::Unix, "noisy").unwrap();
    let mut cfg = Config::serial(Role::Client, 0);
    cfg.reliable = reliable;
    cfg.keepalive_timeout = Duration::from_secs(60);
    let pair = VmuxPair::new((a, b), cfg.clone(), cfg);
    let (mut cs, mut ss) = pair.streams(1);
    let (c, s) = (cs.pop().expect("stream"), ss.pop().expect("stream"));
    let reader = std::thread::spawn(move || cases::read_all(&s, cases::CHUNK));
    let start = Instant::now();
    cases::write_n(&c, size);
    c.shutdown_write().expect("shutdown_write");
    let got = reader.join().expect("reader");
    let secs = start.elapsed();
    assert_eq!(got, size, "noisy: short read");
    let resent = pair
        .client
        .stats()
        .map(|s| s.counters.retransmitted_frames)
        .unwrap_or(0);
    let faults = link.faults.total();
    drop(c);
    drop(pair);
    link.join();
    Sample {
        mibps: size as f64 / (1 << 20) as f64 / secs.as_secs_f64(),
        faults,
        resent,
    }
}

/// Runs the bench and prints its table.
pub fn run(size: u64, reps: usize) {
    let mut raw_samples = Vec::new();
    let mut rows: Vec<Vec<Sample>> = ROWS.iter().map(|_| Vec::new()).collect();
    for rep in 0..reps {
        eprint!("\r  rep {}/{reps}", rep + 1);
        let seed = 1000 + rep as u64;
        raw_samples.push(raw(size, seed));
        for (i, (_, per_fault, reliable)) in ROWS.iter().enumerate() {
            rows[i].push(vmux(size, seed, *per_fault, *reliable));
        }
    }
    eprintln!();
    println!(
        "### Noisy serial link: {} MiB, 1 stream, through a fault-injecting socketpair relay\n",
        size >> 20
    );
    println!("| case | MiB/s median | MiB/s min–max | ratio vs raw relay | faults injected (median) | frames resent (median) |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mibps = |v: &[Sample]| v.iter().map(|s| s.mibps).collect::<Vec<f64>>();
    let (base, lo, hi) = measure::summary(&mibps(&raw_samples));
    println!("| raw copy through the relay, clean | {base:.0} | {lo:.0}–{hi:.0} | 1.00× | 0 | 0 |");
    for ((label, _, _), samples) in ROWS.iter().zip(&rows) {
        let (med, lo, hi) = measure::summary(&mibps(samples));
        let faults: Vec<f64> = samples.iter().map(|s| s.faults as f64).collect();
        let resent: Vec<f64> = samples.iter().map(|s| s.resent as f64).collect();
        println!(
            "| {label} | {med:.0} | {lo:.0}–{hi:.0} | {:.2}× | {:.0} | {:.0} |",
            med / base,
            measure::summary(&faults).0,
            measure::summary(&resent).0
        );
    }
    println!();
}
