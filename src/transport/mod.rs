//! Transports: everything that turns an address into a connected, nonblocking byte pipe ([`Link`]).
//!
//! Every link, whatever its kind, ends up as one nonblocking file descriptor that the reactor
//! registers with `mio` and reads and writes with plain `read(2)` / `write(2)`. What differs between
//! kinds (how a link is established, what a hang-up looks like) is named by [`LinkKind`] so the
//! reactor can apply it. This module owns the unix-socket transport; the others live in submodules.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

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
}

impl UnixLinkListener {
    /// Binds `path` (replacing a stale socket file) with mode 0600, nonblocking.
    pub fn bind(path: &Path) -> io::Result<UnixLinkListener> {
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
        })
    }

    /// Accepts one pending connection, or `Ok(None)` if none is waiting.
    pub fn accept(&self) -> io::Result<Option<Link>> {
        match self.listener.accept() {
            Ok((stream, _)) => {
                let peer = format!("unix://{}", self.path.display());
                Ok(Some(Link::from_unix(stream, LinkKind::Unix, peer)?))
            }
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
