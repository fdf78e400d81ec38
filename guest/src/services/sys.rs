//! The few system calls the services need that neither std nor nix wraps the way they are
//! needed: the child-side session setup run between `fork` and `exec`, and the pty window size.

use nix::libc;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// In the child before `exec`: a new session (so the process group id is the pid and a signal
/// to `-pid` reaches the whole job) and, with a pty, the pty on fd 0 as controlling terminal.
///
/// Only async-signal-safe calls: `setsid(2)` and `ioctl(2)`; no allocation.
pub fn child_setup(controlling_tty: bool) -> io::Result<()> {
    // SAFETY: setsid takes no arguments and only changes the calling (child) process.
    if unsafe { libc::setsid() } < 0 {
        return Err(io::Error::last_os_error());
    }
    if controlling_tty {
        // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal); fd 0 is the pty slave.
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sets a pty's window size (`TIOCSWINSZ`); the kernel sends SIGWINCH to its foreground group.
pub fn set_window_size(fd: BorrowedFd<'_>, rows: u16, cols: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: `fd` is open for the borrow's lifetime; TIOCSWINSZ reads one `winsize` from a
    // pointer that is valid for the duration of the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &size) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
