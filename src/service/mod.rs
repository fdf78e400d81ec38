//! The services the agent offers over a session (`info`, `exec`, `exec.attach`, `exec.list`,
//! `copy`, `forward`, `shutdown`):
//! their message codecs, shared by the agent and the host, and the host-side client API.
//!
//! Every service is a stream opened by name with OPEN; its arguments and the OPEN_OK reply are
//! the messages defined here, and docs/protocol.md ("Services") spells out every byte. Messages
//! use one tiny explicit little-endian encoding ([`Writer`], [`Reader`]): fixed-width integers,
//! and strings as a `u32` length followed by UTF-8 bytes, the length checked against what is
//! left of the input (and a per-field maximum) before anything is allocated, so a hostile peer
//! can neither make a parser panic nor make it allocate more than the message it already sent.
//! Long-lived control streams (`exec`, `copy`) carry framed messages: `[u8 type][u32 len][body]`
//! ([`ControlMsg`], reassembled by [`ControlDecoder`]).
//!
//! The client functions ([`info()`], [`exec()`], [`copy_put`], [`copy_get`], [`forward()`],
//! [`shutdown()`]) block the calling thread; they return [`ServiceError`], which keeps the
//! [`SessionError`] or [`io::Error`] it came from as its source.

pub mod attach;
mod codec;
mod control;
pub mod copy;
pub mod exec;
pub mod forward;
pub mod info;
pub mod shutdown;

pub use attach::{attach, exec_list, AttachReply, ExecAttach, ExecEntry, ExecList, ExecState};
pub use codec::{MessageError, Reader, Writer, MAX_STRING};
pub use control::{ControlDecoder, ControlMsg, CopyResult, ExitStatus, MAX_CONTROL_BODY};
pub use copy::{copy_get, copy_put, CopyData, CopyReady, CopyReport, CopyRequest};
pub use exec::{exec, ExecIo, ExecReply, ExecRequest, ProcessController, PtySize, RemoteProcess};
pub use forward::{forward, ForwardTarget};
pub use info::{info, Info, SessionFacts};
pub use shutdown::{shutdown, ShutdownRequest};

use crate::session::SessionError;
use crate::wire::ErrorCode;
use std::fmt;
use std::io;

/// Service name: facts about the agent and its machine, returned in the OPEN_OK reply.
pub const INFO: &str = "info";
/// Service name: start a process (this stream is its control stream).
pub const EXEC: &str = "exec";
/// Service name: one stdio stream of a process started with [`EXEC`].
pub const EXEC_IO: &str = "exec.io";
/// Service name: take over a detachable exec from this session (its new control stream).
pub const EXEC_ATTACH: &str = "exec.attach";
/// Service name: list the processes the agent holds.
pub const EXEC_LIST: &str = "exec.list";
/// Service name: put or get a file (this stream is the transfer's control stream).
pub const COPY: &str = "copy";
/// Service name: the data of a transfer started with [`COPY`].
pub const COPY_DATA: &str = "copy.data";
/// Service name: a byte stream to a loopback TCP port or a unix socket inside the guest.
pub const FORWARD: &str = "forward";
/// Service name: power the guest off (or reboot it), or end the agent if it is not PID 1.
pub const SHUTDOWN: &str = "shutdown";

/// Every service name the agent serves.
pub const SERVICES: [&str; 9] = [
    INFO,
    EXEC,
    EXEC_IO,
    EXEC_ATTACH,
    EXEC_LIST,
    COPY,
    COPY_DATA,
    FORWARD,
    SHUTDOWN,
];

/// Extends a CRC32C (Castagnoli) over `bytes`; start from 0. The checksum `copy` compares.
pub fn crc32c_append(crc: u32, bytes: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, bytes)
}

/// Why a client call failed.
#[derive(Debug)]
pub enum ServiceError {
    /// The session failed (ended, reset, reactor gone, timed out).
    Session(SessionError),
    /// A local read or write failed (the file being sent, the writer receiving).
    Io(io::Error),
    /// The agent refused the request (OPEN_ERR): its code and message.
    Remote {
        /// The error code (REFUSED, UNKNOWN_SERVICE, PROTOCOL, ...).
        code: ErrorCode,
        /// The agent's explanation, e.g. `exec ls: No such file or directory (os error 2)`.
        message: String,
    },
    /// The agent accepted, then reported that the operation failed.
    Failed(String),
    /// A message from the agent was malformed.
    BadMessage(MessageError),
    /// The transfer completed but what arrived is not what was sent (size or CRC32C differs).
    Corrupt(String),
    /// The request cannot be sent as asked (empty argv, a bad forward target, ...).
    InvalidRequest(String),
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceError::Session(e) => write!(f, "{e}"),
            ServiceError::Io(e) => write!(f, "{e}"),
            ServiceError::Remote { code, message } if message.is_empty() => {
                write!(f, "refused by the agent: {code}")
            }
            ServiceError::Remote { message, .. } => f.write_str(message),
            ServiceError::Failed(message) => f.write_str(message),
            ServiceError::BadMessage(e) => write!(f, "malformed message from the agent: {e}"),
            ServiceError::Corrupt(what) => write!(f, "transfer corrupted: {what}"),
            ServiceError::InvalidRequest(why) => write!(f, "invalid request: {why}"),
        }
    }
}

impl std::error::Error for ServiceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServiceError::Session(e) => Some(e),
            ServiceError::Io(e) => Some(e),
            ServiceError::BadMessage(e) => Some(e),
            _ => None,
        }
    }
}

impl ServiceError {
    /// The remote error code, when the agent refused the request.
    pub fn remote_code(&self) -> Option<ErrorCode> {
        match self {
            ServiceError::Remote { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl From<SessionError> for ServiceError {
    fn from(e: SessionError) -> ServiceError {
        match e {
            SessionError::Refused { code, message } => ServiceError::Remote { code, message },
            other => ServiceError::Session(other),
        }
    }
}

impl From<MessageError> for ServiceError {
    fn from(e: MessageError) -> ServiceError {
        ServiceError::BadMessage(e)
    }
}

/// Maps an `io::Error` from a session stream back to what caused it.
pub(crate) fn stream_error(e: io::Error) -> ServiceError {
    let is_session = e.get_ref().is_some_and(|inner| inner.is::<SessionError>());
    if is_session {
        if let Some(inner) = e.into_inner() {
            if let Ok(se) = inner.downcast::<SessionError>() {
                return ServiceError::from(*se);
            }
        }
        return ServiceError::Session(SessionError::ReactorGone);
    }
    ServiceError::Io(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_errors_display_for_people() {
        let cases: Vec<(ServiceError, &str)> = vec![
            (
                ServiceError::Remote {
                    code: ErrorCode::REFUSED,
                    message: "exec nope: No such file or directory (os error 2)".into(),
                },
                "exec nope: No such file or directory (os error 2)",
            ),
            (
                ServiceError::Remote {
                    code: ErrorCode::UNKNOWN_SERVICE,
                    message: String::new(),
                },
                "refused by the agent: UNKNOWN_SERVICE",
            ),
            (
                ServiceError::Failed("copy /x: No space left on device".into()),
                "copy /x: No space left on device",
            ),
            (
                ServiceError::BadMessage(MessageError::Truncated { needed: 4, left: 1 }),
                "malformed message from the agent: truncated: needed 4 bytes, 1 left",
            ),
            (
                ServiceError::Corrupt("CRC32C 00000001 sent, 00000002 received".into()),
                "transfer corrupted: CRC32C 00000001 sent, 00000002 received",
            ),
            (
                ServiceError::InvalidRequest("argv is empty".into()),
                "invalid request: argv is empty",
            ),
            (ServiceError::Session(SessionError::TimedOut), "timed out"),
        ];
        for (err, want) in cases {
            assert_eq!(err.to_string(), want);
        }
    }

    #[test]
    fn refused_session_errors_become_remote_errors() {
        let e = ServiceError::from(SessionError::Refused {
            code: ErrorCode::REFUSED,
            message: "no".into(),
        });
        assert_eq!(e.remote_code(), Some(ErrorCode::REFUSED));
    }

    #[test]
    fn stream_io_errors_keep_their_session_cause() {
        let io: io::Error = SessionError::TimedOut.into();
        assert!(matches!(
            stream_error(io),
            ServiceError::Session(SessionError::TimedOut)
        ));
        let plain = io::Error::other("disk");
        assert!(matches!(stream_error(plain), ServiceError::Io(_)));
    }
}
