//! `serve`: one link to the guest, shared by many local clients.
//!
//! A serial line admits one process at a time; `serve` holds it (or any other guest link) and
//! listens on a private unix socket. Every local client connection is a vmux session of its own
//! (this side is the `Server` toward the client), and every stream a client opens is handed to
//! the reactor with [`Incoming::forward`]: the reactor opens the same service on the guest
//! session, answers the client with the guest's answer, and splices the two streams inside its
//! one thread, under both sessions' credit. No thread per stream, no thread per client.
//!
//! Three threads besides the reactor, all blocked when nothing happens:
//! - the **router** (the caller's thread) selects over new client sessions, their incoming
//!   streams and the signal channel, and routes each stream;
//! - the **supervisor** keeps the guest link: it dials (paced by [`Redial`]) or, for a tty,
//!   watches the port's successive sessions, and publishes the state in [`GuestLink`];
//! - the **signal** waiter turns SIGINT/SIGTERM/SIGHUP into a clean exit (the socket file goes).
//!
//! While the guest link is down, a client stream waits (up to `--timeout`) for the link to come
//! up, then is forwarded; if it does not come up in time the stream is refused with `LINK_LOST`
//! and the message "guest link down, redialing (attempt N)". A client's disconnect only ends
//! its own session.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crossbeam_channel::{Receiver, Select, Sender};
use nix::sys::signal::Signal;
use vmux::mux::Config;
use vmux::reactor::{random_nonce, ReactorHandle};
use vmux::session::{Incoming, Session};
use vmux::time::Clock;
use vmux::transport::{self, Address, Backoff, Redial};
use vmux::wire::{ErrorCode, Role};

use crate::cli::{Failure, Global};
use crate::connect::{self, Plan};

/// A guest link that stayed up this long counts as a success: the redial delays start over.
const STABLE_AFTER: Duration = Duration::from_secs(5);

/// The state of the link to the guest, as the router sees it.
#[derive(Debug, Clone)]
pub enum GuestLink {
    /// A session whose HELLO exchange completed.
    Up(Session),
    /// No usable session; `attempt` counts tries since the link was last up.
    Down {
        /// 1 for the first try after a loss.
        attempt: u32,
    },
}

/// The guest link state shared between the supervisor and the router, with a channel that
/// signals every change (so the router can forward streams held while the link was down).
#[derive(Debug, Clone)]
pub struct SharedGuest {
    state: Arc<Mutex<GuestLink>>,
    changed_tx: Sender<()>,
    changed_rx: Receiver<()>,
}

impl SharedGuest {
    /// A link that is down before its first attempt.
    pub fn new() -> SharedGuest {
        let (changed_tx, changed_rx) = crossbeam_channel::bounded(1);
        SharedGuest {
            state: Arc::new(Mutex::new(GuestLink::Down { attempt: 0 })),
            changed_tx,
            changed_rx,
        }
    }

    fn lock(&self) -> MutexGuard<'_, GuestLink> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, state: GuestLink) {
        *self.lock() = state;
        // One pending notice is enough: the router reads the state itself.
        let _ = self.changed_tx.try_send(());
    }

    /// Ready whenever the state changed since the last receive.
    pub fn changed(&self) -> &Receiver<()> {
        &self.changed_rx
    }

    /// The current state.
    pub fn get(&self) -> GuestLink {
        self.lock().clone()
    }
}

impl Default for SharedGuest {
    fn default() -> SharedGuest {
        SharedGuest::new()
    }
}

/// The refusal a client gets while the guest link is down.
pub fn link_down_message(attempt: u32) -> String {
    format!("guest link down, redialing (attempt {attempt})")
}

/// Routes one client stream: forwarded to the guest when the link is up, refused otherwise.
pub fn route(incoming: Incoming, guest: &GuestLink) {
    let id = incoming.id();
    log::debug!(
        "stream {id} of client session {} for {:?}",
        incoming.session_id(),
        incoming.service
    );
    let result = match guest {
        GuestLink::Up(session) => incoming.forward(session),
        GuestLink::Down { attempt } => {
            incoming.reject(ErrorCode::LINK_LOST, &link_down_message((*attempt).max(1)))
        }
    };
    if let Err(e) = result {
        log::debug!("stream {id}: {e}");
    }
}

/// Forwards every held stream once the link is up; refuses those whose wait ran out.
fn release_held(
    held: &mut std::collections::VecDeque<(std::time::Instant, Incoming)>,
    guest: &GuestLink,
) {
    let now = std::time::Instant::now();
    while let Some((deadline, _)) = held.front() {
        if !matches!(guest, GuestLink::Up(_)) && *deadline > now {
            break;
        }
        if let Some((_, incoming)) = held.pop_front() {
            route(incoming, guest);
        }
    }
}

/// Runs `serve` until a signal ends it.
pub fn run(
    global: &Global,
    listen: &Address,
    max_client_streams: u32,
    signals: Receiver<Signal>,
) -> Result<(), Failure> {
    let addr = connect::address(global)?.clone();
    let plan = connect::plan(&addr, global.serial);
    let reactor = vmux::reactor::Reactor::spawn().map_err(Failure::new)?;
    let listener = transport::listen(listen).map_err(Failure::new)?;
    let (sessions_tx, sessions_rx) = crossbeam_channel::unbounded();
    reactor
        .handle()
        .add_listener(
            Box::new(listener),
            Box::new(move |_| {
                // Each client's own limit, below the guest's: one client cannot hold every
                // guest slot and lock the others out.
                let mut c = Config::new(Role::Server, random_nonce());
                c.max_streams = max_client_streams;
                c
            }),
            sessions_tx,
        )
        .map_err(Failure::new)?;
    let guest = SharedGuest::new();
    let supervisor = Supervisor {
        addr,
        plan,
        timeout: global.timeout,
        reactor: reactor.handle(),
        guest: guest.clone(),
    };
    std::thread::Builder::new()
        .name("guest-link".into())
        .spawn(move || supervisor.run())
        .map_err(|e| Failure::new(format!("cannot start the guest link thread: {e}")))?;
    log::info!("serving {listen}");
    let signal = router(&sessions_rx, &signals, &guest, global.timeout);
    log::info!("{signal}: stopping");
    // Dropping the reactor ends every session and removes the listening socket's file.
    reactor.shutdown();
    Ok(())
}

/// Routes client streams until a signal arrives (returned). Streams that arrive while the guest
/// link is down are held for up to `grace`.
fn router(
    sessions: &Receiver<Session>,
    signals: &Receiver<Signal>,
    guest: &SharedGuest,
    grace: Duration,
) -> Signal {
    let mut clients: Vec<Session> = Vec::new();
    let mut held: std::collections::VecDeque<(std::time::Instant, Incoming)> = Default::default();
    loop {
        release_held(&mut held, &guest.get());
        let mut sel = Select::new();
        let sig_index = sel.recv(signals);
        let sess_index = sel.recv(sessions);
        let changed_index = sel.recv(guest.changed());
        for client in &clients {
            sel.recv(client.incoming());
        }
        let op = match held.front() {
            Some((deadline, _)) => {
                let wait = deadline.saturating_duration_since(std::time::Instant::now());
                match sel.select_timeout(wait) {
                    Ok(op) => op,
                    Err(_) => continue,
                }
            }
            None => sel.select(),
        };
        let index = op.index();
        if index == changed_index {
            let _ = op.recv(guest.changed());
            continue;
        }
        if index == sig_index {
            match op.recv(signals) {
                Ok(Signal::SIGWINCH) => continue,
                Ok(signal) => return signal,
                Err(_) => return Signal::SIGTERM,
            }
        } else if index == sess_index {
            match op.recv(sessions) {
                Ok(session) => {
                    log::debug!("client session {} connected", session.id());
                    clients.push(session);
                }
                Err(_) => return Signal::SIGTERM,
            }
        } else {
            let i = index - 3;
            match op.recv(clients[i].incoming()) {
                Ok(incoming) => match guest.get() {
                    GuestLink::Down { .. } if !grace.is_zero() => {
                        held.push_back((std::time::Instant::now() + grace, incoming));
                    }
                    state => route(incoming, &state),
                },
                Err(_) => {
                    let gone = clients.swap_remove(i);
                    log::debug!(
                        "client session {} ended: {}",
                        gone.id(),
                        gone.termination()
                            .map_or_else(|| "gone".to_string(), |t| t.to_string())
                    );
                }
            }
        }
    }
}

/// Keeps the guest link up and publishes its state.
struct Supervisor {
    addr: Address,
    plan: Plan,
    timeout: Duration,
    reactor: ReactorHandle,
    guest: SharedGuest,
}

impl Supervisor {
    fn run(self) {
        if self.plan.open_port {
            self.run_port();
        } else {
            self.run_dialed();
        }
    }

    /// Dials, runs a session until it ends, and dials again, paced by [`Redial`].
    fn run_dialed(&self) {
        let clock = Clock::new();
        let mut redial = Redial::new(Backoff::default(), STABLE_AFTER);
        let mut attempt: u32 = 0;
        loop {
            wait_until_due(&clock, &redial);
            attempt = attempt.saturating_add(1);
            self.guest.set(GuestLink::Down { attempt });
            // A handshake (hybrid vsock's CONNECT / OK) needs time even when the guest is there;
            // the transport retries within that budget, and Redial paces the attempts.
            let session = match transport::dial(&self.addr, self.timeout) {
                Ok(link) => self.start_session(link),
                Err(e) => Err(e.to_string()),
            };
            let session = match session {
                Ok(s) => s,
                Err(why) => {
                    self.log_failure(attempt, &why);
                    redial.failed(clock.now());
                    continue;
                }
            };
            redial.up(clock.now());
            log::info!("guest link up ({})", self.addr);
            attempt = 0;
            self.guest.set(GuestLink::Up(session.clone()));
            let ended = refuse_guest_streams_until_end(&session);
            self.guest.set(GuestLink::Down { attempt: 1 });
            log::warn!("guest link lost: {ended}; redialing");
            redial.down(clock.now());
        }
    }

    fn start_session(&self, link: transport::Link) -> Result<Session, String> {
        let kind = link.kind();
        let session = self
            .reactor
            .add_link(link, connect::config(self.plan, Role::Client))
            .map_err(|e| e.to_string())?;
        match session.wait_established(self.timeout) {
            Ok(()) => Ok(session),
            Err(e) => {
                let _ = session.shutdown();
                Err(connect::hello_failure(&self.addr, kind, self.timeout, &e))
            }
        }
    }

    fn log_failure(&self, attempt: u32, why: &str) {
        // The first failure says what is wrong; after that, one line every 30 attempts (the
        // backoff tops out at 1 s, so about every half minute).
        if attempt == 1 || attempt % 30 == 0 {
            log::warn!("guest link: {why} (attempt {attempt}, retrying)");
        } else {
            log::debug!("guest link: {why} (attempt {attempt})");
        }
    }

    /// A tty outlives its peer: open it once, then follow the sessions the reactor starts on it.
    fn run_port(&self) {
        let clock = Clock::new();
        let mut redial = Redial::new(Backoff::default(), STABLE_AFTER);
        let mut attempt: u32 = 0;
        let (tx, sessions): (Sender<Session>, Receiver<Session>) = crossbeam_channel::unbounded();
        loop {
            wait_until_due(&clock, &redial);
            attempt = attempt.saturating_add(1);
            self.guest.set(GuestLink::Down { attempt });
            let plan = self.plan;
            let opened = transport::open_port(&self.addr)
                .map_err(|e| e.to_string())
                .and_then(|link| {
                    self.reactor
                        .add_port(
                            link,
                            Box::new(move |_| connect::config(plan, Role::Client)),
                            tx.clone(),
                        )
                        .map_err(|e| e.to_string())
                });
            match opened {
                Ok(()) => break,
                Err(why) => {
                    self.log_failure(attempt, &why);
                    redial.failed(clock.now());
                }
            }
        }
        let mut attempt: u32 = 1;
        for session in sessions {
            // Each session on the port starts with HELLO; until the guest answers, it is down.
            loop {
                match session.wait_established(Duration::from_secs(1)) {
                    Ok(()) => break,
                    Err(vmux::session::SessionError::TimedOut) => {
                        attempt = attempt.saturating_add(1);
                        self.guest.set(GuestLink::Down { attempt });
                    }
                    Err(_) => break,
                }
            }
            if session.termination().is_some() {
                continue;
            }
            log::info!("guest link up ({})", self.addr);
            attempt = 1;
            self.guest.set(GuestLink::Up(session.clone()));
            let ended = refuse_guest_streams_until_end(&session);
            self.guest.set(GuestLink::Down { attempt });
            log::warn!("guest session ended: {ended}; waiting for the guest's HELLO");
        }
    }
}

/// Waits for the guest session to end, refusing every stream the guest opens: the host offers
/// the guest no services, and an OPEN left unanswered would hold one of the session's stream
/// slots (and its arguments) until the session ends. The channel closes when the session does.
fn refuse_guest_streams_until_end(session: &Session) -> vmux::mux::Termination {
    for incoming in session.incoming().iter() {
        let message = format!("no service named {}", incoming.service);
        if let Err(e) = incoming.reject(ErrorCode::UNKNOWN_SERVICE, &message) {
            log::debug!("refusing a guest stream: {e}");
        }
    }
    session.wait()
}

fn wait_until_due(clock: &Clock, redial: &Redial) {
    let now = clock.now();
    if let Some(at) = redial.poll_at() {
        let wait = at.saturating_since(now);
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_names_the_attempt() {
        assert_eq!(
            link_down_message(3),
            "guest link down, redialing (attempt 3)"
        );
    }

    #[test]
    fn shared_guest_starts_down() {
        assert!(matches!(
            SharedGuest::new().get(),
            GuestLink::Down { attempt: 0 }
        ));
    }
}
