//! The local terminal: raw mode with guaranteed restore, and the window size.
//!
//! [`RawMode::enable`] saves the terminal's settings, switches it to raw mode, and restores them
//! when the guard is dropped. The saved settings also live in a process-wide slot so that
//! [`restore`] can put the terminal back from anywhere: the panic hook installed by
//! [`install_panic_hook`] and the error path in `main` both call it, so the terminal is restored on
//! every way out of the program, including a panic under `panic = "abort"`.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use nix::sys::termios::{self, SetArg, Termios};

/// The settings to put back, and the terminal they belong to (always stdin).
static SAVED: Mutex<Option<Termios>> = Mutex::new(None);
/// Whether raw mode is on (read by the logger to end lines with `\r\n`).
static RAW: AtomicBool = AtomicBool::new(false);

/// Whether the local terminal is currently in raw mode.
pub fn raw_mode_active() -> bool {
    RAW.load(Ordering::Relaxed)
}

/// Puts the terminal back as it was before [`RawMode::enable`]; does nothing if it is not raw.
pub fn restore() {
    let saved = SAVED.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(saved) = saved {
        let stdin = io::stdin();
        if let Err(e) = termios::tcsetattr(stdin.as_fd(), SetArg::TCSADRAIN, &saved) {
            log::warn!("could not restore the terminal settings: {e} (run 'stty sane')");
        }
        RAW.store(false, Ordering::Relaxed);
    }
}

/// Makes a panic restore the terminal before the message is printed.
pub fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore();
        previous(info);
    }));
}

/// Raw mode on stdin for as long as the guard lives.
#[derive(Debug)]
pub struct RawMode {
    _private: (),
}

impl RawMode {
    /// Saves stdin's terminal settings and makes it raw (no echo, no line editing, no signals
    /// from keys: ^C reaches the remote program as a byte).
    pub fn enable() -> io::Result<RawMode> {
        let stdin = io::stdin();
        let fd = stdin.as_fd();
        let saved = termios::tcgetattr(fd)?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        *SAVED.lock().unwrap_or_else(|p| p.into_inner()) = Some(saved);
        if let Err(e) = termios::tcsetattr(fd, SetArg::TCSADRAIN, &raw) {
            SAVED.lock().unwrap_or_else(|p| p.into_inner()).take();
            return Err(e.into());
        }
        RAW.store(true, Ordering::Relaxed);
        Ok(RawMode { _private: () })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore();
    }
}

/// A window size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WinSize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// The window size of the terminal on `fd`, or `None` if it is not a terminal (or reports 0x0).
pub fn window_size(fd: BorrowedFd<'_>) -> Option<WinSize> {
    use std::os::fd::AsRawFd;
    let mut ws = nix::libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `struct winsize` through the pointer, which points to a live,
    // properly aligned `winsize` owned by this frame; `fd` is borrowed, so it is open.
    let rc = unsafe { nix::libc::ioctl(fd.as_raw_fd(), nix::libc::TIOCGWINSZ, &mut ws) };
    if rc != 0 || ws.ws_row == 0 || ws.ws_col == 0 {
        return None;
    }
    Some(WinSize {
        rows: ws.ws_row,
        cols: ws.ws_col,
    })
}

/// The size of whichever of stdin, stdout and stderr is a terminal.
pub fn local_window_size() -> Option<WinSize> {
    window_size(io::stdin().as_fd())
        .or_else(|| window_size(io::stdout().as_fd()))
        .or_else(|| window_size(io::stderr().as_fd()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_without_raw_mode_does_nothing() {
        restore();
        assert!(!raw_mode_active());
    }

    #[test]
    fn window_size_of_a_non_terminal_is_none() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(window_size(a.as_fd()), None);
    }
}
