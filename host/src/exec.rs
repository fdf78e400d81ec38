//! `exec`: run a program in the guest as if it ran here.
//!
//! Three copy threads move bytes (local stdin → remote stdin until EOF, remote stdout → local
//! stdout, remote stderr → local stderr); the main thread waits for the exit status; the signal
//! channel (see [`crate::signals`]) passes SIGINT, SIGTERM and SIGHUP on to the remote program
//! and, with `-t`, SIGWINCH as a resize. With `-t` the local terminal is raw for exactly as long
//! as the [`RawMode`] guard lives, and `main` restores it again on any other way out.
//!
//! A `--detachable` exec, and `attach`, acknowledge output: each copy thread sends the agent an
//! Ack with the stream's absolute offset after the bytes were written (and flushed) here, never
//! merely read, so a shim killed at any point leaves the unwritten bytes in the agent's ring.
//! After Exit they close the control stream only once every byte was written and acknowledged.
//! If the local reader goes away (`| head`), the rest is read and acknowledged unwritten, as a
//! plain exec's stream discards it, so the program is not blocked forever by a full ring.

use std::io::{self, IsTerminal, Read, Write};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Receiver;
use nix::sys::signal::Signal;
use vmux::service::{self, ExecAttach, ExecRequest, ExitStatus, ProcessController, PtySize};
use vmux::service::{RemoteProcess, ServiceError};
use vmux::session::{SessionError, Stream};
use vmux::wire::ErrorCode;

use crate::cli::{AttachArgs, ExecArgs, Failure, Global, EXIT_SHIM_FAILED};
use crate::connect;
use crate::term::{self, RawMode, WinSize};

/// The pty size asked for when no local terminal reports one.
const DEFAULT_WINSIZE: WinSize = WinSize { rows: 24, cols: 80 };
/// How long to wait for the guest to acknowledge the end of the session.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Whether local stdin is forwarded: always with `-i` or `-t`, otherwise only when stdin is not
/// a terminal (a pipe or file is meant as input; a terminal without `-i` is not).
pub fn forwards_stdin(args: &ExecArgs, stdin_is_tty: bool) -> bool {
    args.interactive || args.tty || !stdin_is_tty
}

/// Builds the request for `args`; `winsize` is the local terminal's size, if any.
pub fn request(args: &ExecArgs, stdin: bool, winsize: Option<WinSize>) -> ExecRequest {
    let size = winsize.unwrap_or(DEFAULT_WINSIZE);
    ExecRequest {
        argv: args.argv.clone(),
        env: args.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        cwd: args.cwd.clone(),
        uid: args.uid,
        gid: args.gid,
        pty: args.tty.then_some(PtySize {
            rows: size.rows,
            cols: size.cols,
        }),
        stdin,
        detach: args.detachable.then_some(args.ring),
    }
}

/// The exit status the shim leaves with: the remote code (as the low 8 bits a shell sees), or
/// 128 + N for death by signal N.
pub fn exit_code(status: ExitStatus) -> u8 {
    match status {
        ExitStatus::Code(c) => (c & 0xff) as u8,
        ExitStatus::Signal(n) => crate::signals::shell_status(n),
    }
}

/// Runs the command; returns the exit status to leave with.
pub fn run(global: &Global, args: &ExecArgs, signals: Receiver<Signal>) -> Result<u8, Failure> {
    let fail = |f: Failure| f.with_status(EXIT_SHIM_FAILED);
    let stdin_is_tty = io::stdin().is_terminal();
    let stdin = forwards_stdin(args, stdin_is_tty);
    let req = request(args, stdin, term::local_window_size());
    let conn = connect::connect(global).map_err(fail)?;
    let mut process = service::exec(&conn.session, &req).map_err(|e| fail(Failure::new(e)))?;
    if args.print_id {
        eprintln!("vmux exec id: {}", process.exec_id());
    }
    if let Some(path) = &args.id_file {
        write_id_file(path, process.exec_id()).map_err(|e| {
            let _ = process.controller().close();
            fail(Failure::new(format!(
                "cannot write {}: {e}",
                path.display()
            )))
        })?;
    }
    let raw = if args.tty && stdin_is_tty {
        Some(RawMode::enable().map_err(|e| {
            fail(Failure::new(format!(
                "cannot put the terminal in raw mode: {e}"
            )))
        })?)
    } else {
        None
    };

    if let Some(remote_stdin) = process.take_stdin() {
        if stdin {
            spawn("stdin", move || pump_stdin(remote_stdin));
        }
    }
    let status = follow(process, args.tty, signals);
    drop(raw);
    conn.close(CLOSE_GRACE);
    status.map(exit_code).map_err(|e| fail(Failure::new(e)))
}

/// Writes `id` and a newline to `path` atomically (a temporary file renamed over it), so a
/// script that waits for the file never reads it half written.
fn write_id_file(path: &std::path::Path, id: u64) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    std::fs::write(&tmp, format!("{id}\n"))?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// `attach ID`: takes over a detachable exec; returns the exit status to leave with.
pub fn attach(
    global: &Global,
    args: &AttachArgs,
    signals: Receiver<Signal>,
) -> Result<u8, Failure> {
    let fail = |f: Failure| f.with_status(EXIT_SHIM_FAILED);
    let conn = connect::connect(global).map_err(fail)?;
    let request = ExecAttach {
        exec_id: args.id,
        offsets: [args.stdout_offset, args.stderr_offset],
    };
    let process = service::attach(&conn.session, &request).map_err(|e| fail(Failure::new(e)))?;
    let status = follow(process, false, signals);
    conn.close(CLOSE_GRACE);
    status.map(exit_code).map_err(|e| fail(Failure::new(e)))
}

/// `ps`: prints the execs the agent holds.
pub fn ps(global: &Global) -> Result<u8, Failure> {
    let conn = connect::connect(global)?;
    let list = service::exec_list(&conn.session).map_err(Failure::new)?;
    conn.close(CLOSE_GRACE);
    let mut out = io::stdout().lock();
    let mut lines = vec![format!(
        "{:>4} {:>7} {:<10} {:<8} {:<10} {:>9} {:>11} {:>11} COMMAND",
        "ID", "PID", "STATE", "ATTACHED", "DETACHABLE", "BUFFERED", "OUT", "ERR"
    )];
    let yes = |b: bool| if b { "yes" } else { "no" };
    for e in &list.entries {
        lines.push(format!(
            "{:>4} {:>7} {:<10} {:<8} {:<10} {:>9} {:>11} {:>11} {}",
            e.exec_id,
            e.pid,
            e.state.to_string(),
            yes(e.attached),
            yes(e.detachable),
            e.buffered,
            e.produced[0],
            e.produced[1],
            printable(&e.argv.join(" "))
        ));
    }
    if list.omitted > 0 {
        lines.push(format!("({} more not shown)", list.omitted));
    }
    for line in lines {
        writeln!(out, "{line}").map_err(|e| Failure::new(format!("writing stdout: {e}")))?;
    }
    Ok(0)
}

/// `text` with control characters shown as `?`: the command line comes from the guest, which
/// must not be able to drive this terminal.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Copies a process's output here, passes signals on, and waits for its status. A detachable
/// process's output is acknowledged as it is written, and its control stream is closed (which
/// lets the agent forget it) only after every byte was written out.
fn follow(
    mut process: RemoteProcess,
    tty: bool,
    signals: Receiver<Signal>,
) -> Result<ExitStatus, ServiceError> {
    let control = process.controller();
    let acks = |fd: u8| {
        let start = process.output_offsets()[usize::from(fd - 1)];
        process.detachable().then(|| Acker {
            control: control.clone(),
            fd,
            offset: start,
        })
    };
    let (out_ack, err_ack) = (acks(1), acks(2));
    let detachable = process.detachable();
    let exec_id = process.exec_id();
    let out = process
        .take_stdout()
        .and_then(|s| spawn("stdout", move || copy_out(s, io::stdout(), out_ack)));
    let err = process
        .take_stderr()
        .and_then(|s| spawn("stderr", move || copy_out(s, io::stderr(), err_ack)));
    let signal_control = control.clone();
    spawn("signals", move || {
        pass_signals(signals, signal_control, tty)
    });
    let status = process.wait();
    // All output is in once both copies saw EOF.
    for handle in [out, err].into_iter().flatten() {
        let _ = handle.join();
    }
    match status {
        Ok(status) => {
            if detachable {
                // Everything was written and acknowledged: the agent may forget the exec now.
                let _ = control.close();
            }
            Ok(status)
        }
        Err(ServiceError::Session(SessionError::Reset {
            code: ErrorCode::CANCEL,
            by_peer: true,
            ..
        })) if detachable => Err(ServiceError::Failed(format!(
            "exec {exec_id} was attached by another shim; this one lets go"
        ))),
        Err(e) => Err(e),
    }
}

/// Passes terminating signals (and, with a pty, window sizes) to the remote program.
fn pass_signals(signals: Receiver<Signal>, control: ProcessController, tty: bool) {
    for signal in signals {
        let result = match signal {
            Signal::SIGWINCH if tty => match term::local_window_size() {
                Some(size) => control.resize(size.rows, size.cols),
                None => Ok(()),
            },
            Signal::SIGWINCH => Ok(()),
            other => control.signal(other as i32),
        };
        if let Err(e) = result {
            log::debug!("passing {signal} on: {e}");
            // The remote process is gone (or unreachable): a terminating signal then ends
            // the shim itself, as it would any local program.
            if matches!(signal, Signal::SIGINT | Signal::SIGTERM | Signal::SIGHUP) {
                term::restore();
                std::process::exit(128 + signal as i32);
            }
        }
    }
}

/// Acknowledges one output fd of a detachable exec as its bytes are written out.
struct Acker {
    control: ProcessController,
    fd: u8,
    /// The absolute offset of the next byte of this fd.
    offset: u64,
}

impl Acker {
    fn written(&mut self, n: usize) {
        // The start offset came from the guest: never let it overflow here.
        self.offset = self.offset.saturating_add(n as u64);
        if let Err(e) = self.control.ack(self.fd, self.offset) {
            log::debug!("acknowledging fd {} up to {}: {e}", self.fd, self.offset);
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Option<JoinHandle<()>> {
    match std::thread::Builder::new().name(name.into()).spawn(f) {
        Ok(h) => Some(h),
        Err(e) => {
            log::error!("cannot start the {name} thread: {e}");
            None
        }
    }
}

/// Local stdin to the remote program until EOF, then a half-close.
fn pump_stdin(stream: Stream) {
    let mut stdin = io::stdin().lock();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::warn!("reading stdin: {e}");
                break;
            }
        };
        if let Err(e) = (&stream).write_all(&buf[..n]) {
            log::debug!("remote stdin: {e}");
            return;
        }
    }
    if let Err(e) = stream.shutdown_write() {
        log::debug!("closing remote stdin: {e}");
    }
}

/// A remote output stream to a local one, flushing every chunk (prompts have no newline), and
/// acknowledging each chunk once written when `ack` is given.
fn copy_out(stream: Stream, mut to: impl Write, mut ack: Option<Acker>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match (&stream).read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::debug!("remote output: {e}");
                return;
            }
        };
        if let Err(e) = to.write_all(&buf[..n]).and_then(|()| to.flush()) {
            // Our reader went away (`| head`): stop reading; the stream drains on drop.
            log::debug!("local output: {e}");
            if let Some(ack) = ack {
                // A detachable exec's bytes wait in the agent until acknowledged, so draining
                // is ours to do: read on and acknowledge what can no longer be delivered, as a
                // plain exec's stream discards it, instead of blocking the program forever.
                discard(stream, ack, n);
            }
            return;
        }
        if let Some(ack) = &mut ack {
            ack.written(n);
        }
    }
}

/// Reads a detachable exec's output to its end, acknowledging (and dropping) every byte; `n`
/// bytes were read already.
fn discard(stream: Stream, mut ack: Acker, n: usize) {
    ack.written(n);
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match (&stream).read(&mut buf) {
            Ok(0) => return,
            Ok(n) => ack.written(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(tty: bool, interactive: bool) -> ExecArgs {
        ExecArgs {
            tty,
            interactive,
            argv: vec!["sh".into()],
            ..ExecArgs::default()
        }
    }

    #[test]
    fn stdin_is_forwarded_from_pipes_and_with_i_or_t_only() {
        assert!(forwards_stdin(&args(false, false), false));
        assert!(!forwards_stdin(&args(false, false), true));
        assert!(forwards_stdin(&args(false, true), true));
        assert!(forwards_stdin(&args(true, false), true));
    }

    #[test]
    fn pty_is_requested_only_with_t_and_sized_like_the_terminal() {
        let size = WinSize {
            rows: 50,
            cols: 132,
        };
        let pty = |rows, cols| Some(PtySize { rows, cols });
        assert_eq!(request(&args(false, false), true, Some(size)).pty, None);
        assert_eq!(
            request(&args(true, false), true, Some(size)).pty,
            pty(50, 132)
        );
        assert_eq!(request(&args(true, false), true, None).pty, pty(24, 80));
    }

    #[test]
    fn env_pairs_become_key_value_entries() {
        let mut a = args(false, false);
        a.env = vec![("A".into(), "1".into()), ("B".into(), "x=y".into())];
        assert_eq!(request(&a, false, None).env, ["A=1", "B=x=y"]);
    }

    #[test]
    fn listed_command_lines_cannot_drive_the_terminal() {
        assert_eq!(printable("sh -c \x1b[2Jx\n\u{9b}y"), "sh -c ?[2Jx??y");
    }

    #[test]
    fn exit_status_maps_to_shell_codes() {
        assert_eq!(exit_code(ExitStatus::Code(0)), 0);
        assert_eq!(exit_code(ExitStatus::Code(7)), 7);
        assert_eq!(exit_code(ExitStatus::Code(256 + 3)), 3);
        assert_eq!(exit_code(ExitStatus::Code(-1)), 255);
        assert_eq!(exit_code(ExitStatus::Signal(15)), 143);
        assert_eq!(exit_code(ExitStatus::Signal(9)), 137);
    }
}
