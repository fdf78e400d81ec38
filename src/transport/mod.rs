//! Transports: everything that turns an address into a connected, nonblocking byte pipe ([`Link`]).
//!
//! Every link, whatever its kind, ends up as one nonblocking file descriptor that the reactor
//! registers with `mio` and reads and writes with plain `read(2)` / `write(2)`. What differs between
//! kinds (how a link is established, what a hang-up looks like) is named by [`LinkKind`] so the
//! reactor can apply it. This module owns the unix-socket transport and the entry points that turn
//! an [`Address`] into a link: [`dial`] (with a deadline, retrying a peer that is not there yet with
//! [`Backoff`]), [`listen`] / [`Listener`] (nonblocking accept, registrable with `mio`), and
//! [`open_port`] for virtio-serial ports and ttys. The other kinds live in submodules; all errors
//! are [`TransportError`]. `docs/links.md` describes each link's connect, drop and reconnect.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

pub mod address;
pub mod backoff;
pub mod error;
pub mod hvsock;
mod sys;
mod tty;
pub mod virtio_serial;
pub mod vsock;

pub use address::{Address, AddressError, VirtioPort, VsockCid};
pub use backoff::{Backoff, Redial};
pub use error::TransportError;
pub use virtio_serial::PortPaths;
pub use vsock::{CidAllowList, VsockListener};

/// The kind of a link, which decides how the reactor treats hang-ups and reconnects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// A unix stream socket (also the host side of a QEMU chardev).
    Unix,
    /// An AF_VSOCK stream socket (inside a guest only, on this project's machines).
    Vsock,
    /// The host side of a Firecracker / Cloud Hypervisor hybrid vsock (a unix socket after `CONNECT`).
    Hvsock,
    /// A virtio-serial port inside the guest: survives host reconnects, POLLHUP while no host.
    VirtioSerial,
    /// A UART or pty: no hang-up signal at all.
    Tty,
}

impl LinkKind {
    /// Whether the link is a serial line that may carry noise and needs payload CRCs.
    pub fn is_serial(self) -> bool {
        matches!(self, LinkKind::VirtioSerial | LinkKind::Tty)
    }

    /// A short lowercase name, as used in addresses and logs.
    pub fn name(self) -> &'static str {
        match self {
            LinkKind::Unix => "unix",
            LinkKind::Vsock => "vsock",
            LinkKind::Hvsock => "hvsock",
            LinkKind::VirtioSerial => "virtio-serial",
            LinkKind::Tty => "tty",
        }
    }
}

impl fmt::Display for LinkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A connected, nonblocking byte pipe to the peer.
#[derive(Debug)]
pub struct Link {
    fd: OwnedFd,
    kind: LinkKind,
    peer: String,
}

impl Link {
    /// Wraps a connected fd, setting it nonblocking and close-on-exec.
    pub fn from_fd(fd: OwnedFd, kind: LinkKind, peer: impl Into<String>) -> io::Result<Link> {
        set_nonblocking(fd.as_fd())?;
        set_cloexec(fd.as_fd())?;
        Ok(Link {
            fd,
            kind,
            peer: peer.into(),
        })
    }

    /// Wraps a connected unix stream.
    pub fn from_unix(
        stream: UnixStream,
        kind: LinkKind,
        peer: impl Into<String>,
    ) -> io::Result<Link> {
        Link::from_fd(OwnedFd::from(stream), kind, peer)
    }

    /// A connected pair of unix-socket links, for tests and in-process peers.
    pub fn pair() -> io::Result<(Link, Link)> {
        let (a, b) = UnixStream::pair()?;
        Ok((
            Link::from_unix(a, LinkKind::Unix, "pair")?,
            Link::from_unix(b, LinkKind::Unix, "pair")?,
        ))
    }

    /// Dials a unix socket at `path`.
    pub fn connect_unix(path: &Path) -> io::Result<Link> {
        let stream = UnixStream::connect(path)?;
        Link::from_unix(stream, LinkKind::Unix, format!("unix://{}", path.display()))
    }

    /// The link's kind.
    pub fn kind(&self) -> LinkKind {
        self.kind
    }

    /// A human-readable description of the peer (an address).
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Half-closes the write side where the kind supports it (sockets); a no-op otherwise.
    pub fn shutdown_write(&self) -> io::Result<()> {
        match self.kind {
            LinkKind::Unix | LinkKind::Vsock | LinkKind::Hvsock => {
                nix::sys::socket::shutdown(self.fd.as_raw_fd(), nix::sys::socket::Shutdown::Write)
                    .map_err(io::Error::from)
            }
            LinkKind::VirtioSerial | LinkKind::Tty => Ok(()),
        }
    }
}

impl Read for Link {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match nix::unistd::read(self.fd.as_fd(), buf) {
                Ok(n) => return Ok(n),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl Write for Link {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match nix::unistd::write(self.fd.as_fd(), buf) {
                Ok(n) => return Ok(n),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for Link {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for Link {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A listening unix socket, created with mode 0600, whose accepted connections become [`Link`]s.
#[derive(Debug)]
pub struct UnixLinkListener {
    listener: UnixListener,
    path: std::path::PathBuf,
    kind: LinkKind,
    peer: String,
}

impl UnixLinkListener {
    /// Binds `path` (replacing a stale socket file) with mode 0600, nonblocking.
    pub fn bind(path: &Path) -> io::Result<UnixLinkListener> {
        let peer = format!("unix://{}", path.display());
        UnixLinkListener::bind_as(path, LinkKind::Unix, peer)
    }

    /// Like [`UnixLinkListener::bind`], but accepted links get `kind` and the peer name `peer`.
    pub(crate) fn bind_as(
        path: &Path,
        kind: LinkKind,
        peer: String,
    ) -> io::Result<UnixLinkListener> {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if meta.file_type().is_socket() {
                std::fs::remove_file(path)?;
            }
        }
        // Create the socket with no group/other bits from the start, then make sure of 0600.
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(path);
        nix::sys::stat::umask(old);
        let listener = bound?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        Ok(UnixLinkListener {
            listener,
            path: path.to_path_buf(),
            kind,
            peer,
        })
    }

    /// Accepts one pending connection, or `Ok(None)` if none is waiting.
    pub fn accept(&self) -> io::Result<Option<Link>> {
        match self.listener.accept() {
            Ok((stream, _)) => Ok(Some(Link::from_unix(stream, self.kind, self.peer.clone())?)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The path the listener is bound to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl AsRawFd for UnixLinkListener {
    fn as_raw_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }
}

impl Drop for UnixLinkListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A listening endpoint of any kind; accepted connections become [`Link`]s, each its own session.
#[derive(Debug)]
pub enum Listener {
    /// A unix socket (mode 0600).
    Unix(UnixLinkListener),
    /// The host's end of guest-initiated hybrid vsock: a unix socket on `PATH_PORT`, no handshake.
    Hvsock(UnixLinkListener),
    /// An AF_VSOCK listener with a peer CID allow-list.
    Vsock(VsockListener),
}

impl Listener {
    /// Accepts one pending connection, or `Ok(None)` if none is waiting (never blocks).
    pub fn accept(&self) -> Result<Option<Link>, TransportError> {
        match self {
            Listener::Unix(l) | Listener::Hvsock(l) => match l.accept() {
                Ok(link) => Ok(link),
                // The client went away between its connect and our accept: nothing to hand out.
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => Ok(None),
                Err(e) => Err(TransportError::io(l.path().display(), "accept", e)),
            },
            Listener::Vsock(l) => l.accept(),
        }
    }

    /// The kind of the links this listener accepts.
    pub fn link_kind(&self) -> LinkKind {
        match self {
            Listener::Unix(_) => LinkKind::Unix,
            Listener::Hvsock(_) => LinkKind::Hvsock,
            Listener::Vsock(_) => LinkKind::Vsock,
        }
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Listener::Unix(l) | Listener::Hvsock(l) => l.as_raw_fd(),
            Listener::Vsock(l) => l.as_raw_fd(),
        }
    }
}

/// Listens on `addr`: `unix://PATH`, `hvsock://PATH:PORT` (binds `PATH_PORT`), or
/// `vsock://any:PORT` admitting only the host (CID 2); see [`listen_vsock`] for other CIDs.
pub fn listen(addr: &Address) -> Result<Listener, TransportError> {
    match addr {
        Address::Unix { path } => UnixLinkListener::bind(path)
            .map(Listener::Unix)
            .map_err(|e| TransportError::io(addr, "bind", e)),
        Address::Hvsock { path, port } => {
            let socket = hvsock::listen_path(path, *port);
            UnixLinkListener::bind_as(&socket, LinkKind::Hvsock, addr.to_string())
                .map(Listener::Hvsock)
                .map_err(|e| {
                    TransportError::io(format!("{addr} ({})", socket.display()), "bind", e)
                })
        }
        Address::Vsock { cid, port } => listen_vsock(*cid, *port, CidAllowList::host_only()),
        Address::VirtioSerial { .. } | Address::Tty { .. } => Err(TransportError::Unsupported {
            addr: addr.to_string(),
            why: "a port is opened, not listened on: use open_port",
        }),
    }
}

/// Listens on vsock `cid:port`, admitting only peers whose CID is in `allow`.
pub fn listen_vsock(
    cid: VsockCid,
    port: u32,
    allow: CidAllowList,
) -> Result<Listener, TransportError> {
    VsockListener::bind(cid, port, allow).map(Listener::Vsock)
}

/// Dials `addr` (`vsock://CID:PORT`, `hvsock://PATH:PORT` or `unix://PATH`), retrying while the
/// peer is not there yet (no socket file, connection refused or reset, hvsock EOF before `OK`)
/// with [`Backoff::default`] delays until `timeout` has passed. Other failures return at once.
pub fn dial(addr: &Address, timeout: Duration) -> Result<Link, TransportError> {
    let name = addr.to_string();
    match addr {
        Address::Unix { path } => retry_until(&name, timeout, |_| {
            let fd = sys::connect_unix(path).map_err(|e| unix_connect_failure(&name, e))?;
            Link::from_fd(fd, LinkKind::Unix, name.as_str())
                .map_err(|e| Attempt::Fail(TransportError::io(&name, "configure", e)))
        }),
        Address::Hvsock { path, port } => retry_until(&name, timeout, |deadline| {
            hvsock::attempt(path, *port, &name, deadline)
        }),
        Address::Vsock {
            cid: VsockCid::Id(cid),
            port,
        } => retry_until(&name, timeout, |deadline| {
            vsock::attempt(*cid, *port, &name, deadline)
        }),
        Address::Vsock {
            cid: VsockCid::Any, ..
        } => Err(TransportError::Unsupported {
            addr: name,
            why: "cannot dial CID any: name the peer's CID (2 for the host, 3 and up for a guest)",
        }),
        Address::VirtioSerial { .. } | Address::Tty { .. } => Err(TransportError::Unsupported {
            addr: name,
            why: "a port is opened, not dialed: use open_port",
        }),
    }
}

/// Opens a port-like link: `virtio-serial://NAME` (guest) or `tty://PATH[?baud=N]`.
pub fn open_port(addr: &Address) -> Result<Link, TransportError> {
    open_port_in(addr, &PortPaths::default())
}

/// Like [`open_port`], resolving virtio-serial names under `paths` instead of `/sys` and `/dev`.
pub fn open_port_in(addr: &Address, paths: &PortPaths) -> Result<Link, TransportError> {
    let name = addr.to_string();
    match addr {
        Address::VirtioSerial { port } => virtio_serial::open_port(port, &name, paths),
        Address::Tty { path, baud } => tty::open_port(path, *baud, &name),
        Address::Vsock { .. } | Address::Hvsock { .. } | Address::Unix { .. } => {
            Err(TransportError::Unsupported {
                addr: name,
                why: "a socket is dialed or listened on, not opened: use dial or listen",
            })
        }
    }
}

/// The outcome of one failed dial attempt, as the retry loop sees it.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// The peer is not there yet; worth another try after a delay.
    Retry {
        /// What the attempt found, in words, for the final error.
        reason: &'static str,
        /// The attempt's error.
        source: io::Error,
    },
    /// The attempt reached the deadline while waiting for the peer.
    TimedOut {
        /// What it was waiting for.
        waiting_for: &'static str,
    },
    /// A failure that retrying cannot fix.
    Fail(TransportError),
}

/// Runs `attempt` (given the overall deadline) until it succeeds, fails for good, or the next
/// backoff delay would end past the deadline.
pub(crate) fn retry_until(
    addr: &str,
    timeout: Duration,
    mut attempt: impl FnMut(std::time::Instant) -> Result<Link, Attempt>,
) -> Result<Link, TransportError> {
    let deadline = sys::deadline_after(timeout);
    let mut backoff = Backoff::default();
    loop {
        match attempt(deadline) {
            Ok(link) => return Ok(link),
            Err(Attempt::Fail(e)) => return Err(e),
            Err(Attempt::TimedOut { waiting_for }) => {
                return Err(TransportError::TimedOut {
                    addr: addr.to_string(),
                    waiting_for,
                    after: timeout,
                })
            }
            Err(Attempt::Retry { reason, source }) => {
                let delay = backoff.next_delay();
                if std::time::Instant::now() + delay >= deadline {
                    return Err(TransportError::GaveUp {
                        addr: addr.to_string(),
                        reason,
                        after: timeout,
                        source,
                    });
                }
                log::debug!("{addr}: {reason}; retrying in {delay:?}");
                std::thread::sleep(delay);
            }
        }
    }
}

/// Classifies a failed unix connect: absent or busy listeners are retried, the rest is final.
pub(crate) fn unix_connect_failure(addr: &str, e: io::Error) -> Attempt {
    let reason = match e.raw_os_error().map(nix::errno::Errno::from_raw) {
        Some(nix::errno::Errno::ENOENT) => "no socket file yet (is the VM running?)",
        Some(nix::errno::Errno::ECONNREFUSED) => {
            "nobody accepting on the socket (connection refused)"
        }
        Some(nix::errno::Errno::EAGAIN) => "the listener's backlog is full",
        _ => return Attempt::Fail(TransportError::io(addr, "connect", e)),
    };
    Attempt::Retry { reason, source: e }
}

/// Sets `O_NONBLOCK` on `fd`.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Sets `FD_CLOEXEC` on `fd`.
pub fn set_cloexec(fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_moves_bytes_nonblocking() {
        let (mut a, mut b) = Link::pair().unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(
            b.read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        a.write_all(b"hello").unwrap();
        assert_eq!(b.read(&mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"hello");
    }

    fn absent() -> Attempt {
        Attempt::Retry {
            reason: "nobody there",
            source: io::ErrorKind::ConnectionRefused.into(),
        }
    }

    #[test]
    fn retry_until_retries_absent_peers_until_one_answers() {
        let mut calls = 0;
        let link = retry_until("test://x", Duration::from_secs(60), |_| {
            calls += 1;
            if calls < 3 {
                Err(absent())
            } else {
                Ok(Link::pair().unwrap().0)
            }
        });
        assert!(link.is_ok());
        assert_eq!(calls, 3);
    }

    #[test]
    fn retry_until_does_not_retry_fatal_errors() {
        let mut calls = 0;
        let err = retry_until("test://x", Duration::from_secs(60), |_| {
            calls += 1;
            Err(Attempt::Fail(TransportError::io(
                "test://x",
                "connect",
                io::ErrorKind::PermissionDenied.into(),
            )))
        })
        .unwrap_err();
        assert_eq!(calls, 1);
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
    }

    #[test]
    fn retry_until_with_zero_timeout_tries_once_and_gives_up() {
        let mut calls = 0;
        let err = retry_until("test://x", Duration::ZERO, |_| {
            calls += 1;
            Err(absent())
        })
        .unwrap_err();
        assert_eq!(calls, 1);
        assert_eq!(
            err.to_string(),
            "test://x: nobody there, gave up after 0 ms"
        );
    }

    #[test]
    fn listener_socket_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("vmux-t-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("l.sock");
        let listener = UnixLinkListener::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(listener.accept().unwrap().is_none());
        let _client = Link::connect_unix(&path).unwrap();
        assert!(listener.accept().unwrap().is_some());
        drop(listener);
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
