//! Facts about the guest and the agent, for the `info` service: versions, uptime, boot id and
//! the agent's own CPU time and memory.
//!
//! [`SysInfo::collect`] reads them; the parsers of the `/proc` texts are pure functions tested on
//! literal text. A fact that cannot be read is `None`, never an error: `info` reports what it can.

use std::fmt;
use std::time::Duration;

use nix::sys::resource::{getrusage, UsageWho};
use nix::sys::time::TimeVal;

/// The agent's version (from Cargo).
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// A snapshot of the guest and the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysInfo {
    /// The agent's version.
    pub agent_version: &'static str,
    /// The kernel release (`uname -r`).
    pub kernel_release: Option<String>,
    /// Time since boot (`/proc/uptime`).
    pub uptime: Option<Duration>,
    /// This boot's random id (`/proc/sys/kernel/random/boot_id`).
    pub boot_id: Option<String>,
    /// Whether the agent is PID 1.
    pub pid1: bool,
    /// CPU time the agent has used, user plus system (as PID 1 this includes the kernel's own
    /// boot work done by the init task before it ran the agent).
    pub cpu_time: Option<Duration>,
    /// The agent's resident memory in bytes (`VmRSS`).
    pub rss_bytes: Option<u64>,
}

impl SysInfo {
    /// Reads every fact from the running system.
    pub fn collect() -> Self {
        let read = |path| std::fs::read_to_string(path).ok();
        SysInfo {
            agent_version: AGENT_VERSION,
            kernel_release: nix::sys::utsname::uname()
                .ok()
                .map(|u| u.release().to_string_lossy().into_owned()),
            uptime: read("/proc/uptime").as_deref().and_then(parse_uptime),
            boot_id: read("/proc/sys/kernel/random/boot_id")
                .as_deref()
                .and_then(parse_boot_id),
            pid1: crate::pid1::is_pid1(),
            cpu_time: getrusage(UsageWho::RUSAGE_SELF)
                .ok()
                .map(|u| timeval(u.user_time()) + timeval(u.system_time())),
            rss_bytes: read("/proc/self/status")
                .as_deref()
                .and_then(parse_status_rss),
        }
    }
}

impl fmt::Display for SysInfo {
    /// `key: value` lines; unknown facts are left empty.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn opt<T: fmt::Display>(value: &Option<T>) -> String {
            value.as_ref().map(T::to_string).unwrap_or_default()
        }
        let secs = |d: &Option<Duration>| opt(&d.map(|d| format!("{:.3}", d.as_secs_f64())));
        writeln!(f, "agent-version: {}", self.agent_version)?;
        writeln!(f, "kernel-release: {}", opt(&self.kernel_release))?;
        writeln!(f, "uptime-seconds: {}", secs(&self.uptime))?;
        writeln!(f, "boot-id: {}", opt(&self.boot_id))?;
        writeln!(f, "pid1: {}", self.pid1)?;
        writeln!(f, "cpu-seconds: {}", secs(&self.cpu_time))?;
        writeln!(f, "rss-bytes: {}", opt(&self.rss_bytes))
    }
}

fn timeval(tv: TimeVal) -> Duration {
    let micros = tv.tv_sec() * 1_000_000 + tv.tv_usec();
    Duration::from_micros(u64::try_from(micros).unwrap_or(0))
}

/// The first field of `/proc/uptime` (`"351.27 690.11\n"`), seconds with a fraction.
pub fn parse_uptime(text: &str) -> Option<Duration> {
    let secs: f64 = text.split_whitespace().next()?.parse().ok()?;
    Duration::try_from_secs_f64(secs).ok()
}

/// The boot id if it is a well-formed lowercase UUID (`8-4-4-4-12` hex digits).
pub fn parse_boot_id(text: &str) -> Option<String> {
    let id = text.trim();
    let groups: Vec<&str> = id.split('-').collect();
    let shape_ok = groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12]);
    let hex_ok = id
        .chars()
        .all(|c| c == '-' || c.is_ascii_digit() || ('a'..='f').contains(&c));
    (shape_ok && hex_ok).then(|| id.to_owned())
}

/// Resident memory in bytes from `/proc/self/status` text (`VmRSS:     1234 kB`).
pub fn parse_status_rss(text: &str) -> Option<u64> {
    let line = text.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let mut fields = line.split_whitespace();
    let kib: u64 = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") => kib.checked_mul(1024),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_takes_the_first_field() {
        assert_eq!(
            parse_uptime("351.27 690.11\n"),
            Some(Duration::from_millis(351_270))
        );
        assert_eq!(parse_uptime("0.00 0.00"), Some(Duration::ZERO));
        assert_eq!(parse_uptime(""), None);
        assert_eq!(parse_uptime("-1 0"), None);
        assert_eq!(parse_uptime("soon"), None);
    }

    #[test]
    fn boot_id_must_be_a_uuid() {
        let id = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
        assert_eq!(parse_boot_id(&format!("{id}\n")).as_deref(), Some(id));
        assert_eq!(parse_boot_id("0f1e2d3c-4b5a-6978-8796"), None);
        assert_eq!(parse_boot_id("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1fz"), None);
        assert_eq!(parse_boot_id(""), None);
    }

    #[test]
    fn rss_comes_from_the_vmrss_line_in_bytes() {
        let status = "Name:\tvmux-agent\nVmPeak:\t    9000 kB\nVmRSS:\t    1180 kB\nThreads:\t1\n";
        assert_eq!(parse_status_rss(status), Some(1180 * 1024));
        assert_eq!(parse_status_rss("Name:\tkthreadd\n"), None);
        assert_eq!(parse_status_rss("VmRSS:\t12 MB\n"), None);
    }

    #[test]
    fn collect_reads_this_process() {
        let info = SysInfo::collect();
        assert_eq!(info.agent_version, AGENT_VERSION);
        assert!(info.kernel_release.is_some());
        assert!(info.uptime.is_some_and(|u| u > Duration::ZERO));
        assert!(info.rss_bytes.is_some_and(|r| r > 0));
        assert!(info.to_string().contains(&format!("pid1: {}\n", info.pid1)));
    }
}
