//! Measures the idle memory of a running `vmux-shim serve`: with no client, and with 1000 idle
//! streams open through it. Prints `Rss` and `Private_Dirty` from `/proc/PID/smaps_rollup`.
//!
//! The guest is a stand-in built from the library in this process (a `Server` session on a unix
//! socket that accepts every stream and holds it idle), so what is measured is `serve` alone.
//! `serve` runs with `--max-client-streams` raised to STREAMS (its default lets one client hold
//! 256; the guest's limit, 1024, caps STREAMS). If anything here fails, `serve` is killed before
//! this process exits, so a caller reading its output never waits on an orphan.
//! Run: `cargo build --release -p vmux-shim && cargo run --release -p vmux-shim --example
//! serve_idle_memory [STREAMS]`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use vmux::mux::Config;
use vmux::reactor::{random_nonce, Reactor};
use vmux::session::Session;
use vmux::transport::{self, Address, UnixLinkListener};
use vmux::wire::Role;

/// The guest's stream limit, which is also the most `--max-client-streams` accepts.
const MAX_STREAMS: usize = 1024;

/// The `serve` child, killed (by its pid) when dropped, also while a panic unwinds.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let streams: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000)
        .clamp(1, MAX_STREAMS);
    let shim = shim_binary();
    let dir = std::env::temp_dir().join(format!("vmux-serve-mem-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let guest_sock = dir.join("guest.sock");
    let serve_sock = dir.join("serve.sock");

    // The stand-in guest: accepts every stream and keeps it open, idle.
    let reactor = Reactor::spawn().expect("reactor");
    let listener = UnixLinkListener::bind(&guest_sock).expect("bind guest socket");
    let (sessions_tx, sessions_rx) = crossbeam_channel::unbounded::<Session>();
    reactor
        .handle()
        .add_listener(
            Box::new(listener),
            Box::new(|_| Config::new(Role::Server, random_nonce())),
            sessions_tx,
        )
        .expect("listener");
    let (up_tx, up_rx) = crossbeam_channel::unbounded::<()>();
    std::thread::spawn(move || {
        for session in sessions_rx {
            let up_tx = up_tx.clone();
            std::thread::spawn(move || {
                if session.wait_established(Duration::from_secs(10)).is_ok() {
                    let _ = up_tx.send(());
                }
                let mut held = Vec::new();
                while let Ok(incoming) = session.accept() {
                    if let Ok(stream) = incoming.accept(b"") {
                        held.push(stream);
                    }
                }
            });
        }
    });

    let mut serve = Serve(
        Command::new(&shim)
            .arg("-c")
            .arg(format!("unix://{}", guest_sock.display()))
            .arg("serve")
            .arg("--listen")
            .arg(format!("unix://{}", serve_sock.display()))
            .arg("--max-client-streams")
            .arg(streams.max(256).to_string())
            .spawn()
            .expect("spawn vmux-shim serve"),
    );
    let pid = serve.0.id();

    // The guest link is up once the stand-in's session completed HELLO; then let it settle.
    up_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("serve never dialed the guest");
    std::thread::sleep(Duration::from_millis(500));
    let idle = rollup(pid);

    let client = connect_client(&serve_sock, &mut serve.0);
    let start = Instant::now();
    let mut held = Vec::with_capacity(streams);
    for i in 0..streams {
        match client.open("idle", b"") {
            Ok(s) => held.push(s),
            Err(e) => panic!("stream {i}: {e}"),
        }
    }
    let opened_in = start.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let busy = rollup(pid);

    println!("vmux-shim serve (pid {pid}, {})", shim.display());
    println!(
        "  no client:            Rss {:>6} kB   Private_Dirty {:>6} kB",
        idle.rss, idle.private_dirty
    );
    println!(
        "  {streams} idle streams:    Rss {:>6} kB   Private_Dirty {:>6} kB   (opened in {:?})",
        busy.rss, busy.private_dirty, opened_in
    );
    let per = |a: u64, b: u64| (b.saturating_sub(a) * 1024) as f64 / streams as f64;
    println!(
        "  per idle stream:      Rss {:.0} B   Private_Dirty {:.0} B",
        per(idle.rss, busy.rss),
        per(idle.private_dirty, busy.private_dirty)
    );

    // Stop serve first (by its pid), so no side waits for the held streams to drain.
    drop(serve);
    drop(held);
    drop(client);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `vmux-shim` next to this example's directory (`target/<profile>/`).
fn shim_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("example lives in target/<profile>/examples");
    let shim = profile_dir.join("vmux-shim");
    if !shim.exists() {
        eprintln!(
            "{} is missing: run 'cargo build --release -p vmux-shim' first",
            shim.display()
        );
        std::process::exit(2);
    }
    shim
}

fn connect_client(serve_sock: &Path, child: &mut Child) -> Session {
    let addr: Address = format!("unix://{}", serve_sock.display())
        .parse()
        .expect("address");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("vmux-shim serve exited: {status}");
        }
        if let Ok(link) = transport::dial(&addr, Duration::from_secs(2)) {
            // The reactor must outlive the session: leak it, this program is short-lived.
            let reactor = Box::leak(Box::new(Reactor::spawn().expect("reactor")));
            let session = reactor
                .add_link(link, Config::new(Role::Client, random_nonce()))
                .expect("session");
            session
                .wait_established(Duration::from_secs(10))
                .expect("HELLO from serve");
            return session;
        }
        assert!(Instant::now() < deadline, "serve socket never appeared");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Rollup {
    rss: u64,
    private_dirty: u64,
}

fn rollup(pid: u32) -> Rollup {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).expect("smaps_rollup");
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    Rollup {
        rss: field("Rss:"),
        private_dirty: field("Private_Dirty:"),
    }
}
