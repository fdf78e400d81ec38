//! Connecting to the guest: address → link → session, with one deadline and one-line errors.
//!
//! Sockets (`vsock://`, `hvsock://`, `unix://`) are dialed with [`vmux::transport::dial`], which
//! retries a peer that is not there yet until the deadline; `tty://` is opened as a port. The
//! session settings follow [`plan`]: a `tty://` address is always a serial line, and `--serial`
//! says that a socket is the host end of a serial chardev (QEMU `-serial unix:...` or a
//! `virtserialport`), so payload CRCs and small chunks are used. The guest speaks first; the
//! shim waits for its HELLO within what is left of the same deadline.

use std::time::{Duration, Instant};

use vmux::mux::Config;
use vmux::reactor::{random_nonce, Reactor};
use vmux::session::{Session, SessionError};
use vmux::transport::{self, Address, Link, LinkKind};
use vmux::wire::Role;

use crate::cli::{Failure, Global};

/// How to get a link for an address, and which session settings to use on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Open the address as a port (`tty://`) rather than dial it.
    pub open_port: bool,
    /// Use [`Config::serial`] (payload CRCs, small chunks).
    pub serial: bool,
    /// A UART or pty: [`Config::uart`] (small receive windows too).
    pub uart: bool,
}

/// Decides how to reach `addr`: ttys are opened and always serial; sockets are dialed and
/// serial only when `serial_flag` (`--serial`) says so.
pub fn plan(addr: &Address, serial_flag: bool) -> Plan {
    let kind = addr.link_kind();
    Plan {
        open_port: addr.is_port(),
        serial: serial_flag || kind.is_serial(),
        uart: kind == vmux::transport::LinkKind::Tty,
    }
}

/// The session settings for this host side of a link.
pub fn config(plan: Plan, role: Role) -> Config {
    if plan.uart {
        Config::uart(role, random_nonce())
    } else if plan.serial {
        Config::serial(role, random_nonce())
    } else {
        Config::new(role, random_nonce())
    }
}

/// The guest address from the command line, or a line saying how to give one.
pub fn address(global: &Global) -> Result<&Address, Failure> {
    global.connect.as_ref().ok_or_else(|| {
        Failure::new(
            "no guest address: pass -c ADDR or set VMUX_ADDR (like hvsock:///run/vm1.vsock:1024 or tty:///dev/pts/3)",
        )
    })
}

/// Makes one link to `addr` within `timeout`.
pub fn link(addr: &Address, plan: Plan, timeout: Duration) -> Result<Link, Failure> {
    let result = if plan.open_port {
        transport::open_port(addr)
    } else {
        transport::dial(addr, timeout)
    };
    // The transport's lines already name the address and what to do: print them as they are.
    result.map_err(Failure::new)
}

/// A live session to the guest, with the event loop that runs it.
pub struct Connection {
    /// The session.
    pub session: Session,
    /// The address it was made to, for messages.
    pub addr: Address,
    reactor: Reactor,
}

impl Connection {
    /// Ends the session gracefully (GOAWAY, both sides drain), waiting at most `grace`.
    pub fn close(self, grace: Duration) {
        let Connection {
            session, reactor, ..
        } = self;
        if session.termination().is_none() && session.shutdown().is_ok() {
            let (tx, rx) = crossbeam_channel::bounded(1);
            let waiter = session.clone();
            let spawned = std::thread::Builder::new()
                .name("close".into())
                .spawn(move || {
                    let _ = tx.send(waiter.wait());
                });
            if spawned.is_ok() {
                match rx.recv_timeout(grace) {
                    Ok(t) if !t.is_graceful() => log::debug!("{t}"),
                    Ok(_) => {}
                    Err(_) => log::debug!("the guest did not finish closing within {grace:?}"),
                }
            }
        }
        reactor.shutdown();
    }
}

/// Dials (or opens) the guest named by `global` and waits for its HELLO.
pub fn connect(global: &Global) -> Result<Connection, Failure> {
    let addr = address(global)?.clone();
    let plan = plan(&addr, global.serial);
    let start = Instant::now();
    let link = link(&addr, plan, global.timeout)?;
    log::debug!("{addr}: link up as {}", link.kind());
    let kind = link.kind();
    let reactor = Reactor::spawn().map_err(Failure::new)?;
    let session = reactor
        .add_link(link, config(plan, Role::Client))
        .map_err(Failure::new)?;
    let left = global.timeout.saturating_sub(start.elapsed());
    if let Err(e) = session.wait_established(left) {
        return Err(Failure::new(hello_failure(&addr, kind, global.timeout, &e)));
    }
    Ok(Connection {
        session,
        addr,
        reactor,
    })
}

/// The line for a link that came up but carried no session.
pub fn hello_failure(
    addr: &Address,
    kind: LinkKind,
    timeout: Duration,
    e: &SessionError,
) -> String {
    match e {
        SessionError::TimedOut => {
            let hint = if kind.is_serial() {
                "is vmux-agent running in the guest and listening on this serial line?"
            } else {
                "is the peer a vmux-agent? for a serial chardev socket add --serial"
            };
            format!(
                "{addr}: connected, but no HELLO from the agent within {} s ({hint})",
                secs(timeout)
            )
        }
        SessionError::Ended(t) => format!("{addr}: {t} before the session started"),
        other => format!("{addr}: {other}"),
    }
}

/// Seconds as people write them: `10`, `2.5`.
pub fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{}", s as u64)
    } else {
        format!("{s:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmux::mux::Termination;
    use vmux::wire::ErrorCode;

    #[test]
    fn tty_is_always_serial_and_opened() {
        let tty: Address = "tty:///dev/pts/3".parse().unwrap();
        assert_eq!(
            plan(&tty, false),
            Plan {
                open_port: true,
                serial: true,
                uart: true
            }
        );
        assert_eq!(
            config(plan(&tty, false), Role::Client).stream_window,
            16 << 10
        );
    }

    #[test]
    fn sockets_are_dialed_and_serial_only_when_asked() {
        let unix: Address = "unix:///run/vm.serial".parse().unwrap();
        assert_eq!(
            plan(&unix, false),
            Plan {
                open_port: false,
                serial: false,
                uart: false
            }
        );
        assert!(plan(&unix, true).serial);
        let hv: Address = "hvsock:///run/vm.vsock:1024".parse().unwrap();
        assert!(!plan(&hv, false).open_port);
        assert!(config(plan(&unix, true), Role::Client).payload_crc);
        assert!(!config(plan(&hv, false), Role::Client).payload_crc);
    }

    #[test]
    fn missing_address_says_how_to_give_one() {
        let g = Global {
            connect: None,
            timeout: Duration::from_secs(10),
            serial: false,
        };
        let f = address(&g).err().unwrap();
        assert!(f.message.contains("pass -c ADDR or set VMUX_ADDR"));
    }

    #[test]
    fn hello_failures_are_one_actionable_line() {
        let addr: Address = "unix:///run/vm.sock".parse().unwrap();
        let t = hello_failure(
            &addr,
            LinkKind::Unix,
            Duration::from_secs(10),
            &SessionError::TimedOut,
        );
        assert_eq!(
            t,
            "unix:///run/vm.sock: connected, but no HELLO from the agent within 10 s \
             (is the peer a vmux-agent? for a serial chardev socket add --serial)"
        );
        let ended = hello_failure(
            &addr,
            LinkKind::Unix,
            Duration::from_millis(2500),
            &SessionError::Ended(Termination {
                code: ErrorCode::LINK_LOST,
                message: "link closed".into(),
                by_peer: false,
            }),
        );
        assert!(ended.starts_with("unix:///run/vm.sock: session ended by this side"));
        assert!(ended.ends_with("before the session started"));
        assert!(!ended.contains('\n'));
        assert_eq!(secs(Duration::from_millis(2500)), "2.5");
    }
}
