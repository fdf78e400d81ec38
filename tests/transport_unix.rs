//! Unix-socket dial and listen through the address API, listener registration with mio, and the
//! role checks (what may be dialed, listened on or opened). No test here opens an AF_VSOCK socket:
//! the vsock cases exercised are the ones rejected before any socket exists.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use vmux::transport::{dial, listen, open_port, Address, LinkKind, Listener, TransportError};

const PATIENT: Duration = Duration::from_secs(30);

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmux-unix-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn unix_addr(dir: &std::path::Path) -> Address {
    format!("unix://{}", dir.join("s.sock").display())
        .parse()
        .unwrap()
}

#[test]
fn listener_wakes_mio_and_accepted_link_exchanges_bytes() {
    let dir = temp_dir("mio");
    let addr = unix_addr(&dir);
    let listener = listen(&addr).unwrap();
    assert!(matches!(listener, Listener::Unix(_)));
    let mut poll = Poll::new().unwrap();
    const LISTENER: Token = Token(0);
    poll.registry()
        .register(
            &mut SourceFd(&listener.as_raw_fd()),
            LISTENER,
            Interest::READABLE,
        )
        .unwrap();

    let mut client = dial(&addr, PATIENT).unwrap();
    assert_eq!(client.kind(), LinkKind::Unix);

    let mut events = Events::with_capacity(4);
    let deadline = Instant::now() + PATIENT;
    let mut server = loop {
        assert!(Instant::now() < deadline, "listener never became readable");
        poll.poll(&mut events, Some(Duration::from_secs(1)))
            .unwrap();
        if events.iter().any(|e| e.token() == LISTENER) {
            if let Some(link) = listener.accept().unwrap() {
                break link;
            }
        }
    };
    assert!(listener.accept().unwrap().is_none());

    client.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    let deadline = Instant::now() + PATIENT;
    let mut got = 0;
    while got < 4 {
        assert!(Instant::now() < deadline, "no bytes arrived");
        match server.read(&mut buf[got..]) {
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(&buf, b"ping");
    drop(listener);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dial_to_a_missing_unix_socket_gives_up_after_the_timeout() {
    let dir = temp_dir("missing");
    let addr = unix_addr(&dir);
    let err = dial(&addr, Duration::from_millis(200)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
    assert_eq!(
        err.to_string(),
        format!("{addr}: no socket file yet (is the VM running?), gave up after 200 ms")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dial_to_a_stale_socket_file_reports_connection_refused() {
    let dir = temp_dir("stale");
    let addr = unix_addr(&dir);
    // A socket file with no listener behind it (the listener was dropped without unlinking).
    let listener = std::os::unix::net::UnixListener::bind(dir.join("s.sock")).unwrap();
    drop(listener);
    let err = dial(&addr, Duration::from_millis(200)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    assert!(err.to_string().contains("connection refused"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn wrong_role_addresses_are_refused_before_opening_anything() {
    let table: &[(&str, &str)] = &[
        (
            "vsock://any:1024",
            "vsock://any:1024: cannot dial CID any: name the peer's CID (2 for the host, 3 and up for a guest)",
        ),
        (
            "tty:///dev/ttyS1",
            "tty:///dev/ttyS1: a port is opened, not dialed: use open_port",
        ),
        (
            "virtio-serial://org.vmux.0",
            "virtio-serial://org.vmux.0: a port is opened, not dialed: use open_port",
        ),
    ];
    for (text, want) in table {
        let addr: Address = text.parse().unwrap();
        let err = dial(&addr, PATIENT).unwrap_err();
        assert!(matches!(err, TransportError::Unsupported { .. }), "{text}");
        assert_eq!(err.to_string(), *want);
        assert_eq!(err.kind(), io::ErrorKind::Unsupported);
    }
    let port: Address = "tty:///dev/ttyS1".parse().unwrap();
    assert!(matches!(
        listen(&port).unwrap_err(),
        TransportError::Unsupported { .. }
    ));
    for socket in [
        "unix:///tmp/x.sock",
        "hvsock:///tmp/x.sock:1",
        "vsock://2:1",
    ] {
        let addr: Address = socket.parse().unwrap();
        let err = open_port(&addr).unwrap_err();
        assert!(
            matches!(err, TransportError::Unsupported { .. }),
            "{socket}"
        );
    }
}

#[test]
fn listening_twice_on_one_path_replaces_the_stale_socket() {
    let dir = temp_dir("rebind");
    let addr = unix_addr(&dir);
    let first = listen(&addr).unwrap();
    std::mem::forget(first); // simulate a crashed process that left its socket file behind
    let second = listen(&addr).unwrap();
    let _client = dial(&addr, PATIENT).unwrap();
    let deadline = Instant::now() + PATIENT;
    loop {
        if second.accept().unwrap().is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no connection reached the new listener"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
