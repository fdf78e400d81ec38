//! tty links over pseudo-terminals: `openpty` pairs, and two ptys joined by socat the way a host
//! joins a guest's UART to a socket. Every byte value must pass unchanged in both directions.
//!
//! The socat test needs `socat` on `PATH`; without it, it prints a message and passes vacuously.
//! The project's CI installs socat (`apt-get install socat`), so it runs there.
//!
//! Bytes written before the other side opened and configured its end are the caller's problem (the
//! protocol's HELLO exchange resynchronises): these tests open both ends before writing. A pty
//! master is kept open until its slave's reader is done, since closing it discards unread bytes.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vmux::transport::{open_port, Address, Link, LinkKind};

const PATIENT: Duration = Duration::from_secs(30);

fn every_byte() -> Vec<u8> {
    (0..=255u8).collect()
}

fn wait(fd: impl AsFd, flags: PollFlags) {
    let mut fds = [PollFd::new(fd.as_fd(), flags)];
    let _ = poll(&mut fds, PollTimeout::from(1000u16));
}

/// Writes all of `data` to a nonblocking link, waiting for room.
fn write_link(link: &mut Link, mut data: &[u8]) {
    let deadline = Instant::now() + PATIENT;
    while !data.is_empty() {
        assert!(Instant::now() < deadline, "write timed out");
        match link.write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait(&*link, PollFlags::POLLOUT),
            Err(e) => panic!("write: {e}"),
        }
    }
}

/// Reads exactly `n` bytes from a nonblocking link.
fn read_link(link: &mut Link, n: usize) -> Vec<u8> {
    let deadline = Instant::now() + PATIENT;
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "read timed out with {} bytes",
            out.len()
        );
        match link.read(&mut buf[..(n - out.len()).min(512)]) {
            Ok(0) => panic!("EOF after {} bytes", out.len()),
            Ok(k) => out.extend_from_slice(&buf[..k]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait(&*link, PollFlags::POLLIN),
            Err(e) => panic!("read: {e}"),
        }
    }
    out
}

/// Reads exactly `n` bytes from a (blocking) pty master, polling first so a bug cannot hang the test.
fn read_master(master: &OwnedFd, n: usize) -> Vec<u8> {
    let deadline = Instant::now() + PATIENT;
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "read timed out with {} bytes",
            out.len()
        );
        let mut fds = [PollFd::new(master.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::from(1000u16)).unwrap() == 0 {
            continue;
        }
        let k = nix::unistd::read(master, &mut buf[..(n - out.len()).min(512)]).unwrap();
        out.extend_from_slice(&buf[..k]);
    }
    out
}

fn slave_path(slave: &OwnedFd) -> PathBuf {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", slave.as_raw_fd())).unwrap()
}

fn tty_addr(path: &Path) -> Address {
    format!("tty://{}", path.display()).parse().unwrap()
}

#[test]
fn openpty_link_passes_every_byte_value_both_ways() {
    let pty = nix::pty::openpty(None, None).unwrap();
    let mut link = open_port(&tty_addr(&slave_path(&pty.slave))).unwrap();
    assert_eq!(link.kind(), LinkKind::Tty);

    // master → link
    let sent = every_byte();
    let mut written = 0;
    while written < sent.len() {
        written += nix::unistd::write(&pty.master, &sent[written..]).unwrap();
    }
    assert_eq!(read_link(&mut link, sent.len()), sent);

    // link → master
    write_link(&mut link, &sent);
    assert_eq!(read_master(&pty.master, sent.len()), sent);
}

/// A socat process joining two ptys, killed (by its PID) on drop.
struct Socat {
    child: Child,
    dir: PathBuf,
}

impl Socat {
    fn start() -> Option<Socat> {
        let dir = std::env::temp_dir().join(format!("vmux-socat-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let end = |name: &str| format!("PTY,raw,echo=0,link={}", dir.join(name).display());
        let child = match Command::new("socat")
            .arg(end("a"))
            .arg(end("b"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(child) => child,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => panic!("spawning socat: {e}"),
        };
        let socat = Socat { child, dir };
        let deadline = Instant::now() + PATIENT;
        while !(socat.end("a").exists() && socat.end("b").exists()) {
            assert!(Instant::now() < deadline, "socat did not create its ptys");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(socat)
    }

    fn end(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Socat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn socat_joined_ptys_pass_every_byte_value_both_ways() {
    let Some(socat) = Socat::start() else {
        println!("SKIPPED: socat is not installed (CI installs it: apt-get install socat)");
        return;
    };
    let mut a = open_port(&tty_addr(&socat.end("a"))).unwrap();
    let mut b = open_port(&tty_addr(&socat.end("b"))).unwrap();

    let mut sent = every_byte();
    write_link(&mut a, &sent);
    assert_eq!(read_link(&mut b, sent.len()), sent);

    sent.reverse();
    write_link(&mut b, &sent);
    assert_eq!(read_link(&mut a, sent.len()), sent);

    // A larger transfer, more than a pty buffer holds, interleaving writes and reads.
    let big: Vec<u8> = (0..64 * 1024).map(|i| (i * 7 % 256) as u8).collect();
    let mut got = Vec::new();
    let mut off = 0;
    let deadline = Instant::now() + PATIENT;
    let mut buf = [0u8; 4096];
    while got.len() < big.len() {
        assert!(
            Instant::now() < deadline,
            "transfer stalled at {} bytes",
            got.len()
        );
        if off < big.len() {
            match a.write(&big[off..]) {
                Ok(n) => off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("write: {e}"),
            }
        }
        match b.read(&mut buf) {
            Ok(0) => panic!("EOF"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait(&b, PollFlags::POLLIN),
            Err(e) => panic!("read: {e}"),
        }
    }
    assert!(got == big, "64 KiB transfer corrupted");
}
