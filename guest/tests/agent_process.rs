//! The agent binary as a normal process: `--listen unix://PATH` serves sessions, `info` and
//! `exec` answer through it, and `shutdown` makes it exit with status 0.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmux::mux::Config;
use vmux::reactor::{random_nonce, Reactor};
use vmux::service::{self, ExecRequest, ExitStatus};
use vmux::transport::{self, Address};
use vmux::wire::Role;

#[test]
fn agent_process_serves_a_unix_socket_and_exits_on_shutdown() {
    let dir = std::env::temp_dir().join(format!("vmux-agent-proc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock: PathBuf = dir.join("agent.sock");
    let mut agent = Command::new(env!("CARGO_BIN_EXE_vmux-agent"))
        .args([
            "--listen",
            &format!("unix://{}", sock.display()),
            "--log",
            "debug",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the agent");

    let addr: Address = format!("unix://{}", sock.display()).parse().unwrap();
    let link = transport::dial(&addr, Duration::from_secs(60)).expect("dial the agent");
    let reactor = Reactor::spawn().unwrap();
    let session = reactor
        .add_link(link, Config::new(Role::Client, random_nonce()))
        .unwrap();

    let info = service::info(&session).expect("info");
    assert_eq!(info.link_kind.as_deref(), Some("unix"));
    assert_eq!(info.pid1, Some(false));

    let mut proc =
        service::exec(&session, &ExecRequest::new(["sh", "-c", "echo hi; exit 5"])).expect("exec");
    let mut out = String::new();
    proc.take_stdout()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(out, "hi\n");
    assert_eq!(proc.wait().expect("wait"), ExitStatus::Code(5));

    service::shutdown(&session, false).expect("shutdown");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = agent.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = agent.kill();
            panic!("the agent did not exit after shutdown");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut log = String::new();
    agent
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("serving on unix://"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}
