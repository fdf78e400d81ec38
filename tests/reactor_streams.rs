//! The real reactor over `UnixStream::pair`: many concurrent streams, both directions, verified.

use std::io::{Read, Write};
use std::thread;
use std::time::Duration;
use vmux::mux::Config;
use vmux::reactor::Reactor;
use vmux::session::{Session, SessionError};
use vmux::transport::Link;
use vmux::wire::{ErrorCode, Role};

mod common;
use common::pattern::{crc_of_stream, receive_all, send_pattern};

fn pair_sessions(client: Config, server: Config) -> (Reactor, Session, Reactor, Session) {
    let (a, b) = Link::pair().expect("socketpair");
    let ra = Reactor::spawn().expect("reactor");
    let rb = Reactor::spawn().expect("reactor");
    let sa = ra.add_link(a, client).expect("add link");
    let sb = rb.add_link(b, server).expect("add link");
    (ra, sa, rb, sb)
}

fn configs() -> (Config, Config) {
    (Config::new(Role::Client, 1), Config::new(Role::Server, 2))
}

#[test]
fn sixty_four_streams_move_four_mib_each_way_intact() {
    const STREAMS: u64 = 64;
    const LEN: usize = 4 << 20;
    let (client_cfg, server_cfg) = configs();
    let (_ra, client, _rb, server) = pair_sessions(client_cfg, server_cfg);

    let server_thread = thread::spawn(move || {
        thread::scope(|scope| {
            for _ in 0..STREAMS {
                let incoming = server.accept().expect("accept");
                assert_eq!(incoming.service, "pattern");
                let seed = u64::from_le_bytes(incoming.args[..8].try_into().unwrap());
                let stream = incoming.accept(b"").expect("accept stream");
                scope.spawn(move || {
                    thread::scope(|inner| {
                        let s = &stream;
                        inner.spawn(move || send_pattern(s, seed + 1000, LEN));
                        let (n, crc) = receive_all(s);
                        assert_eq!(n, LEN);
                        assert_eq!(
                            crc,
                            crc_of_stream(seed, LEN),
                            "server side of stream seed {seed}"
                        );
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
                    assert_eq!(n, LEN);
                    assert_eq!(
                        crc,
                        crc_of_stream(seed + 1000, LEN),
                        "client side of stream seed {seed}"
                    );
                });
            });
        }
    });
    let server = server_thread.join().expect("server thread");
    let stats = client.stats().expect("stats");
    assert_eq!(stats.counters.data_out, STREAMS * LEN as u64);
    assert_eq!(stats.counters.data_in, STREAMS * LEN as u64);
    let end = client.close().expect("close");
    assert!(end.is_graceful(), "{end}");
    assert!(server.wait().is_graceful());
}

#[test]
fn slow_reader_keeps_buffers_under_the_window() {
    let (mut client_cfg, mut server_cfg) = configs();
    client_cfg.stream_window = 64 << 10;
    server_cfg.stream_window = 64 << 10;
    let (_ra, client, _rb, server) = pair_sessions(client_cfg, server_cfg);
    let writer = thread::spawn(move || {
        let mut stream = client.open("sink", b"").expect("open");
        // 8 MiB against a reader that takes nothing for a while: the writer must block.
        let chunk = vec![0xA5u8; 64 << 10];
        for _ in 0..128 {
            stream.write_all(&chunk).expect("write");
        }
        stream.shutdown_write().expect("shutdown");
        client
    });
    let incoming = server.accept().expect("accept");
    let mut stream = incoming.accept(b"").expect("accept");
    // Give the writer every chance to overrun its credit.
    thread::sleep(Duration::from_millis(300));
    let stats = server.stats().expect("stats");
    let held = stats.buffered.rx + stats.handle_rx;
    assert!(
        held <= 64 << 10,
        "receiver holds {held} bytes with a 64 KiB window"
    );
    assert!(stats.buffered.granted <= 64 << 10);
    let mut total = 0usize;
    let mut buf = vec![0u8; 7000];
    let mut max_held = 0;
    loop {
        let n = stream.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        assert!(buf[..n].iter().all(|&b| b == 0xA5));
        total += n;
        if total % (1 << 20) < 7000 {
            let s = server.stats().expect("stats");
            max_held = max_held.max(s.buffered.rx + s.handle_rx + s.buffered.decoder);
        }
    }
    assert_eq!(total, 8 << 20);
    assert!(
        max_held <= (64 << 10) + (64 << 10),
        "receiver held {max_held} bytes"
    );
    let client = writer.join().expect("writer");
    let sender_stats = client.stats().expect("stats");
    // The sender's queues are bounded by its handle cap plus the peer's credit.
    assert!(sender_stats.buffered.tx <= 64 << 10);
}

#[test]
fn refused_open_reports_the_code_and_message() {
    let (client_cfg, server_cfg) = configs();
    let (_ra, client, _rb, server) = pair_sessions(client_cfg, server_cfg);
    let t = thread::spawn(move || {
        let incoming = server.accept().expect("accept");
        incoming
            .reject(ErrorCode::UNKNOWN_SERVICE, "no such service: nope")
            .expect("reject");
        server
    });
    match client.open("nope", b"") {
        Err(SessionError::Refused { code, message }) => {
            assert_eq!(code, ErrorCode::UNKNOWN_SERVICE);
            assert_eq!(message, "no such service: nope");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let _server = t.join().unwrap();
}

#[test]
fn reset_reaches_the_peer_reader() {
    let (client_cfg, server_cfg) = configs();
    let (_ra, client, _rb, server) = pair_sessions(client_cfg, server_cfg);
    let t = thread::spawn(move || {
        let mut stream = server
            .accept()
            .expect("accept")
            .accept(b"")
            .expect("accept");
        let mut buf = [0u8; 16];
        let err = stream.read(&mut buf).expect_err("reset");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
        assert!(err.to_string().contains("CANCEL"), "{err}");
        server
    });
    let stream = client.open("x", b"").expect("open");
    stream.reset(ErrorCode::CANCEL).expect("reset");
    let _server = t.join().unwrap();
}

#[test]
fn ping_measures_a_round_trip() {
    let (client_cfg, server_cfg) = configs();
    let (_ra, client, _rb, _server) = pair_sessions(client_cfg, server_cfg);
    client
        .wait_established(Duration::from_secs(10))
        .expect("established");
    let rtt = client.ping().expect("ping");
    assert!(rtt < Duration::from_secs(10));
}

#[test]
fn peer_closing_the_link_fails_open_streams() {
    let (client_cfg, server_cfg) = configs();
    let (_ra, client, rb, server) = pair_sessions(client_cfg, server_cfg);
    let t = thread::spawn(move || {
        let _stream = server
            .accept()
            .expect("accept")
            .accept(b"")
            .expect("accept");
        // Dropping the reactor ends its sessions and closes the link.
        drop(rb);
    });
    let mut stream = client.open("x", b"").expect("open");
    t.join().unwrap();
    let mut buf = [0u8; 4];
    let err = stream.read(&mut buf).expect_err("link gone");
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset
        ),
        "{err}"
    );
    let end = client.wait();
    assert!(!end.is_graceful());
}

/// A reader that answers what it read, and never waits in `read` again, still returns its
/// credit: the answer's `Tx` command carries the consumption the reader had not reported (it is
/// under the 128 KiB report batch), so the peer can send the next request. Without it the
/// peer's second write would wait for credit until its timeout.
#[test]
fn an_answer_carries_the_readers_consumption_back_as_credit() {
    const WINDOW: usize = 16 << 10;
    let (client_cfg, mut server_cfg) = configs();
    server_cfg.stream_window = WINDOW as u32;
    server_cfg.min_window = WINDOW as u32;
    let (_ra, client, _rb, server) = pair_sessions(client_cfg, server_cfg);
    let acceptor = thread::spawn(move || {
        let answer = server
            .accept()
            .expect("accept")
            .accept(b"")
            .expect("accept");
        (server, answer)
    });
    let mut request = client.open("echo", b"").expect("open");
    let (_server, mut answer) = acceptor.join().expect("acceptor");
    request.set_write_timeout(Some(Duration::from_secs(10)));
    // The whole initial credit, in one write: it travels as one DATA frame, so the reader
    // below gets it in one `read` and never waits (waiting would report its consumption).
    request.write_all(&[7u8; WINDOW]).expect("first request");
    let mut buf = vec![0u8; WINDOW];
    let mut got = 0;
    while got < WINDOW {
        let n = answer.read(&mut buf[got..]).expect("read request");
        assert!(n > 0, "early EOF");
        got += n;
    }
    answer.write_all(b"!").expect("answer");
    // The server never reads again; the client's next window-sized request must still fit.
    request
        .write_all(&[8u8; WINDOW])
        .expect("second request: no credit came back with the answer");
    let mut one = [0u8; 1];
    request.read_exact(&mut one).expect("read answer");
    assert_eq!(&one, b"!");
}
