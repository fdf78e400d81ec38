//! The transport layer's one error type, [`TransportError`].
//!
//! Every failure to dial, listen on, accept from or open a link ends up here. Each variant names the
//! address it concerns, `Display` is one line that says what went wrong and what to look at, and the
//! underlying `io::Error` (when there is one) stays reachable through `source()` so callers can still
//! match on its `io::ErrorKind` (see [`TransportError::kind`]).

use std::error::Error;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use super::address::AddressError;
use super::hvsock::HandshakeError;

/// Why a link could not be dialed, listened on, accepted or opened.
#[derive(Debug)]
pub enum TransportError {
    /// The address text did not parse.
    Address(AddressError),
    /// The address cannot be used that way (dialing `vsock://any:P`, dialing a tty, ...).
    Unsupported {
        /// The address, as text.
        addr: String,
        /// What to do instead.
        why: &'static str,
    },
    /// A system call failed with an error that retrying would not fix.
    Io {
        /// The address, as text.
        addr: String,
        /// What was being done (`connect`, `bind`, `open`, ...).
        op: &'static str,
        /// The system error.
        source: io::Error,
    },
    /// The peer was not there yet, and still was not when the dial deadline came.
    GaveUp {
        /// The address, as text.
        addr: String,
        /// What the last attempt found, in words (`no agent listening in the guest (closed before OK)`).
        reason: &'static str,
        /// How long the dialer was allowed to try.
        after: Duration,
        /// The last attempt's error.
        source: io::Error,
    },
    /// A connection was made but the peer did not complete it before the deadline.
    TimedOut {
        /// The address, as text.
        addr: String,
        /// What was awaited (`the OK reply to CONNECT`).
        waiting_for: &'static str,
        /// The dial timeout.
        after: Duration,
    },
    /// The hybrid vsock muxer answered `CONNECT` with something other than `OK <port>\n`.
    Handshake {
        /// The address, as text.
        addr: String,
        /// What was wrong with the reply.
        error: HandshakeError,
    },
    /// No virtio-serial port has the requested name.
    PortNotFound {
        /// The port name.
        name: String,
        /// The sysfs directory that was searched.
        dir: PathBuf,
    },
}

impl TransportError {
    /// The `io::ErrorKind` that best describes the failure (the source's kind when there is one).
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            TransportError::Address(_) => io::ErrorKind::InvalidInput,
            TransportError::Unsupported { .. } => io::ErrorKind::Unsupported,
            TransportError::Io { source, .. } | TransportError::GaveUp { source, .. } => {
                source.kind()
            }
            TransportError::TimedOut { .. } => io::ErrorKind::TimedOut,
            TransportError::Handshake { .. } => io::ErrorKind::InvalidData,
            TransportError::PortNotFound { .. } => io::ErrorKind::NotFound,
        }
    }

    pub(crate) fn io(addr: impl fmt::Display, op: &'static str, source: io::Error) -> Self {
        TransportError::Io {
            addr: addr.to_string(),
            op,
            source,
        }
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportError::Address(e) => e.fmt(f),
            TransportError::Unsupported { addr, why } => write!(f, "{addr}: {why}"),
            TransportError::Io { addr, op, source } => write!(f, "{addr}: {op}: {source}"),
            TransportError::GaveUp {
                addr,
                reason,
                after,
                ..
            } => write!(f, "{addr}: {reason}, gave up after {}", Secs(*after)),
            TransportError::TimedOut {
                addr,
                waiting_for,
                after,
            } => write!(
                f,
                "{addr}: timed out after {} waiting for {waiting_for}",
                Secs(*after)
            ),
            TransportError::Handshake { addr, error } => {
                write!(f, "{addr}: bad reply to CONNECT: {error}")
            }
            TransportError::PortNotFound { name, dir } => write!(
                f,
                "virtio-serial://{name}: no port named {name:?} in {} (is virtio_console loaded, and does QEMU's virtserialport say name={name}?)",
                dir.display()
            ),
        }
    }
}

impl Error for TransportError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            TransportError::Address(e) => Some(e),
            TransportError::Io { source, .. } | TransportError::GaveUp { source, .. } => {
                Some(source)
            }
            TransportError::Handshake { error, .. } => Some(error),
            _ => None,
        }
    }
}

impl From<AddressError> for TransportError {
    fn from(e: AddressError) -> Self {
        TransportError::Address(e)
    }
}

impl From<TransportError> for io::Error {
    fn from(e: TransportError) -> io::Error {
        io::Error::new(e.kind(), e)
    }
}

/// Prints a duration for humans: `250 ms`, `10 s`, `1.5 s`.
struct Secs(Duration);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d < Duration::from_secs(1) {
            write!(f, "{} ms", d.as_millis())
        } else if d.subsec_millis() == 0 {
            write!(f, "{} s", d.as_secs())
        } else {
            write!(f, "{:.1} s", d.as_secs_f64())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gave_up_names_the_address_the_reason_and_the_patience() {
        let e = TransportError::GaveUp {
            addr: "hvsock:///run/vm1.vsock:1024".into(),
            reason: "no agent listening in the guest (closed before OK)",
            after: Duration::from_secs(10),
            source: io::Error::new(io::ErrorKind::UnexpectedEof, "closed before OK"),
        };
        assert_eq!(
            e.to_string(),
            "hvsock:///run/vm1.vsock:1024: no agent listening in the guest (closed before OK), gave up after 10 s"
        );
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(e.source().is_some());
    }

    #[test]
    fn io_errors_keep_their_kind_and_source() {
        let e = TransportError::io(
            "unix:///run/x.sock",
            "bind",
            io::Error::from(io::ErrorKind::AddrInUse),
        );
        assert!(e.to_string().starts_with("unix:///run/x.sock: bind: "));
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        let inner = e.source().and_then(|s| s.downcast_ref::<io::Error>());
        assert_eq!(inner.map(io::Error::kind), Some(io::ErrorKind::AddrInUse));
        let as_io: io::Error = e.into();
        assert_eq!(as_io.kind(), io::ErrorKind::AddrInUse);
    }

    #[test]
    fn durations_print_in_human_units() {
        let table = [
            (Duration::from_millis(250), "250 ms"),
            (Duration::from_secs(10), "10 s"),
            (Duration::from_millis(1500), "1.5 s"),
            (Duration::ZERO, "0 ms"),
        ];
        for (d, want) in table {
            assert_eq!(Secs(d).to_string(), want);
        }
    }

    #[test]
    fn other_variants_print_one_line() {
        let table: Vec<(TransportError, &str)> = vec![
            (
                TransportError::TimedOut {
                    addr: "hvsock:///v.sock:52".into(),
                    waiting_for: "the OK reply to CONNECT",
                    after: Duration::from_millis(1500),
                },
                "hvsock:///v.sock:52: timed out after 1.5 s waiting for the OK reply to CONNECT",
            ),
            (
                TransportError::Unsupported {
                    addr: "vsock://any:1024".into(),
                    why: "cannot dial CID any",
                },
                "vsock://any:1024: cannot dial CID any",
            ),
            (
                TransportError::PortNotFound {
                    name: "org.vmux.0".into(),
                    dir: "/sys/class/virtio-ports".into(),
                },
                "virtio-serial://org.vmux.0: no port named \"org.vmux.0\" in /sys/class/virtio-ports (is virtio_console loaded, and does QEMU's virtserialport say name=org.vmux.0?)",
            ),
            (
                TransportError::Handshake {
                    addr: "hvsock:///v.sock:52".into(),
                    error: HandshakeError::Malformed(b"ERR\n".to_vec()),
                },
                "hvsock:///v.sock:52: bad reply to CONNECT: expected \"OK <port>\\n\", got \"ERR\\n\"",
            ),
        ];
        for (e, want) in table {
            assert_eq!(e.to_string(), want);
            assert!(!e.to_string().contains('\n'));
        }
    }
}
