//! `exec` and `exec.io` in the agent: spawn, hand stdio to pumps, signal, resize, report Exit.
//!
//! A process is spawned in its own session (`setsid`), so its pid is its process group and a
//! signal to `-pid` reaches every process of the job. Without a pty its stdout and stderr are
//! pipes created before it starts, so nothing it writes is lost while the host opens `exec.io`
//! (a full pipe blocks the writer: that is the backpressure). Its stdin is a pipe when the host
//! asked for it, else `/dev/null`. With a pty the slave is fds 0-2 and the controlling
//! terminal; the agent keeps the master (for resizes, and because closing it would discard
//! what was not yet read) and pumps duplicates of it.
//!
//! Exit is sent on the control stream when the child was reaped AND every output pump ended,
//! so every output byte is already in the session before the host learns the status.
//!
//! A *detachable* exec (the request's `detach`) is the one exception to "no thread per
//! process": its output must be read while no stream exists, so each output fd gets a reader
//! thread that fills a bounded [`Ring`], and each attached output a sender thread (see
//! [`super::ring`]). Its control stream ending, cleanly or not, only detaches it; `exec.attach`
//! binds it to a new control stream and replays what the host has not acknowledged.

use super::ring::{self, Ring, SenderJob};
use super::{reject, reject_args, sys, ChannelOwner, Ctx, Key, PumpOwner};
use crate::reaper::ChildStatus;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use vmux::reactor::SessionId;
use vmux::service::{
    AttachReply, ControlDecoder, ControlMsg, ExecAttach, ExecEntry, ExecIo, ExecList, ExecReply,
    ExecRequest, ExecState,
};
use vmux::session::{ChannelEventKind, Incoming, PumpSpec, StreamRef};
use vmux::wire::ErrorCode;

/// A spawned process's fds, before the host claims them.
struct Spawned {
    pid: Pid,
    pty: Option<OwnedFd>,
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
}

/// One process started by `exec`.
struct Exec {
    session: SessionId,
    /// The control stream while it is open.
    control: Option<StreamRef>,
    decoder: ControlDecoder,
    pid: Pid,
    /// The pty master, kept for resizes and so nothing the child wrote is discarded.
    pty: Option<OwnedFd>,
    /// Whether the host asked to send stdin.
    stdin_requested: bool,
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    /// With a pty: which of its directions were handed out (0 = input, 1 = output).
    pty_taken: [bool; 2],
    /// Output pumps (stdout, stderr) not ended yet, counting those not opened yet.
    outputs_pending: u8,
    status: Option<ChildStatus>,
    /// The command line, shortened, for `exec.list`.
    argv: Vec<String>,
    /// Present for a detachable exec.
    detached: Option<Detached>,
}

/// The state only a detachable exec has.
struct Detached {
    /// Stdout's and stderr's rings (no stderr ring with a pty: it is part of fd 1).
    rings: [Option<Arc<Ring>>; 2],
    /// Per output of the current attachment: its generation, once its `exec.io` was opened.
    opened: [Option<u64>; 2],
    /// Per output of the current attachment: every byte up to EOF is in the session.
    delivered: [bool; 2],
    /// Exit went out on the current control stream.
    exit_sent: bool,
}

impl Detached {
    fn outputs_delivered(&self) -> bool {
        (0..2).all(|i| self.rings[i].is_none() || self.delivered[i])
    }

    fn detach(&mut self) {
        for ring in self.rings.iter().flatten() {
            ring.detach();
        }
        self.opened = [None; 2];
        self.delivered = [false; 2];
        self.exit_sent = false;
    }

    fn close(&self) {
        for ring in self.rings.iter().flatten() {
            ring.close();
        }
    }
}

impl Exec {
    /// Kills the whole process group, unless it was already reaped.
    fn kill(&self) {
        if self.status.is_none() {
            if let Err(e) = killpg(self.pid, Signal::SIGKILL) {
                log::debug!("kill -{}: {e}", self.pid);
            }
        }
    }
}

/// Every process the agent started and has not finished reporting.
#[derive(Default)]
pub(super) struct Execs {
    by_id: HashMap<u64, Exec>,
    /// Detachable execs that ended with nobody attached, oldest first. Bounded: past
    /// [`FINISHED_DETACHED_KEPT`] the oldest is forgotten with its output.
    finished_detached: VecDeque<u64>,
    /// Recently finished processes (session, id) whose stdin may still be asked for: a host
    /// may attach stdin after a quick program already ended. Bounded.
    finished: std::collections::VecDeque<(SessionId, u64)>,
}

/// How many finished processes are remembered for late stdin requests.
const FINISHED_REMEMBERED: usize = 256;
/// How many detachable execs the agent holds at once (running or finished, not yet delivered).
pub const MAX_DETACHABLE: usize = 64;
/// How many finished detachable execs nobody attached to are kept for a later attach.
pub const FINISHED_DETACHED_KEPT: usize = 16;
/// How many argv entries, and bytes of each, `exec.list` shows.
const LISTED_ARGS: usize = 8;
const LISTED_ARG_BYTES: usize = 64;

impl Execs {
    /// Whether some process has not been reaped yet.
    pub fn running(&self) -> bool {
        self.by_id.values().any(|e| e.status.is_none())
    }

    /// `exec`: validate, spawn, accept the control stream with `{exec_id, pid}`.
    pub fn open(&mut self, ctx: &mut Ctx, incoming: Incoming) {
        let req = match ExecRequest::decode(&incoming.args) {
            Ok(r) => r,
            Err(e) => return reject_args(incoming, &e),
        };
        let held = self.by_id.values().filter(|e| e.detached.is_some()).count();
        if req.detach.is_some() && held >= MAX_DETACHABLE {
            let message = format!(
                "exec {}: the agent already holds {held} detachable execs (the most it keeps)",
                req.argv[0]
            );
            return reject(incoming, ErrorCode::REFUSED, &message);
        }
        let mut spawned = match spawn(&req) {
            Ok(s) => s,
            Err(message) => return reject(incoming, ErrorCode::REFUSED, &message),
        };
        let detached = match req.detach {
            Some(size) => match start_rings(&mut spawned, ring::capacity(size)) {
                Ok(d) => Some(d),
                Err(message) => {
                    let _ = killpg(spawned.pid, Signal::SIGKILL);
                    return reject(incoming, ErrorCode::REFUSED, &message);
                }
            },
            None => None,
        };
        let id = ctx.next_id();
        let reply = ExecReply {
            exec_id: id,
            pid: spawned.pid.as_raw() as u32,
        };
        let key = (incoming.session_id(), incoming.id());
        let session = incoming.session_id();
        let control = match incoming.accept_channel(&reply.encode(), ctx.channel_tx.clone()) {
            Ok(c) => {
                ctx.channels.insert(key, ChannelOwner::Exec(id));
                Some(c)
            }
            Err(e) => {
                log::debug!("exec: {e}");
                None
            }
        };
        log::debug!("exec {id}: pid {} runs {:?}", spawned.pid, req.argv);
        let exec = Exec {
            session,
            control,
            decoder: ControlDecoder::new(),
            pid: spawned.pid,
            outputs_pending: if spawned.pty.is_some() { 1 } else { 2 },
            pty: spawned.pty,
            stdin_requested: req.stdin,
            stdin: spawned.stdin,
            stdout: spawned.stdout,
            stderr: spawned.stderr,
            pty_taken: [false; 2],
            status: None,
            argv: listed_argv(&req.argv),
            detached,
        };
        if exec.control.is_none() && exec.detached.is_none() {
            exec.kill();
        }
        self.by_id.insert(id, exec);
    }

    /// `exec.io`: hand one of the process's fds to a pump.
    pub fn open_io(&mut self, ctx: &mut Ctx, incoming: Incoming) {
        let io = match ExecIo::decode(&incoming.args) {
            Ok(io) => io,
            Err(e) => return reject_args(incoming, &e),
        };
        let late_stdin = io.fd == 0 && self.finished.contains(&(incoming.session_id(), io.exec_id));
        let exec = match self.by_id.get_mut(&io.exec_id) {
            Some(e) if e.session == incoming.session_id() && e.control.is_some() => e,
            _ if late_stdin => {
                // The program ended before its stdin was attached: accept and discard, as a
                // pipe to an exited reader would.
                if let Err(e) = incoming.accept_pump(b"", vmux::session::PumpSpec::default()) {
                    log::debug!("exec.io {}: {e}", io.exec_id);
                }
                return;
            }
            _ => {
                let message = format!("exec.io: no running exec {} on this session", io.exec_id);
                return reject(incoming, ErrorCode::REFUSED, &message);
            }
        };
        if io.fd != 0 && exec.detached.is_some() {
            return open_ring_output(ctx, io.exec_id, exec, io.fd, incoming);
        }
        let fd = match take_fd(exec, io.fd) {
            Ok(fd) => fd,
            Err(message) => {
                let message = format!("exec.io {} fd {}: {message}", io.exec_id, io.fd);
                return reject(incoming, ErrorCode::REFUSED, &message);
            }
        };
        let key = (incoming.session_id(), incoming.id());
        let (spec, owner) = if io.fd == 0 {
            let spec = PumpSpec {
                to_fd: Some(fd),
                ..ctx.pump()
            };
            (spec, PumpOwner::ExecInput)
        } else {
            let spec = PumpSpec {
                from_fd: Some(fd),
                ..ctx.pump()
            };
            (spec, PumpOwner::ExecOutput(io.exec_id))
        };
        match incoming.accept_pump(&[], spec) {
            Ok(()) => {
                ctx.pumps.insert(key, owner);
            }
            Err(e) => {
                log::debug!("exec.io: {e}");
                if io.fd != 0 {
                    self.output_done(io.exec_id);
                }
            }
        }
    }

    /// Something happened on the control stream `key` of exec `id`.
    pub fn control_event(&mut self, id: u64, key: Key, kind: ChannelEventKind) {
        let Some(exec) = self.by_id.get_mut(&id) else {
            return;
        };
        let current = exec
            .control
            .as_ref()
            .is_some_and(|c| (c.session_id(), c.id()) == key);
        if !current {
            // A control stream this exec was taken away from (attached elsewhere since).
            return;
        }
        match kind {
            ChannelEventKind::Data(bytes) => {
                let mut result = exec.decoder.push(&bytes);
                while result.is_ok() {
                    match exec.decoder.next_msg() {
                        Ok(Some(msg)) => control_msg(id, exec, msg),
                        Ok(None) => break,
                        Err(e) => result = Err(e),
                    }
                }
                if let Err(e) = result {
                    log::warn!("exec {id}: bad control message: {e}");
                    if let Some(control) = exec.control.take() {
                        let _ = control.reset(ErrorCode::PROTOCOL);
                    }
                    match &mut exec.detached {
                        Some(d) => d.detach(),
                        None => exec.kill(),
                    }
                }
            }
            ChannelEventKind::PeerClosed => {
                if let Some(d) = exec.detached.as_mut().filter(|d| !d.exit_sent) {
                    // The host closed before Exit: it detaches, and the process goes on.
                    log::debug!("exec {id}: the host detached");
                    if let Some(control) = exec.control.take() {
                        let _ = control.close();
                    }
                    d.detach();
                }
            }
            ChannelEventKind::Ended(result) => {
                exec.control = None;
                exec.decoder = ControlDecoder::new();
                match (&mut exec.detached, result) {
                    (Some(d), Ok(())) if d.exit_sent => {
                        // The host wrote out and acknowledged everything, then closed.
                        log::debug!("exec {id}: exit delivered; forgetting it");
                        d.close();
                        self.by_id.remove(&id);
                        return;
                    }
                    (Some(d), result) => {
                        log::debug!("exec {id}: detached ({result:?}); the process goes on");
                        d.detach();
                    }
                    (None, Ok(())) => {}
                    (None, Err(e)) => {
                        log::debug!(
                            "exec {id}: control stream ended: {e}; killing the process group"
                        );
                        exec.kill();
                    }
                }
            }
        }
        self.maybe_finish(id);
    }

    /// `exec.attach`: move a detachable exec's control stream to this one and replay its
    /// unacknowledged output from the offsets asked for.
    pub fn attach(&mut self, ctx: &mut Ctx, incoming: Incoming) {
        let req = match ExecAttach::decode(&incoming.args) {
            Ok(r) => r,
            Err(e) => return reject_args(incoming, &e),
        };
        let id = req.exec_id;
        let Some(exec) = self.by_id.get_mut(&id) else {
            let message = format!("exec.attach: no exec {id} (unknown, or its exit was delivered)");
            return reject(incoming, ErrorCode::REFUSED, &message);
        };
        let Some(detached) = &mut exec.detached else {
            let message = format!("exec.attach: exec {id} is not detachable");
            return reject(incoming, ErrorCode::REFUSED, &message);
        };
        let mut starts = [0u64; 2];
        for (i, name) in ["stdout", "stderr"].into_iter().enumerate() {
            if let Some(ring) = &detached.rings[i] {
                match ring.check(req.offsets[i], name) {
                    Ok(start) => starts[i] = start,
                    Err(why) => {
                        let message = format!("exec.attach {id}: {why}");
                        return reject(incoming, ErrorCode::REFUSED, &message);
                    }
                }
            }
        }
        // The newest attach wins: the previous host (if any) loses its control stream.
        if let Some(old) = exec.control.take() {
            log::debug!("exec {id}: attached elsewhere; resetting the old control stream");
            let _ = old.reset(ErrorCode::CANCEL);
            ctx.channels.remove(&(old.session_id(), old.id()));
        }
        detached.detach();
        let reply = AttachReply {
            pid: exec.pid.as_raw() as u32,
            pty: exec.pty.is_some(),
            offsets: starts,
        };
        let key = (incoming.session_id(), incoming.id());
        let session = incoming.session_id();
        match incoming.accept_channel(&reply.encode(), ctx.channel_tx.clone()) {
            Ok(control) => {
                ctx.channels.insert(key, ChannelOwner::Exec(id));
                for (i, ring) in detached.rings.iter().enumerate() {
                    if let Some(ring) = ring {
                        // Generations are bound when `exec.io` opens; replay starts here.
                        ring.rebind(starts[i]);
                    }
                }
                exec.session = session;
                exec.control = Some(control);
                exec.decoder = ControlDecoder::new();
                self.finished_detached.retain(|&f| f != id);
                log::debug!("exec {id}: attached, replaying from {starts:?}");
            }
            Err(e) => log::debug!("exec.attach {id}: {e}"),
        }
        self.maybe_finish(id);
    }

    /// `exec.list`: every exec the agent holds, oldest first.
    pub fn list(&self) -> ExecList {
        let mut ids: Vec<u64> = self.by_id.keys().copied().collect();
        ids.sort_unstable();
        ExecList::bounded(ids.into_iter().filter_map(|id| {
            let e = self.by_id.get(&id)?;
            let rings = e.detached.as_ref().map(|d| d.rings.clone());
            let rings = rings.unwrap_or_default();
            let produced = |i: usize| rings[i].as_ref().map_or(0, |r| r.produced());
            Some(ExecEntry {
                exec_id: id,
                pid: e.pid.as_raw() as u32,
                state: match e.status {
                    None => ExecState::Running,
                    Some(s) => ExecState::Exited(super::exit_status(s)),
                },
                detachable: e.detached.is_some(),
                attached: e.control.is_some(),
                buffered: rings.iter().flatten().map(|r| r.buffered()).sum(),
                produced: [produced(0), produced(1)],
                argv: e.argv.clone(),
            })
        }))
    }

    /// A ring sender ended (see [`ring::send`]).
    pub fn ring_output_done(&mut self, done: ring::SenderDone) {
        let id = done.exec_id;
        let Some(d) = self.by_id.get_mut(&id).and_then(|e| e.detached.as_mut()) else {
            return;
        };
        let i = usize::from(done.fd - 1);
        if done.delivered && d.opened[i] == Some(done.generation) {
            d.delivered[i] = true;
        }
        self.maybe_finish(id);
    }

    /// An output pump of `id` ended.
    pub fn output_done(&mut self, id: u64) {
        if let Some(exec) = self.by_id.get_mut(&id) {
            exec.outputs_pending = exec.outputs_pending.saturating_sub(1);
        }
        self.maybe_finish(id);
    }

    /// A child was reaped; returns whether it was one of ours.
    pub fn reaped(&mut self, pid: Pid, status: ChildStatus) -> bool {
        let Some((&id, exec)) = self.by_id.iter_mut().find(|(_, e)| e.pid == pid) else {
            return false;
        };
        log::debug!("exec {id}: pid {pid} ended: {status:?}");
        exec.status = Some(status);
        self.maybe_finish(id);
        true
    }

    /// Kills every process that still runs (before the agent goes away).
    pub fn kill_all(&self) {
        for exec in self.by_id.values() {
            exec.kill();
        }
    }

    /// Sends Exit once the status is known and all output is out; forgets finished processes.
    fn maybe_finish(&mut self, id: u64) {
        let Some(exec) = self.by_id.get_mut(&id) else {
            return;
        };
        let Some(status) = exec.status else {
            return;
        };
        if let Some(d) = &mut exec.detached {
            match &exec.control {
                Some(control) if d.outputs_delivered() && !d.exit_sent => {
                    // The exec stays until the host's CLOSE says it wrote everything out.
                    let msg = ControlMsg::Exit(super::exit_status(status));
                    if control.send(msg.encode()).is_ok() {
                        let _ = control.close();
                    }
                    d.exit_sent = true;
                }
                Some(_) => {}
                None if !self.finished_detached.contains(&id) => {
                    self.finished_detached.push_back(id);
                    while self.finished_detached.len() > FINISHED_DETACHED_KEPT {
                        let Some(old) = self.finished_detached.pop_front() else {
                            break;
                        };
                        log::info!("forgetting finished detached exec {old} (too many kept)");
                        if let Some(e) = self.by_id.remove(&old) {
                            if let Some(d) = &e.detached {
                                d.close();
                            }
                        }
                    }
                }
                None => {}
            }
            return;
        }
        match &exec.control {
            Some(control) if exec.outputs_pending == 0 => {
                let msg = ControlMsg::Exit(super::exit_status(status));
                if control.send(msg.encode()).is_ok() {
                    let _ = control.close();
                }
                if let Some(exec) = self.by_id.remove(&id) {
                    if exec.stdin_requested && self.finished.len() >= FINISHED_REMEMBERED {
                        self.finished.pop_front();
                    }
                    if exec.stdin_requested {
                        self.finished.push_back((exec.session, id));
                    }
                }
            }
            Some(_) => {}
            None => {
                // Nobody to tell: forget it (pumps still running end on their own).
                self.by_id.remove(&id);
            }
        }
    }
}

/// Starts the reader threads of a detachable exec: its output fds go into rings of `cap`.
fn start_rings(spawned: &mut Spawned, cap: usize) -> Result<Detached, String> {
    let fail = |e: &dyn std::fmt::Display| format!("exec: cannot start an output reader: {e}");
    let sources: [Option<OwnedFd>; 2] = match &spawned.pty {
        Some(master) => [Some(master.try_clone().map_err(|e| fail(&e))?), None],
        None => [spawned.stdout.take(), spawned.stderr.take()],
    };
    let mut rings: [Option<Arc<Ring>>; 2] = [None, None];
    for (i, source) in sources.into_iter().enumerate() {
        let Some(fd) = source else { continue };
        let ring = Ring::new(cap);
        let filler = ring.clone();
        std::thread::Builder::new()
            .name(format!("exec-out-{}", i + 1))
            .spawn(move || filler.fill_from(fd))
            .map_err(|e| fail(&e))?;
        rings[i] = Some(ring);
    }
    Ok(Detached {
        rings,
        opened: [None; 2],
        delivered: [false; 2],
        exit_sent: false,
    })
}

/// `exec.io` fd 1 or 2 of a detachable exec: a sender thread replays its ring into the stream.
fn open_ring_output(ctx: &mut Ctx, id: u64, exec: &mut Exec, fd: u8, incoming: Incoming) {
    let i = usize::from(fd - 1);
    let Some(d) = exec.detached.as_mut() else {
        return;
    };
    let Some(ring) = d.rings[i].clone() else {
        let message =
            format!("exec.io {id} fd {fd}: a pty has no separate stderr (it is part of fd 1)");
        return reject(incoming, ErrorCode::REFUSED, &message);
    };
    if d.opened[i].is_some() {
        let message = format!("exec.io {id} fd {fd}: already open");
        return reject(incoming, ErrorCode::REFUSED, &message);
    }
    // The attachment starts at the ring's oldest byte: `exec.attach` dropped what the consumer
    // had, and acks on this attachment only cover bytes taken by a sender of it. Binding the
    // generation now stops any earlier sender.
    let (start, generation) = ring.bind_sender();
    let stream = match incoming.accept(&[]) {
        Ok(s) => s,
        Err(e) => return log::debug!("exec.io {id}: {e}"),
    };
    let job = SenderJob {
        ring,
        generation,
        start,
        stream,
        exec_id: id,
        fd,
        done: ctx.ring_tx.clone(),
    };
    let spawned = std::thread::Builder::new()
        .name(format!("exec-send-{fd}"))
        .spawn(move || ring::send(job));
    match spawned {
        Ok(_) => d.opened[i] = Some(generation),
        Err(e) => log::warn!("exec.io {id}: cannot start a sender: {e}"),
    }
}

/// The command line as `exec.list` shows it: the first entries, each shortened.
fn listed_argv(argv: &[String]) -> Vec<String> {
    argv.iter()
        .take(LISTED_ARGS)
        .map(|a| vmux::wire::truncate_utf8(a, LISTED_ARG_BYTES).to_string())
        .collect()
}

/// Applies one host message.
fn control_msg(id: u64, exec: &mut Exec, msg: ControlMsg) {
    match msg {
        ControlMsg::Ack { fd, offset } => match &exec.detached {
            Some(d) => {
                if let Some(ring) = &d.rings[usize::from(fd - 1)] {
                    ring.ack(offset);
                }
            }
            None => log::debug!("exec {id}: ignoring an ack for an exec that is not detachable"),
        },
        ControlMsg::Signal { signo } => {
            let signal = i32::try_from(signo)
                .ok()
                .and_then(|n| Signal::try_from(n).ok());
            match signal {
                Some(signal) if exec.status.is_none() => {
                    if let Err(e) = killpg(exec.pid, signal) {
                        log::debug!("exec {id}: kill -{signal} -{}: {e}", exec.pid);
                    }
                }
                Some(_) => {}
                None => log::warn!("exec {id}: ignoring unknown signal {signo}"),
            }
        }
        ControlMsg::Resize { rows, cols } => {
            if let Some(master) = &exec.pty {
                if let Err(e) = sys::set_window_size(master.as_fd(), rows, cols) {
                    log::debug!("exec {id}: resize: {e}");
                }
            }
        }
        other => log::warn!("exec {id}: ignoring unexpected control message {other:?}"),
    }
}

/// Takes the fd the host asked for, or says why not.
fn take_fd(exec: &mut Exec, fd: u8) -> Result<OwnedFd, String> {
    if let Some(master) = &exec.pty {
        let direction = match fd {
            0 if !exec.stdin_requested => return Err("stdin was not requested".into()),
            0 => 0,
            1 => 1,
            _ => return Err("a pty has no separate stderr (it is part of fd 1)".into()),
        };
        if exec.pty_taken[direction] {
            return Err("already open".into());
        }
        let dup = master.try_clone().map_err(|e| e.to_string())?;
        exec.pty_taken[direction] = true;
        return Ok(dup);
    }
    let slot = match fd {
        0 if !exec.stdin_requested => return Err("stdin was not requested".into()),
        0 => &mut exec.stdin,
        1 => &mut exec.stdout,
        _ => &mut exec.stderr,
    };
    slot.take().ok_or_else(|| "already open".to_string())
}

/// Starts the process; the error is the message for OPEN_ERR.
fn spawn(req: &ExecRequest) -> Result<Spawned, String> {
    let program = &req.argv[0];
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("exec {program}: {what}{e}");
    if let Some(cwd) = &req.cwd {
        match std::fs::metadata(cwd) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                let e = std::io::Error::from_raw_os_error(nix::libc::ENOTDIR);
                return Err(fail(&format!("cwd {cwd}: "), &e));
            }
            Err(e) => return Err(fail(&format!("cwd {cwd}: "), &e)),
        }
    }
    let mut cmd = Command::new(program);
    cmd.args(&req.argv[1..]);
    for entry in &req.env {
        if let Some((k, v)) = entry.split_once('=') {
            cmd.env(k, v);
        }
    }
    if let Some(cwd) = &req.cwd {
        cmd.current_dir(Path::new(cwd));
    }
    if let Some(gid) = req.gid {
        cmd.gid(gid);
    }
    if let Some(uid) = req.uid {
        cmd.uid(uid);
    }
    let mut pty_master = None;
    let with_pty = req.pty.is_some();
    if let Some(size) = req.pty {
        let winsize = nix::pty::Winsize {
            ws_row: size.rows,
            ws_col: size.cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&winsize), None).map_err(|e| fail("openpty: ", &e))?;
        vmux::transport::set_cloexec(pty.master.as_fd()).map_err(|e| fail("pty: ", &e))?;
        vmux::transport::set_cloexec(pty.slave.as_fd()).map_err(|e| fail("pty: ", &e))?;
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| fail("pty: ", &e));
        cmd.stdin(Stdio::from(dup(&pty.slave)?));
        cmd.stdout(Stdio::from(dup(&pty.slave)?));
        cmd.stderr(Stdio::from(pty.slave));
        pty_master = Some(pty.master);
    } else {
        cmd.stdin(if req.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        cmd.stdout(Stdio::piped());
        cmd.stderr(Stdio::piped());
    }
    // SAFETY: the closure runs in the forked child before exec and only makes the
    // async-signal-safe calls in `sys::child_setup` (setsid, ioctl); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || sys::child_setup(with_pty));
    }
    // The status is collected by the reaper (waitpid(-1)), never through `Child`.
    #[allow(clippy::zombie_processes)]
    let mut child = cmd.spawn().map_err(|e| fail("", &e))?;
    // Drop our copies of the pty slave now, so the master reads EOF (EIO) when the job ends.
    drop(cmd);
    let pid = Pid::from_raw(child.id() as i32);
    Ok(Spawned {
        pid,
        pty: pty_master,
        stdin: child.stdin.take().map(OwnedFd::from),
        stdout: child.stdout.take().map(OwnedFd::from),
        stderr: child.stderr.take().map(OwnedFd::from),
    })
}
