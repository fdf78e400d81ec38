//! Blocking handles for application threads: [`Session`], [`Incoming`] and [`Stream`].
//!
//! The reactor thread owns every session; a handle talks to it with [`Command`]s over a
//! crossbeam channel and wakes it with its `mio::Waker`. Data crosses threads through one small
//! shared state per stream (a mutex and a condition variable): the reactor appends received
//! chunks and takes queued writes; the application reads and writes. Backpressure is real: a
//! writer blocks while its stream's send queue is full (that queue only drains as the peer grants
//! credit), and received bytes count against the peer's credit until the reader has consumed
//! them, so a slow reader slows the sender instead of growing a buffer.

use crate::mux::{Counters, StreamId, Termination};
use crate::reactor::{Command, ReactorHandle, SessionId};
use crate::wire::ErrorCode;
use crossbeam_channel::{Receiver, Sender};
use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Errors seen by application threads.
#[derive(Debug)]
pub enum SessionError {
    /// The peer refused to open the stream.
    Refused { code: ErrorCode, message: String },
    /// The stream was reset (by the peer, by a violation, or because the session ended).
    Reset {
        code: ErrorCode,
        message: String,
        by_peer: bool,
    },
    /// The session has ended.
    Ended(Termination),
    /// The session is shutting down and opens no new stream.
    GoingAway,
    /// The request was invalid (bad service name, too large, stream limit).
    Invalid(String),
    /// The reactor thread is gone.
    ReactorGone,
    /// A timeout set on the handle expired.
    TimedOut,
    /// A system call failed.
    Io(io::Error),
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::Refused { code, message } if message.is_empty() => {
                write!(f, "refused by the peer: {code}")
            }
            SessionError::Refused { code, message } => {
                write!(f, "refused by the peer: {code}: {message}")
            }
            SessionError::Reset {
                code,
                message,
                by_peer,
            } => {
                let who = if *by_peer { "the peer" } else { "this side" };
                if message.is_empty() {
                    write!(f, "stream reset by {who}: {code}")
                } else {
                    write!(f, "stream reset by {who}: {code}: {message}")
                }
            }
            SessionError::Ended(t) => write!(f, "{t}"),
            SessionError::GoingAway => f.write_str("session is shutting down"),
            SessionError::Invalid(why) => write!(f, "invalid request: {why}"),
            SessionError::ReactorGone => f.write_str("the vmux event loop has stopped"),
            SessionError::TimedOut => f.write_str("timed out"),
            SessionError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for SessionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SessionError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl Clone for SessionError {
    fn clone(&self) -> SessionError {
        match self {
            SessionError::Refused { code, message } => SessionError::Refused {
                code: *code,
                message: message.clone(),
            },
            SessionError::Reset {
                code,
                message,
                by_peer,
            } => SessionError::Reset {
                code: *code,
                message: message.clone(),
                by_peer: *by_peer,
            },
            SessionError::Ended(t) => SessionError::Ended(t.clone()),
            SessionError::GoingAway => SessionError::GoingAway,
            SessionError::Invalid(s) => SessionError::Invalid(s.clone()),
            SessionError::ReactorGone => SessionError::ReactorGone,
            SessionError::TimedOut => SessionError::TimedOut,
            SessionError::Io(e) => SessionError::Io(io::Error::new(e.kind(), e.to_string())),
        }
    }
}

impl From<SessionError> for io::Error {
    fn from(e: SessionError) -> io::Error {
        let kind = match &e {
            SessionError::Io(inner) => return io::Error::new(inner.kind(), e.to_string()),
            SessionError::TimedOut => io::ErrorKind::TimedOut,
            SessionError::Refused { .. } => io::ErrorKind::ConnectionRefused,
            SessionError::Reset { .. } => io::ErrorKind::ConnectionReset,
            SessionError::Ended(_) | SessionError::ReactorGone => io::ErrorKind::ConnectionAborted,
            SessionError::GoingAway => io::ErrorKind::NotConnected,
            SessionError::Invalid(_) => io::ErrorKind::InvalidInput,
        };
        io::Error::new(kind, e)
    }
}

// ----- shared stream state -----

/// How the receive side stands.
#[derive(Debug, Clone)]
pub(crate) enum RxEnd {
    /// More may come.
    Open,
    /// The peer half-closed: EOF after the buffered bytes.
    Eof,
    /// The stream failed.
    Failed(SessionError),
}

/// How the send side stands.
#[derive(Debug, Clone)]
pub(crate) enum TxEnd {
    /// Writes are accepted.
    Open,
    /// The application shut the write side.
    Shut,
    /// The stream failed.
    Failed(SessionError),
}

/// The state one stream's handle and the reactor share.
#[derive(Debug)]
pub(crate) struct StreamState {
    pub rx: VecDeque<Vec<u8>>,
    /// Read offset into `rx.front()`.
    pub rx_head: usize,
    pub rx_len: usize,
    pub rx_end: RxEnd,
    /// Bytes read by the application but not yet reported to the reactor.
    pub unreported: usize,
    pub tx: VecDeque<Vec<u8>>,
    pub tx_len: usize,
    pub tx_end: TxEnd,
    /// A `Tx` command is already on its way to the reactor.
    pub tx_notified: bool,
    /// Bytes the mux would take for this stream when the reactor last looked (the peer's
    /// credit): the writer queues no more than this, so unsent data never exceeds what the
    /// peer agreed to buffer.
    pub credit: usize,
    /// Application threads waiting on the condition variable for received bytes (or the end
    /// of the receive half). The reactor skips the wake-up system call when there are none.
    pub read_waiters: u32,
    /// Application threads waiting for room to queue or for the queue to drain. Counted apart
    /// from readers so that moving a writer's bytes does not wake a reader for nothing (each
    /// such wake-up is two context switches per message).
    pub write_waiters: u32,
}

/// What an application thread waits for on a stream's condition variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waiting {
    /// Received bytes or the end of the receive half.
    Read,
    /// Room in the send queue, or an empty queue.
    Write,
}

/// A stream's shared state and its condition variable.
#[derive(Debug)]
pub(crate) struct StreamShared {
    pub state: Mutex<StreamState>,
    pub cond: Condvar,
    /// Most bytes the writer may queue before it blocks.
    pub tx_cap: usize,
    /// Report consumption to the reactor in batches of this many bytes.
    pub report_every: usize,
}

impl StreamShared {
    pub fn new(tx_cap: usize, report_every: usize) -> Arc<StreamShared> {
        Arc::new(StreamShared {
            state: Mutex::new(StreamState {
                rx: VecDeque::new(),
                rx_head: 0,
                rx_len: 0,
                rx_end: RxEnd::Open,
                unreported: 0,
                tx: VecDeque::new(),
                tx_len: 0,
                tx_end: TxEnd::Open,
                tx_notified: false,
                credit: 0,
                read_waiters: 0,
                write_waiters: 0,
            }),
            cond: Condvar::new(),
            tx_cap: tx_cap.max(1),
            report_every: report_every.max(1),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, StreamState> {
        // A panic while holding this lock cannot leave the state inconsistent in a way that
        // matters more than losing the stream; keep going.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Releases `st` and wakes the application threads waiting for `what` (and, as they
    /// share the condition variable, any others), if there are any.
    pub fn notify(&self, st: MutexGuard<'_, StreamState>, what: Waiting) {
        let waiting = match what {
            Waiting::Read => st.read_waiters > 0,
            Waiting::Write => st.write_waiters > 0,
        };
        drop(st);
        if waiting {
            self.cond.notify_all();
        }
    }

    /// Marks both directions failed and wakes every waiter.
    pub fn fail(&self, error: SessionError) {
        let mut st = self.lock();
        if matches!(st.rx_end, RxEnd::Open) {
            st.rx_end = RxEnd::Failed(error.clone());
        }
        if !matches!(st.tx_end, TxEnd::Failed(_)) {
            st.tx_end = TxEnd::Failed(error);
        }
        st.tx.clear();
        st.tx_len = 0;
        drop(st);
        self.cond.notify_all();
    }
}

/// Send buffers recycled between stream writers and the reactor (one pool per reactor), so
/// that a steady writer reuses buffers whose pages are already mapped instead of allocating
/// fresh ones (which the allocator returns to the kernel and page-faults back in).
#[derive(Debug, Default)]
pub(crate) struct BufPool {
    bufs: Mutex<Vec<Vec<u8>>>,
}

impl BufPool {
    /// Most buffers kept.
    const MAX: usize = 16;

    /// An empty buffer, recycled when one is available.
    pub fn take(&self) -> Vec<u8> {
        self.bufs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_default()
    }

    /// Keeps `buf` (cleared) for reuse, unless the pool is full.
    pub fn give(&self, mut buf: Vec<u8>) {
        let mut bufs = self.bufs.lock().unwrap_or_else(|p| p.into_inner());
        if bufs.len() < Self::MAX {
            buf.clear();
            bufs.push(buf);
        }
    }
}

/// Waits on `cond` until `deadline` (or forever), counted as waiting for `what`; returns the
/// guard and whether time ran out.
fn wait_until<'a>(
    cond: &Condvar,
    mut guard: MutexGuard<'a, StreamState>,
    deadline: Option<Instant>,
    what: Waiting,
) -> (MutexGuard<'a, StreamState>, bool) {
    let timeout = match deadline {
        None => None,
        Some(d) => {
            let now = Instant::now();
            if now >= d {
                return (guard, true);
            }
            Some(d - now)
        }
    };
    match what {
        Waiting::Read => guard.read_waiters += 1,
        Waiting::Write => guard.write_waiters += 1,
    }
    let mut guard = match timeout {
        None => cond.wait(guard).unwrap_or_else(|p| p.into_inner()),
        Some(t) => {
            cond.wait_timeout(guard, t)
                .unwrap_or_else(|p| p.into_inner())
                .0
        }
    };
    match what {
        Waiting::Read => guard.read_waiters -= 1,
        Waiting::Write => guard.write_waiters -= 1,
    }
    (guard, false)
}

// ----- Stream -----

/// One bidirectional byte stream inside a session: `Read + Write`, blocking, with backpressure.
#[derive(Debug)]
pub struct Stream {
    shared: Arc<StreamShared>,
    reactor: ReactorHandle,
    session: SessionId,
    id: StreamId,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
}

impl Stream {
    pub(crate) fn new(
        shared: Arc<StreamShared>,
        reactor: ReactorHandle,
        session: SessionId,
        id: StreamId,
    ) -> Stream {
        Stream {
            shared,
            reactor,
            session,
            id,
            read_timeout: None,
            write_timeout: None,
        }
    }

    /// The stream's id within its session.
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// Makes `read` fail with `TimedOut` after waiting this long (`None`: wait forever).
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.read_timeout = timeout;
    }

    /// Makes `write` fail with `TimedOut` after waiting this long for credit (`None`: forever).
    pub fn set_write_timeout(&mut self, timeout: Option<Duration>) {
        self.write_timeout = timeout;
    }

    /// Half-closes: the peer reads EOF after everything written so far. Reading goes on.
    pub fn shutdown_write(&self) -> Result<(), SessionError> {
        let mut st = self.shared.lock();
        match &st.tx_end {
            TxEnd::Shut => return Ok(()),
            TxEnd::Failed(e) => return Err(e.clone()),
            TxEnd::Open => st.tx_end = TxEnd::Shut,
        }
        drop(st);
        self.reactor.send(Command::CloseWrite {
            session: self.session,
            id: self.id,
        })
    }

    /// Aborts the stream in both directions with `code`; unsent data is dropped.
    pub fn reset(&self, code: ErrorCode) -> Result<(), SessionError> {
        self.shared.fail(SessionError::Reset {
            code,
            message: "reset by this side".into(),
            by_peer: false,
        });
        self.reactor.send(Command::Reset {
            session: self.session,
            id: self.id,
            code,
        })
    }

    /// Waits until everything written has been handed to the session (not necessarily
    /// delivered: the peer's acknowledgement is an application matter or GOAWAY's).
    pub fn flush_queued(&self) -> Result<(), SessionError> {
        let deadline = self.write_timeout.map(|t| Instant::now() + t);
        let mut st = self.shared.lock();
        loop {
            if let TxEnd::Failed(e) = &st.tx_end {
                return Err(e.clone());
            }
            if st.tx_len == 0 {
                return Ok(());
            }
            let (g, timed_out) = wait_until(&self.shared.cond, st, deadline, Waiting::Write);
            st = g;
            if timed_out {
                return Err(SessionError::TimedOut);
            }
        }
    }

    /// Takes the consumption the reactor has not heard of yet, once it is worth a report: a full
    /// batch (`report_every`), or anything at all when `force` (the reader is about to wait, and
    /// the peer may be waiting for exactly this credit). The caller sends it with
    /// [`Stream::send_consumed`] *after* releasing the state lock: the send may wake the reactor,
    /// which would otherwise be scheduled only to block on that lock.
    fn take_report(&self, st: &mut StreamState, force: bool) -> Option<usize> {
        (st.unreported >= self.shared.report_every || (force && st.unreported > 0))
            .then(|| std::mem::take(&mut st.unreported))
    }

    fn send_consumed(&self, n: usize) {
        // If the reactor is gone, the stream is failing anyway.
        let _ = self.reactor.send(Command::Consumed {
            session: self.session,
            id: self.id,
            n,
        });
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_shared(buf)
    }
}

/// Reading through a shared reference lets one thread read while another writes.
impl Read for &Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_shared(buf)
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_shared(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writing through a shared reference lets one thread write while another reads.
impl Write for &Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_shared(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Stream {
    fn read_shared(&self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let deadline = self.read_timeout.map(|t| Instant::now() + t);
        let mut st = self.shared.lock();
        loop {
            if st.rx_len > 0 {
                let mut copied = 0;
                while copied < buf.len() {
                    let head = st.rx_head;
                    let Some(front) = st.rx.front() else { break };
                    let n = (front.len() - head).min(buf.len() - copied);
                    buf[copied..copied + n].copy_from_slice(&front[head..head + n]);
                    copied += n;
                    if head + n == front.len() {
                        st.rx.pop_front();
                        st.rx_head = 0;
                    } else {
                        st.rx_head = head + n;
                    }
                }
                st.rx_len -= copied;
                st.unreported += copied;
                let report = self.take_report(&mut st, false);
                drop(st);
                if let Some(n) = report {
                    self.send_consumed(n);
                }
                return Ok(copied);
            }
            match &st.rx_end {
                RxEnd::Eof => return Ok(0),
                RxEnd::Failed(e) => return Err(e.clone().into()),
                RxEnd::Open => {}
            }
            // About to wait: make sure the peer is not waiting for credit we owe. The lock is
            // released for the send, so look at the state again before waiting.
            if let Some(n) = self.take_report(&mut st, true) {
                drop(st);
                self.send_consumed(n);
                st = self.shared.lock();
                continue;
            }
            let (g, timed_out) = wait_until(&self.shared.cond, st, deadline, Waiting::Read);
            st = g;
            if timed_out && st.rx_len == 0 && matches!(st.rx_end, RxEnd::Open) {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "read timed out"));
            }
        }
    }
}

impl Stream {
    fn write_shared(&self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let deadline = self.write_timeout.map(|t| Instant::now() + t);
        let mut st = self.shared.lock();
        loop {
            match &st.tx_end {
                TxEnd::Failed(e) => return Err(e.clone().into()),
                TxEnd::Shut => {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "stream is shut for writing",
                    ))
                }
                TxEnd::Open => {}
            }
            let room = self.shared.tx_cap.min(st.credit).saturating_sub(st.tx_len);
            if room > 0 {
                let n = room.min(buf.len());
                let mut chunk = self.reactor.pool().take();
                chunk.extend_from_slice(&buf[..n]);
                st.tx.push_back(chunk);
                st.tx_len += n;
                let notify = !std::mem::replace(&mut st.tx_notified, true);
                // The command that announces these bytes also carries what this stream's reader
                // consumed since its last report: in a request/response exchange that spares
                // the reader's own report (and the wake-up it costs) when it next waits.
                let consumed = if notify {
                    std::mem::take(&mut st.unreported)
                } else {
                    0
                };
                drop(st);
                if notify {
                    self.reactor.send(Command::Tx {
                        session: self.session,
                        id: self.id,
                        consumed,
                    })?;
                }
                return Ok(n);
            }
            let (g, timed_out) = wait_until(&self.shared.cond, st, deadline, Waiting::Write);
            st = g;
            if timed_out && self.shared.tx_cap.min(st.credit) <= st.tx_len {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "write timed out waiting for credit",
                ));
            }
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // Close gracefully: queued data still goes out, and what the peer still sends is
        // consumed and dropped by the reactor so the stream can finish.
        let _ = self.reactor.send(Command::Dropped {
            session: self.session,
            id: self.id,
        });
    }
}

// ----- Incoming -----

/// A stream the peer opened, waiting for this side to accept or reject it.
#[derive(Debug)]
pub struct Incoming {
    /// The service the peer asked for.
    pub service: String,
    /// The service arguments.
    pub args: Vec<u8>,
    pub(crate) id: StreamId,
    pub(crate) session: SessionId,
    pub(crate) reactor: ReactorHandle,
    pub(crate) answered: bool,
}

/// What a pump connects a stream to, inside the reactor thread.
#[derive(Debug, Default)]
pub struct PumpSpec {
    /// Read from this fd into the stream; its EOF half-closes the stream.
    pub from_fd: Option<OwnedFd>,
    /// Write what the stream receives into this fd; the peer's CLOSE closes it.
    pub to_fd: Option<OwnedFd>,
    /// Told when the pump is over.
    pub done: Option<Sender<PumpDone>>,
    /// Compute CRC32C of the bytes moved each way (reported in [`PumpDone`]).
    pub crc: bool,
}

/// How a pump ended.
#[derive(Debug)]
pub struct PumpDone {
    /// The session the pump belonged to.
    pub session: SessionId,
    /// The stream it pumped.
    pub stream: StreamId,
    /// Bytes moved from `from_fd` into the stream.
    pub bytes_sent: u64,
    /// Bytes moved from the stream into `to_fd`.
    pub bytes_received: u64,
    /// CRC32C of the bytes sent (0 unless [`PumpSpec::crc`] was set).
    pub crc_sent: u32,
    /// CRC32C of the bytes received (0 unless [`PumpSpec::crc`] was set).
    pub crc_received: u32,
    /// `Ok` when both directions ended normally.
    pub result: Result<(), SessionError>,
}

impl Incoming {
    /// The stream id.
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// The session the stream belongs to.
    pub fn session_id(&self) -> SessionId {
        self.session
    }

    /// Accepts the stream; `reply` reaches the opener with OPEN_OK.
    pub fn accept(mut self, reply: &[u8]) -> Result<Stream, SessionError> {
        self.answered = true;
        let shared = self.reactor.new_stream_shared();
        self.reactor.send(Command::Accept {
            session: self.session,
            id: self.id,
            reply: reply.to_vec(),
            endpoint: crate::reactor::AcceptAs::Handle(shared.clone()),
        })?;
        Ok(Stream::new(
            shared,
            self.reactor.clone(),
            self.session,
            self.id,
        ))
    }

    /// Accepts the stream and pumps it to and from file descriptors inside the reactor thread.
    pub fn accept_pump(mut self, reply: &[u8], pump: PumpSpec) -> Result<(), SessionError> {
        self.answered = true;
        self.reactor.send(Command::Accept {
            session: self.session,
            id: self.id,
            reply: reply.to_vec(),
            endpoint: crate::reactor::AcceptAs::Pump(pump),
        })
    }

    /// Accepts the stream as a message channel served from the caller's own loop: what the
    /// peer sends arrives on `events` (credit is returned as soon as the reactor delivers it,
    /// so use this for small control traffic); [`StreamRef`] sends and closes.
    pub fn accept_channel(
        mut self,
        reply: &[u8],
        events: Sender<ChannelEvent>,
    ) -> Result<StreamRef, SessionError> {
        self.answered = true;
        self.reactor.send(Command::Accept {
            session: self.session,
            id: self.id,
            reply: reply.to_vec(),
            endpoint: crate::reactor::AcceptAs::Channel(events),
        })?;
        Ok(StreamRef {
            reactor: self.reactor.clone(),
            session: self.session,
            id: self.id,
        })
    }

    /// Forwards the stream to `target`: the reactor opens the same service with the same
    /// arguments there, answers this stream with the target's OPEN_OK or OPEN_ERR, and then
    /// moves bytes between the two streams itself, under both sessions' credit (no thread).
    pub fn forward(mut self, target: &Session) -> Result<(), SessionError> {
        self.answered = true;
        self.reactor.send(Command::Forward {
            session: self.session,
            id: self.id,
            service: std::mem::take(&mut self.service),
            args: std::mem::take(&mut self.args),
            target: target.id,
        })
    }

    /// Refuses the stream with a code and message.
    pub fn reject(mut self, code: ErrorCode, message: &str) -> Result<(), SessionError> {
        self.answered = true;
        self.reactor.send(Command::Reject {
            session: self.session,
            id: self.id,
            code,
            message: message.to_string(),
        })
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if !self.answered {
            let _ = self.reactor.send(Command::Reject {
                session: self.session,
                id: self.id,
                code: ErrorCode::REFUSED,
                message: "dropped without an answer".into(),
            });
        }
    }
}

// ----- Session -----

/// How a session stands, shared with the reactor.
#[derive(Debug, Default)]
pub(crate) struct SessionStatus {
    pub established: bool,
    pub going_away: bool,
    pub ended: Option<Termination>,
}

/// Session status and its condition variable.
#[derive(Debug, Default)]
pub(crate) struct SessionShared {
    pub status: Mutex<SessionStatus>,
    pub cond: Condvar,
    /// Set once when the reactor takes the link.
    pub link: std::sync::OnceLock<LinkInfo>,
}

/// What a session runs on and the limits this side set, for diagnostics (the `info` service).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// The link's kind.
    pub kind: crate::transport::LinkKind,
    /// The peer as the link describes it.
    pub peer: String,
    /// Largest payload this side accepts.
    pub max_frame: u32,
    /// Most concurrent streams this side accepts.
    pub max_streams: u32,
    /// This side's receive window per stream.
    pub stream_window: u32,
    /// Most bytes this side buffers for the peer.
    pub max_buffered: usize,
    /// Whether this side asked for payload CRC trailers.
    pub payload_crc: bool,
}

impl LinkInfo {
    pub(crate) fn new(link: &crate::transport::Link, config: &crate::mux::Config) -> LinkInfo {
        LinkInfo {
            kind: link.kind(),
            peer: link.peer().to_string(),
            max_frame: config.max_frame,
            max_streams: config.max_streams,
            stream_window: config.stream_window,
            max_buffered: config.max_buffered,
            payload_crc: config.payload_crc,
        }
    }
}

impl SessionShared {
    pub fn lock(&self) -> MutexGuard<'_, SessionStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A handle to one session (one link), usable from any thread.
#[derive(Debug, Clone)]
pub struct Session {
    pub(crate) id: SessionId,
    pub(crate) reactor: ReactorHandle,
    pub(crate) incoming: Receiver<Incoming>,
    pub(crate) shared: Arc<SessionShared>,
}

impl Session {
    /// The session's id within its reactor.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// Opens a stream to `service` and waits for the peer's answer.
    pub fn open(&self, service: &str, args: &[u8]) -> Result<Stream, SessionError> {
        self.open_with_reply(service, args).map(|(s, _)| s)
    }

    /// Opens a stream and returns the peer's reply bytes with it.
    pub fn open_with_reply(
        &self,
        service: &str,
        args: &[u8],
    ) -> Result<(Stream, Vec<u8>), SessionError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let shared = self.reactor.new_stream_shared();
        self.reactor.send(Command::Open {
            session: self.id,
            service: service.to_string(),
            args: args.to_vec(),
            shared: shared.clone(),
            reply: tx,
        })?;
        let (id, reply) = rx.recv().map_err(|_| SessionError::ReactorGone)??;
        Ok((
            Stream::new(shared, self.reactor.clone(), self.id, id),
            reply,
        ))
    }

    /// Waits for the next stream the peer opens. Fails once the session has ended.
    pub fn accept(&self) -> Result<Incoming, SessionError> {
        match self.incoming.recv() {
            Ok(incoming) => Ok(incoming),
            Err(_) => Err(self.ended_error()),
        }
    }

    /// Like [`Session::accept`], giving up after `timeout` with `Ok(None)`.
    pub fn accept_timeout(&self, timeout: Duration) -> Result<Option<Incoming>, SessionError> {
        match self.incoming.recv_timeout(timeout) {
            Ok(incoming) => Ok(Some(incoming)),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Ok(None),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(self.ended_error()),
        }
    }

    /// The channel incoming streams arrive on, for `select!` over several sessions.
    pub fn incoming(&self) -> &Receiver<Incoming> {
        &self.incoming
    }

    /// Sends a PING and waits for its PONG; returns the round-trip time.
    pub fn ping(&self) -> Result<Duration, SessionError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.reactor.send(Command::Ping {
            session: self.id,
            reply: tx,
        })?;
        rx.recv().map_err(|_| SessionError::ReactorGone)?
    }

    /// The session's counters and buffered bytes.
    pub fn stats(&self) -> Result<SessionStats, SessionError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.reactor.send(Command::Stats {
            session: self.id,
            reply: tx,
        })?;
        rx.recv().map_err(|_| SessionError::ReactorGone)?
    }

    /// Waits until the HELLO exchange completed (or the session ended, or `timeout` passed).
    pub fn wait_established(&self, timeout: Duration) -> Result<(), SessionError> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if let Some(t) = &st.ended {
                return Err(SessionError::Ended(t.clone()));
            }
            if st.established {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(SessionError::TimedOut);
            }
            st = self
                .shared
                .cond
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// The link the session runs on and this side's limits (`None` until the reactor took it).
    pub fn link_info(&self) -> Option<LinkInfo> {
        self.shared.link.get().cloned()
    }

    /// Whether the session has ended, and why.
    pub fn termination(&self) -> Option<Termination> {
        self.shared.lock().ended.clone()
    }

    /// Starts a graceful shutdown (GOAWAY) without waiting.
    pub fn shutdown(&self) -> Result<(), SessionError> {
        self.reactor.send(Command::GoAway {
            session: self.id,
            code: ErrorCode::NORMAL,
        })
    }

    /// Shuts down gracefully and waits until both sides have drained every stream.
    pub fn close(&self) -> Result<Termination, SessionError> {
        if let Some(t) = self.termination() {
            return Ok(t);
        }
        self.shutdown()?;
        Ok(self.wait())
    }

    /// Waits until the session ends.
    pub fn wait(&self) -> Termination {
        let mut st = self.shared.lock();
        loop {
            if let Some(t) = &st.ended {
                return t.clone();
            }
            st = self.shared.cond.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn ended_error(&self) -> SessionError {
        match self.termination() {
            Some(t) => SessionError::Ended(t),
            None => SessionError::ReactorGone,
        }
    }
}

/// A snapshot of a session's counters and memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionStats {
    /// The mux counters.
    pub counters: Counters,
    /// Bytes held by the mux.
    pub buffered: crate::mux::Buffered,
    /// Bytes held in stream handles' queues (received, not yet read; written, not yet taken).
    pub handle_rx: usize,
    /// Bytes queued by writers and not yet taken by the mux.
    pub handle_tx: usize,
    /// Streams open.
    pub streams: usize,
}

/// Something that happened on a stream accepted with [`Incoming::accept_channel`].
#[derive(Debug)]
pub struct ChannelEvent {
    /// The session of the stream.
    pub session: SessionId,
    /// The stream.
    pub stream: StreamId,
    /// What happened.
    pub kind: ChannelEventKind,
}

/// What happened on a channel stream.
#[derive(Debug)]
pub enum ChannelEventKind {
    /// Bytes from the peer, in order.
    Data(Vec<u8>),
    /// The peer half-closed: no more data will come.
    PeerClosed,
    /// The stream is over: `Ok` when both sides closed normally.
    Ended(Result<(), SessionError>),
}

/// A clonable reference to a channel stream, for sending from any thread without blocking.
#[derive(Debug, Clone)]
pub struct StreamRef {
    reactor: ReactorHandle,
    session: SessionId,
    id: StreamId,
}

impl StreamRef {
    /// The stream id.
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// The session id.
    pub fn session_id(&self) -> SessionId {
        self.session
    }

    /// Queues `data` for the peer. Channel streams are for small messages: a stream whose queue
    /// passes 1 MiB because the peer grants no credit is reset with OVERLOAD.
    pub fn send(&self, data: Vec<u8>) -> Result<(), SessionError> {
        self.reactor.send(Command::Send {
            session: self.session,
            id: self.id,
            data,
        })
    }

    /// Half-closes after the queued data.
    pub fn close(&self) -> Result<(), SessionError> {
        self.reactor.send(Command::CloseWrite {
            session: self.session,
            id: self.id,
        })
    }

    /// Aborts the stream with `code`.
    pub fn reset(&self, code: ErrorCode) -> Result<(), SessionError> {
        self.reactor.send(Command::Reset {
            session: self.session,
            id: self.id,
            code,
        })
    }
}
