//! AF_VSOCK: a nonblocking dial with a deadline, and a nonblocking listener that admits only
//! allowed peer CIDs.
//!
//! The dial opens a `SOCK_NONBLOCK | SOCK_CLOEXEC` vsock socket, starts `connect` (which answers
//! `EINPROGRESS`), waits for writability until the deadline and reads `SO_ERROR`. A peer with no
//! listener yet answers `ECONNRESET` (or `ECONNREFUSED`; `ETIMEDOUT` when the host side has no
//! listener), which the dialer retries with backoff until its deadline.
//!
//! The listener accepts with `accept4(SOCK_NONBLOCK | SOCK_CLOEXEC)` and then checks the peer's CID
//! against a [`CidAllowList`] (by default the host only, CID 2): inside a guest, any local process
//! could otherwise reach a root-privileged service through vsock loopback. Refused peers are closed
//! and logged with `log::warn!`. The decision itself is the pure function [`check_peer`].
//!
//! None of this code runs on the development machines (their `/dev/vsock` belongs to the
//! infrastructure); only the pure parts are unit-tested here, and the socket paths run inside the
//! project's QEMU guests.

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::Instant;

use nix::errno::Errno;
use nix::poll::PollFlags;
use nix::sys::socket::{
    accept4, bind, connect, getpeername, getsockopt, listen, socket, sockopt, AddressFamily,
    Backlog, SockFlag, SockType, VsockAddr,
};

use super::address::{VsockCid, VSOCK_CID_HOST};
use super::error::TransportError;
use super::{sys, Attempt, Link, LinkKind};

/// `VMADDR_CID_ANY`: bind on every CID of this machine.
const CID_ANY: u32 = u32::MAX;

/// The set of peer CIDs a vsock listener admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidAllowList {
    cids: Vec<u32>,
}

impl CidAllowList {
    /// Admits only the host (CID 2): the default, and the right choice for a guest agent.
    pub fn host_only() -> CidAllowList {
        CidAllowList {
            cids: vec![VSOCK_CID_HOST],
        }
    }

    /// Admits exactly the given CIDs (e.g. `[2, 1]` to also admit local loopback in a test guest).
    pub fn new(cids: impl IntoIterator<Item = u32>) -> CidAllowList {
        let mut cids: Vec<u32> = cids.into_iter().collect();
        cids.sort_unstable();
        cids.dedup();
        CidAllowList { cids }
    }

    /// The admitted CIDs, sorted.
    pub fn cids(&self) -> &[u32] {
        &self.cids
    }
}

impl Default for CidAllowList {
    /// [`CidAllowList::host_only`].
    fn default() -> CidAllowList {
        CidAllowList::host_only()
    }
}

/// Why an accepted vsock peer was turned away; `Display` is the logged line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The peer's CID.
    pub cid: u32,
    /// The peer's port.
    pub port: u32,
    /// The CIDs that would have been admitted.
    pub allowed: Vec<u32>,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "refused vsock connection from CID {} port {}: CID not in the allow-list {:?}",
            self.cid, self.port, self.allowed
        )
    }
}

/// Decides whether the peer `cid:port` may use a listener with allow-list `allow` (pure).
pub fn check_peer(allow: &CidAllowList, cid: u32, port: u32) -> Result<(), Refusal> {
    if allow.cids.contains(&cid) {
        Ok(())
    } else {
        Err(Refusal {
            cid,
            port,
            allowed: allow.cids.clone(),
        })
    }
}

/// The errors a vsock connect reports while nobody listens on the peer's port (yet).
fn nobody_there(e: Errno) -> Option<&'static str> {
    match e {
        Errno::ECONNRESET => Some("no agent listening on that port (connection reset)"),
        Errno::ECONNREFUSED => Some("no agent listening on that port (connection refused)"),
        Errno::ETIMEDOUT => Some("the peer did not answer (connection timed out)"),
        _ => None,
    }
}

/// One dial attempt to `cid:port`, nonblocking, bounded by `deadline`.
pub(crate) fn attempt(cid: u32, port: u32, addr: &str, deadline: Instant) -> Result<Link, Attempt> {
    let fail = |op: &'static str, e: Errno| Attempt::Fail(TransportError::io(addr, op, e.into()));
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| fail("socket", e))?;
    let result = match connect(sys::raw(&fd), &VsockAddr::new(cid, port)) {
        Ok(()) => Ok(()),
        // In progress: wait for writability, then SO_ERROR holds the connect's outcome.
        Err(Errno::EINPROGRESS | Errno::EINTR) => {
            match sys::wait_ready(fd.as_fd(), PollFlags::POLLOUT, deadline) {
                Ok(true) => socket_error(&fd),
                Ok(false) => {
                    return Err(Attempt::TimedOut {
                        waiting_for: "the vsock connection to be accepted",
                    })
                }
                Err(e) => return Err(Attempt::Fail(TransportError::io(addr, "poll", e))),
            }
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => Link::from_fd(fd, LinkKind::Vsock, addr)
            .map_err(|e| Attempt::Fail(TransportError::io(addr, "configure", e))),
        Err(e) => match nobody_there(e) {
            Some(reason) => Err(Attempt::Retry {
                reason,
                source: e.into(),
            }),
            None => Err(fail("connect", e)),
        },
    }
}

/// The pending error of a socket (`SO_ERROR`), as a result.
fn socket_error(fd: &OwnedFd) -> Result<(), Errno> {
    match getsockopt(fd, sockopt::SocketError)? {
        0 => Ok(()),
        code => Err(Errno::from_raw(code)),
    }
}

/// A nonblocking AF_VSOCK listener that admits only the CIDs of its [`CidAllowList`].
#[derive(Debug)]
pub struct VsockListener {
    fd: OwnedFd,
    addr: String,
    allow: CidAllowList,
}

impl VsockListener {
    /// Binds `cid:port` (usually [`VsockCid::Any`]) and listens, nonblocking and close-on-exec.
    pub fn bind(cid: VsockCid, port: u32, allow: CidAllowList) -> Result<Self, TransportError> {
        let (cid, addr) = match cid {
            VsockCid::Any => (CID_ANY, format!("vsock://any:{port}")),
            VsockCid::Id(id) => (id, format!("vsock://{id}:{port}")),
        };
        let fail = |op: &'static str, e: Errno| TransportError::io(&addr, op, e.into());
        let fd = socket(
            AddressFamily::Vsock,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| fail("socket", e))?;
        bind(sys::raw(&fd), &VsockAddr::new(cid, port)).map_err(|e| fail("bind", e))?;
        listen(&fd, Backlog::MAXCONN).map_err(|e| fail("listen", e))?;
        Ok(VsockListener { fd, addr, allow })
    }

    /// Accepts the next admitted connection, or `Ok(None)` when none is waiting; refused peers are
    /// closed, logged and skipped.
    pub fn accept(&self) -> Result<Option<Link>, TransportError> {
        loop {
            let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
            let fd = match accept4(sys::raw(&self.fd), flags) {
                Ok(fd) => sys::own(fd),
                Err(Errno::EAGAIN) => return Ok(None),
                // The peer gave up before we got to it, or a signal: try the next one.
                Err(Errno::EINTR | Errno::ECONNABORTED) => continue,
                Err(e) => return Err(TransportError::io(&self.addr, "accept", e.into())),
            };
            let peer: VsockAddr = match getpeername(sys::raw(&fd)) {
                Ok(peer) => peer,
                Err(e) => {
                    log::warn!(
                        "{}: dropped a connection with no peer address: {e}",
                        self.addr
                    );
                    continue;
                }
            };
            if let Err(refusal) = check_peer(&self.allow, peer.cid(), peer.port()) {
                log::warn!("{}: {refusal}", self.addr);
                continue;
            }
            let name = format!("vsock://{}:{}", peer.cid(), peer.port());
            let link = Link::from_fd(fd, LinkKind::Vsock, name)
                .map_err(|e| TransportError::io(&self.addr, "configure", e))?;
            return Ok(Some(link));
        }
    }

    /// The address listened on, as text.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The allow-list in force.
    pub fn allow_list(&self) -> &CidAllowList {
        &self.allow
    }
}

impl AsRawFd for VsockListener {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_only_by_default() {
        let allow = CidAllowList::default();
        assert_eq!(allow.cids(), &[2]);
        assert!(check_peer(&allow, 2, 5000).is_ok());
        for cid in [0, 1, 3, 4, u32::MAX] {
            assert!(check_peer(&allow, cid, 5000).is_err(), "CID {cid}");
        }
    }

    #[test]
    fn loopback_peer_is_refused_unless_allowed() {
        assert!(check_peer(&CidAllowList::host_only(), 1, 1024).is_err());
        let allow = CidAllowList::new([1, 2, 1]);
        assert_eq!(allow.cids(), &[1, 2]);
        assert!(check_peer(&allow, 1, 1024).is_ok());
        assert!(check_peer(&allow, 2, 1024).is_ok());
        assert!(check_peer(&allow, 3, 1024).is_err());
    }

    #[test]
    fn empty_allow_list_refuses_everyone() {
        let allow = CidAllowList::new([]);
        assert!(check_peer(&allow, 2, 1).is_err());
    }

    #[test]
    fn refusal_names_peer_and_allow_list() {
        let refusal = check_peer(&CidAllowList::host_only(), 1, 49152).unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "refused vsock connection from CID 1 port 49152: CID not in the allow-list [2]"
        );
    }

    #[test]
    fn only_absent_listener_errors_are_retried() {
        assert!(nobody_there(Errno::ECONNRESET).is_some());
        assert!(nobody_there(Errno::ECONNREFUSED).is_some());
        assert!(nobody_there(Errno::ETIMEDOUT).is_some());
        assert!(nobody_there(Errno::ENETUNREACH).is_none());
        assert!(nobody_there(Errno::EACCES).is_none());
    }
}
