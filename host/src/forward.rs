//! `forward`: local connections to an address seen from inside the guest.
//!
//! The shim listens on a local TCP or unix address; each accepted connection opens a `forward`
//! stream to the guest target and is spliced to it by two threads (one per direction), each
//! passing a half-close on. The command runs until a signal or until the guest link is lost.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;
use nix::sys::signal::Signal;
use vmux::session::{Session, Stream};

use crate::cli::{Failure, Global, LocalListen};
use crate::connect;
use vmux::service;

/// A local connection of either kind.
pub enum Conn {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A unix-socket connection.
    Unix(UnixStream),
}

impl Conn {
    fn try_clone(&self) -> io::Result<Conn> {
        Ok(match self {
            Conn::Tcp(s) => Conn::Tcp(s.try_clone()?),
            Conn::Unix(s) => Conn::Unix(s.try_clone()?),
        })
    }

    fn shutdown(&self, how: Shutdown) {
        let _ = match self {
            Conn::Tcp(s) => s.shutdown(how),
            Conn::Unix(s) => s.shutdown(how),
        };
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A bound local listener.
enum Local {
    Tcp(TcpListener),
    Unix(UnixListener, std::path::PathBuf),
}

impl Local {
    fn bind(addr: &LocalListen) -> io::Result<Local> {
        match addr {
            LocalListen::Tcp(a) => TcpListener::bind(a).map(Local::Tcp),
            LocalListen::Unix(path) => {
                use std::os::unix::fs::FileTypeExt;
                if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
                    std::fs::remove_file(path)?;
                }
                UnixListener::bind(path).map(|l| Local::Unix(l, path.clone()))
            }
        }
    }

    fn accept(&self) -> io::Result<Conn> {
        match self {
            Local::Tcp(l) => l.accept().map(|(s, _)| {
                let _ = s.set_nodelay(true);
                Conn::Tcp(s)
            }),
            Local::Unix(l, _) => l.accept().map(|(s, _)| Conn::Unix(s)),
        }
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        if let Local::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Runs the forwarder until a signal or the loss of the guest link.
pub fn run(
    global: &Global,
    listen: &LocalListen,
    target: &str,
    signals: Receiver<Signal>,
) -> Result<u8, Failure> {
    let conn = connect::connect(global)?;
    let local = Local::bind(listen).map_err(|e| Failure::new(format!("{listen}: bind: {e}")))?;
    log::info!("forwarding {listen} to {target} in the guest");
    let session = conn.session.clone();
    let target: Arc<str> = Arc::from(target);
    let (ended_tx, ended_rx) = crossbeam_channel::bounded(1);
    let watcher = session.clone();
    std::thread::Builder::new()
        .name("link".into())
        .spawn(move || {
            let _ = ended_tx.send(watcher.wait());
        })
        .map_err(|e| Failure::new(format!("cannot start a thread: {e}")))?;
    std::thread::Builder::new()
        .name("accept".into())
        .spawn(move || accept_loop(&local, &session, &target))
        .map_err(|e| Failure::new(format!("cannot start a thread: {e}")))?;
    loop {
        crossbeam_channel::select! {
            recv(signals) -> signal => match signal {
                Ok(Signal::SIGWINCH) => continue,
                _ => {
                    conn.close(Duration::from_secs(1));
                    return Ok(0);
                }
            },
            recv(ended_rx) -> ended => {
                let why = ended.map_or_else(|_| "gone".to_string(), |t| t.to_string());
                return Err(Failure::new(format!("{}: guest link lost: {why}", conn.addr)));
            }
        }
    }
}

fn accept_loop(local: &Local, session: &Session, target: &Arc<str>) {
    loop {
        let conn = match local.accept() {
            Ok(c) => c,
            Err(e) => {
                log::warn!("accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let session = session.clone();
        let target = target.clone();
        let spawned = std::thread::Builder::new()
            .name("fwd".into())
            .spawn(move || serve_one(conn, &session, &target));
        if let Err(e) = spawned {
            log::warn!("cannot start a thread for a connection: {e}");
        }
    }
}

/// Opens the guest stream for one connection and splices the two until both directions end.
fn serve_one(conn: Conn, session: &Session, target: &str) {
    let stream = match service::forward(session, target) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            log::warn!("forward to {target}: {e}");
            return;
        }
    };
    let Ok(conn_rx) = conn.try_clone() else {
        return;
    };
    let up = {
        let stream = stream.clone();
        std::thread::Builder::new()
            .name("fwd-up".into())
            .spawn(move || local_to_guest(conn_rx, &stream))
    };
    guest_to_local(&stream, conn);
    if let Ok(h) = up {
        let _ = h.join();
    }
}

fn local_to_guest(mut conn: Conn, stream: &Stream) {
    let mut buf = vec![0u8; 32 << 10];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if (&*stream).write_all(&buf[..n]).is_err() {
                    conn.shutdown(Shutdown::Read);
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    let _ = stream.shutdown_write();
}

fn guest_to_local(stream: &Stream, mut conn: Conn) {
    let mut buf = vec![0u8; 32 << 10];
    loop {
        match (&*stream).read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    conn.shutdown(Shutdown::Write);
}
