//! `vmux-idle`: a minimal vmux process whose memory the footprint bench measures. It links only
//! vmux (no tokio, no yamux), so its numbers are what a small vmux program costs.
//!
//! ```text
//! vmux-idle serve PATH       listen on the unix socket PATH; accept every stream and hold it
//! vmux-idle client PATH N    connect to PATH, open N streams, print "ready", hold them until
//!                            stdin closes
//! vmux-idle bare PATH        the baseline: connect to PATH with a plain unix socket, park one
//!                            thread in a read on it (as the reactor's thread would wait), print
//!                            "ready", wait for stdin to close; no vmux at all
//! ```
//!
//! `bare` runs the same binary, so its text, relocations and libc state are the same as the vmux
//! cases': the difference is what vmux's own state costs.

use std::io::Read;
use std::path::PathBuf;
use vmux::mux::Config;
use vmux::reactor::{random_nonce, Reactor};
use vmux::transport::{Link, UnixLinkListener};
use vmux::wire::Role;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => serve(PathBuf::from(&args[1])),
        Some("client") => client(PathBuf::from(&args[1]), args[2].parse().expect("N")),
        Some("bare") => bare(PathBuf::from(&args[1])),
        _ => {
            eprintln!(
                "usage: vmux-idle serve PATH | vmux-idle client PATH N | vmux-idle bare PATH"
            );
            std::process::exit(2);
        }
    }
}

fn serve(path: PathBuf) {
    let reactor = Reactor::spawn().expect("reactor");
    let listener = UnixLinkListener::bind(&path).expect("bind");
    let (tx, rx) = crossbeam_channel::unbounded();
    reactor
        .handle()
        .add_listener(
            Box::new(listener),
            Box::new(|_| Config::new(Role::Server, random_nonce())),
            tx,
        )
        .expect("listen");
    println!("ready");
    // One session at a time is all the bench needs: hold every stream it opens.
    for session in rx {
        let mut held = Vec::new();
        while let Ok(incoming) = session.accept() {
            held.push(incoming.accept(b"").expect("accept"));
        }
    }
}

fn client(path: PathBuf, n: usize) {
    let reactor = Reactor::spawn().expect("reactor");
    let link = Link::connect_unix(&path).expect("connect");
    let session = reactor
        .add_link(link, Config::new(Role::Client, random_nonce()))
        .expect("session");
    session
        .wait_established(std::time::Duration::from_secs(10))
        .expect("established");
    let streams: Vec<_> = (0..n)
        .map(|_| session.open("idle", b"").expect("open"))
        .collect();
    println!("ready");
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(streams);
}

fn bare(path: PathBuf) {
    let mut sock = std::os::unix::net::UnixStream::connect(&path).expect("connect");
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while matches!(sock.read(&mut buf), Ok(n) if n > 0) {}
    });
    println!("ready");
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(reader);
}
