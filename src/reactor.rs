//! The event loop: one thread that owns a `mio::Poll`, every link and pump fd, and every session.
//!
//! Application threads never touch a socket. They hold handles ([`crate::session`]) that send
//! [`Command`]s over a crossbeam channel and wake the loop with the poll's one `mio::Waker`. The
//! loop reads links until `WouldBlock` and feeds the bytes to each session's [`Mux`], writes what
//! the mux builds, runs its timers at `poll_at()`, and turns mux events into handle updates.
//!
//! Three kinds of link sources exist:
//! - a **link** added directly ([`ReactorHandle::add_link`]): one session, over when the link is;
//! - a **listener** ([`ReactorHandle::add_listener`]): every accepted connection is a session;
//! - a **port** ([`ReactorHandle::add_port`]): a serial line (virtio-serial, tty) that outlives its
//!   peer; when a session on it ends, a new one starts on the same fd with a fresh HELLO.
//!
//! A stream accepted as a *pump* ([`crate::session::Incoming::accept_pump`]) is moved to and from
//! file descriptors inside this thread, so services need no thread per stream. Regular files,
//! which epoll cannot watch, are treated as always ready and moved one chunk per loop turn.

use crate::mux::{Config, Event, Mux, Phase, StreamId, Termination};
use crate::session::{
    BufPool, ChannelEvent, ChannelEventKind, Incoming, PumpDone, PumpSpec, RxEnd, Session,
    SessionError, SessionShared, SessionStats, StreamShared, TxEnd, Waiting,
};
use crate::time::Clock;
use crate::transport::{set_nonblocking, Link, LinkKind, UnixLinkListener};
use crate::wire::ErrorCode;
use crossbeam_channel::{Receiver, Sender};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Identifies a session within its reactor.
pub type SessionId = u64;

const WAKER: Token = Token(0);
/// Bytes read from a link per `read(2)`.
const READ_BUF: usize = 256 << 10;
/// Bytes a pump reads from its fd per `read(2)`.
const PUMP_CHUNK: usize = 64 << 10;
/// Pumps, splices and handles stop feeding a session's mux while it holds this many stream
/// bytes not yet framed: the peer's credit bounds what it will *receive*, not what this side
/// may queue for a link the peer does not read (a hostile peer grants up to 4 GiB and never
/// reads). They resume when the link takes bytes.
const TX_QUEUE_CAP: usize = 4 * PUMP_CHUNK;
/// Bytes a stream handle may queue for writing before the writer blocks (the peer's credit
/// bounds it too): as much as the default 512 KiB stream window, so a writer is woken once per
/// credit update, not once per write.
const HANDLE_TX_CAP: usize = 512 << 10;
/// A reader reports consumption to the reactor every this many bytes (and before it waits): a
/// quarter of the default stream window, so the writer's credit is topped up before it runs dry.
/// With 64 KiB reports and 256 KiB windows a 1-stream transfer cost 25 k context switches per
/// 512 MiB; with these, 17 k.
const HANDLE_REPORT_EVERY: usize = 128 << 10;
/// Most bytes a channel stream may queue for sending before it is reset with OVERLOAD.
const CHANNEL_TX_CAP: usize = 1 << 20;

/// Errors of the reactor layer.
#[derive(Debug)]
pub enum ReactorError {
    /// Setting up the poll, the waker or the thread failed.
    Io(io::Error),
    /// The loop has stopped.
    Stopped,
}

impl fmt::Display for ReactorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReactorError::Io(e) => write!(f, "event loop: {e}"),
            ReactorError::Stopped => f.write_str("the vmux event loop has stopped"),
        }
    }
}

impl std::error::Error for ReactorError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReactorError::Io(e) => Some(e),
            ReactorError::Stopped => None,
        }
    }
}

impl From<io::Error> for ReactorError {
    fn from(e: io::Error) -> ReactorError {
        ReactorError::Io(e)
    }
}

/// Something that accepts connections and yields them as links (a listening socket).
pub trait LinkListener: Send + AsRawFd {
    /// Accepts one pending connection, or `Ok(None)` if none is waiting.
    fn accept_link(&mut self) -> io::Result<Option<Link>>;
}

impl LinkListener for UnixLinkListener {
    fn accept_link(&mut self) -> io::Result<Option<Link>> {
        self.accept()
    }
}

impl LinkListener for crate::transport::Listener {
    fn accept_link(&mut self) -> io::Result<Option<Link>> {
        self.accept().map_err(io::Error::from)
    }
}

/// Builds the mux configuration for each new session on a listener or port.
pub type ConfigFn = Box<dyn FnMut(&Link) -> Config + Send>;

/// How an accepted stream is served.
#[derive(Debug)]
pub(crate) enum AcceptAs {
    /// By a blocking [`crate::session::Stream`] handle.
    Handle(Arc<StreamShared>),
    /// By a pump between the stream and fds.
    Pump(PumpSpec),
    /// By the application's own loop, through a channel of events.
    Channel(Sender<ChannelEvent>),
}

/// Where the answer to an OPEN goes: the stream id and the peer's reply bytes, or why not.
pub(crate) type OpenReply = Sender<Result<(StreamId, Vec<u8>), SessionError>>;

/// A request from a handle to the loop.
pub(crate) enum Command {
    AddLink {
        link: Link,
        config: Config,
        incoming: Sender<Incoming>,
        shared: Arc<SessionShared>,
        reply: Sender<io::Result<SessionId>>,
    },
    AddListener {
        listener: Box<dyn LinkListener>,
        make_config: ConfigFn,
        sessions: Sender<Session>,
        reply: Sender<io::Result<()>>,
    },
    AddPort {
        link: Link,
        make_config: ConfigFn,
        sessions: Sender<Session>,
        reply: Sender<io::Result<()>>,
    },
    Open {
        session: SessionId,
        service: String,
        args: Vec<u8>,
        shared: Arc<StreamShared>,
        reply: OpenReply,
    },
    Accept {
        session: SessionId,
        id: StreamId,
        reply: Vec<u8>,
        endpoint: AcceptAs,
    },
    Reject {
        session: SessionId,
        id: StreamId,
        code: ErrorCode,
        message: String,
    },
    /// A handle queued bytes on `id`; `consumed` is what its reader consumed since its last
    /// report (the same as a `Consumed` command, carried along to save one).
    Tx {
        session: SessionId,
        id: StreamId,
        consumed: usize,
    },
    Send {
        session: SessionId,
        id: StreamId,
        data: Vec<u8>,
    },
    Forward {
        session: SessionId,
        id: StreamId,
        service: String,
        args: Vec<u8>,
        target: SessionId,
    },
    Consumed {
        session: SessionId,
        id: StreamId,
        n: usize,
    },
    CloseWrite {
        session: SessionId,
        id: StreamId,
    },
    Reset {
        session: SessionId,
        id: StreamId,
        code: ErrorCode,
    },
    Dropped {
        session: SessionId,
        id: StreamId,
    },
    GoAway {
        session: SessionId,
        code: ErrorCode,
    },
    Ping {
        session: SessionId,
        reply: Sender<Result<Duration, SessionError>>,
    },
    Stats {
        session: SessionId,
        reply: Sender<Result<SessionStats, SessionError>>,
    },
    Shutdown,
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Command::AddLink { .. } => "AddLink",
            Command::AddListener { .. } => "AddListener",
            Command::AddPort { .. } => "AddPort",
            Command::Open { .. } => "Open",
            Command::Accept { .. } => "Accept",
            Command::Reject { .. } => "Reject",
            Command::Tx { .. } => "Tx",
            Command::Send { .. } => "Send",
            Command::Forward { .. } => "Forward",
            Command::Consumed { .. } => "Consumed",
            Command::CloseWrite { .. } => "CloseWrite",
            Command::Reset { .. } => "Reset",
            Command::Dropped { .. } => "Dropped",
            Command::GoAway { .. } => "GoAway",
            Command::Ping { .. } => "Ping",
            Command::Stats { .. } => "Stats",
            Command::Shutdown => "Shutdown",
        };
        f.write_str(name)
    }
}

/// A cheap, clonable way to talk to the loop from any thread.
#[derive(Debug, Clone)]
pub struct ReactorHandle {
    tx: Sender<Command>,
    waker: Arc<Waker>,
    /// Set while the loop is (about to be) blocked in `poll`: only then does a command need
    /// the waker's system call; a running loop drains the channel before it polls again.
    sleeping: Arc<AtomicBool>,
    pool: Arc<BufPool>,
}

impl ReactorHandle {
    pub(crate) fn send(&self, command: Command) -> Result<(), SessionError> {
        self.tx
            .send(command)
            .map_err(|_| SessionError::ReactorGone)?;
        // Pairs with the fence in `Core::run`: either the loop sees this command before it
        // sleeps, or this thread sees that it sleeps.
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) {
            self.waker.wake().map_err(SessionError::Io)?;
        }
        Ok(())
    }

    pub(crate) fn pool(&self) -> &BufPool {
        &self.pool
    }

    pub(crate) fn new_stream_shared(&self) -> Arc<StreamShared> {
        StreamShared::new(HANDLE_TX_CAP, HANDLE_REPORT_EVERY)
    }

    /// Runs a session over `link`. Streams the peer opens arrive on [`Session::accept`].
    pub fn add_link(&self, link: Link, config: Config) -> Result<Session, ReactorError> {
        let (incoming_tx, incoming_rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(SessionShared::default());
        let id = self.request(|reply| Command::AddLink {
            link,
            config,
            incoming: incoming_tx,
            shared: shared.clone(),
            reply,
        })?;
        Ok(Session {
            id,
            reactor: self.clone(),
            incoming: incoming_rx,
            shared,
        })
    }

    /// Accepts connections on `listener`; each becomes a session sent to `sessions`.
    pub fn add_listener(
        &self,
        listener: Box<dyn LinkListener>,
        make_config: ConfigFn,
        sessions: Sender<Session>,
    ) -> Result<(), ReactorError> {
        self.request(|reply| Command::AddListener {
            listener,
            make_config,
            sessions,
            reply,
        })
    }

    /// Serves a serial port that outlives its peer: each session on it is sent to `sessions`,
    /// and a new one starts (with HELLO) whenever the previous one ends.
    pub fn add_port(
        &self,
        link: Link,
        make_config: ConfigFn,
        sessions: Sender<Session>,
    ) -> Result<(), ReactorError> {
        self.request(|reply| Command::AddPort {
            link,
            make_config,
            sessions,
            reply,
        })
    }

    /// Sends the command `make` builds around a reply channel and waits for the loop's answer.
    fn request<T>(
        &self,
        make: impl FnOnce(Sender<io::Result<T>>) -> Command,
    ) -> Result<T, ReactorError> {
        let (reply, rx) = crossbeam_channel::bounded(1);
        self.send(make(reply)).map_err(|_| ReactorError::Stopped)?;
        Ok(rx.recv().map_err(|_| ReactorError::Stopped)??)
    }
}

/// The event-loop thread. Dropping it shuts the loop down and joins the thread.
#[derive(Debug)]
pub struct Reactor {
    handle: ReactorHandle,
    thread: Option<JoinHandle<()>>,
}

impl Reactor {
    /// Starts the loop on a new thread.
    pub fn spawn() -> Result<Reactor, ReactorError> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = crossbeam_channel::unbounded();
        let handle = ReactorHandle {
            tx,
            waker,
            sleeping: Arc::default(),
            pool: Arc::default(),
        };
        let mut core = Core::new(poll, rx, handle.clone());
        let thread = std::thread::Builder::new()
            .name("vmux-reactor".into())
            .spawn(move || core.run())?;
        Ok(Reactor {
            handle,
            thread: Some(thread),
        })
    }

    /// A handle for adding links and opening streams from any thread.
    pub fn handle(&self) -> ReactorHandle {
        self.handle.clone()
    }

    /// Runs a session over `link` (see [`ReactorHandle::add_link`]).
    pub fn add_link(&self, link: Link, config: Config) -> Result<Session, ReactorError> {
        self.handle.add_link(link, config)
    }

    /// Ends every session at once (GOAWAY with GOING_AWAY) and joins the thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.handle.send(Command::Shutdown);
            let _ = thread.join();
        }
    }
}

impl Drop for Reactor {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A random-enough u64 for HELLO nonces, from the standard library's per-process random keys.
pub fn random_nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

// ----- the loop's own state -----

/// Work one session's events create for another session.
#[derive(Debug)]
enum CrossAction {
    /// The target answered a forwarded OPEN: accept (with its reply) or refuse the source.
    ForwardAnswer {
        source: (SessionId, StreamId),
        target: (SessionId, StreamId),
        answer: Result<Vec<u8>, (ErrorCode, String)>,
    },
    /// Bytes, credit or a CLOSE may move between two spliced streams.
    SpliceMove {
        from: (SessionId, StreamId),
        to: (SessionId, StreamId),
    },
    /// One side of a splice (or a forward in progress) failed: reset the other.
    PeerGone {
        to: (SessionId, StreamId),
        code: ErrorCode,
        message: String,
    },
}

/// What a poll token stands for.
#[derive(Debug, Clone, Copy)]
enum Owner {
    Link(SessionId),
    Listener(usize),
    PumpFrom(SessionId, StreamId),
    PumpTo(SessionId, StreamId),
}

struct ListenerEntry {
    listener: Box<dyn LinkListener>,
    make_config: ConfigFn,
    sessions: Sender<Session>,
}

/// A serial port's restart recipe.
struct PortEntry {
    make_config: ConfigFn,
    sessions: Sender<Session>,
}

/// One fd of a pump.
struct PumpFd {
    fd: OwnedFd,
    /// `None` for fds epoll cannot watch (regular files): always ready.
    token: Option<Token>,
    /// Readiness not yet used up (edge-triggered).
    ready: bool,
}

struct Pump {
    from: Option<PumpFd>,
    to: Option<PumpFd>,
    /// Chunks taken from the mux, not yet written to `to` (not yet released as credit).
    to_pending: VecDeque<Vec<u8>>,
    to_head: usize,
    peer_closed: bool,
    from_done: bool,
    mux_closed: bool,
    sent: u64,
    received: u64,
    crc: bool,
    crc_sent: u32,
    crc_received: u32,
    /// A read or write on an fd failed: reported in [`PumpDone::result`].
    failed: Option<SessionError>,
    done: Option<Sender<PumpDone>>,
}

enum Endpoint {
    /// A blocking handle; `dropped` once the application let go of it.
    Handle {
        shared: Arc<StreamShared>,
        dropped: bool,
        close_requested: bool,
    },
    Pump(Box<Pump>),
    /// Waiting for the target session to answer the OPEN this stream was forwarded as.
    Forwarding {
        target: (SessionId, StreamId),
    },
    /// Spliced to a stream of another session: bytes move between the two muxes directly.
    Splice {
        peer: (SessionId, StreamId),
        /// A received chunk the peer stream had no credit for yet.
        stash: Option<Vec<u8>>,
        /// This stream's peer half-closed (CLOSE to pass on once the data is through).
        peer_closed: bool,
        /// CLOSE was passed on to `peer`.
        close_passed: bool,
    },
    /// Served by the application's loop through a channel.
    Channel {
        events: Sender<ChannelEvent>,
        tx: VecDeque<Vec<u8>>,
        tx_len: usize,
        close_requested: bool,
    },
}

struct SessionEntry {
    sid: SessionId,
    handle: ReactorHandle,
    /// Pump tokens whose fds were closed, for the loop to forget.
    released_tokens: Vec<Token>,
    /// Work that involves another session, for the loop to carry out.
    outbox: Vec<CrossAction>,
    /// A splice or handle stopped at [`TX_QUEUE_CAP`] with credit left: retry them once the
    /// link takes bytes (pumps retry on every drive round anyway).
    tx_stalled: bool,
    /// Streams opened on this session on behalf of a forwarded stream: ours -> (session, stream).
    pending_forwards: HashMap<StreamId, (SessionId, StreamId)>,
    link: Link,
    token: Token,
    mux: Mux,
    shared: Arc<SessionShared>,
    incoming: Option<Sender<Incoming>>,
    endpoints: HashMap<StreamId, Endpoint>,
    pending_opens: HashMap<StreamId, (Arc<StreamShared>, OpenReply)>,
    pings: VecDeque<Sender<Result<Duration, SessionError>>>,
    readable: bool,
    /// An event reported the peer's write half closed (or an error): the EOF is already queued
    /// behind the data and no further edge will announce it, so reads go on until it is seen.
    read_closed_seen: bool,
    writable: bool,
    /// Whether WRITABLE interest is registered.
    write_interest: bool,
    /// The port this session runs on, if it is a serial port that restarts sessions.
    port: Option<PortEntry>,
    /// The link stopped (EOF or error): finish up.
    link_down: bool,
}

struct Core {
    poll: Poll,
    clock: Clock,
    commands: Receiver<Command>,
    handle: ReactorHandle,
    sessions: HashMap<SessionId, SessionEntry>,
    listeners: HashMap<usize, (Token, ListenerEntry)>,
    tokens: HashMap<Token, Owner>,
    next_token: usize,
    next_session: SessionId,
    read_buf: Vec<u8>,
    /// Some pump has an always-ready fd with work left: poll without sleeping.
    busy: bool,
    /// Sessions that work on another session touched, to drive in the same turn.
    extra_work: Vec<SessionId>,
    running: bool,
}

impl Core {
    fn new(poll: Poll, commands: Receiver<Command>, handle: ReactorHandle) -> Core {
        Core {
            poll,
            clock: Clock::new(),
            commands,
            handle,
            sessions: HashMap::new(),
            listeners: HashMap::new(),
            tokens: HashMap::new(),
            next_token: 1,
            next_session: 1,
            read_buf: vec![0u8; READ_BUF],
            busy: false,
            extra_work: Vec::new(),
            running: true,
        }
    }

    fn token(&mut self, owner: Owner) -> Token {
        let t = Token(self.next_token);
        self.next_token += 1;
        self.tokens.insert(t, owner);
        t
    }

    fn run(&mut self) {
        let mut events = Events::with_capacity(256);
        while self.running {
            let mut timeout = if self.busy {
                Some(Duration::ZERO)
            } else {
                self.next_timeout()
            };
            if timeout != Some(Duration::ZERO) {
                self.handle.sleeping.store(true, Ordering::Relaxed);
                // Pairs with the fence in `ReactorHandle::send`.
                fence(Ordering::SeqCst);
                if !self.commands.is_empty() {
                    timeout = Some(Duration::ZERO);
                }
            }
            let polled = self.poll.poll(&mut events, timeout);
            self.handle.sleeping.store(false, Ordering::Relaxed);
            if let Err(e) = polled {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("poll failed: {e}");
                    break;
                }
            }
            let mut touched: Vec<SessionId> = Vec::new();
            for event in events.iter() {
                match event.token() {
                    WAKER => {}
                    token => match self.tokens.get(&token).copied() {
                        Some(Owner::Link(sid)) => {
                            if let Some(s) = self.sessions.get_mut(&sid) {
                                if event.is_readable() || event.is_read_closed() || event.is_error()
                                {
                                    s.readable = true;
                                }
                                if event.is_read_closed() || event.is_error() {
                                    s.read_closed_seen = true;
                                }
                                if event.is_writable() || event.is_write_closed() {
                                    s.writable = true;
                                }
                                touched.push(sid);
                            }
                        }
                        Some(Owner::Listener(lid)) => self.accept_all(lid),
                        Some(Owner::PumpFrom(sid, id)) | Some(Owner::PumpTo(sid, id)) => {
                            self.mark_pump_ready(sid, id, token);
                            touched.push(sid);
                        }
                        None => {}
                    },
                }
            }
            self.drain_commands(&mut touched);
            if self.busy {
                self.busy = false;
                touched.extend(self.sessions.keys().copied());
            }
            // Input first: after a freeze, a PONG already waiting must count before timers run.
            self.drive_all(touched);
            let now = self.clock.now();
            let mut timed = Vec::new();
            for (sid, s) in self.sessions.iter_mut() {
                if s.mux.poll_at().is_some_and(|at| at <= now) {
                    s.mux.handle_timeout(now);
                    timed.push(*sid);
                }
            }
            self.drive_all(timed);
        }
        self.shutdown_all();
    }

    fn next_timeout(&self) -> Option<Duration> {
        let now = self.clock.now();
        self.sessions
            .values()
            .filter_map(|s| s.mux.poll_at())
            .min()
            .map(|at| at.saturating_since(now) + Duration::from_millis(1))
    }

    fn drain_commands(&mut self, touched: &mut Vec<SessionId>) {
        while let Ok(command) = self.commands.try_recv() {
            if let Some(sid) = self.command(command) {
                touched.push(sid);
            }
        }
    }

    /// Carries out one command; returns the session it touched.
    fn command(&mut self, command: Command) -> Option<SessionId> {
        let now = self.clock.now();
        match command {
            Command::Shutdown => {
                self.running = false;
                None
            }
            Command::AddLink {
                link,
                config,
                incoming,
                shared,
                reply,
            } => {
                let result = self.insert_session(link, config, Some(incoming), shared, None);
                let sid = result.as_ref().ok().copied();
                let _ = reply.send(result);
                sid
            }
            Command::AddListener {
                listener,
                make_config,
                sessions,
                reply,
            } => {
                let lid = self.next_token;
                let token = self.token(Owner::Listener(lid));
                let fd = listener.as_raw_fd();
                let result =
                    self.poll
                        .registry()
                        .register(&mut SourceFd(&fd), token, Interest::READABLE);
                if result.is_ok() {
                    self.listeners.insert(
                        lid,
                        (
                            token,
                            ListenerEntry {
                                listener,
                                make_config,
                                sessions,
                            },
                        ),
                    );
                    // Connections may already be waiting.
                    self.accept_all(lid);
                } else {
                    self.tokens.remove(&token);
                }
                let _ = reply.send(result);
                None
            }
            Command::AddPort {
                link,
                mut make_config,
                sessions,
                reply,
            } => {
                let config = make_config(&link);
                let port = PortEntry {
                    make_config,
                    sessions,
                };
                match self.start_port_session(link, config, port) {
                    Ok(sid) => {
                        let _ = reply.send(Ok(()));
                        Some(sid)
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        None
                    }
                }
            }
            Command::Open {
                session,
                service,
                args,
                shared,
                reply,
            } => {
                let Some(s) = self.sessions.get_mut(&session) else {
                    let _ = reply.send(Err(SessionError::ReactorGone));
                    return None;
                };
                match s.mux.open(&service, &args) {
                    Ok(id) => {
                        s.pending_opens.insert(id, (shared, reply));
                    }
                    Err(e) => {
                        let err = match e {
                            crate::mux::MuxError::GoingAway => SessionError::GoingAway,
                            crate::mux::MuxError::Terminated => match s.mux.termination() {
                                Some(t) => SessionError::Ended(t.clone()),
                                None => SessionError::ReactorGone,
                            },
                            other => SessionError::Invalid(other.to_string()),
                        };
                        let _ = reply.send(Err(err));
                    }
                }
                Some(session)
            }
            Command::Accept {
                session,
                id,
                reply,
                endpoint,
            } => {
                self.accept_stream(session, id, &reply, endpoint);
                Some(session)
            }
            Command::Reject {
                session,
                id,
                code,
                message,
            } => {
                let s = self.sessions.get_mut(&session)?;
                let _ = s.mux.reject(id, code, &message);
                Some(session)
            }
            Command::Tx {
                session,
                id,
                consumed,
            } => {
                let s = self.sessions.get_mut(&session)?;
                if consumed > 0 {
                    s.mux.release(id, consumed);
                }
                s.move_tx(id);
                Some(session)
            }
            Command::Forward {
                session,
                id,
                service,
                args,
                target,
            } => {
                self.forward(session, id, &service, &args, target);
                Some(session)
            }
            Command::Send { session, id, data } => {
                let s = self.sessions.get_mut(&session)?;
                if let Some(Endpoint::Channel { tx, tx_len, .. }) = s.endpoints.get_mut(&id) {
                    *tx_len += data.len();
                    tx.push_back(data);
                    if *tx_len > CHANNEL_TX_CAP {
                        let _ =
                            s.mux
                                .reset(id, ErrorCode::OVERLOAD, "channel send queue over 1 MiB");
                        if let Some(Endpoint::Channel { events, .. }) = s.endpoints.remove(&id) {
                            let error = SessionError::Reset {
                                code: ErrorCode::OVERLOAD,
                                message: "send queue over 1 MiB".into(),
                                by_peer: false,
                            };
                            let _ = events
                                .send(s.channel_event(id, ChannelEventKind::Ended(Err(error))));
                        }
                    }
                }
                s.move_tx(id);
                Some(session)
            }
            Command::Consumed { session, id, n } => {
                let s = self.sessions.get_mut(&session)?;
                s.mux.release(id, n);
                Some(session)
            }
            Command::CloseWrite { session, id } => {
                let s = self.sessions.get_mut(&session)?;
                match s.endpoints.get_mut(&id) {
                    Some(Endpoint::Handle {
                        close_requested, ..
                    }) => *close_requested = true,
                    Some(Endpoint::Channel {
                        close_requested, ..
                    }) => *close_requested = true,
                    _ => {}
                }
                s.move_tx(id);
                Some(session)
            }
            Command::Reset { session, id, code } => {
                let s = self.sessions.get_mut(&session)?;
                if s.endpoints.remove(&id).is_some() {
                    let _ = s.mux.reset(id, code, "reset by the application");
                }
                Some(session)
            }
            Command::Dropped { session, id } => {
                let s = self.sessions.get_mut(&session)?;
                let Some(Endpoint::Handle {
                    shared,
                    dropped,
                    close_requested,
                }) = s.endpoints.get_mut(&id)
                else {
                    return None;
                };
                *dropped = true;
                *close_requested = true;
                // Whatever the application left unread is consumed now.
                let mut st = shared.lock();
                let unread = st.rx_len + std::mem::take(&mut st.unreported);
                st.rx.clear();
                st.rx_len = 0;
                drop(st);
                s.mux.release(id, unread);
                s.move_tx(id);
                s.drain_rx(id);
                Some(session)
            }
            Command::GoAway { session, code } => {
                let s = self.sessions.get_mut(&session)?;
                s.mux.goaway(code, "");
                Some(session)
            }
            Command::Ping { session, reply } => {
                let Some(s) = self.sessions.get_mut(&session) else {
                    let _ = reply.send(Err(SessionError::ReactorGone));
                    return None;
                };
                match s.mux.ping(now) {
                    Ok(()) => s.pings.push_back(reply),
                    Err(_) => {
                        let _ = reply.send(Err(s.ended_error()));
                    }
                }
                Some(session)
            }
            Command::Stats { session, reply } => {
                let Some(s) = self.sessions.get(&session) else {
                    let _ = reply.send(Err(SessionError::ReactorGone));
                    return None;
                };
                let (mut handle_rx, mut handle_tx) = (0, 0);
                for e in s.endpoints.values() {
                    if let Endpoint::Handle { shared, .. } = e {
                        let st = shared.lock();
                        handle_rx += st.rx_len;
                        handle_tx += st.tx_len;
                    }
                }
                let stats = SessionStats {
                    counters: s.mux.counters(),
                    buffered: s.mux.buffered(),
                    handle_rx,
                    handle_tx,
                    streams: s.mux.stream_count(),
                };
                let _ = reply.send(Ok(stats));
                None
            }
        }
    }

    fn insert_session(
        &mut self,
        link: Link,
        config: Config,
        incoming: Option<Sender<Incoming>>,
        shared: Arc<SessionShared>,
        port: Option<PortEntry>,
    ) -> io::Result<SessionId> {
        let sid = self.next_session;
        self.next_session += 1;
        let token = self.token(Owner::Link(sid));
        let fd = link.as_raw_fd();
        if let Err(e) = self.poll.registry().register(
            &mut SourceFd(&fd),
            token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            self.tokens.remove(&token);
            return Err(e);
        }
        let _ = shared
            .link
            .set(crate::session::LinkInfo::new(&link, &config));
        let mux = Mux::new(config, self.clock.now());
        log::debug!("session {sid} started on {} ({})", link.peer(), link.kind());
        let entry = SessionEntry {
            sid,
            handle: self.handle.clone(),
            released_tokens: Vec::new(),
            outbox: Vec::new(),
            tx_stalled: false,
            pending_forwards: HashMap::new(),
            link,
            token,
            mux,
            shared,
            incoming,
            endpoints: HashMap::new(),
            pending_opens: HashMap::new(),
            pings: VecDeque::new(),
            readable: true,
            read_closed_seen: false,
            writable: true,
            write_interest: true,
            port,
            link_down: false,
        };
        self.sessions.insert(sid, entry);
        Ok(sid)
    }

    /// Starts a session on a port and hands its handle to the port's owner.
    fn start_port_session(
        &mut self,
        link: Link,
        config: Config,
        port: PortEntry,
    ) -> io::Result<SessionId> {
        let (incoming_tx, incoming_rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(SessionShared::default());
        let sessions = port.sessions.clone();
        let sid =
            self.insert_session(link, config, Some(incoming_tx), shared.clone(), Some(port))?;
        let session = Session {
            id: sid,
            reactor: self.handle.clone(),
            incoming: incoming_rx,
            shared,
        };
        if sessions.send(session).is_err() {
            log::debug!("nobody takes sessions from this port any more");
        }
        Ok(sid)
    }

    fn accept_all(&mut self, lid: usize) {
        loop {
            let Some((_, entry)) = self.listeners.get_mut(&lid) else {
                return;
            };
            let link = match entry.listener.accept_link() {
                Ok(Some(link)) => link,
                Ok(None) => return,
                Err(e) => {
                    log::warn!("accept failed: {e}");
                    return;
                }
            };
            let config = (entry.make_config)(&link);
            let sessions = entry.sessions.clone();
            let (incoming_tx, incoming_rx) = crossbeam_channel::unbounded();
            let shared = Arc::new(SessionShared::default());
            match self.insert_session(link, config, Some(incoming_tx), shared.clone(), None) {
                Ok(sid) => {
                    let session = Session {
                        id: sid,
                        reactor: self.handle.clone(),
                        incoming: incoming_rx,
                        shared,
                    };
                    if sessions.send(session).is_err() {
                        log::debug!("listener's owner is gone; closing the listener");
                        if let Some((token, entry)) = self.listeners.remove(&lid) {
                            let fd = entry.listener.as_raw_fd();
                            let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
                            self.tokens.remove(&token);
                        }
                    }
                    self.drive(sid);
                }
                Err(e) => log::warn!("could not register an accepted link: {e}"),
            }
        }
    }

    fn accept_stream(&mut self, sid: SessionId, id: StreamId, reply: &[u8], endpoint: AcceptAs) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            if let AcceptAs::Handle(shared) = endpoint {
                shared.fail(SessionError::ReactorGone);
            }
            return;
        };
        if let Err(e) = s.mux.accept(id, reply) {
            let err = match s.mux.termination() {
                Some(t) => SessionError::Ended(t.clone()),
                None => SessionError::Invalid(e.to_string()),
            };
            match endpoint {
                AcceptAs::Handle(shared) => shared.fail(err),
                AcceptAs::Channel(events) => {
                    let _ = events.send(ChannelEvent {
                        session: sid,
                        stream: id,
                        kind: ChannelEventKind::Ended(Err(err)),
                    });
                }
                AcceptAs::Pump(spec) => {
                    if let Some(done) = spec.done {
                        let _ = done.send(PumpDone {
                            session: sid,
                            stream: id,
                            bytes_sent: 0,
                            bytes_received: 0,
                            crc_sent: 0,
                            crc_received: 0,
                            result: Err(err),
                        });
                    }
                }
            }
            return;
        }
        match endpoint {
            AcceptAs::Channel(events) => {
                s.endpoints.insert(
                    id,
                    Endpoint::Channel {
                        events,
                        tx: VecDeque::new(),
                        tx_len: 0,
                        close_requested: false,
                    },
                );
            }
            AcceptAs::Handle(shared) => {
                s.endpoints.insert(
                    id,
                    Endpoint::Handle {
                        shared,
                        dropped: false,
                        close_requested: false,
                    },
                );
                // Tell the writer how much the peer's initial credit lets it queue.
                s.move_tx(id);
            }
            AcceptAs::Pump(spec) => {
                let from = spec.from_fd.map(|fd| {
                    self.register_pump_fd(fd, Owner::PumpFrom(sid, id), Interest::READABLE)
                });
                let to = spec.to_fd.map(|fd| {
                    self.register_pump_fd(fd, Owner::PumpTo(sid, id), Interest::WRITABLE)
                });
                let Some(s) = self.sessions.get_mut(&sid) else {
                    return;
                };
                let from_done = from.is_none();
                if from_done {
                    let _ = s.mux.close(id);
                }
                let pump = Pump {
                    from,
                    to,
                    to_pending: VecDeque::new(),
                    to_head: 0,
                    peer_closed: false,
                    from_done,
                    mux_closed: false,
                    sent: 0,
                    received: 0,
                    crc: spec.crc,
                    crc_sent: 0,
                    crc_received: 0,
                    failed: None,
                    done: spec.done,
                };
                s.endpoints.insert(id, Endpoint::Pump(Box::new(pump)));
                self.busy = true;
            }
        }
    }

    fn register_pump_fd(&mut self, fd: OwnedFd, owner: Owner, interest: Interest) -> PumpFd {
        let _ = set_nonblocking(fd.as_fd());
        let token = self.token(owner);
        let raw = fd.as_raw_fd();
        match self
            .poll
            .registry()
            .register(&mut SourceFd(&raw), token, interest)
        {
            Ok(()) => PumpFd {
                fd,
                token: Some(token),
                ready: true,
            },
            Err(_) => {
                // Regular files cannot be polled (EPERM): they are always ready.
                self.tokens.remove(&token);
                PumpFd {
                    fd,
                    token: None,
                    ready: true,
                }
            }
        }
    }

    fn mark_pump_ready(&mut self, sid: SessionId, id: StreamId, token: Token) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if let Some(Endpoint::Pump(p)) = s.endpoints.get_mut(&id) {
            for side in [p.from.as_mut(), p.to.as_mut()].into_iter().flatten() {
                if side.token == Some(token) {
                    side.ready = true;
                }
            }
        }
    }

    /// Drives sessions until no session has work left for another (forwards, splices).
    fn drive_all(&mut self, mut work: Vec<SessionId>) {
        let mut turns = 0;
        while !work.is_empty() && turns < 1024 {
            turns += 1;
            work.sort_unstable();
            work.dedup();
            let mut next = Vec::new();
            for sid in work {
                self.drive(sid);
                let actions = match self.sessions.get_mut(&sid) {
                    Some(s) => std::mem::take(&mut s.outbox),
                    None => Vec::new(),
                };
                for action in actions {
                    next.extend(self.cross(action));
                }
                next.append(&mut self.extra_work);
            }
            work = next;
        }
    }

    /// Opens `service` on the target session for a stream that arrived on `session`.
    fn forward(
        &mut self,
        session: SessionId,
        id: StreamId,
        service: &str,
        args: &[u8],
        target: SessionId,
    ) {
        if !self.sessions.contains_key(&session) {
            // The client went away before its stream was routed: opening on the target now
            // would hold a stream there for nobody (and nothing would drive the target to
            // send the OPEN until its next timer).
            return;
        }
        let opened = match self.sessions.get_mut(&target) {
            None => Err((ErrorCode::LINK_LOST, "the target link is down".to_string())),
            Some(_) if target == session => Err((
                ErrorCode::REFUSED,
                "cannot forward a stream to its own session".to_string(),
            )),
            Some(t) => match t.mux.open(service, args) {
                Ok(tid) => {
                    t.pending_forwards.insert(tid, (session, id));
                    Ok(tid)
                }
                Err(crate::mux::MuxError::GoingAway) => Err((
                    ErrorCode::GOING_AWAY,
                    "the target session is shutting down".into(),
                )),
                Err(crate::mux::MuxError::Terminated) => {
                    Err((ErrorCode::LINK_LOST, "the target link is down".into()))
                }
                Err(e) => Err((ErrorCode::REFUSED, e.to_string())),
            },
        };
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        match opened {
            Ok(tid) => {
                s.endpoints.insert(
                    id,
                    Endpoint::Forwarding {
                        target: (target, tid),
                    },
                );
                self.extra_work.push(target);
            }
            Err((code, message)) => {
                let _ = s.mux.reject(id, code, &message);
            }
        }
    }

    /// Carries out work that crosses sessions; returns the sessions to drive again.
    fn cross(&mut self, action: CrossAction) -> Vec<SessionId> {
        match action {
            CrossAction::ForwardAnswer {
                source,
                target,
                answer,
            } => {
                let Some(s) = self.sessions.get_mut(&source.0) else {
                    self.reset_stream(target, ErrorCode::CANCEL, "the forwarding client went away");
                    return vec![target.0];
                };
                if !matches!(
                    s.endpoints.get(&source.1),
                    Some(Endpoint::Forwarding { .. })
                ) {
                    self.reset_stream(
                        target,
                        ErrorCode::CANCEL,
                        "the forwarded stream was cancelled",
                    );
                    return vec![target.0];
                }
                match answer {
                    Ok(reply) => {
                        if s.mux.accept(source.1, &reply).is_err() {
                            s.endpoints.remove(&source.1);
                            self.reset_stream(
                                target,
                                ErrorCode::CANCEL,
                                "the forwarded stream was cancelled",
                            );
                            return vec![source.0, target.0];
                        }
                        // A CLOSE may have come with the answer, before this splice existed.
                        let peer_closed = s.mux.is_peer_closed(source.1);
                        s.endpoints.insert(
                            source.1,
                            Endpoint::Splice {
                                peer: target,
                                stash: None,
                                peer_closed,
                                close_passed: false,
                            },
                        );
                        if let Some(t) = self.sessions.get_mut(&target.0) {
                            let peer_closed = t.mux.is_peer_closed(target.1);
                            t.endpoints.insert(
                                target.1,
                                Endpoint::Splice {
                                    peer: source,
                                    stash: None,
                                    peer_closed,
                                    close_passed: false,
                                },
                            );
                        }
                        // Data may already wait on either side.
                        self.splice_move(target, source);
                        self.splice_move(source, target);
                    }
                    Err((code, message)) => {
                        s.endpoints.remove(&source.1);
                        let _ = s.mux.reject(source.1, code, &message);
                    }
                }
                vec![source.0, target.0]
            }
            CrossAction::SpliceMove { from, to } => {
                self.splice_move(from, to);
                vec![from.0, to.0]
            }
            CrossAction::PeerGone { to, code, message } => {
                self.reset_stream(to, code, &message);
                vec![to.0]
            }
        }
    }

    /// Resets a stream of some session and forgets its endpoint.
    fn reset_stream(&mut self, at: (SessionId, StreamId), code: ErrorCode, message: &str) {
        if let Some(s) = self.sessions.get_mut(&at.0) {
            s.endpoints.remove(&at.1);
            s.pending_forwards.remove(&at.1);
            if s.mux.has_stream(at.1) {
                let _ = s.mux.reset(at.1, code, message);
            }
        }
    }

    /// Moves what `from` received into `to` as far as `to`'s credit allows, releasing `from`'s
    /// credit as the bytes go; passes a CLOSE on once everything went through.
    fn splice_move(&mut self, from: (SessionId, StreamId), to: (SessionId, StreamId)) {
        if from.0 == to.0 {
            return;
        }
        let [Some(a), Some(b)] = self.sessions.get_disjoint_mut([&from.0, &to.0]) else {
            return;
        };
        let Some(Endpoint::Splice {
            stash,
            peer_closed,
            close_passed,
            ..
        }) = a.endpoints.get_mut(&from.1)
        else {
            return;
        };
        loop {
            let credit = b.mux.send_capacity(to.1);
            let cap = credit.min(b.tx_room());
            if cap == 0 {
                b.tx_stalled |= credit > 0;
                break;
            }
            let Some(mut chunk) = stash.take().or_else(|| a.mux.recv(from.1)) else {
                break;
            };
            let n = cap.min(chunk.len());
            if n == chunk.len() {
                if let Err(back) = b.mux.send_owned(to.1, chunk) {
                    *stash = Some(back.data);
                    break;
                }
            } else {
                let _ = b.mux.send(to.1, &chunk[..n]);
                chunk.drain(..n);
                *stash = Some(chunk);
            }
            a.mux.release(from.1, n);
            if stash.is_some() {
                break;
            }
        }
        if *peer_closed && !*close_passed && stash.is_none() && !a.mux.has_rx(from.1) {
            *close_passed = true;
            let _ = b.mux.close(to.1);
        }
        if *close_passed && stash.is_none() && !a.mux.has_stream(from.1) {
            a.endpoints.remove(&from.1);
        }
    }

    /// Moves everything that can move for one session, then retires it if it is over.
    fn drive(&mut self, sid: SessionId) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let mut buf = std::mem::take(&mut self.read_buf);
        let now = self.clock.now();
        let mut rounds = 0;
        loop {
            rounds += 1;
            let mut progress = false;
            if s.readable && !s.link_down {
                progress |= s.read_link(&mut buf, now);
            }
            progress |= s.process_events();
            progress |= s.run_pumps(&mut buf, &mut self.busy);
            progress |= s.process_events();
            if s.writable {
                let wrote = s.flush(now);
                progress |= wrote;
                if wrote && s.tx_stalled {
                    s.tx_stalled = false;
                    s.retry_stalled_tx();
                }
                while let Some(buf) = s.mux.take_spent() {
                    s.handle.pool().give(buf);
                }
            }
            progress |= s.process_events();
            if !progress || rounds > 64 {
                break;
            }
        }
        self.read_buf = buf;
        for t in s.released_tokens.drain(..) {
            self.tokens.remove(&t);
        }
        let wants_write = s.mux.wants_to_write();
        if wants_write != s.write_interest && !s.link_down {
            let interest = if wants_write {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            let fd = s.link.as_raw_fd();
            if self
                .poll
                .registry()
                .reregister(&mut SourceFd(&fd), s.token, interest)
                .is_ok()
            {
                s.write_interest = wants_write;
            }
        }
        // A port does not wait for a peer that stopped reading to take the last frame: the next
        // session on the same fd starts over with HELLO anyway.
        let stalled_port = s.port.is_some() && !s.writable;
        let over = s.mux.phase() == Phase::Terminated
            && (s.link_down || stalled_port || !s.mux.wants_to_write());
        if over {
            self.retire(sid);
        }
    }

    /// Removes an ended session; a port starts a fresh session on the same fd.
    fn retire(&mut self, sid: SessionId) {
        let Some(mut s) = self.sessions.remove(&sid) else {
            return;
        };

        let termination = s.mux.termination().cloned().unwrap_or(Termination {
            code: ErrorCode::LINK_LOST,
            message: "session retired".into(),
            by_peer: false,
        });
        s.finish(&termination);
        for action in std::mem::take(&mut s.outbox) {
            let more = self.cross(action);
            self.extra_work.extend(more);
        }
        self.tokens.remove(&s.token);
        for endpoint in s.endpoints.values() {
            if let Endpoint::Pump(p) = endpoint {
                for side in [p.from.as_ref(), p.to.as_ref()].into_iter().flatten() {
                    self.deregister_pump_fd(side);
                }
            }
        }
        let fd = s.link.as_raw_fd();
        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        log::debug!("session {sid} over: {termination}");
        if let Some(mut port) = s.port.take() {
            let config = (port.make_config)(&s.link);
            match self.start_port_session(s.link, config, port) {
                Ok(new_sid) => {
                    // A port whose peer is absent reports EOF at once; wait for its next event.
                    if let Some(n) = self.sessions.get_mut(&new_sid) {
                        n.readable = false;
                    }
                }
                Err(e) => log::error!("could not restart the session on the port: {e}"),
            }
        }
    }

    fn deregister_pump_fd(&self, side: &PumpFd) {
        if side.token.is_some() {
            let raw = side.fd.as_raw_fd();
            let _ = self.poll.registry().deregister(&mut SourceFd(&raw));
        }
    }

    fn shutdown_all(&mut self) {
        let sids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for sid in sids {
            if let Some(s) = self.sessions.get_mut(&sid) {
                s.port = None;
                s.mux
                    .goaway(ErrorCode::GOING_AWAY, "the event loop is shutting down");
                s.process_events();
                // Best effort: the final GOAWAY goes out if the link takes it now.
                s.flush(self.clock.now());
                s.process_events();
            }
            self.retire(sid);
        }
    }
}

impl SessionEntry {
    /// Stream bytes the mux may still take before [`TX_QUEUE_CAP`] (whatever the credit).
    fn tx_room(&self) -> usize {
        TX_QUEUE_CAP.saturating_sub(self.mux.buffered().tx)
    }

    /// Feeds the mux again from every splice and handle, after [`TX_QUEUE_CAP`] stopped one
    /// and the link took bytes.
    fn retry_stalled_tx(&mut self) {
        let ids: Vec<StreamId> = self.endpoints.keys().copied().collect();
        for id in ids {
            match self.endpoints.get(&id) {
                Some(Endpoint::Splice { peer, .. }) => {
                    let (from, to) = (*peer, (self.sid, id));
                    self.outbox.push(CrossAction::SpliceMove { from, to });
                }
                Some(Endpoint::Handle { .. }) | Some(Endpoint::Channel { .. }) => self.move_tx(id),
                _ => {}
            }
        }
    }

    fn ended_error(&self) -> SessionError {
        match self.mux.termination() {
            Some(t) => SessionError::Ended(t.clone()),
            None => SessionError::ReactorGone,
        }
    }

    /// Reads the link until it would block; returns whether anything was read.
    ///
    /// On a socket, a read that returns less than asked for means that the socket was empty at
    /// that moment: the next arrival raises a new edge-triggered event, so the loop stops there
    /// instead of spending a system call on the `WouldBlock` (one per message at low rates).
    /// The exception is a peer that has already shut its write half when the event was
    /// collected: the data and the EOF then share one edge, and stopping after the data would
    /// never see the EOF (a session that never ends), so once an event reported read-closed
    /// the loop reads on until EOF or `WouldBlock`. Ports and ttys are read until `WouldBlock`.
    fn read_link(&mut self, buf: &mut [u8], now: crate::time::Instant) -> bool {
        let socket = matches!(
            self.link.kind(),
            LinkKind::Unix | LinkKind::Hvsock | LinkKind::Vsock
        );
        let mut any = false;
        loop {
            match self.link.read(buf) {
                Ok(0) => {
                    self.readable = false;
                    self.on_link_eof();
                    return any;
                }
                Ok(n) => {
                    any = true;
                    self.mux.handle_input(now, &buf[..n]);
                    if self.mux.phase() == Phase::Terminated {
                        self.readable = true;
                        return true;
                    }
                    if socket && n < buf.len() && !self.read_closed_seen {
                        self.readable = false;
                        return true;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    return any;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.readable = false;
                    self.link_down = true;
                    self.mux
                        .link_lost(&format!("reading {}: {e}", self.link.peer()));
                    return true;
                }
            }
        }
    }

    fn on_link_eof(&mut self) {
        let waiting_for_peer = self.port.is_some() && self.mux.phase() == Phase::AwaitingHello;
        if waiting_for_peer {
            // A virtio-serial port with no host: nothing to lose, wait for the next event.
            return;
        }
        // This session's link is over; a port's fd lives on in the next session.
        self.link_down = true;
        let why = match self.link.kind() {
            LinkKind::VirtioSerial => "the host closed the virtio-serial port".to_string(),
            _ => format!("{} closed the link", self.link.peer()),
        };
        self.mux.link_lost(&why);
    }

    /// Writes what the mux has built until the link would block; returns whether any was written.
    fn flush(&mut self, now: crate::time::Instant) -> bool {
        let mut any = false;
        loop {
            let out = self.mux.poll_transmit();
            if out.is_empty() {
                return any;
            }
            match self.link.write(out) {
                Ok(0) => return any,
                Ok(n) => {
                    any = true;
                    self.mux.advance_output(now, n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.writable = false;
                    return any;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.writable = false;
                    if self.link.kind() == LinkKind::VirtioSerial && self.port.is_some() {
                        // No host: keep the bytes until one connects.
                        return any;
                    }
                    self.link_down = true;
                    self.mux
                        .link_lost(&format!("writing {}: {e}", self.link.peer()));
                    return true;
                }
            }
        }
    }

    /// Turns mux events into handle updates; returns whether there were any.
    fn process_events(&mut self) -> bool {
        let mut any = false;
        while let Some(event) = self.mux.poll_event() {
            any = true;
            self.on_event(event);
        }
        any
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Established { .. } => {
                self.shared.lock().established = true;
                self.shared.cond.notify_all();
            }
            Event::Incoming { id, service, args } => {
                let incoming = Incoming {
                    service,
                    args,
                    id,
                    session: self.sid,
                    reactor: self.handle.clone(),
                    answered: false,
                };
                let undelivered = match &self.incoming {
                    Some(tx) => tx.send(incoming).err().map(|e| e.into_inner()),
                    None => Some(incoming),
                };
                if let Some(mut incoming) = undelivered {
                    incoming.answered = true;
                    let _ = self.mux.reject(
                        id,
                        ErrorCode::UNKNOWN_SERVICE,
                        "this side accepts no streams",
                    );
                }
            }
            Event::Accepted { id, reply } => {
                if let Some(source) = self.pending_forwards.remove(&id) {
                    let target = (self.sid, id);
                    self.outbox.push(CrossAction::ForwardAnswer {
                        source,
                        target,
                        answer: Ok(reply),
                    });
                    return;
                }
                if let Some((shared, tx)) = self.pending_opens.remove(&id) {
                    self.endpoints.insert(
                        id,
                        Endpoint::Handle {
                            shared,
                            dropped: false,
                            close_requested: false,
                        },
                    );
                    self.move_tx(id);
                    if tx.send(Ok((id, reply))).is_err() {
                        // The opener gave up waiting: behave as if it dropped the stream.
                        self.drop_handle(id);
                    }
                }
            }
            Event::Refused { id, code, message } => {
                if let Some(source) = self.pending_forwards.remove(&id) {
                    let target = (self.sid, id);
                    self.outbox.push(CrossAction::ForwardAnswer {
                        source,
                        target,
                        answer: Err((code, message)),
                    });
                    return;
                }
                if let Some((_, tx)) = self.pending_opens.remove(&id) {
                    let _ = tx.send(Err(SessionError::Refused { code, message }));
                }
            }
            Event::Readable { id } => match self.endpoints.get(&id) {
                Some(Endpoint::Splice { peer, .. }) => {
                    let (from, to) = ((self.sid, id), *peer);
                    self.outbox.push(CrossAction::SpliceMove { from, to });
                }
                _ => self.drain_rx(id),
            },
            Event::Writable { id } => match self.endpoints.get(&id) {
                Some(Endpoint::Splice { peer, .. }) => {
                    let (from, to) = (*peer, (self.sid, id));
                    self.outbox.push(CrossAction::SpliceMove { from, to });
                }
                _ => self.move_tx(id),
            },
            Event::PeerClosed { id } => match self.endpoints.get_mut(&id) {
                Some(Endpoint::Handle { shared, .. }) => {
                    let mut st = shared.lock();
                    if matches!(st.rx_end, RxEnd::Open) {
                        st.rx_end = RxEnd::Eof;
                    }
                    drop(st);
                    shared.cond.notify_all();
                }
                Some(Endpoint::Pump(p)) => p.peer_closed = true,
                Some(Endpoint::Splice {
                    peer, peer_closed, ..
                }) => {
                    *peer_closed = true;
                    let (from, to) = ((self.sid, id), *peer);
                    self.outbox.push(CrossAction::SpliceMove { from, to });
                }
                Some(Endpoint::Forwarding { .. }) => {}
                Some(Endpoint::Channel { events, .. }) => {
                    let _ = events.send(ChannelEvent {
                        session: self.sid,
                        stream: id,
                        kind: ChannelEventKind::PeerClosed,
                    });
                }
                None => {}
            },
            Event::Reset {
                id,
                code,
                message,
                by_peer,
            } => {
                let error = SessionError::Reset {
                    code,
                    message,
                    by_peer,
                };
                if let Some((shared, tx)) = self.pending_opens.remove(&id) {
                    shared.fail(error.clone());
                    let _ = tx.send(Err(error));
                    return;
                }
                if let Some(source) = self.pending_forwards.remove(&id) {
                    let target = (self.sid, id);
                    let answer = Err((ErrorCode::LINK_LOST, error.to_string()));
                    self.outbox.push(CrossAction::ForwardAnswer {
                        source,
                        target,
                        answer,
                    });
                    return;
                }
                match self.endpoints.remove(&id) {
                    Some(Endpoint::Handle { shared, .. }) => shared.fail(error),
                    Some(Endpoint::Forwarding { target: to })
                    | Some(Endpoint::Splice { peer: to, .. }) => {
                        let (code, message) = match error {
                            SessionError::Reset { code, message, .. } => (code, message),
                            other => (ErrorCode::CANCEL, other.to_string()),
                        };
                        self.outbox
                            .push(CrossAction::PeerGone { to, code, message });
                    }
                    Some(Endpoint::Pump(p)) => self.finish_pump(id, *p, Err(error)),
                    Some(Endpoint::Channel { events, .. }) => {
                        let _ = events
                            .send(self.channel_event(id, ChannelEventKind::Ended(Err(error))));
                    }
                    None => {}
                }
            }
            Event::Closed { id } => match self.endpoints.remove(&id) {
                Some(Endpoint::Handle { shared, .. }) => {
                    // Both directions ended; the handle keeps its buffered bytes and EOF.
                    let mut st = shared.lock();
                    if matches!(st.rx_end, RxEnd::Open) {
                        st.rx_end = RxEnd::Eof;
                    }
                    drop(st);
                    shared.cond.notify_all();
                }
                Some(Endpoint::Pump(mut p)) => {
                    p.mux_closed = true;
                    if p.to_pending.is_empty() {
                        self.finish_pump(id, *p, Ok(()));
                    } else {
                        self.endpoints.insert(id, Endpoint::Pump(p));
                    }
                }
                Some(Endpoint::Channel { events, .. }) => {
                    let _ = events.send(self.channel_event(id, ChannelEventKind::Ended(Ok(()))));
                }
                Some(splice @ Endpoint::Splice { .. }) => {
                    // A stashed chunk or a CLOSE may still have to reach the peer.
                    if let Endpoint::Splice { peer, .. } = &splice {
                        let (from, to) = ((self.sid, id), *peer);
                        self.outbox.push(CrossAction::SpliceMove { from, to });
                    }
                    self.endpoints.insert(id, splice);
                }
                Some(Endpoint::Forwarding { .. }) => {}
                None => {}
            },
            Event::GoAway { .. } => {
                self.shared.lock().going_away = true;
                self.shared.cond.notify_all();
            }
            Event::Pong { rtt } => {
                if let Some(tx) = self.pings.pop_front() {
                    let _ = tx.send(Ok(rtt));
                }
            }
            Event::PeerSilent { silent_for } => log::warn!(
                "{}: no frame from the peer for {:.1} s (paused, hung or cut off); still probing",
                self.link.peer(),
                silent_for.as_secs_f64()
            ),
            Event::PeerBack { silent_for } => log::info!(
                "{}: the peer answered again after {:.1} s of silence",
                self.link.peer(),
                silent_for.as_secs_f64()
            ),
            Event::Terminated(t) => self.finish(&t),
        }
    }

    /// Fails everything still waiting on this session and records why it ended.
    fn finish(&mut self, t: &Termination) {
        let error = SessionError::Ended(t.clone());
        for (_, (shared, tx)) in self.pending_opens.drain() {
            shared.fail(error.clone());
            let _ = tx.send(Err(error.clone()));
        }
        for tx in self.pings.drain(..) {
            let _ = tx.send(Err(error.clone()));
        }
        for (id, source) in std::mem::take(&mut self.pending_forwards) {
            let answer = Err((ErrorCode::LINK_LOST, t.to_string()));
            self.outbox.push(CrossAction::ForwardAnswer {
                source,
                target: (self.sid, id),
                answer,
            });
        }
        let ids: Vec<StreamId> = self.endpoints.keys().copied().collect();
        for id in ids {
            match self.endpoints.remove(&id) {
                Some(Endpoint::Handle { shared, .. }) => shared.fail(error.clone()),
                Some(Endpoint::Pump(p)) => self.finish_pump(id, *p, Err(error.clone())),
                Some(Endpoint::Channel { events, .. }) => {
                    let _ = events
                        .send(self.channel_event(id, ChannelEventKind::Ended(Err(error.clone()))));
                }
                Some(Endpoint::Forwarding { target: to })
                | Some(Endpoint::Splice { peer: to, .. }) => {
                    let message = t.to_string();
                    self.outbox.push(CrossAction::PeerGone {
                        to,
                        code: ErrorCode::LINK_LOST,
                        message,
                    });
                }
                None => {}
            }
        }
        // No new incoming stream can come: let acceptors see the end.
        self.incoming = None;
        let mut st = self.shared.lock();
        if st.ended.is_none() {
            st.ended = Some(t.clone());
        }
        drop(st);
        self.shared.cond.notify_all();
    }

    fn drop_handle(&mut self, id: StreamId) {
        if let Some(Endpoint::Handle {
            dropped,
            close_requested,
            ..
        }) = self.endpoints.get_mut(&id)
        {
            *dropped = true;
            *close_requested = true;
        }
        self.move_tx(id);
        self.drain_rx(id);
    }

    /// Moves received chunks from the mux to the stream's consumer.
    fn drain_rx(&mut self, id: StreamId) {
        match self.endpoints.get_mut(&id) {
            Some(Endpoint::Handle {
                shared,
                dropped: false,
                ..
            }) => {
                let shared = shared.clone();
                let mut st = shared.lock();
                let mut any = false;
                while let Some(chunk) = self.mux.recv(id) {
                    st.rx_len += chunk.len();
                    st.rx.push_back(chunk);
                    any = true;
                }
                if any {
                    shared.notify(st, Waiting::Read);
                }
            }
            Some(Endpoint::Handle { dropped: true, .. }) => {
                while let Some(chunk) = self.mux.recv(id) {
                    self.mux.release(id, chunk.len());
                }
            }
            Some(Endpoint::Pump(p)) => {
                if p.to.is_some() {
                    while let Some(chunk) = self.mux.recv(id) {
                        p.to_pending.push_back(chunk);
                    }
                } else {
                    while let Some(chunk) = self.mux.recv(id) {
                        p.received += chunk.len() as u64;
                        self.mux.release(id, chunk.len());
                    }
                }
            }
            Some(Endpoint::Channel { events, .. }) => {
                let events = events.clone();
                while let Some(chunk) = self.mux.recv(id) {
                    self.mux.release(id, chunk.len());
                    if events
                        .send(self.channel_event(id, ChannelEventKind::Data(chunk)))
                        .is_err()
                    {
                        // Nobody listens any more: end the stream.
                        self.endpoints.remove(&id);
                        let _ = self
                            .mux
                            .reset(id, ErrorCode::CANCEL, "the service went away");
                        break;
                    }
                }
            }
            Some(Endpoint::Forwarding { .. }) | Some(Endpoint::Splice { .. }) | None => {}
        }
    }

    fn channel_event(&self, id: StreamId, kind: ChannelEventKind) -> ChannelEvent {
        ChannelEvent {
            session: self.sid,
            stream: id,
            kind,
        }
    }

    /// Moves a channel's queued messages into the mux as far as credit allows.
    fn move_channel_tx(&mut self, id: StreamId) {
        let Some(Endpoint::Channel {
            tx,
            tx_len,
            close_requested,
            ..
        }) = self.endpoints.get_mut(&id)
        else {
            return;
        };
        while let Some(mut chunk) = tx.pop_front() {
            let credit = self.mux.send_capacity(id);
            let cap = credit.min(TX_QUEUE_CAP.saturating_sub(self.mux.buffered().tx));
            if cap == 0 {
                self.tx_stalled |= credit > 0;
                tx.push_front(chunk);
                break;
            }
            let n = chunk.len().min(cap);
            let _ = self.mux.send(id, &chunk[..n]);
            *tx_len -= n;
            if n < chunk.len() {
                chunk.drain(..n);
                tx.push_front(chunk);
                break;
            }
        }
        if *close_requested && tx.is_empty() {
            let _ = self.mux.close(id);
        }
    }

    /// Moves a handle's queued writes into the mux as far as credit allows.
    fn move_tx(&mut self, id: StreamId) {
        if matches!(self.endpoints.get(&id), Some(Endpoint::Channel { .. })) {
            return self.move_channel_tx(id);
        }
        let Some(Endpoint::Handle {
            shared,
            close_requested,
            ..
        }) = self.endpoints.get(&id)
        else {
            return;
        };
        let shared = shared.clone();
        let close_requested = *close_requested;
        let mut st = shared.lock();
        st.tx_notified = false;
        let mut moved = false;
        while let Some(mut chunk) = st.tx.pop_front() {
            let credit = self.mux.send_capacity(id);
            let cap = credit.min(TX_QUEUE_CAP.saturating_sub(self.mux.buffered().tx));
            if cap == 0 {
                self.tx_stalled |= credit > 0;
                st.tx.push_front(chunk);
                break;
            }
            let n = chunk.len().min(cap);
            if n == chunk.len() {
                if let Err(back) = self.mux.send_owned(id, chunk) {
                    st.tx.push_front(back.data);
                    break;
                }
            } else {
                let _ = self.mux.send(id, &chunk[..n]);
                chunk.drain(..n);
                st.tx.push_front(chunk);
            }
            st.tx_len -= n;
            moved = true;
        }
        let credit = self.mux.send_capacity(id);
        let credit_grew = credit > st.credit;
        st.credit = credit;
        let shut = matches!(st.tx_end, TxEnd::Shut) || close_requested;
        let close_now = shut && st.tx.is_empty();
        if moved || credit_grew {
            shared.notify(st, Waiting::Write);
        } else {
            drop(st);
        }
        if close_now {
            let _ = self.mux.close(id);
        }
    }

    /// Moves bytes between pumps' fds and their streams; returns whether anything moved.
    fn run_pumps(&mut self, buf: &mut [u8], busy: &mut bool) -> bool {
        let ids: Vec<StreamId> = self
            .endpoints
            .iter()
            .filter(|(_, e)| matches!(e, Endpoint::Pump(_)))
            .map(|(id, _)| *id)
            .collect();
        let mut progress = false;
        for id in ids {
            let Some(Endpoint::Pump(mut p)) = self.endpoints.remove(&id) else {
                continue;
            };
            progress |= self.pump_from_fd(id, &mut p, buf, busy);
            progress |= self.pump_to_fd(id, &mut p, busy);
            let to_done = p.to.is_none() || (p.peer_closed && p.to_pending.is_empty());
            if p.peer_closed && p.to_pending.is_empty() {
                if let Some(to) = p.to.take() {
                    // Closing the fd is the EOF for whoever reads the other end (a process's
                    // stdin); epoll forgets a closed fd by itself. A socket may have another
                    // fd open for the other direction, so shut its write side explicitly.
                    let _ = nix::sys::socket::shutdown(
                        to.fd.as_raw_fd(),
                        nix::sys::socket::Shutdown::Write,
                    );
                    self.release_token(to.token);
                }
            }
            if p.mux_closed && to_done {
                self.finish_pump(id, *p, Ok(()));
            } else {
                self.endpoints.insert(id, Endpoint::Pump(p));
            }
        }
        progress
    }

    fn release_token(&mut self, token: Option<Token>) {
        if let Some(t) = token {
            self.released_tokens.push(t);
        }
    }

    /// Reads from a pump's source fd into its stream while credit lasts.
    fn pump_from_fd(
        &mut self,
        id: StreamId,
        p: &mut Pump,
        buf: &mut [u8],
        busy: &mut bool,
    ) -> bool {
        let mut progress = false;
        let Some(from) = p.from.as_mut() else {
            return false;
        };
        let mut turns = 0;
        while from.ready && !p.from_done {
            // Bounded by credit and by what waits unframed; every drive round tries again, so
            // the pump resumes as soon as the link takes the queued bytes.
            let cap = self
                .mux
                .send_capacity(id)
                .min(self.tx_room())
                .min(PUMP_CHUNK)
                .min(buf.len());
            if cap == 0 {
                break;
            }
            if from.token.is_none() {
                // Always-ready fd: a bounded amount per loop turn, then let others run.
                turns += 1;
                if turns > 4 {
                    *busy = true;
                    break;
                }
            }
            match nix::unistd::read(from.fd.as_fd(), &mut buf[..cap]) {
                // EIO on a pty master means every slave fd is closed: the terminal's EOF.
                Ok(0) | Err(nix::errno::Errno::EIO) => {
                    p.from_done = true;
                    let _ = self.mux.close(id);
                    progress = true;
                }
                Ok(n) => {
                    if p.crc {
                        p.crc_sent = crc32c::crc32c_append(p.crc_sent, &buf[..n]);
                    }
                    let _ = self.mux.send(id, &buf[..n]);
                    p.sent += n as u64;
                    progress = true;
                }
                Err(nix::errno::Errno::EAGAIN) => from.ready = false,
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    log::debug!("pump read on stream {id}: {e}");
                    p.from_done = true;
                    p.failed = Some(SessionError::Io(e.into()));
                    let _ = self.mux.reset(
                        id,
                        ErrorCode::INTERNAL,
                        &format!("reading the source: {e}"),
                    );
                    // The reset ends the stream with no event: finish the pump here.
                    p.to_pending.clear();
                    p.peer_closed = true;
                    p.mux_closed = true;
                    progress = true;
                }
            }
        }
        if p.from_done {
            if let Some(from) = p.from.take() {
                self.release_token(from.token);
            }
        }
        progress
    }

    /// Writes a pump's received bytes into its sink fd, releasing credit as they go.
    fn pump_to_fd(&mut self, id: StreamId, p: &mut Pump, busy: &mut bool) -> bool {
        let mut progress = false;
        if p.to.is_some() && p.to_pending.is_empty() {
            while let Some(chunk) = self.mux.recv(id) {
                p.to_pending.push_back(chunk);
            }
        }
        let Some(to) = p.to.as_mut() else {
            return false;
        };
        while to.ready {
            let Some(front) = p.to_pending.front() else {
                break;
            };
            match nix::unistd::write(to.fd.as_fd(), &front[p.to_head..]) {
                Ok(n) => {
                    progress = true;
                    if p.crc {
                        p.crc_received =
                            crc32c::crc32c_append(p.crc_received, &front[p.to_head..p.to_head + n]);
                    }
                    p.to_head += n;
                    p.received += n as u64;
                    self.mux.release(id, n);
                    if p.to_head == front.len() {
                        p.to_pending.pop_front();
                        p.to_head = 0;
                        if p.to_pending.is_empty() {
                            while let Some(chunk) = self.mux.recv(id) {
                                p.to_pending.push_back(chunk);
                            }
                        }
                    }
                    if to.token.is_none() && n > 0 {
                        *busy |= !p.to_pending.is_empty();
                    }
                }
                Err(nix::errno::Errno::EAGAIN) => to.ready = false,
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    log::debug!("pump write on stream {id}: {e}");
                    p.failed = Some(SessionError::Io(e.into()));
                    let _ =
                        self.mux
                            .reset(id, ErrorCode::INTERNAL, &format!("writing the sink: {e}"));
                    p.to_pending.clear();
                    p.peer_closed = true;
                    p.mux_closed = true;
                    return true;
                }
            }
        }
        progress
    }

    fn finish_pump(&mut self, id: StreamId, mut p: Pump, result: Result<(), SessionError>) {
        for side in [p.from.take(), p.to.take()].into_iter().flatten() {
            self.release_token(side.token);
        }
        let result = match p.failed.take() {
            Some(error) => Err(error),
            None => result,
        };
        if let Some(done) = p.done.take() {
            let _ = done.send(PumpDone {
                session: self.sid,
                stream: id,
                bytes_sent: p.sent,
                bytes_received: p.received,
                crc_sent: p.crc_sent,
                crc_received: p.crc_received,
                result,
            });
        }
    }
}
