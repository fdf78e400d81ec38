//! Hybrid vsock (Firecracker, Cloud Hypervisor, vhost-device-vsock): the host side of a guest's
//! vsock exposed as a unix socket by the VMM.
//!
//! Host → guest: connect to the VMM's socket `PATH`, send `CONNECT <port>\n`, and read exactly one
//! `OK <n>\n` line. The client sends nothing before that reply (the muxer drops bytes that arrive
//! with the CONNECT line) and reads nothing past its newline (what follows is the session). `n` is
//! not checked: vhost-device-vsock answers the guest port, Firecracker the host-side port. A muxer
//! that closes (EOF) or resets the connection before replying has no agent listening on that port
//! yet, so the dial is retried with [`Backoff`](super::Backoff) until its deadline. Anything else
//! in place of the reply is an error at once.
//!
//! Guest → host: the guest dials CID 2 port `P` and the VMM connects to the unix socket `PATH_P`,
//! with no handshake line; [`listen_path`] names it and the host listens there.
//!
//! The reply parser, [`ReplyParser`], is sans-I/O: bytes in, [`Progress`] out.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::errno::Errno;
use nix::poll::PollFlags;
use nix::sys::socket::{recv, send, MsgFlags};

use super::error::TransportError;
use super::{sys, Attempt, Link, LinkKind};

/// The longest reply line accepted, newline included.
pub const MAX_REPLY_LEN: usize = 32;

/// What the reply parser needs next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The line is not complete yet: feed more bytes.
    NeedMore,
    /// A well-formed `OK <n>\n` was read; `n` is the number the muxer sent.
    Ok(u32),
}

/// How a reply to `CONNECT` was malformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    /// The bytes so far (ending with the offending one) cannot start `OK <n>\n`.
    Malformed(Vec<u8>),
    /// No newline within [`MAX_REPLY_LEN`] bytes.
    TooLong(Vec<u8>),
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Malformed(got) => {
                write!(
                    f,
                    "expected \"OK <port>\\n\", got \"{}\"",
                    got.escape_ascii()
                )
            }
            HandshakeError::TooLong(got) => write!(
                f,
                "no newline within {MAX_REPLY_LEN} bytes: \"{}\"",
                got.escape_ascii()
            ),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// Parses the muxer's `OK <n>\n` reply from bytes fed in any chunking, never consuming past the newline.
#[derive(Debug, Clone, Default)]
pub struct ReplyParser {
    seen: Vec<u8>,
    digits: usize,
    value: u64,
    done: Option<u32>,
}

impl ReplyParser {
    /// A parser that has seen nothing.
    pub fn new() -> ReplyParser {
        ReplyParser::default()
    }

    /// Feeds `input`; returns how many bytes were consumed (up to and including the newline) and
    /// the progress. Bytes after the newline are not consumed: they belong to the session.
    pub fn feed(&mut self, input: &[u8]) -> Result<(usize, Progress), HandshakeError> {
        if let Some(n) = self.done {
            return Ok((0, Progress::Ok(n)));
        }
        for (i, &byte) in input.iter().enumerate() {
            if self.seen.len() == MAX_REPLY_LEN {
                return Err(HandshakeError::TooLong(self.seen.clone()));
            }
            self.seen.push(byte);
            match (self.seen.len(), byte) {
                (1, b'O') | (2, b'K') | (3, b' ') => {}
                (4.., b'0'..=b'9') => {
                    self.digits += 1;
                    self.value = self.value * 10 + u64::from(byte - b'0');
                    if self.value > u64::from(u32::MAX) {
                        return Err(HandshakeError::Malformed(self.seen.clone()));
                    }
                }
                (4.., b'\n') if self.digits > 0 => {
                    // `value` fits: it was checked against u32::MAX on every digit.
                    let n = u32::try_from(self.value).unwrap_or(u32::MAX);
                    self.done = Some(n);
                    return Ok((i + 1, Progress::Ok(n)));
                }
                _ => return Err(HandshakeError::Malformed(self.seen.clone())),
            }
        }
        Ok((input.len(), Progress::NeedMore))
    }
}

/// The unix socket path the VMM dials when the guest connects to host port `port`: `PATH_PORT`.
pub fn listen_path(path: &Path, port: u32) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(format!("_{port}"));
    PathBuf::from(name)
}

/// The `CONNECT` request line for `port`.
pub fn connect_line(port: u32) -> String {
    format!("CONNECT {port}\n")
}

/// One host → guest dial attempt: connect, send `CONNECT`, read the reply byte-accurately.
pub(crate) fn attempt(
    path: &Path,
    port: u32,
    addr: &str,
    deadline: Instant,
) -> Result<Link, Attempt> {
    let fd = sys::connect_unix(path).map_err(|e| super::unix_connect_failure(addr, e))?;
    send_all(&fd, connect_line(port).as_bytes(), addr, deadline)?;
    read_reply(&fd, addr, deadline)?;
    Link::from_fd(fd, LinkKind::Hvsock, addr)
        .map_err(|e| Attempt::Fail(TransportError::io(addr, "configure", e)))
}

fn send_all(fd: &OwnedFd, mut bytes: &[u8], addr: &str, deadline: Instant) -> Result<(), Attempt> {
    while !bytes.is_empty() {
        match send(sys::raw(fd), bytes, MsgFlags::MSG_NOSIGNAL) {
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => match sys::wait_ready(fd.as_fd(), PollFlags::POLLOUT, deadline) {
                Ok(true) => {}
                Ok(false) => {
                    return Err(Attempt::TimedOut {
                        waiting_for: "the muxer to take CONNECT",
                    })
                }
                Err(e) => return Err(Attempt::Fail(TransportError::io(addr, "poll", e))),
            },
            Err(e @ (Errno::EPIPE | Errno::ECONNRESET)) => {
                return Err(Attempt::Retry {
                    reason: "the muxer closed the connection before CONNECT was sent",
                    source: e.into(),
                })
            }
            Err(e) => return Err(Attempt::Fail(TransportError::io(addr, "send", e.into()))),
        }
    }
    Ok(())
}

/// Reads the reply line: peeks at what is buffered, lets the parser decide how much belongs to
/// the line, and consumes exactly that much, so session bytes that follow stay in the socket.
fn read_reply(fd: &OwnedFd, addr: &str, deadline: Instant) -> Result<u32, Attempt> {
    let mut parser = ReplyParser::new();
    let mut buf = [0u8; MAX_REPLY_LEN];
    loop {
        match sys::wait_ready(fd.as_fd(), PollFlags::POLLIN, deadline) {
            Ok(true) => {}
            Ok(false) => {
                return Err(Attempt::TimedOut {
                    waiting_for: "the OK reply to CONNECT",
                })
            }
            Err(e) => return Err(Attempt::Fail(TransportError::io(addr, "poll", e))),
        }
        let n = match recv(sys::raw(fd), &mut buf, MsgFlags::MSG_PEEK) {
            Ok(0) => {
                return Err(Attempt::Retry {
                    reason: "no agent listening in the guest (closed before OK)",
                    source: io::Error::new(io::ErrorKind::UnexpectedEof, "closed before OK"),
                })
            }
            Ok(n) => n,
            Err(Errno::EINTR | Errno::EAGAIN) => continue,
            Err(e @ Errno::ECONNRESET) => {
                return Err(Attempt::Retry {
                    reason: "the guest is not ready (connection reset before OK)",
                    source: e.into(),
                })
            }
            Err(e) => return Err(Attempt::Fail(TransportError::io(addr, "recv", e.into()))),
        };
        let (used, progress) = parser.feed(&buf[..n]).map_err(|error| {
            Attempt::Fail(TransportError::Handshake {
                addr: addr.to_string(),
                error,
            })
        })?;
        consume(fd, used).map_err(|e| Attempt::Fail(TransportError::io(addr, "recv", e)))?;
        if let Progress::Ok(n) = progress {
            return Ok(n);
        }
    }
}

/// Removes `len` bytes that a peek just showed are buffered.
fn consume(fd: &OwnedFd, mut len: usize) -> io::Result<()> {
    let mut sink = [0u8; MAX_REPLY_LEN];
    while len > 0 {
        let want = len.min(sink.len());
        match recv(sys::raw(fd), &mut sink[..want], MsgFlags::empty()) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => len -= n,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(chunks: &[&[u8]]) -> Result<(usize, Progress), HandshakeError> {
        let mut p = ReplyParser::new();
        let mut total = 0;
        let mut last = Progress::NeedMore;
        for chunk in chunks {
            let (used, progress) = p.feed(chunk)?;
            total += used;
            last = progress;
        }
        Ok((total, last))
    }

    #[test]
    fn whole_reply_is_accepted() {
        assert_eq!(feed_all(&[b"OK 1024\n"]), Ok((8, Progress::Ok(1024))));
        assert_eq!(feed_all(&[b"OK 0\n"]), Ok((5, Progress::Ok(0))));
        assert_eq!(
            feed_all(&[b"OK 4294967295\n"]),
            Ok((14, Progress::Ok(u32::MAX)))
        );
    }

    #[test]
    fn reply_in_one_byte_fragments_is_accepted() {
        let mut p = ReplyParser::new();
        let reply = b"OK 52\n";
        for (i, b) in reply.iter().enumerate() {
            let (used, progress) = p.feed(std::slice::from_ref(b)).unwrap();
            assert_eq!(used, 1);
            if i + 1 < reply.len() {
                assert_eq!(progress, Progress::NeedMore);
            } else {
                assert_eq!(progress, Progress::Ok(52));
            }
        }
    }

    #[test]
    fn bytes_after_the_newline_are_not_consumed() {
        let mut p = ReplyParser::new();
        assert_eq!(p.feed(b"OK 7\nHELLO"), Ok((5, Progress::Ok(7))));
        // Once done, the parser consumes nothing more.
        assert_eq!(p.feed(b"HELLO"), Ok((0, Progress::Ok(7))));
    }

    #[test]
    fn partial_reply_needs_more() {
        assert_eq!(feed_all(&[b"OK", b" 1"]), Ok((4, Progress::NeedMore)));
        assert_eq!(feed_all(&[b""]), Ok((0, Progress::NeedMore)));
    }

    #[test]
    fn garbage_is_rejected_at_the_first_wrong_byte() {
        let table: &[(&[u8], &[u8])] = &[
            (b"ERR no listener\n", b"E"),
            (b"ok 5\n", b"o"),
            (b"OK\n", b"OK\n"),
            (b"OK \n", b"OK \n"),
            (b"OK  5\n", b"OK  "),
            (b"OK 5 \n", b"OK 5 "),
            (b"OK 5\r\n", b"OK 5\r"),
            (b"OK -5\n", b"OK -"),
            (b"OKAY 5\n", b"OKA"),
            (b"OK 4294967296\n", b"OK 4294967296"),
            (b"\n", b"\n"),
        ];
        for (input, seen) in table {
            assert_eq!(
                ReplyParser::new().feed(input),
                Err(HandshakeError::Malformed(seen.to_vec())),
                "{}",
                input.escape_ascii()
            );
        }
    }

    #[test]
    fn overlong_line_is_rejected_at_the_cap() {
        let mut long = b"OK ".to_vec();
        long.extend(std::iter::repeat_n(b'0', 40));
        let err = ReplyParser::new().feed(&long).unwrap_err();
        assert_eq!(err, HandshakeError::TooLong(long[..MAX_REPLY_LEN].to_vec()));
        // Leading zeros are fine as long as the line fits.
        let mut fits = b"OK ".to_vec();
        fits.extend(std::iter::repeat_n(b'0', 27));
        fits.extend(b"9\n");
        assert_eq!(fits.len(), MAX_REPLY_LEN);
        assert_eq!(
            ReplyParser::new().feed(&fits),
            Ok((MAX_REPLY_LEN, Progress::Ok(9)))
        );
    }

    #[test]
    fn handshake_errors_print_escaped_bytes() {
        assert_eq!(
            HandshakeError::Malformed(b"\x00E\n".to_vec()).to_string(),
            "expected \"OK <port>\\n\", got \"\\x00E\\n\""
        );
        assert_eq!(
            HandshakeError::TooLong(b"OK 000".to_vec()).to_string(),
            "no newline within 32 bytes: \"OK 000\""
        );
    }

    #[test]
    fn guest_initiated_socket_is_path_underscore_port() {
        assert_eq!(
            listen_path(Path::new("/run/vm1.vsock"), 1024),
            PathBuf::from("/run/vm1.vsock_1024")
        );
        assert_eq!(listen_path(Path::new("a:b"), 0), PathBuf::from("a:b_0"));
    }

    #[test]
    fn connect_line_is_newline_terminated() {
        assert_eq!(connect_line(1024), "CONNECT 1024\n");
    }
}
