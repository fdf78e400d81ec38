//! End-to-end tests: the real `vmux-shim` and `vmux-agent` binaries as separate processes, over a
//! unix socket and over a pty pair made by `socat` (the serial path: payload CRCs, small chunks).
//!
//! The agent binary is looked up next to the shim (`target/<profile>/vmux-agent`); `cargo test
//! --workspace` builds it before the tests run. Every process a test starts is killed by its PID
//! when the test ends, and every shim run has a watchdog, so a hang fails instead of blocking.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Generous: the machine is shared and may be loaded.
const RUN_LIMIT: Duration = Duration::from_secs(120);

fn shim_path() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vmux-shim"))
}

fn agent_path() -> PathBuf {
    let shim = shim_path();
    let agent = shim
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

/// A private temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vmux-cli-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (by its PID) and reaped on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_path(path: &Path, what: &str, proc: &mut Proc) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        if let Ok(Some(status)) = proc.0.try_wait() {
            panic!("{what} exited before creating {}: {status}", path.display());
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not create {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Which link the test runs over.
#[derive(Clone, Copy, Debug)]
enum LinkKind {
    Unix,
    Tty,
}

/// A running agent and how the shim reaches it.
struct Guest {
    /// The shim's `-c` address.
    addr: String,
    dir: TempDir,
    // Dropped in order: the agent, then socat, then the held pty end.
    _agent: Proc,
    _socat: Option<Proc>,
    _held: Option<std::fs::File>,
}

impl Guest {
    /// Starts an agent reachable over `kind`; `None` (after saying why) if socat is missing.
    fn start(kind: LinkKind) -> Option<Guest> {
        let dir = TempDir::new(match kind {
            LinkKind::Unix => "unix",
            LinkKind::Tty => "tty",
        });
        let agent_cmd = |listen: String| {
            Command::new(agent_path())
                .arg("--listen")
                .arg(listen)
                .env("VMUX_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .map(Proc)
                .expect("spawn vmux-agent")
        };
        match kind {
            LinkKind::Unix => {
                let sock = dir.path("agent.sock");
                let mut agent = agent_cmd(format!("unix://{}", sock.display()));
                wait_for_path(&sock, "vmux-agent", &mut agent);
                Some(Guest {
                    addr: format!("unix://{}", sock.display()),
                    dir,
                    _agent: agent,
                    _socat: None,
                    _held: None,
                })
            }
            LinkKind::Tty => {
                if Command::new("socat").arg("-V").output().is_err() {
                    eprintln!("SKIP: socat is not installed; the pty tests need it");
                    return None;
                }
                let (a, b) = (dir.path("pty-a"), dir.path("pty-b"));
                let mut socat = Command::new("socat")
                    .arg(format!("PTY,raw,echo=0,link={}", a.display()))
                    .arg(format!("PTY,raw,echo=0,link={}", b.display()))
                    .stdin(Stdio::null())
                    .spawn()
                    .map(Proc)
                    .expect("spawn socat");
                wait_for_path(&a, "socat", &mut socat);
                wait_for_path(&b, "socat", &mut socat);
                // Keep the host end open between shim runs: when the last opener of a pty
                // closes it, socat reads EIO on the master and exits.
                let held = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&b)
                    .expect("open the host pty end");
                let agent = agent_cmd(format!("tty://{}", a.display()));
                Some(Guest {
                    addr: format!("tty://{}", b.display()),
                    dir,
                    _agent: agent,
                    _socat: Some(socat),
                    _held: Some(held),
                })
            }
        }
    }

    fn shim(&self) -> Command {
        shim_at(&self.addr)
    }
}

fn shim_at(addr: &str) -> Command {
    let mut cmd = Command::new(shim_path());
    cmd.arg("-c").arg(addr).arg("--timeout").arg("30");
    cmd.env_remove("VMUX_ADDR").env("VMUX_LOG", "warn");
    cmd
}

/// Runs `cmd` with `input` on stdin, killing it (by PID) if it outlives [`RUN_LIMIT`].
fn run(mut cmd: Command, input: &[u8]) -> Output {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn vmux-shim");
    let pid = child.id();
    let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(1);
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(RUN_LIMIT).is_err() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            return true;
        }
        false
    });
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("wait for vmux-shim");
    let _ = done_tx.send(());
    let _ = writer.join();
    assert!(
        !watchdog.join().unwrap(),
        "vmux-shim {:?} hung for {RUN_LIMIT:?}",
        cmd.get_args().collect::<Vec<_>>()
    );
    out
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn code(status: ExitStatus) -> i32 {
    status.code().expect("vmux-shim exited by a signal")
}

/// Defines the same test over a unix socket and over a pty pair.
macro_rules! over_both_links {
    ($($name:ident => $body:ident;)*) => {
        mod over_unix {
            $(#[test] fn $name() { if let Some(g) = super::Guest::start(super::LinkKind::Unix) { super::$body(&g) } })*
        }
        mod over_tty {
            $(#[test] fn $name() { if let Some(g) = super::Guest::start(super::LinkKind::Tty) { super::$body(&g) } })*
        }
    };
}

over_both_links! {
    exec_keeps_stdout_and_stderr_apart_and_returns_the_exit_code => exec_streams_and_code;
    exec_death_by_sigterm_exits_143 => exec_signal_death;
    exec_passes_8_mib_of_stdin_through_cat_intact => exec_stdin_8mib;
    cp_copies_both_ways_and_keeps_the_mode => cp_both_ways;
    cp_dash_reads_stdin_and_writes_stdout => cp_stdio;
    forward_reaches_a_local_echo_server_through_the_guest => forward_echo;
    info_prints_the_agent_facts => info_facts;
    ping_prints_rtt_statistics => ping_stats;
}

fn exec_streams_and_code(g: &Guest) {
    let mut cmd = g.shim();
    cmd.args([
        "exec",
        "--",
        "sh",
        "-c",
        "cat >/dev/null; echo out; echo err >&2; exit 7",
    ]);
    let out = run(cmd, b"");
    assert_eq!(text(&out.stdout), "out\n");
    assert_eq!(text(&out.stderr), "err\n");
    assert_eq!(code(out.status), 7);
}

fn exec_signal_death(g: &Guest) {
    let mut cmd = g.shim();
    cmd.args(["exec", "sh", "-c", "cat >/dev/null; kill -TERM $$"]);
    let out = run(cmd, b"");
    assert_eq!(code(out.status), 143, "stderr: {}", text(&out.stderr));
}

fn exec_stdin_8mib(g: &Guest) {
    let data: Vec<u8> = (0..8u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut cmd = g.shim();
    cmd.args(["exec", "cat"]);
    let out = run(cmd, &data);
    assert_eq!(code(out.status), 0, "stderr: {}", text(&out.stderr));
    assert_eq!(out.stdout.len(), data.len());
    assert_eq!(
        crc32c::crc32c(&out.stdout),
        crc32c::crc32c(&data),
        "content differs"
    );
}

fn cp_both_ways(g: &Guest) {
    // The agent runs on this machine, so its paths are ours.
    let src = g.dir.path("src.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&src, &data).unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o750)).unwrap();
    let remote = g.dir.path("in-guest.bin");
    let mut put = g.shim();
    put.arg("cp")
        .arg(&src)
        .arg(format!(":{}", remote.display()));
    let out = run(put, b"");
    assert_eq!(code(out.status), 0, "put: {}", text(&out.stderr));
    assert_eq!(std::fs::read(&remote).unwrap(), data);
    let mode = std::fs::metadata(&remote).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o750);

    std::fs::set_permissions(&remote, std::fs::Permissions::from_mode(0o604)).unwrap();
    let back = g.dir.path("back.bin");
    let mut get = g.shim();
    get.arg("cp")
        .arg(format!(":{}", remote.display()))
        .arg(&back);
    let out = run(get, b"");
    assert_eq!(code(out.status), 0, "get: {}", text(&out.stderr));
    assert_eq!(std::fs::read(&back).unwrap(), data);
    let mode = std::fs::metadata(&back).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o604);

    let mut missing = g.shim();
    missing
        .arg("cp")
        .arg(format!(":{}", g.dir.path("nope").display()))
        .arg(g.dir.path("nope-local"));
    let out = run(missing, b"");
    assert_eq!(code(out.status), 1);
    let err = text(&out.stderr);
    assert!(err.starts_with("vmux-shim: cp :"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!g.dir.path("nope-local").exists());
}

fn cp_stdio(g: &Guest) {
    let remote = g.dir.path("from-stdin");
    let mut put = g.shim();
    put.args(["cp", "-"]).arg(format!(":{}", remote.display()));
    let out = run(put, b"piped through\n");
    assert_eq!(code(out.status), 0, "{}", text(&out.stderr));
    let mut get = g.shim();
    get.arg("cp").arg(format!(":{}", remote.display())).arg("-");
    let out = run(get, b"");
    assert_eq!(code(out.status), 0, "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "piped through\n");
}

/// An echo server on 127.0.0.1; returns its port.
fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn forward_echo(g: &Guest) {
    let echo = echo_server();
    let local = free_port();
    let mut cmd = g.shim();
    cmd.arg("forward")
        .arg(format!("tcp://127.0.0.1:{local}"))
        .arg(format!("tcp://127.0.0.1:{echo}"))
        .stdin(Stdio::null());
    let mut fwd = Proc(cmd.spawn().expect("spawn forward"));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut conn = loop {
        if let Ok(c) = TcpStream::connect(("127.0.0.1", local)) {
            break c;
        }
        if let Ok(Some(status)) = fwd.0.try_wait() {
            panic!("forward exited: {status}");
        }
        assert!(Instant::now() < deadline, "forward never listened");
        std::thread::sleep(Duration::from_millis(50));
    };
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    for round in 0..3 {
        let msg = format!("hello {round} through the guest");
        conn.write_all(msg.as_bytes()).unwrap();
        let mut back = vec![0u8; msg.len()];
        conn.read_exact(&mut back).unwrap();
        assert_eq!(text(&back), msg);
    }
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

fn info_facts(g: &Guest) {
    let mut cmd = g.shim();
    cmd.arg("info");
    let out = run(cmd, b"");
    assert_eq!(code(out.status), 0, "{}", text(&out.stderr));
    let info = text(&out.stdout);
    assert!(info.contains("agent version"), "{info}");
    assert!(info.contains("kernel"), "{info}");
}

fn ping_stats(g: &Guest) {
    let mut cmd = g.shim();
    cmd.args(["ping", "-n", "5"]);
    let out = run(cmd, b"");
    assert_eq!(code(out.status), 0, "{}", text(&out.stderr));
    let line = text(&out.stdout);
    assert!(line.starts_with("5 pings to "), "{line}");
    assert!(line.contains("median") && line.contains("p99"), "{line}");
}

/// A program that exits before its stdin was attached still reports its code (the client
/// attaches stdin before the outputs, which keep the exec alive on the agent).
#[test]
fn fast_exit_with_stdin_reports_the_exit_code() {
    let Some(g) = Guest::start(LinkKind::Unix) else {
        return;
    };
    for _ in 0..10 {
        let mut cmd = g.shim();
        cmd.args(["exec", "sh", "-c", "exit 7"]);
        let out = run(cmd, b"");
        assert_eq!(code(out.status), 7, "stderr: {}", text(&out.stderr));
    }
}

#[test]
fn serve_shares_one_pty_link_among_16_concurrent_exec_clients() {
    let Some(g) = Guest::start(LinkKind::Tty) else {
        return;
    };
    let sock = g.dir.path("serve.sock");
    let mut serve = g.shim();
    serve
        .arg("serve")
        .arg("--listen")
        .arg(format!("unix://{}", sock.display()))
        .stdin(Stdio::null());
    let mut serve = Proc(serve.spawn().expect("spawn serve"));
    wait_for_path(&sock, "vmux-shim serve", &mut serve);
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let addr = format!("unix://{}", sock.display());
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..16)
            .map(|n| {
                let addr = addr.clone();
                scope.spawn(move || {
                    let mut cmd = shim_at(&addr);
                    cmd.args([
                        "exec",
                        "sh",
                        "-c",
                        "cat; echo \" from client $0\"; echo e$0 >&2",
                    ])
                    .arg(n.to_string());
                    let input = format!("payload-{n}").repeat(1000);
                    let out = run(cmd, input.as_bytes());
                    (n, input, out)
                })
            })
            .collect();
        for h in handles {
            let (n, input, out) = h.join().unwrap();
            assert_eq!(code(out.status), 0, "client {n}: {}", text(&out.stderr));
            assert_eq!(text(&out.stdout), format!("{input} from client {n}\n"));
            assert_eq!(text(&out.stderr), format!("e{n}\n"));
        }
    });
    // serve survived all of its clients leaving: one more still works.
    let mut cmd = shim_at(&addr);
    cmd.args(["exec", "sh", "-c", "cat >/dev/null; echo still here"]);
    let out = run(cmd, b"");
    assert_eq!(text(&out.stdout), "still here\n", "{}", text(&out.stderr));
}

#[test]
fn serve_refuses_streams_while_the_guest_link_is_down() {
    let dir = TempDir::new("serve-down");
    let sock = dir.path("serve.sock");
    let mut serve = shim_at(&format!("unix://{}", dir.path("no-guest.sock").display()));
    serve
        .arg("serve")
        .arg("--listen")
        .arg(format!("unix://{}", sock.display()))
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    let mut serve = Proc(serve.spawn().expect("spawn serve"));
    wait_for_path(&sock, "vmux-shim serve", &mut serve);
    let mut cmd = shim_at(&format!("unix://{}", sock.display()));
    cmd.arg("info");
    let out = run(cmd, b"");
    assert_eq!(code(out.status), 1);
    let err = text(&out.stderr);
    assert!(err.contains("guest link down, redialing (attempt"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn unreachable_guest_is_one_line_naming_the_address() {
    let dir = TempDir::new("nobody");
    let addr = format!("unix://{}", dir.path("none.sock").display());
    let mut cmd = Command::new(shim_path());
    cmd.args(["-c", &addr, "--timeout", "0.3", "info"]);
    let out = run(cmd, b"");
    assert_eq!(code(out.status), 1);
    let err = text(&out.stderr);
    assert_eq!(
        err,
        format!(
            "vmux-shim: {addr}: no socket file yet (is the VM running?), gave up after 300 ms\n"
        )
    );
    // exec reports its own failures as 255, like ssh, so remote statuses stay distinct.
    let mut cmd = Command::new(shim_path());
    cmd.args(["-c", &addr, "--timeout", "0.1", "exec", "true"]);
    assert_eq!(code(run(cmd, b"").status), 255);
}

#[test]
fn usage_errors_exit_2_and_help_exits_0_for_every_command() {
    let out = run(
        {
            let mut c = Command::new(shim_path());
            c.arg("bogus");
            c
        },
        b"",
    );
    assert_eq!(code(out.status), 2);
    assert!(text(&out.stderr).contains("unknown command 'bogus'"));
    for args in [
        vec!["--help"],
        vec!["help"],
        vec!["help", "cp"],
        vec!["info", "--help"],
        vec!["ping", "--help"],
        vec!["exec", "--help"],
        vec!["cp", "--help"],
        vec!["forward", "--help"],
        vec!["serve", "--help"],
        vec!["shutdown", "--help"],
        vec!["doctor", "--help"],
    ] {
        let mut c = Command::new(shim_path());
        c.args(&args);
        let out = run(c, b"");
        assert_eq!(code(out.status), 0, "{args:?}");
        assert!(text(&out.stdout).contains("Usage: vmux-shim"), "{args:?}");
    }
    let mut c = Command::new(shim_path());
    c.arg("--version");
    let out = run(c, b"");
    assert_eq!(
        text(&out.stdout),
        format!("vmux-shim {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn doctor_checks_a_unix_address_without_sending_anything() {
    let dir = TempDir::new("doctor");
    let sock = dir.path("vm.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let mut c = Command::new(shim_path());
    c.arg("doctor").arg(format!("unix://{}", sock.display()));
    let out = run(c, b"");
    let report = text(&out.stdout);
    assert!(report.contains("is a socket"), "{report}");
    assert!(report.contains("accepts connections"), "{report}");
    // Connected and closed without a byte.
    let (mut conn, _) = listener.accept().unwrap();
    let mut buf = Vec::new();
    conn.read_to_end(&mut buf).unwrap();
    assert!(buf.is_empty());
    // vhost-vsock checks only warn for a unix address, so nothing FAILs here.
    assert!(!report.contains("FAIL"), "{report}");
    assert_eq!(code(out.status), 0);
}

// ----- detachable execs -----

/// What `seq 1 5000000 | head -c N` prints: the numbers from 1, one per line, cut at `len`.
fn seq_output(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 16);
    let mut n = 1u64;
    while out.len() < len {
        out.extend_from_slice(format!("{n}\n").as_bytes());
        n += 1;
    }
    out.truncate(len);
    out
}

/// Starts the shim with stdout and stderr going to files (as a consumer's would).
fn spawn_to_files(mut cmd: Command, out: &Path, err: &Path) -> Proc {
    cmd.stdin(Stdio::null())
        .stdout(std::fs::File::create(out).unwrap())
        .stderr(std::fs::File::create(err).unwrap());
    Proc(cmd.spawn().expect("spawn vmux-shim"))
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Waits until `what` holds, failing after 60 s or if `proc` exits first.
fn wait_until(what: &str, proc: &mut Proc, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        if let Ok(Some(status)) = proc.0.try_wait() {
            panic!("vmux-shim exited ({status}) before {what}");
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn read_id(path: &Path) -> String {
    let id = std::fs::read_to_string(path).unwrap();
    assert!(id.ends_with('\n'), "id file holds {id:?}");
    id.trim().to_string()
}

/// The headline scenario: a detachable exec printing 32 MiB, its shim killed with SIGKILL
/// midway, and a new shim attached with the offsets of what the first one's files hold: the
/// two files together are the whole output exactly once, and the exit code comes through.
#[test]
fn killed_shim_then_attach_with_offsets_delivers_32_mib_exactly_once() {
    if let Some(g) = Guest::start(LinkKind::Unix) {
        kill_then_attach(&g, 32 << 20, 4 << 20);
    }
}

/// The same over a pty pair, the serial path: the attaching shim is a restarted host on the
/// same session (new HELLO nonce, stream ids reused).
#[test]
fn killed_shim_then_attach_over_a_pty_delivers_4_mib_exactly_once() {
    if let Some(g) = Guest::start(LinkKind::Tty) {
        kill_then_attach(&g, 4 << 20, 256 << 10);
    }
}

/// Runs a detachable exec printing `len` bytes, kills its shim with SIGKILL once `kill_at`
/// bytes arrived, attaches with the offsets of what arrived and checks the whole.
fn kill_then_attach(g: &Guest, len: usize, kill_at: u64) {
    let script = format!("echo start >&2; seq 1 5000000 | head -c {len}; echo end >&2; exit 7");
    let (out1, err1, id_file) = (g.dir.path("out1"), g.dir.path("err1"), g.dir.path("id"));
    let mut cmd = g.shim();
    cmd.args(["exec", "--detachable", "--id-file"])
        .arg(&id_file)
        .args(["sh", "-c", &script]);
    let mut first = spawn_to_files(cmd, &out1, &err1);
    wait_until("output arrived", &mut first, || {
        id_file.exists() && file_len(&out1) >= kill_at
    });
    first.0.kill().unwrap(); // SIGKILL, by PID
    first.0.wait().unwrap();
    let id = read_id(&id_file);
    let (had_out, had_err) = (file_len(&out1), file_len(&err1));
    assert!((had_out as usize) < len, "the first shim got everything");

    let started = Instant::now();
    let mut cmd = g.shim();
    cmd.args(["attach", "--stdout-offset", &had_out.to_string()])
        .args(["--stderr-offset", &had_err.to_string(), &id]);
    let out = run(cmd, b"");
    let took = started.elapsed();
    assert_eq!(code(out.status), 7, "stderr: {}", text(&out.stderr));

    let mut stdout = std::fs::read(&out1).unwrap();
    stdout.extend_from_slice(&out.stdout);
    let mut stderr = std::fs::read(&err1).unwrap();
    stderr.extend_from_slice(&out.stderr);
    let want = seq_output(len);
    assert_eq!(stdout.len(), want.len(), "length of old + new output");
    assert!(
        stdout == want,
        "old + new output differs from the program's output"
    );
    assert_eq!(text(&stderr), "start\nend\n");
    eprintln!(
        "verified {} bytes: {had_out} from the killed shim, {} replayed and live in {took:?}",
        stdout.len(),
        out.stdout.len()
    );

    // Its exit was delivered: the agent has forgotten it.
    let mut cmd = g.shim();
    cmd.args(["attach", &id]);
    let again = run(cmd, b"");
    assert_eq!(code(again.status), 255);
    assert!(text(&again.stderr).contains(&format!("no exec {id}")));
}

/// With a 4 KiB ring and nobody attached, the program blocks once the ring is full (ps shows
/// it running, detached, 4096 bytes buffered) and an attach still gets every byte, in order.
#[test]
fn full_ring_blocks_the_program_and_attach_gets_every_byte() {
    if let Some(g) = Guest::start(LinkKind::Unix) {
        full_ring_then_attach(&g);
    }
}

#[test]
fn full_ring_blocks_the_program_and_attach_over_a_pty_gets_every_byte() {
    if let Some(g) = Guest::start(LinkKind::Tty) {
        full_ring_then_attach(&g);
    }
}

fn full_ring_then_attach(g: &Guest) {
    const LEN: usize = 300_000;
    let script = format!("sleep 1; seq 1 100000 | head -c {LEN}; echo done >&2; exit 3");
    let (out1, err1, id_file) = (g.dir.path("out1"), g.dir.path("err1"), g.dir.path("id"));
    let mut cmd = g.shim();
    cmd.args(["exec", "--detachable", "--ring", "4096", "--id-file"])
        .arg(&id_file)
        .args(["sh", "-c", &script]);
    let mut first = spawn_to_files(cmd, &out1, &err1);
    wait_until("the id file", &mut first, || id_file.exists());
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    assert_eq!(file_len(&out1), 0, "the program had not written yet");
    let id = read_id(&id_file);

    // Nobody attached: the ring fills to 4096 bytes and stays there.
    let deadline = Instant::now() + Duration::from_secs(30);
    let line = loop {
        let mut cmd = g.shim();
        cmd.arg("ps");
        let ps = run(cmd, b"");
        assert_eq!(code(ps.status), 0, "stderr: {}", text(&ps.stderr));
        let listing = text(&ps.stdout);
        assert!(listing.starts_with("  ID     PID STATE"), "{listing}");
        let line = listing
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id.as_str()))
            .unwrap_or_else(|| panic!("ps does not list exec {id}:\n{listing}"))
            .to_string();
        if line.split_whitespace().nth(5) == Some("4096") {
            break line;
        }
        assert!(Instant::now() < deadline, "the ring never filled: {line}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        cols[2..7],
        ["running", "no", "yes", "4096", "4096"],
        "{line}"
    );
    assert!(line.ends_with(&format!("sh -c {script}")), "{line}");
    std::thread::sleep(Duration::from_millis(300));
    let mut cmd = g.shim();
    cmd.arg("ps");
    let still = text(&run(cmd, b"").stdout);
    assert!(
        still.contains(&line),
        "the program went on past a full ring:\n{still}"
    );

    // Offsets the agent cannot serve are refused, naming the problem.
    let mut cmd = g.shim();
    cmd.args(["attach", "--stdout-offset", "5000", &id]);
    let beyond = run(cmd, b"");
    assert_eq!(code(beyond.status), 255);
    assert!(
        text(&beyond.stderr).contains("stdout offset 5000 is beyond the 4096 bytes produced"),
        "{}",
        text(&beyond.stderr)
    );

    let mut cmd = g.shim();
    cmd.args(["attach", &id]);
    let out = run(cmd, b"");
    assert_eq!(code(out.status), 3, "stderr: {}", text(&out.stderr));
    assert!(out.stdout == seq_output(LEN), "the output differs");
    assert_eq!(text(&out.stderr), "done\n");
}

#[test]
fn attach_to_an_unknown_exec_id_fails_naming_it() {
    let Some(g) = Guest::start(LinkKind::Unix) else {
        return;
    };
    let mut cmd = g.shim();
    cmd.args(["attach", "4242"]);
    let out = run(cmd, b"");
    assert_eq!(code(out.status), 255);
    assert_eq!(
        text(&out.stderr),
        "vmux-shim: exec.attach: no exec 4242 (unknown, or its exit was delivered)\n"
    );
    // A plain exec cannot be attached to either.
    let id_file = g.dir.path("id");
    let mut cmd = g.shim();
    cmd.args(["exec", "--id-file"])
        .arg(&id_file)
        .args(["sleep", "5"]);
    let mut plain = spawn_to_files(cmd, &g.dir.path("o"), &g.dir.path("e"));
    wait_until("the id file", &mut plain, || id_file.exists());
    let id = read_id(&id_file);
    let mut cmd = g.shim();
    cmd.args(["attach", &id]);
    let out = run(cmd, b"");
    assert_eq!(code(out.status), 255);
    assert!(text(&out.stderr).contains(&format!("exec {id} is not detachable")));
}

/// Without offsets, attach resumes after the last byte the killed shim acknowledged: what it
/// prints is the output's tail, starting no later than what the first shim wrote out. It may
/// repeat what the first shim wrote but whose acks were still in flight, never more than the
/// ring holds (the agent sends nothing beyond its ring of unacknowledged bytes).
#[test]
fn attach_without_offsets_resumes_after_the_last_acknowledged_byte() {
    let Some(g) = Guest::start(LinkKind::Unix) else {
        return;
    };
    const LEN: usize = 8 << 20;
    let script = format!("seq 1 5000000 | head -c {LEN}");
    let (out1, err1, id_file) = (g.dir.path("out1"), g.dir.path("err1"), g.dir.path("id"));
    let mut cmd = g.shim();
    cmd.args(["exec", "--detachable", "--id-file"])
        .arg(&id_file)
        .args(["sh", "-c", &script]);
    let mut first = spawn_to_files(cmd, &out1, &err1);
    wait_until("1 MiB of output arrived", &mut first, || {
        id_file.exists() && file_len(&out1) >= 1 << 20
    });
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let had = std::fs::read(&out1).unwrap();
    let id = read_id(&id_file);

    let mut cmd = g.shim();
    cmd.args(["attach", &id]);
    let out = run(cmd, b"");
    assert_eq!(code(out.status), 0, "stderr: {}", text(&out.stderr));
    let want = seq_output(LEN);
    let resumed_at = want.len() - out.stdout.len();
    assert!(
        want.ends_with(&out.stdout),
        "the attach output is not the output's tail"
    );
    assert!(
        resumed_at <= had.len(),
        "bytes {resumed_at}..{} were lost",
        had.len()
    );
    assert!(
        had.len() - resumed_at <= 1 << 20,
        "{} bytes repeated, more than the 1 MiB ring",
        had.len() - resumed_at
    );
    eprintln!(
        "resumed at {resumed_at}: {} bytes the killed shim wrote are repeated",
        had.len() - resumed_at
    );
    assert!(want.starts_with(&had));
}

/// The newest attach wins: a shim still attached is cut off (exit 255, nothing written) and the
/// new one gets the whole output and the code.
#[test]
fn a_second_attach_takes_over_from_a_live_shim() {
    let Some(g) = Guest::start(LinkKind::Unix) else {
        return;
    };
    let script = "sleep 1; seq 1 200000; exit 5";
    let (out1, err1, id_file) = (g.dir.path("out1"), g.dir.path("err1"), g.dir.path("id"));
    let mut cmd = g.shim();
    cmd.args(["exec", "--detachable", "--id-file"])
        .arg(&id_file)
        .args(["sh", "-c", script]);
    let mut first = spawn_to_files(cmd, &out1, &err1);
    wait_until("the id file", &mut first, || id_file.exists());
    let id = read_id(&id_file);

    let mut cmd = g.shim();
    cmd.args(["attach", &id]);
    let out = run(cmd, b"");
    assert_eq!(code(out.status), 5, "stderr: {}", text(&out.stderr));
    let want: String = (1..=200_000).map(|n| format!("{n}\n")).collect();
    assert!(out.stdout == want.as_bytes(), "the output differs");

    let status = first.0.wait().unwrap();
    assert_eq!(status.code(), Some(255));
    assert_eq!(file_len(&out1), 0);
    let err = std::fs::read_to_string(&err1).unwrap();
    assert_eq!(
        err,
        format!("vmux-shim: exec {id} was attached by another shim; this one lets go\n")
    );
}
