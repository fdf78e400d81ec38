//! Process measurements shared by every case: CPU time, peak and current memory, CPU affinity,
//! percentiles and medians.
//!
//! Each case runs in a fresh child process of the bench binary, so `VmHWM` (the peak resident
//! set since the process started) is the peak of that one case.

use std::time::Duration;

/// User plus system CPU time of the whole process so far.
pub fn cpu_time() -> Duration {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .expect("getrusage");
    let tv = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
    };
    tv(u.user_time()) + tv(u.system_time())
}

/// A `/proc/<pid>/status` (or `smaps_rollup`) field in KiB, e.g. `VmHWM`.
pub fn proc_field_kib(pid: &str, file: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// This process's `VmHWM` (peak RSS) in KiB.
pub fn peak_rss_kib() -> u64 {
    proc_field_kib("self", "status", "VmHWM").unwrap_or(0)
}

/// This process's `VmRSS` in KiB.
pub fn rss_kib() -> u64 {
    proc_field_kib("self", "status", "VmRSS").unwrap_or(0)
}

/// Pins the calling thread (and every thread it spawns later) to CPU `cpu`.
pub fn pin_to_cpu(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).expect("cpu index");
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).expect("sched_setaffinity");
}

/// The value at quantile `q` (0..=1) of sorted `v` (nearest rank).
pub fn quantile<T: Copy>(sorted: &[T], q: f64) -> T {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Median, min and max of `v` (not necessarily sorted).
pub fn summary(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let med = if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    (med, s[0], s[s.len() - 1])
}
