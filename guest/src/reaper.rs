//! Child processes: noticing that they exit (SIGCHLD through a `signalfd`) and collecting their
//! statuses (`waitpid(-1, WNOHANG)`), so PID 1 leaves no zombie and the exec service still gets
//! the status of every child it started.
//!
//! Design: [`ChildSignals::install`] blocks SIGCHLD and opens a nonblocking signalfd for it. The
//! event loop registers that fd (`mio::unix::SourceFd`, readable interest); when it is readable
//! the loop calls [`ChildSignals::reap`] and hands each [`Reaped`] to whoever owns the pid
//! (orphans re-parented to PID 1 are simply logged). A signalfd fits a `mio` loop better than a
//! self-pipe: no async-signal-safe handler, no second fd, and the blocked signal cannot
//! interrupt system calls. Signals coalesce, so `reap` always loops until no exited child is
//! left instead of counting signals.
//!
//! Rules for callers: call `install` on the main thread before spawning any thread (threads
//! inherit the blocked mask; a thread that does not block SIGCHLD would swallow it). Children
//! started with `std::process::Command` get an empty signal mask (std resets it before `exec`).
//! Never call `Child::wait`/`try_wait` on them: `waitpid(-1)` here collects every child, so the
//! status comes from [`reap`], and [`ChildStatus::to_wait_status`] rebuilds an `ExitStatus`
//! (`std::os::unix::process::ExitStatusExt::from_raw`).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildStatus {
    /// It called `exit` with this code.
    Exited(i32),
    /// A signal killed it.
    Signaled {
        /// The signal number.
        signal: i32,
        /// Whether it left a core dump.
        core_dumped: bool,
    },
}

impl ChildStatus {
    /// The raw `wait(2)` status word, for `ExitStatus::from_raw`.
    pub fn to_wait_status(self) -> i32 {
        match self {
            ChildStatus::Exited(code) => (code & 0xff) << 8,
            ChildStatus::Signaled {
                signal,
                core_dumped,
            } => (signal & 0x7f) | if core_dumped { 0x80 } else { 0 },
        }
    }
}

/// One child collected by the reaper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reaped {
    /// Its process id.
    pub pid: Pid,
    /// How it ended.
    pub status: ChildStatus,
}

/// Collects exited children through `wait` until it reports none left; `EINTR` is retried.
///
/// `wait` stands for `waitpid(-1, WNOHANG)`; it is a parameter so the loop can be tested.
pub fn reap_with(mut wait: impl FnMut() -> nix::Result<WaitStatus>) -> Vec<Reaped> {
    let mut reaped = Vec::new();
    loop {
        let (pid, status) = match wait() {
            Ok(WaitStatus::Exited(pid, code)) => (pid, ChildStatus::Exited(code)),
            Ok(WaitStatus::Signaled(pid, signal, core_dumped)) => (
                pid,
                ChildStatus::Signaled {
                    signal: signal as i32,
                    core_dumped,
                },
            ),
            Err(Errno::EINTR) => continue,
            // Stopped/continued children are only reported with flags we do not pass.
            Ok(WaitStatus::StillAlive) | Err(_) => return reaped,
            Ok(_) => continue,
        };
        reaped.push(Reaped { pid, status });
    }
}

/// Collects every child that has exited, without blocking.
pub fn reap() -> Vec<Reaped> {
    reap_with(|| waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)))
}

/// A nonblocking signalfd that becomes readable when a child exits.
#[derive(Debug)]
pub struct ChildSignals {
    fd: SignalFd,
}

impl ChildSignals {
    /// Blocks SIGCHLD in the calling thread and opens the signalfd; call before spawning threads.
    pub fn install() -> nix::Result<Self> {
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        mask.thread_block()?;
        let fd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(ChildSignals { fd })
    }

    /// Empties the signalfd and collects every exited child; call when the fd is readable.
    pub fn reap(&self) -> Vec<Reaped> {
        // Pending notifications only say "look again"; `reap` finds the children.
        while let Ok(Some(_)) = self.fd.read_signal() {}
        reap()
    }

    /// Empties the signalfd without collecting anyone (for a thread that only watches it).
    pub fn drain(&self) {
        while let Ok(Some(_)) = self.fd.read_signal() {}
    }

    /// Blocks until a child may have exited or `timeout` passes; for loops without a reactor.
    pub fn wait(&self, timeout: PollTimeout) -> nix::Result<bool> {
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(ready) => Ok(ready > 0),
            Err(Errno::EINTR) => Ok(false),
            Err(errno) => Err(errno),
        }
    }
}

impl AsFd for ChildSignals {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for ChildSignals {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, ExitStatus};
    use std::time::{Duration, Instant};

    fn pid(n: i32) -> Pid {
        Pid::from_raw(n)
    }

    #[test]
    fn reap_loop_returns_every_exit_and_stops_when_none_is_left() {
        let mut script = vec![
            Ok(WaitStatus::Exited(pid(10), 3)),
            Err(Errno::EINTR),
            Ok(WaitStatus::Signaled(pid(11), Signal::SIGKILL, false)),
            Ok(WaitStatus::Continued(pid(12))),
            Ok(WaitStatus::StillAlive),
            Ok(WaitStatus::Exited(pid(13), 0)),
        ]
        .into_iter();
        let got = reap_with(|| script.next().unwrap_or(Err(Errno::ECHILD)));
        assert_eq!(
            got,
            vec![
                Reaped {
                    pid: pid(10),
                    status: ChildStatus::Exited(3)
                },
                Reaped {
                    pid: pid(11),
                    status: ChildStatus::Signaled {
                        signal: 9,
                        core_dumped: false
                    }
                },
            ]
        );
        assert_eq!(script.next(), Some(Ok(WaitStatus::Exited(pid(13), 0))));
    }

    #[test]
    fn reap_loop_stops_on_no_children() {
        assert_eq!(reap_with(|| Err(Errno::ECHILD)), vec![]);
    }

    #[test]
    fn statuses_rebuild_std_exit_statuses() {
        let exited = ExitStatus::from_raw(ChildStatus::Exited(3).to_wait_status());
        assert_eq!(exited.code(), Some(3));
        let killed = ExitStatus::from_raw(
            ChildStatus::Signaled {
                signal: 15,
                core_dumped: true,
            }
            .to_wait_status(),
        );
        assert_eq!(killed.code(), None);
        assert_eq!(killed.signal(), Some(15));
        assert!(killed.core_dumped());
    }

    #[test]
    // Not waited on through `Child`: collecting it is the job of the reaper under test.
    #[allow(clippy::zombie_processes)]
    fn reaps_a_real_child_with_its_exit_code() {
        let child = Command::new("sh").args(["-c", "exit 7"]).spawn().unwrap();
        let want = Pid::from_raw(child.id() as i32);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(r) = reap().into_iter().find(|r| r.pid == want) {
                assert_eq!(r.status, ChildStatus::Exited(7));
                return;
            }
            assert!(Instant::now() < deadline, "child {want} never reaped");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
