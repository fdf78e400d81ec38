//! Serial ports in the reactor: a session over a pty pair (the UART case), console noise on the
//! line before the host speaks, and a host that goes away and comes back on the same line.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::thread;
use std::time::Duration;
use vmux::mux::Config;
use vmux::reactor::Reactor;
use vmux::session::Session;
use vmux::transport::{Link, LinkKind};
use vmux::wire::Role;

fn raw_pty() -> (OwnedFd, OwnedFd) {
    let pty = nix::pty::openpty(None, None).expect("openpty");
    for fd in [&pty.master, &pty.slave] {
        let mut t = nix::sys::termios::tcgetattr(fd.as_fd()).unwrap();
        nix::sys::termios::cfmakeraw(&mut t);
        nix::sys::termios::tcsetattr(fd.as_fd(), nix::sys::termios::SetArg::TCSANOW, &t).unwrap();
    }
    (pty.master, pty.slave)
}

/// The guest: serves `echo` on every session the port produces.
fn serve_port(reactor: &Reactor, port: Link) -> crossbeam_channel::Receiver<Session> {
    let (sessions_tx, sessions_rx) = crossbeam_channel::unbounded::<Session>();
    let (seen_tx, seen_rx) = crossbeam_channel::unbounded();
    reactor
        .handle()
        .add_port(
            port,
            Box::new(|_| Config::serial(Role::Server, vmux::reactor::random_nonce())),
            sessions_tx,
        )
        .expect("add port");
    thread::spawn(move || {
        for session in sessions_rx {
            let _ = seen_tx.send(session.clone());
            thread::spawn(move || {
                while let Ok(incoming) = session.accept() {
                    let Ok(mut stream) = incoming.accept(b"") else {
                        continue;
                    };
                    thread::spawn(move || {
                        let mut buf = [0u8; 4096];
                        while let Ok(n) = stream.read(&mut buf) {
                            if n == 0 || stream.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = stream.shutdown_write();
                    });
                }
            });
        }
    });
    seen_rx
}

fn echo_round_trip(session: &Session, payload: &[u8]) {
    let mut stream = session.open("echo", b"").expect("open over the pty");
    thread::scope(|s| {
        let st = &stream;
        s.spawn(move || {
            let mut w = st;
            w.write_all(payload).unwrap();
            st.shutdown_write().unwrap();
        });
        let mut back = Vec::new();
        let mut r = &stream;
        r.read_to_end(&mut back).unwrap();
        assert!(back == payload, "echo over the pty came back different");
    });
    let _ = stream.flush();
}

#[test]
fn a_session_over_a_pty_survives_console_noise_and_a_host_restart() {
    let (master, slave) = raw_pty();
    // Console noise the guest wrote before anyone listened, and garbage from the host side.
    let mut noisy = std::fs::File::from(slave.try_clone().unwrap());
    let noise = b"\r\n[    0.000000] Linux version 6.1 ... login: \xF7\x4D garbage";
    noisy.write_all(noise).unwrap();

    let guest = Reactor::spawn().unwrap();
    let port = Link::from_fd(master, LinkKind::Tty, "pty master").unwrap();
    let guest_sessions = serve_port(&guest, port);

    let data: Vec<u8> = (0..256 * 1024u32).map(|i| (i * 7 % 256) as u8).collect();
    {
        let host = Reactor::spawn().unwrap();
        let link = Link::from_fd(slave.try_clone().unwrap(), LinkKind::Tty, "pty slave").unwrap();
        let session = host
            .add_link(link, Config::serial(Role::Client, 1))
            .unwrap();
        session
            .wait_established(Duration::from_secs(20))
            .expect("HELLO over the pty");
        echo_round_trip(&session, &data);
        // The guest skipped every byte of the noise (a fake frame start in it fails its CRC) in
        // one resync, and lost nothing else.
        let first = guest_sessions
            .recv_timeout(Duration::from_secs(10))
            .unwrap();
        let stats = first.stats().unwrap();
        assert_eq!(stats.counters.resyncs, 1, "{:?}", stats.counters);
        assert_eq!(
            stats.counters.discarded_bytes,
            noise.len() as u64,
            "{:?}",
            stats.counters
        );
        assert_eq!(stats.counters.header_crc_errors, 1, "{:?}", stats.counters);
        // The host goes away without a graceful shutdown (its reactor stops).
    }
    // A new host on the same line: a new HELLO (new nonce) and the guest serves it.
    let host = Reactor::spawn().unwrap();
    let link = Link::from_fd(slave.try_clone().unwrap(), LinkKind::Tty, "pty slave").unwrap();
    let session = host
        .add_link(link, Config::serial(Role::Client, 2))
        .unwrap();
    session
        .wait_established(Duration::from_secs(20))
        .expect("HELLO after the host restarted");
    echo_round_trip(&session, &data[..10_000]);
    drop(noisy);
}
