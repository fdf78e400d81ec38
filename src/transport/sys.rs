//! Small system-call helpers shared by the transports: waiting for readiness against a deadline,
//! a nonblocking unix-socket connect, and the one place a raw fd returned by the kernel becomes an
//! `OwnedFd`. Nothing here knows about addresses or links.

use std::io;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};

/// The longest dial timeout honoured; longer ones are clamped (a year is "forever" for a dial).
const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// The instant `timeout` from now, clamped so it cannot overflow.
pub(crate) fn deadline_after(timeout: Duration) -> Instant {
    Instant::now() + timeout.min(MAX_TIMEOUT)
}

/// Waits until `fd` reports one of `events` (or an error / hang-up), or until `deadline`.
/// Returns `Ok(false)` on timeout. `EINTR` is retried with the remaining time.
pub(crate) fn wait_ready(
    fd: BorrowedFd<'_>,
    events: PollFlags,
    deadline: Instant,
) -> io::Result<bool> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // Round up so a wait never ends a little before the deadline and spins on a 0 ms poll.
        let millis = left.as_micros().div_ceil(1000).min(i32::MAX as u128);
        let timeout = PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(fd, events)];
        match poll(&mut fds, timeout) {
            Ok(0) if Instant::now() >= deadline => return Ok(false),
            Ok(0) => continue,
            Ok(_) => return Ok(true),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Connects a nonblocking, close-on-exec unix stream socket to `path`.
///
/// A unix connect completes at once or fails at once: `ENOENT` (no socket file), `ECONNREFUSED`
/// (no listener), or `EAGAIN` (the listener's backlog is full), which a blocking connect would
/// instead wait on without any deadline.
pub(crate) fn connect_unix(path: &Path) -> io::Result<OwnedFd> {
    let addr = UnixAddr::new(path)?;
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    loop {
        match connect(raw(&fd), &addr) {
            Ok(()) => return Ok(fd),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The raw number of an fd, for the nix calls that still take one.
pub(crate) fn raw(fd: &OwnedFd) -> RawFd {
    use std::os::fd::AsRawFd;
    fd.as_raw_fd()
}

/// Takes ownership of an fd the kernel just returned (from `accept4`, or a library's `into_raw_fd`).
pub(crate) fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: callers pass an fd freshly returned by a successful syscall (or released by its only
    // owner), so it is open and nothing else will close it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn wait_ready_times_out_when_nothing_arrives() {
        let (a, _b) = UnixStream::pair().unwrap();
        let deadline = Instant::now() + Duration::from_millis(20);
        assert!(!wait_ready(a.as_fd(), PollFlags::POLLIN, deadline).unwrap());
        assert!(Instant::now() >= deadline);
    }

    #[test]
    fn wait_ready_reports_pending_input() {
        use std::io::Write;
        let (a, mut b) = UnixStream::pair().unwrap();
        b.write_all(b"x").unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        assert!(wait_ready(a.as_fd(), PollFlags::POLLIN, deadline).unwrap());
    }

    #[test]
    fn connect_unix_to_missing_socket_fails_not_found() {
        let err = connect_unix(Path::new("/nonexistent/vmux-test.sock")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn huge_timeouts_do_not_overflow() {
        assert!(deadline_after(Duration::MAX) > Instant::now());
    }
}
