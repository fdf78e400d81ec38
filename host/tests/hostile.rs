//! Hostile-peer suite against the real binaries: a scripted peer ([`support::Peer`]) breaks the
//! protocol in every documented way against (a) a real `vmux-agent --listen unix://...` and
//! (b) a real `vmux-shim serve`, both as its hostile *guest* (serve dials a socket the test
//! listens on) and as its hostile *client*. Each case asserts the reply docs/protocol.md
//! documents (RESET / OPEN_ERR / GOAWAY codes, drops counted in the agent's `info` counters),
//! and afterwards that the victim is alive (no exit, no panic on stderr), under
//! [`support::RSS_LIMIT_KIB`] (VmRSS / VmHWM printed), and still serving a well-behaved client
//! (the library's `info` and `vmux-shim exec echo ok`).
//!
//! Every wait is bounded and fails with a message; nothing asserts on time.

mod support;

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{Peer, TempDir, Victim, READ_LIMIT};
use vmux::mux::Config;
use vmux::reactor::{random_nonce, Reactor};
use vmux::service::{ForwardTarget, Info};
use vmux::wire::{self, ErrorCode, Features, Flags, Kind, Role};

// ----- processes and well-behaved clients -----

fn shim_path() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vmux-shim"))
}

fn agent_path() -> PathBuf {
    let agent = shim_path()
        .parent()
        .expect("the shim binary has a directory")
        .join("vmux-agent");
    assert!(
        agent.exists(),
        "{} is missing: run 'cargo build --workspace' first (cargo test --workspace does it)",
        agent.display()
    );
    agent
}

/// A real agent listening on a unix socket in its own directory.
struct Agent {
    victim: Victim,
    sock: PathBuf,
    dir: TempDir,
}

impl Agent {
    fn start(tag: &str) -> Agent {
        let dir = TempDir::new(tag);
        let sock = dir.path("agent.sock");
        let mut cmd = Command::new(agent_path());
        cmd.arg("--listen")
            .arg(format!("unix://{}", sock.display()))
            .env(
                "VMUX_LOG",
                std::env::var("HOSTILE_AGENT_LOG").unwrap_or("warn".into()),
            );
        let mut victim = Victim::spawn("vmux-agent", cmd, &dir);
        victim.wait_for_path(&sock);
        Agent { victim, sock, dir }
    }

    fn addr(&self) -> String {
        format!("unix://{}", self.sock.display())
    }

    fn peer(&self) -> Peer {
        Peer::connect(&self.sock, Role::Client)
    }

    /// See [`still_serves`].
    fn still_serves(&mut self, case: &str) {
        let addr = self.addr();
        still_serves(&mut self.victim, &addr, case);
    }

    /// The peer, HELLO exchanged.
    fn hostile(&self) -> Peer {
        let mut p = self.peer();
        p.handshake(Features::empty());
        p
    }
}

/// `info` through the library, on a fresh well-behaved session; the error as text.
fn try_library_info(addr: &str) -> Result<Info, String> {
    let reactor = Reactor::spawn().map_err(|e| e.to_string())?;
    let link = vmux::transport::dial(&addr.parse().expect("address"), READ_LIMIT)
        .map_err(|e| format!("dial {addr}: {e}"))?;
    let session = reactor
        .add_link(link, Config::new(Role::Client, random_nonce()))
        .map_err(|e| e.to_string())?;
    session
        .wait_established(READ_LIMIT)
        .map_err(|e| format!("HELLO with {addr}: {e}"))?;
    let info = vmux::service::info(&session).map_err(|e| format!("info from {addr}: {e}"));
    let _ = session.close();
    reactor.shutdown();
    info
}

/// `info` through the library, on a fresh well-behaved session.
fn library_info(addr: &str) -> Info {
    let reactor = Reactor::spawn().expect("reactor");
    let link = vmux::transport::dial(&addr.parse().expect("address"), READ_LIMIT)
        .unwrap_or_else(|e| panic!("well-behaved client: dial {addr}: {e}"));
    let session = reactor
        .add_link(link, Config::new(Role::Client, random_nonce()))
        .expect("add link");
    session
        .wait_established(READ_LIMIT)
        .unwrap_or_else(|e| panic!("well-behaved client: HELLO with {addr}: {e}"));
    let info = vmux::service::info(&session)
        .unwrap_or_else(|e| panic!("well-behaved client: info from {addr}: {e}"));
    let _ = session.close();
    reactor.shutdown();
    info
}

/// Runs the shim against `addr` with a watchdog that kills it (by PID) after [`READ_LIMIT`] x 4.
fn shim(addr: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(shim_path());
    cmd.arg("-c")
        .arg(addr)
        .arg("--timeout")
        .arg("30")
        .args(args)
        .env_remove("VMUX_ADDR")
        .env("VMUX_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn vmux-shim");
    let pid = child.id();
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + READ_LIMIT * 4;
            while !done.load(Ordering::Relaxed) {
                if Instant::now() > deadline {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    return true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            false
        })
    };
    let out = child.wait_with_output().expect("wait for vmux-shim");
    done.store(true, Ordering::Relaxed);
    assert!(!watchdog.join().unwrap(), "vmux-shim {args:?} hung");
    out
}

/// A well-behaved client still gets service from the victim: `info` through the library and
/// `vmux-shim exec echo ok`; then the victim's memory is checked.
fn still_serves(victim: &mut Victim, addr: &str, case: &str) {
    victim.assert_alive();
    let info = library_info(addr);
    assert!(
        info.agent_version.is_some(),
        "{case}: info without a version"
    );
    let out = shim(addr, &["exec", "echo", "ok"]);
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).as_ref()
        ),
        (Some(0), "ok\n"),
        "{case}: vmux-shim exec echo ok; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    victim.check_memory(case);
}

/// A header with any raw fields and a correct header CRC.
fn raw_header(kind: u8, flags: u16, stream: u32, len: u32) -> [u8; wire::HEADER_LEN] {
    let mut h = [0u8; wire::HEADER_LEN];
    wire::Header {
        kind: Kind::Data,
        flags: Flags::empty(),
        stream,
        len,
    }
    .emit(&mut h);
    h[3] = kind;
    h[4..6].copy_from_slice(&flags.to_le_bytes());
    let crc = wire::crc32c(&h[..16]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Rewrites the kind, flags and stream id of the frame at the start of `bytes` and makes its
/// header CRC right again (a frame the decoder accepts and the mux must judge).
fn patch_header(bytes: &mut [u8], kind: u8, flags: u16, stream: u32) {
    bytes[3] = kind;
    bytes[4..6].copy_from_slice(&flags.to_le_bytes());
    bytes[8..12].copy_from_slice(&stream.to_le_bytes());
    let crc = wire::crc32c(&bytes[..16]);
    bytes[16..20].copy_from_slice(&crc.to_le_bytes());
}

// ----- the agent as the victim -----

/// A unix socket the victim's `forward` service connects to and the test never reads: what the
/// victim can consume from a stream forwarded there is bounded by the socket buffers.
struct Sink {
    path: PathBuf,
    listener: UnixListener,
    held: Vec<UnixStream>,
}

impl Sink {
    fn new(dir: &TempDir) -> Sink {
        let path = dir.path("sink.sock");
        let listener = UnixListener::bind(&path).expect("bind the sink");
        Sink {
            path,
            listener,
            held: Vec::new(),
        }
    }

    /// The `forward` OPEN arguments that reach this sink.
    fn target(&self) -> Vec<u8> {
        ForwardTarget::Unix(self.path.clone()).encode()
    }

    /// Accepts the victim's connection and keeps it, unread.
    fn hold(&mut self) {
        let (conn, _) = self.listener.accept().expect("accept the forward");
        self.held.push(conn);
    }
}

/// Sends DATA on `id` in 64 KiB frames, `total` bytes in all, from a thread (the victim reads
/// while it writes replies the caller reads).
fn send_data_in_background(p: &Peer, id: u32, total: usize) -> std::thread::JoinHandle<()> {
    let mut bytes = Vec::with_capacity(total + total / 1000);
    let mut left = total;
    while left > 0 {
        let n = left.min(60 << 10);
        bytes.extend(p.frame(Kind::Data, Flags::empty(), id, &vec![b'x'; n]));
        left -= n;
    }
    let mut w = p.writer();
    std::thread::spawn(move || {
        // The victim may hang up once it has had enough; that is not this thread's business.
        let _ = w.write_all(&bytes);
    })
}

/// Bytes of DATA certain to pass any credit a victim can grant on a stream whose consumer is
/// stuck: what it consumed (bounded by a sink's socket buffers and one pump chunk, well under
/// 1 MiB) plus one stream window (256 KiB).
const PAST_ANY_CREDIT: usize = 8 << 20;

#[test]
fn agent_resets_data_beyond_credit_with_flow_control_and_the_session_goes_on() {
    let mut agent = Agent::start("credit");
    let mut sink = Sink::new(&agent.dir);
    let mut p = agent.hostile();
    p.send_open(1, 1 << 20, "forward", &sink.target());
    p.expect_open_ok(1);
    sink.hold();
    // DATA past the granted credit: the sink stops reading, the agent stops granting, and the
    // hostile side keeps sending.
    let writer = send_data_in_background(&p, 1, PAST_ANY_CREDIT);
    let msg = p.expect_reset(1, ErrorCode::FLOW_CONTROL);
    eprintln!("agent: RESET(FLOW_CONTROL) on stream 1: {msg}");
    writer.join().unwrap();
    // The session goes on: a PING is answered, and what followed the RESET was dropped as stale.
    p.assert_alive(11);
    let facts = p.info(3).session;
    eprintln!("agent: after the credit violation: {facts:?}");
    assert_eq!(facts.resets_sent, Some(1), "{facts:?}");
    assert!(facts.stale_frames >= Some(1), "{facts:?}");
    agent.victim.check_memory("DATA beyond credit");
    agent.still_serves("DATA beyond credit");
}

#[test]
fn agent_refuses_an_open_past_its_stream_limit_with_stream_limit() {
    let mut agent = Agent::start("limit");
    let mut p = agent.hostile();
    let (_, max_streams) = p.victim_limits();
    // `info` streams the hostile side never closes: each stays open at the agent.
    let ids: Vec<u32> = (0..max_streams).map(|i| 2 * i + 1).collect();
    let mut burst = Vec::new();
    for &id in &ids {
        let mut args = Vec::new();
        vmux::wire::Open {
            initial_credit: 1024,
            service: "info",
            args: &[],
        }
        .emit(&mut args);
        burst.extend(p.frame(Kind::Open, Flags::empty(), id, &args));
    }
    p.send_raw(&burst);
    let over = 2 * max_streams + 1;
    p.send_open(over, 1024, "info", &[]);
    let msg = p.expect_open_err(over, ErrorCode::STREAM_LIMIT);
    eprintln!("agent: OPEN_ERR(STREAM_LIMIT) for stream {over}: {msg}");
    // The first stream ends once both CLOSEs crossed; then there is room for one more.
    p.expect_close(1);
    p.send_close(1);
    p.send_open(over + 2, 1024, "info", &[]);
    p.expect_open_ok(over + 2);
    p.assert_alive(21);
    agent
        .victim
        .check_memory(&format!("{max_streams} open streams"));
    // Another session is not affected by this one's limit.
    agent.still_serves("stream limit");
}

#[test]
fn agent_ends_the_session_with_frame_too_large_for_an_oversized_length() {
    let mut agent = Agent::start("large");
    for len in [None, Some(1u32 << 30), Some(u32::MAX)] {
        let mut p = agent.hostile();
        let (max_frame, _) = p.victim_limits();
        let len = len.unwrap_or(max_frame + 1);
        // Only the header: the length is refused before any payload buffer exists.
        p.send_raw(&raw_header(Kind::Data as u8, 0, 1, len));
        let msg = p.expect_goaway(ErrorCode::FRAME_TOO_LARGE);
        eprintln!("agent: GOAWAY(FRAME_TOO_LARGE) for length {len}: {msg}");
        agent.still_serves(&format!("length {len}"));
    }
}

#[test]
fn agent_survives_links_closed_mid_frame() {
    let mut agent = Agent::start("truncated");
    let hello_then = |cut: &dyn Fn(&Peer) -> Vec<u8>| {
        let mut p = agent.hostile();
        let bytes = cut(&p);
        p.send_raw(&bytes);
        p.shutdown_write();
        // The agent ends the session on EOF: the link closes (whatever it said before).
        p.drain_to_eof();
    };
    // Half a header, a header without its payload, a payload without its trailer.
    hello_then(&|_| raw_header(Kind::Ping as u8, 0, 0, 8)[..10].to_vec());
    hello_then(&|p| {
        let mut f = p.frame(Kind::Open, Flags::empty(), 1, b"\0\0\x01\0\x04info");
        f.truncate(wire::HEADER_LEN);
        f
    });
    hello_then(&|p| {
        let mut f = p.frame(Kind::Data, Flags::empty(), 1, &[7; 4000]);
        f.truncate(wire::HEADER_LEN + 1000);
        f
    });
    // Before any HELLO: a partial HELLO, then nothing.
    let mut p = agent.peer();
    let mut hello = p.frame(Kind::Hello, Flags::empty(), 0, &[0; 40]);
    hello.truncate(30);
    p.send_raw(&hello);
    p.shutdown_write();
    p.drain_to_eof();
    agent.still_serves("links closed mid-frame");
}

#[test]
fn agent_drops_frames_with_bad_crcs_counts_them_and_resyncs() {
    let mut agent = Agent::start("crc");
    let mut p = agent.peer();
    // Ask for payload trailers, as a serial link would.
    p.handshake(Features::PAYLOAD_CRC);
    // Frames that would end the session if they were believed: DATA on a never-opened stream.
    let mut bad_header = p.frame(Kind::Data, Flags::empty(), 99, b"never opened");
    bad_header[8] ^= 0x40; // stream id changed, header CRC no longer matches
    let mut bad_payload = p.frame(Kind::Data, Flags::empty(), 101, b"never opened either");
    let last = bad_payload.len() - 1;
    bad_payload[last] ^= 0x01; // trailer no longer matches
    let noise = b"console noise\r\n".to_vec();
    let mut bad_ping = p.frame(Kind::Ping, Flags::empty(), 0, &77u64.to_le_bytes());
    bad_ping[wire::HEADER_LEN] ^= 0x01; // payload changed under its trailer: a PING for 76
                                        // Two runs of discarded bytes, each counted as one resync, with a good frame between.
    p.send_raw(&bad_header);
    p.send_ping(1);
    p.expect_pong(1);
    for bytes in [&bad_payload, &noise, &bad_ping] {
        p.send_raw(bytes);
    }
    // The next good frame is found and answered; the corrupt PING never was.
    p.send_ping(78);
    assert_eq!(p.expect_pong(78), 1, "a PONG for the corrupt PING was sent");
    let facts = p.info(1).session;
    eprintln!("agent: after corrupt frames: {facts:?}");
    assert_eq!(facts.header_crc_errors, Some(1), "{facts:?}");
    assert_eq!(facts.payload_crc_errors, Some(2), "{facts:?}");
    assert_eq!(facts.resyncs, Some(2), "{facts:?}");
    let corrupt = bad_header.len() + bad_payload.len() + noise.len() + bad_ping.len();
    assert_eq!(facts.discarded_bytes, Some(corrupt as u64), "{facts:?}");
    p.assert_alive(79);
    agent.still_serves("corrupt frames");
}

#[test]
fn agent_ends_the_session_with_protocol_for_unknown_kinds_flags_and_stream_ids() {
    let mut agent = Agent::start("protocol");
    // A well-behaved session stays up through all of it.
    let mut bystander = agent.hostile();
    // Each case is a well-formed frame (payload trailer included where the kind needs one)
    // with one header field changed and the header CRC made right again.
    let cases: [(&str, Kind, u8, u16, u32); 7] = [
        ("unknown kind 0x42", Kind::Data, 0x42, 0, 1),
        ("unknown kind 0x00", Kind::Ping, 0x00, 0, 0),
        (
            "DATA with flag 0x8000",
            Kind::Data,
            Kind::Data as u8,
            0x8000,
            1,
        ),
        (
            "HELLO with flag 0x0002",
            Kind::Hello,
            Kind::Hello as u8,
            0x0002,
            0,
        ),
        (
            "GOAWAY with flag 0x0100",
            Kind::GoAway,
            Kind::GoAway as u8,
            0x0100,
            0,
        ),
        ("PING on stream 5", Kind::Ping, Kind::Ping as u8, 0, 5),
        ("CREDIT on stream 0", Kind::Credit, Kind::Credit as u8, 0, 0),
    ];
    for (what, like, kind, flags, stream) in cases {
        let mut p = agent.hostile();
        let payload: Vec<u8> = match like {
            Kind::Hello => p.victim_hello.unwrap().to_bytes().to_vec(),
            Kind::GoAway => 0u32.to_le_bytes().to_vec(),
            Kind::Credit => 1u32.to_le_bytes().to_vec(),
            _ => vec![0; 8],
        };
        let mut bytes = p.frame(like, Flags::empty(), stream.max(1), &payload);
        patch_header(&mut bytes, kind, flags, stream);
        p.send_raw(&bytes);
        let msg = p.expect_goaway(ErrorCode::PROTOCOL);
        eprintln!("agent: GOAWAY(PROTOCOL) for {what}: {msg}");
        agent.victim.assert_alive();
    }
    bystander.assert_alive(1);
    agent.still_serves("unknown kinds, flags and stream ids");
}

#[test]
fn agent_ends_the_session_with_version_and_role_conflict_and_drops_frames_before_hello() {
    let mut agent = Agent::start("hello");
    // Leftovers of an earlier link before the HELLO: dropped as stale, not judged.
    let mut p = agent.peer();
    let stale = p.frame(Kind::Data, Flags::empty(), 77, b"from an earlier link");
    p.send_raw(&stale);
    p.handshake(Features::empty());
    let facts = p.info(1).session;
    assert_eq!(facts.stale_frames, Some(1), "{facts:?}");
    // Another protocol version in an intact header: GOAWAY(VERSION) with the documented text.
    let mut p = agent.peer();
    let mut ping = p.frame(Kind::Ping, Flags::empty(), 0, &1u64.to_le_bytes());
    ping[2] = 9;
    let crc = wire::crc32c(&ping[..16]);
    ping[16..20].copy_from_slice(&crc.to_le_bytes());
    p.send_raw(&ping);
    let msg = p.expect_goaway(ErrorCode::VERSION);
    assert_eq!(
        msg,
        "peer speaks vmux protocol version 9, this side speaks version 1"
    );
    // Both sides claiming the server role: GOAWAY(ROLE_CONFLICT).
    let mut p = Peer::connect(&agent.sock, Role::Server);
    p.send_hello(Features::empty(), false);
    let msg = p.expect_goaway(ErrorCode::ROLE_CONFLICT);
    eprintln!("agent: GOAWAY(ROLE_CONFLICT): {msg}");
    agent.still_serves("version and role conflicts");
}

#[test]
fn agent_answers_malformed_stream_frames_with_reset_and_bad_opens_with_open_err() {
    let mut agent = Agent::start("malformed");
    let mut sink = Sink::new(&agent.dir);
    let mut p = agent.hostile();
    // OPENs whose payload is malformed: OPEN_ERR(PROTOCOL), the session goes on.
    let bad_opens: [(&str, &[u8]); 3] = [
        ("a short OPEN", b"\0\0"),
        ("a service name with a slash", b"\0\0\x01\0\x02a/"),
        ("a name longer than its payload", b"\0\0\x01\0\x09info"),
    ];
    let mut id = 1;
    for (what, payload) in bad_opens {
        p.send_frame(Kind::Open, Flags::empty(), id, payload);
        let msg = p.expect_open_err(id, ErrorCode::PROTOCOL);
        eprintln!("agent: OPEN_ERR(PROTOCOL) for {what}: {msg}");
        id += 2;
    }
    // Malformed frames on an open stream: RESET(PROTOCOL) of that stream only.
    type Bad = fn(&Peer, u32) -> Vec<u8>;
    let bad_frames: [(&str, Bad); 4] = [
        ("a 3-byte CREDIT", |p, id| {
            p.frame(Kind::Credit, Flags::empty(), id, &[1, 2, 3])
        }),
        ("a CLOSE with a payload", |p, id| {
            p.frame(Kind::Close, Flags::empty(), id, b"x")
        }),
        ("OPEN_OK on an open stream", |p, id| {
            p.frame(Kind::OpenOk, Flags::empty(), id, &[0, 0, 1, 0])
        }),
        ("a CREDIT half the number space ahead", |p, id| {
            let limit = (1u32 << 20).wrapping_add(0x7FFF_FFFF);
            p.frame(Kind::Credit, Flags::empty(), id, &limit.to_le_bytes())
        }),
    ];
    for (what, frame) in bad_frames {
        // 1 MiB of credit for the agent's data in OPEN: the last case is measured from it.
        p.send_open(id, 1 << 20, "forward", &sink.target());
        p.expect_open_ok(id);
        sink.hold();
        let bytes = frame(&p, id);
        p.send_raw(&bytes);
        let msg = p.expect_reset(id, ErrorCode::PROTOCOL);
        eprintln!("agent: RESET(PROTOCOL) for {what}: {msg}");
        id += 2;
    }
    p.assert_alive(41);
    let facts = p.info(id).session;
    assert_eq!(facts.opens_refused, Some(3), "{facts:?}");
    assert_eq!(facts.resets_sent, Some(4), "{facts:?}");
    // An OPEN with the agent's own parity, or not above the last one: GOAWAY(PROTOCOL).
    p.send_open(id + 1, 1024, "info", &[]);
    let msg = p.expect_goaway(ErrorCode::PROTOCOL);
    eprintln!("agent: GOAWAY(PROTOCOL) for an OPEN of the wrong parity: {msg}");
    let mut p = agent.hostile();
    p.send_open(7, 1024, "info", &[]);
    p.expect_open_ok(7);
    p.send_open(5, 1024, "info", &[]);
    let msg = p.expect_goaway(ErrorCode::PROTOCOL);
    eprintln!("agent: GOAWAY(PROTOCOL) for an OPEN id going backwards: {msg}");
    // A HELLO whose limits are out of range.
    let mut p = agent.peer();
    let mut hello = vmux::wire::Hello {
        role: Role::Client,
        version: 1,
        features: Features::empty(),
        max_frame: 64 << 10,
        max_streams: 1,
        nonce: 9,
        boot_id: [0; 16],
    }
    .to_bytes();
    hello[8..12].copy_from_slice(&16u32.to_le_bytes()); // max_frame 16 bytes
    p.send_frame(Kind::Hello, Flags::empty(), 0, &hello);
    let msg = p.expect_goaway(ErrorCode::PROTOCOL);
    eprintln!("agent: GOAWAY(PROTOCOL) for a HELLO with max_frame 16: {msg}");
    agent.still_serves("malformed stream frames");
}

#[test]
fn agent_drops_data_on_ended_streams_as_stale_and_refuses_never_opened_ones() {
    let mut agent = Agent::start("stale");
    let mut sink = Sink::new(&agent.dir);
    let mut p = agent.hostile();
    // Stream 1 ends normally: both CLOSEs crossed.
    p.send_open(1, 1 << 20, "info", &[]);
    p.expect_open_ok(1);
    p.expect_close(1);
    p.send_close(1);
    // Stream 3 ends by our RESET.
    p.send_open(3, 1 << 20, "forward", &sink.target());
    p.expect_open_ok(3);
    sink.hold();
    p.send_reset(3, ErrorCode::CANCEL);
    // DATA the peer "sent before it learned of the end": dropped, counted, nothing answered.
    p.send_data(1, b"late for stream 1");
    p.send_data(3, b"late for stream 3");
    p.assert_alive(31);
    // DATA after our own CLOSE on a stream still open the other way: RESET(PROTOCOL).
    p.send_open(5, 1 << 20, "forward", &sink.target());
    p.expect_open_ok(5);
    sink.hold();
    p.send_close(5);
    p.send_data(5, b"after close");
    let msg = p.expect_reset(5, ErrorCode::PROTOCOL);
    eprintln!("agent: RESET(PROTOCOL) for DATA after CLOSE: {msg}");
    let facts = p.info(7).session;
    eprintln!("agent: after late DATA: {facts:?}");
    assert_eq!(facts.stale_frames, Some(2), "{facts:?}");
    assert_eq!(facts.resets_sent, Some(1), "{facts:?}");
    // DATA on an id of ours that was never opened is a protocol error.
    p.send_data(1001, b"never opened");
    let msg = p.expect_goaway(ErrorCode::PROTOCOL);
    eprintln!("agent: GOAWAY(PROTOCOL) for DATA on a never-opened stream: {msg}");
    agent.still_serves("DATA on ended and never-opened streams");
}

/// PINGs sent in the flood.
const PING_FLOOD: u64 = 100_000;

/// Floods `p` with [`PING_FLOOD`] PINGs from a thread while reading: returns the PONGs seen up
/// to the one for the last PING.
fn ping_flood(p: &mut Peer) -> usize {
    let mut flood = Vec::new();
    for i in 0..PING_FLOOD {
        flood.extend(p.frame(Kind::Ping, Flags::empty(), 0, &i.to_le_bytes()));
    }
    let mut w = p.writer();
    let writer = std::thread::spawn(move || w.write_all(&flood));
    let pongs = p.expect_pong(PING_FLOOD - 1);
    writer.join().unwrap().expect("write the flood");
    pongs
}

#[test]
fn agent_answers_a_ping_flood_with_a_bounded_number_of_pongs() {
    let mut agent = Agent::start("pings");
    let mut p = agent.hostile();
    let addr = agent.addr();
    // A well-behaved client works while the flood is on.
    let bystander = std::thread::spawn(move || library_info(&addr));
    let pongs = ping_flood(&mut p);
    eprintln!("agent: {PING_FLOOD} PINGs cost {pongs} PONGs");
    assert!(
        pongs as u64 <= PING_FLOOD / 100,
        "{pongs} PONGs for {PING_FLOOD} PINGs: a flood must cost about one PONG per read"
    );
    assert!(bystander.join().unwrap().agent_version.is_some());
    let facts = p.info(1).session;
    assert!(facts.frames_in >= Some(PING_FLOOD), "{facts:?}");
    p.assert_alive(PING_FLOOD + 1);
    agent.still_serves("a ping flood");
}

/// OPENs in a never-reading flood: far more control frames than the victim may queue
/// (`max_pending_control`, 4096) plus what its output buffer (256 KiB) and the socket hold.
const OPEN_FLOOD: u32 = 40_000;

/// OPEN frames for `service` on ids `first, first + 2, ...`, `n` of them.
fn open_burst(p: &Peer, first: u32, n: u32, service: &str) -> Vec<u8> {
    let mut args = Vec::new();
    vmux::wire::Open {
        initial_credit: 1024,
        service,
        args: &[],
    }
    .emit(&mut args);
    let mut out = Vec::new();
    for i in 0..n {
        out.extend(p.frame(Kind::Open, Flags::empty(), first + 2 * i, &args));
    }
    out
}

#[test]
fn agent_ends_the_session_of_a_peer_that_never_reads_with_overload() {
    let mut agent = Agent::start("overload");
    // All at once: the first streams are accepted, the rest refused by the mux itself.
    // The agent may end the session and close the link before the whole flood is written.
    let mut p = agent.hostile();
    let burst = open_burst(&p, 1, OPEN_FLOOD, "info");
    let _ = p.try_send_raw(&burst);
    // Paced, to an unknown service: the service loop refuses each batch before the next one
    // arrives (far below the stream limit), so the refusals are the application's, not the
    // mux's, and queue behind the unread output one by one.
    let mut q = agent.hostile();
    for batch in 0..OPEN_FLOOD / 20 {
        let burst = open_burst(&q, 1 + 40 * batch, 20, "no-such-service");
        if q.try_send_raw(&burst).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // While both sessions sit unread, the agent serves others and stays small.
    agent.still_serves("two peers that never read");
    let msg = p.expect_goaway(ErrorCode::OVERLOAD);
    eprintln!("agent: GOAWAY(OVERLOAD) for an unread OPEN burst: {msg}");
    let msg = q.expect_goaway(ErrorCode::OVERLOAD);
    eprintln!("agent: GOAWAY(OVERLOAD) for unread paced refusals: {msg}");
    agent.still_serves("overload");
}

/// Writes into a socket the victim's `forward` reads from, counting what it took, until the
/// socket fails.
struct Feeder {
    written: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl Feeder {
    /// Accepts the victim's connection on `listener` and writes into it until it fails.
    fn start(listener: UnixListener) -> Feeder {
        let written = Arc::new(AtomicU64::new(0));
        let count = written.clone();
        let thread = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept the forward");
            let chunk = vec![b'z'; 64 << 10];
            while let Ok(n) = conn.write(&chunk) {
                count.fetch_add(n as u64, Ordering::Relaxed);
            }
        });
        Feeder { written, thread }
    }

    /// Waits until the victim stops taking bytes (no progress for a while), bounded by
    /// [`READ_LIMIT`]; returns how many it took.
    fn wait_for_backpressure(&self, what: &str, limit: u64, pid: u32) -> u64 {
        let deadline = Instant::now() + READ_LIMIT;
        let mut last = u64::MAX;
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let now = self.written.load(Ordering::Relaxed);
            assert!(
                now < limit,
                "{what} took {now} bytes from a stream its peer never reads: no backpressure ({})",
                support::vm_lines(pid)
            );
            if now == last && now > 0 {
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "{what} kept taking bytes ({now}) for {READ_LIMIT:?} from a stream its peer never reads"
            );
            last = now;
        }
    }
}

/// The most a victim may take from a forwarded socket whose stream its peer never reads:
/// whatever it holds must fit in its memory bound.
const BACKPRESSURE_LIMIT: u64 = 32 << 20;

#[test]
fn agent_applies_backpressure_to_output_a_peer_never_reads() {
    let mut agent = Agent::start("noread");
    let feed = agent.dir.path("feed.sock");
    let feeder = Feeder::start(UnixListener::bind(&feed).unwrap());
    let mut p = agent.peer();
    // HELLO and an OPEN with 2 GiB of credit, then never a read: the agent may send all it
    // likes as far as credit goes, and the link takes nothing after the socket buffer.
    p.send_hello(Features::empty(), false);
    p.send_open(
        1,
        1 << 31,
        "forward",
        &ForwardTarget::Unix(feed.clone()).encode(),
    );
    let pid = agent.victim.pid();
    let took = feeder.wait_for_backpressure("vmux-agent", BACKPRESSURE_LIMIT, pid);
    eprintln!("agent: took {took} bytes from the forwarded socket, then stopped");
    agent
        .victim
        .check_memory("a peer that never reads 2 GiB of granted output");
    agent.still_serves("a peer that never reads its output");
    // When the peer goes, the forward goes: the feeder's socket fails.
    drop(p);
    feeder.thread.join().unwrap();
    agent.still_serves("the never-reading peer left");
}

// ----- `vmux-shim serve` as the victim -----

/// The socket `serve` dials as its guest link, owned by the test: each connection serve makes
/// is either played by a hostile guest or spliced to a real agent.
struct GuestSocket {
    listener: UnixListener,
}

impl GuestSocket {
    fn bind(path: &Path) -> GuestSocket {
        let listener = UnixListener::bind(path).expect("bind the guest socket");
        listener.set_nonblocking(true).unwrap();
        GuestSocket { listener }
    }

    /// serve's next dial (bounded wait: serve redials within a second or so).
    fn accept(&self, victim: &mut Victim) -> UnixStream {
        let deadline = Instant::now() + READ_LIMIT;
        loop {
            match self.listener.accept() {
                Ok((conn, _)) => {
                    conn.set_nonblocking(false).unwrap();
                    return conn;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    victim.assert_alive();
                    assert!(Instant::now() < deadline, "serve did not dial its guest");
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("accept serve's dial: {e}"),
            }
        }
    }

    /// serve's next dial, played by a hostile guest (HELLO exchanged).
    fn hostile(&self, victim: &mut Victim, features: Features) -> Peer {
        let mut p = Peer::over(self.accept(victim), Role::Server);
        p.handshake(features);
        p
    }

    /// serve's next dial, spliced byte for byte to the agent at `agent` (two copy threads
    /// that end when either side closes).
    fn proxy_next(&self, victim: &mut Victim, agent: &Path) {
        let a = self.accept(victim);
        let b = UnixStream::connect(agent).expect("connect the agent");
        splice(a.try_clone().unwrap(), b.try_clone().unwrap());
        splice(b, a);
    }
}

fn splice(mut from: UnixStream, mut to: UnixStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(std::net::Shutdown::Both);
        let _ = from.shutdown(std::net::Shutdown::Both);
    });
}

/// A real `vmux-shim serve` dialing a test-owned guest socket, with a real agent behind it
/// when the test splices it there.
struct Serve {
    victim: Victim,
    sock: PathBuf,
    guest: GuestSocket,
    agent: Agent,
}

impl Serve {
    fn start(tag: &str) -> Serve {
        let agent = Agent::start(tag);
        let guest_path = agent.dir.path("guest.sock");
        let guest = GuestSocket::bind(&guest_path);
        let sock = agent.dir.path("serve.sock");
        let mut cmd = Command::new(shim_path());
        cmd.arg("-c")
            .arg(format!("unix://{}", guest_path.display()))
            .args(["--timeout", "30", "serve", "--listen"])
            .arg(format!("unix://{}", sock.display()))
            .env_remove("VMUX_ADDR")
            .env(
                "VMUX_LOG",
                std::env::var("HOSTILE_SERVE_LOG").unwrap_or("warn".into()),
            );
        let mut victim = Victim::spawn("vmux-shim-serve", cmd, &agent.dir);
        victim.wait_for_path(&sock);
        Serve {
            victim,
            sock,
            guest,
            agent,
        }
    }

    fn addr(&self) -> String {
        format!("unix://{}", self.sock.display())
    }

    /// A hostile client of serve's listening socket (HELLO exchanged).
    fn hostile_client(&self) -> Peer {
        let mut p = Peer::connect(&self.sock, Role::Client);
        p.handshake(Features::empty());
        p
    }

    /// serve's next guest link goes to the real agent.
    fn proxy_next(&mut self) {
        let agent = self.agent.sock.clone();
        self.guest.proxy_next(&mut self.victim, &agent);
    }

    /// serve's next guest link is played by a hostile guest.
    fn hostile_guest(&mut self, features: Features) -> Peer {
        self.guest.hostile(&mut self.victim, features)
    }

    /// A well-behaved client gets service through serve; the agent is checked too.
    fn still_serves(&mut self, case: &str) {
        let addr = self.addr();
        still_serves(&mut self.victim, &addr, case);
        self.agent.victim.assert_alive();
    }
}

#[test]
fn serve_answers_a_hostile_client_with_the_documented_codes_and_keeps_serving() {
    let mut serve = Serve::start("serve-client");
    serve.proxy_next();
    serve.still_serves("start");
    let mut sink = Sink::new(&serve.agent.dir);

    // Credit: DATA past what serve granted on a stream it splices to the agent.
    let mut p = serve.hostile_client();
    p.send_open(1, 1 << 20, "forward", &sink.target());
    p.expect_open_ok(1);
    sink.hold();
    let writer = send_data_in_background(&p, 1, PAST_ANY_CREDIT);
    let msg = p.expect_reset(1, ErrorCode::FLOW_CONTROL);
    eprintln!("serve: RESET(FLOW_CONTROL) to a client: {msg}");
    writer.join().unwrap();
    p.assert_alive(1);
    // Data on the ended stream is stale, on a never-opened one a protocol error.
    p.send_data(1, b"late");
    p.assert_alive(2);
    p.send_data(1001, b"never opened");
    let msg = p.expect_goaway(ErrorCode::PROTOCOL);
    eprintln!("serve: GOAWAY(PROTOCOL) for DATA on a never-opened stream: {msg}");
    serve.still_serves("a client's credit violation and stray DATA");

    // Oversized length, unknown kind, unknown flag.
    let mut p = serve.hostile_client();
    p.send_raw(&raw_header(Kind::Data as u8, 0, 1, 1 << 24));
    let msg = p.expect_goaway(ErrorCode::FRAME_TOO_LARGE);
    eprintln!("serve: GOAWAY(FRAME_TOO_LARGE) to a client: {msg}");
    for (kind, flags) in [(0x42u8, 0u16), (Kind::Data as u8, 0x8000)] {
        let mut p = serve.hostile_client();
        let mut bytes = p.frame(Kind::Data, Flags::empty(), 1, b"x");
        patch_header(&mut bytes, kind, flags, 1);
        p.send_raw(&bytes);
        let msg = p.expect_goaway(ErrorCode::PROTOCOL);
        eprintln!("serve: GOAWAY(PROTOCOL) to a client: {msg}");
    }
    serve.still_serves("oversized and malformed frames from a client");

    // Corrupt frames are dropped (they would be fatal if believed) and the session goes on.
    let mut p = Peer::connect(&serve.sock, Role::Client);
    p.handshake(Features::PAYLOAD_CRC);
    let mut bad_header = p.frame(Kind::Data, Flags::empty(), 99, b"never opened");
    bad_header[8] ^= 0x40;
    let mut bad_payload = p.frame(Kind::Data, Flags::empty(), 101, b"never opened either");
    let last = bad_payload.len() - 1;
    bad_payload[last] ^= 0x01;
    p.send_raw(&bad_header);
    p.send_raw(b"console noise\r\n");
    p.send_raw(&bad_payload);
    p.assert_alive(3);
    // A stream through serve works on the same session afterwards.
    let info = p.info(1);
    assert!(info.agent_version.is_some());

    // Links closed mid-frame.
    for cut in [10usize, wire::HEADER_LEN, wire::HEADER_LEN + 3] {
        let mut p = serve.hostile_client();
        let mut f = p.frame(Kind::Ping, Flags::empty(), 0, &9u64.to_le_bytes());
        f.truncate(cut);
        p.send_raw(&f);
        p.shutdown_write();
        p.drain_to_eof();
    }
    serve.still_serves("corrupt and truncated frames from a client");

    // A ping flood costs a bounded number of PONGs.
    let mut p = serve.hostile_client();
    let pongs = ping_flood(&mut p);
    eprintln!("serve: {PING_FLOOD} PINGs from a client cost {pongs} PONGs");
    assert!(pongs as u64 <= PING_FLOOD / 100, "{pongs} PONGs");
    serve.still_serves("a client's ping flood");
    serve.agent.victim.check_memory("serve's hostile client");
}

#[test]
fn serve_refuses_a_client_open_past_its_stream_limit() {
    let mut serve = Serve::start("serve-limit");
    serve.proxy_next();
    let mut p = serve.hostile_client();
    let (_, max_streams) = p.victim_limits();
    let burst = open_burst(&p, 1, max_streams, "info");
    p.send_raw(&burst);
    let over = 2 * max_streams + 1;
    p.send_open(over, 1024, "info", &[]);
    let msg = p.expect_open_err(over, ErrorCode::STREAM_LIMIT);
    eprintln!("serve: OPEN_ERR(STREAM_LIMIT) to a client: {msg}");
    p.assert_alive(1);
    // Every stream is answered by the agent through serve, so each is spliced and none waits
    // for the guest's answer any more.
    p.expect_open_oks((0..max_streams).map(|i| 2 * i + 1));
    serve
        .victim
        .check_memory(&format!("{max_streams} open client streams"));
    // The client leaves; its streams (and their guest halves) go with it at once.
    drop(p);
    serve.still_serves("a client at its stream limit");
}

#[test]
fn one_serve_client_at_its_stream_limit_does_not_lock_the_others_out() {
    let mut serve = Serve::start("serve-quota");
    serve.proxy_next();
    let mut p = serve.hostile_client();
    let (_, max_streams) = p.victim_limits();
    assert_eq!(max_streams, 256, "serve's default per-client stream limit");
    let burst = open_burst(&p, 1, max_streams, "info");
    p.send_raw(&burst);
    p.expect_open_oks((0..max_streams).map(|i| 2 * i + 1));
    // It holds its whole quota (a quarter of the guest's slots): others are still served.
    serve.still_serves("while another client holds its full stream quota");
    p.assert_alive(1);
}

#[test]
fn serve_keeps_its_guest_link_when_clients_hang_up_with_forwards_in_flight() {
    let mut serve = Serve::start("serve-hangup");
    serve.proxy_next();
    for round in 0..10 {
        // A full stream table, so that serve's router is still forwarding when the client
        // goes; the STREAM_LIMIT refusal of one more proves serve read them all.
        let mut p = serve.hostile_client();
        let (_, max_streams) = p.victim_limits();
        let burst = open_burst(&p, 1, max_streams + 1, "info");
        p.send_raw(&burst);
        p.expect_open_err(2 * max_streams + 1, ErrorCode::STREAM_LIMIT);
        drop(p);
        eprintln!("serve: client {round} hung up with its forwards in flight");
    }
    // The guest link must survive (a RESET for a stream whose OPEN never reached the agent
    // would make the agent end it with PROTOCOL). Streams still in flight to the agent hold
    // guest slots until it answers, so the first tries may be refused with STREAM_LIMIT.
    let addr = serve.addr();
    let deadline = Instant::now() + READ_LIMIT;
    loop {
        match try_library_info(&addr) {
            Ok(_) => break,
            Err(e) if e.contains("concurrent streams") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("a well-behaved client after clients hung up: {e}"),
        }
    }
    match serve.guest.listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Ok(_) => panic!("serve lost its guest link and redialed"),
        Err(e) => panic!("guest socket: {e}"),
    }
    serve.still_serves("clients hanging up with forwards in flight");
}

#[test]
fn serve_bounds_what_a_never_reading_client_costs() {
    let mut serve = Serve::start("serve-noread");
    serve.proxy_next();
    // Output a client never reads, with 2 GiB of credit: backpressure through the splice, the
    // guest link and the agent's pump, back to the socket the agent forwards from.
    let feed = serve.agent.dir.path("feed.sock");
    let feeder = Feeder::start(UnixListener::bind(&feed).unwrap());
    let mut p = Peer::connect(&serve.sock, Role::Client);
    p.send_hello(Features::empty(), false);
    p.send_open(
        1,
        1 << 31,
        "forward",
        &ForwardTarget::Unix(feed.clone()).encode(),
    );
    let took = feeder.wait_for_backpressure(
        "serve and the agent",
        BACKPRESSURE_LIMIT,
        serve.victim.pid(),
    );
    eprintln!("serve: the agent took {took} bytes for a client that never reads, then stopped");
    serve
        .victim
        .check_memory("a client that never reads 2 GiB of granted output");
    serve
        .agent
        .victim
        .check_memory("serve's client never reads");
    serve.still_serves("a client that never reads its output");
    drop(p);
    feeder.thread.join().unwrap();

    // An OPEN flood never read: OVERLOAD. (Not checked concurrently: while the flood is in
    // flight its streams hold every slot of the one guest link, and serve refuses other
    // clients' streams with STREAM_LIMIT until the agent's refusals come back.)
    let mut p = serve.hostile_client();
    let burst = open_burst(&p, 1, OPEN_FLOOD, "no-such-service");
    let _ = p.try_send_raw(&burst);
    serve
        .victim
        .check_memory("a client that never reads its refusals");
    let msg = p.expect_goaway(ErrorCode::OVERLOAD);
    eprintln!("serve: GOAWAY(OVERLOAD) to a client that never reads: {msg}");
    serve.still_serves("overload");
}

#[test]
fn serve_answers_a_hostile_guest_with_the_documented_codes_and_redials() {
    let mut serve = Serve::start("serve-guest");

    // Oversized length from the guest: GOAWAY(FRAME_TOO_LARGE); serve redials.
    let mut g = serve.hostile_guest(Features::empty());
    let (max_frame, _) = g.victim_limits();
    g.send_raw(&raw_header(Kind::Data as u8, 0, 2, max_frame + 1));
    let msg = g.expect_goaway(ErrorCode::FRAME_TOO_LARGE);
    eprintln!("serve: GOAWAY(FRAME_TOO_LARGE) to its guest: {msg}");

    // Unknown kind, flag, stream id sort: GOAWAY(PROTOCOL).
    for (like, kind, flags, stream) in [
        (Kind::Data, 0x42u8, 0u16, 2u32),
        (Kind::Data, Kind::Data as u8, 0x8000, 2),
        (Kind::Ping, Kind::Ping as u8, 0, 4),
    ] {
        let mut g = serve.hostile_guest(Features::empty());
        let mut bytes = g.frame(like, Flags::empty(), stream.max(1), &[0; 8]);
        patch_header(&mut bytes, kind, flags, stream);
        g.send_raw(&bytes);
        let msg = g.expect_goaway(ErrorCode::PROTOCOL);
        eprintln!("serve: GOAWAY(PROTOCOL) to its guest: {msg}");
    }

    // Corrupt frames (would be fatal if believed) are dropped; a ping flood costs few PONGs;
    // DATA on a never-opened stream ends the session with PROTOCOL.
    let mut g = serve.hostile_guest(Features::PAYLOAD_CRC);
    let mut bad_header = g.frame(Kind::Data, Flags::empty(), 98, b"never opened");
    bad_header[8] ^= 0x40;
    let mut bad_payload = g.frame(Kind::Data, Flags::empty(), 100, b"never opened either");
    let last = bad_payload.len() - 1;
    bad_payload[last] ^= 0x01;
    g.send_raw(&bad_header);
    g.send_raw(b"\x1b[0mconsole noise\r\n");
    g.send_raw(&bad_payload);
    g.assert_alive(1);
    let pongs = ping_flood(&mut g);
    eprintln!("serve: {PING_FLOOD} PINGs from its guest cost {pongs} PONGs");
    assert!(pongs as u64 <= PING_FLOOD / 100, "{pongs} PONGs");
    g.send_data(1000, b"never opened");
    let msg = g.expect_goaway(ErrorCode::PROTOCOL);
    eprintln!("serve: GOAWAY(PROTOCOL) for DATA on a never-opened stream: {msg}");

    // Links closed mid-frame.
    for cut in [7usize, wire::HEADER_LEN, wire::HEADER_LEN + 5] {
        let mut g = serve.hostile_guest(Features::empty());
        let mut f = g.frame(Kind::Data, Flags::empty(), 2, &[1; 64]);
        f.truncate(cut);
        g.send_raw(&f);
        g.shutdown_write();
        g.drain_to_eof();
    }

    // Credit: a client's stream reaches the hostile guest, which answers and then sends more
    // than serve granted (the client never reads, so serve cannot have consumed much).
    let mut g = serve.hostile_guest(Features::empty());
    let addr = serve.addr();
    let (release_tx, release_rx) = crossbeam_channel::bounded::<()>(1);
    let client = std::thread::spawn(move || {
        let reactor = Reactor::spawn().expect("reactor");
        let link = vmux::transport::dial(&addr.parse().unwrap(), READ_LIMIT).expect("dial serve");
        let session = reactor
            .add_link(link, Config::new(Role::Client, random_nonce()))
            .expect("add link");
        let stream = session.open("anything", b"").expect("open through serve");
        let _ = release_rx.recv_timeout(READ_LIMIT * 2);
        drop(stream);
        reactor.shutdown();
    });
    let open = g.expect("an OPEN forwarded by serve", |f| f.kind == Kind::Open);
    g.send_open_ok(open.stream, 1 << 20, &[]);
    let writer = send_data_in_background(&g, open.stream, PAST_ANY_CREDIT);
    let msg = g.expect_reset(open.stream, ErrorCode::FLOW_CONTROL);
    eprintln!("serve: RESET(FLOW_CONTROL) to its guest: {msg}");
    writer.join().unwrap();
    g.assert_alive(2);
    let _ = release_tx.send(());
    client.join().unwrap();

    // Streams the guest opens: serve offers no services and must refuse each; past its
    // stream limit the mux refuses with STREAM_LIMIT. One write of max_streams + 1 OPENs is
    // read and judged by serve's mux before its supervisor refuses any of them.
    g.send_open(2, 1024, "anything", &[]);
    let msg = g.expect_open_err(2, ErrorCode::UNKNOWN_SERVICE);
    eprintln!("serve: OPEN_ERR(UNKNOWN_SERVICE) for a guest's OPEN: {msg}");
    let (_, max_streams) = g.victim_limits();
    let burst = open_burst(&g, 4, max_streams + 1, "anything");
    g.send_raw(&burst);
    let last = 4 + 2 * max_streams;
    let msg = g.expect_open_err(last, ErrorCode::STREAM_LIMIT);
    eprintln!("serve: OPEN_ERR(STREAM_LIMIT) for a guest's OPEN {last}: {msg}");
    g.expect_open_err(last - 2, ErrorCode::UNKNOWN_SERVICE);
    g.assert_alive(3);
    serve.victim.check_memory("a hostile guest");
    drop(g);

    // After all that, serve redials and a real agent behind the same socket serves clients.
    serve.proxy_next();
    serve.still_serves("a hostile guest");
}

// ----- the library's blocking handles (what the shim's exec stdin and cp use) -----

#[test]
fn a_writer_to_a_never_reading_peer_with_huge_credit_blocks_instead_of_buffering() {
    let dir = TempDir::new("handle");
    let path = dir.path("guest.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let reactor = Reactor::spawn().expect("reactor");
    let link = vmux::transport::dial(
        &format!("unix://{}", path.display()).parse().unwrap(),
        READ_LIMIT,
    )
    .expect("dial the hostile guest");
    let session = reactor
        .add_link(link, Config::new(Role::Client, random_nonce()))
        .expect("add link");
    let (conn, _) = listener.accept().unwrap();
    let mut g = Peer::over(conn, Role::Server);
    g.handshake(Features::empty());
    let opener = {
        let session = session.clone();
        std::thread::spawn(move || session.open("sink", b"").expect("open"))
    };
    let open = g.expect("OPEN", |f| f.kind == Kind::Open);
    // 2 GiB of credit, and not one byte read from here on.
    g.send_open_ok(open.stream, 1 << 31, &[]);
    let mut stream = opener.join().unwrap();
    // A correct side blocks once its queues are full, forever; the timeout only ends the test.
    stream.set_write_timeout(Some(Duration::from_secs(2)));
    let data = vec![b'w'; 64 << 20];
    let err = stream
        .write_all(&data)
        .expect_err("64 MiB went into a link nobody reads: the writer never blocked");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    let stats = session.stats().expect("stats");
    let held = stats.buffered.tx + stats.buffered.output + stats.handle_tx;
    eprintln!(
        "library: a writer to a peer that never reads holds {held} bytes (mux tx {}, output {}, handle {})",
        stats.buffered.tx, stats.buffered.output, stats.handle_tx
    );
    assert!(
        held <= 2 << 20,
        "{held} bytes queued for a peer that never reads: {stats:?}"
    );
    drop(stream);
    drop(g);
    reactor.shutdown();
}
