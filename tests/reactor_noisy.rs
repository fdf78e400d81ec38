//! The real reactor over a noisy link: a relay flips bits, drops bytes and inserts garbage in both
//! directions, and with `Config::serial` (CRCs and retransmission) every stream still delivers
//! exactly the bytes sent, in order, once.

use std::thread;
use std::time::Duration;
use vmux::mux::Config;
use vmux::reactor::Reactor;
use vmux::transport::{Link, LinkKind};
use vmux::wire::Role;

mod common;
use common::noisy::NoisyLink;
use common::pattern::{crc_of_stream, receive_all, send_pattern};

const STREAMS: u64 = 8;
const LEN: usize = 512 << 10;

fn serial(role: Role, nonce: u64) -> Config {
    let mut c = Config::serial(role, nonce);
    // Short keepalive so a session that stalls fails the test quickly instead of hanging it.
    c.keepalive_interval = Some(Duration::from_secs(2));
    c.keepalive_timeout = Duration::from_secs(10);
    c
}

/// Seeds and fault rates (bytes per fault on average): different damage patterns, and one line
/// twice as noisy as the others.
const RUNS: [(u64, u64); 3] = [(42, 16 << 10), (7, 8 << 10), (2026, 16 << 10)];

#[test]
fn streams_over_a_noisy_link_arrive_exactly_once() {
    let mut faults = 0;
    for (seed, bytes_per_fault) in RUNS {
        faults += one_noisy_run(seed, bytes_per_fault);
    }
    eprintln!(
        "{faults} faults injected over {} runs, {} MiB verified",
        RUNS.len(),
        (RUNS.len() as u64 * 2 * STREAMS * LEN as u64) >> 20
    );
}

/// Moves `STREAMS` x `LEN` bytes each way through a relay seeded with `seed`; returns the faults
/// it injected.
fn one_noisy_run(seed: u64, bytes_per_fault: u64) -> u64 {
    let noisy = NoisyLink::new(seed, bytes_per_fault).expect("relay");
    let a = Link::from_unix(noisy.a.try_clone().unwrap(), LinkKind::Unix, "noisy a").unwrap();
    let b = Link::from_unix(noisy.b.try_clone().unwrap(), LinkKind::Unix, "noisy b").unwrap();
    let ra = Reactor::spawn().expect("reactor");
    let rb = Reactor::spawn().expect("reactor");
    let client = ra.add_link(a, serial(Role::Client, 1)).expect("add link");
    let server = rb.add_link(b, serial(Role::Server, 2)).expect("add link");

    let server_thread = thread::spawn(move || {
        thread::scope(|scope| {
            for _ in 0..STREAMS {
                let incoming = server.accept().expect("accept");
                let seed = u64::from_le_bytes(incoming.args[..8].try_into().unwrap());
                let stream = incoming.accept(b"").expect("accept stream");
                scope.spawn(move || {
                    thread::scope(|inner| {
                        let s = &stream;
                        inner.spawn(move || send_pattern(s, seed + 1000, LEN));
                        let (n, crc) = receive_all(s);
                        assert_eq!(n, LEN, "server side of stream {seed}: length");
                        assert_eq!(crc, crc_of_stream(seed, LEN), "server side of {seed}");
                    });
                });
            }
        });
        server
    });
    thread::scope(|scope| {
        for seed in 0..STREAMS {
            let client = &client;
            scope.spawn(move || {
                let stream = client.open("pattern", &seed.to_le_bytes()).expect("open");
                thread::scope(|inner| {
                    let s = &stream;
                    inner.spawn(move || send_pattern(s, seed, LEN));
                    let (n, crc) = receive_all(s);
                    assert_eq!(n, LEN, "client side of stream {seed}: length");
                    assert_eq!(
                        crc,
                        crc_of_stream(seed + 1000, LEN),
                        "client side of {seed}"
                    );
                });
            });
        }
    });
    let server = server_thread.join().expect("server thread");
    let stats = client.stats().expect("stats");
    let c = stats.counters;
    eprintln!(
        "seed {seed}: {}; client: {} frames resent, {} resyncs, {} header / {} payload CRC failures, \
         {} out of order, {} duplicates",
        noisy.faults.summary(),
        c.retransmitted_frames,
        c.resyncs,
        c.header_crc_errors,
        c.payload_crc_errors,
        c.out_of_order,
        c.duplicates
    );
    assert_eq!(c.data_out, STREAMS * LEN as u64);
    assert_eq!(c.data_in, STREAMS * LEN as u64);
    let injected = noisy.faults.total();
    assert!(injected >= 500, "{}", noisy.faults.summary());
    assert!(c.retransmitted_frames > 0);
    assert!(c.header_crc_errors + c.payload_crc_errors > 0);
    let end = client.close().expect("close");
    assert!(end.is_graceful(), "{end}");
    assert!(server.wait().is_graceful());
    noisy.join();
    injected
}
