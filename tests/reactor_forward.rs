//! Forwarding streams between sessions inside the reactor (what `vmux-shim serve` is built on).

use std::io::{Read, Write};
use std::thread;
use vmux::mux::Config;
use vmux::reactor::Reactor;
use vmux::session::{Session, SessionError};
use vmux::transport::Link;
use vmux::wire::{ErrorCode, Role};

/// A guest that echoes every `echo` stream and refuses everything else.
fn spawn_guest(session: Session) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        while let Ok(incoming) = session.accept() {
            if incoming.service == "closer" {
                // OPEN_OK and CLOSE leave in one write: the router sees the CLOSE before its
                // splice exists.
                if let Ok(stream) = incoming.accept(b"") {
                    let _ = stream.shutdown_write();
                    let mut sink = Vec::new();
                    let _ = (&stream).read_to_end(&mut sink);
                }
                continue;
            }
            if incoming.service != "echo" {
                let msg = format!("no service named {}", incoming.service);
                let _ = incoming.reject(ErrorCode::UNKNOWN_SERVICE, &msg);
                continue;
            }
            let reply = incoming.args.clone();
            let Ok(mut stream) = incoming.accept(&reply) else {
                continue;
            };
            thread::spawn(move || {
                let mut buf = vec![0u8; 32 << 10];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                        Err(_) => return,
                    }
                }
                let _ = stream.shutdown_write();
            });
        }
    })
}

struct Chain {
    _reactors: Vec<Reactor>,
    client: Session,
    router_guest_side: Session,
}

/// client <-> router (one reactor, two sessions) <-> guest
fn chain() -> Chain {
    let (client_link, router_client_link) = Link::pair().unwrap();
    let (router_guest_link, guest_link) = Link::pair().unwrap();
    let guest_reactor = Reactor::spawn().unwrap();
    let router = Reactor::spawn().unwrap();
    let client_reactor = Reactor::spawn().unwrap();
    let guest = guest_reactor
        .add_link(guest_link, Config::new(Role::Server, 1))
        .unwrap();
    let router_guest_side = router
        .add_link(router_guest_link, Config::new(Role::Client, 2))
        .unwrap();
    let router_client_side = router
        .add_link(router_client_link, Config::new(Role::Server, 3))
        .unwrap();
    let client = client_reactor
        .add_link(client_link, Config::new(Role::Client, 4))
        .unwrap();
    spawn_guest(guest);
    let target = router_guest_side.clone();
    thread::spawn(move || {
        while let Ok(incoming) = router_client_side.accept() {
            if incoming.forward(&target).is_err() {
                return;
            }
        }
    });
    Chain {
        _reactors: vec![guest_reactor, router, client_reactor],
        client,
        router_guest_side,
    }
}

#[test]
fn forwarded_streams_carry_data_both_ways_and_the_reply() {
    let chain = chain();
    thread::scope(|scope| {
        for n in 0..16u8 {
            let client = &chain.client;
            scope.spawn(move || {
                let (stream, reply) = client
                    .open_with_reply("echo", &[n; 3])
                    .expect("open through the router");
                assert_eq!(reply, vec![n; 3]);
                let data: Vec<u8> = (0..(1usize << 20)).map(|i| (i as u8) ^ n).collect();
                let mut back = Vec::new();
                thread::scope(|inner| {
                    let s = &stream;
                    let d = &data;
                    inner.spawn(move || {
                        let mut w = s;
                        w.write_all(d).unwrap();
                        s.shutdown_write().unwrap();
                    });
                    let mut r = &stream;
                    r.read_to_end(&mut back).unwrap();
                });
                assert!(back == data, "stream {n} came back different");
            });
        }
    });
    let stats = chain.router_guest_side.stats().unwrap();
    assert_eq!(stats.counters.data_out, 16 << 20);
}

#[test]
fn a_refusal_from_the_target_reaches_the_client_unchanged() {
    let chain = chain();
    match chain.client.open("nope", b"") {
        Err(SessionError::Refused { code, message }) => {
            assert_eq!(code, ErrorCode::UNKNOWN_SERVICE);
            assert_eq!(message, "no service named nope");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // The client session survives and can still open streams.
    let mut ok = chain
        .client
        .open("echo", b"")
        .expect("open after a refusal");
    ok.write_all(b"x").unwrap();
    ok.shutdown_write().unwrap();
    let mut back = Vec::new();
    ok.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"x");
}

#[test]
fn a_close_that_arrives_with_the_answer_is_passed_on() {
    let chain = chain();
    for _ in 0..20 {
        let mut stream = chain.client.open("closer", b"").expect("open");
        stream.set_read_timeout(Some(std::time::Duration::from_secs(10)));
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).expect("EOF, not a hang");
        assert!(rest.is_empty());
        stream.shutdown_write().unwrap();
    }
}

#[test]
fn a_client_reset_reaches_the_target() {
    let chain = chain();
    let stream = chain.client.open("echo", b"").unwrap();
    let before = chain
        .router_guest_side
        .stats()
        .unwrap()
        .counters
        .resets_sent;
    stream.reset(ErrorCode::CANCEL).unwrap();
    // The router passes the reset on to the guest side.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let stats = chain.router_guest_side.stats().unwrap();
        if stats.counters.resets_sent > before && stats.streams == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "reset never reached the guest side: {stats:?}"
        );
        thread::sleep(std::time::Duration::from_millis(10));
    }
}
