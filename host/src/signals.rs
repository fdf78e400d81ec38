//! Signals as messages: the process blocks the signals it handles in every thread and one thread
//! takes them with `sigwait`, sending each to a channel. No handler runs in signal context and
//! no extra crate is needed.
//!
//! [`block`] must run on the main thread before any other thread starts, so that every thread
//! (the reactor, the copy threads) inherits the mask and the waiter is the only taker.

use crossbeam_channel::{Receiver, Sender};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};

/// The signals the shim turns into messages: passed on by `exec`, a clean exit for the daemons.
pub const HANDLED: [Signal; 4] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGWINCH,
];

/// Blocks `signals` in the calling thread (and so in every thread it starts afterwards).
pub fn block(signals: &[Signal]) -> nix::Result<SigSet> {
    let mut set = SigSet::empty();
    for &s in signals {
        set.add(s);
    }
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
    Ok(set)
}

/// Starts the thread that waits for the signals in `set` and sends each one on the returned
/// channel. It lives until the process exits.
pub fn listen(set: SigSet) -> std::io::Result<Receiver<Signal>> {
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || wait_loop(set, tx))?;
    Ok(rx)
}

fn wait_loop(set: SigSet, tx: Sender<Signal>) {
    loop {
        match set.wait() {
            Ok(signal) => {
                log::debug!("got {signal}");
                if tx.send(signal).is_err() {
                    return;
                }
            }
            Err(e) => {
                log::warn!("sigwait: {e}");
                return;
            }
        }
    }
}

/// The shell's exit status for death by `signo`: 128 + N.
pub fn shell_status(signo: i32) -> u8 {
    u8::try_from(128 + signo.clamp(0, 127)).unwrap_or(u8::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_deaths_map_to_128_plus_n() {
        assert_eq!(shell_status(15), 143);
        assert_eq!(shell_status(9), 137);
        assert_eq!(shell_status(2), 130);
        assert_eq!(shell_status(127), 255);
        assert_eq!(shell_status(-3), 128);
    }
}
