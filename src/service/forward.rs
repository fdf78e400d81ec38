//! The `forward` service: a byte stream to a listening socket inside the guest.
//!
//! The host opens `forward` with the target's address as the arguments (UTF-8, no length
//! prefix): `tcp://IP:PORT` with a numeric loopback IP (`127.0.0.0/8` or `[::1]`; names are
//! never resolved), or `unix://PATH`. The agent connects and answers OPEN_OK (empty reply),
//! then moves bytes both ways; either side's half-close is passed on as a socket `SHUT_WR`.

use super::codec::MessageError;
use super::{ServiceError, FORWARD};
use crate::session::{Session, Stream};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

/// The longest target string.
pub const MAX_TARGET: usize = 4096;

/// Where a forwarded stream goes in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardTarget {
    /// A loopback TCP address.
    Tcp(SocketAddr),
    /// A unix stream socket.
    Unix(PathBuf),
}

impl ForwardTarget {
    /// The OPEN arguments: the address text.
    pub fn encode(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }

    /// Parses OPEN arguments.
    pub fn decode(bytes: &[u8]) -> Result<ForwardTarget, MessageError> {
        if bytes.len() > MAX_TARGET {
            return Err(MessageError::TooLong {
                field: "forward target",
                len: bytes.len() as u64,
                max: MAX_TARGET,
            });
        }
        let text =
            std::str::from_utf8(bytes).map_err(|_| MessageError::NotUtf8("forward target"))?;
        text.parse()
    }
}

impl FromStr for ForwardTarget {
    type Err = MessageError;

    fn from_str(s: &str) -> Result<ForwardTarget, MessageError> {
        if let Some(rest) = s.strip_prefix("tcp://") {
            let addr: SocketAddr = rest.parse().map_err(|_| {
                MessageError::Invalid(format!(
                    "forward target {s:?}: expected tcp://IP:PORT with a numeric IP"
                ))
            })?;
            if !addr.ip().is_loopback() {
                return Err(MessageError::Invalid(format!(
                    "forward target {s:?}: only loopback addresses (127.0.0.0/8, ::1) may be forwarded"
                )));
            }
            if addr.port() == 0 {
                return Err(MessageError::Invalid(format!(
                    "forward target {s:?}: port 0"
                )));
            }
            return Ok(ForwardTarget::Tcp(addr));
        }
        if let Some(path) = s.strip_prefix("unix://") {
            if path.is_empty() || path.contains('\0') {
                return Err(MessageError::Invalid(format!(
                    "forward target {s:?}: expected unix://PATH"
                )));
            }
            return Ok(ForwardTarget::Unix(PathBuf::from(path)));
        }
        Err(MessageError::Invalid(format!(
            "forward target {s:?}: expected tcp://127.0.0.1:PORT or unix://PATH"
        )))
    }
}

impl fmt::Display for ForwardTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardTarget::Tcp(addr) => write!(f, "tcp://{addr}"),
            ForwardTarget::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

/// Opens a stream to `target` (`tcp://127.0.0.1:PORT` or `unix://PATH`) inside the guest.
pub fn forward(session: &Session, target: &str) -> Result<Stream, ServiceError> {
    let parsed: ForwardTarget = target
        .parse()
        .map_err(|e: MessageError| ServiceError::InvalidRequest(e.to_string()))?;
    Ok(session.open(FORWARD, &parsed.encode())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn loopback_tcp_and_unix_targets_parse_and_print_back() {
        for s in [
            "tcp://127.0.0.1:8080",
            "tcp://[::1]:22",
            "unix:///run/x.sock",
        ] {
            let t: ForwardTarget = s.parse().unwrap();
            assert_eq!(t.to_string(), s);
            assert_eq!(ForwardTarget::decode(s.as_bytes()), Ok(t));
        }
    }

    #[test]
    fn non_loopback_and_named_targets_are_refused() {
        for s in [
            "tcp://10.0.0.1:80",
            "tcp://localhost:80",
            "tcp://127.0.0.1:0",
            "udp://127.0.0.1:1",
            "unix://",
        ] {
            assert!(s.parse::<ForwardTarget>().is_err(), "{s}");
        }
        let e = "tcp://8.8.8.8:53".parse::<ForwardTarget>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "forward target \"tcp://8.8.8.8:53\": only loopback addresses (127.0.0.0/8, ::1) may be forwarded"
        );
    }

    proptest! {
        #[test]
        fn forward_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = ForwardTarget::decode(&bytes);
        }
    }
}
