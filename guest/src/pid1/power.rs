//! Ending the machine: PID 1 must never exit (the kernel panics when init dies), so every way
//! out of the agent as PID 1 goes through [`shutdown`], which stops the other processes, syncs
//! and powers off or reboots. [`fatal`] and the panic hook lead there too.
//!
//! [`shutdown`] checks `getpid() == 1` itself and exits the process instead when it is not PID 1,
//! so a stray call on a development machine cannot power that machine off.

use std::fmt;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{sync, Pid};

use super::is_pid1;

/// How long other processes get between SIGTERM and SIGKILL at shutdown.
pub const TERM_GRACE: Duration = Duration::from_secs(1);

/// The exit code used when [`fatal`] or [`shutdown`] run outside PID 1.
pub const NOT_PID1_EXIT: i32 = 1;

/// What to do with the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    /// Power off (`RB_POWER_OFF`).
    PowerOff,
    /// Reboot (`RB_AUTOBOOT`; with QEMU's `-no-reboot` this also ends the VM).
    Reboot,
}

impl PowerAction {
    fn mode(self) -> RebootMode {
        match self {
            PowerAction::PowerOff => RebootMode::RB_POWER_OFF,
            PowerAction::Reboot => RebootMode::RB_AUTOBOOT,
        }
    }
}

impl fmt::Display for PowerAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PowerAction::PowerOff => "power off",
            PowerAction::Reboot => "reboot",
        })
    }
}

/// Stops every other process, syncs and powers off or reboots; exits 1 instead when not PID 1.
pub fn shutdown(action: PowerAction) -> ! {
    if !is_pid1() {
        log::error!("not PID 1: exiting instead of {action}");
        std::process::exit(NOT_PID1_EXIT);
    }
    log::info!("{action}");
    stop_all_processes();
    sync();
    let err = match reboot(action.mode()) {
        Ok(never) => match never {},
        Err(errno) => errno,
    };
    log::error!("{action} failed: {}; halting here", err.desc());
    // The last resort: an init that returns panics the kernel, so sleep forever instead.
    loop {
        nix::unistd::pause();
    }
}

/// Logs `msg` as an error and ends the machine (PID 1) or the process (otherwise).
pub fn fatal(msg: impl fmt::Display) -> ! {
    log::error!("fatal: {msg}");
    shutdown(PowerAction::PowerOff)
}

/// Makes a panic log and power off when PID 1 (release builds abort on panic, which would kill
/// init and panic the kernel); leaves the default hook alone otherwise.
pub fn install_panic_hook() {
    if !is_pid1() {
        return;
    }
    std::panic::set_hook(Box::new(|info| {
        log::error!("panic: {info}");
        shutdown(PowerAction::PowerOff)
    }));
}

/// SIGTERM to every process but init, a short grace while reaping, then SIGKILL.
fn stop_all_processes() {
    // kill(-1) reaches every process except init itself and kernel threads.
    let everyone = Pid::from_raw(-1);
    if kill(everyone, Signal::SIGTERM) == Err(Errno::ESRCH) {
        return;
    }
    let deadline = Instant::now() + TERM_GRACE;
    while Instant::now() < deadline {
        match waitpid(everyone, Some(WaitPidFlag::WNOHANG)) {
            Err(Errno::ECHILD) => return,
            Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(10)),
            _ => {}
        }
    }
    let _ = kill(everyone, Signal::SIGKILL);
    while !matches!(
        waitpid(everyone, Some(WaitPidFlag::WNOHANG)),
        Err(Errno::ECHILD) | Ok(WaitStatus::StillAlive)
    ) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_map_to_the_kernel_commands() {
        assert_eq!(PowerAction::PowerOff.mode(), RebootMode::RB_POWER_OFF);
        assert_eq!(PowerAction::Reboot.mode(), RebootMode::RB_AUTOBOOT);
        assert_eq!(PowerAction::Reboot.to_string(), "reboot");
    }
}
