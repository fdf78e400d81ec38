//! The one-request commands: `info`, `ping` and `shutdown`.

use std::time::Duration;

use crate::cli::{Failure, Global};
use crate::connect;
use vmux::service;

/// How long to wait for the guest to acknowledge the end of the session.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Prints the guest agent's facts.
pub fn info(global: &Global) -> Result<u8, Failure> {
    let conn = connect::connect(global)?;
    let info = service::info(&conn.session)
        .map_err(|e| Failure::new(format!("{}: info: {e}", conn.addr)))?;
    let text = info.to_string();
    print!("{text}");
    if !text.ends_with('\n') {
        println!();
    }
    conn.close(CLOSE_GRACE);
    Ok(0)
}

/// Round-trip statistics over a set of samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RttStats {
    /// The fastest.
    pub min: Duration,
    /// The middle one (the lower of the two middles for an even count).
    pub median: Duration,
    /// The 99th percentile (nearest rank).
    pub p99: Duration,
    /// The slowest.
    pub max: Duration,
}

/// Computes [`RttStats`]; `None` for no samples.
pub fn rtt_stats(samples: &[Duration]) -> Option<RttStats> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort_unstable();
    let rank = |p: f64| {
        let r = (p * s.len() as f64).ceil() as usize;
        s[r.clamp(1, s.len()) - 1]
    };
    Some(RttStats {
        min: s[0],
        median: s[(s.len() - 1) / 2],
        p99: rank(0.99),
        max: s[s.len() - 1],
    })
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// Sends `count` pings one after the other and prints min / median / p99.
pub fn ping(global: &Global, count: u32) -> Result<u8, Failure> {
    let conn = connect::connect(global)?;
    let mut samples = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let rtt = conn
            .session
            .ping()
            .map_err(|e| Failure::new(format!("{}: ping: {e}", conn.addr)))?;
        samples.push(rtt);
    }
    if let Some(st) = rtt_stats(&samples) {
        println!(
            "{} pings to {}: min {}, median {}, p99 {}, max {}",
            samples.len(),
            conn.addr,
            ms(st.min),
            ms(st.median),
            ms(st.p99),
            ms(st.max)
        );
    }
    conn.close(CLOSE_GRACE);
    Ok(0)
}

/// Asks the guest to power off or reboot.
pub fn shutdown(global: &Global, reboot: bool) -> Result<u8, Failure> {
    let conn = connect::connect(global)?;
    service::shutdown(&conn.session, reboot)
        .map_err(|e| Failure::new(format!("{}: shutdown: {e}", conn.addr)))?;
    // The guest may go away before it acknowledges the end of the session: do not wait long.
    conn.close(Duration::from_millis(500));
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&n| Duration::from_micros(n)).collect()
    }

    #[test]
    fn rtt_stats_pick_min_median_p99() {
        let st = rtt_stats(&us(&[50, 10, 30, 20, 40])).unwrap();
        assert_eq!(st.min, Duration::from_micros(10));
        assert_eq!(st.median, Duration::from_micros(30));
        assert_eq!(st.p99, Duration::from_micros(50));
        let hundred: Vec<u64> = (1..=100).collect();
        let st = rtt_stats(&us(&hundred)).unwrap();
        assert_eq!(st.p99, Duration::from_micros(99));
        assert_eq!(st.median, Duration::from_micros(50));
        assert_eq!(rtt_stats(&[]), None);
    }
}
