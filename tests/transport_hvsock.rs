//! Hybrid vsock against an in-process fake muxer: a unix listener thread that plays the VMM's part
//! (reads `CONNECT <port>\n`, then answers per a script), one script step per accepted connection.

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use vmux::transport::{dial, listen, Address, Link, LinkKind, TransportError};

const PATIENT: Duration = Duration::from_secs(30);

/// What the fake muxer does with one connection.
#[derive(Clone)]
enum Step {
    /// Read the CONNECT line, then close (no agent listening in the guest).
    CloseAfterConnect,
    /// Close without reading anything (the client sees ECONNRESET: its CONNECT was never read).
    ResetUnread,
    /// Read the CONNECT line, check that nothing follows it, then send these writes in order.
    Reply(Vec<Vec<u8>>),
    /// Read the CONNECT line and say nothing until the test ends.
    Silent,
}

/// What the fake muxer saw on one connection.
#[derive(Debug, Default)]
struct Seen {
    connect_line: Vec<u8>,
    /// Bytes the client sent after CONNECT but before the reply (must stay empty).
    early_bytes: Vec<u8>,
    /// Bytes the client sent after the reply, up to 4.
    session: Vec<u8>,
}

struct FakeMuxer {
    dir: PathBuf,
    path: PathBuf,
    seen: mpsc::Receiver<Seen>,
    stop: Option<mpsc::Sender<()>>,
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmux-hv-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl FakeMuxer {
    /// Starts a muxer that binds its socket after `bind_delay` and plays `script`; once the script
    /// is exhausted it repeats its last step.
    fn start(tag: &str, bind_delay: Duration, script: Vec<Step>) -> FakeMuxer {
        let dir = temp_dir(tag);
        let path = dir.join("vm.vsock");
        let (seen_tx, seen) = mpsc::channel();
        let (stop, stop_rx) = mpsc::channel::<()>();
        let bind_path = path.clone();
        // Bind before returning unless a late start is wanted, so a slow thread start on a loaded
        // machine cannot look like a missing VMM socket.
        let early = (bind_delay == Duration::ZERO).then(|| UnixListener::bind(&path).unwrap());
        thread::spawn(move || {
            let listener = match early {
                Some(listener) => listener,
                None => {
                    thread::sleep(bind_delay);
                    UnixListener::bind(&bind_path).unwrap()
                }
            };
            let mut held = Vec::new();
            for i in 0.. {
                let Ok((stream, _)) = listener.accept() else {
                    return;
                };
                let step = script[i.min(script.len() - 1)].clone();
                match serve(stream, step) {
                    Ok((record, keep)) => {
                        held.extend(keep);
                        if seen_tx.send(record).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
                if matches!(
                    stop_rx.try_recv(),
                    Ok(()) | Err(mpsc::TryRecvError::Disconnected)
                ) {
                    return;
                }
            }
        });
        FakeMuxer {
            dir,
            path,
            seen,
            stop: Some(stop),
        }
    }

    fn addr(&self, port: u32) -> Address {
        format!("hvsock://{}:{port}", self.path.display())
            .parse()
            .unwrap()
    }

    /// Every connection record so far.
    fn records(&self) -> Vec<Seen> {
        self.seen.try_iter().collect()
    }
}

impl Drop for FakeMuxer {
    fn drop(&mut self) {
        drop(self.stop.take());
        // Wake the accept loop so the thread sees the stop and exits.
        let _ = UnixStream::connect(&self.path);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn read_line(stream: &mut UnixStream) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') && line.len() < 64 {
        if stream.read(&mut byte)? == 0 {
            break;
        }
        line.push(byte[0]);
    }
    Ok(line)
}

/// Plays one step; returns the record and the stream if it must stay open.
fn serve(mut stream: UnixStream, step: Step) -> io::Result<(Seen, Option<UnixStream>)> {
    stream.set_read_timeout(Some(PATIENT))?;
    let mut seen = Seen::default();
    if let Step::ResetUnread = step {
        // Wait until the client's CONNECT line has arrived, so that it sits unread when we close.
        use std::os::fd::AsFd;
        let mut fds = [nix::poll::PollFd::new(
            stream.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        nix::poll::poll(&mut fds, nix::poll::PollTimeout::try_from(PATIENT).unwrap())?;
        return Ok((seen, None));
    }
    seen.connect_line = read_line(&mut stream)?;
    match step {
        Step::CloseAfterConnect | Step::ResetUnread => Ok((seen, None)),
        Step::Silent => Ok((seen, Some(stream))),
        Step::Reply(writes) => {
            // Anything the client sends now (before OK) would be lost by a real muxer.
            stream.set_read_timeout(Some(Duration::from_millis(200)))?;
            let mut early = [0u8; 64];
            match stream.read(&mut early) {
                Ok(n) => seen.early_bytes.extend_from_slice(&early[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e),
            }
            for w in &writes {
                stream.write_all(w)?;
                thread::sleep(Duration::from_millis(2));
            }
            stream.set_read_timeout(Some(PATIENT))?;
            let mut session = [0u8; 4];
            if stream.read_exact(&mut session).is_ok() {
                seen.session = session.to_vec();
            }
            Ok((seen, None))
        }
    }
}

/// Reads exactly `n` bytes from a nonblocking link, waiting with poll.
fn read_link(link: &mut Link, n: usize) -> Vec<u8> {
    use std::os::fd::AsFd;
    let deadline = Instant::now() + PATIENT;
    let mut out = Vec::new();
    let mut buf = [0u8; 256];
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "link read timed out after {out:?}"
        );
        match link.read(&mut buf[..n - out.len()]) {
            Ok(0) => panic!("unexpected EOF after {out:?}"),
            Ok(k) => out.extend_from_slice(&buf[..k]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut fds = [nix::poll::PollFd::new(
                    link.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                )];
                let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(1000u16));
            }
            Err(e) => panic!("link read failed: {e}"),
        }
    }
    out
}

fn ok_reply(port: u32) -> Vec<Vec<u8>> {
    vec![format!("OK {port}\n").into_bytes()]
}

#[test]
fn dial_accepts_a_reply_in_one_byte_fragments() {
    let fragments: Vec<Vec<u8>> = b"OK 1024\n".iter().map(|b| vec![*b]).collect();
    let muxer = FakeMuxer::start("frag", Duration::ZERO, vec![Step::Reply(fragments)]);
    let mut link = dial(&muxer.addr(1024), PATIENT).unwrap();
    assert_eq!(link.kind(), LinkKind::Hvsock);
    link.write_all(b"ping").unwrap();
    drop(link);
    let rec = muxer.seen.recv_timeout(PATIENT).unwrap();
    assert_eq!(rec.connect_line, b"CONNECT 1024\n");
    assert_eq!(rec.session, b"ping");
}

#[test]
fn session_bytes_in_the_same_write_as_ok_stay_readable() {
    let reply = vec![b"OK 52\nHELLO-FROM-GUEST".to_vec()];
    let muxer = FakeMuxer::start("tail", Duration::ZERO, vec![Step::Reply(reply)]);
    let mut link = dial(&muxer.addr(52), PATIENT).unwrap();
    assert_eq!(read_link(&mut link, 16), b"HELLO-FROM-GUEST");
}

#[test]
fn client_sends_nothing_before_ok() {
    let muxer = FakeMuxer::start("quiet", Duration::ZERO, vec![Step::Reply(ok_reply(7))]);
    let mut link = dial(&muxer.addr(7), PATIENT).unwrap();
    link.write_all(b"data").unwrap();
    let rec = muxer.seen.recv_timeout(PATIENT).unwrap();
    assert_eq!(rec.connect_line, b"CONNECT 7\n");
    assert!(
        rec.early_bytes.is_empty(),
        "sent before OK: {:?}",
        rec.early_bytes
    );
    assert_eq!(rec.session, b"data");
}

#[test]
fn garbage_reply_fails_at_once_without_retrying() {
    let garbage = vec![b"ERR no such port\n".to_vec()];
    let muxer = FakeMuxer::start("garbage", Duration::ZERO, vec![Step::Reply(garbage)]);
    let err = dial(&muxer.addr(1024), PATIENT).unwrap_err();
    assert!(matches!(err, TransportError::Handshake { .. }), "{err}");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert!(
        err.to_string()
            .ends_with(": bad reply to CONNECT: expected \"OK <port>\\n\", got \"E\""),
        "{err}"
    );
    // One connection, and no retry shows up after it.
    muxer.seen.recv_timeout(PATIENT).unwrap();
    thread::sleep(Duration::from_millis(300));
    assert_eq!(muxer.records().len(), 0);
}

#[test]
fn overlong_reply_without_newline_is_an_error() {
    let long = vec![format!("OK {}", "1".repeat(40)).into_bytes()];
    let muxer = FakeMuxer::start("long", Duration::ZERO, vec![Step::Reply(long)]);
    let err = dial(&muxer.addr(1), PATIENT).unwrap_err();
    assert!(matches!(err, TransportError::Handshake { .. }), "{err}");
}

#[test]
fn early_close_is_retried_until_the_agent_answers() {
    let script = vec![
        Step::CloseAfterConnect,
        Step::CloseAfterConnect,
        Step::Reply(ok_reply(1024)),
    ];
    let muxer = FakeMuxer::start("retry", Duration::ZERO, script);
    let mut link = dial(&muxer.addr(1024), PATIENT).unwrap();
    link.write_all(b"ping").unwrap();
    let records: Vec<Seen> = (0..3)
        .map(|_| muxer.seen.recv_timeout(PATIENT).unwrap())
        .collect();
    assert!(records.iter().all(|r| r.connect_line == b"CONNECT 1024\n"));
    assert_eq!(records[2].session, b"ping");
}

#[test]
fn reset_before_ok_is_retried() {
    let script = vec![Step::ResetUnread, Step::Reply(ok_reply(9))];
    let muxer = FakeMuxer::start("reset", Duration::ZERO, script);
    let mut link = dial(&muxer.addr(9), PATIENT).unwrap();
    link.write_all(b"ping").unwrap();
    assert_eq!(muxer.seen.recv_timeout(PATIENT).unwrap().connect_line, b"");
    let second = muxer.seen.recv_timeout(PATIENT).unwrap();
    assert_eq!(second.connect_line, b"CONNECT 9\n");
    assert_eq!(second.session, b"ping");
}

#[test]
fn persistent_reset_is_reported_as_guest_not_ready() {
    let muxer = FakeMuxer::start("resets", Duration::ZERO, vec![Step::ResetUnread]);
    let addr = muxer.addr(9);
    let err = dial(&addr, Duration::from_secs(2)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    assert_eq!(
        err.to_string(),
        format!("{addr}: the guest is not ready (connection reset before OK), gave up after 2 s")
    );
}

#[test]
fn silent_muxer_times_out_with_a_clear_error() {
    let muxer = FakeMuxer::start("silent", Duration::ZERO, vec![Step::Silent]);
    let err = dial(&muxer.addr(1024), Duration::from_millis(500)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert_eq!(
        err.to_string(),
        format!(
            "{}: timed out after 500 ms waiting for the OK reply to CONNECT",
            muxer.addr(1024)
        )
    );
}

#[test]
fn no_agent_ever_gives_up_and_says_how_long_it_tried() {
    let muxer = FakeMuxer::start("never", Duration::ZERO, vec![Step::CloseAfterConnect]);
    let addr = muxer.addr(1024);
    let err = dial(&addr, Duration::from_secs(2)).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{addr}: no agent listening in the guest (closed before OK), gave up after 2 s")
    );
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    // Backoff (50, 100, 200, 400, 800 ms ...) bounds the attempts in two seconds: no tight loop.
    muxer.seen.recv_timeout(PATIENT).unwrap();
    let attempts = 1 + muxer.records().len();
    assert!(attempts <= 10, "{attempts} attempts");
}

#[test]
fn vmm_socket_that_appears_later_is_dialed() {
    let muxer = FakeMuxer::start(
        "late",
        Duration::from_millis(300),
        vec![Step::Reply(ok_reply(5))],
    );
    let link = dial(&muxer.addr(5), PATIENT).unwrap();
    assert_eq!(link.peer(), muxer.addr(5).to_string());
}

#[test]
fn missing_vmm_socket_gives_up_with_a_hint() {
    let dir = temp_dir("absent");
    let addr: Address = format!("hvsock://{}:5", dir.join("none.vsock").display())
        .parse()
        .unwrap();
    let err = dial(&addr, Duration::from_millis(200)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
    assert_eq!(
        err.to_string(),
        format!("{addr}: no socket file yet (is the VM running?), gave up after 200 ms")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn guest_initiated_listener_is_private_on_path_underscore_port() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("guest");
    let vmm = dir.join("vm.vsock");
    let addr: Address = format!("hvsock://{}:1024", vmm.display()).parse().unwrap();
    let listener = listen(&addr).unwrap();
    assert_eq!(listener.link_kind(), LinkKind::Hvsock);
    let socket = dir.join("vm.vsock_1024");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(listener.accept().unwrap().is_none());
    // The VMM connects on the guest's behalf; no handshake line either way.
    let mut vmm_side = UnixStream::connect(Path::new(&socket)).unwrap();
    vmm_side.write_all(b"guest").unwrap();
    let mut link = accept_within(&listener);
    assert_eq!(link.kind(), LinkKind::Hvsock);
    assert_eq!(read_link(&mut link, 5), b"guest");
    drop(listener);
    let _ = std::fs::remove_dir_all(&dir);
}

fn accept_within(listener: &vmux::transport::Listener) -> Link {
    let deadline = Instant::now() + PATIENT;
    loop {
        if let Some(link) = listener.accept().unwrap() {
            return link;
        }
        assert!(Instant::now() < deadline, "no connection accepted");
        thread::sleep(Duration::from_millis(10));
    }
}
