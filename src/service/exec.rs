//! The `exec` service: start a process in the guest, move its stdio, signal it, learn its end.
//!
//! The host opens `exec` with an [`ExecRequest`]; the agent spawns the process and answers
//! OPEN_OK with an [`ExecReply`] (`exec_id`, `pid`). That stream is the *control stream*:
//! the host sends [`ControlMsg::Signal`] and [`ControlMsg::Resize`], the agent sends
//! [`ControlMsg::Exit`] once the process was reaped and every output byte was handed to the
//! session, then closes. Stdio travels on `exec.io` streams the host opens with an [`ExecIo`]
//! (`exec_id`, fd 0/1/2). A reset of the control stream, or the end of the session, kills the
//! process group, unless the request set [`ExecRequest::detach`]: then the agent keeps the
//! process and its unacknowledged output ([`ProcessController::ack`]) for a later
//! [`attach`](super::attach()).

use super::codec::{MessageError, Reader, Writer, MAX_STRING};
use super::control::{ControlDecoder, ControlMsg, ExitStatus};
use super::{stream_error, ServiceError, EXEC, EXEC_IO};
use crate::session::{Session, Stream};
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

/// The most argv entries.
pub const MAX_ARGS: usize = 4096;
/// The most environment entries.
pub const MAX_ENV: usize = 4096;

/// A pty window size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PtySize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// What to run, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    /// Program and arguments; `argv[0]` is looked up in `PATH` unless it contains `/`.
    pub argv: Vec<String>,
    /// Environment entries `KEY=VALUE`, added to (or replacing in) the agent's environment.
    pub env: Vec<String>,
    /// Working directory (default: the agent's).
    pub cwd: Option<String>,
    /// Numeric user id to run as.
    pub uid: Option<u32>,
    /// Numeric group id to run as.
    pub gid: Option<u32>,
    /// Run on a new pty of this size (stdout and stderr are then one stream, fd 1).
    pub pty: Option<PtySize>,
    /// Whether the host will send stdin (otherwise the process gets /dev/null, or the pty).
    pub stdin: bool,
    /// Keep the process when its control stream or session ends, buffering its output in a
    /// ring of this many bytes (0 = the agent's default, 1 MiB) until a host attaches again.
    pub detach: Option<u32>,
}

impl ExecRequest {
    /// A request to run `argv` with nothing else set.
    pub fn new<I, S>(argv: I) -> ExecRequest
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ExecRequest {
            argv: argv.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            cwd: None,
            uid: None,
            gid: None,
            pty: None,
            stdin: false,
            detach: None,
        }
    }

    /// Checks the rules a decoded request must follow.
    pub fn validate(&self) -> Result<(), MessageError> {
        if self.argv.is_empty() {
            return Err(MessageError::Invalid("argv is empty".into()));
        }
        if self.argv[0].is_empty() {
            return Err(MessageError::Invalid("argv[0] is empty".into()));
        }
        let all = self.argv.iter().chain(&self.env).chain(&self.cwd);
        if all.clone().any(|s| s.contains('\0')) {
            return Err(MessageError::Invalid(
                "argv, env and cwd may not contain NUL".into(),
            ));
        }
        for e in &self.env {
            match e.split_once('=') {
                Some((k, _)) if !k.is_empty() => {}
                _ => {
                    return Err(MessageError::Invalid(format!(
                        "env entry {e:?} is not KEY=VALUE"
                    )))
                }
            }
        }
        if self.cwd.as_deref() == Some("") {
            return Err(MessageError::Invalid("cwd is empty".into()));
        }
        Ok(())
    }

    /// The OPEN arguments (see docs/protocol.md).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(self.argv.len() as u32);
        for a in &self.argv {
            w.str(a);
        }
        w.u32(self.env.len() as u32);
        for e in &self.env {
            w.str(e);
        }
        match &self.cwd {
            Some(c) => w.u8(1).str(c),
            None => w.u8(0),
        };
        match self.uid {
            Some(u) => w.u8(1).u32(u),
            None => w.u8(0),
        };
        match self.gid {
            Some(g) => w.u8(1).u32(g),
            None => w.u8(0),
        };
        match self.pty {
            Some(p) => w.u8(1).u16(p.rows).u16(p.cols),
            None => w.u8(0),
        };
        w.u8(u8::from(self.stdin));
        // Optional trailer, absent for a plain exec (whose bytes stay what they always were).
        if let Some(ring) = self.detach {
            w.u8(1).u32(ring);
        }
        w.finish()
    }

    /// Parses and validates OPEN arguments.
    pub fn decode(bytes: &[u8]) -> Result<ExecRequest, MessageError> {
        let mut r = Reader::new(bytes);
        let argc = r.count("argv", MAX_ARGS, 4)?;
        let mut argv = Vec::with_capacity(argc);
        for _ in 0..argc {
            argv.push(r.str("argv entry", MAX_STRING)?.to_string());
        }
        let envc = r.count("env", MAX_ENV, 4)?;
        let mut env = Vec::with_capacity(envc);
        for _ in 0..envc {
            env.push(r.str("env entry", MAX_STRING)?.to_string());
        }
        let cwd = match r.bool("cwd flag")? {
            true => Some(r.str("cwd", MAX_STRING)?.to_string()),
            false => None,
        };
        let uid = match r.bool("uid flag")? {
            true => Some(r.u32()?),
            false => None,
        };
        let gid = match r.bool("gid flag")? {
            true => Some(r.u32()?),
            false => None,
        };
        let pty = match r.bool("pty flag")? {
            true => Some(PtySize {
                rows: r.u16()?,
                cols: r.u16()?,
            }),
            false => None,
        };
        let stdin = r.bool("stdin flag")?;
        let detach = match r.remaining() > 0 && r.bool("detach flag")? {
            true => Some(r.u32()?),
            false => None,
        };
        r.finish()?;
        let req = ExecRequest {
            argv,
            env,
            cwd,
            uid,
            gid,
            pty,
            stdin,
            detach,
        };
        req.validate()?;
        Ok(req)
    }
}

/// The agent's OPEN_OK reply to `exec`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecReply {
    /// Names the process in `exec.io` requests (unique per agent run).
    pub exec_id: u64,
    /// The process id in the guest.
    pub pid: u32,
}

impl ExecReply {
    /// `u64 exec_id`, `u32 pid`.
    pub fn encode(&self) -> Vec<u8> {
        Writer::new().u64(self.exec_id).u32(self.pid).finish()
    }

    /// Parses the reply.
    pub fn decode(bytes: &[u8]) -> Result<ExecReply, MessageError> {
        let mut r = Reader::new(bytes);
        let reply = ExecReply {
            exec_id: r.u64()?,
            pid: r.u32()?,
        };
        r.finish()?;
        Ok(reply)
    }
}

/// The OPEN arguments of an `exec.io` stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecIo {
    /// The process, from [`ExecReply::exec_id`].
    pub exec_id: u64,
    /// 0 = stdin (host to process), 1 = stdout, 2 = stderr (process to host).
    pub fd: u8,
}

impl ExecIo {
    /// `u64 exec_id`, `u8 fd`.
    pub fn encode(&self) -> Vec<u8> {
        Writer::new().u64(self.exec_id).u8(self.fd).finish()
    }

    /// Parses the arguments; `fd` must be 0, 1 or 2.
    pub fn decode(bytes: &[u8]) -> Result<ExecIo, MessageError> {
        let mut r = Reader::new(bytes);
        let io = ExecIo {
            exec_id: r.u64()?,
            fd: r.u8()?,
        };
        r.finish()?;
        if io.fd > 2 {
            return Err(MessageError::BadValue {
                field: "exec.io fd",
                value: u64::from(io.fd),
            });
        }
        Ok(io)
    }
}

/// Sends signals and window sizes to a remote process; clonable, usable from any thread.
#[derive(Debug, Clone)]
pub struct ProcessController {
    control: Arc<Stream>,
    write_lock: Arc<Mutex<()>>,
}

impl ProcessController {
    fn send(&self, msg: &ControlMsg) -> Result<(), ServiceError> {
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        (&*self.control)
            .write_all(&msg.encode())
            .map_err(stream_error)
    }

    /// Delivers signal `signo` to the process group.
    pub fn signal(&self, signo: i32) -> Result<(), ServiceError> {
        let signo = u32::try_from(signo)
            .map_err(|_| ServiceError::InvalidRequest(format!("bad signal number {signo}")))?;
        self.send(&ControlMsg::Signal { signo })
    }

    /// Sets the pty window size (ignored without a pty).
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), ServiceError> {
        self.send(&ControlMsg::Resize { rows, cols })
    }

    /// Tells the agent that the first `offset` bytes of output `fd` (1 or 2, counted since the
    /// process started) are durably delivered, so it may drop them (detachable execs only).
    pub fn ack(&self, fd: u8, offset: u64) -> Result<(), ServiceError> {
        self.send(&ControlMsg::Ack { fd, offset })
    }

    /// Half-closes the control stream. For a detachable exec after its Exit (and after every
    /// output byte was written out and acknowledged) this lets the agent forget the exec;
    /// before Exit it detaches: the process goes on and its output waits in the agent's ring.
    pub fn close(&self) -> Result<(), ServiceError> {
        Ok(self.control.shutdown_write()?)
    }
}

/// A process running in the guest, with its stdio streams.
#[derive(Debug)]
pub struct RemoteProcess {
    exec_id: u64,
    pid: u32,
    /// Whether the agent keeps it across detaches (see [`ExecRequest::detach`]).
    detachable: bool,
    /// The output offsets (stdout, stderr) the output streams start at.
    offsets: [u64; 2],
    stdin: Option<Stream>,
    stdout: Option<Stream>,
    stderr: Option<Stream>,
    controller: ProcessController,
}

impl RemoteProcess {
    /// The agent's id for the process.
    pub fn exec_id(&self) -> u64 {
        self.exec_id
    }

    /// The process id in the guest.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the agent keeps the process when this host goes away.
    pub fn detachable(&self) -> bool {
        self.detachable
    }

    /// The offsets, since the process started, of the first byte the stdout and stderr streams
    /// carry: 0 for a new exec, the replay point after an attach.
    pub fn output_offsets(&self) -> [u64; 2] {
        self.offsets
    }

    /// Takes the stdin stream (present when the request set `stdin`); close it with
    /// [`Stream::shutdown_write`] or by dropping it to give the process EOF.
    pub fn take_stdin(&mut self) -> Option<Stream> {
        self.stdin.take()
    }

    /// Takes the stdout stream (with a pty: the terminal's output).
    pub fn take_stdout(&mut self) -> Option<Stream> {
        self.stdout.take()
    }

    /// Takes the stderr stream (absent with a pty).
    pub fn take_stderr(&mut self) -> Option<Stream> {
        self.stderr.take()
    }

    /// The stdin stream, if not taken.
    pub fn stdin(&self) -> Option<&Stream> {
        self.stdin.as_ref()
    }

    /// The stdout stream, if not taken.
    pub fn stdout(&self) -> Option<&Stream> {
        self.stdout.as_ref()
    }

    /// The stderr stream, if not taken.
    pub fn stderr(&self) -> Option<&Stream> {
        self.stderr.as_ref()
    }

    /// A handle for signals and resizes that outlives [`RemoteProcess::wait`]'s `self`.
    pub fn controller(&self) -> ProcessController {
        self.controller.clone()
    }

    /// Delivers signal `signo` to the process group.
    pub fn signal(&self, signo: i32) -> Result<(), ServiceError> {
        self.controller.signal(signo)
    }

    /// Sets the pty window size.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), ServiceError> {
        self.controller.resize(rows, cols)
    }

    /// Gives up on the process: resets the control stream, and the agent kills its group.
    pub fn abort(self) -> Result<(), ServiceError> {
        Ok(self
            .controller
            .control
            .reset(crate::wire::ErrorCode::CANCEL)?)
    }

    /// Waits for the process to end. Streams not taken are closed first (stdin gets EOF;
    /// untaken output is discarded); output streams taken earlier already hold every byte
    /// when this returns.
    pub fn wait(mut self) -> Result<ExitStatus, ServiceError> {
        if let Some(stdin) = self.stdin.take() {
            let _ = stdin.shutdown_write();
        }
        self.stdout = None;
        self.stderr = None;
        let mut decoder = ControlDecoder::new();
        let mut buf = [0u8; 512];
        loop {
            let n = (&*self.controller.control)
                .read(&mut buf)
                .map_err(stream_error)?;
            if n == 0 {
                return Err(ServiceError::Failed(
                    "the agent closed the exec control stream without an exit status".into(),
                ));
            }
            decoder.push(&buf[..n])?;
            while let Some(msg) = decoder.next_msg()? {
                if let ControlMsg::Exit(status) = msg {
                    // Nothing more to say to a process that ended: close our half now, so the
                    // stream (and a graceful session close) completes even while a signal
                    // forwarder still holds a controller. A detachable exec is closed by the
                    // caller with [`ProcessController::close`] once its output is written out
                    // and acknowledged: the close is what lets the agent forget it.
                    if !self.detachable {
                        let _ = self.controller.control.shutdown_write();
                    }
                    return Ok(status);
                }
            }
        }
    }
}

/// Opens one `exec.io` stream; output streams are half-closed at once (the host never writes
/// to them, and the agent's pump finishes only when both directions are closed).
fn open_io(session: &Session, exec_id: u64, fd: u8) -> Result<Stream, ServiceError> {
    let stream = session.open(EXEC_IO, &ExecIo { exec_id, fd }.encode())?;
    if fd != 0 {
        stream.shutdown_write()?;
    }
    Ok(stream)
}

/// Starts a process in the guest and opens its stdio streams.
pub fn exec(session: &Session, request: &ExecRequest) -> Result<RemoteProcess, ServiceError> {
    request
        .validate()
        .map_err(|e| ServiceError::InvalidRequest(e.to_string()))?;
    let (control, reply) = session.open_with_reply(EXEC, &request.encode())?;
    let reply = match ExecReply::decode(&reply) {
        Ok(r) => r,
        Err(e) => {
            let _ = control.reset(crate::wire::ErrorCode::PROTOCOL);
            return Err(e.into());
        }
    };
    let started = Started {
        exec_id: reply.exec_id,
        pid: reply.pid,
        detachable: request.detach.is_some(),
        offsets: [0, 0],
        stdin: request.stdin,
        pty: request.pty.is_some(),
    };
    with_stdio(session, control, started)
}

/// What the agent said about a process whose stdio is to be opened.
pub(super) struct Started {
    /// The agent's id for it.
    pub exec_id: u64,
    /// Its pid in the guest.
    pub pid: u32,
    /// Whether it survives this host.
    pub detachable: bool,
    /// Where its stdout and stderr streams start.
    pub offsets: [u64; 2],
    /// Whether to open stdin.
    pub stdin: bool,
    /// Whether it runs on a pty (no stderr stream then).
    pub pty: bool,
}

/// Opens the stdio streams of a process whose control stream is `control`.
pub(super) fn with_stdio(
    session: &Session,
    control: Stream,
    started: Started,
) -> Result<RemoteProcess, ServiceError> {
    let control = Arc::new(control);
    let controller = ProcessController {
        control: control.clone(),
        write_lock: Arc::new(Mutex::new(())),
    };
    let id = started.exec_id;
    let opened = (|| {
        // stdin first: the agent keeps an exec while its output streams are still to come, so
        // a program that exits at once cannot take the exec away before stdin is attached.
        let stdin = match started.stdin {
            true => Some(open_io(session, id, 0)?),
            false => None,
        };
        let stdout = open_io(session, id, 1)?;
        let stderr = match started.pty {
            true => None,
            false => Some(open_io(session, id, 2)?),
        };
        Ok::<_, ServiceError>((stdin, stdout, stderr))
    })();
    match opened {
        Ok((stdin, stdout, stderr)) => Ok(RemoteProcess {
            exec_id: id,
            pid: started.pid,
            detachable: started.detachable,
            offsets: started.offsets,
            stdin,
            stdout: Some(stdout),
            stderr,
            controller,
        }),
        Err(e) => {
            // Without its stdio the process is of no use: the reset kills it (a detachable
            // one is only detached).
            let _ = control.reset(crate::wire::ErrorCode::CANCEL);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn exec_request_bytes() {
        let req = ExecRequest {
            argv: vec!["ls".into()],
            env: vec!["A=b".into()],
            cwd: None,
            uid: Some(1),
            gid: None,
            pty: Some(PtySize { rows: 24, cols: 80 }),
            stdin: true,
            detach: None,
        };
        let want: Vec<u8> = [
            &[1, 0, 0, 0][..],
            &[2, 0, 0, 0, b'l', b's'],
            &[1, 0, 0, 0],
            &[3, 0, 0, 0, b'A', b'=', b'b'],
            &[0],
            &[1, 1, 0, 0, 0],
            &[0],
            &[1, 24, 0, 80, 0],
            &[1],
        ]
        .concat();
        assert_eq!(req.encode(), want);
        assert_eq!(ExecRequest::decode(&want), Ok(req));
    }

    #[test]
    fn detachable_request_appends_its_ring_size() {
        let mut req = ExecRequest::new(["top"]);
        let plain = req.encode();
        req.detach = Some(4096);
        let bytes = req.encode();
        assert_eq!(bytes[..plain.len()], plain[..]);
        assert_eq!(bytes[plain.len()..], [1, 0, 0x10, 0, 0]);
        assert_eq!(ExecRequest::decode(&bytes), Ok(req));
    }

    #[test]
    fn exec_request_rules() {
        let empty = ExecRequest::new(Vec::<String>::new());
        assert_eq!(
            ExecRequest::decode(&empty.encode()),
            Err(MessageError::Invalid("argv is empty".into()))
        );
        let mut bad_env = ExecRequest::new(["true"]);
        bad_env.env = vec!["NOEQUALS".into()];
        assert!(ExecRequest::decode(&bad_env.encode()).is_err());
        let nul = ExecRequest::new(["a\0b"]);
        assert!(ExecRequest::decode(&nul.encode()).is_err());
    }

    #[test]
    fn exec_io_rejects_fd_3() {
        let bytes = ExecIo { exec_id: 1, fd: 3 }.encode();
        assert!(matches!(
            ExecIo::decode(&bytes),
            Err(MessageError::BadValue { value: 3, .. })
        ));
        let ok = ExecIo { exec_id: 9, fd: 2 };
        assert_eq!(ExecIo::decode(&ok.encode()), Ok(ok));
    }

    #[test]
    fn exec_reply_round_trips() {
        let r = ExecReply {
            exec_id: 5,
            pid: 77,
        };
        assert_eq!(r.encode(), [5, 0, 0, 0, 0, 0, 0, 0, 77, 0, 0, 0]);
        assert_eq!(ExecReply::decode(&r.encode()), Ok(r));
    }

    fn arb_request() -> impl Strategy<Value = ExecRequest> {
        (
            proptest::collection::vec("[a-z/]{1,8}", 1..4),
            proptest::collection::vec("[A-Z]{1,4}=[a-z]{0,4}", 0..3),
            proptest::option::of("/[a-z]{0,6}"),
            proptest::option::of(any::<u32>()),
            proptest::option::of(any::<u32>()),
            proptest::option::of((any::<u16>(), any::<u16>())),
            any::<bool>(),
            proptest::option::of(any::<u32>()),
        )
            .prop_map(
                |(argv, env, cwd, uid, gid, pty, stdin, detach)| ExecRequest {
                    argv,
                    env,
                    cwd,
                    uid,
                    gid,
                    pty: pty.map(|(rows, cols)| PtySize { rows, cols }),
                    stdin,
                    detach,
                },
            )
    }

    proptest! {
        #[test]
        fn exec_requests_round_trip(req in arb_request()) {
            prop_assert_eq!(ExecRequest::decode(&req.encode()), Ok(req));
        }

        #[test]
        fn exec_decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
            let _ = ExecRequest::decode(&bytes);
            let _ = ExecIo::decode(&bytes);
            let _ = ExecReply::decode(&bytes);
        }
    }
}
