//! The `shutdown` service: power the guest off or reboot it (or end the agent when it is not
//! PID 1).
//!
//! The host opens `shutdown` with a [`ShutdownRequest`]; the agent answers OPEN_OK (empty reply)
//! and waits for the host's CLOSE, which proves the OPEN_OK arrived; then it acts. The client
//! waits a short while for the session to end.

use super::codec::{MessageError, Reader, Writer};
use super::{ServiceError, SHUTDOWN};
use crate::session::Session;
use std::io::Read;
use std::time::Duration;

/// How long [`shutdown`] waits for the session to end after asking.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// The arguments of `shutdown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownRequest {
    /// Reboot instead of powering off.
    pub reboot: bool,
}

impl ShutdownRequest {
    /// `u8 reboot` (0 or 1).
    pub fn encode(&self) -> Vec<u8> {
        Writer::new().u8(u8::from(self.reboot)).finish()
    }

    /// Parses the arguments.
    pub fn decode(bytes: &[u8]) -> Result<ShutdownRequest, MessageError> {
        let mut r = Reader::new(bytes);
        let req = ShutdownRequest {
            reboot: r.bool("reboot flag")?,
        };
        r.finish()?;
        Ok(req)
    }
}

/// Asks the agent to power off (or reboot) and waits up to [`SHUTDOWN_WAIT`] for the session
/// to end. The request is accepted once this returns `Ok`.
pub fn shutdown(session: &Session, reboot: bool) -> Result<(), ServiceError> {
    let mut stream = session.open(SHUTDOWN, &ShutdownRequest { reboot }.encode())?;
    stream.shutdown_write()?;
    stream.set_read_timeout(Some(SHUTDOWN_WAIT));
    // Ends with EOF, a reset or the session's end (all fine), or the timeout (also fine: the
    // agent accepted; the machine may take longer to go down).
    let mut buf = [0u8; 64];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_request_is_one_byte() {
        assert_eq!(ShutdownRequest { reboot: true }.encode(), [1]);
        assert_eq!(
            ShutdownRequest::decode(&[0]),
            Ok(ShutdownRequest { reboot: false })
        );
        assert!(ShutdownRequest::decode(&[2]).is_err());
        assert!(ShutdownRequest::decode(&[]).is_err());
        assert!(ShutdownRequest::decode(&[0, 0]).is_err());
    }
}
