//! A scripted hostile vmux peer and the victim processes it attacks.
//!
//! [`Peer`] speaks the wire format byte by byte over a unix socket: frames are built with the
//! library's own `vmux::wire` emitters (so a well-formed frame is exactly what a real peer would
//! send) or crafted raw for the malformed cases, and replies are read with `vmux::codec::Decoder`.
//! It keeps no state machine of its own: a test says what to send and what it expects back
//! (`send_open`, `send_data`, `expect_reset(id, code)`, `expect_goaway(code)`, ...). Every wait
//! is bounded by [`READ_LIMIT`] and fails with the frames seen so far.
//!
//! [`Victim`] is a real `vmux-agent` or `vmux-shim serve` process: alive checks, RSS from
//! `/proc/PID/status`, and a scan of its stderr for panics. Processes are killed by PID on drop.
//!
//! Debugging knobs: `HOSTILE_TRACE=1` prints every frame read and every write;
//! `HOSTILE_AGENT_LOG` / `HOSTILE_SERVE_LOG` set the victims' `VMUX_LOG` (their stderr is
//! printed when a test fails).

#![allow(dead_code)] // each test file uses its own subset

use std::collections::{BTreeSet, VecDeque};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use vmux::codec::{DecodeError, Decoder, RawFrame};
use vmux::service::Info;
use vmux::wire::{
    self, Credit, ErrorBody, ErrorCode, Features, Flags, Hello, Kind, Open, OpenOk, PingBody, Role,
};

/// Longest wait for any one reply: generous, the machine is shared and may be loaded.
pub const READ_LIMIT: Duration = Duration::from_secs(30);
/// The memory bound every victim must stay under, whatever the peer does.
pub const RSS_LIMIT_KIB: u64 = 64 << 10;

/// A received frame, parsed enough to print and match.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The kind (unknown kinds from a victim would be a bug: they fail the decode).
    pub kind: Kind,
    /// The raw flags.
    pub flags: u16,
    /// The stream id.
    pub stream: u32,
    /// The payload, trailer removed.
    pub payload: Vec<u8>,
}

impl Frame {
    fn from_raw(raw: RawFrame) -> Frame {
        let kind = Kind::from_u8(raw.kind)
            .unwrap_or_else(|e| panic!("the victim sent a frame of unknown kind: {e}"));
        Frame {
            kind,
            flags: raw.flags,
            stream: raw.stream,
            payload: raw.payload,
        }
    }

    /// The error code of an OPEN_ERR, RESET or GOAWAY.
    pub fn code(&self) -> ErrorCode {
        ErrorBody::parse(self.kind, &self.payload)
            .unwrap_or_else(|e| panic!("bad error body in {self}: {e}"))
            .code
    }

    /// The message of an OPEN_ERR, RESET or GOAWAY.
    pub fn message(&self) -> String {
        ErrorBody::parse(self.kind, &self.payload)
            .map(|b| b.message.to_string())
            .unwrap_or_default()
    }

    /// The opaque value of a PING or PONG.
    pub fn opaque(&self) -> u64 {
        PingBody::parse(self.kind, &self.payload)
            .unwrap_or_else(|e| panic!("bad {self}: {e}"))
            .opaque
    }
}

impl std::fmt::Display for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}(stream {}", self.kind, self.stream)?;
        if self.flags != 0 {
            write!(f, ", flags {:#x}", self.flags)?;
        }
        match self.kind {
            Kind::OpenErr | Kind::Reset | Kind::GoAway => {
                write!(f, ", {}: {:?}", self.code(), self.message())?
            }
            Kind::Ping | Kind::Pong => write!(f, ", {}", self.opaque())?,
            _ => write!(f, ", {} bytes", self.payload.len())?,
        }
        f.write_str(")")
    }
}

/// A hostile (or merely scripted) peer on one unix-socket link.
pub struct Peer {
    sock: UnixStream,
    role: Role,
    decoder: Decoder,
    /// Payload trailers are in force for what this side sends.
    trailers: bool,
    /// This side asks for payload trailers in its HELLO.
    wants_crc: bool,
    /// The victim's HELLO, once seen.
    pub victim_hello: Option<Hello>,
    inbox: VecDeque<Frame>,
    /// OPEN_OK and OPEN_ERR frames [`Peer::expect`] skipped, for [`Peer::expect_open_oks`].
    skipped_answers: Vec<Frame>,
    eof: bool,
    /// The last frames read, for failure messages.
    seen: VecDeque<String>,
    buf: Vec<u8>,
}

impl Peer {
    /// Connects to a victim listening on `path`, as `role`.
    pub fn connect(path: &Path, role: Role) -> Peer {
        let sock =
            UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
        Peer::over(sock, role)
    }

    /// Plays `role` on an already connected socket.
    pub fn over(sock: UnixStream, role: Role) -> Peer {
        sock.set_read_timeout(Some(READ_LIMIT)).unwrap();
        sock.set_write_timeout(Some(READ_LIMIT)).unwrap();
        Peer {
            sock,
            role,
            decoder: Decoder::new(wire::MAX_FRAME_LIMIT),
            trailers: false,
            wants_crc: false,
            victim_hello: None,
            inbox: VecDeque::new(),
            skipped_answers: Vec::new(),
            eof: false,
            seen: VecDeque::new(),
            buf: vec![0; 256 << 10],
        }
    }

    /// A second handle on the socket, for a writer thread.
    pub fn writer(&self) -> UnixStream {
        self.sock.try_clone().unwrap()
    }

    /// The victim's `max_frame` and `max_streams` from its HELLO.
    pub fn victim_limits(&self) -> (u32, u32) {
        let h = self.victim_hello.expect("no HELLO from the victim yet");
        (h.max_frame, h.max_streams)
    }

    // ----- sending -----

    /// Writes bytes as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        if std::env::var_os("HOSTILE_TRACE").is_some() {
            eprintln!("-> {} bytes", bytes.len());
        }
        self.sock
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("writing {} bytes to the victim: {e}", bytes.len()));
    }

    /// Writes bytes, tolerating a victim that already hung up.
    pub fn try_send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.sock.write_all(bytes)
    }

    /// A well-formed frame, with a payload trailer when one is in force.
    pub fn frame(&self, kind: Kind, flags: Flags, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let trailer = wire::has_trailer(kind, payload.len() as u32, self.trailers);
        wire::emit_frame(&mut out, kind, flags, stream, payload, trailer);
        out
    }

    /// Sends a well-formed frame.
    pub fn send_frame(&mut self, kind: Kind, flags: Flags, stream: u32, payload: &[u8]) {
        let bytes = self.frame(kind, flags, stream, payload);
        self.send_raw(&bytes);
    }

    /// Sends HELLO (as an answer when `reply`), asking for `features`.
    pub fn send_hello(&mut self, features: Features, reply: bool) {
        let hello = Hello {
            role: self.role,
            version: u16::from(wire::VERSION),
            features,
            max_frame: 64 << 10,
            max_streams: 1024,
            nonce: 0x4057_11e0_0000_0001,
            boot_id: *b"hostile-peer-id!",
        };
        let flags = if reply { Flags::REPLY } else { Flags::empty() };
        self.send_frame(Kind::Hello, flags, 0, &hello.to_bytes());
    }

    /// The HELLO exchange: ours, then the victim's (answered). Payload trailers are in force
    /// afterwards if either side asked for them. Returns the victim's HELLO.
    pub fn handshake(&mut self, features: Features) -> Hello {
        self.wants_crc = features.contains(Features::PAYLOAD_CRC);
        self.send_hello(features, false);
        let hello = self.expect("the victim's HELLO", |f| f.kind == Kind::Hello);
        if hello.flags & Flags::REPLY.bits() == 0 {
            self.send_hello(features, true);
        }
        let hello = self.victim_hello.expect("HELLO was parsed");
        self.trailers = features.contains(Features::PAYLOAD_CRC)
            || hello.features.contains(Features::PAYLOAD_CRC);
        hello
    }

    /// Sends OPEN for `id` with `credit` for the victim's data.
    pub fn send_open(&mut self, id: u32, credit: u32, service: &str, args: &[u8]) {
        let mut p = Vec::new();
        Open {
            initial_credit: credit,
            service,
            args,
        }
        .emit(&mut p);
        self.send_frame(Kind::Open, Flags::empty(), id, &p);
    }

    /// Sends OPEN_OK for a stream the victim opened.
    pub fn send_open_ok(&mut self, id: u32, credit: u32, reply: &[u8]) {
        let mut p = Vec::new();
        OpenOk {
            initial_credit: credit,
            reply,
        }
        .emit(&mut p);
        self.send_frame(Kind::OpenOk, Flags::empty(), id, &p);
    }

    /// Sends DATA.
    pub fn send_data(&mut self, id: u32, data: &[u8]) {
        self.send_frame(Kind::Data, Flags::empty(), id, data);
    }

    /// Sends CREDIT with a new absolute limit.
    pub fn send_credit(&mut self, id: u32, limit: u32) {
        self.send_frame(
            Kind::Credit,
            Flags::empty(),
            id,
            &Credit { limit }.to_bytes(),
        );
    }

    /// Sends CLOSE (half-close).
    pub fn send_close(&mut self, id: u32) {
        self.send_frame(Kind::Close, Flags::empty(), id, &[]);
    }

    /// Sends RESET with `code`.
    pub fn send_reset(&mut self, id: u32, code: ErrorCode) {
        let mut p = Vec::new();
        ErrorBody { code, message: "" }.emit(&mut p);
        self.send_frame(Kind::Reset, Flags::empty(), id, &p);
    }

    /// Sends PING.
    pub fn send_ping(&mut self, opaque: u64) {
        self.send_frame(
            Kind::Ping,
            Flags::empty(),
            0,
            &PingBody { opaque }.to_bytes(),
        );
    }

    /// Closes the socket for writing (the victim reads EOF after what was sent).
    pub fn shutdown_write(&self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Write);
    }

    // ----- receiving -----

    /// The next frame from the victim, or `None` at EOF. Panics if nothing comes in
    /// [`READ_LIMIT`] or the victim sends something undecodable.
    pub fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = self.inbox.pop_front() {
                self.note(&f);
                return Some(f);
            }
            if self.eof {
                return None;
            }
            self.fill();
        }
    }

    fn note(&mut self, f: &Frame) {
        if std::env::var_os("HOSTILE_TRACE").is_some() {
            eprintln!("<- {f}");
        }
        if self.seen.len() == 16 {
            self.seen.pop_front();
        }
        self.seen.push_back(f.to_string());
    }

    /// Reads once from the socket and decodes what came.
    fn fill(&mut self) {
        let n = match self.sock.read(&mut self.buf) {
            Ok(0) => {
                self.eof = true;
                return;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                self.eof = true;
                return;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                panic!(
                    "the victim sent nothing for {READ_LIMIT:?}; last frames: {:?}",
                    self.seen
                )
            }
            Err(e) => panic!("reading from the victim: {e}"),
        };
        let mut input = &self.buf[..n];
        while let Some(result) = self.decoder.decode(&mut input) {
            match result {
                Ok(raw) => {
                    let frame = Frame::from_raw(raw);
                    // Trailers (if either side asked) start after the victim's first HELLO,
                    // which may be in this very read: switch before decoding the rest.
                    if frame.kind == Kind::Hello && self.victim_hello.is_none() {
                        let hello = Hello::parse(&frame.payload).expect("the victim's HELLO");
                        self.victim_hello = Some(hello);
                        if self.trailers_wanted(&hello) {
                            self.decoder.set_payload_crc(true);
                        }
                    }
                    self.inbox.push_back(frame);
                }
                Err(DecodeError::Version { peer }) => panic!("the victim sent version {peer}"),
                Err(e) => panic!("the victim sent an undecodable frame: {e}"),
            }
        }
        let stats = self.decoder.stats();
        assert_eq!(
            (stats.header_crc_errors, stats.payload_crc_errors),
            (0, 0),
            "the victim sent corrupt frames"
        );
    }

    fn trailers_wanted(&self, hello: &Hello) -> bool {
        self.wants_crc || hello.features.contains(Features::PAYLOAD_CRC)
    }

    /// Reads frames until one matches `pred`, skipping the others (CREDIT, CLOSE, HELLO
    /// retries, answers to earlier requests). Panics at EOF, on a GOAWAY that does not match,
    /// after [`READ_LIMIT`] of silence, or after twice that in all (a victim's keepalive PINGs
    /// are not silence), naming `what`.
    pub fn expect(&mut self, what: &str, pred: impl Fn(&Frame) -> bool) -> Frame {
        let deadline = Instant::now() + 2 * READ_LIMIT;
        loop {
            assert!(
                Instant::now() < deadline,
                "expected {what} for {:?}; last frames: {:?}",
                2 * READ_LIMIT,
                self.seen
            );
            match self.next_frame() {
                Some(f) if pred(&f) => return f,
                Some(f) if f.kind == Kind::GoAway => {
                    panic!("expected {what}, the victim ended the session with {f}")
                }
                Some(f) if matches!(f.kind, Kind::OpenOk | Kind::OpenErr) => {
                    self.skipped_answers.push(f)
                }
                Some(_) => {}
                None => panic!(
                    "expected {what}, the victim closed the link; last frames: {:?}",
                    self.seen
                ),
            }
        }
    }

    /// Expects OPEN_OK on every stream in `ids`, in any order: answers to OPENs may come out of
    /// order (serve forwards each OPEN to the guest and relays each answer as it arrives).
    /// Panics on OPEN_ERR for one of them, at EOF, on GOAWAY, or when they have not all come
    /// within twice [`READ_LIMIT`].
    pub fn expect_open_oks(&mut self, ids: impl IntoIterator<Item = u32>) {
        let mut missing: BTreeSet<u32> = ids.into_iter().collect();
        for f in std::mem::take(&mut self.skipped_answers) {
            if missing.contains(&f.stream) {
                assert_eq!(f.kind, Kind::OpenOk, "stream {} was refused: {f}", f.stream);
                missing.remove(&f.stream);
            }
        }
        let deadline = Instant::now() + 2 * READ_LIMIT;
        while let Some(&first) = missing.first() {
            assert!(
                Instant::now() < deadline,
                "OPEN_OK still missing on {} streams (the first: {first}) after {:?}; last frames: {:?}",
                missing.len(),
                2 * READ_LIMIT,
                self.seen
            );
            match self.next_frame() {
                Some(f) if missing.contains(&f.stream) && f.kind == Kind::OpenOk => {
                    missing.remove(&f.stream);
                }
                Some(f) if missing.contains(&f.stream) && f.kind == Kind::OpenErr => {
                    panic!("stream {} was refused: {f}", f.stream)
                }
                Some(f) if f.kind == Kind::GoAway => {
                    panic!(
                        "expected OPEN_OK on {} streams, the victim ended the session with {f}",
                        missing.len()
                    )
                }
                Some(_) => {}
                None => panic!(
                    "expected OPEN_OK on {} streams, the victim closed the link; last frames: {:?}",
                    missing.len(),
                    self.seen
                ),
            }
        }
    }

    /// Expects OPEN_OK on `id`; returns its initial credit and reply bytes.
    pub fn expect_open_ok(&mut self, id: u32) -> (u32, Vec<u8>) {
        let f = self.expect(&format!("OPEN_OK or OPEN_ERR on stream {id}"), |f| {
            f.stream == id && matches!(f.kind, Kind::OpenOk | Kind::OpenErr)
        });
        assert_eq!(f.kind, Kind::OpenOk, "stream {id} was refused: {f}");
        let ok = OpenOk::parse(&f.payload).expect("OPEN_OK payload");
        (ok.initial_credit, ok.reply.to_vec())
    }

    /// Expects OPEN_ERR(`code`) on `id`; returns the message.
    pub fn expect_open_err(&mut self, id: u32, code: ErrorCode) -> String {
        let f = self.expect(&format!("OPEN_ERR({code}) on stream {id}"), |f| {
            f.stream == id && matches!(f.kind, Kind::OpenOk | Kind::OpenErr)
        });
        assert_eq!(
            (f.kind, f.code()),
            (Kind::OpenErr, code),
            "stream {id}: {f}"
        );
        f.message()
    }

    /// Expects RESET(`code`) on `id`; returns the message.
    pub fn expect_reset(&mut self, id: u32, code: ErrorCode) -> String {
        let f = self.expect(&format!("RESET({code}) on stream {id}"), |f| {
            f.stream == id && f.kind == Kind::Reset
        });
        assert_eq!(f.code(), code, "stream {id}: {f}");
        f.message()
    }

    /// Expects CLOSE on `id`.
    pub fn expect_close(&mut self, id: u32) {
        self.expect(&format!("CLOSE on stream {id}"), |f| {
            f.stream == id && f.kind == Kind::Close
        });
    }

    /// Expects PONG(`opaque`); returns how many PONGs were read on the way (that one included).
    pub fn expect_pong(&mut self, opaque: u64) -> usize {
        let pongs = std::cell::Cell::new(0);
        self.expect(&format!("PONG({opaque})"), |f| {
            if f.kind == Kind::Pong {
                pongs.set(pongs.get() + 1);
            }
            f.kind == Kind::Pong && f.opaque() == opaque
        });
        pongs.get()
    }

    /// Expects the session to end with GOAWAY(`code`), then EOF; returns the GOAWAY message.
    pub fn expect_goaway(&mut self, code: ErrorCode) -> String {
        let f = self.expect(&format!("GOAWAY({code})"), |f| f.kind == Kind::GoAway);
        assert_eq!(f.code(), code, "the session ended with {f}");
        self.expect_eof();
        f.message()
    }

    /// Reads until EOF; panics if the victim sends anything but noise after its last word.
    pub fn expect_eof(&mut self) {
        while let Some(f) = self.next_frame() {
            assert!(
                matches!(f.kind, Kind::Credit | Kind::Close | Kind::Pong | Kind::Ping),
                "expected the link to close, got {f}"
            );
        }
    }

    /// Reads every frame until the victim closes the link; returns them.
    pub fn drain_to_eof(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(f) = self.next_frame() {
            frames.push(f);
        }
        frames
    }

    /// Proves the session is alive: a PING with a fresh value gets its PONG.
    pub fn assert_alive(&mut self, opaque: u64) {
        self.send_ping(opaque);
        self.expect_pong(opaque);
    }

    /// Asks the victim's `info` service on this very session (stream `id`), then closes it.
    pub fn info(&mut self, id: u32) -> Info {
        self.send_open(id, 64 << 10, "info", &[]);
        let (_, reply) = self.expect_open_ok(id);
        self.send_close(id);
        Info::decode(&reply).expect("info reply decodes")
    }
}

// ----- victims -----

/// A private temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh directory named after `tag`.
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vmux-hostile-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// A path inside the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `Vm*` lines of `/proc/PID/status`, for messages.
pub fn vm_lines(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("VmRSS") || l.starts_with("VmHWM"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Memory figures of a process, in KiB.
#[derive(Debug, Clone, Copy)]
pub struct Rss {
    /// Resident now.
    pub now_kib: u64,
    /// Peak resident.
    pub peak_kib: u64,
}

/// A victim process: killed by its PID and reaped on drop; its stderr goes to a file.
pub struct Victim {
    /// What it is, for messages.
    pub name: String,
    child: Child,
    stderr: PathBuf,
}

impl Victim {
    /// Starts `cmd` with stderr captured in `dir`.
    pub fn spawn(name: &str, mut cmd: Command, dir: &TempDir) -> Victim {
        let stderr = dir.path(&format!("{name}.stderr"));
        let file = std::fs::File::create(&stderr).unwrap();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file));
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Victim {
            name: name.to_string(),
            child,
            stderr,
        }
    }

    /// The victim's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (bounded) until `path` exists.
    pub fn wait_for_path(&mut self, path: &Path) {
        let deadline = Instant::now() + READ_LIMIT;
        while !path.exists() {
            self.assert_alive();
            assert!(
                Instant::now() < deadline,
                "{} did not create {}",
                self.name,
                path.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Panics if the victim exited (with its status: a signal means it crashed) or wrote a
    /// panic message.
    pub fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited: {status}; stderr:\n{}",
                self.name,
                self.stderr_text()
            );
        }
        let text = self.stderr_text();
        assert!(
            !text.contains("panicked"),
            "{} panicked:\n{text}",
            self.name
        );
    }

    /// What the victim wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// VmRSS and VmHWM from `/proc/PID/status`.
    pub fn rss(&self) -> Rss {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_else(|e| panic!("{} status: {e}", self.name));
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in /proc/{}/status", self.pid()))
        };
        Rss {
            now_kib: field("VmRSS:"),
            peak_kib: field("VmHWM:"),
        }
    }

    /// Prints the victim's memory after `case` and asserts the peak is under [`RSS_LIMIT_KIB`];
    /// also asserts it is alive.
    pub fn check_memory(&mut self, case: &str) -> Rss {
        self.assert_alive();
        let rss = self.rss();
        eprintln!(
            "[{}] after {case}: VmRSS {} KiB, VmHWM {} KiB",
            self.name, rss.now_kib, rss.peak_kib
        );
        assert!(
            rss.peak_kib < RSS_LIMIT_KIB,
            "{} peaked at {} KiB after {case} (limit {RSS_LIMIT_KIB} KiB)",
            self.name,
            rss.peak_kib
        );
        rss
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- {} stderr ---\n{}", self.name, self.stderr_text());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
