//! The agent's services end to end, in-process: one service loop (as in the agent) serves
//! sessions over unix socketpairs; the tests drive them with the host client API.
//!
//! One agent serves every test of this binary, as the real agent serves every session: its
//! `waitpid(-1)` would otherwise collect another agent's children.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use vmux::mux::Config;
use vmux::reactor::{random_nonce, Reactor, ReactorHandle};
use vmux::service::{self, crc32c_append, ExecRequest, ExitStatus, PtySize, ServiceError};
use vmux::session::Session;
use vmux::transport::Link;
use vmux::wire::{ErrorCode, Role};
use vmux_agent::services::{self, Options};

/// Generous: the machine is small and shared.
const PATIENCE: Duration = Duration::from_secs(60);

struct Agent {
    reactor: ReactorHandle,
    sessions: Sender<Session>,
}

/// Shutdown requests the agent confirmed (`reboot` flags).
static SHUTDOWNS: Mutex<Vec<bool>> = Mutex::new(Vec::new());

fn agent() -> &'static Agent {
    static AGENT: OnceLock<Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        let reactor = Reactor::spawn().expect("agent reactor");
        let handle = reactor.handle();
        // The agent lives as long as the test process.
        std::mem::forget(reactor);
        let (sessions_tx, sessions_rx) = crossbeam_channel::unbounded();
        let (child_tx, child_rx) = crossbeam_channel::bounded(1);
        std::mem::forget(child_tx);
        thread::Builder::new()
            .name("agent-services".into())
            .spawn(move || {
                services::run(
                    sessions_rx,
                    child_rx,
                    Options {
                        reap_interval: Duration::from_millis(20),
                        on_shutdown: Box::new(|reboot| {
                            SHUTDOWNS.lock().unwrap().push(reboot);
                        }),
                        kill_on_shutdown: false,
                    },
                )
            })
            .expect("agent thread");
        Agent {
            reactor: handle,
            sessions: sessions_tx,
        }
    })
}

/// A host session to the agent; keep the reactor alive while using it.
fn connect() -> (Reactor, Session) {
    let (host_link, agent_link) = Link::pair().expect("socketpair");
    let agent = agent();
    let agent_session = agent
        .reactor
        .add_link(agent_link, Config::new(Role::Server, random_nonce()))
        .expect("agent session");
    agent.sessions.send(agent_session).expect("agent alive");
    let reactor = Reactor::spawn().expect("host reactor");
    let session = reactor
        .add_link(host_link, Config::new(Role::Client, random_nonce()))
        .expect("host session");
    (reactor, session)
}

/// Runs `req` and collects (stdout, stderr, status); stderr is read on its own thread.
fn run(session: &Session, req: &ExecRequest) -> (Vec<u8>, Vec<u8>, ExitStatus) {
    let mut proc = service::exec(session, req).expect("exec");
    let mut stdout = proc.take_stdout().expect("stdout");
    let stderr = proc.take_stderr();
    let err_thread = thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut s) = stderr {
            s.read_to_end(&mut buf).expect("read stderr");
        }
        buf
    });
    let mut out = Vec::new();
    stdout.read_to_end(&mut out).expect("read stdout");
    let status = proc.wait().expect("wait");
    (out, err_thread.join().unwrap(), status)
}

fn sh(script: &str) -> ExecRequest {
    ExecRequest::new(["sh", "-c", script])
}

/// A fresh directory for one test.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmux-services-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Deterministic bytes: block `i` of 8 bytes depends only on `seed` and `i`.
fn pattern(seed: u64, offset: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        let pos = offset + i as u64;
        let mut z = (seed ^ (pos / 8)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z ^= z >> 29;
        *b = (z >> ((pos % 8) * 8)) as u8;
    }
}

fn pattern_vec(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    pattern(seed, 0, &mut v);
    v
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

// ----- info -----

#[test]
fn info_reports_versions_link_and_limits() {
    let (_r, session) = connect();
    let info = service::info(&session).expect("info");
    assert_eq!(
        info.agent_version.as_deref(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(info.protocol_version, Some(u64::from(vmux::wire::VERSION)));
    assert!(info.kernel_release.as_ref().is_some_and(|k| !k.is_empty()));
    assert!(info.uptime_ms.is_some_and(|ms| ms > 0));
    assert_eq!(info.boot_id.as_ref().map(String::len), Some(36));
    assert_eq!(info.pid1, Some(false));
    assert_eq!(info.link_kind.as_deref(), Some("unix"));
    assert_eq!(info.link_peer.as_deref(), Some("pair"));
    assert_eq!(info.max_frame, Some(64 << 10));
    assert_eq!(info.payload_crc, Some(false));
    assert!(info.rss_bytes.is_some_and(|b| b > 0));
    assert!(info.cpu_time_us.is_some());
    assert!(info.to_string().contains("link:             unix (pair)"));
}

// ----- exec -----

#[test]
fn exec_separates_stdout_and_stderr() {
    let (_r, session) = connect();
    let (out, err, status) = run(&session, &sh("echo to-out; echo to-err >&2; echo more-out"));
    assert_eq!(out, b"to-out\nmore-out\n");
    assert_eq!(err, b"to-err\n");
    assert_eq!(status, ExitStatus::Code(0));
}

#[test]
fn exec_reports_the_exit_code() {
    let (_r, session) = connect();
    let (_, _, status) = run(&session, &sh("exit 7"));
    assert_eq!(status, ExitStatus::Code(7));
    assert_eq!(status.shell_code(), 7);
}

#[test]
fn exec_reports_death_by_signal() {
    let (_r, session) = connect();
    let (_, _, status) = run(&session, &sh("kill -TERM $$"));
    assert_eq!(status, ExitStatus::Signal(15));
    assert_eq!(status.shell_code(), 143);
}

#[test]
fn exec_delivers_a_signal_on_request() {
    let (_r, session) = connect();
    let mut proc = service::exec(&session, &ExecRequest::new(["sleep", "100"])).expect("exec");
    let stdout = proc.take_stdout();
    proc.signal(15).expect("signal");
    let status = proc.wait().expect("wait");
    drop(stdout);
    assert_eq!(status, ExitStatus::Signal(15));
}

#[test]
fn exec_passes_env_and_cwd() {
    let (_r, session) = connect();
    let dir = temp_dir("cwd");
    let mut req = sh("echo \"$GREETING\"; pwd");
    req.env = vec!["GREETING=hello there".into()];
    req.cwd = Some(dir.to_string_lossy().into_owned());
    let (out, _, status) = run(&session, &req);
    assert_eq!(status, ExitStatus::Code(0));
    let want = format!("hello there\n{}\n", dir.display());
    assert_eq!(String::from_utf8_lossy(&out), want);
}

#[test]
fn exec_runs_as_the_requested_numeric_uid_and_gid() {
    if !is_root() {
        eprintln!("skipped: changing uid needs root");
        return;
    }
    let (_r, session) = connect();
    let mut req = sh("id -u; id -g");
    req.uid = Some(65534);
    req.gid = Some(65533);
    let (out, err, status) = run(&session, &req);
    assert_eq!(String::from_utf8_lossy(&out), "65534\n65533\n", "{err:?}");
    assert_eq!(status, ExitStatus::Code(0));
}

#[test]
fn exec_sends_stdin_to_cat() {
    let (_r, session) = connect();
    let mut req = ExecRequest::new(["cat"]);
    req.stdin = true;
    let mut proc = service::exec(&session, &req).expect("exec");
    let mut stdin = proc.take_stdin().expect("stdin");
    let mut stdout = proc.take_stdout().expect("stdout");
    stdin.write_all(b"hello, cat\n").unwrap();
    drop(stdin);
    let mut out = Vec::new();
    stdout.read_to_end(&mut out).unwrap();
    assert_eq!(out, b"hello, cat\n");
    assert_eq!(proc.wait().expect("wait"), ExitStatus::Code(0));
}

#[test]
fn exec_without_stdin_gives_dev_null() {
    let (_r, session) = connect();
    let (out, _, status) = run(&session, &ExecRequest::new(["cat"]));
    assert_eq!(out, b"");
    assert_eq!(status, ExitStatus::Code(0));
}

#[test]
fn exec_moves_64_mib_through_cat_both_ways_intact() {
    const LEN: usize = 64 << 20;
    let (_r, session) = connect();
    let mut req = ExecRequest::new(["cat"]);
    req.stdin = true;
    let mut proc = service::exec(&session, &req).expect("exec");
    let mut stdin = proc.take_stdin().expect("stdin");
    let mut stdout = proc.take_stdout().expect("stdout");
    let writer = thread::spawn(move || {
        let mut buf = vec![0u8; 256 << 10];
        let (mut sent, mut crc) = (0usize, 0u32);
        while sent < LEN {
            let n = buf.len().min(LEN - sent);
            pattern(42, sent as u64, &mut buf[..n]);
            stdin.write_all(&buf[..n]).expect("write stdin");
            crc = crc32c_append(crc, &buf[..n]);
            sent += n;
        }
        stdin.shutdown_write().expect("close stdin");
        crc
    });
    let mut buf = vec![0u8; 256 << 10];
    let (mut received, mut crc) = (0usize, 0u32);
    loop {
        let n = stdout.read(&mut buf).expect("read stdout");
        if n == 0 {
            break;
        }
        crc = crc32c_append(crc, &buf[..n]);
        received += n;
    }
    let sent_crc = writer.join().unwrap();
    assert_eq!(received, LEN);
    assert_eq!(crc, sent_crc);
    assert_eq!(proc.wait().expect("wait"), ExitStatus::Code(0));
}

#[test]
fn exec_output_waits_in_pipes_for_a_late_exec_io() {
    let (_r, session) = connect();
    let req = sh("echo early; echo early-err >&2");
    let (control, reply) = session
        .open_with_reply(service::EXEC, &req.encode())
        .expect("exec");
    let reply = service::ExecReply::decode(&reply).expect("reply");
    // The process has long finished when its stdio is opened.
    thread::sleep(Duration::from_millis(300));
    let open = |fd| {
        let io = service::ExecIo {
            exec_id: reply.exec_id,
            fd,
        };
        let s = session
            .open(service::EXEC_IO, &io.encode())
            .expect("exec.io");
        s.shutdown_write().unwrap();
        s
    };
    let (mut out, mut err) = (open(1), open(2));
    let (mut a, mut b) = (Vec::new(), Vec::new());
    out.read_to_end(&mut a).unwrap();
    err.read_to_end(&mut b).unwrap();
    assert_eq!(a, b"early\n");
    assert_eq!(b, b"early-err\n");
    let mut decoder = service::ControlDecoder::new();
    let mut bytes = Vec::new();
    (&control).read_to_end(&mut bytes).unwrap();
    decoder.push(&bytes).unwrap();
    assert_eq!(
        decoder.next_msg().unwrap(),
        Some(service::ControlMsg::Exit(ExitStatus::Code(0)))
    );
}

#[test]
fn exec_refuses_a_missing_binary_with_errno_text() {
    let (_r, session) = connect();
    let err = service::exec(&session, &ExecRequest::new(["/nonexistent/vmux-nope"])).unwrap_err();
    assert_eq!(err.remote_code(), Some(ErrorCode::REFUSED), "{err}");
    assert_eq!(
        err.to_string(),
        "exec /nonexistent/vmux-nope: No such file or directory (os error 2)"
    );
    let err = service::exec(&session, &ExecRequest::new(["vmux-no-such-program"])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "exec vmux-no-such-program: No such file or directory (os error 2)"
    );
}

#[test]
fn exec_refuses_a_bad_cwd_with_errno_text() {
    let (_r, session) = connect();
    let mut req = ExecRequest::new(["true"]);
    req.cwd = Some("/nonexistent/vmux-dir".into());
    let err = service::exec(&session, &req).unwrap_err();
    assert_eq!(err.remote_code(), Some(ErrorCode::REFUSED));
    assert_eq!(
        err.to_string(),
        "exec true: cwd /nonexistent/vmux-dir: No such file or directory (os error 2)"
    );
}

#[test]
fn exec_on_a_pty_runs_in_a_terminal() {
    let (_r, session) = connect();
    let mut req = ExecRequest::new(["tty"]);
    req.pty = Some(PtySize { rows: 24, cols: 80 });
    let (out, err, status) = run(&session, &req);
    assert!(err.is_empty());
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("/dev/pts/"), "{text:?}");
    assert_eq!(status, ExitStatus::Code(0));
}

#[test]
fn exec_on_a_pty_sees_a_resize() {
    let (_r, session) = connect();
    // The resize travels on the control stream, not in the terminal's input, so the program
    // polls for it rather than being told by a line on stdin (the two streams are not ordered).
    let mut req =
        sh("stty size; while [ \"$(stty size)\" = \"24 80\" ]; do sleep 0.05; done; stty size");
    req.pty = Some(PtySize { rows: 24, cols: 80 });
    let mut proc = service::exec(&session, &req).expect("exec");
    let mut stdout = proc.take_stdout().expect("stdout");
    assert!(proc.take_stderr().is_none());
    // Wait for the first size, so the resize surely comes after it.
    let mut out = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&out).contains("24 80") {
        let n = stdout.read(&mut buf).expect("read");
        assert!(n > 0, "EOF before the first size: {out:?}");
        out.extend_from_slice(&buf[..n]);
    }
    proc.resize(50, 132).expect("resize");
    stdout.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("50 132"), "{text:?}");
    assert_eq!(proc.wait().expect("wait"), ExitStatus::Code(0));
}

#[test]
fn exec_on_a_pty_refuses_stderr() {
    let (_r, session) = connect();
    let mut req = ExecRequest::new(["sleep", "100"]);
    req.pty = Some(PtySize { rows: 24, cols: 80 });
    let proc = service::exec(&session, &req).expect("exec");
    let io = service::ExecIo {
        exec_id: proc.exec_id(),
        fd: 2,
    };
    let err = session.open(service::EXEC_IO, &io.encode()).unwrap_err();
    assert!(err.to_string().contains("no separate stderr"), "{err}");
    proc.abort().expect("abort");
}

#[test]
fn aborting_the_control_stream_kills_the_process() {
    let (_r, session) = connect();
    let proc = service::exec(&session, &sh("sleep 100; echo never")).expect("exec");
    let pid = nix::unistd::Pid::from_raw(proc.pid() as i32);
    proc.abort().expect("abort");
    // Gone once killed and reaped by the agent.
    eventually("the process to die", || {
        nix::sys::signal::kill(pid, None).is_err()
    });
}

#[test]
fn ending_the_session_kills_the_process() {
    let (reactor, session) = connect();
    let mut proc = service::exec(&session, &ExecRequest::new(["sleep", "100"])).expect("exec");
    let pid = nix::unistd::Pid::from_raw(proc.pid() as i32);
    let _stdout = proc.take_stdout();
    reactor.shutdown();
    eventually("the process to die", || {
        nix::sys::signal::kill(pid, None).is_err()
    });
}

// ----- copy -----

#[test]
fn copy_round_trip_keeps_bytes_crc_and_mode() {
    const LEN: usize = (3 << 20) + 12345;
    let (_r, session) = connect();
    let dir = temp_dir("roundtrip");
    let remote = dir.join("file.bin");
    let data = pattern_vec(7, LEN);
    let mut last = 0;
    let put = service::copy_put(
        &session,
        &data[..],
        remote.to_str().unwrap(),
        0o640,
        LEN as u64,
        &mut |n| last = n,
    )
    .expect("put");
    assert_eq!(last, LEN as u64);
    assert_eq!(put.bytes, LEN as u64);
    assert_eq!(put.crc, crc32c_append(0, &data));
    let meta = std::fs::metadata(&remote).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    assert_eq!(std::fs::read(&remote).unwrap(), data);

    let mut back = Vec::new();
    let get =
        service::copy_get(&session, remote.to_str().unwrap(), &mut back, &mut |_| {}).expect("get");
    assert_eq!(back, data);
    assert_eq!(get.bytes, LEN as u64);
    assert_eq!(get.crc, put.crc);
    assert_eq!(get.mode, 0o640);
    // Only the file itself is left: no temporary file.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
}

#[test]
fn copy_put_replaces_an_existing_file() {
    let (_r, session) = connect();
    let dir = temp_dir("replace");
    let remote = dir.join("f");
    std::fs::write(&remote, b"old contents that are longer").unwrap();
    service::copy_put(
        &session,
        &b"new"[..],
        remote.to_str().unwrap(),
        0o600,
        3,
        &mut |_| {},
    )
    .expect("put");
    assert_eq!(std::fs::read(&remote).unwrap(), b"new");
}

#[test]
fn copy_get_of_a_missing_file_is_refused_with_enoent() {
    let (_r, session) = connect();
    let err = service::copy_get(&session, "/nonexistent/x/y", Vec::new(), &mut |_| {}).unwrap_err();
    assert_eq!(err.remote_code(), Some(ErrorCode::REFUSED));
    assert_eq!(
        err.to_string(),
        "copy /nonexistent/x/y: No such file or directory (os error 2)"
    );
}

#[test]
fn copy_get_of_a_directory_is_refused_with_eisdir() {
    let (_r, session) = connect();
    let dir = temp_dir("getdir");
    let err =
        service::copy_get(&session, dir.to_str().unwrap(), Vec::new(), &mut |_| {}).unwrap_err();
    assert!(
        err.to_string().ends_with("Is a directory (os error 21)"),
        "{err}"
    );
}

#[test]
fn copy_put_where_it_cannot_write_is_refused_with_errno_text() {
    let (_r, session) = connect();
    let dir = temp_dir("denied");
    let (target, want) = if is_root() {
        // Root passes permission checks: use a path below a regular file.
        let file = dir.join("plain");
        std::fs::write(&file, b"x").unwrap();
        (file.join("y"), "Not a directory (os error 20)")
    } else {
        let locked = dir.join("locked");
        std::fs::create_dir(&locked).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o500)).unwrap();
        (locked.join("y"), "Permission denied (os error 13)")
    };
    let err = service::copy_put(
        &session,
        &b"abc"[..],
        target.to_str().unwrap(),
        0o644,
        3,
        &mut |_| {},
    )
    .unwrap_err();
    assert_eq!(err.remote_code(), Some(ErrorCode::REFUSED));
    assert_eq!(
        err.to_string(),
        format!("copy {}: {want}", target.display())
    );
}

#[test]
fn copy_put_that_fails_leaves_no_partial_file() {
    let (_r, session) = connect();
    let dir = temp_dir("atomic");
    let remote = dir.join("target");
    std::fs::write(&remote, b"original").unwrap();
    // Announce more than the source holds: the client gives up after sending part of it.
    let data = pattern_vec(3, 300 << 10);
    let err = service::copy_put(
        &session,
        &data[..],
        remote.to_str().unwrap(),
        0o644,
        1 << 20,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(matches!(err, ServiceError::InvalidRequest(_)), "{err}");
    assert_eq!(std::fs::read(&remote).unwrap(), b"original");
    // The agent removes its temporary file once it sees the abort.
    eventually("the temporary file to go", || {
        std::fs::read_dir(&dir).unwrap().count() == 1
    });
    assert_eq!(std::fs::read(&remote).unwrap(), b"original");
}

#[test]
fn copy_put_with_fewer_bytes_than_announced_fails_on_the_agent() {
    let (_r, session) = connect();
    let dir = temp_dir("short");
    let remote = dir.join("short");
    let req = service::CopyRequest::Put {
        path: remote.to_string_lossy().into_owned(),
        mode: 0o644,
        size: 10,
    };
    let (control, reply) = session
        .open_with_reply(service::COPY, &req.encode())
        .expect("copy");
    let ready = service::CopyReady::decode(&reply).expect("reply");
    let data = session
        .open(
            service::COPY_DATA,
            &service::CopyData {
                copy_id: ready.copy_id,
            }
            .encode(),
        )
        .expect("copy.data");
    (&data).write_all(b"abc").unwrap();
    data.shutdown_write().unwrap();
    let mut bytes = Vec::new();
    (&control).read_to_end(&mut bytes).unwrap();
    let mut decoder = service::ControlDecoder::new();
    decoder.push(&bytes).unwrap();
    let Some(service::ControlMsg::CopyResult(result)) = decoder.next_msg().unwrap() else {
        panic!("no copy result in {bytes:?}");
    };
    assert!(!result.ok);
    assert_eq!(
        result.message,
        format!(
            "copy {}: size mismatch: 10 bytes announced, 3 received",
            remote.display()
        )
    );
    assert!(!remote.exists());
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
}

#[test]
fn copy_data_for_an_unknown_transfer_is_refused() {
    let (_r, session) = connect();
    let args = service::CopyData { copy_id: 999_999 }.encode();
    let err = session.open(service::COPY_DATA, &args).unwrap_err();
    assert!(err.to_string().contains("no copy 999999"), "{err}");
}

// ----- forward -----

#[test]
fn forward_reaches_a_local_tcp_echo_server() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = Vec::new();
        conn.read_to_end(&mut buf).unwrap();
        conn.write_all(&buf).unwrap();
        buf.len()
    });
    let (_r, session) = connect();
    let stream = service::forward(&session, &format!("tcp://127.0.0.1:{port}")).expect("forward");
    let data = pattern_vec(9, 1 << 20);
    let mut back = Vec::new();
    // Write and read at once: a blocking write may wait for credit that only reading frees.
    thread::scope(|scope| {
        scope.spawn(|| {
            let mut w = &stream;
            w.write_all(&data).unwrap();
            stream.shutdown_write().unwrap();
        });
        let mut r = &stream;
        r.read_to_end(&mut back).unwrap();
    });
    assert_eq!(server.join().unwrap(), data.len());
    assert_eq!(back, data);
}

#[test]
fn forward_refuses_non_loopback_and_closed_ports() {
    let (_r, session) = connect();
    let err = session
        .open(service::FORWARD, b"tcp://10.1.2.3:80")
        .unwrap_err();
    assert!(err.to_string().contains("only loopback"), "{err}");
    // A port nobody listens on: bind one, note it, close it.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = service::forward(&session, &format!("tcp://127.0.0.1:{port}")).unwrap_err();
    assert_eq!(err.remote_code(), Some(ErrorCode::REFUSED));
    assert!(err.to_string().contains("Connection refused"), "{err}");
}

#[test]
fn forward_reaches_a_unix_socket() {
    let dir = temp_dir("fwd-unix");
    let path = dir.join("s.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let server = thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.write_all(b"hello from unix").unwrap();
    });
    let (_r, session) = connect();
    let mut stream =
        service::forward(&session, &format!("unix://{}", path.display())).expect("forward");
    stream.shutdown_write().unwrap();
    let mut got = Vec::new();
    stream.read_to_end(&mut got).unwrap();
    server.join().unwrap();
    assert_eq!(got, b"hello from unix");
}

// ----- errors -----

#[test]
fn unknown_service_is_refused_by_name() {
    let (_r, session) = connect();
    let err = ServiceError::from(session.open("teleport", b"").unwrap_err());
    assert_eq!(err.remote_code(), Some(ErrorCode::UNKNOWN_SERVICE));
    assert_eq!(err.to_string(), "no service named teleport");
}

#[test]
fn bad_arguments_are_refused_with_protocol() {
    let (_r, session) = connect();
    for (name, args) in [
        (service::EXEC, &b"\x01"[..]),
        (service::EXEC_IO, &b"\x01\x00"[..]),
        (service::COPY, &b"\x09"[..]),
        (service::SHUTDOWN, &b"\x07"[..]),
    ] {
        let err = ServiceError::from(session.open(name, args).unwrap_err());
        assert_eq!(
            err.remote_code(),
            Some(ErrorCode::PROTOCOL),
            "{name}: {err}"
        );
        assert!(
            err.to_string()
                .starts_with(&format!("{name}: bad arguments: ")),
            "{err}"
        );
    }
    let empty_argv = ExecRequest::new(Vec::<String>::new()).encode();
    let err = ServiceError::from(session.open(service::EXEC, &empty_argv).unwrap_err());
    assert_eq!(err.to_string(), "exec: bad arguments: argv is empty");
}

// ----- shutdown -----

#[test]
fn shutdown_acts_once_the_host_closed() {
    let (_r, session) = connect();
    service::shutdown(&session, true).expect("shutdown");
    eventually("the shutdown hook", || {
        SHUTDOWNS.lock().unwrap().contains(&true)
    });
}

#[test]
fn stdin_attached_after_a_quick_exit_is_accepted_and_discarded() {
    // A host that opens the outputs first and stdin last (the order is not ours to choose)
    // must not be refused because the program was faster.
    let (_r, session) = connect();
    let mut req = sh("exit 4");
    req.stdin = true;
    let (mut control, reply) = session
        .open_with_reply("exec", &req.encode())
        .expect("exec");
    let reply = service::ExecReply::decode(&reply).expect("reply");
    for fd in [1u8, 2] {
        let io = service::ExecIo {
            exec_id: reply.exec_id,
            fd,
        };
        let mut out = session.open("exec.io", &io.encode()).expect("output");
        out.shutdown_write().unwrap();
        let mut sink = Vec::new();
        out.read_to_end(&mut sink).unwrap();
        assert!(sink.is_empty());
    }
    // The Exit message arrives: the program is over before stdin was asked for.
    let mut buf = Vec::new();
    control.read_to_end(&mut buf).unwrap();
    assert!(!buf.is_empty(), "an Exit message");
    let io = service::ExecIo {
        exec_id: reply.exec_id,
        fd: 0,
    };
    let mut stdin = session
        .open("exec.io", &io.encode())
        .expect("late stdin is accepted");
    stdin.write_all(b"nobody reads this").unwrap();
    stdin.shutdown_write().unwrap();
    let mut rest = Vec::new();
    stdin.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

/// Detachable execs that end with nobody attached are kept for a later attach, at most 16: the
/// 17th pushes the oldest out. A kept one still delivers its output and status on attach.
#[test]
fn finished_detached_execs_are_kept_up_to_16_then_the_oldest_is_forgotten() {
    let mut ids = Vec::new();
    for n in 0..17 {
        let (reactor, session) = connect();
        let mut req = sh(&format!("sleep 0.3; echo out-{n}; exit {n}"));
        req.detach = Some(0);
        let proc = service::exec(&session, &req).expect("exec");
        ids.push(proc.exec_id());
        // The host goes away at once: the agent keeps the process.
        drop(proc);
        drop(session);
        drop(reactor);
    }
    let (_reactor, session) = connect();
    let finished = |list: &service::ExecList| {
        list.entries
            .iter()
            .filter(|e| ids.contains(&e.exec_id) && e.state != service::ExecState::Running)
            .count()
    };
    eventually("16 finished detached execs", || {
        let list = service::exec_list(&session).expect("exec.list");
        let gone = !list.entries.iter().any(|e| e.exec_id == ids[0]);
        gone && finished(&list) == 16
    });
    let list = service::exec_list(&session).expect("exec.list");
    for e in list.entries.iter().filter(|e| ids.contains(&e.exec_id)) {
        assert!(e.detachable && !e.attached, "{e:?}");
    }

    let err = service::attach(
        &session,
        &service::ExecAttach {
            exec_id: ids[0],
            offsets: [None, None],
        },
    )
    .expect_err("the oldest was forgotten");
    assert_eq!(err.remote_code(), Some(ErrorCode::REFUSED));
    assert_eq!(
        err.to_string(),
        format!(
            "exec.attach: no exec {} (unknown, or its exit was delivered)",
            ids[0]
        )
    );

    let mut proc = service::attach(
        &session,
        &service::ExecAttach {
            exec_id: ids[1],
            offsets: [None, None],
        },
    )
    .expect("attach to a kept exec");
    let mut out = Vec::new();
    proc.take_stdout().unwrap().read_to_end(&mut out).unwrap();
    let control = proc.controller();
    control.ack(1, out.len() as u64).unwrap();
    assert_eq!(proc.wait().expect("wait"), ExitStatus::Code(1));
    control.close().unwrap();
    assert_eq!(out, b"out-1\n");
    eventually("the delivered exec to be forgotten", || {
        let list = service::exec_list(&session).expect("exec.list");
        !list.entries.iter().any(|e| e.exec_id == ids[1])
    });
}
