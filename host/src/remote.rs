//! The guest services as the shim uses them: the one place that adapts to `vmux::service`.
//!
//! The services (exec, copy, forward, info, shutdown) are being written on the `services`
//! branch; until they are merged, every call here fails with [`RemoteError::NotAvailable`]. The
//! rest of the shim is written against this module's types, so adapting to the final API is a
//! change to this file alone.

use std::fmt;
use std::io::Read;

use vmux::session::{Session, Stream};

use crate::term::WinSize;

/// A service call that failed; `Display` is one line.
#[derive(Debug)]
pub enum RemoteError {
    /// This build has no client for the service yet.
    NotAvailable(&'static str),
    /// The service failed; the message says how.
    Failed(String),
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemoteError::NotAvailable(what) => {
                write!(f, "{what}: this vmux-shim was built without the guest service client")
            }
            RemoteError::Failed(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for RemoteError {}

/// What to run in the guest.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub cwd: Option<String>,
    /// User id to run as.
    pub uid: Option<u32>,
    /// Group id to run as.
    pub gid: Option<u32>,
    /// A pty of this size, or plain pipes.
    pub pty: Option<WinSize>,
    /// Whether the program gets a stdin stream (otherwise /dev/null).
    pub stdin: bool,
}

/// How the remote program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl ExitStatus {
    /// The status a shell would report: the code, or 128 + the signal number.
    pub fn shell_code(self) -> u8 {
        match self {
            ExitStatus::Code(c) => (c & 0xff) as u8,
            ExitStatus::Signal(n) => crate::signals::shell_status(n),
        }
    }
}

/// A running remote program: its streams, and a way to control it from other threads.
pub struct RemoteProcess {
    /// Its stdin, if requested.
    pub stdin: Option<Stream>,
    /// Its stdout (with a pty: the terminal output); taken by the reader.
    pub stdout: Option<Stream>,
    /// Its stderr (none with a pty).
    pub stderr: Option<Stream>,
}

/// Sends signals and window sizes to a running remote program, from any thread.
#[derive(Clone)]
pub struct Control {}

impl Control {
    /// Sends signal `signo`.
    pub fn signal(&self, _signo: i32) -> Result<(), RemoteError> {
        Err(RemoteError::NotAvailable("signal"))
    }

    /// Tells the guest pty its new size.
    pub fn resize(&self, _size: WinSize) -> Result<(), RemoteError> {
        Err(RemoteError::NotAvailable("resize"))
    }
}

impl RemoteProcess {
    /// A handle for signals and resizes that other threads can hold.
    pub fn control(&self) -> Control {
        Control {}
    }

    /// Waits for the program to end.
    pub fn wait(self) -> Result<ExitStatus, RemoteError> {
        Err(RemoteError::NotAvailable("exec"))
    }
}

/// What a copy moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyReport {
    /// Bytes moved.
    pub bytes: u64,
    /// The file's mode (permission bits).
    pub mode: u32,
}

/// Asks the guest agent for its facts, as printable text.
pub fn info(_session: &Session) -> Result<String, RemoteError> {
    Err(RemoteError::NotAvailable("info"))
}

/// Starts a program in the guest.
pub fn exec(_session: &Session, _req: &ExecRequest) -> Result<RemoteProcess, RemoteError> {
    Err(RemoteError::NotAvailable("exec"))
}

/// Writes `reader`'s bytes to `path` in the guest with `mode`; `size` when known up front.
pub fn copy_put(
    _session: &Session,
    _reader: &mut dyn Read,
    _path: &str,
    _mode: u32,
    _size: Option<u64>,
    _progress: &mut dyn FnMut(u64),
) -> Result<CopyReport, RemoteError> {
    Err(RemoteError::NotAvailable("copy"))
}

/// Reads `path` from the guest into `writer`.
pub fn copy_get(
    _session: &Session,
    _path: &str,
    _writer: &mut dyn std::io::Write,
    _progress: &mut dyn FnMut(u64),
) -> Result<CopyReport, RemoteError> {
    Err(RemoteError::NotAvailable("copy"))
}

/// Opens a stream connected to `target` as seen from inside the guest.
pub fn forward(_session: &Session, _target: &str) -> Result<Stream, RemoteError> {
    Err(RemoteError::NotAvailable("forward"))
}

/// Asks the guest to power off (or reboot).
pub fn shutdown(_session: &Session, _reboot: bool) -> Result<(), RemoteError> {
    Err(RemoteError::NotAvailable("shutdown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_maps_to_shell_codes() {
        assert_eq!(ExitStatus::Code(0).shell_code(), 0);
        assert_eq!(ExitStatus::Code(7).shell_code(), 7);
        assert_eq!(ExitStatus::Code(256 + 3).shell_code(), 3);
        assert_eq!(ExitStatus::Signal(15).shell_code(), 143);
        assert_eq!(ExitStatus::Signal(9).shell_code(), 137);
    }
}
