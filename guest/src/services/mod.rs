//! The agent's services (`info`, `exec`, `exec.io`, `exec.attach`, `exec.list`, `copy`,
//! `copy.data`, `forward`, `shutdown`; messages in [`vmux::service`]) served by ONE thread for
//! every session.
//!
//! [`run`] is a `crossbeam_channel` select loop over: new sessions (from the reactor's listeners
//! and ports), the incoming streams of every live session (one receiver each, selected
//! dynamically), events of control streams accepted as channels (`exec`, `copy`, `shutdown`),
//! the ends of pumps (stdio, file data and forwards move inside the reactor thread, never here),
//! and child exits. No thread is started per stream or per process, except for the outputs of
//! detachable execs, which must be read while no stream exists (see `exec` and `ring`).
//!
//! Children are collected with `waitpid(-1)` ([`crate::reaper::reap`]) on this thread only,
//! when a child event arrives (the signalfd watcher in [`crate::serve`]) and every
//! [`Options::reap_interval`] while a process runs, so a missed SIGCHLD costs latency, never a
//! status. Spawning happens on this thread too, so std's own `waitpid` after a failed `exec`
//! never races with the reaper.

mod copy;
mod exec;
mod ring;
mod sys;

use crate::reaper::{self, ChildStatus};
use crossbeam_channel::{Receiver, Select, Sender};
use std::collections::HashMap;
use std::time::Duration;
use vmux::mux::StreamId;
use vmux::reactor::SessionId;
use vmux::service::{self, ForwardTarget, Info, MessageError, SessionFacts, ShutdownRequest};
use vmux::session::{
    ChannelEvent, ChannelEventKind, Incoming, PumpDone, PumpSpec, Session, StreamRef,
};
use vmux::wire::ErrorCode;

/// A stream within the agent: its session and id.
type Key = (SessionId, StreamId);

/// How the service loop behaves beyond the protocol.
pub struct Options {
    /// How often to look for exited children while a process runs, in case a SIGCHLD was
    /// not seen (the signalfd only sees it when every thread blocks it).
    pub reap_interval: Duration,
    /// Called with `reboot` once a `shutdown` request was confirmed (the host's CLOSE arrived).
    /// As PID 1 it powers off; otherwise it ends the process. Tests record the call.
    pub on_shutdown: Box<dyn FnMut(bool) + Send>,
    /// Kill every process the agent started before calling `on_shutdown`.
    pub kill_on_shutdown: bool,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("reap_interval", &self.reap_interval)
            .field("kill_on_shutdown", &self.kill_on_shutdown)
            .finish_non_exhaustive()
    }
}

/// Who serves a stream accepted as a channel.
#[derive(Debug, Clone, Copy)]
enum ChannelOwner {
    /// The control stream of an exec.
    Exec(u64),
    /// The control stream of a copy.
    Copy(u64),
    /// A shutdown request waiting for the host's CLOSE.
    Shutdown { reboot: bool },
}

/// Who is told when a pump ends.
#[derive(Debug, Clone, Copy)]
enum PumpOwner {
    /// Stdout or stderr of an exec: its Exit waits for this.
    ExecOutput(u64),
    /// Stdin of an exec.
    ExecInput,
    /// The data of a copy.
    CopyData(u64),
    /// A forwarded connection.
    Forward,
}

/// What every service needs from the loop: where events go and who owns which stream.
struct Ctx {
    channel_tx: Sender<ChannelEvent>,
    pump_tx: Sender<PumpDone>,
    /// Where the senders of detachable execs' rings report their end.
    ring_tx: Sender<ring::SenderDone>,
    channels: HashMap<Key, ChannelOwner>,
    pumps: HashMap<Key, PumpOwner>,
    next_id: u64,
}

impl Ctx {
    /// A fresh id for an exec or a copy (unique for the agent's lifetime).
    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// A pump spec that reports its end to the loop.
    fn pump(&self) -> PumpSpec {
        PumpSpec {
            done: Some(self.pump_tx.clone()),
            ..PumpSpec::default()
        }
    }
}

/// Refuses `incoming`, logging if even that fails (the session is gone).
fn reject(incoming: Incoming, code: ErrorCode, message: &str) {
    log::debug!("refusing {}: {message}", incoming.service);
    if let Err(e) = incoming.reject(code, message) {
        log::debug!("could not refuse: {e}");
    }
}

/// Refuses `incoming` whose arguments did not parse.
fn reject_args(incoming: Incoming, e: &MessageError) {
    let message = format!("{}: bad arguments: {e}", incoming.service);
    reject(incoming, ErrorCode::PROTOCOL, &message);
}

/// One input to the loop.
enum Input {
    Session(Session),
    SessionsClosed,
    Incoming(usize, Incoming),
    SessionEnded(usize),
    Channel(ChannelEvent),
    Pump(PumpDone),
    Ring(ring::SenderDone),
    Children,
}

/// The service loop's state.
struct ServiceLoop {
    ctx: Ctx,
    channel_rx: Receiver<ChannelEvent>,
    pump_rx: Receiver<PumpDone>,
    ring_rx: Receiver<ring::SenderDone>,
    sessions: Vec<Session>,
    sessions_open: bool,
    execs: exec::Execs,
    copies: copy::Copies,
    /// Confirmed-by-CLOSE shutdown requests' streams, closed if `on_shutdown` returns.
    shutdowns: HashMap<Key, StreamRef>,
    options: Options,
}

/// Serves every session that arrives on `sessions` until that channel closes and no session
/// is left. `child_events` says "a child may have exited" (its sender may stay silent).
pub fn run(sessions: Receiver<Session>, child_events: Receiver<()>, options: Options) {
    let (channel_tx, channel_rx) = crossbeam_channel::unbounded();
    let (pump_tx, pump_rx) = crossbeam_channel::unbounded();
    let (ring_tx, ring_rx) = crossbeam_channel::unbounded();
    let mut lp = ServiceLoop {
        ctx: Ctx {
            channel_tx,
            pump_tx,
            ring_tx,
            channels: HashMap::new(),
            pumps: HashMap::new(),
            next_id: 0,
        },
        channel_rx,
        pump_rx,
        ring_rx,
        sessions: Vec::new(),
        sessions_open: true,
        execs: exec::Execs::default(),
        copies: copy::Copies::default(),
        shutdowns: HashMap::new(),
        options,
    };
    let mut children_open = true;
    loop {
        if !lp.sessions_open && lp.sessions.is_empty() {
            return;
        }
        let input = lp.next_input(&sessions, &child_events, &mut children_open);
        lp.handle(input);
    }
}

impl ServiceLoop {
    /// Waits for the next input.
    fn next_input(
        &self,
        sessions: &Receiver<Session>,
        child_events: &Receiver<()>,
        children_open: &mut bool,
    ) -> Input {
        // Control-stream events first: on a serial link a restarted host reuses stream ids in
        // the same session, and the reactor queues the old streams' ends before it delivers
        // anything of the new host, so handling those ends first keeps the keys unambiguous.
        if let Ok(ev) = self.channel_rx.try_recv() {
            return Input::Channel(ev);
        }
        let mut sel = Select::new();
        let i_channel = sel.recv(&self.channel_rx);
        let i_pump = sel.recv(&self.pump_rx);
        let i_ring = sel.recv(&self.ring_rx);
        let i_sessions = self.sessions_open.then(|| sel.recv(sessions));
        let i_children = children_open.then(|| sel.recv(child_events));
        let session_indices: Vec<usize> = self
            .sessions
            .iter()
            .map(|s| sel.recv(s.incoming()))
            .collect();
        let op = if self.execs.running() {
            match sel.select_timeout(self.options.reap_interval) {
                Ok(op) => op,
                Err(_) => return Input::Children,
            }
        } else {
            sel.select()
        };
        let index = op.index();
        if index == i_channel {
            return match op.recv(&self.channel_rx) {
                Ok(ev) => Input::Channel(ev),
                // This loop holds a sender: cannot happen.
                Err(_) => Input::Children,
            };
        }
        if index == i_ring {
            return match op.recv(&self.ring_rx) {
                Ok(done) => Input::Ring(done),
                Err(_) => Input::Children,
            };
        }
        if index == i_pump {
            return match op.recv(&self.pump_rx) {
                Ok(done) => Input::Pump(done),
                Err(_) => Input::Children,
            };
        }
        if Some(index) == i_sessions {
            return match op.recv(sessions) {
                Ok(s) => Input::Session(s),
                Err(_) => Input::SessionsClosed,
            };
        }
        if Some(index) == i_children {
            return match op.recv(child_events) {
                Ok(()) => Input::Children,
                Err(_) => {
                    *children_open = false;
                    Input::Children
                }
            };
        }
        // The rest are the sessions' incoming receivers, in order.
        let n = session_indices
            .iter()
            .position(|&i| i == index)
            .unwrap_or(usize::MAX);
        match self.sessions.get(n) {
            Some(s) => match op.recv(s.incoming()) {
                Ok(incoming) => Input::Incoming(n, incoming),
                Err(_) => Input::SessionEnded(n),
            },
            None => Input::Children,
        }
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Session(s) => {
                log::debug!("session {} started", s.id());
                self.sessions.push(s);
            }
            Input::SessionsClosed => self.sessions_open = false,
            Input::SessionEnded(n) => {
                let s = self.sessions.swap_remove(n);
                match s.termination() {
                    Some(t) => log::debug!("session {} over: {t}", s.id()),
                    None => log::debug!("session {} over", s.id()),
                }
                // Its control streams report Ended(Err) on their own: that kills and cleans.
            }
            Input::Incoming(n, incoming) => {
                let session = self.sessions[n].clone();
                self.dispatch(&session, incoming);
            }
            Input::Channel(ev) => self.channel_event(ev),
            Input::Pump(done) => self.pump_done(done),
            Input::Ring(done) => self.execs.ring_output_done(done),
            Input::Children => self.reap(),
        }
    }

    /// Serves one stream the host opened.
    fn dispatch(&mut self, session: &Session, incoming: Incoming) {
        match incoming.service.as_str() {
            service::INFO => serve_info(session, incoming),
            service::EXEC => self.execs.open(&mut self.ctx, incoming),
            service::EXEC_IO => self.execs.open_io(&mut self.ctx, incoming),
            service::EXEC_ATTACH => self.execs.attach(&mut self.ctx, incoming),
            service::EXEC_LIST => {
                if let Err(e) = incoming.accept(&self.execs.list().encode()) {
                    log::debug!("exec.list: {e}");
                }
            }
            service::COPY => self.copies.open(&mut self.ctx, incoming),
            service::COPY_DATA => self.copies.open_data(&mut self.ctx, incoming),
            service::FORWARD => serve_forward(&mut self.ctx, incoming),
            service::SHUTDOWN => self.open_shutdown(incoming),
            other => {
                let message = format!("no service named {other}");
                reject(incoming, ErrorCode::UNKNOWN_SERVICE, &message);
            }
        }
    }

    fn channel_event(&mut self, ev: ChannelEvent) {
        let key = (ev.session, ev.stream);
        let Some(owner) = self.ctx.channels.get(&key).copied() else {
            return;
        };
        if matches!(ev.kind, ChannelEventKind::Ended(_)) {
            self.ctx.channels.remove(&key);
        }
        match owner {
            ChannelOwner::Exec(id) => self.execs.control_event(id, key, ev.kind),
            ChannelOwner::Copy(id) => self.copies.control_event(id, ev.kind),
            ChannelOwner::Shutdown { reboot } => match ev.kind {
                ChannelEventKind::PeerClosed | ChannelEventKind::Ended(Ok(())) => {
                    self.ctx.channels.remove(&key);
                    log::info!(
                        "shutdown requested ({})",
                        if reboot { "reboot" } else { "power off" }
                    );
                    if self.options.kill_on_shutdown {
                        self.execs.kill_all();
                    }
                    (self.options.on_shutdown)(reboot);
                    if let Some(stream) = self.shutdowns.remove(&key) {
                        let _ = stream.close();
                    }
                }
                ChannelEventKind::Data(_) => {}
                ChannelEventKind::Ended(Err(e)) => {
                    self.shutdowns.remove(&key);
                    log::debug!("shutdown request abandoned: {e}");
                }
            },
        }
    }

    fn pump_done(&mut self, done: PumpDone) {
        let key = (done.session, done.stream);
        let Some(owner) = self.ctx.pumps.remove(&key) else {
            return;
        };
        if let Err(e) = &done.result {
            log::debug!("pump {owner:?} ended: {e}");
        }
        match owner {
            PumpOwner::ExecOutput(id) => self.execs.output_done(id),
            PumpOwner::ExecInput | PumpOwner::Forward => {}
            PumpOwner::CopyData(id) => self.copies.data_done(id, done),
        }
    }

    fn reap(&mut self) {
        for r in reaper::reap() {
            if !self.execs.reaped(r.pid, r.status) {
                log::debug!("reaped orphan {}: {:?}", r.pid, r.status);
            }
        }
    }

    /// `shutdown`: accept as a channel and act once the host's CLOSE proves it got OPEN_OK.
    fn open_shutdown(&mut self, incoming: Incoming) {
        let req = match ShutdownRequest::decode(&incoming.args) {
            Ok(r) => r,
            Err(e) => return reject_args(incoming, &e),
        };
        let key = (incoming.session_id(), incoming.id());
        match incoming.accept_channel(&[], self.ctx.channel_tx.clone()) {
            Ok(stream) => {
                self.shutdowns.insert(key, stream);
                self.ctx
                    .channels
                    .insert(key, ChannelOwner::Shutdown { reboot: req.reboot });
            }
            Err(e) => log::debug!("shutdown: {e}"),
        }
    }
}

/// `info`: the facts as the OPEN_OK reply, then close.
fn serve_info(session: &Session, incoming: Incoming) {
    let sys = crate::sysinfo::SysInfo::collect();
    let link = session.link_info();
    let info = Info {
        agent_version: Some(sys.agent_version.to_string()),
        protocol_version: Some(u64::from(vmux::wire::VERSION)),
        kernel_release: sys.kernel_release,
        uptime_ms: sys.uptime.map(|d| d.as_millis() as u64),
        boot_id: sys.boot_id,
        pid1: Some(sys.pid1),
        link_kind: link.as_ref().map(|l| l.kind.name().to_string()),
        link_peer: link.as_ref().map(|l| l.peer.clone()),
        max_frame: link.as_ref().map(|l| u64::from(l.max_frame)),
        max_streams: link.as_ref().map(|l| u64::from(l.max_streams)),
        stream_window: link.as_ref().map(|l| u64::from(l.stream_window)),
        max_buffered: link.as_ref().map(|l| l.max_buffered as u64),
        payload_crc: link.as_ref().map(|l| l.payload_crc),
        cpu_time_us: sys.cpu_time.map(|d| d.as_micros() as u64),
        rss_bytes: sys.rss_bytes,
        // What this session's mux has seen and holds, as of this OPEN (every frame before it
        // was handled first).
        session: session
            .stats()
            .map(|stats| SessionFacts::from_stats(&stats))
            .unwrap_or_default(),
    };
    // Dropping the stream closes it gracefully.
    if let Err(e) = incoming.accept(&info.encode()) {
        log::debug!("info: {e}");
    }
}

/// `forward`: connect to a loopback TCP port or a unix socket and pump both ways.
fn serve_forward(ctx: &mut Ctx, incoming: Incoming) {
    let target = match ForwardTarget::decode(&incoming.args) {
        Ok(t) => t,
        Err(e @ MessageError::Invalid(_)) => {
            return reject(incoming, ErrorCode::REFUSED, &e.to_string());
        }
        Err(e) => return reject_args(incoming, &e),
    };
    let connected: std::io::Result<std::os::fd::OwnedFd> = match &target {
        // Loopback connects complete at once unless the backlog is full: bound the wait.
        ForwardTarget::Tcp(addr) => {
            std::net::TcpStream::connect_timeout(addr, FORWARD_CONNECT_TIMEOUT).map(Into::into)
        }
        ForwardTarget::Unix(path) => connect_unix_nonblocking(path),
    };
    let socket = match connected {
        Ok(s) => s,
        Err(e) => {
            let message = format!("forward {target}: {e}");
            return reject(incoming, ErrorCode::REFUSED, &message);
        }
    };
    let reader = match socket.try_clone() {
        Ok(r) => r,
        Err(e) => {
            let message = format!("forward {target}: {e}");
            return reject(incoming, ErrorCode::REFUSED, &message);
        }
    };
    let key = (incoming.session_id(), incoming.id());
    let spec = PumpSpec {
        from_fd: Some(reader),
        to_fd: Some(socket),
        ..ctx.pump()
    };
    match incoming.accept_pump(&[], spec) {
        Ok(()) => {
            ctx.pumps.insert(key, PumpOwner::Forward);
        }
        Err(e) => log::debug!("forward: {e}"),
    }
}

/// The longest a `forward` to a loopback TCP port may hold up the service loop.
const FORWARD_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Connects a unix stream socket without blocking: a full backlog is `EAGAIN`, not a stall
/// of the one service thread.
fn connect_unix_nonblocking(path: &std::path::Path) -> std::io::Result<std::os::fd::OwnedFd> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr)?;
    Ok(fd)
}

/// How a reaped child's status is reported.
fn exit_status(status: ChildStatus) -> service::ExitStatus {
    match status {
        ChildStatus::Exited(code) => service::ExitStatus::Code(code),
        ChildStatus::Signaled { signal, .. } => service::ExitStatus::Signal(signal),
    }
}
